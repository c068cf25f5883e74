// The slow-consumer policy of the README, end to end (SPEC §8: a slow client
// never stalls its shard): a client that stops reading gets its broadcasts
// dropped once its queue (OUTBOX_LIMIT frames) is full, and is then
// disconnected; both are counted (messages_dropped_total{reason="slow_consumer"},
// connections_closed_total{reason="slow_consumer"}); a reading client in the
// same room gets every broadcast, in order, meanwhile.

import { describe, before, after } from 'node:test';
import { assert, it, startServer, connectAs, emitWithAck, assertSuccess, uid, waitUntil } from './helpers.mjs';

const metric = async (server, name, reason) => {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{reason="${reason}"} `));
  return line ? Number(line.split(' ').pop()) : 0;
};

describe('slow consumers (OUTBOX_LIMIT=16)', () => {
  let server;
  before(async () => { server = await startServer({ OUTBOX_LIMIT: 16, SHARDS: 2 }); });
  after(() => server.stop());

  it('a client that stops reading is dropped from broadcasts, then disconnected; a reading one gets everything', async () => {
    const room = uid('slow');
    const stuck = await connectAs(server.url, uid('stuck'), { transports: ['websocket'] });
    const reader = await connectAs(server.url, uid('reader'), { transports: ['websocket'] });
    for (const s of [stuck, reader]) assertSuccess(await emitWithAck(s, 'join-room', { roomName: room }));
    const stuckId = stuck.id;
    const droppedBefore = await metric(server, 'shardcast_messages_dropped_total', 'slow_consumer');
    const closedBefore = await metric(server, 'shardcast_connections_closed_total', 'slow_consumer');

    // The stuck client's process stops reading its socket: the kernel's
    // buffers fill (256 KiB events: 50 MB in all, past any loopback buffering), then its queue on the server.
    stuck.io.engine.transport.ws._socket.pause();
    const got = [];
    reader.on('bulk', (d) => got.push(d.n));
    const filler = 'x'.repeat(256 * 1024);
    const COUNT = 200;
    for (let n = 0; n < COUNT; n++) {
      const r = await fetch(`${server.url}/api/rooms/${room}/broadcast`, {
        method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ event: 'bulk', data: { n, filler } }),
      });
      assert.equal(r.status, 200);
    }
    await waitUntil(() => got.length === COUNT, 15000, () => `reader has ${got.length} of ${COUNT}`);
    assert.deepEqual(got, Array.from({ length: COUNT }, (_, n) => n), 'the reading member got every broadcast, in order');

    // The stuck one overflowed: drops counted, then it was cut off.
    await waitUntil(async () => (await metric(server, 'shardcast_connections_closed_total', 'slow_consumer')) === closedBefore + 1,
      10000, () => 'connections_closed_total{reason="slow_consumer"} did not grow by 1');
    assert.ok((await metric(server, 'shardcast_messages_dropped_total', 'slow_consumer')) > droppedBefore, 'drops counted');
    const connections = await (await fetch(`${server.url}/api/connections`)).json();
    assert.ok(!connections.connections.some((c) => c.socketId === stuckId), 'the stuck socket is gone from the tables');
    // The reader is untouched.
    assertSuccess(await emitWithAck(reader, 'ping', {}));
    stuck.io.engine.transport.ws._socket.resume();
  });
});
