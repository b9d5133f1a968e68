// Routes as desired state. Several owners (endpoints, sleeve, fastdp ...) each declare the routes they
// want; the reconciler reads what the kernel has under our rtnetlink protocol number and applies the
// difference in one `ip -batch`. It runs again on every change (debounced) and on a timer, so a route
// deleted by hand or flushed by some tool comes back on its own. Routes with any other protocol number
// are not ours and are never read, changed or deleted (`ip route del ... proto N` only matches ours).
import { LoopedReconciler } from './reconcile-loop';
import type { Clock, TimerHandle } from '../lib/clock';
import { WeaveError } from '../lib/errors';
import type { Logger } from '../lib/log';
import { canonicalPrefix } from './cidr';
import { isAddrText } from '../lib/addr';
import { HostCtx, ipBatch, ipJson } from './ip';

export interface DesiredRoute {
  dst: string; // CIDR
  dev: string;
  via?: string;
  src?: string;
  mtu?: number;
  onlink?: boolean;
  scope?: 'link' | 'global';
}

/** A route as `ip -json route show` prints it (the fields we compare). */
export interface ActualRoute {
  dst: string;
  dev?: string;
  gateway?: string;
  prefsrc?: string;
  scope?: string;
  metric?: number;
  flags?: string[];
  metrics?: Array<Record<string, number>>;
  type?: string;
}

/** Default rtnetlink protocol number marking weave's routes (not in /etc/iproute2/rt_protos). */
export const WEAVE_RT_PROTO = 0xb4;

interface NormRoute { dst: string; dev: string; via?: string; src?: string; mtu?: number; onlink: boolean; scope: 'link' | 'global' }

function normDesired(r: DesiredRoute): NormRoute {
  const dst = canonicalPrefix(r.dst);
  if (!dst || !r.dst.includes('/')) throw new WeaveError('EINVAL', `route dst "${r.dst}" is not an IPv4 CIDR`, { route: r });
  if (!r.dev || !/^[^\s/]{1,15}$/.test(r.dev)) throw new WeaveError('EINVAL', `route dev "${r.dev}" is not an interface name`, { route: r });
  if (r.via !== undefined && !isAddrText(r.via)) throw new WeaveError('EINVAL', `route via "${r.via}" is not an IPv4 address`, { route: r });
  if (r.src !== undefined && !isAddrText(r.src)) throw new WeaveError('EINVAL', `route src "${r.src}" is not an IPv4 address`, { route: r });
  if (r.mtu !== undefined && (!Number.isInteger(r.mtu) || r.mtu < 68 || r.mtu > 65535)) throw new WeaveError('EINVAL', `route mtu ${r.mtu} out of range`, { route: r });
  return {
    dst,
    dev: r.dev,
    via: r.via,
    src: r.src,
    mtu: r.mtu,
    onlink: !!r.onlink,
    // the kernel's own defaults: no gateway means on-link (scope link), a gateway means global
    scope: r.scope ?? (r.via ? 'global' : 'link'),
  };
}

function normActual(a: ActualRoute): (NormRoute & { metric: number }) | undefined {
  const dst = canonicalPrefix(a.dst);
  if (!dst || a.type && a.type !== 'unicast') return undefined;
  const mtu = a.metrics?.find((m) => typeof m.mtu === 'number')?.mtu;
  return {
    dst,
    dev: a.dev ?? '',
    via: a.gateway,
    src: a.prefsrc,
    mtu,
    onlink: !!a.flags?.includes('onlink'),
    scope: a.scope === 'link' ? 'link' : 'global',
    metric: a.metric ?? 0,
  };
}

function sameRoute(d: NormRoute, a: NormRoute): boolean {
  return d.dev === a.dev && d.via === a.via && d.src === a.src && d.mtu === a.mtu && d.onlink === a.onlink && d.scope === a.scope;
}

export interface RouteDiff {
  add: NormRoute[];
  change: NormRoute[];
  /** actual routes of ours to delete (dst, dev, metric as the kernel has them) */
  remove: Array<{ dst: string; dev: string; metric: number }>;
}

/**
 * Pure: what to do so that the kernel's routes of our protocol (`actual`) become `desired`.
 * One route per destination prefix (we never set metrics, so a metric-carrying duplicate is stale).
 */
export function diffRoutes(desired: DesiredRoute[], actual: ActualRoute[]): RouteDiff {
  const want = new Map<string, NormRoute>();
  for (const r of desired) {
    const n = normDesired(r);
    if (!want.has(n.dst)) want.set(n.dst, n);
  }
  const diff: RouteDiff = { add: [], change: [], remove: [] };
  const matched = new Set<string>();
  for (const raw of actual) {
    const a = normActual(raw);
    if (!a) continue;
    const d = want.get(a.dst);
    if (!d || a.metric !== 0 || matched.has(a.dst)) {
      diff.remove.push({ dst: a.dst, dev: a.dev, metric: a.metric });
      continue;
    }
    matched.add(a.dst);
    if (!sameRoute(d, a)) diff.change.push(d);
  }
  for (const [dst, d] of want) if (!matched.has(dst)) diff.add.push(d);
  return diff;
}

function routeSpec(r: NormRoute, proto: number): string {
  let s = `${r.dst}`;
  if (r.via) s += ` via ${r.via}`;
  s += ` dev ${r.dev}`;
  if (r.src) s += ` src ${r.src}`;
  if (r.mtu !== undefined) s += ` mtu ${r.mtu}`;
  if (r.onlink) s += ' onlink';
  s += ` scope ${r.scope} proto ${proto}`;
  return s;
}

/** Pure: the `ip -batch` lines for a diff. Deletes first, so a changed prefix never collides. */
export function routeBatchLines(diff: RouteDiff, proto: number): string[] {
  const lines: string[] = [];
  for (const r of diff.remove) lines.push(`route del ${r.dst}${r.dev ? ` dev ${r.dev}` : ''}${r.metric ? ` metric ${r.metric}` : ''} proto ${proto}`);
  // replace, not add, for changes: the kernel swaps the route in place, with no moment without one
  for (const r of diff.change) lines.push(`route replace ${routeSpec(r, proto)}`);
  // add, not replace, for new ones: replace would take over a route someone else made for this prefix
  for (const r of diff.add) lines.push(`route add ${routeSpec(r, proto)}`);
  return lines;
}

export interface ReconcileResult { added: number; removed: number; changed: number }

export interface RouteReconcilerStats {
  runs: number;
  errors: number;
  lastError?: string;
  added: number;
  removed: number;
  changed: number;
  conflicts: number;
}

export class RouteReconciler extends LoopedReconciler<ReconcileResult, RouteReconcilerStats> {
  readonly protocol: number;
  private readonly ctx: HostCtx;
  private readonly log: Logger;
  private readonly owners = new Map<string, DesiredRoute[]>();
  private readonly clock: Clock;
  /**
   * Kept data path (Kubernetes mode): a route nobody wants any more stays holdMs before it goes, and
   * the first pass keeps what the kernel already has for as long, unless replaced meanwhile. So a
   * router restarting (or a peer's connection while it restarts) leaves the kernel's routes working
   * until the mesh has them again. 0: routes follow the desired state at once.
   */
  private readonly holdMs: number;
  private readonly held = new Map<string, { route: DesiredRoute; until: number }>();
  private lastWanted = new Map<string, DesiredRoute>();
  private adopted = false;
  private holdTimer: TimerHandle | undefined;

  constructor(o: { ctx: HostCtx; log: Logger; clock: Clock; protocol?: number; debounceMs?: number; holdMs?: number }) {
    const log = o.log.child({ component: 'routes' });
    super(o.clock, o.debounceMs ?? 20, { runs: 0, errors: 0, added: 0, removed: 0, changed: 0, conflicts: 0 }, { log, what: 'route' });
    this.ctx = o.ctx;
    this.log = log;
    this.clock = o.clock;
    this.holdMs = o.holdMs ?? 0;
    this.protocol = o.protocol ?? WEAVE_RT_PROTO;
    if (!Number.isInteger(this.protocol) || this.protocol < 5 || this.protocol > 255) {
      // 0-4 are the kernel's own (unspec, redirect, kernel, boot, static): never claim those
      throw new WeaveError('EINVAL', `route protocol ${this.protocol} must be 5..255`, { protocol: this.protocol });
    }
  }

  /** Replaces owner's routes (validated now, so a bad route fails its caller, not a later reconcile). */
  setDesired(owner: string, routes: DesiredRoute[]): void {
    for (const r of routes) normDesired(r);
    if (routes.length === 0) this.owners.delete(owner);
    else this.owners.set(owner, routes.map((r) => ({ ...r })));
    this.schedule();
  }

  /** The union over owners; the first owner (by name) wins a prefix two owners want, with a warning. */
  desired(): DesiredRoute[] {
    const out: DesiredRoute[] = [];
    const seen = new Map<string, string>();
    for (const owner of [...this.owners.keys()].sort()) {
      for (const r of this.owners.get(owner)!) {
        const dst = canonicalPrefix(r.dst)!;
        const prev = seen.get(dst);
        if (prev !== undefined) {
          if (prev !== owner) {
            this.st.conflicts++;
            this.log.warn({ dst, owner, winner: prev }, 'two owners want a route to the same prefix; keeping the first');
          }
          continue;
        }
        seen.set(dst, owner);
        out.push(r);
      }
    }
    return out;
  }

  /** Routes held after their owner dropped them (kept data path), by prefix. */
  heldRoutes(): string[] {
    return [...this.held.keys()].sort();
  }

  override stop(): void {
    super.stop();
    this.clock.clearTimeout(this.holdTimer);
    this.holdTimer = undefined;
  }

  /** want plus the held routes (see holdMs); schedules the pass that lets the next one go. */
  private withHeld(want: DesiredRoute[], actual: ActualRoute[]): DesiredRoute[] {
    const now = this.clock.now();
    const wanted = new Map(want.map((r) => [canonicalPrefix(r.dst)!, r]));
    if (!this.adopted) {
      this.adopted = true;
      for (const raw of actual) {
        const a = normActual(raw);
        if (a && a.metric === 0 && a.dev && !wanted.has(a.dst)) {
          const { metric: _m, ...route } = a;
          this.held.set(a.dst, { route, until: now + this.holdMs });
        }
      }
      if (this.held.size) this.log.info({ routes: this.held.size, holdMs: this.holdMs }, 'keeping the routes a previous run left until the mesh has them again');
    }
    for (const [dst, r] of this.lastWanted) if (!wanted.has(dst) && !this.held.has(dst)) this.held.set(dst, { route: r, until: now + this.holdMs });
    for (const dst of wanted.keys()) this.held.delete(dst);
    this.lastWanted = wanted;
    const out = [...want];
    let next = Infinity;
    for (const [dst, h] of this.held) {
      if (h.until <= now) { this.held.delete(dst); continue; }
      out.push(h.route);
      next = Math.min(next, h.until);
    }
    this.clock.clearTimeout(this.holdTimer);
    this.holdTimer = next < Infinity ? this.clock.setTimeout(() => { this.holdTimer = undefined; this.schedule(); }, next - now + 1) : undefined;
    return out;
  }

  protected async runOnce(): Promise<ReconcileResult> {
    const actual = await ipJson<ActualRoute[]>(this.ctx, ['route', 'show', 'table', 'main', 'proto', String(this.protocol)]);
    const desired = this.holdMs > 0 ? this.withHeld(this.desired(), actual) : this.desired();
    const diff = diffRoutes(desired, actual);
    const lines = routeBatchLines(diff, this.protocol);
    const res = { added: diff.add.length, removed: diff.remove.length, changed: diff.change.length };
    if (lines.length) {
      this.log.debug({ ...res, lines }, 'applying route changes');
      // -force: one impossible route (device gone, foreign route in the way) must not block the rest
      await ipBatch(this.ctx, lines, { force: true });
      this.st.added += res.added;
      this.st.removed += res.removed;
      this.st.changed += res.changed;
    }
    return res;
  }
}
