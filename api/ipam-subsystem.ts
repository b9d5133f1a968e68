// IPAM in the router: flags, the allocator on the 'ipam' gossip channel with its lmdb store in
// <dataDir>/ipam, address resolution for attach/expose, the /ipam API, `weave rmpeer` / `weave prime`
// and `weave status ipam`.
//
// Forwarding follows ownership: whenever the ring changes here we announce our ranges (split into
// covering CIDRs) as prefixes, so a container on another host is reached through its range's owner
// by longest-prefix match; the daemon announces endpoints' own /32s (claims, or addresses kept after
// space moved) which win over the range.
//
// Quorum: `--ipalloc-init consensus=N` makes N peers (including this one) the quorum that must agree
// before the ring exists. Without N, as Weave does, the cluster is guessed from the peers given on the
// command line plus this one, and the quorum is a majority of it: floor((peers + 1) / 2) + 1. So
// give every initial peer the same list (or N), or different quorums could seed different rings.
import * as fs from 'fs';
import * as path from 'path';
import type { Command } from 'commander';
import { Option } from 'commander';
import { Allocator, DEFAULT_RANGE, type IpamInit } from '../ipam/allocator';
import { LmdbStore, type IpamStore } from '../ipam/store';
import { formatAddr, formatCidr, overlaps, parseAddrInCidr, parseCidr, containsRange, type Cidr, type Range } from '../ipam/addr';
import { RefusedError, UsageError, WeaveError, errMsg } from '../lib/errors';
import type { StateRecovery } from '../lib/state-file';
import type { Clock, TimerHandle } from '../lib/clock';
import type { Logger } from '../lib/log';
import { isPeerName, type PeerName } from '../mesh/peer';
import type { GossipChannel, Gossiper, GossipData } from '../mesh/types';
import { ipJson } from '../host/ip';
import { resolveNetns } from '../host/netns';
import { WEAVE_RT_PROTO } from '../host/routes';
import type { DetachResult, EndpointInfo } from '../router/endpoints';
import type { MetricsWriter } from './metrics';
import type { AttachRequest, DaemonContext, Subsystem, SubsystemModule } from './subsystem';
import type { ApiClient } from './client';
import { ipamSummary, renderIpam, type IpamReport } from './ipam-views';

/** The ident of the host's own (exposed) addresses. */
export const EXPOSE_IDENT = '_weave_expose';
const DEFAULT_WAIT_S = 20;
const HANDOVER_BOUND_MS = 8000;
/** how long a claim waits for a live owner to give up the address */
const CLAIM_ASK_MS = 5000;
const PRIME_DEFAULT_MS = 30_000;
const PRIME_MAX_MS = 300_000;

export type InitSpec = { mode: 'consensus'; quorum?: number } | { mode: 'seed'; peers: string[] } | { mode: 'observer' };

export interface IpamFlags {
  range: string;
  /** the range was given on the command line (overlap with a host route only warns) */
  rangeExplicit: boolean;
  defaultSubnet?: string;
  init: InitSpec;
  /** how long an allocation for attach/expose/API may wait before failing with the reason (ms) */
  waitMs: number;
}

/** `consensus[=N] | seed=peer,... | observer` */
export function parseIpallocInit(s: string): InitSpec {
  const v = s.trim();
  if (v === 'consensus') return { mode: 'consensus' };
  if (v === 'observer') return { mode: 'observer' };
  let m = /^consensus=(\d+)$/.exec(v);
  if (m) {
    const n = Number(m[1]);
    if (!Number.isSafeInteger(n) || n < 1) throw new UsageError(`invalid --ipalloc-init "${s}": the consensus quorum must be a whole number >= 1`);
    return { mode: 'consensus', quorum: n };
  }
  m = /^seed=(.+)$/.exec(v);
  if (m) {
    const peers = m[1].split(',').map((p) => p.trim());
    if (peers.some((p) => p === '')) throw new UsageError(`invalid --ipalloc-init "${s}": empty peer in the seed list`);
    return { mode: 'seed', peers: [...new Set(peers.map((p) => (isPeerName(p.toLowerCase()) ? p.toLowerCase() : p)))] };
  }
  throw new UsageError(`invalid --ipalloc-init "${s}": expected consensus, consensus=N, seed=PEER,... (peer names or nicknames) or observer`);
}

/** Reads and checks this module's flags from commander's options object. */
export function ipamFlagsFrom(flags: Record<string, unknown>): IpamFlags {
  const str = (k: string): string | undefined => (typeof flags[k] === 'string' && flags[k] !== '' ? (flags[k] as string) : undefined);
  const rangeArg = str('ipallocRange');
  const range = parseCidr(rangeArg ?? DEFAULT_RANGE);
  if (range.prefixLen > 30) throw new UsageError(`--ipalloc-range ${rangeArg} is too small: give at least a /30`);
  const ds = str('ipallocDefaultSubnet');
  if (ds !== undefined) {
    const sn = parseCidr(ds);
    if (!containsRange(range, sn)) throw new UsageError(`--ipalloc-default-subnet ${ds} is not inside the allocation range ${formatCidr(range)}`);
  }
  const init = parseIpallocInit(str('ipallocInit') ?? 'consensus');
  const waitArg = str('ipallocTimeout');
  const waitS = waitArg === undefined ? DEFAULT_WAIT_S : Number(waitArg);
  if (!Number.isFinite(waitS) || waitS <= 0 || waitS > 3600) throw new UsageError(`invalid --ipalloc-timeout "${waitArg}": seconds, more than 0`);
  return { range: formatCidr(range), rangeExplicit: rangeArg !== undefined, defaultSubnet: ds, init, waitMs: Math.round(waitS * 1000) };
}

/** Weave's guess: the initial cluster is the peers on the command line plus us; a majority of it. */
export function defaultQuorum(initialPeers: number): number {
  return Math.floor((initialPeers + 1) / 2) + 1;
}

/** The fewest CIDRs exactly covering each range (ranges are half-open, end may be 2^32). */
export function rangesToCidrs(ranges: Range[]): string[] {
  const out: string[] = [];
  for (const r of ranges) {
    let s = r.start;
    while (s < r.end) {
      // largest aligned block starting at s that fits
      let size = s === 0 ? 2 ** 32 : 2 ** Math.min(32, ctz(s));
      while (s + size > r.end) size /= 2;
      out.push(`${formatAddr(s)}/${32 - Math.log2(size)}`);
      s += size;
    }
  }
  return out;
}

function ctz(n: number): number {
  let k = 0;
  while (k < 32 && n % 2 ** (k + 1) === 0) k++;
  return k;
}

interface RouteLike { dst?: string; dev?: string; protocol?: string | number; type?: string }

/** Host routes (not weave's own, not default) that overlap range, as "DST dev DEV". */
export function overlappingRoutes(range: Cidr, routes: RouteLike[]): string[] {
  const out: string[] = [];
  for (const r of routes) {
    if (!r.dst || r.dst === 'default') continue;
    if (r.protocol === WEAVE_RT_PROTO || r.protocol === String(WEAVE_RT_PROTO)) continue;
    if (r.dev && (r.dev.startsWith('weave') || r.dev.startsWith('vethwe'))) continue;
    if (r.type && r.type !== 'unicast') continue;
    let c: Cidr;
    try {
      c = parseCidr(r.dst.includes('/') ? r.dst : `${r.dst}/32`, { allowHostBits: true });
    } catch {
      continue; // IPv6 or something iproute2 prints that is not a prefix
    }
    if (c.prefixLen === 0) continue;
    if (overlaps(c, range)) out.push(`${r.dst}${r.dev ? ` dev ${r.dev}` : ''}`);
  }
  return out;
}

/** Turns a seed list of names or nicknames into peer names, once every nickname is known. */
export function resolveSeeds(seeds: string[], self: { name: PeerName; nickname: string }, known: Array<{ name: PeerName; nickname: string }>): { peers: PeerName[]; missing: string[] } {
  const peers: PeerName[] = [];
  const missing: string[] = [];
  for (const s of seeds) {
    if (isPeerName(s)) { peers.push(s); continue; }
    const names = new Set(known.filter((k) => k.nickname === s).map((k) => k.name));
    if (s === self.nickname) names.add(self.name);
    if (names.size > 1) throw new UsageError(`seed nickname "${s}" is ambiguous (${[...names].join(', ')}): give peer names`);
    if (names.size === 1) peers.push([...names][0]);
    else missing.push(s);
  }
  return { peers, missing };
}

function requiredString(body: any, key: string): string {
  const v = body?.[key];
  if (typeof v !== 'string' || !v) throw new UsageError(`"${key}" must be a non-empty string`);
  return v;
}

function optionalString(body: any, key: string): string | undefined {
  const v = body?.[key];
  if (v === undefined || v === null || v === '') return undefined;
  if (typeof v !== 'string') throw new UsageError(`"${key}" must be a string`);
  return v;
}

export class IpamSubsystem implements Subsystem {
  readonly name = 'ipam';
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly store: IpamStore;
  private readonly channel: GossipChannel;
  private alloc: Allocator | null = null;
  private allocWaiters: Array<() => void> = [];
  /** live addresses to record once the allocator exists (seed nicknames still resolving at start) */
  private pendingLive: Array<{ ident: string; addr: string }> | null = null;
  private readonly quorum: { value: number; from: string } | undefined;
  private announced: string[] = [];
  private announceTimer: TimerHandle | undefined;
  private seedProblem = '';
  /** expose addresses between allocation and endpoints.expose: not garbage yet */
  private readonly exposing = new Set<string>();
  private readonly counters = { allocTimeouts: 0, gcFreed: 0, announceUpdates: 0, errors: 0 };
  private stopped = false;
  private readonly onPeersChanged = (): void => this.tryCreateSeeded();
  private readonly onEndpointsChanged = (): void => this.gcExposed();

  constructor(private readonly ctx: DaemonContext, private readonly f: IpamFlags, opts: { store?: IpamStore } = {}) {
    this.log = ctx.root.child({ component: 'ipam-router' });
    this.clock = ctx.clock;
    if (f.init.mode === 'consensus') {
      this.quorum = f.init.quorum !== undefined
        ? { value: f.init.quorum, from: '--ipalloc-init consensus=N' }
        : { value: defaultQuorum(ctx.cfg.peers.length), from: `${ctx.cfg.peers.length} peers on the command line + this one` };
    }
    if (!opts.store) fs.mkdirSync(path.join(ctx.cfg.dataDir, 'ipam'), { recursive: true });
    this.store = opts.store ?? new LmdbStore(path.join(ctx.cfg.dataDir, 'ipam'), { owner: ctx.identity.name });
    // The mesh wants the gossiper now; with seed nicknames the allocator comes later, so the channel
    // talks to this forwarder (gossip before then is dropped: it is state-based and comes again).
    const self = this;
    const fwd: Gossiper = {
      onGossipUnicast(src, msg) { self.alloc?.onGossipUnicast(src, msg); },
      onGossipBroadcast(src, u): GossipData | null { return self.alloc ? self.alloc.onGossipBroadcast(src, u) : null; },
      gossip(): GossipData | null { return self.alloc ? self.alloc.gossip() : null; },
      onGossip(u): GossipData | null { return self.alloc ? self.alloc.onGossip(u) : null; },
    };
    this.channel = ctx.mesh.newGossip('ipam', fwd);
    if (f.init.mode === 'seed') {
      ctx.mesh.on('peersChanged', this.onPeersChanged);
      this.tryCreateSeeded();
    } else {
      this.createAllocator(f.init.mode === 'consensus' ? { mode: 'consensus', quorum: this.quorum!.value } : { mode: 'observer' });
    }
    ctx.endpoints.on('changed', this.onEndpointsChanged);
  }

  private knownPeers(): PeerName[] {
    const me = this.ctx.identity.name;
    return this.ctx.mesh.peerNames().filter((p) => p !== me);
  }

  private createAllocator(init: IpamInit): void {
    const a = new Allocator({
      ourName: this.ctx.identity.name,
      ourNickname: this.ctx.identity.nickname,
      range: this.f.range,
      defaultSubnet: this.f.defaultSubnet,
      init,
      clock: this.clock,
      log: this.ctx.root,
      channel: this.channel,
      knownPeers: () => this.knownPeers(),
      store: this.store,
      onRingChanged: () => this.scheduleAnnounce(),
    });
    this.alloc = a;
    this.seedProblem = '';
    if (this.pendingLive) a.adoptLive(this.pendingLive);
    this.pendingLive = null;
    this.scheduleAnnounce();
    const w = this.allocWaiters;
    this.allocWaiters = [];
    for (const f of w) f();
  }

  private tryCreateSeeded(): void {
    if (this.alloc || this.stopped || this.f.init.mode !== 'seed') return;
    const known = this.ctx.mesh.peerRecords().map((r) => ({ name: r.name, nickname: r.nickname }));
    try {
      const r = resolveSeeds(this.f.init.peers, { name: this.ctx.identity.name, nickname: this.ctx.identity.nickname }, known);
      if (r.missing.length) {
        this.seedProblem = `waiting to learn the peer names of seed nicknames ${r.missing.join(', ')} (connect to them)`;
        return;
      }
      this.ctx.mesh.off('peersChanged', this.onPeersChanged);
      this.log.info({ seeds: r.peers }, 'ipam: seed list resolved');
      this.createAllocator({ mode: 'seed', peers: r.peers });
    } catch (e) {
      this.counters.errors++;
      this.seedProblem = errMsg(e);
      this.log.error({ err: errMsg(e) }, 'ipam: cannot resolve the seed list');
    }
  }

  /** The allocator, waiting (bounded by deadline) while seed nicknames are being resolved. */
  private async allocator(deadline: number): Promise<Allocator> {
    if (this.alloc) return this.alloc;
    if (this.stopped) throw new WeaveError('ESHUTDOWN', 'ipam is stopping');
    await new Promise<void>((resolve, reject) => {
      const done = (): void => { this.clock.clearTimeout(t); resolve(); };
      const t = this.clock.setTimeout(() => {
        this.allocWaiters = this.allocWaiters.filter((x) => x !== done);
        reject(new WeaveError('ETIMEDOUT', `ipam is not ready: ${this.seedProblem || 'allocator not created'}`));
      }, Math.max(0, deadline - this.clock.now()));
      this.allocWaiters.push(done);
    });
    return this.alloc!;
  }

  // ---------------------------------------------------------------- announcements

  private scheduleAnnounce(): void {
    // The allocator calls back from inside its own ring update (even its constructor): announce on
    // the next turn, once, however many changes a merge made.
    if (this.announceTimer || this.stopped) return;
    this.announceTimer = this.clock.setTimeout(() => {
      this.announceTimer = undefined;
      this.announce();
    }, 0);
  }

  private announce(): void {
    if (!this.alloc || this.stopped) return;
    const prefixes = rangesToCidrs(this.alloc.ownedRanges());
    if (prefixes.length === this.announced.length && prefixes.every((p, i) => p === this.announced[i])) return;
    this.announced = prefixes;
    this.counters.announceUpdates++;
    this.log.debug({ prefixes: prefixes.length }, 'ipam: announcing our ranges');
    this.ctx.announce('ipam', prefixes);
  }

  // ---------------------------------------------------------------- allocation

  /** allocate() bounded by waitMs; on timeout the error carries the allocator's reason for waiting. */
  async allocate(ident: string, subnet?: string, waitMs = this.f.waitMs): Promise<string> {
    const deadline = this.clock.now() + waitMs;
    const a = await this.allocator(deadline);
    const ac = new AbortController();
    let reason: string | undefined;
    const t = this.clock.setTimeout(() => {
      reason = a.status().pending.find((p) => p.ident === ident)?.reason ?? 'still waiting';
      ac.abort();
    }, Math.max(0, deadline - this.clock.now()));
    try {
      return await a.allocate(ident, subnet, { signal: ac.signal });
    } catch (e) {
      if (reason !== undefined) {
        this.counters.allocTimeouts++;
        throw new WeaveError('ETIMEDOUT', `no address for ${ident} within ${Math.round(waitMs / 100) / 10}s: ${reason}`, { ident, subnet, reason });
      }
      throw e;
    } finally {
      this.clock.clearTimeout(t);
    }
  }

  /**
   * Records an explicit address for ident. When it lies in a live peer's space, asks that owner for
   * exactly this address (a space request for its /32: the owner donates it if it is free there);
   * refused when the owner keeps it (allocated there) or is unreachable.
   */
  async claim(ident: string, addr: string, waitMs = this.f.waitMs): Promise<void> {
    const deadline = this.clock.now() + waitMs;
    const a = await this.allocator(deadline);
    // claim waits for the ring; bound it like an allocation
    let t: TimerHandle | undefined;
    const timeout = new Promise<never>((_, reject) => {
      t = this.clock.setTimeout(() => {
        const st = a.status();
        const why = st.ring.seeded ? 'still waiting' : st.consensus ? `waiting for consensus on the ring: ${st.consensus.promisedToHighest} of ${st.consensus.quorum} needed peers agree` : 'waiting for the ring';
        this.counters.allocTimeouts++;
        reject(new WeaveError('ETIMEDOUT', `cannot claim ${addr} within ${Math.round(waitMs / 100) / 10}s: ${why}`, { ident, addr }));
      }, Math.max(0, deadline - this.clock.now()));
    });
    try {
      await Promise.race([a.claim(ident, addr), timeout]);
      return;
    } catch (e) {
      if (!(e instanceof WeaveError && e.code === 'EOWNED')) throw e;
      const left = Math.min(CLAIM_ASK_MS, Math.max(0, deadline - this.clock.now()));
      try {
        const got = await this.allocate(ident, `${addr}/32`, left);
        if (got !== addr) throw new WeaveError('EINTERNAL', `asked for ${addr}, got ${got}`);
        this.log.debug({ ident, addr, owner: e.context.owner }, 'ipam: the owner gave us the claimed address');
      } catch (e2) {
        throw new RefusedError('EOWNED', `${e.message}, which did not give it up (it is probably in use there)${e2 instanceof WeaveError && e2.code === 'ETIMEDOUT' ? '' : `: ${errMsg(e2)}`}`, { ...e.context, ident });
      }
    } finally {
      this.clock.clearTimeout(t);
    }
  }

  free(ident: string, addr?: string): number {
    return this.alloc ? this.alloc.free(ident, addr) : 0;
  }

  private inRange(addr: string): boolean {
    const r = parseCidr(this.f.range);
    const { addr: a } = parseAddrInCidr(addr.includes('/') ? addr : `${addr}/32`);
    return a >= r.start && a < r.end;
  }

  async resolveAddresses(req: AttachRequest, kind: 'attach' | 'expose'): Promise<string[] | undefined> {
    const ident = kind === 'expose' ? EXPOSE_IDENT : resolveNetns(req.netns).key;
    const args = req.cidrs.length ? req.cidrs : ['net:default'];
    if (this.f.init.mode === 'observer' && args.some((x) => x.startsWith('net:'))) {
      throw new UsageError('this router is an IPAM observer (--ipalloc-init observer) and never allocates: give ADDR/LEN');
    }
    const out: string[] = [];
    for (const arg of args) {
      if (arg.startsWith('net:')) {
        const what = arg.slice(4);
        const a = await this.allocator(this.clock.now() + this.f.waitMs);
        const sn = what === 'default' ? a.defaultSubnet : parseCidr(what);
        const addr = await this.allocate(ident, what === 'default' ? undefined : formatCidr(sn));
        const cidr = `${addr}/${sn.prefixLen}`;
        if (kind === 'expose') this.exposing.add(addr);
        out.push(cidr);
        continue;
      }
      const { addr, cidr } = parseAddrInCidr(arg);
      // addresses outside the range are the user's business (as in Weave): no claim
      if (this.inRange(formatAddr(addr)) && this.f.init.mode !== 'observer') {
        await this.claim(ident, formatAddr(addr));
        if (kind === 'expose') this.exposing.add(formatAddr(addr));
      }
      out.push(`${formatAddr(addr)}/${cidr.prefixLen}`);
    }
    return out;
  }

  async afterDetach(netns: string, result: DetachResult, before: EndpointInfo | undefined): Promise<void> {
    if (!this.alloc) return;
    let ident = before?.key;
    if (!ident) {
      try {
        ident = resolveNetns(netns).key;
      } catch (e) {
        this.log.debug({ netns, err: errMsg(e) }, 'ipam: detached namespace cannot be resolved; nothing to free');
        return;
      }
    }
    const n = result.linkRemoved ? this.alloc.free(ident) : result.removed.reduce((k, c) => k + this.alloc!.free(ident!, c.split('/')[0]), 0);
    if (n) this.log.debug({ netns, ident, freed: n }, 'ipam: freed detached addresses');
  }

  /** After hide (endpoints 'changed'): exposed addresses we allocated and that are no longer exposed go back. */
  private gcExposed(): void {
    if (!this.alloc || this.stopped) return;
    const exposed = new Set(this.ctx.endpoints.exposedAddrs().map((x) => x.cidr.split('/')[0]));
    for (const a of this.alloc.lookup(EXPOSE_IDENT)) {
      if (exposed.has(a)) this.exposing.delete(a);
      else if (!this.exposing.has(a)) {
        this.alloc.free(EXPOSE_IDENT, a);
        this.counters.gcFreed++;
      }
    }
  }

  /**
   * After a restart: endpoints dropped records of namespaces that died while we were down; their
   * addresses are free again. Runs before the API listens, so no attach is half done.
   */
  private gcDeadNamespaces(): void {
    if (!this.alloc) return;
    const live = new Set(this.ctx.endpoints.list().map((e) => e.key));
    for (const { ident, addrs } of this.alloc.status().allocations) {
      if (!/^\d+:\d+$/.test(ident) || live.has(ident)) continue;
      this.alloc.free(ident);
      this.counters.gcFreed += addrs.length;
      this.log.info({ ident, addrs }, 'ipam: freed the addresses of a namespace that went away while the router was down');
    }
    const exposed = new Set(this.ctx.endpoints.exposedAddrs().map((x) => x.cidr.split('/')[0]));
    for (const a of this.alloc.lookup(EXPOSE_IDENT)) if (!exposed.has(a)) { this.alloc.free(EXPOSE_IDENT, a); this.counters.gcFreed++; }
  }

  // ---------------------------------------------------------------- lifecycle, API, status

  async start(): Promise<void> {
    this.gcDeadNamespaces();
    this.adoptLive();
    this.registerApi();
  }

  /** The live containers' and exposed addresses (endpoints come from the kernel when their file was lost) are ours. */
  private adoptLive(): void {
    if (this.f.init.mode === 'observer') return;
    const live = this.ctx.endpoints.list().flatMap((e) => e.addrs.map((addr) => ({ ident: e.key, addr })));
    for (const x of this.ctx.endpoints.exposedAddrs()) live.push({ ident: EXPOSE_IDENT, addr: x.cidr });
    if (this.alloc) this.alloc.adoptLive(live);
    else this.pendingLive = live;
  }

  /** What was found damaged and recovered (the router's `state` report section). */
  recovery(): StateRecovery[] {
    const out = this.store.recovery?.() ?? [];
    const r = this.alloc?.recovery();
    if (!r || !(r.lostState || r.reclaimed || r.held || r.conflicts.length)) return out;
    const got: string[] = [];
    if (r.ringFrom) got.push(`ring ownership from ${r.ringFrom}`);
    else if (r.lostState) got.push('waiting for the ring from peers');
    if (r.reclaimed || r.held) got.push(`${r.reclaimed + r.held} live container addresses claimed again${r.held ? ` (${r.held} outside our space, published as held)` : ''}`);
    if (r.conflicts.length) got.push(`duplicates: ${r.conflicts.join('; ')}`);
    const note = { action: got.join('; '), from: "peers' gossip (the ring with our entries) and the kernel (live containers' addresses)" };
    if (out.length) return out.map((x) => ({ ...x, action: `${x.action}; ${note.action}`, from: note.from }));
    return [{ file: 'ipam', problem: 'live containers had addresses IPAM did not record', ...note, at: this.clock.now() }];
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.clock.clearTimeout(this.announceTimer);
    this.ctx.mesh.off('peersChanged', this.onPeersChanged);
    this.ctx.endpoints.off('changed', this.onEndpointsChanged);
    this.alloc?.close();
    this.store.close();
  }

  async reset(): Promise<void> {
    if (!this.alloc) return;
    const a = this.alloc;
    let t: TimerHandle | undefined;
    await Promise.race([
      a.handOver(),
      new Promise<void>((resolve) => {
        t = this.clock.setTimeout(() => {
          this.log.warn({}, 'ipam: hand-over not acknowledged in time; leaving anyway');
          resolve();
        }, HANDOVER_BOUND_MS);
      }),
    ]);
    this.clock.clearTimeout(t);
  }

  state(): string {
    const a = this.alloc;
    if (!a) return this.seedProblem || 'starting';
    const st = a.status();
    if (st.mode === 'observer' && !st.ring.seeded) return 'observer: waiting for the ring from other peers';
    if (!st.ring.seeded) {
      if (st.consensus) return `waiting for consensus (${st.consensus.promisedToHighest} of ${st.consensus.quorum} needed peers agree, ${st.consensus.participants} known)`;
      return 'idle: the ring is created at the first allocation (or weave prime)';
    }
    if (st.mode === 'observer') return 'ready (observer)';
    return st.pending.length ? `waiting: ${st.pending[0].reason}` : 'ready';
  }

  report(): IpamReport {
    const st = this.alloc ? this.alloc.status() : null;
    const state = this.state();
    return { state, summary: ipamSummary(state, st), status: st, announced: this.announced.slice(), quorum: this.quorum };
  }

  metrics(m: MetricsWriter): void {
    const st = this.alloc?.status();
    m.gauge('weave_ipam_ring_seeded', 'Whether the IPAM ring exists (1) or not yet (0).', st?.ring.seeded ? 1 : 0);
    m.gauge('weave_ipam_owned_addresses', 'Addresses in the ranges this router owns.', st?.owned ?? 0);
    m.gauge('weave_ipam_allocated_addresses', 'Addresses allocated by this router.', st?.allocated ?? 0);
    m.gauge('weave_ipam_pending_allocations', 'Allocations waiting (for consensus or space).', st?.pending.length ?? 0);
    m.gauge('weave_ipam_unreachable_owners', 'Owners of ranges that are not reachable now.', st?.owners.filter((o) => !o.reachable).length ?? 0);
    m.gauge('weave_ipam_announced_prefixes', 'Prefixes announced for our ranges.', this.announced.length);
    m.counter('weave_ipam_conflicts_total', 'Ring merge conflicts seen (logged and repaired).', st?.conflicts.count ?? 0);
    for (const [k, v] of Object.entries(st?.counters ?? {})) m.counter('weave_ipam_events_total', 'Allocator events by kind.', v, { event: k });
    for (const [k, v] of Object.entries(this.counters)) m.counter('weave_ipam_router_events_total', 'IPAM router integration events by kind.', v, { event: k });
  }

  private registerApi(): void {
    const api = this.ctx.api;
    api.add('GET', '/ipam', () => this.report());
    api.add('POST', '/ipam/allocate', async ({ body }) => {
      const ident = requiredString(body, 'ident');
      const subnet = optionalString(body, 'subnet');
      const a = await this.allocator(this.clock.now() + this.f.waitMs);
      const sn = subnet ? parseCidr(subnet) : a.defaultSubnet;
      const addr = await this.allocate(ident, subnet);
      return { ident, addr: `${addr}/${sn.prefixLen}` };
    });
    api.add('POST', '/ipam/claim', async ({ body }) => {
      const ident = requiredString(body, 'ident');
      const addr = requiredString(body, 'addr');
      await this.claim(ident, addr);
      return { ident, addr };
    });
    api.add('POST', '/ipam/free', ({ body }) => {
      const ident = requiredString(body, 'ident');
      const addr = optionalString(body, 'addr');
      return { ident, freed: this.free(ident, addr) };
    });
    api.add('POST', '/rmpeer', async ({ body }) => {
      const peer = requiredString(body, 'peer');
      const a = await this.allocator(this.clock.now() + this.f.waitMs);
      return { peer, addresses: a.transferFrom(peer) };
    });
    api.add('POST', '/prime', async ({ body }) => {
      const ms = typeof body?.timeoutMs === 'number' ? Math.min(Math.max(0, body.timeoutMs), PRIME_MAX_MS) : PRIME_DEFAULT_MS;
      const deadline = this.clock.now() + ms;
      const a = await this.allocator(deadline);
      let t: TimerHandle | undefined;
      try {
        await Promise.race([a.prime(), new Promise<never>((_, reject) => {
          t = this.clock.setTimeout(() => reject(new WeaveError('ETIMEDOUT', `the ring does not exist yet: ${this.state()}`)), Math.max(0, deadline - this.clock.now()));
        })]);
      } finally {
        this.clock.clearTimeout(t);
      }
      return { seeded: true, state: this.state() };
    });
  }
}

/** Refuses the default range when it overlaps a host route; warns when the range was given. */
export async function checkRangeAgainstRoutes(ctx: Pick<DaemonContext, 'hostCtx'>, f: IpamFlags, log: Logger): Promise<void> {
  let routes: RouteLike[];
  try {
    routes = await ipJson<RouteLike[]>(ctx.hostCtx, ['route', 'show']);
  } catch (e) {
    log.warn({ err: errMsg(e) }, 'ipam: cannot read the host routes to check the allocation range');
    return;
  }
  const hits = overlappingRoutes(parseCidr(f.range), routes);
  if (hits.length === 0) return;
  if (f.rangeExplicit) {
    log.warn({ range: f.range, routes: hits }, `ipam: --ipalloc-range ${f.range} overlaps host routes (${hits.join('; ')}); containers may not reach those networks`);
    return;
  }
  throw new UsageError(`the default allocation range ${f.range} overlaps host routes (${hits.join('; ')}): choose another with --ipalloc-range`, { routes: hits });
}

function addRouterFlags(cmd: Command): void {
  cmd
    .option('--ipalloc-range <cidr>', `address range IPAM allocates from (default ${DEFAULT_RANGE}; the default is refused if it overlaps a host route)`)
    .option('--ipalloc-default-subnet <cidr>', 'subnet (inside the range) for attach without an address (default: the whole range)')
    .option('--ipalloc-init <mode>', 'how the ring starts: consensus[=N] (N peers must agree; default: a majority of the peers given + this one), seed=PEER,... (names or nicknames), observer', 'consensus')
    .addOption(new Option('--ipalloc-timeout <seconds>', 'how long an allocation may wait before the request fails with the reason').default(String(DEFAULT_WAIT_S)).hideHelp());
}

function addCommands(program: Command, client: (opts: { httpAddr?: string }) => ApiClient): void {
  program.command('rmpeer').description('take over the address space of a peer that is gone for good (prints how many addresses)')
    .argument('<peer>', 'peer name or nickname')
    .option('--http-addr <host:port>', 'HTTP API address')
    .action(async (peer: string, o: { httpAddr?: string }) => {
      const r = await client(o).request<{ addresses: number }>('POST', '/rmpeer', { peer });
      process.stdout.write(`${r.addresses} IPs taken over from ${peer}\n`);
    });
  program.command('prime').description('wait until the IPAM ring exists (consensus reached)')
    .option('--http-addr <host:port>', 'HTTP API address')
    .action(async (o: { httpAddr?: string }) => {
      // each request waits up to 30 s; keep asking so prime blocks as long as it takes
      for (;;) {
        try {
          await client(o).request('POST', '/prime', { timeoutMs: 25_000 }, { timeoutMs: 35_000 });
          return;
        } catch (e) {
          if (!(e instanceof WeaveError && e.code === 'ETIMEDOUT')) throw e;
          process.stderr.write(`weave prime: ${e.message}; still waiting\n`);
        }
      }
    });
}

export const ipamModule: SubsystemModule = {
  name: 'ipam',
  addRouterFlags,
  checkFlags: (flags) => { ipamFlagsFrom(flags); },
  addCommands,
  create: async (ctx) => {
    const f = ipamFlagsFrom(ctx.flags);
    await checkRangeAgainstRoutes(ctx, f, ctx.root.child({ component: 'ipam-router' }));
    return new IpamSubsystem(ctx, f);
  },
  statusViews: { ipam: renderIpam },
};
