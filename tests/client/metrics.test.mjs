// GET /metrics (SPEC §6, issue 5): the exposition is valid Prometheus text,
// every value equals what the clients did (gauges go down however a
// connection ends: clean disconnect, killed client process, heartbeat
// timeout, connect timeout), label sets stay bounded; a real Prometheus
// scraping the broker sees the same values; every PromQL expression of
// grafana/dashboard.json parses (promtool) and names only exported metrics,
// and every exported metric is on the dashboard. Cluster mode's metrics
// (shardcast_cluster_*) are checked against two nodes on a real redis-server
// (a node without REDIS_URL must export none of them).
//
// The Prometheus and promtool tests need Debian's `prometheus` package, the
// cluster-mode ones Debian's `redis-server` (`.ci/run` installs both).
// Without them they are skipped with a message, except under CI=true, where
// a missing binary is a failure.

import { describe, before, after } from 'node:test';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import {
  assert, it, startServer, connect, connectAs, connectExpectingError, emitWithAck, waitForEvent,
  assertSuccess, assertFailure, rawConnect, sleep, waitUntil, signJwt, nowSec, REPO_ROOT,
} from './helpers.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const DASHBOARD = path.join(REPO_ROOT, 'grafana', 'dashboard.json');
const secret = (what) => `${what}-${randomBytes(6).toString('hex')}`;

// ---------------------------------------------------------------------------
// The Prometheus text format (version 0.0.4), parsed strictly
// ---------------------------------------------------------------------------

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const FLOAT = /^[+-]?(?:Inf|inf|NaN|nan|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)$/;
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

function parseFloatText(text) {
  if (/^[+]?inf$/i.test(text)) return Infinity;
  if (/^-inf$/i.test(text)) return -Infinity;
  if (/^nan$/i.test(text)) return NaN;
  return Number(text);
}

/** Labels `{a="x",b="y"}` starting at text[i] === '{'; returns [labels, index after '}']. */
function parseLabels(text, i, where) {
  const labels = {};
  i += 1;
  for (;;) {
    while (text[i] === ' ') i += 1;
    if (text[i] === '}') return [labels, i + 1];
    const nameMatch = /^[a-zA-Z_][a-zA-Z0-9_]*/.exec(text.slice(i));
    if (!nameMatch) throw new Error(`${where}: bad label name at ${JSON.stringify(text.slice(i))}`);
    const name = nameMatch[0];
    i += name.length;
    if (text[i] !== '=' || text[i + 1] !== '"') throw new Error(`${where}: expected ="..." after label ${name}`);
    i += 2;
    let value = '';
    for (;;) {
      const c = text[i];
      if (c === undefined) throw new Error(`${where}: unterminated label value`);
      if (c === '"') { i += 1; break; }
      if (c === '\\') {
        const e = text[i + 1];
        if (e === 'n') value += '\n';
        else if (e === '\\' || e === '"') value += e;
        else throw new Error(`${where}: bad escape \\${e} in label ${name}`);
        i += 2;
      } else { value += c; i += 1; }
    }
    if (name in labels) throw new Error(`${where}: label ${name} given twice`);
    if (name.startsWith('__')) throw new Error(`${where}: label ${name} uses the reserved __ prefix`);
    labels[name] = value;
    if (text[i] === ',') i += 1;
    else if (text[i] !== '}') throw new Error(`${where}: expected , or } after label ${name}`);
  }
}

const seriesKey = (name, labels) =>
  `${name}{${Object.keys(labels).sort().map((k) => `${k}=${JSON.stringify(labels[k])}`).join(',')}}`;

/**
 * Parses an exposition and checks it: HELP and TYPE for every family, TYPE
 * before its samples, each family's samples in one group, no duplicate
 * series, valid names and values, histogram buckets cumulative with +Inf =
 * _count. Throws on the first problem. Returns { families, samples, keys }.
 */
function parseExposition(text) {
  const families = new Map();
  const samples = [];
  const keys = new Set();
  const closedFamilies = new Set();
  let current = null;
  const family = (name) => {
    if (!families.has(name)) families.set(name, { name, help: undefined, type: undefined, samples: [] });
    return families.get(name);
  };
  const familyOf = (sampleName) => {
    if (families.has(sampleName)) return families.get(sampleName);
    for (const suffix of ['_bucket', '_sum', '_count']) {
      if (sampleName.endsWith(suffix)) {
        const f = families.get(sampleName.slice(0, -suffix.length));
        if (f && (f.type === 'histogram' || f.type === 'summary')) return f;
      }
    }
    return null;
  };
  text.split('\n').forEach((line, index) => {
    const where = `/metrics line ${index + 1} ${JSON.stringify(line.slice(0, 120))}`;
    if (line.trim() === '') return;
    if (line.startsWith('#')) {
      const m = /^#\s+(HELP|TYPE)\s+(\S+)(?:\s(.*))?$/.exec(line);
      if (!m) return; // a plain comment
      const [, kind, name, rest = ''] = m;
      if (!METRIC_NAME.test(name)) throw new Error(`${where}: bad metric name`);
      const f = family(name);
      if (f.samples.length > 0) throw new Error(`${where}: ${kind} after the family's samples`);
      if (kind === 'HELP') {
        if (f.help !== undefined) throw new Error(`${where}: second HELP for ${name}`);
        f.help = rest.replace(/\\n/g, '\n').replace(/\\\\/g, '\\');
      } else {
        if (f.type !== undefined) throw new Error(`${where}: second TYPE for ${name}`);
        if (!TYPES.has(rest.trim())) throw new Error(`${where}: unknown type ${rest}`);
        f.type = rest.trim();
      }
      return;
    }
    const nameMatch = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
    if (!nameMatch) throw new Error(`${where}: a sample line must start with a metric name`);
    const name = nameMatch[0];
    let i = name.length;
    let labels = {};
    if (line[i] === '{') [labels, i] = parseLabels(line, i, where);
    const rest = line.slice(i).trim().split(/\s+/);
    if (line[i] !== ' ' || rest.length < 1 || rest.length > 2) throw new Error(`${where}: expected "<name>{labels} <value> [timestamp]"`);
    if (!FLOAT.test(rest[0])) throw new Error(`${where}: bad value ${rest[0]}`);
    if (rest[1] !== undefined && !/^-?\d+$/.test(rest[1])) throw new Error(`${where}: bad timestamp ${rest[1]}`);
    const f = familyOf(name);
    if (!f) throw new Error(`${where}: sample ${name} has no # TYPE (and # HELP) line before it`);
    if (f !== current) {
      if (closedFamilies.has(f.name)) throw new Error(`${where}: samples of ${f.name} are not in one group`);
      if (current) closedFamilies.add(current.name);
      current = f;
    }
    const key = seriesKey(name, labels);
    if (keys.has(key)) throw new Error(`${where}: duplicate series ${key}`);
    keys.add(key);
    const sample = { name, labels, value: parseFloatText(rest[0]), family: f.name };
    f.samples.push(sample);
    samples.push(sample);
  });
  for (const f of families.values()) {
    if (f.help === undefined || f.help.trim() === '') throw new Error(`metric ${f.name} has no HELP text`);
    if (f.type === undefined) throw new Error(`metric ${f.name} has no TYPE`);
    if (f.type === 'counter') {
      for (const s of f.samples) {
        if (!(s.value >= 0)) throw new Error(`counter ${seriesKey(s.name, s.labels)} = ${s.value}`);
      }
    }
    if (f.type === 'gauge') {
      for (const s of f.samples) if (!Number.isFinite(s.value)) throw new Error(`gauge ${seriesKey(s.name, s.labels)} = ${s.value}`);
    }
    if (f.type === 'histogram') checkHistogram(f);
  }
  return { families, samples, keys, text };
}

function checkHistogram(f) {
  const groups = new Map();
  for (const s of f.samples) {
    const { le, ...rest } = s.labels;
    const key = seriesKey('', rest);
    if (!groups.has(key)) groups.set(key, { buckets: [], sum: undefined, count: undefined });
    const g = groups.get(key);
    if (s.name === `${f.name}_bucket`) {
      if (le === undefined) throw new Error(`${f.name}_bucket without le`);
      g.buckets.push([parseFloatText(le), s.value]);
    } else if (s.name === `${f.name}_sum`) g.sum = s.value;
    else if (s.name === `${f.name}_count`) g.count = s.value;
    else throw new Error(`histogram ${f.name} has a sample ${s.name}`);
  }
  for (const [key, g] of groups) {
    const what = `histogram ${f.name}${key}`;
    assert.ok(g.buckets.length > 0 && g.sum !== undefined && g.count !== undefined, `${what}: needs _bucket, _sum and _count`);
    g.buckets.sort((a, b) => a[0] - b[0]);
    assert.equal(g.buckets.at(-1)[0], Infinity, `${what}: needs a le="+Inf" bucket`);
    for (let i = 1; i < g.buckets.length; i++) {
      assert.ok(g.buckets[i][1] >= g.buckets[i - 1][1], `${what}: buckets must be cumulative: ${JSON.stringify(g.buckets)}`);
    }
    assert.equal(g.buckets.at(-1)[1], g.count, `${what}: +Inf bucket must equal _count`);
    assert.ok(g.sum >= 0, `${what}: _sum ${g.sum}`);
  }
}

/** The value of the series with exactly these labels (undefined when absent). */
function val(m, name, labels = {}) {
  const key = seriesKey(name, labels);
  const s = m.samples.find((x) => x.name === name && seriesKey(x.name, x.labels) === key);
  return s ? s.value : undefined;
}

/** Like val(), but 0 for a counter series that does not exist yet. */
const cnt = (m, name, labels = {}) => val(m, name, labels) ?? 0;

/** Sum over every series of `name` whose labels include `match`. */
function sumOf(m, name, match = {}) {
  return m.samples
    .filter((s) => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v))
    .reduce((a, s) => a + s.value, 0);
}

/** Every label value of `label` seen on series `name`. */
const labelValues = (m, name, label) =>
  new Set(m.samples.filter((s) => s.name === name && label in s.labels).map((s) => s.labels[label]));

async function scrapeText(server) {
  const res = await fetch(`${server.url}/metrics`);
  assert.equal(res.status, 200, `GET /metrics answered ${res.status}`);
  return { text: await res.text(), contentType: res.headers.get('content-type') };
}

async function scrape(server) {
  const { text } = await scrapeText(server);
  try {
    return parseExposition(text);
  } catch (e) {
    e.message += `\n--- /metrics ---\n${text.slice(0, 4000)}`;
    throw e;
  }
}

/** The gauges of the connection lifecycle, with the per-shard ones summed. */
function gauges(m) {
  return {
    connections: val(m, 'shardcast_connections'),
    shardConnections: sumOf(m, 'shardcast_shard_connections'),
    sockets: val(m, 'shardcast_sockets'),
    shardSockets: sumOf(m, 'shardcast_shard_sockets'),
    rooms: val(m, 'shardcast_rooms'),
    onlineUsers: val(m, 'shardcast_online_users'),
  };
}

const expectGauges = (connections, sockets, rooms, onlineUsers) => ({
  connections, shardConnections: connections, sockets, shardSockets: sockets, rooms, onlineUsers,
});

/**
 * Scrape until the gauges equal `want` (bounded), then check they stay there.
 *
 * Reaching `want` is the event itself. What follows is a guard against a
 * late wrong change (a close counted twice, a decrement that lands after
 * the count looked right): every scrape asks every shard, so it comes after
 * whatever each shard had already been handed, and five of them spread over
 * 500 ms give a change the machine's load delayed a chance to show. A
 * correct broker never moves here, so the window only costs time; it was
 * one scrape 150 ms later, which a loaded 2-core machine could outlast.
 */
async function waitForGauges(server, want, what, timeoutMs = 8000) {
  let last;
  await waitUntil(async () => {
    last = gauges(await scrape(server));
    return JSON.stringify(last) === JSON.stringify(want);
  }, timeoutMs, () => `${what}: gauges ${JSON.stringify(last)}, expected ${JSON.stringify(want)}`, 50);
  for (let i = 0; i < 5; i++) {
    await sleep(100);
    assert.deepEqual(gauges(await scrape(server)), want, `${what}: gauges moved away from the expected values`);
  }
}

// Label values the broker may use (everything else would be unbounded).
const CLOSE_REASONS = ['client_close', 'transport_error', 'ping_timeout', 'connect_timeout', 'protocol_error',
  'payload_too_large', 'slow_consumer', 'rate_limited', 'server_shutdown'];
const EVENT_LABELS = ['authenticate', 'join-room', 'leave-room', 'private-message', 'custom-event', 'ping', 'other'];
const CODES = ['VALIDATION_ERROR', 'UNAUTHENTICATED', 'AUTH_FAILED', 'NOT_IN_ROOM', 'USER_OFFLINE', 'RATE_LIMITED',
  'LIMIT_EXCEEDED', 'UNKNOWN_EVENT'];
const SCOPES = ['all', 'room', 'user', 'socket'];
const ROUTES = ['/socket.io/', '/health', '/ready', '/metrics', 'other', '/api/other', '/api/broadcast',
  '/api/rooms/{room}/broadcast', '/api/users/{userId}/send', '/api/sockets/{socketId}/send', '/api/batch',
  '/api/connections', '/api/rooms', '/api/stats', '/api/users/{userId}'];
const DROP_REASONS = ['slow_consumer'];
const REFUSE_REASONS = ['capacity', 'descriptors'];
const TABLES = ['sessions', 'local_sockets', 'local_rooms', 'local_room_members', 'local_users', 'local_user_sockets',
  'home_rooms', 'home_room_users', 'home_users', 'home_user_shards'];
const LIVE_KINDS = ['socket', 'outbox'];

// Cluster mode's metrics (REDIS_URL set), none of them labelled.
const CLUSTER_METRICS = {
  shardcast_cluster_nodes: 'gauge',
  shardcast_cluster_redis_up: 'gauge',
  shardcast_cluster_subscriptions: 'gauge',
  shardcast_cluster_messages_published_total: 'counter',
  shardcast_cluster_messages_received_total: 'counter',
  shardcast_cluster_bytes_published_total: 'counter',
  shardcast_cluster_bytes_received_total: 'counter',
  shardcast_cluster_publish_failures_total: 'counter',
  shardcast_cluster_messages_undecodable_total: 'counter',
  shardcast_cluster_delivery_lag_seconds: 'histogram',
};
const isClusterMetric = (name) => name.startsWith('shardcast_cluster_');

/** A node without REDIS_URL exports no cluster metric at all. */
function assertNoClusterMetrics(m, what) {
  const cluster = [...m.families.keys()].filter(isClusterMetric);
  assert.deepEqual(cluster, [], `${what}: a node without REDIS_URL exports no shardcast_cluster_* metric`);
  assert.ok(!/shardcast_cluster_/.test(m.text), `${what}: /metrics mentions shardcast_cluster_`);
}

/** Every label of every series is one of a fixed, small set of values. */
function assertBoundedLabels(m, shards) {
  const allowed = {
    shard: Array.from({ length: shards }, (_, i) => String(i)),
    reason: [...CLOSE_REASONS, ...DROP_REASONS, ...REFUSE_REASONS],
    event: EVENT_LABELS,
    code: CODES,
    scope: SCOPES,
    route: ROUTES,
    table: TABLES,
    kind: LIVE_KINDS,
  };
  for (const s of m.samples) {
    for (const [k, v] of Object.entries(s.labels)) {
      const where = `${seriesKey(s.name, s.labels)}`;
      if (k === 'le') assert.match(v, FLOAT, `${where}: le`);
      else if (k === 'status') assert.match(v, /^[1-5]\d\d$/, `${where}: status`);
      else {
        assert.ok(allowed[k], `${where}: unexpected label name ${k}`);
        assert.ok(allowed[k].includes(v), `${where}: label ${k}="${v}" is not one of ${allowed[k].join(', ')}`);
      }
    }
  }
}

async function api(server, method, urlPath, body) {
  const res = await fetch(`${server.url}${urlPath}`, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = text; }
  return { status: res.status, body: json };
}

// ---------------------------------------------------------------------------
// A client process holding connections, to be killed with SIGKILL
// ---------------------------------------------------------------------------

const HOLDER = `
import { io } from 'socket.io-client';
const [url, spec] = [process.argv[1], JSON.parse(process.argv[2])];
const sockets = [];
for (const { userId, rooms, transports = ['websocket'] } of spec) {
  const socket = io(url, { transports, upgrade: false, reconnection: false, forceNew: true, auth: { userId } });
  const authenticated = new Promise((resolve) => socket.once('authenticated', resolve));
  await new Promise((resolve, reject) => { socket.once('connect', resolve); socket.once('connect_error', reject); });
  await authenticated;
  for (const roomName of rooms) {
    const ack = await socket.timeout(5000).emitWithAck('join-room', { roomName });
    if (!ack.success) throw new Error('join-room failed: ' + JSON.stringify(ack));
  }
  sockets.push(socket);
}
console.log('READY ' + JSON.stringify(sockets.map((s) => s.id)));
setInterval(() => {}, 1 << 30);
`;

/** Starts a node process that opens the connections of `spec`; resolves once they are all set up. */
async function startHolder(url, spec) {
  const child = spawn(process.execPath, ['--input-type=module', '-e', HOLDER, url, JSON.stringify(spec)], {
    cwd: HERE, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const ready = new Promise((resolve) => {
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      if (line.startsWith('READY ')) resolve(JSON.parse(line.slice(6)));
    });
  });
  let timer;
  const outcome = await Promise.race([
    ready,
    exited.then((e) => { throw new Error(`client process exited early ${JSON.stringify(e)}: ${stderr}`); }),
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`client process not ready: ${stderr}`)), 15000); }),
  ]).finally(() => clearTimeout(timer));
  return { child, exited, socketIds: outcome };
}

// ---------------------------------------------------------------------------
// Exposition and values against a live broker
// ---------------------------------------------------------------------------

describe('/metrics: valid Prometheus text', () => {
  let server;
  before(async () => { server = await startServer({ SHARDS: 2 }); });
  after(() => server.stop());

  it('a fresh broker: text/plain 0.0.4, every metric with HELP and TYPE, zeros, one gauge per shard', async () => {
    const { text, contentType } = await scrapeText(server);
    assert.match(contentType, /^text\/plain; version=0\.0\.4/, `content-type ${contentType}`);
    const m = parseExposition(text);
    assertNoClusterMetrics(m, 'a fresh single node');
    for (const [name, type] of [
      ['shardcast_connections', 'gauge'], ['shardcast_sockets', 'gauge'], ['shardcast_rooms', 'gauge'],
      ['shardcast_online_users', 'gauge'], ['shardcast_shard_connections', 'gauge'], ['shardcast_shard_sockets', 'gauge'],
      ['shardcast_shard_queue_depth', 'gauge'], ['shardcast_connections_opened_total', 'counter'],
      ['shardcast_messages_delivered_total', 'counter'], ['shardcast_messages_dropped_total', 'counter'],
      ['shardcast_bytes_received_total', 'counter'], ['shardcast_bytes_sent_total', 'counter'],
      ['shardcast_tcp_connections', 'gauge'], ['shardcast_connection_capacity', 'gauge'],
      ['shardcast_connections_refused_total', 'counter'],
    ]) {
      assert.equal(m.families.get(name)?.type, type, `${name} should be a ${type}: ${JSON.stringify(m.families.get(name))}`);
    }
    assert.deepEqual(gauges(m), expectGauges(0, 0, 0, 0));
    for (const name of ['shardcast_shard_connections', 'shardcast_shard_sockets', 'shardcast_shard_queue_depth']) {
      assert.deepEqual([...labelValues(m, name, 'shard')].sort(), ['0', '1'], `${name}: one series per shard`);
    }
    assert.equal(val(m, 'shardcast_connections_opened_total'), 0);
    assert.equal(val(m, 'shardcast_messages_dropped_total', { reason: 'slow_consumer' }), 0);
    for (const reason of REFUSE_REASONS) assert.equal(val(m, 'shardcast_connections_refused_total', { reason }), 0, `refused ${reason}`);
    // No client yet: the open TCP connections are the scrape's own (and at most a pooled one or two).
    const tcp = val(m, 'shardcast_tcp_connections');
    assert.ok(tcp >= 1 && tcp <= 3, `shardcast_tcp_connections ${tcp}`);
    const stats = (await api(server, 'GET', '/api/stats')).body;
    assert.ok(stats.connectionCapacity > 0, JSON.stringify(stats));
    assert.equal(val(m, 'shardcast_connection_capacity'), stats.connectionCapacity, 'the gauge and GET /api/stats agree');
    assertBoundedLabels(m, 2);
  });

  it('after traffic: still valid, with the histogram, and every family documented', async () => {
    const room = secret('room');
    const a = await connectAs(server.url, secret('user'));
    const b = await connectAs(server.url, secret('user'));
    assertSuccess(await emitWithAck(a, 'join-room', { roomName: room }));
    assertSuccess(await emitWithAck(b, 'join-room', { roomName: room }));
    const got = waitForEvent(b, 'note');
    assertSuccess(await emitWithAck(a, 'custom-event', { event: 'note', data: { n: 1 }, roomName: room }));
    await got;
    assertFailure(await emitWithAck(a, 'no-such-event', {}), 'UNKNOWN_EVENT');
    const m = await scrape(server);
    const histogram = m.families.get('shardcast_broadcast_fanout_seconds');
    assert.equal(histogram?.type, 'histogram', 'shardcast_broadcast_fanout_seconds is a histogram');
    assert.ok(val(m, 'shardcast_broadcast_fanout_seconds_count') >= 1);
    for (const f of m.families.values()) {
      assert.match(f.name, /^shardcast_/, `${f.name}: every metric is in the shardcast_ namespace`);
      assert.ok(f.help.length >= 10, `${f.name}: HELP "${f.help}" says little`);
      if (f.type === 'counter') assert.match(f.name, /_total$/, `counter ${f.name} should end in _total`);
    }
    assertBoundedLabels(m, 2);
  });

  it('the README\'s Metrics section documents exactly the metrics /metrics exports', async () => {
    const clients = await exerciseEverything(server);
    const m = await scrape(server);
    const readme = fs.readFileSync(path.join(REPO_ROOT, 'README.md'), 'utf8');
    const section = /\n## Metrics\n([\s\S]*?)\n## /.exec(readme);
    assert.ok(section, 'README.md has a "## Metrics" section');
    const rows = new Map();
    for (const line of section[1].split('\n')) {
      const row = /^\|\s*`(shardcast_[a-z0-9_]+)`\s*\|\s*(\w+)\s*\|([^|]*)\|\s*(.+?)\s*\|$/.exec(line);
      if (row) rows.set(row[1], { type: row[2], labels: row[3], meaning: row[4] });
    }
    assert.deepEqual([...rows.keys()].sort(), [...m.families.keys()].sort(), 'README table rows vs exported families');
    for (const [name, row] of rows) {
      const f = m.families.get(name);
      assert.equal(row.type, f.type, `${name}: README says ${row.type}, /metrics says ${f.type}`);
      const labels = new Set(f.samples.flatMap((s) => Object.keys(s.labels)).filter((l) => l !== 'le'));
      const documented = new Set([...row.labels.matchAll(/`([a-z_]+)`/g)].map((x) => x[1]));
      assert.deepEqual([...documented].sort(), [...labels].sort(), `${name}: labels in the README`);
    }
    for (const c of clients) c.disconnect();
  });
});

describe('/metrics: gauges follow connections however they end (SHARDS=2)', () => {
  let server;
  // Short heartbeat and connect deadlines, so that the raw clients below time out quickly.
  const PING_INTERVAL_MS = 1500;
  const PING_TIMEOUT_MS = 1000;
  before(async () => {
    server = await startServer({ SHARDS: 2, PING_INTERVAL_MS, PING_TIMEOUT_MS, CONNECT_TIMEOUT_MS: 1500 });
  });
  after(() => server.stop());

  it('clients → gauges; closed by disconnect(), SIGKILL of the client process, ping timeout, connect timeout', async () => {
    const m0 = await scrape(server);
    assert.deepEqual(gauges(m0), expectGauges(0, 0, 0, 0), 'a fresh broker');
    const closed = (m, reason) => cnt(m, 'shardcast_connections_closed_total', { reason });

    // 1. Ten socket.io clients in this process: 6 users (4 of them with two
    // sockets), 4 rooms.
    const users = Array.from({ length: 6 }, () => secret('user'));
    const rooms = Array.from({ length: 4 }, () => secret('room'));
    const clients = [];
    for (let i = 0; i < 10; i++) clients.push(await connectAs(server.url, users[i % 6]));
    for (let i = 0; i < 10; i++) assertSuccess(await emitWithAck(clients[i], 'join-room', { roomName: rooms[i % 3] }));
    assertSuccess(await emitWithAck(clients[0], 'join-room', { roomName: rooms[3] }));
    // Everything above was acknowledged: the very next scrape must show it.
    const m1 = await scrape(server);
    assert.deepEqual(gauges(m1), expectGauges(10, 10, 4, 6), 'after 10 clients, 6 users, 4 rooms');
    const perShard = [...m1.samples.filter((s) => s.name === 'shardcast_shard_connections')].map((s) => `${s.labels.shard}:${s.value}`);
    // The same numbers as the API's own view, shard by shard.
    const stats = (await api(server, 'GET', '/api/stats')).body;
    assert.deepEqual(
      { connections: stats.connections, rooms: stats.rooms, onlineUsers: stats.onlineUsers, perShard: stats.connectionsPerShard },
      { connections: 10, rooms: 4, onlineUsers: 6, perShard: [0, 1].map((shard) => val(m1, 'shardcast_shard_sockets', { shard: String(shard) })) },
      'GET /api/stats agrees with /metrics',
    );
    assert.equal(val(m1, 'shardcast_connections_opened_total'), 10);
    // The tables behind the gauges, entry by entry: 10 sessions and sockets,
    // 11 room memberships in 4 rooms, whose home records hold 2+2+2+1 users.
    const entries = (m) => Object.fromEntries(['sessions', 'local_sockets', 'local_room_members', 'local_user_sockets',
      'home_rooms', 'home_room_users', 'home_users'].map((table) => [table, val(m, 'shardcast_table_entries', { table })]));
    assert.deepEqual(entries(m1), { sessions: 10, local_sockets: 10, local_room_members: 11, local_user_sockets: 10,
      home_rooms: 4, home_room_users: 7, home_users: 6 }, 'shardcast_table_entries with 10 clients');
    assert.equal(val(m1, 'shardcast_live_objects', { kind: 'socket' }), 10, 'live sockets');

    // 2. A separate client process with 4 connections (4 new users; 2 join an
    // existing room, 2 a new one), killed with SIGKILL: no close handshake.
    const killedRoom = secret('room');
    const holder = await startHolder(server.url, [
      { userId: secret('user'), rooms: [rooms[0]] },
      { userId: secret('user'), rooms: [rooms[1]] },
      { userId: secret('user'), rooms: [killedRoom] },
      { userId: secret('user'), rooms: [killedRoom, rooms[2]] },
    ]);
    assert.deepEqual(gauges(await scrape(server)), expectGauges(14, 14, 5, 10), 'with the client process');
    holder.child.kill('SIGKILL');
    assert.equal((await holder.exited).signal, 'SIGKILL');
    await waitForGauges(server, expectGauges(10, 10, 4, 6), 'after killing the client process');
    const m2 = await scrape(server);
    assert.equal(closed(m2, 'transport_error') - closed(m1, 'transport_error'), 4,
      'the 4 killed connections count as closed with reason="transport_error"');

    // 3. A raw client that stops answering the server's pings (heartbeat timeout).
    const silent = await rawConnect(server, { autoPong: false });
    const connectReply = await silent.connectNs('/', { userId: secret('user') });
    assert.equal(connectReply.type, 0, `CONNECT should succeed: ${connectReply.raw}`);
    await silent.waitEvent('authenticated');
    const heartbeatRoom = secret('room');
    assertSuccess((await silent.emitWithAck(['join-room', { roomName: heartbeatRoom }]))[0]);
    const m3 = await scrape(server);
    assert.deepEqual(gauges(m3), expectGauges(11, 11, 5, 7), 'with the silent raw client');
    const closeInfo = await silent.waitClosed(PING_INTERVAL_MS + PING_TIMEOUT_MS + 5000);
    assert.ok(closeInfo.at - silent.openedAt >= PING_INTERVAL_MS + PING_TIMEOUT_MS - 100,
      `the server closed the silent client after ${closeInfo.at - silent.openedAt} ms, before its heartbeat deadline`);
    assert.ok(silent.pings.length >= 1, 'the server pinged the silent client');
    await waitForGauges(server, expectGauges(10, 10, 4, 6), 'after the heartbeat timeout');
    const m4 = await scrape(server);
    assert.equal(closed(m4, 'ping_timeout') - closed(m3, 'ping_timeout'), 1, 'reason="ping_timeout" counts the silent client');
    assert.ok(clients.every((c) => c.connected), 'socket.io clients that answer pings stay connected');

    // 4. A raw WebSocket that never sends the Socket.IO CONNECT: a connection, not a socket.
    const mute = await rawConnect(server, { autoPong: true });
    assert.deepEqual(gauges(await scrape(server)), { ...expectGauges(11, 10, 4, 6) }, 'an Engine.IO session without CONNECT');
    await mute.waitClosed(5000);
    await waitForGauges(server, expectGauges(10, 10, 4, 6), 'after the connect timeout');
    const m5 = await scrape(server);
    assert.equal(closed(m5, 'connect_timeout') - closed(m4, 'connect_timeout'), 1, 'reason="connect_timeout"');

    // 5. Clean disconnect() of the ten clients.
    for (const c of clients) c.disconnect();
    await waitForGauges(server, expectGauges(0, 0, 0, 0), 'after disconnect()');
    const m6 = await scrape(server);
    assert.equal(closed(m6, 'client_close') - closed(m5, 'client_close'), 10, 'reason="client_close" counts each disconnect()');
    assert.equal(val(m6, 'shardcast_connections_opened_total'), 16, 'opened: 10 + 4 + 1 + 1');
    assert.equal(sumOf(m6, 'shardcast_connections_closed_total'), 16, 'every opened connection was counted as closed once');
    for (const s of m6.samples.filter((x) => x.name === 'shardcast_shard_connections' || x.name === 'shardcast_shard_sockets')) {
      assert.equal(s.value, 0, `${seriesKey(s.name, s.labels)} (per shard before: ${perShard.join(' ')})`);
    }
    // Every table entry and every socket and session object is gone too
    // (what loadtest/soak.mjs checks after thousands of connections).
    let left;
    await waitUntil(async () => {
      const m = await scrape(server);
      left = m.samples.filter((x) => (x.name === 'shardcast_table_entries' || x.name === 'shardcast_live_objects') && x.value !== 0)
        .map((x) => `${seriesKey(x.name, x.labels)} ${x.value}`);
      return left.length === 0;
    }, 5000, () => `left after every client went: ${left.join(', ')}`, 50);
  });
});

describe('/metrics: long-polling sessions count like WebSocket ones (SHARDS=2)', () => {
  let server;
  const PING_INTERVAL_MS = 1500;
  const PING_TIMEOUT_MS = 1000;
  before(async () => { server = await startServer({ SHARDS: 2, PING_INTERVAL_MS, PING_TIMEOUT_MS }); });
  after(() => server.stop());

  it('a polling client and an upgraded one count once each; a killed polling client leaves by ping timeout', async () => {
    const m0 = await scrape(server);
    assert.deepEqual(gauges(m0), expectGauges(0, 0, 0, 0), 'a fresh broker');
    const room = secret('room');
    const polling = await connectAs(server.url, secret('user'), { transports: ['polling'] });
    const upgrading = await connectAs(server.url, secret('user'), { transports: ['polling', 'websocket'] });
    for (const s of [polling, upgrading]) assertSuccess(await emitWithAck(s, 'join-room', { roomName: room }));
    await waitUntil(() => upgrading.io.engine.transport.name === 'websocket', 5000, () => 'the client did not upgrade');
    assert.equal(polling.io.engine.transport.name, 'polling');
    // The upgrade moves the session to the WebSocket: still one connection.
    await waitForGauges(server, expectGauges(2, 2, 1, 2), 'a polling client and an upgraded one');
    const m1 = await scrape(server);
    assert.equal(val(m1, 'shardcast_connections_opened_total'), 2, 'one opened connection per client, upgrade or not');
    assert.equal(sumOf(m1, 'shardcast_connections_closed_total'), 0, 'an upgrade closes no connection');

    // A polling client has no TCP connection to lose: only the heartbeat can tell it is gone.
    const holder = await startHolder(server.url, [{ userId: secret('user'), rooms: [room], transports: ['polling'] }]);
    assert.deepEqual(gauges(await scrape(server)), expectGauges(3, 3, 1, 3), 'with the polling client process');
    holder.child.kill('SIGKILL');
    await holder.exited;
    await waitForGauges(server, expectGauges(2, 2, 1, 2), 'after killing the polling client process',
      PING_INTERVAL_MS + PING_TIMEOUT_MS + 8000);
    const m2 = await scrape(server);
    // Every reason is exported from the start (at 0); only the non-zero ones tell what happened.
    const closedNow = Object.fromEntries(m2.samples.filter((s) => s.name === 'shardcast_connections_closed_total' && s.value > 0).map((s) => [s.labels.reason, s.value]));
    assert.deepEqual(closedNow, { ping_timeout: 1 }, 'the killed polling session is closed by the heartbeat');

    polling.disconnect();
    upgrading.disconnect();
    await waitForGauges(server, expectGauges(0, 0, 0, 0), 'after disconnect()');
    const m3 = await scrape(server);
    assert.equal(cnt(m3, 'shardcast_connections_closed_total', { reason: 'client_close' }), 2);
    assert.equal(val(m3, 'shardcast_connections_opened_total'), 3);
  });
});

describe('/metrics: counters count exactly what happened (SHARDS=2)', () => {
  let server;
  before(async () => { server = await startServer({ SHARDS: 2 }); });
  after(() => server.stop());

  it('events received by name and requests rejected by code', async () => {
    const [ua, ub] = [secret('user'), secret('user')];
    const room = secret('room');
    const a = await connectAs(server.url, ua);
    const b = await connectAs(server.url, ub);
    assertSuccess(await emitWithAck(a, 'join-room', { roomName: room }));
    assertSuccess(await emitWithAck(b, 'join-room', { roomName: room }));
    const before = await scrape(server);

    for (let i = 0; i < 5; i++) assertSuccess(await emitWithAck(a, 'ping', {}));
    for (let i = 0; i < 3; i++) assertSuccess(await emitWithAck(a, 'custom-event', { event: 'note', data: i, roomName: room }));
    assertSuccess(await emitWithAck(b, 'join-room', { roomName: secret('room') }));
    assertFailure(await emitWithAck(b, 'join-room', { roomName: 42 }), 'VALIDATION_ERROR');
    assertFailure(await emitWithAck(b, 'leave-room', { roomName: secret('room') }), 'NOT_IN_ROOM');
    assertSuccess(await emitWithAck(a, 'private-message', { targetUserId: ub, message: 'hi' }));
    assertFailure(await emitWithAck(a, 'private-message', { targetUserId: secret('user'), message: 'hi' }), 'USER_OFFLINE');
    assertFailure(await emitWithAck(a, 'authenticate', { userId: secret('user') }), 'VALIDATION_ERROR');
    // Without an ack: the refusal is an `error` event, counted all the same.
    const error = waitForEvent(b, 'error', 5000, (e) => e.code === 'UNKNOWN_EVENT');
    b.emit('not-an-event', {});
    await error;

    const after = await scrape(server);
    const d = (name, labels) => cnt(after, name, labels) - cnt(before, name, labels);
    const events = { ping: 5, 'custom-event': 3, 'join-room': 2, 'leave-room': 1, 'private-message': 2, authenticate: 1, other: 1 };
    for (const event of EVENT_LABELS) {
      assert.equal(d('shardcast_events_received_total', { event }), events[event] ?? 0, `events_received_total{event="${event}"}`);
    }
    const codes = { VALIDATION_ERROR: 2, NOT_IN_ROOM: 1, USER_OFFLINE: 1, UNKNOWN_EVENT: 1 };
    for (const code of CODES) {
      assert.equal(d('shardcast_requests_rejected_total', { code }), codes[code] ?? 0, `requests_rejected_total{code="${code}"}`);
    }
    assert.ok(d('shardcast_bytes_received_total') > 0 && d('shardcast_bytes_sent_total') > 0, 'bytes in and out grow');
  });

  it('broadcasts by scope, messages delivered (= what the API reports), fan-out histogram, HTTP requests', async () => {
    const room = secret('room');
    const users = [secret('user'), secret('user'), secret('user')];
    const [a, b, c] = await Promise.all(users.map((u) => connectAs(server.url, u)));
    for (const s of [a, b, c]) assertSuccess(await emitWithAck(s, 'join-room', { roomName: room }));
    const lurker = await connect(server.url); // connected, never authenticated
    // Earlier tests' clients are gone and presence / join announcements have
    // all been delivered: the counters are still.
    let before;
    let previous;
    await waitUntil(async () => {
      before = await scrape(server);
      const still = previous !== undefined && val(before, 'shardcast_connections') === 4
        && val(before, 'shardcast_messages_delivered_total') === val(previous, 'shardcast_messages_delivered_total');
      previous = before;
      return still;
    }, 5000, () => `connections ${val(before, 'shardcast_connections')}`, 150);
    const connections = val(before, 'shardcast_connections');

    // A relay to the room (2 recipients), each API scope once, a private message.
    const relayed = [waitForEvent(b, 'relay'), waitForEvent(c, 'relay')];
    assertSuccess(await emitWithAck(a, 'custom-event', { event: 'relay', data: 1, roomName: room }));
    await Promise.all(relayed);
    const toRoom = await api(server, 'POST', `/api/rooms/${room}/broadcast`, { event: 'to-room', data: 1 });
    const toAll = await api(server, 'POST', '/api/broadcast', { event: 'to-all', data: 1 });
    const toUser = await api(server, 'POST', `/api/users/${users[1]}/send`, { event: 'to-user', data: 1 });
    const toSocket = await api(server, 'POST', `/api/sockets/${c.id}/send`, { event: 'to-socket', data: 1 });
    // A socket id that is not one at all: nobody to reach, but a publish all the same.
    const toNoSocket = await api(server, 'POST', '/api/sockets/not-a-socket-id/send', { event: 'to-socket', data: 1 });
    assert.equal(toNoSocket.body.delivered, 0);
    for (const r of [toRoom, toAll, toUser, toSocket, toNoSocket]) assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.deepEqual([toRoom.body.delivered, toAll.body.delivered, toUser.body.delivered, toSocket.body.delivered], [3, connections, 1, 1]);
    assertSuccess(await emitWithAck(a, 'private-message', { targetUserId: users[2], message: 'hi' }));
    await Promise.all([
      ...[a, b, c].map((s) => waitForEvent(s, 'to-room')),
      ...[a, b, c, lurker].map((s) => waitForEvent(s, 'to-all')),
      waitForEvent(b, 'to-user'), waitForEvent(c, 'to-socket'), waitForEvent(c, 'private-message'),
    ]);
    const notFound = await api(server, 'GET', `/api/users/${users[0]}/nowhere/${secret('x')}`);
    assert.equal(notFound.status, 404);
    assert.equal((await api(server, 'GET', `/${secret('nope')}`)).status, 404);

    const after = await scrape(server);
    const d = (name, labels) => cnt(after, name, labels) - cnt(before, name, labels);
    const scopes = { room: 2, all: 1, user: 2, socket: 2 };
    for (const scope of SCOPES) assert.equal(d('shardcast_broadcasts_total', { scope }), scopes[scope], `broadcasts_total{scope="${scope}"}`);
    const delivered = 2 + toRoom.body.delivered + toAll.body.delivered + toUser.body.delivered + toSocket.body.delivered + 1;
    assert.equal(d('shardcast_messages_delivered_total'), delivered, 'messages_delivered_total: relay 2 + API deliveries + private message 1');
    assert.equal(d('shardcast_messages_dropped_total', { reason: 'slow_consumer' }), 0);
    // One sample per publish and shard that delivered something: 6 publishes, 2 shards.
    const samples = d('shardcast_broadcast_fanout_seconds_count');
    assert.ok(samples >= 6 && samples <= 12, `fan-out histogram samples: ${samples}, expected 6..12`);
    assert.ok(d('shardcast_broadcast_fanout_seconds_sum') > 0);
    const http = (route, status) => d('shardcast_http_requests_total', { route, status: String(status) });
    assert.equal(http('/api/rooms/{room}/broadcast', 200), 1);
    assert.equal(http('/api/broadcast', 200), 1);
    assert.equal(http('/api/users/{userId}/send', 200), 1);
    assert.equal(http('/api/sockets/{socketId}/send', 200), 2);
    assert.equal(http('/api/other', 404), 1);
    assert.equal(http('other', 404), 1);
    assert.equal(http('/metrics', 200), 1, 'the previous scrape is counted by the next one');
    assertBoundedLabels(after, 2);
  });

  it('label sets stay bounded: 50 unknown event names add only event="other"; no room, user or event name leaks', async () => {
    const user = secret('user-leak');
    const room = secret('room-leak');
    const socket = await connectAs(server.url, user);
    assertSuccess(await emitWithAck(socket, 'join-room', { roomName: room }));
    await api(server, 'POST', `/api/rooms/${room}/broadcast`, { event: secret('api-event'), data: 1 });
    await api(server, 'POST', `/api/users/${user}/send`, { event: 'x', data: 1 });
    await api(server, 'GET', `/api/users/${user}`);
    const before = await scrape(server);
    const names = Array.from({ length: 50 }, (_, i) => secret(`unknown-event-${i}`));
    for (const name of names) assertFailure(await emitWithAck(socket, name, { roomName: room }), 'UNKNOWN_EVENT');
    const after = await scrape(server);

    const added = [...after.keys].filter((k) => !before.keys.has(k));
    const mayAppear = [
      seriesKey('shardcast_events_received_total', { event: 'other' }),
      seriesKey('shardcast_requests_rejected_total', { code: 'UNKNOWN_EVENT' }),
      seriesKey('shardcast_http_requests_total', { route: '/metrics', status: '200' }),
    ];
    assert.deepEqual(added.filter((k) => !mayAppear.includes(k)), [], 'no other series appeared');
    const d = (name, labels) => cnt(after, name, labels) - cnt(before, name, labels);
    assert.equal(d('shardcast_events_received_total', { event: 'other' }), 50);
    assert.equal(d('shardcast_requests_rejected_total', { code: 'UNKNOWN_EVENT' }), 50);
    assert.deepEqual([...labelValues(after, 'shardcast_events_received_total', 'event')].filter((e) => !EVENT_LABELS.includes(e)), []);
    assertBoundedLabels(after, 2);
    for (const leak of [user, room, socket.id, ...names]) {
      assert.ok(!after.text.includes(leak), `/metrics must not mention ${leak}`);
    }
  });

  // More publishes between two scrapes than a shard keeps latency samples for (20,000).
  it('the fan-out histogram counts every publish, however many come between two scrapes', async () => {
    const room = secret('room');
    const socket = await connectAs(server.url, secret('user'));
    assertSuccess(await emitWithAck(socket, 'join-room', { roomName: room }));
    let received = 0;
    socket.on('burst', () => { received += 1; });
    await sleep(100);
    const before = await scrape(server);
    const PUBLISHES = 21000;
    for (let sent = 0; sent < PUBLISHES; sent += 1000) {
      const publishes = Array.from({ length: 1000 }, () => ({ scope: 'room', roomName: room, event: 'burst', data: 1 }));
      const r = await api(server, 'POST', '/api/batch', { publishes });
      assert.equal(r.status, 200, JSON.stringify(r.body));
    }
    await waitUntil(() => received === PUBLISHES, 20000, () => `received ${received} of ${PUBLISHES}`);
    const after = await scrape(server);
    // The room's one member is on one shard: one sample per publish.
    assert.equal(cnt(after, 'shardcast_broadcast_fanout_seconds_count') - cnt(before, 'shardcast_broadcast_fanout_seconds_count'), PUBLISHES);
    assert.equal(cnt(after, 'shardcast_messages_delivered_total') - cnt(before, 'shardcast_messages_delivered_total'), PUBLISHES);
  });

  it('publish → written histogram: one sample per WebSocket write of published messages, _sum grows, buckets cumulative; polling not timed', async () => {
    const room = secret('room');
    const N = 4;
    const sockets = [];
    for (let i = 0; i < N; i++) sockets.push(await connectAs(server.url, secret('user')));
    const poller = await connectAs(server.url, secret('user'), { transports: ['polling'] });
    const everyone = [...sockets, poller];
    for (const s of everyone) assertSuccess(await emitWithAck(s, 'join-room', { roomName: room }));
    // Whatever the joins sent has been written once a later broadcast has arrived everywhere.
    const settled = everyone.map((s) => waitForEvent(s, 'settle'));
    assert.equal((await api(server, 'POST', `/api/rooms/${room}/broadcast`, { event: 'settle', data: 0 })).status, 200);
    await Promise.all(settled);
    const before = await scrape(server);
    const PUBLISHES = 3;
    for (let i = 1; i <= PUBLISHES; i++) {
      const got = everyone.map((s) => waitForEvent(s, 'timed', 5000, (data) => data === i));
      const r = await api(server, 'POST', `/api/rooms/${room}/broadcast`, { event: 'timed', data: i });
      assert.equal(r.body.delivered, N + 1, JSON.stringify(r.body));
      await Promise.all(got);
    }
    const after = await scrape(server);
    const d = (name, labels) => cnt(after, name, labels) - cnt(before, name, labels);
    assert.equal(d('shardcast_messages_delivered_total'), PUBLISHES * (N + 1), 'nothing else was delivered meanwhile');
    // Each publish arrived everywhere before the next was sent, so it left
    // in a write of its own on each WebSocket: one sample per publish and
    // WebSocket client. The polling client's GETs are not timed.
    const H = 'shardcast_broadcast_written_seconds';
    assert.equal(after.families.get(H)?.type, 'histogram', `${H} is a histogram`);
    assert.equal(d(`${H}_count`), PUBLISHES * N, `${H}_count grows by one per WebSocket write`);
    const sum = d(`${H}_sum`);
    assert.ok(sum > 0 && sum < PUBLISHES * N * 5, `${H}_sum grows by the samples' seconds: ${sum}`);
    // Buckets: cumulative in each scrape, and so are the increments; +Inf counts every sample.
    const buckets = (m) => m.samples.filter((x) => x.name === `${H}_bucket`)
      .map((x) => [parseFloatText(x.labels.le), x.value]).sort((a, b) => a[0] - b[0]);
    const [was, now] = [buckets(before), buckets(after)];
    assert.equal(now.length, was.length, 'same buckets in both scrapes');
    assert.ok(now.length >= 10, `${now.length} buckets`);
    for (let i = 0; i < now.length; i++) {
      const grew = now[i][1] - was[i][1];
      assert.ok(grew >= 0, `bucket le=${now[i][0]} grew by ${grew}`);
      if (i > 0) {
        assert.ok(now[i][1] >= now[i - 1][1], `buckets cumulative: ${JSON.stringify(now)}`);
        assert.ok(grew >= now[i - 1][1] - was[i - 1][1], `bucket increments cumulative: ${JSON.stringify(was)} → ${JSON.stringify(now)}`);
      }
    }
    assert.equal(now.at(-1)[0], Infinity);
    assert.equal(now.at(-1)[1] - was.at(-1)[1], PUBLISHES * N, 'the +Inf bucket counts every sample');
    // The publish → queued histogram is there beside it: one sample per publish and shard.
    const queued = d('shardcast_broadcast_fanout_seconds_count');
    assert.ok(queued >= PUBLISHES && queued <= 2 * PUBLISHES, `fan-out (queued) samples: ${queued}`);
    for (const s of everyone) s.disconnect();
  });

  it('connections closed for what their client sent count by reason: protocol_error (1002, 1007), payload_too_large (1009)', async () => {
    // The clients of the tests before are closed as they end: let their closes land first.
    await waitUntil(async () => val(await scrape(server), 'shardcast_connections') === 0, 5000, () => 'connections left from earlier tests');
    const before = await scrape(server);
    const closeWith = async (send) => {
      const raw = await rawConnect(server, { autoPong: true });
      assert.equal((await raw.connectNs('/')).type, 0);
      await send(raw);
      return (await raw.waitClosed(5000)).code;
    };
    assert.equal(await closeWith((raw) => raw.send('garbage')), 1002);
    assert.equal(await closeWith((raw) => raw.send(Buffer.from([0x34, 0x32, 0xff]), { binary: false })), 1007);
    assert.equal(await closeWith((raw) => raw.send(`4${'x'.repeat(1000000)}`)), 1009);
    const want = Object.fromEntries(CLOSE_REASONS.map((r) => [r, { protocol_error: 2, payload_too_large: 1 }[r] ?? 0]));
    let got;
    await waitUntil(async () => {
      const after = await scrape(server);
      got = Object.fromEntries(CLOSE_REASONS.map((r) => [r, cnt(after, 'shardcast_connections_closed_total', { reason: r })
        - cnt(before, 'shardcast_connections_closed_total', { reason: r })]));
      return JSON.stringify(got) === JSON.stringify(want);
    }, 5000, () => `connections_closed_total grew by ${JSON.stringify(got)}, expected ${JSON.stringify(want)}`);
  });

  it('a refused CONNECT (AUTH_FAILED, LIMIT_EXCEEDED) counts in requests_rejected_total', async () => {
    const jwtSecret = 'metrics-test-secret';
    const limited = await startServer({ SHARDS: 2, JWT_SECRET: jwtSecret, MAX_CONNECTIONS: 1 });
    try {
      const before = await scrape(limited);
      await connectExpectingError(limited.url, { auth: { token: 'not-a-jwt' } });
      const ok = await connect(limited.url, { auth: { token: signJwt({ sub: secret('user'), exp: nowSec() + 600 }, jwtSecret) } });
      const full = await connectExpectingError(limited.url, {});
      assert.match(full.message, /LIMIT_EXCEEDED/);
      const after = await scrape(limited);
      const d = (code) => cnt(after, 'shardcast_requests_rejected_total', { code }) - cnt(before, 'shardcast_requests_rejected_total', { code });
      ok.disconnect();
      assert.deepEqual({ AUTH_FAILED: d('AUTH_FAILED'), LIMIT_EXCEEDED: d('LIMIT_EXCEEDED') }, { AUTH_FAILED: 1, LIMIT_EXCEEDED: 1 });
    } finally {
      await limited.stop();
    }
  });
});

// ---------------------------------------------------------------------------
// promtool, Prometheus, and the Grafana dashboard
// ---------------------------------------------------------------------------

/** The path of an executable on PATH (or $<NAME>_BIN), or null. */
function findBinary(name) {
  const override = process.env[`${name.toUpperCase()}_BIN`];
  if (override) return override;
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    const candidate = path.join(dir, name);
    try { fs.accessSync(candidate, fs.constants.X_OK); return candidate; } catch { /* next */ }
  }
  return null;
}

const PROMETHEUS = findBinary('prometheus');
const PROMTOOL = findBinary('promtool');
// Only CI=true counts: CI=false (or an empty CI) is a developer machine.
const IN_CI = process.env.CI === 'true';
/** Skip reason when a tool is missing outside CI; under CI the tests run and fail. */
const missing = (bin, name) => (bin || IN_CI ? false
  : `${name} not found on PATH: install Debian's prometheus package (apt-get install prometheus) to run this test`);

function requireBinary(bin, name, pkg = 'prometheus') {
  if (!bin) throw new Error(`${name} is required (CI=${process.env.CI}); .ci/run installs Debian's ${pkg} package`);
}

/** A TCP port free right now on 127.0.0.1. */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
  });
}

// ---------------------------------------------------------------------------
// A real redis-server, and shardcast nodes in cluster mode on it
// ---------------------------------------------------------------------------

const REDIS_SERVER = findBinary('redis-server');
/** Skip reason when redis-server is missing outside CI; under CI the tests run and fail. */
const redisMissing = REDIS_SERVER || IN_CI ? false
  : 'redis-server not found on PATH: install Debian\'s redis-server package (apt-get install redis-server) to run the cluster-mode metrics tests';

/** One Redis command over RESP on a fresh connection; resolves the first line of the reply ("+PONG", ":2"). */
function redisCommand(port, ...args) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let reply = '';
    socket.setTimeout(3000, () => { socket.destroy(); reject(new Error(`redis ${args[0]}: no answer`)); });
    socket.on('error', reject);
    socket.on('connect', () => {
      socket.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`);
    });
    socket.on('data', (d) => {
      reply += d;
      const end = reply.indexOf('\r\n');
      if (end >= 0) { socket.destroy(); resolve(reply.slice(0, end)); }
    });
  });
}

/**
 * redis-server on a free port of 127.0.0.1 with no persistence (--save ''
 * --appendonly no), in a temporary directory of its own. Resolves once it
 * answers PING. Returns { port, url, output(), kill() (SIGKILL), stop() (kill
 * and remove the directory) }.
 */
async function startRedis() {
  requireBinary(REDIS_SERVER, 'redis-server', 'redis-server');
  for (let attempt = 1; ; attempt++) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shardcast-redis-'));
    const port = await freePort();
    let output = '';
    const child = spawn(REDIS_SERVER, [
      '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
      '--dir', dir, '--daemonize', 'no',
    ], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.on('data', (d) => { output += d; });
    child.stderr.on('data', (d) => { output += d; });
    const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
    const gone = () => child.exitCode !== null || child.signalCode !== null;
    const killOnExit = () => { try { child.kill('SIGKILL'); } catch { /* gone */ } };
    process.on('exit', killOnExit);
    const redis = {
      port,
      url: `redis://127.0.0.1:${port}`,
      output: () => output,
      async kill() { if (!gone()) child.kill('SIGKILL'); await exited; },
      async stop() {
        await redis.kill();
        process.off('exit', killOnExit);
        fs.rmSync(dir, { recursive: true, force: true });
      },
    };
    let reply = 'no answer';
    try {
      // Its own "ready to accept connections" line (not another process's Redis on the port), then PING.
      await waitUntil(async () => {
        if (gone()) return true;
        if (!/ready to accept connections/i.test(output)) return false;
        reply = await redisCommand(port, 'PING').catch((e) => e.message);
        return reply === '+PONG';
      }, 10000, () => `redis-server on port ${port}: ${reply}\n${output}`, 50);
    } catch (e) {
      await redis.stop();
      throw e;
    }
    if (!gone()) return redis;
    await redis.stop();
    // Another process took the port between freePort() and the bind: try another one.
    if (attempt >= 3) throw new Error(`redis-server did not start (port ${port}):\n${output}`);
  }
}

/**
 * `count` shardcast nodes (SHARDS=2) on `redis`, with a prefix of their own;
 * resolves once every node counts `count` live nodes and Redis up.
 */
async function startClusterNodes(redis, count = 2) {
  const env = {
    SHARDS: 2, REDIS_URL: redis.url, REDIS_PREFIX: secret('metrics'), REDIS_ADAPTER_KEY: 'socket.io',
    // Defaults, whatever the developer's shell says.
    CLUSTER_NODE_TTL: undefined, CLUSTER_REQUEST_TIMEOUT: undefined,
  };
  const nodes = [];
  try {
    for (let i = 0; i < count; i++) nodes.push(await startServer(env));
    let seen = [];
    await waitUntil(async () => {
      seen = [];
      for (const node of nodes) {
        const m = await scrape(node);
        seen.push({ nodes: val(m, 'shardcast_cluster_nodes'), redisUp: val(m, 'shardcast_cluster_redis_up') });
      }
      return seen.every((s) => s.nodes === count && s.redisUp === 1);
    }, 15000, () => `cluster nodes: ${JSON.stringify(seen)}`, 100);
  } catch (e) {
    for (const node of nodes) await node.stop();
    throw e;
  }
  return nodes;
}

/** The adapter channel of a room (REDIS_ADAPTER_KEY=socket.io, namespace /). */
const roomChannel = (room) => `socket.io#/#${room}#`;

/**
 * Cross-node traffic on two cluster nodes A and B: a room with one member on
 * each, a relay from A's member (reaches B's) and an HTTP room broadcast on B
 * (reaches A's), so that each node receives from the other and records
 * delivery lag; then a message no node can read, published straight on the
 * room's channel, which each node counts as undecodable. Returns the
 * clients (the caller disconnects them) and the room.
 */
async function exerciseCluster(redis, [nodeA, nodeB]) {
  const room = secret('room');
  const a = await connectAs(nodeA.url, secret('user'));
  const b = await connectAs(nodeB.url, secret('user'));
  assertSuccess(await emitWithAck(a, 'join-room', { roomName: room }));
  assertSuccess(await emitWithAck(b, 'join-room', { roomName: room }));
  const relayed = waitForEvent(b, 'across');
  assertSuccess(await emitWithAck(a, 'custom-event', { event: 'across', data: 1, roomName: room }));
  await relayed;
  const broadcast = waitForEvent(a, 'back');
  const r = await api(nodeB, 'POST', `/api/rooms/${room}/broadcast`, { event: 'back', data: 2 });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.delivered, 2, `a room broadcast counts its recipients on both nodes: ${JSON.stringify(r.body)}`);
  assert.ok(!r.body.partial, `not partial while Redis is up: ${JSON.stringify(r.body)}`);
  await broadcast;
  const undecodable = async () => Promise.all([nodeA, nodeB].map(async (n) => cnt(await scrape(n), 'shardcast_cluster_messages_undecodable_total')));
  const before = await undecodable();
  // Both nodes are subscribed to the room's channel (each has a member): Redis hands it to two subscribers.
  assert.equal(await redisCommand(redis.port, 'PUBLISH', roomChannel(room), 'not a socket.io adapter message'), ':2');
  let now = before;
  await waitUntil(async () => {
    now = await undecodable();
    return now.every((n, i) => n === before[i] + 1);
  }, 5000, () => `undecodable on A and B: ${now} (before: ${before})`, 50);
  return { clients: [a, b], room };
}

function loadDashboard() {
  return JSON.parse(fs.readFileSync(DASHBOARD, 'utf8'));
}

/** Every panel, nested ones (collapsed rows) included. */
function allPanels(dashboard) {
  const out = [];
  const walk = (panels) => { for (const p of panels || []) { out.push(p); walk(p.panels); } };
  walk(dashboard.panels);
  return out;
}

/**
 * The "Cluster" row (cluster mode's panels) and the panels under it: the row
 * is expanded, so they follow it on the grid, up to the next row. Null if
 * there is no such row.
 */
function clusterRow(dashboard) {
  const rows = dashboard.panels.filter((p) => p.type === 'row');
  const row = rows.find((p) => /^Cluster\b/.test(p.title));
  if (!row) return null;
  const end = Math.min(Infinity, ...rows.map((r) => r.gridPos.y).filter((y) => y > row.gridPos.y));
  const panels = dashboard.panels.filter((p) => p.type !== 'row' && p.gridPos.y > row.gridPos.y && p.gridPos.y < end);
  return { row, panels };
}

/** Every PromQL expression of the dashboard, with where it comes from and whether it is in the Cluster row. */
function dashboardExpressions(dashboard) {
  const exprs = [];
  const cluster = new Set(clusterRow(dashboard)?.panels ?? []);
  for (const panel of allPanels(dashboard)) {
    for (const t of panel.targets || []) {
      if (t.expr) exprs.push({ where: `panel "${panel.title}" ${t.refId}`, expr: t.expr, cluster: cluster.has(panel), panel: panel.title });
    }
  }
  for (const v of dashboard.templating?.list || []) {
    if (v.type !== 'query') continue;
    const query = typeof v.query === 'string' ? v.query : v.query?.query;
    // label_values(<selector>, <label>) is Grafana's; its selector is PromQL.
    const lv = /^\s*label_values\(\s*(.+?)\s*,\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$/.exec(query);
    exprs.push({ where: `variable $${v.name}`, expr: lv ? lv[1] : query });
  }
  return exprs;
}

/** Grafana's variables replaced by what they would expand to. */
function toPromQL(expr) {
  return expr
    .replace(/\$__rate_interval|\$__interval|\$__range|\$\{__rate_interval\}|\$\{__interval\}|\$\{__range\}/g, '1m')
    .replace(/\$\{[a-zA-Z_]\w*(?::\w+)?\}|\$[a-zA-Z_]\w*/g, '.*');
}

const PROMQL_WORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or',
  'unless', 'offset', 'Inf', 'NaN', 'inf', 'nan', 'atan2']);

/** Metric names an expression selects (identifiers that are not functions, keywords or labels). */
function metricNames(expr) {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
    .replace(/\{[^}]*\}/g, '{}')
    .replace(/\[[^\]]*\]/g, '[]')
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, '$1()');
  const names = [];
  const re = /[a-zA-Z_:][a-zA-Z0-9_:]*/g;
  let m;
  while ((m = re.exec(stripped))) {
    const prev = stripped[m.index - 1];
    if (prev && /[0-9.]/.test(prev)) continue; // part of a number such as 1e3
    const after = stripped.slice(m.index + m[0].length);
    if (/^\s*(?:(?:by|without)\s*\(\)\s*)?\(/.test(after)) continue; // a function or an aggregation
    if (PROMQL_WORDS.has(m[0])) continue;
    names.push(m[0]);
  }
  return names;
}

/** `name` is exported: a family of the scrape, or a histogram family's _bucket/_sum/_count. */
function exported(families, name) {
  if (families.has(name)) return true;
  const m = /^(.*)_(bucket|sum|count)$/.exec(name);
  return Boolean(m && families.get(m[1])?.type === 'histogram');
}

/**
 * Checks the metric names of every dashboard expression for which
 * `checked(name)` holds against the families of a scrape (each must be
 * exported); returns the families the dashboard uses.
 */
function checkDashboardNames(families, checked = () => true) {
  const used = new Set();
  for (const { where, expr } of dashboardExpressions(loadDashboard())) {
    const names = metricNames(toPromQL(expr));
    assert.ok(names.length > 0, `${where}: no metric in ${expr}`);
    for (const name of names.filter(checked)) {
      assert.ok(exported(families, name), `${where}: ${name} is not exported by the broker (${expr})`);
      used.add(families.has(name) ? name : name.replace(/_(bucket|sum|count)$/, ''));
    }
  }
  return used;
}

/** Traffic that makes every metric family appear (histogram, close reasons, rejections). */
async function exerciseEverything(server) {
  const room = secret('room');
  const a = await connectAs(server.url, secret('user'));
  const b = await connectAs(server.url, secret('user'));
  assertSuccess(await emitWithAck(a, 'join-room', { roomName: room }));
  assertSuccess(await emitWithAck(b, 'join-room', { roomName: room }));
  const got = waitForEvent(b, 'note');
  assertSuccess(await emitWithAck(a, 'custom-event', { event: 'note', data: 1, roomName: room }));
  await got;
  assertFailure(await emitWithAck(a, 'leave-room', { roomName: secret('room') }), 'NOT_IN_ROOM');
  assert.equal((await api(server, 'POST', '/api/broadcast', { event: 'hello', data: 1 })).status, 200);
  const c = await connect(server.url);
  c.disconnect();
  await waitUntil(async () => cnt(await scrape(server), 'shardcast_connections_closed_total', { reason: 'client_close' }) > 0, 5000);
  return [a, b];
}

describe('grafana/dashboard.json', () => {
  it('imports as is into Grafana 10+: DS_PROMETHEUS input, required plugins, ${DS_PROMETHEUS} on every panel and target', () => {
    const dashboard = loadDashboard();
    assert.deepEqual(
      dashboard.__inputs.map(({ name, type, pluginId }) => ({ name, type, pluginId })),
      [{ name: 'DS_PROMETHEUS', type: 'datasource', pluginId: 'prometheus' }],
    );
    const requires = Object.fromEntries(dashboard.__requires.map((r) => [`${r.type}:${r.id}`, r]));
    assert.ok(requires['grafana:grafana'] && Number(requires['grafana:grafana'].version.split('.')[0]) >= 10, 'requires Grafana 10+');
    assert.ok(requires['datasource:prometheus'], 'requires the Prometheus data source');
    assert.equal(dashboard.id, null, 'no database id in a shared dashboard');
    assert.ok(typeof dashboard.uid === 'string' && dashboard.uid.length > 0 && dashboard.uid.length <= 40);
    assert.ok(Number.isInteger(dashboard.schemaVersion) && dashboard.schemaVersion >= 36);
    const ds = { type: 'prometheus', uid: '${DS_PROMETHEUS}' };
    const panels = allPanels(dashboard);
    assert.ok(panels.length >= 15, `${panels.length} panels`);
    const ids = new Set();
    for (const panel of panels) {
      assert.ok(Number.isInteger(panel.id) && !ids.has(panel.id), `panel "${panel.title}": unique integer id`);
      ids.add(panel.id);
      assert.ok(panel.title, `panel ${panel.id} has a title`);
      for (const k of ['h', 'w', 'x', 'y']) assert.ok(Number.isInteger(panel.gridPos?.[k]), `panel "${panel.title}" gridPos.${k}`);
      assert.ok(panel.gridPos.x + panel.gridPos.w <= 24, `panel "${panel.title}" fits the 24-column grid`);
      if (panel.type === 'row') {
        // A row is a full-width header with no query; expanded, its panels follow it on the grid.
        assert.deepEqual([panel.gridPos.h, panel.gridPos.w, panel.gridPos.x], [1, 24, 0], `row "${panel.title}" gridPos`);
        assert.equal(panel.targets, undefined, `row "${panel.title}" has no queries`);
        assert.equal(panel.collapsed, false, `row "${panel.title}" is expanded`);
        assert.deepEqual(panel.panels, [], `row "${panel.title}": an expanded row nests no panel`);
        continue;
      }
      assert.ok(requires[`panel:${panel.type}`], `panel type ${panel.type} is listed in __requires`);
      assert.deepEqual(panel.datasource, ds, `panel "${panel.title}" data source`);
      assert.ok(panel.targets?.length > 0, `panel "${panel.title}" has queries`);
      const refIds = new Set();
      for (const t of panel.targets) {
        assert.deepEqual(t.datasource, ds, `panel "${panel.title}" target ${t.refId} data source`);
        assert.ok(t.refId && !refIds.has(t.refId), `panel "${panel.title}": unique refId`);
        refIds.add(t.refId);
        assert.ok(typeof t.expr === 'string' && t.expr.trim(), `panel "${panel.title}" ${t.refId} has an expr`);
      }
    }
    for (const v of dashboard.templating.list.filter((x) => x.type === 'query')) {
      assert.deepEqual(v.datasource, ds, `variable ${v.name} data source`);
    }
    // Provisioned copies (no import dialog) resolve ${DS_PROMETHEUS} through a data source variable.
    assert.ok(dashboard.templating.list.some((v) => v.name === 'DS_PROMETHEUS' && v.type === 'datasource' && v.query === 'prometheus'));
    // No two panels overlap on the grid.
    const top = dashboard.panels;
    for (let i = 0; i < top.length; i++) {
      for (let j = i + 1; j < top.length; j++) {
        const [a, b] = [top[i].gridPos, top[j].gridPos];
        const overlap = a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
        assert.ok(!overlap, `panels "${top[i].title}" and "${top[j].title}" overlap`);
      }
    }
    // The panels the operators need (issue 5).
    const exprs = panels.flatMap((p) => (p.targets || []).map((t) => t.expr)).join('\n');
    for (const needle of [
      'shardcast_connections{', 'shardcast_shard_connections{', 'shardcast_sockets{', 'shardcast_rooms{',
      'shardcast_online_users{', 'shardcast_messages_delivered_total{', 'by (event)', 'shardcast_bytes_received_total{',
      'shardcast_bytes_sent_total{', 'by (scope)', 'shardcast_messages_dropped_total{', 'by (code)',
      'shardcast_connections_opened_total{', 'shardcast_connections_closed_total{', 'histogram_quantile(0.5,',
      'histogram_quantile(0.95,', 'histogram_quantile(0.99,', 'shardcast_broadcast_fanout_seconds_bucket{',
      'shardcast_broadcast_written_seconds_bucket{', 'shardcast_broadcast_written_seconds_sum{', 'shardcast_broadcast_written_seconds_count{',
      'shardcast_shard_queue_depth{', 'by (route, status)', 'shardcast_tcp_connections{',
      'shardcast_connection_capacity{', 'shardcast_connections_refused_total{',
    ]) assert.ok(exprs.includes(needle), `the dashboard should query ${needle}`);

    // Cluster mode (issue 13): one "Cluster" row; its panels, and only they, query shardcast_cluster_*.
    const cluster = clusterRow(dashboard);
    assert.ok(cluster, 'the dashboard has a "Cluster" row');
    const queriesCluster = (p) => p.targets.some((t) => metricNames(toPromQL(t.expr)).some(isClusterMetric));
    assert.ok(cluster.panels.length >= 8, `${cluster.panels.length} panels in the Cluster row`);
    for (const p of cluster.panels) assert.ok(queriesCluster(p), `panel "${p.title}" of the Cluster row queries a cluster metric`);
    for (const p of top.filter((x) => x.type !== 'row' && !cluster.panels.includes(x))) {
      assert.ok(!queriesCluster(p), `panel "${p.title}" is outside the Cluster row but queries a cluster metric`);
    }
    const clusterExprs = cluster.panels.flatMap((p) => p.targets.map((t) => t.expr)).join('\n');
    for (const needle of [
      'shardcast_cluster_nodes{', 'shardcast_cluster_redis_up{', 'shardcast_cluster_subscriptions{',
      'rate(shardcast_cluster_messages_published_total{', 'rate(shardcast_cluster_messages_received_total{',
      'rate(shardcast_cluster_bytes_published_total{', 'rate(shardcast_cluster_bytes_received_total{',
      'rate(shardcast_cluster_publish_failures_total{', 'rate(shardcast_cluster_messages_undecodable_total{',
      'histogram_quantile(0.5, sum by (le) (rate(shardcast_cluster_delivery_lag_seconds_bucket{',
      'histogram_quantile(0.99, sum by (le) (rate(shardcast_cluster_delivery_lag_seconds_bucket{',
      // Redis messages received per delivered message.
      'sum by (instance) (rate(shardcast_cluster_messages_received_total{job=~"$job", instance=~"$instance"}[$__rate_interval])) / (sum by (instance) (rate(shardcast_messages_delivered_total{',
    ]) assert.ok(clusterExprs.includes(needle), `the Cluster row should query ${needle}`);
    // The alert signal: a stat that turns red when a node loses Redis.
    const redisUp = cluster.panels.find((p) => p.title === 'Redis up');
    assert.equal(redisUp?.type, 'stat', 'the Cluster row has a "Redis up" stat');
    assert.equal(redisUp.targets[0].expr, 'min(shardcast_cluster_redis_up{job=~"$job", instance=~"$instance"})');
    const steps = redisUp.fieldConfig.defaults.thresholds.steps;
    const colourOf = (v) => steps.filter((s) => s.value === null || v >= s.value).at(-1).color;
    assert.deepEqual([colourOf(0), colourOf(1)], ['red', 'green'], `Redis up thresholds: ${JSON.stringify(steps)}`);
    const mapped = Object.assign({}, ...redisUp.fieldConfig.defaults.mappings.map((m) => m.options));
    assert.deepEqual([mapped['0']?.text, mapped['1']?.text], ['down', 'up']);
  });

  it('the provisioning examples and prometheus.yml are there', () => {
    const read = (p) => fs.readFileSync(path.join(REPO_ROOT, 'grafana', p), 'utf8');
    assert.match(read('provisioning/datasources/prometheus.yaml'), /type: prometheus/);
    assert.match(read('provisioning/dashboards/shardcast.yaml'), /type: file/);
    const prom = read('prometheus.yml');
    assert.match(prom, /scrape_interval: 5s/);
    assert.match(prom, /localhost:3000/);
  });
});

describe('promtool: the dashboard PromQL and the live exposition', { skip: missing(PROMTOOL, 'promtool') }, () => {
  let server;
  before(async () => {
    requireBinary(PROMTOOL, 'promtool');
    server = await startServer({ SHARDS: 2 });
  });
  after(() => server?.stop());

  it('every PromQL expression of the dashboard parses (promtool check rules)', () => {
    const exprs = dashboardExpressions(loadDashboard());
    assert.ok(exprs.length >= 20, `${exprs.length} expressions`);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shardcast-promtool-'));
    try {
      // One recording rule per expression: promtool parses each `expr`.
      // JSON strings are valid YAML double-quoted scalars.
      const rules = exprs.map((e, i) => `      - record: dashboard:expr_${i}\n        expr: ${JSON.stringify(toPromQL(e.expr))}`).join('\n');
      const file = path.join(dir, 'dashboard-rules.yml');
      fs.writeFileSync(file, `groups:\n  - name: dashboard\n    rules:\n${rules}\n`);
      const r = spawnSync(PROMTOOL, ['check', 'rules', file], { encoding: 'utf8' });
      assert.equal(r.status, 0, `promtool check rules failed:\n${r.stdout}\n${r.stderr}\n${fs.readFileSync(file, 'utf8')}`);
      assert.match(r.stdout, new RegExp(`SUCCESS: ${exprs.length} rules found`), r.stdout);
      // And promtool does catch a broken expression (the check is not vacuous).
      fs.writeFileSync(file, 'groups:\n  - name: broken\n    rules:\n      - record: x:y\n        expr: "sum(rate(shardcast_connections[1m]"\n');
      assert.notEqual(spawnSync(PROMTOOL, ['check', 'rules', file], { encoding: 'utf8' }).status, 0);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the dashboard names only metrics the broker exports, and shows every one of them (shardcast_cluster_*: in cluster mode, below)', async () => {
    const clients = await exerciseEverything(server);
    const m = await scrape(server);
    assertNoClusterMetrics(m, 'a single node after traffic');
    // The cluster metrics on the dashboard are checked against a node in cluster mode.
    const used = checkDashboardNames(m.families, (name) => !isClusterMetric(name));
    const unused = [...m.families.keys()].filter((f) => !used.has(f));
    assert.deepEqual(unused, [], 'every exported metric appears on the dashboard');
    // The name extraction itself.
    assert.deepEqual(metricNames('sum by (le, shard) (rate(a_b_bucket{x=~"y"}[1m])) / ignoring(x) group_left c_total offset 5m'), ['a_b_bucket', 'c_total']);
    for (const c of clients) c.disconnect();
  });

  it('promtool check metrics finds no problem in a live /metrics', async () => {
    const clients = await exerciseEverything(server);
    const { text } = await scrapeText(server);
    assert.match(text, /shardcast_broadcast_fanout_seconds_bucket/);
    const r = spawnSync(PROMTOOL, ['check', 'metrics'], { input: text, encoding: 'utf8' });
    assert.equal(r.status, 0, `promtool check metrics: exit ${r.status}\n${r.stdout}${r.stderr}`);
    assert.equal(`${r.stdout}${r.stderr}`.trim(), '', 'promtool check metrics reports nothing');
    for (const c of clients) c.disconnect();
  });
});

describe('cluster mode: the shardcast_cluster_* metrics of two nodes on a real redis-server', { skip: redisMissing }, () => {
  let redis;
  let nodes = [];
  before(async () => {
    redis = await startRedis();
    nodes = await startClusterNodes(redis, 2);
  });
  after(async () => {
    for (const node of nodes) await node.stop();
    await redis?.stop();
  });

  const clusterValues = (m) => Object.fromEntries(Object.keys(CLUSTER_METRICS)
    .filter((name) => CLUSTER_METRICS[name] !== 'histogram').map((name) => [name, val(m, name)]));

  it('a cluster node exports what a single node does plus exactly the cluster metrics, typed and unlabelled', async () => {
    const single = await startServer({ SHARDS: 2 });
    try {
      const { clients } = await exerciseCluster(redis, nodes);
      const singleClients = await exerciseEverything(single);
      const ms = await scrape(single);
      assertNoClusterMetrics(ms, 'a single node');
      for (const [i, node] of nodes.entries()) {
        const m = await scrape(node);
        const extra = [...m.families.keys()].filter((f) => !ms.families.has(f)).sort();
        assert.deepEqual(extra, Object.keys(CLUSTER_METRICS).sort(), `node ${i}: the families a single node does not export`);
        for (const [name, type] of Object.entries(CLUSTER_METRICS)) {
          const f = m.families.get(name);
          assert.equal(f.type, type, `${name} should be a ${type}`);
          assert.match(f.help, /^Cluster mode: /, `${name}: HELP "${f.help}"`);
          for (const sample of f.samples) {
            assert.deepEqual(Object.keys(sample.labels).filter((l) => l !== 'le'), [], `${seriesKey(sample.name, sample.labels)}: no label`);
          }
        }
        assertBoundedLabels(m, 2);
      }
      for (const c of [...clients, ...singleClients]) c.disconnect();
    } finally {
      await single.stop();
    }
  });

  it('values: live nodes, Redis up, subscriptions per room, messages and bytes both ways, undecodable, delivery lag', async () => {
    const before = await Promise.all(nodes.map(scrape));
    for (const m of before) {
      assert.deepEqual(
        [val(m, 'shardcast_cluster_nodes'), val(m, 'shardcast_cluster_redis_up'), val(m, 'shardcast_cluster_subscriptions')],
        [2, 1, 3],
        `2 live nodes, Redis up, 3 channels (own, shardcast-wide, socket.io broadcast) with no room: ${JSON.stringify(clusterValues(m))}`,
      );
    }
    const { clients } = await exerciseCluster(redis, nodes);
    const after = await Promise.all(nodes.map(scrape));
    for (const [i, m] of after.entries()) {
      const what = `node ${'AB'[i]}`;
      const d = (name, labels) => cnt(m, name, labels) - cnt(before[i], name, labels);
      assert.equal(val(m, 'shardcast_cluster_subscriptions'), 4, `${what}: the room's channel is subscribed while it has a member here`);
      assert.equal(val(m, 'shardcast_cluster_nodes'), 2);
      assert.equal(val(m, 'shardcast_cluster_redis_up'), 1);
      // A published the relay, B the broadcast (and each its presence and room counts).
      assert.ok(d('shardcast_cluster_messages_published_total') >= 1, `${what}: published ${d('shardcast_cluster_messages_published_total')}`);
      assert.ok(d('shardcast_cluster_bytes_published_total') >= 10 * d('shardcast_cluster_messages_published_total'),
        `${what}: bytes published ${d('shardcast_cluster_bytes_published_total')}`);
      // The other node's publish and the unreadable message at least.
      assert.ok(d('shardcast_cluster_messages_received_total') >= 2, `${what}: received ${d('shardcast_cluster_messages_received_total')}`);
      assert.ok(d('shardcast_cluster_bytes_received_total') > d('shardcast_cluster_messages_received_total'),
        `${what}: bytes received ${d('shardcast_cluster_bytes_received_total')}`);
      assert.equal(d('shardcast_cluster_messages_undecodable_total'), 1, `${what}: the unreadable message`);
      assert.equal(d('shardcast_cluster_publish_failures_total'), 0, `${what}: no publish failed`);
      // The delivery-lag histogram: samples for what came from the other node, well under a second on one machine.
      const lag = d('shardcast_cluster_delivery_lag_seconds_count');
      assert.ok(lag >= 1, `${what}: delivery-lag samples ${lag}`);
      assert.equal(d('shardcast_cluster_delivery_lag_seconds_bucket', { le: '1' }), lag, `${what}: every delivery-lag sample under 1 s`);
      assert.ok(d('shardcast_cluster_delivery_lag_seconds_sum') >= 0);
    }
    for (const c of clients) c.disconnect();
    // The last member gone from each node: its room channel is unsubscribed.
    let now = [];
    await waitUntil(async () => {
      now = (await Promise.all(nodes.map(scrape))).map((m) => val(m, 'shardcast_cluster_subscriptions'));
      return now.every((n) => n === 3);
    }, 5000, () => `subscriptions ${now}`, 50);
  });

  it('the dashboard names only metrics a cluster node exports, and shows every one of them', async () => {
    const clients = await exerciseEverything(nodes[0]);
    clients.push(...(await exerciseCluster(redis, nodes)).clients);
    const m = await scrape(nodes[0]);
    for (const name of Object.keys(CLUSTER_METRICS)) assert.ok(m.families.has(name), `the cluster node exports ${name}`);
    const used = checkDashboardNames(m.families);
    const unused = [...m.families.keys()].filter((f) => !used.has(f));
    assert.deepEqual(unused, [], 'every metric a cluster node exports appears on the dashboard');
    for (const c of clients) c.disconnect();
  });

  it('promtool check metrics finds no problem in a cluster node\'s /metrics', { skip: missing(PROMTOOL, 'promtool') }, async () => {
    requireBinary(PROMTOOL, 'promtool');
    const clients = await exerciseEverything(nodes[1]);
    clients.push(...(await exerciseCluster(redis, nodes)).clients);
    const { text } = await scrapeText(nodes[1]);
    for (const name of Object.keys(CLUSTER_METRICS)) assert.match(text, new RegExp(`^# TYPE ${name} `, 'm'));
    assert.match(text, /^shardcast_cluster_delivery_lag_seconds_bucket\{le="\+Inf"\} [1-9]/m, 'the delivery-lag histogram has samples');
    const r = spawnSync(PROMTOOL, ['check', 'metrics'], { input: text, encoding: 'utf8' });
    assert.equal(r.status, 0, `promtool check metrics: exit ${r.status}\n${r.stdout}${r.stderr}`);
    assert.equal(`${r.stdout}${r.stderr}`.trim(), '', 'promtool check metrics reports nothing');
    for (const c of clients) c.disconnect();
  });

  it('the README\'s Metrics section names exactly the cluster metrics a cluster node exports, and the Cluster row', async () => {
    const { clients } = await exerciseCluster(redis, nodes);
    const m = await scrape(nodes[0]);
    const readme = fs.readFileSync(path.join(REPO_ROOT, 'README.md'), 'utf8');
    const section = /\n## Metrics\n([\s\S]*?)\n## /.exec(readme)[1];
    const named = new Set([...section.matchAll(/`(shardcast_cluster_[a-z0-9_]+)`/g)].map((x) => x[1]));
    assert.deepEqual([...named].sort(), [...m.families.keys()].filter(isClusterMetric).sort());
    assert.match(section, /"Cluster mode \(Redis\)"/, 'points to the "Cluster mode (Redis)" section');
    assert.match(section, /Cluster row/, 'mentions the dashboard\'s Cluster row');
    for (const c of clients) c.disconnect();
  });

  // Last: it kills this describe's Redis.
  it('Redis killed: shardcast_cluster_redis_up drops to 0, a cross-node publish fails and is counted, local delivery goes on', async () => {
    const room = secret('room');
    const [a, a2] = [await connectAs(nodes[0].url, secret('user')), await connectAs(nodes[0].url, secret('user'))];
    const b = await connectAs(nodes[1].url, secret('user'));
    for (const s of [a, a2, b]) assertSuccess(await emitWithAck(s, 'join-room', { roomName: room }));
    const before = await scrape(nodes[0]);
    assert.equal(val(before, 'shardcast_cluster_redis_up'), 1);
    await redis.kill();
    let up = [];
    await waitUntil(async () => {
      up = (await Promise.all(nodes.map(scrape))).map((m) => val(m, 'shardcast_cluster_redis_up'));
      return up.every((v) => v === 0);
    }, 15000, () => `shardcast_cluster_redis_up ${up}`, 100);
    const got = [waitForEvent(a, 'degraded'), waitForEvent(a2, 'degraded')];
    const r = await api(nodes[0], 'POST', `/api/rooms/${room}/broadcast`, { event: 'degraded', data: 1 });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.partial, true, `the other node was not reached: ${JSON.stringify(r.body)}`);
    assert.equal(r.body.delivered, 2, `this node's members got it: ${JSON.stringify(r.body)}`);
    await Promise.all(got);
    const after = await scrape(nodes[0]);
    const failures = cnt(after, 'shardcast_cluster_publish_failures_total') - cnt(before, 'shardcast_cluster_publish_failures_total');
    assert.ok(failures >= 1, `publish failures: ${failures}`);
    const health = await api(nodes[0], 'GET', '/health');
    assert.equal(health.status, 200, `/health stays 200 while Redis is down: ${JSON.stringify(health.body)}`);
    for (const s of [a, a2, b]) s.disconnect();
  });
});

describe('a real Prometheus scraping the broker', { skip: missing(PROMETHEUS, 'prometheus') }, () => {
  let server;
  let prom;
  let promUrl;
  let tmp;
  // Cluster mode (job shardcast-cluster): two nodes on a redis-server, for the Cluster row.
  let redis;
  let clusterNodes = [];

  before(async () => {
    requireBinary(PROMETHEUS, 'prometheus');
    server = await startServer({ SHARDS: 2 });
    if (!redisMissing) {
      redis = await startRedis();
      clusterNodes = await startClusterNodes(redis, 2);
    }
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'shardcast-prometheus-'));
    const config = path.join(tmp, 'prometheus.yml');
    fs.writeFileSync(config, [
      'global:',
      '  scrape_interval: 1s',
      '  scrape_timeout: 1s',
      '  evaluation_interval: 1s',
      'scrape_configs:',
      '  - job_name: shardcast',
      '    static_configs:',
      `      - targets: ["127.0.0.1:${server.port}"]`,
      ...(clusterNodes.length === 0 ? [] : [
        '  - job_name: shardcast-cluster',
        '    static_configs:',
        `      - targets: [${clusterNodes.map((n) => `"127.0.0.1:${n.port}"`).join(', ')}]`,
      ]),
      '',
    ].join('\n'));
    const port = await freePort();
    promUrl = `http://127.0.0.1:${port}`;
    let output = '';
    const child = spawn(PROMETHEUS, [
      `--config.file=${config}`,
      `--storage.tsdb.path=${path.join(tmp, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--log.level=warn',
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.on('data', (d) => { output += d; });
    child.stderr.on('data', (d) => { output += d; });
    prom = { child, output: () => output, exited: new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal }))) };
    process.on('exit', () => { try { child.kill('SIGKILL'); } catch { /* gone */ } });
    let status = 'no answer';
    await waitUntil(async () => {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`prometheus exited: ${output}`);
      status = await fetch(`${promUrl}/-/ready`).then((r) => r.status).catch((e) => e.message);
      return status === 200;
    }, 30000, () => `prometheus not ready on ${promUrl} (${status}):\n${output}`, 200);
    await waitFor('up{job="shardcast"}', 1, 'Prometheus scrapes the broker');
    if (clusterNodes.length > 0) await waitFor('sum(up{job="shardcast-cluster"})', 2, 'Prometheus scrapes the cluster nodes');
  });

  after(async () => {
    if (prom) {
      prom.child.kill('SIGTERM');
      const t = setTimeout(() => prom.child.kill('SIGKILL'), 5000);
      await prom.exited;
      clearTimeout(t);
    }
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
    await server?.stop();
    for (const node of clusterNodes) await node.stop();
    await redis?.stop();
  });

  /** The instant vector of `expr` (throws unless Prometheus says success). */
  async function query(expr) {
    const res = await fetch(`${promUrl}/api/v1/query?query=${encodeURIComponent(expr)}`);
    const body = await res.json();
    if (body.status !== 'success') throw new Error(`Prometheus refused ${expr}: ${JSON.stringify(body)}`);
    return body.data;
  }

  /** The single value of `expr`, or undefined if the result is empty. */
  async function value(expr) {
    const data = await query(expr);
    assert.equal(data.resultType, 'vector', `${expr}: ${JSON.stringify(data)}`);
    if (data.result.length === 0) return undefined;
    assert.equal(data.result.length, 1, `${expr} should give one series: ${JSON.stringify(data.result)}`);
    return Number(data.result[0].value[1]);
  }

  /** Polls Prometheus until every expr of `want` has its value (bounded wait). */
  async function waitFor(exprOrWant, expected, what, timeoutMs = 20000) {
    const want = typeof exprOrWant === 'string' ? { [exprOrWant]: expected } : exprOrWant;
    if (typeof exprOrWant !== 'string') what = expected;
    let got = {};
    await waitUntil(async () => {
      got = {};
      for (const expr of Object.keys(want)) got[expr] = await value(expr);
      return Object.keys(want).every((k) => got[k] === want[k]);
    }, timeoutMs, () => `${what}: Prometheus answered ${JSON.stringify(got)}, expected ${JSON.stringify(want)}\n${prom.output()}`, 250);
  }

  it('Prometheus\' query API shows the connections, rooms and users the clients made, going up and down', async () => {
    const users = Array.from({ length: 5 }, () => secret('user'));
    const rooms = Array.from({ length: 3 }, () => secret('room'));
    const clients = [];
    for (let i = 0; i < 8; i++) clients.push(await connectAs(server.url, users[i % 5]));
    // Rooms: 0 has clients 0..3, 1 has 4..6, 2 has only client 7 (user 2).
    const joins = [0, 0, 0, 0, 1, 1, 1, 2];
    for (let i = 0; i < 8; i++) assertSuccess(await emitWithAck(clients[i], 'join-room', { roomName: rooms[joins[i]] }));
    await waitFor({
      'shardcast_connections{job="shardcast"}': 8,
      'sum(shardcast_shard_connections{job="shardcast"})': 8,
      'count(shardcast_shard_connections{job="shardcast"})': 2,
      'shardcast_sockets{job="shardcast"}': 8,
      'sum(shardcast_shard_sockets{job="shardcast"})': 8,
      'shardcast_rooms{job="shardcast"}': 3,
      'shardcast_online_users{job="shardcast"}': 5,
      'shardcast_events_received_total{job="shardcast", event="join-room"}': 8,
      'shardcast_events_received_total{job="shardcast", event="authenticate"}': 8,
      'shardcast_connections_opened_total{job="shardcast"}': 8,
    }, 'after 8 clients (5 users) joined 3 rooms');

    // Client 7 is room 2's only member; users 3 and 4 have one socket each (clients 3 and 4).
    for (const i of [3, 4, 7]) clients[i].disconnect();
    await waitFor({
      'shardcast_connections{job="shardcast"}': 5,
      'sum(shardcast_shard_connections{job="shardcast"})': 5,
      'shardcast_sockets{job="shardcast"}': 5,
      'shardcast_rooms{job="shardcast"}': 2,
      'shardcast_online_users{job="shardcast"}': 3,
      'shardcast_connections_closed_total{job="shardcast", reason="client_close"}': 3,
    }, 'after 3 clients disconnected');

    for (const c of clients) c.disconnect();
    await waitFor({
      'shardcast_connections{job="shardcast"}': 0,
      'sum(shardcast_shard_connections{job="shardcast"})': 0,
      'shardcast_sockets{job="shardcast"}': 0,
      'shardcast_rooms{job="shardcast"}': 0,
      'shardcast_online_users{job="shardcast"}': 0,
      'shardcast_connections_closed_total{job="shardcast", reason="client_close"}': 8,
    }, 'after every client disconnected');
  });

  it('every dashboard expression evaluates on Prometheus (status success, data for every one)', async (t) => {
    const clients = await exerciseEverything(server);
    let exprs = dashboardExpressions(loadDashboard());
    if (clusterNodes.length > 0) {
      clients.push(...(await exerciseCluster(redis, clusterNodes)).clients);
    } else {
      exprs = exprs.filter((e) => !e.cluster);
      t.diagnostic(`${redisMissing}: the Cluster row's expressions were not evaluated`);
    }
    let pending = exprs;
    // Rates need two scrapes after a series first appears: poll, bounded.
    await waitUntil(async () => {
      const still = [];
      for (const e of pending) {
        const data = await query(toPromQL(e.expr)); // throws on a parse error
        if (data.result.length === 0) still.push(e);
      }
      pending = still;
      return pending.length === 0;
    }, 30000, () => `no data yet for: ${pending.map((e) => `${e.where}: ${e.expr}`).join('\n')}`, 500);
    for (const c of clients) c.disconnect();
  });

  // Last: it kills the cluster's Redis.
  it('the Cluster row on Prometheus: Live nodes 2, Redis up 1; Redis killed: Redis up 0 (per node too), publish failures > 0', { skip: redisMissing }, async () => {
    const exprs = dashboardExpressions(loadDashboard()).filter((e) => e.cluster);
    const panelExpr = (title) => {
      const found = exprs.filter((e) => e.panel === title);
      assert.equal(found.length, 1, `the Cluster row has one "${title}" query`);
      return toPromQL(found[0].expr);
    };
    const [liveNodes, redisUp, failures] = ['Live nodes', 'Redis up', 'Publish failures / s'].map(panelExpr);
    await waitFor({ [liveNodes]: 2, [redisUp]: 1 }, 'the Cluster row\'s stats with Redis up');
    const room = secret('room');
    const a = await connectAs(clusterNodes[0].url, secret('user'));
    assertSuccess(await emitWithAck(a, 'join-room', { roomName: room }));
    await redis.kill();
    await waitFor(redisUp, 0, 'Redis up after Redis was killed');
    const perNode = panelExpr('Redis up by node');
    let series = [];
    await waitUntil(async () => {
      series = (await query(perNode)).result.map((r) => Number(r.value[1]));
      return series.length === 2 && series.every((v) => v === 0);
    }, 20000, () => `${perNode}: ${JSON.stringify(series)}`, 250);
    const r = await api(clusterNodes[0], 'POST', `/api/rooms/${room}/broadcast`, { event: 'degraded', data: 1 });
    assert.equal(r.body.partial, true, JSON.stringify(r.body));
    let rate;
    await waitUntil(async () => { rate = await value(failures); return rate > 0; }, 20000, () => `${failures}: ${rate}`, 250);
    a.disconnect();
  });
});

describe('/metrics on a fresh broker', () => {
  it('every labelled counter exists at 0 before its first increment (rate() sees the first one)', async () => {
    const server = await startServer({});
    try {
      const m = await scrape(server);
      const zero = (name, label, value) => {
        const sample = m.samples.find((s) => s.name === name && s.labels[label] === value);
        assert.ok(sample, `${name}{${label}="${value}"} is exported from the start`);
        assert.equal(sample.value, 0);
      };
      for (const reason of CLOSE_REASONS) {
        zero('shardcast_connections_closed_total', 'reason', reason);
      }
      for (const code of ['VALIDATION_ERROR', 'UNAUTHENTICATED', 'AUTH_FAILED', 'NOT_IN_ROOM', 'USER_OFFLINE', 'RATE_LIMITED', 'LIMIT_EXCEEDED', 'UNKNOWN_EVENT']) {
        zero('shardcast_requests_rejected_total', 'code', code);
      }
      for (const scope of ['all', 'room', 'user', 'socket']) zero('shardcast_broadcasts_total', 'scope', scope);
      for (const event of ['authenticate', 'join-room', 'leave-room', 'private-message', 'custom-event', 'ping', 'other']) {
        zero('shardcast_events_received_total', 'event', event);
      }
    } finally {
      await server.stop();
    }
  });
});
