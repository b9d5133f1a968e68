import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Packr } from 'msgpackr';
import { FakeClock } from '../../lib/clock';
import { silentLogger } from '../../lib/log';
import type { GossipChannel, GossipData } from '../../mesh/types';
import { PrefixTable, PrefixUpdate, decodePrefixUpdate } from '../../router/prefixes';

const A = '02:00:00:00:00:0a';
const B = '02:00:00:00:00:0b';
const C = '02:00:00:00:00:0c';

class RecordingChannel implements GossipChannel {
  readonly name = 'prefixes';
  readonly broadcasts: GossipData[] = [];
  gossipUnicast(): boolean { return true; }
  gossipBroadcast(u: GossipData): void { this.broadcasts.push(u); }
  gossip(): void {}
}

function wire(u: GossipData): Uint8Array {
  const parts = u.encode();
  assert.equal(parts.length, 1);
  return parts[0];
}

test('local announcements are canonical, versioned and broadcast', () => {
  const clock = new FakeClock(5000);
  const t = new PrefixTable(A, clock, silentLogger());
  const ch = new RecordingChannel();
  t.setChannel(ch);
  let changes = 0;
  t.onChange(() => changes++);
  t.setLocal(['10.32.1.7/24', '10.40.0.1', '10.32.1.0/24']);
  assert.deepEqual(t.local(), ['10.32.1.0/24', '10.40.0.1/32']);
  t.setLocal(['10.40.0.1/32', '10.32.1.0/24']); // same set: no new version
  assert.equal(changes, 1);
  assert.equal(ch.broadcasts.length, 1);
  const u = decodePrefixUpdate(wire(ch.broadcasts[0]));
  assert.deepEqual(u.entries.get(A), { version: 5001, prefixes: ['10.32.1.0/24', '10.40.0.1/32'] });
  assert.throws(() => t.setLocal(['10.1.1.1/40']));
});

test('merge by version per origin; delta holds only news; gossip converges', () => {
  const clock = new FakeClock(1000);
  const a = new PrefixTable(A, clock, silentLogger());
  const b = new PrefixTable(B, clock, silentLogger());
  const c = new PrefixTable(C, clock, silentLogger());
  a.setLocal(['10.32.1.0/24']);
  b.setLocal(['10.32.2.0/24']);
  c.setLocal(['10.32.3.0/24']);
  const d1 = b.onGossip(wire(a.full()));
  assert.ok(d1);
  assert.deepEqual([...(d1 as PrefixUpdate).entries.keys()], [A]);
  assert.equal(b.onGossip(wire(a.full())), null, 'nothing new the second time');
  c.onGossipBroadcast(B, wire(b.gossip()!));
  a.onGossip(wire(c.full()));
  for (const t of [a, b, c]) t.onGossip(wire(a.full()));
  for (const t of [a, b, c]) assert.deepEqual([...t.all().keys()].sort(), [A, B, C]);
  // an older version never overwrites a newer one
  const old = new PrefixUpdate(new Map([[A, { version: 1, prefixes: ['1.2.3.0/24'] }]]));
  assert.equal(b.mergeUpdate(old), null);
  assert.deepEqual(b.all().get(A)!.prefixes, ['10.32.1.0/24']);
  // GossipData.merge keeps the newest per origin
  const m = new PrefixUpdate(new Map([[A, { version: 3, prefixes: [] }]])).merge(new PrefixUpdate(new Map([[A, { version: 9, prefixes: ['9.9.9.9/32'] }], [B, { version: 1, prefixes: [] }]]))) as PrefixUpdate;
  assert.deepEqual(m.entries.get(A)!.version, 9);
  assert.equal(m.entries.size, 2);
});

test('removed peers stay removed until they announce something newer', () => {
  const clock = new FakeClock(1000);
  const a = new PrefixTable(A, clock, silentLogger());
  const b = new PrefixTable(B, clock, silentLogger());
  b.setLocal(['10.32.2.0/24']);
  a.onGossip(wire(b.full()));
  let changes = 0;
  a.onChange(() => changes++);
  a.removePeer(B);
  assert.equal(a.all().has(B), false);
  assert.equal(changes, 1);
  assert.equal(a.onGossip(wire(b.full())), null, 'a stale copy gossiped back is not resurrected');
  assert.equal(a.all().has(B), false);
  b.setLocal(['10.32.2.0/24', '10.32.9.9/32']);
  assert.ok(a.onGossip(wire(b.full())));
  assert.deepEqual(a.all().get(B)!.prefixes, ['10.32.2.0/24', '10.32.9.9/32']);
});

test('a peer unreachable for a moment is routed again when it comes back, without announcing anything new', () => {
  const clock = new FakeClock(1000);
  const a = new PrefixTable(A, clock, silentLogger());
  const b = new PrefixTable(B, clock, silentLogger());
  const c = new PrefixTable(C, clock, silentLogger());
  b.setLocal(['10.32.2.0/24']);
  c.setLocal(['10.32.3.0/24']);
  a.onGossip(wire(b.full()));
  // c's gossip arrived before its connection is up: never reachable yet, so it must not be dropped
  a.onGossip(wire(c.full()));
  let changes = 0;
  a.onChange(() => changes++);
  a.setReachable([A, B]);
  assert.deepEqual([...a.all().keys()].sort(), [A, B, C].sort());
  assert.equal(changes, 0);
  // b drops out (a connection replaced, a link flapping, a third router restarting): its prefixes go
  a.setReachable([A]);
  assert.equal(a.all().has(B), false);
  assert.equal(changes, 1);
  assert.equal(a.onGossip(wire(b.full())), null, 'a stale copy gossiped back while b is away is refused');
  // b is back with the same announcement: routed again at once (it has no reason to announce anew)
  a.setReachable([A, B]);
  assert.deepEqual(a.all().get(B)!.prefixes, ['10.32.2.0/24']);
  assert.equal(changes, 2);
  // away again, and this time b announces something newer meanwhile (a restart): the newer one stays
  a.setReachable([A]);
  b.setLocal(['10.32.2.0/24', '10.32.2.9/32']);
  assert.ok(a.onGossip(wire(b.full())));
  a.setReachable([A, B]);
  assert.deepEqual(a.all().get(B)!.prefixes, ['10.32.2.0/24', '10.32.2.9/32']);
  assert.equal(a.all().get(B)!.version, b.all().get(B)!.version);
});

test('a restarted router outbids its own stale announcement', () => {
  const clock = new FakeClock(1000);
  const a1 = new PrefixTable(A, clock, silentLogger());
  a1.setLocal(['10.32.1.0/24']);
  a1.setLocal(['10.32.1.0/24', '10.32.5.5/32']);
  const stale = wire(a1.full());
  const a2 = new PrefixTable(A, new FakeClock(500), silentLogger()); // clock went backwards
  const ch = new RecordingChannel();
  a2.setChannel(ch);
  a2.setLocal(['10.32.7.0/24']);
  const delta = a2.onGossip(stale) as PrefixUpdate;
  assert.ok(delta);
  const mine = a2.all().get(A)!;
  assert.ok(mine.version > a1.all().get(A)!.version);
  assert.deepEqual(mine.prefixes, ['10.32.7.0/24'], 'keeps its own content');
  assert.equal(ch.broadcasts.length, 2);
});

test('malformed updates are protocol errors', () => {
  const t = new PrefixTable(A, new FakeClock(), silentLogger());
  const pk = new Packr({ useRecords: false });
  const bad: unknown[] = [
    { v: 2, entries: [] },
    { v: 1, entries: 'x' },
    { v: 1, entries: [{ o: 'nope', ver: 1, p: [] }] },
    { v: 1, entries: [{ o: B, ver: -1, p: [] }] },
    { v: 1, entries: [{ o: B, ver: 1.5, p: [] }] },
    { v: 1, entries: [{ o: B, ver: 1, p: ['10.0.0.0/33'] }] },
    { v: 1, entries: [{ o: B, ver: 1, p: [7] }] },
    [1, 2, 3],
  ];
  for (const b of bad) assert.throws(() => t.onGossip(pk.pack(b)), { code: 'EPROTO' }, JSON.stringify(b));
  assert.throws(() => t.onGossip(Buffer.from([0xd9])), { code: 'EPROTO' });
  assert.equal(t.stats.malformed, bad.length + 1);
  assert.equal(t.all().size, 1);
});
