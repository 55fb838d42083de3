//! Benchmarks of issue 10 (`BENCH_SOAK=1 make bench`, `#[ignore]`
//! otherwise; not in the plain `make bench`, which must fit in 15 minutes):
//! the figures that chose the health and VRRP defaults. They print their
//! figures; the failover against the incumbent's timing that the bench
//! table shows is tests/tests/failover_bench.rs.
//!
//! - `soak_under_load`: 10 minutes (NS_HA_SOAK_SECS) with both cores
//!   saturated by busy loops, the monitor running at its defaults and the
//!   advert interval NS_HA_ADVERT_MS (default: the cluster default): VIP
//!   handovers, role transitions, false health failures and the checks'
//!   latencies. The default advert interval is the shortest with 0.
//! - `primary_lost_at_defaults`: 5 rounds of fw1 lost (crash: keepalived
//!   frozen and killed, links down) with the client pinging the VIP and
//!   asking its DNS every 10 ms: longest ping gap and longest DNS gap,
//!   medians of 5.

use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ns_ha_tests::cluster::{configure_dnsmasq, init_ok, pair_with_lans, role_status};
use ns_ha_tests::health::{
    handovers, lab_health, longest_gap_ms, set_health, state, wait_all_ok, Pinger,
};
use ns_ha_tests::{net, Lab};

const LINKS: [&str; 3] = ["interfaces", "reach:lan0", "reach:wan0"];

/// Pair with the advert interval from NS_HA_ADVERT_MS (if set), LAN and WAN, enable.
fn pair_with_advert(lab: &Lab) -> Option<u32> {
    pair_with_lans(lab);
    let advert: Option<u32> = std::env::var("NS_HA_ADVERT_MS")
        .ok()
        .and_then(|v| v.parse().ok());
    if let Some(ms) = advert {
        let text = lab.read("fw1", "/etc/ns-ha/cluster.json");
        let mut c: Value = serde_json::from_str(&text).unwrap();
        c["vrrp"]["advert_interval_ms"] = json!(ms);
        lab.write("fw1", "/etc/ns-ha/cluster.json", c.to_string());
    }
    init_ok(lab, "fw1", &["enable"]);
    assert!(lab.wait_holders(net::LAN_VIP, &["fw1"], Duration::from_secs(15)));
    let conf = lab.read("fw2", "/etc/keepalived/keepalived.conf");
    let line = conf
        .lines()
        .find(|l| l.contains("advert_int"))
        .unwrap_or("")
        .trim()
        .to_string();
    eprintln!("advert: {line}");
    advert
}

/// Busy loops, one per core, killed on drop.
struct Load(Vec<Child>);

impl Load {
    fn start(n: usize) -> Load {
        Load(
            (0..n)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .stdin(Stdio::null())
                        .spawn()
                        .expect("busy loop")
                })
                .collect(),
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn history_len(lab: &Lab, fw: &str) -> usize {
    role_status(lab, fw)["history"]
        .as_array()
        .map(|a| a.iter().filter(|t| t["kind"] == "transition").count())
        .unwrap_or(0)
}

fn unfit_decisions(s: &Value) -> usize {
    s["decisions"]
        .as_array()
        .map(|a| a.iter().filter(|d| d["fit"] == false).count())
        .unwrap_or(0)
}

#[test]
#[ignore = "benchmark: 10 minutes; make bench"]
fn soak_under_load() {
    let secs: u64 = std::env::var("NS_HA_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let lab = Lab::up();
    let advert = pair_with_advert(&lab);
    set_health(&lab, &lab_health(json!({})));
    assert!(wait_all_ok(&lab, &LINKS, Duration::from_secs(15)));
    let before: Vec<(Value, usize)> = ["fw1", "fw2"]
        .iter()
        .map(|fw| (state(&lab, fw), history_len(&lab, fw)))
        .collect();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let load = Load::start(cores);
    let start = Instant::now();
    let mut samples = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(500));
        samples.push(lab.holders(net::LAN_VIP));
    }
    drop(load);
    let h = handovers(&samples);
    let not_fw1 = samples.iter().filter(|s| s.as_slice() != ["fw1"]).count();
    let mut report = format!(
        "soak {secs} s, advert {advert:?} ms, {cores} busy loops: {} handovers, {not_fw1} of {} samples without fw1 alone\n",
        h.len(),
        samples.len()
    );
    let mut transitions = 0;
    let mut false_failures = 0;
    for (fw, (b, hist_before)) in ["fw1", "fw2"].iter().zip(before) {
        let s = state(&lab, fw);
        let t = s["transitions"].as_u64().unwrap_or(0) - b["transitions"].as_u64().unwrap_or(0);
        let hist = history_len(&lab, fw) - hist_before;
        let unfit = unfit_decisions(&s) - unfit_decisions(&b);
        transitions += t as usize + hist;
        false_failures += unfit;
        report.push_str(&format!(
            "{fw}: monitor transitions {t}, role transitions {hist}, unfit decisions {unfit}\n"
        ));
        for (id, c) in s["checks"].as_object().unwrap() {
            report.push_str(&format!(
                "  {id}: rounds {}, failed rounds {}, last {} ms, max {} ms, state {}\n",
                c["rounds"],
                c["failed_rounds"],
                c["last_latency_ms"],
                c["max_latency_ms"],
                c["state"]
            ));
        }
    }
    eprintln!("{report}");
    assert!(h.is_empty() && not_fw1 == 0, "{report}");
    assert_eq!(transitions, 0, "{report}");
    assert_eq!(false_failures, 0, "{report}");
}

/// The client asks the VIP's DNS every 10 ms and prints the time of each
/// answer: bash builtins only (`/dev/udp`, `read -t`, `$EPOCHREALTIME`), so
/// the lab needs no other interpreter. `$0` the server, `$1` seconds.
const DNS_PROBE: &str = r#"
exec 3<>"/dev/udp/$0/53" || exit 1
end=$((EPOCHSECONDS + $1))
while ((EPOCHSECONDS < end)); do
    printf '\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x06\x00\x01' >&3 2>/dev/null
    if read -r -t 0.02 -N 1 _ <&3 2>/dev/null; then
        echo "$EPOCHREALTIME"
        read -r -t 0.001 -N 512 _ <&3 2>/dev/null
    fi
    sleep 0.01
done
"#;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
#[ignore = "benchmark: 5 lab rounds; make bench"]
fn primary_lost_at_defaults() {
    let mut gaps = Vec::new();
    let mut dns = Vec::new();
    for round in 1..=5 {
        let lab = Lab::up();
        configure_dnsmasq(&lab);
        let advert = pair_with_advert(&lab);
        set_health(&lab, &lab_health(json!({})));
        assert!(wait_all_ok(&lab, &LINKS, Duration::from_secs(15)));
        std::thread::sleep(Duration::from_secs(1));
        let probe = Command::new("ip")
            .args(["netns", "exec", &lab.ns("lan"), "bash", "-c", DNS_PROBE])
            .args([net::LAN_VIP, "8"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dns probe");
        let ping = Pinger::start(&lab, "lan", net::LAN_VIP);
        std::thread::sleep(Duration::from_secs(2));
        lab.crash("fw1");
        std::thread::sleep(Duration::from_secs(5));
        let gap = ping.stop();
        let out = probe.wait_with_output().expect("dns probe output");
        let stamps: Vec<f64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect();
        assert!(stamps.len() > 10, "DNS never answered: {stamps:?}");
        let dns_gap = longest_gap_ms(&stamps);
        eprintln!(
            "round {round} (advert {advert:?}): LAN gap {gap:.0} ms, DNS gap {dns_gap:.0} ms"
        );
        gaps.push(gap);
        dns.push(dns_gap);
    }
    eprintln!(
        "primary lost: LAN gap median {:.0} ms {gaps:?}; DNS gap median {:.0} ms {dns:?}",
        median(&mut gaps.clone()),
        median(&mut dns.clone())
    );
}
