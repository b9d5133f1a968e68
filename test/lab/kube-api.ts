// The API server of a lab cluster (bench/kube, the image test): the fixture (test/lab/apiserver.ts)
// runs as its own process in the lab's underlay namespace, on an address of the underlay bridge every
// lab host reaches (as nodes reach a real API server), with its control socket in the lab's tmp for
// this process (Node objects, request counts, the request log). Plain HTTP with a kubeconfig, or
// HTTPS with a bearer token and a service account directory (token, ca.crt, namespace) as a pod gets
// it, for routers configured in-cluster. startPoller watches a router's readiness from a small
// process started in the host's namespace before the router, so the time from the router's start to
// ready excludes the poller's own start.
import { spawn, type ChildProcess } from 'child_process';
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as http from 'http';
import * as path from 'path';
import { run, waitFor } from './exec';
import type { Host, Lab } from './lab';
import { kubeconfigFor, nodeObject, type Obj } from './apiserver';

const APISERVER_JS = path.join(__dirname, 'apiserver.js');
export const API_ADDR = '198.18.255.250';
export const API_PORT = 6443;

export interface FixtureCounts {
  counts: Record<string, number>;
  logLength: number;
  watches: number;
  running: boolean;
  resourceVersion: string;
}

export interface LoggedRequest { verb: string; method: string; path: string; resource?: string; at: number; userAgent?: string }

/** The fixture API server as a process in the lab's underlay namespace. */
export class ClusterApi {
  /** a kubeconfig for this server (with the token and CA when it speaks HTTPS) */
  readonly kubeconfig: string;
  /** HTTPS only: a directory laid out as a pod's /var/run/secrets/kubernetes.io/serviceaccount */
  readonly serviceAccountDir?: string;
  private constructor(readonly lab: Lab, readonly child: ChildProcess, readonly socket: string, private readonly tls?: { dir: string; token: string }) {
    this.kubeconfig = path.join(lab.tmp, 'kubeconfig');
    if (tls) this.serviceAccountDir = path.join(lab.tmp, 'serviceaccount');
  }

  /** The kubeconfig and service account files, once the server made its certificate. */
  private writeCredentials(): void {
    if (!this.tls || !this.serviceAccountDir) {
      fs.writeFileSync(this.kubeconfig, kubeconfigFor(`http://${API_ADDR}:${API_PORT}`));
      return;
    }
    fs.mkdirSync(this.serviceAccountDir, { recursive: true });
    const ca = path.join(this.serviceAccountDir, 'ca.crt');
    fs.copyFileSync(path.join(this.tls.dir, 'apiserver.crt'), ca);
    fs.writeFileSync(path.join(this.serviceAccountDir, 'token'), this.tls.token);
    fs.writeFileSync(path.join(this.serviceAccountDir, 'namespace'), 'kube-system');
    fs.writeFileSync(this.kubeconfig, kubeconfigFor(`https://${API_ADDR}:${API_PORT}`, this.tls.token, ca));
  }

  /** The environment a pod gets for its in-cluster configuration. */
  get inClusterEnv(): Record<string, string> {
    return { KUBERNETES_SERVICE_HOST: API_ADDR, KUBERNETES_SERVICE_PORT: String(API_PORT) };
  }

  static async start(lab: Lab, opts: { bookmarkMs?: number; tls?: boolean } = {}): Promise<ClusterApi> {
    await run(['ip', '-n', lab.underlay, 'addr', 'add', `${API_ADDR}/16`, 'dev', 'br0']);
    const socket = path.join(lab.tmp, 'apiserver.sock');
    const tls = opts.tls ? { dir: path.join(lab.tmp, 'apiserver-tls'), token: randomBytes(16).toString('hex') } : undefined;
    if (tls) fs.mkdirSync(tls.dir, { recursive: true });
    const child = spawn('ip', ['netns', 'exec', lab.underlay, process.execPath, APISERVER_JS, '--host', API_ADDR, '--port', String(API_PORT),
      '--control-socket', socket, '--bookmark-ms', String(opts.bookmarkMs ?? 5000), ...(tls ? ['--tls-dir', tls.dir, '--token', tls.token] : [])], { stdio: ['ignore', 'pipe', 'inherit'] });
    const api = new ClusterApi(lab, child, socket, tls);
    try {
      await waitFor('the fixture API server', async () => {
        if (child.exitCode !== null) throw new Error(`the fixture API server exited ${child.exitCode}`);
        return fs.existsSync(socket) && (await api.counts().then(() => true, () => false));
      }, { timeoutMs: 20_000, intervalMs: 100 });
      api.writeCredentials();
    } catch (e) {
      await api.stop();
      throw e;
    }
    return api;
  }

  request<T>(method: string, urlPath: string, body?: unknown): Promise<T> {
    return new Promise((resolve, reject) => {
      const data = body === undefined ? undefined : JSON.stringify(body);
      const req = http.request({ socketPath: this.socket, method, path: urlPath, headers: data ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } : {} }, (res) => {
        let text = '';
        res.setEncoding('utf8').on('data', (d: string) => { text += d; }).on('end', () => {
          if ((res.statusCode ?? 500) >= 300) reject(new Error(`${method} ${urlPath}: ${res.statusCode} ${text}`));
          else resolve(JSON.parse(text) as T);
        });
      });
      req.on('error', reject);
      req.end(data);
    });
  }

  counts(since = 0): Promise<FixtureCounts> {
    return this.request('GET', `/_fixture/counts?since=${since}`);
  }

  log(since = 0): Promise<LoggedRequest[]> {
    return this.request('GET', `/_fixture/log?since=${since}`);
  }

  addNode(name: string, ip: string): Promise<Obj> {
    return this.request('POST', '/api/v1/nodes', nodeObject(name, ip));
  }

  deleteNode(name: string): Promise<Obj> {
    return this.request('DELETE', `/api/v1/nodes/${name}`);
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.pid) {
      this.child.kill('SIGTERM');
      await new Promise((r) => { this.child.once('exit', r); setTimeout(r, 5000); });
    }
  }
}

// Polls the router's readiness inside the host's namespace. `ready`: GET /ready on 127.0.0.1:6784
// until 200 (Kubernetes mode: ready when the mesh and IPAM are usable, 503 before). `prime`: POST
// /prime on the router's socket until it answers 200 (the plain router: the ring exists).
const POLLER = `
const http = require('http');
const [mode, sock] = process.argv.slice(1);
const once = () => new Promise((resolve) => {
  const o = mode === 'prime'
    ? { socketPath: sock, method: 'POST', path: '/prime', timeout: 30000, headers: { 'content-type': 'application/json' } }
    : { host: '127.0.0.1', port: 6784, method: 'GET', path: '/ready', timeout: 2000 };
  const q = http.request(o, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode)); });
  q.on('error', () => resolve(0));
  q.on('timeout', () => { q.destroy(); resolve(0); });
  q.end(mode === 'prime' ? '{}' : undefined);
});
(async () => {
  process.stdout.write('up\\n');
  for (;;) {
    if ((await once()) === 200) { process.stdout.write(JSON.stringify({ ready: Date.now() }) + '\\n'); process.exit(0); }
    await new Promise((r) => setTimeout(r, 20));
  }
})();
`;

export interface Poller { ready: Promise<number>; kill(): void }

/** Starts a readiness poller in the host's namespace; resolves once it runs. */
export async function startPoller(h: Host, mode: 'ready' | 'prime'): Promise<Poller> {
  const child = spawn('ip', ['netns', 'exec', h.ns, process.execPath, '-e', POLLER, mode, path.join(h.dataDir, 'weave.sock')], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  const up = new Promise<void>((resolve, reject) => {
    child.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d; if (out.includes('up\n')) resolve(); });
    child.on('exit', (c) => reject(new Error(`poller in ${h.name} exited ${c}`)));
  });
  const ready = new Promise<number>((resolve, reject) => {
    child.on('exit', () => {
      const m = /\{"ready":(\d+)\}/.exec(out);
      if (m) resolve(Number(m[1])); else reject(new Error(`poller in ${h.name} gave no time`));
    });
  });
  ready.catch(() => undefined);
  await up;
  return { ready, kill: () => { if (child.exitCode === null) child.kill('SIGKILL'); } };
}
