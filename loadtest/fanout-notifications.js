// High fan-out notifications: SUBSCRIBERS Socket.IO connections join one
// room; a publisher posts `POST /api/rooms/{room}/broadcast` at a fixed
// rate, each notification carrying its send time; every subscriber records
// the end-to-end latency (HTTP publish → relay on its WebSocket) and counts
// what it got. This is the "backend notifies a room of thousands" path:
// one HTTP request, one encoded frame, thousands of writes.
//
//   k6 run -e BASE_URL=http://127.0.0.1:3000 -e SUBSCRIBERS=2000 -e PUBLISH_RATE=10 -e PUBLISH_DURATION=20s \
//     loadtest/fanout-notifications.js
//
// k6 gives every VU its own JavaScript runtime (several MB each), so
// subscribers are packed SUBS_PER_VU connections to a VU (default 50: 2,000
// subscribers are 40 VUs). Each VU's connections share one event loop, so
// the latency measured includes k6's own queueing when it is CPU-bound.
//
// Scenarios:
//   subscribers  ceil(SUBSCRIBERS / SUBS_PER_VU) VUs, one iteration each:
//                connect, CONNECT, authenticate, join, wait for the end
//                marker, close.
//   publisher    one VU: polls GET /api/rooms until the room has every
//                subscriber (JOIN_TIMEOUT_MS), publishes PUBLISH_RATE/s for
//                PUBLISH_DURATION, then posts `fanout-end { published }`.
//
// Environment (all optional):
//   BASE_URL / WS_URL   broker (default http://127.0.0.1:3000); API_KEY if the broker has one
//   SUBSCRIBERS         connections in the room (2000)
//   SUBS_PER_VU         connections per subscriber VU (50)
//   PUBLISH_RATE        publishes per second (10)
//   PUBLISH_DURATION    publishing time (20s)
//   JOIN_TIMEOUT_MS     time for every subscriber to join (120000)
//   JOIN_PARALLEL       joins in flight per subscriber VU (2)
//   SETTLE_MS           pause between a full room and the first publish (2000)
//   GRACE_MS            after the end marker, wait this long for stragglers (2000)
//   P95_MS / P99_MS     end-to-end latency thresholds (250 / 500)
import http from 'k6/http';
import exec from 'k6/execution';
import { check, fail, sleep } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import { setTimeout, clearTimeout } from 'k6/timers';
import { SioSocket, wsUrl, baseUrl, envInt, envFloat, apiHeaders } from './lib/socketio.js';

const SUBSCRIBERS = envInt('SUBSCRIBERS', 2000);
const SUBS_PER_VU = Math.max(1, envInt('SUBS_PER_VU', 50));
const SUB_VUS = Math.ceil(SUBSCRIBERS / SUBS_PER_VU);
const PUBLISH_RATE = envFloat('PUBLISH_RATE', 10);
const PUBLISH_DURATION_MS = parseDuration(__ENV.PUBLISH_DURATION || '20s');
const PUBLISHES = Math.max(1, Math.round(PUBLISH_RATE * PUBLISH_DURATION_MS / 1000));
const JOIN_TIMEOUT_MS = envInt('JOIN_TIMEOUT_MS', 120000);
const GRACE_MS = envInt('GRACE_MS', 2000);
const JOIN_PARALLEL = Math.max(1, envInt('JOIN_PARALLEL', 2));
const SETTLE_MS = envInt('SETTLE_MS', 2000);
const P95_MS = envInt('P95_MS', 250);
const P99_MS = envInt('P99_MS', 500);
const WS_URL = wsUrl();
const BASE = baseUrl();
const MAX_MS = JOIN_TIMEOUT_MS + SETTLE_MS + PUBLISH_DURATION_MS + GRACE_MS + 20000;

// HTTP publish sent → notification handled by a subscriber's onmessage.
const latency = new Trend('fanout_latency_ms', true);
// new WebSocket() → join-room ack, per subscriber.
const joinMs = new Trend('fanout_join_ms', true);
// Publisher start → GET /api/rooms shows every subscriber in the room.
const roomFillMs = new Trend('fanout_room_fill_ms', true);
// One sample per (publish, subscriber) pair: true when it arrived.
const delivery = new Rate('fanout_delivery');
// One sample per subscriber: joined, then saw the end marker.
const subscriberOk = new Rate('fanout_subscriber_ok');
const received = new Counter('fanout_received');
const published = new Counter('fanout_published');
// Sum of the API's `delivered` answers (connections the broker queued for).
const apiDelivered = new Counter('fanout_api_delivered');

export const options = {
  scenarios: {
    subscribers: {
      executor: 'per-vu-iterations',
      exec: 'subscriber',
      vus: SUB_VUS,
      iterations: 1,
      maxDuration: `${Math.ceil(MAX_MS / 1000)}s`,
      gracefulStop: '5s',
    },
    publisher: {
      executor: 'per-vu-iterations',
      exec: 'publisher',
      vus: 1,
      iterations: 1,
      maxDuration: `${Math.ceil(MAX_MS / 1000)}s`,
      gracefulStop: '5s',
    },
  },
  thresholds: {
    checks: ['rate>0.99'],
    fanout_delivery: ['rate>0.999'],
    fanout_subscriber_ok: ['rate>0.99'],
    fanout_latency_ms: [`p(95)<${P95_MS}`, `p(99)<${P99_MS}`],
    'http_req_duration{name:broadcast}': [`p(95)<${P95_MS}`],
    http_req_failed: ['rate<0.01'],
    fanout_received: ['count>0'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

function parseDuration(s) {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(String(s).trim());
  if (!m) throw new Error(`PUBLISH_DURATION must look like 20s, 1500ms or 2m, got ${s}`);
  const n = parseFloat(m[1]);
  return m[2] === 'ms' ? n : m[2] === 'm' ? n * 60000 : n * 1000;
}

export function setup() {
  const res = http.get(`${BASE}/health`);
  if (res.status !== 200) fail(`broker not healthy at ${BASE}/health: status ${res.status}`);
  const run = Date.now().toString(36);
  return { run, room: `fanout-${run}` };
}

export function subscriber(data) {
  const vuIdx = exec.scenario.iterationInTest; // 0 .. SUB_VUS-1 (one iteration per VU)
  const first = vuIdx * SUBS_PER_VU;
  const count = Math.max(0, Math.min(SUBS_PER_VU, SUBSCRIBERS - first));
  const subs = [];
  let open = count;
  let launched = 0;
  const deadline = setTimeout(() => {
    subs.forEach((s) => s.finish());
    for (; launched < count; launched++) { subscriberOk.add(false); onSubDone(); }
  }, MAX_MS - 5000);

  function onSubDone() {
    open--;
    if (open === 0) clearTimeout(deadline);
  }

  // Joins are paced per VU (JOIN_PARALLEL at a time): every join is
  // announced (user-joined) to all members already in the room, so filling a
  // room of N sends N(N-1)/2 announcements, which k6 handles far more slowly
  // than the broker sends them. Pacing keeps k6's backlog — and its memory,
  // and its delay in answering heartbeats — bounded.
  function launchNext() {
    if (launched < count) openSub(launched++);
  }

  function openSub(k) {
    const user = `fan-${data.run}-${first + k}`;
    const t0 = Date.now();
    const st = {
      joined: false, got: 0, lastSeq: -1, dupOrOld: 0, published: -1, done: false, graceTimer: null, sock: null, next: false,
    };
    const next = () => { if (!st.next) { st.next = true; launchNext(); } };
    st.finish = () => {
      if (st.done) return;
      st.done = true;
      if (st.graceTimer !== null) clearTimeout(st.graceTimer);
      subscriberOk.add(st.joined && st.published >= 0);
      if (st.joined) {
        // Without the end marker the true count is unknown: at least one lost.
        const expected = st.published >= 0 ? st.published : st.got + 1;
        for (let i = st.got; i < expected; i++) delivery.add(false);
      }
      check(st, {
        'subscriber joined': (s) => s.joined,
        'notifications in order, no duplicates': (s) => s.dupOrOld === 0,
      });
      st.sock.close();
      onSubDone();
      next();
    };
    st.sock = new SioSocket(WS_URL, {
      onConnect: () => {
        st.sock.emit('authenticate', { userId: user }, (ack) => {
          if (!ack || ack.success !== true) { st.finish(); return; }
          st.sock.emit('join-room', { roomName: data.room }, (jack) => {
            st.joined = !!jack && jack.success === true;
            if (!st.joined) { st.finish(); return; }
            joinMs.add(Date.now() - t0);
            next();
          });
        });
      },
      onEvent: (name, arg) => {
        if (name === 'notification') {
          const now = Date.now();
          latency.add(now - arg.t);
          received.add(1);
          delivery.add(true);
          st.got++;
          if (arg.s <= st.lastSeq) st.dupOrOld++;
          st.lastSeq = arg.s;
          if (st.published >= 0 && st.got >= st.published) st.finish();
        } else if (name === 'fanout-end') {
          st.published = arg.published;
          if (st.got >= st.published) st.finish();
          else st.graceTimer = setTimeout(st.finish, GRACE_MS);
        }
      },
      onConnectError: () => st.finish(),
      onClose: () => st.finish(),
    }, {
      ignore: ['user-online', 'user-offline', 'user-joined', 'user-left',
        'room-joined', 'authenticated', 'connected'],
    });
    subs.push(st);
  }

  for (let i = 0; i < JOIN_PARALLEL; i++) launchNext();
  if (count === 0) clearTimeout(deadline);
}

function roomMembers(room) {
  const res = http.get(`${BASE}/api/rooms`, { headers: apiHeaders(), tags: { name: 'rooms' } });
  if (res.status !== 200) return -1;
  const r = (res.json('rooms') || []).find((x) => x.name === room);
  return r ? r.memberCount : 0;
}

export function publisher(data) {
  const t0 = Date.now();
  let members = 0;
  while (Date.now() - t0 < JOIN_TIMEOUT_MS) {
    members = roomMembers(data.room);
    if (members >= SUBSCRIBERS) break;
    sleep(0.2);
  }
  if (members >= SUBSCRIBERS) roomFillMs.add(Date.now() - t0);
  check(members, { 'room has every subscriber before publishing': (m) => m === SUBSCRIBERS });
  // The broker has sent every announcement; let the subscribers' event loops
  // drain theirs so the first notifications are not measured behind them.
  sleep(SETTLE_MS / 1000);

  const url = `${BASE}/api/rooms/${encodeURIComponent(data.room)}/broadcast`;
  const params = { headers: apiHeaders(), tags: { name: 'broadcast' } };
  const start = Date.now();
  for (let i = 0; i < PUBLISHES; i++) {
    const wait = start + (i * 1000) / PUBLISH_RATE - Date.now();
    if (wait > 0) sleep(wait / 1000);
    const body = JSON.stringify({ event: 'notification', data: { s: i, t: Date.now(), kind: 'load-test' } });
    const res = http.post(url, body, params);
    published.add(1);
    let ans = null;
    try { ans = res.json(); } catch (_) { /* checked below */ }
    if (ans && typeof ans.delivered === 'number') apiDelivered.add(ans.delivered);
    check(res, {
      'broadcast 200 success': (r) => r.status === 200 && ans && ans.success === true,
      'broadcast delivered to every subscriber': () => ans && ans.delivered === SUBSCRIBERS,
    });
  }
  const late = Date.now() - start - PUBLISH_DURATION_MS;
  check(late, { 'publisher kept its rate (< 1 s behind)': (l) => l < 1000 });
  const end = http.post(url, JSON.stringify({ event: 'fanout-end', data: { published: PUBLISHES } }), {
    headers: apiHeaders(), tags: { name: 'end-marker' },
  });
  check(end, { 'end marker 200': (r) => r.status === 200 });
}
