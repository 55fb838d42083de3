//! keepalived's own counters (adverts sent and received, times it became
//! master, packet and authentication errors), for `metrics`.
//!
//! Why here: only keepalived knows how many adverts it lost or how often an
//! instance flapped before the role engine heard of it. keepalived dumps its
//! instances as JSON to `/tmp/keepalived.json` when it gets the signal
//! `keepalived --signum=JSON` names (a real-time signal, so it is sent with
//! `kill`, not through nix's signal enum). The dump is read through
//! `/proc/PID/root`, since keepalived's /tmp may be private, and only when it
//! is fresh (rewritten after the signal) and root's: a stale or planted file
//! gives no counters rather than wrong ones.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Context, Result};
use serde::Deserialize;

use ns_ha_common::cmd::CommandRunner;
use ns_ha_common::NodeRoot;

/// Where keepalived writes its pid (`-p`; Debian's unit and OpenWrt's init
/// script use the same path, `/var/run` being `/run` there).
pub const PID_FILE: &str = "/run/keepalived.pid";
/// Where keepalived writes its JSON dump, in its own mount namespace's /tmp
/// (read through `/proc/PID/root`).
pub const DUMP_FILE: &str = "/tmp/keepalived.json";
/// How long to wait for keepalived to rewrite the dump.
const DUMP_WAIT: Duration = Duration::from_secs(1);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// One VRRP instance's counters, as keepalived's JSON dump names them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct InstanceCounters {
    pub advert_rcvd: u64,
    pub advert_sent: u64,
    pub become_master: u64,
    pub release_master: u64,
    pub packet_len_err: u64,
    pub advert_interval_err: u64,
    pub ip_ttl_err: u64,
    pub invalid_type_rcvd: u64,
    pub addr_list_err: u64,
    pub invalid_authtype: u64,
    pub authtype_mismatch: u64,
    pub auth_failure: u64,
    pub pri_zero_rcvd: u64,
    pub pri_zero_sent: u64,
}

/// An instance of the dump: its name, effective priority and counters.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceStats {
    pub name: String,
    pub effective_priority: Option<u64>,
    pub counters: InstanceCounters,
}

#[derive(Deserialize)]
struct DumpEntry {
    data: DumpData,
    stats: InstanceCounters,
}

#[derive(Deserialize)]
struct DumpData {
    iname: String,
    effective_priority: Option<u64>,
}

/// Parse keepalived's JSON dump (an array of `{"data": …, "stats": …}`).
pub fn parse_dump(text: &str) -> Result<Vec<InstanceStats>> {
    let entries: Vec<DumpEntry> = serde_json::from_str(text)
        .context("keepalived's JSON dump is not what keepalived 2.x writes")?;
    Ok(entries
        .into_iter()
        .map(|e| InstanceStats {
            name: e.data.iname,
            effective_priority: e.data.effective_priority,
            counters: e.stats,
        })
        .collect())
}

/// A source of keepalived's counters: the running keepalived, or a fake.
pub trait KeepalivedStats {
    /// The counters of every instance; `None` when keepalived does not run
    /// (no pid file) or cannot dump.
    fn dump(&self) -> Result<Option<Vec<InstanceStats>>>;
}

/// Ask the running keepalived of a node root for its dump.
pub struct SignalledDump<'a> {
    pub root: &'a NodeRoot,
    pub runner: &'a dyn CommandRunner,
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl KeepalivedStats for SignalledDump<'_> {
    fn dump(&self) -> Result<Option<Vec<InstanceStats>>> {
        let pid = match std::fs::read_to_string(self.root.path(PID_FILE)) {
            Ok(s) => s.trim().to_string(),
            Err(_) => return Ok(None),
        };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(None);
        }
        let signum = self
            .runner
            .run_ok(
                "keepalived",
                &["--signum=JSON".to_string()],
                COMMAND_TIMEOUT,
            )
            .context("keepalived --signum=JSON (keepalived built without JSON support?)")?;
        let signum = signum.stdout.trim().to_string();
        if signum.is_empty() || !signum.bytes().all(|b| b.is_ascii_digit()) {
            return Err(anyhow!(
                "keepalived --signum=JSON printed '{signum}', not a signal number"
            ));
        }
        // Through keepalived's own root: its /tmp may be private (systemd's
        // PrivateTmp, a mount namespace of its own) and differ from ours.
        let file = Path::new("/proc")
            .join(&pid)
            .join("root")
            .join(DUMP_FILE.trim_start_matches('/'));
        let before = modified(&file);
        self.runner
            .run_ok("kill", &["-s".to_string(), signum, pid], COMMAND_TIMEOUT)?;
        let start = Instant::now();
        loop {
            let now = modified(&file);
            if now.is_some() && now != before {
                break;
            }
            if start.elapsed() > DUMP_WAIT {
                return Err(anyhow!(
                    "keepalived did not write {} within {DUMP_WAIT:?}",
                    file.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // keepalived writes the file in place: wait until it parses.
        loop {
            let meta = std::fs::symlink_metadata(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            if !meta.is_file() || std::os::unix::fs::MetadataExt::uid(&meta) != 0 {
                return Err(anyhow!(
                    "{} is not a regular file of root's: not keepalived's dump",
                    file.display()
                ));
            }
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            match parse_dump(&text) {
                Ok(s) => return Ok(Some(s)),
                Err(e) if start.elapsed() > DUMP_WAIT => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded from keepalived 2.2.7 (Debian 12) in the lab.
    const DUMP: &str = r#"[{"data":{"iname":"VI_T","ifp_ifname":"v0","vrid":77,"base_priority":100,"effective_priority":100,"state":2,"vips":["10.99.250.254\/24 dev v0 scope global set"]},"stats":{"advert_rcvd":0,"advert_sent":1,"become_master":1,"release_master":0,"packet_len_err":0,"advert_interval_err":0,"ip_ttl_err":0,"invalid_type_rcvd":0,"addr_list_err":0,"invalid_authtype":0,"authtype_mismatch":0,"auth_failure":0,"pri_zero_rcvd":0,"pri_zero_sent":0}}]"#;

    #[test]
    fn the_dump_gives_each_instances_counters() {
        let s = parse_dump(DUMP).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "VI_T");
        assert_eq!(s[0].effective_priority, Some(100));
        assert_eq!(s[0].counters.advert_sent, 1);
        assert_eq!(s[0].counters.become_master, 1);
    }

    #[test]
    fn a_dump_in_another_shape_is_an_error() {
        assert!(parse_dump(r#"{"VI_T": 1}"#).is_err());
        assert!(parse_dump(r#"[{"data":{"iname":"x"}}]"#).is_err());
    }
}
