// The IPAM allocator of one router: owns this peer's part of the ring, hands out addresses only
// inside the ranges it owns (so allocation never collides, even across partitions), asks owners for
// space when it has none, and plugs into the mesh as the 'ipam' gossip channel (Gossiper).
//
// Flow of an allocation: allocate() queues a pending op → tryPending(): no ring yet → consensus
// (or wait for one, as an observer) | free owned address in the subnet → persist, resolve | none →
// unicast 'req' to the owner with the most reported free space in the subnet → the owner donates
// half of its largest free run (ring.transfer, broadcast) and answers with its ring → merge →
// tryPending() again. Retries ride the Clock, and each pending op shows why it waits in status().
//
// Merge repair (two separately seeded rings meet; see ring.ts): the ring whose seeds sort lower
// wins. A peer of the losing ring adopts the winner (its old ring kept as a snapshot), keeps its
// containers' addresses and publishes them in its held-address record (gossiped, owner-only,
// highest version wins). Everywhere, addresses in other peers' records are reserved (never handed
// out or donated); the owner of a held address hands it to the holder as a one-address donation
// when it is free, or reports a true duplicate when its own container has it (it is then handed
// over once that container frees it). Until every reachable owner of a losing ring has published
// a record against the winning ring, peers that know of the conflict neither allocate nor donate
// (visible reason); space of unreachable such owners (as last seen) is avoided instead.
//
// Lost state (the store says its persisted data was damaged or deleted): we cannot know which ring we
// belonged to nor what we voted, so we neither seed a ring (consensus or seed list) nor vote; the ring
// comes from peers' gossip, which holds our entries. The router hands in the addresses its live
// containers have (adoptLive, from the kernel); they are recorded the moment the ring exists, before any
// waiting allocation is served, and those outside our space are published as held, so none is handed
// out twice.
import type { Clock, TimerHandle } from '../lib/clock';
import type { Logger } from '../lib/log';
import type { GossipChannel, GossipData, Gossiper } from '../mesh/types';
import { isPeerName, type PeerName } from '../mesh/peer';
import { ProtocolError, RefusedError, UsageError, WeaveError, errMsg } from '../lib/errors';
import { containsRange, formatAddr, formatCidr, formatRange, intersect, parseAddr, parseCidr, subtractRanges, usableRange, type Addr, type Cidr, type Range } from './addr';
import { CLAIM_BUMP, Ring, compareSeeds, sameList } from './ring';
import { Space } from './space';
import { Paxos, type PaxosNode } from './paxos';
import type { IpamStore } from './store';
import { IpamGossipData, decodeGossip, decodePaxosNode, decodeRecords, decodeUnicast, encodePaxosNode, encodeRecords, encodeUnicast, type GossipMsg, type HeldRecord } from './wire';

export type IpamInit = { mode: 'consensus'; quorum?: number } | { mode: 'seed'; peers: PeerName[] } | { mode: 'observer' };

export interface AllocatorOptions {
  ourName: PeerName;
  ourNickname: string;
  /** CIDR, default 10.32.0.0/12 */
  range?: string;
  /** CIDR inside range; default = range */
  defaultSubnet?: string;
  init: IpamInit;
  clock: Clock;
  log: Logger;
  /** may also be set later with setChannel (the mesh creates the channel after the gossiper) */
  channel?: GossipChannel;
  /** peers reachable now (excluding us) */
  knownPeers: () => PeerName[];
  store: IpamStore;
  /** randomness for retry jitter; seeded in simulations */
  random?: () => number;
  /** how long to wait for a space request's answer before asking the next owner (ms) */
  requestTimeoutMs?: number;
  /** how long a consensus round may take before proposing again (ms, plus jitter) */
  consensusRetryMs?: number;
  /** how long handOver waits for the receiver's ack (ms) */
  handOverTimeoutMs?: number;
  /**
   * Called (synchronously, possibly from inside the constructor) after every change of the ring as
   * seen here, so the router can re-announce the prefixes it owns. Must not call back into the allocator.
   */
  onRingChanged?: () => void;
}

/** What the allocator recovered after its state was lost or endpoints were found unrecorded. */
export interface AllocatorRecovery {
  lostState: string | null;
  /** who sent the ring we took after lost state ('peers' gossip' when the sender is unknown) */
  ringFrom: string | null;
  ringAt: number | null;
  /** live addresses recorded again (in our space) */
  reclaimed: number;
  /** live addresses outside our space, published as held */
  held: number;
  /** live addresses that another ident already held here: "ADDR: ..." */
  conflicts: string[];
}

export const DEFAULT_RANGE = '10.32.0.0/12';
/** SpaceRequest.donor while no owner of the subnet is reachable (the reason then names the owners) */
const NO_DONOR = '(none reachable)';

interface PendingAlloc {
  ident: string;
  subnet: Cidr;
  since: number;
  reason: string;
  resolve: (addr: string) => void;
  reject: (err: Error) => void;
  onAbort?: () => void;
  signal?: AbortSignal;
}

interface SpaceRequest {
  timer: TimerHandle;
  donor: PeerName;
  attempts: number;
}

export interface IpamOwnerStatus {
  peer: PeerName;
  nickname: string;
  addresses: number;
  percent: number;
  free: number;
  reachable: boolean;
}

export interface IpamStatus {
  name: PeerName;
  nickname: string;
  range: string;
  defaultSubnet: string;
  mode: IpamInit['mode'];
  ring: { seeded: boolean; seeds: PeerName[]; entries: number };
  owners: IpamOwnerStatus[];
  owned: number;
  allocated: number;
  allocations: Array<{ ident: string; addrs: string[] }>;
  pending: Array<{ op: 'allocate'; ident: string; subnet: string; since: number; reason: string }>;
  consensus: null | { quorum: number; participants: number; promisedToHighest: number; decided: boolean };
  conflicts: { count: number; last: string | null; foreignRings: PeerName[][] };
  /** merge repair: null when this peer never saw another ring nor holds addresses outside its space */
  repair: null | {
    /** seeds of the ring we gave up for the current one */
    adoptedFrom: PeerName[] | null;
    /** why allocation waits for the repair, or null */
    waiting: string | null;
    /** our allocations outside our space, waiting for their owners to hand them over */
    held: string[];
    /** addresses also allocated elsewhere: "ADDR: who" */
    duplicates: string[];
  };
  counters: Record<string, number>;
}

export class Allocator implements Gossiper {
  readonly ourName: PeerName;
  readonly ourNickname: string;
  readonly range: Cidr;
  readonly defaultSubnet: Cidr;
  private readonly init: IpamInit;
  private readonly clock: Clock;
  private readonly log: Logger;
  private channel: GossipChannel | null;
  private readonly knownPeers: () => PeerName[];
  private readonly store: IpamStore;
  private readonly random: () => number;
  private readonly requestTimeoutMs: number;
  private readonly consensusRetryMs: number;
  private readonly handOverTimeoutMs: number;
  private readonly onRingChanged: () => void;

  private ring: Ring;
  private readonly space = new Space();
  private readonly byIdent = new Map<string, Addr[]>();
  private paxos: Paxos | null = null;
  private paxosTimer: TimerHandle | undefined;
  private pending: PendingAlloc[] = [];
  private readonly requests = new Map<string, SpaceRequest>();
  private primeWaiters: Array<() => void> = [];
  private handOverWaiter: { to: PeerName; done: () => void; timer: TimerHandle } | null = null;
  private leaving = false;
  private cursorPlaced = false;
  private closed = false;
  private conflictCount = 0;
  private lastConflict: string | null = null;
  private readonly seenConflicts = new Set<string>();
  /** other rings seen (by seeds), with our latest merged view of each and its owners */
  private readonly foreign = new Map<string, { seeds: PeerName[]; ring: Ring; owners: Set<PeerName>; done: boolean }>();
  private adoptedFrom: PeerName[] | null = null;
  /** held-address records of every peer that published one (ours included) */
  private readonly records = new Map<PeerName, HeldRecord>();
  /** our held addresses already reported (so each is logged once) */
  private heldNoted = new Set<Addr>();
  /** true duplicates found by us as owner: addr -> description */
  private readonly dupsFound = new Map<Addr, string>();
  private repairTimer: TimerHandle | undefined;
  /** our acceptor state from before a restart (restored when the consensus starts) */
  private savedPaxos: PaxosNode | null = null;
  private paxosBroken: string | null = null;
  /** why our persisted state is gone (store.lostState), until the ring comes back from peers */
  private lostState: string | null = null;
  /** live addresses (ident, addr) to record as soon as the ring exists */
  private liveClaims: Array<{ ident: string; addr: Addr }> = [];
  /** what was recovered after lost state or lost endpoints, for status */
  private readonly recovered: AllocatorRecovery = { lostState: null, ringFrom: null, ringAt: null, reclaimed: 0, held: 0, conflicts: [] };
  /** Paxos.progressKey() when the retry timer was armed */
  private paxosSeen = '';
  private readonly counters: Record<string, number> = {
    allocations: 0, frees: 0, claims: 0, requestsSent: 0, donationsMade: 0, donationsRefused: 0,
    decodeErrors: 0, ringMerges: 0, lostAllocations: 0, seedConflicts: 0, entryConflicts: 0,
    adoptions: 0, heldGranted: 0, duplicates: 0,
  };

  constructor(o: AllocatorOptions) {
    this.ourName = o.ourName;
    this.ourNickname = o.ourNickname;
    this.range = parseCidr(o.range ?? DEFAULT_RANGE);
    this.defaultSubnet = o.defaultSubnet ? parseCidr(o.defaultSubnet) : this.range;
    if (!containsRange(this.range, this.defaultSubnet)) {
      throw new UsageError(`default subnet ${formatCidr(this.defaultSubnet)} is not inside the allocation range ${formatCidr(this.range)}`);
    }
    this.init = o.init;
    if (o.init.mode === 'consensus' && o.init.quorum !== undefined && !(Number.isInteger(o.init.quorum) && o.init.quorum >= 1)) {
      throw new UsageError(`consensus quorum must be a positive integer, got ${o.init.quorum}`);
    }
    this.clock = o.clock;
    this.log = o.log.child({ component: 'ipam' });
    this.channel = o.channel ?? null;
    this.knownPeers = o.knownPeers;
    this.store = o.store;
    this.random = o.random ?? Math.random;
    this.requestTimeoutMs = o.requestTimeoutMs ?? 2000;
    this.consensusRetryMs = o.consensusRetryMs ?? 5000;
    this.handOverTimeoutMs = o.handOverTimeoutMs ?? 5000;
    this.onRingChanged = o.onRingChanged ?? (() => undefined);
    this.ring = new Ring(this.range);
    this.loadPersisted();
    if (this.ring.isEmpty() && o.init.mode === 'seed' && !this.lostState) {
      const peers = o.init.peers.map((p) => {
        if (!isPeerName(p)) throw new UsageError(`seed peer "${p}" is not a peer name`);
        return p;
      });
      // Nicknames are not known for the other seeds; every peer must compute the same ring, so all
      // start empty and each owner fills in its own on its first update.
      this.ring.seed(peers.map((name) => ({ name, nickname: '' })));
      this.log.info({ seeds: this.ring.seeds }, 'ipam ring seeded from the seed list');
      this.ringChanged(true);
    }
  }

  setChannel(ch: GossipChannel): void {
    this.channel = ch;
  }

  // ---------------------------------------------------------------- persistence

  private loadPersisted(): void {
    const p = this.store.load();
    if (!p) {
      this.store.reset(this.range);
      const lost = this.store.lostState?.() ?? null;
      if (lost) {
        this.lostState = lost;
        this.recovered.lostState = lost;
        // Our votes are gone too: voting again could seed a second ring.
        this.paxosBroken = `our IPAM state was lost (${lost}); this peer seeds no ring and waits for the ring from other peers (if no peer has one, run weave reset on this host)`;
        this.log.error({ lost }, `ipam: ${this.paxosBroken}`);
      }
      return;
    }
    if (p.range.start !== this.range.start || p.range.end !== this.range.end) {
      this.log.warn({ old: formatRange(p.range), new: formatCidr(this.range) }, `ipam: range changed from ${formatRange(p.range)} to ${formatCidr(this.range)}: discarding persisted ring and allocations`);
      this.store.reset(this.range);
      return;
    }
    if (p.ring) {
      try {
        this.ring = Ring.decode(p.ring);
        if (this.ring.range.start !== this.range.start || this.ring.range.end !== this.range.end) throw new ProtocolError('persisted ring has a different range');
      } catch (err) {
        this.counters.decodeErrors++;
        this.log.error({ err: errMsg(err) }, 'ipam: persisted ring is unreadable: discarding persisted data');
        this.ring = new Ring(this.range);
        this.store.reset(this.range);
        return;
      }
    }
    this.space.setOwned(this.ring.ownedRanges(this.ourName));
    let n = 0;
    for (const [ident, addrs] of p.allocations) {
      const kept = addrs.filter((a) => Number.isInteger(a) && a >= this.range.start && a < this.range.end);
      for (const a of kept) {
        if (!this.space.owns(a)) this.log.warn({ ident, addr: formatAddr(a) }, 'ipam: persisted allocation is outside the space we own');
        this.space.restore(a, ident);
      }
      if (kept.length) this.byIdent.set(ident, kept);
      n += kept.length;
    }
    const px = p.meta.get('paxos');
    if (px) {
      try {
        this.savedPaxos = decodePaxosNode(px, this.ourName);
      } catch (err) {
        // Without our old votes we could vote differently from before: take no part instead.
        this.counters.decodeErrors++;
        this.paxosBroken = `our persisted consensus votes are unreadable (${errMsg(err)}); this peer takes no part in the consensus (it still learns the ring from others)`;
        this.log.error({ err: errMsg(err) }, `ipam: ${this.paxosBroken}`);
      }
    }
    const holds = p.meta.get('holds');
    if (holds) {
      try {
        for (const [k, r] of decodeRecords(holds, this.range)) this.records.set(k, r);
      } catch (err) {
        this.counters.decodeErrors++;
        this.log.error({ err: errMsg(err) }, 'ipam: persisted held-address records are unreadable: dropped (peers gossip theirs again)');
      }
    }
    this.updateReserved();
    this.refreshRecord(true);
    this.placeCursor();
    this.log.info({ seeded: !this.ring.isEmpty(), owned: this.space.ownedSize(), allocations: n, held: this.heldNoted.size }, 'ipam: restored persisted state');
  }

  private persistIdent(ident: string): void {
    this.store.saveAllocations(ident, this.byIdent.get(ident) ?? []);
  }

  // ---------------------------------------------------------------- public operations

  /** Resolves when the ring exists (starting consensus if we take part in it). */
  prime(): Promise<void> {
    if (!this.ring.isEmpty()) return Promise.resolve();
    this.ensureConsensus(); // may seed the ring at once (quorum 1)
    if (!this.ring.isEmpty()) return Promise.resolve();
    return new Promise((resolve) => this.primeWaiters.push(resolve));
  }

  /**
   * An address for ident in subnet (CIDR; default subnet when omitted). Returns the address ident
   * already has in that subnet, if any. Waits (reason in status().pending) rather than collide.
   */
  allocate(ident: string, subnet?: string, opts: { signal?: AbortSignal } = {}): Promise<string> {
    try {
      this.checkUsable('allocate');
      checkIdent(ident);
      const sn = this.parseSubnet(subnet);
      for (const a of this.byIdent.get(ident) ?? []) if (a >= sn.start && a < sn.end) return Promise.resolve(formatAddr(a));
      if (opts.signal?.aborted) throw new WeaveError('ECANCELLED', `allocation for ${ident} cancelled`);
      return new Promise<string>((resolve, reject) => {
        const op: PendingAlloc = { ident, subnet: sn, since: this.clock.now(), reason: 'queued', resolve, reject, signal: opts.signal };
        if (opts.signal) {
          op.onAbort = () => this.finishOp(op, new WeaveError('ECANCELLED', `allocation for ${ident} cancelled`));
          opts.signal.addEventListener('abort', op.onAbort, { once: true });
        }
        this.pending.push(op);
        this.tryPending();
      });
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * Records addr for ident. Allowed in our own space (unless held by another ident); refused when
   * another peer owns it. Waits for the ring to exist.
   */
  async claim(ident: string, addr: string): Promise<void> {
    this.checkUsable('claim');
    checkIdent(ident);
    const a = parseAddr(addr.includes('/') ? addr.slice(0, addr.indexOf('/')) : addr);
    if (a < this.range.start || a >= this.range.end) {
      throw new UsageError(`cannot claim ${formatAddr(a)}: outside the allocation range ${formatCidr(this.range)}`);
    }
    await this.prime();
    this.checkUsable('claim');
    if (this.byIdent.get(ident)?.includes(a)) return; // ours already (possibly held outside our space after a merge)
    const owner = this.ring.ownerOf(a);
    if (owner !== this.ourName) {
      const e = this.ring.entries[this.ring.indexOf(a)];
      const who = e.nickname ? `${owner}(${e.nickname})` : String(owner);
      if (owner && this.isReachable(owner)) {
        throw new RefusedError('EOWNED', `cannot claim ${formatAddr(a)}: it is in the space of live peer ${who}`, { addr: formatAddr(a), owner });
      }
      throw new RefusedError('EUNREACHABLE', `cannot claim ${formatAddr(a)}: it is owned by unreachable peer ${who}; if that peer is gone for good, run rmpeer on it first`, { addr: formatAddr(a), owner });
    }
    const holder = this.space.holder(a);
    if (holder !== undefined && holder !== ident) {
      throw new RefusedError('EINUSE', `cannot claim ${formatAddr(a)} for ${ident}: already allocated to ${holder}`, { addr: formatAddr(a), holder });
    }
    if (holder === ident) return;
    if (this.space.isReserved(a)) {
      const by = [...this.records].filter(([p, r]) => p !== this.ourName && !r.removed && r.held.includes(a)).map(([p]) => p);
      throw new RefusedError('EINUSE', `cannot claim ${formatAddr(a)} for ${ident}: a container of peer ${by.join(', ')} holds it (kept after a ring merge)`, { addr: formatAddr(a), holder: by[0] });
    }
    const block = this.repairBlock();
    if (block.reason || block.avoid.some((r) => a >= r.start && a < r.end)) {
      throw new RefusedError('EREPAIR', `cannot claim ${formatAddr(a)} yet: ${block.reason ?? 'a peer of a ring merged into ours may hold it and has not reported yet'}`, { addr: formatAddr(a) });
    }
    this.space.take(a, ident);
    this.byIdent.set(ident, [...(this.byIdent.get(ident) ?? []), a]);
    this.persistIdent(ident);
    this.counters.claims++;
  }

  /** Frees ident's addresses (or just addr), cancels its pending allocations. Never blocks. */
  free(ident: string, addr?: string): number {
    for (const op of this.pending.filter((p) => p.ident === ident)) {
      this.finishOp(op, new WeaveError('ECANCELLED', `allocation for ${ident} cancelled by free`));
    }
    const addrs = this.byIdent.get(ident);
    if (!addrs) return 0;
    const which = addr === undefined ? addrs : addrs.filter((a) => a === parseAddr(addr.includes('/') ? addr.slice(0, addr.indexOf('/')) : addr));
    for (const a of which) this.space.release(a);
    const left = addrs.filter((a) => !which.includes(a));
    if (left.length) this.byIdent.set(ident, left);
    else this.byIdent.delete(ident);
    this.persistIdent(ident);
    this.counters.frees += which.length;
    // a duplicate we just freed goes to the other peer whose container holds it
    if (which.some((a) => this.space.isReserved(a))) this.ringChanged(false);
    return which.length;
  }

  lookup(ident: string): string[] {
    return (this.byIdent.get(ident) ?? []).map(formatAddr);
  }

  /**
   * Addresses live containers have (the truth from the kernel): recorded under their ident now, or
   * as soon as the ring exists. Addresses outside the range are not ours to track. Returns how many
   * were recorded now (0 while waiting for the ring).
   */
  adoptLive(live: Array<{ ident: string; addr: string }>): number {
    for (const { ident, addr } of live) {
      checkIdent(ident);
      const a = parseAddr(addr.includes('/') ? addr.slice(0, addr.indexOf('/')) : addr);
      if (a >= this.range.start && a < this.range.end) this.liveClaims.push({ ident, addr: a });
    }
    if (this.ring.isEmpty() || this.liveClaims.length === 0) return 0;
    const before = this.recovered.reclaimed + this.recovered.held;
    if (this.applyLiveClaims() && this.refreshRecord(true)) this.channel?.gossipBroadcast(this.snapshot());
    return this.recovered.reclaimed + this.recovered.held - before;
  }

  /** What was recovered (see AllocatorRecovery). */
  recovery(): AllocatorRecovery {
    return { ...this.recovered, conflicts: this.recovered.conflicts.slice() };
  }

  /** Records pending live claims (ring must exist). Returns true when held records must be refreshed. */
  private applyLiveClaims(): boolean {
    if (this.ring.isEmpty() || this.liveClaims.length === 0) return false;
    const claims = this.liveClaims;
    this.liveClaims = [];
    let outside = false;
    const touched = new Set<string>();
    for (const { ident, addr: a } of claims) {
      if (this.byIdent.get(ident)?.includes(a)) continue;
      const h = this.space.holder(a);
      if (h !== undefined || this.space.isReserved(a)) {
        const d = `${formatAddr(a)}: a live container (${ident}) has it, but it is ${h !== undefined ? `allocated here to ${h}` : "held by another peer's container"}`;
        this.recovered.conflicts.push(d);
        this.noteConflict('duplicate', d);
        continue;
      }
      if (this.space.owns(a)) {
        this.space.take(a, ident);
        this.recovered.reclaimed++;
      } else {
        // outside our space: kept and published as held, so the owner never hands it out
        this.space.restore(a, ident);
        this.heldNoted.add(a); // published by refreshRecord, not reported as a newly lost allocation
        this.recovered.held++;
        outside = true;
      }
      this.byIdent.set(ident, [...(this.byIdent.get(ident) ?? []), a]);
      touched.add(ident);
    }
    for (const ident of touched) this.persistIdent(ident);
    if (touched.size) this.log.warn({ reclaimed: this.recovered.reclaimed, held: this.recovered.held }, 'ipam: recorded the addresses of live containers that were not allocated here (state lost or endpoints recovered)');
    return outside;
  }

  /**
   * Gives `to` half of our largest free run inside subnet (default: the whole range). Returns the
   * number of addresses donated (0 when we have no free space there).
   */
  donate(to: PeerName, subnet?: string | Range): number {
    if (to === this.ourName) throw new UsageError('cannot donate space to ourselves');
    const sn = typeof subnet === 'object' ? subnet : subnet ? this.parseSubnet(subnet) : this.range;
    // A peer merging into our ring may hold addresses we would give away: nothing while a reachable
    // one has not reported, nothing from the space unreachable ones had.
    const block = this.repairBlock();
    if (block.reason) return 0;
    this.refreshFree();
    let run: Range | null = null;
    for (const piece of subtractRanges(sn, block.avoid)) {
      const r = this.space.largestFreeRun(piece);
      if (r && (!run || r.end - r.start > run.end - run.start)) run = r;
    }
    if (!run) return 0;
    const size = run.end - run.start;
    const give: Range = size === 1 ? run : { start: run.start + Math.floor(size / 2), end: run.end };
    this.ring.transfer(this.ourName, to, '', give);
    this.counters.donationsMade++;
    this.log.debug({ to, range: formatRange(give) }, 'ipam: donated space');
    this.ringChanged(true);
    return give.end - give.start;
  }

  /** rmpeer: takes over the ranges of a dead peer (name or nickname). Returns addresses taken. */
  transferFrom(peer: string): number {
    const dead = this.resolvePeer(peer);
    if (dead === this.ourName) throw new UsageError('cannot rmpeer ourselves');
    if (this.isReachable(dead)) throw new RefusedError('ELIVE', `refusing to take over the space of ${peer}: it is reachable (only remove peers that are gone for good)`, { peer: dead });
    if (this.init.mode === 'observer') throw new WeaveError('EOBSERVER', 'an observer never owns space; run rmpeer on a peer that allocates');
    const n = this.ring.claim(dead, this.ourName, this.ourNickname);
    // A peer of a ring merged into ours (or one holding addresses): what it held is released,
    // and nobody waits for it to report any more (written on its behalf, like ring.claim).
    const rec = this.records.get(dead);
    const inForeign = [...this.foreign.values()].some((f) => f.owners.has(dead));
    if (rec || inForeign) {
      this.records.set(dead, { ver: (rec?.ver ?? 0) + CLAIM_BUMP, seeds: this.ring.seeds.slice(), held: [], dups: [], removed: true });
      this.saveRecords();
      this.updateReserved();
    }
    if (n > 0 || rec || inForeign) {
      this.log.info({ peer: dead, addresses: n, released: rec?.held.length ?? 0 }, `ipam: took over ${n} addresses from removed peer ${dead}`);
      this.ringChanged(true);
    }
    return n;
  }

  /** Before `weave reset`: gives all our space to a live peer, then stops allocating. */
  handOver(): Promise<void> {
    this.leaving = true;
    for (const op of [...this.pending]) this.finishOp(op, new WeaveError('ESHUTDOWN', 'ipam is handing over its space before leaving'));
    const owned = this.ring.ownedRanges(this.ourName);
    if (owned.length === 0) return Promise.resolve();
    const shares = this.ring.shares();
    const live = this.knownPeers().filter((p) => p !== this.ourName);
    if (live.length === 0) {
      this.log.warn({}, 'ipam: no live peer to hand our space to; run rmpeer on another peer later to reclaim it');
      return Promise.resolve();
    }
    live.sort((a, b) => (shares.get(b) ?? 0) - (shares.get(a) ?? 0) || (a < b ? -1 : 1));
    const to = live[0];
    for (const r of owned) this.ring.transfer(this.ourName, to, '', r);
    for (const ident of [...this.byIdent.keys()]) {
      for (const a of this.byIdent.get(ident)!) this.space.release(a);
      this.byIdent.delete(ident);
      this.persistIdent(ident);
    }
    this.ringChanged(true);
    this.log.info({ to, ranges: owned.map(formatRange) }, 'ipam: handed our space over');
    this.channel?.gossipUnicast(to, encodeUnicast({ k: 'handover', ring: this.ring }));
    return new Promise((resolve) => {
      const timer = this.clock.setTimeout(() => {
        this.log.warn({ to }, 'ipam: no acknowledgement of hand-over; the ring gossip will still carry it');
        this.handOverWaiter = null;
        resolve();
      }, this.handOverTimeoutMs);
      this.handOverWaiter = { to, timer, done: resolve };
    });
  }

  /** Stops timers and rejects pending operations (process shutdown). */
  close(): void {
    this.closed = true;
    for (const op of [...this.pending]) this.finishOp(op, new WeaveError('ESHUTDOWN', 'ipam allocator closed'));
    for (const r of this.requests.values()) this.clock.clearTimeout(r.timer);
    this.requests.clear();
    this.clock.clearTimeout(this.paxosTimer);
    this.clock.clearTimeout(this.repairTimer);
    if (this.handOverWaiter) {
      this.clock.clearTimeout(this.handOverWaiter.timer);
      this.handOverWaiter.done();
      this.handOverWaiter = null;
    }
  }

  /** Whether this peer knows of a merge repair: met another ring, or learnt of held addresses. */
  knowsMergeRepair(): boolean {
    return this.foreign.size > 0 || this.records.size > 0;
  }

  /** Our view of the ring (a copy), for tests and the router's prefix announcements. */
  ringView(): Ring {
    return this.ring.clone();
  }

  /** Free addresses a container may get in subnet (CIDR) within this peer's own space. */
  freeIn(subnet: string): number {
    return this.space.freeIn(usableRange(parseCidr(subnet)));
  }

  ownedRanges(): Range[] {
    return this.ring.ownedRanges(this.ourName);
  }

  status(): IpamStatus {
    const shares = this.ring.shares();
    const total = this.range.end - this.range.start;
    const free = new Map<PeerName, number>();
    const nick = new Map<PeerName, string>();
    for (const e of this.ring.entries) {
      free.set(e.peer, (free.get(e.peer) ?? 0) + e.free);
      if (e.nickname) nick.set(e.peer, e.nickname);
    }
    const reach = new Set(this.knownPeers());
    return {
      name: this.ourName,
      nickname: this.ourNickname,
      range: formatCidr(this.range),
      defaultSubnet: formatCidr(this.defaultSubnet),
      mode: this.init.mode,
      ring: { seeded: !this.ring.isEmpty(), seeds: this.ring.seeds.slice(), entries: this.ring.entries.length },
      owners: [...shares].map(([peer, n]) => ({
        peer,
        nickname: peer === this.ourName ? this.ourNickname : nick.get(peer) ?? '',
        addresses: n,
        percent: Math.round((n / total) * 10000) / 100,
        free: peer === this.ourName ? this.space.freeIn(this.range) : free.get(peer) ?? 0,
        reachable: peer === this.ourName || reach.has(peer),
      })).sort((a, b) => b.addresses - a.addresses || (a.peer < b.peer ? -1 : 1)),
      owned: this.space.ownedSize(),
      allocated: this.space.allocatedCount,
      allocations: [...this.byIdent].map(([ident, addrs]) => ({ ident, addrs: addrs.map(formatAddr) })),
      pending: this.pending.map((p) => ({ op: 'allocate' as const, ident: p.ident, subnet: formatCidr(p.subnet), since: p.since, reason: p.reason })),
      consensus: this.paxos ? { ...this.paxos.progress(), decided: !this.ring.isEmpty() } : null,
      conflicts: { count: this.conflictCount, last: this.lastConflict, foreignRings: [...this.foreign.values()].filter((f) => !sameList(f.seeds, this.ring.seeds)).map((f) => f.seeds.slice()) },
      repair: this.repairStatus(),
      counters: { ...this.counters },
    };
  }

  // ---------------------------------------------------------------- Gossiper

  gossip(): GossipData | null {
    if (this.closed) return null;
    if (this.ring.isEmpty() && !this.paxos) return null;
    if (this.refreshFree()) this.store.saveRing(this.ring.encode());
    return this.snapshot();
  }

  onGossip(update: Uint8Array): GossipData | null {
    return this.receiveGossip(update, 'gossip');
  }

  onGossipBroadcast(_src: PeerName, update: Uint8Array): GossipData | null {
    return this.receiveGossip(update, 'broadcast');
  }

  onGossipUnicast(src: PeerName, msg: Uint8Array): void {
    if (this.closed) return;
    const m = decodeUnicast(msg); // ProtocolError propagates: the mesh blames the connection
    switch (m.k) {
      case 'req':
        this.onSpaceRequest(src, m.subnet);
        return;
      case 'donate':
      case 'nospace':
      case 'handover':
        this.mergeRing(m.ring, src);
        if (m.k === 'handover') this.channel?.gossipUnicast(src, encodeUnicast({ k: 'ack' }));
        if (m.k === 'nospace') this.nextDonor(src);
        return;
      case 'ack':
        if (this.handOverWaiter && this.handOverWaiter.to === src) {
          this.clock.clearTimeout(this.handOverWaiter.timer);
          this.handOverWaiter.done();
          this.handOverWaiter = null;
        }
        return;
    }
  }

  private receiveGossip(update: Uint8Array, via: string): GossipData | null {
    if (this.closed) return null;
    let m: GossipMsg;
    try {
      m = decodeGossip(update);
    } catch (err) {
      this.counters.decodeErrors++;
      this.log.warn({ via, err: errMsg(err) }, 'ipam: malformed gossip');
      throw err;
    }
    if (m.range.start !== this.range.start || m.range.end !== this.range.end) {
      this.noteConflict('range', `peer gossips range ${formatRange(m.range)}, ours is ${formatCidr(this.range)}`);
      return null;
    }
    let changed = false;
    if (m.paxos && this.ring.isEmpty() && this.init.mode === 'consensus' && !this.paxosBroken) {
      const px = this.ensurePaxos();
      const merged = px.merge(m.paxos);
      const thought = px.think();
      changed = merged || thought;
      if (thought) {
        this.savePaxos();
        this.channel?.gossip(this.snapshot());
      }
      this.checkDecision();
    }
    if (m.ring) changed = this.mergeRing(m.ring, null) || changed;
    if (m.records && this.mergeRecords(m.records)) changed = true;
    return changed ? this.snapshot() : null;
  }

  // ---------------------------------------------------------------- internals

  private snapshot(): IpamGossipData {
    return new IpamGossipData({
      range: { start: this.range.start, end: this.range.end },
      ring: this.ring.isEmpty() ? null : this.ring.clone(),
      // consensus state only matters until the ring exists
      paxos: this.ring.isEmpty() && this.paxos ? new Map(this.paxos.nodes) : null,
      // records are replaced, never mutated, so a shallow copy is a snapshot
      records: this.records.size ? new Map(this.records) : null,
    });
  }

  private checkUsable(op: string): void {
    if (this.closed) throw new WeaveError('ESHUTDOWN', `cannot ${op}: ipam allocator closed`);
    if (this.leaving) throw new WeaveError('ESHUTDOWN', `cannot ${op}: this peer handed its space over and is leaving`);
    if (this.init.mode === 'observer') throw new WeaveError('EOBSERVER', `cannot ${op}: this peer is an IPAM observer and never owns space`);
  }

  private parseSubnet(subnet?: string): Cidr {
    if (!subnet) return this.defaultSubnet;
    const sn = parseCidr(subnet);
    if (!containsRange(this.range, sn)) throw new UsageError(`subnet ${formatCidr(sn)} is not inside the allocation range ${formatCidr(this.range)}`);
    return sn;
  }

  private isReachable(p: PeerName): boolean {
    return p === this.ourName || this.knownPeers().includes(p);
  }

  private resolvePeer(s: string): PeerName {
    const low = s.trim().toLowerCase();
    if (isPeerName(low)) return low;
    const names = new Set(this.ring.entries.filter((e) => e.nickname === s).map((e) => e.peer));
    // peers of a ring merged into ours may own nothing in ours yet
    for (const f of this.foreign.values()) for (const e of f.ring.entries) if (e.nickname === s) names.add(e.peer);
    if (names.size === 1) return [...names][0];
    if (names.size > 1) throw new UsageError(`nickname "${s}" is ambiguous: ${[...names].join(', ')}`);
    throw new UsageError(`no peer named or nicknamed "${s}" owns space in the ring`);
  }

  private finishOp(op: PendingAlloc, result: string | Error): void {
    const i = this.pending.indexOf(op);
    if (i < 0) return;
    this.pending.splice(i, 1);
    if (op.signal && op.onAbort) op.signal.removeEventListener('abort', op.onAbort);
    if (typeof result === 'string') op.resolve(result);
    else op.reject(result);
  }

  private tryPending(): void {
    if (this.closed || this.pending.length === 0) return;
    if (this.ring.isEmpty()) {
      this.ensureConsensus();
      const reason = this.consensusReason();
      for (const op of this.pending) op.reason = reason;
      return;
    }
    const block = this.repairBlock();
    if (block.reason) {
      for (const op of this.pending) op.reason = block.reason;
      this.armRepairTimer();
      return;
    }
    if (block.avoid.length) this.armRepairTimer();
    const avoid = block.avoid.length ? (a: Addr) => block.avoid.some((r) => a >= r.start && a < r.end) : undefined;
    const needSpace = new Map<string, Cidr>();
    for (const op of [...this.pending]) {
      const a = this.space.findFree(usableRange(op.subnet), 'up', avoid);
      if (a === null) {
        needSpace.set(formatCidr(op.subnet), op.subnet);
        continue;
      }
      this.space.take(a, op.ident);
      this.byIdent.set(op.ident, [...(this.byIdent.get(op.ident) ?? []), a]);
      this.persistIdent(op.ident);
      this.counters.allocations++;
      this.finishOp(op, formatAddr(a));
    }
    for (const [key, sn] of needSpace) {
      if (!this.requests.has(key)) this.requestSpace(sn, 0);
      const r = this.requests.get(key);
      const reason = r && r.donor !== NO_DONOR ? `no free address in ${key}: asked ${r.donor} for space (attempt ${r.attempts + 1})` : this.noDonorReason(sn);
      for (const op of this.pending) if (formatCidr(op.subnet) === key) op.reason = reason;
    }
  }

  private consensusReason(): string {
    if (this.init.mode === 'observer') return 'waiting for the ring from other peers (observer)';
    if (this.paxosBroken) return `waiting for the ring from other peers: ${this.paxosBroken}`;
    if (!this.paxos) return 'waiting for the ring';
    const p = this.paxos.progress();
    return `waiting for consensus on the ring: ${p.promisedToHighest} of ${p.quorum} needed peers agree (${p.participants} known)`;
  }

  private donorCandidates(sn: Range): Array<{ peer: PeerName; free: number }> {
    const reach = new Set(this.knownPeers());
    const m = new Map<PeerName, number>();
    for (let i = 0; i < this.ring.entries.length; i++) {
      const e = this.ring.entries[i];
      if (e.peer === this.ourName || !reach.has(e.peer)) continue;
      const x = intersect(this.ring.entryRange(i), sn);
      if (!x) continue;
      m.set(e.peer, (m.get(e.peer) ?? 0) + Math.min(e.free, x.end - x.start));
    }
    return [...m].map(([peer, free]) => ({ peer, free })).sort((a, b) => b.free - a.free || (a.peer < b.peer ? -1 : 1));
  }

  private noDonorReason(sn: Range): string {
    const owners = new Set<PeerName>();
    for (let i = 0; i < this.ring.entries.length; i++) {
      if (this.ring.entries[i].peer !== this.ourName && intersect(this.ring.entryRange(i), sn)) owners.add(this.ring.entries[i].peer);
    }
    if (owners.size === 0) return `no free address in ${formatRange(sn)} and no other peer owns space there`;
    return `no free address in ${formatRange(sn)}; its owners ${[...owners].join(', ')} are unreachable (rmpeer them if they are gone)`;
  }

  private requestSpace(sn: Range, attempts: number): void {
    const key = formatRange(sn);
    const cands = this.donorCandidates(sn);
    const withFree = cands.filter((c) => c.free > 0);
    // Prefer owners reporting free space; their counts can be stale, so after trying those, ask
    // the rest in turn (an owner's answer carries its fresh counts).
    const order = withFree.length ? withFree : cands;
    if (order.length === 0) {
      // nobody to ask now; look again later (peers may become reachable, rmpeer may happen)
      const timer = this.clock.setTimeout(() => this.retryRequest(key, sn, attempts + 1), this.requestTimeoutMs);
      this.requests.set(key, { timer, donor: NO_DONOR, attempts });
      for (const op of this.pending) if (formatCidr(op.subnet) === key) op.reason = this.noDonorReason(sn);
      return;
    }
    const donor = order[attempts % order.length].peer;
    const jitter = Math.floor(this.random() * this.requestTimeoutMs * 0.25);
    const timer = this.clock.setTimeout(() => this.retryRequest(key, sn, attempts + 1), this.requestTimeoutMs + jitter);
    this.requests.set(key, { timer, donor, attempts });
    this.counters.requestsSent++;
    const sent = this.channel?.gossipUnicast(donor, encodeUnicast({ k: 'req', subnet: sn })) ?? false;
    if (!sent) this.log.debug({ donor }, 'ipam: space request not sent (unreachable)');
  }

  private retryRequest(key: string, sn: Range, attempts: number): void {
    this.requests.delete(key);
    if (this.closed) return;
    if (!this.pending.some((p) => formatCidr(p.subnet) === key)) return;
    this.requestSpace(sn, attempts);
    this.tryPending();
  }

  /** The donor said it has nothing: ask the next one now instead of waiting for the timeout. */
  private nextDonor(src: PeerName): void {
    for (const [key, r] of [...this.requests]) {
      if (r.donor !== src) continue;
      const sn = this.pending.find((p) => formatCidr(p.subnet) === key)?.subnet;
      if (!sn) continue;
      // After a whole round of refusals, wait for the timer: otherwise a full range would make
      // waiting peers and owners ping-pong requests as fast as the network carries them.
      const n = Math.max(1, this.donorCandidates(sn).length);
      if ((r.attempts + 1) % n === 0) continue;
      this.clock.clearTimeout(r.timer);
      this.requests.delete(key);
      this.requestSpace(sn, r.attempts + 1);
    }
    this.tryPending();
  }

  private onSpaceRequest(src: PeerName, sn: Range): void {
    if (this.ring.isEmpty() || this.init.mode === 'observer' || this.leaving || src === this.ourName) {
      if (!this.ring.isEmpty()) this.channel?.gossipUnicast(src, encodeUnicast({ k: 'nospace', ring: this.ring }));
      return;
    }
    // Keep what our own waiting allocations need; otherwise we would give away and ask back.
    const n = this.pending.some((p) => intersect(p.subnet, sn)) ? 0 : this.donate(src, sn);
    if (n === 0) {
      this.counters.donationsRefused++;
      if (this.refreshFree()) this.ringChanged(true);
    }
    this.channel?.gossipUnicast(src, encodeUnicast({ k: n ? 'donate' : 'nospace', ring: this.ring }));
  }

  /** Owner-only update of our entries' free counts and nicknames. */
  private refreshFree(): boolean {
    let changed = false;
    for (const e of this.ring.entries) {
      if (e.peer === this.ourName && e.nickname !== this.ourNickname) {
        e.nickname = this.ourNickname;
        e.version++;
        changed = true;
      }
    }
    return this.ring.updateFree(this.ourName, (r) => this.space.freeIn(r)) || changed;
  }

  private mergeRing(other: Ring, src: PeerName | null): boolean {
    const wasEmpty = this.ring.isEmpty();
    const res = this.ring.merge(other);
    if (res.conflict?.kind === 'seeds') return this.onForeignRing(other, src);
    if (res.conflict) {
      if (res.conflict.kind === 'entry') this.counters.entryConflicts += res.conflict.count;
      this.noteConflict(res.conflict.kind, res.conflict.detail, res.conflict.count);
    }
    if (!res.changed) return false;
    this.counters.ringMerges++;
    if (wasEmpty) this.log.info({ seeds: this.ring.seeds, from: src }, 'ipam: received the ring');
    if (wasEmpty && this.lostState) {
      this.recovered.ringFrom = src ?? "peers' gossip";
      this.recovered.ringAt = this.clock.now();
      this.lostState = null;
      this.log.warn({ from: this.recovered.ringFrom, owned: this.ring.ownedRanges(this.ourName).map(formatRange) }, 'ipam: our ring ownership recovered from the ring peers hold');
    }
    this.ringChanged(false);
    return true;
  }

  private noteConflict(kind: string, detail: string, count = 1): void {
    this.conflictCount += count;
    this.lastConflict = `${kind}: ${detail}`;
    if (!this.seenConflicts.has(this.lastConflict)) {
      if (this.seenConflicts.size < 1000) this.seenConflicts.add(this.lastConflict);
      this.log.warn({ kind, detail, total: this.conflictCount }, `ipam: ring merge conflict (${kind}): ${detail}`);
    }
  }

  /** After any ring change: recompute our space, persist, wake waiters, maybe tell others. */
  private ringChanged(ours: boolean, adopting = false): void {
    if (this.grantHeld()) ours = true;
    // A donor writes entries for us without our nickname (only we edit ours): fix them and tell
    // everyone now, or other peers show the space as nameless until the next periodic gossip.
    if (!ours && this.ring.entries.some((e) => e.peer === this.ourName && e.nickname !== this.ourNickname)) ours = true;
    this.space.setOwned(this.ring.ownedRanges(this.ourName));
    this.applyLiveClaims();
    const recordChanged = this.refreshRecord(adopting);
    if (ours) this.refreshFree();
    this.placeCursor();
    this.store.saveRing(this.ring.encode());
    if (!this.ring.isEmpty()) {
      this.clock.clearTimeout(this.paxosTimer);
      this.paxosTimer = undefined;
      const w = this.primeWaiters;
      this.primeWaiters = [];
      for (const f of w) f();
    }
    if (ours || recordChanged) this.channel?.gossipBroadcast(this.snapshot());
    // A merge repair step also goes to every neighbour directly: right after a connection comes up
    // (when two meshes meet) broadcast routes may not include the new peers yet.
    if (recordChanged || adopting) this.channel?.gossip(this.snapshot());
    this.onRingChanged();
    this.tryPending();
  }

  // ---------------------------------------------------------------- merge repair

  /** A ring seeded differently from ours: remember it, adopt it when it wins. Returns true when ours changed. */
  private onForeignRing(other: Ring, src: PeerName | null): boolean {
    const key = other.seeds.join(',');
    let f = this.foreign.get(key);
    const first = !f;
    if (!f) {
      f = { seeds: other.seeds.slice(), ring: other.clone(), owners: new Set(other.entries.map((e) => e.peer)), done: false };
      this.foreign.set(key, f);
      this.counters.seedConflicts++;
      const winner = compareSeeds(other.seeds, this.ring.seeds) < 0 ? 'theirs wins: adopting it' : 'ours wins: its peers adopt ours';
      this.noteConflict('seeds', `ring seeded by [${other.seeds.join(',')}] differs from ours seeded by [${this.ring.seeds.join(',')}]; ${winner}`);
    } else if (f.ring.merge(other).changed) {
      f.owners = new Set(f.ring.entries.map((e) => e.peer));
      f.done = false;
    }
    if (compareSeeds(other.seeds, this.ring.seeds) < 0) {
      this.adopt(other, src);
      return true;
    }
    // the peers of the losing ring learn of ours sooner this way than by the periodic gossip
    if (first) {
      this.channel?.gossipBroadcast(this.snapshot());
      this.channel?.gossip(this.snapshot());
    }
    this.tryPending();
    return false;
  }

  private adopt(winner: Ring, src: PeerName | null): void {
    const old = this.ring;
    const key = old.seeds.join(',');
    if (!this.foreign.has(key)) this.foreign.set(key, { seeds: old.seeds.slice(), ring: old.clone(), owners: new Set(old.entries.map((e) => e.peer)), done: false });
    this.adoptedFrom = old.seeds.slice();
    this.ring = winner.clone();
    const wk = winner.seeds.join(',');
    this.foreign.delete(wk);
    this.counters.adoptions++;
    // space requests went to owners in the old ring
    for (const r of this.requests.values()) this.clock.clearTimeout(r.timer);
    this.requests.clear();
    this.log.warn({ from: old.seeds, to: winner.seeds, via: src, allocations: this.space.allocatedCount },
      `ipam: adopting the ring seeded by [${winner.seeds.join(',')}] (it sorts before ours, seeded by [${old.seeds.join(',')}]); our ${this.space.allocatedCount} allocations stay and are claimed from their owners in that ring`);
    this.ringChanged(true, true);
  }

  /** Merges gossiped records (highest version per peer wins). Returns true when any changed. */
  private mergeRecords(other: Map<PeerName, HeldRecord>): boolean {
    let changed = false;
    for (const [name, r] of other) {
      const mine = this.records.get(name);
      if (mine && r.ver <= mine.ver) continue;
      this.records.set(name, r);
      changed = true;
    }
    if (!changed) return false;
    this.saveRecords();
    this.updateReserved();
    this.ringChanged(false);
    return true;
  }

  private saveRecords(): void {
    this.store.saveMeta('holds', encodeRecords(this.records));
  }

  /** Addresses other peers' containers hold are never free here. */
  private updateReserved(): void {
    const res: Addr[] = [];
    for (const [p, r] of this.records) if (p !== this.ourName && !r.removed) for (const a of r.held) res.push(a);
    this.space.setReserved(res);
  }

  /**
   * Owner side: hands each held address of another peer (one that uses our ring) that we own and
   * have free to its holder; one our own container has is a true duplicate (reported, and handed
   * over once ours frees it, since it stays reserved). Returns true when the ring changed.
   */
  private grantHeld(): boolean {
    if (this.ring.isEmpty() || this.leaving || this.init.mode === 'observer') return false;
    let granted = false;
    const given = new Set<Addr>();
    for (const p of [...this.records.keys()].sort()) {
      const r = this.records.get(p)!;
      if (p === this.ourName || r.removed || !sameList(r.seeds, this.ring.seeds)) continue;
      for (const a of r.held) {
        if (given.has(a) || this.ring.ownerOf(a) !== this.ourName) continue;
        const h = this.space.holder(a);
        if (h === undefined) {
          this.ring.transfer(this.ourName, p, '', { start: a, end: a + 1 });
          given.add(a);
          granted = true;
          this.counters.heldGranted++;
          this.log.info({ addr: formatAddr(a), to: p }, `ipam: handed ${formatAddr(a)} to ${p}, whose container holds it`);
        } else if (!this.dupsFound.has(a)) {
          const d = `${formatAddr(a)}: allocated here to ${h} and held by a container of ${p}`;
          this.dupsFound.set(a, d);
          this.counters.duplicates++;
          this.noteConflict('duplicate', `${d} (allocated on both sides before the rings met; never handed out again while either holds it)`);
        }
      }
    }
    return granted;
  }

  /**
   * Our record: allocations outside our own space (and the duplicates we found). Bumped, persisted
   * and returned true when it changed.
   */
  private refreshRecord(quiet: boolean): boolean {
    const held: Addr[] = [];
    for (const [a] of this.space.entries()) if (!this.space.owns(a)) held.push(a);
    held.sort((x, y) => x - y);
    const fresh = held.filter((a) => !this.heldNoted.has(a));
    this.heldNoted = new Set(held);
    if (fresh.length && !quiet) {
      this.counters.lostAllocations += fresh.length;
      this.noteConflict('lost', `${fresh.length} of our allocations (e.g. ${formatAddr(fresh[0])}) are now in another peer's space: kept, reserved everywhere, claimed back from the owner`, fresh.length);
    } else if (fresh.length) {
      this.log.info({ held: fresh.length, example: formatAddr(fresh[0]) }, `ipam: ${fresh.length} of our allocations are outside our space: reserved everywhere and claimed from their owners`);
    }
    for (const a of [...this.dupsFound.keys()]) if (this.space.holder(a) === undefined || !this.space.isReserved(a)) this.dupsFound.delete(a);
    const dups = [...this.dupsFound.keys()].sort((x, y) => x - y);
    const mine = this.records.get(this.ourName);
    if (!mine && held.length === 0 && dups.length === 0 && !this.adoptedFrom) return false;
    if (mine && !mine.removed && sameList(mine.seeds, this.ring.seeds) && sameList(mine.held, held) && sameList(mine.dups, dups)) return false;
    this.records.set(this.ourName, { ver: (mine?.ver ?? 0) + 1, seeds: this.ring.seeds.slice(), held, dups, removed: false });
    this.saveRecords();
    return true;
  }

  /**
   * Whether allocation must wait: a peer of a ring that lost to ours, reachable, has not reported
   * against our ring yet (reason); unreachable such peers' space as last seen is avoided.
   */
  private repairBlock(): { reason: string | null; avoid: Range[] } {
    let reason: string | null = null;
    const avoid: Range[] = [];
    for (const f of this.foreign.values()) {
      if (f.done || compareSeeds(f.seeds, this.ring.seeds) <= 0) continue;
      let waiting = false;
      for (const peer of f.owners) {
        if (peer === this.ourName) continue;
        const r = this.records.get(peer);
        if (r && (r.removed || sameList(r.seeds, this.ring.seeds))) continue;
        waiting = true;
        if (this.isReachable(peer)) {
          reason ??= `repairing a ring merge conflict: waiting for ${peer} (of the ring seeded by [${f.seeds.join(',')}]) to adopt ours and report the addresses it holds`;
        } else avoid.push(...f.ring.ownedRanges(peer));
      }
      if (!waiting) {
        f.done = true;
        this.log.info({ seeds: f.seeds }, `ipam: every peer of the ring seeded by [${f.seeds.join(',')}] now uses ours: merge repaired`);
      }
    }
    return { reason, avoid };
  }

  /** While repair blocks, look again now and then (reachability changes without an IPAM message). */
  private armRepairTimer(): void {
    if (this.repairTimer || this.closed) return;
    this.repairTimer = this.clock.setTimeout(() => {
      this.repairTimer = undefined;
      this.tryPending();
    }, this.requestTimeoutMs);
  }

  private repairStatus(): IpamStatus['repair'] {
    if (this.foreign.size === 0 && this.records.size === 0) return null;
    const dups = [...this.dupsFound.values()];
    for (const [p, r] of this.records) {
      if (p === this.ourName || r.removed) continue;
      for (const a of r.dups) dups.push(`${formatAddr(a)}: reported by ${p}`);
    }
    const block = this.ring.isEmpty() ? { reason: null, avoid: [] } : this.repairBlock();
    return {
      adoptedFrom: this.adoptedFrom && this.adoptedFrom.slice(),
      waiting: block.reason ?? (block.avoid.length ? `avoiding ${block.avoid.reduce((n, r) => n + r.end - r.start, 0)} addresses of unreachable peers of a merged ring until they report` : null),
      held: [...this.heldNoted].sort((x, y) => x - y).map(formatAddr),
      duplicates: dups,
    };
  }

  /**
   * Two meshes seeded separately both own the whole range; if both allocated from the bottom, their
   * first containers would collide before they ever meet. Starting next-fit at a /24 boundary chosen
   * by a hash of the ring's seeds makes that unlikely (and after they meet, direction() separates them).
   */
  private placeCursor(): void {
    const own = this.space.ownedRanges();
    if (this.cursorPlaced || own.length === 0) return;
    this.cursorPlaced = true;
    const r = own[0];
    const blocks = Math.floor((r.end - r.start) / 256);
    if (blocks < 2) return;
    let h = 0x811c9dc5;
    for (const ch of this.ring.seeds.join(',')) h = Math.imul(h ^ ch.charCodeAt(0), 0x01000193) >>> 0;
    this.space.startAt(r.start + (h % blocks) * 256);
  }

  private ensurePaxos(): Paxos {
    if (!this.paxos) {
      const q = this.init.mode === 'consensus' && this.init.quorum !== undefined
        ? this.init.quorum
        : Math.floor((this.knownPeers().length + 1) / 2) + 1;
      this.paxos = new Paxos(this.ourName, this.ourNickname, q);
      if (this.savedPaxos) {
        this.paxos.restore(this.savedPaxos);
        this.log.info({ promised: this.savedPaxos.promised, accepted: this.savedPaxos.accepted }, 'ipam: restored our consensus votes from before the restart');
      }
      this.log.info({ quorum: q }, 'ipam: taking part in the consensus that seeds the ring');
    }
    return this.paxos;
  }

  private ensureConsensus(): void {
    if (!this.ring.isEmpty() || this.init.mode !== 'consensus' || this.closed || this.paxosBroken) return;
    if (this.paxosTimer) return; // a round is running
    const px = this.ensurePaxos();
    px.propose();
    px.think();
    this.savePaxos(); // before anyone can see these votes
    this.checkDecision();
    if (!this.ring.isEmpty()) return;
    this.channel?.gossip(this.snapshot());
    this.paxosSeen = px.progressKey();
    this.armPaxosTimer();
  }

  /**
   * Proposes again only when the consensus made no progress for a whole period: a new round
   * preempts the leading proposal, and with many peers (50 routers, gossip relayed hop by hop)
   * retry timers firing while promises are still arriving kept preempting each other forever.
   */
  private armPaxosTimer(): void {
    const wait = this.consensusRetryMs + Math.floor(this.random() * this.consensusRetryMs);
    this.paxosTimer = this.clock.setTimeout(() => {
      this.paxosTimer = undefined;
      if (!this.ring.isEmpty() || !this.paxos || this.closed) return;
      if (!this.pending.length && !this.primeWaiters.length) return;
      const key = this.paxos.progressKey();
      if (key !== this.paxosSeen) {
        this.paxosSeen = key;
        this.armPaxosTimer();
        return;
      }
      this.log.debug(this.paxos.progress(), 'ipam: consensus made no progress for a while; proposing again');
      this.ensureConsensus();
    }, wait);
  }

  private savePaxos(): void {
    if (this.paxos) this.store.saveMeta('paxos', encodePaxosNode(this.ourName, this.paxos.selfState()));
  }

  private checkDecision(): void {
    if (!this.paxos || !this.ring.isEmpty()) return;
    const v = this.paxos.decision();
    if (!v) return;
    this.ring.seed(v.map(([name, nickname]) => ({ name, nickname })));
    this.log.info({ seeds: this.ring.seeds }, 'ipam: consensus reached; ring seeded');
    this.ringChanged(false);
    // tell everyone now rather than on the next periodic round
    this.channel?.gossipBroadcast(this.snapshot());
  }
}

/** r minus the ranges in cut, as disjoint pieces in address order. */
function checkIdent(ident: string): void {
  if (typeof ident !== 'string' || ident.length === 0 || ident.length > 512) throw new UsageError('container ident must be a non-empty string (at most 512 characters)');
}
