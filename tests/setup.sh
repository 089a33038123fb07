#!/usr/bin/env bash
# One-time (idempotent) set-up of everything oxeye needs to build, run and test on a fresh
# Debian machine of this kind. Safe to run again: each step checks before it installs.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*"; }

# Rust: the pinned stable toolchain (rust-toolchain.toml) with rustfmt and clippy.
command -v cargo >/dev/null || { echo "[setup] cargo not found: install rustup first" >&2; exit 1; }
channel=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup component list --toolchain "$channel" --installed 2>/dev/null | grep -q '^clippy'; then
  say "adding rustfmt and clippy to $channel"
  rustup component add --toolchain "$channel" rustfmt clippy
fi

# eBPF toolchain (GUIDE §4): nightly with rust-src builds the programs for bpfel-unknown-none;
# bpf-linker links them with the nightly's own LLVM, found through a stable folder of symlinks.
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "[setup] the nightly toolchain is missing (rustup toolchain list): it is needed to build eBPF programs" >&2
  exit 1
fi
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  say "adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly
fi
sysroot=$(rustc +nightly --print sysroot)
llvm_so=$(ls "$sysroot"/lib/libLLVM.so.* 2>/dev/null | head -n 1)
[ -n "$llvm_so" ] || { echo "[setup] no libLLVM.so.* in $sysroot/lib" >&2; exit 1; }
llvm_major=$(basename "$llvm_so" | sed -n 's/^libLLVM\.so\.\([0-9]*\).*/\1/p')
llvm_dir="$HOME/.local/share/oxeye/llvm-nightly"
mkdir -p "$llvm_dir/lib"
ln -sfn "$llvm_so" "$llvm_dir/lib/libLLVM.so"
ln -sfn "$llvm_so" "$llvm_dir/lib/$(basename "$llvm_so")"   # the name bpf-linker loads at run time
if ! bpf-linker --version >/dev/null 2>&1; then
  say "installing bpf-linker 0.13.0 against the nightly's LLVM $llvm_major (about a minute)"
  LLVM_PREFIX="$llvm_dir" cargo +nightly install --locked bpf-linker@0.13.0 \
    --no-default-features --features "llvm-$llvm_major"
fi

# Kernel tests: iproute2 (ip, tc) for namespaces and veth, ethtool to turn offloads off so
# frames on the wire are what the programs see, bpftool to check nothing is left attached.
missing_pkgs=()
command -v ip >/dev/null && command -v tc >/dev/null || missing_pkgs+=(iproute2)
command -v ethtool >/dev/null || missing_pkgs+=(ethtool)
command -v bpftool >/dev/null || missing_pkgs+=(bpftool)
if [ ${#missing_pkgs[@]} -gt 0 ]; then
  say "installing ${missing_pkgs[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_pkgs[@]}" >/dev/null
fi

# VM tier (kprobe/fentry spans): the stock Debian 6.1 kernel booted with virtme-ng under qemu.
vm_pkgs=()
command -v qemu-system-x86_64 >/dev/null || vm_pkgs+=(qemu-system-x86)
ls /boot/vmlinuz-6.1.*-amd64 >/dev/null 2>&1 || vm_pkgs+=(linux-image-amd64)
[ -x /bin/busybox ] && busybox --list 2>/dev/null | grep -q '^sh$' && dpkg -s busybox-static >/dev/null 2>&1 || vm_pkgs+=(busybox-static)
if [ ${#vm_pkgs[@]} -gt 0 ]; then
  say "installing ${vm_pkgs[*]} (VM test tier)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${vm_pkgs[@]}" >/dev/null
fi
if ! python3 -m pip show virtme-ng >/dev/null 2>&1; then
  say "installing virtme-ng 1.42"
  python3 -m pip install -q virtme-ng==1.42
fi

# Peers of the exporter tests: pyarrow and DuckDB read what the arrow exporter writes.
pip_pin() {
  local have
  have=$(python3 -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p')
  if [ "$have" != "$2" ]; then
    say "installing $1==$2"
    python3 -m pip install -q "$1==$2"
  fi
}
pip_pin pyarrow 26.0.1
pip_pin duckdb 2.0.1

# Peer of the otlp exporter tests: Arize Phoenix (an OTLP traces backend), in a venv of its own
# so its dependencies cannot move the pins above.
phoenix_venv="$HOME/.local/share/oxeye/phoenix"
if [ "$("$phoenix_venv/bin/python" -m pip show arize-phoenix 2>/dev/null | sed -n 's/^Version: //p')" != "20.26.1" ]; then
  say "installing arize-phoenix==20.26.1 into $phoenix_venv"
  python3 -m venv "$phoenix_venv"
  "$phoenix_venv/bin/python" -m pip install -q arize-phoenix==20.26.1
fi

say "ready ($(rustc --version); $(bpf-linker --version))"
