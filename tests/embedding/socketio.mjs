// The official socket.io-client against the Rust handlers of the `/echo`
// namespace that tests/embedding.rs serves, over one transport setting:
//   node socketio.mjs <url> <websocket|polling|default>
// Prints one JSON object of what it saw; the Rust test asserts on it.
import { once, plain, report, require, run, WAIT_MS } from './lib.mjs';

const { io } = require('socket.io-client');
const WebSocket = require('ws');

const [url, mode] = process.argv.slice(2);
const transports = mode === 'default' ? undefined : [mode];
const options = { transports, forceNew: true, reconnection: false };

run(async () => {
  const out = {};
  const echo = io(`${url}/echo`, { ...options, auth: { token: 'abc' } });
  // Registered before the connection opens: the handler emits at once.
  const welcome = once(echo, 'welcome');
  const [auth, id] = await welcome;
  out.welcome = { auth, idIsTheSocketId: id === echo.id };

  const ask = (...args) => echo.timeout(WAIT_MS).emitWithAck(...args);
  // Every argument of the ack (emitWithAck gives the first only).
  const askAll = (...args) => new Promise((resolve, reject) => {
    echo.timeout(WAIT_MS).emit(...args, (error, ...answer) => (error ? reject(error) : resolve(answer)));
  });
  out.sum = await ask('sum', 1, 2, 39);
  out.describe = await ask('describe', { name: 'file', file: Buffer.from([1, 2, 3]) }, Buffer.from([4, 5]), 'text');
  out.echoAck = plain(await askAll('echo-ack', { a: Buffer.from([9, 8, 7]) }, [Buffer.from('xy')], 'plain'));
  const back = once(echo, 'echo-back');
  echo.emit('echo', Buffer.from([0, 255]), { nested: [Buffer.from([1])] });
  out.echoBack = plain(await back);
  const binary = once(echo, 'binary');
  echo.emit('send-binary');
  out.binary = plain(await binary);

  // An event no handler listens to is ignored: its ack never comes, and the
  // ack of the next event (answered in order) proves the first was read.
  let unknownAcked = false;
  echo.emit('nobody-listens', 1, () => { unknownAcked = true; });
  out.afterUnknown = { sum: await ask('sum', 5), unknownAcked };

  if (mode === 'default') {
    // By now the upgrade has happened (or the check below fails).
    out.transport = echo.io.engine.transport.name;
  }
  echo.disconnect();

  // A namespace nobody serves.
  const nope = io(`${url}/nope`, options);
  const [error] = await once(nope, 'connect_error');
  out.unknownNamespace = error.message;
  nope.disconnect();

  // The built-in namespace beside the custom one.
  const main = io(url, options);
  const [connected] = await once(main, 'connected');
  const authenticated = await main.timeout(WAIT_MS).emitWithAck('authenticate', { userId: `embed-${mode}` });
  out.builtin = { socketIdMatches: connected.socketId === main.id, authenticated: authenticated.success, userId: authenticated.userId };
  main.disconnect();

  // A placeholder that points at no attachment, written by hand (no client
  // would): the server ends the session as a protocol error, and the
  // handler never sees it.
  if (mode === 'websocket') {
    const ws = new WebSocket(`${url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`);
    const texts = [];
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      const text = data.toString();
      texts.push(text);
      if (text.startsWith('0')) ws.send('40/echo,');
      if (text.startsWith('40/echo,')) {
        ws.send('451-/echo,["echo",{"_placeholder":true,"num":3}]');
        ws.send(Buffer.from([7]));
      }
    });
    const [code] = await once(ws, 'close');
    out.placeholderNowhere = { code, echoed: texts.some((t) => t.includes('echo-back')) };
  }
  report(out);
});
