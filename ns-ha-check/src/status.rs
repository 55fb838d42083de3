//! `ns-ha-check status`: one view of the node for an administrator or a
//! monitoring script.
//!
//! The facts live in several places (the configs, keepalived's service, the
//! addresses the node holds, the role engine's state and history, the sync's
//! status). Each is read from its owner: the configs and the held VIPs
//! through `common`, the role engine and the sync by running
//! `ns-ha-role status --json` and `ns-ha-sync status --json` (see
//! [`crate::tools`]), so this view can never disagree with theirs; this
//! module only puts them side by side.

use anyhow::Result;
use serde::Serialize;
use std::fmt::Write as _;
use std::time::Duration;

use ns_ha_common::clock::fmt_utc;
use ns_ha_common::config::{load_cluster_opt, load_node_opt, ClusterConfig, NodeConfig, Role};
use ns_ha_common::service::manager;
use ns_ha_common::vips::{self, LiveState, VipState};
use ns_ha_common::vpn::{self, VpnTunnel};
use ns_ha_common::wan::{self, WanMode};

use crate::liveness::{self, PeerLiveness};
use crate::tools::{self, SyncNode, SyncRun};
use crate::Ctx;

/// How many role transitions the status shows.
pub const TRANSITIONS: usize = 5;
const SERVICE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the role engine recorded (from `ns-ha-role`'s status).
#[derive(Debug, Clone, Serialize)]
pub struct RoleEngine {
    /// State of the last keepalived event that counts (MASTER, BACKUP, ...).
    pub last_event: Option<String>,
    pub last_event_at: Option<String>,
    /// What the node should be now, by the role engine.
    pub target: String,
    /// What the role engine applied last (empty before the first pass).
    pub applied: String,
    pub fifo_reader: bool,
    /// Failed actions waiting for a retry.
    pub pending: Vec<String>,
}

/// The sync as this node last saw it (from `ns-ha-sync`'s status).
#[derive(Debug, Clone, Serialize)]
pub struct SyncView {
    pub generation: u64,
    /// Seconds since the epoch.
    pub last_attempt: Option<u64>,
    pub last_attempt_ok: Option<bool>,
    pub last_success: Option<u64>,
    pub error: Option<String>,
    /// Seconds since the last success (None: never synced).
    pub lag_secs: Option<u64>,
    pub journal_pending: bool,
}

/// One role transition (from `ns-ha-role`'s history).
#[derive(Debug, Clone, Serialize)]
pub struct TransitionView {
    pub at: String,
    pub unix_ms: u64,
    pub from: String,
    pub to: String,
    pub reason: String,
    pub duration_ms: u64,
    pub failed: usize,
}

/// The whole status of a node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// primary or backup; None before init.
    pub node_role: Option<String>,
    pub cluster_id: Option<String>,
    pub enabled: bool,
    /// None: cannot tell (no node config, no init script).
    pub keepalived_running: Option<bool>,
    /// By the VIPs the node holds now.
    pub vrrp_state: Option<LiveState>,
    pub role_engine: RoleEngine,
    pub maintenance: bool,
    pub vips: Vec<VipState>,
    /// The cluster's WANs and whether each is up on this node.
    pub wans: Vec<WanView>,
    pub sync: SyncView,
    pub transitions: Vec<TransitionView>,
    /// Whether the peer answers (None: not paired).
    pub peer: Option<PeerLiveness>,
    /// The health monitor's verdict (None: no monitor has run here).
    pub health: Option<HealthView>,
    /// The VPN tunnels configured here and whether each is up here (they
    /// run on the MASTER only).
    pub vpns: Vec<VpnTunnel>,
}

/// A WAN as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WanView {
    pub interface: String,
    /// `takeover` (up on the MASTER only) or `vip` (own address per node, a VIP moves).
    pub mode: &'static str,
    /// physical, bridge, bond, vlan, pppoe.
    pub kind: &'static str,
    /// static, dhcp, pppoe, with `+ static ipv6`.
    pub addressing: String,
    /// The addresses it carries when up (takeover) or its VIPs (vip).
    pub addresses: Vec<String>,
    /// takeover: up here with its addresses; vip: this node holds its VIPs.
    pub up_here: bool,
    /// takeover, up here: the addresses the device has now (a DHCP lease
    /// included); empty otherwise.
    pub live_addresses: Vec<String>,
}

/// The cluster's WANs as seen on this node.
fn wan_views(ctx: &Ctx, cluster: &ClusterConfig, vips: &[VipState]) -> Vec<WanView> {
    let mut out: Vec<WanView> = cluster
        .lans
        .iter()
        .filter(|l| l.wan)
        .map(|l| WanView {
            interface: l.interface.clone(),
            mode: WanMode::Vip.as_str(),
            kind: "physical",
            addressing: "static".into(),
            addresses: l.vips.iter().map(|v| v.to_string()).collect(),
            up_here: vips
                .iter()
                .filter(|v| v.interface == l.interface)
                .all(|v| v.held),
            live_addresses: Vec::new(),
        })
        .collect();
    for w in &cluster.wans {
        let live_addresses = match wan::observe(ctx.runner, &w.interface, Duration::from_secs(5)) {
            Ok(Some(live)) if live.is_up(w) => Some(live.addresses),
            Ok(_) => None,
            Err(e) => {
                log::warn!("cannot tell whether WAN {} is up: {e:#}", w.interface);
                None
            }
        };
        let up_here = live_addresses.is_some();
        out.push(WanView {
            interface: w.interface.clone(),
            mode: WanMode::Takeover.as_str(),
            kind: w.device.kind(),
            addressing: w.addressing(),
            addresses: w.static_addresses(),
            up_here,
            live_addresses: live_addresses.unwrap_or_default(),
        });
    }
    out
}

/// A check as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HealthCheckView {
    pub id: String,
    pub state: String,
    pub detail: String,
    pub last_latency_ms: Option<f64>,
}

/// The monitor's verdict and its recent decisions.
#[derive(Debug, Clone, Serialize)]
pub struct HealthView {
    /// Whether the monitor wrote its state in the last 5 s.
    pub monitor_running: bool,
    pub priority: Option<u64>,
    pub fit: bool,
    pub reason: String,
    pub checks: Vec<HealthCheckView>,
    /// The LAN VIPs another MAC answers for while this node is MASTER
    /// (None: no split brain seen in the last round).
    pub split_brain: Option<String>,
    /// `{unix_ms, priority, track_value, fit, master, reason}`, oldest first.
    pub decisions: Vec<serde_json::Value>,
}

/// The status view of the monitor's state file.
pub fn health_view(state: &serde_json::Value, now_ms: u64) -> HealthView {
    let updated = state["updated_ms"].as_u64().unwrap_or(0);
    let checks = state["checks"]
        .as_object()
        .map(|m| {
            m.values()
                .map(|c| HealthCheckView {
                    id: c["id"].as_str().unwrap_or_default().into(),
                    state: c["state"].as_str().unwrap_or_default().into(),
                    detail: c["detail"].as_str().unwrap_or_default().into(),
                    last_latency_ms: c["last_latency_ms"].as_f64(),
                })
                .collect()
        })
        .unwrap_or_default();
    HealthView {
        monitor_running: now_ms.saturating_sub(updated) <= 5_000,
        priority: state["priority"].as_u64(),
        fit: state["fit"].as_bool().unwrap_or(false),
        reason: state["reason"].as_str().unwrap_or_default().into(),
        checks,
        split_brain: state["split_brain"].as_str().map(str::to_string),
        decisions: state["decisions"].as_array().cloned().unwrap_or_default(),
    }
}

/// Whether keepalived runs, by the node's service backend.
pub fn keepalived_running(ctx: &Ctx, node: &NodeConfig) -> Result<bool> {
    manager(node.service_backend, &ctx.root, ctx.runner).is_running("keepalived", SERVICE_TIMEOUT)
}

fn sync_view(s: SyncNode, now_secs: u64) -> SyncView {
    let at = |r: &Option<SyncRun>| r.as_ref().map(|r| r.at);
    SyncView {
        generation: s.generation,
        last_attempt: at(&s.last_attempt),
        last_attempt_ok: s.last_attempt.as_ref().map(|r| r.ok),
        last_success: at(&s.last_success),
        error: s.last_attempt.as_ref().and_then(|r| r.error.clone()),
        lag_secs: at(&s.last_success).map(|t| now_secs.saturating_sub(t)),
        journal_pending: s.journal_pending,
    }
}

/// Gather the status of this node.
pub fn collect(ctx: &Ctx) -> Result<NodeStatus> {
    let node = load_node_opt(&ctx.root)?;
    let cluster = load_cluster_opt(&ctx.root)?;
    let role = tools::role_status(ctx.tools, &ctx.root, TRANSITIONS)?;
    let keepalived_running = match &node {
        Some(n) => match keepalived_running(ctx, n) {
            Ok(r) => Some(r),
            Err(e) => {
                log::warn!("cannot tell whether keepalived runs: {e:#}");
                None
            }
        },
        None => None,
    };
    let vips = match &cluster {
        Some(c) => vips::observe(c, ctx.ifs)?,
        None => Vec::new(),
    };
    let live = cluster.as_ref().map(|_| vips::live_state(&vips));
    let wans = cluster
        .as_ref()
        .map(|c| wan_views(ctx, c, &vips))
        .unwrap_or_default();
    let peer = match (&node, &cluster) {
        (Some(n), Some(c)) if n.peer_host_key.is_some() || n.role == Role::Backup => {
            Some(liveness::observe(n, c, &role, live, ctx.peer))
        }
        _ => None,
    };
    let now = ctx.clock.now_secs();
    let sync = sync_view(tools::sync_status(ctx.tools, &ctx.root)?, now);
    let health =
        crate::monitor::read_state(&ctx.root)?.map(|st| health_view(&st, ctx.clock.now_ms()));
    Ok(NodeStatus {
        node_role: node.map(|n| n.role.to_string()),
        cluster_id: cluster.as_ref().map(|c| c.cluster_id.clone()),
        enabled: role.enabled,
        keepalived_running,
        vrrp_state: live,
        role_engine: RoleEngine {
            last_event: role.last_event.as_ref().map(|e| e.state.clone()),
            last_event_at: role.last_event.as_ref().map(|e| fmt_utc(e.unix_ms)),
            target: role.target.label.clone(),
            applied: role.applied.label.clone(),
            fifo_reader: role.fifo_reader,
            pending: role
                .applied
                .pending
                .iter()
                .map(|p| format!("{} {}: {}", p.action, p.outcome, p.detail))
                .collect(),
        },
        maintenance: role.maintenance,
        vips,
        wans,
        sync,
        transitions: role
            .history
            .iter()
            .map(|t| TransitionView {
                at: fmt_utc(t.unix_ms),
                unix_ms: t.unix_ms,
                from: t.from.clone(),
                to: t.to.clone(),
                reason: t.reason.clone(),
                duration_ms: t.done_unix_ms.saturating_sub(t.unix_ms),
                failed: t.actions.iter().filter(|a| a.failed()).count(),
            })
            .collect(),
        peer,
        health,
        vpns: vpn::tunnels(&ctx.root, ctx.ifs),
    })
}

fn or_dash(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("-")
}

/// A time with its age (the age was computed against the status's clock).
fn ago(at: Option<u64>, age_secs: Option<u64>) -> String {
    match at {
        Some(t) => format!(
            "{} ({} s ago)",
            fmt_utc(t.saturating_mul(1000)),
            age_secs.unwrap_or(0)
        ),
        None => "never".into(),
    }
}

/// One line of the human form: the key, aligned; an empty key continues
/// the previous line's list.
fn line(w: &mut String, k: &str, v: String) {
    let key = if k.is_empty() {
        String::new()
    } else {
        format!("{k}:")
    };
    let _ = writeln!(w, "{key:<13}{v}");
}

/// A list under one key: the key on its first line only.
fn block(w: &mut String, k: &str, rows: impl Iterator<Item = String>) {
    for (i, r) in rows.enumerate() {
        line(w, if i == 0 { k } else { "" }, r);
    }
}

/// The human form: short, one fact a line, aligned.
pub fn render(s: &NodeStatus) -> String {
    let mut w = String::new();
    line(
        &mut w,
        "node",
        format!(
            "{}, cluster {}, HA {}",
            s.node_role.as_deref().unwrap_or("not initialized"),
            or_dash(&s.cluster_id),
            if s.enabled { "enabled" } else { "disabled" }
        ),
    );
    line(
        &mut w,
        "keepalived",
        match s.keepalived_running {
            Some(true) => "running".into(),
            Some(false) => "not running".into(),
            None => "unknown".into(),
        },
    );
    let held = s.vips.iter().filter(|v| v.held).count();
    let re = &s.role_engine;
    line(
        &mut w,
        "VRRP",
        format!(
            "{} ({held}/{} VIPs held); role engine: last event {}{}, applied {}",
            s.vrrp_state.map(|v| v.as_str()).unwrap_or("-"),
            s.vips.len(),
            or_dash(&re.last_event),
            re.last_event_at
                .as_ref()
                .map(|a| format!(" at {a}"))
                .unwrap_or_default(),
            if re.applied.is_empty() {
                "nothing yet"
            } else {
                &re.applied
            }
        ),
    );
    line(
        &mut w,
        "maintenance",
        if s.maintenance { "ON" } else { "off" }.into(),
    );
    block(
        &mut w,
        "VIPs",
        s.vips.iter().map(|v| {
            format!(
                "{:<18} {:<8} {}{}",
                v.vip.to_string(),
                v.interface,
                if v.held { "held" } else { "not held" },
                if v.heartbeat { " (heartbeat)" } else { "" }
            )
        }),
    );
    block(
        &mut w,
        "WANs",
        s.wans.iter().map(|x| {
            format!(
                "{:<8} {:<8} {} {}{} {}",
                x.interface,
                x.mode,
                x.kind,
                x.addressing,
                if x.addresses.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", x.addresses.join(", "))
                },
                match (x.up_here, x.live_addresses.as_slice()) {
                    (false, _) => "not up here".to_string(),
                    (true, []) => "up here".to_string(),
                    (true, live) => format!("up here with {}", live.join(", ")),
                }
            )
        }),
    );
    let sy = &s.sync;
    line(
        &mut w,
        "sync",
        format!(
            "generation {}, last success {}, last attempt {}{}",
            sy.generation,
            ago(sy.last_success, sy.lag_secs),
            match sy.last_attempt_ok {
                Some(true) => "ok",
                Some(false) => "FAILED",
                None => "never",
            },
            sy.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
    );
    if !re.pending.is_empty() {
        line(&mut w, "pending", re.pending.join("; "));
    }
    if let Some(p) = &s.peer {
        line(&mut w, "peer", p.summary.clone());
    }
    if let Some(h) = &s.health {
        line(
            &mut w,
            "health",
            format!(
                "{} priority {}: {}{}",
                if h.fit { "fit," } else { "UNFIT," },
                h.priority.map_or("-".into(), |p| p.to_string()),
                h.reason,
                if h.monitor_running {
                    ""
                } else {
                    " (monitor not running: state is stale)"
                }
            ),
        );
        if let Some(sb) = &h.split_brain {
            line(&mut w, "", format!("SPLIT BRAIN: {sb}"));
        }
        for c in &h.checks {
            line(
                &mut w,
                "",
                format!(
                    "{:<18} {:<15} {}{}",
                    c.id,
                    c.state,
                    c.detail,
                    c.last_latency_ms
                        .map(|l| format!(" ({l} ms)"))
                        .unwrap_or_default()
                ),
            );
        }
        for d in h.decisions.iter().rev().take(3) {
            line(
                &mut w,
                "",
                format!(
                    "decision {} priority {}: {}",
                    fmt_utc(d["unix_ms"].as_u64().unwrap_or(0)),
                    d["priority"],
                    d["reason"].as_str().unwrap_or_default()
                ),
            );
        }
    }
    block(
        &mut w,
        "VPNs",
        s.vpns.iter().map(|t| {
            format!(
                "{:<18} {:<9} {}",
                t.name,
                format!("{:?}", t.kind).to_lowercase(),
                match (&t.interface, t.up) {
                    (Some(i), Some(true)) => format!("{i} up here"),
                    (Some(i), _) => format!("{i} not up here"),
                    (None, Some(true)) => "charon runs here".into(),
                    (None, Some(false)) => "charon not running here".into(),
                    (None, None) => "interface not named in the config".into(),
                }
            )
        }),
    );
    block(
        &mut w,
        "transitions",
        s.transitions.iter().rev().map(|t| {
            format!(
                "{} {} -> {} in {} ms{} ({})",
                t.at,
                t.from,
                t.to,
                t.duration_ms,
                if t.failed > 0 {
                    format!(", {} failed", t.failed)
                } else {
                    String::new()
                },
                t.reason
            )
        }),
    );
    w
}
