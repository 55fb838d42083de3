//! Issue 10 acceptance against real keepalived: the health monitor moves
//! the VIPs away from a master that cannot serve (silent LAN failure, WAN
//! gateway unreachable, master-only service dead), and only then: both
//! nodes unhealthy in the same way keep the master, a merely restarting
//! service moves nothing, and a node that gave up takes the VIPs back only
//! after the hold-down, once.

use serde_json::json;
use std::time::{Duration, Instant};

use ns_ha_tests::cluster::{pair, tool_ok};
use ns_ha_tests::health::{
    handovers, lab_health, set_health, state, timed_sample, wait_all_ok, Pinger, LAB_HOLD_DOWN_MS,
};
use ns_ha_tests::{net, Lab};

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
        "fw1 took the VIP back {returned:?} after the heal, before the hold-down"
    );
    let h = handovers(&samples.into_iter().map(|(_, h)| h).collect::<Vec<_>>());
    assert_eq!(
        h,
        [("fw2".to_string(), "fw1".to_string())],
        "handovers back"
    );
    eprintln!("fw1 back {returned:?} after the heal (hold-down {LAB_HOLD_DOWN_MS} ms)");
}
