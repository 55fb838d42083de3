//! This node's own static addresses, by its role.
//!
//! Each node carries a fixed address on the HA link and on every LAN (the
//! VIPs come and go on top of them). Health ("can this node serve as
//! master?"), the backup's pairing checks ("are my interfaces what the
//! cluster says?") and `ns-ha-vip who-holds` (which source address to ARP
//! from) ask the same question, so it is answered here once.

use anyhow::Result;
use std::fmt;

use crate::config::{ClusterConfig, Role};
use crate::net::{Interface, InterfaceSource, Ipv4Cidr};

/// The cluster's interfaces on a node of `role`, each with the static
/// address the node must carry there (None: the HA link of a node whose
/// address is not known yet, before pairing). HA link first, then the LANs.
pub fn static_addresses(cluster: &ClusterConfig, role: Role) -> Vec<(String, Option<Ipv4Cidr>)> {
    let mut out = vec![(cluster.ha.interface.clone(), cluster.ha_address(role))];
    for l in &cluster.lans {
        let own = match role {
            Role::Primary => l.primary_address,
            Role::Backup => l.backup_address,
        };
        out.push((l.interface.clone(), Some(own)));
    }
    out
}

/// The static address of a node of `role` on `interface` (None: not a cluster interface).
pub fn static_address(cluster: &ClusterConfig, role: Role, interface: &str) -> Option<Ipv4Cidr> {
    static_addresses(cluster, role)
        .into_iter()
        .find(|(name, _)| name == interface)
        .and_then(|(_, a)| a)
}

/// Whether `iface` carries `want` as a static (not DHCP) address, same prefix.
pub fn carries_static(iface: &Interface, want: Ipv4Cidr) -> bool {
    iface.ipv4.iter().any(|a| a.permanent && a.cidr == want)
}

/// Why one of the cluster's interfaces is not ready on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressProblem {
    Missing { interface: String },
    Down { interface: String },
    LacksStatic { interface: String, want: Ipv4Cidr },
}

impl fmt::Display for AddressProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressProblem::Missing { interface } => {
                write!(f, "interface {interface} does not exist")
            }
            AddressProblem::Down { interface } => write!(f, "interface {interface} is down"),
            AddressProblem::LacksStatic { interface, want } => {
                write!(f, "interface {interface} lacks its static address {want}")
            }
        }
    }
}

/// Every cluster interface of a node of `role` that is missing, down, or
/// lacks its static address (empty: all ready), in [`static_addresses`] order.
pub fn address_problems(
    cluster: &ClusterConfig,
    role: Role,
    ifs: &dyn InterfaceSource,
) -> Result<Vec<AddressProblem>> {
    let mut out = Vec::new();
    for (name, want) in static_addresses(cluster, role) {
        let Some(i) = ifs.interface(&name)? else {
            out.push(AddressProblem::Missing { interface: name });
            continue;
        };
        if !i.up {
            out.push(AddressProblem::Down {
                interface: name.clone(),
            });
        }
        if let Some(want) = want {
            if !carries_static(&i, want) {
                out.push(AddressProblem::LacksStatic {
                    interface: name,
                    want,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{interface as iface, sample_cluster as cluster};
    use crate::net::StaticInterfaces;

    #[test]
    fn each_role_has_its_own_static_addresses() {
        let c = cluster();
        assert_eq!(
            static_address(&c, Role::Primary, "lan0")
                .unwrap()
                .to_string(),
            "10.99.1.1/24"
        );
        assert_eq!(
            static_address(&c, Role::Backup, "ha0").unwrap().to_string(),
            "10.99.0.2/24"
        );
        assert_eq!(static_address(&c, Role::Backup, "eth9"), None);
        let good = StaticInterfaces(vec![
            iface("ha0", &["10.99.0.1/24"]),
            iface("lan0", &["10.99.1.1/24", "10.99.1.254/24"]),
        ]);
        assert!(address_problems(&c, Role::Primary, &good)
            .unwrap()
            .is_empty());
        // The backup's addresses are not the primary's.
        assert_eq!(address_problems(&c, Role::Backup, &good).unwrap().len(), 2);
        // Same address with another prefix, or learned by DHCP, is not it.
        let mut wrong = good.clone();
        wrong.0[1].ipv4[0].cidr = "10.99.1.1/16".parse().unwrap();
        wrong.0[0].ipv4[0].permanent = false;
        let p = address_problems(&c, Role::Primary, &wrong).unwrap();
        assert_eq!(
            p.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            vec![
                "interface ha0 lacks its static address 10.99.0.1/24",
                "interface lan0 lacks its static address 10.99.1.1/24"
            ]
        );
        let mut down = good.clone();
        down.0[1].up = false;
        assert_eq!(
            address_problems(&c, Role::Primary, &down).unwrap(),
            vec![AddressProblem::Down {
                interface: "lan0".into()
            }]
        );
        let missing = StaticInterfaces(vec![iface("ha0", &["10.99.0.1/24"])]);
        assert_eq!(
            address_problems(&c, Role::Primary, &missing).unwrap()[0].to_string(),
            "interface lan0 does not exist"
        );
    }
}
