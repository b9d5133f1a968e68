// Prefixes in the form iproute2 prints and takes them. Parsing is lib/addr's (one grammar, strict:
// anything from a user or from `ip -json` that is not exactly a dotted quad and a length is refused,
// never guessed at); this file only knows `ip route`'s spellings ("default", a bare address for a /32).
import { UsageError } from '../lib/errors';
import { cidrOf, formatAddr, formatCidr, parseAddrInCidr, tryParseCidr } from '../lib/addr';

/** Canonical prefix form, as `ip route` shows it but with the length always written: "10.32.0.7/32". */
export function canonicalPrefix(s: string): string | undefined {
  if (s === 'default') return '0.0.0.0/0';
  const c = tryParseCidr(s, { allowBare: true, allowHostBits: true });
  return c ? formatCidr(c) : undefined;
}

// ---- the former host-only prefix type, for router/endpoints.ts until it takes lib/addr's ----------

/**
 * @deprecated an interface address as router/endpoints.ts reads it; new code uses lib/addr
 * parseAddrInCidr ({ addr, cidr }). Remove with the last import from router/endpoints.ts.
 */
export interface Cidr4 {
  /** the address as given (host bits kept: 10.32.0.5/12 stays 10.32.0.5) */
  addr: string;
  len: number;
  /** address as an unsigned 32-bit number */
  n: number;
}

/** @deprecated lib/addr parseAddrInCidr; this is that with the Cidr4 shape. */
export function parseCidr4(s: string, what = 'address'): Cidr4 {
  if (typeof s !== 'string') throw new UsageError(`${what} must be a string like 10.32.0.5/12`, { value: String(s) });
  const { addr, cidr } = parseAddrInCidr(s, { what });
  return { addr: formatAddr(addr), len: cidr.prefixLen, n: addr };
}

/** @deprecated lib/addr formatCidr of the cidr parseAddrInCidr returns. */
export function networkCidr(c: Cidr4): string {
  return formatCidr(cidrOf(c.n, c.len));
}

/** @deprecated lib/addr formatAddr. */
export const formatIp4 = formatAddr;
