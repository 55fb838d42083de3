//! Starting and stopping the node's services, behind a trait.
//!
//! An OpenWrt/NethSecurity node manages daemons with `/etc/init.d/NAME
//! start|stop|reload`; a Debian node with systemd. The tools only say what they
//! want; the backend chosen for the node does it. In the lab the init scripts
//! live under each node's root and start the real daemons in its namespace.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::cmd::{CmdOutput, CommandRunner};
use crate::exit::{fail, Code};
use crate::root::NodeRoot;

/// Which service manager a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ServiceBackend {
    /// SysV/OpenWrt scripts in `/etc/init.d/` (under the node root).
    #[default]
    Initd,
    /// `systemctl`.
    Systemd,
}

impl ServiceBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceBackend::Initd => "initd",
            ServiceBackend::Systemd => "systemd",
        }
    }
}

/// What to do with a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceAction {
    Start,
    Stop,
    Restart,
    Reload,
}

impl ServiceAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceAction::Start => "start",
            ServiceAction::Stop => "stop",
            ServiceAction::Restart => "restart",
            ServiceAction::Reload => "reload",
        }
    }
}

/// Controls services on one node.
pub trait ServiceManager: Send + Sync {
    /// Run `action` on `service`, failing (with the reason) unless it succeeds in `timeout`.
    fn act(&self, service: &str, action: ServiceAction, timeout: Duration) -> Result<()>;
    /// Whether `service` is running now.
    fn is_running(&self, service: &str, timeout: Duration) -> Result<bool>;
    /// Whether `service` is installed on this node (an init script under the
    /// root, or a unit systemd has loaded): the role engine skips the others,
    /// and `doctor`/`check` only ask for the config of installed ones.
    fn is_installed(&self, service: &str, timeout: Duration) -> bool;
}

fn check_service_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
    {
        return Err(fail(
            Code::InvalidInput,
            format!(
                "'{name}' is not a valid service name: use letters, digits, '-', '_', '.', '@'"
            ),
        ));
    }
    Ok(())
}

fn finish(service: &str, action: &str, out: CmdOutput, timeout: Duration) -> Result<()> {
    if out.timed_out {
        return Err(fail(
            Code::Timeout,
            format!("{action} {service} did not finish within {timeout:?}"),
        ));
    }
    if !out.success() {
        return Err(fail(
            Code::Dependency,
            format!("{action} {service} failed: {}", out.reason()),
        ));
    }
    Ok(())
}

/// `/etc/init.d/NAME ACTION` under the node root.
pub struct InitdServices<'a> {
    pub root: NodeRoot,
    pub runner: &'a dyn CommandRunner,
}

impl InitdServices<'_> {
    fn script(&self, service: &str) -> Result<String> {
        check_service_name(service)?;
        let path = self.root.path(format!("/etc/init.d/{service}"));
        if !path.exists() {
            return Err(fail(
                Code::Dependency,
                format!("service {service} has no init script {}: install the package or remove it from the role config", path.display()),
            ));
        }
        Ok(path.to_string_lossy().into_owned())
    }
}

impl ServiceManager for InitdServices<'_> {
    fn act(&self, service: &str, action: ServiceAction, timeout: Duration) -> Result<()> {
        let script = self.script(service)?;
        let out = self
            .runner
            .run(&script, &[action.as_str().to_string()], timeout)?;
        finish(service, action.as_str(), out, timeout)
    }

    fn is_running(&self, service: &str, timeout: Duration) -> Result<bool> {
        let script = self.script(service)?;
        let out = self.runner.run(&script, &["status".to_string()], timeout)?;
        Ok(out.success())
    }

    fn is_installed(&self, service: &str, _timeout: Duration) -> bool {
        check_service_name(service).is_ok()
            && self.root.path(format!("/etc/init.d/{service}")).is_file()
    }
}

/// `systemctl ACTION NAME`.
pub struct SystemdServices<'a> {
    pub runner: &'a dyn CommandRunner,
}

impl ServiceManager for SystemdServices<'_> {
    fn act(&self, service: &str, action: ServiceAction, timeout: Duration) -> Result<()> {
        check_service_name(service)?;
        let verb = if action == ServiceAction::Reload {
            "reload-or-restart"
        } else {
            action.as_str()
        };
        let out = self.runner.run(
            "systemctl",
            &[verb.to_string(), service.to_string()],
            timeout,
        )?;
        finish(service, action.as_str(), out, timeout)
    }

    fn is_running(&self, service: &str, timeout: Duration) -> Result<bool> {
        check_service_name(service)?;
        let out = self.runner.run(
            "systemctl",
            &[
                "is-active".to_string(),
                "--quiet".to_string(),
                service.to_string(),
            ],
            timeout,
        )?;
        Ok(out.success())
    }

    fn is_installed(&self, service: &str, timeout: Duration) -> bool {
        check_service_name(service).is_ok()
            && self
                .runner
                .run(
                    "systemctl",
                    &[
                        "show".to_string(),
                        "--property=LoadState".to_string(),
                        "--value".to_string(),
                        service.to_string(),
                    ],
                    timeout,
                )
                .map(|o| o.stdout.trim() == "loaded")
                .unwrap_or(false)
    }
}

/// The service manager for a node's backend.
pub fn manager<'a>(
    backend: ServiceBackend,
    root: &NodeRoot,
    runner: &'a dyn CommandRunner,
) -> Box<dyn ServiceManager + 'a> {
    match backend {
        ServiceBackend::Initd => Box::new(InitdServices {
            root: root.clone(),
            runner,
        }),
        ServiceBackend::Systemd => Box::new(SystemdServices { runner }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::RecordingRunner;

    #[test]
    fn initd_runs_script_under_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        std::fs::create_dir_all(root.path("/etc/init.d")).unwrap();
        std::fs::write(root.path("/etc/init.d/dnsmasq"), "#!/bin/sh\n").unwrap();
        let runner = RecordingRunner::new();
        let svc = InitdServices {
            root: root.clone(),
            runner: &runner,
        };
        svc.act("dnsmasq", ServiceAction::Reload, Duration::from_secs(1))
            .unwrap();
        let calls = runner.calls();
        assert_eq!(
            calls[0][0],
            root.path("/etc/init.d/dnsmasq").to_string_lossy()
        );
        assert_eq!(calls[0][1], "reload");
        let e = svc
            .act("openvpn", ServiceAction::Start, Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(crate::exit::code_of(&e), Code::Dependency);
        assert!(svc
            .act("../../bin/sh", ServiceAction::Start, Duration::from_secs(1))
            .is_err());
    }

    #[test]
    fn systemd_reload_is_reload_or_restart() {
        let runner = RecordingRunner::new();
        let svc = SystemdServices { runner: &runner };
        svc.act("keepalived", ServiceAction::Reload, Duration::from_secs(1))
            .unwrap();
        assert_eq!(
            runner.calls()[0],
            vec!["systemctl", "reload-or-restart", "keepalived"]
        );
    }
}
