// Fuzzes the decoders of everything a peer can send the mesh (topology and gossip messages): any
// input either decodes into a well-formed value or throws ProtocolError — never another error type,
// never a value that breaks invariants later. Then, end to end: garbage on one connection closes
// that connection only.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { decodeTopology, encodeTopology, TopoKind, type TopologyMsg } from '../../mesh/topology';
import { decodeGossip, encodeGossip, GossipKind } from '../../mesh/gossip';
import { ProtocolError } from '../../lib/errors';
import { encodeMsg } from '../../mesh/codec';
import { isPeerName } from '../../mesh/peer';
import { FakeClock } from '../../lib/clock';
import { MeshSim, simAddress } from '../fakes/underlay';
import { Msg } from '../../mesh/types';

const peerName = fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 6, maxLength: 6 }).map((b) => b.map((x) => x.toString(16).padStart(2, '0')).join(':'));

function checkTopology(m: TopologyMsg): void {
  if (m.kind === 0) {
    for (const r of m.peers) {
      assert.ok(isPeerName(r.name));
      assert.ok(Number.isSafeInteger(r.version) && r.version >= 1);
      assert.equal(typeof r.uid, 'string');
      const seen = new Set<string>();
      for (const c of r.connections) {
        assert.ok(isPeerName(c.name) && c.name !== r.name && !seen.has(c.name));
        seen.add(c.name);
        assert.equal(typeof c.outbound, 'boolean');
        assert.equal(typeof c.established, 'boolean');
      }
    }
    for (const w of m.want) assert.ok(isPeerName(w));
    const names = new Set(m.peers.map((r) => r.name));
    for (const d of m.deltas ?? []) {
      assert.ok(isPeerName(d.name) && !names.has(d.name), 'one record or delta per peer');
      names.add(d.name);
      assert.ok(Number.isSafeInteger(d.base) && d.base >= 1 && Number.isSafeInteger(d.version) && d.version > d.base);
      assert.ok(typeof d.uid === 'string' && d.uid.length > 0);
      assert.ok(d.nickname === undefined || typeof d.nickname === 'string');
      const seen = new Set<string>();
      for (const c of d.changed) {
        assert.ok(isPeerName(c.name) && c.name !== d.name && !seen.has(c.name));
        seen.add(c.name);
        assert.equal(typeof c.outbound, 'boolean');
        assert.equal(typeof c.established, 'boolean');
      }
      for (const n of d.removed) {
        assert.ok(isPeerName(n) && n !== d.name && !seen.has(n));
        seen.add(n);
      }
    }
  } else if (m.kind === 1) {
    for (const [n, u, v] of m.digest) assert.ok(isPeerName(n) && typeof u === 'string' && Number.isSafeInteger(v));
  }
}

function decodeOrProtocolError<T>(f: () => T, check: (v: T) => void): void {
  let v: T;
  try {
    v = f();
  } catch (e) {
    if (!(e instanceof ProtocolError)) throw new Error(`decoder threw a non-ProtocolError: ${String(e)}`);
    return;
  }
  check(v);
}

test('fuzz: random bytes into the topology and gossip decoders', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), (buf) => {
      decodeOrProtocolError(() => decodeTopology(buf), checkTopology);
      decodeOrProtocolError(() => decodeGossip(buf), (g) => assert.ok(isPeerName(g.src) && g.payload instanceof Uint8Array));
    }),
    { seed: 7, numRuns: 2000 },
  );
});

test('fuzz: random msgpack values (structured junk) into the decoders', () => {
  const junk = fc.letrec((tie) => ({
    v: fc.oneof(
      { depthSize: 'small' },
      fc.integer(), fc.double(), fc.boolean(), fc.constant(null), fc.string({ maxLength: 20 }), peerName, fc.uint8Array({ maxLength: 8 }),
      fc.array(tie('v'), { maxLength: 5 }),
      fc.dictionary(fc.constantFrom('v', 'k', 'p', 'w', 'x', 'd', 'h', 'c', 'm', 'channel', 'kind', 'src', 'dst', 'payload'), tie('v'), { maxKeys: 6 }),
    ),
  })).v;
  const shaped = fc.record({
    v: fc.oneof(fc.constant(1), junk),
    k: fc.oneof(fc.integer({ min: 0, max: 3 }), junk),
    p: fc.oneof(fc.array(fc.tuple(peerName, fc.string(), fc.string(), fc.integer(), fc.array(fc.tuple(peerName, fc.string(), fc.oneof(fc.boolean(), fc.integer()), fc.boolean()), { maxLength: 3 })), { maxLength: 3 }), junk),
    x: fc.oneof(fc.array(fc.tuple(peerName, fc.string({ maxLength: 3 }), fc.integer({ min: -1, max: 4 }), fc.integer({ min: -1, max: 6 }), fc.oneof(fc.constant(null), fc.string({ maxLength: 3 }), junk),
      fc.array(fc.tuple(peerName, fc.string(), fc.oneof(fc.boolean(), fc.integer()), fc.boolean()), { maxLength: 3 }), fc.array(fc.oneof(peerName, junk), { maxLength: 3 })), { maxLength: 3 }), junk),
    channel: fc.oneof(fc.string({ maxLength: 10 }), junk),
    kind: fc.oneof(fc.integer({ min: -1, max: 3 }), junk),
    src: fc.oneof(peerName, junk),
    dst: fc.oneof(peerName, junk),
    payload: fc.oneof(fc.uint8Array({ maxLength: 8 }), junk),
  }, { requiredKeys: [] });
  fc.assert(
    fc.property(fc.oneof(junk, shaped), (value) => {
      const buf = encodeMsg(value);
      decodeOrProtocolError(() => decodeTopology(buf), checkTopology);
      decodeOrProtocolError(() => decodeGossip(buf), (g) => {
        assert.ok(isPeerName(g.src));
        if (g.kind === GossipKind.Unicast) assert.ok(g.dst !== undefined && isPeerName(g.dst));
        else assert.equal(g.dst, undefined);
      });
    }),
    { seed: 11, numRuns: 1500 },
  );
});

test('fuzz: single-byte mutations of valid messages', () => {
  const valid: Uint8Array[] = [
    encodeTopology({ kind: TopoKind.Records, peers: [{ name: '02:00:00:00:00:01', nickname: 'a', uid: 'u1', version: 3, connections: [{ name: '02:00:00:00:00:02', address: '10.0.0.2:6783', outbound: true, established: true }] }], want: ['02:00:00:00:00:03'] }),
    encodeTopology({ kind: TopoKind.Records, peers: [], want: [], deltas: [{ name: '02:00:00:00:00:01', uid: 'u1', base: 3, version: 4, nickname: 'b', changed: [{ name: '02:00:00:00:00:02', address: '10.0.0.2:6783', outbound: false, established: true }], removed: ['02:00:00:00:00:03'] }] }),
    encodeTopology({ kind: TopoKind.Digest, digest: [['02:00:00:00:00:01', 'u1', 3]] }),
    encodeGossip({ channel: 'ipam', kind: GossipKind.Unicast, src: '02:00:00:00:00:01', dst: '02:00:00:00:00:02', payload: new Uint8Array([1, 2, 3]) }),
    encodeGossip({ channel: 'dns', kind: GossipKind.Broadcast, src: '02:00:00:00:00:01', payload: new Uint8Array([9]) }),
  ];
  fc.assert(
    fc.property(fc.nat(valid.length - 1), fc.nat(), fc.integer({ min: 0, max: 255 }), fc.boolean(), (which, pos, byte, truncate) => {
      const src = valid[which];
      const buf = Uint8Array.from(src);
      const i = pos % buf.length;
      buf[i] = byte;
      const input = truncate ? buf.subarray(0, i) : buf;
      decodeOrProtocolError(() => decodeTopology(input), checkTopology);
      decodeOrProtocolError(() => decodeGossip(input), (g) => assert.ok(isPeerName(g.src)));
    }),
    { seed: 99, numRuns: 3000 },
  );
});

test('garbage on one connection closes that connection only', async () => {
  const clock = new FakeClock();
  const sim = new MeshSim(clock, { n: 3, seed: 5, discovery: false, targets: (i) => (i === 0 ? [] : [0]) });
  await sim.start();
  await sim.run(500);
  const [m0, m1, m2] = sim.meshes as NonNullable<(typeof sim.meshes)[number]>[];
  assert.ok(m0.connectionTo(m1.name) && m0.connectionTo(m2.name));
  const lost: string[] = [];
  m0.on('connectionLost', (p: string) => lost.push(p));
  // m1 sends junk topology and gossip to m0
  const c = m1.connectionTo(m0.name)!;
  c.send(Msg.Topology, encodeMsg({ v: 1, k: 0, p: [['bogus']] }));
  await sim.run(100);
  assert.deepEqual(lost, [m1.name]);
  assert.equal(m0.stats.protocolErrors, 1);
  assert.ok(m0.connectionTo(m2.name), 'the other connection survives');
  // m1 reconnects (it targets m0), and a bad gossip message gets the same treatment
  await sim.runUntil(() => m0.connectionTo(m1.name) !== undefined, 10_000);
  m1.connectionTo(m0.name)!.send(Msg.Gossip, new Uint8Array([0x92, 0x01]));
  await sim.run(100);
  assert.equal(m0.stats.protocolErrors, 2);
  assert.ok(m0.connectionTo(m2.name));
  // an unknown mesh message type (< 32) is a protocol error too; overlay types (>= 32) are not
  await sim.runUntil(() => m0.connectionTo(m1.name) !== undefined, 10_000);
  m1.connectionTo(m0.name)!.send(77, new Uint8Array([1]));
  await sim.run(100);
  assert.ok(m0.connectionTo(m1.name), 'an unknown overlay message type does not close the connection');
  m1.connectionTo(m0.name)!.send(17, new Uint8Array([1]));
  await sim.run(100);
  assert.equal(m0.stats.protocolErrors, 3);
  assert.equal(m0.connectionTo(m1.name), undefined);
  assert.equal(simAddress(0), '10.0.0.0:6783');
  for (const m of sim.alive()) await m.stop();
});
