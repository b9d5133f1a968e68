import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pack } from 'msgpackr';
import { loadCrypto, type CryptoEngine } from '../../mesh/crypto';
import { ProtocolError, RefusedError, WeaveError } from '../../lib/errors';
import {
  FrameReader,
  FrameSealer,
  FrameOpener,
  HELLO_BYTES,
  MAGIC,
  decodeFeatures,
  decodeHello,
  decodeKeyExchange,
  encodeFeatures,
  encodeHello,
  encodeKeyExchange,
  frameNonce,
  negotiateVersion,
  PREAUTH_MAX_FRAME,
} from '../../mesh/wire';
import type { Features } from '../../mesh/types';
import { type Established, WireSession, type WireOptions } from '../../mesh/wire';

// ---- two WireSessions joined in memory

function features(name: string, connId = 'c0nn1d', extra: Partial<Features> = {}): Features {
  return {
    name,
    nickname: `nick-${name.slice(-2)}`,
    uid: 'u1d0000000000001',
    connId,
    overlays: ['fastdp', 'sleeve'],
    overlayParams: { sleeve: { port: 6783 }, fastdp: { vtep: '198.18.0.1' } },
    trusted: false,
    listenPort: 6783,
    ...extra,
  };
}

interface Side {
  s: WireSession;
  out: Buffer[];
  established: Established | null;
  messages: Array<[number, Buffer]>;
  error: unknown;
}

function side(crypto: CryptoEngine, o: Partial<WireOptions> & { outbound: boolean; password: Uint8Array | null; local: Features }): Side {
  const sd: Side = { s: undefined as unknown as WireSession, out: [], established: null, messages: [], error: null };
  sd.s = new WireSession(
    { crypto, ...o },
    {
      write: (b) => sd.out.push(b),
      established: (e) => {
        sd.established = e;
      },
      message: (t, p) => sd.messages.push([t, Buffer.from(p)]),
    },
  );
  return sd;
}

/** Moves bytes between a and b until both are quiet or both failed; records each side's first error. */
function pump(a: Side, b: Side): void {
  for (let guard = 0; guard < 100; guard++) {
    let moved = false;
    for (const [from, to] of [[a, b], [b, a]] as const) {
      while (from.out.length) {
        const chunk = from.out.shift() as Buffer;
        moved = true;
        if (to.error) continue;
        try {
          to.s.push(chunk);
        } catch (e) {
          to.error = e;
        }
      }
    }
    if (!moved) return;
  }
  throw new Error('pump did not settle');
}

function pair(
  crypto: CryptoEngine,
  pa: Uint8Array | null,
  pb: Uint8Array | null,
  extra: { a?: Partial<WireOptions>; b?: Partial<WireOptions> } = {},
): { a: Side; b: Side } {
  const a = side(crypto, { outbound: true, password: pa, local: features('02:00:00:00:00:0a', 'conn-a'), ...extra.a });
  const b = side(crypto, { outbound: false, password: pb, local: features('02:00:00:00:00:0b', 'conn-b'), ...extra.b });
  a.s.start();
  b.s.start();
  pump(a, b);
  return { a, b };
}

const crypto = loadCrypto('sodium');
const tweet = loadCrypto('tweetnacl');
const pw = Buffer.from('s3cret');

function isRefused(code: string) {
  return (e: unknown) => e instanceof RefusedError && e.code === code;
}

test('hello: magic + min/max; highest common version wins', () => {
  const h = encodeHello(1, 3);
  assert.equal(h.length, HELLO_BYTES);
  assert.ok(h.subarray(0, 6).equals(Buffer.from('weave\x00', 'latin1')));
  assert.deepEqual(decodeHello(h), { min: 1, max: 3 });
  assert.equal(negotiateVersion({ min: 1, max: 3 }, { min: 2, max: 5 }), 3);
  assert.equal(negotiateVersion({ min: 2, max: 2 }, { min: 1, max: 9 }), 2);
  assert.throws(
    () => negotiateVersion({ min: 1, max: 1 }, { min: 2, max: 3 }),
    (e: unknown) => e instanceof RefusedError && e.code === 'EVERSION' && /1\.\.1/.test(e.message) && /2\.\.3/.test(e.message),
  );
});

test('hello: bad magic and invalid ranges are ProtocolErrors', () => {
  assert.throws(() => decodeHello(Buffer.from('GET / HT')), (e: unknown) => e instanceof ProtocolError && /magic/.test(e.message));
  const h = encodeHello(1, 1);
  h[6] = 3;
  h[7] = 2;
  assert.throws(() => decodeHello(h), ProtocolError);
  h[6] = 0;
  assert.throws(() => decodeHello(h), ProtocolError);
  assert.throws(() => decodeHello(h.subarray(0, 7)), ProtocolError);
});

test('key exchange: flags bit0 (encrypt), bit1 (two keys) + 32-byte key; unknown flags refused', () => {
  const pk = crypto.randomBytes(32);
  const kx = encodeKeyExchange(true, pk);
  assert.equal(kx.length, 33);
  assert.deepEqual(decodeKeyExchange(kx), { encrypt: true, twoKeys: false, publicKey: pk });
  assert.equal(decodeKeyExchange(encodeKeyExchange(false, pk)).encrypt, false);
  assert.deepEqual(decodeKeyExchange(encodeKeyExchange(true, pk, true)), { encrypt: true, twoKeys: true, publicKey: pk });
  kx[0] = 0x02; // two keys without encryption
  assert.throws(() => decodeKeyExchange(kx), ProtocolError);
  kx[0] = 0x81;
  assert.throws(() => decodeKeyExchange(kx), ProtocolError);
});

test('encrypted handshake: both established, same session key, features exchanged, messages both ways in order', () => {
  const { a, b } = pair(crypto, pw, pw);
  assert.equal(a.error, null);
  assert.equal(b.error, null);
  assert.ok(a.established && b.established);
  assert.equal(a.established.encrypted, true);
  assert.equal(a.established.version, 1);
  assert.equal(a.established.sessionKey?.length, 32);
  assert.ok(a.established.sessionKey?.equals(b.established.sessionKey as Buffer));
  assert.deepEqual(a.established.remote, features('02:00:00:00:00:0b', 'conn-b'));
  assert.deepEqual(b.established.remote, features('02:00:00:00:00:0a', 'conn-a'));
  for (let i = 0; i < 50; i++) {
    a.out.push(a.s.encode(2, Buffer.from(`a->b ${i}`)));
    b.out.push(b.s.encode(3, Buffer.from(`b->a ${i}`)));
  }
  pump(a, b);
  assert.deepEqual(b.messages.map(([t, p]) => `${t}:${p}`), Array.from({ length: 50 }, (_, i) => `2:a->b ${i}`));
  assert.deepEqual(a.messages.map(([t, p]) => `${t}:${p}`), Array.from({ length: 50 }, (_, i) => `3:b->a ${i}`));
});

test('session key = SHA-256(X25519 shared ‖ password)', () => {
  const ka = crypto.x25519Keypair();
  const kb = crypto.x25519Keypair();
  const { a } = pair(crypto, pw, pw, { a: { ephemeral: ka }, b: { ephemeral: kb } });
  const expect = crypto.sha256(crypto.x25519(ka.secretKey, kb.publicKey), pw);
  assert.ok(a.established?.sessionKey?.equals(expect));
});

test('the nonce is [direction] + zeros + u64 LE counter, implicit per direction', () => {
  const n = frameNonce(1, 2 ** 32 + 5);
  assert.equal(n.length, 24);
  assert.equal(n[0], 1);
  assert.ok(n.subarray(1, 16).equals(Buffer.alloc(15)));
  assert.equal(n.readUInt32LE(16), 5);
  assert.equal(n.readUInt32LE(20), 1);
  // Open the dialler's 2nd message (counter 1 after the features frame at 0) by hand with that nonce.
  const { a } = pair(crypto, pw, pw);
  const key = a.established?.sessionKey as Buffer;
  const frame = a.s.encode(7, Buffer.from('hello'));
  assert.equal(frame.readUInt32BE(0), frame.length - 4);
  const plain = Buffer.alloc(frame.length - 4 - 16);
  assert.ok(crypto.secretboxOpen(plain, frame.subarray(4), frameNonce(0, 1), key));
  assert.equal(plain[0], 7);
  assert.equal(plain.subarray(1).toString(), 'hello');
  assert.equal(crypto.secretboxOpen(plain, frame.subarray(4), frameNonce(1, 1), key), false, 'wrong direction does not open');
});

test('sodium and tweetnacl sessions interoperate', () => {
  const a = side(crypto, { outbound: true, password: pw, local: features('02:00:00:00:00:0a') });
  const b = side(tweet, { outbound: false, password: pw, local: features('02:00:00:00:00:0b') });
  a.s.start();
  b.s.start();
  pump(a, b);
  assert.ok(a.established && b.established);
  a.out.push(a.s.encode(2, Buffer.from('x')));
  b.out.push(b.s.encode(2, Buffer.from('y')));
  pump(a, b);
  assert.equal(b.messages[0][1].toString(), 'x');
  assert.equal(a.messages[0][1].toString(), 'y');
});

test('unencrypted: no session key, payload visible on the wire', () => {
  const { a, b } = pair(crypto, null, Buffer.alloc(0));
  assert.equal(a.established?.encrypted, false);
  assert.equal(a.established?.sessionKey, null);
  assert.equal(b.established?.sessionKey, null);
  const f = a.s.encode(2, Buffer.from('plain text'));
  assert.ok(f.includes(Buffer.from('plain text')));
  b.s.push(f);
  assert.equal(b.messages[0][1].toString(), 'plain text');
});

test('different passwords: EPASSWORD on both sides', () => {
  const { a, b } = pair(crypto, pw, Buffer.from('other'));
  assert.ok(isRefused('EPASSWORD')(a.error), String(a.error));
  assert.ok(isRefused('EPASSWORD')(b.error), String(b.error));
  assert.match((a.error as Error).message, /passwords differ/);
  assert.equal(a.established, null);
  assert.equal(a.s.state, 'failed');
  assert.throws(() => a.s.push(Buffer.from([0])), ProtocolError, 'a failed session stays failed');
});

test('password on one side only: EENCRYPTION on both, with the side-specific message', () => {
  const { a, b } = pair(crypto, pw, null);
  assert.ok(isRefused('EENCRYPTION')(a.error));
  assert.ok(isRefused('EENCRYPTION')(b.error));
  assert.match((a.error as Error).message, /password is set here but the peer does not encrypt/);
  assert.match((b.error as Error).message, /peer requires encryption but no password is set here/);
});

test('disjoint versions: EVERSION on both; overlapping ranges pick the highest common', () => {
  const { a, b } = pair(crypto, pw, pw, { a: { minVersion: 1, maxVersion: 1 }, b: { minVersion: 2, maxVersion: 3 } });
  assert.ok(isRefused('EVERSION')(a.error));
  assert.ok(isRefused('EVERSION')(b.error));
  const ok = pair(crypto, pw, pw, { a: { minVersion: 1, maxVersion: 4 }, b: { minVersion: 2, maxVersion: 3 } });
  assert.equal(ok.a.established?.version, 3);
  assert.equal(ok.b.established?.version, 3);
});

test('replayed, reordered and dropped frames fail to open and kill the session', () => {
  for (const mode of ['replay', 'reorder', 'drop'] as const) {
    const { a, b } = pair(crypto, pw, pw);
    const f1 = a.s.encode(2, Buffer.from('one'));
    const f2 = a.s.encode(2, Buffer.from('two'));
    const seq = mode === 'replay' ? [f1, f1] : mode === 'reorder' ? [f2, f1] : [f2];
    let err: unknown = null;
    try {
      for (const f of seq) b.s.push(f);
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof ProtocolError, `${mode}: ${String(err)}`);
    assert.match((err as Error).message, /failed to decrypt/);
    // replay: the original is delivered, its copy kills the session; reorder/drop: nothing is delivered
    assert.deepEqual(b.messages.map(([, p]) => p.toString()), mode === 'replay' ? ['one'] : []);
  }
});

test('reflecting a peer its own bytes fails (direction byte)', () => {
  // An attacker without the password echoes everything the dialler sends straight back to it.
  const a = side(crypto, { outbound: true, password: pw, local: features('02:00:00:00:00:0a') });
  a.s.start();
  let err: unknown = null;
  for (let i = 0; i < 10 && a.out.length && !err; i++) {
    try {
      a.s.push(a.out.shift() as Buffer);
    } catch (e) {
      err = e;
    }
  }
  assert.ok(isRefused('EPASSWORD')(err), String(err));
  assert.equal(a.established, null);
});

test('bytes delivered one at a time decode the same', () => {
  const a = side(crypto, { outbound: true, password: pw, local: features('02:00:00:00:00:0a') });
  const b = side(crypto, { outbound: false, password: pw, local: features('02:00:00:00:00:0b') });
  a.s.start();
  b.s.start();
  for (let i = 0; i < 20 && !(a.established && b.established); i++) {
    for (const [from, to] of [[a, b], [b, a]] as const) {
      const all = Buffer.concat(from.out.splice(0));
      for (const byte of all) to.s.push(Buffer.from([byte]));
    }
  }
  assert.ok(a.established && b.established);
  const f = Buffer.concat([a.s.encode(2, Buffer.from('abc')), a.s.encode(32, Buffer.alloc(3000, 7))]);
  for (const byte of f) b.s.push(Buffer.from([byte]));
  assert.deepEqual(b.messages.map(([t, p]) => [t, p.length]), [[2, 3], [32, 3000]]);
});

test('frames above the limit are refused by the reader and the sealer', () => {
  const r = new FrameReader(1024);
  const h = Buffer.alloc(4);
  h.writeUInt32BE(1025);
  assert.throws(() => {
    r.push(h);
    r.nextFrame();
  }, (e: unknown) => e instanceof ProtocolError && /exceeds/.test(e.message));
  const r16 = new FrameReader();
  h.writeUInt32BE(16 * 1024 * 1024 + 1);
  r16.push(h);
  assert.throws(() => r16.nextFrame(), ProtocolError);
  const s = new FrameSealer(crypto, null, 0, 100);
  assert.throws(() => s.encode(2, Buffer.alloc(100)), (e: unknown) => e instanceof WeaveError && e.code === 'E2BIG');
  assert.equal(s.encode(2, Buffer.alloc(99)).length, 104);
});

test('a large frame in many chunks is reassembled intact', () => {
  const key = crypto.randomBytes(32);
  const sealer = new FrameSealer(crypto, key, 0);
  const opener = new FrameOpener(tweet, key, 0);
  const payload = crypto.randomBytes(3 * 1024 * 1024);
  const frame = sealer.encode(9, payload);
  const r = new FrameReader();
  let body: Buffer | null = null;
  for (let off = 0; off < frame.length; off += 65536) {
    assert.equal(body, null);
    r.push(frame.subarray(off, off + 65536));
    body = r.nextFrame();
  }
  assert.ok(body);
  const plain = opener.open(body);
  assert.ok(plain);
  assert.equal(plain[0], 9);
  assert.ok(plain.subarray(1).equals(payload));
  assert.equal(r.buffered, 0);
});

test('features: round trip, unknown fields ignored, every field validated', () => {
  const f = features('02:aa:bb:cc:dd:ee', 'id-1', { trusted: true, listenPort: 0 });
  assert.deepEqual(decodeFeatures(encodeFeatures(f)), f);
  const base = { v: 1, ...f };
  assert.deepEqual(decodeFeatures(pack({ ...base, future: [1, 2] })), f);
  const bad: Array<[string, unknown]> = [
    ['v', 2],
    ['v', undefined],
    ['name', 'not-a-name'],
    ['name', 42],
    ['nickname', 'x'.repeat(300)],
    ['uid', ''],
    ['connId', null],
    ['overlays', 'sleeve'],
    ['overlays', [1]],
    ['overlays', Array(20).fill('x')],
    ['overlayParams', [1, 2]],
    ['overlayParams', 'x'],
    ['trusted', 'yes'],
    ['listenPort', 70000],
    ['listenPort', 1.5],
    ['listenPort', -1],
    ['topologyDeltas', 1],
    ['topologyDeltas', 'yes'],
  ];
  for (const [k, v] of bad) {
    assert.throws(() => decodeFeatures(pack({ ...base, [k]: v })), ProtocolError, `${k}=${JSON.stringify(v)}`);
  }
  // topology deltas: offered only when set; an old router's features (no field) decode without it
  const fd = { ...f, topologyDeltas: true };
  assert.deepEqual(decodeFeatures(encodeFeatures(fd)), fd);
  assert.deepEqual(decodeFeatures(pack({ ...base, topologyDeltas: false })), f);
  assert.deepEqual(encodeFeatures({ ...f, topologyDeltas: false }), encodeFeatures(f), 'not offered: the frame an old router sends');
  assert.throws(() => decodeFeatures(pack([1, 2, 3])), ProtocolError);
  assert.throws(() => decodeFeatures(Buffer.from([0xc1])), ProtocolError);
  assert.throws(() => decodeFeatures(Buffer.concat([encodeFeatures(f), Buffer.from([0])])), ProtocolError, 'trailing bytes');
  assert.throws(() => decodeFeatures(Buffer.alloc(0)), ProtocolError);
});

test('unencrypted features frame that is not a features map is EPROTO', () => {
  const a = side(crypto, { outbound: true, password: null, local: features('02:00:00:00:00:0a') });
  a.s.start();
  const b = side(crypto, { outbound: false, password: null, local: features('02:00:00:00:00:0b') });
  b.s.start();
  a.s.push(b.out.shift() as Buffer); // hello
  const bogus = Buffer.from(pack({ v: 1 }));
  const hdr = Buffer.alloc(4);
  hdr.writeUInt32BE(bogus.length);
  assert.throws(() => a.s.push(Buffer.concat([encodeKeyExchange(false, crypto.randomBytes(32)), hdr, bogus])), ProtocolError);
});

test('low-order key, empty message frame and bad magic inside a session are ProtocolErrors', () => {
  const a = side(crypto, { outbound: true, password: pw, local: features('02:00:00:00:00:0a') });
  a.s.start();
  assert.throws(() => a.s.push(Buffer.concat([encodeHello(1, 1), encodeKeyExchange(true, Buffer.alloc(32))])), (e: unknown) => e instanceof ProtocolError && /low-order/.test(e.message));

  const { a: x, b: y } = pair(crypto, null, null);
  assert.ok(x.established && y.established);
  assert.throws(() => y.s.push(Buffer.from([0, 0, 0, 0])), (e: unknown) => e instanceof ProtocolError && /empty/.test(e.message));

  const g = side(crypto, { outbound: false, password: null, local: features('02:00:00:00:00:0b') });
  g.s.start();
  assert.throws(() => g.s.push(Buffer.from('GET / HTTP/1.1\r\n\r\n')), ProtocolError);
  assert.ok(MAGIC.equals(g.out[0].subarray(0, 6)), 'the listener still said hello first');
});

test('stop() makes the session ignore further input', () => {
  const { a, b } = pair(crypto, pw, pw);
  const f = a.s.encode(2, Buffer.from('late'));
  b.s.stop();
  b.s.push(f);
  b.s.push(Buffer.from('garbage that would otherwise fail'));
  assert.equal(b.messages.length, 0);
  assert.equal(b.s.state, 'stopped');
});

test('the features frame at its real maximum fits the pre-authentication frame cap with a wide margin', (t) => {
  // every field at its decoder's limit, strings in 3-byte UTF-8, and the overlay parameters routers send
  const big: Features = {
    name: '02:ff:ff:ff:ff:ff',
    nickname: '€'.repeat(255),
    uid: 'u'.repeat(64),
    connId: 'c'.repeat(64),
    overlays: Array.from({ length: 16 }, (_, i) => `overlay-${i}`.padEnd(32, 'x')),
    overlayParams: { sleeve: { port: 65535 }, fastdp: { v: 1, mac: 'ff:ff:ff:ff:ff:ff', vtep: '255.255.255.255', port: 65535, hb: 65535 } },
    trusted: true,
    listenPort: 65535,
  };
  const sealed = encodeFeatures(big).length + 16;
  t.diagnostic(`largest features frame: ${sealed} bytes sealed; cap ${PREAUTH_MAX_FRAME}`);
  assert.deepEqual(decodeFeatures(encodeFeatures(big)), big);
  assert.ok(sealed * 4 <= PREAUTH_MAX_FRAME, `${sealed} bytes: less than a quarter of the cap`);
  // a session refuses to send a features frame over the cap instead of having the peer refuse it
  const huge = { ...big, overlayParams: { blob: 'x'.repeat(PREAUTH_MAX_FRAME) } };
  const a = side(crypto, { outbound: true, password: pw, local: huge });
  const b = side(crypto, { outbound: false, password: pw, local: features('02:00:00:00:00:0b') });
  a.s.start();
  b.s.start();
  pump(a, b);
  assert.ok(a.error instanceof WeaveError && a.error.code === 'E2BIG', String(a.error));
});

test('before the password is proven a frame beyond PREAUTH_MAX_FRAME is a protocol error; after it the full limit applies', () => {
  const s = side(crypto, { outbound: false, password: pw, local: features('02:00:00:00:00:0b') });
  s.s.start();
  const hdr = Buffer.alloc(4);
  hdr.writeUInt32BE(PREAUTH_MAX_FRAME + 1, 0);
  assert.throws(() => s.s.push(Buffer.concat([encodeHello(1, 1), encodeKeyExchange(true, crypto.randomBytes(32)), hdr])), (e: unknown) => e instanceof ProtocolError && /exceeds the limit of 16384/.test(e.message));
  const { a, b } = pair(crypto, pw, pw);
  a.out.push(a.s.encode(2, Buffer.alloc(PREAUTH_MAX_FRAME * 4)));
  pump(a, b);
  assert.equal(b.error, null);
  assert.equal(b.messages[0][1].length, PREAUTH_MAX_FRAME * 4);
});
