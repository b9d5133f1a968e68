// Gossip channels (Weave mesh semantics) over Msg.Gossip. One wire message:
//   {v:1, channel, kind: 0 unicast | 1 broadcast | 2 gossip, src, dst? (unicast only), payload}
// unicast and broadcast are routed by the mesh (next hop / broadcast tree of src) whether or not
// this router has a Gossiper for the channel; gossip goes to neighbours only, and what a neighbour
// found new is passed on by it. Outgoing gossip is coalesced (GossipData.merge) and flushed through
// the Clock, so a burst of updates becomes one message per neighbour.
// Periodic repair (mesh.ts periodic): a channel whose Gossiper has digest() sends only its digest to a
// few neighbours (kind 3, ask); a neighbour whose digest differs answers with its full state and its
// digest (kind 4, tell), and the asker, still different after merging, sends its full state back. In a
// steady state that is a few dozen bytes per channel and round instead of the whole table; channels
// without digest() still send their full state each round.
import { createHash } from 'crypto';
import type { Clock, TimerHandle } from '../lib/clock';
import type { Logger } from '../lib/log';
import type { PeerName } from './peer';
import type { GossipChannel, GossipData, Gossiper } from './types';
import { ProtocolError, errMsg } from '../lib/errors';
import { decodeMsg, encodeMsg, wantBytes, wantInt, wantObject, wantPeerName, wantString, wantVersion } from './codec';

export const GOSSIP_WIRE_VERSION = 1;
export const GossipKind = { Unicast: 0, Broadcast: 1, Gossip: 2, DigestAsk: 3, DigestTell: 4 } as const;
export type GossipKindValue = (typeof GossipKind)[keyof typeof GossipKind];
const MAX_PAYLOAD = 16 * 1024 * 1024;
const CHANNEL_RE = /^[A-Za-z0-9_.\-]{1,64}$/;

export interface GossipWire {
  channel: string;
  kind: GossipKindValue;
  src: PeerName;
  dst?: PeerName;
  payload: Uint8Array;
}

export function encodeGossip(m: GossipWire): Uint8Array {
  const o: Record<string, unknown> = { v: GOSSIP_WIRE_VERSION, channel: m.channel, kind: m.kind, src: m.src, payload: m.payload };
  if (m.dst !== undefined) o.dst = m.dst;
  return encodeMsg(o);
}

export function decodeGossip(buf: Uint8Array): GossipWire {
  const o = wantObject(decodeMsg(buf, 'gossip'), 'gossip');
  wantVersion(o, 'gossip', GOSSIP_WIRE_VERSION);
  const channel = wantString(o.channel, 'gossip channel', 64);
  if (!CHANNEL_RE.test(channel)) throw new ProtocolError('gossip: invalid channel name');
  const kind = wantInt(o.kind, 'gossip kind', 0, 4) as GossipKindValue;
  const src = wantPeerName(o.src, 'gossip src');
  const payload = wantBytes(o.payload, 'gossip payload', MAX_PAYLOAD);
  if (kind === GossipKind.Unicast) return { channel, kind, src, dst: wantPeerName(o.dst, 'gossip dst'), payload };
  if (o.dst !== undefined) throw new ProtocolError('gossip: dst on a non-unicast message');
  return { channel, kind, src, payload };
}

/** A state digest of per-origin versions, the same whatever order the entries are in. */
export function versionDigest(entries: Iterable<readonly [string, number]>): Uint8Array {
  const list = [...entries].map(([o, v]) => `${o}=${v}`).sort();
  return createHash('sha256').update(list.join(',')).digest().subarray(0, 16);
}

export function sameDigest(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0;
}

export function validChannelName(name: string): boolean {
  return CHANNEL_RE.test(name);
}

/** What a channel needs from the mesh. */
export interface GossipHost {
  self: PeerName;
  /** routes a unicast message; false when dst is unreachable */
  routeUnicast(m: GossipWire): boolean;
  /** sends a broadcast originated by src to our children in src's tree (excluding none) */
  routeBroadcast(m: GossipWire): void;
  /** sends to a random subset of neighbours (or all when `all`), excluding `except` */
  sendToNeighbours(m: GossipWire, opts: { all?: boolean; except?: PeerName }): void;
  /** counts and logs a failure inside a gossiper callback */
  gossiperError(channel: string, op: string, e: unknown): void;
}

export class GossipChannelImpl implements GossipChannel {
  private pending: GossipData | null = null;
  private flushTimer: TimerHandle | undefined;

  constructor(
    readonly name: string,
    private readonly gossiper: Gossiper,
    private readonly host: GossipHost,
    private readonly clock: Clock,
    private readonly log: Logger,
    private readonly flushDelayMs: number,
  ) {}

  gossipUnicast(dst: PeerName, msg: Uint8Array): boolean {
    if (dst === this.host.self) {
      // to ourselves: deliver directly, like a route of length zero
      this.deliverUnicast(this.host.self, msg);
      return true;
    }
    return this.host.routeUnicast({ channel: this.name, kind: GossipKind.Unicast, src: this.host.self, dst, payload: msg });
  }

  gossipBroadcast(update: GossipData): void {
    for (const payload of update.encode()) this.host.routeBroadcast({ channel: this.name, kind: GossipKind.Broadcast, src: this.host.self, payload });
  }

  gossip(update: GossipData): void {
    this.pending = this.pending ? this.pending.merge(update) : update;
    if (!this.flushTimer) this.flushTimer = this.clock.setTimeout(() => this.flush(), this.flushDelayMs);
  }

  private flush(): void {
    this.flushTimer = undefined;
    const data = this.pending;
    this.pending = null;
    if (!data) return;
    for (const payload of data.encode()) this.host.sendToNeighbours({ channel: this.name, kind: GossipKind.Gossip, src: this.host.self, payload }, {});
  }

  /** Full state for the periodic round; empty when the gossiper has nothing. */
  fullState(): Uint8Array[] {
    return this.encoded('gossip', () => this.gossiper.gossip());
  }

  /** What a new neighbour is sent: the gossiper's connectState() where it has one, else its full state. */
  connectState(): Uint8Array[] {
    const g = this.gossiper;
    return g.connectState ? this.encoded('connectState', () => g.connectState!()) : this.fullState();
  }

  /** The payloads of what one of the gossiper's calls returns; a call that throws is reported and sends nothing. */
  private encoded(op: string, call: () => GossipData | null): Uint8Array[] {
    let g: GossipData | null;
    try {
      g = call();
    } catch (e) {
      this.host.gossiperError(this.name, op, e);
      return [];
    }
    return g ? g.encode() : [];
  }

  /** The gossiper's state digest (periodic repair by digest), or null when it has none. */
  digest(): Uint8Array | null {
    if (!this.gossiper.digest) return null;
    try {
      return this.gossiper.digest();
    } catch (e) {
      this.host.gossiperError(this.name, 'digest', e);
      return null;
    }
  }

  deliverUnicast(src: PeerName, payload: Uint8Array): void {
    try {
      this.gossiper.onGossipUnicast(src, payload);
    } catch (e) {
      this.host.gossiperError(this.name, 'onGossipUnicast', e);
    }
  }

  deliverBroadcast(src: PeerName, payload: Uint8Array): void {
    try {
      this.gossiper.onGossipBroadcast(src, payload);
    } catch (e) {
      this.host.gossiperError(this.name, 'onGossipBroadcast', e);
    }
  }

  /** Gossip from a neighbour: what was new is passed on to our neighbours (except the sender). */
  deliverGossip(from: PeerName, payload: Uint8Array): void {
    let delta: GossipData | null;
    try {
      delta = this.gossiper.onGossip(payload);
    } catch (e) {
      this.host.gossiperError(this.name, 'onGossip', e);
      return;
    }
    if (!delta) return;
    try {
      for (const p of delta.encode()) this.host.sendToNeighbours({ channel: this.name, kind: GossipKind.Gossip, src: this.host.self, payload: p }, { except: from });
    } catch (e) {
      this.log.warn({ channel: this.name, err: errMsg(e) }, 'encoding gossip delta failed');
    }
  }

  stop(): void {
    this.clock.clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    this.pending = null;
  }
}
