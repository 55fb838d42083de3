//! The data step of a transaction: each `file` frame's bytes are hashed
//! while they are written into the staging directory (on the targets'
//! filesystem, so the journal can rename them into place).

use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ns_ha_common::exit::{fail, Code};
use ns_ha_common::NodeRoot;

use super::{Receiver, MAX_FILE};
use crate::crash;
use crate::journal::{self, set_file_meta};
use crate::state::StateDir;
use crate::util::hex;
use crate::wire::SyncRequest;

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
        let staged = match (txn.pending.remove(&path), announced) {
            (Some(name), Some(e))
                if e.size == size && e.sha256.as_deref() == Some(sha256.as_str()) =>
            {
                name
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
        let dest = txn.staging.join(&staged);
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&dest);
        let (file, open_err) = match file {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(e)),
        };
        let (file, write_err, got) = receive_blob(r, size, file)?;
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
}

/// Read exactly `size` bytes, hashing them and writing them to `file` until a
/// write fails. A short stream is an error (the channel is broken); a write
/// error is returned for the transaction to fail.
pub(super) fn receive_blob<R: Read>(
    r: &mut R,
    size: u64,
    mut file: Option<fs::File>,
) -> Result<(Option<fs::File>, Option<std::io::Error>, String)> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = size;
    let mut write_err = None;
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
    }
    Ok((file, write_err, hex(&hasher.finalize())))
}

/// Fresh staging directory, on the same filesystem as every target, with room.
pub(super) fn prepare_staging<'p>(
    root: &NodeRoot,
    state: &StateDir,
    targets: impl Iterator<Item = &'p String>,
    bytes: u64,
) -> Result<()> {
    journal::clear_staging(state)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state.staging())
        .with_context(|| format!("creating {}", state.staging().display()))?;
    let dev = fs::metadata(state.staging())?.dev();
    let mut checked: BTreeSet<PathBuf> = BTreeSet::new();
    for t in targets {
        let Some(parent) = root.path(t).parent().map(Path::to_path_buf) else {
            continue;
        };
        if !checked.insert(parent.clone()) {
            continue;
        }
        let existing = parent
            .ancestors()
            .find(|a| a.exists())
            .unwrap_or(root.base());
        if fs::metadata(existing)?.dev() != dev {
            return Err(fail(
                Code::Config,
                format!(
                    "{t} is on another filesystem than the staging dir {}: set sync.state_dir to a directory on the same filesystem as the synced files",
                    state.staging().display()
                ),
            ));
        }
    }
    let vfs = nix::sys::statvfs::statvfs(&state.staging()).context("checking free space")?;
    let free = vfs.blocks_available() as u64 * vfs.fragment_size() as u64;
    if bytes > free {
        return Err(fail(
            Code::Failure,
            format!(
                "{bytes} bytes to stage but only {free} free in {}",
                state.staging().display()
            ),
        ));
    }
    Ok(())
}
