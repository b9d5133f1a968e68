// Typed readers for the fields of API request bodies (and the CLI's peer arguments). Each takes the
// parsed body and a key and returns the field as its type, or throws UsageError (HTTP 400, exit 2)
// naming the field and what to send instead. Every handler reads every field through these, so a
// wrong type, a malformed address or an out-of-range number never reaches the router's parts.
import { UsageError } from '../lib/errors';
import { parseAddr, parseAddrInCidr, parseCidr, parseHostPort } from './addr';
import { CONTROL_PORT } from './ports';

export type Body = Record<string, unknown>;

/** Longest string any field may hold (names, idents, paths, addresses): no field needs more. */
export const MAX_STRING = 1024;
/** Most items any list field may hold. */
export const MAX_LIST = 1024;

/** The request body as an object: absent or empty -> {}; null, a list, a string ... -> 400. */
export function asBody(v: unknown): Body {
  if (v === undefined) return {};
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new UsageError(`the request body must be a JSON object like {"key": value}, not ${describe(v)}`);
  }
  return v as Body;
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'an object';
  return typeof v === 'string' ? 'a string' : `a ${typeof v}`;
}

function present(body: Body, key: string): boolean {
  return body[key] !== undefined && body[key] !== null;
}

function checkString(key: string, v: unknown, max: number): string {
  if (typeof v !== 'string') throw new UsageError(`"${key}" must be a string, not ${describe(v)}`);
  if (v.length === 0) throw new UsageError(`"${key}" must not be empty`);
  if (v.length > max) throw new UsageError(`"${key}" is ${v.length} characters long; at most ${max}`);
  if (/[\u0000-\u001f\u007f]/.test(v)) throw new UsageError(`"${key}" contains control characters`);
  return v;
}

/** A required non-empty string without control characters. */
export function str(body: Body, key: string, opts: { max?: number } = {}): string {
  if (!present(body, key)) throw new UsageError(`"${key}" is missing: give a non-empty string`);
  return checkString(key, body[key], opts.max ?? MAX_STRING);
}

/** An optional string: absent, null or "" -> undefined. */
export function optStr(body: Body, key: string, opts: { max?: number } = {}): string | undefined {
  if (!present(body, key) || body[key] === '') return undefined;
  return checkString(key, body[key], opts.max ?? MAX_STRING);
}

/**
 * A list of non-empty strings, each checked by `item` (which throws UsageError for a bad one). An
 * absent (or null) field is [] unless required.
 */
export function strList<T = string>(body: Body, key: string, opts: { required?: boolean; max?: number; item?: (s: string, key: string) => T } = {}): T[] {
  if (!present(body, key)) {
    if (opts.required) throw new UsageError(`"${key}" is missing: give a list of strings`);
    return [];
  }
  const v = body[key];
  if (!Array.isArray(v)) throw new UsageError(`"${key}" must be a list of strings, not ${describe(v)}`);
  const max = opts.max ?? MAX_LIST;
  if (v.length > max) throw new UsageError(`"${key}" has ${v.length} items; at most ${max}`);
  return v.map((x, i) => {
    const s = checkString(`${key}[${i}]`, x, MAX_STRING);
    return opts.item ? opts.item(s, `${key}[${i}]`) : (s as unknown as T);
  });
}

/** A boolean; absent -> the default. "true", 1 and the like are refused (say what was meant). */
export function bool(body: Body, key: string, dflt = false): boolean {
  if (!present(body, key)) return dflt;
  const v = body[key];
  if (typeof v !== 'boolean') throw new UsageError(`"${key}" must be true or false, not ${describe(v)}`);
  return v;
}

/** A finite number in [min, max] (whole when `integer`); absent -> the default, or 400 when none. */
export function num(body: Body, key: string, opts: { min: number; max: number; integer?: boolean; dflt?: number }): number {
  if (!present(body, key)) {
    if (opts.dflt === undefined) throw new UsageError(`"${key}" is missing: give a number ${opts.min}-${opts.max}`);
    return opts.dflt;
  }
  const v = body[key];
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new UsageError(`"${key}" must be a number ${opts.min}-${opts.max}, not ${describe(v)}`);
  if (opts.integer && !Number.isInteger(v)) throw new UsageError(`"${key}" must be a whole number, not ${v}`);
  if (v < opts.min || v > opts.max) throw new UsageError(`"${key}" is ${v}; it must be ${opts.min}-${opts.max}`);
  return v;
}

// ------------------------------------------------------------------------------------ formats

/** "A.B.C.D": a bare IPv4 address. */
export function checkAddr(s: string, key: string): string {
  try {
    parseAddr(s);
  } catch (e) {
    throw new UsageError(`"${key}": ${(e as Error).message}`);
  }
  if (s.trim() !== s) throw new UsageError(`"${key}": "${s}" has surrounding spaces`);
  return s;
}

/** "A.B.C.D/N" naming a network (host bits zero), as a subnet to allocate from. */
export function checkCidr(s: string, key: string): string {
  try {
    parseCidr(s);
  } catch (e) {
    throw new UsageError(`"${key}": ${(e as Error).message}`);
  }
  return s.trim();
}

/** "A.B.C.D/N" naming a host address in its subnet (`weave attach 10.32.1.5/12`). */
export function checkAddrInCidr(s: string, key: string): string {
  try {
    parseAddrInCidr(s);
  } catch (e) {
    throw new UsageError(`"${key}": ${(e as Error).message}`);
  }
  return s.trim();
}

/** "A.B.C.D" or "A.B.C.D/N": an address to detach, hide or register, with or without its prefix. */
export function checkAddrMaybeLen(s: string, key: string): string {
  return s.includes('/') ? checkAddrInCidr(s, key) : checkAddr(s, key);
}

/** An attach/expose address argument: ADDR/LEN, or net:default / net:CIDR (IPAM allocates). */
export function checkAddrArg(s: string, key: string): string {
  if (s === 'net:default') return s;
  if (s.startsWith('net:')) {
    checkCidr(s.slice(4), key);
    return s;
  }
  if (!s.includes('/')) throw new UsageError(`"${key}": "${s}" needs its prefix length, like 10.32.0.5/12 (or net:default, net:CIDR)`);
  return checkAddrInCidr(s, key);
}

/**
 * A peer address HOST[:PORT]: HOST an IPv4 address, a DNS name or [IPv6]; PORT 1-65535 (default
 * 6783). Dotted numbers are an IPv4 address (300.1.1.1 is refused, not looked up as a name). The
 * grammar is lib/addr.ts's parseHostPort; this names the field.
 */
export function checkPeer(s: string, key = 'peer'): string {
  try {
    parseHostPort(s, CONTROL_PORT, { what: key === 'peer' ? 'peer' : `peer in "${key}"` });
  } catch (e) {
    throw new UsageError((e as Error).message.replace(/^invalid peer in "([^"]*)" ("[^"]*")/, 'invalid peer $2 in "$1"'), { field: key }, { cause: e });
  }
  return s;
}

/** A list of peers, each checked by checkPeer. */
export function peerList(body: Body, key: string, opts: { required?: boolean } = {}): string[] {
  return strList(body, key, { required: opts.required, item: checkPeer });
}

/** A required query parameter (GET /dns/lookup?name=...), checked like a string field. */
export function param(query: URLSearchParams, key: string, opts: { max?: number } = {}): string {
  return str({ [key]: query.get(key) ?? undefined }, key, opts);
}
