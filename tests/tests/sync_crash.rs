//! Issue 3 acceptance: a push killed with SIGKILL at many points, on the
//! sender (fw1) and on the receiver (fw2, the forced command), never leaves
//! fw2 with a mix of generations once recovered, and the next push converges.

#[path = "sync_support.rs"]
mod sync_support;

use ns_ha_tests::cluster::tool;
use ns_ha_tests::Lab;
use sync_support::*;

/// Put fw1's test tree back to the first generation and sync it.
fn reset(lab: &Lab) -> Tree {
    for top in TOPS {
        let p = lab.path("fw1", top);
        let _ = std::fs::remove_dir_all(&p);
        let _ = std::fs::remove_file(&p);
    }
    seed(lab, "fw1");
    sync_ok(lab, "fw1", &["push"]);
    let old = tree(lab, "fw1");
    assert_eq!(tree(lab, "fw2"), old, "reset did not sync");
    old
}

/// Recover fw2 either explicitly or by starting a receiver (which recovers first).
fn recover(lab: &Lab, explicit: bool) {
    if explicit {
        sync_ok(lab, "fw2", &["recover"]);
    } else {
        let exe = lab.bin("ns-ha-sync");
        let root = lab.root("fw2");
        let script = format!(
            "{} --root {} receive </dev/null",
            exe.display(),
            root.display()
        );
        let out = lab.sh("fw2", &script);
        assert!(out.status.success(), "{}", describe(&out));
    }
}

fn check(lab: &Lab, what: &str, old: &Tree, new: &Tree, g_old: u64) -> bool {
    let got = tree(lab, "fw2");
    let g = generation(lab, "fw2");
    if &got == old {
        assert_eq!(g, g_old, "{what}: old files but generation {g}");
        false
    } else {
        assert_eq!(&got, new, "{what}: fw2 holds a mix of generations");
        assert_eq!(g, g_old + 1, "{what}: new files but generation {g}");
        true
    }
}

#[test]
fn a_push_killed_anywhere_leaves_fw2_wholly_at_one_generation() {
    let lab = paired_lab();
    let sender_steps = [
        "manifest",
        "begin",
        "file:1",
        "file-half:1",
        "file:2",
        "commit",
        "committed",
    ];
    let receiver_steps = [
        "begin", "file:1", "file:2", "staged", "journal", "op:1", "op:3", "op:5", "baseline",
        "applied", "done",
    ];
    // The sync's state dir as init-primary chose it for the node's platform.
    let cluster: serde_json::Value =
        serde_json::from_str(&lab.read("fw2", "/etc/ns-ha/cluster.json")).expect("cluster.json");
    let state_dir = cluster["sync"]["state_dir"]
        .as_str()
        .expect("sync.state_dir");
    let crash_file = lab.path("fw2", &format!("{state_dir}/crash-at"));
    let mut report = Vec::new();
    for (i, (side, step)) in sender_steps
        .iter()
        .map(|s| ("sender", *s))
        .chain(receiver_steps.iter().map(|s| ("receiver", *s)))
        .enumerate()
    {
        let old = reset(&lab);
        let g_old = generation(&lab, "fw2");
        change(&lab, "fw1");
        let new = tree(&lab, "fw1");
        let out = if side == "sender" {
            let exe = lab.bin("ns-ha-sync");
            let root = lab.root("fw1");
            let env = format!("NS_HA_SYNC_CRASH_AT={step}");
            lab.exec(
                "fw1",
                &[
                    "env",
                    &env,
                    exe.to_str().unwrap(),
                    "--root",
                    root.to_str().unwrap(),
                    "push",
                ],
            )
        } else {
            std::fs::write(&crash_file, step).unwrap();
            tool(&lab, "fw1", "ns-ha-sync", &["push"])
        };
        assert!(
            !out.status.success(),
            "{side} {step}: the push did not fail: {}",
            describe(&out)
        );
        if side == "receiver" {
            assert!(
                !crash_file.exists(),
                "receiver {step}: crash point never reached"
            );
        }
        recover(&lab, i % 2 == 0);
        let applied = check(&lab, &format!("{side} {step}"), &old, &new, g_old);
        report.push(format!(
            "{side:8} {step:12} -> {}",
            if applied { "new" } else { "old" }
        ));
        // The next push converges.
        sync_ok(&lab, "fw1", &["push"]);
        assert_eq!(tree(&lab, "fw2"), new, "{side} {step}: did not converge");
    }
    println!("{}", report.join("\n"));
}
