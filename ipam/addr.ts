// IPv4 addresses as unsigned 32-bit numbers and CIDRs as half-open [start, end) ranges.
// Numbers (not strings or byte arrays) because the ring, the space bookkeeping and the wire all
// compare and subtract addresses; end can be 2^32 so a range is never "inclusive of the last".
// mesh/ has no address helpers (it knows nothing of IP), so they live here.
import { UsageError } from '../lib/errors';

export type Addr = number;

/** Half-open address range [start, end). */
export interface Range {
  start: Addr;
  end: Addr;
}

export interface Cidr extends Range {
  prefixLen: number;
}

const MAX = 2 ** 32;

export function parseAddr(s: string): Addr {
  const parts = s.trim().split('.');
  if (parts.length !== 4) throw new UsageError(`invalid IPv4 address "${s}": expected four dotted numbers like 10.32.0.1`);
  let n = 0;
  for (const p of parts) {
    if (!/^\d{1,3}$/.test(p)) throw new UsageError(`invalid IPv4 address "${s}": "${p}" is not a number 0-255`);
    const v = Number(p);
    if (v > 255) throw new UsageError(`invalid IPv4 address "${s}": ${v} is greater than 255`);
    n = n * 256 + v;
  }
  return n;
}

export function formatAddr(a: Addr): string {
  return `${(a >>> 24) & 255}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}`;
}

export function isAddr(a: unknown): a is Addr {
  return typeof a === 'number' && Number.isInteger(a) && a >= 0 && a < MAX;
}

/**
 * Parses "A.B.C.D/N". Host bits must be zero unless allowHostBits (then they are masked off), so
 * a typo like 10.32.1.0/12 is an error rather than silently meaning 10.32.0.0/12.
 */
export function parseCidr(s: string, opts: { allowHostBits?: boolean } = {}): Cidr {
  const m = /^\s*([^/\s]+)\/(\d{1,2})\s*$/.exec(s);
  if (!m) throw new UsageError(`invalid CIDR "${s}": expected ADDRESS/PREFIXLEN like 10.32.0.0/12`);
  const addr = parseAddr(m[1]);
  const prefixLen = Number(m[2]);
  if (prefixLen > 32) throw new UsageError(`invalid CIDR "${s}": prefix length ${prefixLen} is greater than 32`);
  const size = 2 ** (32 - prefixLen);
  const start = addr - (addr % size);
  if (start !== addr && !opts.allowHostBits) {
    throw new UsageError(`invalid CIDR "${s}": host bits set; did you mean ${formatAddr(start)}/${prefixLen}?`);
  }
  return { start, end: start + size, prefixLen };
}

export function formatCidr(c: Cidr): string {
  return `${formatAddr(c.start)}/${c.prefixLen}`;
}

/** The CIDR exactly covering r, or null when r is not an aligned power-of-two block. */
export function rangeToCidr(r: Range): Cidr | null {
  const size = r.end - r.start;
  if (size <= 0) return null;
  const bits = Math.log2(size);
  if (!Number.isInteger(bits) || r.start % size !== 0) return null;
  return { start: r.start, end: r.end, prefixLen: 32 - bits };
}

export function formatRange(r: Range): string {
  const c = rangeToCidr(r);
  if (c) return formatCidr(c);
  return `${formatAddr(r.start)}-${formatAddr(r.end - 1)}`;
}

export function rangeSize(r: Range): number {
  return r.end - r.start;
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

/**
 * Addresses a container may get in subnet c: all but the network and broadcast addresses when the
 * subnet is big enough to have them (/30 and larger), as the kernel and Weave treat them.
 */
export function usableRange(c: Cidr): Range {
  if (c.prefixLen >= 31) return { start: c.start, end: c.end };
  return { start: c.start + 1, end: c.end - 1 };
}

/** The aligned subnets of length prefixLen inside c, in order (lazily: a /8 in /32s is 16M). */
export function* subnets(c: Cidr, prefixLen: number): Generator<Cidr> {
  if (prefixLen < c.prefixLen || prefixLen > 32) {
    throw new UsageError(`cannot split ${formatCidr(c)} into /${prefixLen} subnets`);
  }
  const size = 2 ** (32 - prefixLen);
  for (let s = c.start; s < c.end; s += size) yield { start: s, end: s + size, prefixLen };
}

/** Parses "ADDR/LEN" where the address is a host in the subnet (as `weave attach 10.32.1.5/12`). */
export function parseAddrInCidr(s: string): { addr: Addr; cidr: Cidr } {
  const m = /^\s*([^/\s]+)\/(\d{1,2})\s*$/.exec(s);
  if (!m) throw new UsageError(`invalid address "${s}": expected ADDRESS/PREFIXLEN like 10.32.1.5/12`);
  const addr = parseAddr(m[1]);
  return { addr, cidr: parseCidr(s, { allowHostBits: true }) };
}

/** What is left of r after cutting out every range in cut (in order, non-empty pieces). */
export function subtractRanges(r: Range, cut: readonly Range[]): Range[] {
  let pieces: Range[] = [{ start: r.start, end: r.end }];
  for (const c of cut) {
    const next: Range[] = [];
    for (const p of pieces) {
      if (!overlaps(p, c)) next.push(p);
      else {
        if (p.start < c.start) next.push({ start: p.start, end: c.start });
        if (c.end < p.end) next.push({ start: c.end, end: p.end });
      }
    }
    pieces = next;
  }
  return pieces;
}
