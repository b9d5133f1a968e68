// Loads the project's data-path addon (native/, built by scripts/build-native.js during npm ci).
// Without it Node alone cannot open a TUN device (no ioctl) nor batch UDP I/O; the caller decides
// what to do (createSleeve falls back to router/fallback-io.ts, koffi FFI, slower). The loader is
// injectable so tests can simulate a missing addon.
import * as path from 'path';
import type { Logger } from '../lib/log';
import { errMsg } from '../lib/errors';

/** The addon's functions. Addresses are host-order u32; every call is synchronous and non-blocking. */
export interface TunIo {
  /** offload: IFF_VNET_HDR + TSO/checksum offloads; such a fd is read/written with the *Vnet calls */
  openTun(name: string, multiQueue: boolean, offload?: boolean): number;
  closeFd(fd: number): void;
  readBatch(fd: number, buf: Uint8Array, stride: number, max: number, lens: Int32Array): number;
  writeBatch(fd: number, buf: Uint8Array, offs: Int32Array, lens: Int32Array, n: number): number;
  udpOpen(ip: number, port: number, rcvbuf: number, sndbuf: number): number;
  udpPort(fd: number): number;
  /** gso: runs of equal-size datagrams to one address as one UDP_SEGMENT message (addon only) */
  sendBatch(fd: number, buf: Uint8Array, offs: Int32Array, lens: Int32Array, ips: Uint32Array, ports: Int32Array, errs: Int32Array, n: number, gso?: boolean): number;
  recvBatch(fd: number, buf: Uint8Array, stride: number, max: number, lens: Int32Array, ips: Uint32Array, ports: Int32Array): number;
  /**
   * TUN with offloads (the native addon only; the koffi fallback has none): readBatchVnet splits
   * super-packets into MTU-sized packets (carry: TUN_CARRY_SIZE bytes, 4-aligned, one per reading
   * thread, holds a half-handed-out super-packet and counters TUN_CARRY_*); writeBatchVnet coalesces
   * in-order TCP segments of a flow into GSO writes.
   */
  readBatchVnet?(fd: number, buf: Uint8Array, stride: number, max: number, lens: Int32Array, carry: Uint8Array): number;
  writeBatchVnet?(fd: number, buf: Uint8Array, offs: Int32Array, lens: Int32Array, n: number): number;
  /** the splitting of readBatchVnet on one crafted virtio header + packet; -1 when malformed (tests) */
  gsoSplit?(vnetPacket: Uint8Array, buf: Uint8Array, stride: number, max: number, lens: Int32Array): number;
  /** what writeBatchVnet would write, virtio header + packet each, back to back in out (tests) */
  groCoalesce?(buf: Uint8Array, offs: Int32Array, lens: Int32Array, n: number, out: Uint8Array, outLens: Int32Array): number;
  /** sets UDP_GRO on a socket; true when the kernel took it (read it with recvBatchGro from then on) */
  udpSetGro?(fd: number): boolean;
  /**
   * recvBatch for a UDP_GRO socket: runs of datagrams the kernel joined are handed out one datagram per
   * slot (carry: UDP_GRO_CARRY_SIZE bytes, 4-aligned, one per reading thread, holds what did not fit)
   */
  recvBatchGro?(fd: number, buf: Uint8Array, stride: number, max: number, lens: Int32Array, ips: Uint32Array, ports: Int32Array, carry: Uint8Array): number;
  /** true once the kernel refused UDP GSO itself (then sendBatch sends datagram by datagram; process-wide) */
  udpGsoOff?(): boolean;
  /** secretbox batches (native/secretbox.c; router/boxes.ts says how the sleeve uses them) */
  boxSeal?(buf: Uint8Array, offs: Int32Array, lens: Int32Array, nonces: Uint8Array, keys: Uint8Array, n: number): void;
  boxOpen?(src: Uint8Array, srcOffs: Int32Array, lens: Int32Array, dst: Uint8Array, dstOffs: Int32Array, nonces: Uint8Array, keys: Uint8Array, ok: Uint8Array, n: number): number;
  /** the SIMD set the batches use; with a name ('generic', 'avx2', 'avx512') switches first, null when absent (tests) */
  boxImpl?(name?: string): string | null;
  /** Poly1305 of msg under a 32-byte one-time key into tag (the batches' MAC, exposed for tests) */
  boxPoly1305?(tag: Uint8Array, msg: Uint8Array, key: Uint8Array): void;
  poll(fd: number, cb: (status: number) => void): unknown;
  unpoll(handle: unknown): void;
  /**
   * A worker thread's blocking wait (tunio.c "waiter"): one epoll set over fds and the thread's own
   * libuv loop. ioWait blocks up to timeoutMs (after spinning up to spinUs when the last wait found
   * data) and returns bit i for fds[i] ready, WAIT_LOOP (1 << 8) when the loop has work, 0 on timeout.
   */
  waiterOpen?(fds: Int32Array): unknown;
  ioWait?(waiter: unknown, timeoutMs: number, spinUs: number): number;
  waiterClose?(waiter: unknown): void;
  /** the waiter's epoll fd, for waiterArm from another thread */
  waiterFd?(waiter: unknown): number;
  /** stops (on false) or resumes waking epfd's waiter for fd (reported as bit); false once epfd lost fd */
  waiterArm?(epfd: number, fd: number, bit: number, on: boolean): boolean;
  /** glibc malloc_trim(0): free pages of every malloc arena back to the kernel; true when some went (api/parts/memory.ts) */
  mallocTrim?(): boolean;
}

/** Size of readBatchVnet's carry buffer, and its u32 counters (native/tunio.c CARRY_*). */
export const TUN_CARRY_SIZE = 64 + 65536;
export const TUN_CARRY_BAD = 2;
export const TUN_CARRY_SUPER = 3;
export const TUN_CARRY_SEGS = 4;

/** Size of recvBatchGro's carry (native/tunio.c GRO_CARRY_SIZE: 8 messages of 64 KB). */
export const UDP_GRO_CARRY_SIZE = 256 + 8 * 65536;

/** Largest batch the addon accepts per sendBatch/recvBatch call. */
export const ADDON_MAX_BATCH = 256;

function defaultAddonPath(): string {
  // dist-*/router/native.js and router/native.ts both sit two levels below the repo root.
  return path.join(__dirname, '..', '..', 'native', 'build', 'Release', 'weave_tunio.node');
}

const REQUIRED: Array<keyof TunIo> = ['openTun', 'closeFd', 'readBatch', 'writeBatch', 'udpOpen', 'udpPort', 'sendBatch', 'recvBatch', 'poll', 'unpoll'];

/**
 * Returns the addon, or null (with one warn line) when it is missing or incomplete.
 * Candidates are tried in order: the WEAVE_NATIVE_ADDON override, then the build output.
 */
export function loadTunIo(log: Logger, load: (p: string) => unknown = (p) => require(p), candidates?: string[]): TunIo | null {
  const paths = candidates ?? [process.env.WEAVE_NATIVE_ADDON, defaultAddonPath(), path.join(process.cwd(), 'native', 'build', 'Release', 'weave_tunio.node')].filter((p): p is string => !!p);
  const errors: string[] = [];
  for (const p of paths) {
    try {
      const m = load(p) as Record<string, unknown>;
      const missing = REQUIRED.filter((k) => typeof m?.[k] !== 'function');
      if (missing.length) {
        errors.push(`${p}: lacks ${missing.join(',')}`);
        continue;
      }
      return m as unknown as TunIo;
    } catch (e) {
      errors.push(`${p}: ${errMsg(e)}`);
    }
  }
  log.warn({ tried: errors }, 'native data-path addon could not load (run `node scripts/build-native.js`)');
  return null;
}
