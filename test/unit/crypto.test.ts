import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadCrypto, tweetnaclEngine, SECRETBOX_OVERHEAD, NONCE_BYTES, type CryptoEngine } from '../../mesh/crypto';
import { MemoryLogger } from '../../lib/log';
import { ProtocolError, WeaveError } from '../../lib/errors';

const sodium = loadCrypto('sodium');
const tweet = loadCrypto('tweetnacl');
const engines: CryptoEngine[] = [sodium, tweet];

function seal(e: CryptoEngine, msg: Uint8Array, nonce: Uint8Array, key: Uint8Array): Buffer {
  const out = Buffer.alloc(msg.length + SECRETBOX_OVERHEAD);
  e.secretboxSeal(out, msg, nonce, key);
  return out;
}

function open(e: CryptoEngine, box: Uint8Array, nonce: Uint8Array, key: Uint8Array): Buffer | null {
  const out = Buffer.alloc(Math.max(0, box.length - SECRETBOX_OVERHEAD));
  return e.secretboxOpen(out, box, nonce, key) ? out : null;
}

test('loadCrypto picks sodium by default and tweetnacl on request', () => {
  assert.equal(loadCrypto().name, 'sodium');
  assert.equal(sodium.name, 'sodium');
  assert.equal(tweet.name, 'tweetnacl');
});

test('loadCrypto falls back to tweetnacl with a warn line when the native module cannot load', () => {
  const log = new MemoryLogger();
  const e = loadCrypto('sodium', log, () => {
    throw new Error('Cannot find module sodium-native');
  });
  assert.equal(e.name, 'tweetnacl');
  const rec = log.find((r) => r.level === 'warn');
  assert.ok(rec, 'a warn record');
  assert.match(String(rec.msg), /falling back to tweetnacl/);
  assert.match(String(rec.err), /Cannot find module/);
  // a module without the functions we need is also a failure to load
  assert.equal(loadCrypto('sodium', log, () => ({})).name, 'tweetnacl');
});

test('both engines produce identical secretbox ciphertext and open each other', () => {
  const key = sodium.randomBytes(32);
  for (const size of [0, 1, 15, 16, 17, 100, 1500, 65536]) {
    const msg = tweet.randomBytes(size);
    const nonce = sodium.randomBytes(NONCE_BYTES);
    const a = seal(sodium, msg, nonce, key);
    const b = seal(tweet, msg, nonce, key);
    assert.equal(a.length, size + 16);
    assert.ok(a.equals(b), `identical ciphertext at size ${size}`);
    assert.ok(open(tweet, a, nonce, key)?.equals(msg), `tweetnacl opens sodium at ${size}`);
    assert.ok(open(sodium, b, nonce, key)?.equals(msg), `sodium opens tweetnacl at ${size}`);
    // in place, the message where the ciphertext goes (mesh/wire.ts FrameSealer seals frames so)
    for (const e of engines) {
      const inPlace = Buffer.alloc(size + 16);
      msg.copy(inPlace, 16);
      e.secretboxSeal(inPlace, inPlace.subarray(16), nonce, key);
      assert.ok(inPlace.equals(a), `${e.name} seals in place at ${size}`);
    }
  }
});

test('a flipped bit, a wrong nonce or a wrong key fails to open on both engines', () => {
  const key = sodium.randomBytes(32);
  const nonce = sodium.randomBytes(NONCE_BYTES);
  const msg = Buffer.from('the quick brown fox jumps over the lazy dog');
  const box = seal(sodium, msg, nonce, key);
  for (const e of engines) {
    for (let bit = 0; bit < box.length * 8; bit += 7) {
      const bad = Buffer.from(box);
      bad[bit >> 3] ^= 1 << (bit & 7);
      assert.equal(open(e, bad, nonce, key), null, `${e.name}: bit ${bit}`);
    }
    const n2 = Buffer.from(nonce);
    n2[23] ^= 1;
    assert.equal(open(e, box, n2, key), null, `${e.name}: nonce`);
    const k2 = Buffer.from(key);
    k2[0] ^= 0x80;
    assert.equal(open(e, box, nonce, k2), null, `${e.name}: key`);
    assert.equal(open(e, box.subarray(0, 10), nonce, key), null, `${e.name}: shorter than the MAC`);
    assert.ok(open(e, box, nonce, key)?.equals(msg), `${e.name}: intact box opens`);
  }
});

test('X25519 agreement is identical across engines and public keys match the base-point product', () => {
  const basePoint = Buffer.alloc(32);
  basePoint[0] = 9;
  for (let i = 0; i < 5; i++) {
    const a = sodium.x25519Keypair();
    const b = tweet.x25519Keypair();
    assert.ok(tweet.x25519(a.secretKey, basePoint).equals(a.publicKey), 'sodium pubkey = tweetnacl scalarmult(sk, 9)');
    assert.ok(sodium.x25519(b.secretKey, basePoint).equals(b.publicKey), 'tweetnacl pubkey = sodium scalarmult(sk, 9)');
    const s1 = sodium.x25519(a.secretKey, b.publicKey);
    const s2 = tweet.x25519(a.secretKey, b.publicKey);
    const s3 = sodium.x25519(b.secretKey, a.publicKey);
    const s4 = tweet.x25519(b.secretKey, a.publicKey);
    assert.equal(s1.length, 32);
    for (const s of [s2, s3, s4]) assert.ok(s.equals(s1));
  }
});

test('X25519 with a low-order public key throws ProtocolError on both engines', () => {
  const { secretKey } = sodium.x25519Keypair();
  for (const e of engines) {
    assert.throws(() => e.x25519(secretKey, Buffer.alloc(32)), (err: unknown) => err instanceof ProtocolError && /low-order/.test(err.message));
    const one = Buffer.alloc(32);
    one[0] = 1; // the identity point: also yields zero
    assert.throws(() => e.x25519(secretKey, one), ProtocolError);
  }
});

test('sha256 matches the FIPS vector and hashes parts as their concatenation', () => {
  const abc = 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad';
  for (const e of engines) {
    assert.equal(e.sha256(Buffer.from('abc')).toString('hex'), abc);
    assert.equal(e.sha256(Buffer.from('a'), Buffer.from(''), Buffer.from('bc')).toString('hex'), abc);
  }
  const x = sodium.randomBytes(1000);
  const y = sodium.randomBytes(33);
  assert.ok(sodium.sha256(x, y).equals(tweet.sha256(Buffer.concat([x, y]))));
});

test('misuse (wrong buffer sizes) is a WeaveError ECRYPTO, not a silent truncation', () => {
  const key = Buffer.alloc(32);
  const nonce = Buffer.alloc(24);
  for (const e of engines) {
    assert.throws(() => e.secretboxSeal(Buffer.alloc(10), Buffer.alloc(10), nonce, key), (x: unknown) => x instanceof WeaveError && x.code === 'ECRYPTO');
    assert.throws(() => e.secretboxSeal(Buffer.alloc(26), Buffer.alloc(10), Buffer.alloc(12), key), (x: unknown) => x instanceof WeaveError && x.code === 'ECRYPTO');
    assert.throws(() => e.secretboxOpen(Buffer.alloc(3), Buffer.alloc(26), nonce, key), (x: unknown) => x instanceof WeaveError && x.code === 'ECRYPTO');
    assert.throws(() => e.x25519(Buffer.alloc(31), Buffer.alloc(32)), (x: unknown) => x instanceof WeaveError && x.code === 'ECRYPTO');
  }
});

test('randomBytes returns fresh bytes of the requested length', () => {
  for (const e of engines) {
    const a = e.randomBytes(32);
    const b = e.randomBytes(32);
    assert.equal(a.length, 32);
    assert.ok(!a.equals(b));
  }
  assert.equal(tweetnaclEngine().randomBytes(0).length, 0);
});

test('sodium seal/open into caller buffers work on subarrays (the sleeve reuses one big buffer)', () => {
  const key = sodium.randomBytes(32);
  const nonce = sodium.randomBytes(24);
  const big = Buffer.alloc(4096);
  const msg = Buffer.from('payload in the middle of a buffer');
  big.set(msg, 100);
  const out = Buffer.alloc(4096);
  sodium.secretboxSeal(out.subarray(200, 200 + msg.length + 16), big.subarray(100, 100 + msg.length), nonce, key);
  const back = Buffer.alloc(msg.length);
  assert.ok(tweet.secretboxOpen(back, out.subarray(200, 200 + msg.length + 16), nonce, key));
  assert.ok(back.equals(msg));
});
