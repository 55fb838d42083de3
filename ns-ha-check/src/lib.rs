//! `ns-ha-check`: is this node, and the pair, healthy?
//!
//! Three audiences, three commands: `status` for an administrator or a
//! monitoring script (one view of role, VRRP, VIPs, sync and transitions),
//! `doctor` for someone fixing a pair (every problem with its fix), and
//! `health` for keepalived or cron (an exit code, optionally a track file;
//! `--list` names every check), `monitor` the long-running health monitor
//! that moves the VIPs (see [`monitor`]), and `metrics` for Prometheus.
//! Facts come from the tools that own them, through their command lines and
//! JSON (`tools`), or from `common`; this crate adds only the checks.

pub mod alert;
pub mod doctor;
pub mod heal;
pub mod health;
pub mod keepalived_stats;
pub mod liveness;
pub mod metrics;
pub mod monitor;
pub mod peer;
pub mod probe;
pub mod status;
pub mod tools;
pub mod verdict;

use anyhow::Result;
use clap::{Parser, Subcommand};
use serde_json::json;
use std::ffi::OsString;
use std::process::ExitCode;

use ns_ha_common::cli::{self, GlobalArgs, Report};
use ns_ha_common::cmd::{CommandRunner, SystemRunner};
use ns_ha_common::config::{load_cluster, load_node};
use ns_ha_common::exit::{fail, help_table, Code};
use ns_ha_common::net::{InterfaceSource, IpCommand};
use ns_ha_common::root::paths;
use ns_ha_common::NodeRoot;

use ns_ha_common::clock::{Clock, SystemClock};

use crate::peer::{PeerProbe, SshProbe};
use crate::tools::{ToolQuery, ToolRunner};

/// Status, doctor and health checks of an ns-ha node.
///
///   ns-ha-check status          role, VRRP state, VIPs, sync, transitions, VPN tunnels
///   ns-ha-check doctor          every problem of the pair with its fix (exit 10 if any)
///   ns-ha-check health          can this node serve as master? (exit 0 or 10)
///   ns-ha-check health --list   every health check of this node, with its period
///   ns-ha-check monitor         run the checks, move the VIPs when unhealthy (runs until killed)
///   ns-ha-check metrics         Prometheus text (or --textfile-dir DIR)
#[derive(Debug, Parser)]
#[command(name = "ns-ha-check", version, verbatim_doc_comment, after_help = help_table())]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One view of the node: role, cluster, keepalived, live VRRP state, VIPs, sync, last transitions, VPN tunnels and whether each is up here.
    Status,
    /// Everything that can be wrong with the pair, each with its fix; exit 10 if any problem.
    ///
    /// On the primary it also asks the backup over the pinned SSH channel
    /// (version, cluster, files edited there).
    Doctor,
    /// Exit 0 if this node can serve as master (every cluster interface up
    /// with its static address), else 10 with the reason on stderr.
    Health {
        /// Also write 0 (healthy) or 1 into /run/ns-ha/health.track for keepalived's track_file.
        #[arg(long)]
        track_file: bool,
        /// List every check the monitor runs on this node (from the cluster
        /// config's health section) instead of checking.
        #[arg(long, conflicts_with = "track_file")]
        list: bool,
    },
    /// Run the health checks for as long as the node runs and move the VIPs:
    /// writes keepalived's health track file (priority offset), the state
    /// file /run/ns-ha/health.json, the prompt marker, and runs the alert hook;
    /// on the primary while MASTER, records the WireGuard peers' endpoints
    /// in /etc/wireguard/ns-ha-endpoints.json (synced) every 2 s.
    ///
    /// Started and restarted with keepalived by its init script:
    /// `ns-ha-check [--root R] monitor`. Logs on stderr.
    Monitor,
    /// Prometheus text: role, VRRP state, VIPs, transitions, health checks,
    /// sync, failing role actions.
    Metrics {
        /// Write DIR/ns-ha.prom atomically (node_exporter textfile collector)
        /// instead of printing; default: health.metrics_dir if set.
        #[arg(long, value_name = "DIR")]
        textfile_dir: Option<std::path::PathBuf>,
    },
}

/// Everything a command needs about the node it runs on.
pub struct Ctx<'a> {
    pub root: NodeRoot,
    pub runner: &'a dyn CommandRunner,
    pub ifs: &'a dyn InterfaceSource,
    pub peer: &'a dyn PeerProbe,
    /// The role engine's and the sync's answers (`ns-ha-role`, `ns-ha-sync --json`).
    pub tools: &'a dyn ToolQuery,
    pub clock: &'a dyn Clock,
}

/// The node's surroundings, real or fake: programs, interfaces, the peer,
/// the sibling tools and the clock.
pub struct Env<'a> {
    pub runner: &'a dyn CommandRunner,
    pub ifs: &'a dyn InterfaceSource,
    pub peer: &'a dyn PeerProbe,
    pub tools: &'a dyn ToolQuery,
    pub clock: &'a dyn Clock,
}

/// Run one parsed command.
pub fn run(cli: Cli, env: &Env) -> Result<Report> {
    let ctx = Ctx {
        root: NodeRoot::from_arg_or_env(cli.global.root.as_deref())?,
        runner: env.runner,
        ifs: env.ifs,
        peer: env.peer,
        tools: env.tools,
        clock: env.clock,
    };
    match cli.command {
        Command::Status => {
            let s = status::collect(&ctx)?;
            Ok(Report::new(status::render(&s), serde_json::to_value(&s)?))
        }
        Command::Doctor => {
            let findings = doctor::run(&ctx);
            let report = Report::new(
                doctor::render(&findings),
                json!({"healthy": !doctor::unhealthy(&findings), "findings": findings}),
            );
            Ok(if doctor::unhealthy(&findings) {
                report.with_code(Code::Unhealthy)
            } else {
                report
            })
        }
        Command::Health { list: true, .. } => health_list(&ctx),
        Command::Health { track_file, .. } => health(&ctx, track_file),
        Command::Monitor => {
            monitor::run(&ctx.root)?;
            Ok(Report::printed())
        }
        Command::Metrics { textfile_dir } => metrics(&ctx, textfile_dir),
    }
}

/// `health`: the reasons go into the error (stderr), so keepalived's and
/// cron's logs say why.
pub fn health(ctx: &Ctx, track_file: bool) -> Result<Report> {
    let problems = load_node(&ctx.root)
        .and_then(|n| Ok((n.role, load_cluster(&ctx.root)?)))
        .and_then(|(role, c)| health::problems(&c, role, ctx.ifs))
        .unwrap_or_else(|e| vec![format!("{e:#}")]);
    if track_file {
        health::write_track(&ctx.root, problems.is_empty())?;
    }
    if !problems.is_empty() {
        return Err(fail(
            Code::Unhealthy,
            format!("cannot serve as master: {}", problems.join("; ")),
        ));
    }
    let track = if track_file {
        format!(
            " (0 written to {})",
            ctx.root.path(paths::HEALTH_TRACK).display()
        )
    } else {
        String::new()
    };
    Ok(Report::new(
        format!("healthy: every cluster interface is up with its address{track}\n"),
        json!({"healthy": true}),
    ))
}

/// `health --list`: the checks of this node, and the links none covers.
pub fn health_list(ctx: &Ctx) -> Result<Report> {
    let node = load_node(&ctx.root)?;
    let cluster = load_cluster(&ctx.root)?;
    let checks = monitor::plan(&cluster, node.role);
    let unchecked = monitor::unchecked_links(&cluster);
    let h = &cluster.health;
    let mut human = String::new();
    for c in &checks {
        human.push_str(&format!(
            "{:<20} every {:>5} ms  {}\n",
            c.id, c.period_ms, c.what
        ));
    }
    for l in &unchecked {
        human.push_str(&format!(
            "{:<20} not checked: a silent failure of {l} is not detected (add health.links with targets)\n",
            format!("reach:{l}")
        ));
    }
    human.push_str(&format!(
        "failover: {}; hold-down {} ms after giving up MASTER; alert hook {}\n",
        if h.act {
            "an unhealthy MASTER yields to a healthy peer"
        } else {
            "off (health.act false: checks are recorded, nothing moves)"
        },
        h.hold_down_ms,
        h.alert_hook.as_deref().unwrap_or("none")
    ));
    Ok(Report::new(
        human,
        json!({"checks": checks, "unchecked_links": unchecked, "act": h.act,
               "hold_down_ms": h.hold_down_ms, "alert_hook": h.alert_hook}),
    ))
}

/// `metrics`: print, or write into a textfile directory.
pub fn metrics(ctx: &Ctx, textfile_dir: Option<std::path::PathBuf>) -> Result<Report> {
    let s = status::collect(ctx)?;
    let role = tools::role_status(ctx.tools, &ctx.root, 1)?;
    let instances = role
        .instances
        .iter()
        .map(|i| (i.name.clone(), i.state.clone()))
        .collect();
    let health = monitor::read_state(&ctx.root)?;
    let dump = keepalived_stats::SignalledDump {
        root: &ctx.root,
        runner: ctx.runner,
    };
    let counters = keepalived_stats::KeepalivedStats::dump(&dump).map_err(|e| format!("{e:#}"));
    let text = metrics::render(
        &s,
        &instances,
        health.as_ref(),
        &counters,
        ctx.clock.now_ms(),
    );
    // A directory given here is taken as is; the config's is a node path.
    let dir = textfile_dir.or_else(|| {
        load_cluster(&ctx.root)
            .ok()
            .and_then(|c| c.health.metrics_dir.map(|d| ctx.root.path(d)))
    });
    match dir {
        Some(d) => {
            let p = metrics::write_textfile(&d, &text)?;
            Ok(Report::new(
                format!("written to {}\n", p.display()),
                json!({"metrics": text, "written": p.to_string_lossy()}),
            ))
        }
        None => Ok(Report::new(
            text.clone(),
            json!({"metrics": text, "written": null}),
        )),
    }
}

/// The whole program: parse, run, print the result or the error once, exit with its code.
pub fn main_with_args<I: IntoIterator<Item = OsString>>(args: I) -> ExitCode {
    cli::main("ns-ha-check", args, |cli: Cli| {
        let runner = SystemRunner;
        let env = Env {
            runner: &runner,
            ifs: &IpCommand { runner: &runner },
            peer: &SshProbe,
            tools: &ToolRunner { runner: &runner },
            clock: &SystemClock,
        };
        run(cli, &env)
    })
}

impl cli::ToolCli for Cli {
    fn global(&self) -> &GlobalArgs {
        &self.global
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::tests::{master_ifs, primary_root, primary_tools, FakePeer, CLOCK_MS};
    use ns_ha_common::clock::FixedClock;
    use ns_ha_common::cmd::RecordingRunner;
    use ns_ha_common::fixtures::interface;
    use ns_ha_common::net::StaticInterfaces;

    fn cli(root: &NodeRoot, args: &[&str]) -> Cli {
        let root = root.base().to_string_lossy().into_owned();
        let mut argv = vec!["ns-ha-check", "--root", &root];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap()
    }

    /// Run `args` on `root` with fakes; the clock 42 s after the recorded last sync.
    fn run_with(
        root: &NodeRoot,
        args: &[&str],
        ifs: &dyn InterfaceSource,
        peer: &dyn PeerProbe,
    ) -> Result<Report> {
        let r = RecordingRunner::new();
        let tools = primary_tools();
        let clock = FixedClock::at_ms(CLOCK_MS);
        run(
            cli(root, args),
            &Env {
                runner: &r,
                ifs,
                peer,
                tools: &tools,
                clock: &clock,
            },
        )
    }

    #[test]
    fn status_shows_a_master_primary() {
        let (_d, root) = primary_root();
        let ifs = master_ifs();
        let rep = run_with(&root, &["--json", "status"], &ifs, &FakePeer::healthy()).unwrap();
        assert_eq!(rep.json["node_role"], "primary");
        assert_eq!(rep.json["vrrp_state"], "MASTER");
        assert_eq!(rep.json["keepalived_running"], true);
        assert_eq!(rep.json["vips"][0]["held"], true);
        // The recorded last success was at 1796028380 s; the clock says +42 s.
        assert_eq!(rep.json["sync"]["last_success"], 1_796_028_380u64);
        assert_eq!(rep.json["sync"]["lag_secs"], 42);
        // From the recorded `ns-ha-role status`: MASTER applied, a history.
        assert_eq!(rep.json["role_engine"]["applied"], "MASTER");
        assert_eq!(rep.json["role_engine"]["last_event"], "MASTER");
        assert!(!rep.json["transitions"].as_array().unwrap().is_empty());
        assert!(
            rep.human.contains("VRRP:        MASTER (2/2 VIPs held)"),
            "{}",
            rep.human
        );
        assert!(rep.human.contains("(42 s ago)"), "{}", rep.human);
        // The primary cannot read the backup from VRRP: SSH says it answers.
        assert_eq!(rep.json["peer"]["answers"], true);
        assert_eq!(rep.json["peer"]["master_because_peer_silent"], false);
        assert!(
            rep.human
                .contains("peer:        backup 10.99.0.2 answers: SSH 10.99.0.2:22 answers"),
            "{}",
            rep.human
        );
        let backup = StaticInterfaces(vec![interface("lan0", &["10.99.1.1/24"])]);
        let rep = run_with(&root, &["status"], &backup, &FakePeer::healthy()).unwrap();
        assert!(rep.human.contains("BACKUP (0/2"), "{}", rep.human);
    }

    #[test]
    fn status_shows_the_monitors_verdict_and_health_lists_the_checks() {
        let (_d, root) = primary_root();
        let ifs = master_ifs();
        let rep = run_with(&root, &["--json", "status"], &ifs, &FakePeer::healthy()).unwrap();
        assert!(rep.json["health"].is_null(), "no monitor has run");
        std::fs::create_dir_all(root.path(paths::RUN_DIR)).unwrap();
        let state = json!({
            "updated_ms": CLOCK_MS - 1000, "priority": 2, "fit": false,
            "reason": "failing: reach:lan0",
            "checks": {"reach:lan0": {"id": "reach:lan0", "state": "failing",
                                      "detail": "no answer on lan0 within 100 ms",
                                      "last_latency_ms": null}},
            "decisions": [{"unix_ms": CLOCK_MS - 2000, "priority": 2, "track_value": -198,
                           "fit": false, "master": true, "reason": "failing: reach:lan0"}]
        });
        std::fs::write(root.path(paths::HEALTH_STATE), state.to_string()).unwrap();
        let rep = run_with(&root, &["--json", "status"], &ifs, &FakePeer::healthy()).unwrap();
        let h = &rep.json["health"];
        assert_eq!(
            (h["priority"].as_u64(), &h["fit"]),
            (Some(2), &json!(false))
        );
        assert_eq!(h["monitor_running"], true);
        assert_eq!(h["checks"][0]["state"], "failing");
        assert_eq!(h["decisions"][0]["track_value"], -198);
        let rep = run_with(&root, &["status"], &ifs, &FakePeer::healthy()).unwrap();
        assert!(
            rep.human
                .contains("health:      UNFIT, priority 2: failing: reach:lan0\n"),
            "{}",
            rep.human
        );
        assert!(rep.human.contains("no answer on lan0 within 100 ms"));
        assert!(!rep.human.contains("SPLIT BRAIN"), "{}", rep.human);
        // A second holder of a VIP, as the monitor records it.
        let mut split = state.clone();
        split["split_brain"] = json!("10.99.1.254 on lan0 also answered by 02:00:00:00:00:02");
        std::fs::write(root.path(paths::HEALTH_STATE), split.to_string()).unwrap();
        let rep = run_with(&root, &["--json", "status"], &ifs, &FakePeer::healthy()).unwrap();
        assert_eq!(
            rep.json["health"]["split_brain"],
            "10.99.1.254 on lan0 also answered by 02:00:00:00:00:02"
        );
        let rep = run_with(&root, &["status"], &ifs, &FakePeer::healthy()).unwrap();
        assert!(
            rep.human
                .contains("SPLIT BRAIN: 10.99.1.254 on lan0 also answered by 02:00:00:00:00:02"),
            "{}",
            rep.human
        );
        let rep = run_with(&root, &["metrics"], &ifs, &FakePeer::healthy()).unwrap();
        assert!(
            rep.human.contains("\nns_ha_split_brain 1\n"),
            "{}",
            rep.human
        );
        std::fs::write(root.path(paths::HEALTH_STATE), state.to_string()).unwrap();
        let rep = run_with(&root, &["metrics"], &ifs, &FakePeer::healthy()).unwrap();
        assert!(
            rep.human.contains("\nns_ha_split_brain 0\n"),
            "{}",
            rep.human
        );
        // A state older than 5 s: the monitor is not running.
        let mut old = state;
        old["updated_ms"] = json!(CLOCK_MS - 6000);
        std::fs::write(root.path(paths::HEALTH_STATE), old.to_string()).unwrap();
        let rep = run_with(&root, &["status"], &ifs, &FakePeer::healthy()).unwrap();
        assert!(rep.human.contains("(monitor not running"), "{}", rep.human);

        let rep = run_with(
            &root,
            &["--json", "health", "--list"],
            &ifs,
            &FakePeer::healthy(),
        )
        .unwrap();
        assert_eq!(rep.json["checks"][0]["id"], "interfaces");
        assert_eq!(rep.json["unchecked_links"], json!(["lan0"]));
        assert!(
            rep.human.contains("reach:lan0           not checked"),
            "{}",
            rep.human
        );
    }

    #[test]
    fn doctor_exit_code_follows_problems() {
        let (_d, root) = primary_root();
        let ifs = master_ifs();
        let rep = run_with(&root, &["doctor"], &ifs, &FakePeer::healthy()).unwrap();
        assert_eq!(rep.code, Code::Ok, "{}", rep.human);
        let down = FakePeer {
            up: false,
            ..FakePeer::healthy()
        };
        let rep = run_with(&root, &["doctor"], &ifs, &down).unwrap();
        assert_eq!(rep.code, Code::Unhealthy);
        assert_eq!(rep.json["healthy"], false);
    }

    #[test]
    fn health_writes_the_track_file_and_fails_with_the_reason() {
        let (_d, root) = primary_root();
        let ifs = master_ifs();
        let peer = FakePeer::healthy();
        run_with(&root, &["health", "--track-file"], &ifs, &peer).unwrap();
        let track = root.path(paths::HEALTH_TRACK);
        assert_eq!(std::fs::read_to_string(&track).unwrap(), "0\n");
        let mut down = ifs.clone();
        down.0[1].up = false;
        let e = run_with(&root, &["health", "--track-file"], &down, &peer).unwrap_err();
        assert_eq!(ns_ha_common::code_of(&e), Code::Unhealthy);
        assert!(e.to_string().contains("lan0 is down"), "{e}");
        assert_eq!(std::fs::read_to_string(&track).unwrap(), "1\n");
    }
}
