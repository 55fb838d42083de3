//! IPv4 prefixes and the node's interfaces as the tools need to see them.
//!
//! Pre-flight checks ask the same questions on both nodes: does this interface
//! exist, what kind is it (a physical NIC or a bond, bridge, VLAN, tunnel),
//! which static IPv4 address does it carry. The answers come from `ip -json`
//! through [`InterfaceSource`], so unit tests can feed fixed answers.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use crate::cmd::{args, CommandRunner};
use crate::exit::{fail, Code};

/// Linux caps interface names at 15; ns-ha adds a 3-character `:ha` label to
/// VIPs, so interfaces in the cluster may have at most 12.
pub const MAX_IFNAME: usize = 12;

/// An IPv4 address with its prefix length, written `10.99.1.254/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self> {
        if prefix > 32 {
            return Err(fail(
                Code::InvalidInput,
                format!("prefix /{prefix} is longer than 32"),
            ));
        }
        Ok(Ipv4Cidr { addr, prefix })
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// Whether `ip` lies in this prefix's network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }

    /// A usable host address of this network (not network, not broadcast), for /31 and /32 any.
    pub fn is_host_address(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && (self.prefix >= 31 || (ip != self.network() && ip != self.broadcast()))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            fail(
                Code::InvalidInput,
                format!("'{s}' is not an IPv4 address with prefix: write it like 10.99.1.254/24"),
            )
        };
        if s.contains(':') {
            return Err(fail(
                Code::InvalidInput,
                format!("'{s}' is IPv6: HA LAN interfaces and VIPs are IPv4 only, give an address like 10.99.1.254/24"),
            ));
        }
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if prefix > 32 || !p.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        Ok(Ipv4Cidr { addr, prefix })
    }
}

/// Serialize a type as its `Display` text and deserialize it with its
/// `FromStr` (whose error is an `anyhow::Error`): addresses and MACs are
/// strings in the config files.
macro_rules! serde_via_str {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse()
                    .map_err(|e: anyhow::Error| serde::de::Error::custom(e.to_string()))
            }
        }
    };
}
pub(crate) use serde_via_str;

serde_via_str!(Ipv4Cidr);

/// Validate an interface name for use in the cluster (length, characters).
pub fn check_ifname(name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
    {
        return Err(fail(
            Code::InvalidInput,
            format!("'{name}' is not a valid interface name: use letters, digits, '-', '_', '.'"),
        ));
    }
    if name.len() > MAX_IFNAME {
        let hint = bond_rename_hint(name)
            .map(|n| format!(" (rename the bond, e.g. to '{n}')"))
            .unwrap_or_default();
        return Err(fail(
            Code::InvalidInput,
            format!(
                "interface name '{name}' has {} characters, at most {MAX_IFNAME} are allowed because VIPs get a ':ha' label{hint}",
                name.len()
            ),
        ));
    }
    Ok(())
}

/// For NethServer-7 style bond names (`bond-bond0`, `bond-bond0.20`), the short name to rename to.
pub fn bond_rename_hint(name: &str) -> Option<String> {
    let rest = name.strip_prefix("bond-bond")?;
    let (num, vlan) = match rest.split_once('.') {
        Some((n, v)) => (n, Some(v)),
        None => (rest, None),
    };
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(match vlan {
        Some(v) => format!("b{num}.{v}"),
        None => format!("bond-b{num}"),
    })
}

/// What kind of link an interface is; the HA link must be `Physical` (or a veth in the lab).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    Physical,
    Veth,
    Bond,
    Bridge,
    Vlan,
    Tunnel,
    Loopback,
    Other(String),
}

/// One IPv4 address on an interface and whether it is static.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfAddr {
    pub cidr: Ipv4Cidr,
    /// `false` when the kernel marks it dynamic (DHCP) .
    pub permanent: bool,
    pub label: Option<String>,
}

/// An interface as seen by the tools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub kind: LinkKind,
    pub up: bool,
    pub ipv4: Vec<IfAddr>,
}

impl Interface {
    /// The first permanent (static) IPv4 address that is not a VIP label.
    pub fn static_ipv4(&self) -> Option<Ipv4Cidr> {
        self.ipv4
            .iter()
            .find(|a| a.permanent && !a.label.as_deref().is_some_and(|l| l.ends_with(":ha")))
            .map(|a| a.cidr)
    }
}

/// Where interface facts come from: `ip -json` on a node, or a fixed list in tests.
pub trait InterfaceSource {
    fn interface(&self, name: &str) -> Result<Option<Interface>>;
    /// All IPv4 addresses configured on the node (any interface), for "who holds this VIP".
    fn all_ipv4(&self) -> Result<Vec<(String, Ipv4Cidr)>>;
}

/// Reads interfaces with `ip -json -details`.
pub struct IpCommand<'a> {
    pub runner: &'a dyn CommandRunner,
}

const IP_TIMEOUT: Duration = Duration::from_secs(5);

impl InterfaceSource for IpCommand<'_> {
    fn interface(&self, name: &str) -> Result<Option<Interface>> {
        check_ifname(name)?;
        let link = self.runner.run(
            "ip",
            &args(&["-json", "-details", "link", "show", "dev", name]),
            IP_TIMEOUT,
        )?;
        if !link.success() {
            return Ok(None);
        }
        let addr = self.runner.run_ok(
            "ip",
            &args(&["-json", "-4", "addr", "show", "dev", name]),
            IP_TIMEOUT,
        )?;
        parse_interface(&link.stdout, &addr.stdout)
            .with_context(|| format!("parsing `ip -json` output for {name}"))
    }

    fn all_ipv4(&self) -> Result<Vec<(String, Ipv4Cidr)>> {
        let out = self
            .runner
            .run_ok("ip", &args(&["-json", "-4", "addr", "show"]), IP_TIMEOUT)?;
        let v: serde_json::Value =
            serde_json::from_str(&out.stdout).context("parsing ip -json addr")?;
        let mut res = Vec::new();
        for link in v.as_array().into_iter().flatten() {
            let name = link["ifname"].as_str().unwrap_or_default().to_string();
            for a in parse_addrs(link) {
                res.push((name.clone(), a.cidr));
            }
        }
        Ok(res)
    }
}

/// [`IpCommand`], but the addresses of every interface read from the
/// kernel in-process (`getifaddrs`: one netlink dump, about 0.1 ms) instead
/// of an `ip` process (about 30 ms in the lab, on the path of every `watch`
/// push: its master check). An address's label (`lan0:1`) counts as its
/// interface, as in `ip`'s `ifname`.
pub struct KernelAddresses<'a> {
    /// Runs `ip` for [`InterfaceSource::interface`].
    pub runner: &'a dyn CommandRunner,
}

impl InterfaceSource for KernelAddresses<'_> {
    fn interface(&self, name: &str) -> Result<Option<Interface>> {
        IpCommand {
            runner: self.runner,
        }
        .interface(name)
    }

    fn all_ipv4(&self) -> Result<Vec<(String, Ipv4Cidr)>> {
        let mut res = Vec::new();
        for ifa in nix::ifaddrs::getifaddrs().context("reading the interfaces' addresses")? {
            let v4 = |a: &Option<nix::sys::socket::SockaddrStorage>| {
                a.as_ref().and_then(|a| a.as_sockaddr_in()).map(|a| a.ip())
            };
            let (Some(addr), Some(mask)) = (v4(&ifa.address), v4(&ifa.netmask)) else {
                continue;
            };
            let name = ifa.interface_name.split(':').next().unwrap_or_default();
            res.push((
                name.to_string(),
                Ipv4Cidr {
                    addr,
                    prefix: u32::from(mask).count_ones() as u8,
                },
            ));
        }
        Ok(res)
    }
}

fn parse_addrs(link: &serde_json::Value) -> Vec<IfAddr> {
    let mut out = Vec::new();
    for a in link["addr_info"].as_array().into_iter().flatten() {
        if a["family"].as_str() != Some("inet") {
            continue;
        }
        let (Some(local), Some(prefix)) = (a["local"].as_str(), a["prefixlen"].as_u64()) else {
            continue;
        };
        let Ok(addr) = local.parse::<Ipv4Addr>() else {
            continue;
        };
        out.push(IfAddr {
            cidr: Ipv4Cidr {
                addr,
                prefix: prefix.min(32) as u8,
            },
            permanent: a["dynamic"].as_bool() != Some(true),
            label: a["label"].as_str().map(str::to_string),
        });
    }
    out
}

/// Parse `ip -json -details link show dev X` and `ip -json -4 addr show dev X`.
pub fn parse_interface(link_json: &str, addr_json: &str) -> Result<Option<Interface>> {
    let links: serde_json::Value = serde_json::from_str(link_json)?;
    let Some(link) = links.as_array().and_then(|a| a.first()) else {
        return Ok(None);
    };
    let name = link["ifname"].as_str().unwrap_or_default().to_string();
    let info_kind = link["linkinfo"]["info_kind"].as_str().unwrap_or("");
    let kind = match info_kind {
        "" if link["link_type"].as_str() == Some("loopback") => LinkKind::Loopback,
        "" => LinkKind::Physical,
        "veth" => LinkKind::Veth,
        "bond" => LinkKind::Bond,
        "bridge" => LinkKind::Bridge,
        "vlan" | "macvlan" => LinkKind::Vlan,
        "tun" | "gre" | "ipip" | "sit" | "wireguard" | "vxlan" | "gretap" | "ip6tnl" => {
            LinkKind::Tunnel
        }
        other => LinkKind::Other(other.to_string()),
    };
    let flags: Vec<&str> = link["flags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str())
        .collect();
    let addrs: serde_json::Value = serde_json::from_str(addr_json)?;
    let ipv4 = addrs
        .as_array()
        .and_then(|a| a.first())
        .map(parse_addrs)
        .unwrap_or_default();
    Ok(Some(Interface {
        name,
        kind,
        up: flags.contains(&"UP"),
        ipv4,
    }))
}

/// A fixed set of interfaces, for unit tests (feature `testing`).
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default, Clone)]
pub struct StaticInterfaces(pub Vec<Interface>);

#[cfg(any(test, feature = "testing"))]
impl InterfaceSource for StaticInterfaces {
    fn interface(&self, name: &str) -> Result<Option<Interface>> {
        check_ifname(name)?;
        Ok(self.0.iter().find(|i| i.name == name).cloned())
    }
    fn all_ipv4(&self) -> Result<Vec<(String, Ipv4Cidr)>> {
        Ok(self
            .0
            .iter()
            .flat_map(|i| i.ipv4.iter().map(move |a| (i.name.clone(), a.cidr)))
            .collect())
    }
}

#[cfg(test)]
mod tests {

    /// The kernel's own list (getifaddrs) says what `ip` says, on this
    /// machine's real interfaces (loopback at least).
    #[test]
    fn kernel_addresses_match_ip() {
        let runner = crate::cmd::SystemRunner;
        let mut kernel = KernelAddresses { runner: &runner }.all_ipv4().unwrap();
        let mut ip = IpCommand { runner: &runner }.all_ipv4().unwrap();
        kernel.sort_by_key(|(n, c)| (n.clone(), c.addr, c.prefix));
        ip.sort_by_key(|(n, c)| (n.clone(), c.addr, c.prefix));
        assert!(
            kernel
                .iter()
                .any(|(n, c)| n == "lo" && c.addr == Ipv4Addr::LOCALHOST && c.prefix == 8),
            "{kernel:?}"
        );
        assert_eq!(kernel, ip);
    }
    use super::*;

    #[test]
    fn parses_cidr_and_rejects_garbage() {
        let c: Ipv4Cidr = "10.99.1.254/24".parse().unwrap();
        assert_eq!(c.network(), Ipv4Addr::new(10, 99, 1, 0));
        assert!(c.contains(Ipv4Addr::new(10, 99, 1, 1)));
        assert!(!c.contains(Ipv4Addr::new(10, 99, 2, 1)));
        for bad in [
            "10.99.1.254",
            "10.99.1.254/33",
            "10.99.1/24",
            "x/24",
            "10.99.1.1/+4",
        ] {
            let e = bad.parse::<Ipv4Cidr>().unwrap_err();
            assert_eq!(crate::exit::code_of(&e), Code::InvalidInput, "{bad}");
        }
        let e = "fd00::1/64".parse::<Ipv4Cidr>().unwrap_err();
        assert!(e.to_string().contains("IPv6"));
    }

    #[test]
    fn host_addresses_exclude_network_and_broadcast() {
        let c: Ipv4Cidr = "10.99.1.1/24".parse().unwrap();
        assert!(!c.is_host_address(Ipv4Addr::new(10, 99, 1, 0)));
        assert!(!c.is_host_address(Ipv4Addr::new(10, 99, 1, 255)));
        assert!(c.is_host_address(Ipv4Addr::new(10, 99, 1, 254)));
    }

    #[test]
    fn interface_names_are_capped_with_bond_hint() {
        check_ifname("lan0").unwrap();
        let e = check_ifname("bond-bond0.20").unwrap_err();
        assert!(e.to_string().contains("'b0.20'"), "{e}");
        assert_eq!(bond_rename_hint("bond-bond1").as_deref(), Some("bond-b1"));
        assert_eq!(bond_rename_hint("eth0"), None);
        assert!(check_ifname("eth0;rm").is_err());
    }

    #[test]
    fn parses_ip_json() {
        let link = r#"[{"ifindex":2,"ifname":"lan0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"link_type":"ether","linkinfo":{"info_kind":"veth"}}]"#;
        let addr = r#"[{"ifindex":2,"ifname":"lan0","addr_info":[{"family":"inet","local":"10.99.1.1","prefixlen":24,"label":"lan0"},{"family":"inet","local":"10.99.1.254","prefixlen":24,"label":"lan0:ha"},{"family":"inet","local":"10.99.1.7","prefixlen":24,"dynamic":true}]}]"#;
        let i = parse_interface(link, addr).unwrap().unwrap();
        assert_eq!(i.kind, LinkKind::Veth);
        assert!(i.up);
        assert_eq!(i.ipv4.len(), 3);
        assert!(!i.ipv4[2].permanent);
        assert_eq!(i.static_ipv4().unwrap().to_string(), "10.99.1.1/24");
        let bond = r#"[{"ifname":"bond0","flags":[],"linkinfo":{"info_kind":"bond"}}]"#;
        assert_eq!(
            parse_interface(bond, "[]").unwrap().unwrap().kind,
            LinkKind::Bond
        );
        let phys = r#"[{"ifname":"eth1","flags":["UP"],"link_type":"ether"}]"#;
        assert_eq!(
            parse_interface(phys, "[]").unwrap().unwrap().kind,
            LinkKind::Physical
        );
    }
}
