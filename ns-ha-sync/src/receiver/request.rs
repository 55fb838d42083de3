//! The checking steps of a transaction: `manifest` (the backup's view, with
//! the lock taken for the `begin` that follows) and `begin`, which checks
//! every announced path and entry against this backup's own rules before any
//! data is accepted, and plans type changes (a directory replaced by a file
//! and the reverse) so that the apply never meets a directory it cannot
//! remove.
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
use ns_ha_common::proto::{write_msg, write_packed, Reply, CHUNK_BYTES};
use ns_ha_common::NodeRoot;

use super::staging::prepare_staging;
use super::{recover_and_record, Ctx, LocalView, Receiver, Txn, LOCK_WAIT, MAX_CHANGES, MAX_FILE};
use crate::crash;
use crate::journal::check_ancestors_except;
use crate::manifest::{Change, Entry, Kind, Manifest, Stamp};
use crate::rules::{check_path, disk_node, Node, Origin};
use crate::state::Run;
use crate::util::now_secs;
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
    even_if_backup_is_master: bool,
    drifted: HashSet<String>,
    changes: BTreeMap<String, Change>,
    deletes: BTreeSet<String>,
    kept: BTreeSet<String>,
}

impl Receiver<'_> {
    pub(super) fn manifest(&mut self, known_digest: Option<String>) -> Result<ManifestReply> {
        let ctx = self.ctx()?;
        // The open transaction holds the sync lock: waiting for it would
        // only stall this channel.
        if self.txn.is_some() {
            return Err(fail(
                Code::Peer,
                "manifest while a transaction is open on this channel: refused",
            ));
        }
        self.view = None;
        self.opening = None;
        self.spans = crate::util::Spans::default();
        let lock = ctx.state.lock(LOCK_WAIT)?;
        recover_and_record(&self.root, &ctx.set, &ctx.state)?;
        self.spans.mark("backup: config, lock, recovery check");
        let view = self.channel_view(&ctx.set, &ctx.state)?;
        self.spans.mark("backup: view of its files");
        let d = view.digest.clone();
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
            return write_msg(w, &Reply::ok(ManifestPart::default()));
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
                write_packed(w, &Reply::ok(&part))?;
                part.entries.clear();
                size = 0;
            }
        }
        for d in &view.drift {
            size += encoded_len(d);
            part.drift.push(d.clone());
            if size >= CHUNK_BYTES {
                write_packed(w, &Reply::ok(&part))?;
                part.entries.clear();
                part.drift.clear();
                size = 0;
            }
        }
        part.more = false;
        write_packed(w, &Reply::ok(&part))
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
            even_if_backup_is_master,
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
        if self.opening.is_none() {
            self.spans.mark("backup: waiting for begin");
        }
        let ctx = self.ctx()?;
        let mut o = match self.opening.take() {
            Some(o) => {
                let header = (
                    o.generation,
                    o.base_generation,
                    o.force,
                    o.even_if_backup_is_master,
                );
                if o.cluster_id != cluster_id
                    || header != (generation, base_generation, force, even_if_backup_is_master)
                {
                    return Err(fail(
                        Code::Peer,
                        "a begin chunk does not match the transaction it continues",
                    ));
                }
                o
            }
            None => {
                let header = (generation, base_generation, force, even_if_backup_is_master);
                self.open(&ctx, cluster_id, header, started)?
            }
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
        let deletes: Vec<String> = o.deletes.into_iter().collect();
        let (changes, view, mut kept) = (o.changes, o.view, o.kept);
        let move_aside =
            plan_type_changes(&self.root, &ctx, &changes, &deletes, &mut kept, o.force)?;
        check_links(&self.root, &ctx, &view, &changes, &deletes, &kept)?;
        let total: u64 = changes
            .values()
            .filter(|c| c.data && !kept.contains(&c.path))
            .map(|c| c.entry.size)
            .sum();
        let mut stamps = HashMap::new();
        for p in changes.keys().chain(&deletes) {
            if let Some(st) = view.stamps.get(p) {
                stamps.insert(p.clone(), *st);
            } else if let Ok(md) = std::fs::symlink_metadata(self.root.path(p)) {
                // Not met by the scan (nothing the sync holds): as it is now.
                stamps.insert(p.clone(), Stamp::of(&md));
            }
        }
        let staged_bytes = |c: &Change| {
            if c.data && !kept.contains(&c.path) {
                c.entry.size
            } else {
                0
            }
        };
        let areas = prepare_staging(
            &self.root,
            &ctx.state,
            changes.iter().map(|(p, c)| (p, staged_bytes(c))),
        )?;
        let mut pending = HashMap::new();
        for (i, (p, c)) in changes.iter().enumerate() {
            if c.data && !kept.contains(p) {
                pending.insert(p.clone(), format!("{i}"));
            }
        }
        let kept_list: Vec<String> = kept.iter().cloned().collect();
        // Until commit or abort records this run, the marker says it was cut.
        let marker = Run {
            at: now_secs().saturating_sub(o.started.elapsed().as_secs()),
            generation: o.generation,
            files: pending.len() as u64,
            bytes: total,
            changed: (changes.len() - kept.len().min(changes.len())) as u64,
            deleted: deletes.len() as u64,
            kept: kept_list.clone(),
            ..Default::default()
        };
        ctx.state.mark_attempt(&marker)?;
        self.txn = Some(Txn {
            _lock: o.lock,
            started: o.started,
            cluster_id: o.cluster_id,
            generation: o.generation,
            changes,
            deletes,
            kept,
            move_aside,
            stamps,
            pending,
            staged: HashMap::new(),
            current: view.current,
            baseline: view.baseline,
            drift: view.drift,
            failed: None,
            files: 0,
            bytes: 0,
            areas,
            writebacks: Vec::new(),
        });
        self.spans
            .mark("backup: begin (checks, staging dirs, attempt marker)");
        crash::point("begin");
        Ok(BeginReply { kept: kept_list })
    }

    /// The first `begin` chunk: cluster, generation and base checked against
    /// the view (`manifest`'s, or read now under the lock).
    fn open(
        &mut self,
        ctx: &Ctx,
        cluster_id: String,
        (generation, base_generation, force, even_if_backup_is_master): (u64, u64, bool, bool),
        started: Instant,
    ) -> Result<Opening> {
        ns_ha_common::control::refuse_other_cluster(&ctx.cluster.cluster_id, &cluster_id)?;
        self.refuse_if_master(&ctx.cluster, even_if_backup_is_master)?;
        let (lock, view) = match self.view.take() {
            Some(v) => v,
            None => {
                let lock = ctx.state.lock(LOCK_WAIT)?;
                recover_and_record(&self.root, &ctx.set, &ctx.state)?;
                (lock, self.channel_view(&ctx.set, &ctx.state)?)
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
            even_if_backup_is_master,
            changes: BTreeMap::new(),
            deletes: BTreeSet::new(),
            kept: BTreeSet::new(),
        })
    }

    /// One announced change: its path, its entry, and whether data was
    /// announced where it must (and only there). Symlink targets are checked
    /// by `check_links` once every chunk is in.
    fn check_change(&self, ctx: &Ctx, o: &Opening, c: &Change) -> Result<()> {
        self.check_target(ctx, &c.path)?;
        let e = &c.entry;
        if !e.well_formed() {
            return Err(fail(
                Code::Peer,
                format!("entry of {} is malformed", c.path),
            ));
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

    /// A path the sender wants to write or delete: well-formed, synced here
    /// (announced once: checked by the caller; its parents by
    /// `plan_type_changes`).
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
        Ok(())
    }
}

/// The strict ancestors of a node path, outermost first.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/')
        .map(|(i, _)| &path[..i])
        .filter(|a| !a.is_empty())
}

fn is_dir_here(root: &NodeRoot, path: &str) -> bool {
    std::fs::symlink_metadata(root.path(path)).is_ok_and(|m| m.is_dir())
}

/// Paths that change type. Every parent of a target must be a real
/// directory here, or become one in this transaction (a file replaced by a
/// directory); below such a parent that is kept, everything is kept. A
/// directory that must go (replaced by a file or link, or deleted) but holds
/// what this transaction does not remove (a kept edit, a path this backup
/// does not list, a local symlink) is kept, or with `force` moved aside: the
/// directories to move aside.
fn plan_type_changes(
    root: &NodeRoot,
    ctx: &Ctx,
    changes: &BTreeMap<String, Change>,
    deletes: &[String],
    kept: &mut BTreeSet<String>,
    force: bool,
) -> Result<BTreeSet<String>> {
    let becomes_dir = |p: &str| changes.get(p).is_some_and(|c| c.entry.kind == Kind::Dir);
    for p in changes.keys().chain(deletes) {
        check_ancestors_except(root, &ctx.set, p, &becomes_dir)?;
    }
    let below_kept: Vec<String> = changes
        .keys()
        .chain(deletes)
        .filter(|p| {
            ancestors(p).any(|a| kept.contains(a) && becomes_dir(a) && !is_dir_here(root, a))
        })
        .cloned()
        .collect();
    kept.extend(below_kept);
    let gone: BTreeSet<&str> = deletes
        .iter()
        .filter(|d| !kept.contains(*d))
        .map(String::as_str)
        .collect();
    let mut move_aside = BTreeSet::new();
    let must_go = changes
        .values()
        .filter(|c| c.entry.kind != Kind::Dir)
        .map(|c| &c.path)
        .chain(deletes);
    let mut newly_kept = Vec::new();
    for p in must_go.filter(|p| !kept.contains(*p) && is_dir_here(root, p)) {
        let Some(left) = leftover(root, p, &gone) else {
            continue;
        };
        if force {
            log::warn!("{p} holds {left}, which the sync does not remove: moving it aside");
            move_aside.insert(p.clone());
        } else {
            log::warn!("{p} holds {left}, which the sync does not remove: kept (push --force moves it aside)");
            newly_kept.push(p.clone());
        }
    }
    kept.extend(newly_kept);
    Ok(move_aside)
}

/// Something under the directory `dir` that `gone` does not remove, if any.
fn leftover(root: &NodeRoot, dir: &str, gone: &BTreeSet<&str>) -> Option<String> {
    for item in walkdir::WalkDir::new(root.path(dir))
        .follow_links(false)
        .min_depth(1)
    {
        let Ok(item) = item else {
            return Some(format!("{dir}/... (unreadable)"));
        };
        let rel = item.path().strip_prefix(root.base()).unwrap_or(item.path());
        let node_path = format!("/{}", rel.to_string_lossy().trim_start_matches('/'));
        if !gone.contains(node_path.as_str()) {
            return Some(node_path);
        }
    }
    None
}

/// Every announced symlink, and every symlink already here, must lead inside
/// the sync set once the transaction is applied (resolved through the links
/// as they will be). A link here that already led outside before is this
/// backup's own business: only a link this transaction makes lead outside is refused.
fn check_links(
    root: &NodeRoot,
    ctx: &Ctx,
    view: &LocalView,
    changes: &BTreeMap<String, Change>,
    deletes: &[String],
    kept: &BTreeSet<String>,
) -> Result<()> {
    let applied: HashMap<&str, &Entry> = changes
        .iter()
        .filter(|(p, _)| !kept.contains(*p))
        .map(|(p, c)| (p.as_str(), &c.entry))
        .collect();
    let gone: BTreeSet<&str> = deletes
        .iter()
        .filter(|d| !kept.contains(*d))
        .map(String::as_str)
        .collect();
    let mut after = |p: &str| -> Node {
        if let Some(e) = applied.get(p) {
            return match e.kind {
                Kind::Dir => Node::Dir,
                Kind::File => Node::Other,
                Kind::Symlink => Node::Link(e.target.clone().unwrap_or_default()),
            };
        }
        if gone.contains(p) || ancestors(p).any(|a| gone.contains(a)) {
            return Node::Absent;
        }
        disk_node(root, p)
    };
    for c in changes.values().filter(|c| c.entry.kind == Kind::Symlink) {
        let t = c.entry.target.as_deref().unwrap_or_default();
        if let Err(why) = ctx.set.contain_link(&c.path, t, &mut after) {
            return Err(fail(
                Code::Security,
                format!("symlink {} -> {t} refused: {why}", c.path),
            ));
        }
    }
    let here = view.current.iter().filter(|(p, e)| {
        e.kind == Kind::Symlink && !changes.contains_key(*p) && !gone.contains(p.as_str())
    });
    for (p, e) in here {
        let t = e.target.as_deref().unwrap_or_default();
        if let Err(why) = ctx.set.contain_link(p, t, &mut after) {
            if ctx
                .set
                .contain_link(p, t, &mut |q| disk_node(root, q))
                .is_ok()
            {
                return Err(fail(
                    Code::Security,
                    format!("refused: the transaction would make the symlink {p} -> {t} lead outside the sync set ({why})"),
                ));
            }
        }
    }
    Ok(())
}
