//! `ns-ha-sync receive`: the backup's end of the sync channel, run by sshd as
//! the forced command of the primary's key.
//!
//! This is the security boundary of the sync. It trusts nothing it is sent:
//! every path is checked against the backup's own rules (no `..`, nothing
//! outside the sync set, never through a symlink), every file's hash is
//! verified before it can become live, the cluster and generation must match,
//! and no shell ever sees remote data. Files are staged, then made live by
//! the journal (see `journal`), so a failed or cut transfer applies nothing.

use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ns_ha_common::activate::tool_path;
use ns_ha_common::cmd::CommandRunner;
use ns_ha_common::config::{load_cluster, load_cluster_opt, load_node, ClusterConfig, Role};
use ns_ha_common::control::{self, CONTROL_OPS};
use ns_ha_common::exit::{code_of, fail, Code};
use ns_ha_common::fsutil::NodeLock;
use ns_ha_common::proto::{read_value, write_msg, Reply};
use ns_ha_common::NodeRoot;

use crate::crash;
use crate::journal::{self, check_ancestors, set_file_meta, Journal, Op};
use crate::manifest::{digest, drift, scan, Change, Drift, HashCache, Kind, Manifest};
use crate::rules::{check_path, resolve_link, SyncSet};
use crate::state::{Applied, Run, StateDir, Status, APPLIED, BASELINE, STATUS};
use crate::util::{hex, now_secs};
use crate::wire::{BeginReply, CommitReply, ManifestReply, SyncRequest};

/// Largest single file accepted.
pub const MAX_FILE: u64 = 1 << 30;
/// Most changes accepted in one transaction.
pub const MAX_CHANGES: usize = 1_000_000;
/// Beyond this many changed paths the hook is told nothing (reload everything).
const MAX_HOOK_PATHS: usize = 200;
/// How long a receiver waits for another sync on this node to finish.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The sync state of this node as its own files say (used by `verify` too).
#[derive(Debug, Clone)]
pub struct LocalView {
    pub current: Manifest,
    pub applied: Applied,
    pub baseline: Manifest,
    pub drift: Vec<Drift>,
}

/// Scan this node's sync set and compare it with the baseline of the last sync.
pub fn local_view(root: &NodeRoot, set: &SyncSet, state: &StateDir) -> Result<LocalView> {
    let mut cache = HashCache::load(&state.cache());
    let current = scan(root, set, &mut cache, false)?.manifest;
    if let Err(e) = cache.save(&state.cache()) {
        log::warn!("cannot save the hash cache: {e:#}");
    }
    let applied: Applied = state.read(APPLIED)?.unwrap_or_default();
    // Before the first sync nothing is known: the node's files are the baseline.
    let baseline = if applied.generation == 0 {
        current.clone()
    } else {
        state.read(BASELINE)?.unwrap_or_default()
    };
    let drift = drift(&current, &baseline);
    Ok(LocalView {
        current,
        applied,
        baseline,
        drift,
    })
}

/// Finish or discard an interrupted apply if there is one (takes the lock).
pub fn recover_if_needed(
    root: &NodeRoot,
    set: &SyncSet,
    state: &StateDir,
    wait: Duration,
) -> Result<Option<journal::Recovery>> {
    if !state.journal().exists() && !state.staging().exists() {
        return Ok(None);
    }
    let _lock = state.lock(wait)?;
    journal::recover(root, set, state).map(Some)
}

/// An open transaction.
struct Txn {
    _lock: NodeLock,
    started: Instant,
    cluster_id: String,
    generation: u64,
    changes: BTreeMap<String, Change>,
    deletes: Vec<String>,
    kept: BTreeSet<String>,
    /// Data files still expected: path -> staging name.
    pending: HashMap<String, String>,
    /// Staging names of received files.
    staged: HashMap<String, String>,
    current: Manifest,
    baseline: Manifest,
    drift: Vec<Drift>,
    failed: Option<anyhow::Error>,
    files: u64,
    bytes: u64,
    staging: PathBuf,
}

/// The node-side context of a sync op: config, rules, state.
struct Ctx {
    cluster: ClusterConfig,
    set: SyncSet,
    state: StateDir,
}

/// The receiver of one channel.
pub struct Receiver<'a> {
    root: NodeRoot,
    runner: &'a dyn CommandRunner,
    /// The cluster named by a successful `hello`.
    greeted: Option<String>,
    txn: Option<Txn>,
    /// The view read by `manifest`, with the lock held since, so that `begin`
    /// does not scan again.
    view: Option<(NodeLock, LocalView)>,
    /// Paths changed by the last commit, for `ns-ha-role sync-applied`.
    hook_due: Option<Vec<String>>,
}

impl<'a> Receiver<'a> {
    pub fn new(root: NodeRoot, runner: &'a dyn CommandRunner) -> Self {
        Receiver {
            root,
            runner,
            greeted: None,
            txn: None,
            view: None,
            hook_due: None,
        }
    }

    /// At start: arm the test crash point and finish an interrupted apply.
    pub fn startup(&self) {
        let cluster = load_cluster_opt(&self.root).ok().flatten();
        let state = StateDir::of(&self.root, cluster.as_ref());
        crash::arm_from_file(&state.dir);
        if let Some(c) = cluster {
            match SyncSet::for_cluster(&self.root, Some(&c)) {
                Ok(set) => {
                    if let Err(e) =
                        recover_if_needed(&self.root, &set, &state, Duration::from_secs(1))
                    {
                        log::warn!("recovery at start postponed: {e:#}");
                    }
                }
                Err(e) => log::warn!("sync rules invalid: {e:#}"),
            }
        }
    }

    /// Serve requests until the sender closes the channel.
    pub fn serve<R: Read, W: Write>(&mut self, r: &mut R, w: &mut W) -> Result<()> {
        let result = self.serve_inner(r, w);
        if let Some(txn) = self.txn.take() {
            self.abort(txn, "the sender went away before commit");
        }
        result
    }

    fn serve_inner<R: Read, W: Write>(&mut self, r: &mut R, w: &mut W) -> Result<()> {
        loop {
            let v = match read_value(r) {
                Ok(Some(v)) => v,
                Ok(None) => return Ok(()),
                Err(e) => {
                    let _ = write_msg(w, &Reply::from_error(&e));
                    return Err(e);
                }
            };
            let op = v
                .get("op")
                .and_then(|o| o.as_str())
                .unwrap_or("")
                .to_string();
            if op == "file" {
                if let Err(e) = self.file(v, r) {
                    let _ = write_msg(w, &Reply::from_error(&e));
                    return Err(e);
                }
                continue;
            }
            let reply = match self.dispatch(&op, v) {
                Ok(data) => Reply::ok(data),
                Err(e) => {
                    log::warn!("{op}: {e:#}");
                    Reply::from_error(&e)
                }
            };
            write_msg(w, &reply)?;
            if let Some(paths) = self.hook_due.take() {
                self.run_hook(&paths);
            }
        }
    }

    fn dispatch(&mut self, op: &str, v: serde_json::Value) -> Result<serde_json::Value> {
        if CONTROL_OPS.contains(&op) {
            let id = v
                .get("cluster_id")
                .and_then(|c| c.as_str())
                .map(str::to_string);
            let data = control::handle(&self.root, self.runner, v)?;
            if op == "hello" {
                self.greeted = id;
            }
            return Ok(data);
        }
        if self.greeted.is_none() {
            return Err(fail(
                Code::Security,
                format!("'{op}' before a successful hello: refused"),
            ));
        }
        let req: SyncRequest = serde_json::from_value(v)
            .map_err(|e| fail(Code::Peer, format!("malformed sync request: {e}")))?;
        Ok(match req {
            SyncRequest::Manifest { known_digest } => {
                serde_json::to_value(self.manifest(known_digest)?)?
            }
            SyncRequest::Begin {
                cluster_id,
                generation,
                base_generation,
                force,
                changes,
                deletes,
            } => {
                let started = Instant::now();
                match self.begin(
                    &cluster_id,
                    generation,
                    base_generation,
                    force,
                    changes,
                    deletes,
                    started,
                ) {
                    Ok(r) => serde_json::to_value(r)?,
                    Err(e) => {
                        self.record_failure(&e, generation, started);
                        return Err(e);
                    }
                }
            }
            SyncRequest::Commit => {
                let txn = self
                    .txn
                    .take()
                    .ok_or_else(|| fail(Code::Peer, "commit without an open transaction"))?;
                let (generation, started) = (txn.generation, txn.started);
                match self.commit(txn) {
                    Ok(r) => serde_json::to_value(r)?,
                    Err(e) => {
                        self.record_failure(&e, generation, started);
                        return Err(e);
                    }
                }
            }
            SyncRequest::Abort => {
                if let Some(txn) = self.txn.take() {
                    self.abort(txn, "aborted by the sender");
                }
                serde_json::Value::Null
            }
            SyncRequest::Status => {
                let ctx = self.ctx()?;
                let mut st: Status = ctx.state.read(STATUS)?.unwrap_or_default();
                st.generation = ctx
                    .state
                    .read::<Applied>(APPLIED)?
                    .unwrap_or_default()
                    .generation;
                serde_json::to_value(st)?
            }
            SyncRequest::File { .. } => return Err(fail(Code::Peer, "file frame out of place")),
        })
    }

    /// This node must be a backup of the cluster greeted on this channel.
    fn ctx(&self) -> Result<Ctx> {
        let node = load_node(&self.root)?;
        if node.role != Role::Backup {
            return Err(fail(
                Code::State,
                "this node is the primary: it does not accept syncs",
            ));
        }
        let cluster = load_cluster(&self.root).map_err(|e| {
            fail(
                Code::State,
                format!("{e:#}: this backup is not paired, it accepts no sync"),
            )
        })?;
        if self.greeted.as_deref() != Some(cluster.cluster_id.as_str()) {
            return Err(fail(
                Code::Conflict,
                format!(
                    "this node belongs to cluster {}, not the one of this sender",
                    cluster.cluster_id
                ),
            ));
        }
        let set = SyncSet::for_cluster(&self.root, Some(&cluster))?;
        let state = StateDir::new(&self.root, &cluster.sync);
        Ok(Ctx {
            cluster,
            set,
            state,
        })
    }

    fn manifest(&mut self, known_digest: Option<String>) -> Result<ManifestReply> {
        let ctx = self.ctx()?;
        self.view = None;
        let lock = ctx.state.lock(LOCK_WAIT)?;
        journal::recover(&self.root, &ctx.set, &ctx.state)?;
        let view = local_view(&self.root, &ctx.set, &ctx.state)?;
        let d = digest(&view.current);
        let reply = ManifestReply {
            cluster_id: view.applied.cluster_id.clone(),
            generation: view.applied.generation,
            entries: if known_digest.as_deref() == Some(d.as_str()) {
                None
            } else {
                Some(view.current.clone())
            },
            digest: d,
            rules_digest: ctx.set.digest(),
            drift: view.drift.clone(),
        };
        self.view = Some((lock, view));
        Ok(reply)
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "the begin request's parts; to become one struct"
    )]
    fn begin(
        &mut self,
        cluster_id: &str,
        generation: u64,
        base_generation: u64,
        force: bool,
        changes: Vec<Change>,
        deletes: Vec<String>,
        started: Instant,
    ) -> Result<BeginReply> {
        if self.txn.is_some() {
            return Err(fail(
                Code::Peer,
                "a transaction is already open on this channel",
            ));
        }
        let ctx = self.ctx()?;
        ns_ha_common::control::refuse_other_cluster(&ctx.cluster.cluster_id, cluster_id)?;
        if changes.len() + deletes.len() > MAX_CHANGES {
            return Err(fail(Code::Security, "too many changes in one transaction"));
        }
        let (lock, view) = match self.view.take() {
            Some(v) => v,
            None => {
                let lock = ctx.state.lock(LOCK_WAIT)?;
                journal::recover(&self.root, &ctx.set, &ctx.state)?;
                (lock, local_view(&self.root, &ctx.set, &ctx.state)?)
            }
        };
        if let Some(c) = &view.applied.cluster_id {
            ns_ha_common::control::refuse_other_cluster(c, cluster_id)?;
        }
        if generation <= view.applied.generation {
            return Err(fail(
                Code::Conflict,
                format!(
                    "generation {generation} is not newer than generation {} held here: refusing stale config",
                    view.applied.generation
                ),
            ));
        }
        if base_generation != view.applied.generation {
            return Err(fail(
                Code::Conflict,
                format!(
                    "the backup moved to generation {} after the sender read generation {base_generation}: retry the push",
                    view.applied.generation
                ),
            ));
        }
        let drifted: BTreeSet<&str> = view.drift.iter().map(|d| d.path.as_str()).collect();
        let mut seen = BTreeSet::new();
        let mut kept = BTreeSet::new();
        let mut total = 0u64;
        let mut change_map = BTreeMap::new();
        for c in changes {
            self.check_target(&ctx, &c.path, &mut seen)?;
            let e = &c.entry;
            if !e.well_formed() {
                return Err(fail(
                    Code::Peer,
                    format!("entry of {} is malformed", c.path),
                ));
            }
            if e.kind == Kind::Symlink {
                let t = e.target.as_deref().unwrap_or_default();
                if !resolve_link(&c.path, t).is_some_and(|r| ctx.set.is_synced(&r)) {
                    return Err(fail(
                        Code::Security,
                        format!(
                            "symlink {} -> {t} refused: it points outside the sync set",
                            c.path
                        ),
                    ));
                }
            }
            if c.data && e.kind != Kind::File {
                return Err(fail(
                    Code::Peer,
                    format!("{} is not a file but data was announced", c.path),
                ));
            }
            if !c.data && e.kind == Kind::File {
                let live = view.current.get(&c.path);
                if live.map(|l| (l.kind, &l.sha256)) != Some((Kind::File, &e.sha256)) {
                    return Err(fail(
                        Code::Peer,
                        format!(
                            "{} differs from the sender's view of this backup: retry the push",
                            c.path
                        ),
                    ));
                }
            }
            if e.size > MAX_FILE {
                return Err(fail(
                    Code::Security,
                    format!("{} is larger than {MAX_FILE} bytes", c.path),
                ));
            }
            if !force && drifted.contains(c.path.as_str()) {
                kept.insert(c.path.clone());
            } else if c.data {
                total += e.size;
            }
            change_map.insert(c.path.clone(), c);
        }
        for d in &deletes {
            self.check_target(&ctx, d, &mut seen)?;
            if !force && drifted.contains(d.as_str()) {
                kept.insert(d.clone());
            }
        }
        prepare_staging(&self.root, &ctx.state, change_map.keys(), total)?;
        let mut pending = HashMap::new();
        for (i, (p, c)) in change_map.iter().enumerate() {
            if c.data && !kept.contains(p) {
                pending.insert(p.clone(), format!("{i}"));
            }
        }
        self.txn = Some(Txn {
            _lock: lock,
            started,
            cluster_id: cluster_id.to_string(),
            generation,
            changes: change_map,
            deletes,
            kept: kept.clone(),
            pending,
            staged: HashMap::new(),
            current: view.current,
            baseline: view.baseline,
            drift: view.drift,
            failed: None,
            files: 0,
            bytes: 0,
            staging: ctx.state.staging(),
        });
        crash::point("begin");
        Ok(BeginReply {
            kept: kept.into_iter().collect(),
        })
    }

    /// A path the sender wants to write or delete: well-formed, synced here,
    /// announced once, not reached through a symlink.
    fn check_target(&self, ctx: &Ctx, path: &str, seen: &mut BTreeSet<String>) -> Result<()> {
        check_path(path)?;
        if !ctx.set.is_synced(path) {
            return Err(fail(
                Code::Security,
                format!("{path} refused: outside this backup's sync set"),
            ));
        }
        if !seen.insert(path.to_string()) {
            return Err(fail(Code::Peer, format!("{path} announced twice")));
        }
        check_ancestors(&self.root, &ctx.set, path)
    }

    /// A `file` frame: stage its content. Problems with the file fail the
    /// transaction (reported at commit); only a broken stream ends the channel.
    fn file<R: Read>(&mut self, v: serde_json::Value, r: &mut R) -> Result<()> {
        let SyncRequest::File { path, size, sha256 } = serde_json::from_value(v)
            .map_err(|e| fail(Code::Peer, format!("malformed file frame: {e}")))?
        else {
            return Err(fail(Code::Peer, "malformed file frame"));
        };
        if size > MAX_FILE {
            return Err(fail(
                Code::Security,
                format!("file frame of {size} bytes refused"),
            ));
        }
        let Some(txn) = self.txn.as_mut() else {
            receive_blob(r, size, None)?;
            return Err(fail(Code::Peer, "file frame without an open transaction"));
        };
        let announced = txn.changes.get(&path).map(|c| c.entry.clone());
        let staged = match (txn.pending.remove(&path), announced) {
            (Some(name), Some(e))
                if e.size == size && e.sha256.as_deref() == Some(sha256.as_str()) =>
            {
                name
            }
            _ => {
                receive_blob(r, size, None)?;
                txn.failed.get_or_insert(fail(
                    Code::Security,
                    format!("file frame for {path} was not announced (or differs from its announcement, or came twice)"),
                ));
                return Ok(());
            }
        };
        let dest = txn.staging.join(&staged);
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&dest);
        let (file, open_err) = match file {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(e)),
        };
        let (file, write_err, got) = receive_blob(r, size, file)?;
        let outcome = (|| -> Result<()> {
            if let Some(e) = open_err.or(write_err) {
                return Err(e).with_context(|| format!("staging {path}"));
            }
            if got != sha256 {
                return Err(fail(
                    Code::Security,
                    format!(
                        "hash mismatch for {path}: content corrupted or forged, nothing applied"
                    ),
                ));
            }
            let f = file.ok_or_else(|| fail(Code::Failure, "staging file vanished"))?;
            let e = &txn.changes[&path].entry;
            // Made durable all at once (syncfs) before the journal is written.
            set_file_meta(&f, &dest, e.mode, e.uid, e.gid, e.mtime_ns)
        })();
        match outcome {
            Ok(()) => {
                txn.files += 1;
                txn.bytes += size;
                txn.staged.insert(path, staged);
            }
            Err(e) => {
                let _ = fs::remove_file(&dest);
                txn.failed.get_or_insert(e);
            }
        }
        crash::point("file");
        Ok(())
    }

    fn commit(&mut self, mut txn: Txn) -> Result<CommitReply> {
        let ctx = self.ctx()?;
        let fail_txn = |e: anyhow::Error| -> Result<CommitReply> {
            let _ = journal::clear_staging(&ctx.state);
            Err(e)
        };
        if let Some(e) = txn.failed.take() {
            return fail_txn(e);
        }
        if !txn.pending.is_empty() {
            let mut missing: Vec<&String> = txn.pending.keys().collect();
            missing.sort();
            return fail_txn(fail(
                Code::Peer,
                format!(
                    "{} announced file(s) never arrived (first: {}): nothing applied",
                    missing.len(),
                    missing[0]
                ),
            ));
        }
        crash::point("staged");
        let journal = match build_journal(&self.root, &ctx.state, &mut txn) {
            Ok(j) => j,
            Err(e) => return fail_txn(e),
        };
        journal::commit(&self.root, &ctx.set, &ctx.state, &journal)?;
        let reply = CommitReply {
            generation: txn.generation,
            files: txn.files,
            bytes: txn.bytes,
            changed: journal.changed.len() as u64,
            deleted: journal.deleted.len() as u64,
            kept: txn.kept.iter().cloned().collect(),
        };
        let run = Run {
            at: now_secs().saturating_sub(txn.started.elapsed().as_secs()),
            duration_ms: txn.started.elapsed().as_millis() as u64,
            ok: true,
            code: 0,
            error: None,
            generation: txn.generation,
            files: txn.files,
            bytes: txn.bytes,
            changed: reply.changed,
            deleted: reply.deleted,
            kept: reply.kept.clone(),
        };
        if let Err(e) = ctx.state.record(&run) {
            log::warn!("cannot record the sync status: {e:#}");
        }
        self.hook_due = Some(
            journal
                .changed
                .iter()
                .chain(&journal.deleted)
                .cloned()
                .collect(),
        );
        crash::point("done");
        Ok(reply)
    }

    fn abort(&self, txn: Txn, why: &str) {
        log::warn!("generation {}: {why}: nothing applied", txn.generation);
        if let Ok(ctx) = self.ctx() {
            let _ = journal::clear_staging(&ctx.state);
            self.record_failure(
                &fail(Code::Peer, format!("{why}: nothing applied")),
                txn.generation,
                txn.started,
            );
        }
    }

    fn record_failure(&self, err: &anyhow::Error, generation: u64, started: Instant) {
        let Ok(ctx) = self.ctx() else { return };
        let run = Run {
            at: now_secs().saturating_sub(started.elapsed().as_secs()),
            duration_ms: started.elapsed().as_millis() as u64,
            ok: false,
            code: code_of(err).as_u8(),
            error: Some(format!("{err:#}")),
            generation,
            ..Default::default()
        };
        if let Err(e) = ctx.state.record(&run) {
            log::warn!("cannot record the sync status: {e:#}");
        }
    }

    /// Tell the role engine that files changed (`ns-ha-role sync-applied`).
    /// Its failure does not undo the sync; it is logged and shown in status.
    fn run_hook(&self, paths: &[String]) {
        let Ok(ctx) = self.ctx() else { return };
        let outcome = match tool_path("ns-ha-role") {
            Ok(tool) if tool.exists() => {
                let mut args = self.root.tool_args();
                args.push("sync-applied".into());
                // Name what changed; too many names: let it reload everything.
                if paths.len() <= MAX_HOOK_PATHS {
                    for p in paths {
                        args.push("--changed".into());
                        args.push(p.clone());
                    }
                }
                let timeout = Duration::from_secs(ctx.cluster.sync.hook_timeout_secs.max(1));
                match self.runner.run(&tool.to_string_lossy(), &args, timeout) {
                    Ok(out) if out.success() => "ok".to_string(),
                    Ok(out) => format!("ns-ha-role sync-applied failed: {}", out.reason()),
                    Err(e) => format!("ns-ha-role sync-applied failed: {e:#}"),
                }
            }
            Ok(tool) => format!("{} is not installed: services not reloaded", tool.display()),
            Err(e) => format!("cannot locate ns-ha-role: {e:#}"),
        };
        if outcome != "ok" {
            log::warn!("{outcome}");
        }
        if let Err(e) = ctx.state.record_hook(&outcome) {
            log::warn!("cannot record the hook outcome: {e:#}");
        }
    }
}

/// Read exactly `size` bytes, hashing them and writing them to `file` until a
/// write fails. A short stream is an error (the channel is broken); a write
/// error is returned for the transaction to fail.
fn receive_blob<R: Read>(
    r: &mut R,
    size: u64,
    mut file: Option<fs::File>,
) -> Result<(Option<fs::File>, Option<std::io::Error>, String)> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = size;
    let mut write_err = None;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = r.read(&mut buf[..want]).context("receiving file data")?;
        if n == 0 {
            return Err(fail(
                Code::Peer,
                format!("stream ended after {} of {size} bytes", size - left),
            ));
        }
        hasher.update(&buf[..n]);
        if write_err.is_none() {
            if let Some(f) = file.as_mut() {
                if let Err(e) = f.write_all(&buf[..n]) {
                    write_err = Some(e);
                }
            }
        }
        left -= n as u64;
    }
    Ok((file, write_err, hex(&hasher.finalize())))
}

/// Fresh staging directory, on the same filesystem as every target, with room.
fn prepare_staging<'p>(
    root: &NodeRoot,
    state: &StateDir,
    targets: impl Iterator<Item = &'p String>,
    bytes: u64,
) -> Result<()> {
    journal::clear_staging(state)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state.staging())
        .with_context(|| format!("creating {}", state.staging().display()))?;
    let dev = fs::metadata(state.staging())?.dev();
    let mut checked: BTreeSet<PathBuf> = BTreeSet::new();
    for t in targets {
        let Some(parent) = root.path(t).parent().map(Path::to_path_buf) else {
            continue;
        };
        if !checked.insert(parent.clone()) {
            continue;
        }
        let existing = parent
            .ancestors()
            .find(|a| a.exists())
            .unwrap_or(root.base());
        if fs::metadata(existing)?.dev() != dev {
            return Err(fail(
                Code::Config,
                format!(
                    "{t} is on another filesystem than the staging dir {}: set sync.state_dir to a directory on the same filesystem as the synced files",
                    state.staging().display()
                ),
            ));
        }
    }
    let vfs = nix::sys::statvfs::statvfs(&state.staging()).context("checking free space")?;
    let free = vfs.blocks_available() as u64 * vfs.fragment_size() as u64;
    if bytes > free {
        return Err(fail(
            Code::Failure,
            format!(
                "{bytes} bytes to stage but only {free} free in {}",
                state.staging().display()
            ),
        ));
    }
    Ok(())
}

/// The ordered operations and the new baseline of a fully staged transaction.
fn build_journal(root: &NodeRoot, state: &StateDir, txn: &mut Txn) -> Result<Journal> {
    let mut ops = Vec::new();
    let mut deletes: Vec<&String> = txn
        .deletes
        .iter()
        .filter(|d| !txn.kept.contains(*d))
        .collect();
    // Deepest first, so directories are empty when their turn comes.
    deletes.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    for d in &deletes {
        match fs::symlink_metadata(root.path(d)) {
            Ok(m) if m.file_type().is_dir() => ops.push(Op::DeleteDir {
                path: d.to_string(),
            }),
            Ok(_) => ops.push(Op::DeleteFile {
                path: d.to_string(),
            }),
            Err(_) => {}
        }
    }
    let applied: Vec<&Change> = txn
        .changes
        .values()
        .filter(|c| !txn.kept.contains(&c.path))
        .collect();
    for c in applied.iter().filter(|c| c.entry.kind == Kind::Dir) {
        ops.push(Op::EnsureDir {
            path: c.path.clone(),
            mode: c.entry.mode,
            uid: c.entry.uid,
            gid: c.entry.gid,
        });
    }
    for (i, c) in applied
        .iter()
        .enumerate()
        .filter(|(_, c)| c.entry.kind != Kind::Dir)
    {
        let e = &c.entry;
        if c.data {
            let staged = txn
                .staged
                .get(&c.path)
                .ok_or_else(|| fail(Code::Failure, format!("{} was not staged", c.path)))?;
            ops.push(Op::Replace {
                path: c.path.clone(),
                staged: staged.clone(),
            });
        } else if e.kind == Kind::Symlink
            && txn.current.get(&c.path).map(|l| &l.target) != Some(&e.target)
        {
            let name = format!("l{i}");
            let link = state.staging().join(&name);
            std::os::unix::fs::symlink(e.target.as_deref().unwrap_or_default(), &link)
                .with_context(|| format!("staging symlink {}", c.path))?;
            std::os::unix::fs::lchown(&link, Some(e.uid), Some(e.gid))
                .with_context(|| format!("chown {}", link.display()))?;
            ops.push(Op::Replace {
                path: c.path.clone(),
                staged: name,
            });
        } else {
            ops.push(Op::Meta {
                path: c.path.clone(),
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                mtime_ns: e.mtime_ns,
                symlink: e.kind == Kind::Symlink,
            });
        }
    }
    // New baseline: what the backup holds once applied. Kept paths keep their
    // old baseline (they stay reported as edited); other edits the sender did
    // not need to change already equal the primary's and are absorbed.
    let mut baseline = std::mem::take(&mut txn.baseline);
    for c in &applied {
        baseline.insert(c.path.clone(), c.entry.clone());
    }
    for d in &deletes {
        baseline.remove(*d);
    }
    for d in &txn.drift {
        if txn.changes.contains_key(&d.path) || txn.deletes.contains(&d.path) {
            continue;
        }
        match txn.current.get(&d.path) {
            Some(e) => baseline.insert(d.path.clone(), e.clone()),
            None => baseline.remove(&d.path),
        };
    }
    Ok(Journal {
        cluster_id: txn.cluster_id.clone(),
        generation: txn.generation,
        ops,
        baseline,
        changed: applied.iter().map(|c| c.path.clone()).collect(),
        deleted: deletes.iter().map(|d| d.to_string()).collect(),
    })
}
