//! Issue 9, VPNs that follow the master, against the real daemons in the
//! lab: an OpenVPN server (`openvpn`, started by the role engine through the
//! node's init script), a WireGuard tunnel (`wireguard-go`, this kernel
//! has no WireGuard module, created by the role engine's `link wg* up`) and
//! an IPsec gateway (strongSwan's charon, the `swanctl` service, with
//! `kernel-libipsec`: this kernel has no ESP, so ESP runs in userspace over
//! a TUN device, UDP-encapsulated on the wire) configured on the primary
//! only, the WAN host as the road warrior of all three (an OpenVPN client,
//! a wireguard-go client and a charon with a virtual IP, tunnels to the WAN
//! VIP).
//!
//! Checked: the configs (keys and the IPsec PSK 0600) reach the backup by
//! the sync; the tunnels and daemons run on the MASTER only, asserted on
//! both nodes; the primary records the WireGuard client's endpoint and the
//! sync carries it; after fw1 dies the client's traffic through each tunnel
//! to a LAN address flows again with no change on the client (IPsec: the
//! client's DPD declares the dead gateway and `dpd_action = restart`
//! connects to the new master). The benchmark (ignored, `make bench`)
//! prints the time from the crash to traffic through each tunnel, median of
//! three fresh labs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use ns_ha_tests::cluster::{configure_dnsmasq, pair, tool, tool_ok};
use ns_ha_tests::health::reply_stamps;
use ns_ha_tests::{net, wait_until, Lab, FIREWALLS};

/// The tunnels' subnets and the LAN addresses the client reaches through each.
const WG_SERVER: &str = "10.99.20.1/24";
const WG_CLIENT: &str = "10.99.20.2/24";
const OVPN_NET: &str = "10.99.21.0 255.255.255.0";
/// The LAN client, through WireGuard.
const LAN_BY_WG: &str = net::CLIENT;
/// A second address of the LAN client, through OpenVPN.
const LAN_BY_OVPN: &str = "10.99.1.101";
const CLIENT_WG_IF: &str = "wgc0";
/// A third address of the LAN client, through IPsec.
const LAN_BY_IPSEC: &str = "10.99.1.253";
/// What the IPsec road warrior reaches: a part of the LAN holding
/// [`LAN_BY_IPSEC`] and the LAN VIP. kernel-libipsec routes a tunnel's
/// traffic only with a source address of its own inside the gateway's
/// traffic selector (else "no local address found in traffic selector",
/// no CHILD_SA): a real road warrior's selector is the whole LAN, which
/// holds the gateway's LAN address. Here it is narrowed so that the WAN
/// host's routes to the other two tunnels' LAN addresses stay theirs
/// (charon's table 220 is looked up before the main table).
const IPSEC_LAN_TS: &str = "10.99.1.252/30";
/// The LAN, the IPsec gateway's side of the tunnel.
const LAN_NET: &str = "10.99.1.0/24";
/// The IPsec gateway's pool of road-warrior virtual IPs.
const IPSEC_POOL: &str = "10.99.22.0/24";
/// charon with its plugins from the packages (no openssl plugin: gmp for
/// the DH group) and kernel-libipsec for ESP.
const CHARON: &str = "/usr/lib/ipsec/charon";

fn sh_out(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn wg_key_pair() -> (String, String) {
    let private = sh_out(Command::new("wg").arg("genkey"));
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wg pubkey");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(private.as_bytes())
        .expect("key to wg pubkey");
    let out = child.wait_with_output().expect("wg pubkey output");
    (
        private,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// A self-signed EC certificate and key in `dir` (NAME.crt, NAME.key);
/// returns its SHA-256 fingerprint as OpenVPN's `peer-fingerprint` wants it.
fn cert(dir: &Path, name: &str) -> String {
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    sh_out(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", &format!("/CN=ns-ha-lab-{name}"), "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&crt),
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    let fp = sh_out(
        Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(&crt),
    );
    fp.split_once('=').expect("fingerprint line").1.to_string()
}

/// The road warrior's files on the WAN host.
struct Client {
    dir: PathBuf,
}

/// Configure both VPNs on fw1 (primary, MASTER) and the client's side.
fn configure(lab: &Lab) -> Client {
    let dir = lab.dir().join("roadwarrior");
    std::fs::create_dir_all(dir.join("run/wireguard")).expect("client dir");
    let etc = lab.path("fw1", "/etc/openvpn");
    std::fs::create_dir_all(&etc).expect("openvpn dir");
    let server_fp = cert(&etc, "server");
    let client_fp = cert(&dir, "client");
    lab.write(
        "fw1",
        "/etc/openvpn/server.conf",
        format!(
            "# road warriors, on the WAN VIP (only the MASTER holds it)\n\
             dev tun0\nproto udp\nlocal {vip}\nport 1194\ntopology subnet\n\
             server {OVPN_NET}\nkeepalive 1 4\ndh none\ncert server.crt\nkey server.key\n\
             <peer-fingerprint>\n{client_fp}\n</peer-fingerprint>\n\
             push \"route {LAN_BY_OVPN} 255.255.255.255\"\nverb 3\n",
            vip = net::WAN_VIP
        ),
    );
    std::fs::write(
        dir.join("client.conf"),
        format!(
            "client\ndev tun\nproto udp\nremote {vip} 1194\nnobind\npersist-tun\npersist-key\n\
             cert client.crt\nkey client.key\npeer-fingerprint {server_fp}\nverb 3\n",
            vip = net::WAN_VIP
        ),
    )
    .expect("client.conf");

    let (server_key, server_pub) = wg_key_pair();
    let (client_key, client_pub) = wg_key_pair();
    let wg0 = format!(
        "[Interface]\nPrivateKey = {server_key}\nListenPort = 51820\nAddress = {WG_SERVER}\n\n\
         [Peer]\n# the road warrior (no endpoint: it calls in)\nPublicKey = {client_pub}\nAllowedIPs = 10.99.20.2/32\n"
    );
    lab.write("fw1", "/etc/wireguard/wg0.conf", wg0);
    std::fs::set_permissions(
        lab.path("fw1", "/etc/wireguard/wg0.conf"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod wg0.conf");
    std::fs::write(
        dir.join("wgc0.conf"),
        format!(
            "[Interface]\nPrivateKey = {client_key}\n\n[Peer]\nPublicKey = {server_pub}\n\
             AllowedIPs = 10.99.20.0/24, {LAN_BY_WG}/32\nEndpoint = {vip}:51820\n",
            vip = net::WAN_VIP
        ),
    )
    .expect("wgc0.conf");
    // The OpenVPN service is installed on both nodes (the package), configured on the primary.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lab/node/optional/openvpn");
    for fw in FIREWALLS {
        let to = lab.path(fw, "/etc/init.d/openvpn");
        std::fs::copy(&script, &to).expect("install the openvpn init script");
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    configure_ipsec(lab, &dir);
    // The LAN client's second and third addresses, reached through OpenVPN and IPsec.
    for addr in [LAN_BY_OVPN, LAN_BY_IPSEC] {
        lab.exec_ok(
            "lan",
            &["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"],
        );
    }
    Client { dir }
}

/// strongSwan's daemon settings: the plugins (kernel-libipsec for ESP, this
/// kernel has none), a log in `/run` (the node's own there), and `extra`.
fn strongswan_conf(extra: &str) -> String {
    format!(
        "# this kernel has no ESP: kernel-libipsec carries it through a TUN device (ipsec0)\n\
         charon {{\n  load = random nonce aes sha1 sha2 hmac gmp kdf pem pkcs1 pkcs8 x509 pubkey \
         kernel-libipsec kernel-netlink socket-default vici\n{extra}\
         \x20 filelog {{\n    lab {{\n      path = /run/charon.log\n      flush_line = yes\n      \
         default = 1\n      ike = 2\n    }}\n  }}\n}}\n\
         swanctl {{\n  load = random nonce aes sha1 sha2 hmac gmp pem pkcs1 pkcs8 x509 pubkey\n}}\n"
    )
}

/// The IPsec gateway on fw1 (strongswan.conf, swanctl.conf, the PSK in a
/// 0600 file of its own), the `swanctl` service on both nodes, and the road
/// warrior's files under `dir/ipsec`: a charon of its own with the
/// settings that make it come back after a failover (see [`Client::start`]).
fn configure_ipsec(lab: &Lab, dir: &Path) {
    let psk = sh_out(Command::new("openssl").args(["rand", "-base64", "32"]));
    let secrets = format!(
        "# the road warriors' pre-shared key\nsecrets {{\n  ike-rw {{\n    id = rw.lab\n    secret = 0s{psk}\n  }}\n}}\n"
    );
    lab.write("fw1", "/etc/strongswan.conf", strongswan_conf(""));
    lab.write(
        "fw1",
        "/etc/swanctl/swanctl.conf",
        format!(
            "# road warriors, on the WAN VIP (only the MASTER holds it and runs charon)\n\
             connections {{\n  rw {{\n    version = 2\n    local_addrs = {vip}\n    \
             proposals = aes256-sha256-modp2048\n    encap = yes\n    pools = rw\n    \
             local {{\n      auth = psk\n      id = gw.lab\n    }}\n    \
             remote {{\n      auth = psk\n      id = rw.lab\n    }}\n    \
             children {{\n      rw {{\n        local_ts = {lan}\n        \
             esp_proposals = aes256-sha256\n      }}\n    }}\n  }}\n}}\n\
             pools {{\n  rw {{\n    addrs = {IPSEC_POOL}\n  }}\n}}\n\
             include conf.d/*.conf\n",
            vip = net::WAN_VIP,
            lan = LAN_NET
        ),
    );
    lab.write("fw1", "/etc/swanctl/conf.d/secrets.conf", &secrets);
    std::fs::set_permissions(
        lab.path("fw1", "/etc/swanctl/conf.d/secrets.conf"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod secrets.conf");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lab/node/optional/swanctl");
    for fw in FIREWALLS {
        let to = lab.path(fw, "/etc/init.d/swanctl");
        std::fs::copy(&script, &to).expect("install the swanctl init script");
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    // The road warrior: the gateway's address, a virtual IP from its pool,
    // the LAN address it reaches, and what brings it back by itself.
    let rw = dir.join("ipsec");
    for sub in ["run", "swanctl"] {
        std::fs::create_dir_all(rw.join(sub)).expect("client ipsec dir");
    }
    std::fs::write(
        rw.join("strongswan.conf"),
        strongswan_conf(
            "  # a lost gateway is declared dead after 1 + 1 + 1 s of retransmissions\n  \
             # (the defaults, 4 s x 1.8^n with 5 tries, take 165 s)\n  \
             retransmit_timeout = 1\n  retransmit_base = 1\n  retransmit_tries = 2\n",
        ),
    )
    .expect("client strongswan.conf");
    std::fs::write(
        rw.join("swanctl/swanctl.conf"),
        format!(
            "connections {{\n  home {{\n    version = 2\n    remote_addrs = {vip}\n    \
             vips = 0.0.0.0\n    proposals = aes256-sha256-modp2048\n    encap = yes\n    \
             dpd_delay = 1s\n    keyingtries = 0\n    \
             local {{\n      auth = psk\n      id = rw.lab\n    }}\n    \
             remote {{\n      auth = psk\n      id = gw.lab\n    }}\n    \
             children {{\n      home {{\n        remote_ts = {IPSEC_LAN_TS}\n        \
             esp_proposals = aes256-sha256\n        start_action = start\n        \
             dpd_action = restart\n        close_action = start\n      }}\n    }}\n  }}\n}}\n{secrets}",
            vip = net::WAN_VIP
        ),
    )
    .expect("client swanctl.conf");
}

impl Client {
    /// Start both clients on the WAN host: an OpenVPN client and a
    /// wireguard-go interface with its own `/run/wireguard` (a private mount
    /// namespace: the firewalls' wireguard-go sockets are elsewhere).
    fn start(&self, lab: &Lab) {
        let dir = self.dir.to_string_lossy().into_owned();
        lab.exec_ok(
            "wan",
            &[
                "openvpn",
                "--cd",
                &dir,
                "--config",
                "client.conf",
                "--daemon",
                "ns-ha-lab-client",
                "--writepid",
                &format!("{dir}/openvpn.pid"),
                "--log",
                &format!("{dir}/openvpn.log"),
            ],
        );
        let script =
            "mkdir -p /run/wireguard && mount --bind \"$1/run/wireguard\" /run/wireguard && \
             wireguard-go \"$2\" 2>/dev/null && wg setconf \"$2\" \"$1/$2.conf\" && \
             ip address add \"$3\" dev \"$2\" && ip link set \"$2\" up && \
             ip route add \"$4/32\" dev \"$2\"";
        in_private_mounts(
            lab,
            "wan",
            script,
            &[&dir, CLIENT_WG_IF, WG_CLIENT, LAN_BY_WG],
        );
        // The IPsec road warrior: its charon with its own /run (pid file,
        // vici socket) and /etc/swanctl, the connection loaded and started
        // (`start_action = start`). Outside the tunnel the LAN address is
        // unreachable (a blackhole route; charon's routes are in table 220,
        // looked up first), as a road warrior's LAN addresses are on the
        // Internet: otherwise the WAN host would reach it in the clear
        // through the WAN VIP while the tunnel is down.
        lab.exec_ok(
            "wan",
            &[
                "ip",
                "route",
                "add",
                "blackhole",
                &format!("{LAN_BY_IPSEC}/32"),
            ],
        );
        let rw = format!("{dir}/ipsec");
        let script = "mount --bind \"$1/run\" /run && mount --bind \"$1/swanctl\" /etc/swanctl && \
             STRONGSWAN_CONF=\"$1/strongswan.conf\" && export STRONGSWAN_CONF && \
             { \"$2\" </dev/null >>\"$1/charon.out\" 2>&1 & } && i=0 && \
             until [ -S /run/charon.vici ]; do i=$((i+1)); [ $i -le 50 ] || exit 1; sleep 0.1; done && \
             swanctl --load-all --noprompt >>\"$1/charon.out\" 2>&1";
        in_private_mounts(lab, "wan", script, &[&rw, CHARON]);
    }

    /// The road warrior's IPsec SAs (`swanctl --list-sas`).
    fn ipsec_sas(&self, lab: &Lab) -> String {
        let rw = self.dir.join("ipsec");
        swanctl(lab, "wan", &rw.join("run"), &rw.join("strongswan.conf"))
    }
}

/// `swanctl --list-sas` on `node`, seeing the charon whose /run is `run`.
fn swanctl(lab: &Lab, node: &str, run: &Path, conf: &Path) -> String {
    in_private_mounts(
        lab,
        node,
        "mount --bind \"$1\" /run && export STRONGSWAN_CONF=\"$2\" && exec swanctl --list-sas",
        &[&run.to_string_lossy(), &conf.to_string_lossy()],
    )
}

/// A firewall's IPsec SAs.
fn node_ipsec_sas(lab: &Lab, node: &str) -> String {
    swanctl(
        lab,
        node,
        &lab.path(node, "/run"),
        &lab.path(node, "/etc/strongswan.conf"),
    )
}

/// What runs on `node`: the WireGuard tunnel, OpenVPN's tun0, the openvpn
/// service, a wireguard-go process in its namespace, the swanctl service
/// (charon) and its ESP device (kernel-libipsec's TUN).
fn vpn_state(lab: &Lab, node: &str) -> [bool; 6] {
    let link = |name: &str| {
        lab.exec(node, &["ip", "link", "show", "dev", name])
            .status
            .success()
    };
    let wg_go = lab
        .sh(node, "for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = wireguard-go ] && [ \"$(readlink $p/ns/net)\" = \"$(readlink /proc/self/ns/net)\" ] && echo $p; done")
        .stdout;
    [
        link("wg0"),
        link("tun0"),
        lab.status(node, "openvpn"),
        !wg_go.is_empty(),
        lab.status(node, "swanctl"),
        link("ipsec0"),
    ]
}

/// The order of [`vpn_state`], for messages.
const VPN_STATE: &str = "[wg0, tun0, openvpn, wireguard-go, swanctl, ipsec0]";

fn assert_vpns_only_on(lab: &Lab, master: &str, when: &str) {
    for fw in FIREWALLS {
        let want = fw == master;
        let ok = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            vpn_state(lab, fw) == [want; 6]
        });
        assert!(
            ok,
            "{when}: {fw} should {}run the VPNs: {VPN_STATE} = {:?}; role status: {}",
            if want { "" } else { "not " },
            vpn_state(lab, fw),
            tool(lab, fw, "ns-ha-role", &["status"])
                .stdout
                .escape_ascii()
        );
    }
}

/// Run a shell script (`sh -c SCRIPT sh ARGS...`) in `node`'s namespace and
/// a private mount namespace (for binding a `/run/wireguard` of its own).
fn in_private_mounts(lab: &Lab, node: &str, script: &str, args: &[&str]) -> String {
    let mut argv = vec![
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
    ];
    argv.extend_from_slice(args);
    lab.exec_ok(node, &argv)
}

/// `wg ARGS` on a firewall, seeing that node's wireguard-go sockets.
fn node_wg(lab: &Lab, node: &str, args: &[&str]) -> String {
    let dir = lab.path(node, "/run/wireguard");
    let dir = dir.to_string_lossy();
    let mut argv = vec![dir.as_ref()];
    argv.extend_from_slice(args);
    in_private_mounts(
        lab,
        node,
        "mount --bind \"$1\" /run/wireguard && shift && exec wg \"$@\"",
        &argv,
    )
}

/// A ping from the WAN host, every 50 ms, its output in a file.
struct Ping {
    child: Child,
    out: PathBuf,
}

impl Ping {
    fn start(lab: &Lab, addr: &str, out: PathBuf) -> Ping {
        let file = std::fs::File::create(&out).expect("ping output file");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns("wan"),
                "ping",
                "-n",
                "-D",
                "-i",
                "0.05",
                "-W",
                "1",
                addr,
            ])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .expect("start ping");
        Ping { child, out }
    }

    fn stamps(&self) -> Vec<f64> {
        reply_stamps(&std::fs::read_to_string(&self.out).unwrap_or_default())
    }

    /// Seconds from `t0` until the replies resumed after the outage that
    /// began around `t0`, if they did: the end of the first gap (over
    /// 0.15 s, three ping intervals) after which replies flow steadily (10
    /// in a row, no gap). A scheduling hiccup of the loaded machine between
    /// `t0` and the links going down (`lab.sh crash` takes a moment) is not
    /// the outage. (At 0.3 s a WireGuard outage of 0.26 s went unseen.)
    fn resumed_after(&self, t0: f64) -> Option<f64> {
        const STEADY: usize = 10;
        let gap = |w: &[f64]| w[1] - w[0] > 0.15;
        let s = self.stamps();
        let before = s.iter().rev().find(|t| **t <= t0).copied().unwrap_or(t0);
        s.windows(2)
            .enumerate()
            .filter(|(_, w)| w[0] >= before && gap(w))
            .find(|(i, _)| {
                let after = &s[i + 1..];
                after.len() >= STEADY && !after[..STEADY].windows(2).any(gap)
            })
            .map(|(_, w)| w[1] - t0)
    }
}

impl Drop for Ping {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn mode(lab: &Lab, node: &str, rel: &str) -> u32 {
    std::fs::metadata(lab.path(node, rel))
        .unwrap_or_else(|e| panic!("{node}:{rel}: {e}"))
        .permissions()
        .mode()
        & 0o777
}

/// Seconds from the crash to traffic through each tunnel again.
struct Resumed {
    wireguard: f64,
    openvpn: f64,
    ipsec: f64,
}

/// One failover with the three tunnels in use; returns the seconds from
/// the crash of fw1 to traffic through each. With `forget`, fw2 loses the
/// recorded WireGuard endpoints before the crash (the baseline: the
/// client's own handshake retry). Also returns the road warrior, still
/// connected.
fn failover_round(lab: &Lab, forget: bool) -> (Resumed, Client) {
    configure_dnsmasq(lab);
    pair(lab);
    let client = configure(lab);
    // Config reaches the backup by the sync, keys private there too.
    tool_ok(lab, "fw1", "ns-ha-sync", &["push"]);
    for rel in [
        "/etc/wireguard/wg0.conf",
        "/etc/openvpn/server.conf",
        "/etc/openvpn/server.key",
        "/etc/strongswan.conf",
        "/etc/swanctl/swanctl.conf",
        "/etc/swanctl/conf.d/secrets.conf",
    ] {
        assert_eq!(lab.read("fw2", rel), lab.read("fw1", rel), "{rel} on fw2");
    }
    assert_eq!(mode(lab, "fw2", "/etc/wireguard/wg0.conf"), 0o600);
    assert_eq!(mode(lab, "fw2", "/etc/openvpn/server.key"), 0o600);
    assert_eq!(mode(lab, "fw2", "/etc/swanctl/conf.d/secrets.conf"), 0o600);

    // The role engine brings the VPNs up on the MASTER only.
    for fw in FIREWALLS {
        let out = tool(lab, fw, "ns-ha-role", &["apply"]);
        assert!(
            out.status.success(),
            "ns-ha-role apply on {fw}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_vpns_only_on(lab, "fw1", "steady state");
    // `ns-ha-check status` says where each tunnel is up.
    for (fw, up) in [("fw1", true), ("fw2", false)] {
        let st: serde_json::Value =
            serde_json::from_str(&tool_ok(lab, fw, "ns-ha-check", &["--json", "status"]))
                .expect("status JSON");
        let up_here = |name: &str| {
            st["vpns"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["name"] == name)
                .map(|t| t["up"].clone())
        };
        assert_eq!(up_here("wg0"), Some(up.into()), "{fw}: {}", st["vpns"]);
        assert_eq!(up_here("server"), Some(up.into()), "{fw}: {}", st["vpns"]);
        // IPsec: charon runs on the MASTER only.
        assert_eq!(up_here("swanctl"), Some(up.into()), "{fw}: {}", st["vpns"]);
    }

    // An edit of the tunnel's file on the MASTER reaches the running tunnel
    // at the next role pass (`wg syncconf`, sessions kept).
    let (_, extra_pub) = wg_key_pair();
    let mut wg0 = lab.read("fw1", "/etc/wireguard/wg0.conf");
    wg0.push_str(&format!(
        "\n[Peer]\nPublicKey = {extra_pub}\nAllowedIPs = 10.99.20.9/32\n"
    ));
    lab.write("fw1", "/etc/wireguard/wg0.conf", wg0);
    tool_ok(lab, "fw1", "ns-ha-role", &["apply"]);
    assert!(
        node_wg(lab, "fw1", &["show", "wg0", "peers"]).contains(&extra_pub),
        "the edited wg0.conf did not reach fw1's tunnel"
    );

    client.start(lab);
    let up = wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
        lab.ping("wan", LAN_BY_WG, 1)
            && lab.ping("wan", LAN_BY_OVPN, 1)
            && lab.ping("wan", LAN_BY_IPSEC, 1)
    });
    assert!(
        up,
        "the road warrior cannot reach the LAN through the three tunnels: {}\n{}",
        std::fs::read_to_string(client.dir.join("openvpn.log")).unwrap_or_default(),
        std::fs::read_to_string(client.dir.join("ipsec/run/charon.log")).unwrap_or_default()
    );
    assert_ipsec_carries(lab, &client, "fw1");

    // The primary records the client's endpoint; the sync carries it.
    let recorded = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        std::fs::read_to_string(lab.path("fw1", "/etc/wireguard/ns-ha-endpoints.json"))
            .is_ok_and(|t| t.contains(&format!("{}:", net::WAN_HOST)))
    });
    assert!(
        recorded,
        "fw1 did not record the WireGuard client's endpoint"
    );
    tool_ok(lab, "fw1", "ns-ha-sync", &["push"]);
    assert_eq!(
        lab.read("fw2", "/etc/wireguard/ns-ha-endpoints.json"),
        lab.read("fw1", "/etc/wireguard/ns-ha-endpoints.json")
    );
    assert_eq!(
        mode(lab, "fw2", "/etc/wireguard/ns-ha-endpoints.json"),
        0o600
    );
    if forget {
        std::fs::remove_file(lab.path("fw2", "/etc/wireguard/ns-ha-endpoints.json"))
            .expect("remove fw2's endpoints");
    }

    let wg = Ping::start(lab, LAN_BY_WG, lab.dir().join("ping-wg.txt"));
    let ovpn = Ping::start(lab, LAN_BY_OVPN, lab.dir().join("ping-ovpn.txt"));
    let ipsec = Ping::start(lab, LAN_BY_IPSEC, lab.dir().join("ping-ipsec.txt"));
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !wg.stamps().is_empty() && !ovpn.stamps().is_empty() && !ipsec.stamps().is_empty(),
        "no traffic before the crash"
    );
    let t0 = epoch();
    lab.crash("fw1");
    let start = Instant::now();
    let all = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        wg.resumed_after(t0).is_some()
            && ovpn.resumed_after(t0).is_some()
            && ipsec.resumed_after(t0).is_some()
    });
    let (w, o, i) = (
        wg.resumed_after(t0),
        ovpn.resumed_after(t0),
        ipsec.resumed_after(t0),
    );
    assert!(
        all,
        "after {:?} traffic resumed through WireGuard: {w:?}, OpenVPN: {o:?}, IPsec: {i:?}; fw2 runs {VPN_STATE} = {:?}",
        start.elapsed(),
        vpn_state(lab, "fw2")
    );
    // (A crashed keepalived leaves its VIPs on fw1, whose links are down.)
    assert!(
        lab.has_addr("fw2", net::WAN_VIP),
        "fw2 does not hold the WAN VIP"
    );
    let state = vpn_state(lab, "fw2");
    assert_eq!(state, [true; 6], "fw2 after the failover: {VPN_STATE}");
    // The client's new IPsec SA is with fw2, and carries the traffic.
    assert_ipsec_carries(lab, &client, "fw2");
    let r = Resumed {
        wireguard: w.unwrap_or(f64::MAX),
        openvpn: o.unwrap_or(f64::MAX),
        ipsec: i.unwrap_or(f64::MAX),
    };
    eprintln!(
        "traffic through the tunnels again after the crash: WireGuard {:.2} s, OpenVPN {:.2} s, IPsec {:.2} s",
        r.wireguard, r.openvpn, r.ipsec
    );
    (r, client)
}

/// The road warrior reaches the IPsec LAN address through its tunnel to
/// `gateway`: the route goes into kernel-libipsec's TUN, the client's
/// CHILD_SA has a virtual IP from the pool, and the gateway has the
/// client's IKE SA, with ESP packets in.
fn assert_ipsec_carries(lab: &Lab, client: &Client, gateway: &str) {
    let route = lab.exec_ok("wan", &["ip", "route", "get", LAN_BY_IPSEC]);
    assert!(
        route.contains("dev ipsec0"),
        "the road warrior's route to {LAN_BY_IPSEC} is not through the tunnel: {route}"
    );
    assert!(lab.ping("wan", LAN_BY_IPSEC, 1), "no reply through IPsec");
    let sas = client.ipsec_sas(lab);
    assert!(
        sas.contains("ESTABLISHED") && sas.contains("[10.99.22."),
        "the road warrior's SAs: {sas}"
    );
    let sas = node_ipsec_sas(lab, gateway);
    // The CHILD_SA's "in SPI, N bytes, M packets" line.
    let packets_in = sas
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("in "))
        .filter_map(|l| l.split(',').find_map(|f| f.trim().strip_suffix(" packets")))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .max();
    assert!(
        sas.contains("ESTABLISHED")
            && sas.contains("'rw.lab'")
            && sas.contains("TUNNEL-in-UDP")
            && packets_in.unwrap_or(0) > 0,
        "{gateway}'s SAs (ESP packets in {packets_in:?}): {sas}"
    );
}

#[test]
fn vpns_follow_the_master_and_clients_resume_after_a_failover() {
    let lab = Lab::up();
    let (r, client) = failover_round(&lab, false);
    // The client's own retry would take 15 s (WireGuard's handshake
    // timeout); the new master starts the handshake itself.
    assert!(
        r.wireguard < 5.0,
        "WireGuard resumed only after {:.2} s",
        r.wireguard
    );
    assert!(
        r.openvpn < 10.0,
        "OpenVPN resumed only after {:.2} s",
        r.openvpn
    );
    // The IPsec client's DPD (1 s) and retransmissions (3 x 1 s) declare
    // the old master dead, then it connects to the new one.
    assert!(r.ipsec < 10.0, "IPsec resumed only after {:.2} s", r.ipsec);

    // fw1 comes back and takes the master role back (it preempts): fw2
    // stops its charon, and the road warrior, unchanged, connects to fw1
    // again, by the DELETE fw2's charon sends as it stops (`close_action
    // = start`) or, if that is lost with the VIP, by DPD.
    let ipsec = Ping::start(&lab, LAN_BY_IPSEC, lab.dir().join("ping-ipsec-back.txt"));
    std::thread::sleep(Duration::from_millis(500));
    let t0 = epoch();
    lab.revive("fw1");
    assert_vpns_only_on(&lab, "fw1", "after fw1 came back");
    let back = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        ipsec.resumed_after(t0).is_some()
    });
    let log = std::fs::read_to_string(client.dir.join("ipsec/run/charon.log")).unwrap_or_default();
    assert!(
        back,
        "IPsec traffic did not resume after fw1 took the master role back: {:?}",
        ipsec.stamps().last()
    );
    assert_ipsec_carries(&lab, &client, "fw1");
    let stamps = ipsec.stamps();
    let outage = stamps
        .windows(2)
        .filter(|w| w[1] >= t0)
        .map(|w| w[1] - w[0])
        .fold(0.0, f64::max);
    eprintln!(
        "IPsec after fw1 took the master role back: traffic again {:.2} s after the revive, outage {outage:.2} s; the client {}",
        ipsec.resumed_after(t0).unwrap_or(f64::MAX),
        if log.contains("received DELETE for IKE_SA") {
            "received the old master's DELETE"
        } else {
            "saw no DELETE (DPD)"
        }
    );
}

#[test]
#[ignore = "benchmark: make bench"]
fn bench_vpn_failover() {
    let mut wg = Vec::new();
    let mut ovpn = Vec::new();
    let mut ipsec = Vec::new();
    for _ in 0..3 {
        let lab = Lab::up();
        let (r, _) = failover_round(&lab, false);
        wg.push(r.wireguard);
        ovpn.push(r.openvpn);
        ipsec.push(r.ipsec);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "VPN failover, crash of fw1 to traffic through the tunnel (3 fresh labs): WireGuard median {:.2} s {wg:.2?} (goal < 2 s), OpenVPN median {:.2} s {ovpn:.2?} (goal < 10 s), IPsec median {:.2} s {ipsec:.2?}",
        median(&mut wg.clone()),
        median(&mut ovpn.clone()),
        median(&mut ipsec.clone())
    );
}

/// The baseline: the same failover when fw2 has no recorded endpoint, so
/// the WireGuard client resumes only by its own handshake retry.
#[test]
#[ignore = "benchmark: make bench"]
fn bench_wireguard_without_recorded_endpoints() {
    let lab = Lab::up();
    let wg = failover_round(&lab, true).0.wireguard;
    println!(
        "WireGuard failover without the recorded endpoints (the client's own retry): {wg:.2} s"
    );
}
