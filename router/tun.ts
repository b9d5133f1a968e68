// TUN device access for the sleeve. The interface is batch-shaped (whole packets in and out of
// caller-owned slot rings) so the real device (native addon) and the in-memory channel fake used by
// unit tests are interchangeable. Never a Node stream on the TUN fd: it merges writes into one packet.
import { WeaveError } from '../mesh/errors';
import type { TunIo } from './native';

export interface TunDevice {
  readonly name: string;
  /** Reads up to max packets into buf at multiples of stride; lens[i] gets each length. 0 when empty. */
  readBatch(buf: Buffer, stride: number, max: number, lens: Int32Array): number;
  /** Writes n packets buf[offs[i], offs[i]+lens[i]); returns how many the device took. */
  writeBatch(buf: Buffer, offs: Int32Array, lens: Int32Array, n: number): number;
  /** cb runs whenever packets are waiting (level-triggered: drain or be called again); null stops. */
  setReadable(cb: (() => void) | null): void;
  close(): void;
}

export class NativeTun implements TunDevice {
  private _fd: number;
  private pollHandle: unknown = null;
  /** false for a view onto another thread's fd: close() then only stops polling */
  private readonly owner: boolean;

  /** Opens (creating if needed) the TUN device `name` (IFF_TUN | IFF_NO_PI, non-blocking). */
  constructor(private readonly io: TunIo, readonly name: string, fd?: number) {
    this.owner = fd === undefined;
    if (fd !== undefined) {
      this._fd = fd;
      return;
    }
    try {
      this._fd = io.openTun(name, false);
    } catch (e) {
      throw new WeaveError('ETUN', `cannot open TUN device ${name}: ${(e as Error).message}`, { name }, { cause: e });
    }
  }

  /** The device's fd (worker threads share it: fds are process-wide). */
  get fd(): number { return this._fd; }

  readBatch(buf: Buffer, stride: number, max: number, lens: Int32Array): number {
    return this.io.readBatch(this._fd, buf, stride, max, lens);
  }

  writeBatch(buf: Buffer, offs: Int32Array, lens: Int32Array, n: number): number {
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
