// Link gossip (channel 'links'): each router tells every other what its own connections run on, so
// one router's page can draw the whole mesh with each line's overlay, encryption, MTU and the reason
// it is not on the best overlay. The topology gossip says only who is connected to whom; the overlay
// of a connection is known to its two ends alone.
//
// An entry per origin {version, software version, links}, edited only by its origin and merged by
// version (as router/prefixes.ts). A router republishes its entry when a connection comes, goes or
// changes overlay, and the mesh's periodic gossip carries the full table. Routers without the channel
// drop it (counted by the mesh as noGossiper), so mixed versions interoperate; their lines show as
// "overlay known only to its ends".
import { ProtocolError, errMsg } from '../lib/errors';
import type { Clock } from '../lib/clock';
import type { Logger } from '../lib/log';
import type { PeerName } from '../mesh/peer';
import type { GossipChannel, GossipData, Gossiper } from '../mesh/types';
import { decodeMsg, encodeMsg, wantArray, wantInt, wantObject, wantPeerName, wantString, wantVersion } from '../mesh/codec';
import { versionDigest } from '../mesh/gossip';

export const LINKS_CHANNEL = 'links';
const WIRE_VERSION = 1;
const MAX_ORIGINS = 10_000;
const MAX_LINKS = 4096;
const MAX_REASON = 200;

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

/** Validates a wire update; ProtocolError on anything malformed. */
export function decodeLinksUpdate(buf: Uint8Array): LinksUpdate {
  const o = wantObject(decodeMsg(buf, 'links gossip'), 'links gossip');
  wantVersion(o, 'links gossip', WIRE_VERSION);
  const raw = wantArray(o.e, 'links gossip entries', MAX_ORIGINS);
  const out = new Map<PeerName, LinksEntry>();
  raw.forEach((r, i) => {
    const what = `links entry ${i}`;
    const a = wantArray(r, what, 4);
    if (a.length !== 4) throw new ProtocolError(`${what}: expected 4 fields`);
    const origin = wantPeerName(a[0], `${what} origin`);
    const version = wantInt(a[1], `${what} version`, 0, Number.MAX_SAFE_INTEGER);
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
  return new LinksUpdate(out);
}

function sameEntry(a: LinksEntry, b: { software: string; links: LinkInfo[] }): boolean {
  return a.software === b.software && JSON.stringify(a.links) === JSON.stringify(b.links);
}

export class LinksTable implements Gossiper {
  private readonly entries = new Map<PeerName, LinksEntry>();
  private channel: GossipChannel | null = null;
  private readonly log: Logger;
  readonly stats = { updatesApplied: 0, malformed: 0 };

  constructor(readonly self: PeerName, clock: Clock, log: Logger) {
    this.log = log;
    this.entries.set(self, { version: Math.max(1, Math.floor(clock.now())), software: '', links: [] });
  }

  setChannel(ch: GossipChannel): void {
    this.channel = ch;
  }

  /** Replaces what this router says about its connections; broadcast when it changed. */
  setLocal(software: string, links: LinkInfo[]): void {
    const sorted = [...links].sort((a, b) => (a.peer < b.peer ? -1 : a.peer > b.peer ? 1 : 0));
    const mine = this.entries.get(this.self)!;
    if (sameEntry(mine, { software, links: sorted })) return;
    const next: LinksEntry = { version: mine.version + 1, software, links: sorted };
    this.entries.set(this.self, next);
    // the broadcast tree reaches every peer once; the periodic rounds repair what a changing tree
    // missed (a random flood besides cost each peer fanout copies of every change: a forming
    // 100-router mesh changes each router's links ~300 times)
    this.channel?.gossipBroadcast(new LinksUpdate(new Map([[this.self, next]])));
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
  }

  mergeUpdate(u: LinksUpdate): LinksUpdate | null {
    const delta = new Map<PeerName, LinksEntry>();
    for (const [o, x] of u.entries) {
      if (o === this.self) {
        const mine = this.entries.get(o)!;
        // a newer entry of our own name (from before a restart with a clock behind): outbid it
        if (x.version >= mine.version && !(x.version === mine.version && sameEntry(mine, x))) {
          const next = { ...mine, version: x.version + 1 };
          this.entries.set(o, next);
          delta.set(o, next);
          this.channel?.gossipBroadcast(new LinksUpdate(new Map([[o, next]])));
        }
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

  private decode(buf: Uint8Array, from: string): LinksUpdate {
    try {
      return decodeLinksUpdate(buf);
    } catch (e) {
      this.stats.malformed++;
      this.log.warn({ from, err: errMsg(e) }, 'dropping malformed links gossip');
      throw e;
    }
  }

  // ---- Gossiper ----
  onGossipUnicast(src: PeerName, _msg: Uint8Array): void {
    this.log.debug({ src }, 'ignoring unicast on the links channel');
  }
  onGossipBroadcast(src: PeerName, update: Uint8Array): GossipData | null {
    return this.mergeUpdate(this.decode(update, src));
  }
  /** Periodic repair by digest (mesh/gossip.ts): origins and their versions. */
  digest(): Uint8Array {
    return versionDigest([...this.entries].map(([o, e]) => [o, e.version] as const));
  }
  gossip(): GossipData | null {
    return new LinksUpdate(new Map(this.entries));
  }
  /** A new neighbour gets our own entry; the others' come with their broadcasts and the periodic repair. */
  connectState(): GossipData | null {
    return new LinksUpdate(new Map([[this.self, this.entries.get(this.self)!]]));
  }
  onGossip(update: Uint8Array): GossipData | null {
    return this.mergeUpdate(this.decode(update, 'gossip'));
  }
}
