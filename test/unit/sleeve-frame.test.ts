import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadCrypto, tweetnaclEngine } from '../../mesh/crypto';
import { silentLogger } from '../../lib/log';
import { FrameHeader, FrameType, HB_BODY, HB_ROUTES, HB_V2, HDR, TAG, ViewCache, decodeFrame, deriveKeys, encodeFrame, heartbeatFlags, heartbeatVersion, parseHeader, setNonce, writeHeader, writeHeartbeat } from '../../router/frame';
import { UNREACH_FRAG_NEEDED, UNREACH_HOST, decrementTtl, fragment, ipChecksum, mayAnswer, writeUnreachable } from '../../router/icmp';
import { ipv4Packet } from '../fakes/channel-tun';

const sodium = loadCrypto('sodium', silentLogger());
const nacl = tweetnaclEngine();

test('sodium engine really is libsodium here (else the cross-check proves nothing)', () => {
  assert.equal(sodium.name, 'sodium');
});

test('header round trip, including counters above 2^32 and both key phases', () => {
  const b = Buffer.alloc(HDR);
  const h = new FrameHeader();
  for (const counter of [0, 1, 0xffffffff, 0x100000000, Number.MAX_SAFE_INTEGER]) {
    for (const phase of [0, 1]) {
      writeHeader(b, 0, FrameType.Data, 2, 0xdeadbeef, counter, phase);
      assert.ok(parseHeader(b, 0, HDR, h, false));
      assert.deepEqual({ ...h }, { type: FrameType.Data, lane: 2, idx: 0xdeadbeef, counter, phase });
    }
  }
});

test('malformed headers are refused', () => {
  const h = new FrameHeader();
  const good = Buffer.alloc(HDR + TAG);
  writeHeader(good, 0, FrameType.Heartbeat, 0, 1, 1);
  assert.ok(parseHeader(good, 0, good.length, h, true));
  assert.equal(parseHeader(good, 0, HDR - 1, h, false), false, 'truncated');
  assert.equal(parseHeader(good, 0, HDR, h, true), false, 'no room for the MAC');
  const kp1 = Buffer.from(good);
  kp1[3] = 1; // key phase 1 (password rotation)
  assert.ok(parseHeader(kp1, 0, kp1.length, h, true));
  assert.equal(h.phase, 1);
  for (const [i, v] of [[0, 2], [1, 0], [1, 5], [2, 3], [3, 2], [8, 0x20]] as const) {
    const b = Buffer.from(good);
    b[i] = v;
    assert.equal(parseHeader(b, 0, b.length, h, true), false, `byte ${i} = ${v}`);
  }
});

test('seal/open round trip with both engines, identical bytes, tamper detection', () => {
  const key = sodium.randomBytes(32);
  const body = Buffer.from('a packet body with a marker XYZZY');
  for (const counter of [0, 7, 2 ** 40]) {
    const a = encodeFrame(sodium, key, FrameType.Data, 1, 42, counter, body);
    const b = encodeFrame(nacl, key, FrameType.Data, 1, 42, counter, body);
    assert.deepEqual(a, b, 'engines must put identical bytes on the wire');
    assert.equal(a.length, HDR + body.length + TAG);
    assert.equal(a.includes(Buffer.from('XYZZY')), false, 'sealed frames hide the payload');
    const h = new FrameHeader();
    assert.deepEqual(decodeFrame(nacl, key, a, h), body);
    assert.deepEqual(decodeFrame(sodium, key, b, h), body);
    assert.equal(h.counter, counter);
    // (bytes 4-7, the receiver index, only pick the key: another index means another key, or none)
    for (const i of [1, 2, 9, 12, 15, HDR, a.length - 1]) {
      const t = Buffer.from(a);
      t[i] ^= i === 1 ? 3 : i === 2 ? 3 : 1; // type 1 -> 2, lane 1 -> 2 keep the header valid: the nonce must catch them
      assert.equal(decodeFrame(sodium, key, t, h), null, `flipped byte ${i}`);
    }
    assert.equal(decodeFrame(sodium, sodium.randomBytes(32), a, h), null, 'wrong key');
  }
});

test('unencrypted framing carries the plain body', () => {
  const body = Buffer.from('plain XYZZY');
  const f = encodeFrame(null, null, FrameType.Data, 0, 3, 9, body);
  assert.equal(f.length, HDR + body.length);
  assert.ok(f.includes(Buffer.from('XYZZY')));
  const h = new FrameHeader();
  assert.deepEqual(decodeFrame(null, null, f, h), body);
});

test('directional keys: each side seals with what the other opens', () => {
  const sk = sodium.randomBytes(32);
  const dialler = deriveKeys(sodium, sk, true);
  const listener = deriveKeys(nacl, sk, false);
  assert.deepEqual(dialler.tx, listener.rx);
  assert.deepEqual(dialler.rx, listener.tx);
  assert.notDeepEqual(dialler.tx, dialler.rx);
  assert.notDeepEqual(dialler.tx, sk);
});

test('in-ring seal into cached views matches encodeFrame', () => {
  const key = sodium.randomBytes(32);
  const stride = 256;
  const ring = Buffer.alloc(stride * 4);
  const box = new ViewCache(ring, stride, 4, HDR);
  const plain = Buffer.from('hello ring');
  const nonce = Buffer.alloc(24);
  writeHeader(ring, 2 * stride, FrameType.Data, 1, 5, 77);
  setNonce(nonce, FrameType.Data, 1, 77);
  sodium.secretboxSeal(box.get(2, plain.length + TAG), plain, nonce, key);
  assert.strictEqual(box.get(2, plain.length + TAG), box.get(2, plain.length + TAG), 'views are cached');
  assert.deepEqual(ring.subarray(2 * stride, 2 * stride + HDR + plain.length + TAG), encodeFrame(sodium, key, FrameType.Data, 1, 5, 77, plain));
});

function checksumOk(b: Buffer, off: number, len: number): boolean {
  return ipChecksum(b, off, len) === 0;
}

test('ICMP unreachable and frag-needed are well formed and quote the packet', () => {
  const pkt = ipv4Packet({ src: '10.32.1.5', dst: '10.40.0.9', proto: 6, payload: Buffer.alloc(1400, 7), df: true });
  const out = Buffer.alloc(200);
  const n = writeUnreachable(out, 10, pkt, 0, pkt.length, UNREACH_FRAG_NEEDED, 1384, 0x0a280009);
  assert.equal(n, 20 + 8 + 28);
  const ic = out.subarray(10, 10 + n);
  assert.ok(checksumOk(ic, 0, 20), 'IP checksum');
  assert.ok(checksumOk(ic, 20, n - 20), 'ICMP checksum');
  assert.equal(ic[9], 1);
  assert.deepEqual([...ic.subarray(16, 20)], [10, 32, 1, 5], 'sent back to the source');
  assert.deepEqual([ic[20], ic[21]], [3, 4]);
  assert.equal(ic.readUInt16BE(26), 1384, 'next-hop MTU');
  assert.deepEqual(ic.subarray(28, 56), pkt.subarray(0, 28), 'quotes header + 8 bytes');
  const u = writeUnreachable(out, 0, pkt, 0, pkt.length, UNREACH_HOST, 999, 1);
  assert.equal(out[21], 1);
  assert.equal(out.readUInt16BE(26), 0, 'MTU only for frag-needed');
  assert.equal(u, 56);
});

test('never answers ICMP errors, non-first fragments, multicast or broadcast', () => {
  const icmpErr = ipv4Packet({ src: '10.0.0.1', dst: '10.0.0.2', proto: 1, payload: Buffer.from([3, 1, 0, 0, 0, 0, 0, 0]) });
  const echo = ipv4Packet({ src: '10.0.0.1', dst: '10.0.0.2', proto: 1, payload: Buffer.from([8, 0, 0, 0, 0, 0, 0, 0]) });
  const frag = ipv4Packet({ src: '10.0.0.1', dst: '10.0.0.2' });
  frag[7] = 10;
  assert.equal(mayAnswer(icmpErr, 0, icmpErr.length), false);
  assert.equal(mayAnswer(echo, 0, echo.length), true);
  assert.equal(mayAnswer(frag, 0, frag.length), false);
  assert.equal(mayAnswer(ipv4Packet({ src: '10.0.0.1', dst: '224.0.0.5' }), 0, 20), false);
  assert.equal(mayAnswer(ipv4Packet({ src: '10.0.0.1', dst: '255.255.255.255' }), 0, 20), false);
  assert.equal(writeUnreachable(Buffer.alloc(100), 0, icmpErr, 0, icmpErr.length, 1, 0, 1), 0);
  assert.equal(mayAnswer(Buffer.from([0x60, 0, 0, 0]), 0, 4), false, 'IPv6 / garbage');
});

test('TTL decrement keeps the checksum valid and stops at 1', () => {
  const p = ipv4Packet({ src: '10.0.0.1', dst: '10.0.0.2', ttl: 3 });
  assert.ok(decrementTtl(p, 0));
  assert.equal(p[8], 2);
  assert.ok(checksumOk(p, 0, 20));
  assert.ok(decrementTtl(p, 0));
  assert.equal(decrementTtl(p, 0), false);
  for (let ttl = 2; ttl < 256; ttl++) {
    const q = ipv4Packet({ src: '192.168.255.1', dst: '10.255.0.2', ttl, id: ttl * 257 });
    decrementTtl(q, 0);
    assert.ok(checksumOk(q, 0, 20), `ttl ${ttl}`);
  }
});

test('fragmentation splits on 8-byte boundaries and reassembles', () => {
  const payload = Buffer.alloc(3000);
  for (let i = 0; i < payload.length; i++) payload[i] = i & 0xff;
  const pkt = ipv4Packet({ src: '10.0.0.1', dst: '10.0.0.2', payload });
  const stride = 1600;
  const out = Buffer.alloc(stride * 8);
  const lens = new Int32Array(8);
  const k = fragment(pkt, 0, pkt.length, 1300, out, 0, stride, lens, 0, 8);
  assert.equal(k, 3);
  const re = Buffer.alloc(3000);
  for (let f = 0; f < k; f++) {
    const fr = out.subarray(f * stride, f * stride + lens[f]);
    assert.ok(lens[f] <= 1300);
    assert.ok(checksumOk(fr, 0, 20));
    const more = (fr[6] & 0x20) !== 0;
    assert.equal(more, f < k - 1);
    const off = (((fr[6] & 0x1f) << 8) | fr[7]) * 8;
    fr.copy(re, off, 20);
    assert.equal(fr.readUInt16BE(2), lens[f]);
  }
  assert.deepEqual(re, payload);
  assert.equal(fragment(ipv4Packet({ src: '10.0.0.1', dst: '10.0.0.2', payload, df: true }), 0, 3020, 1300, out, 0, stride, lens, 0, 8), 0, 'DF set');
  assert.equal(fragment(pkt, 0, pkt.length, 100, out, 0, stride, lens, 0, 8), 0, 'too many fragments');
});

test('heartbeat body: flags and the routed announcement version round-trip; an older one-byte body says nothing', () => {
  const b = Buffer.alloc(HB_BODY + 4, 0xee);
  writeHeartbeat(b, 2, true, 1796607750290 + 7);
  assert.equal(heartbeatFlags(b, 2, HB_BODY), HB_V2 | HB_ROUTES);
  assert.equal(heartbeatVersion(b, 2), 1796607750297);
  writeHeartbeat(b, 2, false, 0);
  assert.equal(heartbeatFlags(b, 2, HB_BODY), HB_V2);
  assert.equal(heartbeatVersion(b, 2), 0);
  writeHeartbeat(b, 0, true, Number.MAX_SAFE_INTEGER);
  assert.equal(heartbeatVersion(b, 0), Number.MAX_SAFE_INTEGER);
  // what routers before this body sent: one byte (weHear); no flags, so no verdict on the peer's routes
  assert.equal(heartbeatFlags(Buffer.from([1]), 0, 1), 0);
  assert.equal(heartbeatFlags(Buffer.alloc(HB_BODY), 0, HB_BODY), 0);
});
