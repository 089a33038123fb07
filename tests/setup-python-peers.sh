#!/usr/bin/env bash
# The Python part of tests/setup.sh (which calls it), idempotent: virtme-ng, pyarrow, DuckDB,
# protobuf and grpcio-tools into the environment of ${PYTHON:-python3}; Arize Phoenix, the
# OpenTelemetry Python SDK and Rotel each into a venv of its own (${OXEYE_PHOENIX_VENV},
# ${OXEYE_OTEL_SDK_VENV}, ${OXEYE_ROTEL_VENV}; defaults under ~/.local/share/oxeye) so their
# dependencies cannot move the pins.
# Versions come from tests/pins.env. tests/setup-guard.sh runs it against a throwaway venv.
set -Eeuo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/pins.env
. "$here/pins.env"
PYTHON=${PYTHON:-python3}
phoenix_venv=${OXEYE_PHOENIX_VENV:-$HOME/.local/share/oxeye/phoenix}
otel_venv=${OXEYE_OTEL_SDK_VENV:-$HOME/.local/share/oxeye/otel-sdk}
rotel_venv=${OXEYE_ROTEL_VENV:-$HOME/.local/share/oxeye/rotel}
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

# venv DIR: create a venv of its own for a peer whose dependencies must not move the pins.
venv() {
  if [ ! -x "$1/bin/python" ]; then
    say "  creating the venv $1"
    "$PYTHON" -m venv "$1"
  fi
}

step "otlp exporter test peer: arize-phoenix $ARIZE_PHOENIX in $phoenix_venv"
venv "$phoenix_venv"
pip_pin "$phoenix_venv/bin/python" arize-phoenix "$ARIZE_PHOENIX"

step "otlp receiver test peer: OpenTelemetry Python SDK $OTEL_PYTHON in $otel_venv"
venv "$otel_venv"
pip_pin "$otel_venv/bin/python" opentelemetry-sdk "$OTEL_PYTHON"
pip_pin "$otel_venv/bin/python" opentelemetry-exporter-otlp-proto-grpc "$OTEL_PYTHON"
pip_pin "$otel_venv/bin/python" opentelemetry-exporter-otlp-proto-http "$OTEL_PYTHON"

step "gateway peer: rotel $ROTEL (rotel-agent) in $rotel_venv"
venv "$rotel_venv"
pip_pin "$rotel_venv/bin/python" rotel "$ROTEL"
agent=$("$rotel_venv/bin/python" -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')
"$agent" --version >/dev/null || { echo "[setup] $agent does not run" >&2; exit 1; }
say "  $agent"
