//! `ns-ha-check metrics`: the node's status in Prometheus text format.
//!
//! Every value comes from what `status` collects (so the two never
//! disagree) plus the monitor's state file (checks, priority, alerts) and
//! the role engine's instances. Written to stdout, or atomically as
//! `ns-ha.prom` into a node_exporter textfile directory (`--textfile-dir`,
//! or `health.metrics_dir`), where a half-written file is never read.

use anyhow::Result;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ns_ha_common::fsutil::atomic_write;

use crate::keepalived_stats::{InstanceCounters, InstanceStats};
use crate::status::NodeStatus;

/// The file name in a textfile directory.
pub const TEXTFILE: &str = "ns-ha.prom";

/// Text being built, one metric family at a time.
#[derive(Default)]
struct Families {
    text: String,
}

impl Families {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let mut l = String::new();
        if !labels.is_empty() {
            let parts: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            l = format!("{{{}}}", parts.join(","));
        }
        let _ = writeln!(self.text, "{name}{l} {}", number(value));
    }
    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// A label value escaped as the text format wants (`\\`, `\"`, `\n`).
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn b(v: bool) -> f64 {
    if v {
        1.0
    } else {
        0.0
    }
}

/// Render the metrics of a node: its status, its VRRP instances as the role
/// engine last heard them (`name` -> state), and the monitor's state file.
pub fn render(
    s: &NodeStatus,
    instances: &BTreeMap<String, String>,
    health: Option<&serde_json::Value>,
    keepalived: &KeepalivedDump,
    now_ms: u64,
) -> String {
    let mut f = Families::default();
    f.family(
        "ns_ha_node_info",
        "gauge",
        "This node's role and cluster (always 1).",
    );
    f.sample(
        "ns_ha_node_info",
        &[
            ("role", s.node_role.as_deref().unwrap_or("none")),
            ("cluster_id", s.cluster_id.as_deref().unwrap_or("")),
        ],
        1.0,
    );
    f.one(
        "ns_ha_enabled",
        "gauge",
        "1 if HA is enabled.",
        b(s.enabled),
    );
    f.one(
        "ns_ha_maintenance",
        "gauge",
        "1 if the node is in maintenance.",
        b(s.maintenance),
    );
    if let Some(k) = s.keepalived_running {
        f.one(
            "ns_ha_keepalived_running",
            "gauge",
            "1 if keepalived runs.",
            b(k),
        );
    }
    f.family(
        "ns_ha_vrrp_state",
        "gauge",
        "The node's VRRP state by the VIPs it holds (1 for the current state).",
    );
    for st in ["MASTER", "BACKUP", "MIXED"] {
        let cur = s.vrrp_state.map(|v| v.as_str()) == Some(st);
        f.sample("ns_ha_vrrp_state", &[("state", st)], b(cur));
    }
    f.family(
        "ns_ha_vrrp_instance_state",
        "gauge",
        "Each VRRP instance's last state as keepalived reported it (1 for the current state).",
    );
    for (name, state) in instances {
        f.sample(
            "ns_ha_vrrp_instance_state",
            &[("instance", name), ("state", state)],
            1.0,
        );
    }
    f.family("ns_ha_vip_held", "gauge", "1 if this node holds the VIP.");
    for v in &s.vips {
        f.sample(
            "ns_ha_vip_held",
            &[("vip", &v.vip.to_string()), ("interface", &v.interface)],
            b(v.held),
        );
    }
    if let Some(t) = s.transitions.last() {
        f.one(
            "ns_ha_last_transition_duration_seconds",
            "gauge",
            "How long the role engine took for the last transition.",
            t.duration_ms as f64 / 1000.0,
        );
        f.one(
            "ns_ha_last_transition_timestamp_seconds",
            "gauge",
            "When the last transition started (Unix time).",
            t.unix_ms as f64 / 1000.0,
        );
        f.one(
            "ns_ha_seconds_since_last_transition",
            "gauge",
            "Seconds since the last transition started.",
            now_ms.saturating_sub(t.unix_ms) as f64 / 1000.0,
        );
    }
    f.one(
        "ns_ha_role_actions_failing",
        "gauge",
        "Role actions that failed and wait for a retry.",
        s.role_engine.pending.len() as f64,
    );
    let sy = &s.sync;
    f.one(
        "ns_ha_sync_generation",
        "gauge",
        "Config generation this node holds.",
        sy.generation as f64,
    );
    if let Some(l) = sy.lag_secs {
        f.one(
            "ns_ha_sync_lag_seconds",
            "gauge",
            "Seconds since the last successful sync.",
            l as f64,
        );
    }
    if let Some(ok) = sy.last_attempt_ok {
        f.one(
            "ns_ha_sync_last_attempt_ok",
            "gauge",
            "1 if the last sync attempt succeeded.",
            b(ok),
        );
    }
    f.family(
        "ns_ha_sync_last_error_info",
        "gauge",
        "The last sync attempt's error (1 while there is one).",
    );
    if let Some(e) = &sy.error {
        f.sample("ns_ha_sync_last_error_info", &[("error", e)], 1.0);
    }
    if let Some(h) = health {
        health_metrics(&mut f, h, now_ms);
    }
    keepalived_metrics(&mut f, keepalived);
    f.text
}

/// keepalived's own dump: `Ok(None)` when keepalived does not run, `Err`
/// with the reason when it runs and did not dump.
pub type KeepalivedDump = Result<Option<Vec<InstanceStats>>, String>;

/// The counters keepalived keeps per instance, as `_total` counters.
/// Reads one counter of an instance.
type Counter = fn(&InstanceCounters) -> u64;

const KEEPALIVED_COUNTERS: &[(&str, &str, Counter)] = &[
    (
        "ns_ha_keepalived_adverts_received_total",
        "VRRP adverts keepalived received on the instance.",
        |c| c.advert_rcvd,
    ),
    (
        "ns_ha_keepalived_adverts_sent_total",
        "VRRP adverts keepalived sent on the instance.",
        |c| c.advert_sent,
    ),
    (
        "ns_ha_keepalived_became_master_total",
        "Times the instance became MASTER since keepalived started.",
        |c| c.become_master,
    ),
    (
        "ns_ha_keepalived_released_master_total",
        "Times the instance left MASTER since keepalived started.",
        |c| c.release_master,
    ),
    (
        "ns_ha_keepalived_priority_zero_received_total",
        "Priority-0 adverts (the master leaving) received.",
        |c| c.pri_zero_rcvd,
    ),
    (
        "ns_ha_keepalived_priority_zero_sent_total",
        "Priority-0 adverts (leaving MASTER) sent.",
        |c| c.pri_zero_sent,
    ),
];

/// Packet and authentication errors, one counter with a `kind` label.
const KEEPALIVED_ERRORS: &[(&str, Counter)] = &[
    ("packet_length", |c| c.packet_len_err),
    ("advert_interval", |c| c.advert_interval_err),
    ("ip_ttl", |c| c.ip_ttl_err),
    ("invalid_type", |c| c.invalid_type_rcvd),
    ("address_list", |c| c.addr_list_err),
    ("invalid_auth_type", |c| c.invalid_authtype),
    ("auth_type_mismatch", |c| c.authtype_mismatch),
    ("auth_failure", |c| c.auth_failure),
];

fn keepalived_metrics(f: &mut Families, dump: &KeepalivedDump) {
    let stats = match dump {
        Ok(None) => return,
        Ok(Some(s)) => s,
        Err(e) => {
            f.family(
                "ns_ha_keepalived_stats_error_info",
                "gauge",
                "Why keepalived's counters are missing (1 while they are).",
            );
            f.sample("ns_ha_keepalived_stats_error_info", &[("error", e)], 1.0);
            return;
        }
    };
    for (name, help, get) in KEEPALIVED_COUNTERS {
        f.family(name, "counter", help);
        for i in stats {
            f.sample(name, &[("instance", &i.name)], get(&i.counters) as f64);
        }
    }
    let errors = "ns_ha_keepalived_errors_total";
    f.family(
        errors,
        "counter",
        "Adverts keepalived dropped, by reason (packet and authentication errors).",
    );
    for i in stats {
        for (kind, get) in KEEPALIVED_ERRORS {
            f.sample(
                errors,
                &[("instance", &i.name), ("kind", kind)],
                get(&i.counters) as f64,
            );
        }
    }
    let prio = "ns_ha_keepalived_effective_priority";
    f.family(
        prio,
        "gauge",
        "The instance's priority after tracking (health, interfaces).",
    );
    for i in stats {
        if let Some(p) = i.effective_priority {
            f.sample(prio, &[("instance", &i.name)], p as f64);
        }
    }
}

fn health_metrics(f: &mut Families, h: &serde_json::Value, now_ms: u64) {
    let num = |v: &serde_json::Value| v.as_f64();
    f.one(
        "ns_ha_monitor_state_age_seconds",
        "gauge",
        "Seconds since the health monitor last wrote its state (stale: the monitor is not running).",
        now_ms.saturating_sub(h["updated_ms"].as_u64().unwrap_or(0)) as f64 / 1000.0,
    );
    if let Some(p) = num(&h["priority"]) {
        f.one(
            "ns_ha_health_priority",
            "gauge",
            "The VRRP priority health asks for.",
            p,
        );
    }
    f.one(
        "ns_ha_health_fit",
        "gauge",
        "1 if health lets this node serve as MASTER.",
        b(h["fit"].as_bool() == Some(true)),
    );
    if let Some(t) = num(&h["transitions"]) {
        f.one(
            "ns_ha_transitions_total",
            "counter",
            "MASTER/BACKUP changes seen by the monitor since it started.",
            t,
        );
    }
    f.one(
        "ns_ha_split_brain",
        "gauge",
        "1 while this node is MASTER and another host answers ARP for one of its LAN VIPs.",
        b(h["split_brain"].is_string()),
    );
    for (name, field, help) in [
        (
            "ns_ha_alerts_sent_total",
            "alerts_sent",
            "Alert hook runs that succeeded.",
        ),
        (
            "ns_ha_alerts_failed_total",
            "alerts_failed",
            "Alert hook runs that failed.",
        ),
    ] {
        if let Some(v) = num(&h[field]) {
            f.one(name, "counter", help, v);
        }
    }
    let checks: Vec<&serde_json::Value> = h["checks"]
        .as_object()
        .map(|m| m.values().collect())
        .unwrap_or_default();
    f.family(
        "ns_ha_health_check_state",
        "gauge",
        "Each health check's state (1 for the current state).",
    );
    for c in &checks {
        let id = c["id"].as_str().unwrap_or("");
        for st in ["ok", "failing", "unknown", "not-applicable"] {
            let cur = c["state"].as_str() == Some(st);
            f.sample(
                "ns_ha_health_check_state",
                &[("check", id), ("state", st)],
                b(cur),
            );
        }
    }
    f.family(
        "ns_ha_health_check_latency_seconds",
        "gauge",
        "The last good round's latency of each check.",
    );
    for c in &checks {
        if let Some(l) = num(&c["last_latency_ms"]) {
            let id = c["id"].as_str().unwrap_or("");
            f.sample(
                "ns_ha_health_check_latency_seconds",
                &[("check", id)],
                l / 1000.0,
            );
        }
    }
    f.family(
        "ns_ha_health_check_max_latency_seconds",
        "gauge",
        "The slowest good round of each check since the monitor started.",
    );
    for c in &checks {
        if let Some(l) = num(&c["max_latency_ms"]) {
            let id = c["id"].as_str().unwrap_or("");
            f.sample(
                "ns_ha_health_check_max_latency_seconds",
                &[("check", id)],
                l / 1000.0,
            );
        }
    }
    f.family(
        "ns_ha_health_check_failed_rounds_total",
        "counter",
        "Failed rounds of each check since the monitor started.",
    );
    for c in &checks {
        let id = c["id"].as_str().unwrap_or("");
        f.sample(
            "ns_ha_health_check_failed_rounds_total",
            &[("check", id)],
            num(&c["failed_rounds"]).unwrap_or(0.0),
        );
    }
}

/// Write `text` atomically as `ns-ha.prom` in `dir`.
pub fn write_textfile(dir: &Path, text: &str) -> Result<PathBuf> {
    let p = dir.join(TEXTFILE);
    atomic_write(&p, text.as_bytes(), 0o644)?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_numbers_plain() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.25), "0.25");
        let mut f = Families::default();
        f.one("x_total", "counter", "X.", 2.0);
        f.family("y", "gauge", "Y.");
        f.sample("y", &[("a", "1"), ("b", "q\"")], 0.5);
        assert_eq!(
            f.text,
            "# HELP x_total X.\n# TYPE x_total counter\nx_total 2\n# HELP y Y.\n# TYPE y gauge\ny{a=\"1\",b=\"q\\\"\"} 0.5\n"
        );
    }

    #[test]
    fn keepalived_counters_are_labelled_by_instance_and_errors_by_kind() {
        let dump = crate::keepalived_stats::parse_dump(
            r#"[{"data":{"iname":"lan_lan0","effective_priority":150},"stats":{"advert_rcvd":3,"advert_sent":40,"become_master":2,"release_master":1,"packet_len_err":0,"advert_interval_err":0,"ip_ttl_err":7,"invalid_type_rcvd":0,"addr_list_err":0,"invalid_authtype":0,"authtype_mismatch":0,"auth_failure":0,"pri_zero_rcvd":1,"pri_zero_sent":0}}]"#,
        )
        .unwrap();
        let mut f = Families::default();
        keepalived_metrics(&mut f, &Ok(Some(dump)));
        for line in [
            "ns_ha_keepalived_adverts_sent_total{instance=\"lan_lan0\"} 40\n",
            "ns_ha_keepalived_became_master_total{instance=\"lan_lan0\"} 2\n",
            "ns_ha_keepalived_errors_total{instance=\"lan_lan0\",kind=\"ip_ttl\"} 7\n",
            "ns_ha_keepalived_effective_priority{instance=\"lan_lan0\"} 150\n",
            "# TYPE ns_ha_keepalived_adverts_received_total counter\n",
        ] {
            assert!(f.text.contains(line), "{line} not in:\n{}", f.text);
        }
        let mut none = Families::default();
        keepalived_metrics(&mut none, &Ok(None));
        assert_eq!(none.text, "");
        let mut err = Families::default();
        keepalived_metrics(&mut err, &Err("no dump".into()));
        assert!(err
            .text
            .contains("ns_ha_keepalived_stats_error_info{error=\"no dump\"} 1\n"));
    }
}
