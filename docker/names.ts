// Containers' names for the Docker driver's endpoints: libnetwork never tells a driver which container
// an endpoint is for, so the router follows Docker's events (network connect/disconnect, container
// rename) and, at each one and whenever the stream (re)opens, reads the weave networks' containers
// from the API: each endpoint of this host gets its container's ID and name (router/endpoints.ts
// record: `weave ps`) and NAME.weave.local in weaveDNS. Leave removes the records (docker/driver.ts).
// While Docker is not running the watcher retries every few seconds; nothing else waits for it.
import type { Clock, TimerHandle } from '../lib/clock';
import { errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';
import type { ContainerRef, NameBook } from '../lib/subsystem';
import { dockerEndpointKey } from '../router/endpoints';
import type { DockerEngine, EventStream } from './engine';

const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 10_000;
/** events come in bursts (connect, then start): one sync for a burst */
const SYNC_DEBOUNCE_MS = 50;

export interface NamesDeps {
  engine: DockerEngine;
  /** the driver's name (networks of this driver are ours) */
  driver: string;
  endpoints: {
    list(): Array<{ key: string; addrs: string[]; docker?: { endpointId: string }; container?: ContainerRef }>;
    setContainer(key: string, c: ContainerRef): Promise<boolean>;
  };
  names(): NameBook | undefined;
  clock: Clock;
  log: Logger;
}

export class ContainerNames {
  /** "connected" once the event stream is open, else why not */
  state = 'starting';
  readonly counters = { syncs: 0, syncErrors: 0, events: 0, named: 0, reconnects: 0 };
  private stream: EventStream | undefined;
  private retryTimer: TimerHandle | undefined;
  private syncTimer: TimerHandle | undefined;
  private retryMs = RETRY_MIN_MS;
  private stopped = false;
  private syncing: Promise<void> | undefined;
  private again = false;
  /** what each endpoint key was registered as (name and addresses), so an unchanged one is not registered again */
  private readonly registered = new Map<string, string>();

  constructor(private readonly d: NamesDeps) {}

  start(): void {
    this.connect();
  }

  stop(): void {
    this.stopped = true;
    this.stream?.close();
    this.d.clock.clearTimeout(this.retryTimer);
    this.d.clock.clearTimeout(this.syncTimer);
  }

  private connect(): void {
    if (this.stopped) return;
    const filters = { type: ['network', 'container'], event: ['connect', 'disconnect', 'rename'] };
    this.stream = this.d.engine.events(filters, (ev) => {
      this.counters.events++;
      if (ev.Type === 'container' || ev.Actor?.Attributes?.type === this.d.driver) this.scheduleSync();
    }, (err) => {
      this.stream = undefined;
      if (this.stopped) return;
      this.state = `not connected to Docker at ${this.d.engine.socket}: ${err ? errMsg(err) : 'the event stream ended'} (retrying)`;
      this.counters.reconnects++;
      this.retryTimer = this.d.clock.setTimeout(() => this.connect(), this.retryMs);
      this.retryMs = Math.min(RETRY_MAX_MS, this.retryMs * 2);
    }, () => {
      this.state = 'connected';
      this.retryMs = RETRY_MIN_MS;
      this.d.log.info({ socket: this.d.engine.socket }, 'docker: following container events');
      this.scheduleSync();
    });
  }

  scheduleSync(): void {
    if (this.syncTimer || this.stopped) return;
    this.syncTimer = this.d.clock.setTimeout(() => {
      this.syncTimer = undefined;
      void this.sync();
    }, SYNC_DEBOUNCE_MS);
  }

  /** Names every joined endpoint of this host from Docker's view of the weave networks (one at a time). */
  sync(): Promise<void> {
    if (this.syncing) {
      this.again = true;
      return this.syncing;
    }
    this.syncing = (async () => {
      try {
        do {
          this.again = false;
          await this.syncOnce();
        } while (this.again && !this.stopped);
      } finally {
        this.syncing = undefined;
      }
    })();
    return this.syncing;
  }

  private async syncOnce(): Promise<void> {
    this.counters.syncs++;
    const byEndpoint = new Map<string, ContainerRef>();
    try {
      for (const n of await this.d.engine.networksOf(this.d.driver)) {
        const full = await this.d.engine.network(n.Id);
        for (const [id, c] of Object.entries(full.Containers ?? {})) {
          if (c.EndpointID && c.Name) byEndpoint.set(c.EndpointID, { id, name: c.Name.replace(/^\//, '') });
        }
      }
    } catch (e) {
      this.counters.syncErrors++;
      this.d.log.warn({ err: errMsg(e) }, 'docker: reading the weave networks\' containers failed; names follow at the next event');
      return;
    }
    for (const ep of this.d.endpoints.list()) {
      if (!ep.docker) continue;
      const c = byEndpoint.get(ep.docker.endpointId);
      if (!c) continue;
      const key = dockerEndpointKey(ep.docker.endpointId);
      await this.d.endpoints.setContainer(key, c);
      const sig = `${c.name} ${ep.addrs.join(' ')}`;
      if (this.registered.get(key) === sig) continue;
      try {
        const fqdn = this.d.names()?.register(key, c.name, ep.addrs);
        this.registered.set(key, sig);
        this.counters.named++;
        this.d.log.info({ container: c.name, endpoint: ep.docker.endpointId.slice(0, 12), fqdn }, 'docker: container named');
      } catch (e) {
        this.counters.syncErrors++;
        this.d.log.warn({ container: c.name, err: errMsg(e) }, 'docker: the container\'s name cannot be a weaveDNS name; not registered');
        this.registered.set(key, sig);
      }
    }
    for (const key of [...this.registered.keys()]) if (!this.d.endpoints.list().some((e) => e.key === key)) this.registered.delete(key);
  }
}
