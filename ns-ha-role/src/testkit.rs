//! A fake node for unit tests: a temp root with a cluster config and init
//! scripts, and a runner that plays init.d, `ip` and `conntrackd` in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use ns_ha_common::cmd::{CmdOutput, CommandRunner};
use ns_ha_common::config::{save_cluster, save_node, ClusterConfig, NodeConfig, Role};
use ns_ha_common::root::paths;
use ns_ha_common::NodeRoot;

use crate::reconcile::Ctx;

#[derive(Default)]
pub struct FakeState {
    pub running: BTreeSet<String>,
    pub hang: BTreeSet<String>,
    pub holds_vips: bool,
    pub links_up: BTreeMap<String, bool>,
    /// The MAC of each link that has one (`ip link set dev X address M`).
    pub macs: BTreeMap<String, String>,
    /// Devices that do not exist: `ip ... dev X` fails for them.
    pub missing: BTreeSet<String>,
    pub calls: Vec<String>,
}

#[derive(Default)]
pub struct FakeRunner {
    pub state: Mutex<FakeState>,
}

fn out(status: i32, stdout: &str) -> CmdOutput {
    CmdOutput {
        status: Some(status),
        stdout: stdout.into(),
        ..Default::default()
    }
}

impl FakeRunner {
    pub fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }
    pub fn calls(&self) -> Vec<String> {
        self.with(|s| s.calls.clone())
    }
    pub fn running(&self, name: &str) -> bool {
        self.with(|s| s.running.contains(name))
    }
}

impl CommandRunner for FakeRunner {
    fn run(&self, program: &str, args: &[String], _t: Duration) -> anyhow::Result<CmdOutput> {
        let line = format!("{program} {}", args.join(" "));
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.calls.push(line.clone());
        if let Some((_, name)) = program.rsplit_once("/etc/init.d/") {
            let name = name.to_string();
            let verb = args.first().map(String::as_str).unwrap_or("");
            if verb == "start" && s.hang.contains(&name) {
                return Ok(CmdOutput {
                    timed_out: true,
                    ..Default::default()
                });
            }
            return Ok(match verb {
                "status" => out(if s.running.contains(&name) { 0 } else { 3 }, ""),
                "start" | "restart" => {
                    s.running.insert(name);
                    out(0, "")
                }
                "stop" => {
                    s.running.remove(&name);
                    out(0, "")
                }
                "reload" => out(if s.running.contains(&name) { 0 } else { 7 }, ""),
                _ => out(2, ""),
            });
        }
        let dev = args
            .iter()
            .position(|a| a == "dev")
            .and_then(|i| args.get(i + 1));
        if program == "ip" && dev.is_some_and(|d| s.missing.contains(d)) {
            return Ok(out(1, ""));
        }
        Ok(match program {
            "ip" if line.contains("addr show") => {
                let vips = if s.holds_vips {
                    r#",{"family":"inet","local":"10.99.1.254","prefixlen":24},{"family":"inet","local":"10.99.0.254","prefixlen":32}"#
                } else {
                    ""
                };
                out(
                    0,
                    &format!(
                        r#"[{{"ifname":"lan0","addr_info":[{{"family":"inet","local":"10.99.1.1","prefixlen":24}}{vips}]}}]"#
                    ),
                )
            }
            "ip" if line.contains("link show") => {
                let links: Vec<String> = s
                    .links_up
                    .iter()
                    .filter(|(n, _)| !line.contains(" dev ") || line.ends_with(&format!(" {n}")))
                    .map(|(n, up)| {
                        let mac = s
                            .macs
                            .get(n)
                            .map(|m| format!(r#","address":"{m}""#))
                            .unwrap_or_default();
                        format!(
                            r#"{{"ifname":"{n}","flags":[{}]{mac}}}"#,
                            if *up { "\"UP\"" } else { "" }
                        )
                    })
                    .collect();
                out(0, &format!("[{}]", links.join(",")))
            }
            // A WireGuard tunnel created by the kernel's link type (down until set up).
            // ... or a VLAN (`ip link add link PARENT name IF type vlan`).
            "ip" if line.contains("link add") => {
                let name = match args.iter().position(|a| a == "name") {
                    Some(i) => args[i + 1].clone(),
                    None => args[2].clone(),
                };
                s.missing.remove(&name);
                s.links_up.insert(name, false);
                out(0, "")
            }
            "ip" if line.contains("link del") => {
                let gone = s.links_up.remove(&args[3]).is_some();
                out(if gone { 0 } else { 1 }, "")
            }
            "ip" if line.contains("address replace") || line.contains("route replace") => {
                out(0, "")
            }
            // `wg` under the node root's /run/wireguard.
            "unshare" if args.iter().any(|a| a == "wg") => out(0, ""),
            "ip" if line.contains("link set")
                && args.get(4).map(String::as_str) == Some("address") =>
            {
                s.macs.insert(args[3].clone(), args[5].clone());
                out(0, "")
            }
            "ip" if line.contains("link set") => {
                let name = args[3].clone();
                let up = args[4] == "up";
                s.links_up.insert(name, up);
                out(0, "")
            }
            "conntrackd" if args.last().map(String::as_str) == Some("-s") => out(
                if s.running.contains("conntrackd") {
                    0
                } else {
                    1
                },
                "",
            ),
            "conntrackd" => out(
                if s.running.contains("conntrackd") {
                    0
                } else {
                    1
                },
                "",
            ),
            _ => out(127, ""),
        })
    }
}

/// A temp node root: enabled cluster, this node's role, init scripts for `services`.
pub struct FakeNode {
    /// Keeps the temp root alive.
    pub _dir: tempfile::TempDir,
    pub root: NodeRoot,
    pub runner: FakeRunner,
}

impl FakeNode {
    pub fn new(role: Role, services: &[&str]) -> FakeNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = NodeRoot::new(dir.path()).expect("root");
        let mut c = ns_ha_common::fixtures::sample_cluster();
        c.enabled = true;
        save_cluster(&root, &c).expect("save cluster");
        save_node(
            &root,
            &NodeConfig {
                schema_version: 1,
                role,
                peer_address: "10.99.0.2".parse().expect("ip"),
                peer_host_key: None,
                authorized_key_fingerprint: None,
                service_backend: Default::default(),
                platform: Default::default(),
                ssh_server: Default::default(),
                interface_manager: None,
            },
        )
        .expect("save node");
        std::fs::create_dir_all(root.path("/etc/init.d")).expect("init.d");
        for s in services {
            std::fs::write(root.path(format!("/etc/init.d/{s}")), "#!/bin/sh\n").expect("script");
        }
        std::fs::create_dir_all(root.path("/etc/conntrackd")).expect("dir");
        std::fs::write(root.path(paths::CONNTRACKD_CONF), "# fake\n").expect("conf");
        FakeNode {
            _dir: dir,
            root,
            runner: FakeRunner::default(),
        }
    }

    pub fn ctx(&self) -> Ctx<'_> {
        Ctx {
            root: self.root.clone(),
            runner: &self.runner,
            sync_tool: None,
            vip_tool: None,
        }
    }

    pub fn edit_cluster(&self, f: impl FnOnce(&mut ClusterConfig)) {
        let mut c = ns_ha_common::config::load_cluster(&self.root).expect("load");
        f(&mut c);
        save_cluster(&self.root, &c).expect("save");
    }
}

/// Poll `f` for up to 5 s.
pub fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}
