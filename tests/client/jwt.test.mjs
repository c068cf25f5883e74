// SPEC §4: JWT_SECRET mode (HS256 only, sub + exp enforced, token at CONNECT
// or in `authenticate`), and the development-mode start-up warning.

import { describe, before, after } from 'node:test';
import {
  assert, it, startServer, connect, connectExpectingError, emitWithAck, waitForEvent,
  expectNoEvent, assertNoEvent, assertTimestamp, assertFailure, assertSuccess, signJwt, nowSec,
  uid, sleep, waitUntil,
} from './helpers.mjs';

const SECRET = 'shardcast-test-secret-3f9c1b7e0a';

function badTokens() {
  const sub = uid('mallory');
  const exp = nowSec() + 3600;
  const good = signJwt({ sub, exp }, SECRET);
  const [h, p] = good.split('.');
  const tamperedPayload = Buffer.from(JSON.stringify({ sub: uid('admin'), exp })).toString('base64url');
  return [
    ['expired an hour ago', signJwt({ sub, exp: nowSec() - 3600 }, SECRET)],
    ['bad signature (payload tampered)', `${h}.${tamperedPayload}.${good.split('.')[2]}`],
    ['bad signature (signature altered)', `${h}.${p}.${good.split('.')[2].slice(0, -4)}AAAA`],
    ['signed with another secret', signJwt({ sub, exp }, `${SECRET}-wrong`)],
    ['alg none, empty signature', signJwt({ sub, exp }, SECRET, { alg: 'none', typ: 'JWT' })],
    ['alg none, HS256 signature kept', `${Buffer.from('{"alg":"none","typ":"JWT"}').toString('base64url')}.${p}.${good.split('.')[2]}`],
    ['alg HS384 with the right secret', signJwt({ sub, exp }, SECRET, { alg: 'HS384', typ: 'JWT' })],
    ['alg HS512 with the right secret', signJwt({ sub, exp }, SECRET, { alg: 'HS512', typ: 'JWT' })],
    ['alg RS256 header, HMAC-SHA256 signature', signJwt({ sub, exp }, SECRET, { alg: 'RS256', typ: 'JWT' }, { signWith: 'HS256' })],
    ['not a JWT', 'not-a-jwt'],
    ['three garbage parts', 'a.b.c'],
    ['no sub claim', signJwt({ exp }, SECRET)],
    ['not valid before an hour from now (nbf)', signJwt({ sub, exp, nbf: nowSec() + 3600 }, SECRET)],
  ];
}

describe('JWT_SECRET mode', () => {
  let server;
  let url;
  before(async () => { server = await startServer({ JWT_SECRET: SECRET }); url = server.url; });
  after(async () => { await server?.stop(); });

  it('a valid HS256 token in the CONNECT auth payload authenticates: connected, then authenticated { userId: sub }', async () => {
    const sub = uid('alice');
    const s = await connect(url, { auth: { token: signJwt({ sub, exp: nowSec() + 3600 }, SECRET) } });
    const connected = await waitForEvent(s, 'connected');
    assert.equal(connected.socketId, s.id);
    const auth = await waitForEvent(s, 'authenticated');
    assert.equal(auth.userId, sub);
    assert.equal(auth.socketId, s.id);
    assertTimestamp(auth.timestamp);
    assert.equal(s.inbox.events[0].event, 'connected', 'connected comes first');
    // It can use the authenticated events.
    const ack = await emitWithAck(s, 'join-room', { roomName: uid('room') });
    assertSuccess(ack, 'join-room after token auth at connect');
  });

  it('a valid token via authenticate { token }: ack { success, userId: sub, socketId }', async () => {
    const sub = uid('bob');
    const s = await connect(url);
    const ack = await emitWithAck(s, 'authenticate', { token: signJwt({ sub, exp: nowSec() + 60, iat: nowSec() }, SECRET) });
    assertSuccess(ack, 'authenticate with a token');
    assert.equal(ack.userId, sub);
    assert.equal(ack.socketId, s.id);
    const ev = await waitForEvent(s, 'authenticated');
    assert.equal(ev.userId, sub);
  });

  it("the token's sub wins over a userId beside it (authenticate and CONNECT)", async () => {
    const sub = uid('real');
    const ack = await emitWithAck(await connect(url), 'authenticate', { token: signJwt({ sub, exp: nowSec() + 60 }, SECRET), userId: 'impostor' });
    assertSuccess(ack);
    assert.equal(ack.userId, sub);
    const s = await connect(url, { auth: { token: signJwt({ sub, exp: nowSec() + 60 }, SECRET), userId: 'impostor' } });
    assert.equal((await waitForEvent(s, 'authenticated')).userId, sub);
  });

  it('users authenticated by token message each other by their sub', async () => {
    const a = uid('a');
    const b = uid('b');
    const sa = await connect(url, { auth: { token: signJwt({ sub: a, exp: nowSec() + 60 }, SECRET) } });
    const sb = await connect(url, { auth: { token: signJwt({ sub: b, exp: nowSec() + 60 }, SECRET) } });
    await waitForEvent(sa, 'authenticated');
    await waitForEvent(sb, 'authenticated');
    assertSuccess(await emitWithAck(sa, 'private-message', { targetUserId: b, message: 'signed hello' }));
    const pm = await waitForEvent(sb, 'private-message');
    assert.equal(pm.fromUserId, a);
  });

  it('every bad token at CONNECT is a connect_error containing AUTH_FAILED', async () => {
    for (const [what, token] of badTokens()) {
      const err = await connectExpectingError(url, { auth: { token } });
      assert.match(err.message, /AUTH_FAILED/, `${what}: connect_error message was ${JSON.stringify(err.message)}`);
    }
  });

  it('every bad token via authenticate is AUTH_FAILED, and the connection stays unauthenticated', async () => {
    const s = await connect(url);
    for (const [what, token] of badTokens()) {
      assertFailure(await emitWithAck(s, 'authenticate', { token }), 'AUTH_FAILED', undefined, what);
    }
    assertFailure(await emitWithAck(s, 'join-room', { roomName: uid('r') }), 'UNAUTHENTICATED');
    await expectNoEvent(s, 'authenticated', 100);
    assertSuccess(await emitWithAck(s, 'ping'), 'still usable');
  });

  it('AUTH_FAILED without ack comes as an error event { event: authenticate, code: AUTH_FAILED }', async () => {
    const s = await connect(url);
    s.emit('authenticate', { token: signJwt({ sub: 'x', exp: nowSec() - 3600 }, SECRET) });
    const err = await waitForEvent(s, 'error');
    assert.equal(err.event, 'authenticate');
    assert.equal(err.code, 'AUTH_FAILED');
    assert.equal(typeof err.message, 'string');
  });

  it('no token at CONNECT: accepted, unauthenticated', async () => {
    const s = await connect(url);
    await waitForEvent(s, 'connected');
    await expectNoEvent(s, 'authenticated', 300);
    assertFailure(await emitWithAck(s, 'join-room', { roomName: uid('r') }), 'UNAUTHENTICATED');
    assertSuccess(await emitWithAck(s, 'ping'));
  });

  it('a bare { userId } is refused (authenticate and CONNECT)', async () => {
    const s = await connect(url);
    const ack = await emitWithAck(s, 'authenticate', { userId: uid('trustme') });
    assert.equal(ack.success, false, `bare userId must be refused in JWT mode: ${JSON.stringify(ack)}`);
    assert.equal(typeof ack.code, 'string');
    assertFailure(await emitWithAck(s, 'join-room', { roomName: uid('r') }), 'UNAUTHENTICATED');

    // At CONNECT: refused like a bad token (README "JWT mode": "a bare
    // { userId } is refused"; a bad token at connect is a connect_error
    // starting with AUTH_FAILED).
    const err = await connectExpectingError(url, { auth: { userId: uid('trustme') } });
    assert.match(err.message, /^AUTH_FAILED/, `connect_error message: ${err.message}`);
  });

  it('re-authenticating with a token for another user is VALIDATION_ERROR', async () => {
    const a = uid('a');
    const s = await connect(url, { auth: { token: signJwt({ sub: a, exp: nowSec() + 60 }, SECRET) } });
    await waitForEvent(s, 'authenticated');
    assertFailure(await emitWithAck(s, 'authenticate', { token: signJwt({ sub: uid('b'), exp: nowSec() + 60 }, SECRET) }), 'VALIDATION_ERROR');
    const same = await emitWithAck(s, 'authenticate', { token: signJwt({ sub: a, exp: nowSec() + 120 }, SECRET) });
    assertSuccess(same, 're-authenticate as the same sub');
  });

  it('a refused connection does not disturb the others', async () => {
    const sub = uid('steady');
    const ok = await connect(url, { auth: { token: signJwt({ sub, exp: nowSec() + 60 }, SECRET) } });
    await waitForEvent(ok, 'authenticated');
    for (let i = 0; i < 5; i++) {
      await connectExpectingError(url, { auth: { token: 'garbage' } });
    }
    assert.equal(ok.connected, true);
    assertSuccess(await emitWithAck(ok, 'ping'));
    const again = await connect(url, { auth: { token: signJwt({ sub: uid('late'), exp: nowSec() + 60 }, SECRET) } });
    await waitForEvent(again, 'authenticated');
  });

  it('does not print the development-mode warning', async () => {
    await sleep(50);
    const devLines = server.logs.filter((l) => /warn/i.test(l.line) && /(JWT_SECRET|development)/i.test(l.line));
    assert.deepEqual(devLines.map((l) => l.line), []);
  });
});

describe('a short JWT_SECRET', () => {
  it('is warned about at start-up (HS256 wants 32 bytes or more)', async () => {
    const server = await startServer({ JWT_SECRET: 'short-secret' });
    try {
      await waitUntil(
        () => server.logs.some((l) => /warn/i.test(l.line) && /JWT_SECRET is shorter than 32 bytes/.test(l.line)),
        2000,
        () => `no warning about the short secret:\n${server.logs.map((l) => l.line).join('\n')}`,
      );
    } finally {
      await server.stop();
    }
  });
});

describe('development mode (no JWT_SECRET)', () => {
  let server;
  let url;
  before(async () => { server = await startServer({}); url = server.url; });
  after(async () => { await server?.stop(); });

  it('says so loudly at start-up (a WARN line naming JWT_SECRET or development mode)', async () => {
    // Written to stderr before the listening line goes to stdout; the two
    // pipes are read independently, so allow the stderr line a moment.
    await waitUntil(
      () => server.logs.some((l) => /warn/i.test(l.line) && /(JWT_SECRET|development)/i.test(l.line)),
      2000,
      () => `no development-mode warning in the start-up output:\n${server.logs.map((l) => l.line).join('\n')}`,
    );
  });

  it('auth { userId } at CONNECT authenticates: connected, then authenticated', async () => {
    const userId = uid('dev');
    const s = await connect(url, { auth: { userId } });
    const connected = await waitForEvent(s, 'connected');
    assert.equal(connected.socketId, s.id);
    const auth = await waitForEvent(s, 'authenticated');
    assert.equal(auth.userId, userId);
    assert.equal(auth.socketId, s.id);
    assert.equal(s.inbox.events[0].event, 'connected');
    assertSuccess(await emitWithAck(s, 'join-room', { roomName: uid('r') }));
  });

  it('an invalid userId in the CONNECT auth payload is refused: connect_error VALIDATION_ERROR', async () => {
    // README "Development-mode CONNECT auth": refused as `authenticate` would refuse it.
    for (const userId of ['', 'tab\there', 'x'.repeat(300), 42]) {
      const err = await connectExpectingError(url, { auth: { userId } });
      assert.match(err.message, /^VALIDATION_ERROR/, `userId ${JSON.stringify(userId)}: connect_error message: ${err.message}`);
    }
    // And the server goes on: a valid one is authenticated.
    const s = await connect(url, { auth: { userId: uid('after') } });
    await waitForEvent(s, 'authenticated');
  });
});
