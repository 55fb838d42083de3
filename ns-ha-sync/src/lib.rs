//! ns-ha-sync: everything the administrator configures on the primary
//! reaches the backup quickly, completely, and never half-applied.
//!
//! The library holds the whole tool so tests drive it without a binary:
//! `rules` (the sync set as data), `manifest` (scan + hash cache + diff),
//! `sender` (push over one SSH session), `receiver` (the forced command on the
//! backup), `journal` (all-or-nothing apply and crash recovery), `state`
//! (generation, status), `watch` (inotify trigger), `wire` (the sync ops on
//! the common framing) and `crash` (test-only crash points). `run` maps the
//! command line onto them and returns one report per run (docs/json.md).

pub mod crash;
pub mod delta;
pub mod handoff;
pub mod journal;
pub mod manifest;
pub mod receiver;
pub mod rules;
pub mod sender;
pub mod state;
pub mod util;
pub mod watch;
pub mod wire;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;
use std::time::Duration;

use ns_ha_common::authorized_keys;
use ns_ha_common::cli::{GlobalArgs, Report, ToolCli};
use ns_ha_common::cmd::SystemRunner;
use ns_ha_common::config::{
    load_cluster, load_cluster_opt, load_node, load_node_opt, ClusterConfig, NodeConfig, Role,
};
use ns_ha_common::exit::{fail, help_table, Code};
use ns_ha_common::net::KernelAddresses;
use ns_ha_common::sync_config::SyncSettings;
use ns_ha_common::NodeRoot;

use crate::manifest::{scan, HashCache};
use crate::receiver::{local_view, Receiver};
use crate::rules::SyncSet;
use crate::sender::{holds_vips, PushOptions, SshLink};
use crate::state::{Applied, StateDir, Status, APPLIED};

/// Config sync of an ns-ha pair: the primary pushes its sync set to the
/// backup over SSH; the backup verifies every path and hash and applies each
/// generation whole, from a journal that survives crashes.
#[derive(Debug, Parser)]
#[command(name = "ns-ha-sync", version, after_help = help_table())]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

impl ToolCli for Cli {
    fn global(&self) -> &GlobalArgs {
        &self.global
    }
}

/// The whole program: parse, run, print the error once, exit with its code.
pub fn main_with_args(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> std::process::ExitCode {
    ns_ha_common::cli::main("ns-ha-sync", args, run)
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every path met in the sync set, whether it is synced, and the rule that decided.
    List {
        /// Show the rules instead of the paths.
        #[arg(long)]
        rules: bool,
    },
    /// Send what changed to the backup (on the primary, while it holds the VIPs).
    ///
    /// Returns at once, silently (with --json: a document with "noop": true),
    /// when nothing changed since the last clean push (safe from cron every
    /// minute). Exit code 8 when files edited on
    /// the backup were kept there. When `watch` runs on this node, the push
    /// is handed to it and goes over its open SSH session (no new
    /// connection); the report and exit code are the same.
    Push {
        /// Overwrite (or delete) files edited on the backup since the last sync.
        #[arg(long)]
        force: bool,
        /// Show what would change, file by file; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Push even if this node does not hold the cluster's VIPs (not master),
        /// e.g. for the first sync before HA is enabled.
        #[arg(long)]
        skip_master_check: bool,
        /// Ask the backup even when nothing changed locally.
        #[arg(long)]
        recheck: bool,
        /// Let the backup apply the push even though it holds the cluster's
        /// VIPs itself (it is MASTER): without it such a backup refuses (exit 5).
        #[arg(long)]
        even_if_backup_is_master: bool,
    },
    /// What a push would change, file by file (same as push --dry-run).
    Diff,
    /// Serve the sync protocol on stdin/stdout: the forced command of the
    /// pairing key on the backup. Not for interactive use. Gives up (and
    /// releases the sync lock) after 30 s without a byte from the sender.
    Receive,
    /// Report files edited on the backup since the last sync (exit 10 if any).
    ///
    /// On the backup it looks at its own files; on the primary it asks the backup.
    Verify,
    /// Last attempt, last success, generation, files and bytes, duration and
    /// error, of this node and (from the primary) of the backup.
    Status {
        /// Do not ask the peer.
        #[arg(long)]
        local: bool,
    },
    /// Finish an interrupted apply from its journal, or discard an uncommitted one.
    Recover,
    /// Push whenever a synced file changes (inotify), over one SSH session;
    /// one-shot `push`es on this node are handed to it (socket
    /// /run/ns-ha/sync-push.sock, root only) and use that session too.
    Watch {
        /// Quiet time after a change before pushing, in milliseconds (it
        /// only coalesces a burst: a file still changing while it is sent
        /// is scanned and sent again).
        #[arg(long, default_value_t = 20)]
        debounce_ms: u64,
        /// Push even when this node does not hold the VIPs.
        #[arg(long)]
        skip_master_check: bool,
    },
}

/// A command's report: `value` (an object) for scripts, `human()` for people.
fn report<T: Serialize>(value: &T, human: impl FnOnce() -> String) -> Result<Report> {
    Ok(Report::new(human(), serde_json::to_value(value)?))
}

/// Run one command into its report (docs/json.md describes each document).
pub fn run(cli: Cli) -> Result<Report> {
    let root = NodeRoot::from_arg_or_env(cli.global.root.as_deref())?;
    let json = cli.global.json;
    match cli.command {
        Command::List { rules } => list(&root, rules),
        Command::Push {
            force,
            dry_run,
            skip_master_check,
            recheck,
            even_if_backup_is_master,
        } => run_push(
            &root,
            PushOptions {
                force,
                dry_run,
                recheck,
                even_if_backup_is_master,
            },
            skip_master_check || dry_run,
        ),
        Command::Diff => run_push(
            &root,
            PushOptions {
                dry_run: true,
                ..Default::default()
            },
            true,
        ),
        Command::Receive => receive(&root, json),
        Command::Verify => verify(&root),
        Command::Status { local } => status(&root, local),
        Command::Recover => recover(&root),
        Command::Watch {
            debounce_ms,
            skip_master_check,
        } => run_watch(
            &root,
            json,
            Duration::from_millis(debounce_ms),
            skip_master_check,
        ),
    }
}

fn settings_of(cluster: Option<&ClusterConfig>) -> SyncSettings {
    cluster.map(|c| c.sync.clone()).unwrap_or_default()
}

/// `list --rules`' document.
#[derive(Serialize)]
struct RulesReport<'a> {
    profile: &'a str,
    rules: &'a [rules::Rule],
}

/// `list`'s document.
#[derive(Serialize)]
struct ListReport<'a> {
    paths: &'a [manifest::Listed],
}

fn list(root: &NodeRoot, rules: bool) -> Result<Report> {
    let cluster = load_cluster_opt(root)?;
    let settings = settings_of(cluster.as_ref());
    let set = SyncSet::for_cluster(root, cluster.as_ref())?;
    if rules {
        let doc = RulesReport {
            profile: set.profile.as_str(),
            rules: &set.rules,
        };
        return report(&doc, || {
            let mut out = format!("profile {}\n", set.profile.as_str());
            for r in &set.rules {
                out.push_str(&format!("  {}\n", r.describe()));
            }
            out
        });
    }
    // Listing does not touch the node's state: a throwaway cache.
    let mut cache = HashCache::load(&StateDir::new(root, &settings).cache());
    let s = scan(root, &set, &mut cache, true)?;
    report(&ListReport { paths: &s.listed }, || {
        let mut out = String::new();
        for l in &s.listed {
            let mark = if l.synced { "synced " } else { "skipped" };
            out.push_str(&format!("{mark}  {}  [{}]\n", l.path, l.rule));
        }
        out
    })
}

/// The node must be a configured primary.
fn primary(root: &NodeRoot) -> Result<(NodeConfig, ClusterConfig)> {
    let node = load_node(root)?;
    if node.role != Role::Primary {
        return Err(fail(
            Code::State,
            "this node is the backup: it is read-only and receives the primary's config; push from the primary",
        ));
    }
    Ok((node, load_cluster(root)?))
}

fn check_master(cluster: &ClusterConfig) -> Result<()> {
    let runner = SystemRunner;
    if !holds_vips(cluster, &KernelAddresses { runner: &runner })? {
        return Err(fail(
            Code::State,
            "this node does not hold the cluster's VIPs (not master): push from the master, or use --skip-master-check",
        ));
    }
    Ok(())
}

fn run_push(root: &NodeRoot, opts: PushOptions, skip_master_check: bool) -> Result<Report> {
    let (node, cluster) = primary(root)?;
    if !skip_master_check {
        check_master(&cluster)?;
    }
    // A running watch pushes over its open session (crash points are armed
    // in this process only: a push that arms one does it itself).
    if !opts.dry_run && std::env::var_os(crash::CRASH_ENV).is_none() {
        let req = handoff::PushRequest::of(opts);
        if let Some(handed) = handoff::try_push(&handoff::socket_path(root), req) {
            return handed;
        }
    }
    crash::arm_from_env();
    let mut link = SshLink::new(root, &node, &cluster);
    push_report(sender::push(root, &cluster, &mut link, opts), opts.dry_run)
}

/// What `push` prints for a push's outcome: exit 8 when edits on the backup
/// were kept.
fn push_report(rep: Result<sender::PushReport>, dry_run: bool) -> Result<Report> {
    let rep = rep?;
    let kept = if !rep.kept.is_empty() && !dry_run {
        Err(fail(
            Code::Conflict,
            format!(
                "{} path(s) edited on the backup were kept (first: {}): see ns-ha-sync verify; push --force overwrites them",
                rep.kept.len(),
                rep.kept[0]
            ),
        ))
    } else {
        Ok(())
    };
    Ok(report(&rep, || rep.render())?.failed_if(kept))
}

fn receive(root: &NodeRoot, json: bool) -> Result<Report> {
    if json {
        return Err(fail(
            Code::Usage,
            "receive speaks the sync protocol on stdout: run it without --json",
        ));
    }
    let client = std::env::var(authorized_keys::SSH_CLIENT_ENV).ok();
    if let Err(e) = authorized_keys::check_ssh_client(root, client.as_deref()) {
        // Answer the sender's first request with the refusal, then stop.
        let mut w = std::io::stdout().lock();
        let _ = ns_ha_common::proto::write_msg(&mut w, &ns_ha_common::proto::Reply::from_error(&e));
        return Err(e);
    }
    let runner = SystemRunner;
    let mut rx = Receiver::new(root.clone(), &runner);
    rx.startup();
    // Both ends time out when the sender goes quiet (see wire::IDLE_TIMEOUT).
    let idle = wire::IDLE_TIMEOUT;
    let input = wire::IdleTimeoutFd::new(std::io::stdin(), idle, "sent no byte")
        .context("preparing stdin")?;
    let output = wire::IdleTimeoutFd::new(std::io::stdout(), idle, "took no byte of the reply")
        .context("preparing stdout")?;
    let mut r = std::io::BufReader::with_capacity(256 * 1024, input);
    let mut w = std::io::BufWriter::new(output);
    rx.serve(&mut r, &mut w)?;
    Ok(Report::printed())
}

/// `verify`'s document on the backup: the generation its files were last
/// synced to and the paths edited since.
#[derive(Serialize)]
struct LocalVerify<'a> {
    generation: u64,
    drift: &'a [manifest::Drift],
}

fn verify(root: &NodeRoot) -> Result<Report> {
    let node = load_node(root)?;
    let cluster = load_cluster(root)?;
    if node.role == Role::Primary {
        let mut link = SshLink::new(root, &node, &cluster);
        let rep = sender::peer_verify(root, &cluster, &mut link)?;
        let drift = if rep.drift.is_empty() {
            Ok(())
        } else {
            Err(fail(
                Code::Unhealthy,
                format!(
                    "{} path(s) edited on the backup since the last sync",
                    rep.drift.len()
                ),
            ))
        };
        return Ok(report(&rep, || {
            let mut out = String::new();
            for d in &rep.drift {
                out.push_str(&format!("edited on the backup ({}): {}\n", d.what, d.path));
            }
            let pending = rep.lines.iter().filter(|l| l.action != "kept").count();
            out.push_str(&format!(
                "{} path(s) edited on the backup, {pending} change(s) waiting to be pushed\n",
                rep.drift.len()
            ));
            out
        })?
        .failed_if(drift));
    }
    let set = SyncSet::for_cluster(root, Some(&cluster))?;
    let state = StateDir::new(root, &cluster.sync);
    // Under the sync lock: an apply in progress has replaced some files and
    // not yet recorded its generation, which would read as local edits.
    let view = {
        let _lock = state.lock(receiver::LOCK_WAIT)?;
        local_view(root, &set, &state)?
    };
    let doc = LocalVerify {
        generation: view.applied.generation,
        drift: &view.drift,
    };
    let drift = if view.drift.is_empty() {
        Ok(())
    } else {
        Err(fail(
            Code::Unhealthy,
            format!("{} path(s) edited on this backup since the last sync: they are kept until push --force on the primary", view.drift.len()),
        ))
    };
    Ok(report(&doc, || {
        let mut out = String::new();
        for d in &view.drift {
            out.push_str(&format!(
                "edited here since generation {} ({}): {}\n",
                view.applied.generation, d.what, d.path
            ));
        }
        if view.drift.is_empty() {
            out.push_str(&format!(
                "no local edits since generation {}\n",
                view.applied.generation
            ));
        }
        out
    })?
    .failed_if(drift))
}

/// Status of one node as `status` shows it.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub role: Option<String>,
    #[serde(flatten)]
    pub status: Status,
    /// An apply was interrupted and waits for recovery (a journal no
    /// running apply holds).
    pub journal_pending: bool,
}

#[derive(Debug, Serialize)]
struct StatusReport {
    node: NodeStatus,
    peer: Option<Status>,
    peer_error: Option<String>,
}

fn render_status(name: &str, st: &Status) -> String {
    let mut out = format!("{name}: generation {}\n", st.generation);
    let run = |label: &str, r: &Option<state::Run>| {
        match r {
        None => format!("  {label}: never\n"),
        Some(r) => format!(
            "  {label}: {} at {} (generation {}, {} file(s), {} bytes, {} changed, {} deleted, {} ms){}{}\n",
            if r.ok { "ok" } else if r.interrupted { "INTERRUPTED" } else { "FAILED" },
            ns_ha_common::clock::fmt_utc(r.at.saturating_mul(1000)),
            r.generation,
            r.files,
            r.bytes,
            r.changed,
            r.deleted,
            r.duration_ms,
            r.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default(),
            if r.kept.is_empty() { String::new() } else { format!(", kept on backup: {}", r.kept.join(" ")) }
        ),
    }
    };
    if st.running.is_some() {
        out.push_str(&run("running now", &st.running));
    }
    out.push_str(&run("last attempt", &st.last_attempt));
    out.push_str(&run("last success", &st.last_success));
    if st.last_failure.is_some() && st.last_failure != st.last_attempt {
        out.push_str(&run("last failure", &st.last_failure));
    }
    if let Some(h) = &st.hook {
        out.push_str(&format!("  reload hook: {h}\n"));
    }
    out
}

/// This node's sync status without asking the peer (also read by ns-ha-check).
pub fn node_status(root: &NodeRoot) -> Result<NodeStatus> {
    let node = load_node_opt(root)?;
    let cluster = load_cluster_opt(root)?;
    local_status(root, node.as_ref(), cluster.as_ref())
}

fn local_status(
    root: &NodeRoot,
    node: Option<&NodeConfig>,
    cluster: Option<&ClusterConfig>,
) -> Result<NodeStatus> {
    let state = StateDir::of(root, cluster);
    let mut st: Status = state.current_status()?;
    match node.map(|n| n.role) {
        Some(Role::Backup) => {
            st.generation = state
                .read::<Applied>(APPLIED)?
                .unwrap_or_default()
                .generation
        }
        _ => {
            st.generation = st.generation.max(
                // Not fsynced (a cache of the last push): damaged after a
                // power cut, it only costs the next push a full manifest.
                state
                    .read_pushed(false)
                    .unwrap_or_else(|e| {
                        log::warn!("{e:#}: the next push asks the backup for its whole manifest");
                        None
                    })
                    .map(|p| p.generation)
                    .unwrap_or(0),
            )
        }
    }
    Ok(NodeStatus {
        role: node.map(|n| n.role.to_string()),
        status: st,
        journal_pending: state.journal_left_behind(),
    })
}

fn status(root: &NodeRoot, local_only: bool) -> Result<Report> {
    let node = load_node_opt(root)?;
    let cluster = load_cluster_opt(root)?;
    let mut report = StatusReport {
        node: local_status(root, node.as_ref(), cluster.as_ref())?,
        peer: None,
        peer_error: None,
    };
    if let (Some(n), Some(c), false) = (&node, &cluster, local_only) {
        if n.role == Role::Primary && n.peer_host_key.is_some() {
            let mut link = SshLink::new(root, n, c);
            match sender::peer_status(&mut link) {
                Ok(p) => report.peer = Some(p),
                Err(e) => report.peer_error = Some(format!("{e:#}")),
            }
        }
    }
    self::report(&report, || {
        let mut out = render_status(
            &format!(
                "this node ({})",
                report.node.role.as_deref().unwrap_or("not configured")
            ),
            &report.node.status,
        );
        if report.node.journal_pending {
            out.push_str("  an interrupted apply waits for recovery: run ns-ha-sync recover\n");
        }
        if let Some(p) = &report.peer {
            out.push_str(&render_status("backup", p));
        }
        if let Some(e) = &report.peer_error {
            out.push_str(&format!("backup: unreachable: {e}\n"));
        }
        out
    })
}

fn recover(root: &NodeRoot) -> Result<Report> {
    let cluster = load_cluster_opt(root)?;
    let settings = settings_of(cluster.as_ref());
    let set = SyncSet::for_cluster(root, cluster.as_ref())?;
    let state = StateDir::new(root, &settings);
    let _lock = state.lock(Duration::from_secs(30))?;
    let r = receiver::recover_and_record(root, &set, &state)?;
    report(&r, || {
        let mut out = match (r.completed, r.discarded) {
            (Some(g), _) => format!("completed the interrupted apply of generation {g}\n"),
            (None, true) => "discarded an uncommitted transfer: live files untouched\n".into(),
            (None, false) => "nothing to recover\n".into(),
        };
        for k in &r.kept {
            out.push_str(&format!(
                "  kept as this backup has it: {}: {}; push --force on the primary replaces it\n",
                k.path, k.reason
            ));
        }
        for (path, to) in &r.moved_aside {
            out.push_str(&format!("  moved aside: {path} -> {to}\n"));
        }
        if let Some(a) = &r.set_aside {
            out.push_str(&format!(
                "  the journal could not be read: set aside as {a}; what it changed shows as edited here until push --force\n"
            ));
        }
        out
    })
}

/// `watch` streams: one line per push that changed something (JSON lines
/// with `--json`: the push's document, or `{"error", "code"}` for a failed
/// attempt, which is retried); its end is an ordinary error.
fn run_watch(
    root: &NodeRoot,
    json: bool,
    debounce: Duration,
    skip_master_check: bool,
) -> Result<Report> {
    let (node, cluster) = primary(root)?;
    let mut link = SshLink::new(root, &node, &cluster);
    let may_push = || -> Result<bool> { Ok(skip_master_check || check_master(&cluster).is_ok()) };
    let mut on_push = |r: &Result<sender::PushReport>| match r {
        Ok(rep) if rep.noop => {}
        Ok(rep) if json => ns_ha_common::cli::print_json_line(rep),
        Ok(rep) => print!("{}", rep.render()),
        Err(e) if json => ns_ha_common::cli::print_json_line(&ns_ha_common::cli::error_document(e)),
        Err(_) => {}
    };
    let server = handoff::PushServer::bind(&handoff::socket_path(root))
        .map_err(|e| log::warn!("{e:#}: one-shot pushes connect on their own"))
        .ok();
    let to_report = |r| push_report(r, false);
    watch::watch(
        root,
        &cluster,
        &mut link,
        watch::WatchOptions {
            handoff: server.as_ref().map(|s| (s, &to_report as &dyn Fn(_) -> _)),
            debounce,
            may_push: &may_push,
            on_push: &mut on_push,
            max_pushes: None,
        },
    )?;
    Ok(Report::printed())
}
