// SHARDS=4 with 200 clients: room members and a user's connections sit on
// different shards. Every expected delivery must arrive exactly once, in order
// per sender, and nothing else may arrive (SPEC §2, §3, §8).

import { describe, before, after } from 'node:test';
import {
  assert, it, startServer, connect, emitWithAck, waitForEvent, received, assertSuccess,
  sleep, waitUntil, uid, broadcastBarrier,
} from './helpers.mjs';

const N_USERS = 100;
const CONNS_PER_USER = 2;
const N_CLIENTS = N_USERS * CONNS_PER_USER; // 200
const N_ROOMS = 10;
const K = 4; // custom events per (client, room)

const roomName = (r) => `xs-room-${r}`;
const userOf = (i) => `xs-user-${Math.floor(i / CONNS_PER_USER)}`;
// Two distinct rooms per client: i % 10 and (7i + 3) % 10 (7i+3 ≢ i mod 10 for every i).
const roomsOf = (i) => [i % N_ROOMS, (i * 7 + 3) % N_ROOMS].map(roomName);

async function inBatches(items, size, fn) {
  const out = [];
  for (let i = 0; i < items.length; i += size) {
    out.push(...await Promise.all(items.slice(i, i + size).map(fn)));
  }
  return out;
}

describe('cross-shard delivery (SHARDS=4, 200 clients)', () => {
  let server;
  const clients = []; // { i, s, userId, rooms }
  const joinOrder = new Map(); // roomName -> [client index in join order]
  const alive = () => clients.filter((c) => !c.gone);

  before(async () => {
    server = await startServer({ SHARDS: 4 });
    const sockets = await inBatches(Array.from({ length: N_CLIENTS }, (_, i) => i), 25, () => connect(server.url, {}, 15000));
    sockets.forEach((s, i) => clients.push({ i, s, userId: userOf(i), rooms: roomsOf(i) }));
    const acks = await inBatches(clients, 25, (c) => emitWithAck(c.s, 'authenticate', { userId: c.userId }, 15000));
    acks.forEach((a, i) => assert.equal(a.success, true, `authenticate #${i}: ${JSON.stringify(a)}`));
  });

  after(async () => {
    for (const c of clients) c.s.disconnect();
    await server?.stop();
  });

  it('sequential joins: memberCount is exact across shards; user-joined reaches exactly the members who were there before', async (t) => {
    for (const c of clients) {
      for (const room of c.rooms) {
        const order = joinOrder.get(room) || [];
        const ack = await emitWithAck(c.s, 'join-room', { roomName: room }, 10000);
        assertSuccess(ack, `join #${c.i} ${room}`);
        assert.equal(ack.memberCount, order.length + 1, `memberCount for #${c.i} joining ${room}`);
        order.push(c.i);
        joinOrder.set(room, order);
      }
    }
    // Each join was acknowledged before the next one was sent. Member m of room R
    // must therefore get user-joined for exactly the members who joined R after m
    // (SPEC §3: "to the other members of the room"), and for nobody who was
    // already there when m joined (m's memberCount already counted them).
    // SPEC does not order user-joined events of different joiners, so the order
    // is only reported as a diagnostic.
    let expectedTotal = 0;
    for (const order of joinOrder.values()) expectedTotal += (order.length * (order.length - 1)) / 2;
    const countAll = () => clients.reduce((n, c) => n + received(c.s, 'user-joined', (d) => d.roomName.startsWith('xs-room-')).length, 0);
    await waitUntil(() => countAll() >= expectedTotal, 20000, () => `user-joined ${countAll()}/${expectedTotal}`);
    await broadcastBarrier(server, clients.map((c) => c.s));
    const problems = [];
    let reordered = 0;
    const idx = (sid) => clients.findIndex((c) => c.s.sid === sid);
    for (const [room, order] of joinOrder) {
      order.forEach((m, pos) => {
        const want = order.slice(pos + 1).map((j) => clients[j].s.sid);
        const got = received(clients[m].s, 'user-joined', (d) => d.roomName === room).map((d) => d.socketId);
        const same = JSON.stringify([...got].sort()) === JSON.stringify([...want].sort());
        if (!same) {
          const missing = want.filter((x) => !got.includes(x)).map(idx);
          const unexpected = got.filter((x) => !want.includes(x)).map((x) => `#${idx(x)} (joined ${room} ${order.indexOf(idx(x)) < pos ? 'before' : 'after'} #${m})`);
          const dup = got.length - new Set(got).size;
          problems.push(`#${m} in ${room}: expected user-joined for ${JSON.stringify(order.slice(pos + 1))}, got ${JSON.stringify(got.map(idx))}` +
            ` (missing ${JSON.stringify(missing)}, unexpected ${JSON.stringify(unexpected)}, duplicates ${dup})`);
        } else if (JSON.stringify(got) !== JSON.stringify(want)) {
          reordered += 1;
        }
        for (const d of received(clients[m].s, 'user-joined', (x) => x.roomName === room)) {
          const j = clients.findIndex((c) => c.s.sid === d.socketId);
          if (j < 0 || clients[j].userId !== d.userId) problems.push(`#${m}: user-joined with wrong userId ${JSON.stringify(d)}`);
        }
      });
    }
    for (const c of clients) {
      const foreign = received(c.s, 'user-joined', (d) => d.roomName.startsWith('xs-room-') && !c.rooms.includes(d.roomName));
      if (foreign.length) problems.push(`#${c.i}: user-joined for rooms it is not in: ${foreign.length}`);
    }
    if (reordered) t.diagnostic(`${reordered} members got the user-joined events of consecutive joiners out of join order`);
    assert.deepEqual(problems.slice(0, 20), [], `${problems.length} problems`);
    assert.equal(countAll(), expectedTotal, 'total user-joined deliveries');
  });

  it('custom-events: every other member gets every relay exactly once, in order per sender; no echo, no leak', async () => {
    const sends = [];
    for (let q = 0; q < K; q++) {
      for (const c of clients) {
        for (const room of c.rooms) {
          sends.push(emitWithAck(c.s, 'custom-event', { event: 'xs-relay', data: { s: c.i, r: room, q }, roomName: room }, 30000));
        }
      }
    }
    const acks = await Promise.all(sends);
    const failed = acks.filter((a) => !a || a.success !== true);
    assert.deepEqual(failed.slice(0, 5), [], `${failed.length} custom-event acks failed`);

    let expectedTotal = 0;
    for (const order of joinOrder.values()) expectedTotal += order.length * (order.length - 1) * K;
    const countAll = () => clients.reduce((n, c) => n + received(c.s, 'xs-relay').length, 0);
    await waitUntil(() => countAll() >= expectedTotal, 60000, () => `relays ${countAll()}/${expectedTotal}`, 100);
    await broadcastBarrier(server, clients.map((c) => c.s));

    const problems = [];
    for (const c of clients) {
      const got = received(c.s, 'xs-relay');
      const bySenderRoom = new Map();
      for (const d of got) {
        if (d.s === c.i) problems.push(`#${c.i} received its own relay ${JSON.stringify(d)}`);
        if (!c.rooms.includes(d.r)) problems.push(`#${c.i} received a relay for ${d.r}, not a member`);
        const key = `${d.s}|${d.r}`;
        if (!bySenderRoom.has(key)) bySenderRoom.set(key, []);
        bySenderRoom.get(key).push(d.q);
      }
      for (const room of c.rooms) {
        for (const sender of joinOrder.get(room)) {
          if (sender === c.i) continue;
          const qs = bySenderRoom.get(`${sender}|${room}`) || [];
          if (JSON.stringify(qs) !== JSON.stringify([0, 1, 2, 3].slice(0, K))) {
            problems.push(`#${c.i} from #${sender} in ${room}: got q=${JSON.stringify(qs)}`);
          }
        }
      }
    }
    assert.deepEqual(problems.slice(0, 20), [], `${problems.length} problems`);
    assert.equal(countAll(), expectedTotal, 'total relay deliveries');
  });

  it('private messages: every connection of the target gets each message exactly once; message-sent once to the sender', async () => {
    const sends = [];
    for (const c of clients) {
      const u = Math.floor(c.i / CONNS_PER_USER);
      for (const [k, target] of [(u + 1) % N_USERS, (u + 37) % N_USERS].entries()) {
        const targetUserId = `xs-user-${target}`;
        const message = `pm:${c.i}:${k}`;
        sends.push(emitWithAck(c.s, 'private-message', { targetUserId, message }, 30000).then((ack) => ({ c, targetUserId, message, ack })));
      }
    }
    const results = await Promise.all(sends);
    const failed = results.filter((r) => !r.ack || r.ack.success !== true);
    assert.deepEqual(failed.slice(0, 5).map((r) => r.ack), [], `${failed.length} private-message acks failed`);
    assert.equal(new Set(results.map((r) => r.ack.messageId)).size, results.length, 'messageIds are unique');

    const expected = new Map(); // client index -> sorted list of messages
    for (const r of results) {
      for (const c of clients) {
        if (c.userId === r.targetUserId) {
          if (!expected.has(c.i)) expected.set(c.i, []);
          expected.get(c.i).push(r.message);
        }
      }
    }
    const expectedTotal = results.length * CONNS_PER_USER;
    const countAll = () => clients.reduce((n, c) => n + received(c.s, 'private-message').length, 0);
    const countSent = () => clients.reduce((n, c) => n + received(c.s, 'message-sent').length, 0);
    await waitUntil(() => countAll() >= expectedTotal && countSent() >= results.length, 30000,
      () => `private-message ${countAll()}/${expectedTotal}, message-sent ${countSent()}/${results.length}`, 100);
    await broadcastBarrier(server, clients.map((c) => c.s));

    const problems = [];
    const byMessage = new Map(results.map((r) => [r.message, r]));
    for (const c of clients) {
      const got = received(c.s, 'private-message');
      const want = (expected.get(c.i) || []).slice().sort();
      const gotMsgs = got.map((d) => d.message).sort();
      if (JSON.stringify(gotMsgs) !== JSON.stringify(want)) {
        problems.push(`#${c.i} (${c.userId}): expected ${want.length} messages, got ${gotMsgs.length}`);
      }
      for (const d of got) {
        const r = byMessage.get(d.message);
        if (!r || d.messageId !== r.ack.messageId || d.fromUserId !== r.c.userId || d.targetUserId !== c.userId) {
          problems.push(`#${c.i}: inconsistent private-message ${JSON.stringify(d)}`);
        }
      }
      const sentIds = received(c.s, 'message-sent').map((d) => d.messageId).sort();
      const mine = results.filter((r) => r.c === c).map((r) => r.ack.messageId).sort();
      if (JSON.stringify(sentIds) !== JSON.stringify(mine)) {
        problems.push(`#${c.i}: message-sent ${sentIds.length}, expected ${mine.length} (its own sends only)`);
      }
    }
    assert.deepEqual(problems.slice(0, 20), [], `${problems.length} problems`);
    assert.equal(countAll(), expectedTotal, 'total private-message deliveries');
    assert.equal(countSent(), results.length, 'total message-sent');
  });

  it('presence across shards: user-online once on the first connection, user-offline once on the last, to all 200', async () => {
    const late = uid('xs-late');
    const l1 = await connect(server.url);
    const l2 = await connect(server.url);
    assertSuccess(await emitWithAck(l1, 'authenticate', { userId: late }));
    assertSuccess(await emitWithAck(l2, 'authenticate', { userId: late }));
    const isLate = (d) => d.userId === late;
    const countOnline = () => clients.filter((c) => received(c.s, 'user-online', isLate).length > 0).length;
    await waitUntil(() => countOnline() === N_CLIENTS, 15000, () => `user-online reached ${countOnline()}/${N_CLIENTS}`);
    l1.disconnect();
    await sleep(800);
    const early = clients.filter((c) => received(c.s, 'user-offline', isLate).length > 0).length;
    assert.equal(early, 0, `${early} clients got user-offline while ${late} still had a connection`);
    l2.disconnect();
    const countOffline = () => clients.filter((c) => received(c.s, 'user-offline', isLate).length > 0).length;
    await waitUntil(() => countOffline() === N_CLIENTS, 15000, () => `user-offline reached ${countOffline()}/${N_CLIENTS}`);
    await sleep(500);
    const dupOnline = clients.filter((c) => received(c.s, 'user-online', isLate).length !== 1).length;
    const dupOffline = clients.filter((c) => received(c.s, 'user-offline', isLate).length !== 1).length;
    assert.equal(dupOnline, 0, 'clients with other than one user-online');
    assert.equal(dupOffline, 0, 'clients with other than one user-offline');
  });

  it('disconnects across shards: user-left exactly once per (leaver, room) to the remaining members; memberCount follows', async () => {
    const leavers = clients.filter((c) => c.i % 20 === 7); // 10 clients, 5 users with one connection gone each
    for (const c of leavers) { c.s.disconnect(); c.gone = true; }
    const leaverIds = new Map(leavers.map((c) => [c.s.sid, c]));
    let expectedTotal = 0;
    for (const c of leavers) {
      for (const room of c.rooms) {
        expectedTotal += joinOrder.get(room).filter((j) => !clients[j].gone).length;
      }
    }
    const count = () => alive().reduce((n, c) => n + received(c.s, 'user-left', (d) => leaverIds.has(d.socketId)).length, 0);
    await waitUntil(() => count() >= expectedTotal, 15000, () => `user-left ${count()}/${expectedTotal}`);
    await sleep(500);
    const problems = [];
    for (const c of alive()) {
      const got = received(c.s, 'user-left', (d) => leaverIds.has(d.socketId)).map((d) => `${d.socketId}|${d.roomName}`).sort();
      const want = [];
      for (const l of leavers) for (const room of l.rooms) if (c.rooms.includes(room)) want.push(`${l.s.sid}|${room}`);
      want.sort();
      if (JSON.stringify(got) !== JSON.stringify(want)) problems.push(`#${c.i}: user-left ${got.length}, expected ${want.length}`);
    }
    assert.deepEqual(problems.slice(0, 20), [], `${problems.length} problems`);
    assert.equal(count(), expectedTotal, 'total user-left deliveries');
    // The leavers' users still have a connection: no user-offline for them.
    const leaverUsers = new Set(leavers.map((c) => c.userId));
    const offline = alive().reduce((n, c) => n + received(c.s, 'user-offline', (d) => leaverUsers.has(d.userId)).length, 0);
    assert.equal(offline, 0, 'user-offline for users that still have a connection');
    // memberCount seen by a new joiner reflects the departures, in every room.
    const probe = await connect(server.url);
    assertSuccess(await emitWithAck(probe, 'authenticate', { userId: uid('probe') }));
    for (const [room, order] of joinOrder) {
      const ack = await emitWithAck(probe, 'join-room', { roomName: room });
      assert.equal(ack.memberCount, order.filter((j) => !clients[j].gone).length + 1, `memberCount of ${room}`);
    }
  });
});
