// Metrics through prom-client: each part registers its metrics once on the router's registry with a
// collect callback that reads the part's own counters at scrape time, so the hot paths keep plain
// numbers (typed arrays shared with worker threads) and never call into prom-client.
import { Counter, Gauge, type Registry } from 'prom-client';

export type Labels = Record<string, string | number>;
export interface Sample { labels: Labels; value: number }
/** A metric's value now: one number for an unlabelled metric, or one sample per label set. */
export type Reading = number | Sample[];

/** A gauge whose value is read from the model at each scrape. */
export function gaugeFrom(reg: Registry, name: string, help: string, read: () => Reading, labelNames: string[] = []): void {
  new Gauge({
    name, help, labelNames, registers: [reg],
    collect() {
      this.reset();
      const r = read();
      if (typeof r === 'number') this.set(Number.isFinite(r) ? r : 0);
      else for (const s of r) this.set(s.labels, Number.isFinite(s.value) ? s.value : 0);
    },
  });
}

/** A counter mirrored from a monotonic number the part keeps (name ends in _total). */
export function counterFrom(reg: Registry, name: string, help: string, read: () => Reading, labelNames: string[] = []): void {
  if (!name.endsWith('_total')) throw new Error(`counter ${name} must end in _total`);
  new Counter({
    name, help, labelNames, registers: [reg],
    collect() {
      this.reset();
      const r = read();
      if (typeof r === 'number') this.inc(finite(r));
      else for (const s of r) this.inc(s.labels, finite(s.value));
    },
  });
}

/** counters never go down: NaN or a negative (a bug elsewhere) is shown as 0 rather than breaking the scrape */
function finite(v: number): number {
  return Number.isFinite(v) && v >= 0 ? v : 0;
}
