//! Installing a cluster config on both nodes, in the order that keeps them safe.
//!
//! Every change (pairing, edits, enable/disable) ends here: validate and
//! render on the primary (nothing written), install on the backup (which
//! checks its own interfaces and lets its keepalived validate its side), then
//! install on the primary. A refused change therefore changes neither node.
//!
//! Switching HA on is the one exception to "backup first": a backup whose
//! keepalived starts before the primary's hears nobody, takes the VIPs and
//! announces them, then yields to the primary, which is a short outage and a
//! burst of gratuitous ARPs when HA is switched on. So the backup first gets
//! the config with keepalived held stopped (it still validates and can
//! refuse), then the primary starts and takes its VIPs, and only then the
//! backup starts keepalived: it hears the primary at once and stays BACKUP.

use anyhow::{Context, Result};
use std::time::{Duration, Instant};

use ns_ha_common::activate::{self, tool_path, Activation};
use ns_ha_common::config::{ClusterConfig, NodeConfig, Role};

use crate::backup::Backup;
use crate::Ctx;

/// How long `enable` waits for the primary to hold its VIPs before it starts
/// the backup anyway (it becomes MASTER in about 0.4 s with the default advert).
pub const PRIMARY_MASTER_WAIT: Duration = Duration::from_secs(10);

/// Install `next` (replacing `previous`) on the backup and on this primary.
pub fn commit_cluster(
    ctx: &Ctx,
    node: &NodeConfig,
    previous: &ClusterConfig,
    next: &ClusterConfig,
    backup: &mut dyn Backup,
) -> Result<Activation> {
    let prepared = activate::prepare(&ctx.root, ctx.runner, Role::Primary, next)?;
    let switching_on = next.enabled && !previous.enabled;
    if !switching_on {
        backup.install(next)?;
        return activate::install(&ctx.root, ctx.runner, node.service_backend, next, prepared);
    }
    let mut held_back = next.clone();
    held_back.enabled = false;
    backup.install(&held_back)?;
    let act = activate::install(&ctx.root, ctx.runner, node.service_backend, next, prepared)?;
    if let Err(e) = wait_primary_master(ctx, PRIMARY_MASTER_WAIT) {
        log::warn!("{e:#}; starting keepalived on the backup anyway");
    }
    backup.install(next).context(
        "HA runs on this primary but the backup did not start it: run ns-ha-init enable again",
    )?;
    Ok(act)
}

/// Wait until this node holds every cluster VIP, as `ns-ha-vip list` says;
/// an error says why it did not within `limit`.
fn wait_primary_master(ctx: &Ctx, limit: Duration) -> Result<()> {
    let tool = tool_path("ns-ha-vip")?.to_string_lossy().into_owned();
    let mut args = ctx.root.tool_args();
    args.extend(["--json".to_string(), "list".to_string()]);
    let deadline = Instant::now() + limit;
    loop {
        let out = ctx.runner.run_ok(&tool, &args, Duration::from_secs(10))?;
        if holds_every_vip(&out.stdout) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(anyhow::anyhow!(
                "this primary did not hold all its VIPs within {} s (see ns-ha-vip list)",
                limit.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `ns-ha-vip list --json` output says every VIP is held here.
fn holds_every_vip(list_json: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(list_json) else {
        return false;
    };
    let vips = v["vips"].as_array().cloned().unwrap_or_default();
    !vips.is_empty() && vips.iter().all(|x| x["held"].as_bool() == Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_means_every_vip_held() {
        assert!(holds_every_vip(
            r#"{"vips":[{"vip":"10.99.1.254/24","held":true},{"vip":"10.99.0.254/32","held":true}]}"#
        ));
        assert!(!holds_every_vip(
            r#"{"vips":[{"vip":"10.99.1.254/24","held":true},{"vip":"10.99.0.254/32","held":false}]}"#
        ));
        assert!(!holds_every_vip(r#"{"vips":[]}"#));
        assert!(!holds_every_vip("not json"));
    }
}
