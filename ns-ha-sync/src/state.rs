//! The sync's state on a node, all under one directory (`sync.state_dir`,
//! default `/var/lib/ns-ha/sync`): the applied generation, the baseline for
//! drift, the journal and staging area of an apply, the hash cache, the last
//! push and the status that `ns-ha-sync status` shows.
//!
//! Every record is written with `atomic_write`, so a crash leaves either the
//! old or the new version of each.

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

use ns_ha_common::config::ClusterConfig;
use ns_ha_common::fsutil::{atomic_write, NodeLock};
use ns_ha_common::sync_config::SyncSettings;
use ns_ha_common::NodeRoot;

use crate::manifest::Manifest;

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
    pub fn journal(&self) -> PathBuf {
        self.dir.join("journal.json")
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

    /// Write a JSON record atomically.
    pub fn write<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let mut b = serde_json::to_vec_pretty(value)?;
        b.push(b'\n');
        atomic_write(&self.file(name), &b, 0o600)
    }
}

/// The generation a backup holds (`applied.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub cluster_id: Option<String>,
    pub generation: u64,
    pub applied_at: u64,
}
pub const APPLIED: &str = "applied.json";
/// The manifest the last sync left on the backup: drift is measured against it.
pub const BASELINE: &str = "baseline.json";
/// What the last apply changed, for `ns-ha-role sync-applied`.
pub const LAST_APPLIED: &str = "last-applied.json";

/// What the primary last pushed (`pushed.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Pushed {
    pub generation: u64,
    /// Digest of the local manifest at that push.
    pub digest: String,
    /// The backup held exactly `manifest` afterwards (no edit kept there).
    pub clean: bool,
    pub at: u64,
    pub manifest: Manifest,
}
pub const PUSHED: &str = "pushed.json";

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
}

/// `status.json` of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub generation: u64,
    pub last_attempt: Option<Run>,
    pub last_success: Option<Run>,
    /// Outcome of the last `ns-ha-role sync-applied` (backup).
    pub hook: Option<String>,
}
pub const STATUS: &str = "status.json";

impl StateDir {
    /// Record a run in `status.json`.
    pub fn record(&self, run: &Run) -> Result<()> {
        let mut st: Status = self.read(STATUS).ok().flatten().unwrap_or_default();
        if run.ok {
            st.generation = run.generation.max(st.generation);
            st.last_success = Some(run.clone());
        }
        st.last_attempt = Some(run.clone());
        self.write(STATUS, &st)
    }

    pub fn record_hook(&self, outcome: &str) -> Result<()> {
        let mut st: Status = self.read(STATUS).ok().flatten().unwrap_or_default();
        st.hook = Some(outcome.to_string());
        self.write(STATUS, &st)
    }
}
