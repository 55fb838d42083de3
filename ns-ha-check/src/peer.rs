//! What `doctor` asks the backup, behind a trait.
//!
//! The real answers come over the pinned SSH channel (`common::peer`) and
//! from `ns-ha-sync`'s verify; unit tests answer with a fake, so every
//! doctor finding about the peer can be tested without an sshd.

use anyhow::Result;

use ns_ha_common::config::{ClusterConfig, NodeConfig};
use ns_ha_common::peer;
use ns_ha_common::proto::HelloReply;
use ns_ha_common::NodeRoot;
use ns_ha_sync::manifest::Drift;
use ns_ha_sync::sender::{peer_verify, SshLink};

/// Questions for the paired backup (asked from the primary).
pub trait PeerProbe {
    /// Connect with the pinned host key and greet the receiver.
    fn hello(
        &self,
        root: &NodeRoot,
        node: &NodeConfig,
        cluster: &ClusterConfig,
    ) -> Result<HelloReply>;
    /// Paths edited on the backup since the last sync (ns-ha-sync verify).
    fn drift(
        &self,
        root: &NodeRoot,
        node: &NodeConfig,
        cluster: &ClusterConfig,
    ) -> Result<Vec<Drift>>;
}

/// The real peer, over SSH.
pub struct SshProbe;

impl PeerProbe for SshProbe {
    fn hello(
        &self,
        root: &NodeRoot,
        node: &NodeConfig,
        cluster: &ClusterConfig,
    ) -> Result<HelloReply> {
        let session = peer::connect(root, node, cluster)?;
        let (ch, hello) = peer::open_channel(&session, &cluster.cluster_id)?;
        let _ = ch.finish();
        Ok(hello)
    }

    fn drift(
        &self,
        root: &NodeRoot,
        node: &NodeConfig,
        cluster: &ClusterConfig,
    ) -> Result<Vec<Drift>> {
        let mut link = SshLink::new(root, node, cluster);
        Ok(peer_verify(root, cluster, &mut link)?.drift)
    }
}
