//! Hearing other VRRP routers on a link.
//!
//! VRRP routers on one LAN must use different VRIDs: two groups with one VRID
//! share a virtual MAC and read each other's adverts as their own group's.
//! The pair's VRIDs are predictable (50, 51, ... by default), so before a
//! cluster goes live `ns-ha-init check` listens on each link for a few
//! seconds and reports the VRIDs other routers use there. Listening is
//! behind [`AdvertListener`] so the check's logic is tested with canned
//! adverts; [`RawSocketListener`] is the real one (a raw IPv4 socket for
//! protocol 112, bound to the interface, member of 224.0.0.18 there, so it
//! hears multicast adverts as well as unicast ones addressed to the node;
//! `socket2`, so no unsafe code).

use anyhow::{Context, Result};
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{ErrorKind, Read};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::exit::{fail, Code};

/// IP protocol number of VRRP.
pub const IPPROTO_VRRP: i32 = 112;
/// The IPv4 multicast group of VRRP adverts.
pub const VRRP_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);

/// One VRRP advertisement as heard on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Advert {
    /// The sending router's address (IPv4 source).
    pub source: Ipv4Addr,
    /// VRRP version (2 or 3).
    pub version: u8,
    pub vrid: u8,
    pub priority: u8,
}

/// Parse an IPv4 packet carrying a VRRP advertisement (as a raw socket
/// delivers it, IP header included); `None` for anything else.
pub fn parse_advert(packet: &[u8]) -> Option<Advert> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let header = usize::from(first & 0x0f) * 4;
    if header < 20 || *packet.get(9)? != IPPROTO_VRRP as u8 {
        return None;
    }
    let source = Ipv4Addr::new(
        *packet.get(12)?,
        *packet.get(13)?,
        *packet.get(14)?,
        *packet.get(15)?,
    );
    let vrrp = packet.get(header..header + 8)?;
    let (version, kind) = (vrrp[0] >> 4, vrrp[0] & 0x0f);
    // Type 1 is the only VRRP message type (advertisement).
    if !(2..=3).contains(&version) || kind != 1 {
        return None;
    }
    Some(Advert {
        source,
        version,
        vrid: vrrp[1],
        priority: vrrp[2],
    })
}

/// Listens for VRRP adverts on a link.
pub trait AdvertListener: Sync {
    /// Every advert heard on `interface` (whose IPv4 address is `local`)
    /// during `duration`.
    fn listen(&self, interface: &str, local: Ipv4Addr, duration: Duration) -> Result<Vec<Advert>>;
}

/// A listener that hears the same adverts on every link, at once (tests).
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default, Clone)]
pub struct HeardAdverts(pub Vec<Advert>);

#[cfg(any(test, feature = "testing"))]
impl AdvertListener for HeardAdverts {
    fn listen(&self, _: &str, _: Ipv4Addr, _: Duration) -> Result<Vec<Advert>> {
        Ok(self.0.clone())
    }
}

/// The real listener (needs root or CAP_NET_RAW).
#[derive(Debug, Default, Clone, Copy)]
pub struct RawSocketListener;

impl AdvertListener for RawSocketListener {
    fn listen(&self, interface: &str, local: Ipv4Addr, duration: Duration) -> Result<Vec<Advert>> {
        let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_VRRP)))
            .map_err(|e| {
                fail(
                    Code::Dependency,
                    format!("cannot listen for VRRP on {interface}: {e}: run as root"),
                )
            })?;
        sock.bind_device(Some(interface.as_bytes()))
            .with_context(|| format!("binding the VRRP listener to {interface}"))?;
        sock.join_multicast_v4(&VRRP_GROUP, &local)
            .with_context(|| format!("joining {VRRP_GROUP} on {interface}"))?;
        let deadline = Instant::now() + duration;
        let mut heard = Vec::new();
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // A zero read timeout would mean "block forever".
            sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .context("setting the VRRP listener's timeout")?;
            match (&sock).read(&mut buf) {
                Ok(n) => heard.extend(parse_advert(&buf[..n])),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e).context("reading VRRP adverts"),
            }
        }
        Ok(heard)
    }
}

/// Listen on several links at once (one thread each), for `duration`.
pub fn listen_all(
    listener: &dyn AdvertListener,
    links: &[(String, Ipv4Addr)],
    duration: Duration,
) -> Vec<Result<Vec<Advert>>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = links
            .iter()
            .map(|(i, a)| s.spawn(move || listener.listen(i, *a, duration)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(fail(Code::Failure, "VRRP listener panicked")))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 packet with a 20-byte header and a VRRP header.
    fn packet(proto: u8, vrrp_first: u8, vrid: u8, prio: u8) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 255, proto, 0, 0];
        p.extend([10, 99, 1, 100, 10, 99, 1, 1]);
        p.extend([vrrp_first, vrid, prio, 1, 0, 10, 0, 0]);
        p
    }

    #[test]
    fn parses_v2_and_v3_adverts_only() {
        assert_eq!(
            parse_advert(&packet(112, 0x31, 51, 254)),
            Some(Advert {
                source: Ipv4Addr::new(10, 99, 1, 100),
                version: 3,
                vrid: 51,
                priority: 254
            })
        );
        assert_eq!(parse_advert(&packet(112, 0x21, 7, 100)).unwrap().version, 2);
        assert_eq!(parse_advert(&packet(6, 0x31, 51, 254)), None, "not VRRP");
        assert_eq!(parse_advert(&packet(112, 0x32, 51, 254)), None, "type 2");
        assert_eq!(parse_advert(&packet(112, 0x41, 51, 254)), None, "version 4");
        assert_eq!(parse_advert(&packet(112, 0x31, 51, 254)[..26]), None, "cut");
        assert_eq!(parse_advert(&[]), None);
    }

    #[test]
    fn listens_on_all_links_at_once() {
        struct Canned;
        impl AdvertListener for Canned {
            fn listen(&self, i: &str, _: Ipv4Addr, d: Duration) -> Result<Vec<Advert>> {
                std::thread::sleep(d);
                Ok(vec![Advert {
                    source: Ipv4Addr::new(10, 99, 1, 100),
                    version: 3,
                    vrid: if i == "lan0" { 51 } else { 52 },
                    priority: 1,
                }])
            }
        }
        let links = vec![
            ("lan0".to_string(), Ipv4Addr::new(10, 99, 1, 1)),
            ("lan1".to_string(), Ipv4Addr::new(10, 99, 2, 1)),
        ];
        let start = Instant::now();
        let got = listen_all(&Canned, &links, Duration::from_millis(200));
        assert!(
            start.elapsed() < Duration::from_millis(390),
            "not concurrent"
        );
        let vrids: Vec<u8> = got.iter().map(|r| r.as_ref().unwrap()[0].vrid).collect();
        assert_eq!(vrids, [51, 52]);
    }
}
