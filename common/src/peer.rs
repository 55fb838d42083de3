//! Opening the sync channel to the paired peer from the node's own config.
//!
//! Every tool that talks to the backup (pairing, cluster edits, sync) does it
//! the same way: the peer's HA address and pinned host key from `node.json`,
//! the port and user from `cluster.json`, the node's key. One function so the
//! pin can never be skipped by one of them.

use anyhow::Result;
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{ClusterConfig, NodeConfig, Role};
use crate::exit::{fail, Code};
use crate::proto::{call, ControlRequest, HelloReply, NS_HA_VERSION, PROTOCOL_VERSION};
use crate::root::{paths, NodeRoot};
use crate::ssh::{HostKeyCheck, PeerChannel, PeerEndpoint, PeerSession};

/// Default time to wait for the peer on connect and on each read.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(15);

/// Environment variable that replaces [`PEER_TIMEOUT`] (whole seconds, 1 or
/// more): for a backup that answers slowly, such as the VM tier's emulated
/// lab, where every process start costs a second or more.
pub const PEER_TIMEOUT_ENV: &str = "NS_HA_PEER_TIMEOUT_SECS";

/// The time to wait for the peer: [`PEER_TIMEOUT_ENV`] if it holds a whole
/// number of seconds of at least 1, else [`PEER_TIMEOUT`].
pub fn peer_timeout(env_value: Option<&str>) -> Duration {
    let Some(v) = env_value else {
        return PEER_TIMEOUT;
    };
    match v.trim().parse::<u64>() {
        Ok(s) if s >= 1 => Duration::from_secs(s),
        _ => {
            log::warn!(
                "{PEER_TIMEOUT_ENV}='{v}' is not a whole number of seconds of at least 1: \
                 waiting {PEER_TIMEOUT:?} for the peer; set it to e.g. 60 or unset it"
            );
            PEER_TIMEOUT
        }
    }
}

/// The endpoint of the backup as this (primary) node knows it.
pub fn endpoint(root: &NodeRoot, node: &NodeConfig, cluster: &ClusterConfig) -> PeerEndpoint {
    PeerEndpoint {
        address: SocketAddr::new(node.peer_address.into(), cluster.ssh.port),
        user: cluster.ssh.user.clone(),
        key_path: root.path(paths::SSH_KEY),
        timeout: peer_timeout(std::env::var(PEER_TIMEOUT_ENV).ok().as_deref()),
    }
}

/// Connect to the paired backup with the pinned host key. Only the primary may.
pub fn connect(root: &NodeRoot, node: &NodeConfig, cluster: &ClusterConfig) -> Result<PeerSession> {
    if node.role != Role::Primary {
        return Err(fail(
            Code::State,
            "this node is the backup: changes are made on the primary, which pushes them here",
        ));
    }
    let pin = node.peer_host_key.clone().ok_or_else(|| {
        fail(
            Code::State,
            "the backup is not paired yet: run ns-ha-init pair on this node",
        )
    })?;
    PeerSession::connect(&endpoint(root, node, cluster), &HostKeyCheck::Pinned(pin))
}

/// Open a receiver channel and greet it: versions and cluster identity must match.
pub fn open_channel(session: &PeerSession, cluster_id: &str) -> Result<(PeerChannel, HelloReply)> {
    let mut ch = session.open_receiver()?;
    let hello: HelloReply = call(
        &mut ch,
        &ControlRequest::Hello {
            protocol: PROTOCOL_VERSION,
            version: NS_HA_VERSION.to_string(),
            cluster_id: cluster_id.to_string(),
        },
    )?;
    Ok((ch, hello))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_timeout_takes_whole_seconds_from_the_environment() {
        assert_eq!(peer_timeout(None), PEER_TIMEOUT);
        assert_eq!(peer_timeout(Some("120")), Duration::from_secs(120));
        assert_eq!(peer_timeout(Some(" 40 ")), Duration::from_secs(40));
        for bad in ["0", "", "-3", "1.5", "soon"] {
            assert_eq!(peer_timeout(Some(bad)), PEER_TIMEOUT, "{bad:?}");
        }
    }
}
