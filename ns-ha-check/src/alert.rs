//! Alerts: the configured hook, run once per event with the event on stdin.
//!
//! The monitor decides what is an event (a condition that changed, never a
//! condition that persists: see [`crate::verdict`]); this module only
//! delivers it. The hook runs on a thread of its own, one event at a time,
//! with a timeout and in a process group of its own that is killed on
//! timeout, so a hanging mail script neither blocks a failover decision nor
//! leaves processes behind. The hook is an argument vector (the configured
//! path, no arguments), never a shell. The document on stdin:
//! `{"event", "unix_ms", "subject", "detail", "node_role", "cluster_id"}`.

use serde_json::json;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ns_ha_common::config::Role;
use ns_ha_common::health_config::HealthSettings;
use ns_ha_common::NodeRoot;

use crate::verdict::Event;

/// How long one hook run may take.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// The JSON document the hook reads on stdin.
pub fn document(e: &Event, role: Role, cluster_id: &str) -> serde_json::Value {
    json!({
        "event": e.event,
        "unix_ms": e.unix_ms,
        "subject": e.subject,
        "detail": e.detail,
        "node_role": role.as_str(),
        "cluster_id": cluster_id,
    })
}

/// Hands events to the hook thread.
pub struct AlertSender {
    tx: Sender<(String, serde_json::Value)>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    role: Role,
    root: NodeRoot,
}

impl AlertSender {
    pub fn start(root: NodeRoot, role: Role) -> AlertSender {
        let (tx, rx) = mpsc::channel::<(String, serde_json::Value)>();
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (s, f) = (sent.clone(), failed.clone());
        std::thread::spawn(move || {
            for (hook, doc) in rx {
                match run_hook(&hook, &doc, HOOK_TIMEOUT) {
                    Ok(()) => s.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        log::warn!("alert hook {hook}: {e}");
                        f.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        });
        AlertSender {
            tx,
            sent,
            failed,
            role,
            root,
        }
    }

    /// Queue one event for the hook (nothing if no hook is configured).
    pub fn send(&self, h: &HealthSettings, e: Event) {
        let Some(hook) = &h.alert_hook else {
            return;
        };
        let cluster_id = ns_ha_common::config::load_cluster(&self.root)
            .map(|c| c.cluster_id)
            .unwrap_or_default();
        // A node path, like every path of the cluster config.
        let hook = self.root.path(hook).to_string_lossy().into_owned();
        let _ = self.tx.send((hook, document(&e, self.role, &cluster_id)));
    }

    /// Hook runs that succeeded and failed so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

/// Run `hook` with `doc` on stdin; an error says why it failed.
pub fn run_hook(hook: &str, doc: &serde_json::Value, timeout: Duration) -> Result<(), String> {
    let mut child = Command::new(hook)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let mut text = doc.to_string();
        text.push('\n');
        // A hook that does not read its stdin is not an error.
        let _ = stdin.write_all(text.as_bytes());
    }
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(format!("exited with {st}")),
            Ok(None) if start.elapsed() >= timeout => {
                let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                return Err(format!("timed out after {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for it: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hook_reads_the_event_on_stdin() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("got.json");
        let hook = d.path().join("hook.sh");
        std::fs::write(
            &hook,
            format!("#!/bin/sh\ncat >{}\n", out.to_str().unwrap()),
        )
        .unwrap();
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let e = Event {
            event: "failover".into(),
            unix_ms: 5,
            subject: "MASTER".into(),
            detail: "took over".into(),
        };
        let doc = document(&e, Role::Backup, "c1");
        run_hook(hook.to_str().unwrap(), &doc, Duration::from_secs(5)).unwrap();
        let got: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(got["event"], "failover");
        assert_eq!(got["node_role"], "backup");
        std::fs::write(&hook, "#!/bin/sh\nexit 3\n").unwrap();
        assert!(
            run_hook(hook.to_str().unwrap(), &doc, Duration::from_secs(5))
                .unwrap_err()
                .contains("exit status: 3")
        );
        std::fs::write(&hook, "#!/bin/sh\nsleep 30\n").unwrap();
        let t = Instant::now();
        assert!(
            run_hook(hook.to_str().unwrap(), &doc, Duration::from_millis(200))
                .unwrap_err()
                .contains("timed out")
        );
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
