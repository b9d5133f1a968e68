// Password rotation without downtime: the passwords a router accepts, and the window during which it
// accepts two.
//
// The scheme (the wire half lives in mesh/wire.ts, the data-plane half in router/sleeve.ts and
// router/fastdp.ts):
//  - A router holds one password (generation 1 at start). `weave password-rotate`, POST
//    /password/rotate or SIGHUP re-read --password-file (api/password.ts); a new password starts a
//    window (default 10 minutes, --window SECONDS) during which the router accepts {old, new}.
//  - Handshakes during the window: the router seals its features frame under both (old first) and
//    trial-opens the peer's frame(s) under both (an AEAD open: cheap, reveals nothing). The connection
//    is keyed with the newest password both ends accept, so a rotated host meets an unrotated one on
//    the old password, two rotated hosts meet on the new one, and a host that already finished (new
//    only) meets a rotated one on the new one.
//  - Live connections move in-band: when the router gets the new password it offers it on every open
//    connection (Msg.Rekey Offer: an HMAC under SHA-256(shared ‖ new) over the handshake's public
//    keys). A peer that also holds it answers Switch and seals under the new key from that frame on;
//    the offerer does the same on the Switch. Each direction switches at a message boundary; the
//    counters continue, so no nonce repeats under any key.
//  - The overlays follow make-before-break, per direction: a router installs the new receive key
//    ('accept') before it sends Offer or Switch, and seals data under the new key ('use') only when it
//    sends Switch, i.e. once the peer has proved it holds the new password and has installed the
//    receive key. The old receive key stays until the peer's Switch ('settled') plus a grace period.
//    The sleeve tells keys apart by a key-phase bit in its frame header; fastdp ESP adds the new SAs
//    before it removes the old ones. So no packet is lost to the re-key.
//  - When the window ends (its timer, or `weave password-rotate --finish`), the old password is
//    dropped: connections still on it (the peer never got the new one) are closed with a log line
//    saying so, and later handshakes offer the new password only. A wrong password is refused as
//    before (EPASSWORD on both ends).
//  - A second rotation must wait until the first is finished (at most two passwords at once); rotating
//    to the password already current or already pending is a no-op (repeated SIGHUPs are harmless), and
//    repeating it with a window moves the end of the window.
import type { Clock, TimerHandle } from '../lib/clock';
import { UsageError } from '../lib/errors';
import type { Logger } from '../lib/log';
import type { Secret } from './wire';

export const DEFAULT_ROTATION_WINDOW_MS = 10 * 60_000;
export const MIN_ROTATION_WINDOW_MS = 1000;
export const MAX_ROTATION_WINDOW_MS = 7 * 24 * 3600_000;

export interface RotationStatus {
  /** 'off': no password (unencrypted); 'steady': one password; 'rotating': two, until windowEndsAt */
  state: 'off' | 'steady' | 'rotating';
  /** generation of the newest password (0 when off) */
  generation: number;
  /** generations accepted now, oldest first */
  accepting: number[];
  /** ms since the epoch (the router's clock) */
  windowEndsAt?: number;
  /** when the last rotation started / finished */
  startedAt?: number;
  finishedAt?: number;
}

export interface PasswordRingOptions {
  password: Buffer | null;
  clock: Clock;
  log: Logger;
  defaultWindowMs?: number;
}

/** The passwords a router accepts (oldest first) and the rotation window; the transport follows its changes. */
export class PasswordRing {
  private secrets: Secret[];
  private windowEndsAt: number | undefined;
  private startedAt: number | undefined;
  private finishedAt: number | undefined;
  private timer: TimerHandle | undefined;
  private readonly listeners = new Set<() => void>();
  private readonly log: Logger;
  private readonly defaultWindowMs: number;

  constructor(private readonly o: PasswordRingOptions) {
    this.log = o.log.child({ component: 'password' });
    this.defaultWindowMs = o.defaultWindowMs ?? DEFAULT_ROTATION_WINDOW_MS;
    this.secrets = o.password && o.password.length > 0 ? [{ gen: 1, password: Buffer.from(o.password) }] : [];
  }

  get encrypted(): boolean {
    return this.secrets.length > 0;
  }

  /** The passwords accepted now, oldest first (empty: unencrypted). */
  accepted(): Secret[] {
    return [...this.secrets];
  }

  status(): RotationStatus {
    const s: RotationStatus = {
      state: this.secrets.length === 0 ? 'off' : this.secrets.length > 1 ? 'rotating' : 'steady',
      generation: this.secrets.length ? this.secrets[this.secrets.length - 1].gen : 0,
      accepting: this.secrets.map((p) => p.gen),
    };
    if (this.windowEndsAt !== undefined) s.windowEndsAt = this.windowEndsAt;
    if (this.startedAt !== undefined) s.startedAt = this.startedAt;
    if (this.finishedAt !== undefined) s.finishedAt = this.finishedAt;
    return s;
  }

  /** Called after every change of the accepted passwords. Returns an unsubscribe function. */
  onChange(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /**
   * Starts accepting `password` next to the current one, for windowMs (default 10 minutes). UsageError
   * when unencrypted, empty, or another rotation is still open.
   */
  rotate(password: Buffer, opts: { windowMs?: number; source?: string } = {}): RotationStatus {
    if (!this.encrypted) throw new UsageError('this router runs without a password: rotation cannot turn encryption on (restart it with --password-file)');
    if (password.length === 0) throw new UsageError('the new password is empty');
    const windowMs = opts.windowMs ?? this.defaultWindowMs;
    if (!Number.isFinite(windowMs) || windowMs < MIN_ROTATION_WINDOW_MS || windowMs > MAX_ROTATION_WINDOW_MS) {
      throw new UsageError(`invalid rotation window ${windowMs / 1000} s: expected ${MIN_ROTATION_WINDOW_MS / 1000}..${MAX_ROTATION_WINDOW_MS / 1000} seconds`);
    }
    const newest = this.secrets[this.secrets.length - 1];
    if (Buffer.from(newest.password).equals(password)) {
      if (this.secrets.length > 1 && opts.windowMs !== undefined) {
        this.arm(windowMs);
        this.log.info({ generation: newest.gen, windowEndsAt: new Date(this.windowEndsAt as number).toISOString() }, 'rotation window moved');
      } else {
        this.log.info({ generation: newest.gen, source: opts.source }, 'password unchanged: nothing to rotate');
      }
      return this.status();
    }
    if (this.secrets.length > 1) {
      throw new UsageError(`a rotation to password generation ${newest.gen} is still open until ${new Date(this.windowEndsAt as number).toISOString()}: finish it first (weave password-rotate --finish)`);
    }
    const gen = newest.gen + 1;
    this.secrets = [newest, { gen, password: Buffer.from(password) }];
    this.startedAt = this.o.clock.now();
    this.finishedAt = undefined;
    this.arm(windowMs);
    this.log.info({ generation: gen, accepting: [newest.gen, gen], windowEndsAt: new Date(this.windowEndsAt as number).toISOString(), source: opts.source }, 'password rotation started: accepting the old and the new password');
    this.emit();
    return this.status();
  }

  /** Ends the window now: only the newest password is accepted from here on. */
  finish(reason = 'finished on request'): RotationStatus {
    if (this.secrets.length < 2) {
      this.log.info({ generation: this.status().generation }, 'no rotation open: nothing to finish');
      return this.status();
    }
    this.o.clock.clearTimeout(this.timer);
    this.timer = undefined;
    const dropped = this.secrets[0].gen;
    this.secrets = [this.secrets[1]];
    this.windowEndsAt = undefined;
    this.finishedAt = this.o.clock.now();
    this.log.info({ generation: this.secrets[0].gen, dropped, reason }, 'password rotation finished: the old password is no longer accepted');
    this.emit();
    return this.status();
  }

  stop(): void {
    this.o.clock.clearTimeout(this.timer);
    this.timer = undefined;
    this.listeners.clear();
  }

  private arm(windowMs: number): void {
    this.o.clock.clearTimeout(this.timer);
    this.windowEndsAt = this.o.clock.now() + windowMs;
    this.timer = this.o.clock.setTimeout(() => {
      this.timer = undefined;
      this.finish('the rotation window ended');
    }, windowMs);
  }

  private emit(): void {
    for (const fn of [...this.listeners]) {
      try {
        fn();
      } catch (e) {
        this.log.error({ err: e instanceof Error ? e.message : String(e) }, 'password change listener threw');
      }
    }
  }
}
