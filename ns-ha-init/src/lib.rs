//! `ns-ha-init`: pairing and cluster configuration, run on the primary.
//!
//! An administrator turns two firewalls into a pair with this tool only:
//! pre-flight checks, keys and host-key pinning, the cluster config (LANs,
//! VIPs, enable/disable), and rendering the keepalived and conntrackd configs
//! on both nodes. Every change is validated before anything is written, and
//! offered to the backup before the primary, so a refused change leaves
//! both nodes as they were (see `install` for the order of `enable`).

pub mod backup;
pub mod checks;
pub mod edit;
pub mod install;
pub mod layout;
pub mod pairing;
pub mod show;
pub mod sshd_listen;
#[cfg(test)]
mod testkit;
pub mod upgrade_remote;
pub mod wans;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::process::ExitCode;

pub use ns_ha_common::cli::Report;
use ns_ha_common::cli::{self, GlobalArgs};
use ns_ha_common::cmd::{CommandRunner, SystemRunner};
use ns_ha_common::exit::help_table;
use ns_ha_common::net::{InterfaceSource, IpCommand, Ipv4Cidr};
use ns_ha_common::platform::Platform;
use ns_ha_common::service::ServiceBackend;
use ns_ha_common::vrrp::{AdvertListener, RawSocketListener};
use ns_ha_common::NodeRoot;

use crate::backup::{BackupLink, SshLink};
use crate::sshd_listen::{ProcNetTcp, TcpListeners};

/// Pair two firewalls into one highly available gateway and manage the cluster.
#[derive(Debug, Parser)]
#[command(name = "ns-ha-init", version, after_help = after_help())]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pre-flight checks for a node, each failure with its fix.
    ///
    /// On a backup it also warns (without failing) when sshd listens on
    /// another address than the HA address.
    ///
    /// Without options it checks what this node's config names; options check
    /// a planned setup before init. It also listens 3 s on the HA link and
    /// each LAN for other VRRP routers (as root) and fails (exit 8) when one
    /// uses the cluster's VRID there.
    Check {
        /// The role the node will have (default: its configured role).
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
        /// The dedicated HA interface.
        #[arg(long, value_name = "IF")]
        ha_interface: Option<String>,
        /// The peer's HA address (checks that its sshd answers).
        #[arg(long, value_name = "ADDR")]
        peer: Option<Ipv4Addr>,
        /// A LAN interface, optionally with a VIP: lan0 or lan0=192.168.1.254/24. Repeatable.
        #[arg(long = "lan", value_name = "IF[=VIP]")]
        lans: Vec<String>,
    },
    /// Make this node the primary: cluster id, SSH key, cluster config. Prints the public key for init-backup.
    InitPrimary {
        /// The dedicated HA interface (a physical NIC with a static IPv4 address).
        #[arg(long, value_name = "IF")]
        ha_interface: String,
        /// The backup's address on the HA link.
        #[arg(long, value_name = "ADDR")]
        peer: Ipv4Addr,
        /// A free address of the HA subnet for the HA-link heartbeat (default: highest free host).
        #[arg(long, value_name = "ADDR")]
        heartbeat_vip: Option<Ipv4Addr>,
        /// The backup's sshd port.
        #[arg(long, default_value_t = 22)]
        ssh_port: u16,
        /// VRRP advertisement interval in milliseconds (multiple of 10).
        #[arg(long, default_value_t = ns_ha_common::config::VrrpSettings::default().advert_interval_ms)]
        advert_interval_ms: u32,
        /// VRRP router id of the HA-link instance (1..255, default 50); `check` reports the ones other routers use.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
        vrid: Option<u8>,
        #[command(flatten)]
        platform: PlatformArgs,
    },
    /// Make this node the backup: authorize the primary's key for the sync command only, from the primary's HA address only. Prints this node's host-key fingerprint for `pair`.
    InitBackup {
        /// The dedicated HA interface (same name as on the primary).
        #[arg(long, value_name = "IF")]
        ha_interface: String,
        /// The primary's address on the HA link (its key is accepted from there only).
        #[arg(long, value_name = "ADDR")]
        peer: Ipv4Addr,
        /// The public key line printed by init-primary, quoted: 'ssh-ed25519 AAAA... ns-ha-primary'
        /// (pasted unquoted, its words are taken together as the key).
        #[arg(long, value_name = "KEY", num_args = 1.., required = true)]
        primary_key: Vec<String>,
        #[command(flatten)]
        platform: PlatformArgs,
    },
    /// Connect to the backup, pin its host key, check versions, and install the cluster config on both nodes.
    Pair {
        /// The backup's host-key fingerprint as init-backup printed it (SHA256:...).
        #[arg(long, value_name = "FP", conflicts_with = "trust_on_first_use")]
        host_key_fingerprint: Option<String>,
        /// Pin whatever host key the backup presents (needs --yes to confirm).
        #[arg(long, requires = "yes")]
        trust_on_first_use: bool,
        /// Confirm trust on first use.
        #[arg(long)]
        yes: bool,
    },
    /// Add a LAN interface (same name on both nodes) with optional VIPs.
    ///
    /// Both nodes need the interface with a static address of the same subnet;
    /// the VIP is the address clients use (gateway, DNS, VPN endpoint) and moves
    /// with the MASTER. LANs are IPv4 only. A WAN is added with add-wan.
    AddLan {
        /// The interface, same name on both nodes, with a static IPv4 address of
        /// the same subnet on each (e.g. lan0, br-lan).
        #[arg(long, value_name = "IF")]
        interface: String,
        /// A VIP in the LAN subnet, e.g. 192.168.1.254/24. Repeatable.
        #[arg(long = "vip", value_name = "CIDR")]
        vips: Vec<String>,
        /// VRRP router id of this LAN's instance (1..255, unique in the cluster; default: the next free one). `check` reports the ones other routers on the LAN use.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
        vrid: Option<u8>,
    },
    /// Add a WAN: takeover (default; one address for the pair, up only on the MASTER) or vip.
    ///
    /// takeover: the WAN is defined once here, installed on the backup with
    /// the cluster (both nodes render it for their interface manager, ifupdown
    /// or netifd, never brought up at boot) and brought up by the role engine
    /// on the MASTER only; on BACKUP and FAULT it is down and answers no
    /// ARP/ND. Addressing: static IPv4 (--ipv4 CIDR --gateway), static IPv6
    /// (--ipv6 CIDR --gateway6), DHCP (--ipv4 dhcp, best with --mac so the
    /// ISP gives the new master the same lease), PPPoE (--kind pppoe). Devices:
    /// physical, bridge and bond (--member, repeatable), VLAN (--parent
    /// --vlan-id, named PARENT.ID), PPPoE on a physical or VLAN parent. Every
    /// device must exist on both nodes (checked over the backup link before
    /// anything is written).
    ///
    /// vip: each node has its own static IPv4 address on the WAN and a VIP
    /// moves with keepalived, as add-lan does (needs --vip).
    ///
    /// Examples:
    ///   ns-ha-init add-wan --interface eth1 --ipv4 203.0.113.10/24 --gateway 203.0.113.1 --ipv6 2001:db8::10/64 --gateway6 fe80::1
    ///   ns-ha-init add-wan --interface eth1 --ipv4 dhcp --mac 02:00:5e:10:00:01
    ///   ns-ha-init add-wan --interface eth1.10 --kind vlan --parent eth1 --vlan-id 10 --ipv4 dhcp
    ///   ns-ha-init add-wan --interface eth1 --mode vip --vip 203.0.113.10/24
    #[command(verbatim_doc_comment)]
    AddWan(Box<wans::AddWanArgs>),
    /// Remove a LAN or WAN (with its VIPs) from the cluster.
    RemoveInterface {
        /// A LAN or WAN of the cluster, as show-config lists it.
        #[arg(long, value_name = "IF")]
        interface: String,
    },
    /// Add a VIP to a LAN interface of the cluster (or a vip-mode WAN).
    AddVip {
        /// A LAN of the cluster (added with add-lan), or a WAN added with add-wan --mode vip.
        #[arg(long, value_name = "IF")]
        interface: String,
        /// The VIP with its prefix, in that interface's subnet, e.g. 192.168.1.253/24.
        #[arg(long, value_name = "CIDR")]
        vip: String,
    },
    /// Remove a VIP (give the address, with or without prefix).
    RemoveVip {
        #[arg(long, value_name = "ADDR")]
        vip: String,
    },
    /// Show the cluster and node configuration.
    ShowConfig,
    /// Start HA (keepalived) on both nodes.
    Enable,
    /// Stop HA (keepalived) on both nodes; the configuration is kept.
    Disable,
    /// Upgrade the backup from the primary: send a package (.deb or .ipk) over the pinned channel, have the backup install it, check both nodes then run the same ns-ha release.
    ///
    /// The backup checks the package's sha256 against the one this node
    /// declares before installing it (dpkg for a .deb, opkg for an .ipk),
    /// refuses a package older than the one installed unless
    /// --force-downgrade, and removes the file afterwards. Upgrade this node
    /// first (dpkg -i / opkg install), then run this with the same file.
    UpgradeRemote {
        /// The package file (at most 128 MiB).
        #[arg(value_name = "FILE")]
        file: std::path::PathBuf,
        /// Install it even if the backup has a newer version of the package.
        #[arg(long)]
        force_downgrade: bool,
    },
    /// Undo everything init did on this node (keys, authorization, configs, sync state); the node can be paired again.
    Reset {
        /// Confirm the reset.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum RoleArg {
    Primary,
    Backup,
}

impl From<RoleArg> for ns_ha_common::config::Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Primary => ns_ha_common::config::Role::Primary,
            RoleArg::Backup => ns_ha_common::config::Role::Backup,
        }
    }
}

/// The node's platform, stored in node.json by init-primary and init-backup.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct PlatformArgs {
    /// The node's platform: its paths (crontab, SSH server files, state on
    /// flash), service and interface manager (default: detected from
    /// /etc/openwrt_release or /etc/os-release under the root; openwrt when
    /// neither exists). show-config shows it.
    #[arg(long, value_enum, value_name = "PLATFORM")]
    pub platform: Option<Platform>,
    /// How this node manages services (default: the platform's, initd on
    /// openwrt, systemd on debian).
    #[arg(long, value_enum)]
    pub service_backend: Option<BackendArg>,
    /// What brings takeover WANs up and down on this node (default: the
    /// platform's, netifd on openwrt, ifupdown on debian).
    #[arg(long, value_enum, value_name = "MANAGER")]
    pub interface_manager: Option<ns_ha_common::platform::InterfaceManager>,
}

impl PlatformArgs {
    fn resolve(&self, root: &NodeRoot) -> Result<layout::NodePlatform> {
        let mut p = layout::NodePlatform::resolve(
            root,
            self.platform,
            self.service_backend.map(Into::into),
        )?;
        p.interface_manager = self.interface_manager;
        Ok(p)
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum BackendArg {
    Initd,
    Systemd,
}

impl From<BackendArg> for ServiceBackend {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Initd => ServiceBackend::Initd,
            BackendArg::Systemd => ServiceBackend::Systemd,
        }
    }
}

/// Pairing, as README.md walks through it (each line on the node named, as root).
pub const PAIRING_EXAMPLE: &str = "\
Pairing (each line on the node named, as root):
  primary: ns-ha-init check --role primary --ha-interface eth2 --peer 10.0.0.2 --lan lan0=192.168.1.254/24
  primary: ns-ha-init init-primary --ha-interface eth2 --peer 10.0.0.2
  backup:  ns-ha-init init-backup --ha-interface eth2 --peer 10.0.0.1 --primary-key 'ssh-ed25519 AAAA... ns-ha-primary'
  primary: ns-ha-init pair --host-key-fingerprint SHA256:...   (printed by init-backup; again: show-config on the backup)
  primary: ns-ha-init add-lan --interface lan0 --vip 192.168.1.254/24
  primary: ns-ha-init add-wan --interface eth1 --ipv4 203.0.113.10/24 --gateway 203.0.113.1   (up on the MASTER only; see add-wan --help)
  primary: ns-ha-init enable
Before enable, the master-only services the roles start must be configured on
the primary (e.g. /etc/dnsmasq.conf); `ns-ha-init check` names the missing ones.";

/// Text after the options in `-h` and `--help`: the pairing example, printed
/// verbatim (line by line) in both, and the exit codes.
fn after_help() -> String {
    format!("{PAIRING_EXAMPLE}\n\n{}", help_table())
}

/// Everything a command needs about the node it runs on and its peer.
pub struct Ctx<'a> {
    pub root: NodeRoot,
    pub runner: &'a dyn CommandRunner,
    /// This node's interfaces.
    pub ifs: &'a dyn InterfaceSource,
    /// How this (primary) node reaches the backup.
    pub link: &'a dyn BackupLink,
    /// Hears other VRRP routers on the links (`check`).
    pub adverts: &'a dyn AdvertListener,
    /// This node's listening TCP sockets (`check`: where the backup's sshd listens).
    pub listeners: &'a dyn TcpListeners,
}

/// Parse a VIP argument; IPv6 and malformed prefixes are refused with the fix.
pub fn parse_vip(s: &str) -> Result<Ipv4Cidr> {
    s.parse()
}

/// Run one parsed command on this node, reaching the backup over `link`.
pub fn run(cli: Cli, runner: &dyn CommandRunner, link: &dyn BackupLink) -> Result<Report> {
    let ctx = Ctx {
        root: NodeRoot::from_arg_or_env(cli.global.root.as_deref())?,
        runner,
        ifs: &IpCommand { runner },
        link,
        adverts: &RawSocketListener,
        listeners: &ProcNetTcp,
    };
    match cli.command {
        Command::Check {
            role,
            ha_interface,
            peer,
            lans,
        } => checks::run_check(&ctx, role.map(Into::into), ha_interface, peer, &lans),
        Command::InitPrimary {
            ha_interface,
            peer,
            heartbeat_vip,
            ssh_port,
            advert_interval_ms,
            vrid,
            platform,
        } => pairing::init_primary(
            &ctx,
            &pairing::PrimaryInit {
                ha_interface,
                peer,
                heartbeat_vip,
                ssh_port,
                advert_interval_ms,
                vrid,
                platform: platform.resolve(&ctx.root)?,
            },
        ),
        Command::InitBackup {
            ha_interface,
            peer,
            primary_key,
            platform,
        } => pairing::init_backup(
            &ctx,
            &ha_interface,
            peer,
            &primary_key.join(" "),
            &platform.resolve(&ctx.root)?,
        ),
        Command::Pair {
            host_key_fingerprint,
            trust_on_first_use,
            yes: _,
        } => pairing::pair(&ctx, host_key_fingerprint, trust_on_first_use),
        Command::AddLan {
            interface,
            vips,
            vrid,
        } => edit::add_lan(&ctx, &interface, &vips, vrid),
        Command::AddWan(a) => wans::add_wan(&ctx, &a),
        Command::RemoveInterface { interface } => edit::remove_interface(&ctx, &interface),
        Command::AddVip { interface, vip } => edit::add_vip(&ctx, &interface, &vip),
        Command::RemoveVip { vip } => edit::remove_vip(&ctx, &vip),
        Command::ShowConfig => show::show_config(&ctx),
        Command::Enable => edit::set_enabled(&ctx, true),
        Command::Disable => edit::set_enabled(&ctx, false),
        Command::Reset { yes } => pairing::reset(&ctx, yes),
        Command::UpgradeRemote {
            file,
            force_downgrade,
        } => upgrade_remote::upgrade_remote(&ctx, &file, force_downgrade),
    }
}

/// The whole program: parse, run, print the result or the error once, exit with its code.
pub fn main_with_args<I: IntoIterator<Item = OsString>>(args: I) -> ExitCode {
    cli::main("ns-ha-init", args, |cli: Cli| {
        run(cli, &SystemRunner, &SshLink)
    })
}

impl cli::ToolCli for Cli {
    fn global(&self) -> &GlobalArgs {
        &self.global
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn short_and_long_help_show_the_pairing_example_line_by_line() {
        let short = Cli::command().render_help().to_string();
        let long = Cli::command().render_long_help().to_string();
        for help in [&short, &long] {
            let lines: Vec<&str> = help.lines().collect();
            for line in PAIRING_EXAMPLE.lines() {
                assert!(lines.contains(&line), "missing line {line:?} in:\n{help}");
            }
            assert!(help.contains("Exit codes:"));
        }
    }

    #[test]
    fn a_primary_key_pasted_without_quotes_is_taken_whole() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEt1Ig8czKwgR7Z9el8tb0tUfSP1AJewPrV9zoXG26FS ns-ha-primary";
        let base = ["ns-ha-init", "init-backup", "--ha-interface", "eth2"];
        let unquoted: Vec<&str> = base
            .iter()
            .copied()
            .chain(["--primary-key"])
            .chain(key.split(' '))
            .chain(["--peer", "10.0.0.1"])
            .collect();
        let quoted: Vec<&str> = base
            .iter()
            .copied()
            .chain(["--primary-key", key, "--peer", "10.0.0.1"])
            .collect();
        for argv in [unquoted, quoted] {
            let cli = Cli::try_parse_from(&argv).unwrap();
            let Command::InitBackup { primary_key, .. } = cli.command else {
                panic!("not init-backup");
            };
            assert_eq!(primary_key.join(" "), key);
            assert!(ns_ha_common::ssh::parse_public_key(&primary_key.join(" ")).is_ok());
        }
        let e = Cli::try_parse_from(base.iter().chain(&["--primary-key"])).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn interface_options_and_the_wan_are_explained() {
        for sub in ["add-lan", "add-wan", "add-vip", "remove-interface"] {
            let mut cmd = Cli::command();
            let help = cmd
                .find_subcommand_mut(sub)
                .unwrap()
                .render_help()
                .to_string();
            let line = help
                .lines()
                .find(|l| l.trim_start().starts_with("--interface <IF>"))
                .unwrap_or_else(|| panic!("{sub}: no --interface in\n{help}"));
            assert!(
                line.len() > "      --interface <IF>".len() + 10,
                "{sub}: --interface has no help text: {line:?}"
            );
        }
        let mut cmd = Cli::command();
        let long = cmd
            .find_subcommand_mut("add-lan")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(long.contains("A WAN is added with add-wan"));
        let mut cmd = Cli::command();
        let long = cmd
            .find_subcommand_mut("add-wan")
            .unwrap()
            .render_long_help()
            .to_string();
        for needle in [
            "up only on the MASTER",
            "--ipv4 dhcp --mac",
            "--kind vlan --parent eth1 --vlan-id 10",
            "--mode vip --vip",
        ] {
            assert!(
                long.contains(needle),
                "add-wan --help lacks {needle:?}:\n{long}"
            );
        }
    }
}
