// The network-policy lab: three hosts with routers (h1-h2 fastdp, h3 sleeve-only), the nine pods
// x/a ... z/c made through the CNI plugin (pod a of each namespace on h1, b on h2, c on h3), each
// running test/lab/netpol-agent.ts, and the reachability matrix probed with real traffic.
import { spawn, type ChildProcess } from 'child_process';
import * as path from 'path';
import * as readline from 'readline';
import type { Host, Lab, Container } from './lab';
import { callPlugin, installCni, pluginConf, type CniInstall } from './cni';
import { waitFor } from './exec';
import { conformanceCluster, expectAllowed, type TNamespace, type TPod, type TProto } from './netpol-truth';

export const AGENT_JS = path.join(__dirname, 'netpol-agent.js');

export class Agent {
  private seq = 0;
  private readonly pending = new Map<number, (ok: boolean) => void>();
  private constructor(readonly child: ChildProcess) {
    readline.createInterface({ input: child.stdout! }).on('line', (l) => {
      const m = JSON.parse(l);
      if (m.id !== undefined) { this.pending.get(m.id)?.(m.ok); this.pending.delete(m.id); }
    });
  }

  static async start(ns: string, ports: number[]): Promise<Agent> {
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, AGENT_JS, ...ports.map(String)], { stdio: ['pipe', 'pipe', 'inherit'] });
    const first = await new Promise<string>((resolve, reject) => {
      const rl = readline.createInterface({ input: child.stdout! });
      rl.once('line', (l) => { rl.close(); resolve(l); });
      child.once('exit', (c) => reject(new Error(`agent in ${ns} exited (${c}) before it was ready`)));
    });
    if (!JSON.parse(first).ready) throw new Error(`agent in ${ns}: ${first}`);
    return new Agent(child);
  }

  probe(ip: string, proto: TProto, port: number, timeoutMs: number): Promise<boolean> {
    const id = ++this.seq;
    return new Promise((resolve) => {
      this.pending.set(id, resolve);
      this.child.stdin!.write(JSON.stringify({ id, ip, proto, port, timeoutMs }) + '\n');
    });
  }

  stop(): void {
    this.child.stdin!.end();
    this.child.kill('SIGKILL');
  }
}

export interface PolicyLab {
  hosts: Host[];
  cnis: CniInstall[];
  namespaces: TNamespace[];
  pods: TPod[];
  containers: Map<string, Container>;
  agents: Map<string, Agent>;
  stop(): void;
}

const podKey = (p: { ns: string; name: string }) => `${p.ns}/${p.name}`;

/** Routers on three hosts, the CNI on each, nine pods with agents. The caller owns lab cleanup. */
export async function buildPolicyLab(lab: Lab, protos: TProto[]): Promise<PolicyLab> {
  const hosts = [await lab.addHost('h1'), await lab.addHost('h2'), await lab.addHost('h3')];
  const common = ['--ipalloc-init', 'consensus=3', '--ipalloc-timeout', '5'];
  hosts[0].startRouter(['--nickname', 'h1', ...common]);
  hosts[1].startRouter(['--nickname', 'h2', ...common, hosts[0].ip]);
  hosts[2].startRouter(['--nickname', 'h3', ...common, '--no-fastdp', hosts[0].ip, hosts[1].ip]);
  await Promise.all(hosts.map((h) => h.waitReady(30_000)));
  const cnis = await Promise.all(hosts.map((h) => installCni(h)));
  await waitFor('IPAM ring (CNI STATUS)', async () => (await callPlugin(hosts[0], cnis[0], { CNI_COMMAND: 'STATUS' }, pluginConf(cnis[0], { cniVersion: '1.1.0' }))).code === 0, { timeoutMs: 30_000, intervalMs: 300 });
  const template = conformanceCluster(() => '', hosts.map((h) => h.name), protos);
  const containers = new Map<string, Container>();
  const ips = new Map<string, string>();
  await Promise.all(template.pods.map(async (p) => {
    const h = hosts.findIndex((x) => x.name === p.node);
    const { container, ip } = await addPod(lab, hosts[h], cnis[h], p.ns, p.name);
    containers.set(podKey(p), container);
    ips.set(podKey(p), ip);
  }));
  const pods = template.pods.map((p) => ({ ...p, ip: ips.get(podKey(p))! }));
  const agents = new Map<string, Agent>();
  await Promise.all(pods.map(async (p) => agents.set(podKey(p), await Agent.start(containers.get(podKey(p))!.ns, [80, 81]))));
  return {
    hosts, cnis, namespaces: template.namespaces, pods, containers, agents,
    stop() { for (const a of agents.values()) a.stop(); },
  };
}

/** A pod's namespace wired by the CNI plugin on host, as the runtime does at sandbox creation. */
export async function addPod(lab: Lab, host: Host, cni: CniInstall, ns: string, name: string): Promise<{ container: Container; ip: string }> {
  const container = await lab.addContainer(`${ns}${name}`);
  const r = await callPlugin(host, cni, {
    CNI_COMMAND: 'ADD', CNI_CONTAINERID: `ctr-${ns}-${name}`, CNI_NETNS: `/var/run/netns/${container.ns}`, CNI_IFNAME: 'eth0',
    CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${ns};K8S_POD_NAME=${name};K8S_POD_INFRA_CONTAINER_ID=ctr-${ns}-${name}`,
  }, pluginConf(cni));
  if (r.code !== 0) throw new Error(`CNI ADD for ${ns}/${name} on ${host.name}: ${r.stdout}${r.stderr}`);
  return { container, ip: r.json.ips[0].address.split('/')[0] };
}

export interface Cell { src: TPod; dst: TPod; proto: TProto; port: number; want: boolean }

export function expectedMatrix(pods: TPod[], nss: TNamespace[], policies: any[], protos: TProto[], ports: number[]): Cell[] {
  const cells: Cell[] = [];
  for (const src of pods) for (const dst of pods) {
    if (src === dst) continue; // a pod reaches itself over lo, never through the host
    for (const proto of protos) for (const port of ports) cells.push({ src, dst, proto, port, want: expectAllowed(policies, nss, src, dst, proto, port) });
  }
  return cells;
}

function cellName(c: Cell): string {
  return `${podKey(c.src)} -> ${podKey(c.dst)} ${c.port}/${c.proto}: want ${c.want ? 'allowed' : 'denied'}`;
}

/**
 * Probes every cell (all at once) and again the ones that differ, until all match or the deadline
 * passes; returns the mismatches left (empty: the matrix holds) and how long it took to hold.
 */
export async function checkMatrix(pl: PolicyLab, cells: Cell[], opts: { timeoutMs: number; deadlineMs: number }): Promise<{ wrong: string[]; ms: number; rounds: number }> {
  const t0 = Date.now();
  let todo = cells;
  let rounds = 0;
  for (;;) {
    rounds++;
    const got = await Promise.all(todo.map((c) => pl.agents.get(podKey(c.src))!.probe(c.dst.ip, c.proto, c.port, opts.timeoutMs)));
    todo = todo.filter((c, i) => got[i] !== c.want);
    if (todo.length === 0 || Date.now() - t0 > opts.deadlineMs) return { wrong: todo.map((c) => `${cellName(c)}, got ${c.want ? 'denied' : 'allowed'}`), ms: Date.now() - t0, rounds };
  }
}
