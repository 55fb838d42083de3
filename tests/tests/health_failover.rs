//! Issue 10 acceptance against real keepalived: the health monitor moves
//! the VIPs away from a master that cannot serve (silent LAN failure, WAN
//! gateway unreachable, master-only service dead), and only then: both
//! nodes unhealthy in the same way keep the master, a merely restarting
//! service moves nothing, and a node that gave up takes the VIPs back only
//! after the hold-down, once. Alerts: one per failover, and one when a
//! second host answers for the master's LAN VIP (and one when it stops).

use serde_json::json;
use std::time::{Duration, Instant};

use ns_ha_tests::cluster::{pair, tool_ok};
use ns_ha_tests::health::{
    assert_held_past_hold_down, handovers, lab_health, sample, set_health, state, timed_sample,
    wait_all_ok, Pinger, LAB_HOLD_DOWN_MS,
};
use ns_ha_tests::{net, wait_until, Lab};

const LINKS: [&str; 3] = ["interfaces", "reach:lan0", "reach:wan0"];

/// A paired lab with the health section, both monitors finding all ok.
fn healthy_lab(extra: serde_json::Value, ids: &[&str]) -> Lab {
    let lab = Lab::up();
    pair(&lab);
    set_health(&lab, &lab_health(extra));
    assert!(
        wait_all_ok(&lab, ids, Duration::from_secs(15)),
        "monitors not all ok: fw1 {} / fw2 {}",
        state(&lab, "fw1"),
        state(&lab, "fw2")
    );
    lab
}

#[test]
fn silent_lan_failure_moves_the_vips_and_the_primary_returns_after_the_hold_down() {
    let lab = healthy_lab(json!({}), &LINKS);
    let ping = Pinger::start(&lab, "lan", net::LAN_VIP);
    std::thread::sleep(Duration::from_millis(500));
    let cut = Instant::now();
    lab.cut("fw1", net::LAN_IF);
    assert!(
        lab.wait_holders(net::LAN_VIP, &["fw2"], Duration::from_secs(5)),
        "fw2 did not take the LAN VIP after fw1's LAN went silent: holders {:?}, fw1 {}",
        lab.holders(net::LAN_VIP),
        state(&lab, "fw1")
    );
    let moved = cut.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let gap = ping.stop();
    eprintln!("silent LAN failure: VIP on fw2 after {moved:?}, longest client gap {gap:.0} ms");
    assert!(gap < 1000.0, "client gap {gap:.0} ms");
    // The decision is recorded with its reason.
    let s1 = state(&lab, "fw1");
    assert!(
        s1["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["reason"].as_str().unwrap_or("").contains("reach:lan0")),
        "{s1}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&tool_ok(&lab, "fw1", "ns-ha-check", &["--json", "status"])).unwrap();
    assert_eq!(status["health"]["fit"], false, "{status}");
    assert!(status["health"]["reason"]
        .as_str()
        .unwrap()
        .contains("reach:lan0"));

    // The drop is removed: fw1 takes back only after the hold-down, once.
    let healed = Instant::now();
    lab.heal("fw1", net::LAN_IF);
    // Sample until 3 s after fw1 holds it again (at most 15 s).
    let mut samples = Vec::new();
    let mut back: Option<Instant> = None;
    while healed.elapsed() < Duration::from_secs(15) {
        let s = timed_sample(&lab, net::LAN_VIP, 1, Duration::from_millis(50)).remove(0);
        if back.is_none() && s.1.as_slice() == ["fw1"] {
            back = Some(s.0);
        }
        samples.push(s);
        if back.is_some_and(|b| b.elapsed() > Duration::from_secs(3)) {
            break;
        }
    }
    let back = back.expect("fw1 did not take the VIP back within 15 s");
    let returned = back - healed;
    assert!(
        returned >= Duration::from_millis(LAB_HOLD_DOWN_MS),
        "fw1 took the VIP back {returned:?} after the heal, before the hold-down\nfw1: {}\nfw2: {}",
        state(&lab, "fw1"),
        state(&lab, "fw2")
    );
    let h = handovers(&samples.into_iter().map(|(_, h)| h).collect::<Vec<_>>());
    assert_eq!(
        h,
        [("fw2".to_string(), "fw1".to_string())],
        "handovers back"
    );
    eprintln!("fw1 back {returned:?} after the heal (hold-down {LAB_HOLD_DOWN_MS} ms)");
}

/// Drop everything from `from` on the WAN host (its link stays up): the WAN
/// gateway stops answering that node only.
fn wan_host_ignores(lab: &Lab, from: &str) {
    let rules = format!(
        "table inet nsha_ignore {{\n chain input {{ type filter hook input priority -300; ip saddr {from} drop; }}\n}}\n"
    );
    let path = lab.dir().join("wan-ignore.nft");
    std::fs::write(&path, rules).unwrap();
    lab.exec_ok("wan", &["nft", "-f", path.to_str().unwrap()]);
}

#[test]
fn an_unreachable_wan_gateway_moves_the_vips_and_they_stay_away() {
    let lab = healthy_lab(json!({}), &LINKS);
    let t = Instant::now();
    wan_host_ignores(&lab, net::FW1_WAN);
    assert!(
        lab.wait_holders(net::WAN_VIP, &["fw2"], Duration::from_secs(5)),
        "fw2 did not take the WAN VIP: {:?}, fw1 {}",
        lab.holders(net::WAN_VIP),
        state(&lab, "fw1")
    );
    let took = t.elapsed();
    eprintln!("WAN gateway lost on fw1: fw2 holds the VIPs after {took:?}");
    assert!(took < Duration::from_secs(2), "takeover took {took:?}");
    // While fw1's gateway check fails, fw1 does not take the VIPs back,
    // well past the hold-down.
    assert_held_past_hold_down(&lab, net::LAN_VIP, "fw2", "while fw1's gateway is down");
    assert_eq!(
        state(&lab, "fw1")["checks"]["reach:wan0"]["state"],
        "failing"
    );
}

/// Both nodes' LAN links silent at once, with the client's: the switch died.
fn lan_switch_dies(lab: &Lab) {
    let mut rules = String::new();
    for port in ["fw1lan", "fw2lan", "lanhost"] {
        rules.push_str(&format!(
            "table netdev nsha_dead_{port} {{\n\
             chain ingress {{ type filter hook ingress device \"{port}\" priority -500; policy drop; }}\n\
             chain egress {{ type filter hook egress device \"{port}\" priority -500; policy drop; }}\n}}\n"
        ));
    }
    let path = lab.dir().join("lan-dead.nft");
    std::fs::write(&path, rules).unwrap();
    lab.exec_ok("sw", &["nft", "-f", path.to_str().unwrap()]);
}

#[test]
fn both_nodes_losing_the_lan_keep_the_master() {
    let secs: u64 = std::env::var("NS_HA_BOTH_LOST_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let lab = healthy_lab(json!({}), &LINKS);
    lan_switch_dies(&lab);
    let held = sample(
        &lab,
        net::WAN_VIP,
        (secs * 10) as usize,
        Duration::from_millis(100),
    );
    let moved: Vec<_> = held.iter().filter(|h| h.as_slice() != ["fw1"]).collect();
    assert!(
        moved.is_empty(),
        "{} of {} samples in {secs} s with the VIP not on fw1 alone: {moved:?}",
        moved.len(),
        held.len()
    );
    // Both saw it, and neither decided to move.
    for fw in ["fw1", "fw2"] {
        assert_eq!(state(&lab, fw)["checks"]["reach:lan0"]["state"], "failing");
    }
    let s1 = state(&lab, "fw1");
    let s2 = state(&lab, "fw2");
    assert!(
        s1["priority"].as_u64() > s2["priority"].as_u64(),
        "fw1 {s1} fw2 {s2}"
    );
    eprintln!(
        "LAN switch dead for {secs} s: VIPs stayed on fw1 (priorities {} / {})",
        s1["priority"], s2["priority"]
    );
}

#[test]
fn a_dead_master_service_moves_the_vips_a_restart_does_not() {
    let service = json!({"services": [{"name": "dnsmasq", "process": "dnsmasq",
                                        "dns": format!("{}:53", net::LAN_VIP)}]});
    let lab = Lab::up();
    ns_ha_tests::cluster::configure_dnsmasq(&lab);
    pair(&lab);
    set_health(&lab, &lab_health(service));
    let mut ids = LINKS.to_vec();
    ids.push("service:dnsmasq");
    assert!(
        wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
            state(&lab, "fw1")["checks"]["service:dnsmasq"]["state"] == "ok"
        }),
        "dnsmasq check not ok on fw1: {}",
        state(&lab, "fw1")
    );
    // A restart: nothing moves.
    let out = lab.service("fw1", "dnsmasq", "restart");
    assert!(out.status.success());
    let held = sample(&lab, net::LAN_VIP, 40, Duration::from_millis(100));
    assert!(
        held.iter().all(|h| h.as_slice() == ["fw1"]),
        "a dnsmasq restart moved the VIPs: {held:?}"
    );
    // Dead, and its restart fails (no config): fw2 takes over.
    lab.sh_ok(
        "fw1",
        &format!(
            "mv {r}/etc/dnsmasq.conf {r}/etc/dnsmasq.conf.off && kill -9 $(cat {r}/run/dnsmasq.pid)",
            r = lab.root("fw1").display()
        ),
    );
    let t = Instant::now();
    assert!(
        lab.wait_holders(net::LAN_VIP, &["fw2"], Duration::from_secs(10)),
        "fw2 did not take over from a dnsmasq-less fw1: {}",
        state(&lab, "fw1")
    );
    eprintln!(
        "dnsmasq dead on fw1: fw2 holds the VIPs after {:?}",
        t.elapsed()
    );
    // fw1 cannot prove dnsmasq fixed as backup: it stays away.
    let held = sample(
        &lab,
        net::LAN_VIP,
        ((LAB_HOLD_DOWN_MS + 2_000) / 100) as usize,
        Duration::from_millis(100),
    );
    assert!(held.iter().all(|h| h.as_slice() == ["fw2"]), "{held:?}");
}

/// Install an alert hook on both nodes that appends each event to
/// `/var/log/alerts.jsonl`, and configure it.
fn install_alert_hook(lab: &Lab) {
    let hook = "/usr/local/sbin/ns-ha-lab-alert";
    for fw in ["fw1", "fw2"] {
        let log = lab.path(fw, "/var/log/alerts.jsonl");
        lab.write(fw, hook, format!("#!/bin/sh\ncat >>{}\n", log.display()));
        std::fs::set_permissions(
            lab.path(fw, hook),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
    }
    // The hook path is a node path: each node's monitor runs its own.
    set_health(lab, &lab_health(json!({ "alert_hook": hook })));
}

/// The events the hook of `fw` received so far.
fn alerts(lab: &Lab, fw: &str) -> Vec<serde_json::Value> {
    { std::fs::read_to_string(lab.path(fw, "/var/log/alerts.jsonl")).unwrap_or_default() }
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON document per hook run"))
        .collect()
}

#[test]
fn a_failover_runs_the_alert_hook_once() {
    let lab = Lab::up();
    pair(&lab);
    install_alert_hook(&lab);
    assert!(wait_all_ok(&lab, &LINKS, Duration::from_secs(15)));
    std::thread::sleep(Duration::from_secs(6)); // fw2 a settled BACKUP
    lab.crash("fw1");
    // A crashed keepalived leaves its VIPs configured on fw1's dead links.
    assert!(wait_until(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || lab.has_addr("fw2", net::LAN_VIP)
    ));
    std::thread::sleep(Duration::from_secs(3));
    let events: Vec<serde_json::Value> = ["fw1", "fw2"]
        .iter()
        .flat_map(|fw| alerts(&lab, fw))
        .collect();
    let failovers: Vec<_> = events.iter().filter(|e| e["event"] == "failover").collect();
    assert_eq!(failovers.len(), 1, "{events:?}");
    let f = failovers[0];
    assert_eq!(f["node_role"], "backup");
    assert_eq!(f["subject"], "MASTER");
    assert!(f["unix_ms"].as_u64().unwrap() > 0);
    assert_eq!(f["cluster_id"].as_str().unwrap().len(), 32);
    assert!(f["detail"].is_string());
}

#[test]
fn a_second_holder_of_the_lan_vip_is_alerted_once_and_its_end_too() {
    let lab = Lab::up();
    pair(&lab);
    install_alert_hook(&lab);
    assert!(wait_all_ok(&lab, &LINKS, Duration::from_secs(15)));
    assert!(lab.has_addr("fw1", net::LAN_VIP), "fw1 is MASTER");
    let split = |fw: &str, event: &str| {
        alerts(&lab, fw)
            .into_iter()
            .filter(|e| e["event"] == event)
            .collect::<Vec<_>>()
    };
    let vip = format!("{}/24", net::LAN_VIP);
    lab.exec_ok("fw2", &["ip", "addr", "add", &vip, "dev", net::LAN_IF]);
    // The monitor looks every 10 s.
    assert!(
        wait_until(Duration::from_secs(25), Duration::from_millis(200), || {
            !split("fw1", "split-brain").is_empty()
        }),
        "no split-brain alert on fw1: {:?}",
        alerts(&lab, "fw1")
    );
    let status: serde_json::Value =
        serde_json::from_str(&tool_ok(&lab, "fw1", "ns-ha-check", &["--json", "status"]))
            .expect("status --json is JSON");
    let sb = status["health"]["split_brain"].as_str().unwrap_or_default();
    assert!(sb.contains(net::LAN_VIP), "{status}");
    // It persists for two more rounds: still one alert.
    std::thread::sleep(Duration::from_secs(21));
    let raised = split("fw1", "split-brain");
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(raised[0]["subject"], "vip");
    assert!(
        raised[0]["detail"].as_str().unwrap().contains(net::LAN_VIP),
        "{raised:?}"
    );
    lab.exec_ok("fw2", &["ip", "addr", "del", &vip, "dev", net::LAN_IF]);
    assert!(
        wait_until(Duration::from_secs(25), Duration::from_millis(200), || {
            !split("fw1", "split-brain-recovered").is_empty()
        }),
        "no recovery alert on fw1: {:?}",
        alerts(&lab, "fw1")
    );
    assert_eq!(split("fw1", "split-brain").len(), 1);
    let status: serde_json::Value =
        serde_json::from_str(&tool_ok(&lab, "fw1", "ns-ha-check", &["--json", "status"]))
            .expect("status --json is JSON");
    assert!(status["health"]["split_brain"].is_null(), "{status}");
}
