// The event loop's stalls (lib/lag.ts): measured from the start of the wire on, so the transport's
// and the overlays' timeouts can leave this router's own lag out of a peer's silence, and shown as
// metrics, so an operator sees "my router lagged" next to the connections it kept or lost.
import type { Clock } from '../../lib/clock';
import { LagMonitor, LAG_THRESHOLD_MS } from '../../lib/lag';
import { counterFrom, gaugeFrom } from '../../lib/metrics';
import type { Part } from '../../lib/subsystem';

export interface LagPart extends Part { monitor: LagMonitor }

export function watchLag(clock: Clock): LagPart {
  const monitor = new LagMonitor({ clock });
  monitor.start();
  const beyond = `beyond ${LAG_THRESHOLD_MS} ms`;
  return {
    name: 'lag monitor', monitor,
    stop: () => monitor.stop(),
    metrics: (reg) => {
      counterFrom(reg, 'weave_event_loop_stalls_total', `Times the router's event loop served a timer more than ${LAG_THRESHOLD_MS} ms late (it was blocked or starved of CPU).`, () => monitor.stats.stalls);
      counterFrom(reg, 'weave_event_loop_stalled_seconds_total', `Seconds the router's event loop was stalled, ${beyond}; liveness timeouts do not count this time (capped at each timeout's own length).`, () => monitor.stats.stalledMs / 1000);
      gaugeFrom(reg, 'weave_event_loop_max_stall_seconds', `The longest event-loop stall since the router started, ${beyond}.`, () => monitor.stats.maxStallMs / 1000);
    },
  };
}
