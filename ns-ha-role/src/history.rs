//! The transition history: what the role engine did, when, why, and how long
//! each action took.
//!
//! An administrator asking "why are the services stopped?" after a failover
//! needs the sequence of transitions with every action's result, not a log
//! scattered over syslog. JSON lines under `/var/lib` (they survive a reboot),
//! bounded, shown by `ns-ha-role status`.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::PathBuf;

use ns_ha_common::fsutil::{atomic_write, NodeLock};
use ns_ha_common::NodeRoot;

/// Where the history lives, under the node root.
pub const HISTORY: &str = "/var/lib/ns-ha/role/history.jsonl";

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// It changed something (started, stopped, ran a command).
    Changed,
    /// Already in the desired state.
    Unchanged,
    /// Not applicable on this node (not installed, not configured, not running).
    Skipped,
    /// It failed; it stays pending and is retried on the next pass.
    Failed,
    /// It did not finish within its timeout; retried like a failure.
    TimedOut,
}

impl Outcome {
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Failed | Outcome::TimedOut)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Changed => "changed",
            Outcome::Unchanged => "unchanged",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed-out",
        }
    }
}

/// One action of a pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRecord {
    pub action: String,
    pub outcome: Outcome,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// What a recorded pass was.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PassKind {
    /// The applied state changed (`from` -> `to`). Entries written before
    /// the kind existed read as this.
    #[default]
    Transition,
    /// keepalived left the state and came back to it between two passes
    /// (`from` == `to`): its one-shot actions ran again.
    Returned,
    /// No transition: a retry of failed actions, or work a sync asked for,
    /// that changed something or failed in a new way.
    Retry,
    /// The administrator turned maintenance on or off (`reason`); the
    /// transitions it causes follow as keepalived reports them.
    Maintenance,
}

/// One reconcile pass worth remembering (a transition, a change or a new failure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// When the pass started (Unix ms).
    pub unix_ms: u64,
    /// When the first event this pass handled was recorded (Unix ms), if an
    /// event caused it. keepalived adds the VIPs before it notifies, so for a
    /// takeover `done_unix_ms - event_unix_ms` is VIP takeover to actions done.
    #[serde(default)]
    pub event_unix_ms: Option<u64>,
    /// When the last action finished (Unix ms).
    pub done_unix_ms: u64,
    pub from: String,
    pub to: String,
    /// What the pass was (how `from` -> `to` reads).
    #[serde(default)]
    pub kind: PassKind,
    pub reason: String,
    pub actions: Vec<ActionRecord>,
}

impl Transition {
    pub fn failures(&self) -> impl Iterator<Item = &ActionRecord> {
        self.actions.iter().filter(|a| a.outcome.is_failure())
    }
}

/// Append `t` to the node's history, keeping the last `limit` entries.
pub fn append(root: &NodeRoot, t: &Transition, limit: usize) -> Result<()> {
    let path = root.path(HISTORY);
    let _lock = NodeLock::acquire(
        &path.with_extension("lock"),
        std::time::Duration::from_secs(10),
    )?;
    let mut line = serde_json::to_string(t)?;
    line.push('\n');
    let existing = read_lines(&path)?;
    if existing.len() < limit.saturating_mul(2) {
        // Cheap path: append; trim only once the file is twice the limit.
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.write_all(line.as_bytes())
            .with_context(|| format!("appending to {}", path.display()))?;
        return Ok(());
    }
    let keep = limit.saturating_sub(1);
    let mut text: String = existing[existing.len() - keep.min(existing.len())..]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&line);
    atomic_write(&path, text.as_bytes(), 0o644)
}

fn read_lines(path: &PathBuf) -> Result<Vec<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The last `n` entries, oldest first (`limit` caps what is kept on disk).
/// Lines that do not parse (a torn write) are skipped.
pub fn read(root: &NodeRoot, n: usize, limit: usize) -> Result<Vec<Transition>> {
    let lines = read_lines(&root.path(HISTORY))?;
    let n = n.min(limit);
    let start = lines.len().saturating_sub(n);
    Ok(lines[start..]
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

pub use ns_ha_common::clock::fmt_utc;

#[cfg(test)]
mod tests {
    use super::*;

    fn t(i: u64) -> Transition {
        Transition {
            unix_ms: i,
            event_unix_ms: None,
            done_unix_ms: i,
            from: "BACKUP".into(),
            to: "MASTER".into(),
            kind: PassKind::Transition,
            reason: format!("test {i}"),
            actions: vec![],
        }
    }

    #[test]
    fn bounded_and_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        for i in 0..25 {
            append(&root, &t(i), 5).unwrap();
        }
        let h = read(&root, 100, 5).unwrap();
        assert_eq!(h.len(), 5);
        assert_eq!(h.last().unwrap().unix_ms, 24);
        assert_eq!(h.first().unwrap().unix_ms, 20);
        let lines = std::fs::read_to_string(root.path(HISTORY))
            .unwrap()
            .lines()
            .count();
        assert!(lines <= 10, "{lines}");
    }

    #[test]
    fn formats_utc() {
        assert_eq!(fmt_utc(0), "1970-01-01 00:00:00.000Z");
        assert_eq!(fmt_utc(1_709_210_096_789), "2024-02-29 12:34:56.789Z");
    }
}
