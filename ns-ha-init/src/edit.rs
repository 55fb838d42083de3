//! Changing the cluster: LANs, VIPs, enable/disable.
//!
//! Every edit is validated on the primary before the backup is contacted,
//! then installed on both nodes by [`commit_cluster`] (backup first, except
//! the backup's keepalived start when HA is switched on), so a refused edit
//! changes neither node. The backup is reached through [`crate::backup`],
//! which unit tests replace with a fake.

use anyhow::Result;
use serde_json::json;

use ns_ha_common::activate::Activation;
use ns_ha_common::config::{
    load_cluster, load_node, ClusterConfig, LanInterface, NodeConfig, Role,
};
use ns_ha_common::exit::{fail, Code};
use ns_ha_common::net::Ipv4Cidr;

use crate::backup::{backup_address, lock, Backup};
use crate::install::commit_cluster;
use crate::{checks, parse_vip, Ctx, Report};

/// Load the primary's node and cluster config; edits are made on the primary only.
pub(crate) fn primary(ctx: &Ctx) -> Result<(NodeConfig, ClusterConfig)> {
    let node = load_node(&ctx.root)?;
    if node.role != Role::Primary {
        return Err(fail(
            Code::State,
            "this node is the backup: make cluster changes on the primary, which installs them here",
        ));
    }
    let cluster = load_cluster(&ctx.root)?;
    if node.peer_host_key.is_none() || cluster.ha.backup_address.is_none() {
        return Err(fail(
            Code::State,
            "the backup is not paired yet: run ns-ha-init pair first",
        ));
    }
    Ok((node, cluster))
}

/// Connect to the backup, let `edit` finish the change (it may ask the
/// backup), validate it, then commit on both nodes.
pub(crate) fn edit_with_peer(
    ctx: &Ctx,
    node: &NodeConfig,
    cluster: &ClusterConfig,
    edit: impl FnOnce(&mut dyn Backup, &mut ClusterConfig) -> Result<()>,
) -> Result<(ClusterConfig, Activation)> {
    let mut peer = ctx.link.connect_pinned(&ctx.root, node, cluster)?;
    let mut next = cluster.clone();
    edit(peer.backup.as_mut(), &mut next)?;
    next.validate()?;
    let act = commit_cluster(ctx, node, cluster, &next, peer.backup.as_mut())?;
    Ok((next, act))
}

fn parse_vips(vips: &[String]) -> Result<Vec<Ipv4Cidr>> {
    vips.iter().map(|v| parse_vip(v)).collect()
}

/// `add-lan`.
pub fn add_lan(ctx: &Ctx, interface: &str, vips: &[String], vrid: Option<u8>) -> Result<Report> {
    add_lan_as(ctx, interface, vips, vrid, false)
}

/// `add-lan`, or `add-wan --mode vip` (`wan`: shown as a WAN).
pub(crate) fn add_lan_as(
    ctx: &Ctx,
    interface: &str,
    vips: &[String],
    vrid: Option<u8>,
    wan: bool,
) -> Result<Report> {
    let _lock = lock(&ctx.root)?;
    let vips = parse_vips(vips)?;
    let (node, cluster) = primary(ctx)?;
    if cluster.wan(interface).is_some() {
        return Err(fail(
            Code::InvalidInput,
            format!("interface {interface} is a takeover WAN of the cluster: remove it first with ns-ha-init remove-interface --interface {interface}"),
        ));
    }
    if cluster.lan(interface).is_some() || cluster.ha.interface == interface {
        return Err(fail(
            Code::InvalidInput,
            format!(
                "interface {interface} is already in the cluster: use add-vip to add VIPs to it"
            ),
        ));
    }
    let ours = checks::lan_interface(ctx.ifs, interface)?;
    let mut lan = LanInterface {
        interface: interface.to_string(),
        vrid: match vrid {
            Some(v) => v,
            None => cluster.free_vrid()?,
        },
        primary_address: ours,
        backup_address: ours,
        vips,
        wan,
    };
    // VIP checks against our own address first, so bad input never reaches the peer.
    for v in &lan.vips {
        ns_ha_common::config::check_vip(&lan, v)?;
    }
    // Subnet overlaps, the heartbeat VIP, instance-name clashes: before the peer too.
    cluster.check_new_lan(&lan)?;
    let (next, act) = edit_with_peer(ctx, &node, &cluster, |backup, next| {
        lan.backup_address = backup_address(backup, interface, &ours)?;
        next.lans.push(lan);
        Ok(())
    })?;
    let added = next.lan(interface).cloned();
    Ok(Report::new(
        format!(
            "added {interface} ({} on the primary, {} on the backup) with VIPs [{}]; keepalived {}\n",
            ours,
            added.as_ref().map(|l| l.backup_address.to_string()).unwrap_or_default(),
            added
                .as_ref()
                .map(|l| l.vips.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
            act.keepalived
        ),
        json!({"lan": added, "keepalived": act.keepalived}),
    ))
}

/// `remove-interface`.
pub fn remove_interface(ctx: &Ctx, interface: &str) -> Result<Report> {
    let _lock = lock(&ctx.root)?;
    let (node, cluster) = primary(ctx)?;
    if cluster.lan(interface).is_none() && cluster.wan(interface).is_none() {
        return Err(fail(
            Code::InvalidInput,
            format!(
                "interface {interface} is not a LAN or WAN of the cluster: see ns-ha-init show-config"
            ),
        ));
    }
    let (_, act) = edit_with_peer(ctx, &node, &cluster, |_, next| {
        next.lans.retain(|l| l.interface != interface);
        next.wans.retain(|w| w.interface != interface);
        Ok(())
    })?;
    Ok(Report::new(
        format!(
            "removed {interface} and its VIPs; keepalived {}\n",
            act.keepalived
        ),
        json!({"removed": interface, "keepalived": act.keepalived}),
    ))
}

/// `add-vip`.
pub fn add_vip(ctx: &Ctx, interface: &str, vip: &str) -> Result<Report> {
    let _lock = lock(&ctx.root)?;
    let vip = parse_vip(vip)?;
    let (node, cluster) = primary(ctx)?;
    let lan = cluster.lan(interface).ok_or_else(|| {
        fail(
            Code::InvalidInput,
            format!("interface {interface} is not a LAN of the cluster: add it first with ns-ha-init add-lan"),
        )
    })?;
    ns_ha_common::config::check_vip(lan, &vip)?;
    if cluster.all_vips().iter().any(|v| v.addr == vip.addr) {
        return Err(fail(
            Code::InvalidInput,
            format!("VIP {} is already configured", vip.addr),
        ));
    }
    let (_, act) = edit_with_peer(ctx, &node, &cluster, |_, next| {
        if let Some(l) = next.lans.iter_mut().find(|l| l.interface == interface) {
            l.vips.push(vip);
        }
        Ok(())
    })?;
    Ok(Report::new(
        format!(
            "added VIP {vip} on {interface}; keepalived {}\n",
            act.keepalived
        ),
        json!({"vip": vip.to_string(), "interface": interface, "keepalived": act.keepalived}),
    ))
}

/// `remove-vip`: the address, with or without its prefix.
pub fn remove_vip(ctx: &Ctx, vip: &str) -> Result<Report> {
    let _lock = lock(&ctx.root)?;
    let addr = match vip.split_once('/') {
        Some(_) => parse_vip(vip)?.addr,
        None => vip.parse().map_err(|_| {
            fail(
                Code::InvalidInput,
                format!("'{vip}' is not an IPv4 address: give the VIP like 192.168.1.254"),
            )
        })?,
    };
    let (node, cluster) = primary(ctx)?;
    if !cluster.all_vips().iter().any(|v| v.addr == addr) {
        return Err(fail(
            Code::InvalidInput,
            format!("VIP {addr} is not configured: see ns-ha-init show-config"),
        ));
    }
    let (_, act) = edit_with_peer(ctx, &node, &cluster, |_, next| {
        for l in &mut next.lans {
            l.vips.retain(|v| v.addr != addr);
        }
        Ok(())
    })?;
    Ok(Report::new(
        format!("removed VIP {addr}; keepalived {}\n", act.keepalived),
        json!({"removed": addr.to_string(), "keepalived": act.keepalived}),
    ))
}

/// `enable` / `disable`.
pub fn set_enabled(ctx: &Ctx, enabled: bool) -> Result<Report> {
    let _lock = lock(&ctx.root)?;
    let (node, cluster) = primary(ctx)?;
    if enabled && cluster.all_vips().is_empty() {
        return Err(fail(
            Code::State,
            "the cluster has no VIP yet: add a LAN with ns-ha-init add-lan --interface IF --vip CIDR first",
        ));
    }
    let (_, act) = edit_with_peer(ctx, &node, &cluster, |_, next| {
        next.enabled = enabled;
        Ok(())
    })?;
    let word = if enabled { "enabled" } else { "disabled" };
    Ok(Report::new(
        format!(
            "HA {word} on both nodes; keepalived {} here\n",
            act.keepalived
        ),
        json!({"enabled": enabled, "keepalived": act.keepalived}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Pair;
    use ns_ha_common::config::save_node;
    use ns_ha_common::exit::code_of;

    #[test]
    fn add_lan_installs_on_the_backup_then_on_the_primary() {
        let p = Pair::new(true);
        add_lan(&p.ctx(), "wan0", &["10.99.2.254/24".into()], None).unwrap();
        assert_eq!(
            p.steps(),
            ["backup install enabled=true", "primary keepalived reload"]
        );
        let wan = p.primary_cluster().lan("wan0").cloned().unwrap();
        assert_eq!(wan.backup_address.to_string(), "10.99.2.2/24");
        assert_eq!(wan.vips[0].to_string(), "10.99.2.254/24");
        let installed = p.link.state().installed.clone();
        assert_eq!(installed, vec![p.primary_cluster()]);
        assert!(p.primary_files().1.contains("10.99.2.254/24 dev wan0"));
    }

    #[test]
    fn a_refused_edit_leaves_both_nodes_untouched() {
        let p = Pair::new(true);
        let before = p.primary_files();
        p.link.state().refuse = Some("keepalived rejected the rendered config".into());
        let e = add_vip(&p.ctx(), "lan0", "10.99.1.253/24").unwrap_err();
        assert_eq!(code_of(&e), Code::Peer, "{e:#}");
        assert!(e.to_string().contains("keepalived rejected"), "{e:#}");
        assert_eq!(p.primary_files(), before);
        assert!(p.link.state().installed.is_empty());
        assert!(p.steps().is_empty(), "{:?}", p.steps());
    }

    #[test]
    fn a_lan_the_backup_lacks_is_refused_before_any_install() {
        let p = Pair::new(true);
        let before = p.primary_files();
        p.link.state().interfaces.retain(|i| i.name != "wan0");
        let e = add_lan(&p.ctx(), "wan0", &["10.99.2.254/24".into()], None).unwrap_err();
        assert_eq!(code_of(&e), Code::InvalidInput);
        assert!(
            e.to_string().contains("does not exist on the backup"),
            "{e}"
        );
        assert_eq!(p.primary_files(), before);
        assert!(p.link.state().installed.is_empty());
    }

    #[test]
    fn enable_starts_the_primary_before_the_backup() {
        let p = Pair::new(false);
        set_enabled(&p.ctx(), true).unwrap();
        assert_eq!(
            p.steps(),
            [
                // The backup validates and stores the config, keepalived held stopped.
                "backup install enabled=false",
                "primary keepalived start",
                // Waits until the primary holds its VIPs...
                "primary ns-ha-vip list",
                // ...then the backup starts and hears a MASTER at once.
                "backup install enabled=true",
            ]
        );
        assert!(p.primary_cluster().enabled);
        assert!(p.link.state().installed.last().unwrap().enabled);
    }

    #[test]
    fn enable_refused_by_the_backup_starts_nothing() {
        let p = Pair::new(false);
        let before = p.primary_files();
        p.link.state().refuse = Some(
            "interface lan0 on the backup does not have the static address 10.99.1.2/24".into(),
        );
        assert!(set_enabled(&p.ctx(), true).is_err());
        assert_eq!(p.primary_files(), before);
        assert!(!p.primary_cluster().enabled);
        assert!(p.steps().is_empty(), "{:?}", p.steps());
    }

    #[test]
    fn disable_stops_the_backup_first() {
        let p = Pair::new(true);
        set_enabled(&p.ctx(), false).unwrap();
        assert_eq!(
            p.steps(),
            ["backup install enabled=false", "primary keepalived stop"]
        );
    }

    #[test]
    fn removals_reach_both_nodes() {
        let p = Pair::new(true);
        remove_vip(&p.ctx(), "10.99.1.254").unwrap();
        assert!(p.primary_cluster().all_vips().is_empty());
        assert!(p.link.state().installed[0].all_vips().is_empty());
        remove_interface(&p.ctx(), "lan0").unwrap();
        assert!(p.primary_cluster().lans.is_empty());
        assert!(p.link.state().installed[1].lans.is_empty());
        let e = remove_interface(&p.ctx(), "lan0").unwrap_err();
        assert_eq!(code_of(&e), Code::InvalidInput);
        assert_eq!(p.link.state().installed.len(), 2);
    }

    #[test]
    fn edits_are_refused_on_the_backup_and_before_pairing() {
        let p = Pair::new(true);
        let mut node = load_node(&p.root).unwrap();
        node.peer_host_key = None;
        save_node(&p.root, &node).unwrap();
        let e = add_vip(&p.ctx(), "lan0", "10.99.1.253/24").unwrap_err();
        assert_eq!(code_of(&e), Code::State);
        assert!(e.to_string().contains("run ns-ha-init pair first"), "{e}");
        node.role = Role::Backup;
        save_node(&p.root, &node).unwrap();
        let e = set_enabled(&p.ctx(), true).unwrap_err();
        assert!(e
            .to_string()
            .contains("make cluster changes on the primary"));
        assert!(p.link.state().installed.is_empty());
    }
}
