//! The sync and the role engine share one file: the crontab. The backup keeps
//! master-only jobs disabled (marked) in the synced crontab; the sync must see
//! that as the same content, or every backup would look locally edited and
//! plain pushes would stop.

#[path = "sync_support.rs"]
mod sync_support;

use std::time::Duration;
use sync_support::*;

use ns_ha_tests::wait_until;

const CRONTAB: &str = "/etc/crontabs/root";
const MARKER: &str = "#ns-ha-disabled# ";

fn crontab(lab: &ns_ha_tests::Lab, node: &str) -> String {
    std::fs::read_to_string(lab.path(node, CRONTAB)).unwrap_or_default()
}

#[test]
fn master_only_cron_jobs_stay_disabled_on_the_backup_without_blocking_sync_over_openssh() {
    cron_jobs_and_sync(ns_ha_tests::SshServer::Openssh);
}

/// The same with dropbear as the backup's SSH server (issue 11): the role
/// engine's push on becoming MASTER and the plain pushes go through it.
#[test]
fn master_only_cron_jobs_stay_disabled_on_the_backup_without_blocking_sync_over_dropbear() {
    cron_jobs_and_sync(ns_ha_tests::SshServer::Dropbear);
}

fn cron_jobs_and_sync(server: ns_ha_tests::SshServer) {
    let lab = paired_lab_with(server);
    let jobs = "0 3 * * * /usr/sbin/acme-renew\n*/5 * * * * /usr/sbin/logrotate\n";
    lab.write("fw1", CRONTAB, jobs);
    sync_ok(&lab, "fw1", &["push"]);
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            crontab(&lab, "fw2").contains(&format!("{MARKER}0 3 * * * /usr/sbin/acme-renew\n"))
        }),
        "the backup did not disable the ACME job: {}",
        crontab(&lab, "fw2")
    );
    assert!(crontab(&lab, "fw2").contains("\n*/5 * * * * /usr/sbin/logrotate\n"));
    assert_eq!(crontab(&lab, "fw1"), jobs, "the master's jobs stay enabled");

    // The marks are not local edits: verify is clean and plain pushes go on.
    let out = sync(&lab, "fw2", &["verify"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let out = sync(&lab, "fw1", &["verify"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    lab.write(
        "fw1",
        "/etc/config/firewall",
        "config defaults\n\toption input DROP\n",
    );
    sync_ok(&lab, "fw1", &["push"]);
    assert_eq!(
        lab.read("fw2", "/etc/config/firewall"),
        "config defaults\n\toption input DROP\n"
    );

    // A new master-only job from the primary arrives disabled on the backup.
    let more = format!("{jobs}0 4 * * * /usr/sbin/send-heartbeat\n");
    lab.write("fw1", CRONTAB, &more);
    sync_ok(&lab, "fw1", &["push"]);
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            let c = crontab(&lab, "fw2");
            c.contains(&format!("{MARKER}0 4 * * * /usr/sbin/send-heartbeat\n"))
                && c.contains(&format!("{MARKER}0 3 * * * /usr/sbin/acme-renew\n"))
        }),
        "backup crontab after the second sync: {}",
        crontab(&lab, "fw2")
    );
    let out = sync(&lab, "fw2", &["verify"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
}
