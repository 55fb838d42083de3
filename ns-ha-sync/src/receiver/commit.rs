//! The last step of a transaction: the journal of a fully staged
//! transaction is written and applied (see `journal`), the run is recorded in
//! the status, and the role engine is told what changed.

use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use ns_ha_common::activate::tool_path;
use ns_ha_common::exit::{fail, Code};
use ns_ha_common::NodeRoot;

use super::{Receiver, Txn, MAX_HOOK_PATHS};
use crate::crash;
use crate::journal::{self, Journal, Op, Seen};
use crate::manifest::{Change, Entry, Kind};
use crate::state::Run;
use crate::util::now_secs;
use crate::wire::CommitReply;

impl Receiver<'_> {
    pub(super) fn commit(&mut self, mut txn: Txn) -> Result<CommitReply> {
        self.spans.mark("backup: file data staged (and waiting)");
        let ctx = self.ctx()?;
        let fail_txn = |e: anyhow::Error| -> Result<CommitReply> {
            let _ = journal::clear_staging(&ctx.state);
            Err(e)
        };
        for (path, wb) in std::mem::take(&mut txn.writebacks) {
            if let Some(e) = wb.finish() {
                let e = anyhow::Error::from(e).context(format!("staging {path}"));
                txn.failed.get_or_insert(e);
            }
        }
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
        let journal = match build_journal(&self.root, &mut txn) {
            Ok(j) => j,
            Err(e) => return fail_txn(e),
        };
        self.spans.mark("backup: journal built");
        let (changed, deleted) = (journal.changed.clone(), journal.deleted.clone());
        let outcome = journal::commit(&self.root, &ctx.set, &ctx.state, journal, &mut self.spans)?;
        // Paths the apply kept (edited during the push, or not applicable)
        // are reported with those kept at begin.
        let late: BTreeSet<&str> = outcome.kept.iter().map(|k| k.path.as_str()).collect();
        let mut kept = txn.kept.clone();
        kept.extend(late.iter().map(|p| p.to_string()));
        for (path, to) in &outcome.moved_aside {
            log::warn!("{path} held what the sync does not own: moved aside to {to}");
        }
        let reply = CommitReply {
            generation: txn.generation,
            files: txn.files,
            bytes: txn.bytes,
            changed: changed
                .iter()
                .filter(|p| !late.contains(p.as_str()))
                .count() as u64,
            deleted: deleted
                .iter()
                .filter(|p| !late.contains(p.as_str()))
                .count() as u64,
            kept: kept.into_iter().collect(),
            timings: Vec::new(),
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
            interrupted: false,
        };
        if let Err(e) = ctx.state.record(&run) {
            log::warn!("cannot record the sync status: {e:#}");
        }
        self.spans.mark("backup: status recorded");
        let mut reply = reply;
        reply.timings = std::mem::take(&mut self.spans.steps);
        log::info!(
            "applied generation {} from the primary: {} changed, {} deleted, {} kept",
            txn.generation,
            reply.changed,
            reply.deleted,
            reply.kept.len()
        );
        self.hook_due = Some(
            changed
                .iter()
                .chain(&deleted)
                .filter(|p| !late.contains(p.as_str()))
                .cloned()
                .collect(),
        );
        crash::point("done");
        Ok(reply)
    }

    pub(super) fn abort(&self, txn: Txn, why: &str) {
        log::warn!("generation {}: {why}: nothing applied", txn.generation);
        if let Ok(ctx) = self.ctx() {
            let _ = journal::clear_staging(&ctx.state);
            self.record_failure(
                &fail(Code::Peer, format!("{why}: nothing applied")),
                txn.generation,
                txn.started,
                (txn.files, txn.bytes),
            );
        }
    }
    /// Tell the role engine that files changed (`ns-ha-role sync-applied`).
    /// Its failure does not undo the sync; it is logged and shown in status.
    pub(super) fn run_hook(&self, paths: &[String]) {
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

/// The ordered operations and the new baseline of a fully staged transaction.
fn build_journal(root: &NodeRoot, txn: &mut Txn) -> Result<Journal> {
    let mut ops = Vec::new();
    let mut deletes: Vec<&String> = txn
        .deletes
        .iter()
        .filter(|d| !txn.kept.contains(*d))
        .collect();
    // Deepest first, so directories are empty when their turn comes.
    deletes.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    // A directory holding what the sync does not own is moved aside, out of
    // the state dir's reach of the sync set, never deleted with it.
    let aside = |path: &str| Op::MoveAside {
        path: path.to_string(),
        to: format!("displaced/{}-{}{path}", txn.generation, now_secs()),
    };
    for d in &deletes {
        match fs::symlink_metadata(root.path(d)) {
            Ok(_) if txn.move_aside.contains(*d) => ops.push(aside(d)),
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
    for c in applied.iter().filter(|c| txn.move_aside.contains(&c.path)) {
        ops.push(aside(&c.path));
    }
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
                area: txn.areas.other_of(&c.path),
            });
        } else if e.kind == Kind::Symlink
            && txn.current.get(&c.path).map(|l| &l.target) != Some(&e.target)
        {
            let name = format!("l{i}");
            let link = txn.areas.dir_of(&c.path).join(&name);
            std::os::unix::fs::symlink(e.target.as_deref().unwrap_or_default(), &link)
                .with_context(|| format!("staging symlink {}", c.path))?;
            std::os::unix::fs::lchown(&link, Some(e.uid), Some(e.gid))
                .with_context(|| format!("chown {}", link.display()))?;
            ops.push(Op::Replace {
                path: c.path.clone(),
                staged: name,
                area: txn.areas.other_of(&c.path),
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
    // Each op first checks its path is still what the manifest answer saw.
    let seen = ops
        .iter()
        .map(|op| {
            let p = op.path();
            let s = Seen {
                stamp: txn.stamps.get(p).copied(),
                entry: txn.current.get(p).cloned(),
            };
            (p.to_string(), s)
        })
        .collect();
    // Edits the sender did not need to change already equal the primary's
    // and are absorbed (kept paths keep their old baseline: they stay
    // reported as edited).
    let absorbed: Vec<(String, Option<Entry>)> = txn
        .drift
        .iter()
        .filter(|d| !txn.changes.contains_key(&d.path) && !txn.deletes.contains(&d.path))
        .map(|d| (d.path.clone(), txn.current.get(&d.path).cloned()))
        .collect();
    // New baseline: what the backup holds once applied. When the files were
    // as the last apply left them it is this scan, taken, not copied (the
    // transaction ends here).
    let mut baseline = txn
        .baseline
        .take()
        .unwrap_or_else(|| std::mem::take(&mut txn.current));
    for c in &applied {
        baseline.insert(c.path.clone(), c.entry.clone());
    }
    for d in &deletes {
        baseline.remove(*d);
    }
    for (path, entry) in absorbed {
        match entry {
            Some(e) => baseline.insert(path, e),
            None => baseline.remove(&path),
        };
    }
    Ok(Journal {
        seen,
        cluster_id: txn.cluster_id.clone(),
        generation: txn.generation,
        ops,
        baseline,
        baseline_sha256: None,
        changed: applied.iter().map(|c| c.path.clone()).collect(),
        deleted: deletes.iter().map(|d| d.to_string()).collect(),
    })
}
