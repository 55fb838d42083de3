//! ARP on the LAN through `arping` (Debian package `iputils-arping`).
//!
//! Two jobs keepalived does not do on demand: re-announce the VIPs with
//! gratuitous ARP after a split brain heals (keepalived only announces on a
//! transition), and ask the LAN who answers for a VIP right now. `arping` is
//! run with an argument vector through [`CommandRunner`], never a shell, so
//! the calls are recorded in unit tests and no input is ever parsed by a shell.

use anyhow::{Context, Result};
use std::net::Ipv4Addr;
use std::time::Duration;

use ns_ha_common::cmd::{args, CommandRunner};
use ns_ha_common::exit::{fail, Code};
use ns_ha_common::net::check_ifname;

/// The program (iputils `arping`).
pub const ARPING: &str = "arping";
/// Generous bound for `arping -c 2` (one second between packets).
const ARPING_TIMEOUT: Duration = Duration::from_secs(10);

/// Send gratuitous ARP (unsolicited, `-U`) for `vip` out of `iface`, twice.
pub fn announce(runner: &dyn CommandRunner, iface: &str, vip: Ipv4Addr) -> Result<()> {
    check_ifname(iface)?;
    let vip = vip.to_string();
    runner
        .run_ok(
            ARPING,
            &args(&["-U", "-c", "2", "-I", iface, "-s", &vip, &vip]),
            ARPING_TIMEOUT,
        )
        .with_context(|| format!("announcing {vip} on {iface}"))?;
    Ok(())
}

/// Send one ARP request for `vip` on `iface` (from `source` if given) and
/// return the MACs that answered within a second (lowercase, no duplicates).
pub fn probe(
    runner: &dyn CommandRunner,
    iface: &str,
    vip: Ipv4Addr,
    source: Option<Ipv4Addr>,
) -> Result<Vec<String>> {
    check_ifname(iface)?;
    let vip = vip.to_string();
    let mut argv = args(&["-c", "1", "-w", "1", "-I", iface]);
    if let Some(s) = source {
        argv.extend(["-s".to_string(), s.to_string()]);
    }
    argv.push(vip.clone());
    let out = runner.run(ARPING, &argv, ARPING_TIMEOUT)?;
    match out.status {
        // 0: replies; 1: none within the deadline.
        Some(0) | Some(1) => Ok(parse_replies(&out.stdout)),
        _ => Err(fail(
            Code::Dependency,
            format!("arping for {vip} on {iface} failed: {}", out.reason()),
        )),
    }
}

/// The MACs of `Unicast reply from A [MAC]` lines of iputils arping.
pub fn parse_replies(stdout: &str) -> Vec<String> {
    let mut macs: Vec<String> = Vec::new();
    for line in stdout.lines().filter(|l| l.contains("reply from")) {
        let mac = line
            .split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(m, _)| m.trim().to_ascii_lowercase());
        if let Some(m) = mac.filter(|m| is_mac(m)) {
            if !macs.contains(&m) {
                macs.push(m);
            }
        }
    }
    macs
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The MAC address of an interface of this node (`ip -json link show dev IF`),
/// `None` if the interface does not exist.
pub fn link_mac(runner: &dyn CommandRunner, iface: &str) -> Result<Option<String>> {
    check_ifname(iface)?;
    let out = runner.run(
        "ip",
        &args(&["-json", "link", "show", "dev", iface]),
        Duration::from_secs(5),
    )?;
    if !out.success() {
        return Ok(None);
    }
    let v: serde_json::Value =
        serde_json::from_str(&out.stdout).context("parsing ip -json link")?;
    Ok(v.as_array()
        .and_then(|a| a.first())
        .and_then(|l| l["address"].as_str())
        .map(str::to_ascii_lowercase))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ns_ha_common::cmd::{CmdOutput, RecordingRunner};

    fn out(status: i32, stdout: &str) -> CmdOutput {
        CmdOutput {
            status: Some(status),
            stdout: stdout.into(),
            ..Default::default()
        }
    }

    #[test]
    fn parses_iputils_replies() {
        let text = "ARPING 10.99.1.254 from 10.99.1.2 lan0\n\
                    Unicast reply from 10.99.1.254 [1E:B5:BE:29:DD:02]  0.525ms\n\
                    Unicast reply from 10.99.1.254 [1e:b5:be:29:dd:02]  0.601ms\n\
                    Unicast reply from 10.99.1.254 [02:00:00:00:00:09]  0.7ms\n\
                    Sent 1 probes (1 broadcast(s))\nReceived 1 response(s)\n";
        assert_eq!(
            parse_replies(text),
            vec!["1e:b5:be:29:dd:02", "02:00:00:00:00:09"]
        );
        assert!(parse_replies("Unicast reply from x [zz]\n").is_empty());
    }

    #[test]
    fn announce_uses_unsolicited_arp_with_the_vip_as_source() {
        let r = RecordingRunner::new();
        announce(&r, "lan0", Ipv4Addr::new(10, 99, 1, 254)).unwrap();
        assert_eq!(
            r.calls()[0],
            args(&[
                "arping",
                "-U",
                "-c",
                "2",
                "-I",
                "lan0",
                "-s",
                "10.99.1.254",
                "10.99.1.254"
            ])
        );
        r.answer("arping", out(2, ""));
        let e = announce(&r, "lan0", Ipv4Addr::new(10, 99, 1, 254)).unwrap_err();
        assert_eq!(ns_ha_common::code_of(&e), Code::Dependency);
        assert!(announce(&r, "lan0;reboot", Ipv4Addr::new(10, 99, 1, 254)).is_err());
    }

    #[test]
    fn probe_treats_no_reply_as_empty_and_errors_as_errors() {
        let r = RecordingRunner::new();
        r.answer("arping", out(1, "Received 0 response(s)\n"));
        let vip = Ipv4Addr::new(10, 99, 1, 254);
        assert!(probe(&r, "lan0", vip, Some(Ipv4Addr::new(10, 99, 1, 2)))
            .unwrap()
            .is_empty());
        assert_eq!(
            r.calls()[0],
            args(&[
                "arping",
                "-c",
                "1",
                "-w",
                "1",
                "-I",
                "lan0",
                "-s",
                "10.99.1.2",
                "10.99.1.254"
            ])
        );
        r.answer("arping", out(2, "arping: Device lan9 not available."));
        assert!(probe(&r, "lan9", vip, None).is_err());
    }

    #[test]
    fn reads_the_link_mac() {
        let r = RecordingRunner::new();
        r.answer(
            "link show",
            out(0, r#"[{"ifname":"lan0","address":"1E:B5:BE:29:DD:02"}]"#),
        );
        assert_eq!(
            link_mac(&r, "lan0").unwrap().as_deref(),
            Some("1e:b5:be:29:dd:02")
        );
        r.answer("link show", out(1, ""));
        assert_eq!(link_mac(&r, "nope0").unwrap(), None);
    }
}
