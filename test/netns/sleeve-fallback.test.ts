// The sleeve without the native addon. First the koffi TunIo of router/fallback-io.ts alone against
// real kernels (UDP on loopback; a TUN device in a namespace we create, answering pings packet by
// packet), and the selection logic; then real routers (`weave launch`) on 2 lab hosts with the addon
// override pointing nowhere and WEAVE_SLEEVE_IO=fallback (the default build path would still load),
// so the koffi I/O carries the containers' traffic.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as path from 'path';
import { randomBytes } from 'crypto';
import { MemoryLogger, silentLogger } from '../../lib/log';
import { loadFallbackIo } from '../../router/fallback-io';
import { parseAddr } from '../../lib/addr';
import { selectSleeveIo } from '../../router/sleeve';
import type { TunIo } from '../../router/native';
import { Host, withLab } from '../lab/lab';
import { run, waitFor } from '../lab/exec';
import { iperf } from '../lab/traffic';

test('selection: the addon when it loads; else koffi with a warn line; ENOADDON when neither or native forced', () => {
  const fakeNative = {} as TunIo;
  const fakeKoffi = {} as TunIo;
  const log = new MemoryLogger();
  assert.deepEqual(selectSleeveIo(log, 'auto', () => fakeNative, () => fakeKoffi), { io: fakeNative, kind: 'native' });
  assert.equal(log.records.length, 0);
  assert.deepEqual(selectSleeveIo(log, 'auto', () => null, () => fakeKoffi), { io: fakeKoffi, kind: 'koffi' });
  assert.equal(log.records.length, 1);
  assert.equal(log.records[0].level, 'warn');
  assert.equal(log.records[0].msg, 'native data-path addon not loaded; using the koffi fallback (slower)');
  assert.deepEqual(selectSleeveIo(log, 'fallback', () => { throw new Error('must not be tried'); }, () => fakeKoffi), { io: fakeKoffi, kind: 'koffi' });
  assert.throws(() => selectSleeveIo(log, 'native', () => null, () => fakeKoffi), (e: any) => e.code === 'ENOADDON');
  assert.throws(() => selectSleeveIo(log, 'auto', () => null, () => { throw new Error('no koffi here'); }), (e: any) => e.code === 'ENOADDON' && /no koffi here/.test(e.message));
  assert.throws(() => loadFallbackIo(silentLogger(), () => { throw new Error('cannot find module koffi'); }), (e: any) => e.code === 'ENOFALLBACK');
});

test('koffi UDP on loopback: sendmmsg/recvmmsg batches with addresses, truncation mark, EMSGSIZE, poll/unpoll', async () => {
  const io = loadFallbackIo(silentLogger());
  const lo = parseAddr('127.0.0.1');
  const a = io.udpOpen(lo, 0, 1 << 20, 1 << 20);
  const b = io.udpOpen(lo, 0, 1 << 20, 1 << 20);
  let handle: unknown = null;
  try {
    const pa = io.udpPort(a);
    const pb = io.udpPort(b);
    assert.ok(pa > 0 && pb > 0 && pa !== pb);
    const buf = Buffer.alloc(70000);
    buf.write('first', 0);
    buf.write('second', 100);
    const errs = new Int32Array(3);
    const sent = io.sendBatch(a, buf, Int32Array.of(0, 100, 2000), Int32Array.of(10, 1500, 66000), Uint32Array.of(lo, lo, lo), Int32Array.of(pb, pb, pb), errs, 3);
    assert.equal(sent, 2);
    assert.deepEqual([...errs], [0, 0, 90], 'the 66000-byte datagram is EMSGSIZE, the others went');
    // a datagram longer than the slot
    io.sendBatch(a, buf, Int32Array.of(0), Int32Array.of(3000), Uint32Array.of(lo), Int32Array.of(pb), new Int32Array(1), 1);
    const rbuf = Buffer.alloc(2048 * 8);
    const lens = new Int32Array(8);
    const ips = new Uint32Array(8);
    const ports = new Int32Array(8);
    const got: Array<[number, number, number, string]> = [];
    let wakeups = 0;
    await new Promise<void>((resolve) => {
      handle = io.poll(b, () => {
        wakeups++;
        const n = io.recvBatch(b, rbuf, 2048, 8, lens, ips, ports);
        for (let i = 0; i < n; i++) got.push([lens[i], ips[i], ports[i], rbuf.toString('latin1', i * 2048, i * 2048 + 6).replace(/\0.*$/, '')]);
        if (got.length >= 3) resolve();
      });
    });
    assert.deepEqual(got, [[10, lo, pa, 'first'], [1500, lo, pa, 'second'], [2049, lo, pa, 'first']]);
    assert.ok(wakeups >= 1);
    io.unpoll(handle);
    const before = wakeups;
    io.sendBatch(a, buf, Int32Array.of(0), Int32Array.of(10), Uint32Array.of(lo), Int32Array.of(pb), new Int32Array(1), 1);
    // after unpoll the datagram stays queued (no callback drained it)
    await waitFor('datagram queued', () => io.recvBatch(b, rbuf, 2048, 1, lens, ips, ports) === 1, { timeoutMs: 2000, intervalMs: 10 });
    assert.equal(wakeups, before);
    assert.equal(io.recvBatch(b, rbuf, 2048, 1, lens, ips, ports), 0, 'empty socket: 0, not an error');
    assert.throws(() => io.sendBatch(a, buf, Int32Array.of(69999), Int32Array.of(100), Uint32Array.of(lo), Int32Array.of(pb), errs, 1), /outside buffer/);
  } finally {
    if (handle) io.unpoll(handle);
    io.closeFd(a);
    io.closeFd(b);
  }
});

/** Turns the ICMP echo request at buf[off, off+len) into its reply, in place. */
function echoReply(buf: Buffer, off: number, len: number): void {
  const ihl = (buf[off] & 0x0f) * 4;
  const src = buf.readUInt32BE(off + 12);
  buf.writeUInt32BE(buf.readUInt32BE(off + 16), off + 12);
  buf.writeUInt32BE(src, off + 16);
  const icmp = off + ihl;
  buf[icmp] = 0;
  buf.writeUInt16BE(0, icmp + 2);
  let sum = 0;
  for (let i = icmp; i < off + len - 1; i += 2) sum += buf.readUInt16BE(i);
  if ((len - ihl) & 1) sum += buf[off + len - 1] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  buf.writeUInt16BE(~sum & 0xffff, icmp + 2);
}

test('koffi TUN in a namespace: packets read one by one with their lengths, batched replies arrive as separate packets', { timeout: 30_000 }, async () => {
  const io = loadFallbackIo(silentLogger());
  const id = randomBytes(3).toString('hex');
  const ns = `wfb-${id}`;
  const tun = `wtf${id}`;
  let fd = -1;
  let handle: unknown = null;
  try {
    await run(['ip', 'netns', 'add', ns]);
    fd = io.openTun(tun, false);
    await run(['ip', 'link', 'set', 'dev', tun, 'netns', ns]);
    await run(['ip', '-n', ns, 'link', 'set', 'dev', tun, 'mtu', '1400', 'up']);
    await run(['ip', '-n', ns, 'addr', 'add', '10.77.0.1/24', 'dev', tun]);
    const S = 2048;
    const buf = Buffer.alloc(S * 16);
    const lens = new Int32Array(16);
    const offs = new Int32Array(16);
    const wl = new Int32Array(16);
    const sizes: number[] = [];
    handle = io.poll(fd, () => {
      const n = io.readBatch(fd, buf, S, 16, lens);
      let k = 0;
      for (let i = 0; i < n; i++) {
        const off = i * S;
        // IPv4 ICMP echo requests to our pretend peer; anything else (IPv6 chatter) is ignored
        if (buf[off] >> 4 !== 4 || buf[off + 9] !== 1 || buf[off + 20] !== 8) continue;
        sizes.push(lens[i]);
        echoReply(buf, off, lens[i]);
        offs[k] = off;
        wl[k++] = lens[i];
      }
      if (k) assert.equal(io.writeBatch(fd, buf, offs, wl, k), k);
    });
    // -l 4: four requests leave at once, so reads and writes are batches of several packets
    const small = await run(['ip', 'netns', 'exec', ns, 'ping', '-c', '8', '-l', '4', '-i', '0.2', '-W', '2', '10.77.0.2'], { allowFail: true, timeoutMs: 15_000 });
    assert.equal(small.code, 0, small.stdout + small.stderr);
    assert.match(small.stdout, /8 received/);
    const full = await run(['ip', 'netns', 'exec', ns, 'ping', '-c', '3', '-l', '3', '-s', '1372', '-M', 'do', '-W', '2', '10.77.0.2'], { allowFail: true, timeoutMs: 15_000 });
    assert.equal(full.code, 0, full.stdout + full.stderr);
    assert.ok(sizes.filter((x) => x === 84).length >= 8, `small packet sizes ${sizes}`);
    assert.ok(sizes.filter((x) => x === 1400).length >= 3, `full-size packet sizes ${sizes}`);
  } finally {
    if (handle) io.unpoll(handle);
    if (fd >= 0) io.closeFd(fd);
    await run(['ip', 'netns', 'del', ns], { allowFail: true });
  }
});

const FALLBACK = { WEAVE_NATIVE_ADDON: '/nonexistent/weave_tunio.node', WEAVE_SLEEVE_IO: 'fallback' };
const WARN = 'native data-path addon not loaded; using the koffi fallback (slower)';


function logOf(h: Host): string {
  const f = path.join(h.dataDir, 'weave.log');
  return fs.existsSync(f) ? fs.readFileSync(f, 'utf8') : '';
}

for (const encrypted of [true, false]) {
  test(`koffi fallback I/O, 2 hosts ${encrypted ? 'with' : 'without'} a password: ping, iperf3 TCP and UDP; report and log say so`, async () => {
    await withLab(async (lab) => {
      const env: Record<string, string> = { ...FALLBACK, ...(encrypted ? { WEAVE_PASSWORD: 'fallback test password' } : {}) };
      const h1 = await lab.addHost('h1');
      const h2 = await lab.addHost('h2');
      const c1 = await lab.addContainer('c1');
      const c2 = await lab.addContainer('c2');
      await h1.weave(['launch', '--nickname', 'h1', '--no-fastdp'], { env });
      await h2.weave(['launch', '--nickname', 'h2', '--no-fastdp', h1.ip], { env });
      await h1.weave(['attach', '10.32.1.1/12', c1.ns]);
      await h2.weave(['attach', '10.32.2.1/12', c2.ns]);

      for (const h of [h1, h2]) {
        const rep = await h.report();
        assert.equal(rep.sleeve.io, 'koffi', `${h.name} sleeve io`);
        assert.equal(rep.sleeve.mode, 'inline', `${h.name} sleeve mode`);
        assert.equal(rep.sleeve.crypto, 'engine', `${h.name}: without the addon, sealing goes through the crypto engine`);
        // the warn line reaches the router's log file (pino may flush it a little after start)
        await waitFor(`${h.name} log to carry the fallback warning`, () => logOf(h).includes(WARN), { timeoutMs: 5000, intervalMs: 100 });
        const line = logOf(h).split('\n').find((l) => l.includes(WARN))!;
        assert.equal(JSON.parse(line).level, 40, 'logged at warn level');
      }

      const rep = await waitFor('h1: sleeve established', async () => {
        const r = await h1.report();
        return r.router.connections.some((c: any) => c.state === 'established' && c.overlay === 'sleeve') ? r : undefined;
      }, { timeoutMs: 30_000, intervalMs: 300 });
      const conn = rep.router.connections.find((c: any) => c.state === 'established');
      assert.equal(conn.encrypted, encrypted);

      await waitFor('c1 to ping c2', async () => (await c1.exec(['ping', '-c', '1', '-W', '1', '10.32.2.1'], { allowFail: true })).code === 0, { timeoutMs: 20_000, intervalMs: 200 });
      await c2.exec(['ping', '-c', '3', '-i', '0.2', '10.32.1.1']);
      // a full-size ICMP packet checks that packets are neither merged nor cut at the TUN
      await c1.exec(['ping', '-c', '2', '-i', '0.2', '-s', String(conn.mtu - 28), '-M', 'do', '10.32.2.1']);

      const tcp = await iperf(c1, c2, '10.32.2.1');
      assert.ok(tcp.end.sum_received.bytes > 1_000_000, `TCP moved ${tcp.end.sum_received.bytes} bytes`);
      console.log(`# koffi fallback, ${encrypted ? 'encrypted' : 'unencrypted'}: iperf3 TCP ${(tcp.end.sum_received.bits_per_second / 1e9).toFixed(3)} Gbit/s`);
      const udp = await iperf(c1, c2, '10.32.2.1', ['-u', '-b', '30M']);
      assert.ok(udp.end.sum.packets > 1000, 'UDP flowed');
      assert.ok(udp.end.sum.lost_percent < 20, `UDP loss ${udp.end.sum.lost_percent}%`);

      // the data path went through the fallback (counters move) and the routers are still up
      const after = await h2.report();
      assert.ok(after.sleeve.counters.tunOutPackets > 1000 || after.sleeve.counters.udpInPackets > 1000, `counters: ${JSON.stringify(after.sleeve.counters)}`);
    });
  });
}
