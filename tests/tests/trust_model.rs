//! Issue 8 items 3 and 10 acceptance: what the primary's key can do on the
//! backup, over the real sshd and forced command (README "Trust model").
//! - the key works only from the primary's HA address (`from=` on its line);
//! - the backup refuses a cluster config whose sync set reaches its keys and
//!   identity (`install-cluster`, exit 7), and the receiver refuses a push of
//!   such paths (exit 7), with nothing written, whatever the primary sends;
//! - a `--root` with characters sh treats specially is refused before
//!   anything is written (lab-free: it never gets as far as sshd).

#[path = "sync_support.rs"]
mod sync_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ns_ha_tests::cluster::{init, init_ok, pair_only};
use ns_ha_tests::{bin, net, Lab, SshServer};
use serde_json::{json, Value};
use sync_support::{code, describe, frame_with, generation, replies_of, sync};

fn frame(msg: &Value) -> Vec<u8> {
    frame_with(msg, b"")
}

fn hello(lab: &Lab) -> Vec<u8> {
    let c: Value = serde_json::from_str(&lab.read("fw1", "/etc/ns-ha/cluster.json")).unwrap();
    frame(
        &json!({"op": "hello", "protocol": ns_ha_common::proto::PROTOCOL_VERSION, "version": env!("CARGO_PKG_VERSION"), "cluster_id": c["cluster_id"]}),
    )
}

/// What one ssh session to fw2's forced command gave: ssh's exit code, its
/// stderr and the receiver's replies.
struct Session {
    status: i32,
    stderr: String,
    replies: Vec<Value>,
}

/// Send `frames` with fw1's pairing key from `node`'s namespace (from the
/// address `bind` if given) to the sshd at `target`.
fn session(lab: &Lab, node: &str, bind: Option<&str>, target: &str, frames: &[Vec<u8>]) -> Session {
    let input = lab.dir().join("trust-frames.bin");
    let output = lab.dir().join("trust-replies.bin");
    std::fs::write(&input, frames.concat()).unwrap();
    let _ = std::fs::remove_file(&output);
    let key = lab.path("fw1", "/etc/ns-ha/id_ed25519");
    let bind = bind.map(|b| format!("-b {b}")).unwrap_or_default();
    let out = lab.sh(
        node,
        &format!(
            "ssh -T {bind} -i {} -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5 root@{target} receive < {} > {}",
            key.display(),
            input.display(),
            output.display()
        ),
    );
    Session {
        status: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        replies: replies_of(&std::fs::read(&output).unwrap_or_default()),
    }
}

/// Where the primary's key must not work from: the LAN client, and fw1
/// itself from its LAN and WAN addresses (node, source address, target).
const ELSEWHERE: [(&str, Option<&str>, &str); 3] = [
    ("lan", None, net::FW2_LAN),
    ("fw1", Some(net::FW1_LAN), net::FW2_LAN),
    ("fw1", Some(net::FW1_WAN), net::FW2_WAN),
];

/// From fw1's HA address (the route to fw2's HA address picks it): accepted.
fn assert_accepted_from_the_ha_link(lab: &Lab, frames: &[Vec<u8>]) {
    let ok = session(lab, "fw1", None, net::FW2_HA, frames);
    assert_eq!(
        ok.replies.first().map(|r| r["ok"].clone()),
        Some(json!(true)),
        "status {} stderr {}",
        ok.status,
        ok.stderr
    );
}

/// The receiver's own refusal of a channel from elsewhere than the
/// primary's HA address: one reply, code 7, naming that address.
fn assert_refused_by_the_receiver(s: &Session) {
    let first = s.replies.first().unwrap_or_else(|| {
        panic!(
            "no reply (status {}): {} {:?}",
            s.status, s.stderr, s.replies
        )
    });
    assert_eq!(first["ok"], json!(false), "{first}");
    assert_eq!(first["code"], json!(7), "{first}");
    assert!(
        first["error"].as_str().is_some_and(|e| e.contains(&format!(
            "only from the primary's HA address {}",
            net::FW1_HA
        ))),
        "{first}"
    );
    assert_eq!(s.replies.len(), 1, "{:?}", s.replies);
}

/// dropbear refuses a key line with from=, so the line has the no-*
/// options only and the receiver refuses every other source (issue 11).
#[test]
fn the_primarys_key_works_only_from_its_ha_address_over_dropbear() {
    let lab = Lab::up_with(SshServer::Dropbear);
    pair_only(&lab);
    let line = lab.read("fw2", "/etc/dropbear/authorized_keys");
    assert!(
        line.starts_with(
            "no-port-forwarding,no-agent-forwarding,no-X11-forwarding,no-pty,command=\""
        ),
        "{line}"
    );
    assert!(!line.contains("from="), "{line}");
    let frames = [hello(&lab)];
    assert_accepted_from_the_ha_link(&lab, &frames);
    for (node, bind, target) in ELSEWHERE {
        let s = session(&lab, node, bind, target, &frames);
        assert_refused_by_the_receiver(&s);
    }
}

/// OpenSSH takes `from=`: the key is refused before any command runs.
#[test]
fn the_primarys_key_works_only_from_its_ha_address_over_openssh() {
    let lab = Lab::up_with(SshServer::Openssh);
    pair_only(&lab);
    let line = lab.read("fw2", "/root/.ssh/authorized_keys");
    assert!(
        line.contains(&format!("restrict,from=\"{}\",command=\"", net::FW1_HA)),
        "{line}"
    );
    let frames = [hello(&lab)];
    assert_accepted_from_the_ha_link(&lab, &frames);
    // The same key from anywhere else: sshd refuses it before any command runs.
    for (node, bind, target) in ELSEWHERE {
        let s = session(&lab, node, bind, target, &frames);
        assert_eq!(
            s.status, 255,
            "{node} {bind:?} -> {target}: ssh got in: {:?} {}",
            s.replies, s.stderr
        );
        assert!(s.stderr.contains("Permission denied"), "{}", s.stderr);
        assert!(s.replies.is_empty(), "{:?}", s.replies);
    }
    // A backup paired by an older release has the line without from=: the
    // LAN client gets past sshd, and the receiver itself refuses it (its
    // SSH_CLIENT is not the primary's HA address); the next cluster install
    // rewrites the line.
    let old = line.replace(&format!("from=\"{}\",", net::FW1_HA), "");
    assert_ne!(old, line);
    lab.write("fw2", "/root/.ssh/authorized_keys", &old);
    let open = session(&lab, "lan", None, net::FW2_LAN, &frames);
    assert_refused_by_the_receiver(&open);
    init_ok(&lab, "fw1", &["add-lan", "--interface", net::LAN_IF]);
    assert_eq!(lab.read("fw2", "/root/.ssh/authorized_keys"), line);
    assert_eq!(
        session(&lab, "lan", None, net::FW2_LAN, &frames).status,
        255
    );
}

/// `ns-ha-init check` on the backup warns while its sshd listens on every
/// address, and passes once sshd is limited to the HA link the way the README
/// says (`ListenAddress`); pairing traffic still works, the LAN no longer
/// reaches sshd at all.
#[test]
fn check_warns_until_the_backups_sshd_listens_on_the_ha_link_only_over_openssh() {
    let lab = Lab::up_with(SshServer::Openssh);
    pair_only(&lab);
    let warn = format!("WARN  sshd on port 22: sshd listens on 0.0.0.0:22 (every address), not only on the HA address {}", net::FW2_HA);
    let listen = format!("ListenAddress {}", net::FW2_HA);
    let out = init(&lab, "fw2", &["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains(&warn) && stdout.contains(&listen),
        "{stdout}"
    );
    assert!(
        lab.tcp_banner("lan", net::FW2_LAN, 22).is_some(),
        "the LAN reaches fw2's sshd before"
    );

    let config = lab.read("fw2", "/etc/ssh/sshd_config");
    assert!(config.contains("ListenAddress 0.0.0.0\n"), "{config}");
    lab.write(
        "fw2",
        "/etc/ssh/sshd_config",
        config.replace("ListenAddress 0.0.0.0\n", &format!("{listen}\n")),
    );
    let restart = lab.service("fw2", "sshd", "restart");
    assert!(restart.status.success(), "{restart:?}");
    assert!(
        ns_ha_tests::wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
            lab.tcp_banner("fw1", net::FW2_HA, 22).is_some()
        }),
        "sshd did not come back on the HA address"
    );
    let out = init(&lab, "fw2", &["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!stdout.contains("WARN  sshd"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "ok    sshd on port 22: sshd listens on the HA address {}:22 only",
            net::FW2_HA
        )),
        "{stdout}"
    );
    assert_eq!(lab.tcp_banner("lan", net::FW2_LAN, 22), None);
    let ok = session(&lab, "fw1", None, net::FW2_HA, &[hello(&lab)]);
    assert_eq!(
        ok.replies.first().map(|r| r["ok"].clone()),
        Some(json!(true)),
        "{}",
        ok.stderr
    );
}

/// Every file (with its bytes) and directory under the paths of fw2's identity.
fn identity(lab: &Lab) -> BTreeMap<String, Vec<u8>> {
    fn walk(p: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(md) = std::fs::symlink_metadata(p) else {
            return;
        };
        if md.is_dir() {
            out.insert(format!("{}/", p.display()), Vec::new());
            for e in std::fs::read_dir(p).unwrap().flatten() {
                walk(&e.path(), out);
            }
        } else {
            out.insert(
                p.display().to_string(),
                std::fs::read(p).unwrap_or_default(),
            );
        }
    }
    let mut out = BTreeMap::new();
    for top in ["/root/.ssh", "/etc/ssh", "/etc/ns-ha", "/etc/dropbear"] {
        walk(&lab.path("fw2", top), &mut out);
    }
    out
}

fn assert_refused(what: &str, s: &Session, needle: &str) {
    let failed = s
        .replies
        .iter()
        .find(|r| r["ok"] == false)
        .unwrap_or_else(|| panic!("{what}: nothing refused: {:?} {}", s.replies, s.stderr));
    assert_eq!(failed["code"], 7, "{what}: {failed}");
    assert!(
        failed["error"].as_str().unwrap_or("").contains(needle),
        "{what}: {failed} lacks {needle}"
    );
}

#[test]
fn the_backup_refuses_its_identity_at_install_cluster_and_in_a_push() {
    let lab = Lab::up();
    pair_only(&lab);
    let before = identity(&lab);
    let cluster: Value = serde_json::from_str(&lab.read("fw1", "/etc/ns-ha/cluster.json")).unwrap();

    // install-cluster of a cluster config whose sync set reaches fw2's identity.
    for include in ["/root/.ssh", "/etc/ssh/ssh_host_*", "/etc/ns-ha"] {
        let mut c = cluster.clone();
        c["sync"]["include"] = json!([include]);
        let s = session(
            &lab,
            "fw1",
            None,
            net::FW2_HA,
            &[
                hello(&lab),
                frame(&json!({"op": "install-cluster", "config": c})),
            ],
        );
        assert_refused(include, &s, &format!("reaches {include}"));
        assert_eq!(
            identity(&lab),
            before,
            "install-cluster {include} wrote something"
        );
    }

    // A push of such paths, written or deleted: refused by the receiver.
    let g = generation(&lab, "fw2");
    let id = cluster["cluster_id"].clone();
    let body = b"ssh-ed25519 AAAA attacker\n";
    let entry = json!({"k": "f", "m": 0o600, "u": 0, "g": 0, "t": 1_000_000_000i64, "s": body.len(),
                       "h": "0000000000000000000000000000000000000000000000000000000000000000"});
    for path in [
        "/root/.ssh/authorized_keys",
        "/root/.ssh/id_ed25519",
        "/root/.ssh/rc",
        "/etc/ssh/ssh_host_ed25519_key",
        "/etc/ns-ha/node.json",
        "/etc/dropbear/authorized_keys",
    ] {
        for (changes, deletes) in [
            (
                json!([{"path": path, "entry": entry.clone(), "data": true}]),
                json!([]),
            ),
            (json!([]), json!([path])),
        ] {
            let begin = json!({"op": "begin", "cluster_id": id, "generation": g + 1,
                "base_generation": g, "force": true, "changes": changes, "deletes": deletes});
            let s = session(
                &lab,
                "fw1",
                None,
                net::FW2_HA,
                &[hello(&lab), frame(&begin), frame(&json!({"op": "commit"}))],
            );
            assert_refused(path, &s, "never accepted from the primary");
            assert_eq!(identity(&lab), before, "push of {path} wrote something");
        }
    }

    // A primary whose own cluster config includes /root/.ssh refuses to push it.
    let mut c = cluster.clone();
    c["sync"]["include"] = json!(["/root/.ssh"]);
    let path = lab.path("fw1", "/etc/ns-ha/cluster.json");
    let saved = std::fs::read(&path).unwrap();
    std::fs::write(&path, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    let out = sync(&lab, "fw1", &["push", "--skip-master-check"]);
    std::fs::write(&path, saved).unwrap();
    assert_eq!(code(&out), 7, "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reaches /root/.ssh"),
        "{}",
        describe(&out)
    );
    assert_eq!(identity(&lab), before);
}

/// Item 10: sshd runs the forced command through `sh -c`, so a root that sh
/// would split or redirect is refused (exit 3, one line naming --root) before
/// init-backup writes anything. Lab-free: it never reaches sshd.
#[test]
fn a_root_with_shell_characters_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().display().to_string();
    let pwned = dir.path().join("pwned");
    for evil in [
        format!("{base}/fw2&touch {}", pwned.display()),
        format!("{base}/fw2|touch"),
        format!("{base}/fw2>x"),
        format!("{base}/fw2<x"),
        format!("{base}/fw2#x"),
        format!("{base}/fw2;x"),
        format!("{base}/fw2 x"),
        format!("{base}/fw2$(x)"),
    ] {
        for via_env in [false, true] {
            let mut cmd = Command::new(bin("ns-ha-init"));
            if via_env {
                cmd.env("NS_HA_ROOT", &evil);
            } else {
                cmd.env_remove("NS_HA_ROOT").args(["--root", &evil]);
            }
            let out = cmd
                .args([
                    "init-backup",
                    "--ha-interface",
                    "ha0",
                    "--peer",
                    "10.99.0.1",
                    "--primary-key",
                    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEt1Ig8czKwgR7Z9el8tb0tUfSP1AJewPrV9zoXG26FS ns-ha-primary",
                ])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "{evil:?}: {stderr}");
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(lines.len(), 1, "{evil:?}: {stderr}");
            assert!(
                lines[0].starts_with("ns-ha-init:")
                    && lines[0].contains("--root")
                    && lines[0].contains("plain path"),
                "{evil:?}: {stderr}"
            );
            let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
            assert!(entries.is_empty(), "{evil:?}: wrote {entries:?}");
        }
    }
}
