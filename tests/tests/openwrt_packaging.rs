//! Issue 11, OpenWrt packaging, checked as far as this machine can without
//! the OpenWrt SDK: every shell script passes a POSIX linter (shellcheck);
//! the procd init scripts, run against a stub of procd's shell functions
//! that records the calls, start the right command with respawn, and
//! nothing before ns-ha-init set the node up; the interface hotplug hook
//! calls the right tools; sysupgrade's keep.d list is the OpenWrt layout's;
//! and the rpcd plugin `ns.ha`, driven through rpcd's executable-plugin
//! protocol (`PLUGIN list`, `echo '{}' | PLUGIN call status`) on a paired
//! lab node, answers what `ns-ha-check status --json` says.

use ns_ha_common::platform::{Layout, Platform, SshServer};
use ns_ha_tests::{cluster, Lab};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn files() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/openwrt/files")
}

fn shell_scripts() -> Vec<PathBuf> {
    let f = files();
    let debian = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/debian");
    vec![
        f.join("ns-ha-sync.init"),
        f.join("ns-ha-check-monitor.init"),
        f.join("ns-ha.hotplug"),
        f.join("rpcd/ns.ha"),
        debian.join("postinst"),
        debian.join("prerm"),
        debian.join("postrm"),
        debian.join("build-deb.sh"),
    ]
}

#[test]
fn every_packaging_script_passes_shellcheck_as_posix_sh() {
    for script in shell_scripts() {
        let out = Command::new("shellcheck")
            .args(["-s", "sh"])
            .arg(&script)
            .output()
            .expect(
                "shellcheck is installed (Debian package shellcheck, in the Makefile's PACKAGES)",
            );
        assert!(
            out.status.success(),
            "shellcheck {}:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// Run `start_service` of an init script against a stub of procd's
/// functions; returns the recorded calls, one per line.
fn procd_calls(script: &Path, root: &Path) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let calls = dir.path().join("calls");
    let stub = r#"
procd_open_instance() { echo "procd_open_instance $*" >>"$CALLS"; }
procd_set_param() { echo "procd_set_param $*" >>"$CALLS"; }
procd_append_param() { echo "procd_append_param $*" >>"$CALLS"; }
procd_close_instance() { echo "procd_close_instance $*" >>"$CALLS"; }
procd_add_reload_trigger() { echo "procd_add_reload_trigger $*" >>"$CALLS"; }
. "$1"
[ "$USE_PROCD" = 1 ] || { echo "USE_PROCD is not 1" >&2; exit 1; }
[ -n "$START" ] && [ -n "$STOP" ] || { echo "START/STOP missing" >&2; exit 1; }
start_service
"#;
    let out = Command::new("sh")
        .args(["-c", stub, "stub"])
        .arg(script)
        .env("CALLS", &calls)
        .env("NS_HA_ROOT", root)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(&calls)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn procd_init_scripts_start_the_watcher_and_the_monitor_with_respawn() {
    let node = tempfile::tempdir().expect("tempdir");
    for (script, instance, command) in [
        (
            "ns-ha-sync.init",
            "ns-ha-sync",
            "/usr/sbin/ns-ha-sync watch",
        ),
        (
            "ns-ha-check-monitor.init",
            "ns-ha-check-monitor",
            "/usr/sbin/ns-ha-check monitor",
        ),
    ] {
        let script = files().join(script);
        // Before ns-ha-init: no instance (procd would respawn a failing tool).
        assert_eq!(procd_calls(&script, node.path()), Vec::<String>::new());
        std::fs::create_dir_all(node.path().join("etc/ns-ha")).expect("mkdir");
        std::fs::write(node.path().join("etc/ns-ha/cluster.json"), "{}").expect("write");
        let calls = procd_calls(&script, node.path());
        assert_eq!(
            calls,
            [
                format!("procd_open_instance {instance}"),
                format!("procd_set_param command {command}"),
                "procd_set_param respawn 3600 5 0".to_string(),
                "procd_close_instance ".to_string(),
            ],
            "{}",
            script.display()
        );
        std::fs::remove_file(node.path().join("etc/ns-ha/cluster.json")).expect("rm");
    }
}

#[test]
fn the_hotplug_hook_announces_on_ifup_and_applies_the_role() {
    let node = tempfile::tempdir().expect("tempdir");
    let bin = tempfile::tempdir().expect("tempdir");
    let log = bin.path().join("calls");
    for tool in ["ns-ha-vip", "ns-ha-role"] {
        let p = bin.path().join(tool);
        std::fs::write(
            &p,
            format!("#!/bin/sh\necho \"{tool} $*\" >>\"{}\"\n", log.display()),
        )
        .expect("stub");
        let mut perm = std::fs::metadata(&p).expect("meta").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&p, perm).expect("chmod");
    }
    let hook = files().join("ns-ha.hotplug");
    let event = |action: &str| {
        let _ = std::fs::remove_file(&log);
        let out = Command::new("sh")
            .arg("-c")
            .arg(". \"$0\"; wait")
            .arg(&hook)
            .env("ACTION", action)
            .env("INTERFACE", "lan")
            .env("DEVICE", "br-lan")
            .env("NS_HA_ROOT", node.path())
            .env("NS_HA_BIN", bin.path())
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The role pass runs in the background: give it a moment.
        let mut lines = Vec::new();
        for _ in 0..50 {
            lines = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>();
            if lines.iter().any(|l| l.starts_with("ns-ha-role")) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        lines.sort();
        lines
    };
    // Not set up yet: nothing.
    assert!(event("ifup").is_empty());
    std::fs::create_dir_all(node.path().join("etc/ns-ha")).expect("mkdir");
    std::fs::write(node.path().join("etc/ns-ha/cluster.json"), "{}").expect("write");
    assert_eq!(
        event("ifup"),
        ["ns-ha-role apply", "ns-ha-vip announce --interface br-lan"]
    );
    assert_eq!(event("ifdown"), ["ns-ha-role apply"]);
}

#[test]
fn sysupgrade_keeps_what_the_openwrt_layout_says_must_survive() {
    let keep = std::fs::read_to_string(files().join("ns-ha.keep")).expect("keep list");
    let mut listed: Vec<&str> = keep.lines().map(|l| l.trim_end_matches('/')).collect();
    listed.sort();
    let mut layout = Layout::new(Platform::Openwrt, SshServer::Dropbear).keep_on_upgrade;
    layout.sort();
    assert_eq!(listed, layout);
}

fn plugin() -> String {
    files().join("rpcd/ns.ha").to_string_lossy().into_owned()
}

#[test]
fn the_rpcd_plugin_lists_status_and_answers_it_with_ns_ha_check_status() {
    let lab = Lab::up();
    cluster::pair(&lab);
    let bin_dir = lab.bin("ns-ha-check");
    let bin_dir = bin_dir
        .parent()
        .expect("dir")
        .to_string_lossy()
        .into_owned();
    let root = lab.root("fw1").to_string_lossy().into_owned();
    // rpcd's environment: its PATH (here the lab's tools first), the node root.
    let rpcd = |args: &str, path: &str| {
        let script = format!(
            "echo '{{}}' | env PATH={path}:/usr/sbin:/usr/bin:/sbin:/bin NS_HA_ROOT={root} {} {args}",
            plugin()
        );
        let out = lab.sh("fw1", &script);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let doc: Value = serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("ns.ha {args}: not one JSON object ({e}): {text:?}"));
        (out.status.success(), doc)
    };
    let (ok, list) = rpcd("list", &bin_dir);
    assert!(ok);
    assert_eq!(list, serde_json::json!({"status": {}}));

    let (ok, status) = rpcd("call status", &bin_dir);
    assert!(ok, "{status}");
    let check: Value = serde_json::from_str(
        cluster::tool_ok(&lab, "fw1", "ns-ha-check", &["status", "--json"]).trim(),
    )
    .expect("status JSON");
    // The same document: the same fields, and the same values where they
    // do not move between two runs.
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&status), keys(&check));
    for field in [
        "node_role",
        "cluster_id",
        "enabled",
        "vrrp_state",
        "maintenance",
        "vips",
    ] {
        assert_eq!(status[field], check[field], "{field}");
    }
    assert_eq!(status["node_role"], "primary");
    assert_eq!(status["vrrp_state"], "MASTER");

    let (_, unknown) = rpcd("call reboot", &bin_dir);
    assert_eq!(unknown["code"], 2, "{unknown}");
    // Without the tools: an error document, not silence.
    let (_, missing) = rpcd("call status", "/nonexistent");
    assert_eq!(missing["code"], 9, "{missing}");
}
