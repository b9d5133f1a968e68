// The sleeve overlay: IP packets between the kernel (a TUN device) and peers (UDP), sealed per
// connection. The packet flow (router/datapath.ts does the per-packet part):
//
//   outbound  TUN readable -> readBatch (drain; with TUN offloads the addon reads TCP super-packets of
//             up to 64 KB and splits them into MTU-sized packets with full checksums, so what follows
//             never sees one) -> per packet: IPv4 check -> dst -> forwarding table
//             (LPM prefix -> destination peer) -> next-hop path (mesh routes, precomputed) ->
//             too big? (DF: ICMP frag-needed into the TUN; no DF: fragment) -> header + packet into the
//             send ring, nonce and tx key queued -> the ring's boxes sealed in one call (router/boxes.ts:
//             the addon's SIMD secretbox) -> sendmmsg batch to the next hop's UDP address (UDP
//             GSO: a run of equal-size datagrams to one peer is one message, same datagrams on the wire).
//             No destination / no route: ICMP unreachable into the TUN.
//   inbound   UDP readable -> recvmmsg batch (drain; with UDP GRO the kernel may hand over a run of
//             datagrams from one sender as one buffer, which the addon splits back into one datagram
//             per slot) -> header -> path by receiver index -> replay check (per lane) -> the batch's
//             boxes opened in one call with their rx keys -> in order: replay update, learn the
//             peer's UDP address -> Data: dst -> forwarding
//             table -> ours: TUN write batch (with offloads the addon joins in-order TCP segments of
//             one flow into one GSO write, GRO-like); another peer's: TTL-1, re-seal for the next
//             hop (relay). Heartbeat / Probe / ProbeAck: liveness and path MTU.
//   liveness  every heartbeatMs the control plane asks the engine that reads the TUN for a heartbeat
//             round of the paths router/heartbeat.ts says are due (every 1 s while establishing, 10 s
//             once established, none while anything else went to the peer: data proves the path;
//             a peer heard is lost after 25 s of silence, not counting this router's own event-loop
//             stalls: lib/lag.ts);
//             each path's heartbeat is sealed and sent like a packet (that engine's path state,
//             keys, counter, TUN lane), and says whether the engine forwards to the peer's prefixes and
//             which of its announcements it routes. So a peer hears us only when our packets' state
//             works, and status shows an established path whose data cannot flow as such (stalled).
//   Offloads (native addon only; off on the koffi fallback and with WEAVE_SLEEVE_OFFLOAD=0) change
//   the number of syscalls and kernel trips, not the packets the engine handles nor the wire format.
//
// Threads: with the native addon, one worker thread runs the packet loops of both directions
// (sleeve-worker.ts; WEAVE_SLEEVE_THREADS=2: one per direction, as before it saved an isolate); this file is the control plane in the main thread: paths per mesh connection, control messages,
// heartbeats, PMTU probes, forwarding state. With in-memory devices (tests) or workers off, the same
// packet engine runs inline here.
//
// Per connection: keys per direction from the session key, a 64-bit counter per direction and lane
// (nonce), a replay window per lane. A password rotation re-keys a live connection (the connection's
// watchDataKey, mesh/rotation.ts): the new receive key goes into the other key phase first
// ('accept'), we seal under the new key and flip our phase when told ('use'), and the old receive key
// goes REKEY_GRACE_MS after the peer flipped ('settled'): datagrams in flight under either key open.
// Control over the mesh connection (Msg.Overlay, msgpack {v:1, o:'sleeve', t, ...}): 'hello' tells
// the peer our receiver index and UDP port; 'hear' says whether its UDP heartbeats reach us. The
// sleeve is established when heartbeats get through both ways; it fails when they stop (the mesh
// then closes the connection and redials). Established with a stall reason ("no route to its
// prefixes", "the peer has no route to our prefixes" ...) when either end's engine cannot forward to
// the other's announced prefixes.
import * as path from 'path';
import { Worker } from 'worker_threads';
import { untilAligned, type Clock, type TimerHandle } from '../lib/clock';
import { NO_LAG, creditedSilence, type LagCredit } from '../lib/lag';
import type { CryptoEngine } from '../mesh/crypto';
import { makeBoxes, resolveBoxKind, type BoxKind } from './boxes';
import { ProtocolError, UsageError, WeaveError, describeValue, errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';
import type { PeerName } from '../mesh/peer';
import { Msg, type MeshConnection } from '../mesh/types';
import { COUNTER, Datapath, FWD_NO_ROUTE, FWD_UNKNOWN, LANE_CONTROL, MAX_SLOTS, PathShared, newCounterArray, newPathCounterArray, sumCounters, sumPathCounters, type DatapathEvents, type ForwardingSpec, type PathCounters, type PathSpec, type SleeveCounters } from './datapath';
import { FrameType, HB_ROUTES, HDR, TAG, deriveKeys, encodeFrame, writeU32 } from './frame';
import { decodeMsg, encodeMsg } from '../mesh/codec';
import { formatAddr, parseCidr, tryParseAddr, tryParseHostPort } from '../lib/addr';
import { CONTROL_PORT } from '../lib/ports';
import type { PrefixTable } from './prefixes';
import { loadTunIo, type TunIo } from './native';
import { BeatState, SLEEVE_BEATS, beatDue, beatSent, silenceLimit, type BeatPolicy } from './heartbeat';
import { loadFallbackIo, type IoKind } from './fallback-io';
import { ip as hostIp, ipJson as hostIpJson, kernelChanged, sysctl as hostSysctl, type HostCtx } from '../host/ip';
import { NativeTun, type TunDevice } from './tun';
import { NativeUdp, type UdpBind } from './udp';
import type { FromWorker, ToWorker, WorkerInit } from './sleeve-worker';

export type { SleeveCounters } from './datapath';

/** the sleeve's UDP port has the TCP control port's number */
export const DEFAULT_SLEEVE_PORT = CONTROL_PORT;
export const DEFAULT_TUN_NAME = 'weave-tun';
/**
 * SleeveOptions.spinUs: -1, the workers wake through uv_poll. The native waiter (0: no spin, up to
 * 1000 µs of spin after packets) measured no better on the shared 2-core test machine (README,
 * "Sleeve latency"); it stays behind WEAVE_SLEEVE_SPIN_US for machines with cores to spare.
 */
export const DEFAULT_SPIN_US = -1;
/** IPv4 + UDP headers around every frame on the underlay. */
export const UNDERLAY_OVERHEAD = 28;
/** Bytes a sealed frame adds to a packet on the underlay: IPv4 + UDP + frame header + MAC. */
export const SLEEVE_OVERHEAD = UNDERLAY_OVERHEAD + HDR + TAG;

const CTL_VERSION = 1;
/** How long the old receive key still opens datagrams after the peer moved to the new one (reordering). */
export const REKEY_GRACE_MS = 2000;
/** Frames up to this size are control (heartbeat HDR+12+TAG, probe ack HDR+8+TAG), not data */
const SMALL_FRAME = 64;
/** PMTU sweeps while a path establishes: one every this many heartbeat periods */
const ESTABLISH_PROBE_BEATS = 5;
/**
 * Events that change forwarding (routes, announcements, a path attaching or failing) wait this long
 * for the rest of their burst: a router joining a mesh of N hears O(N) of them per second, and each
 * rebuild is O(N) and a structured clone to every worker (issue 19: 1.8 s of one router's CPU while
 * 50 formed a mesh). Far below the heartbeat periods, so no failure-detection bound moves.
 */
export const FWD_COALESCE_MS = 50;
const PROBE_MTUS = [9000, 1500, 1492, 1480, 1460, 1440, 1420, 1400, 1380, 1350, 1300, 1280, 1200, 1100, 1000, 900, 800, 700, 576];

// ---- inputs -------------------------------------------------------------------------------------

/** What the sleeve needs from the mesh: our name, next hops, and a signal when routes change. */
export interface RouteSource {
  readonly name: PeerName;
  unicastNextHop(dst: PeerName): PeerName | undefined;
  on(event: 'routesChanged', fn: () => void): unknown;
  off(event: 'routesChanged', fn: () => void): unknown;
}

/** The part of the mesh a LateRouteSource delegates to (mesh/mesh.ts Mesh fits). */
export interface RouteSourceMesh {
  unicastNextHop(dst: PeerName): PeerName | undefined;
  on(event: 'routesChanged', fn: () => void): unknown;
  off(event: 'routesChanged', fn: () => void): unknown;
}

/**
 * A RouteSource for a mesh that does not exist yet: the sleeve is built before the mesh (the mesh needs
 * it as its overlay) and subscribes in its constructor, so subscriptions are kept here and hear the
 * mesh's routesChanged once bind() hands the mesh over. Before that there are no routes.
 */
export class LateRouteSource implements RouteSource {
  private mesh: RouteSourceMesh | undefined;
  private readonly listeners = new Set<() => void>();
  private readonly forward = (): void => {
    for (const fn of [...this.listeners]) fn();
  };

  constructor(readonly name: PeerName) {}

  /** Binds the mesh (once); subscribers hear a change at once, since routes may exist already. */
  bind(mesh: RouteSourceMesh): void {
    if (this.mesh) throw new WeaveError('EINVAL', 'route source already bound to a mesh');
    this.mesh = mesh;
    mesh.on('routesChanged', this.forward);
    this.forward();
  }

  /** Stops forwarding the mesh's events (the router's shutdown). */
  unbind(): void {
    this.mesh?.off('routesChanged', this.forward);
    this.mesh = undefined;
  }

  unicastNextHop(dst: PeerName): PeerName | undefined {
    return this.mesh?.unicastNextHop(dst);
  }

  on(_event: 'routesChanged', fn: () => void): void {
    this.listeners.add(fn);
  }

  off(_event: 'routesChanged', fn: () => void): void {
    this.listeners.delete(fn);
  }

  /** How many subscribers are registered (tests, diagnostics). */
  get subscribers(): number {
    return this.listeners.size;
  }
}

export interface SleeveRouteFilter { skip(origin: PeerName): boolean; onChange(fn: () => void): () => void }

/** A route into the TUN, as host/routes.ts DesiredRoute wants it. */
export interface SleeveRoute { dst: string; dev: string }

/** Kernel state the sleeve asks for (host/ does it): TUN link up + MTU, routes of remote prefixes. */
export interface SleeveHost {
  tunUp(name: string, mtu: number): Promise<void>;
  setRoutes(routes: SleeveRoute[]): void;
}

export interface SleeveOptions {
  /** our peer name (the mesh identity) */
  name: PeerName;
  /** realClock in production (worker threads stamp receive times with Date.now()) */
  clock: Clock;
  log: Logger;
  /**
   * this process's event-loop stalls (lib/lag.ts): a path's silence and its establishment time do not
   * count them; default NO_LAG
   */
  lag?: LagCredit;
  /** seals/opens every datagram; sodium engine for speed (mesh/crypto.ts loadCrypto) */
  crypto: CryptoEngine;
  routes: RouteSource;
  prefixes: PrefixTable;
  /** the TUN device and UDP socket; the sleeve owns them from now on and closes them in close() */
  tun: TunDevice;
  udp: UdpBind;
  /** kernel state; absent in unit tests */
  host?: SleeveHost;
  /** MTU of the underlay path (the host's interface); default 1500 */
  underlayMtu?: number;
  /** MTU of the TUN device, which containers should use too; default underlayMtu - SLEEVE_OVERHEAD */
  tunMtu?: number;
  /**
   * Heartbeat cadence: every this long the engine that reads the TUN sends each peer a heartbeat through
   * the data path (datapath.ts beat()); default 1000 ms
   */
  heartbeatMs?: number;
  /** an established path whose data does not flow this long is logged and counted (dataStalls); default 3000 ms */
  stallReportMs?: number;
  /** a beat older than this does not make us hear a peer we did not hear; default 8000 ms */
  deadMs?: number;
  /** heartbeat cadence once established, when nothing else went to the peer; default 10000 ms */
  idleBeatMs?: number;
  /** a peer we hear is lost (the sleeve fails) when nothing arrived for this long (> 2 idle beats); default 25000 ms */
  idleDeadMs?: number;
  /** a new sleeve fails when not established within this; default 15000 ms */
  establishTimeoutMs?: number;
  /**
   * PMTU re-check period once established, while data goes to the peer (the current size and the
   * largest, not the whole sweep); idle paths are not probed (a sweep every 5 heartbeats before);
   * default 10000 ms
   */
  probeMs?: number;
  /** packets per read/send batch; default 64 */
  batch?: number;
  /** source address of the ICMP errors we write into the TUN (host-order u32); default: the packet's destination */
  icmpSource?: number;
  /**
   * Run the packet loops in worker threads. Default: on when tun and udp are the native devices
   * (NativeTun/NativeUdp); the in-memory fakes always run inline.
   */
  workers?: boolean;
  /**
   * Worker threads for the packet loops: 1 (default) runs both directions in one, 2 one per
   * direction (the router passes WEAVE_SLEEVE_THREADS). One saves an isolate (~11 MB RSS; README
   * "Router memory") at no cost in throughput or latency measured (bench/sleeve).
   */
  threads?: 1 | 2;
  /** which I/O implementation tun/udp use, for reports; default 'native' for NativeTun, else 'memory' */
  ioKind?: IoKind | 'memory';
  /**
   * How the packet loops seal and open (router/boxes.ts): 'native' batches in the addon, 'engine' per
   * box through `crypto`; default 'auto' (native when the addon loads and the engine is sodium); the
   * router passes WEAVE_SLEEVE_CRYPTO from its config.
   */
  boxes?: 'auto' | BoxKind;
  /**
   * Worker threads: µs a worker polls its fd without sleeping after a wait that found packets (a
   * reply or the next burst then costs no wake-up); 0 never spins; -1 wakes through uv_poll
   * callbacks instead of the addon's waiter. Default DEFAULT_SPIN_US, -1 (the router passes
   * WEAVE_SLEEVE_SPIN_US).
   */
  spinUs?: number;
}

// ---- per connection (control plane) -------------------------------------------------------------

class PeerPath {
  remoteIdx = -1;
  ctlCounter = 0;
  weHear = false;
  theyHear = false;
  established = false;
  failReported = false;
  closed = false;
  /** largest UDP payload a probe proved through (0 = unknown) */
  pathPayload = 0;
  probeRound = 0;
  probeBest = 0;
  nextProbe = 0;
  /** the kernel refused a datagram as too big: probe every heartbeat until a round settles the MTU */
  urgent = false;
  /** the last round only re-checked the current size and the largest */
  recheck = false;
  readonly beats = new BeatState();
  /** sent bytes beyond SMALL_FRAME per datagram at the last look: only data raises it (see noteData) */
  excessSeen = 0;
  tooBigSeen = 0;
  /** when data last went (or was refused as too big) to this peer: PMTU re-checks only then */
  lastData = -Infinity;
  urgentSince = 0;
  probeStartedAt = 0;
  reason = 'waiting for the peer\'s sleeve parameters';
  /** since when the established path's data has not flowed (0: it flows), and whether that was reported */
  stalledSince = 0;
  stallReported = false;
  /** key phase we seal with (flips on each re-key) */
  txPhase = 0;
  /** receive key per key phase; the peer seals with rxPhase, the other one is the old or next key */
  readonly rxKeys: [Buffer | null, Buffer | null];
  rxPhase = 0;
  /** when the old receive key goes (after a re-key) */
  dropRxAt = Infinity;
  offKey: (() => void) | undefined;
  /** the slot's per-path counters when this path took it (a reused slot keeps the old path's sums) */
  countersBase = {} as PathCounters;

  constructor(
    readonly slot: number,
    readonly localIdx: number,
    readonly conn: MeshConnection,
    readonly peer: PeerName,
    readonly cb: { established(): void; failed(reason: string): void },
    public txKey: Buffer | null,
    rxKey: Buffer | null,
    readonly startedAt: number,
  ) {
    this.rxKeys = [rxKey, null];
  }
}

/** One connection's sleeve as status shows it. */
export interface SleevePathStatus {
  /** 'sleeve' once heartbeats pass both ways, else null (reason says why) */
  overlay: string | null;
  encrypted: boolean;
  mtu?: number;
  reason?: string;
  /** established, but data does not flow: why (forwarding at either end) */
  stalled?: string;
}

/** Handle the mesh holds per connection (mesh/mesh.ts OverlayHandle). */
export interface SleeveHandle {
  onMessage(payload: Uint8Array): void;
  close(): void;
  status(): SleevePathStatus;
}

function parseRemoteIp(addr: string): number {
  // "1.2.3.4:6783" or "[::ffff:1.2.3.4]:6783"; 0 (unknown until heartbeats teach us) for anything else
  let host = tryParseHostPort(addr, 0)?.host ?? '';
  if (host.toLowerCase().startsWith('::ffff:')) host = host.slice(7);
  return tryParseAddr(host) ?? 0;
}

function sleevePortOf(params: Record<string, unknown>): number | undefined {
  const s = params?.sleeve as Record<string, unknown> | undefined;
  const p = s?.port;
  return typeof p === 'number' && Number.isInteger(p) && p > 0 && p < 65536 ? p : undefined;
}

// ---- the overlay --------------------------------------------------------------------------------

export class Sleeve {
  readonly tunMtu: number;
  readonly underlayMtu: number;
  /** 'workers' or 'inline': where the packet loops run */
  readonly mode: 'workers' | 'inline';
  /** 'native' (the addon), 'koffi' (router/fallback-io.ts, slower) or 'memory' (test fakes) */
  readonly io: IoKind | 'memory';
  /** how datagrams are sealed and opened: 'native' batches or 'engine' per box (router/boxes.ts) */
  readonly boxes: BoxKind;
  /** the TUN runs with offloads (super-packets split on read, TCP segments coalesced on write) */
  get tunOffload(): boolean {
    return !!this.tun.offloadStats;
  }
  private readonly o: SleeveOptions;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly lag: LagCredit;
  private readonly crypto: CryptoEngine;
  private readonly tun: TunDevice;
  private readonly udp: UdpBind;
  private readonly S: number;
  private readonly B: number;
  private readonly heartbeatMs: number;
  private readonly stallReportMs: number;
  private readonly deadMs: number;
  private readonly establishTimeoutMs: number;
  private readonly probeMs: number;
  private readonly beatPolicy: BeatPolicy;

  private readonly slots: Array<PeerPath | null> = [];
  private readonly byPeer = new Map<PeerName, PeerPath>();
  private idxGen = 1;

  private readonly shared = new PathShared();
  private readonly ctlCounters = newCounterArray();
  private readonly engineCounters: Float64Array[] = [];
  /** each engine's per-path counters (datapath.ts), summed per slot by paths() */
  private readonly enginePathCounters: Float64Array[] = [];
  private inline: Datapath | null = null;
  private readonly workers: Worker[] = [];
  /** the worker that reads the TUN: it sends the heartbeats */
  private txWorker: Worker | null = null;
  private workerFailure: string | null = null;

  private readonly ctlIps = new Uint32Array(1);
  private readonly ctlPorts = new Int32Array(1);
  private readonly ctlOffs = new Int32Array(1);
  private readonly ctlLens = new Int32Array(1);
  private readonly ctlErrs = new Int32Array(1);

  private timer: TimerHandle | undefined;
  private closed = false;
  private readonly onRoutesChanged = (): void => this.scheduleRecompute();
  private readonly offPrefixes: () => void;
  private lastRoutesKey = '';
  private fwdTimer: TimerHandle | undefined;
  /** what the engines' forwarding spec was built from, the last time it was sent */
  private lastFwdKey = '';

  constructor(o: SleeveOptions) {
    this.o = o;
    this.log = o.log.child({ component: 'sleeve' });
    this.clock = o.clock;
    this.lag = o.lag ?? NO_LAG;
    this.crypto = o.crypto;
    this.tun = o.tun;
    this.udp = o.udp;
    this.underlayMtu = o.underlayMtu ?? 1500;
    this.tunMtu = o.tunMtu ?? this.underlayMtu - SLEEVE_OVERHEAD;
    if (!(this.underlayMtu >= 576 && this.underlayMtu <= 65535)) throw new WeaveError('EINVAL', `underlay MTU ${this.underlayMtu} out of range`);
    if (!(this.tunMtu >= 576 && this.tunMtu <= 65535 - SLEEVE_OVERHEAD)) throw new WeaveError('EINVAL', `TUN MTU ${this.tunMtu} out of range`);
    this.heartbeatMs = o.heartbeatMs ?? 1000;
    this.stallReportMs = o.stallReportMs ?? 3000;
    this.deadMs = o.deadMs ?? 8000;
    this.establishTimeoutMs = o.establishTimeoutMs ?? 15000;
    this.probeMs = o.probeMs ?? 10000;
    this.beatPolicy = { fastMs: this.heartbeatMs, deadMs: this.deadMs, idleMs: o.idleBeatMs ?? SLEEVE_BEATS.idleMs, idleDeadMs: o.idleDeadMs ?? SLEEVE_BEATS.idleDeadMs };
    this.B = Math.min(256, Math.max(1, o.batch ?? 64));
    // one stride fits the largest TUN packet sealed, and the largest datagram we accept
    this.S = (Math.max(this.tunMtu + HDR + TAG, this.underlayMtu - UNDERLAY_OVERHEAD) + 63) & ~63;

    const native = this.tun instanceof NativeTun && this.udp instanceof NativeUdp;
    this.io = o.ioKind ?? (native ? 'native' : 'memory');
    const boxMode = o.boxes ?? 'auto';
    // the koffi fallback stands for "the addon cannot load": it seals through the engine too
    this.boxes = resolveBoxKind(boxMode, this.crypto, boxMode === 'engine' || this.io === 'koffi' ? null : loadTunIo(this.log));
    if (o.workers && !native) throw new WeaveError('EINVAL', 'sleeve worker threads need the native TUN and UDP devices');
    this.mode = (o.workers ?? native) ? 'workers' : 'inline';
    if (this.mode === 'workers') this.startWorkers();
    else this.startInline();

    this.offPrefixes = o.prefixes.onChange(() => this.scheduleRecompute());
    o.routes.on('routesChanged', this.onRoutesChanged);
    this.recompute();
    // ticks on the clock's heartbeatMs boundaries: see heartbeat.ts (idle beats ride a shared cadence)
    this.timer = this.clock.setTimeout(() => this.tick(), untilAligned(this.clock.now(), this.heartbeatMs));
    this.log.info({ port: this.udp.port, tun: this.tun.name, tunOffload: !!this.tun.offloadStats, udpGso: this.udp instanceof NativeUdp && this.udp.gso, udpGro: this.udp instanceof NativeUdp && this.udp.gro, tunMtu: this.tunMtu, underlayMtu: this.underlayMtu, engine: this.crypto.name, boxes: this.boxes, mode: this.mode, io: this.io }, 'sleeve started');
  }

  /**
   * Each connection's traffic and drops on the sleeve since its path attached (the engines' per-slot
   * counters summed over the threads, minus what the slot held when the path took it).
   */
  paths(): Array<{ peer: PeerName; lastRxAgoMs: number | null } & PathCounters> {
    const out: Array<{ peer: PeerName; lastRxAgoMs: number | null } & PathCounters> = [];
    const t = this.clock.now();
    for (const p of this.slots) {
      if (!p || p.closed) continue;
      const now = sumPathCounters(this.enginePathCounters, p.slot);
      const c = {} as PathCounters;
      for (const k of Object.keys(now) as Array<keyof PathCounters>) c[k] = now[k] - p.countersBase[k];
      // how long the peer has been silent (nothing authentic heard): a cut shows before the path is declared dead
      const rx = this.shared.lastRx[p.slot];
      out.push({ peer: p.peer, lastRxAgoMs: rx === -Infinity ? null : Math.max(0, Math.round(t - rx)), ...c });
    }
    return out;
  }

  /** Packet and drop counters summed over the threads (for metrics: weave_sleeve_*). */
  get counters(): SleeveCounters {
    return sumCounters([this.ctlCounters, ...this.engineCounters]);
  }

  private routeFilter: SleeveRouteFilter | undefined;
  private offRouteFilter: (() => void) | undefined;

  /**
   * Origins whose prefixes another overlay routes in the kernel (fastdp: `via VTEP dev weave-vx`) are
   * left out of the TUN routes; the filter's onChange re-publishes when the carrier of a peer changes.
   */
  setRouteFilter(f: SleeveRouteFilter | undefined): void {
    this.offRouteFilter?.();
    this.routeFilter = f;
    this.offRouteFilter = f?.onChange(() => this.publishRoutes(false));
    this.publishRoutes(false);
  }

  /** Brings the TUN up with its MTU (through host/); call once after construction. */
  async start(): Promise<void> {
    if (this.o.host) await this.o.host.tunUp(this.tun.name, this.tunMtu);
    this.publishRoutes(true);
  }

  /** Features.overlayParams entry peers need to reach us: put it under the key 'sleeve'. */
  overlayParams(): { port: number } {
    return { port: this.udp.port };
  }

  /** OverlayManager.attach: sets up the UDP path of one authenticated mesh connection. */
  attach(conn: MeshConnection, cb: { established(): void; failed(reason: string): void }): SleeveHandle {
    if (this.closed) throw new WeaveError('ECLOSED', 'sleeve is closed');
    let slot = this.slots.indexOf(null);
    if (slot < 0) {
      if (this.slots.length >= MAX_SLOTS) throw new WeaveError('ELIMIT', `too many sleeve connections (max ${MAX_SLOTS})`);
      slot = this.slots.length;
      this.slots.push(null);
    }
    // generation in the high half: a datagram for a closed connection whose slot was reused is refused
    this.idxGen = (this.idxGen % 0xffff) + 1;
    const idx = ((this.idxGen << 16) | slot) >>> 0;
    let txKey: Buffer | null = null;
    let rxKey: Buffer | null = null;
    if (conn.dataKey) {
      const k = deriveKeys(this.crypto, conn.dataKey, conn.outbound);
      txKey = k.tx;
      rxKey = k.rx;
    }
    const peer = conn.remote.name;
    const p = new PeerPath(slot, idx, conn, peer, cb, txKey, rxKey, this.clock.now());
    p.countersBase = sumPathCounters(this.enginePathCounters, slot);
    // the slot's earlier paths' sends are not this path's data
    p.beats.txSeen = p.countersBase.txPackets;
    p.excessSeen = p.countersBase.txBytes - SMALL_FRAME * p.countersBase.txPackets;
    p.tooBigSeen = p.countersBase.dropTooBig;
    const sh = this.shared;
    sh.ip[slot] = parseRemoteIp(conn.remoteAddr);
    sh.port[slot] = sleevePortOf(conn.remote.overlayParams) ?? DEFAULT_SLEEVE_PORT;
    sh.lastRx[slot] = -Infinity;
    sh.mtu[slot] = this.tunMtu;
    sh.fwd[slot] = FWD_UNKNOWN;
    sh.peerHb[slot] = 0;
    sh.peerVer[slot] = 0;
    sh.heard[slot] = 0;
    this.slots[slot] = p;
    const prev = this.byPeer.get(peer);
    this.byPeer.set(peer, p);
    if (prev && prev !== p) this.log.info({ peer }, 'a newer connection to the peer replaces the old sleeve path');
    if (txKey) p.offKey = conn.watchDataKey?.((step, key) => this.rekey(p, step, key));
    this.pushPath(p);
    this.sendCtl(p, { t: 'hello', idx, port: this.udp.port });
    p.nextProbe = this.clock.now();
    this.log.debug({ peer, idx, remote: `${formatAddr(sh.ip[slot])}:${sh.port[slot]}`, encrypted: txKey !== null }, 'sleeve path attached');
    this.scheduleRecompute();
    return {
      onMessage: (payload) => this.onCtl(p, payload),
      close: () => this.detach(p),
      status: () => this.pathStatus(p),
    };
  }

  /** Stops I/O, timers and workers, then closes the TUN and UDP socket. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.clock.clearTimeout(this.timer);
    this.clock.clearTimeout(this.fwdTimer);
    this.fwdTimer = undefined;
    this.o.routes.off('routesChanged', this.onRoutesChanged);
    this.offPrefixes();
    this.offRouteFilter?.();
    for (const p of this.slots) if (p) p.closed = true;
    this.tun.setReadable(null);
    this.udp.setReadable(null);
    // Workers poll the fds: they must be gone before the fds are closed (and maybe reused).
    await Promise.all(this.workers.map((w) => w.terminate().catch((e) => this.log.error({ err: errMsg(e) }, 'worker terminate failed'))));
    this.tun.close();
    this.udp.close();
  }

  /** The inner MTU usable towards the peer (what containers' TCP should see). */
  pathMtu(peer: PeerName): number | undefined {
    const p = this.byPeer.get(peer);
    return p ? this.innerMtu(p) : undefined;
  }

  // ---- packet engines -----------------------------------------------------------------------------

  private engineEvents(): DatapathEvents {
    return {
      heartbeat: (slot) => this.onHeartbeat(slot),
      probeAck: (slot, round, size) => this.onProbeAck(slot, round, size),
      addressLearned: (slot, ip, port) => this.onAddress(slot, ip, port),
      pathTooBig: (slot) => {
        const p = this.slots[slot];
        if (p && !p.urgent) {
          p.urgent = true;
          p.urgentSince = this.clock.now();
          p.nextProbe = 0;
          this.log.info({ peer: p.peer }, 'datagram too big for the path the kernel knows; probing the path MTU');
        }
      },
    };
  }

  private startInline(): void {
    const counters = newCounterArray();
    this.engineCounters.push(counters);
    const pathCounters = newPathCounterArray();
    this.enginePathCounters.push(pathCounters);
    const dp = new Datapath({
      boxes: makeBoxes(this.boxes, this.crypto, null, this.log), tun: this.tun, udp: this.udp, shared: this.shared, counters, pathCounters, events: this.engineEvents(),
      stride: this.S, batch: this.B, tunMtu: this.tunMtu, icmpSource: this.o.icmpSource ?? 0, now: () => this.clock.now(),
    });
    this.inline = dp;
    // An exception escaping a native poll callback would kill the process; an I/O error would fire on
    // every poll. Stop that direction, say so, and report the path down in status.
    const guard = (role: string, fn: () => void) => (): void => {
      try {
        fn();
      } catch (e) {
        this.tun.setReadable(null);
        this.udp.setReadable(null);
        this.workerFailure ??= `${role} data path stopped: ${errMsg(e)}`;
        this.log.error({ role, err: errMsg(e) }, 'sleeve data path stopped');
      }
    };
    this.tun.setReadable(guard('tx', () => dp.drainTun()));
    this.udp.setReadable(guard('rx', () => dp.drainUdp()));
  }

  private startWorkers(): void {
    const tun = this.tun as NativeTun;
    const udp = this.udp as NativeUdp;
    const events = this.engineEvents();
    const tunLock = new SharedArrayBuffer(8);
    new Int32Array(tunLock)[1] = -1; // sleeve-worker.ts TX_EPFD: no tx waiter yet
    const roles = (this.o.threads ?? 1) === 2 ? (['tx', 'rx'] as const) : (['both'] as const);
    for (const role of roles) {
      const counters = newCounterArray();
      this.engineCounters.push(counters);
      const pathCounters = newPathCounterArray();
      this.enginePathCounters.push(pathCounters);
      const init: WorkerInit = {
        role, tunFd: tun.fd, tunName: tun.name, tunOffload: tun.offload, udpGso: udp.gso, udpGro: udp.gro, udpFd: udp.fd, shared: this.shared.buffers, counters: counters.buffer as SharedArrayBuffer,
        pathCounters: pathCounters.buffer as SharedArrayBuffer,
        stride: this.S, batch: this.B, tunMtu: this.tunMtu, icmpSource: this.o.icmpSource ?? 0, crypto: this.crypto.name, boxes: this.boxes, tunLock,
        spinUs: this.o.spinUs ?? DEFAULT_SPIN_US,
      };
      const w = new Worker(path.join(__dirname, 'sleeve-worker.js'), { workerData: init });
      w.unref();
      w.on('message', (m: FromWorker) => {
        if (this.closed) return;
        switch (m.k) {
          case 'hb': events.heartbeat(m.slot); break;
          case 'ack': events.probeAck(m.slot, m.round, m.size); break;
          case 'addr': events.addressLearned(m.slot, m.ip, m.port); break;
          case 'big': events.pathTooBig(m.slot); break;
          case 'ready': this.log.debug({ role: m.role }, 'sleeve worker ready'); break;
          case 'err':
            if (m.fatal) this.workerFailure ??= `${m.role} data path stopped: ${m.msg}`;
            this.log.error({ role: m.role, err: m.msg }, m.fatal ? 'sleeve data path stopped' : 'sleeve worker error');
            break;
        }
      });
      w.on('error', (e) => {
        this.workerFailure = `${role} worker crashed: ${errMsg(e)}`;
        this.log.error({ role, err: errMsg(e) }, 'sleeve worker crashed; the data path is down');
      });
      w.on('exit', (code) => {
        if (!this.closed) {
          this.workerFailure ??= `${role} worker exited (${code})`;
          this.log.error({ role, code }, 'sleeve worker exited unexpectedly');
        }
      });
      this.workers.push(w);
      if (role !== 'rx') this.txWorker = w;
    }
  }

  private toEngines(m: ToWorker): void {
    if (this.inline) {
      if (m.k === 'path') this.inline.setPath(m.spec);
      else if (m.k === 'unpath') this.inline.removePath(m.slot);
      else if (m.k === 'fwd') this.inline.setForwarding(m.spec);
      return;
    }
    for (const w of this.workers) w.postMessage(m);
  }

  /** One heartbeat round of these slots through the engine that reads the TUN. */
  private beat(slots: number[]): void {
    if (this.inline) this.inline.beat(slots);
    else this.txWorker?.postMessage({ k: 'beat', slots } satisfies ToWorker);
  }

  private pushPath(p: PeerPath): void {
    const spec: PathSpec = { slot: p.slot, localIdx: p.localIdx, remoteIdx: p.remoteIdx, txKey: p.txKey, txPhase: p.txPhase, rxKey: p.rxKeys[0], rxKey1: p.rxKeys[1] };
    this.toEngines({ k: 'path', spec });
  }

  /** One step of a password rotation's re-key of this connection (see the header). */
  private rekey(p: PeerPath, step: 'accept' | 'use' | 'settled', dataKey: Uint8Array): void {
    if (p.closed || p.txKey === null) return;
    const k = deriveKeys(this.crypto, dataKey, p.conn.outbound);
    const has = (b: Buffer | null): boolean => b !== null && b.equals(k.rx);
    if (step === 'accept') {
      if (has(p.rxKeys[0]) || has(p.rxKeys[1])) return;
      p.rxKeys[1 - p.rxPhase] = k.rx;
      p.dropRxAt = Infinity;
    } else if (step === 'use') {
      if (p.txKey.equals(k.tx)) return;
      p.txKey = k.tx;
      p.txPhase = 1 - p.txPhase;
    } else {
      let ph = has(p.rxKeys[0]) ? 0 : has(p.rxKeys[1]) ? 1 : -1;
      if (ph < 0) {
        // the 'accept' was missed (e.g. the offer went out before we attached): take it now
        ph = 1 - p.rxPhase;
        p.rxKeys[ph] = k.rx;
      }
      if (ph === p.rxPhase) return;
      p.rxPhase = ph;
      p.dropRxAt = this.clock.now() + REKEY_GRACE_MS;
    }
    this.log.info({ peer: p.peer, step, txPhase: p.txPhase, rxPhase: p.rxPhase }, 'sleeve re-key');
    this.pushPath(p);
  }

  // ---- control ----------------------------------------------------------------------------------

  private sendCtl(p: PeerPath, body: Record<string, unknown>): void {
    if (p.closed) return;
    p.conn.send(Msg.Overlay, encodeMsg({ v: CTL_VERSION, o: 'sleeve', ...body }));
  }

  private onCtl(p: PeerPath, payload: Uint8Array): void {
    if (p.closed) return;
    const m = decodeMsg(payload, 'sleeve control');
    if (typeof m !== 'object' || m === null || Object.getPrototypeOf(m) !== Object.prototype) throw new ProtocolError('sleeve control: expected a map');
    const c = m as Record<string, unknown>;
    if (typeof c.o !== 'string') throw new ProtocolError('sleeve control: no overlay name');
    if (c.o !== 'sleeve') return; // another overlay's control message
    if (c.v !== CTL_VERSION) throw new ProtocolError('sleeve control: unsupported version', { v: describeValue(c.v) });
    switch (c.t) {
      case 'hello': {
        const idx = c.idx;
        const port = c.port;
        if (typeof idx !== 'number' || !Number.isInteger(idx) || idx < 0 || idx > 0xffffffff) throw new ProtocolError('sleeve hello: bad idx');
        if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) throw new ProtocolError('sleeve hello: bad port');
        p.remoteIdx = idx;
        // The port is what the peer bound; the address stays what we know until heartbeats teach us better.
        if (this.shared.lastRx[p.slot] === -Infinity) this.shared.port[p.slot] = port;
        p.reason = 'waiting for sleeve heartbeats';
        // the engine beats as soon as its path knows the peer's index
        this.pushPath(p);
        return;
      }
      case 'hear': {
        if (typeof c.on !== 'boolean') throw new ProtocolError('sleeve hear: bad flag');
        p.theyHear = c.on;
        this.evaluate(p);
        return;
      }
      default:
        throw new ProtocolError('sleeve control: unknown type', { t: describeValue(c.t) });
    }
  }

  private detach(p: PeerPath): void {
    if (p.closed) return;
    p.closed = true;
    if (this.slots[p.slot] === p) {
      this.slots[p.slot] = null;
      this.toEngines({ k: 'unpath', slot: p.slot });
    }
    if (this.byPeer.get(p.peer) === p) this.byPeer.delete(p.peer);
    p.offKey?.();
    this.log.debug({ peer: p.peer }, 'sleeve path closed');
    // at once: attach reuses the free slot, and the engines must not send a peer's packets into
    // another peer's path meanwhile
    this.recompute();
  }

  private pathStatus(p: PeerPath): SleevePathStatus {
    const s: SleevePathStatus = {
      overlay: p.established && !this.workerFailure ? 'sleeve' : null,
      encrypted: p.txKey !== null,
      mtu: this.innerMtu(p),
    };
    if (this.workerFailure) s.reason = this.workerFailure;
    else if (!p.established) s.reason = p.reason;
    else {
      const why = this.stallReason(p);
      if (why) s.stalled = why;
    }
    return s;
  }

  /**
   * Why an established path carries no data, from the forwarding state of both ends: ours as the engine
   * that beats judged it (sh.fwd), the peer's as its last heartbeat told (routes our prefixes, and which
   * announcement of ours). undefined: data flows.
   */
  private stallReason(p: PeerPath): string | undefined {
    const sh = this.shared;
    const s = p.slot;
    const fwd = sh.fwd[s];
    if (fwd === FWD_NO_ROUTE) return 'no route to its prefixes';
    if (fwd === FWD_UNKNOWN) return 'forwarding not set up yet';
    const f = sh.peerHb[s];
    if (f === 0) return undefined; // an older peer: its heartbeats say nothing about its forwarding
    if ((f & HB_ROUTES) === 0) return 'the peer has no route to our prefixes';
    const mine = this.o.prefixes.all().get(this.o.name);
    if (mine && mine.prefixes.length > 0 && sh.peerVer[s] < mine.version) {
      return sh.peerVer[s] === 0 ? 'the peer has none of our prefixes' : 'the peer routes an older announcement of our prefixes';
    }
    return undefined;
  }

  /** Logs and counts a stall that lasts stallReportMs, and its end. */
  private watchFlow(p: PeerPath, now: number): void {
    const why = p.established && !this.workerFailure ? this.stallReason(p) : undefined;
    if (why === undefined) {
      if (p.stallReported) this.log.info({ peer: p.peer, after: now - p.stalledSince }, 'sleeve data flowing again');
      p.stalledSince = 0;
      p.stallReported = false;
      return;
    }
    if (p.stalledSince === 0) p.stalledSince = now;
    if (!p.stallReported && now - p.stalledSince >= this.stallReportMs) {
      p.stallReported = true;
      this.ctlCounters[COUNTER.dataStalls]++;
      this.log.warn({ peer: p.peer, reason: why, since: new Date(p.stalledSince).toISOString() }, 'sleeve established but data not flowing');
    }
  }

  private innerMtu(p: PeerPath): number {
    if (p.pathPayload === 0) return this.tunMtu;
    return Math.min(this.tunMtu, p.pathPayload - HDR - (p.txKey ? TAG : 0));
  }

  private setPathPayload(p: PeerPath, size: number): void {
    p.pathPayload = size;
    this.shared.mtu[p.slot] = this.innerMtu(p);
  }

  private onHeartbeat(slot: number): void {
    const p = this.slots[slot];
    if (!p || p.closed || p.weHear) return;
    p.weHear = true;
    this.shared.heard[slot] = 1;
    this.sendCtl(p, { t: 'hear', on: true });
    this.evaluate(p);
  }

  private onAddress(slot: number, ip: number, port: number): void {
    const p = this.slots[slot];
    if (p) this.log.info({ peer: p.peer, address: `${formatAddr(ip)}:${port}` }, 'peer UDP address learned');
  }

  private evaluate(p: PeerPath): void {
    if (p.closed) return;
    const est = p.weHear && p.theyHear && p.remoteIdx >= 0;
    if (est === p.established) return;
    p.established = est;
    if (est) {
      p.failReported = false;
      p.reason = '';
      const sh = this.shared;
      this.log.info({ peer: p.peer, remote: `${formatAddr(sh.ip[p.slot])}:${sh.port[p.slot]}`, mtu: this.innerMtu(p), encrypted: p.txKey !== null }, 'sleeve established');
      // at once: the overlay switch moves the peer's traffic here on established(), and it must not
      // meet a table without the path (once per connection, not per burst)
      this.recompute();
      p.cb.established();
    } else {
      p.reason = !p.weHear ? 'no sleeve heartbeats from the peer' : 'the peer does not receive our sleeve heartbeats';
      this.log.warn({ peer: p.peer, reason: p.reason }, 'sleeve lost');
      this.scheduleRecompute();
      p.failReported = true;
      p.cb.failed(p.reason);
    }
  }

  private tick(): void {
    if (this.closed) return;
    const now = this.clock.now();
    let verdicts = false;
    for (const p of this.slots) {
      if (!p || p.closed) continue;
      if (now >= p.dropRxAt) {
        p.dropRxAt = Infinity;
        p.rxKeys[1 - p.rxPhase] = null;
        this.log.debug({ peer: p.peer }, 'sleeve re-key: the old receive key is gone');
        this.pushPath(p);
      }
      if (this.liveness(p, now, false)) verdicts = true;
    }
    // failures are judged once the I/O already waiting has been read (lib/lag.ts)
    if (verdicts) this.lag.afterIo(() => this.judge());
    const due: number[] = [];
    for (const p of this.slots) {
      if (!p || p.closed) continue;
      if (p.remoteIdx >= 0) {
        const pc = sumPathCounters(this.enginePathCounters, p.slot);
        this.noteData(p, pc.txPackets, pc.txBytes, pc.dropTooBig, now);
        if (beatDue(p.beats, this.beatPolicy, p.established, now, pc.txPackets)) {
          due.push(p.slot);
          beatSent(p.beats, now);
        }
        if (now >= p.nextProbe && (!p.established || p.urgent || now - p.lastData <= this.probeMs)) this.probe(p, now);
      }
      this.watchFlow(p, now);
    }
    if (due.length) this.beat(due);
    this.timer = this.clock.setTimeout(() => this.tick(), untilAligned(this.clock.now(), this.heartbeatMs));
  }

  /**
   * Whether we hear the peer, and whether the path missed its establishment deadline. Neither counts
   * this router's own stalls (lib/lag.ts): the worker stamps lastRx as datagrams arrive, but a stalled
   * main thread sent no beats meanwhile, so the peer's answers lag too. A failure is decided only when
   * `final` (after the poll phase); otherwise the answer is true: a failure is pending, judge() later.
   * Hearing again needs no deferral and no credit (a beat older than the limit proves nothing).
   */
  private liveness(p: PeerPath, now: number, final: boolean): boolean {
    let pending = false;
    // any authentic frame (data too) proves the peer -> us direction
    const rx = this.shared.lastRx[p.slot];
    const limit = silenceLimit(this.beatPolicy, p.weHear);
    const hear = now - rx <= limit || (p.weHear && creditedSilence(this.lag, now, rx, limit) <= limit);
    if (!hear && p.weHear && !final) pending = true;
    else if (hear !== p.weHear) {
      p.weHear = hear;
      this.shared.heard[p.slot] = hear ? 1 : 0;
      this.sendCtl(p, { t: 'hear', on: hear });
      this.evaluate(p);
      if (p.closed) return false;
    }
    if (!p.established && !p.failReported && creditedSilence(this.lag, now, p.startedAt, this.establishTimeoutMs) >= this.establishTimeoutMs) {
      if (!final) return true;
      p.failReported = true;
      const sh = this.shared;
      const reason = p.remoteIdx < 0 ? 'the peer sent no sleeve parameters' : `no sleeve heartbeats both ways within ${Math.round(this.establishTimeoutMs / 1000)}s (UDP ${formatAddr(sh.ip[p.slot])}:${sh.port[p.slot]})`;
      p.reason = reason;
      this.log.warn({ peer: p.peer, reason, stalledMs: Math.round(this.lag.stalledSince(p.startedAt, this.establishTimeoutMs)) }, 'sleeve could not be established');
      p.cb.failed(reason);
    }
    return pending;
  }

  /** The pending failures of a tick, judged again now that the waiting I/O was read. */
  private judge(): void {
    if (this.closed) return;
    const now = this.clock.now();
    for (const p of this.slots) if (p && !p.closed) this.liveness(p, now, true);
  }

  /** Control frames (PMTU probes) from this thread: lane 0, allocating (a few per probe period). */
  private sendFrame(p: PeerPath, type: number, body: Uint8Array): number {
    const frame = encodeFrame(p.txKey ? this.crypto : null, p.txKey, type, LANE_CONTROL, p.remoteIdx, p.ctlCounter++, body, p.txPhase);
    this.ctlIps[0] = this.shared.ip[p.slot];
    this.ctlPorts[0] = this.shared.port[p.slot];
    this.ctlOffs[0] = 0;
    this.ctlLens[0] = frame.length;
    const sent = this.udp.sendBatch(frame, this.ctlOffs, this.ctlLens, this.ctlIps, this.ctlPorts, this.ctlErrs, 1);
    if (sent === 1) {
      this.ctlCounters[COUNTER.udpOutPackets]++;
      this.ctlCounters[COUNTER.udpOutBytes] += frame.length;
    }
    return sent === 1 ? 0 : this.ctlErrs[0];
  }

  /**
   * Data went to the peer since the last look. Heartbeats (44 bytes) and probe acks (40) are below
   * SMALL_FRAME, so they lower the excess and only larger frames (packets) raise it: counting datagrams
   * instead, each end's acks of the other's re-check looked like data and kept both re-checking.
   */
  private noteData(p: PeerPath, txPackets: number, txBytes: number, tooBig: number, now: number): void {
    const excess = txBytes - SMALL_FRAME * txPackets;
    if (excess > p.excessSeen || tooBig !== p.tooBigSeen) p.lastData = now;
    p.excessSeen = excess;
    p.tooBigSeen = tooBig;
  }

  /**
   * One PMTU round: a DF probe of each candidate size (a sweep), or only of the current size and the
   * largest (a re-check, established and settled); acks of the previous round settle the MTU. A re-check
   * whose current size went unanswered starts sweeping again.
   */
  private probe(p: PeerPath, now: number): void {
    if (p.recheck && p.probeBest < p.pathPayload && !p.urgent) {
      this.log.info({ peer: p.peer, mtu: this.innerMtu(p) }, 'sleeve PMTU re-check unanswered at the current size; probing all sizes');
      p.urgent = true;
      p.urgentSince = now;
    }
    if (p.probeRound > 0 && p.probeBest > 0) {
      if (p.probeBest !== p.pathPayload) {
        this.log.info({ peer: p.peer, from: p.pathPayload, to: p.probeBest, mtu: p.probeBest - HDR - (p.txKey ? TAG : 0) }, 'sleeve path MTU changed');
        this.setPathPayload(p, p.probeBest);
      }
      // a round that started after the kernel's complaint has now settled the MTU
      if (p.urgent && p.probeStartedAt >= p.urgentSince) p.urgent = false;
    }
    p.probeStartedAt = now;
    p.probeRound = (p.probeRound % 0x7fffffff) + 1;
    p.probeBest = 0;
    const max = this.underlayMtu - UNDERLAY_OVERHEAD;
    const tag = p.txKey ? TAG : 0;
    p.recheck = p.established && !p.urgent && p.pathPayload > 0;
    const sizes = p.recheck
      ? (p.pathPayload < max ? [max, p.pathPayload] : [max])
      : [max, ...PROBE_MTUS.map((m) => m - UNDERLAY_OVERHEAD).filter((s) => s < max)];
    for (const size of sizes) {
      const body = Buffer.alloc(size - HDR - tag);
      writeU32(body, 0, p.probeRound);
      writeU32(body, 4, size);
      this.sendFrame(p, FrameType.Probe, body);
    }
    // a sweep is up to 19 full-size datagrams: while establishing one every ESTABLISH_PROBE_BEATS beats
    // (a start of N routers sweeps N-1 paths each at once), every beat only after EMSGSIZE
    p.nextProbe = now + (p.urgent ? this.heartbeatMs : p.established ? this.probeMs : ESTABLISH_PROBE_BEATS * this.heartbeatMs);
  }

  private onProbeAck(slot: number, round: number, size: number): void {
    const p = this.slots[slot];
    if (!p || p.closed || round !== p.probeRound || size > this.underlayMtu - UNDERLAY_OVERHEAD) return;
    if (size > p.probeBest) p.probeBest = size;
    if (size > p.pathPayload) {
      // Growing is safe at once; shrinking waits for the round to finish (probeBest).
      if (p.pathPayload !== 0) this.log.info({ peer: p.peer, from: p.pathPayload, to: size }, 'sleeve path MTU grew');
      this.setPathPayload(p, size);
    }
  }

  // ---- forwarding state -------------------------------------------------------------------------

  /** One recompute for a burst of forwarding events, FWD_COALESCE_MS after its first. */
  private scheduleRecompute(): void {
    if (this.closed || this.fwdTimer !== undefined) return;
    this.fwdTimer = this.clock.setTimeout(() => {
      this.fwdTimer = undefined;
      this.recompute();
    }, FWD_COALESCE_MS);
  }

  /**
   * Rebuilds prefix -> peer and peer -> next-hop path after announcements, routes or sleeves change,
   * and sends it to the engines unless it is what they have: most events of a forming mesh change
   * nothing here (a route to a peer whose path is not up yet, a connection on another overlay).
   */
  private recompute(): void {
    this.clock.clearTimeout(this.fwdTimer);
    this.fwdTimer = undefined;
    if (this.closed) return;
    const all = this.o.prefixes.all();
    const names: PeerName[] = [];
    const versions: number[] = [];
    const ids = new Map<PeerName, number>();
    const keyParts: string[] = [];
    for (const [origin, e] of all) {
      ids.set(origin, names.length);
      names.push(origin);
      versions.push(e.version);
      keyParts.push(origin, String(e.version), e.prefixes.join(' '));
    }
    const next = names.map((n) => {
      if (n === this.o.name) return -1;
      const hop = this.o.routes.unicastNextHop(n);
      const p = hop === undefined ? undefined : this.byPeer.get(hop);
      return p && p.established && !p.closed ? p.slot : -1;
    });
    // which announcement each path's peer has here: the beating engine judges and reports forwarding per path
    const slotPeer = this.slots.map((p) => (p && !p.closed ? ids.get(p.peer) ?? -1 : -1));
    keyParts.push(next.join(','), slotPeer.join(','));
    const key = keyParts.join('|');
    // the kernel routes come from the same announcements: unchanged too (the route filter publishes its own changes)
    if (key === this.lastFwdKey) return;
    this.lastFwdKey = key;
    const entries: ForwardingSpec['entries'] = [];
    names.forEach((origin, id) => {
      for (const s of all.get(origin)!.prefixes) entries.push({ prefix: parseCidr(s, { allowBare: true, allowHostBits: true, what: 'prefix' }), peer: id });
    });
    // Equal prefixes from two peers: the last entry wins; sort by origin so every router picks the same.
    const rank = new Map([...names].sort().map((n, r) => [n, r]));
    entries.sort((a, b) => rank.get(names[a.peer])! - rank.get(names[b.peer])!);
    this.toEngines({ k: 'fwd', spec: { entries, next, self: names.indexOf(this.o.name), versions, slotPeer } });
    this.publishRoutes(false);
  }

  private publishRoutes(force: boolean): void {
    if (!this.o.host) return;
    const dsts = new Set<string>();
    const mine = new Set(this.o.prefixes.local());
    for (const [origin, e] of this.o.prefixes.all()) {
      if (origin === this.o.name || this.routeFilter?.skip(origin)) continue;
      for (const s of e.prefixes) if (!mine.has(s)) dsts.add(s);
    }
    const list = [...dsts].sort();
    const key = list.join(',');
    if (!force && key === this.lastRoutesKey) return;
    this.lastRoutesKey = key;
    try {
      this.o.host.setRoutes(list.map((dst) => ({ dst, dev: this.tun.name })));
    } catch (e) {
      this.log.error({ err: errMsg(e), routes: list.length }, 'cannot set sleeve routes');
    }
  }
}

// ---- wiring helpers -----------------------------------------------------------------------------

/** host/ adapters: `ip link set` for the TUN, RouteReconciler (owner 'sleeve') for the routes. */
export function kernelSleeveHost(
  ipFn: (args: string[]) => Promise<unknown>,
  reconciler: { setDesired(owner: string, routes: Array<{ dst: string; dev: string }>): void },
  sysctlFn?: (key: string, value: string) => Promise<unknown>,
  log?: Logger,
): SleeveHost {
  return {
    async tunUp(name, mtu) {
      // The sleeve carries IPv4 only: without this the kernel sends IPv6 link-local chatter into the TUN.
      if (sysctlFn) {
        await sysctlFn(`net.ipv6.conf.${name}.disable_ipv6`, '1').catch((e) => log?.debug({ err: errMsg(e) }, 'cannot disable IPv6 on the TUN'));
      }
      await ipFn(['link', 'set', 'dev', name, 'mtu', String(mtu), 'up']);
    },
    setRoutes(routes) {
      reconciler.setDesired('sleeve', routes);
    },
  };
}

/**
 * The underlay MTU: that of the device holding the default route, else the largest MTU among the up,
 * non-loopback links; 1500 when neither is known. Peers' paths may be smaller: PMTU probes find that.
 */
export async function detectUnderlayMtu(ipJson: (args: string[]) => Promise<unknown>, log: Logger): Promise<number> {
  try {
    const links = (await ipJson(['link', 'show'])) as Array<{ ifname?: string; mtu?: number; flags?: string[]; link_type?: string }>;
    const routes = (await ipJson(['route', 'show', 'default'])) as Array<{ dev?: string }>;
    const dev = routes.find((r) => r.dev)?.dev;
    const byDev = dev ? links.find((l) => l.ifname === dev) : undefined;
    if (byDev?.mtu) return byDev.mtu;
    const up = links.filter((l) => l.link_type !== 'loopback' && l.flags?.includes('UP') && typeof l.mtu === 'number' && !l.ifname?.startsWith('weave'));
    const best = Math.max(0, ...up.map((l) => l.mtu as number));
    if (best >= 576) return best;
  } catch (e) {
    log.warn({ err: errMsg(e) }, 'cannot read the underlay MTU; assuming 1500');
  }
  return 1500;
}

export interface CreateSleeveOptions extends Omit<SleeveOptions, 'tun' | 'udp' | 'host' | 'underlayMtu'> {
  /** namespace the router's kernel state lives in (undefined: this process's) */
  ctx?: HostCtx;
  /** host/routes.ts RouteReconciler (routes of remote prefixes into the TUN, owner 'sleeve') */
  reconciler: { setDesired(owner: string, routes: Array<{ dst: string; dev: string }>): void };
  /** UDP port, default DEFAULT_SLEEVE_PORT (the TCP control port's number) */
  port?: number;
  /** UDP bind address, default 0.0.0.0 */
  bindIp?: string;
  /** default weave-tun */
  tunName?: string;
  /** default: detected (detectUnderlayMtu) */
  underlayMtu?: number;
  /** the addon (tests inject); default loadTunIo(log), else the koffi fallback */
  io?: TunIo | null;
  /**
   * 'auto' (default): the addon, else the koffi fallback with a warn line; 'native': the addon or
   * ENOADDON; 'fallback': koffi even when the addon loads (tests, bench). Default 'auto' (the router passes its config: WEAVE_SLEEVE_IO).
   */
  ioMode?: 'auto' | 'native' | 'fallback';
  /**
   * TUN offloads (TSO/checksum: super-packets split on read, TCP segments coalesced on write), UDP
   * GSO on send and GRO on receive; native addon only. Default on (the router passes its config: WEAVE_SLEEVE_OFFLOAD).
   */
  tunOffload?: boolean;
}

/** The sleeve's I/O: the addon when it loads, else (mode 'auto') the koffi fallback. */
export function selectSleeveIo(log: Logger, mode: 'auto' | 'native' | 'fallback', loadNative: () => TunIo | null = () => loadTunIo(log), loadFallback: () => TunIo = () => loadFallbackIo(log)): { io: TunIo; kind: IoKind } {
  if (mode !== 'fallback') {
    const io = loadNative();
    if (io) return { io, kind: 'native' };
    if (mode === 'native') throw new WeaveError('ENOADDON', 'the sleeve needs the native data-path addon (native/; build it with `node scripts/build-native.js`)');
  }
  let io: TunIo;
  try {
    io = loadFallback();
  } catch (e) {
    // Node alone cannot open a TUN (no ioctl): without addon and koffi there is no data path.
    throw new WeaveError('ENOADDON', `neither the native data-path addon nor the koffi fallback loaded: ${errMsg(e)}`, {}, { cause: e });
  }
  log.warn({ io: 'koffi', forced: mode === 'fallback' }, 'native data-path addon not loaded; using the koffi fallback (slower)');
  return { io, kind: 'koffi' };
}

/** WEAVE_SLEEVE_IO (read once, in api/config.ts) */
export function ioModeFromEnv(v: string | undefined): 'auto' | 'native' | 'fallback' {
  if (v === undefined || v === '' || v === 'auto') return 'auto';
  if (v === 'native' || v === 'fallback') return v;
  throw new UsageError(`WEAVE_SLEEVE_IO must be auto, native or fallback, not ${JSON.stringify(v)}`);
}

/** WEAVE_SLEEVE_SPIN_US (read once, in api/config.ts): -1 or 0-1000; default DEFAULT_SPIN_US */
export function spinFromEnv(v: string | undefined): number {
  if (v === undefined || v === '') return DEFAULT_SPIN_US;
  const n = Number(v);
  if (Number.isInteger(n) && n >= -1 && n <= 1000) return n;
  throw new UsageError(`WEAVE_SLEEVE_SPIN_US must be an integer from -1 to 1000, not ${JSON.stringify(v)}`);
}

/** WEAVE_SLEEVE_THREADS (read once, in api/config.ts): the sleeve's packet worker threads, 1 or 2 */
export function threadsFromEnv(v: string | undefined): 1 | 2 {
  if (v === undefined || v === '' || v === '1') return 1;
  if (v === '2') return 2;
  throw new UsageError(`WEAVE_SLEEVE_THREADS must be 1 or 2, not ${JSON.stringify(v)}`);
}

/** WEAVE_SLEEVE_OFFLOAD (read once, in api/config.ts) */
export function offloadFromEnv(v: string | undefined): boolean {
  if (v === undefined || v === '' || v === '1') return true;
  if (v === '0') return false;
  throw new UsageError(`WEAVE_SLEEVE_OFFLOAD must be 0 or 1, not ${JSON.stringify(v)}`);
}

/**
 * Opens the TUN and the UDP socket, builds the Sleeve and brings the TUN up. Without the native addon
 * the koffi fallback does the I/O (inline, slower); ENOADDON when neither loads.
 */
export async function createSleeve(o: CreateSleeveOptions): Promise<Sleeve> {
  let io: TunIo;
  let ioKind: IoKind = 'native';
  if (o.io === null) throw new WeaveError('ENOADDON', 'the sleeve needs the native data-path addon (native/; build it with `node scripts/build-native.js`)');
  if (o.io !== undefined) io = o.io;
  else ({ io, kind: ioKind } = selectSleeveIo(o.log, o.ioMode ?? 'auto'));
  const ctx = o.ctx ?? {};
  const underlayMtu = o.underlayMtu ?? (await detectUnderlayMtu((args) => hostIpJson(ctx, args), o.log));
  const bind = tryParseAddr(o.bindIp ?? '0.0.0.0');
  if (bind === undefined) throw new WeaveError('EINVAL', `bad sleeve bind address ${o.bindIp}`);
  const offload = ioKind === 'native' && !!io.readBatchVnet && (o.tunOffload ?? true);
  const tun = new NativeTun(io, o.tunName ?? DEFAULT_TUN_NAME, undefined, offload);
  kernelChanged();
  let udp: NativeUdp | undefined;
  try {
    udp = new NativeUdp(io, bind, o.port ?? DEFAULT_SLEEVE_PORT);
    udp.gso = offload;
    // GRO is an optimisation: when the kernel refuses it, "sleeve started" logs udpGro: false
    if (offload) udp.enableGro();
  } catch (e) {
    udp?.close();
    tun.close();
    throw e;
  }
  const sleeve = new Sleeve({
    ...o,
    tun,
    udp,
    underlayMtu,
    ioKind,
    // The worker threads load the addon themselves; with the fallback the loops run inline.
    workers: o.workers ?? (ioKind === 'native' ? undefined : false),
    host: kernelSleeveHost((args) => hostIp(ctx, args), o.reconciler, (k, v) => hostSysctl(ctx, k, v), o.log),
  });
  try {
    await sleeve.start();
  } catch (e) {
    await sleeve.close();
    throw e;
  }
  return sleeve;
}
