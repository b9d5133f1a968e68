// In-memory gossip network for IPAM allocators, driven by a FakeClock: every message (periodic
// gossip, onward gossip of deltas, broadcast, unicast) is delivered after a random delay (so
// messages reorder), may be lost, and only between live peers in the same partition at delivery.
// Any exception a handler throws is recorded: a simulation asserts there were none.
import type { FakeClock } from '../../lib/clock';
import type { GossipChannel, GossipData, Gossiper } from '../../mesh/types';
import type { PeerName } from '../../mesh/peer';

export { mulberry32 } from './rng';

/** Peer name number i, e.g. 02:00:00:00:00:05. */
export function simName(i: number): PeerName {
  const h = (i + 1).toString(16).padStart(10, '0');
  return `02:${h.slice(0, 2)}:${h.slice(2, 4)}:${h.slice(4, 6)}:${h.slice(6, 8)}:${h.slice(8, 10)}`;
}

export interface NetOptions {
  loss?: number; // 0..1
  minDelayMs?: number;
  maxDelayMs?: number;
  gossipIntervalMs?: number;
  fanout?: number;
}

interface Node {
  name: PeerName;
  g: Gossiper | null;
  alive: boolean;
  group: number;
}

export class FakeIpamNet {
  readonly nodes = new Map<PeerName, Node>();
  loss: number;
  minDelay: number;
  maxDelay: number;
  private readonly interval: number;
  private readonly fanout: number;
  readonly errors: Array<{ to: PeerName; kind: string; err: unknown }> = [];
  messages = 0;
  dropped = 0;
  private running = false;

  constructor(readonly clock: FakeClock, readonly rng: () => number, o: NetOptions = {}) {
    this.loss = o.loss ?? 0;
    this.minDelay = o.minDelayMs ?? 1;
    this.maxDelay = o.maxDelayMs ?? 50;
    this.interval = o.gossipIntervalMs ?? 1000;
    this.fanout = o.fanout ?? 2;
  }

  /** Registers a peer; attach its gossiper with setGossiper once built (it needs the channel). */
  add(name: PeerName): { channel: GossipChannel; knownPeers: () => PeerName[] } {
    this.nodes.set(name, { name, g: null, alive: true, group: 0 });
    return { channel: this.channel(name), knownPeers: () => this.reachableFrom(name) };
  }

  setGossiper(name: PeerName, g: Gossiper): void {
    this.nodes.get(name)!.g = g;
  }

  kill(name: PeerName): void {
    const n = this.nodes.get(name);
    if (n) n.alive = false;
  }

  /** Peers not listed in any group are isolated in a group of their own. */
  partition(groups: PeerName[][]): void {
    let k = 1;
    for (const n of this.nodes.values()) n.group = -k++;
    groups.forEach((g, i) => {
      for (const p of g) this.nodes.get(p)!.group = i + 1;
    });
  }

  heal(): void {
    for (const n of this.nodes.values()) n.group = 0;
  }

  canTalk(a: PeerName, b: PeerName): boolean {
    const x = this.nodes.get(a);
    const y = this.nodes.get(b);
    return !!x && !!y && x.alive && y.alive && x.group === y.group;
  }

  reachableFrom(name: PeerName): PeerName[] {
    const out: PeerName[] = [];
    for (const n of this.nodes.values()) if (n.name !== name && this.canTalk(name, n.name)) out.push(n.name);
    return out;
  }

  /** Connected components of live peers. */
  components(): PeerName[][] {
    const m = new Map<number, PeerName[]>();
    for (const n of this.nodes.values()) {
      if (!n.alive) continue;
      const l = m.get(n.group) ?? [];
      l.push(n.name);
      m.set(n.group, l);
    }
    return [...m.values()];
  }

  /** Starts the periodic gossip rounds (as the mesh does for every channel). */
  start(): void {
    if (this.running) return;
    this.running = true;
    const round = () => {
      for (const n of this.nodes.values()) {
        if (!n.alive || !n.g) continue;
        const d = this.call(n.name, 'gossip()', () => n.g!.gossip());
        if (d) this.spread(n.name, d.encode());
      }
      this.clock.setTimeout(round, this.interval);
    };
    this.clock.setTimeout(round, Math.floor(this.rng() * this.interval));
  }

  private pick(from: PeerName, k: number): PeerName[] {
    const r = this.reachableFrom(from);
    for (let i = r.length - 1; i > 0; i--) {
      const j = Math.floor(this.rng() * (i + 1));
      [r[i], r[j]] = [r[j], r[i]];
    }
    return r.slice(0, k);
  }

  private spread(from: PeerName, bufs: Uint8Array[]): void {
    for (const to of this.pick(from, this.fanout)) {
      for (const b of bufs) {
        this.deliver(from, to, (g) => {
          const delta = g.onGossip(b);
          if (delta) this.spread(to, delta.encode());
        }, 'gossip');
      }
    }
  }

  private call<T>(to: PeerName, kind: string, fn: () => T): T | null {
    try {
      return fn();
    } catch (err) {
      this.errors.push({ to, kind, err });
      return null;
    }
  }

  private deliver(from: PeerName, to: PeerName, fn: (g: Gossiper) => void, kind: string): void {
    this.messages++;
    if (this.rng() < this.loss) {
      this.dropped++;
      return;
    }
    const delay = this.minDelay + Math.floor(this.rng() * (this.maxDelay - this.minDelay + 1));
    this.clock.setTimeout(() => {
      const n = this.nodes.get(to);
      if (!n || !n.g || !this.canTalk(from, to)) {
        this.dropped++;
        return;
      }
      this.call(to, kind, () => fn(n.g!));
    }, delay);
  }

  channel(from: PeerName): GossipChannel {
    return {
      name: 'ipam',
      gossipUnicast: (dst, msg) => {
        if (!this.canTalk(from, dst)) return false;
        const copy = msg.slice();
        this.deliver(from, dst, (g) => g.onGossipUnicast(from, copy), 'unicast');
        return true;
      },
      gossipBroadcast: (update: GossipData) => {
        if (!this.nodes.get(from)?.alive) return;
        const bufs = update.encode();
        for (const to of this.reachableFrom(from)) {
          for (const b of bufs) this.deliver(from, to, (g) => { g.onGossipBroadcast(from, b); }, 'broadcast');
        }
      },
      gossip: (update: GossipData) => {
        if (!this.nodes.get(from)?.alive) return;
        this.spread(from, update.encode());
      },
    };
  }
}
