//! The surviving node says the primary is gone (issue 13 item 2): after fw1
//! crashes, fw2's `ns-ha-check status` and `doctor` say that the primary
//! does not answer (no VRRP advert on any link, its sshd silent), since
//! when, and that fw2 is MASTER because of it. Before the crash they say
//! the primary answers.

use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ns_ha_tests::cluster::{configure_dnsmasq, pair, tool, tool_ok};
use ns_ha_tests::{net, wait_until, Lab};

fn json(out: &str) -> Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn peer(lab: &Lab, node: &str) -> Value {
    json(&tool_ok(lab, node, "ns-ha-check", &["--json", "status"]))["peer"].clone()
}

fn interfaces(p: &Value) -> Vec<String> {
    p["links"]
        .as_array()
        .expect("links")
        .iter()
        .map(|l| l["interface"].as_str().expect("interface").to_string())
        .collect()
}

#[test]
fn the_backup_says_the_primary_is_gone_and_why_it_is_master() {
    let lab = Lab::up();
    configure_dnsmasq(&lab);
    pair(&lab);

    // Both nodes up: fw2 hears fw1's adverts on every link and reaches its sshd.
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            peer(&lab, "fw2")["links"]
                .as_array()
                .is_some_and(|l| l.iter().all(|x| x["adverts_heard"] == true))
        }),
        "fw2 does not hear fw1: {}",
        peer(&lab, "fw2")
    );
    let p = peer(&lab, "fw2");
    assert_eq!(p["role"], "primary", "{p}");
    assert_eq!(p["address"], net::FW1_HA, "{p}");
    assert_eq!(p["answers"], true, "{p}");
    assert_eq!(p["ssh_answers"], true, "{p}");
    assert_eq!(p["master_because_peer_silent"], false, "{p}");
    assert_eq!(interfaces(&p), ["ha0", "lan0", "wan0"], "{p}");
    let out = tool(&lab, "fw2", "ns-ha-check", &["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("ok       peer             primary 10.99.0.1 answers: VRRP adverts heard on ha0, lan0, wan0"),
        "{text}"
    );
    assert!(!text.contains("checked from the primary"), "{text}");
    // fw1 says fw2 answers (SSH), and is not MASTER because of anything.
    let p1 = peer(&lab, "fw1");
    assert_eq!(p1["answers"], true, "{p1}");
    assert_eq!(p1["master_because_peer_silent"], false, "{p1}");

    // fw1 dies.
    let crashed_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    lab.crash("fw1");
    // (A crashed keepalived leaves its VIPs on fw1: only fw2's side counts.)
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            lab.has_addr("fw2", net::LAN_VIP)
        }),
        "fw2 did not take the VIP: {:?}",
        lab.holders(net::LAN_VIP)
    );
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            peer(&lab, "fw2")["master_because_peer_silent"] == true
        }),
        "fw2 status after fw1 died: {}",
        peer(&lab, "fw2")
    );
    let p = peer(&lab, "fw2");
    assert_eq!(p["answers"], false, "{p}");
    assert_eq!(p["ssh_answers"], false, "{p}");
    assert!(
        p["ssh_error"]
            .as_str()
            .is_some_and(|e| e.contains("10.99.0.1:22")),
        "{p}"
    );
    assert!(
        p["links"]
            .as_array()
            .expect("links")
            .iter()
            .all(|l| l["adverts_heard"] == false && l["state"] == "MASTER"),
        "{p}"
    );
    let since = p["silent_since_ms"].as_u64().expect("silent_since_ms");
    assert!(
        since >= crashed_ms && since < crashed_ms + 10_000,
        "silent since {since}, crashed at {crashed_ms}: {p}"
    );
    let human = tool_ok(&lab, "fw2", "ns-ha-check", &["status"]);
    let line = human
        .lines()
        .find(|l| l.starts_with("peer:"))
        .unwrap_or_else(|| panic!("no peer line: {human}"));
    assert!(
        line.contains("primary 10.99.0.1 does not answer since ")
            && line.contains("no VRRP advert on ha0, lan0, wan0")
            && line.ends_with("this node is MASTER because of it"),
        "{line}"
    );

    // doctor on fw2: the lost primary is a problem with its fix, not "skipped".
    let out = tool(&lab, "fw2", "ns-ha-check", &["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(10), "{text}");
    assert!(
        text.contains("PROBLEM  peer             primary 10.99.0.1 does not answer since ")
            && text.contains("this node is MASTER because of it")
            && text.contains("fix: bring the primary back"),
        "{text}"
    );
    assert!(!text.contains("checked from the primary"), "{text}");
    let out = tool(&lab, "fw2", "ns-ha-check", &["--json", "doctor"]);
    let d = json(&String::from_utf8_lossy(&out.stdout));
    let f = d["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["check"] == "peer")
        .cloned()
        .expect("peer finding");
    assert_eq!(f["severity"], "problem", "{d}");
}

/// The other side (issue 13 item 2, "on either node"): after fw2 dies, fw1's
/// status and doctor say the backup does not answer (the primary reads the
/// backup over SSH only: a backup sends no VRRP advert), and fw1 stays
/// MASTER without claiming a reason it does not have.
#[test]
fn the_primary_says_the_backup_is_gone() {
    let lab = Lab::up();
    configure_dnsmasq(&lab);
    pair(&lab);
    let p = peer(&lab, "fw1");
    assert_eq!(p["role"], "backup", "{p}");
    assert_eq!(p["address"], net::FW2_HA, "{p}");
    assert_eq!(p["answers"], true, "{p}");

    lab.crash("fw2");
    assert!(
        wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
            peer(&lab, "fw1")["ssh_answers"] == false
        }),
        "fw1 still says fw2 answers: {}",
        peer(&lab, "fw1")
    );
    let p = peer(&lab, "fw1");
    assert_eq!(p["answers"], false, "{p}");
    assert_eq!(p["master_because_peer_silent"], false, "{p}");
    assert!(
        p["ssh_error"]
            .as_str()
            .is_some_and(|e| e.contains("10.99.0.2:22")),
        "{p}"
    );
    let human = tool_ok(&lab, "fw1", "ns-ha-check", &["status"]);
    let line = human
        .lines()
        .find(|l| l.starts_with("peer:"))
        .unwrap_or_else(|| panic!("no peer line: {human}"));
    assert!(
        line.contains("backup 10.99.0.2 does not answer: SSH ") && line.contains("10.99.0.2:22"),
        "{line}"
    );
    let out = tool(&lab, "fw1", "ns-ha-check", &["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(10), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("PROBLEM  peer") && l.contains("10.99.0.2:22")),
        "{text}"
    );
    assert!(text.contains("skipped  backup drift"), "{text}");
    assert!(lab.has_addr("fw1", net::LAN_VIP), "fw1 must keep the VIP");
}
