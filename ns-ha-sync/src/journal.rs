//! Making a received generation live, all or nothing, across crashes.
//!
//! Every file of a sync is first staged (written, hashed, fsynced, given its
//! mode, owner and mtime) in a staging directory on the same filesystem as
//! its live file (the state dir's `staging/`, or for a target on another
//! filesystem, such as OpenWrt's tmpfs `/tmp`, a staging dir on that one), so
//! each rename stays on one filesystem. Then the list of operations (renames, deletions,
//! directories, metadata) and the new baseline are written as one journal,
//! atomically. Only then do live files change, by `rename` each. Every
//! operation is idempotent, so recovery after a crash simply replays the
//! journal: before the journal exists the live files are wholly at the old
//! generation (staging is discarded); once it exists they end wholly at the
//! new one.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ns_ha_common::exit::{fail, Code};
use ns_ha_common::fsutil::{remove_if_exists, sync_dir};
use ns_ha_common::NodeRoot;

use crate::crash;
use crate::manifest::Manifest;
use crate::rules::SyncSet;
use crate::state::{Applied, StateDir, APPLIED, BASELINE, LAST_APPLIED};
use crate::util::now_secs;

/// Up to this many files (or directories), fsync each; beyond, one syncfs.
const FSYNC_EACH_MAX: usize = 64;

/// One idempotent step of an apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    /// Remove a file or symlink (absent: nothing to do).
    DeleteFile { path: String },
    /// Remove an empty directory (absent: nothing to do; not empty: kept).
    DeleteDir { path: String },
    /// Make `path` a directory with this mode and owner.
    EnsureDir {
        path: String,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// Rename `<area>/<staged>` onto `path` (staged file absent: done
    /// already). `area` is the staging dir on the target's filesystem when
    /// that is not the state dir's (absent: `staging/`).
    Replace {
        path: String,
        staged: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        area: Option<PathBuf>,
    },
    /// Set mode, owner and mtime of an existing file, or owner of a symlink.
    Meta {
        path: String,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime_ns: i64,
        symlink: bool,
    },
}

impl Op {
    pub fn path(&self) -> &str {
        match self {
            Op::DeleteFile { path }
            | Op::DeleteDir { path }
            | Op::EnsureDir { path, .. }
            | Op::Replace { path, .. }
            | Op::Meta { path, .. } => path,
        }
    }
}

/// A committed generation, to be (re)applied.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub cluster_id: String,
    pub generation: u64,
    pub ops: Vec<Op>,
    /// The baseline once applied (drift is measured against it).
    pub baseline: Manifest,
    pub changed: Vec<String>,
    pub deleted: Vec<String>,
}

/// Refuse to act through a symlink: every ancestor of `path` inside the sync
/// area must be a real directory (or not exist yet). Ancestors above the area
/// (`/etc`, `/var`) are the system's layout and may be anything.
pub fn check_ancestors(root: &NodeRoot, set: &SyncSet, path: &str) -> Result<()> {
    let mut prefix = String::new();
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        prefix.push('/');
        prefix.push_str(c);
        if !set.in_area(&prefix) {
            continue;
        }
        match fs::symlink_metadata(root.path(&prefix)) {
            Ok(md) if md.file_type().is_dir() => {}
            Ok(_) => {
                return Err(fail(
                    Code::Security,
                    format!(
                        "{path} refused: its parent {prefix} is not a directory (symlink escape)"
                    ),
                ))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("inspecting {prefix}")),
        }
    }
    Ok(())
}

fn create_parents(root: &NodeRoot, path: &str) -> Result<()> {
    let live = root.path(path);
    if let Some(parent) = live.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    Ok(())
}

fn chown_if_needed(path: &Path, md: &fs::Metadata, uid: u32, gid: u32) -> Result<()> {
    if (md.uid(), md.gid()) != (uid, gid) {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// Set mode, owner and mtime on an open file (never through a symlink).
pub fn set_file_meta(
    f: &fs::File,
    path: &Path,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
) -> Result<()> {
    let md = f.metadata()?;
    if md.mode() & 0o7777 != mode {
        f.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", path.display()))?;
    }
    if (md.uid(), md.gid()) != (uid, gid) {
        std::os::unix::fs::fchown(f, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
        // chown clears set-id bits: put them back.
        if mode & 0o6000 != 0 {
            f.set_permissions(fs::Permissions::from_mode(mode))?;
        }
    }
    let t = std::time::UNIX_EPOCH
        + std::time::Duration::new(
            mtime_ns.max(0) as u64 / 1_000_000_000,
            (mtime_ns.max(0) as u64 % 1_000_000_000) as u32,
        );
    f.set_modified(t)
        .with_context(|| format!("setting mtime of {}", path.display()))?;
    Ok(())
}

fn apply_op(root: &NodeRoot, set: &SyncSet, state: &StateDir, op: &Op) -> Result<()> {
    check_ancestors(root, set, op.path())?;
    let live = root.path(op.path());
    let md = match fs::symlink_metadata(&live) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", live.display())),
    };
    let is_dir = md.as_ref().is_some_and(|m| m.file_type().is_dir());
    match op {
        Op::DeleteFile { .. } => {
            if md.is_some() && !is_dir {
                remove_if_exists(&live)?;
            }
        }
        Op::DeleteDir { .. } => {
            if is_dir {
                if let Err(e) = fs::remove_dir(&live) {
                    log::warn!("keeping directory {}: {e}", live.display());
                }
            }
        }
        Op::EnsureDir { mode, uid, gid, .. } => {
            if md.is_some() && !is_dir {
                remove_if_exists(&live)?;
            }
            if !is_dir {
                create_parents(root, op.path())?;
                fs::create_dir(&live).with_context(|| format!("creating {}", live.display()))?;
            }
            let md = fs::symlink_metadata(&live)?;
            if md.mode() & 0o7777 != *mode {
                fs::set_permissions(&live, fs::Permissions::from_mode(*mode))?;
            }
            chown_if_needed(&live, &md, *uid, *gid)?;
        }
        Op::Replace { staged, area, .. } => {
            let src = area.clone().unwrap_or_else(|| state.staging()).join(staged);
            if fs::symlink_metadata(&src).is_err() {
                // Renamed by an earlier run of this journal.
                return Ok(());
            }
            if is_dir {
                fs::remove_dir(&live).with_context(|| {
                    format!(
                        "{} must become a file but is a non-empty directory",
                        live.display()
                    )
                })?;
            }
            create_parents(root, op.path())?;
            fs::rename(&src, &live)
                .with_context(|| format!("renaming {} to {}", src.display(), live.display()))?;
        }
        Op::Meta {
            mode,
            uid,
            gid,
            mtime_ns,
            symlink,
            ..
        } => match md {
            Some(m) if *symlink && m.file_type().is_symlink() => {
                chown_if_needed(&live, &m, *uid, *gid)?
            }
            Some(m) if !*symlink && m.file_type().is_file() => {
                let f = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&live)
                    .with_context(|| format!("opening {}", live.display()))?;
                set_file_meta(&f, &live, *mode, *uid, *gid, *mtime_ns)?;
            }
            _ => log::warn!(
                "{} changed type meanwhile: metadata not applied",
                live.display()
            ),
        },
    }
    Ok(())
}

/// Write the journal (the commit point), then apply it.
pub fn commit(root: &NodeRoot, set: &SyncSet, state: &StateDir, journal: &Journal) -> Result<()> {
    // Staged files must be durable before the journal names them: an fsync
    // each for a small sync, one syncfs of each staging filesystem for a
    // large one.
    let staged: Vec<PathBuf> = journal
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Replace { staged, area, .. } => {
                Some(area.clone().unwrap_or_else(|| state.staging()).join(staged))
            }
            _ => None,
        })
        .collect();
    let areas = staging_areas(state, journal);
    if staged.len() > FSYNC_EACH_MAX {
        for a in &areas {
            sync_fs(a)?;
        }
    } else {
        for p in staged {
            if fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
                fs::File::open(&p)
                    .and_then(|f| f.sync_all())
                    .with_context(|| format!("syncing {}", p.display()))?;
            }
        }
        for a in &areas {
            sync_dir(a)?;
        }
    }
    state.write_compact("journal.json", journal)?;
    crash::point("journal");
    replay(root, set, state, journal)
}

/// Apply every op of a journal, then record the generation and drop the journal.
fn replay(root: &NodeRoot, set: &SyncSet, state: &StateDir, journal: &Journal) -> Result<()> {
    for op in &journal.ops {
        apply_op(root, set, state, op)
            .with_context(|| format!("applying generation {}", journal.generation))?;
        crash::point("op");
    }
    // Make the renames durable before the generation says they happened
    // (each target shares the filesystem of its staging area).
    let dirs: std::collections::BTreeSet<_> = journal
        .ops
        .iter()
        .filter_map(|op| root.path(op.path()).parent().map(Path::to_path_buf))
        .collect();
    if dirs.len() > FSYNC_EACH_MAX {
        sync_fs(&state.dir)?;
        for a in staging_areas(state, journal).iter().filter(|a| a.is_dir()) {
            sync_fs(a)?;
        }
    } else {
        for d in dirs.iter().filter(|d| d.is_dir()) {
            sync_dir(d)?;
        }
    }
    state.write_compact(BASELINE, &journal.baseline)?;
    crash::point("baseline");
    state.write(
        APPLIED,
        &Applied {
            cluster_id: Some(journal.cluster_id.clone()),
            generation: journal.generation,
            applied_at: now_secs(),
        },
    )?;
    crash::point("applied");
    remove_if_exists(&state.journal())?;
    sync_dir(&state.dir)?;
    clear_staging(state)?;
    let last = serde_json::json!({
        "generation": journal.generation,
        "changed": journal.changed,
        "deleted": journal.deleted,
        "at": now_secs(),
    });
    if let Err(e) = state.write(LAST_APPLIED, &last) {
        log::warn!("cannot record the applied paths: {e:#}");
    }
    Ok(())
}

/// Flush the whole filesystem holding `dir` (syncfs).
fn sync_fs(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let d = fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    nix::unistd::syncfs(d.as_raw_fd())
        .with_context(|| format!("syncing the filesystem of {}", dir.display()))
}

/// The staging dirs a journal's renames come from: `staging/` and those on
/// other filesystems.
fn staging_areas(state: &StateDir, journal: &Journal) -> std::collections::BTreeSet<PathBuf> {
    let mut areas: std::collections::BTreeSet<PathBuf> = journal
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Replace { area, .. } => area.clone(),
            _ => None,
        })
        .collect();
    areas.insert(state.staging());
    areas
}

/// Empty the staging directories (an aborted or finished transaction): those
/// on other filesystems that `staging/` lists first, then `staging/`.
pub fn clear_staging(state: &StateDir) -> Result<()> {
    for other in state.other_staging_areas() {
        match fs::remove_dir_all(&other) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("clearing {}", other.display())),
        }
    }
    let dir = state.staging();
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("clearing {}", dir.display())),
    }
}

/// What recovery found.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    /// A committed generation was completed.
    pub completed: Option<u64>,
    /// An uncommitted transaction's staging was discarded.
    pub discarded: bool,
}

/// Finish a committed journal or discard an uncommitted transaction. The
/// caller holds the sync lock.
pub fn recover(root: &NodeRoot, set: &SyncSet, state: &StateDir) -> Result<Recovery> {
    let journal: Option<Journal> = state.read("journal.json").map_err(|e| {
        fail(
            Code::Failure,
            format!("{e:#}: the journal of an interrupted sync cannot be read; inspect it by hand"),
        )
    })?;
    if let Some(j) = journal {
        log::warn!("completing interrupted sync of generation {}", j.generation);
        replay(root, set, state, &j)?;
        return Ok(Recovery {
            completed: Some(j.generation),
            discarded: false,
        });
    }
    let discarded = state.staging().exists();
    if discarded {
        log::warn!("discarding the staging of an interrupted sync");
        clear_staging(state)?;
    }
    Ok(Recovery {
        completed: None,
        discarded,
    })
}
