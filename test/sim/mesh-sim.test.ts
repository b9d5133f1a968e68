// Mesh simulations on the in-memory underlay with a FakeClock and seeded randomness: big random
// meshes (convergence, route agreement, exactly-once broadcast, link failures, partitions) and small
// scenarios for the connection rules (self, name collision, duplicates, limit, backoff, overlay).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeClock } from '../../lib/clock';
import { MemoryLogger } from '../../lib/log';
import { Mesh, type MeshOptions, type OverlayCallbacks, type OverlayManager } from '../../mesh/mesh';
import { unicastTable } from '../../mesh/routes';
import type { GossipData, Gossiper, MeshConnection } from '../../mesh/types';
import type { PeerName } from '../../mesh/peer';
import { decodeMsg, encodeMsg } from '../../mesh/codec';
import { versionDigest } from '../../mesh/gossip';
import { HeapClock, MeshSim, simAddress, simPeerName } from '../fakes/underlay';

// ---- a set-union gossiper that records what it sees ----
class SetData implements GossipData {
  constructor(readonly items: Set<string>) {}
  encode(): Uint8Array[] {
    return [encodeMsg({ v: 1, items: [...this.items] })];
  }
  merge(other: GossipData): GossipData {
    for (const i of (other as SetData).items) this.items.add(i);
    return this;
  }
}
class SetGossiper implements Gossiper {
  readonly items = new Set<string>();
  readonly broadcasts = new Map<string, number>(); // "src payload" -> copies received
  readonly unicasts: Array<[PeerName, string]> = [];
  onGossipUnicast(src: PeerName, msg: Uint8Array): void {
    this.unicasts.push([src, Buffer.from(msg).toString()]);
  }
  onGossipBroadcast(src: PeerName, update: Uint8Array): GossipData | null {
    const k = `${src} ${Buffer.from(update).toString()}`;
    this.broadcasts.set(k, (this.broadcasts.get(k) ?? 0) + 1);
    return null;
  }
  gossip(): GossipData | null {
    return this.items.size ? new SetData(new Set(this.items)) : null;
  }
  onGossip(update: Uint8Array): GossipData | null {
    const o = decodeMsg(update, 'set') as { items: string[] };
    const fresh = new Set<string>();
    for (const i of o.items) if (!this.items.has(i)) {
      this.items.add(i);
      fresh.add(i);
    }
    return fresh.size ? new SetData(fresh) : null;
  }
}

/** The same set, with a digest: periodic rounds send it instead of the full set. */
class DigestSetGossiper extends SetGossiper {
  fullStates = 0;
  digest(): Uint8Array {
    return versionDigest([...this.items].map((i) => [i, 1] as const));
  }
  override gossip(): GossipData | null {
    this.fullStates++;
    return super.gossip();
  }
}

function live(sim: MeshSim): Mesh[] {
  return sim.alive();
}

/** (ii): every peer's table equals the one computed from peer 0's view, and following hops reaches everyone without loops. */
function assertRoutesAgree(peers: Mesh[]): void {
  const ref = peers[0];
  ref.recomputeNow();
  // rebuild peer 0's adjacency from its records, symmetric established only
  const recs = new Map(ref.peerRecords().map((r) => [r.name, r]));
  const adj = new Map<PeerName, PeerName[]>();
  for (const r of recs.values()) {
    adj.set(r.name, r.connections.filter((c) => c.established && recs.get(c.name)?.connections.some((x) => x.name === r.name && x.established)).map((c) => c.name).sort());
  }
  const byName = new Map(peers.map((m) => [m.name, m]));
  for (const m of peers) {
    m.recomputeNow();
    const expected = unicastTable(adj, m.name);
    const got = new Map(m.status().routes.map((r) => [r.dest, r.via]));
    assert.deepEqual(got, expected, `route table of ${m.name} differs from the one computed from the common view`);
  }
  for (const src of peers) {
    for (const dst of peers) {
      if (src === dst) continue;
      let at: Mesh = src;
      let hops = 0;
      while (at !== dst) {
        const next = at.unicastNextHop(dst.name);
        assert.ok(next, `${at.name} has no route to ${dst.name}`);
        assert.ok(at.connectionTo(next), 'next hop is a direct connection');
        at = byName.get(next)!;
        assert.ok(++hops <= peers.length, `loop routing ${src.name} -> ${dst.name}`);
      }
    }
  }
}

test('200 peers, 1-3 random targets each, discovery on: convergence, routes, broadcast, failures, partition', async (t) => {
  // HeapClock: FakeClock's semantics on a heap (FakeClock scans all pending timers per firing)
  const clock = new HeapClock();
  let wall = Date.now();
  const phase = (name: string, simMs: number) => {
    t.diagnostic(`${name}: ${simMs} ms simulated, ${Date.now() - wall} ms wall`);
    wall = Date.now();
  };
  // connLimit 10 (discovery dials up to 5): full-mesh discovery of 200 peers floods 200-connection records
  const sim = new MeshSim(clock, { n: 200, seed: 42, discovery: true, connLimit: 10, gossipIntervalMs: 5000 });
  await sim.start();
  const gossipers = new Map<Mesh, SetGossiper>();
  const channels = new Map<Mesh, ReturnType<Mesh['newGossip']>>();
  for (const m of live(sim)) {
    const g = new SetGossiper();
    gossipers.set(m, g);
    channels.set(m, m.newGossip('test', g));
  }
  // discovery adds connections for a while; wait for a quiet, converged state
  await sim.run(5_000, 20);
  const t1 = await sim.runUntil(() => sim.converged(), 30_000, 100);
  assert.ok(t1 >= 0, 'converged');
  phase('formation', 5_000 + t1);
  const peers = live(sim);
  // (i) everyone knows everyone
  for (const m of peers) assert.equal(m.peerNames().length, 200);
  const conns = peers.map((m) => m.status().connections.filter((c) => c.state === 'established').length);
  assert.ok(Math.max(...conns) <= 10, 'connection limit respected');
  assert.ok(conns.reduce((a, b) => a + b, 0) / 200 > 3, 'discovery added connections beyond the 1-3 targets');
  // (ii) routes agree
  assertRoutesAgree(peers);
  // (iii) broadcasts from 20 sources reach every peer exactly once
  const sources = peers.filter((_, i) => i % 10 === 3);
  for (const s of sources) channels.get(s)!.gossipBroadcast(new SetData(new Set([`b-${s.name}`])));
  await sim.run(1000, 20);
  for (const m of peers) {
    const g = gossipers.get(m)!;
    for (const s of sources) {
      if (s === m) continue;
      assert.equal(g.broadcasts.get(`${s.name} ${Buffer.from(new SetData(new Set([`b-${s.name}`])).encode()[0]).toString()}`), 1, `${m.name} got ${s.name}'s broadcast once`);
    }
  }
  // unicast across the mesh
  assert.equal(channels.get(peers[7])!.gossipUnicast(peers[190].name, Buffer.from('hello')), true);
  await sim.run(500, 20);
  assert.deepEqual(gossipers.get(peers[190])!.unicasts, [[peers[7].name, 'hello']]);

  // link failures: lossy links kill connections; afterwards the mesh heals and reconverges
  // lossy links on connections that exist (which pairs connected depends on who dialled first)
  const lossy: Array<[string, string]> = [];
  for (let i = 0; i < 200; i += 8) {
    const c = peers[i].status().connections.find((x) => x.state === 'established');
    if (c) lossy.push([simAddress(i).split(':')[0], c.address.split(':')[0]]);
  }
  for (const [x, y] of lossy) sim.underlay.setLink(x, y, { drop: 0.5 });
  for (let i = 0; i < 40; i++) channels.get(peers[i])!.gossip(new SetData(new Set([`g-${i}`])));
  await sim.run(3000, 20);
  assert.ok(sim.underlay.drops > 0, 'some connections were killed');
  for (const [x, y] of lossy) sim.underlay.setLink(x, y, {});
  const t2 = await sim.runUntil(() => sim.converged(), 60_000, 100);
  assert.ok(t2 >= 0, 'reconverged after link failures');
  phase('link failures', 3000 + t2);
  assertRoutesAgree(peers);
  // channel gossip reached everyone despite the failures (periodic rounds repair)
  await sim.runUntil(() => peers.every((m) => gossipers.get(m)!.items.size === 40), 30_000, 200);
  for (const m of peers) assert.equal(gossipers.get(m)!.items.size, 40);

  // partition: hosts 0-99 | 100-199
  const a = Array.from({ length: 100 }, (_, i) => `10.0.0.${i}`);
  const b = Array.from({ length: 100 }, (_, i) => `10.0.0.${i + 100}`);
  sim.underlay.partition(a, b);
  await sim.run(100);
  const t3 = await sim.runUntil(() => sim.convergedComponents(), 30_000, 100);
  assert.ok(t3 >= 0, 'each side converged on its own view');
  phase('partition', t3);
  for (const comp of sim.components()) {
    const sideA = comp.every((m) => parseInt(m.name.slice(-5).replace(':', ''), 16) <= 100);
    const sideB = comp.every((m) => parseInt(m.name.slice(-5).replace(':', ''), 16) > 100);
    assert.ok(sideA || sideB, 'no component spans the partition');
    for (const m of comp) assert.equal(m.peerNames().length, comp.length);
  }
  sim.underlay.heal();
  const t4 = await sim.runUntil(() => sim.converged(), 120_000, 200);
  assert.ok(t4 >= 0, 'views converge again after the partition heals');
  phase('heal', t4);
  for (const m of peers) assert.equal(m.peerNames().length, 200);
  assertRoutesAgree(peers);

  // a peer dies: everyone drops it
  await sim.stopPeer(150);
  const t5 = await sim.runUntil(() => sim.converged(), 30_000, 100);
  assert.ok(t5 >= 0);
  phase('peer death', t5);
  for (const m of live(sim)) assert.equal(m.peerNames().includes(simPeerName(150)), false);
  for (const m of live(sim)) await m.stop();
});

test('line topology without discovery: topology and gossip reach the far end; peers without the channel relay', async () => {
  const clock = new FakeClock();
  const n = 30;
  const sim = new MeshSim(clock, { n, seed: 3, discovery: false, gossipIntervalMs: 2000, targets: (i) => (i === 0 ? [] : [i - 1]) });
  await sim.start();
  const peers = live(sim);
  const gossipers = new Map<Mesh, SetGossiper>();
  const channels = new Map<Mesh, ReturnType<Mesh['newGossip']>>();
  // peers 10-19 run no gossiper for the channel: they must still relay unicast and broadcast
  for (const [i, m] of peers.entries()) {
    if (i >= 10 && i < 20) continue;
    const g = new SetGossiper();
    gossipers.set(m, g);
    channels.set(m, m.newGossip('c', g));
  }
  // a second channel every peer runs: plain gossip from one end must reach the other end
  const everyone = new Map<Mesh, SetGossiper>();
  const allChannels = new Map<Mesh, ReturnType<Mesh['newGossip']>>();
  for (const m of peers) {
    const g = new SetGossiper();
    everyone.set(m, g);
    allChannels.set(m, m.newGossip('all', g));
  }
  const t = await sim.runUntil(() => sim.converged(), 20_000, 50);
  assert.ok(t >= 0);
  allChannels.get(peers[0])!.gossip(new SetData(new Set(['from-0'])));
  allChannels.get(peers[n - 1])!.gossip(new SetData(new Set(['from-end'])));
  const tg = await sim.runUntil(() => peers.every((m) => everyone.get(m)!.items.size === 2), 10_000, 20);
  assert.ok(tg >= 0 && tg < 5000, `gossip crossed the ${n}-peer line in ${tg} ms`);
  for (const m of peers) assert.equal(m.status().connections.length, m === peers[0] || m === peers[n - 1] ? 1 : 2, 'no discovery: only the line');
  assertRoutesAgree(peers);
  assert.equal(peers[0].unicastNextHop(peers[n - 1].name), peers[1].name);
  channels.get(peers[0])!.gossipBroadcast(new SetData(new Set(['x'])));
  assert.equal(channels.get(peers[0])!.gossipUnicast(peers[n - 1].name, Buffer.from('far')), true);
  await sim.run(1000, 10);
  for (const [m, g] of gossipers) if (m !== peers[0]) assert.equal([...g.broadcasts.values()].reduce((x, y) => x + y, 0), 1);
  assert.deepEqual(gossipers.get(peers[n - 1])!.unicasts, [[peers[0].name, 'far']]);
  assert.ok(peers[15].stats.noGossiper >= 1, 'a relay without the gossiper counted what it could not deliver');
  // plain gossip only travels between peers that run the channel: it reaches 0-9 from 5
  channels.get(peers[5])!.gossip(new SetData(new Set(['g'])));
  await sim.run(5000, 20);
  for (let i = 0; i < 10; i++) assert.ok(gossipers.get(peers[i])!.items.has('g'));
  for (const m of peers) await m.stop();
});

test('periodic repair by digest: in a steady state only digests travel; a state missed by the flood is repaired both ways', async () => {
  const n = 8;
  const sim = new MeshSim(new FakeClock(), { n, seed: 5, discovery: true, gossipIntervalMs: 2000 });
  await sim.start();
  assert.ok((await sim.runUntil(() => sim.converged(), 20_000, 50)) >= 0);
  const peers = live(sim);
  const gs = peers.map(() => new DigestSetGossiper());
  peers.forEach((m, i) => m.newGossip('d', gs[i]));
  // divergent states no flood carried (set behind the channel's back): 0 and 7 each hold an item
  gs[0].items.add('only-0');
  gs[7].items.add('only-7');
  const t = await sim.runUntil(() => gs.every((g) => g.items.has('only-0') && g.items.has('only-7')), 30_000, 50);
  assert.ok(t >= 0, 'periodic digest rounds repaired every peer');
  // steady: digests match, so no full state is sent any more (gossip messages carry digests only)
  const full0 = gs.reduce((a, g) => a + g.fullStates, 0);
  const msgs0 = peers.reduce((a, m) => a + m.stats.gossipMessagesOut, 0);
  await sim.run(20_000, 50);
  assert.equal(gs.reduce((a, g) => a + g.fullStates, 0), full0, 'no full state once the digests agree');
  assert.ok(peers.reduce((a, m) => a + m.stats.gossipMessagesOut, 0) > msgs0, 'digests still go out each round');
  for (const m of peers) await m.stop();
});

// ---------------------------------------------------------------- connection rules

async function small(n: number, targets: (i: number) => number[], extra: Partial<MeshOptions> = {}, log?: MemoryLogger): Promise<MeshSim> {
  const sim = new MeshSim(new FakeClock(), { n, seed: 9, discovery: false, targets, log, extra });
  await sim.start();
  return sim;
}

test('a connection to ourselves is refused with ESELF and retried only slowly', async () => {
  const log = new MemoryLogger();
  const sim = await small(1, () => [0], {}, log);
  await sim.run(200);
  const m = sim.meshes[0]!;
  const st = m.targetState(simAddress(0))!;
  assert.equal(st.state, 'failed');
  assert.equal(st.code, 'ESELF');
  assert.ok(st.nextRetry - sim.clock.now() >= 59_000, 'no fast retry');
  const row = m.status().connections.find((c) => c.address === simAddress(0))!;
  assert.equal(row.code, 'ESELF');
  assert.equal(row.state, 'failed');
  assert.ok(log.find((r) => r.code === 'ESELF'));
  await m.stop();
});

test('name collision: a second live peer with the same name is refused with ENAMECOLLISION', async () => {
  const log = new MemoryLogger();
  const sim = await small(2, (i) => (i === 1 ? [0] : []), {}, log);
  await sim.run(200);
  const [m0, m1] = [sim.meshes[0]!, sim.meshes[1]!];
  assert.ok(m0.connectionTo(m1.name));
  // an impostor named like m1 on another host dials m0
  const imp = new Mesh({
    identity: { name: m1.name, nickname: 'impostor', uid: 'other-uid' }, transport: sim.underlay.transport('10.9.9.9:6783'),
    clock: sim.clock, log, encryption: false, port: 6783, discovery: false, random: sim.random,
  });
  await imp.start();
  imp.connect([simAddress(0)]);
  await sim.run(200);
  assert.equal(m0.stats.refused.ENAMECOLLISION, 1);
  assert.equal(imp.targetState(simAddress(0))!.code, 'ENAMECOLLISION', 'the refused side learns the code');
  assert.ok(m0.connectionTo(m1.name), 'the existing connection stays');
  assert.ok(log.find((r) => r.code === 'ENAMECOLLISION' && /two live peers/.test(String(r.msg))));
  for (const m of [m0, m1, imp]) await m.stop();
});

test('duplicate connections (both ends dial at once) resolve to the same one at both ends', async () => {
  for (let seed = 0; seed < 5; seed++) {
    const sim = new MeshSim(new FakeClock(), { n: 2, seed, discovery: false, targets: (i) => [1 - i] });
    await sim.start();
    await sim.run(3000);
    const [m0, m1] = [sim.meshes[0]!, sim.meshes[1]!];
    const c0 = m0.connectionTo(m1.name);
    const c1 = m1.connectionTo(m0.name);
    assert.ok(c0 && c1);
    assert.equal(c0.id, c1.id, 'both ends kept the same connection');
    assert.equal(sim.underlay.openConnections(), 2, 'the duplicate was closed');
    // the higher-named peer dialled the survivor
    assert.equal(c1.outbound, true);
    assert.equal(m0.targetState(simAddress(1))!.state, 'connected');
    await m0.stop();
    await m1.stop();
  }
});

test('connection limit: excess connections are refused with ECONNLIMIT', async () => {
  const log = new MemoryLogger();
  const sim = await small(5, (i) => (i === 0 ? [] : [0]), { connLimit: 2 }, log);
  await sim.run(500);
  const m0 = sim.meshes[0]!;
  assert.equal(m0.status().connections.filter((c) => c.state === 'established').length, 2);
  assert.ok((m0.stats.refused.ECONNLIMIT ?? 0) >= 2);
  const refused = sim.alive().slice(1).filter((m) => m.targetState(simAddress(0))!.code === 'ECONNLIMIT');
  assert.equal(refused.length, 2);
  assert.ok(log.find((r) => r.code === 'ECONNLIMIT'));
  // the refused peers' topology never listed the refused connection
  for (const m of refused) assert.equal(m.peerRecords().find((r) => r.name === m.name)!.connections.length, 0);
  for (const m of sim.alive()) await m.stop();
});

test('dial failures back off exponentially with jitter, capped at 60 s', async () => {
  const sim = await small(1, () => []);
  const m = sim.meshes[0]!;
  m.connect(['10.7.7.7']); // nothing there: ECONNREFUSED
  const gaps: number[] = [];
  let lastAttempts = 0;
  let lastAt = sim.clock.now();
  for (let step = 0; step < 12 * 60 * 10; step++) {
    sim.clock.advance(100);
    await new Promise<void>((r) => setImmediate(r));
    const st = m.targetState('10.7.7.7:6783')!;
    if (st.attempts !== lastAttempts) {
      gaps.push(sim.clock.now() - lastAt);
      lastAt = sim.clock.now();
      lastAttempts = st.attempts;
    }
  }
  const st = m.targetState('10.7.7.7:6783')!;
  assert.equal(st.code, 'ECONNREFUSED');
  assert.equal(m.status().connections[0].code, 'ECONNREFUSED');
  assert.ok(m.status().connections[0].nextRetry! > sim.clock.now());
  // gaps after the first: ~1 s, 2 s, 4 s ... (±25% plus a 100 ms poll), never above 60 s * 1.25
  const later = gaps.slice(1);
  assert.ok(later[0] >= 700 && later[0] <= 1400, `first retry ${later[0]}`);
  assert.ok(later[2] >= 2900 && later[2] <= 5200, `third retry ${later[2]}`);
  for (let i = 1; i < 5; i++) assert.ok(later[i] > later[i - 1] * 1.1, `backoff grows: ${later.join(',')}`);
  assert.ok(Math.max(...later) <= 75_100 && Math.max(...later) >= 44_000, `capped: ${later.join(',')}`);
  await m.stop();
});

test('targets are persisted through the target store; forget stops reconnection', async () => {
  let saved: string[] = ['10.0.0.1'];
  const store = { load: () => saved, save: (t: string[]) => { saved = t; } };
  const sim = new MeshSim(new FakeClock(), { n: 2, seed: 1, discovery: false, targets: () => [], extra: {} });
  await sim.start();
  const m0 = sim.meshes[0]!;
  await m0.stop();
  const again = new Mesh({
    identity: { name: simPeerName(0), nickname: 'p0', uid: 'new' }, transport: sim.underlay.transport(simAddress(0)), clock: sim.clock,
    log: new MemoryLogger(), encryption: false, port: 6783, discovery: false, random: sim.random, targetStore: store,
  });
  await again.start();
  await sim.run(200);
  assert.deepEqual(again.targets(), ['10.0.0.1:6783']);
  assert.ok(again.connectionTo(simPeerName(1)), 'connected to the stored target');
  again.connect(['10.0.0.5:7000']);
  assert.deepEqual(saved, ['10.0.0.1:6783', '10.0.0.5:7000']);
  again.connect(['10.0.0.1'], { replace: true });
  assert.deepEqual(saved, ['10.0.0.1:6783']);
  again.forget(['10.0.0.1']);
  assert.deepEqual(saved, []);
  assert.deepEqual(again.targets(), []);
  await again.stop();
  await sim.meshes[1]!.stop();
});

test('overlay: pending until established, status carries overlay fields; a failure closes and retries', async () => {
  const calls: Array<{ cb: OverlayCallbacks; est: boolean }> = [];
  const overlay: OverlayManager = {
    attach(_conn: MeshConnection, cb: OverlayCallbacks) {
      const a = { cb, est: false };
      calls.push(a);
      return {
        onMessage() {},
        close() {},
        status: () => (a.est ? { overlay: 'sleeve', encrypted: true, mtu: 1376 } : { overlay: null, encrypted: true, reason: 'waiting for sleeve heartbeats' }),
      };
    },
  };
  const sim = await small(2, (i) => (i === 1 ? [0] : []), { overlay, overlays: ['sleeve'] });
  const [m0, m1] = [sim.meshes[0]!, sim.meshes[1]!];
  const events: string[] = [];
  m1.on('connectionEstablished', (p: string) => events.push(`up ${p}`));
  m1.on('connectionLost', (p: string, why: string) => events.push(`down ${p} ${why}`));
  await sim.run(200);
  let row = m1.status().connections.find((c) => c.peerName === m0.name)!;
  assert.equal(row.state, 'pending');
  assert.equal(row.info, 'waiting for sleeve heartbeats');
  assert.equal(m1.connectionTo(m0.name), undefined, 'not established yet');
  assert.equal(m1.unicastNextHop(m0.name), undefined, 'no route over a pending connection');
  for (const a of calls) {
    a.est = true;
    a.cb.established();
  }
  await sim.run(200);
  assert.deepEqual(events, [`up ${m0.name}`]);
  row = m1.status().connections.find((c) => c.peerName === m0.name)!;
  assert.equal(row.state, 'established');
  assert.equal(row.overlay, 'sleeve');
  assert.equal(row.mtu, 1376);
  assert.equal(m1.unicastNextHop(m0.name), m0.name);
  calls[calls.length - 1].cb.failed('heartbeats lost');
  await sim.run(100);
  assert.equal(events.length, 2);
  assert.match(events[1], /overlay failed: heartbeats lost|closed by peer/);
  await sim.run(5000);
  assert.ok(calls.length >= 4, 'reconnected and attached again');
  for (const m of [m0, m1]) await m.stop();
});

test('a restarted peer (same name, new uid) replaces its old record everywhere', async () => {
  const sim = new MeshSim(new FakeClock(), { n: 10, seed: 17, discovery: true, targets: (i) => (i === 0 ? [] : [i - 1]) });
  await sim.start();
  assert.ok((await sim.runUntil(() => sim.converged(), 20_000)) >= 0);
  const oldUid = sim.meshes[5]!.status().uid;
  const oldVersion = sim.meshes[0]!.peerRecords().find((r) => r.name === simPeerName(5))!.version;
  const m5 = await sim.restartPeer(5, [4]);
  assert.notEqual(m5.status().uid, oldUid);
  assert.ok((await sim.runUntil(() => sim.converged(), 30_000)) >= 0);
  for (const m of sim.alive()) {
    const r = m.peerRecords().find((x) => x.name === simPeerName(5))!;
    assert.equal(r.uid, m5.status().uid);
    assert.ok(r.version > oldVersion || r.version > 1);
  }
  const s = sim.meshes[0]!.status();
  assert.equal(s.peers.length, 10);
  assert.ok(s.peers.every((p) => p.reachable && p.uid && p.version >= 1));
  assert.equal(s.routes.length, 9);
  assert.equal(s.peerDiscovery, true);
  assert.equal(s.connLimit, 200);
  for (const m of sim.alive()) await m.stop();
});

test('a full mesh of 50 forms with topology deltas, sending fewer record bytes than full records in the same run', async (t) => {
  const form = async (deltas: boolean) => {
    const sim = new MeshSim(new HeapClock(), { n: 50, seed: 31, discovery: true, extra: { topologyDeltas: deltas } });
    await sim.start();
    const full = () => sim.alive().every((m) => m.connectionStatuses().filter((c) => c.state === 'established').length === 49);
    const ms = await sim.runUntil(() => full() && sim.converged(), 120_000, 100);
    assert.ok(ms >= 0, `full mesh of 50 with one view (deltas ${deltas})`);
    const peers = sim.alive();
    const sum = (f: (m: Mesh) => number) => peers.reduce((a, m) => a + f(m), 0);
    const own = new Map(peers.map((m) => [m.name, m.peerRecords().find((r) => r.name === m.name)]));
    for (const m of peers) for (const r of m.peerRecords()) assert.deepEqual(r, own.get(r.name), 'each view holds every owner\'s record exactly');
    const figures = {
      ms, records: sum((m) => m.stats.bytesOut['topology.records'] ?? 0), digest: sum((m) => m.stats.bytesOut['topology.digest'] ?? 0),
      messages: sum((m) => m.stats.topologyMessagesOut), deltas: sum((m) => m.stats.topologyDeltasOut), applied: sum((m) => m.stats.topologyDeltasApplied), gaps: sum((m) => m.stats.topologyDeltaGaps),
    };
    for (const m of peers) await m.stop();
    return figures;
  };
  const withDeltas = await form(true);
  const fullOnly = await form(false);
  const line = (f: typeof withDeltas) => `${(f.ms / 1000).toFixed(1)} s, records ${f.records} B, digests ${f.digest} B, ${f.messages} topology messages, deltas sent ${f.deltas} applied ${f.applied} gaps ${f.gaps}`;
  t.diagnostic(`full mesh of 50, deltas: ${line(withDeltas)}`);
  t.diagnostic(`full mesh of 50, full records only: ${line(fullOnly)}`);
  assert.equal(fullOnly.deltas, 0);
  assert.ok(withDeltas.applied > 0);
  assert.ok(withDeltas.records < fullOnly.records, 'deltas send fewer record bytes');
});

test('5 of 50 killed, each survivor noticing at its own time: every view drops each dead peer once (no return through stale gossip) and settles', async () => {
  const sim = new MeshSim(new HeapClock(), { n: 50, seed: 23, discovery: true });
  await sim.start();
  assert.ok((await sim.runUntil(() => sim.converged(), 60_000, 100)) >= 0, 'full mesh of 50');
  const dead = [7, 13, 21, 34, 45];
  const deadNames = new Set(dead.map(simPeerName));
  // hard kills: the hosts go silent; each survivor notices its connection to a dead host at its own
  // time within 30 s (a TCP read timeout), so for a while some records still list the dead as connected
  for (const i of dead) {
    const ip = simAddress(i).split(':')[0];
    sim.underlay.silence(ip);
    for (const c of sim.underlay.connectionsTo(ip)) {
      sim.clock.setTimeout(() => sim.underlay.closePair(c, 'read timeout', 'read timeout'), Math.floor(sim.random() * 30_000));
    }
  }
  for (const i of dead) sim.meshes[i] = null; // frozen: no longer a live peer (its timers talk into the void)
  // per survivor and dead peer: how many times the peer left its view, and came back after leaving
  const left = new Map<string, number>();
  const returned = new Map<string, number>();
  const wasIn = new Map<string, boolean>();
  const sample = (): void => {
    for (const m of sim.alive()) {
      // its view: the peers it routes to (reachable over symmetric established connections)
      const names = new Set(m.peerNames());
      for (const d of deadNames) {
        const k = `${m.name} ${d}`;
        const inView = names.has(d);
        const before = wasIn.get(k) ?? true;
        if (before && !inView) left.set(k, (left.get(k) ?? 0) + 1);
        if (!before && inView) returned.set(k, (returned.get(k) ?? 0) + 1);
        wasIn.set(k, inView);
      }
    }
  };
  const settled = await sim.runUntil(() => {
    sample();
    return sim.converged();
  }, 90_000, 100);
  assert.ok(settled >= 0, 'survivors converge on the 45 live peers');
  // keep watching well past settling (periodic gossip rounds, reconnection attempts to the dead)
  for (let t = 0; t < 60_000; t += 500) {
    await sim.run(500, 50);
    sample();
  }
  assert.deepEqual([...returned.entries()].filter(([, n]) => n > 0), [], 'a dead peer came back into a view');
  for (const m of sim.alive()) {
    for (const d of deadNames) assert.equal(left.get(`${m.name} ${d}`), 1, `${d} left ${m.name}'s view exactly once`);
    assert.equal(m.peerNames().length, 45);
  }
  assert.ok(sim.converged());
  console.log(`# 5 of 50 killed: views settled ${(settled / 1000).toFixed(1)} s (simulated) after the kill, no returns`);
  for (const m of sim.alive()) await m.stop();
});
