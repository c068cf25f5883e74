// Minimal socket.io 4.8 server with the three shardcast events that
// loadtest/compare drives: authenticate, join-room, custom-event (relay to the
// room except the sender). Same ack shapes as shardcast. No validation beyond
// what the load generator needs, no presence or announcement events.
import { createServer } from 'node:http';
import { Server } from 'socket.io';

const port = Number(process.env.PORT ?? 3000);
const host = process.env.HOST ?? '127.0.0.1';

const httpServer = createServer();
const io = new Server(httpServer, {
  transports: ['websocket'],
  serveClient: false,
  cors: { origin: '*' },
});

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
