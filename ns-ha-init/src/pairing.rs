//! Pairing: turning two standalone firewalls into a primary and a backup.
//!
//! No password ever crosses the network. The primary makes an ed25519 key;
//! the administrator hands its public half to the backup, which authorizes
//! it for one forced command only (`ns-ha-sync receive`, with `restrict`).
//! The backup's host key is then pinned on the primary, from a fingerprint
//! the administrator read on the backup (or trust on first use, confirmed).
//! `reset` undoes all of it on one node.

use anyhow::{Context, Result};
use serde_json::json;
use std::io::Read;
use std::net::Ipv4Addr;

use ns_ha_common::activate::deactivate;
use ns_ha_common::authorized_keys::{authorize_primary, unauthorize_primary};
use ns_ha_common::cmd::{args, CommandRunner};
use ns_ha_common::config::{
    self, load_cluster, load_cluster_opt, load_node, load_node_opt, ClusterConfig, NodeConfig,
    PinnedHostKey, Role, SCHEMA_VERSION,
};
use ns_ha_common::exit::{fail, Code};
use ns_ha_common::fsutil::{atomic_write, remove_if_exists};
use ns_ha_common::net::Ipv4Cidr;
use ns_ha_common::platform::{SshServer, SshServerFiles};
use ns_ha_common::root::paths;
use ns_ha_common::ssh::{self, HostKeyCheck};
use ns_ha_common::NodeRoot;

use crate::backup::{backup_address, lock};
use crate::checks;
use crate::install::commit_cluster;
use crate::layout::NodePlatform;
use crate::{Ctx, Report};

pub use ns_ha_common::authorized_keys::KEY_COMMENT;

fn refuse_if_initialized(root: &NodeRoot) -> Result<()> {
    if let Some(node) = load_node_opt(root)? {
        return Err(fail(
            Code::State,
            format!(
                "this node is already initialized as {}: {}run ns-ha-init reset --yes first to start over",
                node.role,
                match node.role {
                    Role::Backup => "ns-ha-init show-config prints its host-key fingerprint and the pair command again; to redo init, ",
                    Role::Primary => "",
                }
            ),
        ));
    }
    Ok(())
}

/// Options of `init-primary`.
pub struct PrimaryInit {
    pub ha_interface: String,
    pub peer: Ipv4Addr,
    pub heartbeat_vip: Option<Ipv4Addr>,
    pub ssh_port: u16,
    pub advert_interval_ms: u32,
    /// VRID of the HA-link instance (default: [`VrrpSettings`] default).
    ///
    /// [`VrrpSettings`]: ns_ha_common::config::VrrpSettings
    pub vrid: Option<u8>,
    /// The node's platform (node.json) and the cluster defaults it implies.
    pub platform: NodePlatform,
}

/// The highest host address of the HA subnet that neither node uses.
pub fn default_heartbeat_vip(own: &Ipv4Cidr, peer: Ipv4Addr) -> Result<Ipv4Addr> {
    let first = u32::from(own.network()) + 1;
    let last = u32::from(own.broadcast()).saturating_sub(1);
    (first..=last)
        .rev()
        .take(16)
        .map(Ipv4Addr::from)
        .find(|a| *a != own.addr && *a != peer)
        .ok_or_else(|| {
            fail(
                Code::InvalidInput,
                format!(
                    "the HA subnet {}/{} has no free address for the heartbeat VIP: use a /29 or larger, or pass --heartbeat-vip",
                    own.network(),
                    own.prefix
                ),
            )
        })
}

fn random_cluster_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Generate the node's ed25519 key with ssh-keygen, replacing any old one atomically.
fn generate_key(ctx: &Ctx, comment: &str) -> Result<PinnedHostKey> {
    let key = ctx.root.path(paths::SSH_KEY);
    let dir = key.parent().context("key path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix(".keygen")
        .tempdir_in(dir)
        .context("creating a scratch directory for the key")?;
    let tmp_key = scratch.path().join("id_ed25519");
    ctx.runner.run_ok(
        "ssh-keygen",
        &args(&[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            comment,
            "-f",
            &tmp_key.to_string_lossy(),
        ]),
        std::time::Duration::from_secs(20),
    )?;
    let private = std::fs::read(&tmp_key).context("reading the generated key")?;
    let public = std::fs::read_to_string(scratch.path().join("id_ed25519.pub"))
        .context("reading the generated public key")?;
    atomic_write(&key, &private, 0o600)?;
    atomic_write(&key.with_extension("pub"), public.as_bytes(), 0o644)?;
    ssh::parse_public_key(public.trim())
}

/// `init-primary`.
pub fn init_primary(ctx: &Ctx, opts: &PrimaryInit) -> Result<Report> {
    let _lock = lock(&ctx.root)?;
    refuse_if_initialized(&ctx.root)?;
    let own = checks::ha_interface(ctx.ifs, &opts.ha_interface)?;
    checks::peer_address(&own, opts.peer)?;
    let hb = match opts.heartbeat_vip {
        Some(a) => a,
        None => default_heartbeat_vip(&own, opts.peer)?,
    };
    let mut cluster = ClusterConfig::new(random_cluster_id()?, opts.ha_interface.clone(), own, hb);
    cluster.ssh.port = opts.ssh_port;
    cluster.vrrp.advert_interval_ms = opts.advert_interval_ms;
    if let Some(vrid) = opts.vrid {
        cluster.vrrp.vrid = vrid;
    }
    let layout = opts.platform.layout();
    cluster.roles.crontab = layout.crontab.into();
    // On persistent storage: on OpenWrt `/var` is a tmpfs.
    cluster.sync.state_dir = layout.sync_state_dir.into();
    cluster.validate()?;
    if hb == opts.peer {
        return Err(fail(
            Code::InvalidInput,
            "--heartbeat-vip must differ from the peer's address",
        ));
    }
    let node = NodeConfig {
        schema_version: SCHEMA_VERSION,
        role: Role::Primary,
        peer_address: opts.peer,
        peer_host_key: None,
        authorized_key_fingerprint: None,
        service_backend: opts.platform.service_backend,
        platform: opts.platform.platform,
        ssh_server: opts.platform.ssh_server,
    };
    // Everything validated: now write.
    let key = generate_key(ctx, KEY_COMMENT)?;
    config::save_cluster(&ctx.root, &cluster)?;
    config::save_node(&ctx.root, &node)?;
    let line = format!("{} {} {KEY_COMMENT}", key.key_type, key.key_base64);
    let human = format!(
        "{line}\n\nThis node is now the primary of cluster {}.\nOn the backup run:\n  ns-ha-init init-backup --ha-interface {} --peer {} --primary-key '{line}'\nthen here: ns-ha-init pair --host-key-fingerprint <the fingerprint it prints>\n",
        cluster.cluster_id, opts.ha_interface, own.addr
    );
    Ok(Report::new(
        human,
        json!({"public_key": line, "fingerprint": key.fingerprint, "cluster_id": cluster.cluster_id}),
    ))
}

/// This node's sshd host key: what the primary pins when it pairs with this backup.
pub fn own_host_key(
    root: &NodeRoot,
    runner: &dyn CommandRunner,
    server: SshServer,
) -> Result<PinnedHostKey> {
    SshServerFiles::of(server).read_host_key(root, runner)
}

/// The command to run on the primary to pin this backup's host key.
pub fn pair_command(fingerprint: &str) -> String {
    format!("ns-ha-init pair --host-key-fingerprint {fingerprint}")
}

/// `init-backup`.
pub fn init_backup(
    ctx: &Ctx,
    ha_interface: &str,
    peer: Ipv4Addr,
    primary_key: &str,
    platform: &NodePlatform,
) -> Result<Report> {
    let _lock = lock(&ctx.root)?;
    refuse_if_initialized(&ctx.root)?;
    let own = checks::ha_interface(ctx.ifs, ha_interface)?;
    checks::peer_address(&own, peer)?;
    let key = ssh::parse_public_key(primary_key)?;
    let host_key = own_host_key(&ctx.root, ctx.runner, platform.ssh_server)?;
    let node = NodeConfig {
        schema_version: SCHEMA_VERSION,
        role: Role::Backup,
        peer_address: peer,
        peer_host_key: None,
        authorized_key_fingerprint: Some(key.fingerprint.clone()),
        service_backend: platform.service_backend,
        platform: platform.platform,
        ssh_server: platform.ssh_server,
    };
    authorize_primary(&ctx.root, &key, peer, platform.ssh_server)?;
    config::save_node(&ctx.root, &node)?;
    let human = format!(
        "{}\n\nThis node is now the backup; the primary's key {} may run the sync receiver only, from {peer} only.\nOn the primary run:\n  {}\n(ns-ha-init show-config on this node prints it again.)\n",
        host_key.fingerprint,
        key.fingerprint,
        pair_command(&host_key.fingerprint)
    );
    Ok(Report::new(
        human,
        json!({"host_key_fingerprint": host_key.fingerprint, "authorized_key_fingerprint": key.fingerprint}),
    ))
}

/// `pair`.
pub fn pair(ctx: &Ctx, fingerprint: Option<String>, trust_on_first_use: bool) -> Result<Report> {
    let _lock = lock(&ctx.root)?;
    let mut node = load_node(&ctx.root)?;
    if node.role != Role::Primary {
        return Err(fail(
            Code::State,
            "pair runs on the primary: this node is the backup",
        ));
    }
    let mut cluster = load_cluster(&ctx.root)?;
    let check = match (fingerprint, trust_on_first_use) {
        (Some(fp), _) => {
            if !fp.starts_with("SHA256:") || fp.len() != "SHA256:".len() + 43 {
                return Err(fail(
                    Code::InvalidInput,
                    format!("'{fp}' is not a SHA256 fingerprint: copy it as init-backup printed it (SHA256:...)"),
                ));
            }
            HostKeyCheck::Fingerprint(fp)
        }
        (None, true) => match &node.peer_host_key {
            Some(pin) => HostKeyCheck::Pinned(pin.clone()),
            None => HostKeyCheck::TrustOnFirstUse,
        },
        (None, false) => {
            return Err(fail(
                Code::InvalidInput,
                "give the backup's --host-key-fingerprint (printed by init-backup), or --trust-on-first-use --yes",
            ))
        }
    };
    let previous = cluster.clone();
    let mut peer = ctx.link.connect(&ctx.root, &node, &cluster, &check)?;
    let backup = peer.backup.as_mut();
    let b_ha = backup_address(backup, &cluster.ha.interface, &cluster.ha.primary_address)?;
    if b_ha.addr != node.peer_address {
        return Err(fail(
            Code::InvalidInput,
            format!(
                "the backup's {} address is {} but this node was told the peer is {}: re-run init-primary with the right --peer",
                cluster.ha.interface, b_ha.addr, node.peer_address
            ),
        ));
    }
    cluster.ha.backup_address = Some(b_ha);
    if cluster.ha.heartbeat_vip == b_ha.addr {
        cluster.ha.heartbeat_vip = default_heartbeat_vip(&cluster.ha.primary_address, b_ha.addr)?;
    }
    for i in 0..cluster.lans.len() {
        let (name, ours) = (
            cluster.lans[i].interface.clone(),
            cluster.lans[i].primary_address,
        );
        cluster.lans[i].backup_address = backup_address(backup, &name, &ours)?;
    }
    let act = commit_cluster(ctx, &node, &previous, &cluster, backup)?;
    node.peer_host_key = Some(peer.host_key.clone());
    config::save_node(&ctx.root, &node)?;
    let human = format!(
        "paired with backup {} (ns-ha {}), host key {} pinned\nbackup HA address {}\nkeepalived: {} on this node\nNext: ns-ha-init add-lan --interface IF --vip CIDR, then ns-ha-init enable\n",
        node.peer_address, peer.hello.version, peer.host_key.fingerprint, b_ha, act.keepalived
    );
    Ok(Report::new(
        human,
        json!({"peer": node.peer_address.to_string(), "host_key_fingerprint": peer.host_key.fingerprint, "backup_ha_address": b_ha.to_string(), "peer_version": peer.hello.version}),
    ))
}

/// `reset`: undo init on this node.
pub fn reset(ctx: &Ctx, yes: bool) -> Result<Report> {
    if !yes {
        return Err(fail(
            Code::Usage,
            "reset stops HA on this node and removes its keys and cluster config: add --yes to confirm",
        ));
    }
    let _lock = lock(&ctx.root)?;
    let backend = load_node_opt(&ctx.root)
        .ok()
        .flatten()
        .map(|n| n.service_backend)
        .unwrap_or_default();
    // The sync's state goes too when it lives in ns-ha's own trees (on
    // OpenWrt it is on flash, the layout's /etc/ns-ha-sync): a re-paired node
    // must not keep the old cluster's generation, or it refuses the new
    // one's pushes.
    let sync_state = load_cluster_opt(&ctx.root)
        .ok()
        .flatten()
        .map(|c| c.sync.state_dir)
        .filter(|d| {
            d.starts_with("/etc/ns-ha/") || d == ns_ha_common::sync_config::OPENWRT_STATE_DIR
        });
    deactivate(&ctx.root, ctx.runner, backend)?;
    unauthorize_primary(&ctx.root)?;
    let mut removed = Vec::new();
    if let Some(dir) = &sync_state {
        let path = ctx.root.path(dir);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing {}", path.display()))?;
            removed.push(dir.as_str());
        }
    }
    for p in [
        paths::CLUSTER_CONFIG,
        paths::NODE_CONFIG,
        paths::SSH_KEY,
        "/etc/ns-ha/id_ed25519.pub",
        paths::MAINTENANCE_TRACK,
    ] {
        if remove_if_exists(&ctx.root.path(p))? {
            removed.push(p);
        }
    }
    let state = ctx.root.path(paths::STATE_DIR);
    if state.exists() {
        std::fs::remove_dir_all(&state).with_context(|| format!("removing {}", state.display()))?;
        removed.push(paths::STATE_DIR);
    }
    Ok(Report::new(
        format!(
            "HA reset on this node: keepalived stopped, authorization removed, {} removed\n",
            removed.join(", ")
        ),
        json!({"removed": removed}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_removes_the_sync_state_kept_on_flash() {
        let p = crate::testkit::Pair::new(false);
        let mut cluster = load_cluster(&p.root).unwrap();
        cluster.sync.state_dir = ns_ha_common::sync_config::OPENWRT_STATE_DIR.into();
        config::save_cluster(&p.root, &cluster).unwrap();
        let applied = p.root.path("/etc/ns-ha-sync/applied.json");
        std::fs::create_dir_all(applied.parent().unwrap()).unwrap();
        std::fs::write(&applied, "{\"generation\": 7}").unwrap();
        reset(&p.ctx(), true).unwrap();
        assert!(
            !p.root
                .path(ns_ha_common::sync_config::OPENWRT_STATE_DIR)
                .exists(),
            "the old cluster's generation stays"
        );
    }

    #[test]
    fn heartbeat_vip_is_highest_free_host() {
        let own: Ipv4Cidr = "10.99.0.1/24".parse().unwrap();
        assert_eq!(
            default_heartbeat_vip(&own, "10.99.0.2".parse().unwrap()).unwrap(),
            Ipv4Addr::new(10, 99, 0, 254)
        );
        assert_eq!(
            default_heartbeat_vip(&own, "10.99.0.254".parse().unwrap()).unwrap(),
            Ipv4Addr::new(10, 99, 0, 253)
        );
        let tiny: Ipv4Cidr = "10.99.0.1/30".parse().unwrap();
        assert!(default_heartbeat_vip(&tiny, "10.99.0.2".parse().unwrap()).is_err());
    }

    /// The test kit's primary, before `pair`: no pinned key, no backup address.
    fn unpaired() -> crate::testkit::Pair {
        let p = crate::testkit::Pair::new(false);
        let mut node = load_node(&p.root).unwrap();
        node.peer_host_key = None;
        config::save_node(&p.root, &node).unwrap();
        let mut cluster = load_cluster(&p.root).unwrap();
        cluster.ha.backup_address = None;
        config::save_cluster(&p.root, &cluster).unwrap();
        p
    }

    #[test]
    fn pair_learns_the_backup_installs_it_first_and_pins_its_key() {
        let p = unpaired();
        let key = crate::backup::fake::backup_host_key();
        pair(&p.ctx(), Some(key.fingerprint.clone()), false).unwrap();
        assert_eq!(load_node(&p.root).unwrap().peer_host_key, Some(key));
        let cluster = p.primary_cluster();
        assert_eq!(
            cluster.ha.backup_address.map(|a| a.to_string()),
            Some("10.99.0.2/24".into())
        );
        assert_eq!(cluster.lans[0].backup_address.to_string(), "10.99.1.2/24");
        assert_eq!(p.link.state().installed, vec![cluster]);
        assert_eq!(
            p.steps(),
            ["backup install enabled=false", "primary keepalived stop"]
        );
    }

    #[test]
    fn pair_with_a_backup_at_another_address_changes_nothing() {
        let p = unpaired();
        let before = std::fs::read(p.root.path(paths::CLUSTER_CONFIG)).unwrap();
        p.link.state().interfaces[0] = ns_ha_common::fixtures::interface("ha0", &["10.99.0.3/24"]);
        let fp = crate::backup::fake::backup_host_key().fingerprint;
        let e = pair(&p.ctx(), Some(fp), false).unwrap_err();
        assert_eq!(ns_ha_common::exit::code_of(&e), Code::InvalidInput);
        assert!(
            e.to_string()
                .contains("re-run init-primary with the right --peer"),
            "{e}"
        );
        assert!(load_node(&p.root).unwrap().peer_host_key.is_none());
        assert_eq!(
            std::fs::read(p.root.path(paths::CLUSTER_CONFIG)).unwrap(),
            before
        );
        assert!(p.link.state().installed.is_empty());
        let e = pair(&p.ctx(), Some("SHA256:short".into()), false).unwrap_err();
        assert_eq!(ns_ha_common::exit::code_of(&e), Code::InvalidInput);
    }
}
