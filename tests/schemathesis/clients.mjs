// Keeps a few real Socket.IO connections open while schemathesis fuzzes the
// HTTP API, so that the query routes answer non-empty lists (connections,
// rooms, a user's connections) whose items get checked against the schema.
//
// usage: node clients.mjs <base-url>
// Prints "clients ready <n>" once every client is connected, authenticated
// and in its rooms; stays alive until SIGTERM/SIGINT.

import { createRequire } from 'node:module';

const require = createRequire(new URL('../client/package.json', import.meta.url));
const { io } = require('socket.io-client');

const url = process.argv[2];
if (!url) {
  console.error('usage: node clients.mjs <base-url>');
  process.exit(2);
}

const USERS = ['fuzz-alice', 'fuzz-bob', 'fuzz user ☃', '0'];
const ROOMS = ['fuzz-room', 'fuzz room ☃ 日本', '0'];
const sockets = [];

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms); }),
  ]);
}

function open() {
  const socket = io(url, { transports: ['websocket'], reconnection: false, forceNew: true, timeout: 10000 });
  sockets.push(socket);
  return withTimeout(new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', reject);
  }), 10000, 'connect');
}

function ack(socket, event, payload) {
  return withTimeout(new Promise((resolve) => socket.emit(event, payload, resolve)), 10000, event);
}

async function main() {
  // Two connections per user, each in some rooms, plus two anonymous ones.
  for (const [u, userId] of USERS.entries()) {
    for (let c = 0; c < 2; c += 1) {
      const s = await open();
      const a = await ack(s, 'authenticate', { userId });
      if (!a || a.success !== true) throw new Error(`authenticate ${userId}: ${JSON.stringify(a)}`);
      for (const [r, roomName] of ROOMS.entries()) {
        if ((u + c + r) % 2 === 0) {
          const j = await ack(s, 'join-room', { roomName });
          if (!j || j.success !== true) throw new Error(`join-room ${roomName}: ${JSON.stringify(j)}`);
        }
      }
    }
  }
  await open();
  await open();
  console.log(`clients ready ${sockets.length}`);
}

const stop = () => {
  for (const s of sockets) s.disconnect();
  setTimeout(() => process.exit(0), 100);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

main().catch((err) => {
  console.error(`clients.mjs: ${err.message}`);
  for (const s of sockets) s.disconnect();
  process.exit(1);
});
// Stay alive (the sockets keep the event loop busy; this is a safety net).
setInterval(() => {}, 1 << 30);
