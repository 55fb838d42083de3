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

/// The reply frames in what a receiver wrote to its stdout.
pub fn replies_of(bytes: &[u8]) -> Vec<serde_json::Value> {
    let mut replies = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 4 {
        let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        replies.push(serde_json::from_slice(&rest[4..4 + n]).unwrap());
        rest = &rest[4 + n..];
    }
    replies
}
