//! Rendering the conntrackd configuration of a node.
//!
//! conntrackd copies the kernel's connection-tracking table to the peer over
//! the HA link (FTFW, reliable over UDP), so that established connections
//! survive a failover. It must ignore the VIPs and both nodes' own addresses:
//! those flows terminate on a firewall and must not be injected on the peer.

use anyhow::Result;
use std::fmt::Write as _;

use crate::config::{ClusterConfig, Role};
use crate::exit::{fail, Code};
use crate::root::NodeRoot;

/// UDP port of the FTFW channel on the HA link.
pub const FTFW_PORT: u16 = 3780;
/// Where the rendered config puts conntrackd's control socket, under the node root.
pub const CONTROL_SOCKET: &str = "/run/conntrackd.ctl";

/// The conntrackd.conf text for this node.
pub fn render(cluster: &ClusterConfig, role: Role, root: &NodeRoot) -> Result<String> {
    let (Some(me), Some(peer)) = (cluster.ha_address(role), cluster.ha_address(role.other()))
    else {
        return Err(fail(
            Code::State,
            "the backup's HA address is not known yet: pair the nodes first",
        ));
    };
    let mut ignore = vec!["127.0.0.1".to_string()];
    ignore.push(cluster.ha.primary_address.addr.to_string());
    ignore.extend(cluster.ha.backup_address.map(|a| a.addr.to_string()));
    ignore.push(cluster.ha.heartbeat_vip.to_string());
    for lan in &cluster.lans {
        ignore.push(lan.primary_address.addr.to_string());
        ignore.push(lan.backup_address.addr.to_string());
        ignore.extend(lan.vips.iter().map(|v| v.addr.to_string()));
    }
    ignore.dedup();
    let mut w = String::new();
    writeln!(
        w,
        "# Rendered by ns-ha-init: do not edit, changes are overwritten."
    )?;
    writeln!(w, "Sync {{")?;
    writeln!(w, "    Mode FTFW {{")?;
    writeln!(w, "        DisableExternalCache off")?;
    writeln!(w, "        StartupResync on")?;
    writeln!(w, "    }}")?;
    writeln!(w, "    UDP {{")?;
    writeln!(w, "        IPv4_address {}", me.addr)?;
    writeln!(w, "        IPv4_Destination_Address {}", peer.addr)?;
    writeln!(w, "        Port {FTFW_PORT}")?;
    writeln!(w, "        Interface {}", cluster.ha.interface)?;
    writeln!(w, "        SndSocketBuffer 1249280")?;
    writeln!(w, "        RcvSocketBuffer 1249280")?;
    writeln!(w, "        Checksum on")?;
    writeln!(w, "    }}")?;
    writeln!(w, "}}")?;
    writeln!(w, "General {{")?;
    writeln!(w, "    HashSize 32768")?;
    writeln!(w, "    HashLimit 131072")?;
    writeln!(
        w,
        "    LogFile {}",
        root.path("/var/log/conntrackd.log").display()
    )?;
    writeln!(w, "    Syslog off")?;
    writeln!(
        w,
        "    LockFile {}",
        root.path("/run/conntrackd.lock").display()
    )?;
    writeln!(w, "    UNIX {{")?;
    writeln!(w, "        Path {}", root.path(CONTROL_SOCKET).display())?;
    writeln!(w, "    }}")?;
    writeln!(w, "    NetlinkBufferSize 2097152")?;
    writeln!(w, "    NetlinkBufferSizeMaxGrowth 8388608")?;
    writeln!(w, "    Filter From Userspace {{")?;
    writeln!(w, "        Protocol Accept {{")?;
    writeln!(w, "            TCP")?;
    writeln!(w, "            UDP")?;
    writeln!(w, "        }}")?;
    writeln!(w, "        Address Ignore {{")?;
    for a in ignore {
        writeln!(w, "            IPv4_address {a}")?;
    }
    writeln!(w, "        }}")?;
    writeln!(w, "    }}")?;
    writeln!(w, "}}")?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignores_vips_and_node_addresses_and_points_at_peer() {
        let c = crate::fixtures::sample_cluster();
        let root = NodeRoot::new("/lab/fw2").unwrap();
        let text = render(&c, Role::Backup, &root).unwrap();
        assert!(text.contains("IPv4_address 10.99.0.2\n        IPv4_Destination_Address 10.99.0.1"));
        for a in [
            "10.99.1.254",
            "10.99.1.1",
            "10.99.1.2",
            "10.99.0.1",
            "10.99.0.2",
        ] {
            assert!(
                text.contains(&format!("            IPv4_address {a}\n")),
                "{a} not ignored"
            );
        }
        assert!(text.contains("Path /lab/fw2/run/conntrackd.ctl"));
        assert!(text.contains("TCP") && text.contains("UDP"));
    }
}
