//! Installing a cluster config on a node: render, validate, write, (re)load.
//!
//! Both nodes do the same thing when the cluster changes: the primary when the
//! administrator edits it, the backup when the primary installs it over the
//! sync channel. Nothing is written unless keepalived accepted the rendered
//! config, so a bad edit never replaces a working heartbeat.

use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

use crate::cmd::CommandRunner;
use crate::config::{save_cluster, ClusterConfig, Role};
use crate::exit::{fail, Code};
use crate::fsutil::{atomic_write, remove_if_exists};
use crate::root::{paths, NodeRoot};
use crate::service::{manager, ServiceAction, ServiceBackend};
use crate::{conntrackd, keepalived};

/// How long a service start/stop/reload may take during activation.
pub const SERVICE_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of another ns-ha tool: `NS_HA_BIN_DIR/NAME` if set, else next to this executable.
pub fn tool_path(name: &str) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("NS_HA_BIN_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join(name));
    }
    let exe = std::env::current_exe()
        .map_err(|e| fail(Code::Failure, format!("cannot locate this executable: {e}")))?;
    let dir = exe
        .parent()
        .ok_or_else(|| fail(Code::Failure, "executable has no directory"))?;
    Ok(dir.join(name))
}

/// What activation did, for the tool's output.
#[derive(Debug, Clone, Serialize)]
pub struct Activation {
    pub keepalived_conf: PathBuf,
    pub conntrackd_conf: PathBuf,
    /// `started`, `reloaded` or `stopped`.
    pub keepalived: &'static str,
}

/// The rendered and validated configs of a node, not yet installed.
pub struct Prepared {
    keepalived: String,
    conntrackd: String,
}

/// Render everything for `cluster` and have keepalived validate it, writing
/// nothing live. Callers that change both nodes prepare locally first, so a
/// config this node would refuse is never installed on the peer.
pub fn prepare(
    root: &NodeRoot,
    runner: &dyn CommandRunner,
    role: Role,
    cluster: &ClusterConfig,
) -> Result<Prepared> {
    cluster.validate()?;
    let keepalived = keepalived::render(&keepalived::RenderInputs {
        cluster,
        role,
        root,
        role_tool: tool_path("ns-ha-role")?,
    })?;
    keepalived::validate(runner, &keepalived, &root.path(paths::KEEPALIVED_CONF))?;
    let conntrackd = conntrackd::render(cluster, role, root)?;
    Ok(Prepared {
        keepalived,
        conntrackd,
    })
}

/// Render and validate everything for `cluster`, then install it and bring
/// keepalived to the state `cluster.enabled` asks for.
pub fn apply_cluster(
    root: &NodeRoot,
    runner: &dyn CommandRunner,
    role: Role,
    backend: ServiceBackend,
    cluster: &ClusterConfig,
) -> Result<Activation> {
    let prepared = prepare(root, runner, role, cluster)?;
    install(root, runner, backend, cluster, prepared)
}

/// Install prepared configs and the cluster config, then start, reload or stop keepalived.
pub fn install(
    root: &NodeRoot,
    runner: &dyn CommandRunner,
    backend: ServiceBackend,
    cluster: &ClusterConfig,
    prepared: Prepared,
) -> Result<Activation> {
    let ka_path = root.path(paths::KEEPALIVED_CONF);
    let ct_path = root.path(paths::CONNTRACKD_CONF);
    std::fs::create_dir_all(root.path(paths::RUN_DIR))?;
    let maint = root.path(paths::MAINTENANCE_TRACK);
    if !maint.exists() {
        atomic_write(&maint, b"0\n", 0o644)?;
    }
    // The WANs as the platform's interface manager reads them, disabled
    // (only the role engine brings them up, on the MASTER), replacing the
    // definitions of the cluster installed before.
    let previous = crate::config::load_cluster_opt(root)
        .ok()
        .flatten()
        .map(|c| c.wans)
        .unwrap_or_default();
    let if_manager = crate::config::load_node_opt(root)?
        .map(|n| n.interface_manager())
        .unwrap_or(crate::platform::InterfaceManager::Netifd);
    for done in
        crate::ifcontrol::control(if_manager, root, runner).install(&previous, &cluster.wans)?
    {
        log::info!("{done}");
    }
    save_cluster(root, cluster)?;
    atomic_write(&ka_path, prepared.keepalived.as_bytes(), 0o600)?;
    atomic_write(&ct_path, prepared.conntrackd.as_bytes(), 0o644)?;

    // On OpenWrt keepalived's init script runs the rendered config only when
    // UCI names it (and UCI enables it).
    for done in crate::platform::wire_keepalived(root, runner, cluster.enabled)? {
        log::info!("{done}");
    }
    let services = manager(backend, root, runner);
    let state = if cluster.enabled {
        if services.is_running("keepalived", SERVICE_TIMEOUT)? {
            services.act("keepalived", ServiceAction::Reload, SERVICE_TIMEOUT)?;
            "reloaded"
        } else {
            services.act("keepalived", ServiceAction::Start, SERVICE_TIMEOUT)?;
            "started"
        }
    } else {
        services.act("keepalived", ServiceAction::Stop, SERVICE_TIMEOUT)?;
        "stopped"
    };
    Ok(Activation {
        keepalived_conf: ka_path,
        conntrackd_conf: ct_path,
        keepalived: state,
    })
}

/// Stop keepalived and remove the rendered configs (part of `reset`).
pub fn deactivate(
    root: &NodeRoot,
    runner: &dyn CommandRunner,
    backend: ServiceBackend,
) -> Result<()> {
    let services = manager(backend, root, runner);
    if root.path("/etc/init.d/keepalived").exists() || backend == ServiceBackend::Systemd {
        services.act("keepalived", ServiceAction::Stop, SERVICE_TIMEOUT)?;
    }
    remove_if_exists(&root.path(paths::KEEPALIVED_CONF))?;
    remove_if_exists(&root.path(paths::CONNTRACKD_CONF))?;
    Ok(())
}
