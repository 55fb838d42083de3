//! The backup's side of the control requests of pairing (`hello`, `inspect`,
//! `install-cluster`), run by the forced command on the backup.
//!
//! They live in the library so that the receiver (`ns-ha-sync receive`) and
//! the tests call the same code, and so the checks the primary relies on are
//! made by the backup about itself: its version, its cluster, its interfaces.

use anyhow::{Context, Result};

use crate::activate::apply_cluster;
use crate::addresses::{address_problems, AddressProblem};
use crate::cmd::CommandRunner;
use crate::config::{load_cluster_opt, load_node, ClusterConfig, NodeConfig, Role};
use crate::exit::{fail, Code};
use crate::net::{InterfaceSource, IpCommand};
use crate::proto::{ControlRequest, HelloReply, InspectReply, NS_HA_VERSION, PROTOCOL_VERSION};
use crate::root::NodeRoot;

/// The `op` names handled here; a receiver dispatches these to [`handle`].
pub const CONTROL_OPS: &[&str] = &["hello", "inspect", "install-cluster"];

fn backup_node(root: &NodeRoot) -> Result<NodeConfig> {
    let node = load_node(root)?;
    if node.role != Role::Backup {
        return Err(fail(
            Code::State,
            "this node is the primary: the sync channel only accepts requests on a backup",
        ));
    }
    Ok(node)
}

/// Refuse data of cluster `incoming` on a node that belongs to cluster `local`.
pub fn refuse_other_cluster(local: &str, incoming: &str) -> Result<()> {
    if local != incoming {
        return Err(fail(
            Code::Conflict,
            format!(
                "this node belongs to cluster {local} not {incoming}: run ns-ha-init reset on it before pairing it again"
            ),
        ));
    }
    Ok(())
}

/// Refuse data of another cluster than the one this node already belongs to.
pub fn check_cluster_id(root: &NodeRoot, cluster_id: &str) -> Result<()> {
    match load_cluster_opt(root)? {
        Some(local) => refuse_other_cluster(&local.cluster_id, cluster_id),
        None => Ok(()),
    }
}

/// Answer `hello`: same protocol and release on both nodes, and the same cluster.
pub fn hello(
    root: &NodeRoot,
    protocol: u32,
    version: &str,
    cluster_id: &str,
) -> Result<HelloReply> {
    let node = backup_node(root)?;
    if protocol != PROTOCOL_VERSION || version != NS_HA_VERSION {
        return Err(fail(
            Code::Conflict,
            format!(
                "version mismatch: primary runs ns-ha {version} (protocol {protocol}), this backup {NS_HA_VERSION} (protocol {PROTOCOL_VERSION}): install the same ns-ha release on both nodes"
            ),
        ));
    }
    check_cluster_id(root, cluster_id)?;
    Ok(HelloReply {
        protocol: PROTOCOL_VERSION,
        version: NS_HA_VERSION.to_string(),
        role: node.role.to_string(),
        cluster_id: load_cluster_opt(root)?.map(|c| c.cluster_id),
    })
}

/// Check that this node's interfaces match what the cluster says of the backup.
/// A link that is down is not refused here (it may come up later; `health` reports it).
pub fn check_backup_interfaces(cluster: &ClusterConfig, ifs: &dyn InterfaceSource) -> Result<()> {
    for p in address_problems(cluster, Role::Backup, ifs)? {
        match p {
            AddressProblem::Missing { interface } => return Err(fail(
                Code::InvalidInput,
                format!("interface {interface} does not exist on the backup: both nodes need the same interface names"),
            )),
            AddressProblem::LacksStatic { interface, want } => return Err(fail(
                Code::InvalidInput,
                format!("interface {interface} on the backup does not have the static address {want}: configure it, then retry"),
            )),
            AddressProblem::Down { .. } => {}
        }
    }
    Ok(())
}

/// Handle one control request on the backup; the value is the reply's data.
pub fn handle(
    root: &NodeRoot,
    runner: &dyn CommandRunner,
    request: serde_json::Value,
) -> Result<serde_json::Value> {
    let req: ControlRequest = serde_json::from_value(request)
        .map_err(|e| fail(Code::Peer, format!("malformed control request: {e}")))?;
    let ifs = IpCommand { runner };
    let data = match req {
        ControlRequest::Hello {
            protocol,
            version,
            cluster_id,
        } => serde_json::to_value(hello(root, protocol, &version, &cluster_id)?)?,
        ControlRequest::Inspect { interfaces } => {
            backup_node(root)?;
            let found = interfaces
                .iter()
                .map(|n| ifs.interface(n))
                .collect::<Result<Vec<_>>>()?;
            serde_json::to_value(InspectReply { interfaces: found })?
        }
        ControlRequest::InstallCluster { config } => {
            let node = backup_node(root)?;
            check_cluster_id(root, &config.cluster_id)?;
            config.validate()?;
            check_backup_interfaces(&config, &ifs)?;
            let act = apply_cluster(root, runner, Role::Backup, node.service_backend, &config)
                .context("installing the cluster config on the backup")?;
            serde_json::to_value(act)?
        }
    };
    Ok(data)
}
