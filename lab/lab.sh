#!/usr/bin/env bash
# lab.sh: build, break and tear down the ns-ha test lab.
#
# The lab is two firewalls (fw1, fw2), a LAN client (lan) and a WAN host (wan),
# each in its own network namespace, joined by veth pairs and by two bridges
# that live in a fifth "switch" namespace (sw). Nothing is created in the root
# namespace and only 10.99.0.0/16 is used. Each firewall also gets a node root
# (a miniature filesystem with etc/, run/, var/ ...) under the lab dir, an
# OpenSSH sshd of its own, and OpenWrt-style init scripts that start the real
# daemons (keepalived, sshd, conntrackd, dnsmasq) inside its namespace.
#
# Usage:
#   lab.sh up PREFIX          build the lab (silent unless it fails)
#   lab.sh down PREFIX        tear it down (idempotent, tolerates partial setup)
#   lab.sh crash PREFIX NODE  simulate a dead box (freeze+kill keepalived, all links down)
#   lab.sh revive PREFIX NODE bring a crashed box back as after a reboot (links up,
#                             no leftover VIPs or master services, keepalived started)
#   lab.sh isp-dhcp PREFIX    start the ISP's DHCP server (dnsmasq on the WAN host,
#                             one lease per MAC in TAKEOVER_DHCP_FIRST..LAST, leases
#                             in LABDIR/isp/dnsmasq.leases) for DHCP takeover WANs
#   lab.sh vrrp-incumbent PREFIX
#                             rewrite both firewalls' rendered keepalived.conf to the
#                             incumbent's VRRP timing (VRRPv2, 1 s adverts) and restart
#                             keepalived: the baseline of the failover benchmark and demo
#   lab.sh dir PREFIX         print the lab dir
#
# Environment: NS_HA_LAB_SSH_SERVER picks the firewalls' SSH server: openssh
# (default: sshd, /etc/ssh) or dropbear (as on NethSecurity/OpenWrt:
# /etc/dropbear with its host key and authorized_keys, no /etc/ssh/sshd_config).
# NS_HA_BIN_SRC, if set, is a directory of built ns-ha-* tools
# that `up` installs into LABDIR/bin (root-owned, 0755), as a package would:
# keepalived runs notify scripts only from paths no other user can write, and
# a checkout may live under /tmp. NS_HA_LAB_BASE (default /var/lib/ns-ha-lab)
# holds one lab dir per prefix. It must not be under /tmp: sshd's StrictModes wants every path
# component root-owned and not group/world writable.
set -Eeuo pipefail

LAB_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
LAB_BASE=${NS_HA_LAB_BASE:-/var/lib/ns-ha-lab}
SSH_SERVER=${NS_HA_LAB_SSH_SERVER:-openssh}

# Roles in the lab and the namespace suffix of each.
ROLES=(sw fw1 fw2 lan wan)
FIREWALLS=(fw1 fw2)

# Addressing plan (the contract the harness and the demo read from lab.json).
HA_NET=10.99.0.0/24
LAN_NET=10.99.1.0/24
WAN_NET=10.99.2.0/24
LAN_VIP=10.99.1.254
WAN_VIP=10.99.2.254
declare -A HA_ADDR=([fw1]=10.99.0.1 [fw2]=10.99.0.2)
declare -A LAN_ADDR=([fw1]=10.99.1.1 [fw2]=10.99.1.2 [lan]=10.99.1.100)
declare -A WAN_ADDR=([fw1]=10.99.2.1 [fw2]=10.99.2.2 [wan]=10.99.2.100)
# A takeover WAN (ns-ha-init add-wan): each firewall has a second cable into
# the WAN switch (wan1, down, no address: the role engine brings it up on the
# MASTER); the WAN host is the ISP of 10.99.3.0/24 and fd10:99:3::/64
# (unique-local IPv6, inside the lab's namespaces only).
TAKEOVER_IF=wan1
TAKEOVER_NET=10.99.3.0/24
TAKEOVER_NET6=fd10:99:3::/64
TAKEOVER_ISP=10.99.3.100
TAKEOVER_ISP6=fd10:99:3::100
# The ISP's DHCP pool on the takeover WAN (lab.sh isp-dhcp), clear of the
# static addresses the tests give it (10.99.3.1, the ISP's .100).
TAKEOVER_DHCP_FIRST=10.99.3.10
TAKEOVER_DHCP_LAST=10.99.3.49

# Directories of a node root (all 0755 unless listed in NODE_DIR_MODES).
NODE_DIRS=(etc etc/ns-ha etc/keepalived etc/ssh etc/init.d etc/rc.d etc/conntrackd
	etc/config etc/crontabs etc/dhcp etc/dhcp/dhclient-enter-hooks.d
	etc/dhcp/dhclient-exit-hooks.d root root/.ssh run var var/lib var/lib/misc
	var/lib/dhcp var/log tmp)
declare -A NODE_DIR_MODES=([root/.ssh]=0700 [tmp]=1777)

die() {
	echo "lab.sh: $*" >&2
	exit 1
}

usage() {
	echo "usage: lab.sh up|down|dir|vrrp-incumbent|isp-dhcp PREFIX | lab.sh crash|revive PREFIX NODE" >&2
	exit 2
}

check_prefix() {
	[[ $1 =~ ^[a-z][a-z0-9]{0,9}$ ]] ||
		die "bad prefix '$1': want 1-10 chars of [a-z0-9], starting with a letter"
}

ns_of() { echo "${PREFIX}$1"; }
lab_dir() { echo "${LAB_BASE%/}/${PREFIX}"; }

ns_exists() {
	ip netns list 2>/dev/null | awk '{print $1}' | grep -x -- "$1" >/dev/null
}

# --- down -------------------------------------------------------------------

# Signal every process inside namespace $1 (TERM, then KILL after ~2 s).
kill_ns_pids() {
	local ns=$1 pids
	pids=$(ip netns pids "$ns" 2>/dev/null || true)
	[[ -n $pids ]] || return 0
	# shellcheck disable=SC2086 # word splitting of the pid list is wanted
	kill -TERM $pids 2>/dev/null || true
	for _ in $(seq 20); do
		pids=$(ip netns pids "$ns" 2>/dev/null || true)
		[[ -n $pids ]] || return 0
		sleep 0.1
	done
	# shellcheck disable=SC2086
	kill -KILL $pids 2>/dev/null || true
	for _ in $(seq 20); do
		pids=$(ip netns pids "$ns" 2>/dev/null || true)
		[[ -n $pids ]] || return 0
		sleep 0.1
	done
	echo "lab.sh: processes still alive in $ns: $pids" >&2
	return 1
}

cmd_down() {
	local role ns dir ok=0
	# Processes first (all namespaces), so no daemon reacts to links vanishing.
	for role in "${ROLES[@]}"; do
		ns=$(ns_of "$role")
		ns_exists "$ns" || continue
		kill_ns_pids "$ns" || ok=1
	done
	for role in "${ROLES[@]}"; do
		ns=$(ns_of "$role")
		ns_exists "$ns" || continue
		ip netns delete "$ns" 2>/dev/null || {
			echo "lab.sh: cannot delete namespace $ns" >&2
			ok=1
		}
	done
	dir=$(lab_dir)
	if [[ -e $dir ]]; then
		rm -rf --one-file-system -- "$dir" || {
			echo "lab.sh: cannot remove $dir" >&2
			ok=1
		}
	fi
	return "$ok"
}

# --- up ---------------------------------------------------------------------

# The ERR trap of `up`: undo everything and print one line with the reason
# (the failed command and the last thing it said on stderr).
up_failed() {
	local rc=$1 line=$2 cmd=$3 said=
	trap - ERR
	set +e
	exec 2>&3
	[[ -n ${UP_ERRLOG:-} ]] && said=$(grep -v '^[[:space:]]*$' "$UP_ERRLOG" | tail -n 1)
	cmd_down >/dev/null 2>&1
	rm -f "${UP_ERRLOG:-}"
	echo "lab.sh: up $PREFIX failed (exit $rc, line $line: $cmd)${said:+: $said}" >&2
	exit 1
}

# veth NS_A NAME_A NS_B NAME_B: a veth pair created directly in both namespaces.
veth() {
	ip -n "$1" link add "$2" type veth peer name "$4" netns "$3"
}

# bridge_port NAME BRIDGE: enslave a switch-side veth and bring it up.
bridge_port() {
	local sw
	sw=$(ns_of sw)
	ip -n "$sw" link set "$1" master "$2"
	# Flood everything (VRRP adverts, gratuitous ARP) and never block a port.
	bridge -n "$sw" link set dev "$1" learning on flood on mcast_flood on
	ip -n "$sw" link set "$1" up
}

make_bridge() {
	# No STP (no listening delay), no multicast snooping (VRRP multicast and
	# IGMP-less receivers must just get flooded), short FDB ageing (3 s, in
	# centiseconds) so a MAC that moves between ports is relearned quickly.
	ip -n "$(ns_of sw)" link add "$1" type bridge \
		stp_state 0 forward_delay 0 mcast_snooping 0 ageing_time 300
	ip -n "$(ns_of sw)" link set "$1" up
}

addr() { # NS IFACE ADDR/LEN
	ip -n "$1" addr add "$3" dev "$2"
	ip -n "$1" link set "$2" up
}

make_node_root() { # NODE
	local node=$1 root d mode
	root="$(lab_dir)/$node"
	install -d -m 0755 "$root"
	for d in "${NODE_DIRS[@]}"; do
		mode=${NODE_DIR_MODES[$d]:-0755}
		install -d -m "$mode" "$root/$d"
	done
	ln -s ../run "$root/var/run"
	: >"$root/etc/crontabs/root"
	# The DHCP client ifupdown starts for a DHCP takeover WAN sees the node's
	# /etc/dhcp, /var/lib/dhcp and /run (common/src/ifcontrol.rs): Debian's
	# dhclient.conf request list, and an enter hook that keeps dhclient-script
	# off /etc/resolv.conf (the lab's nodes resolve like the machine).
	cat >"$root/etc/dhcp/dhclient.conf" <<'EOF'
# dhclient.conf of a lab node (lab/lab.sh): Debian's default request list.
option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;
request subnet-mask, broadcast-address, time-offset, routers,
	domain-name, domain-name-servers, domain-search, host-name,
	interface-mtu, rfc3442-classless-static-routes, ntp-servers;
EOF
	cat >"$root/etc/dhcp/dhclient-enter-hooks.d/ns-ha-lab" <<'EOF'
# Sourced by dhclient-script: a lab node never writes the machine's resolv.conf.
make_resolv_conf() { :; }
EOF
	install -m 0644 "$LAB_SRC/node/rc.common" "$root/etc/rc.common"
	for d in "$LAB_SRC"/node/init.d/*; do
		install -m 0755 "$d" "$root/etc/init.d/$(basename "$d")"
	done
	# fw2's SSH server (and the sync receiver it starts) sees a tmpfs of its
	# own on /tmp, like OpenWrt's, so a sync set spanning filesystems is
	# tested (init.d/sshd, init.d/dropbear).
	if [[ $node == fw2 ]]; then : >"$root/etc/lab-private-tmp"; fi
	if [[ $SSH_SERVER == dropbear ]]; then
		install -d -m 0700 "$root/etc/dropbear"
		dropbearkey -t ed25519 -f "$root/etc/dropbear/dropbear_ed25519_host_key" >/dev/null
		return
	fi
	ssh-keygen -q -t ed25519 -N '' -C "ns-ha-lab-$PREFIX-$node" \
		-f "$root/etc/ssh/ssh_host_ed25519_key"
	cat >"$root/etc/ssh/sshd_config" <<EOF
# sshd of lab node $node (prefix $PREFIX), written by lab/lab.sh.
Port 22
ListenAddress 0.0.0.0
HostKey $root/etc/ssh/ssh_host_ed25519_key
PidFile $root/run/sshd.pid
AuthorizedKeysFile $root/root/.ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin forced-commands-only
UsePAM no
StrictModes yes
UseDNS no
PrintMotd no
X11Forwarding no
LogLevel VERBOSE
EOF
	chmod 0644 "$root/etc/ssh/sshd_config"
}

write_lab_json() {
	local dir sw fw1 fw2 lan wan
	dir=$(lab_dir)
	sw=$(ns_of sw) fw1=$(ns_of fw1) fw2=$(ns_of fw2) lan=$(ns_of lan) wan=$(ns_of wan)
	cat >"$dir/lab.json.tmp" <<EOF
{
  "version": 1,
  "prefix": "$PREFIX",
  "ssh_server": "$SSH_SERVER",
  "dir": "$dir",
  "namespaces": {"sw": "$sw", "fw1": "$fw1", "fw2": "$fw2", "lan": "$lan", "wan": "$wan"},
  "bridges": {"lan": "brlan", "wan": "brwan"},
  "networks": {"ha": "$HA_NET", "lan": "$LAN_NET", "wan": "$WAN_NET"},
  "vips": {"lan": "$LAN_VIP/24", "wan": "$WAN_VIP/24"},
  "takeover_wan": {"iface": "$TAKEOVER_IF", "net": "$TAKEOVER_NET", "net6": "$TAKEOVER_NET6",
                   "isp": "$TAKEOVER_ISP/24", "isp6": "$TAKEOVER_ISP6/64",
                   "isp_dhcp": {"first": "$TAKEOVER_DHCP_FIRST", "last": "$TAKEOVER_DHCP_LAST",
                                "leases": "$dir/isp/dnsmasq.leases"}},
  "nodes": {
    "fw1": {"ns": "$fw1", "root": "$dir/fw1",
            "ifaces": {"ha": "ha0", "lan": "lan0", "wan": "wan0"},
            "addrs": {"ha": "${HA_ADDR[fw1]}/24", "lan": "${LAN_ADDR[fw1]}/24", "wan": "${WAN_ADDR[fw1]}/24"}},
    "fw2": {"ns": "$fw2", "root": "$dir/fw2",
            "ifaces": {"ha": "ha0", "lan": "lan0", "wan": "wan0"},
            "addrs": {"ha": "${HA_ADDR[fw2]}/24", "lan": "${LAN_ADDR[fw2]}/24", "wan": "${WAN_ADDR[fw2]}/24"}},
    "lan": {"ns": "$lan", "ifaces": {"lan": "eth0"}, "addrs": {"lan": "${LAN_ADDR[lan]}/24"},
            "routes": {"default": "$LAN_VIP"}},
    "wan": {"ns": "$wan", "ifaces": {"wan": "eth0"}, "addrs": {"wan": "${WAN_ADDR[wan]}/24"},
            "routes": {"$LAN_NET": "$WAN_VIP"}}
  }
}
EOF
	mv "$dir/lab.json.tmp" "$dir/lab.json"
}

cmd_up() {
	local role ns fw sw dir ssh_service
	[[ $(id -u) -eq 0 ]] || die "up: must run as root"
	case $SSH_SERVER in
	openssh) ssh_service=sshd ;;
	dropbear) ssh_service=dropbear ;;
	*) die "up: NS_HA_LAB_SSH_SERVER must be openssh or dropbear, not '$SSH_SERVER'" ;;
	esac
	for role in ip bridge ssh-keygen "$ssh_service" keepalived; do
		command -v "$role" >/dev/null 2>&1 || [[ -x /usr/sbin/$role ]] ||
			die "up: missing command '$role'"
	done
	case "${LAB_BASE%/}/" in /tmp/* | /var/tmp/* | /dev/shm/*)
		die "up: NS_HA_LAB_BASE must not be under a world-writable dir (sshd StrictModes)"
		;;
	esac
	dir=$(lab_dir)
	for role in "${ROLES[@]}"; do
		ns_exists "$(ns_of "$role")" && die "up: namespace $(ns_of "$role") already exists"
	done
	[[ -e $dir ]] && die "up: $dir already exists"

	# From here on, stderr goes to a scratch file (fd 3 keeps the real one)
	# so that a failure is reported as one line, after the teardown.
	UP_ERRLOG=$(mktemp)
	exec 3>&2 2>"$UP_ERRLOG"
	trap 'up_failed $? $LINENO "$BASH_COMMAND"' ERR

	install -d -m 0755 "$LAB_BASE" "$dir"
	install -d -m 0755 /run/sshd # sshd's privilege separation dir

	for role in "${ROLES[@]}"; do
		ns=$(ns_of "$role")
		ip netns add "$ns"
		ip -n "$ns" link set lo up
	done
	sw=$(ns_of sw)
	make_bridge brlan
	make_bridge brwan

	# HA link: a direct cable between the firewalls.
	veth "$(ns_of fw1)" ha0 "$(ns_of fw2)" ha0
	# LAN and WAN: every box has one cable into the switch.
	for fw in "${FIREWALLS[@]}"; do
		veth "$(ns_of "$fw")" lan0 "$sw" "${fw}lan"
		bridge_port "${fw}lan" brlan
		veth "$(ns_of "$fw")" wan0 "$sw" "${fw}wan"
		bridge_port "${fw}wan" brwan
		veth "$(ns_of "$fw")" "$TAKEOVER_IF" "$sw" "${fw}wan1"
		bridge_port "${fw}wan1" brwan
	done
	veth "$(ns_of lan)" eth0 "$sw" lanhost
	bridge_port lanhost brlan
	veth "$(ns_of wan)" eth0 "$sw" wanhost
	bridge_port wanhost brwan

	for fw in "${FIREWALLS[@]}"; do
		ns=$(ns_of "$fw")
		addr "$ns" ha0 "${HA_ADDR[$fw]}/24"
		addr "$ns" lan0 "${LAN_ADDR[$fw]}/24"
		addr "$ns" wan0 "${WAN_ADDR[$fw]}/24"
		ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
	done
	ns=$(ns_of lan)
	addr "$ns" eth0 "${LAN_ADDR[lan]}/24"
	ip -n "$ns" route add default via "$LAN_VIP" dev eth0 onlink
	ns=$(ns_of wan)
	addr "$ns" eth0 "${WAN_ADDR[wan]}/24"
	ip -n "$ns" route add "$LAN_NET" via "$WAN_VIP" dev eth0 onlink
	ip -n "$ns" addr add "$TAKEOVER_ISP/24" dev eth0
	ip -n "$ns" -6 addr add "$TAKEOVER_ISP6/64" dev eth0 nodad

	for fw in "${FIREWALLS[@]}"; do
		make_node_root "$fw"
	done
	if [[ -n ${NS_HA_BIN_SRC:-} ]]; then
		install -d -m 0755 "$dir/bin"
		install -m 0755 "$NS_HA_BIN_SRC"/ns-ha-* -t "$dir/bin"
		rm -f "$dir"/bin/*.d
	fi
	write_lab_json
	for fw in "${FIREWALLS[@]}"; do
		ip netns exec "$(ns_of "$fw")" "$dir/$fw/etc/init.d/$ssh_service" start >/dev/null
	done
	[[ -n ${NS_HA_LAB_FAIL_TEST:-} ]] && false # lets the tests check the teardown
	trap - ERR
	exec 2>&3 3>&-
	rm -f "$UP_ERRLOG"
}

# --- crash ------------------------------------------------------------------

# Pids of keepalived processes of NODE: from its pid files, plus any process
# in its namespace whose comm is keepalived (a child whose pid file is gone).
keepalived_pids() {
	local node=$1 root ns f pid
	root="$(lab_dir)/$node"
	ns=$(ns_of "$node")
	{
		for f in "$root/run/keepalived.pid" "$root/run/keepalived_vrrp.pid"; do
			[[ -r $f ]] && cat "$f"
		done
		ip netns pids "$ns" 2>/dev/null || true
	} | sort -un | while read -r pid; do
		[[ $pid =~ ^[0-9]+$ ]] || continue
		[[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == keepalived ]] || continue
		# Only processes really inside this node's namespace.
		[[ "$(ip netns identify "$pid" 2>/dev/null)" == "$ns" ]] || continue
		echo "$pid"
	done
}

# Pids of the WAN clients in NODE's namespace: a DHCP takeover WAN's
# dhclient, a PPPoE WAN's pppd (the VM tier).
wan_client_pids() {
	local ns pid comm
	ns=$(ns_of "$1")
	for pid in $(ip netns pids "$ns" 2>/dev/null || true); do
		comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
		[[ $comm == dhclient || $comm == pppd ]] && echo "$pid"
	done
	return 0
}

cmd_crash() {
	local node=$1 ns pids iface
	[[ $node == fw1 || $node == fw2 ]] || die "crash: NODE must be fw1 or fw2"
	ns=$(ns_of "$node")
	ns_exists "$ns" || die "crash: namespace $ns does not exist"
	pids=$(keepalived_pids "$node")
	if [[ -n $pids ]]; then
		# Freeze first: a SIGKILLed parent alone would let the VRRP child
		# send a priority-0 advert (a graceful handover, not a crash).
		# shellcheck disable=SC2086
		kill -STOP $pids 2>/dev/null || true
		# shellcheck disable=SC2086
		kill -KILL $pids 2>/dev/null || true
	fi
	# Every link of the box goes down, the HA link first (the VM tier's
	# nodes also have bond members and VLANs). Those that were up are
	# listed for revive.
	local up_file
	up_file="$(lab_dir)/$node/run/lab-crashed-links"
	ip -n "$ns" -o link show up 2>/dev/null |
		awk -F': ' '{sub(/@.*/, "", $2); if ($2 != "lo") print $2}' >"$up_file" || true
	for iface in ha0 lan0 wan0 $(ip -n "$ns" -o link show 2>/dev/null |
		awk -F': ' '{sub(/@.*/, "", $2); print $2}'); do
		[[ $iface == lo ]] && continue
		ip -n "$ns" link set "$iface" down 2>/dev/null || true
	done
	# A dead box renews and releases nothing, and ends no PPPoE session:
	# its WAN clients die silently.
	pids=$(wan_client_pids "$node")
	# shellcheck disable=SC2086
	[[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
}

# A rebooted box comes back with nothing running, an empty /run/ns-ha, and
# without the VIPs (labelled IFACE:ha by the rendered config) that a killed
# keepalived left behind.
cmd_revive() {
	local node=$1 ns root svc iface
	[[ $node == fw1 || $node == fw2 ]] || die "revive: NODE must be fw1 or fw2"
	ns=$(ns_of "$node")
	ns_exists "$ns" || die "revive: namespace $ns does not exist"
	root="$(lab_dir)/$node"
	for svc in dnsmasq conntrackd; do
		if [[ -x $root/etc/init.d/$svc ]]; then
			ip netns exec "$ns" "$root/etc/init.d/$svc" stop >/dev/null 2>&1 || true
		fi
	done
	# keepalived's health monitor outlives the crash here (on a real box it
	# dies with the box) and may be writing there: a few tries. The
	# keepalived start below stops it and starts a fresh one, as a reboot
	# would (its pid file is in run/, not run/ns-ha).
	for _ in 1 2 3 4 5 6 7 8 9 10; do
		rm -rf "$root/run/ns-ha" 2>/dev/null && break
		sleep 0.2
	done
	[[ ! -e $root/run/ns-ha ]] || echo "lab.sh: revive: $root/run/ns-ha is not empty (a process of the crashed node writes there)" >&2
	ip -n "$ns" addr flush label '*:ha' 2>/dev/null || true
	# The links crash took down, except the takeover WAN: after a reboot it
	# is down without an address (no "auto" stanza, ifupdown's state on
	# tmpfs) until the role engine brings it up on a MASTER.
	ip -n "$ns" addr flush dev "$TAKEOVER_IF" 2>/dev/null || true
	rm -rf "$root/run/network"
	local pids
	pids=$(wan_client_pids "$node")
	# shellcheck disable=SC2086
	[[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
	rm -f "$root"/run/dhclient*.pid "$root"/run/ppp*.pid
	local crashed=$root/run/lab-crashed-links
	for iface in ha0 lan0 wan0 $(cat "$crashed" 2>/dev/null); do
		[[ $iface == "$TAKEOVER_IF" ]] && continue
		ip -n "$ns" link set "$iface" up
	done
	rm -f "$crashed"
	ip netns exec "$ns" "$root/etc/init.d/keepalived" start >/dev/null
}

# --- isp-dhcp ---------------------------------------------------------------

# The ISP's DHCP server on the takeover WAN: dnsmasq in the WAN host's
# namespace, DHCP only (no DNS), one lease per client from the pool, the ISP
# as router. Its lease file shows what the ISP sees (a second lease for a
# second MAC).
cmd_isp_dhcp() {
	local ns isp
	ns=$(ns_of wan)
	ns_exists "$ns" || die "isp-dhcp: namespace $ns does not exist: run 'lab.sh up $PREFIX' first"
	isp="$(lab_dir)/isp"
	[[ ! -e $isp/dnsmasq.pid ]] || die "isp-dhcp: already started ($isp/dnsmasq.pid)"
	install -d -m 0755 "$isp"
	: >"$isp/dnsmasq.leases"
	ip netns exec "$ns" dnsmasq --conf-file=/dev/null --port=0 --no-resolv --no-hosts \
		--interface=eth0 --bind-interfaces --except-interface=lo \
		--dhcp-range="$TAKEOVER_DHCP_FIRST,$TAKEOVER_DHCP_LAST,255.255.255.0,1h" \
		--dhcp-option=option:router,"$TAKEOVER_ISP" --dhcp-authoritative \
		--dhcp-leasefile="$isp/dnsmasq.leases" --pid-file="$isp/dnsmasq.pid" \
		--log-dhcp --log-facility="$isp/dnsmasq.log" </dev/null >>"$isp/dnsmasq.log" 2>&1 ||
		die "isp-dhcp: dnsmasq did not start: $(tail -n 1 "$isp/dnsmasq.log")"
}

# The incumbent's heartbeat timing (VRRPv2, advert 1 s; reference/field-notes.md)
# on the config ns-ha-init rendered, everything else unchanged, so a benchmark
# compares the timing alone on the same lab.
cmd_vrrp_incumbent() {
	local fw ns root conf
	for fw in "${FIREWALLS[@]}"; do
		ns=$(ns_of "$fw")
		root="$(lab_dir)/$fw"
		conf=$root/etc/keepalived/keepalived.conf
		[[ -f $conf ]] || die "vrrp-incumbent: $conf is missing: enable HA first (ns-ha-init enable)"
		sed -i -e 's/^\([[:space:]]*vrrp_version\) 3$/\1 2/' \
			-e 's/^\([[:space:]]*advert_int\) .*/\1 1/' "$conf"
		grep -q '^[[:space:]]*vrrp_version 2$' "$conf" || die "vrrp-incumbent: no 'vrrp_version 3' line in $conf"
		ip netns exec "$ns" "$root/etc/init.d/keepalived" restart >/dev/null
	done
}

# --- main -------------------------------------------------------------------

[[ $# -ge 2 ]] || usage
CMD=$1
PREFIX=$2
check_prefix "$PREFIX"
[[ $LAB_BASE == /* ]] || die "NS_HA_LAB_BASE must be an absolute path"
case $CMD in
up)
	[[ $# -eq 2 ]] || usage
	cmd_up
	;;
down)
	[[ $# -eq 2 ]] || usage
	cmd_down
	;;
crash)
	[[ $# -eq 3 ]] || usage
	cmd_crash "$3"
	;;
revive)
	[[ $# -eq 3 ]] || usage
	cmd_revive "$3"
	;;
vrrp-incumbent)
	[[ $# -eq 2 ]] || usage
	cmd_vrrp_incumbent
	;;
isp-dhcp)
	[[ $# -eq 2 ]] || usage
	cmd_isp_dhcp
	;;
dir)
	[[ $# -eq 2 ]] || usage
	lab_dir
	;;
*) usage ;;
esac
