// SPEC §6 (shutdown): SIGTERM closes every live session cleanly, whether or
// not it has sent CONNECT and whatever its transport. (Sessions of bare
// Engine.IO apps and sockets on namespaces of the library API are configured
// from Rust only: tests/shutdown.rs covers those.)

import { describe } from 'node:test';
import { assert, it, startServer, connectAs, rawConnect, uid, sleep } from './helpers.mjs';
import { openPolling, showRes } from './polling-helpers.mjs';

/** `promise`, or a rejection after `ms` (the timer does not outlive it). */
function within(promise, ms, what) {
  let timer;
  const late = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} within ${ms} ms`)), ms); });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

describe('shutdown (SIGTERM) closes every kind of session', () => {
  it('a WebSocket without CONNECT and a connected socket.io-client get close code 1001, a polling session gets the close packet on its pending GET, the process exits within 5 s', async () => {
    const server = await startServer({ SHARDS: 2 });
    try {
      // (1) A raw WebSocket session that never sent a Socket.IO CONNECT.
      const silent = await rawConnect(server, { autoPong: true });
      // (2) A connected socket.io-client socket (WebSocket).
      const socket = await connectAs(server.url, uid('term'));
      const disconnected = new Promise((resolve) => {
        socket.once('disconnect', (reason, details) => resolve({ reason, code: details?.context?.code }));
      });
      // (3) A long-polling session (no CONNECT either), its GET waiting.
      const polling = await openPolling(server);
      const pending = polling.get({ timeoutMs: 8000 }).catch((e) => ({ status: 'error', text: e.message }));
      await sleep(200);

      const started = Date.now();
      server.child.kill('SIGTERM');
      const [silentClose, socketClose, poll, exited] = await Promise.all([
        silent.waitClosed(6000),
        within(disconnected, 6000, 'the socket.io-client socket was not disconnected'),
        pending,
        within(server.exitPromise, 7000, 'the server did not exit'),
      ]);
      const took = Date.now() - started;

      assert.deepEqual(
        { code: silentClose.code, reason: silentClose.reason },
        { code: 1001, reason: 'server shutting down' },
        'the WebSocket that never sent CONNECT gets the 1001 close frame',
      );
      assert.deepEqual(socketClose, { reason: 'transport close', code: 1001 }, 'the connected socket gets the 1001 close frame');
      assert.equal(poll.status, 200, `the pending GET is answered: ${poll.status === 'error' ? poll.text : showRes(poll)}`);
      assert.deepEqual(poll.packets, ['1'], `the pending GET carries the close packet: ${showRes(poll)}`);
      assert.deepEqual(exited, { code: 0, signal: null }, `exit after SIGTERM: ${JSON.stringify(exited)}`);
      assert.ok(took < 5500, `exit took ${took} ms`);
    } finally {
      await server.stop();
    }
  });
});
