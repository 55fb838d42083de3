//! Issue 9 part C, the VM tier: bond, VLAN and PPPoE WANs for real (VLANs
//! on a NIC, a bond and a bridge; PPPoE on a NIC and on a VLAN).
//!
//! This machine's kernel has no bonding, 802.1q or PPP, so these WANs cannot
//! be built in the namespace lab. `vm_tier` boots Debian's stock kernel under
//! qemu (software emulation, `lab/vm.sh`) with this machine's root filesystem
//! and re-runs this test binary inside it, where the `in_vm_*` cases build the
//! usual lab (lab/lab.sh: real keepalived, sshd, the built ns-ha tools) plus
//! the WAN devices of `lab/vm/wans.sh`, and assert against them. `vm_tier`
//! then asserts that every case passed and prints the figures, which are
//! emulated time (TCG, 5-10x slower than a real box).
//!
//! The WANs are takeover WANs, each added with `ns-ha-init add-wan` on the
//! primary (`--kind vlan` on a NIC, a bond and a bridge, `--kind bond` of
//! two NICs, `--kind pppoe` on a NIC and on a VLAN, with its CHAP secret in
//! the primary's `/etc/ppp/chap-secrets`): the definitions reach the backup with the
//! cluster, the secret by the sync, and the role engine brings each up
//! through the real ifupdown on the MASTER only (ifupdown creates the VLAN
//! device, the bond WAN's stanza builds the bond with `ip`, `pon` starts
//! pppd with the peers file ns-ha rendered) and takes it down elsewhere.
//! Moves: maintenance on and off, a partition that heals (not PPPoE, see
//! [`takeover_wans`]), and the crash of fw1. Measured per WAN and move: the
//! time to a working default route on the new holder (a ping to the ISP's
//! "internet" through the WAN's device) with the old one's device down, in
//! emulated time. Asserted per WAN: up with its default route (and metric)
//! on the MASTER only, the ISP's ARP for its address answered by the
//! MASTER's MAC alone, never two holders at any sample (but while the
//! partition lasts), and after each move the new holder the only one at
//! every sample.
//!
//! Run alone: `cargo test -p ns-ha-tests --test vm_tier -- --nocapture`.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ns_ha_common::exit::Code;
use ns_ha_common::peer::PEER_TIMEOUT_ENV;
use ns_ha_tests::cluster::{init, init_ok, pair_only_with, role_settled, role_status, tool_ok};
use ns_ha_tests::links::LinkSnapshot;
use ns_ha_tests::{net, wait_until, Lab, StopOnDrop};
use serde_json::Value;

/// Set (to 1) by `vm_tier` for the run inside the VM; the `in_vm_*` cases do
/// nothing without it (e.g. under `cargo test -- --ignored` on the host,
/// whose kernel lacks the features: `vm_tier` is the test that covers them).
const IN_VM_ENV: &str = "NS_HA_VM_TIER";

/// The cases, each reported by the run inside the VM on a line
/// `VM-CASE NAME ok FIGURE` or `VM-CASE NAME FAILED REASON`.
const CASES: &[&str] = &[
    "bond-as-ha-interface-refused",
    "vlan-wan",
    "vlan-on-bond-wan",
    "bond-wan",
    "pppoe-wan",
    "vlan-on-bridge-wan",
    "pppoe-on-vlan-wan",
];

/// Limit of the whole VM run (boot + cases), enforced by lab/vm.sh. The run
/// takes ~2-4 min on an idle 2-core machine; the margin is for a loaded one
/// (emulation slows down with the host's load).
const VM_TIMEOUT_SECS: u32 = 840;

/// How long the primary waits for the backup in the VM: a backup's sync
/// receiver that validates a config starts several processes, each taking a
/// second or more under emulation, more than the default 15 s in all.
const VM_PEER_TIMEOUT_SECS: u32 = 120;

/// VRRP advert interval in the VM (ms).
const VM_ADVERT_MS: u32 = 1000;

/// The prefix of a case's verdict line.
const VERDICT: &str = "VM-CASE ";

/// "The internet" behind the ISP (the WAN host's lo), reached through each WAN.
const INTERNET: &str = "10.99.9.100";

/// The PPPoE account at the ISP (lab/vm/wans.sh has the ISP's side).
const PPP_USER: &str = "nsha-lab";
const PPP_SECRET: &str = "nsha-lab-secret";

/// The WAN definitions' file, rendered on each node from the cluster.
const WAN_FILE: &str = "/etc/network/interfaces.d/ns-ha-wan";

/// A takeover WAN of the VM tier: its case, its `add-wan` options, its
/// device, its static address (None: PPPoE's comes from the ISP), the
/// metric of its default route, the ISP's interface that sees the
/// address by ARP (None: PPP, no ARP).
struct Wan {
    case: &'static str,
    add: &'static [&'static str],
    dev: &'static str,
    address: Option<&'static str>,
    metric: u32,
    isp_dev: Option<&'static str>,
}

const WANS: &[Wan] = &[
    Wan {
        case: "vlan-wan",
        add: &[
            "--interface",
            "wan0.100",
            "--kind",
            "vlan",
            "--parent",
            "wan0",
            "--vlan-id",
            "100",
            "--ipv4",
            "10.99.8.1/24",
            "--gateway",
            "10.99.8.100",
            "--metric",
            "100",
        ],
        dev: "wan0.100",
        address: Some("10.99.8.1"),
        metric: 100,
        isp_dev: Some("eth0.100"),
    },
    Wan {
        case: "vlan-on-bond-wan",
        add: &[
            "--interface",
            "bond0.200",
            "--kind",
            "vlan",
            "--parent",
            "bond0",
            "--vlan-id",
            "200",
            "--ipv4",
            "10.99.4.1/24",
            "--gateway",
            "10.99.4.100",
            "--metric",
            "200",
        ],
        dev: "bond0.200",
        address: Some("10.99.4.1"),
        metric: 200,
        isp_dev: Some("eth0.200"),
    },
    Wan {
        case: "bond-wan",
        add: &[
            "--interface",
            "bond1",
            "--kind",
            "bond",
            "--member",
            "wanc0",
            "--member",
            "wanc1",
            "--ipv4",
            "10.99.7.1/24",
            "--gateway",
            "10.99.7.100",
            "--metric",
            "400",
        ],
        dev: "bond1",
        address: Some("10.99.7.1"),
        metric: 400,
        isp_dev: Some("eth1"),
    },
    Wan {
        case: "pppoe-wan",
        add: &[
            "--interface",
            "pppoe-wan",
            "--kind",
            "pppoe",
            "--parent",
            "wan1",
            "--pppoe-user",
            PPP_USER,
            "--metric",
            "300",
        ],
        dev: "pppoe-wan",
        address: None,
        metric: 300,
        isp_dev: None,
    },
    Wan {
        case: "vlan-on-bridge-wan",
        add: &[
            "--interface",
            "br0.400",
            "--kind",
            "vlan",
            "--parent",
            "br0",
            "--vlan-id",
            "400",
            "--ipv4",
            "10.99.11.1/24",
            "--gateway",
            "10.99.11.100",
            "--metric",
            "600",
        ],
        dev: "br0.400",
        address: Some("10.99.11.1"),
        metric: 600,
        isp_dev: Some("eth0.400"),
    },
    Wan {
        case: "pppoe-on-vlan-wan",
        add: &[
            "--interface",
            "pppoe-v300",
            "--kind",
            "pppoe",
            "--parent",
            "wane0.300",
            "--pppoe-user",
            PPP_USER,
            "--metric",
            "500",
        ],
        dev: "pppoe-v300",
        address: None,
        metric: 500,
        isp_dev: None,
    },
];

// ---------------------------------------------------------------- on the host

#[test]
fn vm_tier() {
    let exe = std::env::current_exe().expect("test binary path");
    let vm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lab/vm.sh");
    let started = Instant::now();
    // NS_HA_LAB_KEEP: the VM's lab goes with the VM, tearing it down first
    // would only cost time. The peer timeout: see VM_PEER_TIMEOUT_SECS.
    let out = Command::new(&vm)
        .args(["run", "--timeout", &VM_TIMEOUT_SECS.to_string()])
        .args(["--memory", "2048", "--cpus", "2", "--", "env"])
        .args([format!("{IN_VM_ENV}=1"), "NS_HA_LAB_KEEP=1".to_string()])
        .arg(format!("{PEER_TIMEOUT_ENV}={VM_PEER_TIMEOUT_SECS}"))
        // Symbolizing a backtrace of a debug binary takes minutes emulated.
        .arg("RUST_BACKTRACE=0")
        .arg(&exe)
        .args(["--exact", "--ignored", "--nocapture", "in_vm_cases"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", vm.display()));
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = format!(
        "vm.sh {} after {:.1} s\n--- vm.sh stdout\n{stdout}--- vm.sh stderr\n{stderr}",
        out.status,
        elapsed.as_secs_f64()
    );
    // The tier fails (never skips) when the VM cannot boot or run the cases.
    let verdicts: Vec<(&str, &str)> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix(VERDICT)?.split_once(' '))
        .collect();
    let mut failed = Vec::new();
    for case in CASES {
        match verdicts.iter().find(|(c, _)| c == case) {
            Some((_, v)) if v.starts_with("ok") => {
                println!("vm_tier {case}: {v} (emulated)");
            }
            Some((_, v)) => failed.push(format!("{case}: {v}")),
            None => failed.push(format!("{case}: no verdict (the run stopped before it)")),
        }
    }
    assert!(
        failed.is_empty(),
        "VM tier cases failed: {failed:#?}\n{report}"
    );
    assert!(out.status.success(), "VM tier run failed\n{report}");
    for line in stdout.lines().filter(|l| l.starts_with('[')) {
        println!("vm_tier step {line}");
    }
    for line in stderr.lines().filter(|l| l.starts_with("vm.sh: VM ran")) {
        println!("{line}");
    }
    println!("vm_tier: {:.1} s in all", elapsed.as_secs_f64());
}

// ---------------------------------------------------------------- in the VM

/// Progress on stderr with the time since the run started: when the VM's
/// timeout cuts the run, its output says how far it got.
struct Steps(Instant);

impl Steps {
    fn done(&self, what: &str) {
        eprintln!("[{:7.1} s] {what}", self.0.elapsed().as_secs_f64());
    }
}

/// Print a case's verdict line for `vm_tier`; returns whether it passed.
fn verdict(case: &str, result: &Result<String, String>) -> bool {
    match result {
        Ok(figure) => println!("{VERDICT}{case} ok {figure}"),
        Err(why) => println!("{VERDICT}{case} FAILED {}", why.replace('\n', " | ")),
    }
    result.is_ok()
}

/// Every case in one lab (a lab costs ~1 min under emulation): the bad
/// input first, on a node not yet initialised, then the six takeover WANs
/// through their moves ([`takeover_wans`]).
#[test]
#[ignore = "runs inside the VM tier (vm_tier boots it)"]
fn in_vm_cases() {
    if std::env::var_os(IN_VM_ENV).is_none() {
        eprintln!("{IN_VM_ENV} unset: not in the VM tier, nothing to do (vm_tier runs this)");
        return;
    }
    let steps = Steps(Instant::now());
    let lab = vm_lab();
    steps.done("lab and WAN devices up");
    let mut all_ok = verdict("bond-as-ha-interface-refused", &bond_as_ha_interface(&lab));
    steps.done("bad input checked");
    let results = takeover_wans(&lab, &steps);
    for wan in WANS {
        let r = results
            .iter()
            .find(|(c, _)| *c == wan.case)
            .map_or_else(|| Err("not run".to_string()), |(_, r)| r.clone());
        all_ok &= verdict(wan.case, &r);
    }
    assert!(all_ok, "some VM tier cases failed (VM-CASE lines above)");
}

/// Build the lab with the WAN devices of `lab/vm/wans.sh`.
fn vm_lab() -> Lab {
    let lab = Lab::up();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lab/vm/wans.sh");
    let out = Command::new(&script)
        .args(["up", lab.prefix()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "wans.sh up failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    lab
}

/// A bond as the HA interface is refused with the reason and the fix, in
/// one line with the input error's exit code, and nothing is written.
fn bond_as_ha_interface(lab: &Lab) -> Result<String, String> {
    lab.exec_ok(
        "fw1",
        &["ip", "addr", "add", "10.99.6.1/24", "dev", "bond0"],
    );
    let before = tree(&lab.path("fw1", "/etc"));
    let out = init(
        lab,
        "fw1",
        &[
            "init-primary",
            "--ha-interface",
            "bond0",
            "--peer",
            net::FW2_HA,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    lab.exec_ok(
        "fw1",
        &["ip", "addr", "del", "10.99.6.1/24", "dev", "bond0"],
    );
    if out.status.code() != Some(Code::InvalidInput as i32) {
        return Err(format!(
            "exit {:?}, want {}: {stderr}",
            out.status.code(),
            Code::InvalidInput as i32
        ));
    }
    if !(stderr.contains("bond0 is a bond") && stderr.contains("must be a physical NIC")) {
        return Err(format!("no reason and fix: {stderr}"));
    }
    if stderr.lines().count() != 1 {
        return Err(format!("not one line: {stderr}"));
    }
    if tree(&lab.path("fw1", "/etc")) != before {
        return Err("init-primary wrote to fw1's /etc".into());
    }
    Ok(format!("refused: {stderr}"))
}

/// Every file under `dir` with its contents, to compare before and after.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            let data = if p.is_file() {
                std::fs::read(&p).unwrap_or_default()
            } else {
                Vec::new()
            };
            out.push((p.display().to_string(), data));
        }
    }
    out.sort();
    out
}

/// Whether `wan` works on `node`: its device is up with a default route
/// of its own, and a ping to the internet bound to that device (so routed
/// by that default route) is answered.
fn wan_works(lab: &Lab, node: &str, wan: &Wan) -> bool {
    if !link_up(lab, node, wan.dev) || default_route(lab, node, wan.dev).is_empty() {
        return false;
    }
    lab.exec(
        node,
        &[
            "ping", "-n", "-q", "-c", "1", "-W", "1", "-I", wan.dev, INTERNET,
        ],
    )
    .status
    .success()
}

/// `ip route show default dev DEV` on `node` (empty: none).
fn default_route(lab: &Lab, node: &str, dev: &str) -> String {
    let out = lab.exec(node, &["ip", "route", "show", "default", "dev", dev]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The device exists on `node` and is administratively up.
fn link_up(lab: &Lab, node: &str, dev: &str) -> bool {
    let out = lab.exec(node, &["ip", "-json", "link", "show", "dev", dev]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v[0]["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"))
}

/// The firewalls that hold `wan` in `snapshot`: its device up (with its
/// static address, for a VLAN WAN), so able to answer for it or to carry
/// its session.
fn holders_in(snapshot: &LinkSnapshot, wan: &Wan) -> Vec<&'static str> {
    let address = wan
        .address
        .map(|a| a.parse().expect("a WAN's address is an IP address"));
    snapshot.holders(wan.dev, address)
}

/// The firewalls that hold `wan` now (both read at one instant).
fn holders(lab: &Lab, wan: &Wan) -> Vec<&'static str> {
    holders_in(&lab.link_snapshot(), wan)
}

/// The MAC addresses that answer the ISP's ARP requests for the WAN address.
fn arp_answerers(lab: &Lab, isp_dev: &str, addr: &str) -> Vec<String> {
    let out = lab.exec(
        "wan",
        &["arping", "-c", "2", "-w", "3", "-I", isp_dev, addr],
    );
    let mut macs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("reply from"))
        .filter_map(|l| {
            let (_, rest) = l.split_once('[')?;
            Some(rest.split_once(']')?.0.to_ascii_lowercase())
        })
        .collect();
    macs.sort();
    macs.dedup();
    macs
}

fn mac_of(lab: &Lab, node: &str, dev: &str) -> String {
    let out = lab.exec_ok(node, &["cat", &format!("/sys/class/net/{dev}/address")]);
    out.trim().to_ascii_lowercase()
}

/// Whether the MASTER `master` alone has `wan`: working with its default
/// route at its metric, the other node's device down or absent, and for a
/// VLAN WAN the ISP's ARP for the address answered by `master`'s MAC only.
fn only_on(lab: &Lab, master: &str, other: &str, wan: &Wan) -> Result<(), String> {
    let route = default_route(lab, master, wan.dev);
    if !route.contains(&format!("metric {}", wan.metric)) {
        return Err(format!(
            "{master}'s default route via {} is '{route}', want metric {}",
            wan.dev, wan.metric
        ));
    }
    if link_up(lab, other, wan.dev) {
        return Err(format!("{} is up on {other} too", wan.dev));
    }
    if let (Some(isp_dev), Some(addr)) = (wan.isp_dev, wan.address) {
        let heard = arp_answerers(lab, isp_dev, addr);
        let want = mac_of(lab, master, wan.dev);
        if heard != [want.clone()] {
            return Err(format!(
                "ARP for {addr} answered by {heard:?}, want {master}'s {want} only"
            ));
        }
    }
    Ok(())
}

/// What `node` shows of a WAN that does not work: the role engine's
/// last records of its lane, the device, the default routes, pppd's log.
fn diagnose(lab: &Lab, node: &str, wan: &Wan) -> String {
    let history = role_status(lab, node)["history"].to_string();
    let lane: Vec<&str> = history
        .split("},{")
        .filter(|r| r.contains(wan.dev))
        .collect();
    let tail = |t: String, n: usize| -> String {
        let t = t.replace('\n', "; ");
        let mut from = t.len().saturating_sub(n);
        while !t.is_char_boundary(from) {
            from += 1;
        }
        t[from..].to_string()
    };
    let show = |argv: &[&str]| String::from_utf8_lossy(&lab.exec(node, argv).stdout).into_owned();
    let procs: String = show(&["ps", "-eo", "pid,stat,etimes,args"])
        .lines()
        .filter(|l| {
            ["pon", "pppd", "ifup", "ifdown", "poff"]
                .iter()
                .any(|p| l.contains(p))
        })
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "processes: {} | lane: {} | link: {} | routes: {} | pppd: {}",
        tail(procs, 800),
        tail(lane.join(" / "), 1200),
        tail(show(&["ip", "-o", "addr", "show", "dev", wan.dev]), 300),
        tail(show(&["ip", "route", "show", "default"]), 300),
        tail(
            std::fs::read_to_string(lab.path(node, "/var/log/pppd.log")).unwrap_or_default(),
            600
        )
    )
}

/// How often the sampler reads both firewalls' links (in-process, both
/// within microseconds: `ns_ha_tests::links`, no process start).
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// How often each WAN's end of move is checked (a few `ip netns exec` and
/// a ping: one check takes ~0.5-3 s emulated).
const DONE_EVERY: Duration = Duration::from_millis(200);

/// How long the samples go on after the move is done (the "after" of the
/// one-holder rule).
const SAMPLE_AFTER: Duration = Duration::from_secs(5);

/// How long a move may take, emulated.
const MOVE_LIMIT: Duration = Duration::from_secs(90);

/// One WAN's move (a crash, a handover, a healed partition): the time from
/// the event until it was done, every sample's holders, and the longest
/// one sample's reads took (`LinkSnapshot::spread`).
struct Move {
    took: Option<Duration>,
    samples: Vec<(Duration, Vec<&'static str>)>,
    spread: Duration,
}

/// Sample the holders of every WAN of `wans` every [`SAMPLE_EVERY`] from
/// `since` until each is `done` (at most [`MOVE_LIMIT`]) and [`SAMPLE_AFTER`]
/// more; one sampler for all (two `getifaddrs` a sample), each WAN's `done`
/// checked on a thread of its own.
fn poll_moves(
    lab: &Lab,
    wans: &[&Wan],
    since: Instant,
    done: impl Fn(&Wan) -> bool + Sync,
) -> Vec<Move> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut snapshots: Vec<(Duration, LinkSnapshot)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                snapshots.push((since.elapsed(), lab.link_snapshot()));
                std::thread::sleep(SAMPLE_EVERY);
            }
            snapshots
        });
        // Stopped also when a check panics: the scope would otherwise wait
        // for the sampler for ever.
        let stopper = StopOnDrop(&stop);
        let took = each(wans, |wan| loop {
            if done(wan) {
                break Some(since.elapsed());
            }
            if since.elapsed() > MOVE_LIMIT {
                break None;
            }
            std::thread::sleep(DONE_EVERY);
        });
        if let Some(last) = took.iter().flatten().max() {
            let until = since + *last + SAMPLE_AFTER;
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
        }
        drop(stopper);
        let snapshots = sampler.join().expect("the link sampler");
        wans.iter()
            .zip(took)
            .map(|(wan, took)| {
                let mine: Vec<&(Duration, LinkSnapshot)> = snapshots
                    .iter()
                    .filter(|(at, _)| took.is_none_or(|t| *at <= t + SAMPLE_AFTER))
                    .collect();
                Move {
                    took,
                    samples: mine
                        .iter()
                        .map(|(at, s)| (*at, holders_in(s, wan)))
                        .collect(),
                    spread: mine.iter().map(|(_, s)| s.spread).max().unwrap_or_default(),
                }
            })
            .collect()
    })
}

/// What the samples break of the one-holder rule: never two holders (from
/// the first sample on, or after the first sample with one holder: a healed
/// partition starts with two), and `to` the only one once the move is done.
fn holder_problem(m: &Move, to: &str, two_at_first: bool) -> Option<String> {
    let checked: Vec<&(Duration, Vec<&str>)> = m
        .samples
        .iter()
        .skip_while(|(_, h)| two_at_first && h.len() > 1)
        .collect();
    if let Some((at, h)) = checked.iter().find(|(_, h)| h.len() > 1) {
        return Some(format!("held by {h:?} at {} ms", at.as_millis()));
    }
    let took = m.took?;
    checked
        .iter()
        .find(|(at, h)| *at > took && *h != [to])
        .map(|(at, h)| {
            format!(
                "held by {h:?} at {} ms, after the move was done at {} ms",
                at.as_millis(),
                took.as_millis()
            )
        })
}

/// Run `f` for each of `items` (WANs, or WANs with their moves) at once
/// (each check is seconds of emulated process starts), results in their order.
fn each<I: Sync, T: Send>(items: &[I], f: impl Fn(&I) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = items.iter().map(|i| s.spawn(move || f(i))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("WAN thread"))
            .collect()
    })
}

/// Each WAN's verdict so far: the figures of the steps it passed, or the
/// first step it failed.
struct Verdicts(Vec<(&'static str, Result<Vec<String>, String>)>);

impl Verdicts {
    fn record(&mut self, wan: &Wan, step: &str, r: Result<String, String>) {
        let entry = self
            .0
            .iter_mut()
            .find(|(c, _)| *c == wan.case)
            .expect("a known WAN");
        if let Ok(figures) = &mut entry.1 {
            match r {
                Ok(f) => figures.push(format!("{step}: {f}")),
                Err(e) => entry.1 = Err(format!("{step}: {e}")),
            }
        }
    }

    fn passed(&self, wan: &Wan) -> bool {
        self.0.iter().any(|(c, r)| *c == wan.case && r.is_ok())
    }
}

/// A move of the WANs that still pass to `to` after `event` (run at the
/// start): each WAN sampled until it works on `to` alone, then verdicts.
fn moved(
    lab: &Lab,
    steps: &Steps,
    v: &mut Verdicts,
    wans: &[&Wan],
    step: &str,
    (to, from): (&str, &str),
    event: impl FnOnce(),
) {
    let wans: Vec<&Wan> = wans.iter().copied().filter(|w| v.passed(w)).collect();
    let since = Instant::now();
    event();
    let moves = poll_moves(lab, &wans, since, |wan| {
        wan_works(lab, to, wan) && !link_up(lab, from, wan.dev)
    });
    steps.done(&format!("{step}: polled"));
    let pairs: Vec<(&Wan, &Move)> = wans.iter().copied().zip(&moves).collect();
    let results = each(&pairs, |(wan, m)| {
        move_verdict(lab, wan, m, (to, from), false)
    });
    for (wan, r) in wans.iter().zip(results) {
        v.record(wan, step, r);
    }
}

/// A move's verdict: the one-holder rule across it, working on `to` alone
/// after it, with the time it took.
fn move_verdict(
    lab: &Lab,
    wan: &Wan,
    m: &Move,
    (to, from): (&str, &str),
    two_at_first: bool,
) -> Result<String, String> {
    if let Some(p) = holder_problem(m, to, two_at_first) {
        return Err(format!(
            "one-holder rule: {p} | {from}: {} | {to}: {}",
            diagnose(lab, from, wan),
            diagnose(lab, to, wan)
        ));
    }
    let took = m.took.ok_or_else(|| {
        format!(
            "not on {to} alone {} s after: {}",
            MOVE_LIMIT.as_secs(),
            diagnose(lab, to, wan)
        )
    })?;
    only_on(lab, to, from, wan)?;
    Ok(format!(
        "on {to} only, default route (metric {}) works after {} ms; one holder in all {} samples \
         (a sample read in {} us at most)",
        wan.metric,
        took.as_millis(),
        m.samples.len(),
        m.spread.as_micros()
    ))
}

/// The takeover WANs: each up on the MASTER only (the BACKUP's device is
/// down or absent and the ISP hears one MAC) in steady state, then handed
/// to fw2 and back by maintenance mode, then through a partition that
/// heals, then to fw2 when fw1 dies: one holder at every sample of each
/// move (two allowed only while the partition lasts), the time each took.
/// Each node runs its WAN clients in a PID namespace of its own
/// (`lab/vm/wans.sh`): `poff NAME` stops every `pppd call NAME` it sees.
/// Setup failures (pairing, add-wan, sync, roles) fail every WAN case
/// with the reason.
fn takeover_wans(lab: &Lab, steps: &Steps) -> Vec<(&'static str, Result<String, String>)> {
    let mut v = Verdicts(WANS.iter().map(|w| (w.case, Ok(Vec::new()))).collect());
    let all: Vec<&Wan> = WANS.iter().collect();
    let setup =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| takeover_setup(lab, steps)));
    if let Err(e) = setup {
        let why = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "setup panicked".into());
        return WANS
            .iter()
            .map(|w| (w.case, Err(format!("setup: {why}"))))
            .collect();
    }
    for (wan, p) in all.iter().zip(each(&all, |wan| steady_problem(lab, wan))) {
        steps.done(&format!(
            "{} steady: {}",
            wan.case,
            p.as_deref().unwrap_or("ok")
        ));
        v.record(wan, "steady", p.map_or(Ok("on fw1 only".into()), Err));
    }
    moved(
        lab,
        steps,
        &mut v,
        &all,
        "maintenance on",
        ("fw2", "fw1"),
        || {
            tool_ok(lab, "fw1", "ns-ha-role", &["maintenance", "on"]);
        },
    );
    moved(
        lab,
        steps,
        &mut v,
        &all,
        "maintenance off",
        ("fw1", "fw2"),
        || {
            tool_ok(lab, "fw1", "ns-ha-role", &["maintenance", "off"]);
        },
    );
    partition(lab, steps, &mut v, &all);
    // fw1 dies; each WAN must come up on fw2 with a working default route.
    moved(
        lab,
        steps,
        &mut v,
        &all,
        "crash of fw1",
        ("fw2", "fw1"),
        || {
            lab.crash("fw1");
        },
    );
    v.0.into_iter()
        .map(|(c, r)| (c, r.map(|f| f.join("; "))))
        .collect()
}

/// fw2 hears nothing on the HA link and the LAN: both are MASTER and hold
/// the WANs while it lasts; once it heals fw1 alone keeps each, working.
fn partition(lab: &Lab, steps: &Steps, v: &mut Verdicts, wans: &[&Wan]) {
    let wans: Vec<&Wan> = wans.iter().copied().filter(|w| v.passed(w)).collect();
    lab.cut("fw2", net::HA_IF);
    lab.cut("fw2", net::LAN_IF);
    let both = each(&wans, |wan| {
        wait_until(MOVE_LIMIT, Duration::from_millis(300), || {
            holders(lab, wan).len() == 2
        })
    });
    steps.done("partition: both MASTER");
    let healed = Instant::now();
    lab.heal("fw2", net::HA_IF);
    lab.heal("fw2", net::LAN_IF);
    let moves = poll_moves(lab, &wans, healed, |wan| {
        holders(lab, wan) == ["fw1"] && wan_works(lab, "fw1", wan)
    });
    steps.done("partition healed: polled");
    for ((wan, both), m) in wans.iter().zip(both).zip(&moves) {
        let r = if both {
            move_verdict(lab, wan, m, ("fw1", "fw2"), true)
        } else {
            Err(format!(
                "fw2 did not hold it too during the partition: {}",
                diagnose(lab, "fw2", wan)
            ))
        };
        v.record(wan, "partition healed", r);
    }
}

/// Whether `wan` works on the MASTER fw1 alone in steady state (`None`) or what is wrong.
fn steady_problem(lab: &Lab, wan: &Wan) -> Option<String> {
    if !wait_until(Duration::from_secs(45), Duration::from_millis(200), || {
        wan_works(lab, "fw1", wan)
    }) {
        return Some(format!(
            "not working on the MASTER fw1: {}",
            diagnose(lab, "fw1", wan)
        ));
    }
    only_on(lab, "fw1", "fw2", wan).err().or_else(|| {
        // A few samples: fw1 alone holds it, steadily.
        (0..3).find_map(|_| {
            let h = holders(lab, wan);
            (h != ["fw1"]).then(|| format!("held by {h:?} in steady state"))
        })
    })
}

/// `ns-ha-init add-wan` on the primary fw1; the definition must reach fw2.
fn add_wan(lab: &Lab, wan: &Wan) {
    let mut argv = vec!["add-wan"];
    argv.extend(wan.add);
    let out = init_ok(lab, "fw1", &argv);
    assert!(out.contains("takeover WAN"), "add-wan {}: {out}", wan.dev);
    let file = lab.read("fw1", WAN_FILE);
    assert_eq!(
        file,
        lab.read("fw2", WAN_FILE),
        "the WAN file differs on fw2"
    );
    assert!(
        file.contains(&format!("iface {} inet", wan.dev)),
        "{} missing:\n{file}",
        wan.dev
    );
    if wan.address.is_none() {
        let peer = format!("/etc/ppp/peers/{}", wan.dev);
        assert_eq!(
            lab.read("fw1", &peer),
            lab.read("fw2", &peer),
            "{peer} differs"
        );
    }
}

/// Pair with the LAN, add the WANs with `add-wan` on fw1 (the PPPoE secret
/// in fw1's chap-secrets first), each definition on fw2 with the cluster,
/// slow VRRP down to [`VM_ADVERT_MS`], enable; fw1 MASTER, fw2 BACKUP;
/// then the secret reaches fw2 by a sync push.
fn takeover_setup(lab: &Lab, steps: &Steps) {
    // The lab's nodes are OpenWrt-style; their WANs go through ifupdown.
    pair_only_with(lab, &["--interface-manager", "ifupdown"]);
    let lan_vip = format!("{}/24", net::LAN_VIP);
    init_ok(
        lab,
        "fw1",
        &["add-lan", "--interface", net::LAN_IF, "--vip", &lan_vip],
    );
    steps.done("paired");
    let secrets = "/etc/ppp/chap-secrets";
    lab.write(
        "fw1",
        secrets,
        format!("# client server secret addresses\n{PPP_USER} * {PPP_SECRET} *\n"),
    );
    set_mode(&lab.path("fw1", secrets), 0o600);
    for wan in WANS {
        add_wan(lab, wan);
    }
    steps.done("WANs added with add-wan, definitions on fw2");
    let mut c: Value =
        serde_json::from_str(&lab.read("fw1", "/etc/ns-ha/cluster.json")).expect("cluster.json");
    // The default advert interval (50 ms) is far below what an emulated
    // keepalived keeps up with: the nodes would flap.
    c["vrrp"]["advert_interval_ms"] = Value::from(VM_ADVERT_MS);
    lab.write("fw1", "/etc/ns-ha/cluster.json", c.to_string());
    // Starting keepalived on the backup has a 20 s limit, which an
    // emulated node on a loaded host can miss; the fix the tool names is
    // to run enable again.
    let out = init(lab, "fw1", &["enable"]);
    if out.status.code() == Some(Code::Timeout as i32) {
        eprintln!(
            "enable: {} (emulated): running it again",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        init_ok(lab, "fw1", &["enable"]);
    } else {
        assert!(
            out.status.success(),
            "enable: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    steps.done("enabled");
    assert!(
        lab.wait_holders(net::LAN_VIP, &["fw1"], Duration::from_secs(90)),
        "fw1 did not become MASTER: LAN VIP holders {:?}",
        lab.holders(net::LAN_VIP)
    );
    assert!(
        role_settled(lab, "fw2", "BACKUP", Duration::from_secs(90)),
        "fw2's role engine did not settle as BACKUP"
    );
    steps.done("fw1 MASTER, fw2 BACKUP");
    // The secret by the sync: the new MASTER's role engine pushes (a push
    // by hand would meet its lock), else one push here.
    let synced = || {
        std::fs::read(lab.path("fw2", secrets)).ok() == std::fs::read(lab.path("fw1", secrets)).ok()
    };
    if !wait_until(Duration::from_secs(45), Duration::from_millis(500), synced) {
        tool_ok(lab, "fw1", "ns-ha-sync", &["push"]);
    }
    assert!(synced(), "the PPPoE secret did not reach fw2 by the sync");
    let mode = std::fs::metadata(lab.path("fw2", secrets))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    assert_eq!(mode.ok(), Some(0o600), "fw2's {secrets} mode");
    steps.done("PPPoE secret on fw2");
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}
