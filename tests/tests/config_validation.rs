//! Issue 8 item 6: a cluster config that would fail later is refused where
//! it enters, through the same checks (`ClusterConfig::validate` in common)
//! at every entry point. Lab-free, against the real binaries:
//! - loading: a hand-edited `cluster.json` with a `roles` section the role
//!   engine cannot run is refused by the first tool that reads it;
//! - `install-cluster` on the backup (`ns-ha-sync receive`, the forced
//!   command): a config with a relative `sync.state_dir` is refused and
//!   nothing is written.
//!
//! (The `ns-ha-init add-lan` entry point: `ns-ha-init/tests/validation.rs`.)

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use ns_ha_tests::bin;
use serde_json::{json, Value};

const CLUSTER_ID: &str = "0123456789abcdef0123456789abcdef";

/// A valid paired cluster with one LAN (as `common::fixtures::sample_cluster`).
fn cluster() -> Value {
    json!({
        "schema_version": 1,
        "cluster_id": CLUSTER_ID,
        "enabled": false,
        "ha": {
            "interface": "ha0",
            "primary_address": "10.99.0.1/24",
            "backup_address": "10.99.0.2/24",
            "heartbeat_vip": "10.99.0.254"
        },
        "lans": [{
            "interface": "lan0",
            "vrid": 51,
            "primary_address": "10.99.1.1/24",
            "backup_address": "10.99.1.2/24",
            "vips": ["10.99.1.254/24"]
        }]
    })
}

fn write_node(root: &Path, role: &str, peer: &str) {
    let dir = root.join("etc/ns-ha");
    std::fs::create_dir_all(&dir).unwrap();
    let node = json!({"schema_version": 1, "role": role, "peer_address": peer});
    std::fs::write(dir.join("node.json"), node.to_string()).unwrap();
}

#[test]
fn loading_refuses_a_roles_section_the_role_engine_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    write_node(dir.path(), "primary", "10.99.0.2");
    let mut c = cluster();
    // lan0 is an HA LAN: setting it down would put the node in FAULT, and
    // every reconcile pass refused it before recording anything.
    c["roles"] = json!({"backup": {"links_down": ["lan*"]}});
    let path = dir.path().join("etc/ns-ha/cluster.json");
    std::fs::write(&path, c.to_string()).unwrap();
    let before = std::fs::read(&path).unwrap();
    let out = Command::new(bin("ns-ha-init"))
        .arg("--root")
        .arg(dir.path())
        .arg("show-config")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "stderr: {stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("ns-ha-init:"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("roles: backup: links_down 'lan*' matches lan0"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

/// One frame of the sync channel: 4-byte big-endian length, JSON.
fn send(w: &mut impl Write, v: &Value) {
    let body = serde_json::to_vec(v).unwrap();
    w.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
    w.write_all(&body).unwrap();
    w.flush().unwrap();
}

fn recv(r: &mut impl Read) -> Value {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn install_cluster_refuses_a_relative_state_dir_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_node(dir.path(), "backup", "10.99.0.1");
    let mut child = Command::new(bin("ns-ha-sync"))
        .arg("--root")
        .arg(dir.path())
        .arg("receive")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to = child.stdin.take().unwrap();
    let mut from = child.stdout.take().unwrap();
    send(
        &mut to,
        &json!({"op": "hello", "protocol": ns_ha_common::proto::PROTOCOL_VERSION, "version": env!("CARGO_PKG_VERSION"), "cluster_id": CLUSTER_ID}),
    );
    let hello = recv(&mut from);
    assert_eq!(hello["ok"], true, "{hello}");
    let mut c = cluster();
    c["sync"] = json!({"state_dir": "var/lib/ns-ha/sync"});
    send(&mut to, &json!({"op": "install-cluster", "config": c}));
    let reply = recv(&mut from);
    drop(to);
    let _ = child.wait();
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["code"], 4, "{reply}");
    let error = reply["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("sync.state_dir 'var/lib/ns-ha/sync' is not an absolute path"),
        "{reply}"
    );
    assert!(
        !dir.path().join("etc/ns-ha/cluster.json").exists(),
        "a refused config was installed"
    );
    assert!(!dir.path().join("etc/keepalived").exists());
}
