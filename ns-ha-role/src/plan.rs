//! Deciding what the node is and what it must run: pure functions of the
//! recorded events, the VIPs the node holds, and the roles config.
//!
//! Kept free of side effects so the rules (which event counts, when the VIPs
//! overrule an event, which actions a state needs, which are done once per
//! transition) are unit-tested on their own.

use serde::Serialize;

use ns_ha_common::config::{ClusterConfig, Role};
use ns_ha_common::role_config::{link_matches, ConntrackdCommand, RoleSettings, RoleSpec};
use ns_ha_common::wan::Wan;

use crate::events::{Event, EventLog, KaState, PendingSync};

/// How many of the cluster's VIPs this node holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VipView {
    pub held: usize,
    pub total: usize,
}

/// What the node is, after cross-checking the events with the VIPs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// `None`: hands off (HA not configured, disabled, or nothing known).
    pub state: Option<KaState>,
    /// The state, or UNCONFIGURED / DISABLED / UNKNOWN.
    pub label: String,
    pub reason: String,
    pub event: Option<Event>,
}

fn hands_off(label: &str, reason: &str) -> Target {
    Target {
        state: None,
        label: label.into(),
        reason: reason.into(),
        event: None,
    }
}

/// The state the node must be reconciled to.
pub fn decide(
    cluster: Option<&ClusterConfig>,
    log: &EventLog,
    prefer_fifo: bool,
    vips: Option<VipView>,
) -> Target {
    let Some(cluster) = cluster else {
        return hands_off(
            "UNCONFIGURED",
            "no cluster config: this node is not part of a pair",
        );
    };
    if !cluster.enabled {
        return hands_off("DISABLED", "HA is disabled: services are left as they are");
    }
    let event = log.current(prefer_fifo).cloned();
    let vip_master = vips
        .filter(|_| cluster.roles.check_vips)
        .and_then(|v| match v.held {
            0 => Some(false),
            h if h == v.total && v.total > 0 => Some(true),
            _ => None, // partial: keepalived is adding or removing them
        });
    let held = vips
        .map(|v| format!("{}/{}", v.held, v.total))
        .unwrap_or_default();
    let (state, reason) = match (&event, vip_master) {
        (Some(e), Some(true)) if e.state != KaState::Master => (
            KaState::Master,
            format!(
                "{} overruled: this node holds all VIPs ({held})",
                e.describe()
            ),
        ),
        (Some(e), Some(false)) if e.state == KaState::Master => (
            KaState::Backup,
            format!(
                "{} overruled: this node holds none of the VIPs ({held})",
                e.describe()
            ),
        ),
        (Some(e), _) => (e.state, e.describe()),
        (None, Some(true)) => (
            KaState::Master,
            format!("no event yet, this node holds all VIPs ({held})"),
        ),
        (None, Some(false)) => (
            KaState::Backup,
            format!("no event yet, this node holds no VIP ({held})"),
        ),
        (None, None) => {
            return hands_off(
                "UNKNOWN",
                "no keepalived event yet and the VIPs do not tell",
            )
        }
    };
    Target {
        state: Some(state),
        label: state.as_str().into(),
        reason,
        event,
    }
}

/// When an action is done: on every pass (a state), or once per transition
/// or per sync (retried until it succeeds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Once {
    Always,
    PerTransition,
    PerSync,
}

/// One thing to make true on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Service {
        name: String,
        running: bool,
    },
    Reload {
        name: String,
    },
    Cron {
        enable: Vec<String>,
        disable: Vec<String>,
    },
    Link {
        pattern: String,
        up: bool,
    },
    ConntrackdRunning,
    Conntrackd(ConntrackdCommand),
    PushSync,
    /// A takeover WAN up (then announced to the neighbours) or down.
    Wan {
        interface: String,
        up: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// Stable name, used in the history and to remember one-shot actions.
    pub id: String,
    pub step: Step,
    pub once: Once,
}

/// Actions run one after the other; lanes run in parallel.
pub type Lane = Vec<Action>;

fn spec_for(settings: &RoleSettings, state: KaState) -> &RoleSpec {
    match state {
        KaState::Master => &settings.master,
        KaState::Backup => &settings.backup,
        KaState::Fault | KaState::Stop => &settings.fault,
    }
}

fn push_unique(v: &mut Vec<String>, items: &[String], except: &[String]) {
    for i in items {
        if !v.contains(i) && !except.contains(i) {
            v.push(i.clone());
        }
    }
}

/// Whether a sync that changed `changed` calls for reloading with `when_changed`.
fn sync_wants(
    when_changed: &[String],
    changed: &Option<std::collections::BTreeSet<String>>,
) -> bool {
    match changed {
        None => true,
        Some(_) if when_changed.is_empty() => true,
        Some(paths) => paths
            .iter()
            .any(|p| when_changed.iter().any(|w| p.starts_with(w.as_str()))),
    }
}

/// The lanes of actions for `state`. `sync` is a sync applied on this node
/// and not handled yet (ignored on MASTER: the active node is the source).
pub fn build(
    settings: &RoleSettings,
    state: KaState,
    role: Role,
    sync: Option<&PendingSync>,
) -> Vec<Lane> {
    let spec = spec_for(settings, state);
    let sync = sync.filter(|_| state != KaState::Master);
    let extra = sync.map(|_| &settings.sync_applied);
    let mut start = spec.start.clone();
    let mut stop = spec.stop.clone();
    let mut cron_enable = spec.cron_enable.clone();
    let mut cron_disable = spec.cron_disable.clone();
    if let Some(x) = extra {
        // The state's own spec wins where the two disagree.
        push_unique(&mut start, &x.start, &spec.stop);
        push_unique(&mut stop, &x.stop, &spec.start);
        push_unique(&mut cron_enable, &x.cron_enable, &spec.cron_disable);
        push_unique(&mut cron_disable, &x.cron_disable, &spec.cron_enable);
    }
    let mut lanes: Vec<Lane> = Vec::new();
    let mut single =
        |id: String, step: Step, once: Once| lanes.push(vec![Action { id, step, once }]);
    for s in &start {
        single(
            format!("service {s} running"),
            Step::Service {
                name: s.clone(),
                running: true,
            },
            Once::Always,
        );
    }
    for s in &stop {
        single(
            format!("service {s} stopped"),
            Step::Service {
                name: s.clone(),
                running: false,
            },
            Once::Always,
        );
    }
    for r in &spec.reload {
        single(
            format!("reload {}", r.service),
            Step::Reload {
                name: r.service.clone(),
            },
            Once::PerTransition,
        );
    }
    if let (Some(x), Some(sync)) = (extra, sync) {
        for r in x
            .reload
            .iter()
            .filter(|r| sync_wants(&r.when_changed, &sync.changed))
        {
            single(
                format!("sync: reload {}", r.service),
                Step::Reload {
                    name: r.service.clone(),
                },
                Once::PerSync,
            );
        }
    }
    if !cron_enable.is_empty() || !cron_disable.is_empty() {
        single(
            "cron jobs".into(),
            Step::Cron {
                enable: cron_enable,
                disable: cron_disable,
            },
            Once::Always,
        );
    }
    for (list, up) in [(&spec.links_up, true), (&spec.links_down, false)] {
        for l in list {
            let word = if up { "up" } else { "down" };
            single(
                format!("link {l} {word}"),
                Step::Link {
                    pattern: l.clone(),
                    up,
                },
                Once::Always,
            );
        }
    }
    if spec.push_sync && role == Role::Primary {
        single("sync push".into(), Step::PushSync, Once::PerTransition);
    }
    // conntrackd runs on both nodes in every state; its commands are ordered.
    let mut ct = vec![Action {
        id: "conntrackd running".into(),
        step: Step::ConntrackdRunning,
        once: Once::Always,
    }];
    ct.extend(spec.conntrackd.iter().map(|c| Action {
        id: format!("conntrackd {}", c.as_str()),
        step: Step::Conntrackd(*c),
        once: Once::PerTransition,
    }));
    lanes.push(ct);
    lanes
}

/// The takeover WANs for `state`: up on MASTER, down on BACKUP, FAULT and
/// STOP; one lane each, so the WANs and the services come up in parallel.
pub fn wan_lanes(wans: &[Wan], state: KaState) -> Vec<Lane> {
    let up = state == KaState::Master;
    let word = if up { "up" } else { "down" };
    wans.iter()
        .map(|w| {
            vec![Action {
                id: format!("wan {} {word}", w.interface),
                step: Step::Wan {
                    interface: w.interface.clone(),
                    up,
                },
                once: Once::Always,
            }]
        })
        .collect()
}

/// Interfaces keepalived tracks: never set down by a role.
pub fn protected_links(cluster: &ClusterConfig) -> Vec<String> {
    std::iter::once(cluster.ha.interface.clone())
        .chain(cluster.lans.iter().map(|l| l.interface.clone()))
        .collect()
}

/// Whether `name` is protected.
pub fn is_protected(protected: &[String], name: &str) -> bool {
    protected.iter().any(|p| link_matches(p, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventStore, NewEvent, Source};
    use ns_ha_common::NodeRoot;

    fn cluster(enabled: bool) -> ClusterConfig {
        let mut c = ClusterConfig::new(
            "0123456789abcdef0123456789abcdef".into(),
            "ha0".into(),
            "10.99.0.1/24".parse().unwrap(),
            "10.99.0.254".parse().unwrap(),
        );
        c.enabled = enabled;
        c
    }

    fn log_of(states: &[&str]) -> EventLog {
        let dir = tempfile::tempdir().unwrap();
        let s = EventStore::new(&NodeRoot::new(dir.path()).unwrap());
        for st in states {
            s.record(
                NewEvent::from_notify("GROUP", "ns_ha", st, None).unwrap(),
                Source::Notify,
            )
            .unwrap();
        }
        s.load().unwrap()
    }

    #[test]
    fn hands_off_unless_enabled() {
        let log = log_of(&["MASTER"]);
        assert_eq!(decide(None, &log, false, None).label, "UNCONFIGURED");
        assert_eq!(decide(Some(&cluster(false)), &log, false, None).state, None);
        assert_eq!(
            decide(Some(&cluster(true)), &EventLog::default(), false, None).label,
            "UNKNOWN"
        );
    }

    #[test]
    fn vips_overrule_out_of_order_events() {
        let c = cluster(true);
        let log = log_of(&["BACKUP", "MASTER"]);
        let none = Some(VipView { held: 0, total: 3 });
        let all = Some(VipView { held: 3, total: 3 });
        let some = Some(VipView { held: 1, total: 3 });
        assert_eq!(
            decide(Some(&c), &log, false, none).state,
            Some(KaState::Backup)
        );
        assert_eq!(
            decide(Some(&c), &log, false, some).state,
            Some(KaState::Master)
        );
        let log = log_of(&["MASTER", "BACKUP"]);
        let t = decide(Some(&c), &log, false, all);
        assert_eq!(t.state, Some(KaState::Master));
        assert!(t.reason.contains("overruled"), "{}", t.reason);
        assert_eq!(
            decide(Some(&c), &log, false, None).state,
            Some(KaState::Backup)
        );
        let log = log_of(&["FAULT"]);
        assert_eq!(
            decide(Some(&c), &log, false, none).state,
            Some(KaState::Fault)
        );
        let mut c2 = c.clone();
        c2.roles.check_vips = false;
        let log = log_of(&["MASTER"]);
        assert_eq!(
            decide(Some(&c2), &log, false, none).state,
            Some(KaState::Master)
        );
    }

    #[test]
    fn master_plan_has_ordered_conntrackd_and_push_on_primary_only() {
        let s = RoleSettings::default();
        let lanes = build(&s, KaState::Master, Role::Primary, None);
        let ct = lanes
            .iter()
            .find(|l| l[0].step == Step::ConntrackdRunning)
            .unwrap();
        let ids: Vec<&str> = ct.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "conntrackd running",
                "conntrackd commit",
                "conntrackd flush",
                "conntrackd resync",
                "conntrackd bulk-send"
            ]
        );
        assert!(lanes.iter().any(|l| l[0].step == Step::PushSync));
        let lanes = build(&s, KaState::Master, Role::Backup, None);
        assert!(!lanes.iter().any(|l| l[0].step == Step::PushSync));
        assert!(lanes.iter().any(|l| l[0].id == "service dnsmasq running"));
    }

    #[test]
    fn takeover_wans_are_up_on_master_only_each_in_its_own_lane() {
        let mut c = ns_ha_common::fixtures::sample_cluster();
        for name in ["wan1", "wan2"] {
            c.wans.push(Wan {
                interface: name.into(),
                device: ns_ha_common::wan::WanDevice::Physical,
                ipv4: Some(ns_ha_common::wan::Ipv4Method::Dhcp),
                ipv6: None,
                mac: None,
                metric: None,
            });
        }
        let lanes = wan_lanes(&c.wans, KaState::Master);
        assert_eq!(lanes.len(), 2);
        assert_eq!(lanes[0][0].id, "wan wan1 up");
        for state in [KaState::Backup, KaState::Fault, KaState::Stop] {
            let lanes = wan_lanes(&c.wans, state);
            assert!(lanes
                .iter()
                .flatten()
                .all(|a| matches!(a.step, Step::Wan { up: false, .. })));
            assert_eq!(lanes[1][0].id, "wan wan2 down");
        }
    }

    #[test]
    fn sync_applied_adds_reloads_for_changed_paths_only_off_master() {
        let s = RoleSettings::default();
        let sync = PendingSync {
            seq: 3,
            changed: Some(["/etc/config/firewall".to_string()].into()),
        };
        let lanes = build(&s, KaState::Backup, Role::Backup, Some(&sync));
        let ids: Vec<String> = lanes.iter().flatten().map(|a| a.id.clone()).collect();
        assert!(ids.contains(&"sync: reload firewall".to_string()));
        assert!(!ids.contains(&"sync: reload sshd".to_string()));
        assert!(ids.contains(&"service dnsmasq stopped".to_string()));
        let lanes = build(&s, KaState::Master, Role::Backup, Some(&sync));
        assert!(!lanes.iter().flatten().any(|a| a.once == Once::PerSync));
        let all = PendingSync {
            seq: 3,
            changed: None,
        };
        let lanes = build(&s, KaState::Backup, Role::Backup, Some(&all));
        assert!(lanes.iter().flatten().any(|a| a.id == "sync: reload sshd"));
    }
}
