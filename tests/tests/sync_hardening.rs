//! Issue 8 items 1 and 12 over the real sshd and forced command: a path that
//! changes type never wedges fw2, and an edit made on fw2 while a large push
//! is staging is kept and reported, never silently replaced.

#[path = "sync_support.rs"]
mod sync_support;

use std::time::{Duration, Instant};

use ns_ha_tests::cluster::tool;
use serde_json::Value;
use sync_support::*;

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {}", describe(out)))
}

fn kept(doc: &Value) -> Vec<String> {
    doc["kept"]
        .as_array()
        .unwrap_or_else(|| panic!("no kept list: {doc}"))
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

/// Item 1, both directions, with fw2's copy of the directory holding a kept
/// edit, a path fw2 does not list (a FIFO) and a local symlink; then a
/// journal committed before an obstacle appeared, which `recover` decides.
#[test]
fn a_path_that_changes_type_never_wedges_the_backup() {
    let lab = paired_lab();
    lab.write("fw1", "/etc/nginx/sites/a.conf", "a v1\n");
    lab.write("fw1", "/etc/nginx/sites/b.conf", "b v1\n");
    lab.write("fw1", "/etc/nginx/mime", "types {}\n");
    sync_ok(&lab, "fw1", &["push"]);
    assert_eq!(lab.read("fw2", "/etc/nginx/sites/a.conf"), "a v1\n");

    lab.write("fw2", "/etc/nginx/sites/a.conf", "edited on fw2\n");
    lab.sh_ok(
        "fw2",
        &format!(
            "mkfifo {} && ln -s /tmp {}",
            lab.path("fw2", "/etc/nginx/sites/fifo").display(),
            lab.path("fw2", "/etc/nginx/sites/local").display()
        ),
    );
    std::fs::remove_dir_all(lab.path("fw1", "/etc/nginx/sites")).unwrap();
    lab.write("fw1", "/etc/nginx/sites", "# sites is a file now\n");
    std::fs::remove_file(lab.path("fw1", "/etc/nginx/mime")).unwrap();
    lab.write(
        "fw1",
        "/etc/nginx/mime/types.conf",
        "types { text/html html; }\n",
    );

    // Plain push: file -> directory applies; directory -> file is kept
    // (reported, exit 8) with the edit inside it.
    let out = sync(&lab, "fw1", &["--json", "push"]);
    assert_eq!(code(&out), 8, "{}", describe(&out));
    let doc = json_of(&out);
    assert_eq!(
        kept(&doc),
        vec!["/etc/nginx/sites", "/etc/nginx/sites/a.conf"],
        "{doc}"
    );
    assert_eq!(
        lab.read("fw2", "/etc/nginx/mime/types.conf"),
        "types { text/html html; }\n"
    );
    assert_eq!(
        lab.read("fw2", "/etc/nginx/sites/a.conf"),
        "edited on fw2\n"
    );
    assert!(!lab.path("fw2", "/etc/nginx/sites/b.conf").exists());

    // Not wedged: other changes keep flowing.
    lab.write("fw1", "/etc/config/dhcp", "config dnsmasq v2\n");
    let out = sync(&lab, "fw1", &["push"]);
    assert_eq!(code(&out), 8, "{}", describe(&out));
    assert_eq!(lab.read("fw2", "/etc/config/dhcp"), "config dnsmasq v2\n");

    // push --force makes progress; what fw2 held is moved aside, not lost.
    sync_ok(&lab, "fw1", &["push", "--force"]);
    assert_eq!(tree(&lab, "fw2"), tree(&lab, "fw1"));
    let aside = lab.sh_ok(
        "fw2",
        &format!(
            "find {} -path '*etc/nginx/sites/*'",
            lab.path("fw2", "/etc/ns-ha-sync/displaced").display()
        ),
    );
    assert!(
        aside.contains("sites/fifo") && aside.contains("sites/local"),
        "{aside}"
    );
    sync_ok(&lab, "fw2", &["verify"]);

    // A replay that cannot finish: fw2 dies right after the commit point of
    // a directory -> file change, then something lands in the directory.
    lab.write("fw1", "/etc/nginx/conf.d/extra/x.conf", "x\n");
    sync_ok(&lab, "fw1", &["push"]);
    std::fs::remove_dir_all(lab.path("fw1", "/etc/nginx/conf.d/extra")).unwrap();
    lab.write("fw1", "/etc/nginx/conf.d/extra", "# a file\n");
    let crash = lab.path("fw2", "/etc/ns-ha-sync/crash-at");
    std::fs::write(&crash, "journal").unwrap();
    let out = sync(&lab, "fw1", &["push"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(!crash.exists(), "crash point never reached");
    lab.write(
        "fw2",
        "/etc/nginx/conf.d/extra/late.conf",
        "after the commit\n",
    );
    let out = sync(&lab, "fw2", &["recover"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/etc/nginx/conf.d/extra") && text.contains("push --force"),
        "{text}"
    );
    let st: Value = serde_json::from_str(&sync_ok(&lab, "fw2", &["--json", "status"])).unwrap();
    assert_eq!(
        st["node"]["last_attempt"]["kept"][0], "/etc/nginx/conf.d/extra",
        "{st}"
    );
    let out = sync(&lab, "fw1", &["push"]);
    assert_eq!(code(&out), 8, "{}", describe(&out));
    sync_ok(&lab, "fw1", &["push", "--force"]);
    assert_eq!(tree(&lab, "fw2"), tree(&lab, "fw1"));
}

/// Item 12: a push carrying a 200 MB file and a change to a small file;
/// while fw2 is staging, the small file is edited on fw2. The push reports it
/// kept (exit 8, in the one JSON document), fw2 keeps the edit, `verify`
/// lists it; before the fix the push exited 0 and the edit was gone.
#[test]
fn an_edit_made_on_the_backup_while_it_stages_is_kept_and_reported() {
    let lab = paired_lab();
    sync_ok(&lab, "fw1", &["push"]);
    let big = lab.path("fw1", "/etc/acme/big.bin");
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(200 << 20))
        .unwrap();
    lab.write("fw1", "/etc/config/dhcp", "config dnsmasq from fw1\n");
    let staging = lab.path("fw2", "/etc/ns-ha-sync/staging");
    let started = Instant::now();
    let (out, edited_after) = std::thread::scope(|s| {
        let push = s.spawn(|| tool(&lab, "fw1", "ns-ha-sync", &["--json", "push"]));
        // Staging is under way once a staged file has data.
        let staged =
            ns_ha_tests::wait_until(Duration::from_secs(40), Duration::from_millis(5), || {
                std::fs::read_dir(&staging)
                    .is_ok_and(|d| d.flatten().any(|e| e.metadata().is_ok_and(|m| m.len() > 0)))
            });
        assert!(staged, "fw2 never started staging");
        lab.write("fw2", "/etc/config/dhcp", "edited on fw2 during the push\n");
        let edited_after = started.elapsed();
        (push.join().unwrap(), edited_after)
    });
    println!(
        "edit at {edited_after:?}, push done at {:?}",
        started.elapsed()
    );
    assert_eq!(code(&out), 8, "{}", describe(&out));
    let doc = json_of(&out);
    assert_eq!(kept(&doc), vec!["/etc/config/dhcp"], "{doc}");
    assert_eq!(
        lab.read("fw2", "/etc/config/dhcp"),
        "edited on fw2 during the push\n"
    );
    let got = std::fs::metadata(lab.path("fw2", "/etc/acme/big.bin")).unwrap();
    assert_eq!(got.len(), 200 << 20, "the rest of the push applied");
    let out = sync(&lab, "fw2", &["--json", "verify"]);
    assert_eq!(code(&out), 10, "{}", describe(&out));
    let doc = json_of(&out);
    assert!(
        doc["drift"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["path"] == "/etc/config/dhcp"),
        "{doc}"
    );
    let _ = std::fs::remove_file(lab.path("fw2", "/etc/acme/big.bin"));
    let _ = std::fs::remove_file(&big);
}
