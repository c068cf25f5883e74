// The HTTP JSON API (SPEC §5, issue 3) driven over HTTP while real
// socket.io-client connections observe the effects. SHARDS=4, so room
// members and a user's connections sit on different shards.

import { describe, before, after } from 'node:test';
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import {
  assert, it, startServer, connect, connectAs, emitWithAck, assertSuccess, assertTimestamp,
  received, waitForEvent, waitUntil, uid,
} from './helpers.mjs';
import { clientHost, curlFrom, netnsMissing, requireNetns, CURL } from './netns-helpers.mjs';

// ---------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------

/**
 * One HTTP request with node:http (raw bodies, any method, early answers to
 * oversized bodies). `body`: an object/array/number (sent as JSON), a string
 * or a Buffer (sent as is), or undefined (no body). Resolves
 * { status, headers, text, json } ; rejects after timeoutMs (no hang).
 */
function request(server, method, path, { body, headers = {}, timeoutMs = 10000, host = '127.0.0.1', port } = {}) {
  let payload = null;
  if (body !== undefined) {
    payload = Buffer.isBuffer(body) ? body : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
  }
  const hdrs = { ...headers };
  if (payload) {
    if (!Object.keys(hdrs).some((k) => k.toLowerCase() === 'content-type')) hdrs['Content-Type'] = 'application/json';
    hdrs['Content-Length'] = String(payload.length);
  }
  return new Promise((resolve, reject) => {
    let settled = false;
    const finish = (fn, v) => { if (!settled) { settled = true; clearTimeout(timer); fn(v); } };
    const req = http.request({ host, port: port ?? server.port, method, path, headers: hdrs, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('error', (e) => finish(reject, e));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try { json = JSON.parse(text); } catch { json = undefined; }
        finish(resolve, { status: res.statusCode, headers: res.headers, text, json });
      });
    });
    const timer = setTimeout(() => {
      req.destroy();
      finish(reject, new Error(`${method} ${path}: no complete answer within ${timeoutMs} ms`));
    }, timeoutMs);
    // The server may answer (413) before it read the whole body and close the
    // connection: a write error after the response started is not a failure.
    req.on('error', (e) => { if (!req.res) finish(reject, new Error(`${method} ${path}: ${e.message}`)); });
    if (payload) req.write(payload);
    req.end();
  });
}

const enc = encodeURIComponent;
const show = (r) => `HTTP ${r.status} ${r.text.slice(0, 300)}`;

/** Assert a 200 JSON answer and return its body. */
function ok(r, what) {
  assert.equal(r.status, 200, `${what}: expected 200, got ${show(r)}`);
  assert.match(String(r.headers['content-type']), /^application\/json/, `${what}: content-type`);
  assert.ok(r.json && typeof r.json === 'object', `${what}: body is not JSON: ${r.text.slice(0, 200)}`);
  return r.json;
}

/** Assert a client-mistake answer: the given 4xx status, JSON { error, code }. */
function clientError(r, status, code, what) {
  assert.ok(r.status < 500, `${what}: server error ${show(r)}`);
  assert.equal(r.status, status, `${what}: expected ${status} ${code}, got ${show(r)}`);
  assert.match(String(r.headers['content-type']), /^application\/json/, `${what}: content-type ${r.headers['content-type']}`);
  assert.ok(r.json && typeof r.json === 'object' && !Array.isArray(r.json), `${what}: body is not a JSON object: ${r.text.slice(0, 200)}`);
  assert.equal(typeof r.json.error, 'string', `${what}: "error" must be a string: ${r.text}`);
  assert.ok(r.json.error.length > 0, `${what}: "error" is empty`);
  assert.equal(r.json.code, code, `${what}: code, body ${r.text}`);
}

const get = (server, path, opts) => request(server, 'GET', path, opts);
const post = (server, path, body, opts) => request(server, 'POST', path, { ...opts, body });

async function stats(server) { return ok(await get(server, '/api/stats'), 'GET /api/stats'); }

/** Wait until the server holds no connection, room or online user (previous test's clients gone). */
async function settle(server) {
  let last;
  await waitUntil(async () => {
    last = await stats(server);
    return last.connections === 0 && last.rooms === 0 && last.onlineUsers === 0;
  }, 10000, () => `server not idle: ${JSON.stringify(last)}`, 50);
}

async function inBatches(items, size, fn) {
  const out = [];
  for (let i = 0; i < items.length; i += size) out.push(...await Promise.all(items.slice(i, i + size).map(fn)));
  return out;
}

async function join(s, roomName) {
  const ack = await emitWithAck(s, 'join-room', { roomName });
  assertSuccess(ack, `join-room ${roomName}`);
  return ack;
}

/** socketId -> shard, from GET /api/connections. */
async function shardMap(server) {
  const body = ok(await get(server, '/api/connections'), 'GET /api/connections');
  return new Map(body.connections.map((c) => [c.socketId, c.shard]));
}

/**
 * Connect `n` sockets authenticated as userId, re-rolling connections until
 * they sit on at least min(n, 2) different shards (the kernel spreads
 * connections by hashing; a repeat is retried, bounded).
 */
async function connectUserSpread(server, userId, n) {
  const sockets = [];
  for (let i = 0; i < n; i += 1) sockets.push(await connectAs(server.url, userId));
  const want = Math.min(n, 2);
  for (let attempt = 0; attempt < 40; attempt += 1) {
    const shards = await shardMap(server);
    const distinct = new Set(sockets.map((s) => shards.get(s.id)));
    assert.ok(!distinct.has(undefined), `a socket of ${userId} is missing from GET /api/connections`);
    if (distinct.size >= want) return sockets;
    const old = sockets.pop();
    old.disconnect();
    sockets.push(await connectAs(server.url, userId));
  }
  throw new Error(`could not spread ${n} connections of ${userId} over ${want} shards`);
}

/** Distinct shards of the given sockets. */
async function shardsOf(server, sockets) {
  const shards = await shardMap(server);
  return new Set(sockets.map((s) => shards.get(s.id)));
}

/**
 * Instead of a quiet window after an API publish: a broadcast to all, sent
 * once the publish has been answered, and awaited on every connected socket
 * of `sockets`. The answer comes once every shard has queued the publish,
 * so on each socket anything it caused — a duplicate included — comes
 * before the marker (one queue per socket).
 */
async function apiBarrier(server, sockets, { headers } = {}) {
  assert.ok(server, 'apiBarrier needs the server');
  const id = uid('barrier');
  const got = sockets.filter((s) => s.connected).map((s) => waitForEvent(s, 'api-barrier', 5000, (d) => d && d.id === id));
  ok(await post(server, '/api/broadcast', { event: 'api-barrier', data: { id } }, { headers }), 'barrier broadcast');
  await Promise.all(got);
}

/**
 * After a publish: wait until every socket in `expected` has received `event`,
 * then for a later broadcast to reach them all (apiBarrier), then assert that each expected socket got it exactly
 * once (with `data`), and every other socket in `all` never got it.
 * Returns how many sockets got it.
 */
async function expectDelivery(all, expected, event, data, { server, headers } = {}) {
  const exp = new Set(expected);
  await waitUntil(() => expected.every((s) => received(s, event).length > 0), 5000, () => {
    const missing = expected.filter((s) => received(s, event).length === 0);
    return `${missing.length}/${expected.length} expected sockets did not get "${event}": ${missing.map((s) => `${s.id}(${s.userId})`).join(', ')}`;
  });
  await apiBarrier(server, all, { headers });
  let got = 0;
  for (const s of all) {
    const recs = received(s, event);
    if (recs.length > 0) got += 1;
    if (exp.has(s)) {
      assert.equal(recs.length, 1, `socket ${s.id} (${s.userId}) should get "${event}" exactly once, got ${recs.length}`);
      if (data !== undefined) assert.deepEqual(recs[0], data, `payload of "${event}" on ${s.id}`);
    } else {
      assert.equal(recs.length, 0, `socket ${s.id} (${s.userId}) should not get "${event}", got ${recs.length}`);
    }
  }
  return got;
}

const richData = (tag) => ({ tag, n: 42, f: 1.5, ok: true, none: null, list: [1, 'two', { three: 3 }], text: 'héllo ☃ 日本 "q" \\ \n' });

/** A well-formed socket id (22 chars URL-safe base64 of 16 bytes) that no connection has. */
function unusedSocketId(shard = 0) {
  const b = randomBytes(16);
  b.writeUInt16BE(shard, 0);
  return b.toString('base64url');
}

// The non-loopback client of the tests below: a host of its own in a
// network namespace (a veth pair whose two addresses exist only between the
// two ends), so the loopback-only rule is tested on any machine.
const NETNS_SKIP = netnsMissing(['curl', CURL]);
const clientHosts = new Set();
after(() => { for (const host of clientHosts) host.remove(); });

/** Runs `fn(host)` with a fresh client host, removed afterwards whatever happens. */
async function withClientHost(fn) {
  requireNetns(['curl', CURL]);
  const host = clientHost();
  clientHosts.add(host);
  try {
    return await fn(host);
  } finally {
    host.remove();
    clientHosts.delete(host);
  }
}

// ---------------------------------------------------------------------------
// Publishes and queries, SHARDS=4, API_KEY unset (loopback access)
// ---------------------------------------------------------------------------

describe('HTTP API with SHARDS=4 (API_KEY unset, loopback)', () => {
  let server;
  before(async () => { server = await startServer({ SHARDS: 4 }); });
  after(async () => { await server?.stop(); });

  it('POST /api/broadcast reaches every connection exactly once; delivered = clients that got it', async () => {
    await settle(server);
    const users = [uid('bc-a'), uid('bc-b'), uid('bc-c')];
    const sockets = [];
    for (const u of users) sockets.push(...await connectUserSpread(server, u, 3));
    const anon = await Promise.all([connect(server.url), connect(server.url)]); // unauthenticated connections count too
    const all = [...sockets, ...anon];
    assert.ok((await shardsOf(server, all)).size >= 2, 'clients should span several shards');

    const event = 'api-bc-all';
    const data = richData('all');
    const res = ok(await post(server, '/api/broadcast', { event, data }), 'broadcast');
    assert.equal(res.success, true);
    const got = await expectDelivery(all, all, event, data, { server });
    assert.equal(res.delivered, got, `delivered=${res.delivered} but ${got} clients got the event`);
    assert.equal(res.delivered, all.length);
  });

  it('POST /api/broadcast with exclude skips every connection of the excluded users, whichever shard', async () => {
    await settle(server);
    const excluded = uid('ex-x');
    const excluded2 = uid('ex-y');
    const keep = uid('ex-keep');
    const xs = await connectUserSpread(server, excluded, 3);
    const ys = await connectUserSpread(server, excluded2, 2);
    const ks = await connectUserSpread(server, keep, 3);
    const anon = await connect(server.url);
    const all = [...xs, ...ys, ...ks, anon];

    // One excluded user.
    const data = { x: 1 };
    let res = ok(await post(server, '/api/broadcast', { event: 'api-bc-ex1', data, exclude: [excluded] }), 'broadcast exclude 1');
    let got = await expectDelivery(all, [...ys, ...ks, anon], 'api-bc-ex1', data, { server });
    assert.equal(res.delivered, got, 'delivered vs observed');
    assert.equal(res.delivered, all.length - xs.length);

    // Two excluded users plus an unknown one.
    res = ok(await post(server, '/api/broadcast', { event: 'api-bc-ex2', data: 'two', exclude: [excluded, 'nobody-here', excluded2] }), 'broadcast exclude 2');
    got = await expectDelivery(all, [...ks, anon], 'api-bc-ex2', 'two', { server });
    assert.equal(res.delivered, got, 'delivered vs observed');
    assert.equal(res.delivered, ks.length + 1);

    // Empty exclude list excludes nobody.
    res = ok(await post(server, '/api/broadcast', { event: 'api-bc-ex3', exclude: [] }), 'broadcast exclude []');
    got = await expectDelivery(all, all, 'api-bc-ex3', null, { server }); // data omitted: clients get null
    assert.equal(res.delivered, got);
  });

  it('POST /api/rooms/{room}/broadcast reaches exactly the members (20 of 30 clients), each once; exclude works', async () => {
    await settle(server);
    const room = uid('api-room');
    // 10 users x 3 connections; connection j of user i is in the room when (3i + j) % 3 != 2 ... i.e. 20 members.
    const clients = [];
    const userIds = Array.from({ length: 10 }, (_, i) => uid(`rm-u${i}`));
    const sockets = await inBatches(Array.from({ length: 30 }, (_, k) => k), 10,
      (k) => connectAs(server.url, userIds[Math.floor(k / 3)]));
    sockets.forEach((s, k) => clients.push({ s, member: k % 3 !== 2, user: userIds[Math.floor(k / 3)] }));
    const members = clients.filter((c) => c.member).map((c) => c.s);
    assert.equal(members.length, 20);
    await inBatches(members, 10, (s) => join(s, room));
    const all = clients.map((c) => c.s);
    assert.ok((await shardsOf(server, members)).size >= 2, 'room members should span several shards');

    const data = richData('room');
    let res = ok(await post(server, `/api/rooms/${enc(room)}/broadcast`, { event: 'api-room-1', data }), 'room broadcast');
    assert.equal(res.success, true);
    assert.equal(res.roomName, room);
    let got = await expectDelivery(all, members, 'api-room-1', data, { server });
    assert.equal(res.delivered, got, 'delivered vs observed');
    assert.equal(res.delivered, 20);

    // Exclude user 0 (2 member connections) and user 1 (2 member connections).
    const ex = [userIds[0], userIds[1]];
    res = ok(await post(server, `/api/rooms/${enc(room)}/broadcast`, { event: 'api-room-2', data: [1, 2], exclude: ex }), 'room broadcast exclude');
    const expected = clients.filter((c) => c.member && !ex.includes(c.user)).map((c) => c.s);
    assert.equal(expected.length, 16);
    got = await expectDelivery(all, expected, 'api-room-2', [1, 2], { server });
    assert.equal(res.delivered, got, 'delivered vs observed');
    assert.equal(res.delivered, 16);

    // A room nobody is in: 200, delivered 0, nothing received.
    res = ok(await post(server, `/api/rooms/${enc(uid('empty-room'))}/broadcast`, { event: 'api-room-3' }), 'broadcast to empty room');
    assert.equal(res.delivered, 0);
    await apiBarrier(server, all);
    for (const s of all) assert.equal(received(s, 'api-room-3').length, 0);
  });

  it('room names needing percent-encoding (spaces, unicode, reserved URL characters) work', async () => {
    await settle(server);
    const names = [
      'room with spaces',
      'комната ☃ 日本語 🎉',
      'a+b=c&d',
      'per%cent',
      'q?x#frag',
      'slash/inside',
    ];
    const outsider = await connectAs(server.url, uid('pe-out'));
    for (const [i, name] of names.entries()) {
      const a = await connectAs(server.url, uid('pe-a'));
      const b = await connectAs(server.url, uid('pe-b'));
      await join(a, name);
      await join(b, name);
      const event = `api-pe-${i}`;
      const res = ok(await post(server, `/api/rooms/${enc(name)}/broadcast`, { event, data: name }), `room ${JSON.stringify(name)}`);
      assert.equal(res.roomName, name, `roomName echoed for ${JSON.stringify(name)}`);
      const got = await expectDelivery([a, b, outsider], [a, b], event, name, { server });
      assert.equal(res.delivered, got, `delivered for ${JSON.stringify(name)}`);
      assert.equal(got, 2);
      a.disconnect();
      b.disconnect();
    }
  });

  it('POST /api/users/{userId}/send reaches all 3 connections of the user (different shards); offline user is delivered 0', async () => {
    await settle(server);
    const target = uid('send-u');
    const other = uid('send-o');
    const ts = await connectUserSpread(server, target, 3);
    const os_ = await connectUserSpread(server, other, 2);
    const anon = await connect(server.url);
    const all = [...ts, ...os_, anon];

    const data = richData('user');
    let res = ok(await post(server, `/api/users/${enc(target)}/send`, { event: 'api-user-1', data }), 'send to user');
    assert.equal(res.success, true);
    assert.equal(res.userId, target);
    assert.equal(res.online, true);
    const got = await expectDelivery(all, ts, 'api-user-1', data, { server });
    assert.equal(res.delivered, got);
    assert.equal(res.delivered, 3);

    // A user id needing percent-encoding.
    const odd = `user ☃/${uid('odd')}`;
    const oddSocket = await connectAs(server.url, odd);
    res = ok(await post(server, `/api/users/${enc(odd)}/send`, { event: 'api-user-odd', data: 1 }), 'send to odd user id');
    assert.equal(res.userId, odd);
    assert.equal(await expectDelivery([...all, oddSocket], [oddSocket], 'api-user-odd', 1, { server }), 1);
    assert.equal(res.delivered, 1);

    // Offline user.
    res = ok(await post(server, `/api/users/${enc(uid('ghost'))}/send`, { event: 'api-user-2', data: 1 }), 'send to offline user');
    assert.equal(res.success, true);
    assert.equal(res.delivered, 0);
    assert.equal(res.online, false);

    // After the user's connections go away, the user is offline again.
    for (const s of ts) s.disconnect();
    await waitUntil(async () => {
      const u = ok(await get(server, `/api/users/${enc(target)}`), 'get user');
      return u.online === false;
    }, 5000, () => 'user did not go offline');
    res = ok(await post(server, `/api/users/${enc(target)}/send`, { event: 'api-user-3', data: 1 }), 'send after disconnect');
    assert.equal(res.delivered, 0);
    assert.equal(res.online, false);
    await apiBarrier(server, all);
    for (const s of all) assert.equal(received(s, 'api-user-3').length, 0);
  });

  it('POST /api/sockets/{socketId}/send reaches exactly that socket; unknown or garbage ids deliver 0', async () => {
    await settle(server);
    const user = uid('sock-u');
    const mine = await connectUserSpread(server, user, 3); // same user, other connections must not get it
    const others = await Promise.all([connect(server.url), connectAs(server.url, uid('sock-o')), connect(server.url)]);
    const all = [...mine, ...others];
    const shards = await shardMap(server);

    for (const [i, target] of [mine[1], others[0], mine[2]].entries()) {
      const event = `api-sock-${i}`;
      const res = ok(await post(server, `/api/sockets/${enc(target.id)}/send`, { event, data: { i } }), `send to socket ${target.id} (shard ${shards.get(target.id)})`);
      assert.equal(res.success, true);
      assert.equal(res.socketId, target.id);
      const got = await expectDelivery(all, [target], event, { i }, { server });
      assert.equal(res.delivered, got);
      assert.equal(res.delivered, 1);
    }

    const bogus = [
      ['well-formed unused id, shard 0', unusedSocketId(0)],
      ['well-formed unused id, shard 3', unusedSocketId(3)],
      ['well-formed id naming a shard that does not exist', unusedSocketId(9)],
      ['well-formed id, shard 0xffff', unusedSocketId(0xffff)],
      ['garbage', 'not-a-socket-id'],
      ['22 chars, not base64', '!!!!!!!!!!!!!!!!!!!!!!'],
      ['unicode', 'ß☃'],
      ['very long', 'a'.repeat(2000)],
    ];
    for (const [what, id] of bogus) {
      const res = ok(await post(server, `/api/sockets/${enc(id)}/send`, { event: 'api-sock-bogus', data: what }), what);
      assert.equal(res.success, true, what);
      assert.equal(res.delivered, 0, what);
      assert.equal(res.socketId, id, `${what}: socketId echoed`);
    }

    // A socket that was connected and is gone.
    const gone = others[2];
    const goneId = gone.id;
    gone.disconnect();
    await waitUntil(async () => !(await shardMap(server)).has(goneId), 5000, () => 'socket still listed');
    const res = ok(await post(server, `/api/sockets/${enc(goneId)}/send`, { event: 'api-sock-bogus', data: 'gone' }), 'disconnected socket');
    assert.equal(res.delivered, 0);
    await apiBarrier(server, all);
    for (const s of all) assert.equal(received(s, 'api-sock-bogus').length, 0, `socket ${s.id} got a bogus-id send`);
  });

  it('POST /api/batch carries out mixed scopes; results per entry; totals equal what clients see', async () => {
    await settle(server);
    const room = uid('batch-room');
    const ua = uid('batch-a');
    const ub = uid('batch-b');
    const as = await connectUserSpread(server, ua, 3);
    const bs = await connectUserSpread(server, ub, 2);
    const anon = await connect(server.url);
    const all = [...as, ...bs, anon];
    await join(as[0], room);
    await join(bs[0], room);
    await join(bs[1], room);

    const publishes = [
      { scope: 'all', event: 'api-batch-all', data: 'all', exclude: [ub] },
      { scope: 'room', roomName: room, event: 'api-batch-room', data: { r: 1 } },
      { scope: 'room', roomName: room, event: 'api-batch-room-ex', data: 2, exclude: [ua] },
      { scope: 'user', userId: ua, event: 'api-batch-user', data: [ua] },
      { scope: 'user', userId: uid('batch-ghost'), event: 'api-batch-ghost', data: 0 },
      { scope: 'socket', socketId: anon.id, event: 'api-batch-socket', data: 'anon' },
      { scope: 'socket', socketId: unusedSocketId(1), event: 'api-batch-nosocket' },
    ];
    const res = ok(await post(server, '/api/batch', { publishes }), 'batch');
    assert.equal(res.success, true);
    assert.ok(Array.isArray(res.results), 'results array');
    assert.equal(res.results.length, publishes.length);
    for (const r of res.results) assert.equal(r.success, true);

    const observed = [
      await expectDelivery(all, [...as, anon], 'api-batch-all', 'all', { server }),
      await expectDelivery(all, [as[0], bs[0], bs[1]], 'api-batch-room', { r: 1 }, { server }),
      await expectDelivery(all, [bs[0], bs[1]], 'api-batch-room-ex', 2, { server }),
      await expectDelivery(all, as, 'api-batch-user', [ua], { server }),
      await expectDelivery(all, [], 'api-batch-ghost', 0, { server }),
      await expectDelivery(all, [anon], 'api-batch-socket', 'anon', { server }),
      await expectDelivery(all, [], 'api-batch-nosocket', undefined, { server }),
    ];
    assert.deepEqual(res.results.map((r) => r.delivered), observed, 'per-entry delivered vs observed');
    assert.deepEqual(observed, [4, 3, 2, 3, 0, 1, 0]);
    assert.equal(res.delivered, observed.reduce((a, b) => a + b, 0), 'total delivered');
    assert.equal(res.results[1].roomName, room);
    assert.equal(res.results[3].userId, ua);
    assert.equal(res.results[3].online, true);
    assert.equal(res.results[5].socketId, anon.id);

    // An empty batch is fine.
    const empty = ok(await post(server, '/api/batch', { publishes: [] }), 'empty batch');
    assert.equal(empty.delivered, 0);
    assert.deepEqual(empty.results, []);
  });

  it('POST /api/batch with one invalid entry is 400 and sends nothing at all', async () => {
    await settle(server);
    const room = uid('batch-bad-room');
    const u = uid('batch-bad-u');
    const us = await connectUserSpread(server, u, 2);
    const anon = await connect(server.url);
    const all = [...us, anon];
    await join(us[0], room);

    // Valid entries whose event names say which rejected batch they came from.
    const valid = (tag) => [
      { scope: 'all', event: `api-bad-all ${tag}`, data: 1 },
      { scope: 'room', roomName: room, event: `api-bad-room ${tag}`, data: 1 },
      { scope: 'user', userId: u, event: `api-bad-user ${tag}`, data: 1 },
      { scope: 'socket', socketId: anon.id, event: `api-bad-socket ${tag}`, data: 1 },
    ];
    const invalidEntries = [
      ['missing event', { scope: 'all', data: 1 }],
      ['event not a string', { scope: 'all', event: 7 }],
      ['empty event', { scope: 'user', userId: u, event: '' }],
      ['reserved event', { scope: 'all', event: 'disconnect' }],
      ['event over 128 bytes', { scope: 'all', event: 'e'.repeat(129) }],
      ['unknown scope', { scope: 'everyone', event: 'x' }],
      ['missing scope', { event: 'x' }],
      ['room scope without roomName', { scope: 'room', event: 'x' }],
      ['user scope without userId', { scope: 'user', event: 'x' }],
      ['socket scope without socketId', { scope: 'socket', event: 'x' }],
      ['roomName not a string', { scope: 'room', roomName: 5, event: 'x' }],
      ['empty roomName', { scope: 'room', roomName: '', event: 'x' }],
      ['empty userId', { scope: 'user', userId: '', event: 'x' }],
      ['exclude not an array', { scope: 'all', event: 'x', exclude: 'u' }],
      ['entry not an object', 'all'],
      ['entry null', null],
    ];
    const tags = [];
    for (const [what, bad] of invalidEntries) {
      for (const position of [0, 2, 4]) { // first, middle, last
        const tag = `${what} @${position}`;
        tags.push(tag);
        const publishes = valid(tag);
        publishes.splice(position, 0, bad);
        const r = await post(server, '/api/batch', { publishes });
        clientError(r, 400, 'VALIDATION_ERROR', `batch with ${tag}`);
      }
    }
    const whole = [
      ['publishes missing', {}],
      ['publishes not an array', { publishes: { scope: 'all', event: 'x' } }],
      ['publishes null', { publishes: null }],
      ['body an array', valid('body an array')],
      ['over 1000 entries', { publishes: Array.from({ length: 1001 }, () => valid('over 1000')[0]) }],
    ];
    for (const [what, body] of whole) clientError(await post(server, '/api/batch', body), 400, 'VALIDATION_ERROR', `batch: ${what}`);

    await apiBarrier(server, all);
    const leaks = new Map(); // tag -> [events]
    for (const s of all) {
      for (const rec of s.inbox.events) {
        if (!rec.event.startsWith('api-bad-') && rec.event !== 'x' && rec.event !== 'disconnect') continue;
        const tag = rec.event.replace(/^api-bad-\w+ /, '');
        if (!leaks.has(tag)) leaks.set(tag, new Set());
        leaks.get(tag).add(rec.event.split(' ')[0]);
      }
    }
    assert.deepEqual(
      [...leaks].map(([tag, evs]) => `${tag}: ${[...evs].join(',')}`), [],
      'rejected batches (400) whose valid entries were nevertheless delivered',
    );
    assert.equal(us.every((s) => s.connected) && anon.connected, true, 'clients still connected');
  });

  it('GET /api/connections lists every connection with socketId, userId, rooms, transport, shard, timestamps', async () => {
    await settle(server);
    const u1 = uid('conn-a');
    const u2 = uid('conn-b');
    const room1 = uid('conn-r1');
    const room2 = uid('conn-r2');
    const a = await connectUserSpread(server, u1, 2);
    const b = await connectAs(server.url, u2);
    const anon = await connect(server.url);
    await join(a[0], room1);
    await join(a[0], room2);
    await join(b, room2);
    const expected = new Map([
      [a[0].id, { userId: u1, rooms: [room1, room2] }],
      [a[1].id, { userId: u1, rooms: [] }],
      [b.id, { userId: u2, rooms: [room2] }],
      [anon.id, { userId: null, rooms: [] }],
    ]);

    const body = ok(await get(server, '/api/connections'), 'GET /api/connections');
    assert.equal(body.count, 4);
    assert.equal(body.connections.length, 4);
    const seen = new Set();
    for (const c of body.connections) {
      const exp = expected.get(c.socketId);
      assert.ok(exp, `unexpected connection ${JSON.stringify(c)}`);
      assert.ok(!seen.has(c.socketId), `connection ${c.socketId} listed twice`);
      seen.add(c.socketId);
      assert.equal(c.userId, exp.userId, `userId of ${c.socketId}`);
      assert.deepEqual([...c.rooms].sort(), [...exp.rooms].sort(), `rooms of ${c.socketId}`);
      assert.equal(c.transport, 'websocket');
      assert.ok(Number.isInteger(c.shard) && c.shard >= 0 && c.shard < 4, `shard ${c.shard}`);
      assertTimestamp(c.connectedAt, 'connectedAt');
      assertTimestamp(c.lastActivity, 'lastActivity');
      assert.ok(Date.parse(c.lastActivity) >= Date.parse(c.connectedAt), `lastActivity ${c.lastActivity} before connectedAt ${c.connectedAt}`);
    }
    const st = await stats(server);
    assert.equal(st.connections, body.count, 'stats.connections vs connections list');
  });

  it('GET /api/rooms: name, memberCount, users, createdAt, lastActivity; a room disappears when empty', async () => {
    await settle(server);
    const roomA = uid('rooms-a');
    const roomB = `rooms b ☃ ${uid('x')}`;
    const u1 = uid('rooms-u1');
    const u2 = uid('rooms-u2');
    const s1 = await connectUserSpread(server, u1, 2);
    const s2 = await connectAs(server.url, u2);
    const before_ = Date.now();
    await join(s1[0], roomA);
    await join(s1[1], roomA); // same user twice: 2 members, 1 user
    await join(s2, roomA);
    await join(s2, roomB);

    let body = ok(await get(server, '/api/rooms'), 'GET /api/rooms');
    assert.equal(body.count, 2, JSON.stringify(body));
    assert.equal(body.rooms.length, 2);
    const byName = new Map(body.rooms.map((r) => [r.name, r]));
    const a = byName.get(roomA);
    const b = byName.get(roomB);
    assert.ok(a && b, `rooms listed: ${JSON.stringify(body.rooms.map((r) => r.name))}`);
    assert.equal(a.memberCount, 3);
    assert.deepEqual([...a.users].sort(), [u1, u2].sort());
    assert.equal(b.memberCount, 1);
    assert.deepEqual(b.users, [u2]);
    for (const r of [a, b]) {
      assertTimestamp(r.createdAt, `${r.name}.createdAt`);
      assertTimestamp(r.lastActivity, `${r.name}.lastActivity`);
      assert.ok(Date.parse(r.createdAt) >= before_ - 1000, 'createdAt is recent');
      assert.ok(Date.parse(r.lastActivity) >= Date.parse(r.createdAt), 'lastActivity >= createdAt');
    }
    assert.equal((await stats(server)).rooms, 2);

    // Leaving / disconnecting empties rooms; they disappear.
    const ack = await emitWithAck(s2, 'leave-room', { roomName: roomB });
    assertSuccess(ack, 'leave-room');
    await waitUntil(async () => ok(await get(server, '/api/rooms'), 'rooms').count === 1, 5000, () => 'room still listed after its last member left');
    body = ok(await get(server, '/api/rooms'), 'GET /api/rooms after leave');
    assert.deepEqual(body.rooms.map((r) => r.name), [roomA]);
    assert.equal(body.count, 1);
    const a2 = body.rooms[0];
    assert.equal(a2.createdAt, a.createdAt, 'createdAt does not change while the room lives');

    s1[0].disconnect();
    await waitUntil(async () => {
      const r = ok(await get(server, '/api/rooms'), 'rooms').rooms[0];
      return r && r.memberCount === 2;
    }, 5000, () => 'memberCount did not drop to 2 after a disconnect');
    body = ok(await get(server, '/api/rooms'), 'rooms');
    assert.deepEqual([...body.rooms[0].users].sort(), [u1, u2].sort(), 'u1 still has a connection in the room');
    s1[1].disconnect();
    await waitUntil(async () => {
      const r = ok(await get(server, '/api/rooms'), 'rooms').rooms[0];
      return r && r.memberCount === 1;
    }, 5000, () => 'memberCount did not drop to 1');
    body = ok(await get(server, '/api/rooms'), 'rooms');
    assert.deepEqual(body.rooms[0].users, [u2]);
    s2.disconnect();
    await waitUntil(async () => ok(await get(server, '/api/rooms'), 'rooms').count === 0, 5000, () => 'room still listed after everyone left');
    body = ok(await get(server, '/api/rooms'), 'rooms');
    assert.deepEqual(body.rooms, []);
  });

  it('GET /api/stats equals what the clients see across shards, and returns to 0 after they disconnect', async () => {
    await settle(server);
    const users = Array.from({ length: 5 }, (_, i) => uid(`st-u${i}`));
    const sockets = [];
    for (const [i, u] of users.entries()) sockets.push(...await connectUserSpread(server, u, (i % 3) + 1)); // 1,2,3,1,2 = 9
    const anons = await Promise.all([connect(server.url), connect(server.url), connect(server.url)]);
    const rooms = [uid('st-r1'), uid('st-r2'), uid('st-r3')];
    await join(sockets[0], rooms[0]);
    await join(sockets[1], rooms[0]);
    await join(sockets[2], rooms[1]);
    await join(sockets[5], rooms[2]);
    await join(sockets[6], rooms[2]);

    const st = await stats(server);
    assert.equal(st.connections, 12, JSON.stringify(st));
    assert.equal(st.rooms, 3, JSON.stringify(st));
    assert.equal(st.onlineUsers, 5, JSON.stringify(st));
    assert.ok(Array.isArray(st.connectionsPerShard));
    assert.equal(st.connectionsPerShard.length, 4, 'one count per shard');
    assert.equal(st.connectionsPerShard.reduce((a, b) => a + b, 0), 12, 'per-shard counts sum to the total');
    // The open-file limit minus the reserve (tests/client/fdlimit.test.mjs checks the arithmetic).
    assert.ok(Number.isInteger(st.connectionCapacity) && st.connectionCapacity > 12, JSON.stringify(st));
    const shards = await shardMap(server);
    const perShard = [0, 0, 0, 0];
    for (const s of [...sockets, ...anons]) perShard[shards.get(s.id)] += 1;
    assert.deepEqual(st.connectionsPerShard, perShard, 'per-shard counts match the shards of GET /api/connections');

    // One user leaves entirely (2 connections), one anon leaves.
    const gone = sockets.filter((s) => s.userId === users[1]);
    assert.equal(gone.length, 2);
    for (const s of gone) s.disconnect();
    anons[0].disconnect();
    let last;
    await waitUntil(async () => {
      last = await stats(server);
      return last.connections === 9 && last.onlineUsers === 4;
    }, 5000, () => `stats after partial disconnect: ${JSON.stringify(last)}`);

    for (const s of [...sockets, ...anons]) s.disconnect();
    await waitUntil(async () => {
      last = await stats(server);
      return last.connections === 0 && last.rooms === 0 && last.onlineUsers === 0;
    }, 5000, () => `stats after everyone left: ${JSON.stringify(last)}`);
    assert.deepEqual(last.connectionsPerShard, [0, 0, 0, 0]);
    const conns = ok(await get(server, '/api/connections'), 'connections');
    assert.equal(conns.count, 0);
    assert.deepEqual(conns.connections, []);
  });

  it('GET /api/users/{userId}: online flag and every connection; offline user is 200 online:false', async () => {
    await settle(server);
    const u = `user ☃ ${uid('gu')}`; // needs percent-encoding
    const ss = await connectUserSpread(server, u, 3);
    const room = uid('gu-room');
    await join(ss[2], room);
    const other = await connectAs(server.url, uid('gu-other'));

    let body = ok(await get(server, `/api/users/${enc(u)}`), 'GET user');
    assert.equal(body.userId, u);
    assert.equal(body.online, true);
    assert.equal(body.connections.length, 3);
    assert.deepEqual(body.connections.map((c) => c.socketId).sort(), ss.map((s) => s.id).sort());
    assert.ok(!body.connections.some((c) => c.socketId === other.id));
    assert.ok(new Set(body.connections.map((c) => c.shard)).size >= 2, 'connections on several shards');
    for (const c of body.connections) {
      assert.equal(c.userId, u);
      assert.equal(c.transport, 'websocket');
      assertTimestamp(c.connectedAt, 'connectedAt');
      assertTimestamp(c.lastActivity, 'lastActivity');
      assert.deepEqual(c.rooms, c.socketId === ss[2].id ? [room] : []);
    }

    ss[0].disconnect();
    await waitUntil(async () => ok(await get(server, `/api/users/${enc(u)}`), 'user').connections.length === 2, 5000, () => 'connection not removed');
    body = ok(await get(server, `/api/users/${enc(u)}`), 'user');
    assert.equal(body.online, true);

    ss[1].disconnect();
    ss[2].disconnect();
    await waitUntil(async () => ok(await get(server, `/api/users/${enc(u)}`), 'user').online === false, 5000, () => 'user still online');
    body = ok(await get(server, `/api/users/${enc(u)}`), 'user');
    assert.deepEqual(body, { userId: u, online: false, connections: [] });

    const never = uid('never-seen');
    body = ok(await get(server, `/api/users/${enc(never)}`), 'never-seen user');
    assert.deepEqual(body, { userId: never, online: false, connections: [] });
  });

  it('client mistakes get a 4xx with JSON { error, code }, never a 5xx or a hang', async () => {
    await settle(server);
    const s = await connect(server.url);
    const V = 'VALIDATION_ERROR';
    const cases = [
      // [what, method, path, body, status, code]
      ['bad JSON', 'POST', '/api/broadcast', '{"event": "x",', 400, V],
      ['bad JSON (single quotes)', 'POST', '/api/broadcast', "{'event': 'x'}", 400, V],
      ['empty body', 'POST', '/api/broadcast', '', 400, V],
      ['no body at all', 'POST', '/api/broadcast', undefined, 400, V],
      ['trailing garbage', 'POST', '/api/broadcast', '{"event":"x"} junk', 400, V],
      ['not UTF-8', 'POST', '/api/broadcast', Buffer.from([0x7b, 0x22, 0x65, 0xff, 0xfe, 0x22, 0x7d]), 400, V],
      ['body an array', 'POST', '/api/broadcast', '[{"event":"x"}]', 400, V],
      ['body a string', 'POST', '/api/broadcast', '"event"', 400, V],
      ['body a number', 'POST', '/api/broadcast', '42', 400, V],
      ['body null', 'POST', '/api/broadcast', 'null', 400, V],
      ['missing event', 'POST', '/api/broadcast', { data: 1 }, 400, V],
      ['event a number', 'POST', '/api/broadcast', { event: 5, data: 1 }, 400, V],
      ['event null', 'POST', '/api/broadcast', { event: null }, 400, V],
      ['event an array', 'POST', '/api/broadcast', { event: ['x'] }, 400, V],
      ['event an object', 'POST', '/api/broadcast', { event: { name: 'x' } }, 400, V],
      ['event empty', 'POST', '/api/broadcast', { event: '' }, 400, V],
      ['event with a control character', 'POST', '/api/broadcast', { event: 'a\u0007b' }, 400, V],
      ['event over 128 bytes', 'POST', '/api/broadcast', { event: 'é'.repeat(65) }, 400, V],
      ['reserved event connect', 'POST', '/api/broadcast', { event: 'connect', data: 1 }, 400, V],
      ['reserved event disconnect', 'POST', '/api/broadcast', { event: 'disconnect' }, 400, V],
      ['reserved event connect_error', 'POST', '/api/broadcast', { event: 'connect_error' }, 400, V],
      ['reserved event to a room', 'POST', '/api/rooms/r/broadcast', { event: 'connect' }, 400, V],
      ['reserved event to a user', 'POST', '/api/users/u/send', { event: 'disconnecting' }, 400, V],
      ['reserved event to a socket', 'POST', `/api/sockets/${enc(s.id)}/send`, { event: 'connect' }, 400, V],
      ['exclude a string', 'POST', '/api/broadcast', { event: 'x', exclude: 'u1' }, 400, V],
      ['exclude a number', 'POST', '/api/broadcast', { event: 'x', exclude: 3 }, 400, V],
      ['exclude an object', 'POST', '/api/broadcast', { event: 'x', exclude: { u1: true } }, 400, V],
      ['exclude with a non-string', 'POST', '/api/broadcast', { event: 'x', exclude: ['u1', 2] }, 400, V],
      ['exclude not an array (room)', 'POST', '/api/rooms/r/broadcast', { event: 'x', exclude: 'u1' }, 400, V],
      ['duplicate key', 'POST', '/api/broadcast', '{"event":"x","event":"y"}', 400, V],
      ['room send: missing event', 'POST', '/api/rooms/r/broadcast', { data: 1 }, 400, V],
      ['user send: event wrong type', 'POST', '/api/users/u/send', { event: true }, 400, V],
      ['socket send: body not an object', 'POST', `/api/sockets/${enc(s.id)}/send`, '[]', 400, V],
      ['empty room name', 'POST', '/api/rooms//broadcast', { event: 'x' }, 400, V],
      ['room name over 128 bytes', 'POST', `/api/rooms/${'r'.repeat(129)}/broadcast`, { event: 'x' }, 400, V],
      ['room name with a control character', 'POST', `/api/rooms/${enc('a\nb')}/broadcast`, { event: 'x' }, 400, V],
      ['user id over 128 bytes', 'POST', `/api/users/${'u'.repeat(129)}/send`, { event: 'x' }, 400, V],
      ['unknown route', 'GET', '/api/nope', undefined, 404, 'NOT_FOUND'],
      ['unknown route (POST)', 'POST', '/api/nope', { event: 'x' }, 404, 'NOT_FOUND'],
      ['bare /api', 'GET', '/api', undefined, 404, 'NOT_FOUND'],
      ['bare /api/', 'GET', '/api/', undefined, 404, 'NOT_FOUND'],
      ['too many segments', 'GET', '/api/users/a/b/c', undefined, 404, 'NOT_FOUND'],
      ['unknown sub-route', 'POST', '/api/rooms/r/send', { event: 'x' }, 404, 'NOT_FOUND'],
      ['GET on a room', 'GET', '/api/rooms/r', undefined, 404, 'NOT_FOUND'],
      ['GET /api/broadcast', 'GET', '/api/broadcast', undefined, 405, 'METHOD_NOT_ALLOWED'],
      ['PUT /api/broadcast', 'PUT', '/api/broadcast', { event: 'x' }, 405, 'METHOD_NOT_ALLOWED'],
      ['DELETE /api/stats', 'DELETE', '/api/stats', undefined, 405, 'METHOD_NOT_ALLOWED'],
      ['POST /api/connections', 'POST', '/api/connections', { event: 'x' }, 405, 'METHOD_NOT_ALLOWED'],
      ['POST /api/rooms', 'POST', '/api/rooms', { event: 'x' }, 405, 'METHOD_NOT_ALLOWED'],
      ['PATCH /api/users/u', 'PATCH', '/api/users/u', { event: 'x' }, 405, 'METHOD_NOT_ALLOWED'],
      ['DELETE /api/users/u', 'DELETE', '/api/users/u', undefined, 405, 'METHOD_NOT_ALLOWED'],
      ['GET /api/users/u/send', 'GET', '/api/users/u/send', undefined, 405, 'METHOD_NOT_ALLOWED'],
      ['GET /api/sockets/s/send', 'GET', '/api/sockets/s/send', undefined, 405, 'METHOD_NOT_ALLOWED'],
      ['GET /api/rooms/r/broadcast', 'GET', '/api/rooms/r/broadcast', undefined, 405, 'METHOD_NOT_ALLOWED'],
      ['GET /api/batch', 'GET', '/api/batch', undefined, 405, 'METHOD_NOT_ALLOWED'],
    ];
    for (const [what, method, path, body, status, code] of cases) {
      const r = await request(server, method, path, { body });
      clientError(r, status, code, what);
      if (status === 405) {
        assert.ok(r.headers.allow, `${what}: 405 without an Allow header`);
        assert.ok(r.headers.allow.toUpperCase().includes(path.includes('connections') || path === '/api/stats' || /^\/api\/(rooms|users\/[^/]+)$/.test(path) ? 'GET' : 'POST'),
          `${what}: Allow ${r.headers.allow}`);
      }
    }
    // Error text names the offending field.
    const r1 = await post(server, '/api/broadcast', { data: 1 });
    assert.match(r1.json.error, /event/, `missing event: ${r1.text}`);
    const r2 = await post(server, '/api/broadcast', { event: 'x', exclude: 'u' });
    assert.match(r2.json.error, /exclude/, `bad exclude: ${r2.text}`);

    // Body over 8 MiB (8 MiB + 1 byte and 9 MiB) -> 413 PAYLOAD_TOO_LARGE.
    for (const size of [8 * 1024 * 1024 + 1, 9 * 1024 * 1024]) {
      const big = Buffer.alloc(size, 0x20);
      big.write('{"event":"x","data":"');
      big.write('"}', size - 2);
      const r = await request(server, 'POST', '/api/broadcast', { body: big, timeoutMs: 20000 });
      clientError(r, 413, 'PAYLOAD_TOO_LARGE', `body of ${size} bytes`);
    }
    const bigBatch = Buffer.alloc(9 * 1024 * 1024, 0x20);
    bigBatch.write('{"publishes":[]');
    bigBatch.write('}', bigBatch.length - 1);
    clientError(await request(server, 'POST', '/api/batch', { body: bigBatch, timeoutMs: 20000 }), 413, 'PAYLOAD_TOO_LARGE', 'batch of 9 MiB');

    // A body just under the limit is accepted.
    const nearly = Buffer.alloc(8 * 1024 * 1024 - 16, 0x61);
    const head = Buffer.from('{"event":"api-big","data":"');
    head.copy(nearly, 0);
    Buffer.from('"}').copy(nearly, nearly.length - 2);
    const rBig = await request(server, 'POST', `/api/sockets/${enc(s.id)}/send`, { body: nearly, timeoutMs: 20000 });
    assert.equal(rBig.status, 200, `body just under 8 MiB: ${show(rBig)}`);
    assert.equal(rBig.json.delivered, 1);

    // Nothing of the rejected requests reached the client (only the last send).
    await waitUntil(() => received(s, 'api-big').length === 1, 10000, () => 'big send not received');
    const stray = s.inbox.events.filter((e) => !['connected', 'api-big'].includes(e.event));
    assert.deepEqual(stray.map((e) => e.event), [], 'events from rejected requests reached the client');
    assert.equal(s.connected, true, 'client still connected');
    // The server is still healthy.
    ok(await get(server, '/api/stats'), 'stats after the mistakes');
  });
});

// ---------------------------------------------------------------------------
// API_KEY
// ---------------------------------------------------------------------------

describe('HTTP API with API_KEY set', () => {
  const KEY = `k-${randomBytes(12).toString('hex')}`;
  let server;
  before(async () => { server = await startServer({ SHARDS: 4, API_KEY: KEY, HOST: '0.0.0.0' }); });
  after(async () => { await server?.stop(); });

  it('no header or a wrong key is 401 JSON on every route; the right key is 200', async () => {
    const s = await connectAs(server.url, uid('key-u'));
    const routes = [
      ['GET', '/api/stats', undefined],
      ['GET', '/api/connections', undefined],
      ['GET', '/api/rooms', undefined],
      ['GET', '/api/users/x', undefined],
      ['POST', '/api/broadcast', { event: 'api-key-leak' }],
      ['POST', '/api/rooms/r/broadcast', { event: 'api-key-leak' }],
      ['POST', `/api/users/${enc(s.userId)}/send`, { event: 'api-key-leak' }],
      ['POST', `/api/sockets/${enc(s.id)}/send`, { event: 'api-key-leak' }],
      ['POST', '/api/batch', { publishes: [{ scope: 'all', event: 'api-key-leak' }] }],
      ['GET', '/api/nope', undefined], // unknown route: still 401 without the key
      ['DELETE', '/api/stats', undefined], // wrong method: still 401 without the key
    ];
    const wrong = [
      ['no Authorization header', {}],
      ['empty Authorization', { Authorization: '' }],
      ['wrong key', { Authorization: 'Bearer wrong-key' }],
      ['key prefix', { Authorization: `Bearer ${KEY.slice(0, -1)}` }],
      ['key plus a suffix', { Authorization: `Bearer ${KEY}x` }],
      ['key without scheme', { Authorization: KEY }],
      ['Basic scheme', { Authorization: `Basic ${Buffer.from(`user:${KEY}`).toString('base64')}` }],
      ['Bearer and nothing', { Authorization: 'Bearer ' }],
      ['key in another header', { 'X-API-Key': KEY }],
    ];
    for (const [method, path, body] of routes) {
      for (const [what, headers] of wrong) {
        const r = await request(server, method, path, { body, headers });
        clientError(r, 401, 'UNAUTHORIZED', `${method} ${path} with ${what}`);
      }
    }
    await apiBarrier(server, [s], { headers: { Authorization: `Bearer ${KEY}` } });
    assert.equal(received(s, 'api-key-leak').length, 0, 'an unauthorized publish reached the client');

    const auth = { Authorization: `Bearer ${KEY}` };
    const st = ok(await get(server, '/api/stats', { headers: auth }), 'stats with key');
    assert.equal(st.connections, 1);
    const res = ok(await post(server, '/api/broadcast', { event: 'api-key-ok', data: 1 }, { headers: auth }), 'broadcast with key');
    assert.equal(res.delivered, 1);
    assert.equal(await expectDelivery([s], [s], 'api-key-ok', 1, { server, headers: auth }), 1);
    // With the key, the usual 4xx answers come back.
    clientError(await get(server, '/api/nope', { headers: auth }), 404, 'NOT_FOUND', 'unknown route with key');
    clientError(await request(server, 'DELETE', '/api/stats', { headers: auth }), 405, 'METHOD_NOT_ALLOWED', 'wrong method with key');
    clientError(await post(server, '/api/broadcast', '{', { headers: auth }), 400, 'VALIDATION_ERROR', 'bad JSON with key');
  });

  it('with API_KEY set, a non-loopback client with the key is answered', { skip: NETNS_SKIP }, async () => {
    await withClientHost(async (host) => {
      const url = `http://${host.serverIp}:${server.port}/api/stats`;
      const r = await curlFrom(host, 'GET', url, { headers: { Authorization: `Bearer ${KEY}` } });
      ok(r, `GET /api/stats from ${host.clientIp} with the key`);
      clientError(await curlFrom(host, 'GET', url), 401, 'UNAUTHORIZED', `GET /api/stats from ${host.clientIp} without the key`);
    });
  });
});

describe('HTTP API with API_KEY unset', () => {
  let server;
  before(async () => { server = await startServer({ SHARDS: 4, HOST: '0.0.0.0' }); });
  after(async () => { await server?.stop(); });

  it('loopback clients are answered without any key', async () => {
    ok(await get(server, '/api/stats'), 'GET /api/stats from 127.0.0.1');
    ok(await get(server, '/api/stats', { headers: { Authorization: 'Bearer anything' } }), 'GET /api/stats with an arbitrary bearer');
    const r = await post(server, '/api/broadcast', { event: 'x' });
    assert.equal(ok(r, 'broadcast from loopback').delivered, 0);
  });

  it('a non-loopback client is refused with 403 JSON (from a host of its own in a network namespace)', { skip: NETNS_SKIP }, async () => {
    await withClientHost(async (host) => {
      for (const [method, path, body] of [['GET', '/api/stats'], ['POST', '/api/broadcast', { event: 'x' }], ['GET', '/api/nope']]) {
        const r = await curlFrom(host, method, `http://${host.serverIp}:${server.port}${path}`, { body });
        clientError(r, 403, 'FORBIDDEN', `${method} ${path} from ${host.clientIp}`);
      }
      // The same requests from loopback are answered: the rule is about the client's address.
      ok(await get(server, '/api/stats'), 'GET /api/stats from 127.0.0.1');
    });
  });
});
