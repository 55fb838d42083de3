//! Does the peer answer? Asked on either node, for `status` and `doctor`.
//!
//! After the primary dies the surviving backup must say so, and why it is
//! MASTER. Two real, cheap signals, both readable on either node:
//! - VRRP, per link: keepalived reports each instance's state to the role
//!   engine (`ns-ha-role status --json`, `instances`). An instance that is
//!   BACKUP hears a master's adverts on its link; one that is MASTER hears
//!   none. On the backup (the lower priority), a MASTER instance therefore
//!   means the primary's adverts stopped on that link, at `since_ms`. On the
//!   primary MASTER is normal (a BACKUP peer sends no adverts), so VRRP
//!   says nothing about the backup there.
//! - SSH: whether the peer's sshd sends its banner (no login needed).

use serde::Serialize;

use ns_ha_common::clock::fmt_utc;
use ns_ha_common::config::{ClusterConfig, NodeConfig, Role};
use ns_ha_common::keepalived::{lan_instance, HA_INSTANCE};
use ns_ha_common::vips::LiveState;

use crate::peer::PeerProbe;
use crate::tools::RoleStatus;

/// What one link says about the peer's VRRP adverts.
#[derive(Debug, Clone, Serialize)]
pub struct LinkAdverts {
    pub interface: String,
    /// The VRRP instance on it.
    pub instance: String,
    /// Its last reported state (None: no event since keepalived started).
    pub state: Option<String>,
    pub since_ms: Option<u64>,
    /// true: BACKUP (a master's adverts arrive); false: MASTER (none
    /// arrive); None: unknown (no event, or FAULT/STOP: the link itself).
    pub adverts_heard: Option<bool>,
}

/// Whether the peer answers, and what this node does about it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerLiveness {
    /// The peer's role (primary or backup) and address.
    pub role: String,
    pub address: String,
    pub links: Vec<LinkAdverts>,
    /// The peer's sshd sent its banner.
    pub ssh_answers: bool,
    pub ssh_error: Option<String>,
    /// By SSH, or by adverts heard on some link.
    pub answers: bool,
    /// On the backup: since when no link hears the primary's adverts (Unix ms).
    pub silent_since_ms: Option<u64>,
    /// This backup holds the VIPs because the primary's adverts stopped.
    pub master_because_peer_silent: bool,
    /// One line for people.
    pub summary: String,
}

fn state_of(role: &RoleStatus, instance: &str) -> (Option<String>, Option<u64>) {
    role.instances
        .iter()
        .find(|i| i.name == instance)
        .map(|i| (Some(i.state.clone()), Some(i.since_ms)))
        .unwrap_or((None, None))
}

fn list(links: &[&LinkAdverts]) -> String {
    links
        .iter()
        .map(|l| l.interface.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Look at the peer from this node.
pub fn observe(
    node: &NodeConfig,
    cluster: &ClusterConfig,
    role: &RoleStatus,
    live: Option<LiveState>,
    peer: &dyn PeerProbe,
) -> PeerLiveness {
    let mut instances = vec![(cluster.ha.interface.clone(), HA_INSTANCE.to_string())];
    instances.extend(
        cluster
            .lans
            .iter()
            .filter(|l| !l.vips.is_empty())
            .map(|l| (l.interface.clone(), lan_instance(&l.interface))),
    );
    let links: Vec<LinkAdverts> = instances
        .into_iter()
        .map(|(interface, instance)| {
            let (state, since_ms) = state_of(role, &instance);
            let adverts_heard = match state.as_deref() {
                Some("BACKUP") => Some(true),
                Some("MASTER") => Some(false),
                _ => None,
            };
            LinkAdverts {
                interface,
                instance,
                state,
                since_ms,
                adverts_heard,
            }
        })
        .collect();
    let ssh = peer.ssh_banner(node.peer_address, cluster.ssh.port);
    let ssh_answers = ssh.is_ok();
    let ssh_error = ssh.err().map(|e| format!("{e:#}"));
    let heard: Vec<&LinkAdverts> = links
        .iter()
        .filter(|l| l.adverts_heard == Some(true))
        .collect();
    let silent: Vec<&LinkAdverts> = links
        .iter()
        .filter(|l| l.adverts_heard == Some(false))
        .collect();
    let answers = ssh_answers || !heard.is_empty();
    let peer_role = node.role.other();
    // Only the backup can read the primary's silence from VRRP.
    let all_silent = !links.is_empty() && silent.len() == links.len();
    let silent_since_ms = (node.role == Role::Backup && all_silent)
        .then(|| silent.iter().filter_map(|l| l.since_ms).min())
        .flatten();
    let master_because_peer_silent =
        node.role == Role::Backup && all_silent && live == Some(LiveState::Master);
    let who = format!("{peer_role} {}", node.peer_address);
    let ssh_text = match &ssh_error {
        None => format!("SSH {}:{} answers", node.peer_address, cluster.ssh.port),
        Some(e) => format!("SSH {e}"),
    };
    let since = silent_since_ms
        .map(|t| format!(" since {}", fmt_utc(t)))
        .unwrap_or_default();
    let summary = if master_because_peer_silent && !ssh_answers {
        format!(
            "{who} does not answer{since}: no VRRP advert on {}, {ssh_text}; this node is MASTER because of it",
            list(&silent)
        )
    } else if master_because_peer_silent {
        format!(
            "{who} answers on SSH but sends no VRRP advert on {}{since} (it yields: maintenance, or its keepalived is stopped); this node is MASTER because of it",
            list(&silent)
        )
    } else if !heard.is_empty() {
        format!(
            "{who} answers: VRRP adverts heard on {}; {ssh_text}",
            list(&heard)
        )
    } else if ssh_answers {
        format!("{who} answers: {ssh_text}")
    } else {
        format!("{who} does not answer: {ssh_text}")
    };
    PeerLiveness {
        role: peer_role.to_string(),
        address: node.peer_address.to_string(),
        links,
        ssh_answers,
        ssh_error,
        answers,
        silent_since_ms,
        master_because_peer_silent,
        summary,
    }
}
