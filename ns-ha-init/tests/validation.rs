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
use ns_ha_init::{run, Cli};

fn answer(stdout: &str) -> CmdOutput {
    CmdOutput {
        status: Some(0),
        stdout: stdout.into(),
        ..Default::default()
    }
}

#[test]
fn add_lan_overlapping_the_ha_subnet_is_refused_before_the_peer() {
    let dir = tempfile::tempdir().unwrap();
    let root = NodeRoot::new(dir.path()).unwrap();
    // A paired primary whose "backup" would be a closed local port: an edit
    // that got as far as the peer fails with exit 6 instead.
    let mut cluster = ns_ha_common::fixtures::sample_cluster();
    cluster.ssh.port = 1;
    save_cluster(&root, &cluster).unwrap();
    save_node(
        &root,
        &ns_ha_common::fixtures::paired_primary_node([127, 0, 0, 1].into()),
    )
    .unwrap();
    let before = std::fs::read(root.path(paths::CLUSTER_CONFIG)).unwrap();
    // lan1 has 10.99.0.11/24: inside the HA subnet 10.99.0.0/24 of ha0.
    let runner = RecordingRunner::new();
    runner.answer(
        "link show dev lan1",
        answer(r#"[{"ifname":"lan1","flags":["UP"],"link_type":"ether","linkinfo":{"info_kind":"veth"}}]"#),
    );
    runner.answer(
        "addr show dev lan1",
        answer(r#"[{"ifname":"lan1","addr_info":[{"family":"inet","local":"10.99.0.11","prefixlen":24}]}]"#),
    );
    let root_arg = dir.path().to_string_lossy().into_owned();
    let cli = Cli::parse_from([
        "ns-ha-init",
        "--root",
        &root_arg,
        "add-lan",
        "--interface",
        "lan1",
        "--vip",
        "10.99.0.100/24",
    ]);
    let err = run(cli, &runner).expect_err("add-lan must be refused");
    let msg = format!("{err:#}");
    assert_eq!(code_of(&err), Code::InvalidInput, "{msg}");
    assert!(
        msg.contains("lan1") && msg.contains("overlaps the HA subnet 10.99.0.0/24"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert_eq!(
        std::fs::read(root.path(paths::CLUSTER_CONFIG)).unwrap(),
        before,
        "cluster.json changed"
    );
    // Only the interface was read: nothing rendered, validated or started.
    for call in runner.calls() {
        assert_eq!(call[0], "ip", "unexpected call {call:?}");
    }
}
