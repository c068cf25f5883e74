// High fan-out notifications: SUBSCRIBERS Socket.IO connections join one
// room; a publisher posts `POST /api/rooms/{room}/broadcast` at a fixed
// rate, each notification carrying its send time; every subscriber records
// the end-to-end latency (HTTP publish → relay on its WebSocket) and counts
// what it got. This is the "backend notifies a room of thousands" path:
// one HTTP request, one encoded frame, thousands of writes.
//
//   k6 run -e BASE_URL=http://127.0.0.1:3000 -e SUBSCRIBERS=2000 -e PUBLISH_RATE=5 -e PUBLISH_DURATION=20s \
//     loadtest/fanout-notifications.js
//
// k6 gives every VU its own JavaScript runtime, so subscribers are packed
// SUBS_PER_VU connections to a VU (default 50: 2,000 subscribers are 40
// VUs). Each VU's connections share one event loop, so the latency measured
// includes k6's own queueing when it is CPU-bound.
//
// Filling the room is the expensive part for k6, not for the broker: every
// join is announced (`user-joined`) to the members already there, and with
// presence on every authentication (`user-online`) to every authenticated
// connection, so N subscribers receive about N*N/2 frames of each kind
// before the first notification. Subscribers therefore join a few at a time
// per VU (JOIN_PARALLEL); for thousands of subscribers start the broker with
// PRESENCE_EVENTS=off (see loadtest/README.md). Latency is only measured
// once the room is full and SETTLE_MS has passed.
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
//   PUBLISH_RATE        publishes per second (5)
//   PUBLISH_DURATION    publishing time (20s)
//   JOIN_TIMEOUT_MS     time for every subscriber to join (120000)
//   JOIN_PARALLEL       joins in flight per subscriber VU (4)
//   JOIN_STEP_TIMEOUT_MS  one subscriber's connect-to-join-ack limit (20000)
//   SETTLE_MS           pause between a full room and the first publish (2000)
//   GRACE_MS            after the end marker, wait this long for stragglers (2000)
//   P95_MS / P99_MS     end-to-end latency thresholds (250 / 500)
//   DEBUG               set: log why subscribers finished (first per VU, and every incomplete one)
import http from 'k6/http';
import exec from 'k6/execution';
import { check, fail, sleep } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import { SioSocket, wsUrl, baseUrl, envInt, envFloat, apiHeaders } from './lib/socketio.js';
import { Timers } from './lib/timers.js';

const SUBSCRIBERS = envInt('SUBSCRIBERS', 2000);
const SUBS_PER_VU = Math.max(1, envInt('SUBS_PER_VU', 50));
const SUB_VUS = Math.ceil(SUBSCRIBERS / SUBS_PER_VU);
const PUBLISH_RATE = envFloat('PUBLISH_RATE', 5);
const PUBLISH_DURATION_MS = parseDuration(__ENV.PUBLISH_DURATION || '20s');
const PUBLISHES = Math.max(1, Math.round(PUBLISH_RATE * PUBLISH_DURATION_MS / 1000));
const JOIN_TIMEOUT_MS = envInt('JOIN_TIMEOUT_MS', 120000);
const GRACE_MS = envInt('GRACE_MS', 2000);
const JOIN_PARALLEL = Math.max(1, envInt('JOIN_PARALLEL', 4));
const SETTLE_MS = envInt('SETTLE_MS', 2000);
const JOIN_STEP_TIMEOUT_MS = envInt('JOIN_STEP_TIMEOUT_MS', 20000);
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
    fanout_published: ['count>0'],
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

let announcementsWarned = false;

export function subscriber(data) {
  const vuIdx = exec.scenario.iterationInTest; // 0 .. SUB_VUS-1 (one iteration per VU)
  const first = vuIdx * SUBS_PER_VU;
  const count = Math.max(0, Math.min(SUBS_PER_VU, SUBSCRIBERS - first));
  const subs = [];
  let open = count;
  let launched = 0;
  let stopping = false;
  const timers = new Timers(250);
  const deadline = timers.after(MAX_MS - 5000, () => {
    stopping = true; // no new connections from here on
    subs.forEach((s) => s.finish('deadline'));
    for (; launched < count; launched++) { subscriberOk.add(false); onSubDone(); }
  });

  function onSubDone() {
    open--;
    if (open === 0) timers.cancel(deadline);
  }

  // Joins are paced per VU (JOIN_PARALLEL at a time): every join is
  // announced (user-joined) to all members already in the room, so filling a
  // room of N sends N(N-1)/2 announcements, which k6 handles far more slowly
  // than the broker sends them. Pacing keeps k6's backlog — and its memory,
  // and its delay in answering heartbeats — bounded.
  function launchNext() {
    if (!stopping && launched < count) openSub(launched++);
  }

  function openSub(k) {
    const user = `fan-${data.run}-${first + k}`;
    const t0 = Date.now();
    const st = {
      stage: 'websocket', joined: false, got: 0, lastSeq: -1, dupOrOld: 0, published: -1, done: false, graceTimer: null, sock: null, next: false,
    };
    const next = () => { if (!st.next) { st.next = true; launchNext(); } };
    st.finish = (why) => {
      if (st.done) return;
      st.done = true;
      if (__ENV.DEBUG && (k === 0 || !(st.joined && st.published >= 0 && st.got >= st.published))) {
        console.warn(`subscriber ${user}: finish (${why}) at ${Date.now() - t0} ms, joined ${st.joined}, got ${st.got}, published ${st.published}`);
      }
      timers.cancel(st.graceTimer);
      timers.cancel(st.joinTimer);
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
        st.stage = 'authenticate ack';
        st.sock.emit('authenticate', { userId: user }, (ack) => {
          if (!ack || ack.success !== true) { st.finish('authenticate refused'); return; }
          st.stage = 'join-room ack';
          st.sock.emit('join-room', { roomName: data.room }, (jack) => {
            st.joined = !!jack && jack.success === true;
            if (!st.joined) { st.finish('join refused'); return; }
            st.stage = 'joined';
            timers.cancel(st.joinTimer);
            joinMs.add(Date.now() - t0);
            next();
          });
        });
      },
      onEvent: (name, arg) => {
        if (name === 'notification') {
          const now = Date.now();
          latency.add(now - arg.t);
          delivery.add(true);
          st.got++;
          if (arg.s <= st.lastSeq) st.dupOrOld++;
          st.lastSeq = arg.s;
          if (st.published >= 0 && st.got >= st.published) st.finish('all received');
        } else if ((name === 'user-online' || name === 'user-joined') && !announcementsWarned) {
          announcementsWarned = true;
          console.warn(`the broker sends ${name} events: filling a room of N subscribers costs k6 about N*N/2 `
            + 'such frames (~40k/s is what k6 digests on 2 cores); for large rooms start the broker with '
            + 'PRESENCE_EVENTS=off (and ROOM_EVENTS=off where the build has it)');
        } else if (name === 'fanout-end') {
          st.published = arg.published;
          if (st.got >= st.published) st.finish('end marker');
          else st.graceTimer = timers.after(GRACE_MS, () => st.finish('grace'));
        }
      },
      onConnectError: () => st.finish('connect error'),
      onClose: (code) => {
        if (!st.done && !st.joined) console.warn(`subscriber ${user}: closed (${code}) before joining, at ${st.stage}`);
        if (__ENV.DEBUG && !st.done && st.joined) console.warn(`subscriber ${user}: closed (${code}) at ${Date.now() - t0} ms, got ${st.got}`);
        st.finish('close');
      },
      onError: (e) => { if (!st.joined) console.warn(`subscriber ${user}: ${e} at ${st.stage}`); },
    }, {
      // The first subscriber of the test looks at announcements (to warn
      // once); the others drop them unparsed.
      ignore: (vuIdx === 0 && k === 0 ? [] : ['user-online', 'user-offline', 'user-joined', 'user-left'])
        .concat(['room-joined', 'authenticated', 'connected']),
    });
    st.joinTimer = timers.after(JOIN_STEP_TIMEOUT_MS, () => {
      console.warn(`subscriber ${user} (engine.io sid ${st.sock.eioSid}, socket id ${st.sock.sid}): no progress for ${JOIN_STEP_TIMEOUT_MS} ms, at ${st.stage} (websocket open: ${st.sock.open})`);
      st.finish('join timeout');
    });
    subs.push(st);
  }

  for (let i = 0; i < JOIN_PARALLEL; i++) launchNext();
  if (count === 0) timers.cancel(deadline);
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
