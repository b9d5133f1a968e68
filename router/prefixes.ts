// Prefix announcements: gossip channel 'prefixes'. Each router announces the prefixes it serves
// (attached container /32s, exposed addresses, later IPAM ranges) as {origin, version, prefixes}.
// Entries merge by version per origin (only the origin edits its own entry). Versions start at the
// clock's time when the router starts, so a restarted router's announcements supersede its old ones
// without coordination; if we still see a newer entry of our own name we outbid it.
// Peers the mesh no longer reaches are set aside (setReachable): their entry stops attracting traffic
// and copies of it gossiped back by others are refused; when the peer is reachable again (a flapping
// link, a connection replaced, a restart of a third router), the entry comes back at once unless a
// newer one arrived meanwhile. Without that, a peer that dropped out for a moment stayed unrouted until
// it happened to announce something new.
import { ProtocolError, describeValue, errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';
import type { Clock } from '../lib/clock';
import { isPeerName, type PeerName } from '../mesh/peer';
import type { GossipChannel, GossipData, Gossiper } from '../mesh/types';
import { decodeMsg, encodeMsg } from '../mesh/codec';
import { formatCidr, parseCidr, tryParseCidr } from '../lib/addr';
import { versionDigest } from '../mesh/gossip';

export const PREFIXES_CHANNEL = 'prefixes';
const WIRE_VERSION = 1;
const MAX_ORIGINS = 100_000;
const MAX_PREFIXES = 65_536;
/** Announced prefixes may carry host bits or be a bare address (a /32); they are kept canonical. */
const PREFIX_SPELLING = { allowBare: true, allowHostBits: true } as const;

export interface PrefixEntry {
  version: number;
  prefixes: readonly string[];
}

export class PrefixUpdate implements GossipData {
  constructor(readonly entries: Map<PeerName, PrefixEntry> = new Map()) {}
  encode(): Uint8Array[] {
    const list = [...this.entries].map(([o, e]) => ({ o, ver: e.version, p: [...e.prefixes] }));
    return [encodeMsg({ v: WIRE_VERSION, entries: list })];
  }
  merge(other: GossipData): GossipData {
    if (!(other instanceof PrefixUpdate)) return this;
    for (const [o, e] of other.entries) {
      const mine = this.entries.get(o);
      if (!mine || e.version > mine.version) this.entries.set(o, e);
    }
    return this;
  }
}

/** Validates a wire update; throws ProtocolError on anything malformed. Prefixes come back canonical. */
export function decodePrefixUpdate(buf: Uint8Array): PrefixUpdate {
  const m = decodeMsg(buf, 'prefixes gossip');
  if (typeof m !== 'object' || m === null || Array.isArray(m)) throw new ProtocolError('prefixes gossip: expected a map');
  const o = m as Record<string, unknown>;
  if (o.v !== WIRE_VERSION) throw new ProtocolError('prefixes gossip: unsupported version', { v: describeValue(o.v) });
  if (!Array.isArray(o.entries) || o.entries.length > MAX_ORIGINS) throw new ProtocolError('prefixes gossip: entries must be an array');
  const out = new Map<PeerName, PrefixEntry>();
  for (const raw of o.entries) {
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ProtocolError('prefixes gossip: entry must be a map');
    const e = raw as Record<string, unknown>;
    if (typeof e.o !== 'string' || !isPeerName(e.o)) throw new ProtocolError('prefixes gossip: bad origin', { origin: describeValue(e.o) });
    if (typeof e.ver !== 'number' || !Number.isSafeInteger(e.ver) || e.ver < 0) throw new ProtocolError('prefixes gossip: bad version', { origin: e.o });
    if (!Array.isArray(e.p) || e.p.length > MAX_PREFIXES) throw new ProtocolError('prefixes gossip: prefixes must be an array', { origin: e.o });
    const prefixes: string[] = [];
    for (const s of e.p) {
      const p = tryParseCidr(s, PREFIX_SPELLING);
      if (!p) throw new ProtocolError('prefixes gossip: bad prefix', { origin: e.o, prefix: describeValue(s) });
      prefixes.push(formatCidr(p));
    }
    const prev = out.get(e.o);
    if (!prev || e.ver > prev.version) out.set(e.o, { version: e.ver, prefixes });
  }
  return new PrefixUpdate(out);
}

function samePrefixes(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export class PrefixTable implements Gossiper {
  private readonly entries = new Map<PeerName, PrefixEntry>();
  /** entries of peers that were reachable and are not now: refuse older copies, restore on return */
  private readonly departed = new Map<PeerName, PrefixEntry>();
  private reachable = new Set<PeerName>();
  private readonly listeners = new Set<() => void>();
  private channel: GossipChannel | null = null;
  private readonly log: Logger;
  /** counters for metrics */
  readonly stats = { updatesApplied: 0, malformed: 0 };

  constructor(readonly self: PeerName, clock: Clock, log: Logger) {
    this.log = log.child({ component: 'prefixes' });
    this.entries.set(self, { version: Math.max(1, Math.floor(clock.now())), prefixes: [] });
  }

  /** The channel from the mesh's gossip registration; local changes are broadcast on it. */
  setChannel(ch: GossipChannel): void {
    this.channel = ch;
  }

  onChange(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Replaces what this router announces. Prefixes are validated and made canonical (sorted, unique). */
  setLocal(prefixes: readonly string[]): void {
    const canon = [...new Set(prefixes.map((s) => formatCidr(parseCidr(s, { ...PREFIX_SPELLING, what: 'prefix' }))))].sort();
    const mine = this.entries.get(this.self)!;
    if (samePrefixes(mine.prefixes, canon)) return;
    const next = { version: mine.version + 1, prefixes: canon };
    this.entries.set(this.self, next);
    this.log.info({ prefixes: canon, version: next.version }, 'announcing prefixes');
    // Broadcast reaches every peer at once where routes exist; neighbour gossip also reaches peers
    // whose connection is still pending (no broadcast route yet) and floods on from there.
    const update = new PrefixUpdate(new Map([[this.self, next]]));
    this.channel?.gossipBroadcast(update);
    this.channel?.gossip(update);
    this.changed();
  }

  local(): readonly string[] {
    return this.entries.get(this.self)!.prefixes;
  }

  /** Drops the entry of a peer that left the network (and refuses its old versions later). */
  removePeer(name: PeerName): void {
    if (name === this.self) return;
    const e = this.entries.get(name);
    if (!e) return;
    this.entries.delete(name);
    this.departed.set(name, e);
    this.changed();
  }

  /**
   * The peers the mesh reaches now (its peersChanged). Peers that were reachable and are not now leave
   * (removePeer); departed peers reachable again get their entry back unless a newer one arrived. A
   * peer never reachable so far keeps its entry: its gossip may come before its connection is up.
   */
  setReachable(names: Iterable<PeerName>): void {
    const now = new Set(names);
    let restored = false;
    for (const p of this.reachable) if (!now.has(p)) this.removePeer(p);
    for (const p of now) {
      const e = this.departed.get(p);
      if (!e) continue;
      this.departed.delete(p);
      if (this.entries.has(p)) continue;
      this.entries.set(p, e);
      restored = true;
      this.log.debug({ peer: p, version: e.version }, 'peer reachable again: its prefixes are routed again');
    }
    this.reachable = now;
    if (restored) this.changed();
  }

  /** Snapshot origin -> entry (including ours). */
  all(): ReadonlyMap<PeerName, PrefixEntry> {
    return this.entries;
  }

  full(): PrefixUpdate {
    return new PrefixUpdate(new Map(this.entries));
  }

  /** Merges an update; returns what was new to us (null when nothing). */
  mergeUpdate(u: PrefixUpdate): PrefixUpdate | null {
    const delta = new Map<PeerName, PrefixEntry>();
    let outbid = false;
    for (const [o, e] of u.entries) {
      if (o === this.self) {
        const mine = this.entries.get(o)!;
        // Someone holds a newer entry of ours (from before a restart with a clock behind): outbid it.
        if (e.version >= mine.version && !(e.version === mine.version && samePrefixes(e.prefixes, mine.prefixes))) {
          this.entries.set(o, { version: e.version + 1, prefixes: mine.prefixes });
          outbid = true;
        }
        continue;
      }
      const dead = this.departed.get(o);
      if (dead !== undefined) {
        if (e.version <= dead.version) continue;
        this.departed.delete(o);
      }
      const cur = this.entries.get(o);
      if (cur && cur.version >= e.version) continue;
      this.entries.set(o, e);
      delta.set(o, e);
    }
    if (outbid) {
      const mine = this.entries.get(this.self)!;
      this.log.info({ version: mine.version }, 'outbid a stale announcement of our own prefixes');
      delta.set(this.self, mine);
      this.channel?.gossipBroadcast(new PrefixUpdate(new Map([[this.self, mine]])));
    }
    if (delta.size === 0) return null;
    this.stats.updatesApplied++;
    this.changed();
    return new PrefixUpdate(delta);
  }

  private decode(buf: Uint8Array, from: string): PrefixUpdate | null {
    try {
      return decodePrefixUpdate(buf);
    } catch (e) {
      this.stats.malformed++;
      this.log.warn({ from, err: errMsg(e) }, 'dropping malformed prefixes gossip');
      throw e;
    }
  }

  // ---- Gossiper ----
  onGossipUnicast(src: PeerName, _msg: Uint8Array): void {
    this.log.debug({ src }, 'ignoring unicast on the prefixes channel');
  }
  onGossipBroadcast(src: PeerName, update: Uint8Array): GossipData | null {
    const u = this.decode(update, src);
    return u ? this.mergeUpdate(u) : null;
  }
  /** Periodic repair by digest (mesh/gossip.ts): origins and their versions. */
  digest(): Uint8Array {
    return versionDigest([...this.entries].map(([o, e]) => [o, e.version] as const));
  }
  gossip(): GossipData | null {
    return this.full();
  }
  onGossip(update: Uint8Array): GossipData | null {
    const u = this.decode(update, 'gossip');
    return u ? this.mergeUpdate(u) : null;
  }

  private changed(): void {
    for (const fn of this.listeners) {
      try {
        fn();
      } catch (e) {
        this.log.error({ err: errMsg(e) }, 'prefixes change listener failed');
      }
    }
  }
}
