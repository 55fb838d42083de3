//! The sync's state on a node, all under one directory (`sync.state_dir`,
//! default `/var/lib/ns-ha/sync`): the applied generation, the baseline for
//! drift, the journal and staging area of an apply, the hash cache, the last
//! push and the status that `ns-ha-sync status` shows.
//!
//! Every record is replaced atomically (temp file, rename), so a crash leaves
//! either the old or the new version of each. Only what correctness rests on
//! is also fsynced (`applied.json`, `baseline.json`, the journal): the
//! records whose loss to a power cut only costs work (the hash cache,
//! `pushed.json`) or the last line of the administrator's record
//! (`status.json`, `attempt.json`) skip the fsyncs, which the hot path of a
//! small push cannot afford (two each, tens of milliseconds on a loaded disk).

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

use ns_ha_common::config::ClusterConfig;
use ns_ha_common::exit::Code;
use ns_ha_common::fsutil::{atomic_write, remove_if_exists, replace_cache_file, NodeLock};
use ns_ha_common::sync_config::SyncSettings;
use ns_ha_common::NodeRoot;

use crate::manifest::{Manifest, Stamp};
use crate::util::now_secs;

/// The sync's lock: its own, so that `ns-ha-role` (which holds the node lock
/// while it runs `ns-ha-sync push`) and the sync never wait for each other.
pub const SYNC_LOCK: &str = "/run/ns-ha/sync.lock";

/// Paths of the state files of one node.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub dir: PathBuf,
    pub lock: PathBuf,
}

impl StateDir {
    pub fn new(root: &NodeRoot, settings: &SyncSettings) -> StateDir {
        StateDir {
            dir: root.path(&settings.state_dir),
            lock: root.path(SYNC_LOCK),
        }
    }

    /// From the cluster config if there is one, else the defaults.
    pub fn of(root: &NodeRoot, cluster: Option<&ClusterConfig>) -> StateDir {
        match cluster {
            Some(c) => StateDir::new(root, &c.sync),
            None => StateDir::new(root, &SyncSettings::default()),
        }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    pub fn staging(&self) -> PathBuf {
        self.dir.join("staging")
    }
    /// The staging dirs of the open transaction on other filesystems than
    /// the state dir's, as `staging/areas.json` lists them (written before
    /// they are created). Only dirs named [`OTHER_STAGING`] are returned.
    pub fn other_staging_areas(&self) -> Vec<PathBuf> {
        let list = self.staging().join(OTHER_STAGING_LIST);
        let Ok(bytes) = std::fs::read(&list) else {
            return Vec::new();
        };
        match serde_json::from_slice::<Vec<PathBuf>>(&bytes) {
            Ok(dirs) => dirs
                .into_iter()
                .filter(|d| d.is_absolute() && d.file_name() == Some(OTHER_STAGING.as_ref()))
                .collect(),
            Err(e) => {
                log::warn!("{} is damaged: {e}", list.display());
                Vec::new()
            }
        }
    }
    pub fn journal(&self) -> PathBuf {
        self.dir.join("journal.json")
    }

    /// Whether a journal waits for recovery: one is on disk and no apply
    /// owns it. An apply holds the sync lock from its journal's first write
    /// to its removal, so a journal seen while the lock is held belongs to
    /// the apply in progress (`status` shows that one as `running`), not to
    /// an interrupted one.
    pub fn journal_left_behind(&self) -> bool {
        if !self.journal().exists() {
            return false;
        }
        match self.lock(Duration::ZERO) {
            Ok(_lock) => self.journal().exists(),
            Err(_) => false,
        }
    }
    pub fn cache(&self) -> PathBuf {
        self.dir.join("hash-cache.json")
    }

    /// Take the sync lock, waiting at most `wait`.
    pub fn lock(&self, wait: Duration) -> Result<NodeLock> {
        NodeLock::acquire(&self.lock, wait)
    }

    /// Read a JSON record; a missing file is `None`.
    pub fn read<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let path = self.file(name);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .with_context(|| format!("{} is damaged", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Write a large JSON record (manifests) atomically, without indentation.
    pub fn write_compact<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        atomic_write(&self.file(name), &serde_json::to_vec(value)?, 0o600)
    }

    /// Write a large JSON record whose loss costs work, never correctness
    /// (`pushed.json`: a damaged or older one only makes the next push ask
    /// the backup for its whole manifest), atomically but not fsynced.
    pub fn write_cache<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        replace_cache_file(&self.file(name), &serde_json::to_vec(value)?, 0o600)
    }

    /// What the primary last pushed: `pushed.json` and the lines of
    /// `pushed.log` written for it, in order, up to the first damaged one
    /// (a power cut while appending), so the result is always a push as it
    /// was, maybe not the last one: that only costs the next push a full
    /// manifest from the backup. Neither is fsynced, see [`Self::write_cache`].
    ///
    /// A process that pushes again (`watch`: `again` is true) reads them once: the
    /// last push it read or wrote is kept in memory, and served again while
    /// both files are as it left them (inode, size, times), which saves
    /// parsing a manifest-sized file on every push. A process that pushes
    /// once does not keep what it read (a copy of the manifest for nothing).
    pub fn read_pushed(&self, again: bool) -> Result<Option<Pushed>> {
        let files = self.pushed_files();
        if let Some(kept) = kept_pushed().as_ref() {
            if kept.dir == self.dir && kept.files == files {
                return Ok(Some(kept.pushed.clone()));
            }
        }
        let p = self.read_pushed_files()?;
        if let (Some(p), true) = (&p, again) {
            keep_pushed(&self.dir, files, p.clone());
        }
        Ok(p)
    }

    /// `pushed.json` and `pushed.log` as they are on disk now.
    fn pushed_files(&self) -> [Option<Stamp>; 2] {
        [PUSHED, PUSHED_LOG].map(|name| {
            std::fs::metadata(self.file(name))
                .ok()
                .map(|md| Stamp::of(&md))
        })
    }

    /// [`Self::read_pushed`] from the files.
    fn read_pushed_files(&self) -> Result<Option<Pushed>> {
        let Some(mut p) = self.read::<Pushed>(PUSHED)? else {
            return Ok(None);
        };
        let Ok(log) = std::fs::read(self.file(PUSHED_LOG)) else {
            return Ok(Some(p));
        };
        for line in log.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(l) = serde_json::from_slice::<PushedLine>(line) else {
                break;
            };
            if l.seq != p.seq {
                continue;
            }
            p.logged += 1;
            for (path, e) in l.set {
                p.manifest.insert(path, e);
            }
            for path in &l.removed {
                p.manifest.remove(path);
            }
            (p.generation, p.digest, p.clean, p.at) = (l.generation, l.digest, l.clean, l.at);
        }
        Ok(Some(p))
    }

    /// Record a push: one line in `pushed.log` with what changed since
    /// `prev` (what [`Self::read_pushed`] returned), or `pushed.json`
    /// whole (a new one, the log emptied) when there is none yet or the log
    /// grew past an eighth of the manifest.
    pub fn save_pushed(&self, prev: Option<&Pushed>, mut new: Pushed) -> Result<()> {
        let log = self.file(PUSHED_LOG);
        if let Some(prev) = prev {
            let (changes, removed) = crate::manifest::diff(&new.manifest, &prev.manifest);
            let small = changes.len() + removed.len() <= new.manifest.len() / 8 + 64;
            if small && prev.logged < (new.manifest.len() / 64).clamp(16, 256) {
                let line = PushedLine {
                    seq: prev.seq,
                    generation: new.generation,
                    digest: new.digest.clone(),
                    clean: new.clean,
                    at: new.at,
                    set: changes.into_iter().map(|c| (c.path, c.entry)).collect(),
                    removed,
                };
                let mut bytes = serde_json::to_vec(&line)?;
                bytes.push(b'\n');
                crate::util::append_unsynced(&log, &bytes)?;
                (new.seq, new.logged) = (prev.seq, prev.logged + 1);
                keep_pushed(&self.dir, self.pushed_files(), new);
                return Ok(());
            }
        }
        // A new number: lines of an older pushed.json never apply to it.
        new.seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        new.logged = 0;
        self.write_cache(PUSHED, &new)?;
        remove_if_exists(&log)?;
        keep_pushed(&self.dir, self.pushed_files(), new);
        Ok(())
    }

    /// Write a JSON record atomically.
    pub fn write<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let mut b = serde_json::to_vec_pretty(value)?;
        b.push(b'\n');
        atomic_write(&self.file(name), &b, 0o600)
    }

    /// Write a record of what happened (`status.json`, `attempt.json`)
    /// atomically but not fsynced: a process kill leaves the old or the new
    /// version; a power cut may lose the last record (a damaged one reads as
    /// absent), never the sync's correctness.
    pub fn write_record<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let mut b = serde_json::to_vec_pretty(value)?;
        b.push(b'\n');
        replace_cache_file(&self.file(name), &b, 0o600)
    }

    /// `status.json`; a damaged one (a power cut while it was replaced) reads
    /// as no record, with a warning.
    fn read_status(&self) -> Status {
        self.read(STATUS)
            .unwrap_or_else(|e| {
                log::warn!("{e:#}: starting a new status record");
                None
            })
            .unwrap_or_default()
    }
}

/// Name of a staging dir on a filesystem other than the state dir's, at the
/// top of that filesystem inside the node root (e.g. `/tmp/.ns-ha-staging`
/// for OpenWrt's tmpfs `/tmp`).
pub const OTHER_STAGING: &str = ".ns-ha-staging";
/// The list of those dirs, in `staging/`.
pub const OTHER_STAGING_LIST: &str = "areas.json";

/// The generation a backup holds (`applied.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub cluster_id: Option<String>,
    pub generation: u64,
    pub applied_at: u64,
    /// Digest of `baseline.json` as this apply wrote it: when the node's
    /// files have that digest, nothing was edited here and the manifest
    /// answer skips reading the baseline (README "State").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_digest: Option<String>,
}
pub const APPLIED: &str = "applied.json";
/// The manifest the last sync left on the backup: drift is measured against it.
pub const BASELINE: &str = "baseline.json";
/// What the last apply changed, for `ns-ha-role sync-applied`.
pub const LAST_APPLIED: &str = "last-applied.json";

/// What the primary last pushed: `pushed.json` (written whole now and
/// then) and the pushes since, one line each in `pushed.log` (see
/// [`StateDir::read_pushed`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Pushed {
    pub generation: u64,
    /// Digest of the local manifest at that push.
    pub digest: String,
    /// The backup held exactly `manifest` afterwards (no edit kept there).
    pub clean: bool,
    pub at: u64,
    pub manifest: Manifest,
    /// Which `pushed.json` the lines of the log apply to (a line of
    /// another is ignored).
    #[serde(default)]
    pub seq: u64,
    /// Lines read from the log.
    #[serde(skip)]
    pub logged: usize,
}
pub const PUSHED: &str = "pushed.json";

/// The last push this process read or wrote, with the files it came from
/// (see [`StateDir::read_pushed`]).
struct KeptPushed {
    dir: PathBuf,
    files: [Option<Stamp>; 2],
    pushed: Pushed,
}

fn kept_pushed() -> std::sync::MutexGuard<'static, Option<KeptPushed>> {
    static KEPT: std::sync::Mutex<Option<KeptPushed>> = std::sync::Mutex::new(None);
    KEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn keep_pushed(dir: &std::path::Path, files: [Option<Stamp>; 2], pushed: Pushed) {
    *kept_pushed() = Some(KeptPushed {
        dir: dir.to_path_buf(),
        files,
        pushed,
    });
}
/// The pushes since `pushed.json` was written whole.
pub const PUSHED_LOG: &str = "pushed.log";

/// One push in `pushed.log`: its record and how the manifest changed.
#[derive(Debug, Serialize, Deserialize)]
struct PushedLine {
    seq: u64,
    generation: u64,
    digest: String,
    clean: bool,
    at: u64,
    /// Entries new or changed since the previous push.
    set: Vec<(String, crate::manifest::Entry)>,
    removed: Vec<String>,
}

/// One sync run (a push on the primary, an apply on the backup).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// Start, seconds since the epoch.
    pub at: u64,
    pub duration_ms: u64,
    pub ok: bool,
    /// Exit code of the run (0 on success).
    pub code: u8,
    pub error: Option<String>,
    pub generation: u64,
    /// Files whose content was sent (primary) or received (backup).
    pub files: u64,
    /// Bytes over the channel (primary: sent) or file bytes received (backup).
    pub bytes: u64,
    pub changed: u64,
    pub deleted: u64,
    /// Paths edited on the backup and therefore kept there.
    #[serde(default)]
    pub kept: Vec<String>,
    /// The run never finished (process killed, crash, power loss): found and
    /// recorded by a later run; `files`, `bytes` and `duration_ms` are then
    /// what the run had announced and reached.
    #[serde(default)]
    pub interrupted: bool,
}

/// `status.json` of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub generation: u64,
    pub last_attempt: Option<Run>,
    pub last_success: Option<Run>,
    /// Outcome of the last `ns-ha-role sync-applied` (backup).
    pub hook: Option<String>,
    /// The last run that failed or was interrupted, kept when later runs
    /// succeed.
    #[serde(default)]
    pub last_failure: Option<Run>,
    /// A run in progress while the status was read (not stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<Run>,
}
pub const STATUS: &str = "status.json";

/// The run in progress (`attempt.json`): written when a push (primary) or a
/// transaction (backup) starts, removed when its outcome is recorded. One
/// found by a later run that holds the sync lock was interrupted, and is
/// recorded then as a failed run, so no attempt goes unrecorded.
pub const ATTEMPT: &str = "attempt.json";

/// The error of a run that a later one found unfinished.
pub const INTERRUPTED: &str =
    "interrupted: the process ended before the run finished (killed, crashed or power lost)";

impl StateDir {
    /// Record a run in `status.json` and close its attempt marker.
    pub fn record(&self, run: &Run) -> Result<()> {
        let mut st = self.read_status();
        if run.ok {
            st.generation = run.generation.max(st.generation);
            st.last_success = Some(run.clone());
        } else {
            st.last_failure = Some(run.clone());
        }
        st.last_attempt = Some(run.clone());
        st.running = None;
        self.write_record(STATUS, &st)?;
        remove_if_exists(&self.file(ATTEMPT))?;
        Ok(())
    }

    /// Mark a run as started (or update what it reached): until its outcome
    /// is recorded, the marker says it was interrupted. The caller holds the
    /// sync lock.
    pub fn mark_attempt(&self, run: &Run) -> Result<()> {
        let mut marker = run.clone();
        marker.ok = false;
        marker.interrupted = true;
        marker.code = Code::Failure.as_u8();
        marker.error = Some(INTERRUPTED.into());
        self.write_record(ATTEMPT, &marker)
    }

    /// Record the run a marker left unfinished, if any, as failed; `note`
    /// (what recovery did about it) is added to its error. The caller holds
    /// the sync lock, so the run that wrote the marker has ended. Returns
    /// whether there was one.
    pub fn reap_interrupted(&self, note: Option<&str>) -> Result<bool> {
        let Some(run) = self.attempt() else {
            return Ok(false);
        };
        self.record_interrupted(run, note)?;
        Ok(true)
    }

    /// The marker of the run in progress or interrupted, if there is one (a
    /// damaged one still counts: a run started then).
    pub fn attempt(&self) -> Option<Run> {
        self.read::<Run>(ATTEMPT).unwrap_or_else(|e| {
            log::warn!("{e:#}: recording it as an interrupted run");
            Some(Run {
                at: now_secs(),
                ..Default::default()
            })
        })
    }

    /// Record `run` as one that never finished, with `note` after the reason.
    pub fn record_interrupted(&self, mut run: Run, note: Option<&str>) -> Result<()> {
        run.ok = false;
        run.interrupted = true;
        run.code = Code::Failure.as_u8();
        run.error = Some(match note {
            Some(n) => format!("{INTERRUPTED}; {n}"),
            None => INTERRUPTED.into(),
        });
        log::warn!(
            "the sync run started at {} was interrupted: recorded",
            run.at
        );
        self.record(&run)
    }

    /// `status.json` as it stands now: a run whose marker is there is either
    /// in progress (another process holds the sync lock: shown as `running`)
    /// or was interrupted (then recorded here, before the status is read).
    pub fn current_status(&self) -> Result<Status> {
        if self.file(ATTEMPT).exists() {
            match self.lock(Duration::ZERO) {
                Ok(_lock) => {
                    self.reap_interrupted(None)?;
                }
                Err(_) => {
                    let mut st = self.read_status();
                    st.running = self.read::<Run>(ATTEMPT).ok().flatten().map(|mut r| {
                        r.error = None;
                        r.interrupted = false;
                        r.duration_ms = now_secs().saturating_sub(r.at).saturating_mul(1000);
                        r
                    });
                    return Ok(st);
                }
            }
        }
        Ok(self.read_status())
    }

    pub fn record_hook(&self, outcome: &str) -> Result<()> {
        let mut st = self.read_status();
        st.hook = Some(outcome.to_string());
        self.write_record(STATUS, &st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_appends_a_line_and_a_read_gets_the_last_whole_push() {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        let state = StateDir::of(&root, None);
        let file = |n: u64| crate::manifest::Entry {
            kind: crate::manifest::Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: n as i64,
            size: n,
            sha256: Some(format!("{n:064}")),
            target: None,
        };
        let manifest: Manifest = (0..1000).map(|i| (format!("/etc/f{i}"), file(i))).collect();
        let push = |generation, manifest: &Manifest| Pushed {
            generation,
            digest: format!("d{generation}"),
            clean: true,
            at: generation,
            manifest: manifest.clone(),
            ..Default::default()
        };
        assert!(state.read_pushed(true).unwrap().is_none());
        state.save_pushed(None, push(1, &manifest)).unwrap();
        let whole = std::fs::read(state.file(PUSHED)).unwrap();
        let prev = state.read_pushed(true).unwrap().unwrap();
        assert_eq!((prev.generation, prev.logged), (1, 0));
        // One file changed, one deleted: one line, pushed.json untouched.
        let mut m2 = manifest.clone();
        m2.insert("/etc/f1".into(), file(5000));
        m2.remove("/etc/f2");
        state.save_pushed(Some(&prev), push(2, &m2)).unwrap();
        assert_eq!(std::fs::read(state.file(PUSHED)).unwrap(), whole);
        let log = std::fs::read_to_string(state.file(PUSHED_LOG)).unwrap();
        assert_eq!(log.lines().count(), 1);
        assert!(log.len() < 500, "{log}");
        let got = state.read_pushed(true).unwrap().unwrap();
        assert_eq!(
            (got.generation, got.digest.as_str(), got.logged),
            (2, "d2", 1)
        );
        assert_eq!(got.manifest, m2);
        // What this process kept is what the files say.
        let parsed = state.read_pushed_files().unwrap().unwrap();
        assert_eq!(
            (
                parsed.generation,
                parsed.seq,
                parsed.logged,
                &parsed.digest,
                &parsed.manifest
            ),
            (
                got.generation,
                got.seq,
                got.logged,
                &got.digest,
                &got.manifest
            )
        );
        // A line cut by a power cut ends the log: the last push before it.
        let torn = format!("{log}{{\"seq\":{},\"generation\":3", got.seq);
        std::fs::write(state.file(PUSHED_LOG), &torn).unwrap();
        let got = state.read_pushed(true).unwrap().unwrap();
        assert_eq!((got.generation, &got.manifest), (2, &m2));
        // Lines of another pushed.json (one rewritten since) do not apply.
        let other = log.replacen(&format!("\"seq\":{}", got.seq), "\"seq\":12345", 1);
        std::fs::write(state.file(PUSHED_LOG), other).unwrap();
        let got = state.read_pushed(true).unwrap().unwrap();
        assert_eq!((got.generation, &got.manifest), (1, &manifest));
        // Without pushed.json, a log is nothing.
        std::fs::write(state.file(PUSHED_LOG), &log).unwrap();
        std::fs::remove_file(state.file(PUSHED)).unwrap();
        assert!(state.read_pushed(true).unwrap().is_none());
        // A large change writes pushed.json whole and empties the log.
        let m3: Manifest = (0..1000).map(|i| (format!("/etc/g{i}"), file(i))).collect();
        state.save_pushed(Some(&got), push(3, &m3)).unwrap();
        assert!(!state.file(PUSHED_LOG).exists());
        let got = state.read_pushed(true).unwrap().unwrap();
        assert_eq!((got.generation, &got.manifest, got.logged), (3, &m3, 0));
    }

    #[test]
    fn a_journal_is_left_behind_only_when_no_apply_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        let state = StateDir::of(&root, None);
        std::fs::create_dir_all(&state.dir).unwrap();
        assert!(!state.journal_left_behind(), "no journal");
        std::fs::write(state.journal(), b"{}").unwrap();
        {
            let _apply = state.lock(Duration::ZERO).unwrap();
            assert!(
                !state.journal_left_behind(),
                "the journal of the apply in progress is not an interrupted one"
            );
        }
        assert!(state.journal_left_behind(), "nobody holds the journal");
    }
}
