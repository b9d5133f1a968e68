// The TCP wire protocol between routers, as a pure state machine (no sockets), so it can be fuzzed
// and unit-tested byte for byte. The transport feeds whatever chunks the socket delivers into
// WireSession.push() and writes whatever the session hands to handler.write().
//
//   step 1, both sides at once:   "weave\0" | minVersion u8 | maxVersion u8
//   step 2, after step 1 agreed:  flags u8 (bit0 = I encrypt, bit1 = two keys) | ephemeral X25519 public key (32)
//   then frames both ways:        length u32 BE | body (secretbox when encrypted)
//     frame 0 each way:           msgpack {v: 1, ...Features}; with bit1 twice: sealed under the
//                                 sender's older, then its newer password (rotation, mesh/rotation.ts)
//     later frames:               type u8 | payload
//
// When encrypted, session key = SHA-256(X25519 shared ‖ password) and each body is a secretbox whose
// nonce is [direction (0 from dialler, 1 from listener)] + zeros + u64 LE counter at 16..23. The
// counter is never sent: each side counts messages per direction, so a replayed, dropped or reordered
// frame fails to open and kills the connection. The direction byte stops a peer reflecting our own
// frames back at us.
//
// Both sides send their features frame as soon as they know the key, without waiting for the peer's,
// so a password mismatch is seen on BOTH ends (each fails to open the other's first frame).
//
// Until the peer has proved the password (its first features frame opened), frames are capped at
// PREAUTH_MAX_FRAME: an unauthenticated client cannot make us buffer a 16 MiB frame.
//
// Password rotation (a router accepting two passwords for a window; the scheme is described at the
// top of mesh/rotation.ts): a side that accepts two passwords seals its features frame under each
// (older first) and the receiver trial-opens every features frame with each password it accepts.
// The connection is keyed with the newest password both accept, "newest" in the dialler's order (so
// both ends pick the same one); message counters start at 1 (0 was each features frame's). A live
// connection moves to a newer password in-band with Msg.Rekey frames, one direction at a time:
//   Offer(proof)   "I hold this password": HMAC-SHA256 under SHA-256(shared ‖ password) over the
//                  handshake's public keys, the kind and the sender's direction
//   Switch(proof)  "every frame after this one is sealed under this password's key"
// A side that receives a valid Offer (or Switch) for a password newer than the one it seals with,
// and holds it, answers Switch and seals every later frame under the new key; the receiver of a
// Switch opens every later frame under it. Counters continue (never reused under any key). The
// handler hears each step ('accept' before we may receive under a key, 'use' when we seal with it,
// 'settled' when the peer does), so the overlays move their data keys make-before-break.
import { createHmac, timingSafeEqual } from 'crypto';
import { ProtocolError, RefusedError, WeaveError, describeValue } from '../lib/errors';
import { decodeMsg, encodeMsg } from './codec';
import { isPeerName } from './peer';
import { Msg, type Features } from './types';
import { type CryptoEngine, NONCE_BYTES, SECRETBOX_OVERHEAD, X25519_BYTES } from './crypto';

export const MAGIC = Buffer.from('weave\x00', 'latin1');
export const HELLO_BYTES = MAGIC.length + 2;
export const KEYX_BYTES = 1 + X25519_BYTES;
export const FLAG_ENCRYPT = 0x01;
/** The sender accepts two passwords and seals its features frame under each (older first). */
export const FLAG_TWO_KEYS = 0x02;
export const PROTOCOL_MIN_VERSION = 1;
export const PROTOCOL_MAX_VERSION = 1;
const FEATURES_VERSION = 1;
const FRAME_HEADER_BYTES = 4;
/**
 * FrameReader: chunks smaller than this are gathered into blocks of BLOCK_BYTES. Every connection
 * keeps its current block while idle and its pages fill with the small messages it receives: 16 KiB
 * (64 before) bounds that per peer, and a 16 MiB frame dribbled a byte at a time is still ~1000 entries.
 */
const SMALL_CHUNK = 1024;
const BLOCK_BYTES = 16 * 1024;
export const DEFAULT_MAX_FRAME = 16 * 1024 * 1024;
/**
 * Largest frame accepted before the peer proved the password: the features frame is the only one
 * there. Its real maximum (every string field at its limit in 3-byte UTF-8, 16 overlays, the sleeve
 * and fastdp parameters) is 1649 bytes sealed (test/unit/wire.test.ts measures it): 16 KiB is ten
 * times that, room for new fields and overlays.
 */
export const PREAUTH_MAX_FRAME = 16 * 1024;

/** Msg.Rekey kinds (see the header comment). */
export const REKEY_OFFER = 1;
export const REKEY_SWITCH = 2;
export const REKEY_PROOF_BYTES = 32;
const REKEY_LABEL = Buffer.from('weave-rekey-v1', 'latin1');

export const DIR_FROM_DIALLER = 0;
export const DIR_FROM_LISTENER = 1;

// ---------------------------------------------------------------- step 1: hello + version

export interface VersionRange { min: number; max: number }

export function encodeHello(min: number, max: number): Buffer {
  checkRange(min, max, 'local');
  const b = Buffer.alloc(HELLO_BYTES);
  MAGIC.copy(b, 0);
  b[MAGIC.length] = min;
  b[MAGIC.length + 1] = max;
  return b;
}

function checkRange(min: number, max: number, who: string): void {
  if (!Number.isInteger(min) || !Number.isInteger(max) || min < 1 || max > 255 || min > max) {
    throw new WeaveError('EINVAL', `invalid ${who} protocol version range ${min}..${max}`);
  }
}

export function decodeHello(b: Uint8Array): VersionRange {
  if (b.length !== HELLO_BYTES) throw new ProtocolError(`hello must be ${HELLO_BYTES} bytes, got ${b.length}`);
  for (let i = 0; i < MAGIC.length; i++) {
    if (b[i] !== MAGIC[i]) {
      throw new ProtocolError('bad magic: the peer is not speaking the weave protocol', { got: Buffer.from(b.subarray(0, MAGIC.length)).toString('hex') });
    }
  }
  const min = b[MAGIC.length];
  const max = b[MAGIC.length + 1];
  if (min < 1 || min > max) throw new ProtocolError(`peer sent an invalid protocol version range ${min}..${max}`);
  return { min, max };
}

/** Highest version both ranges contain; RefusedError EVERSION when they are disjoint. */
export function negotiateVersion(local: VersionRange, remote: VersionRange): number {
  const v = Math.min(local.max, remote.max);
  if (v < Math.max(local.min, remote.min)) {
    throw new RefusedError('EVERSION', `no common protocol version: we speak ${local.min}..${local.max}, the peer speaks ${remote.min}..${remote.max}`, { local, remote });
  }
  return v;
}

// ---------------------------------------------------------------- step 2: encryption + key exchange

export function encodeKeyExchange(encrypt: boolean, publicKey: Uint8Array, twoKeys = false): Buffer {
  if (publicKey.length !== X25519_BYTES) throw new WeaveError('EINVAL', 'public key must be 32 bytes');
  if (twoKeys && !encrypt) throw new WeaveError('EINVAL', 'two keys need encryption');
  const b = Buffer.alloc(KEYX_BYTES);
  b[0] = (encrypt ? FLAG_ENCRYPT : 0) | (twoKeys ? FLAG_TWO_KEYS : 0);
  b.set(publicKey, 1);
  return b;
}

export function decodeKeyExchange(b: Uint8Array): { encrypt: boolean; twoKeys: boolean; publicKey: Buffer } {
  if (b.length !== KEYX_BYTES) throw new ProtocolError(`key exchange must be ${KEYX_BYTES} bytes, got ${b.length}`);
  // Unknown flag bits are refused rather than ignored: a peer that sets them expects something we lack.
  if ((b[0] & ~(FLAG_ENCRYPT | FLAG_TWO_KEYS)) !== 0) throw new ProtocolError(`unknown handshake flags 0x${b[0].toString(16)}`);
  const encrypt = (b[0] & FLAG_ENCRYPT) !== 0;
  const twoKeys = (b[0] & FLAG_TWO_KEYS) !== 0;
  if (twoKeys && !encrypt) throw new ProtocolError('handshake flags: two keys without encryption');
  return { encrypt, twoKeys, publicKey: Buffer.from(b.subarray(1)) };
}

function checkEncryption(localEncrypts: boolean, remoteEncrypts: boolean): void {
  if (localEncrypts === remoteEncrypts) return;
  throw new RefusedError(
    'EENCRYPTION',
    remoteEncrypts ? 'peer requires encryption but no password is set here' : 'password is set here but the peer does not encrypt',
    { localEncrypts, remoteEncrypts },
  );
}

function deriveSessionKey(crypto: CryptoEngine, shared: Uint8Array, password: Uint8Array): Buffer {
  return crypto.sha256(shared, password);
}

/**
 * Proof that the sender holds the password whose session key is `key`, bound to this connection's
 * handshake (both public keys), the message kind and the sender's direction (so a proof cannot be
 * reflected back or replayed as another kind).
 */
export function rekeyProof(key: Uint8Array, kind: number, senderDirection: number, diallerPublic: Uint8Array, listenerPublic: Uint8Array): Buffer {
  return createHmac('sha256', key).update(REKEY_LABEL).update(Uint8Array.of(kind, senderDirection)).update(diallerPublic).update(listenerPublic).digest();
}

// ---------------------------------------------------------------- features (frame 0)

const MAX_STR = 255;
const MAX_OVERLAYS = 16;
const MAX_PARAM_KEYS = 64;

export function encodeFeatures(f: Features): Uint8Array {
  return encodeMsg({
    v: FEATURES_VERSION,
    name: f.name,
    nickname: f.nickname,
    uid: f.uid,
    connId: f.connId,
    overlays: f.overlays,
    overlayParams: f.overlayParams,
    trusted: f.trusted,
    listenPort: f.listenPort,
    // only when set: a field an older decoder ignores (it reads the fields it knows)
    ...(f.topologyDeltas ? { topologyDeltas: true } : {}),
  });
}

function isPlainObject(x: unknown): x is Record<string, unknown> {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) return false;
  const proto = Object.getPrototypeOf(x);
  return proto === Object.prototype || proto === null;
}

function str(o: Record<string, unknown>, k: string, minLen: number, maxLen: number): string {
  const v = o[k];
  if (typeof v !== 'string' || v.length < minLen || v.length > maxLen) {
    throw new ProtocolError(`features: ${k} must be a string of ${minLen}..${maxLen} characters`, { field: k });
  }
  return v;
}

const MAX_PARAM_FIELDS = 16;
const MAX_PARAM_BYTES = 64;

/**
 * One overlay's parameters: a flat map of scalars (each overlay reads the fields it knows and
 * validates their values, router/sleeve.ts sleevePortOf, router/fastdp.ts parseParams), so nothing
 * nested, no methods' names, nothing large reaches them. The sleeve's port is checked here too: a
 * peer that sends one sends a port.
 */
function overlayParamsEntry(overlay: string, v: unknown): Record<string, unknown> {
  const bad = (why: string): never => { throw new ProtocolError(`features: overlayParams.${overlay.slice(0, 32)}: ${why}`); };
  if (!isPlainObject(v)) return bad('must be a map');
  const keys = Object.keys(v);
  if (keys.length > MAX_PARAM_FIELDS) return bad(`more than ${MAX_PARAM_FIELDS} fields`);
  const out: Record<string, unknown> = {};
  for (const k of keys) {
    if (k.length > 32 || k === '__proto__' || k === 'constructor' || k === 'prototype' || k === 'toString' || k === 'valueOf') return bad(`field ${JSON.stringify(k.slice(0, 32))} not allowed`);
    const x = v[k];
    const scalar = x === null || typeof x === 'boolean' || (typeof x === 'number' && Number.isFinite(x)) || (typeof x === 'string' && x.length <= MAX_STR) || (x instanceof Uint8Array && x.length <= MAX_PARAM_BYTES);
    if (!scalar) return bad(`field ${k} must be a short scalar, not ${describeValue(x)}`);
    out[k] = x;
  }
  if (overlay === 'sleeve' && out.port !== undefined) {
    const p = out.port;
    if (typeof p !== 'number' || !Number.isInteger(p) || p < 1 || p > 65535) return bad('port must be an integer 1..65535');
  }
  return out;
}

export function decodeFeatures(b: Uint8Array): Features {
  // The shared decoder keeps no record definitions between messages (mesh/codec.ts).
  const o = decodeMsg(b, 'features');
  if (!isPlainObject(o)) throw new ProtocolError('features: not a map');
  if (o.v !== FEATURES_VERSION) throw new ProtocolError(`features: unsupported version ${describeValue(o.v)}`, { version: describeValue(o.v) });
  const name = str(o, 'name', 17, 17);
  if (!isPeerName(name)) throw new ProtocolError(`features: invalid peer name ${JSON.stringify(name)}`);
  const nickname = str(o, 'nickname', 0, MAX_STR);
  const uid = str(o, 'uid', 1, 64);
  const connId = str(o, 'connId', 1, 64);
  const ov = o.overlays;
  if (!Array.isArray(ov) || ov.length > MAX_OVERLAYS || !ov.every((x) => typeof x === 'string' && x.length > 0 && x.length <= 32)) {
    throw new ProtocolError(`features: overlays must be a list of at most ${MAX_OVERLAYS} short names`);
  }
  const pr = o.overlayParams;
  if (!isPlainObject(pr)) throw new ProtocolError('features: overlayParams must be a map');
  const keys = Object.keys(pr);
  if (keys.length > MAX_PARAM_KEYS) throw new ProtocolError(`features: overlayParams has more than ${MAX_PARAM_KEYS} keys`);
  const overlayParams: Record<string, unknown> = {};
  for (const k of keys) {
    if (k === '__proto__' || k === 'constructor' || k === 'prototype') throw new ProtocolError(`features: overlayParams key ${k} not allowed`);
    overlayParams[k] = overlayParamsEntry(k, pr[k]);
  }
  if (typeof o.trusted !== 'boolean') throw new ProtocolError('features: trusted must be a boolean');
  const lp = o.listenPort;
  if (typeof lp !== 'number' || !Number.isInteger(lp) || lp < 0 || lp > 65535) throw new ProtocolError('features: listenPort must be an integer 0..65535');
  if (o.topologyDeltas !== undefined && typeof o.topologyDeltas !== 'boolean') throw new ProtocolError('features: topologyDeltas must be a boolean');
  const f: Features = { name, nickname, uid, connId, overlays: ov.slice() as string[], overlayParams, trusted: o.trusted, listenPort: lp };
  if (o.topologyDeltas === true) f.topologyDeltas = true;
  return f;
}

// ---------------------------------------------------------------- framing

/**
 * Reassembles the byte stream: fixed-size handshake pieces (take) and length-prefixed frames
 * (nextFrame). Keeps the socket's chunks in a list and copies only when a piece spans chunks, so a
 * 16 MiB frame arriving in 64 KiB chunks is copied once, not once per chunk. Small chunks (a peer
 * dribbling a frame a byte at a time) are gathered into shared 16 KiB blocks first, so the list holds
 * about a thousand entries for a 16 MiB frame rather than millions, and consuming from it moves an index
 * (Array.shift on a huge list copies it: byte-by-byte input was quadratic).
 */
export class FrameReader {
  private chunks: Buffer[] = [];
  /** first unconsumed entry of chunks */
  private head = 0;
  private total = 0;
  private pendingLen = -1;
  /** the block gathering small chunks: bytes [blockStart, blockLen) are not in chunks yet */
  private block: Buffer | null = null;
  private blockStart = 0;
  private blockLen = 0;
  constructor(private maxFrame: number = DEFAULT_MAX_FRAME) {}

  get buffered(): number { return this.total; }

  /** Changes the frame limit for frames whose header has not been read yet. */
  setMaxFrame(n: number): void {
    this.maxFrame = n;
  }

  /** Drops everything buffered (the connection is done: nothing may keep the peer's bytes alive). */
  clear(): void {
    this.chunks = [];
    this.head = 0;
    this.total = 0;
    this.pendingLen = -1;
    this.block = null;
    this.blockStart = 0;
    this.blockLen = 0;
  }

  push(chunk: Uint8Array): void {
    const n = chunk.length;
    if (n === 0) return;
    this.total += n;
    if (n < SMALL_CHUNK) {
      if (this.block === null || this.blockLen + n > BLOCK_BYTES) {
        this.flushBlock();
        this.block = Buffer.allocUnsafe(BLOCK_BYTES);
        this.blockStart = 0;
        this.blockLen = 0;
      }
      this.block.set(chunk, this.blockLen);
      this.blockLen += n;
      return;
    }
    this.flushBlock();
    this.chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, n));
  }

  /** Moves the gathered small chunks to the list (a view: the block is never written there again). */
  private flushBlock(): void {
    if (this.block === null || this.blockLen === this.blockStart) return;
    this.chunks.push(this.block.subarray(this.blockStart, this.blockLen));
    this.blockStart = this.blockLen;
  }

  /** Drops the first entry of the list (and compacts the list now and then). */
  private shift(): void {
    this.head++;
    if (this.head === this.chunks.length) {
      this.chunks = [];
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.chunks.length) {
      this.chunks = this.chunks.slice(this.head);
      this.head = 0;
    }
  }

  /** The next n bytes, or null when fewer are buffered. */
  take(n: number): Buffer | null {
    if (this.total < n) return null;
    if (n === 0) return Buffer.alloc(0);
    this.flushBlock();
    const first = this.chunks[this.head];
    if (first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.shift();
      else this.chunks[this.head] = first.subarray(n);
      this.total -= n;
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[this.head];
      const k = Math.min(c.length, n - off);
      c.copy(out, off, 0, k);
      off += k;
      if (k === c.length) this.shift();
      else this.chunks[this.head] = c.subarray(k);
    }
    this.total -= n;
    return out;
  }

  /** The next complete frame body, or null when it has not fully arrived. */
  nextFrame(): Buffer | null {
    if (this.pendingLen < 0) {
      const h = this.take(FRAME_HEADER_BYTES);
      if (!h) return null;
      const len = h.readUInt32BE(0);
      if (len > this.maxFrame) throw new ProtocolError(`frame of ${len} bytes exceeds the limit of ${this.maxFrame}`, { len, max: this.maxFrame });
      this.pendingLen = len;
    }
    const body = this.take(this.pendingLen);
    if (!body) return null;
    this.pendingLen = -1;
    return body;
  }
}

function setCounter(nonce: Buffer, counter: number): void {
  nonce.writeUInt32LE(counter >>> 0, 16);
  nonce.writeUInt32LE(Math.floor(counter / 0x1_0000_0000), 20);
}

/** Builds the nonce for message `counter` in `direction` (exported for tests and tools). */
export function frameNonce(direction: number, counter: number): Buffer {
  const n = Buffer.alloc(NONCE_BYTES);
  n[0] = direction;
  setCounter(n, counter);
  return n;
}

/**
 * Encodes outgoing frames for one direction. Each frame gets its own output buffer because the
 * socket holds it until flushed; the plaintext is written into it where the ciphertext goes and
 * sealed in place (libsodium's secretbox allows the message where the ciphertext goes: m == c + MAC;
 * tweetnacl copies it first). A scratch buffer per sealer, as before, grew to the largest message
 * the connection ever sent (the full topology: O(N²) bytes on each of N connections) and kept it.
 */
export class FrameSealer {
  private counter: number;
  private readonly nonce = Buffer.alloc(NONCE_BYTES);
  constructor(
    private readonly crypto: CryptoEngine,
    private key: Uint8Array | null,
    direction: number,
    private readonly maxFrame: number = DEFAULT_MAX_FRAME,
    startCounter = 0,
  ) {
    this.nonce[0] = direction;
    this.counter = startCounter;
  }

  get sent(): number { return this.counter; }

  /** Seals every later frame under key; the counter continues (a nonce is never reused under any key). */
  setKey(key: Uint8Array): void {
    if (!this.key) throw new WeaveError('EINVAL', 'cannot re-key an unencrypted session');
    this.key = key;
  }

  /** A frame whose body is raw (used for the features frame). */
  encodeRaw(body: Uint8Array): Buffer {
    return this.build(-1, body);
  }

  /** A message frame: body = type u8 + payload. */
  encode(type: number, payload: Uint8Array): Buffer {
    if (!Number.isInteger(type) || type < 0 || type > 255) throw new WeaveError('EINVAL', `message type ${type} out of range 0..255`);
    return this.build(type, payload);
  }

  private build(type: number, payload: Uint8Array): Buffer {
    const plainLen = payload.length + (type >= 0 ? 1 : 0);
    const bodyLen = plainLen + (this.key ? SECRETBOX_OVERHEAD : 0);
    if (bodyLen > this.maxFrame) throw new WeaveError('E2BIG', `message of ${bodyLen} bytes exceeds the frame limit of ${this.maxFrame}`, { bodyLen });
    const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + bodyLen);
    out.writeUInt32BE(bodyLen, 0);
    const plainAt = FRAME_HEADER_BYTES + (this.key ? SECRETBOX_OVERHEAD : 0);
    let off = plainAt;
    if (type >= 0) out[off++] = type;
    out.set(payload, off);
    if (!this.key) return out;
    setCounter(this.nonce, this.counter);
    this.crypto.secretboxSeal(out.subarray(FRAME_HEADER_BYTES), out.subarray(plainAt, plainAt + plainLen), this.nonce, this.key);
    this.counter++;
    return out;
  }
}

/** Opens incoming frame bodies for one direction; the counter advances only on success. */
export class FrameOpener {
  private counter: number;
  private readonly nonce = Buffer.alloc(NONCE_BYTES);
  constructor(
    private readonly crypto: CryptoEngine,
    private key: Uint8Array | null,
    direction: number,
    startCounter = 0,
  ) {
    this.nonce[0] = direction;
    this.counter = startCounter;
  }

  get received(): number { return this.counter; }

  /** Opens every later frame under key; the counter continues. */
  setKey(key: Uint8Array): void {
    if (!this.key) throw new WeaveError('EINVAL', 'cannot re-key an unencrypted session');
    this.key = key;
  }

  /** The plaintext, or null when the body does not open (wrong key, corrupt, replayed, reordered). */
  open(body: Buffer): Buffer | null {
    if (!this.key) {
      this.counter++;
      return body;
    }
    if (body.length < SECRETBOX_OVERHEAD) return null;
    const out = Buffer.allocUnsafe(body.length - SECRETBOX_OVERHEAD);
    setCounter(this.nonce, this.counter);
    if (!this.crypto.secretboxOpen(out, body, this.nonce, this.key)) return null;
    this.counter++;
    return out;
  }
}

// ---------------------------------------------------------------- the session state machine

/** A password this side accepts, with the generation the router numbers it by (mesh/rotation.ts). */
export interface Secret {
  gen: number;
  password: Uint8Array;
}

export interface WireOptions {
  crypto: CryptoEngine;
  /** null (or empty) = do not encrypt; ignored when `passwords` is given */
  password: Uint8Array | null;
  /** the passwords this side accepts, oldest first (at most two: a rotation window); [] = do not encrypt */
  passwords?: Secret[];
  /** true on the dialling side: decides the nonce direction byte */
  outbound: boolean;
  local: Features;
  minVersion?: number;
  maxVersion?: number;
  maxFrame?: number;
  /** frame limit until the peer proved the password; default PREAUTH_MAX_FRAME */
  preauthMaxFrame?: number;
  /** Fixed ephemeral key pair, for deterministic tests only; normally a fresh one per session. */
  ephemeral?: { publicKey: Buffer; secretKey: Buffer };
}

export interface Established {
  version: number;
  encrypted: boolean;
  sessionKey: Buffer | null;
  remote: Features;
  /** generation of the password the connection is keyed with; 0 when unencrypted */
  generation: number;
}

/**
 * A step of an in-band re-key (see the header comment): 'accept' before the peer may seal under key
 * (install it as an extra receive key), 'use' when we seal under it from now on, 'settled' when the
 * peer does. 'unknown': the peer offered a password we do not hold (nothing changes).
 */
export type RekeyStep = 'accept' | 'use' | 'settled' | 'unknown';

export interface WireHandler {
  /** Bytes to send to the peer, in order. */
  write(buf: Buffer): void;
  established(e: Established): void;
  /** payload may alias the received chunk; copy it to keep it past the callback when unsure. */
  message(type: number, payload: Buffer): void;
  rekey?(step: RekeyStep, key: Buffer | null, generation: number): void;
}

export type WireState = 'new' | 'hello' | 'keyx' | 'features' | 'open' | 'failed' | 'stopped';

/** What WireSession.setPasswords found: 'stale' = a direction uses a password no longer accepted. */
export type PasswordCheck = 'ok' | 'stale';

interface SessionKey { gen: number; key: Buffer }

/**
 * One connection's protocol, fed with arbitrary chunks. push() throws ProtocolError or RefusedError
 * (and nothing else for any input bytes); after a throw the session is failed for good.
 */
export class WireSession {
  private st: WireState = 'new';
  private readonly reader: FrameReader;
  private readonly local: VersionRange;
  private readonly encrypt: boolean;
  private readonly keys: { publicKey: Buffer; secretKey: Buffer };
  private readonly maxFrame: number;
  private sealer: FrameSealer | null = null;
  private opener: FrameOpener | null = null;
  private version = 0;
  private sessionKey: Buffer | null = null;
  /** accepted now, oldest first */
  private secrets: Secret[];
  // after the key exchange
  private shared: Buffer | null = null;
  private remotePublic: Buffer | null = null;
  private candidates: SessionKey[] = [];
  private peerFrames = 1;
  /** per features frame of the peer (its order): the generation it opened under, or 0 */
  private openedUnder: number[] = [];
  private remote: Features | null = null;
  private txGen = 0;
  private rxGen = 0;
  private readonly offered = new Set<number>();

  constructor(private readonly opts: WireOptions, private readonly handler: WireHandler) {
    this.local = { min: opts.minVersion ?? PROTOCOL_MIN_VERSION, max: opts.maxVersion ?? PROTOCOL_MAX_VERSION };
    checkRange(this.local.min, this.local.max, 'local');
    this.maxFrame = opts.maxFrame ?? DEFAULT_MAX_FRAME;
    this.reader = new FrameReader(Math.min(this.maxFrame, opts.preauthMaxFrame ?? PREAUTH_MAX_FRAME));
    this.secrets = opts.passwords
      ? opts.passwords.filter((p) => p.password.length > 0)
      : opts.password !== null && opts.password.length > 0 ? [{ gen: 1, password: opts.password }] : [];
    if (this.secrets.length > 2) throw new WeaveError('EINVAL', 'at most two passwords are accepted at once');
    this.encrypt = this.secrets.length > 0;
    this.keys = opts.ephemeral ?? opts.crypto.x25519Keypair();
  }

  get state(): WireState { return this.st; }
  get publicKey(): Buffer { return this.keys.publicKey; }
  /** generation of the password we seal with (0 unencrypted or before the handshake) */
  get txGeneration(): number { return this.txGen; }
  /** generation of the password the peer seals with */
  get rxGeneration(): number { return this.rxGen; }

  /** Sends step 1; call once, before push. */
  start(): void {
    if (this.st !== 'new') throw new WeaveError('EINVAL', `start() in state ${this.st}`);
    this.st = 'hello';
    this.handler.write(encodeHello(this.local.min, this.local.max));
  }

  /** Stops decoding (the connection is closing); later pushes are ignored and buffered bytes dropped. */
  stop(): void {
    if (this.st !== 'failed') this.st = 'stopped';
    this.reader.clear();
  }

  push(chunk: Uint8Array): void {
    if (this.st === 'stopped') return;
    if (this.st === 'failed') throw new ProtocolError('data after the session failed');
    if (this.st === 'new') throw new WeaveError('EINVAL', 'push() before start()');
    this.reader.push(chunk);
    try {
      this.drain();
    } catch (e) {
      if (this.state !== 'stopped') this.st = 'failed';
      this.reader.clear();
      throw e;
    }
  }

  /** Frames one message for the peer (only once established). */
  encode(type: number, payload: Uint8Array): Buffer {
    if (this.st !== 'open' || !this.sealer) throw new WeaveError('EINVAL', `cannot send in state ${this.st}`);
    return this.sealer.encode(type, payload);
  }

  /**
   * The passwords accepted now changed (rotation started or finished). Once open: 'stale' when a
   * direction still uses a password no longer in the list (the caller closes the connection);
   * otherwise, when the newest is not the one we seal with, offers it to the peer (once).
   */
  setPasswords(list: Secret[]): PasswordCheck {
    if (!this.encrypt) return 'ok';
    const usable = list.filter((p) => p.password.length > 0);
    if (usable.length === 0 || usable.length > 2) throw new WeaveError('EINVAL', 'an encrypted session accepts one or two passwords');
    this.secrets = usable;
    return this.st === 'open' ? this.reconcile() : 'ok';
  }

  private reconcile(): PasswordCheck {
    const has = (g: number): boolean => this.secrets.some((p) => p.gen === g);
    if (!has(this.txGen) || !has(this.rxGen)) return 'stale';
    const newest = this.secrets[this.secrets.length - 1];
    if (newest.gen !== this.txGen && !this.offered.has(newest.gen)) {
      this.offered.add(newest.gen);
      const key = this.keyFor(newest);
      this.handler.rekey?.('accept', key, newest.gen);
      this.sendRekey(REKEY_OFFER, key);
    }
    return 'ok';
  }

  private get outDir(): number { return this.opts.outbound ? DIR_FROM_DIALLER : DIR_FROM_LISTENER; }
  private get inDir(): number { return this.opts.outbound ? DIR_FROM_LISTENER : DIR_FROM_DIALLER; }

  private keyFor(s: Secret): Buffer {
    return deriveSessionKey(this.opts.crypto, this.shared as Buffer, s.password);
  }

  private proof(key: Uint8Array, kind: number, senderDir: number): Buffer {
    const mine = this.keys.publicKey;
    const theirs = this.remotePublic as Buffer;
    return this.opts.outbound ? rekeyProof(key, kind, senderDir, mine, theirs) : rekeyProof(key, kind, senderDir, theirs, mine);
  }

  private sendRekey(kind: number, key: Buffer): void {
    const body = Buffer.alloc(1 + REKEY_PROOF_BYTES);
    body[0] = kind;
    this.proof(key, kind, this.outDir).copy(body, 1);
    this.handler.write((this.sealer as FrameSealer).encode(Msg.Rekey, body));
  }

  private drain(): void {
    for (;;) {
      switch (this.st) {
        case 'hello': {
          const b = this.reader.take(HELLO_BYTES);
          if (!b) return;
          this.version = negotiateVersion(this.local, decodeHello(b));
          this.st = 'keyx';
          this.handler.write(encodeKeyExchange(this.encrypt, this.keys.publicKey, this.secrets.length > 1));
          break;
        }
        case 'keyx': {
          const b = this.reader.take(KEYX_BYTES);
          if (!b) return;
          this.onKeyExchange(decodeKeyExchange(b));
          break;
        }
        case 'features': {
          const body = this.reader.nextFrame();
          if (!body) return;
          this.onFeaturesFrame(body);
          break;
        }
        case 'open': {
          const body = this.reader.nextFrame();
          if (!body) return;
          const plain = (this.opener as FrameOpener).open(body);
          if (!plain) {
            throw new ProtocolError('a frame failed to decrypt: corrupted, replayed, reordered or dropped', { frame: (this.opener as FrameOpener).received });
          }
          if (plain.length < 1) throw new ProtocolError('empty message frame (no type byte)');
          if (plain[0] === Msg.Rekey && this.encrypt) this.onRekey(plain.subarray(1));
          else this.handler.message(plain[0], plain.subarray(1));
          break;
        }
        default:
          return;
      }
    }
  }

  /** Our features frame(s) go out at once: sealed under each password we accept, oldest first. */
  private onKeyExchange(kx: { encrypt: boolean; twoKeys: boolean; publicKey: Buffer }): void {
    checkEncryption(this.encrypt, kx.encrypt);
    this.st = 'features';
    const features = encodeFeatures(this.opts.local);
    if (!this.encrypt) {
      this.sealer = new FrameSealer(this.opts.crypto, null, this.outDir, this.maxFrame);
      this.opener = new FrameOpener(this.opts.crypto, null, this.inDir);
      this.handler.write(this.sealer.encodeRaw(features));
      return;
    }
    this.remotePublic = kx.publicKey;
    this.peerFrames = kx.twoKeys ? 2 : 1;
    this.shared = this.opts.crypto.x25519(this.keys.secretKey, kx.publicKey);
    this.candidates = this.secrets.map((s) => ({ gen: s.gen, key: this.keyFor(s) }));
    const cap = Math.min(this.maxFrame, this.opts.preauthMaxFrame ?? PREAUTH_MAX_FRAME);
    if (features.length + SECRETBOX_OVERHEAD > cap) {
      throw new WeaveError('E2BIG', `our features frame (${features.length} bytes) exceeds the pre-authentication limit of ${cap}`);
    }
    for (const c of this.candidates) this.handler.write(new FrameSealer(this.opts.crypto, c.key, this.outDir, cap).encodeRaw(features));
  }

  /** One of the peer's features frames: trial-open it under each password we accept. */
  private onFeaturesFrame(body: Buffer): void {
    if (!this.encrypt) {
      this.remote = decodeFeatures((this.opener as FrameOpener).open(body) as Buffer);
      this.establish(null);
      return;
    }
    let opened: { gen: number; plain: Buffer } | null = null;
    for (const c of this.candidates) {
      const plain = new FrameOpener(this.opts.crypto, c.key, this.inDir).open(body);
      if (plain) {
        opened = { gen: c.gen, plain };
        break;
      }
    }
    this.openedUnder.push(opened ? opened.gen : 0);
    // The first features frame that opens proves the password: decode it (a second is the same map).
    if (opened && !this.remote) this.remote = decodeFeatures(opened.plain);
    if (this.openedUnder.length < this.peerFrames) return;
    if (!this.remote) throw new RefusedError('EPASSWORD', "could not decrypt the peer's first message: the passwords differ");
    this.establish(this.agreedKey());
  }

  /**
   * The newest password both sides accept, in the dialler's order: the dialler sealed its frames in
   * its order, so the listener takes the last of them that opened; the dialler takes the newest of
   * its own passwords that opened one of the listener's frames. Both name the same password.
   */
  private agreedKey(): SessionKey {
    const gens = this.openedUnder.filter((g) => g !== 0);
    let gen: number;
    if (this.opts.outbound) {
      gen = this.candidates.filter((c) => gens.includes(c.gen)).map((c) => c.gen).pop() as number;
    } else {
      gen = gens[gens.length - 1];
    }
    return this.candidates.find((c) => c.gen === gen) as SessionKey;
  }

  private establish(k: SessionKey | null): void {
    if (k) {
      // counter 0 was each features frame's: messages start at 1 under the agreed key
      this.sealer = new FrameSealer(this.opts.crypto, k.key, this.outDir, this.maxFrame, 1);
      this.opener = new FrameOpener(this.opts.crypto, k.key, this.inDir, 1);
      this.sessionKey = k.key;
      this.txGen = this.rxGen = k.gen;
    }
    this.candidates = [];
    this.reader.setMaxFrame(this.maxFrame);
    this.st = 'open';
    this.handler.established({ version: this.version, encrypted: this.encrypt, sessionKey: this.sessionKey, remote: this.remote as Features, generation: this.txGen });
  }

  /** Which accepted password the peer's proof is for, or undefined. */
  private verify(kind: number, proof: Buffer): { secret: Secret; key: Buffer } | undefined {
    for (const s of this.secrets) {
      const key = this.keyFor(s);
      if (timingSafeEqual(this.proof(key, kind, this.inDir), proof)) return { secret: s, key };
    }
    return undefined;
  }

  private newer(gen: number, than: number): boolean {
    const i = this.secrets.findIndex((s) => s.gen === gen);
    const j = this.secrets.findIndex((s) => s.gen === than);
    return i > j;
  }

  private onRekey(body: Buffer): void {
    if (body.length !== 1 + REKEY_PROOF_BYTES || (body[0] !== REKEY_OFFER && body[0] !== REKEY_SWITCH)) {
      throw new ProtocolError('malformed rekey message', { length: body.length, kind: body[0] });
    }
    const kind = body[0];
    const v = this.verify(kind, body.subarray(1));
    if (kind === REKEY_SWITCH) {
      if (!v) throw new ProtocolError('the peer switched to a password we do not accept');
      (this.opener as FrameOpener).setKey(v.key);
      this.rxGen = v.secret.gen;
      this.handler.rekey?.('settled', v.key, v.secret.gen);
    } else if (!v) {
      this.handler.rekey?.('unknown', null, 0);
      return;
    }
    if (v.secret.gen !== this.txGen && this.newer(v.secret.gen, this.txGen)) {
      // the peer holds it (proved) and can open it (it offered, or switched its own sealing to it)
      this.handler.rekey?.('accept', v.key, v.secret.gen);
      this.sendRekey(REKEY_SWITCH, v.key);
      (this.sealer as FrameSealer).setKey(v.key);
      this.txGen = v.secret.gen;
      this.sessionKey = v.key;
      this.offered.add(v.secret.gen);
      this.handler.rekey?.('use', v.key, v.secret.gen);
    }
  }
}
