// Forwarding table: IPv4 prefix -> peer id, longest-prefix match. Lookups run per packet, so the
// table is a binary trie in typed arrays: a lookup walks at most 32 nodes and allocates nothing.
// The table is immutable once built; a change of announcements builds a new one (they are rare).
// Prefixes are lib/addr's Cidr (parsed there; host bits are never kept in a Cidr).
import { WeaveError } from '../lib/errors';
import type { Cidr } from '../lib/addr';

export const NO_PEER = -1;

const MEMO = 256; // a power of two

export class ForwardingTable {
  // node i: children at 2i / 2i+1 of kids, value at vals[i] (NO_PEER when no prefix ends here)
  private kids: Int32Array;
  private vals: Int32Array;
  private nodes = 1;
  readonly size: number;

  /** entries: prefix -> peer id (>= 0). On duplicate prefixes the later entry wins. */
  constructor(entries: Iterable<{ prefix: Cidr; peer: number }> = []) {
    const list = [...entries];
    const cap = Math.max(2, list.length * 33 + 1);
    this.kids = new Int32Array(cap * 2);
    this.vals = new Int32Array(cap).fill(NO_PEER);
    for (const e of list) this.insert(e.prefix, e.peer);
    this.size = list.length;
  }

  private insert(p: Cidr, peer: number): void {
    if (!(peer >= 0)) throw new WeaveError('EINVAL', 'forwarding table: peer id must be >= 0', { peer });
    let n = 0;
    for (let i = 0; i < p.prefixLen; i++) {
      const bit = (p.start >>> (31 - i)) & 1;
      const k = 2 * n + bit;
      let c = this.kids[k];
      if (c === 0) {
        c = this.nodes++;
        this.kids[k] = c;
      }
      n = c;
    }
    this.vals[n] = peer;
  }

  // Answers of recent lookups, direct-mapped by address: a walk to a /32 takes 32 steps (~145 ns in
  // V8 here), and a batch is mostly packets of a few flows. The table never changes after
  // construction, so an answer stays valid.
  private readonly memoAddr = new Int32Array(MEMO);
  private readonly memoPeer = new Int32Array(MEMO);
  private readonly memoSet = new Uint8Array(MEMO);

  /** Longest-prefix match of a host-order u32 address: the peer id, or NO_PEER. */
  lookup(addr: number): number {
    const key = addr | 0;
    const i = (key ^ (key >>> 8) ^ (key >>> 16)) & (MEMO - 1);
    if (this.memoSet[i] === 1 && this.memoAddr[i] === key) return this.memoPeer[i];
    const best = this.walk(addr);
    this.memoAddr[i] = key;
    this.memoPeer[i] = best;
    this.memoSet[i] = 1;
    return best;
  }

  private walk(addr: number): number {
    const kids = this.kids;
    const vals = this.vals;
    let best = vals[0];
    let n = 0;
    for (let i = 31; i >= 0; i--) {
      n = kids[2 * n + ((addr >>> i) & 1)];
      if (n === 0) break;
      const v = vals[n];
      if (v !== NO_PEER) best = v;
    }
    return best;
  }
}
