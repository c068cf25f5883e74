#!/usr/bin/env bash
# CI-sized run of the capacity scenario (loadgen --scenario capacity) against
# a fresh release broker, so its code path keeps working: 2,000 connections
# in their groups of 100 and 1,000, a short idle window with a 1 s ping
# interval (the clients must answer pings), broadcasts to all and to 1,000,
# and a reconnect storm (20 % dropped, backoff capped at 1 s) while numbered
# relays check that the others lose nothing. Twice: broadcasts through the
# HTTP API, then through custom-event relays (--via relay --all-room).
# About 25 s; each run is bounded by `timeout` (40 s), so the whole stays under 2 minutes.
#
#   loadtest/capacity-smoke.sh           # builds shardcast + loadgen (release) first
#   SKIP_BUILD=1 loadtest/capacity-smoke.sh
#
# Exits non-zero if a connection failed, a broadcast missed a recipient, the
# storm did not end with everyone back, a staying client was disconnected or
# missed (or got twice, or out of order) a relay, or the broker died or
# logged an error. Environment: CONNECTIONS (2000), CARGO_TARGET_DIR,
# SHARDCAST_BIN / LOADGEN_BIN, LOADTEST_OUT (keep the outputs there).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
N="${CONNECTIONS:-2000}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
[[ "$TARGET" = /* ]] || TARGET="$ROOT/$TARGET"   # cargo runs in $ROOT below
BIN="${SHARDCAST_BIN:-$TARGET/release/shardcast}"
LOADGEN="${LOADGEN_BIN:-$TARGET/release/loadgen}"

if [[ "${SKIP_BUILD:-0}" = 0 ]]; then
  (cd "$ROOT" && cargo build --release --bin shardcast --bin loadgen)
fi
for b in "$BIN" "$LOADGEN"; do
  [[ -x "$b" ]] || { echo "capacity-smoke: $b not found (cargo build --release --bin shardcast --bin loadgen)" >&2; exit 2; }
done

# Each process holds N sockets (the broker its side, loadgen the other).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [[ "$(ulimit -n)" != unlimited && "$(ulimit -n)" -lt $((N + 200)) ]]; then
  echo "capacity-smoke: ulimit -n is $(ulimit -n), below the $((N + 200)) descriptors $N connections need" >&2
  exit 2
fi

# shellcheck source=lib/broker.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/broker.sh"

# Presence and room announcements off, as for large notification rooms
# (README: ROOM_EVENTS); pings every second, 3 s to answer: a client that
# stops answering pings is dropped within the run.
start_broker() {
  local log="$1"
  PORT=0 HOST=127.0.0.1 RUST_LOG=warn PRESENCE_EVENTS=off ROOM_EVENTS=off PING_INTERVAL_MS=1000 PING_TIMEOUT_MS=3000 \
    "$BIN" >"$log" 2>&1 &
  BROKER_PID=$!
  URL=""
  for _ in $(seq 1 100); do
    URL="$(grep -o 'listening on http://[0-9.:]*' "$log" | head -1 | sed 's/listening on //' || true)"
    [[ -n "$URL" ]] && return 0
    kill -0 "$BROKER_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "capacity-smoke: the broker did not start:" >&2; cat "$log" >&2
  return 1
}

FAILED=0
run() {
  local name="$1"; shift
  local started=$SECONDS
  start_broker "$OUT/broker-$name.log" || { FAILED=1; return; }
  set +e
  timeout --kill-after=5 40 "$LOADGEN" --url "$URL" --server-pid "$BROKER_PID" --scenario capacity \
    --connections "$N" --rate 2000 --concurrency 128 --idle-seconds 3 --ping-interval-ms 1000 \
    --broadcasts 2 --storm-fraction 0.2 --storm-rate 200 --backoff-min-ms 200 --backoff-max-ms 1000 \
    --storm-timeout 20 --connect-timeout-ms 10000 "$@" >"$OUT/$name.json" 2>"$OUT/$name.err"
  local rc=$?
  set -e
  if ! kill -0 "$BROKER_PID" 2>/dev/null; then
    echo "capacity-smoke: the broker died during $name:" >&2; tail -20 "$OUT/broker-$name.log" >&2; FAILED=1
  fi
  stop_broker
  if grep -qiE ' (ERROR|panicked)' "$OUT/broker-$name.log"; then
    echo "capacity-smoke: the broker logged errors during $name:" >&2
    grep -iE ' (ERROR|panicked)' "$OUT/broker-$name.log" | head -10 >&2
    FAILED=1
  fi
  if [[ "$rc" != 0 ]]; then
    echo "capacity-smoke: $name: loadgen exit code $rc" >&2; tail -5 "$OUT/$name.err" >&2; FAILED=1; return
  fi
  python3 - "$OUT/$name.json" "$N" "$name" "$((SECONDS - started))" <<'PY' || FAILED=1
import json, sys
path, n, name, took = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
r = json.loads(open(path).read().strip().splitlines()[-1])
checks = [
    ("all connected", r.get("connected") == n and r.get("connect_failed") == 0),
    ("memory measured", isinstance(r.get("rss_per_connection_kib"), (int, float))),
    ("idle CPU measured", isinstance(r.get("idle_server_cpu_percent"), (int, float))),
    ("nobody dropped while idle", r.get("idle_disconnected") == 0),
    ("broadcasts to all reached all", r.get("bcast_all_recipients") == n and r.get("bcast_all_missing") == 0),
    ("broadcasts to 1,000 reached all", r.get("bcast_group_recipients") == min(n, 1000)
     and r.get("bcast_group_missing") == 0),
    ("storm: all back", r.get("storm_dropped", 0) > 0 and r.get("storm_back") == r.get("storm_dropped")
     and r.get("storm_all_back_seconds") is not None),
    ("storm: nobody else disconnected", r.get("storm_staying_disconnected") == 0),
    ("storm: relays checked", r.get("storm_checked_deliveries", 0) > 0),
    ("storm: nothing lost, duplicated or reordered", r.get("storm_lost") == 0
     and r.get("storm_duplicated_or_reordered") == 0 and r.get("storm_publish_errors") == 0),
    ("no connection lost unexpectedly", r.get("disconnected_unexpectedly") == 0 and r.get("alive_at_end") == n),
    ("loadgen reports ok", r.get("ok") is True),
]
bad = [what for what, ok in checks if not ok]
print(f"  {name:6} {'ok' if not bad else 'FAILED: ' + ', '.join(bad)}  ({took} s; {r.get('connected')} of {n} connected at "
      f"{r.get('connect_rate', 0):.0f}/s, {r.get('rss_per_connection_kib', 0):.1f} KiB/conn, "
      f"broadcast to all max {r.get('bcast_all_max_ms')} ms, storm back in {r.get('storm_all_back_seconds')} s, "
      f"{r.get('storm_checked_deliveries')} relays checked)")
if bad:
    print("  problems: " + "; ".join(r.get("problems") or []), file=sys.stderr)
    print("  errors: " + "; ".join(r.get("error_samples") or []), file=sys.stderr)
sys.exit(1 if bad else 0)
PY
}

echo "=== capacity smoke: $N connections against $BIN"
run api
run relay --via relay --all-room
[[ "$KEEP_OUT" = 1 ]] && echo "  outputs and broker logs in $OUT"
exit "$FAILED"
