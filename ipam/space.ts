// Per-peer bookkeeping inside the ranges this peer owns: which addresses are allocated (to which
// container ident), which are free, and the largest free run (what a donor gives away).
// The owned ranges come from the ring; this class never decides ownership. Reserved addresses are
// held by containers of other peers (reported after a merge repair): never free here, whoever owns them.
import { formatAddr, intersect, type Addr, type Range } from './addr';
import { WeaveError } from '../lib/errors';

export class Space {
  private owned: Range[] = [];
  private readonly allocated = new Map<Addr, string>();
  private reserved = new Set<Addr>();
  /** allocated and reserved addresses, sorted (cached) */
  private sorted: Addr[] | null = [];
  // Next-fit cursors: allocation continues after the last address handed out instead of rescanning
  // from the bottom each time (linear in allocations otherwise) and freed addresses are not reused
  // at once (stale ARP/DNS entries for a just-removed container).
  private cursorUp = -1;
  private cursorDown = -1;

  /** Where next-fit starts when nothing was allocated yet (see Allocator for why). */
  startAt(a: Addr): void {
    if (this.cursorUp < 0) this.cursorUp = a - 1;
  }

  /** Replaces the owned ranges (sorted, disjoint). Returns allocated addresses no longer owned. */
  setOwned(ranges: Range[]): Addr[] {
    this.owned = ranges.map((r) => ({ start: r.start, end: r.end })).sort((a, b) => a.start - b.start);
    const lost: Addr[] = [];
    for (const a of this.allocated.keys()) if (!this.owns(a)) lost.push(a);
    return lost;
  }

  ownedRanges(): Range[] {
    return this.owned.map((r) => ({ ...r }));
  }

  ownedSize(): number {
    let n = 0;
    for (const r of this.owned) n += r.end - r.start;
    return n;
  }

  owns(a: Addr): boolean {
    let lo = 0;
    let hi = this.owned.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = this.owned[mid];
      if (a < r.start) hi = mid - 1;
      else if (a >= r.end) lo = mid + 1;
      else return true;
    }
    return false;
  }

  /** Replaces the reserved set (addresses other peers' containers hold). */
  setReserved(addrs: Iterable<Addr>): void {
    this.reserved = new Set(addrs);
    this.sorted = null;
  }

  isReserved(a: Addr): boolean {
    return this.reserved.has(a);
  }

  holder(a: Addr): string | undefined {
    return this.allocated.get(a);
  }

  get allocatedCount(): number {
    return this.allocated.size;
  }

  /** Records an allocation. The address must be owned; it may be held by nobody or by ident already. */
  take(a: Addr, ident: string): void {
    const h = this.allocated.get(a);
    if (h !== undefined && h !== ident) throw new WeaveError('EINUSE', `address ${formatAddr(a)} is already allocated to ${h}`, { addr: formatAddr(a), holder: h });
    this.allocated.set(a, ident);
    this.sorted = null;
  }

  /** Records an allocation loaded from disk even where we no longer own (kept so it is reported). */
  restore(a: Addr, ident: string): void {
    this.allocated.set(a, ident);
    this.sorted = null;
  }

  release(a: Addr): boolean {
    const had = this.allocated.delete(a);
    if (had) this.sorted = null;
    return had;
  }

  /**
   * A free owned address inside `within`, next-fit upward (or downward, used to stay away from a
   * conflicting ring's allocations), or null when there is none.
   */
  findFree(within: Range, direction: 'up' | 'down' = 'up', avoid?: (a: Addr) => boolean): Addr | null {
    const taken = (a: Addr) => this.allocated.has(a) || this.reserved.has(a) || (avoid !== undefined && avoid(a));
    const parts: Range[] = [];
    for (const r of this.owned) {
      const x = intersect(r, within);
      if (x) parts.push(x);
    }
    if (parts.length === 0) return null;
    if (direction === 'up') {
      // first pass from the cursor, second from the bottom up to the cursor
      for (const pass of [0, 1]) {
        for (const p of parts) {
          const from = pass === 0 ? Math.max(p.start, this.cursorUp + 1) : p.start;
          const to = pass === 0 ? p.end : Math.min(p.end, this.cursorUp + 1);
          for (let a = from; a < to; a++) {
            if (!taken(a)) {
              this.cursorUp = a;
              return a;
            }
          }
        }
      }
    } else {
      const cur = this.cursorDown < 0 ? Infinity : this.cursorDown;
      for (const pass of [0, 1]) {
        for (let k = parts.length - 1; k >= 0; k--) {
          const p = parts[k];
          const from = pass === 0 ? Math.min(p.end - 1, cur - 1) : p.end - 1;
          const to = pass === 0 ? p.start : Math.max(p.start, cur);
          for (let a = from; a >= to; a--) {
            if (!taken(a)) {
              this.cursorDown = a;
              return a;
            }
          }
        }
      }
    }
    return null;
  }

  private sortedAllocated(): Addr[] {
    if (!this.sorted) this.sorted = [...new Set([...this.allocated.keys(), ...this.reserved])].sort((a, b) => a - b);
    return this.sorted;
  }

  private countAllocatedIn(r: Range): number {
    const s = this.sortedAllocated();
    return lowerBound(s, r.end) - lowerBound(s, r.start);
  }

  /** Free (owned, unallocated) addresses inside r. */
  freeIn(r: Range): number {
    let n = 0;
    for (const o of this.owned) {
      const x = intersect(o, r);
      if (x) n += x.end - x.start - this.countAllocatedIn(x);
    }
    return n;
  }

  /** The largest run of owned, unallocated addresses inside within (first one on ties). */
  largestFreeRun(within: Range): Range | null {
    const s = this.sortedAllocated();
    let best: Range | null = null;
    for (const o of this.owned) {
      const x = intersect(o, within);
      if (!x) continue;
      let at = x.start;
      for (let k = lowerBound(s, x.start); k <= s.length; k++) {
        const stop = k < s.length && s[k] < x.end ? s[k] : x.end;
        if (stop > at && (!best || stop - at > best.end - best.start)) best = { start: at, end: stop };
        if (stop === x.end) break;
        at = stop + 1;
      }
    }
    return best;
  }

  /** Every allocation inside r (for handing over or reporting). */
  allocationsIn(r: Range): Array<[Addr, string]> {
    const out: Array<[Addr, string]> = [];
    for (const [a, id] of this.allocated) if (a >= r.start && a < r.end) out.push([a, id]);
    return out;
  }

  entries(): IterableIterator<[Addr, string]> {
    return this.allocated.entries();
  }
}

function lowerBound(s: Addr[], x: Addr): number {
  let lo = 0;
  let hi = s.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (s[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
