// An informer: one collection kept in memory by list + watch, as client-go's reflector does.
//
//   list (once, and again only after a 410) -> diff against what we had -> added/modified/deleted
//   watch from the list's resourceVersion -> events; BOOKMARKs move the resourceVersion on
//   the stream ends (the server's timeout)  -> watch again from the last resourceVersion (no list)
//   an ERROR 410 Expired                    -> relist (our resourceVersion was compacted away)
//   the API unreachable or failing          -> back off (0.5 s doubling to 30 s, jittered), then the same
//
// So at steady state the only requests are watches, one per timeout (5-10 min). State changes (up,
// down, relisting) are logged once each, not per retry.
import type { Clock, TimerHandle } from '../lib/clock';
import { errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';
import type { KubeClient, KubeObject, WatchEnd } from './client';

export interface InformerHandlers<T extends KubeObject> {
  added?(o: T): void;
  modified?(o: T, old: T): void;
  deleted?(o: T): void;
  /** after each (re)list has been applied */
  synced?(): void;
}

export interface InformerOptions<T extends KubeObject> {
  client: KubeClient;
  /** e.g. /api/v1/nodes */
  collection: string;
  fieldSelector?: string;
  labelSelector?: string;
  clock: Clock;
  log: Logger;
  handlers: InformerHandlers<T>;
  backoff?: { initialMs: number; maxMs: number };
  /** the watch timeout asked of the server: a random value in [min, 2*min) seconds */
  watchTimeoutS?: number;
  random?: () => number;
}

export type InformerState = 'starting' | 'up' | 'down';

export function objectKey(o: KubeObject): string {
  return o.metadata.namespace ? `${o.metadata.namespace}/${o.metadata.name}` : o.metadata.name;
}

/** Jittered exponential backoff. */
export class Backoff {
  private n = 0;
  constructor(private readonly initialMs: number, private readonly maxMs: number, private readonly random: () => number = Math.random) {}
  next(): number {
    const base = Math.min(this.maxMs, this.initialMs * 2 ** this.n);
    if (base < this.maxMs) this.n++;
    return Math.round(base * (0.8 + 0.4 * this.random()));
  }
  reset(): void { this.n = 0; }
  get attempts(): number { return this.n; }
}

export class Informer<T extends KubeObject> {
  readonly store = new Map<string, T>();
  state: InformerState = 'starting';
  lastError = '';
  resourceVersion = '';
  readonly counters = { lists: 0, relists: 0, watches: 0, events: 0, bookmarks: 0, failures: 0 };
  private readonly backoff: Backoff;
  private readonly abort = new AbortController();
  private sleepTimer: TimerHandle | undefined;
  private wakeSleep: (() => void) | undefined;
  private running: Promise<void> | undefined;
  private syncedOnce!: () => void;
  /** resolves after the first list */
  readonly firstSync = new Promise<void>((r) => (this.syncedOnce = r));
  stateSince: number;

  constructor(private readonly o: InformerOptions<T>) {
    this.backoff = new Backoff(o.backoff?.initialMs ?? 500, o.backoff?.maxMs ?? 30_000, o.random);
    this.stateSince = o.clock.now();
  }

  start(): void {
    this.running ??= this.run();
  }

  async stop(): Promise<void> {
    this.abort.abort();
    this.o.clock.clearTimeout(this.sleepTimer);
    this.wakeSleep?.();
    await this.running;
  }

  private get stopped(): boolean { return this.abort.signal.aborted; }

  private setState(s: InformerState, err?: unknown): void {
    if (err !== undefined) this.lastError = errMsg(err);
    if (s === this.state) return;
    const was = this.state;
    const since = this.stateSince;
    this.state = s;
    this.stateSince = this.o.clock.now();
    if (s === 'down') this.o.log.warn({ collection: this.o.collection, err: this.lastError, was }, 'kube: API server unreachable; retrying with backoff (routing goes on)');
    else if (was === 'down') this.o.log.info({ collection: this.o.collection, downForMs: this.stateSince - since }, 'kube: API server reachable again');
  }

  private async sleep(ms: number): Promise<void> {
    if (this.stopped) return;
    await new Promise<void>((resolve) => {
      this.wakeSleep = resolve;
      this.sleepTimer = this.o.clock.setTimeout(resolve, ms);
    });
    this.wakeSleep = undefined;
  }

  private async run(): Promise<void> {
    let needList = true;
    while (!this.stopped) {
      if (needList) {
        try {
          await this.list();
          needList = false;
          this.backoff.reset();
          this.setState('up');
        } catch (e) {
          this.counters.failures++;
          this.setState('down', e);
          await this.sleep(this.backoff.next());
          continue;
        }
      }
      const began = this.o.clock.now();
      const events = this.counters.events + this.counters.bookmarks;
      const end = await this.watchOnce();
      if (end.how === 'aborted') return;
      if (end.how === 'expired') {
        this.counters.relists++;
        this.o.log.info({ collection: this.o.collection, resourceVersion: this.resourceVersion, why: end.message }, 'kube: watch expired (410); relisting');
        needList = true;
      } else if (end.how === 'error') {
        this.counters.failures++;
        this.setState('down', end.error);
        await this.sleep(this.backoff.next());
      }
      else if (this.o.clock.now() - began < 1000 && this.counters.events + this.counters.bookmarks === events) {
        // closed at once with nothing in it: a server in trouble; do not spin
        await this.sleep(this.backoff.next());
      }
      // else 'closed': the server's timeout; watch again from where we are
    }
  }

  private async list(): Promise<void> {
    this.counters.lists++;
    const l = await this.o.client.list<T>(this.o.collection, { fieldSelector: this.o.fieldSelector, labelSelector: this.o.labelSelector });
    const seen = new Set<string>();
    const h = this.o.handlers;
    for (const o of l.items) {
      const k = objectKey(o);
      seen.add(k);
      const old = this.store.get(k);
      this.store.set(k, o);
      if (!old) h.added?.(o);
      else if (old.metadata.resourceVersion !== o.metadata.resourceVersion) h.modified?.(o, old);
    }
    for (const [k, old] of [...this.store]) {
      if (seen.has(k)) continue;
      this.store.delete(k);
      h.deleted?.(old);
    }
    this.resourceVersion = l.metadata.resourceVersion;
    h.synced?.();
    this.syncedOnce();
  }

  private watchOnce(): Promise<WatchEnd> {
    this.counters.watches++;
    const base = this.o.watchTimeoutS ?? 300;
    const h = this.o.handlers;
    return this.o.client.watch<T>(this.o.collection, {
      resourceVersion: this.resourceVersion, allowWatchBookmarks: true, fieldSelector: this.o.fieldSelector, labelSelector: this.o.labelSelector,
      timeoutSeconds: Math.round(base * (1 + (this.o.random ?? Math.random)())), signal: this.abort.signal,
      onOpen: () => { this.backoff.reset(); this.setState('up'); },
    }, (ev) => {
      const rv = ev.object.metadata.resourceVersion;
      if (rv) this.resourceVersion = rv;
      if (ev.type === 'BOOKMARK') { this.counters.bookmarks++; return; }
      this.counters.events++;
      const k = objectKey(ev.object);
      const old = this.store.get(k);
      try {
        if (ev.type === 'DELETED') {
          this.store.delete(k);
          if (old) h.deleted?.(ev.object);
        } else {
          this.store.set(k, ev.object);
          if (old) h.modified?.(ev.object, old); else h.added?.(ev.object);
        }
      } catch (e) {
        this.o.log.error({ collection: this.o.collection, key: k, err: errMsg(e) }, 'kube: a handler failed on a watch event');
      }
    });
  }

  status(): { state: InformerState; since: number; lastError: string; resourceVersion: string; objects: number; counters: Informer<T>['counters'] } {
    return { state: this.state, since: this.stateSince, lastError: this.lastError, resourceVersion: this.resourceVersion, objects: this.store.size, counters: { ...this.counters } };
  }
}
