//! The real `ns-ha-sync receive` killed with SIGKILL at every step of an
//! apply (through pipes, without SSH): after `ns-ha-sync recover` the backup
//! holds wholly the old or wholly the new generation, and the next push
//! converges.

mod common;

use common::*;
use ns_ha_sync::sender::{push, PushOptions};
use ns_ha_sync::state::{Applied, StateDir, APPLIED};
use std::process::Command;

fn seed(p: &Pair) {
    write(&p.primary, "/etc/config/firewall", "v1 firewall\n");
    write(&p.primary, "/etc/config/dhcp", "v1 dhcp\n");
    write(&p.primary, "/etc/config/old", "to be deleted\n");
    write(&p.primary, "/etc/extra/dir/f", "v1\n");
    write(&p.primary, "/etc/passwd", "root\n");
}

fn change(p: &Pair) {
    write(&p.primary, "/etc/config/firewall", "v2 firewall\n");
    write(&p.primary, "/etc/config/dhcp", "v2 dhcp\n");
    write(&p.primary, "/etc/config/added", "v2 added\n");
    std::fs::remove_file(p.primary.path("/etc/config/old")).unwrap();
    std::fs::remove_dir_all(p.primary.path("/etc/extra/dir")).unwrap();
    write(&p.primary, "/etc/extra/dir2/g", "v2\n");
    chmod(&p.primary, "/etc/passwd", 0o600);
}

fn generation(p: &Pair) -> u64 {
    StateDir::new(&p.backup, &p.cluster.sync)
        .read::<Applied>(APPLIED)
        .unwrap()
        .unwrap_or_default()
        .generation
}

#[test]
fn receiver_killed_at_every_step_recovers_to_one_generation() {
    let steps = [
        "begin", "file:1", "file:3", "staged", "journal", "op:1", "op:2", "op:4", "op:7",
        "baseline", "applied", "done",
    ];
    let mut outcomes = Vec::new();
    for step in steps {
        let p = pair();
        seed(&p);
        let mut link = ThreadLink::new(&p.backup);
        push(&p.primary, &p.cluster, &mut link, PushOptions::default()).unwrap();
        link.join();
        let old = snapshot(&p.backup, TOPS);
        change(&p);
        let state = StateDir::new(&p.backup, &p.cluster.sync);
        std::fs::write(state.file("crash-at"), step).unwrap();
        let r = push(
            &p.primary,
            &p.cluster,
            &mut ProcLink {
                backup: p.backup.clone(),
            },
            PushOptions::default(),
        );
        assert!(r.is_err(), "{step}: the receiver did not die");
        assert!(
            !state.file("crash-at").exists(),
            "{step}: crash point never reached"
        );
        let out = Command::new(bin())
            .args(["--root", &p.backup.base().to_string_lossy(), "recover"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{step}: recover failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = snapshot(&p.backup, TOPS);
        let new_gen = if got == old {
            assert_eq!(generation(&p), 1, "{step}");
            false
        } else {
            // Compare with the primary's tree: the new generation.
            assert_eq!(
                got,
                snapshot(&p.primary, TOPS),
                "{step}: mixed generations after recovery"
            );
            assert_eq!(generation(&p), 2, "{step}");
            true
        };
        outcomes.push((
            step,
            new_gen,
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ));
        // The next push converges.
        let rep = push(&p.primary, &p.cluster, &mut link, PushOptions::default()).unwrap();
        link.join();
        assert_eq!(
            snapshot(&p.backup, TOPS),
            snapshot(&p.primary, TOPS),
            "{step}: {rep:?}"
        );
    }
    // Before the journal the old generation stays; from the journal on, the new one is completed.
    for (step, new_gen, how) in &outcomes {
        let committed = !matches!(*step, "begin" | "file:1" | "file:3" | "staged");
        assert_eq!(*new_gen, committed, "{step}: {how}");
    }
}
