// The scheduling every desired-state reconciler in host/ shares: a pass runs after a change
// (debounced through the Clock) and on an interval; concurrent requests share the running pass
// and queue at most one more, because the desired state may have changed while it ran.
import type { Clock, TimerHandle } from '../mesh/clock';
import { WeaveError } from '../mesh/errors';

export class ReconcileLoop<R> {
  private running?: Promise<R>;
  private queued?: Promise<R>;
  private debounceTimer?: TimerHandle;
  private intervalTimer?: TimerHandle;
  private intervalMs = 0;
  /** set by stop(): no more timers until start() */
  private closed = false;

  /** pass runs one reconcile; it logs and counts its own failures (the loop only retries later). */
  constructor(private readonly clock: Clock, private readonly debounceMs: number, private readonly pass: () => Promise<R>) {}

  /** One pass now. Concurrent calls share the running pass and queue exactly one more after it. */
  run(): Promise<R> {
    if (!this.running) {
      this.running = this.pass().finally(() => { this.running = undefined; });
      return this.running;
    }
    if (!this.queued) {
      this.queued = this.running.then(() => undefined, () => undefined).then(() => {
        this.queued = undefined;
        return this.run();
      });
    }
    return this.queued;
  }

  /** A pass soon (after debounceMs), coalescing bursts of changes. */
  schedule(): void {
    if (this.debounceTimer || this.closed) return;
    this.debounceTimer = this.clock.setTimeout(() => {
      this.debounceTimer = undefined;
      this.run().catch(() => { /* the pass logged and counted it */ });
    }, this.debounceMs);
  }

  /** A pass now and then every intervalMs until stop(). */
  start(intervalMs: number): void {
    if (!(intervalMs > 0)) throw new WeaveError('EINVAL', `reconcile interval must be > 0 ms, got ${intervalMs}`);
    this.intervalMs = intervalMs;
    this.closed = false;
    this.clock.clearTimeout(this.intervalTimer);
    this.tick();
  }

  private tick(): void {
    this.run().catch(() => { /* the pass logged and counted it */ }).finally(() => {
      if (this.closed) return;
      this.clock.clearTimeout(this.intervalTimer);
      this.intervalTimer = this.clock.setTimeout(() => this.tick(), this.intervalMs);
    });
  }

  stop(): void {
    this.closed = true;
    this.clock.clearTimeout(this.intervalTimer);
    this.clock.clearTimeout(this.debounceTimer);
    this.intervalTimer = undefined;
    this.debounceTimer = undefined;
  }
}
