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
//! the kernel pick, so it cannot be told here).

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
    /// Whether that interface exists and is up here (None: unknown interface).
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
    }
}
