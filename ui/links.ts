// Link gossip (channel 'links'): what each router's connections run on, so one router's page can
// draw the whole mesh with each line's overlay, encryption, MTU and the reason it is not on the best
// overlay. The topology gossip says only who is connected to whom; the overlay of a connection is
// known to its two ends alone.
//
// Pulled by the page, never pushed. Only a page needs other routers' entries, and pushing them cost
// every router O(N) entries of O(N) links each time any connection changed: while 100 routers formed
// a mesh that was half of all control traffic (issue 19). So each router computes its own entry only
// when it is asked for it or shows its own page, and sends nothing else; a router whose page is being looked at asks (ui/part.ts, at most every
// LINKS_PULL_MS):
//   1. the asker broadcasts an ask carrying the (origin, version) pairs it holds (a few bytes a peer);
//   2. every router whose own entry is newer than the asker's copy (or absent from it) sends that
//      entry back by unicast, routed by next hop to the asker;
//   3. the asker merges by version (as router/prefixes.ts); the stream's next delta carries it.
// The channel has no digest and no full state, so the mesh's periodic rounds and new connections move
// nothing on it.
//
// Wire (v1, one payload shape): {v, e: [[origin, version, software, links]...]} is an update (an answer
// now; what routers before pulls broadcast and gossiped, still merged from them), {v, e: [], a:
// [[origin, version]...]} an ask. A router before pulls reads an ask as an update with no entries and
// ignores it; it still broadcasts its own entry on changes, so mixed meshes keep its lines. Routers
// without the channel drop it (the mesh counts noGossiper); their lines show as "overlay known only to
// its ends".
import { ProtocolError, errMsg } from '../lib/errors';
import type { Clock } from '../lib/clock';
import type { Logger } from '../lib/log';
import type { PeerName } from '../mesh/peer';
import type { GossipChannel, GossipData, Gossiper } from '../mesh/types';
import { decodeMsg, encodeMsg, wantArray, wantInt, wantObject, wantPeerName, wantString, wantVersion } from '../mesh/codec';

export const LINKS_CHANNEL = 'links';
const WIRE_VERSION = 1;
const MAX_ORIGINS = 10_000;
const MAX_LINKS = 4096;
const MAX_REASON = 200;
/** versions are timestamps in ms (~2^41) plus one per change: far above it is hostile, and +1 stays exact */
const MAX_VERSION = 2 ** 52;
/** a router answers one asker at most this often (an honest one asks every LINKS_PULL_MS) */
export const ANSWER_MIN_MS = 1000;

export type Encryption = 'encrypted' | 'trusted' | 'none';
const ENC: readonly Encryption[] = ['none', 'encrypted', 'trusted'];

/** One connection as its end describes it. */
export interface LinkInfo {
  peer: PeerName;
  /** 'established', 'pending' ... (mesh ConnState), or 'stalled' */
  state: string;
  overlay: string | null;
  encryption: Encryption;
  mtu?: number;
  /** why the best overlay is not used */
  reason?: string;
}

export interface LinksEntry {
  version: number;
  /** the origin's weave.ts version and protocol range ("0.1.0 1..1") */
  software: string;
  links: LinkInfo[];
}

export class LinksUpdate implements GossipData {
  constructor(readonly entries: Map<PeerName, LinksEntry> = new Map()) {}
  encode(): Uint8Array[] {
    const e = [...this.entries].map(([o, x]) => [o, x.version, x.software, x.links.map((l) => [l.peer, l.state, l.overlay ?? '', ENC.indexOf(l.encryption), l.mtu ?? 0, l.reason ?? ''])]);
    return [encodeMsg({ v: WIRE_VERSION, e })];
  }
  merge(other: GossipData): GossipData {
    if (!(other instanceof LinksUpdate)) return this;
    for (const [o, x] of other.entries) {
      const mine = this.entries.get(o);
      if (!mine || x.version > mine.version) this.entries.set(o, x);
    }
    return this;
  }
}

/** An ask: the version of each origin's entry the asker holds (its own excluded). */
export class LinksAsk implements GossipData {
  constructor(readonly held: Map<PeerName, number> = new Map()) {}
  encode(): Uint8Array[] {
    // e: [] keeps the ask a valid update, with nothing in it, for routers from before pulls
    return [encodeMsg({ v: WIRE_VERSION, e: [], a: [...this.held] })];
  }
  /** a later ask knows at least as much as an earlier one */
  merge(other: GossipData): GossipData {
    return other instanceof LinksAsk ? other : this;
  }
}

function decodeEntries(raw: unknown): Map<PeerName, LinksEntry> {
  const out = new Map<PeerName, LinksEntry>();
  wantArray(raw, 'links gossip entries', MAX_ORIGINS).forEach((r, i) => {
    const what = `links entry ${i}`;
    const a = wantArray(r, what, 4);
    if (a.length !== 4) throw new ProtocolError(`${what}: expected 4 fields`);
    const origin = wantPeerName(a[0], `${what} origin`);
    const version = wantInt(a[1], `${what} version`, 0, MAX_VERSION);
    const software = wantString(a[2], `${what} software`, 64);
    const links = wantArray(a[3], `${what} links`, MAX_LINKS).map((lr, j) => {
      const lw = `${what} link ${j}`;
      const l = wantArray(lr, lw, 6);
      if (l.length !== 6) throw new ProtocolError(`${lw}: expected 6 fields`);
      const enc = wantInt(l[3], `${lw} encryption`, 0, ENC.length - 1);
      const overlay = wantString(l[2], `${lw} overlay`, 16);
      const mtu = wantInt(l[4], `${lw} mtu`, 0, 65535);
      const reason = wantString(l[5], `${lw} reason`, MAX_REASON);
      const info: LinkInfo = { peer: wantPeerName(l[0], `${lw} peer`), state: wantString(l[1], `${lw} state`, 16), overlay: overlay || null, encryption: ENC[enc] };
      if (mtu) info.mtu = mtu;
      if (reason) info.reason = reason;
      return info;
    });
    const prev = out.get(origin);
    if (!prev || version > prev.version) out.set(origin, { version, software, links });
  });
  return out;
}

/** Validates a wire message (an update or an ask); ProtocolError on anything malformed. */
export function decodeLinksMessage(buf: Uint8Array): LinksUpdate | LinksAsk {
  const o = wantObject(decodeMsg(buf, 'links gossip'), 'links gossip');
  wantVersion(o, 'links gossip', WIRE_VERSION);
  const entries = decodeEntries(o.e);
  if (o.a === undefined) return new LinksUpdate(entries);
  if (entries.size) throw new ProtocolError('links ask: carries entries');
  const held = new Map<PeerName, number>();
  wantArray(o.a, 'links ask', MAX_ORIGINS).forEach((r, i) => {
    const a = wantArray(r, `links ask ${i}`, 2);
    if (a.length !== 2) throw new ProtocolError(`links ask ${i}: expected 2 fields`);
    held.set(wantPeerName(a[0], `links ask ${i} origin`), wantInt(a[1], `links ask ${i} version`, 0, MAX_VERSION));
  });
  return new LinksAsk(held);
}

/** An update only (what routers before pulls send); ProtocolError on an ask or anything malformed. */
export function decodeLinksUpdate(buf: Uint8Array): LinksUpdate {
  const m = decodeLinksMessage(buf);
  if (m instanceof LinksAsk) throw new ProtocolError('links gossip: an ask where an update belongs');
  return m;
}

function sameEntry(a: LinksEntry, b: { software: string; links: LinkInfo[] }): boolean {
  return a.software === b.software && JSON.stringify(a.links) === JSON.stringify(b.links);
}

export class LinksTable implements Gossiper {
  private readonly entries = new Map<PeerName, LinksEntry>();
  private channel: GossipChannel | null = null;
  /** asker -> when we last answered it */
  private readonly answered = new Map<PeerName, number>();
  readonly stats = { updatesApplied: 0, malformed: 0, asksSent: 0, answersSent: 0, asksThrottled: 0, failures: 0 };

  constructor(readonly self: PeerName, private readonly clock: Clock, private readonly log: Logger) {
    this.entries.set(self, { version: Math.max(1, Math.floor(clock.now())), software: '', links: [] });
  }

  setChannel(ch: GossipChannel): void {
    this.channel = ch;
  }

  private source: (() => { software: string; links: LinkInfo[] }) | null = null;

  /**
   * Where our own entry comes from. It is computed only when someone looks (an ask to answer, a view
   * of our page), never on connection events: comparing a 99-link entry at every change was 13 % of a
   * router's time while 100 routers formed, for an entry no page was asking for.
   */
  setSource(fn: () => { software: string; links: LinkInfo[] }): void {
    this.source = fn;
  }

  /** Brings our own entry up to date with the source (a new version if it changed). */
  refreshLocal(): void {
    if (!this.source) return;
    try {
      const { software, links } = this.source();
      this.setLocal(software, links);
    } catch (e) {
      this.failed('computing our link entry failed; the last one stands', e);
    }
  }

  /** Replaces what this router says about its connections: a new version when it changed, sent to no one. */
  setLocal(software: string, links: LinkInfo[]): void {
    const sorted = [...links].sort((a, b) => (a.peer < b.peer ? -1 : a.peer > b.peer ? 1 : 0));
    const mine = this.entries.get(this.self)!;
    if (sameEntry(mine, { software, links: sorted })) return;
    this.entries.set(this.self, { version: mine.version + 1, software, links: sorted });
  }

  /** Asks every router for its entry where it is newer than ours (one broadcast; answers come by unicast). */
  ask(): void {
    if (!this.channel) return;
    const held = new Map<PeerName, number>();
    for (const [o, e] of this.entries) if (o !== this.self) held.set(o, e.version);
    try {
      this.channel.gossipBroadcast(new LinksAsk(held));
      this.stats.asksSent++;
    } catch (e) {
      this.failed('asking for link entries failed', e);
    }
  }

  /** A failure of ours (not the peer's input): logged and counted; the page shows what we hold. */
  private failed(what: string, e: unknown): void {
    this.stats.failures++;
    this.log.warn({ err: errMsg(e) }, what);
  }

  get(origin: PeerName): LinksEntry | undefined {
    return this.entries.get(origin);
  }

  all(): ReadonlyMap<PeerName, LinksEntry> {
    return this.entries;
  }

  /** Forgets origins not in `keep` (peers that left the topology), so the table stays bounded by it. */
  retain(keep: ReadonlySet<PeerName>): void {
    for (const o of this.entries.keys()) if (o !== this.self && !keep.has(o)) this.entries.delete(o);
    for (const o of this.answered.keys()) if (!keep.has(o)) this.answered.delete(o);
  }

  /** Merges entries by version; our own name newer than ours (from before a restart with a clock behind) is outbid. */
  mergeUpdate(u: LinksUpdate): LinksUpdate | null {
    const delta = new Map<PeerName, LinksEntry>();
    for (const [o, x] of u.entries) {
      if (o === this.self) {
        const mine = this.entries.get(o)!;
        if (x.version >= mine.version && !(x.version === mine.version && sameEntry(mine, x))) this.entries.set(o, { ...mine, version: x.version + 1 });
        continue;
      }
      const cur = this.entries.get(o);
      if (cur && cur.version >= x.version) continue;
      if (!cur && this.entries.size >= MAX_ORIGINS) continue;
      this.entries.set(o, x);
      delta.set(o, x);
    }
    if (delta.size === 0) return null;
    this.stats.updatesApplied++;
    return new LinksUpdate(delta);
  }

  /** Our own entry to the asker by unicast, when it is newer than the asker's copy. */
  private answer(asker: PeerName, ask: LinksAsk): void {
    this.refreshLocal();
    let mine = this.entries.get(this.self)!;
    const held = ask.held.get(this.self);
    if (held !== undefined && held >= mine.version) {
      if (held === mine.version) return;
      // the asker holds a newer entry of our name (ours from before a restart with a clock behind)
      mine = { ...mine, version: held + 1 };
      this.entries.set(this.self, mine);
    }
    const now = this.clock.now();
    const last = this.answered.get(asker);
    if (last !== undefined && now - last < ANSWER_MIN_MS) {
      this.stats.asksThrottled++;
      this.log.debug({ asker }, 'links ask too soon after the last; not answered');
      return;
    }
    if (this.answered.size >= MAX_ORIGINS) this.answered.clear();
    this.answered.set(asker, now);
    const sent = this.channel?.gossipUnicast(asker, new LinksUpdate(new Map([[this.self, mine]])).encode()[0]) ?? false;
    if (sent) this.stats.answersSent++;
    else this.log.debug({ asker }, 'no route to the links asker; not answered');
  }

  private decode(buf: Uint8Array, from: string): LinksUpdate | LinksAsk {
    try {
      return decodeLinksMessage(buf);
    } catch (e) {
      return this.malformed(from, e);
    }
  }

  private malformed(from: string, e: unknown): never {
    this.stats.malformed++;
    this.log.warn({ from, err: errMsg(e) }, 'dropping malformed links gossip');
    throw e;
  }

  // ---- Gossiper ----
  /** An answer to our ask: the sender's own entry, nobody else's. */
  onGossipUnicast(src: PeerName, msg: Uint8Array): void {
    const m = this.decode(msg, src);
    if (m instanceof LinksAsk) this.malformed(src, new ProtocolError('links gossip: an ask by unicast'));
    for (const o of m.entries.keys()) if (o !== src) this.malformed(src, new ProtocolError('links answer: an entry of another origin', { origin: o }));
    this.mergeUpdate(m);
  }
  /** An ask, or the entry a router from before pulls publishes on its changes. */
  onGossipBroadcast(src: PeerName, update: Uint8Array): GossipData | null {
    const m = this.decode(update, src);
    if (m instanceof LinksAsk) {
      this.answer(src, m);
      return null;
    }
    return this.mergeUpdate(m);
  }
  /** No full state: the periodic rounds and new connections send nothing on this channel. */
  gossip(): GossipData | null {
    return null;
  }
  /**
   * Entries from routers before pulls (their new-connection entry and repair rounds): merged, but not
   * passed on (null), so a mixed mesh does not flood through new routers.
   */
  onGossip(update: Uint8Array): GossipData | null {
    const m = this.decode(update, 'gossip');
    if (m instanceof LinksAsk) this.malformed('gossip', new ProtocolError('links gossip: an ask by neighbour gossip'));
    this.mergeUpdate(m);
    return null;
  }
}
