//! The one exit-code table shared by every ns-ha tool.
//!
//! Scripts (keepalived notify hooks, cron, hotplug, an administrator's shell)
//! branch on exit codes, so every tool must mean the same thing by the same
//! number. Errors carry their code as a [`Failure`] in the `anyhow` chain; the
//! top of each binary finds it with [`code_of`].

use std::fmt;

/// Exit codes of every ns-ha tool. The numbers are part of the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    /// Success.
    Ok = 0,
    /// An operation failed for a reason not listed below (I/O error, bug).
    Failure = 1,
    /// Command-line usage error (unknown flag, missing argument). clap uses 2 too.
    Usage = 2,
    /// A value given by the administrator is invalid (address, interface name, VIP).
    InvalidInput = 3,
    /// The cluster or node configuration is missing, malformed or has unknown fields.
    Config = 4,
    /// The node is not in a state where this action is allowed (not paired, wrong role, disabled).
    State = 5,
    /// The peer cannot be reached or did not answer as expected.
    Peer = 6,
    /// A security check refused the operation (host key mismatch, path escape, hash mismatch).
    Security = 7,
    /// A conflict: stale generation, local edits on the backup, lock held, another cluster.
    Conflict = 8,
    /// An external program (keepalived, conntrackd, an init script) failed or is missing.
    Dependency = 9,
    /// A health check failed (ns-ha-check) or a verification found a difference.
    Unhealthy = 10,
    /// An action did not finish in time.
    Timeout = 11,
}

impl Code {
    /// Every code with its one-line meaning, for `--help` texts and docs.
    pub const TABLE: &'static [(Code, &'static str)] = &[
        (Code::Ok, "success"),
        (
            Code::Failure,
            "operation failed (I/O error or unexpected condition)",
        ),
        (Code::Usage, "command-line usage error"),
        (
            Code::InvalidInput,
            "invalid value given (address, interface, VIP)",
        ),
        (
            Code::Config,
            "configuration missing, malformed or with unknown fields",
        ),
        (
            Code::State,
            "not allowed in this node's state (not paired, wrong role, disabled)",
        ),
        (Code::Peer, "peer unreachable or answered unexpectedly"),
        (
            Code::Security,
            "refused by a security check (host key, path, hash)",
        ),
        (
            Code::Conflict,
            "conflict (stale generation, local edits, lock held, other cluster)",
        ),
        (
            Code::Dependency,
            "external program failed or missing (keepalived, init script)",
        ),
        (Code::Unhealthy, "health check failed or differences found"),
        (Code::Timeout, "action timed out"),
    ];

    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// An error with an exit code. Put it at the root of an `anyhow` chain with
/// [`fail`] or [`Failure::new`]; context added above it keeps the code.
#[derive(Debug)]
pub struct Failure {
    pub code: Code,
    pub message: String,
}

impl Failure {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Build an `anyhow::Error` that carries `code`.
pub fn fail(code: Code, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure::new(code, message))
}

/// The exit code of an error: the first [`Failure`] found in its chain, else `Failure`.
/// A [`Failure`] carried inside an `io::Error` (a stream that knows why it
/// failed, such as the sync channel to the peer) counts too.
pub fn code_of(err: &anyhow::Error) -> Code {
    err.chain()
        .find_map(|cause| {
            cause.downcast_ref::<Failure>().or_else(|| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .and_then(|e| e.get_ref())
                    .and_then(|inner| inner.downcast_ref::<Failure>())
            })
        })
        .map(|f| f.code)
        .unwrap_or(Code::Failure)
}

/// An `io::Error` of `kind` that carries `code` (see [`code_of`]).
pub fn io_failure(
    kind: std::io::ErrorKind,
    code: Code,
    message: impl Into<String>,
) -> std::io::Error {
    std::io::Error::new(kind, Failure::new(code, message))
}

/// Text for the end of every tool's `--help`.
pub fn help_table() -> String {
    let mut out = String::from("Exit codes:\n");
    for (code, meaning) in Code::TABLE {
        out.push_str(&format!("  {:>2}  {}\n", code.as_u8(), meaning));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn code_survives_context() {
        let err = Err::<(), _>(fail(Code::Security, "host key mismatch"))
            .context("pairing with 10.99.0.2")
            .unwrap_err();
        assert_eq!(code_of(&err), Code::Security);
        assert_eq!(
            format!("{err:#}"),
            "pairing with 10.99.0.2: host key mismatch"
        );
    }

    #[test]
    fn code_survives_an_io_error_and_context() {
        let io = io_failure(std::io::ErrorKind::TimedOut, Code::Peer, "no answer");
        let err = Err::<(), _>(io).context("sending file data").unwrap_err();
        assert_eq!(code_of(&err), Code::Peer);
        assert!(format!("{err:#}").contains("no answer"));
    }

    #[test]
    fn plain_errors_are_failures() {
        let err = anyhow::anyhow!("boom");
        assert_eq!(code_of(&err), Code::Failure);
    }

    #[test]
    fn table_numbers_are_distinct() {
        let mut seen: Vec<u8> = Code::TABLE.iter().map(|(c, _)| c.as_u8()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), Code::TABLE.len());
    }
}
