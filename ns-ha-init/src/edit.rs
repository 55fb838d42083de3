//! Changing the cluster: LANs, VIPs, enable/disable, and showing it.
//!
//! Every edit follows one path, [`commit_cluster`]: validate and render on
//! the primary (nothing written), install on the backup (which checks its own
//! interfaces and lets keepalived validate its side), then install on the
//! primary. A refused edit therefore changes neither node.

use anyhow::Result;
use serde_json::json;

use ns_ha_common::activate::{self, Activation};
use ns_ha_common::config::{
    load_cluster, load_node, ClusterConfig, LanInterface, NodeConfig, Role,
};
use ns_ha_common::exit::{fail, Code};
use ns_ha_common::net::{IpCommand, Ipv4Cidr};
use ns_ha_common::peer;
use ns_ha_common::proto::{call, ControlRequest};
use ns_ha_common::ssh::PeerChannel;

use crate::pairing::{backup_address, lock};
use crate::{checks, parse_vip, Ctx, Report};

/// Install `cluster` on the backup (over `ch`) and then on this primary.
pub fn commit_cluster(
    ctx: &Ctx,
    node: &NodeConfig,
    cluster: &ClusterConfig,
    ch: &mut PeerChannel,
) -> Result<Activation> {
    let prepared = activate::prepare(&ctx.root, ctx.runner, Role::Primary, cluster)?;
    let _remote: serde_json::Value = call(
        ch,
        &ControlRequest::InstallCluster {
            config: Box::new(cluster.clone()),
        },
    )?;
    activate::install(
        &ctx.root,
        ctx.runner,
        node.service_backend,
        cluster,
        prepared,
    )
}

/// Load the primary's node and cluster config; edits are made on the primary only.
fn primary(ctx: &Ctx) -> Result<(NodeConfig, ClusterConfig)> {
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

/// Validate locally, connect to the backup, let `edit` finish the change
/// with the channel (to ask the backup), then commit on both nodes.
fn edit_with_peer(
    ctx: &Ctx,
    node: &NodeConfig,
    cluster: &ClusterConfig,
    edit: impl FnOnce(&mut PeerChannel, &mut ClusterConfig) -> Result<()>,
) -> Result<(ClusterConfig, Activation)> {
    let session = peer::connect(&ctx.root, node, cluster)?;
    let (mut ch, _) = peer::open_channel(&session, &cluster.cluster_id)?;
    let mut next = cluster.clone();
    edit(&mut ch, &mut next)?;
    next.validate()?;
    let act = commit_cluster(ctx, node, &next, &mut ch)?;
    Ok((next, act))
}

fn parse_vips(vips: &[String]) -> Result<Vec<Ipv4Cidr>> {
    vips.iter().map(|v| parse_vip(v)).collect()
}

/// `add-lan`.
pub fn add_lan(ctx: &Ctx, interface: &str, vips: &[String], vrid: Option<u8>) -> Result<Report> {
    let _lock = lock(&ctx.root)?;
    let vips = parse_vips(vips)?;
    let (node, cluster) = primary(ctx)?;
    if cluster.lan(interface).is_some() || cluster.ha.interface == interface {
        return Err(fail(
            Code::InvalidInput,
            format!(
                "interface {interface} is already in the cluster: use add-vip to add VIPs to it"
            ),
        ));
    }
    let ifs = IpCommand { runner: ctx.runner };
    let ours = checks::lan_interface(&ifs, interface)?;
    let mut lan = LanInterface {
        interface: interface.to_string(),
        vrid: match vrid {
            Some(v) => v,
            None => cluster.free_vrid()?,
        },
        primary_address: ours,
        backup_address: ours,
        vips,
    };
    // VIP checks against our own address first, so bad input never reaches the peer.
    for v in &lan.vips {
        ns_ha_common::config::check_vip(&lan, v)?;
    }
    // Subnet overlaps, the heartbeat VIP, instance-name clashes: before the peer too.
    cluster.check_new_lan(&lan)?;
    let (next, act) = edit_with_peer(ctx, &node, &cluster, |ch, next| {
        lan.backup_address = backup_address(ch, interface, &ours)?;
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
    if cluster.lan(interface).is_none() {
        return Err(fail(
            Code::InvalidInput,
            format!(
                "interface {interface} is not a LAN of the cluster: see ns-ha-init show-config"
            ),
        ));
    }
    let (_, act) = edit_with_peer(ctx, &node, &cluster, |_, next| {
        next.lans.retain(|l| l.interface != interface);
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

/// `show-config`.
pub fn show_config(ctx: &Ctx) -> Result<Report> {
    let node = load_node(&ctx.root)?;
    let cluster = ns_ha_common::config::load_cluster_opt(&ctx.root)?;
    let mut h = String::new();
    h.push_str(&format!("role:        {}\n", node.role));
    h.push_str(&format!("peer:        {}\n", node.peer_address));
    match (&node.peer_host_key, &node.authorized_key_fingerprint) {
        (Some(k), _) => h.push_str(&format!("peer key:    {} (pinned)\n", k.fingerprint)),
        (None, Some(fp)) => h.push_str(&format!(
            "primary key: {fp} (authorized for ns-ha-sync receive)\n"
        )),
        _ => h.push_str("peer key:    not paired\n"),
    }
    if let Some(c) = &cluster {
        h.push_str(&format!("cluster:     {}\n", c.cluster_id));
        h.push_str(&format!("enabled:     {}\n", c.enabled));
        h.push_str(&format!(
            "HA link:     {} primary {} backup {} heartbeat VIP {}\n",
            c.ha.interface,
            c.ha.primary_address,
            c.ha.backup_address
                .map(|a| a.to_string())
                .unwrap_or_else(|| "unknown".into()),
            c.ha.heartbeat_vip
        ));
        h.push_str(&format!(
            "VRRP:        v3 advert {} ms, priorities {}/{}, preempt {}\n",
            c.vrrp.advert_interval_ms,
            c.vrrp.priority_primary,
            c.vrrp.priority_backup,
            c.vrrp.preempt
        ));
        for l in &c.lans {
            let vips: Vec<String> = l.vips.iter().map(|v| v.to_string()).collect();
            h.push_str(&format!(
                "LAN {:<8} primary {} backup {} VRID {} VIPs [{}]\n",
                l.interface,
                l.primary_address,
                l.backup_address,
                l.vrid,
                vips.join(", ")
            ));
        }
    } else {
        h.push_str("cluster:     not received from the primary yet\n");
    }
    Ok(Report::new(h, json!({"node": node, "cluster": cluster})))
}
