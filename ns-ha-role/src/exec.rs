//! Running a plan: every lane on its own thread, every action with a timeout.
//!
//! One hung init script must not hold the node hostage: actions are bounded by
//! the configured timeout (the runner kills the child), independent actions
//! run in parallel, and a failure only stops the rest of its own lane (the
//! ordered conntrackd commands); everything else carries on and the failure
//! is reported and retried on the next pass.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ns_ha_common::cmd::{args, CommandRunner};
use ns_ha_common::exit::{code_of, Code};
use ns_ha_common::fsutil::atomic_write;
use ns_ha_common::ifcontrol::{InterfaceControl, WanState};
use ns_ha_common::role_config::link_matches;
use ns_ha_common::root::paths;
use ns_ha_common::service::{ServiceAction, ServiceBackend, ServiceManager};
use ns_ha_common::wan::{self, Ipv4Method, Wan, WanDevice};
use ns_ha_common::wireguard;

/// How long a new master waits for the old one to release a takeover
/// WAN's address before it brings the WAN up anyway (a partition: the other
/// node keeps it).
pub const ADDRESS_FREE_WAIT: Duration = Duration::from_secs(2);
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
    /// The interface manager that brings takeover WANs up and down.
    pub interfaces: &'a dyn InterfaceControl,
    /// The cluster's takeover WANs.
    pub wans: &'a [Wan],
    /// `ns-ha-vip`, when installed: announces a WAN that came up.
    pub vip_tool: Option<PathBuf>,
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
            Step::Wan { interface, up } => self.wan(interface, *up),
        }
    }

    fn wan(&self, interface: &str, up: bool) -> Res {
        let Some(w) = self.wans.iter().find(|w| w.interface == interface) else {
            return skip("not a WAN of the cluster");
        };
        let now = match self.interfaces.state(w, self.timeout) {
            Ok(s) => s,
            Err(e) => return failed(&e),
        };
        match (up, now) {
            (true, WanState::Up) => return same(""),
            (false, WanState::Down) => {
                // Down, but perhaps still with the cluster MAC (a node that
                // crashed as MASTER and came back).
                return match self.restore_own_mac(w) {
                    Ok(true) => ok("own MAC restored"),
                    Ok(false) => same(""),
                    Err(e) => failed(&e),
                };
            }
            (false, _) => {
                self.silence_before_down(w);
                if let Err(e) = self.interfaces.down(w, self.timeout) {
                    return failed(&e);
                }
                return match self.restore_own_mac(w) {
                    Ok(true) => ok("down; own MAC restored"),
                    Ok(false) => ok("down"),
                    Err(e) => failed(&e),
                };
            }
            (true, WanState::Partial) => {
                // Clear what is half there (or what the manager wrongly
                // thinks is up) so ifup configures it whole.
                if let Err(e) = self.interfaces.down(w, self.timeout) {
                    log::warn!("clearing WAN {interface} before ifup: {e:#}");
                }
            }
            (true, WanState::Down) => {}
        }
        if let Err(e) = self.restore_own_mac(w) {
            log::warn!("restoring this node's own MAC on WAN {interface}: {e:#}");
        }
        if let Err(e) = self.wait_address_free(w) {
            log::warn!("probing WAN {interface} before ifup: {e:#}");
        }
        if let Err(e) = self.interfaces.up(w, self.timeout) {
            return failed(&e);
        }
        // The neighbours (the ISP's router) still map the addresses to the
        // old master's MAC: gratuitous ARP and unsolicited NA now.
        match self.announce(interface) {
            Ok(detail) => ok(format!("up; {detail}")),
            Err(e) => {
                log::warn!("WAN {interface} is up but was not announced: {e:#}");
                ok(format!("up; not announced: {e:#}"))
            }
        }
    }

    /// Before bringing up a WAN with a static IPv4 address, wait (up to
    /// [`ADDRESS_FREE_WAIT`]) until nobody else answers ARP for it: in a
    /// graceful handover (maintenance, preemption) the old master takes its
    /// WAN down in the same moment this node brings it up, and both would
    /// answer for a while. After a crash nobody answers and this costs one
    /// probe ([`wan::PROBE_WAIT`]). The link comes up with the node's own
    /// MAC first so the probe can be sent: the old master answers the
    /// probe's sender, and a switch drops an answer sent from the cluster
    /// MAC to the cluster MAC (it learns the address on the old master's
    /// port, the answer's ingress). Then the link goes down with the cluster
    /// MAC set, if any (NICs change it only while down), and ifup brings it up.
    /// A DHCP WAN with the cluster MAC is offered the lease the old master
    /// holds, the one this node last had too (if its DHCP client recorded
    /// it): that address is probed the same way. The lab sampled both nodes
    /// holding it in a preempting handover without the probe.
    fn wait_address_free(&self, w: &Wan) -> anyhow::Result<()> {
        let address = match &w.ipv4 {
            Some(Ipv4Method::Static { address, .. }) => address.addr,
            Some(Ipv4Method::Dhcp) if w.mac.is_some() => match self.interfaces.last_lease(w) {
                Some(a) => a,
                None => return Ok(()),
            },
            _ => return Ok(()),
        };
        let ip = |words: &[&str]| {
            self.runner
                .run_ok("ip", &args(words), self.timeout)
                .map(|_| ())
        };
        // The WAN's own device, or, for a bridge or bond ifdown deleted
        // (ifup builds it again), its first member: the same segment. A
        // VLAN's device is added here as ifupdown would add it (the parent
        // up, then the VLAN), so the probe goes out tagged; ifup then
        // takes the existing device. Other managers' VLANs are not probed.
        let dev = match (
            &w.device,
            wan::observe(self.runner, &w.interface, self.timeout)?,
        ) {
            (_, Some(_)) => w.interface.as_str(),
            (WanDevice::Bridge { members } | WanDevice::Bond { members }, None)
                if !members.is_empty() =>
            {
                members[0].as_str()
            }
            (WanDevice::Vlan { parent, id }, None) if self.interfaces.adopts_existing_vlan() => {
                ip(&["link", "set", "dev", parent, "up"])?;
                let id = id.to_string();
                ip(&[
                    "link",
                    "add",
                    "link",
                    parent,
                    "name",
                    &w.interface,
                    "type",
                    "vlan",
                    "id",
                    &id,
                ])?;
                w.interface.as_str()
            }
            (_, None) => {
                log::debug!("WAN {} has no device before ifup: not probed", w.interface);
                return Ok(());
            }
        };
        ip(&["link", "set", "dev", dev, "up"])?;
        let deadline = Instant::now() + ADDRESS_FREE_WAIT;
        while wan::address_in_use(self.runner, dev, address)? {
            if Instant::now() >= deadline {
                log::warn!(
                    "{address} still answers on {dev} after {ADDRESS_FREE_WAIT:?}: bringing the WAN up anyway"
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The cluster MAC goes on the WAN's own device; a bridge not built
        // yet gets it from ifup (`hwaddress`).
        if let (Some(mac), true) = (&w.mac, dev == w.interface) {
            ip(&["link", "set", "dev", dev, "down"])?;
            ip(&["link", "set", "dev", dev, "address", &mac.to_string()])?;
        }
        Ok(())
    }

    /// Take a WAN's device down before `ifdown`, so that this node stops
    /// carrying it at once: no more answers to ARP for a static address,
    /// no more IP over a PPPoE session (pppd still ends the session properly
    /// on `ifdown`). ifupdown runs one `ifup`/`ifdown` at a time, so with
    /// several WANs the last one's `ifdown` waits for the others' (seconds;
    /// the VM tier measured 18 s emulated for the last of six), while the
    /// new master brings them up: a PPPoE WAN, which has no address to probe
    /// before it comes up, was then up on both nodes in a maintenance handover.
    /// A DHCP WAN with the cluster MAC is silenced too: its lease belongs to
    /// the cluster MAC and the next master asks for it again, and with the
    /// link down `ifdown`'s release (dhclient -r; the ISP could give the
    /// address to another customer) never leaves. A DHCP WAN without it
    /// keeps its link up: its `ifdown` releases the lease, which needs it.
    /// A device that is not there (a VLAN or PPPoE session already gone)
    /// has nothing to silence.
    fn silence_before_down(&self, w: &Wan) {
        if w.mac.is_none() && matches!(w.ipv4, Some(Ipv4Method::Dhcp)) {
            return;
        }
        let down = args(&["link", "set", "dev", &w.interface, "down"]);
        match self.runner.run("ip", &down, self.timeout) {
            Ok(out) if out.status == Some(0) => {}
            Ok(out) => log::debug!(
                "WAN {}: nothing to take down before ifdown: {}",
                w.interface,
                out.stderr.trim()
            ),
            Err(e) => log::warn!(
                "taking WAN {}'s link down before ifdown: {e:#}",
                w.interface
            ),
        }
    }

    /// Where this node keeps the MAC its WAN device had before the cluster
    /// MAC replaced it (a device without a permanent MAC, e.g. a veth, has
    /// no other record of it).
    fn own_mac_file(&self, w: &Wan) -> PathBuf {
        self.root
            .path(paths::STATE_DIR)
            .join(format!("wan-own-mac.{}", w.interface))
    }

    /// A WAN with a cluster MAC: give the device back this node's own MAC
    /// if it still carries the cluster's, or record the own one while it
    /// has it. Returns whether the MAC was changed. The cluster MAC outlives
    /// `ifdown` (ifupdown sets it, never resets it) and a crash; left on a
    /// node that is not MASTER, its duplicate-address probe goes out from
    /// the cluster MAC, which the master holds too, and a switch (the lab's
    /// bridge) does not deliver the answer: the probe then sees the address
    /// free while the old master still holds it. Called with the link down
    /// (after `ifdown`, or before the probe brings it up).
    fn restore_own_mac(&self, w: &Wan) -> anyhow::Result<bool> {
        let Some(cluster) = w.mac else {
            return Ok(false);
        };
        let Some(macs) = wan::link_macs(self.runner, &w.interface, self.timeout)? else {
            return Ok(false);
        };
        let file = self.own_mac_file(w);
        let recorded = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.trim().parse::<wan::MacAddr>().ok());
        if macs.current != cluster {
            if recorded != Some(macs.current) {
                if let Some(dir) = file.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                atomic_write(&file, format!("{}\n", macs.current).as_bytes(), 0o644)?;
            }
            return Ok(false);
        }
        let Some(own) = macs.permanent.filter(|p| *p != cluster).or(recorded) else {
            log::warn!(
                "WAN {} carries the cluster MAC {cluster} and this node has no record of its own MAC: left as it is",
                w.interface
            );
            return Ok(false);
        };
        let dev = w.interface.as_str();
        for words in [
            &["link", "set", "dev", dev, "down"][..],
            &["link", "set", "dev", dev, "address", &own.to_string()],
        ] {
            self.runner.run_ok("ip", &args(words), self.timeout)?;
        }
        Ok(true)
    }

    fn announce(&self, interface: &str) -> anyhow::Result<String> {
        let Some(tool) = self.vip_tool.as_ref().filter(|t| t.is_file()) else {
            return Ok("ns-ha-vip not installed, not announced".into());
        };
        let mut args = self.root.tool_args();
        args.extend(["announce".into(), "--interface".into(), interface.into()]);
        self.runner
            .run_ok(&tool.to_string_lossy(), &args, self.timeout)
            .map(|_| "announced".into())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Outcome;
    use crate::plan::{wan_lanes, Once};
    use crate::testkit::FakeRunner;
    use std::sync::Mutex;

    /// An interface manager that holds one WAN's state and records its calls.
    struct FakeControl {
        state: Mutex<WanState>,
        calls: Mutex<Vec<String>>,
        lease: Option<std::net::Ipv4Addr>,
    }

    impl InterfaceControl for FakeControl {
        fn install(&self, _p: &[Wan], _w: &[Wan]) -> anyhow::Result<Vec<String>> {
            Ok(Vec::new())
        }
        fn up(&self, w: &Wan, _t: Duration) -> anyhow::Result<()> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("up {}", w.interface));
            *self.state.lock().unwrap() = WanState::Up;
            Ok(())
        }
        fn down(&self, w: &Wan, _t: Duration) -> anyhow::Result<()> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("down {}", w.interface));
            *self.state.lock().unwrap() = WanState::Down;
            Ok(())
        }
        fn state(&self, _w: &Wan, _t: Duration) -> anyhow::Result<WanState> {
            Ok(*self.state.lock().unwrap())
        }
        fn last_lease(&self, _w: &Wan) -> Option<std::net::Ipv4Addr> {
            self.lease
        }
        /// As ifupdown.
        fn adopts_existing_vlan(&self) -> bool {
            true
        }
    }

    fn dhcp_wan() -> Wan {
        Wan {
            interface: "wan1".into(),
            device: WanDevice::Physical,
            ipv4: Some(Ipv4Method::Dhcp),
            ipv6: None,
            mac: None,
            metric: None,
        }
    }

    fn run(state: WanState, master: bool) -> (Vec<ActionRecord>, Vec<String>) {
        let (r, calls, _) = run_with(dhcp_wan(), state, master, None);
        (r, calls)
    }

    /// The records, the interface manager's calls and the commands run.
    fn run_with(
        wan: Wan,
        state: WanState,
        master: bool,
        lease: Option<&str>,
    ) -> (Vec<ActionRecord>, Vec<String>, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        let runner = FakeRunner::default();
        let (records, calls) = run_in(&root, &runner, wan, state, master, lease);
        (records, calls, runner.calls())
    }

    /// [`run_with`] on a given node root and runner: the records and the
    /// interface manager's calls.
    fn run_in(
        root: &NodeRoot,
        runner: &FakeRunner,
        wan: Wan,
        state: WanState,
        master: bool,
        lease: Option<&str>,
    ) -> (Vec<ActionRecord>, Vec<String>) {
        let services = ns_ha_common::service::manager(ServiceBackend::Initd, root, runner);
        let wans = vec![wan];
        let control = FakeControl {
            state: Mutex::new(state),
            calls: Mutex::new(Vec::new()),
            lease: lease.map(|a| a.parse().unwrap()),
        };
        let exec = Executor {
            root,
            runner,
            services: services.as_ref(),
            backend: ServiceBackend::Initd,
            timeout: Duration::from_secs(1),
            crontab: root.path("/etc/crontabs/root"),
            sync_tool: None,
            protected: Vec::new(),
            interfaces: &control,
            wans: &wans,
            vip_tool: None,
        };
        let state = if master {
            crate::events::KaState::Master
        } else {
            crate::events::KaState::Backup
        };
        let lanes = wan_lanes(&wans, state);
        assert!(lanes.iter().flatten().all(|a| a.once == Once::Always));
        let records = exec.run(&lanes);
        let calls = control.calls.lock().unwrap().clone();
        (records, calls)
    }

    /// A WAN going down stops being carried before `ifdown` (which waits
    /// for ifupdown's other calls): its device is taken down first, but for
    /// a DHCP WAN without the cluster MAC, whose `ifdown` releases the lease.
    #[test]
    fn a_wan_going_down_is_silenced_before_ifdown_unless_it_releases_a_lease() {
        let down = "ip link set dev wan1 down".to_string();
        let mut fixed = dhcp_wan();
        fixed.ipv4 = Some(Ipv4Method::Static {
            address: "10.99.3.1/24".parse().unwrap(),
            gateway: None,
        });
        let mut pppoe = dhcp_wan();
        pppoe.ipv4 = None;
        pppoe.device = WanDevice::Pppoe {
            parent: "eth9".into(),
            user: "me".into(),
        };
        let mut cluster_mac = dhcp_wan();
        cluster_mac.mac = Some("02:00:5e:10:00:01".parse().unwrap());
        for (what, w, silenced) in [
            ("static", fixed, true),
            ("PPPoE", pppoe, true),
            ("DHCP with the cluster MAC", cluster_mac, true),
            ("DHCP, own MAC", dhcp_wan(), false),
        ] {
            let (r, calls, commands) = run_with(w, WanState::Up, false, None);
            assert_eq!(calls, ["down wan1"], "{what}");
            assert_eq!(r[0].outcome, Outcome::Changed, "{what}: {r:?}");
            assert_eq!(commands.contains(&down), silenced, "{what}: {commands:?}");
        }
    }

    #[test]
    fn a_static_wan_waits_for_its_address_to_be_free_with_the_cluster_mac_set() {
        let mut w = dhcp_wan();
        w.ipv4 = Some(Ipv4Method::Static {
            address: "10.99.3.1/24".parse().unwrap(),
            gateway: None,
        });
        w.mac = Some("02:00:5e:10:00:01".parse().unwrap());
        let (r, calls, commands) = run_with(w, WanState::Down, true, None);
        assert_eq!(r[0].outcome, Outcome::Changed);
        assert_eq!(calls, ["up wan1"]);
        assert_eq!(
            commands,
            [
                "ip -json link show dev wan1",
                "ip -json addr show dev wan1",
                "ip link set dev wan1 up",
                "arping -D -q -c 1 -w 1 -I wan1 10.99.3.1",
                "ip link set dev wan1 down",
                "ip link set dev wan1 address 02:00:5e:10:00:01",
            ]
        );
        // A DHCP WAN without the cluster MAC has no address to probe (a
        // lease of this node's own MAC is not the old master's).
        let (_, _, commands) = run_with(dhcp_wan(), WanState::Down, true, Some("10.99.3.27"));
        assert!(commands.is_empty(), "{commands:?}");
        // With the cluster MAC: the lease this node last had, if it knows one.
        let mut w = dhcp_wan();
        w.mac = Some("02:00:5e:10:00:01".parse().unwrap());
        let (_, _, commands) = run_with(w.clone(), WanState::Down, true, None);
        assert_eq!(commands, ["ip -json link show dev wan1"]);
        let (_, calls, commands) = run_with(w, WanState::Down, true, Some("10.99.3.27"));
        assert_eq!(calls, ["up wan1"]);
        assert_eq!(
            commands.get(3).map(String::as_str),
            Some("arping -D -q -c 1 -w 1 -I wan1 10.99.3.27"),
            "{commands:?}"
        );
    }

    #[test]
    fn a_wan_converges_to_up_on_master_and_down_elsewhere() {
        let (r, calls) = run(WanState::Down, true);
        assert_eq!(r[0].outcome, Outcome::Changed);
        assert!(r[0].detail.starts_with("up;"), "{}", r[0].detail);
        assert_eq!(calls, ["up wan1"]);
        // Half configured: cleared first, then brought up whole.
        let (_, calls) = run(WanState::Partial, true);
        assert_eq!(calls, ["down wan1", "up wan1"]);
        let (r, calls) = run(WanState::Up, true);
        assert_eq!(r[0].outcome, Outcome::Unchanged);
        assert!(calls.is_empty());
        for s in [WanState::Up, WanState::Partial] {
            let (r, calls) = run(s, false);
            assert_eq!(r[0].outcome, Outcome::Changed);
            assert_eq!(calls, ["down wan1"]);
        }
        let (r, calls) = run(WanState::Down, false);
        assert_eq!(r[0].outcome, Outcome::Unchanged);
        assert!(calls.is_empty());
    }

    /// The cluster MAC outlives `ifdown` and a crash: a node that is not
    /// MASTER gets its own MAC back (the one recorded before the cluster's
    /// replaced it), and a new master probes from its own MAC, so the old
    /// master's answer reaches it.
    #[test]
    fn the_own_mac_is_recorded_and_comes_back_when_the_wan_goes_down() {
        let cluster = "02:00:5e:10:00:01";
        let own = "ee:11:22:33:44:55";
        let mut w = dhcp_wan();
        w.mac = Some(cluster.parse().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        let record = root.path(paths::STATE_DIR).join("wan-own-mac.wan1");
        let runner = FakeRunner::default();
        runner.with(|s| {
            s.links_up.insert("wan1".into(), false);
            s.macs.insert("wan1".into(), own.into());
        });
        // BACKUP with the own MAC: recorded, nothing changed.
        let (r, calls) = run_in(&root, &runner, w.clone(), WanState::Down, false, None);
        assert_eq!(r[0].outcome, Outcome::Unchanged, "{r:?}");
        assert!(calls.is_empty());
        assert_eq!(std::fs::read_to_string(&record).unwrap().trim(), own);

        // Came back from a crash as MASTER: the link still has the cluster MAC.
        runner.with(|s| s.macs.insert("wan1".into(), cluster.into()));
        let (r, calls) = run_in(&root, &runner, w.clone(), WanState::Down, false, None);
        assert_eq!(r[0].outcome, Outcome::Changed, "{r:?}");
        assert_eq!(r[0].detail, "own MAC restored");
        assert!(calls.is_empty());
        assert_eq!(runner.with(|s| s.macs["wan1"].clone()), own);

        // Taken down after it was MASTER: ifdown, then the own MAC.
        runner.with(|s| s.macs.insert("wan1".into(), cluster.into()));
        let (r, calls) = run_in(&root, &runner, w.clone(), WanState::Up, false, None);
        assert_eq!(calls, ["down wan1"]);
        assert_eq!(r[0].detail, "down; own MAC restored");
        assert_eq!(runner.with(|s| s.macs["wan1"].clone()), own);

        // A new master that still has the cluster MAC probes from its own.
        runner.with(|s| {
            s.macs.insert("wan1".into(), cluster.into());
            s.calls.clear();
        });
        let (_, calls) = run_in(&root, &runner, w, WanState::Down, true, Some("10.99.3.27"));
        assert_eq!(calls, ["up wan1"]);
        let commands = runner.calls();
        let probe = commands
            .iter()
            .position(|c| c.starts_with("arping"))
            .unwrap();
        let own_set = commands
            .iter()
            .position(|c| c == &format!("ip link set dev wan1 address {own}"))
            .unwrap();
        let cluster_set = commands
            .iter()
            .position(|c| c == &format!("ip link set dev wan1 address {cluster}"))
            .unwrap();
        assert!(own_set < probe && probe < cluster_set, "{commands:?}");

        // No record and no permanent MAC: left alone, not guessed.
        std::fs::remove_file(&record).unwrap();
        runner.with(|s| {
            s.macs.insert("wan1".into(), cluster.into());
            s.calls.clear();
        });
        let mut w = dhcp_wan();
        w.mac = Some(cluster.parse().unwrap());
        let (r, _) = run_in(&root, &runner, w, WanState::Down, false, None);
        assert_eq!(r[0].outcome, Outcome::Unchanged, "{r:?}");
        assert_eq!(runner.with(|s| s.macs["wan1"].clone()), cluster);
    }

    /// A bridge that ifdown deleted is probed through its first member (the
    /// same segment); a VLAN through its device, added first as ifupdown
    /// would (ifup then takes it).
    #[test]
    fn a_wan_without_its_device_yet_is_probed_through_a_bridge_member_or_its_vlan() {
        let mut w = dhcp_wan();
        w.interface = "brwan".into();
        w.device = WanDevice::Bridge {
            members: vec!["wan1".into()],
        };
        w.ipv4 = Some(Ipv4Method::Static {
            address: "10.99.3.1/24".parse().unwrap(),
            gateway: None,
        });
        w.mac = Some("02:00:5e:10:00:01".parse().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        let runner = FakeRunner::default();
        runner.with(|s| {
            s.missing.insert("brwan".into());
        });
        let (_, calls) = run_in(&root, &runner, w.clone(), WanState::Down, true, None);
        assert_eq!(calls, ["up brwan"]);
        let commands = runner.calls();
        assert!(
            commands.contains(&"arping -D -q -c 1 -w 1 -I wan1 10.99.3.1".to_string()),
            "{commands:?}"
        );
        // The cluster MAC is for the bridge, which ifup builds with it.
        assert!(
            !commands.iter().any(|c| c.contains(" address ")),
            "{commands:?}"
        );

        w.device = WanDevice::Vlan {
            parent: "wan1".into(),
            id: 10,
        };
        let runner = FakeRunner::default();
        runner.with(|s| {
            s.missing.insert("brwan".into());
        });
        let (_, calls) = run_in(&root, &runner, w, WanState::Down, true, None);
        assert_eq!(calls, ["up brwan"]);
        let commands = runner.calls();
        let at = |c: &str| commands.iter().position(|x| x == c);
        let added = at("ip link add link wan1 name brwan type vlan id 10");
        let probed = at("arping -D -q -c 1 -w 1 -I brwan 10.99.3.1");
        assert!(
            at("ip link set dev wan1 up") < added && added.is_some() && added < probed,
            "{commands:?}"
        );
    }
}
