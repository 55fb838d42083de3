//! ns-ha-init beyond pairing, against the real daemons: pre-flight `check`,
//! VIP and interface removal, disable/enable, and `reset` on both nodes
//! followed by a fresh pairing.

use std::time::Duration;

use ns_ha_tests::cluster::{init, init_ok, pair, pair_only, tool_ok};
use ns_ha_tests::{net, Lab, SshServer};

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

#[test]
fn check_reports_each_problem_with_its_fix() {
    let lab = Lab::up();
    let planned = [
        "check",
        "--role",
        "primary",
        "--ha-interface",
        net::HA_IF,
        "--peer",
        net::FW2_HA,
        "--lan",
        "lan0=10.99.1.254/24",
    ];
    // fw1 has dnsmasq installed but not configured: the MASTER role would fail to start it.
    let out = init(&lab, "fw1", &planned);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), Some(4), "{text}");
    assert!(
        text.contains("FAIL  master-only service dnsmasq:") && text.contains("/etc/dnsmasq.conf"),
        "{text}"
    );
    lab.write("fw1", "/etc/dnsmasq.conf", "interface=lan0\nbind-dynamic\n");
    let ok = init_ok(&lab, "fw1", &planned);
    assert!(ok.contains("0 failed"), "{ok}");
    assert!(ok.contains("peer 10.99.0.2 SSH: SSH-2.0-"), "{ok}");

    let bad = init(
        &lab,
        "fw1",
        &[
            "check",
            "--ha-interface",
            "lan0x",
            "--peer",
            "10.99.0.9",
            "--lan",
            "lan0=10.99.7.1/24",
        ],
    );
    let text = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(code(&bad), Some(3), "{text}");
    assert!(
        text.contains("FAIL  HA interface lan0x: HA interface lan0x does not exist"),
        "{text}"
    );
    assert!(text.contains("FAIL  VIP 10.99.7.1/24 on lan0"), "{text}");

    // The peer's SSH server is down: the SSH check fails with the peer code.
    lab.stop_ssh_server("fw2");
    let out = init(
        &lab,
        "fw1",
        &["check", "--ha-interface", net::HA_IF, "--peer", net::FW2_HA],
    );
    assert_eq!(
        code(&out),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn vips_and_interfaces_are_removed_and_ha_disabled_on_both_nodes() {
    let lab = Lab::up();
    pair(&lab);
    init_ok(&lab, "fw1", &["remove-vip", "--vip", net::WAN_VIP]);
    assert!(
        lab.wait_holders(net::WAN_VIP, &[], Duration::from_secs(10)),
        "WAN VIP still held"
    );
    assert!(!lab
        .read("fw2", "etc/keepalived/keepalived.conf")
        .contains(net::WAN_VIP));
    init_ok(
        &lab,
        "fw1",
        &["remove-interface", "--interface", net::WAN_IF],
    );
    assert!(!lab.read("fw2", "etc/ns-ha/cluster.json").contains("wan0"));
    assert!(
        lab.has_addr("fw1", net::LAN_VIP),
        "LAN VIP lost by an unrelated edit"
    );

    init_ok(&lab, "fw1", &["disable"]);
    assert!(
        lab.wait_holders(net::LAN_VIP, &[], Duration::from_secs(10)),
        "VIP held after disable"
    );
    assert!(!lab.status("fw1", "keepalived") && !lab.status("fw2", "keepalived"));
    init_ok(&lab, "fw1", &["enable"]);
    assert!(
        lab.wait_holders(net::LAN_VIP, &["fw1"], Duration::from_secs(10)),
        "fw1 is not MASTER after enable"
    );
    assert!(lab.status("fw2", "keepalived"));
}

#[test]
fn reset_nodes_can_be_paired_again_over_openssh() {
    reset_and_pair_again(SshServer::Openssh);
}

/// The same with dropbear as the SSH server: reset clears its key file (issue 11).
#[test]
fn reset_nodes_can_be_paired_again_over_dropbear() {
    reset_and_pair_again(SshServer::Dropbear);
}

fn reset_and_pair_again(server: SshServer) {
    let lab = Lab::up_with(server);
    pair(&lab);
    // A push gives the backup a generation of this cluster's: reset must
    // remove the sync state with it, wherever the platform layout keeps it.
    tool_ok(&lab, "fw1", "ns-ha-sync", &["push"]);
    let cluster: serde_json::Value =
        serde_json::from_str(&lab.read("fw2", "/etc/ns-ha/cluster.json")).unwrap();
    let sync_state = cluster["sync"]["state_dir"].as_str().unwrap().to_string();
    assert!(lab.path("fw2", &sync_state).exists(), "{sync_state}");
    let refused = init(&lab, "fw1", &["reset"]);
    assert_eq!(
        code(&refused),
        Some(2),
        "reset without --yes must be refused"
    );
    for fw in ["fw1", "fw2"] {
        init_ok(&lab, fw, &["reset", "--yes"]);
        assert!(!lab.status(fw, "keepalived"), "{fw}: keepalived still runs");
        for f in [
            "etc/ns-ha/cluster.json",
            "etc/ns-ha/node.json",
            "etc/ns-ha/id_ed25519",
            "etc/keepalived/keepalived.conf",
        ] {
            assert!(!lab.path(fw, f).exists(), "{fw}: {f} left behind");
        }
        assert!(
            !lab.path(fw, &sync_state).exists(),
            "{fw}: the old cluster's sync state {sync_state} left behind"
        );
    }
    assert!(!lab
        .read("fw2", server.authorized_keys())
        .contains("ns-ha-primary"));
    // A reset node is not part of a pair any more.
    let out = init(&lab, "fw1", &["show-config"]);
    assert_eq!(code(&out), Some(5));

    pair_only(&lab);
    init_ok(
        &lab,
        "fw1",
        &[
            "add-lan",
            "--interface",
            net::LAN_IF,
            "--vip",
            &format!("{}/24", net::LAN_VIP),
        ],
    );
    init_ok(&lab, "fw1", &["enable"]);
    assert!(
        lab.wait_holders(net::LAN_VIP, &["fw1"], Duration::from_secs(10)),
        "re-paired cluster has no MASTER"
    );
    tool_ok(&lab, "fw1", "ns-ha-sync", &["push"]);
}
