// ESP key material for one fastdp connection, derived (never sent) from the connection's session key.
//
// Both routers already share a 32-byte session key from the encrypted TCP handshake. For kernel ESP each
// adds a fresh 16-byte random nonce, sent over that encrypted control channel, and both run the same
// HKDF-SHA256 per direction. The salt is nonce(src) ‖ nonce(dst): the two directions get different keys and
// SPIs (AES-GCM must never see one key used by two senders: each SA counts its own IVs from 1), and a
// reconnect — new nonces on both sides — yields all-new keys and SPIs without any rekey protocol.
import { hkdfSync, randomBytes } from 'crypto';
import { WeaveError } from '../lib/errors';

export const SESSION_KEY_BYTES = 32;
export const ESP_NONCE_BYTES = 16;
/** AES-128 key for rfc4106(gcm(aes)). */
export const ESP_KEY_BYTES = 16;
/** rfc4106 implicit nonce part, appended to the key in the kernel's key blob. */
export const ESP_SALT_BYTES = 4;
export const ESP_AEAD_ALG = 'rfc4106(gcm(aes))';
export const ESP_ICV_BITS = 128;
/** SPIs 0..255 are reserved by IANA (RFC 4303 §2.1). */
export const SPI_MIN = 256;

// Bumping the label changes every derived key: both ends must run the same version (the mesh features
// map tells them apart before any SA is installed).
const INFO = Buffer.from('weave.ts esp v1 rfc4106(gcm(aes))-128', 'ascii');
const OKM_BYTES = ESP_KEY_BYTES + ESP_SALT_BYTES + 4;

/** One direction's security association parameters. */
export interface EspSa {
  spi: number;
  /** key ‖ salt (20 bytes), exactly the blob `ip xfrm state ... aead rfc4106(gcm(aes)) 0x<hex> 128` takes */
  keyBlob: Buffer;
}

/** Seen from one router: `out` protects what it sends to the peer, `in` what it receives from it. */
export interface EspKeys {
  out: EspSa;
  in: EspSa;
}

export class KeyError extends WeaveError {
  constructor(message: string, context: Record<string, unknown> = {}) {
    super('EKEY', message, context);
    this.name = 'KeyError';
  }
}

/** A fresh nonce for this side of a connection: send it to the peer over the encrypted channel. */
export function newEspNonce(): Buffer {
  return randomBytes(ESP_NONCE_BYTES);
}

function checkLen(what: string, b: Uint8Array, n: number): void {
  if (!(b instanceof Uint8Array) || b.length !== n) {
    throw new KeyError(`${what} must be ${n} bytes`, { what, length: b instanceof Uint8Array ? b.length : typeof b });
  }
}

/** Folds 32 derived bits into [256, 2^32): uniform enough (bias < 2^-24) and never reserved. */
export function spiFromRaw(raw: number): number {
  return SPI_MIN + ((raw >>> 0) % (0x1_0000_0000 - SPI_MIN));
}

/** The SA for traffic from the side that chose srcNonce to the side that chose dstNonce. */
export function deriveSa(sessionKey: Uint8Array, srcNonce: Uint8Array, dstNonce: Uint8Array): EspSa {
  checkLen('session key', sessionKey, SESSION_KEY_BYTES);
  checkLen('source nonce', srcNonce, ESP_NONCE_BYTES);
  checkLen('destination nonce', dstNonce, ESP_NONCE_BYTES);
  const salt = Buffer.concat([srcNonce, dstNonce]);
  const okm = Buffer.from(hkdfSync('sha256', sessionKey, salt, INFO, OKM_BYTES));
  const spi = spiFromRaw(okm.readUInt32BE(ESP_KEY_BYTES + ESP_SALT_BYTES));
  return { spi, keyBlob: okm.subarray(0, ESP_KEY_BYTES + ESP_SALT_BYTES) };
}

/**
 * Both directions' SAs as seen from this router. The peer calls it with the nonces swapped and gets
 * out/in swapped: its `in` is our `out`.
 */
export function deriveEspKeys(sessionKey: Uint8Array, localNonce: Uint8Array, remoteNonce: Uint8Array): EspKeys {
  checkLen('local nonce', localNonce, ESP_NONCE_BYTES);
  checkLen('remote nonce', remoteNonce, ESP_NONCE_BYTES);
  // Equal nonces would give both directions one key and one IV sequence: GCM's catastrophic case.
  // Random 16-byte nonces never collide by chance, so this is a broken or hostile peer echoing ours.
  if (Buffer.compare(Buffer.from(localNonce), Buffer.from(remoteNonce)) === 0) {
    throw new KeyError('peer sent our own ESP nonce back: refusing to derive one key for both directions');
  }
  const out = deriveSa(sessionKey, localNonce, remoteNonce);
  const inn = deriveSa(sessionKey, remoteNonce, localNonce);
  if (out.spi === inn.spi) {
    // 2^-32; one xfrm state per (dst, spi) would still work, but a distinct pair keeps `ip xfrm` readable.
    throw new KeyError('derived the same SPI for both directions; reconnect to draw new nonces', { spi: out.spi });
  }
  return { out, in: inn };
}

/** `0x`-prefixed hex as ip-xfrm takes key blobs. */
export function keyHex(sa: EspSa): string {
  return '0x' + sa.keyBlob.toString('hex');
}

export function spiHex(spi: number): string {
  return '0x' + spi.toString(16).padStart(8, '0');
}
