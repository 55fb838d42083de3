//! This node's own sync state: its files compared with the baseline the last
//! sync left (what `manifest`, `begin` and `ns-ha-sync verify` report as
//! edited here), and recovery of an apply a crash interrupted.

use anyhow::Result;
use std::collections::HashMap;
use std::time::Duration;

use ns_ha_common::config::load_cluster_opt;
use ns_ha_common::NodeRoot;

use super::Receiver;
use crate::crash;
use crate::journal;
use crate::manifest::{digest, drift, scan, Drift, HashCache, LiveScan, Manifest, Scan, Stamp};
use crate::rules::SyncSet;
use crate::state::{Applied, StateDir, APPLIED, BASELINE};
use crate::util::Spans;
use crate::watch::Watches;

/// The sync state of this node as its own files say (used by `verify` too).
#[derive(Debug, Clone)]
pub struct LocalView {
    pub current: Manifest,
    /// `digest(&current)`.
    pub digest: String,
    pub applied: Applied,
    /// What the last apply left, when it differs from `current`; `None`:
    /// the files are as it left them (or nothing was synced yet), so the
    /// baseline is `current` itself, not a copy of it.
    pub baseline: Option<Manifest>,
    pub drift: Vec<Drift>,
    /// What each path was on disk when `current` was read.
    pub stamps: HashMap<String, Stamp>,
}

/// Scan this node's sync set and compare it with the baseline of the last sync.
pub fn local_view(root: &NodeRoot, set: &SyncSet, state: &StateDir) -> Result<LocalView> {
    view_with_cache(root, set, state, HashCache::load(&state.cache()), None)
}

/// [`local_view`] with the hash cache already loaded.
fn view_with_cache(
    root: &NodeRoot,
    set: &SyncSet,
    state: &StateDir,
    mut cache: HashCache,
    mut spans: Option<&mut Spans>,
) -> Result<LocalView> {
    let mut mark = |step: &str| {
        if let Some(s) = spans.as_deref_mut() {
            s.mark(step);
        }
    };
    let Scan {
        manifest: current,
        stamps,
        ..
    } = scan(root, set, &mut cache, false)?;
    mark("backup: scan");
    if let Err(e) = cache.save(&state.cache()) {
        log::warn!("cannot save the hash cache: {e:#}");
    }
    mark("backup: hash cache saved");
    let view = view_of(current, stamps, state);
    mark("backup: baseline, drift");
    view
}

/// The view of this node's files as a scan found them (`current`, `stamps`).
fn view_of(
    current: Manifest,
    stamps: HashMap<String, Stamp>,
    state: &StateDir,
) -> Result<LocalView> {
    let applied: Applied = state.read(APPLIED)?.unwrap_or_default();
    let digest = digest(&current);
    // Before the first sync nothing is known: the node's files are the
    // baseline. Files exactly as the last apply left them (its digest) are
    // the baseline too: no need to read it (the common case costs no parse
    // of a manifest-sized file).
    let untouched = applied.baseline_digest.as_deref() == Some(digest.as_str());
    let baseline: Option<Manifest> = if applied.generation == 0 || untouched {
        None
    } else {
        Some(state.read(BASELINE)?.unwrap_or_default())
    };
    let drift = baseline
        .as_ref()
        .map(|b| drift(&current, b))
        .unwrap_or_default();
    Ok(LocalView {
        digest,
        current,
        applied,
        baseline,
        drift,
        stamps,
    })
}

/// Finish or discard an interrupted apply if there is one (takes the lock).
pub fn recover_if_needed(
    root: &NodeRoot,
    set: &SyncSet,
    state: &StateDir,
    wait: Duration,
) -> Result<Option<journal::Recovery>> {
    if !state.journal().exists()
        && !state.staging().exists()
        && !state.file(crate::state::ATTEMPT).exists()
    {
        return Ok(None);
    }
    let _lock = state.lock(wait)?;
    super::recover_and_record(root, set, state).map(Some)
}

impl Receiver<'_> {
    /// [`local_view`] for this channel. A channel that asks for a second
    /// manifest serves a `watch` (it keeps its channel between pushes):
    /// from then on the receiver keeps its scan too, with inotify on the
    /// set's directories, and looks again only at the paths reported (an
    /// edit made on this node as well as its own applies).
    pub(super) fn channel_view(&mut self, set: &SyncSet, state: &StateDir) -> Result<LocalView> {
        self.manifests += 1;
        if self.live.is_none() && self.manifests >= 2 {
            match Watches::new() {
                Ok(mut w) => {
                    // Watched before the scan: nothing changes unseen.
                    w.refresh(&self.root, set);
                    self.live = Some((w, LiveScan::default()));
                }
                Err(e) => log::info!("keeping no scan between pushes: {e:#}"),
            }
        }
        let Some((watches, live)) = self.live.as_mut() else {
            let cache = match self.cache_preload.take() {
                Some((file, loading)) if file == state.cache() => loading
                    .join()
                    .unwrap_or_else(|_| HashCache::load(&state.cache())),
                _ => HashCache::load(&state.cache()),
            };
            self.spans.mark("backup: hash cache loaded");
            return view_with_cache(&self.root, set, state, cache, Some(&mut self.spans));
        };
        if watches.drain(set, live).1 {
            watches.refresh(&self.root, set);
        }
        let s = live.current(&self.root, set, &state.cache())?;
        view_of(s.manifest.clone(), s.stamps.clone(), state)
    }

    /// At start: arm the test crash point, finish an interrupted apply, and
    /// start reading the hash cache for the `manifest` that usually follows
    /// (its parse costs about a third of the scan of 10,000 files, and the
    /// cache is only advice: an entry is trusted while the file's size,
    /// times and inode match, so a copy read before the lock is safe).
    pub fn startup(&mut self) {
        let cluster = load_cluster_opt(&self.root).ok().flatten();
        let state = StateDir::of(&self.root, cluster.as_ref());
        let file = state.cache();
        let from = file.clone();
        self.cache_preload = std::thread::Builder::new()
            .name("hash-cache".into())
            .spawn(move || HashCache::load(&from))
            .map(|loading| (file, loading))
            .ok();
        crash::arm_from_file(&state.dir);
        if let Some(c) = cluster {
            match SyncSet::for_cluster(&self.root, Some(&c)) {
                Ok(set) => {
                    if let Err(e) =
                        recover_if_needed(&self.root, &set, &state, Duration::from_secs(1))
                    {
                        log::warn!("recovery at start postponed: {e:#}");
                    }
                }
                Err(e) => log::warn!("sync rules invalid: {e:#}"),
            }
        }
    }
}
