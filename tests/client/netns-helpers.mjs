// Private network namespaces for tests that need another host or a port
// nobody else can hold (Linux, root: `ip netns`, `unshare`).
//
// - clientHost(): a namespace joined to this one by a veth pair whose two
//   addresses (a random 10.25x.y.z/30) exist only between the two ends, so
//   a client run inside it reaches a server bound to 0.0.0.0 here from a
//   non-loopback address, whatever interfaces the machine has.
// - namespace(): a namespace with only `lo`, where every port is free.
// - netnsMissing(): why these cannot run here (not root, no `ip`), or false.
//   Under CI=true a missing tool fails the test instead of skipping it
//   (.ci/run installs iproute2).

import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';

const IN_CI = process.env.CI === 'true';

function which(bin) {
  for (const dir of (process.env.PATH || '').split(':').concat(['/usr/sbin', '/sbin', '/usr/bin', '/bin'])) {
    const full = `${dir}/${bin}`;
    try { fs.accessSync(full, fs.constants.X_OK); return full; } catch { /* next */ }
  }
  return null;
}

export const IP = which('ip');
export const UNSHARE = which('unshare');
export const CURL = which('curl');

/**
 * A reason to skip (a string) when the namespace tests cannot run here, or
 * false. Under CI=true it is always false: the test then fails on what is
 * missing (requireNetns) rather than skip.
 */
export function netnsMissing(...needs) {
  if (IN_CI) return false;
  if (process.getuid?.() !== 0) return 'network namespaces need root';
  for (const [name, bin] of [['ip (iproute2)', IP], ...needs]) if (!bin) return `${name} is not installed`;
  return false;
}

/** Throws with a clear message when something the namespace tests need is missing. */
export function requireNetns(...needs) {
  if (process.getuid?.() !== 0) throw new Error(`network namespaces need root (CI=${process.env.CI})`);
  for (const [name, bin] of [['ip (iproute2)', IP], ...needs]) {
    if (!bin) throw new Error(`${name} is required (CI=${process.env.CI}); .ci/run installs Debian's iproute2, curl and util-linux`);
  }
}

const run = (bin, args) => execFileSync(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: 10000 });

/**
 * A new network namespace with only `lo` (up): nothing else listens there,
 * so any port is free. Returns { name, exec(args), prefix, remove() }:
 * `prefix` runs a command inside (startServer's `prefix` option); remove()
 * deletes it and is safe to call twice.
 */
export function namespace() {
  const tag = randomBytes(4).toString('hex');
  const name = `shardcast-${tag}`;
  const cleanups = [() => run(IP, ['netns', 'del', name])];
  let removed = false;
  const ns = {
    name, tag,
    prefix: [IP, 'netns', 'exec', name],
    remove() {
      if (removed) return;
      removed = true;
      for (const cleanup of cleanups) { try { cleanup(); } catch { /* already gone */ } }
    },
    onRemove(cleanup) { cleanups.push(cleanup); },
    /** Runs `args` inside the namespace; resolves with { code, stdout, stderr }. */
    exec: (args, { timeoutMs = 15000, cwd } = {}) => runIn(IP, ['netns', 'exec', name, ...args], timeoutMs, undefined, cwd),
  };
  try {
    run(IP, ['netns', 'add', name]);
    run(IP, ['netns', 'exec', name, 'ip', 'link', 'set', 'lo', 'up']);
  } catch (e) {
    ns.remove();
    throw new Error(`could not set up network namespace ${name}: ${e.stderr?.toString() || e.message}`);
  }
  return ns;
}

/**
 * A namespace plus a veth pair between it and this one. Returns
 * namespace()'s object plus serverIp (this side's address) and clientIp
 * (the namespace's); remove() deletes the namespace, which deletes the
 * pair with it.
 */
export function clientHost() {
  const host = namespace();
  // Interface names are at most 15 characters.
  const [here, there] = [`scA${host.tag}`, `scB${host.tag}`];
  // A random /30 in 10.250.0.0–10.254.255.255: two addresses, nothing else on the link.
  const r = randomBytes(3);
  const base = [10, 250 + (r[0] % 5), r[1], r[2] & 0xfc];
  host.serverIp = `${base[0]}.${base[1]}.${base[2]}.${base[3] + 1}`;
  host.clientIp = `${base[0]}.${base[1]}.${base[2]}.${base[3] + 2}`;
  // Deleting the namespace deletes its end and so the pair; this is for a
  // pair made before its move into the namespace failed.
  host.onRemove(() => run(IP, ['link', 'del', here]));
  try {
    run(IP, ['link', 'add', here, 'type', 'veth', 'peer', 'name', there]);
    run(IP, ['link', 'set', there, 'netns', host.name]);
    run(IP, ['addr', 'add', `${host.serverIp}/30`, 'dev', here]);
    run(IP, ['link', 'set', here, 'up']);
    run(IP, ['netns', 'exec', host.name, 'ip', 'addr', 'add', `${host.clientIp}/30`, 'dev', there]);
    run(IP, ['netns', 'exec', host.name, 'ip', 'link', 'set', there, 'up']);
  } catch (e) {
    host.remove();
    throw new Error(`could not set up the veth pair of ${host.name}: ${e.stderr?.toString() || e.message}`);
  }
  return host;
}

/** Runs a command to its end (killed after timeoutMs); resolves with { code, signal, stdout, stderr }. */
export function runIn(bin, args, timeoutMs = 15000, env, cwd) {
  return new Promise((resolve) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env, cwd });
    const out = [];
    const err = [];
    child.stdout.on('data', (d) => out.push(d));
    child.stderr.on('data', (d) => err.push(d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() });
    });
  });
}

/**
 * One HTTP request made with curl from inside a namespace (`exec` of
 * clientHost()), answered in the shape api.test.mjs's request() gives:
 * { status, headers, text, json }.
 */
export async function curlFrom(host, method, url, { body, headers = {} } = {}) {
  const args = ['curl', '-sS', '-i', '--max-time', '10', '-X', method];
  for (const [k, v] of Object.entries(headers)) args.push('-H', `${k}: ${v}`);
  if (body !== undefined) args.push('-H', 'Content-Type: application/json', '--data-binary', typeof body === 'string' ? body : JSON.stringify(body));
  args.push(url);
  const r = await host.exec(args);
  if (r.code !== 0) throw new Error(`curl ${method} ${url} in ${host.name} exited ${r.code}: ${r.stderr}`);
  const split = r.stdout.indexOf('\r\n\r\n');
  const head = r.stdout.slice(0, split).split('\r\n');
  const text = r.stdout.slice(split + 4);
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head[0])?.[1]);
  const responseHeaders = Object.fromEntries(head.slice(1).map((line) => {
    const i = line.indexOf(':');
    return [line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim()];
  }));
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status, headers: responseHeaders, text, json };
}
