import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { pack } from 'msgpackr';
import { FakeClock } from '../../lib/clock';
import { ProtocolError, UsageError } from '../../lib/errors';
import { silentLogger } from '../../lib/log';
import type { GossipChannel, GossipData } from '../../mesh/types';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { DnsRecordSet, DnsStore, FileDnsPersistence, decodeEntries, encodeEntries, normalizeName, type DnsEntry } from '../../dns/records';

const A = '02:00:00:00:00:0a';
const B = '02:00:00:00:00:0b';
const C = '02:00:00:00:00:0c';
const D = '02:00:00:00:00:0d';

function store(self: string, clock = new FakeClock(), extra: Partial<ConstructorParameters<typeof DnsStore>[0]> = {}): DnsStore {
  return new DnsStore({ self, clock, log: silentLogger(), ...extra });
}

class CapturingChannel implements GossipChannel {
  readonly name = 'dns';
  sent: GossipData[] = [];
  gossipUnicast(): boolean { return true; }
  gossipBroadcast(update: GossipData): void { this.sent.push(update); }
  gossip(update: GossipData): void { this.sent.push(update); }
}

/** Sends x's full state to y through the wire encoding, as the mesh would. */
function gossipTo(x: DnsStore, y: DnsStore): GossipData | null {
  const g = x.gossip();
  if (!g) return null;
  let delta: GossipData | null = null;
  for (const msg of g.encode()) {
    const d = y.onGossip(msg);
    if (d) delta = delta ? delta.merge(d) : d;
  }
  return delta;
}

test('add, lookup (case-insensitive), reverse and remove of own records', () => {
  const s = store(A);
  s.add('Web.Weave.Local', '10.32.0.1');
  s.add('web.weave.local.', '10.32.0.2', 'c1');
  assert.deepEqual(s.lookup('WEB.weave.local').sort(), ['10.32.0.1', '10.32.0.2']);
  assert.deepEqual(s.reverse('10.32.0.2'), ['web.weave.local.']);
  assert.equal(s.remove({ addr: '10.32.0.1' }), 1);
  assert.deepEqual(s.lookup('web.weave.local'), ['10.32.0.2']);
  assert.equal(s.removeContainer('c1'), 1);
  assert.deepEqual(s.lookup('web.weave.local'), []);
  // tombstones stay (they must beat stale adds) until GC
  assert.equal(s.all().filter((e) => e.tombstone).length, 2);
  assert.throws(() => s.add('bad name!.weave.local', '10.32.0.1'), UsageError);
  assert.throws(() => s.add('ok.weave.local', '10.32.0.256'), UsageError);
  assert.throws(() => s.remove({}), UsageError);
  assert.equal(normalizeName('X.Y'), 'x.y.');
});

test('the same name from two origins: addresses are deduplicated; removePeer drops only that peer', () => {
  const a = store(A);
  const b = store(B);
  a.add('db.weave.local', '10.32.0.5');
  b.add('db.weave.local', '10.32.0.5');
  b.add('db.weave.local', '10.32.0.6');
  gossipTo(b, a);
  assert.deepEqual(a.lookup('db.weave.local').sort(), ['10.32.0.5', '10.32.0.6']);
  const gen = a.generation;
  assert.equal(a.removePeer(B), 2);
  assert.ok(a.generation > gen);
  assert.deepEqual(a.lookup('db.weave.local'), ['10.32.0.5']);
  assert.equal(a.removePeer(A), 0, 'never drops its own records');
});

test('entries of a peer the mesh says is gone are not resurrected by third parties', () => {
  const clock = new FakeClock();
  const a = store(A, clock, { unknownOriginGraceMs: 30_000 });
  const b = store(B);
  const c = store(C);
  b.add('gone.weave.local', '10.32.1.1');
  gossipTo(b, a);
  gossipTo(b, c); // c has not noticed yet that b is gone
  a.updatePeers([A, B, C]);
  assert.deepEqual(a.lookup('gone.weave.local'), ['10.32.1.1']);
  a.updatePeers([A, C]);
  assert.deepEqual(a.lookup('gone.weave.local'), []);
  gossipTo(c, a);
  assert.deepEqual(a.lookup('gone.weave.local'), []);
  assert.equal(a.counters.entriesIgnoredDeadOrigin, 1);
  // b comes back: its records are accepted again
  a.updatePeers([A, B, C]);
  gossipTo(c, a);
  assert.deepEqual(a.lookup('gone.weave.local'), ['10.32.1.1']);
  // records of a peer the topology has not shown yet are kept for a grace period (gossip can be
  // faster than topology), then dropped if the peer never shows up
  const d = store(D);
  d.add('new.weave.local', '10.32.1.2');
  gossipTo(d, a);
  a.updatePeers([A, B, C]);
  assert.deepEqual(a.lookup('new.weave.local'), ['10.32.1.2']);
  clock.advance(30_000);
  a.gc();
  assert.deepEqual(a.lookup('new.weave.local'), []);
  assert.deepEqual(a.lookup('gone.weave.local'), ['10.32.1.1']);
});

test('a tombstone wins over a stale add, in either arrival order', () => {
  const owner = store(A);
  const addOnly = store(C);
  owner.add('x.weave.local', '10.32.0.9');
  gossipTo(owner, addOnly); // a snapshot with the live entry
  owner.remove({ name: 'x.weave.local' });
  const r1 = store(B);
  gossipTo(owner, r1); // tombstone first
  gossipTo(addOnly, r1); // then the stale add
  assert.deepEqual(r1.lookup('x.weave.local'), []);
  const r2 = store(D);
  gossipTo(addOnly, r2);
  assert.deepEqual(r2.lookup('x.weave.local'), ['10.32.0.9']);
  const d = gossipTo(owner, r2);
  assert.ok(d, 'the tombstone is news and is passed on');
  assert.deepEqual(r2.lookup('x.weave.local'), []);
  assert.equal(gossipTo(owner, r2), null, 'nothing new the second time');
  // equal versions: tombstone wins
  const live: DnsEntry = { name: 'y.weave.local.', addr: '10.32.0.1', origin: B, version: 3, tombstone: false };
  const dead: DnsEntry = { ...live, tombstone: true };
  const s1 = store(A);
  s1.mergeEntries([dead]);
  s1.mergeEntries([live]);
  const s2 = store(A);
  s2.mergeEntries([live]);
  s2.mergeEntries([dead]);
  assert.deepEqual(s1.lookup('y.weave.local'), []);
  assert.deepEqual(s2.all(), s1.all());
});

test('merge is order-independent and idempotent (property)', () => {
  const origins = [B, C, D];
  const entryArb = fc.record({
    name: fc.constantFrom('a.weave.local.', 'b.weave.local.', 'c.weave.local.'),
    addr: fc.constantFrom('10.32.0.1', '10.32.0.2', '10.32.0.3'),
    origin: fc.constantFrom(...origins),
    version: fc.integer({ min: 1, max: 6 }),
    tombstone: fc.boolean(),
    containerId: fc.option(fc.constantFrom('c1', 'c2'), { nil: undefined }),
  });
  fc.assert(
    fc.property(fc.array(entryArb, { maxLength: 40 }), fc.integer({ min: 1, max: 2 ** 31 - 1 }), (entries, seed) => {
      const clean = entries.map((e) => {
        const c: DnsEntry = { name: e.name, addr: e.addr, origin: e.origin, version: e.version, tombstone: e.tombstone };
        if (e.containerId !== undefined) c.containerId = e.containerId;
        return c;
      });
      const s1 = store(A);
      for (const e of clean) s1.mergeEntries([e]);
      // shuffled order, in random batches, some twice, through the wire encoding
      let r = seed;
      const rnd = (): number => ((r = (Math.imul(r, 1103515245) + 12345) >>> 0) / 2 ** 32);
      const shuffled = clean.slice();
      for (let i = shuffled.length - 1; i > 0; i--) {
        const j = Math.floor(rnd() * (i + 1));
        [shuffled[i], shuffled[j]] = [shuffled[j], shuffled[i]];
      }
      const s2 = store(A);
      for (let i = 0; i < shuffled.length; ) {
        const n = 1 + Math.floor(rnd() * 5);
        for (const m of encodeEntries(shuffled.slice(i, i + n))) s2.onGossip(m);
        i += n;
      }
      for (const e of clean.slice(0, 5)) s2.mergeEntries([e]);
      const strip = (s: DnsStore) => s.all();
      assert.deepEqual(strip(s2), strip(s1));
      // three-way gossip converges too
      const s3 = store(A);
      const g1 = s1.gossip();
      if (g1) for (const m of g1.encode()) s3.onGossip(m);
      assert.deepEqual(strip(s3), strip(s1));
    }),
    { numRuns: 200, seed: 42 },
  );
});

test('GossipData merge coalesces and keeps the winner', () => {
  const x = new DnsRecordSet([{ name: 'a.weave.local.', addr: '10.0.0.1', origin: B, version: 1, tombstone: false }]);
  const y = new DnsRecordSet([{ name: 'a.weave.local.', addr: '10.0.0.1', origin: B, version: 2, tombstone: true }]);
  x.merge(y);
  assert.equal(x.size, 1);
  assert.equal([...x.entries.values()][0].tombstone, true);
  const decoded = x.encode().flatMap((m) => decodeEntries(m));
  assert.deepEqual(decoded, [{ name: 'a.weave.local.', addr: '10.0.0.1', origin: B, version: 2, tombstone: true }]);
});

test('tombstones are garbage-collected after the TTL by the clock-driven timer', () => {
  const clock = new FakeClock();
  const s = store(A, clock, { tombstoneTtlMs: 60_000, gcIntervalMs: 10_000 });
  s.start();
  s.add('t.weave.local', '10.32.0.1');
  s.remove({ name: 't.weave.local' });
  clock.advance(50_000);
  assert.equal(s.all().length, 1);
  clock.advance(20_000);
  assert.equal(s.all().length, 0);
  assert.equal(s.counters.tombstonesCollected, 1);
  // a stale live copy of our own collected record coming back is ignored
  s.mergeEntries([{ name: 't.weave.local.', addr: '10.32.0.1', origin: A, version: 1, tombstone: false }]);
  assert.deepEqual(s.lookup('t.weave.local'), []);
  s.stop();
  assert.equal(clock.pending(), 0);
});

test('restart: a fresh router re-learns its own records from a peer and its next edits win', () => {
  const a1 = store(A);
  const b = store(B);
  a1.add('keep.weave.local', '10.32.0.1');
  a1.add('drop.weave.local', '10.32.0.2');
  a1.add('drop.weave.local', '10.32.0.3');
  a1.remove({ addr: '10.32.0.3' });
  gossipTo(a1, b);
  // a restarts with no state
  const a2 = store(A);
  const ch = new CapturingChannel();
  a2.attach(ch);
  gossipTo(b, a2);
  assert.deepEqual(a2.lookup('keep.weave.local'), ['10.32.0.1']);
  assert.deepEqual(a2.lookup('drop.weave.local'), ['10.32.0.2']);
  // the owner's next edit carries a version above everything it re-learned, so peers take it
  assert.equal(a2.remove({ name: 'drop.weave.local' }), 1);
  assert.equal(ch.sent.length, 1);
  for (const m of ch.sent[0].encode()) b.onGossip(m);
  assert.deepEqual(b.lookup('drop.weave.local'), []);
  // re-adding an address that was tombstoned before the restart works too
  a2.add('drop.weave.local', '10.32.0.3');
  for (const m of ch.sent[1].encode()) b.onGossip(m);
  assert.deepEqual(b.lookup('drop.weave.local'), ['10.32.0.3']);
});

test('restart: the owner re-asserts a record it registered again before peers told it about an older tombstone', () => {
  const a1 = store(A);
  const b = store(B);
  a1.add('svc.weave.local', '10.32.0.7');
  a1.remove({ name: 'svc.weave.local' });
  a1.add('other.weave.local', '10.32.0.8');
  a1.remove({ name: 'other.weave.local' });
  gossipTo(a1, b); // b holds tombstones with versions 2 and 4
  const a2 = store(A);
  const ch = new CapturingChannel();
  a2.attach(ch);
  a2.add('svc.weave.local', '10.32.0.7'); // version 1 in the new process
  ch.sent = [];
  gossipTo(b, a2);
  assert.deepEqual(a2.lookup('svc.weave.local'), ['10.32.0.7'], 'the owner keeps its current state');
  assert.equal(a2.counters.reasserted, 1);
  assert.equal(ch.sent.length, 1, 're-asserted entry broadcast');
  for (const m of ch.sent[0].encode()) b.onGossip(m);
  assert.deepEqual(b.lookup('svc.weave.local'), ['10.32.0.7']);
  // the key it did not touch is simply re-learned (tombstone)
  assert.ok(a2.all().some((e) => e.name === 'other.weave.local.' && e.tombstone));
});

test('decoder rejects malformed gossip with ProtocolError and the store counts it', () => {
  const good = encodeEntries([{ name: 'a.weave.local.', addr: '10.0.0.1', origin: B, version: 1, tombstone: false, containerId: 'x' }])[0];
  assert.equal(decodeEntries(good).length, 1);
  const bad: unknown[] = [
    { v: 2, e: [] },
    { e: [] },
    { v: 1 },
    { v: 1, e: [['A.weave.local.', '10.0.0.1', B, 1, 0, '']] }, // not normalized
    { v: 1, e: [['a.weave.local.', '10.0.0.300', B, 1, 0, '']] },
    { v: 1, e: [['a.weave.local.', '10.0.0.1', 'nobody', 1, 0, '']] },
    { v: 1, e: [['a.weave.local.', '10.0.0.1', B, 0, 0, '']] },
    { v: 1, e: [['a.weave.local.', '10.0.0.1', B, 1.5, 0, '']] },
    { v: 1, e: [['a.weave.local.', '10.0.0.1', B, 1, 2, '']] },
    { v: 1, e: [['a.weave.local.', '10.0.0.1', B, 1, 0, 'x'.repeat(200)]] },
    { v: 1, e: [['a.weave.local.', '10.0.0.1', B, 1, 0]] },
    { v: 1, e: 'nope' },
    [1, 2, 3],
    'string',
  ];
  for (const b of bad) assert.throws(() => decodeEntries(pack(b)), ProtocolError, JSON.stringify(b));
  const s = store(A);
  assert.throws(() => s.onGossip(Uint8Array.from([0xc1])), ProtocolError);
  assert.equal(s.counters.gossipMalformed, 1);
});

test('decode fuzz: random and mutated messages give entries or ProtocolError, nothing else (seeded)', () => {
  const base = encodeEntries([
    { name: 'a.weave.local.', addr: '10.0.0.1', origin: B, version: 7, tombstone: false, containerId: 'abc' },
    { name: 'b.weave.local.', addr: '10.0.0.2', origin: C, version: 9, tombstone: true },
  ])[0];
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 200 }),
        fc.tuple(fc.array(fc.tuple(fc.nat(base.length - 1), fc.nat(255)), { minLength: 1, maxLength: 6 }), fc.nat(base.length)).map(([muts, cut]) => {
          const b = Uint8Array.from(base);
          for (const [i, v] of muts) b[i] = v;
          return b.subarray(0, Math.max(1, cut));
        }),
      ),
      (bytes) => {
        try {
          const es = decodeEntries(bytes);
          for (const e of es) assert.equal(normalizeName(e.name), e.name);
        } catch (e) {
          assert.ok(e instanceof ProtocolError, `unexpected ${(e as Error).name}: ${(e as Error).message}`);
        }
      },
    ),
    { numRuns: 3000, seed: 7 },
  );
});

test('persistence: own entries (tombstones too) survive a restart, versions continue, bad files are survived', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'weave-dns-persist-'));
  try {
    const file = path.join(dir, 'dns-records');
    const disk = new FileDnsPersistence(file);
    const a1 = store(A, new FakeClock(), { persistence: disk });
    a1.add('web.weave.local', '10.32.0.1', 'c1');
    a1.add('web.weave.local', '10.32.0.2');
    a1.remove({ addr: '10.32.0.2' });
    a1.mergeEntries([{ name: 'b.weave.local.', addr: '10.32.9.9', origin: B, version: 1, tombstone: false }]);
    const maxVersion = Math.max(...a1.all().filter((e) => e.origin === A).map((e) => e.version));

    const a2 = store(A, new FakeClock(), { persistence: disk });
    assert.equal(a2.counters.loadedFromDisk, 2, 'only our own entries are saved');
    assert.deepEqual(a2.lookup('web.weave.local'), ['10.32.0.1']);
    assert.ok(a2.all().some((e) => e.addr === '10.32.0.2' && e.tombstone));
    assert.deepEqual(a2.lookup('b.weave.local'), []);
    const e = a2.add('web.weave.local', '10.32.0.2');
    assert.ok(e.version > maxVersion, 'versions continue past the saved ones');
    // a peer holding the old tombstone does not win over the restored owner
    const b = store(B);
    gossipTo(a1, b);
    gossipTo(a2, b);
    assert.deepEqual(b.lookup('web.weave.local').sort(), ['10.32.0.1', '10.32.0.2']);

    fs.writeFileSync(file, 'not msgpack at all');
    const a3 = store(A, new FakeClock(), { persistence: disk });
    assert.equal(a3.counters.persistErrors, 1);
    assert.deepEqual(a3.lookup('web.weave.local'), []);
    // a save failure is counted, not thrown
    const a4 = store(A, new FakeClock(), { persistence: new FileDnsPersistence(path.join(dir, 'missing-dir', 'x')) });
    a4.add('x.weave.local', '10.32.0.3');
    assert.equal(a4.counters.persistErrors, 1);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
