// Chat rooms: virtual users (one connection each) grouped into rooms of
// ROOM_SIZE. Each authenticates, joins its room, and once the room is full
// every member, for DURATION:
//   * emits `custom-event { event: 'chat', data: { f, s, t }, roomName }`
//     every MSG_INTERVAL_MS (the broker relays `42["chat",data]` to the other
//     members, and acks { success: true });
//   * sends a `private-message` to the next member of its room every
//     PM_INTERVAL_MS (message = JSON text with the send time).
// Receivers compute latency from the embedded send time (same clock: k6
// sends and receives) and count what arrives per sender. At the end every
// sender announces how many it sent (a `chat-done` relay and a final private
// message), so each receiver knows exactly what it should have received.
//
//   k6 run -e BASE_URL=http://127.0.0.1:3000 -e VUS=200 -e ROOM_SIZE=10 -e DURATION=20s loadtest/chat-rooms.js
//
// Environment (all optional):
//   BASE_URL / WS_URL   broker (default http://127.0.0.1:3000)
//   VUS                 users, one connection each (200)
//   ROOM_SIZE           members per room (10); the last room may be smaller
//   DURATION            send window once a room is full (20s)
//   MSG_INTERVAL_MS     custom-event period per user (1000)
//   PM_INTERVAL_MS      private-message period per user (2000)
//   DRAIN_MS            wait for the other members' end markers (5000)
//   READY_TIMEOUT_MS    a room not full by then fails its members (30000)
//   P95_MS / P99_MS     latency thresholds for relays and private messages (100 / 250)
import http from 'k6/http';
import { check, fail } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import { SioSocket, wsUrl, baseUrl, envInt } from './lib/socketio.js';
import { Timers } from './lib/timers.js';

const VUS = envInt('VUS', 200);
const ROOM_SIZE = Math.max(1, envInt('ROOM_SIZE', 10));
const DURATION_MS = parseDuration(__ENV.DURATION || '20s');
const MSG_INTERVAL_MS = envInt('MSG_INTERVAL_MS', 1000);
const PM_INTERVAL_MS = envInt('PM_INTERVAL_MS', 2000);
const DRAIN_MS = envInt('DRAIN_MS', 5000);
const READY_TIMEOUT_MS = envInt('READY_TIMEOUT_MS', 30000);
const P95_MS = envInt('P95_MS', 100);
const P99_MS = envInt('P99_MS', 250);
const WS_URL = wsUrl();

const relayLatency = new Trend('chat_relay_latency_ms', true);
const pmLatency = new Trend('chat_pm_latency_ms', true);
const customAckMs = new Trend('chat_custom_event_ack_ms', true);
const pmAckMs = new Trend('chat_pm_ack_ms', true);
const joinAckMs = new Trend('chat_join_ack_ms', true);
// Rooms filled within READY_TIMEOUT_MS, one sample per member.
const roomReady = new Rate('chat_room_ready');
// One sample per message a receiver should have received: true if it did.
// Tagged kind=relay (custom-event) or kind=pm (private-message).
const delivery = new Rate('chat_delivery');
// One sample per (receiver, sender) pair: did the sender's end marker arrive?
const endMarkers = new Rate('chat_end_markers');
const relaysReceived = new Counter('chat_relays_received');
const pmsReceived = new Counter('chat_pms_received');
const relaysSent = new Counter('chat_relays_sent');
const pmsSent = new Counter('chat_pms_sent');

export const options = {
  scenarios: {
    chat: {
      executor: 'per-vu-iterations',
      vus: VUS,
      iterations: 1,
      maxDuration: `${Math.ceil((READY_TIMEOUT_MS + DURATION_MS + DRAIN_MS) / 1000) + 15}s`,
      gracefulStop: '5s',
    },
  },
  thresholds: {
    checks: ['rate>0.99'],
    chat_room_ready: ['rate>0.99'],
    'chat_delivery{kind:relay}': ['rate>0.999'],
    'chat_delivery{kind:pm}': ['rate>0.999'],
    chat_end_markers: ['rate>0.99'],
    chat_relay_latency_ms: [`p(95)<${P95_MS}`, `p(99)<${P99_MS}`],
    chat_pm_latency_ms: [`p(95)<${P95_MS}`, `p(99)<${P99_MS}`],
    chat_custom_event_ack_ms: [`p(95)<${P95_MS}`],
    chat_pm_ack_ms: [`p(95)<${P95_MS}`],
    chat_relays_received: ['count>0'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

function parseDuration(s) {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(String(s).trim());
  if (!m) throw new Error(`DURATION must look like 20s, 1500ms or 2m, got ${s}`);
  const n = parseFloat(m[1]);
  return m[2] === 'ms' ? n : m[2] === 'm' ? n * 60000 : n * 1000;
}

export function setup() {
  const res = http.get(`${baseUrl()}/health`);
  if (res.status !== 200) fail(`broker not healthy at ${baseUrl()}/health: status ${res.status}`);
  return { run: Date.now().toString(36) };
}

export default function (data) {
  const idx = __VU - 1;
  const roomIdx = Math.floor(idx / ROOM_SIZE);
  const base = roomIdx * ROOM_SIZE;
  const size = Math.min(ROOM_SIZE, VUS - base);
  const pos = idx - base;
  const userOf = (p) => `chat-${data.run}-${roomIdx}-${p}`;
  const me = userOf(pos);
  const next = userOf((pos + 1) % size);
  const prev = userOf((pos + size - 1) % size);
  const room = `chat-${data.run}-${roomIdx}`;
  const peers = size - 1;

  const recv = new Array(size).fill(0); // relays received per sender position
  const lastSeq = new Array(size).fill(-1);
  const doneSent = new Array(size).fill(-1); // sender's announced count, -1: no marker yet
  let donesSeen = 0;
  let outOfOrder = 0;
  let pmRecv = 0;
  let pmDone = peers > 0 ? -1 : 0;
  let relaySeq = 0;
  let pmSeq = 0;
  let customAcksOk = 0;
  let customAcks = 0;
  let pmAcksOk = 0;
  let pmAcks = 0;
  let started = false;
  let sending = false;
  let finished = false;
  let closedEarly = false;
  let errorEvents = 0;
  let authOk = false;
  let joinOk = false;
  const timers = new Timers(100);
  const intervals = [];
  const later = (fn, ms) => timers.after(ms, fn);

  const finish = () => {
    if (finished) return;
    finished = true;
    timers.cancelAll();
    roomReady.add(started);
    if (started) {
      for (let p = 0; p < size; p++) {
        if (p === pos) continue;
        endMarkers.add(doneSent[p] >= 0);
        const expected = doneSent[p] >= 0 ? doneSent[p] : recv[p] + 1; // unknown tail: at least one lost
        const got = Math.min(recv[p], expected);
        for (let i = 0; i < got; i++) delivery.add(true, { kind: 'relay' });
        for (let i = got; i < expected; i++) delivery.add(false, { kind: 'relay' });
      }
      if (peers > 0) {
        endMarkers.add(pmDone >= 0);
        const expected = pmDone >= 0 ? pmDone : pmRecv + 1;
        const got = Math.min(pmRecv, expected);
        for (let i = 0; i < got; i++) delivery.add(true, { kind: 'pm' });
        for (let i = got; i < expected; i++) delivery.add(false, { kind: 'pm' });
      }
    }
    check(null, {
      'authenticate ack success': () => authOk,
      'join-room ack success': () => joinOk,
      'custom-event acks: all arrived, all success': () => customAcks === relaySeq && customAcksOk === customAcks,
      'private-message acks: all arrived, all success': () => pmAcks === pmSeq && pmAcksOk === pmAcks,
      'relays in order, no duplicates': () => outOfOrder === 0 && recv.every((n, p) => doneSent[p] < 0 || n <= doneSent[p]),
      'not closed by the server': () => !closedEarly,
      'no error events': () => errorEvents === 0,
    });
    sock.close();
  };

  const maybeDone = () => {
    if (!sending && started && donesSeen === peers && pmDone >= 0 && customAcks === relaySeq && pmAcks === pmSeq) finish();
  };

  const sendRelay = () => {
    if (!sending) return;
    const s = relaySeq++;
    relaysSent.add(1);
    const t = Date.now();
    sock.emit('custom-event', { event: 'chat', data: { f: pos, s, t }, roomName: room }, (ack) => {
      customAcks++;
      customAckMs.add(Date.now() - t);
      if (ack && ack.success === true) customAcksOk++;
      maybeDone();
    });
  };

  const sendPm = () => {
    if (!sending) return;
    const s = pmSeq++;
    pmsSent.add(1);
    const t = Date.now();
    sock.emit('private-message', { targetUserId: next, message: JSON.stringify({ s, t }) }, (ack) => {
      pmAcks++;
      pmAckMs.add(Date.now() - t);
      if (ack && ack.success === true) pmAcksOk++;
      maybeDone();
    });
  };

  const start = () => {
    if (started) return;
    started = true;
    sending = true;
    timers.cancel(readyTimer);
    if (peers > 0) {
      // Random phase so the members of a room do not all send in the same tick.
      later(() => { if (sending) { sendRelay(); intervals.push(timers.every(MSG_INTERVAL_MS, sendRelay)); } }, Math.random() * MSG_INTERVAL_MS);
      later(() => { if (sending) { sendPm(); intervals.push(timers.every(PM_INTERVAL_MS, sendPm)); } }, Math.random() * PM_INTERVAL_MS);
    }
    later(() => {
      sending = false;
      intervals.forEach((t) => timers.cancel(t));
      if (peers > 0) {
        // The end markers follow this sender's last messages on the same
        // connection, so everything before them has been handled.
        sock.emit('custom-event', { event: 'chat-done', data: { f: pos, sent: relaySeq }, roomName: room });
        sock.emit('private-message', { targetUserId: next, message: JSON.stringify({ done: true, sent: pmSeq }) });
      }
      later(finish, DRAIN_MS);
      maybeDone();
    }, DURATION_MS);
  };

  const sock = new SioSocket(WS_URL, {
    onConnect: () => {
      sock.emit('authenticate', { userId: me }, (ack) => {
        authOk = !!ack && ack.success === true && ack.userId === me;
        if (!authOk) { finish(); return; }
        const tj = Date.now();
        sock.emit('join-room', { roomName: room }, (jack) => {
          joinAckMs.add(Date.now() - tj);
          joinOk = !!jack && jack.success === true && jack.roomName === room;
          if (!joinOk) { finish(); return; }
          // The home shard counts joins one at a time: exactly one member
          // sees the full count; it tells the others (all already members).
          if (jack.memberCount === size) {
            if (peers > 0) sock.emit('custom-event', { event: 'chat-ready', data: null, roomName: room });
            start();
          }
        });
      });
    },
    onEvent: (name, arg) => {
      const now = Date.now();
      if (name === 'chat') {
        relayLatency.add(now - arg.t);
        relaysReceived.add(1);
        recv[arg.f]++;
        if (arg.s <= lastSeq[arg.f]) outOfOrder++;
        lastSeq[arg.f] = arg.s;
      } else if (name === 'private-message') {
        if (arg.fromUserId !== prev) return;
        const m = JSON.parse(arg.message);
        if (m.done) { pmDone = m.sent; maybeDone(); return; }
        pmLatency.add(now - m.t);
        pmsReceived.add(1);
        pmRecv++;
      } else if (name === 'chat-done') {
        if (doneSent[arg.f] < 0) donesSeen++;
        doneSent[arg.f] = arg.sent;
        maybeDone();
      } else if (name === 'chat-ready') {
        start();
      } else if (name === 'error') {
        errorEvents++;
        if (errorEvents === 1) console.warn(`${me}: error event ${JSON.stringify(arg)}`);
      }
    },
    onConnectError: () => finish(),
    onClose: () => { if (!finished) { closedEarly = true; finish(); } },
  }, {
    ignore: ['user-online', 'user-offline', 'user-joined', 'user-left',
      'message-sent', 'room-joined', 'authenticated', 'connected'],
  });

  const readyTimer = later(() => { if (!started) finish(); }, READY_TIMEOUT_MS);
}
