//! The sync section of the cluster config: what `ns-ha-sync` copies from the
//! primary to the backup. Kept in its own module because the sync tool owns
//! its rules; the cluster config only embeds them.
//!
//! The sync set is data, not code: per-profile default lists (an
//! OpenWrt/NethSecurity node, a plain Debian node), the administrator's
//! includes and excludes, and a hard-coded list of paths that no rule can ever
//! bring into the sync set (the HA pairing itself: copying it would break the
//! pair or hand the backup's identity to the primary).

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::exit::{fail, Code};
use crate::NodeRoot;

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
    /// cache, status). It must be on persistent storage, or the journal of an
    /// apply cut by a power loss is lost with it: on OpenWrt, where `/var` is
    /// a tmpfs, `ns-ha-init` puts it on flash ([`OPENWRT_STATE_DIR`]) and
    /// `ns-ha-init check` fails for one on a tmpfs. Synced files on other
    /// filesystems are staged on theirs (see ns-ha-sync/README.md).
    pub state_dir: String,
    /// A push whose local manifest did not change since the last successful
    /// push returns at once without contacting the backup, unless that push is
    /// older than this many seconds (then the backup is checked again): the
    /// bound on how long an edit made on the backup goes unreported by `push`.
    pub peer_recheck_secs: u64,
    /// How long `ns-ha-role sync-applied` may run on the backup after an apply.
    pub hook_timeout_secs: u64,
}

/// Default [`SyncSettings::state_dir`].
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ns-ha/sync";

/// [`SyncSettings::state_dir`] on an OpenWrt layout (`platform::Layout`),
/// where `/var` is a tmpfs: on flash and never synced, so that the
/// generation, the baseline and the journal of an apply survive a reboot
/// (and a sysupgrade: the layout keeps it).
pub const OPENWRT_STATE_DIR: &str = "/etc/ns-ha-sync";

/// The name of the RAM filesystem (`tmpfs`, `ramfs`) that `state_dir` (or
/// its nearest existing parent) is on, if it is on one: there the journal
/// of an apply is lost at a reboot, and an apply cut by a power loss can
/// no longer be completed.
pub fn state_dir_in_ram(root: &NodeRoot, state_dir: &str) -> Result<Option<&'static str>> {
    use nix::sys::statfs::statfs;
    // linux/magic.h (nix does not name ramfs'); compared as u32, the width
    // of the magic on every target, 32-bit OpenWrt ones included.
    const TMPFS_MAGIC: u32 = 0x0102_1994;
    const RAMFS_MAGIC: u32 = 0x8584_58f6;
    let path = root.path(state_dir);
    let existing = path.ancestors().find(|a| a.exists()).unwrap_or(root.base());
    let fs = statfs(existing).map_err(|e| {
        fail(
            Code::Failure,
            format!(
                "cannot inspect the filesystem of {}: {e}",
                existing.display()
            ),
        )
    })?;
    Ok(match fs.filesystem_type().0 as u32 {
        TMPFS_MAGIC => Some("tmpfs"),
        RAMFS_MAGIC => Some("ramfs"),
        _ => None,
    })
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            profile: SyncProfile::Auto,
            include: Vec::new(),
            exclude: Vec::new(),
            state_dir: DEFAULT_STATE_DIR.into(),
            peer_recheck_secs: 60,
            hook_timeout_secs: 120,
        }
    }
}

impl SyncSettings {
    /// Check the rules valid sync settings follow, so a bad value is refused
    /// where it is entered instead of failing a later push: every pattern an
    /// absolute normalized node path, no include reaching the
    /// [`IDENTITY_FLOOR`] (exit 7), and `state_dir` outside the sync set.
    pub fn validate(&self) -> Result<()> {
        for p in &self.include {
            check_node_path("sync.include", p)?;
            check_floor(p)?;
        }
        for p in &self.exclude {
            check_node_path("sync.exclude", p)?;
        }
        check_node_path("sync.state_dir", &self.state_dir)?;
        if let Some(rule) = self.rule_reaching(&self.state_dir) {
            return Err(fail(
                Code::Config,
                format!(
                    "sync.state_dir {} is inside the sync set (rule {rule} syncs it or a path below it): \
                     put it where nothing is synced, e.g. {DEFAULT_STATE_DIR} or {OPENWRT_STATE_DIR} (never synced)",
                    self.state_dir
                ),
            ));
        }
        Ok(())
    }

    /// The include rule (a default of the profile, or of either profile for
    /// `auto`, or `sync.include`) that syncs `dir` or a path below it; `None`
    /// when `dir` lies under a never-sync path or no include reaches it.
    /// Conservative: excludes are not credited, since a more specific
    /// include can bring a path back.
    fn rule_reaching(&self, dir: &str) -> Option<String> {
        let dir: Vec<&str> = components(dir).collect();
        if never_synced().any(|(p, _)| pattern_covers(p, &dir)) {
            return None;
        }
        let defaults: Vec<&str> = match self.profile {
            SyncProfile::Auto => OPENWRT_DEFAULTS
                .iter()
                .chain(DEBIAN_DEFAULTS)
                .map(|(p, _)| *p)
                .collect(),
            p => profile_defaults(p).iter().map(|(p, _)| *p).collect(),
        };
        defaults
            .into_iter()
            .chain(self.include.iter().map(String::as_str))
            .find(|p| pattern_covers(p, &dir) || pattern_starts_below(p, &dir))
            .map(str::to_string)
    }
}

/// A node path as the config takes it: absolute, normalized (no empty, `.`
/// or `..` components, no trailing `/`), not `/` itself, no NUL.
pub fn check_node_path(field: &str, path: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(fail(
            Code::Config,
            format!("{field} '{path}' {why}: use an absolute path such as {DEFAULT_STATE_DIR}"),
        ))
    };
    if !path.starts_with('/') || path == "/" {
        return bad("is not an absolute path below /");
    }
    if path.contains('\0') || path.len() > 4096 {
        return bad("contains NUL or is too long");
    }
    for c in path[1..].split('/') {
        match c {
            "" => return bad("has an empty component (// or a trailing /)"),
            "." => return bad("contains '.'"),
            ".." => return bad("contains '..'"),
            _ => {}
        }
    }
    Ok(())
}

fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

/// Whether the rule `pattern` covers `path` (given as components): the path
/// itself or one of its ancestors matches.
pub fn pattern_covers(pattern: &str, path: &[&str]) -> bool {
    let pat: Vec<&str> = components(pattern).collect();
    pat.len() <= path.len() && pat.iter().zip(path).all(|(p, c)| glob_match(p, c))
}

/// Whether the rule `pattern` names a path strictly below `dir`.
fn pattern_starts_below(pattern: &str, dir: &[&str]) -> bool {
    let pat: Vec<&str> = components(pattern).collect();
    pat.len() > dir.len() && pat.iter().zip(dir).all(|(p, c)| glob_match(p, c))
}

/// Shell-style match of one path component: `*` any run, `?` one byte.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(pat: &[u8], s: &[u8]) -> bool {
        match pat.split_first() {
            None => s.is_empty(),
            Some((b'*', rest)) => (0..=s.len()).any(|i| go(rest, &s[i..])),
            Some((b'?', rest)) => !s.is_empty() && go(rest, &s[1..]),
            Some((c, rest)) => s.first() == Some(c) && go(rest, &s[1..]),
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// A default rule: a path pattern and why it is there.
pub type RuleData = (&'static str, &'static str);

/// The backup's identity floor: its SSH authorized keys (root's and
/// dropbear's), SSH host keys, ns-ha's own keys, pairing files and state.
/// Compiled in, with no setting to change it: the receiver never writes,
/// replaces or deletes anything here whatever the primary sends (its rules
/// put these first), and a cluster config whose `sync.include` reaches one of
/// these (at, below or above it) is refused with exit 7 wherever it enters
/// ([`SyncSettings::validate`], so `install-cluster` on the backup too). The
/// node's own `sync.state_dir` belongs to the floor as well (`validate` keeps
/// it outside the sync set, and the rules exclude it).
pub const IDENTITY_FLOOR: &[RuleData] = &[
    ("/etc/ns-ha", "ns-ha cluster and node config, pairing key"),
    ("/etc/ns-ha-sync", "ns-ha-sync state (when moved to flash)"),
    (
        "/var/lib/ns-ha",
        "ns-ha state (generation, journal, staging)",
    ),
    ("/run/ns-ha", "ns-ha runtime files"),
    (
        "/root/.ssh",
        "root's SSH keys and authorized keys (the pairing key of the sync channel)",
    ),
    (
        "/etc/dropbear",
        "SSH host keys and authorized keys of this node (dropbear)",
    ),
    ("/etc/ssh/ssh_host_*", "SSH host keys (pinned by the peer)"),
];

/// Never synced either, whatever the includes say, but not identity (an
/// include naming one is harmless and only listed as not synced): the HA
/// daemons' configs, rendered per node, and the node's network.
pub const NEVER_SYNC: &[RuleData] = &[
    ("/etc/keepalived", "keepalived config rendered per node"),
    ("/etc/conntrackd", "conntrackd config rendered per node"),
    ("/etc/config/keepalived", "HA config"),
    ("/etc/config/ns-ha", "HA config"),
    (
        "/etc/config/network",
        "per-node interfaces and addresses (never synced)",
    ),
];

/// Every path no rule can bring into the sync set: the identity floor, then
/// the per-node configs.
pub fn never_synced() -> impl Iterator<Item = &'static RuleData> {
    IDENTITY_FLOOR.iter().chain(NEVER_SYNC)
}

/// The floor entry that the include `pattern` reaches: it names a floor path,
/// something below one, or a directory above one (`/root`, `/etc/ssh`, `/*`),
/// wildcards on either side taken as possibly matching.
pub fn floor_reached_by(pattern: &str) -> Option<&'static RuleData> {
    let inc: Vec<&str> = components(pattern).collect();
    IDENTITY_FLOOR.iter().find(|(floor, _)| {
        components(floor)
            .zip(&inc)
            .all(|(f, i)| glob_match(f, i) || glob_match(i, f))
    })
}

/// Refuse an include that reaches the identity floor (exit 7, with the fix).
fn check_floor(include: &str) -> Result<()> {
    match floor_reached_by(include) {
        None => Ok(()),
        Some((floor, why)) => Err(fail(
            Code::Security,
            format!(
                "sync.include '{include}' reaches {floor} ({why}), which a backup never accepts from the primary: \
                 remove it, or include only the paths you need that lie outside it"
            ),
        )),
    }
}

/// WireGuard's wg-quick files, in both profiles: the tunnels that follow the
/// master and the endpoints the primary records for them (`wireguard.rs`).
const WIREGUARD_RULE: RuleData = (
    crate::wireguard::CONFIG_DIR,
    "WireGuard tunnels (wg-quick files) and their peers' last endpoints",
);

/// strongSwan's files, in both profiles: swanctl's tree (connections,
/// secrets, keys and certificates), the legacy starter's `ipsec.conf`,
/// `ipsec.secrets` and `ipsec.d` (and OpenWrt's `ipsec.user`), and the
/// daemon's own settings (`strongswan.conf`, `strongswan.d`: plugins, DPD
/// and retransmission timing). An IPsec tunnel configured on the primary
/// must start on the backup with the same secrets after a failover. Named
/// one by one: a pattern such as `/etc/ipsec.*` would make the sync walk
/// all of `/etc` to find its matches.
const STRONGSWAN_RULES: [RuleData; 7] = [
    ("/etc/swanctl", "IPsec tunnels (strongSwan swanctl)"),
    ("/etc/ipsec.conf", "IPsec tunnels (strongSwan starter)"),
    ("/etc/ipsec.secrets", "IPsec secrets (strongSwan starter)"),
    (
        "/etc/ipsec.d",
        "IPsec keys and certificates (strongSwan starter)",
    ),
    ("/etc/ipsec.user", "IPsec updown hook (OpenWrt strongSwan)"),
    ("/etc/strongswan.conf", "strongSwan daemon settings"),
    ("/etc/strongswan.d", "strongSwan daemon and plugin settings"),
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
    (
        "/etc/ppp/chap-secrets",
        "PPPoE passwords (CHAP) of an ifupdown-managed WAN",
    ),
    (
        "/etc/ppp/pap-secrets",
        "PPPoE passwords (PAP) of an ifupdown-managed WAN",
    ),
    WIREGUARD_RULE,
    STRONGSWAN_RULES[0],
    STRONGSWAN_RULES[1],
    STRONGSWAN_RULES[2],
    STRONGSWAN_RULES[3],
    STRONGSWAN_RULES[4],
    STRONGSWAN_RULES[5],
    STRONGSWAN_RULES[6],
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
    ("/etc/ppp/chap-secrets", "PPPoE WAN passwords (CHAP)"),
    ("/etc/ppp/pap-secrets", "PPPoE WAN passwords (PAP)"),
    WIREGUARD_RULE,
    STRONGSWAN_RULES[0],
    STRONGSWAN_RULES[1],
    STRONGSWAN_RULES[2],
    STRONGSWAN_RULES[3],
    STRONGSWAN_RULES[4],
    STRONGSWAN_RULES[5],
    STRONGSWAN_RULES[6],
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
    fn the_openwrt_state_dir_is_a_valid_state_dir() {
        assert_eq!(
            SyncSettings {
                state_dir: OPENWRT_STATE_DIR.into(),
                profile: SyncProfile::Openwrt,
                ..SyncSettings::default()
            }
            .validate()
            .map_err(|e| e.to_string()),
            Ok(())
        );
    }

    #[test]
    fn a_state_dir_on_a_tmpfs_is_recognized() {
        let disk = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let root = NodeRoot::new(disk.path()).unwrap();
        assert_eq!(
            state_dir_in_ram(&root, "/var/lib/ns-ha/sync").unwrap(),
            None
        );
        let shm = tempfile::tempdir_in("/dev/shm").expect("/dev/shm (a tmpfs) is needed");
        let root = NodeRoot::new(shm.path()).unwrap();
        assert_eq!(
            state_dir_in_ram(&root, "/var/lib/ns-ha/sync").unwrap(),
            Some("tmpfs")
        );
    }

    #[test]
    fn old_configs_without_new_fields_load() {
        let s: SyncSettings = serde_json::from_str(r#"{"include": ["/etc/x"]}"#).unwrap();
        assert_eq!(s.include, vec!["/etc/x"]);
        assert_eq!(s.state_dir, DEFAULT_STATE_DIR);
        assert!(serde_json::from_str::<SyncSettings>(r#"{"inclde": []}"#).is_err());
    }

    #[test]
    fn node_paths_must_be_absolute_and_normalized() {
        for bad in [
            "",
            "/",
            "etc/x",
            "/etc/../root",
            "/etc/./x",
            "/etc//x",
            "/etc/x/",
        ] {
            let e = check_node_path("f", bad).unwrap_err();
            assert_eq!(crate::exit::code_of(&e), Code::Config, "{bad}");
            assert!(e.to_string().starts_with(&format!("f '{bad}'")), "{e}");
        }
        check_node_path("f", "/etc/x").unwrap();
    }

    #[test]
    fn state_dir_is_checked_against_the_profile_and_includes() {
        let with = |profile, dir: &str, include: &[&str]| SyncSettings {
            profile,
            state_dir: dir.into(),
            include: include.iter().map(|s| s.to_string()).collect(),
            ..SyncSettings::default()
        };
        // /etc/config is an OpenWrt default only.
        assert!(with(SyncProfile::Openwrt, "/etc/config/s", &[])
            .validate()
            .is_err());
        assert!(with(SyncProfile::Auto, "/etc/config/s", &[])
            .validate()
            .is_err());
        with(SyncProfile::Debian, "/etc/config/s", &[])
            .validate()
            .unwrap();
        // Never-synced paths stay fine whatever the includes say...
        with(SyncProfile::Auto, "/etc/keepalived/s", &["/etc/keepalived"])
            .validate()
            .unwrap();
        // ...except that an include reaching the identity floor is refused itself.
        let e = with(SyncProfile::Auto, "/etc/ns-ha-sync", &["/etc/ns-ha-sync"])
            .validate()
            .unwrap_err();
        assert_eq!(crate::exit::code_of(&e), Code::Security, "{e}");
        with(SyncProfile::Auto, "/etc/ns-ha-sync", &[])
            .validate()
            .unwrap();
        // Wildcards in includes are matched per component.
        assert!(with(SyncProfile::None, "/srv/a/state", &["/srv/?"])
            .validate()
            .is_err());
        with(SyncProfile::None, "/srv/ab/state", &["/srv/?"])
            .validate()
            .unwrap();
        // A state dir that holds synced files is refused too.
        assert!(with(SyncProfile::None, "/srv", &["/srv/a/b"])
            .validate()
            .is_err());
        assert!(with(SyncProfile::None, "/srv/s", &["srv"])
            .validate()
            .is_err());
    }

    #[test]
    fn globs_match_one_component() {
        assert!(glob_match("ssh_host_*", "ssh_host_ed25519_key"));
        assert!(!glob_match("abc", "abcd"));
        assert!(!pattern_covers("/etc/*", &["etc"]));
        assert!(pattern_covers("/etc/*", &["etc", "x", "y"]));
    }

    #[test]
    fn defaults_never_name_a_hard_exclusion() {
        for (p, _) in OPENWRT_DEFAULTS.iter().chain(DEBIAN_DEFAULTS) {
            assert!(
                floor_reached_by(p).is_none() && !never_synced().any(|(n, _)| n == p),
                "{p} is both a default and never synced"
            );
        }
    }

    /// Issue 8 item 3: an include that reaches the backup's keys or identity
    /// is refused with exit 7 naming the floor path (before, `/root/.ssh`,
    /// `/etc/ssh/ssh_host_*` and `/etc/ns-ha` loaded fine and only the
    /// exact never-sync paths were carved out).
    #[test]
    fn includes_reaching_the_identity_floor_are_refused() {
        let with = |include: &str| SyncSettings {
            include: vec![include.to_string()],
            ..SyncSettings::default()
        };
        for (include, floor) in [
            ("/root/.ssh", "/root/.ssh"),
            ("/root/.ssh/known_hosts", "/root/.ssh"),
            ("/root", "/root/.ssh"),
            ("/root/*", "/root/.ssh"),
            ("/etc/ssh/ssh_host_*", "/etc/ssh/ssh_host_*"),
            ("/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_*"),
            ("/etc/ssh/*", "/etc/ssh/ssh_host_*"),
            ("/etc/ssh", "/etc/ssh/ssh_host_*"),
            ("/etc/ns-ha", "/etc/ns-ha"),
            ("/etc/ns-ha/node.json", "/etc/ns-ha"),
            ("/etc", "/etc/ns-ha"),
            ("/*", "/etc/ns-ha"),
            ("/etc/dropbear/authorized_keys", "/etc/dropbear"),
            ("/var/lib/ns-ha/sync", "/var/lib/ns-ha"),
        ] {
            let e = with(include).validate().expect_err(include);
            assert_eq!(crate::exit::code_of(&e), Code::Security, "{include}");
            assert!(
                e.to_string()
                    .starts_with(&format!("sync.include '{include}' reaches {floor} ")),
                "{e}"
            );
        }
        for fine in [
            "/etc/ssh/sshd_config",
            "/etc/config",
            "/root/scripts",
            "/etc/ns-ha-extra",
        ] {
            with(fine).validate().unwrap();
        }
    }
}
