//! Recording keepalived events, and nothing else.
//!
//! keepalived runs notify scripts concurrently and out of order, and a slow
//! FIFO reader loses lines. So the entry points only record what they were
//! told (with a sequence number assigned under a short lock) and leave the
//! work to one serialized reconciler, which reads the latest record. The
//! record lives under `/run`: after a reboot keepalived starts over, and so do
//! the events.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use ns_ha_common::exit::{fail, Code};
use ns_ha_common::fsutil::{atomic_write, NodeLock};
use ns_ha_common::keepalived::SYNC_GROUP;
use ns_ha_common::root::paths;
use ns_ha_common::NodeRoot;

/// How many recent events the record keeps (for flap detection and status).
pub const RECENT_EVENTS: usize = 64;

/// Where the role engine keeps its runtime files, under the node root.
pub const ROLE_RUN_DIR: &str = "/run/ns-ha/role";

/// Milliseconds since the Unix epoch (the one wall clock, in `common::clock`).
pub use ns_ha_common::clock::now_ms;

/// A node path of the role engine's runtime directory.
pub fn run_path(root: &NodeRoot, name: &str) -> PathBuf {
    root.path(format!("{ROLE_RUN_DIR}/{name}"))
}

/// A keepalived state, as the notify arguments and the FIFO spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "UPPERCASE")]
pub enum KaState {
    Master,
    Backup,
    Fault,
    Stop,
}

impl KaState {
    pub fn parse(word: &str) -> Result<KaState> {
        match word.to_ascii_uppercase().as_str() {
            "MASTER" => Ok(KaState::Master),
            "BACKUP" => Ok(KaState::Backup),
            "FAULT" => Ok(KaState::Fault),
            "STOP" | "DELETED" => Ok(KaState::Stop),
            _ => Err(fail(
                Code::InvalidInput,
                format!(
                    "'{word}' is not a keepalived state: expected MASTER, BACKUP, FAULT or STOP"
                ),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KaState::Master => "MASTER",
            KaState::Backup => "BACKUP",
            KaState::Fault => "FAULT",
            KaState::Stop => "STOP",
        }
    }
}

impl std::fmt::Display for KaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an event is about the sync group or a single instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Scope {
    Group,
    Instance,
}

/// Who delivered an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// keepalived's generic notify script (unordered).
    Notify,
    /// keepalived's notify FIFO (ordered).
    Fifo,
}

/// One keepalived event as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub unix_ms: u64,
    pub scope: Scope,
    pub name: String,
    pub state: KaState,
    #[serde(default)]
    pub prio: Option<u32>,
    pub source: Source,
}

impl Event {
    pub fn describe(&self) -> String {
        let scope = match self.scope {
            Scope::Group => "GROUP",
            Scope::Instance => "INSTANCE",
        };
        let prio = self.prio.map(|p| format!(" prio {p}")).unwrap_or_default();
        let source = match self.source {
            Source::Notify => "notify",
            Source::Fifo => "fifo",
        };
        format!(
            "{scope} {} {}{prio} ({source}, seq {})",
            self.name, self.state, self.seq
        )
    }
}

/// An event before it got its sequence number and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub scope: Scope,
    pub name: String,
    pub state: KaState,
    pub prio: Option<u32>,
}

impl NewEvent {
    /// From the generic notify arguments: `INSTANCE|GROUP NAME STATE [PRIO]`.
    pub fn from_notify(scope: &str, name: &str, state: &str, prio: Option<&str>) -> Result<Self> {
        let scope = match scope.to_ascii_uppercase().as_str() {
            "GROUP" => Scope::Group,
            "INSTANCE" => Scope::Instance,
            _ => {
                return Err(fail(
                    Code::InvalidInput,
                    format!("'{scope}' is not a notify type: expected GROUP or INSTANCE"),
                ))
            }
        };
        let name = name.trim_matches('"').to_string();
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
            return Err(fail(Code::InvalidInput, "empty or invalid instance name"));
        }
        Ok(NewEvent {
            scope,
            name,
            state: KaState::parse(state)?,
            prio: prio.and_then(|p| p.parse().ok()),
        })
    }

    /// From a notify FIFO line: `GROUP "ns_ha" MASTER 200`. Lines about
    /// virtual servers (`VS`, `RS`) or unknown words give `None`.
    pub fn from_fifo_line(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        let scope = words.next()?;
        if !matches!(scope, "GROUP" | "INSTANCE") {
            return None;
        }
        let name = words.next()?;
        let state = words.next()?;
        NewEvent::from_notify(scope, name, state, words.next()).ok()
    }
}

/// A sync applied on this node that the reconciler has not handled yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSync {
    /// Sequence number of the latest sync-applied call.
    pub seq: u64,
    /// Node paths the syncs changed; `None`: unknown, reload everything.
    pub changed: Option<BTreeSet<String>>,
}

/// The record the reconciler reads: a sequence counter, the recent events,
/// and the syncs applied since the last pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLog {
    /// Bumped by every event, sync and apply request: the reconciler's "dirty" counter.
    pub seq: u64,
    pub recent: Vec<Event>,
    #[serde(default)]
    pub sync: Option<PendingSync>,
}

impl EventLog {
    /// The event that says what keepalived thinks this node is: the last
    /// GROUP event of the ns-ha sync group; INSTANCE events only count while
    /// no GROUP event was ever seen. FIFO events win over notify events
    /// recorded after them only when `prefer_fifo` (a reader is alive):
    /// the FIFO is ordered, concurrent notify scripts are not.
    pub fn current(&self, prefer_fifo: bool) -> Option<&Event> {
        let relevant = |e: &&Event| e.scope == Scope::Instance || e.name == SYNC_GROUP;
        let has_group = self
            .recent
            .iter()
            .any(|e| e.scope == Scope::Group && e.name == SYNC_GROUP);
        let candidates = self
            .recent
            .iter()
            .filter(relevant)
            .filter(|e| !has_group || e.scope == Scope::Group);
        if prefer_fifo {
            let fifo = candidates
                .clone()
                .filter(|e| e.source == Source::Fifo)
                .max_by_key(|e| e.seq);
            if fifo.is_some() {
                return fifo;
            }
        }
        candidates.max_by_key(|e| e.seq)
    }

    /// Whether a sync-group event after `seq` says another state than
    /// `state`: the node went elsewhere and came back in between, so the
    /// one-shot actions of `state` are due again. With `fifo_only` (a reader
    /// is alive) only FIFO events count: a late notify script may be stale.
    pub fn flapped_since(&self, seq: u64, state: KaState, fifo_only: bool) -> bool {
        self.recent.iter().any(|e| {
            e.seq > seq
                && e.state != state
                && e.name == SYNC_GROUP
                && (!fifo_only || e.source == Source::Fifo)
        })
    }
}

/// The event log of a node: `<root>/run/ns-ha/role/events.json`, updated under
/// a short lock so concurrent notify scripts get distinct sequence numbers.
pub struct EventStore {
    root: NodeRoot,
}

const EVENT_LOCK_WAIT: Duration = Duration::from_secs(10);

impl EventStore {
    pub fn new(root: &NodeRoot) -> Self {
        EventStore { root: root.clone() }
    }

    fn file(&self) -> PathBuf {
        run_path(&self.root, "events.json")
    }

    /// The current log (empty when nothing was recorded since boot).
    pub fn load(&self) -> Result<EventLog> {
        let path = self.file();
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).or_else(|e| {
                // A torn or foreign file must not stop failover: start over.
                log::warn!(
                    "{} is invalid ({e}): starting a new event log",
                    path.display()
                );
                Ok(EventLog::default())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(EventLog::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// The dirty counter alone.
    pub fn seq(&self) -> Result<u64> {
        Ok(self.load()?.seq)
    }

    fn update<T>(&self, f: impl FnOnce(&mut EventLog) -> T) -> Result<T> {
        let _lock = NodeLock::acquire(&run_path(&self.root, "events.lock"), EVENT_LOCK_WAIT)?;
        let mut log = self.load()?;
        log.seq += 1;
        let out = f(&mut log);
        let text = serde_json::to_vec(&log)?;
        atomic_write(&self.file(), &text, 0o644)?;
        Ok(out)
    }

    /// Record a keepalived event; returns it with its sequence number.
    pub fn record(&self, ev: NewEvent, source: Source) -> Result<Event> {
        self.update(|log| {
            let e = Event {
                seq: log.seq,
                unix_ms: now_ms(),
                scope: ev.scope,
                name: ev.name,
                state: ev.state,
                prio: ev.prio,
                source,
            };
            log.recent.push(e.clone());
            let excess = log.recent.len().saturating_sub(RECENT_EVENTS);
            log.recent.drain(..excess);
            e
        })
    }

    /// Record that a sync was applied, with the node paths it changed (`None`: unknown).
    pub fn record_sync(&self, changed: Option<Vec<String>>) -> Result<u64> {
        self.update(|log| {
            let merged = match (log.sync.take(), changed) {
                (
                    Some(PendingSync {
                        changed: Some(mut old),
                        ..
                    }),
                    Some(new),
                ) => {
                    old.extend(new);
                    Some(old)
                }
                (None, Some(new)) => Some(new.into_iter().collect()),
                _ => None,
            };
            log.sync = Some(PendingSync {
                seq: log.seq,
                changed: merged,
            });
            log.seq
        })
    }

    /// Mark the pending sync up to `seq` handled.
    pub fn clear_sync(&self, seq: u64) -> Result<()> {
        let _lock = NodeLock::acquire(&run_path(&self.root, "events.lock"), EVENT_LOCK_WAIT)?;
        let mut log = self.load()?;
        if log.sync.as_ref().is_some_and(|s| s.seq <= seq) {
            log.sync = None;
            atomic_write(&self.file(), &serde_json::to_vec(&log)?, 0o644)?;
        }
        Ok(())
    }
}

/// The node path of the keepalived notify FIFO (rendered in keepalived.conf).
pub fn fifo_path(root: &NodeRoot) -> PathBuf {
    root.path(paths::NOTIFY_FIFO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, EventStore) {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        (dir, EventStore::new(&root))
    }

    fn ev(scope: &str, name: &str, state: &str) -> NewEvent {
        NewEvent::from_notify(scope, name, state, Some("100")).unwrap()
    }

    #[test]
    fn parses_notify_and_fifo() {
        let e = NewEvent::from_fifo_line("GROUP \"ns_ha\" MASTER 200").unwrap();
        assert_eq!(e.name, "ns_ha");
        assert_eq!(e.state, KaState::Master);
        assert_eq!(e.prio, Some(200));
        assert!(NewEvent::from_fifo_line("VS [1.2.3.4]:tcp:80 UP").is_none());
        assert!(NewEvent::from_fifo_line("INSTANCE \"x\" WEIRD 1").is_none());
        assert!(NewEvent::from_notify("GROUP", "ns_ha", "LEADER", None).is_err());
        assert!(NewEvent::from_notify("SOMETHING", "ns_ha", "MASTER", None).is_err());
    }

    #[test]
    fn group_events_win_over_instances() {
        let (_d, s) = store();
        s.record(ev("INSTANCE", "lan_lan0", "MASTER"), Source::Notify)
            .unwrap();
        let log = s.load().unwrap();
        assert_eq!(log.current(false).unwrap().state, KaState::Master);
        s.record(ev("GROUP", "ns_ha", "BACKUP"), Source::Notify)
            .unwrap();
        s.record(ev("INSTANCE", "lan_lan0", "MASTER"), Source::Notify)
            .unwrap();
        s.record(ev("GROUP", "other", "MASTER"), Source::Notify)
            .unwrap();
        let log = s.load().unwrap();
        assert_eq!(log.seq, 4);
        assert_eq!(log.current(false).unwrap().state, KaState::Backup);
    }

    #[test]
    fn fifo_events_win_when_a_reader_is_alive() {
        let (_d, s) = store();
        s.record(ev("GROUP", "ns_ha", "MASTER"), Source::Fifo)
            .unwrap();
        s.record(ev("GROUP", "ns_ha", "BACKUP"), Source::Notify)
            .unwrap();
        let log = s.load().unwrap();
        assert_eq!(log.current(true).unwrap().state, KaState::Master);
        assert_eq!(log.current(false).unwrap().state, KaState::Backup);
        assert!(log.flapped_since(0, KaState::Master, false));
        assert!(!log.flapped_since(0, KaState::Master, true));
        assert!(!log.flapped_since(2, KaState::Master, false));
    }

    #[test]
    fn concurrent_records_get_distinct_sequence_numbers() {
        let (d, _s) = store();
        let root = NodeRoot::new(d.path()).unwrap();
        std::thread::scope(|t| {
            for i in 0..20 {
                let root = root.clone();
                t.spawn(move || {
                    let state = if i % 2 == 0 { "MASTER" } else { "BACKUP" };
                    EventStore::new(&root)
                        .record(ev("GROUP", "ns_ha", state), Source::Notify)
                        .unwrap();
                });
            }
        });
        let log = EventStore::new(&root).load().unwrap();
        assert_eq!(log.seq, 20);
        let mut seqs: Vec<u64> = log.recent.iter().map(|e| e.seq).collect();
        seqs.sort();
        seqs.dedup();
        assert_eq!(seqs.len(), 20);
    }

    #[test]
    fn syncs_merge_changed_paths() {
        let (_d, s) = store();
        s.record_sync(Some(vec!["/etc/config/firewall".into()]))
            .unwrap();
        let seq = s
            .record_sync(Some(vec!["/etc/ssh/sshd_config".into()]))
            .unwrap();
        let log = s.load().unwrap();
        let sync = log.sync.unwrap();
        assert_eq!(sync.seq, seq);
        assert_eq!(sync.changed.unwrap().len(), 2);
        s.record_sync(None).unwrap();
        assert_eq!(s.load().unwrap().sync.unwrap().changed, None);
        s.clear_sync(seq + 1).unwrap();
        assert!(s.load().unwrap().sync.is_none());
    }
}
