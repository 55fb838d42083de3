//! Running a plan: every lane on its own thread, every action with a timeout.
//!
//! One hung init script must not hold the node hostage: actions are bounded by
//! the configured timeout (the runner kills the child), independent actions
//! run in parallel, and a failure only stops the rest of its own lane (the
//! ordered conntrackd commands); everything else carries on and the failure
//! is reported and retried on the next pass.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ns_ha_common::cmd::CommandRunner;
use ns_ha_common::exit::{code_of, Code};
use ns_ha_common::role_config::link_matches;
use ns_ha_common::root::paths;
use ns_ha_common::service::{ServiceAction, ServiceBackend, ServiceManager};
use ns_ha_common::wireguard;
use ns_ha_common::NodeRoot;

use crate::cron;
use crate::history::{ActionRecord, Outcome};
use crate::plan::{is_protected, Action, Lane, Step};

/// Everything the actions touch.
pub struct Executor<'a> {
    pub root: &'a NodeRoot,
    pub runner: &'a dyn CommandRunner,
    pub services: &'a dyn ServiceManager,
    pub backend: ServiceBackend,
    pub timeout: Duration,
    pub crontab: PathBuf,
    /// `ns-ha-sync`, when installed.
    pub sync_tool: Option<PathBuf>,
    /// Interfaces never set down (keepalived tracks them).
    pub protected: Vec<String>,
}

type Res = (Outcome, String);

fn ok(detail: impl Into<String>) -> Res {
    (Outcome::Changed, detail.into())
}

fn same(detail: impl Into<String>) -> Res {
    (Outcome::Unchanged, detail.into())
}

fn skip(detail: impl Into<String>) -> Res {
    (Outcome::Skipped, detail.into())
}

fn failed(err: &anyhow::Error) -> Res {
    let outcome = if code_of(err) == Code::Timeout {
        Outcome::TimedOut
    } else {
        Outcome::Failed
    };
    (outcome, format!("{err:#}"))
}

impl Executor<'_> {
    /// Run all lanes in parallel; results in plan order.
    pub fn run(&self, lanes: &[Lane]) -> Vec<ActionRecord> {
        let per_lane: Vec<Vec<ActionRecord>> = std::thread::scope(|s| {
            let handles: Vec<_> = lanes
                .iter()
                .map(|lane| s.spawn(move || self.run_lane(lane)))
                .collect();
            handles
                .into_iter()
                .zip(lanes)
                .map(|(h, lane)| {
                    h.join().unwrap_or_else(|_| {
                        lane.iter()
                            .map(|a| record(a, (Outcome::Failed, "action panicked".into()), 0))
                            .collect()
                    })
                })
                .collect()
        });
        per_lane.into_iter().flatten().collect()
    }

    fn run_lane(&self, lane: &[Action]) -> Vec<ActionRecord> {
        let mut out = Vec::with_capacity(lane.len());
        let mut blocked: Option<String> = None;
        for a in lane {
            if let Some(prev) = &blocked {
                out.push(record(
                    a,
                    (Outcome::Failed, format!("not run: {prev} failed")),
                    0,
                ));
                continue;
            }
            let start = Instant::now();
            let res = self.run_step(&a.step);
            let ms = start.elapsed().as_millis() as u64;
            if res.0.is_failure() {
                blocked = Some(a.id.clone());
            }
            // Nothing to do on this node: the rest of the lane has nothing to act on.
            if res.0 == Outcome::Skipped && a.step == Step::ConntrackdRunning {
                out.push(record(a, res.clone(), ms));
                for rest in lane.iter().skip(1) {
                    out.push(record(rest, res.clone(), 0));
                }
                return out;
            }
            out.push(record(a, res, ms));
        }
        out
    }

    fn run_step(&self, step: &Step) -> Res {
        match step {
            Step::Service { name, running } => self.service(name, *running),
            Step::Reload { name } => self.reload(name),
            Step::Cron { enable, disable } => match cron::apply(&self.crontab, enable, disable) {
                Ok(c) if c.is_empty() => same(""),
                Ok(c) => ok(format!("enabled {}, disabled {}", c.enabled, c.disabled)),
                Err(e) => failed(&e),
            },
            Step::Link { pattern, up } => self.link(pattern, *up),
            Step::ConntrackdRunning => self.conntrackd_running(),
            Step::Conntrackd(cmd) => match self.conntrackd(cmd.flag()) {
                Ok(_) => ok(""),
                Err(e) => failed(&e),
            },
            Step::PushSync => self.push_sync(),
        }
    }

    fn installed(&self, name: &str) -> bool {
        self.services.is_installed(name, self.timeout)
    }

    fn service(&self, name: &str, running: bool) -> Res {
        if !self.installed(name) {
            return skip("not installed");
        }
        match self.services.is_running(name, self.timeout) {
            Ok(now) if now == running => return same(""),
            Ok(_) => {}
            Err(e) => return failed(&e),
        }
        let action = if running {
            ServiceAction::Start
        } else {
            ServiceAction::Stop
        };
        match self.services.act(name, action, self.timeout) {
            Ok(()) => ok(action.as_str()),
            Err(e) => failed(&e),
        }
    }

    fn reload(&self, name: &str) -> Res {
        if !self.installed(name) {
            return skip("not installed");
        }
        match self.services.is_running(name, self.timeout) {
            Ok(false) => return skip("not running"),
            Ok(true) => {}
            Err(e) => return failed(&e),
        }
        match self.services.act(name, ServiceAction::Reload, self.timeout) {
            Ok(()) => ok("reloaded"),
            Err(e) => failed(&e),
        }
    }

    fn link(&self, pattern: &str, up: bool) -> Res {
        let links = match self.runner.run_ok(
            "ip",
            &["-json".into(), "link".into(), "show".into()],
            self.timeout,
        ) {
            Ok(o) => o.stdout,
            Err(e) => return failed(&e),
        };
        let Ok(list) = serde_json::from_str::<serde_json::Value>(&links) else {
            return (Outcome::Failed, "cannot parse `ip -json link show`".into());
        };
        // WireGuard tunnels configured here (`/etc/wireguard/NAME.conf`) are
        // created on up and removed on down, as wg-quick does; other links
        // are only set up or down.
        let tunnels = match wireguard::configured(self.root) {
            Ok(t) => t,
            Err(e) => return failed(&e),
        };
        let present: Vec<String> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect();
        let mut changed = Vec::new();
        let mut matched = 0;
        if up {
            for t in tunnels
                .iter()
                .filter(|t| link_matches(pattern, t) && !present.contains(t))
            {
                matched += 1;
                let done = wireguard::load(self.root, t)
                    .and_then(|cfg| wireguard::up(self.root, self.runner, &cfg, self.timeout));
                match done {
                    Ok(d) => changed.push(d),
                    Err(e) => return failed(&e),
                }
            }
        }
        for l in list.as_array().into_iter().flatten() {
            let Some(name) = l["ifname"].as_str() else {
                continue;
            };
            if !link_matches(pattern, name) || (!up && is_protected(&self.protected, name)) {
                continue;
            }
            matched += 1;
            if up && tunnels.iter().any(|t| t == name) {
                // A running tunnel whose file was edited gets the edit
                // (`list` predates the tunnels created above).
                let done = wireguard::load(self.root, name)
                    .and_then(|cfg| wireguard::resync(self.root, self.runner, &cfg, self.timeout));
                match done {
                    Ok(true) => changed.push(format!("{name} reconfigured")),
                    Ok(false) => {}
                    Err(e) => return failed(&e),
                }
            }
            if !up && tunnels.iter().any(|t| t == name) {
                if let Err(e) = wireguard::down(self.runner, name, self.timeout) {
                    return failed(&e);
                }
                changed.push(format!("{name} removed"));
                continue;
            }
            let is_up = l["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x.as_str() == Some("UP")));
            if is_up == up {
                continue;
            }
            let word = if up { "up" } else { "down" };
            let args = ["link", "set", "dev", name, word].map(String::from);
            if let Err(e) = self.runner.run_ok("ip", &args, self.timeout) {
                return failed(&e);
            }
            changed.push(name.to_string());
        }
        match (matched, changed.is_empty()) {
            (0, _) => skip("no such interface"),
            (_, true) => same(""),
            (_, false) => ok(changed.join(", ")),
        }
    }

    fn conntrackd_conf(&self) -> String {
        self.root
            .path(paths::CONNTRACKD_CONF)
            .to_string_lossy()
            .into_owned()
    }

    fn conntrackd(&self, flag: &str) -> anyhow::Result<()> {
        let args = ["-C".to_string(), self.conntrackd_conf(), flag.to_string()];
        self.runner
            .run_ok("conntrackd", &args, self.timeout)
            .map(|_| ())
    }

    fn conntrackd_running(&self) -> Res {
        if !self.root.path(paths::CONNTRACKD_CONF).is_file() {
            return skip("not configured (no conntrackd.conf)");
        }
        if self.conntrackd("-s").is_ok() {
            return same("");
        }
        if !self.installed("conntrackd") {
            return (
                Outcome::Failed,
                "conntrackd does not run and has no service to start it".into(),
            );
        }
        if let Err(e) = self
            .services
            .act("conntrackd", ServiceAction::Start, self.timeout)
        {
            return failed(&e);
        }
        // The control socket appears a moment after the daemon.
        let deadline = Instant::now() + self.timeout.min(Duration::from_secs(5));
        loop {
            match self.conntrackd("-s") {
                Ok(()) => return ok("started"),
                Err(e) if Instant::now() >= deadline => {
                    return failed(&e.context("conntrackd started but does not answer"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn push_sync(&self) -> Res {
        let Some(tool) = self.sync_tool.as_ref().filter(|t| t.is_file()) else {
            return skip("ns-ha-sync not installed");
        };
        let mut args = self.root.tool_args();
        args.push("push".into());
        match self
            .runner
            .run_ok(&tool.to_string_lossy(), &args, self.timeout)
        {
            Ok(_) => ok("pushed"),
            Err(e) => failed(&e),
        }
    }
}

fn record(a: &Action, (outcome, detail): Res, duration_ms: u64) -> ActionRecord {
    ActionRecord {
        action: a.id.clone(),
        outcome,
        duration_ms,
        detail,
    }
}
