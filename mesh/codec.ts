// msgpack helpers and validators for mesh wire messages. Everything that comes off the network goes
// through decodeMsg + the `want*` checks, so a malformed message becomes a ProtocolError (fatal for
// that connection only) rather than a TypeError somewhere deep in the topology or a gossiper.
import { Packr } from 'msgpackr';
import { ProtocolError } from '../lib/errors';
import { isPeerName, type PeerName } from './peer';

// Records off: a record-extension stream would make one peer's decoder state depend on earlier
// messages, and maps decode as plain objects so validators see one shape.
const packr = new Packr({ useRecords: false, mapsAsObjects: true, moreTypes: false });

export function encodeMsg(obj: unknown): Uint8Array {
  return packr.pack(obj);
}

export function decodeMsg(buf: Uint8Array, what: string): unknown {
  if (!(buf instanceof Uint8Array)) throw new ProtocolError(`${what}: payload is not bytes`);
  try {
    return packr.unpack(buf);
  } catch (e) {
    throw new ProtocolError(`${what}: malformed msgpack`, { cause: e instanceof Error ? e.message : String(e) });
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
  if (o.v !== supported) throw new ProtocolError(`${what}: unsupported version`, { got: typeof o.v === 'number' ? o.v : String(o.v), supported });
}

/** "host:port", "[v6]:port" or bare "host" (given the default port) -> canonical "host:port". */
export function normalizeAddress(addr: string, defaultPort: number): string {
  const a = addr.trim();
  if (a.startsWith('[')) {
    const end = a.indexOf(']');
    if (end < 0) return a;
    const host = a.slice(0, end + 1);
    const rest = a.slice(end + 1);
    return rest.startsWith(':') && rest.length > 1 ? `${host}${rest}` : `${host}:${defaultPort}`;
  }
  const colons = a.split(':').length - 1;
  if (colons === 0) return `${a}:${defaultPort}`;
  if (colons === 1) return a.endsWith(':') ? `${a}${defaultPort}` : a;
  return `[${a}]:${defaultPort}`; // bare IPv6
}

/** Host part of "host:port" / "[v6]:port". */
export function hostOf(addr: string): string {
  if (addr.startsWith('[')) {
    const end = addr.indexOf(']');
    return end < 0 ? addr : addr.slice(0, end + 1);
  }
  const i = addr.lastIndexOf(':');
  return i < 0 ? addr : addr.slice(0, i);
}
