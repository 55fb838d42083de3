//! Where the backup's sshd listens, for `ns-ha-init check`.
//!
//! The primary's key is accepted only from the primary's HA address (`from=`
//! on its authorized_keys line), but an sshd that listens on every address
//! still offers itself on the LANs and WANs. `check` on a backup warns when
//! anything listens on the sshd port other than the HA address (or
//! loopback), with the setting that limits it: `ListenAddress` for OpenSSH,
//! `-p ADDR:PORT` for dropbear. The sockets are read from `/proc/net/tcp`
//! and `/proc/net/tcp6` of the node's network namespace, behind a trait so
//! the judgement is unit-tested without sockets.

use anyhow::{Context, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The TCP sockets in LISTEN state in this node's network namespace.
pub trait TcpListeners {
    /// The local addresses listening on `port`.
    fn listening_on(&self, port: u16) -> Result<Vec<IpAddr>>;
}

/// The real source: `/proc/net/tcp` and `/proc/net/tcp6` (of the namespace
/// the process runs in, which is the node's).
pub struct ProcNetTcp;

impl TcpListeners for ProcNetTcp {
    fn listening_on(&self, port: u16) -> Result<Vec<IpAddr>> {
        let mut out = Vec::new();
        for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
            match std::fs::read_to_string(file) {
                Ok(text) => out.extend(parse_listeners(&text, port)),
                // No IPv6 in this kernel: nothing listens there.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.ends_with('6') => {}
                Err(e) => return Err(e).with_context(|| format!("reading {file}")),
            }
        }
        Ok(out)
    }
}

/// A fixed list, for tests.
pub struct FixedListeners(pub Vec<IpAddr>);

impl TcpListeners for FixedListeners {
    fn listening_on(&self, _port: u16) -> Result<Vec<IpAddr>> {
        Ok(self.0.clone())
    }
}

/// The local addresses of the LISTEN (`0A`) sockets on `port` in the text of
/// `/proc/net/tcp` or `/proc/net/tcp6` (addresses in hex, 32-bit words in
/// host byte order); lines that do not parse are skipped.
pub fn parse_listeners(text: &str, port: u16) -> Vec<IpAddr> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, state) = (f.get(1)?, f.get(3)?);
            if *state != "0A" {
                return None;
            }
            let (addr, p) = local.split_once(':')?;
            if u16::from_str_radix(p, 16).ok()? != port {
                return None;
            }
            parse_hex_addr(addr)
        })
        .collect()
}

fn parse_hex_addr(hex: &str) -> Option<IpAddr> {
    let words = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<Vec<u32>>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    match (hex.len(), bytes.len()) {
        (8, 4) => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        (32, 16) => {
            let b: [u8; 16] = bytes.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// How to limit sshd to the HA address, for messages and docs.
pub fn limit_hint(ha: Ipv4Addr, port: u16) -> String {
    format!(
        "to keep sshd off the other links set ListenAddress {ha} in /etc/ssh/sshd_config (OpenSSH) \
         or run dropbear with -p {ha}:{port}, then restart it"
    )
}

/// `Ok(detail)` when sshd listens on the HA address `ha` (and loopback)
/// only; `Err(warning)` naming the other addresses, or nothing listening,
/// with the fix.
pub fn judge(listeners: &[IpAddr], ha: Ipv4Addr, port: u16) -> std::result::Result<String, String> {
    if listeners.is_empty() {
        return Err(format!(
            "nothing listens on TCP port {port}: start sshd (the primary reaches this backup at {ha}:{port})"
        ));
    }
    let mut elsewhere: Vec<String> = listeners
        .iter()
        .filter(|a| **a != IpAddr::V4(ha) && !a.is_loopback())
        .map(|a| match a {
            IpAddr::V4(v4) if v4.is_unspecified() => format!("0.0.0.0:{port} (every address)"),
            IpAddr::V6(v6) if v6.is_unspecified() => format!("[::]:{port} (every address)"),
            IpAddr::V4(v4) => format!("{v4}:{port}"),
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        })
        .collect();
    elsewhere.sort();
    elsewhere.dedup();
    if elsewhere.is_empty() {
        return Ok(format!("sshd listens on the HA address {ha}:{port} only"));
    }
    Err(format!(
        "sshd listens on {}, not only on the HA address {ha}: the primary's key is refused from elsewhere, but {}",
        elsewhere.join(", "),
        limit_hint(ha, port)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/net/tcp of the lab's fw2 (sshd on 0.0.0.0:22, a connection
    /// from 10.99.0.1, dnsmasq on 53) and a tcp6 line for [::]:22.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0200630A:0016 0100630A:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0200630A:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
   3: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1 0 100 0 0 10 0
";

    #[test]
    fn proc_net_tcp_lines_give_the_listening_addresses() {
        assert_eq!(
            parse_listeners(TCP, 22),
            vec![
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            ]
        );
        assert_eq!(
            parse_listeners(TCP, 53),
            vec![IpAddr::V4(Ipv4Addr::new(10, 99, 0, 2))]
        );
        assert_eq!(
            parse_listeners(TCP6, 22),
            vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)]
        );
        assert!(parse_listeners(TCP, 2222).is_empty());
        assert!(parse_listeners("header\ngarbage line\n", 22).is_empty());
    }

    #[test]
    fn sshd_on_every_address_or_another_one_is_a_warning_with_the_fix() {
        let ha = Ipv4Addr::new(10, 99, 0, 2);
        let w = judge(&parse_listeners(TCP, 22), ha, 22).unwrap_err();
        assert!(
            w.starts_with("sshd listens on 0.0.0.0:22 (every address), not only"),
            "{w}"
        );
        assert!(
            w.contains("ListenAddress 10.99.0.2") && w.contains("dropbear with -p 10.99.0.2:22"),
            "{w}"
        );
        let w = judge(&["10.99.1.2".parse().unwrap(), IpAddr::V4(ha)], ha, 22).unwrap_err();
        assert!(w.starts_with("sshd listens on 10.99.1.2:22,"), "{w}");
        let w = judge(&parse_listeners(TCP6, 22), ha, 22).unwrap_err();
        assert!(
            w.starts_with("sshd listens on [::]:22 (every address)"),
            "{w}"
        );
        assert!(judge(&[], ha, 22).unwrap_err().contains("start sshd"));
        let ok = judge(&[IpAddr::V4(ha), IpAddr::V4(Ipv4Addr::LOCALHOST)], ha, 22).unwrap();
        assert_eq!(ok, "sshd listens on the HA address 10.99.0.2:22 only");
    }
}
