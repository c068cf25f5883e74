// Connection storm: many virtual users open a WebSocket, send the Socket.IO
// CONNECT, authenticate (with ack), join a room (with ack), hold briefly and
// disconnect — over and over, for DURATION. It measures what a reconnect
// wave (deploy, network blip) costs: handshake latency and handshakes/s.
//
//   k6 run -e BASE_URL=http://127.0.0.1:3000 -e VUS=100 -e DURATION=30s loadtest/connection-storm.js
//
// Environment (all optional):
//   BASE_URL / WS_URL  broker (default http://127.0.0.1:3000)
//   VUS        concurrent virtual users, one connection each (100)
//   RAMP       time to ramp from 0 to VUS (5s)
//   DURATION   time at VUS after the ramp (30s)
//   HOLD_MS    time a connection stays after its join ack (500)
//   ROOMS      rooms the users are spread over (20)
//   TIMEOUT_MS a session not through its join ack by then fails (10000)
//   P95_CONNECT_MS / P95_AUTH_MS / P95_HANDSHAKE_MS  threshold overrides
import http from 'k6/http';
import { check, fail } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import { SioSocket, wsUrl, baseUrl, envInt } from './lib/socketio.js';
import { Timers } from './lib/timers.js';

const VUS = envInt('VUS', 100);
const HOLD_MS = envInt('HOLD_MS', 500);
const ROOMS = envInt('ROOMS', 20);
const TIMEOUT_MS = envInt('TIMEOUT_MS', 10000);
const WS_URL = wsUrl();

// new WebSocket() → Socket.IO CONNECT reply `40{"sid":..}`: TCP, HTTP
// upgrade, then the CONNECT round trip (CONNECT is sent as soon as the
// WebSocket is open; see lib/socketio.js).
const connectMs = new Trend('storm_connect_ms', true);
// authenticate emitted → its ack.
const authAckMs = new Trend('storm_auth_ack_ms', true);
// join-room emitted → its ack.
const joinAckMs = new Trend('storm_join_ack_ms', true);
// new WebSocket() → authenticate ack: the "handshake" of issue 6.
const handshakeMs = new Trend('storm_handshake_ms', true);
const handshakes = new Counter('storm_handshakes');
// One sample per session: did it get through CONNECT, auth and join in time?
const sessionOk = new Rate('storm_session_ok');

export const options = {
  scenarios: {
    storm: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: [
        { duration: __ENV.RAMP || '5s', target: VUS },
        { duration: __ENV.DURATION || '30s', target: VUS },
      ],
      gracefulRampDown: '5s',
      gracefulStop: '10s',
    },
  },
  thresholds: {
    checks: ['rate>0.99'],
    storm_session_ok: ['rate>0.99'],
    storm_connect_ms: [`p(95)<${envInt('P95_CONNECT_MS', 250)}`],
    storm_auth_ack_ms: [`p(95)<${envInt('P95_AUTH_MS', 100)}`],
    storm_join_ack_ms: [`p(95)<${envInt('P95_AUTH_MS', 100)}`],
    storm_handshake_ms: [`p(95)<${envInt('P95_HANDSHAKE_MS', 300)}`],
    storm_handshakes: ['count>0'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  const res = http.get(`${baseUrl()}/health`);
  if (res.status !== 200) fail(`broker not healthy at ${baseUrl()}/health: status ${res.status}`);
  return { run: Date.now().toString(36) };
}

export default function (data) {
  const t0 = Date.now();
  const user = `storm-${data.run}-${__VU}-${__ITER}`;
  const room = `storm-${data.run}-${__VU % ROOMS}`;
  const st = { connected: false, connectedEvent: false, auth: false, join: false, closedEarly: false, errors: 0 };
  let done = false;
  const timers = new Timers(50);

  const finish = () => {
    if (done) return;
    done = true;
    timers.cancelAll();
    sessionOk.add(st.connected && st.auth && st.join);
    check(st, {
      'CONNECT reply': (s) => s.connected,
      'connected event': (s) => s.connectedEvent,
      'authenticate ack success': (s) => s.auth,
      'join-room ack success': (s) => s.join,
      'not closed by the server': (s) => !s.closedEarly,
      'no error events': (s) => s.errors === 0,
    });
    sock.close();
  };

  const sock = new SioSocket(WS_URL, {
    onConnect: () => {
      st.connected = true;
      connectMs.add(Date.now() - t0);
      const ta = Date.now();
      sock.emit('authenticate', { userId: user }, (ack) => {
        const now = Date.now();
        authAckMs.add(now - ta);
        handshakeMs.add(now - t0);
        st.auth = !!ack && ack.success === true && ack.userId === user && ack.socketId === sock.sid;
        if (!st.auth) { finish(); return; }
        handshakes.add(1);
        const tj = Date.now();
        sock.emit('join-room', { roomName: room }, (jack) => {
          joinAckMs.add(Date.now() - tj);
          st.join = !!jack && jack.success === true && jack.roomName === room && jack.memberCount >= 1;
          if (!st.join) { finish(); return; }
          timers.after(HOLD_MS, finish);
        });
      });
    },
    onEvent: (name, arg) => {
      if (name === 'connected') st.connectedEvent = true;
      else if (name === 'error') {
        st.errors++;
        console.warn(`${user}: error event ${JSON.stringify(arg)}`);
      }
    },
    onConnectError: () => finish(),
    onClose: () => {
      if (!done) { st.closedEarly = true; finish(); }
    },
  }, {
    // Presence and room announcements of the other users: not measured here.
    ignore: ['user-online', 'user-offline', 'user-joined', 'user-left'],
  });

  timers.after(TIMEOUT_MS, finish);
}
