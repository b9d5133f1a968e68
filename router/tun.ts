// TUN device access for the sleeve. The interface is batch-shaped (whole packets in and out of
// caller-owned slot rings) so the real device (native addon) and the in-memory channel fake used by
// unit tests are interchangeable. Never a Node stream on the TUN fd: it merges writes into one packet.
// With offloads (NativeTun offload) the same calls read TSO super-packets and return the MTU-sized
// packets split from them (the rest waits in a per-reader carry), and writes join TCP segments into
// GSO writes: callers see packets exactly as without offloads.
import { WeaveError } from '../lib/errors';
import { withErrnoName } from '../lib/errno';
import { TUN_CARRY_SIZE, type TunIo } from './native';

export interface TunDevice {
  readonly name: string;
  /** Reads up to max packets into buf at multiples of stride; lens[i] gets each length. 0 when empty. */
  readBatch(buf: Buffer, stride: number, max: number, lens: Int32Array): number;
  /** Writes n packets buf[offs[i], offs[i]+lens[i]); returns how many the device took. */
  writeBatch(buf: Buffer, offs: Int32Array, lens: Int32Array, n: number): number;
  /**
   * With TUN offloads (NativeTun offload): the read side's cumulative counters, u32 indexed by
   * TUN_CARRY_BAD / _SUPER / _SEGS (native.ts); null without offloads.
   */
  readonly offloadStats?: Uint32Array | null;
  /** cb runs whenever packets are waiting (level-triggered: drain or be called again); null stops. */
  setReadable(cb: (() => void) | null): void;
  close(): void;
}

export class NativeTun implements TunDevice {
  private _fd: number;
  private pollHandle: unknown = null;
  /** false for a view onto another thread's fd: close() then only stops polling */
  private readonly owner: boolean;

  /** readBatchVnet's carry (a super-packet being split, counters); null without offloads */
  private readonly carry: Uint8Array | null;
  readonly offloadStats: Uint32Array | null;

  /**
   * Opens (creating if needed) the TUN device `name` (IFF_TUN | IFF_NO_PI, non-blocking), or wraps
   * another thread's fd. offload: the fd is (or is opened) IFF_VNET_HDR with TSO: reads give
   * MTU-sized packets split from super-packets, writes coalesce TCP segments (native addon only).
   */
  constructor(private readonly io: TunIo, readonly name: string, fd?: number, readonly offload = false) {
    this.owner = fd === undefined;
    if (offload && (!io.readBatchVnet || !io.writeBatchVnet)) throw new WeaveError('EINVAL', 'TUN offloads need the native addon', { name });
    this.carry = offload ? new Uint8Array(new ArrayBuffer(TUN_CARRY_SIZE)) : null;
    this.offloadStats = this.carry ? new Uint32Array(this.carry.buffer, 0, 8) : null;
    if (fd !== undefined) {
      this._fd = fd;
      return;
    }
    try {
      this._fd = io.openTun(name, false, offload);
    } catch (e) {
      const cause = withErrnoName(e as Error & { code?: string });
      throw new WeaveError('ETUN', `cannot open TUN device ${name}: ${cause.message}`, { name, errno: cause.code }, { cause });
    }
  }

  /** The device's fd (worker threads share it: fds are process-wide). */
  get fd(): number { return this._fd; }

  readBatch(buf: Buffer, stride: number, max: number, lens: Int32Array): number {
    if (this.carry !== null) return this.io.readBatchVnet!(this._fd, buf, stride, max, lens, this.carry);
    return this.io.readBatch(this._fd, buf, stride, max, lens);
  }

  writeBatch(buf: Buffer, offs: Int32Array, lens: Int32Array, n: number): number {
    if (this.carry !== null) return this.io.writeBatchVnet!(this._fd, buf, offs, lens, n);
    return this.io.writeBatch(this._fd, buf, offs, lens, n);
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
