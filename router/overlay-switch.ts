// Several overlays per mesh connection (best first, e.g. fastdp then sleeve). The switch is the mesh's
// one OverlayManager: it attaches every enabled overlay to each connection, passes every Msg.Overlay
// payload to all of them (each ignores other overlays' messages by their `o` field), and picks the
// carrier: the best established overlay. Rules:
//   - the connection is established as soon as ANY overlay is;
//   - when the carrier fails, the next best established one carries at once (fallback);
//   - an overlay that failed before must stay established for climbBackMs before it carries again
//     (no flapping on a lossy path); one that never failed is taken at once;
//   - the connection fails (the mesh closes it) only when no overlay is established and every required
//     overlay has failed (the sleeve is required; fastdp is optional: its failure is a fallback).
// Status per connection: which overlay carries, its MTU and encryption, and why a better one does not
// (peer has no fastdp, kernel lacks ESP, heartbeats failing since T, disabled by flag).
//
// Kernel routes follow the carrier (FastDpRoutes below): prefixes whose next hop is carried by fastdp go
// `via <next hop VTEP> dev weave-vx onlink` (owner 'fastdp'); the sleeve must then leave those prefixes
// out of its own routes (owner 'sleeve' wins a tie by name order otherwise) — FastDpRoutes.sleeveSkips
// is the predicate for that.
import type { Clock, TimerHandle } from '../lib/clock';
import { errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';
import type { PeerName } from '../mesh/peer';
import type { MeshConnection } from '../mesh/types';
import type { DesiredRoute } from '../host/routes';

export interface SubStatus { overlay: string | null; encrypted: boolean; mtu?: number; reason?: string; stalled?: string }
export interface SubHandle {
  onMessage(payload: Uint8Array): void;
  close(): void;
  status(): SubStatus;
}
export interface SubManager { attach(conn: MeshConnection, cb: { established(): void; failed(reason: string): void }): SubHandle }

export interface SwitchOverlay {
  name: string;
  /** null: not run on any connection (disabledReason says why) */
  manager: SubManager | null;
  /** its failure alone does not close the connection (fastdp); default false (sleeve) */
  optional?: boolean;
  /** shown as the reason when manager is null; default 'disabled by flag' */
  disabledReason?: string;
}

export interface OverlaySwitchOptions {
  /** best first */
  overlays: SwitchOverlay[];
  clock: Clock;
  log: Logger;
  /** how long a previously failed better overlay must hold before it carries again; default 5000 ms */
  climbBackMs?: number;
}

export interface SwitchConnStatus {
  peer: PeerName;
  connId: string;
  overlay: string | null;
  encrypted: boolean;
  mtu?: number;
  reason?: string;
  /** per overlay: established and its own reason */
  overlays: Array<{ name: string; established: boolean; reason?: string }>;
}

class Sub {
  handle: SubHandle | null = null;
  established = false;
  failed = false;
  everFailed = false;
  establishedAt = 0;
  lastReason = '';
  constructor(readonly def: SwitchOverlay, readonly rank: number) {}
}

class SwConn {
  current: Sub | null = null;
  reportedEstablished = false;
  failReported = false;
  closed = false;
  timer: TimerHandle | undefined;
  climbAt = 0;
  constructor(readonly conn: MeshConnection, readonly peer: PeerName, readonly cb: { established(): void; failed(reason: string): void }, readonly subs: Sub[]) {}
}

export class OverlaySwitch {
  private readonly o: OverlaySwitchOptions;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly climbBackMs: number;
  private readonly conns = new Set<SwConn>();
  private readonly byPeer = new Map<PeerName, SwConn>();
  private readonly listeners = new Set<(peer: PeerName, overlay: string | null) => void>();
  /** carrier switches, per overlay name switched to ('none' when nothing carries) */
  readonly switches: Record<string, number> = {};

  constructor(o: OverlaySwitchOptions) {
    this.o = o;
    this.log = o.log.child({ component: 'overlay-switch' });
    this.clock = o.clock;
    this.climbBackMs = o.climbBackMs ?? 5000;
  }

  /** The names to advertise in Features.overlays: the enabled ones, best first. */
  advertised(): string[] {
    return this.o.overlays.filter((d) => d.manager).map((d) => d.name);
  }

  attach(conn: MeshConnection, cb: { established(): void; failed(reason: string): void }): SubHandle {
    const subs = this.o.overlays.map((d, i) => new Sub(d, i));
    const c = new SwConn(conn, conn.remote.name, cb, subs);
    this.conns.add(c);
    this.byPeer.set(c.peer, c);
    try {
      for (const s of subs) {
        if (!s.def.manager) {
          s.failed = true;
          s.lastReason = s.def.disabledReason ?? 'disabled by flag';
          continue;
        }
        s.handle = s.def.manager.attach(conn, {
          established: () => this.onSub(c, s, true, ''),
          failed: (reason) => this.onSub(c, s, false, reason),
        });
      }
    } catch (e) {
      this.detach(c);
      throw e;
    }
    return {
      onMessage: (payload) => {
        if (c.closed) return;
        for (const s of c.subs) s.handle?.onMessage(payload);
      },
      close: () => this.detach(c),
      status: () => this.connStatus(c),
    };
  }

  /** The overlay carrying data to this neighbour now (its newest connection), or null. */
  carrier(peer: PeerName): string | null {
    const c = this.byPeer.get(peer);
    return c && !c.closed ? c.current?.def.name ?? null : null;
  }

  /** Called after a connection's carrier changed. Returns the unsubscribe function. */
  onChange(fn: (peer: PeerName, overlay: string | null) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  statuses(): SwitchConnStatus[] {
    return [...this.conns].map((c) => ({ peer: c.peer, connId: c.conn.id, ...this.connStatus(c), overlays: c.subs.map((s) => ({ name: s.def.name, established: s.established, ...(s.established ? {} : { reason: this.subReason(s) }) })) }));
  }

  close(): void {
    for (const c of [...this.conns]) this.detach(c);
  }

  private onSub(c: SwConn, s: Sub, established: boolean, reason: string): void {
    if (c.closed) return;
    if (established) {
      if (!s.established) s.establishedAt = this.clock.now();
      s.established = true;
      s.failed = false;
    } else {
      if (s.established) s.everFailed = true;
      s.established = false;
      s.failed = true;
      s.lastReason = reason;
    }
    this.log.debug({ peer: c.peer, overlay: s.def.name, established, reason }, 'overlay state');
    this.select(c);
  }

  private select(c: SwConn): void {
    if (c.closed) return;
    const now = this.clock.now();
    const est = c.subs.filter((s) => s.established);
    let pick: Sub | null = est[0] ?? null;
    this.clock.clearTimeout(c.timer);
    c.timer = undefined;
    c.climbAt = 0;
    const cur = c.current && c.current.established ? c.current : null;
    if (pick && cur && pick.rank < cur.rank && pick.everFailed && now - pick.establishedAt < this.climbBackMs) {
      // a better overlay came back: hold until it has proven itself for climbBackMs
      c.climbAt = pick.establishedAt + this.climbBackMs;
      c.timer = this.clock.setTimeout(() => { c.timer = undefined; this.select(c); }, c.climbAt - now);
      pick = cur;
    }
    if (pick !== c.current) {
      const from = c.current?.def.name ?? null;
      c.current = pick;
      const to = pick?.def.name ?? null;
      this.switches[to ?? 'none'] = (this.switches[to ?? 'none'] ?? 0) + 1;
      this.log.info({ peer: c.peer, from, to, why: pick && pick.rank > 0 ? this.subReason(c.subs[0]) : undefined }, 'overlay carrier changed');
      for (const fn of this.listeners) {
        try {
          fn(c.peer, to);
        } catch (e) {
          this.log.error({ err: errMsg(e) }, 'overlay change listener threw');
        }
      }
    }
    if (pick && !c.reportedEstablished) {
      c.reportedEstablished = true;
      c.cb.established();
      return;
    }
    if (!pick && !c.failReported) {
      const required = c.subs.filter((s) => !s.def.optional && s.def.manager);
      const dead = required.length > 0 ? required.every((s) => s.failed) : c.subs.every((s) => s.failed);
      if (dead) {
        c.failReported = true;
        const reason = c.subs.map((s) => `${s.def.name}: ${this.subReason(s)}`).join('; ');
        c.cb.failed(reason);
      }
    }
  }

  private subReason(s: Sub): string {
    if (!s.handle) return s.lastReason;
    try {
      return s.handle.status().reason ?? s.lastReason ?? 'not established';
    } catch (e) {
      return `status unavailable: ${errMsg(e)}`;
    }
  }

  private connStatus(c: SwConn): SubStatus {
    const cur = c.current;
    let out: SubStatus;
    if (cur && cur.handle) {
      const s = cur.handle.status();
      out = { overlay: cur.def.name, encrypted: s.encrypted };
      if (s.mtu !== undefined) out.mtu = s.mtu;
      // the carrier's own word on whether data flows
      if (s.stalled) out.stalled = s.stalled;
    } else {
      out = { overlay: null, encrypted: c.conn.encrypted };
    }
    const better = c.subs.filter((s) => !cur || s.rank < cur.rank);
    const reasons: string[] = [];
    for (const s of better) {
      if (c.climbAt && s.established) {
        reasons.push(`${s.def.name} recovered, carries again at ${new Date(c.climbAt).toISOString()}`);
        continue;
      }
      reasons.push(cur ? this.subReason(s) : `${s.def.name}: ${this.subReason(s)}`);
    }
    if (reasons.length) out.reason = reasons.join('; ');
    return out;
  }

  private detach(c: SwConn): void {
    if (c.closed) return;
    c.closed = true;
    this.clock.clearTimeout(c.timer);
    this.conns.delete(c);
    for (const s of c.subs) {
      try {
        s.handle?.close();
      } catch (e) {
        this.log.error({ peer: c.peer, overlay: s.def.name, err: errMsg(e) }, 'overlay close threw');
      }
    }
    if (this.byPeer.get(c.peer) === c) {
      this.byPeer.delete(c.peer);
      if (c.current) for (const fn of this.listeners) fn(c.peer, null);
    }
  }
}

// ---- kernel routes that follow the carrier -------------------------------------------------------

export interface FastDpRoutesOptions {
  name: PeerName;
  log: Logger;
  /** mesh next hops (router/sleeve.ts RouteSource) */
  routes: { unicastNextHop(dst: PeerName): PeerName | undefined; on(event: 'routesChanged', fn: () => void): unknown; off(event: 'routesChanged', fn: () => void): unknown };
  /** announced prefixes (router/prefixes.ts PrefixTable) */
  prefixes: { all(): ReadonlyMap<PeerName, { prefixes: readonly string[] }>; local(): readonly string[]; onChange(fn: () => void): () => void };
  carrier: { carrier(peer: PeerName): string | null; onChange(fn: (peer: PeerName, overlay: string | null) => void): () => void };
  /** a neighbour's VTEP address (FastDp.remoteVtep) */
  vtepOf(peer: PeerName): string | undefined;
  /** host/routes.ts RouteReconciler */
  sink: { setDesired(owner: string, routes: DesiredRoute[]): void };
  /** default weave-vx */
  dev?: string;
  /** route MTU for fastdp prefixes (the VXLAN device's); absent: the device's */
  mtu?: number;
  /**
   * Kept data path (Kubernetes mode): a peer whose direct fastdp connection was lost keeps its route
   * `via <its own VTEP>` this long (the kernels on both ends still carry the traffic while its router
   * restarts), instead of following the mesh to another hop, which during the restart is a path the
   * others do not have either (each would route through the other). 0: follow the mesh at once.
   */
  holdMs?: number;
  clock?: Clock;
}

export const FASTDP_ROUTE_OWNER = 'fastdp';

/**
 * Routes of remote prefixes whose next hop is carried by fastdp, `via <next hop VTEP> dev weave-vx
 * onlink` (multi-hop: the first hop's kernel forwards on). Everything else stays the sleeve's.
 */
export class FastDpRoutes {
  private readonly o: FastDpRoutesOptions;
  private readonly offs: Array<() => unknown> = [];
  private readonly onRoutes = (): void => this.recompute();
  private lastKey = '';
  private closed = false;
  /** origins last reached directly over fastdp: their VTEP, and since when they are not (holdMs) */
  private readonly direct = new Map<PeerName, { vtep: string; lostAt?: number }>();
  private holdTimer: TimerHandle | undefined;

  constructor(o: FastDpRoutesOptions) {
    this.o = o;
    this.offs.push(o.prefixes.onChange(this.onRoutes));
    this.offs.push(o.carrier.onChange(this.onRoutes));
    o.routes.on('routesChanged', this.onRoutes);
    this.offs.push(() => o.routes.off('routesChanged', this.onRoutes));
    this.recompute();
  }

  /** The sleeve's predicate: true when the kernel route of origin's prefixes goes over fastdp. */
  sleeveSkips(origin: PeerName): boolean {
    return this.nextHopVtep(origin) !== undefined;
  }

  private nextHopVtep(origin: PeerName): string | undefined {
    if (origin === this.o.name) return undefined;
    const hop = this.o.routes.unicastNextHop(origin);
    const carrier = hop === undefined ? null : this.o.carrier.carrier(hop);
    const live = hop !== undefined && carrier === 'fastdp' ? this.o.vtepOf(hop) : undefined;
    const holdMs = this.o.holdMs ?? 0;
    if (holdMs <= 0 || !this.o.clock) return live;
    if (live !== undefined && hop === origin) {
      this.direct.set(origin, { vtep: live });
      return live;
    }
    const d = this.direct.get(origin);
    if (!d) return live;
    // still connected directly, but fastdp failed: the sleeve's at once (the held path is dead)
    if (hop === origin && carrier !== null && d.lostAt === undefined) {
      this.direct.delete(origin);
      return live;
    }
    const now = this.o.clock.now();
    d.lostAt ??= now;
    if (now - d.lostAt >= holdMs) {
      this.direct.delete(origin);
      return live;
    }
    if (!this.holdTimer) {
      this.holdTimer = this.o.clock.setTimeout(() => { this.holdTimer = undefined; this.recompute(); }, d.lostAt + holdMs - now + 1);
    }
    return d.vtep;
  }

  desired(): DesiredRoute[] {
    const dev = this.o.dev ?? 'weave-vx';
    const mine = new Set(this.o.prefixes.local());
    const out = new Map<string, DesiredRoute>();
    // sorted by origin: equal prefixes from two peers resolve the same way on every router
    for (const [origin, e] of [...this.o.prefixes.all()].sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
      const via = this.nextHopVtep(origin);
      for (const dst of e.prefixes) {
        if (mine.has(dst)) continue;
        if (!via) {
          out.delete(dst); // a later origin not on fastdp takes the prefix: the sleeve's then
          continue;
        }
        const r: DesiredRoute = { dst, dev, via, onlink: true };
        if (this.o.mtu !== undefined) r.mtu = this.o.mtu;
        out.set(dst, r);
      }
    }
    return [...out.values()].sort((a, b) => (a.dst < b.dst ? -1 : 1));
  }

  recompute(): void {
    if (this.closed) return;
    const list = this.desired();
    const key = JSON.stringify(list);
    if (key === this.lastKey) return;
    this.lastKey = key;
    try {
      this.o.sink.setDesired(FASTDP_ROUTE_OWNER, list);
    } catch (e) {
      this.o.log.error({ err: errMsg(e), routes: list.length }, 'cannot set fastdp routes');
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.o.clock?.clearTimeout(this.holdTimer);
    for (const off of this.offs) off();
    this.o.sink.setDesired(FASTDP_ROUTE_OWNER, []);
  }
}
