import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Routes, bfsParents, broadcastChildren, unicastTable, type Adjacency } from '../../mesh/routes';

function graph(edges: Array<[string, string]>, nodes: string[] = []): Adjacency {
  const adj: Adjacency = new Map();
  for (const n of nodes) adj.set(n, []);
  for (const [a, b] of edges) {
    if (!adj.has(a)) adj.set(a, []);
    if (!adj.has(b)) adj.set(b, []);
    adj.get(a)!.push(b);
    adj.get(b)!.push(a);
  }
  for (const l of adj.values()) l.sort();
  return adj;
}

test('unicast: line graph next hops', () => {
  const adj = graph([['a', 'b'], ['b', 'c'], ['c', 'd']]);
  const t = unicastTable(adj, 'a');
  assert.deepEqual([...t].sort(), [['b', 'b'], ['c', 'b'], ['d', 'b']]);
  assert.deepEqual([...unicastTable(adj, 'c')].sort(), [['a', 'b'], ['b', 'b'], ['d', 'd']]);
});

test('unicast: equal-length paths are broken by name, so every peer picks the same', () => {
  // square a-b-d-c-a: a reaches d via b (lower name than c)
  const adj = graph([['a', 'c'], ['a', 'b'], ['b', 'd'], ['c', 'd']]);
  assert.equal(unicastTable(adj, 'a').get('d'), 'b');
  assert.equal(unicastTable(adj, 'd').get('a'), 'b');
  assert.equal(unicastTable(adj, 'b').get('c'), 'a');
});

test('unreachable destinations have no route', () => {
  const adj = graph([['a', 'b']], ['c']);
  assert.equal(unicastTable(adj, 'a').get('c'), undefined);
  const r = new Routes('a');
  assert.equal(r.update(adj), true);
  assert.equal(r.update(graph([['a', 'b']], ['c'])), false);
  assert.deepEqual(r.reachable().sort(), ['a', 'b']);
  assert.deepEqual(r.broadcastNextHops('c'), []);
});

test('broadcast children on a tree', () => {
  const adj = graph([['a', 'b'], ['a', 'c'], ['b', 'd'], ['b', 'e']]);
  assert.deepEqual(broadcastChildren(adj, 'a', 'a'), ['b', 'c']);
  assert.deepEqual(broadcastChildren(adj, 'a', 'b'), ['d', 'e']);
  assert.deepEqual(broadcastChildren(adj, 'd', 'b'), ['a', 'e']);
  assert.deepEqual(broadcastChildren(adj, 'd', 'a'), ['c']);
  assert.deepEqual(broadcastChildren(adj, 'a', 'e'), []);
});

/** Random connected graph: a random spanning tree plus extra edges. */
const connectedGraph = fc
  .integer({ min: 1, max: 40 })
  .chain((n) =>
    fc.tuple(
      fc.constant(n),
      fc.array(fc.nat(), { minLength: n, maxLength: n }),
      fc.array(fc.tuple(fc.nat(n - 1), fc.nat(n - 1)), { maxLength: 3 * n }),
    ),
  )
  .map(([n, parents, extra]) => {
    const name = (i: number) => `p${String(i).padStart(3, '0')}`;
    const edges = new Set<string>();
    const list: Array<[string, string]> = [];
    const add = (a: number, b: number) => {
      if (a === b) return;
      const k = a < b ? `${a}-${b}` : `${b}-${a}`;
      if (edges.has(k)) return;
      edges.add(k);
      list.push([name(a), name(b)]);
    };
    for (let i = 1; i < n; i++) add(i, parents[i] % i);
    for (const [a, b] of extra) add(a, b);
    return { nodes: Array.from({ length: n }, (_, i) => name(i)), adj: graph(list, [name(0)]) };
  });

test('property: following unicast next hops reaches every destination along a shortest path', () => {
  fc.assert(
    fc.property(connectedGraph, ({ nodes, adj }) => {
      const tables = new Map(nodes.map((n) => [n, unicastTable(adj, n)]));
      for (const src of nodes) {
        const parents = bfsParents(adj, src);
        assert.equal(parents.size, nodes.length);
        for (const dst of nodes) {
          if (dst === src) continue;
          let at = src;
          let hops = 0;
          while (at !== dst) {
            const next = tables.get(at)!.get(dst);
            assert.ok(next !== undefined, `no route ${at} -> ${dst}`);
            assert.ok(adj.get(at)!.includes(next), 'next hop must be a neighbour');
            at = next;
            hops++;
            assert.ok(hops <= nodes.length, 'routing loop');
          }
          // shortest: equals BFS depth of dst from src
          let depth = 0;
          for (let x = dst; x !== src; x = parents.get(x)!) depth++;
          assert.equal(hops, depth);
        }
      }
    }),
    { seed: 1234, numRuns: 100 },
  );
});

test('property: a broadcast along the trees reaches every peer exactly once', () => {
  fc.assert(
    fc.property(connectedGraph, ({ nodes, adj }) => {
      for (const src of nodes) {
        const received = new Map<string, number>([[src, 1]]);
        const queue = [src];
        while (queue.length) {
          const at = queue.shift()!;
          for (const next of broadcastChildren(adj, src, at)) {
            received.set(next, (received.get(next) ?? 0) + 1);
            queue.push(next);
          }
        }
        assert.equal(received.size, nodes.length);
        for (const [n, k] of received) assert.equal(k, 1, `${n} received ${k} copies of ${src}'s broadcast`);
      }
    }),
    { seed: 4321, numRuns: 100 },
  );
});

/** The definition: self's neighbours whose BFS parent (tree rooted at src) is self. */
function childrenByBfs(adj: Adjacency, src: string, self: string): string[] {
  const parent = bfsParents(adj, src);
  if (!parent.has(self)) return [];
  return (adj.get(self) ?? []).filter((m) => m !== src && parent.get(m) === self);
}

test('property: broadcast children without a BFS equal those of the BFS tree, for every src and self', () => {
  // sparse and dense graphs, some not connected (a second component without a path to node 0)
  const graphs = fc
    .tuple(fc.integer({ min: 1, max: 30 }), fc.integer({ min: 0, max: 100 }))
    .chain(([n, density]) =>
      fc.tuple(fc.constant(n), fc.array(fc.tuple(fc.nat(n - 1), fc.nat(n - 1), fc.integer({ min: 0, max: 99 })), { maxLength: n * n })).map(([k, pairs]) => {
        const name = (i: number) => `p${String(i).padStart(3, '0')}`;
        const seen = new Set<string>();
        const edges: Array<[string, string]> = [];
        for (const [a, b, r] of pairs) {
          const key = a < b ? `${a}-${b}` : `${b}-${a}`;
          if (a === b || r >= density || seen.has(key)) continue;
          seen.add(key);
          edges.push([name(a), name(b)]);
        }
        return { nodes: Array.from({ length: k }, (_, i) => name(i)), adj: graph(edges, Array.from({ length: k }, (_, i) => name(i))) };
      }),
    );
  fc.assert(
    fc.property(graphs, ({ nodes, adj }) => {
      for (const src of [...nodes, 'zz:unknown'])
        for (const self of [...nodes, 'zz:unknown']) assert.deepEqual(broadcastChildren(adj, src, self), childrenByBfs(adj, src, self), `src ${src} self ${self}`);
    }),
    { seed: 99, numRuns: 200 },
  );
});

test('full mesh: the source sends to everyone, nobody relays', () => {
  const names = Array.from({ length: 50 }, (_, i) => `n${String(i).padStart(2, '0')}`);
  const edges: Array<[string, string]> = [];
  for (let i = 0; i < names.length; i++) for (let j = i + 1; j < names.length; j++) edges.push([names[i], names[j]]);
  const adj = graph(edges);
  assert.deepEqual(broadcastChildren(adj, 'n07', 'n07'), names.filter((n) => n !== 'n07'));
  for (const self of names) if (self !== 'n07') assert.deepEqual(broadcastChildren(adj, 'n07', self), []);
});

test('an update with the same adjacency keeps the trees computed; a changed one recomputes them', () => {
  const r = new Routes('b');
  r.update(graph([['a', 'b'], ['b', 'c'], ['c', 'd']]));
  const before = r.broadcastNextHops('a');
  assert.deepEqual(before, ['c']);
  // a fresh but equal map, as the mesh builds on each recompute
  assert.equal(r.update(graph([['a', 'b'], ['b', 'c'], ['c', 'd']])), false);
  assert.equal(r.broadcastNextHops('a'), before, 'same array: the cache survived');
  // b's unicast table is unchanged here but a's tree is not: the cache must still go
  assert.equal(r.update(graph([['a', 'b'], ['b', 'c'], ['c', 'd'], ['a', 'c']])), false);
  assert.deepEqual(r.broadcastNextHops('a'), []);
  assert.equal(r.update(graph([['a', 'b'], ['b', 'c'], ['c', 'd'], ['a', 'c'], ['b', 'd']])), true);
  assert.deepEqual(r.broadcastNextHops('a'), ['d']);
});
