//! `ns-ha-role`: the role engine. It brings a node to what its keepalived
//! state asks for (services, cron jobs, tunnel interfaces, conntrackd, the
//! sync push) and keeps it there.
//!
//! keepalived fires events concurrently and out of order, and the incumbent's
//! chain of hook scripts raced and left services stopped. Here the entry
//! points (notify, the FIFO reader, sync-applied) only record the event; one
//! serialized reconciler computes the desired state from the latest event,
//! cross-checked with the VIPs the node really holds, diffs it against what
//! runs, and converges: in parallel, each action with a timeout, failures
//! retried on the next pass and kept in a transition history.

pub mod cron;
pub mod events;
pub mod exec;
pub mod fifo;
pub mod history;
pub mod maintenance;
pub mod plan;
pub mod reconcile;
pub mod status;
#[cfg(test)]
mod testkit;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ns_ha_common::activate::tool_path;
use ns_ha_common::cli::{GlobalArgs, Report, ToolCli};
use ns_ha_common::cmd::{CommandRunner, SystemRunner};
use ns_ha_common::exit::{fail, help_table, Code};
use ns_ha_common::NodeRoot;

use crate::events::{EventStore, NewEvent, Source};
use crate::reconcile::{reconcile, Ctx, PassReport};

/// Role engine of an ns-ha pair: reconcile this node to its keepalived state.
///
/// keepalived calls `notify` (and starts `fifo-reader`); both only record the
/// event and wake one serialized reconciler. `apply` reconciles now (also
/// from cron, to retry failed actions), `status` shows the state and the
/// transition history, `maintenance on|off` hands the VIPs to the peer and
/// back. The desired state of each role is the `roles` section of
/// /etc/ns-ha/cluster.json.
#[derive(Debug, Parser)]
#[command(name = "ns-ha-role", version, after_help = help_table())]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

impl ToolCli for Cli {
    fn global(&self) -> &GlobalArgs {
        &self.global
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// keepalived's generic notify: record the event and reconcile (unless a reconciler runs).
    Notify {
        /// GROUP or INSTANCE.
        #[arg(value_name = "TYPE")]
        scope: String,
        /// Name of the sync group or instance.
        name: String,
        /// MASTER, BACKUP, FAULT or STOP.
        state: String,
        /// Priority (keepalived passes it; unused).
        prio: Option<String>,
    },
    /// Read keepalived's notify FIFO until keepalived closes it (keepalived starts this).
    FifoReader {
        /// The FIFO (default: /run/ns-ha-keepalived.fifo under the root).
        fifo: Option<PathBuf>,
    },
    /// Reconcile now, waiting for a running reconciler; exit 9/11 if an action failed.
    Apply {
        /// How long to wait for another reconciler, in seconds.
        #[arg(long, default_value_t = 120)]
        wait: u64,
    },
    /// Show the keepalived state, the applied state, failing actions and the transition history.
    Status {
        /// How many history entries to show.
        #[arg(long, default_value_t = 10)]
        history: usize,
    },
    /// Demote this node (on) or restore it (off); persists across reboots.
    Maintenance {
        #[arg(value_enum)]
        mode: MaintenanceMode,
        /// Seconds to wait for the VIPs to move (0: do not wait).
        #[arg(long, default_value_t = 15)]
        wait: u64,
    },
    /// Called by `ns-ha-sync receive` after a sync was applied on this node.
    SyncApplied {
        /// A node path the sync changed (repeatable; none: reload everything).
        #[arg(long = "changed", value_name = "PATH")]
        changed: Vec<String>,
    },
    /// Print the default roles section of cluster.json.
    Defaults,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MaintenanceMode {
    On,
    Off,
}

/// Parse arguments, run, print errors once; the binary's whole `main`.
pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    ns_ha_common::cli::main("ns-ha-role", args, |cli: Cli| run(cli, &SystemRunner))
}

/// The document of commands that reconcile: the passes they ran.
fn passes_json(reports: &[PassReport]) -> Result<serde_json::Value> {
    Ok(serde_json::json!({ "passes": serde_json::to_value(reports)? }))
}

/// The error `apply` ends with when actions failed: Timeout if one timed out.
fn failures_error(reports: &[PassReport]) -> Result<()> {
    let Some(last) = reports.last() else {
        return Ok(());
    };
    let failed: Vec<_> = last
        .actions
        .iter()
        .filter(|a| a.outcome.is_failure())
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    let code = if failed
        .iter()
        .any(|a| a.outcome == history::Outcome::TimedOut)
    {
        Code::Timeout
    } else {
        Code::Dependency
    };
    let list: Vec<String> = failed
        .iter()
        .map(|a| format!("{} ({})", a.action, a.detail))
        .collect();
    Err(fail(
        code,
        format!(
            "{} action(s) failed and stay pending: {}",
            failed.len(),
            list.join("; ")
        ),
    ))
}

/// Run a parsed command line with `runner` for every external program, into
/// its report (docs/json.md describes each document).
pub fn run(cli: Cli, runner: &dyn CommandRunner) -> Result<Report> {
    let root = NodeRoot::from_arg_or_env(cli.global.root.as_deref())?;
    let ctx = Ctx {
        root: root.clone(),
        runner,
        sync_tool: tool_path("ns-ha-sync").ok(),
        vip_tool: tool_path("ns-ha-vip").ok(),
    };
    match cli.command {
        Command::Notify {
            scope,
            name,
            state,
            prio,
        } => {
            let ev = NewEvent::from_notify(&scope, &name, &state, prio.as_deref())?;
            let e = EventStore::new(&root).record(ev, Source::Notify)?;
            log::info!("event {}", e.describe());
            let reports = reconcile(&ctx, "notify", None)?;
            Ok(Report::new("", passes_json(&reports)?))
        }
        Command::FifoReader { fifo } => {
            let fifo = fifo.unwrap_or_else(|| events::fifo_path(&root));
            let n = fifo::run(&ctx, &fifo)?;
            log::info!("{n} events recorded");
            Ok(Report::new("", serde_json::json!({ "events": n })))
        }
        Command::Apply { wait } => {
            let reports = reconcile(&ctx, "apply", Some(Duration::from_secs(wait)))?;
            let mut human = String::new();
            for r in &reports {
                human.push_str(&format!("{}\n", r.summary()));
                for a in r
                    .actions
                    .iter()
                    .filter(|a| a.outcome != history::Outcome::Unchanged)
                {
                    let d = if a.detail.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", a.detail)
                    };
                    human.push_str(&format!(
                        "  {} {} ({} ms){d}\n",
                        a.action,
                        a.outcome.as_str(),
                        a.duration_ms
                    ));
                }
            }
            Ok(Report::new(human, passes_json(&reports)?).failed_if(failures_error(&reports)))
        }
        Command::Status { history } => {
            let s = status::collect(&ctx, history)?;
            Ok(Report::new(status::render(&s), serde_json::to_value(&s)?))
        }
        Command::Maintenance { mode, wait } => {
            let r = maintenance::set(&ctx, mode == MaintenanceMode::On, Duration::from_secs(wait))?;
            // The node's own role state follows keepalived's events; a pass
            // now makes sure it is applied even if an event was lost.
            reconcile(&ctx, "maintenance", None)?;
            let vips = r
                .vips
                .map(|v| format!(", holds {}/{} VIPs", v.held, v.total))
                .unwrap_or_default();
            let human = format!(
                "maintenance {}{vips} after {} ms: {}",
                if r.maintenance { "on" } else { "off" },
                r.waited_ms,
                r.note
            );
            let settled = if r.settled == Some(false) {
                Err(fail(
                    Code::Timeout,
                    format!("maintenance is set, but {}", r.note),
                ))
            } else {
                Ok(())
            };
            Ok(Report::new(human, serde_json::to_value(&r)?).failed_if(settled))
        }
        Command::SyncApplied { changed } => {
            let changed = (!changed.is_empty()).then_some(changed);
            EventStore::new(&root).record_sync(changed)?;
            let reports = reconcile(&ctx, "sync-applied", None)?;
            Ok(Report::new("", passes_json(&reports)?))
        }
        Command::Defaults => {
            // People paste this into cluster.json: indented for them.
            let d = ns_ha_common::role_config::RoleSettings::default();
            Ok(Report::new(
                serde_json::to_string_pretty(&d)?,
                serde_json::to_value(&d)?,
            ))
        }
    }
}
