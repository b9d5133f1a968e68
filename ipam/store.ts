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
//
// Damage: lmdb trusts its file. Measured here with lmdb 3.5.6 (a 32 KB env, 52 keys): data.mdb truncated
// to 1..4097 bytes or overwritten with random bytes segfaults the process on open (exit 139), truncated to
// 8192..28672 bytes it dies of SIGBUS (exit 135) on the first read, random bytes over the main tree's
// root page SIGBUS on read, a truncated last byte reads fine, and an empty data.mdb is silently
// re-initialised (everything forgotten, nothing logged); a garbage lock.mdb is re-initialised safely.
// So before opening, checkLmdbEnv() validates the meta pages in JS (magic, format version, page size,
// the pages they point at against the file length), and probeLmdbEnv() opens the env read-only in a
// child process that reads and decodes every key (~90 ms): whatever crashes, crashes there. A damaged env
// is moved aside (ipam.damaged-<time>) and IPAM starts empty in "state lost" mode (see Allocator):
// it takes no part in seeding a ring, takes the ring from peers, and the router claims the addresses of
// its live containers again, so nothing is handed out twice.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import type { Range } from './addr';
import type { Addr } from './addr';
import { moveAside, readStateFile, writeStateFile, type StateRecovery } from '../lib/state-file';

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
  /** why the persisted state was lost at open (damaged or deleted), or null: the allocator then waits for peers' ring */
  lostState?(): string | null;
  /** what was found damaged at open and what was done */
  recovery?(): StateRecovery[];
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

// ---------------------------------------------------------------- lmdb env checks

export const LMDB_DATA_FILE = 'data.mdb';
export const LMDB_LOCK_FILE = 'lock.mdb';
/** state file next to the env naming the peer that owns it (a witness for a lost peer-name) */
export const IPAM_OWNER_FILE = 'owner';
const MDB_MAGIC = 0xbeefc0de;
const MDB_DATA_VERSION = 2;
const P_META = 0x08;
/** 64-bit LMDB (lmdb-js fork): page header = pgno 8, txnid 8, pad 2, flags 2, lower/upper 4 */
const PAGEHDRSZ = 24;
/** MDB_meta: magic 4, version 4, address 8, mapsize 8, dbs[2] 2x48, last_pg 8, txnid 8, boot_id 8 */
const META_SIZE = 144;
const P_INVALID = 0xffffffffffffffffn;
const MAX_DEPTH = 64;

export interface LmdbCheck {
  /** 'fresh': no env yet; 'ok': the meta pages are sound; 'damaged': see problem */
  status: 'fresh' | 'ok' | 'damaged';
  problem?: string;
  /** the file the problem is in (relative to the env dir) */
  file?: string;
}

interface MetaView { psize: number; lastPg: bigint; txnid: bigint; roots: Array<{ root: bigint; depth: number; pages: bigint }> }

/** Reads one meta (at byte offset `at` of buf, pointing at the meta body) and checks its own fields. */
function readMeta(buf: Buffer, at: number, full: boolean): MetaView | string {
  if (full) {
    if (buf.readUInt32LE(at) !== MDB_MAGIC) return 'bad magic (not an LMDB file, or overwritten)';
    const ver = buf.readUInt32LE(at + 4) & 0xffff;
    if (ver !== MDB_DATA_VERSION) return `LMDB data format ${ver}, expected ${MDB_DATA_VERSION}`;
  }
  const psize = buf.readUInt32LE(at + 24);
  if (psize < 512 || psize > 65536 || (psize & (psize - 1)) !== 0) return `page size ${psize} is not a power of two in 512..65536`;
  const lastPg = buf.readBigUInt64LE(at + 120);
  const txnid = buf.readBigUInt64LE(at + 128);
  const roots: MetaView['roots'] = [];
  for (const dbAt of [at + 24, at + 72]) {
    const depth = buf.readUInt16LE(dbAt + 6);
    const pages = buf.readBigUInt64LE(dbAt + 8) + buf.readBigUInt64LE(dbAt + 16) + buf.readBigUInt64LE(dbAt + 24);
    roots.push({ root: buf.readBigUInt64LE(dbAt + 40), depth, pages });
  }
  return { psize, lastPg, txnid, roots };
}

/** The pages a meta points at must exist in a file of `size` bytes. */
function checkMetaAgainstFile(m: MetaView, size: number, which: string): string | undefined {
  const need = (m.lastPg + 1n) * BigInt(m.psize);
  if (m.lastPg < 1n || need > BigInt(size)) return `truncated: ${size} bytes, but the ${which} meta page says ${need} (${m.lastPg + 1n} pages of ${m.psize})`;
  for (const [i, r] of m.roots.entries()) {
    const name = i === 0 ? 'free-page tree' : 'main tree';
    if (r.root === P_INVALID) {
      if (r.depth !== 0) return `${which} meta page: empty ${name} with depth ${r.depth}`;
      continue;
    }
    if (r.root < 2n || r.root > m.lastPg) return `${which} meta page: ${name} root page ${r.root} is outside pages 2..${m.lastPg}`;
    if (r.depth < 1 || r.depth > MAX_DEPTH) return `${which} meta page: ${name} depth ${r.depth}`;
    if (r.pages > m.lastPg + 1n) return `${which} meta page: ${name} has ${r.pages} pages in a file of ${m.lastPg + 1n}`;
  }
  return undefined;
}

/**
 * Validates an lmdb env dir without opening it (pure JS, reads at most two pages): the meta pages
 * (magic, format version, page size, flags) and that every page they point at lies inside the file.
 * `fresh` when there is no env; a missing data.mdb next to a lock file or owner file is damage (deleted).
 */
export function checkLmdbEnv(dir: string): LmdbCheck {
  const file = path.join(dir, LMDB_DATA_FILE);
  let size: number;
  try {
    size = fs.statSync(file).size;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') return { status: 'damaged', file: LMDB_DATA_FILE, problem: `unreadable: ${(e as Error).message}` };
    const others = [LMDB_LOCK_FILE, IPAM_OWNER_FILE].filter((f) => fs.existsSync(path.join(dir, f)));
    return others.length ? { status: 'damaged', file: LMDB_DATA_FILE, problem: `missing (deleted?) while ${others.join(' and ')} exist` } : { status: 'fresh' };
  }
  const bad = (problem: string): LmdbCheck => ({ status: 'damaged', file: LMDB_DATA_FILE, problem });
  if (size === 0) return bad('empty (truncated to 0 bytes); lmdb would silently start over');
  const head = Buffer.alloc(Math.min(size, 2 * 65536));
  try {
    const fd = fs.openSync(file, 'r');
    try {
      fs.readSync(fd, head, 0, head.length, 0);
    } finally {
      fs.closeSync(fd);
    }
  } catch (e) {
    return bad(`unreadable: ${(e as Error).message}`);
  }
  if (size < PAGEHDRSZ + META_SIZE) return bad(`truncated: ${size} bytes, shorter than one meta page`);
  if ((head.readUInt16LE(18) & P_META) === 0) return bad('page 0 is not a meta page (garbage or overwritten)');
  const m0 = readMeta(head, PAGEHDRSZ, true);
  if (typeof m0 === 'string') return bad(`meta page 0: ${m0}`);
  const ps = m0.psize;
  if (size < ps + PAGEHDRSZ + META_SIZE) return bad(`truncated: ${size} bytes, the second meta page (at ${ps}) is missing`);
  if (head.length < ps + PAGEHDRSZ + META_SIZE) return bad(`page size ${ps} too large to check`);
  if ((head.readUInt16LE(ps + 18) & P_META) === 0) return bad('page 1 is not a meta page (garbage or overwritten)');
  const m1 = readMeta(head, ps + PAGEHDRSZ, true);
  if (typeof m1 === 'string') return bad(`meta page 1: ${m1}`);
  if (m1.psize !== ps) return bad(`meta pages disagree on the page size (${ps} and ${m1.psize})`);
  const metas: Array<[MetaView, string]> = [[m0, 'first'], [m1, 'second']];
  // lmdb-js with overlapping sync keeps a third, flushed-meta copy in the second half of page 0 (no magic)
  const mid = readMeta(head, (ps >> 1) + PAGEHDRSZ, false);
  if (typeof mid !== 'string' && mid.txnid !== 0n) {
    if (mid.psize !== ps) return bad(`the flushed meta copy says page size ${mid.psize}, the meta pages ${ps}`);
    metas.push([mid, 'flushed']);
  }
  for (const [m, which] of metas) {
    const why = checkMetaAgainstFile(m, size, which);
    if (why) return bad(why);
  }
  return { status: 'ok' };
}

/** Child-process probe: opens the env read-only and reads and decodes every key; prints "ok N". */
const PROBE_SRC = `
const lmdb = require(process.argv[1]);
const db = lmdb.open({ path: process.argv[2], compression: false, readOnly: true });
let n = 0;
for (const e of db.getRange({})) if (e.value !== undefined) n++; // reading the value decodes it
process.stdout.write('ok ' + n + '\\n');
`;

/**
 * Opens the env read-only in a child process that reads every key and value. A corrupt B-tree that
 * passes checkLmdbEnv crashes the child, not the router. Returns a problem description or undefined.
 */
export function probeLmdbEnv(dir: string, timeoutMs = 20_000): string | undefined {
  let lmdbPath: string;
  try {
    lmdbPath = require.resolve('lmdb');
  } catch {
    return undefined; // no lmdb: opening fails with its own clear error
  }
  const r = spawnSync(process.execPath, ['-e', PROBE_SRC, lmdbPath, dir], { encoding: 'utf8', timeout: timeoutMs, stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ETIMEDOUT') return `reading it took longer than ${timeoutMs / 1000}s (a loop in a damaged tree?)`;
  if (r.signal) return `reading it crashed lmdb (${r.signal}${r.signal === 'SIGSEGV' || r.signal === 'SIGBUS' ? ': damaged pages' : ''})`;
  if (r.status !== 0 || !/^ok \d+/.test(r.stdout)) {
    const msg = (r.stderr || r.stdout || '').split('\n').find((l) => /Error/.test(l)) ?? `exit ${r.status}`;
    return `unreadable: ${msg.trim().slice(0, 200)}`;
  }
  return undefined;
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

export interface LmdbStoreOptions {
  /** our peer name, recorded beside the env (a witness when peer-name is lost) */
  owner?: string;
  /** how the env dir is named in status (default "ipam") */
  label?: string;
  /** run the child-process probe on an existing env (default true) */
  probe?: boolean;
  now?: () => number;
}

export class LmdbStore implements IpamStore {
  private readonly db: LmdbDb;
  private lost: string | null = null;
  private readonly recovered: StateRecovery[] = [];

  /**
   * dir: e.g. <dataDir>/ipam (created if missing). A damaged env is moved aside (never opened) and a
   * fresh one created; lostState() and recovery() say so.
   */
  constructor(private readonly dir: string, opts: LmdbStoreOptions = {}) {
    const label = opts.label ?? path.basename(dir);
    const now = opts.now ?? Date.now;
    let check = checkLmdbEnv(dir);
    if (check.status === 'ok' && opts.probe !== false) {
      const problem = probeLmdbEnv(dir);
      if (problem) check = { status: 'damaged', file: LMDB_DATA_FILE, problem };
    }
    if (check.status === 'damaged') {
      const movedTo = moveAside(dir, now());
      this.lost = `${label}/${check.file} was ${check.problem}`;
      this.recovered.push({
        file: `${label}/${check.file}`,
        problem: check.problem!,
        action: `moved aside to ${path.basename(movedTo)}; IPAM starts empty, takes the ring from peers and claims the live containers' addresses again`,
        movedTo,
        at: now(),
      });
    }
    fs.mkdirSync(dir, { recursive: true });
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const lmdb = require('lmdb') as { open(o: Record<string, unknown>): LmdbDb };
    this.db = lmdb.open({ path: dir, compression: false });
    if (opts.owner) this.recordOwner(opts.owner);
  }

  private recordOwner(owner: string): void {
    const f = path.join(this.dir, IPAM_OWNER_FILE);
    const cur = readStateFile(f, 'ipam-owner');
    if (cur.status === 'ok' && cur.owner === owner) return;
    writeStateFile(f, 'ipam-owner', `${owner}\n`, { owner });
  }

  lostState(): string | null {
    return this.lost;
  }

  recovery(): StateRecovery[] {
    return this.recovered.map((r) => ({ ...r }));
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
