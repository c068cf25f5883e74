// Smoke check for a compare server (or shardcast): the three events answer
// with shardcast's ack shapes and custom-event reaches the room except the
// sender. Usage: node check.mjs http://127.0.0.1:PORT
import { io } from 'socket.io-client';

const url = process.argv[2] ?? 'http://127.0.0.1:3000';
const fail = (msg) => {
  console.error(`FAIL ${url}: ${msg}`);
  process.exit(1);
};
const timer = setTimeout(() => fail('timed out'), 10_000);

const connect = () =>
  new Promise((resolve, reject) => {
    const s = io(url, { transports: ['websocket'], reconnection: false, forceNew: true });
    s.once('connect', () => resolve(s));
    s.once('connect_error', reject);
  });
const call = (s, event, payload) => s.timeout(5000).emitWithAck(event, payload);
const expect = (cond, msg) => {
  if (!cond) fail(msg);
};

const a = await connect();
const b = await connect();
const authA = await call(a, 'authenticate', { userId: 'alice' });
expect(authA.success === true && authA.userId === 'alice' && authA.socketId === a.id, `authenticate ack ${JSON.stringify(authA)}`);
await call(b, 'authenticate', { userId: 'bob' });
const joinA = await call(a, 'join-room', { roomName: 'r1' });
expect(joinA.success === true && joinA.roomName === 'r1' && joinA.memberCount === 1, `join-room ack ${JSON.stringify(joinA)}`);
const joinB = await call(b, 'join-room', { roomName: 'r1' });
expect(joinB.memberCount === 2, `second join-room ack ${JSON.stringify(joinB)}`);

let echoed = false;
a.on('bench', () => (echoed = true));
const received = new Promise((resolve) => b.once('bench', resolve));
const relay = await call(a, 'custom-event', { event: 'bench', data: { t: 1, s: 'x' }, roomName: 'r1' });
expect(relay.success === true, `custom-event ack ${JSON.stringify(relay)}`);
const got = await received;
expect(got && got.t === 1 && got.s === 'x', `relayed data ${JSON.stringify(got)}`);
await new Promise((r) => setTimeout(r, 200));
expect(!echoed, 'the sender received its own custom-event');

a.close();
b.close();
clearTimeout(timer);
console.log(`ok ${url}: authenticate, join-room, custom-event`);
