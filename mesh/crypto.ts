// One crypto interface, two engines that put identical bytes on the wire: libsodium through
// sodium-native (default, native speed) and tweetnacl (pure JS, used when the native addon cannot
// load on this machine). The sleeve data path seals and opens every packet through this interface,
// so seal/open write into caller-owned buffers and the sodium engine allocates nothing per call.
import * as nodeCrypto from 'crypto';
import type * as Nacl from 'tweetnacl';
import { ProtocolError, WeaveError, errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';

export const SECRETBOX_OVERHEAD = 16;
export const NONCE_BYTES = 24;
export const KEY_BYTES = 32;
export const X25519_BYTES = 32;

export type CryptoEngineName = 'sodium' | 'tweetnacl';

export interface CryptoEngine {
  readonly name: CryptoEngineName;
  randomBytes(n: number): Buffer;
  x25519Keypair(): { publicKey: Buffer; secretKey: Buffer };
  /** X25519 agreement. Throws ProtocolError when the result is all zero (peer sent a low-order point). */
  x25519(secretKey: Uint8Array, peerPublic: Uint8Array): Buffer;
  sha256(...parts: Uint8Array[]): Buffer;
  /**
   * XSalsa20-Poly1305 (MAC first, like crypto_secretbox_easy). out.length must be msg.length + 16;
   * msg may be out's own bytes from 16 on (sealed in place).
   */
  secretboxSeal(out: Uint8Array, msg: Uint8Array, nonce: Uint8Array, key: Uint8Array): void;
  /** Opens box into out (out.length must be box.length - 16). False when forged, corrupt or too short. */
  secretboxOpen(out: Uint8Array, box: Uint8Array, nonce: Uint8Array, key: Uint8Array): boolean;
}

// sodium-native ships no type declarations; this is the subset we call.
interface SodiumNative {
  randombytes_buf(b: Uint8Array): void;
  crypto_scalarmult_base(q: Uint8Array, n: Uint8Array): void;
  crypto_scalarmult(q: Uint8Array, n: Uint8Array, p: Uint8Array): void;
  crypto_hash_sha256(out: Uint8Array, input: Uint8Array): void;
  crypto_hash_sha256_init(state: Uint8Array): void;
  crypto_hash_sha256_update(state: Uint8Array, input: Uint8Array): void;
  crypto_hash_sha256_final(state: Uint8Array, out: Uint8Array): void;
  crypto_hash_sha256_STATEBYTES: number;
  crypto_secretbox_easy(c: Uint8Array, m: Uint8Array, n: Uint8Array, k: Uint8Array): void;
  crypto_secretbox_open_easy(m: Uint8Array, c: Uint8Array, n: Uint8Array, k: Uint8Array): boolean;
}

function isAllZero(b: Uint8Array): boolean {
  let acc = 0;
  for (let i = 0; i < b.length; i++) acc |= b[i];
  return acc === 0;
}

// Misuse by our own code (wrong sizes) is a bug, not a peer's fault: a plain WeaveError, never EPROTO.
function checkSealArgs(out: Uint8Array, msg: Uint8Array, nonce: Uint8Array, key: Uint8Array): void {
  if (nonce.length !== NONCE_BYTES || key.length !== KEY_BYTES || out.length !== msg.length + SECRETBOX_OVERHEAD) {
    throw new WeaveError('ECRYPTO', 'secretboxSeal: bad buffer sizes', { out: out.length, msg: msg.length, nonce: nonce.length, key: key.length });
  }
}

function checkOpenArgs(out: Uint8Array, box: Uint8Array, nonce: Uint8Array, key: Uint8Array): void {
  if (nonce.length !== NONCE_BYTES || key.length !== KEY_BYTES) {
    throw new WeaveError('ECRYPTO', 'secretboxOpen: bad nonce or key size', { nonce: nonce.length, key: key.length });
  }
  if (box.length >= SECRETBOX_OVERHEAD && out.length !== box.length - SECRETBOX_OVERHEAD) {
    throw new WeaveError('ECRYPTO', 'secretboxOpen: out must be box.length - 16', { out: out.length, box: box.length });
  }
}

function checkX25519Args(sk: Uint8Array, pk: Uint8Array): void {
  if (sk.length !== X25519_BYTES || pk.length !== X25519_BYTES) {
    throw new WeaveError('ECRYPTO', 'x25519: keys must be 32 bytes', { secretKey: sk.length, publicKey: pk.length });
  }
}

const lowOrder = (): ProtocolError => new ProtocolError('X25519 agreement gave an all-zero secret: the peer sent a low-order public key');

class SodiumEngine implements CryptoEngine {
  readonly name = 'sodium' as const;
  private readonly shaState: Buffer;
  constructor(private readonly s: SodiumNative) {
    this.shaState = Buffer.alloc(s.crypto_hash_sha256_STATEBYTES);
  }
  randomBytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    this.s.randombytes_buf(b);
    return b;
  }
  x25519Keypair(): { publicKey: Buffer; secretKey: Buffer } {
    const secretKey = this.randomBytes(X25519_BYTES);
    const publicKey = Buffer.alloc(X25519_BYTES);
    this.s.crypto_scalarmult_base(publicKey, secretKey);
    return { publicKey, secretKey };
  }
  x25519(secretKey: Uint8Array, peerPublic: Uint8Array): Buffer {
    checkX25519Args(secretKey, peerPublic);
    const out = Buffer.alloc(X25519_BYTES);
    try {
      // libsodium refuses (and sodium-native throws) exactly when the result is all zero.
      this.s.crypto_scalarmult(out, secretKey, peerPublic);
    } catch {
      throw lowOrder();
    }
    if (isAllZero(out)) throw lowOrder();
    return out;
  }
  sha256(...parts: Uint8Array[]): Buffer {
    const out = Buffer.alloc(32);
    if (parts.length === 1) {
      this.s.crypto_hash_sha256(out, parts[0]);
      return out;
    }
    this.s.crypto_hash_sha256_init(this.shaState);
    for (const p of parts) this.s.crypto_hash_sha256_update(this.shaState, p);
    this.s.crypto_hash_sha256_final(this.shaState, out);
    return out;
  }
  secretboxSeal(out: Uint8Array, msg: Uint8Array, nonce: Uint8Array, key: Uint8Array): void {
    checkSealArgs(out, msg, nonce, key);
    this.s.crypto_secretbox_easy(out, msg, nonce, key);
  }
  secretboxOpen(out: Uint8Array, box: Uint8Array, nonce: Uint8Array, key: Uint8Array): boolean {
    checkOpenArgs(out, box, nonce, key);
    if (box.length < SECRETBOX_OVERHEAD) return false;
    return this.s.crypto_secretbox_open_easy(out, box, nonce, key);
  }
}

class TweetnaclEngine implements CryptoEngine {
  readonly name = 'tweetnacl' as const;
  // loaded with the first engine (not with this module: the sleeve's workers import it for constants)
  private readonly nacl: typeof Nacl = require('tweetnacl');
  randomBytes(n: number): Buffer {
    return nodeCrypto.randomBytes(n);
  }
  x25519Keypair(): { publicKey: Buffer; secretKey: Buffer } {
    const secretKey = this.randomBytes(X25519_BYTES);
    const publicKey = Buffer.from(this.nacl.scalarMult.base(secretKey));
    return { publicKey, secretKey };
  }
  x25519(secretKey: Uint8Array, peerPublic: Uint8Array): Buffer {
    checkX25519Args(secretKey, peerPublic);
    const out = Buffer.from(this.nacl.scalarMult(secretKey, peerPublic));
    if (isAllZero(out)) throw lowOrder();
    return out;
  }
  sha256(...parts: Uint8Array[]): Buffer {
    // tweetnacl has only SHA-512; node's OpenSSL SHA-256 is always present and byte-identical.
    const h = nodeCrypto.createHash('sha256');
    for (const p of parts) h.update(p);
    return h.digest();
  }
  secretboxSeal(out: Uint8Array, msg: Uint8Array, nonce: Uint8Array, key: Uint8Array): void {
    checkSealArgs(out, msg, nonce, key);
    out.set(this.nacl.secretbox(msg, nonce, key));
  }
  secretboxOpen(out: Uint8Array, box: Uint8Array, nonce: Uint8Array, key: Uint8Array): boolean {
    checkOpenArgs(out, box, nonce, key);
    if (box.length < SECRETBOX_OVERHEAD) return false;
    const r = this.nacl.secretbox.open(box, nonce, key);
    if (!r) return false;
    out.set(r);
    return true;
  }
}

export function sodiumEngine(mod: unknown): CryptoEngine {
  const s = mod as SodiumNative;
  if (!s || typeof s.crypto_secretbox_easy !== 'function' || typeof s.crypto_scalarmult !== 'function') {
    throw new WeaveError('ECRYPTO', 'sodium-native module lacks the functions we need');
  }
  return new SodiumEngine(s);
}

export function tweetnaclEngine(): CryptoEngine {
  return new TweetnaclEngine();
}

/**
 * Picks the crypto engine: sodium-native unless prefer = 'tweetnacl'. When the native addon cannot
 * load (no prebuild for this platform, broken install) falls back to tweetnacl and says so with a
 * warn line, because the data path is several times slower without it.
 * requireNative is injectable so tests can simulate a missing addon.
 */
export function loadCrypto(
  prefer: CryptoEngineName = 'sodium',
  log?: Logger,
  requireNative: () => unknown = () => require('sodium-native'),
): CryptoEngine {
  if (prefer === 'tweetnacl') return tweetnaclEngine();
  try {
    return sodiumEngine(requireNative());
  } catch (e) {
    log?.warn({ err: errMsg(e), engine: 'tweetnacl' }, 'sodium-native could not load; falling back to tweetnacl (pure JS, slower)');
    return tweetnaclEngine();
  }
}
