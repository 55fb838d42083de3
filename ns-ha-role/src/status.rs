//! `ns-ha-role status`: what keepalived says, what the node holds, what the
//! role engine applied, what is still failing, and the recent transitions.

use anyhow::Result;
use serde::Serialize;
use std::fmt::Write as _;

use ns_ha_common::config::{load_cluster_opt, load_node_opt};

use crate::events::{Event, EventStore};
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
    /// What the node should be now.
    pub target: Target,
    pub applied: Applied,
    pub history: Vec<Transition>,
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
