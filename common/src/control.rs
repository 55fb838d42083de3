//! The backup's side of the control requests of pairing (`hello`, `inspect`,
//! `install-cluster`), run by the forced command on the backup.
//!
//! They live in the library so that the receiver (`ns-ha-sync receive`) and
//! the tests call the same code, and so the checks the primary relies on are
//! made by the backup about itself: its version, its cluster, its interfaces.

use anyhow::{Context, Result};

use crate::activate::apply_cluster;
use crate::addresses::{address_problems, AddressProblem};
use crate::authorized_keys::refresh_primary_line;
use crate::cmd::CommandRunner;
use crate::config::{load_cluster_opt, load_node, ClusterConfig, NodeConfig, Role};
use crate::exit::{fail, Code};
use crate::net::{InterfaceSource, IpCommand};
use crate::proto::{
    ControlRequest, HelloReply, InspectReply, NS_HA_VERSION, PROTOCOL_VERSION, UPGRADE_FIX,
    VERSION_MISMATCH,
};
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
                "{VERSION_MISMATCH}: primary runs ns-ha {version} (protocol {protocol}), this backup {NS_HA_VERSION} (protocol {PROTOCOL_VERSION}): {UPGRADE_FIX}"
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
    for w in &cluster.wans {
        for dev in w.needed_devices() {
            if ifs.interface(dev)?.is_none() {
                return Err(fail(
                    Code::InvalidInput,
                    format!(
                        "interface {dev} of WAN {} does not exist on the backup: both nodes need the same interface names (create it there, or fix the name with ns-ha-init remove-interface and add-wan)",
                        w.interface
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Refuse a cluster whose primary HA address is not the one this backup
/// authorized the primary's key from (`node.json` `peer_address`, the
/// `from=` of the key line): keepalived and the key would name two different
/// primaries.
pub fn check_primary_address(cluster: &ClusterConfig, node: &NodeConfig) -> Result<()> {
    let primary = cluster.ha.primary_address.addr;
    if primary != node.peer_address {
        return Err(fail(
            Code::InvalidInput,
            format!(
                "the cluster says the primary's HA address is {primary} but this backup accepts the primary's key from {} only: \
                 run ns-ha-init reset --yes and ns-ha-init init-backup --peer {primary} on the backup",
                node.peer_address
            ),
        ));
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
            // The whole model (roles, sync set and its identity floor,
            // state_dir, addresses) through its one validation entry point.
            config.validate()?;
            check_primary_address(&config, &node)?;
            check_backup_interfaces(&config, &ifs)?;
            let act = apply_cluster(root, runner, Role::Backup, node.service_backend, &config)
                .context("installing the cluster config on the backup")?;
            // Keep the primary's key line as this release makes it (an older
            // line has no from=); the session in progress is not affected.
            match refresh_primary_line(root, &node) {
                Ok(true) => log::info!(
                    "the primary's authorized_keys line was rewritten: from=\"{}\"",
                    node.peer_address
                ),
                Ok(false) => {}
                Err(e) => log::warn!("the primary's authorized_keys line was not refreshed: {e:#}"),
            }
            serde_json::to_value(act)?
        }
    };
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::{CmdOutput, RecordingRunner};
    use crate::config::{save_node, SCHEMA_VERSION};
    use crate::exit::code_of;
    use crate::fixtures::sample_cluster;
    use crate::root::paths;

    /// A backup root (peer 10.99.0.1) whose `ip` answers with the sample
    /// cluster's backup interfaces.
    fn backup() -> (tempfile::TempDir, NodeRoot, RecordingRunner) {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        save_node(
            &root,
            &NodeConfig {
                schema_version: SCHEMA_VERSION,
                role: Role::Backup,
                peer_address: "10.99.0.1".parse().unwrap(),
                peer_host_key: None,
                authorized_key_fingerprint: None,
                service_backend: Default::default(),
                platform: Default::default(),
                ssh_server: Default::default(),
                interface_manager: None,
            },
        )
        .unwrap();
        let runner = RecordingRunner::new();
        runner.answer(
            "ip",
            CmdOutput {
                status: Some(0),
                stdout: "[]".into(),
                ..Default::default()
            },
        );
        (dir, root, runner)
    }

    fn install(root: &NodeRoot, runner: &RecordingRunner, c: &ClusterConfig) -> anyhow::Error {
        let req = serde_json::json!({"op": "install-cluster", "config": c});
        handle(root, runner, req).expect_err("install-cluster accepted")
    }

    /// Issue 8 item 3: install-cluster refuses, with nothing written, a sync
    /// set reaching the backup's identity floor (7), a roles section the role
    /// engine cannot run (4), and a primary at another address than the one
    /// the key is authorized from (3). Before, the first and the last were
    /// installed.
    #[test]
    fn install_cluster_refuses_floor_roles_and_another_primary_and_writes_nothing() {
        let (_dir, root, runner) = backup();
        for (include, floor) in [
            ("/root/.ssh", "/root/.ssh"),
            ("/etc/ssh/ssh_host_*", "/etc/ssh/ssh_host_*"),
            ("/etc/ns-ha", "/etc/ns-ha"),
        ] {
            let mut c = sample_cluster();
            c.sync.include = vec![include.into()];
            let e = install(&root, &runner, &c);
            assert_eq!(code_of(&e), Code::Security, "{include}: {e}");
            assert!(e.to_string().contains(&format!("reaches {floor}")), "{e}");
        }
        let mut c = sample_cluster();
        c.roles = serde_json::from_value(serde_json::json!({"backup": {"links_down": ["lan*"]}}))
            .unwrap();
        assert_eq!(code_of(&install(&root, &runner, &c)), Code::Config);
        let mut c = sample_cluster();
        c.ha.primary_address = "10.99.0.3/24".parse().unwrap();
        let e = install(&root, &runner, &c);
        assert_eq!(code_of(&e), Code::InvalidInput, "{e}");
        assert!(
            e.to_string().contains("init-backup --peer 10.99.0.3"),
            "{e}"
        );
        assert!(!root.path(paths::CLUSTER_CONFIG).exists());
        assert!(!root.path(paths::KEEPALIVED_CONF).exists());
        assert!(runner.calls().is_empty(), "{:?}", runner.calls());
    }
}
