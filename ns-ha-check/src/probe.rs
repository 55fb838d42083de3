//! The monitor's probes: ICMP echo on a link, a service's process and port.
//!
//! They run many times a second for as long as the node runs, so none forks
//! a program: ICMP goes through one raw socket per link (socket2, bound to
//! the interface, so the kernel resolves each target by ARP on that link and
//! a reply that arrives on another link does not count), the process check
//! reads `/proc`, the port checks are plain sockets. ARP itself is not sent
//! by hand: building a link-layer address for a packet socket needs unsafe
//! code, which the workspace forbids; an echo reply proves more anyway (the
//! target resolved us and answered on this link).
//! Each probe is behind a trait so the monitor's loop is tested with fakes.

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// Sends one round of ICMP echo requests on a link.
pub trait Pinger: Send {
    /// Ping every target once; the fastest answer's latency, None if no
    /// target answered within `timeout`.
    fn round(&mut self, targets: &[Ipv4Addr], timeout: Duration) -> Result<Option<Duration>>;
}

/// A raw ICMP socket bound to one interface.
pub struct IcmpPinger {
    socket: Socket,
    ident: u16,
    seq: u16,
}

impl IcmpPinger {
    pub fn new(interface: &str, ident: u16) -> Result<IcmpPinger> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
            .context("opening a raw ICMP socket (needs root)")?;
        socket
            .bind_device(Some(interface.as_bytes()))
            .with_context(|| format!("binding the ICMP socket to {interface}"))?;
        Ok(IcmpPinger {
            socket,
            ident,
            seq: 0,
        })
    }
}

/// An ICMP echo request with its checksum.
pub fn echo_request(ident: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![8u8, 0, 0, 0];
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(b"ns-ha-hc");
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// If `packet` (IPv4 header included) is an echo reply with our ident,
/// its source and sequence number.
pub fn parse_echo_reply(packet: &[u8], ident: u16) -> Option<(Ipv4Addr, u16)> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let hl = usize::from(first & 0x0f) * 4;
    let icmp = packet.get(hl..hl + 8)?;
    if icmp[0] != 0 || u16::from_be_bytes([icmp[4], icmp[5]]) != ident {
        return None;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    Some((src, u16::from_be_bytes([icmp[6], icmp[7]])))
}

impl Pinger for IcmpPinger {
    fn round(&mut self, targets: &[Ipv4Addr], timeout: Duration) -> Result<Option<Duration>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let start = Instant::now();
        let req = echo_request(self.ident, seq);
        let mut sent = 0;
        for t in targets {
            // A send error (no route, neighbour failed) is a failed probe.
            if self
                .socket
                .send_to(&req, &SockAddr::from(SocketAddrV4::new(*t, 0)))
                .is_ok()
            {
                sent += 1;
            }
        }
        if sent == 0 {
            return Ok(None);
        }
        let mut buf = [0u8; 1500];
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Ok(None);
            }
            self.socket.set_read_timeout(Some(left))?;
            match (&self.socket).read(&mut buf) {
                Ok(n) => {
                    if let Some((src, s)) = parse_echo_reply(&buf[..n], self.ident) {
                        if s == seq && targets.contains(&src) {
                            return Ok(Some(start.elapsed()));
                        }
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(None)
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading ICMP replies"),
            }
        }
    }
}

/// Is a service alive here?
pub trait ServiceProbe: Send {
    /// A process with this `comm` runs in this network namespace.
    fn process_alive(&self, comm: &str) -> bool;
    /// A DNS server answers at `addr` (any well-formed response).
    fn dns_answers(&self, addr: SocketAddrV4, timeout: Duration) -> Option<Duration>;
    /// `addr` accepts a TCP connection.
    fn tcp_answers(&self, addr: SocketAddrV4, timeout: Duration) -> Option<Duration>;
}

/// The real probes: `/proc` and sockets.
pub struct SystemServiceProbe;

impl ServiceProbe for SystemServiceProbe {
    fn process_alive(&self, comm: &str) -> bool {
        let own_ns = std::fs::read_link("/proc/self/ns/net").ok();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return false;
        };
        dir.flatten().any(|e| {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                return false;
            };
            let base = format!("/proc/{pid}");
            std::fs::read_to_string(format!("{base}/comm")).is_ok_and(|c| c.trim_end() == comm)
                && std::fs::read_link(format!("{base}/ns/net")).ok() == own_ns
                && !std::fs::read_to_string(format!("{base}/stat")).is_ok_and(|s| {
                    s.rsplit_once(')')
                        .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                })
        })
    }

    fn dns_answers(&self, addr: SocketAddrV4, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        let sock = UdpSocket::bind("0.0.0.0:0").ok()?;
        sock.connect(addr).ok()?;
        sock.set_read_timeout(Some(timeout)).ok()?;
        let id = (std::process::id() as u16) ^ 0x5a5a;
        sock.send(&dns_query(id)).ok()?;
        let mut buf = [0u8; 512];
        loop {
            let n = sock.recv(&mut buf).ok()?;
            if n >= 12 && buf[..2] == id.to_be_bytes() && buf[2] & 0x80 != 0 {
                return Some(start.elapsed());
            }
            if start.elapsed() >= timeout {
                return None;
            }
        }
    }

    fn tcp_answers(&self, addr: SocketAddrV4, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        TcpStream::connect_timeout(&addr.into(), timeout)
            .ok()
            .map(|_| start.elapsed())
    }
}

/// A DNS query for the root's SOA: every server answers it somehow (an
/// answer, REFUSED or SERVFAIL all prove it serves).
pub fn dns_query(id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    // flags: recursion desired; one question.
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    // root name, type SOA (6), class IN (1)
    q.extend_from_slice(&[0, 0, 6, 0, 1]);
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksums_to_zero() {
        let p = echo_request(0x1234, 7);
        assert_eq!(p[0], 8);
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to 0");
        assert_eq!(&p[4..8], &[0x12, 0x34, 0, 7]);
    }

    #[test]
    fn only_our_echo_replies_count() {
        let mut reply = vec![
            0x45u8, 0, 0, 36, 0, 0, 0, 0, 64, 1, 0, 0, 10, 99, 1, 100, 10, 99, 1, 1,
        ];
        reply.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0, 7]);
        assert_eq!(
            parse_echo_reply(&reply, 0x1234),
            Some((Ipv4Addr::new(10, 99, 1, 100), 7))
        );
        assert_eq!(parse_echo_reply(&reply, 0x1235), None, "another pinger's");
        reply[20] = 8;
        assert_eq!(parse_echo_reply(&reply, 0x1234), None, "a request");
        assert_eq!(parse_echo_reply(&reply[..22], 0x1234), None, "short");
    }

    #[test]
    fn the_dns_query_is_one_question() {
        let q = dns_query(0xabcd);
        assert_eq!(q.len(), 17);
        assert_eq!(&q[..2], &[0xab, 0xcd]);
        assert_eq!(&q[4..6], &[0, 1]);
    }
}
