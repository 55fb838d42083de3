//! Benchmark (run by `make bench`): time from VIP takeover to every MASTER
//! action done, on fw2 when fw1 is lost, with the default service set (of
//! which the lab nodes have dnsmasq and conntrackd installed), against a
//! baseline measured in the same run: the incumbent's way, a sequential hook
//! chain doing the same work (restart every installed master service, then
//! the conntrackd commands one by one).

use serde_json::Value;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ns_ha_tests::bench::{self, Figure, Row};
use ns_ha_tests::cluster::{pair, role_status, tool_ok};
use ns_ha_tests::{net, wait_until, Lab};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

struct Round {
    /// fw2's notify/FIFO event recorded (keepalived adds the VIPs before it notifies) to last action done.
    takeover_to_done: u64,
    /// Crash to the VIP seen on fw2 by the test (10 ms polling).
    crash_to_vip: u64,
    /// The same work as a sequential chain.
    baseline: u64,
    actions: usize,
}

fn round() -> Round {
    let lab = Lab::up();
    for fw in ["fw1", "fw2"] {
        let conf = format!(
            "interface={}\nlisten-address={}\nbind-dynamic\nexcept-interface=lo\nno-hosts\n\
             dhcp-range=10.99.1.150,10.99.1.199,255.255.255.0,1h\n",
            net::LAN_IF,
            net::LAN_VIP
        );
        lab.write(fw, "/etc/dnsmasq.conf", conf);
    }
    pair(&lab);
    assert!(wait_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            role_status(&lab, "fw2")["applied"]["label"] == "BACKUP"
                && !lab.status("fw2", "dnsmasq")
        }
    ));
    let crash = now_ms();
    lab.crash("fw1");
    assert!(wait_until(
        Duration::from_secs(10),
        Duration::from_millis(10),
        || lab.has_addr("fw2", net::LAN_VIP)
    ));
    let vip = now_ms();
    let mut last = Value::Null;
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
            let s = role_status(&lab, "fw2");
            last = s["history"]
                .as_array()
                .and_then(|h| h.iter().rev().find(|t| t["to"] == "MASTER").cloned())
                .unwrap_or_default();
            s["applied"]["label"] == "MASTER"
                && s["applied"]["pending"] == serde_json::json!([])
                && !last.is_null()
        }),
        "fw2 did not finish its MASTER actions: {last:#}"
    );
    let event = last["event_unix_ms"].as_u64().expect("event time");
    let done = last["done_unix_ms"].as_u64().expect("done time");
    let actions = last["actions"].as_array().map(|a| a.len()).unwrap_or(0);

    // Baseline: put fw2's services back as on a backup, then the chain.
    let root = lab.root("fw2");
    let root = root.to_string_lossy();
    lab.stop("fw2", "dnsmasq");
    let defaults: Value =
        serde_json::from_str(&tool_ok(&lab, "fw2", "ns-ha-role", &["defaults"])).expect("defaults");
    let services: Vec<String> = defaults["master"]["start"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    let script = format!(
        "R={root}; for s in {}; do [ -x $R/etc/init.d/$s ] && $R/etc/init.d/$s restart >/dev/null 2>&1; done; \
         for f in -c -f -R -B; do conntrackd -C $R/etc/conntrackd/conntrackd.conf $f; done",
        services.join(" ")
    );
    let t = Instant::now();
    lab.sh_ok("fw2", &script);
    let baseline = t.elapsed().as_millis() as u64;
    Round {
        takeover_to_done: done.saturating_sub(event),
        crash_to_vip: vip.saturating_sub(crash),
        baseline,
        actions,
    }
}

#[test]
#[ignore = "benchmark: make bench"]
fn bench_takeover_to_master_actions_done() {
    let rounds: usize = std::env::var("NS_HA_ROLE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut ours = Vec::new();
    let mut base = Vec::new();
    let mut vip = Vec::new();
    for i in 0..rounds {
        let r = round();
        println!(
            "round {}: takeover -> all {} MASTER actions done {} ms; crash -> VIP on fw2 {} ms; sequential baseline {} ms",
            i + 1,
            r.actions,
            r.takeover_to_done,
            r.crash_to_vip,
            r.baseline
        );
        ours.push(r.takeover_to_done);
        base.push(r.baseline);
        vip.push(r.crash_to_vip);
    }
    let as_ms = |v: &[u64]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    bench::record(
        &Row::new(
            "role engine",
            "takeover to every MASTER action done (services, conntrackd)",
            Figure::from_ms("ns-ha-role", &as_ms(&ours)),
        )
        .baseline(Figure::from_ms("sequential hook chain", &as_ms(&base)))
        .note(&format!(
            "crash to VIP on fw2: median {} ms",
            median(&mut vip)
        )),
    );
}
