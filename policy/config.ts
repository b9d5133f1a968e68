// `weave npc`'s flags and environment, read once into the typed config. Where the API is comes from
// k8s/config.ts (a kubeconfig from --kubeconfig or KUBECONFIG, else the pod's service account).
import * as os from 'os';
import type { Command } from 'commander';
import { parseHostPort } from '../lib/addr';
import { UsageError } from '../lib/errors';
import type { Level } from '../lib/log';
import { NPC_STATUS_PORT } from '../lib/ports';
import { fromKubeconfig, inCluster, type KubeConnection } from '../k8s/config';
import { POD_HOST_IF_PREFIX } from '../host/pod-link';
import { checkNftOptions, type NftOptions } from './nft';

export interface NpcConfig {
  nodeName: string;
  connection: KubeConnection;
  /** where GET /status and /metrics are served */
  statusAddr: { host: string; port: number };
  nft: NftOptions;
  logLevel: Level;
}

export const DEFAULT_LOG_GROUP = 86;

export function addNpcFlags(cmd: Command): Command {
  return cmd
    .option('--kubeconfig <file>', 'kubeconfig to reach the API server (env KUBECONFIG; default in a pod: its service account)')
    .option('--node-name <name>', 'this node\'s name: the pods enforced here are those with spec.nodeName = this (env NODE_NAME; default: the hostname)')
    .option('--status-addr <host:port>', 'where the status (GET /status: `weave status policy`) and Prometheus metrics (GET /metrics) are served', `127.0.0.1:${NPC_STATUS_PORT}`)
    .option('--log-group <n>', 'nfnetlink_log group the drop rules log to (one reader per group and node)', String(DEFAULT_LOG_GROUP))
    .option('--drop-log-rate <rate>', 'drop log lines per policy group and direction, as nft limits them (N/second, N/minute, N/hour)', '1/second')
    .option('--pod-ifaces <pattern>', 'host ends of the pods\' veths (the CNI plugin names them so)', `${POD_HOST_IF_PREFIX}*`)
    .option('--log-level <level>', 'trace, debug, info, warn, error', 'info');
}

export function parseNpcFlags(f: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): NpcConfig {
  const str = (k: string): string | undefined => (typeof f[k] === 'string' && f[k] !== '' ? (f[k] as string) : undefined);
  const nodeName = str('nodeName') ?? env.NODE_NAME ?? os.hostname();
  if (!/^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/.test(nodeName)) throw new UsageError(`invalid node name "${nodeName}" (--node-name or NODE_NAME): a lowercase DNS name`);
  const group = Number(str('logGroup') ?? DEFAULT_LOG_GROUP);
  const nft: NftOptions = { podIfaces: str('podIfaces') ?? `${POD_HOST_IF_PREFIX}*`, logGroup: group, logRate: str('dropLogRate') ?? '1/second' };
  try {
    checkNftOptions(nft);
  } catch (e) {
    throw new UsageError(`${(e as Error).message} (--log-group, --drop-log-rate, --pod-ifaces)`, {}, { cause: e });
  }
  const level = (str('logLevel') ?? 'info') as Level;
  if (!['trace', 'debug', 'info', 'warn', 'error'].includes(level)) throw new UsageError(`invalid --log-level "${level}"`);
  const kubeconfig = str('kubeconfig') ?? env.KUBECONFIG;
  const connection = kubeconfig ? fromKubeconfig(kubeconfig.split(':')[0]) : inCluster(env);
  return { nodeName, connection, statusAddr: parseHostPort(str('statusAddr') ?? `127.0.0.1:${NPC_STATUS_PORT}`, NPC_STATUS_PORT), nft, logLevel: level };
}
