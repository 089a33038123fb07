#!/usr/bin/env bash
# One-time (idempotent) set-up of everything oxeye's tests need on a fresh Debian machine of
# this kind: the toolchain (ebpf/setup.sh, all that running oxeye needs), then the test peers.
# Safe to run again: each step checks before it installs.
# Every version it pins is in tests/pins.env; the Python part is tests/setup-python-peers.sh,
# which CI also runs from nothing against a throwaway venv (tests/setup-guard.sh).
set -Eeuo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."
# shellcheck source=tests/pins.env
. tests/pins.env

# shellcheck source=tests/setup-lib.sh
. tests/setup-lib.sh
die() { printf '[setup] FAILED in step: %s: %s\n' "$current_step" "$*" >&2; exit 1; }

apt_updated=""
# apt_install [APT-GET OPTIONS] PACKAGE...: from Debian, unpinned; `apt-get update` once per run.
apt_install() {
  if [ -z "$apt_updated" ]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
policy_rc_d=""   # set while a policy-rc.d of ours keeps package services from starting
trap '[ -z "$policy_rc_d" ] || rm -f "$policy_rc_d"' EXIT

# Building and running oxeye: the pinned stable and nightly toolchains and bpf-linker.
step "toolchain (ebpf/setup.sh)"
ebpf/setup.sh

# Tests and CI: rustfmt and clippy for the pinned stable toolchain.
step "rust: rustfmt and clippy for the pinned stable toolchain"
channel=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup component list --toolchain "$channel" --installed 2>/dev/null | grep -q '^clippy'; then
  say "  adding rustfmt and clippy to $channel"
  rustup component add --toolchain "$channel" rustfmt clippy
fi

# Kernel tests: iproute2 (ip, tc) for namespaces and veth, ethtool to turn offloads off so
# frames on the wire are what the programs see, bpftool to check nothing is left attached.
step "kernel test tools: ip, tc, ethtool, bpftool (Debian)"
missing_pkgs=()
command -v ip >/dev/null && command -v tc >/dev/null || missing_pkgs+=(iproute2)
command -v ethtool >/dev/null || missing_pkgs+=(ethtool)
command -v bpftool >/dev/null || missing_pkgs+=(bpftool)
if [ ${#missing_pkgs[@]} -gt 0 ]; then
  say "  installing ${missing_pkgs[*]}"
  apt_install "${missing_pkgs[@]}"
fi

# C reference programs of the flow benchmark (tests/reference/*.bpf.c): clang's BPF target and
# libbpf's headers (bpf_helpers.h), both from Debian.
step "C/libbpf reference programs: clang, libbpf-dev (Debian)"
ref_pkgs=()
command -v clang >/dev/null || ref_pkgs+=(clang)
[ -f /usr/include/bpf/bpf_helpers.h ] || ref_pkgs+=(libbpf-dev)
if [ ${#ref_pkgs[@]} -gt 0 ]; then
  say "  installing ${ref_pkgs[*]}"
  apt_install --no-install-recommends "${ref_pkgs[@]}"
fi

# VM tier, the kernel matrix (kprobe/fentry spans, and everything on older kernels): Debian's
# stock 6.1 and 6.12 kernels booted with virtme-ng under qemu (virtme-ng itself comes from
# PyPI, with the Python peers below).
step "VM test tier: qemu, Debian's 6.1 and 6.12 kernels, busybox-static (Debian)"
vm_pkgs=()
command -v qemu-system-x86_64 >/dev/null || vm_pkgs+=(qemu-system-x86)
ls /boot/vmlinuz-6.1.*-amd64 >/dev/null 2>&1 || vm_pkgs+=(linux-image-amd64)
ls /boot/vmlinuz-6.12.*-amd64 >/dev/null 2>&1 || vm_pkgs+=(linux-image-6.12-amd64)
[ -x /bin/busybox ] && busybox --list 2>/dev/null | grep -q '^sh$' && dpkg -s busybox-static >/dev/null 2>&1 || vm_pkgs+=(busybox-static)
if [ ${#vm_pkgs[@]} -gt 0 ]; then
  say "  installing ${vm_pkgs[*]}"
  apt_install "${vm_pkgs[@]}"
fi

# apt_install_no_services PACKAGE...: apt_install with a policy-rc.d of ours in place (unless
# one already is), so no service a package brings starts; under systemd its unit is disabled
# too (the tests start their own servers, on ports of their choosing).
apt_install_no_services() {
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy_rc_d=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\n# oxeye tests/setup.sh: no service starts while packages install\nexit 101\n' >"$policy_rc_d"
    chmod +x "$policy_rc_d"
  fi
  apt_install --no-install-recommends "$@"
  if [ -n "$policy_rc_d" ]; then
    rm -f "$policy_rc_d"
    policy_rc_d=""
  fi
  if [ -d /run/systemd/system ]; then
    for unit in "$@"; do systemctl disable --now "$unit.service" >/dev/null 2>&1 || true; done
  fi
}

# Metrics peer: the Prometheus server and promtool.
step "metrics test peer: prometheus, promtool (Debian prometheus)"
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  say "  installing prometheus"
  apt_install_no_services prometheus
  # (ss output captured first: `ss | grep -q` can fail with SIGPIPE under pipefail.)
  if [[ "$(ss -Hltnp 'sport = :9090')" == *prometheus* ]]; then
    say "  stopping the prometheus service the package started"
    if [ -d /run/systemd/system ]; then systemctl stop prometheus.service; else /etc/init.d/prometheus stop; fi
    sleep 1
    [[ "$(ss -Hltnp 'sport = :9090')" != *prometheus* ]] ||
      die "a prometheus service is still listening on :9090: stop it (the tests run their own)"
  fi
fi

# Request-span peers: servers and clients that speak HTTP, DNS and Redis (the tests run their
# own servers on loopback with configs of their own).
step "request-span peers: nginx, redis, dnsmasq, dig, wrk, curl, openssl (Debian)"
req_pkgs=()
command -v nginx >/dev/null || req_pkgs+=(nginx)
command -v redis-server >/dev/null || req_pkgs+=(redis-server)
command -v redis-benchmark >/dev/null || req_pkgs+=(redis-tools)
command -v dnsmasq >/dev/null || req_pkgs+=(dnsmasq-base)
command -v dig >/dev/null || req_pkgs+=(bind9-dnsutils)
command -v wrk >/dev/null || req_pkgs+=(wrk)
command -v curl >/dev/null || req_pkgs+=(curl)
# The TLS test's certificate; nginx and curl bring OpenSSL's libssl the probes attach to.
command -v openssl >/dev/null || req_pkgs+=(openssl)
if [ ${#req_pkgs[@]} -gt 0 ]; then
  say "  installing ${req_pkgs[*]}"
  apt_install_no_services "${req_pkgs[@]}"
fi

# Fuzzing: cargo-fuzz (tests/fuzz/run.sh runs the targets on the pinned nightly).
step "fuzzing: cargo-fuzz $CARGO_FUZZ (crates.io)"
have=$(cargo fuzz --version 2>/dev/null || true)
if [ "${have##* }" != "$CARGO_FUZZ" ]; then
  say "  installing cargo-fuzz $CARGO_FUZZ"
  cargo install --locked "cargo-fuzz@$CARGO_FUZZ"
fi

# Kafka peer: nisshi (tansu's new name), a Kafka-compatible broker in Rust, with its in-memory
# storage only (no database drivers); tansu 0.6.0 did not move a dead group leader's partitions here,
# nisshi does. It needs rustc 1.96: built with the pinned nightly. The kafka tests start it on
# loopback and make their topics with `nisshi topic create`. The kafka crates' librdkafka builds
# from its vendored source against the system's OpenSSL and zlib headers.
step "kafka: nisshi $NISSHI (crates.io), libssl-dev, zlib1g-dev"
kafka_pkgs=()
for p in libssl-dev zlib1g-dev pkg-config; do
  dpkg -s "$p" >/dev/null 2>&1 || kafka_pkgs+=("$p")
done
if [ ${#kafka_pkgs[@]} -gt 0 ]; then
  say "  installing ${kafka_pkgs[*]}"
  apt_install --no-install-recommends "${kafka_pkgs[@]}"
fi
have=$(nisshi --version 2>/dev/null || true)
if [ "${have##* }" != "$NISSHI" ]; then
  say "  installing nisshi $NISSHI (about 9 minutes)"
  install_nisshi
fi

# Python peers: virtme-ng (vng), pyarrow and DuckDB (they read what the arrow exporter writes)
# and Arize Phoenix (OTLP traces backend) in a venv of its own so its dependencies cannot move
# the pins above.
step "python peers (tests/setup-python-peers.sh)"
tests/setup-python-peers.sh

say "ready for the tests"
