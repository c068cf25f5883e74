// Cluster interop (issue 13): shardcast speaks the classic socket.io Redis
// adapter's channels and format for room broadcasts and broadcasts to all.
// On one redis-server: two shardcast nodes, a real Node socket.io 4.8 server
// with @socket.io/redis-adapter 8.x (cluster-socketio-server.mjs, a child
// process), and a Node backend publishing with @socket.io/redis-emitter 5.x.
// Clients of each side in a room get the other side's room broadcasts exactly
// once.
//
// Needs Debian's redis-server (.ci/run installs it); skipped with a message
// without it, except under CI=true.

import { describe, before, after } from 'node:test';
import { spawn } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { Emitter } from '@socket.io/redis-emitter';
import {
  assert, it, connect, emitWithAck, received, assertSuccess, sleep, waitUntil, uid,
} from './helpers.mjs';
import {
  redisMissing, startRedis, startCluster, stopNodes, postJson, waitRoomSubscribers, join, userOn, anonOn,
  expectDeliveries, metric,
} from './cluster-helpers.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const enc = encodeURIComponent;

/**
 * Spawn cluster-socketio-server.mjs on `redis`; resolves once it printed
 * "listening <port>". Returns { url, pid, logs, stop() }.
 */
async function startNodeSocketIo(redis, { readyTimeoutMs = 15000 } = {}) {
  const child = spawn(process.execPath, [path.join(HERE, 'cluster-socketio-server.mjs')], {
    env: { ...process.env, REDIS_URL: redis.url, REDIS_ADAPTER_KEY: 'socket.io' },
    stdio: ['ignore', 'pipe', 'pipe'],
    cwd: HERE,
  });
  const server = { child, pid: child.pid, logs: [], url: null, exited: null };
  const killOnExit = () => { try { child.kill('SIGKILL'); } catch { /* gone */ } };
  process.on('exit', killOnExit);
  server.exitPromise = new Promise((resolve) => {
    child.on('exit', (code, signal) => { server.exited = { code, signal }; process.off('exit', killOnExit); resolve(server.exited); });
  });
  let onReady;
  const ready = new Promise((resolve) => { onReady = resolve; });
  for (const stream of ['stdout', 'stderr']) {
    readline.createInterface({ input: child[stream] }).on('line', (line) => {
      server.logs.push(`[${stream}] ${line}`);
      const m = /^listening (\d+)$/.exec(line);
      if (m) { server.url = `http://127.0.0.1:${m[1]}`; onReady(); }
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
    throw new Error(`the Node socket.io server did not start: ${outcome}\n${server.logs.join('\n')}`);
  }
  return server;
}

/** A socket.io-client connection to the Node server, tagged for messages. */
async function nodeClient(nodeServer, tag) {
  const s = await connect(nodeServer.url);
  s.userId = tag;
  s.nodeName = 'node-socket.io';
  return s;
}

async function nodeJoin(s, room) {
  const ack = await emitWithAck(s, 'join', room);
  assert.equal(ack && ack.ok, true, `join on the Node server: ${JSON.stringify(ack)}`);
}

async function nodeCall(s, event, payload) {
  const ack = await emitWithAck(s, event, payload);
  assert.equal(ack && ack.ok, true, `${event} on the Node server: ${JSON.stringify(ack)}`);
}

const rich = (tag) => ({ tag, n: 42, f: 1.5, ok: true, none: null, list: [1, 'two', { three: 3 }], text: 'héllo ☃ 日本 "q"' });

describe('cluster interop: Node socket.io 4.8 + @socket.io/redis-adapter 8 and @socket.io/redis-emitter 5 beside two shardcast nodes', { skip: redisMissing }, () => {
  let redis;
  let nodes;
  let nodeServer;
  let rc;
  let emitterClient;
  let emitter;
  const room = uid('interop');
  const room2 = uid('interop2');
  const users = { u1: uid('iu1'), u2: uid('iu2'), u3: uid('iu3'), u4: uid('iu4') };
  // shardcast: s1 (A, in room and room2), s2 and s3 (B, in room), sOut (A, no room), anon (B).
  // Node socket.io: n1 (room and room2), n2 (room), nOut (no room).
  let s1; let s2; let s3; let sOut; let anon; let n1; let n2; let nOut;
  let shard; let nodeSide; let all; let inRoom;

  before(async () => {
    redis = await startRedis();
    nodes = await startCluster(redis, 2);
    nodeServer = await startNodeSocketIo(redis);
    rc = redis.client();
    emitterClient = redis.client();
    emitter = new Emitter(emitterClient);
    const [A, B] = nodes;
    s1 = await userOn(A, users.u1);
    s2 = await userOn(B, users.u2);
    s3 = await userOn(B, users.u3);
    sOut = await userOn(A, users.u4);
    anon = await anonOn(B);
    for (const s of [s1, s2, s3]) await join(s, room);
    await join(s1, room2);
    n1 = await nodeClient(nodeServer, 'n1');
    n2 = await nodeClient(nodeServer, 'n2');
    nOut = await nodeClient(nodeServer, 'nOut');
    await nodeJoin(n1, room);
    await nodeJoin(n2, room);
    await nodeJoin(n1, room2);
    await waitRoomSubscribers(rc, room, 2); // the two shardcast nodes; the Node adapter uses PSUBSCRIBE
    await waitRoomSubscribers(rc, room2, 1);
    shard = [s1, s2, s3, sOut, anon];
    nodeSide = [n1, n2, nOut];
    all = [...shard, ...nodeSide];
    inRoom = [s1, s2, s3, n1, n2];
  });
  after(async () => {
    for (const s of all || []) s.disconnect();
    rc?.disconnect();
    emitterClient?.disconnect();
    await nodeServer?.stop();
    await stopNodes(nodes);
    await redis?.stop();
  });

  it('io.to(room).emit on the Node server reaches the shardcast members on both nodes exactly once; io.to([room, room2]) once per socket; io.emit everyone', async () => {
    await nodeCall(nOut, 'room-emit', { rooms: room, event: 'node-room', data: rich('node-room') });
    await nodeCall(nOut, 'room-emit', { rooms: [room, room2], event: 'node-two-rooms', data: 'two' });
    await nodeCall(nOut, 'room-emit', { rooms: room2, event: 'node-room2', data: 2 });
    await nodeCall(nOut, 'all-emit', { event: 'node-all', data: { all: true } });
    await nodeCall(nOut, 'room-emit', { rooms: room, event: 'node-args', args: [1, 'two', { three: 3 }, null] });
    await expectDeliveries(all, [
      { event: 'node-room', expected: inRoom, data: rich('node-room') },
      { event: 'node-two-rooms', expected: inRoom, data: 'two' },
      { event: 'node-room2', expected: [s1, n1], data: 2 },
      { event: 'node-all', expected: all, data: { all: true } },
      { event: 'node-args', expected: inRoom, data: 1 },
    ]);
    for (const s of inRoom) {
      const [rec] = s.inbox.events.filter((e) => e.event === 'node-args');
      assert.deepEqual(rec.args, [1, 'two', { three: 3 }, null], `every argument of io.to(room).emit(event, ...args) on ${s.userId}@${s.nodeName}`);
    }
  });

  it('shardcast HTTP room broadcasts (with exclude) and broadcasts to all reach the Node server\'s clients exactly once', async () => {
    const [A, B] = nodes;
    const r1 = await postJson(A, `/api/rooms/${enc(room)}/broadcast`, { event: 'sc-room', data: rich('sc-room') });
    assert.equal(r1.delivered, 3, `delivered counts the shardcast members (s1, s2, s3): ${JSON.stringify(r1)}`);
    const r2 = await postJson(B, `/api/rooms/${enc(room)}/broadcast`, { event: 'sc-room-ex', data: 'ex', exclude: [users.u2] });
    assert.equal(r2.delivered, 2, JSON.stringify(r2));
    const r3 = await postJson(B, '/api/broadcast', { event: 'sc-all', data: [1, 2, 3] });
    assert.equal(r3.delivered, shard.length, JSON.stringify(r3));
    await expectDeliveries(all, [
      { event: 'sc-room', expected: inRoom, data: rich('sc-room') },
      { event: 'sc-room-ex', expected: [s1, s3, n1, n2], data: 'ex' },
      { event: 'sc-all', expected: all, data: [1, 2, 3] },
    ]);
  });

  it('relays: a shardcast custom-event reaches the Node members; a Node socket.to(room) relay reaches the shardcast members; senders excluded', async () => {
    assertSuccess(await emitWithAck(s2, 'custom-event', { event: 'sc-relay', data: rich('sc-relay'), roomName: room }), 'custom-event');
    await nodeCall(n1, 'relay', { room, event: 'node-relay', data: rich('node-relay') });
    await expectDeliveries(all, [
      { event: 'sc-relay', expected: [s1, s3, n1, n2], data: rich('sc-relay') },
      { event: 'node-relay', expected: [n2, s1, s2, s3], data: rich('node-relay') },
    ]);
  });

  it('a binary broadcast from socket.io (msgpack bin) is dropped by shardcast and counted; the Node clients get it; what follows still flows', async () => {
    const [A, B] = nodes;
    const UNDECODABLE = 'shardcast_cluster_messages_undecodable_total';
    const before = await Promise.all([metric(A, UNDECODABLE), metric(B, UNDECODABLE)]);
    emitter.to(room).emit('em-bin', Buffer.from([1, 2, 3]));
    emitter.to(room).emit('em-after-bin', 'text');
    await expectDeliveries(all, [
      { event: 'em-bin', expected: [n1, n2] },
      { event: 'em-after-bin', expected: inRoom, data: 'text' },
    ]);
    for (const s of [n1, n2]) assert.deepEqual([...received(s, 'em-bin')[0]], [1, 2, 3], 'the Node clients get the binary argument');
    const after = await Promise.all([metric(A, UNDECODABLE), metric(B, UNDECODABLE)]);
    assert.deepEqual(after.map((v, i) => v - before[i]), [1, 1], `${UNDECODABLE} on the two nodes (both have members): ${before} -> ${after}`);
  });

  it('@socket.io/redis-emitter: to(room), to([rooms]), except(room) and emit to all reach shardcast and Node clients exactly once, in order', async () => {
    emitter.to(room).emit('em-room', rich('em-room'));
    emitter.to([room, room2]).emit('em-two-rooms', 'two');
    emitter.to(room).except(room2).emit('em-except', 'ex');
    emitter.emit('em-all', { all: 1 });
    const N = 50;
    for (let i = 0; i < N; i++) emitter.to(room).emit('em-seq', i);
    await expectDeliveries(all, [
      { event: 'em-room', expected: inRoom, data: rich('em-room') },
      { event: 'em-two-rooms', expected: inRoom, data: 'two' },
      { event: 'em-except', expected: [s2, s3, n2], data: 'ex' },
      { event: 'em-all', expected: all, data: { all: 1 } },
    ]);
    await waitUntil(() => inRoom.every((s) => received(s, 'em-seq').length >= N), 5000,
      () => inRoom.map((s) => `${s.userId}: ${received(s, 'em-seq').length}`).join(', '));
    await sleep(200);
    for (const s of inRoom) assert.deepEqual(received(s, 'em-seq'), Array.from({ length: N }, (_, i) => i), `emitter sequence on ${s.userId}@${s.nodeName}`);
    for (const s of [sOut, anon, nOut]) assert.equal(received(s, 'em-seq').length, 0);
  });
});
