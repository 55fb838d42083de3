//! ns-ha-check and ns-ha-vip against the real daemons: status and VIP
//! views on both nodes, who answers ARP for the VIP, doctor clean and then
//! catching a hand-edited keepalived.conf, a gratuitous ARP that fixes a
//! client's stale cache, health failing on a downed LAN, and status
//! following a failover after the primary is lost.

use serde_json::Value;
use std::process::Output;
use std::time::Duration;

use ns_ha_tests::cluster::{configure_dnsmasq, pair, tool, tool_ok};
use ns_ha_tests::{net, wait_until, Lab};

fn json(out: &str) -> Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn status(lab: &Lab, node: &str) -> Value {
    json(&tool_ok(lab, node, "ns-ha-check", &["--json", "status"]))
}

/// The MAC of an interface in a lab namespace.
fn mac(lab: &Lab, node: &str, iface: &str) -> String {
    let v = json(&lab.exec_ok(node, &["ip", "-json", "link", "show", "dev", iface]));
    v[0]["address"]
        .as_str()
        .expect("address")
        .to_ascii_lowercase()
}

/// The client's ARP entry for `addr`: `(lladdr, state)` from `ip neigh`.
fn client_neigh(lab: &Lab, addr: &str) -> Option<String> {
    let out = lab.exec_ok("lan", &["ip", "-json", "neigh", "show", addr]);
    json(&out)[0]["lladdr"]
        .as_str()
        .map(str::to_ascii_lowercase)
}

#[test]
fn check_and_vip_tools_follow_the_pair() {
    let lab = Lab::up();
    // The default master role starts dnsmasq: give it a config (DNS on the
    // VIP only), or doctor rightly reports its failed start.
    configure_dnsmasq(&lab);
    pair(&lab);
    let fw1_mac = mac(&lab, "fw1", net::LAN_IF);

    // status: fw1 is the MASTER primary, fw2 the BACKUP backup.
    let s1 = status(&lab, "fw1");
    assert_eq!(s1["node_role"], "primary", "{s1}");
    assert_eq!(s1["vrrp_state"], "MASTER", "{s1}");
    assert_eq!(s1["keepalived_running"], true, "{s1}");
    assert_eq!(s1["enabled"], true, "{s1}");
    let s2 = status(&lab, "fw2");
    assert_eq!(s2["node_role"], "backup", "{s2}");
    assert_eq!(s2["vrrp_state"], "BACKUP", "{s2}");
    assert_eq!(s1["cluster_id"], s2["cluster_id"]);
    let human = tool_ok(&lab, "fw1", "ns-ha-check", &["status"]);
    assert!(human.contains("MASTER"), "{human}");

    // list: held only on fw1 (LAN, WAN and heartbeat VIPs).
    for (node, held) in [("fw1", true), ("fw2", false)] {
        let l = json(&tool_ok(&lab, node, "ns-ha-vip", &["--json", "list"]));
        let vips = l["vips"].as_array().expect("vips");
        assert_eq!(vips.len(), 3, "{l}");
        assert!(vips.iter().all(|v| v["held"] == held), "[{node}] {l}");
        assert!(vips
            .iter()
            .any(|v| v["vip"] == "10.99.1.254/24" && v["interface"] == "lan0"));
    }

    // who-holds from fw2: a real ARP request answered by fw1's lan0.
    let w = json(&tool_ok(
        &lab,
        "fw2",
        "ns-ha-vip",
        &["--json", "who-holds", net::LAN_VIP],
    ));
    assert_eq!(w["holder"], "remote", "{w}");
    assert_eq!(w["mac"], fw1_mac.as_str(), "{w}");
    assert_eq!(w["held_here"], false, "{w}");
    let line = tool_ok(&lab, "fw2", "ns-ha-vip", &["who-holds", net::LAN_VIP]);
    assert_eq!(line.trim(), format!("remote {fw1_mac}"));
    let line = tool_ok(&lab, "fw1", "ns-ha-vip", &["who-holds", net::LAN_VIP]);
    assert_eq!(line.trim(), "local");

    // doctor: clean after pairing (it asks the backup over SSH too).
    let out = tool(&lab, "fw1", "ns-ha-check", &["doctor"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // announce: a client whose cache points elsewhere learns fw1's MAC again.
    lab.exec_ok(
        "lan",
        &[
            "ip",
            "neigh",
            "replace",
            net::LAN_VIP,
            "lladdr",
            "02:00:00:00:00:99",
            "dev",
            "eth0",
            "nud",
            "stale",
        ],
    );
    assert_eq!(
        client_neigh(&lab, net::LAN_VIP).as_deref(),
        Some("02:00:00:00:00:99")
    );
    let out = tool(&lab, "fw1", "ns-ha-vip", &["announce"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        wait_until(Duration::from_secs(3), Duration::from_millis(50), || {
            client_neigh(&lab, net::LAN_VIP).as_deref() == Some(fw1_mac.as_str())
        }),
        "client's ARP entry after announce: {:?}, fw1 is {fw1_mac}",
        client_neigh(&lab, net::LAN_VIP)
    );
    let out = tool(
        &lab,
        "fw1",
        "ns-ha-vip",
        &["announce", "--interface", "eth9"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));

    // doctor: a hand-edited keepalived.conf is a problem with its fix.
    let conf = "/etc/keepalived/keepalived.conf";
    let good = lab.read("fw1", conf);
    lab.write("fw1", conf, format!("{good}# edited by hand\n"));
    let out = tool(&lab, "fw1", "ns-ha-check", &["doctor"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(10), "{shown}");
    assert!(
        shown.contains("keepalived.conf") && shown.contains("ns-ha-init enable"),
        "{shown}"
    );
    lab.write("fw1", conf, good);

    // health: fine, then unhealthy with the reason once lan0 is down.
    tool_ok(&lab, "fw1", "ns-ha-check", &["health", "--track-file"]);
    assert_eq!(lab.read("fw1", "/run/ns-ha/health.track"), "0\n");
    lab.link_down("fw1", net::LAN_IF);
    let out = tool(&lab, "fw1", "ns-ha-check", &["health", "--track-file"]);
    assert_eq!(out.status.code(), Some(10), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lan0 is down"),
        "{}",
        text(&out)
    );
    assert_eq!(lab.read("fw1", "/run/ns-ha/health.track"), "1\n");
    lab.link_up("fw1", net::LAN_IF);
    assert!(
        lab.wait_holders(net::LAN_VIP, &["fw1"], Duration::from_secs(15)),
        "fw1 did not take the VIPs back: {:?}",
        lab.holders(net::LAN_VIP)
    );

    // The primary is lost: fw2's status follows.
    lab.crash("fw1");
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            status(&lab, "fw2")["vrrp_state"] == "MASTER"
        }),
        "fw2 status after fw1 was lost: {}",
        status(&lab, "fw2")
    );
    let s2 = status(&lab, "fw2");
    assert_eq!(s2["node_role"], "backup", "{s2}");
    assert!(
        s2["vips"]
            .as_array()
            .expect("vips")
            .iter()
            .all(|v| v["held"] == true),
        "{s2}"
    );
}
