// Sealing and opening the sleeve's datagrams a batch at a time. The packet loops (router/datapath.ts)
// collect a batch's boxes with their nonces and keys, then make one call:
//   native  the addon's XSalsa20-Poly1305 (native/secretbox.c): one N-API call per batch, SIMD
//           keystream and Poly1305; the default when the addon loads and the engine is sodium
//   engine  the CryptoEngine (sodium-native or tweetnacl) per box: what runs without the addon, and
//           the baseline bench/sleeve compares against
// Both put the same bytes on the wire (test/unit/secretbox-native.test.ts).
import { KEY_BYTES as BOX_KEY, NONCE_BYTES as BOX_NONCE, SECRETBOX_OVERHEAD as BOX_TAG, type CryptoEngine } from '../mesh/crypto';
import { UsageError, WeaveError } from '../lib/errors';
import type { Logger } from '../lib/log';
import { setNonce } from './frame';
import { loadTunIo, type TunIo } from './native';

export type BoxKind = 'native' | 'engine';

/**
 * The boxes of one batch, preallocated for cap of them: box j spans [offs[j], offs[j] + lens[j]) of
 * the buffer it is sealed in or opened from (tag included), opens into dstOffs[j], and has nonce j
 * (nonces[24j..]) and key j (keys[32j..]). Opening sets ok[j] to 1 when the box was authentic.
 */
export class BoxJobs {
  readonly offs: Int32Array;
  readonly lens: Int32Array;
  readonly dstOffs: Int32Array;
  readonly nonces: Buffer;
  readonly keys: Buffer;
  readonly ok: Uint8Array;
  n = 0;
  constructor(readonly cap: number) {
    this.offs = new Int32Array(cap);
    this.lens = new Int32Array(cap);
    this.dstOffs = new Int32Array(cap);
    this.nonces = Buffer.alloc(BOX_NONCE * cap);
    this.keys = Buffer.alloc(BOX_KEY * cap);
    this.ok = new Uint8Array(cap);
  }

  /** Queues a box (dstOff matters only for opening) under the nonce of frame (type, lane, counter); returns its index. */
  add(off: number, len: number, dstOff: number, type: number, lane: number, counter: number, key: Uint8Array): number {
    const j = this.n++;
    this.offs[j] = off;
    this.lens[j] = len;
    this.dstOffs[j] = dstOff;
    setNonce(this.nonces, type, lane, counter, BOX_NONCE * j);
    this.keys.set(key, BOX_KEY * j);
    return j;
  }
}

export interface BoxBatch {
  readonly kind: BoxKind;
  /** Seals the n boxes of jobs in buf, in place: each message sits 16 bytes in and the tag is written in front. */
  seal(buf: Buffer, jobs: BoxJobs): void;
  /** Opens the n boxes of jobs from src into dst (lens[j] - 16 bytes each); returns how many were authentic. */
  open(src: Buffer, dst: Buffer, jobs: BoxJobs): number;
}

class NativeBoxes implements BoxBatch {
  readonly kind = 'native' as const;
  constructor(private readonly io: Required<Pick<TunIo, 'boxSeal' | 'boxOpen'>>) {}
  seal(buf: Buffer, j: BoxJobs): void {
    this.io.boxSeal(buf, j.offs, j.lens, j.nonces, j.keys, j.n);
  }
  open(src: Buffer, dst: Buffer, j: BoxJobs): number {
    return this.io.boxOpen(src, j.offs, j.lens, dst, j.dstOffs, j.nonces, j.keys, j.ok, j.n);
  }
}

/**
 * Views of (buffer, offset, length), made once and reused: the engine wants length-exact buffers and
 * subarray() or Buffer#copy with offsets would allocate per packet. Rings reuse a few offsets and
 * packet sizes, so the table stays small.
 */
class Views {
  private readonly byBuf = new Map<Uint8Array, Array<Array<Buffer | undefined> | undefined>>();
  get(buf: Buffer, off: number, len: number): Buffer {
    let t = this.byBuf.get(buf);
    if (t === undefined) {
      t = [];
      this.byBuf.set(buf, t);
    }
    let r = t[off];
    if (r === undefined) {
      r = [];
      t[off] = r;
    }
    let v = r[len];
    if (v === undefined) {
      v = buf.subarray(off, off + len);
      r[len] = v;
    }
    return v;
  }
}

/** Per box through the engine (sodium-native or tweetnacl); allocates nothing per packet either. */
class EngineBoxes implements BoxBatch {
  readonly kind = 'engine' as const;
  private readonly views = new Views();
  // the message is copied out first: the engines do not all allow sealing in place
  private readonly plain: Array<Buffer | undefined> = [];
  constructor(private readonly crypto: CryptoEngine) {}

  private scratch(len: number): Buffer {
    let b = this.plain[len];
    if (b === undefined) {
      b = Buffer.alloc(len);
      this.plain[len] = b;
    }
    return b;
  }

  seal(buf: Buffer, jobs: BoxJobs): void {
    const v = this.views;
    const { offs, lens, nonces, keys, n } = jobs;
    for (let i = 0; i < n; i++) {
      const off = offs[i];
      const len = lens[i] - BOX_TAG;
      if (len < 0) throw new WeaveError('ECRYPTO', 'boxSeal: a box is shorter than its tag', { box: i, len: lens[i] });
      const m = this.scratch(len);
      m.set(v.get(buf, off + BOX_TAG, len));
      this.crypto.secretboxSeal(v.get(buf, off, len + BOX_TAG), m, v.get(nonces, i * BOX_NONCE, BOX_NONCE), v.get(keys, i * BOX_KEY, BOX_KEY));
    }
  }

  open(src: Buffer, dst: Buffer, jobs: BoxJobs): number {
    const v = this.views;
    const { offs, lens, dstOffs, nonces, keys, ok, n } = jobs;
    let good = 0;
    for (let i = 0; i < n; i++) {
      const len = lens[i];
      if (len < BOX_TAG) {
        ok[i] = 0;
        continue;
      }
      const m = this.scratch(len - BOX_TAG);
      if (this.crypto.secretboxOpen(m, v.get(src, offs[i], len), v.get(nonces, i * BOX_NONCE, BOX_NONCE), v.get(keys, i * BOX_KEY, BOX_KEY))) {
        dst.set(m, dstOffs[i]);
        ok[i] = 1;
        good++;
      } else ok[i] = 0;
    }
    return good;
  }
}

export function engineBoxes(crypto: CryptoEngine): BoxBatch {
  return new EngineBoxes(crypto);
}

/** The addon's batch secretbox, or null when this addon build lacks it. */
export function nativeBoxes(io: TunIo | null): BoxBatch | null {
  if (!io || typeof io.boxSeal !== 'function' || typeof io.boxOpen !== 'function') return null;
  return new NativeBoxes(io as Required<Pick<TunIo, 'boxSeal' | 'boxOpen'>>);
}

/** WEAVE_SLEEVE_CRYPTO: unset/'auto', 'native' or 'engine'. */
export function boxModeFromEnv(v: string | undefined): 'auto' | BoxKind {
  if (v === undefined || v === '' || v === 'auto') return 'auto';
  if (v === 'native' || v === 'engine') return v;
  throw new UsageError(`WEAVE_SLEEVE_CRYPTO must be auto, native or engine, not ${JSON.stringify(v)}`);
}

/**
 * What 'auto' picks: the addon's batches when they load, the engine is sodium (tweetnacl is only
 * chosen to run without native code) and the CPU has AVX2 or AVX-512 (the addon's portable build is
 * no faster than libsodium's, so there the call per packet is the only saving).
 */
export function resolveBoxKind(mode: 'auto' | BoxKind, crypto: CryptoEngine, io: TunIo | null): BoxKind {
  const native = nativeBoxes(io) !== null;
  if (mode === 'native' && !native) throw new WeaveError('ENOADDON', 'WEAVE_SLEEVE_CRYPTO=native needs the native data-path addon with boxSeal/boxOpen (node scripts/build-native.js)');
  if (mode !== 'auto') return mode;
  return native && crypto.name === 'sodium' && io?.boxImpl?.() !== 'generic' ? 'native' : 'engine';
}

/** The BoxBatch of a kind resolveBoxKind chose (the worker threads build their own from it). */
export function makeBoxes(kind: BoxKind, crypto: CryptoEngine | null, io: TunIo | null, log: Logger): BoxBatch {
  if (kind === 'engine') {
    if (!crypto) throw new WeaveError('EINVAL', 'engine boxes need a crypto engine');
    return engineBoxes(crypto);
  }
  const b = nativeBoxes(io ?? loadTunIo(log));
  if (!b) throw new WeaveError('ENOADDON', 'the native secretbox batches are not in this addon build');
  return b;
}
