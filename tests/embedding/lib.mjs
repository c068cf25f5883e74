// What the embedding clients share: the official clients from
// tests/client/node_modules (these scripts live outside that package, so
// they load them through its package.json), bounded waits, and results as
// JSON on stdout for the Rust test (tests/embedding.rs) to assert on.
import { createRequire } from 'node:module';

export const require = createRequire(new URL('../client/package.json', import.meta.url));

/** Every wait of a script is bounded by this; the Rust side bounds the whole run too. */
export const WAIT_MS = 10000;

/** The next `event` on `emitter`, as its argument list; rejects after WAIT_MS. */
export function once(emitter, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${WAIT_MS} ms`)), WAIT_MS);
    emitter.once(event, (...args) => {
      clearTimeout(timer);
      resolve(args);
    });
  });
}

/** JSON for `value`, binary data (Buffer, ArrayBuffer, typed arrays) as `{ bytes: [...] }`. */
export function plain(value) {
  if (Buffer.isBuffer(value) || ArrayBuffer.isView(value)) return { bytes: Array.from(new Uint8Array(value.buffer, value.byteOffset, value.byteLength)) };
  if (value instanceof ArrayBuffer) return { bytes: Array.from(new Uint8Array(value)) };
  if (Array.isArray(value)) return value.map(plain);
  if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
  return value;
}

/** Prints one line of JSON for the Rust side. */
export function report(value) {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

/**
 * Runs `main`; any failure is printed to stderr and exits 1 (the Rust test
 * shows it). On success the process ends by itself, once what `main` left
 * in flight is done: a long-polling client's disconnect is a request still
 * on its way, and exiting at once would leave the server to find out by
 * the heartbeat, 45 s later.
 */
export function run(main) {
  main().then(
    () => { process.exitCode = 0; },
    (error) => {
      process.stderr.write(`${error.stack ?? error}\n`);
      process.exit(1);
    },
  );
}
