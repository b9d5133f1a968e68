// weaveDNS record store: a gossip CRDT of (name, addr, origin) entries, plugged into the mesh as the
// 'dns' gossip channel.
//
// Merge rules (order-independent, so any gossip order converges):
//   - key = (name, addr, origin); only the origin peer edits its own entries (owner-only edits);
//   - higher version wins; on equal versions a tombstone beats a live entry, then the larger
//     containerId (a deterministic tie-break that only matters after an owner lost its state);
//   - tombstones are gossiped like entries so removals beat stale adds still in flight, and are
//     garbage-collected tombstoneTtlMs after they were last changed here;
//   - entries whose origin the mesh says is gone are dropped (removePeer / updatePeers) and the origin
//     is remembered as departed: its entries relayed by third parties that have not noticed yet are
//     ignored until the mesh sees that peer again, so a dead peer's records are not resurrected.
//     Ignored, not lost: they are parked (bounded) and merged when the mesh shows the origin again,
//     because a restarted peer's full state often arrives just before the topology says it is back.
//     (Peers we have not heard of yet are accepted: gossip may arrive before the topology does.)
//
// Restart, two ways that add up:
//   1. persistence (optional, DnsPersistence; FileDnsPersistence writes <dataDir>/dns-records): the
//      store saves its own entries (tombstones included) on every change of them and loads them at
//      construction, so a router that restarts alone, or after its peers dropped its records because
//      it was gone, re-announces them itself with versions that continue where it stopped;
//   2. re-learning: an entry whose origin is ourselves, received from a peer, is accepted as long as
//      we have not asserted that key ourselves in this run (covers a lost, damaged or absent file), and
//      broadcast again, so peers that dropped it have it back. Peers hold a departed origin's records
//      (not resolvable, up to departedKeepMs) and hand them to that origin when the mesh shows it again,
//      so a router that restarts without its records gets them back even when every peer had dropped
//      them. recovery() says what was re-learned and from where. The version counter for
// our own entries is a Lamport clock bumped past every own-origin version we see, so the next local
// add/remove always beats what peers hold. If we did assert a key in this run (e.g. attach registered
// the container again before gossip arrived) and a peer sends an older incarnation with a higher
// version, the owner wins: we re-issue our current state with a version above the peer's and broadcast
// it. Records of containers that died while the router was down are removed by the owner
// (removeContainer) when it reconciles its containers; that is the caller's job.
import type { Clock, TimerHandle } from '../lib/clock';
import * as path from 'path';
import { ProtocolError, UsageError, WeaveError, describeValue } from '../lib/errors';
import { parseAddr, tryParseAddr } from '../lib/addr';
import { decodeMsg, encodeMsg } from '../mesh/codec';
import { contentProblem, moveAside, readStateFile, writeStateFile, type StateRecovery } from '../lib/state-file';
import type { Logger } from '../lib/log';
import { isPeerName, type PeerName } from '../mesh/peer';
import type { GossipChannel, GossipData, Gossiper } from '../mesh/types';

const RECORDS_WIRE_VERSION = 1;
/** Entries per encoded gossip message, so one message stays well below the mesh's frame limit. */
const ENTRIES_PER_MESSAGE = 2000;
/** Upper bound on entries accepted in one message: a decoder must not be made to allocate without limit. */
const MAX_ENTRIES_PER_MESSAGE = 100_000;
const MAX_CONTAINER_ID = 128;
/** Bound on entries of departed origins held for their return. */
const MAX_PARKED = 100_000;
/** Bound on records of departed origins held to hand back to them. */
const MAX_HELD = 100_000;

export interface DnsEntry {
  /** lowercased FQDN with the trailing dot: "web.weave.local." */
  name: string;
  /** dotted IPv4 */
  addr: string;
  origin: PeerName;
  containerId?: string;
  version: number;
  tombstone: boolean;
}

interface StoredEntry extends DnsEntry {
  /** local clock time of the last change here (tombstone GC) */
  changedAt: number;
}

function entryKey(name: string, addr: string, origin: string): string {
  return `${name}|${addr}|${origin}`;
}

/** Lowercases, adds the trailing dot and checks the name is a valid DNS name (labels 1..63, total <= 253). */
export function normalizeName(name: string, errorKind: 'usage' | 'protocol' = 'usage'): string {
  const fail = (why: string): never => {
    if (errorKind === 'protocol') throw new ProtocolError(`dns record: invalid name: ${why}`, { name: describeValue(name) });
    throw new UsageError(`invalid DNS name ${typeof name === 'string' ? JSON.stringify(name.slice(0, 300)) : describeValue(name)}: ${why}`);
  };
  if (typeof name !== 'string' || name.length === 0) return fail('empty');
  let n = name.toLowerCase();
  if (!n.endsWith('.')) n += '.';
  if (n.length > 254) return fail('longer than 253 characters');
  const labels = n.slice(0, -1).split('.');
  for (const l of labels) {
    if (l.length === 0) return fail('empty label');
    if (l.length > 63) return fail('label longer than 63 characters');
    if (!/^[a-z0-9_-]+$/.test(l)) return fail(`label "${l}" has characters other than letters, digits, '-' and '_'`);
  }
  return n;
}

/** The u32 of a record's address (validated when the record was added or decoded). */
export function ipv4ToNumber(addr: string): number {
  const n = tryParseAddr(addr);
  if (n === undefined) throw new WeaveError('EINVAL', `dns record address ${describeValue(addr)} is not IPv4`);
  return n;
}

function checkAddr(addr: string, errorKind: 'usage' | 'protocol'): string {
  // lib/addr accepts one spelling per address, so the string is a stable key.
  if (tryParseAddr(addr) === undefined) {
    if (errorKind === 'protocol') throw new ProtocolError('dns record: invalid IPv4 address', { addr: describeValue(addr) });
    parseAddr(addr); // throws the UsageError that says what is wrong
  }
  return addr;
}

/** True when a beats b under the merge order (version, then tombstone, then containerId). */
function beats(a: DnsEntry, b: DnsEntry): boolean {
  if (a.version !== b.version) return a.version > b.version;
  if (a.tombstone !== b.tombstone) return a.tombstone;
  return (a.containerId ?? '') > (b.containerId ?? '');
}

function copyEntry(e: DnsEntry): DnsEntry {
  const c: DnsEntry = { name: e.name, addr: e.addr, origin: e.origin, version: e.version, tombstone: e.tombstone };
  if (e.containerId !== undefined) c.containerId = e.containerId;
  return c;
}

/** Wire tuple: [name, addr, origin, version, tombstone 0|1, containerId or ''] — compact and plain (no class instances). */
type WireEntry = [string, string, string, number, number, string];

export function encodeEntries(entries: DnsEntry[]): Uint8Array[] {
  const toWire = (e: DnsEntry): WireEntry => [e.name, e.addr, e.origin, e.version, e.tombstone ? 1 : 0, e.containerId ?? ''];
  if (entries.length === 0) return [encodeMsg({ v: RECORDS_WIRE_VERSION, e: [] })];
  const out: Uint8Array[] = [];
  for (let i = 0; i < entries.length; i += ENTRIES_PER_MESSAGE) {
    out.push(encodeMsg({ v: RECORDS_WIRE_VERSION, e: entries.slice(i, i + ENTRIES_PER_MESSAGE).map(toWire) }));
  }
  return out;
}

/** Decodes and validates one gossip message; any malformed input throws ProtocolError. */
export function decodeEntries(buf: Uint8Array): DnsEntry[] {
  return entriesFromMessage(decodeMsg(buf, 'dns gossip'));
}

function entriesFromMessage(msg: unknown): DnsEntry[] {
  if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) throw new ProtocolError('dns gossip: not a map');
  const m = msg as Record<string, unknown>;
  if (m.v !== RECORDS_WIRE_VERSION) throw new ProtocolError('dns gossip: unsupported version', { v: describeValue(m.v) });
  const list = m.e;
  if (!Array.isArray(list)) throw new ProtocolError('dns gossip: entries missing');
  if (list.length > MAX_ENTRIES_PER_MESSAGE) throw new ProtocolError('dns gossip: too many entries', { n: list.length });
  const out: DnsEntry[] = new Array(list.length);
  for (let i = 0; i < list.length; i++) {
    const t = list[i] as unknown;
    if (!Array.isArray(t) || t.length !== 6) throw new ProtocolError('dns gossip: entry is not a 6-tuple', { index: i });
    const [name, addr, origin, version, tomb, cid] = t as unknown[];
    if (typeof name !== 'string' || normalizeName(name, 'protocol') !== name) throw new ProtocolError('dns gossip: name not normalized', { index: i });
    checkAddr(addr as string, 'protocol');
    if (typeof origin !== 'string' || !isPeerName(origin)) throw new ProtocolError('dns gossip: bad origin', { index: i });
    if (typeof version !== 'number' || !Number.isSafeInteger(version) || version < 1) throw new ProtocolError('dns gossip: bad version', { index: i });
    if (tomb !== 0 && tomb !== 1) throw new ProtocolError('dns gossip: bad tombstone flag', { index: i });
    if (typeof cid !== 'string' || cid.length > MAX_CONTAINER_ID) throw new ProtocolError('dns gossip: bad containerId', { index: i });
    const e: DnsEntry = { name, addr: addr as string, origin, version, tombstone: tomb === 1 };
    if (cid !== '') e.containerId = cid;
    out[i] = e;
  }
  return out;
}

/** GossipData for the 'dns' channel: a set of entries that merges by the CRDT rule. */
export class DnsRecordSet implements GossipData {
  readonly entries = new Map<string, DnsEntry>();
  constructor(entries: Iterable<DnsEntry> = []) {
    for (const e of entries) this.add(e);
  }
  add(e: DnsEntry): void {
    const k = entryKey(e.name, e.addr, e.origin);
    const cur = this.entries.get(k);
    if (!cur || beats(e, cur)) this.entries.set(k, copyEntry(e));
  }
  encode(): Uint8Array[] {
    return encodeEntries([...this.entries.values()]);
  }
  merge(other: GossipData): GossipData {
    if (other instanceof DnsRecordSet) for (const e of other.entries.values()) this.add(e);
    return this;
  }
  get size(): number {
    return this.entries.size;
  }
}

/** Where a store keeps its own entries across restarts. */
export interface DnsPersistence {
  /** the saved own entries, [] when there is nothing; throws when the saved data is unusable */
  load(): DnsEntry[];
  /** self: our peer name, recorded with the entries */
  save(entries: DnsEntry[], self?: PeerName): void;
  /** how status names it (a file name) */
  readonly label?: string;
}

const DNS_STATE_KIND = 'dns-records';

/**
 * Own entries in one checked state file (lib/state-file.ts) holding {v:1, e:[tuples]}, the gossip
 * encoding. A damaged file is moved aside and load() throws a WeaveError ESTATE saying what was wrong
 * (context.movedTo): the store then starts without its records and re-learns them from peers.
 */
export class FileDnsPersistence implements DnsPersistence {
  constructor(readonly path: string) {}
  get label(): string {
    return path.basename(this.path);
  }
  load(): DnsEntry[] {
    const r = readStateFile(this.path, DNS_STATE_KIND, { legacy: true });
    if (r.status === 'missing') return [];
    let problem: string;
    if (r.status === 'ok') {
      try {
        return decodeEntries(r.payload);
      } catch (e) {
        problem = contentProblem(r.legacy, e);
      }
    } else {
      problem = r.problem;
    }
    const movedTo = moveAside(this.path);
    throw new WeaveError('ESTATE', `${this.label} is damaged (${problem}); moved aside to ${path.basename(movedTo)}`, { file: this.path, problem, movedTo });
  }
  save(entries: DnsEntry[], self?: PeerName): void {
    const tuples = entries.map((e): WireEntry => [e.name, e.addr, e.origin, e.version, e.tombstone ? 1 : 0, e.containerId ?? '']);
    writeStateFile(this.path, DNS_STATE_KIND, Buffer.from(encodeMsg({ v: RECORDS_WIRE_VERSION, e: tuples })), { owner: self });
  }
}

export interface DnsStoreOptions {
  /** our peer name: the origin of records added here */
  self: PeerName;
  clock: Clock;
  log: Logger;
  /** how long a tombstone is kept after its last change (default 10 min) */
  tombstoneTtlMs?: number;
  /** period of the GC timer started by start() (default 1 min) */
  gcIntervalMs?: number;
  /** records of an origin the mesh has never shown as reachable are dropped after this (default 60 s) */
  unknownOriginGraceMs?: number;
  /** keeps our own entries across restarts (FileDnsPersistence in the data dir) */
  persistence?: DnsPersistence;
  /** how long a departed origin's records are held to hand back when it returns (default 1 h) */
  departedKeepMs?: number;
  /**
   * Called after own records were re-learned from peers (our file was lost): the owner drops those of
   * containers that are gone (removeContainer), as it does at start.
   */
  onOwnRelearned?: () => void;
}

export interface DnsStoreCounters {
  gossipReceived: number;
  gossipMalformed: number;
  entriesAccepted: number;
  entriesIgnoredDeadOrigin: number;
  reasserted: number;
  tombstonesCollected: number;
  peersRemoved: number;
  persistErrors: number;
  loadedFromDisk: number;
  /** entries of a departed origin merged when it came back */
  unparked: number;
  /** own entries accepted from peers (this run had not asserted them: our file was lost or damaged) */
  relearned: number;
  /** records handed back to a returning origin that had departed */
  handedBack: number;
}

export class DnsStore implements Gossiper {
  readonly self: PeerName;
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly tombstoneTtlMs: number;
  private readonly gcIntervalMs: number;
  /** origins the mesh told us are gone -> when; their entries are ignored until they are seen again */
  private readonly departed = new Map<PeerName, number>();
  /** entries of departed origins, best version per key, merged if the origin comes back */
  private readonly parked = new Map<string, StoredEntry>();
  /** the last reachable set from the mesh (null until updatePeers is first called) */
  private live: Set<PeerName> | null = null;
  /** peers seen reachable at some point: when they leave the set they are gone */
  private readonly known = new Set<PeerName>();
  /** origins with records that the mesh never showed us -> since when (gossip can beat topology) */
  private readonly unknownSince = new Map<PeerName, number>();
  private readonly unknownGraceMs: number;
  private readonly entries = new Map<string, StoredEntry>();
  /** own keys written locally since this process started: the owner is authoritative for those */
  private readonly asserted = new Set<string>();
  /** Lamport counter for our own entries */
  private ownCounter = 0;
  /** highest version of an own tombstone GC'd in this run: older own entries coming back are stale */
  private ownGcFloor = 0;
  private channel: GossipChannel | null = null;
  private gcTimer: TimerHandle | undefined;
  /** bumped on every change of the live view; readers (the DNS server's index) compare it */
  generation = 0;
  private indexGen = -1;
  private byName = new Map<string, string[]>();
  private byAddr = new Map<string, string[]>();
  readonly counters: DnsStoreCounters = {
    gossipReceived: 0,
    gossipMalformed: 0,
    entriesAccepted: 0,
    entriesIgnoredDeadOrigin: 0,
    reasserted: 0,
    tombstonesCollected: 0,
    peersRemoved: 0,
    persistErrors: 0,
    loadedFromDisk: 0,
    unparked: 0,
    relearned: 0,
    handedBack: 0,
  };
  private readonly persistence: DnsPersistence | null;
  /** records of departed origins, held (not resolvable) to hand back when the origin returns */
  private readonly held = new Map<string, StoredEntry & { until: number }>();
  private readonly departedKeepMs: number;
  private readonly onOwnRelearned: () => void;
  /** why our saved records could not be loaded (damaged file), for recovery() */
  private loadProblem: { problem: string; movedTo?: string; at: number } | null = null;
  /** who sent us own records we had lost, and when the last came */
  private relearnedFrom = new Set<string>();

  constructor(opts: DnsStoreOptions) {
    if (!isPeerName(opts.self)) throw new UsageError(`invalid peer name "${opts.self}"`);
    this.self = opts.self;
    this.clock = opts.clock;
    this.log = opts.log.child({ component: 'dns-records' });
    this.tombstoneTtlMs = opts.tombstoneTtlMs ?? 10 * 60_000;
    this.gcIntervalMs = opts.gcIntervalMs ?? 60_000;
    this.unknownGraceMs = opts.unknownOriginGraceMs ?? 60_000;
    this.persistence = opts.persistence ?? null;
    this.departedKeepMs = opts.departedKeepMs ?? 60 * 60_000;
    this.onOwnRelearned = opts.onOwnRelearned ?? (() => undefined);
    if (this.persistence) this.loadOwn(this.persistence);
  }

  private loadOwn(p: DnsPersistence): void {
    let saved: DnsEntry[];
    try {
      saved = p.load();
    } catch (e) {
      this.counters.persistErrors++;
      const ctx = e instanceof WeaveError ? e.context : {};
      this.loadProblem = { problem: typeof ctx.problem === 'string' ? ctx.problem : (e as Error).message, at: this.clock.now() };
      if (typeof ctx.movedTo === 'string') this.loadProblem.movedTo = ctx.movedTo;
      this.log.error({ err: (e as Error).message }, 'saved dns records unusable: starting without them; peers hand them back');
      return;
    }
    const now = this.clock.now();
    for (const e of saved) {
      if (e.origin !== this.self) continue; // a data dir copied from another peer: not ours to announce
      const k = entryKey(e.name, e.addr, e.origin);
      this.entries.set(k, { ...copyEntry(e), changedAt: now });
      this.asserted.add(k);
      if (e.version > this.ownCounter) this.ownCounter = e.version;
      this.counters.loadedFromDisk++;
    }
    if (this.counters.loadedFromDisk) {
      this.changed();
      this.log.info({ records: this.counters.loadedFromDisk }, 'own dns records restored from disk');
    }
  }

  private saveOwn(): void {
    if (!this.persistence) return;
    const own: DnsEntry[] = [];
    for (const e of this.entries.values()) if (e.origin === this.self) own.push(copyEntry(e));
    try {
      this.persistence.save(own, this.self);
    } catch (e) {
      this.counters.persistErrors++;
      this.log.warn({ err: (e as Error).message }, 'cannot save dns records: a restart may lose them');
    }
  }

  /** The mesh channel this store publishes local changes on (mesh.newGossip('dns', store) returns it). */
  attach(channel: GossipChannel): void {
    this.channel = channel;
  }

  start(): void {
    if (this.gcTimer) return;
    const tick = (): void => {
      this.gc();
      this.gcTimer = this.clock.setTimeout(tick, this.gcIntervalMs);
    };
    this.gcTimer = this.clock.setTimeout(tick, this.gcIntervalMs);
  }

  stop(): void {
    this.clock.clearTimeout(this.gcTimer);
    this.gcTimer = undefined;
  }

  // ---- local edits (owner only) ----

  /** Registers name -> addr with us as origin. Returns the entry (new or already live). */
  add(name: string, addr: string, containerId?: string): DnsEntry {
    const n = normalizeName(name);
    const a = checkAddr(addr, 'usage');
    if (containerId !== undefined && (containerId.length === 0 || containerId.length > MAX_CONTAINER_ID)) {
      throw new UsageError(`invalid container id (1..${MAX_CONTAINER_ID} characters)`);
    }
    const k = entryKey(n, a, this.self);
    const cur = this.entries.get(k);
    this.asserted.add(k);
    if (cur && !cur.tombstone && cur.containerId === containerId) return copyEntry(cur);
    const e: StoredEntry = { name: n, addr: a, origin: this.self, version: ++this.ownCounter, tombstone: false, changedAt: this.clock.now() };
    if (containerId !== undefined) e.containerId = containerId;
    this.entries.set(k, e);
    this.changed();
    this.saveOwn();
    this.publish([e]);
    this.log.debug({ name: n, addr: a, containerId }, 'record added');
    return copyEntry(e);
  }

  /**
   * Tombstones our own live entries matching all given filters (like `weave dns-remove IP [-h FQDN]`):
   * addr and/or name and/or containerId. Returns how many were removed.
   */
  remove(filter: { name?: string; addr?: string; containerId?: string }): number {
    const n = filter.name !== undefined ? normalizeName(filter.name) : undefined;
    const a = filter.addr !== undefined ? checkAddr(filter.addr, 'usage') : undefined;
    if (n === undefined && a === undefined && filter.containerId === undefined) throw new UsageError('dns remove: give a name, an address or a container id');
    const removed: StoredEntry[] = [];
    for (const [k, e] of this.entries) {
      if (e.origin !== this.self || e.tombstone) continue;
      if (n !== undefined && e.name !== n) continue;
      if (a !== undefined && e.addr !== a) continue;
      if (filter.containerId !== undefined && e.containerId !== filter.containerId) continue;
      e.tombstone = true;
      e.version = ++this.ownCounter;
      e.changedAt = this.clock.now();
      this.asserted.add(k);
      removed.push(e);
    }
    if (removed.length) {
      this.changed();
      this.saveOwn();
      this.publish(removed);
      this.log.debug({ name: n, addr: a, containerId: filter.containerId, n: removed.length }, 'records removed');
    }
    return removed.length;
  }

  removeContainer(containerId: string): number {
    return this.remove({ containerId });
  }

  /**
   * The mesh's current set of reachable peers: drops the records of every origin not in it (the peer
   * is gone) and forgets the departure of peers that are back. Call on every topology change.
   */
  updatePeers(live: Iterable<PeerName>): void {
    const set = new Set(live);
    this.live = set;
    const back = new Set<PeerName>();
    for (const p of set) {
      this.known.add(p);
      if (this.departed.delete(p)) back.add(p);
      this.unknownSince.delete(p);
    }
    this.reconcilePeers();
    if (back.size && this.parked.size) this.unpark(back);
    if (this.held.size) this.handBack(set);
  }

  /**
   * Sends each live origin the records of it we held since it departed: if it lost them (a damaged or
   * deleted file) it takes them back and re-announces them; if not, its own newer state wins there.
   */
  private handBack(live: Set<PeerName>): void {
    if (!this.channel) return;
    const by = new Map<PeerName, Array<[string, StoredEntry]>>();
    for (const [k, e] of this.held) {
      if (!live.has(e.origin) || e.origin === this.self) continue;
      let l = by.get(e.origin);
      if (!l) by.set(e.origin, (l = []));
      l.push([k, e]);
    }
    for (const [origin, list] of by) {
      const msgs = encodeEntries(list.map(([, e]) => e));
      let ok = true;
      for (const m of msgs) ok = this.channel.gossipUnicast(origin, m) && ok;
      if (!ok) continue; // no route yet: the next topology change or GC tick tries again
      for (const [k] of list) this.held.delete(k);
      this.counters.handedBack += list.length;
      this.log.info({ peer: origin, records: list.length }, 'handed a returning peer back the records it had when it left');
    }
  }

  private unpark(origins: Set<PeerName>): void {
    const revived: StoredEntry[] = [];
    for (const [k, e] of this.parked) {
      if (!origins.has(e.origin)) continue;
      this.parked.delete(k);
      revived.push(e);
    }
    if (!revived.length) return;
    const delta = this.mergeEntries(revived);
    this.counters.unparked += revived.length;
    // pass them on: neighbours that dropped them too may not hear from the origin directly
    if (delta && this.channel) this.channel.gossip(delta);
  }

  private reconcilePeers(): void {
    const live = this.live;
    if (live === null) return;
    const now = this.clock.now();
    const gone = new Set<PeerName>();
    for (const e of this.entries.values()) {
      const o = e.origin;
      if (o === this.self || live.has(o) || gone.has(o)) continue;
      if (this.known.has(o)) {
        gone.add(o);
      } else {
        // records from a peer the topology has not shown us yet: give the topology time to catch up
        const since = this.unknownSince.get(o);
        if (since === undefined) this.unknownSince.set(o, now);
        else if (now - since >= this.unknownGraceMs) gone.add(o);
      }
    }
    for (const p of gone) {
      this.known.delete(p);
      this.unknownSince.delete(p);
      this.removePeer(p);
    }
  }

  /** The mesh says peer p is gone: drop its records locally (not gossiped; every peer does the same). */
  removePeer(p: PeerName): number {
    if (p === this.self) return 0;
    this.departed.set(p, this.clock.now());
    for (const [k, e] of this.parked) if (e.origin === p) this.parked.delete(k);
    let n = 0;
    const until = this.clock.now() + this.departedKeepMs;
    for (const [k, e] of this.entries) {
      if (e.origin === p) {
        this.entries.delete(k);
        if (this.held.size < MAX_HELD || this.held.has(k)) this.held.set(k, { ...e, until });
        n++;
      }
    }
    if (n) {
      this.counters.peersRemoved++;
      this.changed();
      this.log.info({ peer: p, records: n }, 'dropped records of departed peer');
    }
    return n;
  }

  /** Drops tombstones older than the TTL. Returns how many. */
  gc(): number {
    const now = this.clock.now();
    let n = 0;
    let own = false;
    for (const [k, e] of this.entries) {
      if (e.tombstone && now - e.changedAt >= this.tombstoneTtlMs) {
        if (e.origin === this.self) {
          this.ownGcFloor = Math.max(this.ownGcFloor, e.version);
          own = true;
        }
        this.entries.delete(k);
        n++;
      }
    }
    if (own) this.saveOwn();
    this.counters.tombstonesCollected += n;
    for (const [p, at] of this.departed) if (now - at >= this.tombstoneTtlMs) this.departed.delete(p);
    for (const [k, e] of this.parked) if (now - e.changedAt >= this.unknownGraceMs) this.parked.delete(k);
    for (const [k, e] of this.held) if (now >= e.until) this.held.delete(k);
    this.reconcilePeers();
    if (this.held.size && this.live) this.handBack(this.live);
    return n;
  }

  // ---- queries ----

  /** Live addresses for a name (any case, with or without the trailing dot), deduplicated across origins. */
  lookup(name: string): string[] {
    this.ensureIndex();
    let n = name.toLowerCase();
    if (!n.endsWith('.')) n += '.';
    return this.byName.get(n)?.slice() ?? [];
  }

  /** Live names for an address. */
  reverse(addr: string): string[] {
    this.ensureIndex();
    return this.byAddr.get(addr)?.slice() ?? [];
  }

  /** Live (name -> unique addrs) view; the map is rebuilt on change, callers must not mutate it. */
  liveNames(): ReadonlyMap<string, readonly string[]> {
    this.ensureIndex();
    return this.byName;
  }

  /** Every entry including tombstones, sorted (status, tests). */
  all(): DnsEntry[] {
    return [...this.entries.values()].map(copyEntry).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.addr < b.addr ? -1 : a.addr > b.addr ? 1 : a.origin < b.origin ? -1 : 1));
  }

  // ---- Gossiper ----

  gossip(): GossipData | null {
    if (this.entries.size === 0) return null;
    return new DnsRecordSet(this.entries.values());
  }

  onGossip(update: Uint8Array): GossipData | null {
    return this.receive(update);
  }

  onGossipBroadcast(src: PeerName, update: Uint8Array): GossipData | null {
    return this.receive(update, src);
  }

  onGossipUnicast(src: PeerName, msg: Uint8Array): void {
    // the only unicast on this channel: a peer handing back our records (handBack)
    this.receive(msg, src, true);
  }

  /** Merges a decoded set (also used by tests and by in-process meshes). Returns the delta that was new. */
  mergeEntries(incoming: Iterable<DnsEntry>, src?: PeerName, opts: { handedBack?: boolean } = {}): DnsRecordSet | null {
    const delta = new DnsRecordSet();
    const reasserted: StoredEntry[] = [];
    const relearned: StoredEntry[] = [];
    const now = this.clock.now();
    let ownChanged = false;
    for (const e of incoming) {
      const k = entryKey(e.name, e.addr, e.origin);
      const cur = this.entries.get(k);
      if (e.origin === this.self) {
        if (e.version > this.ownCounter) this.ownCounter = e.version;
        if (this.asserted.has(k)) {
          if (cur && beats(e, cur)) {
            // Someone holds an older incarnation of our record with a higher version (we restarted):
            // the owner's current state wins, re-issued above theirs.
            cur.version = ++this.ownCounter;
            cur.changedAt = now;
            reasserted.push(cur);
            delta.add(cur);
            this.counters.reasserted++;
            ownChanged = true;
          }
          continue;
        }
        if (!cur && e.version <= this.ownGcFloor) continue;
      } else if (this.departed.has(e.origin)) {
        this.counters.entriesIgnoredDeadOrigin++;
        const p = this.parked.get(k);
        if ((p ? beats(e, p) : this.parked.size < MAX_PARKED)) this.parked.set(k, { ...copyEntry(e), changedAt: now });
        continue;
      }
      if (cur && !beats(e, cur)) continue;
      const s: StoredEntry = { ...copyEntry(e), changedAt: now };
      this.entries.set(k, s);
      if (e.origin === this.self) {
        ownChanged = true;
        relearned.push(s);
      }
      delta.add(s);
      this.counters.entriesAccepted++;
    }
    if (delta.size === 0) return null;
    this.changed();
    if (ownChanged) this.saveOwn();
    if (reasserted.length) this.publish(reasserted);
    if (relearned.length) {
      this.counters.relearned += relearned.length;
      this.relearnedFrom.add(src ?? 'a peer');
      this.log.info({ records: relearned.length, from: src }, 'own dns records re-learned from peers');
      // handed back by a peer that held them since we left: the others dropped them too. Right after
      // we came back the broadcast routes may not include our neighbours yet: neighbour gossip too.
      if (opts.handedBack) {
        this.publish(relearned);
        this.channel?.gossip(new DnsRecordSet(relearned));
      }
      this.onOwnRelearned();
    }
    return delta;
  }

  /** What was lost from our saved records and re-learned from peers (the router's state report). */
  recovery(): StateRecovery[] {
    const lost = this.loadProblem;
    const none = this.counters.loadedFromDisk === 0 && this.counters.relearned > 0;
    if (!lost && !none) return [];
    const file = this.persistence?.label ?? 'dns records';
    const from = this.relearnedFrom.size ? `peers' gossip (records with us as origin, from ${[...this.relearnedFrom].join(', ')})` : "peers' gossip (records with us as origin)";
    const got = this.counters.relearned ? `${this.counters.relearned} own records re-learned and announced again` : 'waiting for peers to hand our records back';
    const r: StateRecovery = lost
      ? { file, problem: lost.problem, action: `${lost.movedTo ? `moved aside to ${path.basename(lost.movedTo)}; ` : ''}${got}`, from, at: lost.at }
      : { file, problem: 'held none of our records (missing or lost)', action: got, from, at: this.clock.now() };
    if (lost?.movedTo) r.movedTo = lost.movedTo;
    return [r];
  }

  private receive(buf: Uint8Array, src?: PeerName, handedBack = false): GossipData | null {
    this.counters.gossipReceived++;
    let entries: DnsEntry[];
    try {
      entries = decodeEntries(buf);
    } catch (e) {
      this.counters.gossipMalformed++;
      // The mesh treats a ProtocolError as fatal for that connection; count and pass it up.
      this.log.warn({ err: (e as Error).message }, 'malformed dns gossip');
      throw e;
    }
    return this.mergeEntries(entries, src, { handedBack });
  }

  private publish(entries: StoredEntry[]): void {
    if (this.channel) this.channel.gossipBroadcast(new DnsRecordSet(entries));
  }

  private changed(): void {
    this.generation++;
  }

  private ensureIndex(): void {
    if (this.indexGen === this.generation) return;
    const byName = new Map<string, string[]>();
    const byAddr = new Map<string, string[]>();
    for (const e of this.entries.values()) {
      if (e.tombstone) continue;
      const addrs = byName.get(e.name);
      if (!addrs) byName.set(e.name, [e.addr]);
      else if (!addrs.includes(e.addr)) addrs.push(e.addr);
      const names = byAddr.get(e.addr);
      if (!names) byAddr.set(e.addr, [e.name]);
      else if (!names.includes(e.name)) names.push(e.name);
    }
    this.byName = byName;
    this.byAddr = byAddr;
    this.indexGen = this.generation;
  }
}
