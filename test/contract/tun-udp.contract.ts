// The TUN/UDP I/O contract: what the sleeve's packet engine (router/datapath.ts) relies on from its
// devices, run against every back-end of router/native.ts's TunIo: the project's addon (native/tunio.c)
// and the koffi fallback (router/fallback-io.ts), both through the same device classes the sleeve uses
// (router/tun.ts NativeTun, router/udp.ts NativeUdp). Real kernels: UDP on loopback, each TUN in a
// network namespace of the suite's own (created in this namespace, moved there at once; its traffic
// never leaves that namespace).
//
// Covered: batch reads and writes (one packet or datagram per slot, exact lengths, several per call,
// max honoured), empty reads (0, never an error), sizes and truncation, per-datagram send errors,
// addresses and ports both ways, readiness callbacks (level-triggered; none after setReadable(null)),
// close idempotence and views on another thread's fd, bad arguments, and the offloads.
//
// Documented behaviours (the same on both back-ends unless said):
// - A TUN packet longer than the slot is cut to the slot: the kernel truncates it silently and reports
//   the slot's length, so nothing marks it (unlike UDP, whose truncated datagrams read as stride + 1).
//   The sleeve's stride is above the TUN MTU, so only a TUN MTU raised under a running sleeve hits it.
// - A full TUN queue (EAGAIN on write) drops the rest of the batch; not provoked here (the kernel
//   takes written packets straight into its stack).
// - Offloads (TUN TSO/virtio headers, UDP GSO and GRO) are the addon's: on koffi NativeTun refuses
//   offload with EINVAL, NativeUdp.gso is ignored and enableGro() says false, and the datagrams in and
//   out are the same either way.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'crypto';
import { NativeTun } from '../../router/tun';
import { EMSGSIZE, NativeUdp } from '../../router/udp';
import { ADDON_MAX_BATCH, type TunIo } from '../../router/native';
import { parseAddr } from '../../lib/addr';
import { ipChecksum } from '../../router/icmp';
import { run, waitFor } from '../lab/exec';
import { ipv4Packet } from '../fakes/channel-tun';

export interface TunUdpBackend {
  io: TunIo;
  /** the back-end has the addon's offloads (TUN virtio headers, UDP GSO/GRO) */
  offloads: boolean;
}

const LO = parseAddr('127.0.0.1');
const TUN_ADDR = '10.77.0.1';
const PEER_ADDR = '10.77.0.2';
const TUN_MTU = 1400;

/** A TUN of our own, moved into a namespace of our own with TUN_ADDR/24 on it. */
interface TunNs { ns: string; name: string; tun: NativeTun }

async function tunInNs(io: TunIo, offload = false): Promise<TunNs> {
  const id = randomBytes(3).toString('hex');
  const ns = `wct-${id}`;
  const name = `wct${id}`;
  await run(['ip', 'netns', 'add', ns]);
  let tun: NativeTun | undefined;
  try {
    // IPv4 only: without this the kernel sends IPv6 chatter into the TUN
    for (const k of ['all', 'default']) await run(['ip', 'netns', 'exec', ns, 'sysctl', '-qw', `net.ipv6.conf.${k}.disable_ipv6=1`]);
    tun = new NativeTun(io, name, undefined, offload);
    await run(['ip', 'link', 'set', 'dev', name, 'netns', ns]);
    await run(['ip', '-n', ns, 'link', 'set', 'dev', name, 'mtu', String(TUN_MTU), 'up']);
    await run(['ip', '-n', ns, 'addr', 'add', `${TUN_ADDR}/24`, 'dev', name]);
    return { ns, name, tun };
  } catch (e) {
    tun?.close();
    await run(['ip', 'netns', 'del', ns], { allowFail: true });
    throw e;
  }
}

async function dropTunNs(t: TunNs): Promise<void> {
  t.tun.close();
  await run(['ip', 'netns', 'del', t.ns], { allowFail: true });
}

/** From inside the namespace: UDP datagrams of these payload sizes to PEER_ADDR:9, in order (routed into the TUN). */
async function sendFromNs(ns: string, sizes: number[]): Promise<void> {
  const script = `const s=require('dgram').createSocket('udp4');const z=${JSON.stringify(sizes)};let i=0;const next=()=>{if(i>=z.length){s.close();return;}const b=Buffer.alloc(z[i],0x61);if(b.length>=4)b.writeUInt32BE(i,0);i++;s.send(b,9,'${PEER_ADDR}',next)};next();`;
  await run(['ip', 'netns', 'exec', ns, process.execPath, '-e', script]);
}

/** IPv4 UDP packets to PEER_ADDR:9 in slots of buf: [index sent, length]. */
function udpToPeer(buf: Buffer, stride: number, lens: Int32Array, n: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  const peer = parseAddr(PEER_ADDR);
  for (let i = 0; i < n; i++) {
    const o = i * stride;
    if (lens[i] < 28 || buf[o] >> 4 !== 4 || buf[o + 9] !== 17 || buf.readUInt32BE(o + 16) !== peer || buf.readUInt16BE(o + 22) !== 9) continue;
    out.push([lens[i] >= 32 ? buf.readUInt32BE(o + 28) : -1, lens[i]]);
  }
  return out;
}

/** An ICMP echo request PEER_ADDR -> TUN_ADDR of `total` bytes (IPv4 header included). */
function echoRequest(id: number, total: number): Buffer {
  const icmp = Buffer.alloc(total - 20, 0x5a);
  icmp[0] = 8;
  icmp[1] = 0;
  icmp.writeUInt16BE(id, 4);
  icmp.writeUInt16BE(1, 6);
  icmp.writeUInt16BE(0, 2);
  icmp.writeUInt16BE(ipChecksum(icmp, 0, icmp.length), 2);
  return ipv4Packet({ src: PEER_ADDR, dst: TUN_ADDR, proto: 1, payload: icmp, id });
}

/** Echo replies TUN_ADDR -> PEER_ADDR among what was read: [echo id, length]. */
function echoReplies(buf: Buffer, stride: number, lens: Int32Array, n: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let i = 0; i < n; i++) {
    const o = i * stride;
    if (lens[i] < 28 || buf[o] >> 4 !== 4 || buf[o + 9] !== 1 || buf[o + 20] !== 0) continue;
    out.push([buf.readUInt16BE(o + 24), lens[i]]);
  }
  return out;
}

/** Reads until `want` matching items came (or the deadline), in batches of max. */
async function readUntil(tun: NativeTun, stride: number, max: number, pick: (buf: Buffer, stride: number, lens: Int32Array, n: number) => Array<[number, number]>, want: number): Promise<Array<[number, number]>> {
  const buf = Buffer.alloc(stride * max);
  const lens = new Int32Array(max);
  const got: Array<[number, number]> = [];
  await waitFor(`${want} packets from the TUN`, () => {
    const n = tun.readBatch(buf, stride, max, lens);
    got.push(...pick(buf, stride, lens, n));
    return got.length >= want;
  }, { timeoutMs: 5000, intervalMs: 10 });
  return got;
}

function udpPair(io: TunIo): { a: NativeUdp; b: NativeUdp } {
  const a = new NativeUdp(io, LO, 0, 1 << 20);
  try {
    return { a, b: new NativeUdp(io, LO, 0, 1 << 20) };
  } catch (e) {
    a.close();
    throw e;
  }
}

/** A send batch: datagram i is payloads[i] to dsts[i] (port on loopback). */
function batch(payloads: Buffer[], dsts: number[]): { buf: Buffer; offs: Int32Array; lens: Int32Array; ips: Uint32Array; ports: Int32Array; errs: Int32Array; n: number } {
  const n = payloads.length;
  const buf = Buffer.alloc(payloads.reduce((s, p) => s + p.length, 0) + 1);
  const offs = new Int32Array(n);
  const lens = new Int32Array(n);
  let at = 0;
  payloads.forEach((p, i) => {
    p.copy(buf, at);
    offs[i] = at;
    lens[i] = p.length;
    at += p.length;
  });
  return { buf, offs, lens, ips: new Uint32Array(n).fill(LO), ports: Int32Array.from(dsts), errs: new Int32Array(n).fill(-1), n };
}

function tagged(i: number, size: number): Buffer {
  const b = Buffer.alloc(size, 0x33);
  if (size >= 4) b.writeUInt32BE(i, 0);
  return b;
}

/** Receives until `want` datagrams came: [tag, length, ip, port]. */
async function recvUntil(u: NativeUdp, stride: number, want: number, max = 16): Promise<Array<[number, number, number, number]>> {
  const buf = Buffer.alloc(stride * max);
  const lens = new Int32Array(max);
  const ips = new Uint32Array(max);
  const ports = new Int32Array(max);
  const got: Array<[number, number, number, number]> = [];
  await waitFor(`${want} datagrams`, () => {
    const n = u.recvBatch(buf, stride, max, lens, ips, ports);
    for (let i = 0; i < n; i++) got.push([lens[i] >= 4 && lens[i] <= stride ? buf.readUInt32BE(i * stride) : -1, lens[i], ips[i], ports[i]]);
    return got.length >= want;
  }, { timeoutMs: 5000, intervalMs: 5 });
  return got;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code;
  }
  return undefined;
}

export function describeTunUdp(name: string, factory: () => TunUdpBackend): void {
  describe(`TUN/UDP I/O contract: ${name}`, () => {
    // made now: test names say what this back-end does (a back-end that cannot load fails the file)
    const b = factory();

    // ---- UDP ------------------------------------------------------------------------------------

    test('UDP: port 0 binds a free port and reports it; an empty socket reads 0', () => {
      const { a, b: c } = udpPair(b.io);
      try {
        assert.ok(a.port > 0 && c.port > 0 && a.port !== c.port);
        const buf = Buffer.alloc(2048 * 4);
        assert.equal(a.recvBatch(buf, 2048, 4, new Int32Array(4), new Uint32Array(4), new Int32Array(4)), 0);
        assert.equal(a.recvBatch(buf, 2048, 0, new Int32Array(0), new Uint32Array(0), new Int32Array(0)), 0, 'max 0 reads nothing');
        assert.equal(codeOf(() => new NativeUdp(b.io, LO, a.port)), 'EUDP', 'a port in use is refused, with a code the caller can report');
      } finally {
        a.close();
        c.close();
      }
    });

    test('UDP: one batch to two receivers arrives one datagram per slot, in order, with the sender\'s address and port', async () => {
      const { a, b: c } = udpPair(b.io);
      const d = new NativeUdp(b.io, LO, 0, 1 << 20);
      try {
        const sizes = [0, 1, 100, 1400, 8000, 65_000];
        const payloads = sizes.map((s, i) => tagged(i, s));
        const dsts = sizes.map((_, i) => (i % 2 ? d.port : c.port));
        const m = batch(payloads, dsts);
        assert.equal(a.sendBatch(m.buf, m.offs, m.lens, m.ips, m.ports, m.errs, m.n), m.n);
        assert.deepEqual([...m.errs], sizes.map(() => 0), 'errs[i] = 0 for every datagram sent');
        const atC = await recvUntil(c, 65_536, 3, 4);
        const atD = await recvUntil(d, 65_536, 3, 4);
        const expect = (k: number): Array<[number, number, number, number]> => sizes.map((s, i) => [s >= 4 ? i : -1, s, LO, a.port] as [number, number, number, number]).filter((_, i) => i % 2 === k);
        assert.deepEqual(atC, expect(0));
        assert.deepEqual(atD, expect(1));
      } finally {
        a.close();
        c.close();
        d.close();
      }
    });

    test(`UDP: batches up to ${ADDON_MAX_BATCH} both ways, max honoured; more is EINVAL`, async () => {
      const { a, b: c } = udpPair(b.io);
      try {
        const n = ADDON_MAX_BATCH;
        const m = batch(Array.from({ length: n }, (_, i) => tagged(i, 200)), new Array(n).fill(c.port));
        assert.equal(a.sendBatch(m.buf, m.offs, m.lens, m.ips, m.ports, m.errs, n), n);
        const got = await recvUntil(c, 256, n, ADDON_MAX_BATCH);
        assert.deepEqual(got.map(([t]) => t), Array.from({ length: n }, (_, i) => i));
        // max is a bound, not a target
        const m2 = batch([tagged(0, 10), tagged(1, 10), tagged(2, 10)], [c.port, c.port, c.port]);
        a.sendBatch(m2.buf, m2.offs, m2.lens, m2.ips, m2.ports, m2.errs, 3);
        await sleep(20);
        const buf = Buffer.alloc(64 * 2);
        const lens = new Int32Array(2);
        assert.equal(c.recvBatch(buf, 64, 2, lens, new Uint32Array(2), new Int32Array(2)), 2);
        assert.equal(c.recvBatch(buf, 64, 2, lens, new Uint32Array(2), new Int32Array(2)), 1);
        const big = batch(Array.from({ length: n + 1 }, () => Buffer.alloc(1)), new Array(n + 1).fill(c.port));
        assert.equal(codeOf(() => a.sendBatch(big.buf, big.offs, big.lens, big.ips, big.ports, big.errs, n + 1)), 'EINVAL');
        assert.equal(codeOf(() => c.recvBatch(Buffer.alloc(10 * (n + 1)), 10, n + 1, new Int32Array(n + 1), new Uint32Array(n + 1), new Int32Array(n + 1))), 'EINVAL');
      } finally {
        a.close();
        c.close();
      }
    });

    test('UDP: a datagram longer than the slot reads as stride + 1; EMSGSIZE fails only its own datagram', async () => {
      const { a, b: c } = udpPair(b.io);
      try {
        const m = batch([tagged(0, 3000), tagged(1, 66_000), tagged(2, 10)], [c.port, c.port, c.port]);
        assert.equal(a.sendBatch(m.buf, m.offs, m.lens, m.ips, m.ports, m.errs, 3), 2);
        assert.deepEqual([...m.errs], [0, EMSGSIZE, 0], 'above the largest datagram: EMSGSIZE for it alone');
        const got = await recvUntil(c, 2048, 2);
        assert.deepEqual(got.map(([, len]) => len), [2049, 10], 'cut to the slot and marked stride + 1; the next in its own slot');
        assert.equal(got[1][0], 2);
      } finally {
        a.close();
        c.close();
      }
    });

    test('UDP: sending to a port nobody listens on is no error, then or on later reads', async () => {
      const { a, b: c } = udpPair(b.io);
      const deadPort = c.port;
      c.close();
      const d = new NativeUdp(b.io, LO, 0, 1 << 20);
      try {
        const m = batch([tagged(0, 10)], [deadPort]);
        assert.equal(a.sendBatch(m.buf, m.offs, m.lens, m.ips, m.ports, m.errs, 1), 1);
        await sleep(50);
        const buf = Buffer.alloc(2048);
        assert.equal(a.recvBatch(buf, 2048, 1, new Int32Array(1), new Uint32Array(1), new Int32Array(1)), 0);
        const m2 = batch([tagged(7, 10)], [a.port]);
        assert.equal(d.sendBatch(m2.buf, m2.offs, m2.lens, m2.ips, m2.ports, m2.errs, 1), 1);
        assert.deepEqual((await recvUntil(a, 2048, 1)).map(([t]) => t), [7], 'the socket still receives');
      } finally {
        a.close();
        d.close();
      }
    });

    test('UDP: readiness callbacks run while datagrams wait (level-triggered) and never after setReadable(null)', async () => {
      const { a, b: c } = udpPair(b.io);
      try {
        let calls = 0;
        const got: number[] = [];
        const buf = Buffer.alloc(2048 * 8);
        const lens = new Int32Array(8);
        c.setReadable(() => {
          calls++;
          if (calls < 3) return; // not draining: level-triggered readiness calls again
          const n = c.recvBatch(buf, 2048, 8, lens, new Uint32Array(8), new Int32Array(8));
          for (let i = 0; i < n; i++) got.push(buf.readUInt32BE(i * 2048));
        });
        const m = batch([tagged(1, 50), tagged(2, 50)], [c.port, c.port]);
        a.sendBatch(m.buf, m.offs, m.lens, m.ips, m.ports, m.errs, 2);
        await waitFor('both datagrams through the callback', () => got.length === 2, { timeoutMs: 5000, intervalMs: 5 });
        assert.ok(calls >= 3, `called again while not drained (${calls})`);
        c.setReadable(null);
        const before = calls;
        a.sendBatch(m.buf, m.offs, m.lens, m.ips, m.ports, m.errs, 2);
        await sleep(500); // past the koffi poller's 200 ms wait
        assert.equal(calls, before, 'no callback after setReadable(null)');
        assert.equal((await recvUntil(c, 2048, 2)).length, 2, 'the datagrams wait in the socket');
      } finally {
        a.close();
        c.close();
      }
    });

    test(`UDP: ${b.offloads ? 'GSO on send and GRO on receive leave' : 'gso set and enableGro() refused (no offloads here) leave'} one datagram per slot, in order`, async () => {
      const { a, b: c } = udpPair(b.io);
      try {
        a.gso = true;
        assert.equal(c.enableGro(), b.offloads, b.offloads ? 'the addon turns GRO on' : 'no GRO without the addon');
        // a run of equal-size datagrams to one address, a shorter one ending it (one GSO message on the addon)
        const sizes = [...new Array(12).fill(1200), 700, 1200];
        const m = batch(sizes.map((s, i) => tagged(i, s)), sizes.map(() => c.port));
        assert.equal(a.sendBatch(m.buf, m.offs, m.lens, m.ips, m.ports, m.errs, m.n), m.n);
        const got = await recvUntil(c, 2048, sizes.length);
        assert.deepEqual(got.map(([t, len]) => [t, len]), sizes.map((s, i) => [i, s]));
      } finally {
        a.close();
        c.close();
      }
    });

    test('UDP: bad arguments are EINVAL; close is idempotent; a view on another thread\'s fd leaves it open', async () => {
      const { a, b: c } = udpPair(b.io);
      try {
        const m = batch([tagged(0, 10)], [c.port]);
        m.offs[0] = m.buf.length - 2;
        assert.equal(codeOf(() => a.sendBatch(m.buf, m.offs, m.lens, m.ips, m.ports, m.errs, 1)), 'EINVAL', 'a datagram outside the buffer');
        assert.equal(codeOf(() => c.recvBatch(Buffer.alloc(100), 64, 2, new Int32Array(2), new Uint32Array(2), new Int32Array(2))), 'EINVAL', 'slots beyond the buffer');
        const view = new NativeUdp(b.io, 0, 0, 0, c.fd);
        assert.equal(view.port, c.port);
        view.close();
        view.close();
        const ok = batch([tagged(5, 10)], [c.port]);
        a.sendBatch(ok.buf, ok.offs, ok.lens, ok.ips, ok.ports, ok.errs, 1);
        assert.deepEqual((await recvUntil(c, 2048, 1)).map(([t]) => t), [5], 'the owner\'s socket still works');
      } finally {
        a.close();
        a.close();
        c.close();
      }
      a.setReadable(null);
      assert.equal(a.fd, -1);
    });

    // ---- TUN ------------------------------------------------------------------------------------

    const tuns: TunNs[] = [];
    after(async () => {
      for (const t of tuns) await dropTunNs(t);
    });
    const mkTun = async (offload = false): Promise<TunNs> => {
      const t = await tunInNs(b.io, offload);
      tuns.push(t);
      return t;
    };

    test('TUN: an empty device reads 0; packets the kernel routes in arrive one per slot with their lengths, several per call, max honoured', async () => {
      const t = await mkTun();
      const S = 2048;
      const buf = Buffer.alloc(S * 8);
      const lens = new Int32Array(8);
      assert.equal(t.tun.readBatch(buf, S, 8, lens), 0);
      const sizes = [0, 1, 100, 1000, TUN_MTU - 28];
      await sendFromNs(t.ns, sizes);
      await sleep(50);
      // all five are queued once the sender is done: max 2 takes two, the next call the rest
      const first = t.tun.readBatch(buf, S, 2, lens);
      assert.equal(first, 2, 'max bounds the batch');
      const got = udpToPeer(buf, S, lens, first);
      const n = t.tun.readBatch(buf, S, 8, lens);
      assert.ok(n >= 3, `the rest in one call (${n})`);
      got.push(...udpToPeer(buf, S, lens, n));
      assert.deepEqual(got, sizes.map((s, i) => [s >= 4 ? i : -1, 28 + s]));
      assert.equal(t.tun.readBatch(buf, S, 8, lens), 0, 'drained: 0 again');
    });

    test('TUN: a packet longer than the slot is cut to the slot (unmarked); the next lands in its own slot', async () => {
      const t = await mkTun();
      await sendFromNs(t.ns, [1000, 10]);
      const got = await readUntil(t.tun, 200, 4, (buf, stride, lens, n) => {
        const out: Array<[number, number]> = [];
        for (let i = 0; i < n; i++) if (buf[i * stride] >> 4 === 4 && buf[i * stride + 9] === 17) out.push([i, lens[i]]);
        return out;
      }, 2);
      assert.deepEqual(got.map(([, len]) => len), [200, 38]);
    });

    test('TUN: a written batch reaches the kernel as separate packets; one it refuses is skipped, the rest go', async () => {
      const t = await mkTun();
      const reqs = [echoRequest(1, 84), echoRequest(2, 600), Buffer.from([0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13]), echoRequest(3, TUN_MTU)];
      const S = 2048;
      const wbuf = Buffer.alloc(S * reqs.length);
      const offs = new Int32Array(reqs.length);
      const lens = new Int32Array(reqs.length);
      reqs.forEach((r, i) => {
        r.copy(wbuf, i * S);
        offs[i] = i * S;
        lens[i] = r.length;
      });
      assert.equal(t.tun.writeBatch(wbuf, offs, lens, reqs.length), 3, 'the non-IP packet is refused and skipped');
      const replies = await readUntil(t.tun, S, 8, echoReplies, 3);
      assert.deepEqual(replies.sort((x, y) => x[0] - y[0]), [[1, 84], [2, 600], [3, TUN_MTU]], 'each request answered alone, sizes kept');
      lens[0] = wbuf.length + 1;
      assert.equal(codeOf(() => t.tun.writeBatch(wbuf, offs, lens, 1)), 'EINVAL', 'a packet outside the buffer');
      assert.equal(codeOf(() => t.tun.readBatch(Buffer.alloc(100), 64, 2, new Int32Array(2))), 'EINVAL', 'slots beyond the buffer');
    });

    test('TUN: readiness callbacks are level-triggered and stop at setReadable(null)', async () => {
      const t = await mkTun();
      const S = 2048;
      const buf = Buffer.alloc(S * 8);
      const lens = new Int32Array(8);
      let calls = 0;
      const got: Array<[number, number]> = [];
      t.tun.setReadable(() => {
        calls++;
        if (calls < 3) return;
        got.push(...udpToPeer(buf, S, lens, t.tun.readBatch(buf, S, 8, lens)));
      });
      await sendFromNs(t.ns, [20, 30]);
      await waitFor('both packets through the callback', () => got.length === 2, { timeoutMs: 5000, intervalMs: 5 });
      assert.ok(calls >= 3, `called again while not drained (${calls})`);
      t.tun.setReadable(null);
      const before = calls;
      await sendFromNs(t.ns, [40]);
      await sleep(500);
      assert.equal(calls, before, 'no callback after setReadable(null)');
      assert.deepEqual((await readUntil(t.tun, S, 8, udpToPeer, 1)).map(([, len]) => len), [68], 'the packet waits in the device');
    });

    test('TUN: close is idempotent; a view on another thread\'s fd leaves it open', async () => {
      const t = await mkTun();
      const view = new NativeTun(b.io, t.name, t.tun.fd);
      view.setReadable(() => {});
      view.close();
      view.close();
      await sendFromNs(t.ns, [12]);
      assert.deepEqual((await readUntil(t.tun, 2048, 4, udpToPeer, 1)).map(([, len]) => len), [40], 'the owner\'s fd still reads');
      const fd = t.tun.fd;
      t.tun.close();
      t.tun.close();
      assert.equal(t.tun.fd, -1);
      assert.ok(fd >= 0);
    });

    test(b.offloads ? 'TUN offloads: packets read and write as without them' : 'TUN offloads: NativeTun refuses them with EINVAL (the addon\'s)', async () => {
      if (!b.offloads) {
        assert.equal(codeOf(() => new NativeTun(b.io, `wcx${randomBytes(2).toString('hex')}`, undefined, true)), 'EINVAL');
        return;
      }
      const t = await mkTun(true);
      assert.ok(t.tun.offloadStats, 'counters exist with offloads');
      await sendFromNs(t.ns, [1, 500, TUN_MTU - 28]);
      assert.deepEqual((await readUntil(t.tun, 2048, 8, udpToPeer, 3)).map(([, len]) => len), [29, 528, TUN_MTU], 'packets, not virtio headers');
      const req = [echoRequest(9, 84), echoRequest(10, 1000)];
      const wbuf = Buffer.concat(req);
      assert.equal(t.tun.writeBatch(wbuf, Int32Array.of(0, 84), Int32Array.of(84, 1000), 2), 2);
      const replies = await readUntil(t.tun, 2048, 8, echoReplies, 2);
      assert.deepEqual(replies.sort((x, y) => x[0] - y[0]), [[9, 84], [10, 1000]]);
    });
  });
}
