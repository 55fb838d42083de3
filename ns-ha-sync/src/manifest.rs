//! The manifest of a node's sync set: every synced path with its kind,
//! content hash, mode, owner and mtime.
//!
//! Both nodes build one the same way; comparing them tells the primary what
//! to send and tells the backup what was edited locally since the last sync.
//! Hashing is the expensive part, so a cache keyed by size, mtime, ctime and
//! inode lets an unchanged file be recognised by one `lstat`.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use ns_ha_common::fsutil::replace_cache_file;
use ns_ha_common::NodeRoot;

use crate::rules::{check_path, disk_node, Decision, SyncSet};
use crate::util::{hex, sha256_hex, HashingWriter};

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    #[serde(rename = "f")]
    File,
    #[serde(rename = "d")]
    Dir,
    #[serde(rename = "l")]
    Symlink,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
        }
    }
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}
fn is_zero_u(v: &u64) -> bool {
    *v == 0
}

/// One synced path. Field names are short: a manifest of a large tree crosses
/// the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    #[serde(rename = "k")]
    pub kind: Kind,
    /// Permission bits (`0o7777`); 0 for symlinks.
    #[serde(rename = "m")]
    pub mode: u32,
    #[serde(rename = "u")]
    pub uid: u32,
    #[serde(rename = "g")]
    pub gid: u32,
    /// Modification time in nanoseconds since the epoch (files only).
    #[serde(rename = "t", default, skip_serializing_if = "is_zero")]
    pub mtime_ns: i64,
    /// Size in bytes (files only).
    #[serde(rename = "s", default, skip_serializing_if = "is_zero_u")]
    pub size: u64,
    /// SHA-256 of the content, hex (files only).
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Link target (symlinks only).
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl Entry {
    /// Same content, type, mode and owner (mtime ignored): what drift compares.
    pub fn same_state(&self, other: &Entry) -> bool {
        self.kind == other.kind
            && self.mode == other.mode
            && self.uid == other.uid
            && self.gid == other.gid
            && self.sha256 == other.sha256
            && self.target == other.target
    }

    /// A directory owned by root with mode 0755 (a fixture for tests).
    #[cfg(test)]
    pub(crate) fn root_dir() -> Entry {
        Entry {
            kind: Kind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            size: 0,
            sha256: None,
            target: None,
        }
    }

    /// Whether the entry is internally consistent (checked on what the peer sends).
    pub fn well_formed(&self) -> bool {
        let sha_ok = |s: &Option<String>| {
            s.as_ref().is_some_and(|h| {
                h.len() == 64
                    && h.bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            })
        };
        self.mode <= 0o7777
            && match self.kind {
                Kind::File => sha_ok(&self.sha256) && self.target.is_none(),
                Kind::Dir => self.sha256.is_none() && self.target.is_none() && self.size == 0,
                Kind::Symlink => {
                    self.sha256.is_none()
                        && self.size == 0
                        && self
                            .target
                            .as_ref()
                            .is_some_and(|t| !t.is_empty() && t.len() < 4096 && !t.contains('\0'))
                }
            }
    }
}

/// Every synced path of a node, sorted.
pub type Manifest = BTreeMap<String, Entry>;

/// A digest of a manifest (both nodes compute it the same way).
pub fn digest(m: &Manifest) -> String {
    // Serializing a BTreeMap of plain structs is deterministic; streamed
    // into the hash in 64 KB pieces, not built whole first (a 10,000-file
    // manifest is a few MB).
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, HashingWriter::new(std::io::sink()));
    if serde_json::to_writer(&mut w, m).is_err() {
        return hex(&Sha256::new().finalize());
    }
    match w.into_inner() {
        Ok(hashed) => hashed.digest().1,
        Err(_) => hex(&Sha256::new().finalize()),
    }
}

/// A cached hash, valid while the file's identity and times are unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Cached {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    sha256: String,
}

/// Hashes of unchanged files, persisted between runs: a whole file
/// (`hash-cache.json`) and the changes since it was written, one JSON line
/// each (`hash-cache.log`), so a run that hashed one file appends one line
/// instead of rewriting an entry per file of the set. The log is folded into
/// the whole file once it holds more than an eighth of the entries.
///
/// Every entry is only trusted while the file's size, times and inode are
/// the ones it was hashed with, so an entry that is stale, replayed twice or
/// out of order (a crash while folding) costs a hash, never a wrong one.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HashCache {
    entries: HashMap<String, Cached>,
    /// Changes since the load, for the log: (path, entry or removal).
    #[serde(skip)]
    changes: Vec<(String, Option<Cached>)>,
    /// Lines in the log when it was loaded.
    #[serde(skip)]
    logged: usize,
    #[serde(skip)]
    pub hashed: u64,
}

/// One line of the hash cache's log.
#[derive(Serialize, Deserialize)]
struct CacheLine {
    #[serde(rename = "p")]
    path: String,
    #[serde(rename = "c")]
    cached: Option<Cached>,
}

/// The log beside a hash cache file.
fn cache_log(path: &Path) -> std::path::PathBuf {
    path.with_extension("log")
}

impl HashCache {
    /// Load the cache and its log; a missing or damaged cache is simply
    /// empty, a damaged log line (a power cut while appending) is skipped.
    pub fn load(path: &Path) -> HashCache {
        let mut cache: HashCache = fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if let Ok(log) = fs::read(cache_log(path)) {
            for line in log.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                cache.logged += 1;
                match serde_json::from_slice::<CacheLine>(line) {
                    Ok(CacheLine {
                        path,
                        cached: Some(c),
                    }) => {
                        cache.entries.insert(path, c);
                    }
                    Ok(CacheLine { path, cached: None }) => {
                        cache.entries.remove(&path);
                    }
                    Err(_) => {}
                }
            }
        }
        cache
    }

    /// Write what changed: appended to the log, or everything at once when
    /// the log grew past an eighth of the entries. Not fsynced: a cache lost
    /// to a power cut only costs hashing again.
    pub fn save(&mut self, path: &Path) -> Result<()> {
        if self.changes.is_empty() {
            return Ok(());
        }
        let log = cache_log(path);
        if self.logged + self.changes.len() > (self.entries.len() / 8).max(64) {
            replace_cache_file(path, &serde_json::to_vec(self)?, 0o600)?;
            ns_ha_common::fsutil::remove_if_exists(&log)?;
            self.logged = 0;
        } else {
            let mut lines = Vec::new();
            for (path, cached) in self.changes.drain(..) {
                serde_json::to_writer(&mut lines, &CacheLine { path, cached })?;
                lines.push(b'\n');
            }
            crate::util::append_unsynced(&log, &lines)?;
            self.logged += lines.iter().filter(|b| **b == b'\n').count();
        }
        self.changes.clear();
        Ok(())
    }

    fn hash(&mut self, node_path: &str, file: &Path, md: &fs::Metadata) -> Result<String> {
        let key = Cached {
            size: md.size(),
            mtime_ns: mtime_ns(md),
            ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
            ino: md.ino(),
            sha256: String::new(),
        };
        if let Some(c) = self.entries.get(node_path) {
            let same = (c.size, c.mtime_ns, c.ctime_ns, c.ino)
                == (key.size, key.mtime_ns, key.ctime_ns, key.ino);
            if same {
                return Ok(c.sha256.clone());
            }
        }
        let hashed_from = now_ns();
        let sha = hash_file(file)?;
        self.hashed += 1;
        if !settled(&key, hashed_from) {
            if self.entries.remove(node_path).is_some() {
                self.changes.push((node_path.to_string(), None));
            }
        } else {
            let c = Cached {
                sha256: sha.clone(),
                ..key
            };
            self.entries.insert(node_path.to_string(), c.clone());
            self.changes.push((node_path.to_string(), Some(c)));
        }
        Ok(sha)
    }

    /// Drop entries of paths no longer present.
    fn retain(&mut self, m: &Manifest) {
        let changes = &mut self.changes;
        self.entries.retain(|k, _| {
            let keep = m.contains_key(k);
            if !keep {
                changes.push((k.clone(), None));
            }
            keep
        });
    }
}

/// How long after its last change a file on a filesystem with nanosecond
/// timestamps must have been when its hash was read for the hash to be
/// cached: a write within the same clock tick as the change (the kernel
/// stamps files from a coarse clock, a tick of up to 10 ms) leaves its times
/// unmoved, so the margin is ten ticks.
const SETTLE_NS: i64 = 100_000_000;
/// The same on a filesystem stamping whole seconds (jffs2 under OpenWrt's
/// overlay): two seconds.
const SETTLE_COARSE_NS: i64 = 2_000_000_000;

/// Whether a hash read from `hashed_from_ns` (ns since the epoch) of a file
/// whose times are `key`'s may be cached: its last change was long enough
/// before the read that any later write moves its times. Timestamps with no
/// nanoseconds at all are taken for a filesystem of whole seconds.
fn settled(key: &Cached, hashed_from_ns: i64) -> bool {
    let coarse = key.ctime_ns % 1_000_000_000 == 0 && key.mtime_ns % 1_000_000_000 == 0;
    let margin = if coarse { SETTLE_COARSE_NS } else { SETTLE_NS };
    hashed_from_ns.saturating_sub(key.ctime_ns) >= margin
}

/// Now, in ns since the epoch (0 before it: nothing is then settled).
fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub fn mtime_ns(md: &fs::Metadata) -> i64 {
    md.mtime() * 1_000_000_000 + md.mtime_nsec()
}

/// The content of a role-managed file as the sync sees it: without the role
/// engine's markers (small files only: crontabs).
pub fn role_managed_content(path: &Path) -> Result<Vec<u8>> {
    let raw = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(ns_ha_common::role_config::strip_cron_markers(&raw))
}

/// SHA-256 of a file's content.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut w = HashingWriter::new(std::io::sink());
    // `std::io::copy` reads 8 KiB at a time: 64,000 reads for 500 MB.
    let size = f.metadata().map(|m| m.len()).unwrap_or_default();
    crate::util::copy_file_data(&mut f, &mut w, size)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(w.digest().1)
}

/// One path met by a scan and what became of it (for `list`).
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub path: String,
    pub synced: bool,
    /// The rule that decided, or why the path was refused.
    pub rule: String,
}

/// The result of scanning a node.
#[derive(Debug, Default)]
pub struct Scan {
    pub manifest: Manifest,
    /// Paths inside the set that cannot be synced, with the reason.
    pub refused: Vec<(String, String)>,
    /// Every path met, when asked for.
    pub listed: Vec<Listed>,
    /// What each synced path was on disk when it was scanned (the receiver
    /// checks a target again right before it changes it).
    pub stamps: HashMap<String, Stamp>,
}

/// A path's identity and times from one `lstat`: any write, rename onto it,
/// chmod or chown changes it. Directories keep only type, mode, owner and
/// inode (their times move with their entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// The file type bits (`S_IFMT`): files, directories, links and the rest.
    pub format: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Stamp {
    pub fn of(md: &fs::Metadata) -> Stamp {
        let dir = md.is_dir();
        Stamp {
            format: md.mode() & nix::libc::S_IFMT,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            ino: md.ino(),
            size: if dir { 0 } else { md.size() },
            mtime_ns: if dir { 0 } else { mtime_ns(md) },
            ctime_ns: if dir {
                0
            } else {
                md.ctime() * 1_000_000_000 + md.ctime_nsec()
            },
        }
    }

    /// What the sync calls this kind of path (`None`: a FIFO, socket, device).
    pub fn kind(&self) -> Option<Kind> {
        match self.format {
            nix::libc::S_IFREG => Some(Kind::File),
            nix::libc::S_IFDIR => Some(Kind::Dir),
            nix::libc::S_IFLNK => Some(Kind::Symlink),
            _ => None,
        }
    }
}

/// The entry of a path as it is on disk, or `None` when it cannot be synced
/// (the reason goes to `refused`).
fn entry_of(
    root: &NodeRoot,
    set: &SyncSet,
    cache: &mut HashCache,
    node_path: &str,
    file: &Path,
    md: &fs::Metadata,
) -> Result<std::result::Result<Entry, String>> {
    let ft = md.file_type();
    let mut e = Entry {
        kind: Kind::File,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime_ns: 0,
        size: 0,
        sha256: None,
        target: None,
    };
    if ft.is_file() && set.is_role_managed(node_path) {
        e.mtime_ns = mtime_ns(md);
        let data = role_managed_content(file)?;
        e.size = data.len() as u64;
        e.sha256 = Some(sha256_hex(&data));
    } else if ft.is_file() {
        e.mtime_ns = mtime_ns(md);
        e.size = md.size();
        e.sha256 = Some(cache.hash(node_path, file, md)?);
    } else if ft.is_dir() {
        e.kind = Kind::Dir;
    } else if ft.is_symlink() {
        e.kind = Kind::Symlink;
        e.mode = 0;
        let t = fs::read_link(file).with_context(|| format!("reading link {}", file.display()))?;
        let Some(t) = t.to_str().map(str::to_string) else {
            return Ok(Err("symlink target is not UTF-8".into()));
        };
        match set.contain_link(node_path, &t, &mut |p| disk_node(root, p)) {
            Ok(_) => e.target = Some(t),
            Err(why) => {
                return Ok(Err(format!(
                    "symlink target {t} is outside the sync set ({why}; never followed)"
                )))
            }
        }
    } else {
        return Ok(Err("not a regular file, directory or symlink".into()));
    }
    Ok(Ok(e))
}

/// Scan the sync set of a node. Symlinks are never followed; excluded
/// directories are not descended unless an include lies below them.
pub fn scan(root: &NodeRoot, set: &SyncSet, cache: &mut HashCache, list: bool) -> Result<Scan> {
    let mut out = Scan::default();
    for start in set.walk_roots() {
        scan_tree(root, set, cache, list, &start, &mut out)?;
    }
    out.refused.sort();
    cache.retain(&out.manifest);
    Ok(out)
}

/// A scan of the sync set kept in memory between pushes (`watch`): after a
/// first whole scan, only the paths reported changed (inotify) are looked at
/// again, so a push costs what changed instead of an `lstat` per file of
/// the set. Every symlink and refused path is looked at again each time (a
/// link's verdict depends on the paths it resolves through).
#[derive(Debug, Default)]
pub struct LiveScan {
    scan: Option<Scan>,
    cache: HashCache,
    dirty: BTreeSet<String>,
    /// Whole scans done (tests and logs).
    pub whole_scans: u64,
}

impl LiveScan {
    /// Forget the scan: the next [`LiveScan::current`] scans the whole set
    /// (events lost: an inotify queue overflow; a periodic recheck).
    pub fn invalidate(&mut self) {
        self.scan = None;
        self.dirty.clear();
    }

    /// A node path that changed (created, written, deleted, moved, chmod).
    pub fn touched(&mut self, path: &str) {
        if self.scan.is_some() {
            self.dirty.insert(path.to_string());
        }
    }

    /// The set as it is now: a whole scan the first time (with the hash
    /// cache at `cache_file`), else the last one with the touched paths
    /// scanned again.
    pub fn current(&mut self, root: &NodeRoot, set: &SyncSet, cache_file: &Path) -> Result<&Scan> {
        let dirty = std::mem::take(&mut self.dirty);
        let fresh = match self.scan.take() {
            None => {
                if self.whole_scans == 0 {
                    self.cache = HashCache::load(cache_file);
                }
                self.whole_scans += 1;
                let s = scan(root, set, &mut self.cache, false)?;
                if let Err(e) = self.cache.save(cache_file) {
                    log::warn!("cannot save the hash cache: {e:#}");
                }
                s
            }
            Some(mut s) => {
                rescan(root, set, &mut self.cache, &mut s, dirty)?;
                s
            }
        };
        Ok(self.scan.insert(fresh))
    }
}

/// Bring `out` (a whole scan) up to date for the paths in `dirty`: each is
/// forgotten with what lies below it and scanned again, from the nearest
/// path a whole scan would have walked.
fn rescan(
    root: &NodeRoot,
    set: &SyncSet,
    cache: &mut HashCache,
    out: &mut Scan,
    mut dirty: BTreeSet<String>,
) -> Result<()> {
    let roots = set.walk_roots();
    let under = |p: &str, dir: &str| {
        p.len() > dir.len() && p.starts_with(dir) && p.as_bytes()[dir.len()] == b'/'
    };
    dirty.extend(
        out.manifest
            .iter()
            .filter(|(_, e)| e.kind == Kind::Symlink)
            .map(|(p, _)| p.clone()),
    );
    dirty.extend(out.refused.iter().map(|(p, _)| p.clone()));
    let mut starts = BTreeSet::new();
    for p in dirty {
        if check_path(&p).is_err() {
            continue;
        }
        match roots.iter().find(|r| **r == p || under(&p, r)) {
            // Only below real directories a whole scan descends: a path
            // whose parent became a link (or an excluded directory) is
            // decided by the event of that parent.
            Some(r) if walked_to(root, set, r, &p) => {
                starts.insert(p);
            }
            Some(_) => {}
            // A parent of rule roots (their creation): walk those.
            None => starts.extend(roots.iter().filter(|r| under(r, &p)).cloned()),
        }
    }
    let outer: Vec<&String> = starts
        .iter()
        .filter(|p| !starts.iter().any(|o| under(p, o)))
        .collect();
    for p in outer {
        let below = |k: &String| k == p || under(k, p);
        out.manifest.retain(|k, _| !below(k));
        out.stamps.retain(|k, _| !below(k));
        out.refused.retain(|(k, _)| !below(k));
        scan_tree(root, set, cache, false, p, out)?;
    }
    out.refused.sort();
    Ok(())
}

/// Whether a whole scan from the rule root `top` reaches `path`: every
/// directory between them is a real directory (not a link) that the scan
/// descends.
fn walked_to(root: &NodeRoot, set: &SyncSet, top: &str, path: &str) -> bool {
    let mut dir = path;
    while let Some((parent, _)) = dir.rsplit_once('/') {
        if parent.len() < top.len() {
            return true;
        }
        let real = fs::symlink_metadata(root.path(parent)).is_ok_and(|m| m.is_dir());
        if !real || !(set.is_synced(parent) || set.has_include_below(parent)) {
            return false;
        }
        dir = parent;
    }
    true
}

/// Add what lies at and below `start` (a node path) to `out`.
fn scan_tree(
    root: &NodeRoot,
    set: &SyncSet,
    cache: &mut HashCache,
    list: bool,
    start: &str,
    out: &mut Scan,
) -> Result<()> {
    let top = root.path(start);
    match fs::symlink_metadata(&top) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", top.display())),
        Ok(_) => {}
    }
    let mut it = walkdir::WalkDir::new(&top)
        .follow_links(false)
        .follow_root_links(false)
        .sort_by_file_name()
        .into_iter();
    // The rules narrowed to each directory being walked, by depth.
    let mut views: Vec<crate::rules::DirRules> = Vec::new();
    while let Some(item) = it.next() {
        let item = match item {
            Ok(i) => i,
            // Vanished while walking: it is simply not there.
            Err(e) if e.io_error().map(|i| i.kind()) == Some(std::io::ErrorKind::NotFound) => {
                continue
            }
            Err(e) => return Err(e).context("walking the sync set"),
        };
        let is_dir = item.file_type().is_dir();
        // Only the views of this entry's ancestors stay.
        let depth = item.depth();
        views.truncate(depth);
        let rel = item.path().strip_prefix(root.base()).unwrap_or(item.path());
        let Some(node_path) = rel
            .to_str()
            .map(|s| format!("/{}", s.trim_start_matches('/')))
        else {
            out.refused.push((
                item.path().to_string_lossy().into_owned(),
                "name is not UTF-8".into(),
            ));
            if is_dir {
                it.skip_current_dir();
            }
            continue;
        };
        if check_path(&node_path).is_err() {
            continue;
        }
        // The rules of the parent directory decide by the entry's name.
        let parent = depth.checked_sub(1).and_then(|p| views.get(p));
        let name = node_path.rsplit('/').next().unwrap_or_default();
        let d: Decision = match parent {
            Some(v) if views.len() == depth => v.decide(name),
            _ => set.decide(&node_path),
        };
        if is_dir {
            let view = match parent {
                Some(v) if views.len() == depth => v.child(name),
                _ => set.dir_rules(&node_path),
            };
            views.push(view);
        }
        if !d.synced {
            if list {
                out.listed.push(Listed {
                    path: node_path.clone(),
                    synced: false,
                    rule: d
                        .rule
                        .map(|r| r.describe())
                        .unwrap_or_else(|| "no rule".into()),
                });
            }
            if is_dir && !set.has_include_below(&node_path) {
                it.skip_current_dir();
            }
            continue;
        }
        let md = match fs::symlink_metadata(item.path()) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("inspecting {}", item.path().display()))
            }
        };
        match entry_of(root, set, cache, &node_path, item.path(), &md) {
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(e),
            Ok(Ok(entry)) => {
                out.stamps.insert(node_path.clone(), Stamp::of(&md));
                if list {
                    out.listed.push(Listed {
                        path: node_path.clone(),
                        synced: true,
                        rule: d.rule.map(|r| r.describe()).unwrap_or_default(),
                    });
                }
                out.manifest.insert(node_path, entry);
            }
            Ok(Err(why)) => {
                out.stamps.insert(node_path.clone(), Stamp::of(&md));
                if list {
                    out.listed.push(Listed {
                        path: node_path.clone(),
                        synced: false,
                        rule: why.clone(),
                    });
                }
                out.refused.push((node_path, why));
            }
        }
    }
    Ok(())
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    })
}

/// What a push would do to one path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub path: String,
    pub entry: Entry,
    /// Whether the content travels (new or changed file); else metadata only.
    pub data: bool,
}

/// A human word for a change, given the peer's entry.
pub fn describe(change: &Change, old: Option<&Entry>) -> String {
    let e = &change.entry;
    match old {
        None => match e.kind {
            Kind::File => format!("new file, {} bytes", e.size),
            Kind::Symlink => format!("new symlink -> {}", e.target.as_deref().unwrap_or("")),
            Kind::Dir => "new directory".into(),
        },
        Some(o) if o.kind != e.kind => format!("{} becomes {}", o.kind.as_str(), e.kind.as_str()),
        Some(o) => {
            let mut what = Vec::new();
            if o.sha256 != e.sha256 || o.target != e.target {
                what.push(match e.kind {
                    Kind::Symlink => format!("target -> {}", e.target.as_deref().unwrap_or("")),
                    _ => format!("content, {} bytes", e.size),
                });
            }
            if o.mode != e.mode {
                what.push(format!("mode {:04o} -> {:04o}", o.mode, e.mode));
            }
            if (o.uid, o.gid) != (e.uid, e.gid) {
                what.push(format!("owner {}:{} -> {}:{}", o.uid, o.gid, e.uid, e.gid));
            }
            if what.is_empty() && o.mtime_ns != e.mtime_ns {
                what.push("mtime".into());
            }
            what.join(", ")
        }
    }
}

/// Changes and deletions that bring `peer` to `local`.
pub fn diff(local: &Manifest, peer: &Manifest) -> (Vec<Change>, Vec<String>) {
    let mut changes = Vec::new();
    for (path, e) in local {
        let data = e.kind == Kind::File;
        match peer.get(path) {
            None => changes.push(Change {
                path: path.clone(),
                entry: e.clone(),
                data,
            }),
            Some(p) if p == e => {}
            Some(p) => changes.push(Change {
                path: path.clone(),
                entry: e.clone(),
                data: data && (p.kind != Kind::File || p.sha256 != e.sha256),
            }),
        }
    }
    let deletes = peer
        .keys()
        .filter(|p| !local.contains_key(*p))
        .cloned()
        .collect();
    (changes, deletes)
}

/// A path edited on the backup since the last sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    pub path: String,
    /// `added`, `deleted` or `changed`.
    pub what: String,
}

/// Paths whose state differs from what the last sync left (mtime ignored).
pub fn drift(current: &Manifest, baseline: &Manifest) -> Vec<Drift> {
    let mut out = Vec::new();
    for (p, e) in current {
        match baseline.get(p) {
            None => out.push(Drift {
                path: p.clone(),
                what: "added".into(),
            }),
            Some(b) if !b.same_state(e) => out.push(Drift {
                path: p.clone(),
                what: "changed".into(),
            }),
            Some(_) => {}
        }
    }
    for p in baseline.keys().filter(|p| !current.contains_key(*p)) {
        out.push(Drift {
            path: p.clone(),
            what: "deleted".into(),
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ns_ha_common::sync_config::{SyncProfile, SyncSettings};
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn setup() -> (tempfile::TempDir, NodeRoot, SyncSet) {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        let set = SyncSet::from_parts(
            SyncProfile::None,
            &[("/etc/config", "test"), ("/etc/passwd", "test")],
            &SyncSettings::default(),
        )
        .unwrap();
        (dir, root, set)
    }

    #[test]
    fn scans_files_links_dirs_and_refuses_escapes() {
        let (_d, root, set) = setup();
        let cfg = root.path("/etc/config");
        fs::create_dir_all(cfg.join("sub")).unwrap();
        fs::write(cfg.join("firewall"), "x").unwrap();
        fs::set_permissions(cfg.join("firewall"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::write(cfg.join("network"), "never").unwrap();
        symlink("firewall", cfg.join("fw-link")).unwrap();
        symlink("/etc/shadow", cfg.join("evil")).unwrap();
        symlink("../../..", cfg.join("sub/up")).unwrap();
        fs::write(root.path("/etc/passwd"), "root:x:0:0").unwrap();
        let mut cache = HashCache::default();
        let s = scan(&root, &set, &mut cache, true).unwrap();
        let keys: Vec<&str> = s.manifest.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            vec![
                "/etc/config",
                "/etc/config/firewall",
                "/etc/config/fw-link",
                "/etc/config/sub",
                "/etc/passwd"
            ]
        );
        assert_eq!(s.manifest["/etc/config/firewall"].mode, 0o640);
        assert_eq!(s.refused.len(), 2, "{:?}", s.refused);
        assert!(s
            .listed
            .iter()
            .any(|l| l.path == "/etc/config/network" && !l.synced));
        assert_eq!(cache.hashed, 2);
    }

    /// `watch` keeps its scan: after the paths inotify reported are looked
    /// at again it must equal a whole scan, for a write, a new directory
    /// with files, a deletion, a chmod, a link that now leads outside, and
    /// a directory replaced by a link; paths not reported are not looked at.
    #[test]
    fn a_kept_scan_updated_for_touched_paths_equals_a_whole_scan() {
        let (d, root, set) = setup();
        let cfg = root.path("/etc/config");
        fs::create_dir_all(cfg.join("sub")).unwrap();
        fs::write(cfg.join("a"), "1").unwrap();
        fs::write(cfg.join("sub/b"), "2").unwrap();
        symlink("a", cfg.join("link")).unwrap();
        let cache_file = d.path().join("hash-cache.json");
        let whole = |root: &NodeRoot| {
            let s = scan(root, &set, &mut HashCache::default(), false).unwrap();
            (s.manifest, s.refused, s.stamps)
        };
        let mut live = LiveScan::default();
        live.current(&root, &set, &cache_file).unwrap();
        let check = |live: &mut LiveScan, touched: &[&str]| {
            for t in touched {
                live.touched(t);
            }
            let s = live.current(&root, &set, &cache_file).unwrap();
            let got = (s.manifest.clone(), s.refused.clone(), s.stamps.clone());
            assert_eq!(got, whole(&root), "after {touched:?}");
        };
        fs::write(cfg.join("a"), "changed").unwrap();
        check(&mut live, &["/etc/config/a"]);
        fs::create_dir_all(cfg.join("new/deeper")).unwrap();
        fs::write(cfg.join("new/deeper/c"), "3").unwrap();
        check(&mut live, &["/etc/config/new"]);
        fs::remove_file(cfg.join("sub/b")).unwrap();
        fs::set_permissions(cfg.join("sub"), fs::Permissions::from_mode(0o700)).unwrap();
        check(&mut live, &["/etc/config/sub/b", "/etc/config/sub"]);
        // The link's own path is not reported: its target changed meaning.
        fs::remove_file(cfg.join("a")).unwrap();
        symlink("/etc/shadow", cfg.join("a")).unwrap();
        check(&mut live, &["/etc/config/a"]);
        // A directory replaced by a link: nothing below it stays, even
        // when a stale event names a path below it.
        fs::remove_dir_all(cfg.join("new")).unwrap();
        symlink("sub", cfg.join("new")).unwrap();
        check(&mut live, &["/etc/config/new/deeper/c", "/etc/config/new"]);
        // What is not reported is not looked at (inotify's job).
        fs::write(root.path("/etc/passwd"), "root:x:0:0").unwrap();
        let s = live.current(&root, &set, &cache_file).unwrap();
        assert!(!s.manifest.contains_key("/etc/passwd"));
        assert_eq!(live.whole_scans, 1);
        live.invalidate();
        let s = live.current(&root, &set, &cache_file).unwrap();
        assert!(s.manifest.contains_key("/etc/passwd"));
        assert_eq!(live.whole_scans, 2);
    }

    #[test]
    fn cache_avoids_rehashing_unchanged_files() {
        let (d, root, set) = setup();
        let f = root.path("/etc/config/a");
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(&f, "1").unwrap();
        // Age the file so the cache trusts it.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let mut cache = HashCache::default();
        scan(&root, &set, &mut cache, false).unwrap();
        let cpath = d.path().join("cache.json");
        // ctime is fresh right after the write: wait until it is settled.
        std::thread::sleep(std::time::Duration::from_millis(150));
        let mut cache = HashCache::default();
        scan(&root, &set, &mut cache, false).unwrap();
        cache.save(&cpath).unwrap();
        let mut cache = HashCache::load(&cpath);
        let s = scan(&root, &set, &mut cache, false).unwrap();
        assert_eq!(cache.hashed, 0);
        fs::write(&f, "2").unwrap();
        let s2 = scan(&root, &set, &mut cache, false).unwrap();
        assert_eq!(cache.hashed, 1);
        assert_ne!(digest(&s.manifest), digest(&s2.manifest));
    }

    /// A hash is cached only when the file's last change was ten ticks
    /// before the read (nanosecond timestamps) or two seconds (timestamps of
    /// whole seconds), and never when the clock is behind the file.
    #[test]
    fn a_hash_is_cached_only_once_the_file_has_settled() {
        let at = |ctime_ns: i64| Cached {
            size: 1,
            mtime_ns: ctime_ns,
            ctime_ns,
            ino: 1,
            sha256: String::new(),
        };
        let fine = 1_700_000_000_123_456_789;
        assert!(!settled(&at(fine), fine + 99_000_000));
        assert!(settled(&at(fine), fine + 100_000_000));
        let coarse = 1_700_000_000_000_000_000;
        assert!(!settled(&at(coarse), coarse + 1_900_000_000));
        assert!(settled(&at(coarse), coarse + 2_000_000_000));
        assert!(!settled(&at(fine), fine - 1_000_000_000));
    }

    #[test]
    fn a_cache_change_is_appended_to_the_log_and_folded_in_later() {
        let d = tempfile::tempdir().unwrap();
        let cpath = d.path().join("hash-cache.json");
        let entry = |i: u64| Cached {
            size: i,
            mtime_ns: 1,
            ctime_ns: 1,
            ino: i,
            sha256: format!("{i:064}"),
        };
        let mut cache = HashCache::default();
        for i in 0..1000 {
            cache.entries.insert(format!("/etc/f{i}"), entry(i));
            cache.changes.push((format!("/etc/f{i}"), Some(entry(i))));
        }
        cache.save(&cpath).unwrap();
        let whole = fs::read(&cpath).unwrap();
        assert!(
            !cache_log(&cpath).exists(),
            "a large change is written whole"
        );
        // One change: one line in the log, the whole file untouched.
        let mut cache = HashCache::load(&cpath);
        cache.entries.insert("/etc/f1".into(), entry(5000));
        cache.changes.push(("/etc/f1".into(), Some(entry(5000))));
        cache.entries.remove("/etc/f2");
        cache.changes.push(("/etc/f2".into(), None));
        cache.save(&cpath).unwrap();
        assert_eq!(fs::read(&cpath).unwrap(), whole);
        let log = fs::read_to_string(cache_log(&cpath)).unwrap();
        assert_eq!(log.lines().count(), 2, "{log}");
        // A line cut by a power cut is skipped, the others apply.
        fs::write(
            cache_log(&cpath),
            format!("{log}{{\"p\":\"/etc/f3\",\"c\":{{\"si"),
        )
        .unwrap();
        let mut cache = HashCache::load(&cpath);
        assert_eq!(cache.entries.len(), 999);
        assert_eq!(cache.entries["/etc/f1"], entry(5000));
        assert!(!cache.entries.contains_key("/etc/f2"));
        assert_eq!(cache.entries["/etc/f3"], entry(3));
        // Past an eighth of the entries, the log is folded into the file.
        for i in 0..200 {
            cache.entries.insert(format!("/etc/f{i}"), entry(i + 7000));
            cache
                .changes
                .push((format!("/etc/f{i}"), Some(entry(i + 7000))));
        }
        cache.save(&cpath).unwrap();
        assert!(!cache_log(&cpath).exists());
        let cache = HashCache::load(&cpath);
        // (f2, removed above, is back among the 200.)
        assert_eq!(cache.entries.len(), 1000);
        assert_eq!(cache.entries["/etc/f1"], entry(7001));
    }

    #[test]
    fn diff_and_drift() {
        let f = |sha: &str, mode| Entry {
            kind: Kind::File,
            mode,
            uid: 0,
            gid: 0,
            mtime_ns: 1,
            size: 1,
            sha256: Some(sha.repeat(64)),
            target: None,
        };
        let local: Manifest = [
            ("/a".to_string(), f("1", 0o644)),
            ("/b".into(), f("2", 0o600)),
        ]
        .into();
        let peer: Manifest = [
            ("/a".to_string(), f("1", 0o600)),
            ("/c".into(), f("3", 0o644)),
        ]
        .into();
        let (ch, del) = diff(&local, &peer);
        assert_eq!(ch.len(), 2);
        assert!(!ch[0].data && ch[0].path == "/a");
        assert!(ch[1].data && ch[1].path == "/b");
        assert_eq!(del, vec!["/c".to_string()]);
        let dr = drift(&peer, &local);
        let what: Vec<_> = dr
            .iter()
            .map(|d| (d.path.as_str(), d.what.as_str()))
            .collect();
        assert_eq!(
            what,
            vec![("/a", "changed"), ("/b", "deleted"), ("/c", "added")]
        );
        assert!(f("1", 0o644).well_formed());
        let mut bad = f("1", 0o644);
        bad.sha256 = Some("zz".into());
        assert!(!bad.well_formed());
    }
}
