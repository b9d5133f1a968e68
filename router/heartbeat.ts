// When a path needs a heartbeat, and when its silence means it is dead: one policy for the sleeve
// (router/sleeve.ts) and the in-process simulation (test/fakes/underlay.ts, bench/convergence.ts), so
// the simulation's idle message rate is the router's.
//
// A heartbeat exists to tell the peer "this direction works". Anything authentic we send on the path
// says that too, so a beat is due only when nothing went out for the interval:
//   - until the path is established both ways, every fastMs (1 s): establishing and recovering are quick;
//   - once established, once per idleMs window of the clock (10 s, Weave Net's slow heartbeat; windows
//     shared by every path and, with synchronised clocks, every router) — and not at all while data
//     flows, since the data proves the path.
// The receiving side stops hearing the peer after idleDeadMs of silence (more than two idle beats
// lost; the peer may count as established before we do, so this holds from the first beat heard). A path that loses its "hear" goes back to fast beats at
// both ends (the 'hear' message tells the peer), so recovery is as quick as a first establishment.
// Full-size PMTU probes are not heartbeats: they run while establishing, when the kernel refuses a
// datagram as too big, and as a re-check every recheckMs (the current size and the largest only).

export interface BeatPolicy {
  /** beat cadence until established both ways */
  fastMs: number;
  /** beat cadence once established and nothing else was sent */
  idleMs: number;
  /** silence that makes a path not heard while establishing */
  deadMs: number;
  /** silence that makes an established path not heard */
  idleDeadMs: number;
}

export const SLEEVE_BEATS: BeatPolicy = { fastMs: 1000, idleMs: 10_000, deadMs: 8000, idleDeadMs: 25_000 };

/** Per path: when we last sent anything authentic on it (a beat or data). */
export class BeatState {
  lastTx = -Infinity;
  /** the engine's tx packet counter for the path when last looked at (data shows as a change) */
  txSeen = 0;
}

/**
 * Whether a beat is due now. `txPackets` is the path's sent-datagram counter (anything sent moves it);
 * a change since the last call counts as sending now.
 */
export function beatDue(st: BeatState, pol: BeatPolicy, established: boolean, now: number, txPackets: number): boolean {
  if (txPackets !== st.txSeen) {
    st.txSeen = txPackets;
    st.lastTx = now;
  }
  // a tick may run a little early: within 10 % of the interval counts as due
  if (!established) return now - st.lastTx >= pol.fastMs * 0.9;
  // Established and idle: a beat is due in each idleMs window of the clock in which nothing was sent
  // yet, so all of a router's idle paths beat at the same tick (one batch, one wake-up of the engine)
  // and, with synchronised clocks, its peers' beats arrive together (one wake-up of the receiver)
  // instead of one per path spread over the interval. The longest gap stays one window.
  return Math.floor(now / pol.idleMs) !== Math.floor(st.lastTx / pol.idleMs);
}

/** Call when a beat was sent (the counter may catch up later: it then counts as this same send). */
export function beatSent(st: BeatState, now: number): void {
  st.lastTx = now;
}

/**
 * How long a path may stay silent before we stop hearing the peer. Once we hear it, the long limit:
 * the peer may already be established and beating every idleMs while our side still waits for its
 * 'hear' (a loaded router: seen as "the peer does not receive our sleeve heartbeats" flaps at 100
 * routers). Not yet heard: deadMs (a first beat counts only when it is recent).
 */
export function silenceLimit(pol: BeatPolicy, hearing: boolean): number {
  return hearing ? pol.idleDeadMs : pol.deadMs;
}
