//! Issue 3 acceptance over real sshd: what fw1 changes shows on fw2, the
//! backup refuses to push, backup edits are reported and survive a plain
//! push, and status is shown on both nodes.

#[path = "sync_support.rs"]
mod sync_support;

use sync_support::*;

#[test]
fn created_changed_chmoded_deleted_on_fw1_shows_the_same_on_fw2_over_openssh() {
    roundtrip(ns_ha_tests::SshServer::Openssh);
}

/// The same with dropbear as the backup's SSH server (issue 11).
#[test]
fn created_changed_chmoded_deleted_on_fw1_shows_the_same_on_fw2_over_dropbear() {
    roundtrip(ns_ha_tests::SshServer::Dropbear);
}

fn roundtrip(server: ns_ha_tests::SshServer) {
    let lab = paired_lab_with(server);
    sync_ok(&lab, "fw1", &["push"]);
    assert_eq!(tree(&lab, "fw2"), tree(&lab, "fw1"));
    let g1 = generation(&lab, "fw2");
    assert!(g1 >= 1);
    // The backup keeps its own network config, pairing and HA configs.
    assert_ne!(
        std::fs::read(lab.path("fw2", "/etc/ns-ha/node.json")).unwrap(),
        std::fs::read(lab.path("fw1", "/etc/ns-ha/node.json")).unwrap()
    );

    change(&lab, "fw1");
    let diff = sync_ok(&lab, "fw1", &["diff"]);
    for line in [
        "~ /etc/config/firewall",
        "+ /etc/nginx/conf.d/new.conf",
        "- /etc/nginx/conf.d/old.conf",
        "m /etc/acme/example.org/key.pem",
        "+ /etc/nginx/conf.d/default.conf",
    ] {
        assert!(diff.contains(line), "diff lacks {line:?}:\n{diff}");
    }
    let out = sync_ok(&lab, "fw1", &["push"]);
    let g2 = g1 + 1;
    assert!(out.contains(&format!("generation {g2}")), "{out}");
    assert_eq!(tree(&lab, "fw2"), tree(&lab, "fw1"));
    assert_eq!(generation(&lab, "fw2"), g2);

    // Nothing changed: quiet, and the backup's generation does not move.
    let out = sync(&lab, "fw1", &["push"]);
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{}",
        describe(&out)
    );
    assert_eq!(generation(&lab, "fw2"), g2);

    // Status on both nodes, human and JSON.
    let st: serde_json::Value =
        serde_json::from_str(&sync_ok(&lab, "fw1", &["--json", "status"])).unwrap();
    assert_eq!(st["node"]["last_success"]["generation"], g2, "{st}");
    assert_eq!(st["peer"]["generation"], g2, "{st}");
    assert!(
        st["node"]["last_success"]["bytes"].as_u64().unwrap() > 0,
        "{st}"
    );
    let human = sync_ok(&lab, "fw2", &["status"]);
    assert!(
        human.contains(&format!("generation {g2}")) && human.contains("last success: ok"),
        "{human}"
    );
}

#[test]
fn the_backup_refuses_to_push_and_its_edits_survive_a_plain_push() {
    let lab = paired_lab();
    sync_ok(&lab, "fw1", &["push"]);

    let out = sync(&lab, "fw2", &["push"]);
    assert_eq!(code(&out), 5, "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("backup"), "{err}");

    lab.write("fw2", "/etc/config/dhcp", "edited on the backup\n");
    let out = sync(&lab, "fw2", &["verify"]);
    assert_eq!(code(&out), 10, "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("/etc/config/dhcp"),
        "{}",
        describe(&out)
    );
    // The primary sees it too.
    let out = sync(&lab, "fw1", &["verify"]);
    assert_eq!(code(&out), 10, "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("/etc/config/dhcp"));

    lab.write("fw1", "/etc/config/dhcp", "primary's dhcp v2\n");
    lab.write("fw1", "/etc/config/firewall", "primary's firewall v2\n");
    let out = sync(&lab, "fw1", &["push"]);
    assert_eq!(
        code(&out),
        8,
        "kept edits must be a conflict: {}",
        describe(&out)
    );
    assert_eq!(
        lab.read("fw2", "/etc/config/dhcp"),
        "edited on the backup\n"
    );
    assert_eq!(
        lab.read("fw2", "/etc/config/firewall"),
        "primary's firewall v2\n"
    );

    sync_ok(&lab, "fw1", &["push", "--force"]);
    assert_eq!(lab.read("fw2", "/etc/config/dhcp"), "primary's dhcp v2\n");
    sync_ok(&lab, "fw2", &["verify"]);
}
