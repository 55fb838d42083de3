//! Sender and receiver end to end in one process (a socket pair instead of
//! SSH): what a push carries, what it refuses, and what a cut stream leaves.

mod common;

use common::*;
use ns_ha_common::exit::{code_of, Code};
use ns_ha_common::proto::{NS_HA_VERSION, PROTOCOL_VERSION};
use ns_ha_sync::receiver::local_view;
use ns_ha_sync::rules::SyncSet;
use ns_ha_sync::sender::{push, PushOptions};
use ns_ha_sync::state::{Applied, StateDir, APPLIED};
use serde_json::json;
use std::os::unix::fs::{symlink, MetadataExt};

fn do_push(
    p: &Pair,
    link: &mut ThreadLink,
    opts: PushOptions,
) -> anyhow::Result<ns_ha_sync::sender::PushReport> {
    let r = push(&p.primary, &p.cluster, link, opts);
    link.join();
    r
}

fn generation(root: &ns_ha_common::NodeRoot) -> u64 {
    let c = cluster();
    StateDir::new(root, &c.sync)
        .read::<Applied>(APPLIED)
        .unwrap()
        .unwrap_or_default()
        .generation
}

fn seed(p: &Pair) {
    write(&p.primary, "/etc/config/firewall", "config zone\n");
    write(&p.primary, "/etc/config/dhcp", "config dhcp lan\n");
    write(&p.primary, "/etc/extra/a/b/deep", "deep\n");
    write(&p.primary, "/etc/passwd", "root:x:0:0::/root:/bin/sh\n");
    write(&p.primary, "/etc/config/local-only", "excluded\n");
    write(&p.primary, "/etc/config/network", "never\n");
    symlink("firewall", p.primary.path("/etc/config/fw-alias")).unwrap();
}

#[test]
fn create_change_chmod_delete_reach_the_backup() {
    let p = pair();
    seed(&p);
    write(&p.backup, "/etc/config/network", "backup's own network\n");
    write(
        &p.backup,
        "/etc/config/stale",
        "only on the backup before the first sync\n",
    );
    let mut link = ThreadLink::new(&p.backup);
    let rep = do_push(&p, &mut link, PushOptions::default()).unwrap();
    assert_eq!(rep.generation, 1);
    assert_eq!(read(&p.backup, "/etc/config/firewall"), "config zone\n");
    assert_eq!(read(&p.backup, "/etc/extra/a/b/deep"), "deep\n");
    assert_eq!(
        std::fs::read_link(p.backup.path("/etc/config/fw-alias"))
            .unwrap()
            .to_str(),
        Some("firewall")
    );
    assert!(
        !exists(&p.backup, "/etc/config/local-only"),
        "excluded path synced"
    );
    assert!(
        !exists(&p.backup, "/etc/config/stale"),
        "deletion not propagated"
    );
    assert_eq!(
        read(&p.backup, "/etc/config/network"),
        "backup's own network\n"
    );
    let pm = std::fs::metadata(p.primary.path("/etc/config/firewall")).unwrap();
    let bm = std::fs::metadata(p.backup.path("/etc/config/firewall")).unwrap();
    assert_eq!(
        (pm.mtime(), pm.mtime_nsec()),
        (bm.mtime(), bm.mtime_nsec()),
        "mtime not preserved"
    );

    // A one-shot push starts reaching the backup before it scans.
    assert_eq!((link.prefetches, link.opens), (1, 1));

    // Second push: nothing changed, the backup's channel is not used (the
    // connect started meanwhile is left behind).
    let opens = link.opens;
    let rep = do_push(&p, &mut link, PushOptions::default()).unwrap();
    assert!(rep.noop);
    assert_eq!(link.opens, opens);
    assert_eq!(link.prefetches, 2);

    // Change, chmod, create, delete.
    write(&p.primary, "/etc/config/firewall", "config zone wan\n");
    chmod(&p.primary, "/etc/config/dhcp", 0o600);
    write(&p.primary, "/etc/config/new", "new\n");
    std::fs::remove_dir_all(p.primary.path("/etc/extra/a")).unwrap();
    let rep = do_push(&p, &mut link, PushOptions::default()).unwrap();
    assert_eq!(rep.generation, 2);
    assert_eq!(rep.files, 2, "only changed contents travel: {rep:?}");
    assert_eq!(read(&p.backup, "/etc/config/firewall"), "config zone wan\n");
    assert_eq!(mode(&p.backup, "/etc/config/dhcp"), 0o600);
    assert_eq!(read(&p.backup, "/etc/config/new"), "new\n");
    assert!(!exists(&p.backup, "/etc/extra/a"));
    assert_eq!(generation(&p.backup), 2);
    let (a, b) = (snapshot(&p.primary, TOPS), snapshot(&p.backup, TOPS));
    let strip = |s: Snapshot| -> Snapshot {
        s.into_iter()
            .filter(|(k, _)| !k.ends_with("local-only") && !k.ends_with("network"))
            .collect()
    };
    assert_eq!(strip(a), strip(b));
}

#[test]
fn dry_run_lists_changes_and_changes_nothing() {
    let p = pair();
    seed(&p);
    let mut link = ThreadLink::new(&p.backup);
    let rep = do_push(
        &p,
        &mut link,
        PushOptions {
            dry_run: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(rep
        .lines
        .iter()
        .any(|l| l.path == "/etc/config/firewall" && l.action == "new"));
    assert!(rep.render().contains("+ /etc/config/firewall"));
    assert!(!exists(&p.backup, "/etc/config/firewall"));
    assert_eq!(generation(&p.backup), 0);
}

#[test]
fn backup_edit_is_reported_and_survives_a_plain_push() {
    let p = pair();
    seed(&p);
    let mut link = ThreadLink::new(&p.backup);
    do_push(&p, &mut link, PushOptions::default()).unwrap();
    write(&p.backup, "/etc/config/firewall", "edited on the backup\n");
    write(&p.backup, "/etc/config/added-here", "x\n");
    let set = SyncSet::load(&p.backup, &p.cluster.sync).unwrap();
    let view = local_view(&p.backup, &set, &StateDir::new(&p.backup, &p.cluster.sync)).unwrap();
    let drift: Vec<_> = view
        .drift
        .iter()
        .map(|d| (d.path.as_str(), d.what.as_str()))
        .collect();
    assert_eq!(
        drift,
        vec![
            ("/etc/config/added-here", "added"),
            ("/etc/config/firewall", "changed")
        ]
    );

    write(
        &p.primary,
        "/etc/config/firewall",
        "primary's new version\n",
    );
    write(&p.primary, "/etc/config/dhcp", "dhcp v2\n");
    let rep = do_push(&p, &mut link, PushOptions::default()).unwrap();
    assert_eq!(
        rep.kept,
        vec!["/etc/config/added-here", "/etc/config/firewall"]
    );
    assert_eq!(
        read(&p.backup, "/etc/config/firewall"),
        "edited on the backup\n"
    );
    assert!(exists(&p.backup, "/etc/config/added-here"));
    assert_eq!(
        read(&p.backup, "/etc/config/dhcp"),
        "dhcp v2\n",
        "the rest still flows"
    );
    // Still reported after the push.
    let view = local_view(&p.backup, &set, &StateDir::new(&p.backup, &p.cluster.sync)).unwrap();
    assert_eq!(view.drift.len(), 2);

    let rep = do_push(
        &p,
        &mut link,
        PushOptions {
            force: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(rep.kept.is_empty());
    assert_eq!(
        read(&p.backup, "/etc/config/firewall"),
        "primary's new version\n"
    );
    assert!(!exists(&p.backup, "/etc/config/added-here"));
    let view = local_view(&p.backup, &set, &StateDir::new(&p.backup, &p.cluster.sync)).unwrap();
    assert!(view.drift.is_empty(), "{:?}", view.drift);
}

fn hello_frame(id: &str) -> Vec<u8> {
    frame(
        &json!({"op": "hello", "protocol": PROTOCOL_VERSION, "version": NS_HA_VERSION, "cluster_id": id}),
        b"",
    )
}

fn file_entry(content: &[u8]) -> serde_json::Value {
    json!({"k": "f", "m": 0o644, "u": 0, "g": 0, "t": 1_000_000_000i64, "s": content.len(), "h": sha(content)})
}

fn begin(generation: u64, base: u64, changes: serde_json::Value) -> Vec<u8> {
    frame(
        &json!({"op": "begin", "cluster_id": CLUSTER_ID, "generation": generation,
                "base_generation": base, "force": false, "changes": changes, "deletes": []}),
        b"",
    )
}

/// Run a scripted session and check that it was refused with `code` and left
/// the backup exactly as it was.
fn refused(p: &Pair, script: Vec<Vec<u8>>, code: Code, needle: &str) {
    let before = snapshot(&p.backup, &["/etc", "/root"]);
    let gen_before = generation(&p.backup);
    let input: Vec<u8> = script.concat();
    let replies = session(&p.backup, &input);
    let failed: Vec<_> = replies.iter().filter(|r| !r.ok).collect();
    assert!(!failed.is_empty(), "nothing refused: {replies:?}");
    let err = failed[0]
        .clone()
        .into_result::<serde_json::Value>()
        .unwrap_err();
    assert_eq!(code_of(&err), code, "{err:#}");
    assert!(
        format!("{err:#}").contains(needle),
        "{err:#} lacks {needle}"
    );
    let after: Snapshot = snapshot(&p.backup, &["/etc", "/root"])
        .into_iter()
        .filter(|(k, _)| !k.contains("var/lib/ns-ha"))
        .collect();
    let before: Snapshot = before
        .into_iter()
        .filter(|(k, _)| !k.contains("var/lib/ns-ha"))
        .collect();
    assert_eq!(before, after, "something was applied");
    assert_eq!(generation(&p.backup), gen_before);
}

#[test]
fn malicious_requests_are_refused_with_nothing_applied() {
    let p = pair();
    write(&p.backup, "/etc/config/firewall", "backup\n");
    write(&p.backup, "/etc/shadow", "root:secret\n");
    let good = b"x\n";
    let h = || hello_frame(CLUSTER_ID);
    let commit = frame(&json!({"op": "commit"}), b"");
    let one = |path: &str| json!([{"path": path, "entry": file_entry(good), "data": true}]);
    let file = |path: &str, body: &[u8], claimed: &[u8]| {
        frame(
            &json!({"op": "file", "path": path, "size": body.len(), "sha256": sha(claimed)}),
            body,
        )
    };

    // `..`, absolute paths outside the set, never-sync paths.
    refused(
        &p,
        vec![h(), begin(1, 0, one("/etc/config/../shadow"))],
        Code::Security,
        "..",
    );
    refused(
        &p,
        vec![h(), begin(1, 0, one("/etc/shadow"))],
        Code::Security,
        "outside",
    );
    refused(
        &p,
        vec![h(), begin(1, 0, one("/root/.ssh/authorized_keys"))],
        Code::Security,
        "outside",
    );
    refused(
        &p,
        vec![h(), begin(1, 0, one("/etc/ns-ha/cluster.json"))],
        Code::Security,
        "outside",
    );
    refused(
        &p,
        vec![h(), begin(1, 0, one("etc/config/x"))],
        Code::Security,
        "absolute",
    );
    // Symlinks escaping the set, as an entry or as a parent on the backup.
    let link = |t: &str| json!([{"path": "/etc/config/evil", "entry": {"k": "l", "m": 0, "u": 0, "g": 0, "l": t}, "data": false}]);
    refused(
        &p,
        vec![h(), begin(1, 0, link("/etc/shadow"))],
        Code::Security,
        "outside the sync set",
    );
    refused(
        &p,
        vec![h(), begin(1, 0, link("../../root/.ssh/authorized_keys"))],
        Code::Security,
        "outside",
    );
    std::os::unix::fs::symlink("/tmp", p.backup.path("/etc/config/sub")).unwrap();
    refused(
        &p,
        vec![h(), begin(1, 0, one("/etc/config/sub/x"))],
        Code::Security,
        "symlink escape",
    );
    std::fs::remove_file(p.backup.path("/etc/config/sub")).unwrap();
    // Corrupted content: the hash does not match; a frame not announced.
    refused(
        &p,
        vec![
            h(),
            begin(1, 0, one("/etc/config/new")),
            file("/etc/config/new", b"y\n", good),
            commit.clone(),
        ],
        Code::Security,
        "hash mismatch",
    );
    refused(
        &p,
        vec![
            h(),
            begin(1, 0, one("/etc/config/new")),
            file("/etc/config/other", good, good),
            commit.clone(),
        ],
        Code::Security,
        "not announced",
    );
    refused(
        &p,
        vec![h(), begin(1, 0, one("/etc/config/new")), commit.clone()],
        Code::Peer,
        "never arrived",
    );
    // Another cluster, and sync ops without a hello.
    refused(
        &p,
        vec![
            hello_frame(OTHER_CLUSTER),
            begin(1, 0, one("/etc/config/new")),
        ],
        Code::Conflict,
        "cluster",
    );
    refused(
        &p,
        vec![begin(1, 0, one("/etc/config/new"))],
        Code::Security,
        "hello",
    );
    // A frame that announces more than the limit.
    let mut huge = (u32::MAX).to_be_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    refused(&p, vec![h(), huge], Code::Security, "limit");

    // A real sync to generation 1, then older and equal generations are refused.
    let ok = session(
        &p.backup,
        &[
            h(),
            begin(1, 0, one("/etc/config/new")),
            file("/etc/config/new", good, good),
            commit.clone(),
        ]
        .concat(),
    );
    assert!(ok.iter().all(|r| r.ok), "{ok:?}");
    assert_eq!(read(&p.backup, "/etc/config/new"), "x\n");
    refused(
        &p,
        vec![h(), begin(1, 1, one("/etc/config/n2"))],
        Code::Conflict,
        "not newer",
    );
    refused(
        &p,
        vec![h(), begin(0, 1, one("/etc/config/n2"))],
        Code::Conflict,
        "not newer",
    );
}

#[test]
fn the_primary_refuses_to_receive() {
    let p = pair();
    let replies = session(&p.primary, &hello_frame(CLUSTER_ID));
    let err = replies[0]
        .clone()
        .into_result::<serde_json::Value>()
        .unwrap_err();
    assert_eq!(code_of(&err), Code::State);
}

/// A sender that dies at any byte: the backup holds the old or the new tree.
#[test]
fn a_stream_cut_anywhere_leaves_one_generation() {
    let measure = pair();
    seed(&measure);
    let mut link = ThreadLink::new(&measure.backup);
    do_push(&measure, &mut link, PushOptions::default()).unwrap();
    let old = snapshot(&measure.backup, TOPS);
    // The firewall file is larger than a batch takes (a frame of its own),
    // the others go in one packed `files` batch.
    let change = |p: &Pair| {
        write(&p.primary, "/etc/config/firewall", &"rule\n".repeat(16_000));
        write(&p.primary, "/etc/config/dhcp", &"option v2\n".repeat(200));
        chmod(&p.primary, "/etc/passwd", 0o600);
        std::fs::remove_file(p.primary.path("/etc/extra/a/b/deep")).unwrap();
        write(&p.primary, "/etc/extra/c", "new\n");
    };
    change(&measure);
    let rep = do_push(&measure, &mut link, PushOptions::default()).unwrap();
    let new = snapshot(&measure.backup, TOPS);
    let total = rep.bytes_sent;
    assert!(total > 25_000, "{total}");
    let mut saw = (0, 0);
    let mut cut = 0u64;
    while cut < total {
        let p = pair();
        seed(&p);
        let mut link = ThreadLink::new(&p.backup);
        do_push(&p, &mut link, PushOptions::default()).unwrap();
        change(&p);
        link.cut_after = Some(cut);
        let r = do_push(&p, &mut link, PushOptions::default());
        let set = SyncSet::load(&p.backup, &p.cluster.sync).unwrap();
        ns_ha_sync::journal::recover(&p.backup, &set, &StateDir::new(&p.backup, &p.cluster.sync))
            .unwrap();
        let got = snapshot(&p.backup, TOPS);
        if got == old {
            assert!(
                r.is_err(),
                "cut at {cut}: push claims success but nothing applied"
            );
            assert_eq!(generation(&p.backup), 1);
            saw.0 += 1;
        } else {
            assert_eq!(got, new, "cut at {cut}: mixed generations");
            assert_eq!(generation(&p.backup), 2);
            saw.1 += 1;
        }
        cut += if cut < 400 { 23 } else { 2999 };
    }
    assert!(saw.0 > 5, "{saw:?}");
}

/// Issue 13 item 4: a push that finds the backup already holding the
/// primary's files succeeds on the primary; the backup must say so too, not
/// "last attempt: never" (it used to be left out of a push with nothing to send).
#[test]
fn a_push_with_nothing_to_send_is_recorded_on_the_backup_too() {
    use ns_ha_sync::state::{Status, STATUS};
    let p = pair();
    // Both nodes start with the same files: nothing to send.
    // (Same mtime too: the sync carries it, and two writes can straddle a second.)
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    for root in [&p.primary, &p.backup] {
        write(root, "/etc/config/firewall", "config zone\n");
        std::fs::File::options()
            .write(true)
            .open(root.path("/etc/config/firewall"))
            .and_then(|f| f.set_modified(mtime))
            .unwrap();
    }
    let mut link = ThreadLink::new(&p.backup);
    let rep = do_push(&p, &mut link, PushOptions::default()).unwrap();
    assert!(rep.lines.is_empty(), "{:?}", rep.lines);
    let primary: Status = StateDir::new(&p.primary, &p.cluster.sync)
        .read(STATUS)
        .unwrap()
        .unwrap();
    assert!(primary.last_attempt.as_ref().is_some_and(|r| r.ok));
    let backup: Option<Status> = StateDir::new(&p.backup, &p.cluster.sync)
        .read(STATUS)
        .unwrap();
    let attempt = backup
        .as_ref()
        .and_then(|s| s.last_attempt.clone())
        .expect("the backup recorded the push");
    assert!(attempt.ok, "{attempt:?}");
    assert_eq!((attempt.files, attempt.changed, attempt.deleted), (0, 0, 0));
    assert_eq!(attempt.generation, rep.generation);
    assert_eq!(backup.and_then(|s| s.last_success), Some(attempt));

    // What the primary shows of the backup (`status`) is that record.
    let mut link = ThreadLink::new(&p.backup);
    let peer = ns_ha_sync::sender::peer_status(&mut link).unwrap();
    link.join();
    assert!(peer.last_attempt.is_some_and(|r| r.ok));
}

#[test]
fn a_backup_at_the_last_generation_is_a_conflict_not_an_overflow() {
    let p = pair();
    seed(&p);
    let c = cluster();
    let state = StateDir::new(&p.backup, &c.sync);
    state
        .write(
            APPLIED,
            &Applied {
                cluster_id: Some(CLUSTER_ID.into()),
                generation: u64::MAX,
                applied_at: 0,
                baseline_digest: None,
            },
        )
        .unwrap();
    let mut link = ThreadLink::new(&p.backup);
    let e = do_push(&p, &mut link, PushOptions::default()).unwrap_err();
    assert_eq!(code_of(&e), Code::Conflict, "{e:#}");
    assert!(format!("{e:#}").contains("push --force"), "{e:#}");
    assert!(!exists(&p.backup, "/etc/config/firewall"), "applied anyway");
    assert_eq!(generation(&p.backup), u64::MAX);
}

#[test]
fn a_frame_over_the_limit_is_refused_before_it_is_read() {
    let p = pair();
    let mut input = hello_frame(CLUSTER_ID);
    let declared = (ns_ha_common::proto::MAX_MESSAGE + 1) as u32;
    input.extend_from_slice(&declared.to_be_bytes());
    input.extend_from_slice(b"{\"op\":\"manifest\"");
    let replies = session(&p.backup, &input);
    let last = replies.last().expect("a reply to the oversized frame");
    assert!(!last.ok);
    assert_eq!(last.code, Code::Security.as_u8());
    let msg = last.error.clone().unwrap_or_default();
    assert!(msg.contains("limit is 4194304 bytes"), "{msg}");
}

fn begin_chunk(generation: u64, changes: serde_json::Value, more: bool) -> Vec<u8> {
    frame(
        &json!({"op": "begin", "cluster_id": CLUSTER_ID, "generation": generation,
                "base_generation": 0, "force": false, "changes": changes, "deletes": [],
                "more": more}),
        b"",
    )
}

#[test]
fn begin_chunks_are_checked_as_one_transaction() {
    let p = pair();
    let data = b"x\n";
    let change = |path: &str| json!([{"path": path, "entry": file_entry(data), "data": true}]);
    let h = || hello_frame(CLUSTER_ID);
    // A path announced in two chunks is announced twice.
    refused(
        &p,
        vec![
            h(),
            begin_chunk(1, change("/etc/config/a"), true),
            begin_chunk(1, change("/etc/config/a"), false),
        ],
        Code::Peer,
        "announced twice",
    );
    // A chunk cannot switch to another generation mid-transaction.
    refused(
        &p,
        vec![
            h(),
            begin_chunk(1, change("/etc/config/a"), true),
            begin_chunk(2, change("/etc/config/b"), false),
        ],
        Code::Peer,
        "does not match",
    );
    // Two well-formed chunks open one transaction that commits both paths.
    let file = |path: &str| {
        frame(
            &json!({"op": "file", "path": path, "size": data.len(), "sha256": sha(data)}),
            data,
        )
    };
    let script = [
        h(),
        begin_chunk(1, change("/etc/config/a"), true),
        begin_chunk(1, change("/etc/config/b"), false),
        file("/etc/config/a"),
        file("/etc/config/b"),
        frame(&json!({"op": "commit"}), b""),
    ]
    .concat();
    let replies = session(&p.backup, &script);
    assert!(replies.iter().all(|r| r.ok), "{replies:?}");
    assert_eq!(read(&p.backup, "/etc/config/a"), "x\n");
    assert_eq!(read(&p.backup, "/etc/config/b"), "x\n");
    assert_eq!(generation(&p.backup), 1);
}

#[test]
fn the_manifest_answer_reads_the_baseline_only_when_the_backup_changed() {
    let p = pair();
    seed(&p);
    let mut link = ThreadLink::new(&p.backup);
    do_push(&p, &mut link, PushOptions::default()).unwrap();
    let set = SyncSet::for_cluster(&p.backup, Some(&p.cluster)).unwrap();
    let state = StateDir::new(&p.backup, &p.cluster.sync);
    // Files as the apply left them: the baseline is not read (an empty one
    // put in its place changes nothing).
    std::fs::write(state.file("baseline.json"), "{}").unwrap();
    let view = local_view(&p.backup, &set, &state).unwrap();
    assert!(view.drift.is_empty(), "{:?}", view.drift);
    assert_eq!(view.baseline, None, "the baseline is the scan itself");
    // An edit here: the baseline is read, and every path differs from it.
    write(&p.backup, "/etc/config/firewall", "edited on the backup\n");
    let view = local_view(&p.backup, &set, &state).unwrap();
    assert_eq!(view.baseline, Some(Default::default()));
    assert_eq!(view.drift.len(), view.current.len());
}

/// A `files` frame announcing `raw` unpacked bytes, and its packed bytes.
fn batch(frames: &[u8], raw: usize) -> Vec<u8> {
    let packed = ns_ha_common::proto::pack(frames).expect("the frames pack");
    frame(
        &json!({"op": "files", "len": packed.len(), "raw": raw}),
        &packed,
    )
}

#[test]
fn a_batch_of_small_files_is_staged_like_single_frames_and_checked_the_same() {
    let p = pair();
    let data = b"option name 'lan'\n".repeat(40);
    let changes = json!([
        {"path": "/etc/config/a", "entry": file_entry(&data), "data": true},
        {"path": "/etc/config/b", "entry": file_entry(&data), "data": true}
    ]);
    // Without the hash (it is begin's) or with the announced one.
    let inner = [
        frame(
            &json!({"op": "file", "path": "/etc/config/a", "size": data.len()}),
            &data,
        ),
        frame(
            &json!({"op": "file", "path": "/etc/config/b", "size": data.len(), "sha256": sha(&data)}),
            &data,
        ),
    ]
    .concat();
    let script = [
        hello_frame(CLUSTER_ID),
        begin(1, 0, changes.clone()),
        batch(&inner, inner.len()),
        frame(&json!({"op": "commit"}), b""),
    ]
    .concat();
    let replies = session(&p.backup, &script);
    assert!(replies.iter().all(|r| r.ok), "{replies:?}");
    assert_eq!(read(&p.backup, "/etc/config/a").as_bytes(), &data[..]);
    assert_eq!(read(&p.backup, "/etc/config/b").as_bytes(), &data[..]);
    assert_eq!(generation(&p.backup), 1);

    // A file in a batch that is not what begin announced: nothing applied.
    let q = pair();
    let forged = b"option name 'wan'\n".repeat(40);
    let inner = [
        frame(
            &json!({"op": "file", "path": "/etc/config/a", "size": data.len()}),
            &data,
        ),
        frame(
            &json!({"op": "file", "path": "/etc/config/b", "size": forged.len()}),
            &forged,
        ),
    ]
    .concat();
    refused(
        &q,
        vec![
            hello_frame(CLUSTER_ID),
            begin(1, 0, changes.clone()),
            batch(&inner, inner.len()),
            frame(&json!({"op": "commit"}), b""),
        ],
        Code::Security,
        "hash mismatch for /etc/config/b",
    );
    // A batch that unpacks to more than it announced, or holds another
    // op, ends the channel without applying anything.
    let inner = frame(
        &json!({"op": "file", "path": "/etc/config/a", "size": data.len()}),
        &data,
    );
    refused(
        &q,
        vec![
            hello_frame(CLUSTER_ID),
            begin(1, 0, changes.clone()),
            batch(&inner, inner.len() - 1),
            frame(&json!({"op": "commit"}), b""),
        ],
        Code::Security,
        "unpacks to more than",
    );
    let commit = frame(&json!({"op": "commit"}), b"").repeat(30);
    refused(
        &q,
        vec![
            hello_frame(CLUSTER_ID),
            begin(1, 0, changes.clone()),
            batch(&commit, commit.len()),
        ],
        Code::Peer,
        "only file frames",
    );
    refused(
        &q,
        vec![
            hello_frame(CLUSTER_ID),
            begin(1, 0, changes),
            frame(&json!({"op": "files", "len": 5 << 20, "raw": 10}), b""),
        ],
        Code::Security,
        "batch of 5242880 bytes",
    );
}

/// Large files take their own path on both sides (sent without a second
/// hash, written back while they arrive): the backup still gets exactly
/// the primary's bytes, and a push converges after the file changes.
#[test]
fn large_files_arrive_whole_and_verified() {
    let p = pair();
    seed(&p);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut noise = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let big = noise(9 << 20);
    std::fs::write(p.primary.path("/etc/extra/big"), &big).unwrap();
    let mut link = ThreadLink::new(&p.backup);
    let rep = do_push(&p, &mut link, PushOptions::default()).unwrap();
    assert!(rep.bytes_sent > 9 << 20, "{}", rep.bytes_sent);
    assert_eq!(std::fs::read(p.backup.path("/etc/extra/big")).unwrap(), big);
    let other = noise(6 << 20);
    std::fs::write(p.primary.path("/etc/extra/big"), &other).unwrap();
    do_push(&p, &mut link, PushOptions::default()).unwrap();
    assert_eq!(
        std::fs::read(p.backup.path("/etc/extra/big")).unwrap(),
        other
    );
}

/// A link that keeps the channel of a push for the next, as `watch` does
/// over SSH (`SshLink`).
struct KeepingLink {
    // Dropped first: the receiver thread that `link` joins ends with it.
    kept: Option<Box<dyn ns_ha_sync::sender::Channel>>,
    link: ThreadLink,
}

impl ns_ha_sync::sender::Link for KeepingLink {
    fn open(&mut self) -> anyhow::Result<Box<dyn ns_ha_sync::sender::Channel>> {
        match self.kept.take() {
            Some(ch) => Ok(ch),
            None => self.link.open(),
        }
    }
    fn reset(&mut self) {
        self.kept = None;
    }
    fn keep(&mut self, channel: Box<dyn ns_ha_sync::sender::Channel>) {
        self.kept = Some(channel);
    }
}

/// Several pushes over one channel: from its second `manifest` on, the
/// receiver keeps its scan and looks again only at what inotify reported.
/// It must still see every change: its own applies, and edits made on the
/// backup between pushes (reported and kept, as with a fresh receiver).
#[test]
fn pushes_over_one_kept_channel_see_every_change_on_the_backup() {
    let p = pair();
    seed(&p);
    let mut link = KeepingLink {
        kept: None,
        link: ThreadLink::new(&p.backup),
    };
    for round in 0..3 {
        write(
            &p.primary,
            "/etc/config/firewall",
            &format!("round {round}\n"),
        );
        write(&p.primary, &format!("/etc/extra/new{round}/f"), "new\n");
        let rep = push(&p.primary, &p.cluster, &mut link, PushOptions::default()).unwrap();
        assert!(rep.kept.is_empty(), "{rep:?}");
        assert_eq!(
            read(&p.backup, "/etc/config/firewall"),
            format!("round {round}\n")
        );
        assert_eq!(
            read(&p.backup, &format!("/etc/extra/new{round}/f")),
            "new\n"
        );
    }
    assert_eq!(link.link.opens, 1, "one channel served every push");
    // An edit on the backup between pushes: reported and kept.
    write(&p.backup, "/etc/extra/new1/f", "edited on the backup\n");
    write(&p.primary, "/etc/extra/new1/f", "primary's\n");
    let err = push(&p.primary, &p.cluster, &mut link, PushOptions::default());
    let rep = match err {
        Ok(rep) => rep,
        Err(e) => panic!("push: {e:#}"),
    };
    assert_eq!(rep.kept, vec!["/etc/extra/new1/f".to_string()], "{rep:?}");
    assert_eq!(
        read(&p.backup, "/etc/extra/new1/f"),
        "edited on the backup\n"
    );
    // A file deleted on the backup is drift too.
    std::fs::remove_file(p.backup.path("/etc/config/dhcp")).unwrap();
    let drift = local_view(
        &p.backup,
        &SyncSet::for_cluster(&p.backup, Some(&p.cluster)).unwrap(),
        &StateDir::new(&p.backup, &p.cluster.sync),
    )
    .unwrap()
    .drift;
    let rep = push(
        &p.primary,
        &p.cluster,
        &mut link,
        PushOptions {
            recheck: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        rep.drift
            .iter()
            .map(|d| d.path.as_str())
            .collect::<Vec<_>>(),
        drift.iter().map(|d| d.path.as_str()).collect::<Vec<_>>()
    );
    assert!(
        rep.drift
            .iter()
            .any(|d| d.path == "/etc/config/dhcp" && d.what == "deleted"),
        "{rep:?}"
    );
    link.kept = None;
    link.link.join();
}
