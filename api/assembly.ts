// Transactional start-up: the router is built step by step, each step leaving a named part with a
// stop. When a step fails, every part already built is stopped in reverse order before the error
// goes on (so a refused launch leaves no TUN, VXLAN device, nft table or xfrm state behind), and the
// same reverse order is the shutdown.
import { WeaveError, errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';
import type { Part } from '../lib/subsystem';

export class Assembly {
  private readonly built: Part[] = [];
  private stopping: Promise<void> | undefined;

  /** onStep: told each step's name as it begins (`weave launch` shows the progress of a slow start) */
  constructor(private readonly log: Logger, private readonly onStep?: (step: string) => void) {}

  /** The parts built so far, in start order. */
  get parts(): readonly Part[] {
    return this.built;
  }

  /**
   * Runs one step. Its part is stopped with the others if a later step fails or the router stops.
   * A failing step's error is rethrown as it is (a UsageError stays one), with the step named.
   */
  async add<T extends Part>(step: string, build: () => Promise<T> | T): Promise<T> {
    if (this.stopping) throw new WeaveError('ESHUTDOWN', `cannot start "${step}": the router is stopping`);
    let part: T;
    try {
      this.onStep?.(step);
      part = await build();
    } catch (e) {
      this.log.error({ step, err: errMsg(e) }, 'start-up step failed; stopping what was built');
      await this.stop(`start-up step "${step}" failed`);
      if (e instanceof WeaveError) e.context.step ??= step;
      throw e;
    }
    this.built.push(part);
    return part;
  }

  /** Stops every part in reverse order, once; a part that fails to stop is logged and the rest go on. */
  stop(reason: string): Promise<void> {
    this.stopping ??= (async () => {
      for (const p of [...this.built].reverse()) {
        try {
          await p.stop();
        } catch (e) {
          this.log.warn({ part: p.name, reason, err: errMsg(e) }, 'part failed to stop; continuing');
        }
      }
      this.built.length = 0;
    })();
    return this.stopping;
  }
}

/** A part that only needs a name and a stop (steps whose work is done once started). */
export function part(name: string, stop: () => Promise<void> | void = () => {}, extra: Omit<Part, 'name' | 'stop'> = {}): Part {
  return { name, stop, ...extra };
}
