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
import type { Registry } from 'prom-client';
import { Allocator, type IpamInit } from './allocator';
import { LmdbStore, type IpamStore } from './store';
import { formatAddr, formatCidr, intersect, parseAddr, parseAddrInCidr, parseCidr, type Cidr, type Range } from './addr';
import { addIpamCommands } from './cli';
import { addIpamFlags, defaultQuorum, parseIpamFlags, type IpamConfig } from './flags';
import { checkRangeAgainstRoutes } from './host-routes';
import { ipamRoutes } from './http';
import { ipamSummary, renderIpam, type IpamReport } from './views';
import { RefusedError, UsageError, WeaveError, errMsg } from '../lib/errors';
import type { StateRecovery } from '../lib/state-file';
import type { Clock, TimerHandle } from '../lib/clock';
import { componentLogger, type Logger } from '../lib/log';
import { counterFrom, gaugeFrom } from '../lib/metrics';
import type { AddressBook, ApiRoute, AttachRequest, AttachedEndpoint, DetachOutcome, PeerSpace, Subsystem, SubsystemModule } from '../lib/subsystem';
import { isPeerName, type PeerName } from '../mesh/peer';
import type { PeerRecord } from '../mesh/topology';
import type { GossipChannel, Gossiper, GossipData } from '../mesh/types';
import type { HostCtx } from '../host/ip';
import { resolveNetns } from '../host/netns';

/** What IPAM needs from the daemon (the daemon's context satisfies it; tests hand in fakes). */
export interface IpamContext {
  cfg: { dataDir: string; peers: string[]; ipam: IpamConfig };
  root: Logger;
  clock: Clock;
  identity: { name: PeerName; nickname: string };
  mesh: {
    newGossip(channel: string, g: Gossiper): GossipChannel;
    peerNames(): PeerName[];
    peerRecords(): Array<Pick<PeerRecord, 'name' | 'nickname'>>;
    on(event: 'peersChanged', fn: () => void): unknown;
    off(event: 'peersChanged', fn: () => void): unknown;
  };
  hostCtx: HostCtx;
  endpoints: {
    list(): AttachedEndpoint[];
    exposedAddrs(): Array<{ cidr: string }>;
    on(event: 'changed', fn: () => void): unknown;
    off(event: 'changed', fn: () => void): unknown;
  };
  /** Sets the prefixes (CIDRs) this router serves on behalf of `owner`, announced to all peers. */
  announce(owner: string, prefixes: string[]): void;
  /** the subsystems built before IPAM (one may know the cluster's size: Kubernetes) */
  subsystems?: readonly Subsystem[];
}

/** The ident of the host's own (exposed) addresses. */
export const EXPOSE_IDENT = '_weave_expose';
const HANDOVER_BOUND_MS = 8000;
/** how long a claim waits for a live owner to give up the address */
const CLAIM_ASK_MS = 5000;

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

  private readonly f: IpamConfig;

  constructor(private readonly ctx: IpamContext, opts: { store?: IpamStore } = {}) {
    this.f = ctx.cfg.ipam;
    const f = this.f;
    this.log = componentLogger(ctx.root, 'ipam-router');
    this.clock = ctx.clock;
    if (f.init.mode === 'consensus') {
      const cluster = ctx.subsystems?.find((s) => s.clusterSize)?.clusterSize;
      this.quorum = f.init.quorum !== undefined
        ? { value: f.init.quorum, from: '--ipalloc-init consensus=N' }
        : cluster
          ? { value: defaultQuorum(cluster.size - 1), from: `a majority of ${cluster.size} ${cluster.from}` }
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

  /**
   * Addresses by ident for CNI (lib/subsystem.ts AddressBook). Unlike attach, an allocation fails at
   * once when the subnet is exhausted here and no other peer owns any of it (nobody could donate),
   * and asking for readiness starts the consensus on the ring (STATUS: ready only once it exists).
   */
  readonly addresses: AddressBook = {
    allocate: async (ident, subnet) => {
      if (this.f.init.mode === 'observer') throw new UsageError('this router is an IPAM observer (--ipalloc-init observer) and never allocates');
      const a = await this.allocator(this.clock.now() + this.f.waitMs);
      const sn = subnet ? parseCidr(subnet) : a.defaultSubnet;
      const held = a.lookup(ident).some((x) => { const n = parseAddr(x); return n >= sn.start && n < sn.end; });
      if (!held && this.exhausted(a, sn)) {
        throw new WeaveError('ENOSPACE', `no free address in ${formatCidr(sn)}: every address is in use and no other peer owns space there`, { ident, subnet: formatCidr(sn) });
      }
      const addr = await this.allocate(ident, subnet ? formatCidr(sn) : undefined);
      return `${addr}/${sn.prefixLen}`;
    },
    claim: async (ident, addr) => {
      if (this.f.init.mode === 'observer') throw new UsageError('this router is an IPAM observer (--ipalloc-init observer) and never allocates');
      if (!this.inRange(addr)) throw new UsageError(`${addr} is outside the allocation range ${this.f.range}`);
      await this.claim(ident, addr);
    },
    release: (ident) => this.free(ident),
    lookup: (ident) => this.alloc?.lookup(ident) ?? [],
    idents: (prefix) => (this.alloc ? this.alloc.status().allocations.filter((x) => x.ident.startsWith(prefix)).map((x) => x.ident) : []),
    readiness: () => {
      const a = this.alloc;
      if (!a) return { ready: false, reason: this.state() };
      if (this.f.init.mode === 'observer') return { ready: false, reason: 'this router is an IPAM observer (--ipalloc-init observer) and never allocates' };
      if (a.ringView().isEmpty()) {
        if (!this.primed) {
          this.primed = true;
          void a.prime(); // starts the consensus; resolves once the ring exists
        }
        return { ready: false, reason: this.state() };
      }
      return { ready: true, reason: this.state() };
    },
  };

  private primed = false;

  /** rmpeer for Kubernetes' reclaim (k8s/reclaim.ts), and who owns space. */
  readonly peerSpace: PeerSpace = {
    transferFrom: (peer) => this.transferFrom(peer),
    owners: () => this.alloc?.status().owners ?? [],
  };

  /** The ring exists, this peer has no free address in sn, and no other peer owns any of sn. */
  private exhausted(a: Allocator, sn: Cidr): boolean {
    const ring = a.ringView();
    if (ring.isEmpty() || a.freeIn(formatCidr(sn)) > 0) return false;
    for (let i = 0; i < ring.entries.length; i++) {
      if (ring.entries[i].peer !== this.ctx.identity.name && intersect(ring.entryRange(i), sn)) return false;
    }
    return true;
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

  async afterDetach(netns: string, result: DetachOutcome, before: AttachedEndpoint | undefined): Promise<void> {
    if (!this.alloc) return;
    let ident = before?.ident ?? before?.key;
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
  }

  apiRoutes(): ApiRoute[] {
    return ipamRoutes(this);
  }

  /** The live containers' and exposed addresses (endpoints come from the kernel when their file was lost) are ours. */
  private adoptLive(): void {
    if (this.f.init.mode === 'observer') return;
    // a pod's or a Docker endpoint's addresses are held under its own ident, not its namespace's key
    const live = this.ctx.endpoints.list().flatMap((e) => e.addrs.map((addr) => ({ ident: e.ident ?? e.key, addr })));
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

  metrics(reg: Registry): void {
    const st = () => this.alloc?.status();
    gaugeFrom(reg, 'weave_ipam_ring_seeded', 'Whether the IPAM ring exists (1) or is still waiting for consensus (0).', () => (st()?.ring.seeded ? 1 : 0));
    gaugeFrom(reg, 'weave_ipam_owned_addresses', 'Addresses in the ranges of the allocation ring that this router owns.', () => st()?.owned ?? 0);
    gaugeFrom(reg, 'weave_ipam_allocated_addresses', 'Addresses this router has handed to containers and exposed host addresses.', () => st()?.allocated ?? 0);
    gaugeFrom(reg, 'weave_ipam_pending_allocations', 'Allocations waiting for consensus or for space from another peer.', () => st()?.pending.length ?? 0);
    gaugeFrom(reg, 'weave_ipam_unreachable_owners', 'Peers that own part of the range and are not reachable now (see weave rmpeer).', () => st()?.owners.filter((o) => !o.reachable).length ?? 0);
    gaugeFrom(reg, 'weave_ipam_announced_prefixes', 'Prefixes this router announces for the ranges it owns.', () => this.announced.length);
    counterFrom(reg, 'weave_ipam_conflicts_total', 'Ring merge conflicts seen (each is logged and repaired).', () => st()?.conflicts.count ?? 0);
    counterFrom(reg, 'weave_ipam_allocator_events_total', 'Allocator events by kind (allocations, frees, donations, claims ...).',
      () => Object.entries(st()?.counters ?? {}).map(([event, value]) => ({ labels: { event }, value })), ['event']);
    counterFrom(reg, 'weave_ipam_router_events_total', 'IPAM events of the router glue by kind (allocation timeouts, addresses freed by garbage collection, announcement updates, errors).',
      () => Object.entries(this.counters).map(([event, value]) => ({ labels: { event }, value })), ['event']);
  }

  /** POST /ipam/allocate: an address for ident in subnet (default: the default subnet), as ADDR/LEN. */
  async allocateCidr(ident: string, subnet?: string): Promise<string> {
    const a = await this.allocator(this.clock.now() + this.f.waitMs);
    const sn = subnet ? parseCidr(subnet) : a.defaultSubnet;
    const addr = await this.allocate(ident, subnet);
    return `${addr}/${sn.prefixLen}`;
  }

  /** `weave rmpeer`: takes over the space of a peer that is gone; the number of addresses taken. */
  async transferFrom(peer: string): Promise<number> {
    const a = await this.allocator(this.clock.now() + this.f.waitMs);
    return a.transferFrom(peer);
  }

  /** `weave prime`: resolves once the ring exists, or fails after ms with the reason. */
  async prime(ms: number): Promise<void> {
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
  }

}

export const ipamModule: SubsystemModule<IpamConfig, IpamContext> = {
  name: 'ipam',
  flags: { add: addIpamFlags, parse: parseIpamFlags },
  commands: addIpamCommands,
  views: { ipam: renderIpam },
  create: async (ctx) => {
    await checkRangeAgainstRoutes(ctx.hostCtx, ctx.cfg.ipam, componentLogger(ctx.root, 'ipam-router'));
    return new IpamSubsystem(ctx);
  },
};
