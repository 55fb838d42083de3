//! Shared fixtures: a primary and a backup root in a temp dir, links that
//! connect the sender to a receiver in a thread or in a child process, and
//! tree snapshots to compare generations.
#![allow(
    dead_code,
    reason = "each test binary uses a part of the shared helpers"
)]

use anyhow::Result;
use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use ns_ha_common::cmd::RecordingRunner;
use ns_ha_common::config::{
    save_cluster, save_node, ClusterConfig, NodeConfig, Role, SCHEMA_VERSION,
};
use ns_ha_common::net::StaticInterfaces;
use ns_ha_common::proto::{
    call, write_msg, ControlRequest, HelloReply, Reply, NS_HA_VERSION, PROTOCOL_VERSION,
};
use ns_ha_common::sync_config::SyncProfile;
use ns_ha_common::NodeRoot;
use ns_ha_sync::receiver::Receiver;
use ns_ha_sync::sender::{Channel, Link};

pub const CLUSTER_ID: &str = "0123456789abcdef0123456789abcdef";
pub const OTHER_CLUSTER: &str = "fedcba9876543210fedcba9876543210";

pub struct Pair {
    pub dir: tempfile::TempDir,
    pub primary: NodeRoot,
    pub backup: NodeRoot,
    pub cluster: ClusterConfig,
}

pub fn cluster() -> ClusterConfig {
    let mut c = ns_ha_common::fixtures::sample_cluster();
    c.cluster_id = CLUSTER_ID.into();
    c.sync.profile = SyncProfile::None;
    c.sync.include = vec![
        "/etc/config".into(),
        "/etc/extra".into(),
        "/etc/passwd".into(),
    ];
    c.sync.exclude = vec!["/etc/config/local-only".into()];
    c
}

fn node(role: Role, peer: Ipv4Addr) -> NodeConfig {
    NodeConfig {
        schema_version: SCHEMA_VERSION,
        role,
        peer_address: peer,
        peer_host_key: None,
        authorized_key_fingerprint: None,
        service_backend: Default::default(),
        platform: Default::default(),
        ssh_server: Default::default(),
        interface_manager: None,
    }
}

pub fn pair() -> Pair {
    pair_in(tempfile::tempdir().unwrap())
}

/// A pair in `dir` (a test that runs many cases puts them on a tmpfs, where
/// the apply's fsyncs cost nothing).
pub fn pair_in(dir: tempfile::TempDir) -> Pair {
    let primary = NodeRoot::new(dir.path().join("fw1")).unwrap();
    let backup = NodeRoot::new(dir.path().join("fw2")).unwrap();
    let cluster = cluster();
    for (r, role, peer) in [
        (&primary, Role::Primary, [10, 99, 0, 2]),
        (&backup, Role::Backup, [10, 99, 0, 1]),
    ] {
        save_node(r, &node(role, peer.into())).unwrap();
        save_cluster(r, &cluster).unwrap();
    }
    Pair {
        dir,
        primary,
        backup,
        cluster,
    }
}

pub fn write(root: &NodeRoot, path: &str, content: &str) {
    let p = root.path(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

pub fn chmod(root: &NodeRoot, path: &str, mode: u32) {
    std::fs::set_permissions(root.path(path), std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn hello(cluster_id: &str) -> ControlRequest {
    ControlRequest::Hello {
        protocol: PROTOCOL_VERSION,
        version: NS_HA_VERSION.to_string(),
        cluster_id: cluster_id.to_string(),
    }
}

/// A receiver on a thread, joined by a socket pair. `cut_after` closes the
/// sender's side after that many bytes written (a sender killed mid-push).
pub struct ThreadLink {
    pub backup: NodeRoot,
    pub cluster_id: String,
    pub opens: usize,
    /// Calls of `prefetch` (a one-shot push's connect while it scans).
    pub prefetches: usize,
    pub cut_after: Option<u64>,
    pub threads: Vec<std::thread::JoinHandle<()>>,
}

impl ThreadLink {
    pub fn new(backup: &NodeRoot) -> ThreadLink {
        ThreadLink {
            backup: backup.clone(),
            cluster_id: CLUSTER_ID.into(),
            opens: 0,
            prefetches: 0,
            cut_after: None,
            threads: Vec::new(),
        }
    }

    /// Wait for every receiver to finish.
    pub fn join(&mut self) {
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
    }
}

impl Drop for ThreadLink {
    fn drop(&mut self) {
        self.join();
    }
}

/// Closes the stream after `left` bytes have been written.
pub struct Cutter {
    pub inner: UnixStream,
    pub left: Option<u64>,
}

impl Read for Cutter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for Cutter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(left) = self.left.as_mut() {
            if *left == 0 {
                let _ = self.inner.shutdown(std::net::Shutdown::Both);
                return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "cut"));
            }
            let n = (buf.len() as u64).min(*left) as usize;
            *left -= n as u64;
            return self.inner.write(&buf[..n]);
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Link for ThreadLink {
    fn open(&mut self) -> Result<Box<dyn Channel>> {
        self.opens += 1;
        let (a, b) = UnixStream::pair()?;
        let root = self.backup.clone();
        self.threads.push(std::thread::spawn(move || {
            let runner = RecordingRunner::new();
            let ifs = StaticInterfaces::default();
            let mut rx = Receiver::new(root, &runner).with_interfaces(&ifs);
            rx.startup();
            let mut r = BufReader::new(b.try_clone().unwrap());
            let mut w = b;
            let _ = rx.serve(&mut r, &mut w);
        }));
        let mut ch = Cutter {
            inner: a,
            left: None,
        };
        let _: HelloReply = call(&mut ch, &hello(&self.cluster_id))?;
        ch.left = self.cut_after;
        Ok(Box::new(ch))
    }

    fn prefetch(&mut self) {
        self.prefetches += 1;
    }
}

/// The real binary as receiver, through pipes (no SSH): crash points kill a real process.
pub struct ProcLink {
    pub backup: NodeRoot,
}

pub struct ProcChannel {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
}

impl Read for ProcChannel {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stdout.read(buf)
    }
}
impl Write for ProcChannel {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.stdin.as_mut() {
            Some(s) => s.write(buf),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self.stdin.as_mut() {
            Some(s) => s.flush(),
            None => Ok(()),
        }
    }
}
impl Drop for ProcChannel {
    fn drop(&mut self) {
        // Closing stdin ends the receiver; wait so its effects are complete.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ns-ha-sync")
}

impl Link for ProcLink {
    fn open(&mut self) -> Result<Box<dyn Channel>> {
        let mut child = Command::new(bin())
            .args(["--root", &self.backup.base().to_string_lossy(), "receive"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut ch = ProcChannel {
            child,
            stdin: Some(stdin),
            stdout,
        };
        let _: HelloReply = call(&mut ch, &hello(CLUSTER_ID))?;
        Ok(Box::new(ch))
    }
}

/// Kind, content (or link target) and mode of every path under `top`.
pub type Snapshot = BTreeMap<String, (char, Vec<u8>, u32)>;

pub fn snapshot(root: &NodeRoot, tops: &[&str]) -> Snapshot {
    let mut out = BTreeMap::new();
    for top in tops {
        let p = root.path(top);
        if std::fs::symlink_metadata(&p).is_err() {
            continue;
        }
        for e in walkdir::WalkDir::new(&p).follow_links(false) {
            let e = e.unwrap();
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            let rel = e
                .path()
                .strip_prefix(root.base())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let v = if md.is_dir() {
                ('d', Vec::new(), md.mode() & 0o7777)
            } else if md.file_type().is_symlink() {
                (
                    'l',
                    std::fs::read_link(e.path())
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                        .into_bytes(),
                    0,
                )
            } else {
                ('f', std::fs::read(e.path()).unwrap(), md.mode() & 0o7777)
            };
            out.insert(rel, v);
        }
    }
    out
}

pub const TOPS: &[&str] = &["/etc/config", "/etc/extra", "/etc/passwd"];

/// Scripted session against an in-process receiver: frames in, replies out.
pub fn session(backup: &NodeRoot, input: &[u8]) -> Vec<Reply> {
    session_with(backup, input, &StaticInterfaces::default())
}

/// Like [`session`], with the backup's addresses read from `ifs`.
pub fn session_with(backup: &NodeRoot, input: &[u8], ifs: &StaticInterfaces) -> Vec<Reply> {
    let runner = RecordingRunner::new();
    let mut rx = Receiver::new(backup.clone(), &runner).with_interfaces(ifs);
    let mut out = Vec::new();
    let _ = rx.serve(&mut &input[..], &mut out);
    let mut r = &out[..];
    let mut replies = Vec::new();
    while let Ok(Some(v)) = ns_ha_common::proto::read_value(&mut r) {
        replies.push(serde_json::from_value(v).unwrap());
    }
    replies
}

/// Frame a JSON message (and an optional blob) as the wire wants it.
pub fn frame(msg: &serde_json::Value, blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_msg(&mut out, msg).unwrap();
    out.extend_from_slice(blob);
    out
}

pub fn sha(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn exists(root: &NodeRoot, p: &str) -> bool {
    std::fs::symlink_metadata(root.path(p)).is_ok()
}

pub fn read(root: &NodeRoot, p: &str) -> String {
    std::fs::read_to_string(root.path(p)).unwrap_or_default()
}

pub fn mode(root: &NodeRoot, p: &str) -> u32 {
    std::fs::metadata(root.path(p)).unwrap().mode() & 0o7777
}

pub fn is_file(p: &Path) -> bool {
    p.is_file()
}
