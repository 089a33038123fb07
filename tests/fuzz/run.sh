#!/usr/bin/env bash
# Runs every fuzz target for N seconds (default 20) from its corpus in tests/fuzz/corpus with
# cargo-fuzz (libFuzzer + AddressSanitizer) on the pinned nightly (RUST_NIGHTLY, tests/pins.env),
# and prints how many inputs each ran. A crash fails the run and leaves its input in tests/fuzz/artifacts/<target>/: turn
# it into a regression test next to the code it broke.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")"
# shellcheck source=tests/pins.env
. ../pins.env
secs=${1:-20}
work=$(mktemp -d)
log="$work/log"
trap 'rm -rf "$work"' EXIT
for target in otlp_protobuf otlp_json otlp_metrics_logs config kernel_records gzip prompb; do
  # New inputs go to a scratch corpus (the first directory); the seeds stay as committed.
  mkdir -p "$work/$target"
  echo "[fuzz] $target for ${secs}s"
  rc=0
  cargo "+$RUST_NIGHTLY" fuzz run --fuzz-dir . "$target" "$work/$target" "corpus/$target" -- \
    -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1 || rc=$?
  grep -E '^(stat::number_of_executed_units|stat::new_units_added|==[0-9]+==ERROR|SUMMARY|thread .* panicked)' "$log" || true
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "$log"
    echo "[fuzz] $target FAILED (exit $rc)"
    exit "$rc"
  fi
done
