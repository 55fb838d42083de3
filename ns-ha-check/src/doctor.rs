//! `ns-ha-check doctor`: everything that can be wrong with a pair, each
//! finding with its fix.
//!
//! After a failover, an upgrade or a hand edit, an administrator wants one
//! command that says what is broken and what to type. Each check is small
//! and independent; a check that cannot run (the peer is unreachable, the
//! config does not load) says so instead of hiding the others.
//!
//! Facts owned by other tools are their answers, interpreted here: the role
//! engine's maintenance and pending actions come from `ns-ha-role status
//! --json`, the backup's drift from `ns-ha-sync verify --json`, the last sync
//! from `ns-ha-sync status --json` (see [`crate::tools`]).

use serde::Serialize;
use std::fmt::Write as _;

use ns_ha_common::activate::tool_path;
use ns_ha_common::config::{load_cluster, load_node, ClusterConfig, NodeConfig, Role};
use ns_ha_common::keepalived::{self, RenderInputs};
use ns_ha_common::proto::{NS_HA_VERSION, UPGRADE_FIX, VERSION_MISMATCH};
use ns_ha_common::role_config::unconfigured_master_services;
use ns_ha_common::root::paths;
use ns_ha_common::service;
use ns_ha_common::vips::{self, LiveState};
use ns_ha_common::vpn;
use std::time::Duration;

use crate::liveness;
use crate::tools::{self, Drift, RoleStatus};
use crate::{health, status, Ctx};
use anyhow::Result;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    /// Worth knowing, not broken (maintenance on).
    Warning,
    /// Broken: `doctor` exits 10.
    Problem,
    /// Could not be checked here or now (the note says why).
    Skipped,
}

impl Severity {
    fn label(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Warning => "WARNING",
            Severity::Problem => "PROBLEM",
            Severity::Skipped => "skipped",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub severity: Severity,
    pub detail: String,
    /// What to do about it (problems and warnings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn ok(check: &'static str, detail: impl Into<String>) -> Finding {
    Finding {
        check,
        severity: Severity::Ok,
        detail: detail.into(),
        fix: None,
    }
}

fn bad(
    check: &'static str,
    severity: Severity,
    detail: impl Into<String>,
    fix: impl Into<String>,
) -> Finding {
    Finding {
        check,
        severity,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

fn skipped(check: &'static str, why: impl Into<String>) -> Finding {
    Finding {
        check,
        severity: Severity::Skipped,
        detail: why.into(),
        fix: None,
    }
}

const RERENDER: &str = "run `ns-ha-init enable` on the primary (or `ns-ha-init disable` if HA should stay off): it re-renders keepalived.conf on both nodes";

/// Run every check.
pub fn run(ctx: &Ctx) -> Vec<Finding> {
    let mut out = Vec::new();
    let loaded = load_node(&ctx.root).and_then(|n| Ok((n, load_cluster(&ctx.root)?)));
    let (node, cluster) = match loaded {
        Ok(x) => x,
        Err(e) => {
            out.push(bad(
                "config",
                Severity::Problem,
                format!("{e:#}"),
                "initialize or pair this node with ns-ha-init (see ns-ha-init --help), or restore the file",
            ));
            return out;
        }
    };
    out.push(ok(
        "config",
        format!("node ({}) and cluster config load and validate", node.role),
    ));
    out.push(rendered_config(ctx, &node, &cluster));
    let running = status::keepalived_running(ctx, &node);
    out.push(match (&running, cluster.enabled) {
        (Ok(true), true) => ok("keepalived", "running (HA enabled)"),
        (Ok(false), false) => ok("keepalived", "not running (HA disabled)"),
        (Ok(false), true) => bad(
            "keepalived",
            Severity::Problem,
            "HA is enabled but keepalived is not running",
            "start it: run `ns-ha-init enable` on the primary (check its log if it stops again)",
        ),
        (Ok(true), false) => bad(
            "keepalived",
            Severity::Problem,
            "HA is disabled but keepalived runs",
            "run `ns-ha-init disable` on the primary",
        ),
        (Err(e), _) => bad(
            "keepalived",
            Severity::Problem,
            format!("cannot tell whether keepalived runs: {e:#}"),
            "install keepalived and its service (init script or systemd unit)",
        ),
    });
    out.extend(vips(ctx, &cluster, running.ok()));
    out.push(match health::problems(&cluster, node.role, ctx.ifs) {
        Ok(p) if p.is_empty() => ok("interfaces", "every cluster interface is up with its address"),
        Ok(p) => bad(
            "interfaces",
            Severity::Problem,
            p.join("; "),
            "bring the interfaces up with their static addresses (network config), then run `ns-ha-check health`",
        ),
        Err(e) => bad("interfaces", Severity::Problem, format!("{e:#}"), "check `ip addr`"),
    });
    out.push(services_configured(ctx, &node, &cluster));
    if let Some(f) = vpns_here(ctx, &cluster) {
        out.push(f);
    }
    let role = tools::role_status(ctx.tools, &ctx.root, status::TRANSITIONS);
    out.extend(role_checks(&role));
    out.extend(sync_checks(ctx, &node, &cluster, &role));
    out
}

/// VPN tunnels run on the MASTER only: one down on the MASTER (road
/// warriors cannot connect) or up on a node that is not MASTER (two nodes
/// answering for the same tunnel once it holds an address) is a problem.
/// None when no tunnel is configured here.
fn vpns_here(ctx: &Ctx, cluster: &ClusterConfig) -> Option<Finding> {
    let tunnels = vpn::tunnels(&ctx.root, ctx.ifs);
    if tunnels.is_empty() {
        return None;
    }
    let live = vips::observe(cluster, ctx.ifs)
        .ok()
        .map(|v| vips::live_state(&v));
    let master = match live {
        Some(LiveState::Master) => true,
        Some(LiveState::Backup) => false,
        _ => {
            return Some(skipped(
                "VPNs",
                "this node is neither MASTER nor BACKUP now",
            ))
        }
    };
    let wrong: Vec<String> = tunnels
        .iter()
        .filter_map(|t| match t.up {
            Some(up) if up != master => Some(format!(
                "{} ({}) is {} on this {}",
                t.name,
                t.interface.as_deref().unwrap_or("charon"),
                if up { "up" } else { "not up" },
                if master { "MASTER" } else { "non-MASTER" }
            )),
            _ => None,
        })
        .collect();
    Some(if wrong.is_empty() {
        ok(
            "VPNs",
            format!(
                "{} tunnel(s) {} here, as on a {}",
                tunnels.len(),
                if master { "up" } else { "down" },
                if master { "MASTER" } else { "BACKUP" }
            ),
        )
    } else {
        bad(
            "VPNs",
            Severity::Problem,
            wrong.join("; "),
            "run `ns-ha-role apply` (its status names the failing action, e.g. `link wg* up`); a tunnel that stays down: check its config on the primary",
        )
    })
}

/// Whether a service is installed here, the way the role engine decides to
/// skip it (one implementation: `ServiceManager::is_installed`).
fn installed(ctx: &Ctx, node: &NodeConfig, service: &str) -> bool {
    service::manager(node.service_backend, &ctx.root, ctx.runner)
        .is_installed(service, Duration::from_secs(10))
}

/// Master-only services the roles start that this node has no config for:
/// their start fails on every takeover.
fn services_configured(ctx: &Ctx, node: &NodeConfig, cluster: &ClusterConfig) -> Finding {
    const CHECK: &str = "services";
    let missing =
        unconfigured_master_services(&cluster.roles, &ctx.root, &|s| installed(ctx, node, s));
    if missing.is_empty() {
        return ok(
            CHECK,
            "every installed master-only service of the roles has its config",
        );
    }
    bad(
        CHECK,
        Severity::Problem,
        format!(
            "enabled in the roles (master) but not configured on this node: {}",
            missing
                .iter()
                .map(|u| format!("{} (no {})", u.service, u.wants.join(" or ")))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        missing
            .iter()
            .map(|u| u.fix())
            .collect::<Vec<_>>()
            .join("; "),
    )
}

/// Maintenance and pending actions, as `ns-ha-role status --json` says.
fn role_checks(role: &Result<RoleStatus>) -> Vec<Finding> {
    let role = match role {
        Ok(r) => r,
        Err(e) => {
            return vec![bad(
                "role engine",
                Severity::Problem,
                format!("{e:#}"),
                "see `ns-ha-role status`",
            )]
        }
    };
    let a = &role.applied;
    vec![
        if role.maintenance {
            bad(
                "maintenance",
                Severity::Warning,
                "maintenance is on: this node hands the VIPs to the peer",
                "when done: `ns-ha-role maintenance off`",
            )
        } else {
            ok("maintenance", "off")
        },
        if a.pending.is_empty() {
            ok("role engine", "no failed action pending")
        } else {
            bad(
                "role engine",
                Severity::Problem,
                format!(
                    "{} failed action(s) pending: {}",
                    a.pending.len(),
                    a.pending
                        .iter()
                        .map(|p| format!("{} ({})", p.action, p.detail))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                "fix the cause (see `ns-ha-role status`), then `ns-ha-role apply`",
            )
        },
    ]
}

fn drift_list(d: &[Drift]) -> String {
    d.iter()
        .map(|x| format!("{} ({})", x.path, x.what))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The keepalived.conf on disk against what the cluster config renders now.
fn rendered_config(ctx: &Ctx, node: &NodeConfig, cluster: &ClusterConfig) -> Finding {
    const CHECK: &str = "keepalived.conf";
    let path = ctx.root.path(paths::KEEPALIVED_CONF);
    let want = tool_path("ns-ha-role").and_then(|role_tool| {
        keepalived::render(&RenderInputs {
            cluster,
            role: node.role,
            root: &ctx.root,
            role_tool,
        })
    });
    let want = match want {
        Ok(w) => w,
        Err(e) => {
            return bad(
                CHECK,
                Severity::Problem,
                format!("{e:#}"),
                "pair the nodes: ns-ha-init pair",
            )
        }
    };
    match std::fs::read_to_string(&path) {
        Ok(have) if have == want => ok(CHECK, "matches the cluster config"),
        Ok(have) => {
            let first = have
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| have.lines().count().min(want.lines().count()));
            bad(
                CHECK,
                Severity::Problem,
                format!(
                    "{} differs from what cluster.json renders (first difference at line {})",
                    path.display(),
                    first + 1
                ),
                RERENDER,
            )
        }
        Err(e) => bad(
            CHECK,
            Severity::Problem,
            format!("cannot read {}: {e}", path.display()),
            RERENDER,
        ),
    }
}

/// Stale VIPs (held with keepalived stopped) and a half-held group.
fn vips(ctx: &Ctx, cluster: &ClusterConfig, running: Option<bool>) -> Vec<Finding> {
    let vips = match vips::observe(cluster, ctx.ifs) {
        Ok(v) => v,
        Err(e) => {
            return vec![bad(
                "VIPs",
                Severity::Problem,
                format!("{e:#}"),
                "check `ip addr`",
            )]
        }
    };
    let held: Vec<_> = vips.iter().filter(|v| v.held).collect();
    if running == Some(false) && !held.is_empty() {
        let list: Vec<String> = held
            .iter()
            .map(|v| format!("{} on {}", v.vip, v.interface))
            .collect();
        let cmds: Vec<String> = held
            .iter()
            .map(|v| format!("ip addr del {} dev {}", v.vip, v.interface))
            .collect();
        return vec![bad(
            "VIPs",
            Severity::Problem,
            format!(
                "keepalived is not running but this node holds {} (stale after a crash)",
                list.join(", ")
            ),
            format!(
                "start keepalived (`ns-ha-init enable` on the primary), or remove them: {}",
                cmds.join("; ")
            ),
        )];
    }
    match vips::live_state(&vips) {
        LiveState::Mixed => vec![bad(
            "VIPs",
            Severity::Warning,
            format!("this node holds {} of {} VIPs", held.len(), vips.len()),
            "if it lasts, check keepalived's log: a sync group member is in another state",
        )],
        s => vec![ok(
            "VIPs",
            format!("{} ({} of {} held)", s.as_str(), held.len(), vips.len()),
        )],
    }
}

/// The peer (from the primary), drift on the backup, and the last sync.
/// The primary as the backup sees it: VRRP adverts per link, its sshd, and
/// whether this node is MASTER because the primary went silent.
fn primary_answers(
    ctx: &Ctx,
    node: &NodeConfig,
    cluster: &ClusterConfig,
    role: &Result<RoleStatus>,
) -> Finding {
    let role = match role {
        Ok(r) => r,
        Err(e) => return skipped("peer", format!("no VRRP state from the role engine: {e:#}")),
    };
    let live = vips::observe(cluster, ctx.ifs)
        .ok()
        .map(|v| vips::live_state(&v));
    let p = liveness::observe(node, cluster, role, live, ctx.peer);
    match (p.answers, p.master_because_peer_silent) {
        (true, false) => ok("peer", p.summary),
        (false, true) => bad(
            "peer",
            Severity::Problem,
            p.summary,
            "bring the primary back (power, links, keepalived); it takes the VIPs back when its adverts return, and this node serves until then",
        ),
        (true, true) => bad(
            "peer",
            Severity::Warning,
            p.summary,
            "if the primary is in maintenance, `ns-ha-role maintenance off` there when done; otherwise run `ns-ha-check doctor` on the primary",
        ),
        (false, false) => bad(
            "peer",
            Severity::Problem,
            p.summary,
            "check the HA link and the primary's sshd and keepalived (`ns-ha-check doctor` on the primary)",
        ),
    }
}

fn sync_checks(
    ctx: &Ctx,
    node: &NodeConfig,
    cluster: &ClusterConfig,
    role: &Result<RoleStatus>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let sync = tools::sync_status(ctx.tools, &ctx.root);
    let drift_fix = "see `ns-ha-sync verify`; copy wanted edits to the primary, then `ns-ha-sync push --force` on the primary overwrites the backup";
    match node.role {
        Role::Primary => {
            let hello = ctx.peer.hello(&ctx.root, node, cluster);
            let reachable = match hello {
                Ok(h) if h.version != NS_HA_VERSION => {
                    out.push(bad(
                        "peer",
                        Severity::Problem,
                        format!(
                            "the backup runs ns-ha {} but this node runs {NS_HA_VERSION}",
                            h.version
                        ),
                        UPGRADE_FIX,
                    ));
                    true
                }
                Ok(h) if h.cluster_id.as_deref() != Some(cluster.cluster_id.as_str()) => {
                    out.push(bad(
                        "peer",
                        Severity::Problem,
                        format!(
                            "the backup belongs to cluster {}, not {}",
                            h.cluster_id.as_deref().unwrap_or("none"),
                            cluster.cluster_id
                        ),
                        "re-pair: ns-ha-init init-backup on the backup, then ns-ha-init pair here",
                    ));
                    false
                }
                Ok(h) => {
                    out.push(ok(
                        "peer",
                        format!(
                            "backup {} answers over the pinned SSH channel (ns-ha {})",
                            node.peer_address, h.version
                        ),
                    ));
                    true
                }
                // The backup refuses the hello of another release.
                Err(e) if format!("{e:#}").contains(VERSION_MISMATCH) => {
                    out.push(bad(
                        "peer",
                        Severity::Problem,
                        format!("{e:#}"),
                        UPGRADE_FIX,
                    ));
                    false
                }
                Err(e) => {
                    out.push(bad(
                        "peer",
                        Severity::Problem,
                        format!("{e:#}"),
                        "check the HA link, the backup's sshd and `ns-ha-init check` on both nodes",
                    ));
                    false
                }
            };
            out.push(if !reachable {
                skipped("backup drift", "the backup cannot be asked")
            } else {
                match tools::sync_verify(ctx.tools, &ctx.root) {
                    Ok(d) if d.is_empty() => ok(
                        "backup drift",
                        "no file edited on the backup since the last sync",
                    ),
                    Ok(d) => bad(
                        "backup drift",
                        Severity::Problem,
                        format!(
                            "{} path(s) edited on the backup: {}",
                            d.len(),
                            drift_list(&d)
                        ),
                        drift_fix,
                    ),
                    Err(e) => skipped("backup drift", format!("verify failed: {e:#}")),
                }
            });
        }
        Role::Backup => {
            out.push(primary_answers(ctx, node, cluster, role));
            // The backup's generation is the one it applied last.
            let generation = sync
                .as_ref()
                .map(|s| s.generation.to_string())
                .unwrap_or_else(|_| "?".into());
            out.push(match tools::sync_verify(ctx.tools, &ctx.root) {
                Ok(d) if d.is_empty() => ok(
                    "backup drift",
                    format!("no local edit since generation {generation}"),
                ),
                Ok(d) => bad(
                    "backup drift",
                    Severity::Problem,
                    format!(
                        "{} path(s) edited here since generation {generation}: {}",
                        d.len(),
                        drift_list(&d)
                    ),
                    drift_fix,
                ),
                Err(e) => skipped("backup drift", format!("cannot scan the sync set: {e:#}")),
            });
        }
    }
    out.push(match &sync {
        Ok(s) if s.journal_pending => bad(
            "sync",
            Severity::Problem,
            "an interrupted apply waits for recovery",
            "run `ns-ha-sync recover` on this node",
        ),
        Ok(s) => match &s.last_attempt {
            Some(r) if !r.ok => bad(
                "sync",
                Severity::Warning,
                format!(
                    "the last sync (generation {}) failed: {}",
                    r.generation,
                    r.error.as_deref().unwrap_or("no reason recorded")
                ),
                "see `ns-ha-sync status`; on the primary `ns-ha-sync push` retries",
            ),
            Some(_) => ok(
                "sync",
                format!("generation {}, last attempt ok", s.generation),
            ),
            None => ok("sync", "no sync yet"),
        },
        Err(e) => bad(
            "sync",
            Severity::Problem,
            format!("{e:#}"),
            "see `ns-ha-sync status`",
        ),
    });
    out
}

/// Whether any finding is a problem.
pub fn unhealthy(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Problem)
}

/// The human form: one line a check, the fix under each problem or warning.
pub fn render(findings: &[Finding]) -> String {
    let mut w = String::new();
    for f in findings {
        let _ = writeln!(w, "{:<8} {:<16} {}", f.severity.label(), f.check, f.detail);
        if let Some(fix) = &f.fix {
            let _ = writeln!(w, "{:<8} {:<16} fix: {fix}", "", "");
        }
    }
    let problems = findings
        .iter()
        .filter(|f| f.severity == Severity::Problem)
        .count();
    let _ = writeln!(
        w,
        "{}",
        if problems == 0 {
            "no problem found".to_string()
        } else {
            format!("{problems} problem(s) found")
        }
    );
    w
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::peer::PeerProbe;
    use crate::tools::tests::ReplayTools;
    use anyhow::Result;
    use ns_ha_common::clock::FixedClock;
    use ns_ha_common::cmd::{CmdOutput, RecordingRunner};
    use ns_ha_common::config::{save_cluster, save_node};
    use ns_ha_common::exit::{fail, Code};
    use ns_ha_common::fixtures::{interface, paired_node, sample_cluster};
    use ns_ha_common::net::StaticInterfaces;
    use ns_ha_common::proto::HelloReply;
    use ns_ha_common::NodeRoot;
    use serde_json::{json, Value};

    /// A backup that answers with fixed facts (or not at all).
    pub struct FakePeer {
        pub up: bool,
        pub version: String,
    }

    impl FakePeer {
        pub fn healthy() -> FakePeer {
            FakePeer {
                up: true,
                version: NS_HA_VERSION.into(),
            }
        }
    }

    /// A recorded fixture, edited: `edit` changes the parsed document.
    pub fn fixture_with(text: &str, edit: impl FnOnce(&mut Value)) -> String {
        let mut v: Value = serde_json::from_str(text).unwrap();
        edit(&mut v);
        v.to_string()
    }

    /// What the primary's tools answered on the lab pair after pairing.
    pub fn primary_tools() -> ReplayTools {
        let t = ReplayTools::default();
        t.answer(
            "ns-ha-role status",
            0,
            include_str!("../tests/fixtures/fw1-role-status.json"),
        )
        .answer(
            "ns-ha-sync status",
            0,
            include_str!("../tests/fixtures/fw1-sync-status.json"),
        )
        .answer(
            "ns-ha-sync verify",
            0,
            include_str!("../tests/fixtures/fw1-sync-verify.json"),
        );
        t
    }

    /// `ns-ha-sync verify` on the primary finding `path` edited on the
    /// backup, printed the way the tool does today: its report, then the
    /// error line, exit 10.
    pub fn verify_with_drift(t: &ReplayTools, path: &str) {
        let report = fixture_with(
            include_str!("../tests/fixtures/fw1-sync-verify.json"),
            |v| {
                v["drift"] = json!([{"path": path, "what": "changed"}]);
            },
        );
        t.answer(
            "ns-ha-sync verify",
            10,
            &format!(
                "{report}\n{}\n",
                json!({"error": "1 path(s) edited on the backup since the last sync", "code": 10})
            ),
        );
    }

    pub const CLOCK_MS: u64 = 1_796_028_422_000;

    impl PeerProbe for FakePeer {
        fn hello(&self, _: &NodeRoot, _: &NodeConfig, c: &ClusterConfig) -> Result<HelloReply> {
            if !self.up {
                return Err(fail(Code::Peer, "peer 10.99.0.2:22 does not answer on SSH"));
            }
            Ok(HelloReply {
                protocol: 1,
                version: self.version.clone(),
                role: "backup".into(),
                cluster_id: Some(c.cluster_id.clone()),
            })
        }
        fn ssh_banner(&self, addr: std::net::Ipv4Addr, port: u16) -> Result<String> {
            if !self.up {
                return Err(fail(
                    Code::Peer,
                    format!("{addr}:{port}: Connection refused (os error 111)"),
                ));
            }
            Ok("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3".into())
        }
    }

    /// An enabled, paired primary with its rendered keepalived.conf and an init script.
    pub fn primary_root() -> (tempfile::TempDir, NodeRoot) {
        node_root(Role::Primary)
    }

    /// The same for `role`.
    pub fn node_root(role: Role) -> (tempfile::TempDir, NodeRoot) {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        let mut c = sample_cluster();
        c.enabled = true;
        save_cluster(&root, &c).unwrap();
        save_node(
            &root,
            &paired_node(
                role,
                match role {
                    Role::Primary => "10.99.0.2".parse().unwrap(),
                    Role::Backup => "10.99.0.1".parse().unwrap(),
                },
            ),
        )
        .unwrap();
        let text = keepalived::render(&RenderInputs {
            cluster: &c,
            role,
            root: &root,
            role_tool: tool_path("ns-ha-role").unwrap(),
        })
        .unwrap();
        std::fs::create_dir_all(root.path("/etc/keepalived")).unwrap();
        std::fs::write(root.path(paths::KEEPALIVED_CONF), text).unwrap();
        std::fs::create_dir_all(root.path("/etc/init.d")).unwrap();
        std::fs::write(root.path("/etc/init.d/keepalived"), "#!/bin/sh\n").unwrap();
        (dir, root)
    }

    pub fn master_ifs() -> StaticInterfaces {
        StaticInterfaces(vec![
            interface("ha0", &["10.99.0.1/24", "10.99.0.254/32"]),
            interface("lan0", &["10.99.1.1/24", "10.99.1.254/24"]),
        ])
    }

    fn severity(f: &[Finding], check: &str) -> Severity {
        f.iter()
            .find(|x| x.check == check)
            .unwrap_or_else(|| panic!("no {check} in {f:?}"))
            .severity
    }

    #[test]
    fn a_vpn_tunnel_must_be_up_on_the_master_and_only_there() {
        let (_d, root) = primary_root();
        let r = RecordingRunner::new();
        let peer = FakePeer::healthy();
        let tools = primary_tools();
        let clock = FixedClock::at_ms(CLOCK_MS);
        let check = |ifs: &StaticInterfaces| {
            let ctx = Ctx {
                root: root.clone(),
                runner: &r,
                ifs,
                peer: &peer,
                tools: &tools,
                clock: &clock,
            };
            run(&ctx).into_iter().find(|f| f.check == "VPNs")
        };
        // No tunnel configured: nothing to say.
        assert!(check(&master_ifs()).is_none());
        std::fs::create_dir_all(root.path("/etc/wireguard")).unwrap();
        std::fs::write(root.path("/etc/wireguard/wg0.conf"), "[Interface]\n").unwrap();
        let f = check(&master_ifs()).unwrap();
        assert_eq!(f.severity, Severity::Problem);
        assert!(
            f.detail.contains("wg0 (wg0) is not up on this MASTER"),
            "{}",
            f.detail
        );
        assert!(f.fix.unwrap().contains("ns-ha-role apply"));
        let mut with_wg = master_ifs();
        with_wg.0.push(interface("wg0", &["10.99.20.1/24"]));
        assert_eq!(check(&with_wg).unwrap().severity, Severity::Ok);
        // A backup (no VIP held) must not run it.
        let backup = StaticInterfaces(vec![
            interface("ha0", &["10.99.0.1/24"]),
            interface("lan0", &["10.99.1.1/24"]),
            interface("wg0", &["10.99.20.1/24"]),
        ]);
        let f = check(&backup).unwrap();
        assert_eq!(f.severity, Severity::Problem);
        assert!(
            f.detail.contains("is up on this non-MASTER"),
            "{}",
            f.detail
        );
    }

    #[test]
    fn a_healthy_primary_has_no_problem() {
        let (_d, root) = primary_root();
        let r = RecordingRunner::new();
        let ifs = master_ifs();
        let peer = FakePeer::healthy();
        let tools = primary_tools();
        let ctx = Ctx {
            root,
            runner: &r,
            ifs: &ifs,
            peer: &peer,
            tools: &tools,
            clock: &FixedClock::at_ms(CLOCK_MS),
        };
        let f = run(&ctx);
        assert!(!unhealthy(&f), "{}", render(&f));
        assert_eq!(severity(&f, "services"), Severity::Ok);
        assert_eq!(severity(&f, "peer"), Severity::Ok);
        // dnsmasq installed, started by the master role, without a config.
        std::fs::write(ctx.root.path("/etc/init.d/dnsmasq"), "#!/bin/sh\n").unwrap();
        let f = run(&ctx);
        assert_eq!(severity(&f, "services"), Severity::Problem);
        let text = render(&f);
        assert!(
            text.contains("not configured on this node: dnsmasq (no /etc/dnsmasq.conf)")
                && text.contains("fix: create /etc/dnsmasq.conf on the primary"),
            "{text}"
        );
        std::fs::write(ctx.root.path("/etc/dnsmasq.conf"), "port=53\n").unwrap();
        assert_eq!(severity(&run(&ctx), "services"), Severity::Ok);
        assert_eq!(severity(&f, "backup drift"), Severity::Ok);
    }

    #[test]
    fn drift_stale_vips_peer_and_maintenance_are_found() {
        let (_d, root) = primary_root();
        let conf = root.path(paths::KEEPALIVED_CONF);
        let text = std::fs::read_to_string(&conf)
            .unwrap()
            .replace("priority 200", "priority 1");
        std::fs::write(&conf, text).unwrap();
        let tools = primary_tools();
        tools.answer(
            "ns-ha-role status",
            0,
            &fixture_with(
                include_str!("../tests/fixtures/fw1-role-status.json"),
                |v| v["maintenance"] = json!(true),
            ),
        );
        let r = RecordingRunner::new();
        // keepalived's init script says: not running.
        r.answer(
            "keepalived status",
            CmdOutput {
                status: Some(3),
                ..Default::default()
            },
        );
        let ifs = master_ifs();
        let peer = FakePeer {
            up: false,
            ..FakePeer::healthy()
        };
        let ctx = Ctx {
            root,
            runner: &r,
            ifs: &ifs,
            peer: &peer,
            tools: &tools,
            clock: &FixedClock::at_ms(CLOCK_MS),
        };
        let f = run(&ctx);
        assert!(unhealthy(&f));
        assert_eq!(severity(&f, "keepalived.conf"), Severity::Problem);
        assert_eq!(severity(&f, "keepalived"), Severity::Problem);
        assert_eq!(severity(&f, "VIPs"), Severity::Problem, "stale VIPs");
        assert_eq!(severity(&f, "maintenance"), Severity::Warning);
        assert_eq!(severity(&f, "peer"), Severity::Problem);
        assert_eq!(severity(&f, "backup drift"), Severity::Skipped);
        let text = render(&f);
        assert!(text.contains("fix: run `ns-ha-init enable`"), "{text}");
        assert!(
            text.contains("ip addr del 10.99.1.254/24 dev lan0"),
            "{text}"
        );
    }

    #[test]
    fn version_mismatch_drift_and_missing_config() {
        let (_d, root) = primary_root();
        let r = RecordingRunner::new();
        let ifs = master_ifs();
        let peer = FakePeer {
            version: "0.0.1".into(),
            ..FakePeer::healthy()
        };
        let tools = primary_tools();
        verify_with_drift(&tools, "/etc/config/x");
        tools.answer(
            "ns-ha-role status",
            0,
            include_str!("../tests/fixtures/fw1-role-status-pending.json"),
        );
        let ctx = Ctx {
            root: root.clone(),
            runner: &r,
            ifs: &ifs,
            peer: &peer,
            tools: &tools,
            clock: &FixedClock::at_ms(CLOCK_MS),
        };
        let f = run(&ctx);
        assert_eq!(severity(&f, "peer"), Severity::Problem);
        assert_eq!(severity(&f, "backup drift"), Severity::Problem);
        assert_eq!(severity(&f, "role engine"), Severity::Problem);
        let text = render(&f);
        assert!(
            text.contains("the backup runs ns-ha 0.0.1")
                && text.contains("ns-ha-init upgrade-remote PACKAGE"),
            "{text}"
        );
        assert!(
            text.contains("1 path(s) edited on the backup: /etc/config/x (changed)"),
            "{text}"
        );
        assert!(
            text.contains(
                "1 failed action(s) pending: service dnsmasq running (start dnsmasq failed"
            ),
            "{text}"
        );
        // A tool that fails outright is a problem of its own, not a crash.
        tools.answer("ns-ha-role status", 1, "");
        let f = run(&ctx);
        assert_eq!(severity(&f, "role engine"), Severity::Problem);
        std::fs::remove_file(root.path(paths::CLUSTER_CONFIG)).unwrap();
        let f = run(&ctx);
        assert_eq!(f.len(), 1);
        assert_eq!(severity(&f, "config"), Severity::Problem);
    }

    /// What the backup's tools answered on the lab pair: after pairing, or
    /// (`lost`) a few seconds after the primary crashed.
    fn backup_tools(lost: bool) -> ReplayTools {
        let t = ReplayTools::default();
        let role = if lost {
            include_str!("../tests/fixtures/fw2-role-status-peer-lost.json")
        } else {
            include_str!("../tests/fixtures/fw2-role-status.json")
        };
        t.answer("ns-ha-role status", 0, role)
            .answer(
                "ns-ha-sync status",
                0,
                include_str!("../tests/fixtures/fw2-sync-status.json"),
            )
            .answer(
                "ns-ha-sync verify",
                0,
                include_str!("../tests/fixtures/fw2-sync-verify.json"),
            );
        t
    }

    fn peer_finding(f: &[Finding]) -> Finding {
        f.iter().find(|x| x.check == "peer").unwrap().clone()
    }

    #[test]
    fn the_backup_says_whether_the_primary_answers() {
        let (_d, root) = node_root(Role::Backup);
        let r = RecordingRunner::new();
        let backup_ifs = StaticInterfaces(vec![
            interface("ha0", &["10.99.0.2/24"]),
            interface("lan0", &["10.99.1.2/24"]),
        ]);
        let up = FakePeer::healthy();
        let tools = backup_tools(false);
        let ctx = Ctx {
            root: root.clone(),
            runner: &r,
            ifs: &backup_ifs,
            peer: &up,
            tools: &tools,
            clock: &FixedClock::at_ms(CLOCK_MS),
        };
        let f = run(&ctx);
        let p = peer_finding(&f);
        assert_eq!(p.severity, Severity::Ok, "{}", render(&f));
        assert_eq!(
            p.detail,
            "primary 10.99.0.1 answers: VRRP adverts heard on ha0, lan0; SSH 10.99.0.1:22 answers"
        );
        assert!(!render(&f).contains("checked from the primary"));

        // The primary crashed: every instance went MASTER, its sshd is gone.
        let lost = backup_tools(true);
        let mut master = backup_ifs.clone();
        master.0[0]
            .ipv4
            .extend(interface("x", &["10.99.0.254/32"]).ipv4);
        master.0[1]
            .ipv4
            .extend(interface("x", &["10.99.1.254/24"]).ipv4);
        let down = FakePeer {
            up: false,
            ..FakePeer::healthy()
        };
        let ctx = Ctx {
            root: root.clone(),
            runner: &r,
            ifs: &master,
            peer: &down,
            tools: &lost,
            clock: &FixedClock::at_ms(CLOCK_MS),
        };
        let f = run(&ctx);
        assert!(unhealthy(&f));
        let p = peer_finding(&f);
        assert_eq!(p.severity, Severity::Problem);
        // lan_lan0 went MASTER first, at ...950 (the recorded event).
        assert_eq!(
            p.detail,
            "primary 10.99.0.1 does not answer since 2026-11-30 08:46:28.950Z: no VRRP advert on ha0, lan0, SSH 10.99.0.1:22: Connection refused (os error 111); this node is MASTER because of it"
        );
        assert!(p.fix.unwrap().starts_with("bring the primary back"));

        // Silent on VRRP but its sshd answers: it yields, a warning.
        let ctx = Ctx { peer: &up, ..ctx };
        let p = peer_finding(&run(&ctx));
        assert_eq!(p.severity, Severity::Warning);
        assert!(
            p.detail
                .contains("answers on SSH but sends no VRRP advert on ha0, lan0")
                && p.detail.ends_with("this node is MASTER because of it"),
            "{}",
            p.detail
        );
    }
}
