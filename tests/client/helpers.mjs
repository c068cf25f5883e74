// Shared helpers for the shardcast integration tests.
//
// The tests drive the real binary (target/release/shardcast, or $SHARDCAST_BIN)
// with the official socket.io-client and, for the low-level tests, with a raw
// Engine.IO-over-WebSocket client built on the `ws` package.

import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { test as nodeTest } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import WebSocket from 'ws';

export { assert, io, WebSocket };

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BIN = path.resolve(REPO_ROOT, process.env.SHARDCAST_BIN || 'target/release/shardcast');

// Log lines are stored without ANSI colour codes.
const ANSI_RE = /\x1b\[[0-9;]*[A-Za-z]/g;

export const LISTENING_RE = /listening on http:\/\/[^:\s]+:(\d+)/;

// Every configuration variable of SPEC §7 (plus CONNECT_TIMEOUT_MS). They are
// removed from the inherited environment so that a developer's shell cannot
// change what a test sees; each test passes what it needs explicitly.
export const CONFIG_VARS = [
  'PORT', 'HOST', 'CORS_ORIGIN', 'WEBSOCKET_NAMESPACE', 'WEBSOCKET_TRANSPORTS', 'SHARDS',
  'API_KEY', 'JWT_SECRET', 'PING_INTERVAL_MS', 'PING_TIMEOUT_MS', 'MAX_PAYLOAD_BYTES',
  'RATE_LIMIT_PER_SEC', 'RATE_LIMIT_BURST', 'MAX_CONNECTIONS', 'MAX_ROOMS_PER_SOCKET',
  'PRESENCE_EVENTS', 'REDIS_URL', 'NODE_ENV', 'RUST_LOG', 'CONNECT_TIMEOUT_MS', 'ROOM_EVENTS', 'OUTBOX_LIMIT', 'LOG_FORMAT', 'REQUEST_TIMEOUT_MS',
  // cluster mode (issue 13)
  'REDIS_PREFIX', 'REDIS_ADAPTER_KEY', 'NODE_ID', 'CLUSTER_NODE_TTL', 'CLUSTER_REQUEST_TIMEOUT',
];

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let uidCounter = 0;
const issuedUids = new Set();
/** A name unique within this test process (safe as userId / roomName). */
export function uid(prefix = 'x') {
  uidCounter += 1;
  const name = `${prefix}-${uidCounter}-${randomBytes(3).toString('hex')}`;
  issuedUids.add(name);
  return name;
}

/**
 * Whether `name` came from uid() — in a test that shares a server with
 * earlier ones, events about those tests' users may still arrive.
 */
export const isIssuedUid = (name) => issuedUids.has(name);

// ---------------------------------------------------------------------------
// Test wrapper: closes the clients a test opened and, when the test fails,
// prints the server logs written while it ran.
// ---------------------------------------------------------------------------

const liveServers = new Set();
let currentScope = null;

/**
 * Like node:test's `test`, plus: every client opened through connect() /
 * rawConnect() during the test is closed afterwards, and on failure the
 * stderr/stdout lines that the servers wrote during the test are printed.
 */
export function it(name, opts, fn) {
  if (typeof opts === 'function') { fn = opts; opts = {}; }
  return nodeTest(name, opts, async (t) => {
    const scope = { sockets: new Set(), raws: new Set(), servers: new Map() };
    for (const s of liveServers) scope.servers.set(s, s.logs.length);
    currentScope = scope;
    try {
      await fn(t);
    } catch (err) {
      dumpLogs(name, scope);
      throw err;
    } finally {
      currentScope = null;
      for (const s of scope.sockets) { try { s.disconnect(); } catch { /* ignore */ } }
      for (const r of scope.raws) { try { r.ws.terminate(); } catch { /* ignore */ } }
    }
  });
}

function dumpLogs(testName, scope) {
  const MAX = 300;
  for (const [server, mark] of scope.servers) {
    const lines = server.logs.slice(mark);
    // SHARDCAST_TEST_LOG_DIR=/some/dir keeps the whole log of every failed test there.
    if (process.env.SHARDCAST_TEST_LOG_DIR) {
      const file = path.join(process.env.SHARDCAST_TEST_LOG_DIR, `${testName.replace(/[^A-Za-z0-9]+/g, '_').slice(0, 80)}.${server.pid}.log`);
      fs.writeFileSync(file, server.logs.map((l) => `[${l.stream}] ${l.line}`).join('\n'));
      process.stderr.write(`(full server log written to ${file})\n`);
    }
    const shown = lines.slice(-MAX);
    process.stderr.write(
      `\n----- shardcast logs (pid ${server.pid}, port ${server.port}) during failed test "${testName}"` +
      `${lines.length > MAX ? ` (last ${MAX} of ${lines.length} lines)` : ''} -----\n`,
    );
    for (const l of shown) process.stderr.write(`[${l.stream}] ${l.line}\n`);
    if (server.exited) process.stderr.write(`[server exited: ${JSON.stringify(server.exited)}]\n`);
    process.stderr.write('----- end of shardcast logs -----\n');
  }
}

// ---------------------------------------------------------------------------
// Server processes
// ---------------------------------------------------------------------------

function serverEnv(env) {
  const full = { ...process.env };
  for (const k of CONFIG_VARS) delete full[k];
  Object.assign(full, { PORT: '0', HOST: '127.0.0.1' });
  // SHARDCAST_TEST_RUST_LOG=debug (for example) turns on server logging in every test.
  if (process.env.SHARDCAST_TEST_RUST_LOG) full.RUST_LOG = process.env.SHARDCAST_TEST_RUST_LOG;
  // An env value of undefined/null removes the variable (e.g. to test a default).
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined || v === null) delete full[k];
    else full[k] = String(v);
  }
  return full;
}

function killAllOnExit() {
  for (const s of liveServers) { try { s.child.kill('SIGKILL'); } catch { /* ignore */ } }
}
process.on('exit', killAllOnExit);

/**
 * Start the broker with PORT=0 HOST=127.0.0.1 plus `env`, and wait for its
 * "shardcast listening on http://127.0.0.1:<port>" line on stdout.
 * `nofile: 'SOFT:HARD'` starts it under `prlimit --nofile=SOFT:HARD` (util-linux),
 * which sets the open-file limits and then execs the broker (same pid).
 * Returns { url, port, pid, logs, child, stop(), exitPromise }.
 */
export async function startServer(env = {}, { readyTimeoutMs = 20000, args = [], nofile, prefix = [] } = {}) {
  // `prefix`: a command that runs the binary (`ip netns exec NAME`); it must
  // exec it, so that the child's pid is the server's.
  const command = nofile ? ['prlimit', `--nofile=${nofile}`, '--', ...prefix, BIN] : [...prefix, BIN];
  const child = spawn(command[0], [...command.slice(1), ...args], { env: serverEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  const server = {
    child, pid: child.pid, logs: [], port: null, url: null, exited: null,
    stdoutText: () => server.logs.filter((l) => l.stream === 'stdout').map((l) => l.line).join('\n'),
    stderrText: () => server.logs.filter((l) => l.stream === 'stderr').map((l) => l.line).join('\n'),
  };
  server.exitPromise = new Promise((resolve) => {
    child.on('exit', (code, signal) => { server.exited = { code, signal }; liveServers.delete(server); resolve(server.exited); });
    child.on('error', (err) => { server.exited = { code: null, signal: null, error: err.message }; liveServers.delete(server); resolve(server.exited); });
  });
  liveServers.add(server);
  if (currentScope) currentScope.servers.set(server, 0);

  let onReady;
  const ready = new Promise((resolve) => { onReady = resolve; });
  for (const stream of ['stdout', 'stderr']) {
    const rl = readline.createInterface({ input: child[stream] });
    rl.on('line', (rawLine) => {
      const line = rawLine.replace(ANSI_RE, '');
      server.logs.push({ stream, line, at: Date.now() });
      if (stream === 'stdout' && server.port === null) {
        const m = LISTENING_RE.exec(line);
        if (m) { server.port = Number(m[1]); onReady(); }
      }
    });
  }

  server.stop = async () => {
    if (server.exited) return server.exited;
    child.kill('SIGTERM');
    const t = setTimeout(() => { if (!server.exited) child.kill('SIGKILL'); }, 3000);
    const res = await server.exitPromise;
    clearTimeout(t);
    return res;
  };

  let timer;
  const outcome = await Promise.race([
    ready.then(() => 'ready'),
    server.exitPromise.then(() => 'exited'),
    new Promise((resolve) => { timer = setTimeout(() => resolve('timeout'), readyTimeoutMs); }),
  ]);
  clearTimeout(timer);
  if (outcome !== 'ready') {
    await server.stop();
    const tail = server.logs.slice(-40).map((l) => `[${l.stream}] ${l.line}`).join('\n');
    throw new Error(
      `shardcast (${BIN}) did not print its listening line: ${outcome}` +
      ` ${JSON.stringify(server.exited)}\nenv: ${JSON.stringify(env)}\n${tail}`,
    );
  }
  server.url = `http://127.0.0.1:${server.port}`;
  return server;
}

/**
 * Run the binary expecting it to exit on its own (e.g. invalid configuration).
 * Resolves { code, signal, stdout, stderr, timedOut }.
 */
export async function runToExit(env = {}, { timeoutMs = 10000, args = [] } = {}) {
  const child = spawn(BIN, args, { env: serverEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => { stdout += d; });
  child.stderr.on('data', (d) => { stderr += d; });
  let timedOut = false;
  const timer = setTimeout(() => { timedOut = true; child.kill('SIGKILL'); }, timeoutMs);
  const [code, signal] = await new Promise((resolve) => {
    child.on('exit', (c, s) => resolve([c, s]));
    child.on('error', (e) => { stderr += `spawn error: ${e.message}`; resolve([null, null]); });
  });
  clearTimeout(timer);
  return { code, signal, stdout, stderr, timedOut };
}

// ---------------------------------------------------------------------------
// socket.io-client helpers
// ---------------------------------------------------------------------------

/**
 * Every event the socket receives is recorded in socket.inbox (in arrival
 * order). waitForEvent consumes recorded events, so an event that arrived
 * before the test started waiting for it is not lost.
 */
export function attachInbox(socket) {
  const inbox = { events: [], waiters: new Set() };
  socket.inbox = inbox;
  socket.onAny((event, ...args) => {
    const rec = { event, args, data: args[0], consumed: false, at: Date.now() };
    inbox.events.push(rec);
    for (const w of [...inbox.waiters]) w(rec);
  });
  return inbox;
}

export function track(socket) {
  if (currentScope) currentScope.sockets.add(socket);
  return socket;
}

/**
 * Create a socket.io-client socket (websocket only, no reconnection, new
 * Manager) WITHOUT waiting for it to connect. Its inbox records events from
 * the start.
 */
export function makeSocket(url, opts = {}) {
  const socket = io(url, {
    transports: ['websocket'],
    reconnection: false,
    forceNew: true,
    timeout: 10000,
    ...opts,
  });
  attachInbox(socket);
  // socket.io-client clears socket.id on disconnect; socket.sid keeps it.
  socket.on('connect', () => { socket.sid = socket.id; });
  socket.on('disconnect', (reason, description) => {
    socket.disconnectReason = reason;
    socket.disconnectDescription = description;
    socket.disconnectedAt = Date.now();
  });
  return track(socket);
}

/** Connect and resolve on `connect`; reject on connect_error or timeout. */
export function connect(url, opts = {}, timeoutMs = 10000) {
  const socket = makeSocket(url, opts);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      done();
      socket.disconnect();
      reject(new Error(`socket.io connect to ${url} timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    const onConnect = () => { done(); resolve(socket); };
    const onError = (err) => {
      done();
      socket.disconnect();
      const e = new Error(`connect_error: ${err && err.message}`);
      e.cause = err;
      e.connectError = err;
      reject(e);
    };
    function done() {
      clearTimeout(timer);
      socket.off('connect', onConnect);
      socket.off('connect_error', onError);
    }
    socket.on('connect', onConnect);
    socket.on('connect_error', onError);
  });
}

/** Connect expecting a connect_error; resolves with the Error the client got. */
export function connectExpectingError(url, opts = {}, timeoutMs = 10000) {
  const socket = makeSocket(url, opts);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.disconnect();
      reject(new Error(`expected connect_error from ${url}, got nothing within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.on('connect', () => {
      clearTimeout(timer);
      socket.disconnect();
      reject(new Error(`expected connect_error from ${url}, but the socket connected (id ${socket.id})`));
    });
    socket.on('connect_error', (err) => {
      clearTimeout(timer);
      socket.disconnect();
      resolve(err);
    });
  });
}

/** Connect and authenticate (development mode) as userId; waits for both acks. */
export async function connectAs(url, userId, opts = {}) {
  const socket = await connect(url, opts);
  const ack = await emitWithAck(socket, 'authenticate', { userId });
  assert.equal(ack && ack.success, true, `authenticate as ${userId} failed: ${JSON.stringify(ack)}`);
  socket.userId = userId;
  return socket;
}

/**
 * Emit `event` (with `payload` unless it is undefined) and resolve with the
 * ack payload. SPEC §2: an ack carries exactly one object.
 */
export function emitWithAck(socket, event, payload, timeoutMs = 5000) {
  const args = payload === undefined ? [] : [payload];
  return emitArgsWithAck(socket, event, args, timeoutMs);
}

/** Like emitWithAck, with an explicit argument list. */
export function emitArgsWithAck(socket, event, args, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`no ack for "${event}" ${JSON.stringify(args).slice(0, 200)} within ${timeoutMs} ms (connected=${socket.connected})`)),
      timeoutMs,
    );
    socket.emit(event, ...args, (...ackArgs) => {
      clearTimeout(timer);
      if (ackArgs.length !== 1) {
        reject(new Error(`ack for "${event}" carried ${ackArgs.length} arguments, expected one object: ${JSON.stringify(ackArgs)}`));
      } else {
        resolve(ackArgs[0]);
      }
    });
  });
}

function describeInbox(socket) {
  const pending = socket.inbox.events.filter((r) => !r.consumed);
  return pending.slice(-15).map((r) => `${r.event} ${JSON.stringify(r.args).slice(0, 160)}`).join('\n  ') || '(none)';
}

/**
 * Resolve with the first argument of the first not-yet-consumed `name` event
 * (matching `predicate(data, rec)` if given), waiting up to timeoutMs.
 */
export function waitForEvent(socket, name, timeoutMs = 5000, predicate = () => true) {
  const inbox = socket.inbox;
  const matches = (rec) => !rec.consumed && rec.event === name && predicate(rec.data, rec);
  const found = inbox.events.find(matches);
  if (found) { found.consumed = true; return Promise.resolve(found.data); }
  return new Promise((resolve, reject) => {
    const waiter = (rec) => {
      if (matches(rec)) {
        rec.consumed = true;
        inbox.waiters.delete(waiter);
        clearTimeout(timer);
        resolve(rec.data);
      }
    };
    const timer = setTimeout(() => {
      inbox.waiters.delete(waiter);
      reject(new Error(
        `no "${name}" event${predicate.name && predicate.name !== 'predicate' ? ` matching ${predicate.name}` : ''} within ${timeoutMs} ms` +
        ` (socket ${socket.id}, connected=${socket.connected}); unconsumed events received:\n  ${describeInbox(socket)}`,
      ));
    }, timeoutMs);
    inbox.waiters.add(waiter);
  });
}

/** Resolve with the full argument list of the next `name` event. */
/**
 * Instead of a quiet window before checking that nothing more arrived from
 * `sender`: it relays a marker to `roomName` and every receiver waits for
 * it. Per-sender FIFO (README) puts everything the server sent those
 * receivers from `sender` before the marker — a late duplicate included.
 */
export async function relayBarrier(sender, roomName, receivers, timeoutMs = 10000) {
  const id = uid('barrier');
  const got = receivers.map((r) => waitForEvent(r, 'barrier', timeoutMs, (d) => d && d.id === id));
  assertSuccess(await emitWithAck(sender, 'custom-event', { event: 'barrier', data: { id }, roomName }));
  await Promise.all(got);
}

/**
 * Instead of a quiet window after requests that were all acknowledged (API
 * publishes answered, relays and private messages acked, joins acked): a
 * broadcast to all through the API (loopback, no API_KEY), awaited on every
 * connected socket of `sockets`. An ack or an answer comes once the
 * deliveries were handed to every shard, and each shard takes what it is
 * handed in order and each socket has one queue, so anything those requests
 * caused — a late duplicate included — reaches each socket before this.
 */
export async function broadcastBarrier(server, sockets, timeoutMs = 10000) {
  const id = uid('barrier');
  const got = sockets.filter((s) => s.connected).map((s) => waitForEvent(s, 'barrier', timeoutMs, (d) => d && d.id === id));
  const res = await fetch(`${server.url}/api/broadcast`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ event: 'barrier', data: { id } }),
  });
  assert.equal(res.status, 200, `barrier broadcast: ${res.status} ${await res.text()}`);
  await Promise.all(got);
}

export async function waitForEventArgs(socket, name, timeoutMs = 5000, predicate = () => true) {
  let args;
  await waitForEvent(socket, name, timeoutMs, (data, rec) => {
    if (predicate(data, rec)) { args = rec.args; return true; }
    return false;
  });
  return args;
}

/** All recorded `name` events (consumed or not) whose data matches. */
export function received(socket, name, predicate = () => true) {
  return socket.inbox.events.filter((r) => r.event === name && predicate(r.data, r)).map((r) => r.data);
}

/**
 * Wait `ms`, then assert that no unconsumed `name` event (matching predicate)
 * has been received.
 */
export async function expectNoEvent(socket, name, ms = 400, predicate = () => true) {
  await sleep(ms);
  assertNoEvent(socket, name, predicate);
}

export function assertNoEvent(socket, name, predicate = () => true, what = '') {
  const extra = socket.inbox.events.filter((r) => !r.consumed && r.event === name && predicate(r.data, r));
  assert.equal(
    extra.length, 0,
    `unexpected "${name}" event(s)${what ? ` (${what})` : ''} on socket ${socket.id}: ${JSON.stringify(extra.map((r) => r.args)).slice(0, 500)}`,
  );
}

/** Resolve once `socket` emits `disconnect`; resolves with the reason. */
export function waitForDisconnect(socket, timeoutMs = 5000) {
  if (socket.disconnectReason) return Promise.resolve(socket.disconnectReason);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`socket ${socket.id} was not disconnected within ${timeoutMs} ms`)), timeoutMs);
    socket.once('disconnect', (reason) => { clearTimeout(timer); resolve(reason); });
  });
}

/** Poll `cond` until it returns truthy; reject with describe() after timeoutMs. */
export async function waitUntil(cond, timeoutMs = 5000, describe = () => '', intervalMs = 20) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms. ${describe()}`);
    await sleep(intervalMs);
  }
}

// ---------------------------------------------------------------------------
// Assertions on payloads
// ---------------------------------------------------------------------------

const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$/;

/** SPEC §3: timestamps are ISO-8601 UTC strings (and, on one machine, close to now). */
export function assertTimestamp(ts, what = 'timestamp') {
  assert.equal(typeof ts, 'string', `${what} should be an ISO-8601 string, got ${JSON.stringify(ts)}`);
  assert.match(ts, ISO_UTC, `${what} should be ISO-8601 UTC (…Z), got ${ts}`);
  const skew = Math.abs(Date.parse(ts) - Date.now());
  assert.ok(skew < 60000, `${what} ${ts} is ${skew} ms away from now`);
}

/** SPEC §2 failure ack: { success: false, error: "<message>", code: "<CODE>" }. */
export function assertFailure(ack, code, fieldMention, what = '') {
  const ctx = what ? `[${what}] ` : '';
  assert.ok(ack && typeof ack === 'object', `${ctx}ack should be an object, got ${JSON.stringify(ack)}`);
  assert.equal(ack.success, false, `${ctx}expected a failure ack with code ${code}, got ${JSON.stringify(ack)}`);
  assert.equal(ack.code, code, `${ctx}expected code ${code}, got ${JSON.stringify(ack)}`);
  assert.equal(typeof ack.error, 'string', `${ctx}failure ack needs an "error" string: ${JSON.stringify(ack)}`);
  assert.ok(ack.error.length > 0, `${ctx}failure ack "error" must not be empty: ${JSON.stringify(ack)}`);
  if (fieldMention) {
    assert.ok(ack.error.includes(fieldMention), `${ctx}error text should name "${fieldMention}": ${JSON.stringify(ack)}`);
  }
}

/** SPEC §2 success ack. */
export function assertSuccess(ack, what = '') {
  assert.ok(ack && typeof ack === 'object', `${what} ack should be an object, got ${JSON.stringify(ack)}`);
  assert.equal(ack.success, true, `${what} should succeed, got ${JSON.stringify(ack)}`);
}

// ---------------------------------------------------------------------------
// JWT (HS256 etc.) signer, no dependency
// ---------------------------------------------------------------------------

const HMAC = { HS256: 'sha256', HS384: 'sha384', HS512: 'sha512' };

/**
 * Sign `payload` as a JWT. header defaults to { alg: 'HS256', typ: 'JWT' };
 * alg 'none' gives an empty signature. `signWith` overrides the HMAC used
 * (to forge e.g. an RS256 header with an HMAC signature).
 */
export function signJwt(payload, secret, header = { alg: 'HS256', typ: 'JWT' }, { signWith } = {}) {
  const h = Buffer.from(JSON.stringify(header)).toString('base64url');
  const p = Buffer.from(JSON.stringify(payload)).toString('base64url');
  const alg = signWith || header.alg;
  if (alg === 'none') return `${h}.${p}.`;
  const hash = HMAC[alg];
  if (!hash) throw new Error(`signJwt: unsupported alg ${alg}`);
  const sig = createHmac(hash, secret).update(`${h}.${p}`).digest('base64url');
  return `${h}.${p}.${sig}`;
}

export const nowSec = () => Math.floor(Date.now() / 1000);

// ---------------------------------------------------------------------------
// Raw Engine.IO v4 / Socket.IO v5 client over `ws`
// ---------------------------------------------------------------------------

/** Parse a Socket.IO packet carried in an Engine.IO message ("4..."). */
export function parseSio(str) {
  if (typeof str !== 'string' || str[0] !== '4') return null;
  let i = 1;
  const type = Number(str[i]);
  i += 1;
  let attachments = 0;
  const att = /^(\d+)-/.exec(str.slice(i));
  if ((type === 5 || type === 6) && att) { attachments = Number(att[1]); i += att[0].length; }
  let nsp = '/';
  if (str[i] === '/') {
    const comma = str.indexOf(',', i);
    nsp = comma === -1 ? str.slice(i) : str.slice(i, comma);
    i = comma === -1 ? str.length : comma + 1;
  }
  const idm = /^\d+/.exec(str.slice(i));
  let id = null;
  if (idm) { id = Number(idm[0]); i += idm[0].length; }
  let data;
  if (i < str.length) {
    try { data = JSON.parse(str.slice(i)); } catch { data = { unparsable: str.slice(i) }; }
  }
  return { type, nsp, id, attachments, data };
}

/**
 * Open a raw WebSocket to /socket.io/ and wait for the Engine.IO open packet.
 * Options: autoPong (answer "2" with "3"), query (default EIO=4&transport=websocket).
 */
export async function rawConnect(server, { autoPong = false, query = 'EIO=4&transport=websocket', timeoutMs = 5000, expectOpen = true } = {}) {
  const port = typeof server === 'number' ? server : server.port;
  const ws = new WebSocket(`ws://127.0.0.1:${port}/socket.io/?${query}`);
  const raw = {
    ws,
    messages: [],
    waiters: new Set(),
    pings: [],
    closeInfo: null,
    openedAt: null,
    autoPong,
    ns: '/',
  };
  if (currentScope) currentScope.raws.add(raw);
  raw.closed = new Promise((resolve) => {
    ws.on('close', (code, reason) => {
      raw.closeInfo = { code, reason: reason.toString(), at: Date.now() };
      for (const w of [...raw.waiters]) w(null);
      resolve(raw.closeInfo);
    });
  });
  ws.on('error', (err) => { raw.error = err; });
  ws.on('message', (data, isBinary) => {
    const msg = { data: isBinary ? data : data.toString(), isBinary, at: Date.now(), consumed: false };
    if (!isBinary && msg.data === '2') {
      raw.pings.push(msg.at);
      msg.consumed = true;
      if (raw.autoPong && ws.readyState === WebSocket.OPEN) ws.send('3');
    }
    raw.messages.push(msg);
    for (const w of [...raw.waiters]) w(msg);
  });

  raw.isOpen = () => ws.readyState === WebSocket.OPEN;
  raw.send = (data, opts) => new Promise((resolve, reject) => ws.send(data, opts || {}, (err) => (err ? reject(err) : resolve())));
  raw.close = () => ws.close();

  /** Next unconsumed message matching pred (resolves null if the socket closes first). */
  raw.next = (pred = () => true, ms = 5000) => {
    const matches = (m) => m && !m.consumed && pred(m.data, m);
    const found = raw.messages.find(matches);
    if (found) { found.consumed = true; return Promise.resolve(found.data); }
    if (raw.closeInfo) return Promise.resolve(null);
    return new Promise((resolve, reject) => {
      const waiter = (m) => {
        if (m === null) { done(); resolve(null); return; }
        if (matches(m)) { m.consumed = true; done(); resolve(m.data); }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`raw client: no matching message within ${ms} ms; unconsumed: ${JSON.stringify(raw.messages.filter((x) => !x.consumed).map((x) => x.data)).slice(0, 500)}`));
      }, ms);
      function done() { clearTimeout(timer); raw.waiters.delete(waiter); }
      raw.waiters.add(waiter);
    });
  };

  /** Resolve with close info once closed, or reject after ms. */
  raw.waitClosed = (ms = 5000) => {
    if (raw.closeInfo) return Promise.resolve(raw.closeInfo);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`raw connection still open after ${ms} ms`)), ms);
      raw.closed.then((info) => { clearTimeout(timer); resolve(info); });
    });
  };

  /** Send a Socket.IO CONNECT and resolve with the parsed reply (CONNECT or CONNECT_ERROR). */
  raw.connectNs = async (ns = '/', auth) => {
    raw.ns = ns;
    const prefix = ns === '/' ? '' : `${ns},`;
    await raw.send(`40${prefix}${auth === undefined ? '' : JSON.stringify(auth)}`);
    const reply = await raw.next((d) => typeof d === 'string' && parseSio(d) && parseSio(d).nsp === ns && [0, 4].includes(parseSio(d).type));
    if (reply === null) throw new Error(`raw client: connection closed before CONNECT reply (close ${JSON.stringify(raw.closeInfo)})`);
    const p = parseSio(reply);
    p.raw = reply;
    if (p.type === 0) raw.sid = p.data && p.data.sid;
    return p;
  };

  raw.eventPacket = (args, id) => `42${raw.ns === '/' ? '' : `${raw.ns},`}${id === undefined ? '' : id}${JSON.stringify(args)}`;

  raw.emit = (...args) => raw.send(raw.eventPacket(args));

  let nextAckId = 100;
  raw.emitWithAck = async (args, ms = 5000) => {
    const id = nextAckId++;
    await raw.send(raw.eventPacket(args, id));
    const reply = await raw.next((d) => { const p = parseSio(d); return p && p.type === 3 && p.id === id; }, ms);
    if (reply === null) throw new Error(`raw client: closed before ack ${id} (close ${JSON.stringify(raw.closeInfo)})`);
    return parseSio(reply).data;
  };

  /** Wait for a Socket.IO EVENT named `name`; resolves with its argument list. */
  raw.waitEvent = async (name, ms = 5000, pred = () => true) => {
    const msg = await raw.next((d) => {
      const p = parseSio(d);
      return p && p.type === 2 && Array.isArray(p.data) && p.data[0] === name && pred(p.data.slice(1));
    }, ms);
    if (msg === null) throw new Error(`raw client: closed while waiting for "${name}" (close ${JSON.stringify(raw.closeInfo)})`);
    return parseSio(msg).data.slice(1);
  };

  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`raw websocket to port ${port} did not open within ${timeoutMs} ms`)), timeoutMs);
    ws.once('open', () => { clearTimeout(timer); raw.openedAt = Date.now(); resolve(); });
    ws.once('unexpected-response', (req, res) => {
      clearTimeout(timer);
      reject(new Error(`raw websocket upgrade refused: HTTP ${res.statusCode}`));
    });
    ws.once('error', (err) => { clearTimeout(timer); reject(err); });
  });
  if (expectOpen) {
    const open = await raw.next((d) => typeof d === 'string' && d[0] === '0', timeoutMs);
    if (open === null) throw new Error(`raw client: closed before the Engine.IO open packet (close ${JSON.stringify(raw.closeInfo)})`);
    raw.openRaw = open;
    raw.open = JSON.parse(open.slice(1));
    raw.openAt = Date.now();
  }
  return raw;
}
