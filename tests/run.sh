#!/usr/bin/env bash
# Runs every oxeye test: set-up, build, the docs check (tests/check-docs.py), unit +
# component-harness + pipeline + CLI tests, and the benchmarks in quick mode (so they cannot
# rot). This is the README's test command.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."

tests/setup.sh
echo "[test] building"
cargo build --all-targets
echo "[test] docs"
python3 tests/check-docs.py target/debug/oxeye
echo "[test] running"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --all-targets --no-fail-fast 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# The fuzz targets (tests/fuzz), 20 s each from the committed seeds: a crash fails the run.
echo "[test] fuzzing"
fuzz_rc=0
tests/fuzz/run.sh "${OXEYE_FUZZ_SECONDS:-20}" || fuzz_rc=$?
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
[ "$fuzz_rc" -eq 0 ] || { echo "fuzzing failed (exit $fuzz_rc)"; [ "$rc" -ne 0 ] || rc=$fuzz_rc; }
exit "$rc"
