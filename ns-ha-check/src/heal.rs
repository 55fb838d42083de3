//! Re-announcing after a partition heals, on the node that stays MASTER.
//!
//! While the HA link is cut both nodes are MASTER and both announce the VIPs
//! and the takeover WANs, so the LAN's and the ISP's neighbour caches may
//! point at the node that loses once the link is back. keepalived sends
//! that node to BACKUP, but the node that stays MASTER gets no event (it
//! never changed state) and announces nothing: the neighbours keep the
//! loser's MAC until their entries go stale and are probed (seconds; a
//! Linux router that keeps sending takes ~8 s), and with a cluster MAC a
//! switch keeps forwarding to the loser's port.
//!
//! keepalived's counters do not tell: the master hears the loser's adverts
//! only if the loser sends one before it hears the master's (about half of
//! the heals measured in the lab). The monitor therefore pings the peer's
//! HA address once a second while MASTER; [`HealWatch`] turns "the peer
//! answers again after it did not" into "announce now", and the monitor
//! runs `ns-ha-vip announce` (gratuitous ARP and unsolicited NA for every VIP
//! and takeover WAN address this node holds). Announcing again is harmless,
//! so a peer that merely rebooted costs a few packets.

/// Whether the peer was unreachable on the HA link while this node was MASTER.
#[derive(Debug, Default)]
pub struct HealWatch {
    peer_lost: bool,
}

impl HealWatch {
    /// One round: `master` is this node's state, `peer_answered` whether the
    /// peer answered on the HA link (`None`: not asked). True when the peer
    /// answers again after a round as MASTER in which it did not: announce.
    /// Not MASTER: forgotten (the node that becomes MASTER announces anyway).
    pub fn round(&mut self, master: bool, peer_answered: Option<bool>) -> bool {
        if !master {
            self.peer_lost = false;
            return false;
        }
        match peer_answered {
            Some(false) => {
                self.peer_lost = true;
                false
            }
            Some(true) => std::mem::take(&mut self.peer_lost),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_answering_again_while_master_is_a_heal() {
        let mut w = HealWatch::default();
        assert!(!w.round(true, Some(true)));
        // The HA link is cut: the peer is silent (and MASTER itself).
        assert!(!w.round(true, Some(false)));
        assert!(!w.round(true, Some(false)));
        // A round in which the pinger could not ask keeps what was seen.
        assert!(!w.round(true, None));
        // Back: announce once.
        assert!(w.round(true, Some(true)));
        assert!(!w.round(true, Some(true)));
    }

    #[test]
    fn a_peer_lost_while_backup_does_not_count() {
        let mut w = HealWatch::default();
        assert!(!w.round(false, Some(false)));
        assert!(!w.round(true, Some(true)));
        // Lost as MASTER, then BACKUP before it came back: forgotten.
        assert!(!w.round(true, Some(false)));
        assert!(!w.round(false, Some(true)));
        assert!(!w.round(true, Some(true)));
    }
}
