#!/bin/sh
# Build the ns-ha .deb from a tree staged by `make install DESTDIR=STAGE`:
# DEBIAN/control and the maintainer scripts are added here, then dpkg-deb
# builds it with every file owned by root. Usage: build-deb.sh STAGE OUTDIR
set -eu
stage=$1
outdir=$2
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$top/Cargo.toml" | head -n 1)
arch=$(dpkg --print-architecture)
[ -n "$version" ] || { echo "build-deb.sh: no version in $top/Cargo.toml" >&2; exit 1; }
[ -x "$stage/usr/sbin/ns-ha" ] || { echo "build-deb.sh: $stage has no usr/sbin/ns-ha: run make install DESTDIR=$stage first" >&2; exit 1; }
install -d -m 0755 "$stage/DEBIAN" "$outdir"
for s in postinst prerm postrm; do
	install -m 0755 "$here/$s" "$stage/DEBIAN/$s"
done
# Files under /etc are conffiles: an upgrade keeps an administrator's edit.
if [ -d "$stage/etc" ]; then
	(cd "$stage" && find etc -type f | sed 's|^|/|' | sort) >"$stage/DEBIAN/conffiles"
fi
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<CONTROL
Package: ns-ha
Version: $version
Architecture: $arch
Maintainer: ns-ha <ns-ha@localhost>
Installed-Size: $size
Depends: libc6, libssl3, zlib1g, libgcc-s1, keepalived, iproute2
Recommends: conntrackd, openssh-server | dropbear-bin, iputils-arping
Suggests: ifupdown, isc-dhcp-client, ppp
Section: net
Priority: optional
Description: two Linux firewalls as one highly available gateway
 ns-ha pairs a primary and a backup firewall: keepalived VRRP heartbeat and
 virtual IPs, configuration sync over SSH, a role engine that switches
 services with the role, health checks and status. Tools: ns-ha-init,
 ns-ha-sync, ns-ha-role, ns-ha-check, ns-ha-vip.
CONTROL
deb="$outdir/ns-ha_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
