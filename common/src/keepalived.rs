//! Rendering and validating the keepalived configuration of a node.
//!
//! keepalived does the heartbeat and owns the VIPs; ns-ha only writes its
//! config. The pair runs VRRPv3 with unicast peers and one instance per
//! shared link (the HA link and every HA LAN) in one sync group, so that a
//! cut HA link alone does not make two masters: the LAN instances still hear
//! the peer. The HA-link instance has `dont_track_primary` so that a dead
//! peer (its end of the link down) does not drive the whole group to FAULT.
//! Every instance accepts adverts only from the peer's address on its link,
//! with TTL 255 (`check_unicast_src`, `min_ttl`/`max_ttl`): another VRRP
//! router on a LAN, or a host pretending to be one, cannot move the VIPs.

use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmd::CommandRunner;
use crate::config::{ClusterConfig, Role};
use crate::exit::{fail, Code};
use crate::root::{paths, NodeRoot};

/// Name of the sync group holding every instance of the pair.
pub const SYNC_GROUP: &str = "ns_ha";
/// Name of the HA-link instance.
pub const HA_INSTANCE: &str = "ha_link";
/// TTL of the pair's adverts, sent and required: 255, so an advert routed in
/// from another link is refused.
pub const ADVERT_TTL: u8 = 255;
/// Name of the maintenance track file in the keepalived config.
pub const MAINTENANCE_TRACK: &str = "ns_ha_maintenance";
/// Name of the health track file (written by `ns-ha-check monitor`).
pub const HEALTH_TRACK: &str = "ns_ha_health";

/// Name of the VRRP instance of a LAN interface (defined with the config
/// model, which refuses two LANs that would share one).
pub use crate::config::lan_instance;

/// Inputs of the rendering besides the cluster config.
pub struct RenderInputs<'a> {
    pub cluster: &'a ClusterConfig,
    pub role: Role,
    pub root: &'a NodeRoot,
    /// The `ns-ha-role` binary that keepalived notifies on state changes.
    pub role_tool: PathBuf,
}

fn advert(ms: u32) -> String {
    // keepalived takes seconds with up to two decimals for VRRPv3.
    let s = format!("{}.{:02}", ms / 1000, (ms % 1000) / 10);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The keepalived.conf text for this node.
pub fn render(inp: &RenderInputs) -> Result<String> {
    let c = inp.cluster;
    let me = inp.role;
    let peer = me.other();
    let (Some(my_ha), Some(peer_ha)) = (c.ha_address(me), c.ha_address(peer)) else {
        return Err(fail(
            Code::State,
            "the backup's HA address is not known yet: pair the nodes first (ns-ha-init pair)",
        ));
    };
    let prio = c.priority(me);
    let adv = advert(c.vrrp.advert_interval_ms);
    let root = inp.root;
    // `ns-ha-role [--root R]`, run by keepalived on state changes.
    let mut role_cmd = inp.role_tool.to_string_lossy().into_owned();
    for a in root.tool_args() {
        role_cmd.push(' ');
        role_cmd.push_str(&a);
    }
    let mut out = String::new();
    let w = &mut out;
    writeln!(
        w,
        "# Rendered by ns-ha-init from {}: do not edit, changes are overwritten.",
        paths::CLUSTER_CONFIG
    )?;
    writeln!(w, "# cluster {} node {}", c.cluster_id, me)?;
    writeln!(w, "global_defs {{")?;
    writeln!(w, "    router_id ns_ha_{me}")?;
    writeln!(w, "    vrrp_version 3")?;
    writeln!(w, "    enable_script_security")?;
    writeln!(w, "    script_user root")?;
    writeln!(
        w,
        "    notify_fifo {}",
        root.path(paths::NOTIFY_FIFO).display()
    )?;
    // keepalived starts the FIFO's reader (ordered events; the FIFO path is
    // its last argument) and stops it when keepalived exits.
    writeln!(w, "    notify_fifo_script \"{role_cmd} fifo-reader\"")?;
    writeln!(w, "    vrrp_garp_master_delay 1")?;
    writeln!(w, "    vrrp_garp_master_repeat 3")?;
    writeln!(w, "    vrrp_garp_master_refresh 60")?;
    writeln!(w, "}}")?;
    writeln!(w)?;
    // Maintenance: `1` in the file drops this node below any peer, so the
    // peer takes over gracefully (the master sends a lower priority, it does
    // not vanish). The weight is -253, not -254: keepalived puts an instance
    // whose value x weight is below -253 in FAULT (priority-0 advert, VIPs
    // dropped before the peer has them: lost packets, and no master at all
    // when the peer is down); -253 clamps the priority to 1 instead.
    writeln!(w, "vrrp_track_file {MAINTENANCE_TRACK} {{")?;
    writeln!(
        w,
        "    file \"{}\"",
        root.path(paths::MAINTENANCE_TRACK).display()
    )?;
    writeln!(w, "    weight -253")?;
    writeln!(w, "}}")?;
    writeln!(w)?;
    // Health: `ns-ha-check monitor` writes the offset from the configured
    // priority to the one health asks for (weight 1: the file holds the
    // number itself, e.g. -198 for an unhealthy MASTER primary at 200 that
    // must yield to a healthy backup at 100 and no further; see
    // common::health_config::target_priority). The file starts at 0, so a
    // node without a monitor keeps its configured priority.
    writeln!(w, "vrrp_track_file {HEALTH_TRACK} {{")?;
    writeln!(
        w,
        "    file \"{}\"",
        root.path(paths::HEALTH_PRIORITY_TRACK).display()
    )?;
    writeln!(w, "    weight 1")?;
    writeln!(w, "    init_file 0")?;
    writeln!(w, "}}")?;
    writeln!(w)?;
    // VRRPv3 refuses an instance without a VIP, so a LAN gets an instance
    // (and a heartbeat) once it has at least one VIP.
    let lans: Vec<_> = c.lans.iter().filter(|l| !l.vips.is_empty()).collect();
    let mut members = vec![HA_INSTANCE.to_string()];
    members.extend(lans.iter().map(|l| lan_instance(&l.interface)));
    let notify = format!("notify \"{role_cmd} notify\"");
    // keepalived refuses a sync group of one: until a LAN has a VIP, the
    // HA-link instance stands alone and notifies for itself.
    let grouped = members.len() > 1;
    if grouped {
        writeln!(w, "vrrp_sync_group {SYNC_GROUP} {{")?;
        writeln!(w, "    group {{")?;
        for m in &members {
            writeln!(w, "        {m}")?;
        }
        writeln!(w, "    }}")?;
        writeln!(w, "    {notify}")?;
        // Every member tracks the same maintenance and health files, so a
        // weight is safe here; keepalived otherwise ignores weighted
        // tracking in a sync group.
        writeln!(w, "    sync_group_tracking_weight")?;
        writeln!(w, "}}")?;
    }
    let instance = |w: &mut String,
                    name: &str,
                    iface: &str,
                    vrid: u8,
                    src: std::net::Ipv4Addr,
                    peer: std::net::Ipv4Addr,
                    vips: &[String],
                    ha_link: bool|
     -> Result<()> {
        writeln!(w)?;
        writeln!(w, "vrrp_instance {name} {{")?;
        writeln!(w, "    state BACKUP")?;
        writeln!(w, "    interface {iface}")?;
        writeln!(w, "    virtual_router_id {vrid}")?;
        writeln!(w, "    priority {prio}")?;
        writeln!(w, "    advert_int {adv}")?;
        if !c.vrrp.preempt {
            writeln!(w, "    nopreempt")?;
        }
        if ha_link {
            writeln!(w, "    dont_track_primary")?;
            if !grouped {
                writeln!(w, "    {notify}")?;
            }
        }
        writeln!(w, "    unicast_src_ip {src}")?;
        // Adverts are accepted only from the peer's address on this link,
        // and only with TTL 255 (sent on the link itself, RFC 5798 5.1.1.3),
        // so a third host on a LAN cannot take the VIPs with a higher priority.
        writeln!(w, "    unicast_ttl {ADVERT_TTL}")?;
        writeln!(w, "    check_unicast_src")?;
        writeln!(w, "    unicast_peer {{")?;
        writeln!(
            w,
            "        {peer} min_ttl {ADVERT_TTL} max_ttl {ADVERT_TTL}"
        )?;
        writeln!(w, "    }}")?;
        writeln!(w, "    virtual_ipaddress {{")?;
        for v in vips {
            writeln!(w, "        {v}")?;
        }
        writeln!(w, "    }}")?;
        writeln!(w, "    track_file {{")?;
        writeln!(w, "        {MAINTENANCE_TRACK}")?;
        writeln!(w, "        {HEALTH_TRACK}")?;
        writeln!(w, "    }}")?;
        writeln!(w, "}}")?;
        Ok(())
    };
    let hb = format!(
        "{}/32 dev {} label {}:ha",
        c.ha.heartbeat_vip, c.ha.interface, c.ha.interface
    );
    instance(
        w,
        HA_INSTANCE,
        &c.ha.interface,
        c.vrrp.vrid,
        my_ha.addr,
        peer_ha.addr,
        &[hb],
        true,
    )?;
    for lan in lans {
        let (src, dst) = match me {
            Role::Primary => (lan.primary_address.addr, lan.backup_address.addr),
            Role::Backup => (lan.backup_address.addr, lan.primary_address.addr),
        };
        let vips: Vec<String> = lan
            .vips
            .iter()
            .map(|v| format!("{v} dev {} label {}:ha", lan.interface, lan.interface))
            .collect();
        instance(
            w,
            &lan_instance(&lan.interface),
            &lan.interface,
            lan.vrid,
            src,
            dst,
            &vips,
            false,
        )?;
    }
    Ok(out)
}

/// Validate a rendered config with `keepalived -t` (in a scratch file next to the target).
pub fn validate(runner: &dyn CommandRunner, text: &str, target: &Path) -> Result<()> {
    let dir = target
        .parent()
        .with_context(|| format!("{} has no parent", target.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let scratch = tempfile_in(dir, text)?;
    let out = runner.run(
        "keepalived",
        &[
            "-t".into(),
            "-l".into(),
            "-f".into(),
            scratch.to_string_lossy().into_owned(),
        ],
        Duration::from_secs(20),
    );
    let _ = std::fs::remove_file(&scratch);
    let out = out?;
    if !out.success() {
        return Err(fail(
            Code::Dependency,
            format!(
                "keepalived rejected the rendered config (exit {:?}): {}",
                out.status,
                out.reason()
            ),
        ));
    }
    Ok(())
}

fn tempfile_in(dir: &Path, text: &str) -> Result<PathBuf> {
    let p = dir.join(format!(".keepalived.conf.check.{}", std::process::id()));
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterConfig {
        crate::fixtures::sample_cluster()
    }

    fn render_for(c: &ClusterConfig, role: Role) -> String {
        let root = NodeRoot::new("/lab/fw1").unwrap();
        render(&RenderInputs {
            cluster: c,
            role,
            root: &root,
            role_tool: PathBuf::from("/usr/bin/ns-ha-role"),
        })
        .unwrap()
    }

    #[test]
    fn primary_and_backup_mirror_each_other() {
        let c = cluster();
        let p = render_for(&c, Role::Primary);
        let b = render_for(&c, Role::Backup);
        assert!(p.contains("unicast_src_ip 10.99.1.1\n"));
        assert!(p.contains("unicast_peer {\n        10.99.1.2 min_ttl 255 max_ttl 255\n"));
        assert!(b.contains("unicast_src_ip 10.99.1.2\n"));
        assert!(b.contains("unicast_peer {\n        10.99.1.1 min_ttl 255 max_ttl 255\n"));
        assert!(p.contains("priority 200"));
        assert!(b.contains("priority 100"));
        assert!(p.contains("10.99.1.254/24 dev lan0 label lan0:ha"));
        assert!(p.contains("notify \"/usr/bin/ns-ha-role --root /lab/fw1 notify\""));
        assert!(
            p.contains("notify_fifo_script \"/usr/bin/ns-ha-role --root /lab/fw1 fifo-reader\"")
        );
        assert!(p.contains("advert_int 0.05\n"));
        assert!(
            p.contains("weight -253\n"),
            "maintenance must demote, not FAULT"
        );
        // Every instance tracks the monitor's health file at weight 1.
        assert!(p.contains(
            "vrrp_track_file ns_ha_health {\n    file \"/lab/fw1/run/ns-ha/health-priority.track\"\n    weight 1\n    init_file 0\n}"
        ));
        assert_eq!(p.matches("        ns_ha_health\n").count(), 2, "{p}");
    }

    #[test]
    fn every_instance_accepts_adverts_only_from_the_peer() {
        let p = render_for(&cluster(), Role::Primary);
        let instances: Vec<&str> = p.split("vrrp_instance ").skip(1).collect();
        assert_eq!(instances.len(), 2, "{p}");
        for (inst, peer) in instances.iter().zip(["10.99.0.2", "10.99.1.2"]) {
            assert!(inst.contains("    check_unicast_src\n"), "{inst}");
            assert!(inst.contains("    unicast_ttl 255\n"), "{inst}");
            assert!(
                inst.contains(&format!(
                    "unicast_peer {{\n        {peer} min_ttl 255 max_ttl 255\n    }}"
                )),
                "{inst}"
            );
        }
    }

    #[test]
    fn only_the_ha_link_ignores_its_link_state() {
        let p = render_for(&cluster(), Role::Primary);
        assert_eq!(p.matches("dont_track_primary").count(), 1);
        let ha = p.split("vrrp_instance ha_link").nth(1).unwrap();
        assert!(ha
            .split("vrrp_instance")
            .next()
            .unwrap()
            .contains("dont_track_primary"));
    }

    #[test]
    fn lan_without_vip_is_left_out_of_the_group() {
        let mut c = cluster();
        c.lans[0].vips.clear();
        let p = render_for(&c, Role::Primary);
        assert!(!p.contains("lan_lan0"));
        // A group of one is refused by keepalived: the instance notifies itself.
        assert!(!p.contains("vrrp_sync_group"));
        assert!(p.contains("dont_track_primary\n    notify \""));
    }

    #[test]
    fn needs_the_backup_address() {
        let mut c = cluster();
        c.ha.backup_address = None;
        let root = NodeRoot::system();
        let e = render(&RenderInputs {
            cluster: &c,
            role: Role::Primary,
            root: &root,
            role_tool: "/x".into(),
        })
        .unwrap_err();
        assert_eq!(crate::exit::code_of(&e), Code::State);
    }

    #[test]
    fn advert_formats() {
        assert_eq!(advert(100), "0.1");
        assert_eq!(advert(1000), "1");
        assert_eq!(advert(50), "0.05");
        assert_eq!(advert(1250), "1.25");
    }
}
