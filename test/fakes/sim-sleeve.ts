// The sleeve's liveness in the simulation: an OverlayManager for MeshSim whose per-connection state
// machine is the sleeve's (router/sleeve.ts tick) with the same policy (router/heartbeat.ts): beats
// every fastMs until heard both ways, then every idleMs when nothing else went out; a path is heard
// while something arrived within silenceLimit; 'hear' tells the other end. Beats travel as Msg.Overlay
// messages over the fake connection (the real ones are UDP datagrams: one beat here is one datagram
// there), so the underlay counts them; no data flows in the simulation, so every beat is an idle one.
import type { Clock, TimerHandle } from '../../lib/clock';
import type { OverlayCallbacks, OverlayHandle, OverlayManager } from '../../mesh/mesh';
import { Msg, type MeshConnection } from '../../mesh/types';
import { BeatState, SLEEVE_BEATS, beatDue, beatSent, silenceLimit, type BeatPolicy } from '../../router/heartbeat';

const BEAT = 1;
const HEAR = 2;

class SimPath {
  readonly beats = new BeatState();
  sent = 0;
  lastRx = -Infinity;
  weHear = false;
  theyHear = false;
  established = false;
  closed = false;
  constructor(readonly conn: MeshConnection, readonly cb: OverlayCallbacks, readonly startedAt: number) {}
}

export class SimSleeve implements OverlayManager {
  private readonly paths = new Set<SimPath>();
  private timer: TimerHandle | undefined;
  /** beats sent by this router */
  beatsSent = 0;
  /** established paths that failed (heard nothing within the silence limit) */
  failures = 0;

  constructor(private readonly clock: Clock, random: () => number, private readonly pol: BeatPolicy = SLEEVE_BEATS) {
    // routers do not tick in lockstep
    this.timer = clock.setTimeout(() => this.tick(), Math.floor(random() * pol.fastMs) + 1);
  }

  attach(conn: MeshConnection, cb: OverlayCallbacks): OverlayHandle {
    const p = new SimPath(conn, cb, this.clock.now());
    this.paths.add(p);
    this.beat(p, this.clock.now());
    return {
      onMessage: (payload) => this.onMessage(p, payload),
      close: () => { p.closed = true; this.paths.delete(p); },
      status: () => ({ overlay: p.established ? 'sleeve' : null, encrypted: false, ...(p.established ? {} : { reason: 'waiting for sleeve heartbeats' }) }),
    };
  }

  stop(): void {
    this.clock.clearTimeout(this.timer);
    this.timer = undefined;
    this.paths.clear();
  }

  private send(p: SimPath, body: number[]): void {
    p.conn.send(Msg.Overlay, Uint8Array.from(body));
  }

  private beat(p: SimPath, now: number): void {
    this.send(p, [BEAT]);
    p.sent++;
    this.beatsSent++;
    beatSent(p.beats, now);
  }

  private onMessage(p: SimPath, payload: Uint8Array): void {
    if (p.closed) return;
    if (payload[0] === BEAT) {
      p.lastRx = this.clock.now();
      if (!p.weHear) {
        p.weHear = true;
        this.send(p, [HEAR, 1]);
        this.evaluate(p);
      }
    } else if (payload[0] === HEAR) {
      p.theyHear = payload[1] === 1;
      this.evaluate(p);
    }
  }

  private evaluate(p: SimPath): void {
    const est = p.weHear && p.theyHear;
    if (est === p.established) return;
    p.established = est;
    if (est) p.cb.established();
    else {
      this.failures++;
      p.cb.failed(p.weHear ? 'the peer does not receive our sleeve heartbeats' : 'no sleeve heartbeats from the peer');
    }
  }

  private tick(): void {
    const now = this.clock.now();
    for (const p of this.paths) {
      if (p.closed) continue;
      const hear = now - p.lastRx <= silenceLimit(this.pol, p.weHear);
      if (hear !== p.weHear) {
        p.weHear = hear;
        this.send(p, [HEAR, hear ? 1 : 0]);
        this.evaluate(p);
        if (p.closed) continue;
      }
      // the counter of sent datagrams: beats only (no data in the simulation)
      if (beatDue(p.beats, this.pol, p.established, now, p.sent)) this.beat(p, now);
    }
    this.timer = this.clock.setTimeout(() => this.tick(), this.pol.fastMs);
  }
}
