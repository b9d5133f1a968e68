// The one msgpack codec of the project: every gossip channel (topology, ipam, dns, prefixes), the
// features frame of the handshake, the overlays' control messages and the state files encode with
// encodeMsg and decode with decodeMsg + the `want*` checks, so a malformed message becomes a
// ProtocolError (fatal for that connection only) rather than a TypeError somewhere deep in the
// topology or a gossiper.
import { Packr } from 'msgpackr';
import { ProtocolError, UsageError, describeValue, errMsg } from '../lib/errors';
import { isPeerName, type PeerName } from './peer';
import { formatHostPort, tryParseHostPort } from '../lib/addr';

// Records off: a record-extension stream would make one peer's decoder state depend on earlier
// messages, and maps decode as plain objects so validators see one shape. A record definition a
// peer sends anyway lives for that one unpack: without `structures` msgpackr starts every unpack
// with none, so one shared instance serves all connections (test/unit/codec.test.ts checks it).
const packr = new Packr({ useRecords: false, mapsAsObjects: true, moreTypes: false });

export function encodeMsg(obj: unknown): Uint8Array {
  return packr.pack(obj);
}

/**
 * A map like encodeMsg(fields) plus one more field, `key`, an array of values each already packed
 * (by encodeMsg). Topology messages list records that are re-sent unchanged many times while a mesh
 * forms; packing each record once and copying its bytes here is what keeps a 100-router mesh's
 * news from being re-encoded per message. The result decodes exactly as encodeMsg of the whole.
 */
export function encodeMsgWithPacked(fields: Record<string, unknown>, key: string, packed: readonly Uint8Array[]): Uint8Array {
  if (key in fields) throw new UsageError(`encodeMsgWithPacked: field ${key} given twice`);
  // the empty array is msgpack's fixarray 0x90 and, as the map's last value, the last byte
  const head = packr.pack({ ...fields, [key]: [] });
  if (head[head.length - 1] !== 0x90) throw new UsageError('encodeMsgWithPacked: unexpected encoding of the empty array');
  const n = packed.length;
  const hdr = n < 16 ? 1 : n < 0x10000 ? 3 : 5;
  let len = head.length - 1 + hdr;
  for (const p of packed) len += p.length;
  const out = Buffer.allocUnsafe(len);
  let o = head.length - 1;
  out.set(head.subarray(0, o), 0);
  if (hdr === 1) out[o++] = 0x90 | n;
  else if (hdr === 3) {
    out[o++] = 0xdc;
    out.writeUInt16BE(n, o);
    o += 2;
  } else {
    out[o++] = 0xdd;
    out.writeUInt32BE(n, o);
    o += 4;
  }
  for (const p of packed) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** One msgpack value filling buf exactly; anything else is a ProtocolError "<what>: malformed msgpack". */
export function decodeMsg(buf: Uint8Array, what: string): unknown {
  if (!(buf instanceof Uint8Array)) throw new ProtocolError(`${what}: payload is not bytes`);
  try {
    return packr.unpack(buf);
  } catch (e) {
    throw new ProtocolError(`${what}: malformed msgpack: ${errMsg(e).slice(0, 120)}`, { bytes: buf.length }, { cause: e });
  }
}

export function wantObject(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v) || v instanceof Uint8Array) throw new ProtocolError(`${what}: expected a map`);
  return v as Record<string, unknown>;
}

export function wantArray(v: unknown, what: string, max: number): unknown[] {
  if (!Array.isArray(v)) throw new ProtocolError(`${what}: expected an array`);
  if (v.length > max) throw new ProtocolError(`${what}: too many elements`, { length: v.length, max });
  return v;
}

export function wantString(v: unknown, what: string, max: number): string {
  if (typeof v !== 'string') throw new ProtocolError(`${what}: expected a string`);
  if (v.length > max) throw new ProtocolError(`${what}: string too long`, { length: v.length, max });
  return v;
}

export function wantInt(v: unknown, what: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) throw new ProtocolError(`${what}: expected an integer in [${min}, ${max}]`, { got: typeof v === 'number' ? v : typeof v });
  return v;
}

export function wantBool(v: unknown, what: string): boolean {
  if (v === true || v === false) return v;
  // 0/1 too: compact encodings of flags in arrays
  if (v === 0 || v === 1) return v === 1;
  throw new ProtocolError(`${what}: expected a boolean`);
}

export function wantBytes(v: unknown, what: string, max: number): Uint8Array {
  if (!(v instanceof Uint8Array)) throw new ProtocolError(`${what}: expected bytes`);
  if (v.length > max) throw new ProtocolError(`${what}: too many bytes`, { length: v.length, max });
  return v;
}

export function wantPeerName(v: unknown, what: string): PeerName {
  if (typeof v !== 'string' || !isPeerName(v)) throw new ProtocolError(`${what}: expected a peer name`);
  return v;
}

/** Checks the explicit version field every mesh payload carries. */
export function wantVersion(o: Record<string, unknown>, what: string, supported: number): void {
  if (o.v !== supported) throw new ProtocolError(`${what}: unsupported version`, { got: describeValue(o.v), supported });
}

/**
 * "host:port", "[v6]:port" or a bare host (given the default port) -> canonical "host:port" (lib/addr
 * parseHostPort's grammar). A target that grammar refuses stays as written: dialling it then fails
 * with the parser's message, which status shows for that target, instead of the address vanishing.
 */
export function normalizeAddress(addr: string, defaultPort: number): string {
  const a = addr.trim();
  const hp = tryParseHostPort(a, defaultPort);
  return hp ? formatHostPort(hp.host, hp.port) : a;
}

/** Host part of "host:port" / "[v6]:port", as it is written there (IPv6 in brackets). */
export function hostOf(addr: string): string {
  const hp = tryParseHostPort(addr, 0);
  if (hp) return hp.host.includes(':') ? `[${hp.host}]` : hp.host;
  const i = addr.lastIndexOf(':');
  return i < 0 ? addr : addr.slice(0, i);
}
