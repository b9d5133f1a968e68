// The scheduling every desired-state reconciler in host/ shares: a pass runs after a change
// (debounced through the Clock) and on an interval; concurrent requests share the running pass
// and queue at most one more, because the desired state may have changed while it ran.
import type { Clock, TimerHandle } from '../lib/clock';
import { WeaveError, errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';

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

  /**
   * One pass now. Concurrent calls share the running pass and queue exactly one more after it. A
   * debounced pass still pending is cancelled: the pass this call starts or queues sees the same
   * changes (and an explicit caller gets the counts of the pass that applied them).
   */
  run(): Promise<R> {
    if (this.debounceTimer) {
      this.clock.clearTimeout(this.debounceTimer);
      this.debounceTimer = undefined;
    }
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

export interface ReconcileStats { runs: number; errors: number; lastError?: string }

/**
 * A reconciler driven by a ReconcileLoop: subclasses write one pass (runOnce); this counts passes and
 * failures, logs a failure once per pass, and gives them schedule/start/stop.
 */
export abstract class LoopedReconciler<R, S extends ReconcileStats> {
  private readonly loop: ReconcileLoop<R>;

  protected constructor(clock: Clock, debounceMs: number, protected readonly st: S, private readonly failures: { log: Logger; what: string }) {
    this.loop = new ReconcileLoop(clock, debounceMs, () => this.pass());
  }

  /** One pass: read the kernel's state, apply the difference to the desired one. */
  protected abstract runOnce(): Promise<R>;

  private async pass(): Promise<R> {
    this.st.runs++;
    try {
      return await this.runOnce();
    } catch (e) {
      this.st.errors++;
      this.st.lastError = errMsg(e);
      this.failures.log.warn({ err: errMsg(e) }, `${this.failures.what} reconcile failed (will retry on the next change or tick)`);
      throw e;
    }
  }

  /** One pass now (read ours from the kernel, apply the difference). Concurrent calls share the running pass and queue one more. */
  reconcile(): Promise<R> {
    return this.loop.run();
  }

  /** A pass soon (debounced). */
  protected schedule(): void {
    this.loop.schedule();
  }

  /** Reconciles now and then every intervalMs until stop(). */
  start(intervalMs: number): void {
    this.loop.start(intervalMs);
  }

  stop(): void {
    this.loop.stop();
  }

  stats(): S { return { ...this.st }; }
}
