#!/usr/bin/env bash
# CI-sized run of the cluster scenario (loadtest/compare/cluster.py, SMOKE=1):
# a real redis-server (Debian's) on a free port with no persistence, three
# shardcast nodes on it (REDIS_URL, SHARDS=1), 600 socket.io connections spread
# over them in one-node rooms of 10 and every-node rooms of 30; a warm-up
# publish to every room right after the joins, then 3 s of numbered room
# broadcasts at 200/s, once through the HTTP API of a node (the next node each
# time) and once as custom-event relays from room members. About 20-30 s.
#
#   loadtest/cluster-smoke.sh                  # builds shardcast + loadgen (release) first
#   SKIP_BUILD=1 loadtest/cluster-smoke.sh
#   CLUSTER_SERVERS=shardcast,socket.io loadtest/cluster-smoke.sh   # the Node baseline too (npm ci in loadtest/compare/node)
#
# Exits non-zero if a delivery is lost, duplicated or reaches a connection
# outside the room, a publish fails, an API answer's cluster-wide `delivered`
# is wrong or partial, a connection is lost, a node or redis-server dies, or
# a node logs an error. Deliveries out of order within a room are printed, not
# failed. Environment: every CLUSTER_* knob of loadtest/compare/README.md,
# CARGO_TARGET_DIR, SHARDCAST / LOADGEN (binaries), OUT_DIR (outputs; default a
# temporary directory, removed unless the run failed).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
[[ "$TARGET" = /* ]] || TARGET="$ROOT/$TARGET"   # cargo runs in $ROOT below
export CARGO_TARGET_DIR="$TARGET"

if [[ "${SKIP_BUILD:-0}" = 0 ]]; then
  (cd "$ROOT" && cargo build --release --bin shardcast --bin loadgen)
fi
command -v "${REDIS_SERVER:-redis-server}" >/dev/null \
  || { echo "cluster-smoke: redis-server not found (apt-get install redis-server)" >&2; exit 2; }
if [[ ",${CLUSTER_SERVERS:-shardcast}," = *,socket.io,* ]]; then
  (cd "$HERE/compare/node" && { [[ -d node_modules/@socket.io/redis-adapter ]] || npm ci --no-audit --no-fund --loglevel=error; })
fi

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

KEEP=1
if [[ -z "${OUT_DIR:-}" ]]; then
  OUT_DIR="$(mktemp -d)"; KEEP=0
fi
export OUT_DIR
set +e
SMOKE=1 timeout --kill-after=10 150 python3 "$HERE/compare/cluster.py"
rc=$?
set -e
if [[ "$rc" != 0 ]]; then
  echo "cluster-smoke: FAILED (exit $rc); node logs and loadgen outputs in $OUT_DIR" >&2
elif [[ "$KEEP" = 0 ]]; then
  rm -rf "$OUT_DIR"
fi
exit "$rc"
