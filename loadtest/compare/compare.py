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


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def run_server(server, results):
    res = results.setdefault(server, {})
    scen = SCENARIOS_WANTED
    log(f"== {SERVERS[server]['label']}")
    if "idle" in scen:
        runs = []
        for i in range(RUNS):
            r = measure(server, ["--scenario", "idle", "--connections", IDLE_CONNECTIONS,
                                 "--rooms-per-conn", ROOMS_PER_CONN, "--concurrency", 64],
                        60 + IDLE_CONNECTIONS / 100)
            log(f"  idle {IDLE_CONNECTIONS} conns x {ROOMS_PER_CONN} rooms, run {i + 1}: "
                f"{short(r, ['rss_per_connection_kib', 'server_rss_kib', 'other_cpu_percent'])}")
            runs.append(r)
        res["idle"] = runs
    if "handshake" in scen:
        runs = []
        for i in range(RUNS):
            r = measure(server, ["--scenario", "handshake", "--duration", HANDSHAKE_DURATION,
                                 "--concurrency", HANDSHAKE_CONCURRENCY], HANDSHAKE_DURATION + 60,
                        window=HANDSHAKE_DURATION)
            log(f"  handshake c={HANDSHAKE_CONCURRENCY}, run {i + 1}: "
                f"{short(r, ['handshakes_per_sec', 'failed', 'server_cpu_percent', 'loadgen_cpu_percent', 'other_cpu_percent'])}")
            runs.append(r)
        res["handshake"] = runs
    if "handshake-fixed" in scen:
        runs = []
        for i in range(RUNS):
            r = measure(server, ["--scenario", "handshake", "--duration", HANDSHAKE_DURATION,
                                 "--concurrency", HANDSHAKE_CONCURRENCY, "--rate", HANDSHAKE_FIXED_RATE],
                        HANDSHAKE_DURATION + 60, window=HANDSHAKE_DURATION)
            log(f"  handshake @ {fmt_rate(HANDSHAKE_FIXED_RATE)}/s, run {i + 1}: "
                f"{short(r, ['handshakes_per_sec', 'failed', 'server_cpu_us_per_handshake', 'other_cpu_percent'])}")
            runs.append(r)
        res["handshake-fixed"] = runs
    if "fixed" in scen:
        runs = []
        for i in range(RUNS):
            r = fanout(server, SUBS_SMALL, FIXED_RATE_SMALL, FANOUT_DURATION)
            log(f"  fixed fanout {SUBS_SMALL} subs @ {fmt_rate(FIXED_RATE_SMALL)}/s, run {i + 1}: {short(r, FANOUT_KEYS)}")
            runs.append(r)
        res["fixed"] = runs
    for key, subs, bound, start in (("fanout-small", SUBS_SMALL, P99_BOUND_SMALL_MS, START_RATE_SMALL),
                                    ("fanout-large", SUBS_LARGE, P99_BOUND_LARGE_MS, START_RATE_LARGE)):
        if key not in scen:
            continue
        bests, hint = [], None
        for i in range(RUNS):
            log(f"  sustained fanout to {subs} (p99 <= {bound:g} ms, nothing lost), run {i + 1}")
            best, trials = search(server, subs, bound, start, hint)
            bests.append(best)
            res.setdefault(key + "-trials", []).append(trials)
            if best is not None and hint is None:
                hint = best["rate_asked"]
            log(f"  -> run {i + 1}: " + (short(best, FANOUT_KEYS) if best else "no rate kept up with"))
            if best is None and hint is None:
                log("  (no rate kept up with in the first run: the other runs are skipped)")
                break
        res[key] = bests
    if "lowload" in scen:
        runs = []
        for i in range(RUNS):
            r = fanout(server, SUBS_LARGE, LOWLOAD_RATE, LOWLOAD_DURATION)
            log(f"  low load {SUBS_LARGE} subs @ {fmt_rate(LOWLOAD_RATE)}/s, run {i + 1}: {short(r, FANOUT_KEYS)}")
            runs.append(r)
        res["lowload"] = runs


# ---- figures and table --------------------------------------------------------------

def ok_runs(runs):
    return [r for r in runs or [] if r and "error" not in r]


def fig_idle(res):
    return median([r.get("rss_per_connection_kib") for r in ok_runs(res.get("idle"))])


def fig_handshake(res):
    return median([r.get("handshakes_per_sec") for r in ok_runs(res.get("handshake"))])


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


def fig_fixed_p99(res):
    return median([r.get("p99_ms") for r in ok_runs(res.get("fixed"))])


def fig_sustained(key):
    def f(res):
        runs = res.get(key)
        if runs is None:
            return None
        # A run where no rate was kept up with counts as 0.
        return median([(r or {}).get("deliveries_per_sec", 0.0) for r in runs])
    return f


def fig_sustained_field(key, field):
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


def fig_lowload(field):
    def f(res):
        return median([r.get(field) for r in ok_runs(res.get("lowload"))])
    return f


def fig_broadcast_ms(res):
    """Server CPU per broadcast at low load (ms of one core per publish)."""
    vals = []
    for r in ok_runs(res.get("lowload")):
        if r.get("server_cpu_percent") is not None and r.get("publishes_per_sec"):
            vals.append(r["server_cpu_percent"] / 100 / r["publishes_per_sec"] * 1000)
    return median(vals)


def fmt(v, digits=3):
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def table(results):
    small, large = SUBS_SMALL, SUBS_LARGE
    # (label, figure, higher is better, target ratio vs socket.io, target ratio vs socketioxide)
    rows = [
        (f"idle memory per connection in {ROOMS_PER_CONN} rooms, KiB ({IDLE_CONNECTIONS:,} conns)",
         fig_idle, False, 0.5, 0.25),
        (f"handshakes/s (connect + CONNECT + authenticate ack, {HANDSHAKE_CONCURRENCY} in flight)",
         fig_handshake, True, None, 1.5),
        ("  server CPU % / load generator CPU %", fig_pair("handshake", "server_cpu_percent", "loadgen_cpu_percent"),
         None, None, None),
        (f"server CPU µs per handshake at {fmt_rate(HANDSHAKE_FIXED_RATE)} handshakes/s",
         fig_handshake_cpu, False, None, 1 / 1.5),
        (f"fan-out to {small:,}: sustained deliveries/s (p99 <= {P99_BOUND_SMALL_MS:g} ms, none lost)",
         fig_sustained("fanout-small"), True, None, 1.5),
        ("  p99 ms at that rate", fig_sustained_field("fanout-small", "p99_ms"), False, None, None),
        ("  server CPU % at that rate", fig_sustained_field("fanout-small", "server_cpu_percent"), False, None, None),
        ("  load generator CPU % at that rate", fig_sustained_field("fanout-small", "loadgen_cpu_percent"),
         None, None, None),
        (f"fan-out to {large:,}: sustained deliveries/s (p99 <= {P99_BOUND_LARGE_MS:g} ms, none lost)",
         fig_sustained("fanout-large"), True, None, 1.5),
        ("  p99 ms at that rate", fig_sustained_field("fanout-large", "p99_ms"), False, None, None),
        ("  server CPU % at that rate", fig_sustained_field("fanout-large", "server_cpu_percent"), False, None, None),
        ("  load generator CPU % at that rate", fig_sustained_field("fanout-large", "loadgen_cpu_percent"),
         None, None, None),
        (f"server CPU µs per delivery, {small:,} subs at {fmt_rate(FIXED_RATE_SMALL)} publishes/s",
         fig_fixed_cpu, False, None, None),
        (f"  p99 ms, {small:,} subs at {fmt_rate(FIXED_RATE_SMALL)} publishes/s", fig_fixed_p99, False, None, None),
        (f"low load: p99 ms, {large:,} subs at {fmt_rate(LOWLOAD_RATE)} publishes/s",
         fig_lowload("p99_ms"), False, None, 0.25),
        ("  p50 ms", fig_lowload("p50_ms"), False, None, None),
        (f"  server CPU ms per broadcast to {large:,}", fig_broadcast_ms, False, None, None),
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
    for label, fig, higher, t_io, t_sx in rows:
        vals = {c: fig(results[c]) for c in results}
        cells = [label] + [fmt(vals[c]) for c in cols]
        targets = []
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


def describe():
    return (
        f"mode {'QUICK' if QUICK else 'full'}, median of {RUNS} run(s); server on core(s) {SERVER_CPUS}, "
        f"load generator on core {LOADGEN_CPUS}; idle {IDLE_CONNECTIONS} connections; handshake "
        f"{HANDSHAKE_DURATION:g} s; fan-out steps {FANOUT_DURATION:g} s each; low load {LOWLOAD_DURATION:g} s; "
        f"shardcast env: SHARDS=1 {SHARDCAST_ENV}"
        + (f"; loadgen --read-interval-ms {READ_INTERVAL_MS}" if READ_INTERVAL_MS else "")
    )


FLOOR = env_str("FLOOR", os.path.join(ROOT, "target", "release", "examples", "loopback_floor"))


def measure_floor():
    """The kernel's CPU per small send to a loopback socket (examples/loopback_floor)."""
    if not os.access(FLOOR, os.X_OK):
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    sockets = min(SUBS_LARGE, (soft - 200) // 2)
    wait_quiet()
    out = subprocess.run([FLOOR, str(sockets), "10"], capture_output=True, text=True, timeout=300).stdout
    m = re.search(r"= ([0-9.]+) µs of CPU per send", out)
    log(f"loopback floor, {sockets} sockets: {out.strip().splitlines()[-1] if out.strip() else 'no output'}")
    return {"sockets": sockets, "us_per_send": float(m.group(1))} if m else None


def render(results, floor=None):
    md = table(results)
    if floor:
        md += (f"\n\nThe kernel's share, measured apart (`examples/loopback_floor`: one `send` of a 60-byte "
               f"frame to each of {floor['sockets']:,} loopback sockets, reader on the other core): "
               f"{floor['us_per_send']:.2f} µs of CPU per send, so {floor['us_per_send'] * SUBS_LARGE / 1000:.0f} ms "
               f"for one broadcast to {SUBS_LARGE:,} before any server does any work of its own.")
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
    floor = measure_floor()
    for server in SERVERS_WANTED:
        if server not in SERVERS:
            sys.exit(f"unknown server {server!r}; known: {', '.join(SERVERS)}")
        run_server(server, results)
        with open(os.path.join(OUT_DIR, f"results-{stamp}.json"), "w") as f:
            json.dump({"settings": describe(), "results": results, "floor": floor}, f, indent=1)
    md = render(results, floor)
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
            print(render(saved["results"], saved.get("floor")))
    else:
        main()
