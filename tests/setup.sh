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

say "ready ($(rustc --version))"
