// IPv4 addresses and prefixes as the kernel prints them, parsed strictly: anything from a user or from
// `ip -json` that is not exactly a dotted quad (and a length) is rejected, never guessed at.
import { UsageError } from '../lib/errors';

export interface Cidr4 {
  /** the address as given (host bits kept: 10.32.0.5/12 stays 10.32.0.5) */
  addr: string;
  len: number;
  /** address as an unsigned 32-bit number */
  n: number;
}

export function parseIp4(s: string): number | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
  if (!m) return undefined;
  let n = 0;
  for (let i = 1; i <= 4; i++) {
    const part = m[i];
    if (part.length > 1 && part[0] === '0') return undefined; // 010 is octal to some parsers: refuse it
    const b = Number(part);
    if (b > 255) return undefined;
    n = n * 256 + b;
  }
  return n;
}

export function formatIp4(n: number): string {
  return `${(n >>> 24) & 255}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

/** Parses "a.b.c.d/len" (len 0..32); a bare address is a /32 only when allowBare. */
export function tryParseCidr4(s: string, allowBare = false): Cidr4 | undefined {
  const slash = s.indexOf('/');
  const a = slash < 0 ? s : s.slice(0, slash);
  const l = slash < 0 ? (allowBare ? '32' : '') : s.slice(slash + 1);
  if (!/^\d{1,2}$/.test(l)) return undefined;
  const len = Number(l);
  if (len > 32) return undefined;
  const n = parseIp4(a);
  if (n === undefined) return undefined;
  return { addr: a, len, n };
}

/** Like tryParseCidr4 but a UsageError naming the input and the expected form. */
export function parseCidr4(s: string, what = 'address'): Cidr4 {
  if (typeof s !== 'string') throw new UsageError(`${what} must be a string like 10.32.0.5/12`, { value: s });
  const c = tryParseCidr4(s.trim());
  if (!c) {
    if (s.includes(':')) throw new UsageError(`${what} "${s}" is IPv6; only IPv4 (like 10.32.0.5/12) is supported`, { value: s });
    throw new UsageError(`${what} "${s}" is not an IPv4 CIDR: write it like 10.32.0.5/12 (address/prefix length 0-32)`, { value: s });
  }
  return c;
}

export function maskOf(len: number): number {
  return len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
}

export function networkOf(c: Cidr4): number { return (c.n & maskOf(c.len)) >>> 0; }

/** "10.32.0.0/12" for 10.32.0.5/12. */
export function networkCidr(c: Cidr4): string { return `${formatIp4(networkOf(c))}/${c.len}`; }

export function containsIp(net: Cidr4, n: number): boolean {
  return ((n & maskOf(net.len)) >>> 0) === networkOf(net);
}

/** Canonical prefix form, as `ip route` shows it but with the length always written: "10.32.0.7/32". */
export function canonicalPrefix(s: string): string | undefined {
  if (s === 'default') return '0.0.0.0/0';
  const c = tryParseCidr4(s, true);
  return c ? networkCidr(c) : undefined;
}
