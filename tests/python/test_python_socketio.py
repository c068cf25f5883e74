"""A second, independent client: the Python ``python-socketio`` client against
the real shardcast binary (issue 4).

For each transport (long-polling, websocket, and the client's default of
polling upgraded to websocket) a client connects, authenticates, joins a room,
exchanges custom events, private messages and acks with a second client that
uses the other transport, and its disconnect reaches the room as `user-left`.

The binary is target/release/shardcast, or $SHARDCAST_BIN; it is started
here with PORT=0 HOST=127.0.0.1 SHARDS=4.
"""

import os
import queue
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
import socketio

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("SHARDCAST_BIN", REPO_ROOT / "target" / "release" / "shardcast"))
if not BIN.is_absolute():
    BIN = REPO_ROOT / BIN

# Every configuration variable of the server: removed from the inherited
# environment so that a developer's shell cannot change what the test sees.
CONFIG_VARS = [
    "PORT", "HOST", "CORS_ORIGIN", "WEBSOCKET_NAMESPACE", "WEBSOCKET_TRANSPORTS", "SHARDS",
    "API_KEY", "JWT_SECRET", "PING_INTERVAL_MS", "PING_TIMEOUT_MS", "MAX_PAYLOAD_BYTES",
    "RATE_LIMIT_PER_SEC", "RATE_LIMIT_BURST", "MAX_CONNECTIONS", "MAX_ROOMS_PER_SOCKET",
    "PRESENCE_EVENTS", "REDIS_URL", "NODE_ENV", "RUST_LOG", "CONNECT_TIMEOUT_MS",
]
LISTENING_RE = re.compile(r"listening on http://[^:\s]+:(\d+)")
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")
TIMEOUT = 10


class Server:
    def __init__(self, **env):
        full = {k: v for k, v in os.environ.items() if k not in CONFIG_VARS}
        full.update({"PORT": "0", "HOST": "127.0.0.1"})
        full.update({k: str(v) for k, v in env.items()})
        if not BIN.exists():
            pytest.fail(f"no shardcast binary at {BIN} (cargo build --release, or set SHARDCAST_BIN)")
        self.proc = subprocess.Popen(
            [str(BIN)], env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
        )
        self.logs = []
        self.port = None
        ready = threading.Event()

        def pump(stream, name):
            for line in stream:
                self.logs.append(f"[{name}] {line.rstrip()}")
                if name == "stdout" and self.port is None:
                    m = LISTENING_RE.search(line)
                    if m:
                        self.port = int(m.group(1))
                        ready.set()
            if name == "stdout":
                ready.set()

        for stream, name in ((self.proc.stdout, "stdout"), (self.proc.stderr, "stderr")):
            threading.Thread(target=pump, args=(stream, name), daemon=True).start()
        if not ready.wait(20) or self.port is None:
            self.stop()
            pytest.fail("shardcast did not print its listening line:\n" + "\n".join(self.logs[-40:]))
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def connections(self):
        r = requests.get(f"{self.url}/api/connections", timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        return {c["socketId"]: c for c in r.json()["connections"]}


@pytest.fixture(scope="module")
def server(request):
    s = Server(SHARDS=4)
    yield s
    s.stop()
    if request.session.testsfailed:
        print("\n----- shardcast logs -----\n" + "\n".join(s.logs[-200:]))


class Peer:
    """A python-socketio client that records every event it receives."""

    def __init__(self, server, transport, name):
        self.transport_mode = transport
        self.sio = socketio.Client(reconnection=False)
        self.events = []  # (event, args) in arrival order
        self.cond = threading.Condition()
        self.user_id = f"{name}-{uuid.uuid4().hex[:8]}"
        self.sio.on("*", self._record)
        transports = None if transport == "default" else [transport]
        self.sio.connect(server.url, transports=transports, wait_timeout=TIMEOUT)

    def _record(self, event, *args):
        with self.cond:
            self.events.append((event, args))
            self.cond.notify_all()

    def wait_for(self, event, predicate=lambda data: True, timeout=TIMEOUT):
        """First not yet consumed `event` whose first argument matches; consumes it."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i, (name, args) in enumerate(self.events):
                    data = args[0] if args else None
                    if name == event and predicate(data):
                        del self.events[i]
                        return data
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{self.user_id}: no {event!r} event within {timeout} s; unconsumed: "
                        f"{[(n, a) for n, a in self.events][-10:]}"
                    )
                self.cond.wait(left)

    def received(self, event):
        with self.cond:
            return [args[0] if args else None for name, args in self.events if name == event]

    def call(self, event, data=None):
        return self.sio.call(event, data, timeout=TIMEOUT)

    @property
    def sid(self):
        return self.sio.get_sid()


def wait_until(cond, timeout=TIMEOUT, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.02)


def assert_timestamp(ts):
    assert isinstance(ts, str) and ISO_UTC.match(ts), ts


# the client under test, and the transport of its partner
CASES = [("polling", "websocket"), ("websocket", "polling"), ("default", "polling")]
FINAL = {"polling": "polling", "websocket": "websocket", "default": "websocket"}


@pytest.mark.parametrize("transport,peer_transport", CASES, ids=[c[0] for c in CASES])
def test_python_client_connects_authenticates_joins_and_exchanges(server, transport, peer_transport):
    a = Peer(server, transport, f"py-{transport}")
    b = Peer(server, peer_transport, f"py-peer-{peer_transport}")
    try:
        # connected { socketId, timestamp } first, with the Socket.IO id.
        for p in (a, b):
            hello = p.wait_for("connected")
            assert hello["socketId"] == p.sid
            assert_timestamp(hello["timestamp"])

        # The transport the mode implies (the default client upgrades).
        wait_until(lambda: a.sio.transport() == FINAL[transport], what=f"{transport} client on {FINAL[transport]}")
        assert b.sio.transport() == peer_transport
        time.sleep(0.3)
        assert a.sio.transport() == FINAL[transport]

        # authenticate (ack through call()).
        for p in (a, b):
            ack = p.call("authenticate", {"userId": p.user_id})
            assert ack == {"success": True, "userId": p.user_id, "socketId": p.sid}
            auth = p.wait_for("authenticated")
            assert auth["userId"] == p.user_id

        conns = server.connections()
        assert conns[a.sid]["transport"] == FINAL[transport]
        assert conns[b.sid]["transport"] == peer_transport
        assert conns[a.sid]["userId"] == a.user_id

        # join-room: memberCount grows, the other member hears user-joined.
        room = f"py-room-{uuid.uuid4().hex[:8]}"
        ack = a.call("join-room", {"roomName": room})
        assert ack["success"] is True and ack["roomName"] == room and ack["memberCount"] == 1
        ack = b.call("join-room", {"roomName": room})
        assert ack["success"] is True and ack["memberCount"] == 2
        joined = a.wait_for("user-joined", lambda d: d["socketId"] == b.sid)
        assert joined["userId"] == b.user_id and joined["roomName"] == room
        assert_timestamp(joined["timestamp"])

        # custom-event relays both ways; ack through emit(callback=...).
        data = {"text": "héllo ✓ 🎉", "n": [1, 2.5, None, True], "nested": {"k": "v" * 5000}}
        acked = queue.Queue()
        a.sio.emit("custom-event", {"event": "py-chat", "data": data, "roomName": room}, callback=lambda *r: acked.put(r))
        assert acked.get(timeout=TIMEOUT) == ({"success": True},)
        assert b.wait_for("py-chat") == data
        ack = b.call("custom-event", {"event": "py-reply", "data": {"to": a.user_id}, "roomName": room})
        assert ack == {"success": True}
        assert a.wait_for("py-reply") == {"to": a.user_id}

        # A paced stream (each event acked before the next) from each side
        # arrives complete and in order.
        for i in range(50):
            assert a.call("custom-event", {"event": "py-seq", "data": {"i": i}, "roomName": room}) == {"success": True}
            assert b.call("custom-event", {"event": "py-seq", "data": {"i": i}, "roomName": room}) == {"success": True}
        wait_until(lambda: len(b.received("py-seq")) >= 50 and len(a.received("py-seq")) >= 50, what="50 relayed events each way")
        assert [d["i"] for d in b.received("py-seq")] == list(range(50))
        assert [d["i"] for d in a.received("py-seq")] == list(range(50))

        # private-message both ways with acks, message-sent to the sender.
        ack = a.call("private-message", {"targetUserId": b.user_id, "message": "hi from python", "messageType": "text"})
        assert ack["success"] is True and isinstance(ack["messageId"], str)
        assert_timestamp(ack["timestamp"])
        pm = b.wait_for("private-message", lambda d: d["messageId"] == ack["messageId"])
        assert pm["fromUserId"] == a.user_id and pm["targetUserId"] == b.user_id
        assert pm["message"] == "hi from python" and pm["messageType"] == "text"
        sent = a.wait_for("message-sent", lambda d: d["messageId"] == ack["messageId"])
        assert sent["targetUserId"] == b.user_id
        ack = b.call("private-message", {"targetUserId": a.user_id, "message": "and back"})
        assert ack["success"] is True
        assert a.wait_for("private-message", lambda d: d["messageId"] == ack["messageId"])["message"] == "and back"

        # Failure acks travel too.
        ack = a.call("private-message", {"targetUserId": f"nobody-{uuid.uuid4().hex}", "message": "x"})
        assert ack["success"] is False and ack["code"] == "USER_OFFLINE"

        # ping → ack and pong.
        ack = a.call("ping", {"from": "python"})
        assert ack["success"] is True
        assert_timestamp(ack["timestamp"])
        a.wait_for("pong")

        # disconnect → user-left to the room, gone from /api/connections.
        a_sid = a.sid
        a.sio.disconnect()
        left = b.wait_for("user-left", lambda d: d["socketId"] == a_sid)
        assert left["userId"] == a.user_id and left["roomName"] == room
        wait_until(lambda: a_sid not in server.connections(), what="connection removed from /api/connections")
    finally:
        for p in (a, b):
            try:
                p.sio.disconnect()
            except Exception:  # noqa: BLE001
                pass


@pytest.mark.parametrize("transport", ["polling", "websocket"])
def test_python_client_connect_auth_and_server_push(server, transport):
    """Development-mode CONNECT auth ({ userId }) and an API push to the socket."""
    user = f"py-auth-{uuid.uuid4().hex[:8]}"
    sio = socketio.Client(reconnection=False)
    got = queue.Queue()
    sio.on("authenticated", lambda d: got.put(("authenticated", d)))
    sio.on("notice", lambda d: got.put(("notice", d)))
    sio.connect(server.url, transports=[transport], auth={"userId": user}, wait_timeout=TIMEOUT)
    try:
        name, d = got.get(timeout=TIMEOUT)
        assert name == "authenticated" and d["userId"] == user
        r = requests.post(f"{server.url}/api/users/{user}/send", json={"event": "notice", "data": {"x": "ü"}}, timeout=TIMEOUT)
        assert r.status_code == 200 and r.json()["delivered"] == 1, r.text
        assert got.get(timeout=TIMEOUT) == ("notice", {"x": "ü"})
        assert sio.transport() == transport
    finally:
        sio.disconnect()


@pytest.mark.parametrize("transport", ["polling", "websocket", "default"])
def test_python_client_burst_in_order(server, transport, monkeypatch):
    """300 unpaced events each way between a client of `transport` and a
    websocket peer: all arrive, in order, with every ack.

    python-engineio's client refuses a polling response with more than 16
    packets (engineio.payload.Payload.max_decode_packets, a limit of that
    library, not of the protocol: the reference server also sends everything
    queued in one response); its documented workaround is to raise the limit.
    """
    import engineio.payload
    monkeypatch.setattr(engineio.payload.Payload, "max_decode_packets", 100000)
    a = Peer(server, transport, f"py-burst-{transport}")
    b = Peer(server, "websocket", "py-burst-peer")
    try:
        room = f"py-burst-{uuid.uuid4().hex[:8]}"
        for p in (a, b):
            assert p.call("authenticate", {"userId": p.user_id})["success"] is True
            assert p.call("join-room", {"roomName": room})["success"] is True
        acks = {"a": queue.Queue(), "b": queue.Queue()}
        n = 300
        for i in range(n):
            a.sio.emit("custom-event", {"event": "burst", "data": {"i": i}, "roomName": room}, callback=lambda r, i=i: acks["a"].put((i, r)))
            b.sio.emit("custom-event", {"event": "burst", "data": {"i": i}, "roomName": room}, callback=lambda r, i=i: acks["b"].put((i, r)))
        for who in ("a", "b"):
            got = [acks[who].get(timeout=TIMEOUT) for _ in range(n)]
            assert sorted(i for i, _ in got) == list(range(n))
            assert all(r == {"success": True} for _, r in got)
        wait_until(lambda: len(a.received("burst")) >= n and len(b.received("burst")) >= n,
                   what=f"{n} relayed events each way")
        assert [d["i"] for d in b.received("burst")] == list(range(n))
        assert [d["i"] for d in a.received("burst")] == list(range(n))
        assert a.sio.connected and b.sio.connected
    finally:
        for p in (a, b):
            try:
                p.sio.disconnect()
            except Exception:  # noqa: BLE001
                pass


def test_a_burst_reaches_a_polling_python_client_whole_and_in_order(server):
    """python-engineio refuses a polling payload of more than 16 packets
    (and drops the connection): a burst of 300 relays must still reach a
    long-polling python client, all of them, in order, connection intact."""
    reader = Peer(server, "polling", "py-burst-reader")
    writer = Peer(server, "websocket", "py-burst-writer")
    try:
        room = f"py-burst-{uuid.uuid4().hex[:8]}"
        for p in (reader, writer):
            assert p.call("authenticate", {"userId": p.user_id})["success"] is True
            assert p.call("join-room", {"roomName": room})["success"] is True
        for i in range(300):
            writer.sio.emit("custom-event", {"event": "burst", "data": {"n": i}, "roomName": room})
        assert writer.call("ping")["success"] is True  # all 300 handled before this ack
        wait_until(lambda: len(reader.received("burst")) == 300, what="300 relays at the polling reader")
        assert [d["n"] for d in reader.received("burst")] == list(range(300))
        assert reader.sio.connected and reader.sio.transport() == "polling"
    finally:
        reader.sio.disconnect()
        writer.sio.disconnect()
