//! Small real Debian packages and a dpkg database inside a lab node's root,
//! for the `upgrade-remote` tests.
//!
//! Why: upgrading the backup must be tested with the real dpkg, but never
//! against this machine's own package database. A node root gets its own
//! (`NODEROOT/var/lib/dpkg`, which `dpkg --root=NODEROOT` uses), and the
//! probe package installs one file under the node root; [`host_dpkg_digest`]
//! lets a test assert that the machine's database did not change.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Lab;

/// The probe package's name.
pub const PROBE: &str = "ns-ha-upgrade-probe";
/// The file the probe installs (under the node root), holding its version.
pub const PROBE_FILE: &str = "/usr/share/ns-ha-upgrade-probe/VERSION";

/// Build `ns-ha-upgrade-probe_VERSION_all.deb` in `dir` with dpkg-deb.
pub fn probe_deb(dir: &Path, version: &str) -> PathBuf {
    let tree = dir.join(format!("probe-{version}"));
    let file = tree.join(PROBE_FILE.trim_start_matches('/'));
    std::fs::create_dir_all(file.parent().expect("parent")).expect("probe tree");
    std::fs::write(&file, format!("{version}\n")).expect("probe file");
    std::fs::create_dir_all(tree.join("DEBIAN")).expect("DEBIAN dir");
    std::fs::write(
        tree.join("DEBIAN/control"),
        format!(
            "Package: {PROBE}\nVersion: {version}\nArchitecture: all\nMaintainer: ns-ha tests <ns-ha@localhost>\nDescription: ns-ha upgrade-remote test package\n"
        ),
    )
    .expect("control");
    build_deb(&tree, &dir.join(format!("{PROBE}_{version}_all.deb")))
}

/// `dpkg-deb --build TREE DEB`, every file root's.
fn build_deb(tree: &Path, deb: &Path) -> PathBuf {
    let out = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(tree)
        .arg(deb)
        .output()
        .expect("dpkg-deb runs");
    assert!(
        out.status.success(),
        "dpkg-deb --build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    deb.to_path_buf()
}

/// The .deb `make deb` built: target/deb/ns-ha_*.deb (or $NS_HA_DEB).
pub fn built_deb() -> PathBuf {
    if let Some(p) = std::env::var_os("NS_HA_DEB") {
        return PathBuf::from(p);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| {
            if t.is_absolute() {
                t
            } else {
                workspace.join(t)
            }
        })
        .unwrap_or_else(|| workspace.join("target"));
    let dir = target.join("deb");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("no {} ({e}): run `make deb` first", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    debs.sort();
    debs.pop()
        .unwrap_or_else(|| panic!("no .deb in {}: run `make deb` first", dir.display()))
}

/// The package in `deb` rebuilt into `dir` with its version changed to
/// `version` (the same files and maintainer scripts): the project's own
/// package, older or newer, without a second build.
pub fn repackaged(deb: &Path, dir: &Path, version: &str) -> PathBuf {
    let tree = dir.join(format!("tree-{version}"));
    let status = Command::new("dpkg-deb")
        .arg("--raw-extract")
        .arg(deb)
        .arg(&tree)
        .status()
        .expect("dpkg-deb runs");
    assert!(status.success(), "dpkg-deb --raw-extract {}", deb.display());
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).expect("control");
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("Version:") {
                format!("Version: {version}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&control, text).expect("control");
    build_deb(&tree, &dir.join(format!("ns-ha_{version}.deb")))
}

/// `node`'s dpkg database says what this machine's says is installed (the
/// status file only), so a package's dependencies (keepalived, libssl3...)
/// are met there as on a real Debian backup.
pub fn dpkg_root_like_host(lab: &Lab, node: &str) {
    dpkg_root(lab, node);
    let status = std::fs::read_to_string("/var/lib/dpkg/status").expect("/var/lib/dpkg/status");
    lab.write(node, "/var/lib/dpkg/status", &status);
}

/// A package's version in `node`'s own dpkg database (`None`: not installed).
pub fn package_version(lab: &Lab, node: &str, package: &str) -> Option<String> {
    let admindir = lab.path(node, "/var/lib/dpkg");
    let out = Command::new("dpkg-query")
        .arg(format!("--admindir={}", admindir.display()))
        .args([
            "--showformat=${db:Status-Abbrev}${Version}",
            "--show",
            package,
        ])
        .output()
        .expect("dpkg-query runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.strip_prefix("ii ").map(|v| v.trim().to_string())
}

/// Give `node` an empty dpkg database of its own (`NODEROOT/var/lib/dpkg`).
pub fn dpkg_root(lab: &Lab, node: &str) {
    for d in ["/var/lib/dpkg/info", "/var/lib/dpkg/updates"] {
        std::fs::create_dir_all(lab.path(node, d)).expect("dpkg dirs");
    }
    for f in ["/var/lib/dpkg/status", "/var/lib/dpkg/available"] {
        lab.write(node, f, "");
    }
}

/// The probe's version as `node`'s own dpkg database has it (`None`: not installed).
pub fn probe_version(lab: &Lab, node: &str) -> Option<String> {
    package_version(lab, node, PROBE)
}

/// sha256 of this machine's dpkg status file and of its list of package
/// files, to show a test left the host's package database alone.
pub fn host_dpkg_digest() -> String {
    let out = Command::new("sh")
        .args([
            "-c",
            "cat /var/lib/dpkg/status; ls /var/lib/dpkg/info | sha256sum",
        ])
        .output()
        .expect("sh runs");
    let mut h = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum runs");
    {
        use std::io::Write;
        h.stdin
            .take()
            .expect("stdin")
            .write_all(&out.stdout)
            .expect("feeding sha256sum");
    }
    let out = h.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
