//! `ns-ha-init enable` on a running primary moves no traffic (issue 13 item 1).
//!
//! Switching HA on must not hand the VIPs to the backup for a moment: while
//! `enable` runs (and for a while after), the VIPs are sampled on the backup
//! and the LAN client and WAN host count the ARP packets that announce a VIP
//! from the backup's MAC (an nft `arp` input counter: keepalived sends its
//! gratuitous ARPs on a packet socket, so they are counted where they land).

use std::time::{Duration, Instant};

use ns_ha_tests::cluster::{init_ok, pair_only, role_status};
use ns_ha_tests::{net, Lab};

const TABLE: &str = "nh_garp";

/// Count, on `host`, ARP packets whose sender is `vip` at `mac`.
fn count_arps_from(lab: &Lab, host: &str, vip: &str, mac: &str) {
    lab.sh_ok(
        host,
        &format!(
            "nft add table arp {TABLE} && \
             nft add chain arp {TABLE} input '{{ type filter hook input priority 0; }}' && \
             nft add rule arp {TABLE} input arp saddr ip {vip} arp saddr ether {mac} counter"
        ),
    );
}

/// Packets counted by [`count_arps_from`] on `host` so far.
fn arps_counted(lab: &Lab, host: &str) -> u64 {
    let out = lab.sh_ok(host, &format!("nft -j list table arp {TABLE}"));
    let v: serde_json::Value = serde_json::from_str(&out).expect("nft -j output");
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["rule"]["expr"].as_array())
        .flatten()
        .filter_map(|e| e["counter"]["packets"].as_u64())
        .sum()
}

fn mac(lab: &Lab, node: &str, iface: &str) -> String {
    lab.sh_ok(node, &format!("cat /sys/class/net/{iface}/address"))
        .trim()
        .to_string()
}

#[test]
fn enable_never_gives_the_vips_to_the_backup() {
    let lab = Lab::up();
    pair_only(&lab);
    let lan_vip = format!("{}/24", net::LAN_VIP);
    let wan_vip = format!("{}/24", net::WAN_VIP);
    init_ok(
        &lab,
        "fw1",
        &["add-lan", "--interface", net::LAN_IF, "--vip", &lan_vip],
    );
    init_ok(
        &lab,
        "fw1",
        &["add-lan", "--interface", net::WAN_IF, "--vip", &wan_vip],
    );
    count_arps_from(&lab, "lan", net::LAN_VIP, &mac(&lab, "fw2", net::LAN_IF));
    count_arps_from(&lab, "wan", net::WAN_VIP, &mac(&lab, "fw2", net::WAN_IF));
    let vips = [net::LAN_VIP, net::WAN_VIP];

    // Three rounds: the first enable after pairing, then disable/enable twice.
    let rounds = 3;
    let (mut samples, mut on_backup) = (0u32, 0u32);
    for round in 0..rounds {
        if round > 0 {
            init_ok(&lab, "fw1", &["disable"]);
            assert!(
                lab.wait_holders(net::LAN_VIP, &[], Duration::from_secs(10)),
                "round {round}: disable left the LAN VIP on {:?}",
                lab.holders(net::LAN_VIP)
            );
        }
        std::thread::scope(|s| {
            let enable = s.spawn(|| init_ok(&lab, "fw1", &["enable"]));
            // Sample while enable runs and for 3 s after: the backup would
            // take the VIPs within about 0.4 s of its keepalived starting.
            let mut done_at: Option<Instant> = None;
            while done_at.is_none_or(|t| t.elapsed() < Duration::from_secs(3)) {
                let held = lab.addrs("fw2");
                samples += 1;
                if held.iter().any(|(_, a)| vips.contains(&a.as_str())) {
                    on_backup += 1;
                }
                if done_at.is_none() && enable.is_finished() {
                    done_at = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            enable.join().expect("enable thread");
        });
        assert!(
            lab.wait_holders(net::LAN_VIP, &["fw1"], Duration::from_secs(10))
                && lab.wait_holders(net::WAN_VIP, &["fw1"], Duration::from_secs(5)),
            "round {round}: fw1 did not become MASTER"
        );
    }
    let garps = arps_counted(&lab, "lan") + arps_counted(&lab, "wan");
    eprintln!(
        "enable x{rounds}: {on_backup} of {samples} samples found a VIP on the backup; \
         {garps} ARP announcements of a VIP from the backup"
    );
    // The backup's role engine never saw itself MASTER.
    let history = role_status(&lab, "fw2")["history"].to_string();
    assert_eq!(on_backup, 0, "the backup held a VIP during enable");
    assert_eq!(garps, 0, "the backup announced a VIP during enable");
    assert!(
        !history.contains("\"MASTER\""),
        "fw2 became MASTER during enable: {history}"
    );
}
