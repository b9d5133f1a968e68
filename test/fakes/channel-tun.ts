// In-memory TUN: tests inject packets "from the kernel" and see what the router wrote back.
import type { TunDevice } from '../../router/tun';

export class ChannelTun implements TunDevice {
  private readonly rxQueue: Buffer[] = [];
  /** every packet the router wrote into the device, in order */
  readonly written: Buffer[] = [];
  private readable: (() => void) | null = null;
  private scheduled = false;
  closed = false;
  /** the device's queue limit: writes beyond it are refused like a full tx queue */
  writeLimit = Infinity;
  private writeWaiters: Array<() => void> = [];

  constructor(readonly name = 'chan-tun') {}

  /** A packet the kernel routed into the TUN (the router will read it). */
  inject(pkt: Uint8Array): void {
    this.rxQueue.push(Buffer.from(pkt));
    this.kick();
  }

  readBatch(buf: Buffer, stride: number, max: number, lens: Int32Array): number {
    let n = 0;
    while (n < max && this.rxQueue.length) {
      const p = this.rxQueue.shift()!;
      const len = Math.min(p.length, stride);
      p.copy(buf, n * stride, 0, len);
      lens[n++] = len;
    }
    return n;
  }

  writeBatch(buf: Buffer, offs: Int32Array, lens: Int32Array, n: number): number {
    let ok = 0;
    for (let i = 0; i < n && this.written.length < this.writeLimit; i++) {
      this.written.push(Buffer.from(buf.subarray(offs[i], offs[i] + lens[i])));
      ok++;
    }
    if (ok) for (const w of this.writeWaiters.splice(0)) w();
    return ok;
  }

  setReadable(cb: (() => void) | null): void {
    this.readable = cb;
    if (cb) this.kick();
  }

  close(): void {
    this.closed = true;
    this.readable = null;
  }

  private kick(): void {
    if (this.scheduled || !this.readable || this.rxQueue.length === 0) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      // level-triggered like uv_poll: call while packets wait
      while (this.readable && this.rxQueue.length) {
        const before = this.rxQueue.length;
        this.readable();
        if (this.rxQueue.length >= before) break; // reader took nothing; avoid spinning
      }
    });
  }
}

/** Builds an IPv4 packet with a valid header checksum (tests only). */
export function ipv4Packet(o: { src: string; dst: string; proto?: number; payload?: Uint8Array; df?: boolean; ttl?: number; id?: number }): Buffer {
  const payload = o.payload ?? Buffer.alloc(0);
  const b = Buffer.alloc(20 + payload.length);
  b[0] = 0x45;
  b.writeUInt16BE(b.length, 2);
  b.writeUInt16BE(o.id ?? 0x1234, 4);
  b[6] = o.df ? 0x40 : 0;
  b[8] = o.ttl ?? 64;
  b[9] = o.proto ?? 17;
  Buffer.from(o.src.split('.').map(Number)).copy(b, 12);
  Buffer.from(o.dst.split('.').map(Number)).copy(b, 16);
  let sum = 0;
  for (let i = 0; i < 20; i += 2) sum += b.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  b.writeUInt16BE(~sum & 0xffff, 10);
  Buffer.from(payload).copy(b, 20);
  return b;
}
