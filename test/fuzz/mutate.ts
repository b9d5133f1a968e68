// Input generation for the fuzzer (test/fuzz/engine.ts): every case is derived from a seeded PRNG
// alone, so a (seed, target, case) triple replays it exactly. Three kinds of input:
//   - mutations of valid seeds (each target encodes real messages with the project's own encoders):
//     bit flips, interesting bytes and integers, inserts, deletes, duplicated ranges, splices of two
//     seeds, msgpack headers declaring huge lengths;
//   - structured values (msgpack / JSON shapes: right keys with wrong types, hostile objects whose
//     toString/valueOf are data, __proto__ keys, deep nesting, long strings, huge arrays);
//   - pure random bytes.
// A small share of cases is large (tens to hundreds of KiB), so quadratic work shows up as a hang.
import { mulberry32 } from '../fakes/rng';

export type Rng = () => number;

/** A PRNG for one case of one target: independent of every other case, so any case replays alone. */
export function caseRng(seed: number, target: string, index: number): Rng {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  for (let i = 0; i < target.length; i++) h = Math.imul(h ^ target.charCodeAt(i), 0x01000193) >>> 0;
  h = Math.imul(h ^ (index >>> 0), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ Math.floor(index / 4294967296), 0xc2b2ae35) >>> 0;
  return mulberry32(h ^ (h >>> 16));
}

export const int = (r: Rng, n: number): number => Math.floor(r() * n);
export const pick = <T>(r: Rng, xs: readonly T[]): T => xs[int(r, xs.length)];

export function randomBytes(r: Rng, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = int(r, 256);
  return b;
}

const INTERESTING8 = [0x00, 0x01, 0x7f, 0x80, 0xff, 0xc0, 0xc1, 0xc4, 0xd9, 0xdc, 0xdd, 0xde, 0xdf, 0xc9, 0xd4, 0xd5, 0xc7, 0xc8, 0x90, 0x9f, 0x80, 0x8f, 0xa0, 0xbf, 0x3f, 0x2e, 0x0a, 0x20, 0x7b, 0x5b, 0x22];
const INTERESTING32 = [0, 1, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xffffffff, 0xfffffffe, 0x00ffffff];
/** msgpack headers that declare huge containers / strings / binaries / extensions with few bytes after. */
const HUGE_HEADERS: number[][] = [
  [0xdd, 0xff, 0xff, 0xff, 0xff], [0xdc, 0xff, 0xff], [0xdf, 0xff, 0xff, 0xff, 0xff], [0xde, 0xff, 0xff],
  [0xdb, 0xff, 0xff, 0xff, 0xff], [0xda, 0xff, 0xff], [0xc6, 0xff, 0xff, 0xff, 0xff], [0xc5, 0xff, 0xff],
  [0xc9, 0xff, 0xff, 0xff, 0xff, 0x01], [0xc8, 0xff, 0xff, 0x72], [0xdd, 0x7f, 0xff, 0xff, 0xff], [0xdb, 0x00, 0x10, 0x00, 0x00],
];

/** One random edit of buf (which it may return or replace). */
function mutateOnce(r: Rng, buf: Buffer, seeds: readonly Uint8Array[]): Buffer {
  const n = buf.length;
  switch (int(r, 10)) {
    case 0: { // flip bits
      if (n === 0) return randomBytes(r, 1 + int(r, 8));
      const b = Buffer.from(buf);
      for (let k = 1 + int(r, 4); k > 0; k--) b[int(r, n)] ^= 1 << int(r, 8);
      return b;
    }
    case 1: { // interesting byte
      if (n === 0) return Buffer.of(pick(r, INTERESTING8));
      const b = Buffer.from(buf);
      b[int(r, n)] = pick(r, INTERESTING8);
      return b;
    }
    case 2: { // interesting u16/u32, either endianness
      if (n < 4) return Buffer.concat([buf, randomBytes(r, 4)]);
      const b = Buffer.from(buf);
      const v = pick(r, INTERESTING32);
      const at = int(r, n - 3);
      if (r() < 0.5) b.writeUInt32BE(v >>> 0, at);
      else b.writeUInt16BE(v & 0xffff, Math.min(at, n - 2));
      return b;
    }
    case 3: { // insert random bytes
      const at = int(r, n + 1);
      return Buffer.concat([buf.subarray(0, at), randomBytes(r, 1 + int(r, 16)), buf.subarray(at)]);
    }
    case 4: { // delete a range
      if (n === 0) return buf;
      const at = int(r, n);
      return Buffer.concat([buf.subarray(0, at), buf.subarray(at + 1 + int(r, Math.min(16, n - at)))]);
    }
    case 5: { // duplicate a range
      if (n === 0) return buf;
      const at = int(r, n);
      const len = 1 + int(r, Math.min(64, n - at));
      const to = int(r, n + 1);
      return Buffer.concat([buf.subarray(0, to), buf.subarray(at, at + len), buf.subarray(to)]);
    }
    case 6: { // splice with another seed
      const o = pick(r, seeds);
      const a = int(r, n + 1);
      const b = int(r, o.length + 1);
      return Buffer.concat([buf.subarray(0, a), Buffer.from(o.buffer, o.byteOffset, o.length).subarray(b)]);
    }
    case 7: { // a huge-length header somewhere
      const at = int(r, n + 1);
      return Buffer.concat([buf.subarray(0, at), Buffer.from(pick(r, HUGE_HEADERS)), buf.subarray(at + int(r, 6))]);
    }
    case 8: // truncate
      return buf.subarray(0, int(r, n + 1));
    default: { // overwrite a run with one byte
      if (n === 0) return buf;
      const b = Buffer.from(buf);
      const at = int(r, n);
      b.fill(pick(r, INTERESTING8), at, at + 1 + int(r, Math.min(32, n - at)));
      return b;
    }
  }
}

export function mutate(r: Rng, seeds: readonly Uint8Array[]): Buffer {
  const s = pick(r, seeds);
  let b = Buffer.from(s.buffer, s.byteOffset, s.length);
  for (let k = 1 + (r() < 0.3 ? int(r, 8) : 0); k > 0; k--) b = mutateOnce(r, b, seeds);
  return b;
}

// ---- structured values ------------------------------------------------------------------------

const KEYS = ['v', 'k', 'e', 't', 'o', 'p', 'c', 'h', 'm', 'w', 'd', 'range', 'ring', 'px', 'seeds', 'name', 'nickname', 'uid', 'connId',
  'overlays', 'overlayParams', 'sleeve', 'fastdp', 'port', 'hb', 'mac', 'vtep', 'trusted', 'listenPort', 'version', 'endpoints', 'exposed',
  'targets', 'cniVersion', 'type', 'prevResult', 'ips', 'dns', 'ident', 'addr', 'addrs', 'cidrs', 'netns', 'peers', 'peer', 'replace',
  'masquerade', 'container', 'id', 'timeoutMs', 'subnet', 'env', 'stdin', 'Options', 'Pool', 'PoolID', 'Address', 'NetworkID', 'EndpointID',
  'Interface', 'IPv4Data', 'toString', 'valueOf', '__proto__', 'constructor', 'prototype', 'hello', 'idx', 'on', 'why', 'token', 'channel', 'src', 'payload'];

/** A hostile or odd scalar. */
function scalar(r: Rng): unknown {
  switch (int(r, 14)) {
    case 0: return int(r, 256) - 32;
    case 1: return pick(r, [0, 1, -1, 2 ** 31, 2 ** 32, 2 ** 53, -(2 ** 53), 2 ** 64, 1.5, -0, NaN, Infinity, -Infinity, Number.MAX_VALUE]);
    case 2: return r() < 0.5;
    case 3: return null;
    case 4: return '';
    case 5: return pick(r, ['02:00:00:00:00:01', '10.32.0.1', '10.32.0.0/12', '1.2.3.4:6783', 'weave.local.', 'a.weave.local.', '-1', 'h:-5', 'a:99999999', '300.1.1.1', '[::1]:1', '//[', '..', '/', 'sleeve', 'fastdp', 'hello', 'hear', 'off', '0.4.0', '1.0.0', '1.1.0', 'weave-net']);
    case 6: return 'x'.repeat(int(r, 40) === 0 ? 70_000 : int(r, 300));
    case 7: return String.fromCharCode(...Array.from({ length: int(r, 12) }, () => int(r, 0x10000)));
    case 8: return randomBytes(r, int(r, 40));
    case 9: return { toString: int(r, 5), valueOf: 'x' };
    case 10: return { toString: null };
    case 11: return [];
    case 12: return {};
    default: return int(r, 2 ** 32);
  }
}

/** A random value up to `depth` deep: right keys, wrong shapes. */
export function value(r: Rng, depth = 4): unknown {
  if (depth <= 0 || r() < 0.35) return scalar(r);
  if (r() < 0.5) {
    const n = int(r, 8) === 0 ? int(r, 40) : int(r, 6);
    return Array.from({ length: n }, () => value(r, depth - 1));
  }
  const o: Record<string, unknown> = {};
  let x: unknown;
  for (let k = int(r, 7); k > 0; k--) {
    const key = r() < 0.9 ? pick(r, KEYS) : typeof (x = scalar(r)) === 'string' ? x.slice(0, 20) : typeof x;
    Object.defineProperty(o, key, { value: value(r, depth - 1), enumerable: true, writable: true, configurable: true });
  }
  return o;
}

/** A copy of a seed object with some fields replaced by random values (keeps most of the shape). */
export function perturb(r: Rng, v: unknown, depth = 0): unknown {
  if (depth > 6) return v;
  if (Array.isArray(v)) {
    const out = v.map((x) => (r() < 0.15 ? value(r, 2) : perturb(r, x, depth + 1)));
    if (r() < 0.1) out.push(value(r, 2));
    if (r() < 0.1 && out.length) out.splice(int(r, out.length), 1);
    return out;
  }
  if (v && typeof v === 'object' && !(v instanceof Uint8Array)) {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      if (r() < 0.05) continue;
      Object.defineProperty(out, k, { value: r() < 0.15 ? value(r, 2) : perturb(r, x, depth + 1), enumerable: true, writable: true, configurable: true });
    }
    if (r() < 0.1) Object.defineProperty(out, pick(r, KEYS), { value: value(r, 2), enumerable: true, writable: true, configurable: true });
    return out;
  }
  return r() < 0.1 ? scalar(r) : v;
}

/** JSON text of a value (Uint8Array as a list of numbers), or a mutation of that text. */
export function jsonText(v: unknown): string {
  return JSON.stringify(v, (_k, x) => (x instanceof Uint8Array ? Array.from(x.subarray(0, 16)) : typeof x === 'number' && !Number.isFinite(x) ? 1e308 : x)) ?? 'null';
}

/**
 * Splits buf into chunks: whole, byte by byte, or random sizes (stream decoders must not care). A
 * generator: the pieces are made as the decoder takes them, so a case's time is the decoder's.
 */
export function* chunks(r: Rng, buf: Uint8Array): Generator<Uint8Array> {
  const mode = int(r, 4);
  if (mode === 0 || buf.length === 0) {
    yield buf;
    return;
  }
  for (let i = 0; i < buf.length;) {
    const n = mode === 1 ? 1 : 1 + int(r, mode === 2 ? 8 : 512);
    yield buf.subarray(i, i + n);
    i += n;
  }
}
