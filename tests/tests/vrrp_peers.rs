//! Issue 8 item 5 against real keepalived: the pair accepts VRRP adverts only
//! from each other. A third host on the LAN (the lab's client namespace) runs
//! a keepalived of its own for the cluster's LAN VRID, with a higher priority
//! than either firewall, unicast to both firewalls' LAN addresses: the VIPs
//! must stay where they are, and `ns-ha-init check` reports the VRID
//! collision with its fix.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ns_ha_tests::cluster::{configure_dnsmasq, pair, tool};
use ns_ha_tests::{net, wait_until, Lab};
use serde_json::Value;

/// A keepalived in another lab namespace, stopped by its pid on drop.
struct Rogue {
    child: Child,
    dir: PathBuf,
}

impl Rogue {
    /// Start keepalived in `node`'s namespace with `conf`; files in `dir`.
    fn start(lab: &Lab, node: &str, conf: &str) -> Rogue {
        let dir = lab.dir().join(format!("rogue-{node}"));
        std::fs::create_dir_all(&dir).expect("rogue dir");
        let conf_path = dir.join("keepalived.conf");
        std::fs::write(&conf_path, conf).expect("rogue config");
        let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let log = std::fs::File::create(dir.join("keepalived.log")).expect("rogue log");
        // `ip netns exec` execs keepalived: the child's pid is keepalived's
        // parent process, which stops its VRRP child when it exits.
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.ns(node)])
            .args(["keepalived", "-n", "-P", "-l", "-D", "-G", "-f"])
            .arg(&conf_path)
            .args(["-p", &p("k.pid"), "-r", &p("vrrp.pid")])
            .args(["-c", &p("checkers.pid"), "-b", &p("bfd.pid")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start the rogue keepalived");
        Rogue { child, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("keepalived.log")).unwrap_or_default()
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let stopped = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn adverts_from_a_third_host_do_not_move_the_vips() {
    let lab = Lab::up();
    // Configured as the README says, so `check` fails for the VRID alone.
    configure_dnsmasq(&lab);
    pair(&lab);
    let cluster: Value =
        serde_json::from_str(&lab.read("fw1", "etc/ns-ha/cluster.json")).expect("cluster.json");
    let vrid = cluster["lans"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["interface"] == net::LAN_IF))
        .and_then(|l| l["vrid"].as_u64())
        .expect("the LAN's VRID");
    let rendered = lab.read("fw1", "etc/keepalived/keepalived.conf");
    assert!(
        rendered.contains(&format!("virtual_router_id {vrid}")),
        "{rendered}"
    );
    // The client claims the LAN VRID with priority 254 (the primary has 200)
    // and the cluster's own VIP, advertising to both firewalls every 0.1 s.
    let conf = format!(
        "global_defs {{\n    router_id rogue\n    vrrp_version 3\n}}\n\
         vrrp_instance rogue {{\n    state BACKUP\n    interface eth0\n    \
         virtual_router_id {vrid}\n    priority 254\n    advert_int 0.1\n    \
         unicast_src_ip {client}\n    unicast_peer {{\n        {fw1}\n        {fw2}\n    }}\n    \
         virtual_ipaddress {{\n        {vip}/24 dev eth0\n    }}\n}}\n",
        client = net::CLIENT,
        fw1 = net::FW1_LAN,
        fw2 = net::FW2_LAN,
        vip = net::LAN_VIP,
    );
    let rogue = Rogue::start(&lab, "lan", &conf);
    // The rogue is MASTER (it hears no one): it adds the VIP on its side and
    // sends its adverts from then on.
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(50), || lab
            .addrs("lan")
            .iter()
            .any(|(_, a)| a == net::LAN_VIP)),
        "the rogue keepalived did not become MASTER:\n{}",
        rogue.log()
    );
    // 3 s is 10x the master-down interval at 0.1 s adverts.
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            lab.holders(net::LAN_VIP),
            ["fw1"],
            "a third host's adverts moved the LAN VIP"
        );
        assert_eq!(
            lab.holders(net::WAN_VIP),
            ["fw1"],
            "a third host's adverts moved the WAN VIP"
        );
    }
    // `check` hears the rogue on the LAN and names the collision and the fix.
    let out = tool(&lab, "fw1", "ns-ha-init", &["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(8), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("FAIL  VRRP routers on lan0"))
        .unwrap_or_else(|| panic!("no VRRP collision reported:\n{stdout}"));
    assert!(
        line.contains(&format!(
            "{} VRID {vrid}: another VRRP router uses VRID {vrid}",
            net::CLIENT
        )) && line.contains("add-lan --vrid"),
        "{line}"
    );
    // The peer's own adverts are not reported as another router.
    assert!(
        stdout.contains("ok    VRRP routers on ha0: no other VRRP router heard"),
        "{stdout}"
    );
    drop(rogue);
}
