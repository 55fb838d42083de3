//! `ns-ha-vip`: the cluster's VIPs from the LAN's point of view.
//!
//! keepalived adds and removes the VIPs; `ns-ha-init` edits them in the
//! cluster config. What is left, and what an administrator needs when the
//! LAN misbehaves after a failover or a healed split brain, is here: which
//! VIPs exist and which this node holds (`list`), a fresh gratuitous ARP for
//! the ones it holds (`announce`), and who answers ARP for a VIP on the wire
//! (`who-holds`).

pub mod arp;

use anyhow::Result;
use clap::{Parser, Subcommand};
use serde_json::json;
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::process::ExitCode;

use ns_ha_common::addresses::static_address;
use ns_ha_common::cli::{self, GlobalArgs, Report};
use ns_ha_common::cmd::{CommandRunner, SystemRunner};
use ns_ha_common::config::{load_cluster, load_cluster_opt, load_node_opt, ClusterConfig, Role};
use ns_ha_common::exit::{fail, help_table, Code};
use ns_ha_common::ndisc;
use ns_ha_common::net::{check_ifname, InterfaceSource, IpCommand};
use ns_ha_common::vips::{self, VipState};
use ns_ha_common::wan::{self, MacAddr};
use ns_ha_common::NodeRoot;
use std::time::Duration;

/// The VIPs of an ns-ha pair: list them, re-announce them, find who holds one.
///
/// VIPs are added and removed with ns-ha-init (add-vip, remove-vip); this
/// tool reads the same /etc/ns-ha/cluster.json.
#[derive(Debug, Parser)]
#[command(name = "ns-ha-vip", version, after_help = help_table())]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The cluster's VIPs and the HA heartbeat VIP: interface, VRID, held by this node now.
    ///
    /// KIND is how the VIP's interface is configured in cluster.json:
    /// `heartbeat` for the HA link's VIP (VRRP and sync only, not a gateway),
    /// `add-lan` for a VIP of an interface added with `ns-ha-init add-lan`,
    /// `add-wan` for one of a WAN added with `ns-ha-init add-wan --mode vip`.
    /// Takeover WANs have no VIP (their whole address moves): `announce`
    /// covers them, `ns-ha-check status` lists them.
    List,
    /// Send gratuitous ARP for every VIP this node holds and for the IPv4
    /// addresses of the takeover WANs up here, and unsolicited neighbour
    /// advertisements for their IPv6 addresses.
    ///
    /// keepalived announces only on a transition; a LAN whose ARP caches still
    /// point at the other node (after a partition) learns the holder again.
    /// The role engine runs it after it brings a takeover WAN up on the new
    /// master. Holding nothing is not an error: nothing is sent.
    Announce {
        /// Only the VIPs and WAN addresses of this interface.
        #[arg(long, value_name = "IF")]
        interface: Option<String>,
    },
    /// Whether this node holds VIP, and which MAC answers ARP for it on the LAN.
    ///
    /// Prints `local`, `remote MAC` or `nobody` (exit 10).
    WhoHolds {
        /// The VIP (with or without /prefix).
        vip: String,
        /// Ask on this interface (default: the VIP's interface in the cluster).
        #[arg(long, value_name = "IF")]
        interface: Option<String>,
    },
}

/// What a command needs about the node it runs on.
pub struct Ctx<'a> {
    pub root: NodeRoot,
    pub runner: &'a dyn CommandRunner,
    pub ifs: &'a dyn InterfaceSource,
}

/// Run one parsed command.
pub fn run(cli: Cli, runner: &dyn CommandRunner, ifs: &dyn InterfaceSource) -> Result<Report> {
    let ctx = Ctx {
        root: NodeRoot::from_arg_or_env(cli.global.root.as_deref())?,
        runner,
        ifs,
    };
    match cli.command {
        Command::List => list(&ctx),
        Command::Announce { interface } => announce(&ctx, interface.as_deref()),
        Command::WhoHolds { vip, interface } => who_holds(&ctx, &vip, interface.as_deref()),
    }
}

/// The whole program: parse, run, print the result or the error once, exit with its code.
pub fn main_with_args<I: IntoIterator<Item = OsString>>(args: I) -> ExitCode {
    cli::main("ns-ha-vip", args, |cli: Cli| {
        let runner = SystemRunner;
        run(cli, &runner, &IpCommand { runner: &runner })
    })
}

impl cli::ToolCli for Cli {
    fn global(&self) -> &GlobalArgs {
        &self.global
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The KIND column of `list`: how the VIP's interface is configured (see `list --help`).
fn kind(cluster: &ClusterConfig, v: &VipState) -> &'static str {
    if v.heartbeat {
        "heartbeat"
    } else if cluster.lan(&v.interface).is_some_and(|l| l.wan) {
        "add-wan"
    } else {
        "add-lan"
    }
}

/// `list`.
pub fn list(ctx: &Ctx) -> Result<Report> {
    let cluster = load_cluster(&ctx.root)?;
    let vips = vips::observe(&cluster, ctx.ifs)?;
    let mut h = format!(
        "{:<20} {:<12} {:>4}  {:<4}  {}\n",
        "VIP", "INTERFACE", "VRID", "HELD", "KIND"
    );
    for v in &vips {
        h.push_str(&format!(
            "{:<20} {:<12} {:>4}  {:<4}  {}\n",
            v.vip.to_string(),
            v.interface,
            v.vrid,
            yes_no(v.held),
            kind(&cluster, v)
        ));
    }
    Ok(Report::new(h, json!({ "vips": vips })))
}

/// The interfaces that carry VIPs in the cluster; anything else is refused.
fn require_cluster_interface(cluster: &ClusterConfig, iface: &str) -> Result<()> {
    check_ifname(iface)?;
    if iface == cluster.ha.interface || cluster.lan(iface).is_some() || cluster.wan(iface).is_some()
    {
        return Ok(());
    }
    let known: Vec<&str> = std::iter::once(cluster.ha.interface.as_str())
        .chain(cluster.lans.iter().map(|l| l.interface.as_str()))
        .chain(cluster.wans.iter().map(|w| w.interface.as_str()))
        .collect();
    Err(fail(
        Code::InvalidInput,
        format!(
            "interface {iface} is not in the cluster (known: {}): see ns-ha-vip list",
            known.join(", ")
        ),
    ))
}

/// One neighbour announcement to send.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Announcement {
    /// Gratuitous ARP for a VIP or a takeover WAN's IPv4 address.
    Arp { interface: String, addr: Ipv4Addr },
    /// Unsolicited neighbour advertisement for a takeover WAN's IPv6 address.
    Na {
        interface: String,
        addr: std::net::Ipv6Addr,
    },
}

impl Announcement {
    fn interface(&self) -> &str {
        match self {
            Announcement::Arp { interface, .. } | Announcement::Na { interface, .. } => interface,
        }
    }
    fn addr(&self) -> String {
        match self {
            Announcement::Arp { addr, .. } => addr.to_string(),
            Announcement::Na { addr, .. } => addr.to_string(),
        }
    }
    fn send(&self, runner: &dyn CommandRunner) -> Result<()> {
        match self {
            Announcement::Arp { interface, addr } => arp::announce(runner, interface, *addr),
            Announcement::Na { interface, addr } => {
                let mac = arp::link_mac(runner, interface)?
                    .ok_or_else(|| fail(Code::Failure, format!("interface {interface} is gone")))?;
                let mac: MacAddr = mac.parse()?;
                ndisc::announce(interface, ndisc::ifindex(interface)?, *addr, mac, 2)
            }
        }
    }
    fn how(&self) -> &'static str {
        match self {
            Announcement::Arp { .. } => "gratuitous ARP x2",
            Announcement::Na { .. } => "unsolicited NA x2",
        }
    }
}

/// The addresses of the takeover WANs that are up here (on `only`, if given).
fn held_wan_addresses(
    cluster: &ClusterConfig,
    runner: &dyn CommandRunner,
    only: Option<&str>,
) -> Result<Vec<Announcement>> {
    let mut out = Vec::new();
    for w in cluster
        .wans
        .iter()
        .filter(|w| only.is_none_or(|i| w.interface == i))
    {
        let Some(live) = wan::observe(runner, &w.interface, Duration::from_secs(5))? else {
            continue;
        };
        if !live.is_up(w) {
            continue;
        }
        for a in &live.addresses {
            let ip = a.split('/').next().unwrap_or(a);
            let interface = w.interface.clone();
            if let Ok(addr) = ip.parse::<Ipv4Addr>() {
                out.push(Announcement::Arp { interface, addr });
            } else if let Ok(addr) = ip.parse::<std::net::Ipv6Addr>() {
                out.push(Announcement::Na { interface, addr });
            }
        }
    }
    Ok(out)
}

/// `announce`: the VIPs held here and the addresses of the takeover WANs up here.
pub fn announce(ctx: &Ctx, interface: Option<&str>) -> Result<Report> {
    let cluster = load_cluster(&ctx.root)?;
    if let Some(i) = interface {
        require_cluster_interface(&cluster, i)?;
    }
    let mut todo: Vec<Announcement> = vips::observe(&cluster, ctx.ifs)?
        .into_iter()
        .filter(|v| v.held && interface.is_none_or(|i| v.interface == i))
        .map(|v| Announcement::Arp {
            interface: v.interface,
            addr: v.vip.addr,
        })
        .collect();
    todo.extend(held_wan_addresses(&cluster, ctx.runner, interface)?);
    if todo.is_empty() {
        let scope = interface.map(|i| format!(" on {i}")).unwrap_or_default();
        return Ok(Report::new(
            format!("this node holds no VIP or WAN address{scope}: nothing to announce\n"),
            json!({"announced": [], "note": "holds no VIP"}),
        ));
    }
    // In parallel: an arping takes a second (two packets).
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = todo
            .iter()
            .map(|a| s.spawn(|| a.send(ctx.runner)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(fail(Code::Failure, "announcing thread panicked")))
            })
            .collect()
    });
    let mut h = String::new();
    let mut failed = Vec::new();
    for (a, r) in todo.iter().zip(results) {
        match r {
            Ok(()) => h.push_str(&format!(
                "announced {} on {} ({})\n",
                a.addr(),
                a.interface(),
                a.how()
            )),
            Err(e) => failed.push(e),
        }
    }
    if let Some(first) = failed.into_iter().next() {
        // The others were sent; the first failure explains the exit code.
        log::warn!("{}", h.trim_end());
        return Err(first);
    }
    let announced: Vec<serde_json::Value> = todo
        .iter()
        .map(|a| json!({"vip": a.addr(), "interface": a.interface()}))
        .collect();
    Ok(Report::new(h, json!({ "announced": announced })))
}

fn parse_addr(s: &str) -> Result<Ipv4Addr> {
    s.split('/').next().unwrap_or(s).parse().map_err(|_| {
        fail(
            Code::InvalidInput,
            format!("'{s}' is not an IPv4 address: give the VIP like 192.168.1.254"),
        )
    })
}

/// This node's own address on `iface` by its role, as the ARP source.
fn own_address(
    cluster: Option<&ClusterConfig>,
    role: Option<Role>,
    iface: &str,
) -> Option<Ipv4Addr> {
    static_address(cluster?, role?, iface).map(|a| a.addr)
}

/// `who-holds`.
pub fn who_holds(ctx: &Ctx, vip: &str, interface: Option<&str>) -> Result<Report> {
    let addr = parse_addr(vip)?;
    let cluster = load_cluster_opt(&ctx.root)?;
    let role = load_node_opt(&ctx.root)?.map(|n| n.role);
    let configured = cluster.as_ref().and_then(|c| {
        vips::cluster_vips(c)
            .into_iter()
            .find(|v| v.vip.addr == addr)
    });
    let iface = match (interface, &configured) {
        (Some(i), _) => {
            check_ifname(i)?;
            i.to_string()
        }
        (None, Some(v)) => v.interface.clone(),
        (None, None) => {
            return Err(fail(
                Code::InvalidInput,
                format!(
                "{addr} is not a VIP of the cluster: give --interface IF to ask on a LAN anyway"
            ),
            ))
        }
    };
    let own_mac = arp::link_mac(ctx.runner, &iface)?.ok_or_else(|| {
        fail(
            Code::InvalidInput,
            format!("interface {iface} does not exist on this node"),
        )
    })?;
    let held_here = vips::holds_address(ctx.ifs, addr)?;
    let source = own_address(cluster.as_ref(), role, &iface);
    let answers = arp::probe(ctx.runner, &iface, addr, source)?;
    let remote: Vec<&String> = answers.iter().filter(|m| **m != own_mac).collect();
    let (holder, mac) = match remote.first() {
        Some(m) => ("remote", Some((*m).clone())),
        None if held_here || answers.contains(&own_mac) => ("local", Some(own_mac.clone())),
        None => ("nobody", None),
    };
    // Held here and answered by another MAC: two holders (split brain).
    let conflict = held_here && !remote.is_empty();
    let mut h = match (&holder, &mac) {
        (&"remote", Some(m)) => format!("remote {m}\n"),
        (&"local", _) => "local\n".to_string(),
        _ => "nobody\n".to_string(),
    };
    if conflict {
        h.push_str(&format!(
            "warning: this node holds {addr} too: two holders (split brain); run ns-ha-vip announce on the node that should keep it\n"
        ));
    }
    let report = Report::new(
        h,
        json!({
            "vip": addr.to_string(),
            "interface": iface,
            "held_here": held_here,
            "own_mac": own_mac,
            "answers": answers,
            "holder": holder,
            "mac": mac,
            "conflict": conflict,
        }),
    );
    Ok(if holder == "nobody" {
        report.with_code(Code::Unhealthy)
    } else {
        report
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ns_ha_common::cmd::{CmdOutput, RecordingRunner};
    use ns_ha_common::config::save_cluster;
    use ns_ha_common::fixtures::{interface as iface, sample_cluster as cluster};
    use ns_ha_common::net::StaticInterfaces;

    fn node_root() -> (tempfile::TempDir, NodeRoot) {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        save_cluster(&root, &cluster()).unwrap();
        (dir, root)
    }

    fn ok(stdout: &str) -> CmdOutput {
        CmdOutput {
            status: Some(0),
            stdout: stdout.into(),
            ..Default::default()
        }
    }

    fn no_reply() -> CmdOutput {
        CmdOutput {
            status: Some(1),
            ..Default::default()
        }
    }

    fn master() -> StaticInterfaces {
        StaticInterfaces(vec![
            iface("lan0", &["10.99.1.1/24", "10.99.1.254/24"]),
            iface("ha0", &["10.99.0.1/24", "10.99.0.254/32"]),
        ])
    }

    /// `list` on a backup that holds no VIP.
    fn list_on_backup(root: NodeRoot) -> Report {
        let r = RecordingRunner::new();
        let backup = StaticInterfaces(vec![iface("lan0", &["10.99.1.2/24"])]);
        let ctx = Ctx {
            root,
            runner: &r,
            ifs: &backup,
        };
        list(&ctx).unwrap()
    }

    #[test]
    fn list_marks_what_is_held() {
        let (_d, root) = node_root();
        let rep = list_on_backup(root);
        assert_eq!(rep.json["vips"][0]["held"], false);
        assert_eq!(rep.json["vips"][0]["vrid"], 51);
        assert_eq!(rep.json["vips"][1]["heartbeat"], true);
        let lines: Vec<&str> = rep.human.lines().collect();
        assert!(lines[1].starts_with("10.99.1.254/24"), "{}", rep.human);
        assert!(lines[1].ends_with("  add-lan"), "{}", rep.human);
        assert!(lines[2].ends_with("  heartbeat"), "{}", rep.human);
        assert!(!rep.human.contains(" lan\n"), "{}", rep.human);
    }

    #[test]
    fn list_names_a_vip_mode_wan_add_wan() {
        let (_d, root) = node_root();
        let mut c = cluster();
        c.lans[0].wan = true;
        save_cluster(&root, &c).unwrap();
        let rep = list_on_backup(root);
        let lines: Vec<&str> = rep.human.lines().collect();
        assert!(lines[1].starts_with("10.99.1.254/24"), "{}", rep.human);
        assert!(lines[1].ends_with("  add-wan"), "{}", rep.human);
        assert!(lines[2].ends_with("  heartbeat"), "{}", rep.human);
    }

    #[test]
    fn announce_sends_for_held_vips_only_and_refuses_unknown_interfaces() {
        let (_d, root) = node_root();
        let r = RecordingRunner::new();
        let ifs = master();
        let ctx = Ctx {
            root: root.clone(),
            runner: &r,
            ifs: &ifs,
        };
        let rep = announce(&ctx, Some("lan0")).unwrap();
        assert_eq!(rep.json["announced"].as_array().unwrap().len(), 1);
        assert_eq!(r.calls().len(), 1);
        assert!(r.calls()[0].contains(&"10.99.1.254".to_string()));
        let e = announce(&ctx, Some("eth7")).unwrap_err();
        assert_eq!(ns_ha_common::code_of(&e), Code::InvalidInput);
        let none = StaticInterfaces(vec![iface("lan0", &["10.99.1.2/24"])]);
        let ctx = Ctx {
            root,
            runner: &r,
            ifs: &none,
        };
        let rep = announce(&ctx, None).unwrap();
        assert_eq!(rep.code, Code::Ok);
        assert!(rep.human.contains("nothing to announce"));
        assert_eq!(r.calls().len(), 1, "nothing sent when nothing is held");
    }

    #[test]
    fn who_holds_tells_local_remote_and_nobody() {
        let (_d, root) = node_root();
        let own = r#"[{"ifname":"lan0","address":"02:00:00:00:00:01"}]"#;
        let backup = StaticInterfaces(vec![iface("lan0", &["10.99.1.2/24"])]);
        // Another MAC answers: remote.
        let r = RecordingRunner::new();
        r.answer("link show", ok(own));
        r.answer(
            "arping",
            ok("Unicast reply from 10.99.1.254 [02:00:00:00:00:02]  0.5ms\n"),
        );
        let ctx = Ctx {
            root: root.clone(),
            runner: &r,
            ifs: &backup,
        };
        let rep = who_holds(&ctx, "10.99.1.254", None).unwrap();
        assert_eq!(rep.human, "remote 02:00:00:00:00:02\n");
        assert_eq!(rep.json["holder"], "remote");
        // Nobody answers and we do not hold it: exit 10.
        r.answer("link show", ok(own));
        r.answer("arping", no_reply());
        let rep = who_holds(&ctx, "10.99.1.254/24", None).unwrap();
        assert_eq!(rep.json["holder"], "nobody");
        assert_eq!(rep.code, Code::Unhealthy);
        // We hold it and nobody else answers: local.
        let ifs = master();
        let ctx = Ctx {
            root,
            runner: &r,
            ifs: &ifs,
        };
        r.answer("link show", ok(own));
        r.answer("arping", no_reply());
        let rep = who_holds(&ctx, "10.99.1.254", None).unwrap();
        assert_eq!(rep.human, "local\n");
        // Unknown VIP without --interface: invalid input.
        let e = who_holds(&ctx, "10.99.1.77", None).unwrap_err();
        assert_eq!(ns_ha_common::code_of(&e), Code::InvalidInput);
        assert!(who_holds(&ctx, "not-an-ip", None).is_err());
    }
}
