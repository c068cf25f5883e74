// Minimal socket.io 4.8 server with the three shardcast events that
// loadtest/compare drives: authenticate, join-room, custom-event (relay to the
// room except the sender). Same ack shapes as shardcast. No validation beyond
// what the load generator needs, no presence or announcement events.
//
// With REDIS_URL set it is one node of a socket.io cluster: the classic
// `@socket.io/redis-adapter` 8.x (`createAdapter` over ioredis, as its README
// sets it up: every node PSUBSCRIBEs `socket.io#/#*` and gets every message).
// For the cluster scenario (loadtest/compare/cluster.py) it also answers:
//   POST /api/rooms/{room}/broadcast {event, data}  -> io.to(room).emit(event, data)
//        answer {success, delivered, roomName}; `delivered` counts this node's
//        members only (the classic adapter does not collect the others' counts)
//   GET /metrics  -> what this node's Redis connections carried (Prometheus text)
//   GET /health   -> {"status":"ok"}
import { createServer } from 'node:http';
import { Server } from 'socket.io';

const port = Number(process.env.PORT ?? 3000);
const host = process.env.HOST ?? '127.0.0.1';
const redisUrl = process.env.REDIS_URL ?? '';

// What this node's Redis connections carried (cluster mode).
const counters = {
  received: 0, // messages from the subscriber connection (pattern and plain)
  receivedBytes: 0,
  published: 0, // PUBLISH commands sent by the publisher connection
  publishedBytes: 0,
  httpPublishes: 0,
};

const reply = (res, status, body) => {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, {
    'content-type': typeof body === 'string' ? 'text/plain; version=0.0.4' : 'application/json',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
};

// Requests that are not socket.io's (engine.io hands them on).
const api = (req, res) => {
  const url = new URL(req.url, 'http://x');
  if (req.method === 'GET' && url.pathname === '/health') return reply(res, 200, { status: 'ok' });
  if (req.method === 'GET' && url.pathname === '/metrics') {
    return reply(
      res,
      200,
      [
        '# TYPE socketio_redis_messages_received_total counter',
        `socketio_redis_messages_received_total ${counters.received}`,
        '# TYPE socketio_redis_bytes_received_total counter',
        `socketio_redis_bytes_received_total ${counters.receivedBytes}`,
        '# TYPE socketio_redis_messages_published_total counter',
        `socketio_redis_messages_published_total ${counters.published}`,
        '# TYPE socketio_redis_bytes_published_total counter',
        `socketio_redis_bytes_published_total ${counters.publishedBytes}`,
        '# TYPE socketio_http_publishes_total counter',
        `socketio_http_publishes_total ${counters.httpPublishes}`,
        '',
      ].join('\n'),
    );
  }
  const m = /^\/api\/rooms\/([^/]+)\/broadcast$/.exec(url.pathname);
  if (req.method === 'POST' && m) {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch {
        return reply(res, 400, { error: 'invalid JSON', code: 'VALIDATION_ERROR' });
      }
      if (!body || typeof body.event !== 'string') {
        return reply(res, 400, { error: 'event is required', code: 'VALIDATION_ERROR' });
      }
      const roomName = decodeURIComponent(m[1]);
      counters.httpPublishes += 1;
      io.to(roomName).emit(body.event, body.data === undefined ? null : body.data);
      const room = io.of('/').adapter.rooms.get(roomName);
      reply(res, 200, { success: true, delivered: room ? room.size : 0, roomName });
    });
    return;
  }
  reply(res, 404, { error: 'not found', code: 'NOT_FOUND' });
};

const httpServer = createServer(api);
const io = new Server(httpServer, {
  transports: ['websocket'],
  serveClient: false,
  cors: { origin: '*' },
});

if (redisUrl) {
  const { Redis } = await import('ioredis');
  const { createAdapter } = await import('@socket.io/redis-adapter');
  const pubClient = new Redis(redisUrl);
  const subClient = pubClient.duplicate();
  const count = (_pattern, _channel, message) => {
    counters.received += 1;
    counters.receivedBytes += message.length;
  };
  subClient.on('pmessageBuffer', count);
  subClient.on('messageBuffer', (channel, message) => count(null, channel, message));
  const publish = pubClient.publish.bind(pubClient);
  pubClient.publish = (channel, message, ...rest) => {
    counters.published += 1;
    counters.publishedBytes += message.length;
    return publish(channel, message, ...rest);
  };
  io.adapter(createAdapter(pubClient, subClient));
  // Commands on one connection are answered in order: once this PING is,
  // the adapter's PSUBSCRIBE / SUBSCRIBE are in place.
  await subClient.ping();
  await pubClient.ping();
}

io.on('connection', (socket) => {
  socket.on('authenticate', (payload, ack) => {
    const userId = payload && typeof payload.userId === 'string' ? payload.userId : null;
    if (typeof ack !== 'function') return;
    if (!userId) {
      ack({ success: false, error: 'userId is required', code: 'VALIDATION_ERROR' });
      return;
    }
    socket.data.userId = userId;
    ack({ success: true, userId, socketId: socket.id });
  });

  socket.on('join-room', (payload, ack) => {
    const roomName = payload && typeof payload.roomName === 'string' ? payload.roomName : null;
    if (!roomName) {
      if (typeof ack === 'function') ack({ success: false, error: 'roomName is required', code: 'VALIDATION_ERROR' });
      return;
    }
    socket.join(roomName);
    const room = io.of('/').adapter.rooms.get(roomName);
    if (typeof ack === 'function') ack({ success: true, roomName, memberCount: room ? room.size : 0 });
  });

  socket.on('custom-event', (payload, ack) => {
    const event = payload && typeof payload.event === 'string' ? payload.event : null;
    const roomName = payload && typeof payload.roomName === 'string' ? payload.roomName : null;
    if (!event || !roomName) {
      if (typeof ack === 'function') ack({ success: false, error: 'event and roomName are required', code: 'VALIDATION_ERROR' });
      return;
    }
    socket.to(roomName).emit(event, payload.data === undefined ? null : payload.data);
    if (typeof ack === 'function') ack({ success: true });
  });
});

httpServer.on('connection', (s) => s.setNoDelay(true));
httpServer.listen(port, host, () => {
  console.log(`listening on http://${host}:${httpServer.address().port}`);
});

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    io.close();
    process.exit(0);
  });
}
