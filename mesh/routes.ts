// Routes over the symmetric established graph. Everything here is a pure function of the adjacency
// (neighbour lists sorted by name), so peers holding the same topology compute the same tables:
// BFS visits neighbours in name order and the first discoverer of a node is its parent. Following
// unicast next hops strictly shortens the BFS distance at each hop, so there are no loops; a
// broadcast from src follows the BFS tree rooted at src, so in a stable topology each peer gets it
// exactly once.
//
// Cost: a forming mesh of N routers recomputes often (mesh.ts paces it: at most every 5 ms per peer)
// and each router relays broadcasts from N sources, so a BFS per source per update was O(N^3) per
// router. Where self is src or one of
// its neighbours (every peer, in a full mesh) its children follow from the neighbour lists of src,
// self and self's neighbours alone; the BFS runs only for peers further from src, and an update whose
// adjacency is unchanged keeps the trees already computed.
import type { PeerName } from './peer';

export type Adjacency = Map<PeerName, PeerName[]>;

/** BFS from root: parent of each reached node (root maps to itself). */
export function bfsParents(adj: Adjacency, root: PeerName): Map<PeerName, PeerName> {
  const parent = new Map<PeerName, PeerName>([[root, root]]);
  if (!adj.has(root)) return parent;
  const queue: PeerName[] = [root];
  for (let i = 0; i < queue.length; i++) {
    const n = queue[i];
    for (const m of adj.get(n) ?? []) {
      if (!parent.has(m)) {
        parent.set(m, n);
        queue.push(m);
      }
    }
  }
  return parent;
}

/** Unicast table of `self`: destination -> first hop, for every reachable destination but self. */
export function unicastTable(adj: Adjacency, self: PeerName): Map<PeerName, PeerName> {
  const firstHop = new Map<PeerName, PeerName>();
  if (!adj.has(self)) return firstHop;
  const queue: PeerName[] = [self];
  const seen = new Set<PeerName>([self]);
  for (let i = 0; i < queue.length; i++) {
    const n = queue[i];
    for (const m of adj.get(n) ?? []) {
      if (seen.has(m)) continue;
      seen.add(m);
      firstHop.set(m, n === self ? m : firstHop.get(n)!);
      queue.push(m);
    }
  }
  return firstHop;
}

/** Children of `self` in the broadcast tree rooted at src: where self forwards src's broadcasts. */
export function broadcastChildren(adj: Adjacency, src: PeerName, self: PeerName): PeerName[] {
  const mine = adj.get(self);
  if (!mine || !adj.has(src)) return [];
  if (self === src) return [...mine];
  const top = adj.get(src)!;
  // BFS order of level 1 is src's list order: a level-2 node's parent is its earliest level-1 neighbour
  const order = new Map<PeerName, number>();
  for (let i = 0; i < top.length; i++) order.set(top[i], i);
  const at = order.get(self);
  if (at === undefined) return bfsChildren(adj, src, self, mine);
  const out: PeerName[] = [];
  for (const m of mine) {
    if (m === src || order.has(m)) continue;
    // the adjacency is symmetric (topology.ts keeps a connection only when both ends list it), so
    // m's own list names every level-1 peer that discovers it
    let earlier = false;
    for (const x of adj.get(m) ?? []) {
      const i = order.get(x);
      if (i !== undefined && i < at) {
        earlier = true;
        break;
      }
    }
    if (!earlier) out.push(m);
  }
  return out;
}

function bfsChildren(adj: Adjacency, src: PeerName, self: PeerName, mine: PeerName[]): PeerName[] {
  const parent = bfsParents(adj, src);
  if (!parent.has(self)) return [];
  const out: PeerName[] = [];
  for (const m of mine) if (m !== src && parent.get(m) === self) out.push(m);
  return out;
}

/** One peer's routing state, replaced wholesale on each recompute. */
export class Routes {
  private adj: Adjacency = new Map();
  private unicast = new Map<PeerName, PeerName>();
  private readonly broadcastCache = new Map<PeerName, PeerName[]>();

  constructor(readonly self: PeerName) {}

  /** Installs a new adjacency; returns whether the unicast table changed. */
  update(adj: Adjacency): boolean {
    // the mesh recomputes on every topology gossip, most of which leaves the graph as it was
    if (sameAdjacency(adj, this.adj)) {
      this.adj = adj;
      return false;
    }
    this.adj = adj;
    this.broadcastCache.clear();
    const next = unicastTable(adj, this.self);
    const changed = !sameMap(next, this.unicast);
    this.unicast = next;
    return changed;
  }

  unicastNextHop(dst: PeerName): PeerName | undefined {
    return this.unicast.get(dst);
  }

  /** Per-source tree, computed on first use after each change of the adjacency. */
  broadcastNextHops(src: PeerName): PeerName[] {
    let hops = this.broadcastCache.get(src);
    if (!hops) {
      hops = broadcastChildren(this.adj, src, this.self);
      this.broadcastCache.set(src, hops);
    }
    return hops;
  }

  table(): Map<PeerName, PeerName> {
    return this.unicast;
  }

  /** Peers reachable over the graph, including self. */
  reachable(): PeerName[] {
    return [this.self, ...this.unicast.keys()];
  }
}

function sameMap(a: Map<PeerName, PeerName>, b: Map<PeerName, PeerName>): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) if (b.get(k) !== v) return false;
  return true;
}

function sameAdjacency(a: Adjacency, b: Adjacency): boolean {
  if (a.size !== b.size) return false;
  for (const [k, la] of a) {
    const lb = b.get(k);
    if (!lb || lb.length !== la.length) return false;
    for (let i = 0; i < la.length; i++) if (la[i] !== lb[i]) return false;
  }
  return true;
}
