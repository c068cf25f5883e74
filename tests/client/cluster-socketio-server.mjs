// A Node socket.io 4.8 server with @socket.io/redis-adapter 8.x (classic
// createAdapter, ioredis pub/sub clients), spawned by
// cluster-interop.test.mjs as a child process beside shardcast nodes on one
// Redis. Not a test file itself.
//
//   REDIS_URL=redis://127.0.0.1:P [REDIS_ADAPTER_KEY=socket.io] node cluster-socketio-server.mjs
//
// Prints "listening <port>" once it serves and the adapter's subscriptions
// are in place. Its clients drive it with events (every one acknowledged):
//   join <room>                        socket.join(room)
//   room-emit { rooms, event, data }   io.to(rooms).emit(event, data)   ({ args: [...] }: several arguments)
//   all-emit { event, data }           io.emit(event, data)
//   relay { room, event, data }        socket.to(room).emit(event, data) (sender excluded)

import { createServer } from 'node:http';
import { Server } from 'socket.io';
import { createAdapter } from '@socket.io/redis-adapter';
import { Redis } from 'ioredis';

const url = process.env.REDIS_URL;
if (!url) { console.error('REDIS_URL is required'); process.exit(2); }
const key = process.env.REDIS_ADAPTER_KEY || 'socket.io';

const pub = new Redis(url, { maxRetriesPerRequest: 2 });
const sub = pub.duplicate();
pub.on('error', (e) => console.error(`redis pub: ${e.message}`));
sub.on('error', (e) => console.error(`redis sub: ${e.message}`));

const httpServer = createServer();
const io = new Server(httpServer, { adapter: createAdapter(pub, sub, { key }) });

io.on('connection', (socket) => {
  socket.on('join', (room, ack) => { socket.join(room); ack({ ok: true, id: socket.id }); });
  socket.on('room-emit', ({ rooms, event, data, args }, ack) => { io.to(rooms).emit(event, ...(args || [data])); ack({ ok: true }); });
  socket.on('all-emit', ({ event, data }, ack) => { io.emit(event, data); ack({ ok: true }); });
  socket.on('relay', ({ room, event, data }, ack) => { socket.to(room).emit(event, data); ack({ ok: true }); });
});

// The adapter PSUBSCRIBEs "<key>#/#*" on creation: wait until Redis counts it.
for (let i = 0; ; i++) {
  const [, patterns] = await Promise.all([pub.ping(), pub.pubsub('NUMPAT')]);
  if (Number(patterns) >= 1) break;
  if (i > 200) { console.error('the adapter did not subscribe within 10 s'); process.exit(1); }
  await new Promise((r) => setTimeout(r, 50));
}

httpServer.listen(0, '127.0.0.1', () => {
  console.log(`listening ${httpServer.address().port}`);
});

const stop = () => { io.close(); pub.disconnect(); sub.disconnect(); process.exit(0); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
