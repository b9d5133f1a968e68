// The C heap's free pages back to the kernel, now and then. glibc's free() returns memory only from
// the top of the main heap, so the holes that start-up and gossip bursts leave below live chunks
// (many connections forming at once, records exchanged with every new peer) stay resident for the
// router's whole life, and more of them the more peers there are. malloc_trim(0) (through the
// native addon) gives back every free page of every arena. Measured (README "Router memory"): an
// idle 25-router mesh, median router 88.4 -> 78.6 MB VmRSS (main arena 11.3 -> 5.6 MB), 78.0 30 s
// later. A call walks the arenas' free lists (0.2-0.4 ms with 20 MB of holes); the sleeve's worker
// allocates nothing per packet, so it does not wait on the arena locks.
import type { Clock, TimerHandle } from '../../lib/clock';
import { componentLogger, silentLogger, type Logger } from '../../lib/log';
import type { Part } from '../../lib/subsystem';
import { loadTunIo, type TunIo } from '../../router/native';

/** the first trim, once the router's own start-up is over */
export const MALLOC_TRIM_FIRST_MS = 10_000;
/**
 * then this often: what the mesh forming, gossip and API calls left since. Often enough that a
 * burst's holes go back within seconds (with 30 s, routers measured 20 s after a 25-host mesh
 * formed had mostly not trimmed since); a call costs 0.2-0.4 ms, so 0.004% of a core.
 */
export const MALLOC_TRIM_MS = 10_000;

/** Trims the C heap on the clock's timer while running; a no-op part without the addon's mallocTrim (koffi fallback, not glibc). */
export function mallocTrimPart(io: Pick<TunIo, 'mallocTrim'> | null, clock: Clock, log: Logger): Part {
  const trim = io?.mallocTrim?.bind(io);
  let timer: TimerHandle | undefined;
  let stopped = false;
  if (!trim) {
    log.debug('malloc_trim unavailable (no native addon or not glibc): the C heap keeps its free pages');
  } else {
    const tick = (): void => {
      if (stopped) return;
      const t0 = process.hrtime.bigint();
      const gave = trim();
      log.trace({ gave, us: Number(process.hrtime.bigint() - t0) / 1000 }, 'malloc_trim');
      timer = clock.setTimeout(tick, MALLOC_TRIM_MS);
    };
    timer = clock.setTimeout(tick, MALLOC_TRIM_FIRST_MS);
  }
  return {
    name: 'malloc trim',
    stop: () => {
      stopped = true;
      clock.clearTimeout(timer);
    },
  };
}

/** The router's step: the addon as the sleeve loaded it (a missing addon was reported there already). */
export function trimMalloc(root: Logger, clock: Clock): Part {
  return mallocTrimPart(loadTunIo(silentLogger()), clock, componentLogger(root, 'memory'));
}
