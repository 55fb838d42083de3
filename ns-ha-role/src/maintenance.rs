//! Maintenance mode: demote this node gracefully, and keep it demoted across
//! reboots until the administrator turns it off.
//!
//! keepalived tracks `/etc/ns-ha/maintenance.track` with weight -253: writing
//! `1` clamps this node's priority to 1, below any peer (-254 would put it in
//! FAULT, see `ns_ha_common::keepalived`), so the peer preempts while
//! this node still answers (no gap, unlike stopping keepalived), and a node
//! whose peer is down stays master instead of leaving the LAN without a
//! gateway. The file lives under `/etc`, so the mode survives a reboot.

use anyhow::Result;
use serde::Serialize;
use std::time::{Duration, Instant};

use ns_ha_common::config::{load_cluster_opt, load_node_opt, Role};
use ns_ha_common::fsutil::atomic_write;
use ns_ha_common::root::paths;
use ns_ha_common::NodeRoot;

use crate::events::now_ms;
use crate::history::{self, PassKind, Transition};
use crate::plan::VipView;
use crate::reconcile::{load_applied, observe_vips, settings, Ctx};

/// Whether maintenance is on (the track file holds a non-zero value).
pub fn is_on(root: &NodeRoot) -> bool {
    std::fs::read_to_string(root.path(paths::MAINTENANCE_TRACK))
        .map(|t| {
            let v = t.trim();
            !v.is_empty() && v != "0"
        })
        .unwrap_or(false)
}

/// What `maintenance on|off` did.
#[derive(Debug, Clone, Serialize)]
pub struct MaintenanceReport {
    pub maintenance: bool,
    /// Whether the VIPs ended where the mode wants them (None: nothing to wait for).
    pub settled: Option<bool>,
    pub vips: Option<VipView>,
    pub waited_ms: u64,
    pub note: String,
}

/// Turn maintenance on or off and wait (up to `wait`) for the VIPs to move.
pub fn set(ctx: &Ctx, on: bool, wait: Duration) -> Result<MaintenanceReport> {
    let root = &ctx.root;
    atomic_write(
        &root.path(paths::MAINTENANCE_TRACK),
        if on { b"1\n" } else { b"0\n" },
        0o644,
    )?;
    let label = load_applied(root)?.label;
    let cfg = settings(root)?;
    let word = if on { "on" } else { "off" };
    history::append(
        root,
        &Transition {
            unix_ms: now_ms(),
            event_unix_ms: None,
            done_unix_ms: now_ms(),
            from: label.clone(),
            to: label,
            kind: PassKind::Maintenance,
            reason: format!("maintenance {word}"),
            actions: vec![],
        },
        cfg.history_limit,
    )?;
    let cluster = load_cluster_opt(root)?;
    let node = load_node_opt(root)?;
    let mut report = MaintenanceReport {
        maintenance: on,
        settled: None,
        vips: None,
        waited_ms: 0,
        note: String::new(),
    };
    let Some(cluster) = cluster.filter(|c| c.enabled) else {
        report.note = "HA is not enabled: the mode applies when it is".into();
        return Ok(report);
    };
    // Off: only a preempting primary takes the VIPs back.
    let want_all = !on && cluster.vrrp.preempt && node.map(|n| n.role) == Some(Role::Primary);
    if !on && !want_all {
        report.vips = observe_vips(ctx, &cluster);
        report.note = "the VIPs stay where they are (no preemption by this node)".into();
        return Ok(report);
    }
    if wait.is_zero() {
        report.vips = observe_vips(ctx, &cluster);
        report.note = "not waiting for the VIPs to move".into();
        return Ok(report);
    }
    let start = Instant::now();
    loop {
        let v = observe_vips(ctx, &cluster);
        let done = v.is_some_and(|v| if on { v.held == 0 } else { v.held == v.total });
        report.vips = v;
        report.waited_ms = start.elapsed().as_millis() as u64;
        if done || start.elapsed() >= wait {
            report.settled = Some(done);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    report.note = match (on, report.settled) {
        (true, Some(true)) => "the peer took over the VIPs".into(),
        (true, _) => "this node still holds VIPs: the peer did not take over (is it up and not in maintenance?)".into(),
        (false, Some(true)) => "this node took the VIPs back (preemption)".into(),
        (false, _) => "this node did not take the VIPs back yet".into(),
    };
    Ok(report)
}
