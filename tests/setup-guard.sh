#!/usr/bin/env bash
# Guard for the set-up's "not installed yet" path, run by CI on every run: the Python part of
# tests/setup.sh (tests/setup-python-peers.sh) against a throwaway venv that has none of the
# peers and throwaway peer venv dirs, and the toolchain (ebpf/setup.sh) into a throwaway
# RUSTUP_HOME, and nisshi's install (a dry run). It must install every pin from tests/pins.env and exit
# 0, a second run must install nothing, and a failing step must say where and why.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tests/pins.env
. tests/pins.env
on_err() { [ "$BASH_SUBSHELL" != 0 ] || printf '[guard] FAILED at line %s: %s (exit %s)\n' "$2" "$3" "$1" >&2; }
trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR
say() { printf '[guard] %s\n' "$*"; }
fail() { printf '[guard] FAILED: %s\n' "$*" >&2; exit 1; }
start=$SECONDS

tmp=$(mktemp -d "${TMPDIR:-/tmp}/oxeye-setup-guard.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

say "throwaway venv $tmp/venv (no peers); Phoenix, OTel SDK and Rotel venvs under $tmp (absent)"
python3 -m venv "$tmp/venv"
export PATH="$tmp/venv/bin:$PATH"
export OXEYE_PHOENIX_VENV="$tmp/phoenix"
export OXEYE_OTEL_SDK_VENV="$tmp/otel-sdk"
export OXEYE_ROTEL_VENV="$tmp/rotel"
export PIP_DISABLE_PIP_VERSION_CHECK=1
unset PYTHON   # the script must find the venv's python3 on PATH
[ "$(command -v python3)" = "$tmp/venv/bin/python3" ] || fail "python3 on PATH is $(command -v python3), not the venv's"
python3 -c 'import pyarrow' 2>/dev/null && fail "the throwaway venv already has pyarrow"

say "run 1: from nothing"
rc=0
tests/setup-python-peers.sh >"$tmp/run1.log" 2>&1 || rc=$?
[ "$rc" = 0 ] || { cat "$tmp/run1.log" >&2; fail "setup-python-peers.sh exited $rc from nothing"; }
for p in virtme-ng pyarrow duckdb protobuf grpcio-tools arize-phoenix opentelemetry-sdk \
  opentelemetry-exporter-otlp-proto-grpc opentelemetry-exporter-otlp-proto-http rotel; do
  grep -q "installing $p==" "$tmp/run1.log" || { cat "$tmp/run1.log" >&2; fail "run 1 did not say it installs $p"; }
done

say "checking the pins in the throwaway venvs"
version_of() { "$1" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$2"; }
check() {   # check PYTHON DIST PIN MODULE
  local have
  have=$(version_of "$1" "$2") || fail "$2 is not installed in $1"
  [ "$have" = "$3" ] || fail "$2 is $have in $1, pinned $3"
  "$1" -c "import $4" || fail "$2 is installed in $1 but 'import $4' fails"
  say "  $2 $have (import $4) ok"
}
check "$tmp/venv/bin/python3" pyarrow "$PYARROW" pyarrow
check "$tmp/venv/bin/python3" duckdb "$DUCKDB" duckdb
check "$tmp/venv/bin/python3" virtme-ng "$VIRTME_NG" virtme_ng
check "$tmp/venv/bin/python3" protobuf "$PROTOBUF" google.protobuf
check "$tmp/venv/bin/python3" grpcio-tools "$GRPCIO_TOOLS" grpc_tools.protoc
[ -x "$tmp/venv/bin/vng" ] || fail "virtme-ng installed no vng entry point in the venv"
vng --help >/dev/null || fail "vng --help fails"
say "  vng entry point ok"
check "$tmp/phoenix/bin/python" arize-phoenix "$ARIZE_PHOENIX" phoenix
"$tmp/venv/bin/python3" -c 'import phoenix' 2>/dev/null && fail "phoenix leaked into the peers' venv (it must have a venv of its own)"
check "$tmp/otel-sdk/bin/python" opentelemetry-sdk "$OTEL_PYTHON" opentelemetry.sdk.trace
check "$tmp/otel-sdk/bin/python" opentelemetry-exporter-otlp-proto-grpc "$OTEL_PYTHON" opentelemetry.exporter.otlp.proto.grpc.trace_exporter
check "$tmp/otel-sdk/bin/python" opentelemetry-exporter-otlp-proto-http "$OTEL_PYTHON" opentelemetry.exporter.otlp.proto.http.trace_exporter
check "$tmp/rotel/bin/python" rotel "$ROTEL" rotel
"$tmp/rotel/lib/python"*/site-packages/rotel/rotel-agent --version >/dev/null || fail "rotel-agent does not run"
say "  rotel-agent runs"

say "run 2: idempotent, installs nothing"
rc=0
tests/setup-python-peers.sh >"$tmp/run2.log" 2>&1 || rc=$?
[ "$rc" = 0 ] || { cat "$tmp/run2.log" >&2; fail "setup-python-peers.sh exited $rc on the second run"; }
if grep -q "installing\|creating" "$tmp/run2.log"; then cat "$tmp/run2.log" >&2; fail "the second run installed something"; fi

say "a failing step names its line, command and step"
rc=0
PYTHON="$tmp/no-such-python" tests/setup-python-peers.sh >"$tmp/fail.out" 2>"$tmp/fail.err" || rc=$?
[ "$rc" -ne 0 ] || fail "setup-python-peers.sh with a missing interpreter exited 0"
# shellcheck disable=SC2016 # the literal "$PYTHON" of the failing command
grep -Eq '^\[setup\] FAILED at line [0-9]+: .*"\$PYTHON".* \(exit 127\) in step: python peers: interpreter ' "$tmp/fail.err" ||
  { cat "$tmp/fail.out" "$tmp/fail.err" >&2; fail "no '[setup] FAILED at line N: <command> (exit 127) in step: ...' on stderr"; }
say "  $(grep '^\[setup\] FAILED' "$tmp/fail.err")"

say "toolchain (ebpf/setup.sh) from nothing: a throwaway RUSTUP_HOME"
# bpf-linker is found on PATH as built; OXEYE_LLVM_DIR keeps its LLVM symlinks where they are.
rc=0
RUSTUP_HOME="$tmp/rustup" OXEYE_LLVM_DIR="$tmp/llvm" ebpf/setup.sh >"$tmp/tc1.log" 2>&1 || rc=$?
[ "$rc" = 0 ] || { cat "$tmp/tc1.log" >&2; fail "ebpf/setup.sh exited $rc from nothing"; }
stable=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
for t in "$stable" "$RUST_NIGHTLY"; do
  grep -q "installing $t" "$tmp/tc1.log" || { cat "$tmp/tc1.log" >&2; fail "run 1 did not say it installs $t"; }
done
sysroot=$(RUSTUP_HOME="$tmp/rustup" rustup run "$RUST_NIGHTLY" rustc --print sysroot)
[ -d "$sysroot/lib/rustlib/src/rust/library/core" ] || fail "$RUST_NIGHTLY has no rust-src in $sysroot"
say "  $stable and $RUST_NIGHTLY (with rust-src) installed"
RUSTUP_HOME="$tmp/rustup" OXEYE_LLVM_DIR="$tmp/llvm" ebpf/setup.sh >"$tmp/tc2.log" 2>&1 ||
  { cat "$tmp/tc2.log" >&2; fail "ebpf/setup.sh failed on the second run"; }
if grep -q "installing\|adding" "$tmp/tc2.log"; then cat "$tmp/tc2.log" >&2; fail "ebpf/setup.sh installed something on the second run"; fi
say "  second run installs nothing"

say "kafka broker: nisshi $NISSHI resolves from nothing (cargo install --dry-run: no build)"
# shellcheck source=tests/setup-lib.sh
(. tests/setup-lib.sh; install_nisshi --root "$tmp/nisshi" -Z unstable-options --dry-run) >"$tmp/nisshi.log" 2>&1 ||
  { cat "$tmp/nisshi.log" >&2; fail "installing nisshi $NISSHI would fail"; }
grep -q "Installing $tmp/nisshi/bin/nisshi" "$tmp/nisshi.log" || { cat "$tmp/nisshi.log" >&2; fail "the dry run did not reach nisshi's binary"; }
say "  nisshi $NISSHI, its features and lock file resolve"

rm -rf "$tmp"
say "passed in $((SECONDS - start)) s (clean-up included)"
