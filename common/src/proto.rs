//! The wire protocol between the primary and the backup's forced command.
//!
//! One SSH channel carries length-prefixed frames: a JSON message (a request
//! with an `op`, or a [`Reply`]) optionally followed by a binary blob whose
//! length the message announced. Frames are size-capped so a hostile or
//! broken peer cannot make the receiver allocate without bound. Control
//! operations used by pairing live here; the sync operations are defined by
//! `ns-ha-sync` on the same framing.

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};

use crate::config::ClusterConfig;
use crate::exit::{code_of, fail, Code};
use crate::net::Interface;

/// Bumped when a message changes incompatibly. 2: frames of at most
/// [`MAX_MESSAGE`]; large requests and manifests travel in chunks. 3: the
/// sync's `signature` and `delta` (large files changed in part). 4: packed
/// (deflated) frames ([`write_packed`]), the sync's `files` batches of small
/// files, and `file` headers without the hash `begin` announced.
pub const PROTOCOL_VERSION: u32 = 4;
/// The ns-ha release; both nodes must run the same one.
pub const NS_HA_VERSION: &str = env!("CARGO_PKG_VERSION");
/// How `hello` starts its refusal of another release, so the primary's
/// `doctor` can tell it from other refusals and name its fix ([`UPGRADE_FIX`]).
pub const VERSION_MISMATCH: &str = "version mismatch";
/// The fix for two nodes on different releases.
pub const UPGRADE_FIX: &str = "install the same ns-ha release on both nodes: upgrade this node's package first, then the backup from the primary with `ns-ha-init upgrade-remote PACKAGE`";
/// Largest JSON message accepted, checked before anything is allocated.
/// Large requests and manifests are sent in chunks of about
/// [`CHUNK_BYTES`], so this only bounds what a broken or hostile peer can
/// make the reader allocate (the decoded message is a few times larger).
pub const MAX_MESSAGE: usize = 4 << 20;
/// Target size of one chunk of a large request or manifest.
pub const CHUNK_BYTES: usize = 512 << 10;

/// Set in a frame's length word when its body is deflated ([`write_packed`]);
/// the rest of the word is the packed length. Never set by protocol 3 and
/// older (their frames are at most [`MAX_MESSAGE`]), which refuse it as an
/// oversized frame; `hello` (never packed) tells them the fix first.
const PACKED: u32 = 1 << 31;
/// Bodies shorter than this are sent as they are: deflate's header and the
/// CPU cost are not worth it.
const PACK_MIN: usize = 512;

/// Deflate `raw` (level 1: text shrinks 3-10x at a few hundred MB/s), or
/// `None` when that saves less than a tenth (hashes, compressed or random
/// data): those go as they are, so no CPU is spent unpacking them.
pub fn pack(raw: &[u8]) -> Option<Vec<u8>> {
    use flate2::write::DeflateEncoder;
    if raw.len() < PACK_MIN {
        return None;
    }
    let mut enc = DeflateEncoder::new(
        Vec::with_capacity(raw.len() / 4),
        flate2::Compression::fast(),
    );
    enc.write_all(raw).ok()?;
    let packed = enc.finish().ok()?;
    (packed.len() < raw.len() - raw.len() / 10).then_some(packed)
}

/// Inflate what [`pack`] made, refusing more than `limit` bytes (checked
/// while inflating: a small hostile frame cannot make the reader allocate
/// without bound).
pub fn unpack(packed: &[u8], limit: usize) -> Result<Vec<u8>> {
    let mut raw = Vec::with_capacity(packed.len().saturating_mul(4).min(limit));
    flate2::read::DeflateDecoder::new(packed)
        .take(limit as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|e| fail(Code::Peer, format!("malformed packed data from peer: {e}")))?;
    if raw.len() > limit {
        return Err(fail(
            Code::Security,
            format!("packed data from the peer unpacks to more than {limit} bytes: refused"),
        ));
    }
    Ok(raw)
}

/// Write one JSON message frame.
pub fn write_msg<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<()> {
    write_frame(w, msg, false)
}

/// Write one JSON message frame, deflated when that shrinks it ([`pack`]):
/// for large frames of text (manifest parts, `begin` chunks) once both
/// peers said protocol 4 at `hello`. Readers take both kinds.
pub fn write_packed<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<()> {
    write_frame(w, msg, true)
}

fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T, packed: bool) -> Result<()> {
    let body = serde_json::to_vec(msg).context("encoding message")?;
    if body.len() > MAX_MESSAGE {
        return Err(fail(
            Code::Failure,
            format!(
                "message of {} bytes is over the {MAX_MESSAGE}-byte frame limit: not sent",
                body.len()
            ),
        ));
    }
    let (word, body) = match packed.then(|| pack(&body)).flatten() {
        Some(p) => (p.len() as u32 | PACKED, p),
        None => (body.len() as u32, body),
    };
    w.write_all(&word.to_be_bytes())
        .and_then(|_| w.write_all(&body))
        .and_then(|_| w.flush())
        .context("sending message to peer")
}

/// Read one JSON message frame (raw JSON, so a dispatcher can look at `op` first).
pub fn read_value<R: Read>(r: &mut R) -> Result<Option<serde_json::Value>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e).context("reading message length"),
    }
    let word = u32::from_be_bytes(len);
    let len = (word & !PACKED) as usize;
    if len > MAX_MESSAGE {
        return Err(fail(
            Code::Security,
            format!(
                "message of {len} bytes from the peer refused: the limit is {MAX_MESSAGE} bytes (protocol {PROTOCOL_VERSION} sends large requests in chunks): install the same ns-ha release on both nodes"
            ),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).context("reading message body")?;
    if word & PACKED != 0 {
        body = unpack(&body, MAX_MESSAGE)?;
    }
    let v = serde_json::from_slice(&body)
        .map_err(|e| fail(Code::Peer, format!("malformed message from peer: {e}")))?;
    Ok(Some(v))
}

/// Read one message and decode it as `T`; end of stream is an error here.
pub fn read_msg<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T> {
    let v = read_value(r)?.ok_or_else(|| fail(Code::Peer, "peer closed the channel"))?;
    serde_json::from_value(v).map_err(|e| fail(Code::Peer, format!("unexpected message: {e}")))
}

/// Copy exactly `len` bytes from `r` to `w` (a blob announced by a message).
pub fn copy_exact<R: Read, W: Write>(r: &mut R, w: &mut W, len: u64) -> Result<()> {
    let copied = std::io::copy(&mut r.take(len), w).context("transferring data")?;
    if copied != len {
        return Err(fail(
            Code::Peer,
            format!("stream ended after {copied} of {len} bytes"),
        ));
    }
    Ok(())
}

/// The answer to every request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    /// Exit code from the shared table when `ok` is false.
    #[serde(default)]
    pub code: u8,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Reply {
    pub fn ok(data: impl Serialize) -> Reply {
        Reply {
            ok: true,
            code: 0,
            error: None,
            data: serde_json::to_value(data).unwrap_or(serde_json::Value::Null),
        }
    }

    pub fn from_error(err: &anyhow::Error) -> Reply {
        Reply {
            ok: false,
            code: code_of(err).as_u8(),
            error: Some(format!("{err:#}")),
            data: serde_json::Value::Null,
        }
    }

    /// Turn a failed reply back into an error with the peer's code.
    pub fn into_result<T: DeserializeOwned>(self) -> Result<T> {
        if !self.ok {
            let code = Code::TABLE
                .iter()
                .map(|(c, _)| *c)
                .find(|c| c.as_u8() == self.code)
                .unwrap_or(Code::Peer);
            return Err(fail(
                code,
                format!("peer: {}", self.error.unwrap_or_else(|| "failed".into())),
            ));
        }
        serde_json::from_value(self.data)
            .map_err(|e| fail(Code::Peer, format!("unexpected reply from peer: {e}")))
    }
}

/// Requests used by pairing and cluster management.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ControlRequest {
    /// First message of every channel: versions and cluster identity.
    Hello {
        protocol: u32,
        version: String,
        cluster_id: String,
    },
    /// The peer's view of some of its interfaces (for pre-flight checks and addresses).
    Inspect { interfaces: Vec<String> },
    /// Install this cluster config on the peer, render and (re)load its daemons.
    InstallCluster { config: Box<ClusterConfig> },
}

/// The `op` of [`UpgradeMessage`].
pub const UPGRADE_OP: &str = "upgrade";

/// `upgrade` (`ns-ha-init upgrade-remote`): a package for the backup to
/// install, followed by its bytes as a blob. The receiver handles it itself
/// (it reads the blob; [`crate::upgrade::receive`]), not through the control
/// ops, and without a `hello` first: the two nodes' versions differ exactly
/// when it is needed, and `hello` refuses that. It is the last request of its
/// channel; the reply's data is an [`crate::upgrade::UpgradeReply`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum UpgradeMessage {
    Upgrade(crate::upgrade::UpgradeRequest),
}

/// What the peer answers to `hello`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HelloReply {
    pub protocol: u32,
    pub version: String,
    pub role: String,
    /// The cluster the peer already belongs to, if any.
    pub cluster_id: Option<String>,
}

/// What the peer answers to `inspect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InspectReply {
    pub interfaces: Vec<Option<Interface>>,
}

/// Send a request and wait for its reply.
pub fn call<S: Read + Write, Req: Serialize, T: DeserializeOwned>(
    s: &mut S,
    req: &Req,
) -> Result<T> {
    write_msg(s, req)?;
    let reply: Reply = read_msg(s)?;
    reply.into_result()
}

/// [`call`] with the request packed ([`write_packed`]).
pub fn call_packed<S: Read + Write, Req: Serialize, T: DeserializeOwned>(
    s: &mut S,
    req: &Req,
) -> Result<T> {
    write_packed(s, req)?;
    let reply: Reply = read_msg(s)?;
    reply.into_result()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_msg(
            &mut buf,
            &ControlRequest::Inspect {
                interfaces: vec!["lan0".into()],
            },
        )
        .unwrap();
        let mut r = &buf[..];
        let v = read_value(&mut r).unwrap().unwrap();
        assert_eq!(v["op"], "inspect");
        assert!(read_value(&mut r).unwrap().is_none());
    }

    #[test]
    fn oversize_frame_is_refused() {
        let mut buf = ((MAX_MESSAGE + 1) as u32).to_be_bytes().to_vec();
        buf.extend_from_slice(b"{}");
        let e = read_value(&mut &buf[..]).unwrap_err();
        assert_eq!(code_of(&e), Code::Security);
    }

    #[test]
    fn error_replies_keep_their_code() {
        let r = Reply::from_error(&fail(Code::Conflict, "older generation"));
        let e = r.into_result::<serde_json::Value>().unwrap_err();
        assert_eq!(code_of(&e), Code::Conflict);
        assert!(e.to_string().contains("older generation"));
    }

    #[test]
    fn the_upgrade_request_round_trips_and_refuses_unknown_fields() {
        let msg = UpgradeMessage::Upgrade(crate::upgrade::UpgradeRequest {
            cluster_id: "c".into(),
            kind: crate::upgrade::PackageKind::Deb,
            size: 3,
            sha256: "ab".into(),
            force_downgrade: true,
        });
        let v = serde_json::to_value(&msg).unwrap();
        assert_eq!(v["op"], UPGRADE_OP);
        assert_eq!(v["kind"], "deb");
        assert_eq!(
            serde_json::from_value::<UpgradeMessage>(v.clone()).unwrap(),
            msg
        );
        let mut extra = v;
        extra["path"] = "/etc/shadow".into();
        assert!(serde_json::from_value::<UpgradeMessage>(extra).is_err());
    }

    #[test]
    fn packed_frames_round_trip_and_only_when_they_shrink() {
        let big = ControlRequest::Inspect {
            interfaces: (0..200).map(|i| format!("lan{i}")).collect(),
        };
        let (mut plain, mut packed) = (Vec::new(), Vec::new());
        write_msg(&mut plain, &big).unwrap();
        write_packed(&mut packed, &big).unwrap();
        assert!(
            packed.len() * 3 < plain.len(),
            "{} vs {}",
            packed.len(),
            plain.len()
        );
        assert_ne!(packed[0] & 0x80, 0, "the packed flag is set");
        let v = read_value(&mut &packed[..]).unwrap().unwrap();
        assert_eq!(v["interfaces"][199], "lan199");
        // A small frame, or one that does not shrink, goes as it is.
        let small = ControlRequest::Inspect {
            interfaces: vec!["lan0".into()],
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_msg(&mut a, &small).unwrap();
        write_packed(&mut b, &small).unwrap();
        assert_eq!(a, b);
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(pack(&noise).is_none());
    }

    #[test]
    fn a_packed_frame_that_unpacks_beyond_the_limit_is_refused() {
        let zeros = vec![0u8; MAX_MESSAGE + 10];
        let p = pack(&zeros).unwrap();
        let mut buf = (p.len() as u32 | PACKED).to_be_bytes().to_vec();
        buf.extend_from_slice(&p);
        let e = read_value(&mut &buf[..]).unwrap_err();
        assert_eq!(code_of(&e), Code::Security, "{e:#}");
        let e = unpack(b"not deflate at all", 100).unwrap_err();
        assert_eq!(code_of(&e), Code::Peer, "{e:#}");
    }

    #[test]
    fn truncated_blob_is_an_error() {
        let data = [1u8; 10];
        let mut out = Vec::new();
        assert!(copy_exact(&mut &data[..], &mut out, 20).is_err());
    }
}
