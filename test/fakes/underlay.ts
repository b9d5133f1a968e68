// An in-memory underlay: Transports bound to "ip:port" addresses that hand each other already
// "authenticated" MeshConnections, with no sockets. Everything happens through the Clock, so a
// FakeClock drives thousands of peers deterministically:
//  - a dial succeeds after one link delay (ECONNREFUSED if nothing listens or the host is dead,
//    ETIMEDOUT after dialTimeoutMs across a partition);
//  - messages are delivered after the link delay, in order per connection direction (one clock
//    timer per direction while messages are queued, not one per message);
//  - TCP does not lose messages, so a "dropped" message kills the connection (both ends see a
//    reset), and partitions cut every connection crossing them;
//  - the handshake's verdict is TcpTransport's: transports with different passwords refuse each other
//    (EPASSWORD, or EENCRYPTION when one has none) at both ends; encrypted connections carry a
//    32-byte session key both ends share. test/contract/transport.contract.ts holds both to one contract.
// Bytes (payload + a 5-byte frame header) are counted per message type for the bench.
import { mulberry32 } from './rng';
import type { Clock, TimerHandle } from '../../lib/clock';
import { Msg, type ConnectFailure, type Features, type MeshConnection, type Transport } from '../../mesh/types';
import { WeaveError } from '../../lib/errors';
import { Mesh, type MeshOptions } from '../../mesh/mesh';
import { silentLogger, type Logger } from '../../lib/log';
import type { PeerName } from '../../mesh/peer';
import { SimSleeve } from './sim-sleeve';

export interface LinkOptions {
  /** probability that a message kills the connection instead of arriving */
  drop?: number;
  delayMs?: number;
}

export interface FakeUnderlayOptions {
  clock: Clock;
  random: () => number;
  /** default one-way delay, ms (default 1) */
  delayMs?: number;
  dialTimeoutMs?: number;
  encrypted?: boolean;
}

const FRAME_OVERHEAD = 5;

function ipOf(addr: string): string {
  const i = addr.lastIndexOf(':');
  return i < 0 ? addr : addr.slice(0, i);
}

interface QueueItem { at: number; type: number; payload: Uint8Array | null; reason?: string }

/** One direction of a connection: the receiving end's queue. */
class Direction {
  queue: QueueItem[] = [];
  head = 0;
  timer: TimerHandle | undefined;
  lastAt = 0;
}

export class FakeConnection implements MeshConnection {
  private handler: (type: number, payload: Uint8Array) => void = () => {};
  /** set once the owner installs its handler: a real transport buffers until then (the dialler
   * only sees the connection when the dial promise resolves), so delivery waits for it */
  attached = false;
  get onMessage(): (type: number, payload: Uint8Array) => void {
    return this.handler;
  }
  set onMessage(f: (type: number, payload: Uint8Array) => void) {
    this.handler = f;
    this.attached = true;
  }
  onClose: (reason: string) => void = () => {};
  peer!: FakeConnection;
  owner!: FakeTransport;
  closed = false;
  /** inbound queue of this end */
  readonly inbox = new Direction();

  constructor(
    private readonly net: FakeUnderlay,
    readonly id: string,
    readonly outbound: boolean,
    readonly remoteAddr: string,
    readonly localAddr: string,
    readonly local: Features,
    readonly remote: Features,
    readonly encrypted: boolean,
    readonly sessionKey: Uint8Array | null,
  ) {
    this.dataKey = sessionKey;
  }

  readonly dataKey: Uint8Array | null;

  send(type: number, payload: Uint8Array): void {
    // heartbeats are the transport's own (TcpTransport sends and swallows them); there is no line to keep alive here
    if (this.closed || type === Msg.Heartbeat) return;
    this.net.transmit(this, type, payload);
  }

  close(reason: string): void {
    if (this.closed) return;
    this.net.closePair(this, reason, 'connection closed by peer');
  }
}

export class FakeTransport implements Transport {
  features: Features | undefined;
  listener: ((c: MeshConnection) => void) | undefined;
  onRefused: ((remoteAddr: string, f: ConnectFailure) => void) | undefined;
  readonly conns = new Set<FakeConnection>();
  closed = false;

  constructor(private readonly net: FakeUnderlay, readonly address: string, readonly password: string | null) {}

  async listen(onConnection: (c: MeshConnection) => void, onRefused: (remoteAddr: string, f: ConnectFailure) => void): Promise<void> {
    this.listener = onConnection;
    this.onRefused = onRefused;
  }

  dial(address: string, local: Features): Promise<MeshConnection> {
    return this.net.dial(this, address, local);
  }

  setLocalFeatures(f: Features): void {
    this.features = f;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.listener = undefined;
    for (const c of [...this.conns]) c.close('transport closed');
    this.net.unbind(this);
  }
}

export class FakeUnderlay {
  private readonly transports = new Map<string, FakeTransport>();
  private readonly links = new Map<string, LinkOptions>();
  private readonly dead = new Set<string>();
  private readonly mute = new Set<string>();
  private groups: Array<Set<string>> = [];
  private ephemeral = 40000;
  private connSeq = 0;
  readonly clock: Clock;
  private readonly random: () => number;
  private readonly delayMs: number;
  private readonly dialTimeoutMs: number;
  /** default for transports made without a password of their own */
  private readonly encrypted: boolean;
  /** bytes carried, by message type */
  readonly bytesByType = new Map<number, number>();
  readonly messagesByType = new Map<number, number>();
  bytes = 0;
  messages = 0;
  /** connections killed by a dropped message */
  drops = 0;

  constructor(o: FakeUnderlayOptions) {
    this.clock = o.clock;
    this.random = o.random;
    this.delayMs = o.delayMs ?? 1;
    this.dialTimeoutMs = o.dialTimeoutMs ?? 1000;
    this.encrypted = o.encrypted ?? false;
  }

  /**
   * A transport bound to "ip:port" (replaces a closed one at the same address). password: as a router's
   * (null: unencrypted); default: the underlay's `encrypted` decides for every transport alike.
   */
  transport(addr: string, o: { password?: string | null } = {}): FakeTransport {
    const cur = this.transports.get(addr);
    if (cur && !cur.closed) throw new Error(`address ${addr} already bound`);
    const t = new FakeTransport(this, addr, o.password !== undefined ? o.password : this.encrypted ? 'sim' : null);
    this.transports.set(addr, t);
    this.dead.delete(ipOf(addr));
    return t;
  }

  unbind(t: FakeTransport): void {
    if (this.transports.get(t.address) === t) this.transports.delete(t.address);
  }

  private linkKey(a: string, b: string): string {
    return a < b ? `${a}|${b}` : `${b}|${a}`;
  }

  /** Per host pair (by ip): drop probability and delay. */
  setLink(ipA: string, ipB: string, l: LinkOptions): void {
    this.links.set(this.linkKey(ipA, ipB), l);
  }

  private link(a: string, b: string): LinkOptions | undefined {
    return this.links.size ? this.links.get(this.linkKey(a, b)) : undefined;
  }

  /** The host (ip) stops: its connections are reset and dials to it are refused. */
  kill(ip: string): void {
    this.dead.add(ip);
    for (const t of this.transports.values()) {
      if (ipOf(t.address) !== ip) continue;
      for (const c of [...t.conns]) this.closePair(c, 'connection reset (host down)', 'connection reset (peer host down)');
    }
  }

  revive(ip: string): void {
    this.dead.delete(ip);
    this.mute.delete(ip);
  }

  /**
   * The host (ip) dies without a word: what it sends and what is sent to it vanishes, dials to it are
   * refused, but its connections stay open until each other end gives up on it (the caller closes
   * them, e.g. at the times each end's read timeout would fire).
   */
  silence(ip: string): void {
    this.dead.add(ip);
    this.mute.add(ip);
  }

  /** Open connections of other hosts to ip (each seen from the other end). */
  connectionsTo(ip: string): FakeConnection[] {
    const out: FakeConnection[] = [];
    for (const t of this.transports.values()) {
      if (ipOf(t.address) === ip) continue;
      for (const c of t.conns) if (!c.closed && ipOf(c.remoteAddr) === ip) out.push(c);
    }
    return out;
  }

  /** Hosts (ips) in groupA and groupB can no longer reach each other; crossing connections are cut. */
  partition(groupA: string[], groupB: string[]): void {
    const a = new Set(groupA);
    const b = new Set(groupB);
    this.groups.push(a, b);
    for (const t of this.transports.values()) {
      for (const c of [...t.conns]) {
        if (!c.closed && this.cut(ipOf(c.localAddr), ipOf(c.remoteAddr))) this.closePair(c, 'connection reset (partition)', 'connection reset (partition)');
      }
    }
  }

  heal(): void {
    this.groups = [];
  }

  private cut(x: string, y: string): boolean {
    for (let i = 0; i < this.groups.length; i += 2) {
      const a = this.groups[i];
      const b = this.groups[i + 1];
      if ((a.has(x) && b.has(y)) || (a.has(y) && b.has(x))) return true;
    }
    return false;
  }

  dial(from: FakeTransport, address: string, local: Features): Promise<MeshConnection> {
    if (from.closed) return Promise.reject(new WeaveError('ECLOSED', 'transport is closed', { address }));
    return new Promise((resolve, reject) => {
      const srcIp = ipOf(from.address);
      const dstIp = ipOf(address);
      if (this.cut(srcIp, dstIp) || this.mute.has(srcIp)) {
        this.clock.setTimeout(() => reject(new WeaveError('ETIMEDOUT', `dial ${address}: timed out`, { address })), this.dialTimeoutMs);
        return;
      }
      const delay = this.link(srcIp, dstIp)?.delayMs ?? this.delayMs;
      this.clock.setTimeout(() => {
        const t = this.transports.get(address);
        if (from.closed) return reject(new WeaveError('ECLOSED', 'transport closed during the dial', { address }));
        if (!t || t.closed || !t.listener || !t.features || this.dead.has(dstIp) || this.cut(srcIp, dstIp)) {
          return reject(new WeaveError('ECONNREFUSED', `dial ${address}: connection refused`, { address }));
        }
        const ephemeral = `${srcIp}:${this.ephemeral++}`;
        if (from.password !== t.password) {
          // the handshake fails at both ends with the same verdict (mesh/wire.ts)
          const f: ConnectFailure = (from.password === null) !== (t.password === null)
            ? { code: 'EENCRYPTION', message: 'one side encrypts and the other does not: set the same password on both' }
            : { code: 'EPASSWORD', message: 'the passwords differ' };
          t.onRefused?.(ephemeral, f);
          return reject(new WeaveError(f.code, `dial ${address}: ${f.message}`, { address }));
        }
        const id = local.connId || `c${this.connSeq++}`;
        const remoteFeatures = { ...t.features, connId: id };
        const encrypted = t.password !== null;
        const key = encrypted ? Uint8Array.from({ length: 32 }, () => Math.floor(this.random() * 256)) : null;
        const out = new FakeConnection(this, id, true, address, ephemeral, local, remoteFeatures, encrypted, key);
        const inb = new FakeConnection(this, id, false, ephemeral, address, remoteFeatures, local, encrypted, key);
        out.peer = inb;
        inb.peer = out;
        out.owner = from;
        inb.owner = t;
        from.conns.add(out);
        t.conns.add(inb);
        t.listener(inb);
        resolve(out);
      }, 2 * delay); // SYN/ACK + handshake, roughly
    });
  }

  transmit(from: FakeConnection, type: number, payload: Uint8Array): void {
    const srcIp = ipOf(from.localAddr);
    const dstIp = ipOf(from.remoteAddr);
    if (this.mute.has(srcIp) || this.mute.has(dstIp)) return;
    const l = this.link(srcIp, dstIp);
    if (l?.drop && this.random() < l.drop) {
      this.drops++;
      this.closePair(from, 'connection reset (lost segment)', 'connection reset (lost segment)');
      return;
    }
    const size = payload.length + FRAME_OVERHEAD;
    this.bytes += size;
    this.messages++;
    this.bytesByType.set(type, (this.bytesByType.get(type) ?? 0) + size);
    this.messagesByType.set(type, (this.messagesByType.get(type) ?? 0) + 1);
    this.enqueue(from.peer, { at: 0, type, payload: Uint8Array.prototype.slice.call(payload) }, l?.delayMs ?? this.delayMs);
  }

  private enqueue(to: FakeConnection, item: QueueItem, delay: number): void {
    const d = to.inbox;
    item.at = Math.max(this.clock.now() + delay, d.lastAt);
    d.lastAt = item.at;
    d.queue.push(item);
    if (!d.timer) d.timer = this.clock.setTimeout(() => this.drain(to), item.at - this.clock.now());
  }

  private drain(to: FakeConnection): void {
    const d = to.inbox;
    d.timer = undefined;
    const now = this.clock.now();
    if (!to.attached && !to.closed) {
      d.timer = this.clock.setTimeout(() => this.drain(to), 1);
      return;
    }
    while (d.head < d.queue.length && d.queue[d.head].at <= now) {
      const it = d.queue[d.head++];
      if (to.closed) continue;
      if (it.payload === null) {
        this.finish(to, it.reason ?? 'connection closed by peer');
      } else {
        to.onMessage(it.type, it.payload);
      }
    }
    if (d.head >= d.queue.length) {
      d.queue = [];
      d.head = 0;
    } else if (d.head > 64) {
      // a busy connection never drains completely: drop delivered items so payloads can be freed
      d.queue = d.queue.slice(d.head);
      d.head = 0;
    }
    if (d.head < d.queue.length && !to.closed) {
      d.timer = this.clock.setTimeout(() => this.drain(to), d.queue[d.head].at - now);
    }
  }

  private finish(c: FakeConnection, reason: string): void {
    if (c.closed) return;
    c.closed = true;
    c.owner.conns.delete(c);
    this.clock.clearTimeout(c.inbox.timer);
    c.onClose(reason);
  }

  /**
   * Closes `c` locally (its onClose fires from the clock, not inside the caller) and the other end:
   * after what was already queued to it (an orderly close, like a FIN), or at once when `reset`.
   */
  closePair(c: FakeConnection, localReason: string, remoteReason: string): void {
    if (c.closed) return;
    c.closed = true;
    this.clock.clearTimeout(c.inbox.timer);
    c.owner.conns.delete(c);
    const p = c.peer;
    this.clock.setTimeout(() => c.onClose(localReason), 0);
    if (!p.closed) {
      const reset = remoteReason.startsWith('connection reset');
      if (reset) {
        p.closed = true;
        this.clock.clearTimeout(p.inbox.timer);
        p.owner.conns.delete(p);
        this.clock.setTimeout(() => p.onClose(remoteReason), 0);
      } else {
        const l = this.link(ipOf(c.localAddr), ipOf(c.remoteAddr));
        this.enqueue(p, { at: 0, type: 0, payload: null, reason: remoteReason }, l?.delayMs ?? this.delayMs);
      }
    }
  }

  /** Number of open connection ends. */
  openConnections(): number {
    let n = 0;
    for (const t of this.transports.values()) n += t.conns.size;
    return n;
  }
}

// ---------------------------------------------------------------- simulation harness (sim tests, bench)

/** mulberry32 (test/fakes/rng.ts), under the name the sim harness uses. */
export const seededRandom = mulberry32;

interface HeapTimer { at: number; seq: number; fn: () => void; cancelled: boolean }

/**
 * FakeClock's semantics (timers fire only from advance(), in (time, creation) order) on a binary
 * heap: FakeClock scans every pending timer per firing, which is quadratic with the ~10^4 timers a
 * 1000-peer simulation keeps pending.
 */
export class HeapClock implements Clock {
  private t: number;
  private seq = 0;
  private heap: HeapTimer[] = [];
  constructor(start = 1_000_000) {
    this.t = start;
  }
  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): TimerHandle {
    const timer: HeapTimer = { at: this.t + Math.max(0, ms), seq: this.seq++, fn, cancelled: false };
    this.push(timer);
    return timer as unknown as TimerHandle;
  }
  clearTimeout(h: TimerHandle | undefined): void {
    if (h) (h as unknown as HeapTimer).cancelled = true;
  }
  pending(): number {
    return this.heap.filter((x) => !x.cancelled).length;
  }
  advance(ms: number): void {
    const end = this.t + ms;
    while (this.heap.length && this.heap[0].at <= end) {
      const next = this.pop();
      if (next.cancelled) continue;
      next.cancelled = true;
      this.t = Math.max(this.t, next.at);
      next.fn();
    }
    this.t = end;
  }
  private less(a: HeapTimer, b: HeapTimer): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq);
  }
  private push(x: HeapTimer): void {
    const h = this.heap;
    h.push(x);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(h[i], h[p])) break;
      [h[i], h[p]] = [h[p], h[i]];
      i = p;
    }
  }
  private pop(): HeapTimer {
    const h = this.heap;
    const top = h[0];
    const last = h.pop()!;
    if (h.length) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && this.less(h[l], h[m])) m = l;
        if (r < h.length && this.less(h[r], h[m])) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m], h[i]];
        i = m;
      }
    }
    return top;
  }
}

/** Peer i's name: deterministic, valid, ordered like i. */
export function simPeerName(i: number): PeerName {
  const h = (i + 1).toString(16).padStart(8, '0');
  return `02:00:${h.slice(0, 2)}:${h.slice(2, 4)}:${h.slice(4, 6)}:${h.slice(6, 8)}`;
}

export function simAddress(i: number): string {
  return `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}:6783`;
}

export interface MeshSimOptions {
  n: number;
  seed: number;
  discovery?: boolean;
  gossipIntervalMs?: number;
  delayMs?: number;
  connLimit?: number;
  /** targets of peer i (indices); default: one random earlier peer (keeps the graph connected) plus 0-2 random others */
  targets?: (i: number, random: () => number) => number[];
  log?: Logger;
  extra?: Partial<MeshOptions>;
  /** per peer index, on top of extra (e.g. routers that predate a feature among those that have it) */
  extraFor?: (i: number) => Partial<MeshOptions>;
  /** every peer runs the sleeve's liveness (test/fakes/sim-sleeve.ts) as its overlay */
  sleeve?: boolean;
}

/** N meshes on one FakeUnderlay driven by one FakeClock-like clock. */
export class MeshSim {
  readonly random: () => number;
  readonly underlay: FakeUnderlay;
  readonly meshes: Array<Mesh | null> = [];
  private uidSeq = 0;

  constructor(readonly clock: Clock & { advance(ms: number): void }, readonly o: MeshSimOptions) {
    this.random = seededRandom(o.seed);
    this.underlay = new FakeUnderlay({ clock, random: this.random, delayMs: o.delayMs ?? 1 });
  }

  defaultTargets(i: number): number[] {
    if (i === 0) return [];
    const t = new Set<number>([Math.floor(this.random() * i)]);
    const extra = Math.floor(this.random() * 3);
    for (let k = 0; k < extra; k++) {
      const j = Math.floor(this.random() * this.o.n);
      if (j !== i) t.add(j);
    }
    return [...t];
  }

  /** per peer index, its SimSleeve (with o.sleeve) */
  readonly sleeves: Array<SimSleeve | null> = [];

  makeMesh(i: number): Mesh {
    const uid = `u${(this.uidSeq++).toString(16).padStart(6, '0')}`;
    let overlay: SimSleeve | undefined;
    if (this.o.sleeve) {
      this.sleeves[i]?.stop();
      overlay = new SimSleeve(this.clock, this.random);
      this.sleeves[i] = overlay;
    }
    return new Mesh({
      ...(overlay ? { overlay, overlays: ['sleeve'] } : {}),
      identity: { name: simPeerName(i), nickname: `p${i}`, uid },
      transport: this.underlay.transport(simAddress(i)),
      clock: this.clock,
      log: this.o.log ?? silentLogger(),
      encryption: false,
      port: 6783,
      discovery: this.o.discovery ?? true,
      connLimit: this.o.connLimit,
      random: this.random,
      gossipIntervalMs: this.o.gossipIntervalMs ?? 5000,
      ...this.o.extra,
      ...this.o.extraFor?.(i),
    });
  }

  async start(): Promise<void> {
    for (let i = 0; i < this.o.n; i++) this.meshes.push(this.makeMesh(i));
    for (let i = 0; i < this.o.n; i++) {
      const m = this.meshes[i]!;
      await m.start();
      const ts = this.o.targets ? this.o.targets(i, this.random) : this.defaultTargets(i);
      m.connect(ts.map(simAddress));
    }
  }

  async stopPeer(i: number): Promise<void> {
    const m = this.meshes[i];
    this.meshes[i] = null;
    this.sleeves[i]?.stop();
    this.sleeves[i] = null;
    if (m) await m.stop();
  }

  /** Starts peer i again: same name, new uid, same targets as given. */
  async restartPeer(i: number, targets: number[]): Promise<Mesh> {
    await this.stopPeer(i);
    const m = this.makeMesh(i);
    this.meshes[i] = m;
    await m.start();
    m.connect(targets.map(simAddress));
    return m;
  }

  alive(): Mesh[] {
    return this.meshes.filter((m): m is Mesh => m !== null);
  }

  /** Advances simulated time in steps, letting promise callbacks (dial results) run in between. */
  async run(ms: number, stepMs = 10): Promise<void> {
    for (let t = 0; t < ms; t += stepMs) {
      this.clock.advance(Math.min(stepMs, ms - t));
      await new Promise<void>((r) => setImmediate(r));
    }
  }

  /** Runs until pred holds (checked every checkMs); returns the simulated ms it took, or -1. */
  async runUntil(pred: () => boolean, maxMs: number, checkMs = 50): Promise<number> {
    const start = this.clock.now();
    while (this.clock.now() - start <= maxMs) {
      if (pred()) return this.clock.now() - start;
      await this.run(checkMs);
    }
    return pred() ? this.clock.now() - start : -1;
  }

  /** Connected components of the live peers over connections established at both ends (ground truth). */
  components(): Mesh[][] {
    const live = this.alive();
    const byName = new Map(live.map((m) => [m.name, m]));
    const seen = new Set<Mesh>();
    const out: Mesh[][] = [];
    for (const start of live) {
      if (seen.has(start)) continue;
      const comp: Mesh[] = [start];
      seen.add(start);
      for (let i = 0; i < comp.length; i++) {
        const m = comp[i];
        for (const r of m.status().connections) {
          if (r.state !== 'established' || !r.peerName) continue;
          const o = byName.get(r.peerName);
          if (!o || seen.has(o) || !o.connectionTo(m.name)) continue;
          seen.add(o);
          comp.push(o);
        }
      }
      out.push(comp);
    }
    return out;
  }

  /** Every component has converged on its own view (see converged). */
  convergedComponents(): boolean {
    return this.components().every((c) => this.converged(c));
  }

  /** Every live peer knows exactly the live peers and all views are identical. */
  converged(peers: Mesh[] = this.alive()): boolean {
    if (!peers.length) return true;
    // hashes first: cached, so a check while views still differ costs next to nothing
    const hash = peers[0].topologyHash();
    for (const m of peers) if (m.topologyHash() !== hash) return false;
    for (const m of peers) {
      m.recomputeNow();
      if (m.peerNames().length !== peers.length || m.topologyHash() !== hash) return false;
    }
    const names = new Set(peers[0].peerNames());
    return peers.every((m) => names.has(m.name));
  }
}
