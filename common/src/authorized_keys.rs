//! The backup's authorized_keys line for the primary's key: the one place it
//! is made and written.
//!
//! `init-backup` writes it, `reset` removes it, and `install-cluster` on the
//! backup rewrites it whenever it differs from what this release makes of
//! `node.json` (an older line without `from=`, or another primary address),
//! so every backup carries the same restriction: the forced command
//! `ns-ha-sync receive`, `restrict`, and `from="<primary's HA address>"`.
//!
//! The file and the options depend on the backup's SSH server (its
//! [`SshServer`], from `node.json`): OpenSSH reads `/root/.ssh/authorized_keys`
//! and knows `restrict` and `from=`; dropbear (OpenWrt's) reads
//! `/etc/dropbear/authorized_keys` and refuses a line with `from=`, so its
//! line spells out the `no-*` options and the receiver checks the client
//! address itself ([`check_ssh_client`]).

use anyhow::{Context, Result};
use std::net::Ipv4Addr;

use crate::activate::tool_path;
use crate::config::{NodeConfig, PinnedHostKey};
use crate::exit::{fail, Code};
use crate::fsutil::atomic_write;
use crate::platform::{SshServer, SshServerFiles};
use crate::root::{is_shell_safe_path, NodeRoot, SHELL_SAFE_DESCRIPTION};
use crate::ssh;

/// What `restrict` means, in the options every dropbear release knows.
const DROPBEAR_OPTIONS: &str = "no-port-forwarding,no-agent-forwarding,no-X11-forwarding,no-pty";

/// Comment that marks the authorized_keys line ns-ha owns.
pub const KEY_COMMENT: &str = "ns-ha-primary";

/// The authorized_keys line that lets the primary run the sync receiver and
/// nothing else, and only from `primary_ha_address` (the primary's address on
/// the HA link).
///
/// sshd runs the forced command through `sh -c`, so every word of it must be
/// read back by sh as written: the tool path is refused here unless made of
/// [`is_shell_safe_path`] characters, and the node root cannot be anything
/// else ([`NodeRoot::new`] refuses it).
pub fn authorized_line(
    root: &NodeRoot,
    key: &PinnedHostKey,
    primary_ha_address: Ipv4Addr,
    server: SshServer,
) -> Result<String> {
    let tool = tool_path("ns-ha-sync")?.to_string_lossy().into_owned();
    if !is_shell_safe_path(&tool) {
        return Err(fail(
            Code::Failure,
            format!("ns-ha-sync is installed at {tool:?}, a path with characters other than {SHELL_SAFE_DESCRIPTION}: sshd runs it through sh, install it elsewhere (e.g. /usr/sbin)"),
        ));
    }
    let mut command = tool;
    for a in root.tool_args() {
        command.push(' ');
        command.push_str(&a);
    }
    command.push_str(" receive");
    let options = match server {
        SshServer::Openssh => format!("restrict,from=\"{primary_ha_address}\""),
        // dropbear ignores a key whose line has an option it does not know
        // (from=); `restrict` is recent there, the no-* options are not.
        SshServer::Dropbear => DROPBEAR_OPTIONS.to_string(),
    };
    Ok(format!(
        "{options},command=\"{command}\" {} {} {KEY_COMMENT}",
        key.key_type, key.key_base64
    ))
}

/// authorized_keys with ns-ha's line replaced by `line` (or removed when `None`); other keys kept.
pub fn rewrite_authorized_keys(existing: &str, line: Option<&str>) -> String {
    let mut out: String = existing
        .lines()
        .filter(|l| !is_ours(l))
        .map(|l| format!("{l}\n"))
        .collect();
    if let Some(l) = line {
        out.push_str(l);
        out.push('\n');
    }
    out
}

fn is_ours(line: &str) -> bool {
    line.trim_end().ends_with(&format!(" {KEY_COMMENT}"))
}

fn keys_path(root: &NodeRoot, server: SshServer) -> std::path::PathBuf {
    root.path(SshServerFiles::of(server).authorized_keys)
}

fn read_authorized_keys(root: &NodeRoot, server: SshServer) -> Result<String> {
    let path = keys_path(root, server);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_authorized_keys(
    root: &NodeRoot,
    server: SshServer,
    existing: &str,
    line: Option<&str>,
) -> Result<()> {
    let path = keys_path(root, server);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    atomic_write(
        &path,
        rewrite_authorized_keys(existing, line).as_bytes(),
        0o600,
    )
}

/// Authorize the primary's `key` from `primary_ha_address` (`init-backup`).
pub fn authorize_primary(
    root: &NodeRoot,
    key: &PinnedHostKey,
    primary_ha_address: Ipv4Addr,
    server: SshServer,
) -> Result<()> {
    let line = authorized_line(root, key, primary_ha_address, server)?;
    write_authorized_keys(
        root,
        server,
        &read_authorized_keys(root, server)?,
        Some(&line),
    )
}

/// Remove the primary's line from both servers' files, keeping every other
/// key (`reset`, which may run on a node whose `node.json` is gone).
pub fn unauthorize_primary(root: &NodeRoot) -> Result<()> {
    for server in [SshServer::Openssh, SshServer::Dropbear] {
        let existing = read_authorized_keys(root, server)?;
        if existing.lines().any(is_ours) {
            write_authorized_keys(root, server, &existing, None)?;
        }
    }
    Ok(())
}

/// Rewrite the primary's line from `node` (its key kept, `from=` the node's
/// peer address) when it differs from what [`authorized_line`] makes; true
/// when it was rewritten. A missing line, or one whose key is not the
/// fingerprint `node.json` recorded at init, is left alone: the fix for
/// those is `init-backup`, not something the primary may trigger.
pub fn refresh_primary_line(root: &NodeRoot, node: &NodeConfig) -> Result<bool> {
    let existing = read_authorized_keys(root, node.ssh_server)?;
    let Some(current) = existing.lines().find(|l| is_ours(l)) else {
        return Ok(false);
    };
    let words: Vec<&str> = current.split_whitespace().collect();
    let Some(key_words) = words
        .len()
        .checked_sub(3)
        .map(|i| &words[i..words.len() - 1])
    else {
        return Ok(false);
    };
    let Ok(key) = ssh::parse_public_key(&key_words.join(" ")) else {
        return Ok(false);
    };
    if node.authorized_key_fingerprint.as_deref() != Some(key.fingerprint.as_str()) {
        return Ok(false);
    }
    let line = authorized_line(root, &key, node.peer_address, node.ssh_server)?;
    if line == current.trim_end() {
        return Ok(false);
    }
    write_authorized_keys(root, node.ssh_server, &existing, Some(&line))?;
    Ok(true)
}

/// The variable in which the SSH server (OpenSSH and dropbear alike) tells
/// the forced command who connected: `ADDR PORT LOCALPORT`.
pub const SSH_CLIENT_ENV: &str = "SSH_CLIENT";

/// `from=` enforced by the receiver itself: on a backup, refuse a channel
/// whose `SSH_CLIENT` is not the primary's HA address (`node.json`'s peer).
///
/// dropbear refuses a key line with `from=` outright (it knows `restrict`,
/// `no-*`, `command=` and `permitopen=` only), so on dropbear this is what
/// keeps a copy of the primary's key useless off the HA link; on OpenSSH it
/// repeats `from=`. `None` (no SSH server: the receiver run by hand or by a
/// test on its stdin) and a node that is not a paired backup pass: the
/// receiver refuses those by itself.
pub fn check_ssh_client(root: &NodeRoot, ssh_client: Option<&str>) -> Result<()> {
    let Some(client) = ssh_client else {
        return Ok(());
    };
    let Some(node) = crate::config::load_node_opt(root)? else {
        return Ok(());
    };
    if node.role != crate::config::Role::Backup {
        return Ok(());
    }
    let from = client
        .split_whitespace()
        .next()
        .and_then(|a| a.parse::<std::net::IpAddr>().ok())
        .map(|a| match a {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            v4 => v4,
        });
    if from != Some(std::net::IpAddr::V4(node.peer_address)) {
        return Err(fail(
            Code::Security,
            format!(
                "the primary's key was used from {client:?}, but it is accepted only from the primary's HA address {}: refused (if the primary's HA address changed, run ns-ha-init reset --yes and init-backup --peer NEW here)",
                node.peer_address
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::root::paths;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEt1Ig8czKwgR7Z9el8tb0tUfSP1AJewPrV9zoXG26FS x";

    #[test]
    fn authorized_keys_keeps_other_keys() {
        let existing = "ssh-ed25519 AAAAother admin@laptop\nrestrict,command=\"old\" ssh-ed25519 AAAAold ns-ha-primary\n";
        let out = rewrite_authorized_keys(
            existing,
            Some("restrict,command=\"new\" ssh-ed25519 AAAAnew ns-ha-primary"),
        );
        assert_eq!(out, "ssh-ed25519 AAAAother admin@laptop\nrestrict,command=\"new\" ssh-ed25519 AAAAnew ns-ha-primary\n");
        assert_eq!(
            rewrite_authorized_keys(&out, None),
            "ssh-ed25519 AAAAother admin@laptop\n"
        );
    }

    #[test]
    fn authorized_line_forces_the_receiver_from_the_primary_only() {
        let root = NodeRoot::new("/lab/fw2").unwrap();
        let key = ssh::parse_public_key(KEY).unwrap();
        let line =
            authorized_line(&root, &key, Ipv4Addr::new(10, 99, 0, 1), SshServer::Openssh).unwrap();
        assert!(
            line.starts_with("restrict,from=\"10.99.0.1\",command=\""),
            "{line}"
        );
        assert!(line.contains("ns-ha-sync --root /lab/fw2 receive\" ssh-ed25519 AAAAC3"));
        assert!(line.ends_with(" ns-ha-primary"));
        // dropbear: the options it knows, no from= (it would drop the key).
        let line = authorized_line(
            &root,
            &key,
            Ipv4Addr::new(10, 99, 0, 1),
            SshServer::Dropbear,
        )
        .unwrap();
        assert!(
            line.starts_with(
                "no-port-forwarding,no-agent-forwarding,no-X11-forwarding,no-pty,command=\""
            ),
            "{line}"
        );
        assert!(!line.contains("from="), "{line}");
        assert!(line.contains("ns-ha-sync --root /lab/fw2 receive\" ssh-ed25519 AAAAC3"));
    }

    #[test]
    fn the_receiver_accepts_the_primary_only_from_its_ha_address() {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        // Not initialized: nothing to compare with (the receiver refuses later).
        check_ssh_client(&root, Some("10.99.1.1 5000 22")).unwrap();
        let node =
            crate::fixtures::paired_node(crate::config::Role::Backup, Ipv4Addr::new(10, 99, 0, 1));
        crate::config::save_node(&root, &node).unwrap();
        check_ssh_client(&root, Some("10.99.0.1 5000 22")).unwrap();
        check_ssh_client(&root, Some("::ffff:10.99.0.1 5000 22")).unwrap();
        check_ssh_client(&root, None).unwrap();
        for bad in ["10.99.1.1 5000 22", "", "garbage"] {
            let e = check_ssh_client(&root, Some(bad)).unwrap_err();
            assert_eq!(crate::exit::code_of(&e), Code::Security, "{bad}");
            assert!(e.to_string().contains("10.99.0.1"), "{e}");
        }
        // The primary itself is never a receiver of its own key.
        let node =
            crate::fixtures::paired_node(crate::config::Role::Primary, Ipv4Addr::new(10, 99, 0, 2));
        crate::config::save_node(&root, &node).unwrap();
        check_ssh_client(&root, Some("10.99.1.1 5000 22")).unwrap();
    }

    /// On dropbear the line goes to /etc/dropbear/authorized_keys, not
    /// root's ~/.ssh; reset removes it from wherever it is.
    #[test]
    fn dropbear_gets_its_own_file_and_reset_clears_both() {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        let key = ssh::parse_public_key(KEY).unwrap();
        let peer = Ipv4Addr::new(10, 99, 0, 1);
        authorize_primary(&root, &key, peer, SshServer::Dropbear).unwrap();
        let dropbear = root.path("/etc/dropbear/authorized_keys");
        let text = std::fs::read_to_string(&dropbear).unwrap();
        assert_eq!(
            text,
            format!(
                "{}\n",
                authorized_line(&root, &key, peer, SshServer::Dropbear).unwrap()
            )
        );
        assert!(!root.path(paths::AUTHORIZED_KEYS).exists());
        std::fs::write(&dropbear, format!("ssh-ed25519 AAAAother admin\n{text}")).unwrap();
        authorize_primary(&root, &key, peer, SshServer::Openssh).unwrap();
        unauthorize_primary(&root).unwrap();
        assert_eq!(
            std::fs::read_to_string(&dropbear).unwrap(),
            "ssh-ed25519 AAAAother admin\n"
        );
        assert_eq!(
            std::fs::read_to_string(root.path(paths::AUTHORIZED_KEYS)).unwrap(),
            ""
        );
    }

    /// A line written by an older release (no `from=`) or for another primary
    /// address is rewritten from node.json; other keys stay; a line whose key
    /// is not the one recorded at init is left alone.
    #[test]
    fn the_primary_line_is_refreshed_from_the_node_config() {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        let key = ssh::parse_public_key(KEY).unwrap();
        let mut node = crate::fixtures::paired_primary_node(Ipv4Addr::new(10, 99, 0, 1));
        node.role = crate::config::Role::Backup;
        node.peer_host_key = None;
        node.authorized_key_fingerprint = Some(key.fingerprint.clone());
        let old = format!(
            "ssh-ed25519 AAAAother admin@laptop\nrestrict,command=\"/usr/sbin/ns-ha-sync receive\" {} {} {KEY_COMMENT}\n",
            key.key_type, key.key_base64
        );
        let path = root.path(paths::AUTHORIZED_KEYS);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &old).unwrap();
        assert!(refresh_primary_line(&root, &node).unwrap());
        let now = std::fs::read_to_string(&path).unwrap();
        let want = authorized_line(&root, &key, node.peer_address, node.ssh_server).unwrap();
        assert_eq!(now, format!("ssh-ed25519 AAAAother admin@laptop\n{want}\n"));
        assert!(
            !refresh_primary_line(&root, &node).unwrap(),
            "rewritten twice"
        );
        node.peer_address = Ipv4Addr::new(10, 99, 0, 7);
        assert!(refresh_primary_line(&root, &node).unwrap());
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("from=\"10.99.0.7\""));
        // Another key than the one init-backup authorized: untouched.
        node.authorized_key_fingerprint = Some("SHA256:other".into());
        node.peer_address = Ipv4Addr::new(10, 99, 0, 1);
        let before = std::fs::read(&path).unwrap();
        assert!(!refresh_primary_line(&root, &node).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
}
