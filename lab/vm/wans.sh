#!/usr/bin/env bash
# wans.sh: give a running lab (lab/lab.sh up PREFIX) what the VM tier's
# WANs need besides ns-ha: the ISP's side of VLAN WANs (on a NIC, a bond and
# a bridge), a bond WAN and PPPoE WANs (on a NIC and on a VLAN), and on both
# firewalls the node-local devices the WANs sit on (a bond, a bridge, a
# VLAN, spare cables).
# Run it only in the VM tier (lab/vm.sh), where Debian's stock kernel has
# bonding, 8021q and PPPoE.
#
# Usage: wans.sh up PREFIX
#
# The WANs themselves are not made here: the test adds each with
# `ns-ha-init add-wan` on the primary, the definitions reach the backup with
# the cluster, and the role engine brings each up through ifupdown on the
# MASTER only (ifupdown creates the VLAN, `pon` starts pppd). The bond is
# node-local hardware setup, like a NIC: both firewalls have it before the
# VLAN WAN on it is added (add-wan checks that). Layout (the ISP side is the
# lab's `wan` namespace):
#
#   fw wan0.100 (VLAN 100 on wan0)           10.99.8.1/24  ISP eth0.100 10.99.8.100
#   fw bond0.200 (VLAN 200 on bond0 = wanb0+wanb1, active-backup)
#                                            10.99.4.1/24  ISP eth0.200 10.99.4.100
#   fw pppoe-wan (PPPoE over wan1, CHAP)     from the pool ISP pppoe-server 10.99.5.100
#   fw bond1 (bond of wanc0+wanc1, made by the WAN's own stanza)
#                                            10.99.7.1/24  ISP eth1 10.99.7.100
#      (its own switch, brbond: on brwan, the firewalls' wan0 would answer
#      the ISP's ARP for 10.99.7.1 too)
#   fw br0.400 (VLAN 400 on br0, a bridge of wand0)
#                                            10.99.11.1/24 ISP eth0.400 10.99.11.100
#   fw pppoe-v300 (PPPoE over wane0.300, VLAN 300 on wane0, CHAP)
#                                            from the pool ISP pppoe-server on eth2.300 10.99.10.100
#      (its own switch, brppv, so that the ISP's untagged pppoe-server on
#      eth0 never sees a tagged discovery)
#   "the internet" behind the ISP: 10.99.9.100/32 on the ISP's lo.
#
# The ISP's CHAP secret is the VM's /etc/ppp/chap-secrets (the VM's /etc is
# a throwaway layer); the firewalls' is their node root's, written by the
# test on the primary and synced.
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
LAB=$HERE/../lab.sh
INTERNET=10.99.9.100
PPP_USER=nsha-lab
PPP_SECRET=nsha-lab-secret

die() {
	echo "wans.sh: $*" >&2
	exit 1
}

[[ $# -eq 2 && $1 == up ]] || die "usage: wans.sh up PREFIX"
PREFIX=$2
DIR=$("$LAB" dir "$PREFIX")
[[ -f $DIR/lab.json ]] || die "no lab $PREFIX (run lab/lab.sh up $PREFIX first)"
for m in 8021q bonding pppoe; do
	modprobe "$m" || die "kernel module $m missing: run this in the VM tier (lab/vm.sh)"
done
for c in pppd pon poff pppoe-server ifup; do
	command -v "$c" >/dev/null || die "missing command $c: apt-get install ppp pppoe ifupdown (make deps)"
done

SW=${PREFIX}sw
WAN=${PREFIX}wan

# The ISP: VLANs 100 and 200 on its eth0, the internet on lo, pppoe-server.
ip -n "$WAN" link add link eth0 name eth0.100 type vlan id 100
ip -n "$WAN" addr add 10.99.8.100/24 dev eth0.100
ip -n "$WAN" link set eth0.100 up
ip -n "$WAN" link add link eth0 name eth0.200 type vlan id 200
ip -n "$WAN" addr add 10.99.4.100/24 dev eth0.200
ip -n "$WAN" link set eth0.200 up
ip -n "$WAN" addr add "$INTERNET/32" dev lo
ip -n "$SW" link add brbond type bridge
ip -n "$SW" link set brbond up
ip -n "$WAN" link add eth1 type veth peer name ispbond netns "$SW"
ip -n "$SW" link set ispbond master brbond
ip -n "$SW" link set ispbond up
ip -n "$WAN" addr add 10.99.7.100/24 dev eth1
ip -n "$WAN" link set eth1 up
ip -n "$WAN" link add link eth0 name eth0.400 type vlan id 400
ip -n "$WAN" addr add 10.99.11.100/24 dev eth0.400
ip -n "$WAN" link set eth0.400 up
ip -n "$SW" link add brppv type bridge
ip -n "$SW" link set brppv up
ip -n "$WAN" link add eth2 type veth peer name ispppv netns "$SW"
ip -n "$SW" link set ispppv master brppv
ip -n "$SW" link set ispppv up
ip -n "$WAN" link set eth2 up
ip -n "$WAN" link add link eth2 name eth2.300 type vlan id 300
ip -n "$WAN" link set eth2.300 up
ip netns exec "$WAN" sysctl -qw net.ipv4.ip_forward=1

install -d -m 0755 "$DIR/isp" /etc/ppp
printf '%s * %s *\n' "$PPP_USER" "$PPP_SECRET" >/etc/ppp/chap-secrets
chmod 0600 /etc/ppp/chap-secrets
cat >"$DIR/isp/pppoe-server-options" <<OPTS
require-chap
lcp-echo-interval 1
lcp-echo-failure 3
noipdefault
nodefaultroute
logfile $DIR/isp/pppd.log
OPTS
# -N 4: the old master's session lingers until its LCP echoes time out.
ip netns exec "$WAN" pppoe-server -I eth0 -L 10.99.5.100 -R 10.99.5.1 -N 4 \
	-O "$DIR/isp/pppoe-server-options" -X "$DIR/isp/pppoe-server.pid"
ip netns exec "$WAN" pppoe-server -I eth2.300 -L 10.99.10.100 -R 10.99.10.1 -N 4 \
	-O "$DIR/isp/pppoe-server-options" -X "$DIR/isp/pppoe-server-vlan.pid"

for fw in fw1 fw2; do
	ns=${PREFIX}$fw
	# The bond: two more cables from the firewall into the WAN switch.
	for i in 0 1; do
		ip -n "$ns" link add "wanb$i" type veth peer name "${fw}b$i" netns "$SW"
		ip -n "$SW" link set "${fw}b$i" master brwan
		ip -n "$SW" link set "${fw}b$i" up
	done
	# The bond WAN's members: two cables into the bond switch, nothing on
	# them; the WAN's stanza makes bond1 of them on the MASTER only.
	for i in 0 1; do
		ip -n "$ns" link add "wanc$i" type veth peer name "${fw}c$i" netns "$SW"
		ip -n "$SW" link set "${fw}c$i" master brbond
		ip -n "$SW" link set "${fw}c$i" up
	done
	# Node-local devices under two more WANs: a bridge of one more cable
	# into the WAN switch (its VLAN 400 is a WAN), and VLAN 300 on a cable
	# into the PPPoE-over-VLAN switch (a PPPoE WAN's parent).
	ip -n "$ns" link add wand0 type veth peer name "${fw}d0" netns "$SW"
	ip -n "$SW" link set "${fw}d0" master brwan
	ip -n "$SW" link set "${fw}d0" up
	ip -n "$ns" link add br0 type bridge
	ip -n "$ns" link set wand0 master br0
	ip -n "$ns" link set wand0 up
	ip -n "$ns" link set br0 up
	ip -n "$ns" link add wane0 type veth peer name "${fw}e0" netns "$SW"
	ip -n "$SW" link set "${fw}e0" master brppv
	ip -n "$SW" link set "${fw}e0" up
	ip -n "$ns" link set wane0 up
	ip -n "$ns" link add link wane0 name wane0.300 type vlan id 300
	ip -n "$ns" link set wane0.300 up
	ip -n "$ns" link add bond0 type bond mode active-backup miimon 100
	ip -n "$ns" link set wanb0 master bond0
	ip -n "$ns" link set wanb1 master bond0
	ip -n "$ns" link set bond0 up
	# pppd's log (the VM has no syslog): the node's /etc/ppp/options, which
	# pppd reads before the peers file ns-ha renders.
	install -d -m 0755 "$DIR/$fw/etc/ppp"
	echo "logfile $DIR/$fw/var/log/pppd.log" >"$DIR/$fw/etc/ppp/options"
	# What a Debian firewall with the ppp and ns-ha packages has in
	# /etc/ppp (the node's own is what pppd sees): Debian's ip-up, which
	# runs ip-up.d, and ns-ha's hook for the PPPoE WAN's default route.
	install -d -m 0755 "$DIR/$fw/etc/ppp/ip-up.d"
	install -m 0755 /etc/ppp/ip-up "$DIR/$fw/etc/ppp/ip-up"
	install -m 0755 "$HERE/../../packaging/debian/ppp/ns-ha-wan-route" "$DIR/$fw/etc/ppp/ip-up.d/"
	# A PID namespace of the node's own for what ns-ha starts through
	# ifupdown (NodeRoot::PID_NAMESPACE_FILE): `poff NAME` stops every
	# `pppd call NAME` it sees, and in the VM's one PID space the node
	# going BACKUP would stop the other node's session too. Its init is
	# unshare's child; the VM goes with it.
	ip netns exec "$ns" unshare --pid --fork sleep infinity </dev/null >/dev/null 2>&1 &
	holder=$!
	init=
	for _ in $(seq 100); do
		init=$(ps -o pid= --ppid "$holder" | tr -d ' ')
		[[ -n $init ]] && break
		sleep 0.1
	done
	[[ -n $init ]] || die "the PID namespace of $fw did not start"
	install -d -m 0755 "$DIR/$fw/run"
	echo "$init" >"$DIR/$fw/run/ns-ha-lab-pid-namespace"
	# The firewall's main uplink, up before any takeover WAN: pppd 2.4.9
	# then declines to add the PPPoE WAN's default route (the hook adds it),
	# every run, not only when a VLAN WAN happens to come up first.
	ip -n "$ns" route add default via 10.99.2.100 dev wan0 metric 10
done
