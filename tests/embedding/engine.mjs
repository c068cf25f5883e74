// The official engine.io-client against the bare Engine.IO application
// that tests/embedding.rs serves at /engine.io/ (it answers text in upper
// case and binary reversed), over one transport setting:
//   node engine.mjs <url> <websocket|polling|default>
// Prints one JSON object of what it saw; the Rust test asserts on it.
import { once, plain, report, require, run } from './lib.mjs';

const { Socket } = require('engine.io-client');

const [url, mode] = process.argv.slice(2);
const transports = mode === 'default' ? ['polling', 'websocket'] : [mode];

run(async () => {
  const socket = new Socket(url, { path: '/engine.io/', transports });
  await once(socket, 'open');
  if (mode === 'default') {
    // Long-polling first, then the upgrade to WebSocket.
    await once(socket, 'upgrade');
  }
  const answers = [];
  for (const message of ['hello', Buffer.from([1, 2, 3]), 'Grüße', Buffer.from([0, 255, 128])]) {
    const answer = once(socket, 'message');
    socket.send(message);
    answers.push(plain((await answer)[0]));
  }
  report({ transport: socket.transport.name, answers });
  socket.close();
});
