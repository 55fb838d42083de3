//! `ns-ha-sync watch`: push within a moment of a change.
//!
//! inotify watches every directory of the sync set (and the parents of rule
//! roots that do not exist yet, so their creation is seen). Events are
//! filtered through the rules, coalesced for a short quiet period, and turned
//! into an ordinary push over one SSH session kept open between pushes. The
//! backup is also re-checked periodically, and failed pushes are retried with
//! a growing delay. One-shot pushes handed over by `push` (`crate::handoff`)
//! run over the same session.

use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use ns_ha_common::config::ClusterConfig;
use ns_ha_common::NodeRoot;

use ns_ha_common::cli::Report;

use crate::handoff::PushServer;
use crate::manifest::LiveScan;
use crate::rules::SyncSet;
use crate::sender::{push_with, Link, PushOptions, PushReport};

/// How a push's outcome becomes the report `push` prints.
pub type ToReport = dyn Fn(Result<PushReport>) -> Result<Report>;

/// Options of `watch`.
pub struct WatchOptions<'a> {
    /// Where one-shot pushes are handed over (`crate::handoff`), and how a
    /// push's outcome becomes the report `push` prints.
    pub handoff: Option<(&'a PushServer, &'a ToReport)>,
    /// Quiet time after the last event before pushing.
    pub debounce: Duration,
    /// Whether this node may push now (it is master); checked before each push.
    pub may_push: &'a dyn Fn() -> Result<bool>,
    /// Called after each push attempt (tests and logs).
    pub on_push: &'a mut dyn FnMut(&Result<crate::sender::PushReport>),
    /// Stop after this many push attempts (tests); `None` runs forever.
    pub max_pushes: Option<u64>,
}

/// inotify watches on every directory of the sync set (also kept by a
/// backup's receiver serving several pushes on one channel).
pub(crate) struct Watches {
    inotify: Inotify,
    dirs: HashMap<WatchDescriptor, String>,
}

const MASK: AddWatchFlags = AddWatchFlags::from_bits_truncate(
    AddWatchFlags::IN_CLOSE_WRITE.bits()
        | AddWatchFlags::IN_MODIFY.bits()
        | AddWatchFlags::IN_ATTRIB.bits()
        | AddWatchFlags::IN_CREATE.bits()
        | AddWatchFlags::IN_DELETE.bits()
        | AddWatchFlags::IN_MOVED_FROM.bits()
        | AddWatchFlags::IN_MOVED_TO.bits()
        | AddWatchFlags::IN_DELETE_SELF.bits()
        | AddWatchFlags::IN_MOVE_SELF.bits()
        | AddWatchFlags::IN_DONT_FOLLOW.bits()
        | AddWatchFlags::IN_ONLYDIR.bits(),
);

impl Watches {
    pub(crate) fn new() -> Result<Watches> {
        Ok(Watches {
            inotify: Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
                .context("starting inotify")?,
            dirs: HashMap::new(),
        })
    }

    fn add(&mut self, root: &NodeRoot, node_path: &str) {
        match self.inotify.add_watch(&root.path(node_path), MASK) {
            Ok(wd) => {
                self.dirs.insert(wd, node_path.to_string());
            }
            Err(e) => log::debug!("cannot watch {node_path}: {e}"),
        }
    }

    /// Watch every directory of the set, and the nearest existing parent of each rule root.
    pub(crate) fn refresh(&mut self, root: &NodeRoot, set: &SyncSet) {
        for start in set.walk_roots() {
            let mut anc = Path::new(&start).parent();
            while let Some(a) = anc {
                if root.path(a).is_dir() {
                    self.add(root, &a.to_string_lossy());
                    break;
                }
                anc = a.parent();
            }
            let top = root.path(&start);
            if !top.is_dir() || top.is_symlink() {
                continue;
            }
            let mut it = walkdir::WalkDir::new(&top).follow_links(false).into_iter();
            while let Some(Ok(e)) = it.next() {
                if !e.file_type().is_dir() {
                    continue;
                }
                let Some(rel) = e
                    .path()
                    .strip_prefix(root.base())
                    .ok()
                    .and_then(|r| r.to_str())
                else {
                    continue;
                };
                let p = format!("/{}", rel.trim_start_matches('/'));
                if set.is_synced(&p) || set.has_include_below(&p) {
                    self.add(root, &p);
                } else {
                    it.skip_current_dir();
                }
            }
        }
    }

    /// Read pending events: (relevant to the set, a directory appeared or
    /// the queue overflowed). Each relevant path is marked in `live`; an
    /// overflow (events lost) makes it scan the whole set.
    pub(crate) fn drain(&mut self, set: &SyncSet, live: &mut LiveScan) -> (bool, bool) {
        let (mut relevant, mut rescan) = (false, false);
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    relevant = true;
                    rescan = true;
                    live.invalidate();
                    continue;
                }
                let Some(dir) = self.dirs.get(&ev.wd) else {
                    continue;
                };
                let path = match &ev.name {
                    Some(n) => format!("{}/{}", dir.trim_end_matches('/'), n.to_string_lossy()),
                    None => dir.clone(),
                };
                let hit = set.is_synced(&path)
                    || set.in_area(&path)
                    || set
                        .walk_roots()
                        .iter()
                        .any(|r| r.starts_with(&format!("{path}/")) || *r == path);
                if hit {
                    relevant = true;
                    live.touched(&path);
                    if ev.mask.contains(AddWatchFlags::IN_ISDIR) || ev.name.is_none() {
                        rescan = true;
                    }
                }
                if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    self.dirs.remove(&ev.wd);
                }
            }
        }
        (relevant, rescan)
    }

    /// Wait at most `timeout` for inotify events (`true`), or for a push
    /// handed over on `handoff` (then `false`, and the caller serves it).
    fn wait(&self, timeout: Duration, handoff: Option<&PushServer>) -> Result<bool> {
        let mut fds = vec![PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
        if let Some(h) = handoff {
            fds.push(PollFd::new(h.fd(), PollFlags::POLLIN));
        }
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(_) => Ok(fds[0].revents().is_some_and(|r| !r.is_empty())),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(e).context("waiting for inotify events"),
        }
    }
}

/// Watch the sync set and push on change until stopped.
pub fn watch(
    root: &NodeRoot,
    cluster: &ClusterConfig,
    link: &mut dyn Link,
    opts: WatchOptions,
) -> Result<()> {
    let set = SyncSet::load(root, &cluster.sync)?;
    let mut w = Watches::new()?;
    w.refresh(root, &set);
    log::info!("watching {} directories", w.dirs.len());
    let recheck = Duration::from_secs(cluster.sync.peer_recheck_secs.max(10));
    let mut due = Some(Instant::now());
    let mut recheck_at = Instant::now() + recheck;
    let mut failures = 0u32;
    let mut pushes = 0u64;
    // The set as inotify says it is: a push looks again only at what changed.
    let mut live = LiveScan::default();
    loop {
        if opts.max_pushes.is_some_and(|m| pushes >= m) {
            return Ok(());
        }
        if let Some((server, to_report)) = opts.handoff {
            // One-shot pushes handed over: each is a push over this session,
            // after the events queued so far (a write just before the
            // `push`) are marked.
            let (relevant, rescan) = w.drain(&set, &mut live);
            if rescan {
                w.refresh(root, &set);
            }
            if relevant {
                due = Some(Instant::now());
            }
            server.serve_pending(&mut |req| {
                let r = push_with(root, cluster, link, req.options(), Some(&mut live));
                (opts.on_push)(&r);
                to_report(r)
            });
        }
        let now = Instant::now();
        let next = due.unwrap_or(recheck_at).min(recheck_at);
        if next > now && w.wait(next - now, opts.handoff.map(|h| h.0))? {
            let (relevant, rescan) = w.drain(&set, &mut live);
            if relevant {
                log::debug!(
                    "a change in the set: pushing after {:?} of quiet",
                    opts.debounce
                );
                // Coalesce a burst (an editor's temp file + rename, a tree copy).
                let burst_end = Instant::now() + Duration::from_millis(500);
                while Instant::now() < burst_end && w.wait(opts.debounce, None)? {
                    let (_, r) = w.drain(&set, &mut live);
                    if r {
                        w.refresh(root, &set);
                    }
                }
                if rescan {
                    w.refresh(root, &set);
                }
                due = Some(Instant::now());
            }
            continue;
        }
        let now = Instant::now();
        let recheck_now = now >= recheck_at;
        if !(due.is_some_and(|d| now >= d) || recheck_now) {
            continue;
        }
        if recheck_now {
            recheck_at = now + recheck;
            // Now and then the whole set, whatever inotify said.
            live.invalidate();
        }
        if !(opts.may_push)().unwrap_or(false) {
            log::info!("not master: changes are not pushed now");
            due = None;
            continue;
        }
        pushes += 1;
        let result = push_with(
            root,
            cluster,
            link,
            PushOptions {
                recheck: recheck_now,
                ..Default::default()
            },
            Some(&mut live),
        );
        (opts.on_push)(&result);
        match &result {
            Ok(rep) => {
                failures = 0;
                due = None;
                if !rep.noop {
                    log::info!(
                        "pushed generation {} ({} file(s))",
                        rep.generation,
                        rep.files
                    );
                }
            }
            Err(e) => {
                failures += 1;
                let delay = Duration::from_secs((1u64 << failures.min(5)).min(30));
                log::warn!("push failed ({e:#}): retrying in {delay:?}");
                due = Some(Instant::now() + delay);
            }
        }
    }
}
