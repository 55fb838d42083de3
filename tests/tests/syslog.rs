//! Issue 11: every tool logs to syslog with its name as tag, the role engine
//! too although keepalived throws its stdout and stderr away. The test plays
//! the syslog daemon: it binds a unix datagram socket at each firewall's
//! `NODEROOT/dev/log` (the tools log to their node root's `/dev/log`), then
//! pairs the lab (fw1 becomes MASTER: a role transition run by keepalived;
//! dnsmasq has no config, so its start is a failed action) and pushes a
//! change (a sync, logged by the sender on fw1 and the receiver on fw2).

use ns_ha_tests::{cluster, wait_until, Lab, FIREWALLS};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A syslog socket of one node and what arrived on it, read all the time by
/// a thread as a syslog daemon does (a unix datagram socket queues only a
/// few records: the tools drop a record rather than wait for syslog).
struct Syslog {
    lines: Arc<Mutex<Vec<String>>>,
}

impl Syslog {
    fn bind(lab: &Lab, node: &str) -> Syslog {
        let path = lab.path(node, "/dev/log");
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir dev");
        let socket =
            UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        // The thread ends with the test process; the socket file goes with the lab.
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) => {
                        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
                        sink.lock().expect("lines").push(line);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        eprintln!("syslog socket: {e}");
                        return;
                    }
                }
            }
        });
        Syslog { lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Wait until a line from `tool` at priority `pri` contains every one of `words`.
    fn wait_for(&self, pri: u8, tool: &str, words: &[&str]) -> Option<String> {
        let prefix = format!("<{pri}>{tool}[");
        let mut found = None;
        wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
            found = self
                .lines()
                .into_iter()
                .find(|l| l.starts_with(&prefix) && words.iter().all(|w| l.contains(w)));
            found.is_some()
        });
        found
    }
}

#[test]
fn a_role_transition_a_sync_and_a_failed_action_reach_syslog_with_the_tools_tag() {
    let lab = Lab::up();
    let logs: Vec<Syslog> = FIREWALLS.iter().map(|fw| Syslog::bind(&lab, fw)).collect();
    // No dnsmasq config: MASTER's start of dnsmasq fails.
    cluster::pair(&lab);

    // daemon.info (30): the transition keepalived's notify ran.
    let fw1 = &logs[0];
    let line = fw1.wait_for(30, "ns-ha-role", &["-> MASTER"]);
    assert!(
        line.is_some(),
        "no ns-ha-role transition to MASTER in fw1's syslog (socket there: {}): {:#?}\nfw2's: {:#?}",
        lab.path("fw1", "/dev/log").exists(),
        fw1.lines(),
        logs[1].lines()
    );
    // daemon.warning (28): the failed action, named.
    let line = fw1.wait_for(28, "ns-ha-role", &["dnsmasq", "failed"]);
    assert!(
        line.is_some(),
        "no failed dnsmasq action in fw1's syslog: {:#?}",
        fw1.lines()
    );

    lab.write(
        "fw1",
        "/etc/nftables.d/logged.nft",
        "# a change the sync carries\n",
    );
    cluster::tool_ok(&lab, "fw1", "ns-ha-sync", &["push"]);
    let line = logs[0].wait_for(30, "ns-ha-sync", &["pushed generation"]);
    assert!(
        line.is_some(),
        "no push in fw1's syslog: {:#?}",
        logs[0].lines()
    );
    let line = logs[1].wait_for(30, "ns-ha-sync", &["applied generation"]);
    assert!(
        line.is_some(),
        "no apply in fw2's syslog: {:#?}",
        logs[1].lines()
    );
    // Each line is one record: `<PRI>TAG[PID]: message`, the pid a number.
    for l in logs.iter().flat_map(|s| s.lines()) {
        let tag_end = l
            .find("]: ")
            .unwrap_or_else(|| panic!("no 'TAG[PID]: ' in {l:?}"));
        let open = l[..tag_end].rfind('[').expect("pid");
        assert!(l[open + 1..tag_end].parse::<u32>().is_ok(), "pid of {l:?}");
        assert!(!l.contains('\n'), "{l:?}");
    }
}
