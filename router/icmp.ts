// IPv4 helpers for packets the sleeve must answer itself, written into caller buffers (no allocation):
// ICMP destination unreachable (unknown destination, no route) and fragmentation needed (a packet
// with DF larger than the path allows: the sender's TCP lowers its MSS), TTL decrement on relay, and
// splitting a too-big packet without DF into fragments. RFC 792 / RFC 1191 / RFC 1812 rules: never
// answer an ICMP error, a non-first fragment, or a packet to or from a broadcast/multicast address.

export const IP_HDR = 20;
export const ICMP_HDR = 8;
/** Longest ICMP error we write: our IP header + ICMP header + quoted IP header (<= 60) + 8 bytes. */
export const MAX_ICMP_LEN = IP_HDR + ICMP_HDR + 60 + 8;

export const ICMP_UNREACH = 3;
export const UNREACH_NET = 0;
export const UNREACH_HOST = 1;
export const UNREACH_FRAG_NEEDED = 4;

export function ipChecksum(b: Uint8Array, off: number, len: number): number {
  let sum = 0;
  let i = 0;
  for (; i + 1 < len; i += 2) sum += (b[off + i] << 8) | b[off + i + 1];
  if (i < len) sum += b[off + i] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** A well-formed IPv4 header at off: version 4, IHL >= 5, total length within len. Returns header length or 0. */
export function ipv4HeaderLen(b: Uint8Array, off: number, len: number): number {
  if (len < IP_HDR || b[off] >> 4 !== 4) return 0;
  const ihl = (b[off] & 0x0f) * 4;
  if (ihl < IP_HDR || ihl > len) return 0;
  const total = (b[off + 2] << 8) | b[off + 3];
  if (total < ihl || total > len) return 0;
  return ihl;
}

export function ipv4Dst(b: Uint8Array, off: number): number {
  return ((b[off + 16] << 24) | (b[off + 17] << 16) | (b[off + 18] << 8) | b[off + 19]) >>> 0;
}

export function ipv4Src(b: Uint8Array, off: number): number {
  return ((b[off + 12] << 24) | (b[off + 13] << 16) | (b[off + 14] << 8) | b[off + 15]) >>> 0;
}

export function ipv4DontFragment(b: Uint8Array, off: number): boolean {
  return (b[off + 6] & 0x40) !== 0;
}

function isSpecial(a: number): boolean {
  return a === 0 || a === 0xffffffff || a >>> 28 === 0xe; // unspecified, broadcast, multicast
}

/** Whether an ICMP error may be sent about this (well-formed) packet. */
export function mayAnswer(b: Uint8Array, off: number, len: number): boolean {
  const ihl = ipv4HeaderLen(b, off, len);
  if (ihl === 0) return false;
  if (isSpecial(ipv4Src(b, off)) || isSpecial(ipv4Dst(b, off))) return false;
  const fragOff = ((b[off + 6] & 0x1f) << 8) | b[off + 7];
  if (fragOff !== 0) return false;
  if (b[off + 9] === 1) {
    // ICMP: answer only queries (echo etc.), never errors (3, 4, 5, 11, 12)
    if (len < ihl + 1) return false;
    const t = b[off + ihl];
    if (t === 3 || t === 4 || t === 5 || t === 11 || t === 12) return false;
  }
  return true;
}

/**
 * Writes an ICMP destination-unreachable about the packet at pkt[off, off+len) into out at outOff,
 * as if sent by `from` (host-order u32) to the packet's source. mtu is the next-hop MTU for code 4.
 * Returns the ICMP packet length, or 0 when the rules say not to answer. out needs MAX_ICMP_LEN.
 */
export function writeUnreachable(out: Uint8Array, outOff: number, pkt: Uint8Array, off: number, len: number, code: number, mtu: number, from: number): number {
  if (!mayAnswer(pkt, off, len)) return 0;
  const ihl = ipv4HeaderLen(pkt, off, len);
  const quote = Math.min(len, ihl + 8);
  const total = IP_HDR + ICMP_HDR + quote;
  const o = outOff;
  out[o] = 0x45;
  out[o + 1] = 0xc0; // internetwork control precedence, like Linux's own ICMP errors
  out[o + 2] = total >>> 8;
  out[o + 3] = total & 0xff;
  out[o + 4] = 0;
  out[o + 5] = 0;
  out[o + 6] = 0;
  out[o + 7] = 0;
  out[o + 8] = 64;
  out[o + 9] = 1;
  out[o + 10] = 0;
  out[o + 11] = 0;
  out[o + 12] = from >>> 24;
  out[o + 13] = (from >>> 16) & 0xff;
  out[o + 14] = (from >>> 8) & 0xff;
  out[o + 15] = from & 0xff;
  for (let i = 0; i < 4; i++) out[o + 16 + i] = pkt[off + 12 + i];
  const c = o + IP_HDR;
  out[c] = ICMP_UNREACH;
  out[c + 1] = code;
  out[c + 2] = 0;
  out[c + 3] = 0;
  out[c + 4] = 0;
  out[c + 5] = 0;
  const m = code === UNREACH_FRAG_NEEDED ? mtu : 0;
  out[c + 6] = (m >>> 8) & 0xff;
  out[c + 7] = m & 0xff;
  for (let i = 0; i < quote; i++) out[c + ICMP_HDR + i] = pkt[off + i];
  const ics = ipChecksum(out, c, ICMP_HDR + quote);
  out[c + 2] = ics >>> 8;
  out[c + 3] = ics & 0xff;
  const hcs = ipChecksum(out, o, IP_HDR);
  out[o + 10] = hcs >>> 8;
  out[o + 11] = hcs & 0xff;
  return total;
}

/** Decrements TTL in place with an incremental checksum update (RFC 1624). False when it expired. */
export function decrementTtl(b: Uint8Array, off: number): boolean {
  const ttl = b[off + 8];
  if (ttl <= 1) return false;
  b[off + 8] = ttl - 1;
  // TTL is the high byte of its 16-bit word: the word drops by 0x100, so the checksum rises by it.
  let sum = ((b[off + 10] << 8) | b[off + 11]) + 0x100;
  sum = (sum & 0xffff) + (sum >>> 16);
  b[off + 10] = sum >>> 8;
  b[off + 11] = sum & 0xff;
  return true;
}

/**
 * Splits the packet at pkt[off, off+len) (no DF) into fragments of at most mtu bytes, each written
 * with fragStride spacing into out starting at outOff; lens[first + k] receives each length.
 * Returns the number of fragments, 0 when it cannot be split (DF set, malformed, header too big,
 * or more than maxFrags needed).
 */
export function fragment(pkt: Uint8Array, off: number, len: number, mtu: number, out: Uint8Array, outOff: number, fragStride: number, lens: Int32Array, first: number, maxFrags: number): number {
  const ihl = ipv4HeaderLen(pkt, off, len);
  if (ihl === 0 || ipv4DontFragment(pkt, off)) return 0;
  const total = (pkt[off + 2] << 8) | pkt[off + 3];
  const chunk = (mtu - ihl) & ~7;
  if (chunk < 8 || fragStride < ihl + chunk) return 0;
  const payload = total - ihl;
  const count = Math.ceil(payload / chunk);
  if (count > maxFrags) return 0;
  const origFlags = pkt[off + 6] & 0x20; // the original may itself be a non-last fragment
  const origOff = (((pkt[off + 6] & 0x1f) << 8) | pkt[off + 7]) * 8;
  // the fragments' offsets (13 bits of 8-byte units) must still describe bytes of one IPv4 datagram:
  // a (forged) fragment whose offset plus payload passes 65535 cannot be split, only dropped
  if (origOff + payload > 65535) return 0;
  for (let k = 0; k < count; k++) {
    const o = outOff + k * fragStride;
    const start = k * chunk;
    const n = Math.min(chunk, payload - start);
    for (let i = 0; i < ihl; i++) out[o + i] = pkt[off + i];
    for (let i = 0; i < n; i++) out[o + ihl + i] = pkt[off + ihl + start + i];
    const flen = ihl + n;
    out[o + 2] = flen >>> 8;
    out[o + 3] = flen & 0xff;
    const fo = (origOff + start) / 8;
    const more = k < count - 1 ? 0x20 : origFlags;
    out[o + 6] = more | ((fo >>> 8) & 0x1f);
    out[o + 7] = fo & 0xff;
    out[o + 10] = 0;
    out[o + 11] = 0;
    const cs = ipChecksum(out, o, ihl);
    out[o + 10] = cs >>> 8;
    out[o + 11] = cs & 0xff;
    lens[first + k] = flen;
  }
  return count;
}
