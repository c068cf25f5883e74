// Cluster mode (issue 13; the contract in the README's "Cluster mode"):
// three shardcast nodes (the release binary, SHARDS=2 each) on a real
// redis-server started on a free port with no persistence, socket.io-client
// connections spread over the nodes. Every path is checked with exact counts:
// exactly once, no duplicates, nothing lost, in per-sender order; the HTTP
// answers' `delivered` and the queries answer for the whole cluster.
// Then failures: a node killed with SIGKILL under traffic (its users go
// offline on the others within CLUSTER_NODE_TTL + slack), and Redis killed
// and started again on the same port in the middle of traffic (local delivery
// goes on, cross-node publishes are counted as failed, /health says
// "degraded", and delivery across nodes comes back without restarting a node).
//
// Needs Debian's redis-server (.ci/run installs it); skipped with a message
// without it, except under CI=true.

import { describe, before, after } from 'node:test';
import {
  assert, it, emitWithAck, waitForEvent, received, assertSuccess, assertFailure, assertTimestamp,
  sleep, waitUntil, uid, broadcastBarrier,
} from './helpers.mjs';
import {
  redisMissing, startRedis, startReplyDelayProxy, startCluster, stopNodes, waitClusterSize, http, getJson, postJson, health, stats,
  userInfo, roomInfo, metric, numsub, roomChannel, waitRoomSubscribers, join, userOn, anonOn, label,
  expectExactlyOnce, expectDeliveries, settleConnections,
} from './cluster-helpers.mjs';

const enc = encodeURIComponent;
const sorted = (xs) => [...xs].sort();
const pick = (o, keys) => (o && typeof o === 'object' ? Object.fromEntries(keys.map((k) => [k, o[k]])) : o);
const CLUSTER_KEYS = ['nodes', 'answered', 'partial'];

/** custom-event relay with a success ack. */
async function relay(socket, roomName, event, data) {
  const ack = await emitWithAck(socket, 'custom-event', { event, data, roomName });
  assertSuccess(ack, `custom-event ${event} from ${label(socket)}`);
  return ack;
}

/**
 * Traffic: `sender` relays `event` {seq} to `room` every `intervalMs` until
 * stop(), which resolves { sent, acks } (each ack { n, ack } or { n, error }).
 */
function relayLoop(sender, room, event, intervalMs = 10) {
  let seq = 0;
  let stopped = false;
  const acks = [];
  const loop = (async () => {
    while (!stopped && sender.connected) {
      const n = seq++;
      acks.push(emitWithAck(sender, 'custom-event', { event, data: { seq: n }, roomName: room }, 8000)
        .then((ack) => ({ n, ack }), (error) => ({ n, error: error.message })));
      await sleep(intervalMs);
    }
  })();
  return {
    get sent() { return seq; },
    stop: async () => { stopped = true; await loop; return { sent: seq, acks: await Promise.all(acks) }; },
  };
}

const seqs = (socket, event) => received(socket, event).map((d) => d && d.seq);
const range = (a, b) => Array.from({ length: b - a }, (_, i) => a + i);

/** Assert `xs` is strictly increasing (no duplicate, no reordering). */
function assertIncreasing(xs, what) {
  for (let i = 1; i < xs.length; i++) {
    assert.ok(xs[i] > xs[i - 1], `${what}: out of order or duplicated at index ${i}: ... ${xs.slice(Math.max(0, i - 5), i + 5).join(',')} ...`);
  }
}

// ===========================================================================
// Three nodes: every delivery path and query, exact counts
// ===========================================================================

describe('cluster: three nodes on one Redis', { skip: redisMissing }, () => {
  let redis;
  let nodes;
  let rc; // a plain Redis client for PUBSUB look-ups

  before(async () => {
    redis = await startRedis();
    nodes = await startCluster(redis, 3, { CLUSTER_REQUEST_TIMEOUT: '2s' });
    rc = redis.client();
  });
  after(async () => {
    rc?.disconnect();
    await stopNodes(nodes);
    await redis?.stop();
  });

  it('NODE_ID names the node: /health, /api/stats and the connections it lists', async () => {
    for (const node of nodes) {
      const h = await health(node);
      assert.equal(h.status, 200);
      assert.equal(h.json.status, 'ok');
      assert.deepEqual(pick(h.json.cluster, ['node', 'redis', 'delivery', 'nodes']),
        { node: node.requestedNodeId, redis: 'up', delivery: 'ok', nodes: 3 }, `/health of ${node.name} started with NODE_ID=${node.requestedNodeId}`);
      assert.equal((await stats(node)).node.id, node.requestedNodeId, `GET /api/stats node.id of ${node.name}`);
    }
  });

  it('join-room memberCount is cluster-wide; user-joined, custom-event relays and user-left reach the members on every node exactly once', async () => {
    const [A, B, C] = nodes;
    const room = uid('room');
    const order = [A, B, C, A, B, C];
    const members = [];
    for (let i = 0; i < order.length; i++) {
      const s = await userOn(order[i], uid(`m${i}`));
      const ack = await join(s, room);
      assert.equal(ack.memberCount, i + 1, `join #${i + 1} on ${order[i].name}: memberCount counts the members on every node`);
      const joined = await waitForEvent(s, 'room-joined', 5000, (d) => d.roomName === room);
      assert.equal(joined.memberCount, i + 1, 'room-joined memberCount');
      // The earlier members, on every node, hear of the join (the next join waits for it).
      await Promise.all(members.map((m) => waitForEvent(m, 'user-joined', 5000, (d) => d.roomName === room && d.socketId === s.id)));
      members.push(s);
      await waitRoomSubscribers(rc, room, Math.min(i + 1, 3));
    }

    // One relay from each member (two per node).
    for (let i = 0; i < members.length; i++) await relay(members[i], room, `chat-${i}`, { from: i, text: `hello from ${i} ☃` });
    await expectDeliveries(members, members.map((s, i) => ({
      event: `chat-${i}`, expected: members.filter((m) => m !== s), data: { from: i, text: `hello from ${i} ☃` },
    })));

    // user-joined: each member heard exactly the later joiners, once each, with the right payload.
    for (let j = 0; j < members.length; j++) {
      const got = received(members[j], 'user-joined', (d) => d.roomName === room);
      assert.deepEqual(got.map((d) => d.socketId), members.slice(j + 1).map((m) => m.id), `user-joined heard by member ${j} (${label(members[j])})`);
      for (const d of got) {
        assert.equal(d.userId, members.find((m) => m.id === d.socketId).userId);
        assertTimestamp(d.timestamp);
      }
    }

    // A leave on B and a disconnect on C: every remaining member hears each once.
    const [leaver, gone] = [members[4], members[5]];
    const goneId = gone.id; // socket.io-client clears socket.id on disconnect
    const leaveAck = await emitWithAck(leaver, 'leave-room', { roomName: room });
    assertSuccess(leaveAck, 'leave-room');
    gone.disconnect();
    const rest = members.slice(0, 4);
    await Promise.all(rest.filter((m) => m !== leaver).map((m) => Promise.all([
      waitForEvent(m, 'user-left', 5000, (d) => d.roomName === room && d.socketId === leaver.id),
      waitForEvent(m, 'user-left', 5000, (d) => d.roomName === room && d.socketId === goneId),
    ])));
    await sleep(300); // duplicates
    for (const m of rest.filter((x) => x !== leaver)) {
      const left = received(m, 'user-left', (d) => d.roomName === room);
      assert.deepEqual(sorted(left.map((d) => d.socketId)), sorted([leaver.id, goneId]), `user-left heard by ${label(m)}`);
      assert.deepEqual(sorted(left.map((d) => d.userId)), sorted([leaver.userId, gone.userId]));
    }
    assert.equal(received(leaver, 'user-left', (d) => d.roomName === room && d.socketId === goneId).length, 0,
      'a member that left before the disconnect hears nothing more of the room');

    // The room as every node sees it: 4 members, their users.
    const remaining = members.slice(0, 4);
    for (const node of nodes) {
      let r;
      await waitUntil(async () => { r = await roomInfo(node, room); return r && r.memberCount === 4; }, 2000,
        () => `${room} on ${node.name}: ${JSON.stringify(r)}`);
      assert.ok(r, `GET /api/rooms on ${node.name} lists ${room}`);
      assert.equal(r.memberCount, 4, `memberCount of ${room} on ${node.name}: ${JSON.stringify(r)}`);
      assert.deepEqual(sorted(r.users), sorted(remaining.map((m) => m.userId)), `users of ${room} on ${node.name}`);
    }
    // A fifth joiner, on C (which has no member left): memberCount 5.
    const late = await userOn(C, uid('late'));
    assert.equal((await join(late, room)).memberCount, 5, 'memberCount after the members left on B and C');
  });

  it('per-sender order across nodes: two senders on A and B, 200 numbered relays each, every member on every node gets 0..199 of each in order', async () => {
    const [A, B, C] = nodes;
    const room = uid('order');
    const N = 200;
    const sA = await userOn(A, uid('sendA'));
    const sB = await userOn(B, uid('sendB'));
    const rA = await userOn(A, uid('rcvA'));
    const rB = await userOn(B, uid('rcvB'));
    const rC = await userOn(C, uid('rcvC'));
    for (const s of [sA, sB, rA, rB, rC]) await join(s, room);
    await waitRoomSubscribers(rc, room, 3);

    const send = (s, tag) => Promise.all(range(0, N).map((n) => emitWithAck(s, 'custom-event', { event: 'seq', data: { tag, seq: n }, roomName: room }, 15000)));
    const acks = await Promise.all([send(sA, 'A'), send(sB, 'B')]);
    for (const a of acks.flat()) assertSuccess(a, 'relay');

    const want = range(0, N);
    const of = (s, tag) => received(s, 'seq', (d) => d.tag === tag).map((d) => d.seq);
    const views = [[rA, ['A', 'B']], [rB, ['A', 'B']], [rC, ['A', 'B']], [sA, ['B']], [sB, ['A']]];
    await waitUntil(() => views.every(([s, tags]) => tags.every((t) => of(s, t).length >= N)), 10000,
      () => views.map(([s, tags]) => `${label(s)}: ${tags.map((t) => `${t}=${of(s, t).length}`).join(' ')}`).join('; '));
    // Every relay was acked once Redis had it; a broadcast published after
    // them comes back from Redis after them on every node.
    await broadcastBarrier(A, views.map(([s]) => s));
    for (const [s, tags] of views) for (const t of tags) assert.deepEqual(of(s, t), want, `relays from sender ${t} as seen by ${label(s)}`);
    assert.equal(of(sA, 'A').length, 0, 'a sender never gets its own relays');
    assert.equal(of(sB, 'B').length, 0, 'a sender never gets its own relays');
  });

  it('a publish sent after a join ack reaches the new member on another node (10 fresh rooms: HTTP publish and relay)', async () => {
    const [A, B, C] = nodes;
    const sender = await userOn(A, uid('early'));
    for (let i = 0; i < 10; i++) {
      const room = uid(`fresh${i}`);
      await join(sender, room);
      const joiner = await userOn(i % 2 ? B : C, uid('joiner'));
      await join(joiner, room);
      // No wait here: the join's ack is all a client has.
      const res = await postJson(A, `/api/rooms/${enc(room)}/broadcast`, { event: 'right-after-join', data: i });
      await relay(sender, room, 'relay-after-join', i);
      assert.equal(res.delivered, 2, `room ${i}: delivered ${JSON.stringify(res)}`);
      assert.notEqual(res.partial, true, `room ${i}: partial answer ${JSON.stringify(res)}`);
      await waitForEvent(joiner, 'right-after-join', 5000, (d) => d === i);
      await waitForEvent(joiner, 'relay-after-join', 5000, (d) => d === i);
    }
  });

  it('HTTP room broadcast published on each node, with exclude (a user on two nodes), reaches the members on every node exactly once; delivered is cluster-wide', async () => {
    const [A, B, C] = nodes;
    const room = uid('bc-room');
    const xs = [await userOn(A, uid('x0')), await userOn(B, uid('x1')), await userOn(C, uid('x2')), await userOn(A, uid('x3'))];
    const dual = uid('dual');
    const ds = [await userOn(B, dual), await userOn(C, dual)];
    const excluded = uid('excl');
    const es = [await userOn(A, excluded), await userOn(B, excluded)];
    const outsider = await userOn(C, uid('outsider'));
    const anon = await anonOn(A);
    for (const s of [...xs, ...ds, ...es]) await join(s, room);
    await waitRoomSubscribers(rc, room, 3);
    const all = [...xs, ...ds, ...es, outsider, anon];

    const checks = [];
    for (let i = 0; i < 3; i++) {
      const node = nodes[i];
      const cases = [
        { suffix: 'none', exclude: undefined, expected: [...xs, ...ds, ...es] },
        { suffix: 'one', exclude: [excluded], expected: [...xs, ...ds] },
        { suffix: 'two', exclude: [excluded, dual, uid('nobody')], expected: xs },
      ];
      for (const c of cases) {
        const event = `rb-${i}-${c.suffix}`;
        const data = { node: i, c: c.suffix, text: 'héllo' };
        const res = await postJson(node, `/api/rooms/${enc(room)}/broadcast`, { event, data, ...(c.exclude ? { exclude: c.exclude } : {}) });
        assert.equal(res.success, true);
        assert.equal(res.roomName, room);
        assert.notEqual(res.partial, true, `${event}: partial answer ${JSON.stringify(res)}`);
        assert.equal(res.delivered, c.expected.length, `${event} published on ${node.name}: delivered ${JSON.stringify(res)}, members expected ${c.expected.length}`);
        checks.push({ event, expected: c.expected, data });
      }
    }
    await expectDeliveries(all, checks);
  });

  it('HTTP broadcast to all (with exclude) reaches every connection on every node exactly once; delivered is cluster-wide', async () => {
    const [A, B, C] = nodes;
    const excluded = uid('all-ex');
    const sockets = [
      await userOn(A, uid('all-a1')), await userOn(A, uid('all-a2')), await userOn(A, excluded),
      await userOn(B, uid('all-b1')), await anonOn(B),
      await userOn(C, uid('all-c1')), await userOn(C, excluded), await anonOn(C),
    ];
    await settleConnections(nodes, [3, 2, 3]);
    const kept = sockets.filter((s) => s.userId !== excluded);

    const r1 = await postJson(B, '/api/broadcast', { event: 'to-all-ex', data: { n: 1 }, exclude: [excluded] });
    const r2 = await postJson(C, '/api/broadcast', { event: 'to-all', data: [1, 'two'] });
    const r3 = await postJson(A, '/api/broadcast', { event: 'to-all-nodata' });
    const [g1, g2, g3] = await expectDeliveries(sockets, [
      { event: 'to-all-ex', expected: kept, data: { n: 1 } },
      { event: 'to-all', expected: sockets, data: [1, 'two'] },
      { event: 'to-all-nodata', expected: sockets, data: null },
    ]);
    assert.deepEqual([r1.delivered, r2.delivered, r3.delivered], [g1, g2, g3], `delivered vs observed: ${JSON.stringify([r1, r2, r3])}`);
    assert.deepEqual([g1, g2, g3], [6, 8, 8]);
    for (const r of [r1, r2, r3]) assert.notEqual(r.partial, true, JSON.stringify(r));
  });

  it('sendToUser reaches a user connected to two nodes on both sockets (from any node), sendToSocket a socket on another node; delivered exact', async () => {
    const [A, B, C] = nodes;
    const u = uid('two-nodes');
    const us = [await userOn(B, u), await userOn(C, u)];
    const other = await userOn(A, uid('bystander'));
    const target = await userOn(C, uid('sock-target'));
    const anonTarget = await anonOn(B);
    const all = [...us, other, target, anonTarget];

    const fromA = await postJson(A, `/api/users/${enc(u)}/send`, { event: 'user-send-a', data: { via: 'A' } });
    const fromB = await postJson(B, `/api/users/${enc(u)}/send`, { event: 'user-send-b', data: { via: 'B' } });
    assert.equal(fromA.userId, u);
    assert.deepEqual([fromA.delivered, fromA.online], [2, true], `sendToUser on A (user on B and C): ${JSON.stringify(fromA)}`);
    assert.deepEqual([fromB.delivered, fromB.online], [2, true], `sendToUser on B (user on B and C): ${JSON.stringify(fromB)}`);
    const ghost = await postJson(C, `/api/users/${enc(uid('nowhere'))}/send`, { event: 'user-send-ghost', data: 0 });
    assert.deepEqual([ghost.delivered, ghost.online], [0, false], `sendToUser to a user on no node: ${JSON.stringify(ghost)}`);

    const s1 = await postJson(A, `/api/sockets/${enc(target.id)}/send`, { event: 'sock-send', data: 'to C' });
    assert.equal(s1.delivered, 1, `sendToSocket on A to a socket on C: ${JSON.stringify(s1)}`);
    assert.equal(s1.socketId, target.id);
    const s2 = await postJson(C, `/api/sockets/${enc(anonTarget.id)}/send`, { event: 'sock-send-anon', data: 'to B' });
    assert.equal(s2.delivered, 1, `sendToSocket on C to an unauthenticated socket on B: ${JSON.stringify(s2)}`);
    const unknown = await http(A, 'POST', `/api/sockets/${'A'.repeat(22)}/send`, { event: 'sock-send-none', data: 0 });
    assert.equal(unknown.status, 200, unknown.text);
    assert.equal(unknown.json.delivered, 0, unknown.text);

    await expectDeliveries(all, [
      { event: 'user-send-a', expected: us, data: { via: 'A' } },
      { event: 'user-send-b', expected: us, data: { via: 'B' } },
      { event: 'user-send-ghost', expected: [] },
      { event: 'sock-send', expected: [target], data: 'to C' },
      { event: 'sock-send-anon', expected: [anonTarget], data: 'to B' },
      { event: 'sock-send-none', expected: [] },
    ]);
    for (const r of [fromA, fromB, ghost, s1, s2, unknown.json]) assert.notEqual(r.partial, true, JSON.stringify(r));
  });

  it('batch on one node: every scope reaches the other nodes; per-entry and total delivered are cluster-wide', async () => {
    const [A, B, C] = nodes;
    const room = uid('batch-room');
    const ua = uid('batch-a');
    const ub = uid('batch-b');
    const as = [await userOn(A, ua), await userOn(C, ua)];
    const bs = [await userOn(B, ub), await userOn(C, ub)];
    const anon = await anonOn(C);
    const all = [...as, ...bs, anon];
    await settleConnections(nodes, [1, 1, 3]);
    await join(as[0], room);
    await join(bs[0], room);
    await join(bs[1], room);
    await waitRoomSubscribers(rc, room, 3);

    const publishes = [
      { scope: 'all', event: 'batch-all', data: 'all', exclude: [ub] },
      { scope: 'room', roomName: room, event: 'batch-room', data: { r: 1 } },
      { scope: 'room', roomName: room, event: 'batch-room-ex', data: 2, exclude: [ua] },
      { scope: 'user', userId: ua, event: 'batch-user', data: [ua] },
      { scope: 'user', userId: uid('batch-ghost'), event: 'batch-ghost', data: 0 },
      { scope: 'socket', socketId: anon.id, event: 'batch-socket', data: 'anon' },
    ];
    const res = await postJson(B, '/api/batch', { publishes });
    assert.equal(res.success, true);
    assert.equal(res.results.length, publishes.length);
    const observed = await expectDeliveries(all, [
      { event: 'batch-all', expected: [...as, anon], data: 'all' },
      { event: 'batch-room', expected: [as[0], bs[0], bs[1]], data: { r: 1 } },
      { event: 'batch-room-ex', expected: [bs[0], bs[1]], data: 2 },
      { event: 'batch-user', expected: as, data: [ua] },
      { event: 'batch-ghost', expected: [] },
      { event: 'batch-socket', expected: [anon], data: 'anon' },
    ]);
    assert.deepEqual(observed, [3, 3, 2, 2, 0, 1]);
    assert.deepEqual(res.results.map((r) => r.delivered), observed, `per-entry delivered: ${JSON.stringify(res.results)}`);
    assert.equal(res.delivered, 11, `total delivered: ${JSON.stringify(res)}`);
    assert.equal(res.results[3].online, true);
    assert.equal(res.results[4].online, false);
    assert.notEqual(res.partial, true, JSON.stringify(res));
  });

  it('private-message to a user on other nodes (two sockets) arrives once on each; to a user on no node: USER_OFFLINE', async () => {
    const [A, B, C] = nodes;
    const from = await userOn(A, uid('pm-from'));
    const t = uid('pm-to');
    const ts = [await userOn(B, t), await userOn(C, t)];
    const t2 = uid('pm-to2');
    const t2s = [await userOn(C, t2)];
    const bystander = await userOn(B, uid('pm-bystander'));
    const all = [from, ...ts, ...t2s, bystander];

    const ack = await emitWithAck(from, 'private-message', { targetUserId: t, message: { text: 'hi ☃', n: 1 }, messageType: 'text' });
    assertSuccess(ack, 'private-message to a user on B and C');
    const ack2 = await emitWithAck(from, 'private-message', { targetUserId: t2, message: 'only on C', messageType: 'notification' });
    assertSuccess(ack2, 'private-message to a user on C only');
    await expectDeliveries(all, [
      { event: 'private-message', expected: [...ts, ...t2s] },
    ]);
    for (const s of ts) {
      const [m] = received(s, 'private-message');
      assert.deepEqual(
        { messageId: m.messageId, fromUserId: m.fromUserId, targetUserId: m.targetUserId, message: m.message, messageType: m.messageType },
        { messageId: ack.messageId, fromUserId: from.userId, targetUserId: t, message: { text: 'hi ☃', n: 1 }, messageType: 'text' },
      );
      assertTimestamp(m.timestamp);
    }
    const [m2] = received(t2s[0], 'private-message');
    assert.deepEqual([m2.messageId, m2.message, m2.messageType], [ack2.messageId, 'only on C', 'notification']);
    const sent = received(from, 'message-sent');
    assert.deepEqual(sent.map((d) => [d.messageId, d.targetUserId]), [[ack.messageId, t], [ack2.messageId, t2]], 'message-sent to the sender, once per message');

    const nowhere = uid('pm-nowhere');
    assertFailure(await emitWithAck(from, 'private-message', { targetUserId: nowhere, message: 'anyone?' }), 'USER_OFFLINE');
    // A user that was on another node and left is offline again.
    t2s[0].disconnect();
    await waitUntil(async () => !(await userInfo(A, t2)).online, 5000, () => `${t2} still online`);
    assertFailure(await emitWithAck(from, 'private-message', { targetUserId: t2, message: 'gone?' }), 'USER_OFFLINE');
  });

  it('user-online / user-offline are cluster-wide: a user on two nodes goes offline only when its last socket closes; GET /api/users answers for the cluster', async () => {
    const [A, B, C] = nodes;
    const obs = [await userOn(A, uid('obsA')), await userOn(B, uid('obsB')), await userOn(C, uid('obsC'))];
    const p = uid('presence');
    const isP = (d) => d.userId === p;

    const p1 = await userOn(B, p);
    await Promise.all(obs.map((o) => waitForEvent(o, 'user-online', 5000, isP)));
    const p2 = await userOn(C, p);
    let info2;
    await waitUntil(async () => { info2 = await userInfo(A, p); return info2.connections.length === 2; }, 2000,
      () => `GET /api/users/${p} on A after sockets on B and C: ${JSON.stringify(info2)}`);
    assert.equal(info2.online, true);
    assert.deepEqual(sorted(info2.connections.map((c) => c.socketId)), sorted([p1.id, p2.id]), `GET /api/users on A: ${JSON.stringify(info2)}`);
    assert.deepEqual(sorted(info2.connections.map((c) => c.node)), sorted([B.nodeId, C.nodeId]), 'each connection names its node');

    p1.disconnect();
    await waitUntil(async () => (await userInfo(A, p)).connections.length === 1, 5000, () => `${p}: the socket on B still listed`);
    const info1 = await userInfo(C, p);
    assert.equal(info1.online, true, `a user with a socket left on C is online: ${JSON.stringify(info1)}`);
    assert.deepEqual(info1.connections.map((c) => [c.socketId, c.node]), [[p2.id, C.nodeId]]);

    p2.disconnect();
    await Promise.all(obs.map((o) => waitForEvent(o, 'user-offline', 5000, isP)));
    await sleep(300);
    for (const o of obs) {
      assert.equal(received(o, 'user-online', isP).length, 1, `${label(o)}: user-online for ${p} exactly once (second socket on another node is not a new user)`);
      assert.equal(received(o, 'user-offline', isP).length, 1, `${label(o)}: user-offline for ${p} exactly once, after the last socket`);
      const seq = o.inbox.events.filter((r) => ['user-online', 'user-offline'].includes(r.event) && isP(r.data)).map((r) => r.event);
      assert.deepEqual(seq, ['user-online', 'user-offline']);
    }
    for (const node of nodes) {
      const info = await userInfo(node, p);
      assert.deepEqual([info.online, info.connections.length], [false, 0], `GET /api/users/${p} on ${node.name}: ${JSON.stringify(info)}`);
    }
  });

  it('/api/stats, /api/rooms and /api/connections answer for the whole cluster, with this node\'s figures beside', async () => {
    const [A, B, C] = nodes;
    const u1 = uid('st1');
    const u2 = uid('st2');
    const u3 = uid('st3');
    const u4 = uid('st4');
    const a1 = await userOn(A, u1);
    const a2 = await userOn(A, u2);
    const b1 = await userOn(B, u1);
    const b2 = await userOn(B, u3);
    const bAnon = await anonOn(B);
    const c1 = await userOn(C, u4);
    const r1 = uid('st-room1');
    const r2 = uid('st-room2');
    for (const s of [a1, b1, c1]) await join(s, r1);
    await join(b2, r2);
    await settleConnections(nodes, [2, 3, 1]);

    let last;
    await waitUntil(async () => {
      last = await Promise.all(nodes.map((n) => stats(n)));
      return last.every((s) => s.rooms === 2 && s.onlineUsers === 4);
    }, 5000, () => `stats: ${JSON.stringify(last)}`);
    const perNode = [2, 3, 1];
    last.forEach((s, i) => {
      const where = `GET /api/stats on ${nodes[i].name}: ${JSON.stringify(s)}`;
      assert.equal(s.connections, 6, where);
      assert.equal(s.node.id, nodes[i].nodeId, where);
      assert.equal(s.node.connections, perNode[i], where);
      assert.ok(Array.isArray(s.node.connectionsPerShard) && s.node.connectionsPerShard.reduce((a, b) => a + b, 0) === perNode[i], where);
      assert.deepEqual(s.connectionsPerShard, s.node.connectionsPerShard, `${where}: top-level connectionsPerShard stays this node's`);
      assert.deepEqual(pick(s.cluster, CLUSTER_KEYS), { nodes: 3, answered: 3, partial: false }, where);
    });
    assert.deepEqual(last.map((s) => s.node.rooms), [1, 2, 1], 'rooms with local members, per node');
    assert.deepEqual(last.map((s) => s.node.onlineUsers), [2, 2, 1], 'users with local sockets, per node');

    for (const node of nodes) {
      const rooms = await getJson(node, '/api/rooms');
      const mine = rooms.rooms.filter((r) => r.name === r1 || r.name === r2).map((r) => ({ name: r.name, memberCount: r.memberCount, users: sorted(r.users) }));
      assert.deepEqual(sorted(mine.map((r) => JSON.stringify(r))), sorted([
        { name: r1, memberCount: 3, users: sorted([u1, u4]) },
        { name: r2, memberCount: 1, users: [u3] },
      ].map((r) => JSON.stringify(r))), `GET /api/rooms on ${node.name}`);
      assert.equal(rooms.count, rooms.rooms.length);
      assert.notEqual(rooms.partial, true);

      const conns = await getJson(node, '/api/connections');
      assert.equal(conns.count, 6, `GET /api/connections on ${node.name}: ${JSON.stringify(conns).slice(0, 500)}`);
      const where = Object.fromEntries(conns.connections.map((c) => [c.socketId, c.node]));
      for (const s of [a1, a2, b1, b2, bAnon, c1]) assert.equal(where[s.id], s.node.nodeId, `connection ${label(s)} listed with its node on ${node.name}`);
    }
  });

  it('concurrent joins on three nodes (12 fresh rooms): each member hears exactly the joins counted after its own (ack memberCount + user-joined = members)', async () => {
    const [A, B, C] = nodes;
    const problems = [];
    for (let r = 0; r < 12; r++) {
      const room = uid(`cj${r}`);
      const ss = await Promise.all([A, B, C].map((n, i) => userOn(n, uid(`cj${r}-${i}`))));
      // The three joins leave this process back to back, first from a different node each round.
      const order = [0, 1, 2].map((k) => (k + r) % 3);
      const acksInOrder = await Promise.all(order.map((i) => emitWithAck(ss[i], 'join-room', { roomName: room })));
      const acks = [0, 1, 2].map((i) => acksInOrder[order.indexOf(i)]);
      for (const a of acks) assertSuccess(a, 'concurrent join-room');
      assert.deepEqual(sorted(acks.map((a) => a.memberCount)), [1, 2, 3], `room ${r}: the three concurrent joins are counted 1, 2, 3: ${JSON.stringify(acks)}`);
      // Every join is announced to every member that was in the room before it
      // (a miss is recorded below with the rest, after at most 3 s).
      await waitUntil(() => ss.every((s, i) => received(s, 'user-joined', (d) => d.roomName === room).length >= 3 - acks[i].memberCount), 3000)
        .catch(() => {});
      // Stray announcements: every join was acked once Redis had what it
      // caused; a broadcast published after them comes back after them.
      await broadcastBarrier(A, ss);
      ss.forEach((s, i) => {
        const heard = received(s, 'user-joined', (d) => d.roomName === room).map((d) => d.userId);
        const later = ss.filter((_, j) => acks[j].memberCount > acks[i].memberCount).map((x) => x.userId);
        if (JSON.stringify(sorted(heard)) !== JSON.stringify(sorted(later))) {
          problems.push(`room ${r}: member ${s.userId} on ${s.nodeName} joined as #${acks[i].memberCount} and heard user-joined for [${heard}], expected [${later}]`);
        }
      });
      for (const s of ss) s.disconnect();
    }
    assert.deepEqual(problems, [], 'each member hears user-joined for exactly the joins counted after its own: not one it already counted (a client keeping count would count it twice), none missed');
  });

  it('a user connecting on three nodes at once gets one user-online, and one user-offline when all three go (8 rounds)', async () => {
    const [A, B, C] = nodes;
    const obs = [await userOn(A, uid('race-obsA')), await userOn(B, uid('race-obsB')), await userOn(C, uid('race-obsC'))];
    const users = [];
    for (let r = 0; r < 8; r++) {
      const u = uid(`race${r}`);
      users.push(u);
      const ss = await Promise.all([A, B, C].map((n) => userOn(n, u)));
      await Promise.all(obs.map((o) => waitForEvent(o, 'user-online', 5000, (d) => d.userId === u)));
      for (const s of ss) s.disconnect();
      await Promise.all(obs.map((o) => waitForEvent(o, 'user-offline', 5000, (d) => d.userId === u)));
    }
    await sleep(300);
    for (const o of obs) {
      for (const u of users) {
        const seq = o.inbox.events.filter((e) => ['user-online', 'user-offline'].includes(e.event) && e.data.userId === u).map((e) => e.event);
        assert.deepEqual(seq, ['user-online', 'user-offline'], `${label(o)}: presence of ${u}, on three nodes at once`);
      }
    }
    for (const u of users) assert.equal((await userInfo(B, u)).online, false);
  });

  it('room and user names with #, :, *, ?, [ ], spaces and non-ASCII cross the nodes like any other', async () => {
    const [A, B, C] = nodes;
    const room = `a#b:c*d?[e] ☃ ${uid('odd')}#`;
    const u = `u:*?[x]# ${uid('odd')}`;
    const us = [await userOn(B, u), await userOn(C, u)];
    const m = await userOn(A, uid('odd-m'));
    for (const s of [m, ...us]) await join(s, room);
    await waitRoomSubscribers(rc, room, 3);
    const prefixTwin = await userOn(C, uid('odd-twin')); // a member of a room whose name is a prefix of the other
    await join(prefixTwin, room.slice(0, 5));
    const all = [m, ...us, prefixTwin];
    assertSuccess(await emitWithAck(m, 'custom-event', { event: 'odd-relay', data: room, roomName: room }));
    const rb = await postJson(C, `/api/rooms/${enc(room)}/broadcast`, { event: 'odd-room', data: 1, exclude: [m.userId] });
    const us1 = await postJson(A, `/api/users/${enc(u)}/send`, { event: 'odd-user', data: u });
    assert.deepEqual([rb.delivered, us1.delivered, us1.online], [2, 2, true], JSON.stringify([rb, us1]));
    await expectDeliveries(all, [
      { event: 'odd-relay', expected: us, data: room },
      { event: 'odd-room', expected: us, data: 1 },
      { event: 'odd-user', expected: us, data: u },
    ]);
    const info = await userInfo(A, u);
    assert.equal(info.connections.length, 2, JSON.stringify(info));
    assert.equal((await roomInfo(A, room)).memberCount, 3);
  });

  it('a 300 KB payload crosses the nodes intact (relay, room broadcast, user send)', async () => {
    const [A, B, C] = nodes;
    const room = uid('big');
    const big = { text: 'é☃'.repeat(50000), list: Array.from({ length: 5000 }, (_, i) => i) };
    const a = await userOn(A, uid('big-a'));
    const b = await userOn(B, uid('big-b'));
    const c = await userOn(C, uid('big-c'));
    for (const s of [a, b, c]) await join(s, room);
    await waitRoomSubscribers(rc, room, 3);
    assertSuccess(await emitWithAck(a, 'custom-event', { event: 'big-relay', data: big, roomName: room }));
    assert.equal((await postJson(B, `/api/rooms/${enc(room)}/broadcast`, { event: 'big-room', data: big })).delivered, 3);
    assert.equal((await postJson(C, `/api/users/${enc(a.userId)}/send`, { event: 'big-user', data: big })).delivered, 1);
    await expectDeliveries([a, b, c], [
      { event: 'big-relay', expected: [b, c], data: big },
      { event: 'big-room', expected: [a, b, c], data: big },
      { event: 'big-user', expected: [a], data: big },
    ], { graceMs: 100 });
  });

  it('interest: a node with no member in a room receives no Redis message for it; the room channel is dropped on its last local leave', async () => {
    const [A, B, C] = nodes;
    const room = uid('interest');
    const a1 = await userOn(A, uid('int-a1'));
    const a2 = await userOn(A, uid('int-a2'));
    const b1 = await userOn(B, uid('int-b1'));
    await userOn(C, uid('int-c-elsewhere')); // C has connections, none in the room
    for (const s of [a1, a2, b1]) await join(s, room);
    await waitRoomSubscribers(rc, room, 2);
    // Earlier tests' clients gone (their user-offline would reach C during the burst).
    await settleConnections(nodes, [2, 1, 1]);
    assert.equal(Number(await rc.pubsub('NUMPAT')), 0, 'shardcast nodes use no pattern subscription');

    const RX = 'shardcast_cluster_messages_received_total';
    const before = await Promise.all(nodes.map((n) => metric(n, RX)));
    const N = 50;
    for (let i = 0; i < N; i++) {
      const res = await postJson(A, `/api/rooms/${enc(room)}/broadcast`, { event: 'int-bc', data: i });
      assert.equal(res.delivered, 3, JSON.stringify(res));
    }
    for (let i = 0; i < 10; i++) await relay(a1, room, 'int-relay', i);
    await waitUntil(() => received(b1, 'int-bc').length === N && received(b1, 'int-relay').length === 10, 5000,
      () => `b1 got ${received(b1, 'int-bc').length}/${N} broadcasts, ${received(b1, 'int-relay').length}/10 relays`);
    assert.deepEqual(received(b1, 'int-bc'), range(0, N), 'HTTP publishes on A, each after the previous answer, reach B in order');
    const after = await Promise.all(nodes.map((n) => metric(n, RX)));
    const delta = after.map((v, i) => v - before[i]);
    process.stdout.write(`# Redis messages received during ${N + 10} publishes to a room with members on A and B: A ${delta[0]}, B ${delta[1]}, C ${delta[2]}\n`);
    assert.ok(delta[1] >= N + 10, `node B (a member) received ${delta[1]} Redis messages for ${N + 10} publishes`);
    assert.ok(delta[2] <= 2, `node C (no member) received ${delta[2]} Redis messages during ${N + 10} publishes to the room (deltas A,B,C: ${delta})`);

    // B's last member leaves: B drops the channel and gets nothing more for the room.
    assertSuccess(await emitWithAck(b1, 'leave-room', { roomName: room }));
    await waitRoomSubscribers(rc, room, 1);
    const before2 = await metric(B, RX);
    for (let i = 0; i < 20; i++) assert.equal((await postJson(C, `/api/rooms/${enc(room)}/broadcast`, { event: 'int-bc2', data: i })).delivered, 2);
    await waitUntil(() => received(a2, 'int-bc2').length === 20, 5000, () => `a2 got ${received(a2, 'int-bc2').length}/20`);
    const dB = (await metric(B, RX)) - before2;
    assert.ok(dB <= 2, `node B (no member any more) received ${dB} Redis messages during 20 publishes to the room`);
    assert.equal(received(b1, 'int-bc2').length, 0);

    // Empty room: no node holds the channel.
    for (const s of [a1, a2]) assertSuccess(await emitWithAck(s, 'leave-room', { roomName: room }));
    await waitRoomSubscribers(rc, room, 0);
    assert.equal(await numsub(rc, roomChannel(room)), 0);
  });
});

// ===========================================================================
// A join whose count comes back after its announcement
// ===========================================================================

// A node's subscriber and publisher are two connections: what a node
// publishes (a join's announcement, or its mark) can come back before
// Redis's reply to the script that published it. A proxy holds Redis's
// replies to node C's publisher, so every join on C is in that window while
// a member on A joins and relays: C's joiner must get what Redis ordered
// after its own join (it was lost when the joiner entered the room only
// with the count). Both with announcements and without (ROOM_EVENTS=off,
// where the join publishes a mark on C's own channel).
for (const roomEvents of ['on', 'off']) {
  describe(`cluster: Redis's replies to one node held 600 ms (ROOM_EVENTS=${roomEvents})`, { skip: redisMissing }, () => {
    const DELAY_MS = 600;
    let redis;
    let proxy;
    let nodes;
    let rc;

    before(async () => {
      redis = await startRedis();
      proxy = await startReplyDelayProxy(redis, DELAY_MS);
      nodes = await startCluster(redis, 2, { ROOM_EVENTS: roomEvents, CLUSTER_REQUEST_TIMEOUT: '4s' }, { redisUrls: [redis.url, proxy.url] });
      rc = redis.client();
    });
    after(async () => {
      rc?.disconnect();
      await stopNodes(nodes);
      await proxy?.stop();
      await redis?.stop();
    });

    it('a member joining on that node gets the joins and relays Redis ordered after its join, even before its own ack; none from before (4 rooms)', async () => {
      const [A, C] = nodes;
      const a = await userOn(A, uid('held-a'));
      const c = await userOn(C, uid('held-c'));
      const early = await userOn(A, uid('held-early'));
      for (let r = 0; r < 4; r++) {
        const room = uid(`held${r}`);
        await join(early, room);
        await relay(early, room, 'before-c-joined', r);
        let cAcked = false;
        const cJoin = emitWithAck(c, 'join-room', { roomName: room }, 8000).then((ack) => { cAcked = true; return ack; });
        // Redis has counted c's join; its reply to C is held by the proxy.
        await waitUntil(async () => (await rc.hget(`shardcast:room:${room}`, C.nodeId)) === '1', 3000,
          () => `room ${r}: Redis never counted the join on ${C.name}`);
        const aAck = await join(a, room);
        assert.equal(aAck.memberCount, 3, `room ${r}: a's join counts early, c and itself`);
        await relay(a, room, 'after-c-joined', r);
        assert.equal(cAcked, false, `room ${r}: the test must interleave: c's ack came before a's join and relay were through`);
        const cAck = await cJoin;
        assertSuccess(cAck, `room ${r}: c's join`);
        assert.equal(cAck.memberCount, 2, `room ${r}: c's join counts early and itself`);
        await broadcastBarrier(A, [a, c, early]);
        const joined = received(c, 'user-joined', (d) => d.roomName === room).map((d) => d.userId);
        assert.deepEqual(joined, roomEvents === 'on' ? [a.userId] : [], `room ${r}: user-joined heard by c`);
        assert.deepEqual(received(c, 'after-c-joined', (d) => d === r), [r], `room ${r}: a's relay, sent after Redis counted c's join, reaches c once`);
        assert.deepEqual(received(c, 'before-c-joined').filter((d) => d === r), [], `room ${r}: a relay from before c's join does not reach c`);
        const heardByA = received(a, 'user-joined', (d) => d.roomName === room).map((d) => d.userId);
        assert.deepEqual(heardByA, [], `room ${r}: a joined after c: it hears no user-joined for c`);
      }
    });
  });
}

// ===========================================================================
// A node killed with SIGKILL under traffic
// ===========================================================================

describe('cluster: kill -9 of a node under traffic (CLUSTER_NODE_TTL=3s)', { skip: redisMissing }, () => {
  const TTL_MS = 3000;
  const SLACK_MS = 3000; // contract: within CLUSTER_NODE_TTL + ~2 s; one more second for this busy 2-core machine
  let redis;
  let nodes;
  let rc;

  before(async () => {
    redis = await startRedis();
    nodes = await startCluster(redis, 3, { CLUSTER_NODE_TTL: '3s', CLUSTER_REQUEST_TIMEOUT: '1s' });
    rc = redis.client();
  });
  after(async () => {
    rc?.disconnect();
    await stopNodes(nodes);
    await redis?.stop();
  });

  it('its users go offline on the others (user-offline once), its members leave the counts, /api/stats says 2 nodes, the others keep delivering', async () => {
    const [A, B, C] = nodes;
    const room = uid('kill-room');
    const obsA = await userOn(A, uid('obsA'));
    const obsB = await userOn(B, uid('obsB'));
    const mA = await userOn(A, uid('mA'));
    const mB = await userOn(B, uid('mB'));
    const v1 = uid('victim-only-on-C');
    const v2 = uid('victim-also-on-A');
    const c1 = await userOn(C, v1);
    const c2 = await userOn(C, v2);
    const v2A = await userOn(A, v2);
    for (const s of [mA, mB, c1, c2]) await join(s, room);
    await waitRoomSubscribers(rc, room, 3);
    await Promise.all([obsA, obsB].map((o) => waitForEvent(o, 'user-online', 5000, (d) => d.userId === v1)));
    assert.equal((await roomInfo(A, room)).memberCount, 4);

    const loop = relayLoop(mA, room, 'tick', 10);
    await waitUntil(() => received(mB, 'tick').length >= 20, 5000, () => `mB got ${received(mB, 'tick').length} ticks`);

    const killedAt = Date.now();
    C.child.kill('SIGKILL');
    await C.exitPromise;

    // A publish right after the kill: C still counts as live (its heartbeat has not
    // expired), so the answer comes after CLUSTER_REQUEST_TIMEOUT, partial, never hangs.
    const r = await http(A, 'POST', `/api/rooms/${enc(room)}/broadcast`, { event: 'after-kill', data: 1 }, { timeoutMs: 5000 });
    assert.equal(r.status, 200, r.text);
    assert.ok(r.ms < 1000 + 1500, `the publish waited ${r.ms} ms for the dead node (CLUSTER_REQUEST_TIMEOUT=1s)`);
    assert.equal(r.json.delivered, 2, `delivered (mA, mB): ${r.text}`);
    assert.equal(r.json.partial, true, `a live node did not answer: the answer says partial: ${r.text}`);

    const deadline = killedAt + TTL_MS + SLACK_MS;
    await Promise.all([obsA, obsB].map((o) => waitForEvent(o, 'user-offline', Math.max(1, deadline - Date.now()), (d) => d.userId === v1)));
    const offlineMs = Date.now() - killedAt;
    process.stdout.write(`# user-offline for the killed node's user after ${offlineMs} ms (CLUSTER_NODE_TTL=3s)\n`);

    let lastRoom;
    let lastStats;
    await waitUntil(async () => {
      lastRoom = [await roomInfo(A, room), await roomInfo(B, room)];
      lastStats = [await stats(A), await stats(B)];
      return lastRoom.every((x) => x && x.memberCount === 2) && lastStats.every((s) => s.cluster && s.cluster.nodes === 2);
    }, Math.max(1, deadline - Date.now()) + 500, () => `rooms ${JSON.stringify(lastRoom)}; stats ${JSON.stringify(lastStats)}`, 100);
    for (const x of lastRoom) assert.deepEqual(sorted(x.users), sorted([mA.userId, mB.userId]), `room users after the kill: ${JSON.stringify(x)}`);
    for (const s of lastStats) {
      assert.deepEqual(pick(s.cluster, CLUSTER_KEYS), { nodes: 2, answered: 2, partial: false }, JSON.stringify(s));
      assert.equal(s.connections, 5, `connections on A and B (obsA, mA, v2A, obsB, mB): ${JSON.stringify(s)}`);
      assert.equal(s.onlineUsers, 5, JSON.stringify(s));
    }
    for (const n of [A, B]) {
      const h = await health(n);
      assert.equal(h.status, 200);
      assert.equal(h.json.cluster.nodes, 2, `/health on ${n.name}: ${h.text}`);
      assert.equal((await userInfo(n, v1)).online, false, `${v1} (only on the dead node) is offline`);
      const i2 = await userInfo(n, v2);
      assert.deepEqual([i2.online, i2.connections.map((c) => [c.socketId, c.node])], [true, [[v2A.id, A.nodeId]]], `${v2} keeps its socket on A: ${JSON.stringify(i2)}`);
    }

    // The survivors keep delivering: a publish now is whole again, and the relay stream has no gap.
    const again = await postJson(B, `/api/rooms/${enc(room)}/broadcast`, { event: 'after-expiry', data: 2 });
    assert.deepEqual([again.delivered, again.partial === true], [2, false], JSON.stringify(again));
    const { sent, acks } = await loop.stop();
    assert.deepEqual(acks.filter((a) => !(a.ack && a.ack.success)), [], 'every relay during the kill was acknowledged with success');
    await waitUntil(() => received(mB, 'tick').length >= sent, 5000, () => `mB got ${received(mB, 'tick').length}/${sent} ticks`);
    await expectDeliveries([obsA, obsB, mA, mB, v2A], [
      { event: 'after-kill', expected: [mA, mB], data: 1 },
      { event: 'after-expiry', expected: [mA, mB], data: 2 },
    ]);
    assert.deepEqual(seqs(mB, 'tick'), range(0, sent), 'relays from A to B across the kill: all, once, in order');
    for (const o of [obsA, obsB]) {
      assert.equal(received(o, 'user-offline', (d) => d.userId === v1).length, 1, `${label(o)}: user-offline for ${v1} exactly once`);
      assert.equal(received(o, 'user-offline', (d) => d.userId === v2).length, 0, `${label(o)}: ${v2} still has a socket on A: no user-offline`);
    }
    const late = await userOn(B, uid('late'));
    assert.equal((await join(late, room)).memberCount, 3, 'memberCount after the kill counts only live nodes');

    // No stale entry for the dead node in Redis (contract's keys, prefix "shardcast").
    assert.equal(await rc.sismember('shardcast:nodes', C.nodeId), 0, 'dead node still in shardcast:nodes');
    assert.equal(await rc.exists(`shardcast:node:${C.nodeId}`), 0, 'dead node heartbeat key still there');
    assert.deepEqual(await rc.hgetall(`shardcast:user:${v1}`), {}, `stale presence of ${v1}`);
    assert.equal(await rc.hget(`shardcast:user:${v2}`, C.nodeId), null, `stale presence of ${v2} on the dead node`);
    assert.equal(await rc.hget(`shardcast:room:${room}`, C.nodeId), null, 'stale room membership of the dead node');
  });
});

// ===========================================================================
// Redis killed and started again on the same port, in the middle of traffic
// ===========================================================================

describe('cluster: Redis restarted in the middle of traffic', { skip: redisMissing }, () => {
  let redis;
  let nodes;

  before(async () => {
    redis = await startRedis();
    nodes = await startCluster(redis, 3, { CLUSTER_NODE_TTL: '3s', CLUSTER_REQUEST_TIMEOUT: '1s' });
  });
  after(async () => {
    await stopNodes(nodes);
    await redis?.stop();
  });

  it('before: delivered across nodes; during: local delivery works, cross-node publishes are counted, /health 200 "degraded"; after: delivered across nodes again, no node restarted', async () => {
    const [A, B, C] = nodes;
    const pids = nodes.map((n) => n.pid);
    const room = uid('rr-room');
    const ua1 = uid('rr-a1');
    const ua2 = uid('rr-a2');
    const ub1 = uid('rr-b1');
    const uc1 = uid('rr-c1');
    const a1 = await userOn(A, ua1);
    const a2 = await userOn(A, ua2);
    const b1 = await userOn(B, ub1);
    const c1 = await userOn(C, uc1);
    const members = [a1, a2, b1, c1];
    for (const s of members) await join(s, room);
    const rc = redis.client();
    try { await waitRoomSubscribers(rc, room, 3); } finally { rc.disconnect(); }

    // Before.
    const loop = relayLoop(a1, room, 'stream', 20);
    await relay(a1, room, 'before', 1);
    const pre = await postJson(B, `/api/rooms/${enc(room)}/broadcast`, { event: 'before-http', data: 1 });
    assert.equal(pre.delivered, 4, JSON.stringify(pre));
    await expectDeliveries(members, [
      { event: 'before', expected: [a2, b1, c1], data: 1 },
      { event: 'before-http', expected: members, data: 1 },
    ], { graceMs: 0 });
    const failures0 = await metric(A, 'shardcast_cluster_publish_failures_total');

    // Redis dies.
    await redis.kill('SIGKILL');
    const killedAt = Date.now();
    let lastHealth = [];
    await waitUntil(async () => {
      lastHealth = await Promise.all(nodes.map((n) => health(n).catch((e) => ({ status: e.message }))));
      return lastHealth.every((h) => h.status === 200 && h.json && h.json.cluster && h.json.cluster.delivery === 'degraded');
    }, 10000, () => `/health while Redis is down: ${JSON.stringify(lastHealth.map((h) => [h.status, h.json]))}`, 100);
    process.stdout.write(`# /health "degraded" on every node ${Date.now() - killedAt} ms after Redis died\n`);
    for (const h of lastHealth) {
      assert.equal(h.json.status, 'ok', `/health status stays ok (a load balancer must not drain the node): ${h.text}`);
      assert.equal(h.json.cluster.redis, 'down', h.text);
    }
    assert.equal(await metric(A, 'shardcast_cluster_redis_up'), 0, 'shardcast_cluster_redis_up while Redis is down');

    // During: local delivery.
    const dur = await emitWithAck(a1, 'custom-event', { event: 'during', data: 2, roomName: room });
    assertSuccess(dur, 'a relay while Redis is down');
    const local = await http(A, 'POST', `/api/users/${enc(ua2)}/send`, { event: 'during-user', data: 2 }, { timeoutMs: 8000 });
    assert.equal(local.status, 200, local.text);
    assert.equal(local.json.delivered, 1, `sendToUser to a user on this node while Redis is down: ${local.text}`);
    const roomPub = await http(A, 'POST', `/api/rooms/${enc(room)}/broadcast`, { event: 'during-http', data: 2 }, { timeoutMs: 8000 });
    assert.equal(roomPub.status, 200, roomPub.text);
    assert.ok(roomPub.ms < 1000 + 2000, `room publish while Redis is down took ${roomPub.ms} ms`);
    assert.equal(roomPub.json.delivered, 2, `room publish while Redis is down reaches the local members: ${roomPub.text}`);
    const st = await http(A, 'GET', '/api/stats', undefined, { timeoutMs: 8000 });
    assert.equal(st.status, 200, `GET /api/stats while Redis is down: ${st.text}`);
    await expectDeliveries([a1, a2], [
      { event: 'during', expected: [a2], data: 2 },
      { event: 'during-user', expected: [a2], data: 2 },
      { event: 'during-http', expected: [a1, a2], data: 2 },
    ], { graceMs: 0 });
    let failures1;
    await waitUntil(async () => { failures1 = await metric(A, 'shardcast_cluster_publish_failures_total'); return failures1 - failures0 >= 2; },
      5000, () => `shardcast_cluster_publish_failures_total on A went ${failures0} -> ${failures1} after a relay and a room publish that could not cross`);

    // Redis comes back on the same port, empty (no persistence).
    const logMarks = nodes.map((n) => n.logs.length);
    await redis.restart();
    const restartedAt = Date.now();
    await waitClusterSize(nodes, 3, 20000);
    process.stdout.write(`# every node "ok" and seeing 3 nodes ${Date.now() - restartedAt} ms after Redis restarted\n`);
    // Back once, for good: a node says Redis is reachable only when both of
    // its connections are (the subscriber's last reconnection failed while
    // Redis was away; a node that published before it was back waited for
    // echoes that could not come, and flapped to "unreachable").
    for (const [i, n] of nodes.entries()) {
      const turns = n.logs.slice(logMarks[i]).map((l) => l.line.match(/Redis (reachable|unreachable)/)).filter(Boolean).map((m) => m[1]);
      assert.deepEqual(turns, ['reachable'], `${n.name}: Redis status changes after the restart`);
    }
    assert.equal(await metric(A, 'shardcast_cluster_redis_up'), 1);

    // After: across nodes again, nobody restarted.
    assert.deepEqual(nodes.map((n) => [n.pid, n.exited]), pids.map((p) => [p, null]), 'no node restarted or exited');
    await relay(c1, room, 'after', 3);
    const post = await postJson(B, `/api/rooms/${enc(room)}/broadcast`, { event: 'after-http', data: 3 });
    assert.deepEqual([post.delivered, post.partial === true], [4, false], `room publish after Redis returned: ${JSON.stringify(post)}`);
    const pm = await emitWithAck(c1, 'private-message', { targetUserId: ua1, message: 'back' });
    assertSuccess(pm, 'private-message from C to a user on A after Redis returned');
    const { sent } = await loop.stop();
    await expectDeliveries(members, [
      { event: 'after', expected: [a1, a2, b1], data: 3 },
      { event: 'after-http', expected: members, data: 3 },
      { event: 'private-message', expected: [a1] },
    ]);
    // Presence and rooms re-registered by the nodes themselves (Redis came back empty).
    for (const node of nodes) {
      const info = await userInfo(node, ub1);
      assert.deepEqual([info.online, info.connections.map((c) => c.node)], [true, [B.nodeId]], `${ub1} on ${node.name} after the restart: ${JSON.stringify(info)}`);
      const r = await roomInfo(node, room);
      assert.equal(r && r.memberCount, 4, `${room} on ${node.name} after the restart: ${JSON.stringify(r)}`);
    }
    // Nobody left: no member heard a user-offline for another (Redis forgetting them is not their leaving).
    for (const s of members) {
      const flaps = received(s, 'user-offline', (d) => [ua1, ua2, ub1, uc1].includes(d.userId)).map((d) => d.userId);
      assert.deepEqual(flaps, [], `${label(s)} heard user-offline for users that never left`);
    }
    const newcomer = uid('rr-new');
    await userOn(B, newcomer);
    await waitForEvent(a1, 'user-online', 5000, (d) => d.userId === newcomer);

    // The relay stream: the local member got every relay in order; a member on
    // another node got an in-order subsequence with the ones after the restart.
    await waitUntil(() => received(a2, 'stream').length >= sent, 5000, () => `a2 got ${received(a2, 'stream').length}/${sent}`);
    assert.deepEqual(seqs(a2, 'stream'), range(0, sent), 'relays to the member on the same node: all, once, in order, Redis or not');
    for (const s of [b1, c1]) {
      // Every relay was acked (stop() waits for the acks): Redis has taken
      // the last one, and the other nodes read it from there on their own
      // time — later than a2, whose copy never left its node. Relays held
      // back while the sender's node had Redis down can all come at the end.
      const last = () => { const got = seqs(s, 'stream'); return got[got.length - 1]; };
      await waitUntil(() => last() === sent - 1, 5000,
        () => `${label(s)} has the last relay sent after Redis returned (got ${seqs(s, 'stream').length}, last ${last()} of ${sent - 1})`);
      assertIncreasing(seqs(s, 'stream'), `relay stream on ${label(s)}`);
    }
  });
});

// ===========================================================================
// Redis stalled (SIGSTOP) for longer than CLUSTER_NODE_TTL, then resumed
// ===========================================================================

describe('cluster: Redis stalled longer than CLUSTER_NODE_TTL (SIGSTOP, then SIGCONT)', { skip: redisMissing }, () => {
  let redis;
  let nodes;

  before(async () => {
    redis = await startRedis();
    nodes = await startCluster(redis, 3, { CLUSTER_NODE_TTL: '3s', CLUSTER_REQUEST_TIMEOUT: '1s' });
  });
  after(async () => {
    if (redis && !redis.exited) { try { process.kill(redis.pid, 'SIGCONT'); } catch { /* gone */ } }
    await stopNodes(nodes);
    await redis?.stop();
  });

  it('local delivery goes on during the stall; afterwards presence and rooms are right and no user that stayed is announced offline', async () => {
    const [A, B, C] = nodes;
    const room = uid('stall');
    const names = { a1: uid('st-a1'), a2: uid('st-a2'), b1: uid('st-b1'), b2: uid('st-b2'), c1: uid('st-c1') };
    const a1 = await userOn(A, names.a1);
    const a2 = await userOn(A, names.a2);
    const b1 = await userOn(B, names.b1);
    const b2 = await userOn(B, names.b2);
    const c1 = await userOn(C, names.c1);
    for (const s of [a1, a2, b1, b2, c1]) await join(s, room);
    const rc = redis.client();
    try { await waitRoomSubscribers(rc, room, 3); } finally { rc.disconnect(); }
    await Promise.all([a1, a2, b1, b2].map((s) => waitForEvent(s, 'user-online', 5000, (d) => d.userId === names.c1)));

    process.kill(redis.pid, 'SIGSTOP');
    const stalledAt = Date.now();
    try {
      // A relay while Redis does not answer: acknowledged within CLUSTER_REQUEST_TIMEOUT + slack, delivered on the node.
      const t = Date.now();
      const ack = await emitWithAck(a1, 'custom-event', { event: 'stall-relay', data: 1, roomName: room }, 10000);
      assertSuccess(ack, 'relay during the stall');
      assert.ok(Date.now() - t < 1000 + 2000, `the relay ack took ${Date.now() - t} ms while Redis stalled`);
      await waitForEvent(a2, 'stall-relay', 3000);
      // A user leaves and another arrives during the stall.
      b2.disconnect();
      const lateName = uid('st-late');
      const late = await userOn(C, lateName);
      // Stall past the TTL: every heartbeat key expires in Redis's eyes.
      await sleep(Math.max(0, 3000 + 1500 - (Date.now() - stalledAt)));
      process.kill(redis.pid, 'SIGCONT');
      await waitClusterSize(nodes, 3, 15000);
      // Let the nodes re-register and anything they announce arrive.
      let last;
      await waitUntil(async () => {
        last = [await userInfo(A, lateName), await userInfo(A, names.b2), await roomInfo(A, room), await stats(B)];
        return last[0].online && !last[1].online && last[2] && last[2].memberCount === 4 && last[3].onlineUsers === 5;
      }, 10000, () => `after the stall: ${JSON.stringify(last)}`, 100);
      await sleep(1000); // one more heartbeat round for late announcements
      for (const [k, u] of Object.entries(names)) {
        for (const n of nodes) {
          const info = await userInfo(n, u);
          assert.equal(info.online, k !== 'b2', `${u} on ${n.name} after the stall: ${JSON.stringify(info)}`);
        }
      }
      const stayed = [names.a1, names.a2, names.b1, names.c1];
      const flaps = [];
      for (const s of [a1, a2, b1, c1, late]) {
        const off = received(s, 'user-offline', (d) => stayed.includes(d.userId)).map((d) => d.userId);
        if (off.length) flaps.push(`${label(s)} heard user-offline for [${off}]`);
      }
      assert.deepEqual(flaps, [], 'users that never left were announced offline after the stall');
      for (const s of [a1, b1, c1]) assert.equal(received(s, 'user-offline', (d) => d.userId === names.b2).length, 1, `${label(s)}: user-offline for the user who left during the stall`);
      await relay(c1, room, 'after-stall', 2);
      await expectDeliveries([a1, a2, b1, c1], [{ event: 'after-stall', expected: [a1, a2, b1], data: 2 }]);
    } finally {
      try { process.kill(redis.pid, 'SIGCONT'); } catch { /* gone */ }
    }
  });
});

// ===========================================================================
// A node stopped cleanly (SIGTERM), default CLUSTER_NODE_TTL
// ===========================================================================

describe('cluster: a node stopped cleanly (SIGTERM) with CLUSTER_NODE_TTL=15s', { skip: redisMissing }, () => {
  let redis;
  let nodes;

  before(async () => {
    redis = await startRedis();
    nodes = await startCluster(redis, 3, { CLUSTER_NODE_TTL: '15s', CLUSTER_REQUEST_TIMEOUT: '2s' });
  });
  after(async () => {
    await stopNodes(nodes);
    await redis?.stop();
  });

  it('its users go offline at once, and the others\' queries and publishes do not wait for it', async () => {
    const [A, B, C] = nodes;
    const obsA = await userOn(A, uid('cs-obsA'));
    const obsB = await userOn(B, uid('cs-obsB'));
    const v = uid('cs-victim');
    await userOn(C, v);
    await Promise.all([obsA, obsB].map((o) => waitForEvent(o, 'user-online', 5000, (d) => d.userId === v)));
    const stoppedAt = Date.now();
    const exit = await C.stop();
    assert.deepEqual(exit, { code: 0, signal: null }, 'the node exits by itself on SIGTERM');
    await Promise.all([obsA, obsB].map((o) => waitForEvent(o, 'user-offline', 2000, (d) => d.userId === v)));
    process.stdout.write(`# user-offline ${Date.now() - stoppedAt} ms after SIGTERM\n`);
    // A node that left cleanly is not waited for (its heartbeat key is gone).
    const st = await http(A, 'GET', '/api/stats');
    assert.equal(st.status, 200);
    assert.ok(st.ms < 1000, `GET /api/stats right after a clean stop took ${st.ms} ms (CLUSTER_REQUEST_TIMEOUT=2s): ${st.text}`);
    assert.deepEqual(pick(st.json.cluster, CLUSTER_KEYS), { nodes: 2, answered: 2, partial: false }, st.text);
    const bc = await http(B, 'POST', '/api/broadcast', { event: 'cs-all', data: 1 });
    assert.ok(bc.ms < 1000, `a broadcast to all right after a clean stop took ${bc.ms} ms: ${bc.text}`);
    assert.deepEqual([bc.json.delivered, bc.json.partial === true], [2, false], bc.text);
  });
});

// ===========================================================================
// Two deployments on one Redis, told apart by REDIS_PREFIX and REDIS_ADAPTER_KEY
// ===========================================================================

describe('cluster: REDIS_PREFIX and REDIS_ADAPTER_KEY keep two deployments on one Redis apart', { skip: redisMissing }, () => {
  let redis;
  let x;
  let y;

  before(async () => {
    redis = await startRedis();
    [x, y] = await Promise.all([
      startCluster(redis, 2, { REDIS_PREFIX: 'depx', REDIS_ADAPTER_KEY: 'sio-x' }),
      startCluster(redis, 2, { REDIS_PREFIX: 'depy', REDIS_ADAPTER_KEY: 'sio-y' }),
    ]);
  });
  after(async () => {
    await stopNodes([...(x || []), ...(y || [])]);
    await redis?.stop();
  });

  it('same room and user names in both: each deployment sees only its own nodes, members and users', async () => {
    const room = uid('shared-name');
    const u = uid('shared-user');
    const xs = [await userOn(x[0], u), await userOn(x[1], uid('x-other'))];
    const ys = [await userOn(y[0], u), await userOn(y[1], uid('y-other'))];
    for (const s of [...xs, ...ys]) await join(s, room);
    const all = [...xs, ...ys];
    const rx = await postJson(x[0], `/api/rooms/${enc(room)}/broadcast`, { event: 'dep-x', data: 'x' });
    const ry = await postJson(y[1], `/api/users/${enc(u)}/send`, { event: 'dep-y', data: 'y' });
    const ra = await postJson(x[1], '/api/broadcast', { event: 'dep-x-all', data: 'x' });
    assert.deepEqual([rx.delivered, ry.delivered, ra.delivered], [2, 1, 2], JSON.stringify([rx, ry, ra]));
    await expectDeliveries(all, [
      { event: 'dep-x', expected: xs, data: 'x' },
      { event: 'dep-y', expected: [ys[0]], data: 'y' },
      { event: 'dep-x-all', expected: xs, data: 'x' },
    ]);
    for (const n of [...x, ...y]) {
      const s = await stats(n);
      assert.deepEqual([s.cluster.nodes, s.connections, s.rooms], [2, 2, 1], `${n.name}: ${JSON.stringify(s)}`);
      assert.equal((await roomInfo(n, room)).memberCount, 2);
      assert.equal((await userInfo(n, u)).connections.length, 1);
    }
  });
});
