// FastDp control plane over fakes (FakeClock, an in-memory connection pair, a heartbeat network with
// programmable loss): control message codec, establishment, failure and recovery with reasons, MTU
// black hole detection, the "peer has no fastdp" / "kernel lacks ESP" decisions, and the ESP path.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Packr } from 'msgpackr';
import { FakeClock } from '../../lib/clock';
import { ProtocolError } from '../../lib/errors';
import { MemoryLogger, silentLogger } from '../../lib/log';
import { Msg } from '../../mesh/types';
import { FastDp, decodeFastDpCtl, encodeFastDpCtl, REASON, type EspInstaller } from '../../router/fastdp';
import type { PeerSas } from '../../ipsec/xfrm';
import { FakeNet, FakeVx, connPair, features, type FakeConn } from './fastdp-fakes';

const N1 = '02:00:00:00:00:01';
const N2 = '02:00:00:00:00:02';
const V1 = '169.254.0.1';
const V2 = '169.254.0.2';
const MTU = 1450;

interface Side { fd: FastDp; vx: FakeVx; conn: FakeConn; events: string[]; handle: ReturnType<FastDp['attach']> }

function setup(opts: { key?: Uint8Array | null; esp?: { ok: boolean; reason?: string }; espB?: { ok: boolean; reason?: string }; xfrm?: EspInstaller; bOverlays?: string[]; bParams?: boolean; log?: MemoryLogger } = {}) {
  const clock = new FakeClock();
  const net = new FakeNet(clock);
  const mk = (name: string, vtep: string, underlay: string, mac: string) => {
    const vx = new FakeVx();
    const esp = (name === N2 ? opts.espB : undefined) ?? opts.esp ?? { ok: true };
    const fd = new FastDp({ name, clock, log: opts.log ?? silentLogger(), host: vx, io: net.io(vtep), underlay, mac, vtep, mtu: MTU, esp, xfrm: opts.xfrm });
    return { fd, vx };
  };
  const a = mk(N1, V1, '198.18.0.11', N1);
  const b = mk(N2, V2, '198.18.0.12', N2);
  const fa = features(N1, ['fastdp', 'sleeve'], { fastdp: a.fd.overlayParams() });
  const fb = features(N2, opts.bOverlays ?? ['fastdp', 'sleeve'], opts.bParams === false ? {} : { fastdp: b.fd.overlayParams() });
  const [ca, cb] = connPair(clock, fa, fb, opts.key ?? null);
  const side = (x: { fd: FastDp; vx: FakeVx }, conn: FakeConn): Side => {
    const events: string[] = [];
    const handle = x.fd.attach(conn, { established: () => events.push('established'), failed: (r) => events.push(`failed: ${r}`) });
    conn.deliver = (type, payload) => {
      assert.equal(type, Msg.Overlay);
      handle.onMessage(payload);
    };
    return { ...x, conn, events, handle };
  };
  return { clock, net, A: side(a, ca), B: side(b, cb) };
}

test('control codec: round trip, foreign overlay ignored, malformed input is a ProtocolError', () => {
  const token = Buffer.alloc(8, 7);
  const m = decodeFastDpCtl(encodeFastDpCtl({ t: 'hello', mac: N1, vtep: V1, underlay: '198.18.0.11', port: 6784, hb: 6785, token }));
  assert.deepEqual(m, { t: 'hello', mac: N1, vtep: V1, underlay: '198.18.0.11', port: 6784, hb: 6785, token });
  assert.deepEqual(decodeFastDpCtl(encodeFastDpCtl({ t: 'hear', on: false })), { t: 'hear', on: false });
  const packr = new Packr({ useRecords: false, mapsAsObjects: true });
  assert.equal(decodeFastDpCtl(packr.pack({ v: 1, o: 'sleeve', t: 'hello' })), null);
  const bad: unknown[] = [
    [1, 2],
    { v: 2, o: 'fastdp', t: 'hear', on: true },
    { v: 1, t: 'hear', on: true },
    { v: 1, o: 'fastdp', t: 'nope' },
    { v: 1, o: 'fastdp', t: 'hear', on: 1 },
    { v: 1, o: 'fastdp', t: 'hello', mac: 'zz', vtep: V1, underlay: V1, port: 6784, hb: 6785, token },
    { v: 1, o: 'fastdp', t: 'hello', mac: N1, vtep: '1.2.3', underlay: V1, port: 6784, hb: 6785, token },
    { v: 1, o: 'fastdp', t: 'hello', mac: N1, vtep: V1, underlay: V1, port: 0, hb: 6785, token },
    { v: 1, o: 'fastdp', t: 'hello', mac: N1, vtep: V1, underlay: V1, port: 6784, hb: 6785, token: Buffer.alloc(3) },
    { v: 1, o: 'fastdp', t: 'hello', mac: N1, vtep: V1, underlay: V1, port: 6784, hb: 6785, token, nonce: Buffer.alloc(5) },
  ];
  for (const b of bad) assert.throws(() => decodeFastDpCtl(packr.pack(b)), ProtocolError, JSON.stringify(b));
  assert.throws(() => decodeFastDpCtl(Uint8Array.of(0xc1)), ProtocolError);
});

test('two peers: FDB programmed, established both ways, full-size DF heartbeats', () => {
  const { clock, net, A, B } = setup();
  clock.advance(5);
  // no password: the VXLAN guard takes the peer's datagrams in the clear
  assert.deepEqual(A.vx.peers.get(N2), { mac: N2, vtep: V2, underlay: '198.18.0.12', encrypted: false });
  assert.deepEqual(B.vx.peers.get(N1), { mac: N1, vtep: V1, underlay: '198.18.0.11', encrypted: false });
  clock.advance(1000);
  assert.deepEqual(A.events, ['established']);
  assert.deepEqual(B.events, ['established']);
  assert.deepEqual(A.handle.status(), { overlay: 'fastdp', encrypted: false, mtu: MTU });
  assert.equal(A.fd.remoteVtep(N2), V2);
  const sizes = new Set(net.ios.get(V1)!.sizes);
  assert.ok(sizes.has(MTU - 28), `full-size heartbeats sent: ${[...sizes]}`);
  A.handle.close();
  assert.equal(A.vx.peers.size, 0, 'closing removes the peer from the VXLAN device');
  assert.equal(A.fd.remoteVtep(N2), undefined);
});

test('heartbeats cut: failed with "heartbeats failing since", recovers when they flow again', () => {
  const { clock, net, A, B } = setup();
  clock.advance(1100);
  assert.deepEqual(A.events, ['established']);
  const cutAt = clock.now();
  net.cut = true;
  clock.advance(6500);
  assert.equal(A.events[1]?.startsWith('failed: heartbeats failing since'), true, A.events.join('|'));
  assert.equal(B.events[1]?.startsWith('failed: heartbeats failing since'), true, B.events.join('|'));
  const failedAfter = Date.parse(A.events[1].slice('failed: heartbeats failing since '.length, 'failed: heartbeats failing since '.length + 24)) - cutAt;
  assert.ok(failedAfter <= 6100, `detected ${failedAfter} ms after the cut (deadMs 5000 + heartbeat 1000)`);
  assert.match(A.handle.status().reason!, /no heartbeats from the peer over VXLAN/);
  assert.equal(A.handle.status().overlay, null);
  assert.ok(A.vx.peers.has(N2), 'the FDB stays: heartbeats must keep probing for recovery');
  net.cut = false;
  clock.advance(2100);
  assert.deepEqual(A.events.slice(2), ['established']);
  assert.equal(A.handle.status().overlay, 'fastdp');
});

test('MTU black hole: small heartbeats pass, full-size ones are dropped -> detected with that reason', () => {
  const { clock, net, A } = setup();
  net.maxSize = 1000;
  clock.advance(11_000);
  assert.equal(A.events.length, 1);
  assert.match(A.events[0], /MTU black hole/);
  assert.match(A.handle.status().reason!, /small heartbeats arrive but full-size \(1450\) ones do not: MTU black hole/);
  net.maxSize = Infinity;
  clock.advance(2100);
  assert.deepEqual(A.events.slice(1), ['established']);
});

test('local EMSGSIZE on the full heartbeat is reported as such', () => {
  const { clock, net, A } = setup();
  clock.advance(1100);
  net.ios.get(V1)!.localMax = 1000;
  clock.advance(7000);
  assert.match(A.handle.status().reason!, /exceed the local path MTU|peer does not receive/);
  assert.equal(A.fd.counters.hbSendErrors > 0, true);
});

test('peer without fastdp: failed with "peer has no fastdp", no hello, no kernel state', () => {
  const { clock, A } = setup({ bOverlays: ['sleeve'], bParams: false });
  clock.advance(20_000);
  assert.deepEqual(A.events, [`failed: ${REASON.peerNoFastdp}`]);
  assert.equal(A.conn.sent.length, 0);
  assert.equal(A.vx.peers.size, 0);
  assert.equal(A.handle.status().reason, 'peer has no fastdp');
});

test('password on a kernel without ESP: "kernel lacks ESP", never programs plain VXLAN', () => {
  const log = new MemoryLogger();
  const { clock, A, B } = setup({ key: new Uint8Array(32).fill(9), esp: { ok: false, reason: 'kernel lacks ESP (ip xfrm state add ... failed: Protocol not supported)' }, log });
  clock.advance(20_000);
  for (const s of [A, B]) {
    assert.deepEqual(s.events, [`failed: ${REASON.kernelLacksEsp}`]);
    assert.equal(s.vx.peers.size, 0);
    assert.equal(s.conn.sent.length, 1, 'only the "off" message');
    assert.deepEqual(s.handle.status(), { overlay: null, encrypted: false, mtu: MTU, reason: 'kernel lacks ESP' });
  }
  assert.ok(log.find((r) => typeof r.detail === 'string' && /Protocol not supported/.test(r.detail as string)));
});

test('password on a kernel with ESP: nonces exchanged, matching SAs installed before the FDB, removed on close', async () => {
  const installs: PeerSas[] = [];
  const removed: string[] = [];
  const order: string[] = [];
  const xfrm: EspInstaller = {
    install: async (p) => { installs.push(p); order.push(`esp ${p.local}`); },
    removePeer: async (l, r) => { removed.push(`${l}-${r}`); return 4; },
  };
  const { clock, A, B } = setup({ key: new Uint8Array(32).fill(3), xfrm });
  const origSet = A.vx.setPeer.bind(A.vx);
  A.vx.setPeer = (k, p) => { order.push('fdb'); origSet(k, p); };
  clock.advance(5);
  await new Promise((r) => setImmediate(r)); // install() resolves in a microtask
  assert.equal(installs.length, 2);
  const [ia, ib] = installs[0].local === '198.18.0.11' ? installs : [installs[1], installs[0]];
  assert.equal(ia.remote, '198.18.0.12');
  assert.equal(ia.keys.out.spi, ib.keys.in.spi);
  assert.deepEqual(ia.keys.out.keyBlob, ib.keys.in.keyBlob);
  assert.notEqual(ia.keys.out.spi, ia.keys.in.spi);
  assert.deepEqual(order.filter((x) => x !== 'esp 198.18.0.12'), ['esp 198.18.0.11', 'fdb'], 'ESP first, then the FDB');
  assert.equal(A.vx.peers.get(N2)?.encrypted, true, 'the VXLAN guard takes this peer only inside ESP');
  clock.advance(1100);
  assert.deepEqual(A.events, ['established']);
  assert.equal(A.handle.status().encrypted, true);
  A.handle.close();
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(removed, ['198.18.0.11-198.18.0.12']);
  void B;
});

test('password rotation re-keys ESP make-before-break: new inbound SA first, outbound moved on use, old inbound removed after the grace', async () => {
  const k1 = new Uint8Array(32).fill(3);
  const k2 = new Uint8Array(32).fill(4);
  const last = new Map<string, PeerSas>();
  const xfrm: EspInstaller = { install: async (p) => { last.set(p.local, p); }, removePeer: async () => 0 };
  const { clock, A, B } = setup({ key: k1, xfrm });
  clock.advance(5);
  await new Promise((r) => setImmediate(r));
  const flush = async (): Promise<void> => { for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r)); };
  const sa = (side: string) => last.get(side === 'A' ? '198.18.0.11' : '198.18.0.12')!;
  const inSpis = (side: string) => [sa(side).keys.in, ...(sa(side).extraIn ?? [])].map((x) => x.spi);
  /** whatever each side sends out, the other holds an inbound SA for: nothing is dropped */
  const covered = (): void => {
    assert.ok(inSpis('B').includes(sa('A').keys.out.spi), 'B can open what A sends');
    assert.ok(inSpis('A').includes(sa('B').keys.out.spi), 'A can open what B sends');
  };
  covered();
  const oldOutA = sa('A').keys.out.spi;
  for (const [side, step] of [['B', 'accept'], ['A', 'accept'], ['A', 'use'], ['B', 'settled'], ['B', 'use'], ['A', 'settled']] as const) {
    (side === 'A' ? A : B).conn.rekey(step, k2);
    await flush();
    covered();
  }
  assert.notEqual(sa('A').keys.out.spi, oldOutA, 'A sends under the new key');
  assert.equal(sa('A').extraIn?.length, 1, 'the old inbound SA stays for the grace');
  clock.advance(2500);
  await flush();
  assert.deepEqual(sa('A').extraIn, [], 'then it goes');
  assert.deepEqual(sa('B').extraIn, []);
  assert.equal(sa('A').keys.out.spi, sa('B').keys.in.spi);
  assert.equal(sa('B').keys.out.spi, sa('A').keys.in.spi);
});

test('a hello with our own VTEP address is refused as a collision', () => {
  const clock = new FakeClock();
  const net = new FakeNet(clock);
  const vx = new FakeVx();
  const fd = new FastDp({ name: N1, clock, log: silentLogger(), host: vx, io: net.io(V1), underlay: '198.18.0.11', mac: N1, vtep: V1, mtu: MTU, esp: { ok: true } });
  const [ca] = connPair(clock, features(N1, ['fastdp']), features(N2, ['fastdp'], { fastdp: { v: 1, mac: N2, vtep: V1, port: 6784, hb: 6785 } }));
  const events: string[] = [];
  const h = fd.attach(ca, { established: () => events.push('est'), failed: (r) => events.push(r) });
  h.onMessage(encodeFastDpCtl({ t: 'hello', mac: N2, vtep: V1, underlay: '198.18.0.12', port: 6784, hb: 6785, token: Buffer.alloc(8, 1) }));
  clock.advance(1);
  assert.match(events[0], /VTEP collision/);
  assert.equal(vx.peers.size, 0);
  fd.close();
});

test('password, ESP on one side only: the capable side says "peer\'s kernel lacks ESP" at once, nothing installed', async () => {
  const installs: PeerSas[] = [];
  const xfrm: EspInstaller = { install: async (p) => { installs.push(p); }, removePeer: async () => 0 };
  const { clock, A, B } = setup({ key: new Uint8Array(32).fill(5), xfrm, espB: { ok: false, reason: 'kernel lacks ESP (...)' } });
  clock.advance(10);
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(B.events, ['failed: kernel lacks ESP']);
  assert.deepEqual(A.events, ["failed: peer's kernel lacks ESP"]);
  assert.equal(installs.length, 0);
  assert.equal(A.vx.peers.size + B.vx.peers.size, 0);
  clock.advance(20_000);
  assert.equal(A.events.length, 1, 'no later timeout failure');
});

test('heartbeats waiting in the socket while the event loop never polled it still count: the tick drains before judging', () => {
  const { clock, net, A, B } = setup();
  clock.advance(1100);
  assert.deepEqual(A.events, ['established']);
  // a saturated host: due timers run, but the socket's readable callback never does
  net.hold = true;
  clock.advance(20_000);
  assert.deepEqual(A.events, ['established'], 'no flap while heartbeats sat in the socket');
  assert.deepEqual(B.events, ['established']);
  assert.ok(net.ios.get(V1)!.drained >= 19, 'every tick drained the socket');
  // and a real loss is still a loss
  net.cut = true;
  clock.advance(7000);
  assert.equal(A.events[1]?.startsWith('failed: heartbeats failing since'), true, A.events.join('|'));
});
