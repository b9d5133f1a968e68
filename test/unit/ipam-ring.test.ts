import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Packr } from 'msgpackr';
import { formatAddr, parseAddr, parseCidr, formatRange, usableRange, subnets, intersect, subtractRanges } from '../../ipam/addr';
import { Ring, CLAIM_BUMP } from '../../ipam/ring';
import { Space } from '../../ipam/space';
import { Paxos } from '../../ipam/paxos';
import { decodeGossip, decodeUnicast, encodeGossip, encodeUnicast } from '../../ipam/wire';
import { ProtocolError, UsageError } from '../../lib/errors';

const A = '02:00:00:00:00:01';
const B = '02:00:00:00:00:02';
const C = '02:00:00:00:00:03';
const R = parseCidr('10.32.0.0/12');

function seeded(...peers: string[]): Ring {
  const r = new Ring(R);
  r.seed(peers.map((name) => ({ name, nickname: '' })));
  return r;
}

test('addr: parse/format, clear errors, cidr math', () => {
  assert.equal(parseAddr('10.32.0.1'), 0x0a200001);
  assert.equal(formatAddr(0xffffffff), '255.255.255.255');
  assert.throws(() => parseAddr('10.32.0'), (e: unknown) => e instanceof UsageError && /four dotted/.test(e.message));
  assert.throws(() => parseAddr('10.320.0.1'), /greater than 255/);
  assert.throws(() => parseCidr('10.32.1.0/12'), /did you mean 10.32.0.0\/12/);
  assert.throws(() => parseCidr('10.32.0.0/33'), /greater than 32/);
  const c = parseCidr('10.32.0.0/12');
  assert.equal(c.end - c.start, 1 << 20);
  assert.equal(formatRange(c), '10.32.0.0/12');
  assert.equal(formatRange({ start: c.start, end: c.start + 3 }), '10.32.0.0-10.32.0.2');
  assert.deepEqual(usableRange(parseCidr('10.0.0.0/24')), { start: parseAddr('10.0.0.1'), end: parseAddr('10.0.0.255') });
  assert.equal([...subnets(parseCidr('10.0.0.0/24'), 26)].length, 4);
  assert.equal(parseCidr('0.0.0.0/0').end, 2 ** 32);
  assert.equal(intersect({ start: 0, end: 5 }, { start: 5, end: 9 }), null);
});

test('ring: seed splits evenly, owner lookup, owned ranges', () => {
  const r = seeded(C, A, B);
  assert.deepEqual(r.seeds, [A, B, C]);
  assert.equal(r.ownerOf(R.start), A);
  assert.equal(r.ownerOf(R.end - 1), C);
  assert.equal(r.ownerOf(R.end), null);
  const shares = r.shares();
  assert.equal([...shares.values()].reduce((a, b) => a + b, 0), 1 << 20);
  for (const v of shares.values()) assert.ok(Math.abs(v - (1 << 20) / 3) <= 1);
  assert.equal(r.ownedRanges(B).length, 1);
});

test('ring: transfer splits, only the owner can give, merge carries it', () => {
  const a = seeded(A, B);
  const b = a.clone();
  const mid = R.start + (1 << 19);
  const give = { start: R.start + 100, end: R.start + 200 };
  a.transfer(A, C, 'c', give);
  assert.equal(a.ownerOf(R.start + 99), A);
  assert.equal(a.ownerOf(R.start + 100), C);
  assert.equal(a.ownerOf(R.start + 199), C);
  assert.equal(a.ownerOf(R.start + 200), A);
  assert.throws(() => a.transfer(A, C, 'c', { start: mid - 1, end: mid + 1 }), /owned by/);
  const res = b.merge(a);
  assert.equal(res.changed, true);
  assert.equal(res.conflict, null);
  assert.ok(b.equals(a));
  assert.equal(b.merge(a).changed, false);
});

test('ring: merge is commutative, idempotent, per-token highest version (property)', () => {
  fc.assert(fc.property(fc.array(fc.tuple(fc.nat(3), fc.nat(1000), fc.nat(1000)), { maxLength: 20 }), fc.nat(), (ops, split) => {
    const base = seeded(A, B);
    const x = base.clone();
    const y = base.clone();
    // apply owner-only operations to two replicas in turn, each valid in its own view
    ops.forEach(([who, s, len], i) => {
      const r = (i + split) % 2 ? x : y;
      const owner = who % 2 ? A : B;
      const own = r.ownedRanges(owner);
      if (!own.length) return;
      const o = own[s % own.length];
      const size = o.end - o.start;
      const st = o.start + (s % size);
      const en = Math.min(o.end, st + 1 + (len % 64));
      r.transfer(owner, who === 3 ? C : owner === A ? B : A, '', { start: st, end: en });
      // and gossip sometimes
      if (s % 3 === 0) (r === x ? y : x).merge(r);
    });
    const xy = x.clone();
    xy.merge(y);
    const yx = y.clone();
    yx.merge(x);
    assert.ok(xy.equals(yx), 'merge commutes');
    const again = xy.clone();
    assert.equal(again.merge(xy).changed, false);
    assert.ok(again.equals(xy));
  }), { seed: 42, numRuns: 300 });
});

test('ring: merge conflicts are reported, never thrown', () => {
  const a = seeded(A, B);
  const other = seeded(A, C);
  const res = a.merge(other);
  assert.equal(res.changed, false);
  assert.equal(res.conflict?.kind, 'seeds');
  const wrongRange = new Ring(parseCidr('10.0.0.0/8'));
  wrongRange.seed([{ name: A, nickname: '' }]);
  assert.equal(a.merge(wrongRange).conflict?.kind, 'range');
  // two claims of the same dead peer at the same version: deterministic winner on both sides
  const x = seeded(A, B, C);
  const y = x.clone();
  assert.equal(x.claim(C, A, 'a'), y.claim(C, B, 'b'));
  const xy = x.clone();
  const yx = y.clone();
  assert.equal(xy.merge(y).conflict?.kind, 'entry');
  assert.equal(yx.merge(x).conflict?.kind, 'entry');
  assert.ok(xy.equals(yx));
});

test('ring: claim takes a dead peer over with a version above its unseen updates', () => {
  const r = seeded(A, B);
  const n = r.claim(B, A, 'a');
  assert.equal(n, 1 << 19);
  assert.equal(r.ownerOf(R.end - 1), A);
  assert.equal(r.entries[1].version, CLAIM_BUMP);
  const stale = seeded(A, B);
  stale.updateFree(B, () => 5); // B's late update, version 1
  r.merge(stale);
  assert.equal(r.ownerOf(R.end - 1), A);
});

test('ring: encode/decode round trip', () => {
  const r = seeded(A, B, C);
  r.transfer(B, A, 'a', { start: R.start + (1 << 19), end: R.start + (1 << 19) + 10 });
  const d = Ring.decode(r.encode());
  assert.ok(d.equals(r));
  const g = decodeGossip(encodeGossip({ range: R, ring: r, paxos: null }));
  assert.ok(g.ring!.equals(r));
  const u = decodeUnicast(encodeUnicast({ k: 'req', subnet: { start: 1, end: 9 } }));
  assert.deepEqual(u, { k: 'req', subnet: { start: 1, end: 9 } });
});

test('ring/wire: malformed input → ProtocolError only (fuzzed)', () => {
  const p = new Packr({ useRecords: false, mapsAsObjects: true });
  const good = seeded(A, B).toWire();
  const onlyProtocol = (f: () => unknown) => {
    try {
      f();
    } catch (e) {
      assert.ok(e instanceof ProtocolError, `unexpected ${String(e)}`);
    }
  };
  fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
    onlyProtocol(() => Ring.decode(bytes));
    onlyProtocol(() => decodeGossip(bytes));
    onlyProtocol(() => decodeUnicast(bytes));
  }), { seed: 7, numRuns: 2000 });
  // structurally plausible but wrong objects
  fc.assert(fc.property(fc.anything(), fc.nat(4), (junk, k) => {
    const w: Record<string, unknown> = { ...good, e: [...good.e] };
    if (k === 0) w.range = junk;
    else if (k === 1) w.seeds = junk;
    else if (k === 2) (w.e as unknown[])[(JSON.stringify(junk) ?? '').length % 10] = junk;
    else if (k === 3) w.v = junk;
    else w.e = junk;
    onlyProtocol(() => Ring.decode(p.pack(w)));
    onlyProtocol(() => decodeGossip(p.pack({ v: 1, k: 'g', range: good.range, ring: w, px: k === 4 ? junk : undefined })));
    onlyProtocol(() => decodeUnicast(p.pack({ v: 1, k: k % 2 ? 'req' : 'donate', s: junk, ring: junk })));
  }), { seed: 8, numRuns: 2000 });
  // specific invariants the decoder must enforce
  const bad = (mut: (w: Record<string, unknown>) => void) => {
    const w: Record<string, unknown> = { ...good, e: [...good.e] };
    mut(w);
    assert.throws(() => Ring.decode(p.pack(w)), ProtocolError);
  };
  bad((w) => { (w.e as unknown[])[5] = (w.e as number[])[0]; }); // tokens not increasing
  bad((w) => { (w.e as unknown[])[0] = R.start + 1; }); // first token not at start
  bad((w) => { w.seeds = [B, A]; });
  bad((w) => { (w.e as unknown[])[3] = -1; });
  bad((w) => { (w.e as unknown[])[1] = 'not-a-peer'; });
  bad((w) => { w.v = 2; });
});

test('space: next-fit, free counts, largest free run', () => {
  const s = new Space();
  s.setOwned([{ start: 100, end: 110 }, { start: 200, end: 204 }]);
  const got: number[] = [];
  for (let i = 0; i < 14; i++) {
    const a = s.findFree({ start: 0, end: 1000 });
    assert.notEqual(a, null);
    s.take(a!, `c${i}`);
    got.push(a!);
  }
  assert.equal(new Set(got).size, 14);
  assert.equal(s.findFree({ start: 0, end: 1000 }), null);
  s.release(105);
  s.release(201);
  assert.equal(s.freeIn({ start: 0, end: 1000 }), 2);
  assert.equal(s.findFree({ start: 0, end: 1000 }), 105);
  s.release(106);
  s.release(107);
  assert.deepEqual(s.largestFreeRun({ start: 0, end: 1000 }), { start: 105, end: 108 });
  assert.equal(s.findFree({ start: 0, end: 1000 }, 'down'), 201);
  assert.throws(() => s.take(100, 'other'), /already allocated/);
  assert.deepEqual(s.setOwned([{ start: 100, end: 110 }]), [200, 202, 203]);
});

test('paxos: a quorum decides one value; a minority cannot', () => {
  const names = [A, B, C];
  const ps = names.map((n) => new Paxos(n, n.slice(-2), 2));
  const sync = (from: Paxos, to: Paxos) => {
    to.merge(from.nodes);
    to.think();
  };
  ps[2].propose();
  ps[2].think();
  assert.equal(ps[2].decision(), null);
  ps[0].propose(); // duelling proposer
  ps[0].think();
  for (let round = 0; round < 6; round++) for (const x of ps) for (const y of ps) if (x !== y) sync(x, y);
  const d = ps.map((p) => JSON.stringify(p.decision()));
  assert.notEqual(d[0], 'null');
  assert.ok(d.every((x) => x === d[0]), 'all decide the same value');
  // a lone peer with quorum 2 never decides
  const lone = new Paxos(A, 'a', 2);
  lone.propose();
  lone.think();
  assert.equal(lone.decision(), null);
});

test('subtractRanges: what is left of a range after cutting others out (property: nothing cut survives, nothing else is lost)', () => {
  assert.deepEqual(subtractRanges({ start: 0, end: 100 }, [{ start: 10, end: 20 }, { start: 90, end: 200 }]), [{ start: 0, end: 10 }, { start: 20, end: 90 }]);
  assert.deepEqual(subtractRanges({ start: 0, end: 100 }, [{ start: 0, end: 100 }]), []);
  fc.assert(fc.property(fc.integer({ min: 0, max: 200 }), fc.integer({ min: 1, max: 200 }), fc.array(fc.tuple(fc.integer({ min: 0, max: 400 }), fc.integer({ min: 1, max: 100 })), { maxLength: 6 }), (s, len, cuts) => {
    const r = { start: s, end: s + len };
    const cut = cuts.map(([a, l]) => ({ start: a, end: a + l }));
    const left = subtractRanges(r, cut);
    for (let a = r.start; a < r.end; a++) {
      const inCut = cut.some((c) => a >= c.start && a < c.end);
      const inLeft = left.some((p) => a >= p.start && a < p.end);
      assert.equal(inLeft, !inCut, `address ${a}`);
    }
    assert.ok(left.every((p) => p.start < p.end));
  }), { seed: 7, numRuns: 300 });
});
