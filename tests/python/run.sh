#!/usr/bin/env bash
# The python-socketio client against the release binary (issue 4): creates
# tests/python/.venv with the pinned requirements (again when
# requirements.txt changes) and runs pytest. Extra arguments go to pytest.
#
#   tests/python/run.sh              # from anywhere
#   tests/python/run.sh -k polling -x
#
# Environment:
#   SHARDCAST_BIN   binary to test (default target/release/shardcast)
#   PYTHON          interpreter for the venv (default python3)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="$HERE/.venv"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"

if [[ ! -x "$VENV/bin/python" ]] || [[ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]]; then
  echo "run.sh: installing tests/python/requirements.txt into $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
  echo "$WANT" >"$STAMP"
fi

BIN="${SHARDCAST_BIN:-target/release/shardcast}"
[[ "$BIN" = /* ]] || BIN="$ROOT/$BIN"
if [[ ! -x "$BIN" ]]; then
  echo "run.sh: no binary at $BIN (build it first: cargo build --release)" >&2
  exit 2
fi

cd "$HERE"
export SHARDCAST_BIN="$BIN"
exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@" test_python_socketio.py
