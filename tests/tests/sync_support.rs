//! Helpers shared by the `sync_*` lab tests (included with `#[path]`; as a
//! test target of its own it holds no tests).
#![allow(
    dead_code,
    reason = "each test binary uses a part of the shared helpers"
)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::process::Output;

use ns_ha_tests::cluster::{pair, tool};
use ns_ha_tests::{Lab, SshServer};

/// Paths the sync tests play with: all inside the OpenWrt default set.
pub const TOPS: &[&str] = &[
    "/etc/acme",
    "/etc/nginx",
    "/etc/config/firewall",
    "/etc/config/dhcp",
];

/// `ns-ha-sync --root <node root> ARGS` inside the node's namespace.
pub fn sync(lab: &Lab, node: &str, args: &[&str]) -> Output {
    tool(lab, node, "ns-ha-sync", args)
}

/// Like [`sync`], panicking unless it exits 0; returns stdout.
pub fn sync_ok(lab: &Lab, node: &str, args: &[&str]) -> String {
    let out = sync(lab, node, args);
    assert!(
        out.status.success(),
        "[{node}] ns-ha-sync {args:?}: {}",
        describe(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// A paired, enabled lab (fw1 MASTER) whose nodes are OpenWrt-like, with a
/// first tree on fw1; SSH server as in [`Lab::up`] (the environment's).
pub fn paired_lab() -> Lab {
    paired_lab_with(SshServer::from_env())
}

/// [`paired_lab`] with `server` as both firewalls' SSH server.
pub fn paired_lab_with(server: SshServer) -> Lab {
    let lab = Lab::up_with(server);
    pair(&lab);
    for node in ["fw1", "fw2"] {
        lab.write(node, "/etc/openwrt_release", "DISTRIB_ID='OpenWrt'\n");
    }
    seed(&lab, "fw1");
    settle(&lab);
    lab
}

/// Wait for the role engine of fw1 to finish its MASTER transition (which
/// pushes once), so that the test's own pushes do not race with it.
pub fn settle(lab: &Lab) {
    let _ = tool(lab, "fw1", "ns-ha-role", &["apply", "--wait", "60"]);
}

pub fn seed(lab: &Lab, node: &str) {
    lab.write(
        node,
        "/etc/config/firewall",
        "config defaults\n\toption input ACCEPT\n",
    );
    lab.write(node, "/etc/config/dhcp", "config dnsmasq\n");
    lab.write(
        node,
        "/etc/acme/example.org/cert.pem",
        "-----BEGIN CERTIFICATE-----\n",
    );
    lab.write(
        node,
        "/etc/acme/example.org/key.pem",
        "-----BEGIN PRIVATE KEY-----\n",
    );
    lab.write(
        node,
        "/etc/nginx/conf.d/ui.conf",
        "server { listen 443; }\n",
    );
    lab.write(node, "/etc/nginx/conf.d/old.conf", "# to be deleted\n");
}

/// Kind, content (or link target), mode and owner of every path under [`TOPS`].
pub type Tree = BTreeMap<String, (char, Vec<u8>, u32, u32)>;

pub fn tree(lab: &Lab, node: &str) -> Tree {
    let root = lab.root(node);
    let mut out = BTreeMap::new();
    for top in TOPS {
        let mut stack = vec![root.join(top.trim_start_matches('/'))];
        while let Some(p) = stack.pop() {
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let rel = p
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let v = if md.is_dir() {
                for e in std::fs::read_dir(&p).unwrap() {
                    stack.push(e.unwrap().path());
                }
                ('d', Vec::new(), md.mode() & 0o7777, md.uid())
            } else if md.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                (
                    'l',
                    t.to_string_lossy().into_owned().into_bytes(),
                    0,
                    md.uid(),
                )
            } else {
                (
                    'f',
                    std::fs::read(&p).unwrap(),
                    md.mode() & 0o7777,
                    md.uid(),
                )
            };
            out.insert(rel, v);
        }
    }
    out
}

/// The second generation of the test tree: create, change, chmod, delete, symlink.
pub fn change(lab: &Lab, node: &str) {
    lab.write(
        node,
        "/etc/config/firewall",
        "config defaults\n\toption input DROP\n",
    );
    lab.write(
        node,
        "/etc/nginx/conf.d/new.conf",
        "server { listen 8443; }\n",
    );
    std::fs::remove_file(lab.path(node, "/etc/nginx/conf.d/old.conf")).unwrap();
    let key = lab.path(node, "/etc/acme/example.org/key.pem");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("ui.conf", lab.path(node, "/etc/nginx/conf.d/default.conf"))
        .unwrap();
}

/// The generation fw2 holds, from `status --json`.
pub fn generation(lab: &Lab, node: &str) -> u64 {
    let out = sync_ok(lab, node, &["--json", "status", "--local"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["node"]["generation"].as_u64().unwrap()
}

/// One frame of the sync channel: 4-byte big-endian length, JSON, then `blob`.
pub fn frame_with(msg: &serde_json::Value, blob: &[u8]) -> Vec<u8> {
    let body = serde_json::to_vec(msg).unwrap();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out.extend_from_slice(blob);
    out
}

/// The reply frames in what a receiver wrote to its stdout (the block
/// signature after a `signature` reply, `data.len` bytes, is skipped).
pub fn replies_of(bytes: &[u8]) -> Vec<serde_json::Value> {
    let mut replies = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 4 {
        let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        let reply: serde_json::Value = serde_json::from_slice(&rest[4..4 + n]).unwrap();
        let blob = reply["data"]["len"].as_u64().unwrap_or(0) as usize;
        replies.push(reply);
        rest = &rest[(4 + n + blob).min(rest.len())..];
    }
    replies
}

// --- raw sessions: frames written by hand to fw2's forced command ---------

/// The sha256 (hex) of `data`, by `sha256sum`.
pub fn sha256(lab: &Lab, data: &[u8]) -> String {
    let p = lab.dir().join("sha-input");
    std::fs::write(&p, data).unwrap();
    let out = std::process::Command::new("sha256sum")
        .arg(&p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The pair's cluster id, from fw1's cluster.json.
pub fn cluster_id(lab: &Lab) -> String {
    let c: serde_json::Value =
        serde_json::from_str(&lab.read("fw1", "/etc/ns-ha/cluster.json")).unwrap();
    c["cluster_id"].as_str().unwrap().to_string()
}

/// The `hello` frame of this release for cluster `id`.
pub fn hello(id: &str) -> Vec<u8> {
    frame_with(
        &serde_json::json!({"op": "hello", "protocol": ns_ha_common::proto::PROTOCOL_VERSION, "version": env!("CARGO_PKG_VERSION"), "cluster_id": id}),
        b"",
    )
}

/// A `begin` frame of `generation` (based on the one before) with `changes`.
pub fn begin(id: &str, generation: u64, changes: serde_json::Value) -> Vec<u8> {
    frame_with(
        &serde_json::json!({"op": "begin", "cluster_id": id, "generation": generation,
                "base_generation": generation - 1, "force": false, "changes": changes, "deletes": []}),
        b"",
    )
}

/// Send raw frames through ssh with `key` to fw2's forced command; the
/// receiver's exit code and replies.
pub fn raw_session(lab: &Lab, key: &str, frames: &[Vec<u8>]) -> (i32, Vec<serde_json::Value>) {
    let input = lab.dir().join("frames.bin");
    let output = lab.dir().join("replies.bin");
    std::fs::write(&input, frames.concat()).unwrap();
    let script = format!(
        "ssh -T -i {key} -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
         -o LogLevel=ERROR root@{} receive < {} > {}",
        ns_ha_tests::net::FW2_HA,
        input.display(),
        output.display()
    );
    let out = lab.sh("fw1", &script);
    let bytes = std::fs::read(&output).unwrap_or_default();
    (out.status.code().unwrap_or(-1), replies_of(&bytes))
}
