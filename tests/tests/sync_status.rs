//! Issue 8 items 2, 14, 15, 16 end to end over the real sshd:
//! - an OpenWrt pair whose backup's `/tmp` is a tmpfs of its own (fw2's SSH
//!   server runs in a private mount namespace, see lab/README.md) applies one
//!   generation that changes `/etc` and the DHCP leases on `/tmp`, and keeps
//!   its sync state on flash;
//! - a push killed with SIGKILL is recorded as interrupted by the next run;
//! - an edit on the backup is reported by `doctor` at once and by a quiet
//!   `push` within `sync.peer_recheck_secs`;
//! - a backup that holds the VIPs refuses a push unless forced.

#[path = "sync_support.rs"]
mod sync_support;

use std::time::{Duration, Instant};

use ns_ha_tests::cluster::{pair, tool};
use ns_ha_tests::{net, Lab};
use serde_json::Value;
use sync_support::*;

/// Where `ns-ha-init` puts the sync state on an OpenWrt node (on flash; the
/// platform layout, `common::platform`, says so; the README too).
const OPENWRT_STATE_DIR: &str = "/etc/ns-ha-sync";

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {}", describe(out)))
}

/// What fw2's SSH server (and so the sync receiver) sees at `rel` in its root.
fn seen_by_receiver(lab: &Lab, argv: &[&str], rel: &str) -> String {
    let path = lab.path("fw2", rel);
    let mut args = argv.to_vec();
    args.push(path.to_str().unwrap());
    let out = lab.in_ssh_server_mounts("fw2", &args);
    assert!(out.status.success(), "{argv:?} {rel}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_openwrt_backup_with_tmpfs_tmp_applies_a_generation_spanning_filesystems() {
    let lab = Lab::up();
    for node in ["fw1", "fw2"] {
        lab.write(node, "/etc/openwrt_release", "DISTRIB_ID='OpenWrt'\n");
    }
    pair(&lab);
    settle(&lab);
    // The state dir is on flash on both nodes (the backup got the cluster config).
    for node in ["fw1", "fw2"] {
        let cluster: Value =
            serde_json::from_str(&lab.read(node, "/etc/ns-ha/cluster.json")).unwrap();
        assert_eq!(cluster["sync"]["state_dir"], OPENWRT_STATE_DIR, "{node}");
    }
    // The receiver's /tmp is a tmpfs, its /etc and state dir are not.
    assert_eq!(
        seen_by_receiver(&lab, &["stat", "-f", "-c", "%T"], "/tmp").trim(),
        "tmpfs"
    );
    assert_ne!(
        seen_by_receiver(&lab, &["stat", "-f", "-c", "%T"], "/etc/ns-ha").trim(),
        "tmpfs"
    );

    lab.write("fw1", "/etc/config/firewall", "config defaults\n");
    lab.write(
        "fw1",
        "/tmp/dhcp.leases",
        "1700000000 02:00:00:00:00:01 10.99.1.10 host1 *\n",
    );
    let out = sync(&lab, "fw1", &["--json", "push"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(lab.read("fw2", "/etc/config/firewall"), "config defaults\n");
    assert_eq!(
        seen_by_receiver(&lab, &["cat"], "/tmp/dhcp.leases"),
        "1700000000 02:00:00:00:00:01 10.99.1.10 host1 *\n"
    );
    assert!(
        !lab.path("fw2", "/tmp/dhcp.leases").exists(),
        "the leases went to the disk, not to fw2's tmpfs"
    );
    let g = generation(&lab, "fw2");

    // Both change again in one generation: applied whole, no staging left.
    lab.write("fw1", "/etc/config/firewall", "config defaults v2\n");
    lab.write(
        "fw1",
        "/tmp/dhcp.leases",
        "1700000100 02:00:00:00:00:02 10.99.1.11 host2 *\n",
    );
    sync_ok(&lab, "fw1", &["push"]);
    assert_eq!(generation(&lab, "fw2"), g + 1);
    assert_eq!(
        lab.read("fw2", "/etc/config/firewall"),
        "config defaults v2\n"
    );
    assert_eq!(
        seen_by_receiver(&lab, &["cat"], "/tmp/dhcp.leases"),
        "1700000100 02:00:00:00:00:02 10.99.1.11 host2 *\n"
    );
    assert_eq!(
        seen_by_receiver(&lab, &["ls", "-A"], "/tmp").trim(),
        "dhcp.leases"
    );
    assert!(!lab
        .path("fw2", &format!("{OPENWRT_STATE_DIR}/staging"))
        .exists());

    // check: the state dir is on persistent storage.
    let out = tool(&lab, "fw2", "ns-ha-init", &["--json", "check"]);
    let doc = json(&out);
    let state_check = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["check"]
                .as_str()
                .unwrap_or("")
                .starts_with("sync state dir")
        })
        .unwrap_or_else(|| panic!("no state dir check: {doc}"))
        .clone();
    assert_eq!(state_check["ok"], true, "{state_check}");
}

#[test]
fn a_sigkilled_push_is_recorded_with_its_generation_and_size_by_the_next_run() {
    let lab = paired_lab();
    sync_ok(&lab, "fw1", &["push"]);
    let g = generation(&lab, "fw2");
    lab.write("fw1", "/etc/acme/big.bin", vec![b'x'; 8 << 20]);
    lab.write(
        "fw1",
        "/etc/config/firewall",
        "config defaults\n\toption input REJECT\n",
    );
    let exe = lab.bin("ns-ha-sync");
    let root = lab.root("fw1");
    // The sender kills itself (SIGKILL) halfway through the big file.
    let out = lab.exec(
        "fw1",
        &[
            "env",
            "NS_HA_SYNC_CRASH_AT=file-half",
            exe.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
            "push",
        ],
    );
    assert!(
        !out.status.success(),
        "the push was not killed: {}",
        describe(&out)
    );

    // Found by the next run (here: status).
    let st = json(&sync(&lab, "fw1", &["--json", "status"]));
    let last = &st["node"]["last_attempt"];
    assert_eq!(last["ok"], false, "{st}");
    assert_eq!(last["interrupted"], true, "{st}");
    assert_eq!(last["generation"].as_u64(), Some(g + 1), "{st}");
    assert!(
        last["bytes"].as_u64().unwrap_or(0) >= 8 << 20,
        "the announced size: {st}"
    );
    assert!(
        last["error"].as_str().unwrap_or("").contains("interrupted"),
        "{st}"
    );
    // The backup recorded its side: the sender went away, generation g+1, nothing applied.
    let peer_last = &st["peer"]["last_attempt"];
    assert_eq!(peer_last["ok"], false, "{st}");
    assert_eq!(peer_last["generation"].as_u64(), Some(g + 1), "{st}");
    assert_eq!(st["peer"]["generation"].as_u64(), Some(g), "{st}");

    // The next push succeeds; the interrupted one stays on record.
    sync_ok(&lab, "fw1", &["push"]);
    let st = json(&sync(&lab, "fw1", &["--json", "status", "--local"]));
    assert_eq!(st["node"]["last_attempt"]["ok"], true, "{st}");
    assert_eq!(st["node"]["last_failure"]["interrupted"], true, "{st}");
    assert_eq!(generation(&lab, "fw2"), g + 1);
}

#[test]
fn a_backup_edit_is_reported_by_doctor_at_once_and_by_push_within_the_recheck_bound() {
    let lab = paired_lab();
    // A short bound so the test does not wait a minute: only the primary's value counts.
    let path = lab.path("fw1", "/etc/ns-ha/cluster.json");
    let mut cluster: Value =
        serde_json::from_str(&lab.read("fw1", "/etc/ns-ha/cluster.json")).unwrap();
    cluster["sync"]["peer_recheck_secs"] = 3.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&cluster).unwrap()).unwrap();
    sync_ok(&lab, "fw1", &["push", "--recheck"]);

    lab.write(
        "fw2",
        "/etc/config/dhcp",
        "config dnsmasq\n# edited on fw2\n",
    );
    let edited = Instant::now();
    // doctor asks the backup: reported at once.
    let out = tool(&lab, "fw1", "ns-ha-check", &["--json", "doctor"]);
    let doc = json(&out);
    let drift = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "backup drift")
        .unwrap_or_else(|| panic!("no drift finding: {doc}"))
        .clone();
    assert_eq!(drift["severity"], "problem", "{drift}");
    assert!(
        drift["detail"]
            .as_str()
            .unwrap()
            .contains("/etc/config/dhcp"),
        "{drift}"
    );

    // push: the fast no-op until the bound, then the backup is asked. The
    // bound runs from the last push that asked (before the edit), so the
    // reporting push starts at most 3 s + one poll (0.2 s + a quiet push)
    // after the edit.
    let mut reported = None;
    let mut quiet = 0;
    let mut recheck_ms = 0;
    while edited.elapsed() < Duration::from_secs(3 + 3) {
        let started = edited.elapsed();
        let t = Instant::now();
        let out = sync(&lab, "fw1", &["--json", "push"]);
        let doc = json(&out);
        if doc["noop"] == true {
            quiet += 1;
        } else {
            assert_eq!(code(&out), 8, "{}", describe(&out));
            assert_eq!(doc["kept"][0], "/etc/config/dhcp", "{doc}");
            recheck_ms = t.elapsed().as_millis();
            reported = Some(started);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let reported = reported.expect("push did not report the backup edit within the bound");
    assert!(quiet > 0, "no fast no-op before the recheck");
    assert!(
        reported <= Duration::from_millis(3_000 + 600),
        "the reporting push started {reported:?} after the edit"
    );
    println!("backup edit reported by the push started {reported:?} after it (bound 3 s), recheck push {recheck_ms} ms, {quiet} quiet pushes before");
}

#[test]
fn a_backup_holding_the_vips_refuses_a_push_unless_forced() {
    let lab = paired_lab();
    // fw2 takes the LAN VIP as if it were MASTER (keepalived on fw1 keeps its own).
    let vip = format!("{}/24", net::LAN_VIP);
    lab.exec_ok("fw2", &["ip", "addr", "add", &vip, "dev", net::LAN_IF]);
    lab.write(
        "fw1",
        "/etc/config/firewall",
        "config defaults\n\toption input REJECT\n",
    );
    let g = generation(&lab, "fw2");
    let out = sync(&lab, "fw1", &["push"]);
    assert_eq!(code(&out), 5, "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(net::LAN_VIP) && err.contains("--even-if-backup-is-master"),
        "{err}"
    );
    assert_eq!(generation(&lab, "fw2"), g, "applied anyway");

    sync_ok(&lab, "fw1", &["push", "--even-if-backup-is-master"]);
    assert_eq!(generation(&lab, "fw2"), g + 1);
    lab.exec_ok("fw2", &["ip", "addr", "del", &vip, "dev", net::LAN_IF]);
}
