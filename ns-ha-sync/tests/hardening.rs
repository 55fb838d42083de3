//! Issue 8 items 1, 7 and 12 without a lab (sender and receiver in one
//! process): paths that change type, symlinks resolved through links, and
//! backup edits made while a push is in flight.

mod common;

use common::*;
use ns_ha_common::exit::{code_of, Code};
use ns_ha_common::proto::{NS_HA_VERSION, PROTOCOL_VERSION};
use ns_ha_sync::receiver::local_view;
use ns_ha_sync::rules::SyncSet;
use ns_ha_sync::sender::{push, PushOptions, PushReport};
use ns_ha_sync::state::{Applied, StateDir, Status, APPLIED, STATUS};
use serde_json::json;
use std::io::Read;
use std::os::unix::fs::symlink;

fn do_push(p: &Pair, force: bool) -> anyhow::Result<PushReport> {
    let mut link = ThreadLink::new(&p.backup);
    let r = push(
        &p.primary,
        &p.cluster,
        &mut link,
        PushOptions {
            force,
            ..Default::default()
        },
    );
    link.join();
    r
}

fn state(p: &Pair) -> StateDir {
    StateDir::new(&p.backup, &p.cluster.sync)
}

fn generation(p: &Pair) -> u64 {
    state(p)
        .read::<Applied>(APPLIED)
        .unwrap()
        .unwrap_or_default()
        .generation
}

fn drift(p: &Pair) -> Vec<String> {
    let set = SyncSet::load(&p.backup, &p.cluster.sync).unwrap();
    local_view(&p.backup, &set, &state(p))
        .unwrap()
        .drift
        .into_iter()
        .map(|d| d.path)
        .collect()
}

fn mkfifo(root: &ns_ha_common::NodeRoot, path: &str) {
    nix::unistd::mkfifo(
        &root.path(path),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
}

/// Everything under `dir` (relative names), for what was moved aside.
fn names_under(dir: &std::path::Path) -> Vec<String> {
    walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .map(|e| {
            e.unwrap()
                .path()
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Item 1: a directory that becomes a file while the backup's copy holds a
/// kept edit, a path the backup does not list (a FIFO) and a local symlink;
/// and a file that becomes a directory. Before the fix the first push left a
/// journal no command could finish ("must become a file but is a non-empty
/// directory") and the second direction was refused as a symlink escape.
#[test]
fn paths_that_change_type_sync_in_both_directions_and_never_wedge() {
    let p = pair();
    write(&p.primary, "/etc/config/d/a", "a v1\n");
    write(&p.primary, "/etc/config/d/b", "b v1\n");
    write(&p.primary, "/etc/config/d/sub/c", "c v1\n");
    write(&p.primary, "/etc/config/f", "a file for now\n");
    write(&p.primary, "/etc/config/dhcp", "dhcp v1\n");
    do_push(&p, false).unwrap();
    // The backup's copy of d holds more than the sync will remove.
    write(&p.backup, "/etc/config/d/a", "edited on the backup\n");
    mkfifo(&p.backup, "/etc/config/d/fifo");
    symlink("/tmp", p.backup.path("/etc/config/d/local")).unwrap();
    // The primary turns d into a file and f into a directory.
    std::fs::remove_dir_all(p.primary.path("/etc/config/d")).unwrap();
    write(&p.primary, "/etc/config/d", "now a file\n");
    std::fs::remove_file(p.primary.path("/etc/config/f")).unwrap();
    write(&p.primary, "/etc/config/f/x", "inside the new directory\n");

    let rep = do_push(&p, false).unwrap();
    assert_eq!(
        rep.kept,
        vec!["/etc/config/d", "/etc/config/d/a"],
        "{rep:?}"
    );
    assert_eq!(read(&p.backup, "/etc/config/d/a"), "edited on the backup\n");
    assert!(!exists(&p.backup, "/etc/config/d/b"), "the rest of d goes");
    assert!(!exists(&p.backup, "/etc/config/d/sub"));
    assert_eq!(
        read(&p.backup, "/etc/config/f/x"),
        "inside the new directory\n"
    );
    assert!(!state(&p).journal().exists(), "a journal was left behind");

    // Not wedged: the next push still carries other changes, and keeps d.
    write(&p.primary, "/etc/config/dhcp", "dhcp v2\n");
    let rep = do_push(&p, false).unwrap();
    assert!(rep.kept.contains(&"/etc/config/d".to_string()), "{rep:?}");
    assert_eq!(read(&p.backup, "/etc/config/dhcp"), "dhcp v2\n");

    // push --force makes progress: d becomes the file, what the sync does
    // not own is moved aside into the state dir, not deleted.
    let rep = do_push(&p, true).unwrap();
    assert!(rep.kept.is_empty(), "{rep:?}");
    assert_eq!(snapshot(&p.backup, TOPS), snapshot(&p.primary, TOPS));
    let displaced = state(&p).file("displaced");
    let mut moved = names_under(&displaced);
    moved.sort();
    assert!(
        moved.iter().any(|n| n.ends_with("etc/config/d/fifo"))
            && moved.iter().any(|n| n.ends_with("etc/config/d/local")),
        "{moved:?}"
    );
    assert!(drift(&p).is_empty(), "{:?}", drift(&p));

    // And back: the file becomes a directory again, the directory a file.
    std::fs::remove_file(p.primary.path("/etc/config/d")).unwrap();
    write(&p.primary, "/etc/config/d/again", "dir again\n");
    std::fs::remove_dir_all(p.primary.path("/etc/config/f")).unwrap();
    write(&p.primary, "/etc/config/f", "file again\n");
    let rep = do_push(&p, false).unwrap();
    assert!(rep.kept.is_empty(), "{rep:?}");
    assert_eq!(snapshot(&p.backup, TOPS), snapshot(&p.primary, TOPS));
}

/// Item 1: a file edited on the backup that the primary turns into a
/// directory: the file is kept, and so is everything announced below it
/// (nothing is written through a file); --force then converges.
#[test]
fn a_kept_file_keeps_what_the_primary_puts_below_it() {
    let p = pair();
    write(&p.primary, "/etc/config/f", "v1\n");
    do_push(&p, false).unwrap();
    write(&p.backup, "/etc/config/f", "edited on the backup\n");
    std::fs::remove_file(p.primary.path("/etc/config/f")).unwrap();
    write(&p.primary, "/etc/config/f/x", "x\n");
    let rep = do_push(&p, false).unwrap();
    assert_eq!(
        rep.kept,
        vec!["/etc/config/f", "/etc/config/f/x"],
        "{rep:?}"
    );
    assert_eq!(read(&p.backup, "/etc/config/f"), "edited on the backup\n");
    do_push(&p, true).unwrap();
    assert_eq!(snapshot(&p.backup, TOPS), snapshot(&p.primary, TOPS));
}

/// Item 1: a journal committed before the obstacle appeared (the receiver
/// died after the commit point, then something was put in the directory):
/// recovery finishes the generation, keeps the path and records why; a plain
/// push reports it, push --force gets past it. Before the fix every
/// `recover`, `manifest` and `begin` failed on the same op.
#[test]
fn a_replay_that_cannot_finish_is_decided_by_recover_and_recorded() {
    let p = pair();
    write(&p.primary, "/etc/config/d/a", "a\n");
    write(&p.primary, "/etc/config/other", "v1\n");
    do_push(&p, false).unwrap();
    std::fs::remove_dir_all(p.primary.path("/etc/config/d")).unwrap();
    write(&p.primary, "/etc/config/d", "a file now\n");
    write(&p.primary, "/etc/config/other", "v2\n");
    std::fs::write(state(&p).file("crash-at"), "journal").unwrap();
    let r = push(
        &p.primary,
        &p.cluster,
        &mut ProcLink {
            backup: p.backup.clone(),
        },
        PushOptions::default(),
    );
    assert!(r.is_err(), "the receiver did not die");
    assert!(state(&p).journal().exists());
    // After the commit point, a file appears in the directory.
    write(
        &p.backup,
        "/etc/config/d/late",
        "put here after the commit\n",
    );

    let out = std::process::Command::new(bin())
        .args([
            "--root",
            &p.backup.base().to_string_lossy(),
            "--json",
            "recover",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["completed"], 2, "{doc}");
    assert_eq!(doc["kept"][0]["path"], "/etc/config/d", "{doc}");
    assert!(
        doc["kept"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("not empty"),
        "{doc}"
    );
    assert!(!state(&p).journal().exists());
    assert_eq!(generation(&p), 2);
    assert_eq!(read(&p.backup, "/etc/config/other"), "v2\n");
    let st: Status = state(&p).read(STATUS).unwrap().unwrap();
    let last = st.last_attempt.unwrap();
    assert_eq!(last.kept, vec!["/etc/config/d"], "{last:?}");
    assert!(last.error.unwrap().contains("push --force"));

    let rep = do_push(&p, false).unwrap();
    assert!(rep.kept.contains(&"/etc/config/d".to_string()), "{rep:?}");
    let rep = do_push(&p, true).unwrap();
    assert!(rep.kept.is_empty(), "{rep:?}");
    assert_eq!(read(&p.backup, "/etc/config/d"), "a file now\n");
    assert_eq!(snapshot(&p.backup, TOPS), snapshot(&p.primary, TOPS));
}

fn hello_frame() -> Vec<u8> {
    frame(
        &json!({"op": "hello", "protocol": PROTOCOL_VERSION, "version": NS_HA_VERSION, "cluster_id": CLUSTER_ID}),
        b"",
    )
}

fn begin_frame(generation: u64, base: u64, changes: serde_json::Value) -> Vec<u8> {
    begin_with_deletes(generation, base, changes, json!([]))
}

fn begin_with_deletes(
    generation: u64,
    base: u64,
    changes: serde_json::Value,
    deletes: serde_json::Value,
) -> Vec<u8> {
    frame(
        &json!({"op": "begin", "cluster_id": CLUSTER_ID, "generation": generation,
                "base_generation": base, "force": false, "changes": changes, "deletes": deletes}),
        b"",
    )
}

fn link_change(path: &str, target: &str) -> serde_json::Value {
    json!({"path": path, "entry": {"k": "l", "m": 0, "u": 0, "g": 0, "l": target}, "data": false})
}

fn dir_change(path: &str) -> serde_json::Value {
    json!({"path": path, "entry": {"k": "d", "m": 0o755, "u": 0, "g": 0}, "data": false})
}

fn first_error(replies: &[ns_ha_common::proto::Reply]) -> anyhow::Error {
    replies
        .iter()
        .find(|r| !r.ok)
        .expect("nothing refused")
        .clone()
        .into_result::<serde_json::Value>()
        .unwrap_err()
}

/// Item 7: containment follows links. The case (`d -> .` and
/// `e -> d/d/../../root/.ssh/authorized_keys`, textually inside the set) is
/// refused, in one transaction or in two, and the primary does not send it.
#[test]
fn symlinks_are_contained_after_resolving_the_links_they_pass() {
    let p = pair();
    write(&p.backup, "/root/.ssh/authorized_keys", "key\n");
    // Textually /etc/config/root/.ssh/authorized_keys; really /root/.ssh/...
    let escape = "d/d/../../root/.ssh/authorized_keys";
    // Both links in one transaction.
    let replies = session(
        &p.backup,
        &[
            hello_frame(),
            begin_frame(
                1,
                0,
                json!([
                    link_change("/etc/config/d", "."),
                    link_change("/etc/config/e", escape)
                ]),
            ),
        ]
        .concat(),
    );
    let err = first_error(&replies);
    assert_eq!(code_of(&err), Code::Security, "{err:#}");
    assert!(format!("{err:#}").contains("/root"), "{err:#}");
    assert!(!exists(&p.backup, "/etc/config/d"));

    // A link accepted while d was a real directory; then d becomes `d -> .`.
    let ok = session(
        &p.backup,
        &[
            hello_frame(),
            begin_frame(
                1,
                0,
                json!([
                    dir_change("/etc/config/d"),
                    dir_change("/etc/config/d/d"),
                    link_change("/etc/config/e", escape)
                ]),
            ),
            frame(&json!({"op": "commit"}), b""),
        ]
        .concat(),
    );
    assert!(ok.iter().all(|r| r.ok), "{ok:?}");
    let replies = session(
        &p.backup,
        &[
            hello_frame(),
            begin_with_deletes(
                2,
                1,
                json!([link_change("/etc/config/d", ".")]),
                json!(["/etc/config/d/d"]),
            ),
        ]
        .concat(),
    );
    let err = first_error(&replies);
    assert_eq!(code_of(&err), Code::Security, "{err:#}");
    assert!(format!("{err:#}").contains("/etc/config/e"), "{err:#}");
    assert!(std::fs::symlink_metadata(p.backup.path("/etc/config/d"))
        .unwrap()
        .is_dir());

    // Loops and chains: a loop is refused, a chain that stays inside is not.
    for (changes, good) in [
        (
            json!([
                link_change("/etc/config/l1", "l2"),
                link_change("/etc/config/l2", "l1")
            ]),
            false,
        ),
        (
            json!([
                link_change("/etc/config/c1", "c2"),
                link_change("/etc/config/c2", "../extra/x")
            ]),
            true,
        ),
        (
            json!([
                link_change("/etc/config/c1", "c2"),
                link_change("/etc/config/c2", "/root")
            ]),
            false,
        ),
        (json!([link_change("/etc/config/abs", "/etc/passwd")]), true),
    ] {
        let replies = session(
            &p.backup,
            &[hello_frame(), begin_frame(2, 1, changes.clone())].concat(),
        );
        assert_eq!(replies.iter().all(|r| r.ok), good, "{changes}: {replies:?}");
    }

    // The primary does not send what the backup would refuse: listed as refused.
    let q = pair();
    write(&q.primary, "/etc/config/firewall", "fw\n");
    symlink(".", q.primary.path("/etc/config/d")).unwrap();
    symlink(escape, q.primary.path("/etc/config/e")).unwrap();
    let rep = do_push(&q, false).unwrap();
    assert!(
        rep.refused
            .iter()
            .any(|(p, why)| p == "/etc/config/e" && why.contains("/root")),
        "{:?}",
        rep.refused
    );
    assert!(!exists(&q.backup, "/etc/config/e"));
    assert_eq!(read(&q.backup, "/etc/config/firewall"), "fw\n");
}

/// Feeds `data` to the receiver and runs `hook` once, right before the
/// receiver reads byte `at` (the `commit` frame): "while the push is in flight".
struct EditWhileStaging<'a> {
    data: &'a [u8],
    pos: usize,
    at: usize,
    hook: Option<Box<dyn FnOnce() + 'a>>,
}

impl Read for EditWhileStaging<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.at {
            if let Some(h) = self.hook.take() {
                h();
            }
        }
        let end = if self.pos < self.at {
            self.at
        } else {
            self.data.len()
        };
        let n = buf.len().min(end - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Item 12: edits made on the backup after the manifest answer and before
/// the renames (content rewritten in place, a file created where the push
/// creates one, a file the push deletes edited) are kept and reported by the
/// commit and by verify; a file only touched is not an edit. Before the fix
/// the commit replaced all of them and reported nothing kept.
#[test]
fn an_edit_made_while_the_push_is_in_flight_is_kept_and_reported() {
    let p = pair();
    write(&p.primary, "/etc/config/f08.conf", "f08 v1\n");
    write(&p.primary, "/etc/config/gone", "to be deleted\n");
    write(&p.primary, "/etc/config/touched", "same content\n");
    do_push(&p, false).unwrap();
    let file = |path: &str, body: &[u8]| {
        frame(
            &json!({"op": "file", "path": path, "size": body.len(), "sha256": sha(body)}),
            body,
        )
    };
    let entry = |body: &[u8]| {
        json!({"k": "f", "m": 0o644, "u": nix::unistd::getuid().as_raw(), "g": nix::unistd::getgid().as_raw(),
               "t": 1_000_000_000i64, "s": body.len(), "h": sha(body)})
    };
    let change =
        |path: &str, body: &[u8]| json!({"path": path, "entry": entry(body), "data": true});
    let big = vec![7u8; 3 << 20];
    let mut input = [
        hello_frame(),
        frame(&json!({"op": "manifest"}), b""),
        begin_with_deletes(
            2,
            1,
            json!([
                change("/etc/config/big", &big),
                change("/etc/config/f08.conf", b"f08 v2\n"),
                change("/etc/config/new", b"primary's new\n"),
                change("/etc/config/touched", b"primary's version\n")
            ]),
            json!(["/etc/config/gone"]),
        ),
        file("/etc/config/big", &big),
        file("/etc/config/f08.conf", b"f08 v2\n"),
        file("/etc/config/new", b"primary's new\n"),
        file("/etc/config/touched", b"primary's version\n"),
    ]
    .concat();
    let at = input.len();
    input.extend(frame(&json!({"op": "commit"}), b""));
    let backup = p.backup.clone();
    let hook = move || {
        std::fs::OpenOptions::new()
            .append(true)
            .open(backup.path("/etc/config/f08.conf"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"edited during the push\n"))
            .unwrap();
        write(
            &backup,
            "/etc/config/new",
            "created on the backup meanwhile\n",
        );
        write(&backup, "/etc/config/gone", "edited before its deletion\n");
        let t = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(backup.path("/etc/config/touched"))
            .and_then(|f| f.set_modified(t))
            .unwrap();
    };
    let runner = ns_ha_common::cmd::RecordingRunner::new();
    // A backup that holds no VIP (it refuses a push while MASTER).
    let ifs = ns_ha_common::net::StaticInterfaces::default();
    let mut rx =
        ns_ha_sync::receiver::Receiver::new(p.backup.clone(), &runner).with_interfaces(&ifs);
    let mut out = Vec::new();
    let mut r = EditWhileStaging {
        data: &input,
        pos: 0,
        at,
        hook: Some(Box::new(hook)),
    };
    rx.serve(&mut r, &mut out).unwrap();
    let mut rest = &out[..];
    let mut replies = Vec::new();
    while let Ok(Some(v)) = ns_ha_common::proto::read_value(&mut rest) {
        replies.push(serde_json::from_value::<ns_ha_common::proto::Reply>(v).unwrap());
    }
    let commit: ns_ha_sync::wire::CommitReply =
        replies.last().unwrap().clone().into_result().unwrap();
    assert_eq!(
        commit.kept,
        vec![
            "/etc/config/f08.conf",
            "/etc/config/gone",
            "/etc/config/new"
        ],
        "{commit:?}"
    );
    assert_eq!(
        read(&p.backup, "/etc/config/f08.conf"),
        "f08 v1\nedited during the push\n"
    );
    assert_eq!(
        read(&p.backup, "/etc/config/new"),
        "created on the backup meanwhile\n"
    );
    assert_eq!(
        read(&p.backup, "/etc/config/gone"),
        "edited before its deletion\n"
    );
    assert_eq!(
        read(&p.backup, "/etc/config/touched"),
        "primary's version\n"
    );
    assert_eq!(
        std::fs::read(p.backup.path("/etc/config/big")).unwrap(),
        big
    );
    assert_eq!(generation(&p), 2);
    // verify (the backup's drift) lists each of them afterwards.
    assert_eq!(
        drift(&p),
        vec![
            "/etc/config/f08.conf",
            "/etc/config/gone",
            "/etc/config/new"
        ]
    );
}
