//! The one serialized reconciler.
//!
//! Every entry point (notify, FIFO reader, sync-applied, apply, cron) ends up
//! here. Only one process reconciles at a time (a flock); whoever finds it
//! busy leaves, because the holder re-reads the event log before it lets go
//! ("dirty counter"): N concurrent events give at most one running pass plus
//! one follow-up, and the follow-up converges on the latest state, it does
//! not replay the burst. One-shot actions (conntrackd commands, reloads, the
//! sync push) are remembered per transition, so they run once and are
//! retried only while they fail.

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ns_ha_common::cmd::CommandRunner;
use ns_ha_common::config::{load_cluster_opt, load_node_opt, Role};
use ns_ha_common::exit::{code_of, Code};
use ns_ha_common::fsutil::{atomic_write, NodeLock};
use ns_ha_common::net::IpCommand;
use ns_ha_common::role_config::RoleSettings;
use ns_ha_common::service::manager;
use ns_ha_common::NodeRoot;

use crate::events::{now_ms, run_path, EventLog, EventStore};
use crate::exec::Executor;
pub use crate::history::PassKind;
use crate::history::{self, ActionRecord, Outcome, Transition};
use crate::plan::{self, Once, Target, VipView};

/// What the reconciler needs from the world.
pub struct Ctx<'a> {
    pub root: NodeRoot,
    pub runner: &'a dyn CommandRunner,
    /// `ns-ha-sync`, when installed.
    pub sync_tool: Option<PathBuf>,
}

/// What the reconciler applied last: `<root>/run/ns-ha/role/state.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// MASTER, BACKUP, FAULT, STOP, or a hands-off label; empty before the first pass.
    pub label: String,
    /// When the node entered this state (Unix ms).
    pub since_ms: u64,
    /// Event sequence number at which this state was entered.
    pub epoch_seq: u64,
    /// One-shot actions of this transition that succeeded.
    pub done: BTreeSet<String>,
    /// The sync whose one-shot actions are in `sync_done`.
    pub sync_seq: u64,
    pub sync_done: BTreeSet<String>,
    /// The event sequence number the last pass handled.
    pub handled_seq: u64,
    /// When the last pass finished (Unix ms).
    pub last_pass_ms: u64,
    /// Actions that failed in the last pass (retried on the next one).
    pub pending: Vec<ActionRecord>,
}

pub fn load_applied(root: &NodeRoot) -> Result<Applied> {
    let path = run_path(root, "state.json");
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(serde_json::from_str(&t).unwrap_or_else(|e| {
            log::warn!("{} is invalid ({e}): starting over", path.display());
            Applied::default()
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Applied::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save_applied(root: &NodeRoot, a: &Applied) -> Result<()> {
    let mut text = serde_json::to_string_pretty(a)?;
    text.push('\n');
    atomic_write(&run_path(root, "state.json"), text.as_bytes(), 0o644)
}

/// The lock a FIFO reader holds (shared) while it runs.
pub fn reader_lock_path(root: &NodeRoot) -> PathBuf {
    run_path(root, "fifo-reader.lock")
}

/// Whether a FIFO reader is alive on this node (it holds its lock shared).
pub fn reader_alive(root: &NodeRoot) -> bool {
    let Ok(f) = OpenOptions::new().read(true).open(reader_lock_path(root)) else {
        return false;
    };
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(_probe) => false,
        Err((_, errno)) => errno == nix::errno::Errno::EWOULDBLOCK,
    }
}

/// The cluster VIPs (and the HA-link heartbeat VIP) this node holds now.
pub fn observe_vips(ctx: &Ctx, cluster: &ns_ha_common::config::ClusterConfig) -> Option<VipView> {
    match ns_ha_common::vips::observe(cluster, &IpCommand { runner: ctx.runner }) {
        Ok(vips) => Some(VipView {
            held: ns_ha_common::vips::held_count(&vips),
            total: vips.len(),
        }),
        Err(e) => {
            log::warn!("cannot read this node's addresses: {e:#}");
            None
        }
    }
}

/// The result of one pass, for `apply` and the tests.
#[derive(Debug, Clone, Serialize)]
pub struct PassReport {
    pub from: String,
    pub to: String,
    pub reason: String,
    pub transition: bool,
    /// What the pass was: a transition, a return to the same state, or a retry.
    pub kind: PassKind,
    pub actions: Vec<ActionRecord>,
    pub duration_ms: u64,
}

impl PassReport {
    /// One line: what the pass was and how its actions ended (logged by
    /// every pass, whoever runs it: notify, the FIFO reader, apply, a sync).
    pub fn summary(&self) -> String {
        let count = |o| self.actions.iter().filter(|a| a.outcome == o).count();
        let what = match self.kind {
            PassKind::Transition => format!("{} -> {}", self.from, self.to),
            PassKind::Returned => format!("{} again", self.to),
            _ => format!("{} (no transition)", self.to),
        };
        format!(
            "{what}: {} changed, {} unchanged, {} skipped, {} failed in {} ms",
            count(Outcome::Changed),
            count(Outcome::Unchanged),
            count(Outcome::Skipped),
            self.failures(),
            self.duration_ms
        )
    }

    pub fn failures(&self) -> usize {
        self.actions
            .iter()
            .filter(|a| a.outcome.is_failure())
            .count()
    }
}

/// One reconcile pass (the caller holds the reconcile lock).
pub fn pass(ctx: &Ctx, trigger: &str) -> Result<PassReport> {
    let started = Instant::now();
    let start_ms = now_ms();
    let store = EventStore::new(&ctx.root);
    let log: EventLog = store.load()?;
    let cluster = load_cluster_opt(&ctx.root)?;
    let node = load_node_opt(&ctx.root)?;
    let settings = cluster
        .as_ref()
        .map(|c| c.roles.clone())
        .unwrap_or_default();
    if let Some(c) = &cluster {
        settings.validate(
            &plan::protected_links(c)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )?;
    }
    let vips = cluster.as_ref().and_then(|c| observe_vips(ctx, c));
    let fifo = reader_alive(&ctx.root);
    let target: Target = plan::decide(cluster.as_ref(), &log, fifo, vips);
    let mut applied = load_applied(&ctx.root)?;
    // The first event this pass answers: takeover-to-done is measured from it.
    let trigger_ms = log
        .recent
        .iter()
        .filter(|e| e.seq > applied.handled_seq)
        .map(|e| e.unix_ms)
        .min();
    let from = if applied.label.is_empty() {
        "NONE".to_string()
    } else {
        applied.label.clone()
    };
    let flapped = target.state.is_some_and(|s| {
        applied.label == s.as_str() && log.flapped_since(applied.epoch_seq, s, fifo)
    });
    let kind = if applied.label != target.label {
        PassKind::Transition
    } else if flapped {
        PassKind::Returned
    } else {
        PassKind::Retry
    };
    let transition = kind != PassKind::Retry;
    // What already failed before this pass: failing again is no news.
    let was_pending: BTreeSet<String> = applied.pending.iter().map(|a| a.action.clone()).collect();
    if transition {
        applied.label = target.label.clone();
        applied.since_ms = start_ms;
        applied.epoch_seq = log.seq;
        applied.done.clear();
    }
    let mut actions = Vec::new();
    if let (Some(state), Some(cluster)) = (target.state, &cluster) {
        let role = node.as_ref().map(|n| n.role).unwrap_or(Role::Backup);
        let backend = node.as_ref().map(|n| n.service_backend).unwrap_or_default();
        let sync = log.sync.as_ref();
        if let Some(s) = sync {
            if s.seq != applied.sync_seq {
                applied.sync_seq = s.seq;
                applied.sync_done.clear();
            }
        }
        let lanes: Vec<plan::Lane> = plan::build(&settings, state, role, sync)
            .into_iter()
            .map(|lane| {
                lane.into_iter()
                    .filter(|a| match a.once {
                        Once::Always => true,
                        Once::PerTransition => !applied.done.contains(&a.id),
                        Once::PerSync => !applied.sync_done.contains(&a.id),
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|l| !l.is_empty())
            .collect();
        let services = manager(backend, &ctx.root, ctx.runner);
        let exec = Executor {
            root: &ctx.root,
            runner: ctx.runner,
            services: services.as_ref(),
            backend,
            timeout: Duration::from_millis(settings.action_timeout_ms),
            crontab: ctx.root.path(&settings.crontab),
            sync_tool: ctx.sync_tool.clone(),
            protected: plan::protected_links(cluster),
        };
        actions = exec.run(&lanes);
        let once_of = |id: &str| lanes.iter().flatten().find(|a| a.id == id).map(|a| a.once);
        for r in &actions {
            if r.outcome.is_failure() {
                continue;
            }
            match once_of(&r.action) {
                Some(Once::PerTransition) => {
                    applied.done.insert(r.action.clone());
                }
                Some(Once::PerSync) => {
                    applied.sync_done.insert(r.action.clone());
                }
                _ => {}
            }
        }
        if let Some(s) = sync {
            let sync_failed = actions
                .iter()
                .any(|r| r.outcome.is_failure() && once_of(&r.action) == Some(Once::PerSync));
            if !sync_failed {
                store.clear_sync(s.seq)?;
            }
        }
    } else if let Some(s) = &log.sync {
        store.clear_sync(s.seq)?;
    }
    applied.pending = actions
        .iter()
        .filter(|a| a.outcome.is_failure())
        .cloned()
        .collect();
    applied.handled_seq = log.seq;
    applied.last_pass_ms = now_ms();
    save_applied(&ctx.root, &applied)?;
    let reason = format!("{trigger}: {}", target.reason);
    // The history says what happened: transitions, and passes that changed
    // something or failed in a new way. A retry that fails the same way
    // again is not an event (status shows it as pending, with the last pass).
    let worth = transition
        || actions.iter().any(|a| {
            a.outcome == Outcome::Changed
                || (a.outcome.is_failure() && !was_pending.contains(&a.action))
        });
    if worth {
        let t = Transition {
            unix_ms: start_ms,
            event_unix_ms: trigger_ms,
            done_unix_ms: applied.last_pass_ms,
            from: from.clone(),
            to: target.label.clone(),
            kind,
            reason: reason.clone(),
            actions: actions.clone(),
        };
        history::append(&ctx.root, &t, settings.history_limit)?;
    }
    let report = PassReport {
        from,
        to: target.label,
        reason,
        transition,
        kind,
        actions,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    for a in report.actions.iter().filter(|a| a.outcome.is_failure()) {
        log::warn!("{} {}: {}", a.action, a.outcome.as_str(), a.detail);
    }
    log::info!("{}", report.summary());
    Ok(report)
}

fn lock_path(root: &NodeRoot) -> PathBuf {
    run_path(root, "reconcile.lock")
}

/// Run passes until no event is left unhandled. With `wait: None` it leaves
/// at once when another reconciler holds the lock (that one will see our
/// event); with `Some(d)` it waits up to `d` for the lock and runs at least
/// one pass (`apply`).
pub fn reconcile(ctx: &Ctx, trigger: &str, wait: Option<Duration>) -> Result<Vec<PassReport>> {
    let store = EventStore::new(&ctx.root);
    let mut reports = Vec::new();
    let mut force = wait.is_some();
    loop {
        let lock = match NodeLock::acquire(&lock_path(&ctx.root), wait.unwrap_or(Duration::ZERO)) {
            Ok(l) => l,
            Err(e) if code_of(&e) == Code::Conflict && wait.is_none() => {
                log::info!("another reconciler runs: it will handle this event");
                return Ok(reports);
            }
            Err(e) => return Err(e),
        };
        loop {
            if !force && store.seq()? <= load_applied(&ctx.root)?.handled_seq {
                break;
            }
            force = false;
            let why = if reports.is_empty() {
                trigger.to_string()
            } else {
                format!("{trigger} (follow-up)")
            };
            reports.push(pass(ctx, &why)?);
        }
        drop(lock);
        // An event recorded between our last check and the unlock found the
        // lock busy and left: pick it up.
        if store.seq()? <= load_applied(&ctx.root)?.handled_seq {
            return Ok(reports);
        }
    }
}

/// Settings of the node (defaults when it has no cluster config).
pub fn settings(root: &NodeRoot) -> Result<RoleSettings> {
    Ok(load_cluster_opt(root)?.map(|c| c.roles).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{NewEvent, Source};
    use crate::testkit::FakeNode;

    fn event(node: &FakeNode, state: &str) {
        EventStore::new(&node.root)
            .record(
                NewEvent::from_notify("GROUP", "ns_ha", state, Some("200")).unwrap(),
                Source::Notify,
            )
            .unwrap();
    }

    fn outcome(r: &PassReport, id: &str) -> Option<Outcome> {
        r.actions.iter().find(|a| a.action == id).map(|a| a.outcome)
    }

    #[test]
    fn configured_wireguard_tunnels_are_created_on_master_and_removed_otherwise() {
        let node = FakeNode::new(Role::Primary, &["conntrackd"]);
        std::fs::create_dir_all(node.root.path("/etc/wireguard")).unwrap();
        std::fs::write(
            node.root.path("/etc/wireguard/wg1.conf"),
            "[Interface]\nPrivateKey = cHJpdmF0ZQ==\nAddress = 10.99.20.1/24\n[Peer]\nPublicKey = QUxJQ0U=\nAllowedIPs = 10.99.20.2/32\nEndpoint = 10.99.2.100:51820\n",
        )
        .unwrap();
        node.runner.with(|s| {
            s.holds_vips = true;
            // A wg link that no file describes: only set up or down.
            s.links_up.insert("wg0".into(), false);
        });
        event(&node, "MASTER");
        let r = &reconcile(&node.ctx(), "notify", None).unwrap()[0];
        assert_eq!(outcome(r, "link wg* up"), Some(Outcome::Changed));
        let calls = node.runner.calls();
        assert!(
            calls.iter().any(|c| c == "ip link add wg1 type wireguard"),
            "{calls:#?}"
        );
        assert!(
            calls.iter().any(|c| c.contains("wg setconf wg1")),
            "{calls:#?}"
        );
        // The configured endpoint gets a handshake at once.
        assert!(
            calls.iter().any(|c| c.contains("persistent-keepalive 25")),
            "{calls:#?}"
        );
        node.runner.with(|s| {
            assert_eq!(s.links_up.get("wg1"), Some(&true));
            assert_eq!(s.links_up.get("wg0"), Some(&true));
        });
        // Converged: a second pass changes nothing.
        let again = reconcile(&node.ctx(), "apply", Some(Duration::from_secs(1))).unwrap();
        assert_eq!(outcome(&again[0], "link wg* up"), Some(Outcome::Unchanged));

        node.runner.with(|s| s.holds_vips = false);
        event(&node, "BACKUP");
        let r = &reconcile(&node.ctx(), "notify", None).unwrap()[0];
        assert_eq!(outcome(r, "link wg* down"), Some(Outcome::Changed));
        node.runner.with(|s| {
            assert_eq!(s.links_up.get("wg1"), None, "the tunnel is removed");
            assert_eq!(
                s.links_up.get("wg0"),
                Some(&false),
                "the other link is set down"
            );
        });
    }

    #[test]
    fn master_starts_services_once_and_runs_conntrackd_in_order() {
        let node = FakeNode::new(
            Role::Primary,
            &["dnsmasq", "openvpn", "conntrackd", "nginx"],
        );
        node.runner.with(|s| {
            s.holds_vips = true;
            s.running.insert("nginx".into());
            s.links_up.insert("wg0".into(), false);
            s.links_up.insert("lan0".into(), true);
        });
        event(&node, "MASTER");
        let reports = reconcile(&node.ctx(), "notify", None).unwrap();
        assert_eq!(reports.len(), 1);
        let r = &reports[0];
        assert!(r.transition);
        assert_eq!(r.to, "MASTER");
        assert!(node.runner.running("dnsmasq") && node.runner.running("openvpn"));
        assert_eq!(outcome(r, "service snort running"), Some(Outcome::Skipped));
        assert_eq!(outcome(r, "reload nginx"), Some(Outcome::Changed));
        assert_eq!(outcome(r, "link wg* up"), Some(Outcome::Changed));
        assert_eq!(outcome(r, "sync push"), Some(Outcome::Skipped));
        let ct: Vec<String> = node
            .runner
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("conntrackd") && !c.ends_with("-s"))
            .map(|c| c.rsplit(' ').next().unwrap().to_string())
            .collect();
        assert_eq!(ct, ["-c", "-f", "-R", "-B"]);
        // Nothing new: apply converges without repeating one-shot actions.
        let again = reconcile(&node.ctx(), "apply", Some(Duration::from_secs(1))).unwrap();
        assert!(!again[0].transition);
        assert!(again[0]
            .actions
            .iter()
            .all(|a| matches!(a.outcome, Outcome::Unchanged | Outcome::Skipped)));
        let h = history::read(&node.root, 10, 100).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!((h[0].from.as_str(), h[0].to.as_str()), ("NONE", "MASTER"));
    }

    #[test]
    fn backup_stops_services_disables_cron_and_shortens_timers() {
        let node = FakeNode::new(Role::Backup, &["dnsmasq", "conntrackd"]);
        node.runner.with(|s| {
            s.running.insert("dnsmasq".into());
            s.running.insert("conntrackd".into());
        });
        let tab = node.root.path("/etc/crontabs/root");
        std::fs::create_dir_all(tab.parent().unwrap()).unwrap();
        std::fs::write(&tab, "0 3 * * * /usr/sbin/send-heartbeat\n").unwrap();
        event(&node, "BACKUP");
        let r = reconcile(&node.ctx(), "notify", None).unwrap().remove(0);
        assert_eq!(r.to, "BACKUP");
        assert!(!node.runner.running("dnsmasq"));
        assert!(std::fs::read_to_string(&tab)
            .unwrap()
            .starts_with(crate::cron::MARKER));
        assert_eq!(
            outcome(&r, "conntrackd shorten-timers"),
            Some(Outcome::Changed)
        );
        assert_eq!(
            outcome(&r, "conntrackd request-resync"),
            Some(Outcome::Changed)
        );
        // A sync brings the master's crontab back: sync-applied re-disables it.
        std::fs::write(&tab, "0 3 * * * /usr/sbin/send-heartbeat\n").unwrap();
        EventStore::new(&node.root)
            .record_sync(Some(vec!["/etc/crontabs/root".into()]))
            .unwrap();
        let r = reconcile(&node.ctx(), "sync-applied", None)
            .unwrap()
            .remove(0);
        assert_eq!(outcome(&r, "cron jobs"), Some(Outcome::Changed));
        assert!(std::fs::read_to_string(&tab)
            .unwrap()
            .starts_with(crate::cron::MARKER));
        assert!(EventStore::new(&node.root).load().unwrap().sync.is_none());
    }

    #[test]
    fn a_hanging_start_is_reported_and_retried_without_blocking_the_rest() {
        let node = FakeNode::new(Role::Primary, &["dnsmasq", "openvpn", "conntrackd"]);
        node.runner.with(|s| {
            s.holds_vips = true;
            s.hang.insert("openvpn".into());
        });
        event(&node, "MASTER");
        let r = reconcile(&node.ctx(), "notify", None).unwrap().remove(0);
        assert_eq!(
            outcome(&r, "service openvpn running"),
            Some(Outcome::TimedOut)
        );
        assert_eq!(
            outcome(&r, "service dnsmasq running"),
            Some(Outcome::Changed)
        );
        assert_eq!(outcome(&r, "conntrackd bulk-send"), Some(Outcome::Changed));
        let applied = load_applied(&node.root).unwrap();
        assert_eq!(applied.pending.len(), 1);
        node.runner.with(|s| s.hang.clear());
        let r = reconcile(&node.ctx(), "apply", Some(Duration::from_secs(1)))
            .unwrap()
            .remove(0);
        assert_eq!(
            outcome(&r, "service openvpn running"),
            Some(Outcome::Changed)
        );
        assert_eq!(
            outcome(&r, "conntrackd commit"),
            None,
            "one-shot actions are not repeated"
        );
        assert!(load_applied(&node.root).unwrap().pending.is_empty());
    }

    /// Issue 13 item 7: after a failover, keepalived's next event for the
    /// same state made a pass that retried a failing action, and the history
    /// showed it as a transition `MASTER -> MASTER … 1 failed`.
    #[test]
    fn the_history_shows_transitions_not_retries_of_the_same_failure() {
        let node = FakeNode::new(Role::Primary, &["dnsmasq", "conntrackd"]);
        node.runner.with(|s| {
            s.holds_vips = true;
            s.hang.insert("dnsmasq".into());
        });
        event(&node, "MASTER");
        reconcile(&node.ctx(), "notify", None).unwrap();
        // keepalived's FIFO line for the same state, and a cron retry: the
        // same action fails again; nothing happened worth a history entry.
        event(&node, "MASTER");
        let r = reconcile(&node.ctx(), "fifo", None).unwrap().remove(0);
        assert!(!r.transition);
        assert_eq!(
            outcome(&r, "service dnsmasq running"),
            Some(Outcome::TimedOut)
        );
        reconcile(&node.ctx(), "apply", Some(Duration::from_secs(1))).unwrap();
        let h = history::read(&node.root, 10, 100).unwrap();
        let shown: Vec<(&str, &str, PassKind)> = h
            .iter()
            .map(|t| (t.from.as_str(), t.to.as_str(), t.kind))
            .collect();
        assert_eq!(shown, [("NONE", "MASTER", PassKind::Transition)]);
        assert_eq!(load_applied(&node.root).unwrap().pending.len(), 1);

        // The retry that fixes it is recorded, as a retry, not a transition.
        node.runner.with(|s| s.hang.clear());
        reconcile(&node.ctx(), "apply", Some(Duration::from_secs(1))).unwrap();
        let h = history::read(&node.root, 10, 100).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[1].kind, PassKind::Retry);
        let text = crate::status::render_history(&h);
        assert!(!text.contains("MASTER -> MASTER"), "{text}");
        assert!(text.contains("MASTER (no transition"), "{text}");

        // Leaving MASTER and coming back between two passes re-runs the
        // one-shot actions: shown as a return, not as MASTER -> MASTER.
        event(&node, "BACKUP");
        event(&node, "MASTER");
        let r = reconcile(&node.ctx(), "fifo", None).unwrap().remove(0);
        assert!(r.transition);
        let h = history::read(&node.root, 10, 100).unwrap();
        assert_eq!(h.last().unwrap().kind, PassKind::Returned);
        let text = crate::status::render_history(&h);
        assert!(!text.contains("MASTER -> MASTER"), "{text}");
        assert!(text.contains("MASTER again"), "{text}");
    }

    #[test]
    fn concurrent_out_of_order_events_converge_on_what_the_node_holds() {
        for holds in [false, true] {
            let node = FakeNode::new(Role::Primary, &["dnsmasq", "openvpn", "conntrackd"]);
            node.runner.with(|s| s.holds_vips = holds);
            std::thread::scope(|t| {
                for i in 0..20 {
                    let node = &node;
                    t.spawn(move || {
                        event(node, if (i * 7) % 3 == 0 { "MASTER" } else { "BACKUP" });
                        reconcile(&node.ctx(), "notify", None).unwrap();
                    });
                }
            });
            let applied = load_applied(&node.root).unwrap();
            let log = EventStore::new(&node.root).load().unwrap();
            assert_eq!(applied.handled_seq, log.seq, "an event was left unhandled");
            assert_eq!(applied.label, if holds { "MASTER" } else { "BACKUP" });
            assert_eq!(node.runner.running("dnsmasq"), holds);
            assert_eq!(node.runner.running("openvpn"), holds);
        }
    }

    #[test]
    fn disabled_cluster_is_left_alone() {
        let node = FakeNode::new(Role::Primary, &["dnsmasq"]);
        node.edit_cluster(|c| c.enabled = false);
        node.runner.with(|s| s.running.insert("dnsmasq".into()));
        event(&node, "BACKUP");
        let r = reconcile(&node.ctx(), "notify", None).unwrap().remove(0);
        assert_eq!(r.to, "DISABLED");
        assert!(r.actions.is_empty());
        assert!(node.runner.running("dnsmasq"));
    }
}
