// CNI in the router: the plugin executable is a shim (cni/shim/weave-net.c, ~1 ms to start) that
// posts each call to POST /cni; this subsystem answers it (cni/handler.ts) with the router's own
// parts: IPAM's address book for the address (keyed by network, container ID and interface), the
// endpoints for the veth, record and /32 route (router/endpoints.ts attachPod: what `weave attach`
// makes, plus the runtime's interface name and a default route), and host/pod-masq.ts for the
// masquerade of pods' traffic to outside the overlay.
//
// Why the router and not the plugin: the router already owns every piece (IPAM, endpoints, routes,
// announcements), and a plugin process per call that loaded them would pay Node's start-up each time.
//
// The masquerade chain is installed at the first ADD (so a router that never serves pods has none),
// kept while the router runs and across restarts (pods keep reaching the outside while it restarts),
// and removed by `weave reset` or when the router starts with --no-cni-masquerade.
import { Histogram, type Registry } from 'prom-client';
import { errMsg } from '../lib/errors';
import { componentLogger, type Logger } from '../lib/log';
import { counterFrom, gaugeFrom } from '../lib/metrics';
import type { AddressBook, ApiRoute, Subsystem, SubsystemModule } from '../lib/subsystem';
import type { HostCtx } from '../host/ip';
import { resolveNetns } from '../host/netns';
import { inspectPodLink } from '../host/pod-link';
import { syncPodMasquerade } from '../host/pod-masq';
import { addCniCommands } from './cli';
import { addCniFlags, parseCniFlags, type CniConfig } from './flags';
import { CniHandler, parseCniIdent, type CniDeps } from './handler';
import { cniRoutes } from './http';
import type { PodRecord } from './check';
import { renderCni, type CniReport } from './views';
import { COMMANDS } from './spec';

/** What the CNI subsystem needs from the daemon (the daemon's context satisfies it; tests hand in fakes). */
export interface CniContext {
  cfg: { cni: CniConfig; ipam: { range: string } };
  root: Logger;
  hostCtx: HostCtx;
  endpoints: CniDeps['pods'] & { list(): PodRecord[] };
  /** the daemon's subsystems (filled as they are built): IPAM's address book is found among them */
  subsystems: readonly Subsystem[];
}

export class CniSubsystem implements Subsystem {
  readonly name = 'cni';
  readonly handler: CniHandler;
  private readonly log: Logger;
  private masq: Promise<void> | undefined;
  private duration: Histogram<'command'> | undefined;

  constructor(private readonly ctx: CniContext) {
    this.log = componentLogger(ctx.root, 'cni');
    this.handler = new CniHandler({
      pods: ctx.endpoints,
      addresses: () => this.book(),
      netnsKey: (p) => resolveNetns(p).key,
      inspect: (rec) => inspectPodLink(ctx.hostCtx, resolveNetns(rec.netns).ctx, rec.ifname, rec.hostIfname),
      masquerade: () => this.ensureMasquerade(),
      log: this.log,
    });
  }

  private book(): AddressBook | undefined {
    return this.ctx.subsystems.find((s) => s.addresses)?.addresses;
  }

  private overlay(): string[] {
    return [...new Set([this.ctx.cfg.ipam.range, this.ctx.endpoints.overlayRange])];
  }

  /** Once per process (concurrent ADDs share one nft run); a failure is retried by the next ADD. */
  private ensureMasquerade(): Promise<void> {
    if (!this.ctx.cfg.cni.masquerade) return Promise.resolve();
    this.masq ??= syncPodMasquerade(this.ctx.hostCtx, true, this.overlay()).catch((e: unknown) => {
      this.masq = undefined;
      throw e;
    });
    return this.masq;
  }

  private pods(): PodRecord[] {
    return this.ctx.endpoints.list().filter((e) => e.pod);
  }

  /**
   * After endpoints are restored: addresses of pods whose veth went away while the router was down
   * (their records were dropped) are freed; the masquerade chain matches the flag again.
   */
  async start(): Promise<void> {
    const book = this.book();
    const live = new Set(this.pods().map((p) => `${p.pod!.network}:${p.pod!.containerId}:${p.ifname}`));
    for (const ident of book?.idents('cni:') ?? []) {
      const k = parseCniIdent(ident);
      if (!k || live.has(`${k.network}:${k.containerId}:${k.ifname}`)) continue;
      const n = book!.release(ident);
      this.log.info({ ident, freed: n }, 'cni: freed the address of a pod that went away while the router was down');
    }
    if (!this.ctx.cfg.cni.masquerade) await syncPodMasquerade(this.ctx.hostCtx, false, this.overlay());
    else if (live.size) await this.ensureMasquerade();
  }

  async reset(): Promise<void> {
    await syncPodMasquerade(this.ctx.hostCtx, false, this.overlay()).catch((e: unknown) => this.log.warn({ err: errMsg(e) }, 'cni: removing the masquerade chain failed'));
    this.masq = undefined;
  }

  stop(): void {
    // nothing runs in the background; the chain and the pods' links stay for the next start
  }

  apiRoutes(): ApiRoute[] {
    return cniRoutes(this.handler, (command, seconds) => this.duration?.observe({ command: command || 'unknown' }, seconds));
  }

  report(): CniReport {
    const pods = this.pods().map((p) => ({
      network: p.pod!.network, containerId: p.pod!.containerId, namespace: p.pod!.namespace, name: p.pod!.name,
      ifname: p.ifname, hostIfname: p.hostIfname, addrs: [...p.addrs],
    }));
    return {
      summary: { Pods: pods.length, Masquerade: this.ctx.cfg.cni.masquerade ? 'on' : 'off' },
      masquerade: this.ctx.cfg.cni.masquerade,
      pods,
      requests: Object.fromEntries(this.handler.counters),
    };
  }

  metrics(reg: Registry): void {
    gaugeFrom(reg, 'weave_cni_pods', 'Pods attached through the CNI plugin on this host.', () => this.pods().length);
    counterFrom(reg, 'weave_cni_requests_total', 'CNI plugin calls served, by command (ADD, DEL, CHECK, STATUS, GC, VERSION) and result (ok, error).', () =>
      [...this.handler.counters].map(([k, value]) => {
        const [command, result] = k.split('/');
        return { labels: { command, result }, value };
      }), ['command', 'result']);
    this.duration = new Histogram({
      name: 'weave_cni_request_duration_seconds',
      help: 'Time the router took to serve a CNI call, by command.',
      labelNames: ['command'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10],
      registers: [reg],
    });
    for (const c of COMMANDS) this.duration.zero({ command: c });
  }
}

export const cniModule: SubsystemModule<CniConfig, CniContext> = {
  name: 'cni',
  flags: { add: addCniFlags, parse: parseCniFlags },
  commands: (program) => addCniCommands(program),
  views: { cni: renderCni },
  create: (ctx) => new CniSubsystem(ctx),
};
