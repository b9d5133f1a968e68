// The topology: one record per known peer, each written only by that peer and versioned by it.
//
// Merge rule (same as Weave's mesh): for one peer name, the record with the higher version wins,
// whatever its uid. Equal versions with different uids (two incarnations that happened to reach the
// same number) are ordered by uid so every peer picks the same one. A restarted peer starts again
// at version 1 with a new uid; when it hears a record about its own name with another uid (its
// previous incarnation, still gossiped by others) it jumps its own version above that record, so
// its new record replaces the stale one everywhere. Records about ourselves are never merged in.
//
// Reachability: an edge A-B counts only when A lists B as established AND B lists A as established;
// only those edges carry routes, and records of peers not reachable from us over them are dropped
// (GC) after each recompute, so dead peers and the far side of a partition leave our view.
//
// Dropped records are remembered (drop()): neighbours that have not dropped a dead peer yet still
// hold its last record and offer it in every digest exchange, and taking it back would show the dead
// peer again and pass it on as news, so views flapped for half a minute after peers died. A record of
// the same incarnation no newer than the dropped one is refused; a newer version or another uid (a
// restart) is a live peer and is taken. When the far side of a healed partition comes back with an
// unchanged record, the caller lifts the memory (forgetDropped) once a reachable peer lists it again.
//
// Deltas: a record lists all of its owner's connections (~3 KB at 100 peers) and every version of
// it reaches every peer, so while 100 routers form, whole records were half of each router's control
// traffic. A version can instead travel as the change from an earlier one (RecordDelta: connections
// added or changed, names removed, the nickname if it changed). Since (name, uid, version) fixes a
// record's content, a receiver holding exactly the delta's base makes exactly the owner's record
// (connections in name order, as owners keep them), so digests and hashes agree with full records.
// A receiver without that base (a gap, another incarnation, a dropped record) must not guess: it
// reports the name missing and the caller fetches the full record. Deltas ride in Records messages
// (field x) beside full records; a router that predates them must never get one (it ignores the field
// today, but the mesh offers deltas in the handshake's features and sends them only where both
// ends did), and decoding stays as strict as for full records.
import { createHash } from 'crypto';
import { ProtocolError } from '../lib/errors';
import type { PeerName } from './peer';
import { decodeMsg, encodeMsg, encodeMsgWithPacked, wantArray, wantBool, wantInt, wantObject, wantPeerName, wantString, wantVersion } from './codec';

export interface ConnInfo {
  name: PeerName;
  /** an address the remote peer can be dialled on (ip we see it on + its listen port) */
  address: string;
  outbound: boolean;
  established: boolean;
}

export interface PeerRecord {
  name: PeerName;
  nickname: string;
  uid: string;
  version: number;
  connections: ConnInfo[];
}

/**
 * A record version as the change from an earlier version of the same incarnation (see the header):
 * connections added or changed, names of connections removed, the nickname only when it changed.
 */
export interface RecordDelta {
  name: PeerName;
  uid: string;
  /** the version this delta applies to; the receiver must hold exactly (name, uid, base) */
  base: number;
  version: number;
  nickname?: string;
  changed: ConnInfo[];
  removed: PeerName[];
}

export const TOPOLOGY_WIRE_VERSION = 1;
const MAX_PEERS = 100_000;
const MAX_CONNS = 10_000;

/** Kinds of Msg.Topology payloads. */
export const TopoKind = {
  /** records (full or delta); `want` lists names the receiver should send back */
  Records: 0,
  /** (name, uid, version) of every record the sender holds: "send me what I lack" */
  Digest: 1,
  /** hash of the sender's digest: cheap periodic check that neighbours agree */
  Hash: 2,
  /** the sender refuses this connection (code + reason) and is about to close it */
  Refused: 3,
} as const;

export type DigestEntry = [PeerName, string, number];

export type TopologyMsg =
  | { kind: 0; peers: PeerRecord[]; want: PeerName[]; deltas?: RecordDelta[] }
  | { kind: 1; digest: DigestEntry[] }
  | { kind: 2; hash: string }
  | { kind: 3; code: string; message: string };

/** Does record a (uid, version) supersede b? */
export function newerThan(a: { uid: string; version: number }, b: { uid: string; version: number }): boolean {
  if (a.version !== b.version) return a.version > b.version;
  return a.uid > b.uid;
}

export interface MergeResult {
  /** names whose record we replaced or learned: news to pass on */
  changed: PeerName[];
  /** names the sender holds exactly as we do */
  same: PeerName[];
  /** names the sender holds an older record of than ours */
  older: PeerName[];
  /** names whose record was refused: the same incarnation we dropped as unreachable, no newer */
  dropped: PeerName[];
  /** highest version seen of a record about our own name with a uid other than ours */
  selfConflict?: { uid: string; version: number; nickname: string };
}

export interface DeltaMergeResult extends MergeResult {
  /** names whose delta did not apply (we lack its base): ask the sender for the full record */
  missing: PeerName[];
  /** for each changed name, the record the delta was applied to (a relay passes the change on from it) */
  bases: Map<PeerName, PeerRecord>;
}

/** A record dropped as unreachable, and when. */
export interface DroppedRecord { record: PeerRecord; at: number }

export class Topology {
  readonly self: PeerName;
  private readonly peers = new Map<PeerName, PeerRecord>();
  private readonly droppedRecords = new Map<PeerName, DroppedRecord>();
  private hashCache: string | null = null;
  private digestCache: DigestEntry[] | null = null;
  /** bumped on every change; lets callers detect "something changed since" cheaply */
  generation = 0;

  constructor(self: { name: PeerName; nickname: string; uid: string }) {
    this.self = self.name;
    this.peers.set(self.name, { name: self.name, nickname: self.nickname, uid: self.uid, version: 1, connections: [] });
  }

  get ourself(): PeerRecord {
    return this.peers.get(this.self)!;
  }

  get(name: PeerName): PeerRecord | undefined {
    return this.peers.get(name);
  }

  names(): PeerName[] {
    return [...this.peers.keys()];
  }

  records(): IterableIterator<PeerRecord> {
    return this.peers.values();
  }

  size(): number {
    return this.peers.size;
  }

  private touched(): void {
    this.generation++;
    this.hashCache = null;
    this.digestCache = null;
  }

  /** Replaces our own connection list; bumps our version when it differs. Returns whether it did. */
  setLocalConnections(conns: ConnInfo[]): boolean {
    const me = this.ourself;
    const sorted = [...conns].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    if (sameConns(me.connections, sorted)) return false;
    this.peers.set(this.self, { ...me, version: me.version + 1, connections: sorted });
    this.touched();
    return true;
  }

  /** Raises our version above `version` (a stale incarnation of us is still gossiped). */
  bumpSelfAbove(version: number): void {
    const me = this.ourself;
    if (me.version > version) return;
    this.peers.set(this.self, { ...me, version: version + 1 });
    this.touched();
  }

  merge(records: PeerRecord[]): MergeResult {
    const res: MergeResult = { changed: [], same: [], older: [], dropped: [] };
    for (const r of records) this.mergeOne(r, () => r, res);
    if (res.changed.length) this.touched();
    return res;
  }

  /**
   * Applies deltas whose base we hold: the same rule as merge for each delta's (name, uid, version),
   * and a delta we cannot apply (we lack its base, or it does not fit the base) is reported missing.
   */
  mergeDeltas(deltas: RecordDelta[]): DeltaMergeResult {
    const res: DeltaMergeResult = { changed: [], same: [], older: [], dropped: [], missing: [], bases: new Map() };
    for (const d of deltas) {
      this.mergeOne({ name: d.name, uid: d.uid, version: d.version, nickname: d.nickname ?? '' }, (cur) => {
        const next = cur ? applyDelta(cur, d) : null;
        if (!next) res.missing.push(d.name);
        else res.bases.set(d.name, cur!);
        return next;
      }, res);
    }
    if (res.changed.length) this.touched();
    return res;
  }

  /** The merge rule for one record; build gives the record to store (null: cannot build it, skip). */
  private mergeOne(r: { name: PeerName; uid: string; version: number; nickname: string }, build: (cur: PeerRecord | undefined) => PeerRecord | null, res: MergeResult): void {
    if (r.name === this.self) {
      const me = this.ourself;
      if (r.uid !== me.uid && (!res.selfConflict || r.version > res.selfConflict.version)) res.selfConflict = { uid: r.uid, version: r.version, nickname: r.nickname };
      else if (r.uid === me.uid && r.version < me.version) res.older.push(r.name);
      return;
    }
    const cur = this.peers.get(r.name);
    if (cur && !newerThan(r, cur)) {
      if (cur.uid === r.uid && cur.version === r.version) res.same.push(r.name);
      else res.older.push(r.name);
      return;
    }
    if (this.isDropped(r)) {
      res.dropped.push(r.name);
      return;
    }
    const next = build(cur);
    if (!next) return;
    // a newer version of the dropped incarnation is alive after all; a restart's record leaves the
    // memory in place, so copies of the previous incarnation stay out
    if (this.droppedRecords.get(r.name)?.record.uid === r.uid) this.droppedRecords.delete(r.name);
    this.peers.set(r.name, next);
    res.changed.push(r.name);
  }

  /** Is r (or the record a digest entry names) the incarnation we dropped, at no newer a version? */
  private isDropped(r: { name: PeerName; uid: string; version: number }): boolean {
    const d = this.droppedRecords.get(r.name)?.record;
    return d !== undefined && d.uid === r.uid && !newerThan(r, d);
  }

  /** Removes records as unreachable (never our own), remembering each so stale copies stay out. */
  drop(names: PeerName[], now: number): void {
    for (const n of names) {
      const r = this.peers.get(n);
      if (r && n !== this.self) this.droppedRecords.set(n, { record: r, at: now });
    }
    this.remove(names);
  }

  /** The dropped record of name, if we remember one. */
  droppedRecord(name: PeerName): DroppedRecord | undefined {
    return this.droppedRecords.get(name);
  }

  /** Takes name's dropped record back as possibly live: its copies are accepted again. */
  forgetDropped(name: PeerName): void {
    this.droppedRecords.delete(name);
  }

  /** Forgets records dropped before `before` (by then no neighbour holds them); returns how many remain. */
  expireDropped(before: number): number {
    for (const [n, d] of this.droppedRecords) if (d.at < before) this.droppedRecords.delete(n);
    return this.droppedRecords.size;
  }

  // Records are immutable once stored (a change replaces the object), so the set is cached per object.
  private readonly establishedCache = new WeakMap<PeerRecord, Set<PeerName>>();
  private establishedSet(r: PeerRecord): Set<PeerName> {
    let s = this.establishedCache.get(r);
    if (!s) {
      s = new Set();
      for (const c of r.connections) if (c.established) s.add(c.name);
      this.establishedCache.set(r, s);
    }
    return s;
  }

  /** Adjacency over symmetric established connections, neighbours sorted by name. */
  adjacency(): Map<PeerName, PeerName[]> {
    const adj = new Map<PeerName, PeerName[]>();
    for (const r of this.peers.values()) {
      const out: PeerName[] = [];
      for (const c of r.connections) {
        if (!c.established || c.name === r.name) continue;
        const other = this.peers.get(c.name);
        if (!other) continue;
        if (this.establishedSet(other).has(r.name)) out.push(c.name);
      }
      // records list connections sorted (setLocalConnections): checking is O(k), sorting is what cost
      if (!sortedNames(out)) out.sort();
      adj.set(r.name, out);
    }
    return adj;
  }

  /** Names reachable from us over symmetric established connections (including us). */
  reachable(adj: Map<PeerName, PeerName[]> = this.adjacency()): Set<PeerName> {
    const seen = new Set<PeerName>([this.self]);
    const queue: PeerName[] = [this.self];
    for (let i = 0; i < queue.length; i++) {
      for (const n of adj.get(queue[i]) ?? []) {
        if (!seen.has(n)) {
          seen.add(n);
          queue.push(n);
        }
      }
    }
    return seen;
  }

  /** Removes records (never our own). */
  remove(names: PeerName[]): void {
    let any = false;
    for (const n of names) if (n !== this.self && this.peers.delete(n)) any = true;
    if (any) this.touched();
  }

  /** Drops every record not reachable from us; returns the dropped names. */
  gc(adj: Map<PeerName, PeerName[]> = this.adjacency()): PeerName[] {
    const seen = this.reachable(adj);
    const removed = this.names().filter((n) => !seen.has(n));
    this.remove(removed);
    for (const n of removed) adj.delete(n);
    return removed;
  }

  digest(): DigestEntry[] {
    if (!this.digestCache) {
      const d: DigestEntry[] = [];
      for (const r of this.peers.values()) d.push([r.name, r.uid, r.version]);
      d.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
      this.digestCache = d;
    }
    return this.digestCache;
  }

  /** Hash of the digest: equal hashes mean equal views (a (name, uid, version) fixes the record). */
  hash(): string {
    if (this.hashCache === null) {
      const h = createHash('sha256');
      for (const [n, u, v] of this.digest()) h.update(`${n} ${u} ${v}\n`);
      this.hashCache = h.digest('base64').slice(0, 16);
    }
    return this.hashCache;
  }

  /**
   * Given a neighbour's digest: the records we should send it (it lacks them or holds older ones)
   * and the names we should ask for (it holds newer ones, or ones we lack).
   * `inFlight(name)`: our copy of that record changed so recently that news of it is still on its way
   * (ours to the neighbour, or a newer one to us): a version difference of the same incarnation is
   * then left to the news instead of being repaired by a full record (see mesh.ts, settle checks).
   * A record one side lacks, or of another incarnation, is always exchanged.
   */
  reconcile(digest: DigestEntry[], inFlight: (name: PeerName) => boolean = () => false): { send: PeerRecord[]; want: PeerName[]; selfConflict?: { uid: string; version: number } } {
    const theirs = new Map<PeerName, DigestEntry>();
    for (const e of digest) theirs.set(e[0], e);
    const send: PeerRecord[] = [];
    const want: PeerName[] = [];
    for (const r of this.peers.values()) {
      const t = theirs.get(r.name);
      if (!t || (newerThan(r, { uid: t[1], version: t[2] }) && !(t[1] === r.uid && inFlight(r.name)))) send.push(r);
    }
    let selfConflict: { uid: string; version: number } | undefined;
    for (const [n, u, v] of digest) {
      if (n === this.self) {
        if (u !== this.ourself.uid && (!selfConflict || v > selfConflict.version)) selfConflict = { uid: u, version: v };
        continue;
      }
      const r = this.peers.get(n);
      if ((!r || (newerThan({ uid: u, version: v }, r) && !(u === r.uid && inFlight(n)))) && !this.isDropped({ name: n, uid: u, version: v })) want.push(n);
    }
    return selfConflict ? { send, want, selfConflict } : { send, want };
  }
}

/**
 * The change from base to r as a delta, or null when there is none to send: another peer or
 * incarnation, or r is not newer than base.
 */
export function recordDelta(base: PeerRecord, r: PeerRecord): RecordDelta | null {
  if (base.name !== r.name || base.uid !== r.uid || base.version >= r.version) return null;
  const before = new Map<PeerName, ConnInfo>();
  for (const c of base.connections) before.set(c.name, c);
  const changed: ConnInfo[] = [];
  for (const c of r.connections) {
    const b = before.get(c.name);
    if (!b || b.address !== c.address || b.outbound !== c.outbound || b.established !== c.established) changed.push(c);
    before.delete(c.name);
  }
  const d: RecordDelta = { name: r.name, uid: r.uid, base: base.version, version: r.version, changed, removed: [...before.keys()] };
  if (r.nickname !== base.nickname) d.nickname = r.nickname;
  return d;
}

/**
 * The record d makes of base, or null when d does not belong to base (another peer, incarnation or
 * version) or does not fit it (removes a connection base lacks, or grows past MAX_CONNS): the
 * receiver then asks for the full record. Connections come out sorted by name, as their owner keeps
 * them (setLocalConnections), so the result is the owner's record exactly.
 */
export function applyDelta(base: PeerRecord, d: RecordDelta): PeerRecord | null {
  if (base.name !== d.name || base.uid !== d.uid || base.version !== d.base) return null;
  const conns = new Map<PeerName, ConnInfo>();
  for (const c of base.connections) conns.set(c.name, c);
  for (const n of d.removed) if (!conns.delete(n)) return null;
  for (const c of d.changed) conns.set(c.name, c);
  if (conns.size > MAX_CONNS) return null;
  const connections = [...conns.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { name: d.name, nickname: d.nickname ?? base.nickname, uid: d.uid, version: d.version, connections };
}

/** Is d (the change to r) worth sending instead of r, i.e. smaller on the wire? */
export function preferDelta(d: RecordDelta, r: PeerRecord): boolean {
  return encodeMsg(deltaToWire(d)).length < packedRecord(r).length;
}

function sortedNames(a: PeerName[]): boolean {
  for (let i = 1; i < a.length; i++) if (a[i - 1] > a[i]) return false;
  return true;
}

function sameConns(a: ConnInfo[], b: ConnInfo[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    const x = a[i];
    const y = b[i];
    if (x.name !== y.name || x.address !== y.address || x.outbound !== y.outbound || x.established !== y.established) return false;
  }
  return true;
}

// ---- wire format ----
// {v:1, k: 0, p: [[name, nickname, uid, version, [[name, address, outbound 0|1, established 0|1], ...]], ...], w?: [name...],
//               x?: [[name, uid, base, version, nickname|nil, [[connection as in p], ...], [removed name, ...]], ...]}
// {v:1, k: 1, d: [[name, uid, version], ...]}
// {v:1, k: 2, h: string}
// {v:1, k: 3, c: code, m: message}
// Records are arrays rather than maps: a 1000-peer view is sent often enough that repeating keys matters.

function connToWire(c: ConnInfo): unknown[] {
  return [c.name, c.address, c.outbound ? 1 : 0, c.established ? 1 : 0];
}

function recordToWire(r: PeerRecord): unknown[] {
  return [r.name, r.nickname, r.uid, r.version, r.connections.map(connToWire)];
}

function deltaToWire(d: RecordDelta): unknown[] {
  return [d.name, d.uid, d.base, d.version, d.nickname ?? null, d.changed.map(connToWire), d.removed];
}

// Records are immutable (a change replaces the record), so each version is packed once per router
// however many messages carry it.
const packedRecords = new WeakMap<PeerRecord, Uint8Array>();

function packedRecord(r: PeerRecord): Uint8Array {
  let b = packedRecords.get(r);
  if (!b) {
    b = encodeMsg(recordToWire(r));
    packedRecords.set(r, b);
  }
  return b;
}

export function encodeTopology(m: TopologyMsg): Uint8Array {
  switch (m.kind) {
    case TopoKind.Records: {
      const fields: Record<string, unknown> = { v: TOPOLOGY_WIRE_VERSION, k: 0 };
      if (m.want.length) fields.w = m.want;
      if (m.deltas?.length) fields.x = m.deltas.map(deltaToWire);
      return encodeMsgWithPacked(fields, 'p', m.peers.map(packedRecord));
    }
    case TopoKind.Digest:
      return encodeMsg({ v: TOPOLOGY_WIRE_VERSION, k: 1, d: m.digest });
    case TopoKind.Hash:
      return encodeMsg({ v: TOPOLOGY_WIRE_VERSION, k: 2, h: m.hash });
    case TopoKind.Refused:
      return encodeMsg({ v: TOPOLOGY_WIRE_VERSION, k: 3, c: m.code, m: m.message });
  }
}

function decodeRecord(v: unknown, i: number): PeerRecord {
  const what = `topology record ${i}`;
  const a = wantArray(v, what, 5);
  if (a.length !== 5) throw new ProtocolError(`${what}: expected 5 fields`, { got: a.length });
  const name = wantPeerName(a[0], `${what} name`);
  const nickname = wantString(a[1], `${what} nickname`, 255);
  const uid = wantString(a[2], `${what} uid`, 64);
  if (uid.length === 0) throw new ProtocolError(`${what}: empty uid`);
  const version = wantInt(a[3], `${what} version`, 1, Number.MAX_SAFE_INTEGER);
  const connections = decodeConns(a[4], what, name, new Set());
  return { name, nickname, uid, version, connections };
}

/** A list of connections of owner's record; names in seen (and those decoded) may not repeat. */
function decodeConns(v: unknown, what: string, owner: PeerName, seen: Set<PeerName>): ConnInfo[] {
  const rawConns = wantArray(v, `${what} connections`, MAX_CONNS);
  const connections: ConnInfo[] = [];
  for (let j = 0; j < rawConns.length; j++) {
    const cw = `${what} connection ${j}`;
    const c = wantArray(rawConns[j], cw, 4);
    if (c.length !== 4) throw new ProtocolError(`${cw}: expected 4 fields`, { got: c.length });
    const cname = wantPeerName(c[0], `${cw} name`);
    if (cname === owner) throw new ProtocolError(`${cw}: connection to itself`);
    if (seen.has(cname)) throw new ProtocolError(`${cw}: duplicate connection`, { peer: cname });
    seen.add(cname);
    connections.push({ name: cname, address: wantString(c[1], `${cw} address`, 300), outbound: wantBool(c[2], `${cw} outbound`), established: wantBool(c[3], `${cw} established`) });
  }
  return connections;
}

function decodeDelta(v: unknown, i: number): RecordDelta {
  const what = `topology delta ${i}`;
  const a = wantArray(v, what, 7);
  if (a.length !== 7) throw new ProtocolError(`${what}: expected 7 fields`, { got: a.length });
  const name = wantPeerName(a[0], `${what} name`);
  const uid = wantString(a[1], `${what} uid`, 64);
  if (uid.length === 0) throw new ProtocolError(`${what}: empty uid`);
  const base = wantInt(a[2], `${what} base version`, 1, Number.MAX_SAFE_INTEGER - 1);
  const version = wantInt(a[3], `${what} version`, base + 1, Number.MAX_SAFE_INTEGER);
  // one name may appear once, as changed or as removed
  const seen = new Set<PeerName>();
  const changed = decodeConns(a[5], what, name, seen);
  const removed = wantArray(a[6], `${what} removed`, MAX_CONNS).map((n, j) => {
    const rn = wantPeerName(n, `${what} removed ${j}`);
    if (rn === name) throw new ProtocolError(`${what} removed ${j}: connection to itself`);
    if (seen.has(rn)) throw new ProtocolError(`${what} removed ${j}: named twice`, { peer: rn });
    seen.add(rn);
    return rn;
  });
  const d: RecordDelta = { name, uid, base, version, changed, removed };
  if (a[4] !== null) d.nickname = wantString(a[4], `${what} nickname`, 255);
  return d;
}

export function decodeTopology(buf: Uint8Array): TopologyMsg {
  const o = wantObject(decodeMsg(buf, 'topology'), 'topology');
  wantVersion(o, 'topology', TOPOLOGY_WIRE_VERSION);
  const k = wantInt(o.k, 'topology kind', 0, 3);
  if (k === TopoKind.Records) {
    const raw = wantArray(o.p, 'topology records', MAX_PEERS);
    const peers = raw.map(decodeRecord);
    const want: PeerName[] = o.w === undefined ? [] : wantArray(o.w, 'topology want', MAX_PEERS).map((n, i) => wantPeerName(n, `topology want ${i}`));
    if (o.x === undefined) return { kind: 0, peers, want };
    // at most one record or delta per name: which of two would apply first is nobody's business
    const names = new Set(peers.map((p) => p.name));
    const deltas = wantArray(o.x, 'topology deltas', MAX_PEERS).map((v, i) => {
      const d = decodeDelta(v, i);
      if (names.has(d.name)) throw new ProtocolError(`topology delta ${i}: a second record or delta of one peer`, { peer: d.name });
      names.add(d.name);
      return d;
    });
    return { kind: 0, peers, want, deltas };
  }
  if (k === TopoKind.Digest) {
    const raw = wantArray(o.d, 'topology digest', MAX_PEERS);
    const digest: DigestEntry[] = raw.map((e, i) => {
      const what = `topology digest ${i}`;
      const a = wantArray(e, what, 3);
      if (a.length !== 3) throw new ProtocolError(`${what}: expected 3 fields`);
      return [wantPeerName(a[0], `${what} name`), wantString(a[1], `${what} uid`, 64), wantInt(a[2], `${what} version`, 1, Number.MAX_SAFE_INTEGER)];
    });
    return { kind: 1, digest };
  }
  if (k === TopoKind.Hash) return { kind: 2, hash: wantString(o.h, 'topology hash', 64) };
  const code = wantString(o.c, 'topology refusal code', 32);
  if (!/^E[A-Z]+$/.test(code)) throw new ProtocolError('topology refusal: invalid code');
  return { kind: 3, code, message: wantString(o.m, 'topology refusal message', 1024) };
}
