#!/usr/bin/env bash
# The ns-ha demo: two firewalls in network namespaces become one HA gateway
# with the real keepalived, sshd, conntrackd and dnsmasq. It pairs them with
# ns-ha-init, syncs a change, fails over five times while a LAN client pings
# the VIP (median outage printed), does the same three times at the
# incumbent's VRRP timing (VRRPv2, 1 s adverts) for comparison, adds a
# takeover WAN (DHCP from the lab's ISP, with a cluster MAC) and fails it over
# while the client pings the ISP, shows status, and tears everything down
# (also on error or Ctrl-C).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
BIN=${NS_HA_BIN:-${CARGO_TARGET_DIR:-$TOP/target}/debug}
LAB=$HERE/lab.sh
PREFIX=nhdemo$((RANDOM % 1000))
ROUNDS=${DEMO_ROUNDS:-5}
INCUMBENT_ROUNDS=${DEMO_INCUMBENT_ROUNDS:-3}
LAN_VIP=10.99.1.254
WAN_VIP=10.99.2.254
SCRATCH=$(mktemp -d)
PING_PID=

cleanup() {
	[ -n "$PING_PID" ] && kill "$PING_PID" 2>/dev/null || true
	[ -n "${DEMO_KEEP:-}" ] || "$LAB" down "$PREFIX" >/dev/null 2>&1 || true
	rm -rf "$SCRATCH"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for t in ns-ha-init ns-ha-sync ns-ha-role ns-ha-check ns-ha-vip; do
	[ -x "$BIN/$t" ] || { echo "demo: $BIN/$t is missing: run 'make build' first" >&2; exit 1; }
done

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ns() { printf '%s%s' "$PREFIX" "$1"; }
# tool NODE TOOL ARGS...: run an ns-ha tool on a firewall, showing the command.
tool() {
	local node=$1 t=$2
	shift 2
	printf '[%s]# %s %s\n' "$node" "$t" "$*" >&2
	ip netns exec "$(ns "$node")" "$BIN/$t" --root "$DIR/$node" "$@"
}
holders() {
	local who=""
	for fw in fw1 fw2; do
		# Not `grep -q`: it exits at the first match, `ip` may then die of
		# SIGPIPE, and under pipefail the holder would not be counted.
		# `up`: a crashed box keeps its addresses on links that are down,
		# where nobody can reach them.
		ip -n "$(ns $fw)" -o addr show up | grep " $1/" >/dev/null && who="$who $fw"
	done
	echo "${who# }"
}
wait_holder() { # wait_holder VIP NODE SECONDS
	local end=$((SECONDS + $3))
	while [ "$(holders "$1")" != "$2" ]; do
		[ $SECONDS -lt $end ] || { echo "demo: $2 did not take $1 (holders: $(holders "$1"))" >&2; return 1; }
		sleep 0.05
	done
}

step "Building the lab: fw1, fw2, a LAN client and a WAN host (prefix $PREFIX)"
NS_HA_BIN_SRC=$BIN "$LAB" up "$PREFIX"
DIR=$("$LAB" dir "$PREFIX")
# The tools as installed in the lab (root-owned), which keepalived will run.
BIN=$DIR/bin
echo "node roots: $DIR/fw1 $DIR/fw2; sshd runs on both firewalls"

step "The administrator's existing config on fw1: dnsmasq serves DHCP and DNS on the LAN VIP"
cat >"$DIR/fw1/etc/dnsmasq.conf" <<CONF
# DHCP and DNS for the LAN, on the VIP (bind-dynamic: it answers once the VIP appears)
interface=lan0
listen-address=$LAN_VIP
bind-dynamic
except-interface=lo
no-hosts
dhcp-range=10.99.1.150,10.99.1.199,255.255.255.0,1h
dhcp-option=option:router,$LAN_VIP
dhcp-option=option:dns-server,$LAN_VIP
dhcp-authoritative
address=/gw.lab/10.99.2.100
CONF
echo "wrote /etc/dnsmasq.conf on fw1 only: the sync will bring it to fw2"

step "Pairing with ns-ha-init (no password crosses the network)"
# The lab's nodes are OpenWrt-style roots on a Debian machine: their takeover
# WANs go through ifupdown (there is no netifd/ubus here).
KEY=$(tool fw1 ns-ha-init --json init-primary --ha-interface ha0 --peer 10.99.0.2 --interface-manager ifupdown |
	sed -n 's/.*"public_key":"\([^"]*\)".*/\1/p')
echo "primary public key: $KEY"
FP=$(tool fw2 ns-ha-init --json init-backup --ha-interface ha0 --peer 10.99.0.1 --primary-key "$KEY" --interface-manager ifupdown |
	sed -n 's/.*"host_key_fingerprint":"\([^"]*\)".*/\1/p')
echo "backup host key fingerprint (read on the backup console): $FP"
tool fw1 ns-ha-init pair --host-key-fingerprint "$FP"
tool fw1 ns-ha-init add-lan --interface lan0 --vip $LAN_VIP/24
tool fw1 ns-ha-init add-lan --interface wan0 --vip $WAN_VIP/24
tool fw1 ns-ha-init enable
wait_holder $LAN_VIP fw1 15
echo "fw1 is MASTER and holds $LAN_VIP; fw2 is BACKUP"
tool fw1 ns-ha-init show-config
ip netns exec "$(ns lan)" ping -q -c 3 -i 0.2 $LAN_VIP | tail -2

running() { ip netns exec "$(ns "$1")" "$DIR/$1/etc/init.d/$2" status >/dev/null 2>&1; }
where_runs() {
	local who=""
	for fw in fw1 fw2; do running $fw "$1" && who="$who $fw"; done
	echo "${who# }"
}
wait_runs() { # wait_runs SERVICE NODES SECONDS
	local end=$((SECONDS + $3))
	while [ "$(where_runs "$1")" != "$2" ]; do
		[ $SECONDS -lt $end ] || { echo "demo: $1 runs on '$(where_runs "$1")', expected '$2'" >&2; return 1; }
		sleep 0.05
	done
}

step "Role engine: fw1 became MASTER, so it runs the master-only services"
tool fw1 ns-ha-role apply --wait 60 >/dev/null
wait_runs dnsmasq fw1 20
echo "dnsmasq runs on: $(where_runs dnsmasq)"
tool fw1 ns-ha-role status --history 3

step "Config sync: the MASTER transition pushed fw1's config to fw2"
cmp -s "$DIR/fw1/etc/dnsmasq.conf" "$DIR/fw2/etc/dnsmasq.conf" && echo "fw2 has fw1's /etc/dnsmasq.conf"
echo "an administrator changes a DNS name on fw1:"
sed -i 's|address=/gw.lab/10.99.2.100|address=/gw.lab/10.99.2.100\naddress=/vpn.lab/10.99.2.100|' "$DIR/fw1/etc/dnsmasq.conf"
tool fw1 ns-ha-sync diff
tool fw1 ns-ha-sync push
grep -q 'vpn.lab' "$DIR/fw2/etc/dnsmasq.conf" && echo "fw2 has the change"
tool fw1 ns-ha-sync status
tool fw1 ns-ha-sync verify && echo "no edits on the backup"

step "Maintenance: hand the VIPs to fw2 while the client pings every 5 ms"
# lost_pings FILE: how many of the pings sent got no reply.
lost_pings() { awk '/packets transmitted/ { print $1 - $4 }' "$1"; }
# handover MODE HOLDER: maintenance MODE on fw1 while the client pings every
# 5 ms; wait until HOLDER has the VIP and runs dnsmasq; report lost pings.
handover() {
	local log="$SCRATCH/maint-$1"
	ip netns exec "$(ns lan)" ping -n -q -i 0.005 -W 1 $LAN_VIP >"$log" 2>&1 &
	PING_PID=$!
	sleep 0.5
	tool fw1 ns-ha-role maintenance "$1"
	wait_holder $LAN_VIP "$2" 10
	wait_runs dnsmasq "$2" 20
	sleep 0.5
	kill -INT "$PING_PID"
	wait "$PING_PID" 2>/dev/null || true
	PING_PID=
	echo "VIP on $(holders $LAN_VIP), dnsmasq on $(where_runs dnsmasq); pings lost: $(lost_pings "$log") of $(awk '/packets transmitted/ { print $1 }' "$log")"
}
handover on fw2
handover off fw1

step "Failover: fw1 lost (keepalived frozen and killed, links down) while the client pings the VIP every 10 ms"
# outage_ms FILE: the longest gap between two consecutive replies, in ms.
outage_ms() {
	sed -n 's/^\[\([0-9.]*\)\].*icmp_seq=.*/\1/p' "$1" |
		awk 'NR > 1 { g = ($1 - p) * 1000; if (g > m) m = g } { p = $1 } END { printf "%d\n", m }'
}
# failover_rounds N [AFTER...]: lose fw1 N times while the client pings the
# VIP every 10 ms; prints each round; the outages (ms) go to the array
# `results`. After each round fw1 comes back as after a reboot, AFTER (if
# given) runs, and fw1 takes the VIP back.
failover_rounds() {
	results=()
	local round ms end
	for round in $(seq 1 "$1"); do
		sleep 3 # the backup has heard the master's adverts (1 s apart at the incumbent's timing)
		ip netns exec "$(ns lan)" ping -n -D -i 0.01 -W 1 $LAN_VIP >"$SCRATCH/ping.$round" 2>&1 &
		PING_PID=$!
		sleep 1
		"$LAB" crash "$PREFIX" fw1
		wait_holder $LAN_VIP fw2 10
		sleep 1
		kill "$PING_PID"
		wait "$PING_PID" 2>/dev/null || true
		PING_PID=
		ms=$(outage_ms "$SCRATCH/ping.$round")
		results+=("$ms")
		end=$((SECONDS + 20))
		until running fw2 dnsmasq; do
			[ $SECONDS -lt $end ] || { echo "demo: dnsmasq did not start on fw2" >&2; exit 1; }
			sleep 0.05
		done
		echo "round $round: fw2 took over, client outage ${ms} ms; dnsmasq runs on fw2"
		"$LAB" revive "$PREFIX" fw1
		[ $# -lt 2 ] || "${@:2}"
		wait_holder $LAN_VIP fw1 20
	done
}
median_of() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
failover_rounds "$ROUNDS"
ours=("${results[@]}")
echo "failover outage over $ROUNDS rounds: ${ours[*]} ms; median $(median_of "${ours[@]}") ms"

step "The same loss at the incumbent's VRRP timing (VRRPv2, 1 s adverts), same lab"
cp "$DIR/fw1/etc/keepalived/keepalived.conf" "$SCRATCH/fw1-keepalived.conf"
cp "$DIR/fw2/etc/keepalived/keepalived.conf" "$SCRATCH/fw2-keepalived.conf"
"$LAB" vrrp-incumbent "$PREFIX"
wait_holder $LAN_VIP fw1 20
# Both keepalived restarted after each revive (as the benchmark does): the
# revived fw1 alone did not always take the VIPs back at this timing.
failover_rounds "$INCUMBENT_ROUNDS" "$LAB" vrrp-incumbent "$PREFIX"
theirs=("${results[@]}")
echo "incumbent timing over $INCUMBENT_ROUNDS rounds: ${theirs[*]} ms; median $(median_of "${theirs[@]}") ms"
echo "ns-ha defaults: median $(median_of "${ours[@]}") ms; incumbent timing: median $(median_of "${theirs[@]}") ms (both measured just now)"
for fw in fw1 fw2; do
	cp "$SCRATCH/$fw-keepalived.conf" "$DIR/$fw/etc/keepalived/keepalived.conf"
	ip netns exec "$(ns $fw)" "$DIR/$fw/etc/init.d/keepalived" restart >/dev/null
done
wait_holder $LAN_VIP fw1 20

step "A takeover WAN: one DHCP address for the pair, leased to a cluster MAC, up on the MASTER only"
# The WAN host plays the ISP on the takeover WAN (10.99.3.0/24): a DHCP
# server with one lease per MAC, and the ISP's router at $ISP.
ISP=10.99.3.100
CLUSTER_MAC=02:00:5e:10:00:01
"$LAB" isp-dhcp "$PREFIX"
# wan_addr NODE: the IPv4 address of NODE's wan1 while it is up (empty if none).
wan_addr() { ip -n "$(ns "$1")" -4 -o addr show dev wan1 up 2>/dev/null | awk '{ sub(/\/.*/, "", $4); print $4; exit }'; }
wait_wan() { # wait_wan NODE SECONDS: until NODE's wan1 has a lease
	local end=$((SECONDS + $2))
	until [ -n "$(wan_addr "$1")" ]; do
		[ $SECONDS -lt $end ] || { echo "demo: $1 got no lease on wan1" >&2; return 1; }
		sleep 0.05
	done
}
tool fw1 ns-ha-init add-wan --interface wan1 --ipv4 dhcp --cluster-mac $CLUSTER_MAC
# On a running pair the role engine brings a new WAN up at its next
# reconcile: ask for one now on the MASTER.
tool fw1 ns-ha-role apply --wait 30 >/dev/null
wait_wan fw1 20
LEASED=$(wan_addr fw1)
# wan_of NODE: its wan1 address, or "down".
wan_of() { wan_addr "$1" | grep . || echo down; }
echo "fw1 (MASTER) leased $LEASED for $CLUSTER_MAC; fw2's wan1: $(wan_of fw2)"
echo "the ISP's leases (expiry MAC address ...): $(cat "$DIR/isp/dnsmasq.leases")"
# The ISP routes the customer's LAN to its WAN address.
ip -n "$(ns wan)" route replace 10.99.1.0/24 via "$LEASED" src $ISP
ip netns exec "$(ns lan)" ping -q -c 3 -i 0.2 $ISP | tail -2

step "Failover of the takeover WAN: fw1 lost while the client pings the ISP ($ISP) every 10 ms"
sleep 1
ip netns exec "$(ns lan)" ping -n -D -i 0.01 -W 1 $ISP >"$SCRATCH/ping.wan" 2>&1 &
PING_PID=$!
sleep 1
"$LAB" crash "$PREFIX" fw1
wait_wan fw2 20
sleep 1
kill "$PING_PID"
wait "$PING_PID" 2>/dev/null || true
PING_PID=
echo "fw2 brought wan1 up with $CLUSTER_MAC and leased $(wan_addr fw2) (fw1 had $LEASED); client -> ISP outage $(outage_ms "$SCRATCH/ping.wan") ms"
echo "the ISP's leases: $(cat "$DIR/isp/dnsmasq.leases")"
"$LAB" revive "$PREFIX" fw1
wait_holder $LAN_VIP fw1 20
wait_wan fw1 20
end=$((SECONDS + 10))
while [ -n "$(wan_addr fw2)" ] && [ $SECONDS -lt $end ]; do sleep 0.05; done # fw2's ifdown
echo "fw1 is back and MASTER: wan1 on fw1: $(wan_of fw1), on fw2: $(wan_of fw2)"

step "Status after the failovers"
for fw in fw1 fw2; do ip netns exec "$(ns $fw)" "$BIN/ns-ha-role" --root "$DIR/$fw" apply --wait 30 >/dev/null || true; done
tool fw1 ns-ha-check status
tool fw2 ns-ha-check status
tool fw1 ns-ha-vip list
tool fw2 ns-ha-vip who-holds $LAN_VIP
tool fw1 ns-ha-check doctor
tool fw1 ns-ha-role status --history 2

step "Done: tearing the lab down"
