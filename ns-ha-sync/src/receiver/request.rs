//! The checking steps of a transaction: `manifest` (the backup's view, with
//! the lock taken for the `begin` that follows) and `begin`, which checks
//! every announced path and entry against this backup's own rules before any
//! data is accepted.
//!
//! Both stream: the manifest goes out in parts and `begin` comes in chunks
//! of about `CHUNK_BYTES` each, checked as they arrive, so no frame and no
//! copy of a request grows with the tree (the memory bound of the README).

use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::time::Instant;

use ns_ha_common::exit::{fail, Code};
use ns_ha_common::fsutil::NodeLock;
use ns_ha_common::proto::{write_msg, CHUNK_BYTES};

use super::staging::prepare_staging;
use super::{local_view, Ctx, LocalView, Receiver, Txn, LOCK_WAIT, MAX_CHANGES, MAX_FILE};
use crate::crash;
use crate::journal::{self, check_ancestors};
use crate::manifest::{digest, Change, Kind, Manifest};
use crate::rules::{check_path, resolve_link, Origin};
use crate::wire::{encoded_len, BeginReply, BeginRequest, ManifestPart, ManifestReply};

/// A transaction whose `begin` chunks are still arriving: everything
/// announced so far, checked, with the lock and the view taken by the first.
pub(super) struct Opening {
    lock: NodeLock,
    view: LocalView,
    started: Instant,
    cluster_id: String,
    generation: u64,
    base_generation: u64,
    force: bool,
    drifted: HashSet<String>,
    changes: BTreeMap<String, Change>,
    deletes: BTreeSet<String>,
    kept: BTreeSet<String>,
    /// Bytes of data to stage.
    total: u64,
}

impl Receiver<'_> {
    pub(super) fn manifest(&mut self, known_digest: Option<String>) -> Result<ManifestReply> {
        let ctx = self.ctx()?;
        self.view = None;
        self.opening = None;
        let lock = ctx.state.lock(LOCK_WAIT)?;
        journal::recover(&self.root, &ctx.set, &ctx.state)?;
        let view = local_view(&self.root, &ctx.set, &ctx.state)?;
        let d = digest(&view.current);
        let with_entries = known_digest.as_deref() != Some(d.as_str());
        // Entries and drift follow in parts (see `write_manifest_parts`), so
        // no frame grows with the tree.
        let reply = ManifestReply {
            cluster_id: view.applied.cluster_id.clone(),
            generation: view.applied.generation,
            entries: with_entries.then(Manifest::new),
            digest: d,
            rules_digest: ctx.set.digest(),
            drift: Vec::new(),
            parts: true,
        };
        self.view = Some((lock, view));
        self.parts_due = Some(with_entries);
        Ok(reply)
    }

    /// After a `manifest` reply: the entries (when asked) and the drift of
    /// the view it read, in frames of about [`CHUNK_BYTES`].
    pub(super) fn write_manifest_parts<W: Write>(
        &self,
        w: &mut W,
        with_entries: bool,
    ) -> Result<()> {
        let Some((_, view)) = self.view.as_ref() else {
            return write_msg(w, &ManifestPart::default());
        };
        let mut part = ManifestPart {
            more: true,
            ..Default::default()
        };
        let mut size = 0;
        let entries = view.current.iter().filter(|_| with_entries);
        for (p, e) in entries {
            size += p.len() + encoded_len(e);
            part.entries.insert(p.clone(), e.clone());
            if size >= CHUNK_BYTES {
                write_msg(w, &part)?;
                part.entries.clear();
                size = 0;
            }
        }
        for d in &view.drift {
            size += encoded_len(d);
            part.drift.push(d.clone());
            if size >= CHUNK_BYTES {
                write_msg(w, &part)?;
                part.entries.clear();
                part.drift.clear();
                size = 0;
            }
        }
        part.more = false;
        write_msg(w, &part)
    }

    /// One `begin` chunk: the first checks the header and takes the lock and
    /// the view; every chunk's paths and entries are checked as they come;
    /// the last (`more: false`) opens the transaction. `started` is when the
    /// first chunk arrived (for the status).
    pub(super) fn begin(&mut self, req: BeginRequest, started: Instant) -> Result<BeginReply> {
        let BeginRequest {
            cluster_id,
            generation,
            base_generation,
            force,
            changes,
            deletes,
            more,
        } = req;
        if self.txn.is_some() {
            return Err(fail(
                Code::Peer,
                "a transaction is already open on this channel",
            ));
        }
        let ctx = self.ctx()?;
        let mut o = match self.opening.take() {
            Some(o) => {
                if (
                    o.cluster_id.as_str(),
                    o.generation,
                    o.base_generation,
                    o.force,
                ) != (cluster_id.as_str(), generation, base_generation, force)
                {
                    return Err(fail(
                        Code::Peer,
                        "a begin chunk does not match the transaction it continues",
                    ));
                }
                o
            }
            None => self.open(
                &ctx,
                cluster_id,
                generation,
                base_generation,
                force,
                started,
            )?,
        };
        if o.changes.len() + o.deletes.len() + changes.len() + deletes.len() > MAX_CHANGES {
            return Err(fail(
                Code::Security,
                format!("more than {MAX_CHANGES} changes in one transaction: refused"),
            ));
        }
        for c in changes {
            self.check_change(&ctx, &o, &c)?;
            if o.deletes.contains(&c.path) || o.changes.contains_key(&c.path) {
                return Err(fail(Code::Peer, format!("{} announced twice", c.path)));
            }
            if !o.force && o.drifted.contains(&c.path) {
                o.kept.insert(c.path.clone());
            } else if c.data {
                o.total = o.total.saturating_add(c.entry.size);
            }
            o.changes.insert(c.path.clone(), c);
        }
        for d in deletes {
            self.check_target(&ctx, &d)?;
            if o.changes.contains_key(&d) || o.deletes.contains(&d) {
                return Err(fail(Code::Peer, format!("{d} announced twice")));
            }
            if !o.force && o.drifted.contains(&d) {
                o.kept.insert(d.clone());
            }
            o.deletes.insert(d);
        }
        if more {
            self.opening = Some(o);
            return Ok(BeginReply::default());
        }
        prepare_staging(&self.root, &ctx.state, o.changes.keys(), o.total)?;
        let mut pending = HashMap::new();
        for (i, (p, c)) in o.changes.iter().enumerate() {
            if c.data && !o.kept.contains(p) {
                pending.insert(p.clone(), format!("{i}"));
            }
        }
        let kept: Vec<String> = o.kept.iter().cloned().collect();
        self.txn = Some(Txn {
            _lock: o.lock,
            started: o.started,
            cluster_id: o.cluster_id,
            generation: o.generation,
            changes: o.changes,
            deletes: o.deletes.into_iter().collect(),
            kept: o.kept,
            pending,
            staged: HashMap::new(),
            current: o.view.current,
            baseline: o.view.baseline,
            drift: o.view.drift,
            failed: None,
            files: 0,
            bytes: 0,
            staging: ctx.state.staging(),
        });
        crash::point("begin");
        Ok(BeginReply { kept })
    }

    /// The first `begin` chunk: cluster, generation and base checked against
    /// the view (`manifest`'s, or read now under the lock).
    fn open(
        &mut self,
        ctx: &Ctx,
        cluster_id: String,
        generation: u64,
        base_generation: u64,
        force: bool,
        started: Instant,
    ) -> Result<Opening> {
        ns_ha_common::control::refuse_other_cluster(&ctx.cluster.cluster_id, &cluster_id)?;
        let (lock, view) = match self.view.take() {
            Some(v) => v,
            None => {
                let lock = ctx.state.lock(LOCK_WAIT)?;
                journal::recover(&self.root, &ctx.set, &ctx.state)?;
                (lock, local_view(&self.root, &ctx.set, &ctx.state)?)
            }
        };
        if let Some(c) = &view.applied.cluster_id {
            ns_ha_common::control::refuse_other_cluster(c, &cluster_id)?;
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
        Ok(Opening {
            drifted: view.drift.iter().map(|d| d.path.clone()).collect(),
            lock,
            view,
            started,
            cluster_id,
            generation,
            base_generation,
            force,
            changes: BTreeMap::new(),
            deletes: BTreeSet::new(),
            kept: BTreeSet::new(),
            total: 0,
        })
    }

    /// One announced change: its path, its entry, its symlink target, and
    /// whether data was announced where it must (and only there).
    fn check_change(&self, ctx: &Ctx, o: &Opening, c: &Change) -> Result<()> {
        self.check_target(ctx, &c.path)?;
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
            let live = o.view.current.get(&c.path);
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
        Ok(())
    }

    /// A path the sender wants to write or delete: well-formed, synced here,
    /// not reached through a symlink (announced once: checked by the caller).
    fn check_target(&self, ctx: &Ctx, path: &str) -> Result<()> {
        check_path(path)?;
        let decision = ctx.set.decide(path);
        if !decision.synced {
            // The identity floor and the per-node configs come first in the
            // rules (common::sync_config), whatever this node's includes say.
            let never = decision
                .rule
                .filter(|r| r.origin == Origin::Never)
                .map(|r| format!(" (never accepted from the primary: {})", r.reason))
                .unwrap_or_default();
            return Err(fail(
                Code::Security,
                format!("{path} refused: outside this backup's sync set{never}"),
            ));
        }
        check_ancestors(&self.root, &ctx.set, path)
    }
}
