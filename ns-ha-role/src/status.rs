//! `ns-ha-role status`: what keepalived says, what the node holds, what the
//! role engine applied, what is still failing, and the recent transitions.

use anyhow::Result;
use serde::Serialize;
use std::fmt::Write as _;

use ns_ha_common::config::{load_cluster_opt, load_node_opt};

use crate::events::{Event, EventLog, EventStore, KaState, Scope};
use crate::history::{self, fmt_utc, Outcome, PassKind, Transition};
use crate::maintenance;
use crate::plan::{self, Target, VipView};
use crate::reconcile::{load_applied, observe_vips, reader_alive, settings, Applied, Ctx};

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// primary or backup (None: not initialized).
    pub node_role: Option<String>,
    pub enabled: bool,
    pub maintenance: bool,
    /// The last keepalived event that counts.
    pub last_event: Option<Event>,
    pub fifo_reader: bool,
    pub vips: Option<VipView>,
    /// Each VRRP instance's last state as keepalived reported it (one per
    /// link: `ha_link`, `lan_IF`), and since when: how `ns-ha-check` tells
    /// on which links the peer's adverts are heard (BACKUP) or not (MASTER).
    pub instances: Vec<InstanceState>,
    /// What the node should be now.
    pub target: Target,
    pub applied: Applied,
    pub history: Vec<Transition>,
}

/// One VRRP instance's last reported state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceState {
    pub name: String,
    pub state: KaState,
    /// When it entered this state (Unix ms; the first of the recent events
    /// that reported it without another state in between).
    pub since_ms: u64,
}

/// The last state of every instance among the recorded events, by name.
pub fn instances(log: &EventLog) -> Vec<InstanceState> {
    let mut events: Vec<&Event> = log
        .recent
        .iter()
        .filter(|e| e.scope == Scope::Instance)
        .collect();
    events.sort_by_key(|e| e.seq);
    let mut out: Vec<InstanceState> = Vec::new();
    for e in events {
        match out.iter_mut().find(|i| i.name == e.name) {
            Some(i) if i.state == e.state => {}
            Some(i) => {
                i.state = e.state;
                i.since_ms = e.unix_ms;
            }
            None => out.push(InstanceState {
                name: e.name.clone(),
                state: e.state,
                since_ms: e.unix_ms,
            }),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub fn collect(ctx: &Ctx, history_len: usize) -> Result<Status> {
    let root = &ctx.root;
    let cluster = load_cluster_opt(root)?;
    let node = load_node_opt(root)?;
    let log = EventStore::new(root).load()?;
    let fifo = reader_alive(root);
    let vips = cluster.as_ref().and_then(|c| observe_vips(ctx, c));
    let target = plan::decide(cluster.as_ref(), &log, fifo, vips);
    let limit = settings(root)?.history_limit;
    Ok(Status {
        node_role: node.map(|n| n.role.to_string()),
        enabled: cluster.as_ref().is_some_and(|c| c.enabled),
        maintenance: maintenance::is_on(root),
        last_event: log.current(fifo).cloned(),
        fifo_reader: fifo,
        instances: instances(&log),
        vips,
        target,
        applied: load_applied(root)?,
        history: history::read(root, history_len, limit)?,
    })
}

/// The human form of a status.
pub fn render(s: &Status) -> String {
    let mut w = String::new();
    let _ = writeln!(
        w,
        "node:        {} (HA {}), maintenance {}",
        s.node_role.as_deref().unwrap_or("not initialized"),
        if s.enabled { "enabled" } else { "disabled" },
        if s.maintenance { "ON" } else { "off" }
    );
    let ev = s
        .last_event
        .as_ref()
        .map(|e| format!("{} at {}", e.describe(), fmt_utc(e.unix_ms)))
        .unwrap_or_else(|| "no event since boot".into());
    let _ = writeln!(
        w,
        "keepalived:  {ev}{}",
        if s.fifo_reader {
            ""
        } else {
            " [no FIFO reader]"
        }
    );
    if let Some(v) = s.vips {
        let _ = writeln!(w, "VIPs held:   {}/{}", v.held, v.total);
    }
    let _ = writeln!(w, "target:      {} ({})", s.target.label, s.target.reason);
    let a = &s.applied;
    if a.label.is_empty() {
        let _ = writeln!(w, "applied:     nothing yet");
    } else {
        let _ = writeln!(
            w,
            "applied:     {} since {}, last pass {}",
            a.label,
            fmt_utc(a.since_ms),
            fmt_utc(a.last_pass_ms)
        );
    }
    if a.pending.is_empty() {
        let _ = writeln!(w, "pending:     none");
    } else {
        let _ = writeln!(
            w,
            "pending:     {} failed action(s), retried on the next pass:",
            a.pending.len()
        );
        for p in &a.pending {
            let _ = writeln!(w, "  {} {}: {}", p.action, p.outcome.as_str(), p.detail);
        }
    }
    w.push_str(&render_history(&s.history));
    w
}

/// The history as `status` shows it: a transition reads `FROM -> TO`, a
/// return to the same state `TO again (...)`, a retry `TO (no transition ...)`.
pub fn render_history(history: &[Transition]) -> String {
    let mut w = String::new();
    if !history.is_empty() {
        let _ = writeln!(w, "history (oldest first):");
    }
    for t in history {
        let count = |o: Outcome| t.actions.iter().filter(|a| a.outcome == o).count();
        let what = match t.kind {
            PassKind::Transition => format!("{} -> {}", t.from, t.to),
            PassKind::Returned => {
                format!("{} again (keepalived left it and came back)", t.to)
            }
            PassKind::Retry => format!("{} (no transition: retry)", t.to),
            PassKind::Maintenance => format!("{} (administrator)", t.to),
        };
        let _ = writeln!(
            w,
            "  {} {what} in {} ms: {} changed, {} failed ({})",
            fmt_utc(t.unix_ms),
            t.done_unix_ms.saturating_sub(t.unix_ms),
            count(Outcome::Changed),
            count(Outcome::Failed) + count(Outcome::TimedOut),
            t.reason
        );
        for a in t
            .actions
            .iter()
            .filter(|a| a.outcome != Outcome::Unchanged && a.outcome != Outcome::Skipped)
        {
            let detail = if a.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", a.detail)
            };
            let _ = writeln!(
                w,
                "      {} {} ({} ms){detail}",
                a.action,
                a.outcome.as_str(),
                a.duration_ms
            );
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Source;

    fn ev(seq: u64, name: &str, scope: Scope, state: KaState) -> Event {
        Event {
            seq,
            unix_ms: 1000 * seq,
            scope,
            name: name.into(),
            state,
            prio: None,
            source: Source::Fifo,
        }
    }

    #[test]
    fn instances_keep_the_last_state_and_when_it_began() {
        use KaState::*;
        let log = EventLog {
            seq: 6,
            recent: vec![
                ev(1, "lan_lan0", Scope::Instance, Backup),
                ev(2, "ha_link", Scope::Instance, Backup),
                ev(3, "ns_ha", Scope::Group, Master),
                ev(5, "lan_lan0", Scope::Instance, Master),
                ev(4, "lan_lan0", Scope::Instance, Master),
                ev(6, "ha_link", Scope::Instance, Backup),
            ],
            sync: None,
        };
        let i = instances(&log);
        assert_eq!(
            i,
            vec![
                InstanceState {
                    name: "ha_link".into(),
                    state: Backup,
                    since_ms: 2000
                },
                InstanceState {
                    name: "lan_lan0".into(),
                    state: Master,
                    since_ms: 4000
                },
            ]
        );
        assert_eq!(
            serde_json::to_value(&i[1]).unwrap(),
            serde_json::json!({"name": "lan_lan0", "state": "MASTER", "since_ms": 4000})
        );
    }
}
