//! ns-ha-role as a program, without the lab: a temp node root with a cluster
//! config and OpenWrt-style init scripts that are small shell scripts (one
//! of them hangs on start). Checks the issue's engine-level acceptance:
//! concurrent out-of-order notify processes converge on the last recorded
//! state with one serialized reconciler, a hanging start is timed out and
//! reported while the other services start, failed actions are retried,
//! sync-applied re-disables cron jobs, maintenance persists in its track file.
//! It needs no lab, so it lives here where `make unit` runs it.

use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Output};

/// A node root in a temp dir; `ns-ha-role` runs against it.
struct Node {
    dir: tempfile::TempDir,
}

const FAKE_SERVICE: &str = r#"#!/bin/sh
# Fake init script: the service "runs" while its state file exists.
S="$(cd "$(dirname "$0")/../.." && pwd)/run/fake-$(basename "$0")"
case "$1" in
start) touch "$S" ;;
stop) rm -f "$S" ;;
status | reload) [ -e "$S" ] || exit 3 ;;
*) exit 2 ;;
esac
"#;

const HANGING_SERVICE: &str = r#"#!/bin/sh
# Fake init script whose start never returns.
case "$1" in
start) exec sleep 600 ;;
status) exit 3 ;;
*) exit 0 ;;
esac
"#;

impl Node {
    fn new(role: &str, roles: Value) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = Node { dir };
        let cluster = json!({
            "schema_version": 1,
            "cluster_id": "0123456789abcdef0123456789abcdef",
            "enabled": true,
            "ha": {"interface": "ha0", "primary_address": "10.99.0.1/24",
                   "backup_address": "10.99.0.2/24", "heartbeat_vip": "10.99.0.254"},
            "lans": [{"interface": "lan0", "vrid": 51, "primary_address": "10.99.1.1/24",
                      "backup_address": "10.99.1.2/24", "vips": ["10.99.1.254/24"]}],
            "roles": roles,
        });
        let node_cfg = json!({"schema_version": 1, "role": role, "peer_address": "10.99.0.2"});
        node.write("etc/ns-ha/cluster.json", &cluster.to_string());
        node.write("etc/ns-ha/node.json", &node_cfg.to_string());
        std::fs::create_dir_all(node.path("run")).expect("run");
        node
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
    }

    fn service(&self, name: &str, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        let rel = format!("etc/init.d/{name}");
        self.write(&rel, script);
        std::fs::set_permissions(self.path(&rel), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }

    fn running(&self, name: &str) -> bool {
        self.path(&format!("run/fake-{name}")).exists()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ns-ha-role"));
        c.arg("--root").arg(self.dir.path()).args(args);
        // No ns-ha-sync next to the binary for these tests: the push is skipped.
        c.env("NS_HA_BIN_DIR", self.dir.path());
        c
    }

    fn role(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run ns-ha-role")
    }

    fn status(&self) -> Value {
        let out = self.role(&["status", "--json", "--history", "50"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }
}

fn master_roles(services: &[&str]) -> Value {
    json!({
        "check_vips": false,
        "action_timeout_ms": 1500,
        "master": {"start": services, "push_sync": false, "cron_enable": ["send-heartbeat"]},
        "backup": {"stop": services, "cron_disable": ["send-heartbeat"]},
        "fault": {"stop": services},
        "sync_applied": {"cron_disable": ["send-heartbeat"]},
    })
}

fn outcome(status: &Value, action: &str) -> Vec<String> {
    status["history"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["actions"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["action"] == action)
        .map(|a| a["outcome"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_hanging_start_is_timed_out_and_reported_while_the_others_start() {
    let node = Node::new("primary", master_roles(&["svc-a", "svc-hang", "svc-b"]));
    node.service("svc-a", FAKE_SERVICE);
    node.service("svc-b", FAKE_SERVICE);
    node.service("svc-hang", HANGING_SERVICE);
    let start = std::time::Instant::now();
    let out = node.role(&["notify", "GROUP", "ns_ha", "MASTER", "200"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        start.elapsed().as_secs() < 30,
        "the hanging start held the reconciler for {:?}",
        start.elapsed()
    );
    assert!(
        node.running("svc-a") && node.running("svc-b"),
        "the other services did not start"
    );
    let s = node.status();
    assert_eq!(s["applied"]["label"], "MASTER");
    let pending = s["applied"]["pending"].as_array().expect("pending");
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["action"], "service svc-hang running");
    assert_eq!(pending[0]["outcome"], "timed-out");
    let human = String::from_utf8_lossy(&node.role(&["status"]).stdout).into_owned();
    assert!(
        human.contains("service svc-hang running timed-out"),
        "{human}"
    );

    // `apply` retries it and says so with the Timeout exit code; once the
    // script is fixed, the retry succeeds and nothing is pending.
    let out = node.role(&["apply"]);
    assert_eq!(
        out.status.code(),
        Some(11),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("svc-hang"));
    node.service("svc-hang", FAKE_SERVICE);
    let out = node.role(&["apply"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(node.running("svc-hang"));
    assert_eq!(node.status()["applied"]["pending"], json!([]));
}

/// A deterministic shuffle (no rand crate): 20 MASTER/BACKUP words.
fn shuffled_states(seed: u64) -> Vec<&'static str> {
    let mut v: Vec<&str> = (0..20)
        .map(|i| if i % 2 == 0 { "MASTER" } else { "BACKUP" })
        .collect();
    let mut x = seed;
    for i in (1..v.len()).rev() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        v.swap(i, (x >> 33) as usize % (i + 1));
    }
    v
}

#[test]
fn twenty_concurrent_notify_processes_converge_on_the_last_recorded_state() {
    for seed in [1u64, 7, 42] {
        let node = Node::new("primary", master_roles(&["svc-a", "svc-b"]));
        node.service("svc-a", FAKE_SERVICE);
        node.service("svc-b", FAKE_SERVICE);
        let children: Vec<_> = shuffled_states(seed)
            .into_iter()
            .map(|st| {
                node.cmd(&["notify", "GROUP", "ns_ha", st, "100"])
                    .spawn()
                    .expect("spawn notify")
            })
            .collect();
        for mut c in children {
            assert!(c.wait().expect("wait").success());
        }
        let events: Value = serde_json::from_str(
            &std::fs::read_to_string(node.path("run/ns-ha/role/events.json")).expect("events"),
        )
        .expect("events JSON");
        let last = events["recent"]
            .as_array()
            .expect("recent")
            .iter()
            .max_by_key(|e| e["seq"].as_u64())
            .expect("an event")["state"]
            .as_str()
            .expect("state")
            .to_string();
        let s = node.status();
        assert_eq!(
            s["applied"]["handled_seq"], events["seq"],
            "an event was left unhandled"
        );
        assert_eq!(s["applied"]["label"], last.as_str(), "seed {seed}");
        let want = last == "MASTER";
        assert_eq!(node.running("svc-a"), want, "seed {seed}: svc-a");
        assert_eq!(node.running("svc-b"), want, "seed {seed}: svc-b");
        // Serialized: passes never overlapped, so the history is a chain.
        let hist = s["history"].as_array().expect("history");
        for w in hist.windows(2) {
            assert_eq!(w[0]["to"], w[1]["from"], "history is not a chain: {hist:?}");
        }
    }
}

#[test]
fn sync_applied_re_disables_cron_jobs_and_backup_stops_master_services() {
    let node = Node::new("backup", master_roles(&["svc-a"]));
    node.service("svc-a", FAKE_SERVICE);
    let tab = "*/5 * * * * /usr/sbin/send-heartbeat\n0 1 * * * /usr/sbin/logrotate\n";
    node.write("etc/crontabs/root", tab);
    let out = node.role(&["notify", "GROUP", "ns_ha", "MASTER", "100"]);
    assert!(out.status.success());
    assert!(node.running("svc-a"));
    let out = node.role(&["notify", "GROUP", "ns_ha", "BACKUP", "100"]);
    assert!(out.status.success());
    assert!(!node.running("svc-a"));
    let crontab = || std::fs::read_to_string(node.path("etc/crontabs/root")).expect("crontab");
    assert!(
        crontab().starts_with("#ns-ha-disabled# */5"),
        "{}",
        crontab()
    );
    assert!(crontab().contains("\n0 1 * * * /usr/sbin/logrotate\n"));
    // A sync brings the master's crontab (job enabled) back.
    node.write("etc/crontabs/root", tab);
    let out = node.role(&["sync-applied", "--changed", "/etc/crontabs/root"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        crontab().starts_with("#ns-ha-disabled# */5"),
        "{}",
        crontab()
    );
    let s = node.status();
    assert_eq!(
        outcome(&s, "cron jobs"),
        ["unchanged", "changed", "changed"]
    );
}

#[test]
fn maintenance_is_a_persistent_track_file() {
    let node = Node::new("primary", master_roles(&[]));
    let track = |n: &Node| {
        std::fs::read_to_string(n.path("etc/ns-ha/maintenance.track")).unwrap_or_default()
    };
    let out = node.role(&["maintenance", "on", "--wait", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(track(&node).trim(), "1");
    assert_eq!(node.status()["maintenance"], true);
    let out = node.role(&["--json", "maintenance", "off", "--wait", "0"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["maintenance"], false);
    assert_eq!(track(&node).trim(), "0");
}

#[test]
fn bad_input_and_bad_config_get_their_exit_codes() {
    let node = Node::new("primary", master_roles(&[]));
    let out = node.role(&["notify", "GROUP", "ns_ha", "LEADER", "100"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("ns-ha-role: ") && err.lines().count() == 1,
        "{err}"
    );
    let node = Node::new("primary", json!({"master": {"strat": []}}));
    let out = node.role(&["apply"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node = Node::new("primary", json!({"backup": {"links_down": ["lan*"]}}));
    let out = node.role(&["apply"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("keepalived tracks"));
}

#[test]
fn defaults_are_a_valid_roles_section() {
    let out = Command::new(env!("CARGO_BIN_EXE_ns-ha-role"))
        .arg("defaults")
        .output()
        .expect("run");
    assert!(out.status.success());
    let roles: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    for svc in [
        "dnsmasq",
        "openvpn",
        "swanctl",
        "strongswan",
        "mwan3",
        "snort",
        "adblock",
        "banip",
        "dedalo",
        "netifyd",
        "ddns",
        "ns-plug",
        "acme",
    ] {
        assert!(
            roles["master"]["start"]
                .as_array()
                .expect("start")
                .contains(&json!(svc)),
            "{svc}"
        );
        assert!(
            roles["backup"]["stop"]
                .as_array()
                .expect("stop")
                .contains(&json!(svc)),
            "{svc}"
        );
    }
    assert_eq!(
        roles["master"]["conntrackd"],
        json!(["commit", "flush", "resync", "bulk-send"])
    );
    assert_eq!(
        roles["backup"]["conntrackd"],
        json!(["shorten-timers", "request-resync"])
    );
    // The printed defaults are accepted back as the roles section.
    let node = Node::new("primary", roles);
    let out = node.role(&["apply"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
