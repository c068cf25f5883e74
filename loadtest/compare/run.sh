#!/usr/bin/env bash
# Compares shardcast with Node socket.io 4.8 and socketioxide 0.18 on the same
# scenarios: builds what is needed, then runs compare.py (server pinned to
# core 0, load generator to core 1) and prints a markdown table.
#
#   loadtest/compare/run.sh            # full run (about an hour), median of 3
#   QUICK=1 loadtest/compare/run.sh    # smoke run, a few minutes, one run
#   SCENARIOS=cluster loadtest/compare/run.sh   # 3 nodes on one Redis: shardcast vs socket.io + Redis adapter (cluster.py)
#
# Knobs (environment): see loadtest/compare/README.md. SKIP_BUILD=1 skips the builds.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

if [ "$(nproc)" -lt 2 ]; then
  echo "needs at least 2 cores (server on core 0, load generator on core 1)" >&2
  exit 1
fi
cluster=0
case ",${SCENARIOS:-}," in *,cluster,*) cluster=1 ;; esac
if [ "$cluster" = 1 ] && [ "${SCENARIOS}" != cluster ]; then
  echo "SCENARIOS=cluster runs alone (loadtest/compare/cluster.py)" >&2
  exit 1
fi
for tool in taskset node npm cargo python3 $([ "$cluster" = 1 ] && echo redis-server); do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

if [ "${SKIP_BUILD:-0}" = "0" ]; then
  echo "== building (npm ci, socketioxide, shardcast + loadgen)" >&2
  (cd "$here/node" && npm ci --no-audit --no-fund --loglevel=error >&2)
  if [ "$cluster" = 0 ]; then
    CARGO_TARGET_DIR="$here/socketioxide/target" \
      cargo build --release --manifest-path "$here/socketioxide/Cargo.toml" >&2
  fi
  (cd "$root" && cargo build --release --bin shardcast --bin loadgen --example loopback_floor >&2)
fi

if [ "$cluster" = 1 ]; then
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  exec python3 "$here/cluster.py"
fi

# Every subscriber is a socket in the server and one in the load generator
# (two processes, each with its own limit); leave room for a few more.
big=${SUBS_LARGE:-10000}; idle=${IDLE_CONNECTIONS:-5000}
want=$(( (big > idle ? big : idle) + 2048 ))
case ",${SCENARIOS:-}," in
  *,capacity,*)
    if [ "${QUICK:-0}" = "0" ]; then cap=${CAPACITY_CONNECTIONS:-19000}; else cap=${CAPACITY_CONNECTIONS:-2000}; fi
    if [ $(( cap + 100 )) -gt "$want" ]; then want=$(( cap + 100 )); fi ;;
esac
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$want" ]; then
  ulimit -n "$want" 2>/dev/null || echo "warning: ulimit -n is $(ulimit -n), below $want" >&2
fi

exec python3 "$here/compare.py"
