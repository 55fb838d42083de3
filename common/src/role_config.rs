//! The roles section of the cluster config: what each node runs as MASTER or
//! BACKUP. Kept in its own module because the role engine owns these rules;
//! the cluster config only embeds them.

use serde::{Deserialize, Serialize};

/// Role settings, part of `cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RoleSettings {
    /// Services started on MASTER and stopped otherwise (init.d/systemd names).
    pub master_services: Vec<String>,
}
