// The "Client-Side Connection" example of the seed README
// (shared/seed/000_248310c60981252a.txt) must work unchanged against shardcast.
// The example is reproduced below as closely as possible: only the URL, the
// 30 s keep-alive period and console.log (replaced by a recorder) differ.

import { describe, before, after } from 'node:test';
import {
  assert, io, it, startServer, connectAs, track, waitUntil, waitForEvent, emitWithAck,
  assertTimestamp, uid, sleep,
} from './helpers.mjs';

/** The seed's client example, with console.log → log and a configurable ping period. */
function seedClientExample(serverUrl, log, pingEveryMs) {
  // Connect to WebSocket server
  const socket = io(serverUrl, {
    transports: ['websocket', 'polling'],
  });

  // Listen for connection
  socket.on('connected', (data) => {
    log('Connected to WebSocket server:', data);
  });

  // Authenticate user
  socket.emit('authenticate', { userId: 'user123' }, (response) => {
    if (response.success) {
      log('Authenticated successfully', response);
    }
  });

  // Join a room
  socket.emit('join-room', { roomName: 'general' }, (response) => {
    if (response.success) {
      log('Joined room successfully', response);
    }
  });

  // Send private message
  socket.emit('private-message', {
    targetUserId: 'user456',
    message: 'Hello!',
    messageType: 'text',
  }, (response) => {
    if (response.success) {
      log('Message sent successfully', response);
    }
  });

  // Listen for messages
  socket.on('private-message', (data) => {
    log('Received private message:', data);
  });

  // Listen for room events
  socket.on('user-joined', (data) => {
    log('User joined room:', data);
  });

  socket.on('user-left', (data) => {
    log('User left room:', data);
  });

  // Keep-alive ping
  const interval = setInterval(() => {
    socket.emit('ping');
  }, pingEveryMs); // Every 30 seconds in the seed

  socket.on('pong', (data) => {
    log('Pong received:', data);
  });

  return { socket, interval };
}

describe('seed README client example', () => {
  let server;
  before(async () => { server = await startServer({}); });
  after(async () => { await server?.stop(); });

  it('runs unchanged: connected, authenticate, join-room, private-message, room events, ping/pong', async () => {
    // user456 must be online for the example's private message to be deliverable.
    const user456 = await connectAs(server.url, 'user456');
    // Also a member of "general" already, to see the example's user-joined.
    const member = await connectAs(server.url, uid('general-member'));
    const memberJoin = await emitWithAck(member, 'join-room', { roomName: 'general' });
    assert.equal(memberJoin.success, true, JSON.stringify(memberJoin));

    const logs = [];
    const log = (msg, data) => logs.push({ msg, data });
    // "localhost", as in the seed (the server listens on 127.0.0.1).
    const { socket, interval } = seedClientExample(`http://localhost:${server.port}`, log, 250);
    track(socket);
    const all = [];
    socket.onAny((event, ...args) => all.push({ event, args }));
    try {
      const find = (msg) => logs.filter((l) => l.msg === msg);
      await waitUntil(
        () => find('Connected to WebSocket server:').length === 1
          && find('Authenticated successfully').length === 1
          && find('Joined room successfully').length === 1
          && find('Message sent successfully').length === 1
          && find('Pong received:').length >= 2,
        10000,
        () => `seed client log so far: ${JSON.stringify(logs)}`,
      );

      const connected = find('Connected to WebSocket server:')[0].data;
      assert.equal(connected.socketId, socket.id, 'connected.socketId must be the client socket.id');
      assertTimestamp(connected.timestamp, 'connected.timestamp');
      assert.equal(socket.io.engine.transport.name, 'websocket');

      const auth = find('Authenticated successfully')[0].data;
      assert.equal(auth.userId, 'user123');
      assert.equal(auth.socketId, socket.id);

      const joined = find('Joined room successfully')[0].data;
      assert.equal(joined.roomName, 'general');
      assert.equal(joined.memberCount, 2, 'general had one member before the example joined');

      const sent = find('Message sent successfully')[0].data;
      assert.equal(typeof sent.messageId, 'string');
      assertTimestamp(sent.timestamp);

      for (const p of find('Pong received:')) assertTimestamp(p.data.timestamp, 'pong.timestamp');

      // user456 got the message.
      const pm = await waitForEvent(user456, 'private-message', 5000, (d) => d.fromUserId === 'user123');
      assert.equal(pm.message, 'Hello!');
      assert.equal(pm.messageType, 'text');
      assert.equal(pm.targetUserId, 'user456');
      assert.equal(pm.messageId, sent.messageId);

      // The room member saw user123 join.
      const uj = await waitForEvent(member, 'user-joined', 5000, (d) => d.userId === 'user123');
      assert.equal(uj.roomName, 'general');
      assert.equal(uj.socketId, socket.id);

      // The example's user-joined / user-left / private-message listeners fire.
      const other = await connectAs(server.url, uid('newcomer'));
      await emitWithAck(other, 'join-room', { roomName: 'general' });
      await waitUntil(() => find('User joined room:').some((l) => l.data.userId === other.userId), 5000,
        () => JSON.stringify(logs.slice(-5)));
      await emitWithAck(other, 'leave-room', { roomName: 'general' });
      await waitUntil(() => find('User left room:').some((l) => l.data.userId === other.userId), 5000,
        () => JSON.stringify(logs.slice(-5)));
      const pmAck = await emitWithAck(user456, 'private-message', { targetUserId: 'user123', message: 'Hi back' });
      assert.equal(pmAck.success, true, JSON.stringify(pmAck));
      await waitUntil(() => find('Received private message:').some((l) => l.data.message === 'Hi back'), 5000,
        () => JSON.stringify(logs.slice(-5)));
      const back = find('Received private message:').find((l) => l.data.message === 'Hi back').data;
      assert.equal(back.fromUserId, 'user456');

      // `connected` first and exactly once, and no `error` event on the way.
      await sleep(200);
      assert.equal(find('Connected to WebSocket server:').length, 1);
      assert.equal(all[0].event, 'connected', `first event: ${JSON.stringify(all[0])}`);
      assert.deepEqual(all.filter((e) => e.event === 'error'), []);
    } finally {
      clearInterval(interval);
      socket.disconnect();
    }
  });

  it('keeps the connection alive with the example ping loop (socket.emit("ping") with no payload)', async () => {
    const logs = [];
    const { socket, interval } = seedClientExample(`http://localhost:${server.port}`, (msg, data) => logs.push({ msg, data }), 100);
    track(socket);
    try {
      await waitUntil(() => logs.filter((l) => l.msg === 'Pong received:').length >= 10, 10000,
        () => `pongs: ${logs.filter((l) => l.msg === 'Pong received:').length}`);
      assert.equal(socket.connected, true);
    } finally {
      clearInterval(interval);
      socket.disconnect();
    }
  });
});
