//! Running external programs, behind a trait.
//!
//! The tools drive real programs (keepalived, ip, init scripts, conntrackd).
//! They are always run directly with an argument vector, never through a
//! shell, so no remote or user data is ever parsed by one. Each runs in a
//! process group of its own, killed whole on timeout, so nothing a timed-out
//! init script or hook forked keeps running. The trait lets unit tests record
//! the calls with [`RecordingRunner`] instead of running them.

use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::exit::{fail, Code};

/// What a finished program left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmdOutput {
    /// Exit status; `None` when it was killed by a signal or timed out.
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// The last non-empty line of stderr (or stdout), for one-line error messages.
    pub fn reason(&self) -> String {
        let pick = |s: &str| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_string())
        };
        pick(&self.stderr)
            .or_else(|| pick(&self.stdout))
            .unwrap_or_else(|| match (self.timed_out, self.status) {
                (true, _) => "timed out".into(),
                (_, Some(c)) => format!("exit status {c}"),
                _ => "killed by a signal".into(),
            })
    }
}

/// Runs programs. Implementations: [`SystemRunner`] (real), [`RecordingRunner`] (tests).
pub trait CommandRunner: Send + Sync {
    /// Run `program` with `args`, killing it after `timeout`.
    fn run(&self, program: &str, args: &[String], timeout: Duration) -> Result<CmdOutput>;

    /// Run and require exit status 0; the error names the program and its reason.
    fn run_ok(&self, program: &str, args: &[String], timeout: Duration) -> Result<CmdOutput> {
        let out = self.run(program, args, timeout)?;
        if out.timed_out {
            return Err(fail(
                Code::Timeout,
                format!("{program} {} timed out after {timeout:?}", args.join(" ")),
            ));
        }
        if !out.success() {
            return Err(fail(
                Code::Dependency,
                format!("{program} {} failed: {}", args.join(" "), out.reason()),
            ));
        }
        Ok(out)
    }
}

/// Runs real programs with a timeout.
///
/// Each program runs in a process group of its own. On timeout the whole
/// group is killed, so an init script or hook that forked (a `sleep &`, a
/// helper that never returns) leaves nothing running behind it. The output
/// is read on the calling thread, with no helper threads that could outlive
/// the call: after the program exits (or its group is killed), its pipes are
/// read for at most [`PIPE_GRACE`] more, then closed, so a daemon it started
/// that kept stdout or stderr open cannot hold the call (such a daemon gets
/// EPIPE if it writes there later; daemons should log elsewhere).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

/// How long the pipes are still read after the program ended.
pub const PIPE_GRACE: Duration = Duration::from_millis(500);

/// One output pipe of the child and what was read from it.
struct Capture {
    pipe: Option<std::fs::File>,
    data: Vec<u8>,
}

impl Capture {
    fn new(fd: Option<OwnedFd>) -> Self {
        Capture {
            pipe: fd.map(std::fs::File::from),
            data: Vec::new(),
        }
    }

    /// Read what is available (poll said so); EOF or an error closes the pipe.
    fn read_ready(&mut self) {
        let Some(pipe) = self.pipe.as_mut() else {
            return;
        };
        let mut buf = [0u8; 16384];
        match pipe.read(&mut buf) {
            Ok(0) => self.pipe = None,
            Ok(n) => self.data.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => self.pipe = None,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// Wait up to `wait` for either pipe to have data or close, and read it.
fn read_pipes(pipes: &mut [&mut Capture; 2], wait: Duration) {
    let open: Vec<usize> = (0..2).filter(|i| pipes[*i].pipe.is_some()).collect();
    if open.is_empty() {
        std::thread::sleep(wait);
        return;
    }
    let ready: Vec<bool> = {
        let mut fds: Vec<PollFd> = open
            .iter()
            .filter_map(|i| pipes[*i].pipe.as_ref())
            .map(|f| PollFd::new(f.as_fd(), PollFlags::POLLIN))
            .collect();
        let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
        if poll(&mut fds, PollTimeout::from(ms)).is_err() {
            return; // EINTR: the caller loops
        }
        fds.iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect()
    };
    for (i, r) in open.into_iter().zip(ready) {
        if r {
            pipes[i].read_ready();
        }
    }
}

impl CommandRunner for SystemRunner {
    fn run(&self, program: &str, args: &[String], timeout: Duration) -> Result<CmdOutput> {
        log::debug!("run: {program} {}", args.join(" "));
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| {
                let code = if e.kind() == std::io::ErrorKind::NotFound {
                    Code::Dependency
                } else {
                    Code::Failure
                };
                fail(code, format!("cannot run {program}: {e}"))
            })?;
        // The child leads its own group: the group id is its pid.
        let group = Pid::from_raw(i32::try_from(child.id()).context("child pid out of range")?);
        let mut out = Capture::new(child.stdout.take().map(OwnedFd::from));
        let mut err = Capture::new(child.stderr.take().map(OwnedFd::from));
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        let mut ended: Option<(std::process::ExitStatus, Instant)> = None;
        loop {
            let now = Instant::now();
            if ended.is_none() {
                if let Some(st) = child.try_wait().context("waiting for child")? {
                    ended = Some((st, now + PIPE_GRACE));
                } else if now >= deadline {
                    timed_out = true;
                    // The child is not reaped yet, so its pid (the group id)
                    // cannot have been reused.
                    let _ = killpg(group, Signal::SIGKILL);
                    let st = child.wait().context("reaping timed-out child")?;
                    ended = Some((st, Instant::now() + PIPE_GRACE));
                }
            }
            let pipes_closed = out.pipe.is_none() && err.pipe.is_none();
            match ended {
                Some(_) if pipes_closed => break,
                Some((_, grace_end)) if now >= grace_end => break,
                _ => {}
            }
            let wait = match ended {
                Some((_, grace_end)) => grace_end.saturating_duration_since(now),
                None => deadline.saturating_duration_since(now),
            };
            // Wake at least every 10 ms to notice the child's exit.
            read_pipes(
                &mut [&mut out, &mut err],
                wait.min(Duration::from_millis(10)),
            );
        }
        let status = ended.map(|(st, _)| st);
        // Dropping the captures closes our ends of the pipes.
        Ok(CmdOutput {
            status: if timed_out {
                None
            } else {
                status.and_then(|s| s.code())
            },
            stdout: out.text(),
            stderr: err.text(),
            timed_out,
        })
    }
}

/// A fake runner for unit tests: records every call and answers from a script
/// of canned outputs keyed by program name (default: success, empty output).
/// Built only for tests (feature `testing`), never into a tool.
#[cfg(any(test, feature = "testing"))]
#[derive(Default)]
pub struct RecordingRunner {
    pub calls: std::sync::Mutex<Vec<Vec<String>>>,
    pub answers: std::sync::Mutex<Vec<(String, CmdOutput)>>,
}

#[cfg(any(test, feature = "testing"))]
impl RecordingRunner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Answer the next call whose program or first argument contains `needle`.
    pub fn answer(&self, needle: &str, out: CmdOutput) {
        self.answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((needle.to_string(), out));
    }

    pub fn calls(&self) -> Vec<Vec<String>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(any(test, feature = "testing"))]
impl CommandRunner for RecordingRunner {
    fn run(&self, program: &str, args: &[String], _timeout: Duration) -> Result<CmdOutput> {
        let mut line = vec![program.to_string()];
        line.extend(args.iter().cloned());
        let joined = line.join(" ");
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line);
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = answers
            .iter()
            .position(|(n, _)| joined.contains(n.as_str()))
        {
            return Ok(answers.remove(i).1);
        }
        Ok(CmdOutput {
            status: Some(0),
            ..Default::default()
        })
    }
}

/// Convenience: turn `&[&str]` into the owned argument vector the trait takes.
pub fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_without_shell_and_captures() {
        let out = SystemRunner
            .run("echo", &args(&["a;b", "$(x)"]), Duration::from_secs(5))
            .unwrap();
        assert_eq!(out.stdout, "a;b $(x)\n");
        assert!(out.success());
    }

    #[test]
    fn times_out_and_kills() {
        let start = Instant::now();
        let out = SystemRunner
            .run("sleep", &args(&["5"]), Duration::from_millis(100))
            .unwrap();
        assert!(out.timed_out);
        assert!(start.elapsed() < Duration::from_secs(3));
        let err = SystemRunner
            .run_ok("sleep", &args(&["5"]), Duration::from_millis(50))
            .unwrap_err();
        assert_eq!(crate::exit::code_of(&err), Code::Timeout);
    }

    /// The fields of /proc/PID/stat after "(comm)": state, ppid, pgrp, ...
    fn stat_fields(pid: i32) -> Option<Vec<String>> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = stat.rsplit_once(')')?.1;
        Some(rest.split_whitespace().map(str::to_string).collect())
    }

    /// Whether `pid` exists and is not a zombie.
    fn is_alive(pid: i32) -> bool {
        stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z"))
    }

    /// Processes of process group `pgid` that are still alive (zombies count as gone).
    fn live_members_of_group(pgid: i32) -> Vec<i32> {
        let pids = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok());
        pids.filter(|p| {
            stat_fields(*p).is_some_and(|f| f.len() > 2 && f[0] != "Z" && f[2] == pgid.to_string())
        })
        .collect()
    }

    #[test]
    fn timeout_kills_the_whole_process_group_and_returns_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pids");
        let start = Instant::now();
        // The shell forks a grandchild that keeps the pipes open, writes its
        // own pid (the group's id when it leads a group of its own) and the
        // grandchild's, then becomes a sleep itself.
        let script = format!(
            "sleep 30 & echo $$ $! > {}; exec sleep 30",
            pid_file.display()
        );
        let out = SystemRunner
            .run("sh", &args(&["-c", &script]), Duration::from_millis(300))
            .unwrap();
        let took = start.elapsed();
        assert!(out.timed_out);
        assert!(took < Duration::from_secs(2), "returned after {took:?}");
        let pids: Vec<i32> = std::fs::read_to_string(&pid_file)
            .unwrap()
            .split_whitespace()
            .map(|p| p.parse().expect("a pid"))
            .collect();
        assert_eq!(pids.len(), 2, "{pids:?}");
        let group = pids[0];
        // Killed processes are reaped by their new parent asynchronously.
        let left = || {
            let mut l = live_members_of_group(group);
            l.extend(pids.iter().filter(|p| is_alive(**p)));
            l
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        while !left().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(left().is_empty(), "still running: {:?}", left());
    }

    #[test]
    fn a_grandchild_holding_the_pipes_does_not_hold_the_call() {
        // The shell exits at once; its background child keeps stdout open.
        let start = Instant::now();
        let out = SystemRunner
            .run(
                "sh",
                &args(&["-c", "echo started; sleep 3 &"]),
                Duration::from_secs(10),
            )
            .unwrap();
        assert!(out.success());
        assert_eq!(out.stdout, "started\n");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn missing_program_is_dependency_error() {
        let err = SystemRunner
            .run("/nonexistent/prog", &[], Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(crate::exit::code_of(&err), Code::Dependency);
    }

    #[test]
    fn failure_reason_is_last_stderr_line() {
        let err = SystemRunner
            .run_ok(
                "sh",
                &args(&["-c", "echo first >&2; echo 'bad thing' >&2; exit 3"]),
                Duration::from_secs(5),
            )
            .unwrap_err();
        assert!(format!("{err:#}").ends_with("failed: bad thing"), "{err:#}");
    }
}
