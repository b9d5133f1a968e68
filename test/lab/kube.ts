// A Kubernetes cluster in the netns lab: the fixture API server (test/lab/apiserver.ts) runs as its
// own process in a lab host ("api", on the underlay, as a real control plane would be), the test
// drives it through its control unix socket (the test process is not on the underlay); each node is
// a lab host whose Node object names its underlay address, running `weave router --kube` with a
// kubeconfig pointing at the fixture, and (when asked) a containerd whose CRI calls the weave CNI
// plugin the router installed, as kubelet does.
import * as fs from 'fs';
import * as http from 'http';
import * as path from 'path';
import { spawn, type ChildProcess } from 'child_process';
import { waitFor } from './exec';
import { DEBIAN_PLUGINS_DIR, type CniInstall } from './cni';
import type { Host, Lab, RouterProcess } from './lab';
import { kubeconfigFor, nodeObject } from './apiserver';

const APISERVER_JS = path.join(__dirname, 'apiserver.js');
const API_PORT = 6443;
const PLUGINS = ['loopback', 'portmap'];

export interface KubeNode { host: Host; name: string; cni: CniInstall; router?: RouterProcess }

export class KubeCluster {
  readonly nodes: KubeNode[] = [];
  private constructor(readonly lab: Lab, readonly api: Host, readonly child: ChildProcess, readonly control: string, readonly url: string, readonly kubeconfig: string) {}

  /** The fixture API server in its own lab host. */
  static async create(lab: Lab, opts: { bookmarkMs?: number } = {}): Promise<KubeCluster> {
    const api = await lab.addHost('api');
    const control = path.join(lab.tmp, 'apiserver.sock');
    const child = spawn('ip', ['netns', 'exec', api.ns, process.execPath, '--enable-source-maps', APISERVER_JS,
      '--host', api.ip, '--port', String(API_PORT), '--control-socket', control, '--bookmark-ms', String(opts.bookmarkMs ?? 2000)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d; });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => { out += d; });
    const url = await waitFor('the fixture API server', () => {
      if (child.exitCode !== null) throw new Error(`the fixture API server exited: ${out}`);
      const line = out.split('\n').find((l) => l.startsWith('{'));
      return line ? (JSON.parse(line).url as string) : undefined;
    }, { timeoutMs: 20_000, intervalMs: 50 });
    const kubeconfig = path.join(lab.tmp, 'kubeconfig');
    fs.writeFileSync(kubeconfig, kubeconfigFor(url));
    return new KubeCluster(lab, api, child, control, url, kubeconfig);
  }

  /** A request to the fixture through its control socket (also while its API is stopped). */
  call(method: string, p: string, body?: unknown, contentType = 'application/json'): Promise<any> {
    return new Promise((resolve, reject) => {
      const data = body === undefined ? undefined : JSON.stringify(body);
      const req = http.request({ socketPath: this.control, method, path: p, headers: data ? { 'Content-Type': contentType, 'Content-Length': Buffer.byteLength(data) } : {} }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (text += d));
        res.on('end', () => {
          const v = text ? JSON.parse(text) : undefined;
          if ((res.statusCode ?? 0) >= 300) reject(new Error(`${method} ${p}: ${res.statusCode} ${v?.message ?? text}`));
          else resolve(v);
        });
      });
      req.on('error', reject);
      req.end(data);
    });
  }

  /** A lab host with a Node object (InternalIP: its underlay address) and CNI dirs holding loopback and portmap. */
  async addNode(name: string): Promise<KubeNode> {
    const host = await this.lab.addHost(name);
    await this.call('POST', '/api/v1/nodes', nodeObject(name, host.ip));
    const base = path.join(this.lab.tmp, `cni-${name}`);
    const cni: CniInstall = {
      binDir: path.join(base, 'bin'), confDir: path.join(base, 'net.d'), conflist: path.join(base, 'net.d', '10-weave.conflist'),
      list: { cniVersion: '1.0.0', name: 'weave', plugins: [] },
    };
    fs.mkdirSync(cni.binDir, { recursive: true });
    for (const p of PLUGINS) { fs.copyFileSync(path.join(DEBIAN_PLUGINS_DIR, p), path.join(cni.binDir, p)); fs.chmodSync(path.join(cni.binDir, p), 0o755); }
    const n = { host, name, cni };
    this.nodes.push(n);
    return n;
  }

  /** `weave router --kube` on the node (its CNI dirs, the fixture's kubeconfig). */
  startRouter(n: KubeNode, extra: string[] = []): RouterProcess {
    n.router = n.host.startRouter(['--kube', '--kube-node-name', n.name, '--kubeconfig', this.kubeconfig, '--nickname', n.name,
      '--kube-cni-bin-dir', n.cni.binDir, '--kube-cni-conf-dir', n.cni.confDir, ...extra]);
    return n.router;
  }

  /** Until GET /ready answers 200 on the node's router. */
  async waitReady(n: KubeNode, timeoutMs = 120_000): Promise<void> {
    await waitFor(`${n.name} ready`, async () => {
      if (n.router && n.router.child.exitCode !== null) throw new Error(`router on ${n.name} exited: ${n.router.output().slice(-3000)}`);
      return n.host.httpGet('/ready').then(() => true, () => false);
    }, { timeoutMs, intervalMs: 250 });
  }

  /** SIGTERM, and wait until it has exited. */
  async stopRouter(n: KubeNode): Promise<void> {
    const r = n.router;
    if (!r || r.child.exitCode !== null) return;
    r.child.kill('SIGTERM');
    await r.exited;
  }

  async deleteNode(name: string): Promise<void> {
    await this.call('DELETE', `/api/v1/nodes/${name}`);
  }

  async stopApi(): Promise<void> { await this.call('POST', '/_fixture/stop'); }
  async startApi(): Promise<void> { await this.call('POST', '/_fixture/start'); }
  async counts(): Promise<{ counts: Record<string, number>; logLength: number; watches: number }> { return this.call('GET', '/_fixture/counts'); }

  async close(): Promise<void> {
    if (this.child.exitCode === null) {
      this.child.kill('SIGTERM');
      await new Promise((r) => { this.child.once('exit', r); setTimeout(r, 3000); });
    }
  }
}

/**
 * Replies of `ping -D` as timestamps (s); the longest silence between two replies, from start to the
 * first, and (given endedAt, the last send's time) from the last reply to the end.
 */
export function longestGap(pingOut: string, startedAt: number, endedAt?: number): { replies: number; gapS: number } {
  const ts = [...pingOut.matchAll(/^\[(\d+\.\d+)\] \d+ bytes from/gm)].map((m) => Number(m[1]));
  if (ts.length === 0) return { replies: 0, gapS: Infinity };
  let gap = ts[0] - startedAt;
  for (let i = 1; i < ts.length; i++) gap = Math.max(gap, ts[i] - ts[i - 1]);
  if (endedAt !== undefined) gap = Math.max(gap, endedAt - ts[ts.length - 1]);
  return { replies: ts.length, gapS: gap };
}
