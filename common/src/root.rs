//! Filesystem root injection.
//!
//! Two lab nodes live on one machine, so no tool may touch `/etc` or `/run`
//! directly: every absolute path goes through a [`NodeRoot`], which maps it
//! under `--root` (or `NS_HA_ROOT`). On a real firewall the root is `/`.

use anyhow::Result;
use std::path::{Path, PathBuf};

use crate::exit::{fail, Code};

/// The characters a path written unquoted into a shell command line may
/// have, in words for error messages.
pub const SHELL_SAFE_DESCRIPTION: &str = "letters, digits and / . _ - + , : @";

/// True when `path` is made only of characters no shell treats specially
/// (an allow-list: `& | < > # ; $ ` ' " \ ( ) * ? [ ] { } ~ !`, whitespace
/// and everything non-ASCII are out), so it can be passed through `sh -c`
/// unquoted and read back as the same single word.
pub fn is_shell_safe_path(path: &str) -> bool {
    !path.is_empty()
        && path.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | ',' | ':' | '@')
        })
}

/// Environment variable that sets the node root when `--root` is not given.
pub const ROOT_ENV: &str = "NS_HA_ROOT";

/// Where the ns-ha files of a node live, relative to its root.
pub mod paths {
    pub const CONFIG_DIR: &str = "/etc/ns-ha";
    pub const CLUSTER_CONFIG: &str = "/etc/ns-ha/cluster.json";
    pub const NODE_CONFIG: &str = "/etc/ns-ha/node.json";
    pub const SSH_KEY: &str = "/etc/ns-ha/id_ed25519";
    pub const KEEPALIVED_CONF: &str = "/etc/keepalived/keepalived.conf";
    pub const CONNTRACKD_CONF: &str = "/etc/conntrackd/conntrackd.conf";
    pub const AUTHORIZED_KEYS: &str = "/root/.ssh/authorized_keys";
    pub const SSH_HOST_KEY_PUB: &str = "/etc/ssh/ssh_host_ed25519_key.pub";
    pub const STATE_DIR: &str = "/var/lib/ns-ha";
    pub const RUN_DIR: &str = "/run/ns-ha";
    pub const LOCK: &str = "/run/ns-ha/ns-ha.lock";
    pub const MAINTENANCE_TRACK: &str = "/etc/ns-ha/maintenance.track";
    pub const HEALTH_TRACK: &str = "/run/ns-ha/health.track";
    /// The monitor's priority offset for keepalived (weight 1).
    pub const HEALTH_PRIORITY_TRACK: &str = "/run/ns-ha/health-priority.track";
    /// The monitor's state: checks, decisions, alerts sent.
    pub const HEALTH_STATE: &str = "/run/ns-ha/health.json";
    /// The role marker the shell prompt shows (one short line).
    pub const PROMPT_STATE: &str = "/run/ns-ha/prompt";
    /// Directly under /run: keepalived creates it at boot, before any ns-ha
    /// tool has made /run/ns-ha.
    pub const NOTIFY_FIFO: &str = "/run/ns-ha-keepalived.fifo";
}

/// The root directory under which a node's absolute paths are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRoot {
    base: PathBuf,
}

impl NodeRoot {
    /// A root at `base`. It must be absolute and made only of
    /// [`is_shell_safe_path`] characters: it is written unquoted into the
    /// keepalived config and into the authorized_keys forced command, which
    /// sshd runs through `sh -c`.
    pub fn new(base: impl Into<PathBuf>) -> Result<Self> {
        let base = base.into();
        if !base.is_absolute() {
            return Err(fail(
                Code::InvalidInput,
                format!(
                    "--root {} is not an absolute path: give --root (or NS_HA_ROOT) as /path",
                    base.display()
                ),
            ));
        }
        let text = base.to_string_lossy();
        if !is_shell_safe_path(&text) {
            return Err(fail(
                Code::InvalidInput,
                format!(
                    "--root {text:?} has characters other than {SHELL_SAFE_DESCRIPTION}: the path goes into the backup's forced command, which sshd runs through sh; give --root (or NS_HA_ROOT) a plain path such as /var/lib/ns-ha-lab/fw1"
                ),
            ));
        }
        Ok(NodeRoot { base })
    }

    /// The real root `/`.
    pub fn system() -> Self {
        NodeRoot {
            base: PathBuf::from("/"),
        }
    }

    /// `--root` if given, else `NS_HA_ROOT`, else `/`.
    pub fn from_arg_or_env(arg: Option<&Path>) -> Result<Self> {
        match arg {
            Some(p) => NodeRoot::new(p),
            None => match std::env::var_os(ROOT_ENV) {
                Some(v) if !v.is_empty() => NodeRoot::new(PathBuf::from(v)),
                _ => Ok(NodeRoot::system()),
            },
        }
    }

    pub fn is_system(&self) -> bool {
        self.base == Path::new("/")
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Map an absolute node path (`/etc/ns-ha/cluster.json`) under this root.
    pub fn path(&self, node_path: impl AsRef<Path>) -> PathBuf {
        let p = node_path.as_ref();
        let rel = p.strip_prefix("/").unwrap_or(p);
        self.base.join(rel)
    }

    /// Under a node root, a file holding the PID of the init of the node's
    /// own PID namespace, if the lab gave it one (the VM tier's
    /// `lab/vm/wans.sh`): commands of [`NodeRoot::command_seeing_own`] then
    /// run in that namespace with a /proc of their own, so a process that
    /// finds a daemon by its command line (`poff NAME` finds `pppd call
    /// NAME`) sees this node's only, as on a box of its own.
    pub const PID_NAMESPACE_FILE: &'static str = "/run/ns-ha-lab-pid-namespace";

    /// The program and arguments that run `program args` seeing this node's
    /// own copies of the machine directories `dirs` (`/run`, `/var/lib/dhcp`):
    /// on the system root, as they are; under another node root, in a
    /// private mount namespace where each of `dirs` is the node's directory
    /// (both created if missing), bound in the order given. For daemons
    /// whose file paths are fixed (wireguard-go's sockets, the DHCP client
    /// ifupdown starts): two nodes on one machine would share them. A daemon
    /// such a command starts keeps the namespace after the command ends.
    pub fn command_seeing_own(
        &self,
        dirs: &[&str],
        program: &str,
        args: &[String],
    ) -> (String, Vec<String>) {
        if self.is_system() {
            return (program.to_string(), args.to_vec());
        }
        // Constant scripts; the directory pairs and the command are their arguments.
        const BIND_DIRS: &str = "while [ \"$1\" != -- ]; do mkdir -p \"$1\" \"$2\" && mount --bind \"$2\" \"$1\" || exit 125; shift 2; done; shift; exec \"$@\"";
        const OWN_PROC: &str = "mount -t proc proc /proc || exit 125; ";
        let pid_namespace = std::fs::read_to_string(self.path(Self::PID_NAMESPACE_FILE))
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        let script = match pid_namespace {
            Some(_) => format!("{OWN_PROC}{BIND_DIRS}"),
            None => BIND_DIRS.to_string(),
        };
        let mut argv: Vec<String> = vec![
            "--mount".into(),
            "--propagation".into(),
            "private".into(),
            "sh".into(),
            "-c".into(),
            script,
            "sh".into(),
        ];
        for d in dirs {
            argv.push(d.to_string());
            argv.push(self.path(d).to_string_lossy().into_owned());
        }
        argv.push("--".into());
        argv.push(program.to_string());
        argv.extend(args.iter().cloned());
        match pid_namespace {
            Some(pid) => {
                let mut all: Vec<String> = vec![
                    "--target".into(),
                    pid.to_string(),
                    "--pid".into(),
                    "--".into(),
                ];
                all.push("unshare".into());
                all.extend(argv);
                ("nsenter".to_string(), all)
            }
            None => ("unshare".to_string(), argv),
        }
    }

    /// The `--root` arguments to pass to another ns-ha tool so that it works
    /// on the same node (empty for the system root).
    pub fn tool_args(&self) -> Vec<String> {
        if self.is_system() {
            Vec::new()
        } else {
            vec!["--root".into(), self.base.to_string_lossy().into_owned()]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_under_base() {
        let r = NodeRoot::new("/var/lib/lab/fw1").unwrap();
        assert_eq!(
            r.path(paths::CLUSTER_CONFIG),
            PathBuf::from("/var/lib/lab/fw1/etc/ns-ha/cluster.json")
        );
        assert_eq!(r.tool_args(), vec!["--root", "/var/lib/lab/fw1"]);
    }

    #[test]
    fn system_root_is_identity() {
        let r = NodeRoot::system();
        assert_eq!(r.path("/etc/x"), PathBuf::from("/etc/x"));
        assert!(r.tool_args().is_empty());
    }

    /// A node root the lab gave a PID namespace runs its commands there,
    /// with a /proc of their own; without one, in a mount namespace only.
    #[test]
    fn commands_enter_the_node_pid_namespace_when_it_has_one() {
        let dir = tempfile::tempdir().unwrap();
        let r = NodeRoot::new(dir.path()).unwrap();
        let args = vec!["wan1".to_string()];
        let (p, a) = r.command_seeing_own(&["/run"], "ifup", &args);
        assert_eq!(p, "unshare");
        assert!(!a[5].contains("proc"), "{a:?}");
        assert_eq!(a[a.len() - 2..], ["ifup", "wan1"]);
        std::fs::create_dir_all(r.path("/run")).unwrap();
        std::fs::write(r.path(NodeRoot::PID_NAMESPACE_FILE), "4242\n").unwrap();
        let (p, a) = r.command_seeing_own(&["/run"], "ifup", &args);
        assert_eq!(p, "nsenter");
        assert_eq!(a[..5], ["--target", "4242", "--pid", "--", "unshare"]);
        assert!(a[10].starts_with("mount -t proc proc /proc"), "{a:?}");
        assert_eq!(a[a.len() - 2..], ["ifup", "wan1"]);
        // Not a PID: as if there were none.
        std::fs::write(r.path(NodeRoot::PID_NAMESPACE_FILE), "x").unwrap();
        assert_eq!(r.command_seeing_own(&["/run"], "ifup", &args).0, "unshare");
    }

    #[test]
    fn rejects_relative_and_shell_characters() {
        assert!(NodeRoot::new("lab/fw1").is_err());
        assert!(NodeRoot::new("/lab/fw 1").is_err());
        assert!(NodeRoot::new("/lab/$(x)").is_err());
    }

    /// Issue 8 item 10: every character sh treats specially is refused with
    /// exit 3 naming `--root` (before, `& | < > # ( ) * ? ~ !` and others passed).
    #[test]
    fn every_shell_character_in_root_is_refused_with_exit_3() {
        for c in [
            '&', '|', '<', '>', '#', ';', '$', '`', '\'', '"', '\\', '(', ')', '*', '?', '[', ']',
            '{', '}', '~', '!', '=', '%', '^', ' ', '\t', '\n', '\r', 'é',
        ] {
            let path = format!("/lab/fw{c}1");
            let e = NodeRoot::new(&path).expect_err(&path);
            assert_eq!(crate::exit::code_of(&e), Code::InvalidInput, "{path:?}");
            let msg = e.to_string();
            assert!(
                msg.contains("--root") && msg.contains("plain path"),
                "{msg}"
            );
        }
        for ok in ["/var/lib/ns-ha-lab/fw1", "/tmp/.tmpAb9_x", "/srv/a+b,c:d@e"] {
            assert!(NodeRoot::new(ok).is_ok(), "{ok}");
            assert!(is_shell_safe_path(ok), "{ok}");
        }
    }
}
