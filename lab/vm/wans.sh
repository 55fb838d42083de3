#!/usr/bin/env bash
# wans.sh: give a running lab (lab/lab.sh up PREFIX) the WAN devices that need
# kernel features this machine's kernel lacks: a VLAN WAN, a VLAN-on-bond WAN
# and a PPPoE WAN, with the WAN host playing the ISP for each. Run it only in
# the VM tier (lab/vm.sh), where Debian's stock kernel has bonding, 8021q and
# PPPoE.
#
# Usage: wans.sh up PREFIX
#
# Each WAN is a takeover WAN: the same device and address are defined on both
# firewalls, and only the MASTER brings it up. The device work is done by the
# init scripts installed here into each node root (wan-vlan, wan-bondvlan,
# pppoe-wan), which the role engine starts on MASTER and stops on
# BACKUP/FAULT; they stand in for the platform's interface manager
# (ifupdown/netifd). Layout (the ISP side is the lab's `wan` namespace):
#
#   fw wan0.100 (VLAN 100 on wan0)           10.99.8.1/24  ISP eth0.100 10.99.8.100
#   fw bond0.200 (VLAN 200 on bond0 = wanb0+wanb1, active-backup)
#                                            10.99.4.1/24  ISP eth0.200 10.99.4.100
#   fw pppwan (PPPoE over wan0, PAP)         from the pool ISP pppoe-server 10.99.5.100
#   "the internet" behind the ISP: 10.99.9.100/32 on the ISP's lo.
#
# The VLAN WANs' default routes live in routing tables of their own (100,
# 200; rules "from ADDR lookup TABLE"), the PPPoE WAN's in the main table,
# as a multi-WAN firewall has them.
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
for c in pppd pppoe-server pppoe; do
	command -v "$c" >/dev/null || die "missing command $c: apt-get install ppp pppoe (make deps)"
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
ip netns exec "$WAN" sysctl -qw net.ipv4.ip_forward=1

install -d -m 0755 "$DIR/isp"
# PAP secrets: pppd reads only /etc/ppp/pap-secrets (the VM's /etc is a tmpfs layer).
install -d -m 0755 /etc/ppp
printf '%s * %s *\n' "$PPP_USER" "$PPP_SECRET" >/etc/ppp/pap-secrets
chmod 0600 /etc/ppp/pap-secrets
cat >"$DIR/isp/pppoe-server-options" <<OPTS
require-pap
lcp-echo-interval 1
lcp-echo-failure 3
noipdefault
nodefaultroute
logfile $DIR/isp/pppd.log
OPTS
# -N 4: the old master's session lingers until its LCP echoes time out.
ip netns exec "$WAN" pppoe-server -I eth0 -L 10.99.5.100 -R 10.99.5.1 -N 4 \
	-O "$DIR/isp/pppoe-server-options" -X "$DIR/isp/pppoe-server.pid"

for fw in fw1 fw2; do
	ns=${PREFIX}$fw
	root=$DIR/$fw
	# The bond: two more cables from the firewall into the WAN switch.
	for i in 0 1; do
		ip -n "$ns" link add "wanb$i" type veth peer name "${fw}b$i" netns "$SW"
		ip -n "$SW" link set "${fw}b$i" master brwan
		ip -n "$SW" link set "${fw}b$i" up
	done
	ip -n "$ns" link add bond0 type bond mode active-backup miimon 100
	ip -n "$ns" link set wanb0 master bond0
	ip -n "$ns" link set wanb1 master bond0
	ip -n "$ns" link set bond0 up
	# The takeover WAN devices, defined on both nodes, down until MASTER.
	ip -n "$ns" link add link wan0 name wan0.100 type vlan id 100
	ip -n "$ns" addr add 10.99.8.1/24 dev wan0.100
	ip -n "$ns" link add link bond0 name bond0.200 type vlan id 200
	ip -n "$ns" addr add 10.99.4.1/24 dev bond0.200
	ip -n "$ns" rule add from 10.99.8.1 lookup 100
	ip -n "$ns" rule add from 10.99.4.1 lookup 200
	install -d -m 0755 "$root/etc/lab-wan"
	printf 'DEV=wan0.100\nGW=10.99.8.100\nTABLE=100\n' >"$root/etc/lab-wan/wan-vlan"
	printf 'DEV=bond0.200\nGW=10.99.4.100\nTABLE=200\n' >"$root/etc/lab-wan/wan-bondvlan"
	cat >"$root/etc/lab-wan/pppoe-wan.options" <<OPTS
plugin pppoe.so
nic-wan0
ifname pppwan
linkname $PREFIX-$fw
user $PPP_USER
noauth
noipdefault
defaultroute
persist
maxfail 0
holdoff 1
lcp-echo-interval 1
lcp-echo-failure 3
OPTS
	install -m 0755 "$HERE/wan-link.init" "$root/etc/init.d/wan-vlan"
	install -m 0755 "$HERE/wan-link.init" "$root/etc/init.d/wan-bondvlan"
	install -m 0755 "$HERE/pppoe-wan.init" "$root/etc/init.d/pppoe-wan"
done
