//! Benchmark of ns-ha-sync in the lab (`make bench`): a 10,000-file tree,
//! full push vs no-change push vs one-file change, with the bytes sent.
//! Figures are printed with ratios against the full push measured in the
//! same run; nothing is asserted about speed.

#[path = "sync_support.rs"]
mod sync_support;

use std::time::{Duration, Instant};

use ns_ha_tests::Lab;
use sync_support::*;

fn timed(lab: &Lab, args: &[&str]) -> Duration {
    let trace = std::env::var_os("SYNC_BENCH_TRACE").is_some();
    let mut argv = args.to_vec();
    if trace {
        argv.insert(0, "-vv");
    }
    let t0 = Instant::now();
    let out = sync(lab, "fw1", &argv);
    let took = t0.elapsed();
    assert!(out.status.success(), "{}", describe(&out));
    if trace {
        eprintln!(
            "{args:?} took {took:?}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn last_bytes(lab: &Lab) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&sync_ok(lab, "fw1", &["--json", "status", "--local"])).unwrap();
    v["node"]["last_success"]["bytes"].as_u64().unwrap()
}

#[test]
#[ignore = "benchmark: make bench"]
fn bench_ten_thousand_files() {
    let lab = paired_lab();
    sync_ok(&lab, "fw1", &["push"]);
    for d in 0..100 {
        for f in 0..100 {
            lab.write(
                "fw1",
                &format!("/etc/nginx/bench/d{d:02}/f{f:03}.conf"),
                format!(
                    "# bench file {d}/{f}\nserver {{ listen {}; }}\n{}\n",
                    10000 + d * 100 + f,
                    "x".repeat(120)
                ),
            );
        }
    }
    // Age the files so the hash cache trusts them (it distrusts files changed this second).
    std::thread::sleep(Duration::from_secs(2));
    let full = timed(&lab, &["push"]);
    let full_bytes = last_bytes(&lab);
    std::thread::sleep(Duration::from_secs(2));
    if std::env::var_os("SYNC_BENCH_TRACE").is_some() {
        lab.write("fw1", "/etc/nginx/bench/d01/f001.conf", "trace\n");
        let out = sync(&lab, "fw1", &["-vv", "push"]);
        eprintln!("{}", describe(&out));
    }
    let noop = median((0..7).map(|_| timed(&lab, &["push"])).collect());
    let recheck = median(
        (0..5)
            .map(|_| timed(&lab, &["push", "--recheck"]))
            .collect(),
    );
    let mut one = Vec::new();
    let mut one_bytes = 0;
    for i in 0..5 {
        lab.write(
            "fw1",
            "/etc/nginx/bench/d42/f042.conf",
            format!("# changed {i}\n"),
        );
        let t0 = Instant::now();
        sync_ok(&lab, "fw1", &["push"]);
        one.push(t0.elapsed());
        one_bytes = last_bytes(&lab);
        assert_eq!(
            lab.read("fw2", "/etc/nginx/bench/d42/f042.conf"),
            format!("# changed {i}\n")
        );
    }
    let one = median(one);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("ns-ha-sync, 10,000 files (~200 B each), lab over real sshd:");
    println!(
        "  full push (first sync)          {:9.1} ms  {full_bytes:>9} bytes sent",
        ms(full)
    );
    println!(
        "  no-change push (local shortcut) {:9.1} ms  ({:.3} of full)",
        ms(noop),
        ms(noop) / ms(full)
    );
    println!(
        "  no-change push --recheck (peer) {:9.1} ms  ({:.3} of full)",
        ms(recheck),
        ms(recheck) / ms(full)
    );
    println!(
        "  one-file change, end to end     {:9.1} ms  {one_bytes:>9} bytes sent ({:.4} of full bytes, {:.3} of full time)",
        ms(one),
        one_bytes as f64 / full_bytes as f64,
        ms(one) / ms(full)
    );
}
