// The sleeve's packet engine: the per-packet half of router/sleeve.ts (read the flow there). One
// class serves these placements: inline in the main thread (tests with channel fakes, or when worker
// threads are off), in one worker thread that runs both directions (router/sleeve-worker.ts, the
// default), or in a worker per direction (WEAVE_SLEEVE_THREADS=2): the 'tx' worker drains the TUN
// and seals, the 'rx' worker drains the UDP socket, opens and delivers or relays.
//
// Each sender owns a counter lane per connection (0 control frames from the main thread, 1 the TUN
// path and the heartbeats, 2 relays and probe acks), carried in the header and the nonce, so the
// threads never share a counter and the receiver keeps one replay window per lane. State the control plane owns (paths,
// keys, forwarding) arrives through methods (inline) or messages (workers); hot per-path values that
// change underneath the packet loop (learned address, last receive time, path MTU) sit in shared
// typed arrays (PathShared) that any thread reads without a message.
//
// Sealing and opening go a batch at a time (router/boxes.ts: one native call per batch, or the engine
// per box): seal() copies the packet behind its header and queues its nonce and key, and flushSend
// seals the queue right before sendmmsg; drainUdp admits a received batch (header, connection, replay
// check), opens every sealed one in one call, then accepts them in order (replay window update,
// delivery or relay).
//
// The engine always handles MTU-sized IPv4 packets: with TUN offloads the device (router/tun.ts,
// native/tunio.c) splits TSO super-packets before readBatch returns and coalesces TCP segments inside
// writeBatch, so PMTU (frag-needed / fragmenting against the path MTU) works per segment as before.
import { BoxJobs, type BoxBatch } from './boxes';
import { FrameHeader, FrameType, HB_BODY, HDR, LANES, TAG, ViewCache, heartbeatFlags, heartbeatVersion, parseHeader, readU32, writeHeader, writeHeartbeat, writeU32 } from './frame';
import { ForwardingTable, NO_PEER } from './forwarding';
import type { Cidr } from '../lib/addr';
import { UNREACH_FRAG_NEEDED, UNREACH_HOST, decrementTtl, fragment, ipv4DontFragment, ipv4Dst, ipv4HeaderLen, writeUnreachable } from './icmp';
import { ReplayVerdict, ReplayWindow } from './replay';
import { TUN_CARRY_BAD, TUN_CARRY_SUPER } from './native';
import type { TunDevice } from './tun';
import { EMSGSIZE, type UdpBind } from './udp';

export const MAX_SLOTS = 4096;
export const LANE_CONTROL = 0;
export const LANE_TX = 1;
export const LANE_RELAY = 2;
const MAX_FRAGS = 48;
const ICMP_STRIDE = 128;

// ---- counters: one Float64Array per thread (shared memory), summed by the control plane -------

export const COUNTER_NAMES = [
  'tunInPackets', 'tunInBytes', 'tunOutPackets', 'tunOutBytes',
  'udpInPackets', 'udpInBytes', 'udpOutPackets', 'udpOutBytes',
  'relayedPackets', 'icmpSent', 'fragmentsSent',
  'dropReplay', 'dropBadMac', 'dropMalformed', 'dropNotIpv4', 'dropUnknownConn', 'dropUnknownDest',
  'dropNoRoute', 'dropTooBig', 'dropTtl', 'dropLoop', 'dropSendError', 'dropTunFull',
  // TUN offloads: super-packets split on read, packets with a malformed virtio header / GSO packet
  'tunSuperPackets', 'dropBadVnet',
  // heartbeats the engine sent (data-path liveness); connections seen established with data not flowing
  'heartbeatsSent', 'dataStalls',
] as const;
export type CounterName = (typeof COUNTER_NAMES)[number];
export type SleeveCounters = Record<CounterName, number>;
/** index of each counter in a thread's counter array */
export const COUNTER = Object.fromEntries(COUNTER_NAMES.map((n, i) => [n, i])) as Record<CounterName, number>;
const C = COUNTER;

export function newCounterArray(): Float64Array {
  return new Float64Array(new SharedArrayBuffer(8 * COUNTER_NAMES.length));
}

export function sumCounters(arrays: Float64Array[]): SleeveCounters {
  const out = {} as SleeveCounters;
  COUNTER_NAMES.forEach((n, i) => {
    let v = 0;
    for (const a of arrays) v += a[i];
    out[n] = v;
  });
  return out;
}

// ---- per-path counters: one Float64Array per thread (shared memory), PATH_COUNTERS per slot -----
// Traffic and drops of one connection (weave report's sleeve.paths, the /ui page). Each thread adds
// to its own array only (the tx worker seals TUN packets, the rx worker relays and acks, so both send
// on a path); the control plane sums the threads' values for a slot and subtracts what the slot held
// when its connection attached (slots are reused).

export const PATH_COUNTER_NAMES = [
  'txPackets', 'txBytes', 'rxPackets', 'rxBytes',
  // drops on this path: replayed or duplicate frames, frames failing authentication (bad MAC or a key
  // phase without a key), packets with no usable next hop (relayed packets that arrived here, or
  // packets for this peer before its path knows the receiver index), too big for the path with DF
  'dropReplay', 'dropAuth', 'dropNoRoute', 'dropTooBig',
] as const;
export type PathCounterName = (typeof PATH_COUNTER_NAMES)[number];
export type PathCounters = Record<PathCounterName, number>;
const PCN = PATH_COUNTER_NAMES.length;
const PC = Object.fromEntries(PATH_COUNTER_NAMES.map((n, i) => [n, i])) as Record<PathCounterName, number>;

export function newPathCounterArray(): Float64Array {
  return new Float64Array(new SharedArrayBuffer(8 * PCN * MAX_SLOTS));
}

/** One slot's counters summed over the threads' arrays. */
export function sumPathCounters(arrays: readonly Float64Array[], slot: number): PathCounters {
  const out = {} as PathCounters;
  PATH_COUNTER_NAMES.forEach((n, i) => {
    let v = 0;
    for (const a of arrays) v += a[slot * PCN + i];
    out[n] = v;
  });
  return out;
}

// ---- per-path values shared between threads -----------------------------------------------------

export interface PathSharedBuffers {
  lastRx: SharedArrayBuffer; ip: SharedArrayBuffer; port: SharedArrayBuffer; mtu: SharedArrayBuffer;
  fwd: SharedArrayBuffer; peerHb: SharedArrayBuffer; peerVer: SharedArrayBuffer; heard: SharedArrayBuffer;
}

/** sh.fwd values: the beating engine's verdict on forwarding to a path's peer's prefixes. */
export const FWD_UNKNOWN = 0;
/** every prefix the peer announces has a live next-hop path (or it announces none) */
export const FWD_OK = 1;
/** the peer announces prefixes and the engine's forwarding table has no live next-hop path for them */
export const FWD_NO_ROUTE = 2;

export class PathShared {
  /** ms timestamp of the last authentic frame from the peer (written by the rx side) */
  readonly lastRx: Float64Array;
  /** the peer's UDP address (learned by the rx side from authentic frames) */
  readonly ip: Uint32Array;
  readonly port: Int32Array;
  /** largest inner packet the path carries (written by the control plane after PMTU probes) */
  readonly mtu: Int32Array;
  /** FWD_*: whether the engine that sends heartbeats forwards to the path's peer's prefixes (written by it) */
  readonly fwd: Int32Array;
  /** flags of the peer's last heartbeat (frame.ts HB_*; 0: none yet, or an older peer's) (rx side) */
  readonly peerHb: Int32Array;
  /** the version of our announcement that the peer's engines route, from its last heartbeat (rx side) */
  readonly peerVer: Float64Array;
  /**
   * 1 while the control plane hears the peer (written by it). The rx side tells the control plane of a
   * heartbeat only while this is 0: once heard, the control plane's own tick reads lastRx, so an idle
   * established path's beats wake no other thread.
   */
  readonly heard: Int32Array;
  constructor(readonly buffers: PathSharedBuffers = {
    lastRx: new SharedArrayBuffer(8 * MAX_SLOTS),
    ip: new SharedArrayBuffer(4 * MAX_SLOTS),
    port: new SharedArrayBuffer(4 * MAX_SLOTS),
    mtu: new SharedArrayBuffer(4 * MAX_SLOTS),
    fwd: new SharedArrayBuffer(4 * MAX_SLOTS),
    peerHb: new SharedArrayBuffer(4 * MAX_SLOTS),
    peerVer: new SharedArrayBuffer(8 * MAX_SLOTS),
    heard: new SharedArrayBuffer(4 * MAX_SLOTS),
  }) {
    this.lastRx = new Float64Array(buffers.lastRx);
    this.ip = new Uint32Array(buffers.ip);
    this.port = new Int32Array(buffers.port);
    this.mtu = new Int32Array(buffers.mtu);
    this.fwd = new Int32Array(buffers.fwd);
    this.peerHb = new Int32Array(buffers.peerHb);
    this.peerVer = new Float64Array(buffers.peerVer);
    this.heard = new Int32Array(buffers.heard);
  }
}

// ---- what the control plane tells the engine ----------------------------------------------------

export interface PathSpec {
  slot: number;
  localIdx: number;
  remoteIdx: number;
  txKey: Uint8Array | null;
  /** key phase txKey seals with (frame header byte 3); default 0 */
  txPhase?: number;
  /** opens frames of key phase 0 (null: the path is unencrypted, or no phase-0 key during a re-key) */
  rxKey: Uint8Array | null;
  /** opens frames of key phase 1 (password rotation: the new or the old key during the overlap) */
  rxKey1?: Uint8Array | null;
}

export interface ForwardingSpec {
  entries: Array<{ prefix: Cidr; peer: number }>;
  /** per peer id: slot of the next hop's established path, or -1 */
  next: number[];
  /** our own peer id (packets for it go to the TUN), or -1 */
  self: number;
  /** per peer id: the version of its announcement these entries come from (heartbeats carry it back) */
  versions?: number[];
  /** per path slot: the peer id of the path's peer, -1 (or absent) when we know no announcement of it */
  slotPeer?: number[];
}

/** What the engine reports to the control plane (rare events only: never per data packet). */
export interface DatapathEvents {
  heartbeat(slot: number): void;
  probeAck(slot: number, round: number, size: number): void;
  addressLearned(slot: number, ip: number, port: number): void;
  /** the kernel refused a datagram as too big for the path it knows: re-probe */
  pathTooBig(slot: number): void;
}

class EnginePath {
  readonly replay: ReplayWindow[] = [];
  /** what the last heartbeat to the peer said (a change beats at once) */
  beatFwd = FWD_UNKNOWN;
  beatVer = -1;
  /** encrypted: either phase has a key (a frame of a phase without one fails as a bad MAC) */
  readonly sealed: boolean;
  constructor(
    readonly slot: number,
    readonly localIdx: number,
    readonly remoteIdx: number,
    readonly txKey: Buffer | null,
    readonly txPhase: number,
    readonly rxKey0: Buffer | null,
    readonly rxKey1: Buffer | null,
    /** this thread's frame counter towards the peer (its lanes' nonces) */
    public counter: number,
  ) {
    this.sealed = rxKey0 !== null || rxKey1 !== null;
    for (let l = 0; l < LANES; l++) this.replay.push(new ReplayWindow());
  }
}

class SendRing {
  readonly buf: Buffer;
  readonly offs: Int32Array;
  readonly lens: Int32Array;
  readonly ips: Uint32Array;
  readonly ports: Int32Array;
  readonly errs: Int32Array;
  readonly slots: Int32Array;
  // the boxes still to seal before the ring goes out
  readonly toSeal: BoxJobs;
  n = 0;
  constructor(readonly stride: number, readonly cap: number) {
    this.buf = Buffer.alloc(stride * cap);
    this.offs = new Int32Array(cap);
    for (let i = 0; i < cap; i++) this.offs[i] = i * stride;
    this.lens = new Int32Array(cap);
    this.ips = new Uint32Array(cap);
    this.ports = new Int32Array(cap);
    this.errs = new Int32Array(cap);
    this.slots = new Int32Array(cap);
    this.toSeal = new BoxJobs(cap);
  }
}

class TunRing {
  readonly offs: Int32Array;
  readonly lens: Int32Array;
  n = 0;
  constructor(readonly buf: Buffer, readonly cap: number) {
    this.offs = new Int32Array(cap);
    this.lens = new Int32Array(cap);
  }
}

export interface DatapathOptions {
  boxes: BoxBatch;
  tun: TunDevice;
  udp: UdpBind;
  shared: PathShared;
  counters: Float64Array;
  /** this thread's per-path counters (newPathCounterArray); default: a private array nobody reads */
  pathCounters?: Float64Array;
  events: DatapathEvents;
  /** slot stride: fits the largest TUN packet sealed and the largest datagram accepted */
  stride: number;
  batch: number;
  tunMtu: number;
  icmpSource: number; // 0: the packet's destination
  now: () => number;
  /**
   * This engine sends the heartbeats (on the TUN lane, with the paths' keys and counters, so they prove
   * the state the packets use) and judges forwarding to each path's peer (sh.fwd). Default true; the
   * rx worker passes false (the tx worker beats).
   */
  heartbeats?: boolean;
}

export class Datapath {
  private readonly boxes: BoxBatch;
  private readonly tun: TunDevice;
  private readonly udp: UdpBind;
  private readonly sh: PathShared;
  private readonly c: Float64Array;
  /** per-path counters: slot * PCN + PC.name */
  private readonly pc: Float64Array;
  private readonly ev: DatapathEvents;
  private readonly S: number;
  private readonly B: number;
  private readonly icmpSource: number;
  private readonly now: () => number;
  private readonly heartbeats: boolean;

  private readonly paths: Array<EnginePath | null> = new Array(MAX_SLOTS).fill(null);
  private fwd = new ForwardingTable();
  private next: Int32Array = new Int32Array(0);
  private selfId = NO_PEER;
  // per peer id: its announcement's version and how many prefixes it has; per slot: the path's peer id
  private versions: Float64Array = new Float64Array(0);
  private prefixCount: Int32Array = new Int32Array(0);
  private slotPeer: Int32Array = new Int32Array(0);
  /** highest slot that ever held a path (the beat loop's bound) */
  private maxSlot = -1;
  private readonly hbBody = Buffer.alloc(HB_BODY);
  /** the lane drainTun seals on (the calling thread's: lanes keep threads' counters apart) */
  private tunLane = LANE_TX;

  // outbound
  private readonly txIn: Buffer;
  private readonly txInLens: Int32Array;
  private readonly txInView: ViewCache;
  private readonly txOut: SendRing;
  private readonly fragBuf: Buffer;
  private readonly fragLens: Int32Array;
  private readonly fragView: ViewCache;
  private readonly icmpBuf: Buffer;
  private readonly icmpView: ViewCache;
  private readonly icmpTun: TunRing;
  private icmpSlot = 0;
  // inbound
  private readonly rxIn: Buffer;
  private readonly rxLens: Int32Array;
  private readonly rxIps: Uint32Array;
  private readonly rxPorts: Int32Array;
  private readonly rxPlain: Buffer;
  private readonly rxPlainView: ViewCache;
  // per received datagram between admit and accept: its slot (-1: dropped), header fields, plain
  // length and index in the open batch (-1: not sealed)
  private readonly rxSlot: Int32Array;
  private readonly rxType: Uint8Array;
  private readonly rxLane: Uint8Array;
  private readonly rxCounter: Float64Array;
  private readonly rxPlen: Int32Array;
  private readonly rxOpenIdx: Int32Array;
  // the open batch
  private readonly toOpen: BoxJobs;
  private readonly rxTun: TunRing;
  private readonly relayOut: SendRing;
  private readonly ackBuf = Buffer.alloc(8);

  private readonly hdr = new FrameHeader();

  constructor(o: DatapathOptions) {
    this.boxes = o.boxes;
    this.tun = o.tun;
    this.udp = o.udp;
    this.sh = o.shared;
    this.c = o.counters;
    this.pc = o.pathCounters ?? new Float64Array(PCN * MAX_SLOTS);
    this.ev = o.events;
    this.S = o.stride;
    this.B = o.batch;
    this.icmpSource = o.icmpSource;
    this.now = o.now;
    this.heartbeats = o.heartbeats ?? true;
    const S = this.S;
    const B = this.B;
    this.txIn = Buffer.alloc(S * B);
    this.txInLens = new Int32Array(B);
    this.txInView = new ViewCache(this.txIn, S, B, 0);
    this.txOut = new SendRing(S, 256);
    this.fragBuf = Buffer.alloc(S * MAX_FRAGS);
    this.fragLens = new Int32Array(MAX_FRAGS);
    this.fragView = new ViewCache(this.fragBuf, S, MAX_FRAGS, 0);
    this.icmpBuf = Buffer.alloc(ICMP_STRIDE * B);
    this.icmpView = new ViewCache(this.icmpBuf, ICMP_STRIDE, B, 0);
    this.icmpTun = new TunRing(this.icmpBuf, B);
    this.rxIn = Buffer.alloc(S * B);
    this.rxLens = new Int32Array(B);
    this.rxIps = new Uint32Array(B);
    this.rxPorts = new Int32Array(B);
    this.rxPlain = Buffer.alloc(S * B);
    this.rxPlainView = new ViewCache(this.rxPlain, S, B, 0);
    this.rxTun = new TunRing(this.rxPlain, B);
    this.relayOut = new SendRing(S, B);
    this.rxSlot = new Int32Array(B);
    this.rxType = new Uint8Array(B);
    this.rxLane = new Uint8Array(B);
    this.rxCounter = new Float64Array(B);
    this.rxPlen = new Int32Array(B);
    this.rxOpenIdx = new Int32Array(B);
    this.toOpen = new BoxJobs(B);
  }

  // ---- state from the control plane --------------------------------------------------------------

  /** Adds or updates a path. An update with the same localIdx keeps counters and replay windows. */
  setPath(p: PathSpec): void {
    const cur = this.paths[p.slot];
    const txKey = p.txKey ? Buffer.from(p.txKey) : null;
    const rxKey0 = p.rxKey ? Buffer.from(p.rxKey) : null;
    const rxKey1 = p.rxKey1 ? Buffer.from(p.rxKey1) : null;
    const same = cur !== null && cur.localIdx === p.localIdx;
    const np = new EnginePath(p.slot, p.localIdx, p.remoteIdx, txKey, p.txPhase ?? 0, rxKey0, rxKey1, same ? cur.counter : 0);
    if (same) for (let l = 0; l < LANES; l++) np.replay[l] = cur.replay[l];
    this.paths[p.slot] = np;
    if (p.slot > this.maxSlot) this.maxSlot = p.slot;
    if (!this.heartbeats) return;
    // a path that just learned the peer's receiver index beats at once (the peer hears us sooner);
    // its slot may be another path's next hop too
    this.judgeAll(np.remoteIdx >= 0 && (!same || cur.remoteIdx !== np.remoteIdx) ? np : null);
  }

  removePath(slot: number): void {
    this.paths[slot] = null;
    if (this.heartbeats) this.judgeAll(null);
  }

  setForwarding(f: ForwardingSpec): void {
    this.fwd = new ForwardingTable(f.entries);
    this.next = Int32Array.from(f.next);
    this.selfId = f.self;
    this.versions = Float64Array.from(f.versions ?? []);
    this.slotPeer = Int32Array.from(f.slotPeer ?? []);
    this.prefixCount = new Int32Array(f.next.length);
    for (const e of f.entries) if (e.peer >= 0 && e.peer < this.prefixCount.length) this.prefixCount[e.peer]++;
    if (this.heartbeats) this.judgeAll(null);
  }

  // ---- liveness: heartbeats through the data path ------------------------------------------------

  /**
   * One heartbeat to every path that knows the peer's receiver index, or to the given slots' paths (the
   * control plane calls this at its cadence). Sealed like packets (this engine's path state, keys, counters, TUN lane), so a peer
   * hears us only when the state our packets use works; the body says whether we forward to the peer's
   * prefixes and which of its announcements we route (frame.ts writeHeartbeat).
   */
  beat(slots?: readonly number[]): void {
    if (!this.heartbeats) return;
    if (slots) {
      // the control plane's choice (router/heartbeat.ts): only paths nothing else proved lately
      for (const s of slots) {
        const p = s <= this.maxSlot ? this.paths[s] : null;
        if (p === null) continue;
        this.judge(p);
        this.beatOne(p);
      }
    } else {
      for (let s = 0; s <= this.maxSlot; s++) {
        const p = this.paths[s];
        if (p === null) continue;
        this.judge(p);
        this.beatOne(p);
      }
    }
    this.flushSend(this.txOut);
  }

  /** Re-judges every path after forwarding or paths changed; a changed verdict beats at once. */
  private judgeAll(force: EnginePath | null): void {
    for (let s = 0; s <= this.maxSlot; s++) {
      const p = this.paths[s];
      if (p === null) continue;
      this.judge(p);
      if (p === force || this.sh.fwd[s] !== p.beatFwd || this.versionFor(s) !== p.beatVer) this.beatOne(p);
    }
    this.flushSend(this.txOut);
  }

  private versionFor(slot: number): number {
    const id = slot < this.slotPeer.length ? this.slotPeer[slot] : -1;
    return id < 0 || id >= this.versions.length ? 0 : this.versions[id];
  }

  /** sh.fwd for p: does every prefix its peer announces have a live next-hop path here? */
  private judge(p: EnginePath): void {
    const id = p.slot < this.slotPeer.length ? this.slotPeer[p.slot] : -1;
    let v = FWD_OK;
    if (id >= 0 && id < this.prefixCount.length && this.prefixCount[id] > 0) {
      const hop = this.pathTo(id);
      if (hop === null || hop.remoteIdx < 0) v = FWD_NO_ROUTE;
    }
    this.sh.fwd[p.slot] = v;
  }

  private beatOne(p: EnginePath): void {
    if (p.remoteIdx < 0 || this.sh.ip[p.slot] === 0) return;
    const fwd = this.sh.fwd[p.slot];
    const ver = this.versionFor(p.slot);
    writeHeartbeat(this.hbBody, 0, fwd === FWD_OK, ver);
    this.seal(p, FrameType.Heartbeat, LANE_TX, this.hbBody, this.txOut);
    p.beatFwd = fwd;
    p.beatVer = ver;
    this.c[C.heartbeatsSent]++;
  }

  // ---- outbound: TUN -> peers --------------------------------------------------------------------

  /**
   * Reads the TUN until it is empty, sealing on lane (LANE_TX in the engine that owns the TUN; the rx
   * worker drains it too right after delivering, on its own lane LANE_RELAY: see sleeve-worker.ts).
   */
  drainTun(lane = LANE_TX): void {
    const c = this.c;
    this.tunLane = lane;
    for (;;) {
      const n = this.tun.readBatch(this.txIn, this.S, this.B, this.txInLens);
      if (n <= 0) break;
      for (let i = 0; i < n; i++) {
        const len = this.txInLens[i];
        c[C.tunInPackets]++;
        c[C.tunInBytes] += len;
        this.outbound(i, len);
      }
      this.flushSend(this.txOut);
      this.flushIcmp();
      if (n < this.B) break;
    }
    const st = this.tun.offloadStats;
    if (st) {
      // the addon counts in the carry (cumulative, this thread's reader only)
      c[C.tunSuperPackets] = st[TUN_CARRY_SUPER];
      c[C.dropBadVnet] = st[TUN_CARRY_BAD];
    }
  }

  private pathTo(peer: number): EnginePath | null {
    if (peer < 0 || peer >= this.next.length) return null;
    const slot = this.next[peer];
    return slot < 0 ? null : this.paths[slot];
  }

  private outbound(i: number, len: number): void {
    const buf = this.txIn;
    const off = i * this.S;
    const c = this.c;
    if (ipv4HeaderLen(buf, off, len) === 0) {
      if (len > 0 && buf[off] >> 4 !== 4) c[C.dropNotIpv4]++;
      else c[C.dropMalformed]++;
      return;
    }
    const peer = this.fwd.lookup(ipv4Dst(buf, off));
    if (peer === NO_PEER) {
      c[C.dropUnknownDest]++;
      this.icmpToTun(buf, off, len, UNREACH_HOST, 0);
      return;
    }
    if (peer === this.selfId) {
      c[C.dropLoop]++; // the kernel sent us a packet for an address we serve: a routing mistake
      return;
    }
    const p = this.pathTo(peer);
    if (p === null || p.remoteIdx < 0) {
      c[C.dropNoRoute]++;
      if (p !== null) this.pc[p.slot * PCN + PC.dropNoRoute]++;
      this.icmpToTun(buf, off, len, UNREACH_HOST, 0);
      return;
    }
    const mtu = this.sh.mtu[p.slot];
    if (len > mtu) {
      if (ipv4DontFragment(buf, off)) {
        c[C.dropTooBig]++;
        this.pc[p.slot * PCN + PC.dropTooBig]++;
        this.icmpToTun(buf, off, len, UNREACH_FRAG_NEEDED, mtu);
        return;
      }
      this.sendFragments(p, buf, off, len, mtu, this.txOut, this.tunLane);
      return;
    }
    this.seal(p, FrameType.Data, this.tunLane, this.txInView.get(i, len), this.txOut);
  }

  private sendFragments(p: EnginePath, buf: Buffer, off: number, len: number, mtu: number, ring: SendRing, lane: number): void {
    const k = fragment(buf, off, len, mtu, this.fragBuf, 0, this.S, this.fragLens, 0, MAX_FRAGS);
    if (k === 0) {
      this.c[C.dropTooBig]++;
      return;
    }
    this.c[C.fragmentsSent] += k;
    for (let f = 0; f < k; f++) this.seal(p, FrameType.Data, lane, this.fragView.get(f, this.fragLens[f]), ring);
  }

  /**
   * Frames a length-exact plain view for p into the ring (flushing it first when full); with a key the
   * box is queued and sealed in flushSend.
   */
  private seal(p: EnginePath, type: number, lane: number, plain: Buffer, ring: SendRing): void {
    if (ring.n === ring.cap) this.flushSend(ring);
    const k = ring.n;
    const base = k * ring.stride;
    const counter = p.counter++;
    const len = plain.length;
    writeHeader(ring.buf, base, type, lane, p.remoteIdx, counter, p.txPhase);
    if (p.txKey !== null) {
      ring.buf.set(plain, base + HDR + TAG);
      ring.toSeal.add(base + HDR, len + TAG, 0, type, lane, counter, p.txKey);
      ring.lens[k] = HDR + len + TAG;
    } else {
      plain.copy(ring.buf, base + HDR);
      ring.lens[k] = HDR + len;
    }
    ring.ips[k] = this.sh.ip[p.slot];
    ring.ports[k] = this.sh.port[p.slot];
    ring.slots[k] = p.slot;
    ring.n = k + 1;
  }

  private flushSend(ring: SendRing): void {
    const n = ring.n;
    if (n === 0) return;
    ring.n = 0;
    if (ring.toSeal.n > 0) {
      this.boxes.seal(ring.buf, ring.toSeal);
      ring.toSeal.n = 0;
    }
    const sent = this.udp.sendBatch(ring.buf, ring.offs, ring.lens, ring.ips, ring.ports, ring.errs, n);
    const c = this.c;
    const pc = this.pc;
    c[C.udpOutPackets] += sent;
    let tooBigSlot = -1;
    for (let k = 0; k < n; k++) {
      const e = ring.errs[k];
      const at = ring.slots[k] * PCN;
      if (e === 0) {
        c[C.udpOutBytes] += ring.lens[k];
        pc[at + PC.txPackets]++;
        pc[at + PC.txBytes] += ring.lens[k];
      } else if (e === EMSGSIZE) {
        c[C.dropTooBig]++;
        pc[at + PC.dropTooBig]++;
        tooBigSlot = ring.slots[k];
      } else c[C.dropSendError]++;
    }
    if (tooBigSlot >= 0) this.ev.pathTooBig(tooBigSlot);
  }

  private icmpToTun(buf: Buffer, off: number, len: number, code: number, mtu: number): void {
    if (this.icmpSlot === this.B) this.flushIcmp();
    const s = this.icmpSlot;
    const from = this.icmpSource !== 0 ? this.icmpSource : ipv4Dst(buf, off);
    const n = writeUnreachable(this.icmpBuf, s * ICMP_STRIDE, buf, off, len, code, mtu, from);
    if (n === 0) return;
    const r = this.icmpTun;
    r.offs[r.n] = s * ICMP_STRIDE;
    r.lens[r.n] = n;
    r.n++;
    this.icmpSlot = s + 1;
  }

  private flushIcmp(): void {
    const r = this.icmpTun;
    this.icmpSlot = 0;
    if (r.n === 0) return;
    const ok = this.tun.writeBatch(r.buf, r.offs, r.lens, r.n);
    this.c[C.icmpSent] += ok;
    this.c[C.dropTunFull] += r.n - ok;
    r.n = 0;
  }

  // ---- inbound: peers -> TUN or relay -------------------------------------------------------------

  /** Receives until the socket is empty; returns how many packets went into the TUN. */
  drainUdp(): number {
    const c = this.c;
    const before = c[C.tunOutPackets];
    for (;;) {
      const n = this.udp.recvBatch(this.rxIn, this.S, this.B, this.rxLens, this.rxIps, this.rxPorts);
      if (n <= 0) break;
      const now = this.now();
      this.toOpen.n = 0;
      for (let i = 0; i < n; i++) {
        c[C.udpInPackets]++;
        c[C.udpInBytes] += this.rxLens[i];
        this.admit(i);
      }
      if (this.toOpen.n > 0) this.boxes.open(this.rxIn, this.rxPlain, this.toOpen);
      for (let i = 0; i < n; i++) if (this.rxSlot[i] >= 0) this.accept(i, now);
      this.flushTun();
      this.flushSend(this.relayOut);
      this.flushIcmp();
      if (n < this.B) break;
    }
    return c[C.tunOutPackets] - before;
  }

  /** Pass 1: header, connection, replay check; a sealed frame joins the open batch, a plain one is copied out. */
  private admit(i: number): void {
    const c = this.c;
    const len = this.rxLens[i];
    const h = this.hdr;
    const base = i * this.S;
    this.rxSlot[i] = -1;
    if (len > this.S || !parseHeader(this.rxIn, base, len, h, false)) {
      c[C.dropMalformed]++;
      return;
    }
    const slot = h.idx & 0xffff;
    const p = slot < MAX_SLOTS ? this.paths[slot] : null;
    if (p === null || p.localIdx !== h.idx) {
      c[C.dropUnknownConn]++;
      return;
    }
    const sealed = p.sealed;
    if (sealed && len < HDR + TAG) {
      c[C.dropMalformed]++;
      return;
    }
    if (p.replay[h.lane].check(h.counter) !== ReplayVerdict.Ok) {
      c[C.dropReplay]++;
      this.pc[slot * PCN + PC.dropReplay]++;
      return;
    }
    const plen = len - HDR - (sealed ? TAG : 0);
    if (sealed) {
      const key = h.phase === 0 ? p.rxKey0 : p.rxKey1;
      if (key === null) {
        c[C.dropBadMac]++; // no key of that phase (yet, or any more): it cannot be authentic
        this.pc[slot * PCN + PC.dropAuth]++;
        return;
      }
      this.rxOpenIdx[i] = this.toOpen.add(base + HDR, len - HDR, base, h.type, h.lane, h.counter, key);
    } else {
      this.rxIn.copy(this.rxPlain, base, base + HDR, base + len);
      this.rxOpenIdx[i] = -1;
    }
    this.rxSlot[i] = slot;
    this.rxType[i] = h.type;
    this.rxLane[i] = h.lane;
    this.rxCounter[i] = h.counter;
    this.rxPlen[i] = plen;
  }

  /** Pass 2, in arrival order: authentic (opened) frames update the replay window and are handled. */
  private accept(i: number, now: number): void {
    const c = this.c;
    const slot = this.rxSlot[i];
    const j = this.rxOpenIdx[i];
    const pc = this.pc;
    if (j >= 0 && this.toOpen.ok[j] === 0) {
      c[C.dropBadMac]++;
      pc[slot * PCN + PC.dropAuth]++;
      return;
    }
    const p = this.paths[slot]!;
    const lane = this.rxLane[i];
    // a duplicate inside one batch passes the check in admit and fails here
    if (p.replay[lane].update(this.rxCounter[i]) !== ReplayVerdict.Ok) {
      c[C.dropReplay]++;
      pc[slot * PCN + PC.dropReplay]++;
      return;
    }
    pc[slot * PCN + PC.rxPackets]++;
    pc[slot * PCN + PC.rxBytes] += this.rxLens[i];
    // Authentic: the peer is alive at this address (roaming / NAT rebinding follows it).
    const sh = this.sh;
    sh.lastRx[slot] = now;
    const ip = this.rxIps[i];
    const port = this.rxPorts[i];
    if (ip !== sh.ip[slot] || port !== sh.port[slot]) {
      sh.ip[slot] = ip;
      sh.port[slot] = port;
      this.ev.addressLearned(slot, ip, port);
    }
    const plen = this.rxPlen[i];
    const base = i * this.S;
    switch (this.rxType[i]) {
      case FrameType.Data:
        this.deliver(i, plen);
        return;
      case FrameType.Heartbeat: {
        const f = heartbeatFlags(this.rxPlain, base, plen);
        sh.peerHb[slot] = f;
        if (f !== 0) sh.peerVer[slot] = heartbeatVersion(this.rxPlain, base);
        if (sh.heard[slot] === 0) this.ev.heartbeat(slot);
        return;
      }
      case FrameType.Probe:
        if (plen < 8) {
          c[C.dropMalformed]++; // authentic but too short for a round id and size: counted, not answered
          return;
        }
        // ack with the size that got through (the datagram length); the round id comes back as is
        for (let k = 0; k < 4; k++) this.ackBuf[k] = this.rxPlain[base + k];
        writeU32(this.ackBuf, 4, this.rxLens[i]);
        this.seal(p, FrameType.ProbeAck, LANE_RELAY, this.ackBuf, this.relayOut);
        return;
      case FrameType.ProbeAck:
        if (plen < 8) {
          c[C.dropMalformed]++;
          return;
        }
        this.ev.probeAck(slot, readU32(this.rxPlain, base), readU32(this.rxPlain, base + 4));
        return;
    }
  }

  /** A Data frame's packet (plain in rxPlain slot i): ours -> TUN; another peer's -> relay. */
  private deliver(i: number, len: number): void {
    const c = this.c;
    const buf = this.rxPlain;
    const off = i * this.S;
    if (ipv4HeaderLen(buf, off, len) === 0) {
      c[C.dropMalformed]++;
      return;
    }
    const peer = this.fwd.lookup(ipv4Dst(buf, off));
    if (peer === this.selfId && peer !== NO_PEER) {
      const r = this.rxTun;
      r.offs[r.n] = off;
      r.lens[r.n] = len;
      r.n++;
      return;
    }
    if (peer === NO_PEER) {
      c[C.dropUnknownDest]++;
      return;
    }
    const p = this.pathTo(peer);
    if (p === null || p.remoteIdx < 0) {
      c[C.dropNoRoute]++;
      this.pc[this.rxSlot[i] * PCN + PC.dropNoRoute]++; // counted on the path it arrived on
      return;
    }
    if (!decrementTtl(buf, off)) {
      c[C.dropTtl]++;
      return;
    }
    const mtu = this.sh.mtu[p.slot];
    if (len > mtu) {
      if (ipv4DontFragment(buf, off)) {
        c[C.dropTooBig]++;
        this.icmpToward(buf, off, len, mtu);
        return;
      }
      this.sendFragments(p, buf, off, len, mtu, this.relayOut, LANE_RELAY);
      c[C.relayedPackets]++;
      return;
    }
    c[C.relayedPackets]++;
    this.seal(p, FrameType.Data, LANE_RELAY, this.rxPlainView.get(i, len), this.relayOut);
  }

  /** Frag-needed for a relayed packet goes back to its (remote) sender through the overlay. */
  private icmpToward(buf: Buffer, off: number, len: number, mtu: number): void {
    if (this.icmpSlot === this.B) this.flushIcmp();
    const s = this.icmpSlot;
    const n = writeUnreachable(this.icmpBuf, s * ICMP_STRIDE, buf, off, len, UNREACH_FRAG_NEEDED, mtu, this.icmpSource !== 0 ? this.icmpSource : ipv4Dst(buf, off));
    if (n === 0) return;
    const peer = this.fwd.lookup(ipv4Dst(this.icmpBuf, s * ICMP_STRIDE));
    const p = peer === NO_PEER || peer === this.selfId ? null : this.pathTo(peer);
    if (p === null || p.remoteIdx < 0) return;
    // seal() copies the packet into the send ring, so the ICMP slot is free again right after
    this.c[C.icmpSent]++;
    this.seal(p, FrameType.Data, LANE_RELAY, this.icmpView.get(s, n), this.relayOut);
  }

  private flushTun(): void {
    const r = this.rxTun;
    if (r.n === 0) return;
    const ok = this.tun.writeBatch(r.buf, r.offs, r.lens, r.n);
    const c = this.c;
    c[C.tunOutPackets] += ok;
    for (let k = 0; k < ok; k++) c[C.tunOutBytes] += r.lens[k];
    c[C.dropTunFull] += r.n - ok;
    r.n = 0;
  }
}
