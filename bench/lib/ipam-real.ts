// The real half of bench/ipam: routers in netns lab hosts, measured through their HTTP API.
// Each host gets one long-lived `node -e` client inside its namespace, talking to the router's API
// socket in the host's data dir (allocations change the router: TCP refuses them). The client starts, checks the API, says "ready" and waits for "go" on stdin,
// so Node start-up is outside every figure; clients report wall-clock timestamps
// (performance.timeOrigin + now(), sub-millisecond, one machine) so several can be merged.
// Lives in bench/lib/ so scripts/run-bench.js does not run it as a benchmark of its own.
import { ChildProcess, execFileSync, spawn } from 'child_process';
import { Host, Lab } from '../../test/lab/lab';
import { apiSocketPath } from '../../api/http';
import { waitFor } from '../../test/lab/exec';

export interface RealIpamOptions {
  /** allocations per router */
  allocs: number;
  /** requests in flight per client */
  concurrency: number;
  /** router counts for the time-to-consensus runs */
  consensusSizes: number[];
  log: (msg: string) => void;
}

export interface RealIpamFigures {
  one: string;
  three: string;
  consensus: Map<number, string>;
  /** `uptime` lines taken around each measurement */
  load: string[];
}

// Plain JS run with `node -e` inside a host namespace. Modes:
//   alloc N CONCURRENCY PREFIX  -> {start,end,addrs[],lat[],resets}
//   consensus POLL_MS           -> {primeSent,ready,resets}
// An idle keep-alive socket may be closed by the server (keepAliveTimeout 1 s) just as it is reused;
// one retry on ECONNRESET is safe because allocate by ident is idempotent, and it is counted.
const CLIENT = String.raw`
const http = require('http');
const { performance } = require('perf_hooks');
const now = () => performance.timeOrigin + performance.now();
const [mode, ...a] = process.argv.slice(1);
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
let resets = 0;
function req(method, path, body) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const r = http.request({ socketPath: process.env.WEAVE_API_SOCKET, method, path, agent,
      headers: data ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } : {} }, (rs) => {
      let d = '';
      rs.setEncoding('utf8');
      rs.on('data', (c) => { d += c; });
      rs.on('end', () => {
        let j;
        try { j = JSON.parse(d); } catch (e) { return reject(new Error(method + ' ' + path + ' ' + rs.statusCode + ': not JSON: ' + d.slice(0, 200))); }
        if (rs.statusCode !== 200) return reject(new Error(method + ' ' + path + ' ' + rs.statusCode + ': ' + (j.error || d)));
        resolve(j);
      });
    });
    r.on('error', reject);
    r.end(data);
  });
}
async function call(method, path, body) {
  try { return await req(method, path, body); } catch (e) {
    if (e.code !== 'ECONNRESET') throw e;
    resets++;
    return req(method, path, body);
  }
}
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
async function alloc(n, conc, prefix) {
  const addrs = new Array(n), lat = new Array(n);
  let next = 0;
  const start = now();
  async function worker() {
    while (next < n) {
      const i = next++;
      const s = now();
      const r = await call('POST', '/ipam/allocate', { ident: prefix + i });
      lat[i] = now() - s;
      addrs[i] = r.addr;
    }
  }
  await Promise.all(Array.from({ length: conc }, worker));
  out({ start, end: now(), addrs, lat, resets });
}
async function consensus(pollMs) {
  const primeSent = now();
  let primed = 0, failed;
  // /prime gives up after at most 30 s ("does not exist yet"); ask again, as weave prime does
  const prime = () => call('POST', '/prime', { timeoutMs: 25000 }).then(() => { primed = now(); }, (e) => {
    if (/does not exist yet/.test(String(e.message)) && now() - primeSent < 170000) return prime();
    failed = e;
  });
  const p = prime();
  for (;;) {
    if (failed) throw failed;
    if (primed) break;
    const r = await call('GET', '/ipam');
    if (r.status && r.status.ring.seeded && r.state === 'ready') break;
    if (now() - primeSent > 175000) throw new Error('ring not ready after 175 s: ' + r.state);
    await new Promise((res) => setTimeout(res, pollMs));
  }
  const ready = primed || now();
  await p;
  out({ primeSent, ready, resets });
}
(async () => {
  await call('GET', '/ipam');
  out({ ready: true });
  await new Promise((res) => process.stdin.once('data', res));
  if (mode === 'alloc') await alloc(Number(a[0]), Number(a[1]), a[2]);
  else if (mode === 'consensus') await consensus(Number(a[0]));
  else throw new Error('unknown mode ' + mode);
  agent.destroy();
  process.exit(0);
})().catch((e) => { out({ error: String(e && e.message || e) }); process.exit(1); });
`;

/** A client process in a host namespace, read as a stream of JSON lines. */
class Client {
  private readonly child: ChildProcess;
  private buf = '';
  private err = '';
  private readonly lines: any[] = [];
  private waiter: (() => void) | undefined;
  private exitCode: number | null | undefined;

  constructor(readonly host: Host, args: string[]) {
    this.child = spawn('ip', ['netns', 'exec', host.ns, process.execPath, '-e', CLIENT, ...args], {
      stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, WEAVE_API_SOCKET: apiSocketPath(host.dataDir) },
    });
    this.child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      this.buf += d;
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        this.lines.push(JSON.parse(this.buf.slice(0, i)));
        this.buf = this.buf.slice(i + 1);
      }
      this.waiter?.();
    });
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => { this.err += d; });
    this.child.stdin!.on('error', () => undefined); // exited early: next() reports why
    this.child.on('exit', (code) => { this.exitCode = code; this.waiter?.(); });
  }

  /** The next JSON line; throws on an {error} line, on exit without one, or after timeoutMs. */
  async next(timeoutMs: number): Promise<any> {
    const deadline = Date.now() + timeoutMs;
    while (!this.lines.length) {
      if (this.exitCode !== undefined) throw new Error(`client in ${this.host.name} exited (${this.exitCode}) without output: ${this.err.trim()}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`client in ${this.host.name} gave no answer within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => { clearTimeout(t); resolve(); };
      });
      this.waiter = undefined;
    }
    const l = this.lines.shift();
    if (l.error) throw new Error(`client in ${this.host.name}: ${l.error}`);
    return l;
  }

  go(): void {
    this.child.stdin!.write('go\n');
  }

  stop(): void {
    if (this.exitCode === undefined && this.child.pid) {
      try { process.kill(this.child.pid, 'SIGKILL'); } catch { /* already gone */ }
    }
  }
}

/** Starts clients, waits until all are ready, releases them together, returns their results. */
async function runClients(hosts: Host[], argsFor: (h: Host, i: number) => string[], timeoutMs: number): Promise<any[]> {
  const cs = hosts.map((h, i) => new Client(h, argsFor(h, i)));
  try {
    for (const c of cs) await c.next(30_000);
    for (const c of cs) c.go();
    return await Promise.all(cs.map((c) => c.next(timeoutMs)));
  } finally {
    for (const c of cs) c.stop();
  }
}

function uptime(label: string): string {
  return `${label.padEnd(28)} ${execFileSync('uptime', { encoding: 'utf8' }).trim()}`;
}

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

const PASSWORD = { WEAVE_PASSWORD: 'ipam-bench' };

const LAUNCH_BATCH = 5;

async function launch(h: Host, args: string[]): Promise<void> {
  await h.weave(['launch', '--no-fastdp', '--nickname', h.name, ...args], { env: PASSWORD, timeoutMs: 300_000 });
}

async function waitMesh(hosts: Host[]): Promise<void> {
  await waitFor(`${hosts.length} routers fully connected`, async () => {
    for (const h of hosts) {
      const r = await h.report();
      if (r.router.connections.filter((c: any) => c.state === 'established').length !== hosts.length - 1) return false;
    }
    return true;
  }, { timeoutMs: 120_000, intervalMs: 300 });
}

/**
 * Every router sees all n peers reachable in its topology (not necessarily connected to it): the
 * consensus runs over gossip relayed along the connections there are.
 */
async function waitTopology(hosts: Host[]): Promise<void> {
  await waitFor(`${hosts.length} routers all reachable in every topology`, async () => {
    for (const h of hosts) {
      const r = await h.report();
      const names = new Set<string>([r.router.name, ...r.router.peers.filter((p: any) => p.reachable).map((p: any) => p.name)]);
      if (names.size !== hosts.length) return false;
    }
    return true;
  }, { timeoutMs: 180_000, intervalMs: 500 });
}

async function withLab<T>(body: (lab: Lab) => Promise<T>): Promise<T> {
  const lab = await Lab.create();
  try {
    return await body(lab);
  } finally {
    await lab.cleanup();
  }
}

async function hostsIn(lab: Lab, n: number): Promise<Host[]> {
  const hs: Host[] = [];
  for (let i = 0; i < n; i++) hs.push(await lab.addHost(`h${i + 1}`));
  return hs;
}

/** Allocation results of several clients: aggregate rate, latencies, and a no-duplicates check. */
function allocSummary(results: any[], n: number): { text: string; rate: number } {
  const start = Math.min(...results.map((r) => r.start));
  const end = Math.max(...results.map((r) => r.end));
  const addrs = results.flatMap((r) => r.addrs as string[]);
  const lat = results.flatMap((r) => r.lat as number[]);
  if (addrs.length !== n * results.length) throw new Error(`expected ${n * results.length} addresses, got ${addrs.length}`);
  const distinct = new Set(addrs).size;
  if (distinct !== addrs.length) throw new Error(`IPAM handed out ${addrs.length - distinct} addresses twice`);
  const rate = addrs.length / ((end - start) / 1000);
  const resets = results.reduce((k, r) => k + r.resets, 0);
  const per = results.length > 1 ? `; per router ${results.map((r) => Math.round(n / ((r.end - r.start) / 1000))).join('/')}/s` : '';
  const text = `${Math.round(rate)}/s (${addrs.length} allocs in ${((end - start) / 1000).toFixed(2)} s, latency p50 ${quantile(lat, 0.5).toFixed(1)} ms p99 ${quantile(lat, 0.99).toFixed(1)} ms${per}${resets ? `; ${resets} resets retried` : ''})`;
  return { text, rate };
}

export async function realIpamBench(o: RealIpamOptions): Promise<RealIpamFigures> {
  const load: string[] = [uptime('before the real runs')];
  const conc = String(o.concurrency);
  const allocTimeout = Math.max(60_000, o.allocs * 200);

  o.log(`real: 1 router, ${o.allocs} allocations, concurrency ${o.concurrency}`);
  const one = await withLab(async (lab) => {
    const [h] = await hostsIn(lab, 1);
    await launch(h, []);
    await h.weave(['prime'], { env: PASSWORD });
    const res = await runClients([h], () => ['alloc', String(o.allocs), conc, 'bench-'], allocTimeout);
    load.push(uptime('after 1-router allocations'));
    const s = allocSummary(res, o.allocs);
    const st = JSON.parse(await h.httpGet('/ipam'));
    if (st.status.allocated !== o.allocs) throw new Error(`router records ${st.status.allocated} allocations, expected ${o.allocs}`);
    return s.text;
  });

  o.log(`real: 3 routers, ${o.allocs} allocations each at once`);
  const three = await withLab(async (lab) => {
    const hs = await hostsIn(lab, 3);
    await Promise.all(hs.map((h) => launch(h, hs.filter((x) => x !== h).map((x) => x.ip))));
    await waitMesh(hs);
    await Promise.all(hs.map((h) => h.weave(['prime'], { env: PASSWORD })));
    const res = await runClients(hs, (h) => ['alloc', String(o.allocs), conc, `${h.name}-`], allocTimeout);
    load.push(uptime('after 3-router allocations'));
    return allocSummary(res, o.allocs).text;
  });

  const consensus = new Map<number, string>();
  for (const n of o.consensusSizes) {
    o.log(`real: time to consensus, ${n} routers (launching)`);
    consensus.set(n, await withLab(async (lab) => {
      const hs = await hostsIn(lab, n);
      // Routers form a binary tree (router i connects to router (i-1)/2, no discovery): consensus
      // needs every participant to hear the others through gossip, not a full mesh, and 50 routers
      // could not even set up the 1225 connections of a full mesh within 120 s on 2 cores. The
      // tree keeps every router at <= 3 connections and the diameter at 2*log2(n).
      // Launches go in batches: dozens of Node start-ups at once on 2 cores overrun any deadline,
      // and launch time is not what this measures.
      for (let b = 0; b < hs.length; b += LAUNCH_BATCH) {
        await Promise.all(hs.slice(b, b + LAUNCH_BATCH).map((h, k) => {
          const i = b + k;
          return launch(h, ['--no-discovery', '--ipalloc-init', `consensus=${n}`, ...(i === 0 ? [] : [hs[Math.floor((i - 1) / 2)].ip])]);
        }));
      }
      await waitTopology(hs);
      for (const h of hs) {
        const st = JSON.parse(await h.httpGet('/ipam'));
        if (st.status?.ring.seeded) throw new Error(`${h.name} has a ring before any prime: the measurement would be void`);
      }
      o.log(`real: ${n} routers connected; priming all at once`);
      load.push(uptime(`before consensus of ${n}`));
      // POST /prime returns when the ring exists, so polling GET /ipam is only a fallback; at 20 ms
      // from 50 clients it would be load of its own on 2 cores
      const res = await runClients(hs, () => ['consensus', String(Math.max(20, n * 4))], 180_000);
      load.push(uptime(`after consensus of ${n}`));
      const first = Math.min(...res.map((r) => r.primeSent));
      const spread = Math.max(...res.map((r) => r.primeSent)) - first;
      const readies = res.map((r) => r.ready - first).sort((a, b) => a - b);
      // every router must hold the same ring covering the whole range
      const owners = await Promise.all(hs.map(async (h) => JSON.stringify(JSON.parse(await h.httpGet('/ipam')).status.owners.map((x: any) => [x.peer, x.addresses]))));
      if (new Set(owners).size !== 1) throw new Error(`routers disagree on the ring after consensus: ${owners.join(' | ')}`);
      const total = (JSON.parse(owners[0]) as [string, number][]).reduce((k, [, a]) => k + a, 0);
      if (total !== 2 ** 20) throw new Error(`the ring covers ${total} addresses, not 2^20`);
      return `${Math.round(readies[readies.length - 1])} ms (tree of connections; first router ready ${Math.round(readies[0])} ms, median ${Math.round(readies[Math.floor(readies.length / 2)])} ms; primes sent within ${spread.toFixed(1)} ms; ${owners[0] === '[]' ? 0 : JSON.parse(owners[0]).length} owners)`;
    }));
  }
  load.push(uptime('after the real runs'));
  return { one, three, consensus, load };
}
