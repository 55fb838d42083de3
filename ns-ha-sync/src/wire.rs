//! The sync operations on the framing of `ns_ha_common::proto`.
//!
//! A push is one channel: `hello` (pairing control op), `manifest`, `begin`,
//! a `file` frame (JSON header + raw bytes, no reply) per file whose content
//! changed (small files several at a time in a deflated `files` batch of
//! such frames), then `commit` (or `abort`); or, when the manifests show nothing
//! to send, `in-sync` instead of a transaction, so the backup records the
//! check as its last attempt too. `status` can be asked any time after
//! `hello`. Files are streamed without a round trip each; any problem with
//! one is remembered and reported by `commit`, which then applies nothing.
//! A large file the backup holds in another version goes as a delta
//! instead (`signature`, answered with the block signature of the backup's
//! copy, then `delta`, answered with whether it rebuilt the file; when not,
//! the file follows whole in a `file` frame).

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use ns_ha_common::exit::{io_failure, Code};

use crate::manifest::{Change, Drift, Manifest};

/// Raw bytes of `file` frames the sender gathers into one `files` batch.
pub const BATCH_BYTES: usize = 1 << 20;
/// The most a `files` batch may be, packed or unpacked (the receiver refuses more).
pub const MAX_BATCH: u64 = 4 << 20;
/// Files up to this size travel in batches; larger ones in a `file` frame
/// of their own, never packed (a large file is read, hashed and sent at
/// disk speed; packing would cost more time than the link saves).
pub const BATCH_FILE: u64 = 64 << 10;

/// Most entries a manifest or a transaction may carry: what bounds the
/// memory either side spends on what the other sends (README, "Limits").
pub const MAX_ENTRIES: usize = 400_000;

/// The receiver gives up on a sender that sends no byte (or takes none of
/// its reply) for this long: a primary that froze or died mid-push must not
/// hold the backup's sync lock until TCP notices (hours). The sender's SSH
/// keepalives do not count: they reach sshd, not the receiver.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The size asked for the receiver's pipes from sshd (the kernel's default
/// limit for an unprivileged process, `/proc/sys/fs/pipe-max-size`).
const PIPE_BYTES: i32 = 1 << 20;

/// One end of the receiver's channel (its stdin or stdout, a pipe from
/// sshd) with an idle timeout: each read or write waits at most `idle` for
/// the descriptor to become ready, then fails with "peer unreachable".
pub struct IdleTimeoutFd {
    file: File,
    idle: Duration,
    what: &'static str,
}

impl IdleTimeoutFd {
    /// Wrap a duplicate of `fd` (made non-blocking, so a write never waits
    /// beyond `idle` for a reader that stopped reading).
    pub fn new(fd: impl AsFd, idle: Duration, what: &'static str) -> std::io::Result<Self> {
        let file = File::from(fd.as_fd().try_clone_to_owned()?);
        let flags = fcntl(file.as_raw_fd(), FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(file.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
        // A pipe from sshd holds 64 KiB: a large file then moves in 64 KiB
        // turns of sshd and the receiver, each a wake-up that waits for a
        // CPU on a busy node. 1 MiB lets sshd decrypt ahead while the
        // receiver hashes and writes. Best effort (not a pipe: nothing to do).
        let _ = fcntl(file.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_BYTES));
        Ok(IdleTimeoutFd { file, idle, what })
    }

    /// Wait until the descriptor is ready for `flags`, at most `idle`.
    fn ready(&self, flags: PollFlags) -> std::io::Result<()> {
        let ms = self.idle.as_millis().min(i32::MAX as u128) as i32;
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        loop {
            let mut fds = [PollFd::new(self.file.as_fd(), flags)];
            match poll(&mut fds, timeout) {
                Ok(0) => {
                    return Err(io_failure(
                        std::io::ErrorKind::TimedOut,
                        Code::Peer,
                        format!(
                            "the sender {} for {} s: it stalled or died; the transaction is dropped and the sync lock released",
                            self.what,
                            self.idle.as_secs_f32()
                        ),
                    ))
                }
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn retry<T>(
        &mut self,
        flags: PollFlags,
        mut op: impl FnMut(&mut File) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        loop {
            match op(&mut self.file) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.ready(flags)?,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }
}

impl Read for IdleTimeoutFd {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.retry(PollFlags::POLLIN, |f| f.read(buf))
    }
}

impl Write for IdleTimeoutFd {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.retry(PollFlags::POLLOUT, |f| f.write(buf))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The sync ops (the control ops `hello`, `inspect`, `install-cluster` are
/// `ns_ha_common::control`'s).
pub const SYNC_OPS: &[&str] = &[
    "manifest",
    "begin",
    "file",
    "files",
    "signature",
    "delta",
    "commit",
    "abort",
    "in-sync",
    "status",
];

/// Requests of the sync protocol.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SyncRequest {
    /// The backup's manifest of its sync set. With `known_digest`, the entries
    /// are left out when the backup's manifest has exactly that digest.
    Manifest {
        #[serde(default)]
        known_digest: Option<String>,
    },
    /// Open a transaction: every change and deletion, announced up front so
    /// the backup checks them all before taking any data.
    Begin(BeginRequest),
    /// The content of an announced file follows this frame (`size` bytes).
    /// `sha256` may be left out: it is the one `begin` announced (sent
    /// again, it cost 10,000 small files 700 KB).
    File {
        path: String,
        size: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
    },
    /// A batch of `file` frames (small files), deflated: `len` bytes follow
    /// this frame, which unpack to exactly `raw` bytes of frames. No reply,
    /// like `file`.
    Files { len: u64, raw: u64 },
    /// The block signature of the backup's copy of an announced file, if
    /// that copy's content is `base_sha256` (what the sender diffs against).
    /// Answered with a [`SignatureReply`], the signature's bytes after it.
    Signature { path: String, base_sha256: String },
    /// The content of an announced file as a delta against the copy just
    /// signed: `len` bytes follow this frame. Answered with a [`DeltaReply`];
    /// when not applied, the sender sends the file whole.
    Delta {
        path: String,
        size: u64,
        sha256: String,
        len: u64,
    },
    /// Make the transaction live (journaled).
    Commit,
    /// Drop the transaction.
    Abort,
    /// After `manifest`: the sender found nothing to send, the backup holds
    /// its files (`generation` is the sender's view). The backup records a
    /// successful attempt that changed nothing.
    InSync { generation: u64 },
    /// The backup's sync status.
    Status,
}

/// What a `begin` announces: the transaction the sender wants to open.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BeginRequest {
    pub cluster_id: String,
    pub generation: u64,
    /// The generation the sender diffed against.
    pub base_generation: u64,
    /// Overwrite files edited on the backup.
    pub force: bool,
    /// Apply even though the backup holds the cluster's VIPs (it is MASTER
    /// itself); sent only when set, so an older backup still parses the rest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub even_if_backup_is_master: bool,
    pub changes: Vec<Change>,
    pub deletes: Vec<String>,
    /// More `begin` chunks of this transaction follow (same header, the next
    /// changes and deletes). Each chunk is answered; the last one's answer
    /// is the transaction's.
    #[serde(default, skip_serializing_if = "is_false")]
    pub more: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl BeginRequest {
    /// Split into chunks of about `budget` encoded bytes each, in order
    /// (changes first, then deletes); the last has `more: false`.
    pub fn into_chunks(self, budget: usize) -> Vec<BeginRequest> {
        let header = |changes, deletes| BeginRequest {
            cluster_id: self.cluster_id.clone(),
            generation: self.generation,
            base_generation: self.base_generation,
            force: self.force,
            even_if_backup_is_master: self.even_if_backup_is_master,
            changes,
            deletes,
            more: true,
        };
        let mut chunks = Vec::new();
        let (mut changes, mut deletes, mut size) = (Vec::new(), Vec::new(), 0usize);
        for c in self.changes.iter() {
            size += encoded_len(c);
            changes.push(c.clone());
            if size >= budget {
                chunks.push(header(std::mem::take(&mut changes), Vec::new()));
                size = 0;
            }
        }
        for d in self.deletes.iter() {
            size += d.len() + 3;
            deletes.push(d.clone());
            if size >= budget {
                chunks.push(header(
                    std::mem::take(&mut changes),
                    std::mem::take(&mut deletes),
                ));
                size = 0;
            }
        }
        chunks.push(header(changes, deletes));
        if let Some(last) = chunks.last_mut() {
            last.more = false;
        }
        chunks
    }
}

/// Encoded length of one value (what it adds to a frame).
pub fn encoded_len<T: Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).map(|b| b.len() + 1).unwrap_or(0)
}

/// Answer to `manifest`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestReply {
    pub cluster_id: Option<String>,
    pub generation: u64,
    pub digest: String,
    /// Digest of the backup's sync rules (the primary warns when they differ).
    pub rules_digest: String,
    /// `None` when `known_digest` matched.
    pub entries: Option<Manifest>,
    /// Paths edited on the backup since the last sync.
    pub drift: Vec<Drift>,
    /// The entries and the drift follow in [`ManifestPart`] frames (until
    /// one with `more: false`) instead of being in this reply.
    #[serde(default, skip_serializing_if = "is_false")]
    pub parts: bool,
}

/// One chunk of a manifest (after a [`ManifestReply`] with `parts`), as the
/// data of a reply frame like every frame the receiver sends.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestPart {
    pub entries: Manifest,
    pub drift: Vec<Drift>,
    pub more: bool,
}

/// Answer to `begin`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BeginReply {
    /// Paths edited on the backup: left as they are (no data needed for them).
    pub kept: Vec<String>,
}

/// Answer to `signature`: `len` bytes of signature follow the reply; `None`
/// when the backup's copy is not the expected one (or unreadable): the
/// sender sends the file whole.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SignatureReply {
    pub len: Option<u64>,
}

/// Answer to `delta`: whether the backup rebuilt the announced content
/// (sha256 verified) and staged it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeltaReply {
    pub applied: bool,
}

/// Answer to `commit`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CommitReply {
    pub generation: u64,
    pub files: u64,
    pub bytes: u64,
    pub changed: u64,
    pub deleted: u64,
    pub kept: Vec<String>,
    /// Where the backup's time went, from its `manifest` answer to this
    /// reply: (step, microseconds) (`crate::util::Spans`; shown by `-vv`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timings: Vec<(String, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use ns_ha_common::exit::code_of;
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    #[test]
    fn a_silent_sender_times_out_and_a_talking_one_does_not() {
        let (mut tx, rx) = UnixStream::pair().unwrap();
        let mut r = IdleTimeoutFd::new(&rx, Duration::from_millis(300), "sent nothing").unwrap();
        let writer = std::thread::spawn(move || {
            for _ in 0..4 {
                std::thread::sleep(Duration::from_millis(150));
                tx.write_all(b"x").unwrap();
            }
            // Then silence, with the stream still open.
            std::thread::sleep(Duration::from_secs(2));
            drop(tx);
        });
        let mut got = [0u8; 4];
        r.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"xxxx");
        let started = Instant::now();
        let e = r.read(&mut got).unwrap_err();
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_millis(1500),
            "{waited:?}"
        );
        let e = anyhow::Error::from(e);
        assert_eq!(code_of(&e), Code::Peer);
        assert!(e.to_string().contains("sent nothing for 0.3 s"), "{e}");
        writer.join().unwrap();
    }

    #[test]
    fn a_large_begin_is_cut_into_ordered_chunks_under_the_frame_limit() {
        let change = |i: usize| Change {
            path: format!("/etc/extra/{i:06}"),
            entry: crate::manifest::Entry::root_dir(),
            data: false,
        };
        let req = BeginRequest {
            cluster_id: "c".into(),
            generation: 2,
            base_generation: 1,
            force: true,
            even_if_backup_is_master: false,
            changes: (0..20_000).map(change).collect(),
            deletes: (0..5_000).map(|i| format!("/etc/gone/{i:06}")).collect(),
            more: false,
        };
        let chunks = req.clone().into_chunks(64 << 10);
        assert!(chunks.len() > 5, "{} chunks", chunks.len());
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.more, i + 1 < chunks.len());
            assert_eq!((c.generation, c.base_generation, c.force), (2, 1, true));
            assert!(!c.even_if_backup_is_master);
            let len = serde_json::to_vec(&SyncRequest::Begin(c.clone()))
                .unwrap()
                .len();
            assert!(len < (64 << 10) + 1024, "chunk {i} is {len} bytes");
        }
        let changes: Vec<_> = chunks.iter().flat_map(|c| c.changes.clone()).collect();
        let deletes: Vec<_> = chunks.iter().flat_map(|c| c.deletes.clone()).collect();
        assert_eq!(changes, req.changes);
        assert_eq!(deletes, req.deletes);
        let small = req.clone();
        let one = BeginRequest {
            changes: small.changes[..3].to_vec(),
            deletes: Vec::new(),
            ..small
        }
        .into_chunks(64 << 10);
        assert_eq!(one.len(), 1);
        assert!(!one[0].more);
    }

    #[test]
    fn a_sender_that_takes_no_reply_times_out() {
        let (tx, _rx) = UnixStream::pair().unwrap();
        let mut w = IdleTimeoutFd::new(&tx, Duration::from_millis(200), "took no data").unwrap();
        let big = vec![0u8; 1 << 20];
        let e = w.write_all(&big).unwrap_err();
        assert_eq!(code_of(&anyhow::Error::from(e)), Code::Peer);
    }
}
