#!/usr/bin/env python3
"""A slow-loris flood at the open-file limit, then 30 requests: are they answered?

Usage: python3 loadtest/slow-heads.py [BINARY]   (default target/release/shardcast)

Starts the broker under a hard open-file limit of 512 with SHARDS=2 on a free
port of 127.0.0.1, opens 600 connections that each send half a request head
and then nothing (60 batches of 10 within 3 s), waits a second, then sends 30
`GET /api/stats` one after another (3 s timeout each) and prints what each got
and how fast, and a summary: `codes {...}`. See the README, "At the wall".
"""
import os
import re
import socket
import subprocess
import sys
import threading
import time

binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/shardcast"
env = dict(os.environ, PORT="0", HOST="127.0.0.1", SHARDS="2", RUST_LOG="info")
broker = subprocess.Popen(["prlimit", "--nofile=512:512", binary], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
lines = []
threading.Thread(target=lambda: [lines.append(l) for l in broker.stdout], daemon=True).start()
try:
    port = None
    for _ in range(200):
        found = [re.search(r"http://127\.0\.0\.1:(\d+)", l) for l in list(lines)]
        port = next((int(m.group(1)) for m in found if m), None)
        if port:
            break
        time.sleep(0.05)
    if not port:
        sys.exit("the broker did not start:\n" + "".join(lines))

    slow = []
    for _ in range(60):
        for _ in range(10):
            s = socket.create_connection(("127.0.0.1", port))
            s.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)
        time.sleep(0.05)
    time.sleep(1)

    codes = []
    for i in range(30):
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(3)
        s.send(b"GET /api/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        started = time.time()
        try:
            codes.append(s.recv(100).split(b" ")[1].decode())
        except Exception as error:  # a timeout: the request waited in the backlog
            codes.append(str(error))
        print(i, codes[-1], f"{time.time() - started:.3f} s")
        s.close()
        time.sleep(0.1)
    print("codes", {c: codes.count(c) for c in sorted(set(codes))})
finally:
    broker.kill()
