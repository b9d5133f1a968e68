// bench/sleeve: throughput and latency between two lab hosts (network namespaces on one underlay
// bridge, test/lab/lab.ts), in one run, through
//   (a) the bare underlay (veth + bridge), (b) kernel VXLAN between the same hosts,
//   (c) the weave.ts sleeve unencrypted, (d) encrypted, (e) encrypted on the koffi fallback I/O
//   (router/fallback-io.ts, as when the native addon cannot load), (o) encrypted with the TUN
//   offloads and UDP GSO off (WEAVE_SLEEVE_OFFLOAD=0: the packet-at-a-time path, a same-run baseline),
//   (n) encrypted with WEAVE_SLEEVE_CRYPTO=engine (sodium-native per packet instead of the addon's
//   batches: the same-run baseline of native/secretbox.c).
// (c)-(e) are real routers: `weave launch --no-fastdp` in each host, containers attached with
// `weave attach`, traffic between the containers. iperf3 TCP with 1 and 4 streams and a ping RTT for
// each; for (c)-(e) the CPU seconds the router processes used during the measurement (utime+stime
// from /proc/<pid>/stat of every process in the two host namespaces); ratios c/b, d/b, e/b.
// Prints a table, then a JSON summary last.
// Latency: ping RTT, and `sockperf ping-pong` (UDP request/response, one message in flight) p50/p99
// round trip, for every path; the ratios to (b) say how far the sleeve is from the kernel (goal for
// (d): ≤ 2). Memory: each run's router RSS idle and the most seen during the 4-stream transfer, and
// (m) every router's RSS idle in a 3-host encrypted mesh (goal ≤ 80 MB).
// Usage: node dist/bench/sleeve.js [--seconds 5] [--only a,b,c,d,n,e,o,m]
import { spawn } from 'child_process';
import * as fs from 'fs';
import { Container, Host, Lab, WEAVE_JS } from '../test/lab/lab';
import { RunResult, waitFor } from '../test/lab/exec';
import { waitFullMesh } from './lib/mesh-formed';

export function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
}

export interface Out { code: number; out: string }

export function run(argv: string[], allowFail = false): Promise<Out> {
  return new Promise((resolve, reject) => {
    const c = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    c.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
    c.stderr.setEncoding('utf8').on('data', (d: string) => { out += d; });
    c.on('error', reject);
    c.on('close', (code) => {
      if (code !== 0 && !allowFail) reject(new Error(`${argv.join(' ')} failed (${code}): ${out.trim().slice(0, 500)}`));
      else resolve({ code: code ?? -1, out });
    });
  });
}

export const nsx = (ns: string, argv: string[]): string[] => ['ip', 'netns', 'exec', ns, ...argv];

// ---------------------------------------------------------------- the bench (parent)

export interface Result {
  streams1: number; streams4: number; rttMs: number;
  /** sockperf ping-pong (UDP request/response, one message in flight) round trip, ms */
  rrP50Ms?: number; rrP99Ms?: number;
  cpuSeconds?: number; io?: string; mode?: string; crypto?: string;
  /** the routers' RSS (MB, the larger of the two): idle once established, and the most seen under load */
  rssIdleMb?: number; rssLoadedMb?: number;
}

export async function iperf(serverNs: string, clientNs: string, addr: string, seconds: number, streams: number): Promise<number> {
  const srv = spawn('ip', nsx(serverNs, ['iperf3', '-s', '-1', '-B', addr]).slice(1), { stdio: 'ignore' });
  try {
    await waitFor('iperf3 server', async () => (await run(nsx(serverNs, ['ss', '-Hltn', 'sport = :5201']), true)).out.trim() !== '', { timeoutMs: 5000, intervalMs: 20 });
    const r = await run(nsx(clientNs, ['iperf3', '-c', addr, '-t', String(seconds), '-P', String(streams), '-J']));
    return JSON.parse(r.out).end.sum_received.bits_per_second / 1e9;
  } finally {
    srv.kill();
  }
}

export async function ping(ns: string, addr: string): Promise<number> {
  const r = await run(nsx(ns, ['ping', '-c', '10', '-i', '0.05', '-q', addr]));
  const m = /= [\d.]+\/([\d.]+)\//.exec(r.out);
  return m ? Number(m[1]) : NaN;
}

/**
 * Request/response latency: `sockperf ping-pong` over UDP (one message in flight: each request waits
 * for the previous reply, as an RPC does), p50 and p99 of the full round trip in ms.
 */
export async function sockperf(serverNs: string, clientNs: string, addr: string, seconds = 3): Promise<{ p50: number; p99: number }> {
  const srv = spawn('ip', nsx(serverNs, ['sockperf', 'server', '-i', addr, '-p', '11111']).slice(1), { stdio: 'ignore' });
  try {
    await waitFor('sockperf server', async () => (await run(nsx(serverNs, ['ss', '-Hlun', 'sport = :11111']), true)).out.trim() !== '', { timeoutMs: 5000, intervalMs: 20 });
    const r = await run(nsx(clientNs, ['sockperf', 'ping-pong', '-i', addr, '-p', '11111', '-t', String(seconds), '--full-rtt']));
    const pct = (p: string): number => {
      const m = new RegExp(`percentile ${p} =\\s*([\\d.]+)`).exec(r.out);
      if (!m) throw new Error(`sockperf printed no percentile ${p}: ${r.out.slice(-400)}`);
      return Number(m[1]) / 1000;
    };
    return { p50: pct('50.000'), p99: pct('99.000') };
  } finally {
    srv.kill();
  }
}

/** samples fn every intervalMs while body runs; returns body's result and the largest sample */
export async function sampleMax<T>(fn: () => Promise<number>, body: () => Promise<T>, intervalMs = 500): Promise<{ value: T; max: number }> {
  let max = 0;
  let on = true;
  const loop = (async () => {
    while (on) {
      max = Math.max(max, await fn());
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  })();
  try {
    return { value: await body(), max };
  } finally {
    on = false;
    await loop;
  }
}

/** ping, request/response, then iperf3 with 1 and 4 streams; hooks run around the transfers only */
export async function measure(nsA: string, nsB: string, addrB: string, seconds: number, hooks: { rss?: () => Promise<number>; around?: () => Promise<() => Promise<number>> } = {}): Promise<Result> {
  const rttMs = await ping(nsA, addrB);
  const rr = await sockperf(nsB, nsA, addrB);
  const done = hooks.around ? await hooks.around() : null;
  const streams1 = await iperf(nsB, nsA, addrB, seconds, 1);
  const s4 = await sampleMax(hooks.rss ?? (async () => 0), () => iperf(nsB, nsA, addrB, seconds, 4));
  const cpuSeconds = done ? await done() : undefined;
  return { streams1, streams4: s4.value, rttMs, rrP50Ms: rr.p50, rrP99Ms: rr.p99, ...(hooks.rss ? { rssLoadedMb: s4.max } : {}), ...(cpuSeconds !== undefined ? { cpuSeconds } : {}) };
}

/** VmRSS in MB of one process (0 once it is gone) */
export function rssMb(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0; // exited
  }
}

/** the largest summed RSS of the processes in one of the hosts' namespaces (a router per host) */
export async function hostsRssMb(lab: Lab, hosts: Host[]): Promise<number> {
  let max = 0;
  for (const h of hosts) {
    let sum = 0;
    for (const pid of await lab.pidsIn(h.ns)) sum += rssMb(pid);
    max = Math.max(max, sum);
  }
  return max;
}

/** utime + stime (clock ticks) of these processes and their reaped children; one that exited had no part in the measurement. */
export function procTicks(pids: readonly number[]): number {
  let t = 0;
  for (const pid of pids) {
    try {
      // the comm field may hold spaces: fields are counted after its closing parenthesis
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // utime, stime, and the reaped children's (the `ip`/`nft` processes a router runs are its cost too)
      t += Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
    } catch {
      // the process exited between listing and reading
    }
  }
  return t;
}

/** utime + stime (clock ticks) of every process in the hosts' namespaces: the routers there. */
export async function cpuTicks(lab: Lab, hosts: Host[]): Promise<number> {
  let t = 0;
  for (const h of hosts) t += procTicks(await lab.pidsIn(h.ns));
  return t;
}
export const CLK_TCK = 100;

/**
 * `weave launch ARGS` in h as users run it: without the lab's --enable-source-maps (which parses every
 * module's source map into the router's heap and the workers', and would skew the RSS measured here).
 */
export async function launch(h: Host, args: string[], env: Record<string, string>, opts: { timeoutMs?: number; allowFail?: boolean; nodeFlags?: string[] } = {}): Promise<RunResult> {
  return h.exec([process.execPath, ...(opts.nodeFlags ?? []), WEAVE_JS, 'launch', ...args], { env: h.env(env), timeoutMs: opts.timeoutMs ?? 60_000, allowFail: opts.allowFail });
}

/**
 * Three routers (h1, then h2 and h3 each given the earlier ones), sleeve only, a container on each
 * (m0..m2 at 10.32.5.1, .6.1, .7.1); resolves once every connection is established on the sleeve.
 */
export async function threeHostMesh(lab: Lab, hosts: Host[], env: Record<string, string>, nodeFlags?: string[]): Promise<Container[]> {
  return hostMesh(lab, hosts, env, nodeFlags);
}

/**
 * threeHostMesh for any number of hosts (bench/router-memory --hosts N): host i is given at most the
 * three hosts before it (the mesh finds the rest); container i at 10.32.(i+5).1.
 */
export async function hostMesh(lab: Lab, hosts: Host[], env: Record<string, string>, nodeFlags?: string[]): Promise<Container[]> {
  for (const [i, h] of hosts.entries()) await launch(h, ['--nickname', h.name, '--no-fastdp', ...hosts.slice(Math.max(0, i - 3), i).map((x) => x.ip)], env, { nodeFlags });
  // attach only once the mesh has formed: an attach with an address waits for IPAM consensus on the ring
  await waitFullMesh(hosts, { timeoutMs: 45_000 + hosts.length * 5000 });
  const cs: Container[] = [];
  for (const [i, h] of hosts.entries()) {
    const c = await lab.addContainer(`m${i}`);
    await h.weave(['attach', `10.32.${i + 5}.1/12`, c.ns]);
    cs.push(c);
  }
  await waitFor(`${hosts.length}-host mesh established`, async () => {
    for (const h of hosts) {
      const rep = await h.report();
      if (rep.router.connections.filter((c: any) => c.state === 'established' && c.overlay === 'sleeve').length < hosts.length - 1) return false;
    }
    return true;
  }, { timeoutMs: 45_000 + hosts.length * 5000, intervalMs: 500 });
  return cs;
}

let caseNo = 0;

/** Real routers in h1 and h2, one fresh container on each, measured container to container. */
async function sleeveRun(lab: Lab, h1: Host, h2: Host, env: Record<string, string>, seconds: number): Promise<Result> {
  const n = ++caseNo;
  const c1: Container = await lab.addContainer(`c${n}a`);
  const c2: Container = await lab.addContainer(`c${n}b`);
  const a1 = `10.32.1.${n}`;
  const a2 = `10.32.2.${n}`;
  try {
    await launch(h1, ['--nickname', 'h1', '--no-fastdp'], env);
    await launch(h2, ['--nickname', 'h2', '--no-fastdp', h1.ip], env);
    await h1.weave(['attach', `${a1}/12`, c1.ns]);
    await h2.weave(['attach', `${a2}/12`, c2.ns]);
    await waitFor('sleeve established', async () => {
      const rep = await h1.report();
      return rep.router.connections.some((c: any) => c.state === 'established' && c.overlay === 'sleeve');
    }, { timeoutMs: 30_000, intervalMs: 300 });
    await waitFor(`${a2} reachable`, async () => (await run(nsx(c1.ns, ['ping', '-c', '1', '-W', '1', a2]), true)).code === 0, { timeoutMs: 20_000, intervalMs: 200 });
    const rep = await h1.report();
    const rssIdleMb = await hostsRssMb(lab, [h1, h2]);
    const r = await measure(c1.ns, c2.ns, a2, seconds, {
      rss: () => hostsRssMb(lab, [h1, h2]),
      around: async () => {
        const before = await cpuTicks(lab, [h1, h2]);
        return async () => ((await cpuTicks(lab, [h1, h2])) - before) / CLK_TCK;
      },
    });
    return { ...r, rssIdleMb, io: rep.sleeve?.io, mode: rep.sleeve?.mode, crypto: rep.sleeve?.crypto };
  } finally {
    // forget everything so the next case starts from a fresh router (and a fresh session key)
    for (const h of [h1, h2]) await h.weave(['reset'], { allowFail: true });
  }
}

/**
 * Router RSS in a 3-host encrypted mesh at rest: three routers, one container each, every connection
 * established over the sleeve, then 10 s idle; each router's RSS (MB).
 */
async function meshRss(lab: Lab, h1: Host, h2: Host, env: Record<string, string>): Promise<number[]> {
  const h3 = lab.hosts[2] ?? await lab.addHost('h3');
  const hosts = [h1, h2, h3];
  try {
    await threeHostMesh(lab, hosts, env);
    await new Promise((r) => setTimeout(r, 10_000));
    const out: number[] = [];
    for (const h of hosts) {
      let sum = 0;
      for (const pid of await lab.pidsIn(h.ns)) sum += rssMb(pid);
      out.push(sum);
    }
    return out;
  } finally {
    for (const h of hosts) await h.weave(['reset'], { allowFail: true });
  }
}

async function bench(): Promise<void> {
  const seconds = Number(arg('seconds', '5'));
  const only = new Set(arg('only', 'a,b,c,d,n,e,m').split(','));
  const results: Record<string, Result> = {};
  let mesh: number[] | undefined;
  const load = fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  const lab = await Lab.create();
  try {
    const h1 = await lab.addHost('h1');
    const h2 = await lab.addHost('h2');
    if (only.has('a')) results.a = await measure(h1.ns, h2.ns, h2.ip, seconds);
    if (only.has('b')) {
      for (const [h, remote, addr] of [[h1, h2.ip, '10.40.0.1/24'], [h2, h1.ip, '10.40.0.2/24']] as const) {
        await run(['ip', '-n', h.ns, 'link', 'add', 'wbvx', 'type', 'vxlan', 'id', '42', 'dstport', '4789', 'local', h.ip, 'remote', remote, 'dev', 'eth0']);
        await run(['ip', '-n', h.ns, 'addr', 'add', addr, 'dev', 'wbvx']);
        await run(['ip', '-n', h.ns, 'link', 'set', 'wbvx', 'up']);
      }
      results.b = await measure(h1.ns, h2.ns, '10.40.0.2', seconds);
      // out of the way of the routers' view of the host (underlay MTU detection, routes)
      for (const h of [h1, h2]) await run(['ip', '-n', h.ns, 'link', 'del', 'wbvx']);
    }
    const pw = { WEAVE_PASSWORD: 'bench sleeve password' };
    if (only.has('c')) results.c = await sleeveRun(lab, h1, h2, {}, seconds);
    if (only.has('d')) results.d = await sleeveRun(lab, h1, h2, pw, seconds);
    if (only.has('n')) results.n = await sleeveRun(lab, h1, h2, { ...pw, WEAVE_SLEEVE_CRYPTO: 'engine' }, seconds);
    if (only.has('o')) results.o = await sleeveRun(lab, h1, h2, { ...pw, WEAVE_SLEEVE_OFFLOAD: '0' }, seconds);
    if (only.has('e')) results.e = await sleeveRun(lab, h1, h2, { ...pw, WEAVE_SLEEVE_IO: 'fallback' }, seconds);
    if (only.has('m')) mesh = await meshRss(lab, h1, h2, pw);
  } finally {
    await lab.cleanup();
  }
  const label: Record<string, string> = { a: 'bare underlay', b: 'kernel VXLAN', c: 'sleeve, unencrypted', d: 'sleeve, encrypted', e: 'sleeve, enc, koffi', o: 'sleeve, enc, no offl.', n: 'sleeve, enc, sodium' };
  const f = (v: number | undefined, w: number, d = 3): string => (v === undefined ? '-' : v.toFixed(d)).padStart(w);
  console.log(`load average before the run: ${load}`);
  console.log('path                     1 stream  4 streams   ping  rr p50  rr p99  router  RSS MB     io/mode/crypto');
  console.log('                           Gbit/s     Gbit/s     ms      ms      ms   CPU s  idle/load');
  for (const k of Object.keys(results)) {
    const r = results[k];
    const rss = r.rssIdleMb === undefined ? '        -' : `${r.rssIdleMb.toFixed(0)}/${(r.rssLoadedMb ?? 0).toFixed(0)}`.padStart(9);
    console.log(`(${k}) ${label[k].padEnd(20)} ${f(r.streams1, 8)} ${f(r.streams4, 10)} ${f(r.rttMs, 6)} ${f(r.rrP50Ms, 7)} ${f(r.rrP99Ms, 7)} ${f(r.cpuSeconds, 7, 1)} ${rss}  ${r.io ? `${r.io}/${r.mode}/${r.crypto}` : '-'}`);
  }
  const ratios: Record<string, number> = {};
  if (results.b) {
    for (const k of ['c', 'd', 'n', 'e', 'o']) {
      const r = results[k];
      if (!r) continue;
      ratios[`${k}/b 1 stream`] = r.streams1 / results.b.streams1;
      ratios[`${k}/b 4 streams`] = r.streams4 / results.b.streams4;
      // latency: how many times the kernel's (goal for d: ≤ 2)
      ratios[`${k}/b ping`] = r.rttMs / results.b.rttMs;
      if (r.rrP50Ms !== undefined && results.b.rrP50Ms !== undefined) ratios[`${k}/b rr p50`] = r.rrP50Ms / results.b.rrP50Ms;
      if (r.rrP99Ms !== undefined && results.b.rrP99Ms !== undefined) ratios[`${k}/b rr p99`] = r.rrP99Ms / results.b.rrP99Ms;
    }
  }
  for (const [k, v] of Object.entries(ratios)) console.log(`${k}: ${v.toFixed(3)}`);
  if (mesh) console.log(`router RSS idle in a 3-host encrypted mesh (MB, per router): ${mesh.map((v) => v.toFixed(1)).join(' ')} (goal ≤ 80)`);
  console.log(JSON.stringify({ bench: 'sleeve', seconds, load, results, ratios, meshRssIdleMb: mesh }));
}

// bench/fastdp imports the helpers above: run the bench only when started as the program
if (require.main === module) {
  bench().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
