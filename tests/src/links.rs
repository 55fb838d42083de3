//! The firewalls' links read in-process, both within microseconds.
//!
//! The one-holder rule ("never two firewalls up on a WAN at once") is
//! checked by sampling both firewalls. Sampled with one `ip` process per
//! firewall, the second read comes up to seconds after the first under
//! emulation (the VM tier): a move from fw1 to fw2 can then be seen as both
//! holding a WAN that never was held twice, and a short real overlap can
//! fall between samples. Here the calling thread enters each firewall's
//! network namespace in turn (`setns`), reads its links with `getifaddrs`,
//! reads the first firewall's again to check that it did not change
//! meanwhile, and returns to its own namespace: one [`LinkSnapshot`] shows
//! both firewalls as they were at one instant, and costs no process start.

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;
use nix::sched::{setns, CloneFlags};
use std::collections::BTreeMap;
use std::fs::File;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// One link of a firewall: administratively up or not, its addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub up: bool,
    pub addrs: Vec<IpAddr>,
}

/// Every link of each firewall, read back to back.
#[derive(Debug, Clone)]
pub struct LinkSnapshot {
    /// `(firewall, its links by name)`, in the order asked.
    pub nodes: Vec<(&'static str, BTreeMap<String, Link>)>,
    /// Time from the first read to the check that the first firewall had
    /// not changed meanwhile.
    pub spread: Duration,
}

impl LinkSnapshot {
    /// The firewalls with `dev` up and, if given, `address` on it.
    pub fn holders(&self, dev: &str, address: Option<IpAddr>) -> Vec<&'static str> {
        self.nodes
            .iter()
            .filter(|(_, links)| {
                links
                    .get(dev)
                    .is_some_and(|l| l.up && address.is_none_or(|a| l.addrs.contains(&a)))
            })
            .map(|(node, _)| *node)
            .collect()
    }
}

/// How many times [`snapshot`] reads again when the first firewall changed
/// while the others were read.
const READ_AGAIN: usize = 20;

/// Read the links of each `(node, namespace file)` from this thread, then
/// the first node's again: if the first changed meanwhile, the reads do not
/// show one instant and all are read again (up to [`READ_AGAIN`] times).
/// So every node's links are what they were when the last of the others
/// was read, even if this thread was descheduled between two reads. The
/// thread then returns to the namespace it was in (a panic if it cannot:
/// everything after would run in a firewall's namespace).
pub fn snapshot(namespaces: &[(&'static str, &File)]) -> Result<LinkSnapshot, String> {
    let own = File::open("/proc/thread-self/ns/net")
        .map_err(|e| format!("cannot open this thread's network namespace: {e}"))?;
    let result = read_consistent(namespaces);
    if let Err(e) = setns(&own, CloneFlags::CLONE_NEWNET) {
        panic!("cannot return to this thread's network namespace: {e}");
    }
    result
}

fn read_consistent(namespaces: &[(&'static str, &File)]) -> Result<LinkSnapshot, String> {
    let read = |(node, ns): &(&'static str, &File)| -> Result<BTreeMap<String, Link>, String> {
        setns(ns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("cannot enter {node}'s network namespace: {e}"))?;
        links_here().map_err(|e| format!("cannot read {node}'s links: {e}"))
    };
    let Some(first) = namespaces.first() else {
        return Err("no namespace to read".into());
    };
    for _ in 0..READ_AGAIN {
        let start = Instant::now();
        let mut nodes = Vec::new();
        for n in namespaces {
            nodes.push((n.0, read(n)?));
        }
        if namespaces.len() == 1 || read(first)? == nodes[0].1 {
            return Ok(LinkSnapshot {
                nodes,
                spread: start.elapsed(),
            });
        }
    }
    Err(format!(
        "{}'s links changed during each of {READ_AGAIN} reads",
        first.0
    ))
}

/// The links of the namespace this thread is in.
fn links_here() -> nix::Result<BTreeMap<String, Link>> {
    let mut links: BTreeMap<String, Link> = BTreeMap::new();
    for a in getifaddrs()? {
        let link = links.entry(a.interface_name.clone()).or_default();
        link.up |= a.flags.contains(InterfaceFlags::IFF_UP);
        if let Some(s) = a.address.as_ref() {
            if let Some(v4) = s.as_sockaddr_in() {
                link.addrs.push(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = s.as_sockaddr_in6() {
                link.addrs.push(IpAddr::V6(v6.ip()));
            }
        }
    }
    Ok(links)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// This thread's own namespace read through `snapshot` matches what the
    /// kernel says of the loopback, and the thread is back home after.
    #[test]
    fn a_snapshot_of_this_namespace_sees_the_loopback_and_returns() {
        let ns = File::open("/proc/thread-self/ns/net").expect("own netns");
        let before = std::fs::read_link("/proc/thread-self/ns/net").expect("link");
        let s = snapshot(&[("here", &ns)]).expect("snapshot");
        let lo = &s.nodes[0].1["lo"];
        let lo_up = std::fs::read_to_string("/sys/class/net/lo/flags")
            .map(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).unwrap() & 1 == 1)
            .expect("lo flags");
        assert_eq!(lo.up, lo_up);
        assert_eq!(lo.addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), lo_up);
        assert_eq!(
            s.holders("lo", None),
            if lo_up { vec!["here"] } else { vec![] }
        );
        assert!(s
            .holders("lo", Some(IpAddr::V4(Ipv4Addr::new(10, 99, 255, 255))))
            .is_empty());
        assert!(s.holders("no-such-link", None).is_empty());
        // Two nodes (here the same namespace twice): read and checked.
        let both = snapshot(&[("a", &ns), ("b", &ns)]).expect("snapshot of two");
        assert_eq!(both.nodes[0].1, both.nodes[1].1);
        assert_eq!(both.holders("lo", None).len(), if lo_up { 2 } else { 0 });
        assert_eq!(
            std::fs::read_link("/proc/thread-self/ns/net").expect("link"),
            before
        );
    }
}
