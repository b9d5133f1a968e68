// `weave npc`: the NetworkPolicy controller process of one node (the DaemonSet's second container, or
// run by hand with KUBECONFIG). Wires: three informers (k8s/informer.ts: Namespaces, Pods and
// NetworkPolicies of the whole cluster; peers live on every node) -> PolicyController -> nft; the
// NFLOG drop log -> the controller's drop lines; the counters read every 2 s; and a small HTTP server
// on 127.0.0.1:6781 with GET /status (what `weave status policy` shows) and GET /metrics.
//
// Why its own status server and not the router's API: the controller is a separate process with its
// own lifecycle (its container restarts on its own; a node may run the router without it), and it
// must serve /metrics for Prometheus anyway; a status file would go on saying "fine" after the
// controller died, while a refused connection says plainly that it is not running.
import * as http from 'http';
import { Registry } from 'prom-client';
import { realClock } from '../lib/clock';
import { errMsg } from '../lib/errors';
import { componentLogger, rootLogger, type Logger } from '../lib/log';
import { counterFrom, gaugeFrom } from '../lib/metrics';
import { KubeClient, type KubeObject } from '../k8s/client';
import { Informer } from '../k8s/informer';
import { PolicyController, type Kind } from './controller';
import type { NpcConfig } from './config';
import { NflogReader } from './nflog';

const COLLECTIONS: Record<Kind, string> = {
  Namespace: '/api/v1/namespaces',
  Pod: '/api/v1/pods',
  NetworkPolicy: '/apis/networking.k8s.io/v1/networkpolicies',
};
const COUNTER_POLL_MS = 2000;

export interface Npc {
  controller: PolicyController;
  server: http.Server;
  stop(): Promise<void>;
}

function metrics(reg: Registry, c: PolicyController, nflog: () => NflogReader | null): void {
  counterFrom(reg, 'weave_npc_dropped_packets_total', 'Packets dropped by network policy on this node, by direction, namespace of the pod and the policies selecting it',
    () => c.dropCounts().map((d) => ({ labels: { direction: d.direction, namespace: d.namespace, policies: d.policies }, value: d.packets })), ['direction', 'namespace', 'policies']);
  counterFrom(reg, 'weave_npc_unclassified_dropped_packets_total', 'Packets dropped to or from a local pod the controller has not classified yet (its Pod object or address not seen)',
    () => Object.entries(c.unclassifiedDrops()).map(([direction, value]) => ({ labels: { direction }, value })), ['direction']);
  gaugeFrom(reg, 'weave_npc_network_policies', 'NetworkPolicies known to the controller', () => c.status().counts.policies);
  gaugeFrom(reg, 'weave_npc_unenforceable_policies', 'NetworkPolicies that cannot be enforced as written (their pods are denied instead)', () => c.status().unenforceable.length);
  counterFrom(reg, 'weave_npc_applies_total', 'Changes applied to the nftables table (one transaction each)', () => c.stats.applies);
  counterFrom(reg, 'weave_npc_apply_errors_total', 'Failed applies (each followed by a full rebuild)', () => c.stats.errors);
  gaugeFrom(reg, 'weave_npc_last_apply_seconds', 'Duration of the latest apply: compile and nft', () => (c.stats.lastMs ?? 0) / 1000);
  counterFrom(reg, 'weave_npc_drop_log_overruns_total', 'Times the kernel could not queue drop-log packets to the controller', () => nflog()?.overruns ?? 0);
}

function serve(cfg: NpcConfig, c: PolicyController, reg: Registry, log: Logger): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const reply = (code: number, type: string, body: string) => { res.writeHead(code, { 'content-type': type }); res.end(body); };
    if (req.method !== 'GET') return reply(405, 'text/plain', 'read-only\n');
    if (path === '/status') return reply(200, 'application/json', JSON.stringify(c.status()));
    if (path === '/metrics') {
      reg.metrics().then((m) => reply(200, reg.contentType, m), (e) => reply(500, 'text/plain', `${errMsg(e)}\n`));
      return;
    }
    reply(404, 'text/plain', 'GET /status or /metrics\n');
  });
  return new Promise((resolve, reject) => {
    server.once('error', (e) => reject(e));
    server.listen(cfg.statusAddr.port, cfg.statusAddr.host, () => {
      log.info({ addr: `${cfg.statusAddr.host}:${cfg.statusAddr.port}` }, 'npc status and metrics served');
      resolve(server);
    });
  });
}

/** Starts the controller; resolves once it serves its status (the table follows the first lists). */
export async function startNpc(cfg: NpcConfig, root: Logger): Promise<Npc> {
  const log = componentLogger(root, 'npc', { node: cfg.nodeName });
  const controller = new PolicyController({ node: cfg.nodeName, nft: cfg.nft, host: {}, log });
  let nflog: NflogReader | null = null;
  try {
    nflog = NflogReader.open(cfg.nft.logGroup, (p) => controller.onLogged(p), log);
  } catch (e) {
    // drops are still enforced and counted; only the per-packet lines are missing, and we say so
    log.error({ err: errMsg(e) }, 'drop log unavailable: drops are enforced and counted, but not logged');
  }
  const reg = new Registry();
  metrics(reg, controller, () => nflog);
  const server = await serve(cfg, controller, reg, log);
  const client = new KubeClient(cfg.connection);
  const informers = (Object.keys(COLLECTIONS) as Kind[]).map((kind) => {
    const inf: Informer<KubeObject> = new Informer<KubeObject>({
      client, collection: COLLECTIONS[kind], clock: realClock, log,
      handlers: {
        added: (object) => controller.handle({ kind, type: 'ADDED', object }),
        modified: (object) => controller.handle({ kind, type: 'MODIFIED', object }),
        deleted: (object) => controller.handle({ kind, type: 'DELETED', object }),
        synced: () => controller.replace(kind, [...inf.store.values()]),
      },
    });
    inf.start();
    return inf;
  });
  const poll = setInterval(() => { controller.refreshCounters().catch((e) => log.warn({ err: errMsg(e) }, 'reading the drop counters failed')); }, COUNTER_POLL_MS);
  log.info({ api: cfg.connection.server, source: cfg.connection.source, logGroup: cfg.nft.logGroup, podIfaces: cfg.nft.podIfaces }, 'npc started: waiting for the first lists of Namespaces, Pods and NetworkPolicies');
  return {
    controller, server,
    async stop() {
      clearInterval(poll);
      controller.stop();
      nflog?.stop();
      await Promise.all(informers.map((i) => i.stop()));
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** The foreground command: runs until SIGTERM/SIGINT; the table stays for the next start. */
export async function runNpc(cfg: NpcConfig): Promise<void> {
  const root = rootLogger({ level: cfg.logLevel });
  const npc = await startNpc(cfg, root);
  await new Promise<void>((resolve) => {
    const done = () => resolve();
    process.once('SIGTERM', done);
    process.once('SIGINT', done);
  });
  await npc.stop();
}
