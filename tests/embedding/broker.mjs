// Two official socket.io-client sockets on the built-in namespace for the
// Broker handle test of tests/embedding.rs:
//   node broker.mjs <url> <websocket|polling>
// alice joins room `news`, bob does not. Prints `{ ready: { alice, bob } }`
// (the socket ids) once both are set up, then records every `seq-*` event
// each receives until `done`, and prints `{ received: { alice: [...], bob: [...] } }`.
import { once, report, require, run, WAIT_MS } from './lib.mjs';

const { io } = require('socket.io-client');

const [url, mode] = process.argv.slice(2);
const options = { transports: [mode], forceNew: true, reconnection: false };

async function user(name, room) {
  const socket = io(url, options);
  await once(socket, 'connected');
  const received = [];
  socket.onAny((event, data) => {
    if (event.startsWith('seq-') || event === 'done') received.push([event, data]);
  });
  const auth = await socket.timeout(WAIT_MS).emitWithAck('authenticate', { userId: name });
  if (!auth.success) throw new Error(`authenticate: ${JSON.stringify(auth)}`);
  if (room) {
    const joined = await socket.timeout(WAIT_MS).emitWithAck('join-room', { roomName: room });
    if (!joined.success) throw new Error(`join-room: ${JSON.stringify(joined)}`);
  }
  const done = new Promise((resolve, reject) => {
    // The Rust side sends `done` last; generous, since it publishes thousands first.
    const timer = setTimeout(() => reject(new Error(`${name}: no done within ${6 * WAIT_MS} ms`)), 6 * WAIT_MS);
    socket.on('done', () => { clearTimeout(timer); resolve(); });
  });
  return { socket, received, done };
}

run(async () => {
  const alice = await user('alice', 'news');
  const bob = await user('bob', null);
  report({ ready: { alice: alice.socket.id, bob: bob.socket.id } });
  await Promise.all([alice.done, bob.done]);
  report({ received: { alice: alice.received, bob: bob.received } });
  alice.socket.disconnect();
  bob.socket.disconnect();
});
