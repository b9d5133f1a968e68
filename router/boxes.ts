// Sealing and opening the sleeve's datagrams a batch at a time. The packet loops (router/datapath.ts)
// collect a batch's boxes with their nonces and keys, then make one call:
//   native  the addon's XSalsa20-Poly1305 (native/secretbox.c): one N-API call per batch, SIMD
//           keystream and Poly1305; the default when the addon loads and the engine is sodium
//   engine  the CryptoEngine (sodium-native or tweetnacl) per box: what runs without the addon, and
//           the baseline bench/sleeve compares against
// Both put the same bytes on the wire (test/unit/secretbox-native.test.ts).
import { KEY_BYTES as BOX_KEY, NONCE_BYTES as BOX_NONCE, SECRETBOX_OVERHEAD as BOX_TAG, type CryptoEngine } from '../mesh/crypto';
import { WeaveError } from '../mesh/errors';
import type { Logger } from '../mesh/log';
import { loadTunIo, type TunIo } from './native';

export type BoxKind = 'native' | 'engine';

export interface BoxBatch {
  readonly kind: BoxKind;
  /**
   * Box i spans buf[offs[i], offs[i] + lens[i]): its message (lens[i] - 16 bytes) sits at offs[i] + 16
   * and is sealed in place, the tag written in front. Nonce i and key i: nonces[24i..], keys[32i..].
   */
  seal(buf: Buffer, offs: Int32Array, lens: Int32Array, nonces: Buffer, keys: Buffer, n: number): void;
  /**
   * Opens box i (src[srcOffs[i], + lens[i])) into dst[dstOffs[i], + lens[i] - 16); ok[i] = 1 when
   * authentic. Returns how many were.
   */
  open(src: Buffer, srcOffs: Int32Array, lens: Int32Array, dst: Buffer, dstOffs: Int32Array, nonces: Buffer, keys: Buffer, ok: Uint8Array, n: number): number;
}

class NativeBoxes implements BoxBatch {
  readonly kind = 'native' as const;
  constructor(private readonly io: Required<Pick<TunIo, 'boxSeal' | 'boxOpen'>>) {}
  seal(buf: Buffer, offs: Int32Array, lens: Int32Array, nonces: Buffer, keys: Buffer, n: number): void {
    this.io.boxSeal(buf, offs, lens, nonces, keys, n);
  }
  open(src: Buffer, srcOffs: Int32Array, lens: Int32Array, dst: Buffer, dstOffs: Int32Array, nonces: Buffer, keys: Buffer, ok: Uint8Array, n: number): number {
    return this.io.boxOpen(src, srcOffs, lens, dst, dstOffs, nonces, keys, ok, n);
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

  seal(buf: Buffer, offs: Int32Array, lens: Int32Array, nonces: Buffer, keys: Buffer, n: number): void {
    const v = this.views;
    for (let i = 0; i < n; i++) {
      const off = offs[i];
      const len = lens[i] - BOX_TAG;
      if (len < 0) throw new WeaveError('ECRYPTO', 'boxSeal: a box is shorter than its tag', { box: i, len: lens[i] });
      const m = this.scratch(len);
      m.set(v.get(buf, off + BOX_TAG, len));
      this.crypto.secretboxSeal(v.get(buf, off, len + BOX_TAG), m, v.get(nonces, i * BOX_NONCE, BOX_NONCE), v.get(keys, i * BOX_KEY, BOX_KEY));
    }
  }

  open(src: Buffer, srcOffs: Int32Array, lens: Int32Array, dst: Buffer, dstOffs: Int32Array, nonces: Buffer, keys: Buffer, ok: Uint8Array, n: number): number {
    const v = this.views;
    let good = 0;
    for (let i = 0; i < n; i++) {
      const len = lens[i];
      if (len < BOX_TAG) {
        ok[i] = 0;
        continue;
      }
      const m = this.scratch(len - BOX_TAG);
      if (this.crypto.secretboxOpen(m, v.get(src, srcOffs[i], len), v.get(nonces, i * BOX_NONCE, BOX_NONCE), v.get(keys, i * BOX_KEY, BOX_KEY))) {
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
  throw new WeaveError('EINVAL', `WEAVE_SLEEVE_CRYPTO must be auto, native or engine, not ${JSON.stringify(v)}`);
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
export function makeBoxes(kind: BoxKind, crypto: CryptoEngine, io: TunIo | null, log: Logger): BoxBatch {
  if (kind === 'engine') return engineBoxes(crypto);
  const b = nativeBoxes(io ?? loadTunIo(log));
  if (!b) throw new WeaveError('ENOADDON', 'the native secretbox batches are not in this addon build');
  return b;
}
