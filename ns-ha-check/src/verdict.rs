//! The monitor's judgement: from probe outcomes to a priority, with its reason.
//!
//! Pure (no I/O, time passed in), so every rule that keeps failover honest is
//! a unit test: hysteresis (a check fails after `fall` bad rounds in a row
//! and recovers after `rise` good ones), the asymmetry that stops two nodes
//! unhealthy in the same way from swapping (a node that is not MASTER is
//! unfit at its first failed round, the MASTER only after `fall`), the
//! hold-down (a node that gave up MASTER for health is unfit until healthy
//! for `hold_down_ms`), and services and takeover WANs (checked only while
//! MASTER; a failure that made the node give up stays until the monitor
//! restarts, since a backup cannot run the service or bring the WAN up to
//! prove it fixed: no ping-pong over a WAN only one node can test). Every change of the
//! priority is a [`Decision`] with its reason; alerts are [`Event`]s, one per
//! change of a condition.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

use ns_ha_common::health_config::{target_priority, track_value, HealthSettings};

/// How many decisions the state keeps.
pub const DECISIONS_KEPT: usize = 20;
/// A node must have been BACKUP this long before its becoming MASTER counts
/// as a failover (and not as the first election after a start).
pub const FAILOVER_AFTER_BACKUP_MS: u64 = 5_000;
/// A check that starts failing this soon after the node lost MASTER while
/// still fit counts as what made it lose MASTER: on a silent link the peer
/// stops hearing this node and takes over before this node's own `fall`
/// rounds are up, and without this the node would take the VIPs back
/// `rise` rounds after the link heals, with no hold-down.
pub const GAVE_UP_WINDOW_MS: u64 = 10_000;

/// What kind of thing a check looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// Every cluster interface up with its static address.
    Interfaces,
    /// Packets exchanged on a link (ICMP echo to targets).
    Reach,
    /// A master-only service.
    Service,
    /// Packets exchanged on a takeover WAN (ICMP echo to its gateway): only
    /// the MASTER has the WAN up, so only the MASTER's rounds count.
    #[serde(rename = "takeover-wan")]
    TakeoverWan,
}

impl CheckKind {
    /// Whether only the MASTER can run the check (what it looks at is up
    /// there only): elsewhere its rounds say nothing, and a failure that made
    /// the node give up stays, since a backup cannot show it fixed.
    pub fn master_only(self) -> bool {
        matches!(self, CheckKind::Service | CheckKind::TakeoverWan)
    }
}

/// A check's state after hysteresis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckState {
    /// No round yet.
    Unknown,
    Ok,
    Failing,
    /// A service check on a node that is not MASTER.
    NotApplicable,
}

impl CheckState {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::Unknown => "unknown",
            CheckState::Ok => "ok",
            CheckState::Failing => "failing",
            CheckState::NotApplicable => "not-applicable",
        }
    }
}

/// One round of one check.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// None: the check does not apply now (a service on a non-MASTER).
    pub ok: Option<bool>,
    pub latency_ms: Option<f64>,
    pub detail: String,
}

/// A check as the state file, `status` and `metrics` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckStatus {
    pub id: String,
    pub kind: CheckKind,
    pub state: CheckState,
    /// Consecutive failed and good rounds.
    pub fails: u32,
    pub oks: u32,
    pub rounds: u64,
    pub failed_rounds: u64,
    pub last_latency_ms: Option<f64>,
    pub max_latency_ms: Option<f64>,
    pub since_ms: u64,
    pub detail: String,
}

/// One change of the advertised priority, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub unix_ms: u64,
    pub priority: u8,
    pub track_value: i32,
    pub fit: bool,
    pub master: bool,
    pub reason: String,
}

/// Something an administrator is told about, once per change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// `failover`, `health-failing`, `health-recovered`, `sync-failing`,
    /// `sync-recovered`, `split-brain`, `split-brain-recovered`.
    pub event: String,
    pub unix_ms: u64,
    /// The check, or the node's new state.
    pub subject: String,
    pub detail: String,
}

/// The node gave up MASTER while unfit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GaveUp {
    pub unix_ms: u64,
    pub reason: String,
}

/// The whole judgement of one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub configured_priority: u8,
    pub checks: BTreeMap<String, CheckStatus>,
    /// None until the first observation of the VIPs.
    pub master: Option<bool>,
    pub master_since_ms: u64,
    pub gave_up: Option<GaveUp>,
    /// When the node last stopped being MASTER while fit (None: it has not,
    /// or that was recorded as giving up).
    #[serde(default)]
    pub lost_master_ms: Option<u64>,
    /// Why the node was last unfit while MASTER, until it has been healthy
    /// for the hold-down since: losing MASTER before then is giving up,
    /// even if it is fit again when the loss is seen. The VIPs are looked
    /// at once per interfaces round (1 s), so a short failure can be over
    /// by the time the loss is seen, and the hold-down would be skipped.
    #[serde(default)]
    pub unfit_as_master: Option<String>,
    /// Since when no check has a failed round (None: one has).
    pub healthy_since_ms: Option<u64>,
    pub priority: u8,
    pub fit: bool,
    pub reason: String,
    pub decisions: VecDeque<Decision>,
    pub transitions: u64,
    /// Whether the last sync attempt succeeded (None: not known yet).
    pub sync_ok: Option<bool>,
    /// While this node is MASTER and another host answers ARP for one of
    /// its LAN VIPs: which VIPs and MACs (None: no second holder seen).
    #[serde(default)]
    pub split_brain: Option<String>,
    #[serde(skip)]
    fall: u32,
    #[serde(skip)]
    rise: u32,
    #[serde(skip)]
    service_fall: u32,
    #[serde(skip)]
    hold_down_ms: u64,
    #[serde(skip)]
    pending: Vec<Event>,
}

impl Verdict {
    pub fn new(settings: &HealthSettings, configured_priority: u8, now_ms: u64) -> Verdict {
        Verdict {
            configured_priority,
            checks: BTreeMap::new(),
            master: None,
            master_since_ms: now_ms,
            gave_up: None,
            lost_master_ms: None,
            unfit_as_master: None,
            healthy_since_ms: Some(now_ms),
            priority: configured_priority,
            fit: true,
            reason: "starting: no check has failed".into(),
            decisions: VecDeque::new(),
            transitions: 0,
            sync_ok: None,
            split_brain: None,
            fall: settings.fall,
            rise: settings.rise,
            service_fall: settings.service_fall,
            hold_down_ms: settings.hold_down_ms,
            pending: Vec::new(),
        }
    }

    /// New settings (the cluster config changed): thresholds and the set of
    /// checks; states of checks that remain are kept.
    pub fn reconfigure(&mut self, settings: &HealthSettings, configured: u8, ids: &[String]) {
        self.fall = settings.fall;
        self.rise = settings.rise;
        self.service_fall = settings.service_fall;
        self.hold_down_ms = settings.hold_down_ms;
        self.configured_priority = configured;
        self.checks.retain(|id, _| ids.contains(id));
    }

    /// Register a check (state unknown until its first round).
    pub fn add_check(&mut self, id: &str, kind: CheckKind, now_ms: u64) {
        self.checks
            .entry(id.to_string())
            .or_insert_with(|| CheckStatus {
                id: id.to_string(),
                kind,
                state: CheckState::Unknown,
                fails: 0,
                oks: 0,
                rounds: 0,
                failed_rounds: 0,
                last_latency_ms: None,
                max_latency_ms: None,
                since_ms: now_ms,
                detail: String::new(),
            });
    }

    /// Apply one round of a check.
    pub fn observe(&mut self, id: &str, o: Outcome, now_ms: u64) {
        let (fall, rise, service_fall) = (self.fall, self.rise, self.service_fall);
        let master = self.master == Some(true);
        let Some(c) = self.checks.get_mut(id) else {
            return;
        };
        let mut event = None;
        // A service runs, a takeover WAN is up, only on the MASTER:
        // elsewhere its round says nothing.
        let ok = if c.kind.master_only() && !master {
            None
        } else {
            o.ok
        };
        match ok {
            None => {
                // A master-only check whose failure made this node give up
                // stays failing: a backup cannot show it fixed.
                if c.state != CheckState::Failing && c.state != CheckState::NotApplicable {
                    c.state = CheckState::NotApplicable;
                    c.since_ms = now_ms;
                }
                c.fails = 0;
                c.oks = 0;
            }
            Some(true) => {
                c.rounds += 1;
                c.fails = 0;
                c.oks = c.oks.saturating_add(1);
                c.last_latency_ms = o.latency_ms;
                c.max_latency_ms = max_opt(c.max_latency_ms, o.latency_ms);
                let back = match c.state {
                    CheckState::Failing => c.oks >= rise,
                    _ => true,
                };
                if back && c.state != CheckState::Ok {
                    if c.state == CheckState::Failing {
                        event = Some(("health-recovered", o.detail.clone()));
                    }
                    c.state = CheckState::Ok;
                    c.since_ms = now_ms;
                }
                c.detail = o.detail;
            }
            Some(false) => {
                c.rounds += 1;
                c.failed_rounds += 1;
                c.oks = 0;
                c.fails = c.fails.saturating_add(1);
                c.last_latency_ms = None;
                let limit = if c.kind == CheckKind::Service {
                    service_fall
                } else {
                    fall
                };
                if c.fails >= limit && c.state != CheckState::Failing {
                    c.state = CheckState::Failing;
                    c.since_ms = now_ms;
                    event = Some(("health-failing", o.detail.clone()));
                }
                c.detail = o.detail;
            }
        }
        if let Some((name, detail)) = event {
            self.pending.push(Event {
                event: name.into(),
                unix_ms: now_ms,
                subject: id.to_string(),
                detail,
            });
        }
        self.update_healthy_since(now_ms);
    }

    fn update_healthy_since(&mut self, now_ms: u64) {
        let clean = self
            .checks
            .values()
            .all(|c| c.state != CheckState::Failing && c.fails == 0);
        match (clean, self.healthy_since_ms) {
            (true, None) => self.healthy_since_ms = Some(now_ms),
            (false, Some(_)) => self.healthy_since_ms = None,
            _ => {}
        }
    }

    /// What the node holds now (by its VIPs).
    pub fn set_master(&mut self, master: bool, now_ms: u64) {
        let before = self.master;
        if before == Some(master) {
            return;
        }
        self.master = Some(master);
        if before.is_some() {
            self.transitions += 1;
        }
        let held_backup_ms = now_ms.saturating_sub(self.master_since_ms);
        self.master_since_ms = now_ms;
        match (before, master) {
            (Some(true), false) if !self.fit || self.unfit_as_master.is_some() => {
                let reason = match (&self.unfit_as_master, self.fit) {
                    (Some(r), true) => r.clone(),
                    _ => self.reason.clone(),
                };
                self.gave_up = Some(GaveUp {
                    unix_ms: now_ms,
                    reason,
                });
                self.unfit_as_master = None;
            }
            (Some(true), false) => self.lost_master_ms = Some(now_ms),
            (Some(false), true) if held_backup_ms >= FAILOVER_AFTER_BACKUP_MS => {
                self.pending.push(Event {
                    event: "failover".into(),
                    unix_ms: now_ms,
                    subject: "MASTER".into(),
                    detail: format!(
                        "this node took the VIPs after {} s as BACKUP",
                        held_backup_ms / 1000
                    ),
                });
            }
            _ => {}
        }
        if master {
            // Holding the role again: a past give-up no longer matters.
            self.gave_up = None;
            self.lost_master_ms = None;
        }
    }

    /// Recompute fitness and priority; returns the decision if it changed.
    pub fn evaluate(&mut self, now_ms: u64) -> Option<Decision> {
        let master = self.master == Some(true);
        let failing: Vec<&str> = self
            .checks
            .values()
            .filter(|c| c.state == CheckState::Failing)
            .map(|c| c.id.as_str())
            .collect();
        let suspect: Vec<&str> = self
            .checks
            .values()
            .filter(|c| c.fails > 0 && c.state != CheckState::Failing)
            .map(|c| c.id.as_str())
            .collect();
        if !master && !failing.is_empty() && self.gave_up.is_none() {
            // Lost MASTER while still fit and failing soon after: the peer
            // noticed the failure first (a silent link); it is a give-up.
            if let Some(lost) = self
                .lost_master_ms
                .filter(|l| now_ms.saturating_sub(*l) <= GAVE_UP_WINDOW_MS)
            {
                self.gave_up = Some(GaveUp {
                    unix_ms: lost,
                    reason: format!("failing: {}", failing.join(", ")),
                });
            }
            self.lost_master_ms = None;
        }
        let (fit, reason) = if !failing.is_empty() {
            (false, format!("failing: {}", failing.join(", ")))
        } else if !master && !suspect.is_empty() {
            (
                false,
                format!(
                    "not MASTER and a round failed ({}): not fit to take over",
                    suspect.join(", ")
                ),
            )
        } else if let Some(g) = self.gave_up.as_ref().filter(|_| !master) {
            let healthy_for = self
                .healthy_since_ms
                .map(|s| now_ms.saturating_sub(s.max(g.unix_ms)));
            match healthy_for {
                Some(h) if h >= self.hold_down_ms => {
                    self.gave_up = None;
                    (true, "healthy for the hold-down after giving up".into())
                }
                _ => (
                    false,
                    format!(
                        "hold-down: gave up MASTER ({}); healthy for {} of {} ms",
                        g.reason,
                        healthy_for.unwrap_or(0),
                        self.hold_down_ms
                    ),
                ),
            }
        } else {
            (true, "every check ok".into())
        };
        if master && !fit {
            self.unfit_as_master.get_or_insert_with(|| reason.clone());
        } else if master
            && self
                .healthy_since_ms
                .is_some_and(|h| now_ms.saturating_sub(h) >= self.hold_down_ms)
        {
            self.unfit_as_master = None;
        }
        let priority = target_priority(self.configured_priority, fit, master);
        let changed = priority != self.priority || fit != self.fit;
        self.fit = fit;
        self.reason = reason;
        if !changed {
            return None;
        }
        self.priority = priority;
        let d = Decision {
            unix_ms: now_ms,
            priority,
            track_value: track_value(self.configured_priority, priority),
            fit,
            master,
            reason: self.reason.clone(),
        };
        self.decisions.push_back(d.clone());
        while self.decisions.len() > DECISIONS_KEPT {
            self.decisions.pop_front();
        }
        Some(d)
    }

    /// The value for keepalived's health track file.
    pub fn track_value(&self) -> i32 {
        track_value(self.configured_priority, self.priority)
    }

    /// Events not yet handed to the alert hook.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.pending)
    }

    /// The sync's last attempt: an event when it starts or stops failing
    /// (not for the first reading, and not again while it persists).
    pub fn set_sync(&mut self, ok: bool, detail: &str, now_ms: u64) {
        let before = self.sync_ok.replace(ok);
        let event = match (before, ok) {
            (Some(true) | None, false) => "sync-failing",
            (Some(false), true) => "sync-recovered",
            _ => return,
        };
        self.pending.push(Event {
            event: event.into(),
            unix_ms: now_ms,
            subject: "sync".into(),
            detail: detail.into(),
        });
    }

    /// The slow thread's split-brain round: an event when a second holder
    /// appears (`split-brain`) and when none is left (`split-brain-recovered`),
    /// not again while it persists (a changed detail only updates the state).
    pub fn set_split_brain(&mut self, found: Option<String>, now_ms: u64) {
        let (event, detail) = match (&self.split_brain, &found) {
            (None, Some(d)) => ("split-brain", d.clone()),
            (Some(d), None) => ("split-brain-recovered", format!("no other holder of {d}")),
            _ => {
                self.split_brain = found;
                return;
            }
        };
        self.split_brain = found;
        self.pending.push(Event {
            event: event.into(),
            unix_ms: now_ms,
            subject: "vip".into(),
            detail,
        });
    }
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Outcome {
        Outcome {
            ok: Some(true),
            latency_ms: Some(0.5),
            detail: "answered".into(),
        }
    }
    fn bad() -> Outcome {
        Outcome {
            ok: Some(false),
            latency_ms: None,
            detail: "no answer".into(),
        }
    }
    fn na() -> Outcome {
        Outcome {
            ok: None,
            latency_ms: None,
            detail: String::new(),
        }
    }

    fn settings() -> HealthSettings {
        HealthSettings {
            fall: 3,
            rise: 2,
            service_fall: 2,
            hold_down_ms: 10_000,
            ..Default::default()
        }
    }

    fn verdict(prio: u8, master: bool) -> Verdict {
        let mut v = Verdict::new(&settings(), prio, 0);
        v.add_check("reach:lan0", CheckKind::Reach, 0);
        v.add_check("service:dnsmasq", CheckKind::Service, 0);
        v.set_master(master, 0);
        v.evaluate(0);
        v
    }

    #[test]
    fn a_master_gives_up_after_fall_rounds_and_a_backup_at_the_first() {
        let mut m = verdict(200, true);
        for t in 1..=2 {
            m.observe("reach:lan0", bad(), t);
            assert_eq!(m.evaluate(t), None, "still fit after {t} failed rounds");
        }
        m.observe("reach:lan0", bad(), 3);
        let d = m.evaluate(3).expect("the third failed round decides");
        assert_eq!((d.priority, d.track_value, d.fit), (2, -198, false));
        assert!(d.reason.contains("failing: reach:lan0"), "{}", d.reason);
        let ev = m.take_events();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].event, "health-failing");
        // More failed rounds: no second decision, no second alert.
        m.observe("reach:lan0", bad(), 4);
        assert_eq!(m.evaluate(4), None);
        assert!(m.take_events().is_empty());

        let mut b = verdict(100, false);
        b.observe("reach:lan0", bad(), 1);
        let d = b.evaluate(1).expect("a backup is unfit at once");
        assert_eq!(d.priority, 1);
        // No alert: the check itself is not failing yet.
        assert!(b.take_events().is_empty());
        b.observe("reach:lan0", ok(), 2);
        assert_eq!(b.evaluate(2).unwrap().priority, 100);
    }

    #[test]
    fn both_nodes_unhealthy_the_same_way_keep_the_master() {
        let mut m = verdict(200, true);
        let mut b = verdict(100, false);
        for t in 1..=5 {
            m.observe("reach:lan0", bad(), t);
            b.observe("reach:lan0", bad(), t);
            m.evaluate(t);
            b.evaluate(t);
            assert!(
                m.priority > b.priority,
                "round {t}: master {} backup {}",
                m.priority,
                b.priority
            );
        }
        // The same after a failover: the unfit backup-turned-master keeps it.
        let mut b2 = verdict(100, true);
        let mut p2 = verdict(200, false);
        for t in 1..=5 {
            b2.observe("reach:lan0", bad(), t);
            p2.observe("reach:lan0", bad(), t);
            b2.evaluate(t);
            p2.evaluate(t);
            assert!(b2.priority > p2.priority, "round {t}");
        }
    }

    #[test]
    fn a_node_that_gave_up_waits_for_the_hold_down() {
        let mut m = verdict(200, true);
        for t in 1..=3 {
            m.observe("reach:lan0", bad(), t);
            m.evaluate(t);
        }
        m.set_master(false, 500);
        assert!(m.gave_up.is_some());
        m.evaluate(500);
        assert_eq!(m.priority, 1);
        // Healthy again after rise rounds, but the hold-down runs.
        m.observe("reach:lan0", ok(), 1_000);
        m.observe("reach:lan0", ok(), 1_100);
        assert!(m
            .take_events()
            .iter()
            .any(|e| e.event == "health-recovered"));
        m.evaluate(1_100);
        assert!(!m.fit);
        assert!(m.reason.starts_with("hold-down"), "{}", m.reason);
        // A failed round restarts the hold-down.
        m.observe("reach:lan0", bad(), 5_000);
        m.observe("reach:lan0", ok(), 5_100);
        m.evaluate(10_500);
        assert!(!m.fit, "{}", m.reason);
        m.evaluate(15_099);
        assert!(!m.fit);
        let d = m.evaluate(15_100).expect("fit after the hold-down");
        assert_eq!(d.priority, 200);
        assert!(m.gave_up.is_none());
    }

    #[test]
    fn a_master_the_peer_replaced_before_its_checks_failed_waits_for_the_hold_down() {
        // A silent link: the peer stops hearing this node and takes over
        // while this node's check has not reached `fall` yet.
        let mut m = verdict(200, true);
        m.observe("reach:lan0", bad(), 1);
        m.evaluate(1);
        m.set_master(false, 2);
        assert!(m.gave_up.is_none(), "still fit when it lost MASTER");
        for t in 3..=4 {
            m.observe("reach:lan0", bad(), t);
            m.evaluate(t);
        }
        assert!(m.gave_up.is_some(), "failing soon after losing MASTER");
        m.observe("reach:lan0", ok(), 1_000);
        m.observe("reach:lan0", ok(), 1_100);
        m.evaluate(1_100);
        assert!(!m.fit && m.reason.starts_with("hold-down"), "{}", m.reason);
        assert!(m.evaluate(11_100).expect("fit after the hold-down").fit);

        // Failing long after losing MASTER for another reason (maintenance,
        // a preempting peer): no hold-down once it recovers.
        let mut p = verdict(200, true);
        p.set_master(false, 10);
        for t in 1..=3 {
            p.observe("reach:lan0", bad(), GAVE_UP_WINDOW_MS + 100 + t);
            p.evaluate(GAVE_UP_WINDOW_MS + 100 + t);
        }
        assert!(p.gave_up.is_none());
        p.observe("reach:lan0", ok(), GAVE_UP_WINDOW_MS + 200);
        p.observe("reach:lan0", ok(), GAVE_UP_WINDOW_MS + 300);
        p.evaluate(GAVE_UP_WINDOW_MS + 300);
        assert!(p.fit, "{}", p.reason);
    }

    /// The VIPs are seen once a second: a MASTER unfit for a moment, fit
    /// again by the time its loss of MASTER is seen, still gave up.
    #[test]
    fn a_master_unfit_then_fit_again_before_its_loss_is_seen_waits_for_the_hold_down() {
        let mut m = verdict(200, true);
        for t in 1..=3 {
            m.observe("reach:lan0", bad(), t);
            m.evaluate(t);
        }
        assert!(!m.fit);
        for t in 600..605 {
            m.observe("reach:lan0", ok(), t);
        }
        m.evaluate(605);
        assert!(m.fit, "{}", m.reason);
        m.set_master(false, 650);
        let g = m
            .gave_up
            .as_ref()
            .expect("losing MASTER after being unfit as MASTER");
        assert!(g.reason.contains("reach:lan0"), "{}", g.reason);
        m.evaluate(700);
        assert!(!m.fit && m.reason.starts_with("hold-down"), "{}", m.reason);
        assert!(
            m.evaluate(650 + 10_000)
                .expect("fit after the hold-down")
                .fit
        );

        // Healthy as MASTER for the hold-down after a failure: a later
        // loss of MASTER (maintenance) is not giving up.
        let mut k = verdict(200, true);
        for t in 1..=3 {
            k.observe("reach:lan0", bad(), t);
            k.evaluate(t);
        }
        k.observe("reach:lan0", ok(), 100);
        k.observe("reach:lan0", ok(), 200);
        k.evaluate(200);
        k.evaluate(200 + 10_000);
        assert!(k.unfit_as_master.is_none());
        k.set_master(false, 20_000);
        assert!(k.gave_up.is_none());
    }

    #[test]
    fn services_count_only_on_the_master_and_stick_after_giving_up() {
        let mut b = verdict(100, false);
        b.observe("service:dnsmasq", na(), 1);
        assert_eq!(b.checks["service:dnsmasq"].state, CheckState::NotApplicable);
        assert_eq!(b.evaluate(1), None);
        // Not running on a backup is as it should be: still fit.
        b.observe("service:dnsmasq", bad(), 2);
        assert_eq!(b.checks["service:dnsmasq"].fails, 0);
        assert_eq!(b.evaluate(2), None);
        assert!(b.fit);
        let mut m = verdict(200, true);
        // A restart: one failed round, then ok: nothing moves.
        m.observe("service:dnsmasq", bad(), 1);
        assert_eq!(m.evaluate(1), None);
        m.observe("service:dnsmasq", ok(), 2);
        assert_eq!(m.evaluate(2), None);
        // Dead for service_fall rounds: unfit.
        m.observe("service:dnsmasq", bad(), 3);
        m.observe("service:dnsmasq", bad(), 4);
        assert_eq!(m.evaluate(4).unwrap().priority, 2);
        m.set_master(false, 5);
        // As backup the service is not run: the failure stays.
        m.observe("service:dnsmasq", na(), 6);
        assert_eq!(m.checks["service:dnsmasq"].state, CheckState::Failing);
        m.evaluate(100_000);
        assert!(!m.fit);
    }

    #[test]
    fn a_takeover_wan_counts_only_on_the_master_and_sticks_after_giving_up() {
        let mut m = verdict(200, true);
        m.add_check("reach:wan1", CheckKind::TakeoverWan, 0);
        // Its gateway silent for `fall` rounds (a plain reach check's fall,
        // not the services'): the master gives up.
        for t in 1..=2 {
            m.observe("reach:wan1", bad(), t);
            assert_eq!(m.evaluate(t), None);
        }
        m.observe("reach:wan1", bad(), 3);
        assert_eq!(m.evaluate(3).unwrap().priority, 2);
        // As backup the WAN is down: its rounds say nothing, the failure
        // stays past any hold-down, so the node does not take the WAN back
        // to fail on it again.
        m.set_master(false, 4);
        m.observe("reach:wan1", bad(), 5);
        m.observe("reach:wan1", na(), 6);
        assert_eq!(m.checks["reach:wan1"].state, CheckState::Failing);
        m.evaluate(1_000_000);
        assert!(!m.fit);
        // A backup that never had it: not applicable, fit.
        let mut b = verdict(100, false);
        b.add_check("reach:wan1", CheckKind::TakeoverWan, 0);
        b.observe("reach:wan1", bad(), 1);
        assert_eq!(b.checks["reach:wan1"].state, CheckState::NotApplicable);
        assert_eq!(b.evaluate(1), None);
        assert!(b.fit);
    }

    #[test]
    fn split_brain_alerts_once_per_change() {
        let mut v = Verdict::new(&settings(), 150, 0);
        v.set_split_brain(None, 1);
        assert!(v.take_events().is_empty(), "nothing found, nothing said");
        v.set_split_brain(Some("10.99.1.254 also at 02:00:00:00:00:02".into()), 2);
        v.set_split_brain(Some("10.99.1.254 also at 02:00:00:00:00:03".into()), 3);
        let ev = v.take_events();
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].event, "split-brain");
        assert!(ev[0].detail.contains("02:00:00:00:00:02"), "{ev:?}");
        assert!(v.split_brain.as_deref().unwrap().contains(":03"));
        v.set_split_brain(None, 4);
        v.set_split_brain(None, 5);
        let ev = v.take_events();
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].event, "split-brain-recovered");
        assert!(ev[0].detail.contains("10.99.1.254"), "{ev:?}");
        assert_eq!(v.split_brain, None);
    }

    #[test]
    fn sync_alerts_once_per_change() {
        let mut v = Verdict::new(&settings(), 100, 0);
        v.set_sync(true, "", 1);
        assert!(v.take_events().is_empty());
        v.set_sync(false, "peer does not answer", 2);
        v.set_sync(false, "peer does not answer", 3);
        let ev = v.take_events();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].event, "sync-failing");
        v.set_sync(true, "ok", 4);
        assert_eq!(v.take_events()[0].event, "sync-recovered");
    }

    #[test]
    fn failover_is_an_event_only_after_a_settled_backup() {
        let mut v = Verdict::new(&settings(), 100, 0);
        v.set_master(false, 0);
        v.set_master(true, 1_000);
        assert!(v.take_events().is_empty(), "an election at start");
        v.set_master(false, 2_000);
        v.set_master(true, 2_000 + FAILOVER_AFTER_BACKUP_MS);
        let ev = v.take_events();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].event, "failover");
        assert_eq!(v.transitions, 3);
    }
}
