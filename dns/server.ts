// weaveDNS server: answers the weave domain from the gossiped record store, forwards the rest.
//
// Query flow (UDP and TCP share answer()):
//   parse (dns/wire.ts, no allocation) → malformed: FORMERR (or drop if not even a header) and count
//   → name under our domain: A/ANY → all addresses, shuffled per query, TC when over the UDP budget
//                            other type on an existing name → NOERROR, no answers, SOA in authority
//                            unknown name → NXDOMAIN, SOA in authority
//   → <a.b.c.d>.in-addr.arpa PTR for an address we hold → the names
//   → anything else → Forwarder: raw query to the upstream resolvers over UDP (ID rewritten), TCP
//     retry on TC, next resolver after timeout/n, SERVFAIL at the deadline; the answer is relayed
//     with the client's ID (trimmed to header+question with TC when over the client's UDP budget).
// Answers echo the question's bytes and point to them (0xC00C), so they keep the asker's case.
// The UDP path allocates nothing per query of its own: one parser, a ring of response buffers (views
// of one slab, used from the first while few are in flight) recycled through a shared send
// callback, and an index keyed by a hash of the wire name.
//
// Who is answered: with allowSource (the router's: this host's containers and its own addresses), a
// query from anyone else gets REFUSED (UDP) or its connection closed (TCP), counted, and logged at
// most once per REFUSED_LOG_MS; host/guard.ts drops such traffic in the kernel before it gets here.
// TCP slots: each connection has an overall deadline (tcpMaxLifeMs) and each query one from its first
// byte (tcpQueryMs), besides the idle timeout, and one source holds at most maxTcpPerSource of them:
// a client trickling a byte at a time cannot keep slots, nor take them all.
import * as dgram from 'dgram';
import * as net from 'net';
import { isIPv6 } from 'net';
import type { Clock, TimerHandle } from '../lib/clock';
import { WeaveError } from '../lib/errors';
import type { Logger } from '../lib/log';
import {
  DROP,
  HEADER_LEN,
  OPT_LEN,
  QCLASS,
  QTYPE,
  QueryParser,
  RCODE,
  buildSoaRR,
  equalsCI,
  hashName,
  nameToWire,
  reverseV4,
  writeHeader,
  writeOpt,
} from './wire';
import { ipv4ToNumber } from './records';

/** What the server needs from the record store (DnsStore implements it). */
export interface DnsRecordSource {
  /** changes whenever the live view changes */
  readonly generation: number;
  liveNames(): ReadonlyMap<string, readonly string[]>;
}

export interface DnsServerOptions {
  listenAddress: string;
  /** default 53; 0 picks a free port (TCP then binds the same number) */
  port?: number;
  /** default 'weave.local.' */
  domain?: string;
  /** seconds, default 1 */
  ttl?: number;
  /** upstream resolvers: "ip", "ip:port", "[v6]:port"; called per forwarded query, cached by array identity */
  upstream: () => readonly string[];
  /** overall bound on a forwarded query before SERVFAIL (default 1500 ms) */
  upstreamTimeoutMs?: number;
  store: DnsRecordSource;
  clock: Clock;
  log: Logger;
  /** a TCP connection that sends nothing for this long is closed (default 10 s) */
  tcpIdleMs?: number;
  /** a TCP connection is closed this long after it opened, however busy (default 30 s) */
  tcpMaxLifeMs?: number;
  /** a query over TCP must arrive whole within this from its first byte (default 5 s) */
  tcpQueryMs?: number;
  /** TCP connections in all (default 256) */
  maxTcpConnections?: number;
  /** TCP connections from one source address (default 16) */
  maxTcpPerSource?: number;
  /** whether a source address may be answered; absent: every source */
  allowSource?: (addr: string) => boolean;
  /** forwarded queries in flight; beyond it new ones get SERVFAIL at once */
  maxPending?: number;
}

export interface DnsCounters {
  queriesUdp: number;
  queriesTcp: number;
  /** responses sent, by rcode (forwarded answers counted by the upstream's rcode) */
  noerror: number;
  formerr: number;
  servfail: number;
  nxdomain: number;
  notimp: number;
  refused: number;
  otherRcode: number;
  forwarded: number;
  forwardedTcpRetry: number;
  upstreamFailures: number;
  upstreamTimeouts: number;
  upstreamBadResponses: number;
  upstreamTcpErrors: number;
  malformed: number;
  truncated: number;
  dropped: number;
  tcpConnections: number;
  tcpRejected: number;
  /** TCP connections refused because their source already held maxTcpPerSource */
  tcpRejectedPerSource: number;
  /** TCP connections closed at their overall or per-query deadline */
  tcpDeadlineClosed: number;
  /** queries (UDP) and connections (TCP) refused because the source is not allowed */
  refusedSource: number;
  socketErrors: number;
}

const FORWARD = -2;
const UDP_MAX = 4096; // we never send UDP answers larger than this, whatever the client's EDNS says
const OUR_EDNS_SIZE = 1232; // what we advertise (DNS flag day 2020)
const RING = 256;
const TCP_OUT = 65535;
const TCP_MAX_QUEUED = 1 << 20;
/** at most one log line per this about refused sources (an attacker must not fill the log) */
const REFUSED_LOG_MS = 10_000;

interface Bucket {
  wire: Buffer;
  /** addresses, 4 bytes each, network order */
  addrs: Buffer;
  n: number;
}

interface Upstream {
  host: string;
  port: number;
  v6: boolean;
}

/**
 * DNS over TCP reassembly (RFC 1035 4.2.2: a 2-byte length, then the message), linear in the bytes
 * however the socket splits them: a partial message is appended into one growing buffer (doubling)
 * rather than concatenated anew with every chunk (a client sending one byte at a time made that
 * quadratic). Messages handed to the callback are views, valid until it returns.
 */
export class TcpAssembler {
  private buf: Buffer | null = null;
  private len = 0;

  /** Bytes of the incomplete message held. */
  get pending(): number { return this.len; }

  /** Calls each() for every complete message in what was held plus d; returns how many. */
  feed(d: Buffer, each: (msg: Buffer) => void): number {
    let data = d;
    let end = d.length;
    if (this.len > 0) {
      this.append(d);
      data = this.buf as Buffer;
      end = this.len;
    }
    let off = 0;
    let n = 0;
    while (end - off >= 2) {
      const l = data.readUInt16BE(off);
      if (end - off < 2 + l) break;
      n++;
      each(data.subarray(off + 2, off + 2 + l));
      off += 2 + l;
    }
    const rest = end - off;
    if (rest === 0) {
      this.len = 0;
      if (this.buf && this.buf.length > 4096) this.buf = null; // idle connections hold nothing big
    } else if (data === this.buf) {
      if (off > 0) data.copyWithin(0, off, end);
      this.len = rest;
    } else {
      this.len = 0;
      this.append(d.subarray(off, end));
    }
    return n;
  }

  private append(d: Buffer): void {
    const need = this.len + d.length;
    if (!this.buf || this.buf.length < need) {
      const nb = Buffer.allocUnsafe(Math.max(need, (this.buf?.length ?? 0) * 2, 512));
      if (this.buf) this.buf.copy(nb, 0, 0, this.len);
      this.buf = nb;
    }
    d.copy(this.buf, this.len);
    this.len += d.length;
  }
}

interface TcpClient {
  sock: net.Socket;
  /** remote address (per-source accounting) */
  src: string;
  /** the incomplete query so far */
  acc: TcpAssembler;
  lastActive: number;
  openedAt: number;
  /** when the first byte of the incomplete query in acc arrived; 0 when none is pending */
  partialSince: number;
  gone: boolean;
}

/** A forwarded query in flight. One object per forwarded query; forwarding is not the hot path. */
interface Pending {
  upId: number;
  clientId: number;
  udpPort: number;
  udpAddr: string;
  tcp: TcpClient | null;
  limit: number;
  query: Buffer;
  qEnd: number;
  servers: Upstream[];
  next: number;
  nextTryAt: number;
  deadline: number;
  upTcp: net.Socket | null;
}

export function parseUpstream(s: string): Upstream | null {
  let host = s.trim();
  let port = 53;
  const m6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(host);
  if (m6) {
    host = m6[1];
    if (m6[2]) port = +m6[2];
  } else if (!isIPv6(host)) {
    const m4 = /^([^:]+):(\d+)$/.exec(host);
    if (m4) {
      host = m4[1];
      port = +m4[2];
    }
  }
  if (!net.isIP(host) || !(port > 0 && port < 65536)) return null;
  return { host, port, v6: isIPv6(host) };
}

export class DnsServer {
  readonly listenAddress: string;
  readonly domain: string;
  readonly ttl: number;
  readonly counters: DnsCounters = {
    queriesUdp: 0, queriesTcp: 0, noerror: 0, formerr: 0, servfail: 0, nxdomain: 0, notimp: 0, refused: 0, otherRcode: 0,
    forwarded: 0, forwardedTcpRetry: 0, upstreamFailures: 0, upstreamTimeouts: 0, upstreamBadResponses: 0, upstreamTcpErrors: 0, malformed: 0,
    truncated: 0, dropped: 0, tcpConnections: 0, tcpRejected: 0, tcpRejectedPerSource: 0, tcpDeadlineClosed: 0, refusedSource: 0, socketErrors: 0,
  };
  private readonly requestedPort: number;
  private boundPort = 0;
  private readonly upstream: () => readonly string[];
  private readonly upstreamTimeoutMs: number;
  private readonly store: DnsRecordSource;
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly tcpIdleMs: number;
  private readonly tcpMaxLifeMs: number;
  private readonly tcpQueryMs: number;
  private readonly maxTcp: number;
  private readonly maxTcpPerSource: number;
  private readonly maxPending: number;
  private readonly allowSource: ((addr: string) => boolean) | null;
  private readonly tcpPerSource = new Map<string, number>();
  private refusedLoggedAt = -Infinity;
  private refusedUnlogged = 0;

  private readonly parser = new QueryParser();
  private readonly domainWire: Buffer;
  private readonly soa: Buffer;
  private readonly ttlBytes = Buffer.alloc(4);
  private indexGen = -1;
  private names = new Map<number, Bucket[]>();
  private addrs = new Map<number, Buffer[]>();
  private perm = new Int32Array(16);

  private udp: dgram.Socket | null = null;
  private tcp: net.Server | null = null;
  private readonly tcpClients = new Set<TcpClient>();
  private tcpSweep: TimerHandle | undefined;
  private readonly ring: Buffer[] = [];
  private ringNext = 0;
  private outstanding = 0;
  private readonly onSent: (err: Error | null) => void;
  private readonly tcpOut = Buffer.allocUnsafe(TCP_OUT);

  private up4: dgram.Socket | null = null;
  private up6: dgram.Socket | null = null;
  private readonly pending = new Map<number, Pending>();
  private sweepTimer: TimerHandle | undefined;
  private readonly sweepMs: number;
  private upCacheSrc: readonly string[] | null = null;
  private upCache: Upstream[] = [];
  private stopped = false;

  constructor(opts: DnsServerOptions) {
    this.listenAddress = opts.listenAddress;
    this.requestedPort = opts.port ?? 53;
    let d = (opts.domain ?? 'weave.local.').toLowerCase();
    if (!d.endsWith('.')) d += '.';
    this.domain = d;
    this.ttl = opts.ttl ?? 1;
    this.upstream = opts.upstream;
    this.upstreamTimeoutMs = opts.upstreamTimeoutMs ?? 1500;
    this.store = opts.store;
    this.clock = opts.clock;
    this.log = opts.log.child({ component: 'dns' });
    this.tcpIdleMs = opts.tcpIdleMs ?? 10_000;
    this.tcpMaxLifeMs = opts.tcpMaxLifeMs ?? 30_000;
    this.tcpQueryMs = opts.tcpQueryMs ?? 5_000;
    this.maxTcp = opts.maxTcpConnections ?? 256;
    this.maxTcpPerSource = opts.maxTcpPerSource ?? 16;
    this.allowSource = opts.allowSource ?? null;
    this.maxPending = opts.maxPending ?? 4096;
    this.domainWire = nameToWire(d);
    this.soa = buildSoaRR(this.domainWire, this.ttl, 1);
    this.ttlBytes.writeUInt32BE(this.ttl >>> 0, 0);
    // views into one slab: its pages cost RSS only once answers are written there (256 separate
    // 4 KB buffers each had a malloc header in its own page: 1 MB resident from the start)
    const slab = Buffer.allocUnsafe(RING * UDP_MAX);
    for (let i = 0; i < RING; i++) this.ring.push(slab.subarray(i * UDP_MAX, (i + 1) * UDP_MAX));
    this.sweepMs = Math.max(10, Math.min(50, Math.floor(this.upstreamTimeoutMs / 10)));
    this.onSent = (err) => {
      this.outstanding--;
      if (err) {
        this.counters.socketErrors++;
        this.log.debug({ err: err.message }, 'udp send failed');
      }
    };
  }

  /** The port both sockets are bound to (after start()). */
  get port(): number {
    return this.boundPort;
  }

  async start(): Promise<void> {
    const type = isIPv6(this.listenAddress) ? 'udp6' : 'udp4';
    for (let attempt = 0; ; attempt++) {
      const udp = dgram.createSocket({ type });
      udp.on('error', (e) => {
        this.counters.socketErrors++;
        this.log.warn({ err: e.message }, 'dns udp socket error');
      });
      await new Promise<void>((resolve, reject) => {
        udp.once('error', reject);
        udp.bind(this.requestedPort, this.listenAddress, () => {
          udp.off('error', reject);
          resolve();
        });
      }).catch((e: Error) => {
        udp.close();
        throw new WeaveError('EDNSLISTEN', `cannot listen for DNS on udp ${this.listenAddress}:${this.requestedPort}: ${e.message}`, { address: this.listenAddress, port: this.requestedPort }, { cause: e });
      });
      const port = udp.address().port;
      const tcp = net.createServer({ noDelay: true }, (s) => this.onTcpConnection(s));
      try {
        await new Promise<void>((resolve, reject) => {
          tcp.once('error', reject);
          tcp.listen({ port, host: this.listenAddress, exclusive: true }, () => {
            tcp.off('error', reject);
            resolve();
          });
        });
      } catch (e) {
        udp.close();
        // port 0: the UDP port we got may be taken for TCP; try another
        if (this.requestedPort === 0 && (e as NodeJS.ErrnoException).code === 'EADDRINUSE' && attempt < 10) continue;
        throw new WeaveError('EDNSLISTEN', `cannot listen for DNS on tcp ${this.listenAddress}:${port}: ${(e as Error).message}`, { address: this.listenAddress, port }, { cause: e });
      }
      tcp.on('error', (e) => {
        this.counters.socketErrors++;
        this.log.warn({ err: e.message }, 'dns tcp server error');
      });
      udp.on('message', (msg, rinfo) => this.onUdp(msg, rinfo));
      this.udp = udp;
      this.tcp = tcp;
      this.boundPort = port;
      break;
    }
    this.scheduleTcpSweep();
    this.log.info({ address: this.listenAddress, port: this.boundPort, domain: this.domain }, 'dns server listening');
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.clock.clearTimeout(this.tcpSweep);
    this.clock.clearTimeout(this.sweepTimer);
    for (const p of this.pending.values()) p.upTcp?.destroy();
    this.pending.clear();
    for (const c of this.tcpClients) c.sock.destroy();
    this.tcpClients.clear();
    this.tcpPerSource.clear();
    const closes: Promise<void>[] = [];
    if (this.udp) { const u = this.udp; closes.push(new Promise((r) => u.close(() => r()))); }
    if (this.tcp) { const t = this.tcp; closes.push(new Promise((r) => t.close(() => r()))); }
    if (this.up4) { const u = this.up4; closes.push(new Promise((r) => u.close(() => r()))); }
    if (this.up6) { const u = this.up6; closes.push(new Promise((r) => u.close(() => r()))); }
    this.udp = this.tcp = this.up4 = this.up6 = null;
    await Promise.all(closes);
  }

  // ---- UDP ----

  private onUdp(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    this.counters.queriesUdp++;
    if (this.outstanding >= RING) {
      // the kernel is not taking our sends: every ring buffer is still queued
      this.counters.dropped++;
      return;
    }
    // nothing in flight: start again at the first buffer, so the slab's pages that become resident
    // are as many as answers ever queued at once, not the whole ring after 256 queries
    if (this.outstanding === 0) this.ringNext = 0;
    const out = this.ring[this.ringNext];
    const n = this.allowSource !== null && !this.allowSource(rinfo.address) ? this.refuse(msg, out, rinfo.address, 'udp') : this.answer(msg, msg.length, out, true);
    if (n > 0) {
      this.ringNext = (this.ringNext + 1) % RING;
      this.outstanding++;
      this.udp!.send(out, 0, n, rinfo.port, rinfo.address, this.onSent);
    } else if (n === FORWARD) {
      this.forward(msg, rinfo.address, rinfo.port, null);
    }
  }

  // ---- TCP ----

  private onTcpConnection(sock: net.Socket): void {
    const src = sock.remoteAddress ?? '';
    if (this.tcpClients.size >= this.maxTcp || this.stopped) {
      this.counters.tcpRejected++;
      sock.destroy();
      return;
    }
    if (this.allowSource !== null && !this.allowSource(src)) {
      this.noteRefused(src, 'tcp');
      sock.destroy();
      return;
    }
    const held = this.tcpPerSource.get(src) ?? 0;
    if (held >= this.maxTcpPerSource) {
      this.counters.tcpRejectedPerSource++;
      this.log.debug({ source: src, held }, 'dns tcp connection refused: the source holds its share of connections');
      sock.destroy();
      return;
    }
    this.tcpPerSource.set(src, held + 1);
    this.counters.tcpConnections++;
    const now = this.clock.now();
    const c: TcpClient = { sock, src, acc: new TcpAssembler(), lastActive: now, openedAt: now, partialSince: 0, gone: false };
    this.tcpClients.add(c);
    sock.on('data', (d: Buffer) => this.onTcpData(c, d));
    sock.on('error', (e) => {
      this.counters.socketErrors++;
      this.log.debug({ err: e.message }, 'dns tcp client error');
    });
    sock.on('close', () => this.dropTcp(c));
  }

  /** Forgets a connection once (its slot and its source's share). */
  private dropTcp(c: TcpClient): void {
    if (c.gone) return;
    c.gone = true;
    this.tcpClients.delete(c);
    const n = (this.tcpPerSource.get(c.src) ?? 1) - 1;
    if (n > 0) this.tcpPerSource.set(c.src, n);
    else this.tcpPerSource.delete(c.src);
  }

  private onTcpData(c: TcpClient, d: Buffer): void {
    const now = this.clock.now();
    c.lastActive = now;
    const answered = c.acc.feed(d, (frame) => {
      this.counters.queriesTcp++;
      const n = this.answer(frame, frame.length, this.tcpOut, false);
      if (n > 0) this.tcpSend(c, this.tcpOut, n);
      else if (n === FORWARD) this.forward(Buffer.from(frame), '', 0, c); // frame is a view into the assembler
    });
    // the per-query deadline runs from the first byte of the query still incomplete
    c.partialSince = c.acc.pending === 0 ? 0 : answered > 0 || c.partialSince === 0 ? now : c.partialSince;
  }

  private tcpSend(c: TcpClient, src: Buffer, n: number): void {
    if (c.sock.destroyed) return;
    if (c.sock.writableLength > TCP_MAX_QUEUED) {
      // a client that pipelines queries but does not read its answers: cut it off rather than buffer
      this.counters.dropped++;
      this.log.debug({ queued: c.sock.writableLength }, 'dns tcp client not reading: closed');
      c.sock.destroy();
      return;
    }
    const b = Buffer.allocUnsafe(n + 2);
    b.writeUInt16BE(n, 0);
    src.copy(b, 2, 0, n);
    c.sock.write(b);
  }

  private scheduleTcpSweep(): void {
    this.tcpSweep = this.clock.setTimeout(() => {
      const now = this.clock.now();
      for (const c of this.tcpClients) {
        const deadline = now - c.openedAt >= this.tcpMaxLifeMs || (c.partialSince !== 0 && now - c.partialSince >= this.tcpQueryMs);
        if (deadline || now - c.lastActive >= this.tcpIdleMs) {
          if (deadline) this.counters.tcpDeadlineClosed++;
          c.sock.destroy();
          this.dropTcp(c);
        }
      }
      if (!this.stopped) this.scheduleTcpSweep();
    }, Math.max(25, Math.floor(Math.min(this.tcpIdleMs, this.tcpMaxLifeMs, this.tcpQueryMs) / 4)));
  }

  // ---- sources that are not ours ----

  /** REFUSED with the question echoed (never larger than the query), or 0 for junk. */
  private refuse(buf: Buffer, out: Buffer, src: string, proto: 'udp'): number {
    this.noteRefused(src, proto);
    const p = this.parser;
    if (p.parse(buf, buf.length) === DROP) return 0;
    const qlen = p.qEnd > 0 ? p.qEnd - HEADER_LEN : 0;
    writeHeader(out, p.id, 0x80 | (p.opcode << 3) | p.rd, 0x80 | RCODE.REFUSED, qlen > 0 ? 1 : 0, 0, 0, 0);
    if (qlen > 0) buf.copy(out, HEADER_LEN, HEADER_LEN, p.qEnd);
    this.count(RCODE.REFUSED);
    return HEADER_LEN + qlen;
  }

  private noteRefused(src: string, proto: 'udp' | 'tcp'): void {
    this.counters.refusedSource++;
    this.refusedUnlogged++;
    const now = this.clock.now();
    if (now - this.refusedLoggedAt < REFUSED_LOG_MS) return;
    this.log.warn({ source: src, proto, refused: this.refusedUnlogged, everyMs: REFUSED_LOG_MS }, 'DNS from a source that is neither this host nor one of its containers: refused (one line per interval)');
    this.refusedLoggedAt = now;
    this.refusedUnlogged = 0;
  }

  // ---- answering ----

  private count(rcode: number): void {
    switch (rcode) {
      case RCODE.NOERROR: this.counters.noerror++; break;
      case RCODE.FORMERR: this.counters.formerr++; break;
      case RCODE.SERVFAIL: this.counters.servfail++; break;
      case RCODE.NXDOMAIN: this.counters.nxdomain++; break;
      case RCODE.NOTIMP: this.counters.notimp++; break;
      case RCODE.REFUSED: this.counters.refused++; break;
      default: this.counters.otherRcode++;
    }
  }

  /**
   * Answers the query in buf[0, len) into out. Returns the response length, 0 to send nothing, or
   * FORWARD when the query must go upstream.
   */
  private answer(buf: Buffer, len: number, out: Buffer, udp: boolean): number {
    const p = this.parser;
    const rc = p.parse(buf, len);
    if (rc === DROP) {
      this.counters.malformed++;
      return 0;
    }
    if (rc !== RCODE.NOERROR) {
      if (rc === RCODE.FORMERR) this.counters.malformed++;
      // echo the question when it parsed (the error was further on), so the client can match it
      const qlen = p.qEnd > 0 ? p.qEnd - HEADER_LEN : 0;
      writeHeader(out, p.id, 0x80 | (p.opcode << 3) | p.rd, 0x80 | rc, qlen > 0 ? 1 : 0, 0, 0, 0);
      if (qlen > 0) buf.copy(out, HEADER_LEN, HEADER_LEN, p.qEnd);
      this.count(rc);
      return HEADER_LEN + qlen;
    }
    const qlen = p.qEnd - HEADER_LEN;
    let limit = udp ? 512 : TCP_OUT;
    if (udp && p.edns) limit = p.ednsSize < 512 ? 512 : p.ednsSize > UDP_MAX ? UDP_MAX : p.ednsSize;
    const optLen = p.edns ? OPT_LEN : 0;
    if (p.edns && p.ednsVersion !== 0) {
      // BADVERS (16): low nibble 0 in the header, high bits (1) in the OPT's extended-rcode byte
      writeHeader(out, p.id, 0x80 | p.rd, 0x80, 1, 0, 0, 1);
      buf.copy(out, HEADER_LEN, HEADER_LEN, p.qEnd);
      const o = writeOpt(out, HEADER_LEN + qlen, OUR_EDNS_SIZE);
      out[o - 6] = 1;
      this.counters.otherRcode++;
      return o;
    }
    if (this.indexGen !== this.store.generation) this.rebuildIndex();

    if (this.inDomain(buf, p)) {
      buf.copy(out, HEADER_LEN, HEADER_LEN, p.qEnd);
      let o = HEADER_LEN + qlen;
      if (p.qclass !== QCLASS.IN && p.qclass !== QCLASS.ANY) {
        writeHeader(out, p.id, 0x80 | 0x04 | p.rd, 0x80 | RCODE.REFUSED, 1, 0, 0, 0);
        this.count(RCODE.REFUSED);
        return o;
      }
      const b = this.findName(buf, p);
      const apex = p.nameEnd - HEADER_LEN === this.domainWire.length;
      if (b !== null && (p.qtype === QTYPE.A || p.qtype === QTYPE.ANY)) {
        const n = b.n;
        if (this.perm.length < n) this.perm = new Int32Array(n * 2);
        const perm = this.perm;
        for (let i = 0; i < n; i++) perm[i] = i;
        for (let i = n - 1; i > 0; i--) {
          const j = Math.floor(Math.random() * (i + 1));
          const t = perm[i];
          perm[i] = perm[j];
          perm[j] = t;
        }
        let an = 0;
        let tc = 0;
        for (let i = 0; i < n; i++) {
          if (o + 16 + optLen > limit) {
            tc = 0x02;
            break;
          }
          out[o] = 0xc0;
          out[o + 1] = HEADER_LEN;
          out[o + 2] = 0;
          out[o + 3] = QTYPE.A;
          out[o + 4] = 0;
          out[o + 5] = QCLASS.IN;
          this.ttlBytes.copy(out, o + 6);
          out[o + 10] = 0;
          out[o + 11] = 4;
          b.addrs.copy(out, o + 12, perm[i] * 4, perm[i] * 4 + 4);
          o += 16;
          an++;
        }
        if (tc) this.counters.truncated++;
        if (p.edns) o = writeOpt(out, o, OUR_EDNS_SIZE);
        writeHeader(out, p.id, 0x80 | 0x04 | tc | p.rd, 0x80 | RCODE.NOERROR, 1, an, 0, p.edns ? 1 : 0);
        this.counters.noerror++;
        return o;
      }
      if (apex && p.qtype === QTYPE.SOA && o + this.soa.length + optLen <= limit) {
        o += this.soa.copy(out, o);
        if (p.edns) o = writeOpt(out, o, OUR_EDNS_SIZE);
        writeHeader(out, p.id, 0x80 | 0x04 | p.rd, 0x80 | RCODE.NOERROR, 1, 1, 0, p.edns ? 1 : 0);
        this.counters.noerror++;
        return o;
      }
      const rcode = b !== null || apex ? RCODE.NOERROR : RCODE.NXDOMAIN;
      let ns = 0;
      if (o + this.soa.length + optLen <= limit) {
        o += this.soa.copy(out, o);
        ns = 1;
      }
      if (p.edns) o = writeOpt(out, o, OUR_EDNS_SIZE);
      writeHeader(out, p.id, 0x80 | 0x04 | p.rd, 0x80 | rcode, 1, 0, ns, p.edns ? 1 : 0);
      this.count(rcode);
      return o;
    }

    if (p.qtype === QTYPE.PTR || p.qtype === QTYPE.ANY) {
      const addr = reverseV4(buf, p);
      const names = addr >= 0 ? this.addrs.get(addr) : undefined;
      if (names !== undefined) {
        buf.copy(out, HEADER_LEN, HEADER_LEN, p.qEnd);
        let o = HEADER_LEN + qlen;
        let an = 0;
        let tc = 0;
        for (let i = 0; i < names.length; i++) {
          const w = names[i];
          if (o + 12 + w.length + optLen > limit) {
            tc = 0x02;
            break;
          }
          out[o] = 0xc0;
          out[o + 1] = HEADER_LEN;
          out[o + 2] = 0;
          out[o + 3] = QTYPE.PTR;
          out[o + 4] = 0;
          out[o + 5] = QCLASS.IN;
          this.ttlBytes.copy(out, o + 6);
          out[o + 10] = w.length >> 8;
          out[o + 11] = w.length & 0xff;
          w.copy(out, o + 12);
          o += 12 + w.length;
          an++;
        }
        if (tc) this.counters.truncated++;
        if (p.edns) o = writeOpt(out, o, OUR_EDNS_SIZE);
        writeHeader(out, p.id, 0x80 | 0x04 | tc | p.rd, 0x80 | RCODE.NOERROR, 1, an, 0, p.edns ? 1 : 0);
        this.counters.noerror++;
        return o;
      }
    }
    return FORWARD;
  }

  private inDomain(buf: Buffer, p: QueryParser): boolean {
    const d = this.domainWire.length;
    const start = p.nameEnd - d;
    if (start < HEADER_LEN) return false;
    // the suffix must start on a label boundary
    for (let i = 0; i <= p.labelCount; i++) {
      const off = p.labelOff[i];
      if (off === start) return equalsCI(buf, start, this.domainWire, 0, d);
      if (off > start) return false;
    }
    return false;
  }

  private findName(buf: Buffer, p: QueryParser): Bucket | null {
    const list = this.names.get(p.nameHash);
    if (list === undefined) return null;
    const len = p.nameEnd - HEADER_LEN;
    for (let i = 0; i < list.length; i++) {
      const b = list[i];
      if (b.wire.length === len && equalsCI(buf, HEADER_LEN, b.wire, 0, len)) return b;
    }
    return null;
  }

  private rebuildIndex(): void {
    const gen = this.store.generation;
    const names = new Map<number, Bucket[]>();
    const addrs = new Map<number, Buffer[]>();
    let max = 16;
    for (const [name, list] of this.store.liveNames()) {
      const wire = nameToWire(name);
      if (wire.length > 255) continue;
      const ab = Buffer.alloc(list.length * 4);
      for (let i = 0; i < list.length; i++) {
        const a = ipv4ToNumber(list[i]);
        ab.writeUInt32BE(a, i * 4);
        const ns = addrs.get(a);
        if (ns === undefined) addrs.set(a, [wire]);
        else ns.push(wire);
      }
      const h = hashName(wire, 0, wire.length);
      const bucket: Bucket = { wire, addrs: ab, n: list.length };
      const l = names.get(h);
      if (l === undefined) names.set(h, [bucket]);
      else l.push(bucket);
      if (list.length > max) max = list.length;
    }
    this.names = names;
    this.addrs = addrs;
    if (this.perm.length < max) this.perm = new Int32Array(max);
    this.indexGen = gen;
  }

  // ---- forwarding ----

  private servers(): Upstream[] {
    const src = this.upstream();
    if (src !== this.upCacheSrc) {
      const list: Upstream[] = [];
      for (const s of src) {
        const u = parseUpstream(s);
        if (u === null) {
          this.log.warn({ upstream: s }, 'ignoring unusable upstream resolver');
          continue;
        }
        if (u.port === this.boundPort && (u.host === this.listenAddress || (this.listenAddress === '0.0.0.0' && !u.v6))) {
          this.log.warn({ upstream: s }, 'ignoring upstream resolver that is this server (would loop)');
          continue;
        }
        list.push(u);
      }
      this.upCacheSrc = src;
      this.upCache = list;
    }
    return this.upCache;
  }

  private forward(query: Buffer, udpAddr: string, udpPort: number, tcp: TcpClient | null): void {
    const p = this.parser; // still holds this query's parse
    const servers = this.servers();
    const limit = tcp ? TCP_OUT : p.edns ? Math.min(UDP_MAX, Math.max(512, p.ednsSize)) : 512;
    if (servers.length === 0 || this.pending.size >= this.maxPending) {
      this.counters.upstreamFailures++;
      this.replyError(query, p.qEnd, udpAddr, udpPort, tcp, RCODE.SERVFAIL);
      return;
    }
    let upId = 0;
    for (let i = 0; ; i++) {
      upId = (Math.random() * 0x10000) | 0;
      if (!this.pending.has(upId)) break;
      if (i > 20) {
        this.counters.upstreamFailures++;
        this.replyError(query, p.qEnd, udpAddr, udpPort, tcp, RCODE.SERVFAIL);
        return;
      }
    }
    const now = this.clock.now();
    const pend: Pending = {
      upId, clientId: p.id, udpAddr, udpPort, tcp, limit, query, qEnd: p.qEnd, servers, next: 0,
      nextTryAt: now, deadline: now + this.upstreamTimeoutMs, upTcp: null,
    };
    query[0] = upId >> 8;
    query[1] = upId & 0xff;
    this.pending.set(upId, pend);
    this.counters.forwarded++;
    this.tryNext(pend, now);
    if (this.sweepTimer === undefined) this.sweepTimer = this.clock.setTimeout(() => this.sweep(), this.sweepMs);
  }

  private tryNext(p: Pending, now: number): void {
    const u = p.servers[p.next++];
    p.nextTryAt = p.next < p.servers.length ? now + Math.floor(this.upstreamTimeoutMs / p.servers.length) : Infinity;
    const s = this.upSocket(u.v6);
    s.send(p.query, u.port, u.host);
  }

  private upSocket(v6: boolean): dgram.Socket {
    let s = v6 ? this.up6 : this.up4;
    if (s) return s;
    s = dgram.createSocket(v6 ? 'udp6' : 'udp4');
    s.on('error', (e) => {
      this.counters.socketErrors++;
      this.log.debug({ err: e.message }, 'upstream udp socket error');
    });
    s.on('message', (msg, rinfo) => this.onUpstreamUdp(msg, rinfo));
    if (v6) this.up6 = s;
    else this.up4 = s;
    return s;
  }

  private sweep(): void {
    this.sweepTimer = undefined;
    const now = this.clock.now();
    for (const p of this.pending.values()) {
      if (now >= p.deadline) {
        this.pending.delete(p.upId);
        p.upTcp?.destroy();
        this.counters.upstreamTimeouts++;
        this.counters.upstreamFailures++;
        this.log.debug({ servers: p.servers.map((s) => `${s.host}:${s.port}`) }, 'upstream timeout: SERVFAIL');
        this.replyError(p.query, p.qEnd, p.udpAddr, p.udpPort, p.tcp, RCODE.SERVFAIL, p.clientId);
      } else if (now >= p.nextTryAt && p.upTcp === null) {
        this.tryNext(p, now);
      }
    }
    if (this.pending.size > 0 && !this.stopped) this.sweepTimer = this.clock.setTimeout(() => this.sweep(), this.sweepMs);
  }

  private matchUpstream(p: Pending, msg: Buffer, len: number): boolean {
    // same question bytes as we sent: a stray or spoofed answer for another name is not relayed
    if (len < p.qEnd || (msg[2] & 0x80) === 0) return false;
    if (msg[4] !== 0 || msg[5] !== 1) return false;
    return equalsCI(msg, HEADER_LEN, p.query, HEADER_LEN, p.qEnd - HEADER_LEN);
  }

  private onUpstreamUdp(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    if (msg.length < HEADER_LEN) {
      this.counters.upstreamBadResponses++;
      return;
    }
    const p = this.pending.get((msg[0] << 8) | msg[1]);
    let fromServer = false;
    if (p) for (let i = 0; i < p.next; i++) if (p.servers[i].port === rinfo.port && p.servers[i].host === rinfo.address) fromServer = true;
    if (!p || !fromServer || !this.matchUpstream(p, msg, msg.length)) {
      this.counters.upstreamBadResponses++;
      return;
    }
    if (msg[2] & 0x02) {
      if (p.upTcp === null) this.retryTcp(p, { host: rinfo.address, port: rinfo.port, v6: rinfo.family === 'IPv6' });
      return;
    }
    this.deliver(p, msg);
  }

  /** The first message an upstream answered over TCP (a view: used before the data handler returns). */
  private onUpstreamTcpAnswer(p: Pending, msg: Buffer): void {
    if (this.pending.get(p.upId) !== p) return;
    const l = msg.length;
    if (l < HEADER_LEN || ((msg[0] << 8) | msg[1]) !== p.upId || !this.matchUpstream(p, msg, l)) {
      this.counters.upstreamBadResponses++;
      p.upTcp = null;
      return;
    }
    this.deliver(p, msg);
  }

  private retryTcp(p: Pending, u: Upstream): void {
    this.counters.forwardedTcpRetry++;
    const s = net.connect({ host: u.host, port: u.port });
    p.upTcp = s;
    const acc = new TcpAssembler();
    let done = false;
    s.setNoDelay(true);
    s.on('connect', () => {
      const l = Buffer.allocUnsafe(2);
      l.writeUInt16BE(p.query.length, 0);
      s.write(Buffer.concat([l, p.query]));
    });
    s.on('data', (d: Buffer) => {
      if (done) return;
      acc.feed(d, (msg) => {
        if (done) return;
        done = true;
        s.destroy();
        this.onUpstreamTcpAnswer(p, msg);
      });
    });
    s.on('error', (e) => {
      this.counters.upstreamTcpErrors++;
      this.log.debug({ upstream: `${u.host}:${u.port}`, err: e.message }, 'upstream tcp retry failed');
    });
    s.on('close', () => {
      // let the sweep try the next resolver (or time out); never hang
      if (p.upTcp === s) p.upTcp = null;
    });
  }

  private deliver(p: Pending, msg: Buffer): void {
    this.pending.delete(p.upId);
    p.upTcp?.destroy();
    p.upTcp = null;
    msg[0] = p.clientId >> 8;
    msg[1] = p.clientId & 0xff;
    this.count(msg[3] & 0x0f);
    if (p.tcp !== null) {
      if (p.tcp.sock.destroyed) return;
      const l = Buffer.allocUnsafe(2);
      l.writeUInt16BE(msg.length, 0);
      p.tcp.sock.cork();
      p.tcp.sock.write(l);
      p.tcp.sock.write(msg);
      p.tcp.sock.uncork();
      return;
    }
    if (!this.udp) return;
    if (msg.length <= p.limit) {
      this.udp.send(msg, p.udpPort, p.udpAddr);
      return;
    }
    // too big for the client's UDP budget: header + question with TC, the client retries over TCP
    const out = Buffer.allocUnsafe(p.qEnd);
    msg.copy(out, 0, 0, 4);
    out[2] |= 0x02;
    writeHeader(out, p.clientId, out[2], out[3], 1, 0, 0, 0);
    p.query.copy(out, HEADER_LEN, HEADER_LEN, p.qEnd);
    this.counters.truncated++;
    this.udp.send(out, p.udpPort, p.udpAddr);
  }

  private replyError(query: Buffer, qEnd: number, udpAddr: string, udpPort: number, tcp: TcpClient | null, rcode: number, clientId?: number): void {
    const out = Buffer.allocUnsafe(qEnd);
    const id = clientId ?? ((query[0] << 8) | query[1]);
    writeHeader(out, id, 0x80 | (query[2] & 0x79), 0x80 | rcode, 1, 0, 0, 0);
    query.copy(out, HEADER_LEN, HEADER_LEN, qEnd);
    this.count(rcode);
    if (tcp) this.tcpSend(tcp, out, qEnd);
    else if (this.udp) this.udp.send(out, udpPort, udpAddr);
  }
}
