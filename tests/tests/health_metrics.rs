//! Issue 10: `ns-ha-check metrics` is valid Prometheus text (checked by a
//! strict parser of the text format, written here) and says what
//! `ns-ha-check status --json` says, on a paired lab with the monitor running.

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ns_ha_tests::cluster::{pair, tool_ok};
use ns_ha_tests::health::{lab_health, set_health, state, wait_all_ok};
use ns_ha_tests::Lab;

/// One sample: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn valid_name(n: &str, colon: bool) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_' || (colon && f == ':'))
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || (colon && x == ':'))
}

/// `{a="x",b="y\"z"}` -> labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("no {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let (name, r) = rest.split_once("=\"").ok_or(format!("bad label in {s}"))?;
        if !valid_name(name, false) || name.starts_with("__") {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    other => return Err(format!("bad escape {other:?} in {s}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in {s}")),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice in {s}"));
        }
        rest = &r[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err(format!("expected , or }} in {s}"));
        }
    }
}

/// A strict parser of the Prometheus text format (0.0.4): HELP/TYPE
/// lines, every family typed once before its samples, samples of a family
/// together, no series twice, values as floats.
fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = BTreeSet::new();
    let mut done_families = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut series = BTreeSet::new();
    if !text.ends_with('\n') {
        return Err("no final newline".into());
    }
    for line in text.lines() {
        if let Some(r) = line.strip_prefix("# ") {
            let mut p = r.splitn(3, ' ');
            let (kw, name, rest) = (p.next(), p.next(), p.next());
            let name = name.ok_or(format!("bad comment {line}"))?;
            if !valid_name(name, true) {
                return Err(format!("bad metric name in {line}"));
            }
            match kw {
                Some("HELP") if !helped.insert(name.to_string()) => {
                    return Err(format!("HELP twice for {name}"));
                }
                Some("TYPE") => {
                    let t = rest.ok_or(format!("TYPE without a type: {line}"))?;
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                        return Err(format!("unknown type {t}"));
                    }
                    if types.insert(name.to_string(), t.to_string()).is_some() {
                        return Err(format!("TYPE twice for {name}"));
                    }
                    if let Some(c) = current.replace(name.to_string()) {
                        done_families.insert(c);
                    }
                }
                _ => {}
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => return Err(format!("no value: {line}")),
        };
        if !valid_name(name, true) {
            return Err(format!("bad metric name {name:?}"));
        }
        let (labels, rest) = if rest.starts_with('{') {
            parse_labels(rest)?
        } else {
            (BTreeMap::new(), rest)
        };
        let value = rest
            .strip_prefix(' ')
            .ok_or(format!("no space before the value: {line}"))?;
        let value = value.split(' ').next().unwrap_or("");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|e| format!("bad value {v:?}: {e}"))?,
        };
        if current.as_deref() != Some(name) {
            return Err(format!(
                "sample {name} outside its family (TYPE first, samples together)"
            ));
        }
        if done_families.contains(name) {
            return Err(format!("family {name} split"));
        }
        if types.get(name).map(String::as_str) == Some("counter") && value < 0.0 {
            return Err(format!("negative counter {line}"));
        }
        if !series.insert(format!("{name}{labels:?}")) {
            return Err(format!("series twice: {line}"));
        }
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(out)
}

fn value(s: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.iter()
        .find(|x| {
            x.name == name
                && labels
                    .iter()
                    .all(|(k, v)| x.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|x| x.value)
}

#[test]
fn the_parser_is_strict() {
    assert!(parse("# TYPE a gauge\na 1\n").is_ok());
    assert!(parse("# TYPE a gauge\na{x=\"q\\\"\"} 1\n").is_ok());
    for bad in [
        "a 1\n",                                  // no TYPE
        "# TYPE a gauge\na 1",                    // no final newline
        "# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n", // label twice
        "# TYPE a gauge\na one\n",                // not a number
        "# TYPE a gauge\na 1\na 2\n",             // series twice
        "# TYPE a gauge\n# TYPE b gauge\na 1\n",  // outside its family
        "# TYPE a counter\na -1\n",               // negative counter
        "# TYPE 1a gauge\n1a 1\n",                // bad name
        "# TYPE a gauge\na{x=\"\\q\"} 1\n",       // bad escape
    ] {
        assert!(parse(bad).is_err(), "accepted: {bad:?}");
    }
}

#[test]
fn metrics_parse_and_match_status() {
    let lab = Lab::up();
    pair(&lab);
    set_health(&lab, &lab_health(json!({})));
    assert!(wait_all_ok(
        &lab,
        &["interfaces", "reach:lan0", "reach:wan0"],
        Duration::from_secs(15)
    ));
    for fw in ["fw1", "fw2"] {
        let status: Value =
            serde_json::from_str(&tool_ok(&lab, fw, "ns-ha-check", &["--json", "status"])).unwrap();
        let text = tool_ok(&lab, fw, "ns-ha-check", &["metrics"]);
        let m = parse(&text).unwrap_or_else(|e| panic!("[{fw}] {e}:\n{text}"));
        let st = status["vrrp_state"].as_str().unwrap();
        assert_eq!(
            value(&m, "ns_ha_vrrp_state", &[("state", st)]),
            Some(1.0),
            "[{fw}] {text}"
        );
        for v in status["vips"].as_array().unwrap() {
            let vip = v["vip"].as_str().unwrap();
            let held = if v["held"] == true { 1.0 } else { 0.0 };
            assert_eq!(
                value(&m, "ns_ha_vip_held", &[("vip", vip)]),
                Some(held),
                "[{fw}] {vip}"
            );
        }
        assert_eq!(
            value(&m, "ns_ha_sync_generation", &[]),
            status["sync"]["generation"].as_f64()
        );
        assert_eq!(
            value(&m, "ns_ha_maintenance", &[]),
            Some(if status["maintenance"] == true {
                1.0
            } else {
                0.0
            })
        );
        assert_eq!(value(&m, "ns_ha_enabled", &[]), Some(1.0));
        assert_eq!(
            value(
                &m,
                "ns_ha_node_info",
                &[("role", status["node_role"].as_str().unwrap())]
            ),
            Some(1.0)
        );
        let h = &status["health"];
        assert_eq!(
            value(&m, "ns_ha_health_priority", &[]),
            h["priority"].as_f64()
        );
        assert_eq!(value(&m, "ns_ha_health_fit", &[]), Some(1.0));
        for c in h["checks"].as_array().unwrap() {
            let id = c["id"].as_str().unwrap();
            assert_eq!(
                value(
                    &m,
                    "ns_ha_health_check_state",
                    &[("check", id), ("state", c["state"].as_str().unwrap())]
                ),
                Some(1.0),
                "[{fw}] {id}"
            );
        }
        assert!(value(
            &m,
            "ns_ha_health_check_latency_seconds",
            &[("check", "reach:lan0")]
        )
        .is_some_and(|l| l > 0.0 && l < 0.1));
        if let Some(t) = status["transitions"].as_array().unwrap().last() {
            assert_eq!(
                value(&m, "ns_ha_last_transition_timestamp_seconds", &[]),
                Some(t["unix_ms"].as_f64().unwrap() / 1000.0)
            );
        }
        // keepalived's own counters, from its JSON dump: the master sends
        // adverts and became master, the backup hears them.
        assert!(
            !text.contains("ns_ha_keepalived_stats_error_info"),
            "[{fw}] {text}"
        );
        let lan = [("instance", "lan_lan0")];
        let counter = |name: &str| {
            value(&m, name, &lan).unwrap_or_else(|| panic!("[{fw}] no {name}:\n{text}"))
        };
        if fw == "fw1" {
            assert!(counter("ns_ha_keepalived_adverts_sent_total") > 0.0);
            assert!(counter("ns_ha_keepalived_became_master_total") >= 1.0);
        } else {
            assert!(counter("ns_ha_keepalived_adverts_received_total") > 0.0);
            assert_eq!(counter("ns_ha_keepalived_became_master_total"), 0.0);
        }
        assert_eq!(
            value(
                &m,
                "ns_ha_keepalived_errors_total",
                &[("instance", "lan_lan0"), ("kind", "auth_failure")]
            ),
            Some(0.0),
            "[{fw}]"
        );
        // The role engine's instances: the same state as the VIPs say.
        let want = if fw == "fw1" { "MASTER" } else { "BACKUP" };
        assert_eq!(
            value(
                &m,
                "ns_ha_vrrp_instance_state",
                &[("instance", "lan_lan0"), ("state", want)]
            ),
            Some(1.0),
            "[{fw}] {text}"
        );
    }
    // Written atomically into a textfile directory, same format.
    let dir = lab.dir().join("textfile");
    std::fs::create_dir_all(&dir).unwrap();
    let out: Value = serde_json::from_str(&tool_ok(
        &lab,
        "fw1",
        "ns-ha-check",
        &["--json", "metrics", "--textfile-dir", dir.to_str().unwrap()],
    ))
    .unwrap();
    let file = std::fs::read_to_string(dir.join("ns-ha.prom")).unwrap();
    assert_eq!(out["written"], dir.join("ns-ha.prom").to_str().unwrap());
    parse(&file).unwrap();
    assert_eq!(state(&lab, "fw1")["fit"], true);

    // The prompt marker the monitor writes, as the profile snippet shows it.
    let snippet = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ns-ha-check/profile/ns-ha-prompt.sh");
    for (fw, want) in [("fw1", "[P:MASTER]"), ("fw2", "[S:BACKUP]")] {
        let file = lab.path(fw, "/run/ns-ha/prompt");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("{want}\n"));
        let out = std::process::Command::new("bash")
            .args([
                "-c",
                "PS1='fw# '; . \"$0\"; eval \"$PROMPT_COMMAND\"; printf '%s' \"${PS1@P}\"",
                snippet.to_str().unwrap(),
            ])
            .env("NS_HA_PROMPT_FILE", &file)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{want} fw# "));
    }
}
