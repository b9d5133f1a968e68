// The network-policy lab's Kubernetes side: the fixture API server (test/lab/apiserver.ts) run in h1's
// namespace on h1's underlay address (every node's `weave npc` reaches it there), driven by the test
// through its control socket; `weave npc` started on each host as the DaemonSet would run it; and
// moving the API from one scenario state to the next (create, update or delete only what differs).
import { spawn, type ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as http from 'http';
import * as path from 'path';
import * as readline from 'readline';
import type { Host, Lab } from './lab';
import { WEAVE_JS } from './lab';
import { kubeconfigFor } from './apiserver';
import { waitFor } from './exec';

const APISERVER_JS = path.join(__dirname, 'apiserver.js');

export class FixtureApi {
  private constructor(readonly child: ChildProcess, readonly url: string, readonly socket: string, readonly kubeconfig: string) {}

  static async start(lab: Lab, host: Host): Promise<FixtureApi> {
    const socket = path.join(lab.tmp, 'apiserver.sock');
    const child = spawn('ip', ['netns', 'exec', host.ns, process.execPath, APISERVER_JS, '--host', host.ip, '--port', '6443', '--control-socket', socket, '--bookmark-ms', '60000'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const first = await new Promise<string>((resolve, reject) => {
      readline.createInterface({ input: child.stdout! }).once('line', resolve);
      child.once('exit', (c) => reject(new Error(`fixture API server exited (${c})`)));
    });
    const { url } = JSON.parse(first);
    const kubeconfig = path.join(lab.tmp, 'kubeconfig');
    fs.writeFileSync(kubeconfig, kubeconfigFor(url));
    return new FixtureApi(child, url, socket, kubeconfig);
  }

  request(method: string, p: string, body?: unknown): Promise<{ status: number; body: any }> {
    return new Promise((resolve, reject) => {
      const data = body === undefined ? undefined : JSON.stringify(body);
      const req = http.request({ socketPath: this.socket, method, path: p, headers: data ? { 'content-type': 'application/json' } : {} }, (res) => {
        let d = '';
        res.setEncoding('utf8').on('data', (c: string) => { d += c; }).on('end', () => resolve({ status: res.statusCode ?? 0, body: d ? JSON.parse(d) : undefined }));
      });
      req.on('error', reject);
      req.end(data);
    });
  }

  private async must(method: string, p: string, body?: unknown): Promise<any> {
    const r = await this.request(method, p, body);
    if (r.status >= 300) throw new Error(`${method} ${p}: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  }

  /** Makes the API hold exactly `objects` of the kinds given (by namespace/name), changing only what differs. */
  async sync(objects: any[], kinds: Array<'namespaces' | 'pods' | 'networkpolicies'>): Promise<number> {
    let changes = 0;
    for (const kind of kinds) {
      const want = objects.filter((o) => collection(o) === kind);
      const have = (await this.must('GET', listPath(kind))).items as any[];
      const k = (o: any) => `${o.metadata.namespace ?? ''}/${o.metadata.name}`;
      const haveBy = new Map(have.map((o) => [k(o), o]));
      for (const o of want) {
        const cur = haveBy.get(k(o));
        if (!cur) { await this.must('POST', collPath(kind, o.metadata.namespace), o); changes++; continue; }
        if (same(cur, o)) continue;
        await this.must('PUT', objPath(kind, o), o);
        changes++;
      }
      const wantKeys = new Set(want.map(k));
      for (const o of have) {
        if (wantKeys.has(k(o)) || (kind === 'namespaces' && !/^[xyz]$/.test(o.metadata.name))) continue;
        await this.must('DELETE', objPath(kind, o));
        changes++;
      }
    }
    return changes;
  }

  stop(): void {
    this.child.kill('SIGKILL');
  }
}

function collection(o: any): string {
  return o.kind === 'Namespace' ? 'namespaces' : o.kind === 'Pod' ? 'pods' : 'networkpolicies';
}

function prefix(kind: string): string {
  return kind === 'networkpolicies' ? '/apis/networking.k8s.io/v1' : '/api/v1';
}

function listPath(kind: string): string {
  return `${prefix(kind)}/${kind}`;
}

function collPath(kind: string, ns?: string): string {
  return kind === 'namespaces' ? `/api/v1/namespaces` : `${prefix(kind)}/namespaces/${ns}/${kind}`;
}

function objPath(kind: string, o: any): string {
  return `${collPath(kind, o.metadata.namespace)}/${o.metadata.name}`;
}

/** Whether the stored object already says what we want (labels, spec, status). */
function same(cur: any, want: any): boolean {
  const norm = (o: any) => JSON.stringify({ labels: o.metadata.labels ?? {}, spec: o.spec ?? {}, status: o.kind === 'Namespace' ? {} : o.status ?? {} });
  return norm(cur) === norm(want);
}

export interface NpcProcess {
  host: Host;
  child: ChildProcess;
  /** JSON log lines so far */
  lines(): any[];
}

/** `weave npc` in the host's namespace, for node host.name, as a child we own. */
export function startNpc(host: Host, api: FixtureApi, extra: string[] = []): NpcProcess {
  const child = spawn('ip', ['netns', 'exec', host.ns, process.execPath, '--enable-source-maps', WEAVE_JS, 'npc', '--kubeconfig', api.kubeconfig, '--node-name', host.name, ...extra], {
    env: host.env(), stdio: ['ignore', 'pipe', 'pipe'],
  });
  const out: any[] = [];
  const rl = readline.createInterface({ input: child.stdout! });
  rl.on('line', (l) => { try { out.push(JSON.parse(l)); } catch { out.push({ msg: l }); } });
  let err = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => { err += d; });
  child.once('exit', (c) => { if (c !== null && c !== 0) out.push({ msg: `npc exited ${c}`, stderr: err }); });
  return { host, child, lines: () => out };
}

/** GET /status of a host's npc (127.0.0.1:6781 inside its namespace). */
export async function npcStatus(host: Host): Promise<any> {
  const script = `require('http').get('http://127.0.0.1:6781/status',r=>{let d='';r.setEncoding('utf8');r.on('data',c=>d+=c);r.on('end',()=>{process.stdout.write(d)})}).on('error',e=>{console.error(e.message);process.exit(1)})`;
  return JSON.parse((await host.exec([process.execPath, '-e', script], { timeoutMs: 15_000 })).stdout);
}

/** Waits until every npc has its first lists in and its table programmed. */
export async function waitNpcsReady(hosts: Host[]): Promise<void> {
  await Promise.all(hosts.map((h) => waitFor(`npc on ${h.name} synced and applied`, async () => {
    const s = await npcStatus(h).catch(() => undefined);
    return s && s.synced && s.apply.applies > 0;
  }, { timeoutMs: 30_000, intervalMs: 250 })));
}
