#!/usr/bin/env bash
# vm.sh: run one command inside an emulated VM that boots Debian's stock
# kernel with this machine's own root filesystem (the lab's second tier).
#
# Why it exists: the lab machine's kernel has no bonding, no 802.1q VLANs and
# no PPP/PPPoE, so bond, VLAN and PPPoE WANs cannot be tested in the namespace
# lab. Debian's stock kernel (package linux-image-amd64) has them all as
# modules. This script boots it under qemu (software emulation: this machine's
# /dev/kvm cannot run a stock kernel) with the host's root shared read-only
# over 9p, writable tmpfs layers over /etc, /var, /root, /tmp and /run, runs
# one command inside as root, and hands its output and exit code back.
# Debian packages only: qemu-system-x86, linux-image-amd64, busybox-static
# (the initramfs's tools, whose `/init` mounts the root and switches to it).
#
# Usage:
#   vm.sh run [--timeout SECS] [--memory MB] [--cpus N] -- COMMAND [ARGS...]
#
# COMMAND runs from the current directory (it must exist on the host's root)
# with the caller's PATH; its stdout and stderr come out on this script's
# stdout, and its exit code is this script's. When the VM does not finish
# (boot failure, kernel panic, timeout), the exit code is 124 (timeout) or 1,
# with one line on stderr naming the cause and the console log's last lines.
# Nothing is left behind: the scratch dir is removed, qemu is killed on exit.
#
# Environment: NS_HA_VM_KERNEL picks a kernel image (default: the newest
# /boot/vmlinuz-* whose modules are installed); NS_HA_VM_KEEP=1 keeps the
# scratch dir (console log, initramfs) for debugging.
set -Eeuo pipefail

die() {
	echo "vm.sh: $*" >&2
	exit 1
}

usage() {
	echo "usage: vm.sh run [--timeout SECS] [--memory MB] [--cpus N] -- COMMAND [ARGS...]" >&2
	exit 2
}

# Kernel modules the initramfs loads to mount the root (the rest are loaded
# inside the VM by modprobe from the host's /lib/modules).
INITRAMFS_MODULES=(virtio_pci 9pnet_virtio 9p overlay)

# The newest installed kernel that has its modules, or NS_HA_VM_KERNEL.
pick_kernel() {
	local k v
	if [[ -n ${NS_HA_VM_KERNEL:-} ]]; then
		echo "$NS_HA_VM_KERNEL"
		return
	fi
	for k in $(printf '%s\n' /boot/vmlinuz-* | sort -rV); do
		v=${k#/boot/vmlinuz-}
		[[ -d /lib/modules/$v/kernel ]] && {
			echo "$k"
			return
		}
	done
	return 1
}

# /init of the initramfs (busybox applets only): load the 9p and overlay
# modules, mount the host's root read-only, writable layers on top (tmpfs on
# /run, overlays with a tmpfs upper on /etc, /var, /root and /tmp: a checkout
# under /tmp, as CI's may be, stays visible), the io
# share on /run/ns-ha-vm, then switch to the host's bash for stage 2. /run
# stays 0755 root: sshd's StrictModes checks the lab dirs under it.
write_init() {
	cat >"$1" <<'EOF'
#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
fail() { echo "ns-ha-vm init: $*"; poweroff -f; }
while read -r m; do insmod "/modules/$m" || fail "insmod $m failed"; done </modules/order
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /newroot ||
	fail "cannot mount the host root over 9p"
mount -t tmpfs -o mode=0755 run /newroot/run || fail "tmpfs on /run"
mkdir -p /newroot/run/.layers /newroot/run/ns-ha-vm
for d in etc var root tmp; do
	mkdir -p "/newroot/run/.layers/$d/up" "/newroot/run/.layers/$d/work"
	mount -t overlay -o "lowerdir=/newroot/$d,upperdir=/newroot/run/.layers/$d/up,workdir=/newroot/run/.layers/$d/work" \
		"layer-$d" "/newroot/$d" || fail "overlay on /$d"
done
mount -t 9p -o trans=virtio,version=9p2000.L,rw,msize=512000 hostio /newroot/run/ns-ha-vm ||
	fail "cannot mount the io share"
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /bin/bash /run/ns-ha-vm/stage2
EOF
	chmod 0755 "$1"
}

# Stage 2, run by the host's bash as PID 1 inside the VM: the command, its
# output and exit code into the io share, then power off.
write_stage2() {
	cat >"$1" <<'EOF'
#!/bin/bash
io=/run/ns-ha-vm
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ln -sf /proc/self/fd /dev/fd 2>/dev/null
[[ -e /etc/mtab ]] || ln -s /proc/self/mounts /etc/mtab
hostname ns-ha-vm
ip link set lo up
# The lab's sshd runs forced commands through root's shell, and bash sources
# ~/.bashrc under sshd: this machine's (pyenv init) costs seconds per command
# under emulation. The VM's /root is a throwaway layer: empty rc files.
for f in .bashrc .bash_profile .profile; do : >"/root/$f"; done
# shellcheck disable=SC1091
source "$io/env"
cut -d' ' -f1 /proc/uptime >"$io/booted"
rc=0
cd "$VM_CWD" && "${VM_ARGV[@]}" >"$io/output" 2>&1 </dev/null || rc=$?
echo "$rc" >"$io/rc.tmp" && mv "$io/rc.tmp" "$io/rc"
sync
/bin/busybox poweroff -f
EOF
	chmod 0755 "$1"
}

# The kernel as an uncompressed ELF (booted through its PVH entry): qemu's
# TCG takes ~11 s to decompress a bzImage's xz payload, the host ~1 s. Cached
# per kernel version; on any failure the bzImage itself is used.
unpacked_kernel() { # BZIMAGE VERSION -> path to boot
	local bz=$1 version=$2 cache off
	cache=${NS_HA_VM_CACHE:-/var/cache/ns-ha-vm}
	if [[ -s $cache/vmlinux-$version ]]; then
		echo "$cache/vmlinux-$version"
		return
	fi
	off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$bz" 2>/dev/null | head -n 1 | cut -d: -f1) || off=
	if [[ -n $off ]] && install -d -m 0755 "$cache" &&
		tail -c "+$((off + 1))" "$bz" | xz -dc 2>/dev/null >"$cache/vmlinux-$version.tmp"; [[ -s $cache/vmlinux-$version.tmp ]] &&
		[[ $(head -c 4 "$cache/vmlinux-$version.tmp" | tail -c 3) == ELF ]]; then
		mv "$cache/vmlinux-$version.tmp" "$cache/vmlinux-$version"
		echo "$cache/vmlinux-$version"
		return
	fi
	rm -f "$cache/vmlinux-$version.tmp"
	echo "$bz"
}

# The initramfs: static busybox, /init, and the modules to mount the root.
build_initramfs() { # VERSION OUT
	local version=$1 out=$2 dir m seen=" "
	dir=$(mktemp -d)
	mkdir -p "$dir/bin" "$dir/modules"
	cp /bin/busybox "$dir/bin/busybox"
	write_init "$dir/init"
	: >"$dir/modules/order"
	for m in "${INITRAMFS_MODULES[@]}"; do
		while read -r verb path _; do
			[[ $verb == insmod ]] || continue
			[[ $seen == *" $path "* ]] && continue
			seen+="$path "
			cp "$path" "$dir/modules/"
			basename "$path" >>"$dir/modules/order"
		done < <(modprobe -S "$version" --show-depends "$m")
	done
	(cd "$dir" && find . | cpio -o -H newc --quiet) | gzip -1 >"$out"
	rm -rf "$dir"
}

# The environment passed into the VM: PATH, the working dir, the command,
# and the caller's NS_HA_*, CARGO* and RUST* variables.
write_env() { # FILE ARGV...
	local file=$1 v
	shift
	{
		printf 'export PATH=%q\n' "$PATH"
		printf 'export HOME=/root\n'
		for v in $(compgen -e); do
			[[ $v =~ ^(NS_HA_|CARGO|RUST) ]] && printf 'export %s=%q\n' "$v" "${!v}"
		done
		printf 'VM_CWD=%q\n' "$PWD"
		printf 'VM_ARGV=('
		printf '%q ' "$@"
		printf ')\n'
	} >"$file"
}

cmd_run() {
	local timeout=300 memory=1024 cpus=2 kernel version rc=0 started
	while [[ $# -gt 0 ]]; do
		case $1 in
		--timeout) timeout=$2; shift 2 ;;
		--memory) memory=$2; shift 2 ;;
		--cpus) cpus=$2; shift 2 ;;
		--) shift; break ;;
		*) usage ;;
		esac
	done
	[[ $# -ge 1 ]] || usage
	[[ $(id -u) -eq 0 ]] || die "must run as root (qemu shares / with the VM as root)"
	command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found: apt-get install qemu-system-x86 (make deps)"
	command -v cpio >/dev/null || die "cpio not found: apt-get install cpio (make deps)"
	# grep without -q: it would stop reading early, busybox would die of
	# SIGPIPE and pipefail would call the pipeline failed (a flaky "not found").
	{ [[ -x /bin/busybox ]] && /bin/busybox --list 2>/dev/null | grep -x switch_root >/dev/null; } ||
		die "static /bin/busybox not found: apt-get install busybox-static (make deps)"
	kernel=$(pick_kernel) || die "no kernel with modules in /boot: apt-get install linux-image-amd64 (make deps)"
	[[ -r $kernel ]] || die "kernel $kernel not readable"
	version=${kernel#/boot/vmlinuz-}
	[[ -d /lib/modules/$version ]] || die "no /lib/modules/$version for $kernel"

	SCRATCH=$(mktemp -d /tmp/ns-ha-vm.XXXXXX)
	trap cleanup EXIT
	mkdir -p "$SCRATCH/io"
	build_initramfs "$version" "$SCRATCH/initramfs.gz"
	write_stage2 "$SCRATCH/io/stage2"
	write_env "$SCRATCH/io/env" "$@"
	started=$(date +%s%N)
	# No network device (-nic none): the VM must send nothing anywhere.
	timeout --kill-after=5 "$timeout" qemu-system-x86_64 \
		-accel tcg -cpu qemu64 -smp "$cpus" -m "$memory" \
		-kernel "$(unpacked_kernel "$kernel" "$version")" -initrd "$SCRATCH/initramfs.gz" \
		-append "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init" \
		-fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap \
		-device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
		-fsdev "local,id=hostio,path=$SCRATCH/io,security_model=none" \
		-device virtio-9p-pci,fsdev=hostio,mount_tag=hostio \
		-nic none -display none -monitor none -no-reboot \
		-serial "file:$SCRATCH/console.log" </dev/null >"$SCRATCH/qemu.log" 2>&1 || rc=$?
	echo "vm.sh: VM ran $(( ($(date +%s%N) - started) / 1000000 )) ms, kernel up $(cat "$SCRATCH/io/booted" 2>/dev/null || echo ?) s at the command's start (kernel $version, TCG)" >&2
	[[ -f $SCRATCH/io/output ]] && cat "$SCRATCH/io/output"
	if [[ -f $SCRATCH/io/rc ]]; then
		return "$(cat "$SCRATCH/io/rc")"
	fi
	if [[ $rc -eq 124 || $rc -eq 137 ]]; then
		echo "vm.sh: the VM did not finish within $timeout s; console: $(tail -n 3 "$SCRATCH/console.log" | tr '\n' ' ')" >&2
		return 124
	fi
	echo "vm.sh: the VM stopped without a result (qemu exit $rc: $(tail -n 1 "$SCRATCH/qemu.log")); console: $(tail -n 5 "$SCRATCH/console.log" | tr '\n' ' ')" >&2
	return 1
}

cleanup() {
	if [[ -n ${NS_HA_VM_KEEP:-} ]]; then
		echo "vm.sh: kept $SCRATCH" >&2
	else
		rm -rf "$SCRATCH"
	fi
}

case ${1:-} in
run)
	shift
	cmd_run "$@"
	;;
*) usage ;;
esac
