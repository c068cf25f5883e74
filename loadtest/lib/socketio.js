// A minimal Socket.IO v5 / Engine.IO v4 client for k6, written by hand over
// k6/experimental/websockets (k6 >= 0.5x; the module k6 1.1.0 ships).
//
// It speaks only what the load scripts need, on the default namespace "/":
//   WebSocket open                            client → `40` (Socket.IO CONNECT)
//   server → `0{...}` (Engine.IO open; may be lost by k6, see onopen below)
//   server → `40{"sid":..}`                   (CONNECT reply: onConnect)
//   server → `44{...}`                        (CONNECT refused: onConnectError)
//   server → `2` (ping)                       client → `3` (pong)
//   server → `42["name",arg]`                 (event: onEvent)
//   client → `42<id>["name",arg]`             server → `43<id>[ack]` (ack callback)
// One Engine.IO packet per WebSocket message (the websocket transport never
// batches), so no payload splitting is needed.

import { WebSocket } from 'k6/experimental/websockets';
import { Counter } from 'k6/metrics';

// Engine.IO open packets k6 dropped (the CONNECT reply came, the open packet
// sent before it never reached the script): k6's race, not the broker's.
const openPacketsDropped = new Counter('k6_ws_open_packet_dropped');

/** The ws:// Socket.IO endpoint from WS_URL, or derived from BASE_URL. */
export function wsUrl() {
  if (__ENV.WS_URL) return __ENV.WS_URL;
  const base = baseUrl().replace(/^http/, 'ws');
  return `${base}/socket.io/?EIO=4&transport=websocket`;
}

/** The http:// base of the broker (for /api and /health). */
export function baseUrl() {
  if (__ENV.BASE_URL) return __ENV.BASE_URL.replace(/\/+$/, '');
  if (__ENV.WS_URL) {
    const m = /^(wss?):\/\/([^/?#]+)/.exec(__ENV.WS_URL);
    if (m) return `${m[1] === 'wss' ? 'https' : 'http'}://${m[2]}`;
  }
  return 'http://127.0.0.1:3000';
}

/** Integer from the environment, with a default. */
export function envInt(name, dflt) {
  const v = __ENV[name];
  if (v === undefined || v === '') return dflt;
  const n = parseInt(v, 10);
  if (Number.isNaN(n)) throw new Error(`${name} must be an integer, got ${JSON.stringify(v)}`);
  return n;
}

/** Float from the environment, with a default. */
export function envFloat(name, dflt) {
  const v = __ENV[name];
  if (v === undefined || v === '') return dflt;
  const n = parseFloat(v);
  if (Number.isNaN(n)) throw new Error(`${name} must be a number, got ${JSON.stringify(v)}`);
  return n;
}

/** Headers for /api calls (Authorization when API_KEY is set). */
export function apiHeaders() {
  const h = { 'Content-Type': 'application/json' };
  if (__ENV.API_KEY) h.Authorization = `Bearer ${__ENV.API_KEY}`;
  return h;
}

/**
 * One Socket.IO connection.
 *
 * handlers (all optional):
 *   onConnect(sid)              CONNECT reply received
 *   onConnectError(data)        CONNECT refused (`44`)
 *   onEvent(name, arg, raw)     server event; not called for the event
 *                               names in `ignore` (cheap filtering of chatty
 *                               announcements, without JSON.parse)
 *   onClose(code)               WebSocket closed (either side)
 *   onError(err)                WebSocket error
 * opts:
 *   auth     object sent in the CONNECT packet (`40{...}`)
 *   ignore   event names to drop unparsed, e.g. ['user-joined', 'user-online']
 */
export class SioSocket {
  constructor(url, handlers, opts) {
    this.h = handlers || {};
    this.opts = opts || {};
    // Event names to drop before JSON.parse (a lookup on the raw name).
    this.ignore = {};
    (this.opts.ignore || []).forEach((n) => { this.ignore[n] = true; });
    this.acks = new Map();
    this.nextAckId = 1;
    this.sid = null; // Socket.IO socket id, from the CONNECT reply
    this.eioSid = null; // Engine.IO session id, from the open packet
    this.open = false;
    this.closed = false;
    this.startedAt = Date.now();
    this.ws = new WebSocket(url);
    this.ws.onopen = () => {
      this.open = true;
      this.openedAt = Date.now();
      // CONNECT right away instead of after the Engine.IO open packet: k6's
      // WebSocket (k6/experimental/websockets, 1.1.0) starts reading before
      // it marks the socket OPEN and silently drops a message read in that
      // window — sometimes the open packet, which the server sends first.
      // Nothing sent after `open` fires is lost, and the server does not
      // need the client to have seen its open packet.
      this.ws.send(this.opts.auth ? `40${JSON.stringify(this.opts.auth)}` : '40');
    };
    this.ws.onmessage = (e) => this._frame(e.data);
    this.ws.onclose = (e) => {
      this.closed = true;
      this.open = false;
      if (this.h.onClose) this.h.onClose(e && e.code);
    };
    this.ws.onerror = (e) => { if (this.h.onError) this.h.onError(e && e.error); };
  }

  /** Emit an event; with `ack` a callback receives the server's ack argument. */
  emit(name, arg, ack) {
    if (!this.open) return false;
    const body = JSON.stringify(arg === undefined ? [name] : [name, arg]);
    if (ack) {
      const id = this.nextAckId++;
      this.acks.set(id, ack);
      this.ws.send(`42${id}${body}`);
    } else {
      this.ws.send(`42${body}`);
    }
    return true;
  }

  /** Socket.IO DISCONNECT then WebSocket close, as socket.io-client does. */
  close() {
    if (this.closed) return;
    if (this.open) {
      try { this.ws.send('41'); } catch (_) { /* already closing */ }
    }
    try { this.ws.close(); } catch (_) { /* already closed */ }
  }

  _frame(data) {
    if (typeof data !== 'string' || data.length === 0) return;
    switch (data.charCodeAt(0)) {
      case 48: // '0' Engine.IO open (CONNECT was already sent on `open`)
        try { this.eioSid = JSON.parse(data.slice(1)).sid; } catch (_) { /* diagnostics only */ }
        return;
      case 50: // '2' ping
        this.ws.send('3');
        return;
      case 49: // '1' Engine.IO close
        this.close();
        return;
      case 52: // '4' message → Socket.IO packet
        this._packet(data);
        return;
      default:
        // '6' noop and anything else: nothing to do on the websocket transport.
    }
  }

  _packet(data) {
    const type = data.charCodeAt(1);
    if (type === 50) { // '2' EVENT
      let j = 2;
      while (j < data.length && data.charCodeAt(j) >= 48 && data.charCodeAt(j) <= 57) j++;
      // data[j] is '[', data[j+1] the quote opening the event name (event
      // names with escaped quotes are not ignorable, only parsed).
      if (this.ignore[data.slice(j + 2, data.indexOf('"', j + 2))] === true) return;
      if (!this.h.onEvent) return;
      const arr = JSON.parse(data.slice(j));
      this.h.onEvent(arr[0], arr[1], data);
    } else if (type === 51) { // '3' ACK
      let j = 2;
      while (j < data.length && data.charCodeAt(j) >= 48 && data.charCodeAt(j) <= 57) j++;
      const id = parseInt(data.slice(2, j), 10);
      const cb = this.acks.get(id);
      if (!cb) return;
      this.acks.delete(id);
      const arr = JSON.parse(data.slice(j));
      cb(arr[0]);
    } else if (type === 48) { // '0' CONNECT reply
      const body = data.length > 2 ? JSON.parse(data.slice(2)) : {};
      this.sid = body.sid;
      this.connectedAt = Date.now();
      if (this.eioSid === null) openPacketsDropped.add(1);
      if (this.h.onConnect) this.h.onConnect(this.sid);
    } else if (type === 52) { // '4' CONNECT_ERROR
      const body = data.length > 2 ? JSON.parse(data.slice(2)) : {};
      if (this.h.onConnectError) this.h.onConnectError(body);
      this.close();
    } else if (type === 49) { // '1' DISCONNECT from the server
      this.close();
    }
  }
}
