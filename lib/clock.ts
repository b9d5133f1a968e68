// Time as an input: real components get realClock; simulations drive a FakeClock by hand, so
// thousands of peers run in one process without real timers and runs are reproducible.

export interface TimerHandle { readonly __timer: true }

export interface Clock {
  now(): number; // milliseconds
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(h: TimerHandle | undefined): void;
}

export const realClock: Clock = {
  now: () => Date.now(),
  setTimeout(fn, ms) {
    const t = setTimeout(fn, ms);
    t.unref?.();
    return t as unknown as TimerHandle;
  },
  clearTimeout(h) {
    if (h) clearTimeout(h as unknown as NodeJS.Timeout);
  },
};

/**
 * Milliseconds from now to the next multiple of period on the clock (period when exactly on one).
 * Periodic work aligned this way fires together: a router's per-connection beats in one wake-up, and
 * on hosts with synchronised clocks its peers' beats arrive together too.
 */
export function untilAligned(now: number, period: number): number {
  const r = period - (now % period);
  return r > 0 ? r : period;
}

interface FakeTimer { at: number; seq: number; fn: () => void; cancelled: boolean }

/** Deterministic clock: timers fire only from advance()/runUntil(), in (time, creation) order. */
export class FakeClock implements Clock {
  private t: number;
  private seq = 0;
  private timers: FakeTimer[] = [];
  constructor(start = 1_000_000) { this.t = start; }
  now(): number { return this.t; }
  setTimeout(fn: () => void, ms: number): TimerHandle {
    const timer: FakeTimer = { at: this.t + Math.max(0, ms), seq: this.seq++, fn, cancelled: false };
    this.timers.push(timer);
    return timer as unknown as TimerHandle;
  }
  clearTimeout(h: TimerHandle | undefined): void {
    if (h) (h as unknown as FakeTimer).cancelled = true;
  }
  pending(): number { return this.timers.filter((t) => !t.cancelled).length; }
  /**
   * A blocked event loop: time moves on by ms and no timer fires. The timers that fell due meanwhile
   * fire late, at the next advance(), in their (time, creation) order.
   */
  stall(ms: number): void {
    this.t += ms;
  }
  /** Advance time by ms, firing every timer that falls due (including ones scheduled meanwhile). */
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      this.timers = this.timers.filter((t) => !t.cancelled);
      let next: FakeTimer | undefined;
      for (const t of this.timers) if (t.at <= end && (!next || t.at < next.at || (t.at === next.at && t.seq < next.seq))) next = t;
      if (!next) break;
      this.t = Math.max(this.t, next.at);
      next.cancelled = true;
      next.fn();
    }
    this.t = end;
  }
}
