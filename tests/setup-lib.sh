# shellcheck shell=bash
# Shared by tests/setup.sh and tests/setup-python-peers.sh (sourced, not run): step logging and
# the ERR trap. Needs `set -E` in the sourcing script so functions inherit the trap.
say() { printf '[setup] %s\n' "$*"; }
current_step="start"
step() { current_step="$*"; say "$*"; }
# A failing command names itself, its line and the step, never a silent exit. Reported once, by
# the script's own shell (a failure inside $(...) is reported at the line that used it).
on_err() {   # on_err EXIT-STATUS LINE COMMAND
  if [ "$BASH_SUBSHELL" = 0 ]; then
    printf '[setup] FAILED at line %s: %s (exit %s) in step: %s\n' "$2" "$3" "$1" "$current_step" >&2
  fi
}
trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR

# install_nisshi [CARGO INSTALL OPTIONS]: the Kafka test broker from crates.io, in-memory storage
# only, built by the pinned nightly (it needs rustc 1.96). tests/setup-guard.sh runs it with
# `--root DIR -Z unstable-options --dry-run` to check the pin resolves without the long build.
install_nisshi() {
  cargo "+$RUST_NIGHTLY" install --locked "nisshi@$NISSHI" --no-default-features --features dynostore "$@"
}
