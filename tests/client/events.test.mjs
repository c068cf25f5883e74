// SPEC §2 (client → server events, acks, error codes, validation) and
// SPEC §3 (server → client events and their payloads), in development mode.

import { describe, before, after } from 'node:test';
import {
  assert, it, startServer, connect, connectAs, emitWithAck, emitArgsWithAck, waitForEvent,
  waitForEventArgs, expectNoEvent, assertNoEvent, received, assertTimestamp, assertFailure,
  assertSuccess, uid, sleep, waitUntil,
  relayBarrier,
} from './helpers.mjs';

// Names (userId, roomName, custom event): non-empty strings of at most 128
// UTF-8 bytes without C0 control characters or DEL.
const BAD_NAMES = [
  ['an empty string', ''],
  ['129 ASCII bytes', 'a'.repeat(129)],
  ['129 UTF-8 bytes in 43 characters', '€'.repeat(43)],
  ['a NUL', 'a\u0000b'],
  ['a newline', 'a\nb'],
  ['a tab', 'a\tb'],
  ['U+001F', 'a\u001fb'],
  ['DEL', 'a\u007fb'],
  ['a number', 42],
  ['null', null],
  ['a boolean', true],
  ['an object', { name: 'x' }],
  ['an array', ['x']],
];

/** A unique name of exactly `bytes` UTF-8 bytes, padded with `ch` (1 or 3 bytes). */
function nameOfBytes(bytes, ch = 'b') {
  const base = uid('n');
  const chBytes = Buffer.byteLength(ch);
  let s = base;
  while (Buffer.byteLength(s) + chBytes <= bytes) s += ch;
  while (Buffer.byteLength(s) < bytes) s += 'b';
  assert.equal(Buffer.byteLength(s), bytes);
  return s;
}

const GOOD_NAMES = () => [
  ['exactly 128 ASCII bytes', nameOfBytes(128)],
  ['128 UTF-8 bytes with multi-byte characters', nameOfBytes(128, '€')],
  ['unicode and emoji', `${uid('café')}-🚀-東京`],
  ['spaces and punctuation', `${uid('a b')}.c:d/e#f`],
];

const NON_OBJECT_PAYLOADS = [
  ['no payload at all', undefined],
  ['a string', 'general'],
  ['a number', 7],
  ['an array', [{ roomName: 'general' }]],
  ['null', null],
  ['a boolean', true],
];

const SERVER_EVENT_NAMES = [
  'connected', 'authenticated', 'room-joined', 'room-left', 'user-joined', 'user-left',
  'private-message', 'message-sent', 'user-online', 'user-offline', 'pong', 'error',
];

const mentionsWord = (text, word) => new RegExp(`\\b${word}\\b`).test(text.replaceAll('custom-event', ''));

describe('events (SPEC §2–§3)', () => {
  let server;
  let url;
  before(async () => { server = await startServer({}); url = server.url; });
  after(async () => { await server?.stop(); });

  const authed = (prefix = 'u') => connectAs(url, uid(prefix));

  // -------------------------------------------------------------------------
  describe('connected', () => {
    it('is the first event, exactly once, with socketId === socket.id and an ISO timestamp', async () => {
      const s = await connect(url);
      const data = await waitForEvent(s, 'connected');
      assert.equal(data.socketId, s.id);
      assertTimestamp(data.timestamp, 'connected.timestamp');
      // The ping's ack leaves the same queue after anything the CONNECT
      // sent (a second `connected` included): no quiet window needed.
      await emitWithAck(s, 'ping');
      assert.equal(s.inbox.events[0].event, 'connected', 'connected must be the first event');
      assert.equal(received(s, 'connected').length, 1, 'connected must arrive exactly once');
    });

    it('gives every connection its own socket id', async () => {
      const socks = await Promise.all(Array.from({ length: 10 }, () => connect(url)));
      const ids = new Set(socks.map((s) => s.id));
      assert.equal(ids.size, 10);
      for (const s of socks) {
        const data = await waitForEvent(s, 'connected');
        assert.equal(data.socketId, s.id);
      }
    });
  });

  // -------------------------------------------------------------------------
  describe('authenticate', () => {
    it('acks { success, userId, socketId } and emits authenticated { userId, socketId, timestamp }', async () => {
      const s = await connect(url);
      const userId = uid('alice');
      const ack = await emitWithAck(s, 'authenticate', { userId });
      assertSuccess(ack, 'authenticate');
      assert.equal(ack.userId, userId);
      assert.equal(ack.socketId, s.id);
      const ev = await waitForEvent(s, 'authenticated');
      assert.equal(ev.userId, userId);
      assert.equal(ev.socketId, s.id);
      assertTimestamp(ev.timestamp, 'authenticated.timestamp');
    });

    it('accepts valid names: 128-byte, multi-byte, unicode, punctuation', async () => {
      for (const [what, userId] of GOOD_NAMES()) {
        const s = await connect(url);
        const ack = await emitWithAck(s, 'authenticate', { userId });
        assertSuccess(ack, `authenticate with ${what}`);
        assert.equal(ack.userId, userId, what);
        s.disconnect();
      }
    });

    it('rejects every invalid userId with VALIDATION_ERROR naming userId', async () => {
      const s = await connect(url);
      for (const [what, userId] of BAD_NAMES) {
        const ack = await emitWithAck(s, 'authenticate', { userId });
        assertFailure(ack, 'VALIDATION_ERROR', 'userId', `userId ${what}`);
      }
      assertFailure(await emitWithAck(s, 'authenticate', {}), 'VALIDATION_ERROR', 'userId');
      // Still unauthenticated after all of that.
      assertFailure(await emitWithAck(s, 'join-room', { roomName: uid('r') }), 'UNAUTHENTICATED');
      await expectNoEvent(s, 'authenticated', 100);
    });

    it('rejects non-object payloads with VALIDATION_ERROR', async () => {
      const s = await connect(url);
      for (const [what, payload] of NON_OBJECT_PAYLOADS) {
        const ack = await emitWithAck(s, 'authenticate', payload);
        assertFailure(ack, 'VALIDATION_ERROR', undefined, `payload ${what}`);
      }
    });

    it('re-authenticating as the same user succeeds; as another user is VALIDATION_ERROR and changes nothing', async () => {
      const alice = uid('alice');
      const mallory = uid('mallory');
      const s = await connectAs(url, alice);
      const again = await emitWithAck(s, 'authenticate', { userId: alice });
      assertSuccess(again, 're-authenticate as the same user');
      assert.equal(again.userId, alice);
      const other = await emitWithAck(s, 'authenticate', { userId: mallory });
      assertFailure(other, 'VALIDATION_ERROR', 'userId');
      // The connection is still alice's: a message to alice reaches it, mallory is offline.
      const bob = await authed('bob');
      assertSuccess(await emitWithAck(bob, 'private-message', { targetUserId: alice, message: 'still you?' }));
      const pm = await waitForEvent(s, 'private-message');
      assert.equal(pm.targetUserId, alice);
      assertFailure(await emitWithAck(bob, 'private-message', { targetUserId: mallory, message: 'x' }), 'USER_OFFLINE');
      // Messages sent from s are from alice.
      assertSuccess(await emitWithAck(s, 'private-message', { targetUserId: bob.userId, message: 'from me' }));
      const fromS = await waitForEvent(bob, 'private-message');
      assert.equal(fromS.fromUserId, alice);
    });
  });

  // -------------------------------------------------------------------------
  describe('UNAUTHENTICATED', () => {
    it('join-room, leave-room, private-message and custom-event require authentication (ack)', async () => {
      const target = await authed('target');
      const s = await connect(url);
      const room = uid('room');
      const cases = [
        ['join-room', { roomName: room }],
        ['leave-room', { roomName: room }],
        ['private-message', { targetUserId: target.userId, message: 'hi' }],
        ['custom-event', { event: 'chat', data: { x: 1 }, roomName: room }],
      ];
      for (const [event, payload] of cases) {
        const ack = await emitWithAck(s, event, payload);
        assertFailure(ack, 'UNAUTHENTICATED', undefined, event);
      }
      await expectNoEvent(target, 'private-message', 200);
    });

    it('without ack, an error event { event, code: UNAUTHENTICATED, message } is emitted', async () => {
      const s = await connect(url);
      for (const event of ['join-room', 'leave-room', 'private-message', 'custom-event']) {
        s.emit(event, { roomName: uid('r'), targetUserId: 'nobody', message: 'hi', event: 'chat', data: 1 });
        const err = await waitForEvent(s, 'error');
        assert.equal(err.event, event);
        assert.equal(err.code, 'UNAUTHENTICATED');
        assert.equal(typeof err.message, 'string');
        assert.ok(err.message.length > 0);
      }
    });

    it('ping does not require authentication', async () => {
      const s = await connect(url);
      assertSuccess(await emitWithAck(s, 'ping'), 'unauthenticated ping');
    });
  });

  // -------------------------------------------------------------------------
  describe('ping', () => {
    it('with no payload: ack { success, timestamp } and a pong { timestamp } event', async () => {
      const s = await connect(url);
      const ack = await emitWithAck(s, 'ping');
      assertSuccess(ack, 'ping');
      assertTimestamp(ack.timestamp, 'ping ack timestamp');
      const pong = await waitForEvent(s, 'pong');
      assertTimestamp(pong.timestamp, 'pong.timestamp');
    });

    it('accepts any payload', async () => {
      const s = await connect(url);
      for (const payload of ['x', 1, { a: 1 }, [1, 2], null, true, {}]) {
        const ack = await emitWithAck(s, 'ping', payload);
        assertSuccess(ack, `ping ${JSON.stringify(payload)}`);
        await waitForEvent(s, 'pong');
      }
    });

    it('without ack: one pong per ping, and no error', async () => {
      const s = await connect(url);
      for (let i = 0; i < 5; i++) s.emit('ping');
      await waitUntil(() => received(s, 'pong').length >= 5, 5000, () => `pongs: ${received(s, 'pong').length}`);
      await expectNoEvent(s, 'error', 200);
      assert.equal(received(s, 'pong').length, 5);
    });

    it('answers 300 pipelined pings, each ack to its own request', async () => {
      const s = await connect(url);
      const acks = await Promise.all(Array.from({ length: 300 }, (_, i) => emitWithAck(s, 'ping', { i }, 10000)));
      for (const ack of acks) assertSuccess(ack, 'pipelined ping');
    });
  });

  // -------------------------------------------------------------------------
  describe('join-room / leave-room', () => {
    it('join: ack { success, roomName, memberCount } and room-joined { roomName, memberCount, timestamp }', async () => {
      const s = await authed();
      const roomName = uid('room');
      const ack = await emitWithAck(s, 'join-room', { roomName });
      assertSuccess(ack, 'join-room');
      assert.equal(ack.roomName, roomName);
      assert.equal(ack.memberCount, 1);
      const ev = await waitForEvent(s, 'room-joined');
      assert.equal(ev.roomName, roomName);
      assert.equal(ev.memberCount, 1);
      assertTimestamp(ev.timestamp, 'room-joined.timestamp');
      // The joiner is not told about itself.
      await expectNoEvent(s, 'user-joined', 200);
    });

    it('accepts valid room names', async () => {
      const s = await authed();
      for (const [what, roomName] of GOOD_NAMES()) {
        const ack = await emitWithAck(s, 'join-room', { roomName });
        assertSuccess(ack, `join ${what}`);
        assert.equal(ack.roomName, roomName);
        assert.equal(ack.memberCount, 1);
      }
    });

    it('rejects invalid room names with VALIDATION_ERROR naming roomName (join and leave)', async () => {
      const s = await authed();
      for (const event of ['join-room', 'leave-room']) {
        for (const [what, roomName] of BAD_NAMES) {
          const ack = await emitWithAck(s, event, { roomName });
          assertFailure(ack, 'VALIDATION_ERROR', 'roomName', `${event} with ${what}`);
        }
        assertFailure(await emitWithAck(s, event, {}), 'VALIDATION_ERROR', 'roomName');
        for (const [what, payload] of NON_OBJECT_PAYLOADS) {
          assertFailure(await emitWithAck(s, event, payload), 'VALIDATION_ERROR', undefined, `${event} payload ${what}`);
        }
      }
      await expectNoEvent(s, 'room-joined', 100);
    });

    it('joining twice is idempotent: success, unchanged memberCount, nothing announced', async () => {
      const a = await authed('a');
      const b = await authed('b');
      const roomName = uid('room');
      assert.equal((await emitWithAck(a, 'join-room', { roomName })).memberCount, 1);
      assert.equal((await emitWithAck(b, 'join-room', { roomName })).memberCount, 2);
      await waitForEvent(a, 'user-joined', 5000, (d) => d.userId === b.userId);
      const again = await emitWithAck(b, 'join-room', { roomName });
      assertSuccess(again, 'second join');
      assert.equal(again.roomName, roomName);
      assert.equal(again.memberCount, 2);
      await expectNoEvent(a, 'user-joined', 400);
      // Still one membership: after one leave, b is out of the room.
      assertSuccess(await emitWithAck(b, 'leave-room', { roomName }));
      assertFailure(await emitWithAck(b, 'leave-room', { roomName }), 'NOT_IN_ROOM');
      const c = await authed('c');
      assert.equal((await emitWithAck(c, 'join-room', { roomName })).memberCount, 2);
    });

    it('leave: ack { success, roomName } and room-left { roomName, timestamp }', async () => {
      const s = await authed();
      const roomName = uid('room');
      await emitWithAck(s, 'join-room', { roomName });
      const ack = await emitWithAck(s, 'leave-room', { roomName });
      assertSuccess(ack, 'leave-room');
      assert.equal(ack.roomName, roomName);
      const ev = await waitForEvent(s, 'room-left');
      assert.equal(ev.roomName, roomName);
      assertTimestamp(ev.timestamp, 'room-left.timestamp');
    });

    it('leaving a room one is not in is NOT_IN_ROOM (never joined, already left, or a room of others)', async () => {
      const s = await authed();
      const other = await authed();
      const roomName = uid('room');
      assertFailure(await emitWithAck(s, 'leave-room', { roomName: uid('nowhere') }), 'NOT_IN_ROOM');
      await emitWithAck(other, 'join-room', { roomName });
      assertFailure(await emitWithAck(s, 'leave-room', { roomName }), 'NOT_IN_ROOM');
      await emitWithAck(s, 'join-room', { roomName });
      assertSuccess(await emitWithAck(s, 'leave-room', { roomName }));
      assertFailure(await emitWithAck(s, 'leave-room', { roomName }), 'NOT_IN_ROOM');
      // other saw exactly one user-left (for the one real leave).
      await waitForEvent(other, 'user-left', 5000, (d) => d.socketId === s.id);
      await expectNoEvent(other, 'user-left', 300);
    });

    it('room names are case-sensitive', async () => {
      const a = await authed();
      const b = await authed();
      const base = uid('Lobby');
      assert.equal((await emitWithAck(a, 'join-room', { roomName: base })).memberCount, 1);
      assert.equal((await emitWithAck(b, 'join-room', { roomName: base.toLowerCase() })).memberCount, 1);
    });
  });

  // -------------------------------------------------------------------------
  describe('private-message', () => {
    it('ack { success, messageId, timestamp }, message-sent to the sender, private-message to the target', async () => {
      const alice = await authed('alice');
      const bob = await authed('bob');
      const ack = await emitWithAck(alice, 'private-message', { targetUserId: bob.userId, message: 'Hello Bob', messageType: 'text' });
      assertSuccess(ack, 'private-message');
      assert.equal(typeof ack.messageId, 'string');
      assert.ok(ack.messageId.length > 0);
      assertTimestamp(ack.timestamp, 'private-message ack timestamp');

      const sent = await waitForEvent(alice, 'message-sent');
      assert.equal(sent.messageId, ack.messageId);
      assert.equal(sent.targetUserId, bob.userId);
      assertTimestamp(sent.timestamp, 'message-sent.timestamp');

      const pm = await waitForEvent(bob, 'private-message');
      assert.deepEqual(
        { messageId: pm.messageId, fromUserId: pm.fromUserId, targetUserId: pm.targetUserId, message: pm.message, messageType: pm.messageType },
        { messageId: ack.messageId, fromUserId: alice.userId, targetUserId: bob.userId, message: 'Hello Bob', messageType: 'text' },
      );
      assertTimestamp(pm.timestamp, 'private-message.timestamp');
      // The sender does not get its own private-message, the target gets no message-sent.
      await expectNoEvent(alice, 'private-message', 200);
      assertNoEvent(bob, 'message-sent');
    });

    it('messageType defaults to text; image, file and notification are accepted', async () => {
      const alice = await authed('alice');
      const bob = await authed('bob');
      assertSuccess(await emitWithAck(alice, 'private-message', { targetUserId: bob.userId, message: 'no type' }));
      assert.equal((await waitForEvent(bob, 'private-message')).messageType, 'text');
      for (const messageType of ['text', 'image', 'file', 'notification']) {
        const ack = await emitWithAck(alice, 'private-message', { targetUserId: bob.userId, message: `a ${messageType}`, messageType });
        assertSuccess(ack, messageType);
        const pm = await waitForEvent(bob, 'private-message');
        assert.equal(pm.messageType, messageType);
        assert.equal(pm.message, `a ${messageType}`);
        assert.equal(pm.messageId, ack.messageId);
      }
    });

    it('message may be any JSON value but null and the empty string (rich objects, arrays, numbers, booleans), delivered unchanged', async () => {
      const alice = await authed('alice');
      const bob = await authed('bob');
      const values = [
        { text: 'hi', attachments: [{ url: 'x' }] },
        { text: 'nested', meta: { mentions: ['u1', 'u2'], edited: false, score: 1.5, reply: null }, emoji: '🚀' },
        [1, 'two', { three: 3 }, [4], null, true],
        42, 0, -1.5, 1e21,
        true, false,
        {}, [],
        ' ', '0',
      ];
      for (const message of values) {
        const ack = await emitWithAck(alice, 'private-message', { targetUserId: bob.userId, message });
        assertSuccess(ack, `message ${JSON.stringify(message)}`);
        const pm = await waitForEvent(bob, 'private-message');
        assert.equal(pm.messageId, ack.messageId, `message ${JSON.stringify(message)}: messageId`);
        assert.deepEqual(pm.message, message, `message ${JSON.stringify(message)} must be delivered unchanged`);
        assert.equal(pm.messageType, 'text', `message ${JSON.stringify(message)}: messageType defaults to text`);
      }
      // With an explicit messageType too.
      const rich = { text: 'see attached', attachments: [{ url: 'https://example.com/a.png', size: 1024 }] };
      assertSuccess(await emitWithAck(alice, 'private-message', { targetUserId: bob.userId, message: rich, messageType: 'image' }));
      const pm = await waitForEvent(bob, 'private-message');
      assert.deepEqual([pm.message, pm.messageType], [rich, 'image']);
      assert.equal(received(alice, 'message-sent').length, values.length + 1, 'one message-sent per accepted message');
    });

    it('every message gets a distinct messageId', async () => {
      const alice = await authed('alice');
      const bob = await authed('bob');
      const acks = await Promise.all(Array.from({ length: 50 }, (_, i) => emitWithAck(alice, 'private-message', { targetUserId: bob.userId, message: `m${i}` })));
      const ids = new Set(acks.map((a) => a.messageId));
      assert.equal(ids.size, 50);
    });

    it('delivers the message text exactly (unicode, 10 kB) and in order', async () => {
      const alice = await authed('alice');
      const bob = await authed('bob');
      const texts = ['héllo wörld 🚀 东京', 'x'.repeat(10000), 'line1\nline2\t"quoted"\\', 'data:image/png;base64,iVBORw0KGgo='];
      for (const message of texts) {
        assertSuccess(await emitWithAck(alice, 'private-message', { targetUserId: bob.userId, message }));
      }
      for (const message of texts) {
        const pm = await waitForEvent(bob, 'private-message');
        assert.equal(pm.message, message);
      }
    });

    it('USER_OFFLINE for a user with no live connection (never seen, or gone)', async () => {
      const alice = await authed('alice');
      assertFailure(await emitWithAck(alice, 'private-message', { targetUserId: uid('ghost'), message: 'hi' }), 'USER_OFFLINE');
      const bob = await authed('bob');
      assertSuccess(await emitWithAck(alice, 'private-message', { targetUserId: bob.userId, message: 'hi' }));
      bob.disconnect();
      await waitForEvent(alice, 'user-offline', 5000, (d) => d.userId === bob.userId);
      assertFailure(await emitWithAck(alice, 'private-message', { targetUserId: bob.userId, message: 'still there?' }), 'USER_OFFLINE');
      // No message-sent for failed sends.
      await sleep(100);
      assert.equal(received(alice, 'message-sent').length, 1);
    });

    it('rejects invalid targetUserId, message and messageType with VALIDATION_ERROR naming the field', async () => {
      const alice = await authed('alice');
      const bob = await authed('bob');
      for (const [what, targetUserId] of BAD_NAMES) {
        const ack = await emitWithAck(alice, 'private-message', { targetUserId, message: 'hi' });
        assertFailure(ack, 'VALIDATION_ERROR', 'targetUserId', `targetUserId ${what}`);
      }
      assertFailure(await emitWithAck(alice, 'private-message', { message: 'hi' }), 'VALIDATION_ERROR', 'targetUserId');

      for (const [what, payload] of [
        ['empty message', { targetUserId: bob.userId, message: '' }],
        ['missing message', { targetUserId: bob.userId }],
        ['null message', { targetUserId: bob.userId, message: null }],
      ]) {
        const ack = await emitWithAck(alice, 'private-message', payload);
        assertFailure(ack, 'VALIDATION_ERROR', undefined, what);
        assert.ok(mentionsWord(ack.error, 'message'), `${what}: error should name "message": ${JSON.stringify(ack)}`);
      }

      // null is not "absent": it is refused like every value outside the four (issue 10).
      for (const messageType of ['video', 'TEXT', '', 5, ['text'], { type: 'text' }, null, false]) {
        const ack = await emitWithAck(alice, 'private-message', { targetUserId: bob.userId, message: 'hi', messageType });
        assertFailure(ack, 'VALIDATION_ERROR', 'messageType', `messageType ${JSON.stringify(messageType)}`);
      }

      for (const [what, payload] of NON_OBJECT_PAYLOADS) {
        assertFailure(await emitWithAck(alice, 'private-message', payload), 'VALIDATION_ERROR', undefined, `payload ${what}`);
      }
      await expectNoEvent(bob, 'private-message', 300);
      assertNoEvent(alice, 'message-sent');
    });
  });

  // -------------------------------------------------------------------------
  describe('custom-event', () => {
    async function roomOf(n) {
      const roomName = uid('room');
      const socks = [];
      for (let i = 0; i < n; i++) {
        const s = await authed(`m${i}`);
        assertSuccess(await emitWithAck(s, 'join-room', { roomName }));
        socks.push(s);
      }
      return { roomName, socks };
    }

    it('relays event/data to the other members, not to the sender or to non-members; ack { success }', async () => {
      const { roomName, socks: [a, b, c] } = await roomOf(3);
      const outsider = await authed('outsider');
      const data = { text: 'hi', nested: { list: [1, 'two', null, true] } };
      const ack = await emitWithAck(a, 'custom-event', { event: 'chat', data, roomName });
      assertSuccess(ack, 'custom-event');
      for (const r of [b, c]) {
        const args = await waitForEventArgs(r, 'chat');
        assert.deepEqual(args[0], data, 'first argument is data as sent');
      }
      await expectNoEvent(a, 'chat', 300);
      assertNoEvent(outsider, 'chat');
    });

    it('relays any JSON data unchanged', async () => {
      const { roomName, socks: [a, b] } = await roomOf(2);
      const values = ['a string', 42, 3.5, -1, true, false, null, [], {}, [1, [2, [3]]], { 'ключ': 'значение', emoji: '🚀' }];
      for (const data of values) {
        assertSuccess(await emitWithAck(a, 'custom-event', { event: 'data-test', data, roomName }));
      }
      for (const data of values) {
        assert.deepEqual(await waitForEvent(b, 'data-test'), data);
      }
    });

    it('without ack it is relayed too, and no error event comes back', async () => {
      const { roomName, socks: [a, b] } = await roomOf(2);
      a.emit('custom-event', { event: 'fire-and-forget', data: { n: 1 }, roomName });
      assert.deepEqual(await waitForEvent(b, 'fire-and-forget'), { n: 1 });
      await expectNoEvent(a, 'error', 200);
    });

    it('relays valid event names (128 bytes, unicode)', async () => {
      const { roomName, socks: [a, b] } = await roomOf(2);
      for (const [what, event] of GOOD_NAMES()) {
        assertSuccess(await emitWithAck(a, 'custom-event', { event, data: what, roomName }), what);
        assert.equal(await waitForEvent(b, event), what);
      }
    });

    it('NOT_IN_ROOM when the sender is not a member (room of others, unknown room, after leaving)', async () => {
      const { roomName, socks: [a, b] } = await roomOf(2);
      const outsider = await authed('outsider');
      assertFailure(await emitWithAck(outsider, 'custom-event', { event: 'chat', data: 1, roomName }), 'NOT_IN_ROOM');
      assertFailure(await emitWithAck(outsider, 'custom-event', { event: 'chat', data: 1, roomName: uid('nowhere') }), 'NOT_IN_ROOM');
      assertSuccess(await emitWithAck(a, 'leave-room', { roomName }));
      assertFailure(await emitWithAck(a, 'custom-event', { event: 'chat', data: 1, roomName }), 'NOT_IN_ROOM');
      await expectNoEvent(b, 'chat', 300);
    });

    it('rejects invalid event names and server event names with VALIDATION_ERROR naming event', async () => {
      const { roomName, socks: [a, b] } = await roomOf(2);
      for (const [what, event] of BAD_NAMES) {
        const ack = await emitWithAck(a, 'custom-event', { event, data: 1, roomName });
        assertFailure(ack, 'VALIDATION_ERROR', undefined, `event ${what}`);
        assert.ok(mentionsWord(ack.error, 'event'), `${what}: error should name "event": ${JSON.stringify(ack)}`);
      }
      const missing = await emitWithAck(a, 'custom-event', { data: 1, roomName });
      assertFailure(missing, 'VALIDATION_ERROR');
      assert.ok(mentionsWord(missing.error, 'event'), JSON.stringify(missing));
      for (const event of SERVER_EVENT_NAMES) {
        const ack = await emitWithAck(a, 'custom-event', { event, data: { spoof: true }, roomName });
        assertFailure(ack, 'VALIDATION_ERROR', undefined, `event ${event}`);
        assert.ok(mentionsWord(ack.error, 'event'), `${event}: error should name "event": ${JSON.stringify(ack)}`);
      }
      // A relay sent after them reaches b after any of them would have.
      await relayBarrier(a, roomName, [b]);
      for (const event of SERVER_EVENT_NAMES) {
        assertNoEvent(b, event, (d) => d && d.spoof === true, 'a spoofed server event was relayed');
      }
    });

    it('refuses Socket.IO reserved names (connect, disconnect, …) so that receivers are not knocked off', async () => {
      // socket.io-client treats an incoming "disconnect"/"connect"/… event as a
      // protocol error and drops the connection; relaying one would let any
      // member disconnect the whole room (SPEC §1: one client never affects others).
      const { roomName, socks: [a, b] } = await roomOf(2);
      for (const event of ['connect', 'connect_error', 'disconnect', 'disconnecting', 'newListener', 'removeListener']) {
        const ack = await emitWithAck(a, 'custom-event', { event, data: 1, roomName });
        assertFailure(ack, 'VALIDATION_ERROR', undefined, `event ${event}`);
      }
      await relayBarrier(a, roomName, [b]);
      assert.equal(b.connected, true, `receiver was disconnected: ${b.disconnectReason}`);
      assertSuccess(await emitWithAck(a, 'custom-event', { event: 'still-here', data: 1, roomName }));
      assert.equal(await waitForEvent(b, 'still-here'), 1);
    });

    it('rejects an invalid or missing roomName with VALIDATION_ERROR naming roomName, and non-object payloads', async () => {
      const { socks: [a] } = await roomOf(1);
      for (const [what, roomName] of BAD_NAMES) {
        const ack = await emitWithAck(a, 'custom-event', { event: 'chat', data: 1, roomName });
        assertFailure(ack, 'VALIDATION_ERROR', 'roomName', `roomName ${what}`);
      }
      assertFailure(await emitWithAck(a, 'custom-event', { event: 'chat', data: 1 }), 'VALIDATION_ERROR', 'roomName');
      for (const [what, payload] of NON_OBJECT_PAYLOADS) {
        assertFailure(await emitWithAck(a, 'custom-event', payload), 'VALIDATION_ERROR', undefined, `payload ${what}`);
      }
    });
  });

  // -------------------------------------------------------------------------
  describe('UNKNOWN_EVENT', () => {
    const NAMES = ['frobnicate', 'error', '__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf',
      'prototype', 'Authenticate', 'join_room', 'connected', 'pong', 'user-online'];

    it('any other event name is UNKNOWN_EVENT (ack)', async () => {
      const s = await authed();
      for (const name of NAMES) {
        assertFailure(await emitWithAck(s, name, { roomName: 'x' }), 'UNKNOWN_EVENT', undefined, name);
      }
      // Also before authentication, and the connection keeps working.
      const anon = await connect(url);
      assertFailure(await emitWithAck(anon, 'frobnicate', {}), 'UNKNOWN_EVENT');
      assertFailure(await emitWithAck(anon, '__proto__', {}), 'UNKNOWN_EVENT');
      assertSuccess(await emitWithAck(s, 'ping'));
      assertSuccess(await emitWithAck(anon, 'ping'));
    });

    it('without ack: error event { event: <name>, code: UNKNOWN_EVENT, message }', async () => {
      const s = await authed();
      for (const name of NAMES) {
        s.emit(name, { x: 1 });
        const err = await waitForEvent(s, 'error');
        assert.equal(err.event, name);
        assert.equal(err.code, 'UNKNOWN_EVENT');
        assert.equal(typeof err.message, 'string');
        assert.ok(err.message.length > 0);
      }
    });
  });

  // -------------------------------------------------------------------------
  describe('error event (failed request without ack)', () => {
    it('carries { event, code, message } for each code', async () => {
      const s = await authed();
      const cases = [
        ['join-room', { roomName: '' }, 'VALIDATION_ERROR'],
        ['authenticate', { userId: 'a\u0000b' }, 'VALIDATION_ERROR'],
        ['private-message', { targetUserId: s.userId, message: 'x', messageType: 'video' }, 'VALIDATION_ERROR'],
        ['leave-room', { roomName: uid('nowhere') }, 'NOT_IN_ROOM'],
        ['custom-event', { event: 'chat', data: 1, roomName: uid('nowhere') }, 'NOT_IN_ROOM'],
        ['private-message', { targetUserId: uid('ghost'), message: 'x' }, 'USER_OFFLINE'],
        ['no-such-event', {}, 'UNKNOWN_EVENT'],
      ];
      for (const [event, payload, code] of cases) {
        s.emit(event, payload);
        const err = await waitForEvent(s, 'error');
        assert.deepEqual({ event: err.event, code: err.code }, { event, code }, JSON.stringify(err));
        assert.equal(typeof err.message, 'string');
        assert.ok(err.message.length > 0, 'error.message must not be empty');
      }
      s.emit('join-room', 42);
      const err = await waitForEvent(s, 'error');
      assert.deepEqual({ event: err.event, code: err.code }, { event: 'join-room', code: 'VALIDATION_ERROR' });
    });

    it('is not emitted when the client asked for an ack', async () => {
      const s = await authed();
      assertFailure(await emitWithAck(s, 'join-room', { roomName: '' }), 'VALIDATION_ERROR');
      assertFailure(await emitWithAck(s, 'leave-room', { roomName: uid('nowhere') }), 'NOT_IN_ROOM');
      assertFailure(await emitWithAck(s, 'private-message', { targetUserId: uid('ghost'), message: 'x' }), 'USER_OFFLINE');
      assertFailure(await emitWithAck(s, 'nope', {}), 'UNKNOWN_EVENT');
      await expectNoEvent(s, 'error', 300);
    });

    it('a failed request leaves the connection usable', async () => {
      const s = await authed();
      for (let i = 0; i < 20; i++) s.emit('join-room', { roomName: '' });
      await waitUntil(() => received(s, 'error').length === 20, 5000, () => `errors: ${received(s, 'error').length}`);
      const roomName = uid('room');
      const ack = await emitWithAck(s, 'join-room', { roomName });
      assertSuccess(ack);
      assert.equal(s.connected, true);
    });
  });

  // -------------------------------------------------------------------------
  describe('acks', () => {
    it('each ack carries exactly one object (success and failure)', async () => {
      const s = await authed();
      // emitArgsWithAck rejects if the ack does not have exactly one argument.
      const ok = await emitArgsWithAck(s, 'join-room', [{ roomName: uid('r') }]);
      assertSuccess(ok);
      const bad = await emitArgsWithAck(s, 'join-room', [{ roomName: '' }]);
      assertFailure(bad, 'VALIDATION_ERROR');
    });
  });
});
