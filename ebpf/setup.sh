#!/usr/bin/env bash
# What building and running oxeye needs, and nothing more (idempotent; each step checks before
# it installs): the pinned stable toolchain (rust-toolchain.toml), the pinned nightly with
# rust-src that builds the eBPF programs for bpfel-unknown-none, and bpf-linker built against
# that nightly's own LLVM. Pins: tests/pins.env. The test peers are tests/setup.sh's job.
set -Eeuo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."
# shellcheck source=tests/pins.env
. tests/pins.env
# shellcheck source=tests/setup-lib.sh
. tests/setup-lib.sh
die() { printf '[setup] FAILED in step: %s: %s\n' "$current_step" "$*" >&2; exit 1; }

command -v rustup >/dev/null || die "rustup not found: install it first (https://rustup.rs)"

step "rust: the pinned stable toolchain (rust-toolchain.toml)"
stable=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup run "$stable" rustc --version >/dev/null 2>&1; then
  say "  installing $stable (download, about a minute)"
  rustup toolchain install --no-self-update "$stable" --profile minimal
fi

step "eBPF toolchain: $RUST_NIGHTLY with rust-src"
if ! rustup run "$RUST_NIGHTLY" rustc --version >/dev/null 2>&1; then
  say "  installing $RUST_NIGHTLY with rust-src (download, a few minutes)"
  rustup toolchain install --no-self-update "$RUST_NIGHTLY" --profile minimal --component rust-src
fi
sysroot=$(rustup run "$RUST_NIGHTLY" rustc --print sysroot)
if [ ! -d "$sysroot/lib/rustlib/src/rust/library/core" ]; then
  say "  adding rust-src to $RUST_NIGHTLY"
  rustup component add rust-src --toolchain "$RUST_NIGHTLY"
fi

# bpf-linker links with the nightly's own LLVM, found through a stable folder of symlinks.
step "eBPF toolchain: bpf-linker $BPF_LINKER against $RUST_NIGHTLY's LLVM"
llvm_so=$({ ls "$sysroot"/lib/libLLVM.so.* 2>/dev/null || true; } | head -n 1)
[ -n "$llvm_so" ] || die "no libLLVM.so.* in $sysroot/lib"
llvm_major=$(basename "$llvm_so" | sed -n 's/^libLLVM\.so\.\([0-9]*\).*/\1/p')
llvm_dir="${OXEYE_LLVM_DIR:-$HOME/.local/share/oxeye/llvm-nightly}"   # bpf-linker's RUNPATH
mkdir -p "$llvm_dir/lib"
ln -sfn "$llvm_so" "$llvm_dir/lib/libLLVM.so"
ln -sfn "$llvm_so" "$llvm_dir/lib/$(basename "$llvm_so")"   # the name bpf-linker loads at run time
have=$(bpf-linker --version 2>/dev/null || true)
if [ "${have##* }" != "$BPF_LINKER" ]; then
  say "  installing bpf-linker $BPF_LINKER against LLVM $llvm_major (about a minute)"
  LLVM_PREFIX="$llvm_dir" cargo "+$RUST_NIGHTLY" install --locked "bpf-linker@$BPF_LINKER" \
    --no-default-features --features "llvm-$llvm_major"
fi

say "toolchain ready ($(rustup run "$stable" rustc --version); $(rustup run "$RUST_NIGHTLY" rustc --version); $(bpf-linker --version))"
