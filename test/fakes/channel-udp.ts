// In-memory UDP: a ChannelNet connects binds by "ip:port"; datagrams are delivered on setImmediate.
// Tests can drop, capture or inject datagrams and cap the path MTU (max datagram size) per link.
import type { UdpBind } from '../../router/udp';
import { EMSGSIZE } from '../../router/udp';
import { formatAddr } from '../../lib/addr';

export interface Datagram { fromIp: number; fromPort: number; toIp: number; toPort: number; data: Buffer }

export class ChannelNet {
  private readonly binds = new Map<string, ChannelUdp>();
  /** every datagram sent on the net (for replay tests and captures) */
  readonly captured: Datagram[] = [];
  capture = false;
  /** drop predicate: return true to lose the datagram in flight */
  drop: ((d: Datagram) => boolean) | null = null;
  /** largest UDP payload a path carries ("ip:port->ip:port" or "ip->ip" keys), else Infinity */
  readonly maxPayload = new Map<string, number>();
  /** a datagram above the path max is silently dropped (like a router in the middle) or refused at the sender */
  refuseLocally = false;

  bind(ip: string | number, port: number): ChannelUdp {
    const ipn = typeof ip === 'number' ? ip : ipNum(ip);
    const b = new ChannelUdp(this, ipn, port);
    this.binds.set(`${ipn}:${port}`, b);
    return b;
  }

  unbind(b: ChannelUdp): void {
    this.binds.delete(`${b.ip}:${b.port}`);
  }

  pathMax(fromIp: number, toIp: number): number {
    return this.maxPayload.get(`${formatAddr(fromIp)}->${formatAddr(toIp)}`) ?? Infinity;
  }

  /** Delivers a datagram (also used by tests to inject forged/replayed ones). */
  deliver(d: Datagram): void {
    if (this.capture) this.captured.push(d);
    if (this.drop && this.drop(d)) return;
    if (d.data.length > this.pathMax(d.fromIp, d.toIp)) return;
    const dst = this.binds.get(`${d.toIp}:${d.toPort}`);
    if (dst) dst.enqueue(d);
  }
}

export function ipNum(s: string): number {
  const p = s.split('.').map(Number);
  return ((p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3]) >>> 0;
}

export class ChannelUdp implements UdpBind {
  private readonly queue: Datagram[] = [];
  private readable: (() => void) | null = null;
  private scheduled = false;
  closed = false;

  constructor(private readonly net: ChannelNet, readonly ip: number, readonly port: number) {}

  enqueue(d: Datagram): void {
    this.queue.push(d);
    this.kick();
  }

  recvBatch(buf: Buffer, stride: number, max: number, lens: Int32Array, ips: Uint32Array, ports: Int32Array): number {
    let n = 0;
    while (n < max && this.queue.length) {
      const d = this.queue.shift()!;
      const len = Math.min(d.data.length, stride);
      d.data.copy(buf, n * stride, 0, len);
      lens[n] = d.data.length > stride ? stride + 1 : len;
      ips[n] = d.fromIp;
      ports[n] = d.fromPort;
      n++;
    }
    return n;
  }

  sendBatch(buf: Buffer, offs: Int32Array, lens: Int32Array, ips: Uint32Array, ports: Int32Array, errs: Int32Array, n: number): number {
    let sent = 0;
    for (let i = 0; i < n; i++) {
      if (this.closed) { errs[i] = 9; continue; }
      const data = Buffer.from(buf.subarray(offs[i], offs[i] + lens[i]));
      if (this.net.refuseLocally && data.length > this.net.pathMax(this.ip, ips[i])) {
        errs[i] = EMSGSIZE;
        continue;
      }
      errs[i] = 0;
      this.net.deliver({ fromIp: this.ip, fromPort: this.port, toIp: ips[i], toPort: ports[i], data });
      sent++;
    }
    return sent;
  }

  setReadable(cb: (() => void) | null): void {
    this.readable = cb;
    if (cb) this.kick();
  }

  close(): void {
    this.closed = true;
    this.readable = null;
    this.net.unbind(this);
  }

  private kick(): void {
    if (this.scheduled || !this.readable || this.queue.length === 0) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      while (this.readable && this.queue.length) {
        const before = this.queue.length;
        this.readable();
        if (this.queue.length >= before) break;
      }
    });
  }
}
