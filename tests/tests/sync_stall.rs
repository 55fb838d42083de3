//! Issue 8 items 4 and 13, over the real sshd: a sender frozen mid-push
//! (SIGSTOP) releases the backup's sync lock within the receiver's idle
//! timeout, so the next push from a live primary succeeds; and a receiver
//! killed mid-transfer is noticed by the sender at once (exit 6, peer
//! unreachable), not after a socket timeout.

#[path = "sync_support.rs"]
mod sync_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ns_ha_tests::{wait_until, Lab};
use sync_support::*;

/// The receiver's idle timeout (`ns_ha_sync::wire::IDLE_TIMEOUT`, documented
/// in ns-ha-sync/README.md).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const BIG: &str = "/etc/acme/big.bin";
const BIG_LEN: usize = 128 << 20;

/// A large file with incompressible content, so its transfer takes a while.
fn write_big(lab: &Lab, seed: u64) {
    let mut x = seed | 1;
    let mut data = Vec::with_capacity(BIG_LEN);
    while data.len() < BIG_LEN {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    lab.write("fw1", BIG, data);
}

/// `ns-ha-sync push` on fw1 as a child process whose PID is the push itself
/// (`ip netns exec` execs the command).
fn spawn_push(lab: &Lab) -> Child {
    let exe = lab.bin("ns-ha-sync");
    let root = lab.root("fw1");
    Command::new("ip")
        .args(["netns", "exec", &lab.ns("fw1")])
        .arg(&exe)
        .arg("--root")
        .arg(&root)
        .arg("push")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning push")
}

/// Bytes staged so far on fw2 (the transfer is under way once they grow).
fn staged_bytes(lab: &Lab) -> u64 {
    let dir = lab.path("fw2", "/etc/ns-ha-sync/staging");
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn wait_mid_transfer(lab: &Lab, push: &mut Child) {
    let under_way = wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
        staged_bytes(lab) > 8 << 20 || push.try_wait().ok().flatten().is_some()
    });
    assert!(under_way, "the push never started transferring the file");
    assert!(
        push.try_wait().unwrap().is_none(),
        "the push finished before it could be interrupted: make BIG_LEN larger"
    );
    assert!(
        staged_bytes(lab) < BIG_LEN as u64,
        "the file was already staged whole"
    );
}

/// PIDs of the forced command (`ns-ha-sync ... receive`) in fw2's namespace.
fn receiver_pids(lab: &Lab) -> Vec<u32> {
    let out = Command::new("ip")
        .args(["netns", "pids", &lab.ns("fw2")])
        .output()
        .expect("ip netns pids");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            args.first().is_some_and(|a0| a0.ends_with(b"ns-ha-sync"))
                && args.iter().any(|a| *a == b"receive")
        })
        .collect()
}

/// Every process of fw2's namespace with its command line (for failure messages).
fn ns_processes(lab: &Lab) -> String {
    let out = Command::new("ip")
        .args(["netns", "pids", &lab.ns("fw2")])
        .output()
        .expect("ip netns pids");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            format!(
                "{pid}: {}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success(), "kill -{sig} {pid} failed");
}

/// Whether anyone holds the flock `lock` (probed with flock(1), non-blocking).
fn lock_held(lock: &Path) -> bool {
    let st = Command::new("flock")
        .args(["-n", "-E", "75"])
        .arg(lock)
        .arg("true")
        .status()
        .expect("flock");
    st.code() == Some(75)
}

/// Kills the frozen sender (by PID) even when an assertion fails.
struct Frozen(Option<Child>);
impl Drop for Frozen {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            signal(c.id(), "KILL");
            let _ = c.wait();
        }
    }
}

/// A push from fw1 as a rebooted primary would run it: a fresh `/run` (the
/// frozen sender still holds fw1's own sync lock in the old one).
fn push_after_reboot(lab: &Lab) -> std::process::Output {
    let exe = lab.bin("ns-ha-sync");
    let root = lab.root("fw1");
    let script = format!(
        "mkdir -p {run} && mount -t tmpfs ns-ha-test {run} && exec {exe} --root {root} push",
        run = root.join("run").display(),
        exe = exe.display(),
        root = root.display()
    );
    lab.exec(
        "fw1",
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ],
    )
}

#[test]
fn a_frozen_sender_releases_the_backup_within_the_idle_timeout() {
    let lab = paired_lab();
    write_big(&lab, 1);
    let mut push = spawn_push(&lab);
    let pid = push.id();
    wait_mid_transfer(&lab, &mut push);
    signal(pid, "STOP");
    let frozen_at = Instant::now();
    let frozen = Frozen(Some(push));
    let lock: PathBuf = lab.path("fw2", "/run/ns-ha/sync.lock");
    assert!(
        lock_held(&lock),
        "the receiver of the frozen push does not hold fw2's sync lock"
    );
    // While the receiver waits, a push from the live primary meets the lock.
    let early = push_after_reboot(&lab);
    assert_eq!(
        code(&early),
        8,
        "a push during the stall: {}",
        describe(&early)
    );
    let released = wait_until(
        IDLE_TIMEOUT + Duration::from_secs(10),
        Duration::from_millis(100),
        || !lock_held(&lock),
    );
    let release = frozen_at.elapsed();
    assert!(
        released,
        "fw2's sync lock still held {release:?} after the sender froze"
    );
    assert!(
        receiver_pids(&lab).is_empty(),
        "the receiver of the frozen push is still running"
    );
    let next = push_after_reboot(&lab);
    let done = frozen_at.elapsed();
    assert_eq!(code(&next), 0, "the next push: {}", describe(&next));
    assert_eq!(
        std::fs::metadata(lab.path("fw2", BIG))
            .map(|m| m.len())
            .ok(),
        Some(BIG_LEN as u64),
        "the next push did not deliver the file"
    );
    println!(
        "frozen sender released fw2's sync lock after {:.1} s (idle timeout {} s); next push done {:.1} s after the freeze",
        release.as_secs_f64(),
        IDLE_TIMEOUT.as_secs(),
        done.as_secs_f64()
    );
    drop(frozen);
}

#[test]
fn a_receiver_killed_mid_transfer_fails_the_push_at_once_with_exit_6() {
    let lab = paired_lab();
    let mut report = Vec::new();
    for round in 0..3u64 {
        write_big(&lab, 7 + round);
        let mut push = spawn_push(&lab);
        wait_mid_transfer(&lab, &mut push);
        let receivers = receiver_pids(&lab);
        assert_eq!(
            receivers.len(),
            1,
            "round {round}: expected one receiver on fw2, found {receivers:?} among {}",
            ns_processes(&lab)
        );
        signal(receivers[0], "KILL");
        let killed_at = Instant::now();
        let exited = wait_until(Duration::from_secs(20), Duration::from_millis(10), || {
            push.try_wait().ok().flatten().is_some()
        });
        let noticed = killed_at.elapsed();
        if !exited {
            signal(push.id(), "KILL");
        }
        let out = push.wait_with_output().expect("push output");
        assert!(
            exited,
            "round {round}: the sender still runs {noticed:?} after the kill"
        );
        assert_eq!(
            code(&out),
            6,
            "round {round}: the sender's exit after the receiver was killed: {}",
            describe(&out)
        );
        assert!(
            noticed < Duration::from_secs(2),
            "round {round}: the sender noticed the dead receiver only after {noticed:?}"
        );
        report.push(format!("{:.2} s", noticed.as_secs_f64()));
        // The backup discards what the killed receiver staged.
        sync_ok(&lab, "fw2", &["recover"]);
    }
    // The backup recovers and the next push delivers the file.
    sync_ok(&lab, "fw1", &["push"]);
    assert_eq!(
        std::fs::metadata(lab.path("fw2", BIG))
            .map(|m| m.len())
            .ok(),
        Some(BIG_LEN as u64)
    );
    println!(
        "sender exited 6 after the receiver was killed, in {}",
        report.join(", ")
    );
}
