// TUN offloads in the native addon (native/tunio.c), driven with crafted packets: splitting a TSO
// super-packet (and completing csum-partial packets) as readBatchVnet does, coalescing in-order TCP
// segments into GSO writes as writeBatchVnet does, and readBatchVnet itself (carry across calls,
// malformed virtio headers counted) on a FIFO, which reads like a TUN when written one packet at a time.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { silentLogger } from '../../lib/log';
import { TUN_CARRY_BAD, TUN_CARRY_SEGS, TUN_CARRY_SIZE, TUN_CARRY_SUPER, loadTunIo, type TunIo } from '../../router/native';

const loaded = loadTunIo(silentLogger());

test('the native addon loads and has the offload entry points (node scripts/build-native.js)', () => {
  assert.ok(loaded, 'native/build/Release/weave_tunio.node must load');
  for (const k of ['readBatchVnet', 'writeBatchVnet', 'gsoSplit', 'groCoalesce'] as const) assert.equal(typeof loaded[k], 'function', k);
});
const io = loaded as TunIo;

// ---- packet crafting and checking (independent of the addon's code) -------------------------------

function sum16(b: Uint8Array, off: number, len: number, init = 0): number {
  let s = init;
  for (let i = 0; i + 1 < len; i += 2) s += (b[off + i] << 8) | b[off + i + 1];
  if (len & 1) s += b[off + len - 1] << 8;
  return s;
}
function fold(s: number): number {
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 65536);
  return s;
}
function pseudo(p: Uint8Array, proto: number, l4len: number): number {
  return sum16(p, 12, 8) + proto + l4len;
}
/** true when the IPv4 header and the L4 (TCP/UDP) checksums of p verify */
function checksumsOk(p: Uint8Array): boolean {
  const ihl = (p[0] & 15) * 4;
  const tot = (p[2] << 8) | p[3];
  if (fold(sum16(p, 0, ihl)) !== 0xffff) return false;
  return fold(sum16(p, ihl, tot - ihl, pseudo(p, p[9], tot - ihl))) === 0xffff;
}

interface TcpSpec { seq: number; payload: Uint8Array; flags?: number; id?: number; sport?: number; dport?: number; ack?: number; win?: number; opts?: Uint8Array; ttl?: number }
const ACK = 0x10, PSH = 0x08, FIN = 0x01, SYN = 0x02, CWR = 0x80;
const SRC = [10, 32, 1, 1], DST = [10, 32, 2, 1];

/** An IPv4/TCP packet with valid checksums (DF set). */
function tcp(s: TcpSpec): Buffer {
  const opts = s.opts ?? new Uint8Array(0);
  const thl = 20 + opts.length;
  const p = Buffer.alloc(20 + thl + s.payload.length);
  p[0] = 0x45;
  p.writeUInt16BE(p.length, 2);
  p.writeUInt16BE(s.id ?? 0x1000, 4);
  p.writeUInt16BE(0x4000, 6);
  p[8] = s.ttl ?? 64;
  p[9] = 6;
  p.set(SRC, 12);
  p.set(DST, 16);
  p.writeUInt16BE(s.sport ?? 40000, 20);
  p.writeUInt16BE(s.dport ?? 5201, 22);
  p.writeUInt32BE(s.seq >>> 0, 24);
  p.writeUInt32BE(s.ack ?? 777, 28);
  p[32] = (thl / 4) << 4;
  p[33] = s.flags ?? ACK;
  p.writeUInt16BE(s.win ?? 500, 34);
  p.set(opts, 40);
  p.set(s.payload, 20 + thl);
  p.writeUInt16BE(0xffff - fold(sum16(p, 0, 20)), 10);
  p.writeUInt16BE(0xffff - fold(sum16(p, 20, p.length - 20, pseudo(p, 6, p.length - 20))), 36);
  return p;
}

function udp(payload: Uint8Array): Buffer {
  const p = Buffer.alloc(28 + payload.length);
  p[0] = 0x45;
  p.writeUInt16BE(p.length, 2);
  p[8] = 64;
  p[9] = 17;
  p.set(SRC, 12);
  p.set(DST, 16);
  p.writeUInt16BE(5353, 20);
  p.writeUInt16BE(53, 22);
  p.writeUInt16BE(8 + payload.length, 24);
  p.set(payload, 28);
  p.writeUInt16BE(0xffff - fold(sum16(p, 0, 20)), 10);
  return p;
}

function vnet(o: { flags?: number; gsoType?: number; hdrLen?: number; gsoSize?: number; csumStart?: number; csumOffset?: number }): Buffer {
  const h = Buffer.alloc(10);
  h[0] = o.flags ?? 0;
  h[1] = o.gsoType ?? 0;
  h.writeUInt16LE(o.hdrLen ?? 0, 2);
  h.writeUInt16LE(o.gsoSize ?? 0, 4);
  h.writeUInt16LE(o.csumStart ?? 0, 6);
  h.writeUInt16LE(o.csumOffset ?? 0, 8);
  return h;
}

const pattern = (n: number, seed = 1): Buffer => {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + seed) & 0xff;
  return b;
};
const TS_OPTS = Uint8Array.of(1, 1, 8, 10, 0, 0, 1, 0, 0, 0, 2, 0); // NOP NOP timestamps

/** What the kernel hands a TSO TUN: one super-packet, TCP checksum field = pseudo-header sum (partial). */
function superPacket(payload: Buffer, flags: number, gsoSize: number, seq = 1_000_000): Buffer {
  const p = tcp({ seq, payload, flags, id: 0x2000, opts: TS_OPTS });
  const ihl = 20;
  p.writeUInt16BE(fold(pseudo(p, 6, p.length - ihl)), ihl + 16);
  return Buffer.concat([vnet({ flags: 1, gsoType: 1, hdrLen: 20 + 32, gsoSize, csumStart: 20, csumOffset: 16 }), p]);
}

const STRIDE = 1536;
function split(vp: Uint8Array, max = 64): Buffer[] | -1 {
  const buf = Buffer.alloc(STRIDE * max);
  const lens = new Int32Array(max);
  const n = io.gsoSplit!(vp, buf, STRIDE, max, lens);
  if (n < 0) return -1;
  return Array.from({ length: n }, (_, i) => Buffer.from(buf.subarray(i * STRIDE, i * STRIDE + lens[i])));
}

// ---- splitting ---------------------------------------------------------------------------------

test('a TSO super-packet splits into MSS-sized segments: lengths, seq, ip id, checksums, flags', () => {
  const payload = pattern(4500);
  const segs = split(superPacket(payload, ACK | PSH | FIN | CWR, 1000));
  assert.notEqual(segs, -1);
  const s = segs as Buffer[];
  assert.equal(s.length, 5);
  const got: Buffer[] = [];
  s.forEach((p, i) => {
    const plen = i < 4 ? 1000 : 500;
    assert.equal(p.length, 52 + plen);
    assert.equal(p.readUInt16BE(2), 52 + plen, 'IP total length');
    assert.equal(p.readUInt16BE(4), 0x2000 + i, 'IP id');
    assert.equal(p.readUInt32BE(24), 1_000_000 + i * 1000, 'seq');
    assert.equal(p.readUInt32BE(28), 777, 'ack');
    assert.deepEqual([...p.subarray(40, 52)], [...TS_OPTS], 'TCP options copied');
    const f = p[33];
    assert.equal(f & ACK, ACK);
    assert.equal(!!(f & CWR), i === 0, `CWR only on the first (segment ${i})`);
    assert.equal(!!(f & PSH), i === 4, `PSH only on the last (segment ${i})`);
    assert.equal(!!(f & FIN), i === 4, `FIN only on the last (segment ${i})`);
    assert.ok(checksumsOk(p), `checksums of segment ${i}`);
    got.push(p.subarray(52));
  });
  assert.deepEqual(Buffer.concat(got), payload);
});

test('seq wraps around 2^32 across segments; a payload of exactly n * gso_size gives n full segments', () => {
  const s = split(superPacket(pattern(3000), ACK, 1000, 0xffffff00)) as Buffer[];
  assert.equal(s.length, 3);
  assert.deepEqual(s.map((p) => p.readUInt32BE(24)), [0xffffff00, (0xffffff00 + 1000) >>> 0, (0xffffff00 + 2000) >>> 0]);
  assert.ok(s.every((p) => p.length === 1052 && checksumsOk(p)));
});

test('non-GSO packets: csum-partial TCP and UDP get their checksum completed; others pass byte for byte', () => {
  const u = udp(pattern(333));
  u.writeUInt16BE(fold(pseudo(u, 17, u.length - 20)), 26); // partial: pseudo header only
  const su = split(Buffer.concat([vnet({ flags: 1, csumStart: 20, csumOffset: 6 }), u])) as Buffer[];
  assert.equal(su.length, 1);
  assert.ok(checksumsOk(su[0]), 'UDP checksum completed');
  assert.deepEqual(su[0].subarray(28), u.subarray(28));

  const t = tcp({ seq: 5, payload: pattern(100), flags: ACK | PSH });
  const good = Buffer.from(t);
  t.writeUInt16BE(fold(pseudo(t, 6, t.length - 20)), 36);
  const st = split(Buffer.concat([vnet({ flags: 1, csumStart: 20, csumOffset: 16 }), t])) as Buffer[];
  assert.deepEqual(st[0], good);

  const icmp = Buffer.from(good);
  icmp[9] = 1; // whatever the protocol: no flags, no GSO -> untouched
  const si = split(Buffer.concat([vnet({}), icmp])) as Buffer[];
  assert.deepEqual(si[0], icmp);
});

test('malformed virtio headers and packets are refused (-1), never split', () => {
  const sp = superPacket(pattern(3000), ACK, 1000);
  const bad = (mut: (b: Buffer) => void): number | Buffer[] => {
    const b = Buffer.from(sp);
    mut(b);
    return split(b);
  };
  assert.equal(bad((b) => { b[1] = 3; }), -1, 'GSO UDP (not negotiated)');
  assert.equal(bad((b) => { b[1] = 4; }), -1, 'GSO TCPv6 (not negotiated)');
  assert.equal(bad((b) => { b.writeUInt16LE(0, 4); }), -1, 'gso_size 0');
  assert.equal(bad((b) => { b.writeUInt16LE(1600, 4); }), -1, 'segments larger than a slot');
  assert.equal(bad((b) => { b[10 + 9] = 17; }), -1, 'TCP GSO on a UDP packet');
  assert.equal(bad((b) => { b[10] = 0x65; }), -1, 'not IPv4');
  assert.equal(bad((b) => { b[10] = 0x44; }), -1, 'IHL below 5');
  assert.equal(bad((b) => { b.writeUInt16BE(60000, 10 + 2); }), -1, 'total length beyond the read');
  assert.equal(bad((b) => { b.writeUInt16BE(0x2000, 10 + 6); }), -1, 'a fragment (MF)');
  assert.equal(bad((b) => { b[10 + 32] = 0x10; }), -1, 'TCP header length 4 (< 20)');
  const u = udp(pattern(50));
  assert.equal(split(Buffer.concat([vnet({ flags: 1, csumStart: 20, csumOffset: 200 }), u])), -1, 'checksum offset beyond the packet');
  assert.equal(split(Buffer.alloc(10)), -1, 'header only');
  assert.equal(split(Buffer.concat([vnet({}), pattern(STRIDE + 1)])), -1, 'longer than a slot');
});

// ---- coalescing ---------------------------------------------------------------------------------

interface Write { vh: Buffer; pkt: Buffer }
function coalesce(pkts: Buffer[]): Write[] {
  const stride = Math.max(2048, ...pkts.map((p) => p.length));
  const buf = Buffer.alloc(stride * pkts.length);
  // packets in scattered slots, as in the receive ring
  const offs = Int32Array.from(pkts.map((_, i) => (pkts.length - 1 - i) * stride));
  const lens = Int32Array.from(pkts.map((p) => p.length));
  pkts.forEach((p, i) => p.copy(buf, offs[i]));
  const out = Buffer.alloc(70000 * 2);
  const olens = new Int32Array(pkts.length);
  const w = io.groCoalesce!(buf, offs, lens, pkts.length, out, olens);
  const res: Write[] = [];
  let at = 0;
  for (let i = 0; i < w; i++) {
    res.push({ vh: Buffer.from(out.subarray(at, at + 10)), pkt: Buffer.from(out.subarray(at + 10, at + olens[i])) });
    at += olens[i];
  }
  return res;
}

function flow(n: number, last: number): Buffer[] {
  return Array.from({ length: n }, (_, i) => tcp({ seq: 5000 + i * 1000, payload: pattern(i === n - 1 ? last : 1000, i), id: 0x3000 + i, flags: i === n - 1 ? ACK | PSH : ACK, opts: TS_OPTS }));
}

test('in-order segments of one flow become one GSO write that splits back into the same packets', () => {
  const segs = flow(5, 400);
  const w = coalesce(segs);
  assert.equal(w.length, 1);
  const { vh, pkt } = w[0];
  assert.deepEqual([vh[0], vh[1], vh.readUInt16LE(2), vh.readUInt16LE(4), vh.readUInt16LE(6), vh.readUInt16LE(8)], [1, 1, 52, 1000, 20, 16]);
  assert.equal(pkt.length, 52 + 4400);
  assert.equal(pkt.readUInt16BE(2), pkt.length, 'total length of the super-packet');
  assert.equal(fold(sum16(pkt, 0, 20)), 0xffff, 'IP header checksum');
  assert.equal(pkt.readUInt16BE(36), fold(pseudo(pkt, 6, pkt.length - 20)), 'TCP checksum field holds the pseudo-header sum (csum-partial)');
  assert.equal(pkt[33], ACK | PSH, 'PSH of the last segment kept');
  // what the kernel will do with it: segment at gso_size -> the original packets, byte for byte
  const back = split(Buffer.concat([vh, pkt])) as Buffer[];
  assert.equal(back.length, 5);
  back.forEach((p, i) => assert.deepEqual(p, segs[i], `segment ${i}`));
});

test('what breaks a run: gaps, other flows, flags, sizes; lone packets go out unchanged behind a zero header', () => {
  const a = flow(3, 1000);
  a[2][33] = ACK; // no PSH: the run may go on
  a[2].writeUInt16BE(0, 36);
  a[2].writeUInt16BE(0xffff - fold(sum16(a[2], 20, a[2].length - 20, pseudo(a[2], 6, a[2].length - 20))), 36);
  const gap = tcp({ seq: 5000 + 4000, payload: pattern(1000), opts: TS_OPTS }); // skips 1000 bytes
  const other = tcp({ seq: 8000, payload: pattern(1000), sport: 40001, opts: TS_OPTS });
  const syn = tcp({ seq: 9000, payload: new Uint8Array(0), flags: SYN });
  const pureAck = tcp({ seq: 1, payload: new Uint8Array(0) });
  const u = udp(pattern(20));
  const w = coalesce([...a, gap, other, syn, pureAck, u]);
  assert.equal(w.length, 6);
  assert.equal(w[0].vh[1], 1, 'the first three coalesced');
  assert.equal(w[0].pkt.length, 52 + 3000);
  for (const [k, p] of [[1, gap], [2, other], [3, syn], [4, pureAck], [5, u]] as const) {
    assert.deepEqual(w[k].vh, Buffer.alloc(10), `write ${k}: zero virtio header`);
    assert.deepEqual(w[k].pkt, p, `write ${k}: unchanged`);
  }
  // a PSH segment first: alone; a larger segment after a shorter one: new run; window change: new run
  const psh = flow(1, 1000)[0];
  const two = flow(2, 1000);
  const w2 = coalesce([psh, two[0], tcp({ seq: 6000, payload: pattern(500), opts: TS_OPTS }), tcp({ seq: 6500, payload: pattern(1000), opts: TS_OPTS })]);
  assert.deepEqual(w2.map((x) => x.pkt.length - 52), [1000, 1500, 1000]);
  const w3 = coalesce([tcp({ seq: 5000, payload: pattern(1000), opts: TS_OPTS }), tcp({ seq: 6000, payload: pattern(1000), win: 501, opts: TS_OPTS })]);
  assert.equal(w3.length, 2);
  // ttl or tos differences split runs too
  const w4 = coalesce([tcp({ seq: 1, payload: pattern(100) }), tcp({ seq: 101, payload: pattern(100), ttl: 63 })]);
  assert.equal(w4.length, 2);
});

test('a run stops before 64 KiB (IP total length) and after 64 segments', () => {
  const big = Array.from({ length: 70 }, (_, i) => tcp({ seq: i * 1400, payload: pattern(1400), id: i }));
  const w = coalesce(big);
  const sizes = w.map((x) => x.pkt.length);
  assert.ok(sizes.every((s) => s <= 65535), `sizes ${sizes}`);
  assert.equal(sizes.reduce((a, b) => a + b - 40, 0), 70 * 1400, 'every payload byte written once');
  const small = Array.from({ length: 70 }, (_, i) => tcp({ seq: i * 10, payload: pattern(10), id: i }));
  assert.deepEqual(coalesce(small).map((x) => (x.pkt.length - 40) / 10), [64, 6]);
});

// ---- readBatchVnet on a FIFO: carry across calls, counters ----------------------------------------

test('readBatchVnet: a super-packet larger than the batch carries over; malformed headers are counted and skipped', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'weave-vnet-'));
  const fifo = path.join(dir, 'tun');
  execFileSync('mkfifo', [fifo]);
  const fd = fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
  try {
    const carry = new Uint8Array(new ArrayBuffer(TUN_CARRY_SIZE));
    const stats = new Uint32Array(carry.buffer, 0, 8);
    const max = 4;
    const buf = Buffer.alloc(STRIDE * max);
    const lens = new Int32Array(max);
    const payload = pattern(10_000);
    const segs: Buffer[] = [];
    const read = (): number => {
      const n = io.readBatchVnet!(fd, buf, STRIDE, max, lens, carry);
      for (let i = 0; i < n; i++) segs.push(Buffer.from(buf.subarray(i * STRIDE, i * STRIDE + lens[i])));
      return n;
    };
    assert.equal(read(), 0, 'empty: EAGAIN -> 0');
    fs.writeSync(fd, superPacket(payload, ACK | PSH, 1000));
    assert.deepEqual([read(), read(), read(), read()], [4, 4, 2, 0], '10 segments through batches of 4');
    assert.equal(segs.length, 10);
    assert.deepEqual(Buffer.concat(segs.map((p) => p.subarray(52))), payload);
    assert.ok(segs.every(checksumsOk));
    assert.equal(stats[TUN_CARRY_SUPER], 1);
    assert.equal(stats[TUN_CARRY_SEGS], 10);
    fs.writeSync(fd, Buffer.concat([vnet({ gsoType: 3, gsoSize: 100 }), udp(pattern(300))]));
    assert.equal(read(), 0);
    fs.writeSync(fd, Buffer.alloc(6));
    assert.equal(read(), 0);
    assert.equal(stats[TUN_CARRY_BAD], 2, 'unknown GSO type and a short read counted');
    fs.writeSync(fd, Buffer.concat([vnet({}), udp(pattern(30))]));
    assert.equal(read(), 1, 'and reading goes on');
    assert.throws(() => io.readBatchVnet!(fd, buf, STRIDE, max, lens, new Uint8Array(100)), /carry/);
  } finally {
    fs.closeSync(fd);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// ---- fuzz: whatever the header and bytes, the addon returns a verdict and stays in bounds -----------

test('fuzz: 20000 mutated virtio headers / packets through gsoSplit and groCoalesce never crash, outputs stay in slots', () => {
  let seed = 12345;
  const rnd = (n: number): number => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed % n;
  };
  const base = superPacket(pattern(6000), ACK | PSH, 1000);
  const max = 16;
  const buf = Buffer.alloc(STRIDE * max);
  const lens = new Int32Array(max);
  let refused = 0;
  for (let i = 0; i < 20000; i++) {
    const b = Buffer.from(base.subarray(0, 10 + rnd(base.length - 9)));
    for (let k = rnd(6); k >= 0; k--) b[rnd(Math.min(b.length, 80))] = rnd(256);
    let n: number;
    try {
      n = io.gsoSplit!(b, buf, STRIDE, max, lens);
    } catch (e) {
      assert.match((e as Error).message, /more segments than max/); // the test's batch was too small: a verdict too
      continue;
    }
    if (n < 0) refused++;
    for (let s = 0; s < n; s++) assert.ok(lens[s] > 0 && lens[s] <= STRIDE, `segment ${s} length ${lens[s]}`);
    // the same bytes (without the virtio header) as a receive batch to coalesce
    const pkts = [b.subarray(10), b.subarray(10), tcp({ seq: rnd(1 << 30), payload: pattern(rnd(1400)) })];
    const w = coalesce(pkts);
    assert.ok(w.length >= 1 && w.length <= 3);
  }
  assert.ok(refused > 1000, `malformed inputs refused (${refused})`);
});
