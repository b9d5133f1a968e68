// The addon's secretbox batches (native/secretbox.c) against libsodium through sodium-native: the
// same bytes for every length and every SIMD set this CPU has, boxes of other engines open, forgeries
// are refused, and bad arguments are errors that say what is wrong.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { loadCrypto } from '../../mesh/crypto';
import { silentLogger } from '../../lib/log';
import { BoxJobs, boxModeFromEnv, engineBoxes, nativeBoxes, resolveBoxKind } from '../../router/boxes';
import { loadTunIo } from '../../router/native';

interface Sodium {
  crypto_secretbox_easy(c: Uint8Array, m: Uint8Array, n: Uint8Array, k: Uint8Array): void;
  crypto_onetimeauth(out: Uint8Array, m: Uint8Array, k: Uint8Array): void;
  randombytes_buf(b: Uint8Array): void;
}
const sodium = createRequire(__filename)('sodium-native') as Sodium;
const io = loadTunIo(silentLogger());

function rand(n: number): Buffer {
  const b = Buffer.alloc(n);
  sodium.randombytes_buf(b);
  return b;
}

function ref(m: Uint8Array, nonce: Uint8Array, key: Uint8Array): Buffer {
  const c = Buffer.alloc(m.length + 16);
  sodium.crypto_secretbox_easy(c, m, nonce, key);
  return c;
}

/** Every SIMD set the addon can run here; 'generic' always. */
function impls(): string[] {
  assert.ok(io?.boxImpl && io.boxSeal && io.boxOpen && io.boxPoly1305, 'the addon (built by npm ci) must have the box calls');
  const best = io.boxImpl()!;
  const all = ['generic', 'avx2', 'avx512'].filter((n) => io.boxImpl!(n) === n);
  io.boxImpl(best);
  return all;
}

function withImpl(name: string, fn: () => void): void {
  const before = io!.boxImpl!()!;
  assert.equal(io!.boxImpl!(name), name);
  try {
    fn();
  } finally {
    io!.boxImpl!(before);
  }
}

// lengths around every block and SIMD-width edge: 16-byte Poly1305 blocks, 64-byte Salsa20 blocks,
// the 32 keystream bytes the MAC key takes, 4/8/16-block keystream calls, packet sizes
const LENGTHS = [
  ...Array.from({ length: 300 }, (_, i) => i),
  479, 480, 481, 511, 512, 513, 991, 992, 993, 1023, 1024, 1025, 1055, 1056, 1057,
  1376, 1400, 1420, 1440, 1472, 1500, 2047, 2048, 2049, 4096 - 32, 4096, 8999, 9000, 65535 - 16,
];

test('sealing: byte for byte what libsodium seals, for every length and SIMD set, in place', () => {
  for (const impl of impls()) {
    withImpl(impl, () => {
      for (const len of LENGTHS) {
        const key = rand(32);
        const nonce = rand(24);
        const m = rand(len);
        const buf = Buffer.alloc(len + 16 + 5);
        m.copy(buf, 5 + 16);
        io!.boxSeal!(buf, Int32Array.of(5), Int32Array.of(len + 16), nonce, key, 1);
        assert.ok(buf.subarray(5).equals(ref(m, nonce, key)), `${impl}: ${len} bytes differ from libsodium`);
        assert.equal(buf.subarray(0, 5).every((b) => b === 0), true, `${impl}: wrote before the box`);
      }
    });
  }
});

test('opening: libsodium boxes open to the message; a flipped bit, another nonce or key is refused and zeroed', () => {
  for (const impl of impls()) {
    withImpl(impl, () => {
      for (const len of [0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 255, 256, 1400, 1472, 9000]) {
        const key = rand(32);
        const nonce = rand(24);
        const m = rand(len);
        const box = ref(m, nonce, key);
        const out = Buffer.alloc(len + 7, 0xee);
        const ok = new Uint8Array(1);
        const open = (b: Buffer, n: Buffer, k: Buffer): number => io!.boxOpen!(b, Int32Array.of(0), Int32Array.of(b.length), out, Int32Array.of(7), n, k, ok, 1);
        assert.equal(open(box, nonce, key), 1, `${impl}: ${len}`);
        assert.equal(ok[0], 1);
        assert.ok(out.subarray(7).equals(m));
        assert.ok(out.subarray(0, 7).every((b) => b === 0xee), 'wrote before dst offset');
        for (const bit of [0, 8 * 15 + 7, 8 * 16, 8 * (box.length - 1)]) {
          if (bit >= 8 * box.length) continue;
          const bad = Buffer.from(box);
          bad[bit >> 3] ^= 1 << (bit & 7);
          out.fill(0xee);
          assert.equal(open(bad, nonce, key), 0, `${impl}: ${len} bytes, bit ${bit} flipped, accepted`);
          assert.equal(ok[0], 0);
          assert.ok(out.subarray(7).every((b) => b === 0), 'a refused box leaves zeros, not plaintext');
        }
        const n2 = Buffer.from(nonce);
        n2[23] ^= 0x80;
        assert.equal(open(box, n2, key), 0, 'another nonce');
        const k2 = Buffer.from(key);
        k2[0] ^= 1;
        assert.equal(open(box, nonce, k2), 0, 'another key');
      }
    });
  }
});

function same(impl: string, key: Buffer, m: Buffer): void {
  const want = Buffer.alloc(16);
  const got = Buffer.alloc(16);
  sodium.crypto_onetimeauth(want, m, key);
  io!.boxPoly1305!(got, m, key);
  assert.ok(got.equals(want), `${impl}: key ${key.toString('hex').slice(0, 8)}.. len ${m.length}: ${got.toString('hex')} != ${want.toString('hex')}`);
}

test('Poly1305: the tags libsodium computes, with keys and messages that push the accumulator to its limits', () => {
  // RFC 8439 section 2.5.2
  const rfcKey = Buffer.from('85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b', 'hex');
  const rfcTag = Buffer.alloc(16);
  for (const impl of impls()) {
    withImpl(impl, () => {
      io!.boxPoly1305!(rfcTag, Buffer.from('Cryptographic Forum Research Group'), rfcKey);
      assert.equal(rfcTag.toString('hex'), 'a8061dc1305136c6c22b8baf0c0127a9', impl);
      const keys = [Buffer.alloc(32, 0xff), Buffer.concat([Buffer.alloc(16, 0xff), Buffer.alloc(16, 0)]), Buffer.alloc(32, 0), rand(32), rand(32)];
      for (const key of keys) {
        for (const len of [0, 1, 15, 16, 17, 63, 64, 127, 128, 129, 143, 144, 255, 256, 1000, 1400, 4099]) {
          for (const m of [Buffer.alloc(len, 0xff), rand(len), Buffer.alloc(len, 0)]) same(impl, key, m);
        }
      }
      // the inputs of RFC 8439 A.3 #5-#9: final sums at or just above 2^130-5, carries through every limb
      const r = (v: number, s = 0): Buffer => Buffer.concat([Buffer.from([v]), Buffer.alloc(15), Buffer.alloc(16, s)]);
      const hex = (h: string): Buffer => Buffer.from(h.replace(/ /g, ''), 'hex');
      const ff = 'ff'.repeat(16);
      same(impl, r(2), hex(ff));
      same(impl, r(2, 0xff), hex('02' + '00'.repeat(15)));
      same(impl, r(1), hex(ff + 'f0' + 'ff'.repeat(15) + '11' + '00'.repeat(15)));
      same(impl, r(1), hex(ff + 'fb' + 'fe'.repeat(15) + '01'.repeat(16)));
      same(impl, r(2), hex('fd' + 'ff'.repeat(15)));
    });
  }
});

test('one call seals and opens a batch of boxes under different keys and nonces, in a shared buffer, with every SIMD set', () => {
  for (const impl of impls()) withImpl(impl, () => batchRoundTrip(impl));
});

function batchRoundTrip(impl: string): void {
  const native = nativeBoxes(io)!;
  const engine = engineBoxes(loadCrypto('sodium', silentLogger()));
  // 41: full 16-box subkey runs, a partial one, and (8 lanes) a single box left over
  const n = 41;
  const stride = 1600;
  const lens = Int32Array.from({ length: n }, (_, i) => 16 + ((i * 97) % 1500));
  const offs = Int32Array.from({ length: n }, (_, i) => i * stride + 16);
  const nonces = rand(24 * n);
  const keys = rand(32 * n);
  const msgs = Array.from({ length: n }, (_, i) => rand(lens[i] - 16));
  const a = Buffer.alloc(n * stride);
  msgs.forEach((m, i) => m.copy(a, offs[i] + 16));
  const b = Buffer.from(a);
  const dstOffs = Int32Array.from({ length: n }, (_, i) => i * stride);
  const jobs = new BoxJobs(n);
  jobs.offs.set(offs);
  jobs.lens.set(lens);
  jobs.dstOffs.set(dstOffs);
  nonces.copy(jobs.nonces);
  keys.copy(jobs.keys);
  jobs.n = n;
  native.seal(a, jobs);
  engine.seal(b, jobs);
  assert.ok(a.equals(b), `${impl}: native and engine batches put the same bytes in the ring`);
  for (let i = 0; i < n; i++) {
    assert.ok(a.subarray(offs[i], offs[i] + lens[i]).equals(ref(msgs[i], nonces.subarray(24 * i, 24 * i + 24), keys.subarray(32 * i, 32 * i + 32))), `${impl}: box ${i}`);
  }
  // tamper with every 7th, then open everything with both
  for (let i = 0; i < n; i += 7) a[offs[i] + lens[i] - 1] ^= 0x40;
  for (const boxes of [native, engine]) {
    const dst = Buffer.alloc(n * stride);
    const ok = jobs.ok.fill(9);
    const good = boxes.open(a, dst, jobs);
    assert.equal(good, n - Math.ceil(n / 7), boxes.kind);
    for (let i = 0; i < n; i++) {
      assert.equal(ok[i], i % 7 === 0 ? 0 : 1, `${boxes.kind} box ${i}`);
      if (ok[i]) assert.ok(dst.subarray(dstOffs[i], dstOffs[i] + lens[i] - 16).equals(msgs[i]));
    }
  }
}

test('bad arguments are errors that name the call and the problem; a box shorter than a tag does not open', () => {
  const buf = Buffer.alloc(100);
  const nonce = rand(24);
  const key = rand(32);
  assert.throws(() => io!.boxSeal!(buf, Int32Array.of(90), Int32Array.of(20), nonce, key, 1), /boxSeal\(.*\): packet outside buffer/);
  assert.throws(() => io!.boxSeal!(buf, Int32Array.of(0), Int32Array.of(10), nonce, key, 1), /shorter than its 16-byte tag/);
  assert.throws(() => io!.boxSeal!(buf, Int32Array.of(0, 0), Int32Array.of(20, 20), nonce, key, 2), /nonces\/keys must hold/);
  assert.throws(() => io!.boxOpen!(buf, Int32Array.of(0), Int32Array.of(50), Buffer.alloc(10), Int32Array.of(0), nonce, key, new Uint8Array(1), 1), /message outside dst/);
  assert.throws(() => io!.boxOpen!(buf, Int32Array.of(0), Int32Array.of(50), buf, Int32Array.of(0), nonce, key, new Uint8Array(0), 1), /ok must be/);
  const ok = new Uint8Array(1).fill(9);
  assert.equal(io!.boxOpen!(buf, Int32Array.of(0), Int32Array.of(15), buf, Int32Array.of(0), nonce, key, ok, 1), 0);
  assert.equal(ok[0], 0);
  assert.equal(io!.boxImpl!('sse9'), null, 'an unknown SIMD set is refused');
  assert.throws(() => io!.boxPoly1305!(Buffer.alloc(15), buf, key), /tag must be 16 bytes/);
});

test('WEAVE_SLEEVE_CRYPTO: auto picks the addon for sodium only; a bad value or a missing addon says what to fix', () => {
  const sod = loadCrypto('sodium', silentLogger());
  const tweet = loadCrypto('tweetnacl', silentLogger());
  assert.equal(boxModeFromEnv(undefined), 'auto');
  assert.equal(boxModeFromEnv('engine'), 'engine');
  assert.throws(() => boxModeFromEnv('fast'), /WEAVE_SLEEVE_CRYPTO must be auto, native or engine, not "fast"/);
  const best = io!.boxImpl!()!;
  assert.equal(resolveBoxKind('auto', sod, io), best === 'generic' ? 'engine' : 'native');
  withImpl('generic', () => assert.equal(resolveBoxKind('auto', sod, io), 'engine', 'no SIMD: libsodium is as fast'));
  assert.equal(resolveBoxKind('auto', tweet, io), 'engine');
  assert.equal(resolveBoxKind('auto', sod, null), 'engine', 'no addon: the engine');
  assert.equal(resolveBoxKind('native', tweet, io), 'native', 'asked for by name');
  assert.throws(() => resolveBoxKind('native', sod, null), /needs the native data-path addon/);
});
