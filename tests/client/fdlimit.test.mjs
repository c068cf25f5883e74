// Descriptor limits (issue 11): the broker raises its soft RLIMIT_NOFILE to
// the hard limit at start and reports the connection capacity (start-up log,
// GET /api/stats, /metrics). Started under `prlimit --nofile=512:512` with
// more clients than fit:
//   - at the capacity, new sessions are refused at once with a 503 (counted
//     as reason="capacity"), while the connected clients keep full service
//     and /health answers;
//   - at the hard wall (accept fails with EMFILE), connections are answered
//     through the spare descriptor (503, /health still 200) with a bounded
//     back-off (counted as reason="descriptors"), the server does not spin,
//     and accepting resumes by itself once descriptors are free;
//   - after clients leave, new ones connect without a restart.

import { describe, before, after } from 'node:test';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { isDeepStrictEqual } from 'node:util';
import {
  assert, it, io, attachInbox, startServer, emitWithAck, waitForEvent, waitUntil, sleep, uid, received, WebSocket,
} from './helpers.mjs';

const HAVE_PRLIMIT = spawnSync('prlimit', ['--version']).status === 0;
if (!HAVE_PRLIMIT && process.env.CI === 'true') throw new Error('prlimit (util-linux) is required under CI=true');
const skip = HAVE_PRLIMIT ? false : 'prlimit (util-linux) is not installed';

const SHARDS = 2;
/** What a new session is told at the wall (see the EMFILE test). */
const WALL_REFUSALS = [
  { code: 3, message: 'Server out of file descriptors' },
  { code: 3, message: 'Server at connection capacity' },
];
/** src/limits.rs: RESERVE_FIXED + RESERVE_PER_SHARD × shards + descriptors / RESERVE_FRACTION. */
const reserve = (descriptors, shards) => 64 + 4 * shards + Math.floor(descriptors / 64);
const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

// ---------------------------------------------------------------------------
// HTTP on a fresh connection each time (no keep-alive pool holding descriptors
// of the broker's between requests).
// ---------------------------------------------------------------------------

function httpRequest(server, method, path, body, timeoutMs = 5000) {
  return new Promise((resolve) => {
    const started = Date.now();
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request({
      host: '127.0.0.1', port: server.port, method, path, agent: false,
      headers: { connection: 'close', ...(payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {}) },
    }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => {
        let json;
        try { json = JSON.parse(text); } catch { json = undefined; }
        resolve({ status: res.statusCode, text, json, ms: Date.now() - started });
      });
      res.on('error', (e) => resolve({ status: 0, error: e.code || e.message, ms: Date.now() - started }));
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve({ status: 0, error: e.code || e.message, ms: Date.now() - started }));
    req.end(payload);
  });
}

async function getJson(server, path) {
  const r = await httpRequest(server, 'GET', path);
  assert.equal(r.status, 200, `GET ${path}: ${JSON.stringify(r)}`);
  return r.json;
}

/** One value of a metric in the text exposition (labels as an object). */
async function metric(server, name, labels = {}) {
  const r = await httpRequest(server, 'GET', '/metrics');
  assert.equal(r.status, 200, `GET /metrics: ${JSON.stringify(r).slice(0, 300)}`);
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`).join(',');
  const line = r.text.split('\n').find((l) => l.startsWith(want ? `${name}{${want}} ` : `${name} `));
  assert.ok(line, `${name}{${want}} is not in /metrics`);
  return Number(line.split(' ').pop());
}

/** /health polled on a new connection every 100 ms; failures recorded. */
function healthPoller(server) {
  const poller = { checks: 0, failures: [], paused: false, stopped: false, slowest: 0 };
  poller.done = (async () => {
    while (!poller.stopped) {
      if (!poller.paused) {
        const r = await httpRequest(server, 'GET', '/health', undefined, 3000);
        poller.checks += 1;
        poller.slowest = Math.max(poller.slowest, r.ms);
        if (r.status !== 200) poller.failures.push(r);
      }
      await sleep(100);
    }
  })();
  return poller;
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/**
 * A socket.io-client (websocket, no reconnection) authenticated at connect;
 * resolves { ok, socket, ms } or { ok: false, error, ms } — never waits
 * past the client's own 10 s timeout.
 */
function tryConnect(server, userId) {
  const started = Date.now();
  const socket = io(server.url, {
    transports: ['websocket'], reconnection: false, forceNew: true, timeout: 10000, auth: { userId },
  });
  attachInbox(socket); // for waitForEvent / received (not closed at the end of each test, unlike makeSocket's)
  return new Promise((resolve) => {
    socket.on('connect', () => resolve({ ok: true, socket, ms: Date.now() - started }));
    socket.on('connect_error', (error) => {
      socket.disconnect();
      resolve({ ok: false, error, ms: Date.now() - started });
    });
  });
}

/** Whether a connect_error is the broker's refusal: an HTTP 503 to the upgrade. */
function refusedWith503(error) {
  const description = error?.description;
  const text = String(description?.message ?? description?.error?.message ?? description ?? '');
  return error?.message === 'websocket error' && text.includes('503');
}

/**
 * A raw WebSocket handshake to /socket.io/: resolves with the HTTP status
 * (101 when accepted, then closed at once), the body of a refusal, and the time taken.
 */
function knock(server, timeoutMs = 5000) {
  return new Promise((resolve) => {
    const started = Date.now();
    const ws = new WebSocket(`ws://127.0.0.1:${server.port}/socket.io/?EIO=4&transport=websocket`);
    const timer = setTimeout(() => { ws.terminate(); resolve({ status: 0, error: 'timeout', ms: Date.now() - started }); }, timeoutMs);
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { body += d; });
      res.on('end', () => { clearTimeout(timer); ws.terminate(); resolve({ status: res.statusCode, body, ms: Date.now() - started }); });
    });
    ws.on('open', () => { clearTimeout(timer); ws.terminate(); resolve({ status: 101, ms: Date.now() - started }); });
    ws.on('error', (e) => { clearTimeout(timer); resolve({ status: 0, error: e.code || e.message, ms: Date.now() - started }); });
  });
}

/** Knocks every `intervalMs` until `stop()`; returns { results, stop }. */
function keepKnocking(server, intervalMs = 20) {
  const results = [];
  const pending = [];
  const timer = setInterval(() => { pending.push(knock(server).then((r) => results.push(r))); }, intervalMs);
  return {
    results,
    async stop() { clearInterval(timer); await Promise.all(pending); return results; },
  };
}

/** The server process's CPU use (user + system, all threads) over `ms`, as a share of one core. */
async function cpuShare(pid, ms) {
  const ticks = () => {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[11]) + Number(fields[12]); // utime, stime (fields 14 and 15)
  };
  const [t0, w0] = [ticks(), process.hrtime.bigint()];
  await sleep(ms);
  const [t1, w1] = [ticks(), process.hrtime.bigint()];
  return ((t1 - t0) / CLK_TCK) / (Number(w1 - w0) / 1e9);
}

/** "Max open files" soft and hard of a process, from /proc/<pid>/limits. */
function openFileLimits(pid) {
  const line = fs.readFileSync(`/proc/${pid}/limits`, 'utf8').split('\n').find((l) => l.startsWith('Max open files'));
  const [soft, hard] = line.replace('Max open files', '').trim().split(/\s+/).map(Number);
  return { soft, hard };
}

/**
 * A numeric field of the first log line containing `message`. Start-up lines
 * go to stderr before the listening line goes to stdout, but the two pipes
 * are read independently: allow the stderr line a moment.
 */
async function logField(server, message, field) {
  const find = () => server.logs.map((l) => l.line).find((l) => l.includes(message));
  await waitUntil(find, 3000, () => `no log line with "${message}":\n${server.stderrText().slice(0, 3000)}`);
  const line = find();
  const m = new RegExp(`\\b${field}=(\\d+)`).exec(line);
  assert.ok(m, `log line without ${field}: ${line}`);
  return Number(m[1]);
}

// ---------------------------------------------------------------------------

describe('hard open-file limit 512: more clients than fit', { skip }, () => {
  const CLIENTS = 600;
  let server;
  let poller;
  let capacity;
  const connected = [];
  const refused = [];

  before(async () => {
    server = await startServer({ SHARDS, PRESENCE_EVENTS: 'off', ROOM_EVENTS: 'off', RUST_LOG: 'info' }, { nofile: '512:512' });
    poller = healthPoller(server);
  });
  after(async () => {
    if (poller) { poller.stopped = true; await poller.done; }
    for (const s of connected) s.disconnect();
    await server?.stop();
  });

  it('start-up reports the open-file limit and the capacity; GET /api/stats and /metrics show it', async () => {
    assert.deepEqual(openFileLimits(server.pid), { soft: 512, hard: 512 });
    const limitLine = 'open-file limit (RLIMIT_NOFILE)';
    assert.deepEqual(
      await Promise.all(['soft_before', 'soft', 'hard'].map((f) => logField(server, limitLine, f))), [512, 512, 512],
    );
    capacity = await logField(server, 'connection capacity:', 'capacity');
    assert.equal(await logField(server, 'connection capacity:', 'reserve'), reserve(512, SHARDS));
    assert.equal(capacity, 512 - reserve(512, SHARDS));
    assert.equal(await logField(server, 'shardcast started', 'connection_capacity'), capacity);
    assert.equal((await getJson(server, '/api/stats')).connectionCapacity, capacity);
    assert.equal(await metric(server, 'shardcast_connection_capacity'), capacity);
    for (const reason of ['capacity', 'descriptors']) {
      assert.equal(await metric(server, 'shardcast_connections_refused_total', { reason }), 0);
    }
  });

  it(`${CLIENTS} clients: as many as fit connect, the others are refused at once with a 503, and counted`, async (t) => {
    const outcomes = await Promise.all(Array.from({ length: CLIENTS }, (_, i) => tryConnect(server, `fd-user-${i}`)));
    for (const o of outcomes) (o.ok ? connected : refused).push(o.ok ? o.socket : o);
    const summary = `${connected.length} connected, ${refused.length} refused, capacity ${capacity}`;
    assert.equal(connected.length + refused.length, CLIENTS, summary);
    assert.ok(connected.length <= capacity && connected.length >= capacity - 5, summary);
    for (const r of refused) {
      assert.ok(refusedWith503(r.error), `a clear refusal (503), not ${r.error?.message}: ${String(r.error?.description?.message ?? r.error?.description)}`);
    }
    const slowest = Math.max(...refused.map((r) => r.ms));
    t.diagnostic(`${connected.length} connected, ${refused.length} refused (slowest refusal ${slowest} ms)`);
    assert.ok(slowest < 5000, `refused within 5 s of trying (slowest ${slowest} ms; the client's own timeout is 10 s)`);

    const stats = await getJson(server, '/api/stats');
    assert.equal(stats.connections, connected.length, JSON.stringify(stats));
    // Refused for capacity; in a burst like this one, many meet the wall
    // instead (the reserve is full of refused connections not yet closed).
    const byCapacity = await metric(server, 'shardcast_connections_refused_total', { reason: 'capacity' });
    const byDescriptors = await metric(server, 'shardcast_connections_refused_total', { reason: 'descriptors' });
    assert.equal(byCapacity + byDescriptors, refused.length, `capacity ${byCapacity} + descriptors ${byDescriptors}`);
    assert.ok(byCapacity > 0, `capacity ${byCapacity} + descriptors ${byDescriptors}`);
    const tcp = await metric(server, 'shardcast_tcp_connections');
    assert.ok(tcp >= connected.length && tcp <= connected.length + 3, `shardcast_tcp_connections ${tcp}, ${summary}`);

    // A raw upgrade and a long-polling handshake get the same answer.
    const k = await knock(server);
    assert.equal(k.status, 503, JSON.stringify(k));
    assert.deepEqual(JSON.parse(k.body), { code: 3, message: 'Server at connection capacity' });
    const polling = await httpRequest(server, 'GET', '/socket.io/?EIO=4&transport=polling');
    assert.equal(polling.status, 503, JSON.stringify(polling));
    assert.deepEqual(polling.json, { code: 3, message: 'Server at connection capacity' });
    // Plain HTTP is served from the reserve.
    assert.equal((await httpRequest(server, 'GET', '/ready')).status, 200);
    assert.deepEqual(poller.failures, [], '/health answered 200 throughout');
  });

  it('the connected clients keep full service: ping acks, a room relay, an HTTP broadcast to all exactly once', async () => {
    assert.ok(connected.length > 0);
    const acks = await Promise.all(connected.map((s) => emitWithAck(s, 'ping', {}, 10000)));
    assert.ok(acks.every((a) => a.success === true), 'every ping acked');

    const [a, b] = connected;
    const room = uid('fd-room');
    for (const s of [a, b]) assert.equal((await emitWithAck(s, 'join-room', { roomName: room })).success, true);
    const relayed = waitForEvent(b, 'fd-relay', 5000);
    assert.equal((await emitWithAck(a, 'custom-event', { event: 'fd-relay', data: { n: 1 }, roomName: room })).success, true);
    assert.deepEqual(await relayed, { n: 1 });

    const token = uid('fd-broadcast');
    const published = await httpRequest(server, 'POST', '/api/broadcast', { event: 'fd-all', data: { token } });
    assert.equal(published.status, 200, JSON.stringify(published));
    assert.equal(published.json.delivered, connected.length);
    const got = (s) => received(s, 'fd-all', (d) => d && d.token === token).length;
    await waitUntil(() => connected.every((s) => got(s) >= 1), 10000,
      () => `${connected.filter((s) => got(s) === 0).length} clients without the broadcast`);
    await sleep(300);
    assert.deepEqual([...new Set(connected.map(got))], [1], 'each client got it exactly once');
    assert.deepEqual(poller.failures, [], '/health answered 200 throughout');
  });

  it('at the capacity, clients that keep knocking are refused promptly and the server does not spin', async (t) => {
    const knocking = keepKnocking(server, 20);
    await sleep(200);
    const cpu = await cpuShare(server.pid, 1000);
    // At least 30 knocks, however slowly a loaded machine runs the timer.
    await waitUntil(() => knocking.results.length >= 30, 10000, () => `${knocking.results.length} knocks`);
    const results = await knocking.stop();
    for (const r of results) assert.equal(r.status, 503, JSON.stringify(r));
    const slowest = Math.max(...results.map((r) => r.ms));
    t.diagnostic(`at the capacity: ${results.length} knocks refused, slowest ${slowest} ms, server CPU ${(cpu * 100).toFixed(1)} %`);
    assert.ok(slowest < 1000, `refusals within 1 s (slowest ${slowest} ms)`);
    assert.ok(cpu < 0.3, `server CPU ${(cpu * 100).toFixed(1)} % of a core while refusing ${results.length} knocks`);
  });

  it('at the hard wall (EMFILE): prompt 503s, /health 200, no spinning, open connections served; then it resumes by itself', async (t) => {
    const descriptorsBefore = await metric(server, 'shardcast_connections_refused_total', { reason: 'descriptors' });
    const logMark = server.logs.length;
    const newLogs = () => server.logs.slice(logMark).map((l) => l.line).join('\n');
    // Use up the reserve: keep-alive HTTP connections that make one request
    // and stay open (each holds a descriptor until REQUEST_TIMEOUT_MS, 30 s),
    // until one gets the wall's 503 instead of its 404. (Connections still
    // sending their head would not do: at the wall they are closed after
    // 1 s, see the next test.)
    const fillers = [];
    const answered = [];
    try {
      for (let batch = 0; batch < 20 && answered.length === 0; batch++) {
        for (let i = 0; i < 10; i++) {
          const filler = net.connect(server.port, '127.0.0.1', () => filler.write('GET /filler HTTP/1.1\r\nHost: x\r\n\r\n'));
          filler.on('data', (d) => { if (String(d).startsWith('HTTP/1.1 503 ')) answered.push(String(d)); });
          filler.on('error', () => {});
          fillers.push(filler);
        }
        await sleep(700); // longer than the longest back-off (500 ms)
      }
      assert.ok(answered.length > 0, `no filler was refused after ${fillers.length} connections`);
      assert.match(answered[0], /"code":"UNAVAILABLE"/);
      assert.match(newLogs(), /WARN.*out of file descriptors/, 'the wall is logged');

      // New sessions: a prompt 503. Most are answered through a shard's spare
      // descriptor ("out of file descriptors"); but the shards share one
      // descriptor table, so the moment one shard frees its spare to answer,
      // another shard's accept may take that descriptor and refuse the session
      // the ordinary way, over the capacity. Both are the same refusal to a client.
      const k = await knock(server);
      assert.equal(k.status, 503, JSON.stringify(k));
      assert.ok(WALL_REFUSALS.some((r) => isDeepStrictEqual(JSON.parse(k.body), r)), k.body);
      assert.ok(k.ms < 1500, `answered in ${k.ms} ms`);
      // /health still answers 200.
      const health = await httpRequest(server, 'GET', '/health');
      assert.equal(health.status, 200, JSON.stringify(health));
      assert.deepEqual(health.json, { status: 'ok' });
      // The wall is still there: API requests are refused. (One may slip
      // through the descriptor a shard's spare frees for a moment, taken by
      // another shard's accept — see the knock above — so of three tries at
      // least one meets the wall.)
      const tries = [];
      for (let i = 0; i < 3; i++) tries.push((await httpRequest(server, 'GET', '/api/stats')).status);
      assert.ok(tries.includes(503), `GET /api/stats at the wall: ${tries}`);

      // No spinning while clients keep knocking at the wall.
      const knocking = keepKnocking(server, 20);
      await sleep(200);
      const cpu = await cpuShare(server.pid, 1000);
      const results = await knocking.stop();
      for (const r of results) {
        assert.equal(r.status, 503, JSON.stringify(r));
        assert.ok(WALL_REFUSALS.some((w) => isDeepStrictEqual(JSON.parse(r.body), w)), r.body);
      }
      const slowest = Math.max(...results.map((r) => r.ms));
      t.diagnostic(`at the wall (${fillers.length} fillers): ${results.length} knocks refused, slowest ${slowest} ms, server CPU ${(cpu * 100).toFixed(1)} %`);
      assert.ok(slowest < 1500, `refusals at the wall within 1.5 s (slowest ${slowest} ms; back-off at most 500 ms)`);
      assert.ok(cpu < 0.3, `server CPU ${(cpu * 100).toFixed(1)} % of a core at the wall, ${results.length} knocks`);

      // Open connections are served as before.
      const sample = connected.slice(0, 50);
      const acks = await Promise.all(sample.map((s) => emitWithAck(s, 'ping', {}, 5000)));
      assert.ok(acks.every((a) => a.success === true), 'pings acked at the wall');
      const [a, b] = connected;
      const room = uid('fd-wall-room');
      for (const s of [a, b]) assert.equal((await emitWithAck(s, 'join-room', { roomName: room })).success, true);
      const relayed = waitForEvent(b, 'fd-wall-relay', 5000);
      assert.equal((await emitWithAck(a, 'custom-event', { event: 'fd-wall-relay', data: 2, roomName: room })).success, true);
      assert.equal(await relayed, 2);
    } finally {
      for (const f of fillers) f.destroy();
    }

    // Descriptors free again: accepting resumes without help.
    await waitUntil(async () => (await httpRequest(server, 'GET', '/api/stats', undefined, 2000)).status === 200, 5000,
      () => 'the API did not come back');
    await waitUntil(() => newLogs().includes('file descriptors free again'), 5000, () => 'no "free again" log line');
    const descriptors = await metric(server, 'shardcast_connections_refused_total', { reason: 'descriptors' });
    assert.ok(descriptors - descriptorsBefore >= 2, `refusals counted as descriptors: ${descriptors - descriptorsBefore}`);
    assert.deepEqual(poller.failures, [], `/health answered 200 throughout (${poller.checks} checks, slowest ${poller.slowest} ms)`);
  });

  it('at the wall, a connection still sending its request head 1 s after its accept is closed: clients waiting behind get answers', async (t) => {
    const logMark = server.logs.length;
    const newLogs = () => server.logs.slice(logMark).map((l) => l.line).join('\n');
    // Slow heads (half a request, then nothing) until the process is out of
    // descriptors; before, each held its descriptor for the 30 s head timeout.
    const slow = [];
    try {
      for (let batch = 0; batch < 40 && !/out of file descriptors/.test(newLogs()); batch++) {
        for (let i = 0; i < 10; i++) {
          const conn = { socket: net.connect(server.port, '127.0.0.1'), opened: 0, closedAfter: null, answered: '' };
          conn.socket.on('connect', () => { conn.opened = Date.now(); conn.socket.write('GET /slow HTTP/1.1\r\nHost: x\r\n'); });
          conn.socket.on('data', (d) => { conn.answered += String(d); });
          conn.socket.on('close', () => { conn.closedAfter = Date.now() - conn.opened; });
          conn.socket.on('error', () => {});
          slow.push(conn);
        }
        await sleep(100);
      }
      assert.match(newLogs(), /WARN.*out of file descriptors/, `the wall was not reached with ${slow.length} slow heads`);
      // Those the server accepted and that were still sending their head got
      // at most about a second (plus a back-off round): closed without an answer.
      await waitUntil(() => slow.filter((c) => c.closedAfter !== null).length >= 10, 5000,
        () => `${slow.filter((c) => c.closedAfter !== null).length} of ${slow.length} slow heads closed`);
      const closed = slow.filter((c) => c.closedAfter !== null && c.answered === '');
      const early = closed.filter((c) => c.closedAfter < 900);
      t.diagnostic(`${slow.length} slow heads, ${closed.length} closed without an answer after ${Math.min(...closed.map((c) => c.closedAfter))}–${Math.max(...closed.map((c) => c.closedAfter))} ms`);
      assert.deepEqual(early.map((c) => c.closedAfter), [], 'no slow head is closed before its second is up');
      // The descriptors they held serve the clients that come next.
      await waitUntil(async () => (await httpRequest(server, 'GET', '/api/stats', undefined, 2000)).status === 200, 3000,
        () => 'GET /api/stats is not served again');
      const k = await knock(server);
      assert.equal(k.status, 503, JSON.stringify(k));
      assert.deepEqual(JSON.parse(k.body), { code: 3, message: 'Server at connection capacity' });
      assert.ok(k.ms < 1500, `a new session is answered in ${k.ms} ms`);
      assert.deepEqual(poller.failures, [], `/health answered 200 throughout (${poller.checks} checks)`);
    } finally {
      for (const c of slow) c.socket.destroy();
    }
    await waitUntil(async () => (await metric(server, 'shardcast_tcp_connections')) <= connected.length + 3, 5000,
      () => 'the slow heads\' sockets are not all closed');
  });

  it('after 100 clients leave, new clients connect again without a restart', async () => {
    const leaving = connected.splice(0, 100);
    for (const s of leaving) s.disconnect();
    const remaining = connected.length;
    await waitUntil(async () => (await getJson(server, '/api/stats')).connections === remaining, 5000, () => 'disconnects not seen');
    await waitUntil(async () => (await metric(server, 'shardcast_tcp_connections')) <= remaining + 1, 5000, () => 'sockets not closed');
    poller.paused = true; // its connections would take room the new clients are counted against
    try {
      const again = await Promise.all(Array.from({ length: 100 }, (_, i) => tryConnect(server, `fd-again-${i}`)));
      for (const o of again) if (o.ok) connected.push(o.socket);
      const failed = again.filter((o) => !o.ok);
      assert.equal(failed.length, 0, `${failed.length} of 100 failed: ${failed.map((o) => o.error?.message).slice(0, 3)}`);
      // And the capacity still holds.
      const more = await Promise.all(Array.from({ length: 10 }, (_, i) => tryConnect(server, `fd-more-${i}`)));
      for (const o of more) if (o.ok) connected.push(o.socket);
      assert.ok(more.some((o) => !o.ok && refusedWith503(o.error)), 'over the capacity again: refused');
      assert.ok(connected.length <= capacity, `${connected.length} connected, capacity ${capacity}`);
      assert.equal((await getJson(server, '/api/stats')).connections, connected.length);
    } finally {
      poller.paused = false;
    }
  });
});

describe('soft open-file limit below the hard one', { skip }, () => {
  let server;
  before(async () => {
    server = await startServer({ SHARDS, RUST_LOG: 'info' }, { nofile: '256:4096' });
  });
  after(() => server?.stop());

  it('is raised to the hard limit at start, and the capacity follows from it', async () => {
    assert.deepEqual(openFileLimits(server.pid), { soft: 4096, hard: 4096 });
    const line = 'open-file limit (RLIMIT_NOFILE)';
    assert.deepEqual(await Promise.all(['soft_before', 'soft', 'hard'].map((f) => logField(server, line, f))), [256, 4096, 4096]);
    const capacity = 4096 - reserve(4096, SHARDS);
    assert.equal(await logField(server, 'connection capacity:', 'capacity'), capacity);
    assert.equal((await getJson(server, '/api/stats')).connectionCapacity, capacity);
    assert.equal(await metric(server, 'shardcast_connection_capacity'), capacity);
  });

  it('MAX_CONNECTIONS above the capacity is warned about at start', async () => {
    const other = await startServer({ SHARDS, RUST_LOG: 'info', MAX_CONNECTIONS: 100000 }, { nofile: '1024:1024' });
    try {
      const capacity = 1024 - reserve(1024, SHARDS);
      const find = () => other.logs.map((l) => l.line).find((l) => l.includes('MAX_CONNECTIONS is above the connection capacity'));
      await waitUntil(find, 3000, () => other.stderrText());
      const warning = find();
      assert.match(warning, /WARN/);
      assert.match(warning, new RegExp(`max_connections=100000 capacity=${capacity}\\b`));
      assert.equal((await getJson(other, '/api/stats')).connectionCapacity, capacity);
    } finally {
      await other.stop();
    }
  });
});
