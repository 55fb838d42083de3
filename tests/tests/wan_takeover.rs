//! Issue 9 part A in the lab: a static IPv4 + IPv6 takeover WAN added with
//! `ns-ha-init add-wan` on the primary reaches the backup with the cluster,
//! is up only on the MASTER (the role engine drives real ifupdown), the
//! backup answers no ARP/ND for it, and exactly one node holds it after a
//! crash of the master, a maintenance handover and a partition heal (never
//! two at any sample outside the partition itself); the bridge and DHCP
//! WANs go through the same three. Bad input is refused
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
use ns_ha_tests::{net, wait_until, Lab, StopOnDrop, FIREWALLS};
use serde_json::Value;

const WAN: &str = "wan1";
const WAN_V4: &str = "10.99.3.1";
const WAN_V6: &str = "fd10:99:3::1";
const ISP_V4: &str = "10.99.3.100";
const WAN_FILE: &str = "/etc/network/interfaces.d/ns-ha-wan";

/// Which firewalls have the WAN link up with `addr` on it (able to answer for it).
fn holders(lab: &Lab, addr: &str) -> Vec<&'static str> {
    holders_on(lab, WAN, addr)
}

/// Which firewalls have `dev` up with `addr` on it (both read at one instant).
fn holders_on(lab: &Lab, dev: &str, addr: &str) -> Vec<&'static str> {
    let addr = addr.parse().expect("an IP address");
    lab.link_snapshot().holders(dev, Some(addr))
}

/// Sample the holders of the WAN's IPv4 address `addr` every 20 ms while `during` runs.
fn sampled<T>(
    lab: &Lab,
    addr: &str,
    during: impl FnOnce() -> T,
) -> (T, Vec<(Duration, Vec<&'static str>)>) {
    sampled_on(lab, WAN, addr, during)
}

/// [`sampled`] for a WAN whose address lives on `dev`.
fn sampled_on<T>(
    lab: &Lab,
    dev: &str,
    addr: &str,
    during: impl FnOnce() -> T,
) -> (T, Vec<(Duration, Vec<&'static str>)>) {
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut v = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                v.push((start.elapsed(), holders_on(lab, dev, addr)));
                std::thread::sleep(Duration::from_millis(20));
            }
            v
        });
        // Stopped also when `during` panics: the scope would otherwise wait
        // for the sampler for ever and the lab would never be torn down.
        let stopper = StopOnDrop(&stop);
        let r = during();
        drop(stopper);
        (r, sampler.join().expect("sampler"))
    })
}

/// No sample with two holders; the last `settled` samples held by `want` alone.
fn assert_one_holder(
    lab: &Lab,
    what: &str,
    addr: &str,
    samples: &[(Duration, Vec<&'static str>)],
    want: &str,
) {
    assert!(samples.len() > 10, "{what}: only {} samples", samples.len());
    if let Some((t, h)) = samples.iter().find(|(_, h)| h.len() > 1) {
        // The sampling ended just before this assertion: the sample's
        // wall-clock time, to read against the role engines' records.
        let last = samples.last().map(|(l, _)| *l).unwrap_or_default();
        let at_unix_ms =
            ns_ha_common::clock::now_ms().saturating_sub((last - *t).as_millis() as u64);
        panic!(
            "{what}: two nodes hold {addr} at {t:?} (unix ms ~{at_unix_ms}): {h:?}\n\
             fw1's role engine: {}\nfw2's role engine: {}",
            role_status(lab, "fw1")["history"],
            role_status(lab, "fw2")["history"]
        );
    }
    let tail = &samples[samples.len() - 3..];
    assert!(
        tail.iter().all(|(_, h)| h == &[want]),
        "{what}: {want} does not hold {addr} at the end: {tail:?}"
    );
    let empty = samples.iter().filter(|(_, h)| h.is_empty()).count();
    eprintln!(
        "{what}: {} samples every 20 ms, never two holders, {empty} with none",
        samples.len()
    );
}

/// A partition (fw2 hears nothing on the HA link and the LAN): both are
/// MASTER and hold the WAN address on `dev` while it lasts; once it heals
/// fw1 alone keeps it, and no sample after the first with one holder shows
/// two. Then the ISP reaches the LAN client through the WAN again.
fn partition_heals(lab: &Lab, dev: &str, addr: &str, what: &str) {
    lab.cut("fw2", net::HA_IF);
    lab.cut("fw2", net::LAN_IF);
    assert!(
        wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
            holders_on(lab, dev, addr).len() == 2
        }),
        "{what}: the partition did not make fw2 hold {addr} too: {:?}\nfw2: {}",
        holders_on(lab, dev, addr),
        role_status(lab, "fw2")["history"]
    );
    let (_, samples) = sampled_on(lab, dev, addr, || {
        lab.heal("fw2", net::HA_IF);
        lab.heal("fw2", net::LAN_IF);
        assert!(
            wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
                holders_on(lab, dev, addr) == ["fw1"]
            }),
            "{what}: fw2 kept {addr} after the partition healed: {:?}",
            holders_on(lab, dev, addr)
        );
        std::thread::sleep(Duration::from_secs(2));
    });
    let after: Vec<_> = samples
        .iter()
        .skip_while(|(_, h)| h.len() > 1)
        .cloned()
        .collect();
    assert_one_holder(
        lab,
        &format!("partition healed ({what})"),
        addr,
        &after,
        "fw1",
    );
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            lab.ping("wan", net::CLIENT, 1)
        }),
        "{what}: the ISP cannot reach the LAN client through fw1 after the partition healed"
    );
    assert!(
        role_settled(lab, "fw2", "BACKUP", Duration::from_secs(10)),
        "{what}: fw2 did not settle as BACKUP after the partition healed"
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

/// The MAC the ISP's neighbour cache maps `addr` to (none: no entry).
fn isp_neighbour(lab: &Lab, addr: &str) -> Option<String> {
    let out = lab.exec_ok("wan", &["ip", "-j", "neigh", "show", addr]);
    let v: Value = serde_json::from_str(&out).expect("ip -j neigh");
    v[0]["lladdr"].as_str().map(str::to_ascii_lowercase)
}

/// The ISP (WAN host) routes the LAN subnet through the WAN address `via`.
fn isp_routes_lan_via(lab: &Lab, via: &str) {
    lab.exec_ok(
        "wan",
        &[
            "ip",
            "route",
            "replace",
            "10.99.1.0/24",
            "via",
            via,
            "src",
            ISP_V4,
        ],
    );
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
    let (_, samples) = sampled(&lab, WAN_V4, || {
        tool_ok(&lab, "fw1", "ns-ha-role", &["maintenance", "on"]);
        assert!(wait_until(
            Duration::from_secs(10),
            Duration::from_millis(20),
            || holders(&lab, WAN_V4) == ["fw2"]
        ));
        std::thread::sleep(Duration::from_secs(1));
    });
    assert_one_holder(&lab, "maintenance on", WAN_V4, &samples, "fw2");
    let (_, samples) = sampled(&lab, WAN_V4, || {
        tool_ok(&lab, "fw1", "ns-ha-role", &["maintenance", "off"]);
        assert!(wait_until(
            Duration::from_secs(10),
            Duration::from_millis(20),
            || holders(&lab, WAN_V4) == ["fw1"]
        ));
        std::thread::sleep(Duration::from_secs(1));
    });
    assert_one_holder(&lab, "maintenance off", WAN_V4, &samples, "fw1");

    // fw1 dies while the ISP pings a LAN client through the WAN and the
    // WAN address itself (v6), and the LAN client pings the ISP.
    isp_routes_lan_via(&lab, WAN_V4);
    assert!(
        lab.ping("wan", net::CLIENT, 3),
        "the ISP cannot reach the LAN client through the takeover WAN"
    );
    let ((v4, v6, lan), samples) = sampled(&lab, WAN_V4, || {
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
    assert_one_holder(&lab, "crash of fw1", WAN_V4, &samples, "fw2");
    assert!(v4 < 2000.0 && v6 < 2000.0, "WAN gaps {v4:.0} / {v6:.0} ms");
    only_answers(&lab, "fw2");

    // fw1 comes back and preempts: the WAN moves back, never on both.
    let (_, samples) = sampled(&lab, WAN_V4, || {
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
    assert_one_holder(&lab, "fw1 back (preempt)", WAN_V4, &samples, "fw1");

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
    // fw2 announced the WAN address as it brought it up: the ISP now sends
    // to fw2 (the ISP knew the address from the pings before).
    let (mac1, mac2) = (mac_of(&lab, "fw1", WAN), mac_of(&lab, "fw2", WAN));
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
            isp_neighbour(&lab, WAN_V4).as_deref() == Some(mac2.as_str())
        }),
        "fw2's announcement did not reach the ISP: {:?}",
        isp_neighbour(&lab, WAN_V4)
    );
    let (announced, samples) = sampled(&lab, WAN_V4, || {
        let healed = Instant::now();
        lab.heal("fw2", net::HA_IF);
        lab.heal("fw2", net::LAN_IF);
        // No keepalived event reaches fw1, which stays MASTER; its health
        // monitor sees fw2 answer on the HA link again and re-announces, so
        // the ISP maps the address to fw1 again without sending it anything
        // (the entry would otherwise keep fw2's MAC until it goes stale).
        let announced = wait_until(Duration::from_secs(8), Duration::from_millis(20), || {
            isp_neighbour(&lab, WAN_V4).as_deref() == Some(mac1.as_str())
        })
        .then(|| healed.elapsed());
        assert!(wait_until(
            Duration::from_secs(10),
            Duration::from_millis(20),
            || holders(&lab, WAN_V4) == ["fw1"]
        ));
        std::thread::sleep(Duration::from_secs(2));
        announced
    });
    let after: Vec<_> = samples
        .iter()
        .skip_while(|(_, h)| h.len() > 1)
        .cloned()
        .collect();
    assert_one_holder(&lab, "partition healed", WAN_V4, &after, "fw1");
    let announced = announced.unwrap_or_else(|| {
        panic!(
            "fw1 did not re-announce {WAN_V4} after the partition healed: the ISP maps it to {:?} (fw1 {mac1}, fw2 {mac2})\nfw1's monitor log:\n{}",
            isp_neighbour(&lab, WAN_V4),
            lab.read("fw1", "var/log/ns-ha-monitor.log")
        )
    });
    eprintln!(
        "partition healed: the ISP maps {WAN_V4} to fw1 again {} ms after the heal",
        announced.as_millis()
    );
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

/// A bridge WAN over the WAN NIC (a takeover WAN whose device ifupdown
/// creates: the bridge is made by the stanza's own `ip` commands, no
/// bridge-utils hook): up on the master only, the backup has no bridge and
/// answers nothing, and after a crash of fw1 fw2 builds it, holds the
/// address alone and carries the ISP's traffic to the LAN.
#[test]
fn a_bridge_takeover_wan_is_built_on_the_master_only() {
    const BRIDGE: &str = "brwan";
    let lab = paired_with_lan();
    init_ok(
        &lab,
        "fw1",
        &[
            "add-wan",
            "--interface",
            BRIDGE,
            "--kind",
            "bridge",
            "--member",
            WAN,
            "--ipv4",
            "10.99.3.1/24",
            "--gateway",
            ISP_V4,
        ],
    );
    let f1 = lab.read("fw1", WAN_FILE);
    assert_eq!(f1, lab.read("fw2", WAN_FILE), "the WAN file differs");
    assert!(f1.contains("iface brwan inet static"), "{f1}");
    let bridge_on = |fw: &str| {
        lab.exec(fw, &["ip", "link", "show", "dev", BRIDGE])
            .status
            .success()
    };
    init_ok(&lab, "fw1", &["enable"]);
    assert!(lab.wait_holders(net::LAN_VIP, &["fw1"], Duration::from_secs(15)));
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            holders_on(&lab, BRIDGE, WAN_V4) == ["fw1"]
        }),
        "the bridge WAN is not up on fw1 alone: {:?}\nfw1: {}",
        holders_on(&lab, BRIDGE, WAN_V4),
        role_status(&lab, "fw1")["history"]
    );
    assert!(role_settled(&lab, "fw2", "BACKUP", Duration::from_secs(10)));
    // wan1 is the bridge's port on fw1; fw2 has no bridge and its wan1 is no port.
    let port = lab.exec_ok("fw1", &["ip", "-j", "link", "show", "dev", WAN]);
    assert!(port.contains(&format!("\"master\":\"{BRIDGE}\"")), "{port}");
    assert!(!bridge_on("fw2"), "fw2 built the bridge as BACKUP");
    isp_routes_lan_via(&lab, WAN_V4);
    assert!(
        lab.ping("wan", net::CLIENT, 3),
        "the ISP cannot reach the LAN client through the bridge WAN"
    );
    let out = lab.exec(
        "wan",
        &["arping", "-c", "3", "-w", "3", "-I", "eth0", WAN_V4],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    let bridge_mac = mac_of(&lab, "fw1", BRIDGE);
    assert!(
        text.contains(&bridge_mac),
        "fw1's bridge ({bridge_mac}) does not answer ARP for {WAN_V4}: {text}"
    );
    let fw2_macs = [mac_of(&lab, "fw2", WAN), mac_of(&lab, "fw2", net::WAN_IF)];
    assert!(
        !fw2_macs.iter().any(|m| text.contains(m.as_str())),
        "the backup answered ARP for {WAN_V4}: {text}"
    );

    // Maintenance hands it over and back (fw2 builds its bridge for the
    // first time, fw1 deletes its own on ifdown and builds it again).
    for (step, to) in [("on", "fw2"), ("off", "fw1")] {
        let (_, samples) = sampled_on(&lab, BRIDGE, WAN_V4, || {
            tool_ok(&lab, "fw1", "ns-ha-role", &["maintenance", step]);
            assert!(
                wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
                    holders_on(&lab, BRIDGE, WAN_V4) == [to]
                }),
                "maintenance {step}: the bridge WAN did not move to {to}"
            );
            std::thread::sleep(Duration::from_secs(1));
        });
        assert_one_holder(
            &lab,
            &format!("maintenance {step} (bridge WAN)"),
            WAN_V4,
            &samples,
            to,
        );
        let other = if to == "fw1" { "fw2" } else { "fw1" };
        assert!(
            wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
                !bridge_on(other)
            }),
            "{other} kept its bridge after it gave the WAN up"
        );
    }
    assert!(role_settled(&lab, "fw2", "BACKUP", Duration::from_secs(10)));
    partition_heals(&lab, BRIDGE, WAN_V4, "bridge WAN");
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
            !bridge_on("fw2")
        }),
        "fw2 kept its bridge after the partition healed"
    );

    let (gap, samples) = sampled_on(&lab, BRIDGE, WAN_V4, || {
        let through = Pinger::start(&lab, "wan", net::CLIENT);
        std::thread::sleep(Duration::from_millis(500));
        lab.crash("fw1");
        assert!(
            wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
                holders_on(&lab, BRIDGE, WAN_V4) == ["fw2"]
            }),
            "fw2 did not build the bridge WAN: {}",
            role_status(&lab, "fw2")["history"]
        );
        std::thread::sleep(Duration::from_secs(2));
        through.stop()
    });
    assert_one_holder(&lab, "crash of fw1 (bridge WAN)", WAN_V4, &samples, "fw2");
    eprintln!("bridge WAN, crash of fw1: WAN host -> LAN client longest gap {gap:.0} ms");
    assert!(
        lab.ping("wan", net::CLIENT, 3),
        "the ISP cannot reach the LAN client through fw2's bridge WAN"
    );
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

/// The cluster MAC of the DHCP takeover WAN (locally administered).
const CLUSTER_MAC: &str = "02:00:5e:10:00:01";

/// The IPv4 address `fw`'s WAN carries with its link up (a DHCP lease), if any.
fn wan_v4(lab: &Lab, fw: &str) -> Option<String> {
    let out = lab.exec(fw, &["ip", "-j", "-4", "addr", "show", "dev", WAN, "up"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v[0]["addr_info"][0]["local"].as_str().map(str::to_string)
}

/// What the ISP's DHCP server has handed out: (MAC, address) per lease,
/// from dnsmasq's lease file (`EXPIRY MAC ADDRESS HOSTNAME CLIENT-ID`).
fn isp_leases(file: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3).then(|| (f[1].to_ascii_lowercase(), f[2].to_string()))
        })
        .collect()
}

/// Now as Unix time in seconds (ping's `-D` stamps).
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Crash fw1 and wait until fw2's WAN has a lease: when the crash began
/// and when it was complete (links down), as Unix time, and how long fw2
/// took from the beginning.
fn crash_until_fw2_leases(lab: &Lab) -> (f64, f64, Duration) {
    let crashed_at = unix_now();
    let t = Instant::now();
    lab.crash("fw1");
    let dead_at = unix_now();
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(10), || {
            wan_v4(lab, "fw2").is_some()
        }),
        "fw2 got no lease: {}",
        role_status(lab, "fw2")["history"]
    );
    (crashed_at, dead_at, t.elapsed())
}

/// A pair with a DHCP takeover WAN (with `mac`, if given) against the
/// ISP's DHCP server, enabled, fw1 MASTER with its lease: the lab, the
/// ISP's lease file and the address fw1 leased.
fn enabled_with_dhcp_wan(mac: Option<&str>) -> (Lab, std::path::PathBuf, String) {
    let lab = paired_with_lan();
    let leases = lab.isp_dhcp();
    let mut args = vec!["add-wan", "--interface", WAN, "--ipv4", "dhcp"];
    if let Some(m) = mac {
        args.extend(["--mac", m]);
    }
    init_ok(&lab, "fw1", &args);
    let f1 = lab.read("fw1", WAN_FILE);
    assert_eq!(f1, lab.read("fw2", WAN_FILE), "the WAN file differs");
    assert!(f1.contains("iface wan1 inet dhcp"), "{f1}");
    if let Some(m) = mac {
        // The lease follows the MAC alone (no per-node DUID client id).
        assert!(
            f1.contains(&format!("hwaddress ether {m}")) && f1.contains("client no"),
            "{f1}"
        );
    }
    configure_dnsmasq(&lab);
    // The lab's short hold-down: a revived fw1 that gives up MASTER once
    // while its links settle takes the VIPs back after it, not after 30 s.
    set_health(
        &lab,
        &serde_json::json!({"hold_down_ms": LAB_HOLD_DOWN_MS, "links": [
            {"interface": net::LAN_IF, "targets": [net::CLIENT]}]}),
    );
    init_ok(&lab, "fw1", &["enable"]);
    assert!(lab.wait_holders(net::LAN_VIP, &["fw1"], Duration::from_secs(15)));
    assert!(role_settled(&lab, "fw1", "MASTER", Duration::from_secs(15)));
    assert!(role_settled(&lab, "fw2", "BACKUP", Duration::from_secs(10)));
    assert!(
        wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
            wan_v4(&lab, "fw1").is_some()
        }),
        "fw1 got no lease on {WAN}: {}\nISP log: {}",
        role_status(&lab, "fw1")["history"],
        std::fs::read_to_string(lab.dir().join("isp/dnsmasq.log")).unwrap_or_default()
    );
    let addr = wan_v4(&lab, "fw1").expect("lease");
    assert!(addr.starts_with("10.99.3."), "{addr}");
    // Steady state: fw1 alone holds it; the backup's WAN is down, no lease.
    for _ in 0..10 {
        assert_eq!(holders(&lab, &addr), ["fw1"]);
        assert_eq!(wan_v4(&lab, "fw2"), None);
        std::thread::sleep(Duration::from_millis(100));
    }
    (lab, leases, addr)
}

/// Issue 9, DHCP WAN with the cluster MAC: the ISP's DHCP server (dnsmasq,
/// one lease per MAC) leases the cluster MAC one address; after a crash of
/// fw1 the new master brings the WAN up with the same MAC and gets the same
/// lease, so the ISP's route to the address needs no change. Measured: the
/// crash to the WAN host's pings through the WAN address flowing again.
#[test]
fn a_dhcp_takeover_wan_with_the_cluster_mac_keeps_its_lease() {
    let (lab, leases, addr) = enabled_with_dhcp_wan(Some(CLUSTER_MAC));
    assert_eq!(mac_of(&lab, "fw1", WAN), CLUSTER_MAC);
    assert_eq!(
        isp_leases(&leases),
        [(CLUSTER_MAC.to_string(), addr.clone())],
        "the ISP's leases"
    );
    for (fw, up) in [("fw1", true), ("fw2", false)] {
        let status: Value =
            serde_json::from_str(&tool_ok(&lab, fw, "ns-ha-check", &["--json", "status"]))
                .expect("status json");
        let w = &status["wans"][0];
        assert_eq!(w["interface"], WAN, "{fw}: {w}");
        assert_eq!(w["addressing"], "dhcp", "{fw}: {w}");
        assert_eq!(w["up_here"], up, "{fw}: {w}");
    }

    // The ISP routes the LAN through the leased address.
    isp_routes_lan_via(&lab, &addr);
    assert!(
        lab.ping("wan", net::CLIENT, 3),
        "the ISP cannot reach the LAN client through the DHCP WAN"
    );
    // Maintenance: the first handover to fw2, which never held the lease
    // and has no address to probe; fw1 takes its link down before ifdown, so
    // it stops answering at once and does not release the lease. And back.
    for (step, to) in [("on", "fw2"), ("off", "fw1")] {
        let (_, samples) = sampled(&lab, &addr, || {
            tool_ok(&lab, "fw1", "ns-ha-role", &["maintenance", step]);
            assert!(
                wait_until(Duration::from_secs(15), Duration::from_millis(20), || {
                    holders(&lab, &addr) == [to]
                }),
                "maintenance {step}: {to} did not get the lease: {:?}",
                holders(&lab, &addr)
            );
            std::thread::sleep(Duration::from_secs(1));
        });
        assert_one_holder(
            &lab,
            &format!("maintenance {step} (DHCP WAN)"),
            &addr,
            &samples,
            to,
        );
        assert_eq!(
            wan_v4(&lab, to).as_deref(),
            Some(addr.as_str()),
            "not the same lease"
        );
    }
    assert!(
        role_settled(&lab, "fw2", "BACKUP", Duration::from_secs(10)),
        "fw2 did not settle as BACKUP after maintenance off"
    );
    // A partition: fw2 brings the WAN up with the cluster MAC too (its
    // probe of the lease meets fw1's answer until it gives up waiting);
    // after the heal fw1 alone keeps the same lease, and the ISP's DHCP
    // server has still one lease, the cluster MAC's.
    partition_heals(&lab, WAN, &addr, "DHCP WAN");
    assert_eq!(wan_v4(&lab, "fw1").as_deref(), Some(addr.as_str()));
    assert_eq!(wan_v4(&lab, "fw2"), None);
    assert_eq!(
        isp_leases(&leases),
        [(CLUSTER_MAC.to_string(), addr.clone())],
        "the ISP's leases after the partition"
    );
    let ((through, lan, crashed_at, on_fw2), samples) = sampled(&lab, &addr, || {
        let through = Pinger::start(&lab, "wan", net::CLIENT);
        let lan = Pinger::start(&lab, "lan", ISP_V4);
        std::thread::sleep(Duration::from_millis(500));
        let (crashed_at, _, on_fw2) = crash_until_fw2_leases(&lab);
        std::thread::sleep(Duration::from_secs(2));
        (through.stop_replies(), lan.stop(), crashed_at, on_fw2)
    });
    // The outage is the longest gap between replies; traffic flows again
    // with the reply that ends it.
    let gap = ns_ha_tests::health::longest_gap_ms(&through);
    let resumed = through
        .windows(2)
        .find(|w| (w[1] - w[0]) * 1000.0 >= gap)
        .map(|w| (w[1] - crashed_at) * 1000.0)
        .expect("replies before and after the crash");
    eprintln!(
        "DHCP WAN with the cluster MAC, crash of fw1: the lease on fw2 after {:.0} ms; \
         WAN host -> LAN client through {addr} flowing again {resumed:.0} ms after the crash \
         (longest gap {gap:.0} ms); LAN client -> ISP longest gap {lan:.0} ms",
        on_fw2.as_secs_f64() * 1000.0
    );
    assert_one_holder(&lab, "crash of fw1 (DHCP WAN)", &addr, &samples, "fw2");
    assert_eq!(
        wan_v4(&lab, "fw2").as_deref(),
        Some(addr.as_str()),
        "not the same lease"
    );
    assert_eq!(mac_of(&lab, "fw2", WAN), CLUSTER_MAC);
    assert_eq!(
        isp_leases(&leases),
        [(CLUSTER_MAC.to_string(), addr.clone())],
        "the ISP's leases after the failover"
    );
    // The replies kept coming to the end (not a last burst before the crash).
    let last = through.last().copied().unwrap_or(0.0);
    assert!(
        unix_now() - last < 1.0,
        "no reply through the WAN at the end"
    );
    assert!(
        resumed < 4000.0,
        "traffic resumed only after {resumed:.0} ms"
    );

    // fw1 comes back and preempts: the WAN moves back, same lease, never on both.
    let (_, samples) = sampled(&lab, &addr, || {
        lab.revive("fw1");
        assert!(
            wait_until(
                Duration::from_millis(LAB_HOLD_DOWN_MS) + Duration::from_secs(20),
                Duration::from_millis(20),
                || holders(&lab, &addr) == ["fw1"]
            ),
            "fw1 did not take the WAN back: {:?}\nfw1: {}\nfw2: {}",
            holders(&lab, &addr),
            role_status(&lab, "fw1")["history"],
            role_status(&lab, "fw2")["history"]
        );
        std::thread::sleep(Duration::from_secs(1));
    });
    // Never both: the new master probes the lease's address from its own
    // MAC (a revived fw1 still carried the cluster MAC from before the
    // crash, its probe's answer never reached it, and it took the address
    // while fw2 was still releasing it) and waits for fw2 to let go.
    assert_one_holder(&lab, "fw1 back (preempt, DHCP WAN)", &addr, &samples, "fw1");
    assert_ne!(
        mac_of(&lab, "fw2", WAN),
        CLUSTER_MAC,
        "fw2 kept the cluster MAC after it took the WAN down"
    );
    // The lease is the cluster MAC's: the node giving up the WAN takes
    // its link down before ifdown, so the release never reaches the ISP.
    let isp_log = std::fs::read_to_string(lab.dir().join("isp/dnsmasq.log")).unwrap_or_default();
    assert!(
        !isp_log.contains("DHCPRELEASE"),
        "a node released the cluster's lease:\n{isp_log}"
    );
    assert_eq!(
        isp_leases(&leases),
        [(CLUSTER_MAC.to_string(), addr.clone())],
        "the ISP's leases after fw1 took the WAN back"
    );
    assert!(
        lab.ping("wan", net::CLIENT, 3),
        "the ISP cannot reach the LAN client after fw1 took the WAN back"
    );
}

/// The same crash without a cluster MAC, for the figure: the new master
/// asks with its own MAC, so the ISP hands out a second lease with another
/// address, and the old address (which the ISP and the world still use)
/// never answers again.
#[test]
fn a_dhcp_takeover_wan_without_the_cluster_mac_comes_back_on_a_new_address() {
    let (lab, leases, old) = enabled_with_dhcp_wan(None);
    let mac1 = mac_of(&lab, "fw1", WAN);
    let mac2 = mac_of(&lab, "fw2", WAN);
    assert_ne!(mac1, mac2);
    assert_eq!(isp_leases(&leases), [(mac1.clone(), old.clone())]);
    let pinger = Pinger::start(&lab, "wan", &old);
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let (_, dead_at, on_fw2) = crash_until_fw2_leases(&lab);
    let new = wan_v4(&lab, "fw2").expect("lease");
    let reachable = wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
        lab.ping("wan", &new, 1)
    });
    let reached = t.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let replies = pinger.stop_replies();
    let seen = isp_leases(&leases);
    eprintln!(
        "DHCP WAN without a cluster MAC, crash of fw1: fw2 leased {new} (fw1 had {old}) {:.0} ms after the crash, \
         the ISP reached it after {:.0} ms; the ISP's leases: {seen:?}",
        on_fw2.as_secs_f64() * 1000.0,
        reached.as_secs_f64() * 1000.0
    );
    assert!(reachable, "the ISP cannot reach fw2's new address {new}");
    assert_ne!(new, old, "the same address for another MAC");
    assert_eq!(seen.len(), 2, "the ISP's leases: {seen:?}");
    assert!(seen.contains(&(mac1, old.clone())) && seen.contains(&(mac2, new.clone())));
    assert!(
        replies.iter().all(|s| *s < dead_at),
        "the old address {old} answered after the crash"
    );
    assert!(holders(&lab, &old).is_empty());
}

/// The Debian package's pppd ip-up hook (packaging/debian/ppp/ns-ha-wan-route),
/// run as Debian's /etc/ppp/ip-up runs it, with pppd's arguments, against
/// the real `ip` in a firewall's namespace. This kernel has no PPP, so the
/// session's device is a veth here; the VM tier runs the hook under real
/// pppd (`vm_tier`, pppoe-wan, with the main uplink's route there first).
#[test]
fn the_ppp_hook_adds_the_pppoe_default_route_beside_another_wan() {
    let hook = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/debian/ppp/ns-ha-wan-route");
    let hook = hook.to_str().unwrap();
    let lab = Lab::up();
    // Another WAN's default route first: pppd 2.4.9 then adds none.
    lab.exec_ok(
        "fw1",
        &[
            "ip",
            "route",
            "add",
            "default",
            "via",
            net::WAN_HOST,
            "dev",
            "wan0",
            "metric",
            "100",
        ],
    );
    lab.exec_ok(
        "fw1",
        &[
            "ip",
            "link",
            "add",
            "pppoe-wan",
            "type",
            "veth",
            "peer",
            "name",
            "pppoe-isp",
        ],
    );
    lab.exec_ok("fw1", &["ip", "link", "set", "pppoe-wan", "up"]);
    let routes = |lab: &Lab| lab.exec_ok("fw1", &["ip", "route", "show", "default"]);
    let run = |ipparam: &str| {
        let out = lab.exec(
            "fw1",
            &[
                hook,
                "pppoe-wan",
                "/dev/ppp",
                "0",
                "10.99.5.1",
                "10.99.5.100",
                ipparam,
            ],
        );
        assert!(
            out.status.success(),
            "hook failed with ipparam {ipparam:?}: {out:?}"
        );
    };
    // Not an ns-ha session, or a metric that is not a number: left alone.
    for ipparam in ["", "isp-2", "ns-ha-metric=", "ns-ha-metric=3;reboot"] {
        run(ipparam);
        assert!(
            !routes(&lab).contains("pppoe-wan"),
            "ipparam {ipparam:?}: {}",
            routes(&lab)
        );
    }
    run("ns-ha-metric=300");
    let r = routes(&lab);
    assert!(
        r.contains("default dev pppoe-wan scope link metric 300"),
        "{r}"
    );
    assert!(
        r.contains(&format!(
            "default via {} dev wan0 metric 100",
            net::WAN_HOST
        )),
        "{r}"
    );
    // pppd's ip-up runs again at every reconnect: the same route, once.
    run("ns-ha-metric=300");
    assert_eq!(
        routes(&lab).matches("pppoe-wan").count(),
        1,
        "{}",
        routes(&lab)
    );
}
