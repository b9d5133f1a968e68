// The sleeve overlay: IP packets between the kernel (a TUN device) and peers (UDP), sealed per
// connection. The packet flow, which everything below serves:
//
//   outbound  TUN readable -> readBatch (drain) -> per packet: IPv4 check -> dst -> forwarding table
//             (LPM prefix -> destination peer) -> next-hop connection (mesh routes, precomputed) ->
//             too big? (DF: ICMP frag-needed into the TUN; no DF: fragment) -> header + seal with the
//             connection's tx key into the send ring -> sendmmsg batch to the next hop's UDP address.
//             No destination / no route: ICMP unreachable into the TUN.
//   inbound   UDP readable -> recvmmsg batch (drain) -> header -> connection by receiver index ->
//             replay check -> open with its rx key -> replay update, learn the peer's UDP address ->
//             Data: dst -> forwarding table -> ours: TUN write batch; another peer's: TTL-1, re-seal
//             for the next hop (relay). Heartbeat / Probe / ProbeAck: liveness and path MTU.
//
// Rules: nothing allocated, no promise and no closure per packet: slot rings, length-exact views
// cached per slot (frame.ts ViewCache), counters as plain numbers bumped per batch. Per connection:
// keys per direction from the session key, a 64-bit counter per direction (nonce), a replay window.
// Control over the mesh connection (Msg.Overlay, msgpack {v:1, o:'sleeve', t, ...}): 'hello' tells
// the peer our receiver index and UDP port; 'hear' says whether its UDP heartbeats reach us. The
// sleeve is established when heartbeats get through both ways; it fails when they stop.
import { Packr } from 'msgpackr';
import type { Clock, TimerHandle } from '../mesh/clock';
import type { CryptoEngine } from '../mesh/crypto';
import { ProtocolError, WeaveError, errMsg } from '../mesh/errors';
import type { Logger } from '../mesh/log';
import type { PeerName } from '../mesh/peer';
import { Msg, type MeshConnection } from '../mesh/types';
import { FrameHeader, FrameType, HDR, TAG, ViewCache, deriveKeys, encodeFrame, parseHeader, readU32, setNonce, writeHeader, writeU32 } from './frame';
import { ForwardingTable, NO_PEER, ip4ToU32, parsePrefix, u32ToIp4 } from './forwarding';
import { MAX_ICMP_LEN, UNREACH_FRAG_NEEDED, UNREACH_HOST, decrementTtl, fragment, ipv4DontFragment, ipv4Dst, ipv4HeaderLen, writeUnreachable } from './icmp';
import type { PrefixTable } from './prefixes';
import { ReplayVerdict, ReplayWindow } from './replay';
import type { TunDevice } from './tun';
import { EAGAIN, EMSGSIZE, type UdpBind } from './udp';

export const DEFAULT_SLEEVE_PORT = 6783;
export const DEFAULT_TUN_NAME = 'weave-tun';
/** IPv4 + UDP headers around every frame on the underlay. */
export const UNDERLAY_OVERHEAD = 28;
/** Bytes a sealed frame adds to a packet on the underlay: IPv4 + UDP + frame header + MAC. */
export const SLEEVE_OVERHEAD = UNDERLAY_OVERHEAD + HDR + TAG;

const CTL_VERSION = 1;
const MAX_SLOTS = 65536;
const MAX_FRAGS = 48;
const PROBE_MTUS = [9000, 1500, 1492, 1480, 1460, 1440, 1420, 1400, 1380, 1350, 1300, 1280, 1200, 1100, 1000, 900, 800, 700, 576];

const packr = new Packr({ useRecords: false, mapsAsObjects: true, moreTypes: false });

// ---- inputs -------------------------------------------------------------------------------------

/** What the sleeve needs from the mesh: our name, next hops, and a signal when routes change. */
export interface RouteSource {
  readonly name: PeerName;
  unicastNextHop(dst: PeerName): PeerName | undefined;
  on(event: 'routesChanged', fn: () => void): unknown;
  off(event: 'routesChanged', fn: () => void): unknown;
}

/** A route into the TUN, as host/routes.ts DesiredRoute wants it. */
export interface SleeveRoute { dst: string; dev: string }

/** Kernel state the sleeve asks for (host/ does it): TUN link up + MTU, routes of remote prefixes. */
export interface SleeveHost {
  tunUp(name: string, mtu: number): Promise<void>;
  setRoutes(routes: SleeveRoute[]): void;
}

export interface SleeveCounters {
  tunInPackets: number; tunInBytes: number;
  tunOutPackets: number; tunOutBytes: number;
  udpInPackets: number; udpInBytes: number;
  udpOutPackets: number; udpOutBytes: number;
  relayedPackets: number;
  icmpSent: number;
  fragmentsSent: number;
  dropReplay: number;
  dropBadMac: number;
  dropMalformed: number;
  /** packets from the TUN that are not IPv4 (IPv6 is not carried yet) */
  dropNotIpv4: number;
  dropUnknownConn: number;
  dropUnknownDest: number;
  dropNoRoute: number;
  dropTooBig: number;
  dropTtl: number;
  dropLoop: number;
  dropSendError: number;
  dropTunFull: number;
}

export function newSleeveCounters(): SleeveCounters {
  return {
    tunInPackets: 0, tunInBytes: 0, tunOutPackets: 0, tunOutBytes: 0,
    udpInPackets: 0, udpInBytes: 0, udpOutPackets: 0, udpOutBytes: 0,
    relayedPackets: 0, icmpSent: 0, fragmentsSent: 0,
    dropReplay: 0, dropBadMac: 0, dropMalformed: 0, dropNotIpv4: 0, dropUnknownConn: 0, dropUnknownDest: 0, dropNoRoute: 0,
    dropTooBig: 0, dropTtl: 0, dropLoop: 0, dropSendError: 0, dropTunFull: 0,
  };
}

export interface SleeveOptions {
  /** our peer name (the mesh identity) */
  name: PeerName;
  clock: Clock;
  log: Logger;
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
  /** default 1000 ms */
  heartbeatMs?: number;
  /** an established sleeve fails when no heartbeat arrived for this long; default 8000 ms */
  deadMs?: number;
  /** a new sleeve fails when not established within this; default 15000 ms */
  establishTimeoutMs?: number;
  /** PMTU probe period once established (every heartbeat before); default 10000 ms */
  probeMs?: number;
  /** packets per read/send batch; default 64 */
  batch?: number;
  /** source address of the ICMP errors we write into the TUN (host-order u32); default: the packet's destination */
  icmpSource?: number;
  counters?: SleeveCounters;
}

// ---- per connection -----------------------------------------------------------------------------

class PeerPath {
  remoteIdx = -1;
  txCounter = 0;
  readonly replay = new ReplayWindow();
  ip = 0;
  port = 0;
  lastRx = -Infinity;
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
  reason = 'waiting for the peer\'s sleeve parameters';

  constructor(
    readonly slot: number,
    readonly localIdx: number,
    readonly conn: MeshConnection,
    readonly peer: PeerName,
    readonly cb: { established(): void; failed(reason: string): void },
    readonly txKey: Buffer | null,
    readonly rxKey: Buffer | null,
    readonly startedAt: number,
  ) {}
}

/** Handle the mesh holds per connection (mesh/mesh.ts OverlayHandle). */
export interface SleeveHandle {
  onMessage(payload: Uint8Array): void;
  close(): void;
  status(): { overlay: string | null; encrypted: boolean; mtu?: number; reason?: string };
}

// ---- batch rings --------------------------------------------------------------------------------

/** Sealed frames waiting for one sendmmsg. */
class SendRing {
  readonly buf: Buffer;
  readonly box: ViewCache;
  readonly offs: Int32Array;
  readonly lens: Int32Array;
  readonly ips: Uint32Array;
  readonly ports: Int32Array;
  readonly errs: Int32Array;
  readonly paths: Array<PeerPath | null>;
  n = 0;
  constructor(readonly stride: number, readonly cap: number) {
    this.buf = Buffer.alloc(stride * cap);
    this.box = new ViewCache(this.buf, stride, cap, HDR);
    this.offs = new Int32Array(cap);
    for (let i = 0; i < cap; i++) this.offs[i] = i * stride;
    this.lens = new Int32Array(cap);
    this.ips = new Uint32Array(cap);
    this.ports = new Int32Array(cap);
    this.errs = new Int32Array(cap);
    this.paths = new Array(cap).fill(null);
  }
}

/** Packets waiting for one TUN write batch (offsets into some ring's buffer). */
class TunRing {
  readonly offs: Int32Array;
  readonly lens: Int32Array;
  n = 0;
  constructor(readonly buf: Buffer, readonly cap: number) {
    this.offs = new Int32Array(cap);
    this.lens = new Int32Array(cap);
  }
}

function parseRemoteIp(addr: string): number {
  // "1.2.3.4:6783", "[::ffff:1.2.3.4]:6783", "::ffff:1.2.3.4:6783"
  let host = addr.startsWith('[') ? addr.slice(1, addr.indexOf(']')) : addr.slice(0, addr.lastIndexOf(':'));
  if (host.toLowerCase().startsWith('::ffff:')) host = host.slice(7);
  return ip4ToU32(host) ?? 0;
}

function sleevePortOf(params: Record<string, unknown>): number | undefined {
  const s = params?.sleeve as Record<string, unknown> | undefined;
  const p = s?.port;
  return typeof p === 'number' && Number.isInteger(p) && p > 0 && p < 65536 ? p : undefined;
}

// ---- the overlay --------------------------------------------------------------------------------

export class Sleeve {
  readonly counters: SleeveCounters;
  readonly tunMtu: number;
  readonly underlayMtu: number;
  private readonly o: SleeveOptions;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly crypto: CryptoEngine;
  private readonly tun: TunDevice;
  private readonly udp: UdpBind;
  private readonly S: number; // slot stride
  private readonly B: number; // batch
  private readonly heartbeatMs: number;
  private readonly deadMs: number;
  private readonly establishTimeoutMs: number;
  private readonly probeMs: number;

  // connections: by slot (receiver index low 16 bits) and by peer name
  private readonly slots: Array<PeerPath | null> = [];
  private readonly byPeer = new Map<PeerName, PeerPath>();
  private idxGen = 1;

  // forwarding: prefix -> peer id; peer id -> path of the next hop (null: no route); selfId = ours
  private fwd = new ForwardingTable();
  private peerIds: PeerName[] = [];
  private nextPath: Array<PeerPath | null> = [];
  private selfId = NO_PEER;

  // outbound rings
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
  // inbound rings
  private readonly rxIn: Buffer;
  private readonly rxLens: Int32Array;
  private readonly rxIps: Uint32Array;
  private readonly rxPorts: Int32Array;
  private readonly rxBox: ViewCache;
  private readonly rxPlain: Buffer;
  private readonly rxPlainView: ViewCache;
  private readonly rxTun: TunRing;
  private readonly relayOut: SendRing;

  private readonly hdr = new FrameHeader();
  private readonly nonce = Buffer.alloc(24);
  private readonly ctlIps = new Uint32Array(1);
  private readonly ctlPorts = new Int32Array(1);
  private readonly ctlOffs = new Int32Array(1);
  private readonly ctlLens = new Int32Array(1);
  private readonly ctlErrs = new Int32Array(1);

  private timer: TimerHandle | undefined;
  private closed = false;
  private readonly onTunReadable = (): void => this.drainTun();
  private readonly onUdpReadable = (): void => this.drainUdp();
  private readonly onRoutesChanged = (): void => this.recompute();
  private readonly offPrefixes: () => void;
  private lastRoutesKey = '';

  constructor(o: SleeveOptions) {
    this.o = o;
    this.log = o.log.child({ component: 'sleeve' });
    this.clock = o.clock;
    this.crypto = o.crypto;
    this.tun = o.tun;
    this.udp = o.udp;
    this.counters = o.counters ?? newSleeveCounters();
    this.underlayMtu = o.underlayMtu ?? 1500;
    this.tunMtu = o.tunMtu ?? this.underlayMtu - SLEEVE_OVERHEAD;
    if (!(this.underlayMtu >= 576 && this.underlayMtu <= 65535)) throw new WeaveError('EINVAL', `underlay MTU ${this.underlayMtu} out of range`);
    if (!(this.tunMtu >= 576 && this.tunMtu <= 65535 - SLEEVE_OVERHEAD)) throw new WeaveError('EINVAL', `TUN MTU ${this.tunMtu} out of range`);
    this.heartbeatMs = o.heartbeatMs ?? 1000;
    this.deadMs = o.deadMs ?? 8000;
    this.establishTimeoutMs = o.establishTimeoutMs ?? 15000;
    this.probeMs = o.probeMs ?? 10000;
    this.B = Math.min(256, Math.max(1, o.batch ?? 64));
    // one stride fits the largest TUN packet sealed, and the largest datagram we accept
    this.S = (Math.max(this.tunMtu + HDR + TAG, this.underlayMtu - UNDERLAY_OVERHEAD) + 63) & ~63;

    const S = this.S;
    const B = this.B;
    this.txIn = Buffer.alloc(S * B);
    this.txInLens = new Int32Array(B);
    this.txInView = new ViewCache(this.txIn, S, B, 0);
    this.txOut = new SendRing(S, 256);
    this.fragBuf = Buffer.alloc(S * MAX_FRAGS);
    this.fragLens = new Int32Array(MAX_FRAGS);
    this.fragView = new ViewCache(this.fragBuf, S, MAX_FRAGS, 0);
    const icmpStride = 128;
    this.icmpBuf = Buffer.alloc(icmpStride * B);
    this.icmpView = new ViewCache(this.icmpBuf, icmpStride, B, 0);
    this.icmpTun = new TunRing(this.icmpBuf, B);
    this.rxIn = Buffer.alloc(S * B);
    this.rxLens = new Int32Array(B);
    this.rxIps = new Uint32Array(B);
    this.rxPorts = new Int32Array(B);
    this.rxBox = new ViewCache(this.rxIn, S, B, HDR);
    this.rxPlain = Buffer.alloc(S * B);
    this.rxPlainView = new ViewCache(this.rxPlain, S, B, 0);
    this.rxTun = new TunRing(this.rxPlain, B);
    this.relayOut = new SendRing(S, B);

    this.offPrefixes = o.prefixes.onChange(() => this.recompute());
    o.routes.on('routesChanged', this.onRoutesChanged);
    this.recompute();
    this.tun.setReadable(this.onTunReadable);
    this.udp.setReadable(this.onUdpReadable);
    this.timer = this.clock.setTimeout(() => this.tick(), this.heartbeatMs);
    this.log.info({ port: this.udp.port, tun: this.tun.name, tunMtu: this.tunMtu, underlayMtu: this.underlayMtu, engine: this.crypto.name }, 'sleeve started');
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
      if (this.slots.length >= MAX_SLOTS) throw new WeaveError('ELIMIT', 'too many sleeve connections');
      slot = this.slots.length;
      this.slots.push(null);
    }
    // generation in the high half: a datagram for a closed connection whose slot was reused is refused
    this.idxGen = (this.idxGen % 0xffff) + 1;
    const idx = ((this.idxGen << 16) | slot) >>> 0;
    let txKey: Buffer | null = null;
    let rxKey: Buffer | null = null;
    if (conn.sessionKey) {
      const k = deriveKeys(this.crypto, conn.sessionKey, conn.outbound);
      txKey = k.tx;
      rxKey = k.rx;
    }
    const peer = conn.remote.name;
    const p = new PeerPath(slot, idx, conn, peer, cb, txKey, rxKey, this.clock.now());
    p.ip = parseRemoteIp(conn.remoteAddr);
    p.port = sleevePortOf(conn.remote.overlayParams) ?? DEFAULT_SLEEVE_PORT;
    this.slots[slot] = p;
    const prev = this.byPeer.get(peer);
    this.byPeer.set(peer, p);
    if (prev && prev !== p) this.log.info({ peer }, 'a newer connection to the peer replaces the old sleeve path');
    this.sendCtl(p, { t: 'hello', idx, port: this.udp.port });
    p.nextProbe = this.clock.now();
    this.log.debug({ peer, idx, remote: `${u32ToIp4(p.ip)}:${p.port}`, encrypted: txKey !== null }, 'sleeve path attached');
    this.recompute();
    return {
      onMessage: (payload) => this.onCtl(p, payload),
      close: () => this.detach(p),
      status: () => this.pathStatus(p),
    };
  }

  /** Stops I/O and timers and closes the TUN and UDP socket. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.clock.clearTimeout(this.timer);
    this.o.routes.off('routesChanged', this.onRoutesChanged);
    this.offPrefixes();
    for (const p of this.slots) if (p) p.closed = true;
    this.tun.setReadable(null);
    this.udp.setReadable(null);
    this.tun.close();
    this.udp.close();
  }

  /** The inner MTU usable towards the peer (what containers' TCP should see). */
  pathMtu(peer: PeerName): number | undefined {
    const p = this.byPeer.get(peer);
    return p ? this.innerMtu(p) : undefined;
  }

  // ---- control ----------------------------------------------------------------------------------

  private sendCtl(p: PeerPath, body: Record<string, unknown>): void {
    if (p.closed) return;
    p.conn.send(Msg.Overlay, packr.pack({ v: CTL_VERSION, o: 'sleeve', ...body }));
  }

  private onCtl(p: PeerPath, payload: Uint8Array): void {
    if (p.closed) return;
    let m: unknown;
    try {
      m = packr.unpack(payload);
    } catch (e) {
      throw new ProtocolError('sleeve control: malformed msgpack', { cause: errMsg(e) });
    }
    if (typeof m !== 'object' || m === null || Object.getPrototypeOf(m) !== Object.prototype) throw new ProtocolError('sleeve control: expected a map');
    const c = m as Record<string, unknown>;
    if (typeof c.o !== 'string') throw new ProtocolError('sleeve control: no overlay name');
    if (c.o !== 'sleeve') return; // another overlay's control message
    if (c.v !== CTL_VERSION) throw new ProtocolError('sleeve control: unsupported version', { v: c.v });
    switch (c.t) {
      case 'hello': {
        const idx = c.idx;
        const port = c.port;
        if (typeof idx !== 'number' || !Number.isInteger(idx) || idx < 0 || idx > 0xffffffff) throw new ProtocolError('sleeve hello: bad idx');
        if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) throw new ProtocolError('sleeve hello: bad port');
        p.remoteIdx = idx;
        // The port is what the peer bound; the address stays what we know until heartbeats teach us better.
        if (p.lastRx === -Infinity) p.port = port;
        p.reason = 'waiting for sleeve heartbeats';
        this.sendHeartbeat(p);
        return;
      }
      case 'hear': {
        if (typeof c.on !== 'boolean') throw new ProtocolError('sleeve hear: bad flag');
        p.theyHear = c.on;
        this.evaluate(p);
        return;
      }
      default:
        throw new ProtocolError('sleeve control: unknown type', { t: String(c.t).slice(0, 20) });
    }
  }

  private detach(p: PeerPath): void {
    if (p.closed) return;
    p.closed = true;
    if (this.slots[p.slot] === p) this.slots[p.slot] = null;
    if (this.byPeer.get(p.peer) === p) this.byPeer.delete(p.peer);
    this.log.debug({ peer: p.peer }, 'sleeve path closed');
    this.recompute();
  }

  private pathStatus(p: PeerPath): { overlay: string | null; encrypted: boolean; mtu?: number; reason?: string } {
    const s: { overlay: string | null; encrypted: boolean; mtu?: number; reason?: string } = {
      overlay: p.established ? 'sleeve' : null,
      encrypted: p.txKey !== null,
      mtu: this.innerMtu(p),
    };
    if (!p.established) s.reason = p.reason;
    return s;
  }

  private innerMtu(p: PeerPath): number {
    if (p.pathPayload === 0) return this.tunMtu;
    return Math.min(this.tunMtu, p.pathPayload - HDR - (p.txKey ? TAG : 0));
  }

  private evaluate(p: PeerPath): void {
    if (p.closed) return;
    const est = p.weHear && p.theyHear && p.remoteIdx >= 0;
    if (est === p.established) return;
    p.established = est;
    if (est) {
      p.failReported = false;
      p.reason = '';
      this.log.info({ peer: p.peer, remote: `${u32ToIp4(p.ip)}:${p.port}`, mtu: this.innerMtu(p), encrypted: p.txKey !== null }, 'sleeve established');
      this.recompute();
      p.cb.established();
    } else {
      p.reason = !p.weHear ? 'no sleeve heartbeats from the peer' : 'the peer does not receive our sleeve heartbeats';
      this.log.warn({ peer: p.peer, reason: p.reason }, 'sleeve lost');
      this.recompute();
      p.failReported = true;
      p.cb.failed(p.reason);
    }
  }

  private tick(): void {
    if (this.closed) return;
    const now = this.clock.now();
    for (const p of this.slots) {
      if (!p || p.closed) continue;
      const hear = now - p.lastRx <= this.deadMs;
      if (hear !== p.weHear) {
        p.weHear = hear;
        this.sendCtl(p, { t: 'hear', on: hear });
        this.evaluate(p);
        if (p.closed) continue;
      }
      if (p.remoteIdx >= 0) {
        this.sendHeartbeat(p);
        if (now >= p.nextProbe) this.probe(p, now);
      }
      if (!p.established && !p.failReported && now - p.startedAt >= this.establishTimeoutMs) {
        p.failReported = true;
        const reason = p.remoteIdx < 0 ? 'the peer sent no sleeve parameters' : `no sleeve heartbeats both ways within ${Math.round(this.establishTimeoutMs / 1000)}s (UDP ${u32ToIp4(p.ip)}:${p.port})`;
        p.reason = reason;
        this.log.warn({ peer: p.peer, reason }, 'sleeve could not be established');
        p.cb.failed(reason);
      }
    }
    this.timer = this.clock.setTimeout(() => this.tick(), this.heartbeatMs);
  }

  private sendFrame(p: PeerPath, type: number, body: Uint8Array): number {
    const frame = encodeFrame(p.txKey ? this.crypto : null, p.txKey, type, p.remoteIdx, p.txCounter++, body);
    this.ctlIps[0] = p.ip;
    this.ctlPorts[0] = p.port;
    this.ctlOffs[0] = 0;
    this.ctlLens[0] = frame.length;
    const sent = this.udp.sendBatch(frame, this.ctlOffs, this.ctlLens, this.ctlIps, this.ctlPorts, this.ctlErrs, 1);
    if (sent === 1) {
      this.counters.udpOutPackets++;
      this.counters.udpOutBytes += frame.length;
    }
    return sent === 1 ? 0 : this.ctlErrs[0];
  }

  private sendHeartbeat(p: PeerPath): void {
    if (p.remoteIdx < 0 || p.ip === 0) return;
    const err = this.sendFrame(p, FrameType.Heartbeat, Uint8Array.of(p.weHear ? 1 : 0));
    if (err !== 0 && err !== EAGAIN) this.log.debug({ peer: p.peer, errno: err }, 'heartbeat send failed');
  }

  /** One PMTU round: a DF probe of each candidate size; acks of the previous round settle the MTU. */
  private probe(p: PeerPath, now: number): void {
    if (p.probeRound > 0 && p.probeBest > 0 && p.probeBest !== p.pathPayload) {
      this.log.info({ peer: p.peer, from: p.pathPayload, to: p.probeBest, mtu: p.probeBest - HDR - (p.txKey ? TAG : 0) }, 'sleeve path MTU changed');
      p.pathPayload = p.probeBest;
      this.recompute();
    }
    p.probeRound = (p.probeRound % 0x7fffffff) + 1;
    p.probeBest = 0;
    const max = this.underlayMtu - UNDERLAY_OVERHEAD;
    const tag = p.txKey ? TAG : 0;
    const sizes = [max, ...PROBE_MTUS.map((m) => m - UNDERLAY_OVERHEAD).filter((s) => s < max)];
    for (const size of sizes) {
      const body = Buffer.alloc(size - HDR - tag);
      writeU32(body, 0, p.probeRound);
      writeU32(body, 4, size);
      this.sendFrame(p, FrameType.Probe, body);
    }
    p.nextProbe = now + (p.established ? this.probeMs : this.heartbeatMs);
  }

  // ---- outbound: TUN -> peers -------------------------------------------------------------------

  private drainTun(): void {
    if (this.closed) return;
    const c = this.counters;
    for (;;) {
      const n = this.tun.readBatch(this.txIn, this.S, this.B, this.txInLens);
      if (n <= 0) break;
      for (let i = 0; i < n; i++) {
        const len = this.txInLens[i];
        c.tunInPackets++;
        c.tunInBytes += len;
        this.outbound(i, len);
      }
      this.flushSend(this.txOut);
      this.flushIcmp();
      if (n < this.B) break;
    }
  }

  /** Routes one packet read from the TUN (txIn slot i). */
  private outbound(i: number, len: number): void {
    const buf = this.txIn;
    const off = i * this.S;
    const c = this.counters;
    if (ipv4HeaderLen(buf, off, len) === 0) {
      if (len > 0 && buf[off] >> 4 !== 4) c.dropNotIpv4++;
      else c.dropMalformed++;
      return;
    }
    const peer = this.fwd.lookup(ipv4Dst(buf, off));
    if (peer === NO_PEER) {
      c.dropUnknownDest++;
      this.icmpToTun(buf, off, len, UNREACH_HOST, 0);
      return;
    }
    if (peer === this.selfId) {
      c.dropLoop++; // the kernel sent us a packet for an address we serve: a routing mistake
      return;
    }
    const p = this.nextPath[peer];
    if (p === null || p === undefined) {
      c.dropNoRoute++;
      this.icmpToTun(buf, off, len, UNREACH_HOST, 0);
      return;
    }
    const mtu = this.innerMtu(p);
    if (len > mtu) {
      if (ipv4DontFragment(buf, off)) {
        c.dropTooBig++;
        this.icmpToTun(buf, off, len, UNREACH_FRAG_NEEDED, mtu);
        return;
      }
      this.sendFragments(p, buf, off, len, mtu, this.txOut);
      return;
    }
    this.seal(p, FrameType.Data, this.txInView.get(i, len), this.txOut);
  }

  private sendFragments(p: PeerPath, buf: Buffer, off: number, len: number, mtu: number, ring: SendRing): void {
    const k = fragment(buf, off, len, mtu, this.fragBuf, 0, this.S, this.fragLens, 0, MAX_FRAGS);
    if (k === 0) {
      this.counters.dropTooBig++;
      return;
    }
    this.counters.fragmentsSent += k;
    for (let f = 0; f < k; f++) this.seal(p, FrameType.Data, this.fragView.get(f, this.fragLens[f]), ring);
  }

  /** Seals a length-exact plain view for p into the ring (flushing it first when full). */
  private seal(p: PeerPath, type: number, plain: Buffer, ring: SendRing): void {
    if (ring.n === ring.cap) this.flushSend(ring);
    const k = ring.n;
    const base = k * ring.stride;
    const counter = p.txCounter++;
    const len = plain.length;
    writeHeader(ring.buf, base, type, p.remoteIdx, counter);
    if (p.txKey !== null) {
      setNonce(this.nonce, type, counter);
      this.crypto.secretboxSeal(ring.box.get(k, len + TAG), plain, this.nonce, p.txKey);
      ring.lens[k] = HDR + len + TAG;
    } else {
      plain.copy(ring.buf, base + HDR);
      ring.lens[k] = HDR + len;
    }
    ring.ips[k] = p.ip;
    ring.ports[k] = p.port;
    ring.paths[k] = p;
    ring.n = k + 1;
  }

  private flushSend(ring: SendRing): void {
    const n = ring.n;
    if (n === 0) return;
    ring.n = 0;
    const sent = this.udp.sendBatch(ring.buf, ring.offs, ring.lens, ring.ips, ring.ports, ring.errs, n);
    const c = this.counters;
    c.udpOutPackets += sent;
    for (let k = 0; k < n; k++) {
      const e = ring.errs[k];
      if (e === 0) {
        c.udpOutBytes += ring.lens[k];
      } else if (e === EMSGSIZE) {
        // The kernel learned a smaller path MTU (ICMP from the underlay): re-probe now.
        c.dropTooBig++;
        const p = ring.paths[k];
        if (p) p.nextProbe = 0;
      } else {
        c.dropSendError++;
      }
      ring.paths[k] = null;
    }
  }

  private icmpToTun(buf: Buffer, off: number, len: number, code: number, mtu: number): void {
    if (this.icmpSlot === this.B) this.flushIcmp();
    const s = this.icmpSlot;
    const from = this.o.icmpSource ?? ipv4Dst(buf, off);
    const n = writeUnreachable(this.icmpBuf, s * 128, buf, off, len, code, mtu, from);
    if (n === 0) return;
    const r = this.icmpTun;
    r.offs[r.n] = s * 128;
    r.lens[r.n] = n;
    r.n++;
    this.icmpSlot = s + 1;
  }

  private flushIcmp(): void {
    const r = this.icmpTun;
    if (r.n === 0) return;
    const ok = this.tun.writeBatch(r.buf, r.offs, r.lens, r.n);
    this.counters.icmpSent += ok;
    this.counters.dropTunFull += r.n - ok;
    r.n = 0;
    this.icmpSlot = 0;
  }

  // ---- inbound: peers -> TUN or relay -----------------------------------------------------------

  private drainUdp(): void {
    if (this.closed) return;
    const c = this.counters;
    for (;;) {
      const n = this.udp.recvBatch(this.rxIn, this.S, this.B, this.rxLens, this.rxIps, this.rxPorts);
      if (n <= 0) break;
      const now = this.clock.now();
      for (let i = 0; i < n; i++) {
        c.udpInPackets++;
        c.udpInBytes += this.rxLens[i];
        this.inbound(i, now);
      }
      this.flushTun();
      this.flushSend(this.relayOut);
      this.flushIcmp();
      if (n < this.B) break;
    }
  }

  private inbound(i: number, now: number): void {
    const c = this.counters;
    const len = this.rxLens[i];
    const h = this.hdr;
    const base = i * this.S;
    if (len > this.S || !parseHeader(this.rxIn, base, len, h, false)) {
      c.dropMalformed++;
      return;
    }
    const p = this.slots[h.idx & 0xffff];
    if (p === null || p === undefined || p.localIdx !== h.idx) {
      c.dropUnknownConn++;
      return;
    }
    const sealed = p.rxKey !== null;
    if (sealed && len < HDR + TAG) {
      c.dropMalformed++;
      return;
    }
    if (p.replay.check(h.counter) !== ReplayVerdict.Ok) {
      c.dropReplay++;
      return;
    }
    const plen = len - HDR - (sealed ? TAG : 0);
    if (sealed) {
      setNonce(this.nonce, h.type, h.counter);
      if (!this.crypto.secretboxOpen(this.rxPlainView.get(i, plen), this.rxBox.get(i, len - HDR), this.nonce, p.rxKey!)) {
        c.dropBadMac++;
        return;
      }
    } else {
      this.rxIn.copy(this.rxPlain, base, base + HDR, base + len);
    }
    if (p.replay.update(h.counter) !== ReplayVerdict.Ok) {
      c.dropReplay++;
      return;
    }
    // Authentic: the peer is alive at this address (roaming / NAT rebinding follows it).
    p.lastRx = now;
    const ip = this.rxIps[i];
    const port = this.rxPorts[i];
    if (ip !== p.ip || port !== p.port) {
      this.log.info({ peer: p.peer, from: `${u32ToIp4(p.ip)}:${p.port}`, to: `${u32ToIp4(ip)}:${port}` }, 'peer UDP address learned');
      p.ip = ip;
      p.port = port;
    }
    if (!p.weHear) {
      p.weHear = true;
      this.sendCtl(p, { t: 'hear', on: true });
      this.evaluate(p);
    }
    switch (h.type) {
      case FrameType.Data:
        this.deliver(i, plen);
        return;
      case FrameType.Heartbeat:
        return;
      case FrameType.Probe:
        if (plen >= 8) {
          const ack = Buffer.alloc(8);
          ack.set(this.rxPlain.subarray(base, base + 4), 0);
          writeU32(ack, 4, len);
          this.sendFrame(p, FrameType.ProbeAck, ack);
        }
        return;
      case FrameType.ProbeAck:
        if (plen >= 8) this.onProbeAck(p, readU32(this.rxPlain, base), readU32(this.rxPlain, base + 4));
        return;
    }
  }

  private onProbeAck(p: PeerPath, round: number, size: number): void {
    if (round !== p.probeRound || size > this.underlayMtu - UNDERLAY_OVERHEAD) return;
    if (size > p.probeBest) p.probeBest = size;
    if (size > p.pathPayload) {
      // Growing is safe at once; shrinking waits for the round to finish (probeBest).
      if (p.pathPayload !== 0) this.log.info({ peer: p.peer, from: p.pathPayload, to: size }, 'sleeve path MTU grew');
      p.pathPayload = size;
    }
  }

  /** A Data frame's packet (plain in rxPlain slot i): ours -> TUN; another peer's -> relay. */
  private deliver(i: number, len: number): void {
    const c = this.counters;
    const buf = this.rxPlain;
    const off = i * this.S;
    if (ipv4HeaderLen(buf, off, len) === 0) {
      c.dropMalformed++;
      return;
    }
    const peer = this.fwd.lookup(ipv4Dst(buf, off));
    if (peer === this.selfId) {
      const r = this.rxTun;
      r.offs[r.n] = off;
      r.lens[r.n] = len;
      r.n++;
      return;
    }
    if (peer === NO_PEER) {
      c.dropUnknownDest++;
      return;
    }
    const p = this.nextPath[peer];
    if (p === null || p === undefined) {
      c.dropNoRoute++;
      return;
    }
    if (!decrementTtl(buf, off)) {
      c.dropTtl++;
      return;
    }
    const mtu = this.innerMtu(p);
    if (len > mtu) {
      if (ipv4DontFragment(buf, off)) {
        c.dropTooBig++;
        this.icmpToward(buf, off, len, mtu);
        return;
      }
      this.sendFragments(p, buf, off, len, mtu, this.relayOut);
      c.relayedPackets++;
      return;
    }
    c.relayedPackets++;
    this.seal(p, FrameType.Data, this.rxPlainView.get(i, len), this.relayOut);
  }

  /** Frag-needed for a relayed packet goes back to its (remote) sender through the overlay. */
  private icmpToward(buf: Buffer, off: number, len: number, mtu: number): void {
    if (this.icmpSlot === this.B) this.flushIcmp();
    const s = this.icmpSlot;
    const n = writeUnreachable(this.icmpBuf, s * 128, buf, off, len, UNREACH_FRAG_NEEDED, mtu, this.o.icmpSource ?? ipv4Dst(buf, off));
    if (n === 0) return;
    const dst = ipv4Dst(this.icmpBuf, s * 128);
    const peer = this.fwd.lookup(dst);
    const p = peer === NO_PEER || peer === this.selfId ? null : this.nextPath[peer];
    if (!p) return;
    // seal() copies the packet into the send ring, so the ICMP slot is free again right after
    this.counters.icmpSent++;
    this.seal(p, FrameType.Data, this.icmpView.get(s, n), this.relayOut);
  }

  private flushTun(): void {
    const r = this.rxTun;
    if (r.n === 0) return;
    const ok = this.tun.writeBatch(r.buf, r.offs, r.lens, r.n);
    const c = this.counters;
    c.tunOutPackets += ok;
    for (let k = 0; k < ok; k++) c.tunOutBytes += r.lens[k];
    c.dropTunFull += r.n - ok;
    r.n = 0;
  }

  // ---- forwarding state -------------------------------------------------------------------------

  /** Rebuilds prefix -> peer and peer -> next-hop path after announcements, routes or sleeves change. */
  private recompute(): void {
    if (this.closed) return;
    const names: PeerName[] = [];
    const entries: Array<{ prefix: ReturnType<typeof parsePrefix>; peer: number }> = [];
    for (const [origin, e] of this.o.prefixes.all()) {
      const id = names.length;
      names.push(origin);
      for (const s of e.prefixes) entries.push({ prefix: parsePrefix(s), peer: id });
    }
    // Stable order: more specific prefixes win by LPM; equal prefixes from two peers: the last wins,
    // so sort by origin to make that choice the same on every router.
    const order = names.map((_, i) => i).sort((a, b) => (names[a] < names[b] ? -1 : 1));
    const rank = new Int32Array(names.length);
    order.forEach((id, r) => { rank[id] = r; });
    entries.sort((a, b) => rank[a.peer] - rank[b.peer]);
    this.fwd = new ForwardingTable(entries);
    this.peerIds = names;
    this.selfId = names.indexOf(this.o.name);
    this.nextPath = names.map((n) => {
      if (n === this.o.name) return null;
      const hop = this.o.routes.unicastNextHop(n);
      const p = hop === undefined ? undefined : this.byPeer.get(hop);
      return p && p.established && !p.closed ? p : null;
    });
    this.publishRoutes(false);
  }

  private publishRoutes(force: boolean): void {
    if (!this.o.host) return;
    const dsts = new Set<string>();
    const mine = new Set(this.o.prefixes.local());
    for (const [origin, e] of this.o.prefixes.all()) {
      if (origin === this.o.name) continue;
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
): SleeveHost {
  return {
    async tunUp(name, mtu) {
      await ipFn(['link', 'set', 'dev', name, 'mtu', String(mtu), 'up']);
    },
    setRoutes(routes) {
      reconciler.setDesired('sleeve', routes);
    },
  };
}
