// The IPAM ring's range maths on top of lib/addr's addresses and prefixes: CIDR <-> range, the
// usable part of a subnet, splitting and subtracting ranges. Parsing, formatting and the types are
// lib/addr's (one parser per format); they are re-exported here for the modules that import them
// from ipam/ (api/ipam-subsystem.ts, api/daemon.ts).
import { UsageError } from '../lib/errors';
import { formatAddr, formatCidr, overlaps, type Cidr, type Range } from '../lib/addr';

export {
  contains,
  containsRange,
  formatAddr,
  formatCidr,
  intersect,
  isAddr,
  overlaps,
  parseAddr,
  parseAddrInCidr,
  parseCidr,
  type Addr,
  type Cidr,
  type Range,
} from '../lib/addr';

/** The CIDR exactly covering r, or null when r is not an aligned power-of-two block. */
function rangeToCidr(r: Range): Cidr | null {
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
