// Sleeve instances wired through in-memory fakes: a channel TUN per router, one channel UDP net,
// fake mesh connections carrying Msg.Overlay control messages, a FakeClock for heartbeats.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { FakeClock } from '../../lib/clock';
import { LagMonitor, type LagCredit } from '../../lib/lag';
import { loadCrypto, tweetnaclEngine, type CryptoEngine } from '../../mesh/crypto';
import { MemoryLogger, silentLogger } from '../../lib/log';
import type { PeerName } from '../../mesh/peer';
import { Msg, type DataKeyWatcher, type Features, type MeshConnection } from '../../mesh/types';
import type { OverlayManager } from '../../mesh/mesh';
import { FrameHeader, FrameType, HB_BODY, HDR, TAG, deriveKeys, encodeFrame, parseHeader } from '../../router/frame';
import { ipChecksum } from '../../router/icmp';
import { PrefixTable } from '../../router/prefixes';
import type { BoxKind } from '../../router/boxes';
import { loadTunIo } from '../../router/native';
import { FWD_COALESCE_MS, LateRouteSource, REKEY_GRACE_MS, SLEEVE_OVERHEAD, Sleeve, type RouteSource, type SleeveHandle, type SleeveRoute } from '../../router/sleeve';
import { COUNTER_NAMES, LANE_TX } from '../../router/datapath';
import { ChannelTun, ipv4Packet } from '../fakes/channel-tun';
import { ChannelNet, ipNum } from '../fakes/channel-udp';

const sodium = loadCrypto('sodium', silentLogger());
// what 'auto' should pick here: the addon's batches on a CPU with AVX2/AVX-512 (this test machine)
const AUTO_BOXES = loadTunIo(silentLogger())?.boxImpl?.() === 'generic' ? 'engine' : 'native';

class FakeRoutes extends EventEmitter {
  readonly hops = new Map<PeerName, PeerName>();
  constructor(readonly name: PeerName) { super(); }
  unicastNextHop(dst: PeerName): PeerName | undefined { return this.hops.get(dst); }
}

interface Node {
  name: PeerName;
  ip: string;
  tun: ChannelTun;
  sleeve: Sleeve;
  prefixes: PrefixTable;
  routes: FakeRoutes;
  routesSet: SleeveRoute[][];
  events: string[];
}

function features(n: Node, connId: string): Features {
  return { name: n.name, nickname: n.name, uid: 'u', connId, overlays: ['sleeve'], overlayParams: { sleeve: n.sleeve.overlayParams() }, trusted: false, listenPort: 6783 };
}

class Lab {
  readonly clock = new FakeClock();
  readonly net = new ChannelNet();
  readonly nodes: Node[] = [];
  readonly handles: SleeveHandle[] = [];
  readonly protocolErrors: string[] = [];

  add(name: PeerName, ip: string, prefixes: string[], o: { crypto?: CryptoEngine; underlayMtu?: number; log?: MemoryLogger; boxes?: BoxKind; routeSource?: RouteSource; lag?: LagCredit } = {}): Node {
    const log = o.log ?? silentLogger();
    const tun = new ChannelTun();
    const udp = this.net.bind(ip, 6783);
    const pt = new PrefixTable(name, this.clock, log);
    pt.setLocal(prefixes);
    const routes = new FakeRoutes(name);
    const routesSet: SleeveRoute[][] = [];
    const sleeve = new Sleeve({
      name, clock: this.clock, log, crypto: o.crypto ?? sodium, routes: o.routeSource ?? routes, prefixes: pt, tun, udp,
      host: { tunUp: async () => {}, setRoutes: (r) => { routesSet.push(r); } },
      underlayMtu: o.underlayMtu, boxes: o.boxes, lag: o.lag,
    });
    const n: Node = { name, ip, tun, sleeve, prefixes: pt, routes, routesSet, events: [] };
    this.nodes.push(n);
    return n;
  }

  /** Every router learns every announcement (what gossip would do). */
  syncPrefixes(): void {
    for (const a of this.nodes) for (const b of this.nodes) if (a !== b) b.prefixes.mergeUpdate(a.prefixes.full());
  }

  /**
   * A fake authenticated mesh connection between a (dialler) and b, attached on both ends. rekey(side,
   * step, key) plays a password rotation's data-key steps to that end's overlays (watchDataKey).
   */
  connect(a: Node, b: Node, sessionKey: Uint8Array | null): { ha: SleeveHandle; hb: SleeveHandle; ca: MeshConnection; cb: MeshConnection; rekey: (side: 'a' | 'b', step: 'accept' | 'use' | 'settled', key: Uint8Array) => void } {
    const id = `${a.name}-${b.name}`;
    const ends: { ha?: SleeveHandle; hb?: SleeveHandle } = {};
    const watchers = { a: new Set<DataKeyWatcher>(), b: new Set<DataKeyWatcher>() };
    const mk = (self: Node, other: Node, outbound: boolean, deliver: () => SleeveHandle | undefined): MeshConnection => ({
      id, outbound, remoteAddr: `${other.ip}:41000`, localAddr: `${self.ip}:6783`, encrypted: sessionKey !== null, sessionKey, dataKey: sessionKey,
      watchDataKey: (fn: DataKeyWatcher) => {
        const set = outbound ? watchers.a : watchers.b;
        set.add(fn);
        return () => set.delete(fn);
      },
      local: features(self, id), remote: features(other, id),
      send: (type, payload) => {
        assert.equal(type, Msg.Overlay);
        const copy = Buffer.from(payload);
        setImmediate(() => {
          try { deliver()?.onMessage(copy); } catch (e) { this.protocolErrors.push(String(e)); }
        });
      },
      close: () => {}, onMessage: () => {}, onClose: () => {},
    });
    const ca = mk(a, b, true, () => ends.hb);
    const cb = mk(b, a, false, () => ends.ha);
    ends.ha = a.sleeve.attach(ca, { established: () => a.events.push(`up:${b.name}`), failed: (r) => a.events.push(`fail:${b.name}:${r}`) });
    ends.hb = b.sleeve.attach(cb, { established: () => b.events.push(`up:${a.name}`), failed: (r) => b.events.push(`fail:${a.name}:${r}`) });
    this.handles.push(ends.ha, ends.hb);
    const rekey = (side: 'a' | 'b', step: 'accept' | 'use' | 'settled', key: Uint8Array): void => {
      for (const fn of watchers[side]) fn(step, key);
    };
    return { ha: ends.ha, hb: ends.hb, ca, cb, rekey };
  }

  /** Lets queued I/O run (setImmediate deliveries), then advances the fake clock, until cond or steps run out. */
  async until(cond: () => boolean, what: string, steps = 40, stepMs = 250): Promise<void> {
    for (let i = 0; i < steps; i++) {
      for (let j = 0; j < 6; j++) await new Promise<void>((r) => setImmediate(r));
      if (cond()) return;
      this.clock.advance(stepMs);
    }
    assert.fail(`timed out waiting for ${what}`);
  }

  async settle(): Promise<void> {
    for (let j = 0; j < 10; j++) await new Promise<void>((r) => setImmediate(r));
  }

  /** Route and announcement changes reach the engines once their burst's coalescing window passed. */
  async forwarding(): Promise<void> {
    this.clock.advance(FWD_COALESCE_MS);
    await this.settle();
  }

  close(): void {
    for (const n of this.nodes) n.sleeve.close();
  }
}

const A = '02:00:00:00:00:0a';
const B = '02:00:00:00:00:0b';
const C = '02:00:00:00:00:0c';

async function twoNodes(key: Uint8Array | null, o: { crypto?: CryptoEngine; boxes?: BoxKind } = {}) {
  const lab = new Lab();
  const a = lab.add(A, '198.18.0.1', ['10.32.1.0/24'], o);
  const b = lab.add(B, '198.18.0.2', ['10.32.2.0/24'], o);
  lab.syncPrefixes();
  a.routes.hops.set(B, B);
  b.routes.hops.set(A, A);
  const conn = lab.connect(a, b, key);
  await lab.until(() => a.events.includes(`up:${B}`) && b.events.includes(`up:${A}`), 'both ends established');
  return { lab, a, b, ...conn };
}

function marker(s: string, n = 200): Buffer {
  return Buffer.concat([Buffer.from(s), Buffer.alloc(n, 0x61)]);
}

for (const [mode, boxes] of [['encrypted', 'native'], ['encrypted', 'engine'], ['plain', 'native']] as const) {
  test(`two routers exchange packets both ways (${mode}, ${boxes} boxes)`, async () => {
    const key = mode === 'encrypted' ? sodium.randomBytes(32) : null;
    const { lab, a, b, ha } = await twoNodes(key, { boxes });
    try {
      assert.equal(a.sleeve.boxes, boxes);
      assert.deepEqual(ha.status(), { overlay: 'sleeve', encrypted: key !== null, mtu: 1500 - SLEEVE_OVERHEAD });
      lab.net.capture = true;
      const ab = ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.7', payload: marker('MARKER-A2B') });
      const ba = ipv4Packet({ src: '10.32.2.7', dst: '10.32.1.5', payload: marker('MARKER-B2A') });
      const burst = Array.from({ length: 150 }, (_, i) => ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.8', id: i, payload: marker(`n${i}`, i) }));
      a.tun.inject(ab);
      b.tun.inject(ba);
      for (const p of burst) a.tun.inject(p);
      await lab.until(() => b.tun.written.length === 151 && a.tun.written.length === 1, 'delivery');
      assert.deepEqual(b.tun.written[0], ab);
      assert.deepEqual(a.tun.written[0], ba);
      assert.deepEqual(b.tun.written.slice(1), burst, 'a burst larger than one batch arrives complete and in order');
      const dataFrames = lab.net.captured.filter((d) => d.data[1] === FrameType.Data);
      const leaked = dataFrames.some((d) => d.data.includes(Buffer.from('MARKER-')));
      assert.equal(leaked, key === null, key ? 'sealed frames must not show the marker' : 'plain frames show it (the check can fail)');
      assert.equal(a.sleeve.counters.tunInPackets, 151);
      assert.equal(b.sleeve.counters.tunOutPackets, 151);
      assert.equal(b.sleeve.counters.dropBadMac + b.sleeve.counters.dropReplay + b.sleeve.counters.dropMalformed, 0);
      // routes into the TUN for the other router's prefix
      assert.deepEqual(a.routesSet.at(-1), [{ dst: '10.32.2.0/24', dev: 'chan-tun' }]);
      assert.deepEqual(lab.protocolErrors, []);
    } finally {
      lab.close();
    }
  });
}

for (const boxes of ['native', 'engine'] as const) {
  test(`password rotation re-keys a live path make-before-break: no packet lost, old key gone after the grace (${boxes} boxes)`, async () => {
    const k1 = sodium.randomBytes(32);
    const k2 = sodium.randomBytes(32);
    const { lab, a, b, rekey } = await twoNodes(k1, { boxes });
    try {
      lab.net.capture = true;
      let sent = 0;
      const both = async (): Promise<void> => {
        // a few packets each way between every step, in flight while the next step happens
        for (let i = 0; i < 3; i++, sent++) {
          a.tun.inject(ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.7', id: sent, payload: marker(`ab${sent}`) }));
          b.tun.inject(ipv4Packet({ src: '10.32.2.7', dst: '10.32.1.5', id: sent, payload: marker(`ba${sent}`) }));
        }
        await lab.settle();
      };
      await both();
      // the order the wire session produces when B rotates second (B offers, A switches first)
      const steps: Array<['a' | 'b', 'accept' | 'use' | 'settled']> = [
        ['b', 'accept'], // B sent Offer
        ['a', 'accept'], ['a', 'use'], // A verified it, sent Switch: A seals under k2 (phase 1)
        ['b', 'settled'], ['b', 'use'], // B got A's Switch, sent its own
        ['a', 'settled'], // A got B's Switch
      ];
      for (const [side, step] of steps) {
        rekey(side, step, k2);
        await both();
      }
      await lab.until(() => b.tun.written.length === sent && a.tun.written.length === sent, `all ${sent} packets both ways`);
      for (const n of [a, b]) assert.equal(n.sleeve.counters.dropBadMac + n.sleeve.counters.dropReplay, 0, `${n.name}: nothing dropped across the re-key`);
      const phases = new Set(lab.net.captured.filter((d) => d.data[1] === FrameType.Data).map((d) => d.data[3]));
      assert.deepEqual([...phases].sort(), [0, 1], 'data went out under both key phases');
      // after the grace the old receive key is gone: a frame sealed under k1 (fresh counter) fails as a bad MAC
      const last = lab.net.captured.filter((d) => d.toIp === ipNum(b.ip) && d.data[1] === FrameType.Data).at(-1)!;
      const idx = last.data.readUInt32BE(4);
      const forge = (): Buffer => encodeFrame(sodium, deriveKeys(sodium, k1, true).tx, FrameType.Data, 1, idx, 1e9 + sent++, ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.7', payload: marker('old') }), 0);
      const inject = (data: Buffer): void => lab.net.deliver({ fromIp: ipNum(a.ip), fromPort: 6783, toIp: ipNum(b.ip), toPort: 6783, data });
      inject(forge());
      await lab.settle();
      const before = b.tun.written.length;
      assert.equal(b.sleeve.counters.dropBadMac, 0, 'within the grace the old key still opens');
      lab.clock.advance(REKEY_GRACE_MS + 1500);
      await lab.settle();
      inject(forge());
      await lab.settle();
      assert.equal(b.sleeve.counters.dropBadMac, 1, 'the old key no longer opens');
      assert.equal(b.tun.written.length, before);
      assert.deepEqual(lab.protocolErrors, []);
    } finally {
      lab.close();
    }
  });
}

test('Sleeve is the mesh\'s OverlayManager', async () => {
  const { lab, a } = await twoNodes(null);
  try {
    const m: OverlayManager = a.sleeve; // compile-time contract with mesh/mesh.ts
    assert.equal(typeof m.attach, 'function');
  } finally {
    lab.close();
  }
});

test('tweetnacl and sodium routers interoperate (the sodium one sealing with the addon\'s batches)', async () => {
  const lab = new Lab();
  const a = lab.add(A, '198.18.0.1', ['10.32.1.0/24'], { crypto: sodium });
  const b = lab.add(B, '198.18.0.2', ['10.32.2.0/24'], { crypto: tweetnaclEngine() });
  try {
    assert.equal(a.sleeve.boxes, AUTO_BOXES, 'auto picks the addon for sodium (where the CPU has AVX2 or AVX-512)');
    assert.equal(b.sleeve.boxes, 'engine', 'and keeps tweetnacl on the engine');
    lab.syncPrefixes();
    a.routes.hops.set(B, B);
    b.routes.hops.set(A, A);
    lab.connect(a, b, sodium.randomBytes(32));
    await lab.until(() => a.events.includes(`up:${B}`) && b.events.includes(`up:${A}`), 'established');
    const p = ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.7', payload: marker('x', 1300) });
    const q = ipv4Packet({ src: '10.32.2.7', dst: '10.32.1.5', payload: marker('y', 700) });
    a.tun.inject(p);
    b.tun.inject(q);
    await lab.until(() => b.tun.written.length === 1 && a.tun.written.length === 1, 'delivery both ways');
    assert.deepEqual(b.tun.written[0], p);
    assert.deepEqual(a.tun.written[0], q);
    assert.equal(a.sleeve.counters.dropBadMac + b.sleeve.counters.dropBadMac, 0);
  } finally {
    lab.close();
  }
});

test('three routers in a line relay h1 -> h2 -> h3 and back', async () => {
  const lab = new Lab();
  const a = lab.add(A, '198.18.0.1', ['10.32.1.0/24']);
  const b = lab.add(B, '198.18.0.2', ['10.32.2.0/24']);
  const c = lab.add(C, '198.18.0.3', ['10.32.3.0/24']);
  try {
    // a and c cannot reach each other on the underlay
    lab.net.drop = (d) => (d.fromIp === ipNum('198.18.0.1') && d.toIp === ipNum('198.18.0.3')) || (d.fromIp === ipNum('198.18.0.3') && d.toIp === ipNum('198.18.0.1'));
    lab.syncPrefixes();
    a.routes.hops.set(B, B).set(C, B);
    b.routes.hops.set(A, A).set(C, C);
    c.routes.hops.set(B, B).set(A, B);
    lab.connect(a, b, sodium.randomBytes(32));
    lab.connect(b, c, sodium.randomBytes(32));
    await lab.until(() => a.events.length === 1 && b.events.length === 2 && c.events.length === 1, 'both links established');
    assert.ok([...a.events, ...b.events, ...c.events].every((e) => e.startsWith('up:')), String(a.events));
    for (const r of [a, b, c]) r.routes.emit('routesChanged');
    const ac = ipv4Packet({ src: '10.32.1.5', dst: '10.32.3.9', ttl: 64, payload: marker('A2C') });
    const ca = ipv4Packet({ src: '10.32.3.9', dst: '10.32.1.5', ttl: 64, payload: marker('C2A') });
    a.tun.inject(ac);
    c.tun.inject(ca);
    await lab.until(() => c.tun.written.length === 1 && a.tun.written.length === 1, 'relayed delivery');
    const got = c.tun.written[0];
    assert.equal(got[8], 63, 'the relay decrements TTL');
    assert.equal(ipChecksum(got, 0, 20), 0, 'with a valid checksum');
    assert.deepEqual(got.subarray(20), ac.subarray(20));
    assert.deepEqual(a.tun.written[0].subarray(20), ca.subarray(20));
    assert.equal(b.sleeve.counters.relayedPackets, 2);
    assert.equal(b.tun.written.length, 0, 'the relay does not deliver locally');
  } finally {
    lab.close();
  }
});

test('replayed datagrams are dropped and counted', async () => {
  const { lab, a, b } = await twoNodes(sodium.randomBytes(32));
  try {
    lab.net.capture = true;
    a.tun.inject(ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.7', payload: marker('once') }));
    await lab.until(() => b.tun.written.length === 1, 'first delivery');
    const data = lab.net.captured.filter((d) => d.data[1] === FrameType.Data);
    assert.equal(data.length, 1);
    for (let i = 0; i < 3; i++) lab.net.deliver({ ...data[0] });
    // an old heartbeat too
    const hb = lab.net.captured.find((d) => d.data[1] === FrameType.Heartbeat && d.fromIp === ipNum('198.18.0.1'));
    if (hb) lab.net.deliver({ ...hb });
    await lab.settle();
    assert.equal(b.tun.written.length, 1, 'no second delivery');
    assert.equal(b.sleeve.counters.dropReplay, hb ? 4 : 3);
  } finally {
    lab.close();
  }
});

test('per-connection counters: traffic each way, replayed and forged frames counted on the path they arrived on', async () => {
  const { lab, a, b } = await twoNodes(sodium.randomBytes(32));
  try {
    lab.net.capture = true;
    const pkt = ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.7', payload: marker('counted', 500) });
    for (let i = 0; i < 10; i++) a.tun.inject(pkt);
    await lab.until(() => b.tun.written.length === 10, 'delivery');
    const data = lab.net.captured.filter((d) => d.data[1] === FrameType.Data);
    for (let i = 0; i < 3; i++) lab.net.deliver({ ...data[0] });
    const forged = Buffer.from(data[0].data);
    forged.writeUInt32BE(1000, 12);
    forged[HDR + 3] ^= 0xff;
    lab.net.deliver({ ...data[0], data: forged });
    await lab.settle();
    const [pa] = a.sleeve.paths();
    const [pb] = b.sleeve.paths();
    assert.equal(pa.peer, B);
    assert.equal(pb.peer, A);
    // data frames plus heartbeats and probes: at least the 10 packets of >500 bytes each way they went
    assert.ok(pa.txPackets >= 10 && pa.txBytes >= 10 * 500, `a sent ${pa.txPackets} datagrams, ${pa.txBytes} bytes`);
    assert.ok(pb.rxPackets >= 10 && pb.rxBytes >= 10 * 500, `b received ${pb.rxPackets} datagrams, ${pb.rxBytes} bytes`);
    assert.equal(pb.dropReplay, 3);
    assert.equal(pb.dropAuth, 1);
    assert.equal(pa.dropReplay + pa.dropAuth, 0);
    // the path's sums agree with the router's totals for what only it carried
    assert.equal(pb.dropReplay, b.sleeve.counters.dropReplay);
    assert.equal(pb.dropAuth, b.sleeve.counters.dropBadMac);
  } finally {
    lab.close();
  }
});

test('random, truncated and forged datagrams are dropped and counted; the router stays up', async () => {
  const { lab, a, b } = await twoNodes(sodium.randomBytes(32));
  try {
    lab.net.capture = true;
    a.tun.inject(ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.7', payload: marker('good') }));
    await lab.until(() => b.tun.written.length === 1, 'delivery');
    const good = lab.net.captured.find((d) => d.data[1] === FrameType.Data)!;
    const from = { fromIp: ipNum('203.0.113.9'), fromPort: 5555, toIp: ipNum('198.18.0.2'), toPort: 6783 };
    const before = { ...b.sleeve.counters };
    let rnd = 12345;
    const next = () => (rnd = (rnd * 1103515245 + 12345) & 0x7fffffff);
    for (let i = 0; i < 300; i++) {
      const d = Buffer.alloc(next() % 1600);
      for (let j = 0; j < d.length; j++) d[j] = next() & 0xff;
      lab.net.deliver({ ...from, data: d });
    }
    for (let n = 0; n < good.data.length; n += 7) lab.net.deliver({ ...from, data: good.data.subarray(0, n) });
    // a valid header for the right connection, with a fresh counter, but a forged body
    const forged = Buffer.from(good.data);
    forged.writeUInt32BE(1000, 12);
    forged[HDR + 3] ^= 0xff;
    lab.net.deliver({ ...from, data: forged });
    await lab.settle();
    const c = b.sleeve.counters;
    const dropped = (c.dropMalformed - before.dropMalformed) + (c.dropUnknownConn - before.dropUnknownConn) + (c.dropBadMac - before.dropBadMac) + (c.dropReplay - before.dropReplay);
    const truncated = Math.ceil(good.data.length / 7);
    assert.equal(dropped, 300 + truncated + 1, 'every bad datagram is counted once');
    assert.ok(c.dropBadMac - before.dropBadMac >= 1, 'the forged one fails the MAC');
    assert.equal(b.tun.written.length, 1, 'nothing bad reached the TUN');
    // forged datagrams did not move the peer's address
    a.tun.inject(ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.7', payload: marker('still') }));
    b.tun.inject(ipv4Packet({ src: '10.32.2.7', dst: '10.32.1.5', payload: marker('back') }));
    await lab.until(() => b.tun.written.length === 2 && a.tun.written.length === 1, 'traffic after the garbage');
  } finally {
    lab.close();
  }
});

test('unknown destination -> ICMP host unreachable into the TUN, counted', async () => {
  const { lab, a } = await twoNodes(sodium.randomBytes(32));
  try {
    const p = ipv4Packet({ src: '10.32.1.5', dst: '10.99.0.1', proto: 17, payload: marker('nowhere') });
    a.tun.inject(p);
    await lab.until(() => a.tun.written.length === 1, 'icmp');
    const ic = a.tun.written[0];
    assert.deepEqual([ic[9], ic[20], ic[21]], [1, 3, 1], 'ICMP dest unreachable / host');
    assert.deepEqual([...ic.subarray(16, 20)], [10, 32, 1, 5]);
    assert.deepEqual(ic.subarray(28, 48), p.subarray(0, 20));
    assert.equal(a.sleeve.counters.dropUnknownDest, 1);
    assert.equal(a.sleeve.counters.icmpSent, 1);
  } finally {
    lab.close();
  }
});

test('too big with DF -> ICMP frag-needed with the path MTU; without DF -> fragmented and delivered', async () => {
  const { lab, a, b, ha } = await twoNodes(sodium.randomBytes(32));
  try {
    const mtu = 1500 - SLEEVE_OVERHEAD;
    const big = ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.7', proto: 6, df: true, payload: Buffer.alloc(mtu - 20 + 1) });
    a.tun.inject(big);
    await lab.until(() => a.tun.written.length === 1, 'frag-needed');
    const ic = a.tun.written[0];
    assert.deepEqual([ic[20], ic[21]], [3, 4]);
    assert.equal(ic.readUInt16BE(26), mtu);
    assert.equal(a.sleeve.counters.dropTooBig, 1);
    // shrink the underlay path: probes find it, frag-needed reports the smaller MTU
    lab.net.maxPayload.set('198.18.0.1->198.18.0.2', 1300 - 28);
    await lab.until(() => ha.status().mtu === 1300 - 28 - HDR - TAG, 'PMTU discovery', 80);
    const mid = ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.7', proto: 6, df: true, payload: Buffer.alloc(1300 - 20) });
    a.tun.inject(mid);
    await lab.until(() => a.tun.written.length === 2, 'second frag-needed');
    assert.equal(a.tun.written[1].readUInt16BE(26), 1300 - 28 - HDR - TAG);
    const nodf = ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.7', proto: 17, payload: Buffer.alloc(1400, 9) });
    a.tun.inject(nodf);
    await lab.until(() => b.tun.written.length >= 2, 'fragments');
    const frags = b.tun.written;
    assert.equal(frags.length, 2);
    assert.equal(a.sleeve.counters.fragmentsSent, 2);
    const re = Buffer.alloc(1400);
    for (const f of frags) {
      assert.ok(f.length <= 1300 - 28 - HDR - TAG);
      f.copy(re, (((f[6] & 0x1f) << 8) | f[7]) * 8, 20);
    }
    assert.deepEqual(re, nodf.subarray(20));
    // the path grows back
    lab.net.maxPayload.delete('198.18.0.1->198.18.0.2');
    await lab.until(() => ha.status().mtu === mtu, 'PMTU grows back', 120);
  } finally {
    lab.close();
  }
});

test('EMSGSIZE from the kernel (a shrunken path it learned) triggers prompt PMTU probing', async () => {
  const { lab, a, b, ha } = await twoNodes(sodium.randomBytes(32));
  try {
    // let the first probe rounds finish so the sleeve is in its slow (10 s) probing rhythm
    assert.equal(ha.status().mtu, 1440);
    for (let i = 0; i < 12; i++) lab.clock.advance(250);
    await lab.settle();
    lab.net.refuseLocally = true;
    lab.net.maxPayload.set('198.18.0.1->198.18.0.2', 1200 - 28);
    const start = lab.clock.now();
    a.tun.inject(ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.7', proto: 6, df: true, payload: Buffer.alloc(1400 - 20) }));
    await lab.until(() => ha.status().mtu === 1200 - 28 - HDR - TAG, 'MTU lowered after EMSGSIZE', 40, 250);
    assert.ok(lab.clock.now() - start <= 3000, `took ${lab.clock.now() - start} ms (the slow rhythm is 10 s)`);
    assert.ok(a.sleeve.counters.dropTooBig >= 1);
    // and the next DF packet of that size gets frag-needed with the new MTU
    a.tun.inject(ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.7', proto: 6, df: true, payload: Buffer.alloc(1400 - 20) }));
    await lab.until(() => a.tun.written.length === 1, 'frag-needed');
    assert.equal(a.tun.written[0].readUInt16BE(26), 1200 - 28 - HDR - TAG);
    assert.equal(b.tun.written.length, 0);
  } finally {
    lab.close();
  }
});

test('heartbeats lost -> failed; never established -> failed with a reason', async () => {
  const lab = new Lab();
  const a = lab.add(A, '198.18.0.1', ['10.32.1.0/24']);
  const b = lab.add(B, '198.18.0.2', ['10.32.2.0/24']);
  try {
    lab.syncPrefixes();
    a.routes.hops.set(B, B);
    b.routes.hops.set(A, A);
    const { hb } = lab.connect(a, b, sodium.randomBytes(32));
    await lab.until(() => a.events.includes(`up:${B}`) && b.events.includes(`up:${A}`), 'established');
    assert.equal(hb.status().overlay, 'sleeve');
    lab.net.drop = () => true;
    await lab.until(() => a.events.some((e) => e.startsWith('fail:')) && b.events.some((e) => e.startsWith('fail:')), 'failure', 80, 500);
    assert.match(a.events.find((e) => e.startsWith('fail:'))!, /heartbeat/);
    assert.equal(hb.status().overlay, null);
    assert.match(hb.status().reason!, /heartbeat/);

    const c = lab.add(C, '198.18.0.3', ['10.32.3.0/24']);
    lab.net.drop = (d) => d.fromIp === ipNum('198.18.0.3');
    lab.connect(a, c, null);
    await lab.until(() => c.events.length > 0, 'establish timeout', 120, 500);
    assert.match(c.events[0], /^fail:.*no sleeve heartbeats both ways/);
  } finally {
    lab.close();
  }
});

/** Two established routers on one FakeClock, each with a lag monitor on it (lib/lag.ts) or none. */
async function lagLab(withLag: boolean) {
  const lab = new Lab();
  const monitors = withLag ? [new LagMonitor({ clock: lab.clock }), new LagMonitor({ clock: lab.clock })] : [];
  for (const m of monitors) m.start();
  const a = lab.add(A, '198.18.0.1', ['10.32.1.0/24'], { lag: monitors[0] });
  const b = lab.add(B, '198.18.0.2', ['10.32.2.0/24'], { lag: monitors[1] });
  lab.syncPrefixes();
  a.routes.hops.set(B, B);
  b.routes.hops.set(A, A);
  lab.connect(a, b, sodium.randomBytes(32));
  await lab.until(() => a.events.includes(`up:${B}`) && b.events.includes(`up:${A}`), 'established');
  await lab.forwarding();
  // idle: beats once per 10 s window
  for (let i = 0; i < 12; i++) { lab.clock.advance(1000); await lab.settle(); }
  const close = (): void => { for (const m of monitors) m.stop(); lab.close(); };
  return { lab, a, b, close };
}

for (const withLag of [true, false]) {
  test(`a 30 s stall of the whole host (both routers) ${withLag ? 'keeps the path: the stall is credited and the data sent meanwhile arrives' : 'without lag credit loses the path on both ends'}`, async () => {
    const { lab, a, b, close } = await lagLab(withLag);
    try {
      assert.deepEqual([a.events.length, b.events.length], [1, 1]);
      lab.clock.stall(30_000); // longer than the 25 s silence limit, no timer fires meanwhile
      b.tun.inject(ipv4Packet({ src: '10.32.2.7', dst: '10.32.1.5', payload: marker('during the stall') }));
      for (let i = 0; i < 20; i++) { lab.clock.advance(250); await lab.settle(); }
      const fails = [...a.events, ...b.events].filter((e) => e.startsWith('fail:'));
      if (withLag) {
        assert.deepEqual(fails, []);
        assert.ok(a.tun.written.some((p) => p.includes(marker('during the stall'))), 'the packet sent during the stall was delivered');
      } else {
        assert.ok(fails.length >= 2, `both ends declared the path lost: ${fails.join(', ')}`);
      }
    } finally {
      close();
    }
  });
}

test('a silent peer is still declared lost under permanent saturation: within the silence limit plus the cap', async () => {
  const { lab, a, close } = await lagLab(true);
  try {
    const t0 = lab.clock.now();
    lab.net.drop = () => true;
    // the loop is blocked 2 s of every 2.25 s, for as long as it takes
    while (!a.events.some((e) => e.startsWith('fail:')) && lab.clock.now() - t0 < 120_000) {
      lab.clock.stall(2000);
      lab.clock.advance(250);
      await lab.settle();
    }
    const took = lab.clock.now() - t0;
    assert.match(a.events.find((e) => e.startsWith('fail:')) ?? '', /heartbeat/);
    // measured from the drop, which is no earlier than the last beat heard; plus one tick (1 s) and one step (2.25 s)
    assert.ok(took > 30_000, `the stalls were credited (lost after ${took} ms)`);
    assert.ok(took <= 25_000 + 25_000 + 1000 + 2250, `lost within limit + cap (${took} ms)`);
  } finally {
    close();
  }
});

test('learns the peer address from authenticated heartbeats (NAT)', async () => {
  const lab = new Lab();
  const a = lab.add(A, '198.18.0.1', ['10.32.1.0/24']);
  const b = lab.add(B, '198.18.0.2', ['10.32.2.0/24']);
  try {
    lab.syncPrefixes();
    a.routes.hops.set(B, B);
    b.routes.hops.set(A, A);
    // a's UDP leaves through a NAT: b sees 203.0.113.1:40000, and b's first guess (a's TCP address) is unreachable
    const aIp = ipNum('198.18.0.1');
    const natIp = ipNum('203.0.113.1');
    const orig = lab.net.deliver.bind(lab.net);
    let direct = 0;
    lab.net.deliver = (d) => {
      if (d.fromIp === aIp) return orig({ ...d, fromIp: natIp, fromPort: 40000 });
      if (d.toIp === natIp && d.toPort === 40000) return orig({ ...d, toIp: aIp, toPort: 6783 });
      if (d.toIp === aIp) { direct++; return; }
      return orig(d);
    };
    lab.connect(a, b, sodium.randomBytes(32));
    await lab.until(() => a.events.includes(`up:${B}`) && b.events.includes(`up:${A}`), 'established through the NAT');
    a.tun.inject(ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.7', payload: marker('out') }));
    b.tun.inject(ipv4Packet({ src: '10.32.2.7', dst: '10.32.1.5', payload: marker('back') }));
    await lab.until(() => a.tun.written.length === 1 && b.tun.written.length === 1, 'traffic both ways');
    assert.ok(direct > 0, 'b first tried the unreachable address');
  } finally {
    lab.close();
  }
});

test('malformed control messages are protocol errors; other overlays are ignored', async () => {
  const { lab, ha } = await twoNodes(sodium.randomBytes(32));
  try {
    const { Packr } = await import('msgpackr');
    const pk = new Packr({ useRecords: false });
    assert.throws(() => ha.onMessage(Buffer.from([0xc1])), { code: 'EPROTO' });
    assert.throws(() => ha.onMessage(pk.pack({ v: 1, o: 'sleeve', t: 'hello', idx: -1, port: 1 })), { code: 'EPROTO' });
    assert.throws(() => ha.onMessage(pk.pack({ v: 9, o: 'sleeve', t: 'hear', on: true })), { code: 'EPROTO' });
    assert.throws(() => ha.onMessage(pk.pack({ v: 1, o: 'sleeve', t: 'what' })), { code: 'EPROTO' });
    ha.onMessage(pk.pack({ v: 1, o: 'fastdp', t: 'anything' }));
    assert.equal(ha.status().overlay, 'sleeve');
  } finally {
    lab.close();
  }
});

test('closing a handle stops its traffic and withdraws the path', async () => {
  const { lab, a, b, ha } = await twoNodes(null);
  try {
    ha.close();
    a.tun.inject(ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.7', payload: marker('x') }));
    await lab.until(() => a.tun.written.length === 1, 'icmp');
    assert.equal(a.tun.written[0][21], 1, 'host unreachable: no path any more');
    assert.equal(a.sleeve.counters.dropNoRoute, 1);
    assert.equal(b.tun.written.length, 0);
    const h = new FrameHeader();
    assert.ok(parseHeader(Buffer.from([1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), 0, 16, h, false));
  } finally {
    lab.close();
  }
});

test('an I/O error in the packet loop stops that loop, is logged and shows in status (no crash, no busy loop)', async () => {
  const { lab, a, ha } = await twoNodes(null);
  try {
    let reads = 0;
    a.tun.readBatch = () => {
      reads++;
      throw new Error('EBADFD: device gone');
    };
    a.tun.inject(ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.7' }));
    a.tun.inject(ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.7' }));
    await lab.settle();
    assert.equal(reads, 1, 'polling stopped after the error');
    assert.equal(ha.status().overlay, null);
    assert.match(ha.status().reason!, /tx data path stopped: EBADFD/);
  } finally {
    lab.close();
  }
});

// ---- route source subscription order, data-path liveness, stalled status ----------------------

test('a sleeve built before its mesh hears route changes once the mesh is bound (LateRouteSource)', async () => {
  const lab = new Lab();
  // the router builds the sleeve first and the mesh after (the mesh needs the sleeve as its overlay):
  // the sleeve subscribes to routesChanged in its constructor, while there is no mesh yet
  const src = new LateRouteSource(A);
  const a = lab.add(A, '198.18.0.1', ['10.32.1.0/24'], { routeSource: src });
  const b = lab.add(B, '198.18.0.2', ['10.32.2.0/24']);
  try {
    assert.equal(src.subscribers, 1, 'the subscription made before the mesh existed is kept');
    lab.syncPrefixes();
    b.routes.hops.set(A, A);
    lab.connect(a, b, sodium.randomBytes(32));
    await lab.until(() => a.events.includes(`up:${B}`) && b.events.includes(`up:${A}`), 'established');
    const mesh = new FakeRoutes(A);
    src.bind(mesh);
    assert.equal(mesh.listenerCount('routesChanged'), 1);
    // routes come later, as they do once the topology settles: only the event tells the sleeve
    mesh.hops.set(B, B);
    mesh.emit('routesChanged');
    await lab.forwarding();
    a.tun.inject(ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.7', payload: marker('after-bind') }));
    await lab.until(() => b.tun.written.length === 1, 'the packet crosses once the route arrived');
    assert.equal(a.sleeve.counters.dropNoRoute, 0);
    assert.throws(() => src.bind(mesh), /already bound/);
    src.unbind();
    assert.equal(mesh.listenerCount('routesChanged'), 0);
  } finally {
    lab.close();
  }
});

test('LateRouteSource: next hops come from the bound mesh; a bind tells subscribers at once', () => {
  const src = new LateRouteSource(A);
  let heard = 0;
  const fn = (): void => { heard++; };
  src.on('routesChanged', fn);
  assert.equal(src.unicastNextHop(B), undefined, 'no mesh: no routes');
  const mesh = new FakeRoutes(A);
  mesh.hops.set(B, C);
  src.bind(mesh);
  assert.equal(heard, 1, 'routes may exist already when the mesh is bound');
  assert.equal(src.unicastNextHop(B), C);
  mesh.emit('routesChanged');
  assert.equal(heard, 2);
  src.off('routesChanged', fn);
  mesh.emit('routesChanged');
  assert.equal(heard, 2);
});

test('heartbeats leave through the packet engine (TUN lane, path keys) and say what the sender routes', async () => {
  const lab = new Lab();
  const a = lab.add(A, '198.18.0.1', ['10.32.1.0/24']);
  const b = lab.add(B, '198.18.0.2', ['10.32.2.0/24']);
  try {
    lab.syncPrefixes();
    a.routes.hops.set(B, B);
    b.routes.hops.set(A, A);
    lab.net.capture = true;
    lab.connect(a, b, sodium.randomBytes(32));
    await lab.until(() => a.events.includes(`up:${B}`) && b.events.includes(`up:${A}`), 'established');
    lab.clock.advance(1000);
    await lab.settle();
    const h = new FrameHeader();
    const beats = lab.net.captured.filter((d) => parseHeader(d.data, 0, d.data.length, h, true) && h.type === FrameType.Heartbeat).length;
    assert.ok(beats >= 2, `heartbeats captured: ${beats}`);
    for (const d of lab.net.captured) {
      if (!parseHeader(d.data, 0, d.data.length, h, true) || h.type !== FrameType.Heartbeat) continue;
      assert.equal(h.lane, LANE_TX, 'sealed by the engine that reads the TUN, on its lane');
      assert.equal(d.data.length, HDR + HB_BODY + TAG);
    }
    assert.ok(a.sleeve.counters.heartbeatsSent >= 1 && b.sleeve.counters.heartbeatsSent >= 1);
    assert.ok(COUNTER_NAMES.includes('dataStalls'));
  } finally {
    lab.close();
  }
});

test('established but no route to the peer\'s prefixes: status says data does not flow, both ends; counted', async () => {
  const log = new MemoryLogger();
  const lab = new Lab();
  const a = lab.add(A, '198.18.0.1', ['10.32.1.0/24'], { log });
  const b = lab.add(B, '198.18.0.2', ['10.32.2.0/24']);
  try {
    lab.syncPrefixes();
    b.routes.hops.set(A, A);
    // a has no next hop for b yet: the mesh's routes lag the connection (what a restart looked like)
    const { ha, hb } = lab.connect(a, b, sodium.randomBytes(32));
    await lab.until(() => a.events.includes(`up:${B}`) && b.events.includes(`up:${A}`), 'established');
    await lab.until(() => hb.status().stalled !== undefined, 'b hears that a does not route its prefixes');
    assert.equal(ha.status().overlay, 'sleeve', 'the connection itself is up');
    assert.equal(ha.status().stalled, 'no route to its prefixes');
    assert.equal(hb.status().overlay, 'sleeve');
    assert.equal(hb.status().stalled, 'the peer has no route to our prefixes');
    // a packet from a's TUN is dropped for lack of a route while status says so
    a.tun.inject(ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.7', payload: marker('lost') }));
    await lab.until(() => a.sleeve.counters.dropNoRoute === 1, 'no-route drop');
    // lasting stalls are logged and counted once
    await lab.until(() => a.sleeve.counters.dataStalls === 1, 'stall counted', 40, 500);
    assert.ok(log.records.some((l) => l.msg === 'sleeve established but data not flowing' && l.reason === 'no route to its prefixes'));
    // the route arrives: both ends see data flowing again (b without waiting for a's next heartbeat round)
    a.routes.hops.set(B, B);
    a.routes.emit('routesChanged');
    await lab.forwarding();
    assert.equal(ha.status().stalled, undefined);
    assert.equal(hb.status().stalled, undefined);
    a.tun.inject(ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.7', payload: marker('through') }));
    await lab.until(() => b.tun.written.length === 1, 'delivered');
    lab.clock.advance(1000);
    await lab.settle();
    assert.ok(log.records.some((l) => l.msg === 'sleeve data flowing again'));
    assert.equal(a.sleeve.counters.dataStalls, 1);
  } finally {
    lab.close();
  }
});

test('a peer that lacks our announcement (or an older one) is shown as not carrying our data', async () => {
  const lab = new Lab();
  const a = lab.add(A, '198.18.0.1', ['10.32.1.0/24']);
  const b = lab.add(B, '198.18.0.2', ['10.32.2.0/24']);
  try {
    // b never heard a's announcement (lost gossip): a routes b's prefixes, b routes nothing of a's
    a.prefixes.mergeUpdate(b.prefixes.full());
    a.routes.hops.set(B, B);
    b.routes.hops.set(A, A);
    const { ha, hb } = lab.connect(a, b, null);
    await lab.until(() => a.events.includes(`up:${B}`) && b.events.includes(`up:${A}`), 'established');
    await lab.until(() => ha.status().stalled !== undefined, 'a hears which announcement b routes');
    assert.equal(ha.status().stalled, 'the peer has none of our prefixes');
    assert.equal(hb.status().stalled, undefined, 'b routes everything it knows a announces (nothing)');
    b.prefixes.mergeUpdate(a.prefixes.full());
    await lab.forwarding();
    assert.equal(ha.status().stalled, undefined);
    // a announces more: until b has installed it, a says so
    a.prefixes.setLocal(['10.32.1.0/24', '10.32.9.9/32']);
    await lab.forwarding();
    assert.equal(ha.status().stalled, 'the peer routes an older announcement of our prefixes');
    b.prefixes.mergeUpdate(a.prefixes.full());
    await lab.forwarding();
    assert.equal(ha.status().stalled, undefined);
  } finally {
    lab.close();
  }
});

/** Counts the forwarding specs the sleeve hands its (inline) packet engine. */
function countForwarding(n: Node): { sent: number } {
  const dp = (n.sleeve as unknown as { inline: { setForwarding(f: unknown): void } }).inline;
  const seen = { sent: 0 };
  const orig = dp.setForwarding.bind(dp);
  dp.setForwarding = (f) => {
    seen.sent++;
    orig(f);
  };
  return seen;
}

test('forwarding: a burst of route and announcement events is one rebuild; one that changes nothing sends nothing', async () => {
  const { lab, a, b } = await twoNodes(null);
  try {
    const fwd = countForwarding(a);
    // a burst as a forming mesh makes it: routes recomputed, announcements arriving
    const c = lab.add(C, '198.18.0.3', ['10.32.3.0/24']);
    a.routes.hops.set(C, B);
    a.routes.emit('routesChanged');
    a.prefixes.mergeUpdate(c.prefixes.full());
    a.routes.emit('routesChanged');
    assert.equal(fwd.sent, 0, 'nothing before the window closes');
    lab.clock.advance(FWD_COALESCE_MS - 1);
    assert.equal(fwd.sent, 0);
    lab.clock.advance(1);
    assert.equal(fwd.sent, 1, 'one rebuild for the burst');
    a.tun.inject(ipv4Packet({ src: '10.32.1.5', dst: '10.32.3.7', ttl: 5, payload: marker('to-c') }));
    const before = b.sleeve.counters.udpInPackets;
    await lab.until(() => b.sleeve.counters.dropUnknownDest + b.sleeve.counters.dropNoRoute + b.sleeve.counters.relayedPackets > 0, 'the packet goes to b, the next hop to c');
    assert.ok(b.sleeve.counters.udpInPackets > before);
    assert.equal(a.sleeve.counters.dropNoRoute + a.sleeve.counters.dropUnknownDest, 0);
    // routes recomputed with the same result, the same announcement again: the engines keep what they have
    a.routes.emit('routesChanged');
    a.prefixes.mergeUpdate(c.prefixes.full());
    lab.clock.advance(FWD_COALESCE_MS);
    assert.equal(fwd.sent, 1, 'an unchanged spec is not sent');
    // a change of the next hop alone is one
    a.routes.hops.delete(C);
    a.routes.emit('routesChanged');
    lab.clock.advance(FWD_COALESCE_MS);
    assert.equal(fwd.sent, 2);
  } finally {
    lab.close();
  }
});

test('forwarding: closing the sleeve with a rebuild pending leaves no timer and sends nothing', async () => {
  const { lab, a, b } = await twoNodes(null);
  const fwd = countForwarding(a);
  a.routes.emit('routesChanged');
  a.routes.hops.delete(B);
  a.routes.emit('routesChanged');
  await a.sleeve.close();
  await b.sleeve.close();
  assert.equal(lab.clock.pending(), 0, 'no heartbeat tick, no forwarding rebuild left');
  lab.clock.advance(10 * FWD_COALESCE_MS);
  assert.equal(fwd.sent, 0);
  // events after close are ignored
  a.routes.emit('routesChanged');
  assert.equal(lab.clock.pending(), 0);
});
