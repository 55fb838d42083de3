//! The sync section of the cluster config: what `ns-ha-sync` copies from the
//! primary to the backup. Kept in its own module because the sync tool owns
//! its rules; the cluster config only embeds them.
//!
//! The sync set is data, not code: per-profile default lists (an
//! OpenWrt/NethSecurity node, a plain Debian node), the administrator's
//! includes and excludes, and a hard-coded list of paths that no rule can ever
//! bring into the sync set (the HA pairing itself: copying it would break the
//! pair or hand the backup's identity to the primary).

use serde::{Deserialize, Serialize};

/// Which default list applies to this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncProfile {
    /// `openwrt` when `/etc/openwrt_release` exists on the node, else `debian`.
    #[default]
    Auto,
    /// OpenWrt / NethSecurity: the system backup list plus the firewall's services.
    Openwrt,
    /// A plain Debian firewall (nftables, dnsmasq, OpenVPN, nginx).
    Debian,
    /// No defaults: only `include`.
    None,
}

impl SyncProfile {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncProfile::Auto => "auto",
            SyncProfile::Openwrt => "openwrt",
            SyncProfile::Debian => "debian",
            SyncProfile::None => "none",
        }
    }
}

/// Sync settings, part of `cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSettings {
    /// Default list to start from (`auto`, `openwrt`, `debian`, `none`).
    pub profile: SyncProfile,
    /// Extra paths to sync (absolute node paths, files or directories; `*` and
    /// `?` match within one path component).
    pub include: Vec<String>,
    /// Paths never to sync, even when a default or an include names them.
    pub exclude: Vec<String>,
    /// Where the sync keeps its state (generation, journal, staging, hash
    /// cache, status). Staging must be on the same filesystem as the synced
    /// files so that a rename makes them live: on OpenWrt, where `/var` is a
    /// tmpfs, point it at flash (e.g. `/etc/ns-ha-sync`, never synced).
    pub state_dir: String,
    /// A push whose local manifest did not change since the last successful
    /// push returns at once without contacting the backup, unless that push is
    /// older than this many seconds (then the backup is checked again).
    pub peer_recheck_secs: u64,
    /// How long `ns-ha-role sync-applied` may run on the backup after an apply.
    pub hook_timeout_secs: u64,
}

/// Default [`SyncSettings::state_dir`].
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ns-ha/sync";

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            profile: SyncProfile::Auto,
            include: Vec::new(),
            exclude: Vec::new(),
            state_dir: DEFAULT_STATE_DIR.into(),
            peer_recheck_secs: 300,
            hook_timeout_secs: 120,
        }
    }
}

/// A default rule: a path pattern and why it is there.
pub type RuleData = (&'static str, &'static str);

/// Never synced, whatever the includes say: the pairing, the HA daemons'
/// configs, the node's network, SSH identities, and ns-ha's own state.
pub const NEVER_SYNC: &[RuleData] = &[
    ("/etc/ns-ha", "ns-ha cluster and node config, pairing key"),
    ("/etc/ns-ha-sync", "ns-ha-sync state (when moved to flash)"),
    (
        "/var/lib/ns-ha",
        "ns-ha state (generation, journal, staging)",
    ),
    ("/run/ns-ha", "ns-ha runtime files"),
    ("/etc/keepalived", "keepalived config rendered per node"),
    ("/etc/conntrackd", "conntrackd config rendered per node"),
    ("/etc/config/keepalived", "HA config"),
    ("/etc/config/ns-ha", "HA config"),
    (
        "/etc/config/network",
        "per-node interfaces and addresses (never synced)",
    ),
    (
        "/root/.ssh/authorized_keys",
        "pairing key of the sync channel",
    ),
    ("/root/.ssh/authorized_keys2", "SSH authorized keys"),
    (
        "/etc/dropbear",
        "SSH host keys and authorized keys of this node",
    ),
    ("/etc/ssh/ssh_host_*", "SSH host keys (pinned by the peer)"),
];

/// OpenWrt / NethSecurity: the system backup list except the network and HA
/// configs, plus the firewall services' directories.
pub const OPENWRT_DEFAULTS: &[RuleData] = &[
    (
        "/etc/config",
        "uci configuration (firewall, dhcp, users, objects, snmpd, ddns, netmap, dedalo, ...)",
    ),
    ("/etc/passwd", "users"),
    ("/etc/group", "users"),
    ("/etc/shadow", "users"),
    ("/etc/crontabs", "cron jobs"),
    ("/etc/hosts", "static host names"),
    ("/etc/ethers", "static MAC-to-IP mappings"),
    ("/etc/rc.local", "local startup script"),
    ("/etc/sysctl.conf", "kernel settings"),
    ("/etc/sysupgrade.conf", "backup list additions"),
    ("/etc/firewall.user", "custom firewall rules"),
    ("/etc/nftables.d", "custom nftables rules"),
    ("/etc/luci-uploads", "files uploaded through the web UI"),
    ("/etc/acme", "ACME certificates"),
    ("/etc/ssl/acme", "ACME certificates"),
    ("/etc/openvpn", "OpenVPN servers and clients"),
    ("/etc/swanctl", "IPsec tunnels"),
    ("/etc/nginx", "web server and reverse proxy"),
    ("/etc/adblock", "threat shield DNS"),
    ("/etc/banip", "threat shield IP"),
    ("/etc/ts-backup", "threat shield backups"),
    ("/etc/netifyd", "DPI"),
    ("/etc/netify.d", "DPI"),
    ("/etc/snort", "IPS rules and config"),
    ("/tmp/dhcp.leases", "DHCP leases"),
    ("/etc/snmp", "SNMP"),
    ("/etc/ddns", "dynamic DNS"),
    ("/etc/msmtprc", "SMTP client"),
    ("/etc/backup.pass", "backup passphrase"),
    ("/etc/ns-plug", "controller agent"),
    ("/etc/modules.d/ns-nathelpers", "NAT helpers"),
    ("/etc/dedalo", "hotspot"),
];

/// A plain Debian firewall.
pub const DEBIAN_DEFAULTS: &[RuleData] = &[
    ("/etc/nftables.conf", "firewall rules"),
    ("/etc/nftables.d", "firewall rules"),
    ("/etc/dnsmasq.conf", "DHCP and DNS"),
    ("/etc/dnsmasq.d", "DHCP and DNS"),
    ("/var/lib/misc/dnsmasq.leases", "DHCP leases"),
    ("/etc/hosts", "static host names"),
    ("/etc/ethers", "static MAC-to-IP mappings"),
    ("/etc/openvpn", "OpenVPN"),
    ("/etc/swanctl", "IPsec tunnels"),
    ("/etc/nginx", "web server and reverse proxy"),
    ("/etc/letsencrypt", "ACME certificates"),
    ("/etc/snmp", "SNMP"),
    ("/etc/msmtprc", "SMTP client"),
    ("/etc/sysctl.d/90-ns-ha-local.conf", "kernel settings"),
];

/// The default list of a (resolved) profile.
pub fn profile_defaults(profile: SyncProfile) -> &'static [RuleData] {
    match profile {
        SyncProfile::Openwrt => OPENWRT_DEFAULTS,
        SyncProfile::Debian => DEBIAN_DEFAULTS,
        SyncProfile::Auto | SyncProfile::None => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_configs_without_new_fields_load() {
        let s: SyncSettings = serde_json::from_str(r#"{"include": ["/etc/x"]}"#).unwrap();
        assert_eq!(s.include, vec!["/etc/x"]);
        assert_eq!(s.state_dir, DEFAULT_STATE_DIR);
        assert!(serde_json::from_str::<SyncSettings>(r#"{"inclde": []}"#).is_err());
    }

    #[test]
    fn defaults_never_name_a_hard_exclusion() {
        for (p, _) in OPENWRT_DEFAULTS.iter().chain(DEBIAN_DEFAULTS) {
            assert!(
                !NEVER_SYNC.iter().any(|(n, _)| n == p),
                "{p} is both a default and never synced"
            );
        }
    }
}
