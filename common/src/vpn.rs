//! The VPN tunnels configured on a node, and where they run.
//!
//! VPNs run on the MASTER only (the role engine's `service openvpn running`
//! and `link wg* up`). `ns-ha-check status` lists them with whether each is
//! up here, and `doctor` reports one that is down on the MASTER or up on a
//! node that is not: both read the configured tunnels from this one place.
//! A tunnel is found from its config: WireGuard's
//! `/etc/wireguard/NAME.conf` (interface NAME), OpenVPN's
//! `/etc/openvpn/NAME.conf` and Debian's `/etc/openvpn/server/NAME.conf`
//! (the interface its `dev` line names; `dev tun` without a number lets
//! the kernel pick, so it cannot be told here); IPsec from strongSwan's
//! configs with at least one connection (`/etc/swanctl/swanctl.conf` and
//! `conf.d/*.conf`, the starter's `/etc/ipsec.conf`). IPsec has no
//! interface of its own (ESP is kernel policy), so it is up here while
//! strongSwan's IKE daemon (charon) runs here.

use serde::Serialize;

use crate::net::InterfaceSource;
use crate::root::NodeRoot;
use crate::wireguard;

/// Which VPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VpnKind {
    Wireguard,
    Openvpn,
    Ipsec,
}

/// One tunnel configured on the node and its state here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VpnTunnel {
    pub kind: VpnKind,
    /// The config's name (file name without `.conf`).
    pub name: String,
    /// The node path of its config.
    pub config: String,
    /// Its interface, when the config names one.
    pub interface: Option<String>,
    /// Whether that interface exists and is up here (IPsec: whether charon
    /// runs here; None: unknown interface).
    pub up: Option<bool>,
}

/// OpenVPN's config dirs: Debian's and OpenWrt's plain files, Debian's servers.
const OPENVPN_DIRS: &[&str] = &["/etc/openvpn", "/etc/openvpn/server"];

fn conf_files(root: &NodeRoot, dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.path(dir))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_suffix(".conf").map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// The interface an OpenVPN config's `dev` line names (`tun0`), if it names one.
pub fn openvpn_interface(text: &str) -> Option<String> {
    let dev = text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("dev")).then(|| w.next().map(str::to_string))?
    })?;
    dev.ends_with(|c: char| c.is_ascii_digit())
        .then_some(dev)
        .filter(|d| crate::net::check_ifname(d).is_ok())
}

/// strongSwan's swanctl config and its drop-ins.
const SWANCTL_CONF: &str = "/etc/swanctl/swanctl.conf";
const SWANCTL_CONF_D: &str = "/etc/swanctl/conf.d";
/// strongSwan's starter (ipsec.conf) config.
const IPSEC_CONF: &str = "/etc/ipsec.conf";
/// charon's pid file (the starter's charon and the lab's: a node path).
const CHARON_PID: &str = "/run/charon.pid";
/// Names strongSwan's IKE daemon runs under.
const CHARON_NAMES: &[&str] = &["charon", "charon-systemd"];

/// Whether a swanctl config defines a connection: a `connections` section
/// with an entry (packages ship one with examples in comments only).
pub fn swanctl_has_connection(text: &str) -> bool {
    let code: String = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let spaced = code.replace('{', " { ").replace('}', " } ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    tokens
        .windows(3)
        .any(|w| w[0] == "connections" && w[1] == "{" && w[2] != "}")
}

/// Whether an ipsec.conf defines a connection (a `conn NAME` other than
/// `%default`).
pub fn ipsec_conf_has_connection(text: &str) -> bool {
    text.lines().any(|l| {
        let mut w = l.split_whitespace();
        w.next() == Some("conn") && w.next().is_some_and(|n| n != "%default")
    })
}

/// The IPsec configs here that define a connection: (name, node path).
fn ipsec_configs(root: &NodeRoot) -> Vec<(String, String)> {
    let read = |p: &str| std::fs::read_to_string(root.path(p)).unwrap_or_default();
    let mut out = Vec::new();
    let mut swanctl = vec![SWANCTL_CONF.to_string()];
    swanctl.extend(
        conf_files(root, SWANCTL_CONF_D)
            .into_iter()
            .map(|n| format!("{SWANCTL_CONF_D}/{n}.conf")),
    );
    if let Some(p) = swanctl
        .into_iter()
        .find(|p| swanctl_has_connection(&read(p)))
    {
        out.push(("swanctl".to_string(), p));
    }
    if ipsec_conf_has_connection(&read(IPSEC_CONF)) {
        out.push(("ipsec".to_string(), IPSEC_CONF.to_string()));
    }
    out
}

/// Whether strongSwan's IKE daemon runs for this node: the process of its
/// pid file (a node path); on the system root without one, any process of
/// that name (charon-systemd writes none).
fn charon_running(root: &NodeRoot) -> bool {
    let named = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| CHARON_NAMES.contains(&c.trim()))
    };
    match std::fs::read_to_string(root.path(CHARON_PID)) {
        Ok(pid) => {
            let pid = pid.trim();
            pid.parse::<u32>().is_ok() && named(pid)
        }
        Err(_) if root.is_system() => std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .any(|e| named(&e.file_name().to_string_lossy())),
        Err(_) => false,
    }
}

/// Every tunnel configured here, with whether its interface is up (`ifs`).
pub fn tunnels(root: &NodeRoot, ifs: &dyn InterfaceSource) -> Vec<VpnTunnel> {
    let mut out = Vec::new();
    for name in wireguard::configured(root).unwrap_or_default() {
        out.push(VpnTunnel {
            kind: VpnKind::Wireguard,
            config: format!("{}/{name}.conf", wireguard::CONFIG_DIR),
            interface: Some(name.clone()),
            name,
            up: None,
        });
    }
    for dir in OPENVPN_DIRS {
        for name in conf_files(root, dir) {
            let config = format!("{dir}/{name}.conf");
            let text = std::fs::read_to_string(root.path(&config)).unwrap_or_default();
            out.push(VpnTunnel {
                kind: VpnKind::Openvpn,
                name,
                config,
                interface: openvpn_interface(&text),
                up: None,
            });
        }
    }
    for t in &mut out {
        t.up = t
            .interface
            .as_ref()
            .map(|i| ifs.interface(i).ok().flatten().is_some_and(|x| x.up));
    }
    let ipsec = ipsec_configs(root);
    if !ipsec.is_empty() {
        let running = charon_running(root);
        for (name, config) in ipsec {
            out.push(VpnTunnel {
                kind: VpnKind::Ipsec,
                name,
                config,
                interface: None,
                up: Some(running),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{Interface, LinkKind, StaticInterfaces};

    #[test]
    fn tunnels_are_found_from_their_configs_with_their_state_here() {
        let d = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(d.path()).unwrap();
        for (p, text) in [
            ("/etc/wireguard/wg0.conf", "[Interface]\n"),
            ("/etc/wireguard/ns-ha-endpoints.json", "{}"),
            ("/etc/openvpn/server.conf", "# x\ndev tun0\nproto udp\n"),
            ("/etc/openvpn/server/rw.conf", "dev tun\n"),
        ] {
            std::fs::create_dir_all(root.path(p).parent().unwrap()).unwrap();
            std::fs::write(root.path(p), text).unwrap();
        }
        let ifs = StaticInterfaces(vec![Interface {
            name: "wg0".into(),
            kind: LinkKind::Tunnel,
            up: true,
            ipv4: Vec::new(),
        }]);
        let t = tunnels(&root, &ifs);
        let view: Vec<(VpnKind, &str, Option<&str>, Option<bool>)> = t
            .iter()
            .map(|t| (t.kind, t.name.as_str(), t.interface.as_deref(), t.up))
            .collect();
        assert_eq!(
            view,
            [
                (VpnKind::Wireguard, "wg0", Some("wg0"), Some(true)),
                (VpnKind::Openvpn, "server", Some("tun0"), Some(false)),
                (VpnKind::Openvpn, "rw", None, None),
            ]
        );
        assert_eq!(t[2].config, "/etc/openvpn/server/rw.conf");
        assert!(t.iter().all(|t| t.kind != VpnKind::Ipsec), "{t:?}");

        // IPsec: a connection in a swanctl drop-in; charon's pid file names
        // a process that is not charon (this test), then none.
        std::fs::create_dir_all(root.path(SWANCTL_CONF_D)).unwrap();
        std::fs::write(
            root.path(SWANCTL_CONF),
            "# connections { rw { } }\ninclude conf.d/*.conf\n",
        )
        .unwrap();
        std::fs::write(
            root.path("/etc/swanctl/conf.d/rw.conf"),
            "connections {\n  rw {\n    local_addrs = 10.99.2.254\n  }\n}\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.path("/run")).unwrap();
        std::fs::write(root.path(CHARON_PID), format!("{}\n", std::process::id())).unwrap();
        let t = tunnels(&root, &ifs);
        let ipsec: Vec<_> = t.iter().filter(|t| t.kind == VpnKind::Ipsec).collect();
        assert_eq!(ipsec.len(), 1, "{t:?}");
        assert_eq!(ipsec[0].config, "/etc/swanctl/conf.d/rw.conf");
        assert_eq!(
            (ipsec[0].interface.as_deref(), ipsec[0].up),
            (None, Some(false))
        );
    }

    #[test]
    fn only_configs_with_a_connection_count_as_ipsec() {
        assert!(!swanctl_has_connection("# connections {\n#  rw { }\n# }\n"));
        assert!(!swanctl_has_connection("connections {\n}\nsecrets { }\n"));
        assert!(swanctl_has_connection("connections{rw{version=2}}"));
        assert!(swanctl_has_connection(
            "connections {\n  # a tunnel\n  site {\n  }\n}\n"
        ));
        assert!(!ipsec_conf_has_connection("config setup\n# conn sample\n"));
        assert!(!ipsec_conf_has_connection(
            "conn %default\n  keyexchange=ikev2\n"
        ));
        assert!(ipsec_conf_has_connection(
            "conn %default\nconn site\n  left=%any\n"
        ));
    }
}
