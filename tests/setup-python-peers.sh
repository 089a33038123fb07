#!/usr/bin/env bash
# The Python part of tests/setup.sh (which calls it), idempotent: virtme-ng, pyarrow, DuckDB,
# protobuf and grpcio-tools into the environment of ${PYTHON:-python3}, and Arize Phoenix into a venv of its own
# (${OXEYE_PHOENIX_VENV:-~/.local/share/oxeye/phoenix}) so its dependencies cannot move the pins.
# Versions come from tests/pins.env. tests/setup-guard.sh runs it against a throwaway venv.
set -Eeuo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/pins.env
. "$here/pins.env"
PYTHON=${PYTHON:-python3}
phoenix_venv=${OXEYE_PHOENIX_VENV:-$HOME/.local/share/oxeye/phoenix}
export PIP_DISABLE_PIP_VERSION_CHECK=1

# shellcheck source=tests/setup-lib.sh
. "$here/setup-lib.sh"

# Installed version of a distribution (empty when it is not installed) in interpreter $1.
dist_version() {
  "$1" - "$2" <<'PY'
import importlib.metadata as m, sys
try:
    print(m.version(sys.argv[1]))
except m.PackageNotFoundError:
    pass
PY
}

# pip_pin PYTHON DIST VERSION: install DIST==VERSION into PYTHON's environment unless it is there.
pip_pin() {
  local have
  have=$(dist_version "$1" "$2")
  if [ "$have" = "$3" ]; then
    say "  $2 $3: present"
  else
    say "  installing $2==$3${have:+ (was $have)}"
    "$1" -m pip install -q "$2==$3"
  fi
}

step "python peers: interpreter $PYTHON"
interp=$("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')
say "  $interp"

step "VM test tier: virtme-ng $VIRTME_NG (vng)"
pip_pin "$PYTHON" virtme-ng "$VIRTME_NG"

step "exporter test peers: pyarrow $PYARROW, duckdb $DUCKDB"
pip_pin "$PYTHON" pyarrow "$PYARROW"
pip_pin "$PYTHON" duckdb "$DUCKDB"

step "profile test peers: protobuf $PROTOBUF, grpcio-tools $GRPCIO_TOOLS"
pip_pin "$PYTHON" protobuf "$PROTOBUF"
pip_pin "$PYTHON" grpcio-tools "$GRPCIO_TOOLS"

step "otlp exporter test peer: arize-phoenix $ARIZE_PHOENIX in $phoenix_venv"
if [ ! -x "$phoenix_venv/bin/python" ]; then
  say "  creating the venv $phoenix_venv"
  "$PYTHON" -m venv "$phoenix_venv"
fi
pip_pin "$phoenix_venv/bin/python" arize-phoenix "$ARIZE_PHOENIX"
