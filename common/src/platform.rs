//! The install layout of a node: which platform it is and what follows.
//!
//! The same tools run on NethSecurity/OpenWrt and on Debian, and the two
//! disagree on where things are and what manages them: root's crontab
//! (`/etc/crontabs/root` against cron's spool), the service manager (procd
//! init scripts against systemd), the interface manager (netifd against
//! ifupdown), the SSH server (dropbear against OpenSSH, each with its own
//! authorized-keys file and host-key tool) and which directory survives a
//! reboot and a firmware upgrade (`/var` is a tmpfs on OpenWrt). These facts
//! live here once, in one [`Layout`], chosen per node by `ns-ha-init
//! --platform` (or detected) and stored in `node.json`; every tool asks the
//! layout instead of hard-coding a path.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

use crate::cmd::{args, CommandRunner};

use crate::root::{paths, NodeRoot};
use crate::service::ServiceBackend;

/// The distribution family of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// NethSecurity / OpenWrt: procd, netifd, dropbear, `/var` on tmpfs.
    /// The default of a node root that says nothing (the lab's nodes).
    #[default]
    Openwrt,
    /// Debian (and derivatives): systemd, ifupdown, OpenSSH.
    Debian,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Openwrt => "openwrt",
            Platform::Debian => "debian",
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The SSH server that answers the primary on the backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SshServer {
    /// OpenSSH's sshd (what pairing has always configured).
    #[default]
    Openssh,
    /// dropbear (OpenWrt's default).
    Dropbear,
}

impl SshServer {
    pub fn as_str(self) -> &'static str {
        match self {
            SshServer::Openssh => "openssh",
            SshServer::Dropbear => "dropbear",
        }
    }
}

/// What brings the node's interfaces up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceManager {
    /// OpenWrt's netifd (`/etc/config/network`, `ifup`/`ifdown` by logical name, hotplug events).
    Netifd,
    /// Debian's ifupdown (`/etc/network/interfaces`).
    Ifupdown,
}

impl InterfaceManager {
    pub fn as_str(self) -> &'static str {
        match self {
            InterfaceManager::Netifd => "netifd",
            InterfaceManager::Ifupdown => "ifupdown",
        }
    }
}

/// The files and the tool of an SSH server, as pairing needs them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SshServerFiles {
    pub server: SshServer,
    /// The service that runs it (init script or systemd unit name).
    pub service: &'static str,
    /// root's authorized keys, where pairing puts the forced-command line.
    pub authorized_keys: &'static str,
    /// The ed25519 host key (private; the public half is derived from it by `host_key_tool`).
    pub host_key: &'static str,
    /// A ready public half of the host key, when the server keeps one.
    pub host_key_pub: Option<&'static str>,
    /// The program that prints the host key's public line: `host_key_tool -y -f host_key`.
    pub host_key_tool: &'static str,
}

impl SshServerFiles {
    pub fn of(server: SshServer) -> SshServerFiles {
        match server {
            SshServer::Openssh => SshServerFiles {
                server,
                service: "sshd",
                authorized_keys: paths::AUTHORIZED_KEYS,
                host_key: "/etc/ssh/ssh_host_ed25519_key",
                host_key_pub: Some(paths::SSH_HOST_KEY_PUB),
                host_key_tool: "ssh-keygen",
            },
            SshServer::Dropbear => SshServerFiles {
                server,
                service: "dropbear",
                authorized_keys: "/etc/dropbear/authorized_keys",
                host_key: "/etc/dropbear/dropbear_ed25519_host_key",
                host_key_pub: None,
                host_key_tool: "dropbearkey",
            },
        }
    }

    /// This node's ed25519 host key as SSH clients see it (what the primary
    /// pins): the ready `.pub` file when the server keeps one, else the
    /// public line printed by `host_key_tool -y -f host_key` (dropbear keeps
    /// only the private key; `dropbearkey -y` prints a `Public key portion
    /// is:` header, the key line and a fingerprint line).
    pub fn read_host_key(
        &self,
        root: &NodeRoot,
        runner: &dyn CommandRunner,
    ) -> Result<crate::config::PinnedHostKey> {
        let fix = match self.server {
            SshServer::Openssh => "generate it with ssh-keygen -A and start sshd",
            SshServer::Dropbear => {
                "generate it with dropbearkey -t ed25519 -f /etc/dropbear/dropbear_ed25519_host_key and restart dropbear"
            }
        };
        let unusable = |e: anyhow::Error| {
            crate::exit::fail(
                crate::exit::Code::Dependency,
                format!(
                    "this node's {} has no usable ed25519 host key ({e:#}): {fix}",
                    self.service
                ),
            )
        };
        if let Some(public) = self.host_key_pub {
            return crate::ssh::read_public_key(&root.path(public)).map_err(unusable);
        }
        let (program, argv) = self.host_key_command(root);
        let out = runner
            .run_ok(&program, &argv, HOST_KEY_TIMEOUT)
            .map_err(unusable)?;
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with("ssh-ed25519 "))
            .ok_or_else(|| unusable(anyhow::anyhow!("{program} printed no ssh-ed25519 key")))?;
        crate::ssh::parse_public_key(line.trim()).map_err(unusable)
    }

    /// The argument vector that prints the host key's public line
    /// (`ssh-keygen -y -f KEY`, `dropbearkey -y -f KEY`; both take the same flags).
    pub fn host_key_command(&self, root: &NodeRoot) -> (String, Vec<String>) {
        (
            self.host_key_tool.to_string(),
            vec![
                "-y".into(),
                "-f".into(),
                root.path(self.host_key).to_string_lossy().into_owned(),
            ],
        )
    }
}

/// Everything that differs between the platforms, for one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    pub platform: Platform,
    /// How services are started and stopped.
    pub service_backend: ServiceBackend,
    pub interface_manager: InterfaceManager,
    /// The package manager (`upgrade-remote` installs with it).
    pub package_manager: &'static str,
    /// root's crontab, the file the role engine enables and disables jobs in
    /// (the default of `roles.crontab`). On Debian it is cron's spool file,
    /// the one `crontab -e` edits (cron rereads it when its mtime changes);
    /// `/etc/cron.d` holds packages' jobs, not the administrator's.
    pub crontab: &'static str,
    /// Where the sync keeps its state (the default of `sync.state_dir`): on
    /// flash on OpenWrt, where `/var` is a tmpfs lost at reboot and staging
    /// must share the synced files' filesystem; `/var/lib` on Debian.
    pub sync_state_dir: &'static str,
    /// What a firmware upgrade must keep (OpenWrt `sysupgrade`'s keep.d list):
    /// the pairing and the state that must survive.
    pub keep_on_upgrade: Vec<&'static str>,
    pub ssh: SshServerFiles,
}

impl Layout {
    pub fn new(platform: Platform, ssh_server: SshServer) -> Layout {
        let ssh = SshServerFiles::of(ssh_server);
        match platform {
            Platform::Openwrt => Layout {
                platform,
                service_backend: ServiceBackend::Initd,
                interface_manager: InterfaceManager::Netifd,
                package_manager: "opkg",
                crontab: "/etc/crontabs/root",
                sync_state_dir: crate::sync_config::OPENWRT_STATE_DIR,
                keep_on_upgrade: vec![
                    paths::CONFIG_DIR,
                    crate::sync_config::OPENWRT_STATE_DIR,
                    ssh.authorized_keys,
                    ssh.host_key,
                ],
                ssh,
            },
            Platform::Debian => Layout {
                platform,
                service_backend: ServiceBackend::Systemd,
                interface_manager: InterfaceManager::Ifupdown,
                package_manager: "dpkg",
                crontab: "/var/spool/cron/crontabs/root",
                sync_state_dir: crate::sync_config::DEFAULT_STATE_DIR,
                keep_on_upgrade: Vec::new(),
                ssh,
            },
        }
    }
}

/// The file whose presence makes a node OpenWrt (platform detection, the
/// sync's `auto` profile).
pub const OPENWRT_RELEASE: &str = "/etc/openwrt_release";

/// Whether the node under `root` is OpenWrt.
pub fn is_openwrt(root: &NodeRoot) -> bool {
    root.path(OPENWRT_RELEASE).exists()
}

/// A platform and SSH server found on a node, with what told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub platform: Platform,
    /// e.g. `/etc/openwrt_release exists`, `/etc/os-release ID=debian`.
    pub platform_from: String,
    pub ssh_server: SshServer,
    pub ssh_server_from: String,
}

/// Detect the platform and the SSH server of the node at `root`, from files
/// under the root only (the lab's nodes live on a Debian machine but are
/// OpenWrt-style): `/etc/openwrt_release`, else `/etc/os-release` (`ID` or
/// `ID_LIKE` naming openwrt, else Debian), else OpenWrt. The SSH server:
/// OpenSSH when `/etc/ssh/sshd_config` exists, dropbear when `/etc/dropbear`
/// does, else the platform's own (dropbear on OpenWrt).
pub fn detect(root: &NodeRoot) -> Result<Detected> {
    let (platform, platform_from) = if is_openwrt(root) {
        (Platform::Openwrt, format!("{OPENWRT_RELEASE} exists"))
    } else {
        match std::fs::read_to_string(root.path("/etc/os-release")) {
            Ok(text) => platform_of_os_release(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
                Platform::Openwrt,
                "default (no /etc/openwrt_release or /etc/os-release)".to_string(),
            ),
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "reading {}",
                    root.path("/etc/os-release").display()
                )))
            }
        }
    };
    let (ssh_server, ssh_server_from) = if root.path("/etc/ssh/sshd_config").exists() {
        (
            SshServer::Openssh,
            "/etc/ssh/sshd_config exists".to_string(),
        )
    } else if root.path("/etc/dropbear").exists() {
        (SshServer::Dropbear, "/etc/dropbear exists".to_string())
    } else {
        let own = default_ssh_server(platform);
        (own, format!("{platform}'s default"))
    };
    Ok(Detected {
        platform,
        platform_from,
        ssh_server,
        ssh_server_from,
    })
}

/// The SSH server a platform ships.
pub fn default_ssh_server(platform: Platform) -> SshServer {
    match platform {
        Platform::Openwrt => SshServer::Dropbear,
        Platform::Debian => SshServer::Openssh,
    }
}

/// The platform an `os-release` file describes, and why.
fn platform_of_os_release(text: &str) -> (Platform, String) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(|v| v.trim().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    let id = field("ID");
    let like = field("ID_LIKE");
    let openwrt = id == "openwrt" || like.split_whitespace().any(|w| w == "openwrt");
    let platform = if openwrt {
        Platform::Openwrt
    } else {
        Platform::Debian
    };
    (platform, format!("/etc/os-release ID={id}"))
}

/// UCI's keepalived config on OpenWrt: its init script runs keepalived only
/// when this file exists.
pub const KEEPALIVED_UCI: &str = "/etc/config/keepalived";

/// The `uci` commands that make OpenWrt's keepalived init script run the
/// rendered config instead of one it generates from UCI (`alt_config_file`,
/// which it symlinks) and start it or not (`enabled`, which the package
/// ships as 0 on NethSecurity).
pub fn keepalived_uci_commands(enabled: bool) -> Vec<Vec<String>> {
    vec![
        // The section may not exist on a fresh install.
        args(&["set", "keepalived.globals=globals"]),
        args(&[
            "set",
            &format!(
                "keepalived.globals.alt_config_file={}",
                paths::KEEPALIVED_CONF
            ),
        ]),
        args(&[
            "set",
            &format!("keepalived.globals.enabled={}", u8::from(enabled)),
        ]),
        args(&["commit", "keepalived"]),
    ]
}

/// On a real OpenWrt system (the system root with `uci`), point keepalived's
/// UCI config at the rendered file and enable or disable it, at boot too
/// (`/etc/init.d/keepalived enable|disable`). Elsewhere (Debian, the lab's
/// OpenWrt-style roots, which have neither UCI nor procd) nothing. Returns
/// the commands run.
pub fn wire_keepalived(
    root: &NodeRoot,
    runner: &dyn CommandRunner,
    enabled: bool,
) -> Result<Vec<String>> {
    if !root.is_system() || !Path::new(UCI).exists() {
        return Ok(Vec::new());
    }
    let conf = root.path(KEEPALIVED_UCI);
    if !conf.exists() {
        crate::fsutil::atomic_write(&conf, b"", 0o644)?;
    }
    let mut done = Vec::new();
    for cmd in keepalived_uci_commands(enabled) {
        runner.run_ok(UCI, &cmd, UCI_TIMEOUT)?;
        done.push(format!("uci {}", cmd.join(" ")));
    }
    let boot = if enabled { "enable" } else { "disable" };
    runner.run_ok("/etc/init.d/keepalived", &args(&[boot]), UCI_TIMEOUT)?;
    done.push(format!("/etc/init.d/keepalived {boot}"));
    Ok(done)
}

const UCI: &str = "/sbin/uci";
const HOST_KEY_TIMEOUT: Duration = Duration::from_secs(10);
const UCI_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(files: &[(&str, &str)]) -> (tempfile::TempDir, NodeRoot) {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        for (p, text) in files {
            let path = root.path(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            if p.ends_with('/') {
                std::fs::create_dir_all(&path).unwrap();
            } else {
                std::fs::write(path, text).unwrap();
            }
        }
        (dir, root)
    }

    #[test]
    fn detects_openwrt_debian_and_the_ssh_server_from_files_under_the_root() {
        let (_d, r) = root_with(&[("/etc/openwrt_release", "DISTRIB_ID='OpenWrt'\n")]);
        let d = detect(&r).unwrap();
        assert_eq!(d.platform, Platform::Openwrt);
        assert_eq!(d.ssh_server, SshServer::Dropbear);
        assert_eq!(d.ssh_server_from, "openwrt's default");

        let (_d, r) = root_with(&[(
            "/etc/os-release",
            "PRETTY_NAME=\"Debian GNU/Linux 12\"\nID=debian\n",
        )]);
        let d = detect(&r).unwrap();
        assert_eq!(d.platform, Platform::Debian);
        assert_eq!(d.platform_from, "/etc/os-release ID=debian");
        assert_eq!(d.ssh_server, SshServer::Openssh);

        // NethSecurity's os-release names OpenWrt in ID_LIKE.
        let (_d, r) = root_with(&[
            (
                "/etc/os-release",
                "ID=\"nethsecurity\"\nID_LIKE=\"openwrt\"\n",
            ),
            ("/etc/ssh/sshd_config", ""),
        ]);
        let d = detect(&r).unwrap();
        assert_eq!(d.platform, Platform::Openwrt);
        assert_eq!(d.ssh_server, SshServer::Openssh, "sshd_config wins");

        let (_d, r) = root_with(&[("/etc/os-release", "ID=ubuntu\n"), ("/etc/dropbear/", "")]);
        let d = detect(&r).unwrap();
        assert_eq!(d.platform, Platform::Debian);
        assert_eq!(d.ssh_server, SshServer::Dropbear);

        // A root that says nothing (the lab's nodes): OpenWrt with init.d.
        let (_d, r) = root_with(&[]);
        let d = detect(&r).unwrap();
        assert_eq!(d.platform, Platform::Openwrt);
        assert!(
            d.platform_from.starts_with("default"),
            "{}",
            d.platform_from
        );
    }

    #[test]
    fn layouts_differ_where_the_platforms_do() {
        let w = Layout::new(Platform::Openwrt, SshServer::Dropbear);
        assert_eq!(w.service_backend, ServiceBackend::Initd);
        assert_eq!(w.interface_manager, InterfaceManager::Netifd);
        assert_eq!(w.crontab, "/etc/crontabs/root");
        assert_eq!(w.ssh.authorized_keys, "/etc/dropbear/authorized_keys");
        assert_eq!(w.ssh.host_key_tool, "dropbearkey");
        assert!(w.keep_on_upgrade.contains(&"/etc/ns-ha"));
        assert!(w.keep_on_upgrade.contains(&w.sync_state_dir));
        assert!(w.keep_on_upgrade.contains(&"/etc/dropbear/authorized_keys"));
        // The sync state on flash is valid and never synced.
        let mut s = crate::sync_config::SyncSettings {
            state_dir: w.sync_state_dir.into(),
            ..Default::default()
        };
        s.validate().unwrap();
        let d = Layout::new(Platform::Debian, SshServer::Openssh);
        assert_eq!(d.service_backend, ServiceBackend::Systemd);
        assert_eq!(d.interface_manager, InterfaceManager::Ifupdown);
        assert_eq!(d.crontab, "/var/spool/cron/crontabs/root");
        assert_eq!(d.ssh.authorized_keys, "/root/.ssh/authorized_keys");
        s.state_dir = d.sync_state_dir.into();
        s.validate().unwrap();
        let root = NodeRoot::new("/lab/fw2").unwrap();
        assert_eq!(
            w.ssh.host_key_command(&root),
            (
                "dropbearkey".to_string(),
                vec![
                    "-y".to_string(),
                    "-f".to_string(),
                    "/lab/fw2/etc/dropbear/dropbear_ed25519_host_key".to_string()
                ]
            )
        );
    }

    #[test]
    fn uci_points_keepalived_at_the_rendered_config() {
        let cmds: Vec<String> = keepalived_uci_commands(true)
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(
            cmds,
            [
                "set keepalived.globals=globals",
                "set keepalived.globals.alt_config_file=/etc/keepalived/keepalived.conf",
                "set keepalived.globals.enabled=1",
                "commit keepalived",
            ]
        );
        assert!(keepalived_uci_commands(false)
            .iter()
            .any(|c| c.join(" ") == "set keepalived.globals.enabled=0"));
    }

    #[test]
    fn no_uci_calls_under_a_node_root() {
        let (_d, root) = root_with(&[]);
        let runner = crate::cmd::RecordingRunner::new();
        assert!(wire_keepalived(&root, &runner, true).unwrap().is_empty());
        assert!(runner.calls().is_empty());
    }
}
