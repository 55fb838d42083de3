//! The reader of keepalived's notify FIFO.
//!
//! keepalived writes ordered lines (`GROUP "ns_ha" MASTER 200`) to the FIFO
//! without blocking: a slow reader loses lines. So this reader only records
//! each event and wakes a worker thread that runs the reconciler; it never
//! runs an action inline. keepalived starts it (`notify_fifo_script`) with the
//! FIFO path as the last argument and holds the FIFO open, so end of file
//! means keepalived is gone and the reader exits.

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc;

use crate::events::{EventStore, NewEvent, Source};
use crate::reconcile::{reader_lock_path, reconcile, Ctx};

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
        let worker = s.spawn(move || {
            while woken.recv().is_ok() {
                // Coalesce a burst: one pass handles every event recorded so far.
                while woken.try_recv().is_ok() {}
                if let Err(e) = reconcile(ctx, "fifo", None) {
                    log::error!("reconcile failed: {e:#}");
                }
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
