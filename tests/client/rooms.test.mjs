// Room lifecycle (SPEC §2 join-room / leave-room / custom-event, §3 room events).

import { describe, before, after } from 'node:test';
import {
  assert, it, startServer, connectAs, emitWithAck, waitForEvent, expectNoEvent, assertNoEvent,
  received, assertTimestamp, assertFailure, assertSuccess, uid, sleep, waitUntil,
  relayBarrier,
} from './helpers.mjs';

const join = async (s, roomName) => {
  const ack = await emitWithAck(s, 'join-room', { roomName });
  assertSuccess(ack, `join ${roomName}`);
  return ack;
};
const leave = async (s, roomName) => {
  const ack = await emitWithAck(s, 'leave-room', { roomName });
  assertSuccess(ack, `leave ${roomName}`);
  return ack;
};
const about = (roomName, s) => (d) => d && d.roomName === roomName && d.socketId === s.sid;

async function expectUserEvent(receiver, name, roomName, subject) {
  const ev = await waitForEvent(receiver, name, 5000, about(roomName, subject));
  assert.equal(ev.userId, subject.userId, `${name}.userId`);
  assertTimestamp(ev.timestamp, `${name}.timestamp`);
  return ev;
}

describe('rooms', () => {
  let server;
  let url;
  before(async () => { server = await startServer({}); url = server.url; });
  after(async () => { await server?.stop(); });

  it('lifecycle: memberCount grows and shrinks, user-joined/user-left to the others, room recreated after empty', async () => {
    const room = uid('lobby');
    const [a, b, c, d, e] = await Promise.all(['a', 'b', 'c', 'd', 'e'].map((n) => connectAs(url, uid(n))));
    const outsider = await connectAs(url, uid('outsider'));

    assert.equal((await join(a, room)).memberCount, 1);
    assert.equal((await join(b, room)).memberCount, 2);
    await expectUserEvent(a, 'user-joined', room, b);
    assert.equal((await waitForEvent(b, 'room-joined')).memberCount, 2);

    assert.equal((await join(c, room)).memberCount, 3);
    await expectUserEvent(a, 'user-joined', room, c);
    await expectUserEvent(b, 'user-joined', room, c);

    // b leaves: room-left to b, user-left to a and c.
    await leave(b, room);
    const left = await waitForEvent(b, 'room-left');
    assert.equal(left.roomName, room);
    await expectUserEvent(a, 'user-left', room, b);
    await expectUserEvent(c, 'user-left', room, b);

    assert.equal((await join(d, room)).memberCount, 3, 'a, c, d');
    await expectUserEvent(a, 'user-joined', room, d);
    await expectUserEvent(c, 'user-joined', room, d);

    // c disconnects: the remaining members get user-left.
    c.disconnect();
    await expectUserEvent(a, 'user-left', room, c);
    await expectUserEvent(d, 'user-left', room, c);

    await leave(a, room);
    await expectUserEvent(d, 'user-left', room, a);
    await leave(d, room);

    // The room was removed when empty; joining again creates it anew.
    assert.equal((await join(e, room)).memberCount, 1, 'recreated room starts with one member');

    await sleep(300);
    // Nobody is told about itself, b hears nothing after leaving, the outsider hears nothing.
    for (const s of [a, b, d, e]) {
      assertNoEvent(s, 'user-joined', (x) => x.socketId === s.sid, 'about itself');
      assertNoEvent(s, 'user-left', (x) => x.socketId === s.sid, 'about itself');
    }
    assertNoEvent(b, 'user-joined', (x) => x.roomName === room, 'b had left');
    assertNoEvent(b, 'user-left', (x) => x.roomName === room, 'b had left');
    assertNoEvent(outsider, 'user-joined', () => true, 'not a member');
    assertNoEvent(outsider, 'user-left', () => true, 'not a member');
    // Exact counts for a: joined b, c, d; left b, c.
    assert.deepEqual(received(a, 'user-joined', (x) => x.roomName === room).map((x) => x.socketId), [b.sid, c.sid, d.sid]);
    assert.deepEqual(received(a, 'user-left', (x) => x.roomName === room).map((x) => x.socketId), [b.sid, c.sid]);
  });

  it('memberCount counts connections: one user with two connections is two members', async () => {
    const room = uid('room');
    const alice = uid('alice');
    const a1 = await connectAs(url, alice);
    const a2 = await connectAs(url, alice);
    const bob = await connectAs(url, uid('bob'));
    assert.equal((await join(a1, room)).memberCount, 1);
    assert.equal((await join(a2, room)).memberCount, 2);
    // a1 is told that alice's other connection joined (other members = other connections).
    await expectUserEvent(a1, 'user-joined', room, a2);
    assert.equal((await join(bob, room)).memberCount, 3);
    a2.disconnect();
    await expectUserEvent(bob, 'user-left', room, a2);
    const carol = await connectAs(url, uid('carol'));
    assert.equal((await join(carol, room)).memberCount, 3, 'a1, bob, carol');
  });

  it('disconnecting from several rooms sends user-left in each of them, to their members only', async () => {
    const r1 = uid('r1');
    const r2 = uid('r2');
    const leaver = await connectAs(url, uid('leaver'));
    const m1 = await connectAs(url, uid('m1'));
    const m2 = await connectAs(url, uid('m2'));
    await join(m1, r1);
    await join(m2, r2);
    await join(leaver, r1);
    await join(leaver, r2);
    leaver.disconnect();
    await expectUserEvent(m1, 'user-left', r1, leaver);
    await expectUserEvent(m2, 'user-left', r2, leaver);
    await sleep(300);
    assertNoEvent(m1, 'user-left', () => true, 'm1 is only in r1');
    assertNoEvent(m2, 'user-left', () => true, 'm2 is only in r2');
    // Both rooms now have one member.
    const x = await connectAs(url, uid('x'));
    assert.equal((await join(x, r1)).memberCount, 2);
    assert.equal((await join(x, r2)).memberCount, 2);
  });

  it('custom-event: relays arrive in the order sent, exactly once, never echoed to the sender', async () => {
    const room = uid('room');
    const [a, b, c] = await Promise.all(['a', 'b', 'c'].map((n) => connectAs(url, uid(n))));
    for (const s of [a, b, c]) await join(s, room);
    const N = 300;
    const acks = [];
    for (let i = 0; i < N; i++) acks.push(emitWithAck(a, 'custom-event', { event: 'seq', data: { i }, roomName: room }, 15000));
    for (const ack of await Promise.all(acks)) assertSuccess(ack);
    for (const r of [b, c]) {
      await waitUntil(() => received(r, 'seq').length >= N, 15000, () => `got ${received(r, 'seq').length}/${N}`);
    }
    await relayBarrier(a, room, [b, c]);
    for (const r of [b, c]) {
      assert.deepEqual(received(r, 'seq').map((d) => d.i), Array.from({ length: N }, (_, i) => i), 'order and exactly-once');
    }
    assert.equal(received(a, 'seq').length, 0, 'the sender never receives its own relay');
  });

  it('custom-event: two senders interleaved, each sender in order; other rooms hear nothing', async () => {
    const room = uid('room');
    const other = uid('other');
    const [a, b, c, d] = await Promise.all(['a', 'b', 'c', 'd'].map((n) => connectAs(url, uid(n))));
    for (const s of [a, b, c]) await join(s, room);
    await join(d, other);
    await join(a, other); // a is in both rooms; relays to `room` must not reach d
    const N = 100;
    const acks = [];
    for (let i = 0; i < N; i++) {
      acks.push(emitWithAck(a, 'custom-event', { event: 'tick', data: { from: 'a', i }, roomName: room }, 15000));
      acks.push(emitWithAck(b, 'custom-event', { event: 'tick', data: { from: 'b', i }, roomName: room }, 15000));
    }
    for (const ack of await Promise.all(acks)) assertSuccess(ack);
    await waitUntil(() => received(c, 'tick').length >= 2 * N, 15000, () => `c got ${received(c, 'tick').length}`);
    await waitUntil(() => received(a, 'tick').length >= N && received(b, 'tick').length >= N, 15000,
      () => `a got ${received(a, 'tick').length}, b got ${received(b, 'tick').length}`);
    await relayBarrier(a, room, [b, c]);
    await relayBarrier(b, room, [a, c]);
    const seq = (s, from) => received(s, 'tick', (x) => x.from === from).map((x) => x.i);
    const all = Array.from({ length: N }, (_, i) => i);
    assert.deepEqual(seq(c, 'a'), all);
    assert.deepEqual(seq(c, 'b'), all);
    assert.deepEqual(seq(b, 'a'), all);
    assert.deepEqual(seq(a, 'b'), all);
    assert.deepEqual(seq(a, 'a'), [], 'no echo');
    assert.deepEqual(seq(b, 'b'), [], 'no echo');
    assert.equal(received(d, 'tick').length, 0, 'a member of another room hears nothing');
  });

  it('after leaving, a member no longer receives the room relays', async () => {
    const room = uid('room');
    const [a, b] = await Promise.all(['a', 'b'].map((n) => connectAs(url, uid(n))));
    await join(a, room);
    await join(b, room);
    assertSuccess(await emitWithAck(a, 'custom-event', { event: 'before', data: 1, roomName: room }));
    await waitForEvent(b, 'before');
    await leave(b, room);
    assertSuccess(await emitWithAck(a, 'custom-event', { event: 'after', data: 2, roomName: room }));
    await expectNoEvent(b, 'after', 400);
    assertFailure(await emitWithAck(b, 'custom-event', { event: 'x', data: 1, roomName: room }), 'NOT_IN_ROOM');
  });

  it("a user's other connection in the same room receives the relay; the sending connection does not", async () => {
    const room = uid('room');
    const alice = uid('alice');
    const a1 = await connectAs(url, alice);
    const a2 = await connectAs(url, alice);
    await join(a1, room);
    await join(a2, room);
    assertSuccess(await emitWithAck(a1, 'custom-event', { event: 'self-sync', data: { v: 1 }, roomName: room }));
    assert.deepEqual(await waitForEvent(a2, 'self-sync'), { v: 1 });
    await expectNoEvent(a1, 'self-sync', 300);
  });
});
