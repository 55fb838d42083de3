//! What `status` and `doctor` ask the peer directly, behind a trait.
//!
//! The greeting goes over the pinned SSH channel (`common::peer`, from the
//! primary): it tells whether the backup answers and runs the same release
//! in the same cluster. Either node can see whether the other's sshd
//! answers at all (its banner, no login). Everything else about the backup (its drift) is `ns-ha-sync
//! verify`'s answer (see [`crate::tools`]). Unit tests answer with a fake,
//! so every doctor finding about the peer can be tested without an sshd.

use anyhow::Result;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use ns_ha_common::config::{ClusterConfig, NodeConfig};
use ns_ha_common::exit::{fail, Code};
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
    /// The first line the peer's sshd sends at `addr:port` (`SSH-2.0-...`);
    /// an error says why there is none (refused, timed out, not SSH).
    fn ssh_banner(&self, addr: Ipv4Addr, port: u16) -> Result<String>;
}

/// How long the banner check waits to connect and to read.
const BANNER_TIMEOUT: Duration = Duration::from_secs(2);

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

    fn ssh_banner(&self, addr: Ipv4Addr, port: u16) -> Result<String> {
        let to = SocketAddr::from((addr, port));
        let down = |e: std::io::Error| fail(Code::Peer, format!("{to}: {e}"));
        let mut s = TcpStream::connect_timeout(&to, BANNER_TIMEOUT).map_err(down)?;
        s.set_read_timeout(Some(BANNER_TIMEOUT)).map_err(down)?;
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).map_err(down)?;
        let line = String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        if !line.starts_with("SSH-") {
            return Err(fail(
                Code::Peer,
                format!("{to} answers but not with an SSH banner"),
            ));
        }
        Ok(line)
    }
}
