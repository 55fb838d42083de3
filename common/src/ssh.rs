//! The SSH client side of the sync channel.
//!
//! The primary talks to the backup only through the backup's own sshd, with a
//! key that the backup restricts to one forced command (`ns-ha-sync receive`).
//! This module opens that channel and enforces the host-key pin before any
//! authentication happens, so the primary never talks to an impostor.
//!
//! The channel never waits blindly: every read and write waits in slices of
//! [`IO_SLICE`], sends an SSH keepalive when one is due ([`KEEPALIVE_SECS`]),
//! and between slices checks whether the peer closed the channel (its
//! receiver died): a dead receiver is noticed within a slice and reported as
//! "peer unreachable" (exit 6), and a peer that stops answering is given up
//! after the endpoint's timeout without progress, also exit 6.

use anyhow::{Context, Result};
use base64::Engine;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::PinnedHostKey;
use crate::exit::{fail, io_failure, Code};

/// SSH keepalive interval of the sender: a keepalive (with a reply wanted)
/// goes out after this many seconds without traffic, so NAT and firewall
/// state along the HA link does not expire and the backup's sshd sees a live
/// client while the backup works (a long apply).
pub const KEEPALIVE_SECS: u32 = 5;
/// How long one blocking read or write on the channel waits before the
/// channel checks whether the peer closed it (and sends a due keepalive).
pub const IO_SLICE: Duration = Duration::from_millis(200);

/// How the peer's host key is checked.
#[derive(Debug, Clone)]
pub enum HostKeyCheck {
    /// Accept only this key (the normal case after pairing).
    Pinned(PinnedHostKey),
    /// Accept a key whose fingerprint the administrator read on the peer.
    Fingerprint(String),
    /// Accept any key; the caller pins what it saw (trust on first use, confirmed by a flag).
    TrustOnFirstUse,
}

/// `SHA256:<base64 without padding>` of a raw key blob, as `ssh-keygen -lf` prints it.
pub fn fingerprint(blob: &[u8]) -> String {
    let digest = Sha256::digest(blob);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// Parse an OpenSSH public key line (`ssh-ed25519 AAAA... comment`).
pub fn parse_public_key(line: &str) -> Result<PinnedHostKey> {
    let mut parts = line.split_whitespace();
    let (Some(kt), Some(b64)) = (parts.next(), parts.next()) else {
        return Err(fail(
            Code::InvalidInput,
            "public key is not in OpenSSH format: give the whole line 'ssh-ed25519 AAAA... comment'",
        ));
    };
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| {
            fail(
                Code::InvalidInput,
                "public key is not valid base64: copy the whole line",
            )
        })?;
    // The blob starts with the key type as an SSH string; it must match.
    let inner_type = blob
        .get(4..)
        .and_then(|rest| {
            let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
            rest.get(..len)
        })
        .map(|t| String::from_utf8_lossy(t).into_owned());
    if inner_type.as_deref() != Some(kt) {
        return Err(fail(
            Code::InvalidInput,
            format!("public key blob does not match its type '{kt}': copy the whole line"),
        ));
    }
    if kt != "ssh-ed25519" {
        return Err(fail(
            Code::InvalidInput,
            format!("key type '{kt}' is not accepted: ns-ha pairs with ssh-ed25519 keys only"),
        ));
    }
    Ok(PinnedHostKey {
        key_type: kt.to_string(),
        key_base64: b64.to_string(),
        fingerprint: fingerprint(&blob),
    })
}

fn host_key_type_name(t: ssh2::HostKeyType) -> &'static str {
    match t {
        ssh2::HostKeyType::Ed25519 => "ssh-ed25519",
        ssh2::HostKeyType::Rsa => "ssh-rsa",
        ssh2::HostKeyType::Dss => "ssh-dss",
        ssh2::HostKeyType::Ecdsa256 => "ecdsa-sha2-nistp256",
        ssh2::HostKeyType::Ecdsa384 => "ecdsa-sha2-nistp384",
        ssh2::HostKeyType::Ecdsa521 => "ecdsa-sha2-nistp521",
        _ => "unknown",
    }
}

/// Where and how to reach the peer.
#[derive(Debug, Clone)]
pub struct PeerEndpoint {
    pub address: SocketAddr,
    pub user: String,
    pub key_path: std::path::PathBuf,
    pub timeout: Duration,
}

/// How long a refused connection is tried again: the peer's SSH server
/// re-binds its port when it reloads (sshd re-executes itself on SIGHUP,
/// dropbear restarts), which the backup's sync hook may do right after a
/// push, so a push that follows at once would meet a closed port for a
/// moment. A peer whose server is really down still fails within this.
pub const REFUSED_GRACE: Duration = Duration::from_secs(1);

/// TCP connect to `address`, trying again every 50 ms while it is refused,
/// for up to `grace`.
pub fn connect_tcp(
    address: &std::net::SocketAddr,
    timeout: Duration,
    grace: Duration,
) -> std::io::Result<TcpStream> {
    let until = std::time::Instant::now() + grace;
    loop {
        match TcpStream::connect_timeout(address, timeout) {
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && std::time::Instant::now() < until =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// An authenticated SSH session with the peer; reuse it for every request.
pub struct PeerSession {
    session: ssh2::Session,
    /// Longest wait without progress on a channel.
    timeout: Duration,
    /// The host key the peer presented (pinned, or to be pinned by the caller).
    pub host_key: PinnedHostKey,
}

impl PeerSession {
    /// Connect, check the host key, authenticate with the node's key.
    pub fn connect(ep: &PeerEndpoint, check: &HostKeyCheck) -> Result<PeerSession> {
        let tcp = connect_tcp(&ep.address, ep.timeout, REFUSED_GRACE).map_err(|e| {
            fail(
                Code::Peer,
                format!(
                    "peer {} does not answer on SSH: {e}: check the HA link, the peer's sshd and its address",
                    ep.address
                ),
            )
        })?;
        // Frames are coalesced before they are written; Nagle's algorithm
        // would hold the last small one (a `commit` after a file) until the
        // peer's delayed ACK, about 40 ms per exchange (measured in the
        // sync trace: "file data staged (and waiting)" 50 ms for 1 KB).
        if let Err(e) = tcp.set_nodelay(true) {
            log::debug!("TCP_NODELAY not set: {e}");
        }
        let mut session = ssh2::Session::new().context("creating SSH session")?;
        session.set_tcp_stream(tcp);
        session.set_timeout(ep.timeout.as_millis().min(u32::MAX as u128) as u32);
        // Only ed25519: the pin is one key, so the negotiation must be deterministic.
        session
            .method_pref(ssh2::MethodType::HostKey, "ssh-ed25519")
            .context("setting host key preference")?;
        session.handshake().map_err(|e| {
            fail(
                Code::Peer,
                format!("SSH handshake with {} failed: {e}", ep.address),
            )
        })?;
        log::debug!(
            "SSH to {}: kex {}, cipher {}, mac {}",
            ep.address,
            session.methods(ssh2::MethodType::Kex).unwrap_or("?"),
            session.methods(ssh2::MethodType::CryptCs).unwrap_or("?"),
            session.methods(ssh2::MethodType::MacCs).unwrap_or("?"),
        );
        let (blob, kt) = session
            .host_key()
            .ok_or_else(|| fail(Code::Peer, "peer sent no host key"))?;
        let seen = PinnedHostKey {
            key_type: host_key_type_name(kt).to_string(),
            key_base64: base64::engine::general_purpose::STANDARD.encode(blob),
            fingerprint: fingerprint(blob),
        };
        match check {
            HostKeyCheck::Pinned(pin) => {
                if pin.key_type != seen.key_type || pin.key_base64 != seen.key_base64 {
                    return Err(fail(
                        Code::Security,
                        format!(
                            "host key of {} changed: pinned {} but peer presents {}: if the backup was reinstalled, re-pair with ns-ha-init pair --host-key-fingerprint",
                            ep.address, pin.fingerprint, seen.fingerprint
                        ),
                    ));
                }
            }
            HostKeyCheck::Fingerprint(fp) => {
                if *fp != seen.fingerprint {
                    return Err(fail(
                        Code::Security,
                        format!(
                            "host key of {} is {} but the fingerprint given is {fp}: check you are pairing with the right machine",
                            ep.address, seen.fingerprint
                        ),
                    ));
                }
            }
            HostKeyCheck::TrustOnFirstUse => {}
        }
        session
            .userauth_pubkey_file(&ep.user, None, &ep.key_path, None)
            .map_err(|e| {
                fail(
                    Code::Peer,
                    format!(
                        "peer {} refused this node's key ({e}): run ns-ha-init init-backup on the peer with this node's public key",
                        ep.address
                    ),
                )
            })?;
        if !session.authenticated() {
            return Err(fail(Code::Peer, "SSH authentication did not complete"));
        }
        session.set_keepalive(true, KEEPALIVE_SECS);
        Ok(PeerSession {
            session,
            timeout: ep.timeout,
            host_key: seen,
        })
    }

    /// Open a channel to the peer's forced command. The command we request is
    /// informative only: the peer's authorized_keys decides what runs.
    pub fn open_receiver(&self) -> Result<PeerChannel> {
        // A session kept open between pushes (`watch`) owes a keepalive.
        let _ = self.session.keepalive_send();
        self.session
            .set_timeout(self.timeout.as_millis().min(u32::MAX as u128) as u32);
        let mut channel = self.session.channel_session().map_err(|e| {
            fail(
                Code::Peer,
                format!("opening an SSH channel to the peer: {e}"),
            )
        })?;
        channel
            .exec("ns-ha-sync receive")
            .map_err(|e| fail(Code::Peer, format!("starting the peer's receiver: {e}")))?;
        Ok(PeerChannel {
            channel,
            session: self.session.clone(),
            timeout: self.timeout,
        })
    }
}

/// A bidirectional byte stream to the peer's receiver.
pub struct PeerChannel {
    channel: ssh2::Channel,
    session: ssh2::Session,
    timeout: Duration,
}

impl PeerChannel {
    /// Close our side and collect the receiver's exit status and stderr.
    pub fn finish(mut self) -> Result<(i32, String)> {
        self.session
            .set_timeout(self.timeout.as_millis().min(u32::MAX as u128) as u32);
        self.channel.send_eof().ok();
        let mut err = String::new();
        self.channel.stderr().read_to_string(&mut err).ok();
        self.channel.wait_close().ok();
        Ok((self.channel.exit_status().unwrap_or(-1), err))
    }

    /// The peer ended the channel: its receiver exited or was killed.
    fn closed_by_peer(&self) -> Option<String> {
        if let Ok(sig) = self.channel.exit_signal() {
            if let Some(name) = sig.exit_signal {
                return Some(format!("killed by SIG{name}"));
            }
        }
        match self.channel.exit_status() {
            Ok(code) if code != 0 => return Some(format!("exit status {code}")),
            _ => {}
        }
        self.channel.eof().then(|| "end of stream".to_string())
    }

    /// Run one blocking channel operation in slices of [`IO_SLICE`]: between
    /// slices, send a due keepalive and see whether the peer closed the
    /// channel; give up after the session's timeout without progress.
    fn wait<T>(
        &mut self,
        what: &str,
        mut op: impl FnMut(&mut ssh2::Channel) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        self.session
            .set_timeout(IO_SLICE.as_millis().min(u32::MAX as u128) as u32);
        let started = Instant::now();
        loop {
            let _ = self.session.keepalive_send();
            match op(&mut self.channel) {
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    if let Some(how) = self.closed_by_peer() {
                        return Err(io_failure(
                            std::io::ErrorKind::ConnectionAborted,
                            Code::Peer,
                            format!("the peer's receiver closed the channel while {what} ({how}): see the peer's log"),
                        ));
                    }
                    if started.elapsed() >= self.timeout {
                        return Err(io_failure(
                            std::io::ErrorKind::TimedOut,
                            Code::Peer,
                            format!(
                                "the peer did not answer for {} s while {what}: check the HA link and the peer",
                                self.timeout.as_secs()
                            ),
                        ));
                    }
                }
                Err(e) => {
                    return Err(io_failure(
                        e.kind(),
                        Code::Peer,
                        format!("SSH channel to the peer failed while {what}: {e}"),
                    ))
                }
                Ok(v) => return Ok(v),
            }
        }
    }
}

impl Read for PeerChannel {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.wait("waiting for it", |ch| ch.read(buf))
    }
}

impl Write for PeerChannel {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.wait("sending to it", |ch| ch.write(buf))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.wait("sending to it", |ch| ch.flush())
    }
}

/// Read a public key file (`*.pub`) and parse it.
pub fn read_public_key(path: &Path) -> Result<PinnedHostKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading public key {}", path.display()))?;
    parse_public_key(text.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real ed25519 key line generated by ssh-keygen, with its fingerprint from `ssh-keygen -lf`.
    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEt1Ig8czKwgR7Z9el8tb0tUfSP1AJewPrV9zoXG26FS test";
    const FP: &str = "SHA256:9VvdMr620nRSWd96IUnHayCrbTBhb4L8EeLwnVZl790";

    #[test]
    fn parses_openssh_line_and_fingerprints() {
        let k = parse_public_key(KEY).unwrap();
        assert_eq!(k.key_type, "ssh-ed25519");
        assert_eq!(k.fingerprint, FP);
    }

    #[test]
    fn rejects_mangled_keys() {
        assert!(parse_public_key("ssh-ed25519").is_err());
        assert!(parse_public_key("ssh-ed25519 !!!notbase64").is_err());
        // Type on the line differs from the type inside the blob.
        let swapped = KEY.replacen("ssh-ed25519", "ssh-rsa", 1);
        assert!(parse_public_key(&swapped).is_err());
    }
}

#[cfg(test)]
mod connect_tests {
    use super::*;

    #[test]
    fn a_refused_port_is_tried_again_until_it_listens_or_the_grace_ends() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        // Nothing listens: refused once the grace is over.
        let e = connect_tcp(&addr, Duration::from_secs(1), Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        // The server comes back within the grace: connected.
        let server = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let l = std::net::TcpListener::bind(addr).unwrap();
            l.accept().map(|_| ())
        });
        connect_tcp(&addr, Duration::from_secs(1), Duration::from_secs(3)).unwrap();
        server.join().unwrap().unwrap();
    }
}
