#!/usr/bin/env python3
"""The cluster scenario (issue 13): three broker nodes on one Redis, on this
machine, against the same three nodes of Node socket.io 4.8 with the classic
`@socket.io/redis-adapter` 8.x. Same clients, same rooms, same publishes.

For each server kind and publish path (HTTP API of a node, or custom-event
relays from a room member), one run:
  1. a fresh redis-server on a free port (no persistence), then the nodes
     (REDIS_URL set) on free ports;
  2. `loadgen --scenario cluster --sync`: N connections spread over the nodes,
     each in a one-node room and an every-node room, a warm-up publish to every
     room, then numbered room broadcasts at a rate; every delivery checked at
     the clients (lost, duplicated, reordered, outside the room);
  3. around the measured phase (loadgen waits on its stdin there): each
     node's /metrics (messages and bytes it received from and published to
     Redis), Redis's INFO stats / commandstats, and the CPU time of every node,
     of redis-server and of the load generator.

Prints a markdown table with both columns and the ratios shardcast / socket.io.
`SMOKE=1` is the CI-sized run: shardcast only by default, small, strict; exits
non-zero on any lost, duplicated or misdelivered delivery, failed publish,
lost connection, wrong cluster-wide count or error in a node's log.

Started by run.sh (SCENARIOS=cluster, which builds first) or by
loadtest/cluster-smoke.sh; standard library only. Knobs: README.md beside this file.
"""

import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from compare import (compilers_running, cpu_seconds, env_num, env_str, fmt_rate,  # noqa: E402
                     machine_user_seconds, user_seconds)


def fmt(v, digits=3):
    """3 significant digits, whole numbers from 100 up (1,234 not 1.23e+03)."""
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"

SMOKE = env_str("SMOKE", "0") not in ("0", "", "false", "no")
QUICK = SMOKE or env_str("QUICK", "0") not in ("0", "", "false", "no")

NODES = env_num("CLUSTER_NODES", 3, int)
CONNECTIONS = env_num("CLUSTER_CONNECTIONS", 600 if SMOKE else 3000, int)  # in all, spread over the nodes
LOCAL_ROOM_SIZE = env_num("CLUSTER_LOCAL_ROOM_SIZE", 10, int)
SPREAD_ROOM_SIZE = env_num("CLUSTER_SPREAD_ROOM_SIZE", 30, int)
LOCAL_SHARE = env_num("CLUSTER_LOCAL_SHARE", 0.5)
# One run per path with every publish to a one-node room (share 1) and one
# with every publish to an every-node room (share 0): Redis traffic per room kind.
MIX_SHARES = [float(x) for x in env_str("CLUSTER_MIX_SHARES", "" if SMOKE else "1,0").split(",") if x]
RATE = env_num("CLUSTER_RATE", 200 if SMOKE else 500)  # publishes/s of the fixed-rate runs
DURATION = env_num("CLUSTER_DURATION", 3 if SMOKE else (5 if QUICK else 10))
LANES = env_num("CLUSTER_LANES", 64, int)
PUBLISH_NODE = env_str("CLUSTER_PUBLISH_NODE", "rotate")
PAYLOAD_BYTES = env_num("CLUSTER_PAYLOAD_BYTES", 32, int)
VIAS = env_str("CLUSTER_VIA", "api,relay").split(",")
RUNS = env_num("CLUSTER_RUNS", 1 if QUICK else 3, int)
# The sustained search (full mode): the highest rate with nothing lost, the
# publishers on pace and p99 <= the bound; x FACTOR from START until a step
# fails, then REFINE bisection steps.
SEARCH = env_str("CLUSTER_SEARCH", "0" if QUICK else "1") not in ("0", "", "false", "no")
SEARCH_VIAS = env_str("CLUSTER_SEARCH_VIA", "api,relay").split(",")
SEARCH_START = env_num("CLUSTER_SEARCH_START", 500)
SEARCH_FACTOR = env_num("CLUSTER_SEARCH_FACTOR", 2)
SEARCH_STEPS = env_num("CLUSTER_SEARCH_STEPS", 8, int)
SEARCH_REFINE = env_num("CLUSTER_SEARCH_REFINE", 1, int)
P99_BOUND_MS = env_num("CLUSTER_P99_BOUND_MS", 250)
SERVERS_WANTED = env_str("CLUSTER_SERVERS", "shardcast" if SMOKE else "shardcast,socket.io").split(",")
# The system under test (nodes and redis-server) on SUT_CPUS, the load
# generator on LOADGEN_CPUS; empty: not pinned.
SUT_CPUS = env_str("SUT_CPUS", "" if SMOKE else "0")
LOADGEN_CPUS = env_str("LOADGEN_CPUS", "" if SMOKE else "1")
SHARDCAST_ENV = env_str("SHARDCAST_ENV", "SHARDS=1 PRESENCE_EVENTS=off ROOM_EVENTS=off")
OTHER_CPU_LIMIT = env_num("OTHER_CPU_LIMIT", 10)
QUIET_TIMEOUT = env_num("QUIET_TIMEOUT", 0 if SMOKE else 60)
OUT_DIR = env_str("OUT_DIR", os.path.join(HERE, "out"))
TARGET = env_str("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
if not os.path.isabs(TARGET):
    TARGET = os.path.join(ROOT, TARGET)
LOADGEN = env_str("LOADGEN", os.path.join(TARGET, "release", "loadgen"))
SHARDCAST = env_str("SHARDCAST", os.path.join(TARGET, "release", "shardcast"))
REDIS_SERVER = env_str("REDIS_SERVER", "redis-server")
NODE = env_str("NODE", "node")


def kv(spec):
    return dict(item.split("=", 1) for item in spec.split() if "=" in item)


# What each node's /metrics calls the messages it got from Redis and sent to it.
SERVERS = {
    "shardcast": {
        "label": "shardcast",
        "cmd": lambda i: [SHARDCAST],
        "env": lambda i: {"HOST": "127.0.0.1", "RUST_LOG": "warn", "NODE_ID": f"load{i}",
                          **kv(SHARDCAST_ENV)},
        "metrics": {"received": "shardcast_cluster_messages_received_total",
                    "received_bytes": "shardcast_cluster_bytes_received_total",
                    "published": "shardcast_cluster_messages_published_total",
                    "published_bytes": "shardcast_cluster_bytes_published_total",
                    "publish_failures": "shardcast_cluster_publish_failures_total",
                    "subscriptions": "shardcast_cluster_subscriptions"},
        "check_delivered": True,
    },
    "socket.io": {
        "label": "socket.io 4.8 + redis-adapter 8.3",
        "cmd": lambda i: [NODE, os.path.join(HERE, "node", "server.mjs")],
        "env": lambda i: {"HOST": "127.0.0.1", "NODE_ENV": "production"},
        "metrics": {"received": "socketio_redis_messages_received_total",
                    "received_bytes": "socketio_redis_bytes_received_total",
                    "published": "socketio_redis_messages_published_total",
                    "published_bytes": "socketio_redis_bytes_published_total"},
        "check_delivered": False,
    },
}

LOG = None


def log(msg):
    line = time.strftime("%H:%M:%S ") + msg
    print(line, file=sys.stderr, flush=True)
    if LOG:
        LOG.write(line + "\n")
        LOG.flush()


# ---- processes -----------------------------------------------------------------------

_used_ports = set()


def free_port():
    """A port that nobody listens on, below the ephemeral range (so that no
    client socket of this run holds it)."""
    for _ in range(1000):
        port = random.randint(20000, 29999)
        if port in _used_ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _used_ports.add(port)
        return port
    raise RuntimeError("no free port")


def pinned(cpus, cmd):
    return (["taskset", "-c", cpus] if cpus else []) + cmd


def wait_listening(port, proc, timeout=20.0):
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


def stop(proc, timeout=10):
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def redis_command(port, *args, timeout=5.0):
    """One command over RESP; returns the decoded reply (str, int, list)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        req = f"*{len(args)}\r\n" + "".join(f"${len(str(a).encode())}\r\n{a}\r\n" for a in args)
        s.sendall(req.encode())
        f = s.makefile("rb")

        def read():
            line = f.readline().rstrip(b"\r\n")
            kind, rest = line[:1], line[1:]
            if kind == b"+":
                return rest.decode()
            if kind == b"-":
                raise RuntimeError(rest.decode())
            if kind == b":":
                return int(rest)
            if kind == b"$":
                n = int(rest)
                if n < 0:
                    return None
                data = f.read(n + 2)[:n]
                return data.decode(errors="replace")
            if kind == b"*":
                return [read() for _ in range(int(rest))]
            raise RuntimeError(f"bad RESP line {line!r}")

        return read()


def redis_info(port):
    """INFO stats + commandstats: {field: number}, `cmdstat_X` -> calls."""
    out = {}
    for section in ("stats", "commandstats", "clients"):
        for line in redis_command(port, "INFO", section).splitlines():
            if ":" not in line or line.startswith("#"):
                continue
            key, value = line.split(":", 1)
            if key.startswith("cmdstat_"):
                m = re.search(r"calls=(\d+)", value)
                out[key] = int(m.group(1)) if m else 0
            else:
                try:
                    out[key] = float(value)
                except ValueError:
                    pass
    return out


def http_get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def metric_sums(text):
    """Prometheus text -> {name: sum over its series}."""
    sums = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m:
            try:
                sums[m.group(1)] = sums.get(m.group(1), 0.0) + float(m.group(3))
            except ValueError:
                pass
    return sums


class Cluster:
    """redis-server and the nodes of one server kind; stopped on exit."""

    def __init__(self, kind, tag):
        self.kind, self.spec, self.tag = kind, SERVERS[kind], tag
        self.redis = None
        self.gen = None
        self.nodes = []
        self.logs = []
        self.ports = []

    def start(self):
        self.redis_port = free_port()
        self.redis_log = os.path.join(OUT_DIR, f"redis-{self.tag}.log")
        self.redis = subprocess.Popen(
            pinned(SUT_CPUS, [REDIS_SERVER, "--port", str(self.redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--daemonize", "no",
                              "--loglevel", "warning", "--logfile", ""]),
            stdin=subprocess.DEVNULL, stdout=open(self.redis_log, "wb"), stderr=subprocess.STDOUT)
        if not wait_listening(self.redis_port, self.redis):
            raise RuntimeError(f"redis-server did not start (see {self.redis_log})")
        deadline = time.time() + 10
        while True:
            try:
                if redis_command(self.redis_port, "PING") == "PONG":
                    break
            except (OSError, RuntimeError):
                pass
            if time.time() > deadline:
                raise RuntimeError("redis-server does not answer PING")
            time.sleep(0.05)
        redis_url = f"redis://127.0.0.1:{self.redis_port}"
        for i in range(NODES):
            port = free_port()
            env = dict(os.environ)
            env.update(self.spec["env"](i))
            env.update({"PORT": str(port), "REDIS_URL": redis_url})
            path = os.path.join(OUT_DIR, f"node{i}-{self.tag}.log")
            proc = subprocess.Popen(pinned(SUT_CPUS, self.spec["cmd"](i)), env=env, stdin=subprocess.DEVNULL,
                                    stdout=open(path, "wb"), stderr=subprocess.STDOUT)
            self.nodes.append(proc)
            self.logs.append(path)
            self.ports.append(port)
        for i, (proc, port) in enumerate(zip(self.nodes, self.ports)):
            if not wait_listening(port, proc):
                raise RuntimeError(f"node {i} did not listen on {port}: {tail(self.logs[i])}")
        if self.kind == "shardcast":
            self.wait_cluster_formed()

    def wait_cluster_formed(self, timeout=20.0):
        """Until every node's /health says it is in a cluster of NODES nodes."""
        deadline = time.time() + timeout
        seen = None
        while time.time() < deadline:
            seen = []
            for port in self.ports:
                try:
                    seen.append(json.loads(http_get(f"http://127.0.0.1:{port}/health")))
                except (OSError, ValueError) as e:
                    seen.append({"error": str(e)})
            if all((h.get("cluster") or {}).get("nodes") == NODES
                   and (h.get("cluster") or {}).get("redis") == "up" for h in seen):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the nodes did not see a cluster of {NODES} within {timeout:g} s: /health {seen}")

    def urls(self):
        return ",".join(f"http://127.0.0.1:{p}" for p in self.ports)

    def pids(self):
        pids = {f"node{i}": p.pid for i, p in enumerate(self.nodes)}
        pids["redis"] = self.redis.pid
        return pids

    def snapshot(self, gen_pid):
        snap = {"time": time.time(), "cpu": {}, "user": {}, "metrics": [], "redis": {}}
        for name, pid in {**self.pids(), "loadgen": gen_pid}.items():
            snap["cpu"][name] = cpu_seconds(pid)
            snap["user"][name] = user_seconds(pid)
        snap["machine_user"] = machine_user_seconds()
        for port in self.ports:
            try:
                sums = metric_sums(http_get(f"http://127.0.0.1:{port}/metrics"))
            except OSError as e:
                sums = {"error": str(e)}
            snap["metrics"].append({k: sums.get(name) for k, name in self.spec["metrics"].items()})
        try:
            snap["redis"] = redis_info(self.redis_port)
        except (OSError, RuntimeError) as e:
            snap["redis"] = {"error": str(e)}
        snap["busy"] = sorted(compilers_running())
        return snap

    def alive(self):
        dead = [f"node{i} (exit {p.returncode})" for i, p in enumerate(self.nodes) if p.poll() is not None]
        if self.redis.poll() is not None:
            dead.append(f"redis-server (exit {self.redis.returncode})")
        return dead

    def log_errors(self):
        bad = []
        for path in self.logs:
            with open(path, errors="replace") as f:
                for line in f:
                    if re.search(r" (ERROR|panicked)|^thread .* panicked|Error:", line):
                        bad.append(f"{os.path.basename(path)}: {line.strip()[:300]}")
        return bad

    def stop(self):
        if self.gen and self.gen.poll() is None:
            self.gen.kill()
            self.gen.wait()
        for proc in self.nodes:
            stop(proc)
        stop(self.redis)


def tail(path, n=5):
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-n:])
    except OSError:
        return ""


def wait_quiet():
    """Waits (up to QUIET_TIMEOUT s) until other processes use under
    OTHER_CPU_LIMIT % of a core."""
    deadline = time.time() + QUIET_TIMEOUT
    told = False
    while True:
        u0, t0 = machine_user_seconds(), time.time()
        time.sleep(1.0)
        other = (machine_user_seconds() - u0) / (time.time() - t0) * 100
        if other <= OTHER_CPU_LIMIT or time.time() > deadline:
            return
        if not told:
            log(f"    other processes use {other:.0f}% of a core: waiting (up to {QUIET_TIMEOUT:g} s)")
            told = True


# ---- one run -------------------------------------------------------------------------

def loadgen_args(kind, via, rate, duration, share):
    args = ["--scenario", "cluster", "--connections", CONNECTIONS, "--local-room-size", LOCAL_ROOM_SIZE,
            "--spread-room-size", SPREAD_ROOM_SIZE, "--local-share", share, "--via", via,
            "--rate", fmt_rate(rate) if isinstance(rate, (int, float)) else rate,
            "--duration", duration, "--lanes", LANES, "--publish-node", PUBLISH_NODE,
            "--payload-bytes", PAYLOAD_BYTES, "--sync"]
    if via == "api" and SERVERS[kind]["check_delivered"]:
        args.append("--check-delivered")
    return [str(a) for a in args]


_run_counter = 0


def run_once(kind, via, rate, duration, share=None):
    """A fresh cluster, one loadgen run, the figures. {"error": ...} on failure."""
    global _run_counter
    _run_counter += 1
    share = LOCAL_SHARE if share is None else share
    tag = f"{kind}-{via}-{_run_counter}"
    if QUIET_TIMEOUT > 0:
        wait_quiet()
    cluster = Cluster(kind, tag)
    try:
        result = run_in(cluster, kind, via, rate, duration, share, tag)
    finally:
        cluster.stop()
    result["log_errors"] = cluster.log_errors()
    if result["log_errors"] and "error" not in result:
        result["ok"] = False
        result.setdefault("problems", []).append(f"{len(result['log_errors'])} error lines in the node logs")
    return result


def run_in(cluster, kind, via, rate, duration, share, tag):
    try:
        cluster.start()
    except RuntimeError as e:
        return {"error": str(e)}
    cmd = pinned(LOADGEN_CPUS, [LOADGEN, "--urls", cluster.urls()] + loadgen_args(kind, via, rate, duration, share))
    out_path = os.path.join(OUT_DIR, f"loadgen-{tag}.json")
    err_path = os.path.join(OUT_DIR, f"loadgen-{tag}.stderr")
    snaps = {}
    with open(out_path, "w") as out, open(err_path, "w") as err:
        gen = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.PIPE, text=True)
        cluster.gen = gen

        def follow():
            for line in gen.stderr:
                err.write(line)
                err.flush()
                if line.strip() in ("@measure", "@drained"):
                    snaps[line.strip()] = cluster.snapshot(gen.pid)
                    try:
                        gen.stdin.write("\n")
                        gen.stdin.flush()
                    except OSError:
                        pass

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        timeout = 120 + CONNECTIONS / 100 + duration * 2
        try:
            gen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            gen.kill()
            gen.wait()
            return {"error": f"loadgen timed out after {timeout:.0f} s (see {err_path})"}
        reader.join(timeout=5)
    lines = [line for line in open(out_path).read().strip().splitlines() if line.startswith("{")]
    if gen.returncode != 0 or not lines:
        return {"error": f"loadgen exit {gen.returncode}: {tail(err_path, 3)}"}
    result = json.loads(lines[-1])
    result["rate_asked"] = rate
    result["server"] = kind
    dead = cluster.alive()
    if dead:
        result.setdefault("problems", []).append("exited during the run: " + ", ".join(dead))
        result["ok"] = False
    if "@measure" in snaps and "@drained" in snaps:
        result["cluster"] = figures(snaps["@measure"], snaps["@drained"], result, cluster)
    else:
        result.setdefault("problems", []).append("no snapshot around the measured phase")
        result["ok"] = False
    return result


def delta(a, b):
    return None if a is None or b is None else b - a


def figures(a, b, r, cluster):
    """What happened between the two snapshots (the measured phase and its drain)."""
    wall = b["time"] - a["time"]
    f = {"window_seconds": wall}
    cpu = {name: delta(a["cpu"].get(name), b["cpu"].get(name)) for name in a["cpu"]}
    f["cpu_percent"] = {name: (None if v is None else v / wall * 100) for name, v in cpu.items()}
    node_cpu = [cpu.get(f"node{i}") for i in range(NODES)]
    f["nodes_cpu_percent"] = (sum(node_cpu) / wall * 100) if None not in node_cpu else None
    deliveries = r.get("deliveries") or 0
    cross = r.get("cross_node_deliveries") or 0
    publishes = r.get("publishes") or 0
    if None not in node_cpu and deliveries:
        f["nodes_cpu_us_per_delivery"] = sum(node_cpu) * 1e6 / deliveries
    if cpu.get("redis") is not None and publishes:
        f["redis_cpu_us_per_publish"] = cpu["redis"] * 1e6 / publishes
    ours_user = sum(delta(a["user"].get(n), b["user"].get(n)) or 0 for n in a["user"])
    f["other_cpu_percent"] = max(0.0, (b["machine_user"] - a["machine_user"] - ours_user) / wall * 100)
    disturbed = sorted(set(a["busy"]) | set(b["busy"]))
    if f["other_cpu_percent"] > OTHER_CPU_LIMIT:
        disturbed.append(f"other processes at {f['other_cpu_percent']:.0f}% of a core")
    if disturbed:
        f["disturbed_by"] = disturbed
    per_node = []
    for i in range(NODES):
        ma, mb = a["metrics"][i], b["metrics"][i]
        node = {k: delta(ma.get(k), mb.get(k)) for k in ("received", "received_bytes", "published",
                                                          "published_bytes", "publish_failures")}
        node["subscriptions"] = mb.get("subscriptions")
        if publishes and node["received"] is not None:
            node["received_per_publish"] = node["received"] / publishes
        per_node.append(node)
    f["per_node"] = per_node
    received = [n["received"] for n in per_node]
    if None not in received:
        total = sum(received)
        f["redis_messages_received"] = total
        if publishes:
            f["redis_messages_received_per_publish"] = total / publishes
            f["redis_messages_received_per_node_per_publish"] = total / publishes / NODES
        if deliveries:
            f["redis_messages_per_delivery"] = total / deliveries
        if cross:
            f["redis_messages_per_cross_node_delivery"] = total / cross
        rb = [n["received_bytes"] for n in per_node]
        if None not in rb and deliveries:
            f["redis_bytes_received_per_delivery"] = sum(rb) / deliveries
    published = [n["published"] for n in per_node]
    if None not in published and publishes:
        f["redis_messages_published_per_publish"] = sum(published) / publishes
    ra, rb_ = a["redis"], b["redis"]
    if "error" not in ra and "error" not in rb_:
        redis = {k: delta(ra.get(k), rb_.get(k)) for k in set(ra) | set(rb_)
                 if k.startswith("cmdstat_") or k in ("total_commands_processed", "total_net_input_bytes",
                                                      "total_net_output_bytes")}
        # The snapshot's own INFO commands are in these counts (3 per snapshot).
        f["redis_commands"] = {k[8:]: v for k, v in sorted(redis.items()) if k.startswith("cmdstat_") and v}
        f["redis_total_commands"] = redis.get("total_commands_processed")
        f["redis_net_output_bytes"] = redis.get("total_net_output_bytes")
        f["redis_net_input_bytes"] = redis.get("total_net_input_bytes")
        f["redis_pubsub_channels"] = rb_.get("pubsub_channels")
        f["redis_pubsub_patterns"] = rb_.get("pubsub_patterns")
        f["redis_clients"] = rb_.get("connected_clients")
        if publishes:
            f["redis_publish_calls_per_publish"] = (redis.get("cmdstat_publish") or 0) / publishes
            if redis.get("total_commands_processed") is not None:
                f["redis_commands_per_publish"] = redis["total_commands_processed"] / publishes
        if deliveries and redis.get("total_net_output_bytes") is not None:
            f["redis_output_bytes_per_delivery"] = redis["total_net_output_bytes"] / deliveries
    return f


# ---- what is printed -----------------------------------------------------------------

def short(r):
    if "error" in r:
        return "ERROR " + r["error"]
    c = r.get("cluster") or {}
    parts = [f"pub/s={fmt(r.get('publishes_per_sec'))}", f"deliv/s={fmt(r.get('deliveries_per_sec'))}",
             f"cross/s={fmt(r.get('cross_node_deliveries_per_sec'))}", f"p99={fmt(r.get('p99_ms'))}ms",
             f"lost={r.get('lost')}", f"dup={r.get('duplicated')}", f"reord={r.get('reordered')}",
             f"mis={r.get('misdelivered')}",
             f"redis msgs/node/pub={fmt(c.get('redis_messages_received_per_node_per_publish'))}",
             f"msgs/deliv={fmt(c.get('redis_messages_per_delivery'))}",
             f"nodes cpu={fmt(c.get('nodes_cpu_percent'))}%",
             f"redis cpu={fmt((c.get('cpu_percent') or {}).get('redis'))}%",
             f"loadgen cpu={fmt((c.get('cpu_percent') or {}).get('loadgen'))}%"]
    if c.get("disturbed_by"):
        parts.append(f"DISTURBED {c['disturbed_by']}")
    if r.get("problems"):
        parts.append("PROBLEMS " + "; ".join(r["problems"]))
    return " ".join(parts)


def median_of(runs, get):
    values = []
    for r in runs:
        try:
            v = get(r)
        except (KeyError, TypeError, IndexError):
            v = None
        if isinstance(v, (int, float)):
            values.append(v)
    return statistics.median(values) if values else None


def c(key):
    return lambda r: r["cluster"][key]


def cpu_of(name):
    return lambda r: r["cluster"]["cpu_percent"][name]


def node_received_per_publish(r):
    return "/".join(fmt(n.get("received_per_publish"), 2) for n in r["cluster"]["per_node"])


FIXED_ROWS = [
    ("publishes/s (asked {rate})", lambda r: r["publishes_per_sec"]),
    ("deliveries/s at the clients", lambda r: r["deliveries_per_sec"]),
    ("  of which cross-node (received on another node than the publish entered by)",
     lambda r: r["cross_node_deliveries_per_sec"]),
    ("deliveries per publish", lambda r: r["deliveries_per_publish"]),
    ("p50 / p99 ms (publish sent → client read)", None),
    ("p50 / p99 ms, publish sent → its HTTP answer / relay ack", None),
    ("lost / duplicated / outside the room (whole run)", None),
    ("reordered within a room", lambda r: r["reordered"]),
    ("Redis messages received per node per publish", c("redis_messages_received_per_node_per_publish")),
    ("  per node (node0/node1/node2)", None),
    ("Redis messages received (all nodes) per delivered event", c("redis_messages_per_delivery")),
    ("  per cross-node delivery", c("redis_messages_per_cross_node_delivery")),
    ("bytes received from Redis per delivered event", c("redis_bytes_received_per_delivery")),
    ("Redis PUBLISH calls per publish", c("redis_publish_calls_per_publish")),
    ("Redis commands per publish (all kinds)", c("redis_commands_per_publish")),
    ("Redis output bytes per delivered event (INFO total_net_output_bytes)", c("redis_output_bytes_per_delivery")),
    ("Redis subscriptions: channels / patterns", None),
    ("nodes' CPU µs per delivery (3 nodes summed)", c("nodes_cpu_us_per_delivery")),
    ("nodes' CPU % (summed; node0/node1/node2)", None),
    ("redis-server CPU %", cpu_of("redis")),
    ("redis-server CPU µs per publish", c("redis_cpu_us_per_publish")),
    ("load generator CPU %", cpu_of("loadgen")),
]


def cell(runs, label, get):
    """The median over `runs` of one row, as text (the special rows by label)."""
    ok = [r for r in runs if r and "error" not in r and "cluster" in r]
    if not ok:
        return (runs[0].get("error", "—") if runs else "—")[:80], None
    if label.startswith("p50 / p99 ms, publish sent"):
        return (f"{fmt(median_of(ok, lambda r: r['answer_ms_p50']))} / "
                f"{fmt(median_of(ok, lambda r: r['answer_ms_p99']))}"), None
    if label.startswith("p50 / p99"):
        return f"{fmt(median_of(ok, lambda r: r['p50_ms']))} / {fmt(median_of(ok, lambda r: r['p99_ms']))}", None
    if label.startswith("lost / duplicated"):
        worst = lambda key: max(r.get(key) or 0 for r in ok)  # noqa: E731
        return f"{worst('lost')} / {worst('duplicated')} / {worst('misdelivered')}", None
    if label.startswith("  per node"):
        return node_received_per_publish(ok[len(ok) // 2]), None
    if label.startswith("Redis subscriptions"):
        r = ok[len(ok) // 2]["cluster"]
        return f"{fmt(r.get('redis_pubsub_channels'))} / {fmt(r.get('redis_pubsub_patterns'))}", None
    if label.startswith("nodes' CPU %"):
        total = median_of(ok, c("nodes_cpu_percent"))
        mid = ok[len(ok) // 2]["cluster"]["cpu_percent"]
        return f"{fmt(total)} ({'/'.join(fmt(mid.get(f'node{i}'), 2) for i in range(NODES))})", None
    v = median_of(ok, get)
    return fmt(v), v


def fixed_table(results):
    kinds = [k for k in SERVERS_WANTED if k in results]
    lines = []
    for via in VIAS:
        runs_by = {k: results[k].get(f"fixed-{via}") or [] for k in kinds}
        if not any(runs_by.values()):
            continue
        how = ("HTTP `POST /api/rooms/{room}/broadcast` to one node (" + PUBLISH_NODE + ")" if via == "api"
               else "`custom-event` relays from a room member (sender excluded)")
        head = "| " + f"{fmt_rate(RATE)} publishes/s via {how}" + " | " + " | ".join(
            SERVERS[k]["label"] for k in kinds) + (" | shardcast / socket.io |" if len(kinds) == 2 else " |")
        lines += ["", head, "|---" * (len(kinds) + 1 + (len(kinds) == 2)) + "|"]
        for label, get in FIXED_ROWS:
            label = label.replace("{rate}", fmt_rate(RATE))
            cells, values = [], []
            for k in kinds:
                text, value = cell(runs_by[k], label, get)
                cells.append(text)
                values.append(value)
            ratio = ""
            if len(kinds) == 2:
                ratio = (f"{values[0] / values[1]:.2f}×" if None not in values and values[1] else "")
            lines.append(f"| {label} | " + " | ".join(cells) + (f" | {ratio} |" if len(kinds) == 2 else " |"))
    return "\n".join(lines)


def search_table(results):
    kinds = [k for k in SERVERS_WANTED if k in results]
    rows = []
    for via in SEARCH_VIAS:
        bests = {k: (results[k].get(f"search-{via}") or {}).get("best") for k in kinds}
        if not any(bests.values()):
            continue
        vals = {k: (b or {}).get("deliveries_per_sec") for k, b in bests.items()}
        cross = {k: (b or {}).get("cross_node_deliveries_per_sec") for k, b in bests.items()}

        def row(label, d, ratio=True):
            cells = [fmt(d[k]) for k in kinds]
            r = ""
            if len(kinds) == 2 and ratio:
                a, b = d[kinds[0]], d[kinds[1]]
                r = f"{a / b:.2f}×" if a and b else ""
            return f"| {label} | " + " | ".join(cells) + (f" | {r} |" if len(kinds) == 2 else " |")

        rows.append(row(f"sustained deliveries/s via {via} (nothing lost, p99 ≤ {P99_BOUND_MS:g} ms, "
                        "publishers on pace)", vals))
        rows.append(row("  of which cross-node", cross))
        rows.append(row("  at publishes/s", {k: (b or {}).get("publishes_per_sec") for k, b in bests.items()}))
        rows.append(row("  p99 ms", {k: (b or {}).get("p99_ms") for k, b in bests.items()}))
        cpus = []
        for k in kinds:
            cb = ((bests[k] or {}).get("cluster") or {})
            cpus.append(f"{fmt(cb.get('nodes_cpu_percent'))} / {fmt((cb.get('cpu_percent') or {}).get('redis'))}")
        rows.append("| nodes' CPU % (summed) / redis-server CPU % | " + " | ".join(cpus)
                    + (" |  |" if len(kinds) == 2 else " |"))
        rows.append(row("  load generator CPU %",
                        {k: (((b or {}).get("cluster") or {}).get("cpu_percent") or {}).get("loadgen")
                         for k, b in bests.items()}, ratio=False))
    if not rows:
        return ""
    head = "|  | " + " | ".join(SERVERS[k]["label"] for k in kinds) + (
        " | shardcast / socket.io |" if len(kinds) == 2 else " |")
    return "\n".join(["", head, "|---" * (len(kinds) + 1 + (len(kinds) == 2)) + "|"] + rows)


def mix_table(results):
    """Redis messages received per node per publish, by room kind."""
    kinds = [k for k in SERVERS_WANTED if k in results]
    rows = []
    for via in VIAS:
        for share in MIX_SHARES:
            key = f"mix-{via}-{share:g}"
            runs = {k: [r for r in results[k].get(key) or [] if "cluster" in r] for k in kinds}
            if not any(runs.values()):
                continue
            what = {1.0: "one-node rooms only", 0.0: "every-node rooms only"}.get(share, f"{share * 100:g} % one-node")
            per_pub = {k: median_of(runs[k], c("redis_messages_received_per_node_per_publish")) for k in kinds}
            per_del = {k: median_of(runs[k], c("redis_messages_per_delivery")) for k in kinds}
            cells = [f"{fmt(per_pub[k])} ({fmt(per_del[k])})" for k in kinds]
            ratio = ""
            if len(kinds) == 2 and per_pub[kinds[0]] is not None and per_pub[kinds[1]]:
                ratio = f"{per_pub[kinds[0]] / per_pub[kinds[1]]:.2f}×"
            rows.append(f"| {via}, {what} | " + " | ".join(cells) + (f" | {ratio} |" if len(kinds) == 2 else " |"))
    if not rows:
        return ""
    head = ("| Redis messages received per node per publish (per delivered event), "
            f"{fmt_rate(RATE)} publishes/s | " + " | ".join(SERVERS[k]["label"] for k in kinds)
            + (" | shardcast / socket.io |" if len(kinds) == 2 else " |"))
    return "\n".join(["", head, "|---" * (len(kinds) + 1 + (len(kinds) == 2)) + "|"] + rows)


def describe():
    per_node = CONNECTIONS // NODES
    locals_ = NODES * -(-per_node // LOCAL_ROOM_SIZE)
    share = max(1, SPREAD_ROOM_SIZE // NODES)
    spreads = -(-per_node // share)
    return (f"{'SMOKE' if SMOKE else 'QUICK' if QUICK else 'full'} mode; {NODES} nodes on one redis-server "
            f"(no persistence), nodes and redis on core(s) {SUT_CPUS or 'any'}, load generator on "
            f"{LOADGEN_CPUS or 'any'}; {per_node * NODES:,} connections ({per_node:,} per node), each in one "
            f"one-node room of {LOCAL_ROOM_SIZE} ({locals_} rooms) and one every-node room of "
            f"{share * NODES} ({share} per node; {spreads} rooms); {LOCAL_SHARE * 100:g} % of the publishes to "
            f"one-node rooms; {LANES} publisher lanes (a room's publishes one at a time, each after the "
            f"previous answer/ack); {DURATION:g} s measured after a warm-up publish to every room; "
            f"{PAYLOAD_BYTES}-byte filler; median of {RUNS} run(s); shardcast env: {SHARDCAST_ENV}")


def render(results):
    md = fixed_table(results)
    mt = mix_table(results)
    if mt:
        md += "\n" + mt
    st = search_table(results)
    if st:
        md += "\n" + st
    notes, disturbed = [], []
    for kind, res in results.items():
        for key, runs in res.items():
            for r in (runs if isinstance(runs, list) else (runs or {}).get("trials") or []):
                why = r.get("error") or "; ".join(r.get("problems") or [])
                if why and not key.startswith("search"):
                    notes.append(f"* {SERVERS[kind]['label']}, {key}: {why}")
                if (r.get("cluster") or {}).get("disturbed_by"):
                    disturbed.append(f"{SERVERS[kind]['label']} {key} ({', '.join(r['cluster']['disturbed_by'])})")
    if notes:
        md += "\n\nRuns with problems:\n" + "\n".join(sorted(set(notes)))
    if disturbed:
        md += (f"\n\n{len(disturbed)} run(s) ran while other work (a build, another load test) used the machine; "
               "their throughput and latency figures are disturbed (Redis message counts are not): "
               + "; ".join(disturbed[:6]) + ("; …" if len(disturbed) > 6 else "") + ".")
    return md


# ---- main ----------------------------------------------------------------------------

def sustained(r):
    return ("error" not in r and r.get("ok") and (r.get("p99_ms") or 1e9) <= P99_BOUND_MS
            and (r.get("publishes_per_sec") or 0) >= 0.9 * r["rate_asked"])


class Search:
    """The sustained search of one server on one path: x SEARCH_FACTOR from
    SEARCH_START until a step fails, then SEARCH_REFINE bisection steps. The
    servers' searches advance in turns (`step`), so that both see the same
    machine at about the same time."""

    def __init__(self, kind, via):
        self.kind, self.via = kind, via
        self.rate, self.steps, self.refine = SEARCH_START, SEARCH_STEPS, SEARCH_REFINE
        self.best, self.fail, self.trials = None, None, []

    def next_rate(self):
        if self.fail is None:
            return self.rate if self.steps > 0 else None
        if self.best is None or self.refine <= 0:
            return None
        return (self.best["rate_asked"] + self.fail) / 2

    def step(self):
        rate = self.next_rate()
        if rate is None:
            return
        r = run_once(self.kind, self.via, rate, DURATION)
        self.trials.append(r)
        ok = sustained(r)
        log(f"  {self.kind} search via {self.via} @ {fmt_rate(rate)}/s: {'ok  ' if ok else 'FAIL'} {short(r)}")
        if self.fail is None:
            self.steps -= 1
            if ok:
                self.best = r
                self.rate *= SEARCH_FACTOR
            else:
                self.fail = rate
        else:
            self.refine -= 1
            if ok:
                self.best = r
            else:
                self.fail = rate


def smoke_verdict(results):
    bad = []
    for kind, res in results.items():
        for key, runs in res.items():
            for r in runs if isinstance(runs, list) else []:
                label = f"{SERVERS[kind]['label']} {key}"
                if "error" in r:
                    bad.append(f"{label}: {r['error']}")
                    continue
                if not r.get("ok"):
                    bad.append(f"{label}: " + "; ".join(r.get("problems") or ["not ok"]))
                if r.get("connected") != r.get("connections"):
                    bad.append(f"{label}: {r.get('connected')} of {r.get('connections')} connected")
                if not r.get("deliveries"):
                    bad.append(f"{label}: nothing delivered")
                if r.get("reordered"):
                    log(f"  note: {label}: {r['reordered']} deliveries out of order within a room")
                for e in r.get("log_errors") or []:
                    bad.append(f"{label}: node log: {e}")
    return bad


def main():
    global LOG
    os.makedirs(OUT_DIR, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    LOG = open(os.path.join(OUT_DIR, f"cluster-{stamp}.log"), "w")
    for kind in SERVERS_WANTED:
        if kind not in SERVERS:
            sys.exit(f"unknown server {kind!r}; known: {', '.join(SERVERS)}")
    needed = [LOADGEN] + ([SHARDCAST] if "shardcast" in SERVERS_WANTED else [])
    for path in needed:
        if not os.access(path, os.X_OK):
            sys.exit(f"missing {path}: cargo build --release --bin shardcast --bin loadgen")
    log(describe())
    started = time.time()
    results = {kind: {} for kind in SERVERS_WANTED}

    def save():
        with open(os.path.join(OUT_DIR, f"cluster-results-{stamp}.json"), "w") as f:
            json.dump({"settings": describe(), "results": results}, f, indent=1)

    # Each measurement runs for every server back to back, so that a
    # disturbance of the machine falls on both alike.
    for via in VIAS:
        for i in range(RUNS):
            for kind in SERVERS_WANTED:
                r = run_once(kind, via, RATE, DURATION)
                log(f"  {kind} {via} @ {fmt_rate(RATE)}/s, run {i + 1}: {short(r)}")
                for e in (r.get("log_errors") or [])[:5]:
                    log(f"    node log: {e}")
                results[kind].setdefault(f"fixed-{via}", []).append(r)
        save()
    for via in VIAS:
        for share in MIX_SHARES:
            for kind in SERVERS_WANTED:
                r = run_once(kind, via, RATE, DURATION, share)
                log(f"  {kind} {via} @ {fmt_rate(RATE)}/s, {share * 100:g} % to one-node rooms: {short(r)}")
                results[kind][f"mix-{via}-{share:g}"] = [r]
        save()
    if SEARCH:
        for via in SEARCH_VIAS:
            searches = [Search(kind, via) for kind in SERVERS_WANTED]
            while any(s.next_rate() is not None for s in searches):
                for s in searches:
                    s.step()
            for s in searches:
                results[s.kind][f"search-{via}"] = {"best": s.best, "trials": s.trials}
            save()
    md = render(results)
    text = (f"{describe()}; took {(time.time() - started) / 60:.1f} min; {os.cpu_count()} cores, "
            f"{os.uname().release}\n{md}\n")
    with open(os.path.join(OUT_DIR, f"cluster-table-{stamp}.md"), "w") as f:
        f.write(text)
    log(f"raw results: {os.path.join(OUT_DIR, f'cluster-results-{stamp}.json')}")
    print(text)
    if SMOKE:
        bad = smoke_verdict(results)
        for b in bad:
            print(f"FAILED: {b}", file=sys.stderr)
        print(f"cluster smoke: {'FAILED' if bad else 'ok'}")
        sys.exit(1 if bad else 0)


def _terminated(signum, _frame):
    # `timeout` or a CI runner stopping us: unwind, so that every process
    # this run started is stopped by its `finally`.
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminated)
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        with open(sys.argv[2]) as f:
            print(render(json.load(f)["results"]))
    else:
        main()
