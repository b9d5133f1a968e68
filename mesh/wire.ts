// The TCP wire protocol between routers, as a pure state machine (no sockets), so it can be fuzzed
// and unit-tested byte for byte. The transport feeds whatever chunks the socket delivers into
// WireSession.push() and writes whatever the session hands to handler.write().
//
//   step 1, both sides at once:   "weave\0" | minVersion u8 | maxVersion u8
//   step 2, after step 1 agreed:  flags u8 (bit0 = I encrypt) | ephemeral X25519 public key (32)
//   then frames both ways:        length u32 BE | body (secretbox when encrypted)
//     frame 0 each way:           msgpack {v: 1, ...Features}
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
import { ProtocolError, RefusedError, WeaveError } from '../lib/errors';
import { decodeMsg, encodeMsg } from './codec';
import { isPeerName } from './peer';
import type { Features } from './types';
import { type CryptoEngine, NONCE_BYTES, SECRETBOX_OVERHEAD, X25519_BYTES } from './crypto';

export const MAGIC = Buffer.from('weave\x00', 'latin1');
export const HELLO_BYTES = MAGIC.length + 2;
const KEYX_BYTES = 1 + X25519_BYTES;
const FLAG_ENCRYPT = 0x01;
export const PROTOCOL_MIN_VERSION = 1;
export const PROTOCOL_MAX_VERSION = 1;
const FEATURES_VERSION = 1;
const FRAME_HEADER_BYTES = 4;
export const DEFAULT_MAX_FRAME = 16 * 1024 * 1024;

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

export function encodeKeyExchange(encrypt: boolean, publicKey: Uint8Array): Buffer {
  if (publicKey.length !== X25519_BYTES) throw new WeaveError('EINVAL', 'public key must be 32 bytes');
  const b = Buffer.alloc(KEYX_BYTES);
  b[0] = encrypt ? FLAG_ENCRYPT : 0;
  b.set(publicKey, 1);
  return b;
}

export function decodeKeyExchange(b: Uint8Array): { encrypt: boolean; publicKey: Buffer } {
  if (b.length !== KEYX_BYTES) throw new ProtocolError(`key exchange must be ${KEYX_BYTES} bytes, got ${b.length}`);
  // Unknown flag bits are refused rather than ignored: a peer that sets them expects something we lack.
  if ((b[0] & ~FLAG_ENCRYPT) !== 0) throw new ProtocolError(`unknown handshake flags 0x${b[0].toString(16)}`);
  return { encrypt: (b[0] & FLAG_ENCRYPT) !== 0, publicKey: Buffer.from(b.subarray(1)) };
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

export function decodeFeatures(b: Uint8Array): Features {
  // The shared decoder keeps no record definitions between messages (mesh/codec.ts).
  const o = decodeMsg(b, 'features');
  if (!isPlainObject(o)) throw new ProtocolError('features: not a map');
  if (o.v !== FEATURES_VERSION) throw new ProtocolError(`features: unsupported version ${String(o.v)}`, { version: o.v });
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
    overlayParams[k] = pr[k];
  }
  if (typeof o.trusted !== 'boolean') throw new ProtocolError('features: trusted must be a boolean');
  const lp = o.listenPort;
  if (typeof lp !== 'number' || !Number.isInteger(lp) || lp < 0 || lp > 65535) throw new ProtocolError('features: listenPort must be an integer 0..65535');
  return { name, nickname, uid, connId, overlays: ov.slice() as string[], overlayParams, trusted: o.trusted, listenPort: lp };
}

// ---------------------------------------------------------------- framing

/**
 * Reassembles the byte stream: fixed-size handshake pieces (take) and length-prefixed frames
 * (nextFrame). Keeps the socket's chunks in a list and copies only when a piece spans chunks, so a
 * 16 MiB frame arriving in 64 KiB chunks is copied once, not once per chunk.
 */
export class FrameReader {
  private chunks: Buffer[] = [];
  private total = 0;
  private pendingLen = -1;
  constructor(private readonly maxFrame: number = DEFAULT_MAX_FRAME) {}

  get buffered(): number { return this.total; }

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length));
    this.total += chunk.length;
  }

  /** The next n bytes, or null when fewer are buffered. */
  take(n: number): Buffer | null {
    if (this.total < n) return null;
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0];
    if (first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.total -= n;
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[0];
      const k = Math.min(c.length, n - off);
      c.copy(out, off, 0, k);
      off += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
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
 * Encodes outgoing frames for one direction. The plaintext scratch buffer is reused across
 * messages; each frame gets its own output buffer because the socket holds it until flushed.
 */
export class FrameSealer {
  private counter = 0;
  private readonly nonce = Buffer.alloc(NONCE_BYTES);
  private scratch = Buffer.allocUnsafe(256);
  constructor(
    private readonly crypto: CryptoEngine,
    private readonly key: Uint8Array | null,
    direction: number,
    private readonly maxFrame: number = DEFAULT_MAX_FRAME,
  ) {
    this.nonce[0] = direction;
  }

  get sent(): number { return this.counter; }

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
    if (!this.key) {
      let off = FRAME_HEADER_BYTES;
      if (type >= 0) out[off++] = type;
      out.set(payload, off);
      return out;
    }
    if (this.scratch.length < plainLen) this.scratch = Buffer.allocUnsafe(Math.max(plainLen, this.scratch.length * 2));
    let off = 0;
    if (type >= 0) this.scratch[off++] = type;
    this.scratch.set(payload, off);
    setCounter(this.nonce, this.counter);
    this.crypto.secretboxSeal(out.subarray(FRAME_HEADER_BYTES), this.scratch.subarray(0, plainLen), this.nonce, this.key);
    this.counter++;
    return out;
  }
}

/** Opens incoming frame bodies for one direction; the counter advances only on success. */
export class FrameOpener {
  private counter = 0;
  private readonly nonce = Buffer.alloc(NONCE_BYTES);
  constructor(
    private readonly crypto: CryptoEngine,
    private readonly key: Uint8Array | null,
    direction: number,
  ) {
    this.nonce[0] = direction;
  }

  get received(): number { return this.counter; }

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

export interface WireOptions {
  crypto: CryptoEngine;
  /** null (or empty) = do not encrypt */
  password: Uint8Array | null;
  /** true on the dialling side: decides the nonce direction byte */
  outbound: boolean;
  local: Features;
  minVersion?: number;
  maxVersion?: number;
  maxFrame?: number;
  /** Fixed ephemeral key pair, for deterministic tests only; normally a fresh one per session. */
  ephemeral?: { publicKey: Buffer; secretKey: Buffer };
}

export interface Established {
  version: number;
  encrypted: boolean;
  sessionKey: Buffer | null;
  remote: Features;
}

export interface WireHandler {
  /** Bytes to send to the peer, in order. */
  write(buf: Buffer): void;
  established(e: Established): void;
  /** payload may alias the received chunk; copy it to keep it past the callback when unsure. */
  message(type: number, payload: Buffer): void;
}

export type WireState = 'new' | 'hello' | 'keyx' | 'features' | 'open' | 'failed' | 'stopped';

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
  private sealer: FrameSealer | null = null;
  private opener: FrameOpener | null = null;
  private version = 0;
  private sessionKey: Buffer | null = null;

  constructor(private readonly opts: WireOptions, private readonly handler: WireHandler) {
    this.local = { min: opts.minVersion ?? PROTOCOL_MIN_VERSION, max: opts.maxVersion ?? PROTOCOL_MAX_VERSION };
    checkRange(this.local.min, this.local.max, 'local');
    this.reader = new FrameReader(opts.maxFrame ?? DEFAULT_MAX_FRAME);
    this.encrypt = opts.password !== null && opts.password.length > 0;
    this.keys = opts.ephemeral ?? opts.crypto.x25519Keypair();
  }

  get state(): WireState { return this.st; }
  get publicKey(): Buffer { return this.keys.publicKey; }

  /** Sends step 1; call once, before push. */
  start(): void {
    if (this.st !== 'new') throw new WeaveError('EINVAL', `start() in state ${this.st}`);
    this.st = 'hello';
    this.handler.write(encodeHello(this.local.min, this.local.max));
  }

  /** Stops decoding (the connection is closing); later pushes are ignored. */
  stop(): void {
    if (this.st !== 'failed') this.st = 'stopped';
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
      throw e;
    }
  }

  /** Frames one message for the peer (only once established). */
  encode(type: number, payload: Uint8Array): Buffer {
    if (this.st !== 'open' || !this.sealer) throw new WeaveError('EINVAL', `cannot send in state ${this.st}`);
    return this.sealer.encode(type, payload);
  }

  private drain(): void {
    for (;;) {
      switch (this.st) {
        case 'hello': {
          const b = this.reader.take(HELLO_BYTES);
          if (!b) return;
          this.version = negotiateVersion(this.local, decodeHello(b));
          this.st = 'keyx';
          this.handler.write(encodeKeyExchange(this.encrypt, this.keys.publicKey));
          break;
        }
        case 'keyx': {
          const b = this.reader.take(KEYX_BYTES);
          if (!b) return;
          const kx = decodeKeyExchange(b);
          checkEncryption(this.encrypt, kx.encrypt);
          if (this.encrypt) {
            const shared = this.opts.crypto.x25519(this.keys.secretKey, kx.publicKey);
            this.sessionKey = deriveSessionKey(this.opts.crypto, shared, this.opts.password as Uint8Array);
          }
          const out = this.opts.outbound ? DIR_FROM_DIALLER : DIR_FROM_LISTENER;
          const inn = this.opts.outbound ? DIR_FROM_LISTENER : DIR_FROM_DIALLER;
          const maxFrame = this.opts.maxFrame ?? DEFAULT_MAX_FRAME;
          this.sealer = new FrameSealer(this.opts.crypto, this.sessionKey, out, maxFrame);
          this.opener = new FrameOpener(this.opts.crypto, this.sessionKey, inn);
          this.st = 'features';
          this.handler.write(this.sealer.encodeRaw(encodeFeatures(this.opts.local)));
          break;
        }
        case 'features': {
          const body = this.reader.nextFrame();
          if (!body) return;
          const plain = (this.opener as FrameOpener).open(body);
          if (!plain) throw new RefusedError('EPASSWORD', "could not decrypt the peer's first message: the passwords differ");
          const remote = decodeFeatures(plain);
          this.st = 'open';
          this.handler.established({ version: this.version, encrypted: this.encrypt, sessionKey: this.sessionKey, remote });
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
          this.handler.message(plain[0], plain.subarray(1));
          break;
        }
        default:
          return;
      }
    }
  }
}
