# What the shell load tests share (sourced by run-k6.sh and capacity-smoke.sh):
# the output directory (LOADTEST_OUT keeps it, else a temporary one), and
# stopping the broker they started — SIGTERM, up to 5 s, then SIGKILL — on
# any exit. Set BROKER_PID after starting the broker.

if [[ -n "${LOADTEST_OUT:-}" ]]; then
  OUT="$LOADTEST_OUT"; mkdir -p "$OUT"; KEEP_OUT=1
else
  OUT="$(mktemp -d)"; KEEP_OUT=0
fi

BROKER_PID=""
stop_broker() {
  if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
  fi
  BROKER_PID=""
}
cleanup_broker_and_out() {
  stop_broker
  [[ "$KEEP_OUT" = 1 ]] || rm -rf "$OUT"
}
trap cleanup_broker_and_out EXIT
trap 'exit 130' INT TERM
