//! The checking steps of a transaction: `manifest` (the backup's view, with
//! the lock taken for the `begin` that follows) and `begin`, which checks
//! every announced path and entry against this backup's own rules before any
//! data is accepted.

use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use ns_ha_common::exit::{fail, Code};

use super::staging::prepare_staging;
use super::{local_view, recover_and_record, Ctx, Receiver, Txn, LOCK_WAIT, MAX_CHANGES, MAX_FILE};
use crate::crash;
use crate::journal::check_ancestors;
use crate::manifest::{digest, Kind};
use crate::rules::{check_path, resolve_link, Origin};
use crate::state::Run;
use crate::util::now_secs;
use crate::wire::{BeginReply, BeginRequest, ManifestReply};

impl Receiver<'_> {
    pub(super) fn manifest(&mut self, known_digest: Option<String>) -> Result<ManifestReply> {
        let ctx = self.ctx()?;
        self.view = None;
        let lock = ctx.state.lock(LOCK_WAIT)?;
        recover_and_record(&self.root, &ctx.set, &ctx.state)?;
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

    /// Open a transaction once every announced change and deletion passed
    /// the checks; `started` is when the request arrived (for the status).
    pub(super) fn begin(&mut self, req: BeginRequest, started: Instant) -> Result<BeginReply> {
        let BeginRequest {
            cluster_id,
            generation,
            base_generation,
            force,
            even_if_backup_is_master,
            changes,
            deletes,
        } = req;
        let cluster_id = cluster_id.as_str();
        if self.txn.is_some() {
            return Err(fail(
                Code::Peer,
                "a transaction is already open on this channel",
            ));
        }
        let ctx = self.ctx()?;
        ns_ha_common::control::refuse_other_cluster(&ctx.cluster.cluster_id, cluster_id)?;
        self.refuse_if_master(&ctx.cluster, even_if_backup_is_master)?;
        if changes.len() + deletes.len() > MAX_CHANGES {
            return Err(fail(Code::Security, "too many changes in one transaction"));
        }
        let (lock, view) = match self.view.take() {
            Some(v) => v,
            None => {
                let lock = ctx.state.lock(LOCK_WAIT)?;
                recover_and_record(&self.root, &ctx.set, &ctx.state)?;
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
        let staged_bytes = |c: &crate::manifest::Change| {
            if c.data && !kept.contains(&c.path) {
                c.entry.size
            } else {
                0
            }
        };
        let areas = prepare_staging(
            &self.root,
            &ctx.state,
            change_map.iter().map(|(p, c)| (p, staged_bytes(c))),
        )?;
        let mut pending = HashMap::new();
        for (i, (p, c)) in change_map.iter().enumerate() {
            if c.data && !kept.contains(p) {
                pending.insert(p.clone(), format!("{i}"));
            }
        }
        // Until commit or abort records this run, the marker says it was cut.
        let marker = Run {
            at: now_secs().saturating_sub(started.elapsed().as_secs()),
            generation,
            files: pending.len() as u64,
            bytes: total,
            changed: (change_map.len() - kept.len().min(change_map.len())) as u64,
            deleted: deletes.len() as u64,
            kept: kept.iter().cloned().collect(),
            ..Default::default()
        };
        ctx.state.mark_attempt(&marker)?;
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
            areas,
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
        if !seen.insert(path.to_string()) {
            return Err(fail(Code::Peer, format!("{path} announced twice")));
        }
        check_ancestors(&self.root, &ctx.set, path)
    }
}
