// The netns lab. A host is a network namespace with one veth ("eth0") onto an underlay bridge that
// lives in the lab's own underlay namespace (198.18.0.0/16, the benchmarking range). A container is
// a bare namespace; `weave attach` wires it to its host. Names carry a random lab id so parallel runs
// never collide, and cleanup() removes everything the lab made, processes first, even after failures.
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ChildProcess, spawn } from 'child_process';
import { run, RunOptions, RunResult, waitFor } from './exec';

export const WEAVE_JS = path.join(__dirname, '..', '..', 'weave.js');

export interface RouterProcess {
  child: ChildProcess;
  /** everything the router printed so far (stdout+stderr) */
  output(): string;
  exited: Promise<number | null>;
}

export class Host {
  readonly dataDir: string;
  readonly routers: RouterProcess[] = [];
  constructor(readonly lab: Lab, readonly name: string, readonly ns: string, readonly ip: string, readonly index: number) {
    this.dataDir = path.join(lab.tmp, name);
    fs.mkdirSync(this.dataDir, { recursive: true });
  }

  /** Runs argv inside this host's namespace. */
  exec(argv: string[], opts: RunOptions = {}): Promise<RunResult> {
    return run(['ip', 'netns', 'exec', this.ns, ...argv], opts);
  }

  env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = { ...process.env, WEAVE_DATA_DIR: this.dataDir, ...extra };
    delete env.NODE_TEST_CONTEXT;
    delete env.WEAVE_PASSWORD;
    if (extra.WEAVE_PASSWORD) env.WEAVE_PASSWORD = extra.WEAVE_PASSWORD;
    return env;
  }

  /** Runs the weave CLI in this host (its own data dir; WEAVE_PASSWORD only when given). */
  weave(args: string[], opts: { env?: Record<string, string>; allowFail?: boolean; timeoutMs?: number } = {}): Promise<RunResult> {
    return this.exec([process.execPath, '--enable-source-maps', WEAVE_JS, ...args], { env: this.env(opts.env), allowFail: opts.allowFail, timeoutMs: opts.timeoutMs ?? 60_000 });
  }

  /** Runs `weave report` and parses it. */
  async report(): Promise<any> {
    const r = await this.weave(['report'], { timeoutMs: 15_000 });
    return JSON.parse(r.stdout);
  }

  /** GET a path of this host's router API (127.0.0.1:6784 inside the namespace) as text. */
  async httpGet(urlPath: string): Promise<string> {
    const script = `require('http').get('http://127.0.0.1:6784${urlPath}',r=>{let d='';r.setEncoding('utf8');r.on('data',c=>d+=c);r.on('end',()=>{process.stdout.write(d);process.exit(r.statusCode===200?0:1)})}).on('error',e=>{console.error(e.message);process.exit(1)})`;
    return (await this.exec([process.execPath, '-e', script], { timeoutMs: 15_000 })).stdout;
  }

  /** Starts `weave router ARGS` in the foreground (as a child we own), returns when spawned. */
  startRouter(args: string[], env: Record<string, string> = {}): RouterProcess {
    const child = spawn('ip', ['netns', 'exec', this.ns, process.execPath, '--enable-source-maps', WEAVE_JS, 'router', ...args], {
      env: this.env(env),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d; });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => { out += d; });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const rp = { child, output: () => out, exited };
    this.routers.push(rp);
    return rp;
  }

  /** Waits until this host's API answers (router started by startRouter or `weave launch`). */
  async waitReady(timeoutMs = 20_000): Promise<any> {
    return waitFor(`router API in ${this.name}`, async () => {
      const r = await this.weave(['report'], { allowFail: true, timeoutMs: 10_000 });
      return r.code === 0 ? JSON.parse(r.stdout) : undefined;
    }, { timeoutMs, intervalMs: 250 });
  }

  /** kill -9 every process in this host's namespace (routers we started; nothing else lives there). */
  async killAll(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    for (const pid of await this.lab.pidsIn(this.ns)) {
      try { process.kill(pid, signal); } catch { /* already gone */ }
    }
    await waitFor(`processes in ${this.ns} to exit`, async () => (await this.lab.pidsIn(this.ns)).length === 0, { timeoutMs: 10_000, intervalMs: 100 });
  }
}

export class Container {
  constructor(readonly lab: Lab, readonly name: string, readonly ns: string) {}
  exec(argv: string[], opts: RunOptions = {}): Promise<RunResult> {
    return run(['ip', 'netns', 'exec', this.ns, ...argv], opts);
  }
  /** the first IPv4 address on ethwe, if attached */
  async address(dev = 'ethwe'): Promise<string | undefined> {
    const r = await run(['ip', '-n', this.ns, '-j', 'addr', 'show', 'dev', dev], { allowFail: true });
    if (r.code !== 0) return undefined;
    const info = JSON.parse(r.stdout)[0]?.addr_info ?? [];
    return info.find((a: any) => a.family === 'inet')?.local;
  }
}

export class Lab {
  readonly id: string;
  readonly underlay: string;
  readonly tmp: string;
  readonly hosts: Host[] = [];
  readonly containers: Container[] = [];
  private nsList: string[] = [];
  private nftRules = 0;

  private constructor(id: string) {
    this.id = id;
    this.underlay = `w${id}-ul`;
    this.tmp = fs.mkdtempSync(path.join(os.tmpdir(), `weave-lab-${id}-`));
  }

  static async create(): Promise<Lab> {
    const lab = new Lab(randomBytes(3).toString('hex'));
    try {
      await lab.addNs(lab.underlay);
      await run(['ip', '-n', lab.underlay, 'link', 'add', 'br0', 'type', 'bridge']);
      await run(['ip', '-n', lab.underlay, 'link', 'set', 'br0', 'up']);
      await run(['ip', 'netns', 'exec', lab.underlay, 'nft', '-f', '-'], {
        input: `add table bridge lab\nadd chain bridge lab cuts { type filter hook forward priority 0; policy accept; }\n`,
      });
    } catch (e) {
      await lab.cleanup();
      throw e;
    }
    return lab;
  }

  private async addNs(ns: string): Promise<void> {
    await run(['ip', 'netns', 'add', ns]);
    this.nsList.push(ns);
    await run(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
  }

  /** A host on the underlay bridge with address 198.18.0.(10+index)/16 on eth0. */
  async addHost(name: string, opts: { mtu?: number } = {}): Promise<Host> {
    const index = this.hosts.length + 1;
    const ns = `w${this.id}-${name}`;
    await this.addNs(ns);
    const ip = `198.18.0.${10 + index}`;
    const port = `${name}`.slice(0, 12); // bridge port name in the underlay namespace
    await run(['ip', 'link', 'add', `wl${this.id}${index}a`, 'type', 'veth', 'peer', 'name', `wl${this.id}${index}b`]);
    await run(['ip', 'link', 'set', `wl${this.id}${index}a`, 'netns', ns, 'name', 'eth0']);
    await run(['ip', 'link', 'set', `wl${this.id}${index}b`, 'netns', this.underlay, 'name', port]);
    await run(['ip', '-n', this.underlay, 'link', 'set', port, 'master', 'br0', 'up']);
    await run(['ip', '-n', ns, 'addr', 'add', `${ip}/16`, 'dev', 'eth0']);
    if (opts.mtu) {
      await run(['ip', '-n', ns, 'link', 'set', 'eth0', 'mtu', String(opts.mtu)]);
      await run(['ip', '-n', this.underlay, 'link', 'set', port, 'mtu', String(opts.mtu)]);
    }
    await run(['ip', '-n', ns, 'link', 'set', 'eth0', 'up']);
    const h = new Host(this, name, ns, ip, index);
    this.hosts.push(h);
    return h;
  }

  /** A bare container namespace (attach it with `weave attach ... <ns>`). */
  async addContainer(name: string): Promise<Container> {
    const ns = `w${this.id}-${name}`;
    await this.addNs(ns);
    const c = new Container(this, name, ns);
    this.containers.push(c);
    return c;
  }

  /** Adds an nftables rule (bridge family, forward chain) in the underlay; returns its handle for removal. */
  async underlayRule(rule: string): Promise<number> {
    const r = await run(['ip', 'netns', 'exec', this.underlay, 'nft', '--echo', '--handle', 'add', 'rule', 'bridge', 'lab', 'cuts', ...rule.split(' ')]);
    const m = /# handle (\d+)/.exec(r.stdout);
    if (!m) throw new Error(`nft did not return a handle for rule "${rule}": ${r.stdout}`);
    this.nftRules++;
    return Number(m[1]);
  }

  async removeRule(handle: number): Promise<void> {
    await run(['ip', 'netns', 'exec', this.underlay, 'nft', 'delete', 'rule', 'bridge', 'lab', 'cuts', 'handle', String(handle)]);
  }

  /** Cuts the underlay between two hosts (both directions); returns the rule handles. */
  async cut(a: Host, b: Host): Promise<number[]> {
    return [
      await this.underlayRule(`iifname ${a.name.slice(0, 12)} oifname ${b.name.slice(0, 12)} drop`),
      await this.underlayRule(`iifname ${b.name.slice(0, 12)} oifname ${a.name.slice(0, 12)} drop`),
    ];
  }

  async heal(handles: number[]): Promise<void> {
    for (const h of handles) await this.removeRule(h);
  }

  async pidsIn(ns: string): Promise<number[]> {
    const r = await run(['ip', 'netns', 'pids', ns], { allowFail: true });
    return r.stdout.split(/\s+/).filter(Boolean).map(Number).filter((p) => p !== process.pid);
  }

  /** Stops every process in our namespaces, deletes the namespaces and the temp dir. Never throws. */
  async cleanup(): Promise<void> {
    for (const h of this.hosts) for (const r of h.routers) if (r.child.exitCode === null) r.child.kill('SIGKILL');
    for (const ns of this.nsList) {
      for (const pid of await this.pidsIn(ns).catch(() => [] as number[])) {
        try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      }
    }
    for (const ns of [...this.nsList].reverse()) {
      await run(['ip', 'netns', 'del', ns], { allowFail: true }).catch(() => undefined);
      try { fs.rmSync(`/etc/netns/${ns}`, { recursive: true, force: true }); } catch { /* none */ }
    }
    this.nsList = [];
    fs.rmSync(this.tmp, { recursive: true, force: true });
  }
}

/** Runs body with a fresh lab and always cleans it up. */
export async function withLab<T>(body: (lab: Lab) => Promise<T>): Promise<T> {
  const lab = await Lab.create();
  try {
    return await body(lab);
  } finally {
    await lab.cleanup();
  }
}
