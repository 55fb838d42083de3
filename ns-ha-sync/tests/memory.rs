//! Issue 8 item 9: the receiver's memory is bounded whatever the sender
//! announces. The real binary runs as a child process (its stdin/stdout are
//! the channel) and the test reads its peak RSS (`VmHWM`) after a `begin`
//! of 370,000 entries, the size that once took 787 MB.

mod common;

use std::io::{BufReader, BufWriter, Write};
use std::process::{Command, Stdio};

use common::*;
use ns_ha_common::proto::{call, write_msg, HelloReply, Reply};
use ns_ha_sync::manifest::{Change, Entry, Kind};
use ns_ha_sync::sender::{open_transaction, peer_manifest};
use ns_ha_sync::wire::{BeginRequest, SyncRequest};

const ENTRIES: usize = 370_000;
/// The bound stated in ns-ha-sync/README.md ("Limits"): a fixed part plus
/// a cost per entry announced by the sender or held in the backup's own set.
const BASE_BYTES: u64 = 24 << 20;
const PER_ENTRY_BYTES: u64 = 600;

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

fn big_begin(entries: usize) -> BeginRequest {
    let changes = (0..entries)
        .map(|i| Change {
            path: format!("/etc/extra/d{:02}/{i:06}", i % 100),
            entry: Entry {
                kind: Kind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime_ns: 1_000 * i as i64,
                size: 100,
                sha256: Some(format!("{:064x}", i)),
                target: None,
            },
            data: true,
        })
        .collect();
    BeginRequest {
        cluster_id: CLUSTER_ID.into(),
        generation: 1,
        base_generation: 0,
        force: false,
        even_if_backup_is_master: false,
        changes,
        deletes: Vec::new(),
        more: false,
    }
}

#[test]
fn a_begin_of_370000_entries_stays_under_the_stated_bound() {
    let p = pair();
    write(&p.backup, "/etc/extra/keep", "x\n");
    let mut child = Command::new(bin())
        .args(["--root", &p.backup.base().to_string_lossy(), "receive"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut w = BufWriter::new(child.stdin.take().unwrap());
    let mut r = BufReader::new(child.stdout.take().unwrap());
    let mut ch = ReadWrite(&mut r, &mut w);
    let _: HelloReply = call(&mut ch, &hello(CLUSTER_ID)).unwrap();
    let (_, peer) = peer_manifest(&mut ch, None).unwrap();
    assert!(peer.contains_key("/etc/extra/keep"));
    let req = big_begin(ENTRIES);
    let t = std::time::Instant::now();
    let before = vm_hwm_kib(pid);
    let reply = open_transaction(&mut ch, req).unwrap();
    assert!(reply.kept.is_empty());
    let peak = vm_hwm_kib(pid);
    let took = t.elapsed();
    write_msg(&mut ch, &SyncRequest::Abort).unwrap();
    let _: Reply = ns_ha_common::proto::read_msg(&mut ch).unwrap();
    drop(w);
    child.wait().unwrap();
    println!(
        "receiver peak RSS: {} MiB before begin, {} MiB after a begin of {ENTRIES} entries ({:.1} s)",
        before / 1024,
        peak / 1024,
        took.as_secs_f64()
    );
    let bound = BASE_BYTES + PER_ENTRY_BYTES * (ENTRIES as u64 + 1);
    assert!(
        peak * 1024 <= bound,
        "receiver peak RSS {} KiB is over the stated bound of {} KiB",
        peak,
        bound / 1024
    );
}

/// A reader and a writer as one channel.
struct ReadWrite<'a, R, W>(&'a mut R, &'a mut W);
impl<R: std::io::Read, W> std::io::Read for ReadWrite<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}
impl<R, W: Write> Write for ReadWrite<'_, R, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.1.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.1.flush()
    }
}
