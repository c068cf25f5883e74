// Causal order across shards (issue 10; SPEC §8 "Shards are invisible").
//
// The guarantee: per-sender FIFO for every event, and once a client holds the
// ack of a request (join-room, leave-room, custom-event, private-message,
// authenticate) — or a backend the answer of an HTTP publish — its effect is
// queued for every connection it concerns, so no later request of any client
// on any shard can overtake it. Each connection's queue is FIFO, so "queued
// before" means "received before anything queued later": every check below is
// event-driven. What a client holds when an ack arrives is read inside the ack
// callback (before socket.io-client dispatches any later packet), and absence
// is checked when a marker arrives that was published after everything else
// was acknowledged. No quiet windows, no sleeps as evidence.
//
// Release binary, SHARDS=4, 200 official socket.io-client connections (a
// quarter long-polling only), patterns repeated for many rounds with exact
// counts: leave chain, join chain, relay then leave / relay then join, private
// message then disconnect (and offline / reconnect), HTTP room broadcasts
// while members join and leave.

import { describe, before, after } from 'node:test';
import http from 'node:http';
import { assert, it, startServer, connect, uid, sleep } from './helpers.mjs';

const SHARDS = 4;
const POOL = 200;
const pollingIndex = (i) => i % 4 === 3; // a quarter of the pool: long-polling only
const transportOpts = (polling) => (polling ? { transports: ['polling'] } : {});

// ---------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------

/** A logical clock: the order in which this (single-threaded) process saw things happen. */
let clock = 0;
const tick = () => { clock += 1; return clock; };

const shuffle = (arr) => {
  const a = [...arr];
  for (let i = a.length - 1; i > 0; i -= 1) {
    const j = Math.floor(Math.random() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
};
const pick = (arr) => arr[Math.floor(Math.random() * arr.length)];

/** Reorder so that consecutive clients sit on different shards wherever possible. */
function alternateShards(clients) {
  const rest = shuffle(clients);
  const out = [];
  while (rest.length) {
    const prev = out.length ? out[out.length - 1].shard : -1;
    let k = rest.findIndex((c) => c.shard !== prev);
    if (k < 0) k = 0;
    out.push(rest.splice(k, 1)[0]);
  }
  return out;
}

/** Prefer a client on another shard than `other`. */
const pickOtherShard = (arr, other) => {
  const elsewhere = arr.filter((c) => c.shard !== other.shard);
  return pick(elsewhere.length ? elsewhere : arr);
};

/** What socket.io-client said about a transport's end (an Error, an event, or nothing). */
const describeDisconnect = (d) => (d === undefined ? '' : String(d?.message ?? d?.description?.message ?? d?.description ?? d?.type ?? d));

const describeClient = (c) => `client ${c.name} (shard ${c.shard}, ${c.polling ? 'polling' : 'websocket'})`;

/**
 * Emit `event` with an ack. Inside the ack callback — before socket.io-client
 * dispatches any later packet of this socket — record how many events the
 * socket had received (`mark`: its inbox length) and the logical time, then
 * run `onAck` (to send the next request "right after the ack").
 * Resolves { ack, mark, sentAt, at }.
 */
function ackAt(socket, event, payload, { timeoutMs = 10000, onAck } = {}) {
  const sentAt = tick();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(
      `no ack for "${event}" ${JSON.stringify(payload).slice(0, 160)} within ${timeoutMs} ms (socket ${socket.sid}, connected=${socket.connected}`
      + `${socket.connected ? '' : `, disconnected ${Date.now() - socket.disconnectedAt} ms ago: ${socket.disconnectReason} ${describeDisconnect(socket.disconnectDescription)}`})`,
    )), timeoutMs);
    socket.emit(event, payload, (ack) => {
      clearTimeout(timer);
      const res = { ack, mark: socket.inbox.events.length, sentAt, at: tick() };
      try { if (onAck) onAck(res); } catch (e) { reject(e); return; }
      resolve(res);
    });
  });
}

/** Resolve with the inbox index of the first event matching pred (bounded wait). */
function waitIndex(socket, pred, timeoutMs, what) {
  const { events, waiters } = socket.inbox;
  const found = events.findIndex(pred);
  if (found >= 0) return Promise.resolve(found);
  return new Promise((resolve, reject) => {
    const waiter = (rec) => {
      if (pred(rec)) {
        waiters.delete(waiter);
        clearTimeout(timer);
        resolve(events.lastIndexOf(rec));
      }
    };
    const timer = setTimeout(() => {
      waiters.delete(waiter);
      reject(new Error(`${what}: not received within ${timeoutMs} ms (socket ${socket.sid}, connected=${socket.connected}, ${events.length} events received)`));
    }, timeoutMs);
    waiters.add(waiter);
  });
}

/** Resolve once `n` events matching pred have been received (bounded wait). */
function waitCount(socket, pred, n, timeoutMs, what) {
  const { events, waiters } = socket.inbox;
  let count = events.filter(pred).length;
  if (count >= n) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const waiter = (rec) => {
      if (pred(rec)) {
        count += 1;
        if (count >= n) { waiters.delete(waiter); clearTimeout(timer); resolve(); }
      }
    };
    const timer = setTimeout(() => {
      waiters.delete(waiter);
      reject(new Error(`${what}: ${count} of ${n} received within ${timeoutMs} ms (socket ${socket.sid}, connected=${socket.connected})`));
    }, timeoutMs);
    waiters.add(waiter);
  });
}

/** Events named `name` among the socket's inbox events [from, upTo) (arrival order). */
const eventsBefore = (socket, upTo, name, pred = () => true, from = 0) => socket.inbox.events
  .slice(from, upTo).filter((r) => r.event === name && pred(r.data)).map((r) => r.data);

const inRoom = (room) => (d) => d && d.roomName === room;

/** One HTTP request to the server's API; resolves { status, json, text, sentAt, at } (logical times). */
function api(server, method, path, body, timeoutMs = 10000) {
  const payload = body === undefined ? null : Buffer.from(JSON.stringify(body));
  const headers = payload ? { 'Content-Type': 'application/json', 'Content-Length': String(payload.length) } : {};
  const sentAt = tick();
  return new Promise((resolve, reject) => {
    let settled = false;
    const finish = (fn, v) => { if (!settled) { settled = true; clearTimeout(timer); fn(v); } };
    const req = http.request({ host: '127.0.0.1', port: server.port, method, path, headers, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('error', (e) => finish(reject, e));
      res.on('end', () => {
        const at = tick();
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try { json = JSON.parse(text); } catch { json = undefined; }
        finish(resolve, { status: res.statusCode, json, text, sentAt, at });
      });
    });
    const timer = setTimeout(() => { req.destroy(); finish(reject, new Error(`${method} ${path}: no answer within ${timeoutMs} ms`)); }, timeoutMs);
    req.on('error', (e) => finish(reject, new Error(`${method} ${path}: ${e.message}`)));
    if (payload) req.write(payload);
    req.end();
  });
}

async function apiOk(server, method, path, body) {
  const r = await api(server, method, path, body);
  assert.equal(r.status, 200, `${method} ${path}: HTTP ${r.status} ${r.text.slice(0, 300)}`);
  return r;
}

async function inBatches(items, size, fn) {
  const out = [];
  for (let i = 0; i < items.length; i += size) out.push(...await Promise.all(items.slice(i, i + size).map(fn)));
  return out;
}

/** Assert that a pattern's participants sit on at least two shards. */
function assertSpread(clients, what) {
  const shards = new Set(clients.map((c) => c.shard));
  assert.ok(!shards.has(undefined), `${what}: a participant is missing from GET /api/connections`);
  assert.ok(shards.size >= 2, `${what}: all ${clients.length} participants sit on shard ${[...shards]}; the pattern needs at least two shards`);
}

function report(t, problems, what, stats = '') {
  if (stats) t.diagnostic(`${what}: ${stats}`);
  if (problems.length) t.diagnostic(`${what}: ${problems.length} violations; first: ${problems[0]}`);
  assert.equal(problems.length, 0, `${what}: ${problems.length} causal-order violations:\n  ${problems.slice(0, 12).join('\n  ')}`);
}

// ---------------------------------------------------------------------------

describe('causal order across shards (SHARDS=4, 200 socket.io-client connections, a quarter long-polling)', () => {
  let server;
  const pool = []; // { i, name, s, sid, userId, polling, shard }
  let markerSeq = 0;

  /** Shard of every socket, from GET /api/connections. */
  async function shardMap() {
    const r = await apiOk(server, 'GET', '/api/connections');
    return new Map(r.json.connections.map((c) => [c.socketId, c.shard]));
  }

  /**
   * A marker: POST /api/broadcast after everything before it was acknowledged;
   * resolves with Map(client -> inbox index of the marker) once every client in
   * `clients` has it. Everything acknowledged earlier must precede it.
   */
  async function markAll(clients, what) {
    markerSeq += 1;
    const id = `${what}#${markerSeq}`;
    const r = await apiOk(server, 'POST', '/api/broadcast', { event: 'cz-mark', data: { id } });
    assert.ok(r.json.delivered >= clients.length, `marker ${id}: delivered ${r.json.delivered} < ${clients.length}`);
    const idx = await Promise.all(clients.map((c) => waitIndex(c.s, (rec) => rec.event === 'cz-mark' && rec.data && rec.data.id === id, 15000, `marker ${id} for ${describeClient(c)}`)));
    return new Map(clients.map((c, k) => [c, idx[k]]));
  }

  before(async () => {
    server = await startServer({ SHARDS });
    const sockets = await inBatches(Array.from({ length: POOL }, (_, i) => i), 25,
      (i) => connect(server.url, transportOpts(pollingIndex(i)), 15000));
    sockets.forEach((s, i) => pool.push({ i, name: `#${i}`, s, sid: s.id, userId: uid(`cz-u${i}`), polling: pollingIndex(i) }));
    const acks = await inBatches(pool, 25, (c) => ackAt(c.s, 'authenticate', { userId: c.userId }, { timeoutMs: 15000 }));
    acks.forEach(({ ack }, i) => assert.equal(ack && ack.success, true, `authenticate #${i}: ${JSON.stringify(ack)}`));
    const shards = await shardMap();
    for (const c of pool) c.shard = shards.get(c.sid);
    const used = new Set(pool.map((c) => c.shard));
    assert.equal(used.size, SHARDS, `the ${POOL} connections sit on shards ${[...used].sort()}, expected all ${SHARDS}`);
  });

  after(async () => {
    for (const c of pool) { try { c.s.disconnect(); } catch { /* ignore */ } }
    await server?.stop();
  });

  // -------------------------------------------------------------------------
  it('leave chain: at its leave ack the k-th leaver holds exactly the k earlier user-left (10 rooms of 20, rooms in parallel)', async (t) => {
    const ROUNDS = 15;
    const ROOMS = 10;
    const problems = [];
    const expectLeft = new Map(pool.map((c) => [c, new Map()])); // client -> room -> [sids of earlier leavers]
    const expectJoined = new Map(pool.map((c) => [c, new Map()])); // client -> room -> count of later joiners
    const rooms = new Set();
    let lateAtAck = 0;
    const reordered = new Set();
    for (let round = 0; round < ROUNDS; round += 1) {
      const groups = Array.from({ length: ROOMS }, (_, r) => ({ room: uid(`cz-lc${round}-r${r}`), members: pool.filter((c) => c.i % ROOMS === r) }));
      for (const g of groups) { rooms.add(g.room); if (round === 0) assertSpread(g.members, `leave chain ${g.room}`); }
      // Nothing about this round's (new) rooms can precede this point.
      const from = new Map(pool.map((c) => [c, c.s.inbox.events.length]));
      // Everyone joins (in parallel); memberCount m means 20 - m members join after it.
      const joins = await Promise.all(groups.flatMap((g) => g.members.map((c) => ackAt(c.s, 'join-room', { roomName: g.room }).then((res) => ({ c, g, res })))));
      const laterJoiners = new Map();
      for (const { c, g, res } of joins) {
        assert.equal(res.ack && res.ack.success, true, `join ${g.room} by ${describeClient(c)}: ${JSON.stringify(res.ack)}`);
        laterJoiners.set(c, g.members.length - res.ack.memberCount);
        expectJoined.get(c).set(g.room, g.members.length - res.ack.memberCount);
      }
      for (const g of groups) {
        const counts = joins.filter((j) => j.g === g).map((j) => j.res.ack.memberCount).sort((x, y) => x - y);
        assert.deepEqual(counts, g.members.map((_, k) => k + 1), `${g.room}: the memberCounts of ${g.members.length} parallel joins`);
      }
      // Then each room's members leave one at a time, each after the previous leaver's ack.
      await Promise.all(groups.map(async (g) => {
        const order = alternateShards(g.members);
        const gone = [];
        for (const [k, c] of order.entries()) {
          const { ack, mark } = await ackAt(c.s, 'leave-room', { roomName: g.room });
          if (!ack || ack.success !== true) problems.push(`round ${round} ${g.room}: leave by ${describeClient(c)} failed: ${JSON.stringify(ack)}`);
          const got = eventsBefore(c.s, mark, 'user-left', inRoom(g.room), from.get(c)).map((d) => d.socketId);
          const missing = gone.filter((x) => !got.includes(x));
          const extra = got.filter((x) => !gone.includes(x));
          if (missing.length || extra.length || got.length !== gone.length) {
            lateAtAck += 1;
            const prev = order[k - 1];
            problems.push(`round ${round} ${g.room}: leaver ${k} ${describeClient(c)} held ${got.length} user-left of ${k} at its leave ack` +
              ` (missing ${missing.length}${prev && missing.includes(prev.sid) ? `, among them the previous leaver ${describeClient(prev)}` : ''}, unexpected ${extra.length})`);
          } else if (JSON.stringify(got) !== JSON.stringify(gone)) {
            // All there, but not in leave order: one report per room and round.
            if (!reordered.has(g.room)) problems.push(`round ${round} ${g.room}: leaver ${k} ${describeClient(c)} (and maybe later ones) got the user-left events out of leave order`);
            reordered.add(g.room);
          }
          const joinedGot = eventsBefore(c.s, mark, 'user-joined', inRoom(g.room), from.get(c)).length;
          if (joinedGot !== laterJoiners.get(c)) {
            problems.push(`round ${round} ${g.room}: ${describeClient(c)} held ${joinedGot} user-joined at its leave ack, expected ${laterJoiners.get(c)} (members who joined after it)`);
          }
          expectLeft.get(c).set(g.room, [...gone]);
          gone.push(c.sid);
        }
      }));
    }
    // Nothing more arrives later: at a marker published after the last ack,
    // every client holds exactly its room's earlier leavers and nothing about other rooms.
    const marks = await markAll(pool, 'leave-chain');
    for (const c of pool) {
      const seen = new Map(); // room -> { left: [sids], joined }
      for (const rec of c.s.inbox.events.slice(0, marks.get(c))) {
        if ((rec.event === 'user-left' || rec.event === 'user-joined') && rec.data && rooms.has(rec.data.roomName)) {
          if (!seen.has(rec.data.roomName)) seen.set(rec.data.roomName, { left: [], joined: 0 });
          const entry = seen.get(rec.data.roomName);
          if (rec.event === 'user-left') entry.left.push(rec.data.socketId); else entry.joined += 1;
        }
      }
      for (const room of rooms) {
        const { left, joined } = seen.get(room) || { left: [], joined: 0 };
        const want = expectLeft.get(c).get(room);
        if (want === undefined) {
          if (left.length || joined) problems.push(`${describeClient(c)}: ${left.length} user-left / ${joined} user-joined about ${room}, a room it never joined`);
        } else {
          const missing = want.filter((x) => !left.includes(x));
          if (missing.length || left.length !== want.length) {
            problems.push(`${room}: at the final marker ${describeClient(c)} holds ${left.length} user-left, expected ${want.length} (missing for good: ${missing.length})`);
          }
          if (joined !== expectJoined.get(c).get(room)) problems.push(`${room}: at the final marker ${describeClient(c)} holds ${joined} user-joined, expected ${expectJoined.get(c).get(room)}`);
        }
      }
    }
    report(t, problems, 'leave chain', `${ROUNDS} rounds x ${ROOMS} rooms x 20 leaves; ${lateAtAck} leavers without exactly the earlier user-left at their ack, ${reordered.size} rooms with user-left out of leave order`);
  });

  // -------------------------------------------------------------------------
  it('join chain: the j-th joiner gets memberCount j+1 and user-joined exactly for the later joiners, in order (marker)', async (t) => {
    const ROUNDS = 4;
    const ROOMS = 10;
    const problems = [];
    for (let round = 0; round < ROUNDS; round += 1) {
      const groups = Array.from({ length: ROOMS }, (_, r) => ({ room: uid(`cz-jc${round}-r${r}`), members: pool.filter((c) => Math.floor(c.i / 20) === r) }));
      if (round === 0) for (const g of groups) assertSpread(g.members, `join chain ${g.room}`);
      const from = new Map(pool.map((c) => [c, c.s.inbox.events.length]));
      await Promise.all(groups.map(async (g) => {
        const order = alternateShards(g.members);
        for (const [j, c] of order.entries()) {
          const { ack, mark } = await ackAt(c.s, 'join-room', { roomName: g.room });
          if (!ack || ack.success !== true || ack.memberCount !== j + 1) {
            problems.push(`round ${round} ${g.room}: joiner ${j} ${describeClient(c)} got ${JSON.stringify(ack)}, expected memberCount ${j + 1}`);
          }
          const early = eventsBefore(c.s, mark, 'user-joined', inRoom(g.room), from.get(c)).length;
          if (early) problems.push(`round ${round} ${g.room}: joiner ${j} ${describeClient(c)} held ${early} user-joined at its join ack (of members who joined before it)`);
        }
        // Marker: a room broadcast answered after the last join ack.
        const r = await apiOk(server, 'POST', `/api/rooms/${encodeURIComponent(g.room)}/broadcast`, { event: 'cz-jc-mark', data: { room: g.room } });
        if (r.json.delivered !== g.members.length) problems.push(`round ${round} ${g.room}: marker delivered ${r.json.delivered}, expected ${g.members.length}`);
        await Promise.all(order.map(async (c, j) => {
          const upTo = await waitIndex(c.s, (rec) => rec.event === 'cz-jc-mark' && rec.data && rec.data.room === g.room, 15000, `join chain marker ${g.room} for ${describeClient(c)}`);
          const got = eventsBefore(c.s, upTo, 'user-joined', inRoom(g.room), from.get(c)).map((d) => d.socketId);
          const want = order.slice(j + 1).map((x) => x.sid);
          if (JSON.stringify(got) !== JSON.stringify(want)) {
            const missing = want.filter((x) => !got.includes(x)).length;
            const earlier = got.filter((x) => order.slice(0, j).some((e) => e.sid === x)).length;
            problems.push(`round ${round} ${g.room}: joiner ${j} ${describeClient(c)} holds ${got.length} user-joined at the marker, expected the ${want.length} later joiners` +
              ` (missing ${missing}, of earlier joiners ${earlier}${!missing && !earlier && got.length === want.length ? ', out of join order' : ''})`);
          }
        }));
        await Promise.all(g.members.map((c) => ackAt(c.s, 'leave-room', { roomName: g.room })));
      }));
    }
    report(t, problems, 'join chain', `${ROUNDS} rounds x ${ROOMS} rooms x 20 joins`);
  });

  // -------------------------------------------------------------------------
  it('relay then leave / relay then join: a member leaving right after a relay ack has the relay at its leave ack; a joiner never gets it', async (t) => {
    const GROUPS = 20;
    const ROUNDS = 100;
    const MEMBERS = 6;
    const problems = [];
    const expected = new Map(pool.map((c) => [c, new Map()])); // client -> group -> [seq]
    let checked = 0;
    const groups = Array.from({ length: GROUPS }, (_, g) => ({ g, room: uid(`cz-rl-g${g}`), clients: pool.filter((c) => c.i % GROUPS === g) }));
    for (const grp of groups) assertSpread(grp.clients, `relay group ${grp.g}`);
    await Promise.all(groups.map(async (grp) => {
      const { g, room } = grp;
      const ordered = alternateShards(grp.clients);
      let members = ordered.slice(0, MEMBERS);
      let outside = ordered.slice(MEMBERS);
      for (const c of members) {
        const { ack } = await ackAt(c.s, 'join-room', { roomName: room });
        assert.equal(ack && ack.success, true, `join ${room}: ${JSON.stringify(ack)}`);
      }
      for (let seq = 0; seq < ROUNDS; seq += 1) {
        const a = pick(members);
        const b = pickOtherShard(members.filter((c) => c !== a), a);
        const c = pickOtherShard(outside, a);
        let leaveP;
        let joinP;
        const from = b.s.inbox.events.length;
        const relay = await ackAt(a.s, 'custom-event', { event: 'cz-relay', data: { g, seq }, roomName: room }, {
          onAck: () => {
            leaveP = ackAt(b.s, 'leave-room', { roomName: room });
            joinP = ackAt(c.s, 'join-room', { roomName: room });
          },
        });
        if (!relay.ack || relay.ack.success !== true) problems.push(`group ${g} relay ${seq} by ${describeClient(a)} failed: ${JSON.stringify(relay.ack)}`);
        const [left, joined] = await Promise.all([leaveP, joinP]);
        if (!left.ack || left.ack.success !== true) problems.push(`group ${g} round ${seq}: leave by ${describeClient(b)} failed: ${JSON.stringify(left.ack)}`);
        if (!joined.ack || joined.ack.success !== true) problems.push(`group ${g} round ${seq}: join by ${describeClient(c)} failed: ${JSON.stringify(joined.ack)}`);
        const had = eventsBefore(b.s, left.mark, 'cz-relay', (d) => d && d.g === g && d.seq === seq, from).length;
        checked += 1;
        if (had !== 1) {
          problems.push(`group ${g} relay ${seq}: ${describeClient(b)} held it ${had} times at its leave ack, sent right after the relay's ack to ${describeClient(a)}`);
        }
        for (const m of members) {
          if (m === a) continue;
          const list = expected.get(m).get(g) || [];
          list.push(seq);
          expected.get(m).set(g, list);
        }
        members = members.filter((m) => m !== b).concat([c]);
        outside = outside.filter((m) => m !== c).concat([b]);
      }
      grp.finalMembers = members;
    }));
    // The joiners never got the relay that preceded their join; every member got every relay once, in order.
    const marks = await markAll(pool, 'relay');
    for (const c of pool) {
      const got = eventsBefore(c.s, marks.get(c), 'cz-relay');
      for (const { g } of groups) {
        const seqs = got.filter((d) => d && d.g === g).map((d) => d.seq);
        const want = expected.get(c).get(g) || [];
        if (JSON.stringify(seqs) !== JSON.stringify(want)) {
          const unexpected = seqs.filter((s) => !want.includes(s));
          const missing = want.filter((s) => !seqs.includes(s));
          problems.push(`group ${g}: at the marker ${describeClient(c)} holds ${seqs.length} relays, expected ${want.length}` +
            ` (missing ${JSON.stringify(missing)}, not for it ${JSON.stringify(unexpected)}${!missing.length && !unexpected.length ? ', out of order or repeated' : ''})`);
        }
      }
      const foreign = got.filter((d) => !(d && Number.isInteger(d.g) && d.g % GROUPS === c.i % GROUPS));
      if (foreign.length) problems.push(`${describeClient(c)}: ${foreign.length} relays of groups it never joined`);
    }
    await Promise.all(groups.flatMap((grp) => grp.finalMembers.map((c) => ackAt(c.s, 'leave-room', { roomName: grp.room }))));
    report(t, problems, 'relay then leave/join', `${GROUPS} groups x ${ROUNDS} rounds; ${checked} leave-after-relay checks`);
  });

  // -------------------------------------------------------------------------
  it('private message then disconnect: both connections of the target (two shards) get it exactly once (and before the sender\'s next relay); offline / reconnect', async (t) => {
    const USERS = 8;
    const ROUNDS = 8;
    const ROUNDS_OFFLINE = 3;
    const problems = [];
    const url = server.url;

    /** A new connection, authenticated as userId. */
    async function open(userId, polling) {
      const s = await connect(url, transportOpts(polling), 15000);
      const { ack } = await ackAt(s, 'authenticate', { userId });
      assert.equal(ack && ack.success, true, `authenticate ${userId}: ${JSON.stringify(ack)}`);
      return s;
    }
    async function userShards(userId) {
      const r = await apiOk(server, 'GET', `/api/users/${encodeURIComponent(userId)}`);
      return new Map(r.json.connections.map((c) => [c.socketId, c.shard]));
    }
    /** Two connections of userId on different shards (the kernel hashes; re-roll, bounded). */
    async function twoShards(userId, k) {
      const conns = [await open(userId, false), await open(userId, k % 2 === 1)];
      for (let attempt = 0; attempt < 30; attempt += 1) {
        const shards = await userShards(userId);
        if (shards.get(conns[0].id) !== shards.get(conns[1].id)) return { conns, shards };
        conns.pop().disconnect();
        conns.push(await open(userId, k % 2 === 1));
      }
      throw new Error(`could not place two connections of ${userId} on different shards in 30 attempts`);
    }
    const markUser = async (userId, conns, id) => {
      await apiOk(server, 'POST', `/api/users/${encodeURIComponent(userId)}/send`, { event: 'cz-pm-mark', data: { id } });
      return Promise.all(conns.map((s) => waitIndex(s, (rec) => rec.event === 'cz-pm-mark' && rec.data && rec.data.id === id, 15000, `user marker ${id} on ${s.sid}`)));
    };

    let checkedA = 0;
    let checkedB = 0;
    await Promise.all(Array.from({ length: USERS }, async (_, k) => {
      const target = uid(`cz-pm-target${k}`);
      const { conns, shards } = await twoShards(target, k);
      // Part A: the sender disconnects right after the private message's ack
      // (odd rounds), or first relays in a room it shares with the target's
      // connections and disconnects at the relay's ack (even rounds: each
      // target connection must hold the message exactly once when the relay
      // arrives). Either way, exactly once at a later marker.
      const room = uid(`cz-pm-room${k}`);
      for (const s of conns) {
        const { ack } = await ackAt(s, 'join-room', { roomName: room });
        assert.equal(ack && ack.success, true, `join ${room}: ${JSON.stringify(ack)}`);
      }
      for (let round = 0; round < ROUNDS; round += 1) {
        const viaRelay = round % 2 === 0;
        const sender = await open(uid(`cz-pm-sender${k}`), (k + round) % 3 === 0);
        if (viaRelay) assert.equal((await ackAt(sender, 'join-room', { roomName: room })).ack.success, true, `sender joins ${room}`);
        const message = `pm:${k}:${round}`;
        let relayP;
        const sent = await ackAt(sender, 'private-message', { targetUserId: target, message }, {
          onAck: () => {
            if (!viaRelay) sender.disconnect();
            else relayP = ackAt(sender, 'custom-event', { event: 'cz-pm-after', data: { k, round }, roomName: room }, { onAck: () => sender.disconnect() });
          },
        });
        if (!sent.ack || sent.ack.success !== true) { problems.push(`user ${k} round ${round}: private-message failed: ${JSON.stringify(sent.ack)}`); continue; }
        let atRelay = null;
        if (viaRelay) {
          const relay = await relayP;
          if (!relay.ack || relay.ack.success !== true) problems.push(`user ${k} round ${round}: relay after the private message failed: ${JSON.stringify(relay.ack)}`);
          atRelay = await Promise.all(conns.map((s) => waitIndex(s, (rec) => rec.event === 'cz-pm-after' && rec.data && rec.data.k === k && rec.data.round === round, 15000, `relay after private message ${k}/${round} on ${s.sid}`)));
        }
        const upTo = await markUser(target, conns, `pm-${k}-${round}`);
        conns.forEach((s, n) => {
          const got = eventsBefore(s, upTo[n], 'private-message', (d) => d && d.message === message);
          checkedA += 1;
          const early = atRelay && eventsBefore(s, atRelay[n], 'private-message', (d) => d && d.message === message).length;
          if (atRelay && early !== 1) {
            problems.push(`user ${k} round ${round}: connection ${n} (shard ${shards.get(s.id)}) held the private message ${early} times when the sender's later relay arrived, expected once`);
          } else if (got.length !== 1 || got[0].messageId !== sent.ack.messageId) {
            problems.push(`user ${k} round ${round}: connection ${n} (shard ${shards.get(s.id)}) holds the message ${got.length} times at the marker, expected once (sender disconnected right after the ack)`);
          }
        });
      }
      // Part B: offline after the observer saw user-offline; online again right after the authenticate ack.
      const observer = pool[(k * 25 + 1) % POOL];
      let live = conns;
      for (let round = 0; round < ROUNDS_OFFLINE; round += 1) {
        for (const s of live) s.disconnect();
        const isOffline = (rec) => rec.event === 'user-offline' && rec.data && rec.data.userId === target;
        await waitCount(observer.s, isOffline, round + 1, 15000, `user-offline #${round + 1} of ${target} at the observer ${describeClient(observer)}`);
        const off = await ackAt(observer.s, 'private-message', { targetUserId: target, message: `offline:${k}:${round}` });
        if (!off.ack || off.ack.code !== 'USER_OFFLINE') problems.push(`user ${k} round ${round}: private-message after user-offline was seen got ${JSON.stringify(off.ack)}, expected USER_OFFLINE`);
        const back = await connect(url, transportOpts(round % 2 === 0), 15000);
        let pmP;
        const message = `back:${k}:${round}`;
        const auth = await ackAt(back, 'authenticate', { userId: target }, {
          onAck: () => { pmP = ackAt(observer.s, 'private-message', { targetUserId: target, message }); },
        });
        assert.equal(auth.ack && auth.ack.success, true, `re-authenticate ${target}: ${JSON.stringify(auth.ack)}`);
        const pm = await pmP;
        checkedB += 1;
        // user-online is an effect of the authenticate: queued for the observer before the
        // target held its ack, so before the observer's own later ack.
        const onlineSeen = eventsBefore(observer.s, pm.mark, 'user-online', (d) => d && d.userId === target).length;
        if (onlineSeen !== round + 2) {
          problems.push(`user ${k} round ${round}: the observer held ${onlineSeen} user-online for the target at the ack of a private message sent after the target's authenticate ack, expected ${round + 2}`);
        }
        if (!pm.ack || pm.ack.success !== true) {
          problems.push(`user ${k} round ${round}: private-message sent right after the reconnected target's authenticate ack got ${JSON.stringify(pm.ack)}`);
        } else {
          const [upTo] = await markUser(target, [back], `back-${k}-${round}`);
          const n = eventsBefore(back, upTo, 'private-message', (d) => d && d.message === message).length;
          if (n !== 1) problems.push(`user ${k} round ${round}: the reconnected target holds the message ${n} times at the marker, expected once`);
        }
        live = [back];
      }
      for (const s of live) s.disconnect();
    }));
    report(t, problems, 'private message then disconnect', `${checkedA} deliveries (sender disconnected right after), ${checkedB} reconnect checks`);
  });

  // -------------------------------------------------------------------------
  it('HTTP room broadcasts while members join and leave: exactly once when certainly in, never when certainly out, after every earlier acked join/leave', async (t) => {
    const ROOMS = 4;
    const STABLE = 4;
    const CHURN = 6;
    const BROADCASTS = 400;
    const problems = [];
    const rooms = Array.from({ length: ROOMS }, (_, r) => {
      const members = pool.slice(100 + r * (STABLE + CHURN), 100 + (r + 1) * (STABLE + CHURN));
      return { room: uid(`cz-bc-r${r}`), stable: members.slice(0, STABLE), churners: members.slice(STABLE), sent: [], ops: [] };
    });
    for (const R of rooms) assertSpread([...R.stable, ...R.churners], `broadcast room ${R.room}`);
    let certainInChecks = 0;
    let certainOutChecks = 0;

    await Promise.all(rooms.map(async (R) => {
      for (const c of R.stable) {
        const { ack } = await ackAt(c.s, 'join-room', { roomName: R.room });
        assert.equal(ack && ack.success, true, `join ${R.room}: ${JSON.stringify(ack)}`);
      }
      const startMark = new Map(R.stable.map((c) => [c, c.s.inbox.events.length]));
      R.startMark = startMark;
      let done = false;
      // Time in (and out of) the room: sometimes none, mostly a few broadcast periods.
      const dwell = () => (Math.random() < 0.25 ? 0 : 5 + Math.floor(Math.random() * 30));
      R.intervals = new Map(R.churners.map((c) => [c, []])); // [{ joinSent, joinAck, leaveSent, leaveAck }]
      const churn = async (c) => {
        while (!done) {
          const iv = { joinSent: Infinity, joinAck: Infinity, leaveSent: Infinity, leaveAck: Infinity };
          R.intervals.get(c).push(iv);
          const j = await ackAt(c.s, 'join-room', { roomName: R.room });
          iv.joinSent = j.sentAt; iv.joinAck = j.at;
          if (!j.ack || j.ack.success !== true) problems.push(`${R.room}: join by ${describeClient(c)} failed: ${JSON.stringify(j.ack)}`);
          R.ops.push({ sid: c.sid, kind: 'user-joined', sentAt: j.sentAt, ackAt: j.at });
          await sleep(dwell());
          const l = await ackAt(c.s, 'leave-room', { roomName: R.room });
          iv.leaveSent = l.sentAt; iv.leaveAck = l.at;
          if (!l.ack || l.ack.success !== true) problems.push(`${R.room}: leave by ${describeClient(c)} failed: ${JSON.stringify(l.ack)}`);
          R.ops.push({ sid: c.sid, kind: 'user-left', sentAt: l.sentAt, ackAt: l.at });
          await sleep(dwell());
        }
      };
      const churners = R.churners.map(churn);
      for (let seq = 0; seq < BROADCASTS; seq += 1) {
        const r = await apiOk(server, 'POST', `/api/rooms/${encodeURIComponent(R.room)}/broadcast`, { event: 'cz-bc', data: { room: R.room, seq } });
        R.sent.push({ seq, sentAt: r.sentAt, at: r.at, delivered: r.json.delivered });
      }
      done = true;
      await Promise.all(churners);
    }));

    const marks = await markAll(pool, 'broadcast');
    for (const R of rooms) {
      const received = new Map(); // client -> Map(seq -> [inbox indexes])
      for (const c of [...R.stable, ...R.churners]) {
        const m = new Map();
        c.s.inbox.events.slice(0, marks.get(c)).forEach((rec, idx) => {
          if (rec.event === 'cz-bc' && rec.data && rec.data.room === R.room) {
            if (!m.has(rec.data.seq)) m.set(rec.data.seq, []);
            m.get(rec.data.seq).push(idx);
          }
        });
        received.set(c, m);
      }
      for (const b of R.sent) {
        let certainIn = R.stable.length;
        let possiblyIn = R.stable.length;
        for (const c of R.stable) {
          const n = (received.get(c).get(b.seq) || []).length;
          if (n !== 1) problems.push(`${R.room} broadcast ${b.seq}: stable member ${describeClient(c)} got it ${n} times`);
        }
        for (const c of R.churners) {
          const ivs = R.intervals.get(c);
          const n = (received.get(c).get(b.seq) || []).length;
          // Certainly in: request sent after a join ack, answered before the following leave was sent.
          const isIn = ivs.some((iv) => iv.joinAck < b.sentAt && b.at < iv.leaveSent);
          // Certainly out: answered before the first join was sent, or sent after a leave ack and answered before the next join was sent.
          const isOut = (ivs.length === 0 || b.at < ivs[0].joinSent)
            || ivs.some((iv, k) => iv.leaveAck < b.sentAt && b.at < (ivs[k + 1] ? ivs[k + 1].joinSent : Infinity));
          if (isIn) { certainIn += 1; certainInChecks += 1; }
          if (!isOut) possiblyIn += 1; else certainOutChecks += 1;
          if (n > 1) problems.push(`${R.room} broadcast ${b.seq}: ${describeClient(c)} got it ${n} times`);
          if (isIn && n !== 1) problems.push(`${R.room} broadcast ${b.seq}: ${describeClient(c)} got it ${n} times though the request was sent after its join ack and answered before it sent its leave`);
          if (isOut && n !== 0) problems.push(`${R.room} broadcast ${b.seq}: ${describeClient(c)} got it though the request was sent after its leave ack and answered before its next join`);
        }
        if (!(b.delivered >= certainIn && b.delivered <= possiblyIn)) {
          problems.push(`${R.room} broadcast ${b.seq}: delivered ${b.delivered}, expected between ${certainIn} (certainly in) and ${possiblyIn} (possibly in)`);
        }
      }
      // Causality for the stable members: when broadcast b arrives, every join/leave acked
      // before b's request was sent has been announced to it, and none sent after b's answer.
      for (const c of R.stable) {
        const events = c.s.inbox.events;
        for (const b of R.sent) {
          const idxs = received.get(c).get(b.seq);
          if (!idxs || idxs.length !== 1) continue;
          const idx = idxs[0];
          for (const other of R.churners) {
            const announced = events.slice(R.startMark.get(c), idx)
              .filter((rec) => (rec.event === 'user-joined' || rec.event === 'user-left') && rec.data && rec.data.roomName === R.room && rec.data.socketId === other.sid).length;
            const mustHave = R.ops.filter((o) => o.sid === other.sid && o.ackAt < b.sentAt).length;
            const mayHave = R.ops.filter((o) => o.sid === other.sid && o.sentAt < b.at).length;
            if (announced < mustHave || announced > mayHave) {
              problems.push(`${R.room} broadcast ${b.seq} reached stable member ${describeClient(c)} after ${announced} join/leave announcements of ${describeClient(other)};` +
                ` ${mustHave} of them were acked before the broadcast was requested${mayHave !== mustHave ? `, ${mayHave} sent before it was answered` : ''}`);
            }
          }
        }
      }
    }
    for (const R of rooms) {
      await Promise.all(R.stable.map((c) => ackAt(c.s, 'leave-room', { roomName: R.room })));
    }
    report(t, problems, 'HTTP broadcast while join/leave',
      `${ROOMS} rooms x ${BROADCASTS} broadcasts; ${certainInChecks} certainly-in and ${certainOutChecks} certainly-out (churner, broadcast) pairs`);
    assert.ok(certainInChecks >= 100 && certainOutChecks >= 100, `too few decisive cases: ${certainInChecks} certainly in, ${certainOutChecks} certainly out`);
  });
});
