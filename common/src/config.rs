//! The cluster configuration model (`/etc/ns-ha/cluster.json`) and the
//! node-local state (`/etc/ns-ha/node.json`).
//!
//! `cluster.json` describes the pair symmetrically (both nodes' addresses,
//! VIPs, VRRP settings, sync set, role actions) and is the same on both
//! nodes: the primary edits it and installs it on the backup. `node.json`
//! holds what differs per node: its role, its peer, the pinned host key. Both
//! are versioned and reject unknown fields, so a typo is an error instead of a
//! silently ignored setting.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::exit::{fail, Code};
use crate::fsutil::atomic_write;
use crate::health_config::HealthSettings;
use crate::net::{check_ifname, Ipv4Cidr};
use crate::platform::{InterfaceManager, Layout, Platform, SshServer};
use crate::role_config::RoleSettings;
use crate::root::{paths, NodeRoot};
use crate::service::ServiceBackend;
use crate::sync_config::SyncSettings;
use crate::wan::{Ipv4Method, Wan, WanDevice};

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Which node this is, fixed at pairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Backup,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
        }
    }
    pub fn other(self) -> Role {
        match self {
            Role::Primary => Role::Backup,
            Role::Backup => Role::Primary,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The whole cluster, identical on both nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub schema_version: u32,
    /// Random identifier chosen by the primary at init; a node never accepts another cluster's data.
    pub cluster_id: String,
    /// Whether HA runs (keepalived started) on the nodes.
    pub enabled: bool,
    pub ha: HaLink,
    #[serde(default)]
    pub vrrp: VrrpSettings,
    #[serde(default)]
    pub lans: Vec<LanInterface>,
    #[serde(default)]
    pub ssh: SshSettings,
    #[serde(default)]
    pub sync: SyncSettings,
    #[serde(default)]
    pub roles: RoleSettings,
    /// Health checks, the monitor's failover rules, metrics and alerts.
    #[serde(default)]
    pub health: HealthSettings,
    /// Takeover WANs: defined once, up only on the MASTER (`ns-ha-init add-wan`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wans: Vec<Wan>,
}

/// The dedicated link between the two firewalls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaLink {
    pub interface: String,
    pub primary_address: Ipv4Cidr,
    /// Learned from the backup at pairing.
    #[serde(default)]
    pub backup_address: Option<Ipv4Cidr>,
    /// VRRPv3 refuses an instance without a VIP, so the HA-link heartbeat
    /// carries one /32 of the HA subnet that neither node uses.
    pub heartbeat_vip: Ipv4Addr,
}

/// VRRP (keepalived) settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VrrpSettings {
    /// Advertisement interval in milliseconds (VRRPv3: 10..=40950, a multiple of 10).
    pub advert_interval_ms: u32,
    /// VRID of the HA-link instance; LAN instances get their own, stored per LAN.
    pub vrid: u8,
    pub priority_primary: u8,
    pub priority_backup: u8,
    /// Whether the primary takes the VIPs back when it returns.
    pub preempt: bool,
}

impl Default for VrrpSettings {
    fn default() -> Self {
        VrrpSettings {
            // Chosen by measurement (docs/design.md, Heartbeat): the
            // shortest with 0 transitions in a 10-minute soak on saturated
            // cores with the health monitor running.
            advert_interval_ms: 50,
            vrid: 50,
            priority_primary: 200,
            priority_backup: 100,
            preempt: true,
        }
    }
}

/// Name of the keepalived VRRP instance of a LAN interface: the rendering
/// uses it, and validation refuses two LANs whose names map to one.
pub fn lan_instance(interface: &str) -> String {
    format!("lan_{}", interface.replace(['.', '-', '@'], "_"))
}

/// A LAN interface in the cluster, with its VIPs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanInterface {
    pub interface: String,
    pub vrid: u8,
    pub primary_address: Ipv4Cidr,
    pub backup_address: Ipv4Cidr,
    #[serde(default)]
    pub vips: Vec<Ipv4Cidr>,
    /// A WAN in `vip` mode (`add-wan --mode vip`): configured like a LAN,
    /// shown as a WAN.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wan: bool,
}

/// How the primary reaches the backup's sshd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshSettings {
    pub port: u16,
    pub user: String,
}

impl Default for SshSettings {
    fn default() -> Self {
        SshSettings {
            port: 22,
            user: "root".into(),
        }
    }
}

impl ClusterConfig {
    /// A fresh cluster description, created by the primary at init.
    pub fn new(
        cluster_id: String,
        ha_interface: String,
        primary_address: Ipv4Cidr,
        heartbeat_vip: Ipv4Addr,
    ) -> Self {
        ClusterConfig {
            schema_version: SCHEMA_VERSION,
            cluster_id,
            enabled: false,
            ha: HaLink {
                interface: ha_interface,
                primary_address,
                backup_address: None,
                heartbeat_vip,
            },
            vrrp: VrrpSettings::default(),
            lans: Vec::new(),
            ssh: SshSettings::default(),
            sync: SyncSettings::default(),
            roles: RoleSettings::default(),
            health: HealthSettings::default(),
            wans: Vec::new(),
        }
    }

    /// This node's HA-link address, by role.
    pub fn ha_address(&self, role: Role) -> Option<Ipv4Cidr> {
        match role {
            Role::Primary => Some(self.ha.primary_address),
            Role::Backup => self.ha.backup_address,
        }
    }

    pub fn priority(&self, role: Role) -> u8 {
        match role {
            Role::Primary => self.vrrp.priority_primary,
            Role::Backup => self.vrrp.priority_backup,
        }
    }

    pub fn lan(&self, interface: &str) -> Option<&LanInterface> {
        self.lans.iter().find(|l| l.interface == interface)
    }

    /// Every VIP of the cluster.
    pub fn all_vips(&self) -> Vec<Ipv4Cidr> {
        self.lans
            .iter()
            .flat_map(|l| l.vips.iter().copied())
            .collect()
    }

    /// The lowest VRID not used by the HA instance or any LAN.
    pub fn free_vrid(&self) -> Result<u8> {
        let used: BTreeSet<u8> = std::iter::once(self.vrrp.vrid)
            .chain(self.lans.iter().map(|l| l.vrid))
            .collect();
        (1..=255u8)
            .map(|d| self.vrrp.vrid.wrapping_add(d))
            .find(|v| *v != 0 && !used.contains(v))
            .ok_or_else(|| fail(Code::Config, "no free VRRP router id left"))
    }

    /// Check every rule a valid cluster follows. Errors say what and how to fix.
    pub fn validate(&self) -> Result<()> {
        let cfg_err = |m: String| fail(Code::Config, m);
        if self.schema_version != SCHEMA_VERSION {
            return Err(cfg_err(format!(
                "schema_version {} is not supported by this ns-ha (which reads {SCHEMA_VERSION}): upgrade ns-ha on this node",
                self.schema_version
            )));
        }
        if self.cluster_id.len() != 32 || !self.cluster_id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(cfg_err(format!(
                "cluster_id '{}' is not 32 hex digits: re-run ns-ha-init init-primary",
                self.cluster_id
            )));
        }
        check_ifname(&self.ha.interface)?;
        if let Some(b) = self.ha.backup_address {
            check_pair_addresses("HA link", &self.ha.primary_address, &b)?;
            if b.addr == self.ha.heartbeat_vip {
                return Err(cfg_err(format!(
                    "ha.heartbeat_vip {} is the backup's HA address: pick a free address of the HA subnet",
                    b.addr
                )));
            }
        }
        if !self
            .ha
            .primary_address
            .is_host_address(self.ha.heartbeat_vip)
            || self.ha.heartbeat_vip == self.ha.primary_address.addr
        {
            return Err(cfg_err(format!(
                "ha.heartbeat_vip {} is not a free host address of the HA subnet {}/{}",
                self.ha.heartbeat_vip,
                self.ha.primary_address.network(),
                self.ha.primary_address.prefix
            )));
        }
        let v = &self.vrrp;
        if !(10..=40950).contains(&v.advert_interval_ms) || !v.advert_interval_ms.is_multiple_of(10)
        {
            return Err(cfg_err(format!(
                "vrrp.advert_interval_ms {} is out of range: use a multiple of 10 between 10 and 40950",
                v.advert_interval_ms
            )));
        }
        for (name, p) in [
            ("priority_primary", v.priority_primary),
            ("priority_backup", v.priority_backup),
        ] {
            if !(1..=254).contains(&p) {
                return Err(cfg_err(format!(
                    "vrrp.{name} {p} is out of range: use 1..254"
                )));
            }
        }
        if v.priority_primary <= v.priority_backup {
            return Err(cfg_err(format!(
                "vrrp.priority_primary {} must be above priority_backup {}",
                v.priority_primary, v.priority_backup
            )));
        }
        if v.vrid == 0 {
            return Err(cfg_err(
                "vrrp.vrid 0 is out of range: use a VRRP router id in 1..255".into(),
            ));
        }
        let mut vips = BTreeSet::new();
        for (i, lan) in self.lans.iter().enumerate() {
            self.check_lan_against(lan, &self.lans[..i])?;
            check_pair_addresses(&lan.interface, &lan.primary_address, &lan.backup_address)?;
            for vip in &lan.vips {
                if !vips.insert(vip.addr) {
                    return Err(cfg_err(format!("VIP {} is configured twice", vip.addr)));
                }
            }
        }
        self.validate_wans()?;
        self.sync.validate()?;
        self.roles.validate(&self.tracked_interfaces())?;
        let takeover_wans: Vec<&str> = self.wans.iter().map(|w| w.interface.as_str()).collect();
        self.health.validate(
            &self.tracked_interfaces(),
            &takeover_wans,
            v.priority_backup,
        )?;
        Ok(())
    }

    /// The takeover WAN on `interface`.
    pub fn wan(&self, interface: &str) -> Option<&Wan> {
        self.wans.iter().find(|w| w.interface == interface)
    }

    /// The takeover WANs, each on its own and against the HA link, the LANs
    /// and each other (refused with the fix, exit 3).
    fn validate_wans(&self) -> Result<()> {
        for (i, w) in self.wans.iter().enumerate() {
            self.check_wan_against(w, &self.wans[..i])?;
        }
        Ok(())
    }

    /// Check a takeover WAN about to be added against the cluster as it is.
    pub fn check_new_wan(&self, wan: &Wan) -> Result<()> {
        self.check_wan_against(wan, &self.wans)
    }

    fn check_wan_against(&self, w: &Wan, others: &[Wan]) -> Result<()> {
        let bad = |m: String| Err(fail(Code::InvalidInput, m));
        w.validate()?;
        let name = &w.interface;
        let ha = &self.ha.interface;
        let mut names: Vec<&str> = vec![name.as_str()];
        names.extend(w.needed_devices());
        for n in &names {
            if *n == ha {
                let what = if *n == name.as_str() {
                    "a WAN".to_string()
                } else {
                    format!("under the {} WAN {name}", w.device.kind())
                };
                return bad(format!(
                    "the HA interface {ha} cannot be {what}: the HA link must be a physical interface of its own (no bond, bridge, VLAN or PPPoE on it)"
                ));
            }
            if self.lan(n).is_some() {
                return bad(format!(
                    "interface {n} is a LAN of the cluster: a WAN needs an interface of its own (remove-interface first to turn it into a WAN)"
                ));
            }
        }
        if let WanDevice::Pppoe { parent, .. } = &w.device {
            if let Some(p) = others.iter().find(|o| &o.interface == parent) {
                if !matches!(p.device, WanDevice::Physical | WanDevice::Vlan { .. }) {
                    return bad(format!(
                        "WAN {name}: PPPoE on the {} {parent} is not supported: put PPPoE on a physical or VLAN interface",
                        p.device.kind()
                    ));
                }
            }
        }
        let subnet = |c: &Ipv4Cidr| format!("{}/{}", c.network(), c.prefix);
        if let Some(Ipv4Method::Static { address, .. }) = &w.ipv4 {
            let mut taken: Vec<(String, Ipv4Cidr)> =
                vec![(format!("the HA link {ha}"), self.ha.primary_address)];
            taken.extend(
                self.lans
                    .iter()
                    .map(|l| (format!("LAN {}", l.interface), l.primary_address)),
            );
            for o in others {
                if let Some(Ipv4Method::Static { address, .. }) = &o.ipv4 {
                    taken.push((format!("WAN {}", o.interface), *address));
                }
            }
            for (what, c) in taken {
                if overlaps(address, &c) {
                    return bad(format!(
                        "WAN {name} (subnet {}) overlaps {what} (subnet {}): give the WAN the ISP's subnet",
                        subnet(address),
                        subnet(&c)
                    ));
                }
            }
        }
        for o in others {
            let theirs: Vec<&str> = std::iter::once(o.interface.as_str())
                .chain(o.needed_devices())
                .collect();
            if let Some(n) = names.iter().find(|n| theirs.contains(n)) {
                return bad(format!(
                    "interface {n} is already used by WAN {}: each WAN needs devices of its own",
                    o.interface
                ));
            }
            // Two default routes with one metric: ifupdown's second `ip
            // route add default` fails, pppd adds none.
            if w.has_default_route()
                && o.has_default_route()
                && w.metric.unwrap_or(0) == o.metric.unwrap_or(0)
            {
                return bad(format!(
                    "WAN {name}: its IPv4 default route would clash with WAN {}'s (both metric {}): give each WAN its own --metric N",
                    o.interface,
                    w.metric.unwrap_or(0)
                ));
            }
        }
        Ok(())
    }

    /// The interfaces keepalived tracks: the HA link and every HA LAN.
    pub fn tracked_interfaces(&self) -> Vec<&str> {
        std::iter::once(self.ha.interface.as_str())
            .chain(self.lans.iter().map(|l| l.interface.as_str()))
            .collect()
    }

    /// Check a LAN about to be added against the cluster as it is, before
    /// the backup is asked for its address (the primary's address decides
    /// the subnet): name, rendered instance name, subnet, VIPs.
    pub fn check_new_lan(&self, lan: &LanInterface) -> Result<()> {
        self.check_lan_against(lan, &self.lans)
    }

    /// The rules one LAN follows with respect to the HA link and `others`.
    fn check_lan_against(&self, lan: &LanInterface, others: &[LanInterface]) -> Result<()> {
        let bad = |m: String| Err(fail(Code::InvalidInput, m));
        check_ifname(&lan.interface)?;
        if lan.interface == self.ha.interface {
            return bad(format!(
                "LAN interface {} is the HA interface: give a LAN interface",
                lan.interface
            ));
        }
        let subnet = |c: &Ipv4Cidr| format!("{}/{}", c.network(), c.prefix);
        for vip in &lan.vips {
            if vip.addr == self.ha.heartbeat_vip {
                return bad(format!(
                    "VIP {} on {} is the HA link's heartbeat VIP (ha.heartbeat_vip): pick another address",
                    vip.addr, lan.interface
                ));
            }
        }
        if overlaps(&lan.primary_address, &self.ha.primary_address) {
            return bad(format!(
                "LAN {} (subnet {}) overlaps the HA subnet {} of {}: give the LAN a subnet of its own",
                lan.interface,
                subnet(&lan.primary_address),
                subnet(&self.ha.primary_address),
                self.ha.interface
            ));
        }
        if lan.vrid == 0 || lan.vrid == self.vrrp.vrid {
            return bad(format!(
                "LAN {} has VRID {}, which is 0 or the HA link's (vrrp.vrid): pick another VRID in 1..255 (add-lan --vrid)",
                lan.interface, lan.vrid
            ));
        }
        let instance = lan_instance(&lan.interface);
        for o in others {
            if o.vrid == lan.vrid {
                return bad(format!(
                    "LANs {} and {} both have VRID {}: pick another VRID in 1..255 (add-lan --vrid)",
                    o.interface, lan.interface, lan.vrid
                ));
            }
            if o.interface == lan.interface {
                return bad(format!(
                    "interface {} is listed twice: each LAN once",
                    lan.interface
                ));
            }
            if lan_instance(&o.interface) == instance {
                return bad(format!(
                    "LAN interfaces {} and {} both become keepalived instance {instance} \
                     ('.', '-' and '@' render as '_'): rename one of them",
                    o.interface, lan.interface
                ));
            }
            if overlaps(&lan.primary_address, &o.primary_address) {
                return bad(format!(
                    "LAN {} (subnet {}) overlaps LAN {} (subnet {}): give each LAN its own subnet",
                    lan.interface,
                    subnet(&lan.primary_address),
                    o.interface,
                    subnet(&o.primary_address)
                ));
            }
        }
        for vip in &lan.vips {
            check_vip(lan, vip)?;
        }
        Ok(())
    }
}

/// Whether two subnets share an address.
fn overlaps(a: &Ipv4Cidr, b: &Ipv4Cidr) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

fn check_pair_addresses(what: &str, primary: &Ipv4Cidr, backup: &Ipv4Cidr) -> Result<()> {
    if primary.addr == backup.addr {
        return Err(fail(
            Code::InvalidInput,
            format!(
                "{what}: both nodes have address {}: give each node its own",
                primary.addr
            ),
        ));
    }
    if !primary.contains(backup.addr) || primary.prefix != backup.prefix {
        return Err(fail(
            Code::InvalidInput,
            format!(
                "{what}: node addresses {primary} and {backup} are not in one subnet: put both nodes on the same network"
            ),
        ));
    }
    Ok(())
}

/// A VIP must be a host address of the LAN's subnet and differ from both nodes' addresses.
pub fn check_vip(lan: &LanInterface, vip: &Ipv4Cidr) -> Result<()> {
    let subnet = lan.primary_address;
    if vip.prefix != subnet.prefix || !subnet.is_host_address(vip.addr) {
        return Err(fail(
            Code::InvalidInput,
            format!(
                "VIP {vip} is not a host address of {}'s subnet {}/{}: pick a free address in that subnet with the same prefix",
                lan.interface,
                subnet.network(),
                subnet.prefix
            ),
        ));
    }
    if vip.addr == lan.primary_address.addr || vip.addr == lan.backup_address.addr {
        return Err(fail(
            Code::InvalidInput,
            format!(
                "VIP {} is a node's own address on {}: pick a free address",
                vip.addr, lan.interface
            ),
        ));
    }
    Ok(())
}

/// What differs per node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub schema_version: u32,
    pub role: Role,
    /// The peer's HA-link address.
    pub peer_address: Ipv4Addr,
    /// Primary: the backup's SSH host key, pinned at pairing.
    #[serde(default)]
    pub peer_host_key: Option<PinnedHostKey>,
    /// Backup: fingerprint of the primary's key authorized for the sync command.
    #[serde(default)]
    pub authorized_key_fingerprint: Option<String>,
    /// How this node starts and stops services (init.d scripts or systemd).
    #[serde(default)]
    pub service_backend: ServiceBackend,
    /// The node's platform (`ns-ha-init --platform`, detected by default);
    /// a node.json from before platforms is an OpenWrt-style node.
    #[serde(default)]
    pub platform: Platform,
    /// The SSH server that answers the primary on this node (detected at init).
    #[serde(default)]
    pub ssh_server: SshServer,
    /// What brings the WANs up here when not the platform's own
    /// (`ns-ha-init --interface-manager`; the lab's OpenWrt-style nodes use ifupdown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_manager: Option<InterfaceManager>,
}

impl NodeConfig {
    /// The interface manager that brings this node's takeover WANs up and down.
    pub fn interface_manager(&self) -> InterfaceManager {
        self.interface_manager
            .unwrap_or(self.layout().interface_manager)
    }

    /// The install layout of this node: its platform's paths and managers,
    /// with its SSH server.
    pub fn layout(&self) -> Layout {
        Layout::new(self.platform, self.ssh_server)
    }
}

/// A pinned SSH host key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedHostKey {
    /// e.g. `ssh-ed25519`.
    pub key_type: String,
    /// The key blob, base64 as in known_hosts.
    pub key_base64: String,
    /// `SHA256:...` as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
}

fn load_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str, fix: &str) -> Result<T> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(fail(
                Code::State,
                format!("{what} {} does not exist: {fix}", path.display()),
            ))
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_str(&text).map_err(|e| {
        fail(
            Code::Config,
            format!(
                "{what} {} is invalid: {e}: fix the file or restore it with ns-ha-init",
                path.display()
            ),
        )
    })
}

/// Load and validate `cluster.json`.
pub fn load_cluster(root: &NodeRoot) -> Result<ClusterConfig> {
    let path = root.path(paths::CLUSTER_CONFIG);
    let cfg: ClusterConfig = load_json(
        &path,
        "cluster config",
        "initialize this node with ns-ha-init init-primary (or pair it as backup)",
    )?;
    cfg.validate()
        .with_context(|| format!("cluster config {}", path.display()))?;
    Ok(cfg)
}

/// Load the cluster config if present, without failing when it is missing.
pub fn load_cluster_opt(root: &NodeRoot) -> Result<Option<ClusterConfig>> {
    if root.path(paths::CLUSTER_CONFIG).exists() {
        load_cluster(root).map(Some)
    } else {
        Ok(None)
    }
}

/// Validate and write `cluster.json` atomically (0600: it names the cluster secret id).
pub fn save_cluster(root: &NodeRoot, cfg: &ClusterConfig) -> Result<()> {
    cfg.validate()?;
    let mut text = serde_json::to_string_pretty(cfg)?;
    text.push('\n');
    atomic_write(&root.path(paths::CLUSTER_CONFIG), text.as_bytes(), 0o600)
}

/// Load `node.json`.
pub fn load_node(root: &NodeRoot) -> Result<NodeConfig> {
    let path = root.path(paths::NODE_CONFIG);
    let node: NodeConfig = load_json(
        &path,
        "node config",
        "initialize this node with ns-ha-init init-primary or init-backup",
    )?;
    if node.schema_version != SCHEMA_VERSION {
        return Err(fail(
            Code::Config,
            format!(
                "node config {}: schema_version {} is not supported (this ns-ha reads {SCHEMA_VERSION})",
                path.display(),
                node.schema_version
            ),
        ));
    }
    Ok(node)
}

pub fn load_node_opt(root: &NodeRoot) -> Result<Option<NodeConfig>> {
    if root.path(paths::NODE_CONFIG).exists() {
        load_node(root).map(Some)
    } else {
        Ok(None)
    }
}

pub fn save_node(root: &NodeRoot, node: &NodeConfig) -> Result<()> {
    let mut text = serde_json::to_string_pretty(node)?;
    text.push('\n');
    atomic_write(&root.path(paths::NODE_CONFIG), text.as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClusterConfig {
        crate::fixtures::sample_cluster()
    }

    #[test]
    fn round_trips_and_validates() {
        let c = sample();
        c.validate().unwrap();
        let text = serde_json::to_string(&c).unwrap();
        let back: ClusterConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn rejects_unknown_fields() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["lans"][0]["colour"] = "blue".into();
        let e = serde_json::from_value::<ClusterConfig>(v).unwrap_err();
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn rejects_bad_vips() {
        let mut c = sample();
        c.lans[0].vips = vec!["10.99.2.5/24".parse().unwrap()];
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not a host address"));
        c.lans[0].vips = vec!["10.99.1.2/24".parse().unwrap()];
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("node's own address"));
        c.lans[0].vips = vec!["10.99.1.255/24".parse().unwrap()];
        assert!(c.validate().is_err());
    }

    #[test]
    fn rejects_bad_vrrp_settings() {
        let mut c = sample();
        c.vrrp.advert_interval_ms = 15;
        assert!(c.validate().is_err());
        let mut c = sample();
        c.vrrp.priority_backup = 250;
        assert!(c.validate().is_err());
        let mut c = sample();
        c.lans[0].vrid = c.vrrp.vrid;
        assert!(c.validate().is_err());
    }

    /// The error of `c.validate()`, as one line, with its exit code.
    fn refusal(c: &ClusterConfig) -> (Code, String) {
        let e = c.validate().expect_err("the config must be refused");
        (crate::exit::code_of(&e), format!("{e:#}"))
    }

    fn lan(interface: &str, primary: &str, backup: &str, vips: &[&str]) -> LanInterface {
        LanInterface {
            interface: interface.into(),
            vrid: 60,
            primary_address: primary.parse().unwrap(),
            backup_address: backup.parse().unwrap(),
            vips: vips.iter().map(|v| v.parse().unwrap()).collect(),
            wan: false,
        }
    }

    #[test]
    fn refuses_a_roles_section_the_role_engine_would_refuse() {
        let mut c = sample();
        c.roles.backup.links_down.push("lan*".into());
        let (code, msg) = refusal(&c);
        assert_eq!(code, Code::Config);
        assert!(msg.contains("roles: backup: links_down 'lan*'"), "{msg}");
        let mut c = sample();
        c.roles.action_timeout_ms = 0;
        assert!(refusal(&c).1.contains("roles: action_timeout_ms"));
    }

    #[test]
    fn refuses_a_state_dir_that_is_relative_climbs_or_is_synced() {
        for (dir, needle) in [
            ("var/lib/ns-ha/sync", "not an absolute"),
            ("/var/lib/ns-ha/../../etc/x", "'..'"),
            ("/var/lib/ns-ha/./sync", "'.'"),
            ("/", "not an absolute"),
            // The OpenWrt defaults sync /etc/config.
            ("/etc/config/ns-ha-sync", "inside the sync set"),
            // A directory holding synced files.
            ("/etc", "inside the sync set"),
        ] {
            let mut c = sample();
            c.sync.state_dir = dir.into();
            let (code, msg) = refusal(&c);
            assert_eq!(code, Code::Config, "{dir}: {msg}");
            assert!(
                msg.contains("sync.state_dir") && msg.contains(needle),
                "{dir}: {msg}"
            );
        }
        let mut c = sample();
        c.sync.include.push("/srv/*".into());
        c.sync.state_dir = "/srv/ns-ha".into();
        assert!(refusal(&c).1.contains("inside the sync set"));
        for ok in ["/etc/ns-ha-sync", "/var/lib/ns-ha/sync", "/srv/ns-ha-sync"] {
            let mut c = sample();
            c.sync.state_dir = ok.into();
            c.validate().unwrap_or_else(|e| panic!("{ok}: {e:#}"));
        }
    }

    #[test]
    fn refuses_a_lan_overlapping_the_ha_subnet_or_another_lan() {
        let mut c = sample();
        c.lans.push(lan(
            "lan1",
            "10.99.0.11/24",
            "10.99.0.12/24",
            &["10.99.0.100/24"],
        ));
        let (code, msg) = refusal(&c);
        assert_eq!(code, Code::InvalidInput);
        assert!(msg.contains("lan1") && msg.contains("HA subnet"), "{msg}");
        // A wider LAN containing the HA subnet overlaps too.
        let mut c = sample();
        c.lans
            .push(lan("lan1", "10.99.100.1/16", "10.99.100.2/16", &[]));
        assert!(refusal(&c).1.contains("HA subnet"));
        let mut c = sample();
        c.lans.push(lan(
            "lan1",
            "10.99.1.11/24",
            "10.99.1.12/24",
            &["10.99.1.200/24"],
        ));
        let (code, msg) = refusal(&c);
        assert_eq!(code, Code::InvalidInput);
        assert!(msg.contains("lan1") && msg.contains("lan0"), "{msg}");
    }

    #[test]
    fn refuses_a_lan_vip_equal_to_the_heartbeat_vip() {
        let mut c = sample();
        c.lans[0].vips.push("10.99.0.254/24".parse().unwrap());
        let (code, msg) = refusal(&c);
        assert_eq!(code, Code::InvalidInput);
        assert!(msg.contains("heartbeat"), "{msg}");
    }

    #[test]
    fn refuses_interface_names_that_render_to_one_instance() {
        let mut c = sample();
        c.lans
            .push(lan("eth0.1", "10.99.2.1/24", "10.99.2.2/24", &[]));
        c.lans
            .push(lan("eth0_1", "10.99.3.1/24", "10.99.3.2/24", &[]));
        c.lans[2].vrid = 61;
        let (code, msg) = refusal(&c);
        assert_eq!(code, Code::InvalidInput);
        assert!(
            msg.contains("eth0.1") && msg.contains("eth0_1") && msg.contains("lan_eth0_1"),
            "{msg}"
        );
    }

    fn wan(interface: &str, device: WanDevice, v4: Option<&str>) -> Wan {
        Wan {
            interface: interface.into(),
            device,
            ipv4: v4.map(|a| Ipv4Method::Static {
                address: a.parse().unwrap(),
                gateway: None,
            }),
            ipv6: None,
            mac: None,
            metric: None,
        }
    }

    #[test]
    fn takeover_wans_are_checked_against_the_ha_link_lans_and_each_other() {
        let mut c = sample();
        c.wans
            .push(wan("wan1", WanDevice::Physical, Some("10.99.3.1/24")));
        c.validate().unwrap();
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<ClusterConfig>(&text).unwrap(), c);
        // The HA interface under a bond, a bridge, a VLAN.
        for device in [
            WanDevice::Bond {
                members: vec!["ha0".into(), "eth5".into()],
            },
            WanDevice::Bridge {
                members: vec!["ha0".into()],
            },
        ] {
            let mut c = sample();
            c.wans.push(wan("bond0", device, Some("10.99.3.1/24")));
            let (code, msg) = refusal(&c);
            assert_eq!(code, Code::InvalidInput);
            assert!(
                msg.contains("HA interface ha0") && msg.contains("physical interface of its own"),
                "{msg}"
            );
        }
        let mut c = sample();
        c.wans.push(wan(
            "ha0.7",
            WanDevice::Vlan {
                parent: "ha0".into(),
                id: 7,
            },
            Some("10.99.3.1/24"),
        ));
        assert!(refusal(&c).1.contains("HA interface ha0"));
        // A LAN as a WAN, overlapping subnets, one device in two WANs.
        let mut c = sample();
        c.wans
            .push(wan("lan0", WanDevice::Physical, Some("10.99.3.1/24")));
        assert!(refusal(&c).1.contains("lan0 is a LAN of the cluster"));
        let mut c = sample();
        c.wans
            .push(wan("wan1", WanDevice::Physical, Some("10.99.1.50/24")));
        assert!(refusal(&c).1.contains("overlaps LAN lan0"));
        let mut c = sample();
        c.wans
            .push(wan("wan1", WanDevice::Physical, Some("10.99.3.1/24")));
        c.wans.push(wan(
            "br-wan",
            WanDevice::Bridge {
                members: vec!["wan1".into()],
            },
            Some("10.99.4.1/24"),
        ));
        assert!(refusal(&c).1.contains("already used by WAN wan1"));
        // PPPoE on a bridge WAN.
        let mut c = sample();
        c.wans.push(wan(
            "br-wan",
            WanDevice::Bridge {
                members: vec!["eth1".into()],
            },
            Some("10.99.4.1/24"),
        ));
        c.wans.push(wan(
            "pppoe-wan",
            WanDevice::Pppoe {
                parent: "br-wan".into(),
                user: "me".into(),
            },
            None,
        ));
        let (code, msg) = refusal(&c);
        assert_eq!(code, Code::InvalidInput);
        assert!(
            msg.contains("PPPoE on the bridge br-wan is not supported"),
            "{msg}"
        );
    }

    #[test]
    fn two_default_routes_need_different_metrics() {
        let dhcp = |name: &str, metric: Option<u32>| Wan {
            ipv4: Some(Ipv4Method::Dhcp),
            metric,
            ..wan(name, WanDevice::Physical, None)
        };
        let mut c = sample();
        c.wans.push(dhcp("wan1", None));
        c.wans.push(Wan {
            metric: None,
            ..wan(
                "pppoe-wan",
                WanDevice::Pppoe {
                    parent: "wan2".into(),
                    user: "me".into(),
                },
                None,
            )
        });
        let (code, msg) = refusal(&c);
        assert_eq!(code, Code::InvalidInput);
        assert!(
            msg.contains("would clash with WAN wan1's (both metric 0)")
                && msg.contains("--metric N"),
            "{msg}"
        );
        c.wans[1].metric = Some(300);
        c.validate().unwrap();
        // A static WAN without a gateway brings no default route: no clash.
        c.wans
            .push(wan("wan3", WanDevice::Physical, Some("10.99.5.1/24")));
        c.validate().unwrap();
        c.wans[2].metric = Some(5);
        assert!(refusal(&c).1.contains("this WAN has none"));
    }

    #[test]
    fn refuses_vrid_zero_for_the_ha_link() {
        let mut c = sample();
        c.vrrp.vrid = 0;
        assert!(refusal(&c).1.contains("vrrp.vrid"));
    }

    #[test]
    fn free_vrid_skips_used() {
        let c = sample();
        assert_eq!(c.free_vrid().unwrap(), 52);
    }

    #[test]
    fn load_reports_missing_and_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        let e = load_cluster(&root).unwrap_err();
        assert_eq!(crate::exit::code_of(&e), Code::State);
        std::fs::create_dir_all(root.path(paths::CONFIG_DIR)).unwrap();
        std::fs::write(root.path(paths::CLUSTER_CONFIG), "{ not json").unwrap();
        let e = load_cluster(&root).unwrap_err();
        assert_eq!(crate::exit::code_of(&e), Code::Config);
        save_cluster(&root, &sample()).unwrap();
        assert_eq!(load_cluster(&root).unwrap(), sample());
    }
}
