// ESP key derivation: both ends agree, directions differ, new nonces rekey, SPIs avoid 0..255.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import fc from 'fast-check';
import {
  deriveEspKeys, deriveSa, spiFromRaw, newEspNonce, keyHex, spiHex, KeyError,
  ESP_KEY_BYTES, ESP_SALT_BYTES, ESP_NONCE_BYTES, SPI_MIN,
} from '../../ipsec/keys';

const bytes = (n: number) => fc.uint8Array({ minLength: n, maxLength: n });

test('both ends derive the same SA per direction; the two directions differ', () => {
  fc.assert(fc.property(bytes(32), bytes(16), bytes(16), (k, na, nb) => {
    fc.pre(Buffer.compare(Buffer.from(na), Buffer.from(nb)) !== 0);
    const a = deriveEspKeys(k, na, nb);
    const b = deriveEspKeys(k, nb, na);
    assert.equal(a.out.spi, b.in.spi);
    assert.deepEqual(a.out.keyBlob, b.in.keyBlob);
    assert.equal(a.in.spi, b.out.spi);
    assert.deepEqual(a.in.keyBlob, b.out.keyBlob);
    assert.notEqual(a.out.spi, a.in.spi);
    assert.notDeepEqual(a.out.keyBlob, a.in.keyBlob);
    for (const sa of [a.out, a.in]) {
      assert.equal(sa.keyBlob.length, ESP_KEY_BYTES + ESP_SALT_BYTES);
      assert.ok(sa.spi >= SPI_MIN && sa.spi <= 0xffffffff && Number.isInteger(sa.spi), `spi ${sa.spi}`);
    }
  }), { numRuns: 300 });
});

test('a reconnect (either nonce new) gives new keys and SPIs; another session key too', () => {
  const k = randomBytes(32);
  const na = newEspNonce();
  const nb = newEspNonce();
  assert.equal(na.length, ESP_NONCE_BYTES);
  const first = deriveEspKeys(k, na, nb);
  for (const again of [deriveEspKeys(k, newEspNonce(), nb), deriveEspKeys(k, na, newEspNonce()), deriveEspKeys(randomBytes(32), na, nb)]) {
    for (const d of ['out', 'in'] as const) {
      assert.notDeepEqual(again[d].keyBlob, first[d].keyBlob);
      assert.notEqual(again[d].spi, first[d].spi);
    }
  }
  // deterministic: same inputs, same answer
  assert.deepEqual(deriveEspKeys(k, na, nb), first);
});

test('matches an independent HKDF-SHA256 (RFC 5869) computation, so other implementations can interoperate', () => {
  const k = Buffer.alloc(32, 7);
  const na = Buffer.alloc(16, 1);
  const nb = Buffer.alloc(16, 2);
  const salt = Buffer.concat([na, nb]);
  const prk = createHmac('sha256', salt).update(k).digest();
  const info = Buffer.from('weave.ts esp v1 rfc4106(gcm(aes))-128', 'ascii');
  const okm = createHmac('sha256', prk).update(Buffer.concat([info, Buffer.from([1])])).digest();
  const sa = deriveSa(k, na, nb);
  assert.deepEqual(sa.keyBlob, okm.subarray(0, 20));
  assert.equal(sa.spi, SPI_MIN + (okm.readUInt32BE(20) % (0x1_0000_0000 - SPI_MIN)));
  assert.equal(keyHex(sa), '0x' + okm.subarray(0, 20).toString('hex'));
});

test('SPI folding never yields a reserved value, even for raw values 0..255 and 2^32-1', () => {
  for (const raw of [0, 1, 255, 256, 0xfffffeff, 0xffffff00, 0xffffffff]) {
    const spi = spiFromRaw(raw);
    assert.ok(spi >= SPI_MIN && spi <= 0xffffffff, `raw ${raw} -> ${spi}`);
  }
  assert.notEqual(spiFromRaw(0), spiFromRaw(1));
  let min = Infinity;
  for (let i = 0; i < 2000; i++) min = Math.min(min, deriveSa(randomBytes(32), randomBytes(16), randomBytes(16)).spi);
  assert.ok(min >= SPI_MIN);
  assert.equal(spiHex(0x100), '0x00000100');
  assert.equal(spiHex(0xdeadbeef), '0xdeadbeef');
});

test('bad inputs are refused with KeyError: lengths, and a peer echoing our nonce', () => {
  const k = randomBytes(32);
  const n = newEspNonce();
  assert.throws(() => deriveEspKeys(k, n, Buffer.from(n)), (e: unknown) => e instanceof KeyError && /own ESP nonce/.test(e.message));
  assert.throws(() => deriveEspKeys(randomBytes(31), n, newEspNonce()), KeyError);
  assert.throws(() => deriveEspKeys(k, randomBytes(15), newEspNonce()), KeyError);
  assert.throws(() => deriveEspKeys(k, n, randomBytes(17)), KeyError);
  assert.throws(() => deriveEspKeys(k, n, 'x'.repeat(16) as unknown as Buffer), KeyError);
});
