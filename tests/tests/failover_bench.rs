//! Benchmark (run by `make bench`, `#[ignore]` otherwise): the LAN client's
//! outage when the master is lost (crash: keepalived frozen and killed,
//! links down), with the keepalived config ns-ha-init renders at its
//! defaults against the same config at the incumbent's VRRP timing (VRRPv2,
//! 1 s adverts: `lab.sh vrrp-incumbent`), in one lab, the two alternating
//! round by round. The outage is the longest gap between two replies of a
//! client pinging the LAN VIP every 10 ms. Nothing is asserted about speed;
//! the row goes to the bench table.

use std::time::Duration;

use ns_ha_tests::bench::{self, Figure, Row};
use ns_ha_tests::cluster::pair;
use ns_ha_tests::health::Pinger;
use ns_ha_tests::{net, wait_until, Lab};

#[derive(Clone, Copy, PartialEq)]
enum Timing {
    /// The config as ns-ha-init rendered it.
    Product,
    /// `lab.sh vrrp-incumbent` applied to it.
    Incumbent,
}

/// One crash of fw1 at `timing`; fw1 is revived afterwards. Returns the outage in ms.
fn round(lab: &Lab, timing: Timing, rendered: &[(&str, String)]) -> f64 {
    for (fw, conf) in rendered {
        lab.write(fw, "/etc/keepalived/keepalived.conf", conf);
    }
    match timing {
        Timing::Product => {
            for (fw, _) in rendered {
                lab.stop(fw, "keepalived");
                lab.start(fw, "keepalived");
            }
        }
        Timing::Incumbent => lab.vrrp_incumbent(),
    }
    assert!(
        lab.wait_holders(net::LAN_VIP, &["fw1"], Duration::from_secs(20)),
        "fw1 did not take the LAN VIP back: holders {:?}; fw1: {}",
        lab.holders(net::LAN_VIP),
        ns_ha_tests::cluster::tool_ok(lab, "fw1", "ns-ha-check", &["status"])
    );
    // The backup has heard a few adverts of the new master (1 s apart at the incumbent's timing).
    std::thread::sleep(Duration::from_secs(3));
    let ping = Pinger::start(lab, "lan", net::LAN_VIP);
    std::thread::sleep(Duration::from_secs(1));
    lab.crash("fw1");
    // The crashed fw1 keeps its addresses (a killed keepalived leaves them, on links that are down).
    assert!(
        wait_until(Duration::from_secs(15), Duration::from_millis(10), || lab
            .has_addr("fw2", net::LAN_VIP)),
        "fw2 did not take the LAN VIP: holders {:?}",
        lab.holders(net::LAN_VIP)
    );
    std::thread::sleep(Duration::from_secs(1));
    let gap = ping.stop();
    lab.revive("fw1");
    // The next round restarts keepalived on both nodes: fw1 must be healthy
    // first. A node still bringing its links up when the restart hands it
    // MASTER gives it up again and is held down for `hold_down_ms` (30 s),
    // which is the monitor's job, not what this benchmark measures.
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            ns_ha_tests::cluster::tool(lab, "fw1", "ns-ha-check", &["health"])
                .status
                .success()
        }),
        "revived fw1 is not healthy: {}",
        String::from_utf8_lossy(
            &ns_ha_tests::cluster::tool(lab, "fw1", "ns-ha-check", &["health"]).stderr
        )
    );
    gap
}

#[test]
#[ignore = "benchmark: make bench"]
fn bench_primary_lost_product_against_incumbent_timing() {
    let rounds: usize = std::env::var("NS_HA_FAILOVER_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let lab = Lab::up();
    pair(&lab);
    let rendered: Vec<(&str, String)> = ["fw1", "fw2"]
        .into_iter()
        .map(|fw| (fw, lab.read(fw, "/etc/keepalived/keepalived.conf")))
        .collect();
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..rounds {
        // Alternate which timing goes first, so drift in the machine's load hits both.
        let order = if i % 2 == 0 {
            [Timing::Product, Timing::Incumbent]
        } else {
            [Timing::Incumbent, Timing::Product]
        };
        for timing in order {
            let gap = round(&lab, timing, &rendered);
            let name = if timing == Timing::Product {
                ours.push(gap);
                "product defaults"
            } else {
                theirs.push(gap);
                "incumbent timing"
            };
            println!("round {}: {name}: client outage {gap:.0} ms", i + 1);
        }
    }
    bench::record(
        &Row::new(
            "failover",
            "master lost, LAN client's longest ping gap",
            Figure::from_ms("ns-ha defaults (VRRPv3)", &ours),
        )
        .baseline(Figure::from_ms(
            "incumbent timing (VRRPv2, 1 s adverts)",
            &theirs,
        ))
        .note("same lab and rendered config, only the VRRP timing differs"),
    );
}
