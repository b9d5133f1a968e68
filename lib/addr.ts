// IPv4 addresses, prefixes and host:port: the one parser and formatter of each, for every layer (CLI
// flags, API bodies, gossip, `ip -json` output, the forwarding table, the IPAM ring).
//
//   Addr   an address as an unsigned 32-bit number: the ring, the forwarding trie and the data path
//          compare, mask and subtract addresses, and a number costs nothing to keep or send.
//   Range  a half-open [start, end) of addresses; end may be 2^32, so no range is "inclusive of the last".
//   Cidr   a prefix: the Range it covers plus its length. start is the network address (host bits
//          are never kept in a Cidr); an interface address with its subnet (10.32.0.5/12) is
//          parseAddrInCidr's { addr, cidr }.
//
// The grammar is strict and the same everywhere: four decimal octets 0-255 without leading zeros
// ("010" is octal to inet_aton and some shells' tools, so it is refused rather than guessed at), an
// optional "/LEN" with LEN 0-32 (no leading zero either), no surrounding spaces. tryParse* return
// undefined (for kernel output and wire input, whose callers raise their own ProtocolError or skip);
// parse* throw a UsageError whose message says what is wrong and what to write instead.
import { isIPv6 } from 'net';
import { UsageError } from './errors';

export type Addr = number;

/** Half-open address range [start, end). */
export interface Range {
  start: Addr;
  end: number;
}

/** A prefix: the aligned range it covers (start = network address) and its length 0-32. */
export interface Cidr extends Range {
  prefixLen: number;
}

/** One past the largest address. */
const ADDR_END = 2 ** 32;

const DOT = 0x2e;
const ZERO = 0x30;

/**
 * The u32 of s[from, to) when it is exactly a canonical dotted quad, else -1. No allocation: the DNS
 * server converts an address per answer record with this.
 */
function scanAddr(s: string, from: number, to: number): number {
  if (to - from < 7 || to - from > 15) return -1;
  let n = 0;
  let i = from;
  for (let part = 0; part < 4; part++) {
    if (part > 0) {
      if (i >= to || s.charCodeAt(i) !== DOT) return -1;
      i++;
    }
    const start = i;
    let v = 0;
    while (i < to) {
      const d = s.charCodeAt(i) - ZERO;
      if (d < 0 || d > 9) break;
      v = v * 10 + d;
      i++;
    }
    const digits = i - start;
    if (digits === 0 || digits > 3 || v > 255 || (digits > 1 && s.charCodeAt(start) === ZERO)) return -1;
    n = n * 256 + v;
  }
  return i === to ? n : -1;
}

/** Why s is not a dotted quad (only called once scanAddr refused it). */
function addrProblem(s: string): string {
  if (s.length === 0) return 'empty';
  if (s.trim() !== s) return 'has spaces around it';
  if (s.includes(':')) return isIPv6(s) ? 'is IPv6; only IPv4 is supported' : 'has a ":" (no port here)';
  const parts = s.split('.');
  if (parts.length !== 4) return 'expected four dotted numbers like 10.32.0.1';
  for (const p of parts) {
    if (p === '') return 'has an empty part between dots';
    if (!/^\d+$/.test(p)) return `"${p}" is not a number 0-255`;
    if (p.length > 1 && p[0] === '0') return `"${p}" has a leading zero (write ${p.replace(/^0+(?=\d)/, '')}; 0-prefixed octets are octal to some tools)`;
    if (p.length > 3 || Number(p) > 255) return `${p} is greater than 255`;
  }
  return 'not an IPv4 address';
}

function clip(s: unknown): string {
  let t: string;
  try {
    t = typeof s === 'string' ? s : String(s);
  } catch {
    t = typeof s; // an object without toString (Object.create(null)) from a JSON body or a fuzzer
  }
  return t.length > 80 ? `${t.slice(0, 80)}...` : t;
}

export function tryParseAddr(s: unknown): Addr | undefined {
  if (typeof s !== 'string') return undefined;
  const n = scanAddr(s, 0, s.length);
  return n < 0 ? undefined : n;
}

/** "10.32.0.1" -> 0x0a200001; a UsageError naming `what` and the problem otherwise. */
export function parseAddr(s: string, what = 'IPv4 address'): Addr {
  const n = tryParseAddr(s);
  if (n !== undefined) return n;
  if (typeof s !== 'string') throw new UsageError(`${what} must be a string like 10.32.0.1`, { value: clip(s) });
  throw new UsageError(`invalid ${what} "${clip(s)}": ${addrProblem(s)}`, { value: clip(s) });
}

/** Whether s is an IPv4 address in the one accepted spelling (so equal addresses are equal strings). */
export function isAddrText(s: unknown): s is string {
  return tryParseAddr(s) !== undefined;
}

export function formatAddr(a: Addr): string {
  return `${a >>> 24}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}`;
}

export function isAddr(a: unknown): a is Addr {
  return typeof a === 'number' && Number.isInteger(a) && a >= 0 && a < ADDR_END;
}

/** The netmask of a prefix length as a u32: maskOf(24) = 0xffffff00. */
export function maskOf(len: number): number {
  return len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
}

/** The prefix of length prefixLen that holds a (host bits dropped). */
export function cidrOf(a: Addr, prefixLen: number): Cidr {
  const start = (a & maskOf(prefixLen)) >>> 0;
  return { start, end: start + 2 ** (32 - prefixLen), prefixLen };
}

export interface CidrOptions {
  /** host bits may be set (they are dropped: 10.32.1.0/12 means 10.32.0.0/12); else an error */
  allowHostBits?: boolean;
  /** a bare address is a /32 */
  allowBare?: boolean;
  /** what the value is, for messages: "--trusted-subnets entry" */
  what?: string;
}

interface Scanned {
  addr: Addr;
  prefixLen: number;
}

/** ADDR/LEN (or a bare ADDR when allowBare) without judging host bits; a problem string otherwise. */
function scanCidr(s: unknown, allowBare: boolean): Scanned | string {
  if (typeof s !== 'string') return 'not a string';
  const slash = s.indexOf('/');
  const end = slash < 0 ? s.length : slash;
  const addr = scanAddr(s, 0, end);
  let prefixLen = 32;
  if (slash >= 0) {
    const l = s.slice(slash + 1);
    if (!/^(?:0|[1-9]\d?)$/.test(l)) {
      if (addr < 0) return cidrAddrProblem(s, end);
      if (l === '') return 'the prefix length after "/" is missing';
      if (/^\d+$/.test(l) && l.length <= 3 && l[0] !== '0') return `prefix length ${l} is greater than 32`;
      return `prefix length "${clip(l)}" is not a number 0-32${l.length > 1 && l[0] === '0' ? ' (no leading zero)' : ''}`;
    }
    prefixLen = Number(l);
    if (prefixLen > 32) return addr < 0 ? cidrAddrProblem(s, end) : `prefix length ${prefixLen} is greater than 32`;
  } else if (addr >= 0 && !allowBare) {
    return 'the prefix length is missing';
  }
  if (addr < 0) return cidrAddrProblem(s, end);
  return { addr, prefixLen };
}

function cidrAddrProblem(s: string, end: number): string {
  const a = s.slice(0, end);
  if (a === '') return 'the address before "/" is missing';
  return addrProblem(a);
}

export function tryParseCidr(s: unknown, opts: CidrOptions = {}): Cidr | undefined {
  const r = scanCidr(s, opts.allowBare === true);
  if (typeof r === 'string') return undefined;
  const c = cidrOf(r.addr, r.prefixLen);
  if (c.start !== r.addr && !opts.allowHostBits) return undefined;
  return c;
}

function cidrError(s: unknown, problem: string, what: string, like: string): UsageError {
  return new UsageError(`invalid ${what} "${clip(s)}": ${problem}; write it like ${like} (address/prefix length 0-32)`, { value: clip(s) });
}

/**
 * "A.B.C.D/N" -> Cidr. Host bits must be zero unless allowHostBits (then they are dropped), so a
 * typo like 10.32.1.0/12 is an error rather than silently meaning 10.32.0.0/12.
 */
export function parseCidr(s: string, opts: CidrOptions = {}): Cidr {
  const what = opts.what ?? 'CIDR';
  const r = scanCidr(s, opts.allowBare === true);
  if (typeof r === 'string') throw cidrError(s, r, what, opts.allowHostBits ? '10.32.0.5/12' : '10.32.0.0/12');
  const c = cidrOf(r.addr, r.prefixLen);
  if (c.start !== r.addr && !opts.allowHostBits) {
    throw new UsageError(`invalid ${what} "${clip(s)}": host bits set; did you mean ${formatCidr(c)}?`, { value: clip(s) });
  }
  return c;
}

/** An interface address with its subnet, "10.32.1.5/12" -> { addr: 10.32.1.5, cidr: 10.32.0.0/12 }. */
export function tryParseAddrInCidr(s: unknown, opts: { allowBare?: boolean } = {}): { addr: Addr; cidr: Cidr } | undefined {
  const r = scanCidr(s, opts.allowBare === true);
  if (typeof r === 'string') return undefined;
  return { addr: r.addr, cidr: cidrOf(r.addr, r.prefixLen) };
}

export function parseAddrInCidr(s: string, opts: { allowBare?: boolean; what?: string } = {}): { addr: Addr; cidr: Cidr } {
  const r = scanCidr(s, opts.allowBare === true);
  if (typeof r === 'string') throw cidrError(s, r, opts.what ?? 'address', '10.32.0.5/12');
  return { addr: r.addr, cidr: cidrOf(r.addr, r.prefixLen) };
}

export function formatCidr(c: Cidr): string {
  return `${formatAddr(c.start)}/${c.prefixLen}`;
}

export function contains(r: Range, a: Addr): boolean {
  return a >= r.start && a < r.end;
}

export function containsRange(outer: Range, inner: Range): boolean {
  return inner.start >= outer.start && inner.end <= outer.end;
}

export function overlaps(a: Range, b: Range): boolean {
  return a.start < b.end && b.start < a.end;
}

export function intersect(a: Range, b: Range): Range | null {
  const start = Math.max(a.start, b.start);
  const end = Math.min(a.end, b.end);
  return start < end ? { start, end } : null;
}

// ---- host:port ------------------------------------------------------------------------------------

/** One DNS label (RFC 1123): letters, digits, inner hyphens, 1-63 characters. */
const LABEL_RE = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;

/** A DNS host name: labels joined by dots, an optional final dot, 253 characters at most. */
function isHostName(h: string): boolean {
  return h.length <= 253 && h.replace(/\.$/, '').split('.').every((l) => LABEL_RE.test(l));
}

interface HostPortScan {
  host: string;
  port: number | undefined;
}

/** Splits and checks "host", "host:port", "[v6]", "[v6]:port" or a bare "v6"; a problem string otherwise. */
function scanHostPort(s: unknown, allowEmptyHost: boolean): HostPortScan | string {
  if (typeof s !== 'string') return 'not a string';
  if (s.length === 0) return 'empty';
  if (s.trim() !== s) return 'has spaces around it';
  let host: string;
  let portText: string | undefined;
  let v6 = false;
  if (s[0] === '[') {
    const close = s.indexOf(']');
    if (close < 0) return 'a "[" without its "]" (write [IPv6]:PORT)';
    host = s.slice(1, close);
    const rest = s.slice(close + 1);
    if (rest !== '') {
      if (rest[0] !== ':') return `unexpected "${clip(rest)}" after "]" (write [IPv6]:PORT)`;
      portText = rest.slice(1);
    }
    v6 = true;
  } else {
    const colon = s.indexOf(':');
    if (colon < 0) host = s;
    else if (s.indexOf(':', colon + 1) < 0) {
      host = s.slice(0, colon);
      portText = s.slice(colon + 1);
    } else {
      host = s; // two or more colons without brackets: a bare IPv6 address, no port
      v6 = true;
    }
  }
  let port: number | undefined;
  if (portText !== undefined) {
    if (!/^\d{1,5}$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535) return `port "${clip(portText)}" is not a number 1-65535`;
    port = Number(portText);
  }
  if (v6) {
    if (!isIPv6(host)) return `"${clip(host)}" is not an IPv6 address`;
  } else if (host === '') {
    if (!allowEmptyHost) return 'the host is empty';
  } else if (/^[\d.]+$/.test(host)) {
    if (scanAddr(host, 0, host.length) < 0) return `host ${addrProblem(host)}`;
  } else if (!isHostName(host)) {
    return `"${clip(host)}" is not an IPv4 address or a DNS name (letters, digits and inner hyphens per label)`;
  }
  return { host, port };
}

export interface HostPortOptions {
  /** ":PORT" is accepted (host ''): the caller has its own default host */
  allowEmptyHost?: boolean;
  /** what the value is, for messages: "peer address", "--http-addr" */
  what?: string;
}

/**
 * "host:port", "host", "[v6]:port", "[v6]" or a bare "v6" -> { host (IPv6 without brackets), port };
 * defaultPort when none is written. Ports are 1-65535, IPv4 hosts follow the address grammar above.
 */
export function parseHostPort(s: string, defaultPort: number, opts: HostPortOptions = {}): { host: string; port: number } {
  const r = scanHostPort(s, opts.allowEmptyHost === true);
  if (typeof r === 'string') {
    throw new UsageError(`invalid ${opts.what ?? 'address'} "${clip(s)}": ${r}; write HOST[:PORT] or [IPv6][:PORT]`, { value: clip(s) });
  }
  return { host: r.host, port: r.port ?? defaultPort };
}

export function tryParseHostPort(s: unknown, defaultPort: number): { host: string; port: number } | undefined {
  const r = scanHostPort(s, false);
  return typeof r === 'string' ? undefined : { host: r.host, port: r.port ?? defaultPort };
}

/** "host:port", with an IPv6 host in brackets. */
export function formatHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** A port number 1-65535 from a flag or a body field. */
export function parsePort(s: string | number, what = 'port'): number {
  const n = typeof s === 'number' ? s : typeof s === 'string' && /^\d{1,5}$/.test(s) ? Number(s) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new UsageError(`invalid ${what} "${clip(s)}": expected a port number 1-65535`, { value: clip(s) });
  return n;
}
