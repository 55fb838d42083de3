//! Issue 11, upgrading the backup from the primary: `ns-ha-init
//! upgrade-remote FILE` sends a real .deb over the pinned channel, the
//! backup's receiver installs it with the real dpkg (into the node root's own
//! database), and both nodes then report the same ns-ha version. A downgrade
//! and a file whose hash is not the declared one are refused with nothing
//! installed, and the machine's own dpkg database is never touched.

use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use ns_ha_tests::cluster::{pair_only, tool};
use ns_ha_tests::packages::{
    built_deb, dpkg_root, dpkg_root_like_host, host_dpkg_digest, package_version, probe_deb,
    probe_version, repackaged, PROBE, PROBE_FILE,
};
use ns_ha_tests::Lab;

fn upgrade(lab: &Lab, args: &[&str]) -> (i32, Value, String) {
    let mut a = vec!["--json", "upgrade-remote"];
    a.extend_from_slice(args);
    let out = tool(lab, "fw1", "ns-ha-init", &a);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let doc = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {stdout}"));
    (
        out.status.code().unwrap_or(-1),
        doc,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_string()
}

/// Send one `upgrade` request straight to the backup's receiver (the forced
/// command, on its stdin as sshd would give it the channel), declaring
/// `declared_sha256` for `blob`; returns the reply.
fn forged_upgrade(lab: &Lab, cluster_id: &str, declared_sha256: &str, blob: &[u8]) -> Value {
    let req = serde_json::json!({
        "op": "upgrade",
        "cluster_id": cluster_id,
        "kind": "deb",
        "size": blob.len(),
        "sha256": declared_sha256,
        "force_downgrade": false,
    });
    let body = serde_json::to_vec(&req).expect("json");
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame.extend_from_slice(blob);
    let root = lab.root("fw2");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.ns("fw2")])
        .arg(lab.bin("ns-ha-sync"))
        .arg("--root")
        .arg(&root)
        .arg("receive")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("receiver runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&frame)
        .expect("sending the frame");
    let out = child.wait_with_output().expect("receiver ends");
    let mut r = &out.stdout[..];
    let mut len = [0u8; 4];
    r.read_exact(&mut len).unwrap_or_else(|_| {
        panic!(
            "no reply from the receiver: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut body).expect("the reply body");
    serde_json::from_slice(&body).expect("a JSON reply")
}

#[test]
fn upgrade_remote_installs_a_newer_package_and_refuses_downgrades_and_tampering() {
    let host_before = host_dpkg_digest();
    let lab = Lab::up();
    pair_only(&lab);
    dpkg_root(&lab, "fw2");
    let debs = tempfile::tempdir().expect("tempdir");
    let v1 = probe_deb(debs.path(), "1.0");
    let v2 = probe_deb(debs.path(), "2.0");
    let status = || std::fs::read(lab.path("fw2", "/var/lib/dpkg/status")).expect("status");

    let (code, doc, err) = upgrade(&lab, &[v1.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{doc} {err}");
    assert_eq!(doc["package"], PROBE);
    assert_eq!(doc["installed_version"], "1.0");
    assert!(doc["previous_version"].is_null(), "{doc}");
    assert_eq!(doc["sha256"], sha256(&v1));
    assert_eq!(doc["backup_ns_ha_version"], doc["ns_ha_version"]);
    assert_eq!(probe_version(&lab, "fw2").as_deref(), Some("1.0"));
    assert_eq!(lab.read("fw2", PROBE_FILE), "1.0\n");

    let (code, doc, err) = upgrade(&lab, &[v2.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{doc} {err}");
    assert_eq!(doc["previous_version"], "1.0");
    assert_eq!(doc["installed_version"], "2.0");
    assert_eq!(probe_version(&lab, "fw2").as_deref(), Some("2.0"));
    assert_eq!(lab.read("fw2", PROBE_FILE), "2.0\n");

    // A downgrade: refused (exit 8), nothing installed.
    let before = status();
    let (code, doc, _) = upgrade(&lab, &[v1.to_str().expect("utf-8")]);
    assert_eq!(code, 8, "{doc}");
    assert!(
        doc["error"]
            .as_str()
            .is_some_and(|e| e.contains("--force-downgrade")),
        "{doc}"
    );
    assert_eq!(
        status(),
        before,
        "a refused downgrade changed dpkg's status"
    );
    assert_eq!(lab.read("fw2", PROBE_FILE), "2.0\n");

    // A tampered file: the bytes are not the ones whose hash was declared.
    let cluster: Value =
        serde_json::from_str(&lab.read("fw2", "/etc/ns-ha/cluster.json")).expect("cluster.json");
    let cluster_id = cluster["cluster_id"].as_str().expect("cluster_id");
    let mut tampered = std::fs::read(&v1).expect("v1");
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    let reply = forged_upgrade(&lab, cluster_id, &sha256(&v1), &tampered);
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["code"], 7, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .is_some_and(|e| e.contains("sha256")),
        "{reply}"
    );
    assert_eq!(status(), before, "a tampered package changed dpkg's status");
    assert_eq!(probe_version(&lab, "fw2").as_deref(), Some("2.0"));
    // The same request with the right hash is accepted, so the refusal
    // above was the hash's: that one is v1, a downgrade, refused as such.
    let reply = forged_upgrade(
        &lab,
        cluster_id,
        &sha256(&v1),
        &std::fs::read(&v1).expect("v1"),
    );
    assert_eq!(reply["code"], 8, "{reply}");

    // Forced, the downgrade goes through.
    let (code, doc, err) = upgrade(&lab, &["--force-downgrade", v1.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{doc} {err}");
    assert_eq!(doc["installed_version"], "1.0");
    assert_eq!(probe_version(&lab, "fw2").as_deref(), Some("1.0"));

    // Nothing left in the backup's state dir, nothing on the primary or the host.
    let state_dir = cluster["sync"]["state_dir"].as_str().expect("state_dir");
    let incoming = lab.path("fw2", &format!("{state_dir}/upgrade"));
    let left: Vec<_> = std::fs::read_dir(&incoming)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", incoming.display());
    assert!(!lab.path("fw1", PROBE_FILE).exists());
    assert!(!Path::new(PROBE_FILE).exists(), "installed on the host");
    drop(lab);
    assert_eq!(
        host_dpkg_digest(),
        host_before,
        "the host's dpkg database changed"
    );
}

/// The project's own package (the .deb `make deb` built): installed on the
/// backup by upgrade-remote with the real dpkg, its maintainer scripts run
/// (chrootless, leaving systemd alone in a node root), the tools in the
/// backup's /usr/sbin; then the same package one version newer upgrades it
/// and one version older is refused. In the lab both nodes run the
/// workspace's tools, so the ns-ha version both report is that build's
/// (a mismatch after the install is covered by a unit test).
#[test]
fn upgrade_remote_installs_the_projects_own_package_on_the_backup() {
    let deb = built_deb();
    let host_before = host_dpkg_digest();
    let lab = Lab::up();
    pair_only(&lab);
    dpkg_root_like_host(&lab, "fw2");
    let out = Command::new("dpkg-deb")
        .args(["--field"])
        .arg(&deb)
        .arg("Version")
        .output()
        .expect("dpkg-deb runs");
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!version.is_empty(), "no Version in {}", deb.display());
    let debs = tempfile::tempdir().expect("tempdir");
    let newer = repackaged(&deb, debs.path(), &format!("{version}+lab1"));
    let older = repackaged(&deb, debs.path(), &format!("{version}~lab0"));

    let (code, doc, err) = upgrade(&lab, &[deb.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{doc} {err}");
    assert_eq!(doc["package"], "ns-ha");
    assert_eq!(doc["installed_version"], version.as_str());
    assert!(doc["previous_version"].is_null(), "{doc}");
    assert_eq!(doc["backup_ns_ha_version"], doc["ns_ha_version"]);
    assert_eq!(package_version(&lab, "fw2", "ns-ha"), Some(version.clone()));
    let multi = lab.path("fw2", "/usr/sbin/ns-ha");
    assert!(multi.is_file(), "{} not installed", multi.display());
    for t in [
        "ns-ha-init",
        "ns-ha-sync",
        "ns-ha-role",
        "ns-ha-check",
        "ns-ha-vip",
    ] {
        let p = lab.path("fw2", &format!("/usr/sbin/{t}"));
        assert_eq!(
            std::fs::read_link(&p).ok().as_deref(),
            Some(Path::new("ns-ha")),
            "{}",
            p.display()
        );
    }
    assert!(!lab.path("fw1", "/usr/sbin/ns-ha").exists());

    let (code, doc, err) = upgrade(&lab, &[newer.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{doc} {err}");
    assert_eq!(doc["previous_version"], version.as_str());
    assert_eq!(doc["installed_version"], format!("{version}+lab1"));
    assert_eq!(
        package_version(&lab, "fw2", "ns-ha"),
        Some(format!("{version}+lab1"))
    );

    let status = || std::fs::read(lab.path("fw2", "/var/lib/dpkg/status")).expect("status");
    let before = status();
    let (code, doc, _) = upgrade(&lab, &[older.to_str().expect("utf-8")]);
    assert_eq!(code, 8, "{doc}");
    assert_eq!(
        status(),
        before,
        "a refused downgrade changed dpkg's status"
    );
    drop(lab);
    assert_eq!(
        host_dpkg_digest(),
        host_before,
        "the host's dpkg database changed"
    );
}
