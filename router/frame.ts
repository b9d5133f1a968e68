// Sleeve datagram framing. One UDP datagram carries one frame:
//
//   0      1      2      3      4              8                        16
//   +------+------+------+------+--------------+------------------------+--------------------------+
//   | ver  | type | lane | kp   | receiver idx | counter (u64, BE)      | body, secretbox-sealed   |
//   +------+------+------+------+--------------+------------------------+--------------------------+
//
// - receiver idx: chosen by the receiving router for this connection and told to the sender over
//   the control connection, so the receiver finds the connection (and its keys) with one array index.
// - lane: which sender thread of the router sealed it (control, TUN path, relay); each lane has its
//   own counter and, at the receiver, its own replay window, so threads never share a counter.
// - counter: per direction and lane, never reused under one key; the nonce is counter ‖ type ‖ lane,
//   so flipping the type or lane, or replaying under another counter, breaks the MAC. Sent in the
//   clear for the replay window.
// - Keys per direction: SHA-256(sessionKey ‖ "weave-sleeve" ‖ 0|1), 0 = from the dialler.
// - kp, the key phase (0 or 1; was a reserved zero): which of the sender's two keys sealed the frame.
//   A password rotation moves a live connection to a new session key (mesh/rotation.ts); the sender
//   flips its phase when it starts sealing under the new key, and the receiver holds a key per phase
//   for the overlap, so datagrams in flight under the old key still open. The counters continue.
// - Without a password the body is the plain payload (same header, no tag): the replay window still
//   drops duplicates but nothing is authenticated.
import type { CryptoEngine } from '../mesh/crypto';

export const FRAME_VERSION = 1;
export const HDR = 16;
export const TAG = 16;

export const FrameType = {
  Data: 1,
  Heartbeat: 2,
  Probe: 3,
  ProbeAck: 4,
} as const;
export const MAX_FRAME_TYPE = 4;
/** Sender lanes per connection (see datapath.ts). */
export const LANES = 3;

// ---- heartbeat body (liveness through the data path, see datapath.ts beat()) ----
//
//   0        1        4                    12
//   +--------+--------+--------------------+
//   | flags  | 0 0 0  | version (u64, BE)  |
//   +--------+--------+--------------------+
//
// - flags HB_V2: the sender fills this body (older senders send one byte, weHear); HB_ROUTES: the
//   sender's engine forwards to the receiver's announced prefixes (a live next-hop path for each, or
//   nothing announced).
// - version: the version of the receiver's prefix announcement the sender's engines route (0: none),
//   so the receiver knows whether the peer routes what it announces now.
export const HB_BODY = 12;
export const HB_V2 = 0x80;
export const HB_ROUTES = 0x02;

/** Writes a heartbeat body at buf[off..off+HB_BODY). */
export function writeHeartbeat(buf: Uint8Array, off: number, routes: boolean, version: number): void {
  buf[off] = HB_V2 | (routes ? HB_ROUTES : 0);
  buf[off + 1] = 0;
  buf[off + 2] = 0;
  buf[off + 3] = 0;
  writeU32(buf, off + 4, Math.floor(version / 4294967296));
  writeU32(buf, off + 8, version >>> 0);
}

/** The flags of a heartbeat body (0 when it is an older sender's, which says nothing about routes). */
export function heartbeatFlags(buf: Uint8Array, off: number, len: number): number {
  return len >= HB_BODY && (buf[off] & HB_V2) !== 0 ? buf[off] : 0;
}

/** The announcement version a heartbeat body carries (call when heartbeatFlags is nonzero). */
export function heartbeatVersion(buf: Uint8Array, off: number): number {
  return readU32(buf, off + 4) * 4294967296 + readU32(buf, off + 8);
}

export const DIR_FROM_DIALLER = 0;
export const DIR_FROM_LISTENER = 1;

const KDF_LABEL = Buffer.from('weave-sleeve', 'latin1');

/** The two directional keys of a connection: tx is what we seal with, rx what we open with. */
export function deriveKeys(crypto: CryptoEngine, sessionKey: Uint8Array, outbound: boolean): { tx: Buffer; rx: Buffer } {
  const fromDialler = crypto.sha256(sessionKey, KDF_LABEL, Uint8Array.of(DIR_FROM_DIALLER));
  const fromListener = crypto.sha256(sessionKey, KDF_LABEL, Uint8Array.of(DIR_FROM_LISTENER));
  return outbound ? { tx: fromDialler, rx: fromListener } : { tx: fromListener, rx: fromDialler };
}

export function writeHeader(buf: Uint8Array, off: number, type: number, lane: number, idx: number, counter: number, phase = 0): void {
  buf[off] = FRAME_VERSION;
  buf[off + 1] = type;
  buf[off + 2] = lane;
  buf[off + 3] = phase;
  writeU32(buf, off + 4, idx);
  writeU32(buf, off + 8, Math.floor(counter / 4294967296));
  writeU32(buf, off + 12, counter >>> 0);
}

export function writeU32(b: Uint8Array, o: number, v: number): void {
  b[o] = v >>> 24;
  b[o + 1] = (v >>> 16) & 0xff;
  b[o + 2] = (v >>> 8) & 0xff;
  b[o + 3] = v & 0xff;
}

export function readU32(b: Uint8Array, o: number): number {
  return ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
}

/** Header fields parsed into reusable storage (one per reader, so parsing allocates nothing). */
export class FrameHeader {
  type = 0;
  lane = 0;
  idx = 0;
  counter = 0;
  phase = 0;
}

/** Parses a header; false (malformed) when too short, wrong version, unknown type or lane, key phase beyond 1, counter beyond 2^53. */
export function parseHeader(buf: Uint8Array, off: number, len: number, out: FrameHeader, encrypted: boolean): boolean {
  if (len < HDR + (encrypted ? TAG : 0)) return false;
  if (buf[off] !== FRAME_VERSION || buf[off + 2] >= LANES || buf[off + 3] > 1) return false;
  const type = buf[off + 1];
  if (type < 1 || type > MAX_FRAME_TYPE) return false;
  const hi = readU32(buf, off + 8);
  if (hi >= 0x200000) return false;
  out.type = type;
  out.lane = buf[off + 2];
  out.phase = buf[off + 3];
  out.idx = readU32(buf, off + 4);
  out.counter = hi * 4294967296 + readU32(buf, off + 12);
  return true;
}

/**
 * Length-exact views into a slot ring, cached per (slot, length). secretbox needs buffers of exact
 * sizes; creating a subarray per packet would allocate, so views are made once and reused — in
 * steady state (a handful of distinct packet sizes) the data path allocates nothing.
 */
export class ViewCache {
  private readonly cache: Array<Buffer | undefined>;
  private readonly span: number;
  constructor(readonly buf: Buffer, readonly stride: number, readonly slots: number, readonly off: number) {
    this.span = stride + 1;
    this.cache = new Array(slots * this.span);
  }
  get(slot: number, len: number): Buffer {
    const k = slot * this.span + len;
    let v = this.cache[k];
    if (v === undefined) {
      const start = slot * this.stride + this.off;
      v = this.buf.subarray(start, start + len);
      this.cache[k] = v;
    }
    return v;
  }
}

/**
 * Builds one frame (allocating; for heartbeats, probes and tests — the packet path writes the header
 * and seals into its preallocated ring instead).
 */
export function encodeFrame(crypto: CryptoEngine | null, key: Uint8Array | null, type: number, lane: number, idx: number, counter: number, body: Uint8Array, phase = 0): Buffer {
  const sealed = key !== null && crypto !== null;
  const frame = Buffer.alloc(HDR + body.length + (sealed ? TAG : 0));
  writeHeader(frame, 0, type, lane, idx, counter, phase);
  if (!sealed) {
    frame.set(body, HDR);
    return frame;
  }
  const nonce = Buffer.alloc(24);
  setNonce(nonce, type, lane, counter);
  crypto.secretboxSeal(frame.subarray(HDR), body, nonce, key);
  return frame;
}

/** Opens a whole frame (allocating); null when malformed or forged. Header fields land in hdr. */
export function decodeFrame(crypto: CryptoEngine | null, key: Uint8Array | null, frame: Uint8Array, hdr: FrameHeader): Buffer | null {
  const sealed = key !== null && crypto !== null;
  if (!parseHeader(frame, 0, frame.length, hdr, sealed)) return null;
  if (!sealed) return Buffer.from(frame.subarray(HDR));
  const nonce = Buffer.alloc(24);
  setNonce(nonce, hdr.type, hdr.lane, hdr.counter);
  const out = Buffer.alloc(frame.length - HDR - TAG);
  return crypto.secretboxOpen(out, frame.subarray(HDR), nonce, key) ? out : null;
}

/** The 24-byte nonce of a frame at nonce[off..off+24). */
export function setNonce(nonce: Uint8Array, type: number, lane: number, counter: number, off = 0): void {
  writeU32(nonce, off, Math.floor(counter / 4294967296));
  writeU32(nonce, off + 4, counter >>> 0);
  nonce[off + 8] = type;
  nonce[off + 9] = lane;
  // bytes 10..23 stay zero (caller-owned scratch that only this function writes)
}
