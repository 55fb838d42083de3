//! The sync section of the cluster config: what `ns-ha-sync` copies from the
//! primary to the backup. Kept in its own module because the sync tool owns
//! its rules; the cluster config only embeds them.

use serde::{Deserialize, Serialize};

/// Sync settings, part of `cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSettings {
    /// Extra paths to sync (absolute node paths, files or directories).
    pub include: Vec<String>,
    /// Paths never to sync, even when a default or an include names them.
    pub exclude: Vec<String>,
}
