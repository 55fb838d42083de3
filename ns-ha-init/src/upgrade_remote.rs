//! `upgrade-remote FILE`: keep the backup on the primary's release.
//!
//! The primary hashes the package, sends it over the pinned channel as one
//! `upgrade` request (the backup verifies the hash, refuses a downgrade
//! unless forced, and installs with its package manager: see
//! `ns_ha_common::upgrade`), then opens a new channel and greets the backup:
//! the new receiver is the installed release, and `hello` succeeds only
//! when both nodes run the same ns-ha version.

use anyhow::Result;
use serde_json::json;
use std::path::Path;

use ns_ha_common::config::{load_cluster, load_node};
use ns_ha_common::exit::{fail, Code};
use ns_ha_common::proto::NS_HA_VERSION;
use ns_ha_common::upgrade::{sha256_file, PackageKind, UpgradeRequest, MAX_PACKAGE};

use crate::{Ctx, Report};

/// Send `file` to the backup, have it installed there, check both nodes' versions.
pub fn upgrade_remote(ctx: &Ctx, file: &Path, force_downgrade: bool) -> Result<Report> {
    let kind = PackageKind::of_file(file)?;
    let (size, sha256) = sha256_file(file).map_err(|e| {
        fail(
            Code::InvalidInput,
            format!("{e:#}: give the path of a package file on this node"),
        )
    })?;
    if size > MAX_PACKAGE {
        return Err(fail(
            Code::InvalidInput,
            format!(
                "{} has {size} bytes, over the {MAX_PACKAGE}-byte limit of upgrade-remote: copy it to the backup and install it there by hand",
                file.display()
            ),
        ));
    }
    let node = load_node(&ctx.root)?;
    let cluster = load_cluster(&ctx.root)?;
    let req = UpgradeRequest {
        cluster_id: cluster.cluster_id.clone(),
        kind,
        size,
        sha256: sha256.clone(),
        force_downgrade,
    };
    let installed = ctx.link.upgrade(&ctx.root, &node, &cluster, &req, file)?;
    // A new channel runs the release now installed on the backup.
    let hello = ctx
        .link
        .connect_pinned(&ctx.root, &node, &cluster)
        .map_err(|e| {
            fail(
                ns_ha_common::exit::code_of(&e),
                format!(
                    "installed {} {} on the backup, but the nodes do not run the same ns-ha release now: {e:#}",
                    installed.package, installed.installed_version
                ),
            )
        })?
        .hello;
    if hello.version != NS_HA_VERSION {
        return Err(fail(
            Code::Conflict,
            format!(
                "installed {} {} on the backup, which reports ns-ha {} while this node runs {NS_HA_VERSION}: install the same release here",
                installed.package, installed.installed_version, hello.version
            ),
        ));
    }
    let human = format!(
        "backup: {} {} installed (was {}), sha256 {sha256} verified\nboth nodes run ns-ha {NS_HA_VERSION}\n",
        installed.package,
        installed.installed_version,
        installed.previous_version.as_deref().unwrap_or("not installed"),
    );
    Ok(Report::new(
        human,
        json!({
            "file": file.display().to_string(),
            "size": size,
            "sha256": sha256,
            "package": installed.package,
            "previous_version": installed.previous_version,
            "installed_version": installed.installed_version,
            "ns_ha_version": NS_HA_VERSION,
            "backup_ns_ha_version": hello.version,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Pair;
    use ns_ha_common::exit::code_of;
    use ns_ha_common::upgrade::UpgradeReply;

    fn package(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn the_package_is_sent_with_its_hash_and_the_versions_are_checked() {
        let lab = Pair::new(false);
        lab.link.state().upgrade_reply = Some(UpgradeReply {
            package: "probe".into(),
            previous_version: Some("1.0".into()),
            installed_version: "2.0".into(),
        });
        let file = package(lab.root.base(), "probe_2.0_all.deb", b"deb bytes");
        let r = upgrade_remote(&lab.ctx(), &file, false).unwrap();
        assert_eq!(r.json["installed_version"], "2.0");
        assert_eq!(r.json["backup_ns_ha_version"], NS_HA_VERSION);
        let s = lab.link.state();
        let (req, bytes) = &s.upgrades[0];
        assert_eq!(bytes, b"deb bytes");
        assert_eq!(req.size, 9);
        assert_eq!(req.sha256, sha256_file(&file).unwrap().1);
        assert_eq!(req.kind, PackageKind::Deb);
        assert!(!req.force_downgrade);
    }

    #[test]
    fn a_version_mismatch_after_the_install_is_an_error() {
        let lab = Pair::new(false);
        {
            let mut s = lab.link.state();
            s.upgrade_reply = Some(UpgradeReply {
                package: "ns-ha".into(),
                previous_version: None,
                installed_version: "9.9".into(),
            });
            s.version = Some("9.9".into());
        }
        let file = package(lab.root.base(), "ns-ha_9.9_amd64.deb", b"x");
        let e = upgrade_remote(&lab.ctx(), &file, true).unwrap_err();
        assert_eq!(code_of(&e), Code::Conflict);
        assert!(e.to_string().contains("9.9"), "{e:#}");
        assert!(lab.link.state().upgrades[0].0.force_downgrade);
    }

    #[test]
    fn a_file_that_is_no_package_is_refused_before_connecting() {
        let lab = Pair::new(false);
        let file = package(lab.root.base(), "image.bin", b"x");
        let e = upgrade_remote(&lab.ctx(), &file, false).unwrap_err();
        assert_eq!(code_of(&e), Code::InvalidInput);
        let e =
            upgrade_remote(&lab.ctx(), &lab.root.base().join("missing.deb"), false).unwrap_err();
        assert_eq!(code_of(&e), Code::InvalidInput);
        assert!(lab.link.state().upgrades.is_empty());
    }
}
