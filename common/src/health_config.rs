//! The health section of the cluster config: what tells whether a node can
//! serve as master, how often it is asked, and how a failure moves the VIPs.
//!
//! The checks are data, not scripts, so they travel to the backup with the
//! cluster config, are validated where every cluster config is validated,
//! and are listed by `ns-ha-check health --list`. `ns-ha-check monitor` runs
//! them and turns their verdict into a keepalived priority (see
//! [`target_priority`]); the rules for that live here, next to the numbers
//! they depend on (the VRRP priorities), so config validation and the
//! monitor cannot disagree.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::exit::{fail, Code};

/// Priority an unfit MASTER advertises: below any fit peer, above an unfit
/// one, so two nodes unhealthy in the same way keep the current master.
pub const UNFIT_MASTER_PRIORITY: u8 = 2;
/// Priority an unfit node that is not MASTER advertises (keepalived's lowest
/// without FAULT): it never preempts.
pub const UNFIT_BACKUP_PRIORITY: u8 = 1;

/// How health is checked and acted on. Every field has a default; an empty
/// section checks the cluster interfaces only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSettings {
    /// Whether the monitor moves the VIPs (writes the priority track file).
    /// false: it still checks, records and alerts, and writes 0.
    pub act: bool,
    /// Reachability probes: one round every period_ms per link.
    pub period_ms: u32,
    /// A probe without an answer within timeout_ms failed (<= period_ms).
    pub timeout_ms: u32,
    /// Consecutive failed rounds before a check is failing.
    pub fall: u32,
    /// Consecutive good rounds before a failing check is ok again.
    pub rise: u32,
    /// A node that gave up MASTER for health takes it back only after being
    /// healthy this long.
    pub hold_down_ms: u64,
    /// Period of the interface check (carrier and static address).
    pub link_period_ms: u32,
    /// Period of the service checks.
    pub service_period_ms: u32,
    /// Consecutive failed service rounds before a service is failing (a
    /// restart shorter than this moves nothing).
    pub service_fall: u32,
    /// Reachability checks, one per cluster link that has targets.
    pub links: Vec<LinkCheck>,
    /// Services of the master role whose death moves the VIPs.
    pub services: Vec<ServiceCheck>,
    /// Executable (a node path) run once per event with the event as JSON on
    /// stdin: failover, health check failing/recovered, sync failing/recovered.
    pub alert_hook: Option<String>,
    /// node_exporter textfile directory (a node path): the monitor rewrites
    /// `ns-ha.prom` there every 10 s.
    pub metrics_dir: Option<String>,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            act: true,
            period_ms: 100,
            timeout_ms: 100,
            fall: 3,
            rise: 5,
            hold_down_ms: 30_000,
            link_period_ms: 1000,
            service_period_ms: 1000,
            service_fall: 3,
            links: Vec::new(),
            services: Vec::new(),
            alert_hook: None,
            metrics_dir: None,
        }
    }
}

/// Can this node exchange packets on a link? ICMP echo to each target (the
/// kernel resolves them by ARP first): the link is ok while any answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkCheck {
    /// A cluster interface (the HA link or a LAN/WAN added with add-lan).
    pub interface: String,
    /// Hosts on (or behind) the link that answer ping: a switch, a server,
    /// the WAN gateway. At least one besides the peer, or a silent failure
    /// looks the same from both nodes and nothing can move.
    pub targets: Vec<Ipv4Addr>,
    /// Also count the peer's own address on this link as a target (a LAN:
    /// yes; a WAN gateway check: no, the peer does not route upstream).
    #[serde(default = "yes")]
    pub peer: bool,
}

fn yes() -> bool {
    true
}

/// A master-only service: its process runs and, where given, its port answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceCheck {
    /// Name for status, metrics and alerts (e.g. the init script's).
    pub name: String,
    /// `/proc/PID/comm` of the process that must run in this namespace.
    #[serde(default)]
    pub process: Option<String>,
    /// Address whose DNS server must answer a query (e.g. the LAN VIP:53).
    #[serde(default)]
    pub dns: Option<SocketAddrV4>,
    /// Address that must accept a TCP connection.
    #[serde(default)]
    pub tcp: Option<SocketAddrV4>,
}

impl HealthSettings {
    /// Check the section against the cluster's interfaces (`interfaces`) and
    /// the lower of the two VRRP priorities.
    /// `interfaces` are the cluster interfaces every node has up (HA, LANs,
    /// vip WANs); `takeover_wans` the WANs only the MASTER has up, whose
    /// checks count only on the MASTER (see the monitor's verdict).
    pub fn validate(
        &self,
        interfaces: &[&str],
        takeover_wans: &[&str],
        priority_backup: u8,
    ) -> Result<()> {
        let err = |m: String| fail(Code::Config, format!("health: {m}"));
        for (name, v, lo, hi) in [
            ("period_ms", self.period_ms, 10, 60_000),
            ("timeout_ms", self.timeout_ms, 10, 60_000),
            ("link_period_ms", self.link_period_ms, 100, 600_000),
            ("service_period_ms", self.service_period_ms, 100, 600_000),
            ("fall", self.fall, 1, 100),
            ("rise", self.rise, 1, 100),
            ("service_fall", self.service_fall, 1, 100),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err(err(format!("{name} {v} is out of range: use {lo}..{hi}")));
            }
        }
        if self.timeout_ms > self.period_ms {
            return Err(err(format!(
                "timeout_ms {} is longer than period_ms {}: use a timeout of at most one period",
                self.timeout_ms, self.period_ms
            )));
        }
        if self.hold_down_ms > 86_400_000 {
            return Err(err(format!(
                "hold_down_ms {} is out of range: use at most 86400000 (a day)",
                self.hold_down_ms
            )));
        }
        if self.act && priority_backup <= UNFIT_MASTER_PRIORITY {
            return Err(err(format!(
                "vrrp.priority_backup {priority_backup} leaves no room below it for an unhealthy node \
                 (priorities {UNFIT_BACKUP_PRIORITY} and {UNFIT_MASTER_PRIORITY}): use 3 or more"
            )));
        }
        for (i, l) in self.links.iter().enumerate() {
            let takeover = takeover_wans.contains(&l.interface.as_str());
            if !interfaces.contains(&l.interface.as_str()) && !takeover {
                return Err(err(format!(
                    "links: {} is not a cluster interface ({}): check an interface of the cluster",
                    l.interface,
                    interfaces
                        .iter()
                        .chain(takeover_wans)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            if takeover && l.peer {
                return Err(err(format!(
                    "links: {} is a takeover WAN, which the peer never has up: set \"peer\": false and give the gateway as a target",
                    l.interface
                )));
            }
            if self.links[..i].iter().any(|o| o.interface == l.interface) {
                return Err(err(format!(
                    "links: {} is listed twice: one entry per interface",
                    l.interface
                )));
            }
            if l.targets.is_empty() && !l.peer {
                return Err(err(format!(
                    "links: {} has no target and peer false: give targets or set peer true",
                    l.interface
                )));
            }
            if let Some(t) = l.targets.iter().find(|t| {
                t.is_unspecified() || t.is_broadcast() || t.is_multicast() || t.is_loopback()
            }) {
                return Err(err(format!(
                    "links: {}: target {t} is not a unicast host address: give a host that answers ping",
                    l.interface
                )));
            }
        }
        for (i, s) in self.services.iter().enumerate() {
            if s.name.is_empty()
                || !s
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
            {
                return Err(err(format!(
                    "services: '{}' is not a valid service name",
                    s.name
                )));
            }
            if self.services[..i].iter().any(|o| o.name == s.name) {
                return Err(err(format!(
                    "services: {} is listed twice: one entry per service",
                    s.name
                )));
            }
            if s.process.is_none() && s.dns.is_none() && s.tcp.is_none() {
                return Err(err(format!(
                    "services: {} checks nothing: give process, dns or tcp",
                    s.name
                )));
            }
            if let Some(p) = &s.process {
                // comm is at most 15 bytes.
                if p.is_empty() || p.len() > 15 || p.contains('/') {
                    return Err(err(format!(
                        "services: {}: process '{p}' is not a process name (1..15 characters, no '/')",
                        s.name
                    )));
                }
            }
        }
        for (field, v) in [
            ("alert_hook", &self.alert_hook),
            ("metrics_dir", &self.metrics_dir),
        ] {
            if let Some(p) = v {
                if !p.starts_with('/') || p.split('/').any(|c| c == "..") || p.contains('\0') {
                    return Err(err(format!(
                        "{field} '{p}' is not an absolute path: give one such as /usr/local/sbin/ns-ha-alert"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The reachability check of `interface`, if it has one.
    pub fn link(&self, interface: &str) -> Option<&LinkCheck> {
        self.links.iter().find(|l| l.interface == interface)
    }
}

/// The priority a node should advertise: its configured one when fit;
/// when unfit, [`UNFIT_MASTER_PRIORITY`] while it is MASTER (it yields to a
/// fit peer, but not to a peer as unfit as itself) and
/// [`UNFIT_BACKUP_PRIORITY`] otherwise (it never preempts).
pub fn target_priority(configured: u8, fit: bool, master: bool) -> u8 {
    match (fit, master) {
        (true, _) => configured,
        (false, true) => UNFIT_MASTER_PRIORITY,
        (false, false) => UNFIT_BACKUP_PRIORITY,
    }
}

/// The value for keepalived's health track file (weight 1): the offset that
/// turns `configured` into `target`.
pub fn track_value(configured: u8, target: u8) -> i32 {
    i32::from(target) - i32::from(configured)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(interface: &str, targets: &[&str]) -> LinkCheck {
        LinkCheck {
            interface: interface.into(),
            targets: targets.iter().map(|t| t.parse().unwrap()).collect(),
            peer: true,
        }
    }

    fn refusal(h: &HealthSettings) -> String {
        format!(
            "{:#}",
            h.validate(&["ha0", "lan0"], &[], 100)
                .expect_err("must be refused")
        )
    }

    #[test]
    fn a_takeover_wan_is_checked_toward_its_gateway_only() {
        let mut h = HealthSettings {
            links: vec![link("wan1", &["10.99.3.100"])],
            ..HealthSettings::default()
        };
        let e = format!(
            "{:#}",
            h.validate(&["ha0", "lan0"], &["wan1"], 100).unwrap_err()
        );
        assert!(
            e.contains("takeover WAN") && e.contains("\"peer\": false"),
            "{e}"
        );
        h.links[0].peer = false;
        h.validate(&["ha0", "lan0"], &["wan1"], 100).unwrap();
        // Not a WAN of the cluster at all: refused as before.
        assert!(h.validate(&["ha0", "lan0"], &[], 100).is_err());
    }

    #[test]
    fn defaults_are_valid_and_roundtrip() {
        let h = HealthSettings::default();
        h.validate(&["ha0"], &[], 100).unwrap();
        let v: HealthSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(v, h);
        let l: LinkCheck =
            serde_json::from_str(r#"{"interface":"lan0","targets":["10.99.1.100"]}"#).unwrap();
        assert!(l.peer, "peer defaults to true");
    }

    #[test]
    fn refuses_bad_values_with_the_field() {
        let mut h = HealthSettings {
            timeout_ms: 300,
            ..Default::default()
        };
        assert!(refusal(&h).contains("timeout_ms 300 is longer"));
        h = HealthSettings {
            fall: 0,
            ..Default::default()
        };
        assert!(refusal(&h).contains("fall 0 is out of range"));
        h = HealthSettings {
            links: vec![link("eth9", &["10.99.1.100"])],
            ..Default::default()
        };
        assert!(refusal(&h).contains("eth9 is not a cluster interface"));
        h.links = vec![link("lan0", &["10.99.1.100"]), link("lan0", &[])];
        assert!(refusal(&h).contains("listed twice"));
        h.links = vec![link("lan0", &["255.255.255.255"])];
        assert!(refusal(&h).contains("not a unicast host"));
        h.links = vec![LinkCheck {
            peer: false,
            ..link("lan0", &[])
        }];
        assert!(refusal(&h).contains("no target and peer false"));
        h.links.clear();
        h.services = vec![ServiceCheck {
            name: "dnsmasq".into(),
            process: None,
            dns: None,
            tcp: None,
        }];
        assert!(refusal(&h).contains("checks nothing"));
        h.services[0].process = Some("a/b".into());
        assert!(refusal(&h).contains("not a process name"));
        h.services.clear();
        h.alert_hook = Some("alert.sh".into());
        assert!(refusal(&h).contains("alert_hook 'alert.sh' is not an absolute"));
        let h = HealthSettings::default();
        let e = h.validate(&["ha0"], &[], 2).unwrap_err();
        assert!(format!("{e:#}").contains("priority_backup 2"), "{e:#}");
        assert_eq!(crate::exit::code_of(&e), Code::Config);
    }

    #[test]
    fn an_unfit_master_stays_above_an_unfit_backup_and_below_a_fit_one() {
        let fit_backup = target_priority(100, true, false);
        let unfit_master = target_priority(200, false, true);
        let unfit_backup = target_priority(100, false, false);
        assert!(unfit_master < fit_backup);
        assert!(unfit_master > unfit_backup);
        assert_eq!(target_priority(200, true, true), 200);
        assert_eq!(track_value(200, 2), -198);
        assert_eq!(track_value(100, 100), 0);
        // keepalived puts an instance in FAULT below -253: never reached.
        assert!(track_value(254, UNFIT_BACKUP_PRIORITY) > -254);
    }
}
