//! WANs of the cluster: the takeover model, its validation, and how a WAN's
//! definition looks in each platform's interface manager.
//!
//! Most small-business WANs have one public address (static, DHCP or PPPoE),
//! so they cannot give each node an address plus a VIP. A *takeover* WAN is
//! defined once in `cluster.json` (which reaches the backup with every
//! cluster install), rendered on both nodes into the platform's own form (an
//! ifupdown file of the cluster's, or `network` UCI sections imported
//! disabled) and brought up by the role engine on the MASTER only. A *vip*
//! WAN is today's LAN-style WAN (own address per node plus a VIP) and lives
//! in `lans` with `wan: true`. The facts about a WAN (its device name, the
//! devices it needs on both nodes, its rendered stanzas, whether it is up
//! here) are computed here once for every tool.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

use crate::cmd::{args, CommandRunner};
use crate::exit::{fail, Code};
use crate::net::{check_ifname, Ipv4Cidr};

/// How a WAN moves between the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WanMode {
    /// Each node has its own static address and keepalived moves a VIP (a LAN with `wan: true`).
    Vip,
    /// Defined once, up only on the MASTER (the only mode for DHCP and PPPoE).
    Takeover,
}

impl WanMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WanMode::Vip => "vip",
            WanMode::Takeover => "takeover",
        }
    }
}

/// The kind of device a WAN sits on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum WanDevice {
    /// A physical NIC, named by the WAN's `interface`.
    Physical,
    /// A bridge named by `interface` over these ports.
    Bridge { members: Vec<String> },
    /// A bond named by `interface` of these physical interfaces.
    Bond { members: Vec<String> },
    /// A VLAN `PARENT.ID` (the WAN's `interface` is that name).
    Vlan { parent: String, id: u16 },
    /// A PPPoE session over `parent` (physical or VLAN); `interface` is its logical name.
    Pppoe { parent: String, user: String },
}

impl WanDevice {
    pub fn kind(&self) -> &'static str {
        match self {
            WanDevice::Physical => "physical",
            WanDevice::Bridge { .. } => "bridge",
            WanDevice::Bond { .. } => "bond",
            WanDevice::Vlan { .. } => "vlan",
            WanDevice::Pppoe { .. } => "pppoe",
        }
    }
}

/// How a WAN gets its IPv4 address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase", deny_unknown_fields)]
pub enum Ipv4Method {
    Static {
        address: Ipv4Cidr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gateway: Option<Ipv4Addr>,
    },
    Dhcp,
}

/// A static IPv6 address with its prefix, written `2001:db8::1/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Cidr {
    pub addr: Ipv6Addr,
    pub prefix: u8,
}

impl fmt::Display for Ipv6Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv6Cidr {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            fail(
                Code::InvalidInput,
                format!("'{s}' is not an IPv6 address with prefix: write it like 2001:db8::10/64"),
            )
        };
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv6Addr = a.parse().map_err(|_| bad())?;
        if !p.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if prefix == 0 || prefix > 128 {
            return Err(bad());
        }
        Ok(Ipv6Cidr { addr, prefix })
    }
}

crate::net::serde_via_str!(Ipv6Cidr);

/// A static IPv6 configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ipv6Static {
    pub address: Ipv6Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv6Addr>,
}

/// An Ethernet MAC address, written `02:00:5e:10:00:01`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            fail(
                Code::InvalidInput,
                format!("MAC address '{s}' {why}: give a unicast address like 02:00:5e:10:00:01 (locally administered: second digit 2, 6, a or e)"),
            )
        };
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(bad("is not six hex pairs separated by ':'"));
        }
        let mut b = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(bad("is not six hex pairs separated by ':'"));
            }
            b[i] = u8::from_str_radix(p, 16).map_err(|_| bad("has a pair that is not hex"))?;
        }
        if b[0] & 1 == 1 {
            return Err(bad("is a multicast address"));
        }
        if b == [0; 6] {
            return Err(bad("is all zeros"));
        }
        Ok(MacAddr(b))
    }
}

crate::net::serde_via_str!(MacAddr);

/// A takeover WAN: defined once, up only on the MASTER.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wan {
    /// The interface the WAN's addresses live on (same name on both nodes):
    /// the NIC, the bridge or bond to create, `PARENT.ID` for a VLAN, the
    /// logical name of a PPPoE session. It names the ifupdown stanza and the
    /// UCI `network` section too.
    pub interface: String,
    pub device: WanDevice,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Method>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Static>,
    /// The cluster MAC, set on the device before it comes up on the MASTER,
    /// so a DHCP server (an ISP) hands the new master the same lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// The metric of the WAN's IPv4 default route (ifupdown's `metric`,
    /// pppd's `defaultroute-metric`, netifd's `metric`): a firewall with
    /// several WANs needs a different one per WAN, or the second default
    /// route clashes with the first (lowest wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

impl Wan {
    /// The devices that must exist on both nodes before the WAN can come up.
    pub fn needed_devices(&self) -> Vec<&str> {
        match &self.device {
            WanDevice::Physical => vec![self.interface.as_str()],
            WanDevice::Bridge { members } | WanDevice::Bond { members } => {
                members.iter().map(String::as_str).collect()
            }
            WanDevice::Vlan { parent, .. } | WanDevice::Pppoe { parent, .. } => {
                vec![parent.as_str()]
            }
        }
    }

    /// The static addresses the WAN carries when up (`10.0.0.1/24`, `2001:db8::1/64`).
    pub fn static_addresses(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(Ipv4Method::Static { address, .. }) = &self.ipv4 {
            v.push(address.to_string());
        }
        if let Some(six) = &self.ipv6 {
            v.push(six.address.to_string());
        }
        v
    }

    /// Whether the WAN brings an IPv4 default route (a static gateway, DHCP's
    /// router, PPPoE's peer).
    pub fn has_default_route(&self) -> bool {
        matches!(self.device, WanDevice::Pppoe { .. })
            || matches!(
                self.ipv4,
                Some(Ipv4Method::Dhcp)
                    | Some(Ipv4Method::Static {
                        gateway: Some(_),
                        ..
                    })
            )
    }

    /// One word on the addressing: `static`, `dhcp`, `pppoe`, with `+ipv6`.
    pub fn addressing(&self) -> String {
        let four = match (&self.device, &self.ipv4) {
            (WanDevice::Pppoe { .. }, _) => "pppoe",
            (_, Some(Ipv4Method::Dhcp)) => "dhcp",
            (_, Some(Ipv4Method::Static { .. })) => "static",
            (_, None) => "",
        };
        match (four, self.ipv6.is_some()) {
            ("", true) => "static ipv6".into(),
            (f, true) => format!("{f} + static ipv6"),
            (f, false) => f.into(),
        }
    }

    /// Check this WAN on its own (names, addressing, combinations), with the fix.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(fail(Code::InvalidInput, m));
        let name = &self.interface;
        check_ifname(name)?;
        match &self.device {
            WanDevice::Physical => {}
            WanDevice::Bridge { members } | WanDevice::Bond { members } => {
                let kind = self.device.kind();
                if members.is_empty() {
                    return bad(format!(
                        "WAN {name}: a {kind} needs at least one member: give --member IF"
                    ));
                }
                for (i, m) in members.iter().enumerate() {
                    check_ifname(m)?;
                    if m == name || members[..i].contains(m) {
                        return bad(format!(
                            "WAN {name}: {kind} member {m} is listed twice or is the {kind} itself: list each member once"
                        ));
                    }
                }
            }
            WanDevice::Vlan { parent, id } => {
                check_ifname(parent)?;
                if !(1..=4094).contains(id) {
                    return bad(format!(
                        "WAN {name}: VLAN id {id} is out of range: use 1..4094"
                    ));
                }
                let want = format!("{parent}.{id}");
                if *name != want {
                    return bad(format!(
                        "WAN {name}: a VLAN WAN is named PARENT.ID, here {want}: use --interface {want}"
                    ));
                }
            }
            WanDevice::Pppoe { parent, user } => {
                check_ifname(parent)?;
                if parent == name {
                    return bad(format!(
                        "WAN {name}: the PPPoE session needs a name of its own, not its parent's: e.g. --interface pppoe-wan"
                    ));
                }
                if user.is_empty()
                    || !user
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "@._-+".contains(c))
                {
                    return bad(format!(
                        "WAN {name}: PPPoE user '{user}' is empty or has characters other than letters, digits and @._-+: give the ISP's user name"
                    ));
                }
                if self.ipv4.is_some() || self.ipv6.is_some() {
                    return bad(format!(
                        "WAN {name}: a PPPoE session gets its address from the ISP: drop --ipv4/--ipv6"
                    ));
                }
            }
        }
        if self.ipv4.is_none()
            && self.ipv6.is_none()
            && !matches!(self.device, WanDevice::Pppoe { .. })
        {
            return bad(format!(
                "WAN {name} has no address: give --ipv4 CIDR, --ipv4 dhcp or --ipv6 CIDR"
            ));
        }
        if self.metric.is_some() && !self.has_default_route() {
            return bad(format!(
                "WAN {name}: --metric is the metric of the WAN's IPv4 default route, and this WAN has none: give --gateway (static), or use it with DHCP or PPPoE"
            ));
        }
        if let Some(Ipv4Method::Static { address, gateway }) = &self.ipv4 {
            if !address.is_host_address(address.addr) {
                return bad(format!(
                    "WAN {name}: {address} is the network or broadcast address of its subnet: give a host address"
                ));
            }
            if let Some(g) = gateway {
                if !address.is_host_address(*g) || *g == address.addr {
                    return bad(format!(
                        "WAN {name}: gateway {g} is not another host of {}/{}: give the ISP's gateway in the WAN subnet",
                        address.network(),
                        address.prefix
                    ));
                }
            }
        }
        if let Some(six) = &self.ipv6 {
            let a = six.address.addr;
            if a.is_unspecified() || a.is_loopback() || a.is_multicast() || is_link_local(a) {
                return bad(format!(
                    "WAN {name}: {} is not a global or unique-local IPv6 address: give the address the ISP assigned",
                    six.address
                ));
            }
            if let Some(g) = six.gateway {
                if g.is_multicast() || g.is_unspecified() || g == a {
                    return bad(format!(
                        "WAN {name}: IPv6 gateway {g} is not a router address: give the ISP's (often fe80::1)"
                    ));
                }
            }
        }
        Ok(())
    }
}

fn is_link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// Name of the cluster-owned ifupdown file on Debian (never edited by hand:
/// rendered from `cluster.json` on both nodes).
pub const IFUPDOWN_FILE: &str = "/etc/network/interfaces.d/ns-ha-wan";
/// ifupdown's state directory (under the node root, so two lab nodes do not share it).
pub const IFUPDOWN_STATE_DIR: &str = "/run/network";

/// How a member joins a device a WAN's stanza builds.
#[derive(Clone, Copy)]
enum MemberJoin {
    /// A bridge port: attached, then brought up.
    AttachThenUp,
    /// A bond member: the kernel enslaves it only while it is down, and
    /// the bond brings it up itself.
    DownThenEnslave,
}

/// The stanza lines that build a WAN's own device (a bridge or a bond)
/// with `ip` before ifupdown configures it, and delete it on `ifdown` so
/// its members are free again: `link_type` is `ip link add`'s `type ...`.
fn built_device_lines(
    lines: &mut Vec<String>,
    dev: &str,
    link_type: &str,
    members: &[String],
    join: MemberJoin,
) {
    lines.push(format!(
        "pre-up ip link show dev {dev} >/dev/null 2>&1 || ip link add name {dev} type {link_type}"
    ));
    for m in members {
        if matches!(join, MemberJoin::DownThenEnslave) {
            lines.push(format!("pre-up ip link set dev {m} down"));
            lines.push(format!("pre-up ip link set dev {m} master {dev}"));
        } else {
            lines.push(format!("pre-up ip link set dev {m} master {dev} up"));
        }
    }
    lines.push(format!("post-down ip link del dev {dev}"));
}

/// The ifupdown file of the cluster's takeover WANs. No `auto` or
/// `allow-hotplug` line: only the role engine brings them up, on the MASTER.
pub fn render_ifupdown(wans: &[Wan]) -> String {
    let mut s = String::from(
        "# Written by ns-ha from /etc/ns-ha/cluster.json on both nodes: change WANs with\n\
         # ns-ha-init add-wan / remove-interface on the primary, not here.\n\
         # No \"auto\" line on purpose: only the role engine (ns-ha-role) brings\n\
         # these up, on the MASTER, and takes them down on BACKUP and FAULT.\n",
    );
    for w in wans {
        s.push('\n');
        let i = &w.interface;
        let mut dev_lines: Vec<String> = Vec::new();
        match &w.device {
            WanDevice::Physical => {}
            WanDevice::Bridge { members } => {
                // ifupdown makes no bridges itself (`bridge_ports` is
                // bridge-utils' hook, which a box may lack and the lab's
                // `--no-scripts` skips): made here with `ip`, without STP
                // (its ports forward at once).
                built_device_lines(
                    &mut dev_lines,
                    i,
                    "bridge",
                    members,
                    MemberJoin::AttachThenUp,
                );
            }
            WanDevice::Bond { members } => {
                // Likewise bonds (`bond-slaves` is ifenslave's hook):
                // active-backup needs nothing of the switch.
                built_device_lines(
                    &mut dev_lines,
                    i,
                    "bond mode active-backup miimon 100",
                    members,
                    MemberJoin::DownThenEnslave,
                );
            }
            WanDevice::Vlan { parent, .. } => {
                dev_lines.push(format!("vlan-raw-device {parent}"));
            }
            WanDevice::Pppoe { parent, .. } => {
                // ifupdown's `inet ppp` runs `pon NAME` / `poff NAME`:
                // pppd with the peers file of `render_ppp_peer`.
                // The parent carries no address and nothing else brings
                // it up (pppoeconf's stanzas do the same).
                s.push_str(&format!("iface {i} inet ppp\n    pre-up ip link set dev {parent} up\n    provider {i}\n    # PPPoE over {parent}: {PPP_PEERS_DIR}/{i}\n"));
                continue;
            }
        }
        if let Some(m) = &w.mac {
            dev_lines.push(format!("hwaddress ether {m}"));
        }
        let mut first = true;
        let mut stanza = |head: String, lines: Vec<String>| {
            s.push_str(&head);
            s.push('\n');
            let extra = if first {
                first = false;
                dev_lines.clone()
            } else {
                Vec::new()
            };
            for l in extra.iter().chain(&lines) {
                s.push_str("    ");
                s.push_str(l);
                s.push('\n');
            }
        };
        match &w.ipv4 {
            Some(Ipv4Method::Static { address, gateway }) => {
                let mut l = vec![format!("address {address}")];
                if let Some(g) = gateway {
                    l.push(format!("gateway {g}"));
                }
                l.extend(w.metric.map(|m| format!("metric {m}")));
                stanza(format!("iface {i} inet static"), l);
            }
            Some(Ipv4Method::Dhcp) => {
                // ifupdown runs dhclient with `-i` unless `client no`: a
                // client identifier from a DUID each node makes for itself,
                // which a server keys the lease by instead of the MAC. With
                // a cluster MAC the lease must follow the MAC alone.
                let mut l = if w.mac.is_some() {
                    vec!["client no".to_string()]
                } else {
                    Vec::new()
                };
                l.extend(w.metric.map(|m| format!("metric {m}")));
                stanza(format!("iface {i} inet dhcp"), l)
            }
            None => {}
        }
        if let Some(six) = &w.ipv6 {
            // No DAD: the address moved from the old master, and waiting ~1 s
            // for DAD would keep it unusable (tentative) during a failover.
            let mut l = vec![
                format!("address {}", six.address),
                "dad-attempts 0".into(),
                "accept_ra 0".into(),
                "autoconf 0".into(),
            ];
            if let Some(g) = six.gateway {
                l.push(format!("gateway {g}"));
            }
            stanza(format!("iface {i} inet6 static"), l);
        }
    }
    s
}

/// The pppd ip-up hook the Debian package installs (run by Debian's
/// `/etc/ppp/ip-up` through run-parts): for a session whose `ipparam` is
/// [`PPP_ROUTE_IPPARAM`]`N` it sets the default route through the session
/// at metric N, which pppd itself may have declined to add.
pub const PPP_ROUTE_HOOK: &str = "/etc/ppp/ip-up.d/ns-ha-wan-route";

/// The `ipparam` prefix of a PPPoE WAN with a metric (see [`PPP_ROUTE_HOOK`]).
pub const PPP_ROUTE_IPPARAM: &str = "ns-ha-metric=";

/// Where pppd's peers files live (`pon NAME` reads `NAME` there).
pub const PPP_PEERS_DIR: &str = "/etc/ppp/peers";

/// The pppd peers file of a PPPoE WAN (`None` for other kinds), read by
/// `pon NAME` when ifupdown brings the WAN up. The session's device gets
/// the WAN's name (`ifname`), so `ip` and the role engine see it by name;
/// the password is not here but in `/etc/ppp/chap-secrets` or
/// `pap-secrets` (synced, 0600), looked up by the user name. `persist`
/// with a 1 s holdoff: a new master whose first attempt meets the old
/// session still open at the ISP retries at once. With a metric, `ipparam`
/// carries it to [`PPP_ROUTE_HOOK`]: pppd 2.4.9 (Debian 12) adds no default
/// route when any other exists, whatever `defaultroute-metric` says, so a
/// PPPoE WAN that comes up after another WAN would have none.
pub fn render_ppp_peer(w: &Wan) -> Option<String> {
    let WanDevice::Pppoe { parent, user } = &w.device else {
        return None;
    };
    let i = &w.interface;
    let mut s = format!(
        "# Written by ns-ha from /etc/ns-ha/cluster.json (PPPoE takeover WAN {i}):\n\
         # change it with ns-ha-init add-wan / remove-interface on the primary.\n\
         plugin pppoe.so\n\
         nic-{parent}\n\
         user \"{user}\"\n\
         ifname {i}\n\
         linkname {i}\n\
         noauth\n\
         hide-password\n\
         noipdefault\n\
         defaultroute\n"
    );
    if let Some(m) = w.metric {
        s.push_str(&format!(
            "defaultroute-metric {m}\nipparam {PPP_ROUTE_IPPARAM}{m}\n"
        ));
    }
    s.push_str("persist\nmaxfail 0\nholdoff 1\nlcp-echo-interval 2\nlcp-echo-failure 3\n");
    Some(s)
}

/// The `uci` commands that import the WANs into OpenWrt's `network` config,
/// disabled (`auto 0`: netifd brings them up only when the role engine says
/// `ifup`), after deleting the sections of the WANs in `previous` (WANs
/// removed or changed). Run with `uci` on the node; `uci commit network` last.
pub fn uci_commands(previous: &[Wan], wans: &[Wan]) -> Vec<Vec<String>> {
    let mut cmds: Vec<Vec<String>> = Vec::new();
    let set = |cmds: &mut Vec<Vec<String>>, k: String| cmds.push(vec!["set".into(), k]);
    for w in previous {
        cmds.push(args(&["-q", "delete", &format!("network.{}", uci_name(w))]));
        if matches!(w.device, WanDevice::Bridge { .. } | WanDevice::Bond { .. }) {
            cmds.push(args(&[
                "-q",
                "delete",
                &format!("network.{}_dev", uci_name(w)),
            ]));
        }
    }
    for w in wans {
        let sec = format!("network.{}", uci_name(w));
        set(&mut cmds, format!("{sec}=interface"));
        let device = match &w.device {
            WanDevice::Physical | WanDevice::Vlan { .. } => w.interface.clone(),
            WanDevice::Bridge { members } | WanDevice::Bond { members } => {
                let dev = format!("{sec}_dev");
                set(&mut cmds, format!("{dev}=device"));
                set(&mut cmds, format!("{dev}.name={}", w.interface));
                let (ty, key) = if matches!(w.device, WanDevice::Bridge { .. }) {
                    ("bridge", "ports")
                } else {
                    ("bonding", "slaves")
                };
                set(&mut cmds, format!("{dev}.type={ty}"));
                for m in members {
                    cmds.push(vec!["add_list".into(), format!("{dev}.{key}={m}")]);
                }
                w.interface.clone()
            }
            WanDevice::Pppoe { parent, .. } => parent.clone(),
        };
        set(&mut cmds, format!("{sec}.device={device}"));
        set(&mut cmds, format!("{sec}.auto=0"));
        match (&w.device, &w.ipv4) {
            (WanDevice::Pppoe { user, .. }, _) => {
                set(&mut cmds, format!("{sec}.proto=pppoe"));
                set(&mut cmds, format!("{sec}.username={user}"));
            }
            (_, Some(Ipv4Method::Dhcp)) => set(&mut cmds, format!("{sec}.proto=dhcp")),
            (_, Some(Ipv4Method::Static { address, gateway })) => {
                set(&mut cmds, format!("{sec}.proto=static"));
                set(&mut cmds, format!("{sec}.ipaddr={address}"));
                if let Some(g) = gateway {
                    set(&mut cmds, format!("{sec}.gateway={g}"));
                }
            }
            (_, None) => set(&mut cmds, format!("{sec}.proto=static")),
        }
        if let Some(six) = &w.ipv6 {
            set(&mut cmds, format!("{sec}.ip6addr={}", six.address));
            if let Some(g) = six.gateway {
                set(&mut cmds, format!("{sec}.ip6gw={g}"));
            }
        }
        if let Some(m) = &w.mac {
            set(&mut cmds, format!("{sec}.macaddr={m}"));
        }
        if let Some(m) = w.metric {
            set(&mut cmds, format!("{sec}.metric={m}"));
        }
    }
    cmds.push(args(&["commit", "network"]));
    cmds
}

/// The UCI section (netifd's logical interface) of a WAN: its name with
/// the characters UCI refuses in section names replaced.
pub fn uci_name(w: &Wan) -> String {
    w.interface.replace(['.', '-', '@'], "_")
}

/// The address of the last lease in an ISC dhclient lease file (`lease {
/// ... fixed-address A; ... }` blocks, newest last), if any.
pub fn last_dhclient_lease(text: &str) -> Option<Ipv4Addr> {
    text.lines()
        .rev()
        .filter_map(|l| l.trim().strip_prefix("fixed-address "))
        .find_map(|a| a.trim_end_matches(';').trim().parse().ok())
}

/// What a WAN looks like on this node right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WanLive {
    /// The device exists and is administratively up.
    pub link_up: bool,
    /// Every address of the device (both families, no link-local).
    pub addresses: Vec<String>,
}

impl WanLive {
    /// Whether the WAN is up here: the link is up and carries its static
    /// addresses (a DHCP WAN: any IPv4 address; PPPoE: the link up).
    pub fn is_up(&self, wan: &Wan) -> bool {
        if !self.link_up {
            return false;
        }
        let want = wan.static_addresses();
        let dhcp_ok = !matches!(wan.ipv4, Some(Ipv4Method::Dhcp))
            || self.addresses.iter().any(|a| !a.contains(':'));
        want.iter().all(|w| self.addresses.contains(w)) && dhcp_ok
    }

    /// Whether any trace of the WAN is left (link up or one of its addresses).
    pub fn is_down(&self, wan: &Wan) -> bool {
        !self.link_up
            && !wan
                .static_addresses()
                .iter()
                .any(|a| self.addresses.contains(a))
    }
}

/// How long one duplicate-address probe waits for an answer: an ARP reply
/// on a LAN comes within milliseconds, and every probe adds this much to a
/// takeover after a crash (nobody answers then).
pub const PROBE_WAIT: Duration = Duration::from_millis(100);

/// Whether another host answers ARP for `addr` on `interface` (ARP probe
/// with source 0.0.0.0, `arping -D`, as duplicate address detection does).
/// The link must be up. Used by a new MASTER before it brings a takeover
/// WAN up, so it waits for the old master (handing over gracefully) to take
/// its WAN down first and two nodes never answer for the address at once.
pub fn address_in_use(runner: &dyn CommandRunner, interface: &str, addr: Ipv4Addr) -> Result<bool> {
    check_ifname(interface)?;
    let out = runner.run(
        "arping",
        &args(&[
            "-D",
            "-q",
            "-c",
            "1",
            "-w",
            "1",
            "-I",
            interface,
            &addr.to_string(),
        ]),
        PROBE_WAIT,
    )?;
    // Killed at PROBE_WAIT: nobody answered. Exit 1: a reply (a duplicate).
    Ok(!out.timed_out && out.status == Some(1))
}

/// The MAC addresses of a device: the one it uses now and, when the
/// driver reports one, its permanent (burnt-in) one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkMacs {
    pub current: MacAddr,
    pub permanent: Option<MacAddr>,
}

/// The MAC addresses of `interface` (`ip -json link show`; `None`: no such
/// device, or one without an Ethernet address such as a PPP link).
pub fn link_macs(
    runner: &dyn CommandRunner,
    interface: &str,
    timeout: Duration,
) -> Result<Option<LinkMacs>> {
    ip_show(runner, "link", interface, timeout, parse_link_macs)
}

/// `ip -json OBJECT show dev INTERFACE`, parsed by `parse` (`None`: `ip`
/// failed, i.e. no such device).
fn ip_show<T>(
    runner: &dyn CommandRunner,
    object: &str,
    interface: &str,
    timeout: Duration,
    parse: fn(&str) -> Result<Option<T>>,
) -> Result<Option<T>> {
    check_ifname(interface)?;
    let out = runner.run(
        "ip",
        &args(&["-json", object, "show", "dev", interface]),
        timeout,
    )?;
    if !out.success() {
        return Ok(None);
    }
    parse(&out.stdout).with_context(|| format!("parsing `ip -json {object} show dev {interface}`"))
}

/// Parse `ip -json link show dev X` for [`link_macs`].
pub fn parse_link_macs(json: &str) -> Result<Option<LinkMacs>> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    let Some(link) = v.as_array().and_then(|a| a.first()) else {
        return Ok(None);
    };
    let mac = |key: &str| link[key].as_str().and_then(|m| m.parse::<MacAddr>().ok());
    Ok(mac("address").map(|current| LinkMacs {
        current,
        permanent: mac("permaddr"),
    }))
}

/// The device of `interface` as `ip -json addr show` reports it (`None`: no such device).
pub fn observe(
    runner: &dyn CommandRunner,
    interface: &str,
    timeout: Duration,
) -> Result<Option<WanLive>> {
    ip_show(runner, "addr", interface, timeout, parse_live)
}

/// Parse `ip -json addr show dev X`.
pub fn parse_live(json: &str) -> Result<Option<WanLive>> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    let Some(link) = v.as_array().and_then(|a| a.first()) else {
        return Ok(None);
    };
    let link_up = link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x.as_str() == Some("UP")));
    let mut addresses = Vec::new();
    for a in link["addr_info"].as_array().into_iter().flatten() {
        if a["scope"].as_str() == Some("link") {
            continue;
        }
        if let (Some(l), Some(p)) = (a["local"].as_str(), a["prefixlen"].as_u64()) {
            // Normalise IPv6 text so it compares with the configured form.
            let local = l
                .parse::<Ipv6Addr>()
                .map(|x| x.to_string())
                .unwrap_or_else(|_| l.to_string());
            addresses.push(format!("{local}/{p}"));
        }
    }
    Ok(Some(WanLive { link_up, addresses }))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn static_wan() -> Wan {
        Wan {
            interface: "wan1".into(),
            device: WanDevice::Physical,
            ipv4: Some(Ipv4Method::Static {
                address: "10.99.3.1/24".parse().unwrap(),
                gateway: Some("10.99.3.100".parse().unwrap()),
            }),
            ipv6: Some(Ipv6Static {
                address: "fd10:99:3::1/64".parse().unwrap(),
                gateway: None,
            }),
            mac: None,
            metric: None,
        }
    }

    fn refused(w: &Wan, needle: &str) {
        let e = w.validate().expect_err("must be refused");
        assert_eq!(crate::exit::code_of(&e), Code::InvalidInput);
        assert!(e.to_string().contains(needle), "{e}");
    }

    #[test]
    fn a_static_dual_stack_wan_validates_and_round_trips() {
        let w = static_wan();
        w.validate().unwrap();
        let text = serde_json::to_string(&w).unwrap();
        assert!(text.contains(r#""kind":"physical""#), "{text}");
        let back: Wan = serde_json::from_str(&text).unwrap();
        assert_eq!(back, w);
        assert_eq!(w.static_addresses(), ["10.99.3.1/24", "fd10:99:3::1/64"]);
        assert_eq!(w.addressing(), "static + static ipv6");
    }

    #[test]
    fn refuses_what_cannot_work_with_the_fix() {
        let mut w = static_wan();
        w.ipv4 = None;
        w.ipv6 = None;
        refused(&w, "has no address");
        let mut w = static_wan();
        w.device = WanDevice::Bridge { members: vec![] };
        refused(&w, "at least one member");
        w.device = WanDevice::Bond {
            members: vec!["eth1".into(), "eth1".into()],
        };
        refused(&w, "listed twice");
        w.device = WanDevice::Vlan {
            parent: "eth1".into(),
            id: 10,
        };
        refused(&w, "--interface eth1.10");
        w.interface = "eth1.10".into();
        w.validate().unwrap();
        w.device = WanDevice::Vlan {
            parent: "eth1".into(),
            id: 4095,
        };
        w.interface = "eth1.4095".into();
        refused(&w, "1..4094");
        let mut w = static_wan();
        w.device = WanDevice::Pppoe {
            parent: "eth1".into(),
            user: "me@isp".into(),
        };
        refused(&w, "drop --ipv4/--ipv6");
        w.ipv4 = None;
        w.ipv6 = None;
        w.validate().unwrap();
        w.device = WanDevice::Pppoe {
            parent: "eth1".into(),
            user: "me isp;rm".into(),
        };
        refused(&w, "PPPoE user");
        let mut w = static_wan();
        w.ipv6 = Some(Ipv6Static {
            address: "fe80::1/64".parse().unwrap(),
            gateway: None,
        });
        refused(&w, "not a global");
        let mut w = static_wan();
        w.ipv4 = Some(Ipv4Method::Static {
            address: "10.99.3.1/24".parse().unwrap(),
            gateway: Some("10.99.4.1".parse().unwrap()),
        });
        refused(&w, "gateway 10.99.4.1");
        let mut w = static_wan();
        w.interface = "averyverylongname".into();
        assert!(w.validate().is_err());
    }

    #[test]
    fn reads_the_current_and_permanent_mac_of_a_link() {
        let veth = r#"[{"ifname":"wan1","flags":["BROADCAST"],"address":"02:00:5e:10:00:01"}]"#;
        let m = parse_link_macs(veth).unwrap().unwrap();
        assert_eq!(m.current.to_string(), "02:00:5e:10:00:01");
        assert_eq!(m.permanent, None);
        let nic =
            r#"[{"ifname":"eth1","address":"02:00:5e:10:00:01","permaddr":"52:54:00:12:34:56"}]"#;
        let m = parse_link_macs(nic).unwrap().unwrap();
        assert_eq!(
            m.permanent.map(|p| p.to_string()).as_deref(),
            Some("52:54:00:12:34:56")
        );
        // PPP links have no Ethernet address; no device at all: nothing.
        assert_eq!(
            parse_link_macs(r#"[{"ifname":"ppp0","link_type":"ppp"}]"#).unwrap(),
            None
        );
        assert_eq!(parse_link_macs("[]").unwrap(), None);
        assert!(parse_link_macs("not json").is_err());
    }

    #[test]
    fn parses_addresses_and_macs_with_the_fix() {
        assert!("fd10::1".parse::<Ipv6Cidr>().is_err());
        assert!("fd10::1/129".parse::<Ipv6Cidr>().is_err());
        assert!("10.0.0.1/24".parse::<Ipv6Cidr>().is_err());
        let m: MacAddr = "02:00:5E:10:00:01".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:5e:10:00:01");
        let e = "01:00:5e:00:00:01".parse::<MacAddr>().unwrap_err();
        assert!(e.to_string().contains("multicast"), "{e}");
        assert!("00:00:00:00:00:00".parse::<MacAddr>().is_err());
        assert!("02:00:5e:10:00".parse::<MacAddr>().is_err());
        assert!("02:00:5e:10:00:0g".parse::<MacAddr>().is_err());
    }

    #[test]
    fn the_ifupdown_file_has_no_auto_and_no_dad() {
        let mut w = static_wan();
        w.mac = Some("02:00:5e:10:00:01".parse().unwrap());
        let dhcp = Wan {
            interface: "br-wan".into(),
            device: WanDevice::Bridge {
                members: vec!["eth1".into(), "eth2".into()],
            },
            ipv4: Some(Ipv4Method::Dhcp),
            ipv6: None,
            mac: None,
            metric: None,
        };
        let text = render_ifupdown(&[w, dhcp]);
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("auto") || l.starts_with("allow-")),
            "{text}"
        );
        assert!(text.contains("iface wan1 inet static\n    hwaddress ether 02:00:5e:10:00:01\n    address 10.99.3.1/24\n    gateway 10.99.3.100\n"), "{text}");
        assert!(
            text.contains(
                "iface wan1 inet6 static\n    address fd10:99:3::1/64\n    dad-attempts 0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "iface br-wan inet dhcp\n    pre-up ip link show dev br-wan >/dev/null 2>&1 || ip link add name br-wan type bridge\n    pre-up ip link set dev eth1 master br-wan up\n    pre-up ip link set dev eth2 master br-wan up\n    post-down ip link del dev br-wan\n"
            ),
            "{text}"
        );
        assert!(!text.contains("client no"), "{text}");
        // A bond: built with `ip` too, each member down before it joins.
        let bond = Wan {
            interface: "bond1".into(),
            device: WanDevice::Bond {
                members: vec!["eth3".into(), "eth4".into()],
            },
            ..static_wan()
        };
        let text = render_ifupdown(&[bond]);
        assert!(
            text.contains(
                "iface bond1 inet static\n    pre-up ip link show dev bond1 >/dev/null 2>&1 || ip link add name bond1 type bond mode active-backup miimon 100\n    pre-up ip link set dev eth3 down\n    pre-up ip link set dev eth3 master bond1\n    pre-up ip link set dev eth4 down\n    pre-up ip link set dev eth4 master bond1\n    post-down ip link del dev bond1\n"
            ),
            "{text}"
        );
        // A DHCP WAN with the cluster MAC: the lease keyed by the MAC alone.
        let dhcp_mac = Wan {
            interface: "wan1".into(),
            device: WanDevice::Physical,
            ipv4: Some(Ipv4Method::Dhcp),
            ipv6: None,
            mac: Some("02:00:5e:10:00:01".parse().unwrap()),
            metric: None,
        };
        let text = render_ifupdown(&[dhcp_mac]);
        assert!(
            text.contains(
                "iface wan1 inet dhcp\n    hwaddress ether 02:00:5e:10:00:01\n    client no\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_pppoe_wan_renders_a_ppp_stanza_and_its_peers_file_with_the_metric() {
        let w = Wan {
            interface: "pppoe-wan".into(),
            device: WanDevice::Pppoe {
                parent: "eth1".into(),
                user: "me@isp".into(),
            },
            ipv4: None,
            ipv6: None,
            mac: None,
            metric: Some(300),
        };
        w.validate().unwrap();
        let text = render_ifupdown(std::slice::from_ref(&w));
        assert!(
            text.contains(
                "iface pppoe-wan inet ppp\n    pre-up ip link set dev eth1 up\n    provider pppoe-wan\n"
            ),
            "{text}"
        );
        let peer = render_ppp_peer(&w).unwrap();
        for want in [
            "plugin pppoe.so\n",
            "nic-eth1\n",
            "user \"me@isp\"\n",
            "ifname pppoe-wan\n",
            "defaultroute\n",
            "defaultroute-metric 300\n",
            "ipparam ns-ha-metric=300\n",
            "persist\n",
        ] {
            assert!(peer.contains(want), "{want} missing in {peer}");
        }
        assert!(!peer.lines().any(|l| l.starts_with("password")), "{peer}");
        assert_eq!(render_ppp_peer(&static_wan()), None);
        // The metric on a static WAN's and a DHCP WAN's stanza.
        let mut s = static_wan();
        s.metric = Some(100);
        let text = render_ifupdown(&[s]);
        assert!(
            text.contains("    gateway 10.99.3.100\n    metric 100\n"),
            "{text}"
        );
        let d = Wan {
            ipv4: Some(Ipv4Method::Dhcp),
            ipv6: None,
            metric: Some(200),
            ..static_wan()
        };
        assert!(render_ifupdown(&[d]).contains("iface wan1 inet dhcp\n    metric 200\n"));
    }

    #[test]
    fn uci_import_is_disabled_and_replaces_the_previous_sections() {
        let old = Wan {
            interface: "br-wan".into(),
            device: WanDevice::Bridge {
                members: vec!["eth1".into()],
            },
            ipv4: Some(Ipv4Method::Dhcp),
            ipv6: None,
            mac: Some("02:00:5e:10:00:01".parse().unwrap()),
            metric: None,
        };
        let cmds: Vec<String> =
            uci_commands(std::slice::from_ref(&old), &[static_wan(), old.clone()])
                .iter()
                .map(|c| c.join(" "))
                .collect();
        assert_eq!(cmds[0], "-q delete network.br_wan");
        assert_eq!(cmds[1], "-q delete network.br_wan_dev");
        for want in [
            "set network.wan1=interface",
            "set network.wan1.device=wan1",
            "set network.wan1.auto=0",
            "set network.wan1.proto=static",
            "set network.wan1.ipaddr=10.99.3.1/24",
            "set network.wan1.ip6addr=fd10:99:3::1/64",
            "set network.br_wan_dev.type=bridge",
            "add_list network.br_wan_dev.ports=eth1",
            "set network.br_wan.proto=dhcp",
            "set network.br_wan.macaddr=02:00:5e:10:00:01",
        ] {
            assert!(
                cmds.contains(&want.to_string()),
                "{want} missing in {cmds:#?}"
            );
        }
        assert_eq!(cmds.last().map(String::as_str), Some("commit network"));
    }

    #[test]
    fn the_last_dhclient_lease_is_the_newest_block() {
        let text = "default-duid \"\\000\";\nlease {\n  interface \"wan1\";\n  fixed-address 10.99.3.27;\n  option routers 10.99.3.100;\n}\nlease {\n  interface \"wan1\";\n  fixed-address 10.99.3.31;\n}\n";
        assert_eq!(
            last_dhclient_lease(text),
            Some(Ipv4Addr::new(10, 99, 3, 31))
        );
        assert_eq!(last_dhclient_lease(""), None);
        assert_eq!(
            last_dhclient_lease("lease {\n  fixed-address bogus;\n}\n"),
            None
        );
    }

    #[test]
    fn live_state_needs_the_link_and_every_static_address() {
        let json = r#"[{"ifname":"wan1","flags":["BROADCAST","UP"],"addr_info":[
            {"family":"inet","local":"10.99.3.1","prefixlen":24,"scope":"global"},
            {"family":"inet6","local":"fd10:99:3:0::1","prefixlen":64,"scope":"global"},
            {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]}]"#;
        let live = parse_live(json).unwrap().unwrap();
        assert_eq!(live.addresses, ["10.99.3.1/24", "fd10:99:3::1/64"]);
        let w = static_wan();
        assert!(live.is_up(&w) && !live.is_down(&w));
        let half = WanLive {
            link_up: true,
            addresses: vec!["10.99.3.1/24".into()],
        };
        assert!(!half.is_up(&w));
        let down = WanLive {
            link_up: false,
            addresses: vec![],
        };
        assert!(down.is_down(&w) && !down.is_up(&w));
        assert_eq!(parse_live("[]").unwrap(), None);
    }
}
