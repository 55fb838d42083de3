//! Issue 2 acceptance: bad input to ns-ha-init gets a clear one-line error,
//! a non-zero exit code from the shared table, and leaves both nodes' files
//! exactly as they were.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use ns_ha_tests::cluster::{init, pair};
use ns_ha_tests::{net, Lab};

/// Every file under the nodes' /etc and /root with its contents, but the
/// sync's own state dir (under /etc on the OpenWrt layout): the new master's
/// role engine pushes in the background after `enable`, on its own schedule.
fn snapshot(lab: &Lab) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for fw in ["fw1", "fw2"] {
        // The OpenWrt layout's sync state dir (common::platform).
        let state_dir = lab.path(fw, "/etc/ns-ha-sync");
        for top in ["etc", "root"] {
            walk(&lab.root(fw).join(top), &mut |p| {
                if p.starts_with(&state_dir) {
                    return;
                }
                files.insert(
                    p.display().to_string(),
                    std::fs::read(p).unwrap_or_default(),
                );
            });
        }
    }
    files
}

fn walk(dir: &Path, f: &mut impl FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, f);
        } else {
            f(&p);
        }
    }
}

/// The command failed with `code`, printed one line on stderr naming `needle`, and changed nothing.
fn assert_refused(lab: &Lab, what: &str, code: i32, needle: &str, run: impl FnOnce() -> Output) {
    let before = snapshot(lab);
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: exit code, stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("ns-ha-init:"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected one error line, got: {stderr}"
    );
    assert!(
        lines[0].contains(needle),
        "{what}: error does not mention '{needle}': {}",
        lines[0]
    );
    let after = snapshot(lab);
    let changed: Vec<&String> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .map(|(k, _)| k)
        .chain(before.keys().filter(|k| !after.contains_key(*k)))
        .collect();
    assert!(changed.is_empty(), "{what}: files changed: {changed:?}");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let lab = Lab::up();
    pair(&lab);
    let add = |iface: &str, vip: &str| {
        init(
            &lab,
            "fw1",
            &["add-vip", "--interface", iface, "--vip", vip],
        )
    };

    assert_refused(
        &lab,
        "VIP outside the subnet",
        3,
        "not a host address",
        || add(net::LAN_IF, "10.99.7.1/24"),
    );
    assert_refused(&lab, "VIP without prefix", 3, "10.99.1.250", || {
        add(net::LAN_IF, "10.99.1.250")
    });
    assert_refused(&lab, "IPv6 VIP", 3, "IPv6", || {
        add(net::LAN_IF, "fd00::1/64")
    });
    assert_refused(
        &lab,
        "VIP equal to a node address",
        3,
        "node's own address",
        || add(net::LAN_IF, "10.99.1.2/24"),
    );
    assert_refused(&lab, "unknown interface", 3, "nope0", || {
        init(
            &lab,
            "fw1",
            &["add-lan", "--interface", "nope0", "--vip", "10.99.5.1/24"],
        )
    });
    assert_refused(&lab, "interface name too long", 3, "at most 12", || {
        init(&lab, "fw1", &["add-lan", "--interface", "averylongname0"])
    });
    assert_refused(&lab, "bond name with rename hint", 3, "b0.20", || {
        init(&lab, "fw1", &["add-lan", "--interface", "bond-bond0.20"])
    });

    // Peer unreachable: the backup's SSH server is down.
    lab.stop_ssh_server("fw2");
    assert_refused(&lab, "peer unreachable", 6, "does not answer", || {
        add(net::LAN_IF, "10.99.1.253/24")
    });
    lab.start_ssh_server("fw2");

    // Pinned host key mismatch: the backup got a new host key.
    let saved = lab.new_host_key("fw2");
    lab.stop_ssh_server("fw2");
    lab.start_ssh_server("fw2");
    assert_refused(&lab, "host key mismatch", 7, "host key", || {
        add(net::LAN_IF, "10.99.1.253/24")
    });
    lab.restore_files(&saved);
    lab.stop_ssh_server("fw2");
    lab.start_ssh_server("fw2");

    // Malformed and unknown-field cluster config on the primary.
    let cfg = lab.root("fw1").join("etc/ns-ha/cluster.json");
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, "{ \"schema_version\": 1, ").unwrap();
    assert_refused(&lab, "malformed cluster config", 4, "cluster.json", || {
        add(net::LAN_IF, "10.99.1.253/24")
    });
    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v["vrrp"]["advert_intervall_ms"] = 100.into();
    std::fs::write(&cfg, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    assert_refused(&lab, "unknown field", 4, "advert_intervall_ms", || {
        init(&lab, "fw1", &["show-config"])
    });
    std::fs::write(&cfg, good).unwrap();

    // After all that, a good edit still works end to end.
    let out = add(net::LAN_IF, "10.99.1.253/24");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(lab
        .read("fw2", "etc/keepalived/keepalived.conf")
        .contains("10.99.1.253/24"));
}
