// Harness for the cluster-mode tests (issue 13, /work/notes/cluster-contract.md):
// a real redis-server (Debian's package) on a free port with no persistence,
// shardcast nodes on it (helpers.mjs's startServer with REDIS_URL), and the
// HTTP, metrics and Redis look-ups the tests make.
//
// Everything started here is tracked by pid and stopped by the caller's
// after() (stopCluster / redis.stop), or killed when the test process exits;
// nothing else is touched.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { Redis } from 'ioredis';
import {
  assert, startServer, connect, connectAs, emitWithAck, assertSuccess, received, sleep, waitUntil,
} from './helpers.mjs';

export { Redis };

// ---------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------

/** The path of an executable on PATH (or $<NAME>_BIN, dashes as underscores), or null. */
export function findBinary(name) {
  const override = process.env[`${name.toUpperCase().replace(/-/g, '_')}_BIN`];
  if (override) return override;
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    const candidate = path.join(dir, name);
    try { fs.accessSync(candidate, fs.constants.X_OK); return candidate; } catch { /* next */ }
  }
  return null;
}

export const REDIS_SERVER = findBinary('redis-server');
// Only CI=true counts: CI=false (or an empty CI) is a developer machine.
const IN_CI = process.env.CI === 'true';

/**
 * Skip reason for a describe() when redis-server is missing outside CI
 * (under CI=true the tests run and fail: .ci/run installs it).
 */
export const redisMissing = REDIS_SERVER || IN_CI ? false
  : 'redis-server not found on PATH: install Debian\'s redis-server package (apt-get install redis-server) to run the cluster tests';

/** A TCP port free right now on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
  });
}

// ---------------------------------------------------------------------------
// redis-server
// ---------------------------------------------------------------------------

const ownChildren = new Set();
process.on('exit', () => { for (const c of ownChildren) { try { c.kill('SIGKILL'); } catch { /* gone */ } } });

/**
 * Start redis-server on a free port (or `port`), bound to 127.0.0.1, no RDB
 * snapshots, no AOF, its own temporary directory. Resolves once it logged
 * "Ready to accept connections". Returns
 * { port, url, pid, logs, stop(), kill(signal), restart() }: restart() starts
 * a new redis-server on the same port and directory (after kill()).
 */
export async function startRedis({ port, readyTimeoutMs = 10000 } = {}) {
  if (!REDIS_SERVER) throw new Error('redis-server is required (CI=true); .ci/run installs Debian\'s redis-server package');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shardcast-redis-'));
  const redis = { port: null, url: null, dir, child: null, pid: null, logs: [], exited: null, starts: 0 };

  async function spawnOnce(p) {
    const child = spawn(REDIS_SERVER, [
      '--port', String(p), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
      '--dir', dir, '--daemonize', 'no', '--logfile', '', '--loglevel', 'notice',
      '--databases', '1',
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    ownChildren.add(child);
    redis.child = child;
    redis.pid = child.pid;
    redis.exited = null;
    redis.starts += 1;
    const exitPromise = new Promise((resolve) => {
      child.on('exit', (code, signal) => { ownChildren.delete(child); redis.exited = { code, signal }; resolve(redis.exited); });
      child.on('error', (err) => { ownChildren.delete(child); redis.exited = { error: err.message }; resolve(redis.exited); });
    });
    redis.exitPromise = exitPromise;
    let onReady;
    const ready = new Promise((resolve) => { onReady = resolve; });
    for (const stream of ['stdout', 'stderr']) {
      readline.createInterface({ input: child[stream] }).on('line', (line) => {
        redis.logs.push({ stream, line, at: Date.now() });
        if (/Ready to accept connections/.test(line)) onReady();
      });
    }
    let timer;
    const outcome = await Promise.race([
      ready.then(() => 'ready'),
      exitPromise.then(() => 'exited'),
      new Promise((resolve) => { timer = setTimeout(() => resolve('timeout'), readyTimeoutMs); }),
    ]);
    clearTimeout(timer);
    if (outcome === 'timeout') { child.kill('SIGKILL'); await exitPromise; }
    return outcome;
  }

  const tail = () => redis.logs.slice(-20).map((l) => l.line).join('\n');
  // A free port can be taken by someone else before redis binds it: try another.
  for (let attempt = 0; ; attempt++) {
    const p = port ?? await freePort();
    const outcome = await spawnOnce(p);
    if (outcome === 'ready') { redis.port = p; break; }
    if (port !== undefined || attempt >= 4) throw new Error(`redis-server did not start on port ${p}: ${outcome}\n${tail()}`);
  }
  redis.url = `redis://127.0.0.1:${redis.port}`;

  redis.kill = async (signal = 'SIGKILL') => {
    if (redis.exited) return redis.exited;
    redis.child.kill(signal);
    return redis.exitPromise;
  };
  redis.stop = async () => {
    if (!redis.exited) {
      redis.child.kill('SIGTERM');
      const t = setTimeout(() => { if (!redis.exited) redis.child.kill('SIGKILL'); }, 3000);
      await redis.exitPromise;
      clearTimeout(t);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };
  /** Start a new redis-server on the same port (the old one must be gone). */
  redis.restart = async () => {
    assert.ok(redis.exited, 'redis.restart(): the previous redis-server is still running');
    for (let attempt = 0; ; attempt++) {
      const outcome = await spawnOnce(redis.port);
      if (outcome === 'ready') return redis;
      if (attempt >= 20) throw new Error(`redis-server did not start again on port ${redis.port}: ${outcome}\n${tail()}`);
      await sleep(100); // the port may still be held for a moment
    }
  };
  /** A new ioredis client on this server (close it with .disconnect()). */
  redis.client = () => new Redis({ host: '127.0.0.1', port: redis.port, lazyConnect: false, maxRetriesPerRequest: 2, enableOfflineQueue: true });
  return redis;
}

// ---------------------------------------------------------------------------
// shardcast nodes
// ---------------------------------------------------------------------------

/**
 * Start `count` shardcast nodes on `redis` (REDIS_URL, NODE_ID, SHARDS=2,
 * CLUSTER_NODE_TTL=3s unless `env` says otherwise; each PORT=0) and wait
 * until every node's /health counts them all. Returns the servers, each with
 * .nodeId. `redisUrls[i]`, if given, is node i's REDIS_URL (a proxy).
 */
export async function startCluster(redis, count = 3, env = {}, { waitMs = 15000, redisUrls = [] } = {}) {
  const tag = randomBytes(2).toString('hex');
  const nodes = await Promise.all(Array.from({ length: count }, (_, i) => {
    const nodeId = `n${i}${tag}`;
    return startServer({ SHARDS: 2, CLUSTER_NODE_TTL: '3s', NODE_ID: nodeId, ...env, REDIS_URL: redisUrls[i] ?? redis.url })
      .then((s) => Object.assign(s, { requestedNodeId: nodeId, nodeId, name: `node ${i} (port ${s.port})` }));
  }));
  try {
    await waitClusterSize(nodes, count, waitMs);
    // The id each node goes by (its /health), which the tests compare answers with.
    for (const [i, node] of nodes.entries()) {
      const h = await health(node);
      node.nodeId = h.json.cluster.node;
      node.name = `node ${i} (${node.nodeId}, port ${node.port})`;
    }
  } catch (e) {
    await stopNodes(nodes);
    throw e;
  }
  return nodes;
}

/**
 * A TCP proxy to `redis` that holds Redis's answers for `delayMs` on every
 * connection that has sent an EVAL: a node's publisher (its scripts' and
 * commands' replies come late), not its subscriber (pushes come at once).
 * So what a node publishes comes back to it before Redis's reply does.
 * Returns { url, stop() }.
 */
export async function startReplyDelayProxy(redis, delayMs) {
  const pairs = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(redis.port, '127.0.0.1');
    const pair = { client, upstream };
    pairs.add(pair);
    let delayed = false;
    client.on('data', (chunk) => {
      if (chunk.includes('EVAL')) delayed = true;
      upstream.write(chunk);
    });
    // Once delayed, every later chunk is too: a constant delay keeps their order.
    upstream.on('data', (chunk) => {
      if (delayed) setTimeout(() => { if (!client.destroyed) client.write(chunk); }, delayMs);
      else client.write(chunk);
    });
    const close = () => { pairs.delete(pair); client.destroy(); upstream.destroy(); };
    for (const s of [client, upstream]) { s.on('error', close); s.on('close', close); }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `redis://127.0.0.1:${server.address().port}`,
    stop: async () => {
      for (const { client, upstream } of pairs) { client.destroy(); upstream.destroy(); }
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Wait until every node's /health says cluster.nodes === n, redis up, delivery ok. */
export async function waitClusterSize(nodes, n, timeoutMs = 15000) {
  const last = {};
  const started = Date.now();
  await waitUntil(async () => {
    for (const node of nodes) {
      const h = await health(node).catch((e) => ({ error: e.message }));
      last[node.name] = h;
      // A node that serves /health without a "cluster" section ignored REDIS_URL: no use waiting.
      if (h.status === 200 && h.json && !('cluster' in h.json) && Date.now() - started > 2000) {
        throw new Error(`${node.name} runs as a single node despite REDIS_URL: /health = ${h.text}`);
      }
      const c = h.json && h.json.cluster;
      if (!c || c.nodes !== n || c.redis !== 'up' || c.delivery !== 'ok') return false;
    }
    return true;
  }, timeoutMs, () => `the nodes do not see a cluster of ${n} (healthy, redis up): /health answers ${JSON.stringify(last)}`, 100);
}

export async function stopNodes(nodes) {
  await Promise.all((nodes || []).map((n) => n.stop()));
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/** One HTTP request; resolves { status, json, text, ms }; rejects after timeoutMs. */
export async function http(node, method, urlPath, body, { timeoutMs = 10000 } = {}) {
  const started = Date.now();
  const res = await fetch(`${node.url}${urlPath}`, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, json, text, ms: Date.now() - started };
}

/** A 200 JSON answer's body (asserted). */
export async function okJson(node, method, urlPath, body, opts) {
  const r = await http(node, method, urlPath, body, opts);
  assert.equal(r.status, 200, `${method} ${urlPath} on ${node.name}: HTTP ${r.status} ${r.text.slice(0, 300)}`);
  assert.ok(r.json && typeof r.json === 'object', `${method} ${urlPath} on ${node.name}: not JSON: ${r.text.slice(0, 200)}`);
  return r.json;
}

export const getJson = (node, urlPath, opts) => okJson(node, 'GET', urlPath, undefined, opts);
export const postJson = (node, urlPath, body, opts) => okJson(node, 'POST', urlPath, body, opts);
export const health = (node, opts = { timeoutMs: 3000 }) => http(node, 'GET', '/health', undefined, opts);
export const stats = (node) => getJson(node, '/api/stats');
export const userInfo = (node, userId) => getJson(node, `/api/users/${encodeURIComponent(userId)}`);

/** The room `name` in GET /api/rooms of `node` (undefined when absent). */
export async function roomInfo(node, name) {
  const body = await getJson(node, '/api/rooms');
  assert.ok(Array.isArray(body.rooms), `GET /api/rooms on ${node.name}: no rooms array: ${JSON.stringify(body).slice(0, 300)}`);
  return body.rooms.find((r) => r.name === name);
}

// ---------------------------------------------------------------------------
// /metrics
// ---------------------------------------------------------------------------

/** Sum of every sample of metric `name` (all label sets) in a /metrics text; undefined if none. */
export function metricSum(text, name) {
  let sum;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m && m[1] === name) sum = (sum ?? 0) + Number(m[3]);
  }
  return sum;
}

/** Current value (sum over labels) of `name` on `node`; fails if the metric is not exported. */
export async function metric(node, name) {
  const r = await http(node, 'GET', '/metrics');
  assert.equal(r.status, 200, `GET /metrics on ${node.name}: HTTP ${r.status}`);
  const v = metricSum(r.text, name);
  assert.notEqual(v, undefined, `${node.name} does not export ${name}`);
  return v;
}

// ---------------------------------------------------------------------------
// Redis look-ups
// ---------------------------------------------------------------------------

/** Adapter channel of one room (namespace "/", key "socket.io"). */
export const roomChannel = (room, key = 'socket.io') => `${key}#/#${room}#`;

/** PUBSUB NUMSUB of one channel. */
export async function numsub(client, channel) {
  const reply = await client.pubsub('NUMSUB', channel);
  return Number(reply[1]);
}

/**
 * Wait until `count` subscribers hold the room's adapter channel (the nodes
 * with local members, contract: subscribed on the first local join).
 */
export async function waitRoomSubscribers(client, room, count, timeoutMs = 5000) {
  let n;
  await waitUntil(async () => { n = await numsub(client, roomChannel(room)); return n === count; },
    timeoutMs, () => `${roomChannel(room)} has ${n} subscribers, expected ${count}`, 20);
}

// ---------------------------------------------------------------------------
// Clients and delivery checks
// ---------------------------------------------------------------------------

export { connect, connectAs };

/** join-room with a success ack; returns the ack. */
export async function join(socket, roomName) {
  const ack = await emitWithAck(socket, 'join-room', { roomName });
  assertSuccess(ack, `join-room ${roomName} (${socket.userId})`);
  return ack;
}

export const label = (s) => `${s.userId ?? 'anon'}@${s.nodeName ?? '?'}(${s.sid ?? s.id})`;

/** connectAs + remembers which node the socket is on. */
export async function userOn(node, userId, opts) {
  const s = await connectAs(node.url, userId, opts);
  s.node = node;
  s.nodeName = node.nodeId;
  return s;
}

/** An unauthenticated socket on `node`. */
export async function anonOn(node) {
  const s = await connect(node.url);
  s.node = node;
  s.nodeName = node.nodeId;
  return s;
}

/**
 * Every socket of `expected` gets `event` exactly once (with `data` if given,
 * deepEqual) and no other socket of `all` gets it. Waits (bounded) for the
 * expected ones, then a quiet window `graceMs` for duplicates and strays.
 * Returns the number of sockets that got it.
 */
export async function expectExactlyOnce(all, expected, event, data, opts = {}) {
  const [got] = await expectDeliveries(all, [{ event, expected, data }], opts);
  return got;
}

/**
 * Several checks of expectExactlyOnce with one quiet window:
 * `checks` = [{ event, expected: [sockets], data? }]. Returns, per check, the
 * number of sockets of `all` that got the event.
 */
export async function expectDeliveries(all, checks, { timeoutMs = 5000, graceMs = 300 } = {}) {
  await waitUntil(() => checks.every(({ event, expected }) => expected.every((s) => received(s, event).length > 0)), timeoutMs, () => {
    const lines = [];
    for (const { event, expected } of checks) {
      const missing = expected.filter((s) => received(s, event).length === 0);
      if (missing.length) lines.push(`${missing.length}/${expected.length} expected sockets did not get "${event}": ${missing.map(label).join(', ')}`);
    }
    return lines.join('; ');
  });
  if (graceMs) await sleep(graceMs);
  const counts = [];
  for (const { event, expected, data } of checks) {
    const exp = new Set(expected);
    let got = 0;
    for (const s of all) {
      const recs = received(s, event);
      if (recs.length > 0) got += 1;
      if (exp.has(s)) {
        assert.equal(recs.length, 1, `${label(s)} should get "${event}" exactly once, got ${recs.length}: ${JSON.stringify(recs).slice(0, 300)}`);
        if (data !== undefined) assert.deepEqual(recs[0], data, `payload of "${event}" on ${label(s)}`);
      } else {
        assert.equal(recs.length, 0, `${label(s)} should not get "${event}", got ${recs.length}`);
      }
    }
    counts.push(got);
  }
  return counts;
}

/**
 * Wait until the whole cluster holds exactly `perNode[i]` Socket.IO
 * connections on node i (earlier tests' clients are gone).
 */
export async function settleConnections(nodes, perNode, timeoutMs = 10000) {
  const total = perNode.reduce((a, b) => a + b, 0);
  let last = [];
  await waitUntil(async () => {
    last = await Promise.all(nodes.map((n) => stats(n)));
    return last.every((s, i) => s.node && s.node.connections === perNode[i] && s.connections === total);
  }, timeoutMs, () => `cluster connections not settled to ${JSON.stringify(perNode)}: ${JSON.stringify(last.map((s) => ({ connections: s.connections, node: s.node && s.node.connections })))}`, 50);
}
