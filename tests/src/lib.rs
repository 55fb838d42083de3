//! Lab harness for the ns-ha end-to-end tests.
//!
//! Why this module exists: ns-ha is only worth something if it works with the
//! real keepalived, sshd, conntrackd and dnsmasq, on two firewalls that can
//! lose a link or die. Every end-to-end test therefore builds a throwaway lab
//! with `lab/lab.sh` (two firewalls, a LAN client and a WAN host in network
//! namespaces, joined by bridges in a "switch" namespace, each firewall with
//! its own node root and init scripts) and drives it through the small,
//! obvious helpers below. The lab is torn down when the [`Lab`] is dropped,
//! also when the test panics.
//!
//! A test that cannot build its lab fails (it never skips): a lab test that
//! silently passes on a machine without root or namespaces proves nothing.
//!
//! Nodes are named as in the lab: `fw1`, `fw2` (the firewalls), `lan` (LAN
//! client), `wan` (WAN host), `sw` (the switch). Addresses are in [`net`].
//!
//! Set `NS_HA_LAB_KEEP=1` to keep a lab after the test for debugging (its
//! prefix is printed; remove it with `lab/lab.sh down PREFIX`).
//!
//! The firewalls' SSH server (what pairing configures and the sync channel
//! talks to) is OpenSSH unless `NS_HA_LAB_SSH_SERVER=dropbear` says
//! otherwise ([`Lab::up`]); tests about one server name it
//! ([`Lab::up_with`]) and end in `_over_openssh` or `_over_dropbear`.

pub mod bench;
pub mod cluster;
pub mod health;
pub mod links;
pub mod packages;

use serde_json::Value;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The lab's addressing plan (the same as `lab/lab.sh` and `lab.json`).
pub mod net {
    /// fw1's address on the HA link (`ha0`, 10.99.0.0/24).
    pub const FW1_HA: &str = "10.99.0.1";
    /// fw2's address on the HA link.
    pub const FW2_HA: &str = "10.99.0.2";
    /// fw1's own LAN address (`lan0`, 10.99.1.0/24).
    pub const FW1_LAN: &str = "10.99.1.1";
    /// fw2's own LAN address.
    pub const FW2_LAN: &str = "10.99.1.2";
    /// fw1's own WAN address (`wan0`, 10.99.2.0/24).
    pub const FW1_WAN: &str = "10.99.2.1";
    /// fw2's own WAN address.
    pub const FW2_WAN: &str = "10.99.2.2";
    /// The LAN client (`lan` namespace, `eth0`); its default route is [`LAN_VIP`].
    pub const CLIENT: &str = "10.99.1.100";
    /// The WAN host (`wan` namespace, `eth0`); it routes 10.99.1.0/24 via [`WAN_VIP`].
    pub const WAN_HOST: &str = "10.99.2.100";
    /// The LAN VIP, not configured by the lab (keepalived adds it).
    pub const LAN_VIP: &str = "10.99.1.254";
    /// The WAN VIP, not configured by the lab.
    pub const WAN_VIP: &str = "10.99.2.254";
    /// Interface names on each firewall.
    pub const HA_IF: &str = "ha0";
    pub const LAN_IF: &str = "lan0";
    pub const WAN_IF: &str = "wan0";
}

/// The two firewalls.
pub const FIREWALLS: [&str; 2] = ["fw1", "fw2"];
/// Every node of the lab.
pub const NODES: [&str; 5] = ["sw", "fw1", "fw2", "lan", "wan"];

/// PATH for every command the harness runs: daemons live in /usr/sbin.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Path of `lab/lab.sh`.
pub fn lab_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../lab/lab.sh")
}

/// Path of a built workspace binary (e.g. `bin("ns-ha-role")`).
///
/// Looks in the profile dir of the running test binary, then in
/// `$CARGO_TARGET_DIR/debug`, then in the workspace's `target/debug`.
/// Panics if the binary is not built.
pub fn bin(name: &str) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/deps/<test>-<hash>
        if let Some(deps) = exe.parent() {
            if deps.file_name() == Some(OsStr::new("deps")) {
                if let Some(profile) = deps.parent() {
                    dirs.push(profile.to_path_buf());
                }
            }
        }
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        dirs.push(
            if t.is_absolute() {
                t
            } else {
                workspace.join(t)
            }
            .join("debug"),
        );
    }
    dirs.push(workspace.join("target/debug"));
    for d in &dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("binary '{name}' not found in {dirs:?}: run `cargo build --workspace` first");
}

/// Sets its flag when dropped, also while unwinding from a panic: a sampler
/// thread that runs until the flag is set then stops, instead of keeping a
/// `std::thread::scope` (and the lab's teardown) waiting for ever.
pub struct StopOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Poll `f` every `poll` until it returns true or `timeout` has passed.
/// Returns whether it became true (checked once more at the deadline).
pub fn wait_until(timeout: Duration, poll: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(poll);
    }
}

/// Run a command to completion with the harness PATH and no stdin.
fn run(cmd: &mut Command) -> Output {
    cmd.env("PATH", PATH).stdin(Stdio::null());
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what} failed ({}):\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A unique, short lab prefix: `nh` + pid + counter + clock noise, at most 10 chars.
fn new_prefix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    fn base36(mut n: u64, width: usize) -> String {
        let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut s = Vec::with_capacity(width);
        for _ in 0..width {
            s.push(digits[(n % 36) as usize]);
            n /= 36;
        }
        s.reverse();
        String::from_utf8(s).expect("ascii")
    }
    let pid = u64::from(std::process::id());
    let n = u64::from(COUNTER.fetch_add(1, Ordering::Relaxed));
    let noise = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()) / 1000)
        .unwrap_or(0);
    // 2 + 3 + 2 + 3 = 10 characters.
    format!("nh{}{}{}", base36(pid, 3), base36(n, 2), base36(noise, 3))
}

/// The SSH server the lab's firewalls run: what pairing configures and the
/// primary's sync channel talks to (`NS_HA_LAB_SSH_SERVER` of `lab.sh up`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SshServer {
    /// OpenSSH's sshd (`/etc/ssh/sshd_config`, `init.d/sshd`).
    Openssh,
    /// dropbear, as on NethSecurity/OpenWrt (`/etc/dropbear`, `init.d/dropbear`).
    Dropbear,
}

/// The variable that picks the SSH server of every lab a test does not give
/// one explicitly (`Lab::up`): `make lab-test-dropbear` runs the pairing,
/// sync and role lab files with it set to `dropbear`.
pub const SSH_SERVER_ENV: &str = "NS_HA_LAB_SSH_SERVER";

impl SshServer {
    /// Both, for tests that run once with each.
    pub const ALL: [SshServer; 2] = [SshServer::Openssh, SshServer::Dropbear];

    pub fn as_str(self) -> &'static str {
        match self {
            SshServer::Openssh => "openssh",
            SshServer::Dropbear => "dropbear",
        }
    }

    /// The server a value of [`SSH_SERVER_ENV`] names (unset or empty:
    /// OpenSSH); an error naming the variable and the allowed values.
    pub fn parse(value: Option<&str>) -> Result<SshServer, String> {
        match value.unwrap_or("") {
            "" | "openssh" => Ok(SshServer::Openssh),
            "dropbear" => Ok(SshServer::Dropbear),
            other => Err(format!(
                "{SSH_SERVER_ENV} must be openssh or dropbear (or unset for openssh), not '{other}'"
            )),
        }
    }

    /// The server [`SSH_SERVER_ENV`] names; panics on any other value (a
    /// typo must not quietly run the OpenSSH pass again).
    pub fn from_env() -> SshServer {
        let value = std::env::var_os(SSH_SERVER_ENV);
        let value = value.as_ref().map(|v| v.to_string_lossy());
        SshServer::parse(value.as_deref()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Its init script under the node root (`lab.service(node, server.service(), ...)`).
    pub fn service(self) -> &'static str {
        match self {
            SshServer::Openssh => "sshd",
            SshServer::Dropbear => "dropbear",
        }
    }

    /// The node file pairing writes the primary's key line into.
    pub fn authorized_keys(self) -> &'static str {
        match self {
            SshServer::Openssh => "/root/.ssh/authorized_keys",
            SshServer::Dropbear => "/etc/dropbear/authorized_keys",
        }
    }

    /// The node's ed25519 host key (private; OpenSSH keeps the public half
    /// next to it as `.pub`, dropbear derives it with `dropbearkey -y`).
    pub fn host_key(self) -> &'static str {
        match self {
            SshServer::Openssh => "/etc/ssh/ssh_host_ed25519_key",
            SshServer::Dropbear => "/etc/dropbear/dropbear_ed25519_host_key",
        }
    }

    /// The running server's pid file under the node root (its init script's).
    pub fn pid_file(self) -> &'static str {
        match self {
            SshServer::Openssh => "/run/sshd.pid",
            SshServer::Dropbear => "/run/dropbear.pid",
        }
    }
}

/// A running lab; dropped = torn down.
pub struct Lab {
    prefix: String,
    dir: PathBuf,
    info: Value,
    /// Where the firewalls' ns-ha tools are: LABDIR/bin, or an installed package's dir.
    bin_dir: PathBuf,
}

impl Lab {
    /// Build a fresh lab with a unique prefix, running the workspace's
    /// tools, its firewalls running the SSH server [`SSH_SERVER_ENV`] names
    /// (OpenSSH unless set). Panics with lab.sh's reason if it cannot be
    /// built (the test must fail, not skip).
    pub fn up() -> Lab {
        Lab::up_with_tools(None, SshServer::from_env())
    }

    /// Like [`Lab::up`], with the firewalls running `server` as their SSH
    /// server whatever the environment says: for tests about one server.
    pub fn up_with(server: SshServer) -> Lab {
        Lab::up_with_tools(None, server)
    }

    /// A lab whose firewalls run the ns-ha tools installed in `dir` (e.g.
    /// `/usr/sbin` from the .deb) instead of the workspace's; SSH server as
    /// in [`Lab::up`].
    pub fn up_installed(dir: &Path) -> Lab {
        Lab::up_with_tools(Some(dir), SshServer::from_env())
    }

    fn up_with_tools(installed: Option<&Path>, server: SshServer) -> Lab {
        let mut last = String::new();
        for _ in 0..3 {
            let prefix = new_prefix();
            let mut cmd = Command::new(lab_script());
            cmd.args(["up", &prefix])
                .env("NS_HA_LAB_SSH_SERVER", server.as_str());
            if installed.is_none() {
                // The tools are installed into the lab (LABDIR/bin) as a package
                // would install them: keepalived runs notify scripts only from
                // paths no other user can write, and a checkout may be in /tmp.
                let tools = bin("ns-ha-init");
                let tools = tools.parent().expect("binary has a directory");
                cmd.env("NS_HA_BIN_SRC", tools);
            }
            let out = run(&mut cmd);
            if out.status.success() {
                return Lab::attach(prefix, installed);
            }
            last = describe(&format!("lab.sh up {prefix}"), &out);
            // A leftover lab with the same prefix: try another one.
            if !String::from_utf8_lossy(&out.stderr).contains("already exists") {
                break;
            }
        }
        panic!("cannot build the lab (tests need root and `ip netns`): {last}");
    }

    fn attach(prefix: String, installed: Option<&Path>) -> Lab {
        let out = run(Command::new(lab_script()).args(["dir", &prefix]));
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let json = std::fs::read_to_string(dir.join("lab.json"))
            .unwrap_or_else(|e| panic!("cannot read {}/lab.json: {e}", dir.display()));
        let info = serde_json::from_str(&json).expect("lab.json is valid JSON");
        let bin_dir = installed.map_or_else(|| dir.join("bin"), Path::to_path_buf);
        Lab {
            prefix,
            dir,
            info,
            bin_dir,
        }
    }

    /// Path of an ns-ha tool as this lab runs it (`LABDIR/bin/NAME`, or the
    /// installed package's).
    pub fn bin(&self, name: &str) -> PathBuf {
        let p = self.bin_dir.join(name);
        assert!(p.is_file(), "{} is not installed in the lab", p.display());
        p
    }

    /// The lab's prefix (namespace names start with it).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The lab dir (holds `lab.json` and the node roots).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The contents of `lab.json` (prefix, namespaces, node roots, addresses).
    pub fn info(&self) -> &Value {
        &self.info
    }

    /// The SSH server the firewalls run (`ssh_server` of lab.json).
    pub fn ssh_server(&self) -> SshServer {
        match self.info["ssh_server"].as_str() {
            Some("dropbear") => SshServer::Dropbear,
            _ => SshServer::Openssh,
        }
    }

    /// Stop the SSH server of a firewall (panics on failure).
    pub fn stop_ssh_server(&self, node: &str) {
        self.stop(node, self.ssh_server().service());
    }

    /// Start the SSH server of a firewall (panics on failure).
    pub fn start_ssh_server(&self, node: &str) {
        self.start(node, self.ssh_server().service());
    }

    /// Whether a firewall's SSH server runs (see [`Lab::status`]).
    pub fn ssh_server_runs(&self, node: &str) -> bool {
        self.status(node, self.ssh_server().service())
    }

    /// The public line (`ssh-ed25519 BASE64 ...`) of a firewall's host key,
    /// derived from the private key by the server's own key tool.
    pub fn host_public_key(&self, node: &str) -> String {
        let key = self.path(node, self.ssh_server().host_key());
        let key = key.to_str().expect("utf-8 path");
        let out = match self.ssh_server() {
            SshServer::Openssh => self.exec_ok(node, &["ssh-keygen", "-y", "-f", key]),
            SshServer::Dropbear => self.exec_ok(node, &["dropbearkey", "-y", "-f", key]),
        };
        out.lines()
            .find(|l| l.starts_with("ssh-"))
            .unwrap_or_else(|| panic!("no public key line for {key}: {out}"))
            .to_string()
    }

    /// Give a firewall a new host key (the old one's files removed first),
    /// made by the server's own key tool; the server must be restarted to
    /// use it. Returns the files it replaced with their old bytes, for
    /// [`Lab::restore_files`].
    pub fn new_host_key(&self, node: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let server = self.ssh_server();
        let key = self.path(node, server.host_key());
        let files = match server {
            SshServer::Openssh => vec![key.clone(), key.with_extension("pub")],
            SshServer::Dropbear => vec![key.clone()],
        };
        let saved: Vec<(PathBuf, Vec<u8>)> = files
            .into_iter()
            .map(|f| {
                let bytes = std::fs::read(&f)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", f.display()));
                std::fs::remove_file(&f)
                    .unwrap_or_else(|e| panic!("cannot remove {}: {e}", f.display()));
                (f, bytes)
            })
            .collect();
        let key = key.to_str().expect("utf-8 path");
        match server {
            SshServer::Openssh => {
                self.exec_ok(
                    node,
                    &["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key],
                );
            }
            SshServer::Dropbear => {
                self.exec_ok(node, &["dropbearkey", "-t", "ed25519", "-f", key]);
            }
        }
        saved
    }

    /// Write back files saved by [`Lab::new_host_key`].
    pub fn restore_files(&self, saved: &[(PathBuf, Vec<u8>)]) {
        for (path, bytes) in saved {
            std::fs::write(path, bytes)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        }
    }

    /// Namespace name of `node` (`fw1`, `fw2`, `lan`, `wan`, `sw`).
    pub fn ns(&self, node: &str) -> String {
        assert!(NODES.contains(&node), "unknown lab node '{node}'");
        format!("{}{node}", self.prefix)
    }

    /// Both firewalls' links read in-process within microseconds of each
    /// other (see [`links`]); panics if a namespace cannot be read.
    pub fn link_snapshot(&self) -> links::LinkSnapshot {
        let files: Vec<(&'static str, std::fs::File)> = FIREWALLS
            .into_iter()
            .map(|fw| {
                let p = format!("/run/netns/{}", self.ns(fw));
                let f = std::fs::File::open(&p).unwrap_or_else(|e| panic!("cannot open {p}: {e}"));
                (fw, f)
            })
            .collect();
        let refs: Vec<(&'static str, &std::fs::File)> =
            files.iter().map(|(n, f)| (*n, f)).collect();
        links::snapshot(&refs).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Node root of a firewall (its miniature `/`).
    pub fn root(&self, node: &str) -> PathBuf {
        assert!(FIREWALLS.contains(&node), "'{node}' has no node root");
        self.dir.join(node)
    }

    /// Path of `rel` (like `/etc/ns-ha/cluster.json`) inside a firewall's root.
    pub fn path(&self, node: &str, rel: &str) -> PathBuf {
        self.root(node).join(rel.trim_start_matches('/'))
    }

    /// Write a file inside a firewall's root, creating its parent dirs.
    pub fn write(&self, node: &str, rel: &str, contents: impl AsRef<[u8]>) {
        let p = self.path(node, rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
        std::fs::write(&p, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
    }

    /// Replace a file inside a firewall's root as the tools do
    /// (`fsutil::atomic_write`: a temporary file with the mode, renamed
    /// over it). For a file a running daemon may read at that moment (the
    /// role engine reads cluster.json at every pass, and a pass that meets
    /// half a file fails): it sees the old content or the new, never a part.
    /// The file keeps its mode (cluster.json is 0600).
    pub fn replace(&self, node: &str, rel: &str, contents: impl AsRef<[u8]>) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path(node, rel);
        let mode = std::fs::metadata(&p).map_or(0o644, |md| md.permissions().mode() & 0o7777);
        ns_ha_common::fsutil::atomic_write(&p, contents.as_ref(), mode)
            .unwrap_or_else(|e| panic!("cannot replace {}: {e:#}", p.display()));
    }

    /// Read a file inside a firewall's root (panics if missing).
    pub fn read(&self, node: &str, rel: &str) -> String {
        let p = self.path(node, rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
    }

    /// Run `argv` inside `node`'s namespace (`ip netns exec NS argv...`).
    /// Do not start daemons with it unless they close stdout/stderr: the call
    /// waits for the pipes to close.
    pub fn exec(&self, node: &str, argv: &[&str]) -> Output {
        assert!(!argv.is_empty(), "exec needs a command");
        run(Command::new("ip")
            .args(["netns", "exec", &self.ns(node)])
            .args(argv))
    }

    /// Like [`Lab::exec`], panicking with stdout and stderr unless it exits 0;
    /// returns stdout.
    pub fn exec_ok(&self, node: &str, argv: &[&str]) -> String {
        let out = self.exec(node, argv);
        if !out.status.success() {
            panic!("{}", describe(&format!("[{node}] {argv:?}"), &out));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run `argv` in the mount namespace of `node`'s SSH server (fw2's has a
    /// tmpfs of its own on `NODEROOT/tmp`, see lab/README.md): what the sync
    /// receiver sees.
    pub fn in_ssh_server_mounts(&self, node: &str, argv: &[&str]) -> Output {
        let pid = self.read(node, self.ssh_server().pid_file());
        run(Command::new("nsenter")
            .args(["--target", pid.trim(), "--mount", "--"])
            .args(argv))
    }

    /// Run a shell script (`sh -c`) inside `node`'s namespace, for test-only plumbing.
    pub fn sh(&self, node: &str, script: &str) -> Output {
        self.exec(node, &["sh", "-c", script])
    }

    /// Like [`Lab::sh`], panicking unless it exits 0; returns stdout.
    pub fn sh_ok(&self, node: &str, script: &str) -> String {
        self.exec_ok(node, &["sh", "-c", script])
    }

    /// Run `NODEROOT/etc/init.d/SERVICE VERB` inside the node's namespace.
    pub fn service(&self, node: &str, service: &str, verb: &str) -> Output {
        let script = self.path(node, &format!("/etc/init.d/{service}"));
        let script = script.to_string_lossy();
        self.exec(node, &[&script, verb])
    }

    /// Start a service on a firewall (panics with the script's output on failure).
    pub fn start(&self, node: &str, service: &str) {
        let out = self.service(node, service, "start");
        assert!(
            out.status.success(),
            "{}",
            describe(&format!("[{node}] {service} start"), &out)
        );
    }

    /// Stop a service on a firewall (panics on failure).
    pub fn stop(&self, node: &str, service: &str) {
        let out = self.service(node, service, "stop");
        assert!(
            out.status.success(),
            "{}",
            describe(&format!("[{node}] {service} stop"), &out)
        );
    }

    /// Whether a service runs on a firewall (init script `status`: 0 yes, 3 no;
    /// anything else panics).
    pub fn status(&self, node: &str, service: &str) -> bool {
        let out = self.service(node, service, "status");
        match out.status.code() {
            Some(0) => true,
            Some(3) => false,
            _ => panic!("{}", describe(&format!("[{node}] {service} status"), &out)),
        }
    }

    /// Simulate a dead box: freeze and kill its keepalived (no priority-0
    /// advert, VIPs stay configured), then take all its links down.
    pub fn crash(&self, node: &str) {
        assert!(FIREWALLS.contains(&node), "only a firewall can crash");
        let out = run(Command::new(lab_script()).args(["crash", &self.prefix, node]));
        assert!(out.status.success(), "{}", describe("lab.sh crash", &out));
    }

    /// Bring a crashed firewall back as after a reboot: links up, no
    /// leftover VIPs or master services, keepalived started (`lab.sh revive`).
    pub fn revive(&self, node: &str) {
        assert!(FIREWALLS.contains(&node), "only a firewall can be revived");
        let out = run(Command::new(lab_script()).args(["revive", &self.prefix, node]));
        assert!(out.status.success(), "{}", describe("lab.sh revive", &out));
    }

    /// Rewrite both firewalls' rendered keepalived.conf to the incumbent's
    /// VRRP timing (VRRPv2, 1 s adverts) and restart keepalived
    /// (`lab.sh vrrp-incumbent`): the baseline of the failover benchmark.
    pub fn vrrp_incumbent(&self) {
        let out = run(Command::new(lab_script()).args(["vrrp-incumbent", &self.prefix]));
        assert!(
            out.status.success(),
            "{}",
            describe("lab.sh vrrp-incumbent", &out)
        );
    }

    /// Start the ISP's DHCP server on the takeover WAN (`lab.sh isp-dhcp`:
    /// dnsmasq on the WAN host, one lease per client); returns its lease
    /// file, which shows what the ISP sees.
    pub fn isp_dhcp(&self) -> PathBuf {
        let out = run(Command::new(lab_script()).args(["isp-dhcp", &self.prefix]));
        assert!(
            out.status.success(),
            "{}",
            describe("lab.sh isp-dhcp", &out)
        );
        let leases = self.info["takeover_wan"]["isp_dhcp"]["leases"]
            .as_str()
            .expect("lab.json takeover_wan.isp_dhcp.leases");
        PathBuf::from(leases)
    }

    /// Set an interface of a node administratively down (the peer sees carrier loss).
    pub fn link_down(&self, node: &str, iface: &str) {
        self.ip(node, &["link", "set", iface, "down"]);
    }

    /// Set an interface of a node up.
    pub fn link_up(&self, node: &str, iface: &str) {
        self.ip(node, &["link", "set", iface, "up"]);
    }

    fn ip(&self, node: &str, args: &[&str]) -> String {
        let out = run(Command::new("ip").args(["-n", &self.ns(node)]).args(args));
        assert!(
            out.status.success(),
            "{}",
            describe(&format!("ip -n {node} {args:?}"), &out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn cut_table(iface: &str) -> String {
        let safe: String = iface
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("nsha_cut_{safe}")
    }

    /// Silently drop all traffic (IP, ARP, VRRP, both ways) on one interface
    /// of a node, while the link stays up: the peer sees no carrier change,
    /// just silence. Uses a netdev table of its own with ingress and egress
    /// hooks on the device. Idempotent.
    pub fn cut(&self, node: &str, iface: &str) {
        let table = Lab::cut_table(iface);
        let rules = format!(
            "table netdev {table} {{\n\
             \x20 chain ingress {{ type filter hook ingress device \"{iface}\" priority -500; policy drop; }}\n\
             \x20 chain egress {{ type filter hook egress device \"{iface}\" priority -500; policy drop; }}\n\
             }}\n"
        );
        let path = self.dir.join(format!("{node}-{table}.nft"));
        std::fs::write(&path, rules).expect("write nft rules");
        let path = path.to_string_lossy();
        self.exec_ok(node, &["nft", "-f", &path]);
    }

    /// Undo [`Lab::cut`]. Idempotent.
    pub fn heal(&self, node: &str, iface: &str) {
        let table = Lab::cut_table(iface);
        let out = self.exec(node, &["nft", "delete", "table", "netdev", &table]);
        if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("No such file") {
            panic!("{}", describe(&format!("[{node}] heal {iface}"), &out));
        }
    }

    /// IPv4 and IPv6 addresses configured on a node, as `(ifname, address)`.
    pub fn addrs(&self, node: &str) -> Vec<(String, String)> {
        let json = self.ip(node, &["-j", "addr", "show"]);
        let v: Value = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("bad `ip -j addr` output from {node}: {e}: {json}"));
        let mut out = Vec::new();
        for link in v.as_array().into_iter().flatten() {
            let ifname = link["ifname"].as_str().unwrap_or_default();
            for a in link["addr_info"].as_array().into_iter().flatten() {
                if let Some(local) = a["local"].as_str() {
                    out.push((ifname.to_string(), local.to_string()));
                }
            }
        }
        out
    }

    /// Whether `node` has `addr` (with or without `/len`) on any interface.
    pub fn has_addr(&self, node: &str, addr: &str) -> bool {
        let want = addr.split('/').next().unwrap_or(addr);
        self.addrs(node).iter().any(|(_, a)| a == want)
    }

    /// Which firewalls have `addr` configured right now (two = split brain).
    pub fn holders(&self, addr: &str) -> Vec<&'static str> {
        FIREWALLS
            .into_iter()
            .filter(|fw| self.has_addr(fw, addr))
            .collect()
    }

    /// Wait up to `timeout` until exactly `want` hold `addr` (polled every 20 ms).
    pub fn wait_holders(&self, addr: &str, want: &[&str], timeout: Duration) -> bool {
        wait_until(timeout, Duration::from_millis(20), || {
            self.holders(addr) == want
        })
    }

    /// Whether `from` gets at least one reply to `count` pings to `addr`
    /// (0.2 s apart, 1 s timeout each).
    pub fn ping(&self, from: &str, addr: &str, count: u32) -> bool {
        let count = count.max(1).to_string();
        self.exec(
            from,
            &[
                "ping", "-q", "-n", "-c", &count, "-i", "0.2", "-W", "1", addr,
            ],
        )
        .status
        .success()
    }

    /// The first line a TCP server at `addr:port` sends to a client in `from`
    /// (e.g. an SSH banner), or None if nothing answers within 3 s.
    pub fn tcp_banner(&self, from: &str, addr: &str, port: u16) -> Option<String> {
        let port = port.to_string();
        let out = self.exec(
            from,
            &[
                "timeout",
                "3",
                "bash",
                "-c",
                "exec 3<>\"/dev/tcp/$0/$1\" && head -n 1 <&3",
                addr,
                &port,
            ],
        );
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !line.is_empty()).then_some(line)
    }

    /// Tear the lab down now (also done on drop).
    pub fn down(&self) -> Result<(), String> {
        let out = run(Command::new(lab_script()).args(["down", &self.prefix]));
        if out.status.success() {
            Ok(())
        } else {
            Err(describe(&format!("lab.sh down {}", self.prefix), &out))
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::env::var_os("NS_HA_LAB_KEEP").is_some_and(|v| v == "1") {
            eprintln!(
                "NS_HA_LAB_KEEP=1: keeping lab {} in {} (remove: lab/lab.sh down {})",
                self.prefix,
                self.dir.display(),
                self.prefix
            );
            return;
        }
        if let Err(e) = self.down() {
            // Never panic in drop (it would abort a test that is already panicking).
            eprintln!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_short_unique_and_valid() {
        let a = new_prefix();
        let b = new_prefix();
        assert_ne!(a, b);
        for p in [&a, &b] {
            assert!(p.len() <= 10, "{p}");
            assert!(p.starts_with("nh"));
            assert!(p
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        }
    }

    #[test]
    fn wait_until_reports_success_and_timeout() {
        let mut n = 0;
        assert!(wait_until(
            Duration::from_secs(1),
            Duration::from_millis(1),
            || {
                n += 1;
                n == 3
            }
        ));
        assert!(!wait_until(
            Duration::from_millis(20),
            Duration::from_millis(5),
            || false
        ));
    }

    #[test]
    fn the_ssh_server_variable_names_openssh_or_dropbear_and_nothing_else() {
        assert_eq!(SshServer::parse(None), Ok(SshServer::Openssh));
        assert_eq!(SshServer::parse(Some("")), Ok(SshServer::Openssh));
        assert_eq!(SshServer::parse(Some("openssh")), Ok(SshServer::Openssh));
        assert_eq!(SshServer::parse(Some("dropbear")), Ok(SshServer::Dropbear));
        for bad in ["Dropbear", "sshd", "dropbear "] {
            let e = SshServer::parse(Some(bad)).unwrap_err();
            assert!(
                e.contains(SSH_SERVER_ENV) && e.contains("openssh or dropbear") && e.contains(bad),
                "{e}"
            );
        }
    }

    #[test]
    fn cut_table_names_are_nft_identifiers() {
        assert_eq!(Lab::cut_table("ha0"), "nsha_cut_ha0");
        assert_eq!(Lab::cut_table("eth0.10"), "nsha_cut_eth0_10");
    }
}
