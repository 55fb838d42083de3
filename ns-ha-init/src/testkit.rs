//! Test kit for ns-ha-init's unit tests: a paired primary in a scratch root
//! whose commands are journaled next to a fake backup's installs, so tests
//! can assert which node got what, in which order.

use anyhow::Result;

use crate::backup::fake::FakeLink;
use crate::Ctx;
use ns_ha_common::cmd::{CmdOutput, CommandRunner};
use ns_ha_common::config::{
    load_cluster, save_cluster, save_node, ClusterConfig, NodeConfig, Role, SCHEMA_VERSION,
};
use ns_ha_common::fixtures::{interface, sample_cluster};
use ns_ha_common::net::StaticInterfaces;
use ns_ha_common::root::paths;
use ns_ha_common::service::ServiceBackend;
use ns_ha_common::NodeRoot;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Journal = Arc<Mutex<Vec<String>>>;

/// The primary's commands, journaled next to the fake backup's installs:
/// `primary keepalived start`, `primary ns-ha-vip list`, ... keepalived's
/// init script tracks whether it runs, ns-ha-vip says the VIPs are held
/// while it does.
pub struct PrimaryRunner {
    journal: Journal,
    keepalived_runs: Mutex<bool>,
}

impl CommandRunner for PrimaryRunner {
    fn run(&self, program: &str, args: &[String], _t: Duration) -> Result<CmdOutput> {
        let name = program.rsplit('/').next().unwrap_or(program);
        let verb = args.last().cloned().unwrap_or_default();
        let mut runs = self.keepalived_runs.lock().unwrap();
        let mut out = CmdOutput {
            status: Some(0),
            ..Default::default()
        };
        if program.ends_with("/etc/init.d/keepalived") {
            match verb.as_str() {
                "status" => out.status = Some(if *runs { 0 } else { 3 }),
                "start" => *runs = true,
                "stop" => *runs = false,
                _ => {}
            }
        }
        if name == "ns-ha-vip" {
            out.stdout = format!(r#"{{"vips":[{{"vip":"10.99.1.254/24","held":{runs}}}]}}"#);
        }
        let validating = args.first().map(String::as_str) == Some("-t");
        let shown = if validating { "-t" } else { &verb };
        self.journal
            .lock()
            .unwrap()
            .push(format!("primary {name} {shown}"));
        Ok(out)
    }
}

/// A paired primary (fw1 of the sample cluster) in a scratch root, and its fake backup.
pub struct Pair {
    _dir: tempfile::TempDir,
    pub root: NodeRoot,
    pub runner: PrimaryRunner,
    pub ifs: StaticInterfaces,
    pub link: FakeLink,
    pub journal: Journal,
}

impl Pair {
    pub fn new(enabled: bool) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        let mut cluster = sample_cluster();
        cluster.enabled = enabled;
        save_cluster(&root, &cluster).unwrap();
        let link = FakeLink::default();
        save_node(
            &root,
            &NodeConfig {
                schema_version: SCHEMA_VERSION,
                role: Role::Primary,
                peer_address: "10.99.0.2".parse().unwrap(),
                peer_host_key: Some(crate::backup::fake::backup_host_key()),
                authorized_key_fingerprint: None,
                service_backend: ServiceBackend::Initd,
                platform: Default::default(),
                ssh_server: Default::default(),
                interface_manager: None,
            },
        )
        .unwrap();
        let initd = root.path("/etc/init.d/keepalived");
        std::fs::create_dir_all(initd.parent().unwrap()).unwrap();
        std::fs::write(&initd, "#!/bin/sh\n").unwrap();
        let ka = root.path(paths::KEEPALIVED_CONF);
        std::fs::create_dir_all(ka.parent().unwrap()).unwrap();
        std::fs::write(&ka, "# the running config\n").unwrap();
        let journal = link.state().journal.clone();
        link.state().interfaces = vec![
            interface("ha0", &["10.99.0.2/24"]),
            interface("lan0", &["10.99.1.2/24"]),
            interface("wan0", &["10.99.2.2/24"]),
        ];
        Pair {
            _dir: dir,
            root,
            runner: PrimaryRunner {
                journal: journal.clone(),
                keepalived_runs: Mutex::new(enabled),
            },
            ifs: StaticInterfaces(vec![
                interface("ha0", &["10.99.0.1/24"]),
                interface("lan0", &["10.99.1.1/24"]),
                interface("wan0", &["10.99.2.1/24"]),
            ]),
            link,
            journal,
        }
    }

    pub fn ctx(&self) -> Ctx<'_> {
        static NO_ADVERTS: ns_ha_common::vrrp::HeardAdverts =
            ns_ha_common::vrrp::HeardAdverts(Vec::new());
        static NO_LISTENERS: crate::sshd_listen::FixedListeners =
            crate::sshd_listen::FixedListeners(Vec::new());
        Ctx {
            root: self.root.clone(),
            runner: &self.runner,
            ifs: &self.ifs,
            link: &self.link,
            adverts: &NO_ADVERTS,
            listeners: &NO_LISTENERS,
        }
    }

    /// The journal without the validation and status calls.
    pub fn steps(&self) -> Vec<String> {
        let j = self.journal.lock().unwrap().clone();
        let mut out: Vec<String> = j
            .into_iter()
            .filter(|l| !l.ends_with(" -t") && !l.ends_with(" status"))
            .collect();
        out.dedup();
        out
    }

    /// (cluster.json, keepalived.conf) of the primary, byte for byte.
    pub fn primary_files(&self) -> (String, String) {
        let read = |p: &str| std::fs::read_to_string(self.root.path(p)).unwrap();
        (read(paths::CLUSTER_CONFIG), read(paths::KEEPALIVED_CONF))
    }

    /// A device without addresses on both nodes (a takeover WAN's NIC).
    pub fn add_interface(&mut self, name: &str) {
        self.ifs.0.push(interface(name, &[]));
        self.link.state().interfaces.push(interface(name, &[]));
    }

    /// A bridge on both nodes.
    pub fn add_bridge(&mut self, name: &str) {
        let mut b = interface(name, &[]);
        b.kind = ns_ha_common::net::LinkKind::Bridge;
        self.ifs.0.push(b.clone());
        self.link.state().interfaces.push(b);
    }

    pub fn primary_cluster(&self) -> ClusterConfig {
        load_cluster(&self.root).unwrap()
    }
}
