// Kubernetes mode in the router (`weave router --kube`, the DaemonSet's command):
//
//   start:  list Nodes (bounded wait) -> the cluster's size for IPAM's consensus (built next)
//           -> CNI plugin + conflist into the host's dirs -> this peer into the peers ConfigMap
//   Nodes:  the informer (k8s/informer.ts) keeps them; every other Node's InternalIP is a mesh target
//           (added, changed and deleted Nodes change the targets; no restart)
//   delete: a Node gone -> the reclaim (k8s/reclaim.ts): exactly one live router takes its space
//   probes: GET /ready (503 until IPAM can allocate and the mesh has a peer when there are other
//           nodes), GET /healthz; `weave status kube` and the report's kube section
//
// The API server down or slow changes nothing on the data path: targets stay as they were, the
// informer backs off and reconnects (a 410 relists), and each state change is logged once.
import * as path from 'path';
import type { Registry } from 'prom-client';
import type { Clock, TimerHandle } from '../lib/clock';
import { WeaveError, errMsg } from '../lib/errors';
import { componentLogger, type Logger } from '../lib/log';
import { counterFrom, gaugeFrom } from '../lib/metrics';
import type { ApiRoute, Subsystem, SubsystemModule } from '../lib/subsystem';
import { formatHostPort } from '../lib/addr';
import { CONTROL_PORT, DEFAULT_DATA_DIR } from '../lib/ports';
import type { PeerName } from '../mesh/peer';
import { setupCni } from '../cni/setup';
import { API_SOCKET_NAME } from '../cni/cli';
import { KubeClient, type KubeObject } from './client';
import { addKubeFlags, parseKubeFlags, type KubeConfig } from './config';
import { Informer } from './informer';
import { PeerList } from './reclaim';
import { renderKube, type KubeReport } from './views';

export interface KubeContext {
  cfg: { kube: KubeConfig; port: number; dataDir: string; httpAddr: { host: string; port: number } };
  root: Logger;
  clock: Clock;
  identity: { name: PeerName; nickname: string };
  mesh: { connect(addresses: string[]): void; forget(addresses: string[]): void; peerNames(): PeerName[] };
  subsystems: readonly Subsystem[];
}

interface NodeObject extends KubeObject {
  status?: { addresses?: Array<{ type: string; address: string }> };
}

/** A Node's address for the mesh: its InternalIP (IPv4), else its ExternalIP. */
export function nodeAddress(n: NodeObject): string | undefined {
  const as = n.status?.addresses ?? [];
  const v4 = (t: string) => as.find((a) => a.type === t && /^\d+\.\d+\.\d+\.\d+$/.test(a.address))?.address;
  return v4('InternalIP') ?? v4('ExternalIP');
}

const RECLAIM_RETRY_MS = 1000;

export class KubeSubsystem implements Subsystem {
  readonly name = 'kube';
  readonly clusterSize: { size: number; from: string };
  private readonly log: Logger;
  private readonly client: KubeClient;
  private readonly nodes: Informer<NodeObject>;
  private readonly peers: PeerList;
  /** node name -> the target we gave the mesh for it */
  private readonly targets = new Map<string, string>();
  private readonly startedAt: number;
  private started = false;
  private joined = false;
  private retryTimer: TimerHandle | undefined;
  private cniInstalled = '';
  private readonly counters = { targetsAdded: 0, targetsRemoved: 0 };

  private constructor(private readonly ctx: KubeContext, client: KubeClient, nodes: Informer<NodeObject>, peers: PeerList) {
    this.log = componentLogger(ctx.root, 'kube');
    this.client = client;
    this.nodes = nodes;
    this.peers = peers;
    this.startedAt = ctx.clock.now();
    this.clusterSize = { size: Math.max(1, nodes.store.size), from: 'Kubernetes nodes' };
  }

  static async create(ctx: KubeContext): Promise<KubeSubsystem> {
    const k = ctx.cfg.kube;
    const log = componentLogger(ctx.root, 'kube');
    const client = new KubeClient(k.connection!);
    let self: KubeSubsystem | undefined;
    const nodes = new Informer<NodeObject>({
      client, collection: '/api/v1/nodes', clock: ctx.clock, log,
      handlers: {
        added: (n) => self?.nodeChanged(n),
        modified: (n) => self?.nodeChanged(n),
        deleted: (n) => self?.nodeDeleted(n),
        synced: () => self?.synced(),
      },
    });
    const peers = new PeerList({
      client, configMap: k.configMap, self: { peerName: ctx.identity.name, nodeName: k.nodeName },
      transferFrom: (p) => self!.transferFrom(p), clock: ctx.clock, log,
    });
    nodes.start();
    let t: TimerHandle | undefined;
    const timedOut = new Promise<'timeout'>((r) => { t = ctx.clock.setTimeout(() => r('timeout'), k.startTimeoutMs); });
    const first = await Promise.race([nodes.firstSync.then(() => 'ok' as const), timedOut]);
    ctx.clock.clearTimeout(t);
    if (first === 'timeout') {
      await nodes.stop();
      client.close();
      throw new WeaveError('EKUBEDOWN', `no list of Nodes from the API server ${k.connection!.server} within ${k.startTimeoutMs / 1000}s: ${nodes.lastError || 'no answer'}`, { server: k.connection!.server });
    }
    self = new KubeSubsystem(ctx, client, nodes, peers);
    log.info({ server: k.connection!.server, from: k.connection!.source, node: k.nodeName, nodes: nodes.store.size }, 'kube: connected to the API server');
    return self;
  }

  private transferFrom(peer: string): Promise<number> {
    const space = this.ctx.subsystems.find((s) => s.peerSpace)?.peerSpace;
    if (!space) return Promise.reject(new WeaveError('ENOIPAM', 'no IPAM in this router to take the space over'));
    return space.transferFrom(peer);
  }

  private target(ip: string): string {
    return this.ctx.cfg.port === CONTROL_PORT ? ip : formatHostPort(ip, this.ctx.cfg.port);
  }

  /** `batch`: collect the new targets for one mesh.connect instead of connecting here. */
  private nodeChanged(n: NodeObject, batch?: string[]): void {
    if (!this.started || n.metadata.name === this.ctx.cfg.kube.nodeName) return;
    const ip = nodeAddress(n);
    const want = ip ? this.target(ip) : undefined;
    const had = this.targets.get(n.metadata.name);
    if (had === want) return;
    if (had) { this.ctx.mesh.forget([had]); this.counters.targetsRemoved++; this.targets.delete(n.metadata.name); }
    if (want) {
      if (batch) batch.push(want); else this.ctx.mesh.connect([want]);
      this.targets.set(n.metadata.name, want);
      this.counters.targetsAdded++;
      this.log.info({ node: n.metadata.name, target: want, was: had }, 'kube: node is a mesh target');
    }
  }

  private nodeDeleted(n: NodeObject): void {
    if (!this.started) return;
    const had = this.targets.get(n.metadata.name);
    if (had) {
      this.ctx.mesh.forget([had]);
      this.targets.delete(n.metadata.name);
      this.counters.targetsRemoved++;
      this.log.info({ node: n.metadata.name, target: had }, 'kube: node deleted; no longer a mesh target');
    }
    this.reclaim();
  }

  private synced(): void {
    if (!this.started) return;
    // after a relist: nodes that went while we were not watching are gone here too
    const live = new Set(this.nodes.store.keys());
    for (const [name, target] of [...this.targets]) {
      if (live.has(name)) continue;
      this.ctx.mesh.forget([target]);
      this.targets.delete(name);
      this.counters.targetsRemoved++;
    }
    this.reclaim();
  }

  private reclaim(): void {
    if (!this.joined) return;
    this.ctx.clock.clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    const live = new Set(this.nodes.store.keys());
    void this.peers.sweep(live).then((ok) => {
      if (!ok && !this.retryTimer && this.started) {
        // a refused transfer (the peer still reachable) or the API down: look again soon
        this.retryTimer = this.ctx.clock.setTimeout(() => { this.retryTimer = undefined; this.reclaim(); }, RECLAIM_RETRY_MS);
      }
    });
  }

  /** After every part is built, before the mesh connects: CNI, targets, the peers ConfigMap. */
  async start(): Promise<void> {
    const k = this.ctx.cfg.kube;
    if (k.cni) {
      // the plugin finds this router's socket: named in the conflist only when not the default data dir's
      const socket = this.ctx.cfg.dataDir === DEFAULT_DATA_DIR ? undefined : path.join(this.ctx.cfg.dataDir, API_SOCKET_NAME);
      const r = setupCni({ binDir: k.cni.binDir, confDir: k.cni.confDir, socket });
      this.cniInstalled = `${r.plugin.path} (${r.plugin.outcome}), ${r.conflist.path} (${r.conflist.outcome})`;
      this.log.info({ plugin: r.plugin, conflist: r.conflist }, 'kube: CNI plugin and conflist in place');
    }
    this.started = true;
    // one connect for every node: each connect writes targets.json (fsync), ~19 ms here, which per node
    // held a router back 3.8 s before it dialled anyone in a 200-node cluster (bench/kube)
    const batch: string[] = [];
    for (const n of this.nodes.store.values()) this.nodeChanged(n, batch);
    if (batch.length) this.ctx.mesh.connect(batch);
    // joining needs the API; a failure is retried in the background (the data path does not wait)
    const join = async (attempt: number): Promise<void> => {
      try {
        await this.peers.join();
        this.joined = true;
        this.reclaim();
      } catch (e) {
        this.peers.lastError = errMsg(e);
        if (attempt === 1) this.log.warn({ err: errMsg(e) }, 'kube: cannot add this peer to the peers ConfigMap yet; retrying');
        this.retryTimer = this.ctx.clock.setTimeout(() => void join(attempt + 1), Math.min(30_000, 500 * 2 ** attempt));
      }
    };
    void join(1);
  }

  /** Ready: IPAM can allocate and, when other nodes exist, the mesh has reached one of them. */
  readiness(): { ready: boolean; reason: string } {
    const ipam = this.ctx.subsystems.find((s) => s.addresses)?.addresses?.readiness();
    if (ipam && !ipam.ready) return { ready: false, reason: `ipam: ${ipam.reason}` };
    const others = this.targets.size;
    const peers = this.ctx.mesh.peerNames().filter((p) => p !== this.ctx.identity.name).length;
    if (others > 0 && peers === 0) return { ready: false, reason: `mesh: none of the ${others} other nodes reached yet` };
    return { ready: true, reason: 'ready' };
  }

  apiRoutes(): ApiRoute[] {
    return [
      {
        method: 'GET', path: '/ready', handler: () => {
          const r = this.readiness();
          if (!r.ready) throw new WeaveError('ENOTREADY', `not ready: ${r.reason}`);
          return r;
        },
      },
      { method: 'GET', path: '/healthz', handler: () => ({ ok: true }) },
    ];
  }

  report(): KubeReport {
    const st = this.nodes.status();
    const r = this.readiness();
    const last = this.peers.reclaims[this.peers.reclaims.length - 1];
    return {
      summary: {
        Node: this.ctx.cfg.kube.nodeName,
        API: `${st.state}${st.state === 'down' ? ` (${st.lastError})` : ''}`,
        Nodes: st.objects,
        Targets: this.targets.size,
        Ready: r.ready ? 'yes' : `no: ${r.reason}`,
      },
      node: this.ctx.cfg.kube.nodeName,
      server: this.client.server,
      source: this.ctx.cfg.kube.connection!.source,
      api: { state: st.state, sinceMs: this.ctx.clock.now() - st.since, lastError: st.lastError, resourceVersion: st.resourceVersion, watch: st.counters },
      requests: { ...this.client.counts },
      nodes: [...this.nodes.store.values()].map((n) => ({ name: n.metadata.name, address: nodeAddress(n) ?? '', self: n.metadata.name === this.ctx.cfg.kube.nodeName })).sort((a, b) => a.name.localeCompare(b.name)),
      targets: [...this.targets].map(([node, target]) => ({ node, target })).sort((a, b) => a.node.localeCompare(b.node)),
      ready: r,
      peersConfigMap: `${this.ctx.cfg.kube.configMap.namespace}/${this.ctx.cfg.kube.configMap.name}`,
      joined: this.joined,
      reclaims: this.peers.reclaims.slice(),
      lastReclaim: last,
      reclaimError: this.peers.lastError,
      cni: this.cniInstalled,
      keepOnStop: this.ctx.cfg.kube.keepOnStop,
      uptimeMs: this.ctx.clock.now() - this.startedAt,
    };
  }

  metrics(reg: Registry): void {
    gaugeFrom(reg, 'weave_kube_api_up', 'Whether the Kubernetes API server answers the Node watch (1) or not (0).', () => (this.nodes.state === 'up' ? 1 : 0));
    gaugeFrom(reg, 'weave_kube_nodes', 'Nodes known from the Kubernetes API.', () => this.nodes.store.size);
    gaugeFrom(reg, 'weave_kube_targets', 'Mesh targets learned from Nodes.', () => this.targets.size);
    counterFrom(reg, 'weave_kube_api_requests_total', 'Requests made to the Kubernetes API server, by verb.', () =>
      Object.entries(this.client.counts).map(([verb, value]) => ({ labels: { verb }, value })), ['verb']);
    counterFrom(reg, 'weave_kube_reclaims_total', 'Deleted nodes whose address space this router took over.', () => this.peers.counters.reclaims);
    counterFrom(reg, 'weave_kube_watch_relists_total', 'Relists after a watch expired (410).', () => this.nodes.counters.relists);
  }

  async stop(): Promise<void> {
    this.started = false;
    this.ctx.clock.clearTimeout(this.retryTimer);
    await this.nodes.stop();
    this.client.close();
  }
}

/** Without --kube: nothing runs; the part only says so. */
function disabled(): Subsystem {
  return { name: 'kube', stop: () => {} };
}

export const kubeModule: SubsystemModule<KubeConfig, KubeContext> = {
  name: 'kube',
  flags: { add: addKubeFlags, parse: (f) => parseKubeFlags(f) },
  views: { kube: renderKube },
  create: (ctx) => (ctx.cfg.kube.enabled ? KubeSubsystem.create(ctx) : disabled()),
};
