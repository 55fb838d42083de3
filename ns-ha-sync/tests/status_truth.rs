//! What a push may do while the backup is MASTER (issue 8 item 16), what
//! `status` records after failed and interrupted attempts (item 14), and how
//! soon a quiet push reports an edit made on the backup (item 15).

mod common;

use common::*;
use ns_ha_common::exit::{code_of, Code};
use ns_ha_common::fixtures::interface;
use ns_ha_common::net::StaticInterfaces;
use ns_ha_common::proto::{NS_HA_VERSION, PROTOCOL_VERSION};
use ns_ha_sync::sender::{push, PushOptions};
use ns_ha_sync::state::{Run, StateDir, Status, ATTEMPT, STATUS};
use serde_json::json;

fn hello_frame() -> Vec<u8> {
    frame(
        &json!({"op": "hello", "protocol": PROTOCOL_VERSION, "version": NS_HA_VERSION, "cluster_id": CLUSTER_ID}),
        b"",
    )
}

/// One new file in a transaction at generation 1, forced past a MASTER
/// backup or not, then `commit`.
fn one_file_push(even_if_backup_is_master: bool) -> Vec<u8> {
    let content = b"pushed\n";
    let entry = json!({"k": "f", "m": 0o644, "u": 0, "g": 0, "t": 1_000_000_000i64,
                       "s": content.len(), "h": sha(content)});
    let mut begin = json!({"op": "begin", "cluster_id": CLUSTER_ID, "generation": 1,
        "base_generation": 0, "force": false,
        "changes": [{"path": "/etc/config/new", "entry": entry, "data": true}], "deletes": []});
    if even_if_backup_is_master {
        begin["even_if_backup_is_master"] = json!(true);
    }
    [
        hello_frame(),
        frame(&begin, b""),
        frame(
            &json!({"op": "file", "path": "/etc/config/new", "size": content.len(), "sha256": sha(content)}),
            content,
        ),
        frame(&json!({"op": "commit"}), b""),
    ]
    .concat()
}

/// The backup's LAN interface holding the cluster's LAN VIP: it is MASTER.
fn master_interfaces() -> StaticInterfaces {
    StaticInterfaces(vec![interface("lan0", &["10.99.1.2/24", "10.99.1.254/24"])])
}

#[test]
fn a_backup_holding_the_vips_refuses_a_push_unless_forced() {
    let p = pair();
    let replies = session_with(&p.backup, &one_file_push(false), &master_interfaces());
    let err = replies
        .iter()
        .find(|r| !r.ok)
        .expect("the MASTER backup accepted the push")
        .clone()
        .into_result::<serde_json::Value>()
        .unwrap_err();
    let msg = format!("{err:#}");
    assert_eq!(code_of(&err), Code::State, "{msg}");
    assert!(
        msg.contains("10.99.1.254"),
        "the reason names the VIP: {msg}"
    );
    assert!(
        msg.contains("--even-if-backup-is-master"),
        "the fix is named: {msg}"
    );
    assert!(!exists(&p.backup, "/etc/config/new"), "applied anyway");

    // Explicitly forced: applied.
    let replies = session_with(&p.backup, &one_file_push(true), &master_interfaces());
    assert!(replies.iter().all(|r| r.ok), "{replies:?}");
    assert_eq!(read(&p.backup, "/etc/config/new"), "pushed\n");
}

#[test]
fn a_backup_without_the_vips_takes_a_push_without_the_flag() {
    let p = pair();
    let ifs = StaticInterfaces(vec![interface("lan0", &["10.99.1.2/24"])]);
    let replies = session_with(&p.backup, &one_file_push(false), &ifs);
    assert!(replies.iter().all(|r| r.ok), "{replies:?}");
    assert_eq!(read(&p.backup, "/etc/config/new"), "pushed\n");
}

fn status_of(root: &ns_ha_common::NodeRoot) -> Status {
    StateDir::new(root, &cluster().sync)
        .current_status()
        .unwrap()
}

fn seed_big(p: &Pair) {
    write(&p.primary, "/etc/config/firewall", "v1\n");
    let big = "x".repeat(4 << 20);
    write(&p.primary, "/etc/extra/big", &big);
}

#[test]
fn a_failed_push_is_recorded_with_its_generation_size_duration_and_error_on_both_nodes() {
    let p = pair();
    write(&p.primary, "/etc/config/firewall", "v0\n");
    let mut link = ThreadLink::new(&p.backup);
    push(&p.primary, &p.cluster, &mut link, PushOptions::default()).unwrap();
    link.join();
    seed_big(&p);
    // The stream is cut 1 MB into the big file.
    link.cut_after = Some(1 << 20);
    let started = std::time::Instant::now();
    let err = push(&p.primary, &p.cluster, &mut link, PushOptions::default()).unwrap_err();
    let took = started.elapsed().as_millis() as u64;
    link.join();

    let st = status_of(&p.primary);
    let run = st.last_attempt.clone().expect("no attempt recorded");
    assert!(!run.ok);
    assert_eq!(run.generation, 2, "the generation it tried: {run:?}");
    assert!(run.bytes >= 1 << 20, "bytes sent before the cut: {run:?}");
    assert!(run.duration_ms <= took, "{run:?}");
    assert_eq!(run.error.as_deref(), Some(format!("{err:#}").as_str()));
    assert_eq!(st.last_failure, Some(run));
    assert_eq!(st.last_success.unwrap().generation, 1);

    let st = status_of(&p.backup);
    let run = st
        .last_attempt
        .clone()
        .expect("nothing recorded on the backup");
    assert!(!run.ok, "{run:?}");
    assert_eq!(run.generation, 2, "{run:?}");
    assert!(run.error.is_some());
    assert_eq!(st.last_success.unwrap().generation, 1);
}

#[test]
fn an_unfinished_attempt_is_running_while_locked_and_interrupted_once_its_process_is_gone() {
    let p = pair();
    let state = StateDir::new(&p.primary, &p.cluster.sync);
    let lock = state.lock(std::time::Duration::ZERO).unwrap();
    state
        .mark_attempt(&Run {
            at: 1_700_000_000,
            generation: 7,
            files: 3,
            bytes: 4096,
            ..Default::default()
        })
        .unwrap();
    let st = state.current_status().unwrap();
    assert_eq!(st.running.as_ref().map(|r| r.generation), Some(7));
    assert!(st.last_attempt.is_none(), "{st:?}");
    drop(lock); // the process holding it died

    let st = state.current_status().unwrap();
    assert!(st.running.is_none());
    let run = st
        .last_attempt
        .expect("the interrupted run is not recorded");
    assert!(!run.ok && run.interrupted, "{run:?}");
    assert_eq!((run.generation, run.files, run.bytes), (7, 3, 4096));
    assert!(run.error.unwrap().contains("interrupted"));
    assert!(!state.file(ATTEMPT).exists(), "the marker stays");
}

#[test]
fn a_push_after_an_interrupted_one_records_it_before_its_own_run() {
    let p = pair();
    write(&p.primary, "/etc/config/firewall", "v1\n");
    let state = StateDir::new(&p.primary, &p.cluster.sync);
    // What a push killed after `begin` leaves.
    state
        .mark_attempt(&Run {
            at: 1_700_000_000,
            generation: 1,
            files: 1,
            bytes: 3,
            ..Default::default()
        })
        .unwrap();
    let mut link = ThreadLink::new(&p.backup);
    push(&p.primary, &p.cluster, &mut link, PushOptions::default()).unwrap();
    link.join();
    let st = state.current_status().unwrap();
    assert!(st.last_attempt.unwrap().ok);
    let failed = st.last_failure.expect("the interrupted push was forgotten");
    assert!(
        failed.interrupted && failed.at == 1_700_000_000,
        "{failed:?}"
    );
}

#[test]
fn recover_discarding_a_cut_transfer_shows_a_failed_attempt_on_the_backup() {
    let p = pair();
    write(&p.primary, "/etc/config/firewall", "v1\n");
    let mut link = ThreadLink::new(&p.backup);
    push(&p.primary, &p.cluster, &mut link, PushOptions::default()).unwrap();
    link.join();
    assert!(status_of(&p.backup).last_attempt.unwrap().ok);
    write(&p.primary, "/etc/config/firewall", "v2\n");
    write(&p.primary, "/etc/config/dhcp", "v2\n");
    let state = StateDir::new(&p.backup, &p.cluster.sync);
    std::fs::write(state.file("crash-at"), "file:1").unwrap();
    let r = push(
        &p.primary,
        &p.cluster,
        &mut ProcLink {
            backup: p.backup.clone(),
        },
        PushOptions::default(),
    );
    assert!(r.is_err(), "the receiver did not die");
    let out = std::process::Command::new(bin())
        .args(["--root", &p.backup.base().to_string_lossy(), "recover"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let st: Status = state.read(STATUS).unwrap().unwrap();
    let run = st.last_attempt.expect("nothing recorded");
    assert!(!run.ok && run.interrupted, "still shown as ok: {run:?}");
    assert_eq!(run.generation, 2, "{run:?}");
    assert!(
        run.error
            .as_deref()
            .unwrap_or_default()
            .contains("discarded"),
        "{run:?}"
    );
    assert_eq!(st.last_success.unwrap().generation, 1);
}

#[test]
fn a_backup_edit_is_reported_by_a_quiet_push_within_peer_recheck_secs() {
    let mut p = pair();
    // A bound nothing on a loaded machine can reach first, for the no-op...
    p.cluster.sync.peer_recheck_secs = 3600;
    write(&p.primary, "/etc/config/firewall", "v1\n");
    let mut link = ThreadLink::new(&p.backup);
    push(&p.primary, &p.cluster, &mut link, PushOptions::default()).unwrap();
    link.join();
    write(&p.backup, "/etc/config/firewall", "edited on the backup\n");
    // At once: the fast no-op (the backup is not asked).
    let opens = link.opens;
    let rep = push(&p.primary, &p.cluster, &mut link, PushOptions::default()).unwrap();
    assert!(rep.noop && link.opens == opens, "{rep:?}");
    // ...then a 1 s bound, passed for sure once 1.1 s have gone by.
    p.cluster.sync.peer_recheck_secs = 1;
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let rep = push(&p.primary, &p.cluster, &mut link, PushOptions::default()).unwrap();
    link.join();
    assert!(!rep.noop, "{rep:?}");
    assert_eq!(
        rep.drift
            .iter()
            .map(|d| d.path.as_str())
            .collect::<Vec<_>>(),
        ["/etc/config/firewall"]
    );
    assert_eq!(rep.kept, ["/etc/config/firewall"], "{rep:?}");
}

#[test]
fn the_default_bound_for_reporting_a_backup_edit_is_a_minute() {
    assert!(
        ns_ha_common::sync_config::SyncSettings::default().peer_recheck_secs <= 60,
        "README: a push reports a backup edit at most a minute after it was made"
    );
}
