// The sleeve's UDP socket, batch-shaped like the TUN (see tun.ts). Addresses are host-order u32 +
// port in parallel typed arrays so nothing is allocated per datagram. The socket sets DF on every
// datagram (IP_PMTUDISC_DO): probes measure the path MTU and EMSGSIZE reports a shrunken one.
import { WeaveError } from '../mesh/errors';
import type { TunIo } from './native';

export const EMSGSIZE = 90;
export const EAGAIN = 11;

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
  private fd: number;
  private pollHandle: unknown = null;
  readonly port: number;

  constructor(private readonly io: TunIo, bindIp: number, port: number, bufBytes = 4 << 20) {
    try {
      this.fd = io.udpOpen(bindIp >>> 0, port, bufBytes, bufBytes);
    } catch (e) {
      throw new WeaveError('EUDP', `cannot bind UDP port ${port}: ${(e as Error).message}`, { port }, { cause: e });
    }
    this.port = io.udpPort(this.fd);
  }

  recvBatch(buf: Buffer, stride: number, max: number, lens: Int32Array, ips: Uint32Array, ports: Int32Array): number {
    return this.io.recvBatch(this.fd, buf, stride, max, lens, ips, ports);
  }

  sendBatch(buf: Buffer, offs: Int32Array, lens: Int32Array, ips: Uint32Array, ports: Int32Array, errs: Int32Array, n: number): number {
    return this.io.sendBatch(this.fd, buf, offs, lens, ips, ports, errs, n);
  }

  setReadable(cb: (() => void) | null): void {
    if (this.pollHandle !== null) {
      this.io.unpoll(this.pollHandle);
      this.pollHandle = null;
    }
    if (cb && this.fd >= 0) this.pollHandle = this.io.poll(this.fd, cb);
  }

  close(): void {
    this.setReadable(null);
    if (this.fd >= 0) {
      this.io.closeFd(this.fd);
      this.fd = -1;
    }
  }
}
