// The IPAM ring, modelled on Weave Net's: the allocation range is cut at tokens (start addresses);
// entry i owns [token_i, token_i+1) (the last one up to the end of the range). Each entry carries
// its owner and a version. Rules that make it a CRDT without coordination:
//  - only an entry's owner edits it (donate, update free count) and bumps its version when it does;
//    the one exception is claim() (rmpeer), which takes a dead owner's entries with a large bump;
//  - new tokens are created only by the owner of the range they split, and tokens are never
//    deleted, so every token has one linear history;
//  - merge = union of tokens, per token the highest version wins. Equal versions with different
//    content can only come from an operator error (rmpeer of a live peer, two rmpeers) and are
//    resolved deterministically and counted as conflicts;
//  - a ring also records the peers that seeded it. Two rings seeded differently (two meshes that
//    each ran their own consensus) cannot be merged entry by entry: merge refuses and reports it,
//    and the allocator repairs it: the ring whose seed list sorts lower (compareSeeds) wins, the
//    peers of the other ring adopt it and get back the addresses they hold from the new owners.
import { ProtocolError, describeValue, WeaveError } from '../lib/errors';
import { isPeerName, type PeerName } from '../mesh/peer';
import { decodeMsg, encodeMsg } from '../mesh/codec';
import { contains, formatAddr, isAddr, type Addr, type Range } from '../lib/addr';
import { formatRange } from './addr';

export interface RingEntry {
  token: Addr;
  peer: PeerName;
  nickname: string;
  version: number;
  /** free addresses in this entry's range, as last reported by its owner (a hint for donors) */
  free: number;
}

export interface MergeResult {
  changed: boolean;
  /** 'range' and 'seeds' conflicts mean nothing was merged */
  conflict: null | { kind: 'range' | 'seeds' | 'entry'; detail: string; count: number };
}

/**
 * Version bump of a claim (rmpeer). A dead peer may have made updates that the claimant has not
 * seen yet (still travelling in other peers' gossip); a +1 would then tie or lose against them.
 */
export const CLAIM_BUMP = 1 << 20;

const MAX_NICK = 255;
const MAX_ENTRIES = 1 << 20;

export class Ring {
  readonly range: Range;
  /** sorted peer names that seeded the ring; empty until seeded */
  seeds: PeerName[] = [];
  /** sorted by token; when seeded the first token is range.start */
  entries: RingEntry[] = [];

  constructor(range: Range) {
    if (!(range.start < range.end)) throw new WeaveError('ERANGE', `empty IPAM range ${formatAddr(range.start)}-${formatAddr(range.end)}`);
    this.range = { start: range.start, end: range.end };
  }

  isEmpty(): boolean {
    return this.entries.length === 0;
  }

  clone(): Ring {
    const r = new Ring(this.range);
    r.seeds = this.seeds.slice();
    r.entries = this.entries.map((e) => ({ ...e }));
    return r;
  }

  /** Splits the range evenly among peers (sorted by name), so every peer computes the same ring. */
  seed(peers: Array<{ name: PeerName; nickname: string }>): void {
    if (!this.isEmpty()) throw new WeaveError('ESEEDED', 'ring already seeded', { seeds: this.seeds });
    const sorted = [...new Map(peers.map((p) => [p.name, p])).values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    if (sorted.length === 0) throw new WeaveError('ESEED', 'cannot seed the ring with no peers');
    const size = this.range.end - this.range.start;
    if (sorted.length > size) throw new WeaveError('ESEED', `cannot split ${size} addresses among ${sorted.length} peers`);
    this.seeds = sorted.map((p) => p.name);
    this.entries = sorted.map((p, i) => {
      const token = this.range.start + Math.floor((i * size) / sorted.length);
      const next = this.range.start + Math.floor(((i + 1) * size) / sorted.length);
      return { token, peer: p.name, nickname: p.nickname, version: 0, free: next - token };
    });
  }

  /** Index of the entry owning addr, or -1 when not seeded or addr is outside the range. */
  indexOf(addr: Addr): number {
    if (this.entries.length === 0 || !contains(this.range, addr)) return -1;
    let lo = 0;
    let hi = this.entries.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.entries[mid].token <= addr) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  ownerOf(addr: Addr): PeerName | null {
    const i = this.indexOf(addr);
    return i < 0 ? null : this.entries[i].peer;
  }

  entryRange(i: number): Range {
    const end = i + 1 < this.entries.length ? this.entries[i + 1].token : this.range.end;
    return { start: this.entries[i].token, end };
  }

  /** The ranges peer owns, adjacent entries coalesced, in address order. */
  ownedRanges(peer: PeerName): Range[] {
    const out: Range[] = [];
    for (let i = 0; i < this.entries.length; i++) {
      if (this.entries[i].peer !== peer) continue;
      const r = this.entryRange(i);
      const last = out[out.length - 1];
      if (last && last.end === r.start) last.end = r.end;
      else out.push(r);
    }
    return out;
  }

  /** Address count per owner. */
  shares(): Map<PeerName, number> {
    const m = new Map<PeerName, number>();
    for (let i = 0; i < this.entries.length; i++) {
      const r = this.entryRange(i);
      m.set(this.entries[i].peer, (m.get(this.entries[i].peer) ?? 0) + r.end - r.start);
    }
    return m;
  }

  private splitAt(token: Addr): number {
    const i = this.indexOf(token);
    if (i < 0) throw new WeaveError('ERANGE', `address ${formatAddr(token)} is outside the ring`);
    if (this.entries[i].token === token) return i;
    const e = this.entries[i];
    // The new token inherits the owner; version 0 is safe because only that owner can create it.
    const ne: RingEntry = { token, peer: e.peer, nickname: e.nickname, version: 0, free: 0 };
    this.entries.splice(i + 1, 0, ne);
    return i + 1;
  }

  /**
   * Donation: from (who must own all of r) gives r to `to`. Called only by `from` itself (owner-only
   * edits); the caller gossips the result.
   */
  transfer(from: PeerName, to: PeerName, toNickname: string, r: Range): void {
    if (!(r.start < r.end) || r.start < this.range.start || r.end > this.range.end) {
      throw new WeaveError('ERANGE', `cannot transfer ${formatAddr(r.start)}-${formatAddr(r.end)}: not inside the ring range`);
    }
    for (let i = this.indexOf(r.start); i < this.entries.length && this.entries[i].token < r.end; i++) {
      if (this.entries[i].peer !== from) {
        throw new WeaveError('ENOTOWNER', `cannot transfer ${formatRange(r)}: ${formatRange(this.entryRange(i))} is owned by ${this.entries[i].peer}, not ${from}`);
      }
    }
    if (r.end < this.range.end) this.splitAt(r.end);
    const first = this.splitAt(r.start);
    for (let i = first; i < this.entries.length && this.entries[i].token < r.end; i++) {
      const e = this.entries[i];
      const er = this.entryRange(i);
      e.peer = to;
      e.nickname = toNickname;
      e.version++;
      e.free = er.end - er.start;
    }
  }

  /** rmpeer: we take over every entry of dead. Returns the number of addresses taken. */
  claim(dead: PeerName, us: PeerName, usNickname: string): number {
    let n = 0;
    for (let i = 0; i < this.entries.length; i++) {
      const e = this.entries[i];
      if (e.peer !== dead) continue;
      const r = this.entryRange(i);
      n += r.end - r.start;
      e.peer = us;
      e.nickname = usNickname;
      e.version += CLAIM_BUMP;
    }
    return n;
  }

  /** Owner-only: records the free count of our entries (bumping versions of the ones that changed). */
  updateFree(us: PeerName, freeIn: (r: Range) => number): boolean {
    let changed = false;
    for (let i = 0; i < this.entries.length; i++) {
      const e = this.entries[i];
      if (e.peer !== us) continue;
      const f = freeIn(this.entryRange(i));
      if (f !== e.free) {
        e.free = f;
        e.version++;
        changed = true;
      }
    }
    return changed;
  }

  /** Merges other into this (see the header for the rules). Never throws on conflicting content. */
  merge(other: Ring): MergeResult {
    if (other.range.start !== this.range.start || other.range.end !== this.range.end) {
      return { changed: false, conflict: { kind: 'range', detail: `their range ${formatRange(other.range)} differs from ours ${formatRange(this.range)}`, count: 1 } };
    }
    if (other.isEmpty()) return { changed: false, conflict: null };
    if (this.isEmpty()) {
      this.seeds = other.seeds.slice();
      this.entries = other.entries.map((e) => ({ ...e }));
      return { changed: true, conflict: null };
    }
    if (!sameList(this.seeds, other.seeds)) {
      return { changed: false, conflict: { kind: 'seeds', detail: `ring seeded by [${other.seeds.join(',')}] differs from ours seeded by [${this.seeds.join(',')}]`, count: 1 } };
    }
    const a = this.entries;
    const b = other.entries;
    const out: RingEntry[] = [];
    let changed = false;
    let conflicts = 0;
    let detail = '';
    let i = 0;
    let j = 0;
    while (i < a.length || j < b.length) {
      if (j >= b.length || (i < a.length && a[i].token < b[j].token)) {
        out.push(a[i++]);
      } else if (i >= a.length || b[j].token < a[i].token) {
        out.push({ ...b[j++] });
        changed = true;
      } else {
        const x = a[i++];
        const y = b[j++];
        if (y.version > x.version) {
          out.push({ ...y });
          changed = true;
        } else if (y.version < x.version || sameEntry(x, y)) {
          out.push(x);
        } else {
          conflicts++;
          if (!detail) detail = `token ${formatAddr(x.token)} version ${x.version}: ${x.peer} vs ${y.peer}`;
          // Deterministic on every peer: the higher (peer, free) wins.
          const yWins = y.peer > x.peer || (y.peer === x.peer && (y.free > x.free || (y.free === x.free && y.nickname > x.nickname)));
          if (yWins) {
            out.push({ ...y });
            changed = true;
          } else out.push(x);
        }
      }
    }
    this.entries = out;
    return { changed, conflict: conflicts ? { kind: 'entry', detail, count: conflicts } : null };
  }

  /** Same state (for tests and "all views agree"). */
  equals(other: Ring): boolean {
    if (other.range.start !== this.range.start || other.range.end !== this.range.end) return false;
    if (!sameList(this.seeds, other.seeds) || this.entries.length !== other.entries.length) return false;
    for (let i = 0; i < this.entries.length; i++) if (!sameEntry(this.entries[i], other.entries[i])) return false;
    return true;
  }

  toWire(): RingWire {
    const e: unknown[] = [];
    for (const x of this.entries) e.push(x.token, x.peer, x.nickname, x.version, x.free);
    return { v: 1, range: [this.range.start, this.range.end], seeds: this.seeds.slice(), e };
  }

  encode(): Uint8Array {
    return encodeMsg(this.toWire());
  }

  static decode(buf: Uint8Array): Ring {
    return Ring.fromWire(decodeMsg(buf, 'ipam ring'));
  }

  /** Validates a decoded wire object completely; ProtocolError on anything malformed. */
  static fromWire(raw: unknown): Ring {
    const bad = (why: string): never => {
      throw new ProtocolError(`ipam ring: ${why}`);
    };
    if (!isObj(raw)) return bad('not a map');
    if (raw.v !== 1) return bad(`unsupported version ${describe(raw.v)}`);
    const range = raw.range;
    if (!Array.isArray(range) || range.length !== 2) return bad('range must be [start, end]');
    const [start, end] = range as unknown[];
    if (!isAddr(start) || typeof end !== 'number' || !Number.isInteger(end) || end <= start || end > 2 ** 32) return bad('invalid range bounds');
    const ring = new Ring({ start, end });
    const seeds = raw.seeds;
    if (!Array.isArray(seeds) || seeds.length > MAX_ENTRIES) return bad('seeds must be a list');
    for (let i = 0; i < seeds.length; i++) {
      const s = seeds[i];
      if (typeof s !== 'string' || !isPeerName(s)) return bad(`seed ${i} is not a peer name`);
      if (i > 0 && !(seeds[i - 1] < s)) return bad('seeds must be sorted and unique');
    }
    ring.seeds = seeds as PeerName[];
    const e = raw.e;
    if (!Array.isArray(e) || e.length % 5 !== 0 || e.length / 5 > MAX_ENTRIES) return bad('entries must be a flat list of 5-tuples');
    if ((seeds.length === 0) !== (e.length === 0)) return bad('a ring has entries exactly when it has seeds');
    const entries: RingEntry[] = [];
    for (let k = 0; k < e.length; k += 5) {
      const token = e[k];
      const peer = e[k + 1];
      const nickname = e[k + 2];
      const version = e[k + 3];
      const free = e[k + 4];
      if (!isAddr(token) || token < start || token >= end) return bad(`entry ${k / 5}: token outside range`);
      if (k === 0 && token !== start) return bad('first token must be the range start');
      if (k > 0 && !(token > entries[entries.length - 1].token)) return bad(`entry ${k / 5}: tokens must increase`);
      if (typeof peer !== 'string' || !isPeerName(peer)) return bad(`entry ${k / 5}: invalid peer name`);
      if (typeof nickname !== 'string' || nickname.length > MAX_NICK) return bad(`entry ${k / 5}: invalid nickname`);
      if (typeof version !== 'number' || !Number.isSafeInteger(version) || version < 0) return bad(`entry ${k / 5}: invalid version`);
      if (typeof free !== 'number' || !Number.isSafeInteger(free) || free < 0 || free > end - start) return bad(`entry ${k / 5}: invalid free count`);
      entries.push({ token, peer, nickname, version, free });
    }
    ring.entries = entries;
    return ring;
  }
}

export interface RingWire {
  v: 1;
  range: [number, number];
  seeds: PeerName[];
  /** flat [token, peer, nickname, version, free, ...]: compact and cheap to validate */
  e: unknown[];
}

/** Names a decoded value for an error message without calling its (attacker-chosen) methods. */
export function describe(x: unknown): string {
  return describeValue(x);
}

export function isObj(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x) && !(x instanceof Uint8Array);
}

/**
 * Orders seed lists (each sorted): element by element, a prefix first. Every peer computes the
 * same winner when two separately seeded rings meet: the lower one.
 */
export function compareSeeds(a: readonly string[], b: readonly string[]): number {
  for (let i = 0; i < a.length && i < b.length; i++) if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  return a.length - b.length;
}

export function sameList<T extends string | number>(a: readonly T[], b: readonly T[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function sameEntry(x: RingEntry, y: RingEntry): boolean {
  return x.token === y.token && x.peer === y.peer && x.version === y.version && x.free === y.free && x.nickname === y.nickname;
}
