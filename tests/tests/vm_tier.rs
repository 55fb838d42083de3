//! Issue 9 part C, the VM tier: bond, VLAN and PPPoE WANs for real.
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
//! The WANs are takeover WANs (one definition, up on the MASTER only). Until
//! `ns-ha-init add-wan` exists, each is a lab init script that the role engine
//! starts on MASTER and stops on BACKUP/FAULT, put into the roles section of
//! cluster.json on the primary and synced to the backup like any role setting.
//!
//! Run alone: `cargo test -p ns-ha-tests --test vm_tier -- --nocapture`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ns_ha_common::exit::Code;
use ns_ha_common::peer::PEER_TIMEOUT_ENV;
use ns_ha_tests::cluster::{init, init_ok, pair_with_lans, role_settled};
use ns_ha_tests::{net, wait_until, Lab};
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
    "pppoe-wan",
];

/// Limit of the whole VM run (boot + cases), enforced by lab/vm.sh. The run
/// takes ~2-4 min on an idle 2-core machine; the margin is for a loaded one
/// (emulation slows down with the host's load).
const VM_TIMEOUT_SECS: u32 = 540;

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

/// A takeover WAN of `lab/vm/wans.sh`: its case, its role-engine service, its device
/// and the source address whose default route is the WAN's (None: the main
/// table's default route, PPPoE's).
struct Wan {
    case: &'static str,
    service: &'static str,
    dev: &'static str,
    source: Option<&'static str>,
    /// The ISP's interface that sees the WAN address by ARP (None: PPP, no ARP).
    isp_dev: Option<&'static str>,
}

const WANS: &[Wan] = &[
    Wan {
        case: "vlan-wan",
        service: "wan-vlan",
        dev: "wan0.100",
        source: Some("10.99.8.1"),
        isp_dev: Some("eth0.100"),
    },
    Wan {
        case: "vlan-on-bond-wan",
        service: "wan-bondvlan",
        dev: "bond0.200",
        source: Some("10.99.4.1"),
        isp_dev: Some("eth0.200"),
    },
    Wan {
        case: "pppoe-wan",
        service: "pppoe-wan",
        dev: "pppwan",
        source: None,
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
/// input first, on a node not yet initialised, then the three takeover WANs
/// through one crash of fw1.
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

/// Whether `wan` works on `node`: its device is up and a ping to the
/// internet through the WAN's default route is answered.
fn wan_works(lab: &Lab, node: &str, wan: &Wan) -> bool {
    if !link_up(lab, node, wan.dev) {
        return false;
    }
    let mut argv = vec!["ping", "-n", "-q", "-c", "1", "-W", "1"];
    if let Some(src) = wan.source {
        argv.extend(["-I", src]);
    } else {
        let route = lab.exec(node, &["ip", "route", "show", "default", "dev", wan.dev]);
        if route.stdout.is_empty() {
            return false;
        }
    }
    argv.push(INTERNET);
    lab.exec(node, &argv).status.success()
}

/// The device exists on `node` and is administratively up.
fn link_up(lab: &Lab, node: &str, dev: &str) -> bool {
    let out = lab.exec(node, &["ip", "-json", "link", "show", "dev", dev]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v[0]["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"))
}

/// The MAC addresses that answer the ISP's ARP requests for the WAN address.
fn arp_answerers(lab: &Lab, isp_dev: &str, addr: &str) -> Vec<String> {
    let out = lab.exec(
        "wan",
        &["arping", "-c", "3", "-w", "4", "-I", isp_dev, addr],
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

/// The three takeover WANs: each up on the MASTER only (the BACKUP's device
/// is down and the ISP hears one MAC), then after fw1 dies each up on fw2
/// with a working default route; the time from the crash to that route.
/// Setup failures (pairing, roles) fail every WAN case with the reason.
fn takeover_wans(lab: &Lab, steps: &Steps) -> Vec<(&'static str, Result<String, String>)> {
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
    // Steady state: every WAN works on fw1 only; the ISP hears fw1 alone.
    let mut before: Vec<Option<String>> = Vec::new();
    for wan in WANS {
        let mut problem = None;
        if !wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            wan_works(lab, "fw1", wan)
        }) {
            problem = Some("not working on the MASTER fw1".to_string());
        } else if link_up(lab, "fw2", wan.dev) {
            problem = Some(format!("{} is up on the BACKUP fw2", wan.dev));
        } else if let (Some(isp_dev), Some(addr)) = (wan.isp_dev, wan.source) {
            let heard = arp_answerers(lab, isp_dev, addr);
            let fw1 = mac_of(lab, "fw1", wan.dev);
            if heard != [fw1.clone()] {
                problem = Some(format!(
                    "ARP for {addr} answered by {heard:?}, want fw1's {fw1} only"
                ));
            }
        }
        before.push(problem);
    }
    steps.done("steady state checked");

    // fw1 dies; each WAN must come up on fw2 with a working default route.
    let crashed = Instant::now();
    lab.crash("fw1");
    let took: Vec<Option<Duration>> = std::thread::scope(|s| {
        let handles: Vec<_> = WANS
            .iter()
            .map(|wan| {
                s.spawn(move || {
                    wait_until(Duration::from_secs(120), Duration::from_millis(100), || {
                        wan_works(lab, "fw2", wan)
                    })
                    .then(|| crashed.elapsed())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("poller thread"))
            .collect()
    });
    steps.done("failover polled");
    WANS.iter()
        .zip(before)
        .zip(took)
        .map(|((wan, before), took)| {
            let result = (|| {
                if let Some(p) = before {
                    return Err(format!("before the crash: {p}"));
                }
                let took = took.ok_or("not working on fw2 120 s after fw1 crashed")?;
                if link_up(lab, "fw1", wan.dev) {
                    return Err(format!("{} still up on the dead fw1", wan.dev));
                }
                if let (Some(isp_dev), Some(addr)) = (wan.isp_dev, wan.source) {
                    let heard = arp_answerers(lab, isp_dev, addr);
                    let fw2 = mac_of(lab, "fw2", wan.dev);
                    if heard != [fw2.clone()] {
                        return Err(format!(
                            "after the crash ARP for {addr} answered by {heard:?}, want fw2's {fw2} only"
                        ));
                    }
                }
                Ok(format!(
                    "{} on fw2 only, default route works {} ms after fw1 crashed",
                    wan.dev,
                    took.as_millis()
                ))
            })();
            (wan.case, result.map_err(|e: String| e))
        })
        .collect()
}

/// Pair, give the roles the WAN services (started on MASTER, stopped on
/// BACKUP/FAULT), slow VRRP down to [`VM_ADVERT_MS`], enable; fw1 MASTER, fw2 BACKUP with the roles synced.
fn takeover_setup(lab: &Lab, steps: &Steps) {
    pair_with_lans(lab);
    steps.done("paired");
    let mut c: Value =
        serde_json::from_str(&lab.read("fw1", "/etc/ns-ha/cluster.json")).expect("cluster.json");
    for (role, list) in [("master", "start"), ("backup", "stop"), ("fault", "stop")] {
        let l = c["roles"][role][list].as_array_mut().expect("role list");
        l.extend(WANS.iter().map(|w| Value::from(w.service)));
    }
    // The default advert interval (50 ms) is far below what an emulated
    // keepalived keeps up with: the nodes would flap.
    c["vrrp"]["advert_interval_ms"] = Value::from(VM_ADVERT_MS);
    lab.write("fw1", "/etc/ns-ha/cluster.json", c.to_string());
    init_ok(lab, "fw1", &["enable"]);
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
    let synced: Value =
        serde_json::from_str(&lab.read("fw2", "/etc/ns-ha/cluster.json")).expect("fw2 cluster");
    assert_eq!(
        synced["roles"]["master"]["start"], c["roles"]["master"]["start"],
        "the WAN services did not reach fw2 by sync"
    );
    steps.done("fw1 MASTER, fw2 BACKUP, roles synced");
}
