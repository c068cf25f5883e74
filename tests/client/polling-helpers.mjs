// Helpers for the long-polling / upgrade / CORS tests (polling.test.mjs):
// raw HTTP requests, a raw Engine.IO long-polling client, a raw WebSocket
// that takes over a polling session, and a socket.io-client WebSocket
// transport whose upgrade probe waits for a gate (to make messages flow
// *before and during* an upgrade on purpose).

import http from 'node:http';
import { NodeXHR, NodeWebSocket } from 'engine.io-client';
import { assert, WebSocket, sleep } from './helpers.mjs';

/** The Engine.IO v4 payload separator (polling bodies). */
export const RS = '\x1e';

/**
 * One HTTP request over a NEW TCP connection (agent: false), so that with
 * SO_REUSEPORT consecutive requests of one session land on different shards.
 * Resolves { status, headers, text, json } (json undefined if not JSON).
 * `signal` aborts (rejects with AbortError). Rejects after timeoutMs.
 */
export function httpRequest(port, method, path, { headers = {}, body, timeoutMs = 10000, signal } = {}) {
  const payload = body === undefined ? null : (Buffer.isBuffer(body) ? body : Buffer.from(String(body)));
  const hdrs = { ...headers };
  if (payload) {
    if (!Object.keys(hdrs).some((k) => k.toLowerCase() === 'content-type')) hdrs['Content-Type'] = 'text/plain;charset=UTF-8';
    hdrs['Content-Length'] = String(payload.length);
  }
  return new Promise((resolve, reject) => {
    let settled = false;
    const finish = (fn, v) => { if (!settled) { settled = true; clearTimeout(timer); fn(v); } };
    const req = http.request({ host: '127.0.0.1', port, method, path, headers: hdrs, agent: false, signal }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('error', (e) => finish(reject, e));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try { json = JSON.parse(text); } catch { json = undefined; }
        finish(resolve, { status: res.statusCode, headers: res.headers, text, json });
      });
    });
    const timer = setTimeout(() => {
      req.destroy();
      finish(reject, new Error(`${method} ${path}: no complete answer within ${timeoutMs} ms`));
    }, timeoutMs);
    // The server may answer (413) before reading the whole body and close the
    // connection: a write error after the response started is not a failure.
    req.on('error', (e) => { if (!req.res) finish(reject, e.name === 'AbortError' ? e : new Error(`${method} ${path}: ${e.message}`)); });
    if (payload) req.write(payload);
    req.end();
  });
}

export const showRes = (r) => `HTTP ${r.status} ${JSON.stringify(r.text.slice(0, 300))}`;

/**
 * Assert an Engine.IO error answer: `status` (400 unless given) with the
 * JSON body { code, message } of the reference server.
 */
export function assertEngineError(r, code, what, status = 400) {
  assert.equal(r.status, status, `${what}: expected HTTP ${status} with Engine.IO error code ${code}, got ${showRes(r)}`);
  assert.ok(r.json && typeof r.json === 'object', `${what}: body should be the Engine.IO error JSON, got ${showRes(r)}`);
  if (code !== undefined && code !== null) {
    assert.equal(r.json.code, code, `${what}: Engine.IO error code, got ${showRes(r)}`);
  } else {
    assert.equal(typeof r.json.code, 'number', `${what}: Engine.IO error code should be a number, got ${showRes(r)}`);
  }
  assert.equal(typeof r.json.message, 'string', `${what}: Engine.IO error message, got ${showRes(r)}`);
}

export const ENGINE_ERRORS = {
  0: 'Transport unknown',
  1: 'Session ID unknown',
  2: 'Bad handshake method',
  3: 'Bad request',
  4: 'Forbidden',
  5: 'Unsupported protocol version',
};

let cacheBuster = 0;
const t = () => `${Date.now().toString(36)}${(cacheBuster++).toString(36)}`;

export function enginePath(query) {
  return `/socket.io/?${query}&t=${t()}`;
}

/**
 * A raw Engine.IO v4 long-polling session: handshake GET, then get()/post()
 * with sid. Every request uses a new TCP connection.
 */
export async function openPolling(server, { headers = {}, query = 'EIO=4&transport=polling' } = {}) {
  const port = typeof server === 'number' ? server : server.port;
  const res = await httpRequest(port, 'GET', enginePath(query), { headers });
  assert.equal(res.status, 200, `polling handshake: ${showRes(res)}`);
  assert.equal(res.text[0], '0', `polling handshake body should be an open packet: ${showRes(res)}`);
  const open = JSON.parse(res.text.slice(1));
  const sid = open.sid;
  const s = {
    port, sid, open, handshake: res,
    path: (extra = '') => enginePath(`EIO=4&transport=polling&sid=${encodeURIComponent(sid)}${extra}`),
    /** GET; resolves the response plus `packets` (the payload split on RS). */
    async get(opts = {}) {
      const r = await httpRequest(port, 'GET', s.path(), { headers, ...opts });
      r.packets = r.status === 200 ? r.text.split(RS) : null;
      return r;
    },
    post(body, opts = {}) {
      return httpRequest(port, 'POST', s.path(), { headers, body, ...opts });
    },
    /** POST and assert 200 "ok". */
    async send(...packets) {
      const r = await s.post(packets.join(RS));
      assert.equal(r.status, 200, `POST ${JSON.stringify(packets).slice(0, 200)}: ${showRes(r)}`);
      assert.equal(r.text, 'ok', `POST answer body: ${showRes(r)}`);
      return r;
    },
    /**
     * GET until a packet matching pred arrives (answering pings with pongs).
     * Returns that packet; `s.seen` keeps every packet received.
     */
    async until(pred, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const idx = s.backlog.findIndex(pred);
        if (idx !== -1) return s.backlog.splice(idx, 1)[0];
        if (Date.now() > deadline) throw new Error(`polling ${sid}: no matching packet within ${timeoutMs} ms; got ${JSON.stringify(s.seen).slice(-500)}`);
        const r = await s.get({ timeoutMs: Math.max(500, deadline - Date.now() + 500) });
        assert.equal(r.status, 200, `GET while waiting: ${showRes(r)}`);
        for (const p of r.packets) {
          s.seen.push(p);
          if (p === '2') { await s.send('3'); continue; }
          s.backlog.push(p);
        }
      }
    },
    backlog: [],
    seen: [],
  };
  return s;
}

/**
 * Open a WebSocket to /socket.io/ with `query`. Resolves { ws, messages,
 * next(pred, ms), send(text), closed } once open, or { refused: { status,
 * headers, text, json } } if the server answered the upgrade request with an
 * HTTP response instead.
 */
export function openWs(port, query, { headers = {}, timeoutMs = 5000 } = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/socket.io/?${query}`, { headers });
    const c = { ws, messages: [], waiters: new Set(), closeInfo: null };
    const timer = setTimeout(() => { ws.terminate(); reject(new Error(`websocket ${query}: neither opened nor refused within ${timeoutMs} ms`)); }, timeoutMs);
    c.closed = new Promise((res) => {
      ws.on('close', (code, reason) => {
        c.closeInfo = { code, reason: reason.toString(), at: Date.now() };
        for (const w of [...c.waiters]) w(null);
        res(c.closeInfo);
      });
    });
    ws.on('message', (data, isBinary) => {
      const m = isBinary ? data : data.toString();
      c.messages.push(m);
      for (const w of [...c.waiters]) w(m);
    });
    c.send = (text) => new Promise((res, rej) => ws.send(text, (err) => (err ? rej(err) : res())));
    /** Next message (in arrival order, consuming) matching pred; null if closed first. */
    c.cursor = 0;
    c.next = (pred = () => true, ms = 5000) => new Promise((res, rej) => {
      const scan = () => {
        while (c.cursor < c.messages.length) {
          const m = c.messages[c.cursor];
          c.cursor += 1;
          if (pred(m)) return { m };
        }
        return null;
      };
      const hit = scan();
      if (hit) { res(hit.m); return; }
      if (c.closeInfo) { res(null); return; }
      const tm = setTimeout(() => { c.waiters.delete(w); rej(new Error(`websocket: no matching message within ${ms} ms; got ${JSON.stringify(c.messages).slice(-400)}`)); }, ms);
      const w = (m) => {
        if (m === null) { clearTimeout(tm); c.waiters.delete(w); res(null); return; }
        const h = scan();
        if (h) { clearTimeout(tm); c.waiters.delete(w); res(h.m); }
      };
      c.waiters.add(w);
    });
    ws.once('open', () => { clearTimeout(timer); resolve(c); });
    ws.once('unexpected-response', (req, res) => {
      const chunks = [];
      res.on('data', (d) => chunks.push(d));
      res.on('end', () => {
        clearTimeout(timer);
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try { json = JSON.parse(text); } catch { json = undefined; }
        resolve({ refused: { status: res.statusCode, headers: res.headers, text, json } });
        req.destroy();
      });
    });
    ws.once('error', (err) => { clearTimeout(timer); reject(err); });
  });
}

// ---------------------------------------------------------------------------
// socket.io-client with a gated upgrade
// ---------------------------------------------------------------------------

/**
 * A gate: `gate.open()` resolves `gate.opened`.
 */
export function makeGate() {
  let open;
  const opened = new Promise((resolve) => { open = resolve; });
  return { opened, open };
}

/**
 * socket.io-client options for the default transports (polling, then the
 * upgrade to websocket), except that the websocket probe does not start until
 * `gate.open()` is called. The transport classes are the ones
 * socket.io-client uses by default in Node.js (engine.io-client's NodeXHR and
 * NodeWebSocket); the subclass only delays doOpen().
 */
export function gatedUpgradeTransports(gate) {
  class GatedWebSocket extends NodeWebSocket {
    doOpen() {
      gate.opened.then(() => {
        if (this.readyState === 'opening') super.doOpen();
      });
    }
  }
  return [NodeXHR, GatedWebSocket];
}

/** Resolve when the socket.io-client socket's engine has upgraded to websocket. */
export async function waitUpgraded(socket, timeoutMs = 10000) {
  const engine = socket.io.engine;
  if (engine.transport.name === 'websocket') return;
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`socket ${socket.id} did not upgrade within ${timeoutMs} ms (transport ${engine.transport.name})`)), timeoutMs);
    engine.once('upgrade', () => { clearTimeout(timer); resolve(); });
  });
}

/** GET /api/connections (loopback, no API key) → Map socketId → entry. */
export async function connections(server) {
  const r = await httpRequest(server.port, 'GET', '/api/connections');
  assert.equal(r.status, 200, `GET /api/connections: ${showRes(r)}`);
  return new Map(r.json.connections.map((c) => [c.socketId, c]));
}

export { sleep };
