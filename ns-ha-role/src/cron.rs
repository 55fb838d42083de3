//! Enabling and disabling the cron jobs only the active node runs.
//!
//! The node's crontab is a plain file (OpenWrt: `/etc/crontabs/root`) that
//! the sync also copies to the backup, with the master's jobs enabled. A job
//! is disabled by commenting its line out with a marker, and enabled by
//! removing exactly that marker, so comments written by the administrator are
//! never touched. Both directions are idempotent: the reconciler can apply
//! them on every pass and after every sync.

use anyhow::Result;
use std::path::Path;

use ns_ha_common::fsutil::atomic_write;

/// Prefix of a crontab line disabled by ns-ha.
pub const MARKER: &str = ns_ha_common::role_config::CRON_DISABLED_MARKER;

/// What a crontab rewrite changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CronChange {
    pub enabled: usize,
    pub disabled: usize,
}

impl CronChange {
    pub fn is_empty(&self) -> bool {
        self.enabled == 0 && self.disabled == 0
    }
}

fn is_job(line: &str) -> bool {
    let t = line.trim_start();
    if t.is_empty() || t.starts_with('#') {
        return false;
    }
    // `NAME=value` lines set the environment of the jobs.
    let first = t.split_whitespace().next().unwrap_or("");
    !(first.contains('=') && !first.starts_with('@') && !first.starts_with('*'))
}

/// Rewrite crontab `text`: lines disabled by ns-ha that contain an `enable`
/// pattern are enabled; job lines containing a `disable` pattern are disabled.
pub fn rewrite(text: &str, enable: &[String], disable: &[String]) -> (String, CronChange) {
    let mut change = CronChange::default();
    let mut out = String::with_capacity(text.len() + 64);
    let hits = |line: &str, pats: &[String]| pats.iter().any(|p| line.contains(p.as_str()));
    for line in text.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        let mut body = body.to_string();
        if let Some(job) = body.strip_prefix(MARKER) {
            if hits(job, enable) && !hits(job, disable) {
                body = job.to_string();
                change.enabled += 1;
            }
        } else if is_job(&body) && hits(&body, disable) && !hits(&body, enable) {
            body = format!("{MARKER}{body}");
            change.disabled += 1;
        }
        out.push_str(&body);
        out.push_str(nl);
    }
    (out, change)
}

/// Apply [`rewrite`] to the crontab file at `path`, writing only on change.
/// A missing crontab has no jobs: nothing to do.
pub fn apply(path: &Path, enable: &[String], disable: &[String]) -> Result<CronChange> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CronChange::default()),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    };
    let (new, change) = rewrite(&text, enable, disable);
    if !change.is_empty() {
        // crond notices the new file by the directory's mtime (busybox) or
        // the file's (cronie); a rename changes both. The mode stays as it
        // was: the crontab is synced, and a changed mode is a local edit.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o600);
        atomic_write(path, new.as_bytes(), mode)?;
    }
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    const TAB: &str = "MAILTO=acme\n# acme renew is nice\n0 3 * * * /usr/lib/acme/acme.sh --cron\n*/5 * * * * /usr/sbin/send-heartbeat\n0 1 * * * /usr/sbin/logrotate\n";

    #[test]
    fn disables_and_reenables_only_matching_jobs() {
        let (off, c) = rewrite(TAB, &[], &pats(&["acme", "send-heartbeat"]));
        assert_eq!(c.disabled, 2);
        assert!(off.contains("MAILTO=acme\n# acme renew is nice\n#ns-ha-disabled# 0 3"));
        assert!(off.contains("#ns-ha-disabled# */5 * * * * /usr/sbin/send-heartbeat\n"));
        assert!(off.contains("\n0 1 * * * /usr/sbin/logrotate\n"));
        let (again, c2) = rewrite(&off, &[], &pats(&["acme", "send-heartbeat"]));
        assert!(c2.is_empty());
        assert_eq!(again, off);
        let (on, c3) = rewrite(&off, &pats(&["acme", "send-heartbeat"]), &[]);
        assert_eq!(c3.enabled, 2);
        assert_eq!(on, TAB);
    }

    #[test]
    fn rewrite_keeps_the_crontab_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("root");
        std::fs::write(&p, "0 3 * * * acme renew\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let change = apply(&p, &[], &pats(&["acme"])).unwrap();
        assert_eq!(change.disabled, 1);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o644);
    }

    #[test]
    fn missing_crontab_and_no_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("crontabs/root");
        assert!(apply(&p, &[], &pats(&["x"])).unwrap().is_empty());
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "* * * * * x").unwrap();
        assert_eq!(apply(&p, &[], &pats(&["x"])).unwrap().disabled, 1);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "#ns-ha-disabled# * * * * * x"
        );
    }
}
