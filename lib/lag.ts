// Timeouts that do not count the router's own lag. When many routers share few cores (100 on 2),
// an event loop stalls for seconds; its timers then fire late and, since Node runs the timers phase
// before the poll phase, a timeout can be judged before the bytes that arrived during the stall are
// read. The router would then declare a peer silent for a silence its own stall caused, close the
// connection, and both ends' redials add to the load that caused the stall.
//
// How a liveness check uses this (mesh/tcp-transport.ts, router/sleeve.ts, router/fastdp.ts):
//   1. silence = (now - last) - lag.stalledSince(last, cap): the time this loop was stalled since the
//      peer was last heard from is not the peer's silence;
//   2. only when that still reaches the limit, lag.afterIo(recheck): the verdict waits for one poll
//      phase, so what already waits in the socket buffers is read first, and the check runs again.
// Nothing of this runs per packet: the credit is asked for only when a timeout would fire.
//
// How the stall is measured (LagMonitor): one unref'd timer on the clock's whole seconds, the grid the
// router's other per-second timers use (the sleeve's tick), so it adds no wake-up of its own (at 500 ms
// apart it was 2 more a second, and each wake-up of an idle router costs about half a millisecond: 100
// routers' monitors were 10 % of a core); how late it fires is how long the loop could not serve timers. A check asked for between two
// monitor timers also sees the stall still in progress (the monitor's timer overdue right now), so
// the order in which late timers run does not matter. The clock is the injected one: tests stall a
// FakeClock by moving its time without firing timers (FakeClock.stall).
//
// The numbers:
//   - THRESHOLD_MS 200: a stall counts only beyond it. Timer jitter and GC pauses are a few ms to
//     tens of ms; 200 ms is far below every liveness limit (5 s and more) and far above that noise,
//     so an unloaded router gets no credit at all and detects failures exactly as without this.
//   - the cap: one check's credit is at most its own limit (the caller passes it). Under any lag a
//     silent peer is still declared dead within twice its bound (handshake 40 s, read timeout 60 s,
//     sleeve 50 s once heard): a router that is permanently saturated still finds dead peers.
//   - HISTORY_MS 120 000: stalls further back than any limit plus its cap are forgotten (an older
//     `last` gets less credit, never more); at most MAX_EVENTS remembered stalls (a loop late at
//     every wake-up for two minutes is 240).
import { untilAligned, type Clock, type TimerHandle } from './clock';

export const LAG_INTERVAL_MS = 1000;
export const LAG_THRESHOLD_MS = 200;
export const LAG_HISTORY_MS = 120_000;
const MAX_EVENTS = 512;

/** What a liveness check needs: the credit for this process's stalls and a way past the poll phase. */
export interface LagCredit {
  /**
   * Milliseconds this process's event loop was stalled (beyond the threshold) between `since` and
   * now, at most capMs.
   */
  stalledSince(since: number, capMs: number): number;
  /** Runs fn after the I/O already waiting has been read (setImmediate: after the next poll phase). */
  afterIo(fn: () => void): void;
}

/** No credit and no deferral: components built without a monitor (unit tests on a FakeClock) behave as before. */
export const NO_LAG: LagCredit = {
  stalledSince: () => 0,
  afterIo: (fn) => fn(),
};

/** A silence as a timeout should judge it: time since `last` minus the stalls since then (at most capMs of them). */
export function creditedSilence(lag: LagCredit, now: number, last: number, capMs: number): number {
  return now - last - lag.stalledSince(last, capMs);
}

export interface LagStats {
  /** stalls seen (a late timer beyond the threshold) */
  stalls: number;
  /** their sum beyond the threshold, ms */
  stalledMs: number;
  /** the longest, beyond the threshold, ms */
  maxStallMs: number;
}

export interface LagMonitorOptions {
  clock: Clock;
  intervalMs?: number;
  thresholdMs?: number;
  historyMs?: number;
  /** how afterIo defers; default setImmediate (tests pass a queue they run by hand) */
  defer?: (fn: () => void) => void;
}

/** Measures the event loop's stalls by a timer's drift on the injected clock. start()/stop() with the router. */
export class LagMonitor implements LagCredit {
  readonly stats: LagStats = { stalls: 0, stalledMs: 0, maxStallMs: 0 };
  private readonly clock: Clock;
  private readonly intervalMs: number;
  private readonly thresholdMs: number;
  private readonly historyMs: number;
  private readonly defer: (fn: () => void) => void;
  /** stalls as [from, to] on the clock: the late part of a wake-up beyond the threshold, oldest first */
  private readonly events: Array<{ from: number; to: number }> = [];
  private timer: TimerHandle | undefined;
  /** when the monitor's timer is due; undefined while stopped */
  private due: number | undefined;

  constructor(o: LagMonitorOptions) {
    this.clock = o.clock;
    this.intervalMs = o.intervalMs ?? LAG_INTERVAL_MS;
    this.thresholdMs = o.thresholdMs ?? LAG_THRESHOLD_MS;
    this.historyMs = o.historyMs ?? LAG_HISTORY_MS;
    this.defer = o.defer ?? ((fn) => { setImmediate(fn); });
  }

  start(): void {
    if (this.due !== undefined) return;
    this.arm();
  }

  stop(): void {
    this.clock.clearTimeout(this.timer);
    this.timer = undefined;
    this.due = undefined;
  }

  afterIo(fn: () => void): void {
    this.defer(fn);
  }

  stalledSince(since: number, capMs: number): number {
    if (capMs <= 0) return 0;
    const now = this.clock.now();
    let sum = overlap(this.pending(now), since, now);
    for (let i = this.events.length - 1; i >= 0 && sum < capMs; i--) {
      const e = this.events[i];
      if (e.to <= since) break;
      sum += overlap(e, since, now);
    }
    return Math.min(sum, capMs);
  }

  /** The stall in progress: the monitor's timer is overdue beyond the threshold right now. */
  private pending(now: number): { from: number; to: number } | null {
    if (this.due === undefined || now - this.due <= this.thresholdMs) return null;
    return { from: this.due + this.thresholdMs, to: now };
  }

  private arm(): void {
    const now = this.clock.now();
    const ms = untilAligned(now, this.intervalMs);
    this.due = now + ms;
    this.timer = this.clock.setTimeout(() => this.wake(), ms);
  }

  private wake(): void {
    const now = this.clock.now();
    const stall = this.pending(now);
    if (stall) {
      const ms = stall.to - stall.from;
      this.stats.stalls++;
      this.stats.stalledMs += ms;
      if (ms > this.stats.maxStallMs) this.stats.maxStallMs = ms;
      this.events.push(stall);
    }
    const horizon = now - this.historyMs;
    let drop = 0;
    while (drop < this.events.length && (this.events[drop].to < horizon || this.events.length - drop > MAX_EVENTS)) drop++;
    if (drop) this.events.splice(0, drop);
    this.arm();
  }
}

function overlap(e: { from: number; to: number } | null, a: number, b: number): number {
  if (!e) return 0;
  return Math.max(0, Math.min(e.to, b) - Math.max(e.from, a));
}
