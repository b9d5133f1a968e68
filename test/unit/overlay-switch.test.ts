// OverlaySwitch with scripted overlays and with the real FastDp over fakes (FakeClock): established on the
// first overlay up, carrier = best established, immediate fallback, climb-back after the hold, fatal only
// when the required overlay fails, reasons in status, message fan-out; FastDpRoutes follows the carrier.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'events';
import { FakeClock } from '../../lib/clock';
import { silentLogger } from '../../lib/log';
import { Msg, type MeshConnection } from '../../mesh/types';
import { OverlaySwitch, FastDpRoutes, type SubHandle, type SubManager } from '../../router/overlay-switch';
import { FastDp } from '../../router/fastdp';
import type { DesiredRoute } from '../../host/routes';
import { FakeNet, FakeVx, connPair, features } from './fastdp-fakes';

class Scripted implements SubManager {
  cbs: Array<{ established(): void; failed(r: string): void }> = [];
  msgs: Uint8Array[] = [];
  reason = 'not yet';
  closed = 0;
  constructor(readonly name: string) {}
  attach(_c: MeshConnection, cb: { established(): void; failed(r: string): void }): SubHandle {
    this.cbs.push(cb);
    let up = false;
    const self = this;
    const wrapped = { established: () => { up = true; cb.established(); }, failed: (r: string) => { up = false; self.reason = r; cb.failed(r); } };
    this.cbs[this.cbs.length - 1] = wrapped;
    return {
      onMessage: (p) => { this.msgs.push(p); },
      close: () => { this.closed++; },
      status: () => ({ overlay: up ? this.name : null, encrypted: false, mtu: this.name === 'fastdp' ? 1450 : 1410, ...(up ? {} : { reason: this.reason }) }),
    };
  }
  get cb() { return this.cbs[0]; }
}

function conn(peer = '02:00:00:00:00:02'): MeshConnection {
  return {
    id: 'x', outbound: true, remoteAddr: '198.18.0.12:6783', localAddr: '198.18.0.11:1', encrypted: false, sessionKey: null, dataKey: null,
    local: features('02:00:00:00:00:01', ['fastdp', 'sleeve']), remote: features(peer, ['fastdp', 'sleeve']),
    send() {}, close() {}, onMessage() {}, onClose() {},
  };
}

function mkSwitch(clock: FakeClock, climbBackMs = 5000) {
  const fd = new Scripted('fastdp');
  const sl = new Scripted('sleeve');
  const sw = new OverlaySwitch({ overlays: [{ name: 'fastdp', manager: fd, optional: true }, { name: 'sleeve', manager: sl }], clock, log: silentLogger(), climbBackMs });
  const events: string[] = [];
  const changes: string[] = [];
  sw.onChange((p, o) => changes.push(`${p.slice(-2)}:${o}`));
  const h = sw.attach(conn(), { established: () => events.push('established'), failed: (r) => events.push(`failed: ${r}`) });
  return { fd, sl, sw, h, events, changes };
}

test('switch: established on the first overlay, best carries, fallback at once, climb back after the hold', () => {
  const clock = new FakeClock();
  const { fd, sl, sw, h, events, changes } = mkSwitch(clock);
  assert.equal(sw.carrier('02:00:00:00:00:02'), null);
  sl.cb.established();
  assert.deepEqual(events, ['established']);
  assert.equal(sw.carrier('02:00:00:00:00:02'), 'sleeve');
  assert.equal(h.status().overlay, 'sleeve');
  assert.equal(h.status().reason, 'not yet', 'why fastdp does not carry');
  // first establishment of fastdp: taken at once (it never failed)
  fd.cb.established();
  assert.equal(sw.carrier('02:00:00:00:00:02'), 'fastdp');
  assert.deepEqual(h.status(), { overlay: 'fastdp', encrypted: false, mtu: 1450 });
  // fastdp fails: sleeve carries immediately, the connection stays up
  fd.cb.failed('heartbeats failing since T');
  assert.equal(sw.carrier('02:00:00:00:00:02'), 'sleeve');
  assert.deepEqual(events, ['established'], 'no connection failure, no second established');
  assert.deepEqual(h.status(), { overlay: 'sleeve', encrypted: false, mtu: 1410, reason: 'heartbeats failing since T' });
  // it comes back: held for climbBackMs
  clock.advance(1000);
  fd.cb.established();
  assert.equal(sw.carrier('02:00:00:00:00:02'), 'sleeve');
  assert.match(h.status().reason!, /fastdp recovered, carries again at/);
  clock.advance(4999);
  assert.equal(sw.carrier('02:00:00:00:00:02'), 'sleeve');
  clock.advance(1);
  assert.equal(sw.carrier('02:00:00:00:00:02'), 'fastdp');
  // a flap during the hold restarts it
  fd.cb.failed('again');
  clock.advance(100);
  fd.cb.established();
  clock.advance(2000);
  fd.cb.failed('again 2');
  clock.advance(100);
  fd.cb.established();
  clock.advance(4000);
  assert.equal(sw.carrier('02:00:00:00:00:02'), 'sleeve', 'the hold restarts with each recovery');
  clock.advance(1000);
  assert.equal(sw.carrier('02:00:00:00:00:02'), 'fastdp');
  assert.deepEqual(changes, ['02:sleeve', '02:fastdp', '02:sleeve', '02:fastdp', '02:sleeve', '02:fastdp']);
  assert.equal(sw.switches.fastdp, 3);
  // messages reach every overlay; close closes every overlay
  h.onMessage(Uint8Array.of(1, 2));
  assert.equal(fd.msgs.length, 1);
  assert.equal(sl.msgs.length, 1);
  h.close();
  assert.equal(fd.closed + sl.closed, 2);
  assert.equal(sw.carrier('02:00:00:00:00:02'), null);
  assert.equal(changes.at(-1), '02:null');
});

test('switch: fastdp failure alone is not fatal; sleeve failure with nothing established is', () => {
  const clock = new FakeClock();
  const { fd, sl, h, events } = mkSwitch(clock);
  fd.cb.failed('peer has no fastdp');
  assert.deepEqual(events, []);
  assert.equal(h.status().reason, 'fastdp: peer has no fastdp; sleeve: not yet');
  sl.cb.established();
  assert.deepEqual(events, ['established']);
  assert.deepEqual(h.status(), { overlay: 'sleeve', encrypted: false, mtu: 1410, reason: 'peer has no fastdp' });
  sl.cb.failed('no sleeve heartbeats from the peer');
  assert.equal(events[1], 'failed: fastdp: peer has no fastdp; sleeve: no sleeve heartbeats from the peer');
});

test('switch: sleeve lost while fastdp carries keeps the connection up on fastdp', () => {
  const clock = new FakeClock();
  const { fd, sl, sw, events } = mkSwitch(clock);
  fd.cb.established();
  sl.cb.established();
  sl.cb.failed('no sleeve heartbeats');
  assert.deepEqual(events, ['established']);
  assert.equal(sw.carrier('02:00:00:00:00:02'), 'fastdp');
});

test('switch: a disabled overlay is not attached, not advertised, and says why', () => {
  const clock = new FakeClock();
  const sl = new Scripted('sleeve');
  const sw = new OverlaySwitch({ overlays: [{ name: 'fastdp', manager: null, optional: true }, { name: 'sleeve', manager: sl }], clock, log: silentLogger() });
  assert.deepEqual(sw.advertised(), ['sleeve']);
  const events: string[] = [];
  const h = sw.attach(conn(), { established: () => events.push('e'), failed: (r) => events.push(r) });
  sl.cb.established();
  assert.deepEqual(h.status(), { overlay: 'sleeve', encrypted: false, mtu: 1410, reason: 'disabled by flag' });
  assert.deepEqual(sw.statuses()[0].overlays, [{ name: 'fastdp', established: false, reason: 'disabled by flag' }, { name: 'sleeve', established: true }]);
});

test('FastDpRoutes: prefixes behind fastdp next hops go via the VTEP onlink; sleeve skips them', () => {
  const clock = new FakeClock();
  const { fd, sl, sw } = mkSwitch(clock);
  const ME = '02:00:00:00:00:01';
  const P2 = '02:00:00:00:00:02';
  const P3 = '02:00:00:00:00:03';
  const table = new Map<string, { prefixes: string[] }>([[ME, { prefixes: ['10.32.0.0/24'] }], [P2, { prefixes: ['10.32.1.0/24'] }], [P3, { prefixes: ['10.32.2.0/24', '10.40.0.5/32'] }]]);
  const prefixListeners: Array<() => void> = [];
  const routes = new EventEmitter() as EventEmitter & { unicastNextHop(d: string): string | undefined };
  const hops = new Map([[P2, P2], [P3, P2]]);
  routes.unicastNextHop = (d) => hops.get(d);
  const got: DesiredRoute[][] = [];
  const fr = new FastDpRoutes({
    name: ME, log: silentLogger(), routes,
    prefixes: { all: () => table, local: () => ['10.32.0.0/24'], onChange: (fn) => { prefixListeners.push(fn); return () => undefined; } },
    carrier: sw, vtepOf: (p) => (p === P2 ? '169.254.7.7' : undefined),
    sink: { setDesired: (owner, r) => { assert.equal(owner, 'fastdp'); got.push(r); } },
  });
  assert.deepEqual(got, [[]]);
  assert.equal(fr.sleeveSkips(P3), false);
  sl.cb.established();
  fd.cb.established();
  const via = { dev: 'weave-vx', via: '169.254.7.7', onlink: true };
  assert.deepEqual(got.at(-1), [{ dst: '10.32.1.0/24', ...via }, { dst: '10.32.2.0/24', ...via }, { dst: '10.40.0.5/32', ...via }]);
  assert.equal(fr.sleeveSkips(P3), true, 'multi-hop through a fastdp next hop');
  assert.equal(fr.sleeveSkips(ME), false);
  // the path to P3 moves to a sleeve-only neighbour: its prefixes leave the fastdp routes
  hops.set(P3, '02:00:00:00:00:09');
  routes.emit('routesChanged');
  assert.deepEqual(got.at(-1), [{ dst: '10.32.1.0/24', ...via }]);
  assert.equal(fr.sleeveSkips(P3), false);
  fd.cb.failed('heartbeats failing');
  assert.deepEqual(got.at(-1), []);
  const n = got.length;
  prefixListeners[0]();
  assert.equal(got.length, n, 'unchanged routes are not pushed again');
  fr.close();
});

test('switch + real FastDp over a fake network: UDP cut -> sleeve within 6.5 s (deadMs 5 s + a heartbeat), healed -> fastdp again within 8 s', () => {
  const clock = new FakeClock();
  const net = new FakeNet(clock);
  const mk = (name: string, vtep: string, ul: string) => {
    const vx = new FakeVx();
    const fd = new FastDp({ name, clock, log: silentLogger(), host: vx, io: net.io(vtep), underlay: ul, mac: name, vtep, mtu: 1450, esp: { ok: true } });
    const sl = new Scripted('sleeve');
    const sw = new OverlaySwitch({ overlays: [{ name: 'fastdp', manager: fd, optional: true }, { name: 'sleeve', manager: sl }], clock, log: silentLogger(), climbBackMs: 3000 });
    return { fd, sl, sw };
  };
  const A = mk('02:00:00:00:00:01', '169.254.0.1', '198.18.0.11');
  const B = mk('02:00:00:00:00:02', '169.254.0.2', '198.18.0.12');
  const [ca, cb] = connPair(clock, features('02:00:00:00:00:01', ['fastdp', 'sleeve'], { fastdp: A.fd.overlayParams() }), features('02:00:00:00:00:02', ['fastdp', 'sleeve'], { fastdp: B.fd.overlayParams() }));
  const ha = A.sw.attach(ca, { established() {}, failed() { assert.fail('A connection must not fail'); } });
  const hb = B.sw.attach(cb, { established() {}, failed() { assert.fail('B connection must not fail'); } });
  ca.deliver = (t, p) => { assert.equal(t, Msg.Overlay); ha.onMessage(p); };
  cb.deliver = (t, p) => { assert.equal(t, Msg.Overlay); hb.onMessage(p); };
  A.sl.cb.established();
  B.sl.cb.established();
  const until = (pred: () => boolean, maxMs: number): number => {
    const t0 = clock.now();
    while (!pred()) {
      if (clock.now() - t0 > maxMs) return Infinity;
      clock.advance(100);
    }
    return clock.now() - t0;
  };
  const P1 = '02:00:00:00:00:01';
  const P2 = '02:00:00:00:00:02';
  assert.ok(until(() => A.sw.carrier(P2) === 'fastdp' && B.sw.carrier(P1) === 'fastdp', 3000) <= 2000);
  net.cut = true;
  const down = until(() => A.sw.carrier(P2) === 'sleeve' && B.sw.carrier(P1) === 'sleeve', 10_000);
  assert.ok(down <= 6500, `fell back after ${down} ms`);
  assert.match(ha.status().reason!, /^heartbeats failing since \d{4}-/);
  net.cut = false;
  const up = until(() => A.sw.carrier(P2) === 'fastdp' && B.sw.carrier(P1) === 'fastdp', 30_000);
  assert.ok(up <= 8000, `climbed back after ${up} ms`);
  assert.equal(ha.status().overlay, 'fastdp');
  ha.close();
  hb.close();
  A.fd.close();
  B.fd.close();
});

test('FastDpRoutes with holdMs (kept data path): a lost direct peer keeps its own VTEP for holdMs, not another hop; a fastdp failure while connected does not wait', () => {
  const clock = new FakeClock();
  const ME = '02:00:00:00:00:01';
  const P2 = '02:00:00:00:00:02';
  const P3 = '02:00:00:00:00:03';
  const table = new Map<string, { prefixes: string[] }>([[P2, { prefixes: ['10.32.1.0/24'] }], [P3, { prefixes: ['10.32.2.0/24'] }]]);
  const routes = new EventEmitter() as EventEmitter & { unicastNextHop(d: string): string | undefined };
  const hops = new Map([[P2, P2], [P3, P3]]);
  routes.unicastNextHop = (d) => hops.get(d);
  const carriers = new Map<string, string | null>([[P2, 'fastdp'], [P3, 'fastdp']]);
  const vteps = new Map([[P2, '169.254.7.7'], [P3, '169.254.8.8']]);
  const got: DesiredRoute[][] = [];
  const fr = new FastDpRoutes({
    name: ME, log: silentLogger(), routes, holdMs: 30_000, clock,
    prefixes: { all: () => table, local: () => [], onChange: () => () => undefined },
    carrier: { carrier: (p) => carriers.get(p) ?? null, onChange: () => () => undefined },
    vtepOf: (p) => (carriers.get(p) === 'fastdp' ? vteps.get(p) : undefined),
    sink: { setDesired: (_o, r) => { got.push(r); } },
  });
  const via = (v: string) => ({ dev: 'weave-vx', via: v, onlink: true });
  assert.deepEqual(got.at(-1), [{ dst: '10.32.1.0/24', ...via('169.254.7.7') }, { dst: '10.32.2.0/24', ...via('169.254.8.8') }]);
  // P2's router restarts: the mesh now says P2 is behind P3 (a path P3 is losing too)
  carriers.set(P2, null);
  hops.set(P2, P3);
  routes.emit('routesChanged');
  assert.deepEqual(got.at(-1), [{ dst: '10.32.1.0/24', ...via('169.254.7.7') }, { dst: '10.32.2.0/24', ...via('169.254.8.8') }], 'held on its own VTEP');
  assert.equal(fr.sleeveSkips(P2), true);
  clock.advance(29_000);
  routes.emit('routesChanged');
  assert.equal(got.at(-1)![0].via, '169.254.7.7');
  clock.advance(1_100);
  assert.deepEqual(got.at(-1), [{ dst: '10.32.1.0/24', ...via('169.254.8.8') }, { dst: '10.32.2.0/24', ...via('169.254.8.8') }], 'after the hold, the mesh\'s path');
  // back directly: its own VTEP again
  carriers.set(P2, 'fastdp');
  hops.set(P2, P2);
  routes.emit('routesChanged');
  assert.equal(got.at(-1)![0].via, '169.254.7.7');
  // fastdp to P3 fails while the connection stays: the sleeve's at once
  carriers.set(P3, 'sleeve');
  routes.emit('routesChanged');
  assert.deepEqual(got.at(-1), [{ dst: '10.32.1.0/24', ...via('169.254.7.7') }]);
  fr.close();
});
