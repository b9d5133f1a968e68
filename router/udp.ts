// The sleeve's UDP socket, batch-shaped like the TUN (see tun.ts). Addresses are host-order u32 +
// port in parallel typed arrays so nothing is allocated per datagram. The socket sets DF on every
// datagram (IP_PMTUDISC_DO): probes measure the path MTU and EMSGSIZE reports a shrunken one.
// UDP GSO (send) and GRO (receive) change only how many datagrams one syscall/skb carries: the
// batches in and out hold one datagram per slot either way.
import { WeaveError } from '../lib/errors';
import { errno, withErrnoName } from '../lib/errno';
import { UDP_GRO_CARRY_SIZE, type TunIo } from './native';

export const EMSGSIZE = errno.EMSGSIZE;
export const EAGAIN = errno.EAGAIN;

export interface UdpBind {
  readonly port: number;
  /** Receives up to max datagrams; a datagram longer than stride is reported with length stride + 1. */
  recvBatch(buf: Buffer, stride: number, max: number, lens: Int32Array, ips: Uint32Array, ports: Int32Array): number;
  /** Sends n datagrams; errs[i] = 0 or an errno (EMSGSIZE: above the known path MTU). Returns how many went out. */
  sendBatch(buf: Buffer, offs: Int32Array, lens: Int32Array, ips: Uint32Array, ports: Int32Array, errs: Int32Array, n: number): number;
  setReadable(cb: (() => void) | null): void;
  close(): void;
}

export class NativeUdp implements UdpBind {
  private _fd: number;
  private pollHandle: unknown = null;
  readonly port: number;
  /**
   * UDP GSO: runs of equal-size datagrams to one address leave as one sendmmsg message (UDP_SEGMENT);
   * the same datagrams on the wire, one trip through the kernel (native addon; off by default).
   */
  gso = false;
  /** recvBatchGro's carry once UDP GRO is on for this reader (enableGro / a worker's view) */
  private groCarry: Uint8Array | null = null;
  /** false for a view onto another thread's fd: close() then only stops polling */
  private readonly owner: boolean;

  /** Binds bindIp:port (0 = any free port); with fd, wraps an already bound socket instead. */
  constructor(private readonly io: TunIo, bindIp: number, port: number, bufBytes = 4 << 20, fd?: number) {
    this.owner = fd === undefined;
    if (fd !== undefined) {
      this._fd = fd;
    } else {
      try {
        this._fd = io.udpOpen(bindIp >>> 0, port, bufBytes, bufBytes);
      } catch (e) {
        const cause = withErrnoName(e as Error & { code?: string });
        throw new WeaveError('EUDP', `cannot bind UDP port ${port}: ${cause.message}`, { port, errno: cause.code }, { cause });
      }
    }
    this.port = io.udpPort(this._fd);
  }

  get fd(): number { return this._fd; }

  /**
   * UDP GRO: the kernel may join runs of datagrams from one sender into one buffer; recvBatch splits
   * them again (one datagram per slot, as without GRO). setSocket: turn it on for the socket (once,
   * by its owner); false: the socket has it already (a worker's view). Returns whether GRO is on.
   * Every reader of a GRO socket must read this way, or joined runs arrive truncated (and dropped).
   */
  enableGro(setSocket = true): boolean {
    if (!this.io.recvBatchGro || !this.io.udpSetGro) return false;
    if (setSocket && !this.io.udpSetGro(this._fd)) return false;
    this.groCarry ??= new Uint8Array(new ArrayBuffer(UDP_GRO_CARRY_SIZE));
    return true;
  }

  get gro(): boolean { return this.groCarry !== null; }

  recvBatch(buf: Buffer, stride: number, max: number, lens: Int32Array, ips: Uint32Array, ports: Int32Array): number {
    if (this.groCarry !== null) return this.io.recvBatchGro!(this._fd, buf, stride, max, lens, ips, ports, this.groCarry);
    return this.io.recvBatch(this._fd, buf, stride, max, lens, ips, ports);
  }

  sendBatch(buf: Buffer, offs: Int32Array, lens: Int32Array, ips: Uint32Array, ports: Int32Array, errs: Int32Array, n: number): number {
    return this.io.sendBatch(this._fd, buf, offs, lens, ips, ports, errs, n, this.gso);
  }

  setReadable(cb: (() => void) | null): void {
    if (this.pollHandle !== null) {
      this.io.unpoll(this.pollHandle);
      this.pollHandle = null;
    }
    if (cb && this._fd >= 0) this.pollHandle = this.io.poll(this._fd, cb);
  }

  close(): void {
    this.setReadable(null);
    if (this._fd >= 0 && this.owner) this.io.closeFd(this._fd);
    this._fd = -1;
  }
}
