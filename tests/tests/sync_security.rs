//! Issue 3 acceptance: the sync channel as a security boundary, over the real
//! sshd and forced command. Crafted requests (sent with the primary's real
//! key through the `ssh` client) and impostors are refused, with nothing
//! applied on fw2.

#[path = "sync_support.rs"]
mod sync_support;

use std::collections::BTreeMap;

use ns_ha_tests::Lab;
use serde_json::{json, Value};
use sync_support::*;

/// What must not move on fw2 when a request is refused: the sync set, the
/// files the crafted requests aim at, the SSH server's own init script and
/// authorized keys, and the generation.
fn guarded(lab: &Lab) -> (Tree, BTreeMap<String, String>, u64) {
    let server = lab.ssh_server();
    let service = format!("/etc/init.d/{}", server.service());
    let files = [
        "/etc/init.d/sshd",
        "/root/.ssh/authorized_keys",
        service.as_str(),
        server.authorized_keys(),
    ]
    .into_iter()
    .map(|f| {
        let text = std::fs::read_to_string(lab.path("fw2", f)).unwrap_or_default();
        (f.to_string(), text)
    })
    .collect();
    (tree(lab, "fw2"), files, generation(lab, "fw2"))
}

fn frame(msg: &Value, blob: &[u8]) -> Vec<u8> {
    frame_with(msg, blob)
}

/// The first failed reply must carry `code` and mention `needle`.
fn assert_refused(replies: &[Value], code: u64, needle: &str) {
    let failed = replies
        .iter()
        .find(|r| r["ok"] == false)
        .unwrap_or_else(|| panic!("nothing refused: {replies:?}"));
    assert_eq!(failed["code"], code, "{failed}");
    assert!(
        failed["error"].as_str().unwrap_or("").contains(needle),
        "{failed} lacks {needle}"
    );
}

#[test]
fn crafted_requests_and_impostors_are_refused_with_nothing_applied_over_openssh() {
    crafted_and_impostors(ns_ha_tests::SshServer::Openssh);
}

/// The same with dropbear as the backup's SSH server (issue 11).
#[test]
fn crafted_requests_and_impostors_are_refused_with_nothing_applied_over_dropbear() {
    crafted_and_impostors(ns_ha_tests::SshServer::Dropbear);
}

fn crafted_and_impostors(server: ns_ha_tests::SshServer) {
    let lab = paired_lab_with(server);
    sync_ok(&lab, "fw1", &["push"]);
    let before = guarded(&lab);
    let g = before.2;
    let id = cluster_id(&lab);
    let key = lab
        .path("fw1", "/etc/ns-ha/id_ed25519")
        .display()
        .to_string();
    let good = b"evil content\n";
    let sha_good = sha256(&lab, good);
    let entry = json!({"k": "f", "m": 0o644, "u": 0, "g": 0, "t": 1_000_000_000i64, "s": good.len(), "h": sha_good});
    let one = |path: &str| json!([{"path": path, "entry": entry.clone(), "data": true}]);
    let commit = frame(&json!({"op": "commit"}), b"");
    let file = |path: &str, body: &[u8]| {
        frame(
            &json!({"op": "file", "path": path, "size": body.len(), "sha256": sha_good}),
            body,
        )
    };

    let cases: Vec<(&str, Vec<Vec<u8>>, u64, &str)> = vec![
        (
            "dot-dot",
            vec![hello(&id), begin(&id, g + 1, one("/etc/config/../shadow"))],
            7,
            "..",
        ),
        (
            "absolute outside",
            vec![hello(&id), begin(&id, g + 1, one("/etc/init.d/sshd"))],
            7,
            "outside",
        ),
        (
            "authorized_keys",
            vec![
                hello(&id),
                begin(&id, g + 1, one("/root/.ssh/authorized_keys")),
            ],
            7,
            "outside",
        ),
        (
            "symlink escape",
            vec![
                hello(&id),
                begin(
                    &id,
                    g + 1,
                    json!([{"path": "/etc/nginx/evil", "entry": {"k": "l", "m": 0, "u": 0, "g": 0, "l": "../../etc/ns-ha/id_ed25519"}, "data": false}]),
                ),
            ],
            7,
            "outside the sync set",
        ),
        (
            "hash mismatch",
            vec![
                hello(&id),
                begin(&id, g + 1, one("/etc/nginx/conf.d/x.conf")),
                file("/etc/nginx/conf.d/x.conf", b"EVIL CONTENT\n"),
                commit.clone(),
            ],
            7,
            "hash mismatch",
        ),
        (
            "older generation",
            vec![hello(&id), begin(&id, g, one("/etc/nginx/conf.d/x.conf"))],
            8,
            "not newer",
        ),
        (
            "another cluster",
            vec![
                hello("fedcba9876543210fedcba9876543210"),
                begin(&id, g + 1, one("/etc/nginx/x")),
            ],
            8,
            "cluster",
        ),
    ];
    for (name, frames, code, needle) in cases {
        let (_, replies) = raw_session(&lab, &key, &frames);
        assert_refused(&replies, code, needle);
        assert_eq!(guarded(&lab), before, "{name}: something was applied");
    }
    // The same channel accepts a well-formed request (the cases above failed for their reason).
    let (_, replies) = raw_session(
        &lab,
        &key,
        &[
            hello(&id),
            begin(&id, g + 1, one("/etc/nginx/conf.d/x.conf")),
            file("/etc/nginx/conf.d/x.conf", good),
            commit,
        ],
    );
    assert!(replies.iter().all(|r| r["ok"] == true), "{replies:?}");
    assert_eq!(
        lab.read("fw2", "/etc/nginx/conf.d/x.conf"),
        "evil content\n"
    );

    // Another cluster's key: the SSH server does not even start the receiver.
    let other = lab.dir().join("other_key");
    lab.sh_ok(
        "fw1",
        &format!("ssh-keygen -q -t ed25519 -N '' -f {}", other.display()),
    );
    let before = guarded(&lab);
    let (status, replies) = raw_session(&lab, &other.display().to_string(), &[hello(&id)]);
    assert_eq!(status, 255, "ssh with a foreign key must fail");
    assert!(replies.is_empty());
    // ns-ha-sync with a foreign key: a peer error, nothing applied.
    let key_path = lab.path("fw1", "/etc/ns-ha/id_ed25519");
    let saved = std::fs::read(&key_path).unwrap();
    std::fs::copy(&other, &key_path).unwrap();
    lab.write("fw1", "/etc/nginx/conf.d/new.conf", "x\n");
    let out = sync(&lab, "fw1", &["push"]);
    assert_eq!(code(&out), 6, "{}", describe(&out));
    std::fs::write(&key_path, &saved).unwrap();
    assert_eq!(guarded(&lab), before);

    // Unknown host key: the pin does not match what fw2 presents.
    let node_path = lab.path("fw1", "/etc/ns-ha/node.json");
    let saved = lab.read("fw1", "/etc/ns-ha/node.json");
    let mut node: Value = serde_json::from_str(&saved).unwrap();
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    node["peer_host_key"]["key_base64"] = json!(other_pub.split_whitespace().nth(1).unwrap());
    std::fs::write(&node_path, serde_json::to_string_pretty(&node).unwrap()).unwrap();
    let out = sync(&lab, "fw1", &["push"]);
    assert_eq!(code(&out), 7, "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("host key"),
        "{}",
        describe(&out)
    );
    assert_eq!(guarded(&lab), before);
    std::fs::write(&node_path, saved).unwrap();
    sync_ok(&lab, "fw1", &["push"]);
    assert_eq!(lab.read("fw2", "/etc/nginx/conf.d/new.conf"), "x\n");
}
