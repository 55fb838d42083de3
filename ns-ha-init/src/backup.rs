//! The backup as the primary's commands see it, and the node lock.
//!
//! Pairing and every cluster edit ask the backup about its interfaces and
//! install the cluster on it. They do it through [`BackupLink`] and
//! [`Backup`], so the order of the two installs and what a refusal leaves
//! behind are unit-tested with a fake backup ([`SshLink`] is the real one,
//! over the pinned SSH channel). This module sits below `pairing` and `edit`
//! (both use it, it uses neither).

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use ns_ha_common::config::{ClusterConfig, NodeConfig, PinnedHostKey};
use ns_ha_common::exit::{fail, Code};
use ns_ha_common::fsutil::NodeLock;
use ns_ha_common::net::{Interface, Ipv4Cidr};
use ns_ha_common::peer;
use ns_ha_common::proto::{
    call, copy_exact, read_msg, write_msg, ControlRequest, HelloReply, InspectReply, Reply,
    UpgradeMessage,
};
use ns_ha_common::root::paths;
use ns_ha_common::ssh::{HostKeyCheck, PeerChannel, PeerSession};
use ns_ha_common::upgrade::{UpgradeReply, UpgradeRequest};
use ns_ha_common::NodeRoot;

const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Take the node lock for a configuration change.
pub fn lock(root: &NodeRoot) -> Result<NodeLock> {
    NodeLock::acquire(&root.path(paths::LOCK), LOCK_WAIT)
}

/// One open conversation with the backup.
pub trait Backup {
    /// The backup's view of one of its interfaces (`None`: it has none of that name).
    fn interface(&mut self, name: &str) -> Result<Option<Interface>>;
    /// Install `cluster` on the backup, which checks its interfaces, lets its
    /// keepalived validate the render, then writes it and starts, reloads or
    /// stops keepalived as `cluster.enabled` says. A refusal changes nothing there.
    fn install(&mut self, cluster: &ClusterConfig) -> Result<()>;
}

/// A connected backup with what the connection learned.
pub struct Connected {
    pub backup: Box<dyn Backup>,
    /// The host key the backup presented (checked against `check`).
    pub host_key: PinnedHostKey,
    pub hello: HelloReply,
}

/// How the primary reaches its backup.
pub trait BackupLink {
    /// Connect to the backup named by `node`/`cluster`, checking its host key with `check`.
    fn connect(
        &self,
        root: &NodeRoot,
        node: &NodeConfig,
        cluster: &ClusterConfig,
        check: &HostKeyCheck,
    ) -> Result<Connected>;

    /// Connect with the host key pinned in `node` (every command after `pair`).
    fn connect_pinned(
        &self,
        root: &NodeRoot,
        node: &NodeConfig,
        cluster: &ClusterConfig,
    ) -> Result<Connected>;

    /// Send the package `file` (described by `req`) to the backup over the
    /// pinned channel as an `upgrade` request, without a `hello` (which
    /// refuses the version mismatch an upgrade is for), and return what the
    /// backup installed.
    fn upgrade(
        &self,
        root: &NodeRoot,
        node: &NodeConfig,
        cluster: &ClusterConfig,
        req: &UpgradeRequest,
        file: &Path,
    ) -> Result<UpgradeReply>;
}

/// The real backup: the sync receiver behind the pinned SSH channel.
pub struct SshLink;

struct SshBackup {
    ch: PeerChannel,
    // The channel runs inside this session; kept open as long as the channel.
    _session: PeerSession,
}

impl BackupLink for SshLink {
    fn connect(
        &self,
        root: &NodeRoot,
        node: &NodeConfig,
        cluster: &ClusterConfig,
        check: &HostKeyCheck,
    ) -> Result<Connected> {
        let session = PeerSession::connect(&peer::endpoint(root, node, cluster), check)?;
        greet(session, cluster)
    }

    fn connect_pinned(
        &self,
        root: &NodeRoot,
        node: &NodeConfig,
        cluster: &ClusterConfig,
    ) -> Result<Connected> {
        // The one pinned connect every tool uses (common::peer).
        greet(peer::connect(root, node, cluster)?, cluster)
    }

    fn upgrade(
        &self,
        root: &NodeRoot,
        node: &NodeConfig,
        cluster: &ClusterConfig,
        req: &UpgradeRequest,
        file: &Path,
    ) -> Result<UpgradeReply> {
        let session = peer::connect(root, node, cluster)?;
        let mut ch = session.open_receiver()?;
        write_msg(&mut ch, &UpgradeMessage::Upgrade(req.clone()))?;
        let mut f =
            std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        copy_exact(&mut f, &mut ch, req.size)?;
        ch.flush().context("sending the package")?;
        let reply: Reply = read_msg(&mut ch)?;
        reply.into_result()
    }
}

/// Open the receiver channel on `session` and greet the backup.
fn greet(session: PeerSession, cluster: &ClusterConfig) -> Result<Connected> {
    let (ch, hello) = peer::open_channel(&session, &cluster.cluster_id)?;
    let host_key = session.host_key.clone();
    Ok(Connected {
        backup: Box::new(SshBackup {
            ch,
            _session: session,
        }),
        host_key,
        hello,
    })
}

impl Backup for SshBackup {
    fn interface(&mut self, name: &str) -> Result<Option<Interface>> {
        let reply: InspectReply = call(
            &mut self.ch,
            &ControlRequest::Inspect {
                interfaces: vec![name.to_string()],
            },
        )?;
        Ok(reply.interfaces.into_iter().next().flatten())
    }

    fn install(&mut self, cluster: &ClusterConfig) -> Result<()> {
        let _reply: serde_json::Value = call(
            &mut self.ch,
            &ControlRequest::InstallCluster {
                config: Box::new(cluster.clone()),
            },
        )?;
        Ok(())
    }
}

/// Learn the backup's static address of `interface` (another host of our subnet).
pub fn backup_address(
    backup: &mut dyn Backup,
    interface: &str,
    ours: &Ipv4Cidr,
) -> Result<Ipv4Cidr> {
    let iface = backup.interface(interface)?.ok_or_else(|| {
        fail(
            Code::InvalidInput,
            format!("interface {interface} does not exist on the backup: both nodes need the same interface names"),
        )
    })?;
    let addr = iface.static_ipv4().ok_or_else(|| {
        fail(
            Code::InvalidInput,
            format!(
                "interface {interface} on the backup has no static IPv4 address: configure one"
            ),
        )
    })?;
    if !ours.contains(addr.addr) || addr.prefix != ours.prefix || addr.addr == ours.addr {
        return Err(fail(
            Code::InvalidInput,
            format!(
                "interface {interface}: the backup's address {addr} is not another host of this node's subnet {}/{}: fix the addressing",
                ours.network(),
                ours.prefix
            ),
        ));
    }
    Ok(addr)
}

/// A fake backup for unit tests: interfaces it reports, installs it records
/// (in a journal shared with the test's command runner, so the order of the
/// two nodes' installs can be asserted), and an optional refusal.
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What the fake backup saw and holds, shared with the test.
    #[derive(Default)]
    pub struct FakeState {
        pub interfaces: Vec<Interface>,
        /// The cluster configs installed, in order.
        pub installed: Vec<ClusterConfig>,
        /// Refuse installs with this error (like a backup whose keepalived rejects the render).
        pub refuse: Option<String>,
        /// Entries `backup install enabled=BOOL` in order, shared with the runner.
        pub journal: Arc<Mutex<Vec<String>>>,
        /// Upgrade requests received, with the bytes sent.
        pub upgrades: Vec<(UpgradeRequest, Vec<u8>)>,
        /// The answer to an upgrade (default: refused, nothing installed).
        pub upgrade_reply: Option<UpgradeReply>,
        /// The ns-ha version the fake backup's hello reports (default: this one).
        pub version: Option<String>,
    }

    #[derive(Clone, Default)]
    pub struct FakeLink(pub Arc<Mutex<FakeState>>);

    struct FakeBackup(Arc<Mutex<FakeState>>);

    impl FakeLink {
        pub fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
            self.0.lock().unwrap_or_else(|p| p.into_inner())
        }
    }

    /// The host key the fake backup presents.
    pub fn backup_host_key() -> PinnedHostKey {
        ns_ha_common::ssh::parse_public_key(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEt1Ig8czKwgR7Z9el8tb0tUfSP1AJewPrV9zoXG26FS fw2",
        )
        .expect("fixture key")
    }

    impl BackupLink for FakeLink {
        fn connect(
            &self,
            _root: &NodeRoot,
            _node: &NodeConfig,
            cluster: &ClusterConfig,
            _check: &HostKeyCheck,
        ) -> Result<Connected> {
            Ok(Connected {
                backup: Box::new(FakeBackup(self.0.clone())),
                host_key: backup_host_key(),
                hello: HelloReply {
                    protocol: ns_ha_common::proto::PROTOCOL_VERSION,
                    version: self
                        .state()
                        .version
                        .clone()
                        .unwrap_or_else(|| ns_ha_common::proto::NS_HA_VERSION.into()),
                    role: "backup".into(),
                    cluster_id: Some(cluster.cluster_id.clone()),
                },
            })
        }

        fn connect_pinned(
            &self,
            root: &NodeRoot,
            node: &NodeConfig,
            cluster: &ClusterConfig,
        ) -> Result<Connected> {
            let pin = node.peer_host_key.clone().ok_or_else(|| {
                fail(
                    Code::State,
                    "the backup is not paired yet: run ns-ha-init pair",
                )
            })?;
            self.connect(root, node, cluster, &HostKeyCheck::Pinned(pin))
        }

        fn upgrade(
            &self,
            _root: &NodeRoot,
            _node: &NodeConfig,
            _cluster: &ClusterConfig,
            req: &UpgradeRequest,
            file: &Path,
        ) -> Result<UpgradeReply> {
            let bytes = std::fs::read(file)?;
            let mut s = self.state();
            s.upgrades.push((req.clone(), bytes));
            s.upgrade_reply
                .clone()
                .ok_or_else(|| fail(Code::Conflict, "peer: refused"))
        }
    }

    impl Backup for FakeBackup {
        fn interface(&mut self, name: &str) -> Result<Option<Interface>> {
            let s = self.0.lock().unwrap_or_else(|p| p.into_inner());
            Ok(s.interfaces.iter().find(|i| i.name == name).cloned())
        }

        fn install(&mut self, cluster: &ClusterConfig) -> Result<()> {
            let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = &s.refuse {
                return Err(fail(Code::Peer, format!("peer: {e}")));
            }
            s.journal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("backup install enabled={}", cluster.enabled));
            s.installed.push(cluster.clone());
            Ok(())
        }
    }
}
