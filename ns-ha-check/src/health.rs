//! `ns-ha-check health`: can this node serve as master right now?
//!
//! keepalived (track_script or track_file) and cron want a yes/no fast: every
//! interface of the cluster must exist, be up and carry this node's static
//! address, or the VIPs would land on a node that cannot forward. The answer
//! is an exit code, and optionally `0`/`1` in the health track file.

use anyhow::Result;

use ns_ha_common::addresses::address_problems;
use ns_ha_common::config::{ClusterConfig, Role};
use ns_ha_common::fsutil::atomic_write;
use ns_ha_common::net::InterfaceSource;
use ns_ha_common::root::paths;
use ns_ha_common::NodeRoot;

/// Why this node cannot serve as master (empty: it can).
pub fn problems(
    cluster: &ClusterConfig,
    role: Role,
    ifs: &dyn InterfaceSource,
) -> Result<Vec<String>> {
    Ok(address_problems(cluster, role, ifs)?
        .iter()
        .map(|p| p.to_string())
        .collect())
}

/// Write `0` (healthy) or `1` into the health track file for keepalived.
pub fn write_track(root: &NodeRoot, healthy: bool) -> Result<()> {
    let v: &[u8] = if healthy { b"0\n" } else { b"1\n" };
    atomic_write(&root.path(paths::HEALTH_TRACK), v, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ns_ha_common::fixtures::{interface as iface, sample_cluster as cluster};
    use ns_ha_common::net::StaticInterfaces;

    #[test]
    fn down_missing_and_unaddressed_interfaces_are_reported() {
        let c = cluster();
        let good = StaticInterfaces(vec![
            iface("ha0", &["10.99.0.1/24"]),
            iface("lan0", &["10.99.1.1/24", "10.99.1.254/24"]),
        ]);
        assert!(problems(&c, Role::Primary, &good).unwrap().is_empty());
        // The backup's addresses are not the primary's.
        let p = problems(&c, Role::Backup, &good).unwrap();
        assert_eq!(p.len(), 2, "{p:?}");
        let mut down = good.clone();
        down.0[1].up = false;
        assert_eq!(
            problems(&c, Role::Primary, &down).unwrap(),
            vec!["interface lan0 is down"]
        );
        let missing = StaticInterfaces(vec![iface("ha0", &["10.99.0.1/24"])]);
        assert_eq!(
            problems(&c, Role::Primary, &missing).unwrap(),
            vec!["interface lan0 does not exist"]
        );
    }

    #[test]
    fn track_file_holds_zero_or_one() {
        let d = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(d.path()).unwrap();
        write_track(&root, false).unwrap();
        let p = root.path(paths::HEALTH_TRACK);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "1\n");
        write_track(&root, true).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "0\n");
    }
}
