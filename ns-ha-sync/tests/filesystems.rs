//! A sync set that spans filesystems (issue 8 item 2): OpenWrt keeps the DHCP
//! leases on the tmpfs `/tmp` and `/etc` on flash, and one generation changes
//! both. Here the backup's `/tmp` is a directory on `/dev/shm` (a tmpfs),
//! while its root and state dir are on the disk of the temp dir.

mod common;

use common::*;
use ns_ha_sync::sender::{push, PushOptions};
use ns_ha_sync::state::{StateDir, OTHER_STAGING};
use std::os::unix::fs::MetadataExt;

fn dev(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).unwrap().dev()
}

/// A pair whose backup's `/tmp` (holding the synced DHCP leases) is on
/// `/dev/shm`; returns that dir.
fn pair_with_tmpfs_tmp() -> (Pair, tempfile::TempDir) {
    let mut p = pair();
    p.cluster.sync.include.push("/tmp/dhcp.leases".into());
    for r in [&p.primary, &p.backup] {
        ns_ha_common::config::save_cluster(r, &p.cluster).unwrap();
    }
    let shm = tempfile::tempdir_in("/dev/shm").expect("/dev/shm (a tmpfs) is needed");
    std::os::unix::fs::symlink(shm.path(), p.backup.path("/tmp")).unwrap();
    let state = StateDir::new(&p.backup, &p.cluster.sync);
    std::fs::create_dir_all(&state.dir).unwrap();
    assert_ne!(
        dev(shm.path()),
        dev(&state.dir),
        "the test needs /dev/shm on another filesystem than {}",
        state.dir.display()
    );
    (p, shm)
}

#[test]
fn one_generation_spanning_two_filesystems_is_applied_whole() {
    let (p, shm) = pair_with_tmpfs_tmp();
    let state = StateDir::new(&p.backup, &p.cluster.sync);
    write(&p.primary, "/etc/config/firewall", "v1\n");
    write(&p.primary, "/tmp/dhcp.leases", "1700000000 aa:bb host1\n");
    let mut link = ThreadLink::new(&p.backup);
    let rep = push(&p.primary, &p.cluster, &mut link, PushOptions::default());
    link.join();
    let rep = rep.expect("a generation spanning filesystems is refused");
    assert_eq!(rep.generation, 1);
    assert_eq!(read(&p.backup, "/etc/config/firewall"), "v1\n");
    assert_eq!(
        std::fs::read_to_string(shm.path().join("dhcp.leases")).unwrap(),
        "1700000000 aa:bb host1\n"
    );

    // Both change again, in one generation.
    write(&p.primary, "/etc/config/firewall", "v2\n");
    write(&p.primary, "/tmp/dhcp.leases", "1700000100 cc:dd host2\n");
    let rep = push(&p.primary, &p.cluster, &mut link, PushOptions::default()).unwrap();
    link.join();
    assert_eq!(rep.generation, 2);
    assert_eq!(read(&p.backup, "/etc/config/firewall"), "v2\n");
    assert_eq!(
        std::fs::read_to_string(shm.path().join("dhcp.leases")).unwrap(),
        "1700000100 cc:dd host2\n"
    );
    // No staging left on either filesystem.
    assert!(!state.staging().exists());
    assert!(!shm.path().join(OTHER_STAGING).exists());

    // A generation cut before commit leaves both filesystems as they were
    // and clears both staging dirs.
    write(&p.primary, "/etc/config/firewall", "v3\n");
    write(&p.primary, "/tmp/dhcp.leases", &"x".repeat(1 << 20));
    link.cut_after = Some(512 << 10);
    assert!(push(&p.primary, &p.cluster, &mut link, PushOptions::default()).is_err());
    link.join();
    link.cut_after = None;
    assert_eq!(read(&p.backup, "/etc/config/firewall"), "v2\n");
    assert_eq!(
        std::fs::read_to_string(shm.path().join("dhcp.leases")).unwrap(),
        "1700000100 cc:dd host2\n"
    );
    assert!(!shm.path().join(OTHER_STAGING).exists());

    // The lease file deleted on the primary goes on the backup too.
    std::fs::remove_file(p.primary.path("/tmp/dhcp.leases")).unwrap();
    let rep = push(&p.primary, &p.cluster, &mut link, PushOptions::default()).unwrap();
    link.join();
    assert_eq!(rep.generation, 3, "{rep:?}");
    assert!(!shm.path().join("dhcp.leases").exists());
    assert_eq!(read(&p.backup, "/etc/config/firewall"), "v3\n");
}

#[test]
fn a_leftover_staging_dir_is_replaced_and_a_foreign_one_refused() {
    let (p, shm) = pair_with_tmpfs_tmp();
    let area = shm.path().join(OTHER_STAGING);
    // Left by a transaction whose list was lost: ours, replaced.
    std::fs::create_dir(&area).unwrap();
    std::fs::write(area.join("0"), "stale").unwrap();
    write(&p.primary, "/tmp/dhcp.leases", "lease 1\n");
    let mut link = ThreadLink::new(&p.backup);
    push(&p.primary, &p.cluster, &mut link, PushOptions::default()).unwrap();
    link.join();
    assert_eq!(
        std::fs::read_to_string(shm.path().join("dhcp.leases")).unwrap(),
        "lease 1\n"
    );
    assert!(!area.exists());

    // A link planted under the name (a world-writable /tmp): never followed.
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), &area).unwrap();
    write(&p.primary, "/tmp/dhcp.leases", "lease 2\n");
    let err = push(&p.primary, &p.cluster, &mut link, PushOptions::default()).unwrap_err();
    link.join();
    assert_eq!(
        ns_ha_common::exit::code_of(&err),
        ns_ha_common::exit::Code::Security,
        "{err:#}"
    );
    assert!(format!("{err:#}").contains("remove it"), "{err:#}");
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_to_string(shm.path().join("dhcp.leases")).unwrap(),
        "lease 1\n"
    );
}
