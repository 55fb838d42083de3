//! Issue 8 item 6, the `ns-ha-init` entry point: a LAN that does not fit the
//! cluster (here: its subnet overlaps the HA subnet) is refused by `add-lan`
//! with the field and the fix, exit 3, before the backup is contacted and
//! with nothing written. Lab-free: the interface is answered by a fake `ip`.

use clap::Parser;
use ns_ha_common::cmd::{CmdOutput, RecordingRunner};
use ns_ha_common::config::{save_cluster, save_node};
use ns_ha_common::exit::{code_of, Code};
use ns_ha_common::root::paths;
use ns_ha_common::NodeRoot;
use ns_ha_init::backup::SshLink;
use ns_ha_init::{run, Cli};

fn answer(stdout: &str) -> CmdOutput {
    CmdOutput {
        status: Some(0),
        stdout: stdout.into(),
        ..Default::default()
    }
}

/// A paired primary (sample cluster: HA 10.99.0.0/24 VRID 50, lan0
/// 10.99.1.0/24 VRID 51) whose "backup" is a closed local port, so an edit
/// that got as far as the peer fails with exit 6 instead. Runs add-lan for
/// lan1 (address `lan1_addr`) with `extra` arguments; returns the error, the
/// runner's calls and whether cluster.json stayed as it was.
fn add_lan1(lan1_addr: &str, extra: &[&str]) -> (anyhow::Error, Vec<Vec<String>>, bool) {
    let dir = tempfile::tempdir().unwrap();
    let root = NodeRoot::new(dir.path()).unwrap();
    let mut cluster = ns_ha_common::fixtures::sample_cluster();
    cluster.ssh.port = 1;
    save_cluster(&root, &cluster).unwrap();
    save_node(
        &root,
        &ns_ha_common::fixtures::paired_primary_node([127, 0, 0, 1].into()),
    )
    .unwrap();
    let before = std::fs::read(root.path(paths::CLUSTER_CONFIG)).unwrap();
    let runner = RecordingRunner::new();
    runner.answer(
        "link show dev lan1",
        answer(r#"[{"ifname":"lan1","flags":["UP"],"link_type":"ether","linkinfo":{"info_kind":"veth"}}]"#),
    );
    runner.answer(
        "addr show dev lan1",
        answer(&format!(
            r#"[{{"ifname":"lan1","addr_info":[{{"family":"inet","local":"{lan1_addr}","prefixlen":24}}]}}]"#
        )),
    );
    let root_arg = dir.path().to_string_lossy().into_owned();
    let mut argv = vec![
        "ns-ha-init",
        "--root",
        &root_arg,
        "add-lan",
        "--interface",
        "lan1",
    ];
    argv.extend_from_slice(extra);
    let err = run(Cli::parse_from(argv), &runner, &SshLink).expect_err("add-lan must be refused");
    let unchanged = std::fs::read(root.path(paths::CLUSTER_CONFIG)).unwrap() == before;
    (err, runner.calls(), unchanged)
}

/// Refused with exit 3 and one line containing `needle`, before the peer,
/// nothing written, nothing run but `ip` to read the interface.
fn assert_refused_early(lan1_addr: &str, extra: &[&str], needle: &str) {
    let (err, calls, unchanged) = add_lan1(lan1_addr, extra);
    let msg = format!("{err:#}");
    assert_eq!(code_of(&err), Code::InvalidInput, "{msg}");
    assert!(msg.contains(needle), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert!(unchanged, "cluster.json changed");
    for call in calls {
        assert_eq!(call[0], "ip", "unexpected call {call:?}");
    }
}

#[test]
fn add_lan_overlapping_the_ha_subnet_is_refused_before_the_peer() {
    // lan1 has 10.99.0.11/24: inside the HA subnet 10.99.0.0/24 of ha0.
    assert_refused_early(
        "10.99.0.11",
        &["--vip", "10.99.0.100/24"],
        "lan1 (subnet 10.99.0.0/24) overlaps the HA subnet 10.99.0.0/24",
    );
}

#[test]
fn add_lan_vrid_must_be_free_and_in_range() {
    assert_refused_early(
        "10.99.5.11",
        &["--vrid", "51"],
        "LANs lan0 and lan1 both have VRID 51",
    );
    assert_refused_early(
        "10.99.5.11",
        &["--vrid", "50"],
        "VRID 50, which is 0 or the HA link's",
    );
    let e = Cli::try_parse_from([
        "ns-ha-init",
        "add-lan",
        "--interface",
        "lan1",
        "--vrid",
        "0",
    ])
    .unwrap_err();
    assert!(e.to_string().contains("0 is not in 1..=255"), "{e}");
    assert!(Cli::try_parse_from([
        "ns-ha-init",
        "init-primary",
        "--ha-interface",
        "ha0",
        "--peer",
        "10.99.0.2",
        "--vrid",
        "256"
    ])
    .is_err());
}
