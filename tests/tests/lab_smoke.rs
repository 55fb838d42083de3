//! Smoke tests of the lab itself: if these fail, every end-to-end test would
//! fail for reasons that have nothing to do with ns-ha. Each test builds its
//! own lab (root and `ip netns` required; they fail, never skip, without).

use ns_ha_tests::{net, wait_until, Lab, FIREWALLS, NODES};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn lab_links_addresses_and_routes_work() {
    let lab = Lab::up();
    assert!(lab.ping("lan", net::FW1_LAN, 1), "client -> fw1 over brlan");
    assert!(lab.ping("lan", net::FW2_LAN, 1), "client -> fw2 over brlan");
    assert!(
        lab.ping("wan", net::FW1_WAN, 1),
        "WAN host -> fw1 over brwan"
    );
    assert!(
        lab.ping("wan", net::FW2_WAN, 1),
        "WAN host -> fw2 over brwan"
    );
    assert!(lab.ping("fw1", net::FW2_HA, 1), "fw1 -> fw2 on the HA link");
    assert!(lab.ping("fw2", net::FW1_HA, 1), "fw2 -> fw1 on the HA link");
    // The HA link is a direct cable: the LAN client cannot reach it.
    assert!(!lab.ping("lan", net::FW1_HA, 1));

    // Routes towards the future VIPs exist already.
    let routes = lab.exec_ok("lan", &["ip", "route", "show", "default"]);
    assert!(
        routes.contains(&format!("via {}", net::LAN_VIP)),
        "{routes}"
    );
    let routes = lab.exec_ok("wan", &["ip", "route", "show", "10.99.1.0/24"]);
    assert!(
        routes.contains(&format!("via {}", net::WAN_VIP)),
        "{routes}"
    );
    for fw in FIREWALLS {
        let fwd = lab.exec_ok(fw, &["sysctl", "-n", "net.ipv4.ip_forward"]);
        assert_eq!(fwd.trim(), "1", "ip_forward on {fw}");
    }
    // No VIP yet.
    assert!(lab.holders(net::LAN_VIP).is_empty());
    assert_eq!(lab.holders(net::FW1_LAN), vec!["fw1"]);
    assert_eq!(lab.holders(&format!("{}/24", net::FW2_HA)), vec!["fw2"]);

    // The contract file.
    let info = lab.info();
    assert_eq!(info["prefix"], lab.prefix());
    assert_eq!(info["namespaces"]["fw2"], lab.ns("fw2"));
    assert_eq!(
        info["nodes"]["fw1"]["root"].as_str().map(Path::new),
        Some(lab.root("fw1").as_path())
    );
}

#[test]
fn the_ssh_server_runs_on_both_firewalls_with_their_own_host_keys() {
    let lab = Lab::up();
    let server = lab.ssh_server().service();
    for (fw, peer, addr) in [("fw1", "fw2", net::FW2_HA), ("fw2", "fw1", net::FW1_HA)] {
        assert!(lab.ssh_server_runs(fw), "{server} status on {fw}");
        let banner = lab.tcp_banner(fw, addr, 22).expect("an SSH banner");
        assert!(banner.starts_with("SSH-2.0-"), "{banner}");
        // The server answering at the peer's HA address is the peer's.
        let scanned = lab.exec_ok(fw, &["ssh-keyscan", "-T", "3", "-t", "ed25519", addr]);
        let host_pub = lab.host_public_key(peer);
        let key = host_pub.split_whitespace().nth(1).expect("key body");
        assert!(
            scanned.contains(key),
            "{peer}'s host key not served at {addr}: {scanned}"
        );
        // Key-only: a client without a key is refused.
        let out = lab.exec(
            fw,
            &[
                "ssh",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=3",
                "-i",
                "/dev/null",
                &format!("root@{addr}"),
                "true",
            ],
        );
        assert!(!out.status.success(), "login without a key must fail");
    }
}

#[test]
fn init_scripts_are_idempotent_and_report_status() {
    let lab = Lab::up();
    // The SSH server: stop, stop again, status 3, start, start again, status 0.
    lab.stop_ssh_server("fw2");
    lab.stop_ssh_server("fw2");
    assert!(!lab.ssh_server_runs("fw2"));
    assert!(lab.tcp_banner("fw1", net::FW2_HA, 22).is_none());
    lab.start_ssh_server("fw2");
    lab.start_ssh_server("fw2");
    assert!(lab.ssh_server_runs("fw2"));
    assert!(lab.tcp_banner("fw1", net::FW2_HA, 22).is_some());
    // fw1's server is not fw2's: status is per node.
    lab.stop_ssh_server("fw1");
    assert!(!lab.ssh_server_runs("fw1"));
    assert!(lab.ssh_server_runs("fw2"));

    // A missing config is a clear failure, not a silent one.
    for svc in ["keepalived", "conntrackd", "dnsmasq"] {
        assert!(!lab.status("fw1", svc));
        let out = lab.service("fw1", svc, "start");
        assert!(!out.status.success(), "{svc} started without a config");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("missing"), "{svc}: {err}");
    }
}

#[test]
fn keepalived_starts_from_its_init_script_and_takes_the_vip() {
    let lab = Lab::up();
    let conf = |me: &str, peer: &str, prio: u32| {
        format!(
            "global_defs {{\n  router_id {me}\n  vrrp_version 3\n}}\n\
             vrrp_instance lan {{\n  state BACKUP\n  interface lan0\n  virtual_router_id 51\n\
             \x20 priority {prio}\n  advert_int 0.1\n  unicast_src_ip {me}\n\
             \x20 unicast_peer {{\n    {peer}\n  }}\n\
             \x20 virtual_ipaddress {{\n    {vip}/24 dev lan0\n  }}\n}}\n",
            vip = net::LAN_VIP
        )
    };
    lab.write(
        "fw1",
        "/etc/keepalived/keepalived.conf",
        conf(net::FW1_LAN, net::FW2_LAN, 200),
    );
    lab.write(
        "fw2",
        "/etc/keepalived/keepalived.conf",
        conf(net::FW2_LAN, net::FW1_LAN, 100),
    );
    lab.start("fw1", "keepalived");
    lab.start("fw2", "keepalived");
    lab.start("fw1", "keepalived"); // idempotent
    assert!(lab.status("fw1", "keepalived") && lab.status("fw2", "keepalived"));
    let one_holder = |who: &str| lab.wait_holders(net::LAN_VIP, &[who], Duration::from_secs(5));
    assert!(
        one_holder("fw1"),
        "fw1 holds the VIP: {:?}",
        lab.holders(net::LAN_VIP)
    );
    assert!(lab.ping("lan", net::LAN_VIP, 1));

    // A dead box: fw2 takes over; fw1 keeps its (now unreachable) VIP.
    lab.crash("fw1");
    assert!(!lab.status("fw1", "keepalived"));
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            lab.has_addr("fw2", net::LAN_VIP)
        }),
        "fw2 takes the VIP after fw1 crashed"
    );
    assert!(
        lab.has_addr("fw1", net::LAN_VIP),
        "a crashed keepalived leaves its VIP"
    );
    assert!(wait_until(
        Duration::from_secs(3),
        Duration::from_millis(100),
        || { lab.ping("lan", net::LAN_VIP, 1) }
    ));
    lab.stop("fw2", "keepalived");
    assert!(
        !lab.has_addr("fw2", net::LAN_VIP),
        "a clean stop releases the VIP"
    );
}

#[test]
fn cut_drops_everything_on_one_interface_and_heal_restores_it() {
    let lab = Lab::up();
    assert!(lab.ping("fw1", net::FW2_HA, 1));
    lab.cut("fw1", "ha0");
    lab.cut("fw1", "ha0"); // idempotent
                           // Flush ARP so a cached entry cannot hide a cut ARP path.
    lab.exec_ok("fw1", &["ip", "neigh", "flush", "dev", "ha0"]);
    lab.exec_ok("fw2", &["ip", "neigh", "flush", "dev", "ha0"]);
    assert!(!lab.ping("fw1", net::FW2_HA, 2), "fw1 -> fw2 must be cut");
    assert!(!lab.ping("fw2", net::FW1_HA, 2), "fw2 -> fw1 must be cut");
    // The link itself stays up (silence, not carrier loss), other links work.
    let link = lab.exec_ok("fw2", &["ip", "-br", "link", "show", "ha0"]);
    assert!(link.contains(" UP "), "{link}");
    assert!(lab.ping("lan", net::FW1_LAN, 1));
    // fw2 never learned fw1's MAC on the HA link: ARP is dropped too.
    let neigh = lab.exec_ok("fw2", &["ip", "neigh", "show", net::FW1_HA]);
    assert!(!neigh.contains("lladdr"), "ARP crossed the cut: {neigh}");

    lab.heal("fw1", "ha0");
    lab.heal("fw1", "ha0"); // idempotent
                            // ARP entries left FAILED by the cut are re-probed after up to ~1 s.
    let both_ways = || lab.ping("fw1", net::FW2_HA, 1) && lab.ping("fw2", net::FW1_HA, 1);
    assert!(
        wait_until(
            Duration::from_secs(5),
            Duration::from_millis(100),
            both_ways
        ),
        "healed: fw1 <-> fw2"
    );

    // link_down / link_up: carrier loss, seen by the peer.
    lab.link_down("fw1", "ha0");
    let link = lab.exec_ok("fw2", &["ip", "-br", "link", "show", "ha0"]);
    assert!(
        link.contains("LOWERLAYERDOWN") || link.contains("DOWN"),
        "{link}"
    );
    assert!(!lab.ping("fw2", net::FW1_HA, 1));
    lab.link_up("fw1", "ha0");
    assert!(wait_until(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || { lab.ping("fw2", net::FW1_HA, 1) }
    ));
}

#[test]
fn dropping_the_lab_removes_namespaces_processes_and_files() {
    let lab = Lab::up();
    let prefix = lab.prefix().to_string();
    let dir = lab.dir().to_path_buf();
    let names: Vec<String> = NODES.iter().map(|n| lab.ns(n)).collect();
    let ssh_init = format!("fw1/etc/init.d/{}", lab.ssh_server().service());
    // A stray process inside a namespace must not keep the lab alive.
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns("lan"), "sleep", "600"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn sleep");
    let list = netns_list();
    for n in &names {
        assert!(
            list.lines().any(|l| l.split_whitespace().next() == Some(n)),
            "{n} in {list}"
        );
    }
    assert!(dir.join(&ssh_init).exists());
    drop(lab);

    let mut child = out;
    let status = child.wait().expect("wait sleep");
    assert!(!status.success(), "the stray process was killed");
    let list = netns_list();
    for n in &names {
        assert!(
            !list.lines().any(|l| l.split_whitespace().next() == Some(n)),
            "{n} still exists"
        );
    }
    assert!(!dir.exists(), "{} still exists", dir.display());
    // Down is idempotent.
    let again = Command::new(ns_ha_tests::lab_script())
        .args(["down", &prefix])
        .output()
        .expect("lab.sh down");
    assert!(again.status.success());
}

#[test]
fn a_failed_up_reports_one_line_and_leaves_nothing() {
    // A prefix the script refuses: one-line reason, non-zero exit.
    let out = Command::new(ns_ha_tests::lab_script())
        .args(["up", "Bad-Prefix"])
        .output()
        .expect("lab.sh");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // A failure late in `up` (after namespaces, node roots and sshd exist)
    // tears down everything it made and still says one line.
    let prefix = &format!("nhf{}", std::process::id() % 1_000_000);
    let out = Command::new(ns_ha_tests::lab_script())
        .args(["up", prefix])
        .env("NS_HA_LAB_FAIL_TEST", "1")
        .output()
        .expect("lab.sh");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(&format!("up {prefix} failed")), "{err}");
    assert!(!netns_list().contains(prefix), "namespaces left behind");
    let dir = Command::new(ns_ha_tests::lab_script())
        .args(["dir", prefix])
        .output()
        .expect("lab.sh dir");
    let dir = String::from_utf8_lossy(&dir.stdout).trim().to_string();
    assert!(!Path::new(&dir).exists(), "{dir} left behind");

    // Building over an existing lab fails and does not tear the first one down.
    let lab = Lab::up();
    let out = Command::new(ns_ha_tests::lab_script())
        .args(["up", lab.prefix()])
        .output()
        .expect("lab.sh");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert!(lab.ping("fw1", net::FW2_HA, 1), "the first lab still works");
}
