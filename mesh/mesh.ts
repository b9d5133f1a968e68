// The mesh core: authenticated connections from the Transport become entries (pending until the
// overlay says established), our topology record lists them, topology gossip spreads records, routes
// follow from the symmetric established graph, and gossip channels ride on top.
//
// Topology gossip (Msg.Topology, see topology.ts for the record format and merge rule):
//  - a new connection: both ends send a digest; each answers with the records the other lacks plus
//    the names it wants, so two neighbours are in sync after 1.5 round trips;
//  - news (our record changed, or a merge replaced records): coalesced for newsDelayMs (and at most
//    one flush per 250 ms + 25 ms per neighbour, 3 s at most, so a router forming 99 connections does not send 99
//    versions of its record), then sent (each record version packed once, topology.ts): our own record to every neighbour; a record we pass on to
//    fanout = max(3, ceil(log2 N)) random neighbours (plus neighbours whose link with us changed and
//    those with few connections), skipping neighbours its owner lists as connections (the owner told
//    them itself) and the neighbour the news came from. In a full mesh each version of a record so
//    reaches every peer once, from its owner, instead of fanout times through the flood (N^2 record
//    deliveries per round of changes instead of fanout x N^2: what collapsed a forming 50-router mesh);
//  - records as deltas (topology.ts) to neighbours that offered them in the handshake (features
//    topologyDeltas; a router that predates them gets full records): our own record goes as the
//    change from the version that neighbour got last, which is the last published one, because we
//    hand out only our published record (digest and want answers too, see shared(): a newer one
//    spread by digest exchanges left neighbours ahead of the base, and the extra versions in
//    circulation were most of a forming mesh's record bytes); a relay that applied deltas passes on
//    the change from the record the first of them applied to, and one that got a full record passes
//    that on. A delta without its base here is answered with a want for the name: the sender holds
//    the record, so one round trip and a name's bytes bring the full record. Digest answers stay
//    full records (the neighbour lacks them);
//  - every gossipIntervalMs: a hash of our digest to fanout neighbours; a neighbour whose view
//    differs answers with its digest (repairs whatever the random flood missed, at ~zero cost in a
//    steady state);
//  - SETTLE_CHECK_MS after news we sent (a news interval and 0.5 s when that is longer; at most
//    SETTLE_CHECK_MAX_MS after the first of a burst): the same hash round once, so a peer the random
//    flood missed is repaired within seconds of a change (peers dying: it would route to them until
//    the next periodic round) while an idle mesh sends nothing more;
//  - repairs (digest answers, answers to a neighbour behind) leave out a version difference of a
//    record whose news is still in flight (we took our copy within that settle time): in a forming
//    mesh nearly every record is a version apart somewhere, and full records sent to fix differences
//    the news was about to fix were most of the control traffic. A missing record, or another
//    incarnation, is still sent at once; a real miss is found by the settle check that follows.
// Routes and GC are recomputed recomputeDelayMs after a change, and at most once per 5 ms per peer
// (1 s at 200 peers and more), and at least 20 times as long as the last one took (a starved router
// spends ~5 % of its time on them, up to one per 3 s): one recompute is O(connections in the mesh),
// 2 ms at 100 full-meshed peers, and ten a second on each of 100 routers was two cores.
// GC: a record that was reachable at the last recompute and is not now is dropped at once; a
// record that was never reachable since we learned it gets gcGraceMs, because records of one
// change arrive in any order (C's record can come before B's record that makes C reachable).
// A dropped record is remembered for DROPPED_MEMORY_MS, and copies of it that neighbours still
// offer are refused (topology.ts), so a dead peer leaves our view once instead of coming back with
// every digest exchange until the last neighbour has dropped it too. The memory is lifted when a
// reachable peer lists the dropped one as connected and the dropped record lists that peer back (a
// healed partition whose far side kept its records unchanged): we ask for the record again.
import { EventEmitter } from 'events';
import type { Clock, TimerHandle } from '../lib/clock';
import type { Logger } from '../lib/log';
import type { PeerName } from './peer';
import type { ConnectionStatus, MeshStatus, PeerStatus, RouteStatus } from './status';
import type { Features, GossipChannel, Gossiper, MeshConnection, Transport } from './types';
import { Msg } from './types';
import { ProtocolError, UsageError, WeaveError, errMsg } from '../lib/errors';
import { ConnectionMaker, type Backoff } from './connection-maker';
import { Topology, TopoKind, decodeTopology, encodeTopology, preferDelta, recordDelta, type ConnInfo, type MergeResult, type PeerRecord, type RecordDelta, type TopologyMsg } from './topology';
import { Routes } from './routes';
import { GossipChannelImpl, GossipKind, decodeGossip, encodeGossip, sameDigest, validChannelName, type GossipHost, type GossipWire } from './gossip';
import { hostOf } from './codec';

export interface OverlayCallbacks { established(): void; failed(reason: string): void }
export interface OverlayHandle {
  onMessage(payload: Uint8Array): void;
  close(): void;
  status(): OverlayStatus;
}
/** What an overlay says about one connection; `stalled`: established, but data does not flow (why). */
export interface OverlayStatus { overlay: string | null; encrypted: boolean; mtu?: number; reason?: string; stalled?: string }
/** Data plane hook (router/ provides it): attached to every authenticated connection. */
export interface OverlayManager { attach(conn: MeshConnection, cb: OverlayCallbacks): OverlayHandle }

export interface MeshOptions {
  identity: { name: PeerName; nickname: string; uid: string };
  transport: Transport;
  clock: Clock;
  log: Logger;
  encryption: boolean;
  /** --trusted-subnets as given (shown in status; the transport decides trust) */
  trustedSubnets?: string[];
  port: number;
  connLimit?: number;
  discovery?: boolean;
  overlays?: string[];
  overlayParams?: Record<string, unknown>;
  overlay?: OverlayManager;
  targetStore?: { load(): string[]; save(targets: string[]): void };
  random?: () => number;
  gossipIntervalMs?: number;
  // ---- additions (all optional) ----
  /** reported in status; the transport negotiates the actual version */
  protocolVersions?: { min: number; max: number };
  /** route/GC recompute debounce, default 20 ms */
  recomputeDelayMs?: number;
  /** coalescing window for topology news and channel gossip, default 50 ms */
  newsDelayMs?: number;
  /** how long a never-reachable record is kept, default 10 s */
  gcGraceMs?: number;
  backoff?: Backoff;
  /** address shown as `listen` in status, default 0.0.0.0:port */
  listenAddress?: string;
  /** offer and send topology deltas (default true); false behaves as a router that predates them */
  topologyDeltas?: boolean;
}

type EntryState = 'pending' | 'established';

interface Entry {
  conn: MeshConnection;
  peer: PeerName;
  state: EntryState;
  handle?: OverlayHandle;
  /** where the remote peer can be dialled (advertised in our topology record) */
  address: string;
  target?: string;
  since: number;
  closed: boolean;
  /** got the peer's first topology message: only then is the connection listed in our record, so a
   * connection the other end refuses right away (connection limit ...) never churns the topology */
  heard: boolean;
  overlayFailure?: string;
  /** both ends offered topology deltas in the handshake */
  deltas: boolean;
  /** the version of our own record last sent on this connection: what our next delta to it starts from */
  ownSent?: PeerRecord;
}

export interface MeshStats {
  protocolErrors: number;
  refused: Record<string, number>;
  unroutable: number;
  noGossiper: number;
  gossiperErrors: number;
  handlerErrors: number;
  unknownMessages: number;
  topologyMessagesIn: number;
  topologyMessagesOut: number;
  recomputes: number;
  /** records refused as copies of ones we dropped as unreachable (stale gossip about dead peers) */
  droppedRecordsRefused: number;
  gossipMessagesIn: number;
  gossipMessagesOut: number;
  /**
   * Message bytes received by kind (topology.records|digest|hash|refused, gossip.<channel> for the
   * channels this router has, gossip.other, overlay) and sent by kind (the topology kinds, gossip,
   * overlay is the overlays' own): what a mesh's control traffic is made of.
   */
  bytesIn: Record<string, number>;
  bytesOut: Record<string, number>;
  /** record deltas sent (one per neighbour it went to), applied, and not applicable (base missing: full record asked for) */
  topologyDeltasOut: number;
  topologyDeltasApplied: number;
  topologyDeltaGaps: number;
}

const TOPO_KIND_NAMES = ['topology.records', 'topology.digest', 'topology.hash', 'topology.refused'] as const;

const SELF_COLLISION_WINDOW_MS = 60_000;
const PULL_INTERVAL_MS = 1000;
// longer than any neighbour keeps a dead peer's record: until its own read timeout (30 s) and the
// news of it have gone round, with room for the periodic digest rounds that carry stale copies
const DROPPED_MEMORY_MS = 10 * 60_000;
const SETTLE_CHECK_MS = 2000;
/** the settle check waits a news interval and this much (settleMs) */
const SETTLE_AFTER_NEWS_MS = 500;
// Every news flush and every recompute costs O(peers) on every router, and a forming mesh changes
// something on each of them every few milliseconds: the floor between two of them grows with the
// mesh so a router's work per second stays about flat, not O(N) (N^2 for the whole mesh). A failure
// still reaches the routes within a second at 100 peers.
const NEWS_MIN_INTERVAL_MS = 250;
const NEWS_INTERVAL_PER_PEER_MS = 25;
const NEWS_MAX_INTERVAL_MS = 3000;
const RECOMPUTE_INTERVAL_PER_PEER_MS = 5;
const RECOMPUTE_MAX_INTERVAL_MS = 1000;
// ...and at least this many times as long as the last recompute took (wall time), up to
// RECOMPUTE_LOADED_MAX_MS: a router given a sliver of a core (100 routers on 2 cores: each was runnable
// all the time, and route recomputes were a third of its time) spends at most ~5 % of its time on
// them. An unloaded router's 2 ms at 100 peers never reaches the per-peer floor.
const RECOMPUTE_DUTY = 20;
const RECOMPUTE_LOADED_MAX_MS = 3000;
const SETTLE_CHECK_MAX_MS = 10_000;
const SELF_COLLISION_MAX_BUMPS = 3;

/** How many refused inbound peers status remembers, and for how long. */
const MAX_INBOUND_REFUSALS = 32;
const INBOUND_REFUSAL_TTL_MS = 5 * 60_000;

export class Mesh extends EventEmitter {
  readonly name: PeerName;
  private readonly o: MeshOptions;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly connLimit: number;
  private readonly discovery: boolean;
  private readonly gossipIntervalMs: number;
  private readonly recomputeDelayMs: number;
  private readonly newsDelayMs: number;
  private readonly gcGraceMs: number;
  private readonly topologyDeltas: boolean;
  private readonly topology: Topology;
  private readonly routes: Routes;
  private readonly cm: ConnectionMaker;
  private readonly conns = new Map<PeerName, Entry>();
  private readonly channels = new Map<string, GossipChannelImpl>();
  private inflightDials = 0;
  /** dials in progress by target address, so forget/--replace can cancel them */
  private readonly dialAborts = new Map<string, AbortController>();
  private started = false;
  private stopped = false;
  private recomputeTimer: TimerHandle | undefined;
  private gcTimer: TimerHandle | undefined;
  private newsTimer: TimerHandle | undefined;
  private periodicTimer: TimerHandle | undefined;
  private settleTimer: TimerHandle | undefined;
  private settleFirst = 0;
  private lastNewsFlush = -Infinity;
  private lastRecompute = -Infinity;
  /** how long the last recompute took (the pacing's duty floor) */
  private lastRecomputeMs = 0;
  /** news to pass on: name -> neighbours known to hold the version we will send */
  private readonly pendingNews = new Map<PeerName, Set<PeerName>>();
  /** our record as last sent as news (see shared()) */
  private published: PeerRecord;
  /** news that came as deltas: name -> the record the first of them applied to (we pass on the change since) */
  private readonly newsBase = new Map<PeerName, PeerRecord>();
  private readonly linkChanged = new Set<PeerName>();
  /** when we took the version of each record we hold (news of it may still be on its way: inFlight()) */
  private readonly takenAt = new Map<PeerName, number>();
  private lastReachable = new Set<PeerName>();
  private readonly unreachableSince = new Map<PeerName, number>();
  private lastEmittedGeneration = -1;
  private readonly selfAddresses = new Set<string>();
  private readonly pulledAt = new Map<PeerName, number>();
  private readonly selfCollisions = new Map<string, { first: number; bumps: number; loggedAt: number }>();
  readonly stats: MeshStats = {
    protocolErrors: 0, refused: {}, unroutable: 0, noGossiper: 0, gossiperErrors: 0, handlerErrors: 0, unknownMessages: 0,
    topologyMessagesIn: 0, topologyMessagesOut: 0, recomputes: 0, droppedRecordsRefused: 0, gossipMessagesIn: 0, gossipMessagesOut: 0, bytesIn: {}, bytesOut: {},
    topologyDeltasOut: 0, topologyDeltasApplied: 0, topologyDeltaGaps: 0,
  };

  constructor(o: MeshOptions) {
    super();
    this.o = o;
    this.name = o.identity.name;
    this.gossipHost.self = this.name;
    this.clock = o.clock;
    this.log = o.log.child({ component: 'mesh' });
    this.random = o.random ?? Math.random;
    this.connLimit = o.connLimit ?? 200;
    this.discovery = o.discovery ?? true;
    this.gossipIntervalMs = o.gossipIntervalMs ?? 30_000;
    this.recomputeDelayMs = o.recomputeDelayMs ?? 20;
    this.newsDelayMs = o.newsDelayMs ?? 50;
    this.gcGraceMs = o.gcGraceMs ?? 10_000;
    this.topologyDeltas = o.topologyDeltas ?? true;
    this.topology = new Topology(o.identity);
    this.published = this.topology.ourself;
    this.routes = new Routes(this.name);
    this.routes.update(new Map([[this.name, []]]));
    this.cm = new ConnectionMaker({
      clock: o.clock,
      log: this.log.child({ sub: 'connection-maker' }),
      random: this.random,
      defaultPort: o.port,
      self: this.name,
      store: o.targetStore,
      backoff: o.backoff,
      hooks: {
        dial: (a) => this.dial(a),
        cancel: (a) => this.dialAborts.get(a)?.abort(),
        connectedTo: (p) => this.conns.has(p),
        // half: leave room for inbound connections from peers that name us as a target
        mayDialDiscovered: () => this.conns.size + this.inflightDials < Math.max(1, Math.floor(this.connLimit / 2)),
      },
    });
  }

  // ---------------------------------------------------------------- lifecycle

  async start(): Promise<void> {
    if (this.started) throw new UsageError('mesh already started');
    this.started = true;
    this.o.transport.setLocalFeatures(this.features());
    await this.o.transport.listen(
      (c) => this.onAuthenticated(c, undefined),
      (addr, f) => {
        this.countRefused(f.code);
        this.log.warn({ remote: addr, code: f.code }, `refused inbound connection: ${f.message}`);
        this.noteInboundRefusal(addr, f.code, f.message);
      },
    );
    this.cm.start();
    this.schedulePeriodic(this.gossipIntervalMs * (0.5 + this.random() * 0.5));
    this.log.info({ name: this.name, port: this.o.port, discovery: this.discovery, connLimit: this.connLimit }, 'mesh started');
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.cm.stop();
    for (const t of [this.recomputeTimer, this.gcTimer, this.newsTimer, this.periodicTimer, this.settleTimer]) this.clock.clearTimeout(t);
    for (const ch of this.channels.values()) ch.stop();
    for (const e of [...this.conns.values()]) {
      e.closed = true;
      e.handle?.close();
      e.conn.close('shutting down');
    }
    this.conns.clear();
    await this.o.transport.close();
    this.log.info({}, 'mesh stopped');
  }

  private features(): Features {
    return {
      name: this.name,
      nickname: this.o.identity.nickname,
      uid: this.o.identity.uid,
      connId: this.randomId(),
      overlays: this.o.overlays ?? [],
      overlayParams: this.o.overlayParams ?? {},
      trusted: false,
      listenPort: this.o.port,
      ...(this.topologyDeltas ? { topologyDeltas: true } : {}),
    };
  }

  private randomId(): string {
    let s = '';
    for (let i = 0; i < 4; i++) s += Math.floor(this.random() * 0x10000).toString(16).padStart(4, '0');
    return s;
  }

  // ---------------------------------------------------------------- public API

  /** Adds connection targets; UsageError naming the first invalid entry (then nothing changes). */
  connect(addresses: string[], opts: { replace?: boolean } = {}): void {
    this.cm.add(addresses, opts.replace ?? false);
  }

  forget(addresses: string[]): void {
    this.cm.forget(addresses);
  }

  targets(): string[] {
    return this.cm.targets();
  }

  newGossip(channel: string, g: Gossiper): GossipChannel {
    if (!validChannelName(channel)) throw new UsageError(`invalid gossip channel name "${channel}"`);
    if (this.channels.has(channel)) throw new UsageError(`gossip channel "${channel}" already exists`);
    const ch = new GossipChannelImpl(channel, g, this.gossipHost, this.clock, this.log.child({ channel }), this.newsDelayMs);
    this.channels.set(channel, ch);
    return ch;
  }

  unicastNextHop(dst: PeerName): PeerName | undefined {
    return this.routes.unicastNextHop(dst);
  }

  broadcastNextHops(src: PeerName): PeerName[] {
    return this.routes.broadcastNextHops(src);
  }

  peerNames(): PeerName[] {
    return this.routes.reachable();
  }

  connectionTo(peer: PeerName): MeshConnection | undefined {
    const e = this.conns.get(peer);
    return e && e.state === 'established' ? e.conn : undefined;
  }

  /** The peer records we hold (for tests, the bench and `weave report`). */
  peerRecords(): PeerRecord[] {
    return [...this.topology.records()];
  }

  /** Hash of our topology view: equal on two peers means equal views. */
  topologyHash(): string {
    return this.topology.hash();
  }

  /** The raw state of one target address (connection maker), for tests and diagnostics. */
  targetState(address: string): ReturnType<ConnectionMaker['stateOf']> {
    return this.cm.stateOf(address);
  }

  /** Recomputes routes now instead of after the debounce (tests, CLI `status` after a change). */
  recomputeNow(): void {
    this.clock.clearTimeout(this.recomputeTimer);
    this.recomputeTimer = undefined;
    this.recompute();
  }

  /**
   * Every peer we hold a record of, without its connections: what the listeners of peersChanged
   * need, O(peers) where status() is O(peers x connections) (a 100-router mesh changes often while it forms).
   */
  peerSummaries(): Array<{ name: PeerName; nickname: string; reachable: boolean }> {
    const reachable = new Set(this.routes.reachable());
    const out: Array<{ name: PeerName; nickname: string; reachable: boolean }> = [];
    for (const r of this.topology.records()) out.push({ name: r.name, nickname: r.nickname, reachable: reachable.has(r.name) });
    return out;
  }

  /** Our connections as status shows them (authenticated ones only: no targets, no refusals). */
  connectionStatuses(): ConnectionStatus[] {
    const connections: ConnectionStatus[] = [];
    for (const e of this.conns.values()) {
      const ov = e.handle ? safeOverlayStatus(e.handle, this.log) : { overlay: null, encrypted: e.conn.encrypted };
      const s: ConnectionStatus = {
        address: e.conn.outbound ? (e.target ?? e.conn.remoteAddr) : e.conn.remoteAddr,
        outbound: e.conn.outbound,
        state: e.state,
        info: e.state === 'established'
          ? (ov.stalled ? `data not flowing over ${ov.overlay ?? 'the overlay'}: ${ov.stalled}` : ov.overlay ? `established over ${ov.overlay}` : 'established')
          : (ov.reason ?? (this.o.overlay ? 'waiting for an overlay to be established' : 'pending')),
        peerName: e.peer,
        peerNickname: e.conn.remote.nickname,
        overlay: ov.overlay,
        encrypted: e.conn.dataKey !== null,
      };
      if (e.conn.encrypted && e.conn.dataKey === null) s.trusted = true;
      if (ov.mtu !== undefined) s.mtu = ov.mtu;
      if (ov.reason !== undefined) s.overlayReason = ov.reason;
      if (e.state === 'established' && ov.stalled) s.stalled = ov.stalled;
      const g = e.conn.keyGeneration;
      if (g) s.passwordGeneration = Math.min(g.tx, g.rx);
      connections.push(s);
    }
    return connections;
  }

  status(): MeshStatus {
    const reachable = new Set(this.routes.reachable());
    const peers: PeerStatus[] = [];
    for (const r of this.topology.records()) {
      peers.push({
        name: r.name, nickname: r.nickname, uid: r.uid, version: r.version, reachable: reachable.has(r.name),
        connections: r.connections.map((c) => ({ name: c.name, nickname: this.topology.get(c.name)?.nickname ?? '', address: c.address, outbound: c.outbound, established: c.established })),
      });
    }
    peers.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const connections = this.connectionStatuses();
    connections.sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
    const routes: RouteStatus[] = [...this.routes.table()].map(([dest, via]) => ({ dest, via })).sort((a, b) => (a.dest < b.dest ? -1 : a.dest > b.dest ? 1 : 0));
    const rotation = this.o.transport.rotation?.();
    return {
      name: this.name,
      nickname: this.o.identity.nickname,
      uid: this.o.identity.uid,
      encryption: this.o.encryption,
      trustedSubnets: this.o.trustedSubnets ?? [],
      protocolMinVersion: this.o.protocolVersions?.min ?? 1,
      protocolMaxVersion: this.o.protocolVersions?.max ?? 1,
      peerDiscovery: this.discovery,
      listen: this.o.listenAddress ?? `0.0.0.0:${this.o.port}`,
      connLimit: this.connLimit,
      peers,
      connections: [...connections, ...this.cm.status(), ...this.inboundRefusalStatus()],
      targets: this.cm.targets(),
      routes,
      ...(rotation ? { passwordRotation: rotation } : {}),
    };
  }

  // Refused inbound handshakes (wrong password, encryption mismatch ...) have no connection entry, yet
  // the operator of the listening side must see them too: keep the latest per remote host, briefly.
  private readonly inboundRefusals = new Map<string, { address: string; code: string; message: string; at: number }>();

  private noteInboundRefusal(addr: string, code: string, message: string): void {
    const host = hostOf(addr);
    this.inboundRefusals.delete(host);
    this.inboundRefusals.set(host, { address: addr, code, message, at: this.clock.now() });
    while (this.inboundRefusals.size > MAX_INBOUND_REFUSALS) this.inboundRefusals.delete(this.inboundRefusals.keys().next().value as string);
  }

  private inboundRefusalStatus(): ConnectionStatus[] {
    const out: ConnectionStatus[] = [];
    const now = this.clock.now();
    for (const [host, r] of this.inboundRefusals) {
      const live = [...this.conns.values()].some((e) => hostOf(e.conn.remoteAddr) === host && e.since > r.at);
      if (live || now - r.at > INBOUND_REFUSAL_TTL_MS) {
        this.inboundRefusals.delete(host);
        continue;
      }
      out.push({ address: r.address, outbound: false, state: 'failed', info: r.message, code: r.code, overlay: null, encrypted: false });
    }
    return out;
  }

  // ---------------------------------------------------------------- connections

  private dial(address: string): void {
    if (this.stopped) return;
    this.inflightDials++;
    const abort = new AbortController();
    this.dialAborts.set(address, abort);
    let p: Promise<MeshConnection>;
    try {
      p = this.o.transport.dial(address, this.features(), { signal: abort.signal });
    } catch (e) {
      p = Promise.reject(e);
    }
    const done = (): void => {
      this.inflightDials--;
      if (this.dialAborts.get(address) === abort) this.dialAborts.delete(address);
    };
    p.then(
      (conn) => {
        done();
        if (this.stopped) {
          conn.close('shutting down');
          return;
        }
        this.onAuthenticated(conn, address);
      },
      (err: unknown) => {
        done();
        if (this.stopped) return;
        const code = err instanceof WeaveError ? err.code : 'EDIAL';
        this.log.debug({ address, code, err: errMsg(err) }, 'dial failed');
        // cancelled: the connection maker dropped the target (it may be a new one by now)
        if (!abort.signal.aborted) this.cm.attemptFailed(address, code, errMsg(err));
      },
    );
  }

  private refuse(conn: MeshConnection, code: string, message: string, target: string | undefined, slow = false): void {
    this.countRefused(code);
    this.log.warn({ code, peer: conn.remote.name, nickname: conn.remote.nickname, uid: conn.remote.uid, remote: conn.remoteAddr, outbound: conn.outbound }, message);
    conn.onMessage = () => {};
    conn.onClose = () => {};
    this.stats.topologyMessagesOut++;
    const bytes = encodeTopology({ kind: TopoKind.Refused, code, message });
    countBytes(this.stats.bytesOut, 'topology.refused', bytes.length);
    conn.send(Msg.Topology, bytes);
    conn.close(`${code}: ${message}`);
    if (target) this.cm.attemptFailed(target, code, message, { peer: conn.remote.name, slow });
  }

  private countRefused(code: string): void {
    this.stats.refused[code] = (this.stats.refused[code] ?? 0) + 1;
  }

  /** Who initiated a connection: with the connId, the duplicate tie-break both ends agree on. */
  private dialler(c: MeshConnection): PeerName {
    return c.outbound ? this.name : c.remote.name;
  }

  private onAuthenticated(conn: MeshConnection, target: string | undefined): void {
    if (this.stopped) {
      conn.close('shutting down');
      return;
    }
    const r = conn.remote;
    if (r.name === this.name) {
      if (r.uid === this.o.identity.uid) {
        if (target) this.selfAddresses.add(target);
        this.refuse(conn, 'ESELF', 'connection to self', target, true);
      } else {
        this.refuse(conn, 'ENAMECOLLISION', `peer ${r.name}(${r.nickname}) at ${conn.remoteAddr} uses our name: give one of the two routers another --name`, target);
      }
      return;
    }
    const existing = this.conns.get(r.name);
    if (existing) {
      const old = existing.conn;
      if (old.remote.uid !== r.uid) {
        this.refuse(conn, 'ENAMECOLLISION', `two live peers named ${r.name}: connected ${old.remote.nickname} at ${old.remoteAddr} (uid ${old.remote.uid}), refused ${r.nickname} at ${conn.remoteAddr} (uid ${r.uid})`, target);
        return;
      }
      const keepNew = this.dialler(conn) !== this.dialler(old) ? this.dialler(conn) > this.dialler(old) : conn.id > old.id;
      this.log.debug({ peer: r.name, keepNew }, 'duplicate connection');
      if (!keepNew) {
        conn.onMessage = () => {};
        conn.onClose = () => {};
        conn.close('duplicate connection');
        if (target) this.cm.attemptSucceeded(target, r.name);
        return;
      }
      // the new one wins: retire the old entry without reporting the peer as lost
      existing.closed = true;
      existing.handle?.close();
      this.conns.delete(r.name);
      old.close('duplicate connection');
      if (existing.target && existing.target !== target) this.cm.attemptSucceeded(existing.target, r.name);
      this.register(conn, target, existing.heard);
      return;
    } else if (this.conns.size >= this.connLimit && !this.makeRoomFor(r.name)) {
      this.refuse(conn, 'ECONNLIMIT', `connection limit ${this.connLimit} reached`, target);
      return;
    }
    this.register(conn, target);
  }

  /**
   * At the connection limit, a peer with no other established connection (we hold no record of it: it
   * is new, or we dropped it as unreachable; or its record lists none) would stay cut off for as long as every peer it knows is full (its only target
   * filled up with connections discovery made): close our connection to the neighbour with the most
   * other established connections (at least 3, so it stays well connected) and take the newcomer.
   */
  private makeRoomFor(peer: PeerName): boolean {
    if (this.topology.get(peer)?.connections.some((c) => c.established && c.name !== this.name)) return false;
    let victim: Entry | undefined;
    let most = 2;
    for (const e of this.conns.values()) {
      const n = this.topology.get(e.peer)?.connections.filter((c) => c.established && c.name !== this.name).length ?? 0;
      if (n > most) {
        most = n;
        victim = e;
      }
    }
    if (!victim) return false;
    this.log.info({ peer: victim.peer, newcomer: peer, connLimit: this.connLimit }, 'at the connection limit: closing a well-connected neighbour for a peer with no other connection');
    const reason = `making room for ${peer}, which has no other connection (connection limit ${this.connLimit})`;
    this.onClose(victim, reason);
    victim.conn.close(reason);
    return true;
  }

  private register(conn: MeshConnection, target: string | undefined, heard = false): void {
    const peer = conn.remote.name;
    const address = conn.outbound ? conn.remoteAddr : `${hostOf(conn.remoteAddr)}:${conn.remote.listenPort}`;
    const deltas = this.topologyDeltas && conn.remote.topologyDeltas === true;
    const e: Entry = { conn, peer, state: 'pending', address, target, since: this.clock.now(), closed: false, heard, deltas };
    this.conns.set(peer, e);
    conn.onMessage = (type, payload) => this.onMessage(e, type, payload);
    conn.onClose = (reason) => this.onClose(e, reason);
    if (target) this.cm.attemptSucceeded(target, peer);
    this.log.info({ peer, nickname: conn.remote.nickname, remote: conn.remoteAddr, outbound: conn.outbound }, 'connection authenticated');
    this.linkChanged.add(peer);
    this.updateLocalConnections();
    this.sendTopology(e, { kind: TopoKind.Digest, digest: this.topology.digest() });
    for (const ch of this.channels.values()) for (const p of ch.connectState()) this.sendGossipMsg(e, encodeGossip({ channel: ch.name, kind: GossipKind.Gossip, src: this.name, payload: p }));
    if (this.o.overlay) {
      try {
        e.handle = this.o.overlay.attach(conn, {
          established: () => this.onEstablished(e),
          failed: (reason) => {
            if (e.closed) return;
            e.overlayFailure = reason;
            this.log.warn({ peer, reason }, 'overlay failed; closing connection');
            conn.close(`overlay failed: ${reason}`);
          },
        });
      } catch (err) {
        this.stats.handlerErrors++;
        this.log.error({ peer, err: errMsg(err) }, 'overlay attach threw; closing connection');
        conn.close(`overlay attach failed: ${errMsg(err)}`);
      }
    } else {
      this.onEstablished(e);
    }
  }

  private onEstablished(e: Entry): void {
    if (e.closed || e.state === 'established' || this.stopped) return;
    e.state = 'established';
    this.log.info({ peer: e.peer, nickname: e.conn.remote.nickname }, 'connection established');
    this.linkChanged.add(e.peer);
    this.updateLocalConnections();
    this.emit('connectionEstablished', e.peer, e.conn);
  }

  private onClose(e: Entry, reason: string): void {
    if (e.closed) return;
    e.closed = true;
    if (this.conns.get(e.peer) !== e) return;
    this.conns.delete(e.peer);
    try {
      e.handle?.close();
    } catch (err) {
      this.stats.handlerErrors++;
      this.log.error({ peer: e.peer, err: errMsg(err) }, 'overlay close threw');
    }
    if (this.stopped) return;
    this.log.info({ peer: e.peer, nickname: e.conn.remote.nickname, reason, state: e.state }, 'connection lost');
    this.linkChanged.add(e.peer);
    this.updateLocalConnections();
    this.cm.peerLost(e.peer, reason);
    this.emit('connectionLost', e.peer, reason);
  }

  private updateLocalConnections(): void {
    const list: ConnInfo[] = [];
    for (const e of this.conns.values()) if (e.heard) list.push({ name: e.peer, address: e.address, outbound: e.conn.outbound, established: e.state === 'established' });
    if (this.topology.setLocalConnections(list)) this.news(this.name, null);
  }

  // ---------------------------------------------------------------- messages

  private onMessage(e: Entry, type: number, payload: Uint8Array): void {
    if (e.closed || this.stopped) return;
    try {
      switch (type) {
        case Msg.Heartbeat:
          return;
        case Msg.Topology: {
          this.stats.topologyMessagesIn++;
          const m = decodeTopology(payload);
          countBytes(this.stats.bytesIn, TOPO_KIND_NAMES[m.kind], payload.length);
          this.onTopology(e, m);
          return;
        }
        case Msg.Gossip: {
          this.stats.gossipMessagesIn++;
          const m = decodeGossip(payload);
          // only our channels' names: a peer must not be able to mint label values
          countBytes(this.stats.bytesIn, this.channels.has(m.channel) ? `gossip.${m.channel}` : 'gossip.other', payload.length);
          this.onGossip(e, payload, m);
          return;
        }
        case Msg.Overlay:
          countBytes(this.stats.bytesIn, 'overlay', payload.length);
          if (e.handle) e.handle.onMessage(payload);
          else this.stats.unknownMessages++;
          return;
        default:
          if (type >= 32 && type <= 255) {
            this.stats.unknownMessages++;
            return;
          }
          throw new ProtocolError('unknown message type', { type });
      }
    } catch (err) {
      if (err instanceof ProtocolError) {
        this.stats.protocolErrors++;
        this.log.warn({ peer: e.peer, remote: e.conn.remoteAddr, type, err: err.message, ...err.context }, 'protocol error; closing connection');
        e.conn.close(`protocol error: ${err.message}`);
      } else {
        this.stats.handlerErrors++;
        this.log.error({ peer: e.peer, type, err: errMsg(err) }, 'message handler failed');
      }
    }
  }

  private sendTopology(e: Entry, m: TopologyMsg): void {
    if (m.kind === TopoKind.Records) for (const r of m.peers) if (r.name === this.name) e.ownSent = r;
    this.stats.topologyMessagesOut++;
    const bytes = encodeTopology(m);
    countBytes(this.stats.bytesOut, TOPO_KIND_NAMES[m.kind], bytes.length);
    e.conn.send(Msg.Topology, bytes);
  }

  private onTopology(e: Entry, m: TopologyMsg): void {
    if (m.kind === TopoKind.Refused) {
      this.countRefused(m.code);
      this.log.warn({ peer: e.peer, remote: e.conn.remoteAddr, code: m.code }, `peer refused the connection: ${m.message}`);
      e.conn.close(`refused by peer: ${m.code}: ${m.message}`);
      if (e.target) this.cm.attemptFailed(e.target, m.code, `refused by peer: ${m.message}`, { peer: e.peer });
      return;
    }
    if (!e.heard) {
      e.heard = true;
      this.linkChanged.add(e.peer);
      this.updateLocalConnections();
    }
    switch (m.kind) {
      case TopoKind.Records: {
        const res = this.topology.merge(m.peers);
        for (const n of res.changed) {
          this.newsBase.delete(n);
          this.news(n, e.peer);
        }
        this.afterMerge(e, res);
        if (m.deltas?.length) {
          // never offered: a peer that sends them anyway does not follow the protocol
          if (!this.topologyDeltas) throw new ProtocolError('topology deltas were not negotiated', { deltas: m.deltas.length });
          const dr = this.topology.mergeDeltas(m.deltas);
          this.stats.topologyDeltasApplied += dr.changed.length;
          for (const n of dr.changed) {
            // the first delta of this round of news fixes the base; later ones add to the change from it
            if (!this.pendingNews.has(n)) this.newsBase.set(n, dr.bases.get(n)!);
            this.news(n, e.peer);
          }
          this.afterMerge(e, dr);
          // we lack the base (a gap, another incarnation, a dropped record): the sender holds the
          // record, so one want to it costs a name and brings the full record in one round trip
          if (dr.missing.length) {
            this.stats.topologyDeltaGaps += dr.missing.length;
            this.log.debug({ peer: e.peer, records: dr.missing }, 'topology deltas without their base; asking for the full records');
            this.sendTopology(e, { kind: TopoKind.Records, peers: [], want: dr.missing });
          }
        }
        if (m.want.length) {
          const recs = m.want.map((n) => this.shared(n)).filter((r): r is PeerRecord => r !== undefined);
          if (recs.length) this.sendTopology(e, { kind: TopoKind.Records, peers: recs, want: [] });
        }
        return;
      }
      case TopoKind.Digest: {
        const { send: newer, want, selfConflict } = this.topology.reconcile(m.digest, (n) => this.inFlight(n));
        if (selfConflict) this.onSelfConflict({ ...selfConflict, nickname: '' });
        const send: PeerRecord[] = [];
        for (const r of newer) {
          if (r.name !== this.name) send.push(r);
          // our own record as published, unless the neighbour holds that already
          else if (!m.digest.some(([n, u, v]) => n === this.name && u === r.uid && v >= this.published.version)) send.push(this.published);
        }
        if (send.length || want.length) this.sendTopology(e, { kind: TopoKind.Records, peers: send, want });
        return;
      }
      case TopoKind.Hash:
        if (m.hash !== this.topology.hash()) this.sendTopology(e, { kind: TopoKind.Digest, digest: this.topology.digest() });
        return;
    }
  }

  /**
   * The record of name we hand out: ours as last published (news), not as it is now. A version
   * given to one neighbour ahead of the news would reach others through their digest exchanges,
   * and a neighbour holding it could not apply the next delta (its base is the published version):
   * in a forming 50-router simulation that was 40 % of all deltas. Our pending news follows anyway.
   */
  private shared(name: PeerName): PeerRecord | undefined {
    return name === this.name ? this.published : this.topology.get(name);
  }

  /** What merging records or deltas from e found besides changes: conflicts, refusals, who is behind. */
  private afterMerge(e: Entry, res: MergeResult): void {
    if (res.selfConflict) this.onSelfConflict(res.selfConflict);
    this.stats.droppedRecordsRefused += res.dropped.length;
    // the sender already holds these: don't send them back with the pending news
    for (const n of res.same) this.pendingNews.get(n)?.add(e.peer);
    // the sender is behind on these: answer with ours right away instead of waiting for the flood,
    // unless the flood is carrying it now (inFlight; our own record goes out with our news)
    if (res.older.length) {
      const newer = res.older.filter((n) => n === this.name || !this.inFlight(n)).map((n) => this.shared(n)).filter((r): r is PeerRecord => r !== undefined);
      // holds the pending version only if that is what we sent (ours may be ahead of the published one)
      for (const r of newer) if (r === this.topology.get(r.name)) this.pendingNews.get(r.name)?.add(e.peer);
      if (newer.length) this.sendTopology(e, { kind: TopoKind.Records, peers: newer, want: [] });
    }
  }

  /** A record about our name with another uid: our previous incarnation, or another live router. */
  private onSelfConflict(c: { uid: string; version: number; nickname: string }): void {
    if (c.version < this.topology.ourself.version) return;
    const now = this.clock.now();
    let s = this.selfCollisions.get(c.uid);
    if (!s || now - s.first > SELF_COLLISION_WINDOW_MS) {
      s = { first: now, bumps: 0, loggedAt: s?.loggedAt ?? 0 };
      this.selfCollisions.set(c.uid, s);
    }
    if (s.bumps >= SELF_COLLISION_MAX_BUMPS) {
      // it keeps coming back newer: a live router with our name, not a stale record
      if (now - s.loggedAt >= SELF_COLLISION_WINDOW_MS) {
        s.loggedAt = now;
        this.countRefused('ENAMECOLLISION');
        this.log.error({ code: 'ENAMECOLLISION', otherUid: c.uid, otherNickname: c.nickname }, `another live router uses our peer name ${this.name}; give one of them another --name`);
      }
      return;
    }
    s.bumps++;
    this.log.info({ staleUid: c.uid, staleVersion: c.version }, 'superseding a record of a previous incarnation of this peer');
    this.topology.bumpSelfAbove(c.version);
    this.news(this.name, null);
  }

  private news(name: PeerName, from: PeerName | null): void {
    // a new version: only its source is known to hold it
    this.pendingNews.set(name, from === null ? new Set() : new Set([from]));
    this.takenAt.set(name, this.clock.now());
    this.scheduleRecompute();
    if (!this.newsTimer && !this.stopped) {
      const wait = Math.max(this.newsDelayMs, this.lastNewsFlush + this.newsFloor() - this.clock.now());
      this.newsTimer = this.clock.setTimeout(() => this.flushNews(), wait);
    }
  }

  /** The least time between two news flushes, for this many neighbours. */
  private newsFloor(): number {
    return Math.min(NEWS_MAX_INTERVAL_MS, NEWS_MIN_INTERVAL_MS + NEWS_INTERVAL_PER_PEER_MS * this.conns.size);
  }

  /**
   * How long after our last news the settle check runs, and for how long a version we took counts as
   * still in flight: one news interval and a half second at least, so a check finds the news of
   * everything taken before our last flush delivered (what it still finds is a real miss).
   */
  private settleMs(): number {
    return Math.max(SETTLE_CHECK_MS, this.newsFloor() + SETTLE_AFTER_NEWS_MS);
  }

  /**
   * Our copy of this record changed within settleMs: the news of it (or of a newer version, to us)
   * is still going round, so a neighbour one version apart is not repaired with a full record. While
   * 100 routers form, every record changes every few seconds, and hash rounds and new connections
   * found nearly every record a version apart: their digest answers were full records, most of each
   * router's control traffic (issue 19). A record one side lacks, or of another incarnation, is
   * exchanged at once all the same.
   */
  private inFlight(name: PeerName): boolean {
    const t = this.takenAt.get(name);
    return t !== undefined && this.clock.now() - t < this.settleMs();
  }

  private fanout(): number {
    return Math.max(3, Math.ceil(Math.log2(Math.max(2, this.topology.size()))));
  }

  /** Up to k random entries (partial Fisher-Yates over a fresh array), optionally excluding one peer. */
  private randomNeighbours(k: number, except?: PeerName): Entry[] {
    const all: Entry[] = [];
    for (const e of this.conns.values()) if (e.peer !== except) all.push(e);
    if (all.length <= k) return all;
    for (let i = 0; i < k; i++) {
      const j = i + Math.floor(this.random() * (all.length - i));
      const t = all[i];
      all[i] = all[j];
      all[j] = t;
    }
    all.length = k;
    return all;
  }

  private flushNews(): void {
    this.newsTimer = undefined;
    if (this.stopped) return;
    this.lastNewsFlush = this.clock.now();
    // [record, neighbours holding it, the record a relayed delta applies to]
    const items: Array<[PeerRecord, Set<PeerName>, PeerRecord | undefined]> = [];
    for (const [n, holders] of this.pendingNews) {
      const r = this.topology.get(n);
      if (r) items.push([r, holders, this.newsBase.get(n)]);
      if (r && n === this.name) this.published = r;
    }
    this.pendingNews.clear();
    this.newsBase.clear();
    const relayTo = new Set(this.randomNeighbours(this.fanout()));
    for (const p of this.linkChanged) {
      const e = this.conns.get(p);
      if (e) relayTo.add(e);
    }
    this.linkChanged.clear();
    if (!items.length) return;
    // A neighbour with few connections hears news only from few peers, each of which may skip it in
    // its random pick: always include those, so the flood covers tree-like parts of the graph.
    for (const e of this.conns.values()) {
      const r = this.topology.get(e.peer);
      if (!r || r.connections.length < 3) relayTo.add(e);
    }
    // the owner of a record sends each version to its neighbours itself
    const ownerTold = items.map(([r]) => (r.name === this.name ? null : new Set(r.connections.map((c) => c.name))));
    // base record -> the delta from it to the record we send (null: the full record is smaller)
    const deltaFrom = new Map<PeerRecord, RecordDelta | null>();
    const deltaTo = (base: PeerRecord, r: PeerRecord): RecordDelta | null => {
      let d = deltaFrom.get(base);
      if (d === undefined) {
        d = recordDelta(base, r);
        if (d && !preferDelta(d, r)) d = null;
        deltaFrom.set(base, d);
      }
      return d;
    };
    const encoded = new Map<string, Uint8Array>();
    for (const e of this.conns.values()) {
      const recs: PeerRecord[] = [];
      const deltas: RecordDelta[] = [];
      let key = '';
      for (let i = 0; i < items.length; i++) {
        const [r, holders, relayBase] = items[i];
        const told = ownerTold[i];
        if (holders.has(e.peer)) {
          // it sent us this version of our record: our next delta to it starts from there
          if (!told) e.ownSent = r;
          continue;
        }
        if (told && (!relayTo.has(e) || told.has(e.peer))) continue;
        // our own record: from the version this neighbour got last (it holds that one: one ordered
        // connection carried both); a relayed one: the same change we applied, from the same base
        const base = e.deltas ? (told ? relayBase : e.ownSent) : undefined;
        if (!told) {
          if (e.ownSent === r) continue; // it got this version already (a want or digest answer)
          e.ownSent = r;
        }
        const d = base ? deltaTo(base, r) : null;
        if (d) {
          deltas.push(d);
          key += `${i}@${d.base},`;
        } else {
          recs.push(r);
          key += `${i},`;
        }
      }
      if (!recs.length && !deltas.length) continue;
      // most neighbours get the same records: encode each distinct set once
      let bytes = encoded.get(key);
      if (!bytes) {
        bytes = encodeTopology({ kind: TopoKind.Records, peers: recs, want: [], deltas });
        encoded.set(key, bytes);
      }
      this.stats.topologyMessagesOut++;
      this.stats.topologyDeltasOut += deltas.length;
      countBytes(this.stats.bytesOut, 'topology.records', bytes.length);
      e.conn.send(Msg.Topology, bytes);
    }
    this.scheduleSettleCheck();
  }

  /** One hash round settleMs() after the last news (bounded by SETTLE_CHECK_MAX_MS under churn). */
  private scheduleSettleCheck(): void {
    const now = this.clock.now();
    if (this.settleTimer) this.clock.clearTimeout(this.settleTimer);
    else this.settleFirst = now;
    const at = Math.min(now + this.settleMs(), this.settleFirst + SETTLE_CHECK_MAX_MS);
    this.settleTimer = this.clock.setTimeout(() => {
      this.settleTimer = undefined;
      if (this.stopped) return;
      const hash = this.topology.hash();
      for (const e of this.randomNeighbours(this.fanout())) this.sendTopology(e, { kind: TopoKind.Hash, hash });
    }, Math.max(0, at - now));
  }

  private schedulePeriodic(ms: number): void {
    if (this.stopped) return;
    this.periodicTimer = this.clock.setTimeout(() => {
      this.periodicTimer = undefined;
      this.periodic();
      this.schedulePeriodic(this.gossipIntervalMs);
    }, ms);
  }

  private periodic(): void {
    this.topology.expireDropped(this.clock.now() - DROPPED_MEMORY_MS);
    const hash = this.topology.hash();
    for (const e of this.randomNeighbours(this.fanout())) this.sendTopology(e, { kind: TopoKind.Hash, hash });
    for (const ch of this.channels.values()) {
      const digest = ch.digest();
      if (digest) {
        const bytes = encodeGossip({ channel: ch.name, kind: GossipKind.DigestAsk, src: this.name, payload: digest });
        for (const e of this.randomNeighbours(this.fanout())) this.sendGossipMsg(e, bytes);
        continue;
      }
      const payloads = ch.fullState();
      if (!payloads.length) continue;
      const targets = this.randomNeighbours(this.fanout());
      for (const p of payloads) {
        const bytes = encodeGossip({ channel: ch.name, kind: GossipKind.Gossip, src: this.name, payload: p });
        for (const e of targets) this.sendGossipMsg(e, bytes);
      }
    }
  }

  // ---------------------------------------------------------------- gossip channels

  private sendGossipMsg(e: Entry, bytes: Uint8Array): void {
    this.stats.gossipMessagesOut++;
    countBytes(this.stats.bytesOut, 'gossip', bytes.length);
    e.conn.send(Msg.Gossip, bytes);
  }

  private readonly gossipHost: GossipHost = {
    self: '',
    routeUnicast: (m: GossipWire): boolean => this.routeUnicast(m, encodeGossip(m)),
    routeBroadcast: (m: GossipWire): void => this.routeBroadcast(m.src, encodeGossip(m)),
    sendToNeighbours: (m: GossipWire, opts: { all?: boolean; except?: PeerName }): void => {
      const bytes = encodeGossip(m);
      const targets = opts.all ? [...this.conns.values()].filter((e) => e.peer !== opts.except) : this.randomNeighbours(this.fanout(), opts.except);
      for (const e of targets) this.sendGossipMsg(e, bytes);
    },
    gossiperError: (channel: string, op: string, e: unknown): void => {
      this.stats.gossiperErrors++;
      this.log.error({ channel, op, err: errMsg(e) }, 'gossiper callback failed');
    },
  };

  private routeUnicast(m: GossipWire, bytes: Uint8Array): boolean {
    const hop = this.routes.unicastNextHop(m.dst!);
    const e = hop === undefined ? undefined : this.conns.get(hop);
    if (!e || e.state !== 'established') {
      this.stats.unroutable++;
      this.log.debug({ channel: m.channel, src: m.src, dst: m.dst }, 'gossip unicast: no route');
      return false;
    }
    this.sendGossipMsg(e, bytes);
    return true;
  }

  private routeBroadcast(src: PeerName, bytes: Uint8Array): void {
    for (const hop of this.routes.broadcastNextHops(src)) {
      const e = this.conns.get(hop);
      if (e && e.state === 'established') this.sendGossipMsg(e, bytes);
      else this.stats.unroutable++;
    }
  }

  private onGossip(e: Entry, raw: Uint8Array, m: GossipWire): void {
    const ch = this.channels.get(m.channel);
    switch (m.kind) {
      case GossipKind.Unicast:
        if (m.dst === this.name) {
          if (ch) ch.deliverUnicast(m.src, m.payload);
          else this.stats.noGossiper++;
        } else {
          this.routeUnicast(m, raw);
        }
        return;
      case GossipKind.Broadcast:
        if (m.src === this.name) return; // our own broadcast back at us: a transient topology disagreement
        if (ch) ch.deliverBroadcast(m.src, m.payload);
        else this.stats.noGossiper++;
        this.routeBroadcast(m.src, raw);
        return;
      case GossipKind.Gossip:
        if (ch) ch.deliverGossip(e.peer, m.payload);
        else this.stats.noGossiper++;
        return;
      case GossipKind.DigestAsk:
      case GossipKind.DigestTell: {
        const mine = ch?.digest();
        if (!ch || !mine) {
          this.stats.noGossiper++;
          return;
        }
        if (sameDigest(mine, m.payload)) return;
        // differ: our full state to the neighbour; an ask also gets our digest, so it can send back what we lack
        for (const p of ch.fullState()) this.sendGossipMsg(e, encodeGossip({ channel: m.channel, kind: GossipKind.Gossip, src: this.name, payload: p }));
        if (m.kind === GossipKind.DigestAsk) this.sendGossipMsg(e, encodeGossip({ channel: m.channel, kind: GossipKind.DigestTell, src: this.name, payload: mine }));
        return;
      }
    }
  }

  // ---------------------------------------------------------------- routes, GC, discovery

  private scheduleRecompute(): void {
    if (this.recomputeTimer || this.stopped) return;
    const floor = Math.max(
      Math.min(RECOMPUTE_MAX_INTERVAL_MS, RECOMPUTE_INTERVAL_PER_PEER_MS * this.topology.size()),
      Math.min(RECOMPUTE_LOADED_MAX_MS, RECOMPUTE_DUTY * this.lastRecomputeMs),
    );
    const wait = Math.max(this.recomputeDelayMs, this.lastRecompute + floor - this.clock.now());
    this.recomputeTimer = this.clock.setTimeout(() => {
      this.recomputeTimer = undefined;
      this.recompute();
      this.lastRecomputeMs = this.clock.now() - this.lastRecompute;
    }, wait);
  }

  private recompute(): void {
    if (this.stopped) return;
    this.stats.recomputes++;
    this.lastRecompute = this.clock.now();
    const adj = this.topology.adjacency();
    const reach = this.topology.reachable(adj);
    const now = this.clock.now();
    const drop: PeerName[] = [];
    let nextGc = Infinity;
    for (const n of this.topology.names()) {
      if (reach.has(n)) {
        this.unreachableSince.delete(n);
        continue;
      }
      if (this.lastReachable.has(n)) {
        drop.push(n);
        continue;
      }
      const since = this.unreachableSince.get(n) ?? now;
      this.unreachableSince.set(n, since);
      if (now - since >= this.gcGraceMs) drop.push(n);
      else nextGc = Math.min(nextGc, since + this.gcGraceMs);
    }
    if (drop.length) {
      this.topology.drop(drop, now);
      for (const n of drop) {
        this.unreachableSince.delete(n);
        this.pendingNews.delete(n);
        this.newsBase.delete(n);
        this.takenAt.delete(n);
      }
      this.log.debug({ peers: drop }, 'dropped unreachable peers');
    }
    for (const n of [...adj.keys()]) if (!reach.has(n)) adj.delete(n);
    this.lastReachable = reach;
    const routesChanged = this.routes.update(adj);
    if (this.topology.generation !== this.lastEmittedGeneration) {
      this.lastEmittedGeneration = this.topology.generation;
      this.emit('peersChanged');
    }
    if (routesChanged) this.emit('routesChanged');
    if (this.discovery) this.cm.setDiscovered(this.discovered());
    this.pullMissing(now, reach);
    this.clock.clearTimeout(this.gcTimer);
    this.gcTimer = undefined;
    if (nextGc < Infinity) {
      this.gcTimer = this.clock.setTimeout(() => {
        this.gcTimer = undefined;
        this.scheduleRecompute();
      }, Math.max(this.recomputeDelayMs, nextGc - now));
    }
  }

  /**
   * Peers that reachable records list as established but we hold no record of (dropped during a
   * transient, or their news missed us): ask a few neighbours for them rather than wait for the
   * periodic round.
   */
  private pullMissing(now: number, reach: Set<PeerName>): void {
    let missing: PeerName[] | undefined;
    for (const r of this.topology.records()) {
      for (const c of r.connections) {
        if (!c.established || c.name === this.name || this.topology.get(c.name)) continue;
        if (!this.mayBeAlive(c.name, r.name, reach)) continue;
        const last = this.pulledAt.get(c.name);
        if (last !== undefined && now - last < PULL_INTERVAL_MS) continue;
        this.pulledAt.set(c.name, now);
        (missing ??= []).push(c.name);
      }
    }
    if (!missing) return;
    if (this.pulledAt.size > 4 * this.topology.size() + 100) {
      for (const [n, t] of this.pulledAt) if (now - t >= PULL_INTERVAL_MS) this.pulledAt.delete(n);
    }
    for (const e of this.randomNeighbours(2)) this.sendTopology(e, { kind: TopoKind.Records, peers: [], want: missing });
  }

  /**
   * A peer we dropped as unreachable, listed as connected by `by`: alive again only when `by` is
   * reachable and the dropped record lists `by` back, so that record would be reachable as it is
   * (a healed partition). Then its memory is lifted. A peer we did not drop may always be alive.
   */
  private mayBeAlive(name: PeerName, by: PeerName, reach: Set<PeerName>): boolean {
    const d = this.topology.droppedRecord(name);
    if (!d) return true;
    if (!reach.has(by) || !d.record.connections.some((c) => c.name === by && c.established)) return false;
    this.log.debug({ peer: name, listedBy: by }, 'a peer dropped as unreachable is connected again; asking for its record');
    this.topology.forgetDropped(name);
    return true;
  }

  /** Addresses other peers report for peers we have no connection with. */
  private discovered(): Map<string, PeerName> {
    const found = new Map<string, PeerName>();
    for (const r of this.topology.records()) {
      if (r.name === this.name) continue;
      for (const c of r.connections) {
        if (c.name === this.name || this.conns.has(c.name) || !this.topology.get(c.name)) continue;
        if (this.selfAddresses.has(c.address)) continue;
        if (!found.has(c.address) || c.outbound) found.set(c.address, c.name);
      }
    }
    return found;
  }
}

function countBytes(into: Record<string, number>, kind: string, n: number): void {
  into[kind] = (into[kind] ?? 0) + n;
}

function safeOverlayStatus(h: OverlayHandle, log: Logger): OverlayStatus {
  try {
    return h.status();
  } catch (e) {
    log.error({ err: errMsg(e) }, 'overlay status threw');
    return { overlay: null, encrypted: false, reason: `status unavailable: ${errMsg(e)}` };
  }
}
