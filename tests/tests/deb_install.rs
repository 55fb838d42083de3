//! Issue 11, Debian packaging: the .deb that `make deb` builds installs on
//! this machine (root-owned tools in /usr/sbin, systemd units that
//! `systemd-analyze verify` accepts), the lab pairs and fails over with the
//! installed tools (not the workspace's), and `dpkg -r` removes every file
//! the package brought, also when the test fails (a guard removes it).
//!
//! It refuses to run where ns-ha is installed already (it would remove an
//! administrator's package) and fails, never skips, without the .deb.

use ns_ha_tests::packages::built_deb;
use ns_ha_tests::{cluster, net, wait_until, Lab};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const TOOLS: [&str; 5] = [
    "ns-ha-init",
    "ns-ha-sync",
    "ns-ha-role",
    "ns-ha-check",
    "ns-ha-vip",
];

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn installed() -> bool {
    let out = run("dpkg-query", &["-W", "-f=${Status}", "ns-ha"]);
    String::from_utf8_lossy(&out.stdout).contains("ok installed")
}

/// Removes the package when dropped, whatever happened.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let out = run("dpkg", &["--purge", "ns-ha"]);
        if !out.status.success() {
            eprintln!(
                "dpkg --purge ns-ha failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn the_deb_installs_runs_the_lab_from_usr_sbin_and_is_removed_cleanly() {
    let deb = built_deb();
    assert!(
        !installed(),
        "ns-ha is installed on this machine already: this test would remove it (dpkg -r ns-ha first)"
    );
    for t in TOOLS.iter().chain(&["ns-ha"]) {
        assert!(
            !Path::new("/usr/sbin").join(t).exists(),
            "/usr/sbin/{t} exists outside the package: remove it first"
        );
    }
    let guard = Installed;
    run_ok("dpkg", &["-i", &deb.to_string_lossy()]);
    let listed: Vec<PathBuf> = run_ok("dpkg", &["-L", "ns-ha"])
        .lines()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect();
    // One multi-call binary, root-owned, and the tools as links to it.
    let multi = Path::new("/usr/sbin/ns-ha");
    let meta = std::fs::symlink_metadata(multi).expect("/usr/sbin/ns-ha");
    assert!(meta.is_file());
    assert_eq!(
        (meta.uid(), meta.gid()),
        (0, 0),
        "owner of {}",
        multi.display()
    );
    assert_eq!(meta.mode() & 0o7777, 0o755, "mode of {}", multi.display());
    for t in TOOLS {
        let p = Path::new("/usr/sbin").join(t);
        let link = std::fs::read_link(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(link, Path::new("ns-ha"), "{}", p.display());
        assert!(listed.contains(&p), "{} not in dpkg -L", p.display());
    }
    let units: Vec<String> = listed
        .iter()
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "service" || x == "timer")
        })
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert_eq!(units.len(), 4, "units: {units:?}");
    // The pppd hook of PPPoE WANs, executable, a conffile (an edit survives
    // an upgrade; purge removes it, checked below).
    let hook = Path::new(ns_ha_common::wan::PPP_ROUTE_HOOK);
    assert!(
        listed.contains(&hook.to_path_buf()),
        "{} not in dpkg -L",
        hook.display()
    );
    let mode = std::fs::metadata(hook).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755, "mode of {}", hook.display());
    let conffiles = run_ok("dpkg-query", &["-W", "-f=${Conffiles}", "ns-ha"]);
    assert!(
        conffiles.contains(ns_ha_common::wan::PPP_ROUTE_HOOK),
        "conffiles: {conffiles}"
    );
    let mut verify = vec!["verify"];
    verify.extend(units.iter().map(String::as_str));
    let out = run("systemd-analyze", &verify);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    {
        let lab = Lab::up_installed(Path::new("/usr/sbin"));
        assert_eq!(lab.bin("ns-ha-init"), Path::new("/usr/sbin/ns-ha-init"));
        cluster::pair(&lab);
        // keepalived runs the installed role engine.
        let conf = lab.read("fw1", "/etc/keepalived/keepalived.conf");
        assert!(conf.contains("/usr/sbin/ns-ha-role"), "{conf}");
        // Each link runs its own tool.
        for t in TOOLS {
            let version = cluster::tool_ok(&lab, "fw2", t, &["--version"]);
            assert!(version.starts_with(&format!("{t} ")), "{version}");
        }
        // Failover: fw1 dies (its links down, keepalived killed), fw2
        // takes the VIP and the LAN client reaches it there.
        lab.crash("fw1");
        assert!(
            wait_until(Duration::from_secs(10), Duration::from_millis(20), || lab
                .has_addr("fw2", net::LAN_VIP)),
            "fw2 did not take the LAN VIP after fw1 was lost"
        );
        assert!(
            lab.ping("lan", net::LAN_VIP, 3),
            "client cannot reach the VIP on fw2"
        );
    }

    drop(guard);
    assert!(!installed(), "ns-ha still installed after dpkg --purge");
    for p in &listed {
        // symlink_metadata: a link left behind counts even when dangling.
        assert!(
            std::fs::symlink_metadata(p).is_err(),
            "{} left behind",
            p.display()
        );
    }
    let wants = Path::new("/etc/systemd/system");
    for dir in ["multi-user.target.wants", "timers.target.wants"] {
        if let Ok(entries) = std::fs::read_dir(wants.join(dir)) {
            for e in entries.flatten() {
                assert!(
                    !e.file_name().to_string_lossy().starts_with("ns-ha-"),
                    "{} left behind",
                    e.path().display()
                );
            }
        }
    }
}
