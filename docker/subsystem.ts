// Docker in the router: the libnetwork remote network + IPAM driver (docker/driver.ts) on its own
// unix socket where dockerd finds plugins (docker/server.ts), and the names of the containers on its
// networks (docker/names.ts). The driver uses the router's own parts: IPAM's address book for pools
// and addresses, the endpoints for the veths and /32 routes (router/endpoints.ts joinDocker), weaveDNS's
// names. `weave status docker` shows it.
//
// On by default, while a Docker daemon's socket exists: a router started before dockerd looks again
// every few seconds and starts serving once it appears (the plugin socket only exists while served).
// --no-docker-plugin turns it off.
import * as fs from 'fs';
import { Histogram, type Registry } from 'prom-client';
import type { Clock, TimerHandle } from '../lib/clock';
import { errMsg } from '../lib/errors';
import { componentLogger, type Logger } from '../lib/log';
import { counterFrom, gaugeFrom } from '../lib/metrics';
import type { StateRecovery } from '../lib/state-file';
import type { Subsystem, SubsystemModule } from '../lib/subsystem';
import type { DnsConfig } from '../dns/flags';
import type { DockerJoinRequest, EndpointInfo } from '../router/endpoints';
import type { HostCtx } from '../host/ip';
import { acceptOverlayForwarding, removeOverlayForwarding } from '../host/docker-forward';
import { DockerDriver } from './driver';
import { DockerEngine } from './engine';
import { addDockerFlags, driverName, parseDockerFlags, type DockerConfig } from './flags';
import { ContainerNames } from './names';
import { PluginServer } from './server';
import { DockerState } from './state';
import { renderDocker, type DockerReport } from './views';

/** how often a router waiting for dockerd looks for its socket */
const WAIT_FOR_DOCKER_MS = 5000;

/** What the Docker subsystem needs from the daemon (the daemon's context satisfies it). */
export interface DockerContext {
  cfg: { dataDir: string; docker: DockerConfig; ipam: { range: string; defaultSubnet?: string }; dns: DnsConfig };
  root: Logger;
  clock: Clock;
  identity: { name: string };
  /** the router's namespace (iptables FORWARD rules: host/docker-forward.ts) */
  hostCtx: HostCtx;
  endpoints: {
    readonly overlayRange: string;
    list(): EndpointInfo[];
    joinDocker(req: DockerJoinRequest): Promise<EndpointInfo & { peerIfname: string }>;
    leaveDocker(endpointId: string): Promise<EndpointInfo | undefined>;
    setContainer(key: string, c: { id: string; name: string }): Promise<boolean>;
  };
  /** the daemon's subsystems (filled as they are built): IPAM's addresses and DNS's names are found among them */
  subsystems: readonly Subsystem[];
}

export class DockerSubsystem implements Subsystem {
  readonly name = 'docker';
  readonly driver: DockerDriver;
  readonly state: DockerState;
  private readonly log: Logger;
  private readonly server: PluginServer;
  private readonly containerNames: ContainerNames;
  private readonly cfg: DockerConfig;
  /** what the plugin does now, as status says it */
  private status = 'starting';
  private waitTimer: TimerHandle | undefined;
  private serving = false;
  private stopped = false;
  private duration: Histogram<'method'> | undefined;

  constructor(private readonly ctx: DockerContext) {
    this.cfg = ctx.cfg.docker;
    this.log = componentLogger(ctx.root, 'docker');
    this.state = new DockerState(ctx.cfg.dataDir, this.log, ctx.identity.name, () => ctx.clock.now());
    const dns = ctx.cfg.dns;
    const dnsAddr = dns.enabled && dns.listen.ip !== '0.0.0.0' && !dns.listen.ip.startsWith('127.') && dns.listen.port === 53 ? dns.listen.ip : null;
    this.driver = new DockerDriver({
      addresses: () => ctx.subsystems.find((s) => s.addresses)?.addresses,
      names: () => ctx.subsystems.find((s) => s.names)?.names,
      range: ctx.cfg.ipam.range,
      defaultSubnet: ctx.cfg.ipam.defaultSubnet ?? ctx.cfg.ipam.range,
      overlay: [ctx.endpoints.overlayRange, ctx.cfg.ipam.range],
      dnsAddr: () => dnsAddr,
      endpoints: ctx.endpoints,
      state: this.state,
      log: this.log,
    });
    this.server = new PluginServer(this.cfg.pluginSocket, (m, b) => this.call(m, b), this.log);
    this.server.observe = (m, s) => this.duration?.observe({ method: this.driver.methods().includes(m) ? m : 'unknown' }, s);
    this.containerNames = new ContainerNames({
      engine: new DockerEngine(this.cfg.socket),
      driver: driverName(this.cfg.pluginSocket),
      endpoints: ctx.endpoints,
      names: () => ctx.subsystems.find((s) => s.names)?.names,
      clock: ctx.clock,
      log: this.log,
    });
  }

  private async call(method: string, body: Record<string, unknown>): Promise<unknown> {
    const out = await this.driver.handle(method, body);
    // a container joined: name it once Docker has recorded it (its connect event follows too)
    if (method === 'NetworkDriver.Join') this.containerNames.scheduleSync();
    return out;
  }

  /** After endpoints are restored and IPAM runs: serve once dockerd's socket exists. */
  async start(): Promise<void> {
    if (!this.cfg.plugin) {
      this.status = 'off (--no-docker-plugin)';
      return;
    }
    // the router runs without the plugin rather than not at all (another router may serve this socket)
    await this.serveWhenDocker().catch((e: unknown) => this.failed(e));
  }

  private failed(e: unknown): void {
    this.status = `not served: ${errMsg(e)}`;
    this.log.error({ err: errMsg(e), socket: this.cfg.pluginSocket }, 'docker: the network and IPAM driver cannot be served; the router runs without it');
  }

  private async serveWhenDocker(): Promise<void> {
    if (this.stopped || this.serving) return;
    if (!fs.existsSync(this.cfg.socket)) {
      this.status = `waiting for a Docker daemon's socket at ${this.cfg.socket}`;
      this.waitTimer = this.ctx.clock.setTimeout(() => {
        this.waitTimer = undefined;
        this.serveWhenDocker().catch((e: unknown) => this.failed(e));
      }, WAIT_FOR_DOCKER_MS);
      return;
    }
    // Docker's FORWARD policy DROP would drop what weave forwards: accept the overlay's interfaces
    // first (a failure is logged, not fatal: a host without iptables has no such policy either)
    const added = await acceptOverlayForwarding(this.ctx.hostCtx).catch((e: unknown) => {
      this.log.warn({ err: errMsg(e) }, 'docker: cannot add the overlay\'s ACCEPT rules to iptables FORWARD; with Docker\'s policy DROP containers reach nobody across the mesh');
      return 0;
    });
    if (added > 0) this.log.info({ rules: added }, 'docker: iptables FORWARD accepts the overlay\'s interfaces (Docker\'s policy may be DROP)');
    await this.server.start();
    this.serving = true;
    this.containerNames.start();
    this.status = 'serving';
    this.log.info({ socket: this.cfg.pluginSocket, driver: driverName(this.cfg.pluginSocket), docker: this.cfg.socket }, 'docker: network and IPAM driver ready');
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.ctx.clock.clearTimeout(this.waitTimer);
    this.containerNames.stop();
    await this.server.stop();
  }

  /** `weave reset`: the Docker endpoints' veths go (their containers lose the mesh; Docker keeps its records). */
  async reset(): Promise<void> {
    for (const e of this.ctx.endpoints.list()) {
      if (!e.docker) continue;
      await this.ctx.endpoints.leaveDocker(e.docker.endpointId).catch((err: unknown) => this.log.warn({ endpoint: e.docker!.endpointId, err: errMsg(err) }, 'reset: removing a Docker endpoint failed; continuing'));
    }
    if (this.serving) await removeOverlayForwarding(this.ctx.hostCtx).catch((err: unknown) => this.log.warn({ err: errMsg(err) }, 'reset: removing the overlay\'s iptables FORWARD rules failed; continuing'));
  }

  recovery(): StateRecovery[] {
    return this.state.recovery();
  }

  report(): DockerReport {
    const endpoints = this.ctx.endpoints.list().filter((e) => e.docker).map((e) => ({
      network: e.docker!.networkId, endpoint: e.docker!.endpointId, container: e.container, hostIfname: e.hostIfname, addrs: [...e.addrs],
    }));
    return {
      summary: { Plugin: this.status, Driver: driverName(this.cfg.pluginSocket), Networks: this.state.networks.size, Endpoints: endpoints.length },
      plugin: this.status,
      driver: driverName(this.cfg.pluginSocket),
      pluginSocket: this.cfg.pluginSocket,
      dockerSocket: this.cfg.socket,
      events: this.containerNames.state,
      pools: [...this.state.pools.values()],
      networks: [...this.state.networks.values()],
      endpoints,
      requests: Object.fromEntries(this.driver.counters),
    };
  }

  metrics(reg: Registry): void {
    gaugeFrom(reg, 'weave_docker_plugin_serving', 'Whether the Docker network and IPAM driver is served (1) or not (0: off, or waiting for dockerd).', () => (this.serving ? 1 : 0));
    gaugeFrom(reg, 'weave_docker_networks', 'Docker networks of the weave driver on this host.', () => this.state.networks.size);
    gaugeFrom(reg, 'weave_docker_endpoints', 'Containers joined to weave networks through Docker on this host.', () => this.ctx.endpoints.list().filter((e) => e.docker).length);
    counterFrom(reg, 'weave_docker_requests_total', 'Docker plugin calls served, by method (NetworkDriver.Join, IpamDriver.RequestAddress ...) and result (ok, error, unsupported).', () =>
      [...this.driver.counters].map(([k, value]) => {
        const i = k.lastIndexOf('/');
        return { labels: { method: k.slice(0, i), result: k.slice(i + 1) }, value };
      }), ['method', 'result']);
    counterFrom(reg, 'weave_docker_name_syncs_total', 'Times the router read the weave networks\' containers from Docker to name them in weaveDNS, by result.', () => [
      { labels: { result: 'ok' }, value: this.containerNames.counters.syncs - this.containerNames.counters.syncErrors },
      { labels: { result: 'error' }, value: this.containerNames.counters.syncErrors },
    ], ['result']);
    this.duration = new Histogram({
      name: 'weave_docker_request_duration_seconds',
      help: 'Time the router took to answer a Docker plugin call, by method.',
      labelNames: ['method'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5],
      registers: [reg],
    });
  }
}

export const dockerModule: SubsystemModule<DockerConfig, DockerContext> = {
  name: 'docker',
  flags: { add: addDockerFlags, parse: parseDockerFlags },
  views: { docker: renderDocker },
  create: (ctx) => new DockerSubsystem(ctx),
};
