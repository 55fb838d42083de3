//! Running external programs, behind a trait.
//!
//! The tools drive real programs (keepalived, ip, init scripts, conntrackd).
//! They are always run directly with an argument vector, never through a
//! shell, so no remote or user data is ever parsed by one. The trait lets unit
//! tests record the calls with [`RecordingRunner`] instead of running them.

use anyhow::{Context, Result};
use std::io::Read;
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

/// Runs real programs with a timeout (the child is killed when it expires).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn run(&self, program: &str, args: &[String], timeout: Duration) -> Result<CmdOutput> {
        log::debug!("run: {program} {}", args.join(" "));
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                let code = if e.kind() == std::io::ErrorKind::NotFound {
                    Code::Dependency
                } else {
                    Code::Failure
                };
                fail(code, format!("cannot run {program}: {e}"))
            })?;
        // Drain the pipes on threads so a chatty child cannot block on a full pipe.
        let mut out_pipe = child.stdout.take().context("child stdout")?;
        let mut err_pipe = child.stderr.take().context("child stderr")?;
        let out_t = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = out_pipe.read_to_end(&mut s);
            s
        });
        let err_t = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = err_pipe.read_to_end(&mut s);
            s
        });
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        let status = loop {
            if let Some(st) = child.try_wait().context("waiting for child")? {
                break st;
            }
            if Instant::now() >= deadline {
                timed_out = true;
                let _ = child.kill();
                break child.wait().context("reaping timed-out child")?;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // A daemonizing child may leave a grandchild holding the pipes open:
        // do not wait for the readers longer than a moment after the exit.
        let stdout = join_reader(out_t);
        let stderr = join_reader(err_t);
        Ok(CmdOutput {
            status: if timed_out { None } else { status.code() },
            stdout,
            stderr,
            timed_out,
        })
    }
}

fn join_reader(t: std::thread::JoinHandle<Vec<u8>>) -> String {
    let deadline = Instant::now() + Duration::from_millis(500);
    while !t.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    if t.is_finished() {
        String::from_utf8_lossy(&t.join().unwrap_or_default()).into_owned()
    } else {
        String::new()
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
