//! Issue 9 part A in the lab: a static IPv4 + IPv6 takeover WAN added with
//! `ns-ha-init add-wan` on the primary reaches the backup with the cluster,
//! is up only on the MASTER (the role engine drives real ifupdown), the
//! backup answers no ARP/ND for it, and exactly one node holds it after a
//! crash of the master, a maintenance handover and a partition heal (never
//! two at any sample outside the partition itself). Bad input is refused
//! with nothing written on either node. The WAN host plays the ISP
//! (10.99.3.100, fd10:99:3::100) on the lab's WAN switch; each firewall's
//! `wan1` is its second cable into that switch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ns_ha_tests::cluster::{
    configure_dnsmasq, init, init_ok, pair_only_with, role_settled, role_status, tool_ok,
};
use ns_ha_tests::health::{
    assert_held_past_hold_down, set_health, state, Pinger, LAB_HOLD_DOWN_MS,
};
use ns_ha_tests::{net, wait_until, Lab, FIREWALLS};
use serde_json::Value;

const WAN: &str = "wan1";
const WAN_V4: &str = "10.99.3.1";
const WAN_V6: &str = "fd10:99:3::1";
const ISP_V4: &str = "10.99.3.100";
const WAN_FILE: &str = "/etc/network/interfaces.d/ns-ha-wan";

/// Which firewalls have the WAN link up with `addr` on it (able to answer for it).
fn holders(lab: &Lab, addr: &str) -> Vec<&'static str> {
    FIREWALLS
        .into_iter()
        .filter(|fw| {
            let out = lab.exec(fw, &["ip", "-j", "addr", "show", "dev", WAN]);
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            let link = &v[0];
            let up = link["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "UP"));
            up && link["addr_info"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["local"] == addr))
        })
        .collect()
}

/// Sample the holders of the WAN's IPv4 address every 20 ms while `during` runs.
fn sampled<T>(lab: &Lab, during: impl FnOnce() -> T) -> (T, Vec<(Duration, Vec<&'static str>)>) {
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut v = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                v.push((start.elapsed(), holders(lab, WAN_V4)));
                std::thread::sleep(Duration::from_millis(20));
            }
            v
        });
        let r = during();
        stop.store(true, Ordering::Relaxed);
        (r, sampler.join().expect("sampler"))
    })
}

/// No sample with two holders; the last `settled` samples held by `want` alone.
fn assert_one_holder(what: &str, samples: &[(Duration, Vec<&'static str>)], want: &str) {
    assert!(samples.len() > 10, "{what}: only {} samples", samples.len());
    if let Some((t, h)) = samples.iter().find(|(_, h)| h.len() > 1) {
        panic!("{what}: two nodes hold {WAN_V4} at {t:?}: {h:?}");
    }
    let tail = &samples[samples.len() - 3..];
    assert!(
        tail.iter().all(|(_, h)| h == &[want]),
        "{what}: {want} does not hold {WAN_V4} at the end: {tail:?}"
    );
    let empty = samples.iter().filter(|(_, h)| h.is_empty()).count();
    eprintln!(
        "{what}: {} samples every 20 ms, never two holders, {empty} with none",
        samples.len()
    );
}

/// `fw`'s wan1 answers ARP and ND for the WAN address and the other
/// firewall answers neither (on any of its WAN-side links). fw's own wan0,
/// on the same lab switch, may answer ARP too (Linux answers for any local
/// address on any link unless arp_ignore is set): that is still `fw`.
fn only_answers(lab: &Lab, fw: &str) {
    let mac = mac_of(lab, fw, WAN);
    let other = if fw == "fw1" { "fw2" } else { "fw1" };
    let theirs = [mac_of(lab, other, WAN), mac_of(lab, other, net::WAN_IF)];
    let out = lab.exec(
        "wan",
        &["arping", "-c", "3", "-w", "3", "-I", "eth0", WAN_V4],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    let replies: Vec<&str> = text.lines().filter(|l| l.contains("reply from")).collect();
    assert!(
        replies.iter().any(|l| l.contains(&mac)),
        "{fw}'s {WAN} ({mac}) does not answer ARP for {WAN_V4}: {text}"
    );
    assert!(
        !replies
            .iter()
            .any(|l| theirs.iter().any(|m| l.contains(m.as_str()))),
        "{other} ({theirs:?}) answers ARP for {WAN_V4}: {text}"
    );
    lab.exec("wan", &["ip", "-6", "neigh", "flush", "dev", "eth0"]);
    assert!(lab.ping("wan", WAN_V6, 2), "the ISP cannot ping {WAN_V6}");
    let neigh = lab.exec_ok("wan", &["ip", "-6", "neigh", "show", WAN_V6]);
    assert!(
        neigh.to_ascii_lowercase().contains(&mac),
        "ND for {WAN_V6} resolved to another MAC than {fw}'s {mac}: {neigh}"
    );
}

fn mac_of(lab: &Lab, fw: &str, dev: &str) -> String {
    let out = lab.exec_ok(fw, &["ip", "-j", "link", "show", "dev", dev]);
    let v: Value = serde_json::from_str(&out).expect("ip -j link");
    v[0]["address"]
        .as_str()
        .expect("address")
        .to_ascii_lowercase()
}

/// Both nodes' cluster config and WAN file, byte for byte.
fn snapshot(lab: &Lab) -> Vec<Option<String>> {
    FIREWALLS
        .into_iter()
        .flat_map(|fw| {
            ["/etc/ns-ha/cluster.json", WAN_FILE]
                .map(|p| std::fs::read_to_string(lab.path(fw, p)).ok())
        })
        .collect()
}

fn refused(lab: &Lab, args: &[&str], needle: &str) {
    let before = snapshot(lab);
    let out = init(lab, "fw1", args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
    assert_eq!(snapshot(lab), before, "{args:?} changed a node");
}

/// A pair whose nodes run ifupdown, with the LAN and its VIP (not enabled).
fn paired_with_lan() -> Lab {
    let lab = Lab::up();
    pair_only_with(&lab, &["--interface-manager", "ifupdown"]);
    let lan_vip = format!("{}/24", net::LAN_VIP);
    init_ok(
        &lab,
        "fw1",
        &["add-lan", "--interface", net::LAN_IF, "--vip", &lan_vip],
    );
    lab
}

#[test]
fn a_static_takeover_wan_is_up_only_on_the_master() {
    let lab = paired_with_lan();
    let out = init_ok(
        &lab,
        "fw1",
        &[
            "add-wan",
            "--interface",
            WAN,
            "--ipv4",
            "10.99.3.1/24",
            "--ipv6",
            "fd10:99:3::1/64",
        ],
    );
    assert!(out.contains("takeover WAN wan1"), "{out}");
    // The definition reached the backup with the cluster, the same file on both.
    let f1 = lab.read("fw1", WAN_FILE);
    assert_eq!(f1, lab.read("fw2", WAN_FILE));
    assert!(
        f1.contains("iface wan1 inet6 static") && !f1.lines().any(|l| l.starts_with("auto")),
        "{f1}"
    );
    let show = init_ok(&lab, "fw2", &["show-config"]);
    assert!(
        show.contains("WAN wan1") && show.contains("takeover"),
        "{show}"
    );

    // Bad input: refused with the reason, nothing written on either node.
    lab.exec_ok(
        "fw1",
        &[
            "ip", "link", "add", "wan9", "type", "veth", "peer", "name", "wan9p",
        ],
    );
    refused(
        &lab,
        &["add-wan", "--interface", "wan9", "--ipv4", "dhcp"],
        "does not exist on the backup",
    );
    for fw in FIREWALLS {
        lab.exec_ok(fw, &["ip", "link", "add", "brx", "type", "bridge"]);
    }
    refused(
        &lab,
        &[
            "add-wan",
            "--interface",
            "pppoe-x",
            "--kind",
            "pppoe",
            "--parent",
            "brx",
            "--pppoe-user",
            "me",
        ],
        "PPPoE on brx, a bridge on the primary, is not supported",
    );
    refused(
        &lab,
        &[
            "add-wan",
            "--interface",
            "bond1",
            "--kind",
            "bond",
            "--member",
            "ha0",
            "--ipv4",
            "dhcp",
        ],
        "HA interface ha0",
    );
    refused(
        &lab,
        &["add-lan", "--interface", "brx", "--vip", "fd10:1::1/64"],
        "IPv4 only",
    );

    configure_dnsmasq(&lab);
    init_ok(&lab, "fw1", &["enable"]);
    assert!(lab.wait_holders(net::LAN_VIP, &["fw1"], Duration::from_secs(15)));
    assert!(
        wait_until(
            Duration::from_secs(10),
            Duration::from_millis(50),
            || holders(&lab, WAN_V4) == ["fw1"]
        ),
        "the WAN is not up on fw1 alone: {:?}",
        holders(&lab, WAN_V4)
    );
    assert!(role_settled(&lab, "fw1", "MASTER", Duration::from_secs(15)));
    assert!(role_settled(&lab, "fw2", "BACKUP", Duration::from_secs(10)));
    // Steady state: the backup's wan1 is down and answers nothing.
    for _ in 0..10 {
        let why = || {
            format!(
                "fw1 wan1: {}\nfw1 role history: {}",
                lab.exec_ok("fw1", &["ip", "addr", "show", "dev", WAN]),
                role_status(&lab, "fw1")["history"]
            )
        };
        assert_eq!(holders(&lab, WAN_V4), ["fw1"], "{}", why());
        assert_eq!(holders(&lab, WAN_V6), ["fw1"], "{}", why());
        std::thread::sleep(Duration::from_millis(100));
    }
    only_answers(&lab, "fw1");
    let status: Value =
        serde_json::from_str(&tool_ok(&lab, "fw1", "ns-ha-check", &["--json", "status"]))
            .expect("status json");
    let wans = status["wans"].as_array().expect("status lists the WANs");
    assert_eq!(wans[0]["interface"], WAN);
    assert_eq!(wans[0]["mode"], "takeover");
    assert_eq!(wans[0]["up_here"], true);
    let status: Value =
        serde_json::from_str(&tool_ok(&lab, "fw2", "ns-ha-check", &["--json", "status"]))
            .expect("status json");
    assert_eq!(status["wans"][0]["up_here"], false);

    // Maintenance hands the WAN over and back.
    let (_, samples) = sampled(&lab, || {
        tool_ok(&lab, "fw1", "ns-ha-role", &["maintenance", "on"]);
        assert!(wait_until(
            Duration::from_secs(10),
            Duration::from_millis(20),
            || holders(&lab, WAN_V4) == ["fw2"]
        ));
        std::thread::sleep(Duration::from_secs(1));
    });
    assert_one_holder("maintenance on", &samples, "fw2");
    let (_, samples) = sampled(&lab, || {
        tool_ok(&lab, "fw1", "ns-ha-role", &["maintenance", "off"]);
        assert!(wait_until(
            Duration::from_secs(10),
            Duration::from_millis(20),
            || holders(&lab, WAN_V4) == ["fw1"]
        ));
        std::thread::sleep(Duration::from_secs(1));
    });
    assert_one_holder("maintenance off", &samples, "fw1");

    // fw1 dies while the ISP pings a LAN client through the WAN and the
    // WAN address itself (v6), and the LAN client pings the ISP.
    lab.exec_ok(
        "wan",
        &[
            "ip",
            "route",
            "replace",
            "10.99.1.0/24",
            "via",
            WAN_V4,
            "src",
            ISP_V4,
        ],
    );
    assert!(
        lab.ping("wan", net::CLIENT, 3),
        "the ISP cannot reach the LAN client through the takeover WAN"
    );
    let ((v4, v6, lan), samples) = sampled(&lab, || {
        let v4 = Pinger::start(&lab, "wan", net::CLIENT);
        let v6 = Pinger::start(&lab, "wan", WAN_V6);
        let lan = Pinger::start(&lab, "lan", ISP_V4);
        std::thread::sleep(Duration::from_millis(500));
        lab.crash("fw1");
        assert!(
            wait_until(
                Duration::from_secs(10),
                Duration::from_millis(20),
                || holders(&lab, WAN_V4) == ["fw2"]
            ),
            "fw2 did not take the WAN over"
        );
        std::thread::sleep(Duration::from_secs(2));
        (v4.stop(), v6.stop(), lan.stop())
    });
    eprintln!("fw1 crash: longest gap WAN->LAN client (IPv4 through the takeover WAN) {v4:.0} ms, WAN address IPv6 {v6:.0} ms, LAN client->ISP {lan:.0} ms");
    assert_one_holder("crash of fw1", &samples, "fw2");
    assert!(v4 < 2000.0 && v6 < 2000.0, "WAN gaps {v4:.0} / {v6:.0} ms");
    only_answers(&lab, "fw2");

    // fw1 comes back and preempts: the WAN moves back, never on both.
    let (_, samples) = sampled(&lab, || {
        // As after a reboot: wan1 down without its address until the role engine says.
        lab.revive("fw1");
        assert!(
            wait_until(
                Duration::from_secs(15),
                Duration::from_millis(20),
                || holders(&lab, WAN_V4) == ["fw1"]
            ),
            "fw1 did not take the WAN back: {:?}\nfw1: {}\nfw2: {}",
            holders(&lab, WAN_V4),
            role_status(&lab, "fw1")["history"],
            role_status(&lab, "fw2")["history"]
        );
        std::thread::sleep(Duration::from_secs(1));
    });
    assert_one_holder("fw1 back (preempt)", &samples, "fw1");

    // A partition (fw2 hears nothing on the HA link and the LAN): both
    // are MASTER while it lasts; once it heals, fw1 alone keeps the WAN.
    lab.cut("fw2", net::HA_IF);
    lab.cut("fw2", net::LAN_IF);
    assert!(
        wait_until(
            Duration::from_secs(10),
            Duration::from_millis(50),
            || holders(&lab, WAN_V4).len() == 2
        ),
        "the partition did not make fw2 MASTER too"
    );
    let (_, samples) = sampled(&lab, || {
        lab.heal("fw2", net::HA_IF);
        lab.heal("fw2", net::LAN_IF);
        assert!(wait_until(
            Duration::from_secs(10),
            Duration::from_millis(20),
            || holders(&lab, WAN_V4) == ["fw1"]
        ));
        std::thread::sleep(Duration::from_secs(2));
    });
    let after: Vec<_> = samples
        .iter()
        .skip_while(|(_, h)| h.len() > 1)
        .cloned()
        .collect();
    assert_one_holder("partition healed", &after, "fw1");
    // No keepalived event reaches the node that stays MASTER when a
    // partition heals, so the ISP may still map the address to fw2's MAC
    // (fw2 announced it while it was MASTER): `ns-ha-vip announce` is the
    // re-announce for the WAN as for the VIPs, and it must work.
    tool_ok(&lab, "fw1", "ns-ha-vip", &["announce", "--interface", WAN]);
    assert!(
        lab.ping("wan", net::CLIENT, 3),
        "the ISP cannot reach the LAN client after the heal and ns-ha-vip announce"
    );
    only_answers(&lab, "fw1");

    // remove-interface takes the WAN down and out of both nodes.
    init_ok(&lab, "fw1", &["remove-interface", "--interface", WAN]);
    assert!(holders(&lab, WAN_V4).is_empty());
    for fw in FIREWALLS {
        assert!(!lab.path(fw, WAN_FILE).exists(), "{fw} kept {WAN_FILE}");
    }
}

/// Issue 10 on a takeover WAN: the master's gateway check on the WAN only it
/// has up. The ISP stops answering fw1 (its link stays up): fw2 takes the
/// VIPs and the WAN, and fw1, which cannot test a WAN it has down, does not
/// take them back, well past the hold-down (no ping-pong).
#[test]
fn a_silent_isp_on_the_takeover_wan_moves_it_and_the_master_stays_away() {
    let lab = paired_with_lan();
    init_ok(
        &lab,
        "fw1",
        &[
            "add-wan",
            "--interface",
            WAN,
            "--ipv4",
            "10.99.3.1/24",
            "--gateway",
            ISP_V4,
        ],
    );
    configure_dnsmasq(&lab);
    set_health(
        &lab,
        &serde_json::json!({
            "hold_down_ms": LAB_HOLD_DOWN_MS,
            "links": [
                {"interface": net::LAN_IF, "targets": [net::CLIENT]},
                {"interface": WAN, "targets": [ISP_V4], "peer": false},
            ],
        }),
    );
    let list = tool_ok(&lab, "fw1", "ns-ha-check", &["--json", "health", "--list"]);
    assert!(list.contains("\"takeover-wan\""), "{list}");
    init_ok(&lab, "fw1", &["enable"]);
    let ready = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        let (s1, s2) = (state(&lab, "fw1"), state(&lab, "fw2"));
        s1["checks"]["reach:wan1"]["state"] == "ok"
            && s2["checks"]["reach:wan1"]["state"] == "not-applicable"
            && s1["fit"] == true
            && s2["fit"] == true
            && holders(&lab, WAN_V4) == ["fw1"]
    });
    assert!(
        ready,
        "not ready: fw1 {} / fw2 {}",
        state(&lab, "fw1"),
        state(&lab, "fw2")
    );

    // The ISP drops everything from fw1's WAN MAC; fw2's, once up, answers.
    let mac = mac_of(&lab, "fw1", WAN);
    let rules = format!(
        "table inet nsha_isp_ignore {{\n chain input {{ type filter hook input priority -300; ether saddr {mac} drop; }}\n}}\n"
    );
    let path = lab.dir().join("isp-ignore.nft");
    std::fs::write(&path, rules).expect("nft rules");
    let t = Instant::now();
    lab.exec_ok("wan", &["nft", "-f", path.to_str().expect("utf-8")]);
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            holders(&lab, WAN_V4) == ["fw2"]
        }),
        "fw2 did not take the WAN: {:?}, fw1 {}",
        holders(&lab, WAN_V4),
        state(&lab, "fw1")
    );
    eprintln!(
        "ISP silent toward fw1: the WAN is up on fw2 alone after {:?}",
        t.elapsed()
    );
    assert!(
        lab.ping("wan", WAN_V4, 3),
        "the ISP cannot reach the WAN address on fw2"
    );
    // fw1 cannot test the WAN while it has it down: it stays BACKUP past the
    // hold-down, its check failing; the LAN VIP stays with fw2 too.
    assert_held_past_hold_down(&lab, net::LAN_VIP, "fw2", "while fw1's ISP is silent");
    assert_eq!(holders(&lab, WAN_V4), ["fw2"]);
    let s1 = state(&lab, "fw1");
    assert_eq!(s1["checks"]["reach:wan1"]["state"], "failing", "{s1}");
    assert_eq!(s1["fit"], false, "{s1}");
    let s2 = state(&lab, "fw2");
    assert_eq!(s2["checks"]["reach:wan1"]["state"], "ok", "{s2}");
}
