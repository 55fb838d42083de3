//! The primary's side: `push`, `diff`, and the peer half of `verify` and
//! `status`.
//!
//! A push scans the local sync set (hash cache: unchanged files cost one
//! `lstat`), and returns at once when nothing changed since the last clean
//! push, so cron and the role engine can call it freely. Otherwise it asks
//! the backup for its manifest (or only its digest, when the backup still
//! holds exactly what was pushed last), sends what differs in one
//! transaction, and lets the backup apply it whole.

use anyhow::{Context, Result};
use serde::Serialize;
use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use ns_ha_common::config::{ClusterConfig, NodeConfig};
use ns_ha_common::exit::{code_of, fail, Code};
use ns_ha_common::net::InterfaceSource;
use ns_ha_common::proto::{call, call_packed, pack, read_msg, write_msg, Reply, CHUNK_BYTES};
use ns_ha_common::ssh::PeerSession;
use ns_ha_common::{peer, NodeRoot};

use crate::crash;
use crate::delta;
use crate::manifest::{
    describe, diff, digest, scan, Change, Drift, HashCache, Kind, LiveScan, Manifest,
};
use crate::rules::SyncSet;
use crate::state::{Pushed, Run, StateDir, Status, APPLIED, PUSHED};
use crate::util::{copy_file_data, now_secs, send_file_data, Counted, HashingWriter, Spans};
use crate::wire::{
    BeginReply, BeginRequest, CommitReply, DeltaReply, ManifestPart, ManifestReply, SignatureReply,
    SyncRequest, BATCH_BYTES, BATCH_FILE, MAX_ENTRIES,
};

/// A byte stream to the backup's receiver.
pub trait Channel: Read + Write {}
impl<T: Read + Write> Channel for T {}

/// How the sender reaches the backup's receiver: SSH in production, an
/// in-process receiver in unit tests.
pub trait Link {
    /// A channel to a fresh receiver, already greeted with `hello`.
    fn open(&mut self) -> Result<Box<dyn Channel>>;
    /// Start reaching the receiver in the background, for the next `open`
    /// (a one-shot push scans its files meanwhile); nothing by default.
    fn prefetch(&mut self) {}
    /// Forget a connection that failed; the next `open` reconnects.
    fn reset(&mut self) {}
    /// Take back the channel of a push that succeeded, for the next `open`
    /// (its receiver then keeps its scan too); dropped by default.
    fn keep(&mut self, _channel: Box<dyn Channel>) {}
}

/// How long a channel kept between pushes may stay idle: well within the
/// receiver's own idle timeout ([`crate::wire::IDLE_TIMEOUT`], 30 s), after
/// which it has gone.
const KEEP_IDLE: Duration = Duration::from_secs(20);

/// What a background connect reached: the session and a greeted channel.
type Reached = Result<(PeerSession, ns_ha_common::ssh::PeerChannel)>;

/// The SSH link to the paired backup; one session serves every push.
pub struct SshLink {
    root: NodeRoot,
    node: NodeConfig,
    cluster: ClusterConfig,
    session: Option<PeerSession>,
    /// The channel of the last push and when it was given back.
    kept: Option<(Box<dyn Channel>, Instant)>,
    /// A connect started by `prefetch`, taken by the next `open`.
    reaching: Option<std::thread::JoinHandle<Reached>>,
}

impl SshLink {
    pub fn new(root: &NodeRoot, node: &NodeConfig, cluster: &ClusterConfig) -> SshLink {
        SshLink {
            root: root.clone(),
            node: node.clone(),
            cluster: cluster.clone(),
            session: None,
            kept: None,
            reaching: None,
        }
    }
}

impl Link for SshLink {
    fn open(&mut self) -> Result<Box<dyn Channel>> {
        if let Some((ch, at)) = self.kept.take() {
            if at.elapsed() < KEEP_IDLE {
                return Ok(ch);
            }
        }
        if let Some(reaching) = self.reaching.take() {
            let (session, ch) = reaching.join().unwrap_or_else(|_| {
                Err(fail(
                    Code::Failure,
                    "the thread connecting to the backup panicked",
                ))
            })?;
            self.session = Some(session);
            return Ok(Box::new(ch));
        }
        if self.session.is_none() {
            self.session = Some(peer::connect(&self.root, &self.node, &self.cluster)?);
        }
        let sess = self
            .session
            .as_ref()
            .ok_or_else(|| fail(Code::Peer, "no session"))?;
        match peer::open_channel(sess, &self.cluster.cluster_id) {
            Ok((ch, _hello)) => Ok(Box::new(ch)),
            Err(e) => {
                // A session the peer dropped (restart, timeout) is useless: reconnect next time.
                if code_of(&e) == Code::Failure || code_of(&e) == Code::Peer {
                    self.session = None;
                }
                Err(e)
            }
        }
    }

    /// The TCP connect, SSH handshake, authentication and the receiver's
    /// start on the backup (a shell, then `ns-ha-sync receive`) cost about
    /// as much as scanning 10,000 files: a one-shot push does both at once.
    /// A push that then finds nothing changed exits without waiting; the
    /// backup sees the connection close (a receiver that started reads the
    /// end of its input and stops without doing anything).
    fn prefetch(&mut self) {
        if self.session.is_some() || self.kept.is_some() || self.reaching.is_some() {
            return;
        }
        let (root, node, cluster) = (self.root.clone(), self.node.clone(), self.cluster.clone());
        let reach = move || -> Reached {
            let session = peer::connect(&root, &node, &cluster)?;
            let (ch, _hello) = peer::open_channel(&session, &cluster.cluster_id)?;
            Ok((session, ch))
        };
        // A thread that cannot start leaves the connect to `open`.
        self.reaching = std::thread::Builder::new()
            .name("reach-backup".into())
            .spawn(reach)
            .map_err(|e| log::debug!("connecting in the foreground: {e}"))
            .ok();
    }

    fn reset(&mut self) {
        self.kept = None;
        self.session = None;
        self.reaching = None;
    }

    fn keep(&mut self, channel: Box<dyn Channel>) {
        self.kept = Some((channel, Instant::now()));
    }
}

/// Whether this node holds the cluster's VIPs (the heartbeat VIP or a LAN VIP): it is master.
pub fn holds_vips(cluster: &ClusterConfig, ifs: &dyn InterfaceSource) -> Result<bool> {
    Ok(ns_ha_common::vips::held_count(&ns_ha_common::vips::observe(cluster, ifs)?) > 0)
}

/// Options of a push.
#[derive(Debug, Clone, Copy, Default)]
pub struct PushOptions {
    /// Overwrite files edited on the backup.
    pub force: bool,
    /// Show what would change, change nothing.
    pub dry_run: bool,
    /// Ask the backup even when nothing changed locally.
    pub recheck: bool,
    /// Let the backup apply while it holds the cluster's VIPs itself.
    pub even_if_backup_is_master: bool,
}

/// One line of a push or diff report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Line {
    pub path: String,
    /// `new`, `change`, `meta`, `delete` or `kept`.
    pub action: &'static str,
    pub detail: String,
}

/// What a push did (or would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PushReport {
    /// Nothing changed: the backup was not contacted.
    pub noop: bool,
    pub dry_run: bool,
    pub generation: u64,
    pub lines: Vec<Line>,
    /// Paths edited on the backup since the last sync.
    pub drift: Vec<Drift>,
    /// Paths kept on the backup because they were edited there.
    pub kept: Vec<String>,
    /// Local paths inside the set that cannot be synced, and why.
    pub refused: Vec<(String, String)>,
    pub files: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub duration_ms: u64,
}

impl PushReport {
    /// Human text; empty for a no-op.
    pub fn render(&self) -> String {
        if self.noop {
            return String::new();
        }
        let mut out = String::new();
        let changed = self
            .lines
            .iter()
            .filter(|l| l.action != "delete" && l.action != "kept")
            .count();
        let deleted = self.lines.iter().filter(|l| l.action == "delete").count();
        if self.dry_run {
            out.push_str(&format!(
                "would sync generation {}: {changed} to change, {deleted} to delete, {} kept (edited on the backup)\n",
                self.generation,
                self.kept.len()
            ));
        } else if self.lines.is_empty() {
            out.push_str(&format!(
                "backup is up to date at generation {}\n",
                self.generation
            ));
        } else {
            out.push_str(&format!(
                "generation {}: {changed} changed, {deleted} deleted, {} kept; {} file(s), {} bytes sent in {:.2} s\n",
                self.generation,
                self.kept.len(),
                self.files,
                self.bytes_sent,
                self.duration_ms as f64 / 1000.0
            ));
        }
        for l in &self.lines {
            let mark = match l.action {
                "new" => "+",
                "change" => "~",
                "meta" => "m",
                "delete" => "-",
                _ => "!",
            };
            if l.detail.is_empty() {
                out.push_str(&format!("  {mark} {}\n", l.path));
            } else {
                out.push_str(&format!("  {mark} {}  ({})\n", l.path, l.detail));
            }
        }
        for (p, why) in &self.refused {
            out.push_str(&format!("  not synced: {p}: {why}\n"));
        }
        out
    }
}

fn lines_of(
    changes: &[Change],
    deletes: &[String],
    peer: &Manifest,
    kept: &BTreeSet<String>,
) -> Vec<Line> {
    let mut lines = Vec::new();
    for c in changes {
        let old = peer.get(&c.path);
        let action = if kept.contains(&c.path) {
            "kept"
        } else if old.is_none() {
            "new"
        } else if c.data
            || old.is_some_and(|o| o.kind != c.entry.kind || o.target != c.entry.target)
        {
            "change"
        } else {
            "meta"
        };
        let mut detail = describe(c, old);
        if action == "kept" {
            detail = format!("edited on the backup, kept: {detail}; push --force overwrites");
        }
        lines.push(Line {
            path: c.path.clone(),
            action,
            detail,
        });
    }
    for d in deletes {
        lines.push(Line {
            path: d.clone(),
            action: if kept.contains(d) { "kept" } else { "delete" },
            detail: if kept.contains(d) {
                "edited on the backup, kept: push --force deletes it".into()
            } else {
                String::new()
            },
        });
    }
    lines.sort_by(|a, b| a.path.cmp(&b.path));
    lines
}

/// The local side of a push, prepared once per attempt.
struct Local {
    manifest: Manifest,
    digest: String,
    refused: Vec<(String, String)>,
}

fn scan_local(
    root: &NodeRoot,
    set: &SyncSet,
    state: &StateDir,
    live: Option<&mut LiveScan>,
    spans: &mut Spans,
) -> Result<Local> {
    let (manifest, refused) = match live {
        Some(live) => {
            let s = live.current(root, set, &state.cache())?;
            spans.mark("scan (kept by watch: the paths inotify reported)");
            (s.manifest.clone(), s.refused.clone())
        }
        None => {
            let mut cache = HashCache::load(&state.cache());
            spans.mark("hash cache loaded");
            let s = scan(root, set, &mut cache, false)?;
            spans.mark("scan");
            if let Err(e) = cache.save(&state.cache()) {
                log::warn!("cannot save the hash cache: {e:#}");
            }
            spans.mark("hash cache saved");
            (s.manifest, s.refused)
        }
    };
    for (p, why) in &refused {
        log::info!("not synced: {p}: {why}");
    }
    let local = Local {
        digest: digest(&manifest),
        manifest,
        refused,
    };
    spans.mark("manifest digest");
    Ok(local)
}

/// A source file changed between the scan and its transfer: scan again.
struct Retry;

/// Push the sync set to the backup through `link`. The caller checked the
/// role and mastership.
pub fn push(
    root: &NodeRoot,
    cluster: &ClusterConfig,
    link: &mut dyn Link,
    opts: PushOptions,
) -> Result<PushReport> {
    push_with(root, cluster, link, opts, None)
}

/// [`push`] with the scan `watch` keeps (`live`): only the paths inotify
/// reported since the last push are looked at again. A push that has to
/// scan again (a file changed while sent) scans the whole set.
pub fn push_with(
    root: &NodeRoot,
    cluster: &ClusterConfig,
    link: &mut dyn Link,
    opts: PushOptions,
    mut live: Option<&mut LiveScan>,
) -> Result<PushReport> {
    let started = Instant::now();
    let mut spans = Spans::default();
    let set = SyncSet::for_cluster(root, Some(cluster))?;
    let state = StateDir::new(root, &cluster.sync);
    let _lock = if opts.dry_run {
        None
    } else {
        Some(state.lock(Duration::from_secs(5))?)
    };
    if !opts.dry_run {
        // A push killed before it recorded its outcome left its marker.
        if let Err(e) = state.reap_interrupted(None) {
            log::warn!("cannot record the interrupted push: {e:#}");
        }
    }
    spans.mark("rules, lock, interrupted-run check");
    if live.is_none() {
        link.prefetch();
    }
    let mut attempts = 0;
    loop {
        attempts += 1;
        if attempts > 1 {
            if let Some(l) = live.as_deref_mut() {
                l.invalidate();
            }
        }
        let local = scan_local(root, &set, &state, live.as_deref_mut(), &mut spans)?;
        let prev = state.read_pushed(live.is_some()).unwrap_or_else(|e| {
            log::warn!("{e:#}: the push asks the backup for its whole manifest");
            None
        });
        let no_push = Pushed::default();
        let pushed = prev.as_ref().unwrap_or(&no_push);
        spans.mark("pushed.json and its log read");
        let fresh = now_secs().saturating_sub(pushed.at) < cluster.sync.peer_recheck_secs;
        if !opts.dry_run
            && !opts.force
            && !opts.recheck
            && pushed.clean
            && pushed.digest == local.digest
            && fresh
        {
            log::info!("nothing changed since generation {}", pushed.generation);
            return Ok(PushReport {
                noop: true,
                generation: pushed.generation,
                duration_ms: started.elapsed().as_millis() as u64,
                ..Default::default()
            });
        }
        // What the attempt reached, for the status when it fails.
        let mut progress = PushReport {
            generation: pushed.generation.saturating_add(1),
            ..Default::default()
        };
        if !opts.dry_run {
            let marker = Run {
                at: now_secs().saturating_sub(started.elapsed().as_secs()),
                generation: progress.generation,
                ..Default::default()
            };
            if let Err(e) = state.mark_attempt(&marker) {
                log::warn!("cannot mark the push as started: {e:#}");
            }
        }
        let result = (|| -> Result<std::result::Result<PushReport, Retry>> {
            spans.mark("attempt marker");
            let ch = link.open()?;
            spans.mark(
                "SSH session and the receiver's hello (a one-shot push connects while it scans)",
            );
            let mut ch = Counted::new(ch);
            let ctx = PushCtx {
                root,
                cluster,
                set: &set,
                state: &state,
                started,
            };
            let r = transfer(
                &ctx,
                &mut ch,
                &local,
                prev.as_ref(),
                opts,
                &mut progress,
                &mut spans,
            );
            progress.bytes_sent = ch.sent;
            progress.bytes_received = ch.received;
            let r = r.map(|x| {
                x.map(|mut rep| {
                    rep.bytes_sent = ch.sent;
                    rep.bytes_received = ch.received;
                    rep
                })
            });
            // A channel whose push went through (nothing left unread) serves the next.
            if matches!(r, Ok(Ok(_))) && !opts.dry_run {
                link.keep(ch.inner);
            }
            r
        })();
        progress.duration_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(Ok(mut rep)) => {
                if !opts.dry_run {
                    // The scan becomes the record of what the backup now
                    // holds (moved, not copied); nothing kept: clean.
                    let clean = rep.kept.is_empty();
                    let saved = save_pushed(&state, prev.as_ref(), rep.generation, local, clean);
                    if let Err(e) = saved {
                        record(&state, &progress, Some(&e));
                        return Err(e);
                    }
                    spans.mark("pushed.json saved");
                }
                rep.duration_ms = started.elapsed().as_millis() as u64;
                if !opts.dry_run {
                    record(&state, &rep, None);
                    spans.mark("status recorded");
                }
                return Ok(rep);
            }
            Ok(Err(Retry)) if attempts < 3 => {
                log::info!("a file changed while it was sent: scanning again");
                continue;
            }
            Ok(Err(Retry)) => {
                let e = fail(
                    Code::Conflict,
                    "files keep changing while they are sent: retry later",
                );
                record(&state, &progress, Some(&e));
                return Err(e);
            }
            Err(e) => {
                link.reset();
                if !opts.dry_run {
                    record(&state, &progress, Some(&e));
                }
                return Err(e);
            }
        }
    }
}

fn record(state: &StateDir, rep: &PushReport, err: Option<&anyhow::Error>) {
    let run = Run {
        at: now_secs().saturating_sub(rep.duration_ms / 1000),
        duration_ms: rep.duration_ms,
        ok: err.is_none(),
        code: err.map(|e| code_of(e).as_u8()).unwrap_or(0),
        error: err.map(|e| format!("{e:#}")),
        generation: rep.generation,
        files: rep.files,
        bytes: rep.bytes_sent,
        changed: rep
            .lines
            .iter()
            .filter(|l| !matches!(l.action, "delete" | "kept"))
            .count() as u64,
        deleted: rep.lines.iter().filter(|l| l.action == "delete").count() as u64,
        kept: rep.kept.clone(),
        interrupted: false,
    };
    if let Err(e) = state.record(&run) {
        log::warn!("cannot record the sync status: {e:#}");
    }
}

/// Ask the backup for its manifest (entries only when they differ from
/// `known`, whose manifest then serves as the backup's, borrowed: a copy
/// of a 10,000-entry manifest costs a push milliseconds).
pub fn peer_manifest<'k, C: Read + Write>(
    ch: &mut C,
    known: Option<&'k Pushed>,
) -> Result<(ManifestReply, Cow<'k, Manifest>)> {
    let mut m: ManifestReply = call(
        ch,
        &SyncRequest::Manifest {
            known_digest: known.map(|p| p.digest.clone()),
        },
    )
    .context("asking the backup for its manifest")?;
    if m.parts {
        read_manifest_parts(ch, &mut m, MAX_ENTRIES)?;
    }
    let peer = match (m.entries.take(), known) {
        (Some(e), _) => Cow::Owned(e),
        (None, Some(p)) => Cow::Borrowed(&p.manifest),
        (None, None) => return Err(fail(Code::Peer, "the backup sent no manifest")),
    };
    Ok((m, peer))
}

/// The parts of a manifest that follow its reply, each frame bounded; no
/// more than `limit` ([`MAX_ENTRIES`]) entries and drift lines in all.
fn read_manifest_parts<C: Read>(ch: &mut C, m: &mut ManifestReply, limit: usize) -> Result<()> {
    loop {
        let part: ManifestPart = read_msg::<_, Reply>(ch)
            .and_then(Reply::into_result)
            .context("reading the backup's manifest")?;
        if let Some(entries) = m.entries.as_mut() {
            entries.extend(part.entries);
        } else if !part.entries.is_empty() {
            return Err(fail(
                Code::Peer,
                "the backup sent entries it was not asked for",
            ));
        }
        m.drift.extend(part.drift);
        let total = m.entries.as_ref().map_or(0, |e| e.len()) + m.drift.len();
        if total > limit {
            return Err(fail(
                Code::Security,
                format!("the backup's manifest has more than {limit} entries: refused"),
            ));
        }
        if !part.more {
            return Ok(());
        }
    }
}

/// What a push attempt works with.
struct PushCtx<'a> {
    root: &'a NodeRoot,
    cluster: &'a ClusterConfig,
    set: &'a SyncSet,
    state: &'a StateDir,
    /// When the push started (for the attempt marker).
    started: Instant,
}

fn transfer<C: Read + Write>(
    ctx: &PushCtx,
    ch: &mut C,
    local: &Local,
    prev: Option<&Pushed>,
    opts: PushOptions,
    progress: &mut PushReport,
    spans: &mut Spans,
) -> Result<std::result::Result<PushReport, Retry>> {
    let no_push = Pushed::default();
    let pushed = prev.unwrap_or(&no_push);
    let PushCtx {
        root,
        cluster,
        set,
        state,
        started,
    } = *ctx;
    let (m, peer) = peer_manifest(ch, pushed.clean.then_some(pushed))?;
    if m.rules_digest != set.digest() {
        log::warn!(
            "the backup's sync rules differ from this node's: install the same cluster config on both (ns-ha-init) or paths may be refused"
        );
    }
    if m.cluster_id
        .as_deref()
        .is_some_and(|c| c != cluster.cluster_id)
    {
        return Err(fail(
            Code::Conflict,
            format!(
                "the backup holds the config of another cluster ({})",
                m.cluster_id.unwrap_or_default()
            ),
        ));
    }
    log::debug!(
        "peer manifest: generation {}, {} drift",
        m.generation,
        m.drift.len()
    );
    spans.mark("manifest exchange (the backup scans)");
    crash::point("manifest");
    let (changes, deletes) = diff(&local.manifest, &peer);
    let drifted: BTreeSet<String> = m.drift.iter().map(|d| d.path.clone()).collect();
    let kept: BTreeSet<String> = if opts.force {
        BTreeSet::new()
    } else {
        changes
            .iter()
            .map(|c| &c.path)
            .chain(deletes.iter())
            .filter(|p| drifted.contains(*p))
            .cloned()
            .collect()
    };
    let generation = next_generation(m.generation, pushed.generation, &cluster.sync.state_dir)?;
    let mut rep = PushReport {
        dry_run: opts.dry_run,
        generation,
        lines: lines_of(&changes, &deletes, &peer, &kept),
        drift: m.drift.clone(),
        kept: kept.iter().cloned().collect(),
        refused: local.refused.clone(),
        ..Default::default()
    };
    spans.mark("diff");
    if opts.dry_run {
        return Ok(Ok(rep));
    }
    *progress = rep.clone();
    if changes.is_empty() && deletes.is_empty() {
        rep.generation = m.generation;
        // The backup records the check as its last attempt (an older
        // backup does not know the op: its status just stays as it was).
        if let Err(e) = call::<_, _, serde_json::Value>(
            ch,
            &SyncRequest::InSync {
                generation: m.generation,
            },
        ) {
            log::info!("the backup did not record the check: {e:#}");
        }
        return Ok(Ok(rep));
    }
    let begin = open_transaction(
        ch,
        BeginRequest {
            cluster_id: cluster.cluster_id.clone(),
            generation,
            base_generation: m.generation,
            force: opts.force,
            even_if_backup_is_master: opts.even_if_backup_is_master,
            changes: changes.clone(),
            deletes: deletes.clone(),
            more: false,
        },
    )
    .context("opening the transaction on the backup")?;
    log::debug!(
        "transaction open: {} changes, {} deletes",
        changes.len(),
        deletes.len()
    );
    let kept: BTreeSet<String> = begin.kept.into_iter().collect();
    // What the transaction announced: recorded if this push never finishes.
    let announced: Vec<&Change> = changes
        .iter()
        .filter(|c| c.data && !kept.contains(&c.path))
        .collect();
    let marker = Run {
        at: now_secs().saturating_sub(started.elapsed().as_secs()),
        duration_ms: started.elapsed().as_millis() as u64,
        generation,
        files: announced.len() as u64,
        bytes: announced.iter().map(|c| c.entry.size).sum(),
        changed: changes.len().saturating_sub(kept.len()) as u64,
        deleted: deletes.len() as u64,
        kept: kept.iter().cloned().collect(),
        ..Default::default()
    };
    if let Err(e) = state.mark_attempt(&marker) {
        log::warn!("cannot mark the push's progress: {e:#}");
    }
    spans.mark("begin (the backup checks every path)");
    crash::point("begin");
    // Frames are coalesced: one SSH packet per small file would cost a
    // round of the channel machinery each.
    let mut out = std::io::BufWriter::with_capacity(crate::util::COPY_BUFFER, &mut *ch);
    // Frames of small files, sent packed every BATCH_BYTES (send_batch).
    let mut batch = Vec::new();
    let mut changed_meanwhile = false;
    for c in changes.iter().filter(|c| c.data && !kept.contains(&c.path)) {
        let role_managed = set.is_role_managed(&c.path);
        // The backup's copy, when a delta against it may pay (crate::delta).
        let base = peer
            .get(&c.path)
            .filter(|p| p.kind == Kind::File && !role_managed && delta::worth_it(c.entry.size))
            .and_then(|p| p.sha256.as_deref());
        let unchanged = match base {
            Some(base) => {
                send_batch(&mut batch, &mut out)?;
                out.flush().context("sending file data")?;
                send_delta(root, out.get_mut(), c, base)?
            }
            None if c.entry.size <= BATCH_FILE && !crash::armed("file-half") => {
                let unchanged = send_file(root, &mut batch, c, role_managed)?;
                if batch.len() >= BATCH_BYTES {
                    send_batch(&mut batch, &mut out)?;
                }
                unchanged
            }
            None if !role_managed && !crash::armed("file-half") => {
                send_batch(&mut batch, &mut out)?;
                send_large_file(root, &mut out, c)?
            }
            None => {
                send_batch(&mut batch, &mut out)?;
                send_file(root, &mut out, c, role_managed)?
            }
        };
        if !unchanged {
            changed_meanwhile = true;
            break;
        }
        rep.files += 1;
        progress.files = rep.files;
        if crash::armed("file") {
            send_batch(&mut batch, &mut out)?;
            out.flush()?;
            crash::point("file");
        }
    }
    if !changed_meanwhile {
        send_batch(&mut batch, &mut out)?;
    }
    out.flush().context("sending file data")?;
    drop(out);
    if changed_meanwhile {
        write_msg(ch, &SyncRequest::Abort)?;
        let _: Reply = read_msg(ch)?;
        return Ok(Err(Retry));
    }
    spans.mark("file data sent");
    log::debug!("{} file(s) sent", rep.files);
    write_msg(ch, &SyncRequest::Commit)?;
    crash::point("commit");
    let reply: Reply = read_msg(ch).context("waiting for the backup to apply")?;
    let c: CommitReply = reply.into_result().context("the backup refused the sync")?;
    spans.mark("commit (the backup applies)");
    for (step, us) in &c.timings {
        log::debug!("timing: {step}: {:.1} ms", *us as f64 / 1000.0);
    }
    log::info!(
        "pushed generation {} to the backup: {} file(s), {} deleted, {} kept",
        c.generation,
        rep.files,
        deletes.len(),
        c.kept.len()
    );
    crash::point("committed");
    rep.generation = c.generation;
    rep.kept = c.kept.clone();
    rep.lines = lines_of(&changes, &deletes, &peer, &c.kept.iter().cloned().collect());
    Ok(Ok(rep))
}

/// The number of the generation a push creates: one past the newest the
/// backup holds or this node pushed. Checked: a generation at `u64::MAX`
/// (a forged or corrupted state file) cannot be followed, and wrapping to 0
/// would make the backup refuse every push as stale.
fn next_generation(backup: u64, pushed: u64, state_dir: &str) -> Result<u64> {
    let newest = backup.max(pushed);
    newest.checked_add(1).ok_or_else(|| {
        fail(
            Code::Conflict,
            format!(
                "generation {newest} is the largest there is, no push can follow it: delete {state_dir}/{APPLIED} on the backup and {state_dir}/{PUSHED} here, then push --force"
            ),
        )
    })
}

/// Send `begin` in chunks of about [`CHUNK_BYTES`]; the answer of the last
/// chunk is the transaction's.
pub fn open_transaction<C: Read + Write>(ch: &mut C, req: BeginRequest) -> Result<BeginReply> {
    let mut reply = BeginReply::default();
    for chunk in req.into_chunks(CHUNK_BYTES) {
        reply = call_packed(ch, &SyncRequest::Begin(chunk))?;
    }
    Ok(reply)
}

fn save_pushed(
    state: &StateDir,
    prev: Option<&Pushed>,
    generation: u64,
    local: Local,
    clean: bool,
) -> Result<()> {
    state.save_pushed(
        prev,
        Pushed {
            generation,
            digest: local.digest,
            clean,
            at: now_secs(),
            manifest: local.manifest,
            ..Default::default()
        },
    )
}

/// Open the file to send for `c`, not following a link that replaced it
/// since the scan; the open's error is the caller's to handle.
fn open_source(root: &NodeRoot, c: &Change) -> (std::path::PathBuf, std::io::Result<fs::File>) {
    let path = root.path(&c.path);
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path);
    (path, file)
}

/// Write a file frame's header and open the file to send ([`open_source`];
/// a failed open is completed with zeros by the caller).
fn start_file<C: Write>(
    root: &NodeRoot,
    ch: &mut C,
    c: &Change,
) -> Result<(std::path::PathBuf, std::io::Result<fs::File>)> {
    ch.write_all(&file_header(c)?)
        .context("sending file header")?;
    Ok(open_source(root, c))
}

/// Complete a file frame of `size` bytes of which `sent` went out with zeros.
fn fill_to<W: Write>(w: &mut W, mut sent: u64, size: u64) -> Result<()> {
    let zeros = [0u8; 8192];
    while sent < size {
        let n = (size - sent).min(zeros.len() as u64) as usize;
        w.write_all(&zeros[..n]).context("sending file data")?;
        sent += n as u64;
    }
    Ok(())
}

/// The frame that announces `c`'s content (its bytes follow; its hash is
/// the one `begin` announced).
fn file_header(c: &Change) -> Result<Vec<u8>> {
    // A buffer: write_msg flushes, which would defeat coalescing.
    let mut header = Vec::new();
    write_msg(
        &mut header,
        &SyncRequest::File {
            path: c.path.clone(),
            size: c.entry.size,
            sha256: None,
        },
    )?;
    Ok(header)
}

/// Send the gathered `file` frames of small files (and empty `batch`):
/// one `files` frame when they pack (config text shrinks several times),
/// else the frames as they are.
fn send_batch<W: Write>(batch: &mut Vec<u8>, out: &mut W) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    match pack(batch) {
        Some(packed) => {
            // A buffer: write_msg flushes, which would defeat coalescing.
            let mut header = Vec::new();
            write_msg(
                &mut header,
                &SyncRequest::Files {
                    len: packed.len() as u64,
                    raw: batch.len() as u64,
                },
            )?;
            out.write_all(&header)
                .and_then(|()| out.write_all(&packed))
                .context("sending a batch of files")?;
        }
        None => out.write_all(batch).context("sending file data")?,
    }
    batch.clear();
    Ok(())
}

/// Largest block signature accepted from the backup (one of a
/// [`delta::DELTA_MAX`] file is under 1 MiB).
const MAX_SIGNATURE: u64 = 4 << 20;

/// Send `c` as a delta against the backup's copy, whose content is
/// `base_sha256` (see `crate::delta`); whole when the backup has no such
/// copy, when the delta would not be smaller, or when the backup could not
/// rebuild the file from it. `false` when the file changed since the scan
/// (nothing sent for it; the caller aborts and scans again).
fn send_delta<C: Read + Write>(
    root: &NodeRoot,
    ch: &mut C,
    c: &Change,
    base_sha256: &str,
) -> Result<bool> {
    let mut spans = Spans::default();
    // Asked first: the backup reads and signs its copy while this node
    // reads and checks its own (each a pass over the whole file).
    write_msg(
        ch,
        &SyncRequest::Signature {
            path: c.path.clone(),
            base_sha256: base_sha256.to_string(),
        },
    )
    .with_context(|| format!("asking the backup for the signature of {}", c.path))?;
    // Not hashed again (see `send_large_file`): a copy that changed behind
    // a restored mtime rebuilds other bytes on the backup, whose sha256
    // check refuses them.
    let (path, file) = open_source(root, c);
    let data = match file {
        Ok(f) => {
            let opened = f.metadata().ok();
            let mut data = Vec::with_capacity(c.entry.size as usize);
            Read::by_ref(&mut &f)
                .take(c.entry.size + 1)
                .read_to_end(&mut data)
                .with_context(|| format!("reading {}", path.display()))?;
            unchanged_since_scan(c, opened.as_ref(), &f, data.len() as u64).then_some(data)
        }
        Err(_) => None,
    };
    let want = c.entry.sha256.as_deref().unwrap_or_default();
    spans.mark("delta: file read");
    let sig: SignatureReply = read_msg::<_, Reply>(ch)
        .and_then(Reply::into_result)
        .with_context(|| format!("asking the backup for the signature of {}", c.path))?;
    let sig = match sig.len {
        Some(len) if len <= MAX_SIGNATURE => {
            let mut sig = vec![0u8; len as usize];
            ch.read_exact(&mut sig)
                .context("receiving the block signature")?;
            spans.mark("delta: the backup's block signature received");
            Some(sig)
        }
        Some(len) => {
            return Err(fail(
                Code::Security,
                format!("block signature of {len} bytes from the backup refused"),
            ))
        }
        None => None,
    };
    // Changed since the scan: nothing sent for it (the caller aborts).
    let Some(data) = data else {
        return Ok(false);
    };
    let delta = match sig {
        Some(sig) => {
            let d = delta::make(sig, &data)?;
            spans.mark("delta: computed");
            Some(d)
        }
        None => None,
    };
    if let Some(d) = delta.filter(|d| (d.len() as u64) < c.entry.size) {
        let mut frame = Vec::new();
        write_msg(
            &mut frame,
            &SyncRequest::Delta {
                path: c.path.clone(),
                size: c.entry.size,
                sha256: want.to_string(),
                len: d.len() as u64,
            },
        )?;
        ch.write_all(&frame)
            .and_then(|()| ch.write_all(&d))
            .and_then(|()| ch.flush())
            .context("sending a delta")?;
        let reply: DeltaReply = read_msg::<_, Reply>(ch)
            .and_then(Reply::into_result)
            .with_context(|| format!("sending the delta of {}", c.path))?;
        spans.mark("delta: sent and applied by the backup");
        if reply.applied {
            log::debug!("{}: delta of {} bytes", c.path, d.len());
            return Ok(true);
        }
        log::info!("{}: the backup could not use the delta: sent whole", c.path);
    }
    ch.write_all(&file_header(c)?)
        .and_then(|()| ch.write_all(&data))
        .context("sending file data")?;
    Ok(true)
}

/// Send one file frame. `false` when the file changed since the scan (the
/// frame is completed with what was read; the caller aborts).
/// A role-managed file is sent as the scan saw it, without the role engine's markers.
fn send_file<C: Write>(
    root: &NodeRoot,
    ch: &mut C,
    c: &Change,
    role_managed: bool,
) -> Result<bool> {
    let size = c.entry.size;
    let want = c.entry.sha256.clone().unwrap_or_default();
    let (path, file) = start_file(root, ch, c)?;
    let mut w = HashingWriter::new(&mut *ch);
    let mut sent = 0u64;
    if role_managed {
        let data = crate::manifest::role_managed_content(&path).unwrap_or_default();
        let n = data.len().min(size as usize);
        w.write_all(&data[..n]).context("sending file data")?;
        sent = n as u64;
    } else if let Ok(f) = file {
        let half = crash::armed("file-half");
        let limit = if half { size / 2 } else { size };
        sent = copy_file_data(&mut f.take(limit), &mut w, limit).context("sending file data")?;
        if half {
            w.flush()?;
            crash::point("file-half");
            sent += copy_file_data(
                &mut fs::File::open(&path)?.take(size - limit),
                &mut w,
                size - limit,
            )?;
        }
    }
    // A file that shrank or vanished: fill the announced length; the hash tells.
    fill_to(&mut w, sent, size)?;
    let (_, got) = w.digest();
    Ok(got == want)
}

/// Send a large file's frame without hashing it again: it is unchanged
/// since the scan hashed it when its size and mtime are the scanned ones
/// and its status (size, times, inode) is the same after the last byte was
/// read as when it was opened (any write changes its ctime). Hashing 500 MB
/// a second time cost a quarter of a second of CPU, which the backup's
/// own sha256 check makes redundant: a file rewritten behind a restored
/// mtime between the scan and the open fails that check, and nothing is
/// applied. `false` when the file changed (the frame is completed; the
/// caller aborts).
fn send_large_file<C: Write>(root: &NodeRoot, ch: &mut C, c: &Change) -> Result<bool> {
    let size = c.entry.size;
    let (_, file) = start_file(root, ch, c)?;
    let mut sent = 0u64;
    let mut unchanged = false;
    if let Ok(f) = file {
        let opened = f.metadata().ok();
        sent = send_file_data(&mut Read::by_ref(&mut &f).take(size), ch, size)
            .context("sending file data")?;
        unchanged = unchanged_since_scan(c, opened.as_ref(), &f, sent);
    }
    // A file that shrank or vanished: fill the announced length (the caller aborts).
    fill_to(ch, sent, size)?;
    Ok(unchanged)
}

/// Whether the `read` bytes of `f` are the content the scan hashed for `c`:
/// all of it was read, its size and mtime were the scanned ones when it was
/// `opened`, and its status (size, times, inode) is the same now, after the
/// last byte was read (any write moves its ctime).
fn unchanged_since_scan(
    c: &Change,
    opened: Option<&fs::Metadata>,
    f: &fs::File,
    read: u64,
) -> bool {
    use crate::manifest::{mtime_ns, Stamp};
    let size = c.entry.size;
    let now = f.metadata().ok().map(|md| Stamp::of(&md));
    read == size
        && opened.is_some_and(|md| {
            md.len() == size && mtime_ns(md) == c.entry.mtime_ns && now == Some(Stamp::of(md))
        })
}

/// The backup's status, asked over the channel.
pub fn peer_status(link: &mut dyn Link) -> Result<Status> {
    let mut ch = link.open()?;
    call(&mut ch, &SyncRequest::Status)
}

/// The backup's drift and what a push would change, asked over the channel.
pub fn peer_verify(
    root: &NodeRoot,
    cluster: &ClusterConfig,
    link: &mut dyn Link,
) -> Result<PushReport> {
    push(
        root,
        cluster,
        link,
        PushOptions {
            dry_run: true,
            ..Default::default()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(from: usize, n: usize, more: bool) -> ManifestPart {
        let entry = crate::manifest::Entry::root_dir();
        ManifestPart {
            entries: (from..from + n)
                .map(|i| (format!("/etc/d{i}"), entry.clone()))
                .collect(),
            drift: Vec::new(),
            more,
        }
    }

    fn header() -> ManifestReply {
        ManifestReply {
            cluster_id: None,
            generation: 0,
            digest: String::new(),
            rules_digest: String::new(),
            entries: Some(Manifest::new()),
            drift: Vec::new(),
            parts: true,
        }
    }

    #[test]
    fn manifest_parts_are_joined_and_capped() {
        let mut stream = Vec::new();
        for (i, more) in [true, true, false].into_iter().enumerate() {
            write_msg(&mut stream, &Reply::ok(part(i * 4, 4, more))).unwrap();
        }
        let mut m = header();
        read_manifest_parts(&mut &stream[..], &mut m, 12).unwrap();
        assert_eq!(m.entries.as_ref().map(|e| e.len()), Some(12));
        // A backup that keeps sending is cut off at the limit, not believed.
        let mut endless = Vec::new();
        for i in 0..5 {
            write_msg(&mut endless, &Reply::ok(part(i * 4, 4, true))).unwrap();
        }
        let mut m = header();
        let e = read_manifest_parts(&mut &endless[..], &mut m, 12).unwrap_err();
        assert_eq!(code_of(&e), Code::Security, "{e:#}");
        assert!(e.to_string().contains("more than 12 entries"), "{e:#}");
        // Entries the sender did not ask for are refused.
        let mut m = ManifestReply {
            entries: None,
            ..header()
        };
        let e = read_manifest_parts(&mut &stream[..], &mut m, 12).unwrap_err();
        assert_eq!(code_of(&e), Code::Peer);
    }

    #[test]
    fn generation_at_u64_max_is_a_conflict_not_a_wrap() {
        assert_eq!(next_generation(4, 7, "/s").unwrap(), 8);
        assert_eq!(next_generation(u64::MAX - 1, 3, "/s").unwrap(), u64::MAX);
        for (backup, pushed) in [(u64::MAX, 0), (0, u64::MAX)] {
            let e = next_generation(backup, pushed, "/var/lib/ns-ha/sync").unwrap_err();
            assert_eq!(code_of(&e), Code::Conflict);
            let msg = e.to_string();
            assert!(msg.contains("18446744073709551615"), "{msg}");
            assert!(msg.contains("/var/lib/ns-ha/sync/applied.json"), "{msg}");
            assert!(msg.contains("push --force"), "{msg}");
        }
    }
}
