//! Test-only crash points. The crash-safety tests kill the sender and the
//! receiver at named steps and check that recovery leaves the backup wholly at
//! one generation. A crash point does nothing unless armed:
//!
//! - the sender reads `NS_HA_SYNC_CRASH_AT=<step>[:<n>]` from its environment;
//! - the receiver runs as sshd's forced command, which gets no client
//!   environment, so it reads the same text from `<state_dir>/crash-at`.
//!
//! At the n-th time (default 1) the step is reached, the process kills itself
//! with SIGKILL (the file is removed first so the next run is normal).
//! Production never creates either, so the points are inert there.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Environment variable arming the sender's crash point.
pub const CRASH_ENV: &str = "NS_HA_SYNC_CRASH_AT";
/// File (in the state dir) arming the receiver's crash point.
pub const CRASH_FILE: &str = "crash-at";

struct Armed {
    step: String,
    nth: u64,
    file: Option<PathBuf>,
}

static ARMED: Mutex<Option<Armed>> = Mutex::new(None);
static HITS: AtomicU64 = AtomicU64::new(0);

fn parse(text: &str) -> Option<(String, u64)> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    match text.split_once(':') {
        Some((s, n)) => Some((s.to_string(), n.parse().ok()?)),
        None => Some((text.to_string(), 1)),
    }
}

fn arm(step: String, nth: u64, file: Option<PathBuf>) {
    log::warn!("test crash point armed: {step}:{nth}");
    HITS.store(0, Ordering::SeqCst);
    *ARMED.lock().unwrap_or_else(|p| p.into_inner()) = Some(Armed { step, nth, file });
}

/// Arm from the environment (sender).
pub fn arm_from_env() {
    if let Some((s, n)) = std::env::var(CRASH_ENV).ok().as_deref().and_then(parse) {
        arm(s, n, None);
    }
}

/// Arm from `<state_dir>/crash-at` (receiver).
pub fn arm_from_file(state_dir: &Path) {
    let file = state_dir.join(CRASH_FILE);
    if let Some((s, n)) = std::fs::read_to_string(&file)
        .ok()
        .as_deref()
        .and_then(parse)
    {
        arm(s, n, Some(file));
    }
}

/// Whether a crash point is armed for `step` (to split work around it).
pub fn armed(step: &str) -> bool {
    ARMED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .is_some_and(|a| a.step == step)
}

/// A crash point: dies here if armed for `step` and this is the n-th hit.
pub fn point(step: &str) {
    let guard = ARMED.lock().unwrap_or_else(|p| p.into_inner());
    let Some(a) = guard.as_ref() else { return };
    if a.step != step || HITS.fetch_add(1, Ordering::SeqCst) + 1 != a.nth {
        return;
    }
    if let Some(f) = &a.file {
        let _ = std::fs::remove_file(f);
    }
    log::warn!("test crash point {step}:{} reached: SIGKILL", a.nth);
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    std::process::abort();
}
