//! Bringing takeover WANs up and down through the platform's interface
//! manager, and installing their definitions where that manager reads them.
//!
//! A WAN is not raw `ip link`/`ip addr`: the platform's manager knows how to
//! build a bridge, a bond, a VLAN, run the DHCP client or pppd, set the
//! cluster MAC before the link comes up, and add the routes. So both nodes
//! hold the same definitions (imported disabled, never brought up at boot)
//! and the role engine asks the manager to bring a WAN up on the MASTER and
//! down elsewhere: ifupdown (`ifup`/`ifdown`, a file of the cluster's own) on
//! Debian, netifd (`ifup`/`ifdown` by logical name, `network` UCI sections)
//! on OpenWrt. Both sit behind [`InterfaceControl`]; unit tests use the
//! recording command runner.

use anyhow::Result;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::cmd::{args, CommandRunner};
use crate::fsutil::{atomic_write, remove_if_exists};
use crate::platform::InterfaceManager;
use crate::root::NodeRoot;
use crate::wan::{self, Wan};

/// How long one `ifup`/`ifdown` may take (a DHCP client gives up by itself).
pub const IF_TIMEOUT: Duration = Duration::from_secs(30);

/// The node's interface manager as the role engine and installs see it.
pub trait InterfaceControl: Send + Sync {
    /// Write the WAN definitions (replacing those of `previous`), disabled.
    /// Returns what was done, for the log.
    fn install(&self, previous: &[Wan], wans: &[Wan]) -> Result<Vec<String>>;
    /// Bring `wan` up (cluster MAC first, then addresses and routes).
    fn up(&self, wan: &Wan, timeout: Duration) -> Result<()>;
    /// Take `wan` down: no address, link down, so it answers no ARP/ND.
    fn down(&self, wan: &Wan, timeout: Duration) -> Result<()>;
    /// Where `wan` is on this node now.
    fn state(&self, wan: &Wan, timeout: Duration) -> Result<WanState>;
    /// The IPv4 address of the DHCP lease `wan` last had on this node, if
    /// the DHCP client keeps a record of it (a new master with the cluster
    /// MAC is offered the same address: it probes it before `ifup`).
    fn last_lease(&self, _wan: &Wan) -> Option<Ipv4Addr> {
        None
    }
    /// Whether `up` takes a VLAN device that already exists as the WAN's
    /// (ifupdown adds one only when it is missing), so the role engine may
    /// add it first to probe the WAN's address on it, tagged, before `up`.
    fn adopts_existing_vlan(&self) -> bool {
        false
    }
}

/// Where a takeover WAN is on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WanState {
    /// Up with all its addresses.
    Up,
    /// Down: no link, none of its addresses.
    Down,
    /// Anything between (half configured, or the manager's state disagrees
    /// with the device): taken down before it is brought up.
    Partial,
}

/// The state of a WAN whose device `ip` can see.
fn device_state(runner: &dyn CommandRunner, w: &Wan, timeout: Duration) -> Result<WanState> {
    Ok(match wan::observe(runner, &w.interface, timeout)? {
        None => WanState::Down,
        Some(live) if live.is_up(w) => WanState::Up,
        Some(live) if live.is_down(w) => WanState::Down,
        Some(_) => WanState::Partial,
    })
}

/// The control of `manager` on the node at `root`.
pub fn control<'a>(
    manager: InterfaceManager,
    root: &NodeRoot,
    runner: &'a dyn CommandRunner,
) -> Box<dyn InterfaceControl + 'a> {
    match manager {
        InterfaceManager::Ifupdown => Box::new(Ifupdown {
            root: root.clone(),
            runner,
        }),
        InterfaceManager::Netifd => Box::new(Netifd {
            root: root.clone(),
            runner,
        }),
    }
}

/// Where the DHCP client ifupdown starts keeps its pid and lease files.
const DHCP_CLIENT_DIRS: [&str; 2] = ["/run", "/var/lib/dhcp"];
/// dhclient's config and dhclient-script's hooks.
const DHCP_CLIENT_CONFIG_DIR: &str = "/etc/dhcp";
/// pppd's config: the peers files `pon` reads, the secrets, the hooks.
const PPP_CONFIG_DIR: &str = "/etc/ppp";

/// Debian's ifupdown with the cluster's own file ([`wan::IFUPDOWN_FILE`]).
pub struct Ifupdown<'a> {
    pub root: NodeRoot,
    pub runner: &'a dyn CommandRunner,
}

impl Ifupdown<'_> {
    /// `-i FILE --state-dir DIR` under the node root. Off the system root
    /// (the lab's nodes) also `--no-scripts`: the hooks in
    /// /etc/network/if-*.d belong to the machine, not to the node.
    fn base_args(&self) -> Vec<String> {
        let mut a = vec![
            "-i".to_string(),
            self.root
                .path(wan::IFUPDOWN_FILE)
                .to_string_lossy()
                .into_owned(),
            "--state-dir".to_string(),
            self.root
                .path(wan::IFUPDOWN_STATE_DIR)
                .to_string_lossy()
                .into_owned(),
        ];
        if !self.root.is_system() {
            a.push("--no-scripts".into());
        }
        a
    }

    /// `program` (ifup or ifdown) with its arguments, seeing the node's own
    /// DHCP client files: ifupdown's `inet dhcp` runs dhclient with fixed
    /// paths (`/run/dhclient.IF.pid`, `/var/lib/dhcp/dhclient.IF.leases`),
    /// which two nodes on one machine would share, so under a node root
    /// other than `/` these directories are the node's
    /// ([`NodeRoot::command_seeing_own`]), and so is `/etc/dhcp` (dhclient's
    /// config and dhclient-script's hooks) when the node has one: the lab's
    /// keeps dhclient-script off the machine's `/etc/resolv.conf`. The same
    /// for `/etc/ppp`: `pon` and pppd read `/etc/ppp/peers/NAME` and the
    /// secrets there, and the node's are the ones [`Ifupdown::install`]
    /// wrote and the sync brought.
    fn command(&self, program: &str, extra: &[&str], wan: &Wan) -> (String, Vec<String>) {
        let mut a = self.base_args();
        a.extend(args(extra));
        a.push(wan.interface.clone());
        let mut dirs = DHCP_CLIENT_DIRS.to_vec();
        for d in [DHCP_CLIENT_CONFIG_DIR, PPP_CONFIG_DIR] {
            if self.root.path(d).is_dir() {
                dirs.push(d);
            }
        }
        self.root.command_seeing_own(&dirs, program, &a)
    }

    /// pppd's peers file of a PPPoE WAN (`pon NAME` reads it).
    fn peer_file(&self, w: &Wan) -> std::path::PathBuf {
        self.root.path(wan::PPP_PEERS_DIR).join(&w.interface)
    }

    fn run(&self, program: &str, extra: &[&str], wan: &Wan, timeout: Duration) -> Result<()> {
        std::fs::create_dir_all(self.root.path(wan::IFUPDOWN_STATE_DIR))?;
        let (p, a) = self.command(program, extra, wan);
        self.runner.run_ok(&p, &a, timeout).map(|_| ())
    }
}

impl InterfaceControl for Ifupdown<'_> {
    fn install(&self, previous: &[Wan], wans: &[Wan]) -> Result<Vec<String>> {
        let path = self.root.path(wan::IFUPDOWN_FILE);
        let mut done = Vec::new();
        // A WAN that leaves the cluster goes down while its old definition
        // is still there to say how.
        for gone in previous
            .iter()
            .filter(|p| !wans.iter().any(|w| w.interface == p.interface))
        {
            match self.down(gone, IF_TIMEOUT) {
                Ok(()) => done.push(format!(
                    "ifdown {} (removed from the cluster)",
                    gone.interface
                )),
                Err(e) => log::warn!("taking down removed WAN {}: {e:#}", gone.interface),
            }
        }
        for gone in previous.iter().filter(|p| {
            wan::render_ppp_peer(p).is_some()
                && !wans
                    .iter()
                    .any(|w| w.interface == p.interface && wan::render_ppp_peer(w).is_some())
        }) {
            let peer = self.peer_file(gone);
            if remove_if_exists(&peer)? {
                done.push(format!("removed {}", peer.display()));
            }
        }
        for w in wans {
            if let Some(text) = wan::render_ppp_peer(w) {
                let peer = self.peer_file(w);
                if std::fs::read_to_string(&peer).ok().as_deref() != Some(text.as_str()) {
                    atomic_write(&peer, text.as_bytes(), 0o644)?;
                    done.push(format!("wrote {}", peer.display()));
                }
            }
        }
        if wans.is_empty() {
            if remove_if_exists(&path)? {
                done.push(format!("removed {}", path.display()));
            }
            return Ok(done);
        }
        let text = wan::render_ifupdown(wans);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            atomic_write(&path, text.as_bytes(), 0o644)?;
            done.push(format!("wrote {}", path.display()));
        }
        Ok(done)
    }

    fn up(&self, wan: &Wan, timeout: Duration) -> Result<()> {
        self.run("ifup", &[], wan, timeout)
    }

    fn down(&self, wan: &Wan, timeout: Duration) -> Result<()> {
        // --force: deconfigure also what ifupdown's state does not know
        // about (a node that crashed with the WAN up, a state dir on tmpfs).
        self.run("ifdown", &["--force"], wan, timeout)
    }

    fn adopts_existing_vlan(&self) -> bool {
        true
    }

    fn last_lease(&self, w: &Wan) -> Option<Ipv4Addr> {
        // ifupdown's dhclient keeps /var/lib/dhcp/dhclient.IF.leases (the
        // node's own under a node root, see `command`).
        let file = format!("{}/dhclient.{}.leases", DHCP_CLIENT_DIRS[1], w.interface);
        let text = std::fs::read_to_string(self.root.path(file)).ok()?;
        wan::last_dhclient_lease(&text)
    }

    fn state(&self, w: &Wan, timeout: Duration) -> Result<WanState> {
        // ifupdown's own record (`ifstate.IF` names it while configured): a
        // WAN it thinks is up is not brought up again by `ifup`.
        let recorded = std::fs::read_to_string(
            self.root
                .path(wan::IFUPDOWN_STATE_DIR)
                .join(format!("ifstate.{}", w.interface)),
        )
        .is_ok_and(|t| !t.trim().is_empty());
        if matches!(w.device, crate::wan::WanDevice::Pppoe { .. }) {
            // The session's device (pppN) is not known by name: ifupdown's record tells.
            return Ok(if recorded {
                WanState::Up
            } else {
                WanState::Down
            });
        }
        Ok(match (device_state(self.runner, w, timeout)?, recorded) {
            (WanState::Up, true) => WanState::Up,
            (WanState::Down, false) => WanState::Down,
            _ => WanState::Partial,
        })
    }
}

/// OpenWrt's netifd, driven through `uci`, `ifup`/`ifdown` and `ubus`.
pub struct Netifd<'a> {
    pub root: NodeRoot,
    pub runner: &'a dyn CommandRunner,
}

const UCI: &str = "/sbin/uci";

impl InterfaceControl for Netifd<'_> {
    fn install(&self, previous: &[Wan], wans: &[Wan]) -> Result<Vec<String>> {
        // Only a real OpenWrt system has UCI; the lab's OpenWrt-style roots do not.
        if !self.root.is_system() || !std::path::Path::new(UCI).exists() {
            return Ok(Vec::new());
        }
        if previous.is_empty() && wans.is_empty() {
            return Ok(Vec::new());
        }
        for gone in previous
            .iter()
            .filter(|p| !wans.iter().any(|w| w.interface == p.interface))
        {
            if let Err(e) = self.down(gone, IF_TIMEOUT) {
                log::warn!("taking down removed WAN {}: {e:#}", gone.interface);
            }
        }
        self.import(previous, wans)
    }

    fn up(&self, wan: &Wan, timeout: Duration) -> Result<()> {
        self.runner
            .run_ok("/sbin/ifup", &[wan::uci_name(wan)], timeout)
            .map(|_| ())
    }

    fn down(&self, wan: &Wan, timeout: Duration) -> Result<()> {
        self.runner
            .run_ok("/sbin/ifdown", &[wan::uci_name(wan)], timeout)
            .map(|_| ())
    }

    fn state(&self, w: &Wan, timeout: Duration) -> Result<WanState> {
        let up = self.is_up(w, timeout)?;
        if matches!(w.device, crate::wan::WanDevice::Pppoe { .. }) {
            return Ok(if up { WanState::Up } else { WanState::Down });
        }
        Ok(match (device_state(self.runner, w, timeout)?, up) {
            (WanState::Up, true) => WanState::Up,
            (WanState::Down, false) => WanState::Down,
            _ => WanState::Partial,
        })
    }
}

impl Netifd<'_> {
    /// Run the UCI import (`uci set ...`, `uci commit network`) and
    /// `ubus call network reload`, so netifd knows the sections (disabled).
    pub fn import(&self, previous: &[Wan], wans: &[Wan]) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for cmd in wan::uci_commands(previous, wans) {
            let out = self.runner.run(UCI, &cmd, IF_TIMEOUT)?;
            // Deleting a section that is not there is not an error.
            if !out.success() && cmd.first().map(String::as_str) != Some("-q") {
                return Err(crate::exit::fail(
                    crate::exit::Code::Dependency,
                    format!("uci {} failed: {}", cmd.join(" "), out.reason()),
                ));
            }
            done.push(format!("uci {}", cmd.join(" ")));
        }
        self.runner
            .run_ok("ubus", &args(&["call", "network", "reload"]), IF_TIMEOUT)?;
        done.push("ubus call network reload".into());
        Ok(done)
    }

    /// Whether netifd says the WAN is up (`ubus call network.interface.NAME status`).
    pub fn is_up(&self, wan: &Wan, timeout: Duration) -> Result<bool> {
        let out = self.runner.run_ok(
            "ubus",
            &args(&[
                "call",
                &format!("network.interface.{}", wan::uci_name(wan)),
                "status",
            ]),
            timeout,
        )?;
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
        Ok(v["up"].as_bool() == Some(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::{CmdOutput, RecordingRunner};
    use crate::wan::{Ipv4Method, WanDevice};

    fn wan1() -> Wan {
        Wan {
            interface: "wan1".into(),
            device: WanDevice::Physical,
            ipv4: Some(Ipv4Method::Static {
                address: "10.99.3.1/24".parse().unwrap(),
                gateway: None,
            }),
            ipv6: None,
            mac: None,
            metric: None,
        }
    }

    #[test]
    fn ifupdown_uses_the_cluster_file_and_the_node_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        let runner = RecordingRunner::new();
        let c = control(InterfaceManager::Ifupdown, &root, &runner);
        let done = c.install(&[], &[wan1()]).unwrap();
        assert_eq!(done.len(), 1, "{done:?}");
        let text = std::fs::read_to_string(root.path(wan::IFUPDOWN_FILE)).unwrap();
        assert!(text.contains("iface wan1 inet static"), "{text}");
        // Unchanged: not rewritten.
        assert!(c.install(&[wan1()], &[wan1()]).unwrap().is_empty());
        c.up(&wan1(), IF_TIMEOUT).unwrap();
        c.down(&wan1(), IF_TIMEOUT).unwrap();
        let file = root.path(wan::IFUPDOWN_FILE).to_string_lossy().into_owned();
        let state = root.path("/run/network").to_string_lossy().into_owned();
        // Under a node root, in a mount namespace where the DHCP client's
        // directories are the node's (its pid and lease files).
        let base = root.base().to_string_lossy().into_owned();
        let own = format!("sh /run {base}/run /var/lib/dhcp {base}/var/lib/dhcp -- ");
        let calls: Vec<String> = runner.calls().iter().map(|c| c.join(" ")).collect();
        assert_eq!(calls.len(), 2, "{calls:#?}");
        for (call, want) in calls.iter().zip([
            format!("ifup -i {file} --state-dir {state} --no-scripts wan1"),
            format!("ifdown -i {file} --state-dir {state} --no-scripts --force wan1"),
        ]) {
            assert!(call.starts_with("unshare --mount "), "{call}");
            assert!(call.ends_with(&format!("{own}{want}")), "{call}");
        }
        // A node with its own /etc/dhcp gets that too.
        std::fs::create_dir_all(root.path("/etc/dhcp")).unwrap();
        c.up(&wan1(), IF_TIMEOUT).unwrap();
        let last = runner.calls().last().unwrap().join(" ");
        assert!(
            last.contains(&format!(" /etc/dhcp {base}/etc/dhcp -- ifup ")),
            "{last}"
        );
        // On the system root, ifup itself (and the machine's hooks).
        let sys = Ifupdown {
            root: NodeRoot::system(),
            runner: &runner,
        };
        assert_eq!(
            sys.command("ifup", &[], &wan1()),
            (
                "ifup".to_string(),
                args(&[
                    "-i",
                    wan::IFUPDOWN_FILE,
                    "--state-dir",
                    wan::IFUPDOWN_STATE_DIR,
                    "wan1"
                ])
            )
        );
        // The last lease dhclient recorded under the node root.
        assert_eq!(c.last_lease(&wan1()), None);
        std::fs::create_dir_all(root.path("/var/lib/dhcp")).unwrap();
        std::fs::write(
            root.path("/var/lib/dhcp/dhclient.wan1.leases"),
            "lease {\n  interface \"wan1\";\n  fixed-address 10.99.3.27;\n}\n",
        )
        .unwrap();
        assert_eq!(c.last_lease(&wan1()), Some(Ipv4Addr::new(10, 99, 3, 27)));
        // Removing the last WAN takes it down first, then removes the file.
        let done = c.install(&[wan1()], &[]).unwrap();
        assert!(done[0].starts_with("ifdown wan1"), "{done:?}");
        assert!(!root.path(wan::IFUPDOWN_FILE).exists());
    }

    #[test]
    fn a_pppoe_wan_gets_its_peers_file_and_the_node_own_etc_ppp() {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        let runner = RecordingRunner::new();
        let c = control(InterfaceManager::Ifupdown, &root, &runner);
        let ppp = Wan {
            interface: "pppoe-wan".into(),
            device: WanDevice::Pppoe {
                parent: "eth1".into(),
                user: "me".into(),
            },
            ipv4: None,
            ipv6: None,
            mac: None,
            metric: None,
        };
        let done = c.install(&[], std::slice::from_ref(&ppp)).unwrap();
        let peer = root.path("/etc/ppp/peers/pppoe-wan");
        assert!(
            done.contains(&format!("wrote {}", peer.display())),
            "{done:?}"
        );
        assert!(std::fs::read_to_string(&peer)
            .unwrap()
            .contains("nic-eth1\n"));
        // pon and pppd read /etc/ppp: the node's, in its mount namespace.
        c.up(&ppp, IF_TIMEOUT).unwrap();
        let base = root.base().to_string_lossy().into_owned();
        let last = runner.calls().last().unwrap().join(" ");
        assert!(
            last.contains(&format!(" /etc/ppp {base}/etc/ppp -- ifup ")),
            "{last}"
        );
        // Gone from the cluster: taken down, and its peers file goes.
        let done = c.install(&[ppp], &[wan1()]).unwrap();
        assert!(
            done.contains(&format!("removed {}", peer.display())),
            "{done:?}"
        );
        assert!(!peer.exists());
    }

    #[test]
    fn netifd_imports_through_uci_and_asks_ubus() {
        let runner = RecordingRunner::new();
        let n = Netifd {
            root: NodeRoot::system(),
            runner: &runner,
        };
        let done = n.import(&[], &[wan1()]).unwrap();
        assert_eq!(
            done.last().map(String::as_str),
            Some("ubus call network reload")
        );
        let calls: Vec<String> = runner.calls().iter().map(|c| c.join(" ")).collect();
        assert!(
            calls.contains(&"/sbin/uci set network.wan1.auto=0".to_string()),
            "{calls:#?}"
        );
        assert!(calls.contains(&"/sbin/uci commit network".to_string()));
        n.up(&wan1(), IF_TIMEOUT).unwrap();
        assert_eq!(runner.calls().last().unwrap().join(" "), "/sbin/ifup wan1");
        runner.answer(
            "ubus",
            CmdOutput {
                status: Some(0),
                stdout: r#"{"up": true, "pending": false}"#.into(),
                ..Default::default()
            },
        );
        assert!(n.is_up(&wan1(), IF_TIMEOUT).unwrap());
        assert_eq!(
            runner.calls().last().unwrap().join(" "),
            "ubus call network.interface.wan1 status"
        );
        // A failing uci set stops the import with the command in the error.
        runner.answer(
            "set network.wan1=interface",
            CmdOutput {
                status: Some(1),
                stderr: "uci: Invalid argument".into(),
                ..Default::default()
            },
        );
        let e = n.import(&[], &[wan1()]).unwrap_err();
        assert!(
            e.to_string()
                .contains("uci set network.wan1=interface failed"),
            "{e}"
        );
    }
}
