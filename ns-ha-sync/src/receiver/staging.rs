//! The data step of a transaction: each `file` frame's bytes are hashed
//! while they are written into a staging directory on its target's
//! filesystem, so the journal can rename them into place.
//!
//! A sync set may span filesystems (OpenWrt: `/etc` on flash, the DHCP leases
//! on the tmpfs `/tmp`), and a rename cannot cross one. So a transaction
//! stages per filesystem: targets on the state dir's filesystem in its
//! `staging/`, the others in `<top of their filesystem>/.ns-ha-staging`. One
//! journal still names every rename, so the generation is decided whole.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ns_ha_common::exit::{fail, Code};
use ns_ha_common::NodeRoot;

use super::{Receiver, Txn, MAX_FILE};
use crate::crash;
use crate::delta;
use crate::journal::{self, set_file_meta};
use crate::manifest::Entry;
use crate::state::{StateDir, OTHER_STAGING, OTHER_STAGING_LIST};
use crate::util::{hex, sha256_hex};
use crate::wire::{DeltaReply, SignatureReply, SyncRequest, MAX_BATCH};
use ns_ha_common::proto::{read_value, unpack, write_msg, Reply};

impl Receiver<'_> {
    /// A `file` frame: stage its content. Problems with the file fail the
    /// transaction (reported at commit); only a broken stream ends the channel.
    pub(super) fn file<R: Read>(&mut self, v: serde_json::Value, r: &mut R) -> Result<()> {
        let SyncRequest::File { path, size, sha256 } = serde_json::from_value(v)
            .map_err(|e| fail(Code::Peer, format!("malformed file frame: {e}")))?
        else {
            return Err(fail(Code::Peer, "malformed file frame"));
        };
        if size > MAX_FILE {
            return Err(fail(
                Code::Security,
                format!("file frame of {size} bytes refused"),
            ));
        }
        let Some(txn) = self.txn.as_mut() else {
            receive_blob(r, size, None)?;
            return Err(fail(Code::Peer, "file frame without an open transaction"));
        };
        let announced = txn.changes.get(&path).map(|c| c.entry.clone());
        // The hash the content must have: the announced one (a frame that
        // names one must name that one).
        let (staged, sha256) = match (txn.pending.remove(&path), announced) {
            (
                Some(name),
                Some(Entry {
                    size: announced_size,
                    sha256: Some(announced_hash),
                    ..
                }),
            ) if announced_size == size && sha256.iter().all(|h| *h == announced_hash) => {
                (name, announced_hash)
            }
            _ => {
                receive_blob(r, size, None)?;
                txn.failed.get_or_insert(fail(
                    Code::Security,
                    format!("file frame for {path} was not announced (or differs from its announcement, or came twice)"),
                ));
                return Ok(());
            }
        };
        let dest = txn.areas.dir_of(&path).join(&staged);
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&dest);
        let (file, open_err) = match file {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(e)),
        };
        let writeback = txn.writebacks.len() < MAX_WRITEBACKS;
        let Received {
            file,
            write_err,
            sha256: got,
            writeback,
        } = receive_blob_with(r, size, file, writeback)?;
        txn.writebacks
            .extend(writeback.map(|wb| (path.clone(), wb)));
        let outcome = (|| -> Result<()> {
            if let Some(e) = open_err.or(write_err) {
                return Err(e).with_context(|| format!("staging {path}"));
            }
            if got != sha256 {
                return Err(fail(
                    Code::Security,
                    format!(
                        "hash mismatch for {path}: content corrupted or forged, nothing applied"
                    ),
                ));
            }
            let f = file.ok_or_else(|| fail(Code::Failure, "staging file vanished"))?;
            let e = &txn.changes[&path].entry;
            // Made durable all at once (syncfs) before the journal is written.
            set_file_meta(&f, &dest, e.mode, e.uid, e.gid, e.mtime_ns)
        })();
        match outcome {
            Ok(()) => {
                txn.files += 1;
                txn.bytes += size;
                txn.staged.insert(path, staged);
            }
            Err(e) => {
                let _ = fs::remove_file(&dest);
                txn.failed.get_or_insert(e);
            }
        }
        crash::point("file");
        Ok(())
    }

    /// A `files` batch: unpack it and stage each `file` frame in it. Like a
    /// `file` frame, an error returned here (a malformed or oversized batch)
    /// ends the channel; a problem with one file fails the transaction.
    pub(super) fn files<R: Read>(&mut self, v: serde_json::Value, r: &mut R) -> Result<()> {
        let SyncRequest::Files { len, raw } = serde_json::from_value(v)
            .map_err(|e| fail(Code::Peer, format!("malformed files frame: {e}")))?
        else {
            return Err(fail(Code::Peer, "malformed files frame"));
        };
        if len > MAX_BATCH || raw > MAX_BATCH {
            return Err(fail(
                Code::Security,
                format!("batch of {len} bytes unpacking to {raw} bytes refused: the limit is {MAX_BATCH}"),
            ));
        }
        let mut packed = vec![0u8; len as usize];
        r.read_exact(&mut packed)
            .context("receiving a batch of files")?;
        let frames = unpack(&packed, raw as usize)?;
        if frames.len() as u64 != raw {
            return Err(fail(
                Code::Peer,
                format!("batch unpacked to {} bytes, {raw} announced", frames.len()),
            ));
        }
        let mut cursor = &frames[..];
        while let Some(v) = read_value(&mut cursor)? {
            if v.get("op").and_then(|o| o.as_str()) != Some("file") {
                return Err(fail(Code::Peer, "a batch holds only file frames"));
            }
            self.file(v, &mut cursor)?;
        }
        Ok(())
    }
}

impl Receiver<'_> {
    /// `signature` or `delta` (see `crate::delta`): answered; an error
    /// returned here (malformed frame, broken stream, oversized delta) ends
    /// the channel, a refusal of the request is only answered.
    pub(super) fn delta_op<R: Read, W: Write>(
        &mut self,
        op: &str,
        v: serde_json::Value,
        r: &mut R,
        w: &mut W,
    ) -> Result<()> {
        let req: SyncRequest = serde_json::from_value(v)
            .map_err(|e| fail(Code::Peer, format!("malformed {op} frame: {e}")))?;
        match req {
            SyncRequest::Signature { path, base_sha256 } => match self.sign(&path, &base_sha256) {
                Ok(sig) => {
                    let len = sig.as_ref().map(|s| s.len() as u64);
                    // The reply and the signature in one go (crate::util::NoFlush).
                    write_msg(
                        &mut crate::util::NoFlush(&mut *w),
                        &Reply::ok(SignatureReply { len }),
                    )?;
                    if let Some(sig) = sig {
                        w.write_all(&sig).context("sending the block signature")?;
                    }
                    w.flush().context("sending the block signature")?;
                }
                Err(e) => write_msg(w, &Reply::from_error(&e))?,
            },
            SyncRequest::Delta {
                path,
                size,
                sha256,
                len,
            } => {
                // Literals never exceed the file; each command adds a few bytes.
                let most = size.min(delta::DELTA_MAX) + size / 16 + 4096;
                if size > delta::DELTA_MAX || len > most {
                    return Err(fail(
                        Code::Security,
                        format!("delta of {len} bytes for a file of {size} bytes refused"),
                    ));
                }
                let mut data = vec![0u8; len as usize];
                r.read_exact(&mut data).context("receiving a delta")?;
                let applied = self.apply_delta(&path, size, &sha256, &data);
                write_msg(w, &Reply::ok(DeltaReply { applied }))?;
            }
            _ => return Err(fail(Code::Peer, format!("{op} frame out of place"))),
        }
        Ok(())
    }

    /// The block signature of this backup's copy of `path`, an announced
    /// file still expected, when the copy's content is `base_sha256`; kept
    /// for the `delta` that follows. `None`: no such copy (send it whole).
    fn sign(&mut self, path: &str, base_sha256: &str) -> Result<Option<Vec<u8>>> {
        self.delta_base = None;
        let txn = self
            .txn
            .as_ref()
            .ok_or_else(|| fail(Code::Peer, "signature without an open transaction"))?;
        if !txn.pending.contains_key(path) {
            return Err(fail(
                Code::Peer,
                format!("signature of {path}, which is not an announced file still expected"),
            ));
        }
        // The copy the manifest answer hashed (its entry), unchanged since
        // (same size, times and inode): no need to hash 10 MB again. A copy
        // changed in between anyway rebuilds other bytes, which the sha256
        // check of the rebuilt file refuses (then it is sent whole).
        let file = self.root.path(path);
        let hashed = txn.current.get(path).and_then(|e| e.sha256.as_deref()) == Some(base_sha256);
        let unchanged = std::fs::symlink_metadata(&file)
            .is_ok_and(|md| txn.stamps.get(path) == Some(&crate::manifest::Stamp::of(&md)));
        if !hashed || !unchanged {
            log::info!("{path} here is not the copy the primary diffs against: sent whole");
            return Ok(None);
        }
        let Some(base) = read_regular(&file, delta::DELTA_MAX) else {
            return Ok(None);
        };
        let sig = delta::signature(&base);
        self.spans.mark("backup: delta base read and signed");
        self.delta_base = Some((path.to_string(), base));
        Ok(Some(sig))
    }

    /// Rebuild `path` from the copy just signed and `data`, and stage it if
    /// its sha256 is the announced one. `false`: not rebuilt (no signed
    /// copy, a delta that does not apply or yields other bytes), the sender
    /// sends the file whole.
    fn apply_delta(&mut self, path: &str, size: u64, sha256: &str, data: &[u8]) -> bool {
        let base = self.delta_base.take();
        let Some(txn) = self.txn.as_mut() else {
            return false;
        };
        let announced = txn
            .changes
            .get(path)
            .is_some_and(|c| c.entry.size == size && c.entry.sha256.as_deref() == Some(sha256));
        if !announced || !txn.pending.contains_key(path) {
            txn.failed.get_or_insert(fail(
                Code::Security,
                format!("delta for {path} was not announced (or differs from its announcement, or came twice)"),
            ));
            return false;
        }
        let Some((_, base)) = base.filter(|(p, _)| p == path) else {
            return false;
        };
        let content = match delta::apply(&base, data, size) {
            Ok(c) => c,
            Err(e) => {
                log::info!("{path}: {e:#}: sent whole");
                return false;
            }
        };
        self.spans.mark("backup: delta applied");
        let Some(staged) = txn.pending.get(path).cloned() else {
            return false;
        };
        // The rebuilt file is hashed on one core while it is written to the
        // staging dir on another; a file whose hash differs is removed
        // before anything records it (then it is sent whole).
        let dest = txn.areas.dir_of(path).join(&staged);
        let entry = &txn.changes[path].entry;
        let (rebuilt, written) = std::thread::scope(|s| {
            let check = s.spawn(|| content.len() as u64 == size && sha256_hex(&content) == sha256);
            let written = write_staged(&dest, path, &content, entry);
            (check.join().unwrap_or(false), written)
        });
        self.spans.mark("backup: rebuilt file hashed and staged");
        if !rebuilt {
            let _ = fs::remove_file(&dest);
            log::info!("{path}: the delta did not rebuild the announced content: sent whole");
            return false;
        }
        txn.pending.remove(path);
        record_staged(txn, path, staged, written, data.len() as u64);
        crash::point("file");
        true
    }
}

/// Write `content` (verified, or being verified) to the staging file
/// `dest` of `path`, with the mode, owner and mtime of `entry`.
fn write_staged(dest: &Path, path: &str, content: &[u8], entry: &Entry) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .with_context(|| format!("staging {path}"))?;
    f.write_all(content)
        .with_context(|| format!("staging {path}"))?;
    set_file_meta(&f, dest, entry.mode, entry.uid, entry.gid, entry.mtime_ns)
}

/// Record `path`'s staging file `staged` once `written` (its write) is
/// known; `received` is what it cost on the wire. A write error fails the
/// transaction.
fn record_staged(txn: &mut Txn, path: &str, staged: String, written: Result<()>, received: u64) {
    match written {
        Ok(()) => {
            txn.files += 1;
            txn.bytes += received;
            txn.staged.insert(path.to_string(), staged);
        }
        Err(e) => {
            let _ = fs::remove_file(txn.areas.dir_of(path).join(&staged));
            txn.failed.get_or_insert(e);
        }
    }
}

/// The content of a regular file (never through a symlink) of at most
/// `limit` bytes; `None` when it is anything else or unreadable.
fn read_regular(file: &Path, limit: u64) -> Option<Vec<u8>> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(file)
        .ok()?;
    let md = f.metadata().ok()?;
    if !md.is_file() || md.len() > limit {
        return None;
    }
    let mut buf = Vec::with_capacity(md.len() as usize);
    Read::by_ref(&mut f)
        .take(limit + 1)
        .read_to_end(&mut buf)
        .ok()?;
    (buf.len() as u64 <= limit).then_some(buf)
}

/// Read exactly `size` bytes, hashing them and writing them to `file` until a
/// write fails. A short stream is an error (the channel is broken); a write
/// error is returned for the transaction to fail.
pub(super) fn receive_blob<R: Read>(
    r: &mut R,
    size: u64,
    mut file: Option<fs::File>,
) -> Result<(Option<fs::File>, Option<std::io::Error>, String)> {
    receive_blob_with(r, size, file.take(), false).map(|b| (b.file, b.write_err, b.sha256))
}

/// What [`receive_blob_with`] received.
struct Received {
    file: Option<fs::File>,
    write_err: Option<std::io::Error>,
    sha256: String,
    /// The file's writeback, started while it arrived.
    writeback: Option<Writeback>,
}

/// [`receive_blob`], with the writeback of a large file started while it
/// arrives when `writeback` (see [`Writeback`]).
fn receive_blob_with<R: Read>(
    r: &mut R,
    size: u64,
    mut file: Option<fs::File>,
    writeback: bool,
) -> Result<Received> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    // Up to 1 MiB a read and a write: a large file costs few system calls.
    let mut buf = crate::util::copy_buffer(size);
    let mut left = size;
    let mut write_err = None;
    let writeback = file
        .as_ref()
        .filter(|_| writeback && size >= WRITEBACK_MIN)
        .and_then(Writeback::start);
    let mut unsynced = 0u64;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = r.read(&mut buf[..want]).context("receiving file data")?;
        if n == 0 {
            return Err(fail(
                Code::Peer,
                format!("stream ended after {} of {size} bytes", size - left),
            ));
        }
        hasher.update(&buf[..n]);
        if write_err.is_none() {
            if let Some(f) = file.as_mut() {
                if let Err(e) = f.write_all(&buf[..n]) {
                    write_err = Some(e);
                }
            }
        }
        left -= n as u64;
        unsynced += n as u64;
        if unsynced >= WRITEBACK_EVERY {
            if let Some(wb) = writeback.as_ref() {
                wb.kick();
            }
            unsynced = 0;
        }
    }
    if let Some(wb) = writeback.as_ref() {
        wb.kick();
    }
    Ok(Received {
        file,
        write_err,
        sha256: hex(&hasher.finalize()),
        writeback,
    })
}

/// Files from this size on start their writeback while they arrive.
const WRITEBACK_MIN: u64 = 4 << 20;
/// Bytes of a large file written between two starts of its writeback.
const WRITEBACK_EVERY: u64 = 32 << 20;
/// Most writeback threads of one transaction (the commit's fsync takes
/// care of the files beyond).
pub(super) const MAX_WRITEBACKS: usize = 32;

/// The writeback of a large staged file, started while it is received: an
/// `fdatasync` on a thread of its own every [`WRITEBACK_EVERY`] bytes and
/// once it is whole, so the disk writes while the rest of the transaction
/// arrives and the commit's fsync (which still decides durability) finds
/// little left to write: 500 MB waited about a second there. The commit
/// waits for it first; an error it met fails the transaction (the fsync of
/// another descriptor later would not see that error again).
pub(super) struct Writeback {
    kick: std::sync::mpsc::SyncSender<()>,
    thread: std::thread::JoinHandle<Option<std::io::Error>>,
}

impl Writeback {
    fn start(file: &fs::File) -> Option<Writeback> {
        let file = file.try_clone().ok()?;
        let (kick, kicked) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("writeback".into())
            .spawn(move || {
                while kicked.recv().is_ok() {
                    if let Err(e) = file.sync_data() {
                        return Some(e);
                    }
                }
                None
            })
            .ok()?;
        Some(Writeback { kick, thread })
    }

    /// Start a writeback unless one is still running (it takes what is
    /// dirty when it starts).
    fn kick(&self) {
        let _ = self.kick.try_send(());
    }

    /// Wait for the writeback in flight; the error it met, if any.
    pub(super) fn finish(self) -> Option<std::io::Error> {
        drop(self.kick);
        self.thread.join().ok().flatten()
    }
}

/// Where a transaction stages each target: `staging/` for the targets on
/// the state dir's filesystem, a dir of its own for each other filesystem.
#[derive(Debug)]
pub(super) struct StagingAreas {
    main: PathBuf,
    /// Targets on another filesystem -> the staging dir on theirs.
    other: BTreeMap<String, PathBuf>,
}

impl StagingAreas {
    /// The staging dir of `path`.
    pub(super) fn dir_of(&self, path: &str) -> &Path {
        self.other.get(path).map_or(&self.main, |d| d.as_path())
    }

    /// The staging dir of `path` when it is not `staging/` (for the journal).
    pub(super) fn other_of(&self, path: &str) -> Option<PathBuf> {
        self.other.get(path).cloned()
    }
}

/// The highest dir above `dir` (itself included) still on `dev` and inside
/// the node root: where a staging dir for that filesystem goes.
fn top_of_filesystem(root: &NodeRoot, dir: &Path, dev: u64) -> PathBuf {
    let mut top = dir.to_path_buf();
    while let Some(up) = top.parent() {
        if !up.starts_with(root.base()) || fs::metadata(up).map(|m| m.dev()).ok() != Some(dev) {
            break;
        }
        top = up.to_path_buf();
    }
    top
}

/// Create the staging dir of another filesystem, never through a link: one
/// left by a transaction whose list was lost is removed first if it is a
/// real dir of ours; anything else there (a world-writable `/tmp` lets any
/// user create the name) is refused with the path to remove.
fn create_other_area(dir: &Path) -> Result<()> {
    let create = || fs::DirBuilder::new().mode(0o700).create(dir);
    match create() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let md = fs::symlink_metadata(dir)?;
            if !md.is_dir() || md.uid() != nix::unistd::geteuid().as_raw() {
                return Err(fail(
                    Code::Security,
                    format!(
                        "{} exists and is not a staging dir of this node: remove it, then push again",
                        dir.display()
                    ),
                ));
            }
            fs::remove_dir_all(dir)
                .and_then(|()| create())
                .with_context(|| format!("recreating the staging dir {}", dir.display()))
        }
        r => r.with_context(|| {
            format!(
                "creating the staging dir {} for the synced files on its filesystem",
                dir.display()
            )
        }),
    }
}

/// Fresh staging directories, one on each filesystem the targets live on,
/// each with room for its files. `targets` are the changed paths with the
/// bytes each will stage.
pub(super) fn prepare_staging<'p>(
    root: &NodeRoot,
    state: &StateDir,
    targets: impl Iterator<Item = (&'p String, u64)>,
) -> Result<StagingAreas> {
    journal::clear_staging(state)?;
    let main = state.staging();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&main)
        .with_context(|| format!("creating {}", main.display()))?;
    let main_dev = fs::metadata(&main)?.dev();
    // Filesystem -> (its staging dir, bytes to stage there).
    let mut by_dev: BTreeMap<u64, (PathBuf, u64)> = BTreeMap::new();
    by_dev.insert(main_dev, (main.clone(), 0));
    let mut dev_of_parent: BTreeMap<PathBuf, u64> = BTreeMap::new();
    let mut other = BTreeMap::new();
    for (t, bytes) in targets {
        let Some(parent) = root.path(t).parent().map(Path::to_path_buf) else {
            continue;
        };
        let dev = match dev_of_parent.get(&parent) {
            Some(d) => *d,
            None => {
                let existing = parent
                    .ancestors()
                    .find(|a| a.exists())
                    .unwrap_or(root.base())
                    .to_path_buf();
                let dev = fs::metadata(&existing)?.dev();
                by_dev.entry(dev).or_insert_with(|| {
                    (
                        top_of_filesystem(root, &existing, dev).join(OTHER_STAGING),
                        0,
                    )
                });
                dev_of_parent.insert(parent, dev);
                dev
            }
        };
        if let Some((dir, total)) = by_dev.get_mut(&dev) {
            *total += bytes;
            if dev != main_dev {
                other.insert(t.clone(), dir.clone());
            }
        }
    }
    let others: Vec<&PathBuf> = by_dev
        .iter()
        .filter(|(d, _)| **d != main_dev)
        .map(|(_, (dir, _))| dir)
        .collect();
    if !others.is_empty() {
        // Listed before they exist, so an interrupted transaction's are found.
        std::fs::write(main.join(OTHER_STAGING_LIST), serde_json::to_vec(&others)?)
            .with_context(|| format!("writing {}", main.join(OTHER_STAGING_LIST).display()))?;
        for dir in &others {
            create_other_area(dir)?;
        }
    }
    for (dir, bytes) in by_dev.values() {
        let vfs = nix::sys::statvfs::statvfs(dir).context("checking free space")?;
        let free = vfs.blocks_available() as u64 * vfs.fragment_size() as u64;
        if *bytes > free {
            return Err(fail(
                Code::Failure,
                format!(
                    "{bytes} bytes to stage but only {free} free in {}",
                    dir.display()
                ),
            ));
        }
    }
    Ok(StagingAreas { main, other })
}
