//! Pairing the lab's two firewalls with the product's own tools.
//!
//! Most end-to-end tests start from "a paired, enabled cluster with fw1 as
//! MASTER". This module gets there the way an administrator does, with
//! `ns-ha-init` only, so every such test also exercises pairing.

use std::process::Output;
use std::time::Duration;

use crate::{net, wait_until, Lab};
use serde_json::Value;

/// Run an ns-ha tool on a firewall against that firewall's node root.
pub fn tool(lab: &Lab, node: &str, name: &str, args: &[&str]) -> Output {
    let exe = lab.bin(name);
    let root = lab.root(node);
    let mut argv = vec![
        exe.to_str().expect("utf-8 path"),
        "--root",
        root.to_str().expect("utf-8 path"),
    ];
    argv.extend_from_slice(args);
    lab.exec(node, &argv)
}

/// Like [`tool`], panicking with stdout and stderr unless it exits 0; returns stdout.
pub fn tool_ok(lab: &Lab, node: &str, name: &str, args: &[&str]) -> String {
    let out = tool(lab, node, name, args);
    assert!(
        out.status.success(),
        "[{node}] {name} {args:?} failed ({}):\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ns-ha-init` on a firewall.
pub fn init(lab: &Lab, node: &str, args: &[&str]) -> Output {
    tool(lab, node, "ns-ha-init", args)
}

/// `ns-ha-init` on a firewall, which must succeed; returns stdout.
pub fn init_ok(lab: &Lab, node: &str, args: &[&str]) -> String {
    tool_ok(lab, node, "ns-ha-init", args)
}

fn json_field(stdout: &str, field: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no '{field}' in {stdout}"))
        .to_string()
}

/// Initialize fw1 as primary and fw2 as backup and pin fw2's host key.
pub fn pair_only(lab: &Lab) {
    pair_only_with(lab, &[]);
}

/// [`pair_only`] with `init_args` added to both `init-primary` and
/// `init-backup` (e.g. `--interface-manager ifupdown`).
pub fn pair_only_with(lab: &Lab, init_args: &[&str]) {
    let mut primary = vec![
        "--json",
        "init-primary",
        "--ha-interface",
        net::HA_IF,
        "--peer",
        net::FW2_HA,
    ];
    primary.extend_from_slice(init_args);
    let out = init_ok(lab, "fw1", &primary);
    let key = json_field(&out, "public_key");
    let mut backup = vec![
        "--json",
        "init-backup",
        "--ha-interface",
        net::HA_IF,
        "--peer",
        net::FW1_HA,
        "--primary-key",
        &key,
    ];
    backup.extend_from_slice(init_args);
    let out = init_ok(lab, "fw2", &backup);
    let fp = json_field(&out, "host_key_fingerprint");
    init_ok(lab, "fw1", &["pair", "--host-key-fingerprint", &fp]);
}

/// Pair and add the LAN (VIP .254) and the WAN (VIP .254), not enabled yet.
pub fn pair_with_lans(lab: &Lab) {
    pair_only(lab);
    let lan_vip = format!("{}/24", net::LAN_VIP);
    let wan_vip = format!("{}/24", net::WAN_VIP);
    init_ok(
        lab,
        "fw1",
        &["add-lan", "--interface", net::LAN_IF, "--vip", &lan_vip],
    );
    init_ok(
        lab,
        "fw1",
        &["add-lan", "--interface", net::WAN_IF, "--vip", &wan_vip],
    );
}

/// Pair, add the LAN (VIP .254) and the WAN (VIP .254) and enable; waits
/// until fw1 holds the LAN VIP and fw2 does not.
pub fn pair(lab: &Lab) {
    pair_with_lans(lab);
    init_ok(lab, "fw1", &["enable"]);
    assert!(
        lab.wait_holders(net::LAN_VIP, &["fw1"], Duration::from_secs(15))
            && lab.wait_holders(net::WAN_VIP, &["fw1"], Duration::from_secs(5)),
        "fw1 did not become MASTER: LAN VIP holders {:?}",
        lab.holders(net::LAN_VIP)
    );
}

/// `ns-ha-role status --json` of a firewall, with a long history.
pub fn role_status(lab: &Lab, node: &str) -> Value {
    let out = tool_ok(
        lab,
        node,
        "ns-ha-role",
        &["--json", "status", "--history", "50"],
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON: {e}: {out}"))
}

/// Wait until `node`'s role engine has applied `label` with no recorded event
/// left to handle.
pub fn role_settled(lab: &Lab, node: &str, label: &str, limit: Duration) -> bool {
    wait_until(limit, Duration::from_millis(100), || {
        let s = role_status(lab, node);
        let events: u64 = std::fs::read_to_string(lab.path(node, "/run/ns-ha/role/events.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["seq"].as_u64())
            .unwrap_or(0);
        s["applied"]["label"] == label && s["applied"]["handled_seq"].as_u64() == Some(events)
    })
}

/// Give both firewalls a minimal dnsmasq config (DNS on the LAN VIP only):
/// the default master role starts dnsmasq, and without its config `doctor`
/// rightly reports the failed start.
pub fn configure_dnsmasq(lab: &Lab) {
    for fw in crate::FIREWALLS {
        lab.write(
            fw,
            "/etc/dnsmasq.conf",
            format!(
                "interface={}\nlisten-address={}\nbind-dynamic\nexcept-interface=lo\nno-hosts\nport=53\n",
                net::LAN_IF,
                net::LAN_VIP
            ),
        );
    }
}
