//! Issue 12 acceptance, against the real tools over the real SSH server: a
//! large file changed in part travels as a delta (a few KB instead of the
//! file), and a delta that does not rebuild what the primary announced
//! (the backup's copy not the one it was made against) is refused by the
//! backup, which then takes the file whole, verifies its hash and applies
//! it.

#[path = "sync_support.rs"]
mod sync_support;

use ns_ha_tests::Lab;
use serde_json::{json, Value};
use sync_support::*;

/// A threat-shield list: one address a line, 2 MB.
const LIST: &str = "/etc/nginx/lists/threat.list";
const LIST_LEN: usize = 2 << 20;

fn list(seed: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(LIST_LEN + 16);
    let mut i = seed;
    while out.len() < LIST_LEN {
        out.extend_from_slice(
            format!("10.{}.{}.{}\n", (i >> 16) % 256, (i >> 8) % 256, i % 256).as_bytes(),
        );
        i = i.wrapping_add(1);
    }
    out.truncate(LIST_LEN);
    out
}

/// `push --json`'s report.
fn push(lab: &Lab) -> Value {
    serde_json::from_str(&sync_ok(lab, "fw1", &["--json", "push"])).unwrap()
}

/// An rsync delta (librsync's format, what `fast_rsync` reads) that copies
/// `len` bytes from offset 0 of the base: it rebuilds the base itself.
fn copy_the_base(len: usize) -> Vec<u8> {
    let mut d = 0x7273_0236u32.to_be_bytes().to_vec(); // delta magic
    d.push(0x47); // copy, 1-byte offset, 4-byte length
    d.push(0);
    d.extend_from_slice(&(len as u32).to_be_bytes());
    d.push(0); // end
    d
}

#[test]
fn a_changed_list_travels_as_a_delta_and_a_wrong_delta_falls_back_to_the_whole_file() {
    let lab = paired_lab();

    // A real push of a 4-byte change: the delta, not the file.
    let first = list(0);
    lab.write("fw1", LIST, &first);
    push(&lab);
    assert_eq!(std::fs::read(lab.path("fw2", LIST)).unwrap(), first);
    let mut edited = first.clone();
    edited[LIST_LEN / 2..LIST_LEN / 2 + 4].copy_from_slice(b"9.9.");
    lab.write("fw1", LIST, &edited);
    let report = push(&lab);
    assert_eq!(
        std::fs::read(lab.path("fw2", LIST)).unwrap(),
        edited,
        "the edited list on fw2"
    );
    let sent = report["bytes_sent"].as_u64().unwrap();
    assert!(
        sent < (LIST_LEN / 20) as u64,
        "a 4-byte change of a {LIST_LEN}-byte list sent {sent} bytes: not a delta ({report})"
    );

    // A delta made against another copy than fw2's: refused, then the file
    // whole, verified and applied.
    let g = generation(&lab, "fw2");
    let id = cluster_id(&lab);
    let key = lab
        .path("fw1", "/etc/ns-ha/id_ed25519")
        .display()
        .to_string();
    let wanted = list(7);
    let sha_wanted = sha256(&lab, &wanted);
    let entry = json!({"k": "f", "m": 0o644, "u": 0, "g": 0, "t": 1_000_000_000i64,
                       "s": LIST_LEN, "h": sha_wanted});
    let frames = vec![
        hello(&id),
        begin(
            &id,
            g + 1,
            json!([{"path": LIST, "entry": entry, "data": true}]),
        ),
        // Against a copy fw2 does not hold: no signature.
        frame_with(
            &json!({"op": "signature", "path": LIST, "base_sha256": sha256(&lab, &first)}),
            b"",
        ),
        // Against the copy it holds: a signature, then a delta that
        // rebuilds that copy instead of the announced content.
        frame_with(
            &json!({"op": "signature", "path": LIST, "base_sha256": sha256(&lab, &edited)}),
            b"",
        ),
        {
            let d = copy_the_base(LIST_LEN);
            frame_with(
                &json!({"op": "delta", "path": LIST, "size": LIST_LEN, "sha256": sha_wanted, "len": d.len()}),
                &d,
            )
        },
        frame_with(
            &json!({"op": "file", "path": LIST, "size": LIST_LEN, "sha256": sha_wanted}),
            &wanted,
        ),
        frame_with(&json!({"op": "commit"}), b""),
    ];
    let (status, replies) = raw_session(&lab, &key, &frames);
    // hello, begin, two signatures, delta, commit (a file frame has no reply).
    assert_eq!(replies.len(), 6, "replies: {replies:?}");
    assert!(replies.iter().all(|r| r["ok"] == true), "{replies:?}");
    assert_eq!(
        replies[2]["data"]["len"],
        Value::Null,
        "a signature of a copy fw2 does not hold: {}",
        replies[2]
    );
    assert!(
        replies[3]["data"]["len"].as_u64().unwrap_or(0) > 0,
        "no signature of fw2's copy: {}",
        replies[3]
    );
    assert_eq!(
        replies[4]["data"]["applied"], false,
        "a delta rebuilding other bytes than announced was applied: {}",
        replies[4]
    );
    assert_eq!(status, 0, "receiver exit: {replies:?}");
    assert_eq!(
        std::fs::read(lab.path("fw2", LIST)).unwrap(),
        wanted,
        "fw2's list after the whole file followed the refused delta"
    );
    assert_eq!(generation(&lab, "fw2"), g + 1);
}
