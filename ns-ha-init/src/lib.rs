//! `ns-ha-init`: pairing and cluster configuration, run on the primary.
//!
//! An administrator turns two firewalls into a pair with this tool only:
//! pre-flight checks, keys and host-key pinning, the cluster config (LANs,
//! VIPs, enable/disable), and rendering the keepalived and conntrackd configs
//! on both nodes. Every change is validated before anything is written, and
//! installed on the backup before the primary, so a refused change leaves
//! both nodes as they were.

pub mod checks;
pub mod edit;
pub mod pairing;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::process::ExitCode;

pub use ns_ha_common::cli::Report;
use ns_ha_common::cli::{self, GlobalArgs};
use ns_ha_common::cmd::{CommandRunner, SystemRunner};
use ns_ha_common::exit::help_table;
use ns_ha_common::net::Ipv4Cidr;
use ns_ha_common::service::ServiceBackend;
use ns_ha_common::NodeRoot;

/// Pair two firewalls into one highly available gateway and manage the cluster.
///
/// Typical pairing (run each line on the node named, as root):
///   primary: ns-ha-init init-primary --ha-interface eth2 --peer 10.99.0.2
///   backup:  ns-ha-init init-backup --ha-interface eth2 --peer 10.99.0.1 --primary-key 'ssh-ed25519 AAAA...'
///   primary: ns-ha-init pair --host-key-fingerprint SHA256:...   (printed by init-backup)
///   primary: ns-ha-init add-lan --interface lan0 --vip 192.168.1.254/24
///   primary: ns-ha-init enable
#[derive(Debug, Parser)]
#[command(name = "ns-ha-init", version, after_help = help_table())]
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
        #[arg(long, default_value_t = 100)]
        advert_interval_ms: u32,
        /// VRRP router id of the HA-link instance (1..255, default 50); `check` reports the ones other routers use.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
        vrid: Option<u8>,
        /// How this node manages services.
        #[arg(long, value_enum, default_value_t = BackendArg::Initd)]
        service_backend: BackendArg,
    },
    /// Make this node the backup: authorize the primary's key for the sync command only. Prints this node's host-key fingerprint for `pair`.
    InitBackup {
        /// The dedicated HA interface (same name as on the primary).
        #[arg(long, value_name = "IF")]
        ha_interface: String,
        /// The primary's address on the HA link.
        #[arg(long, value_name = "ADDR")]
        peer: Ipv4Addr,
        /// The public key line printed by init-primary.
        #[arg(long, value_name = "KEY")]
        primary_key: String,
        /// How this node manages services.
        #[arg(long, value_enum, default_value_t = BackendArg::Initd)]
        service_backend: BackendArg,
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
    AddLan {
        #[arg(long, value_name = "IF")]
        interface: String,
        /// A VIP in the LAN subnet, e.g. 192.168.1.254/24. Repeatable.
        #[arg(long = "vip", value_name = "CIDR")]
        vips: Vec<String>,
        /// VRRP router id of this LAN's instance (1..255, unique in the cluster; default: the next free one). `check` reports the ones other routers on the LAN use.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
        vrid: Option<u8>,
    },
    /// Remove a LAN interface and its VIPs from the cluster.
    RemoveInterface {
        #[arg(long, value_name = "IF")]
        interface: String,
    },
    /// Add a VIP to a LAN interface of the cluster.
    AddVip {
        #[arg(long, value_name = "IF")]
        interface: String,
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
    /// Undo everything init did on this node (keys, authorization, configs); the node can be paired again.
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

/// Everything a command needs about the node it runs on.
pub struct Ctx<'a> {
    pub root: NodeRoot,
    pub runner: &'a dyn CommandRunner,
}

/// Parse a VIP argument; IPv6 and malformed prefixes are refused with the fix.
pub fn parse_vip(s: &str) -> Result<Ipv4Cidr> {
    s.parse()
}

/// Run one parsed command.
pub fn run(cli: Cli, runner: &dyn CommandRunner) -> Result<Report> {
    let ctx = Ctx {
        root: NodeRoot::from_arg_or_env(cli.global.root.as_deref())?,
        runner,
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
            service_backend,
        } => pairing::init_primary(
            &ctx,
            &pairing::PrimaryInit {
                ha_interface,
                peer,
                heartbeat_vip,
                ssh_port,
                advert_interval_ms,
                vrid,
                service_backend: service_backend.into(),
            },
        ),
        Command::InitBackup {
            ha_interface,
            peer,
            primary_key,
            service_backend,
        } => pairing::init_backup(
            &ctx,
            &ha_interface,
            peer,
            &primary_key,
            service_backend.into(),
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
        Command::RemoveInterface { interface } => edit::remove_interface(&ctx, &interface),
        Command::AddVip { interface, vip } => edit::add_vip(&ctx, &interface, &vip),
        Command::RemoveVip { vip } => edit::remove_vip(&ctx, &vip),
        Command::ShowConfig => edit::show_config(&ctx),
        Command::Enable => edit::set_enabled(&ctx, true),
        Command::Disable => edit::set_enabled(&ctx, false),
        Command::Reset { yes } => pairing::reset(&ctx, yes),
    }
}

/// The whole program: parse, run, print the result or the error once, exit with its code.
pub fn main_with_args<I: IntoIterator<Item = OsString>>(args: I) -> ExitCode {
    cli::main("ns-ha-init", args, |cli: Cli| run(cli, &SystemRunner))
}

impl cli::ToolCli for Cli {
    fn global(&self) -> &GlobalArgs {
        &self.global
    }
}
