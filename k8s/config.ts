// Kubernetes mode's flags and environment, read once into the typed config, and where the API is:
// in a pod, the service account (token + CA under /var/run/secrets/kubernetes.io/serviceaccount and
// KUBERNETES_SERVICE_HOST/_PORT); elsewhere a kubeconfig (KUBECONFIG or --kubeconfig; YAML or JSON,
// its current context's cluster and user: server, CA, token or token file, client cert and key).
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { Command } from 'commander';
import { UsageError, errMsg } from '../lib/errors';

export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';
export const DEFAULT_CONFIGMAP = 'kube-system/weave-net';

/** How to reach the API server. Secrets stay in files where they were (tokens rotate). */
export interface KubeConnection {
  server: string;
  /** where it came from, for logs and status */
  source: string;
  token?: string;
  /** re-read at most once a minute: bound service account tokens are rotated by the kubelet */
  tokenFile?: string;
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  insecure?: boolean;
}

export interface KubeConfig {
  enabled: boolean;
  nodeName: string;
  connection?: KubeConnection;
  /** the ConfigMap holding the peers that ever joined */
  configMap: { namespace: string; name: string };
  /** install the CNI plugin and conflist at start */
  cni?: { binDir: string; confDir: string };
  /** on SIGTERM keep the kernel's data path (fastdp device, routes, xfrm, endpoints) for the next start */
  keepOnStop: boolean;
  /** how long the start waits for the first list of Nodes (ms) */
  startTimeoutMs: number;
}

export function addKubeFlags(cmd: Command): void {
  cmd
    .option('--kube', 'Kubernetes mode: peers from Node objects, reclaim of deleted nodes\' space, CNI install (env WEAVE_KUBE=1)')
    .option('--kube-node-name <name>', 'this node\'s name (env NODE_NAME; default: the hostname)')
    .option('--kubeconfig <file>', 'kubeconfig to reach the API server (env KUBECONFIG; default in a pod: its service account)')
    .option('--kube-peers-configmap <ns/name>', 'ConfigMap that keeps the peers that ever joined', DEFAULT_CONFIGMAP)
    .option('--kube-cni-bin-dir <dir>', 'where Kubernetes mode installs the CNI plugin (empty: do not install)', '/opt/cni/bin')
    .option('--kube-cni-conf-dir <dir>', 'where Kubernetes mode installs the CNI conflist', '/etc/cni/net.d')
    .option('--no-kube-keep-on-stop', 'in Kubernetes mode, remove the kernel data path on stop (default: kept, so a restart has no gap)')
    .option('--kube-start-timeout <seconds>', 'how long the start waits for the API server\'s first list of Nodes', '60');
}

export function parseKubeFlags(f: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): KubeConfig {
  const str = (k: string): string | undefined => (typeof f[k] === 'string' && f[k] !== '' ? (f[k] as string) : undefined);
  const enabled = f.kube === true || env.WEAVE_KUBE === '1' || env.WEAVE_KUBE === 'true';
  const cmArg = str('kubePeersConfigmap') ?? DEFAULT_CONFIGMAP;
  const cm = /^([a-z0-9][a-z0-9-]{0,62})\/([a-z0-9][a-z0-9.-]{0,252})$/.exec(cmArg);
  if (!cm) throw new UsageError(`invalid --kube-peers-configmap "${cmArg}": expected NAMESPACE/NAME`);
  const startS = Number(str('kubeStartTimeout') ?? '60');
  if (!Number.isFinite(startS) || startS <= 0) throw new UsageError(`invalid --kube-start-timeout "${str('kubeStartTimeout')}": seconds, more than 0`);
  const binDir = str('kubeCniBinDir');
  const base: KubeConfig = {
    enabled,
    nodeName: str('kubeNodeName') ?? env.NODE_NAME ?? os.hostname(),
    configMap: { namespace: cm[1], name: cm[2] },
    cni: binDir ? { binDir, confDir: str('kubeCniConfDir') ?? '/etc/cni/net.d' } : undefined,
    keepOnStop: f.kubeKeepOnStop !== false,
    startTimeoutMs: Math.round(startS * 1000),
  };
  if (!enabled) return base;
  if (!/^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/.test(base.nodeName)) throw new UsageError(`invalid node name "${base.nodeName}" (--kube-node-name or NODE_NAME): a lowercase DNS name`);
  const kubeconfig = str('kubeconfig') ?? env.KUBECONFIG;
  return { ...base, connection: kubeconfig ? fromKubeconfig(kubeconfig.split(':')[0]) : inCluster(env) };
}

/** The service account of the pod this runs in. */
export function inCluster(env: NodeJS.ProcessEnv, dir = SERVICE_ACCOUNT_DIR): KubeConnection {
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT || '443';
  if (!host) throw new UsageError('Kubernetes mode needs the API server: run in a pod (KUBERNETES_SERVICE_HOST is not set) or give --kubeconfig / KUBECONFIG');
  const tokenFile = path.join(dir, 'token');
  if (!fs.existsSync(tokenFile)) throw new UsageError(`Kubernetes mode in a pod needs its service account token at ${tokenFile} (automountServiceAccountToken)`);
  const caFile = path.join(dir, 'ca.crt');
  return {
    server: `https://${host.includes(':') ? `[${host}]` : host}:${port}`,
    source: `in-cluster service account (${dir})`,
    tokenFile,
    ca: readOr(caFile, 'the service account CA'),
  };
}

function readOr(file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new UsageError(`cannot read ${what} ${file}: ${errMsg(e)}`, { file }, { cause: e });
  }
}

/** A kubeconfig's current context: its cluster's server and CA, its user's credentials. */
export function fromKubeconfig(file: string): KubeConnection {
  const text = readOr(file, 'the kubeconfig').toString('utf8');
  let doc: any;
  try {
    // loaded here, not at start: only a router or npc given a kubeconfig needs it (~0.8 MB of heap)
    const { parse: parseYaml } = require('yaml') as typeof import('yaml');
    doc = parseYaml(text);
  } catch (e) {
    throw new UsageError(`kubeconfig ${file} is not YAML: ${errMsg(e)}`, { file }, { cause: e });
  }
  const bad = (why: string) => new UsageError(`kubeconfig ${file}: ${why}`, { file });
  if (!doc || typeof doc !== 'object') throw bad('empty');
  const named = (list: unknown, name: string, what: string): any => {
    const e = Array.isArray(list) ? list.find((x) => x && x.name === name) : undefined;
    if (!e) throw bad(`no ${what} named "${name}"`);
    return e[what] ?? {};
  };
  const ctxName = doc['current-context'];
  if (typeof ctxName !== 'string' || !ctxName) throw bad('no current-context');
  const ctx = named(doc.contexts, ctxName, 'context');
  const cluster = named(doc.clusters, ctx.cluster, 'cluster');
  const user = ctx.user ? named(doc.users, ctx.user, 'user') : {};
  if (typeof cluster.server !== 'string' || !/^https?:\/\/[^/]+/.test(cluster.server)) throw bad(`cluster "${ctx.cluster}" has no http(s) server`);
  const rel = (p: string) => (path.isAbsolute(p) ? p : path.join(path.dirname(file), p));
  const data = (inline: unknown, fileField: unknown, what: string): Buffer | undefined => {
    if (typeof inline === 'string') return Buffer.from(inline, 'base64');
    if (typeof fileField === 'string') return readOr(rel(fileField), what);
    return undefined;
  };
  return {
    server: cluster.server.replace(/\/+$/, ''),
    source: `kubeconfig ${file} (context ${ctxName})`,
    ca: data(cluster['certificate-authority-data'], cluster['certificate-authority'], 'the cluster CA'),
    insecure: cluster['insecure-skip-tls-verify'] === true,
    token: typeof user.token === 'string' ? user.token : undefined,
    tokenFile: typeof user.tokenFile === 'string' ? rel(user.tokenFile) : undefined,
    cert: data(user['client-certificate-data'], user['client-certificate'], 'the client certificate'),
    key: data(user['client-key-data'], user['client-key'], 'the client key'),
  };
}
