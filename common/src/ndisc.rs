//! Unsolicited IPv6 neighbour advertisements, sent natively.
//!
//! When a takeover WAN's IPv6 address moves to the new master, the ISP's
//! router still has the old master's MAC in its neighbour cache and would
//! keep sending there until its entry goes stale and is probed (seconds).
//! An unsolicited NA with the Override flag (RFC 4861 7.2.6) makes it
//! switch at once. Debian has no packaged tool that sends one (arping is
//! IPv4 only), and the kernel's `ndisc_notify` covers a link coming up but
//! not an address added after it (what ifupdown does for `inet6 static`),
//! so it is sent here on a raw ICMPv6 socket: the kernel builds the IPv6
//! header and the checksum, the socket is bound to the address and the
//! device, and the hop limit is 255 as neighbour discovery requires. No
//! unsafe code: socket2 does the socket calls.

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::{Ipv6Addr, SocketAddrV6};

use crate::exit::{fail, Code};
use crate::wan::MacAddr;

/// ICMPv6 type of a neighbour advertisement.
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// Router (R) and Override (O) flags: the sender forwards, and its MAC replaces cached ones.
const FLAGS_ROUTER_OVERRIDE: u8 = 0x80 | 0x20;
/// NDP option: target link-layer address.
const OPT_TARGET_LLADDR: u8 = 2;

/// The ICMPv6 body of an unsolicited NA for `target` at `mac` (checksum left to the kernel).
pub fn advertisement(target: Ipv6Addr, mac: MacAddr) -> Vec<u8> {
    let mut p = vec![
        NEIGHBOR_ADVERTISEMENT,
        0,
        0,
        0,
        FLAGS_ROUTER_OVERRIDE,
        0,
        0,
        0,
    ];
    p.extend_from_slice(&target.octets());
    p.extend_from_slice(&[OPT_TARGET_LLADDR, 1]);
    p.extend_from_slice(&mac.0);
    p
}

/// Send `count` unsolicited NAs for `target` (an address of `iface`) to all nodes.
pub fn announce(
    iface: &str,
    ifindex: u32,
    target: Ipv6Addr,
    mac: MacAddr,
    count: u32,
) -> Result<()> {
    let err = |what: &str, e: std::io::Error| {
        fail(
            Code::Failure,
            format!("unsolicited NA for {target} on {iface}: {what}: {e}"),
        )
    };
    let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
        .map_err(|e| err("opening a raw ICMPv6 socket (needs root)", e))?;
    sock.bind_device(Some(iface.as_bytes()))
        .map_err(|e| err("binding to the device", e))?;
    sock.set_multicast_hops_v6(255)
        .map_err(|e| err("setting the hop limit", e))?;
    sock.set_multicast_if_v6(ifindex)
        .map_err(|e| err("choosing the interface", e))?;
    sock.bind(&SockAddr::from(SocketAddrV6::new(target, 0, 0, 0)))
        .map_err(|e| {
            err(
                "binding to the address (is it on the device, not tentative?)",
                e,
            )
        })?;
    let all_nodes = SockAddr::from(SocketAddrV6::new(
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
        0,
        0,
        ifindex,
    ));
    let packet = advertisement(target, mac);
    for _ in 0..count.max(1) {
        sock.send_to(&packet, &all_nodes)
            .map_err(|e| err("sending", e))?;
    }
    Ok(())
}

/// The index of `iface` in this network namespace.
pub fn ifindex(iface: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(iface)
        .with_context(|| format!("interface {iface} has no index here"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertisement_carries_the_flags_target_and_mac() {
        let mac: MacAddr = "02:00:5e:10:00:01".parse().unwrap();
        let target: Ipv6Addr = "fd10:99:3::1".parse().unwrap();
        let p = advertisement(target, mac);
        assert_eq!(p.len(), 8 + 16 + 8);
        assert_eq!(p[0], 136);
        assert_eq!(p[4], 0xa0, "router and override, not solicited");
        assert_eq!(&p[8..24], &target.octets());
        assert_eq!(&p[24..26], &[2, 1]);
        assert_eq!(&p[26..], &mac.0);
    }
}
