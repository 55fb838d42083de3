//! `ns-ha-check monitor`: the long-running health monitor of a node.
//!
//! keepalived's `vrrp_script` forks a program per check per interval; a
//! sub-second reachability check that way would fork ten times a second per
//! link. Instead one monitor per node (started and restarted with keepalived
//! by the same init script) runs every check on a thread of its own with its
//! own period ([`plan`]), feeds the outcomes to the [`Verdict`], and writes
//! what keepalived and people read, only when it changes:
//! - the health track file (keepalived, weight 1): the priority offset;
//! - the state file (`/run/ns-ha/health.json`): checks, decisions, alerts,
//!   read by `ns-ha-check status` and `metrics`;
//! - the prompt marker (`/run/ns-ha/prompt`) for the shell prompt;
//! - `ns-ha.prom` in `health.metrics_dir`, if set, every 10 s (by running
//!   `ns-ha-check metrics`, which asks the other tools).
//!
//! Every 10 s, while MASTER, it also asks the LAN who answers for each LAN
//! VIP (`ns-ha-vip who-holds`): a second holder is a split brain, alerted
//! once and shown in the state until it clears.
//!
//! Every second while MASTER it pings the peer's HA address: the peer
//! answering again after it did not is a partition that healed, which gives
//! the node that stays MASTER no keepalived event, and it re-announces every
//! VIP and takeover WAN address it holds (`ns-ha-vip announce`, see
//! [`crate::heal`]); without that, every 60 s.
//!
//! On the primary, every 2 s while MASTER, it records the WireGuard peers'
//! last endpoints ([`wireguard::record_endpoints`]) in the synced
//! `/etc/wireguard/ns-ha-endpoints.json`, so that the backup, once MASTER,
//! can start the handshakes itself. The backup never writes it: the sync
//! runs from the primary only, and a write there would be a local edit.
//!
//! Alerts run the hook on a thread of their own, so a slow mail script
//! never delays a decision. A changed cluster config is picked up within
//! two seconds; the verdict (and a hold-down in progress) is kept.

use anyhow::{Context, Result};
use serde::Serialize;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use ns_ha_common::addresses::{address_problems, static_address};
use ns_ha_common::clock::now_ms;
use ns_ha_common::cmd::{CommandRunner, SystemRunner};
use ns_ha_common::config::{load_cluster, load_node, ClusterConfig, Role};
use ns_ha_common::fsutil::atomic_write;
use ns_ha_common::health_config::HealthSettings;
use ns_ha_common::net::{IpCommand, KernelAddresses};
use ns_ha_common::root::paths;
use ns_ha_common::vips::{self, LiveState};
use ns_ha_common::wireguard;
use ns_ha_common::NodeRoot;

use crate::alert::AlertSender;
use crate::probe::{IcmpPinger, Pinger, ServiceProbe, SystemServiceProbe};
use crate::tools::ToolQuery;
use crate::verdict::{CheckKind, Outcome, Verdict};

/// One check the monitor runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedCheck {
    pub id: String,
    pub kind: CheckKind,
    pub period_ms: u32,
    /// What it probes, for `health --list`.
    pub what: String,
    #[serde(skip)]
    pub probe: Probe,
}

/// What a check probes.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    Interfaces,
    Reach {
        interface: String,
        targets: Vec<Ipv4Addr>,
    },
    Service(ns_ha_common::health_config::ServiceCheck),
}

/// The checks of this node, from the cluster config.
pub fn plan(cluster: &ClusterConfig, role: Role) -> Vec<PlannedCheck> {
    let h = &cluster.health;
    let mut out = vec![PlannedCheck {
        id: "interfaces".into(),
        kind: CheckKind::Interfaces,
        period_ms: h.link_period_ms,
        what: format!(
            "carrier and static address of {}",
            cluster.tracked_interfaces().join(", ")
        ),
        probe: Probe::Interfaces,
    }];
    for l in &h.links {
        let mut targets = l.targets.clone();
        if l.peer {
            if let Some(p) = static_address(cluster, role.other(), &l.interface) {
                targets.push(p.addr);
            }
        }
        let list: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
        let (kind, only) = if cluster.wan(&l.interface).is_some() {
            (
                CheckKind::TakeoverWan,
                "; takeover WAN: on MASTER only, a failure that made this node give up stays",
            )
        } else {
            (CheckKind::Reach, "")
        };
        out.push(PlannedCheck {
            id: format!("reach:{}", l.interface),
            kind,
            period_ms: h.period_ms,
            what: format!(
                "ICMP echo on {} to {} (ok while any answers within {} ms; failing after {} rounds, ok after {}{only})",
                l.interface,
                list.join(", "),
                h.timeout_ms,
                h.fall,
                h.rise
            ),
            probe: Probe::Reach {
                interface: l.interface.clone(),
                targets,
            },
        });
    }
    for s in &h.services {
        let mut parts = Vec::new();
        if let Some(p) = &s.process {
            parts.push(format!("process {p} runs"));
        }
        if let Some(d) = s.dns {
            parts.push(format!("DNS answers at {d}"));
        }
        if let Some(t) = s.tcp {
            parts.push(format!("TCP {t} accepts"));
        }
        out.push(PlannedCheck {
            id: format!("service:{}", s.name),
            kind: CheckKind::Service,
            period_ms: h.service_period_ms,
            what: format!(
                "{} (on MASTER only; failing after {} rounds)",
                parts.join(", "),
                h.service_fall
            ),
            probe: Probe::Service(s.clone()),
        });
    }
    out
}

/// Whether `interface` is up with a carrier in this network namespace
/// (`operstate` `up`, or `unknown` as PPP and TUN links report it).
fn link_is_up(interface: &str) -> bool {
    std::fs::read_to_string(
        std::path::Path::new("/sys/class/net")
            .join(interface)
            .join("operstate"),
    )
    .is_ok_and(|s| matches!(s.trim(), "up" | "unknown"))
}

/// Links of the cluster with no reachability check: a silent failure there
/// is not detected.
pub fn unchecked_links(cluster: &ClusterConfig) -> Vec<String> {
    cluster
        .lans
        .iter()
        .filter(|l| !l.vips.is_empty() && cluster.health.link(&l.interface).is_none())
        .map(|l| l.interface.clone())
        .collect()
}

/// Messages from the check threads.
enum Msg {
    Outcome(String, Outcome),
    Master(bool),
    /// The sync's last attempt: ok, and its error.
    Sync(bool, String),
    /// The split-brain round: the second holders found (None: none).
    SplitBrain(Option<String>),
}

/// How often the sync's status is read and the metrics file rewritten.
const SLOW_PERIOD: Duration = Duration::from_secs(10);

/// The LAN VIPs of the cluster (not the HA link's heartbeat VIP): the
/// addresses a second holder would take clients from.
pub fn lan_vips(cluster: &ClusterConfig) -> Vec<Ipv4Addr> {
    vips::cluster_vips(cluster)
        .into_iter()
        .filter(|v| !v.heartbeat)
        .map(|v| v.vip.addr)
        .collect()
}

/// One split-brain round on a MASTER: ask the LAN who holds each VIP
/// (`ns-ha-vip who-holds VIP --json`, a real ARP request) and name the VIPs
/// this node holds that another MAC also answers for (`conflict`). A VIP
/// the tool cannot ask about is logged and skipped, not counted as either.
pub fn split_brain_round(q: &dyn ToolQuery, root: &NodeRoot, vips: &[Ipv4Addr]) -> Option<String> {
    let mut found = Vec::new();
    for v in vips {
        let vip = v.to_string();
        match q.query(root, "ns-ha-vip", &["who-holds", &vip]) {
            Ok(a) if a.doc["conflict"].as_bool() == Some(true) => found.push(format!(
                "{vip} on {} also answered by {}",
                a.doc["interface"].as_str().unwrap_or("?"),
                a.doc["mac"].as_str().unwrap_or("?")
            )),
            Ok(_) => {}
            Err(e) => log::warn!("split-brain check of {vip}: {e:#}"),
        }
    }
    (!found.is_empty()).then(|| found.join("; "))
}

/// The slow jobs, on a thread of their own: read the sync's status (for
/// its alerts) through `ns-ha-sync status --json --local`; while this node
/// is MASTER, look for a second holder of its LAN VIPs
/// ([`split_brain_round`]); and rewrite the textfile metrics with
/// `ns-ha-check metrics`. All run other tools, which a check thread must
/// not wait for.
fn spawn_slow(
    root: &NodeRoot,
    cluster: &ClusterConfig,
    master: &Arc<AtomicBool>,
    tx: &Sender<Msg>,
) -> Workers {
    let stop = Arc::new(AtomicBool::new(false));
    let (root, tx, stop2) = (root.clone(), tx.clone(), stop.clone());
    let (master, lan) = (master.clone(), lan_vips(cluster));
    let metrics_dir = cluster.health.metrics_dir.clone();
    let handle = std::thread::spawn(move || {
        let runner = SystemRunner;
        let tools = crate::tools::ToolRunner { runner: &runner };
        let mut next = Instant::now() + Duration::from_secs(2);
        while pause_until(next, &stop2) {
            next += SLOW_PERIOD;
            let found = if master.load(Ordering::SeqCst) {
                split_brain_round(&tools, &root, &lan)
            } else {
                None
            };
            let _ = tx.send(Msg::SplitBrain(found));
            match crate::tools::sync_status(&tools, &root) {
                Ok(s) => {
                    if let Some(a) = s.last_attempt {
                        let _ = tx.send(Msg::Sync(a.ok, a.error.unwrap_or_default()));
                    }
                }
                Err(e) => log::debug!("sync status: {e:#}"),
            }
            if metrics_dir.is_some() {
                if let Ok(exe) = std::env::current_exe() {
                    let mut argv = root.tool_args();
                    argv.push("metrics".into());
                    let out = runner.run(&exe.to_string_lossy(), &argv, Duration::from_secs(30));
                    if let Err(e) = out.map_err(|e| format!("{e:#}")).and_then(|o| {
                        if o.success() {
                            Ok(())
                        } else {
                            Err(o.reason())
                        }
                    }) {
                        log::warn!("writing the metrics file: {e}");
                    }
                }
            }
        }
    });
    Workers {
        stop,
        handles: vec![handle],
    }
}

/// The threads of one plan, stopped together.
struct Workers {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Workers {
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles {
            let _ = h.join();
        }
    }
}

/// How often a MASTER pings the peer's HA address, looking for a healed
/// partition ([`crate::heal`]), and how long it waits for the answer.
const HEAL_PERIOD: Duration = Duration::from_secs(1);
const HEAL_PING_TIMEOUT: Duration = Duration::from_millis(300);

/// How often a MASTER re-announces its VIPs and takeover WAN addresses with
/// no sign of a heal, as keepalived's `vrrp_garp_master_refresh` does for
/// the VIPs alone (see common's keepalived.rs).
const ANNOUNCE_REFRESH: Duration = Duration::from_secs(60);

/// The heal watch ([`crate::heal`]) on the HA link, to `peer`; it lives as
/// long as the monitor and pings only while this node is MASTER.
fn spawn_heal_watch(
    root: &NodeRoot,
    master: &Arc<AtomicBool>,
    ha_interface: String,
    peer: Option<Ipv4Addr>,
) {
    let (root, master) = (root.clone(), master.clone());
    std::thread::spawn(move || {
        let runner = SystemRunner;
        let tools = crate::tools::ToolRunner { runner: &runner };
        let ident = ((std::process::id() as u16) << 4) ^ 0xf;
        let mut pinger: Option<IcmpPinger> = None;
        let mut watch = crate::heal::HealWatch::default();
        // The role engine announces as this node becomes MASTER: the
        // refresh counts from then.
        let mut announced = Instant::now();
        let mut was_master = false;
        loop {
            std::thread::sleep(HEAL_PERIOD);
            let is_master = master.load(Ordering::SeqCst);
            if is_master && !was_master {
                announced = Instant::now();
            }
            was_master = is_master;
            let answered = match (is_master, peer) {
                (true, Some(p)) => {
                    let round = match pinger.as_mut() {
                        Some(x) => x.round(&[p], HEAL_PING_TIMEOUT),
                        None => IcmpPinger::new(&ha_interface, ident).and_then(|mut x| {
                            let r = x.round(&[p], HEAL_PING_TIMEOUT);
                            pinger = Some(x);
                            r
                        }),
                    };
                    match round {
                        Ok(r) => Some(r.is_some()),
                        Err(e) => {
                            log::debug!("pinging the peer on {ha_interface}: {e:#}");
                            pinger = None;
                            None
                        }
                    }
                }
                _ => None,
            };
            let healed = watch.round(is_master, answered);
            let refresh_due = is_master && announced.elapsed() >= ANNOUNCE_REFRESH;
            if !(healed || refresh_due) {
                continue;
            }
            announced = Instant::now();
            match tools.query(&root, "ns-ha-vip", &["announce"]) {
                Ok(_) if healed => log::warn!(
                    "the peer answers on {ha_interface} again while this node is MASTER: a partition healed; VIPs and WAN addresses re-announced"
                ),
                Ok(_) => log::debug!("VIPs and WAN addresses re-announced"),
                Err(e) => log::warn!("re-announcing the VIPs and WAN addresses: {e:#}"),
            }
        }
    });
}

/// How often the primary records its WireGuard peers' endpoints while MASTER.
const VPN_RECORD_PERIOD: Duration = Duration::from_secs(2);

/// The endpoint recorder of the primary (see the module comment); it lives
/// as long as the monitor. One `wg show NAME dump` per running tunnel per
/// round, nothing when no tunnel runs here.
fn spawn_vpn_recorder(root: &NodeRoot, master: &Arc<AtomicBool>) {
    let (root, master) = (root.clone(), master.clone());
    std::thread::spawn(move || {
        let runner = SystemRunner;
        let running = |name: &str| std::path::Path::new("/sys/class/net").join(name).exists();
        loop {
            std::thread::sleep(VPN_RECORD_PERIOD);
            if !master.load(Ordering::SeqCst) {
                continue;
            }
            match wireguard::record_endpoints(&root, &runner, &running, Duration::from_secs(5)) {
                Ok(true) => log::info!("recorded new WireGuard peer endpoints"),
                Ok(false) => {}
                Err(e) => log::warn!("recording WireGuard peer endpoints: {e:#}"),
            }
        }
    });
}

/// How often the monitor looks at the VIPs this node holds (read from the
/// kernel), which say whether it is MASTER. A loss of MASTER must be seen
/// while the failure that caused it still shows, or no hold-down follows:
/// once a second (the interfaces round, where it was) missed a silent LAN
/// that healed within a second and a half.
const MASTER_WATCH_PERIOD: Duration = Duration::from_millis(200);

/// The thread that reports whether this node is MASTER, by its VIPs.
fn spawn_master_watch(
    cluster: &ClusterConfig,
    tx: &Sender<Msg>,
    stop: &Arc<AtomicBool>,
) -> JoinHandle<()> {
    let (cluster, tx, stop) = (cluster.clone(), tx.clone(), stop.clone());
    std::thread::spawn(move || {
        let runner = SystemRunner;
        // In-process (getifaddrs): five `ip` processes a second otherwise.
        let ifs = KernelAddresses { runner: &runner };
        let mut next = Instant::now();
        while pause_until(next, &stop) {
            next += MASTER_WATCH_PERIOD;
            if let Ok(v) = vips::observe(&cluster, &ifs) {
                if tx
                    .send(Msg::Master(vips::live_state(&v) != LiveState::Backup))
                    .is_err()
                {
                    return;
                }
            }
        }
    })
}

/// Sleep until `next` unless asked to stop; false when stopping.
fn pause_until(next: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= next {
            return true;
        }
        std::thread::sleep((next - now).min(Duration::from_millis(50)));
    }
}

fn spawn(
    root: &NodeRoot,
    cluster: &ClusterConfig,
    role: Role,
    checks: &[PlannedCheck],
    tx: &Sender<Msg>,
) -> Result<Workers> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = vec![spawn_master_watch(cluster, tx, &stop)];
    let h = cluster.health.clone();
    for (n, c) in checks.iter().enumerate() {
        let (tx, stop, c) = (tx.clone(), stop.clone(), c.clone());
        let period = Duration::from_millis(u64::from(c.period_ms));
        let handle = match c.probe.clone() {
            Probe::Interfaces => {
                let (cluster, _root) = (cluster.clone(), root.clone());
                std::thread::spawn(move || {
                    let runner = SystemRunner;
                    let ifs = IpCommand { runner: &runner };
                    let mut next = Instant::now();
                    while pause_until(next, &stop) {
                        next += period;
                        let start = Instant::now();
                        let o = match address_problems(&cluster, role, &ifs) {
                            Ok(p) if p.is_empty() => Outcome {
                                ok: Some(true),
                                latency_ms: Some(ms(start.elapsed())),
                                detail: "every cluster interface up with its address".into(),
                            },
                            Ok(p) => Outcome {
                                ok: Some(false),
                                latency_ms: None,
                                detail: p
                                    .iter()
                                    .map(|p| p.to_string())
                                    .collect::<Vec<_>>()
                                    .join("; "),
                            },
                            Err(e) => Outcome {
                                ok: Some(false),
                                latency_ms: None,
                                detail: format!("{e:#}"),
                            },
                        };
                        if tx.send(Msg::Outcome(c.id.clone(), o)).is_err() {
                            return;
                        }
                    }
                })
            }
            Probe::Reach { interface, targets } => {
                let ident = ((std::process::id() as u16) << 4) ^ n as u16;
                let timeout = Duration::from_millis(u64::from(h.timeout_ms));
                let takeover = c.kind == CheckKind::TakeoverWan;
                std::thread::spawn(move || {
                    // Opened again after a failure (an interface that is
                    // missing now may come back): every round says why.
                    let mut pinger: Option<IcmpPinger> = None;
                    let mut next = Instant::now();
                    while pause_until(next, &stop) {
                        next += period;
                        // A takeover WAN is down (or missing, a PPPoE link)
                        // until the role engine brings it up on the MASTER:
                        // no round says anything until then.
                        if takeover && !link_is_up(&interface) {
                            let o = Outcome {
                                ok: None,
                                latency_ms: None,
                                detail: format!("takeover WAN {interface} is not up here"),
                            };
                            if tx.send(Msg::Outcome(c.id.clone(), o)).is_err() {
                                return;
                            }
                            continue;
                        }
                        let round = match pinger.as_mut() {
                            Some(p) => p.round(&targets, timeout),
                            None => IcmpPinger::new(&interface, ident).and_then(|mut p| {
                                let r = p.round(&targets, timeout);
                                pinger = Some(p);
                                r
                            }),
                        };
                        let o = match round {
                            Ok(Some(l)) => Outcome {
                                ok: Some(true),
                                latency_ms: Some(ms(l)),
                                detail: format!("a target answered on {interface}"),
                            },
                            Ok(None) => Outcome {
                                ok: Some(false),
                                latency_ms: None,
                                detail: format!(
                                    "no answer on {interface} within {} ms",
                                    timeout.as_millis()
                                ),
                            },
                            Err(e) => {
                                pinger = None;
                                Outcome {
                                    ok: Some(false),
                                    latency_ms: None,
                                    detail: format!("{e:#}"),
                                }
                            }
                        };
                        // A round that overran its period starts the next at once.
                        next = next.max(Instant::now());
                        if tx.send(Msg::Outcome(c.id.clone(), o)).is_err() {
                            return;
                        }
                    }
                })
            }
            Probe::Service(s) => std::thread::spawn(move || {
                let probe = SystemServiceProbe;
                let timeout = period.min(Duration::from_secs(1));
                let mut next = Instant::now();
                while pause_until(next, &stop) {
                    next += period;
                    let o = service_round(&probe, &s, timeout);
                    next = next.max(Instant::now());
                    if tx.send(Msg::Outcome(c.id.clone(), o)).is_err() {
                        return;
                    }
                }
            }),
        };
        handles.push(handle);
    }
    Ok(Workers { stop, handles })
}

/// One round of a service check (whether it applies is the verdict's call).
pub fn service_round(
    probe: &dyn ServiceProbe,
    s: &ns_ha_common::health_config::ServiceCheck,
    timeout: Duration,
) -> Outcome {
    if let Some(p) = &s.process {
        if !probe.process_alive(p) {
            return Outcome {
                ok: Some(false),
                latency_ms: None,
                detail: format!("process {p} is not running"),
            };
        }
    }
    let mut latency = None;
    if let Some(d) = s.dns {
        match probe.dns_answers(d, timeout) {
            Some(l) => latency = Some(ms(l)),
            None => {
                return Outcome {
                    ok: Some(false),
                    latency_ms: None,
                    detail: format!("no DNS answer from {d}"),
                }
            }
        }
    }
    if let Some(t) = s.tcp {
        match probe.tcp_answers(t, timeout) {
            Some(l) => latency = Some(latency.map_or(ms(l), |x: f64| x.max(ms(l)))),
            None => {
                return Outcome {
                    ok: Some(false),
                    latency_ms: None,
                    detail: format!("TCP {t} does not accept"),
                }
            }
        }
    }
    Outcome {
        ok: Some(true),
        latency_ms: latency,
        detail: format!("{} serves", s.name),
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The state file: the verdict and when the monitor wrote it.
#[derive(Debug, Serialize)]
struct StateFile<'a> {
    pid: u32,
    updated_ms: u64,
    started_ms: u64,
    act: bool,
    #[serde(flatten)]
    verdict: &'a Verdict,
    alerts_sent: u64,
    alerts_failed: u64,
}

/// The role marker for the shell prompt: `[P:MASTER]`, `[S:BACKUP]`.
pub fn prompt_marker(role: Role, master: Option<bool>) -> String {
    let r = match role {
        Role::Primary => 'P',
        Role::Backup => 'S',
    };
    let s = match master {
        Some(true) => "MASTER",
        Some(false) => "BACKUP",
        None => "?",
    };
    format!("[{r}:{s}]")
}

fn mtime(p: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Run until killed.
pub fn run(root: &NodeRoot) -> Result<()> {
    let node = load_node(root)?;
    let mut cluster = load_cluster(root)?;
    let role = node.role;
    let cfg_path = root.path(paths::CLUSTER_CONFIG);
    let mut cfg_mtime = mtime(&cfg_path);
    std::fs::create_dir_all(root.path(paths::RUN_DIR))
        .with_context(|| format!("creating {}", root.path(paths::RUN_DIR).display()))?;
    let started = now_ms();
    let mut verdict = Verdict::new(&cluster.health, cluster.priority(role), started);
    let (tx, rx) = mpsc::channel();
    let mut checks = plan(&cluster, role);
    for c in &checks {
        verdict.add_check(&c.id, c.kind, started);
    }
    let mut workers = spawn(root, &cluster, role, &checks, &tx)?;
    // The verdict's MASTER flag, for the slow thread's split-brain round.
    let master = Arc::new(AtomicBool::new(false));
    let mut slow = spawn_slow(root, &cluster, &master, &tx);
    if role == Role::Primary {
        spawn_vpn_recorder(root, &master);
    }
    spawn_heal_watch(
        root,
        &master,
        cluster.ha.interface.clone(),
        cluster.ha_address(role.other()).map(|a| a.addr),
    );
    let alerts = AlertSender::start(root.clone(), role);
    let mut out = Outputs::new(root.clone(), role);
    out.track(&cluster.health, verdict.track_value())?;
    log::info!(
        "monitoring {} check(s); priority {} ({})",
        checks.len(),
        verdict.priority,
        verdict.reason
    );
    let mut last_write = Instant::now() - Duration::from_secs(10);
    let mut last_cfg_check = Instant::now();
    loop {
        let mut dirty = false;
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(m) => {
                apply(&mut verdict, m);
                // Drain what else arrived.
                while let Ok(m) = rx.try_recv() {
                    apply(&mut verdict, m);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            // The loop holds a sender itself: the channel never disconnects.
            Err(RecvTimeoutError::Disconnected) => {}
        }
        master.store(verdict.master == Some(true), Ordering::SeqCst);
        let now = now_ms();
        if let Some(d) = verdict.evaluate(now) {
            log::warn!(
                "priority {} (track {}): {}",
                d.priority,
                d.track_value,
                d.reason
            );
            out.track(&cluster.health, d.track_value)?;
            dirty = true;
        }
        for e in verdict.take_events() {
            log::warn!("alert {}: {} {}", e.event, e.subject, e.detail);
            alerts.send(&cluster.health, e);
            dirty = true;
        }
        if out.prompt(verdict.master)? {
            dirty = true;
        }
        if dirty || last_write.elapsed() >= Duration::from_secs(1) {
            let (sent, failed) = alerts.counts();
            out.state(&StateFile {
                pid: std::process::id(),
                updated_ms: now,
                started_ms: started,
                act: cluster.health.act,
                verdict: &verdict,
                alerts_sent: sent,
                alerts_failed: failed,
            })?;
            last_write = Instant::now();
        }
        if last_cfg_check.elapsed() >= Duration::from_secs(2) {
            last_cfg_check = Instant::now();
            let m = mtime(&cfg_path);
            if m != cfg_mtime {
                cfg_mtime = m;
                match load_cluster(root) {
                    Ok(c) if c != cluster => {
                        log::info!("cluster config changed: re-planning the checks");
                        workers.stop();
                        cluster = c;
                        checks = plan(&cluster, role);
                        let ids: Vec<String> = checks.iter().map(|c| c.id.clone()).collect();
                        verdict.reconfigure(&cluster.health, cluster.priority(role), &ids);
                        for c in &checks {
                            verdict.add_check(&c.id, c.kind, now);
                        }
                        workers = spawn(root, &cluster, role, &checks, &tx)?;
                        slow.stop();
                        slow = spawn_slow(root, &cluster, &master, &tx);
                        out.track(&cluster.health, verdict.track_value())?;
                    }
                    Ok(_) => {}
                    Err(e) => log::warn!("keeping the old checks: {e:#}"),
                }
            }
        }
    }
}

fn apply(v: &mut Verdict, m: Msg) {
    let now = now_ms();
    match m {
        Msg::Outcome(id, o) => v.observe(&id, o, now),
        Msg::Master(b) => v.set_master(b, now),
        Msg::Sync(ok, e) => v.set_sync(ok, &e, now),
        Msg::SplitBrain(found) => v.set_split_brain(found, now),
    }
}

/// The files the monitor writes, each only when its content changes.
struct Outputs {
    root: NodeRoot,
    role: Role,
    track: Option<String>,
    prompt: Option<String>,
}

impl Outputs {
    fn new(root: NodeRoot, role: Role) -> Outputs {
        Outputs {
            root,
            role,
            track: None,
            prompt: None,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.path(p)
    }

    /// The track file, rewritten also when someone else changed it
    /// (keepalived's init_file at its start).
    fn track(&mut self, h: &HealthSettings, value: i32) -> Result<()> {
        let text = format!("{}\n", if h.act { value } else { 0 });
        let p = self.path(paths::HEALTH_PRIORITY_TRACK);
        let on_disk = std::fs::read_to_string(&p).ok();
        if self.track.as_deref() != Some(&text) || on_disk.as_deref() != Some(&text) {
            atomic_write(&p, text.as_bytes(), 0o644)?;
            self.track = Some(text);
        }
        Ok(())
    }

    fn prompt(&mut self, master: Option<bool>) -> Result<bool> {
        let text = format!("{}\n", prompt_marker(self.role, master));
        if self.prompt.as_deref() == Some(&text) {
            return Ok(false);
        }
        atomic_write(&self.path(paths::PROMPT_STATE), text.as_bytes(), 0o644)?;
        self.prompt = Some(text);
        Ok(true)
    }

    fn state(&mut self, s: &StateFile) -> Result<()> {
        let text = serde_json::to_vec(s)?;
        atomic_write(&self.path(paths::HEALTH_STATE), &text, 0o644)
    }
}

/// Read the monitor's state file (None: no monitor has written one).
pub fn read_state(root: &NodeRoot) -> Result<Option<serde_json::Value>> {
    let p = root.path(paths::HEALTH_STATE);
    match std::fs::read_to_string(&p) {
        Ok(t) => Ok(Some(
            serde_json::from_str(&t).with_context(|| format!("parsing {}", p.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ns_ha_common::fixtures::sample_cluster;
    use ns_ha_common::health_config::{LinkCheck, ServiceCheck};

    #[test]
    fn the_plan_lists_interfaces_links_with_the_peer_and_services() {
        let mut c = sample_cluster();
        assert_eq!(plan(&c, Role::Primary).len(), 1);
        assert_eq!(unchecked_links(&c), vec!["lan0"]);
        c.health.links.push(LinkCheck {
            interface: "lan0".into(),
            targets: vec!["10.99.1.100".parse().unwrap()],
            peer: true,
        });
        c.health.services.push(ServiceCheck {
            name: "dnsmasq".into(),
            process: Some("dnsmasq".into()),
            dns: Some("10.99.1.254:53".parse().unwrap()),
            tcp: None,
        });
        let p = plan(&c, Role::Primary);
        assert_eq!(p.len(), 3);
        assert_eq!(
            p[1].probe,
            Probe::Reach {
                interface: "lan0".into(),
                targets: vec!["10.99.1.100".parse().unwrap(), "10.99.1.2".parse().unwrap()]
            }
        );
        // The backup pings the primary.
        let b = plan(&c, Role::Backup);
        assert!(b[1].what.contains("10.99.1.1 "), "{}", b[1].what);
        assert_eq!(p[2].id, "service:dnsmasq");
        assert!(p[2].what.contains("DNS answers at 10.99.1.254:53"));
        assert!(unchecked_links(&c).is_empty());
    }

    struct FakeService {
        alive: bool,
        dns: bool,
    }
    impl ServiceProbe for FakeService {
        fn process_alive(&self, _: &str) -> bool {
            self.alive
        }
        fn dns_answers(&self, _: std::net::SocketAddrV4, _: Duration) -> Option<Duration> {
            self.dns.then(|| Duration::from_millis(2))
        }
        fn tcp_answers(&self, _: std::net::SocketAddrV4, _: Duration) -> Option<Duration> {
            None
        }
    }

    #[test]
    fn a_service_round_needs_the_process_and_its_port() {
        let s = ServiceCheck {
            name: "dnsmasq".into(),
            process: Some("dnsmasq".into()),
            dns: Some("10.99.1.254:53".parse().unwrap()),
            tcp: None,
        };
        let t = Duration::from_millis(100);
        let o = service_round(
            &FakeService {
                alive: true,
                dns: true,
            },
            &s,
            t,
        );
        assert_eq!((o.ok, o.latency_ms), (Some(true), Some(2.0)));
        let o = service_round(
            &FakeService {
                alive: false,
                dns: true,
            },
            &s,
            t,
        );
        assert!(o.detail.contains("not running"));
        let o = service_round(
            &FakeService {
                alive: true,
                dns: false,
            },
            &s,
            t,
        );
        assert_eq!(o.ok, Some(false));
        assert!(o.detail.contains("no DNS answer from 10.99.1.254:53"));
    }

    #[test]
    fn a_split_brain_round_names_the_vips_another_mac_answers_for() {
        use crate::tools::tests::ReplayTools;
        let d = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(d.path()).unwrap();
        let c = sample_cluster();
        let vips = lan_vips(&c);
        assert_eq!(vips, vec!["10.99.1.254".parse::<Ipv4Addr>().unwrap()]);
        let q = ReplayTools::default();
        q.answer(
            "ns-ha-vip who-holds",
            0,
            include_str!("../tests/fixtures/fw1-who-holds-local.json"),
        );
        assert_eq!(split_brain_round(&q, &root, &vips), None);
        q.answer(
            "ns-ha-vip who-holds",
            0,
            include_str!("../tests/fixtures/fw1-who-holds-split.json"),
        );
        assert_eq!(
            split_brain_round(&q, &root, &vips).as_deref(),
            Some("10.99.1.254 on lan0 also answered by 02:00:00:00:00:02")
        );
        // A tool that fails is no evidence either way.
        q.answer(
            "ns-ha-vip who-holds",
            5,
            r#"{"error":"interface lan0 does not exist on this node","code":5}"#,
        );
        assert_eq!(split_brain_round(&q, &root, &vips), None);
    }

    #[test]
    fn the_prompt_marker_names_role_and_state() {
        assert_eq!(prompt_marker(Role::Primary, Some(true)), "[P:MASTER]");
        assert_eq!(prompt_marker(Role::Backup, Some(false)), "[S:BACKUP]");
        assert_eq!(prompt_marker(Role::Backup, None), "[S:?]");
    }
}
