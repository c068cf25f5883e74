#!/usr/bin/env bash
# The soak with exact accounting (loadtest/soak.mjs) against a fresh release
# broker. CI size: 600 socket.io-client connections at once for 45 s of churn
# (each lives 4-16 s and is replaced: some 2,500 connections in all), over
# WebSocket, long-polling and the upgrade; authenticated at connect or with
# `authenticate`; joining and leaving rooms, relaying, sending private
# messages, while 4 HTTP lanes publish to all, to rooms and to users; ending
# cleanly, by TCP reset, or with their child process SIGKILLed. Then every
# acknowledged message is checked against every connection that was in scope
# for its whole delivery window, and the broker must be back to its start:
# /api/stats, the /metrics gauges, the table and live-object counts, RSS.
# About 65-75 s at CI size, bounded by `timeout` (SOAK_SECONDS + 60 s + 1 s per
# 50 connections for the accounting).
#
#   loadtest/soak-smoke.sh                         # builds shardcast (release) first
#   SKIP_BUILD=1 loadtest/soak-smoke.sh
#   SOAK_CONNECTIONS=4000 SOAK_SECONDS=420 SKIP_BUILD=1 loadtest/soak-smoke.sh   # the by-hand size (README "Soak")
#
# Exits non-zero on any lost, duplicated, reordered or misdelivered message,
# a failed connect, a client the server disconnected, a leftover entry, RSS
# not back near its start, or a broker that died or logged an error.
# Environment: every SOAK_* knob of loadtest/soak.mjs; SOAK_SHARDS (4: more
# cross-shard homes than cores), SOAK_PRESENCE (off, see below), CARGO_TARGET_DIR,
# SHARDCAST_BIN, LOADTEST_OUT (keep the broker log there).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
[[ "$TARGET" = /* ]] || TARGET="$ROOT/$TARGET"   # cargo runs in $ROOT below
BIN="${SHARDCAST_BIN:-$TARGET/release/shardcast}"
SECONDS_OF_CHURN="${SOAK_SECONDS:-45}"
N="${SOAK_CONNECTIONS:-600}"

if [[ "${SKIP_BUILD:-0}" = 0 ]]; then
  (cd "$ROOT" && cargo build --release --bin shardcast)
fi
[[ -x "$BIN" ]] || { echo "soak-smoke: $BIN not found (cargo build --release --bin shardcast)" >&2; exit 2; }
# soak.mjs uses socket.io-client from the client test suite's npm project.
if [[ ! -d "$ROOT/tests/client/node_modules/socket.io-client" ]]; then
  (cd "$ROOT/tests/client" && npm ci --no-audit --no-fund --loglevel=error)
fi

# The broker holds N sockets plus polling requests; the clients as many.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [[ "$(ulimit -n)" != unlimited && "$(ulimit -n)" -lt $((2 * N + 200)) ]]; then
  echo "soak-smoke: ulimit -n is $(ulimit -n), below the $((2 * N + 200)) descriptors $N connections need" >&2
  exit 2
fi

# shellcheck source=lib/broker.sh
source "$HERE/lib/broker.sh"

# PRESENCE_EVENTS off by default: with users coming and going dozens of times
# a second, `user-online` / `user-offline` to every connection is O(clients ×
# churn) events — tens of thousands a second that swamp the Node clients (a
# polling client takes at most 16 packets per GET, so it falls behind and
# misses its heartbeat), not the broker. The presence records are kept and
# checked either way; SOAK_PRESENCE=on sends the events too.
# Pings every 5 s with 10 s to answer: a polling session whose process was
# killed is closed within ~15 s (the drain at the end waits up to 30 s), and a
# client starved of CPU for a few seconds on a busy machine is not dropped.
log="$OUT/broker-soak.log"
PORT=0 HOST=127.0.0.1 RUST_LOG=warn SHARDS="${SOAK_SHARDS:-4}" PRESENCE_EVENTS="${SOAK_PRESENCE:-off}" \
  PING_INTERVAL_MS=5000 PING_TIMEOUT_MS=10000 "$BIN" >"$log" 2>&1 &
BROKER_PID=$!
URL=""
for _ in $(seq 1 100); do
  URL="$(grep -o 'listening on http://[0-9.:]*' "$log" | head -1 | sed 's/listening on //' || true)"
  [[ -n "$URL" ]] && break
  kill -0 "$BROKER_PID" 2>/dev/null || break
  sleep 0.1
done
if [[ -z "$URL" ]]; then
  echo "soak-smoke: the broker did not start:" >&2; cat "$log" >&2; exit 1
fi

echo "=== soak: $N connections for $SECONDS_OF_CHURN s against $BIN"
FAILED=0
set +e
timeout --kill-after=5 $((SECONDS_OF_CHURN + 60 + N / 50)) node "$HERE/soak.mjs" --url "$URL" --server-pid "$BROKER_PID"
rc=$?
set -e
if [[ "$rc" != 0 ]]; then
  echo "soak-smoke: soak.mjs exit code $rc" >&2; FAILED=1
fi
if ! kill -0 "$BROKER_PID" 2>/dev/null; then
  echo "soak-smoke: the broker died:" >&2; tail -20 "$log" >&2; FAILED=1
fi
stop_broker
if grep -qiE ' (ERROR|panicked)' "$log"; then
  echo "soak-smoke: the broker logged errors:" >&2
  grep -iE ' (ERROR|panicked)' "$log" | head -10 >&2
  FAILED=1
fi
[[ "$KEEP_OUT" = 1 ]] && echo "  broker log in $log"
exit "$FAILED"
