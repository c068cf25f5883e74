#!/usr/bin/env python3
"""Runs the same load scenarios against shardcast, Node socket.io and
socketioxide, server pinned to core 0 and load generator to core 1, and
prints a side-by-side markdown table with the ratios shardcast/other.

Started by run.sh (which builds everything first); standard library only.
Every knob is an environment variable, listed in README.md beside this file.
"""

import json
import re
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))


def env_str(name, default):
    value = os.environ.get(name, "")
    return value if value != "" else default


def env_num(name, default, kind=float):
    return kind(env_str(name, str(default)))


QUICK = env_str("QUICK", "0") not in ("0", "", "false", "no")

# ---- settings (full mode / QUICK=1) -------------------------------------------------
RUNS = env_num("RUNS", 1 if QUICK else 3, int)
IDLE_CONNECTIONS = env_num("IDLE_CONNECTIONS", 2000 if QUICK else 5000, int)
ROOMS_PER_CONN = env_num("ROOMS_PER_CONN", 2, int)
HANDSHAKE_DURATION = env_num("HANDSHAKE_DURATION", 3 if QUICK else 10)
HANDSHAKE_CONCURRENCY = env_num("HANDSHAKE_CONCURRENCY", 64, int)
# Handshakes/s every server carries (socket.io tops out near 2,300/s here),
# for server CPU per handshake when the load generator limits the maximum.
HANDSHAKE_FIXED_RATE = env_num("HANDSHAKE_FIXED_RATE", 2000)
# HANDSHAKE_CLOSE_WAIT=1: each handshake's client closes as socket.io-client
# does (waits for the server's close frame and end of connection) instead of
# at once after its close frame.
HANDSHAKE_CLOSE = ["--close-wait"] if env_str("HANDSHAKE_CLOSE_WAIT", "0") not in ("0", "", "false", "no") else []
FANOUT_DURATION = env_num("FANOUT_DURATION", 3 if QUICK else 8)
SUBS_SMALL = env_num("SUBS_SMALL", 1000, int)
SUBS_LARGE = env_num("SUBS_LARGE", 3000 if QUICK else 10000, int)
P99_BOUND_SMALL_MS = env_num("P99_BOUND_SMALL_MS", 100)
P99_BOUND_LARGE_MS = env_num("P99_BOUND_LARGE_MS", 1000)
# Search: publishes/s to start from; each step multiplies the rate by FACTOR
# until a step fails, then REFINE bisection steps between the last pass and
# the first failure. Runs after the first start from the first run's answer
# and step by NUDGE (x1.15) up or down.
START_RATE_SMALL = env_num("START_RATE_SMALL", 100 if QUICK else 50)
START_RATE_LARGE = env_num("START_RATE_LARGE", 20 if QUICK else 4)
FACTOR = env_num("FACTOR", 3 if QUICK else 2)
REFINE = env_num("REFINE", 0 if QUICK else 2, int)
NUDGE = env_num("NUDGE", 1.15)
MAX_STEPS = env_num("MAX_STEPS", 2 if QUICK else 9, int)
MAX_RATE = env_num("MAX_RATE", 100000)
DOWN_STEPS = env_num("DOWN_STEPS", 1 if QUICK else 3, int)  # when the start rate already fails
# Fixed rates every server carries, for server CPU per delivery.
FIXED_RATE_SMALL = env_num("FIXED_RATE_SMALL", 50)
LOWLOAD_RATE = env_num("LOWLOAD_RATE", 2)
LOWLOAD_DURATION = env_num("LOWLOAD_DURATION", 4 if QUICK else 10)
# loopback_floor runs per floor figure (their median).
FLOOR_RUNS = env_num("FLOOR_RUNS", 1 if QUICK else 3, int)
# Passed to loadgen fanout as --read-interval-ms when set (batched reads make
# the generator cheaper per delivery, at up to that much added latency).
READ_INTERVAL_MS = env_str("READ_INTERVAL_MS", "")
# A measurement during which other processes used more than this much CPU
# (% of one core, user space) is repeated after a pause, then kept and flagged.
OTHER_CPU_LIMIT = env_num("OTHER_CPU_LIMIT", 10)
DISTURBED_RETRIES = env_num("DISTURBED_RETRIES", 2, int)
DISTURBED_PAUSE = env_num("DISTURBED_PAUSE", 5)
QUIET_TIMEOUT = env_num("QUIET_TIMEOUT", 120)  # per measurement
QUIET_BUDGET = env_num("QUIET_BUDGET", 900)  # in all
SERVER_CPUS = env_str("SERVER_CPUS", "0")
LOADGEN_CPUS = env_str("LOADGEN_CPUS", "1")
PORT_BASE = env_num("PORT_BASE", 21000, int)  # below the ephemeral port range
OUT_DIR = env_str("OUT_DIR", os.path.join(HERE, "out"))
SERVERS_WANTED = env_str("SERVERS", "shardcast,socket.io,socketioxide,shardcast-2").split(",")
SCENARIOS_WANTED = env_str(
    "SCENARIOS", "idle,handshake,handshake-fixed,fixed,fanout-small,fanout-large,lowload").split(",")
# Capacity (opt-in: SCENARIOS=capacity): N authenticated connections held at
# once, each in its group of 100 and its group of 1,000; memory, idle CPU,
# broadcasts to all and to 1,000, a reconnect storm (loadgen --scenario capacity).
CAPACITY_CONNECTIONS = env_num("CAPACITY_CONNECTIONS", 2000 if QUICK else 19000, int)
CAPACITY_RUNS = env_num("CAPACITY_RUNS", RUNS, int)
CAPACITY_RATE = env_num("CAPACITY_RATE", 1000)  # connections/s while connecting
CAPACITY_CONCURRENCY = env_num("CAPACITY_CONCURRENCY", 256, int)  # connection attempts in flight at most
CAPACITY_IDLE_SECONDS = env_num("CAPACITY_IDLE_SECONDS", 30)  # >= the 25 s ping interval
CAPACITY_BROADCASTS = env_num("CAPACITY_BROADCASTS", 5, int)
CAPACITY_STORM_FRACTION = env_num("CAPACITY_STORM_FRACTION", 0.2)
CAPACITY_STORM_RATE = env_num("CAPACITY_STORM_RATE", 200)  # numbered relays/s during the storm
CAPACITY_STORM_TIMEOUT = env_num("CAPACITY_STORM_TIMEOUT", 120)
CAPACITY_BACKOFF = env_str("CAPACITY_BACKOFF", "1000,5000,0.5")  # socket.io-client's defaults
# shardcast broadcasts through its HTTP API (api) or, like the two others,
# through custom-event relays to a room every connection joins (relay).
CAPACITY_SHARDCAST_VIA = env_str("CAPACITY_SHARDCAST_VIA", "api")
# The heartbeat floor: loopback_floor --ping, one exchange at a time at this rate.
CAPACITY_FLOOR_PING_RATE = env_num("CAPACITY_FLOOR_PING_RATE", 2000)
CAPACITY_FLOOR_PING_ROUNDS = env_num("CAPACITY_FLOOR_PING_ROUNDS", 3, int)
# shardcast runs without presence broadcasts by default: the two other servers
# implement only the three events and broadcast nothing on authenticate.
SHARDCAST_ENV = env_str("SHARDCAST_ENV", "PRESENCE_EVENTS=off ROOM_EVENTS=off")

LOADGEN = env_str("LOADGEN", os.path.join(ROOT, "target", "release", "loadgen"))
SHARDCAST = env_str("SHARDCAST", os.path.join(ROOT, "target", "release", "shardcast"))
SOCKETIOXIDE = env_str(
    "SOCKETIOXIDE", os.path.join(HERE, "socketioxide", "target", "release", "socketioxide-compare")
)
NODE = env_str("NODE", "node")


def kv(spec):
    return dict(item.split("=", 1) for item in spec.split() if "=" in item)


SERVERS = {
    "shardcast": {
        "label": "shardcast SHARDS=1",
        "cmd": [SHARDCAST],
        "env": {"SHARDS": "1", "HOST": "127.0.0.1", "RUST_LOG": "warn", **kv(SHARDCAST_ENV)},
        "cpus": SERVER_CPUS,
    },
    "socket.io": {
        "label": "socket.io 4.8",
        "cmd": [NODE, os.path.join(HERE, "node", "server.mjs")],
        "env": {"HOST": "127.0.0.1", "NODE_ENV": "production"},
        "cpus": SERVER_CPUS,
    },
    "socketioxide": {
        "label": "socketioxide 0.18",
        "cmd": [SOCKETIOXIDE],
        "env": {"HOST": "127.0.0.1"},
        "cpus": SERVER_CPUS,
    },
    "shardcast-2": {
        "label": "shardcast SHARDS=2 (cores 0,1; shares core 1 with the load generator)",
        "cmd": [SHARDCAST],
        "env": {"SHARDS": "2", "HOST": "127.0.0.1", "RUST_LOG": "warn", **kv(SHARDCAST_ENV)},
        "cpus": SERVER_CPUS + "," + LOADGEN_CPUS,
    },
}

_port_counter = 0
LOG = None


def log(msg):
    line = time.strftime("%H:%M:%S ") + msg
    print(line, file=sys.stderr, flush=True)
    if LOG:
        LOG.write(line + "\n")
        LOG.flush()


def next_port():
    global _port_counter
    _port_counter += 1
    return PORT_BASE + (_port_counter % 400)


def wait_listening(port, proc, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def user_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[11]) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def machine_user_seconds():
    """User-space CPU time of the whole machine (user + nice, all cores)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return (int(fields[1]) + int(fields[2])) / CLK_TCK


BUSY_NAMES = {"rustc", "cc1", "cc1plus", "ld", "ld.lld", "mold", "rust-lld"}


def compilers_running():
    """Names of compiler processes on the machine: they would steal the cores."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    name = f.read().strip()
            except OSError:
                continue
            if name in BUSY_NAMES:
                found.add(name)
    return found


def sample_cpu(pids, gen, timeout, every=0.25):
    """Until `gen` exits: samples each pid's CPU time (user + system, seconds);
    also notes compilers running meanwhile (samples["busy"])."""
    samples = {name: [] for name in pids}
    busy = set()
    deadline = time.time() + timeout
    n = 0
    samples["other_user"] = []
    while gen.poll() is None and time.time() < deadline:
        now = time.time()
        ours = 0.0
        for name, pid in pids.items():
            cpu = cpu_seconds(pid)
            if cpu is not None:
                samples[name].append((now, cpu))
            ours += user_seconds(pid) or 0.0
        # User-space CPU of every other process (kernel threads have none, so
        # loopback softirq work does not count): another load test or build
        # running beside this one shows up here.
        samples["other_user"].append((now, machine_user_seconds() - ours))
        if n % 4 == 0:
            busy |= compilers_running()
        n += 1
        time.sleep(every)
    samples["busy"] = sorted(busy)
    return samples


def tail_percent(samples, window):
    """CPU % (one core = 100) over the last `window` seconds sampled: the
    measurement phase of a fanout or handshake run (setup comes first, and a
    run where nothing is lost ends right after the last delivery)."""
    if len(samples) < 2 or not window:
        return None
    t_end, c_end = samples[-1]
    start = samples[0]
    for t, c in samples:
        if t_end - t <= window:
            start = (t, c)
            break
    if t_end - start[0] < 0.2:
        return None
    return round((c_end - start[1]) / (t_end - start[0]) * 100, 1)


def wait_quiet():
    """Waits (up to QUIET_TIMEOUT seconds) until other processes use less than
    OTHER_CPU_LIMIT % of a core, measured over one second."""
    global QUIET_BUDGET
    started = time.time()
    deadline = started + min(QUIET_TIMEOUT, QUIET_BUDGET)
    told = False
    while True:
        u0, t0 = machine_user_seconds(), time.time()
        time.sleep(1.0)
        other = (machine_user_seconds() - u0) / (time.time() - t0) * 100
        if other <= OTHER_CPU_LIMIT or time.time() > deadline:
            QUIET_BUDGET = max(0.0, QUIET_BUDGET - (time.time() - started))
            if other > OTHER_CPU_LIMIT:
                log(f"    still busy (other processes at {other:.0f}% of a core): measuring anyway")
            elif told:
                log("    the machine is quiet again")
            return
        if not told:
            log(f"    other processes use {other:.0f}% of a core: waiting for them (up to {QUIET_TIMEOUT:g} s)")
            told = True
        time.sleep(2.0)


def measure(server, args, timeout, window=None):
    """measure_once, again (after a pause) while other work on the machine
    disturbed it, up to DISTURBED_RETRIES times."""
    for attempt in range(DISTURBED_RETRIES + 1):
        wait_quiet()
        result = measure_once(server, args, timeout, window)
        if not result.get("disturbed_by"):
            return result
        log(f"    warning: disturbed by {', '.join(result['disturbed_by'])}"
            + (f"; again in {DISTURBED_PAUSE:g} s" if attempt < DISTURBED_RETRIES else "; kept, flagged"))
        if attempt < DISTURBED_RETRIES:
            time.sleep(DISTURBED_PAUSE)
    return result


def measure_once(server, args, timeout, window=None):
    """Starts a fresh server, runs one loadgen invocation, stops the server.
    Returns the loadgen JSON (plus loadgen_cpu_percent), or {"error": ...}."""
    spec = SERVERS[server]
    port = next_port()
    env = dict(os.environ)
    env.update(spec["env"])
    env["PORT"] = str(port)
    server_log = open(os.path.join(OUT_DIR, f"server-{server}.log"), "ab")
    proc = subprocess.Popen(
        ["taskset", "-c", spec["cpus"]] + spec["cmd"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=server_log,
        stderr=subprocess.STDOUT,
    )
    try:
        if not wait_listening(port, proc):
            return {"error": f"{server} did not listen on {port} (see out/server-{server}.log)"}
        time.sleep(0.3)  # let a JIT / allocator settle before the 'before' sample
        cmd = ["taskset", "-c", LOADGEN_CPUS, LOADGEN, "--url", f"http://127.0.0.1:{port}",
               "--server-pid", str(proc.pid)] + [str(a) for a in args]
        usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.time()
        out_path = os.path.join(OUT_DIR, "loadgen.stdout")
        err_path = os.path.join(OUT_DIR, "loadgen.stderr")
        with open(out_path, "w") as out, open(err_path, "w") as err:
            gen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
            samples = sample_cpu({"loadgen": gen.pid, "server": proc.pid}, gen, timeout)
            if gen.poll() is None:
                gen.kill()
                gen.wait()
                return {"error": f"loadgen timed out after {timeout:.0f} s"}
        wall = time.time() - started
        usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        stdout, stderr = open(out_path).read(), open(err_path).read()
        if gen.returncode != 0:
            tail = stderr.strip().splitlines()[-3:]
            return {"error": f"loadgen exit {gen.returncode}: {' | '.join(tail)}"}
        lines = [l for l in stdout.strip().splitlines() if l.startswith("{")]
        if not lines:
            return {"error": "loadgen printed no JSON"}
        result = json.loads(lines[-1])
        cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
        result["loadgen_cpu_percent_whole_run"] = round(cpu / wall * 100, 1)
        other = tail_percent(samples["other_user"], window or wall)
        result["other_cpu_percent"] = other
        disturbed = list(samples["busy"])
        if other is not None and other > OTHER_CPU_LIMIT:
            disturbed.append(f"other processes at {other:.0f}% of a core")
        if disturbed:
            result["disturbed_by"] = disturbed
        if window:
            result["loadgen_cpu_percent"] = tail_percent(samples["loadgen"], window)
            result["server_cpu_percent_sampled"] = tail_percent(samples["server"], window)
        if proc.poll() is not None:
            result["error"] = f"{server} exited during the run (code {proc.returncode})"
        return result
    finally:
        stop(proc)
        server_log.close()


def short(result, keys):
    if "error" in result:
        return "ERROR " + result["error"]
    parts = []
    for k in keys:
        if k in result:
            v = result[k]
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


FANOUT_KEYS = ["publishes_per_sec", "deliveries_per_sec", "lost", "p50_ms", "p99_ms", "max_ms",
               "server_cpu_percent", "server_cpu_percent_sampled", "loadgen_cpu_percent", "other_cpu_percent"]


def fanout(server, subs, rate, duration):
    timeout = duration + 60 + subs / 200
    args = ["--scenario", "fanout", "--connections", subs, "--rooms-per-conn", 1,
            "--duration", duration, "--rate", fmt_rate(rate)]
    if READ_INTERVAL_MS:
        args += ["--read-interval-ms", READ_INTERVAL_MS]
    r = measure(server, args, timeout, window=duration)
    r["rate_asked"] = rate
    return r


def fmt_rate(rate):
    return f"{rate:.3f}".rstrip("0").rstrip(".")


def sustained(result, bound_ms):
    if "error" in result or "deliveries_per_sec" not in result:
        return False
    return (result.get("lost", 1) == 0 and result.get("deliveries", 0) > 0
            and result.get("p99_ms", 1e9) <= bound_ms
            and result.get("publishes_per_sec", 0) >= 0.9 * result["rate_asked"])


def search(server, subs, bound_ms, start, hint):
    """Highest publish rate kept up with (nothing lost, p99 <= bound). Returns
    (best result or None, trials)."""
    trials = []

    def trial(rate):
        r = fanout(server, subs, rate, FANOUT_DURATION)
        ok = sustained(r, bound_ms)
        trials.append(r)
        log(f"    {server} fanout {subs} subs @ {fmt_rate(rate)}/s: {'ok  ' if ok else 'FAIL'} "
            f"{short(r, FANOUT_KEYS)}")
        return ok, r

    best, fail_rate = None, None
    if hint is None:
        rate, factor, steps = start, FACTOR, MAX_STEPS
    else:
        rate, factor, steps = hint, NUDGE, MAX_STEPS
    ok, r = trial(rate)
    steps -= 1
    if ok:
        best = r
        while steps > 0 and rate * factor <= MAX_RATE:
            rate *= factor
            ok, r = trial(rate)
            steps -= 1
            if not ok:
                fail_rate = rate
                break
            best = r
    else:
        fail_rate = rate
        steps = min(steps, DOWN_STEPS)
        while steps > 0 and rate / factor >= 0.05:
            rate /= factor
            ok, r = trial(rate)
            steps -= 1
            if ok:
                best = r
                break
            fail_rate = rate
    if hint is None and best is not None and fail_rate is not None:
        for _ in range(REFINE):
            mid = (best["rate_asked"] + fail_rate) / 2
            ok, r = trial(mid)
            if ok:
                best = r
            else:
                fail_rate = mid
    return best, trials


CAPACITY_KEYS = ["connected", "connect_rate", "rss_per_connection_kib", "kernel_tcp_mem_bytes_per_connection",
                 "idle_server_cpu_percent", "idle_server_cpu_us_per_conn_per_interval", "bcast_all_max_ms",
                 "bcast_all_server_cpu_ms", "bcast_group_max_ms", "storm_all_back_seconds",
                 "storm_staying_disconnected", "storm_lost", "ok", "other_cpu_percent"]


def capacity_args(server):
    backoff = (CAPACITY_BACKOFF.split(",") + ["", "", ""])[:3]
    args = ["--scenario", "capacity", "--connections", CAPACITY_CONNECTIONS, "--rate", fmt_rate(CAPACITY_RATE),
            "--concurrency", CAPACITY_CONCURRENCY, "--idle-seconds", CAPACITY_IDLE_SECONDS,
            "--broadcasts", CAPACITY_BROADCASTS, "--storm-fraction", CAPACITY_STORM_FRACTION,
            "--storm-rate", CAPACITY_STORM_RATE, "--storm-timeout", CAPACITY_STORM_TIMEOUT,
            "--backoff-min-ms", backoff[0] or 1000, "--backoff-max-ms", backoff[1] or 5000,
            "--backoff-jitter", backoff[2] or 0.5]
    # socket.io and socketioxide have no HTTP API: relays to a room every
    # connection joins (after the memory figure) stand for "to all".
    if not server.startswith("shardcast") or CAPACITY_SHARDCAST_VIA == "relay":
        args += ["--via", "relay", "--all-room"]
    return args


def capacity(server, i):
    n = CAPACITY_CONNECTIONS
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < n + 100:
        r = {"error": f"ulimit -n is {soft}, below the {n + 100} descriptors {n:,} connections need "
                      "in each process: raise it or lower CAPACITY_CONNECTIONS"}
    else:
        timeout = (180 + 2 * n / CAPACITY_RATE + CAPACITY_IDLE_SECONDS
                   + CAPACITY_BROADCASTS * 2 * (12 + n / 1000) + CAPACITY_STORM_TIMEOUT)
        r = measure(server, capacity_args(server), timeout)
    log(f"  capacity {n:,} conns, run {i + 1}: {short(r, CAPACITY_KEYS)}")
    if r.get("problems"):
        log(f"    problems: {'; '.join(r['problems'])}")
    return r


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


# A fan-out search's answer in one run starts the next run's search on the
# same server; a server that kept up with no rate in its first run is not
# searched again. Keyed by (server, scenario).
SEARCH_HINTS = {}
SEARCH_GAVE_UP = set()


def run_server(server, results, i):
    """Run `i` of every wanted scenario on `server`, appended to its results.

    `main` lets the servers take turns run by run (A, B, A, B, ...) rather
    than giving each its runs in one block: the machine's speed drifts over
    minutes (the same binary's CPU per handshake has moved by a third within
    an hour here), and in blocks that drift lands between the servers and
    reads as a difference between them."""
    res = results.setdefault(server, {})
    scen = SCENARIOS_WANTED
    log(f"== {SERVERS[server]['label']}, run {i + 1}")
    # Capacity may have more runs than the rest (`CAPACITY_RUNS`).
    main_run = i < RUNS
    if "idle" in scen and main_run:
        r = measure(server, ["--scenario", "idle", "--connections", IDLE_CONNECTIONS,
                             "--rooms-per-conn", ROOMS_PER_CONN, "--concurrency", 64],
                    60 + IDLE_CONNECTIONS / 100)
        log(f"  idle {IDLE_CONNECTIONS} conns x {ROOMS_PER_CONN} rooms, run {i + 1}: "
            f"{short(r, ['rss_per_connection_kib', 'server_rss_kib', 'other_cpu_percent'])}")
        res.setdefault("idle", []).append(r)
    if "handshake" in scen and main_run:
        r = measure(server, ["--scenario", "handshake", "--duration", HANDSHAKE_DURATION,
                             "--concurrency", HANDSHAKE_CONCURRENCY, *HANDSHAKE_CLOSE], HANDSHAKE_DURATION + 60,
                    window=HANDSHAKE_DURATION)
        log(f"  handshake c={HANDSHAKE_CONCURRENCY}, run {i + 1}: "
            f"{short(r, ['handshakes_per_sec', 'failed', 'server_cpu_percent', 'loadgen_cpu_percent', 'other_cpu_percent'])}")
        res.setdefault("handshake", []).append(r)
    if "handshake-fixed" in scen and main_run:
        r = measure(server, ["--scenario", "handshake", "--duration", HANDSHAKE_DURATION,
                             "--concurrency", HANDSHAKE_CONCURRENCY, "--rate", HANDSHAKE_FIXED_RATE,
                             *HANDSHAKE_CLOSE],
                    HANDSHAKE_DURATION + 60, window=HANDSHAKE_DURATION)
        log(f"  handshake @ {fmt_rate(HANDSHAKE_FIXED_RATE)}/s, run {i + 1}: "
            f"{short(r, ['handshakes_per_sec', 'failed', 'server_cpu_us_per_handshake', 'other_cpu_percent'])}")
        res.setdefault("handshake-fixed", []).append(r)
    if "fixed" in scen and main_run:
        r = fanout(server, SUBS_SMALL, FIXED_RATE_SMALL, FANOUT_DURATION)
        log(f"  fixed fanout {SUBS_SMALL} subs @ {fmt_rate(FIXED_RATE_SMALL)}/s, run {i + 1}: {short(r, FANOUT_KEYS)}")
        res.setdefault("fixed", []).append(r)
    for key, subs, bound, start in (("fanout-small", SUBS_SMALL, P99_BOUND_SMALL_MS, START_RATE_SMALL),
                                    ("fanout-large", SUBS_LARGE, P99_BOUND_LARGE_MS, START_RATE_LARGE)):
        if key not in scen or not main_run or (server, key) in SEARCH_GAVE_UP:
            continue
        hint = SEARCH_HINTS.get((server, key))
        log(f"  sustained fanout to {subs} (p99 <= {bound:g} ms, nothing lost), run {i + 1}")
        best, trials = search(server, subs, bound, start, hint)
        res.setdefault(key, []).append(best)
        res.setdefault(key + "-trials", []).append(trials)
        if best is not None and hint is None:
            SEARCH_HINTS[(server, key)] = best["rate_asked"]
        log(f"  -> run {i + 1}: " + (short(best, FANOUT_KEYS) if best else "no rate kept up with"))
        if best is None and hint is None:
            log("  (no rate kept up with in the first run: the other runs are skipped)")
            SEARCH_GAVE_UP.add((server, key))
    if "capacity" in scen and i < CAPACITY_RUNS:
        res.setdefault("capacity", []).append(capacity(server, i))
    if "lowload" in scen and main_run:
        # The floor drifts over a comparison's half hour as much as the
        # servers do: each low-load run gets its own, measured just
        # before it, and the row takes the median of the per-run ratios.
        floor = measure_floor()
        r = fanout(server, SUBS_LARGE, LOWLOAD_RATE, LOWLOAD_DURATION)
        if floor:
            r["floor_us_per_send"] = floor["us_per_send"]
        log(f"  low load {SUBS_LARGE} subs @ {fmt_rate(LOWLOAD_RATE)}/s, run {i + 1}: {short(r, FANOUT_KEYS)}")
        res.setdefault("lowload", []).append(r)


# ---- figures and table --------------------------------------------------------------

def ok_runs(runs):
    return [r for r in runs or [] if r and "error" not in r]


def fig_idle(res):
    return median([r.get("rss_per_connection_kib") for r in ok_runs(res.get("idle"))])


def fig_handshake_cpu(res):
    # Only runs that kept the rate: a server that fell behind did less work.
    kept = [r for r in ok_runs(res.get("handshake-fixed"))
            if r.get("handshakes_per_sec", 0) >= 0.95 * HANDSHAKE_FIXED_RATE and not r.get("failed")]
    return median([r.get("server_cpu_us_per_handshake") for r in kept])


def us_per_delivery(r):
    if r.get("server_cpu_percent") is None or not r.get("deliveries_per_sec"):
        return None
    return r["server_cpu_percent"] / 100 / r["deliveries_per_sec"] * 1e6


def fig_fixed_cpu(res):
    return median([us_per_delivery(r) for r in ok_runs(res.get("fixed"))])


def fig_sustained(key):
    def f(res):
        runs = res.get(key)
        if runs is None:
            return None
        # A run where no rate was kept up with counts as 0.
        return median([(r or {}).get("deliveries_per_sec", 0.0) for r in runs])
    return f


def fig_median(key, field):
    """The median over a scenario's kept runs of one of their fields."""
    def f(res):
        return median([r.get(field) for r in ok_runs(res.get(key))])
    return f


def fig_pair(key, a, b):
    def f(res):
        runs = ok_runs(res.get(key))
        va, vb = median([r.get(a) for r in runs]), median([r.get(b) for r in runs])
        if va is None and vb is None:
            return None
        return f"{fmt(va)} / {fmt(vb)}"
    return f


def broadcast_ms(r):
    """One low-load run's server CPU per broadcast, ms of one core: the CPU
    from the first publish until the last delivery, over the publishes."""
    if r.get("server_cpu_seconds") is not None and r.get("publishes"):
        return r["server_cpu_seconds"] / r["publishes"] * 1000
    # Results from before server_cpu_seconds: CPU % over the publishing time.
    if r.get("server_cpu_percent") is not None and r.get("publishes_per_sec"):
        return r["server_cpu_percent"] / 100 / r["publishes_per_sec"] * 1000
    return None


def fig_broadcast_ms(res):
    """Server CPU per broadcast at low load (ms of one core per publish)."""
    return median([broadcast_ms(r) for r in ok_runs(res.get("lowload"))])


def fmt(v, digits=3):
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def fig_floor_ratio(floor):
    """Server CPU per broadcast to SUBS_LARGE / the kernel's floor for as many
    sends: the median of each run against the floor measured just before it
    (against the run's opening floor for results from before that)."""
    def f(res):
        ratios = []
        for r in ok_runs(res.get("lowload")):
            ms = broadcast_ms(r)
            us = r.get("floor_us_per_send") or (floor or {}).get("us_per_send")
            if ms is not None and us:
                ratios.append(ms / (us * SUBS_LARGE / 1000))
        return median(ratios)
    return f


def table(results, floor=None):
    small, large = SUBS_SMALL, SUBS_LARGE
    # (label, figure, higher is better, target ratio vs socket.io, target ratio vs socketioxide)
    rows = [
        (f"idle memory per connection in {ROOMS_PER_CONN} rooms, KiB ({IDLE_CONNECTIONS:,} conns)",
         fig_idle, False, 0.5, 0.25),
        (f"handshakes/s (connect + CONNECT + authenticate ack, {HANDSHAKE_CONCURRENCY} in flight)",
         fig_median("handshake", "handshakes_per_sec"), True, None, 1.5),
        ("  server CPU % / load generator CPU %", fig_pair("handshake", "server_cpu_percent", "loadgen_cpu_percent"),
         None, None, None),
        ("  server CPU µs per handshake at that rate", fig_median("handshake", "server_cpu_us_per_handshake"), False, None, 0.5),
        (f"server CPU µs per handshake at {fmt_rate(HANDSHAKE_FIXED_RATE)} handshakes/s",
         fig_handshake_cpu, False, None, 1 / 1.5),
        (f"fan-out to {small:,}: sustained deliveries/s (p99 <= {P99_BOUND_SMALL_MS:g} ms, none lost)",
         fig_sustained("fanout-small"), True, None, 1.5),
        ("  p99 ms at that rate", fig_median("fanout-small", "p99_ms"), False, None, None),
        ("  server CPU % at that rate", fig_median("fanout-small", "server_cpu_percent"), False, None, None),
        ("  load generator CPU % at that rate", fig_median("fanout-small", "loadgen_cpu_percent"),
         None, None, None),
        (f"fan-out to {large:,}: sustained deliveries/s (p99 <= {P99_BOUND_LARGE_MS:g} ms, none lost)",
         fig_sustained("fanout-large"), True, None, 1.5),
        ("  p99 ms at that rate", fig_median("fanout-large", "p99_ms"), False, None, None),
        ("  server CPU % at that rate", fig_median("fanout-large", "server_cpu_percent"), False, None, None),
        ("  load generator CPU % at that rate", fig_median("fanout-large", "loadgen_cpu_percent"),
         None, None, None),
        (f"server CPU µs per delivery, {small:,} subs at {fmt_rate(FIXED_RATE_SMALL)} publishes/s",
         fig_fixed_cpu, False, None, None),
        (f"  p99 ms, {small:,} subs at {fmt_rate(FIXED_RATE_SMALL)} publishes/s", fig_median("fixed", "p99_ms"), False, None, None),
        # (The old target here, p99 <= 0.25x socketioxide's, is retired (issue 11): on loopback the
        # kernel's per-send cost sets the floor; the floor row below is the target now.)
        (f"low load: p99 ms, {large:,} subs at {fmt_rate(LOWLOAD_RATE)} publishes/s",
         fig_median("lowload", "p99_ms"), False, None, None),
        ("  p50 ms", fig_median("lowload", "p50_ms"), False, None, None),
        (f"  server CPU ms per broadcast to {large:,}", fig_broadcast_ms, False, None, None),
        ("  server CPU per broadcast / kernel floor, same run", fig_floor_ratio(floor), None, None, None, 1.1),
    ]
    cols = [s for s in ("shardcast", "socket.io", "socketioxide") if s in results]
    extra = [s for s in ("shardcast-2",) if s in results]
    head = ["", *[SERVERS[c]["label"] for c in cols]]
    if "shardcast" in results:
        for other in ("socket.io", "socketioxide"):
            if other in results:
                head.append(f"shardcast / {other}")
    head += ["target"] + ["shardcast SHARDS=2" for _ in extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, fig, higher, t_io, t_sx, *absolute in rows:
        vals = {c: fig(results[c]) for c in results}
        cells = [label] + [fmt(vals[c]) for c in cols]
        targets = []
        if absolute and "shardcast" in cols:
            # A bound on shardcast's own figure (not a ratio to another server).
            a = vals.get("shardcast")
            if isinstance(a, (int, float)):
                cells[1 + cols.index("shardcast")] += " ✓" if a <= absolute[0] else " ✗"
            targets.append(f"≤ {absolute[0]:g} (shardcast)")
        if "shardcast" in results:
            for other, target in (("socket.io", t_io), ("socketioxide", t_sx)):
                if other not in results:
                    continue
                a, b = vals.get("shardcast"), vals.get(other)
                if higher is None:
                    cells.append("")
                    continue
                if a is None or not b or isinstance(a, str) or isinstance(b, str):
                    cells.append("—")
                    continue
                ratio = a / b
                mark = ""
                if target is not None:
                    met = ratio >= target if higher else ratio <= target
                    mark = " ✓" if met else " ✗"
                cells.append(f"{ratio:.2f}×{mark}")
        if t_io is not None:
            targets.append(f"{'≥' if higher else '≤'} {t_io:.2g}× socket.io")
        if t_sx is not None:
            targets.append(f"{'≥' if higher else '≤'} {t_sx:.2g}× socketioxide")
        cells.append(", ".join(targets) or "")
        cells += [fmt(vals[c]) for c in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- the capacity table -------------------------------------------------------------

def cap_runs(res):
    """Capacity runs that produced figures (a run whose server could not hold
    the count still did: its problems say why)."""
    return [r for r in res.get("capacity") or [] if r and "error" not in r]


def cap(key):
    def f(res):
        return median([r.get(key) for r in cap_runs(res) if isinstance(r.get(key), (int, float))])
    return f


def cap_held(res):
    runs = res.get("capacity") or []
    if not runs:
        return None
    bad = [r for r in runs if "error" in r or not r.get("ok")]
    if not bad:
        return f"yes ({len(runs)}/{len(runs)})"
    r = bad[0]
    why = r.get("error") or "; ".join(r.get("problems") or []) or "?"
    return f"**no** ({len(runs) - len(bad)}/{len(runs)} ok): {why}"


def cap_connect(res):
    rate, p99, failed = cap("connect_rate")(res), cap("connect_ms_p99")(res), cap("connect_failed")(res)
    if rate is None:
        return None
    return f"{rate:,.0f}/s, p99 {fmt(p99)} ms" + (f", {fmt(failed)} failed" if failed else "")


def cap_kernel_mem(res):
    a, b = cap("kernel_tcp_mem_kib_before")(res), cap("kernel_tcp_mem_kib_after")(res)
    if a is None:
        return None
    return f"{fmt(a)} → {fmt(b)}"


def cap_triple(prefix):
    def f(res):
        v = [cap(f"{prefix}_{k}_ms")(res) for k in ("p50", "p99", "max")]
        return None if v[2] is None else " / ".join(fmt(x) for x in v)
    return f


def cap_per_floor(key, floor_key, per):
    """A server figure over the kernel's floor for the same work (same run)."""
    def f(res, cfloor):
        v = cap(key)(res)
        unit = (cfloor or {}).get(floor_key)
        if v is None or not unit:
            return None
        return v / (unit * per(res))
    return f


def cap_storm_losses(res):
    runs = cap_runs(res)
    if not runs:
        return None
    gone = sum(r.get("storm_staying_disconnected", 0) for r in runs)
    lost = sum(r.get("storm_lost", 0) + r.get("storm_duplicated_or_reordered", 0) for r in runs)
    checked = sum(r.get("storm_checked_deliveries", 0) for r in runs)
    return f"{gone} / {lost} of {checked:,}"


def capacity_table(results, cfloor):
    cols = [s for s in ("shardcast", "socket.io", "socketioxide", "shardcast-2") if s in results
            and results[s].get("capacity")]
    if not cols:
        return ""
    # The run's own settings (a re-rendered table may come from another mode).
    done = [r for c in cols for r in cap_runs(results[c])]
    n = max([r.get("connections", 0) for r in done] or [CAPACITY_CONNECTIONS])
    rate = next((r["rate"] for r in done if "rate" in r), fmt_rate(CAPACITY_RATE))
    idle = median([r.get("idle_seconds") for r in done]) or CAPACITY_IDLE_SECONDS
    us_send = (cfloor or {}).get("us_per_send")
    us_ping = (cfloor or {}).get("us_per_exchange")
    all_ms = cap_per_floor("bcast_all_server_cpu_ms", "us_per_send",
                           lambda res: (cap("bcast_all_recipients")(res) or 0) / 1000)
    group_ms = cap_per_floor("bcast_group_server_cpu_ms", "us_per_send",
                             lambda res: (cap("bcast_group_recipients")(res) or 0) / 1000)
    idle_floor = cap_per_floor("idle_server_cpu_us_per_conn_per_interval", "us_per_exchange", lambda res: 1)
    storm = f"{CAPACITY_STORM_FRACTION * 100:g} %"
    # (label, figure(res, cfloor), target ratio vs socketioxide, absolute bound on shardcast)
    rows = [
        (f"holds {n:,} connections (all connected, nothing lost, nobody else dropped)", lambda r, c: cap_held(r),
         None, None),
        (f"connect rate (asked {rate}/s) and p99 connect + auth + 2 joins",
         lambda r, c: cap_connect(r), None, None),
        ("user-space memory per connection in 2 rooms, KiB (RSS growth)", lambda r, c: cap("rss_per_connection_kib")(r),
         0.15, 4),
        ("kernel TCP memory, sockstat `mem`, KiB before → after (machine-wide, both ends)",
         lambda r, c: cap_kernel_mem(r), None, None),
        ("  bytes per connection (both ends)", lambda r, c: cap("kernel_tcp_mem_bytes_per_connection")(r), None, None),
        ("kernel slab growth per connection, bytes (machine-wide, both ends)",
         lambda r, c: cap("kernel_slab_bytes_per_connection")(r), None, None),
        (f"idle server CPU, % of a core ({idle:.0f} s, heartbeats only)",
         lambda r, c: cap("idle_server_cpu_percent")(r), 0.5, None),
        ("  µs per connection per heartbeat interval", lambda r, c: cap("idle_server_cpu_us_per_conn_per_interval")(r),
         None, None),
        (f"  / kernel floor per ping-pong exchange ({fmt(us_ping)} µs)", idle_floor, None, None),
        ("broadcast to all: ms until recipients have it, p50 / p99 / max", lambda r, c: cap_triple("bcast_all")(r),
         None, None),
        ("  server CPU ms", lambda r, c: cap("bcast_all_server_cpu_ms")(r), None, None),
        (f"  / kernel floor for as many sends ({fmt(us_send)} µs each)", all_ms, None, 1.2),
        (f"broadcast to a group of {min(n, 1000):,}: ms p50 / p99 / max", lambda r, c: cap_triple("bcast_group")(r),
         None, None),
        ("  server CPU ms", lambda r, c: cap("bcast_group_server_cpu_ms")(r), None, None),
        ("  / kernel floor for as many sends", group_ms, None, None),
        (f"reconnect storm ({storm} dropped at once, socket.io-client backoff): s until all back",
         lambda r, c: cap("storm_all_back_seconds")(r), None, None),
        ("  server CPU s from the drop until all back", lambda r, c: cap("storm_server_cpu_seconds")(r), None, None),
        ("  others disconnected / relays lost or out of order (of checked)", lambda r, c: cap_storm_losses(r),
         None, None),
    ]
    head = ["", *[SERVERS[c]["label"] for c in cols]]
    if "shardcast" in cols and "socketioxide" in cols:
        head.append("shardcast / socketioxide")
    head.append("target")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, fig, t_sx, absolute in rows:
        vals = {c: fig(results[c], cfloor) for c in cols}
        cells = [label] + [fmt(vals[c]) for c in cols]
        targets = []
        if absolute is not None and "shardcast" in cols and isinstance(vals["shardcast"], (int, float)):
            cells[1 + cols.index("shardcast")] += " ✓" if vals["shardcast"] <= absolute else " ✗"
        if absolute is not None:
            targets.append(f"≤ {absolute:g}" + (" KiB" if "KiB" in label else "×") + " (shardcast)")
        if "shardcast" in cols and "socketioxide" in cols:
            a, b = vals["shardcast"], vals["socketioxide"]
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
                mark = "" if t_sx is None else (" ✓" if a / b <= t_sx else " ✗")
                cells.append(f"{a / b:.2f}×{mark}")
            else:
                cells.append("")
        if t_sx is not None:
            targets.append(f"≤ {t_sx:g}× socketioxide")
        cells.append(", ".join(targets))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe_capacity():
    return (f"capacity: {CAPACITY_CONNECTIONS:,} connections at {fmt_rate(CAPACITY_RATE)}/s "
            f"({CAPACITY_CONCURRENCY} attempts in flight at most), each in 2 rooms (groups of 100 and 1,000); "
            f"idle {CAPACITY_IDLE_SECONDS:g} s; {CAPACITY_BROADCASTS} broadcasts of each kind (latency: medians; server CPU: their mean); storm "
            f"{CAPACITY_STORM_FRACTION * 100:g} % dropped, backoff {CAPACITY_BACKOFF} ms/ms/jitter, relays at "
            f"{fmt_rate(CAPACITY_STORM_RATE)}/s; shardcast broadcasts via "
            + ("its HTTP API" if CAPACITY_SHARDCAST_VIA != "relay" else "relays to a room of all")
            + ", socket.io and socketioxide via custom-event relays to a room every connection joins after "
              f"the memory figure; median of {CAPACITY_RUNS} run(s)")


def describe():
    main = any(k in SCENARIOS_WANTED for k in MAIN_SCENARIOS)
    return (
        f"mode {'QUICK' if QUICK else 'full'}, median of {RUNS} run(s); server on core(s) {SERVER_CPUS}, "
        f"load generator on core {LOADGEN_CPUS}; "
        + (f"idle {IDLE_CONNECTIONS} connections; handshake "
           f"{HANDSHAKE_DURATION:g} s{' (clients wait for the close answer)' if HANDSHAKE_CLOSE else ''}; fan-out steps {FANOUT_DURATION:g} s each; low load {LOWLOAD_DURATION:g} s, "
           f"each run against the kernel floor measured just before it (mean of {FLOOR_RUNS} runs); "
           if main else "")
        + f"shardcast env: SHARDS=1 {SHARDCAST_ENV}"
        + (f"; loadgen --read-interval-ms {READ_INTERVAL_MS}" if READ_INTERVAL_MS else "")
        + (f"; {describe_capacity()}" if "capacity" in SCENARIOS_WANTED else "")
    )


FLOOR = env_str("FLOOR", os.path.join(ROOT, "target", "release", "examples", "loopback_floor"))


def run_floor(args, pattern, what):
    """One loopback_floor run; the figure its last line gives, or None."""
    wait_quiet()
    try:
        out = subprocess.run([FLOOR] + [str(a) for a in args], capture_output=True, text=True, timeout=600).stdout
    except subprocess.TimeoutExpired:
        out = ""
    m = re.search(pattern, out)
    log(f"loopback floor, {what}: {out.strip().splitlines()[-1] if out.strip() else 'no output'}")
    return float(m.group(1)) if m else None


def floor_sockets(wanted):
    # The reader is a child process: each side needs one descriptor per socket.
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return wanted if soft == resource.RLIM_INFINITY else min(wanted, soft - 200)


def floor_per_send(sockets):
    """CPU per send to `sockets` loopback sockets: the mean of FLOOR_RUNS
    loopback_floor runs (each the mean of its rounds), each on fresh
    connections, since one run's figure moves by ±15 % with where its
    sockets land. A mean, like the server CPU it is compared with (CPU over
    a window, over the broadcasts in it). Returns (mean, runs)."""
    runs = [run_floor([sockets, 10], r"= ([0-9.]+) µs of CPU per send", f"{sockets} sockets")
            for _ in range(FLOOR_RUNS)]
    return mean(runs), runs


def measure_floor():
    """The kernel's CPU per small send to a loopback socket (examples/loopback_floor)."""
    if not os.access(FLOOR, os.X_OK):
        return None
    sockets = floor_sockets(SUBS_LARGE)
    us, runs = floor_per_send(sockets)
    return {"sockets": sockets, "us_per_send": us, "runs": runs} if us is not None else None


def measure_capacity_floor():
    """The kernel's floor at the capacity count: CPU per send (a broadcast to
    all is N of them) and per ping/pong exchange (a heartbeat)."""
    if not os.access(FLOOR, os.X_OK):
        return None
    sockets = floor_sockets(CAPACITY_CONNECTIONS)
    send, _ = floor_per_send(sockets)
    ping = run_floor(["--ping", sockets, CAPACITY_FLOOR_PING_ROUNDS, fmt_rate(CAPACITY_FLOOR_PING_RATE)],
                     r"= ([0-9.]+) µs of CPU per exchange",
                     f"{sockets} sockets, ping/pong at {fmt_rate(CAPACITY_FLOOR_PING_RATE)}/s")
    return {"sockets": sockets, "us_per_send": send, "us_per_exchange": ping,
            "ping_rate": CAPACITY_FLOOR_PING_RATE}


MAIN_SCENARIOS = ("idle", "handshake", "handshake-fixed", "fixed", "fanout-small", "fanout-large", "lowload")


def render(results, floor=None, cfloor=None):
    main_rows = any(k in res for res in results.values() for k in MAIN_SCENARIOS)
    md = table(results, floor) if main_rows else ""
    captable = capacity_table(results, cfloor)
    if captable:
        md += ("\n\n" if md else "") + captable
        if cfloor:
            md += (f"\n\nThe kernel's floor at {cfloor['sockets']:,} sockets, same run (`examples/loopback_floor`, "
                   f"reader process on the other core; means over the rounds): {fmt(cfloor.get('us_per_send'))} µs of CPU per 60-byte send "
                   f"(so {fmt((cfloor.get('us_per_send') or 0) * cfloor['sockets'] / 1000)} ms for one broadcast to all), "
                   f"{fmt(cfloor.get('us_per_exchange'))} µs per ping/pong exchange (`--ping`, one at a time at "
                   f"{fmt_rate(cfloor.get('ping_rate') or 0)}/s: timer wake-up, send, wake-up for the pong, read).")
        problems = []
        for server, res in results.items():
            for i, r in enumerate(res.get("capacity") or []):
                why = r.get("error") or "; ".join(r.get("problems") or [])
                if why:
                    problems.append(f"* {SERVERS[server]['label']}, run {i + 1}: {why}")
        if problems:
            md += "\n\nCapacity runs that did not hold:\n" + "\n".join(problems)
    if floor and main_rows:
        md += (f"\n\nThe kernel's share, measured apart (`examples/loopback_floor`: one `send` of a 60-byte "
               f"frame to each of {floor['sockets']:,} loopback sockets, reader process on the other core): "
               f"{floor['us_per_send']:.2f} µs of CPU per send, so {floor['us_per_send'] * SUBS_LARGE / 1000:.0f} ms "
               f"for one broadcast to {SUBS_LARGE:,} before any server does any work of its own "
               f"(mean over the rounds of {len(floor.get('runs') or [1])} run(s) at the start; the low-load ratio divides each "
               f"run by a floor measured just before it).")
    seen = {}
    for res in results.values():
        for runs in res.values():
            for r in flatten(runs):
                if isinstance(r, dict) and r.get("disturbed_by"):
                    seen[json.dumps(r, sort_keys=True)] = r  # a best run is also a trial
    if seen:
        md += (f"\n\n{len(seen)} measurement(s) ran while other work (a build, another load test) used "
               "the machine: their figures are disturbed (see the raw results, `disturbed_by`).")
    return md


def flatten(runs):
    for r in runs or []:
        if isinstance(r, list):
            yield from flatten(r)
        else:
            yield r


def snapshot_binaries():
    """Copies the binaries under test, so a rebuild during the run changes nothing."""
    global LOADGEN
    bin_dir = os.path.join(OUT_DIR, "bin")
    os.makedirs(bin_dir, exist_ok=True)
    copies = {}
    for name, path in (("loadgen", LOADGEN), ("shardcast", SHARDCAST), ("socketioxide-compare", SOCKETIOXIDE)):
        copy = os.path.join(bin_dir, name)
        shutil.copy2(path, copy + ".tmp")
        os.replace(copy + ".tmp", copy)
        copies[path] = copy
    LOADGEN = copies[LOADGEN]
    for spec in SERVERS.values():
        spec["cmd"] = [copies.get(spec["cmd"][0], spec["cmd"][0])] + spec["cmd"][1:]


def main():
    global LOG
    os.makedirs(OUT_DIR, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    LOG = open(os.path.join(OUT_DIR, f"run-{stamp}.log"), "w")
    for path in (LOADGEN, SHARDCAST, SOCKETIOXIDE):
        if not os.access(path, os.X_OK):
            sys.exit(f"missing {path}: run loadtest/compare/run.sh (it builds everything)")
    snapshot_binaries()
    started = time.time()
    log(describe())
    results = {}
    floor = measure_floor() if any(k in SCENARIOS_WANTED for k in MAIN_SCENARIOS) else None
    cfloor = measure_capacity_floor() if "capacity" in SCENARIOS_WANTED else None
    for server in SERVERS_WANTED:
        if server not in SERVERS:
            sys.exit(f"unknown server {server!r}; known: {', '.join(SERVERS)}")
    # The servers take turns, run by run (see `run_server`).
    for i in range(max(RUNS, CAPACITY_RUNS if "capacity" in SCENARIOS_WANTED else 0)):
        for server in SERVERS_WANTED:
            run_server(server, results, i)
            with open(os.path.join(OUT_DIR, f"results-{stamp}.json"), "w") as f:
                json.dump({"settings": describe(), "results": results, "floor": floor, "capacity_floor": cfloor},
                          f, indent=1)
    md = render(results, floor, cfloor)
    elapsed = time.time() - started
    text = (f"{describe()}; took {elapsed / 60:.1f} min; "
            f"{os.cpu_count()} cores, {os.uname().release}\n\n{md}\n")
    with open(os.path.join(OUT_DIR, f"table-{stamp}.md"), "w") as f:
        f.write(text)
    log(f"raw results: {os.path.join(OUT_DIR, f'results-{stamp}.json')}")
    print(text)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        # Re-renders the table of a finished run: compare.py --table out/results-*.json
        with open(sys.argv[2]) as f:
            saved = json.load(f)
            print(render(saved["results"], saved.get("floor"), saved.get("capacity_floor")))
    else:
        main()
