// The router's event log: a bounded ring of what happened, with times, for people (the /ui page's
// event list, `weave report`'s `events` section). Fed from the parts as things happen:
//   mesh            connection up / down (with the reason), peers joining and leaving the topology
//   overlay switch  a connection's data moving to another overlay, with why it is not on the best one
//   IPAM            an owner of address space becoming unreachable (with the rmpeer hint), and its
//                   space taken over by another peer (rmpeer, reclaim): sampled from IPAM's own
//                   status every few seconds, since IPAM has no event stream of its own
// The ring holds the newest CAPACITY events; older ones fall off (counted). Subscribers (the page's
// event stream) hear each event as it is pushed.
import { untilAligned, type Clock, type TimerHandle } from '../../lib/clock';
import { componentLogger, type Logger } from '../../lib/log';
import { errMsg } from '../../lib/errors';
import type { Part } from '../../lib/subsystem';

export type EventKind = 'connection-up' | 'connection-down' | 'overlay' | 'peer-join' | 'peer-leave' | 'ipam-unreachable' | 'ipam-reclaim' | 'ipam-transfer';

export interface RouterEvent {
  /** increasing per router process: a stream resumes after the last one it saw */
  seq: number;
  /** epoch ms */
  time: number;
  kind: EventKind;
  peer?: string;
  nickname?: string;
  /** one line for people */
  text: string;
}

export const EVENT_CAPACITY = 256;
/** how often IPAM's owners are compared with the last look */
export const IPAM_SAMPLE_MS = 2000;

export class EventRing {
  private readonly buf: RouterEvent[] = [];
  private start = 0;
  private seq = 0;
  /** events that fell off the ring */
  evicted = 0;
  private readonly subs = new Set<(e: RouterEvent) => void>();

  constructor(readonly capacity = EVENT_CAPACITY, private readonly log?: Logger) {}

  push(e: Omit<RouterEvent, 'seq'>): RouterEvent {
    const ev: RouterEvent = { seq: ++this.seq, ...e };
    if (this.buf.length < this.capacity) {
      this.buf.push(ev);
    } else {
      this.buf[this.start] = ev;
      this.start = (this.start + 1) % this.capacity;
      this.evicted++;
    }
    for (const fn of this.subs) {
      try {
        fn(ev);
      } catch (err) {
        this.log?.error({ err: errMsg(err) }, 'event subscriber threw');
      }
    }
    return ev;
  }

  /** Oldest first; only those after seq `after` when given. */
  list(after = 0): RouterEvent[] {
    const out: RouterEvent[] = [];
    for (let i = 0; i < this.buf.length; i++) {
      const e = this.buf[(this.start + i) % this.buf.length];
      if (e.seq > after) out.push(e);
    }
    return out;
  }

  get size(): number {
    return this.buf.length;
  }

  subscribe(fn: (e: RouterEvent) => void): () => void {
    this.subs.add(fn);
    return () => this.subs.delete(fn);
  }
}

type Listener = (...args: any[]) => void;

/** What the event log listens to (the Mesh and OverlaySwitch satisfy these; tests hand in fakes). */
export interface EventSources {
  mesh: {
    on(event: string, fn: Listener): unknown;
    off(event: string, fn: Listener): unknown;
    peerSummaries(): Array<{ name: string; nickname: string; reachable: boolean }>;
  };
  overlays?: {
    onChange(fn: (peer: string, overlay: string | null) => void): () => void;
    statuses(): Array<{ peer: string; overlays: Array<{ name: string; established: boolean; reason?: string }> }>;
  };
  /** IPAM's owners now (undefined without IPAM, or before its ring exists) */
  ipamOwners?: () => Array<{ peer: string; nickname?: string; addresses: number; reachable: boolean }> | undefined;
}

export interface EventsPart extends Part {
  readonly ring: EventRing;
}

/** Builds the event log and subscribes it to the sources; its stop unsubscribes. */
export function buildEvents(src: EventSources, root: Logger, clock: Clock, capacity = EVENT_CAPACITY): EventsPart {
  const log = componentLogger(root, 'events');
  const ring = new EventRing(capacity, log);
  const nick = new Map<string, string>();
  const name = (peer: string): string => (nick.get(peer) ? `${nick.get(peer)} (${peer})` : peer);
  const push = (kind: EventKind, text: string, peer?: string): void => {
    ring.push({ time: clock.now(), kind, text, ...(peer ? { peer, nickname: nick.get(peer) } : {}) });
  };

  const onUp = (peer: string, conn: { remote?: { nickname?: string }; remoteAddr?: string; outbound?: boolean }): void => {
    if (conn?.remote?.nickname) nick.set(peer, conn.remote.nickname);
    push('connection-up', `connection to ${name(peer)} established${conn?.remoteAddr ? ` (${conn.outbound ? 'to' : 'from'} ${conn.remoteAddr})` : ''}`, peer);
  };
  const onDown = (peer: string, reason: string): void => {
    carrier.delete(peer);
    push('connection-down', `connection to ${name(peer)} lost: ${reason}`, peer);
  };

  let reachable = new Set<string>();
  for (const p of src.mesh.peerSummaries()) {
    nick.set(p.name, p.nickname);
    if (p.reachable) reachable.add(p.name);
  }
  const onPeers = (): void => {
    const now = new Set<string>();
    for (const p of src.mesh.peerSummaries()) {
      if (p.nickname) nick.set(p.name, p.nickname);
      if (p.reachable) now.add(p.name);
    }
    for (const p of now) if (!reachable.has(p)) push('peer-join', `peer ${name(p)} joined`, p);
    for (const p of reachable) if (!now.has(p)) push('peer-leave', `peer ${name(p)} left (no longer reachable)`, p);
    reachable = now;
  };

  const carrier = new Map<string, string | null>();
  const onOverlay = (peer: string, overlay: string | null): void => {
    const from = carrier.get(peer) ?? null;
    carrier.set(peer, overlay);
    const st = src.overlays?.statuses().find((s) => s.peer === peer);
    // why not the best overlay: the reason of the first (best) one when it is not the one carrying
    const best = st?.overlays[0];
    const why = best && best.name !== overlay && !best.established && best.reason ? `; ${best.name}: ${best.reason}` : '';
    push('overlay', `${name(peer)}: data ${from ? `moved from ${from} to` : 'now on'} ${overlay ?? 'no overlay'}${why}`, peer);
  };

  src.mesh.on('connectionEstablished', onUp);
  src.mesh.on('connectionLost', onDown);
  src.mesh.on('peersChanged', onPeers);
  const offOverlay = src.overlays?.onChange(onOverlay);

  // IPAM: compare the owners with the last look
  let owners: Map<string, { nickname?: string; addresses: number; reachable: boolean }> | undefined;
  let timer: TimerHandle | undefined;
  let stopped = false;
  const sampleIpam = (): void => {
    let now: ReturnType<NonNullable<EventSources['ipamOwners']>>;
    try {
      now = src.ipamOwners?.();
    } catch (e) {
      log.warn({ err: errMsg(e) }, 'reading IPAM owners for the event log failed');
      return;
    }
    if (!now) return;
    const cur = new Map(now.map((o) => [o.peer, o]));
    for (const o of now) if (o.nickname) nick.set(o.peer, o.nickname);
    if (owners) ipamEvents(owners, cur, push, name);
    owners = cur;
  };
  const tick = (): void => {
    timer = undefined;
    if (stopped) return;
    sampleIpam();
    timer = clock.setTimeout(tick, untilAligned(clock.now(), IPAM_SAMPLE_MS));
  };
  // on the clock's grid, so the sample shares the per-second wake-up of the sleeve's tick
  if (src.ipamOwners) timer = clock.setTimeout(tick, untilAligned(clock.now(), IPAM_SAMPLE_MS));

  return {
    name: 'events',
    ring,
    stop: () => {
      stopped = true;
      clock.clearTimeout(timer);
      src.mesh.off('connectionEstablished', onUp);
      src.mesh.off('connectionLost', onDown);
      src.mesh.off('peersChanged', onPeers);
      offOverlay?.();
    },
    report: () => ({
      summary: { Recent: `${ring.size} events${ring.evicted ? ` (${ring.evicted} older dropped)` : ''}` },
      capacity: ring.capacity,
      evicted: ring.evicted,
      recent: ring.list(),
    }),
  };
}

type Owner = { nickname?: string; addresses: number; reachable: boolean };

/** Events from two looks at IPAM's owners: owners turning unreachable, space moving from one peer to others. */
export function ipamEvents(before: Map<string, Owner>, after: Map<string, Owner>, push: (kind: EventKind, text: string, peer?: string) => void, name: (peer: string) => string): void {
  for (const [peer, o] of after) {
    const was = before.get(peer);
    if (!o.reachable && o.addresses > 0 && (!was || was.reachable)) {
      push('ipam-unreachable', `IPAM: ${name(peer)} owns ${o.addresses} addresses and is unreachable; if it is gone for good: weave rmpeer ${o.nickname || peer}`, peer);
    }
  }
  for (const [peer, was] of before) {
    const now = after.get(peer)?.addresses ?? 0;
    if (was.addresses === 0 || now >= was.addresses) continue;
    const gainers = [...after].filter(([p, o]) => p !== peer && o.addresses > (before.get(p)?.addresses ?? 0)).map(([p]) => name(p));
    if (gainers.length === 0) continue; // freed space that nobody took yet: not a reclaim
    // from an unreachable owner: rmpeer (or a reclaim); from a live one: a donation on request
    if (!was.reachable) push('ipam-reclaim', `IPAM: ${was.addresses - now} addresses of unreachable ${name(peer)} reclaimed by ${gainers.join(', ')}`, peer);
    else push('ipam-transfer', `IPAM: ${name(peer)} handed ${was.addresses - now} addresses to ${gainers.join(', ')}`, peer);
  }
}
