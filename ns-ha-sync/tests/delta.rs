//! Delta transfer of large files changed in part: a small edit costs a few
//! KB on the wire, and a delta that does not rebuild what the primary
//! announced (the backup's copy is not the one the primary diffed against)
//! never becomes live: the file travels whole and its sha256 is verified.

mod common;

use common::*;
use ns_ha_common::cmd::RecordingRunner;
use ns_ha_common::net::StaticInterfaces;
use ns_ha_common::proto::{call, read_msg, write_msg, HelloReply, Reply};
use ns_ha_sync::delta;
use ns_ha_sync::receiver::Receiver;
use ns_ha_sync::sender::{push, PushOptions};
use ns_ha_sync::wire::{CommitReply, DeltaReply, SignatureReply};
use serde_json::json;
use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;

/// A blocklist of `lines` addresses (about 12 bytes a line).
fn list(lines: u32, salt: u8) -> Vec<u8> {
    (0..lines)
        .flat_map(|i| format!("10.{salt}.{}.{}\n", (i >> 8) % 256, i % 256).into_bytes())
        .collect()
}

fn write_bytes(root: &ns_ha_common::NodeRoot, path: &str, data: &[u8]) {
    let p = root.path(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

#[test]
fn a_small_edit_of_a_large_file_sends_a_delta_not_the_file() {
    let p = pair();
    let old = list(200_000, 1);
    write_bytes(&p.primary, "/etc/extra/banip.list", &old);
    let mut link = ThreadLink::new(&p.backup);
    push(&p.primary, &p.cluster, &mut link, PushOptions::default()).unwrap();
    link.join();
    let mut new = old.clone();
    let at = old.len() / 2;
    new[at..at + 4].copy_from_slice(b"9999");
    write_bytes(&p.primary, "/etc/extra/banip.list", &new);
    let rep = push(&p.primary, &p.cluster, &mut link, PushOptions::default()).unwrap();
    link.join();
    assert_eq!(
        std::fs::read(p.backup.path("/etc/extra/banip.list")).unwrap(),
        new
    );
    assert_eq!(rep.files, 1);
    // 2.4 MB file: a signature of ~8 KB back, a block and the manifests out.
    assert!(
        rep.bytes_sent < 20_000 && rep.bytes_received < 40_000,
        "{} bytes sent, {} received for a 4-byte change of {} bytes",
        rep.bytes_sent,
        rep.bytes_received,
        new.len()
    );
}

/// A receiver on a thread and the sender's end of its channel, greeted.
fn open(backup: &ns_ha_common::NodeRoot) -> (UnixStream, std::thread::JoinHandle<()>) {
    let (a, b) = UnixStream::pair().unwrap();
    let root = backup.clone();
    let t = std::thread::spawn(move || {
        let runner = RecordingRunner::new();
        let ifs = StaticInterfaces::default();
        let mut rx = Receiver::new(root, &runner).with_interfaces(&ifs);
        let mut r = BufReader::new(b.try_clone().unwrap());
        let mut w = b;
        let _ = rx.serve(&mut r, &mut w);
    });
    let mut ch = a;
    let _: HelloReply = call(&mut ch, &hello(CLUSTER_ID)).unwrap();
    (ch, t)
}

/// A receiver on a thread with a transaction open that announces `new` as
/// `/etc/extra/list` (after the `manifest` that takes the lock), and the
/// sender's end of its channel.
fn open_txn(
    backup: &ns_ha_common::NodeRoot,
    new: &[u8],
) -> (UnixStream, std::thread::JoinHandle<()>) {
    let entry = json!({"k": "f", "m": 0o644, "u": 0, "g": 0, "t": 1_000_000_000i64,
                       "s": new.len(), "h": sha(new)});
    let (mut ch, t) = open(backup);
    write_msg(&mut ch, &json!({"op": "manifest"})).unwrap();
    let head: Reply = read_msg(&mut ch).unwrap();
    assert!(head.ok, "{head:?}");
    while read_msg::<_, Reply>(&mut ch).unwrap().data["more"].as_bool() == Some(true) {}
    let begin: serde_json::Value = call(
        &mut ch,
        &json!({"op": "begin", "cluster_id": CLUSTER_ID, "generation": 1, "base_generation": 0,
                "force": true, "changes": [{"path": "/etc/extra/list", "entry": entry, "data": true}],
                "deletes": []}),
    )
    .unwrap();
    assert_eq!(begin["kept"], json!([]), "{begin:?}");
    (ch, t)
}

fn raw(ch: &mut UnixStream, msg: serde_json::Value, blob: &[u8]) {
    ch.write_all(&frame(&msg, blob)).unwrap();
}

#[test]
fn a_delta_against_another_copy_falls_back_to_the_whole_file_and_is_verified() {
    let p = pair();
    // What the primary believes the backup holds, and what it really holds.
    let expected = list(20_000, 1);
    let mut actual = expected.clone();
    actual[1000..1004].copy_from_slice(b"7777");
    write_bytes(&p.backup, "/etc/extra/list", &actual);
    let mut new = expected.clone();
    new[100_000..100_004].copy_from_slice(b"9999");
    let (mut ch, t) = open_txn(&p.backup, &new);

    // The primary names the copy it diffs against: not the one here.
    let sig: SignatureReply = call(
        &mut ch,
        &json!({"op": "signature", "path": "/etc/extra/list", "base_sha256": sha(&expected)}),
    )
    .unwrap();
    assert_eq!(sig.len, None, "signed a copy that is not the expected one");

    // A backup that signs its real copy, and a primary whose delta was made
    // against the copy it expected: the rebuilt file is not the announced one.
    let sig: SignatureReply = call(
        &mut ch,
        &json!({"op": "signature", "path": "/etc/extra/list", "base_sha256": sha(&actual)}),
    )
    .unwrap();
    let mut signature = vec![0u8; sig.len.expect("a signature of the real copy") as usize];
    ch.read_exact(&mut signature).unwrap();
    let wrong = delta::make(delta::signature(&expected), &new).unwrap();
    assert_ne!(
        delta::apply(&actual, &wrong, new.len() as u64).unwrap_or_default(),
        new
    );
    raw(
        &mut ch,
        json!({"op": "delta", "path": "/etc/extra/list", "size": new.len(), "sha256": sha(&new),
               "len": wrong.len()}),
        &wrong,
    );
    let r: DeltaReply = read_msg::<_, Reply>(&mut ch)
        .unwrap()
        .into_result()
        .unwrap();
    assert!(!r.applied, "a delta that rebuilds other bytes was applied");
    assert_eq!(
        std::fs::read(p.backup.path("/etc/extra/list")).unwrap(),
        actual
    );

    // The whole file follows, verified like any other.
    raw(
        &mut ch,
        json!({"op": "file", "path": "/etc/extra/list", "size": new.len(), "sha256": sha(&new)}),
        &new,
    );
    let c: CommitReply = call(&mut ch, &json!({"op": "commit"})).unwrap();
    assert_eq!((c.generation, c.files), (1, 1));
    drop(ch);
    t.join().unwrap();
    assert_eq!(
        std::fs::read(p.backup.path("/etc/extra/list")).unwrap(),
        new
    );
}

#[test]
fn a_delta_that_rebuilds_the_announced_file_is_applied() {
    let p = pair();
    let base = list(20_000, 3);
    write_bytes(&p.backup, "/etc/extra/list", &base);
    let mut new = base.clone();
    new[5..9].copy_from_slice(b"1234");
    let (mut ch, t) = open_txn(&p.backup, &new);
    let sig: SignatureReply = call(
        &mut ch,
        &json!({"op": "signature", "path": "/etc/extra/list", "base_sha256": sha(&base)}),
    )
    .unwrap();
    let mut signature = vec![0u8; sig.len.unwrap() as usize];
    ch.read_exact(&mut signature).unwrap();
    let d = delta::make(signature, &new).unwrap();
    assert!(d.len() < 10_000, "{}", d.len());
    raw(
        &mut ch,
        json!({"op": "delta", "path": "/etc/extra/list", "size": new.len(), "sha256": sha(&new),
               "len": d.len()}),
        &d,
    );
    let r: DeltaReply = read_msg::<_, Reply>(&mut ch)
        .unwrap()
        .into_result()
        .unwrap();
    assert!(r.applied);
    let c: CommitReply = call(&mut ch, &json!({"op": "commit"})).unwrap();
    assert_eq!(c.files, 1);
    drop(ch);
    t.join().unwrap();
    assert_eq!(
        std::fs::read(p.backup.path("/etc/extra/list")).unwrap(),
        new
    );
}
