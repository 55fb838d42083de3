//! `show-config`: the node's and the cluster's configuration as this node has it.
//!
//! On the backup it also prints the sshd host-key fingerprint and the exact
//! `pair` command for the primary, so a fingerprint lost after `init-backup`
//! (which refuses to run twice) can be read again.

use anyhow::Result;
use serde_json::json;

use ns_ha_common::config::{load_cluster_opt, load_node, Role};

use crate::pairing::{own_host_key, pair_command};
use crate::{Ctx, Report};

/// `show-config`.
pub fn show_config(ctx: &Ctx) -> Result<Report> {
    let node = load_node(&ctx.root)?;
    let cluster = load_cluster_opt(&ctx.root)?;
    let mut h = String::new();
    h.push_str(&format!("role:        {}\n", node.role));
    h.push_str(&format!("peer:        {}\n", node.peer_address));
    let layout = node.layout();
    h.push_str(&format!(
        "platform:    {} (services {}, interfaces {}, packages {})\n",
        layout.platform,
        layout.service_backend.as_str(),
        node.interface_manager().as_str(),
        layout.package_manager
    ));
    h.push_str(&format!(
        "SSH server:  {} (authorized keys {}, host key {} via {})\n",
        layout.ssh.server.as_str(),
        layout.ssh.authorized_keys,
        layout.ssh.host_key,
        layout.ssh.host_key_tool
    ));
    h.push_str(&format!(
        "paths:       crontab {}, sync state {}\n",
        layout.crontab, layout.sync_state_dir
    ));
    match (&node.peer_host_key, &node.authorized_key_fingerprint) {
        (Some(k), _) => h.push_str(&format!("peer key:    {} (pinned)\n", k.fingerprint)),
        (None, Some(fp)) => h.push_str(&format!(
            "primary key: {fp} (authorized for ns-ha-sync receive)\n"
        )),
        _ => h.push_str("peer key:    not paired\n"),
    }
    // The backup's own host key: what the primary pins (again) with `pair`.
    let host_key = match node.role {
        Role::Backup => match own_host_key(&ctx.root, ctx.runner, node.ssh_server) {
            Ok(k) => {
                h.push_str(&format!("host key:    {}\n", k.fingerprint));
                h.push_str(&format!(
                    "             to pair, run on the primary: {}\n",
                    pair_command(&k.fingerprint)
                ));
                Some(k.fingerprint)
            }
            Err(e) => {
                h.push_str(&format!("host key:    {e:#}\n"));
                None
            }
        },
        Role::Primary => None,
    };
    if let Some(c) = &cluster {
        h.push_str(&format!("cluster:     {}\n", c.cluster_id));
        h.push_str(&format!("enabled:     {}\n", c.enabled));
        h.push_str(&format!(
            "HA link:     {} primary {} backup {} heartbeat VIP {}\n",
            c.ha.interface,
            c.ha.primary_address,
            c.ha.backup_address
                .map(|a| a.to_string())
                .unwrap_or_else(|| "unknown".into()),
            c.ha.heartbeat_vip
        ));
        h.push_str(&format!(
            "VRRP:        v3 advert {} ms, priorities {}/{}, preempt {}\n",
            c.vrrp.advert_interval_ms,
            c.vrrp.priority_primary,
            c.vrrp.priority_backup,
            c.vrrp.preempt
        ));
        for l in &c.lans {
            let vips: Vec<String> = l.vips.iter().map(|v| v.to_string()).collect();
            h.push_str(&format!(
                "{} {:<8} primary {} backup {} VRID {} VIPs [{}]\n",
                if l.wan { "WAN (vip)" } else { "LAN" },
                l.interface,
                l.primary_address,
                l.backup_address,
                l.vrid,
                vips.join(", ")
            ));
        }
        for w in &c.wans {
            h.push_str(&format!(
                "WAN {:<8} takeover (up on the MASTER only), {} {}{}{}\n",
                w.interface,
                w.device.kind(),
                w.addressing(),
                if w.static_addresses().is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", w.static_addresses().join(", "))
                },
                w.mac
                    .map(|m| format!(", cluster MAC {m}"))
                    .unwrap_or_default()
            ));
        }
    } else {
        h.push_str("cluster:     not received from the primary yet\n");
    }
    Ok(Report::new(
        h,
        json!({
            "node": node,
            "layout": layout,
            "cluster": cluster,
            "host_key_fingerprint": host_key,
            "pair_command": host_key.as_deref().map(pair_command),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ns_ha_common::config::{save_node, NodeConfig, SCHEMA_VERSION};
    use ns_ha_common::root::paths;
    use ns_ha_common::service::ServiceBackend;
    use ns_ha_common::NodeRoot;

    #[test]
    fn the_backup_prints_its_fingerprint_and_the_pair_command_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        save_node(
            &root,
            &NodeConfig {
                schema_version: SCHEMA_VERSION,
                role: Role::Backup,
                peer_address: "10.99.0.1".parse().unwrap(),
                peer_host_key: None,
                authorized_key_fingerprint: Some("SHA256:primary".into()),
                service_backend: ServiceBackend::Initd,
                platform: Default::default(),
                ssh_server: Default::default(),
                interface_manager: None,
            },
        )
        .unwrap();
        let key = crate::backup::fake::backup_host_key();
        let pubfile = root.path(paths::SSH_HOST_KEY_PUB);
        std::fs::create_dir_all(pubfile.parent().unwrap()).unwrap();
        std::fs::write(
            &pubfile,
            format!("{} {} root@fw2\n", key.key_type, key.key_base64),
        )
        .unwrap();
        let runner = ns_ha_common::cmd::RecordingRunner::new();
        let link = crate::backup::fake::FakeLink::default();
        let ifs = ns_ha_common::net::StaticInterfaces::default();
        let ctx = Ctx {
            root,
            runner: &runner,
            ifs: &ifs,
            link: &link,
            adverts: &ns_ha_common::vrrp::HeardAdverts::default(),
            listeners: &crate::sshd_listen::FixedListeners(Vec::new()),
        };
        let r = show_config(&ctx).unwrap();
        let cmd = format!("ns-ha-init pair --host-key-fingerprint {}", key.fingerprint);
        assert!(
            r.human
                .contains(&format!("host key:    {}\n", key.fingerprint)),
            "{}",
            r.human
        );
        assert!(r.human.contains(&cmd), "{}", r.human);
        assert_eq!(r.json["host_key_fingerprint"], key.fingerprint.as_str());
        assert_eq!(r.json["pair_command"], cmd.as_str());
    }
}
