import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Topology, decodeTopology, encodeTopology, newerThan, TopoKind, type PeerRecord, type ConnInfo } from '../../mesh/topology';
import { ProtocolError } from '../../lib/errors';
import { encodeMsg } from '../../mesh/codec';

const A = '02:00:00:00:00:0a';
const B = '02:00:00:00:00:0b';
const C = '02:00:00:00:00:0c';
const D = '02:00:00:00:00:0d';

function conn(name: string, established = true, outbound = true): ConnInfo {
  return { name, address: `10.0.0.${parseInt(name.slice(-2), 16)}:6783`, outbound, established };
}
function rec(name: string, version: number, conns: ConnInfo[], uid = `uid-${name.slice(-2)}`): PeerRecord {
  return { name, nickname: `n${name.slice(-2)}`, uid, version, connections: conns };
}

test('merge: higher version wins, older and equal ignored, news reported once', () => {
  const t = new Topology({ name: A, nickname: 'a', uid: 'ua' });
  assert.deepEqual(t.merge([rec(B, 3, [])]).changed, [B]);
  assert.deepEqual(t.merge([rec(B, 2, [conn(C)])]).changed, []);
  assert.deepEqual(t.merge([rec(B, 3, [conn(C)])]).changed, []);
  assert.equal(t.get(B)!.connections.length, 0);
  assert.deepEqual(t.merge([rec(B, 4, [conn(C)])]).changed, [B]);
  assert.equal(t.get(B)!.version, 4);
});

test('merge: equal versions of two incarnations resolve the same way in either order', () => {
  const x = rec(B, 5, [], 'aaaa');
  const y = rec(B, 5, [conn(C)], 'bbbb');
  const t1 = new Topology({ name: A, nickname: 'a', uid: 'ua' });
  t1.merge([x]);
  t1.merge([y]);
  const t2 = new Topology({ name: A, nickname: 'a', uid: 'ua' });
  t2.merge([y]);
  t2.merge([x]);
  assert.equal(t1.get(B)!.uid, 'bbbb');
  assert.equal(t2.get(B)!.uid, 'bbbb');
  assert.equal(t1.hash(), t2.hash());
  // a restarted incarnation with a higher version replaces the old one whatever the uid order
  t1.merge([rec(B, 6, [], 'aaaa')]);
  assert.equal(t1.get(B)!.uid, 'aaaa');
  assert.equal(newerThan({ uid: 'a', version: 2 }, { uid: 'z', version: 1 }), true);
});

test('records about ourselves are never merged; another uid is reported as a conflict', () => {
  const t = new Topology({ name: A, nickname: 'a', uid: 'ua' });
  const r1 = t.merge([rec(A, 50, [conn(B)], 'ua')]);
  assert.equal(r1.selfConflict, undefined);
  assert.equal(t.ourself.version, 1);
  const r2 = t.merge([rec(A, 57, [conn(B)], 'old-incarnation')]);
  assert.deepEqual(r2.changed, []);
  assert.equal(r2.selfConflict?.version, 57);
  t.bumpSelfAbove(57);
  assert.equal(t.ourself.version, 58);
  assert.equal(t.ourself.uid, 'ua');
});

test('setLocalConnections bumps our version only when the list changes', () => {
  const t = new Topology({ name: A, nickname: 'a', uid: 'ua' });
  assert.equal(t.setLocalConnections([conn(C), conn(B)]), true);
  assert.equal(t.ourself.version, 2);
  assert.deepEqual(t.ourself.connections.map((c) => c.name), [B, C]);
  assert.equal(t.setLocalConnections([conn(B), conn(C)]), false);
  assert.equal(t.ourself.version, 2);
  assert.equal(t.setLocalConnections([conn(B), conn(C, false)]), true);
  assert.equal(t.ourself.version, 3);
});

test('adjacency counts only connections established on both ends; gc drops the unreachable', () => {
  const t = new Topology({ name: A, nickname: 'a', uid: 'ua' });
  t.setLocalConnections([conn(B)]);
  t.merge([
    rec(B, 2, [conn(A, true, false), conn(C)]),
    rec(C, 2, [conn(B, false, false)]), // C has not established B yet
    rec(D, 2, [conn(C)]),
  ]);
  const adj = t.adjacency();
  assert.deepEqual(adj.get(A), [B]);
  assert.deepEqual(adj.get(B), [A]);
  assert.deepEqual(adj.get(C), []);
  assert.deepEqual([...t.reachable(adj)].sort(), [A, B]);
  assert.deepEqual(t.gc().sort(), [C, D]);
  assert.deepEqual(t.names().sort(), [A, B]);
  // once C establishes, C becomes reachable
  t.merge([rec(C, 3, [conn(B, true, false)])]);
  assert.deepEqual([...t.reachable()].sort(), [A, B, C]);
});

test('reconcile: sends what the other lacks or has older, asks for what it has newer', () => {
  const t = new Topology({ name: A, nickname: 'a', uid: 'ua' });
  t.merge([rec(B, 3, []), rec(C, 2, [])]);
  const { send, want, selfConflict } = t.reconcile([[B, 'uid-0b', 5], [C, 'uid-0c', 1], [D, 'uid-0d', 1], [A, 'ua', 1]]);
  assert.deepEqual(send.map((r) => r.name).sort(), [C]); // our own record: same version there
  assert.deepEqual(want.sort(), [B, D]);
  assert.equal(selfConflict, undefined);
  assert.equal(t.reconcile([[A, 'stale', 9]]).selfConflict?.version, 9);
});

test('reconcile: a version difference of a record in flight is left to the news; missing records and other incarnations are not', () => {
  const t = new Topology({ name: A, nickname: 'a', uid: 'ua' });
  t.merge([rec(B, 3, []), rec(C, 2, [])]);
  const inFlight = (n: string): boolean => n === B || n === C;
  // B: they are a version ahead, C: they are a version behind; both in flight here: neither moves
  const quiet = t.reconcile([[B, 'uid-0b', 4], [C, 'uid-0c', 1], [D, 'uid-0d', 1], [A, 'ua', 1]], inFlight);
  assert.deepEqual(quiet.send.map((r) => r.name), []);
  assert.deepEqual(quiet.want, [D]);
  // another incarnation of B, and C missing there: exchanged although in flight
  const loud = t.reconcile([[B, 'uid-new', 4], [A, 'ua', 1]], inFlight);
  assert.deepEqual(loud.send.map((r) => r.name).sort(), [C]);
  assert.deepEqual(loud.want, [B]);
  // once the news had its time, the same difference is a miss and is repaired
  const later = t.reconcile([[B, 'uid-0b', 4], [C, 'uid-0c', 1], [A, 'ua', 1]], () => false);
  assert.deepEqual(later.send.map((r) => r.name), [C]);
  assert.deepEqual(later.want, [B]);
});

test('hash: equal views hash equal regardless of arrival order; different versions differ', () => {
  const t1 = new Topology({ name: A, nickname: 'a', uid: 'ua' });
  const t2 = new Topology({ name: A, nickname: 'a', uid: 'ua' });
  t1.merge([rec(B, 2, []), rec(C, 3, [])]);
  t2.merge([rec(C, 3, []), rec(B, 2, [])]);
  assert.equal(t1.hash(), t2.hash());
  t2.merge([rec(B, 4, [])]);
  assert.notEqual(t1.hash(), t2.hash());
});

test('wire: every kind round-trips', () => {
  const peers = [rec(B, 7, [conn(A, true, false), conn(C, false, true)]), rec(C, 1, [])];
  const m1 = decodeTopology(encodeTopology({ kind: TopoKind.Records, peers, want: [D] }));
  assert.deepEqual(m1, { kind: 0, peers, want: [D] });
  assert.deepEqual(decodeTopology(encodeTopology({ kind: TopoKind.Records, peers, want: [] })), { kind: 0, peers, want: [] });
  assert.deepEqual(decodeTopology(encodeTopology({ kind: TopoKind.Digest, digest: [[B, 'u', 3]] })), { kind: 1, digest: [[B, 'u', 3]] });
  assert.deepEqual(decodeTopology(encodeTopology({ kind: TopoKind.Hash, hash: 'abc' })), { kind: 2, hash: 'abc' });
  assert.deepEqual(decodeTopology(encodeTopology({ kind: TopoKind.Refused, code: 'ECONNLIMIT', message: 'full' })), { kind: 3, code: 'ECONNLIMIT', message: 'full' });
});

test('wire: malformed messages are ProtocolErrors', () => {
  const good = [B, 'nb', 'ub', 2, [[C, '10.0.0.12:6783', 1, 1]]];
  const bad: unknown[] = [
    { v: 2, k: 0, p: [good] }, // unknown version
    { k: 0, p: [good] }, // no version
    { v: 1, k: 9, p: [] },
    { v: 1, k: 0, p: [[...good.slice(0, 4)]] }, // missing field
    { v: 1, k: 0, p: [['not-a-name', 'n', 'u', 1, []]] },
    { v: 1, k: 0, p: [[B, 'n', 'u', 0, []]] }, // version 0
    { v: 1, k: 0, p: [[B, 'n', 'u', 1.5, []]] },
    { v: 1, k: 0, p: [[B, 'n', '', 1, []]] },
    { v: 1, k: 0, p: [[B, 'n', 'u', 1, [[B, 'x', 1, 1]]]] }, // connection to itself
    { v: 1, k: 0, p: [[B, 'n', 'u', 1, [[C, 'x', 1, 1], [C, 'y', 1, 1]]]] }, // duplicate
    { v: 1, k: 0, p: [[B, 'n', 'u', 1, [[C, 'x', 'yes', 1]]]] },
    { v: 1, k: 0, p: 'x' },
    { v: 1, k: 1, d: [[B, 'u']] },
    { v: 1, k: 2, h: 5 },
    { v: 1, k: 3, c: 'lowercase', m: 'x' },
    [1, 2, 3],
    'string',
  ];
  for (const b of bad) assert.throws(() => decodeTopology(encodeMsg(b)), ProtocolError, JSON.stringify(b));
  assert.throws(() => decodeTopology(new Uint8Array([0xc1])), ProtocolError);
  assert.throws(() => decodeTopology(new Uint8Array([])), ProtocolError);
});

test('drop: copies of a dropped record are refused and not asked for; a newer version or a restart is taken', () => {
  const t = new Topology({ name: A, nickname: 'a', uid: 'ua' });
  t.merge([rec(B, 4, [conn(C)]), rec(C, 2, [conn(B)])]);
  t.drop([B, C], 1000);
  assert.deepEqual(t.names(), [A]);
  // a neighbour that has not dropped B yet offers its last record: stale, refused
  const stale = t.merge([rec(B, 4, [conn(C)]), rec(B, 3, [])]);
  assert.deepEqual(stale.changed, []);
  assert.deepEqual(stale.dropped, [B, B]);
  assert.deepEqual(t.reconcile([[B, 'uid-0b', 4], [C, 'uid-0c', 2]]).want, []);
  // a newer version of the same incarnation is alive: taken, its memory gone
  assert.deepEqual(t.reconcile([[B, 'uid-0b', 5]]).want, [B]);
  assert.deepEqual(t.merge([rec(B, 5, [])]).changed, [B]);
  assert.equal(t.droppedRecord(B), undefined);
  // a restart (another uid, version 1) is taken; copies of the old incarnation stay out
  assert.deepEqual(t.merge([rec(C, 1, [], 'uid-new')]).changed, [C]);
  assert.deepEqual(t.merge([rec(C, 2, [conn(B)])]).dropped, [C]);
  assert.equal(t.get(C)!.uid, 'uid-new');
  // lifted (a healed partition): the same record is taken again
  t.drop([B], 2000);
  t.forgetDropped(B);
  assert.deepEqual(t.merge([rec(B, 5, [])]).changed, [B]);
  // memories expire
  t.drop([B], 3000);
  assert.equal(t.expireDropped(2500), 1); // C's old incarnation (dropped at 1000) is forgotten, B's kept
  assert.equal(t.droppedRecord(C), undefined);
  assert.equal(t.droppedRecord(B)!.at, 3000);
});
