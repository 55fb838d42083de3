# ns-ha: build, test and demo on a fresh Debian machine (run as root).
#
#   make demo   install what is missing, build, run the two-firewall lab demo
#   make test   install what is missing, build, run every test (lab included)
#   make bench  run the benchmarks (figures and ratios against a baseline)

SHELL := /bin/bash
CARGO ?= cargo
# Debian packages the product and its lab need: the real daemons (keepalived,
# sshd, conntrackd, dnsmasq), the tools the lab drives, and what the ssh2
# crate builds against.
PACKAGES := keepalived openssh-server openssh-client conntrackd conntrack iputils-arping \
	dnsmasq-base nftables iproute2 iputils-ping procps socat ncat \
	isc-dhcp-client pkg-config libssl-dev build-essential ca-certificates

.PHONY: all deps build test unit lab-test lint demo bench clean

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

lab-test: build
	$(CARGO) test -p ns-ha-tests -- --test-threads=1

test: lint unit lab-test

demo: build
	bash lab/demo.sh

bench: build
	$(CARGO) build --workspace --release
	$(CARGO) test -p ns-ha-tests --release -- --ignored --test-threads=1 --nocapture

clean:
	$(CARGO) clean
