import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { ForwardingTable, NO_PEER } from '../../router/forwarding';
import { cidrOf, formatAddr, formatCidr, maskOf, parseAddr, parseCidr, tryParseCidr } from '../../lib/addr';

// Announced prefixes may be bare addresses (/32) and carry host bits (dropped): router/prefixes.ts's spelling.
const parsePrefix = (s: string) => parseCidr(s, { allowBare: true, allowHostBits: true });

test('parses and formats prefixes, clearing host bits', () => {
  assert.deepEqual(parsePrefix('10.32.1.7/24'), { start: parseAddr('10.32.1.0'), end: parseAddr('10.32.2.0'), prefixLen: 24 });
  assert.equal(formatCidr(parsePrefix('10.32.1.7')), '10.32.1.7/32');
  assert.equal(formatCidr(parsePrefix('0.0.0.0/0')), '0.0.0.0/0');
  for (const bad of ['10.1.1/24', '10.1.1.1/33', '256.1.1.1', '01.1.1.1', '1.1.1.1/', 'x']) assert.equal(tryParseCidr(bad, { allowBare: true, allowHostBits: true }), undefined, bad);
  assert.throws(() => parsePrefix('nope'), { code: 'EUSAGE' });
  assert.equal(formatAddr(parseAddr('198.18.255.1')), '198.18.255.1');
});

test('longest prefix wins; default route; miss', () => {
  const t = new ForwardingTable([
    { prefix: parsePrefix('10.32.0.0/12'), peer: 1 },
    { prefix: parsePrefix('10.32.5.0/24'), peer: 2 },
    { prefix: parsePrefix('10.32.5.9/32'), peer: 3 },
  ]);
  assert.equal(t.lookup(parseAddr('10.32.5.9')), 3);
  assert.equal(t.lookup(parseAddr('10.32.5.10')), 2);
  assert.equal(t.lookup(parseAddr('10.33.0.1')), 1);
  assert.equal(t.lookup(parseAddr('10.48.0.1')), NO_PEER);
  const d = new ForwardingTable([{ prefix: parsePrefix('0.0.0.0/0'), peer: 7 }]);
  assert.equal(d.lookup(parseAddr('1.2.3.4')), 7);
  assert.equal(new ForwardingTable().lookup(0), NO_PEER);
});

test('the memo of recent lookups answers repeats, colliding and high addresses like a fresh table', () => {
  const entries = [
    { prefix: parsePrefix('200.1.0.0/16'), peer: 4 },
    { prefix: parsePrefix('200.1.1.1/32'), peer: 5 },
    { prefix: parsePrefix('10.32.0.0/12'), peer: 1 },
  ];
  const t = new ForwardingTable(entries);
  const seq = ['200.1.1.1', '200.1.1.1', '200.1.1.2', '200.1.1.1', '10.32.0.1', '10.32.0.1', '9.9.9.9', '9.9.9.9', '0.0.0.0', '200.1.1.1', '255.255.255.255'];
  for (const a of seq) assert.equal(t.lookup(parseAddr(a)), new ForwardingTable(entries).lookup(parseAddr(a)), a);
  // many flows: 5000 addresses, each looked up twice in a shuffled order, share 256 memo slots
  const addrs = Array.from({ length: 5000 }, (_, i) => (parseAddr('200.0.0.0') + i * 7919) >>> 0);
  const order = [...addrs, ...addrs].sort((x, y) => ((x * 2654435761) >>> 0) - ((y * 2654435761) >>> 0));
  for (const a of order) assert.equal(t.lookup(a), new ForwardingTable(entries).lookup(a), formatAddr(a));
  // 0.0.0.0 first: the memo must not take its initial zero for a cached answer
  const z = new ForwardingTable([{ prefix: parsePrefix('0.0.0.0/32'), peer: 9 }]);
  assert.equal(z.lookup(0), 9);
  assert.equal(z.lookup(1), NO_PEER);
  assert.equal(z.lookup(0), 9);
});

test('random prefixes vs a brute-force oracle', () => {
  const prefixArb = fc.record({ addr: fc.integer({ min: 0, max: 0xffffffff }), len: fc.integer({ min: 0, max: 32 }), peer: fc.integer({ min: 0, max: 50 }) });
  fc.assert(
    fc.property(fc.array(prefixArb, { maxLength: 60 }), fc.array(fc.integer({ min: 0, max: 0xffffffff }), { minLength: 1, maxLength: 60 }), (ps, addrs) => {
      const entries = ps.map((p) => ({ prefix: cidrOf(p.addr, p.len), peer: p.peer }));
      const t = new ForwardingTable(entries);
      // probe random addresses plus addresses inside each prefix
      const probes = [...addrs, ...entries.map((e) => (e.prefix.start | (addrs[0] & ~maskOf(e.prefix.prefixLen))) >>> 0)];
      for (const a of probes) {
        let best = NO_PEER;
        let bestLen = -1;
        for (const e of entries) {
          if (((a & maskOf(e.prefix.prefixLen)) >>> 0) === e.prefix.start && e.prefix.prefixLen >= bestLen) {
            best = e.peer; // later duplicates win, like the table
            bestLen = e.prefix.prefixLen;
          }
        }
        assert.equal(t.lookup(a), best, `lookup ${formatAddr(a)}`);
      }
    }),
    { numRuns: 300 },
  );
});

test('lookup allocates nothing measurable', () => {
  const entries = Array.from({ length: 1000 }, (_, i) => ({ prefix: cidrOf(((10 << 24) | (i << 8)) >>> 0, 24), peer: i }));
  const t = new ForwardingTable(entries);
  for (let i = 0; i < 1e5; i++) t.lookup(((10 << 24) | i) >>> 0); // warm up / optimise
  global.gc?.();
  const before = process.memoryUsage().heapUsed;
  let acc = 0;
  for (let i = 0; i < 1e6; i++) acc += t.lookup(((10 << 24) | (i & 0xfffff)) >>> 0);
  const grown = process.memoryUsage().heapUsed - before;
  assert.ok(acc !== 0);
  // a per-lookup allocation of even 16 bytes would add 16 MB here
  assert.ok(grown < 4 * 1024 * 1024, `heap grew ${grown} bytes over 1e6 lookups`);
});
