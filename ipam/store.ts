// IPAM persistence: the range, the ring and the allocations survive a restart.
//
// Choice: lmdb (what boltdb was to Weave Net) rather than a rewritten file. An allocation must be
// durable before its address is handed out (a container keeping an address the restarted router
// forgot is exactly a collision), so every allocate/free is a synchronous commit. With one file,
// each commit rewrites ring + all allocations (temp + fsync + rename), which grows with the number
// of containers; lmdb commits only the changed key, atomically (copy-on-write B-tree, fsync'd meta
// page), and a crash at any point leaves the last committed state. Measured here: ~0.4 ms per
// synchronous commit. Keys: 'range' -> [start, end], 'ring' -> encoded ring, 'a:<ident>' -> [addr...],
// 'm:<name>' -> small encoded blobs: 'm:paxos' (our acceptor state, written before we gossip it, so
// a restart cannot make us vote differently) and 'm:holds' (the held-address records of a merge
// repair, see Allocator).
import type { Range } from './addr';
import type { Addr } from './addr';

export interface IpamPersisted {
  range: Range;
  /** the encoded ring (Ring.encode), or null before the ring exists */
  ring: Uint8Array | null;
  allocations: Array<[string, Addr[]]>;
  /** named blobs saved with saveMeta */
  meta: Map<string, Uint8Array>;
}

export interface IpamStore {
  load(): IpamPersisted | null;
  saveRing(ring: Uint8Array): void;
  /** an empty list deletes the ident */
  saveAllocations(ident: string, addrs: Addr[]): void;
  /** a named blob (null deletes it); synchronous and durable like the rest */
  saveMeta(name: string, value: Uint8Array | null): void;
  /** discards everything and records range (first start, or the range changed) */
  reset(range: Range): void;
  close(): void;
}

export class MemoryStore implements IpamStore {
  private range: Range | null = null;
  private ring: Uint8Array | null = null;
  private readonly allocs = new Map<string, Addr[]>();
  private readonly meta = new Map<string, Uint8Array>();
  /** counts commits, so tests can check an operation persisted */
  writes = 0;

  load(): IpamPersisted | null {
    if (!this.range) return null;
    return { range: { ...this.range }, ring: this.ring && this.ring.slice(), allocations: [...this.allocs].map(([k, v]) => [k, v.slice()]), meta: new Map([...this.meta].map(([k, v]) => [k, v.slice()])) };
  }
  saveRing(ring: Uint8Array): void {
    this.ring = ring.slice();
    this.writes++;
  }
  saveAllocations(ident: string, addrs: Addr[]): void {
    if (addrs.length) this.allocs.set(ident, addrs.slice());
    else this.allocs.delete(ident);
    this.writes++;
  }
  saveMeta(name: string, value: Uint8Array | null): void {
    if (value) this.meta.set(name, value.slice());
    else this.meta.delete(name);
    this.writes++;
  }
  reset(range: Range): void {
    this.range = { ...range };
    this.ring = null;
    this.allocs.clear();
    this.meta.clear();
    this.writes++;
  }
  close(): void {}
}

// Minimal surface of the lmdb module we use (it ships its own types, but loading it lazily keeps
// a missing native build from breaking processes that never persist IPAM, e.g. the CLI).
interface LmdbDb {
  get(key: string): unknown;
  putSync(key: string, value: unknown): boolean;
  removeSync(key: string): boolean;
  transactionSync<T>(fn: () => T): T;
  getRange(opts: { start?: string; end?: string }): Iterable<{ key: unknown; value: unknown }>;
  clearSync(): void;
  close(): Promise<void>;
}

export class LmdbStore implements IpamStore {
  private readonly db: LmdbDb;

  /** dir: e.g. <dataDir>/ipam (created if missing) */
  constructor(dir: string) {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const lmdb = require('lmdb') as { open(o: Record<string, unknown>): LmdbDb };
    this.db = lmdb.open({ path: dir, compression: false });
  }

  load(): IpamPersisted | null {
    const r = this.db.get('range');
    if (!Array.isArray(r) || r.length !== 2 || typeof r[0] !== 'number' || typeof r[1] !== 'number') return null;
    const ringRaw = this.db.get('ring');
    const ring = ringRaw instanceof Uint8Array ? new Uint8Array(ringRaw) : null;
    const allocations: Array<[string, Addr[]]> = [];
    for (const { key, value } of this.db.getRange({ start: 'a:', end: 'a;' })) {
      if (typeof key !== 'string' || !Array.isArray(value)) continue;
      allocations.push([key.slice(2), value.filter((x): x is number => typeof x === 'number')]);
    }
    const meta = new Map<string, Uint8Array>();
    for (const { key, value } of this.db.getRange({ start: 'm:', end: 'm;' })) {
      if (typeof key === 'string' && value instanceof Uint8Array) meta.set(key.slice(2), new Uint8Array(value));
    }
    return { range: { start: r[0], end: r[1] }, ring, allocations, meta };
  }

  saveMeta(name: string, value: Uint8Array | null): void {
    if (value) this.db.putSync(`m:${name}`, Buffer.from(value));
    else this.db.removeSync(`m:${name}`);
  }

  saveRing(ring: Uint8Array): void {
    this.db.putSync('ring', Buffer.from(ring));
  }

  saveAllocations(ident: string, addrs: Addr[]): void {
    if (addrs.length) this.db.putSync(`a:${ident}`, addrs);
    else this.db.removeSync(`a:${ident}`);
  }

  reset(range: Range): void {
    this.db.transactionSync(() => {
      this.db.clearSync();
      this.db.putSync('range', [range.start, range.end]);
    });
  }

  close(): void {
    void this.db.close();
  }
}
