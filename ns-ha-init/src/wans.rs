//! `add-wan`: a WAN in either mode, checked on both nodes before anything is written.
//!
//! A `vip` WAN is a LAN-style interface (own address per node, a VIP that
//! keepalived moves) and goes through `add-lan`'s path. A `takeover` WAN is
//! defined once here: its model is validated against the cluster, every
//! device it needs (the NIC, bond/bridge members, a VLAN's or PPPoE's
//! parent) is looked up on this node and over the backup link on the
//! backup, and only then is the cluster installed, backup first, by the
//! one commit path every edit uses. Each node renders the definition for
//! its own interface manager when the cluster is installed.

use anyhow::Result;
use serde_json::json;

use ns_ha_common::config::ClusterConfig;
use ns_ha_common::exit::{fail, Code};
use ns_ha_common::net::{Interface, LinkKind};
use ns_ha_common::wan::{Ipv4Method, Ipv6Static, MacAddr, Wan, WanDevice, WanMode};

use crate::backup::{lock, Backup};
use crate::edit::{add_lan_as, edit_with_peer, primary};
use crate::{Ctx, Report};

/// The device kinds `add-wan --kind` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KindArg {
    Physical,
    Bridge,
    Bond,
    Vlan,
    Pppoe,
}

/// `add-wan`'s options, as given.
#[derive(Debug, Clone, clap::Args)]
pub struct AddWanArgs {
    /// The interface the WAN's address lives on, same name on both nodes: the
    /// NIC (eth1), the bridge or bond to create (br-wan, bond0), PARENT.ID for
    /// a VLAN (eth1.10), a name for a PPPoE session (pppoe-wan).
    #[arg(long, value_name = "IF")]
    pub interface: String,
    /// takeover (default): defined once, up only on the MASTER, one address
    /// for the pair; vip: each node has its own static address on the WAN and
    /// a VIP moves (needs --vip), like add-lan.
    #[arg(long, value_enum, default_value = "takeover")]
    pub mode: WanMode,
    /// The device under the WAN.
    #[arg(long, value_enum, default_value = "physical")]
    pub kind: KindArg,
    /// A bridge port or bond member (repeatable; present on both nodes).
    #[arg(long = "member", value_name = "IF")]
    pub members: Vec<String>,
    /// The parent of a VLAN or of a PPPoE session (a physical or VLAN interface).
    #[arg(long, value_name = "IF")]
    pub parent: Option<String>,
    /// The VLAN id (1..4094); the interface is then PARENT.ID.
    #[arg(long, value_name = "N")]
    pub vlan_id: Option<u16>,
    /// The PPPoE user name (the password goes into /etc/ppp/chap-secrets on the primary, which the sync copies).
    #[arg(long, value_name = "USER")]
    pub pppoe_user: Option<String>,
    /// IPv4: the static address with its prefix (203.0.113.10/24) or `dhcp`.
    #[arg(long, value_name = "CIDR|dhcp")]
    pub ipv4: Option<String>,
    /// The IPv4 default gateway (with a static --ipv4).
    #[arg(long, value_name = "ADDR")]
    pub gateway: Option<String>,
    /// A static IPv6 address with its prefix (2001:db8::10/64).
    #[arg(long, value_name = "CIDR")]
    pub ipv6: Option<String>,
    /// The IPv6 default gateway (often fe80::1).
    #[arg(long, value_name = "ADDR")]
    pub gateway6: Option<String>,
    /// A cluster MAC for the WAN, applied only on the MASTER before the WAN
    /// comes up, so the ISP's DHCP server hands the new master the same lease
    /// (use a locally administered address, e.g. 02:00:5e:10:00:01).
    #[arg(long, visible_alias = "cluster-mac", value_name = "MAC")]
    pub mac: Option<String>,
    /// The metric of the WAN's IPv4 default route (static with --gateway,
    /// DHCP, PPPoE): with several WANs give each its own (lowest wins).
    #[arg(long, value_name = "N")]
    pub metric: Option<u32>,
    /// mode vip: a VIP in the WAN subnet (repeatable).
    #[arg(long = "vip", value_name = "CIDR")]
    pub vips: Vec<String>,
    /// mode vip: the VRRP router id of the WAN's instance (default: the next free one).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
    pub vrid: Option<u8>,
}

fn bad(m: String) -> anyhow::Error {
    fail(Code::InvalidInput, m)
}

/// The takeover WAN the options describe (checked on its own, not against the cluster).
pub fn wan_from_args(a: &AddWanArgs) -> Result<Wan> {
    let name = &a.interface;
    let needs_parent = || {
        a.parent.clone().ok_or_else(|| {
            bad(format!(
                "WAN {name}: --kind {} needs --parent IF",
                format!("{:?}", a.kind).to_lowercase()
            ))
        })
    };
    let device = match a.kind {
        KindArg::Physical => WanDevice::Physical,
        KindArg::Bridge => WanDevice::Bridge {
            members: a.members.clone(),
        },
        KindArg::Bond => WanDevice::Bond {
            members: a.members.clone(),
        },
        KindArg::Vlan => WanDevice::Vlan {
            parent: needs_parent()?,
            id: a.vlan_id.ok_or_else(|| {
                bad(format!(
                    "WAN {name}: --kind vlan needs --vlan-id N (1..4094)"
                ))
            })?,
        },
        KindArg::Pppoe => WanDevice::Pppoe {
            parent: needs_parent()?,
            user: a
                .pppoe_user
                .clone()
                .ok_or_else(|| bad(format!("WAN {name}: --kind pppoe needs --pppoe-user USER")))?,
        },
    };
    if !a.members.is_empty() && !matches!(a.kind, KindArg::Bridge | KindArg::Bond) {
        return Err(bad(format!(
            "WAN {name}: --member is for --kind bridge or bond"
        )));
    }
    let ipv4 = match a.ipv4.as_deref() {
        None => None,
        Some("dhcp") => Some(Ipv4Method::Dhcp),
        Some(s) => Some(Ipv4Method::Static {
            address: s.parse()?,
            gateway: None,
        }),
    };
    let ipv4 = match (ipv4, &a.gateway) {
        (Some(Ipv4Method::Static { address, .. }), Some(g)) => Some(Ipv4Method::Static {
            address,
            gateway: Some(g.parse().map_err(|_| {
                bad(format!(
                    "WAN {name}: --gateway '{g}' is not an IPv4 address"
                ))
            })?),
        }),
        (_, Some(_)) => {
            return Err(bad(format!(
                "WAN {name}: --gateway needs a static --ipv4 CIDR (DHCP and PPPoE learn it)"
            )))
        }
        (v, None) => v,
    };
    let ipv6 = match &a.ipv6 {
        None if a.gateway6.is_some() => {
            return Err(bad(format!("WAN {name}: --gateway6 needs --ipv6 CIDR")))
        }
        None => None,
        Some(s) => Some(Ipv6Static {
            address: s.parse()?,
            gateway: match &a.gateway6 {
                None => None,
                Some(g) => Some(g.parse().map_err(|_| {
                    bad(format!(
                        "WAN {name}: --gateway6 '{g}' is not an IPv6 address"
                    ))
                })?),
            },
        }),
    };
    let mac = a.mac.as_deref().map(str::parse::<MacAddr>).transpose()?;
    let wan = Wan {
        interface: name.clone(),
        device,
        ipv4,
        ipv6,
        mac,
        metric: a.metric,
    };
    wan.validate()?;
    Ok(wan)
}

/// What a node's interface says against what the WAN needs of it; `None`: fine.
fn device_problem(wan: &Wan, dev: &str, found: Option<&Interface>, node: &str) -> Option<String> {
    let Some(i) = found else {
        return Some(format!(
            "interface {dev} of WAN {} does not exist on the {node}: both nodes need the same interface names (create it on the {node}, or pick another with --interface/--member/--parent)",
            wan.interface
        ));
    };
    match (&wan.device, &i.kind) {
        (WanDevice::Pppoe { .. }, LinkKind::Bridge | LinkKind::Bond) => Some(format!(
            "WAN {}: PPPoE on {dev}, a {} on the {node}, is not supported: put PPPoE on a physical or VLAN interface",
            wan.interface,
            if i.kind == LinkKind::Bridge { "bridge" } else { "bond" }
        )),
        (WanDevice::Bond { .. }, k) if !matches!(k, LinkKind::Physical | LinkKind::Veth) => {
            Some(format!(
                "WAN {}: bond member {dev} is not a physical interface on the {node}: a bond is made of physical interfaces",
                wan.interface
            ))
        }
        (WanDevice::Physical, LinkKind::Bond | LinkKind::Bridge | LinkKind::Vlan) => Some(format!(
            "WAN {}: {dev} is not a physical interface on the {node}: give --kind bridge/bond/vlan with its members or parent",
            wan.interface
        )),
        _ => None,
    }
}

/// Every device the WAN needs, on this node and on the backup.
fn preflight(ctx: &Ctx, backup: &mut dyn Backup, wan: &Wan) -> Result<()> {
    for dev in wan.needed_devices() {
        let here = ctx.ifs.interface(dev)?;
        if let Some(m) = device_problem(wan, dev, here.as_ref(), "primary") {
            return Err(bad(m));
        }
        let there = backup.interface(dev)?;
        if let Some(m) = device_problem(wan, dev, there.as_ref(), "backup") {
            return Err(bad(m));
        }
    }
    Ok(())
}

fn refuse_taken(cluster: &ClusterConfig, interface: &str) -> Result<()> {
    if cluster.lan(interface).is_some()
        || cluster.wan(interface).is_some()
        || cluster.ha.interface == interface
    {
        return Err(bad(format!(
            "interface {interface} is already in the cluster: remove it first with ns-ha-init remove-interface --interface {interface}"
        )));
    }
    Ok(())
}

/// `add-wan`.
pub fn add_wan(ctx: &Ctx, a: &AddWanArgs) -> Result<Report> {
    if a.mode == WanMode::Vip {
        let takeover_only = [
            (a.ipv4.as_deref() == Some("dhcp"), "--ipv4 dhcp"),
            (a.ipv6.is_some(), "--ipv6"),
            (a.mac.is_some(), "--mac"),
            (a.metric.is_some(), "--metric"),
            (a.kind != KindArg::Physical, "--kind other than physical"),
        ];
        if let Some((_, what)) = takeover_only.iter().find(|(on, _)| *on) {
            return Err(bad(format!(
                "WAN {}: {what} needs --mode takeover (a vip WAN is IPv4 only: each node's own static address plus --vip)",
                a.interface
            )));
        }
        if a.vips.is_empty() {
            return Err(bad(format!(
                "WAN {}: --mode vip needs --vip CIDR (or use --mode takeover for a single-address WAN)",
                a.interface
            )));
        }
        return add_lan_as(ctx, &a.interface, &a.vips, a.vrid, true);
    }
    if !a.vips.is_empty() || a.vrid.is_some() {
        return Err(bad(format!(
            "WAN {}: --vip and --vrid are for --mode vip; a takeover WAN moves its whole address",
            a.interface
        )));
    }
    let _lock = lock(&ctx.root)?;
    let wan = wan_from_args(a)?;
    let (node, cluster) = primary(ctx)?;
    refuse_taken(&cluster, &wan.interface)?;
    cluster.check_new_wan(&wan)?;
    let (next, act) = edit_with_peer(ctx, &node, &cluster, |backup, next| {
        preflight(ctx, backup, &wan)?;
        next.wans.push(wan.clone());
        Ok(())
    })?;
    let added = next.wan(&wan.interface).cloned();
    Ok(Report::new(
        format!(
            "added takeover WAN {} ({} {}{}), up only on the MASTER; keepalived {}\n",
            wan.interface,
            wan.device.kind(),
            wan.addressing(),
            wan.mac
                .map(|m| format!(", cluster MAC {m}"))
                .unwrap_or_default(),
            act.keepalived
        ),
        json!({"wan": added, "mode": "takeover", "keepalived": act.keepalived}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Pair;
    use clap::Parser;
    use ns_ha_common::exit::code_of;

    fn args(extra: &[&str]) -> AddWanArgs {
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: AddWanArgs,
        }
        let argv = std::iter::once("t").chain(extra.iter().copied());
        T::try_parse_from(argv).unwrap().a
    }

    fn refused_untouched(p: &Pair, a: &AddWanArgs, needle: &str) {
        let before = p.primary_files();
        let e = add_wan(&p.ctx(), a).unwrap_err();
        assert_eq!(code_of(&e), Code::InvalidInput, "{e:#}");
        assert!(e.to_string().contains(needle), "{e:#}");
        assert_eq!(p.primary_files(), before);
        assert!(p.link.state().installed.is_empty());
    }

    #[test]
    fn a_takeover_wan_is_installed_on_the_backup_then_the_primary() {
        let mut p = Pair::new(true);
        p.add_interface("wan1");
        let a = args(&[
            "--interface",
            "wan1",
            "--ipv4",
            "10.99.3.1/24",
            "--ipv6",
            "fd10:99:3::1/64",
            "--mac",
            "02:00:5e:10:00:01",
        ]);
        add_wan(&p.ctx(), &a).unwrap();
        assert_eq!(
            p.steps(),
            ["backup install enabled=true", "primary keepalived reload"]
        );
        let wan = p.primary_cluster().wan("wan1").cloned().unwrap();
        assert_eq!(wan.static_addresses(), ["10.99.3.1/24", "fd10:99:3::1/64"]);
        assert_eq!(p.link.state().installed[0].wans, [wan]);
        // Already there: refused before the backup is asked.
        let e = add_wan(&p.ctx(), &a).unwrap_err();
        assert!(e.to_string().contains("already in the cluster"), "{e}");
        assert_eq!(p.link.state().installed.len(), 1);
        // remove-interface takes it out of both nodes.
        crate::edit::remove_interface(&p.ctx(), "wan1").unwrap();
        assert!(p.primary_cluster().wans.is_empty());
        assert!(p.link.state().installed[1].wans.is_empty());
    }

    #[test]
    fn a_device_missing_on_the_backup_is_refused_before_any_install() {
        let mut p = Pair::new(true);
        p.add_interface("wan1");
        p.link.state().interfaces.retain(|i| i.name != "wan1");
        let a = args(&["--interface", "wan1", "--ipv4", "10.99.3.1/24"]);
        refused_untouched(&p, &a, "does not exist on the backup");
    }

    #[test]
    fn unsupported_combinations_are_refused_with_nothing_written() {
        let mut p = Pair::new(true);
        p.add_interface("eth1");
        p.add_bridge("br-wan");
        // PPPoE on a bridge (the node says it is one).
        let a = args(&[
            "--interface",
            "pppoe-wan",
            "--kind",
            "pppoe",
            "--parent",
            "br-wan",
            "--pppoe-user",
            "me",
        ]);
        refused_untouched(
            &p,
            &a,
            "PPPoE on br-wan, a bridge on the primary, is not supported",
        );
        // The HA interface in a bond.
        let a = args(&[
            "--interface",
            "bond0",
            "--kind",
            "bond",
            "--member",
            "ha0",
            "--member",
            "eth1",
            "--ipv4",
            "dhcp",
        ]);
        refused_untouched(&p, &a, "HA interface ha0");
        // IPv6 on a vip (LAN-style) WAN, and on a LAN.
        let a = args(&[
            "--interface",
            "eth1",
            "--mode",
            "vip",
            "--vip",
            "10.99.2.254/24",
            "--ipv6",
            "fd10::1/64",
        ]);
        refused_untouched(&p, &a, "needs --mode takeover");
        let e = crate::edit::add_lan(&p.ctx(), "eth1", &["fd10::254/64".into()], None).unwrap_err();
        assert!(e.to_string().contains("IPv4 only"), "{e}");
        // DHCP with a gateway; a WAN with no address.
        let a = args(&[
            "--interface",
            "eth1",
            "--ipv4",
            "dhcp",
            "--gateway",
            "10.0.0.1",
        ]);
        assert!(wan_from_args(&a)
            .unwrap_err()
            .to_string()
            .contains("--gateway needs a static"));
        let a = args(&["--interface", "eth1"]);
        refused_untouched(&p, &a, "has no address");
    }

    #[test]
    fn a_vip_wan_is_a_lan_marked_as_wan() {
        let p = Pair::new(true);
        let a = args(&[
            "--interface",
            "wan0",
            "--mode",
            "vip",
            "--vip",
            "10.99.2.254/24",
        ]);
        add_wan(&p.ctx(), &a).unwrap();
        let lan = p.primary_cluster().lan("wan0").cloned().unwrap();
        assert!(lan.wan);
        assert_eq!(lan.backup_address.to_string(), "10.99.2.2/24");
    }
}
