//! The sync operations on the framing of `ns_ha_common::proto`.
//!
//! A push is one channel: `hello` (pairing control op), `manifest`, `begin`,
//! a `file` frame (JSON header + raw bytes, no reply) per file whose content
//! changed, then `commit` (or `abort`); or, when the manifests show nothing
//! to send, `in-sync` instead of a transaction, so the backup records the
//! check as its last attempt too. `status` can be asked any time after
//! `hello`. Files are streamed without a round trip each; any problem with
//! one is remembered and reported by `commit`, which then applies nothing.

use serde::{Deserialize, Serialize};

use crate::manifest::{Change, Drift, Manifest};

/// The sync ops (the control ops `hello`, `inspect`, `install-cluster` are
/// `ns_ha_common::control`'s).
pub const SYNC_OPS: &[&str] = &[
    "manifest", "begin", "file", "commit", "abort", "in-sync", "status",
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
    File {
        path: String,
        size: u64,
        sha256: String,
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
}

/// Answer to `begin`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BeginReply {
    /// Paths edited on the backup: left as they are (no data needed for them).
    pub kept: Vec<String>,
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
}
