// TCP transport: listens and dials on port 6783, runs the wire handshake (mesh/wire.ts) on each
// socket and hands out authenticated MeshConnections. Owns the per-connection timers (handshake
// deadline, heartbeats, read timeout, all on the injected Clock), accept rate limiting (per source
// address and overall), the password ring (mesh/rotation.ts: which passwords new and live
// connections accept), and the counters the metrics endpoint reports. Everything protocol-shaped
// lives in wire.ts.
import * as net from 'net';
import { type CryptoEngine } from './crypto';
import { ProtocolError, RefusedError, WeaveError, errMsg } from '../lib/errors';
import { parseHostPort } from '../lib/addr';
import { CONTROL_PORT } from '../lib/ports';
import { untilAligned, type Clock, type TimerHandle } from '../lib/clock';
import { NO_LAG, creditedSilence, type LagCredit } from '../lib/lag';
import type { Logger } from '../lib/log';
import { type ConnectFailure, type DataKeyWatcher, type Features, type MeshConnection, Msg, type Transport } from './types';
import { DEFAULT_MAX_FRAME, type Established, type RekeyStep, type Secret, WireSession } from './wire';
import { PasswordRing, type RotationStatus } from './rotation';

export const DEFAULT_PORT = CONTROL_PORT;

export interface TcpTransportOptions {
  /** listen address; '' = all addresses */
  host: string;
  /** listen port; 0 picks a free one (see address()) */
  port: number;
  /** shared secret; null or empty = unencrypted (ignored when `passwords` is given) */
  password: Buffer | null;
  /** the password ring (rotation); default: a ring holding `password` */
  passwords?: PasswordRing;
  crypto: CryptoEngine;
  clock: Clock;
  log: Logger;
  /**
   * this process's event-loop stalls (lib/lag.ts): the handshake and read timeouts do not count
   * them; default NO_LAG
   */
  lag?: LagCredit;
  minVersion?: number;
  maxVersion?: number;
  handshakeTimeoutMs?: number;
  /** default 10000 ms */
  heartbeatMs?: number;
  /** default 3 * heartbeatMs */
  readTimeoutMs?: number;
  /** all inbound connections together; default 20/s, burst 40 */
  acceptRate?: AcceptRate;
  /**
   * per source (IPv4 address, IPv6 /64), checked first, so one flooding source spends its own tokens
   * and never the shared ones; default 5/s, burst 10
   */
  acceptRatePerSource?: AcceptRate;
  /** sources the per-source limit remembers at once (least recently seen go first); default 4096 */
  maxAcceptSources?: number;
  maxFrame?: number;
  /** a connection whose unsent bytes exceed this is closed (the peer is not reading) */
  maxSendQueueBytes?: number;
  /**
   * --trusted-subnets: whether the peer at this IP is on a network we trust. When both ends trust each
   * other, the overlays carry the connection's data unencrypted (dataKey null); the control channel
   * stays encrypted either way.
   */
  trusts?: (ip: string) => boolean;
}

export interface TransportCounters {
  accepted: number;
  established: { inbound: number; outbound: number };
  refused: Record<string, number>;
  /** inbound connections closed by an accept limit (per source or overall) */
  rateLimited: number;
  /** of those, by the per-source limit */
  rateLimitedBySource: number;
  /** live connections that moved to a newer password (password rotation) */
  rekeyed: number;
  /** connections closed because they still used a password no longer accepted (rotation finished) */
  closedStalePassword: number;
  framesIn: number;
  framesOut: number;
  bytesIn: number;
  bytesOut: number;
  /** established connections that have since closed (any reason) */
  closed: number;
  /** established connections closed for a malformed or undecryptable frame */
  protocolErrors: number;
  /** exceptions thrown by onMessage/onClose handlers (logged, then ignored) */
  handlerErrors: number;
}

/** "host:port", "[v6]:port", "host" or "v6" (port defaults to DEFAULT_PORT): lib/addr parseHostPort; a UsageError. */
export function parseAddress(address: string, defaultPort = DEFAULT_PORT): { host: string; port: number } {
  return parseHostPort(address.trim(), defaultPort, { what: 'peer address' });
}

function fmtAddr(ip: string | undefined, port: number | undefined): string {
  if (!ip) return '?';
  const h = ip.startsWith('::ffff:') && ip.includes('.') ? ip.slice(7) : ip;
  return h.includes(':') ? `[${h}]:${port}` : `${h}:${port}`;
}

export interface AcceptRate { perSecond: number; burst: number }

/** Token bucket on the injected clock: perSecond refill, at most burst tokens. */
class TokenBucket {
  private tokens: number;
  private last: number;
  constructor(private readonly clock: Clock, private readonly perSecond: number, private readonly burst: number) {
    this.tokens = burst;
    this.last = clock.now();
  }
  private refill(now: number): void {
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) * this.perSecond) / 1000);
    this.last = now;
  }
  take(): boolean {
    this.refill(this.clock.now());
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
  /** Refilled to the brim: indistinguishable from a new bucket, so it can be forgotten. */
  full(now: number): boolean {
    return this.tokens + ((now - this.last) * this.perSecond) / 1000 >= this.burst;
  }
}

/** The key a source is limited by: the IPv4 address, or the /64 of an IPv6 one (one host's usual share). */
export function sourceKey(ip: string): string {
  const a = ip.startsWith('::ffff:') && ip.includes('.') ? ip.slice(7) : ip;
  if (!a.includes(':')) return a;
  const [head, tail = ''] = a.toLowerCase().split('::');
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = a.includes('::') ? [...h, ...Array(Math.max(0, 8 - h.length - t.length)).fill('0'), ...t] : h;
  return `${groups.slice(0, 4).map((g) => g.replace(/^0+(?=.)/, '')).join(':')}::/64`;
}

/**
 * Accept limits: a bucket per source, then one for everybody. A source over its own limit is refused
 * before it touches the shared bucket, so a flood from one address cannot lock others out. Memory is
 * bounded: buckets live in least-recently-used order, a bucket that has refilled (the source went
 * idle) is dropped, and beyond maxSources the least recently seen goes (it comes back with a fresh
 * bucket, which only ever favours that source; the shared bucket still caps the total).
 */
export class AcceptLimiter {
  private readonly overall: TokenBucket;
  private readonly sources = new Map<string, TokenBucket>();
  constructor(private readonly clock: Clock, overall: AcceptRate, private readonly perSource: AcceptRate, private readonly maxSources = 4096) {
    for (const [what, r] of [['acceptRate', overall], ['acceptRatePerSource', perSource]] as const) {
      if (!(r.perSecond > 0) || !(r.burst >= 1)) throw new WeaveError('EINVAL', `${what} must have perSecond > 0 and burst >= 1`, { ...r });
    }
    this.overall = new TokenBucket(clock, overall.perSecond, overall.burst);
  }

  get size(): number {
    return this.sources.size;
  }

  /** 'ok', or which limit refused the connection. */
  take(ip: string): 'ok' | 'source' | 'overall' {
    const now = this.clock.now();
    const key = sourceKey(ip);
    let b = this.sources.get(key);
    if (b) this.sources.delete(key); // re-inserted below: most recently seen last
    this.expire(now);
    b ??= new TokenBucket(this.clock, this.perSource.perSecond, this.perSource.burst);
    this.sources.set(key, b);
    if (!b.take()) return 'source';
    return this.overall.take() ? 'ok' : 'overall';
  }

  private expire(now: number): void {
    // oldest first: stop at the first source that is still busy (later ones were seen more recently)
    for (const [k, b] of this.sources) {
      if (this.sources.size < this.maxSources && !b.full(now)) break;
      this.sources.delete(k);
    }
  }
}

const MAX_QUEUED_BEFORE_HANDLER = 10_000;
// After we end() a socket, give the peer this long to read our last bytes and close its side.
const LINGER_MS = 2000;
const CORK_MAX_BYTES = 64 * 1024;

type ConnState = 'handshake' | 'open' | 'closed';

class TcpConnection implements MeshConnection {
  id = '';
  remoteAddr: string;
  localAddr = '';
  encrypted = false;
  sessionKey: Uint8Array | null = null;
  dataKey: Uint8Array | null = null;
  local: Features;
  private readonly keyWatchers = new Set<DataKeyWatcher>();
  remote!: Features;

  private state: ConnState = 'handshake';
  private readonly session: WireSession;
  private hsTimer: TimerHandle | undefined;
  private hbTimer: TimerHandle | undefined;
  private rtTimer: TimerHandle | undefined;
  private lingerTimer: TimerHandle | undefined;
  private lastRead: number;
  private readonly startedAt: number;
  private closeReason: string | null = null;
  private msgHandler: ((type: number, payload: Uint8Array) => void) | null = null;
  private closeHandler: ((reason: string) => void) | null = null;
  private queued: Array<[number, Uint8Array]> = [];
  private flushScheduled = false;
  private corked = false;
  private closeNotified = false;
  private readonly log: Logger;

  constructor(
    private readonly t: TcpTransport,
    private readonly socket: net.Socket,
    readonly outbound: boolean,
    local: Features,
    private readonly settle: (err: WeaveError | null, c: TcpConnection) => void,
    target: string,
  ) {
    // our own copy: `trusted` is per connection, and for a dial it is known only once the socket connects
    // (the features frame goes out after the key exchange, so always after that)
    local = { ...local, trusted: false };
    this.local = local;
    this.remoteAddr = target;
    const trust = (): void => {
      if (t.opts.trusts && socket.remoteAddress) local.trusted = t.opts.trusts(socket.remoteAddress.replace(/^::ffff:/, ''));
    };
    if (outbound) socket.once('connect', trust);
    else trust();
    this.log = t.log.child({ conn: target, outbound });
    this.lastRead = this.startedAt = t.clock.now();
    socket.setNoDelay(true);
    this.session = new WireSession(
      { crypto: t.opts.crypto, password: null, passwords: t.passwords.accepted(), outbound, local, minVersion: t.opts.minVersion, maxVersion: t.opts.maxVersion, maxFrame: t.maxFrame },
      {
        write: (b) => this.writeRaw(b),
        established: (e) => this.onEstablished(e),
        message: (type, payload) => this.onFrame(type, payload),
        rekey: (step, key, gen) => this.onRekey(step, key, gen),
      },
    );
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err: NodeJS.ErrnoException) => this.onSocketError(err));
    socket.on('end', () => this.onPeerEnd());
    socket.on('close', () => this.onSocketClose());
    this.hsTimer = t.clock.setTimeout(() => this.checkHandshake(false), t.handshakeTimeoutMs);
    this.session.start();
  }

  // ---- MeshConnection

  get keyGeneration(): { tx: number; rx: number } | undefined {
    return this.encrypted ? { tx: this.session.txGeneration, rx: this.session.rxGeneration } : undefined;
  }

  watchDataKey(fn: DataKeyWatcher): () => void {
    this.keyWatchers.add(fn);
    return () => this.keyWatchers.delete(fn);
  }

  /**
   * The router's accepted passwords changed (or the connection just opened): offer a newer one to
   * the peer, or close the connection when it still uses one no longer accepted.
   */
  applyPasswords(list: Secret[]): void {
    if (this.state === 'closed') return;
    if (this.session.setPasswords(list) !== 'stale') return;
    const gen = Math.min(this.session.txGeneration, this.session.rxGeneration);
    this.t.stats.closedStalePassword++;
    this.log.warn({ peer: this.remote?.name, nickname: this.remote?.nickname, generation: gen, accepting: list.map((p) => p.gen) }, `closing the connection: it still uses password generation ${gen}, which this router no longer accepts (the rotation finished before the peer got the new password)`);
    this.close(`password generation ${gen} no longer accepted (rotation finished)`);
  }

  get onMessage(): (type: number, payload: Uint8Array) => void {
    return this.msgHandler ?? (() => {});
  }
  /** Messages that arrive before a handler is set (they can share a chunk with the handshake) are queued, then delivered. */
  set onMessage(fn: (type: number, payload: Uint8Array) => void) {
    this.msgHandler = fn;
    if (this.queued.length) this.scheduleFlush();
  }
  get onClose(): (reason: string) => void {
    return this.closeHandler ?? (() => {});
  }
  /** A handler set after the connection already closed is still called (once) with the reason. */
  set onClose(fn: (reason: string) => void) {
    this.closeHandler = fn;
    if (this.state === 'closed' && !this.closeNotified && this.closeReason !== null) {
      const reason = this.closeReason;
      queueMicrotask(() => this.notifyClose(reason));
    }
  }

  send(type: number, payload: Uint8Array): void {
    if (this.state !== 'open') return;
    let frame: Buffer;
    try {
      frame = this.session.encode(type, payload);
    } catch (e) {
      this.log.error({ err: errMsg(e), type, len: payload.length }, 'cannot frame message; closing connection');
      this.close(`send failed: ${errMsg(e)}`);
      return;
    }
    if (this.socket.writableLength + frame.length > this.t.maxSendQueueBytes) {
      this.log.warn({ queued: this.socket.writableLength }, 'peer is not reading; send queue overflow');
      this.close('send queue overflow');
      return;
    }
    this.t.stats.framesOut++;
    this.writeRaw(frame);
  }

  close(reason: string): void {
    if (this.state === 'closed') return;
    const wasOpen = this.state === 'open';
    this.state = 'closed';
    this.closeReason = reason;
    this.teardown(true);
    if (wasOpen) {
      this.t.stats.closed++;
      this.log.info({ reason }, 'connection closed');
      this.notifyClose(reason);
    }
  }

  // ---- internals

  // Frames written in one turn of the event loop (a topology flush, the gossip of a new neighbour,
  // a heartbeat) leave in one writev: while a mesh forms, one write syscall per frame was the
  // router's largest single cost. end() flushes a corked socket; destroy() drops it, as before. Past
  // CORK_MAX_BYTES the batch goes at once: big bursts gain nothing from waiting, and the send-queue
  // limit is about bytes the peer has not taken, not bytes we held back.
  private writeRaw(b: Buffer): void {
    if (this.socket.destroyed || this.socket.writableEnded) return;
    this.t.stats.bytesOut += b.length;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(this.uncork);
    }
    this.socket.write(b);
    if (this.socket.writableLength >= CORK_MAX_BYTES) this.uncork();
  }

  // the nextTick after an early flush finds the socket uncorked: uncork() is then a no-op
  private readonly uncork = (): void => {
    if (!this.corked) return;
    this.corked = false;
    this.socket.uncork();
  };

  private onData(chunk: Buffer): void {
    if (this.state === 'closed') return;
    this.t.stats.bytesIn += chunk.length;
    this.lastRead = this.t.clock.now();
    try {
      this.session.push(chunk);
    } catch (e) {
      const err = e instanceof WeaveError ? e : new ProtocolError(errMsg(e));
      if (this.state === 'handshake') this.fail(err);
      else {
        this.log.warn({ code: err.code, err: err.message }, 'protocol error; closing connection');
        this.t.stats.protocolErrors++;
        this.close(`protocol error: ${err.message}`);
      }
    }
  }

  private onEstablished(e: Established): void {
    this.t.clock.clearTimeout(this.hsTimer);
    this.hsTimer = undefined;
    this.state = 'open';
    this.remote = e.remote;
    this.encrypted = e.encrypted;
    this.sessionKey = e.sessionKey;
    this.dataKey = this.local.trusted && e.remote.trusted ? null : e.sessionKey;
    this.remoteAddr = fmtAddr(this.socket.remoteAddress, this.socket.remotePort);
    this.localAddr = fmtAddr(this.socket.localAddress, this.socket.localPort);
    if (this.outbound) this.id = this.local.connId;
    else {
      this.id = e.remote.connId;
      this.local = { ...this.local, connId: e.remote.connId };
    }
    this.t.stats.established[this.outbound ? 'outbound' : 'inbound']++;
    this.log.info({ remote: this.remoteAddr, peer: e.remote.name, nickname: e.remote.nickname, encrypted: e.encrypted, dataEncrypted: this.dataKey !== null, trusted: this.local.trusted, trustedByRemote: e.remote.trusted, version: e.version, connId: this.id }, 'connection established');
    this.lastRead = this.t.clock.now();
    this.scheduleHeartbeat();
    this.scheduleReadCheck(this.t.readTimeoutMs);
    this.settle(null, this);
    // after the owner has attached (a dial's promise settles in a microtask queued before this one),
    // so the overlays hear the 'accept' of an offer made right away
    if (this.encrypted) queueMicrotask(() => this.applyPasswords(this.t.passwords.accepted()));
  }

  private onRekey(step: RekeyStep, key: Buffer | null, gen: number): void {
    if (step === 'unknown') {
      this.log.debug({ peer: this.remote?.name }, 'the peer offered a password this router does not hold (yet)');
      return;
    }
    const k = key as Buffer;
    if (step === 'use') {
      this.sessionKey = k;
      this.t.stats.rekeyed++;
      this.log.info({ peer: this.remote?.name, nickname: this.remote?.nickname, generation: gen }, `connection now seals with password generation ${gen}`);
    } else if (step === 'settled') {
      this.log.info({ peer: this.remote?.name, nickname: this.remote?.nickname, generation: gen }, `the peer now seals with password generation ${gen}`);
    }
    if (this.dataKey === null) return; // trusted: the overlays carry this connection's data unencrypted
    if (step === 'use') this.dataKey = k;
    for (const fn of [...this.keyWatchers]) {
      try {
        fn(step, k);
      } catch (e) {
        this.t.stats.handlerErrors++;
        this.log.error({ err: errMsg(e), step }, 'data key watcher threw');
      }
    }
  }

  private onFrame(type: number, payload: Buffer): void {
    this.t.stats.framesIn++;
    if (type === Msg.Heartbeat) return;
    if (this.msgHandler && this.queued.length === 0) {
      this.deliver(type, payload);
      return;
    }
    if (this.queued.length >= MAX_QUEUED_BEFORE_HANDLER) {
      this.close('no message handler attached');
      return;
    }
    this.queued.push([type, payload]);
    if (this.msgHandler) this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    queueMicrotask(() => {
      this.flushScheduled = false;
      while (this.queued.length && this.msgHandler && this.state === 'open') {
        const [type, payload] = this.queued.shift() as [number, Uint8Array];
        this.deliver(type, payload);
      }
    });
  }

  private deliver(type: number, payload: Uint8Array): void {
    try {
      (this.msgHandler as (t: number, p: Uint8Array) => void)(type, payload);
    } catch (e) {
      // A bug in a consumer must not kill the connection for everyone else's messages.
      this.t.stats.handlerErrors++;
      this.log.error({ err: errMsg(e), type }, 'onMessage handler threw');
    }
  }

  private notifyClose(reason: string): void {
    if (this.closeNotified || !this.closeHandler) return;
    this.closeNotified = true;
    try {
      this.closeHandler(reason);
    } catch (e) {
      this.t.stats.handlerErrors++;
      this.log.error({ err: errMsg(e) }, 'onClose handler threw');
    }
  }

  // Heartbeats leave on the clock's heartbeatMs boundaries (untilAligned): every connection's timer
  // of a router expires at the same instant and is served in one wake-up, and peers with synchronised
  // clocks send theirs together, so a router reads its peers' beats in a burst rather than one by one.
  private scheduleHeartbeat(): void {
    const t = this.t;
    this.hbTimer = t.clock.setTimeout(() => {
      if (this.state !== 'open') return;
      this.send(Msg.Heartbeat, EMPTY);
      if (this.state === 'open') this.scheduleHeartbeat();
    }, untilAligned(t.clock.now(), t.heartbeatMs));
  }

  // The handshake's deadline counts only time this router could work on it (lib/lag.ts): our own
  // stalls are credited, and a verdict waits for one poll phase so a reply already received is read
  // first (a late timeout here is a redial, and at 100 routers on 2 cores the redials fed the stalls).
  private checkHandshake(deferred: boolean): void {
    this.hsTimer = undefined;
    if (this.state !== 'handshake') return;
    const t = this.t;
    const now = t.clock.now();
    const took = creditedSilence(t.lag, now, this.startedAt, t.handshakeTimeoutMs);
    if (took < t.handshakeTimeoutMs) {
      this.hsTimer = t.clock.setTimeout(() => this.checkHandshake(false), t.handshakeTimeoutMs - took);
      return;
    }
    if (!deferred) {
      t.lag.afterIo(() => this.checkHandshake(true));
      return;
    }
    this.fail(new WeaveError('ETIMEDOUT', `handshake with ${this.remoteAddr} did not complete within ${t.handshakeTimeoutMs} ms`, { stalledMs: Math.round(now - this.startedAt - took) }));
  }

  // One timer per read-timeout period instead of one reset per packet: on expiry check how long
  // the line has really been silent and re-arm for the remainder (rounded up to the heartbeat
  // boundary, so the check shares the heartbeats' wake-up; a dead line is found within one more beat).
  private scheduleReadCheck(ms: number): void {
    const t = this.t;
    const now = t.clock.now();
    this.rtTimer = t.clock.setTimeout(() => this.checkRead(false), ms + untilAligned(now + ms, t.heartbeatMs) % t.heartbeatMs);
  }

  // The silence is what remains after our own stalls (lib/lag.ts), and a verdict waits for one poll
  // phase: a peer's beats that arrived while this loop was stalled are read before it is judged.
  private checkRead(deferred: boolean): void {
    this.rtTimer = undefined;
    if (this.state !== 'open') return;
    const t = this.t;
    const now = t.clock.now();
    const idle = creditedSilence(t.lag, now, this.lastRead, t.readTimeoutMs);
    if (idle < t.readTimeoutMs) {
      this.scheduleReadCheck(t.readTimeoutMs - idle);
      return;
    }
    if (!deferred) {
      t.lag.afterIo(() => this.checkRead(true));
      return;
    }
    this.log.warn({ idleMs: now - this.lastRead, stalledMs: Math.round(now - this.lastRead - idle) }, 'nothing received within the read timeout');
    this.close('read timeout');
  }

  /** Handshake failure: log, count, report, close. */
  private fail(err: WeaveError): void {
    if (this.state !== 'handshake') return;
    this.state = 'closed';
    this.closeReason = err.message;
    if (err.code !== 'ECANCELED') this.t.countRefused(err.code);
    // A refusal ends gracefully so the peer still reads our last handshake bytes and reaches the
    // same verdict; garbage, timeouts and socket errors are cut at once.
    this.teardown(err instanceof RefusedError);
    this.settle(err, this);
  }

  private onSocketError(err: NodeJS.ErrnoException): void {
    const code = err.code ?? 'ESOCKET';
    if (this.state === 'handshake') this.fail(new WeaveError(code, `${this.remoteAddr}: ${err.message}`, { remote: this.remoteAddr }));
    else if (this.state === 'open') this.close(`socket error: ${code}`);
  }

  private onPeerEnd(): void {
    if (this.state === 'handshake') this.fail(new WeaveError('ECONNRESET', `${this.remoteAddr} closed the connection during the handshake`));
    else if (this.state === 'open') this.close('closed by peer');
  }

  private onSocketClose(): void {
    this.t.clock.clearTimeout(this.lingerTimer);
    this.lingerTimer = undefined;
    if (this.state === 'handshake') this.fail(new WeaveError('ECONNRESET', `${this.remoteAddr} closed the connection during the handshake`));
    else if (this.state === 'open') this.close('closed by peer');
    this.t.forget(this);
  }

  /** graceful: end() so our last bytes (e.g. the features frame) reach the peer, destroy after a linger. */
  private teardown(graceful: boolean): void {
    this.session.stop();
    this.t.clock.clearTimeout(this.hsTimer);
    this.t.clock.clearTimeout(this.hbTimer);
    this.t.clock.clearTimeout(this.rtTimer);
    this.hsTimer = this.hbTimer = this.rtTimer = undefined;
    this.queued = [];
    this.keyWatchers.clear();
    if (this.socket.destroyed) return;
    if (!graceful) {
      this.socket.destroy();
      return;
    }
    this.socket.end();
    this.lingerTimer = this.t.clock.setTimeout(() => {
      this.lingerTimer = undefined;
      this.socket.destroy();
    }, LINGER_MS);
  }

  /** A dial nobody wants any more (the target was forgotten): ends the handshake at once. */
  cancel(): void {
    if (this.state === 'handshake') this.fail(new WeaveError('ECANCELED', `dial to ${this.remoteAddr} cancelled`));
  }

  /** Immediate close used when the whole transport shuts down. */
  destroy(reason: string): void {
    if (this.state === 'handshake') this.fail(new WeaveError('ECLOSED', `transport closed during the handshake with ${this.remoteAddr}`));
    else this.close(reason);
    this.t.clock.clearTimeout(this.lingerTimer);
    this.socket.destroy();
  }
}

const EMPTY = new Uint8Array(0);

export class TcpTransport implements Transport {
  readonly opts: TcpTransportOptions;
  readonly log: Logger;
  readonly clock: Clock;
  readonly lag: LagCredit;
  readonly passwords: PasswordRing;
  readonly handshakeTimeoutMs: number;
  readonly heartbeatMs: number;
  readonly readTimeoutMs: number;
  readonly maxFrame: number;
  readonly maxSendQueueBytes: number;
  readonly stats: TransportCounters = {
    accepted: 0,
    established: { inbound: 0, outbound: 0 },
    refused: {},
    rateLimited: 0,
    rateLimitedBySource: 0,
    rekeyed: 0,
    closedStalePassword: 0,
    framesIn: 0,
    framesOut: 0,
    bytesIn: 0,
    bytesOut: 0,
    closed: 0,
    protocolErrors: 0,
    handlerErrors: 0,
  };

  private server: net.Server | null = null;
  private localFeatures: Features | null = null;
  private readonly conns = new Set<TcpConnection>();
  private readonly limiter: AcceptLimiter;
  private readonly ownRing: boolean;
  private readonly offRing: () => void;
  private rateLogAt = -Infinity;
  private rateSuppressed = 0;
  private closed = false;

  constructor(opts: TcpTransportOptions) {
    this.opts = opts;
    this.log = opts.log.child({ component: 'tcp' });
    this.clock = opts.clock;
    this.lag = opts.lag ?? NO_LAG;
    this.ownRing = !opts.passwords;
    this.passwords = opts.passwords ?? new PasswordRing({ password: opts.password, clock: opts.clock, log: opts.log });
    this.offRing = this.passwords.onChange(() => {
      const list = this.passwords.accepted();
      for (const c of [...this.conns]) c.applyPasswords(list);
    });
    // 100 routers starting on 2 cores took longer than 5 s for a handshake: each timeout was a redial
    // and another handshake, feeding the load that caused it
    this.handshakeTimeoutMs = opts.handshakeTimeoutMs ?? 20_000;
    // Weave Net's 10 s / 30 s: an idle mesh of N peers costs N-1 tiny frames per 10 s (a dead peer whose
    // host vanished is noticed within 30 s; a closed one at once, and the sleeve's heartbeats too)
    this.heartbeatMs = opts.heartbeatMs ?? 10_000;
    this.readTimeoutMs = opts.readTimeoutMs ?? 3 * this.heartbeatMs;
    this.maxFrame = opts.maxFrame ?? DEFAULT_MAX_FRAME;
    this.maxSendQueueBytes = opts.maxSendQueueBytes ?? 64 * 1024 * 1024;
    this.limiter = new AcceptLimiter(opts.clock, opts.acceptRate ?? { perSecond: 20, burst: 40 }, opts.acceptRatePerSource ?? { perSecond: 5, burst: 10 }, opts.maxAcceptSources);
  }

  rotation(): RotationStatus {
    return this.passwords.status();
  }

  setLocalFeatures(f: Features): void {
    this.localFeatures = f;
  }

  listen(onConnection: (c: MeshConnection) => void, onRefused: (remoteAddr: string, f: ConnectFailure) => void): Promise<void> {
    if (this.server) return Promise.reject(new WeaveError('EINVAL', 'already listening'));
    const server = net.createServer({ noDelay: true });
    this.server = server;
    server.on('connection', (socket) => this.onAccept(socket, onConnection, onRefused));
    return new Promise((resolve, reject) => {
      const onErr = (err: NodeJS.ErrnoException): void => {
        this.server = null;
        reject(new WeaveError(err.code ?? 'ELISTEN', `cannot listen on ${this.opts.host || '*'}:${this.opts.port}: ${err.message}`));
      };
      server.once('error', onErr);
      server.listen({ host: this.opts.host || undefined, port: this.opts.port }, () => {
        server.off('error', onErr);
        server.on('error', (err) => this.log.error({ err: errMsg(err) }, 'listener error'));
        const a = this.address();
        this.log.info({ host: a.host, port: a.port }, 'listening');
        resolve();
      });
    });
  }

  /** The bound address (after listen resolves). */
  address(): { host: string; port: number } {
    const a = this.server?.address();
    if (!a || typeof a === 'string') throw new WeaveError('EINVAL', 'not listening');
    return { host: a.address, port: a.port };
  }

  private onAccept(socket: net.Socket, onConnection: (c: MeshConnection) => void, onRefused: (remoteAddr: string, f: ConnectFailure) => void): void {
    const remote = fmtAddr(socket.remoteAddress, socket.remotePort);
    if (this.closed) {
      socket.destroy();
      return;
    }
    const verdict = this.limiter.take(socket.remoteAddress ?? '?');
    if (verdict !== 'ok') {
      socket.destroy();
      this.stats.rateLimited++;
      if (verdict === 'source') this.stats.rateLimitedBySource++;
      // Under a flood, one line per second with the count, not one per connection.
      const now = this.clock.now();
      if (now - this.rateLogAt >= 1000) {
        this.log.warn({ remote, limit: verdict === 'source' ? 'per source' : 'overall', suppressed: this.rateSuppressed, total: this.stats.rateLimited, bySource: this.stats.rateLimitedBySource }, 'inbound connection rate limited');
        this.rateLogAt = now;
        this.rateSuppressed = 0;
      } else this.rateSuppressed++;
      return;
    }
    if (!this.localFeatures) {
      this.log.error({ remote }, 'inbound connection before setLocalFeatures(); dropping it');
      socket.destroy();
      this.countRefused('ENOTREADY');
      onRefused(remote, { code: 'ENOTREADY', message: 'router not ready (no local features yet)' });
      return;
    }
    this.stats.accepted++;
    const conn = new TcpConnection(
      this,
      socket,
      false,
      this.localFeatures,
      (err, c) => {
        if (err) {
          this.log.warn({ remote: c.remoteAddr, code: err.code, err: err.message }, 'inbound connection refused');
          try {
            onRefused(c.remoteAddr, { code: err.code, message: err.message });
          } catch (e) {
            this.stats.handlerErrors++;
            this.log.error({ err: errMsg(e) }, 'onRefused handler threw');
          }
          return;
        }
        try {
          onConnection(c);
        } catch (e) {
          this.stats.handlerErrors++;
          this.log.error({ err: errMsg(e) }, 'onConnection handler threw; closing the connection');
          c.close('onConnection handler failed');
        }
      },
      remote,
    );
    this.conns.add(conn);
  }

  dial(address: string, local: Features, opts: { signal?: AbortSignal } = {}): Promise<MeshConnection> {
    if (this.closed) return Promise.reject(new WeaveError('ECLOSED', 'transport is closed'));
    let target: { host: string; port: number };
    try {
      target = parseAddress(address);
    } catch (e) {
      return Promise.reject(e);
    }
    const label = target.host.includes(':') ? `[${target.host}]:${target.port}` : `${target.host}:${target.port}`;
    const { signal } = opts;
    if (signal?.aborted) return Promise.reject(new WeaveError('ECANCELED', `dial to ${label} cancelled`));
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: target.host, port: target.port, noDelay: true });
      const onAbort = (): void => conn.cancel();
      const conn = new TcpConnection(
        this,
        socket,
        true,
        local,
        (err, c) => {
          signal?.removeEventListener('abort', onAbort);
          if (err) {
            const lvl = err instanceof RefusedError || err instanceof ProtocolError ? 'warn' : 'info';
            this.log[lvl]({ remote: label, code: err.code, err: err.message }, 'dial failed');
            reject(err);
          } else resolve(c);
        },
        label,
      );
      this.conns.add(conn);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    this.offRing();
    if (this.ownRing) this.passwords.stop();
    for (const c of [...this.conns]) c.destroy('transport closed');
    this.conns.clear();
    const s = this.server;
    this.server = null;
    if (s) await new Promise<void>((resolve) => s.close(() => resolve()));
  }

  counters(): TransportCounters {
    return { ...this.stats, established: { ...this.stats.established }, refused: { ...this.stats.refused } };
  }

  // ---- used by TcpConnection

  countRefused(code: string): void {
    this.stats.refused[code] = (this.stats.refused[code] ?? 0) + 1;
  }

  forget(c: TcpConnection): void {
    this.conns.delete(c);
  }
}
