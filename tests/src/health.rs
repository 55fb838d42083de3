//! Health monitor helpers for the end-to-end tests: give the paired lab a
//! health section, wait for the monitors' verdicts, and measure what a LAN
//! client sees (the longest gap between replies from the VIP).

use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{net, wait_until, Lab, FIREWALLS};

/// Hold-down of the lab's health section: short, so a test sees the return.
pub const LAB_HOLD_DOWN_MS: u64 = 5_000;

/// The lab's health section: the LAN reached through the client (and the
/// peer), the WAN gateway through the WAN host only, and `extra` merged in
/// (e.g. services, alert_hook).
pub fn lab_health(extra: Value) -> Value {
    let mut h = json!({
        "hold_down_ms": LAB_HOLD_DOWN_MS,
        "links": [
            {"interface": net::LAN_IF, "targets": [net::CLIENT]},
            {"interface": net::WAN_IF, "targets": [net::WAN_HOST], "peer": false},
        ],
    });
    if let (Some(h), Some(e)) = (h.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            h.insert(k.clone(), v.clone());
        }
    }
    h
}

/// Put `health` into both nodes' cluster.json (the same file on both, as
/// the primary installs it); the monitors pick it up within 2 s.
pub fn set_health(lab: &Lab, health: &Value) {
    for fw in FIREWALLS {
        let text = lab.read(fw, "/etc/ns-ha/cluster.json");
        let mut c: Value = serde_json::from_str(&text).expect("cluster.json is JSON");
        c["health"] = health.clone();
        lab.write(
            fw,
            "/etc/ns-ha/cluster.json",
            serde_json::to_string_pretty(&c).expect("serialize"),
        );
    }
}

/// The monitor's state file of a node (Null if none yet).
pub fn state(lab: &Lab, node: &str) -> Value {
    std::fs::read_to_string(lab.path(node, "/run/ns-ha/health.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

/// Wait until both monitors run every check of `ids` and find them ok.
pub fn wait_all_ok(lab: &Lab, ids: &[&str], limit: Duration) -> bool {
    wait_until(limit, Duration::from_millis(100), || {
        FIREWALLS.iter().all(|fw| {
            let s = state(lab, fw);
            ids.iter().all(|id| s["checks"][*id]["state"] == "ok") && s["fit"] == true
        })
    })
}

/// A LAN client pinging an address every 10 ms, with timestamps.
pub struct Pinger {
    child: Child,
    started: Instant,
}

impl Pinger {
    pub fn start(lab: &Lab, from: &str, addr: &str) -> Pinger {
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.ns(from)])
            .args(["ping", "-n", "-D", "-i", "0.01", "-W", "1", addr])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ping");
        Pinger {
            child,
            started: Instant::now(),
        }
    }

    /// Stop it; the longest gap between two replies (or between the start
    /// and the first reply), in ms.
    pub fn stop(self) -> f64 {
        longest_gap_ms(&self.stop_replies())
    }

    /// Stop it; the Unix time (s) of every reply, at least one.
    pub fn stop_replies(mut self) -> Vec<f64> {
        let _ = self.child.kill();
        let out = self.child.wait_with_output().expect("ping output");
        let text = String::from_utf8_lossy(&out.stdout);
        let stamps = reply_stamps(&text);
        assert!(
            !stamps.is_empty(),
            "no reply in {:?} of pinging: {text}",
            self.started.elapsed()
        );
        stamps
    }
}

/// The `[1700000000.123456]` stamps of ping's reply lines.
pub fn reply_stamps(text: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            l.strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .and_then(|(t, _)| t.parse().ok())
        })
        .collect()
}

/// The longest gap between consecutive stamps, in ms.
pub fn longest_gap_ms(stamps: &[f64]) -> f64 {
    stamps
        .windows(2)
        .map(|w| (w[1] - w[0]) * 1000.0)
        .fold(0.0, f64::max)
}

/// Assert `vip` stays with `holder` alone, sampled every 100 ms for the lab's
/// hold-down and 3 s more: a node that gave up does not take it back.
pub fn assert_held_past_hold_down(lab: &Lab, vip: &str, holder: &str, why: &str) {
    let held = sample(
        lab,
        vip,
        ((LAB_HOLD_DOWN_MS + 3_000) / 100) as usize,
        Duration::from_millis(100),
    );
    assert!(
        held.iter().all(|h| h.as_slice() == [holder]),
        "holders of {vip} {why}: {held:?}"
    );
}

/// Who holds `vip`, sampled every `every` for `n` samples.
pub fn sample(lab: &Lab, vip: &str, n: usize, every: Duration) -> Vec<Vec<&'static str>> {
    timed_sample(lab, vip, n, every)
        .into_iter()
        .map(|(_, h)| h)
        .collect()
}

/// Like [`sample`], each sample with when it was taken.
pub fn timed_sample(
    lab: &Lab,
    vip: &str,
    n: usize,
    every: Duration,
) -> Vec<(Instant, Vec<&'static str>)> {
    (0..n)
        .map(|_| {
            std::thread::sleep(every);
            (Instant::now(), lab.holders(vip))
        })
        .collect()
}

/// Handovers in a series of holder samples: changes of the sole holder
/// (a sample with nobody or both in between does not count twice).
pub fn handovers(samples: &[Vec<&'static str>]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut last: Option<&str> = None;
    for s in samples {
        if let [one] = s.as_slice() {
            if let Some(l) = last {
                if l != *one {
                    out.push((l.to_string(), one.to_string()));
                }
            }
            last = Some(one);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_and_handovers_are_counted() {
        let t = "PING x\n[100.000] 64 bytes from 10.99.1.254: icmp_seq=1\n\
                 [100.010] 64 bytes from 10.99.1.254: icmp_seq=2\n[100.500] 64 bytes from x\n";
        let s = reply_stamps(t);
        assert_eq!(s.len(), 3);
        assert!((longest_gap_ms(&s) - 490.0).abs() < 0.01);
        let h = handovers(&[
            vec!["fw1"],
            vec![],
            vec!["fw2"],
            vec!["fw2", "fw1"],
            vec!["fw1"],
        ]);
        assert_eq!(
            h,
            vec![("fw1".into(), "fw2".into()), ("fw2".into(), "fw1".into())]
        );
    }
}
