// Topology records as deltas (issue 19): the wire form and its validation, applying only on the exact
// base, the mesh's gap path (a delta without its base brings the full record), negotiation (a peer
// that did not offer deltas gets full records only), and a property test against full records.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Topology, applyDelta, decodeTopology, encodeTopology, recordDelta, TopoKind, type ConnInfo, type PeerRecord, type RecordDelta, type TopologyMsg } from '../../mesh/topology';
import { ProtocolError } from '../../lib/errors';
import { encodeMsg } from '../../mesh/codec';
import { FakeClock } from '../../lib/clock';
import { MeshSim, seededRandom, simAddress, simPeerName } from '../fakes/underlay';
import { Msg, type Features, type MeshConnection } from '../../mesh/types';
import type { Mesh } from '../../mesh/mesh';

const A = '02:00:00:00:00:0a';
const B = '02:00:00:00:00:0b';
const C = '02:00:00:00:00:0c';
const D = '02:00:00:00:00:0d';

function conn(name: string, established = true, outbound = true): ConnInfo {
  return { name, address: `10.0.0.${parseInt(name.slice(-2), 16)}:6783`, outbound, established };
}
function rec(name: string, version: number, conns: ConnInfo[], uid = `uid-${name.slice(-2)}`, nickname = `n${name.slice(-2)}`): PeerRecord {
  return { name, nickname, uid, version, connections: conns };
}

test('delta wire: round trip alone and beside full records and a want; nickname only when it changed', () => {
  const d1: RecordDelta = { name: B, uid: 'ub', base: 3, version: 5, changed: [conn(C, false, true)], removed: [D] };
  const d2: RecordDelta = { name: C, uid: 'uc', base: 1, version: 2, nickname: 'renamed', changed: [], removed: [] };
  const peers = [rec(D, 7, [conn(A)])];
  assert.deepEqual(decodeTopology(encodeTopology({ kind: TopoKind.Records, peers: [], want: [], deltas: [d1] })), { kind: 0, peers: [], want: [], deltas: [d1] });
  assert.deepEqual(decodeTopology(encodeTopology({ kind: TopoKind.Records, peers, want: [A], deltas: [d1, d2] })), { kind: 0, peers, want: [A], deltas: [d1, d2] });
  // no deltas: the message is byte for byte what a router without deltas sends
  assert.deepEqual(encodeTopology({ kind: TopoKind.Records, peers, want: [], deltas: [] }), encodeTopology({ kind: TopoKind.Records, peers, want: [] }));
  assert.deepEqual(decodeTopology(encodeTopology({ kind: TopoKind.Records, peers, want: [] })), { kind: 0, peers, want: [] });
});

test('delta wire: malformed deltas are ProtocolErrors', () => {
  const good = [B, 'ub', 3, 4, null, [[C, '10.0.0.12:6783', 1, 1]], [D]];
  const rec0 = [B, 'nb', 'ub', 2, []];
  const bad: unknown[] = [
    { v: 1, k: 0, p: [], x: 'x' },
    { v: 1, k: 0, p: [], x: [good.slice(0, 6)] }, // missing field
    { v: 1, k: 0, p: [], x: [[...good, 1]] }, // extra field
    { v: 1, k: 0, p: [], x: [['nope', ...good.slice(1)]] },
    { v: 1, k: 0, p: [], x: [[B, '', 3, 4, null, [], []]] }, // empty uid
    { v: 1, k: 0, p: [], x: [[B, 'u'.repeat(65), 3, 4, null, [], []]] },
    { v: 1, k: 0, p: [], x: [[B, 'ub', 0, 4, null, [], []]] }, // base 0
    { v: 1, k: 0, p: [], x: [[B, 'ub', 4, 4, null, [], []]] }, // version not above base
    { v: 1, k: 0, p: [], x: [[B, 'ub', 5, 4, null, [], []]] },
    { v: 1, k: 0, p: [], x: [[B, 'ub', 3, 4.5, null, [], []]] },
    { v: 1, k: 0, p: [], x: [[B, 'ub', 3, 4, 7, [], []]] }, // nickname not a string
    { v: 1, k: 0, p: [], x: [[B, 'ub', 3, 4, 'x'.repeat(256), [], []]] },
    { v: 1, k: 0, p: [], x: [[B, 'ub', 3, 4, null, [[B, 'a', 1, 1]], []]] }, // connection to itself
    { v: 1, k: 0, p: [], x: [[B, 'ub', 3, 4, null, [[C, 'a', 1, 1], [C, 'b', 1, 1]], []]] }, // duplicate
    { v: 1, k: 0, p: [], x: [[B, 'ub', 3, 4, null, [[C, 'a', 'yes', 1]], []]] },
    { v: 1, k: 0, p: [], x: [[B, 'ub', 3, 4, null, [[C, 'a', 1]], []]] },
    { v: 1, k: 0, p: [], x: [[B, 'ub', 3, 4, null, [], [B]]] }, // removes itself
    { v: 1, k: 0, p: [], x: [[B, 'ub', 3, 4, null, [], [C, C]]] },
    { v: 1, k: 0, p: [], x: [[B, 'ub', 3, 4, null, [[C, 'a', 1, 1]], [C]]] }, // changed and removed
    { v: 1, k: 0, p: [], x: [[B, 'ub', 3, 4, null, [], ['x']]] },
    { v: 1, k: 0, p: [], x: [[B, 'ub', 3, 4, null, 'x', []]] },
    { v: 1, k: 0, p: [], x: [good, good] }, // one peer twice
    { v: 1, k: 0, p: [rec0], x: [good] }, // a full record and a delta of one peer
    { v: 1, k: 0, p: [], x: [[B, 'ub', 3, 4, null, Array.from({ length: 10_001 }, () => [C, 'a', 1, 1]), []]] }, // over MAX_CONNS
  ];
  for (const b of bad) assert.throws(() => decodeTopology(encodeMsg(b)), ProtocolError, JSON.stringify(b).slice(0, 200));
  assert.equal((decodeTopology(encodeMsg({ v: 1, k: 0, p: [], x: [good] })) as Extract<TopologyMsg, { kind: 0 }>).deltas!.length, 1);
});

test('recordDelta / applyDelta: the result is the full record; only the exact base takes it', () => {
  const base = rec(B, 3, [conn(A), conn(C, false), conn(D)]);
  const next = rec(B, 6, [conn(A), conn(C, true, false)], 'uid-0b', 'renamed');
  const d = recordDelta(base, next)!;
  assert.deepEqual(d, { name: B, uid: 'uid-0b', base: 3, version: 6, nickname: 'renamed', changed: [conn(C, true, false)], removed: [D] });
  assert.deepEqual(applyDelta(base, d), next);
  assert.equal(recordDelta(next, base), null, 'not newer');
  assert.equal(recordDelta(rec(B, 3, [], 'other'), next), null, 'another incarnation');
  assert.equal(recordDelta(rec(C, 3, []), next), null, 'another peer');
  // another version, uid or name of the base: not applied
  assert.equal(applyDelta(rec(B, 4, base.connections), d), null);
  assert.equal(applyDelta(rec(B, 3, base.connections, 'other'), d), null);
  assert.equal(applyDelta(rec(C, 3, []), { ...d, name: C }), null);
  // a base that does not hold what the delta removes is not the owner's base
  assert.equal(applyDelta(rec(B, 3, [conn(A), conn(C, false)]), d), null);
  // added connections land in name order, as owners keep them
  const grown = applyDelta(rec(B, 1, [conn(D)]), { name: B, uid: 'uid-0b', base: 1, version: 2, changed: [conn(C), conn(A)], removed: [] })!;
  assert.deepEqual(grown.connections.map((c) => c.name), [A, C, D]);
  assert.equal(grown.nickname, 'n0b');
});

test('mergeDeltas: applies on the base, reports gaps, same/older, dropped incarnations and self conflicts', () => {
  const t = new Topology({ name: A, nickname: 'a', uid: 'ua' });
  t.merge([rec(B, 3, [conn(C)]), rec(C, 2, [])]);
  const d = recordDelta(rec(B, 3, [conn(C)]), rec(B, 4, [conn(C), conn(D)]))!;
  const r1 = t.mergeDeltas([d]);
  assert.deepEqual(r1.changed, [B]);
  assert.deepEqual(r1.bases.get(B), rec(B, 3, [conn(C)]));
  assert.deepEqual(t.get(B), rec(B, 4, [conn(C), conn(D)]));
  // the same delta again: held already
  assert.deepEqual(t.mergeDeltas([d]).same, [B]);
  // a gap (base 5, we hold 4), an unknown peer, and another incarnation: missing, nothing changes
  const h = t.hash();
  const gap = t.mergeDeltas([
    { name: B, uid: 'uid-0b', base: 5, version: 6, changed: [], removed: [] },
    { name: D, uid: 'uid-0d', base: 1, version: 2, changed: [], removed: [] },
    { name: C, uid: 'other', base: 2, version: 3, changed: [], removed: [] },
  ]);
  assert.deepEqual(gap.missing, [B, D, C]);
  assert.deepEqual(gap.changed, []);
  assert.equal(t.hash(), h);
  // older than held
  assert.deepEqual(t.mergeDeltas([{ name: B, uid: 'uid-0b', base: 1, version: 2, changed: [], removed: [] }]).older, [B]);
  // a dropped incarnation's delta, no newer than the dropped record: refused, not asked for
  t.drop([C], 1000);
  const dr = t.mergeDeltas([{ name: C, uid: 'uid-0c', base: 1, version: 2, changed: [], removed: [] }]);
  assert.deepEqual([dr.dropped, dr.missing], [[C], []]);
  // about ourselves with another uid: a conflict, never merged
  const self = t.mergeDeltas([{ name: A, uid: 'old', base: 8, version: 9, changed: [], removed: [] }]);
  assert.deepEqual(self.selfConflict, { uid: 'old', version: 9, nickname: '' });
  assert.equal(t.ourself.uid, 'ua');
});

// ---- the mesh: a hand-driven peer on the fake underlay ----

interface HandPeer { conn: MeshConnection; got: TopologyMsg[]; features: Features; send(m: TopologyMsg): void }

async function handPeer(sim: MeshSim, i: number, deltas: boolean): Promise<HandPeer> {
  const t = sim.underlay.transport(simAddress(i));
  const features: Features = { name: simPeerName(i), nickname: `hand${i}`, uid: `hand-${i}`, connId: `hc${i}`, overlays: [], overlayParams: {}, trusted: false, listenPort: 6783, ...(deltas ? { topologyDeltas: true } : {}) };
  t.setLocalFeatures(features);
  await t.listen(() => {}, () => {});
  const p = t.dial(simAddress(0), features);
  await sim.run(20);
  const conn = await p;
  const got: TopologyMsg[] = [];
  conn.onMessage = (type, payload) => {
    if (type === Msg.Topology) got.push(decodeTopology(payload));
  };
  conn.onClose = () => {};
  return { conn, got, features, send: (m) => conn.send(Msg.Topology, encodeTopology(m)) };
}

function records(msgs: TopologyMsg[]): Array<Extract<TopologyMsg, { kind: 0 }>> {
  return msgs.filter((m): m is Extract<TopologyMsg, { kind: 0 }> => m.kind === 0);
}

/** The record of name a hand peer holds after everything it got, applying deltas strictly in order. */
function held(p: HandPeer, name: string): PeerRecord {
  let r: PeerRecord | undefined;
  for (const m of records(p.got)) {
    for (const x of m.peers) if (x.name === name) r = x;
    for (const d of m.deltas ?? []) if (d.name === name) {
      assert.ok(r, 'a delta came before any full record');
      const next = applyDelta(r, d);
      assert.ok(next, `delta from ${d.base} does not apply to the held version ${r.version}`);
      r = next;
    }
  }
  assert.ok(r, `no record of ${name}`);
  return r;
}

test('mesh: a delta without its base is not applied; the sender is asked for the full record (one want)', async () => {
  const sim = new MeshSim(new FakeClock(), { n: 1, seed: 3, discovery: false });
  await sim.start();
  const m0 = sim.meshes[0] as Mesh;
  const h = await handPeer(sim, 5, true);
  const H = h.features.name;
  h.send({ kind: TopoKind.Records, peers: [rec(H, 1, [conn(m0.name)], 'hand-5')], want: [] });
  await sim.run(100);
  assert.equal(m0.peerRecords().find((r) => r.name === H)!.version, 1);
  // base 5: we sent version 1 only
  h.got.length = 0;
  h.send({ kind: TopoKind.Records, peers: [], want: [], deltas: [{ name: H, uid: 'hand-5', base: 5, version: 6, changed: [conn(C)], removed: [] }] });
  await sim.run(100);
  assert.equal(m0.peerRecords().find((r) => r.name === H)!.version, 1, 'not applied');
  assert.equal(m0.stats.topologyDeltaGaps, 1);
  assert.deepEqual(records(h.got).map((m) => m.want), [[H]], 'one want for the record');
  // the full record answers it
  const v6 = rec(H, 6, [conn(m0.name), conn(C)], 'hand-5');
  h.send({ kind: TopoKind.Records, peers: [v6], want: [] });
  await sim.run(100);
  assert.deepEqual(m0.peerRecords().find((r) => r.name === H), v6);
  // a delta on that base applies
  h.send({ kind: TopoKind.Records, peers: [], want: [], deltas: [{ name: H, uid: 'hand-5', base: 6, version: 8, changed: [], removed: [C] }] });
  await sim.run(100);
  assert.deepEqual(m0.peerRecords().find((r) => r.name === H), rec(H, 8, [conn(m0.name)], 'hand-5'));
  assert.equal(m0.stats.topologyDeltasApplied, 1);
  assert.equal(m0.stats.protocolErrors, 0);
  assert.ok(m0.connectionTo(H));
  await m0.stop();
});

test('mesh: our own record goes as a delta from the version a neighbour got; a peer without deltas gets full records', async () => {
  const sim = new MeshSim(new FakeClock(), { n: 1, seed: 4, discovery: false });
  await sim.start();
  const m0 = sim.meshes[0] as Mesh;
  const h = await handPeer(sim, 5, true);
  const old = await handPeer(sim, 6, false);
  for (const p of [h, old]) {
    p.send({ kind: TopoKind.Records, peers: [rec(p.features.name, 1, [conn(m0.name)], p.features.uid)], want: [] });
    p.send({ kind: TopoKind.Digest, digest: [] });
  }
  await sim.run(5000);
  // each holds m0's record from a full message; now m0's record changes (a third peer)
  const before = held(h, m0.name).version;
  const third = await handPeer(sim, 7, true);
  third.send({ kind: TopoKind.Records, peers: [rec(third.features.name, 1, [conn(m0.name)], third.features.uid)], want: [] });
  await sim.run(5000);
  const mine = m0.peerRecords().find((r) => r.name === m0.name)!;
  assert.ok(mine.version > before);
  assert.ok(records(h.got).some((m) => m.deltas?.some((d) => d.name === m0.name)), 'the delta peer got a delta of our record');
  assert.deepEqual(held(h, m0.name), mine, 'and it makes our record exactly');
  assert.ok(records(old.got).every((m) => m.deltas === undefined), 'the old peer got no deltas');
  assert.deepEqual(held(old, m0.name), mine, 'the old peer holds our record from full records');
  assert.ok(m0.stats.topologyDeltasOut >= 1);
  await m0.stop();
});

test('mesh: a neighbour behind on our record while news is pending gets the published one now and the pending one with the news', async () => {
  const sim = new MeshSim(new FakeClock(), { n: 1, seed: 6, discovery: false });
  await sim.start();
  const m0 = sim.meshes[0] as Mesh;
  const h = await handPeer(sim, 5, true);
  h.send({ kind: TopoKind.Records, peers: [rec(h.features.name, 1, [conn(m0.name)], h.features.uid)], want: [] });
  h.send({ kind: TopoKind.Digest, digest: [] });
  await sim.run(5000);
  const published = held(h, m0.name);
  assert.deepEqual(published, m0.peerRecords().find((r) => r.name === m0.name));
  // our record changes (a new neighbour); before the news goes out, h offers an older copy of it
  const third = await handPeer(sim, 7, true);
  third.send({ kind: TopoKind.Records, peers: [rec(third.features.name, 1, [conn(m0.name)], third.features.uid)], want: [] });
  h.send({ kind: TopoKind.Records, peers: [{ ...published, version: 1, connections: [] }], want: [] });
  await sim.run(5);
  assert.ok(m0.peerRecords().find((r) => r.name === m0.name)!.version > published.version, 'changed, news pending');
  await sim.run(5000);
  assert.deepEqual(held(h, m0.name), m0.peerRecords().find((r) => r.name === m0.name), 'h holds our current record');
  await m0.stop();
});

test('mesh: deltas from a neighbour when we did not offer them are a protocol error', async () => {
  const sim = new MeshSim(new FakeClock(), { n: 1, seed: 5, discovery: false, extra: { topologyDeltas: false } });
  await sim.start();
  const m0 = sim.meshes[0] as Mesh;
  const h = await handPeer(sim, 5, true);
  assert.equal(h.conn.remote.topologyDeltas, undefined, 'not offered');
  h.send({ kind: TopoKind.Records, peers: [], want: [], deltas: [{ name: B, uid: 'ub', base: 1, version: 2, changed: [], removed: [] }] });
  await sim.run(100);
  assert.equal(m0.stats.protocolErrors, 1);
  assert.equal(m0.connectionTo(h.features.name), undefined);
  await m0.stop();
});

test('mixed mesh: routers with and without deltas form one full mesh with identical views', async () => {
  const sim = new MeshSim(new FakeClock(), { n: 12, seed: 8, discovery: true, extraFor: (i) => ({ topologyDeltas: i % 3 !== 0 }) });
  await sim.start();
  assert.ok((await sim.runUntil(() => sim.converged() && sim.alive().every((m) => m.connectionStatuses().filter((c) => c.state === 'established').length === 11), 60_000, 100)) >= 0, 'full mesh, one view');
  const peers = sim.alive();
  for (const m of peers) assert.equal(m.stats.protocolErrors, 0);
  for (const [i, m] of peers.entries()) {
    if (i % 3 === 0) assert.equal(m.stats.topologyDeltasApplied + m.stats.topologyDeltasOut, 0, 'no deltas on a router without them');
  }
  assert.ok(peers.some((m) => m.stats.topologyDeltasApplied > 0), 'the others used deltas');
  // every view holds each owner's own record exactly
  const own = new Map(peers.map((m) => [m.name, m.peerRecords().find((r) => r.name === m.name)]));
  for (const m of peers) for (const r of m.peerRecords()) assert.deepEqual(r, own.get(r.name));
  for (const m of peers) await m.stop();
});

// ---- property: deltas with loss converge to what full records give ----

test('property: random connection changes on N owners, deltas lost at random, converge to the full-record views', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 2 ** 31 }), fc.integer({ min: 2, max: 6 }), fc.double({ min: 0, max: 0.6, noNaN: true }), (seed, n, loss) => {
      const random = seededRandom(seed);
      const name = (i: number) => simPeerName(i);
      let uidSeq = 0;
      const owners: Topology[] = [];
      for (let i = 0; i < n; i++) owners.push(new Topology({ name: name(i), nickname: `o${i}`, uid: `u${uidSeq++}` }));
      // every (name uid version) an owner ever had: a record any view holds must be exactly that
      const history = new Map<string, PeerRecord>();
      const remember = (r: PeerRecord) => history.set(`${r.name} ${r.uid} ${r.version}`, r);
      owners.forEach((o) => remember(o.ourself));
      const views: Topology[] = [];
      for (let j = 0; j < 3; j++) views.push(new Topology({ name: `02:ff:00:00:00:0${j}`, nickname: `v${j}`, uid: `v${j}` }));
      const oracle = new Topology({ name: '02:ff:00:00:00:ff', nickname: 'oracle', uid: 'oracle' });
      // what each owner last sent each view (its ownSent)
      const sent = new Map<string, PeerRecord>();
      for (let step = 0; step < 40; step++) {
        const i = Math.floor(random() * n);
        if (random() < 0.05) {
          // a restart: new uid, version 1; it outbids the old incarnation the views hold (self conflict)
          const prev = owners[i].ourself;
          owners[i] = new Topology({ name: name(i), nickname: `o${i}`, uid: `u${uidSeq++}` });
          owners[i].bumpSelfAbove(prev.version);
          for (let j = 0; j < views.length; j++) sent.delete(`${i} ${j}`);
        } else {
          const conns: ConnInfo[] = [];
          for (let k = 0; k < n + 2; k++) if (k !== i && random() < 0.5) conns.push({ name: name(k), address: `10.0.0.${k}:6783`, outbound: random() < 0.5, established: random() < 0.7 });
          if (!owners[i].setLocalConnections(conns)) continue;
        }
        const r = owners[i].ourself;
        remember(r);
        oracle.merge([r]);
        for (let j = 0; j < views.length; j++) {
          const base = sent.get(`${i} ${j}`);
          sent.set(`${i} ${j}`, r);
          const d = base ? recordDelta(base, r) : null;
          if (random() < loss) continue; // lost on the way
          if (!d) {
            views[j].merge([r]);
            continue;
          }
          const res = views[j].mergeDeltas([d]);
          // the gap path: the owner answers the want with its full record (that answer may be lost too)
          if (res.missing.length && random() >= loss) views[j].merge([owners[i].ourself]);
        }
      }
      // repair rounds (the periodic hash/digest exchange): views that differ get what they lack
      for (const v of views) {
        v.merge(oracleReconcile(v, owners.map((o) => o.ourself)));
        for (const r of v.records()) if (r.name !== v.self) assert.deepEqual(r, history.get(`${r.name} ${r.uid} ${r.version}`), 'a held record is exactly the owner\'s at that version');
      }
      const strip = (t: Topology) => t.digest().filter(([nm]) => !nm.startsWith('02:ff'));
      for (const v of views) assert.deepEqual(strip(v), strip(oracle));
      for (const v of views) for (const o of owners) assert.deepEqual(v.get(o.self), o.ourself);
    }),
    { seed: 19, numRuns: 200 },
  );
});

/** What a digest exchange with the owners brings a view: the records it lacks or holds older. */
function oracleReconcile(v: Topology, current: PeerRecord[]): PeerRecord[] {
  const t = new Topology({ name: '02:ff:00:00:00:fd', nickname: '', uid: 'r' });
  t.merge(current);
  return t.reconcile(v.digest()).send.filter((r) => r.name !== t.self);
}
