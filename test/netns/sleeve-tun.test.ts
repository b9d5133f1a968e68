// The data-path addon against real kernels: batched UDP on loopback (with DF / EMSGSIZE), and two
// Sleeve instances in this process whose TUN devices live in two namespaces we create, joined by
// UDP over loopback: ping (small and 10 KiB) and an iperf3 TCP transfer go through the kernel, the
// TUN, the sleeve's seal/open and back. The mesh connection is a fake (the lead's e2e tests run the
// real daemon); everything below the Sleeve is real.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import { realClock } from '../../lib/clock';
import { loadCrypto } from '../../mesh/crypto';
import { silentLogger } from '../../lib/log';
import type { PeerName } from '../../mesh/peer';
import type { Features, MeshConnection } from '../../mesh/types';
import { loadTunIo, type TunIo } from '../../router/native';
import { parseAddr } from '../../lib/addr';
import { PrefixTable } from '../../router/prefixes';
import { Sleeve, type SleeveHandle } from '../../router/sleeve';
import { NativeTun } from '../../router/tun';
import { EMSGSIZE, NativeUdp } from '../../router/udp';
import { run, waitFor } from '../lab/exec';

const io = loadTunIo(silentLogger());

test('the native addon loads (build it with node scripts/build-native.js)', () => {
  assert.ok(io, 'native/build/Release/weave_tunio.node must load');
});

test('loader reports a missing addon with a warn line and returns null', () => {
  const warns: unknown[] = [];
  const log = { ...silentLogger(), warn: (o: unknown) => warns.push(o) } as ReturnType<typeof silentLogger>;
  assert.equal(loadTunIo(log, () => { throw new Error('nope'); }, ['/x.node']), null);
  assert.equal(warns.length, 1);
});

function waitUntil(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const check = (): void => {
      if (cond()) return resolve();
      if (Date.now() > end) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(check, 5);
    };
    check();
  });
}

test('batched UDP on loopback: sendmmsg/recvmmsg with addresses, EMSGSIZE reported per datagram', async () => {
  const tio = io as TunIo;
  const lo = parseAddr('127.0.0.1');
  const a = new NativeUdp(tio, lo, 0);
  const b = new NativeUdp(tio, lo, 0);
  try {
    const buf = Buffer.alloc(70000);
    const offs = Int32Array.of(0, 100, 2000);
    const lens = Int32Array.of(10, 1500, 66000);
    buf.write('first', 0);
    buf.write('second', 100);
    const ips = Uint32Array.of(lo, lo, lo);
    const ports = Int32Array.of(b.port, b.port, b.port);
    const errs = new Int32Array(3);
    const sent = a.sendBatch(buf, offs, lens, ips, ports, errs, 3);
    assert.equal(sent, 2);
    assert.deepEqual([...errs], [0, 0, EMSGSIZE]);
    const rbuf = Buffer.alloc(2048 * 4);
    const rl = new Int32Array(4);
    const rip = new Uint32Array(4);
    const rport = new Int32Array(4);
    let got = 0;
    b.setReadable(() => {
      const n = b.recvBatch(rbuf, 2048, 4, rl, rip, rport);
      for (let i = 0; i < n; i++) {
        assert.equal(rip[i], lo);
        assert.equal(rport[i], a.port);
      }
      if (n > 0) {
        assert.equal(rbuf.toString('latin1', 0, 5), 'first');
        assert.equal(rl[0], 10);
        if (n > 1) assert.equal(rl[1], 1500);
      }
      got += n;
    });
    await waitUntil(() => got === 2, 'two datagrams');
    // a datagram longer than the slot is reported as stride + 1 (truncated)
    a.sendBatch(buf, Int32Array.of(0), Int32Array.of(3000), Uint32Array.of(lo), Int32Array.of(b.port), new Int32Array(1), 1);
    b.setReadable(null);
    await waitUntil(() => b.recvBatch(rbuf, 2048, 1, rl, rip, rport) === 1, 'big datagram');
    assert.equal(rl[0], 2049);
    assert.throws(() => tio.recvBatch(-1 as number, rbuf, 4096, 4, rl, rip, rport), /bad arguments/);
    assert.throws(() => tio.sendBatch(3, buf, Int32Array.of(69999), Int32Array.of(100), ips, ports, errs, 1), /outside buffer/);
  } finally {
    a.close();
    b.close();
  }
});

for (const gro of [false, true]) test(`batched UDP: a run of equal-size datagrams to one address (UDP GSO) arrives as separate datagrams, in order${gro ? ' (receiver with UDP GRO: runs split from the carry, 16 slots per call)' : ''}`, async () => {
  const tio = io as TunIo;
  const lo = parseAddr('127.0.0.1');
  const a = new NativeUdp(tio, lo, 0);
  const b = new NativeUdp(tio, lo, 0);
  try {
    if (gro) {
      assert.equal(b.enableGro(), true);
      assert.equal(a.enableGro(), true);
    }
    const S = 2048;
    const n = 40;
    const buf = Buffer.alloc(S * n);
    // 30 of 1400 bytes and a shorter tail to b (one GSO run), then 10 more to a (another address)
    const lens = Int32Array.from({ length: n }, (_, i) => (i === 29 ? 700 : 1400));
    const offs = Int32Array.from({ length: n }, (_, i) => i * S);
    for (let i = 0; i < n; i++) buf.fill(i, i * S, i * S + lens[i]);
    const ips = new Uint32Array(n).fill(lo);
    const ports = Int32Array.from({ length: n }, (_, i) => (i < 30 ? b.port : a.port));
    const errs = new Int32Array(n);
    a.gso = true;
    assert.equal(a.sendBatch(buf, offs, lens, ips, ports, errs, n), n);
    assert.ok(errs.every((e) => e === 0));
    const rbuf = Buffer.alloc(S * 64);
    const rl = new Int32Array(64);
    const rip = new Uint32Array(64);
    const rport = new Int32Array(64);
    const got: number[][] = [];
    const drain = (u: NativeUdp, k: number): Promise<void> => waitUntil(() => {
      const m = u.recvBatch(rbuf, S, gro ? 16 : 64, rl, rip, rport);
      for (let i = 0; i < m; i++) {
        assert.ok(rbuf.subarray(i * S, i * S + rl[i]).every((x) => x === rbuf[i * S]), 'datagram intact');
        assert.equal(rport[i], a.port, 'sender port');
        got.push([rbuf[i * S], rl[i]]);
      }
      return got.length >= k;
    }, `${k} datagrams`);
    await drain(b, 30);
    await drain(a, 40);
    assert.deepEqual(got, Array.from({ length: n }, (_, i) => [i, lens[i]]));
    // datagrams longer than a slot: marked stride + 1 (the caller drops them), with GRO as without
    const big = Buffer.alloc(3 * 3000);
    assert.equal(a.sendBatch(big, Int32Array.of(0, 3000, 6000), Int32Array.of(3000, 3000, 3000), new Uint32Array(3).fill(lo), new Int32Array(3).fill(b.port), new Int32Array(3), 3), 3);
    const marks: number[] = [];
    await waitUntil(() => {
      const m = b.recvBatch(rbuf, S, 2, rl, rip, rport);
      for (let i = 0; i < m; i++) marks.push(rl[i]);
      return marks.length >= 3;
    }, 'three over-long datagrams');
    assert.deepEqual(marks, [S + 1, S + 1, S + 1]);
  } finally {
    a.close();
    b.close();
  }
});

test('waiter: ioWait reports a readable fd, its own event loop having work, and 0 on timeout; an idle wait sleeps', async () => {
  const tio = io as TunIo;
  const lo = parseAddr('127.0.0.1');
  const a = new NativeUdp(tio, lo, 0);
  const b = new NativeUdp(tio, lo, 0);
  const w = tio.waiterOpen!(Int32Array.of(b.fd));
  try {
    const t0 = process.hrtime.bigint();
    assert.equal(tio.ioWait!(w, 20, 50), 0);
    // an idle waiter (nothing found last time) sleeps the whole timeout in the kernel: no spin, little CPU
    const cpu0 = process.cpuUsage();
    assert.equal(tio.ioWait!(w, 50, 1000), 0);
    const cpu = process.cpuUsage(cpu0);
    assert.ok(Number(process.hrtime.bigint() - t0) / 1e6 >= 65, 'both timeouts passed');
    assert.ok(cpu.user + cpu.system < 20_000, `idle wait used ${cpu.user + cpu.system} µs CPU`);
    const buf = Buffer.from('x');
    a.sendBatch(buf, Int32Array.of(0), Int32Array.of(1), Uint32Array.of(lo), Int32Array.of(b.port), new Int32Array(1), 1);
    assert.equal(tio.ioWait!(w, 1000, 50) & 1, 1);
    const rl = new Int32Array(4);
    assert.equal(b.recvBatch(Buffer.alloc(4 * 64), 64, 4, rl, new Uint32Array(4), new Int32Array(4)), 1);
    // a message to this thread wakes the loop's own epoll fd: the wait returns WAIT_LOOP (1 << 8)
    const { port1, port2 } = new MessageChannel();
    const got = new Promise((r) => port2.once('message', r));
    port1.postMessage('hi');
    assert.equal(tio.ioWait!(w, 1000, 0), 1 << 8);
    assert.equal(await got, 'hi');
    port1.close();
  } finally {
    tio.waiterClose!(w);
    tio.waiterClose!(w);
    a.close();
    b.close();
  }
  assert.throws(() => tio.ioWait!(w, 0, 0), /waiter closed/);
});

test('UDP GSO and the path MTU: a run larger than the MTU fails per datagram with EMSGSIZE, a smaller run goes out', { timeout: 30_000 }, async () => {
  const id = randomBytes(3).toString('hex');
  const ns = `wsg-${id}`;
  try {
    await run(['ip', 'netns', 'add', ns]);
    await ipIn(ns, ['link', 'set', 'lo', 'mtu', '1300', 'up']);
    const dist = require('path').join(__dirname, '..', '..');
    const script = `
      const { loadTunIo } = require(${JSON.stringify(dist + '/router/native.js')});
      const { NativeUdp } = require(${JSON.stringify(dist + '/router/udp.js')});
      const { silentLogger } = require(${JSON.stringify(dist + '/lib/log.js')});
      const io = loadTunIo(silentLogger());
      const lo = 0x7f000001;
      const a = new NativeUdp(io, lo, 0), b = new NativeUdp(io, lo, 0);
      a.gso = true;
      const S = 2048, n = 5, buf = Buffer.alloc(S * n);
      const offs = Int32Array.from({ length: n }, (_, i) => i * S);
      const ips = new Uint32Array(n).fill(lo), ports = new Int32Array(n).fill(b.port), errs = new Int32Array(n);
      const big = a.sendBatch(buf, offs, new Int32Array(n).fill(1400), ips, ports, errs, n);
      const bigErrs = [...errs];
      const small = a.sendBatch(buf, offs, new Int32Array(n).fill(1000), ips, ports, errs, n);
      const smallErrs = [...errs];
      const rl = new Int32Array(16), rip = new Uint32Array(16), rport = new Int32Array(16), rbuf = Buffer.alloc(S * 16);
      let got = [];
      const end = Date.now() + 3000;
      (function poll() {
        const m = b.recvBatch(rbuf, S, 16, rl, rip, rport);
        for (let i = 0; i < m; i++) got.push(rl[i]);
        if (got.length < n && Date.now() < end) return setTimeout(poll, 5);
        console.log(JSON.stringify({ big, bigErrs, small, smallErrs, got, gsoOff: io.udpGsoOff() }));
        a.close(); b.close();
      })();`;
    const r = await run(['ip', 'netns', 'exec', ns, process.execPath, '-e', script], { timeoutMs: 20_000 });
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
    assert.deepEqual(out, { big: 0, bigErrs: [EMSGSIZE, EMSGSIZE, EMSGSIZE, EMSGSIZE, EMSGSIZE], small: 5, smallErrs: [0, 0, 0, 0, 0], got: [1000, 1000, 1000, 1000, 1000], gsoOff: false });
  } finally {
    await run(['ip', 'netns', 'del', ns], { allowFail: true });
  }
});

class StaticRoutes extends EventEmitter {
  constructor(readonly name: PeerName, private readonly peer: PeerName) { super(); }
  unicastNextHop(dst: PeerName): PeerName | undefined { return dst === this.peer ? this.peer : undefined; }
}

async function ipIn(ns: string, args: string[]): Promise<void> {
  await run(['ip', '-n', ns, ...args]);
}

for (const offload of [false, true]) test(`two sleeves over real TUN devices in two namespaces${offload ? ' with TUN offloads (TSO split, GSO coalesced writes)' : ''}: ping, 10 KiB ping, iperf3`, { timeout: 60_000 }, async () => {
  const tio = io as TunIo;
  const id = randomBytes(3).toString('hex');
  const nsA = `wsa-${id}`;
  const nsB = `wsb-${id}`;
  const tunA = `wta${id}`;
  const tunB = `wtb${id}`;
  const A = '02:00:00:00:01:0a';
  const B = '02:00:00:00:01:0b';
  const crypto = loadCrypto('sodium', silentLogger());
  const lo = parseAddr('127.0.0.1');
  const sleeves: Sleeve[] = [];
  try {
    await run(['ip', 'netns', 'add', nsA]);
    await run(['ip', 'netns', 'add', nsB]);
    for (const ns of [nsA, nsB]) await ipIn(ns, ['link', 'set', 'lo', 'up']);
    const mk = (name: PeerName, peer: PeerName, tunName: string, ns: string, prefix: string): Sleeve => {
      const tun = new NativeTun(tio, tunName, undefined, offload);
      const udp = new NativeUdp(tio, lo, 0);
      if (offload) {
        udp.gso = true;
        assert.equal(udp.enableGro(), true);
      }
      const prefixes = new PrefixTable(name, realClock, silentLogger());
      prefixes.setLocal([prefix]);
      const s = new Sleeve({
        name, clock: realClock, log: silentLogger(), crypto, routes: new StaticRoutes(name, peer), prefixes, tun, udp,
        host: {
          tunUp: async (dev, mtu) => {
            await run(['ip', 'link', 'set', 'dev', dev, 'netns', ns]);
            await ipIn(ns, ['link', 'set', 'dev', dev, 'mtu', String(mtu), 'up']);
          },
          setRoutes: () => {},
        },
        underlayMtu: 1500,
      });
      sleeves.push(s);
      return s;
    };
    const sa = mk(A, B, tunA, nsA, '10.32.1.0/24');
    const sb = mk(B, A, tunB, nsB, '10.32.2.0/24');
    assert.equal(sa.mode, 'workers', 'native devices run the packet loops in worker threads');
    await sa.start();
    await sb.start();
    const pa = (sa as unknown as { o: { prefixes: PrefixTable } }).o.prefixes;
    const pb = (sb as unknown as { o: { prefixes: PrefixTable } }).o.prefixes;
    pa.mergeUpdate(pb.full());
    pb.mergeUpdate(pa.full());
    await ipIn(nsA, ['addr', 'add', '10.32.1.1/24', 'dev', tunA]);
    await ipIn(nsB, ['addr', 'add', '10.32.2.1/24', 'dev', tunB]);
    await ipIn(nsA, ['route', 'add', '10.32.2.0/24', 'dev', tunA]);
    await ipIn(nsB, ['route', 'add', '10.32.1.0/24', 'dev', tunB]);

    // fake mesh connection: control messages hop between the two handles
    const key = crypto.randomBytes(32);
    const up: string[] = [];
    const ends: { a?: SleeveHandle; b?: SleeveHandle } = {};
    const feat = (name: PeerName, s: Sleeve): Features => ({ name, nickname: name, uid: 'u', connId: id, overlays: ['sleeve'], overlayParams: { sleeve: s.overlayParams() }, trusted: false, listenPort: 6783 });
    const conn = (self: [PeerName, Sleeve], other: [PeerName, Sleeve], outbound: boolean, to: () => SleeveHandle | undefined): MeshConnection => ({
      id, outbound, remoteAddr: '127.0.0.1:40000', localAddr: '127.0.0.1:6783', encrypted: true, sessionKey: key, dataKey: key,
      local: feat(...self), remote: feat(...other),
      send: (_t, payload) => { const c = Buffer.from(payload); setImmediate(() => to()?.onMessage(c)); },
      close: () => {}, onMessage: () => {}, onClose: () => {},
    });
    ends.a = sa.attach(conn([A, sa], [B, sb], true, () => ends.b), { established: () => up.push('a'), failed: (r) => up.push(`a-fail ${r}`) });
    ends.b = sb.attach(conn([B, sb], [A, sa], false, () => ends.a), { established: () => up.push('b'), failed: (r) => up.push(`b-fail ${r}`) });
    await waitUntil(() => up.length === 2, 'sleeve established', 5000);
    assert.deepEqual(up.sort(), ['a', 'b']);
    // the workers install the forwarding that establishment brought a moment later; until then the
    // status says data does not flow yet
    await waitUntil(() => ends.a!.status().stalled === undefined && ends.b!.status().stalled === undefined, 'data flowing both ways', 5000);
    assert.deepEqual(ends.a.status(), { overlay: 'sleeve', encrypted: true, mtu: 1500 - 60 });

    const ping = await run(['ip', 'netns', 'exec', nsA, 'ping', '-c', '3', '-i', '0.2', '-W', '2', '10.32.2.1'], { allowFail: true, timeoutMs: 15_000 });
    assert.equal(ping.code, 0, ping.stdout + ping.stderr);
    const big = await run(['ip', 'netns', 'exec', nsA, 'ping', '-c', '2', '-i', '0.2', '-W', '2', '-s', '10240', '10.32.2.1'], { allowFail: true, timeoutMs: 15_000 });
    assert.equal(big.code, 0, big.stdout + big.stderr);

    // unknown destination inside the overlay: ICMP unreachable comes back to ping
    const lost = await run(['ip', 'netns', 'exec', nsA, 'ping', '-c', '1', '-W', '2', '10.32.2.200'], { allowFail: true, timeoutMs: 15_000 });
    assert.notEqual(lost.code, 0);
    await ipIn(nsA, ['route', 'add', '10.99.0.0/16', 'dev', tunA]);
    const unreach = await run(['ip', 'netns', 'exec', nsA, 'ping', '-c', '1', '-W', '2', '10.99.0.1'], { allowFail: true, timeoutMs: 15_000 });
    assert.match(unreach.stdout + unreach.stderr, /Unreachable/i);
    // the tx worker counts the ICMP after its write returns: ping may have it (and exited) before that
    await waitUntil(() => sa.counters.dropUnknownDest >= 1 && sa.counters.icmpSent >= 1, 'the unreachable counted');

    const srv = run(['ip', 'netns', 'exec', nsB, 'iperf3', '-s', '-1', '-B', '10.32.2.1'], { allowFail: true, timeoutMs: 30_000 });
    await waitFor('the iperf3 server to listen', async () => (await run(['ip', 'netns', 'exec', nsB, 'ss', '-Hltn', 'sport = :5201'], { allowFail: true })).stdout.trim(), { timeoutMs: 5000, intervalMs: 20 });
    const client = await run(['ip', 'netns', 'exec', nsA, 'iperf3', '-c', '10.32.2.1', '-t', '2', '-J'], { allowFail: true, timeoutMs: 20_000 });
    assert.equal(client.code, 0, client.stdout.slice(0, 500) + client.stderr);
    const j = JSON.parse(client.stdout);
    const gbps = j.end.sum_received.bits_per_second / 1e9;
    console.log(`# sleeve (both ends in one process, ${sa.mode}, encrypted, sodium${offload ? ', TUN offloads' : ''}): iperf3 ${gbps.toFixed(3)} Gbit/s`);
    assert.ok(gbps > 0.01, `throughput ${gbps}`);
    await srv;
    assert.equal(sb.counters.dropBadMac + sb.counters.dropMalformed, 0);
    assert.equal(sa.tunOffload, offload);
    assert.equal(sa.counters.dropBadVnet + sb.counters.dropBadVnet, 0);
    if (offload) assert.ok(sa.counters.tunSuperPackets > 0, 'the kernel handed the TUN TSO super-packets');
    else assert.equal(sa.counters.tunSuperPackets, 0);
  } finally {
    for (const s of sleeves) await s.close();
    await run(['ip', 'netns', 'del', nsA], { allowFail: true });
    await run(['ip', 'netns', 'del', nsB], { allowFail: true });
  }
});

test('createSleeve in a namespace: detects the underlay MTU, opens and raises the TUN, sets routes through the reconciler', { timeout: 30_000 }, async () => {
  const id = randomBytes(3).toString('hex');
  const ns = `wsc-${id}`;
  try {
    await run(['ip', 'netns', 'add', ns]);
    await ipIn(ns, ['link', 'set', 'lo', 'up']);
    await ipIn(ns, ['link', 'add', 'under0', 'mtu', '9000', 'type', 'veth', 'peer', 'name', 'under1', 'mtu', '9000']);
    await ipIn(ns, ['link', 'set', 'under1', 'up']);
    await ipIn(ns, ['link', 'set', 'under0', 'up']);
    await ipIn(ns, ['addr', 'add', '198.18.7.1/24', 'dev', 'under0']);
    await ipIn(ns, ['route', 'add', 'default', 'via', '198.18.7.254', 'dev', 'under0']);
    const dist = require('path').join(__dirname, '..', '..');
    const script = `
      const { createSleeve, FWD_COALESCE_MS } = require(${JSON.stringify(dist + '/router/sleeve.js')});
      const { PrefixTable, PrefixUpdate } = require(${JSON.stringify(dist + '/router/prefixes.js')});
      const { realClock } = require(${JSON.stringify(dist + '/lib/clock.js')});
      const { loadCrypto } = require(${JSON.stringify(dist + '/mesh/crypto.js')});
      const { silentLogger } = require(${JSON.stringify(dist + '/lib/log.js')});
      const { EventEmitter } = require('events');
      (async () => {
        const log = silentLogger();
        const name = '02:00:00:00:02:0a';
        const prefixes = new PrefixTable(name, realClock, log);
        prefixes.setLocal(['10.32.1.0/24']);
        const desired = [];
        const s = await createSleeve({ name, clock: realClock, log, crypto: loadCrypto('sodium', log), routes: Object.assign(new EventEmitter(), { name, unicastNextHop: () => undefined }),
          prefixes, reconciler: { setDesired: (owner, r) => desired.push({ owner, r }) }, port: 0, tunName: 'wtc${id}' });
        prefixes.mergeUpdate(new PrefixUpdate(new Map([['02:00:00:00:02:0b', { version: 5, prefixes: ['10.32.2.0/24'] }]])));
        // announcements reach forwarding and the kernel routes once their burst's window closed
        await new Promise((r) => setTimeout(r, FWD_COALESCE_MS + 50));
        const link = JSON.parse(require('child_process').execFileSync('ip', ['-json', 'link', 'show', 'wtc${id}']).toString())[0];
        console.log(JSON.stringify({ underlayMtu: s.underlayMtu, tunMtu: s.tunMtu, mode: s.mode, linkMtu: link.mtu, up: link.flags.includes('UP'), desired }));
        await s.close();
      })().catch((e) => { console.error(e); process.exit(1); });`;
    const r = await run(['ip', 'netns', 'exec', ns, process.execPath, '-e', script], { timeoutMs: 20_000 });
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
    assert.deepEqual(out, {
      underlayMtu: 9000, tunMtu: 9000 - 60, mode: 'workers', linkMtu: 9000 - 60, up: true,
      desired: [{ owner: 'sleeve', r: [] }, { owner: 'sleeve', r: [{ dst: '10.32.2.0/24', dev: `wtc${id}` }] }],
    });
  } finally {
    await run(['ip', 'netns', 'del', ns], { allowFail: true });
  }
});

test('three sleeves in a line over real TUNs (worker threads: one or two, in the native waiter or uv_poll): h1 reaches h3 through h2\'s relay', { timeout: 60_000 }, async () => {
  const tio = io as TunIo;
  const id = randomBytes(3).toString('hex');
  const crypto = loadCrypto('sodium', silentLogger());
  const lo = parseAddr('127.0.0.1');
  const names = ['02:00:00:00:03:01', '02:00:00:00:03:02', '02:00:00:00:03:03'];
  const nss = names.map((_, i) => `wsr${i}-${id}`);
  const sleeves: Sleeve[] = [];
  try {
    for (const ns of nss) {
      await run(['ip', 'netns', 'add', ns]);
      await ipIn(ns, ['link', 'set', 'lo', 'up']);
    }
    // line topology: next hop towards anyone is the neighbour in that direction
    const hop = (i: number, dst: PeerName): PeerName | undefined => {
      const j = names.indexOf(dst);
      if (j < 0 || j === i) return undefined;
      return names[j > i ? i + 1 : i - 1];
    };
    const tables: PrefixTable[] = [];
    for (let i = 0; i < 3; i++) {
      const prefixes = new PrefixTable(names[i], realClock, silentLogger());
      prefixes.setLocal([`10.32.${i + 1}.0/24`]);
      tables.push(prefixes);
      const routes = Object.assign(new EventEmitter(), { name: names[i], unicastNextHop: (d: PeerName) => hop(i, d) });
      const tunName = `wtr${i}${id}`;
      const s = new Sleeve({
        name: names[i], clock: realClock, log: silentLogger(), crypto, routes, prefixes,
        tun: new NativeTun(tio, tunName), udp: new NativeUdp(tio, lo, 0), underlayMtu: 1500,
        // h1 and h2 wait in the addon's waiter (spinning after packets), h3 through uv_poll; h1 runs a
        // worker per direction (WEAVE_SLEEVE_THREADS=2), h2 and h3 one worker for both (the default)
        spinUs: i < 2 ? 50 : undefined,
        threads: i === 0 ? 2 : undefined,
        host: {
          tunUp: async (dev, mtu) => {
            await run(['ip', 'link', 'set', 'dev', dev, 'netns', nss[i]]);
            await ipIn(nss[i], ['link', 'set', 'dev', dev, 'mtu', String(mtu), 'up']);
          },
          setRoutes: () => {},
        },
      });
      sleeves.push(s);
      await s.start();
      await ipIn(nss[i], ['addr', 'add', `10.32.${i + 1}.1/24`, 'dev', tunName]);
      await ipIn(nss[i], ['route', 'add', '10.32.0.0/16', 'dev', tunName]);
    }
    for (const a of tables) for (const b of tables) if (a !== b) b.mergeUpdate(a.full());
    assert.ok(sleeves.every((s) => s.mode === 'workers'));
    const up: string[] = [];
    const link = (i: number, j: number): void => {
      const key = crypto.randomBytes(32);
      const ends: Array<SleeveHandle | undefined> = [];
      const feat = (k: number): Features => ({ name: names[k], nickname: names[k], uid: 'u', connId: `${i}${j}`, overlays: ['sleeve'], overlayParams: { sleeve: sleeves[k].overlayParams() }, trusted: false, listenPort: 6783 });
      const conn = (self: number, other: number, to: number): MeshConnection => ({
        id: `${i}${j}`, outbound: self === i, remoteAddr: '127.0.0.1:40000', localAddr: '127.0.0.1:6783', encrypted: true, sessionKey: key, dataKey: key,
        local: feat(self), remote: feat(other),
        send: (_t, payload) => { const c = Buffer.from(payload); setImmediate(() => ends[to]?.onMessage(c)); },
        close: () => {}, onMessage: () => {}, onClose: () => {},
      });
      ends[0] = sleeves[i].attach(conn(i, j, 1), { established: () => up.push(`${i}>${j}`), failed: (r) => up.push(`fail ${r}`) });
      ends[1] = sleeves[j].attach(conn(j, i, 0), { established: () => up.push(`${j}>${i}`), failed: (r) => up.push(`fail ${r}`) });
    };
    link(0, 1);
    link(1, 2);
    await waitUntil(() => up.length >= 4, 'both links established', 5000);
    assert.deepEqual(up.sort(), ['0>1', '1>0', '1>2', '2>1']);
    const ping = await run(['ip', 'netns', 'exec', nss[0], 'ping', '-c', '3', '-i', '0.2', '-W', '2', '10.32.3.1'], { allowFail: true, timeoutMs: 15_000 });
    assert.equal(ping.code, 0, ping.stdout + ping.stderr);
    assert.match(ping.stdout, /ttl=63/, 'the relay decremented the TTL once');
    const mid = sleeves[1].counters;
    assert.ok(mid.relayedPackets >= 6, `relayed ${mid.relayedPackets}`);
    assert.equal(mid.tunOutPackets, 0, 'nothing for h2 itself');
  } finally {
    for (const s of sleeves) await s.close();
    for (const ns of nss) await run(['ip', 'netns', 'del', ns], { allowFail: true });
  }
});
