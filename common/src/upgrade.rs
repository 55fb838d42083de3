//! Upgrading the backup from the primary (`ns-ha-init upgrade-remote FILE`).
//!
//! Why here: the primary sends and the backup's receiver installs, two tools
//! that must agree on the request, the size cap, the hash and the package
//! manager's commands. The one request this adds to the forced command is
//! narrow on purpose: one package file of a known kind (`.deb` for dpkg,
//! `.ipk` for opkg), at most [`MAX_PACKAGE`] bytes, written under the sync's
//! state dir under a name the backup chooses (never a path the primary
//! sends), installed only if its sha256 is the one the primary declared, and
//! not if it is older than the installed package unless the primary says
//! `force_downgrade`. The file is removed afterwards, installed or not.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmd::{args, CommandRunner};
use crate::config::{load_cluster, load_node, Role};
use crate::control::refuse_other_cluster;
use crate::exit::{fail, Code};
use crate::root::NodeRoot;

/// Largest package accepted (a NethSecurity package set fits; a firmware image does not).
pub const MAX_PACKAGE: u64 = 128 << 20;
/// Directory under the sync's state dir where a received package waits for its install.
const INCOMING_DIR: &str = "upgrade";
/// How long the package manager may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The package formats and the manager that installs each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageKind {
    /// Debian package, installed with dpkg.
    Deb,
    /// OpenWrt package, installed with opkg.
    Ipk,
}

impl PackageKind {
    /// The kind of a package file, by its name.
    pub fn of_file(path: &Path) -> Result<PackageKind> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("deb") => Ok(PackageKind::Deb),
            Some("ipk") => Ok(PackageKind::Ipk),
            _ => Err(fail(
                Code::InvalidInput,
                format!(
                    "{} is neither a .deb (Debian) nor an .ipk (OpenWrt) package: give the package file of the backup's platform",
                    path.display()
                ),
            )),
        }
    }

    fn extension(self) -> &'static str {
        match self {
            PackageKind::Deb => "deb",
            PackageKind::Ipk => "ipk",
        }
    }
}

/// The `upgrade` request: the package follows as a blob of `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeRequest {
    /// The cluster of the sender (the backup refuses another one).
    pub cluster_id: String,
    pub kind: PackageKind,
    pub size: u64,
    /// Lowercase hex sha256 of the blob, checked before anything is installed.
    pub sha256: String,
    /// Install even if the package is older than the installed one.
    #[serde(default)]
    pub force_downgrade: bool,
}

/// What the backup answers after installing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeReply {
    pub package: String,
    /// The version installed before (`None`: the package was not installed).
    pub previous_version: Option<String>,
    pub installed_version: String,
}

/// A package's name and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInfo {
    pub name: String,
    pub version: String,
}

/// Lowercase hex sha256 of a file (the primary's declaration).
pub fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut f, &mut hasher)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok((size, hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The package manager of one node root: dpkg with `--root`/`--admindir`
/// under a non-system root (the lab), so nothing touches the machine's own
/// package database; opkg with `--offline-root` likewise.
pub struct PackageManager<'a> {
    pub root: &'a NodeRoot,
    pub runner: &'a dyn CommandRunner,
}

impl PackageManager<'_> {
    fn dpkg_admindir(&self) -> String {
        self.root
            .path("/var/lib/dpkg")
            .to_string_lossy()
            .into_owned()
    }

    /// Name and version of the package in `file`.
    pub fn inspect(&self, kind: PackageKind, file: &Path) -> Result<PackageInfo> {
        let file = file.to_string_lossy();
        let out = match kind {
            PackageKind::Deb => self.runner.run_ok(
                "dpkg-deb",
                &args(&["--field", &file, "Package", "Version"]),
                QUERY_TIMEOUT,
            ),
            // An .ipk is a gzipped tar holding ./control.tar.gz.
            PackageKind::Ipk => self.runner.run_ok(
                "sh",
                &args(&[
                    "-c",
                    "tar -xzOf \"$1\" ./control.tar.gz | tar -xzOf - ./control",
                    "sh",
                    &file,
                ]),
                QUERY_TIMEOUT,
            ),
        }
        .map_err(|e| {
            fail(
                Code::InvalidInput,
                format!("not a readable {} package: {e:#}", kind.extension()),
            )
        })?;
        let field = |name: &str| {
            out.stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        match (field("Package"), field("Version")) {
            (Some(name), Some(version)) => Ok(PackageInfo { name, version }),
            _ => Err(fail(
                Code::InvalidInput,
                "the package names no Package and Version: build it with dpkg-deb or the OpenWrt SDK",
            )),
        }
    }

    /// The installed version of `name` (`None`: not installed).
    pub fn installed_version(&self, kind: PackageKind, name: &str) -> Result<Option<String>> {
        let out = match kind {
            PackageKind::Deb => self.runner.run(
                "dpkg-query",
                &args(&[
                    &format!("--admindir={}", self.dpkg_admindir()),
                    "--showformat=${db:Status-Abbrev}${Version}",
                    "--show",
                    name,
                ]),
                QUERY_TIMEOUT,
            )?,
            PackageKind::Ipk => {
                let mut a = self.opkg_root_args();
                a.extend(args(&["status", name]));
                self.runner.run("opkg", &a, QUERY_TIMEOUT)?
            }
        };
        if !out.success() {
            return Ok(None);
        }
        Ok(match kind {
            // "ii 1.2-3": installed; "un " and friends: known but not installed.
            PackageKind::Deb => out
                .stdout
                .strip_prefix("ii ")
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty()),
            PackageKind::Ipk => out
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix("Version:"))
                .map(|v| v.trim().to_string()),
        })
    }

    /// Is `new` older than `old` by the package manager's own ordering?
    pub fn is_older(&self, kind: PackageKind, new: &str, old: &str) -> Result<bool> {
        let out = match kind {
            PackageKind::Deb => self.runner.run(
                "dpkg",
                &args(&["--compare-versions", new, "lt", old]),
                QUERY_TIMEOUT,
            )?,
            PackageKind::Ipk => self.runner.run(
                "opkg",
                &args(&["compare-versions", new, "<<", old]),
                QUERY_TIMEOUT,
            )?,
        };
        match out.status {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(fail(
                Code::Dependency,
                format!(
                    "comparing versions {new} and {old} failed: {}",
                    out.reason()
                ),
            )),
        }
    }

    fn opkg_root_args(&self) -> Vec<String> {
        if self.root.is_system() {
            Vec::new()
        } else {
            vec![
                "--offline-root".into(),
                self.root.base().to_string_lossy().into_owned(),
            ]
        }
    }

    /// Install `file` (already verified).
    pub fn install(&self, kind: PackageKind, file: &Path, force_downgrade: bool) -> Result<()> {
        let file = file.to_string_lossy().into_owned();
        match kind {
            PackageKind::Deb => {
                let mut a = Vec::new();
                if !self.root.is_system() {
                    a.push(format!("--root={}", self.root.base().display()));
                    a.push(format!("--admindir={}", self.dpkg_admindir()));
                    // The maintainer scripts run here with DPKG_ROOT set
                    // (ns-ha's skip systemd then) instead of chrooted into a
                    // node root that has no shell.
                    a.push("--force-script-chrootless".into());
                }
                a.extend(args(&["--install", &file]));
                self.runner.run_ok("dpkg", &a, INSTALL_TIMEOUT)?;
            }
            PackageKind::Ipk => {
                let mut a = self.opkg_root_args();
                a.push("install".into());
                if force_downgrade {
                    a.push("--force-downgrade".into());
                }
                a.push(file);
                self.runner.run_ok("opkg", &a, INSTALL_TIMEOUT)?;
            }
        }
        Ok(())
    }
}

/// The backup's side of `upgrade`: check who asks, take the blob into the
/// state dir, verify its hash, refuse a downgrade unless forced, install.
/// The blob is always read whole (so the channel stays in step) unless its
/// announced size is over the cap.
pub fn receive<R: Read>(
    root: &NodeRoot,
    runner: &dyn CommandRunner,
    req: &UpgradeRequest,
    blob: &mut R,
) -> Result<UpgradeReply> {
    if req.size > MAX_PACKAGE {
        return Err(fail(
            Code::Security,
            format!(
                "package of {} bytes exceeds the {MAX_PACKAGE}-byte limit of upgrade-remote: install it on the backup by hand",
                req.size
            ),
        ));
    }
    let checked = check_backup(root, &req.cluster_id);
    let dir = match &checked {
        Ok(dir) => dir.clone(),
        Err(_) => {
            // Drain the blob so the reply is read in step, then refuse.
            std::io::copy(&mut blob.take(req.size), &mut std::io::sink())
                .context("reading the package")?;
            return Err(checked.unwrap_err());
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join(format!("incoming.{}", req.kind.extension()));
    let result = take_and_install(root, runner, req, blob, &file);
    let _ = std::fs::remove_file(&file);
    result
}

/// This node must be a paired backup of `cluster_id`; the directory for the package.
fn check_backup(root: &NodeRoot, cluster_id: &str) -> Result<PathBuf> {
    let node = load_node(root)?;
    if node.role != Role::Backup {
        return Err(fail(
            Code::State,
            "this node is the primary: upgrade-remote installs on the backup only",
        ));
    }
    let cluster = load_cluster(root).map_err(|e| {
        fail(
            Code::State,
            format!("{e:#}: this backup is not paired, it accepts no upgrade"),
        )
    })?;
    refuse_other_cluster(&cluster.cluster_id, cluster_id)?;
    Ok(root.path(&cluster.sync.state_dir).join(INCOMING_DIR))
}

fn take_and_install<R: Read>(
    root: &NodeRoot,
    runner: &dyn CommandRunner,
    req: &UpgradeRequest,
    blob: &mut R,
    file: &Path,
) -> Result<UpgradeReply> {
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(file)
        .with_context(|| format!("creating {}", file.display()))?;
    let mut hasher = Sha256::new();
    let mut left = req.size;
    let mut buf = vec![0u8; 64 << 10];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = blob.read(&mut buf[..want]).context("reading the package")?;
        if n == 0 {
            return Err(fail(
                Code::Peer,
                format!(
                    "the package ended after {} of {} bytes",
                    req.size - left,
                    req.size
                ),
            ));
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .with_context(|| format!("writing {}", file.display()))?;
        left -= n as u64;
    }
    out.sync_all().ok();
    drop(out);
    let got = hex(&hasher.finalize());
    if got != req.sha256.to_ascii_lowercase() {
        return Err(fail(
            Code::Security,
            format!(
                "the package received has sha256 {got}, not the {} the primary declared: nothing installed; send it again",
                req.sha256
            ),
        ));
    }
    let pm = PackageManager { root, runner };
    let info = pm.inspect(req.kind, file)?;
    let previous = pm.installed_version(req.kind, &info.name)?;
    if let Some(old) = &previous {
        if !req.force_downgrade && pm.is_older(req.kind, &info.version, old)? {
            return Err(fail(
                Code::Conflict,
                format!(
                    "{} {} is older than the {old} installed on the backup: nothing installed; add --force-downgrade to install it anyway",
                    info.name, info.version
                ),
            ));
        }
    }
    log::info!(
        "installing {} {} (was {})",
        info.name,
        info.version,
        previous.as_deref().unwrap_or("not installed")
    );
    pm.install(req.kind, file, req.force_downgrade)?;
    let installed = pm.installed_version(req.kind, &info.name)?.ok_or_else(|| {
        fail(
            Code::Dependency,
            format!(
                "{} reports success but {} is not installed",
                pm_name(req.kind),
                info.name
            ),
        )
    })?;
    Ok(UpgradeReply {
        package: info.name,
        previous_version: previous,
        installed_version: installed,
    })
}

fn pm_name(kind: PackageKind) -> &'static str {
    match kind {
        PackageKind::Deb => "dpkg",
        PackageKind::Ipk => "opkg",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::{CmdOutput, RecordingRunner};
    use crate::config::{save_cluster, save_node};

    fn ok(stdout: &str) -> CmdOutput {
        CmdOutput {
            status: Some(0),
            stdout: stdout.into(),
            ..Default::default()
        }
    }

    fn exit(code: i32) -> CmdOutput {
        CmdOutput {
            status: Some(code),
            ..Default::default()
        }
    }

    /// A paired backup under a temp root.
    fn backup() -> (tempfile::TempDir, NodeRoot, String) {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        let node =
            crate::fixtures::paired_node(Role::Backup, std::net::Ipv4Addr::new(10, 99, 0, 1));
        save_node(&root, &node).unwrap();
        let cluster = crate::fixtures::sample_cluster();
        save_cluster(&root, &cluster).unwrap();
        (dir, root, cluster.cluster_id)
    }

    fn request(cluster_id: &str, data: &[u8]) -> UpgradeRequest {
        let mut h = Sha256::new();
        h.update(data);
        UpgradeRequest {
            cluster_id: cluster_id.into(),
            kind: PackageKind::Deb,
            size: data.len() as u64,
            sha256: hex(&h.finalize()),
            force_downgrade: false,
        }
    }

    fn installs(runner: &RecordingRunner) -> usize {
        runner
            .calls()
            .iter()
            .filter(|c| c.iter().any(|a| a == "--install"))
            .count()
    }

    #[test]
    fn a_newer_package_is_installed_under_the_node_root_and_removed_after() {
        let (_d, root, id) = backup();
        let runner = RecordingRunner::new();
        runner.answer("dpkg-deb", ok("Package: probe\nVersion: 2.0\n"));
        runner.answer("dpkg-query", ok("ii 1.0"));
        runner.answer("--compare-versions", exit(1));
        runner.answer("dpkg-query", ok("ii 2.0"));
        let data = b"package bytes";
        let reply = receive(&root, &runner, &request(&id, data), &mut &data[..]).unwrap();
        assert_eq!(reply.previous_version.as_deref(), Some("1.0"));
        assert_eq!(reply.installed_version, "2.0");
        let install = runner
            .calls()
            .into_iter()
            .find(|c| c.iter().any(|a| a == "--install"))
            .unwrap();
        let base = root.base().display().to_string();
        assert!(install.contains(&format!("--root={base}")), "{install:?}");
        assert!(
            install.contains(&format!("--admindir={base}/var/lib/dpkg")),
            "{install:?}"
        );
        let incoming = root
            .path(crate::sync_config::DEFAULT_STATE_DIR)
            .join("upgrade/incoming.deb");
        assert!(install.contains(&incoming.display().to_string()));
        assert!(!incoming.exists(), "the package file is left behind");
    }

    #[test]
    fn an_ipk_is_inspected_compared_and_installed_with_opkg_under_the_node_root() {
        let (_d, root, id) = backup();
        let runner = RecordingRunner::new();
        runner.answer("control.tar.gz", ok("Package: probe\nVersion: 2.0-1\n"));
        runner.answer(" status probe", ok("Package: probe\nVersion: 1.0-1\n"));
        runner.answer("compare-versions 2.0-1 << 1.0-1", exit(1));
        runner.answer(" status probe", ok("Package: probe\nVersion: 2.0-1\n"));
        let data = b"ipk bytes";
        let req = UpgradeRequest {
            kind: PackageKind::Ipk,
            ..request(&id, data)
        };
        let reply = receive(&root, &runner, &req, &mut &data[..]).unwrap();
        assert_eq!(reply.previous_version.as_deref(), Some("1.0-1"));
        assert_eq!(reply.installed_version, "2.0-1");
        let calls = runner.calls();
        let base = root.base().display().to_string();
        let install = calls
            .iter()
            .find(|c| c[0] == "opkg" && c.iter().any(|a| a == "install"))
            .unwrap_or_else(|| panic!("no opkg install: {calls:?}"));
        assert_eq!(
            install[1..3],
            ["--offline-root".to_string(), base],
            "{install:?}"
        );
        assert!(
            install
                .last()
                .is_some_and(|f| f.ends_with("upgrade/incoming.ipk")),
            "{install:?}"
        );
        assert!(
            !install.iter().any(|a| a == "--force-downgrade"),
            "{install:?}"
        );
        assert!(
            !calls.iter().any(|c| c[0].starts_with("dpkg")),
            "dpkg ran for an ipk: {calls:?}"
        );
    }

    #[test]
    fn a_hash_mismatch_installs_nothing() {
        let (_d, root, id) = backup();
        let runner = RecordingRunner::new();
        let mut req = request(&id, b"the real package");
        let tampered = b"the evil package";
        req.size = tampered.len() as u64;
        let e = receive(&root, &runner, &req, &mut &tampered[..]).unwrap_err();
        assert_eq!(crate::exit::code_of(&e), Code::Security, "{e:#}");
        assert!(runner.calls().is_empty(), "{:?}", runner.calls());
    }

    #[test]
    fn a_downgrade_is_refused_unless_forced() {
        let (_d, root, id) = backup();
        let data = b"old package";
        let runner = RecordingRunner::new();
        runner.answer("dpkg-deb", ok("Package: probe\nVersion: 1.0\n"));
        runner.answer("dpkg-query", ok("ii 2.0"));
        runner.answer("--compare-versions", exit(0));
        let e = receive(&root, &runner, &request(&id, data), &mut &data[..]).unwrap_err();
        assert_eq!(crate::exit::code_of(&e), Code::Conflict, "{e:#}");
        assert!(e.to_string().contains("--force-downgrade"), "{e:#}");
        assert_eq!(installs(&runner), 0);

        let runner = RecordingRunner::new();
        runner.answer("dpkg-deb", ok("Package: probe\nVersion: 1.0\n"));
        runner.answer("dpkg-query", ok("ii 2.0"));
        runner.answer("dpkg-query", ok("ii 1.0"));
        let mut req = request(&id, data);
        req.force_downgrade = true;
        let reply = receive(&root, &runner, &req, &mut &data[..]).unwrap();
        assert_eq!(reply.installed_version, "1.0");
        assert_eq!(installs(&runner), 1);
        assert!(!runner
            .calls()
            .iter()
            .any(|c| c.iter().any(|a| a == "--compare-versions")));
    }

    #[test]
    fn another_cluster_an_oversize_package_and_a_primary_are_refused() {
        let (_d, root, id) = backup();
        let runner = RecordingRunner::new();
        let data = b"x";
        let e = receive(&root, &runner, &request("other", data), &mut &data[..]).unwrap_err();
        assert_eq!(crate::exit::code_of(&e), Code::Conflict);
        let mut big = request(&id, data);
        big.size = MAX_PACKAGE + 1;
        let e = receive(&root, &runner, &big, &mut &data[..]).unwrap_err();
        assert_eq!(crate::exit::code_of(&e), Code::Security);
        let mut node = load_node(&root).unwrap();
        node.role = Role::Primary;
        save_node(&root, &node).unwrap();
        let e = receive(&root, &runner, &request(&id, data), &mut &data[..]).unwrap_err();
        assert_eq!(crate::exit::code_of(&e), Code::State);
        assert!(runner.calls().is_empty());
    }

    #[test]
    fn package_kind_comes_from_the_file_name() {
        assert_eq!(
            PackageKind::of_file(Path::new("/tmp/ns-ha_1.2_amd64.deb")).unwrap(),
            PackageKind::Deb
        );
        assert_eq!(
            PackageKind::of_file(Path::new("ns-ha_1.2_x86_64.ipk")).unwrap(),
            PackageKind::Ipk
        );
        let e = PackageKind::of_file(Path::new("image.bin")).unwrap_err();
        assert_eq!(crate::exit::code_of(&e), Code::InvalidInput);
    }
}
