//! Logging shared by every tool: stderr for people, syslog for the record.
//!
//! Results go to stdout; logs go to stderr (level from `-v` flags or
//! `RUST_LOG`), where an administrator at a shell sees them. But most runs
//! have nobody watching: keepalived starts the role engine and throws its
//! stdout and stderr away, procd/systemd run the sync watcher, cron runs
//! `apply`. So every record at `info` and above from ns-ha code also goes to
//! syslog, as one datagram on the node's `/dev/log` (logd on OpenWrt,
//! journald or rsyslog on Debian) with the tool's name as tag:
//! `<PRI>TAG[PID]: MESSAGE` (RFC 3164 without the timestamp, which every
//! local syslog daemon stamps itself; facility daemon). No syslog crate: the
//! format is one line on a `UnixDatagram`. A missing syslog costs nothing;
//! a busy one gets at most 50 ms, once per process, to take a record (its
//! queue holds only a few datagrams, and several tools log at once during a
//! failover); after that the process drops records rather than wait, so a
//! stalled syslog daemon never holds a failover up.
//!
//! The socket is the node root's `/dev/log`, so a lab node's tools log to
//! `NODEROOT/dev/log` (a lab test binds its own socket there); the variable
//! [`SYSLOG_SOCKET_ENV`] names another socket (a test hook, and a way to
//! log elsewhere).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The syslog socket of a node (under its root).
pub const SYSLOG_SOCKET: &str = "/dev/log";

/// How long one record may wait for a busy syslog, once per process.
const SYSLOG_WAIT: std::time::Duration = std::time::Duration::from_millis(50);
/// Overrides the syslog socket path (absolute path, not under the root); empty: no syslog.
pub const SYSLOG_SOCKET_ENV: &str = "NS_HA_SYSLOG_SOCKET";
/// syslog facility `daemon`.
const FACILITY_DAEMON: u8 = 3;
/// The longest message sent (a datagram is dropped whole when too large).
const MAX_MESSAGE: usize = 4000;

/// Initialise logging for `tool` on the node at `root` (`None`: `/`):
/// stderr as env_logger prints it (`RUST_LOG` wins; otherwise `warn`, `info`
/// with one `-v`, `debug` with two) and syslog from `info` up.
pub fn init(tool: &str, verbosity: u8, root: Option<&Path>) {
    let default = match verbosity {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let env = env_logger::Env::default().default_filter_or(default);
    let stderr = env_logger::Builder::from_env(env)
        .format_timestamp_millis()
        .target(env_logger::Target::Stderr)
        .build();
    let syslog = socket_path(root).and_then(|p| Syslog::connect(tool, &p));
    let max = if syslog.is_some() {
        stderr.filter().max(LevelFilter::Info)
    } else {
        stderr.filter()
    };
    let logger = ToolLogger { stderr, syslog };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(max);
    }
}

/// The syslog socket to use: the environment's override, else the root's `/dev/log`.
fn socket_path(root: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(SYSLOG_SOCKET_ENV) {
        return (!p.is_empty()).then(|| PathBuf::from(p));
    }
    let rel = SYSLOG_SOCKET.trim_start_matches('/');
    Some(root.unwrap_or(Path::new("/")).join(rel))
}

/// stderr through env_logger, and syslog.
struct ToolLogger {
    stderr: env_logger::Logger,
    syslog: Option<Syslog>,
}

impl ToolLogger {
    /// Records syslog takes: `info` and above, from ns-ha's own crates
    /// (a dependency's chatter stays on stderr at `-v`).
    fn to_syslog(meta: &Metadata) -> bool {
        meta.level() <= Level::Info && meta.target().starts_with("ns_ha")
    }
}

impl Log for ToolLogger {
    fn enabled(&self, meta: &Metadata) -> bool {
        self.stderr.enabled(meta) || (self.syslog.is_some() && Self::to_syslog(meta))
    }

    fn log(&self, record: &Record) {
        if self.stderr.matches(record) {
            self.stderr.log(record);
        }
        if let Some(s) = &self.syslog {
            if Self::to_syslog(record.metadata()) {
                s.send(record.level(), &record.args().to_string());
            }
        }
    }

    fn flush(&self) {
        self.stderr.flush();
    }
}

/// A connected syslog socket and the tag of this process.
struct Syslog {
    socket: Mutex<UnixDatagram>,
    tag: String,
}

impl Syslog {
    fn connect(tool: &str, path: &Path) -> Option<Syslog> {
        let socket = UnixDatagram::unbound().ok()?;
        socket.connect(path).ok()?;
        socket.set_write_timeout(Some(SYSLOG_WAIT)).ok()?;
        Some(Syslog {
            socket: Mutex::new(socket),
            tag: format!("{tool}[{}]", std::process::id()),
        })
    }

    /// Send one record. A busy syslog (its queue of a few datagrams full,
    /// as when several tools log at once during a failover) gets up to
    /// [`SYSLOG_WAIT`] to take it; one that does not is taken as stalled
    /// and the process drops its records from then on rather than wait again.
    fn send(&self, level: Level, message: &str) {
        let line = format_line(&self.tag, level, message);
        if let Ok(s) = self.socket.lock() {
            if let Err(e) = s.send(line.as_bytes()) {
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) {
                    let _ = s.set_nonblocking(true);
                }
            }
        }
    }
}

/// syslog severity of a log level.
fn severity(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// One syslog datagram: `<PRI>TAG: MESSAGE`, on one line (newlines become
/// spaces, so a multi-line error stays one record), at most [`MAX_MESSAGE`] bytes.
pub fn format_line(tag: &str, level: Level, message: &str) -> String {
    let pri = FACILITY_DAEMON * 8 + severity(level);
    let mut msg: String = message
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    if msg.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg.truncate(end);
    }
    format!("<{pri}>{tag}: {msg}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_rfc3164_line_with_the_tag_and_severity() {
        assert_eq!(
            format_line("ns-ha-role[42]", Level::Info, "BACKUP -> MASTER"),
            "<30>ns-ha-role[42]: BACKUP -> MASTER"
        );
        assert_eq!(
            format_line("ns-ha-sync[7]", Level::Error, "push failed:\nbackup gone"),
            "<27>ns-ha-sync[7]: push failed: backup gone"
        );
        assert!(format_line("t", Level::Warn, "x").starts_with("<28>"));
        let long = "é".repeat(MAX_MESSAGE);
        let line = format_line("t", Level::Info, &long);
        assert!(
            line.len() <= MAX_MESSAGE + "<30>t: ".len(),
            "{}",
            line.len()
        );
    }

    #[test]
    fn records_reach_a_listening_socket_and_a_missing_one_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        let s = Syslog::connect("ns-ha-test", &path).expect("connects");
        s.send(Level::Warn, "action failed");
        let mut buf = [0u8; 512];
        let n = server.recv(&mut buf).unwrap();
        let got = std::str::from_utf8(&buf[..n]).unwrap();
        assert_eq!(
            got,
            format!("<28>ns-ha-test[{}]: action failed", std::process::id())
        );
        assert!(Syslog::connect("t", &dir.path().join("absent")).is_none());
    }

    #[test]
    fn the_socket_is_under_the_root() {
        // Only when the override is not set (it is not in the unit tests).
        if std::env::var_os(SYSLOG_SOCKET_ENV).is_none() {
            assert_eq!(
                socket_path(Some(Path::new("/lab/fw1"))),
                Some(PathBuf::from("/lab/fw1/dev/log"))
            );
            assert_eq!(socket_path(None), Some(PathBuf::from("/dev/log")));
        }
    }
}
