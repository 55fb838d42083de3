# ns-ha: build, test and demo on a fresh Debian machine (run as root).
#
#   make demo   install what is missing, build, run the two-firewall lab demo
#   make test   install what is missing, build, run every test (lab included)
#   make bench  run the benchmarks (figures and ratios against a baseline)
#   make release                 the multi-call binary ns-ha (the five tools), router profile (Cargo.toml)
#   make install DESTDIR= PREFIX=/usr   install it (root-owned /usr/sbin, the tools as links) and the systemd units
#   make deb                     target/deb/ns-ha_VERSION_ARCH.deb from a staged `make install`

SHELL := /bin/bash
CARGO ?= cargo
# Debian packages the product and its lab need: the real daemons (keepalived,
# sshd, conntrackd, dnsmasq), the tools the lab drives, and what the ssh2
# crate builds against.
PACKAGES := keepalived openssh-server openssh-client dropbear-bin conntrackd conntrack iputils-arping \
	dnsmasq-base nftables iproute2 iputils-ping procps socat ncat \
	isc-dhcp-client pkg-config libssl-dev build-essential ca-certificates \
	shellcheck systemd openvpn wireguard-go wireguard-tools openssl

.PHONY: all deps build test unit lab-test lint demo bench clean release install deb package-test

all: build

# Install only what is missing; `apt-get update` once, then install.
deps:
	@missing=""; for p in $(PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }

build: deps
	$(CARGO) build --workspace --all-targets

lint: build
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Unit tests run in parallel; lab tests one at a time (they share the CPU
# with real daemons whose timers matter).
unit: build
	$(CARGO) test --workspace --exclude ns-ha-tests

# The .deb test (tests/tests/deb_install.rs) installs target/deb's package.
lab-test: build deb
	$(CARGO) test -p ns-ha-tests -- --test-threads=1

test: lint unit package-test lab-test

demo: build
	bash lab/demo.sh

bench: build
	$(CARGO) build --workspace --release
	$(CARGO) test -p ns-ha-tests --release -- --ignored --test-threads=1 --nocapture

clean:
	$(CARGO) clean

# --- install and packages ------------------------------------------------------
# Where `make install` puts things: DESTDIR is a staging root (a package),
# PREFIX the installed prefix. The tools go to a root-owned sbin: the rendered
# keepalived config runs ns-ha-role from there, and keepalived refuses scripts
# in a directory other users can write.
TOOLS := ns-ha-init ns-ha-sync ns-ha-role ns-ha-check ns-ha-vip
PREFIX ?= /usr
DESTDIR ?=
SBINDIR := $(PREFIX)/sbin
UNITDIR := $(PREFIX)/lib/systemd/system
DOCDIR := $(PREFIX)/share/doc/ns-ha
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
RELEASE_DIR := $(TARGET_DIR)/release
DEB_STAGE := $(TARGET_DIR)/deb/stage
UNITS := $(wildcard packaging/debian/systemd/*.service packaging/debian/systemd/*.timer)
# Root-owned when installing as root (a package is made root-owned by dpkg-deb).
OWNER := $(if $(filter 0,$(shell id -u)),-o root -g root,)

# One multi-call binary (crate ns-ha) with the five tools as links to it:
# a third of the five separate binaries' size (README, "Release builds").
release: deps
	$(CARGO) build --release -p ns-ha

install: release
	install -d -m 0755 $(OWNER) $(DESTDIR)$(SBINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(DOCDIR)
	install -m 0755 $(OWNER) $(RELEASE_DIR)/ns-ha $(DESTDIR)$(SBINDIR)/ns-ha
	for t in $(TOOLS); do ln -sfn ns-ha $(DESTDIR)$(SBINDIR)/$$t; done
	install -m 0644 $(OWNER) $(UNITS) $(DESTDIR)$(UNITDIR)/
	install -m 0644 $(OWNER) README.md docs/json.md $(DESTDIR)$(DOCDIR)/

# A .deb made with dpkg-deb from a staged `make install`, so the package
# holds exactly what `make install` installs (cargo-deb would be a second
# description of the same files, and a tool to build first).
deb: release
	rm -rf $(DEB_STAGE)
	$(MAKE) --no-print-directory install DESTDIR=$(abspath $(DEB_STAGE)) PREFIX=/usr
	packaging/debian/build-deb.sh $(DEB_STAGE) $(TARGET_DIR)/deb

# What can be checked of the packaging without a router: the shell scripts
# with a POSIX linter, the systemd units with systemd-analyze.
package-test: deps
	shellcheck -s sh packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm \
		packaging/debian/build-deb.sh $(wildcard packaging/openwrt/files/*.init) \
		$(wildcard packaging/openwrt/files/*.sh) $(wildcard packaging/openwrt/files/rpcd/*)
