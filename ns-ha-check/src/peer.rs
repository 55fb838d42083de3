//! What `doctor` asks the paired backup directly, behind a trait.
//!
//! The greeting goes over the pinned SSH channel (`common::peer`): it tells
//! whether the backup answers and runs the same release in the same
//! cluster. Everything else about the backup (its drift) is `ns-ha-sync
//! verify`'s answer (see [`crate::tools`]). Unit tests answer with a fake,
//! so every doctor finding about the peer can be tested without an sshd.

use anyhow::Result;

use ns_ha_common::config::{ClusterConfig, NodeConfig};
use ns_ha_common::peer;
use ns_ha_common::proto::HelloReply;
use ns_ha_common::NodeRoot;

/// Questions for the paired backup (asked from the primary).
pub trait PeerProbe {
    /// Connect with the pinned host key and greet the receiver.
    fn hello(
        &self,
        root: &NodeRoot,
        node: &NodeConfig,
        cluster: &ClusterConfig,
    ) -> Result<HelloReply>;
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
}
