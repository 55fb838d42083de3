//! The reader of keepalived's notify FIFO.
//!
//! keepalived writes ordered lines (`GROUP "ns_ha" MASTER 200`) to the FIFO
//! without blocking: a slow reader loses lines. So this reader only records
//! each event and wakes a worker thread that runs the reconciler; it never
//! runs an action inline. keepalived starts it (`notify_fifo_script`) with the
//! FIFO path as the last argument and holds the FIFO open, so end of file
//! means keepalived is gone and the reader exits. While keepalived is quiet
//! the worker retries failed actions every 30 s, so a service that failed to
//! start on takeover does not wait for the next event or a cron `apply`.

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use ns_ha_common::exit::{code_of, Code};

use crate::events::{EventStore, NewEvent, Source};
use crate::reconcile::{load_applied, reader_lock_path, reconcile, Ctx};

/// How often the reader retries failed actions while keepalived is quiet.
pub const RETRY_EVERY: Duration = Duration::from_secs(30);

/// Retry the actions that failed in the last pass, if any (a busy
/// reconciler will retry them itself).
fn retry_pending(ctx: &Ctx) {
    match load_applied(&ctx.root) {
        Ok(a) if !a.pending.is_empty() => {
            if let Err(e) = reconcile(ctx, "retry", Some(Duration::ZERO)) {
                if code_of(&e) != Code::Conflict {
                    log::error!("retry failed: {e:#}");
                }
            }
        }
        Ok(_) => {}
        Err(e) => log::error!("{e:#}"),
    }
}

/// Read `fifo` until end of file, recording every event and reconciling on a
/// worker thread. Returns how many events were recorded.
pub fn run(ctx: &Ctx, fifo: &Path) -> Result<u64> {
    let lock_path = reader_lock_path(&ctx.root);
    if let Some(dir) = lock_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .read(true)
        .mode(0o600)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    // Shared: the lock says "a reader is alive" (its events are ordered),
    // it does not exclude another reader.
    let _alive = Flock::lock(lock_file, FlockArg::LockShared)
        .map_err(|(_, e)| anyhow::anyhow!(e))
        .with_context(|| format!("locking {}", lock_path.display()))?;
    let file =
        File::open(fifo).with_context(|| format!("opening notify FIFO {}", fifo.display()))?;
    log::info!("reading keepalived events from {}", fifo.display());
    let store = EventStore::new(&ctx.root);
    let (wake, woken) = mpsc::channel::<()>();
    std::thread::scope(|s| -> Result<u64> {
        let worker = s.spawn(move || loop {
            match woken.recv_timeout(RETRY_EVERY) {
                Ok(()) => {
                    // Coalesce a burst: one pass handles every event recorded so far.
                    while woken.try_recv().is_ok() {}
                    if let Err(e) = reconcile(ctx, "fifo", None) {
                        log::error!("reconcile failed: {e:#}");
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => retry_pending(ctx),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        });
        let mut count = 0;
        for line in BufReader::new(file).lines() {
            let line = line.with_context(|| format!("reading {}", fifo.display()))?;
            let Some(ev) = NewEvent::from_fifo_line(&line) else {
                log::debug!("ignoring FIFO line {line:?}");
                continue;
            };
            match store.record(ev, Source::Fifo) {
                Ok(e) => {
                    log::info!("event {}", e.describe());
                    count += 1;
                    let _ = wake.send(());
                }
                Err(e) => log::error!("cannot record {line:?}: {e:#}"),
            }
        }
        drop(wake);
        let _ = worker.join();
        log::info!("notify FIFO closed: keepalived is gone");
        Ok(count)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::reader_alive;
    use crate::testkit::FakeNode;
    use ns_ha_common::config::Role;
    use std::io::Write;

    #[test]
    fn records_ordered_lines_and_converges_on_the_last() {
        let node = FakeNode::new(Role::Backup, &["dnsmasq", "conntrackd"]);
        node.runner.with(|s| s.holds_vips = true);
        let fifo = node.root.path("/run/ns-ha/keepalived.fifo");
        std::fs::create_dir_all(fifo.parent().unwrap()).unwrap();
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let ctx = node.ctx();
        let count = std::thread::scope(|s| {
            let reader = s.spawn(|| run(&ctx, &fifo).unwrap());
            let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            writeln!(w, "INSTANCE \"lan_lan0\" BACKUP 100").unwrap();
            writeln!(w, "GROUP \"ns_ha\" BACKUP 100").unwrap();
            writeln!(w, "VS [10.99.1.1]:tcp:80 UP").unwrap();
            writeln!(w, "GROUP \"ns_ha\" MASTER 100").unwrap();
            w.flush().unwrap();
            // While it reads, a reader is alive: its events win.
            assert!(crate::testkit::eventually(|| reader_alive(&node.root)));
            drop(w);
            reader.join().unwrap()
        });
        assert_eq!(count, 3);
        assert!(!reader_alive(&node.root));
        let log = EventStore::new(&node.root).load().unwrap();
        assert_eq!(
            log.current(true).unwrap().state,
            crate::events::KaState::Master
        );
        let applied = crate::reconcile::load_applied(&node.root).unwrap();
        assert_eq!(applied.label, "MASTER");
        assert_eq!(applied.handled_seq, log.seq);
        assert!(node.runner.running("dnsmasq"));
    }
}
