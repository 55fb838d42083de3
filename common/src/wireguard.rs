//! WireGuard tunnels that follow the master.
//!
//! A WireGuard interface (`/etc/wireguard/NAME.conf`, wg-quick's format, the
//! same keys on both nodes through the sync) must exist only on the MASTER:
//! the role engine's `link wg* up` brings every configured tunnel up there
//! and `link wg* down` removes it on BACKUP and FAULT. Bring-up is
//! wg-quick's, without its shell hooks: the kernel's `wireguard` link type
//! when the kernel has it, else `wireguard-go` (userspace, on TUN), then
//! `wg setconf`, the addresses, the MTU, `up` and routes for the peers'
//! allowed IPs.
//!
//! Why more than wg-quick: a road-warrior client has no endpoint in the
//! server's config, and the new master has no session with it, so without
//! help the client notices only after its own handshake timeout (about 15 s
//! measured). The master therefore records its peers' endpoints (from `wg
//! show NAME dump`) in [`ENDPOINTS_FILE`], which the sync carries to the
//! backup; right after bring-up the new master sets those endpoints and
//! starts the handshake itself (switching the persistent keepalive on sends
//! one at once), so the client's next packet already has a session.
//!
//! `wireguard-go` and `wg` find userspace interfaces by their control socket
//! in `/run/wireguard`, a path shared by every network namespace. Under a
//! node root other than `/` (several nodes on one machine, as in the lab)
//! both run in a private mount namespace where `/run/wireguard` is the node
//! root's, so each node sees its own sockets ([`wg_command`]).

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

use crate::cmd::CommandRunner;
use crate::exit::{fail, Code};
use crate::root::NodeRoot;

/// Where the tunnels' configs live (node path, synced).
pub const CONFIG_DIR: &str = "/etc/wireguard";
/// The peers' last endpoints, recorded by the primary while MASTER (synced
/// with [`CONFIG_DIR`], 0600 like the keys next to it).
pub const ENDPOINTS_FILE: &str = "/etc/wireguard/ns-ha-endpoints.json";
/// wireguard-go's and wg's control sockets (node path).
pub const SOCKET_DIR: &str = "/run/wireguard";
/// The config `wg setconf` reads, stripped of wg-quick's keys (node path, 0600).
const SETCONF_DIR: &str = "/run/ns-ha/wireguard";
/// The keepalive interval switched on to start a handshake at once.
const KICK_KEEPALIVE: &str = "25";

/// wg-quick's own `[Interface]` keys: not `wg setconf`'s.
const QUICK_KEYS: &[&str] = &[
    "Address",
    "DNS",
    "MTU",
    "Table",
    "PreUp",
    "PostUp",
    "PreDown",
    "PostDown",
    "SaveConfig",
];

/// One peer of a tunnel config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub public_key: String,
    pub allowed_ips: Vec<String>,
    /// `Endpoint` (a site-to-site peer); road warriors have none.
    pub endpoint: Option<String>,
    /// `PersistentKeepalive` in seconds (0: off).
    pub keepalive: u16,
}

/// A tunnel config (`/etc/wireguard/NAME.conf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    pub name: String,
    /// `Address` entries (CIDR), assigned to the interface.
    pub addresses: Vec<String>,
    pub mtu: Option<u32>,
    /// wg-quick keys that are not applied (DNS, Table, the hooks).
    pub ignored: Vec<String>,
    pub peers: Vec<PeerConfig>,
    /// The config without wg-quick's keys: what `wg setconf` reads.
    pub setconf: String,
}

fn bad(name: &str, what: String) -> anyhow::Error {
    fail(
        Code::Config,
        format!(
            "{CONFIG_DIR}/{name}.conf: {what}: fix the file on the primary (the sync copies it)"
        ),
    )
}

/// Parse wg-quick's format.
pub fn parse(name: &str, text: &str) -> Result<TunnelConfig> {
    crate::net::check_ifname(name)?;
    let mut cfg = TunnelConfig {
        name: name.to_string(),
        addresses: Vec::new(),
        mtu: None,
        ignored: Vec::new(),
        peers: Vec::new(),
        setconf: String::new(),
    };
    let mut section = "";
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = match line {
                "[Interface]" => "Interface",
                "[Peer]" => {
                    cfg.peers.push(PeerConfig {
                        public_key: String::new(),
                        allowed_ips: Vec::new(),
                        endpoint: None,
                        keepalive: 0,
                    });
                    "Peer"
                }
                other => {
                    return Err(bad(
                        name,
                        format!("line {}: unknown section {other}", n + 1),
                    ))
                }
            };
            cfg.setconf.push_str(line);
            cfg.setconf.push('\n');
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(bad(name, format!("line {}: expected KEY = VALUE", n + 1)));
        };
        let (key, value) = (key.trim(), value.trim());
        let list = || {
            value
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        match (section, key) {
            ("", _) => {
                return Err(bad(
                    name,
                    format!("line {}: {key} outside a section", n + 1),
                ))
            }
            ("Interface", "Address") => cfg.addresses.extend(list()),
            ("Interface", "MTU") => {
                cfg.mtu = Some(value.parse().map_err(|_| {
                    bad(
                        name,
                        format!("line {}: MTU '{value}' is not a number", n + 1),
                    )
                })?)
            }
            ("Interface", k) if QUICK_KEYS.contains(&k) => cfg.ignored.push(k.to_string()),
            ("Peer", k) => {
                let peer = cfg
                    .peers
                    .last_mut()
                    .ok_or_else(|| bad(name, "peer".into()))?;
                match k {
                    "PublicKey" => peer.public_key = value.to_string(),
                    "AllowedIPs" => peer.allowed_ips.extend(list()),
                    "Endpoint" => peer.endpoint = Some(value.to_string()),
                    "PersistentKeepalive" => {
                        peer.keepalive = if value == "off" {
                            0
                        } else {
                            value.parse().map_err(|_| {
                                bad(
                                    name,
                                    format!("line {}: PersistentKeepalive '{value}'", n + 1),
                                )
                            })?
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        if !(section == "Interface" && QUICK_KEYS.contains(&key)) {
            cfg.setconf.push_str(&format!("{key} = {value}\n"));
        }
    }
    if let Some(i) = cfg.peers.iter().position(|p| p.public_key.is_empty()) {
        return Err(bad(name, format!("peer {} has no PublicKey", i + 1)));
    }
    Ok(cfg)
}

/// The tunnels configured on this node: `/etc/wireguard/NAME.conf`, by name.
pub fn configured(root: &NodeRoot) -> Result<Vec<String>> {
    let dir = root.path(CONFIG_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", dir.display()))),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".conf")?.to_string();
            crate::net::check_ifname(&stem).ok().map(|_| stem)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// Read and parse `/etc/wireguard/NAME.conf`.
pub fn load(root: &NodeRoot, name: &str) -> Result<TunnelConfig> {
    let path = root.path(format!("{CONFIG_DIR}/{name}.conf"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse(name, &text)
}

/// The program and arguments that run `program args` seeing this node's
/// `/run/wireguard`: as they are on the system root; under another node
/// root, in a private mount namespace with the node's directory bound there.
pub fn wg_command(root: &NodeRoot, program: &str, args: &[String]) -> (String, Vec<String>) {
    root.command_seeing_own(&[SOCKET_DIR], program, args)
}

fn run_wg(
    root: &NodeRoot,
    runner: &dyn CommandRunner,
    program: &str,
    args: &[String],
    timeout: Duration,
) -> Result<String> {
    let (p, a) = wg_command(root, program, args);
    Ok(runner.run_ok(&p, &a, timeout)?.stdout)
}

fn ip(runner: &dyn CommandRunner, args: &[&str], timeout: Duration) -> Result<()> {
    runner
        .run_ok("ip", &crate::cmd::args(args), timeout)
        .map(|_| ())
}

/// The stripped config `wg setconf`/`syncconf` was last given for `name`.
fn setconf_path(root: &NodeRoot, name: &str) -> std::path::PathBuf {
    root.path(format!("{SETCONF_DIR}/{name}.conf"))
}

/// Put every configured address on the tunnel (`replace`: idempotent).
fn replace_addresses(
    runner: &dyn CommandRunner,
    cfg: &TunnelConfig,
    timeout: Duration,
) -> Result<()> {
    for a in &cfg.addresses {
        ip(
            runner,
            &["address", "replace", a, "dev", &cfg.name],
            timeout,
        )?;
    }
    Ok(())
}

/// How a tunnel was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Implementation {
    /// The kernel's `wireguard` link type.
    Kernel,
    /// `wireguard-go` on a TUN device.
    Userspace,
}

/// Bring tunnel `cfg` up (it must not exist yet) and start the handshake
/// with every peer whose endpoint is known. Returns what was done.
pub fn up(
    root: &NodeRoot,
    runner: &dyn CommandRunner,
    cfg: &TunnelConfig,
    timeout: Duration,
) -> Result<String> {
    let name = cfg.name.as_str();
    if !cfg.ignored.is_empty() {
        log::warn!(
            "{CONFIG_DIR}/{name}.conf: wg-quick's {} not applied (no shell runs from a synced file)",
            cfg.ignored.join(", ")
        );
    }
    let setconf = setconf_path(root, name);
    crate::fsutil::atomic_write(&setconf, cfg.setconf.as_bytes(), 0o600)?;
    // The platform decides: the kernel's link type if it has one.
    let kernel = runner.run(
        "ip",
        &crate::cmd::args(&["link", "add", name, "type", "wireguard"]),
        timeout,
    )?;
    let imp = if kernel.success() {
        Implementation::Kernel
    } else {
        std::fs::create_dir_all(root.path(SOCKET_DIR))
            .with_context(|| format!("creating {}", root.path(SOCKET_DIR).display()))?;
        run_wg(root, runner, "wireguard-go", &[name.to_string()], timeout)
            .context("starting wireguard-go (the kernel has no wireguard link type)")?;
        Implementation::Userspace
    };
    let done = (|| -> Result<()> {
        let path = setconf.to_string_lossy().into_owned();
        run_wg(
            root,
            runner,
            "wg",
            &["setconf".into(), name.into(), path],
            timeout,
        )?;
        if let Some(mtu) = cfg.mtu {
            ip(
                runner,
                &["link", "set", "dev", name, "mtu", &mtu.to_string()],
                timeout,
            )?;
        }
        replace_addresses(runner, cfg, timeout)?;
        ip(runner, &["link", "set", "dev", name, "up"], timeout)?;
        for peer in &cfg.peers {
            for a in peer.allowed_ips.iter().filter(|a| !a.ends_with("/0")) {
                ip(runner, &["route", "replace", a, "dev", name], timeout)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = done {
        // No half-configured tunnel left behind: the next pass starts over.
        let _ = ip(runner, &["link", "del", "dev", name], timeout);
        return Err(e.context(format!("bringing {name} up")));
    }
    let kicked = kick(root, runner, cfg, timeout)?;
    Ok(format!(
        "{name} up ({}){}",
        match imp {
            Implementation::Kernel => "kernel",
            Implementation::Userspace => "wireguard-go",
        },
        if kicked > 0 {
            format!(", handshake started with {kicked} peer(s)")
        } else {
            String::new()
        }
    ))
}

/// Apply an edited config to a running tunnel: when `cfg` differs from
/// what the tunnel was last given (the stripped file `up` wrote), `wg
/// syncconf` (peers added, changed and removed; sessions of unchanged
/// peers kept) and the addresses again. Returns whether it changed.
pub fn resync(
    root: &NodeRoot,
    runner: &dyn CommandRunner,
    cfg: &TunnelConfig,
    timeout: Duration,
) -> Result<bool> {
    let name = cfg.name.as_str();
    let setconf = setconf_path(root, name);
    if std::fs::read_to_string(&setconf).is_ok_and(|t| t == cfg.setconf) {
        return Ok(false);
    }
    crate::fsutil::atomic_write(&setconf, cfg.setconf.as_bytes(), 0o600)?;
    let path = setconf.to_string_lossy().into_owned();
    run_wg(
        root,
        runner,
        "wg",
        &["syncconf".into(), name.into(), path],
        timeout,
    )
    .with_context(|| format!("applying the edited {CONFIG_DIR}/{name}.conf"))?;
    replace_addresses(runner, cfg, timeout)?;
    Ok(true)
}

/// Set the known endpoints of `cfg`'s peers (recorded, else configured)
/// and start a handshake with each: switching the persistent keepalive on
/// from off sends a keepalive at once, which needs a session. The
/// configured keepalive is restored afterwards. Returns how many peers.
pub fn kick(
    root: &NodeRoot,
    runner: &dyn CommandRunner,
    cfg: &TunnelConfig,
    timeout: Duration,
) -> Result<usize> {
    let recorded = read_endpoints(root).unwrap_or_else(|e| {
        log::warn!("{e:#}: starting handshakes with configured endpoints only");
        Endpoints::default()
    });
    let known: Vec<(&PeerConfig, String)> = cfg
        .peers
        .iter()
        .filter_map(|p| {
            // A recorded endpoint is an address and port, nothing else
            // (the file comes from the primary through the sync).
            let ep = recorded
                .tunnels
                .get(&cfg.name)
                .and_then(|t| t.get(&p.public_key))
                .filter(|e| e.parse::<std::net::SocketAddr>().is_ok())
                .cloned()
                .or_else(|| p.endpoint.clone())?;
            Some((p, ep))
        })
        .collect();
    if known.is_empty() {
        return Ok(0);
    }
    let set = |f: &dyn Fn(&PeerConfig, &str) -> Vec<String>| -> Result<()> {
        let mut argv = vec!["set".to_string(), cfg.name.clone()];
        for (p, ep) in &known {
            argv.push("peer".into());
            argv.push(p.public_key.clone());
            argv.extend(f(p, ep));
        }
        run_wg(root, runner, "wg", &argv, timeout).map(|_| ())
    };
    set(&|_, ep| {
        vec![
            "endpoint".into(),
            ep.into(),
            "persistent-keepalive".into(),
            "0".into(),
        ]
    })?;
    set(&|_, _| vec!["persistent-keepalive".into(), KICK_KEEPALIVE.into()])?;
    set(&|p, _| vec!["persistent-keepalive".into(), p.keepalive.to_string()])?;
    Ok(known.len())
}

/// Remove tunnel `name` (kernel link or wireguard-go's TUN device; wireguard-go
/// exits when its device goes).
pub fn down(runner: &dyn CommandRunner, name: &str, timeout: Duration) -> Result<()> {
    ip(runner, &["link", "del", "dev", name], timeout).with_context(|| format!("removing {name}"))
}

/// One peer as `wg show NAME dump` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerState {
    pub public_key: String,
    /// `None` until the peer's first packet.
    pub endpoint: Option<String>,
    /// Unix seconds of the last handshake (0: never).
    pub latest_handshake: u64,
}

/// Parse `wg show NAME dump` (tab-separated; the first line is the interface).
pub fn parse_dump(text: &str) -> Vec<PeerState> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() >= 5).then(|| PeerState {
                public_key: f[0].to_string(),
                endpoint: Some(f[2]).filter(|e| *e != "(none)").map(str::to_string),
                latest_handshake: f[4].parse().unwrap_or(0),
            })
        })
        .collect()
}

/// The peers of a running tunnel.
pub fn peers(
    root: &NodeRoot,
    runner: &dyn CommandRunner,
    name: &str,
    timeout: Duration,
) -> Result<Vec<PeerState>> {
    let out = run_wg(
        root,
        runner,
        "wg",
        &["show".into(), name.into(), "dump".into()],
        timeout,
    )?;
    Ok(parse_dump(&out))
}

/// The recorded endpoints: tunnel name -> peer public key -> `IP:PORT`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoints {
    pub tunnels: BTreeMap<String, BTreeMap<String, String>>,
}

/// Read [`ENDPOINTS_FILE`] (empty when absent).
pub fn read_endpoints(root: &NodeRoot) -> Result<Endpoints> {
    let path = root.path(ENDPOINTS_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            fail(
                Code::Config,
                format!(
                    "{} is malformed ({e}): remove it, the MASTER records it again",
                    path.display()
                ),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Endpoints::default()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    }
}

/// Merge what the running tunnels report into the recorded endpoints:
/// a peer's new endpoint replaces its old one, a peer that reports none
/// keeps its old one, peers and tunnels no longer configured are dropped.
pub fn merge_endpoints(
    old: &Endpoints,
    seen: &BTreeMap<String, Vec<PeerState>>,
    configured: &BTreeMap<String, Vec<String>>,
) -> Endpoints {
    let mut out = Endpoints::default();
    for (tunnel, keys) in configured {
        let mut peers = BTreeMap::new();
        for k in keys {
            let now = seen
                .get(tunnel)
                .and_then(|ps| ps.iter().find(|p| &p.public_key == k))
                .and_then(|p| p.endpoint.clone());
            let before = old.tunnels.get(tunnel).and_then(|t| t.get(k)).cloned();
            if let Some(ep) = now.or(before) {
                peers.insert(k.clone(), ep);
            }
        }
        if !peers.is_empty() {
            out.tunnels.insert(tunnel.clone(), peers);
        }
    }
    out
}

/// Record the endpoints of the tunnels running here into [`ENDPOINTS_FILE`]
/// (written only when it changes). Returns whether it changed.
pub fn record_endpoints(
    root: &NodeRoot,
    runner: &dyn CommandRunner,
    running: &dyn Fn(&str) -> bool,
    timeout: Duration,
) -> Result<bool> {
    let mut configured_peers = BTreeMap::new();
    let mut seen = BTreeMap::new();
    for name in configured(root)? {
        let cfg = match load(root, &name) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("{e:#}");
                continue;
            }
        };
        configured_peers.insert(
            name.clone(),
            cfg.peers
                .iter()
                .map(|p| p.public_key.clone())
                .collect::<Vec<_>>(),
        );
        if running(&name) {
            seen.insert(name.clone(), peers(root, runner, &name, timeout)?);
        }
    }
    let old = read_endpoints(root).unwrap_or_default();
    let new = merge_endpoints(&old, &seen, &configured_peers);
    if new == old {
        return Ok(false);
    }
    let text = serde_json::to_string_pretty(&new)? + "\n";
    crate::fsutil::atomic_write(&root.path(ENDPOINTS_FILE), text.as_bytes(), 0o600)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::{CmdOutput, RecordingRunner};

    const SERVER: &str = "# road warriors\n[Interface]\nPrivateKey = cHJpdmF0ZQ==\nListenPort = 51820\nAddress = 10.99.20.1/24\nMTU = 1420\nDNS = 10.99.1.254\nPostUp = echo hi\n\n[Peer]\nPublicKey = QUxJQ0U=\nAllowedIPs = 10.99.20.2/32\n\n[Peer]\nPublicKey = Qk9C\nAllowedIPs = 10.99.20.3/32, 10.99.30.0/24\nEndpoint = 10.99.2.50:51820\nPersistentKeepalive = 15\n";

    fn root() -> (tempfile::TempDir, NodeRoot) {
        let d = tempfile::tempdir().unwrap();
        let r = NodeRoot::new(d.path()).unwrap();
        (d, r)
    }

    #[test]
    fn wg_quick_keys_are_taken_out_of_what_wg_setconf_reads() {
        let c = parse("wg0", SERVER).unwrap();
        assert_eq!(c.addresses, ["10.99.20.1/24"]);
        assert_eq!(c.mtu, Some(1420));
        assert_eq!(c.ignored, ["DNS", "PostUp"]);
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.peers[1].allowed_ips, ["10.99.20.3/32", "10.99.30.0/24"]);
        assert_eq!(c.peers[1].endpoint.as_deref(), Some("10.99.2.50:51820"));
        assert_eq!(c.peers[1].keepalive, 15);
        assert!(!c.setconf.contains("Address") && !c.setconf.contains("PostUp"));
        assert!(c.setconf.contains("ListenPort = 51820\n"));
        assert!(c.setconf.contains("PublicKey = Qk9C\n"));
        let e = parse("wg0", "[Peer]\nAllowedIPs = 10.0.0.0/8\n").unwrap_err();
        assert!(e.to_string().contains("no PublicKey"), "{e}");
        assert!(parse("wg0", "ListenPort = 1\n").is_err());
        assert!(parse("wg0", "[Interface]\nMTU = big\n").is_err());
        assert!(parse("a-name-longer-than-15", "").is_err());
    }

    #[test]
    fn under_a_node_root_wg_sees_the_nodes_own_socket_dir() {
        let (_d, r) = root();
        let (p, a) = wg_command(&r, "wg", &["show".into()]);
        assert_eq!(p, "unshare");
        let sock = r.path(SOCKET_DIR).to_string_lossy().into_owned();
        let i = a.iter().position(|x| *x == sock).unwrap();
        assert_eq!(a[i - 1], SOCKET_DIR);
        assert_eq!(&a[i + 1..], ["--", "wg", "show"]);
        let (p, a) = wg_command(&NodeRoot::system(), "wg", &["show".into()]);
        assert_eq!((p.as_str(), a), ("wg", vec!["show".to_string()]));
    }

    #[test]
    fn bring_up_falls_back_to_wireguard_go_and_kicks_known_peers() {
        let (_d, r) = root();
        let runner = RecordingRunner::new();
        runner.answer(
            "link add",
            CmdOutput {
                status: Some(2),
                stderr: "Error: Unknown device type.".into(),
                ..Default::default()
            },
        );
        let mut rec = Endpoints::default();
        rec.tunnels.insert(
            "wg0".into(),
            [
                ("QUxJQ0U=".to_string(), "10.99.2.100:40000".to_string()),
                // Not an address: ignored, the configured endpoint is used.
                ("Qk9C".to_string(), "--help".to_string()),
            ]
            .into(),
        );
        std::fs::create_dir_all(r.path(CONFIG_DIR)).unwrap();
        std::fs::write(r.path(ENDPOINTS_FILE), serde_json::to_string(&rec).unwrap()).unwrap();
        let c = parse("wg0", SERVER).unwrap();
        let done = up(&r, &runner, &c, Duration::from_secs(1)).unwrap();
        assert!(
            done.contains("wireguard-go") && done.contains("2 peer(s)"),
            "{done}"
        );
        let calls: Vec<String> = runner.calls().iter().map(|c| c.join(" ")).collect();
        let pos = |needle: &str| {
            calls
                .iter()
                .position(|c| c.contains(needle))
                .unwrap_or_else(|| panic!("{needle} not in {calls:#?}"))
        };
        assert!(pos("wireguard-go wg0") < pos("wg setconf wg0"));
        assert!(pos("wg setconf wg0") < pos("link set dev wg0 up"));
        assert!(pos("address replace 10.99.20.1/24 dev wg0") < pos("link set dev wg0 up"));
        assert!(pos("route replace 10.99.30.0/24 dev wg0") > pos("link set dev wg0 up"));
        // The recorded endpoint of the road warrior, the configured one of the site.
        let set = &calls[pos("peer QUxJQ0U= endpoint")];
        assert!(
            set.contains("endpoint 10.99.2.100:40000 persistent-keepalive 0"),
            "{set}"
        );
        assert!(set.contains("peer Qk9C endpoint 10.99.2.50:51820"), "{set}");
        let on = pos("persistent-keepalive 25");
        assert!(on > pos("peer QUxJQ0U= endpoint"));
        assert!(
            calls[on + 1].contains("peer Qk9C persistent-keepalive 15"),
            "{calls:#?}"
        );
        // The stripped config, private.
        let f = r.path("/run/ns-ha/wireguard/wg0.conf");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!std::fs::read_to_string(f).unwrap().contains("PostUp"));
    }

    #[test]
    fn an_edited_config_reaches_the_running_tunnel_once() {
        let (_d, r) = root();
        let runner = RecordingRunner::new();
        let c = parse("wg0", SERVER).unwrap();
        up(&r, &runner, &c, Duration::from_secs(1)).unwrap();
        let t = Duration::from_secs(1);
        assert!(
            !resync(&r, &runner, &c, t).unwrap(),
            "unchanged: nothing to do"
        );
        let edited = parse("wg0", &SERVER.replace("10.99.20.3/32", "10.99.20.4/32")).unwrap();
        let before = runner.calls().len();
        assert!(resync(&r, &runner, &edited, t).unwrap());
        let calls: Vec<String> = runner.calls()[before..]
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert!(calls[0].contains("wg syncconf wg0"), "{calls:#?}");
        assert!(
            calls[1].contains("address replace 10.99.20.1/24 dev wg0"),
            "{calls:#?}"
        );
        assert!(!resync(&r, &runner, &edited, t).unwrap());
    }

    #[test]
    fn a_failed_bring_up_removes_the_half_made_link() {
        let (_d, r) = root();
        let runner = RecordingRunner::new();
        runner.answer(
            "setconf",
            CmdOutput {
                status: Some(1),
                stderr: "Key is not the correct length or format".into(),
                ..Default::default()
            },
        );
        let c = parse("wg0", SERVER).unwrap();
        let e = up(&r, &runner, &c, Duration::from_secs(1)).unwrap_err();
        assert!(format!("{e:#}").contains("correct length"), "{e:#}");
        let calls: Vec<String> = runner.calls().iter().map(|c| c.join(" ")).collect();
        assert_eq!(calls.last().unwrap(), "ip link del dev wg0");
        assert!(!calls.iter().any(|c| c.contains(" up")), "{calls:#?}");
    }

    #[test]
    fn endpoints_are_merged_and_written_only_when_they_change() {
        let dump = "cHJpdmF0ZQ==\tcHVi\t51820\toff\nQUxJQ0U=\t(none)\t10.99.2.100:40000\t10.99.20.2/32\t1796038803\t404\t348\toff\nQk9C\t(none)\t(none)\t10.99.20.3/32\t0\t0\t0\toff\n";
        let seen = parse_dump(dump);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].endpoint.as_deref(), Some("10.99.2.100:40000"));
        assert_eq!(seen[1].endpoint, None);
        let mut old = Endpoints::default();
        old.tunnels.insert(
            "wg0".into(),
            [
                ("Qk9C".to_string(), "10.99.2.7:1".to_string()),
                ("R09ORQ==".to_string(), "10.99.2.8:1".to_string()),
            ]
            .into(),
        );
        old.tunnels.insert(
            "wg9".into(),
            [("X".to_string(), "1.2.3.4:5".to_string())].into(),
        );
        let configured: BTreeMap<String, Vec<String>> = [(
            "wg0".to_string(),
            vec!["QUxJQ0U=".to_string(), "Qk9C".to_string()],
        )]
        .into();
        let new = merge_endpoints(&old, &[("wg0".to_string(), seen)].into(), &configured);
        let wg0 = &new.tunnels["wg0"];
        assert_eq!(wg0["QUxJQ0U="], "10.99.2.100:40000");
        assert_eq!(
            wg0["Qk9C"], "10.99.2.7:1",
            "no endpoint now: the old one stays"
        );
        assert_eq!(wg0.len(), 2, "a peer no longer configured is dropped");
        assert!(!new.tunnels.contains_key("wg9"));

        let (_d, r) = root();
        std::fs::create_dir_all(r.path(CONFIG_DIR)).unwrap();
        std::fs::write(r.path("/etc/wireguard/wg0.conf"), SERVER).unwrap();
        let runner = RecordingRunner::new();
        runner.answer(
            "dump",
            CmdOutput {
                status: Some(0),
                stdout: dump.into(),
                ..Default::default()
            },
        );
        let t = Duration::from_secs(1);
        assert!(record_endpoints(&r, &runner, &|n| n == "wg0", t).unwrap());
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(r.path(ENDPOINTS_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            read_endpoints(&r).unwrap().tunnels["wg0"]["QUxJQ0U="],
            "10.99.2.100:40000"
        );
        runner.answer(
            "dump",
            CmdOutput {
                status: Some(0),
                stdout: dump.into(),
                ..Default::default()
            },
        );
        assert!(!record_endpoints(&r, &runner, &|n| n == "wg0", t).unwrap());
        // Not running here: nothing asked, nothing changed.
        let quiet = RecordingRunner::new();
        assert!(!record_endpoints(&r, &quiet, &|_| false, t).unwrap());
        assert!(quiet.calls().is_empty());
    }
}
