//! Making a received generation live, all or nothing, across crashes.
//!
//! Every file of a sync is first staged (written, hashed, fsynced, given its
//! mode, owner and mtime) in a staging directory on the same filesystem as
//! its live file (the state dir's `staging/`, or for a target on another
//! filesystem, such as OpenWrt's tmpfs `/tmp`, a staging dir on that one), so
//! each rename stays on one filesystem; the new baseline is staged with them
//! (written once, made durable in the same batch). Then the list of
//! operations (renames, deletions, directories, metadata) and the baseline's
//! digest are written as one journal, atomically: a few hundred bytes for a
//! small change, whatever the size of the set. Only then do live files
//! change, by `rename` each. Every
//! operation is idempotent, so recovery after a crash simply replays the
//! journal: before the journal exists the live files are wholly at the old
//! generation (staging is discarded); once it exists they end wholly at the
//! new one.
//!
//! A replay always finishes. Right before an op changes a live path, the
//! path is checked against what the manifest answer saw (`Journal::seen`):
//! an edit made on the backup during the push is kept, never replaced. An op
//! that cannot be applied (a directory that must become a file but holds
//! files the sync does not own) is skipped and the path kept too. Kept paths
//! differ from the new baseline, so they show as edited on the backup until
//! `push --force`, which moves such a directory aside (`MoveAside`, into
//! `<state_dir>/displaced/`) instead of deleting what it holds.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ns_ha_common::exit::{fail, Code};
use ns_ha_common::fsutil::{atomic_write, remove_if_exists, sync_dir};
use ns_ha_common::NodeRoot;

use crate::crash;
use crate::manifest::{hash_file, role_managed_content, Entry, Kind, Manifest, Stamp};
use crate::rules::SyncSet;
use crate::state::{Applied, StateDir, APPLIED, BASELINE, LAST_APPLIED};
use crate::util::{now_secs, sha256_hex, Spans};

/// Up to this many files (or directories), fsync each (from
/// [`FSYNC_THREADS`] threads); beyond, one syncfs, which also flushes
/// whatever else is dirty on the filesystem (other programs' writes: a
/// loaded disk made it cost 0.1 to 0.7 s for a 100-file push).
const FSYNC_EACH_MAX: usize = 1024;
/// fsyncs issued at once: the filesystem commits concurrent fsyncs together
/// (one journal commit for many on ext4) instead of one after another.
const FSYNC_THREADS: usize = 8;

/// fsync every path of `paths` that is a regular file or a directory (a
/// staged symlink cannot be opened), from up to [`FSYNC_THREADS`] threads.
fn fsync_each(paths: &[PathBuf]) -> Result<()> {
    let one = |p: &PathBuf| -> Result<()> {
        match fs::symlink_metadata(p) {
            Ok(m) if m.is_file() || m.is_dir() => fs::File::open(p)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", p.display())),
            _ => Ok(()),
        }
    };
    if paths.len() <= 1 {
        return paths.iter().try_for_each(one);
    }
    let per_thread = paths.len().div_ceil(FSYNC_THREADS);
    std::thread::scope(|scope| {
        let workers: Vec<_> = paths
            .chunks(per_thread)
            .map(|chunk| scope.spawn(move || chunk.iter().try_for_each(one)))
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err(fail(Code::Failure, "an fsync thread panicked")))
        })
    })
}

/// The new baseline's name in `staging/` (staged files are named by number).
pub const STAGED_BASELINE: &str = "baseline.json";

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
    /// Rename `path` (a directory holding what the sync does not own) to
    /// `<state_dir>/<to>`, out of the way of what replaces it (`push --force`).
    MoveAside { path: String, to: String },
}

impl Op {
    pub fn path(&self) -> &str {
        match self {
            Op::DeleteFile { path }
            | Op::DeleteDir { path }
            | Op::EnsureDir { path, .. }
            | Op::Replace { path, .. }
            | Op::Meta { path, .. }
            | Op::MoveAside { path, .. } => path,
        }
    }
}

/// A committed generation, to be (re)applied.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub cluster_id: String,
    pub generation: u64,
    pub ops: Vec<Op>,
    /// The baseline once applied (drift is measured against it). `commit`
    /// stages it as [`STAGED_BASELINE`] and writes the journal without it
    /// (a journal of an older release carries it here).
    #[serde(default, skip_serializing_if = "Manifest::is_empty")]
    pub baseline: Manifest,
    /// The sha256 of the staged baseline's bytes, when it was staged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_sha256: Option<String>,
    pub changed: Vec<String>,
    pub deleted: Vec<String>,
    /// What each path an op changes was when the manifest answer was built.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub seen: BTreeMap<String, Seen>,
}

/// A live path as the manifest answer saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// `None`: the path did not exist.
    pub stamp: Option<Stamp>,
    /// Its manifest entry (compared when the stamp moved but the state may not have).
    pub entry: Option<Entry>,
}

/// A path a replay left as the backup has it, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptPath {
    pub path: String,
    pub reason: String,
}

/// What a replay did besides the ops it applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Paths left as they are: edited during the push, or not applicable.
    pub kept: Vec<KeptPath>,
    /// Directories moved aside: `(path, where)`.
    pub moved_aside: Vec<(String, String)>,
}

/// Refuse to act through a symlink: every ancestor of `path` inside the sync
/// area must be a real directory (or not exist yet). Ancestors above the area
/// (`/etc`, `/var`) are the system's layout and may be anything.
pub fn check_ancestors(root: &NodeRoot, set: &SyncSet, path: &str) -> Result<()> {
    check_ancestors_except(root, set, path, &|_| false)
}

/// [`check_ancestors`], where an ancestor for which `becomes_dir` holds (a
/// transaction makes it a directory before anything below it) may be anything now.
pub fn check_ancestors_except(
    root: &NodeRoot,
    set: &SyncSet,
    path: &str,
    becomes_dir: &dyn Fn(&str) -> bool,
) -> Result<()> {
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
            // Replaced by a directory first: nothing below it exists yet.
            Ok(_) if becomes_dir(&prefix) => return Ok(()),
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

/// How one op ended.
enum OpResult {
    Done,
    /// Left as the backup has it: the reason.
    Kept(String),
}

/// Where a `Replace` op's staged file is: in its area on another
/// filesystem, or in `staging/`.
fn staged_source(state: &StateDir, area: Option<&PathBuf>, staged: &str) -> PathBuf {
    area.cloned()
        .unwrap_or_else(|| state.staging())
        .join(staged)
}

/// Whether a replay after a crash finds `op` applied already.
fn already_done(state: &StateDir, op: &Op, md: Option<&fs::Metadata>) -> bool {
    match (op, md) {
        (Op::DeleteFile { .. } | Op::DeleteDir { .. } | Op::MoveAside { .. }, None) => true,
        (Op::Replace { staged, area, .. }, _) => {
            fs::symlink_metadata(staged_source(state, area.as_ref(), staged)).is_err()
        }
        (Op::EnsureDir { mode, uid, gid, .. }, Some(m)) => {
            m.is_dir() && (m.mode() & 0o7777, m.uid(), m.gid()) == (*mode, *uid, *gid)
        }
        (
            Op::Meta {
                mode,
                uid,
                gid,
                mtime_ns,
                symlink,
                ..
            },
            Some(m),
        ) => {
            if *symlink {
                m.file_type().is_symlink() && (m.uid(), m.gid()) == (*uid, *gid)
            } else {
                m.is_file()
                    && (m.mode() & 0o7777, m.uid(), m.gid()) == (*mode, *uid, *gid)
                    && crate::manifest::mtime_ns(m) == *mtime_ns
            }
        }
        _ => false,
    }
}

/// Why `live` no longer is what the manifest answer saw, if it is not:
/// identity and times first; when they moved, the state itself (a file only
/// touched, or rewritten with the same content, is not an edit).
fn edited_since(
    set: &SyncSet,
    node_path: &str,
    live: &Path,
    md: Option<&fs::Metadata>,
    seen: &Seen,
) -> Result<Option<String>> {
    let (now, was) = match (md, &seen.stamp) {
        (None, None) => return Ok(None),
        (Some(_), None) => return Ok(Some("created on the backup during the push".into())),
        (None, Some(_)) => return Ok(Some("deleted on the backup during the push".into())),
        (Some(md), Some(was)) => (Stamp::of(md), was),
    };
    if now == *was {
        return Ok(None);
    }
    let Some(e) = &seen.entry else {
        return Ok(Some("edited on the backup during the push".into()));
    };
    let same = now.kind() == Some(e.kind)
        && (now.uid, now.gid) == (e.uid, e.gid)
        && (e.kind == Kind::Symlink || now.mode == e.mode)
        && match e.kind {
            Kind::Dir => true,
            Kind::Symlink => {
                fs::read_link(live)
                    .ok()
                    .and_then(|t| t.to_str().map(str::to_string))
                    == e.target
            }
            Kind::File => {
                let sha = if set.is_role_managed(node_path) {
                    use sha2::Digest;
                    crate::util::hex(&sha2::Sha256::digest(role_managed_content(live)?))
                } else {
                    hash_file(live)?
                };
                Some(sha) == e.sha256
            }
        };
    Ok((!same).then(|| "edited on the backup during the push".into()))
}

fn apply_op(
    root: &NodeRoot,
    set: &SyncSet,
    state: &StateDir,
    op: &Op,
    seen: Option<&Seen>,
) -> Result<OpResult> {
    check_ancestors(root, set, op.path())?;
    let live = root.path(op.path());
    let md = match fs::symlink_metadata(&live) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", live.display())),
    };
    if already_done(state, op, md.as_ref()) {
        return Ok(OpResult::Done);
    }
    if let Some(seen) = seen {
        if let Some(why) = edited_since(set, op.path(), &live, md.as_ref(), seen)? {
            return Ok(OpResult::Kept(why));
        }
    }
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
                    return Ok(OpResult::Kept(format!(
                        "directory not deleted: {e} (it holds what the sync does not own; push --force moves it aside)"
                    )));
                }
            }
        }
        Op::MoveAside { to, .. } => {
            let dest = state.dir.join(to);
            create_parents_of(&dest)?;
            fs::rename(&live, &dest).with_context(|| {
                format!("moving {} aside to {}", live.display(), dest.display())
            })?;
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
            let src = staged_source(state, area.as_ref(), staged);
            if is_dir {
                if let Err(e) = fs::remove_dir(&live) {
                    return Ok(OpResult::Kept(format!(
                        "a directory that must become a {} is not empty: {e} (push --force moves it aside)",
                        if fs::symlink_metadata(&src).is_ok_and(|m| m.file_type().is_symlink()) {
                            "symlink"
                        } else {
                            "file"
                        }
                    )));
                }
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
            _ => {
                return Ok(OpResult::Kept(
                    "changed type on the backup: metadata not applied".into(),
                ))
            }
        },
    }
    Ok(OpResult::Done)
}

fn create_parents_of(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    Ok(())
}

/// Stage the baseline, write the journal (the commit point), then apply it.
pub fn commit(
    root: &NodeRoot,
    set: &SyncSet,
    state: &StateDir,
    mut journal: Journal,
    spans: &mut Spans,
) -> Result<Outcome> {
    // The bytes written are the ones the manifest digest hashes.
    let baseline = serde_json::to_vec(&std::mem::take(&mut journal.baseline))?;
    let staged_baseline = state.staging().join(STAGED_BASELINE);
    fs::write(&staged_baseline, &baseline)
        .with_context(|| format!("staging {}", staged_baseline.display()))?;
    journal.baseline_sha256 = Some(sha256_hex(&baseline));
    // Staged files must be durable before the journal names them: an fsync
    // each for a small sync, one syncfs of each staging filesystem for a
    // large one.
    let staged: Vec<PathBuf> = journal
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Replace { staged, area, .. } => Some(staged_source(state, area.as_ref(), staged)),
            _ => None,
        })
        .chain([staged_baseline])
        .collect();
    let areas = staging_areas(state, &journal);
    if staged.len() > FSYNC_EACH_MAX {
        for a in &areas {
            sync_fs(a)?;
        }
    } else {
        fsync_each(&staged)?;
        for a in &areas {
            sync_dir(a)?;
        }
    }
    spans.mark("backup: staged files durable");
    state.write_compact("journal.json", &journal)?;
    spans.mark("backup: journal written (commit point)");
    crash::point("journal");
    replay(root, set, state, &journal, spans)
}

/// Apply every op of a journal, then record the generation and drop the
/// journal. It always finishes: an op that cannot be applied is skipped and
/// its path kept (the first op on a path decides for the later ones).
fn replay(
    root: &NodeRoot,
    set: &SyncSet,
    state: &StateDir,
    journal: &Journal,
    spans: &mut Spans,
) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut kept: BTreeMap<&str, String> = BTreeMap::new();
    let mut checked: HashSet<&str> = HashSet::new();
    for op in &journal.ops {
        let path = op.path();
        if kept.contains_key(path) {
            continue;
        }
        let seen = if checked.insert(path) {
            journal.seen.get(path)
        } else {
            None
        };
        let why = match apply_op(root, set, state, op, seen) {
            Ok(OpResult::Done) => {
                if let Op::MoveAside { to, .. } = op {
                    outcome
                        .moved_aside
                        .push((path.to_string(), state.dir.join(to).display().to_string()));
                }
                None
            }
            Ok(OpResult::Kept(why)) => Some(why),
            Err(e) => Some(format!("{e:#}")),
        };
        if let Some(why) = why {
            log::warn!(
                "generation {}: {path} kept as this backup has it: {why}",
                journal.generation
            );
            kept.insert(path, why);
        }
        crash::point("op");
    }
    outcome.kept = kept
        .into_iter()
        .map(|(path, reason)| KeptPath {
            path: path.to_string(),
            reason,
        })
        .collect();
    spans.mark("backup: ops applied (renames)");
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
        fsync_each(&dirs.into_iter().collect::<Vec<_>>())?;
    }
    spans.mark("backup: renames durable");
    let baseline_digest = match &journal.baseline_sha256 {
        Some(sha) => {
            // Made durable with applied.json's directory sync below; absent
            // when a replay that a crash cut had renamed it already.
            let staged = state.staging().join(STAGED_BASELINE);
            match fs::rename(&staged, state.file(BASELINE)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("renaming {}", staged.display())),
            }
            sha.clone()
        }
        None => {
            // A journal of an older release carries the baseline.
            let baseline = serde_json::to_vec(&journal.baseline)?;
            atomic_write(&state.file(BASELINE), &baseline, 0o600)?;
            sha256_hex(&baseline)
        }
    };
    spans.mark("backup: baseline in place");
    crash::point("baseline");
    state.write(
        APPLIED,
        &Applied {
            cluster_id: Some(journal.cluster_id.clone()),
            generation: journal.generation,
            applied_at: now_secs(),
            baseline_digest: Some(baseline_digest),
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
        "kept": outcome.kept,
        "at": now_secs(),
    });
    // A record for the administrator and the role engine, not fsynced.
    if let Err(e) = state.write_cache(LAST_APPLIED, &last) {
        log::warn!("cannot record the applied paths: {e:#}");
    }
    spans.mark("backup: applied.json, journal removed, staging cleared");
    Ok(outcome)
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
    /// Paths the completed generation left as this backup has them, and why.
    pub kept: Vec<KeptPath>,
    /// Directories moved aside by the completed generation: `(path, where)`.
    pub moved_aside: Vec<(String, String)>,
    /// A journal that could not be read, renamed to this file.
    pub set_aside: Option<String>,
}

/// Finish a committed journal or discard an uncommitted transaction. The
/// caller holds the sync lock. A journal that cannot be read (damaged disk)
/// is set aside with the staging: the live files may then hold part of that
/// generation, which shows as edits on this backup until `push --force`.
pub fn recover(root: &NodeRoot, set: &SyncSet, state: &StateDir) -> Result<Recovery> {
    let mut r = Recovery {
        completed: None,
        discarded: false,
        kept: Vec::new(),
        moved_aside: Vec::new(),
        set_aside: None,
    };
    match state.read::<Journal>("journal.json") {
        Ok(Some(j)) => {
            log::warn!("completing interrupted sync of generation {}", j.generation);
            let outcome = replay(root, set, state, &j, &mut Spans::default())?;
            r.completed = Some(j.generation);
            r.kept = outcome.kept;
            r.moved_aside = outcome.moved_aside;
            if !r.kept.is_empty() {
                record_kept(state, j.generation, &r.kept);
            }
            return Ok(r);
        }
        Ok(None) => {}
        Err(e) => {
            let aside = state.file(&format!("journal.json.unreadable-{}", now_secs()));
            fs::rename(state.journal(), &aside)
                .with_context(|| format!("{e:#}: and it cannot be set aside"))?;
            log::warn!(
                "{e:#}: set aside as {}; files it may have changed show as edited on this backup until push --force",
                aside.display()
            );
            r.set_aside = Some(aside.display().to_string());
        }
    }
    r.discarded = state.staging().exists();
    if r.discarded {
        log::warn!("discarding the staging of an interrupted sync");
        clear_staging(state)?;
    }
    Ok(r)
}

/// Record in the status that a completed generation kept paths (recovery
/// decided for them: they stay as this backup has them).
fn record_kept(state: &StateDir, generation: u64, kept: &[KeptPath]) {
    let run = crate::state::Run {
        at: now_secs(),
        ok: true,
        generation,
        kept: kept.iter().map(|k| k.path.clone()).collect(),
        error: Some(format!(
            "recovery kept {} path(s) as this backup has them (first: {}: {}); push --force on the primary replaces them",
            kept.len(),
            kept[0].path,
            kept[0].reason
        )),
        ..Default::default()
    };
    if let Err(e) = state.record(&run) {
        log::warn!("cannot record the recovery: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ns_ha_common::sync_config::{SyncProfile, SyncSettings};

    fn setup() -> (tempfile::TempDir, NodeRoot, SyncSet, StateDir) {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        let set = SyncSet::from_parts(
            SyncProfile::None,
            &[("/etc/config", "test")],
            &SyncSettings::default(),
        )
        .unwrap();
        let state = StateDir::new(&root, &SyncSettings::default());
        fs::create_dir_all(state.staging()).unwrap();
        fs::create_dir_all(root.path("/etc/config")).unwrap();
        (dir, root, set, state)
    }

    fn stage(state: &StateDir, name: &str, data: &str) {
        fs::write(state.staging().join(name), data).unwrap();
    }

    fn journal(ops: Vec<Op>, seen: BTreeMap<String, Seen>) -> Journal {
        Journal {
            cluster_id: "c".into(),
            generation: 7,
            ops,
            baseline: Manifest::new(),
            baseline_sha256: None,
            changed: Vec::new(),
            deleted: Vec::new(),
            seen,
        }
    }

    /// What a scan would have recorded of a live file.
    fn seen_now(root: &NodeRoot, path: &str) -> Seen {
        let live = root.path(path);
        let md = fs::symlink_metadata(&live).unwrap();
        Seen {
            stamp: Some(Stamp::of(&md)),
            entry: Some(Entry {
                kind: Kind::File,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                mtime_ns: crate::manifest::mtime_ns(&md),
                size: md.size(),
                sha256: Some(hash_file(&live).unwrap()),
                target: None,
            }),
        }
    }

    fn replace(path: &str, staged: &str) -> Op {
        Op::Replace {
            path: path.into(),
            staged: staged.into(),
            area: None,
        }
    }

    #[test]
    fn the_baseline_is_staged_not_journaled_and_a_replay_puts_it_in_place() {
        let (_d, root, set, state) = setup();
        stage(&state, "0", "new");
        let mut j = journal(vec![replace("/etc/config/a", "0")], BTreeMap::new());
        for i in 0..2000 {
            let mut e = Entry::root_dir();
            e.mode = 0o700;
            j.baseline.insert(format!("/etc/config/d{i}"), e);
        }
        let want = serde_json::to_vec(&j.baseline).unwrap();
        commit(&root, &set, &state, j.clone(), &mut Spans::default()).unwrap();
        assert_eq!(fs::read(state.file(BASELINE)).unwrap(), want);
        let applied: Applied = state.read(APPLIED).unwrap().unwrap();
        assert_eq!(applied.baseline_digest, Some(sha256_hex(&want)));
        assert_eq!(applied.generation, 7);

        // A journal a crash left: it names the staged baseline by digest and
        // does not carry it (small whatever the set), and recovery puts it
        // in place; a second replay (cut after the rename) finds it there.
        let (_d, root, set, state) = setup();
        stage(&state, "0", "new");
        stage(&state, STAGED_BASELINE, std::str::from_utf8(&want).unwrap());
        let mut cut = j.clone();
        cut.baseline = Manifest::new();
        cut.baseline_sha256 = Some(sha256_hex(&want));
        let text = serde_json::to_vec(&cut).unwrap();
        assert!(text.len() < 1000, "journal of {} bytes", text.len());
        fs::write(state.journal(), &text).unwrap();
        assert_eq!(recover(&root, &set, &state).unwrap().completed, Some(7));
        assert_eq!(fs::read(state.file(BASELINE)).unwrap(), want);
        assert_eq!(
            fs::read_to_string(root.path("/etc/config/a")).unwrap(),
            "new"
        );
        fs::create_dir_all(state.staging()).unwrap();
        fs::write(state.journal(), &text).unwrap();
        assert_eq!(recover(&root, &set, &state).unwrap().completed, Some(7));
        assert_eq!(fs::read(state.file(BASELINE)).unwrap(), want);

        // A journal of an older release carries the baseline itself.
        let (_d, root, set, state) = setup();
        stage(&state, "0", "new");
        fs::write(state.journal(), serde_json::to_vec(&j).unwrap()).unwrap();
        assert_eq!(recover(&root, &set, &state).unwrap().completed, Some(7));
        assert_eq!(fs::read(state.file(BASELINE)).unwrap(), want);
        let applied: Applied = state.read(APPLIED).unwrap().unwrap();
        assert_eq!(applied.baseline_digest, Some(sha256_hex(&want)));
    }

    #[test]
    fn a_replay_finishes_and_keeps_a_directory_it_cannot_replace() {
        let (_d, root, set, state) = setup();
        fs::create_dir_all(root.path("/etc/config/d")).unwrap();
        fs::write(root.path("/etc/config/d/not-ours"), "x").unwrap();
        stage(&state, "0", "d is a file now");
        stage(&state, "1", "ok");
        let j = journal(
            vec![
                replace("/etc/config/d", "0"),
                replace("/etc/config/ok", "1"),
            ],
            BTreeMap::new(),
        );
        let outcome = commit(&root, &set, &state, j, &mut Spans::default()).unwrap();
        assert_eq!(outcome.kept.len(), 1, "{outcome:?}");
        assert_eq!(outcome.kept[0].path, "/etc/config/d");
        assert!(outcome.kept[0].reason.contains("not empty"), "{outcome:?}");
        assert!(root.path("/etc/config/d/not-ours").exists());
        assert_eq!(
            fs::read_to_string(root.path("/etc/config/ok")).unwrap(),
            "ok"
        );
        assert!(!state.journal().exists(), "the journal must be done");
        let applied: Applied = state.read(APPLIED).unwrap().unwrap();
        assert_eq!(applied.generation, 7);
    }

    #[test]
    fn an_edit_after_the_manifest_is_kept_and_a_touch_is_not() {
        let (_d, root, set, state) = setup();
        for f in ["edited", "touched", "renamed-over"] {
            fs::write(root.path(format!("/etc/config/{f}")), "as scanned").unwrap();
        }
        let seen: BTreeMap<String, Seen> = ["edited", "touched", "renamed-over", "new"]
            .iter()
            .map(|f| {
                let p = format!("/etc/config/{f}");
                let s = if *f == "new" {
                    Seen {
                        stamp: None,
                        entry: None,
                    }
                } else {
                    seen_now(&root, &p)
                };
                (p, s)
            })
            .collect();
        // The edits, after the manifest answer and before the commit.
        fs::write(root.path("/etc/config/edited"), "as edited").unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(9);
        fs::File::options()
            .write(true)
            .open(root.path("/etc/config/touched"))
            .and_then(|f| f.set_modified(later))
            .unwrap();
        fs::write(root.path("/etc/config/tmp"), "as scanned").unwrap();
        fs::rename(
            root.path("/etc/config/tmp"),
            root.path("/etc/config/renamed-over"),
        )
        .unwrap();
        fs::write(root.path("/etc/config/new"), "created meanwhile").unwrap();
        let mut ops = Vec::new();
        for (i, f) in ["edited", "touched", "renamed-over", "new"]
            .iter()
            .enumerate()
        {
            stage(&state, &i.to_string(), "primary's");
            ops.push(replace(&format!("/etc/config/{f}"), &i.to_string()));
        }
        let outcome = commit(
            &root,
            &set,
            &state,
            journal(ops, seen),
            &mut Spans::default(),
        )
        .unwrap();
        let kept: Vec<&str> = outcome.kept.iter().map(|k| k.path.as_str()).collect();
        // Rewritten by rename with the same content: not an edit either.
        assert_eq!(kept, vec!["/etc/config/edited", "/etc/config/new"]);
        let read = |f: &str| fs::read_to_string(root.path(format!("/etc/config/{f}"))).unwrap();
        assert_eq!(read("edited"), "as edited");
        assert_eq!(read("new"), "created meanwhile");
        assert_eq!(read("touched"), "primary's");
        assert_eq!(read("renamed-over"), "primary's");
    }

    #[test]
    fn an_unreadable_journal_is_set_aside_not_a_dead_end() {
        let (_d, root, set, state) = setup();
        fs::write(state.journal(), "{ not json").unwrap();
        stage(&state, "0", "half a transfer");
        let r = recover(&root, &set, &state).unwrap();
        assert!(r.discarded && r.completed.is_none(), "{r:?}");
        let aside = r.set_aside.expect("set aside");
        assert!(Path::new(&aside).exists());
        assert!(!state.journal().exists());
        assert!(!state.staging().exists());
        // And recovery has nothing left to do.
        let again = recover(&root, &set, &state).unwrap();
        assert!(!again.discarded && again.set_aside.is_none());
    }
}
