// Limits and edges of SPEC §2 and §7: RATE_LIMITED, LIMIT_EXCEEDED
// (MAX_CONNECTIONS, MAX_ROOMS_PER_SOCKET), CORS_ORIGIN on the WebSocket
// Origin header, /health and /ready.

import { describe, before, after } from 'node:test';
import {
  assert, it, startServer, connect, connectAs, connectExpectingError, emitWithAck, waitForEvent,
  assertFailure, assertSuccess, uid, sleep, WebSocket, received,
} from './helpers.mjs';

describe('RATE_LIMIT_PER_SEC / RATE_LIMIT_BURST', () => {
  let server;
  before(async () => { server = await startServer({ RATE_LIMIT_PER_SEC: 5, RATE_LIMIT_BURST: 5 }); });
  after(() => server.stop());

  it('a burst over the limit is refused with RATE_LIMITED, then the client recovers', async () => {
    const socket = await connect(server.url, { transports: ['websocket'] });
    const started = performance.now();
    const acks = await Promise.all(Array.from({ length: 12 }, () => emitWithAck(socket, 'ping', {})));
    // The server handled the 12 within this span, so at most 5/s of it
    // (rounded up) refilled the bucket: a loaded machine that spreads them
    // out lets more through, but never more than the refill explains.
    const refills = Math.ceil(((performance.now() - started) * 5) / 1000);
    const ok = acks.filter((a) => a.success === true).length;
    const limited = acks.filter((a) => a.success === false && a.code === 'RATE_LIMITED');
    assert.ok(ok >= 5 && ok <= 5 + refills, `expected the burst of 5 (+ at most ${refills} refilled in the span) to pass, got ${ok}`);
    assert.ok(limited.length > 0, `some were refused: ${JSON.stringify(acks)}`);
    assert.equal(ok + limited.length, 12, JSON.stringify(acks));
    assertFailure(limited[0], 'RATE_LIMITED');
    // Without an ack, the refusal is an `error` event.
    const error = waitForEvent(socket, 'error', 3000, (e) => e.code === 'RATE_LIMITED');
    for (let i = 0; i < 3; i++) socket.emit('ping');
    assert.equal((await error).event, 'ping');
    // A lower bound on the time: a slow machine only makes it longer (more refill).
    await sleep(1100);
    assertSuccess(await emitWithAck(socket, 'ping', {}), 'after a second the bucket has refilled');
  });
});

describe('MAX_CONNECTIONS', () => {
  let server;
  before(async () => { server = await startServer({ MAX_CONNECTIONS: 2, SHARDS: 2 }); });
  after(() => server.stop());

  it('the connection over the limit gets a connect_error with LIMIT_EXCEEDED; a freed slot is reusable', async () => {
    const a = await connect(server.url, { transports: ['websocket'] });
    await connect(server.url, { transports: ['websocket'] });
    const err = await connectExpectingError(server.url, { transports: ['websocket'], reconnection: false });
    assert.match(err.message, /LIMIT_EXCEEDED/);
    a.disconnect();
    let third;
    for (let i = 0; i < 50 && !third; i++) {
      await sleep(50);
      third = await connect(server.url, { transports: ['websocket'], reconnection: false }, 2000).catch(() => null);
    }
    assert.ok(third, 'a slot freed by a disconnect can be used again');
  });
});

describe('MAX_ROOMS_PER_SOCKET', () => {
  let server;
  before(async () => { server = await startServer({ MAX_ROOMS_PER_SOCKET: 2 }); });
  after(() => server.stop());

  it('joining one room too many is LIMIT_EXCEEDED; leaving makes room', async () => {
    const socket = await connectAs(server.url, uid('u'), { transports: ['websocket'] });
    const [r1, r2, r3] = [uid('r'), uid('r'), uid('r')];
    assertSuccess(await emitWithAck(socket, 'join-room', { roomName: r1 }));
    assertSuccess(await emitWithAck(socket, 'join-room', { roomName: r2 }));
    assertFailure(await emitWithAck(socket, 'join-room', { roomName: r3 }), 'LIMIT_EXCEEDED');
    assertSuccess(await emitWithAck(socket, 'join-room', { roomName: r1 }), 'rejoining a room one is in is not a new room');
    assertSuccess(await emitWithAck(socket, 'leave-room', { roomName: r2 }));
    assertSuccess(await emitWithAck(socket, 'join-room', { roomName: r3 }));
  });
});

describe('CORS_ORIGIN on the WebSocket handshake', () => {
  let server;
  before(async () => { server = await startServer({ CORS_ORIGIN: 'https://app.example.com,https://admin.example.com' }); });
  after(() => server.stop());

  function handshake(headers) {
    return new Promise((resolve) => {
      const ws = new WebSocket(`ws://127.0.0.1:${server.port}/socket.io/?EIO=4&transport=websocket`, { headers });
      ws.on('open', () => { ws.terminate(); resolve('open'); });
      ws.on('unexpected-response', (_req, res) => { resolve(res.statusCode); });
      ws.on('error', () => resolve('error'));
    });
  }

  it('allows listed origins and clients without Origin; refuses others with 403', async () => {
    assert.equal(await handshake({ Origin: 'https://app.example.com' }), 'open');
    assert.equal(await handshake({ Origin: 'https://admin.example.com' }), 'open');
    assert.equal(await handshake({}), 'open', 'native clients send no Origin');
    assert.equal(await handshake({ Origin: 'https://evil.example.com' }), 403);
  });
});

describe('/health, /ready and shutdown', () => {
  it('answer 200 while running; SIGTERM closes connected clients and exits 0', async () => {
    const server = await startServer({});
    const health = await fetch(`${server.url}/health`);
    assert.equal(health.status, 200);
    const ready = await fetch(`${server.url}/ready`);
    assert.equal(ready.status, 200);
    assert.equal((await ready.json()).status, 'ready');
    const socket = await connect(server.url, { transports: ['websocket'], reconnection: false });
    const closed = new Promise((resolve) => socket.on('disconnect', resolve));
    server.child.kill('SIGTERM');
    const reason = await closed;
    assert.ok(['transport close', 'io server disconnect'].includes(reason), reason);
    await server.exitPromise;
    assert.equal(server.exited.code, 0);
  });
});

describe('ROOM_EVENTS=off', () => {
  let server;
  before(async () => { server = await startServer({ ROOM_EVENTS: 'off' }); });
  after(() => server.stop());

  it('joins and leaves are not announced to other members; joins, acks and relays still work', async () => {
    const room = uid('r');
    const a = await connectAs(server.url, uid('a'), { transports: ['websocket'] });
    const b = await connectAs(server.url, uid('b'), { transports: ['websocket'] });
    assertSuccess(await emitWithAck(a, 'join-room', { roomName: room }));
    const joined = await emitWithAck(b, 'join-room', { roomName: room });
    assert.equal(joined.memberCount, 2);
    const relay = waitForEvent(a, 'typing', 3000);
    assertSuccess(await emitWithAck(b, 'custom-event', { event: 'typing', data: { x: 1 }, roomName: room }));
    assert.deepEqual(await relay, { x: 1 });
    assertSuccess(await emitWithAck(b, 'leave-room', { roomName: room }));
    b.disconnect();
    // Instead of a quiet window: b's join and leave acks came after their
    // announcements (if any) were sent, and a relay sent after those acks
    // reaches `a` after anything sent before them (causal order, README
    // "Ordering"), so an announcement would have come before the marker.
    const c = await connectAs(server.url, uid('c'), { transports: ['websocket'] });
    assertSuccess(await emitWithAck(c, 'join-room', { roomName: room }));
    const marker = waitForEvent(a, 'marker', 3000);
    assertSuccess(await emitWithAck(c, 'custom-event', { event: 'marker', data: 1, roomName: room }));
    await marker;
    assert.equal(received(a, 'user-joined').length, 0, 'no user-joined');
    assert.equal(received(a, 'user-left').length, 0, 'no user-left');
  });
});
