//! `doctor` on one pair with three faults at once (issue 7's acceptance:
//! the findings `doctor` made before it read the tools' JSON): an edit on
//! the backup, a failed role action and a hand-edited keepalived.conf. Each
//! is a problem with its fix, in the same run, and fixing them brings the
//! exit code back to 0.

use serde_json::Value;
use std::time::Duration;

use ns_ha_tests::cluster::{configure_dnsmasq, pair, tool, tool_ok};
use ns_ha_tests::{wait_until, Lab};

fn doctor(lab: &Lab) -> (Option<i32>, Value) {
    let out = tool(lab, "fw1", "ns-ha-check", &["--json", "doctor"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let doc =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (out.status.code(), doc)
}

fn finding(doc: &Value, check: &str) -> Value {
    doc["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["check"] == check)
        .cloned()
        .unwrap_or_else(|| panic!("no '{check}' finding: {doc}"))
}

#[test]
fn a_backup_edit_a_failed_action_and_a_stale_keepalived_conf_are_each_found() {
    let lab = Lab::up();
    configure_dnsmasq(&lab);
    pair(&lab);
    // A first generation, so the backup has a baseline to drift from.
    let dnsmasq_conf = format!("{}no-hosts\n", lab.read("fw1", "/etc/dnsmasq.conf"));
    lab.write("fw1", "/etc/dnsmasq.conf", &dnsmasq_conf);
    tool_ok(&lab, "fw1", "ns-ha-sync", &["push"]);
    assert!(
        wait_until(Duration::from_secs(15), Duration::from_millis(100), || lab
            .status("fw1", "dnsmasq")),
        "the MASTER role did not start dnsmasq on fw1"
    );
    let (code, doc) = doctor(&lab);
    assert_eq!(code, Some(0), "a fresh pair is healthy: {doc}");

    // 1. An edit on the backup.
    lab.write("fw2", "/etc/dnsmasq.conf", "edited on the backup\n");
    // 2. A failed action: dnsmasq stopped without its config, apply cannot start it.
    std::fs::remove_file(lab.path("fw1", "/etc/dnsmasq.conf")).expect("remove dnsmasq.conf");
    lab.stop("fw1", "dnsmasq");
    let out = tool(&lab, "fw1", "ns-ha-role", &["apply"]);
    assert_eq!(out.status.code(), Some(9), "{out:?}");
    lab.write("fw1", "/etc/dnsmasq.conf", &dnsmasq_conf);
    // 3. keepalived.conf edited by hand.
    let conf = "/etc/keepalived/keepalived.conf";
    let good = lab.read("fw1", conf);
    lab.write("fw1", conf, format!("{good}# edited by hand\n"));

    let (code, doc) = doctor(&lab);
    assert_eq!(code, Some(10), "{doc}");
    let drift = finding(&doc, "backup drift");
    assert_eq!(drift["severity"], "problem", "{drift}");
    assert!(
        drift["detail"]
            .as_str()
            .is_some_and(|d| d.contains("/etc/dnsmasq.conf")),
        "{drift}"
    );
    let role = finding(&doc, "role engine");
    assert_eq!(role["severity"], "problem", "{role}");
    assert!(
        role["detail"]
            .as_str()
            .is_some_and(|d| d.contains("dnsmasq")),
        "{role}"
    );
    let kconf = finding(&doc, "keepalived.conf");
    assert_eq!(kconf["severity"], "problem", "{kconf}");
    assert!(
        kconf["fix"]
            .as_str()
            .is_some_and(|f| f.contains("ns-ha-init enable")),
        "{kconf}"
    );
    for f in [&drift, &role, &kconf] {
        assert!(f["fix"].as_str().is_some_and(|x| !x.is_empty()), "{f}");
    }

    // Each fixed: doctor is clean again.
    lab.write("fw1", conf, good);
    tool_ok(&lab, "fw1", "ns-ha-role", &["apply"]);
    tool_ok(&lab, "fw1", "ns-ha-sync", &["push", "--force"]);
    let (code, doc) = doctor(&lab);
    assert_eq!(code, Some(0), "{doc}");
}
