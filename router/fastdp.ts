// The fastdp overlay: the kernel's VXLAN device (host/vxlan.ts) carries the traffic; this file is only
// its control plane, one path per mesh connection:
//
//   attach     usable? (peer advertises 'fastdp'; with a password the kernel must do ESP) -> 'hello'
//              over the mesh connection (Msg.Overlay, msgpack {v:1, o:'fastdp', t:'hello', mac, vtep,
//              underlay, port, hb, token[, nonce]}) -> on the peer's hello: [ESP keys from the session
//              key + both nonces, xfrm install] -> FDB + neighbour for the peer -> heartbeats.
//   heartbeat  every heartbeatMs two UDP datagrams from our VTEP address to the peer's (so through
//              weave-vx, VXLAN on UDP 6784, ESP when encrypted): a small one and a full-size one
//              (inner MTU - 28) with DF. They carry the receiver's random token, so stray datagrams and
//              an earlier connection's heartbeats do not count. 'hear' control messages tell the peer
//              whether its full-size heartbeats arrive.
//   state      established while full-size heartbeats flow both ways; failed when they stop (UDP 6784
//              dropped, MTU black hole — told apart by the small heartbeats — or the peer gone). A failed
//              path keeps heartbeating, so it reports established again when the path recovers.
//
// DF: Node's dgram cannot set it, so the heartbeat socket is the sleeve's native addon UDP socket
// (IP_PMTUDISC_DO on every datagram): a full-size heartbeat the kernel cannot send unfragmented fails
// with EMSGSIZE locally, and one a smaller link drops on the way never arrives — both fail the path.
//
// Who may send us VXLAN: exactly the peers programmed here (host.setPeer, marked encrypted when the
// path runs under ESP); host/vxlan.ts turns that list into the nft guard on the VXLAN port and, in lazy
// mode, into the device's existence. The heartbeat socket binds to the VTEP address on that device, so
// it follows the device (DeviceHeartbeatIo): opened when it comes up, closed when it goes.
import { randomBytes } from 'crypto';
import type { Clock, TimerHandle } from '../lib/clock';
import { NO_LAG, creditedSilence, type LagCredit } from '../lib/lag';
import { ProtocolError, WeaveError, describeValue, errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';
import type { PeerName } from '../mesh/peer';
import { Msg, type MeshConnection } from '../mesh/types';
import type { VxlanPeer } from '../host/vxlan';
import { deriveEspKeys, deriveSa, newEspNonce, ESP_NONCE_BYTES, type EspKeys, type EspSa } from '../ipsec/keys';
import type { EspSupport, PeerSas } from '../ipsec/xfrm';
import type { TunIo } from './native';
import { EAGAIN, EMSGSIZE, NativeUdp } from './udp';
import { decodeMsg, encodeMsg } from '../mesh/codec';
import { formatAddr, isAddrText, tryParseAddr } from '../lib/addr';
import { errno, errnoName } from '../lib/errno';
import { FASTDP_HB_PORT, VXLAN_PORT } from '../lib/ports';

export const FASTDP = 'fastdp';
/** How long the old inbound SA stays after the peer moved to a new key (password rotation). */
export const FASTDP_REKEY_GRACE_MS = 2000;
/** UDP port of fastdp heartbeats (lib/ports.ts), bound on the VTEP address only. */
export const DEFAULT_FASTDP_HB_PORT = FASTDP_HB_PORT;
export const FASTDP_CTL_VERSION = 1;
/** Inner IPv4 + UDP headers of a heartbeat. */
const HB_HEADERS = 28;
const HB_MAGIC = 0x57464431; // 'WFD1'
/** magic(4) kind(1) flags(1) token(8) */
const HB_MIN = 14;
const HB_SMALL = 1;
const HB_FULL = 2;
const TOKEN_BYTES = 8;
const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

/** What a router puts under Features.overlayParams.fastdp. */
export interface FastDpParams { v: number; mac: string; vtep: string; port: number; hb: number }

/** Reason texts the switch and status show (stable: tests and operators match on them). */
export const REASON = {
  peerNoFastdp: 'peer has no fastdp',
  kernelLacksEsp: 'kernel lacks ESP',
  disabled: 'disabled by flag',
} as const;

/** The heartbeat socket: UDP on our VTEP address with DF. */
export interface HeartbeatIo {
  /** 0 when sent, else an errno (EMSGSIZE: bigger than the route's MTU allows with DF) */
  send(dstIp: string, port: number, payload: Uint8Array): number;
  setReceiver(cb: ((srcIp: string, payload: Uint8Array) => void) | null): void;
  /**
   * Hands what is queued on the socket to the receiver now. The tick calls it before judging: after a
   * stall of the event loop (a saturated host), Node runs due timers before it polls for I/O, and
   * heartbeats waiting in the socket would otherwise count as lost.
   */
  drain(): void;
  close(): void;
  /** cb when the socket has (re)opened and heartbeats can go at once (DeviceHeartbeatIo) */
  onOpen?(cb: () => void): void;
}

/** Kernel FDB/neighbour state per peer: host/vxlan.ts VxlanReconciler fits. */
export interface FastDpHost {
  setPeer(key: string, p: VxlanPeer): void;
  removePeer(key: string): void;
}

/** ipsec/xfrm.ts XfrmManager fits. */
export interface EspInstaller {
  install(p: PeerSas): Promise<unknown>;
  removePeer(local: string, remote: string): Promise<number>;
}

export interface FastDpOptions {
  name: PeerName;
  clock: Clock;
  log: Logger;
  host: FastDpHost;
  io: HeartbeatIo;
  /** our underlay address (the VXLAN device's local) */
  underlay: string;
  /** our VTEP MAC and address (host/vxlan.ts vtepMacFor / vtepIpFor) */
  mac: string;
  vtep: string;
  /** VXLAN UDP port, default 6784 */
  port?: number;
  /** heartbeat UDP port, default 6785 */
  hbPort?: number;
  /** MTU of the VXLAN device: what containers get over fastdp, and the size of full heartbeats */
  mtu: number;
  /** ipsec/xfrm.ts supportsEsp(), run once at startup */
  esp: EspSupport;
  /** needed when encrypted connections should use fastdp (kernels with ESP) */
  xfrm?: EspInstaller;
  /** default 1000 ms */
  heartbeatMs?: number;
  /**
   * an established path fails when no full-size heartbeat arrived for this long; default 5000 ms (5
   * heartbeats: 3.5 s flapped to the sleeve under a saturating transfer in a one-CPU UML guest)
   */
  deadMs?: number;
  /** a new path fails when not established within this; default 10000 ms */
  establishTimeoutMs?: number;
  /** this process's event-loop stalls (lib/lag.ts): silence and establishment do not count them; default NO_LAG */
  lag?: LagCredit;
}

export interface FastDpStatus { overlay: string | null; encrypted: boolean; mtu?: number; reason?: string }

export interface FastDpHandle {
  onMessage(payload: Uint8Array): void;
  close(): void;
  status(): FastDpStatus;
}

export interface FastDpCounters {
  hbSent: number;
  hbReceived: number;
  hbSendErrors: number;
  hbUnknown: number;
  ctlIn: number;
  ctlOut: number;
}

interface Remote { mac: string; vtep: string; underlay: string; port: number; hb: number; token: Buffer; nonce?: Buffer }

class FdPath {
  remote: Remote | null = null;
  ready = false; // kernel state programmed (ESP first when encrypted)
  weHear = false;
  theyHear = false;
  established = false;
  failReported = false;
  everEstablished = false;
  closed = false;
  lastFullRx = -Infinity;
  lastSmallRx = -Infinity;
  failingSince = 0;
  lastSendErr = 0;
  /** heartbeats of this connection sent and heard (the per-connection traffic fastdp can count) */
  hbSent = 0;
  hbReceived = 0;
  /** permanent: this connection never uses fastdp (peer lacks it, kernel lacks ESP ...) */
  unusable: string | null = null;
  reason = 'waiting for the peer\'s fastdp parameters';
  keys: EspKeys | null = null;
  /** password rotation: inbound SAs held next to keys.in while the old and the new key overlap */
  inExtra: EspSa[] = [];
  /** xfrm installs of this path, one at a time and in order */
  installs: Promise<unknown> = Promise.resolve();
  offKey: (() => void) | undefined;
  dropTimer: TimerHandle | undefined;
  constructor(
    readonly conn: MeshConnection,
    readonly peer: PeerName,
    readonly cb: { established(): void; failed(reason: string): void },
    readonly token: Buffer,
    readonly nonce: Buffer | null,
    readonly startedAt: number,
  ) {}
}

function parseParams(x: unknown): FastDpParams | undefined {
  if (typeof x !== 'object' || x === null) return undefined;
  const p = x as Record<string, unknown>;
  if (p.v !== 1 || typeof p.mac !== 'string' || !MAC_RE.test(p.mac) || !isAddrText(p.vtep)) return undefined;
  if (!isPort(p.port) || !isPort(p.hb)) return undefined;
  return { v: 1, mac: p.mac, vtep: p.vtep, port: p.port as number, hb: p.hb as number };
}

function isPort(x: unknown): boolean {
  return typeof x === 'number' && Number.isInteger(x) && x > 0 && x < 65536;
}

function bytes(x: unknown, n: number, what: string): Buffer {
  if (!(x instanceof Uint8Array) || x.length !== n) throw new ProtocolError(`fastdp hello: bad ${what}`);
  return Buffer.from(x);
}

export interface FastDpHello { t: 'hello'; mac: string; vtep: string; underlay: string; port: number; hb: number; token: Buffer; nonce?: Buffer }
export interface FastDpHear { t: 'hear'; on: boolean }
/** Sent when this side will not run fastdp on the connection, so the peer can say why. */
export interface FastDpOff { t: 'off'; why: string }

/** Decodes and validates one fastdp control message; null when it belongs to another overlay. */
export function decodeFastDpCtl(payload: Uint8Array): FastDpHello | FastDpHear | FastDpOff | null {
  const m = decodeMsg(payload, 'fastdp control');
  if (typeof m !== 'object' || m === null || Object.getPrototypeOf(m) !== Object.prototype) throw new ProtocolError('fastdp control: expected a map');
  const c = m as Record<string, unknown>;
  if (typeof c.o !== 'string') throw new ProtocolError('fastdp control: no overlay name');
  if (c.o !== FASTDP) return null;
  if (c.v !== FASTDP_CTL_VERSION) throw new ProtocolError('fastdp control: unsupported version', { v: describeValue(c.v) });
  if (c.t === 'hello') {
    if (typeof c.mac !== 'string' || !MAC_RE.test(c.mac)) throw new ProtocolError('fastdp hello: bad mac');
    if (!isAddrText(c.vtep)) throw new ProtocolError('fastdp hello: bad vtep');
    if (!isAddrText(c.underlay)) throw new ProtocolError('fastdp hello: bad underlay');
    if (!isPort(c.port)) throw new ProtocolError('fastdp hello: bad port');
    if (!isPort(c.hb)) throw new ProtocolError('fastdp hello: bad heartbeat port');
    const out: FastDpHello = { t: 'hello', mac: c.mac, vtep: c.vtep, underlay: c.underlay, port: c.port as number, hb: c.hb as number, token: bytes(c.token, TOKEN_BYTES, 'token') };
    if (c.nonce !== undefined) out.nonce = bytes(c.nonce, ESP_NONCE_BYTES, 'nonce');
    return out;
  }
  if (c.t === 'hear') {
    if (typeof c.on !== 'boolean') throw new ProtocolError('fastdp hear: bad flag');
    return { t: 'hear', on: c.on };
  }
  if (c.t === 'off') {
    if (typeof c.why !== 'string' || c.why.length > 200) throw new ProtocolError('fastdp off: bad reason');
    return { t: 'off', why: c.why };
  }
  throw new ProtocolError('fastdp control: unknown type', { t: describeValue(c.t) });
}

export function encodeFastDpCtl(body: Record<string, unknown>): Uint8Array {
  return encodeMsg({ v: FASTDP_CTL_VERSION, o: FASTDP, ...body });
}

export class FastDp {
  readonly mtu: number;
  readonly port: number;
  readonly hbPort: number;
  readonly counters: FastDpCounters = { hbSent: 0, hbReceived: 0, hbSendErrors: 0, hbUnknown: 0, ctlIn: 0, ctlOut: 0 };
  private readonly o: FastDpOptions;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly lag: LagCredit;
  private readonly heartbeatMs: number;
  private readonly deadMs: number;
  private readonly establishTimeoutMs: number;
  private readonly paths = new Set<FdPath>();
  private readonly byToken = new Map<string, FdPath>();
  private readonly byPeer = new Map<PeerName, FdPath>();
  private readonly full: Buffer;
  private readonly small = Buffer.alloc(HB_MIN);
  private timer: TimerHandle | undefined;
  private closed = false;

  constructor(o: FastDpOptions) {
    this.o = o;
    this.log = o.log.child({ component: 'fastdp' });
    this.clock = o.clock;
    this.lag = o.lag ?? NO_LAG;
    this.mtu = o.mtu;
    this.port = o.port ?? VXLAN_PORT;
    this.hbPort = o.hbPort ?? DEFAULT_FASTDP_HB_PORT;
    if (!(o.mtu >= 576 && o.mtu <= 65535)) throw new WeaveError('EINVAL', `fastdp MTU ${o.mtu} out of range`);
    if (!isAddrText(o.underlay) || !isAddrText(o.vtep) || !MAC_RE.test(o.mac)) throw new WeaveError('EINVAL', 'fastdp: bad underlay, VTEP address or MAC', { underlay: o.underlay, vtep: o.vtep, mac: o.mac });
    this.heartbeatMs = o.heartbeatMs ?? 1000;
    this.deadMs = o.deadMs ?? 5000;
    this.establishTimeoutMs = o.establishTimeoutMs ?? 10000;
    this.full = Buffer.alloc(o.mtu - HB_HEADERS);
    this.full.writeUInt32BE(HB_MAGIC, 0);
    this.full[4] = HB_FULL;
    this.small.writeUInt32BE(HB_MAGIC, 0);
    this.small[4] = HB_SMALL;
    o.io.setReceiver((src, p) => this.onDatagram(src, p));
    // the first heartbeats of a new path went nowhere while the device was being made
    o.io.onOpen?.(() => { for (const p of this.paths) this.sendHeartbeats(p); });
    this.timer = this.clock.setTimeout(() => this.tick(), this.heartbeatMs);
  }

  /** Features.overlayParams entry: put it under the key 'fastdp'. */
  overlayParams(): FastDpParams {
    return { v: 1, mac: this.o.mac, vtep: this.o.vtep, port: this.port, hb: this.hbPort };
  }

  /** A neighbour's VTEP address once its fastdp path is programmed (for routes `via` it). */
  remoteVtep(peer: PeerName): string | undefined {
    const p = this.byPeer.get(peer);
    return p && p.ready && !p.closed ? p.remote?.vtep : undefined;
  }

  /** OverlayManager.attach for one authenticated connection. */
  attach(conn: MeshConnection, cb: { established(): void; failed(reason: string): void }): FastDpHandle {
    if (this.closed) throw new WeaveError('ECLOSED', 'fastdp is closed');
    const encrypted = conn.dataKey !== null;
    const p = new FdPath(conn, conn.remote.name, cb, randomBytes(TOKEN_BYTES), encrypted ? newEspNonce() : null, this.clock.now());
    this.paths.add(p);
    this.byToken.set(p.token.toString('hex'), p);
    const remoteParams = parseParams(conn.remote.overlayParams?.[FASTDP]);
    if (!conn.remote.overlays.includes(FASTDP) || !remoteParams) {
      this.markUnusable(p, REASON.peerNoFastdp, false);
    } else if (encrypted && !this.o.esp.ok) {
      this.log.info({ peer: p.peer, detail: this.o.esp.reason }, 'encrypted connection: fastdp needs kernel ESP, which this kernel lacks');
      this.markUnusable(p, REASON.kernelLacksEsp);
    } else if (encrypted && !this.o.xfrm) {
      this.markUnusable(p, 'no IPsec manager configured');
    } else {
      const hello: Record<string, unknown> = { t: 'hello', mac: this.o.mac, vtep: this.o.vtep, underlay: this.o.underlay, port: this.port, hb: this.hbPort, token: p.token };
      if (p.nonce) {
        hello.nonce = p.nonce;
        p.offKey = conn.watchDataKey?.((step, key) => this.rekey(p, step, key));
      }
      this.sendCtl(p, hello);
    }
    return {
      onMessage: (payload) => this.onCtl(p, payload),
      close: () => this.detach(p),
      status: () => this.pathStatus(p),
    };
  }

  /** Stops timers and the heartbeat socket; kernel entries are the caller's (VxlanReconciler.destroy). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.clock.clearTimeout(this.timer);
    for (const p of [...this.paths]) this.detach(p);
    this.o.io.setReceiver(null);
    this.o.io.close();
  }

  private markUnusable(p: FdPath, reason: string, tellPeer = true): void {
    if (p.unusable) return;
    // the peer would otherwise wait for our hello until its timeout and report only that
    if (tellPeer && p.conn.remote.overlays.includes(FASTDP)) this.sendCtl(p, { t: 'off', why: reason });
    p.unusable = reason;
    p.reason = reason;
    p.failReported = true;
    if (p.ready && this.byPeer.get(p.peer) === p) {
      p.ready = false;
      this.byPeer.delete(p.peer);
      this.o.host.removePeer(p.peer);
    }
    this.log.debug({ peer: p.peer, reason }, 'fastdp not used on this connection');
    // after attach has returned: the caller must hold the handle before it hears about it
    this.clock.setTimeout(() => { if (!p.closed) p.cb.failed(reason); }, 0);
  }

  private sendCtl(p: FdPath, body: Record<string, unknown>): void {
    if (p.closed) return;
    this.counters.ctlOut++;
    p.conn.send(Msg.Overlay, encodeFastDpCtl(body));
  }

  private onCtl(p: FdPath, payload: Uint8Array): void {
    if (p.closed) return;
    const m = decodeFastDpCtl(payload);
    if (!m) return;
    this.counters.ctlIn++;
    if (m.t === 'hear') {
      p.theyHear = m.on;
      this.evaluate(p);
      return;
    }
    if (m.t === 'off') {
      const wasEstablished = p.established;
      p.established = false;
      this.markUnusable(p, m.why === REASON.kernelLacksEsp ? 'peer\'s kernel lacks ESP' : `peer does not use fastdp: ${m.why}`, false);
      if (wasEstablished) this.log.warn({ peer: p.peer, reason: p.reason }, 'fastdp turned off by the peer');
      return;
    }
    if (p.unusable) return; // e.g. the peer can do ESP and we cannot: it learns from our silence + status
    if (p.remote) {
      if (p.remote.token.equals(m.token)) return;
      throw new ProtocolError('fastdp hello: parameters changed on a live connection');
    }
    if (m.vtep === this.o.vtep || m.mac === this.o.mac) {
      this.markUnusable(p, `VTEP collision: the peer has our VTEP ${m.vtep === this.o.vtep ? `address ${m.vtep}` : `MAC ${m.mac}`}`);
      return;
    }
    for (const q of this.paths) {
      if (q !== p && !q.closed && q.peer !== p.peer && q.remote && (q.remote.vtep === m.vtep || q.remote.mac === m.mac)) {
        this.markUnusable(p, `VTEP collision with peer ${q.peer} (${m.vtep})`);
        return;
      }
    }
    if (p.nonce && !m.nonce) {
      this.markUnusable(p, 'the peer sent no ESP nonce on an encrypted connection');
      return;
    }
    p.remote = { mac: m.mac, vtep: m.vtep, underlay: m.underlay, port: m.port, hb: m.hb, token: m.token, nonce: m.nonce };
    p.reason = 'waiting for fastdp heartbeats';
    if (p.nonce) {
      try {
        p.keys = deriveEspKeys(p.conn.dataKey!, p.nonce, m.nonce!);
      } catch (e) {
        this.markUnusable(p, `ESP keys: ${errMsg(e)}`);
        return;
      }
      // ESP first: the kernel must never send this peer plain VXLAN
      // on the path's install chain: a re-key must not race the first install
      p.installs = this.o.xfrm!.install({ local: this.o.underlay, remote: m.underlay, keys: p.keys }).then(
        () => this.program(p),
        (e) => {
          this.log.error({ peer: p.peer, err: errMsg(e) }, 'installing ESP failed; fastdp not used on this connection');
          if (!p.closed) this.markUnusable(p, `ESP install failed: ${errMsg(e)}`);
        },
      );
      return;
    }
    this.program(p);
  }

  private program(p: FdPath): void {
    if (p.closed || !p.remote) return;
    const prev = this.byPeer.get(p.peer);
    this.byPeer.set(p.peer, p);
    if (prev && prev !== p) this.log.info({ peer: p.peer }, 'a newer connection to the peer replaces the old fastdp path');
    try {
      // encrypted: the VXLAN guard takes this peer's datagrams only after IPsec decrypted them
      this.o.host.setPeer(p.peer, { mac: p.remote.mac, vtep: p.remote.vtep, underlay: p.remote.underlay, encrypted: p.keys !== null });
    } catch (e) {
      this.markUnusable(p, `cannot program the VXLAN device: ${errMsg(e)}`);
      return;
    }
    p.ready = true;
    this.log.debug({ peer: p.peer, vtep: p.remote.vtep, underlay: p.remote.underlay, encrypted: p.keys !== null }, 'fastdp peer programmed');
    this.sendHeartbeats(p);
  }

  /**
   * Password rotation re-keys the connection (mesh/rotation.ts), per direction and make-before-break:
   * 'accept' adds the new inbound SA, 'use' moves the outbound SA to the new key, 'settled' makes the
   * new inbound SA the current one and removes the old after REKEY_GRACE_MS.
   */
  private rekey(p: FdPath, step: 'accept' | 'use' | 'settled', key: Uint8Array): void {
    if (p.closed || !p.keys || !p.nonce || !p.remote?.nonce) return; // not installed yet: the hello uses conn.dataKey
    const local = p.nonce;
    const remote = p.remote.nonce;
    const keys = p.keys;
    if (step === 'use') {
      p.keys = { out: deriveSa(key, local, remote), in: keys.in };
    } else {
      const sa = deriveSa(key, remote, local);
      const others = p.inExtra.filter((x) => x.spi !== sa.spi);
      if (step === 'accept') {
        if (keys.in.spi === sa.spi) return;
        p.inExtra = [...others, sa];
      } else {
        if (keys.in.spi === sa.spi) return;
        p.keys = { out: keys.out, in: sa };
        p.inExtra = [keys.in, ...others];
        this.clock.clearTimeout(p.dropTimer);
        p.dropTimer = this.clock.setTimeout(() => {
          p.dropTimer = undefined;
          p.inExtra = [];
          this.reinstall(p, 'old inbound SA removed');
        }, FASTDP_REKEY_GRACE_MS);
      }
    }
    this.reinstall(p, step);
  }

  private reinstall(p: FdPath, why: string): void {
    p.installs = p.installs.then(async () => {
      if (p.closed || !p.keys || !p.remote) return;
      try {
        await this.o.xfrm!.install({ local: this.o.underlay, remote: p.remote.underlay, keys: p.keys, extraIn: [...p.inExtra] });
        this.log.info({ peer: p.peer, step: why }, 'fastdp ESP re-keyed');
      } catch (e) {
        this.log.error({ peer: p.peer, step: why, err: errMsg(e) }, 'ESP re-key failed; the sleeve carries the connection if fastdp stops');
      }
    });
  }

  private detach(p: FdPath): void {
    if (p.closed) return;
    p.closed = true;
    p.offKey?.();
    this.clock.clearTimeout(p.dropTimer);
    this.paths.delete(p);
    this.byToken.delete(p.token.toString('hex'));
    if (this.byPeer.get(p.peer) === p) {
      this.byPeer.delete(p.peer);
      this.o.host.removePeer(p.peer);
      if (p.keys && p.remote) {
        const remote = p.remote.underlay;
        this.o.xfrm!.removePeer(this.o.underlay, remote).catch((e) => this.log.error({ peer: p.peer, err: errMsg(e) }, 'removing ESP states failed'));
      }
    }
  }

  /**
   * Each connection's fastdp heartbeats: the kernel's VXLAN device counts its traffic for all peers
   * together, so heartbeats are what fastdp can say per connection.
   */
  pathCounters(): Array<{ peer: PeerName; established: boolean; hbSent: number; hbReceived: number; lastRxAgoMs: number | null }> {
    const now = this.clock.now();
    return [...this.paths].filter((p) => !p.closed).map((p) => {
      const rx = Math.max(p.lastFullRx, p.lastSmallRx);
      return { peer: p.peer, established: p.established, hbSent: p.hbSent, hbReceived: p.hbReceived, lastRxAgoMs: rx === -Infinity ? null : Math.max(0, Math.round(now - rx)) };
    });
  }

  private pathStatus(p: FdPath): FastDpStatus {
    const s: FastDpStatus = { overlay: p.established ? FASTDP : null, encrypted: p.keys !== null, mtu: this.mtu };
    if (!p.established) s.reason = p.reason;
    return s;
  }

  private onDatagram(src: string, d: Uint8Array): void {
    if (d.length < HB_MIN || ((d[0] << 24) | (d[1] << 16) | (d[2] << 8) | d[3]) >>> 0 !== HB_MAGIC) {
      this.counters.hbUnknown++;
      return;
    }
    const p = this.byToken.get(Buffer.from(d.buffer, d.byteOffset + 6, TOKEN_BYTES).toString('hex'));
    // only through the VXLAN path counts: the peer's VTEP address is routed nowhere else
    if (!p || p.closed || !p.remote || src !== p.remote.vtep) {
      this.counters.hbUnknown++;
      return;
    }
    this.counters.hbReceived++;
    p.hbReceived++;
    const now = this.clock.now();
    if (d[4] === HB_FULL) {
      if (d.length < this.full.length) {
        // the peer's MTU is smaller: its full heartbeat proves less than ours needs; count it as small
        p.lastSmallRx = now;
        return;
      }
      p.lastFullRx = now;
      if (!p.weHear) {
        p.weHear = true;
        this.sendCtl(p, { t: 'hear', on: true });
        this.evaluate(p);
      }
    } else {
      p.lastSmallRx = now;
    }
  }

  private sendHeartbeats(p: FdPath): void {
    if (!p.ready || !p.remote || p.closed) return;
    p.remote.token.copy(this.small, 6);
    p.remote.token.copy(this.full, 6);
    const e1 = this.o.io.send(p.remote.vtep, p.remote.hb, this.small);
    const e2 = this.o.io.send(p.remote.vtep, p.remote.hb, this.full);
    this.counters.hbSent += (e1 === 0 ? 1 : 0) + (e2 === 0 ? 1 : 0);
    p.hbSent += (e1 === 0 ? 1 : 0) + (e2 === 0 ? 1 : 0);
    const err = e2 || e1;
    if (err !== 0 && err !== EAGAIN) {
      this.counters.hbSendErrors++;
      if (err !== p.lastSendErr) this.log.debug({ peer: p.peer, errno: errnoName(err), size: this.full.length }, 'fastdp heartbeat send failed');
    }
    p.lastSendErr = err;
  }

  private evaluate(p: FdPath): void {
    if (p.closed || p.unusable) return;
    const est = p.ready && p.weHear && p.theyHear;
    if (est === p.established) return;
    p.established = est;
    if (est) {
      p.failReported = false;
      p.everEstablished = true;
      p.reason = '';
      this.log.info({ peer: p.peer, vtep: p.remote?.vtep, underlay: p.remote?.underlay, mtu: this.mtu, encrypted: p.keys !== null }, 'fastdp established');
      p.cb.established();
    } else {
      p.failingSince = this.clock.now();
      p.reason = this.failReason(p);
      this.log.warn({ peer: p.peer, reason: p.reason }, 'fastdp lost');
      p.failReported = true;
      p.cb.failed(p.reason);
    }
  }

  private failReason(p: FdPath): string {
    const since = new Date(p.failingSince || this.clock.now()).toISOString();
    const now = this.clock.now();
    let why: string;
    if (p.lastSendErr === EMSGSIZE) why = `full-size (${this.mtu}) heartbeats exceed the local path MTU`;
    else if (!p.weHear && now - p.lastSmallRx <= this.deadMs) why = `small heartbeats arrive but full-size (${this.mtu}) ones do not: MTU black hole`;
    else if (!p.weHear) why = 'no heartbeats from the peer over VXLAN';
    else why = 'the peer does not receive our heartbeats over VXLAN';
    return `heartbeats failing since ${since}: ${why}`;
  }

  // The heartbeats are read on this thread: drain() first takes what arrived while the loop was
  // busy, so no verdict waits for a poll phase here (lib/lag.ts). Our own stalls are still credited:
  // while this loop stalled it sent no beats, so the peer's answers and the establishment lag too.
  private tick(): void {
    if (this.closed) return;
    this.o.io.drain();
    const now = this.clock.now();
    for (const p of [...this.paths]) {
      if (p.closed || p.unusable) continue;
      if (p.ready) {
        const hear = now - p.lastFullRx <= this.deadMs || (p.weHear && creditedSilence(this.lag, now, p.lastFullRx, this.deadMs) <= this.deadMs);
        if (hear !== p.weHear) {
          p.weHear = hear;
          this.sendCtl(p, { t: 'hear', on: hear });
          this.evaluate(p);
          if (p.closed) continue;
        }
        this.sendHeartbeats(p);
        // a failed path's reason follows what we see now (small ones arriving or not)
        if (!p.established && p.everEstablished) p.reason = this.failReason(p);
      }
      if (!p.established && !p.failReported && creditedSilence(this.lag, now, p.startedAt, this.establishTimeoutMs) >= this.establishTimeoutMs) {
        p.failReported = true;
        p.failingSince = p.startedAt;
        p.reason = !p.remote ? 'the peer sent no fastdp parameters' : !p.ready ? 'fastdp kernel state not ready' : this.failReason(p);
        this.log.warn({ peer: p.peer, reason: p.reason }, 'fastdp could not be established');
        p.cb.failed(p.reason);
      }
    }
    this.timer = this.clock.setTimeout(() => this.tick(), this.heartbeatMs);
  }
}

// ---- the heartbeat socket follows the VXLAN device -----------------------------------------------

/** host/vxlan.ts VxlanReconciler fits: fn(up) after each pass. */
export interface DeviceEvents { onDevice(fn: (up: boolean) => void): () => void }

/**
 * The heartbeat socket binds to our VTEP address, which exists only while the VXLAN device does (lazy
 * mode): opened by `open` when the device is up, closed when it goes. Meanwhile send() answers EAGAIN
 * (try later: fastdp neither counts nor reports it) and nothing is received.
 */
export class DeviceHeartbeatIo implements HeartbeatIo {
  private io: HeartbeatIo | null = null;
  private receiver: ((srcIp: string, payload: Uint8Array) => void) | null = null;
  private openCb: (() => void) | null = null;
  private readonly off: () => unknown;
  private closed = false;
  private lastErr = '';
  /** times the socket was opened (tests and the log) */
  opens = 0;

  constructor(private readonly open: () => HeartbeatIo, device: DeviceEvents, private readonly log: Logger) {
    this.off = device.onDevice((up) => this.onDevice(up));
  }

  get isOpen(): boolean { return this.io !== null; }

  private onDevice(up: boolean): void {
    if (this.closed || up === (this.io !== null)) return;
    if (!up) {
      const io = this.io!;
      this.io = null;
      io.setReceiver(null);
      io.close();
      this.log.debug('VXLAN device gone: heartbeat socket closed');
      return;
    }
    try {
      this.io = this.open();
    } catch (e) {
      // the address vanished between the pass and now: the next pass tries again
      if (errMsg(e) !== this.lastErr) this.log.warn({ err: errMsg(e) }, 'cannot open the fastdp heartbeat socket; retrying after the next VXLAN pass');
      this.lastErr = errMsg(e);
      return;
    }
    this.lastErr = '';
    this.opens++;
    if (this.receiver) this.io.setReceiver(this.receiver);
    this.log.debug('VXLAN device up: heartbeat socket open');
    this.openCb?.();
  }

  send(dstIp: string, port: number, payload: Uint8Array): number {
    return this.io ? this.io.send(dstIp, port, payload) : EAGAIN;
  }

  setReceiver(cb: ((srcIp: string, payload: Uint8Array) => void) | null): void {
    this.receiver = cb;
    this.io?.setReceiver(cb);
  }

  drain(): void {
    this.io?.drain();
  }

  onOpen(cb: () => void): void {
    this.openCb = cb;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.off();
    this.io?.setReceiver(null);
    this.io?.close();
    this.io = null;
  }
}

// ---- the native heartbeat socket ----------------------------------------------------------------

/** UDP through the native addon: DF on every datagram. A few datagrams per second per peer. */
export class NativeHeartbeatIo implements HeartbeatIo {
  private readonly udp: NativeUdp;
  private readonly buf: Buffer;
  private readonly offs = new Int32Array(1);
  private readonly lens = new Int32Array(1);
  private readonly ips = new Uint32Array(1);
  private readonly ports = new Int32Array(1);
  private readonly errs = new Int32Array(1);
  private readonly rxBuf: Buffer;
  private readonly rxLens = new Int32Array(16);
  private readonly rxIps = new Uint32Array(16);
  private readonly rxPorts = new Int32Array(16);
  private readonly stride: number;

  constructor(io: TunIo, bindIp: string, port: number, maxSize = 65535) {
    const ip = tryParseAddr(bindIp);
    if (ip === undefined) throw new WeaveError('EINVAL', `bad heartbeat bind address ${bindIp}`);
    this.udp = new NativeUdp(io, ip, port, 1 << 20);
    this.buf = Buffer.alloc(maxSize);
    this.stride = maxSize;
    this.rxBuf = Buffer.alloc(maxSize * 4);
  }

  get port(): number { return this.udp.port; }

  send(dstIp: string, port: number, payload: Uint8Array): number {
    const ip = tryParseAddr(dstIp);
    if (ip === undefined || payload.length > this.buf.length) return errno.EINVAL;
    this.buf.set(payload, 0);
    this.ips[0] = ip;
    this.ports[0] = port;
    this.lens[0] = payload.length;
    this.offs[0] = 0;
    const n = this.udp.sendBatch(this.buf, this.offs, this.lens, this.ips, this.ports, this.errs, 1);
    return n === 1 ? 0 : this.errs[0] || EAGAIN;
  }

  private receiver: ((srcIp: string, payload: Uint8Array) => void) | null = null;

  setReceiver(cb: ((srcIp: string, payload: Uint8Array) => void) | null): void {
    this.receiver = cb;
    this.udp.setReadable(cb ? () => this.drain() : null);
  }

  drain(): void {
    const cb = this.receiver;
    if (!cb) return;
    for (;;) {
      const n = this.udp.recvBatch(this.rxBuf, this.stride, 4, this.rxLens, this.rxIps, this.rxPorts);
      for (let i = 0; i < n; i++) {
        const len = Math.min(this.rxLens[i], this.stride);
        cb(formatAddr(this.rxIps[i]), this.rxBuf.subarray(i * this.stride, i * this.stride + len));
      }
      if (n < 4) break;
    }
  }

  close(): void {
    this.udp.close();
  }
}
