// A user with several connections; presence (user-online / user-offline) and
// PRESENCE_EVENTS=off. SPEC §2 (private-message), §3 (presence events).

import { describe, before, after } from 'node:test';
import {
  assert, it, startServer, connect, connectAs, emitWithAck, waitForEvent, expectNoEvent,
  assertNoEvent, received, assertTimestamp, assertFailure, assertSuccess, uid, isIssuedUid, sleep,
} from './helpers.mjs';

const isUser = (userId) => (d) => d && d.userId === userId;

describe('a user with several connections (presence on, the default)', () => {
  let server;
  let url;
  before(async () => { server = await startServer({}); url = server.url; });
  after(async () => { await server?.stop(); });

  it('user-online only when the first connection authenticates, to every authenticated connection incl. its own', async () => {
    const observer = await connectAs(url, uid('observer'));
    const anon = await connect(url); // never authenticates
    const alice = uid('alice');

    const a1 = await connectAs(url, alice);
    const online = await waitForEvent(observer, 'user-online', 5000, isUser(alice));
    assertTimestamp(online.timestamp, 'user-online.timestamp');
    const own = await waitForEvent(a1, 'user-online', 5000, isUser(alice));
    assertTimestamp(own.timestamp);

    const a2 = await connectAs(url, alice);
    const a3 = await connectAs(url, alice);
    // Re-authenticating an already authenticated connection as the same user is no new presence either.
    assertSuccess(await emitWithAck(a2, 'authenticate', { userId: alice }));
    await sleep(400);
    assert.equal(received(observer, 'user-online', isUser(alice)).length, 1, 'observer: one user-online for alice');
    assert.equal(received(a1, 'user-online', isUser(alice)).length, 1, 'a1: one user-online for alice');
    assertNoEvent(a2, 'user-online', isUser(alice), 'a2 is not her first connection');
    assertNoEvent(a3, 'user-online', isUser(alice), 'a3 is not her first connection');
    assert.equal(received(anon, 'user-online').length, 0, 'unauthenticated connections get no presence events');

    // user-offline only when the last one goes.
    a1.disconnect();
    a2.disconnect();
    await expectNoEvent(observer, 'user-offline', 500, isUser(alice));
    assertNoEvent(a3, 'user-offline', isUser(alice));
    a3.disconnect();
    const offline = await waitForEvent(observer, 'user-offline', 5000, isUser(alice));
    assertTimestamp(offline.timestamp, 'user-offline.timestamp');
    await expectNoEvent(observer, 'user-offline', 400, isUser(alice));
    assert.equal(received(anon, 'user-offline').length, 0, 'unauthenticated connections get no presence events');
  });

  it('a private message reaches every connection of the target exactly once, and only them', async () => {
    const alice = uid('alice');
    const a = [await connectAs(url, alice), await connectAs(url, alice), await connectAs(url, alice)];
    const bob = uid('bob');
    const b1 = await connectAs(url, bob);
    const b2 = await connectAs(url, bob);
    const carol = await connectAs(url, uid('carol'));

    const ack = await emitWithAck(b1, 'private-message', { targetUserId: alice, message: 'to all of you' });
    assertSuccess(ack, 'private-message');
    for (const s of a) {
      const pm = await waitForEvent(s, 'private-message');
      assert.equal(pm.messageId, ack.messageId);
      assert.equal(pm.fromUserId, bob);
      assert.equal(pm.message, 'to all of you');
    }
    // message-sent goes to the sending connection only.
    const sent = await waitForEvent(b1, 'message-sent');
    assert.equal(sent.messageId, ack.messageId);
    // Rather than a quiet window: a second message from the same sender
    // reaches each connection after any duplicate of the first (per-sender
    // FIFO), and its message-sent comes after the first's.
    const marker = await emitWithAck(b1, 'private-message', { targetUserId: alice, message: 'marker' });
    assertSuccess(marker, 'marker');
    await Promise.all(a.map((s) => waitForEvent(s, 'private-message', 5000, (pm) => pm.messageId === marker.messageId)));
    await waitForEvent(b1, 'message-sent', 5000, (m) => m.messageId === marker.messageId);
    for (const s of a) assert.equal(received(s, 'private-message', (pm) => pm.messageId === ack.messageId).length, 1, 'exactly once per connection');
    assertNoEvent(b2, 'message-sent', () => true, "the sender's other connection");
    assert.equal(received(b1, 'message-sent', (m) => m.messageId === ack.messageId).length, 1);
    for (const s of [b1, b2, carol]) assertNoEvent(s, 'private-message', () => true, 'not the target');
  });

  it('after one of the connections closes, messages reach the remaining ones only', async () => {
    const alice = uid('alice');
    const a1 = await connectAs(url, alice);
    const a2 = await connectAs(url, alice);
    const bob = await connectAs(url, uid('bob'));
    a1.disconnect();
    await sleep(300);
    const ack = await emitWithAck(bob, 'private-message', { targetUserId: alice, message: 'one left' });
    assertSuccess(ack);
    assert.equal((await waitForEvent(a2, 'private-message')).messageId, ack.messageId);
    a2.disconnect();
    await waitForEvent(bob, 'user-offline', 5000, isUser(alice));
    assertFailure(await emitWithAck(bob, 'private-message', { targetUserId: alice, message: 'anyone?' }), 'USER_OFFLINE');
  });

  it('a user who comes back after going offline is announced online again', async () => {
    const observer = await connectAs(url, uid('observer'));
    const alice = uid('alice');
    const a1 = await connectAs(url, alice);
    await waitForEvent(observer, 'user-online', 5000, isUser(alice));
    a1.disconnect();
    await waitForEvent(observer, 'user-offline', 5000, isUser(alice));
    const a2 = await connectAs(url, alice);
    await waitForEvent(observer, 'user-online', 5000, isUser(alice));
    await waitForEvent(a2, 'user-online', 5000, isUser(alice));
    a2.disconnect();
    await waitForEvent(observer, 'user-offline', 5000, isUser(alice));
  });

  it('a connection that never authenticated causes no presence event when it closes', async () => {
    const observer = await connectAs(url, uid('observer'));
    const anon = await connect(url);
    anon.disconnect();
    // Earlier tests' users may still be going offline; anything else is ours.
    await expectNoEvent(observer, 'user-offline', 400, (d) => !isIssuedUid(d?.userId));
  });

  it('two different users on separate connections each get their own presence events', async () => {
    const observer = await connectAs(url, uid('observer'));
    const u1 = uid('u1');
    const u2 = uid('u2');
    const s1 = await connectAs(url, u1);
    const s2 = await connectAs(url, u2);
    await waitForEvent(observer, 'user-online', 5000, isUser(u1));
    await waitForEvent(observer, 'user-online', 5000, isUser(u2));
    // s1 (authenticated before u2 came online) also hears about u2.
    await waitForEvent(s1, 'user-online', 5000, isUser(u2));
    s2.disconnect();
    await waitForEvent(s1, 'user-offline', 5000, isUser(u2));
    await waitForEvent(observer, 'user-offline', 5000, isUser(u2));
    assertNoEvent(observer, 'user-offline', isUser(u1));
  });
});

describe('PRESENCE_EVENTS=off', () => {
  let server;
  let url;
  before(async () => { server = await startServer({ PRESENCE_EVENTS: 'off' }); url = server.url; });
  after(async () => { await server?.stop(); });

  it('no user-online / user-offline at all, everything else still works', async () => {
    const observer = await connectAs(url, uid('observer'));
    const alice = uid('alice');
    const a1 = await connectAs(url, alice);
    const a2 = await connectAs(url, alice);
    const ack = await emitWithAck(observer, 'private-message', { targetUserId: alice, message: 'hi' });
    assertSuccess(ack);
    await waitForEvent(a1, 'private-message');
    await waitForEvent(a2, 'private-message');
    a1.disconnect();
    a2.disconnect();
    await sleep(600);
    for (const s of [observer]) {
      assert.deepEqual(received(s, 'user-online'), [], 'user-online with PRESENCE_EVENTS=off');
      assert.deepEqual(received(s, 'user-offline'), [], 'user-offline with PRESENCE_EVENTS=off');
    }
    assert.deepEqual(received(a1, 'user-online'), []);
    assertFailure(await emitWithAck(observer, 'private-message', { targetUserId: alice, message: 'gone?' }), 'USER_OFFLINE');
  });
});
