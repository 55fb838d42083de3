//! The cluster's VIPs as data, and which of them this node holds now.
//!
//! keepalived owns the VIPs; the tools only ask "which ones are configured
//! here right now?". `ns-ha-vip` (list, announce, who-holds), the role
//! engine (is this node master by its addresses?) and the sync (push only
//! from the master) all need the same answer, so it is computed here once,
//! from `cluster.json` and the node's addresses (behind [`InterfaceSource`]).

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

use crate::config::ClusterConfig;
use crate::net::{InterfaceSource, Ipv4Cidr};

/// One VIP of the cluster and whether this node holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipState {
    pub vip: Ipv4Cidr,
    pub interface: String,
    pub vrid: u8,
    /// The HA-link heartbeat VIP (not a gateway address).
    pub heartbeat: bool,
    pub held: bool,
}

/// What the node is by the VIPs it holds, independent of what anyone recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LiveState {
    /// Holds every VIP.
    Master,
    /// Holds none.
    Backup,
    /// Holds some: a transition in progress or a broken sync group.
    Mixed,
}

impl LiveState {
    pub fn as_str(self) -> &'static str {
        match self {
            LiveState::Master => "MASTER",
            LiveState::Backup => "BACKUP",
            LiveState::Mixed => "MIXED",
        }
    }
}

/// Every VIP of the cluster (LAN VIPs, then the heartbeat VIP), not yet observed.
pub fn cluster_vips(cluster: &ClusterConfig) -> Vec<VipState> {
    let mut out: Vec<VipState> = cluster
        .lans
        .iter()
        .flat_map(|l| {
            l.vips.iter().map(|v| VipState {
                vip: *v,
                interface: l.interface.clone(),
                vrid: l.vrid,
                heartbeat: false,
                held: false,
            })
        })
        .collect();
    out.push(VipState {
        vip: Ipv4Cidr {
            addr: cluster.ha.heartbeat_vip,
            prefix: 32,
        },
        interface: cluster.ha.interface.clone(),
        vrid: cluster.vrrp.vrid,
        heartbeat: true,
        held: false,
    });
    out
}

fn held_addresses(ifs: &dyn InterfaceSource) -> Result<Vec<Ipv4Addr>> {
    Ok(ifs.all_ipv4()?.into_iter().map(|(_, c)| c.addr).collect())
}

/// The cluster's VIPs with `held` filled in from the node's addresses.
pub fn observe(cluster: &ClusterConfig, ifs: &dyn InterfaceSource) -> Result<Vec<VipState>> {
    let have = held_addresses(ifs)?;
    let mut vips = cluster_vips(cluster);
    for v in &mut vips {
        v.held = have.contains(&v.vip.addr);
    }
    Ok(vips)
}

/// Whether this node holds `addr` on any interface (a VIP, or an address
/// someone asks about that is not in the cluster).
pub fn holds_address(ifs: &dyn InterfaceSource, addr: Ipv4Addr) -> Result<bool> {
    Ok(held_addresses(ifs)?.contains(&addr))
}

/// How many of the observed VIPs this node holds.
pub fn held_count(vips: &[VipState]) -> usize {
    vips.iter().filter(|v| v.held).count()
}

/// MASTER if every VIP is held, BACKUP if none, MIXED otherwise.
pub fn live_state(vips: &[VipState]) -> LiveState {
    let held = held_count(vips);
    if held == 0 {
        LiveState::Backup
    } else if held == vips.len() {
        LiveState::Master
    } else {
        LiveState::Mixed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{interface as iface, sample_cluster as cluster};
    use crate::net::StaticInterfaces;

    #[test]
    fn master_backup_and_mixed() {
        let c = cluster();
        let none = StaticInterfaces(vec![iface("lan0", &["10.99.1.1/24"])]);
        let v = observe(&c, &none).unwrap();
        assert_eq!(v.len(), 2);
        assert!(v[1].heartbeat && v[1].vip.to_string() == "10.99.0.254/32");
        assert_eq!(live_state(&v), LiveState::Backup);
        assert_eq!(held_count(&v), 0);
        let some = StaticInterfaces(vec![iface("lan0", &["10.99.1.1/24", "10.99.1.254/24"])]);
        let v = observe(&c, &some).unwrap();
        assert_eq!(live_state(&v), LiveState::Mixed);
        assert_eq!(held_count(&v), 1);
        // Held on any interface counts (keepalived may put it elsewhere by mistake).
        let all = StaticInterfaces(vec![
            iface("lan0", &["10.99.1.1/24", "10.99.1.254/24"]),
            iface("ha0", &["10.99.0.1/24", "10.99.0.254/32"]),
        ]);
        let v = observe(&c, &all).unwrap();
        assert!(v.iter().all(|x| x.held));
        assert_eq!(live_state(&v), LiveState::Master);
        assert_eq!(serde_json::to_value(LiveState::Mixed).unwrap(), "MIXED");
        assert!(holds_address(&all, "10.99.0.254".parse().unwrap()).unwrap());
        assert!(!holds_address(&none, "10.99.1.254".parse().unwrap()).unwrap());
        let back: LiveState = serde_json::from_value("MASTER".into()).unwrap();
        assert_eq!(back, LiveState::Master);
    }
}
