// SPEC §6 (shutdown): SIGTERM closes every live session cleanly, whether or
// not it has sent CONNECT and whatever its transport. (Sessions of bare
// Engine.IO apps and sockets on namespaces of the library API are configured
// from Rust only: tests/shutdown.rs covers those.)

import net from 'node:net';
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

describe('during shutdown (SIGTERM), while a client too slow to read keeps it waiting', () => {
  it('/ready answers 503 on a connection opened before, new connections are refused, and the process still exits within the 5 s bound', async () => {
    const server = await startServer({ SHARDS: 1 });
    try {
      // A member that stops reading while 15 MB of broadcasts are queued for
      // it: its close frame cannot leave, so shutdown waits (at most 5 s).
      const room = uid('stuck');
      const stuck = await connectAs(server.url, uid('stuck'));
      const ack = await new Promise((resolve) => stuck.emit('join-room', { roomName: room }, resolve));
      assert.equal(ack.success, true);
      stuck.io.engine.transport.ws._socket.pause();
      const filler = 'x'.repeat(256 * 1024);
      for (let n = 0; n < 60; n++) {
        const r = await fetch(`${server.url}/api/rooms/${room}/broadcast`, {
          method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ event: 'bulk', data: { n, filler } }),
        });
        assert.equal(r.status, 200);
      }
      // An HTTP connection kept alive from before the signal.
      const keptAlive = net.connect(server.port, '127.0.0.1');
      let received = '';
      keptAlive.on('data', (d) => { received += d.toString('latin1'); });
      keptAlive.on('error', () => {});
      await new Promise((resolve) => keptAlive.once('connect', resolve));
      const ask = async (path) => {
        const from = received.length;
        keptAlive.write(`GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`);
        for (let i = 0; i < 100 && !/\r\n\r\n\{[^}]*\}$/.test(received.slice(from)); i++) await sleep(20);
        return received.slice(from);
      };
      assert.match(await ask('/ready'), /^HTTP\/1\.1 200 [\s\S]*"status":"ready"/);
      /** The whole answer to a GET on the kept connection (by its content-length). */
      const askWhole = async (path) => {
        const from = received.length;
        keptAlive.write(`GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`);
        for (let i = 0; i < 250; i++) {
          const text = received.slice(from);
          const head = text.indexOf('\r\n\r\n');
          const length = /content-length: (\d+)/i.exec(text.slice(0, head));
          if (head >= 0 && length && text.length >= head + 4 + Number(length[1])) return text;
          await sleep(20);
        }
        return received.slice(from);
      };
      const closedForShutdown = (exposition) => {
        const line = exposition.split('\n').find((l) => l.startsWith('shardcast_connections_closed_total{reason="server_shutdown"} '));
        return line ? Number(line.split(' ').pop()) : undefined;
      };
      assert.equal(closedForShutdown(await askWhole('/metrics')), 0);
      // Two clients that read: closed at once by the shutdown, and counted.
      const readers = [await connectAs(server.url, uid('reader')), await connectAs(server.url, uid('reader'))];
      const readersClosed = readers.map((r) => new Promise((resolve) => r.once('disconnect', resolve)));

      const started = Date.now();
      server.child.kill('SIGTERM');
      let answer = '';
      for (let i = 0; i < 50 && !answer.startsWith('HTTP/1.1 503'); i++) {
        answer = await ask('/ready');
        if (!answer.startsWith('HTTP/1.1 503')) await sleep(20);
      }
      assert.match(answer, /^HTTP\/1\.1 503 [\s\S]*"status":"shutting down"/, `/ready during shutdown: ${answer.slice(0, 200)}`);
      assert.ok(server.exited === null, 'the broker is still shutting down (the stuck client holds it)');
      // While the stuck client holds the shutdown, the readers are gone, each
      // counted as closed for the server's shutdown.
      await within(Promise.all(readersClosed), 3000, 'the readers were not disconnected');
      let counted;
      for (let i = 0; i < 50 && counted !== 2; i++) {
        counted = closedForShutdown(await askWhole('/metrics'));
        if (counted !== 2) await sleep(20);
      }
      assert.equal(counted, 2, 'connections_closed_total{reason="server_shutdown"} during shutdown');
      const refused = await new Promise((resolve) => {
        const c = net.connect(server.port, '127.0.0.1');
        c.once('connect', () => { c.destroy(); resolve(false); });
        c.once('error', (e) => resolve(e.code));
      });
      assert.equal(refused, 'ECONNREFUSED', 'a new connection during shutdown is refused');
      const exited = await within(server.exitPromise, 7000, 'the server did not exit');
      const took = Date.now() - started;
      assert.deepEqual(exited, { code: 0, signal: null });
      // The 5 s grace, then the threads' ends and the process exit (about
      // 0.6 s here): the bound is the grace plus 2.5 s for a loaded machine.
      assert.ok(took >= 4900 && took < 7500, `exit took ${took} ms (bound: 5 s of grace)`);
      keptAlive.destroy();
      stuck.io.engine.transport.ws._socket.resume();
    } finally {
      await server.stop();
    }
  });
});
