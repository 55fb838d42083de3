//! The roles section of the cluster config: what a node runs in each
//! keepalived state (MASTER, BACKUP, FAULT/STOP) and what it does after a sync
//! arrived on the backup (SYNC-APPLIED).
//!
//! It is data, not hook scripts, so the role engine (`ns-ha-role`) can diff
//! it against what the node really runs and converge, and so it travels to
//! the backup with the cluster config. The defaults cover every feature of
//! the product (DHCP/DNS, VPNs, multi-WAN, IPS, threat shield, DPI, hotspot,
//! DDNS, controller agent, ACME, reverse proxy); a service whose init script
//! is not installed on a node is skipped, so one default set fits every node.

use anyhow::Result;

/// Prefix the role engine puts before a crontab line it disabled. The sync
/// treats it as annotation, not content (see [`strip_cron_markers`]).
pub const CRON_DISABLED_MARKER: &str = "#ns-ha-disabled# ";

/// A crontab as the sync compares it: without the role engine's markers.
/// The backup keeps master-only jobs disabled in the same synced file; without
/// this, every backup would look locally edited and block plain pushes.
pub fn strip_cron_markers(text: &[u8]) -> Vec<u8> {
    let marker = CRON_DISABLED_MARKER.as_bytes();
    let mut out = Vec::with_capacity(text.len());
    for line in text.split_inclusive(|b| *b == b'\n') {
        out.extend_from_slice(line.strip_prefix(marker).unwrap_or(line));
    }
    out
}
use serde::{Deserialize, Serialize};

use crate::exit::{fail, Code};
use crate::root::NodeRoot;

/// Services only the active node runs: started on MASTER, stopped otherwise.
/// Names of the OpenWrt/NethSecurity init scripts (systemd: unit names).
pub const MASTER_ONLY_SERVICES: &[&str] = &[
    "dnsmasq",    // DHCP and DNS
    "openvpn",    // OpenVPN (road warrior and tunnels)
    "swanctl",    // IPsec (strongSwan, NethSecurity)
    "ipsec",      // IPsec (strongSwan, legacy init script)
    "strongswan", // IPsec (strongSwan, Debian's charon-systemd unit)
    "mwan3",      // multi-WAN
    "snort",      // IPS
    "adblock",    // threat shield DNS
    "banip",      // threat shield IP
    "dedalo",     // hotspot
    "netifyd",    // DPI
    "ddns",       // dynamic DNS
    "ns-plug",    // controller agent
    "acme",       // ACME certificates
];

/// Services reloaded on MASTER (they run on both nodes, the active one must
/// pick up what only it serves): nginx is the web UI and the reverse proxy.
pub const MASTER_RELOADS: &[&str] = &["nginx"];

/// Tunnel interfaces (VPNs) up on MASTER, down otherwise. A trailing `*`
/// matches a prefix. WAN links that carry a VIP must stay up on both nodes
/// (keepalived tracks them), so no WAN is listed by default; WANs with static
/// addresses keepalived does not own can be added here.
pub const VPN_LINKS: &[&str] = &["wg*", "tun*", "tap*", "xfrm*"];

/// Substrings of crontab lines of jobs only the active node runs: ACME
/// renewals, rule and list updates, senders to the controller and the
/// portal (heartbeat, backup, inventory, reports), package updates.
pub const MASTER_CRON_JOBS: &[&str] = &[
    "acme",
    "send-heartbeat",
    "send-backup",
    "remote-backup",
    "send-inventory",
    "send-phonehome",
    "ns-report",
    "update-packages",
    "snort-rules",
    "adblock",
    "banip",
    "ns-plug",
];

/// Services reloaded on the backup after a sync, with the node paths whose
/// change calls for the reload (empty: always).
pub const SYNC_RELOADS: &[(&str, &[&str])] = &[
    ("firewall", &["/etc/config/firewall", "/etc/firewall.user"]),
    ("system", &["/etc/config/system"]),
    ("sshd", &["/etc/ssh/"]),
    ("dropbear", &["/etc/config/dropbear"]),
    ("qosify", &["/etc/config/qosify"]),
    ("snmpd", &["/etc/config/snmpd"]),
    ("netmap", &["/etc/config/netmap"]),
    ("rpcd", &["/etc/config/rpcd"]),
];

/// A conntrackd command the role engine runs, in order, after making sure
/// conntrackd runs (`conntrackd -C CONF -c|-f|-R|-B|-t|-n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConntrackdCommand {
    /// `-c`: commit the external cache (the peer's connections) to the kernel.
    Commit,
    /// `-f`: flush the internal and external caches.
    Flush,
    /// `-R`: resync the internal cache with the kernel table.
    Resync,
    /// `-B`: send a bulk update to the peer.
    BulkSend,
    /// `-t`: shorten the kernel timers of the connections this node no longer forwards.
    ShortenTimers,
    /// `-n`: ask the peer for a full resync.
    RequestResync,
}

impl ConntrackdCommand {
    pub fn flag(self) -> &'static str {
        match self {
            ConntrackdCommand::Commit => "-c",
            ConntrackdCommand::Flush => "-f",
            ConntrackdCommand::Resync => "-R",
            ConntrackdCommand::BulkSend => "-B",
            ConntrackdCommand::ShortenTimers => "-t",
            ConntrackdCommand::RequestResync => "-n",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConntrackdCommand::Commit => "commit",
            ConntrackdCommand::Flush => "flush",
            ConntrackdCommand::Resync => "resync",
            ConntrackdCommand::BulkSend => "bulk-send",
            ConntrackdCommand::ShortenTimers => "shorten-timers",
            ConntrackdCommand::RequestResync => "request-resync",
        }
    }
}

/// A service reloaded once per transition (or per sync), if it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reload {
    pub service: String,
    /// Only when a sync changed one of these node paths (a trailing `/` is a
    /// directory); empty: always.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when_changed: Vec<String>,
}

/// The desired state of a node in one keepalived state.
///
/// `start`/`stop`, `cron_enable`/`cron_disable` and `links_up`/`links_down`
/// are states (checked and converged on every pass); `reload`,
/// `conntrackd` and `push_sync` are done once per transition, retried until
/// they succeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RoleSpec {
    /// Services that must run.
    pub start: Vec<String>,
    /// Services that must not run.
    pub stop: Vec<String>,
    /// Services reloaded once (skipped when not running).
    pub reload: Vec<Reload>,
    /// Crontab lines containing one of these are enabled.
    pub cron_enable: Vec<String>,
    /// Crontab lines containing one of these are commented out (with a marker).
    pub cron_disable: Vec<String>,
    /// Interfaces set up (a trailing `*` matches a prefix; missing ones are skipped).
    pub links_up: Vec<String>,
    /// Interfaces set down (never the HA link or an HA LAN).
    pub links_down: Vec<String>,
    /// conntrackd commands, in order; conntrackd is started first if it does not run.
    pub conntrackd: Vec<ConntrackdCommand>,
    /// Push the config to the peer (`ns-ha-sync push`); only the primary does.
    pub push_sync: bool,
}

/// Role settings, part of `cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoleSettings {
    /// Timeout of each action (one service start, one conntrackd command), in milliseconds.
    pub action_timeout_ms: u64,
    /// The crontab whose jobs the roles enable and disable (node path).
    pub crontab: String,
    /// Cross-check keepalived events with the VIPs this node really holds
    /// (events from concurrent notify scripts arrive out of order).
    pub check_vips: bool,
    /// How many transitions the history keeps.
    pub history_limit: usize,
    pub master: RoleSpec,
    pub backup: RoleSpec,
    /// FAULT and STOP.
    pub fault: RoleSpec,
    /// On a non-MASTER node after `ns-ha-sync` applied a sync.
    pub sync_applied: RoleSpec,
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn reloads(list: &[&str]) -> Vec<Reload> {
    list.iter()
        .map(|s| Reload {
            service: s.to_string(),
            when_changed: Vec::new(),
        })
        .collect()
}

impl Default for RoleSettings {
    fn default() -> Self {
        use ConntrackdCommand::*;
        let passive = RoleSpec {
            stop: strings(MASTER_ONLY_SERVICES),
            cron_disable: strings(MASTER_CRON_JOBS),
            links_down: strings(VPN_LINKS),
            ..RoleSpec::default()
        };
        RoleSettings {
            action_timeout_ms: 30_000,
            crontab: "/etc/crontabs/root".into(),
            check_vips: true,
            history_limit: 200,
            master: RoleSpec {
                start: strings(MASTER_ONLY_SERVICES),
                reload: reloads(MASTER_RELOADS),
                cron_enable: strings(MASTER_CRON_JOBS),
                links_up: strings(VPN_LINKS),
                conntrackd: vec![Commit, Flush, Resync, BulkSend],
                push_sync: true,
                ..RoleSpec::default()
            },
            backup: RoleSpec {
                conntrackd: vec![ShortenTimers, RequestResync],
                ..passive.clone()
            },
            fault: RoleSpec {
                conntrackd: vec![ShortenTimers],
                ..passive.clone()
            },
            sync_applied: RoleSpec {
                reload: SYNC_RELOADS
                    .iter()
                    .map(|(s, paths)| Reload {
                        service: s.to_string(),
                        when_changed: strings(paths),
                    })
                    .collect(),
                // The synced crontab carries the master's enabled jobs.
                cron_disable: strings(MASTER_CRON_JOBS),
                stop: strings(MASTER_ONLY_SERVICES),
                ..RoleSpec::default()
            },
        }
    }
}

impl RoleSettings {
    /// The spec of each state, with its name, for checks and listings.
    pub fn specs(&self) -> [(&'static str, &RoleSpec); 4] {
        [
            ("master", &self.master),
            ("backup", &self.backup),
            ("fault", &self.fault),
            ("sync_applied", &self.sync_applied),
        ]
    }

    /// Check the rules a valid roles section follows. `protected_links` are
    /// interfaces keepalived tracks (HA link, HA LANs): setting them down
    /// would put the node in FAULT.
    pub fn validate(&self, protected_links: &[&str]) -> Result<()> {
        let err = |m: String| fail(Code::Config, format!("roles: {m}"));
        if !(100..=3_600_000).contains(&self.action_timeout_ms) {
            return Err(err(format!(
                "action_timeout_ms {} is out of range: use 100..3600000",
                self.action_timeout_ms
            )));
        }
        crate::sync_config::check_node_path("roles.crontab", &self.crontab)?;
        if self.history_limit == 0 {
            return Err(err("history_limit must be at least 1".into()));
        }
        for (state, spec) in self.specs() {
            let services = spec
                .start
                .iter()
                .chain(&spec.stop)
                .chain(spec.reload.iter().map(|r| &r.service));
            for s in services {
                if s.is_empty()
                    || s.starts_with('.')
                    || !s
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
                {
                    return Err(err(format!("{state}: '{s}' is not a valid service name")));
                }
            }
            if let Some(s) = spec.start.iter().find(|s| spec.stop.contains(s)) {
                return Err(err(format!(
                    "{state}: service {s} is listed in both start and stop"
                )));
            }
            for p in spec.cron_enable.iter().chain(&spec.cron_disable) {
                if p.trim().is_empty() || p.contains('\n') {
                    return Err(err(format!("{state}: empty cron pattern")));
                }
            }
            for l in spec.links_up.iter().chain(&spec.links_down) {
                let name = l.strip_suffix('*').unwrap_or(l);
                if !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
                    || (name.is_empty() && !l.ends_with('*'))
                {
                    return Err(err(format!("{state}: '{l}' is not an interface name")));
                }
            }
            for l in &spec.links_down {
                if let Some(p) = protected_links.iter().find(|p| link_matches(l, p)) {
                    return Err(err(format!(
                        "{state}: links_down '{l}' matches {p}, which keepalived tracks: setting it down would put the node in FAULT"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Config files a service needs before it can start, any one of them
/// (node paths; a trailing `/` is a directory): Debian's and the lab's
/// file, then OpenWrt's UCI file the init script renders from. Services not
/// listed are not checked.
pub const SERVICE_CONFIGS: &[(&str, &[&str])] = &[
    // OpenWrt's package ships /etc/dnsmasq.conf too, next to /etc/config/dhcp.
    ("dnsmasq", &["/etc/dnsmasq.conf"]),
    ("openvpn", &["/etc/openvpn/", "/etc/config/openvpn"]),
    ("swanctl", &["/etc/swanctl/swanctl.conf"]),
    ("ipsec", &["/etc/ipsec.conf"]),
    ("strongswan", &["/etc/swanctl/swanctl.conf"]),
    ("mwan3", &["/etc/config/mwan3"]),
    ("snort", &["/etc/config/snort"]),
    ("adblock", &["/etc/config/adblock"]),
    ("banip", &["/etc/config/banip"]),
    ("dedalo", &["/etc/config/dedalo"]),
    ("netifyd", &["/etc/netifyd.conf"]),
    ("ddns", &["/etc/config/ddns"]),
    ("ns-plug", &["/etc/config/ns-plug"]),
    ("acme", &["/etc/config/acme"]),
];

/// A service the MASTER role starts, installed on this node, with none of
/// its config files: its start fails on every takeover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnconfiguredService {
    pub service: String,
    /// The files it needs (any one of them), node paths.
    pub wants: Vec<String>,
}

impl UnconfiguredService {
    /// The problem and its fix in one line, for `check`.
    pub fn message(&self) -> String {
        format!(
            "{} is started on MASTER (roles.master.start) but has no config here: {}",
            self.service,
            self.fix()
        )
    }

    /// What to do about it, for `doctor` and `check`.
    pub fn fix(&self) -> String {
        format!(
            "create {} on the primary (the sync copies it to the backup), or remove {} from roles.master.start in cluster.json",
            self.wants.join(" or "),
            self.service
        )
    }
}

/// The master-only services of `roles` that `installed` says are on this
/// node but have no config file under `root` (one implementation for
/// `ns-ha-check doctor` and `ns-ha-init check`).
pub fn unconfigured_master_services(
    roles: &RoleSettings,
    root: &NodeRoot,
    installed: &dyn Fn(&str) -> bool,
) -> Vec<UnconfiguredService> {
    roles
        .master
        .start
        .iter()
        .filter_map(|s| {
            let (_, files) = SERVICE_CONFIGS.iter().find(|(name, _)| name == s)?;
            let present = files.iter().any(|f| {
                let p = root.path(f);
                if f.ends_with('/') {
                    p.is_dir()
                } else {
                    p.is_file()
                }
            });
            (!present && installed(s)).then(|| UnconfiguredService {
                service: s.clone(),
                wants: files.iter().map(|f| f.to_string()).collect(),
            })
        })
        .collect()
}

/// Whether interface `name` matches `pattern` (exact, or prefix with a trailing `*`).
pub fn link_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let r = RoleSettings::default();
        r.validate(&["ha0", "lan0", "wan0"]).unwrap();
        let text = serde_json::to_string(&r).unwrap();
        let back: RoleSettings = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        assert!(r.master.start.contains(&"dnsmasq".to_string()));
        assert!(r.backup.stop.contains(&"dnsmasq".to_string()));
        assert_eq!(r.fault.conntrackd, vec![ConntrackdCommand::ShortenTimers]);
    }

    #[test]
    fn partial_section_keeps_defaults_and_rejects_typos() {
        let r: RoleSettings =
            serde_json::from_str(r#"{"master": {"start": ["dnsmasq"]}}"#).unwrap();
        assert_eq!(r.master.start, vec!["dnsmasq"]);
        assert_eq!(r.backup, RoleSettings::default().backup);
        assert!(serde_json::from_str::<RoleSettings>(r#"{"mastr": {}}"#).is_err());
        assert!(serde_json::from_str::<RoleSettings>(r#"{"master": {"strat": []}}"#).is_err());
        let c: RoleSettings =
            serde_json::from_str(r#"{"backup": {"conntrackd": ["shorten-timers"]}}"#).unwrap();
        assert_eq!(c.backup.conntrackd, vec![ConntrackdCommand::ShortenTimers]);
    }

    #[test]
    fn refuses_to_take_down_tracked_links_and_bad_names() {
        let mut r = RoleSettings::default();
        r.backup.links_down.push("lan*".into());
        let e = r.validate(&["ha0", "lan0"]).unwrap_err();
        assert!(e.to_string().contains("keepalived tracks"), "{e}");
        let mut r = RoleSettings::default();
        r.master.start.push("../../bin/sh".into());
        assert!(r.validate(&[]).is_err());
        let mut r = RoleSettings::default();
        r.master.stop.push("dnsmasq".into());
        assert!(r.validate(&[]).is_err());
    }

    #[test]
    fn link_patterns() {
        assert!(link_matches("wg*", "wg0"));
        assert!(!link_matches("wg*", "wan0"));
        assert!(link_matches("wan0", "wan0"));
        assert!(!link_matches("wan0", "wan0.1"));
    }
}

#[cfg(test)]
mod configured_tests {
    use super::*;

    #[test]
    fn installed_master_services_without_config_are_named() {
        let d = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(d.path()).unwrap();
        let roles = RoleSettings::default();
        let only_dnsmasq = |s: &str| s == "dnsmasq";
        let u = unconfigured_master_services(&roles, &root, &only_dnsmasq);
        assert_eq!(
            u,
            vec![UnconfiguredService {
                service: "dnsmasq".into(),
                wants: vec!["/etc/dnsmasq.conf".into()],
            }]
        );
        assert!(u[0]
            .fix()
            .starts_with("create /etc/dnsmasq.conf on the primary"));
        // OpenWrt's UCI file does not replace it.
        std::fs::create_dir_all(root.path("/etc/config")).unwrap();
        std::fs::write(root.path("/etc/config/dhcp"), "").unwrap();
        assert_eq!(
            unconfigured_master_services(&roles, &root, &only_dnsmasq).len(),
            1
        );
        std::fs::write(root.path("/etc/dnsmasq.conf"), "").unwrap();
        assert!(unconfigured_master_services(&roles, &root, &only_dnsmasq).is_empty());
        // Where a service has two possible configs, either is enough.
        let openvpn = |s: &str| s == "openvpn";
        assert_eq!(
            unconfigured_master_services(&roles, &root, &openvpn)[0]
                .wants
                .len(),
            2
        );
        std::fs::write(root.path("/etc/config/openvpn"), "").unwrap();
        assert!(unconfigured_master_services(&roles, &root, &openvpn).is_empty());
        std::fs::remove_file(root.path("/etc/config/openvpn")).unwrap();
        // Not installed, or not started by MASTER: not named.
        let names: Vec<String> = unconfigured_master_services(&roles, &root, &|s| s == "mwan3")
            .into_iter()
            .map(|u| u.service)
            .collect();
        assert_eq!(names, vec!["mwan3"]);
        let mut none = roles.clone();
        none.master.start.retain(|s| s != "mwan3");
        assert!(unconfigured_master_services(&none, &root, &|s| s == "mwan3").is_empty());
        // A directory config needs the directory.
        std::fs::write(root.path("/etc/openvpn"), "").unwrap();
        assert_eq!(
            unconfigured_master_services(&roles, &root, &|s| s == "openvpn").len(),
            1
        );
    }
}

#[cfg(test)]
mod marker_tests {
    use super::*;

    #[test]
    fn markers_are_stripped_only_at_line_starts() {
        let marked =
            b"#ns-ha-disabled# 0 3 * * * acme\n# keep #ns-ha-disabled# here\n*/5 * * * * x";
        assert_eq!(
            strip_cron_markers(marked),
            b"0 3 * * * acme\n# keep #ns-ha-disabled# here\n*/5 * * * * x".to_vec()
        );
        assert_eq!(strip_cron_markers(b""), Vec::<u8>::new());
    }
}
