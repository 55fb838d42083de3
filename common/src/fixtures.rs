//! Fixed sample data for the tools' unit tests.
//!
//! Several crates test against "a paired cluster with one LAN" and "an
//! interface with these addresses"; one definition keeps those tests
//! agreeing with each other. Not used by any tool at run time.

use std::net::Ipv4Addr;

use crate::config::{ClusterConfig, LanInterface, NodeConfig, PinnedHostKey, Role, SCHEMA_VERSION};
use crate::net::{IfAddr, Interface, Ipv4Cidr, LinkKind};

/// A paired cluster: HA link ha0 (10.99.0.1/.2, heartbeat .254), LAN lan0
/// (10.99.1.1/.2, VRID 51, VIP 10.99.1.254/24).
pub fn sample_cluster() -> ClusterConfig {
    let cidr = |s: &str| s.parse::<Ipv4Cidr>().expect("fixture address");
    let mut c = ClusterConfig::new(
        "0123456789abcdef0123456789abcdef".into(),
        "ha0".into(),
        cidr("10.99.0.1/24"),
        Ipv4Addr::new(10, 99, 0, 254),
    );
    c.ha.backup_address = Some(cidr("10.99.0.2/24"));
    c.lans.push(LanInterface {
        interface: "lan0".into(),
        vrid: 51,
        primary_address: cidr("10.99.1.1/24"),
        backup_address: cidr("10.99.1.2/24"),
        vips: vec![cidr("10.99.1.254/24")],
        wan: false,
    });
    c
}

/// The node config of a primary paired with the backup at `peer` (a dummy pinned key).
pub fn paired_primary_node(peer: Ipv4Addr) -> NodeConfig {
    paired_node(Role::Primary, peer)
}

/// The node config of a `role` node paired with `peer` (a dummy pinned key).
pub fn paired_node(role: Role, peer: Ipv4Addr) -> NodeConfig {
    NodeConfig {
        schema_version: SCHEMA_VERSION,
        role,
        peer_address: peer,
        peer_host_key: Some(PinnedHostKey {
            key_type: "ssh-ed25519".into(),
            key_base64: "AAAA".into(),
            fingerprint: "SHA256:x".into(),
        }),
        authorized_key_fingerprint: None,
        service_backend: Default::default(),
        platform: Default::default(),
        ssh_server: Default::default(),
        interface_manager: None,
    }
}

/// An up veth interface with static addresses (`10.99.1.1/24`, ...).
pub fn interface(name: &str, addrs: &[&str]) -> Interface {
    Interface {
        name: name.into(),
        kind: LinkKind::Veth,
        up: true,
        ipv4: addrs
            .iter()
            .map(|a| IfAddr {
                cidr: a.parse().expect("fixture address"),
                permanent: true,
                label: None,
            })
            .collect(),
    }
}
