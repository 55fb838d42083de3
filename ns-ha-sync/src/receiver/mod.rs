//! `ns-ha-sync receive`: the backup's end of the sync channel, run by sshd as
//! the forced command of the primary's key.
//!
//! This is the security boundary of the sync. It trusts nothing it is sent:
//! every path is checked against the backup's own rules (no `..`, nothing
//! outside the sync set, never through a symlink), every file's hash is
//! verified before it can become live, the cluster and generation must match,
//! and no shell ever sees remote data. Files are staged, then made live by
//! the journal (see `journal`), so a failed or cut transfer applies nothing.
//!
//! The receiver is split along the steps of a transaction: `request`
//! (`manifest` and `begin`: every announced path and entry checked before any
//! data), `staging` (`file` frames hashed into the staging dir), `commit`
//! (journal, apply, status and the role engine's hook) and `local` (this
//! node's own view of its files, and recovery of an interrupted apply).

mod commit;
mod local;
mod request;
mod staging;

pub use local::{local_view, recover_if_needed, LocalView};

use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use ns_ha_common::cmd::CommandRunner;
use ns_ha_common::config::{load_cluster, load_node, ClusterConfig, Role};
use ns_ha_common::control::{self, CONTROL_OPS};
use ns_ha_common::exit::{code_of, fail, Code};
use ns_ha_common::fsutil::NodeLock;
use ns_ha_common::net::{InterfaceSource, KernelAddresses};
use ns_ha_common::proto::{read_value, write_msg, Reply, UpgradeMessage, UPGRADE_OP};
use ns_ha_common::upgrade::{self, UpgradeReply};
use ns_ha_common::NodeRoot;

use crate::journal;
use crate::manifest::{Change, Drift, Manifest, Stamp};
use crate::rules::SyncSet;
use crate::state::{Applied, Run, StateDir, Status, APPLIED};
use crate::util::now_secs;
use crate::wire::SyncRequest;

/// Largest single file accepted.
pub const MAX_FILE: u64 = 1 << 30;
/// Most changes accepted in one transaction.
pub const MAX_CHANGES: usize = crate::wire::MAX_ENTRIES;
/// Beyond this many changed paths the hook is told nothing (reload everything).
const MAX_HOOK_PATHS: usize = 200;
/// How long a receiver (or a backup's `verify`) waits for another sync on
/// this node to finish.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// An open transaction.
struct Txn {
    _lock: NodeLock,
    started: Instant,
    cluster_id: String,
    generation: u64,
    changes: BTreeMap<String, Change>,
    deletes: Vec<String>,
    kept: BTreeSet<String>,
    /// Directories to move aside (`push --force` onto a directory holding
    /// what the sync does not own).
    move_aside: BTreeSet<String>,
    /// What each announced path was when the manifest answer was built.
    stamps: HashMap<String, Stamp>,
    /// Data files still expected: path -> staging name.
    pending: HashMap<String, String>,
    /// Staging names of received files.
    staged: HashMap<String, String>,
    current: Manifest,
    /// `LocalView::baseline`: `None` when it is `current`.
    baseline: Option<Manifest>,
    drift: Vec<Drift>,
    failed: Option<anyhow::Error>,
    files: u64,
    bytes: u64,
    /// Where each file is staged (one dir per filesystem).
    areas: staging::StagingAreas,
    /// Large staged files whose writeback started while they arrived:
    /// waited for (and their errors checked) by the commit.
    writebacks: Vec<(String, staging::Writeback)>,
}

/// The node-side context of a sync op: config, rules, state.
#[derive(Clone)]
struct Ctx {
    cluster: ClusterConfig,
    set: SyncSet,
    state: StateDir,
}

/// The receiver of one channel.
pub struct Receiver<'a> {
    root: NodeRoot,
    runner: &'a dyn CommandRunner,
    /// Where the backup sees its addresses (to refuse a push while it holds
    /// the VIPs); `None`: `ip` through `runner`.
    interfaces: Option<&'a dyn InterfaceSource>,
    /// The cluster named by a successful `hello`.
    greeted: Option<String>,
    txn: Option<Txn>,
    /// The view read by `manifest`, with the lock held since, so that `begin`
    /// does not scan again.
    view: Option<(NodeLock, LocalView)>,
    /// A transaction whose `begin` chunks are still arriving.
    opening: Option<request::Opening>,
    /// A `manifest` reply was sent: its parts follow (with the entries or not).
    parts_due: Option<bool>,
    /// Paths changed by the last commit, for `ns-ha-role sync-applied`.
    hook_due: Option<Vec<String>>,
    /// The copy of a file this backup just signed (`signature`), that the
    /// `delta` which follows rebuilds from: (path, its content).
    delta_base: Option<(String, Vec<u8>)>,
    /// Where this transaction's time went, since its `manifest` answer
    /// (sent back in the commit reply).
    spans: crate::util::Spans,
    /// The context read by the first sync op of this channel (config files
    /// parsed and rules compiled once per channel, not once per op); a
    /// control op (`install-cluster`) forgets it.
    ctx_cache: std::cell::RefCell<Option<Ctx>>,
    /// `manifest` requests served on this channel.
    manifests: u32,
    /// The scan kept between the pushes of one channel, with the inotify
    /// watches that keep it true (see `local::Receiver::channel_view`).
    live: Option<(crate::watch::Watches, crate::manifest::LiveScan)>,
    /// The hash cache being read since `startup` (file, reader), for the
    /// first `manifest`.
    cache_preload: Option<(
        std::path::PathBuf,
        std::thread::JoinHandle<crate::manifest::HashCache>,
    )>,
}

impl<'a> Receiver<'a> {
    pub fn new(root: NodeRoot, runner: &'a dyn CommandRunner) -> Self {
        Receiver {
            root,
            runner,
            interfaces: None,
            greeted: None,
            txn: None,
            view: None,
            opening: None,
            parts_due: None,
            hook_due: None,
            delta_base: None,
            spans: crate::util::Spans::default(),
            ctx_cache: std::cell::RefCell::new(None),
            manifests: 0,
            live: None,
            cache_preload: None,
        }
    }

    /// Read this node's addresses from `ifs` instead of the kernel (tests).
    pub fn with_interfaces(mut self, ifs: &'a dyn InterfaceSource) -> Self {
        self.interfaces = Some(ifs);
        self
    }

    /// A backup that holds the cluster's VIPs is MASTER: a push would
    /// overwrite the config of the node that carries the traffic, so it is
    /// refused unless the sender says `even_if_backup_is_master`.
    fn refuse_if_master(&self, cluster: &ClusterConfig, forced: bool) -> Result<()> {
        let kernel = KernelAddresses {
            runner: self.runner,
        };
        let ifs: &dyn InterfaceSource = self.interfaces.unwrap_or(&kernel);
        let vips = ns_ha_common::vips::observe(cluster, ifs).map_err(|e| {
            fail(
                Code::State,
                format!("{e:#}: this backup cannot tell whether it holds the VIPs, so it refuses the push; push --even-if-backup-is-master overrides"),
            )
        })?;
        let held: Vec<String> = vips
            .iter()
            .filter(|v| v.held)
            .map(|v| v.vip.addr.to_string())
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        if forced {
            log::warn!(
                "applying a push although this backup holds {} (forced by the sender)",
                held.join(" ")
            );
            return Ok(());
        }
        Err(fail(
            Code::State,
            format!(
                "this backup holds the cluster's VIPs ({}): it is MASTER and refuses the push; let the primary take the VIPs back (e.g. ns-ha-role maintenance on this node), or push --even-if-backup-is-master",
                held.join(" ")
            ),
        ))
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
            if op == UPGRADE_OP {
                // The last request of its channel: after a refusal the
                // blob may be partly unread, so nothing can follow it.
                let reply = match self.upgrade(v, r) {
                    Ok(data) => Reply::ok(data),
                    Err(e) => {
                        log::warn!("{op}: {e:#}");
                        Reply::from_error(&e)
                    }
                };
                write_msg(w, &reply)?;
                return Ok(());
            }
            if op == "file" || op == "files" {
                let received = if op == "file" {
                    self.file(v, r)
                } else {
                    self.files(v, r)
                };
                if let Err(e) = received {
                    let _ = write_msg(w, &Reply::from_error(&e));
                    return Err(e);
                }
                continue;
            }
            if op == "signature" || op == "delta" {
                // Answered, with raw bytes after the reply for `signature`;
                // a broken stream ends the channel.
                if let Err(e) = self.delta_op(&op, v, r, w) {
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
            let ok = reply.ok;
            {
                // The reply and the manifest parts that follow it, in one go.
                let mut batch = crate::util::NoFlush(&mut *w);
                write_msg(&mut batch, &reply)?;
                if let Some(with_entries) = self.parts_due.take() {
                    if ok {
                        self.write_manifest_parts(&mut batch, with_entries)?;
                    }
                }
            }
            w.flush().context("sending a reply")?;
            if op == "manifest" {
                self.spans.mark("backup: manifest answer sent");
            }
            if let Some(paths) = self.hook_due.take() {
                self.run_hook(&paths);
            }
        }
    }

    fn dispatch(&mut self, op: &str, v: serde_json::Value) -> Result<serde_json::Value> {
        if CONTROL_OPS.contains(&op) {
            self.ctx_cache.replace(None);
            self.live = None;
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
            SyncRequest::Begin(req) => {
                let started = Instant::now();
                let generation = req.generation;
                match self.begin(req, started) {
                    Ok(r) => serde_json::to_value(r)?,
                    Err(e) => {
                        self.record_failure(&e, generation, started, (0, 0));
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
                let received = (txn.files, txn.bytes);
                match self.commit(txn) {
                    Ok(r) => serde_json::to_value(r)?,
                    Err(e) => {
                        self.record_failure(&e, generation, started, received);
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
            SyncRequest::InSync { generation } => {
                self.record_in_sync(generation)?;
                serde_json::Value::Null
            }
            SyncRequest::Status => {
                let ctx = self.ctx()?;
                let mut st: Status = ctx.state.current_status()?;
                st.generation = ctx
                    .state
                    .read::<Applied>(APPLIED)?
                    .unwrap_or_default()
                    .generation;
                serde_json::to_value(st)?
            }
            SyncRequest::File { .. }
            | SyncRequest::Files { .. }
            | SyncRequest::Signature { .. }
            | SyncRequest::Delta { .. } => {
                return Err(fail(Code::Peer, format!("{op} frame out of place")))
            }
        })
    }

    /// `upgrade`: a package from the primary, installed by the package
    /// manager if its hash is the declared one (see `ns_ha_common::upgrade`).
    fn upgrade<R: Read>(&mut self, v: serde_json::Value, r: &mut R) -> Result<UpgradeReply> {
        let UpgradeMessage::Upgrade(req) = serde_json::from_value(v)
            .map_err(|e| fail(Code::Peer, format!("malformed upgrade request: {e}")))?;
        upgrade::receive(&self.root, self.runner, &req, r)
    }

    /// This node must be a backup of the cluster greeted on this channel.
    fn ctx(&self) -> Result<Ctx> {
        if let Some(ctx) = self.ctx_cache.borrow().as_ref() {
            return Ok(ctx.clone());
        }
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
        let ctx = Ctx {
            cluster,
            set,
            state,
        };
        self.ctx_cache.replace(Some(ctx.clone()));
        Ok(ctx)
    }

    /// The sender found nothing to send: record a successful attempt that
    /// changed nothing, at the generation this backup holds (under the lock
    /// `manifest` took, so no transaction runs meanwhile).
    fn record_in_sync(&mut self, sender_generation: u64) -> Result<()> {
        let ctx = self.ctx()?;
        let Some((_lock, view)) = self.view.take() else {
            return Err(fail(Code::Peer, "'in-sync' without a 'manifest' before it"));
        };
        if sender_generation != view.applied.generation {
            log::warn!(
                "the sender found nothing to send at generation {sender_generation}, this backup holds {}",
                view.applied.generation
            );
        }
        let run = Run {
            at: now_secs(),
            ok: true,
            generation: view.applied.generation,
            ..Default::default()
        };
        ctx.state.record(&run)
    }

    /// Record a failed run; `received` is (files, bytes) received so far.
    fn record_failure(
        &self,
        err: &anyhow::Error,
        generation: u64,
        started: Instant,
        received: (u64, u64),
    ) {
        let Ok(ctx) = self.ctx() else { return };
        let run = Run {
            at: now_secs().saturating_sub(started.elapsed().as_secs()),
            duration_ms: started.elapsed().as_millis() as u64,
            ok: false,
            code: code_of(err).as_u8(),
            error: Some(format!("{err:#}")),
            generation,
            files: received.0,
            bytes: received.1,
            ..Default::default()
        };
        if let Err(e) = ctx.state.record(&run) {
            log::warn!("cannot record the sync status: {e:#}");
        }
    }
}

/// Finish or discard an interrupted apply (`journal::recover`) and record the
/// run it interrupted as failed, with what recovery did about it (and the
/// paths it kept), so `status` never shows the run before it as the last
/// attempt. The caller holds the sync lock.
pub fn recover_and_record(
    root: &NodeRoot,
    set: &SyncSet,
    state: &StateDir,
) -> Result<journal::Recovery> {
    // Read first: recovery may record a run of its own, which closes the marker.
    let marker = state.attempt();
    let r = journal::recover(root, set, state)?;
    let mut notes = Vec::new();
    match (r.completed, r.discarded) {
        (Some(g), _) => notes.push(format!("recovery completed the apply of generation {g}")),
        (None, true) => {
            notes.push("recovery discarded its uncommitted transfer: nothing applied".into())
        }
        (None, false) => {}
    }
    if let Some(k) = r.kept.first() {
        notes.push(format!(
            "kept {} path(s) as this backup has them (first: {}: {}); push --force on the primary replaces them",
            r.kept.len(),
            k.path,
            k.reason
        ));
    }
    if marker.is_none() && notes.is_empty() {
        return Ok(r);
    }
    // No marker (an older version, or lost): still on record.
    let mut run = marker.unwrap_or_else(|| Run {
        at: now_secs(),
        generation: r.completed.unwrap_or_default(),
        ..Default::default()
    });
    if !r.kept.is_empty() {
        run.kept = r.kept.iter().map(|k| k.path.clone()).collect();
    }
    let note = notes.join("; ");
    state.record_interrupted(run, (!note.is_empty()).then_some(note.as_str()))?;
    Ok(r)
}
