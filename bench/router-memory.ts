// bench/router-memory: where an idle router's RSS goes. A 3-host encrypted mesh as bench/sleeve's (m)
// builds it (routers started by `weave launch` as users run it; once the mesh has formed, one
// container each: bench/lib/mesh-formed.ts; every connection on the sleeve, then 10 s idle); for
// each router /proc/PID/smaps is summed by kind of mapping:
//   node text      /usr/bin/node's pages (file-backed: shared with every node process on the host)
//   libs           other files mapped (libc, libstdc++, the addon, lmdb, ...)
//   malloc main    [heap]: glibc's main arena
//   malloc arenas  the 64 MB-aligned heaps glibc makes for other threads (one per thread up to
//                  8 x cores, unless MALLOC_ARENA_MAX says otherwise)
//   stacks         thread stacks (read-write mappings right above their guard page)
//   other anon     V8's heaps and code space of the main thread and the workers, large mallocs
// and with --report the V8 heap of each isolate from node's diagnostic report (SIGUSR2 with
// --report-on-signal in NODE_OPTIONS: the router is started with it, nothing else changes).
// With --load S, the RSS of h1's and h2's routers every 5 s through an S-second 4-stream iperf3.
// With --hosts N, an N-host mesh instead (what grows per peer): every router's VmRSS, then per kind
// the median, min and max over the routers (--all: each router's line; --report: h1's and the last
// router's heaps).
// Usage: node dist/bench/router-memory.js [--report] [--maps] [--idle 10] [--env K=V,K=V]
//        [--node-flags '--a --b'] [--load SECONDS] [--hosts 3] [--all]
import * as fs from 'fs';
import * as path from 'path';
import { Container, Host, Lab } from '../test/lab/lab';
import { waitFor } from '../test/lab/exec';
import { arg, hostMesh, iperf, rssMb } from './sleeve';

interface Mapping { start: number; end: number; perms: string; file: string; rss: number; pss: number; anon: number }

/** every mapping of a process with its Rss, Pss and Anonymous (kB) */
export function mappings(pid: number): Mapping[] {
  const out: Mapping[] = [];
  let cur: Mapping | undefined;
  for (const line of fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const h = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (h) {
      cur = { start: parseInt(h[1], 16), end: parseInt(h[2], 16), perms: h[3], file: h[4], rss: 0, pss: 0, anon: 0 };
      out.push(cur);
      continue;
    }
    const f = /^(Rss|Pss|Anonymous):\s+(\d+) kB/.exec(line);
    if (f && cur) cur[f[1] === 'Anonymous' ? 'anon' : f[1].toLowerCase() as 'rss' | 'pss'] = Number(f[2]);
  }
  return out;
}

const MB64 = 64 << 20;

/** kB of RSS per kind of mapping (see the header) */
export function attribute(maps: Mapping[]): Record<string, number> {
  const kinds: Record<string, number> = { 'node text': 0, libs: 0, 'malloc main': 0, 'malloc arenas': 0, stacks: 0, 'other anon': 0 };
  for (const [i, m] of maps.entries()) {
    let k: string;
    if (m.file === process.execPath || m.file === fs.realpathSync(process.execPath)) k = 'node text';
    else if (m.file === '[heap]') k = 'malloc main';
    else if (m.file === '[stack]') k = 'stacks';
    else if (m.file.startsWith('/')) k = 'libs';
    // a glibc arena heap starts at a 64 MB boundary, read-write, followed by its reserved rest
    else if (m.start % MB64 === 0 && m.perms.startsWith('rw') && (m.end - m.start) <= MB64 && maps[i + 1]?.perms === '---p' && maps[i + 1].end - m.start === MB64) k = 'malloc arenas';
    else if (m.start % MB64 === 0 && m.perms.startsWith('rw') && m.end - m.start === MB64) k = 'malloc arenas';
    // a thread stack: read-write right above its guard page
    else if (m.perms.startsWith('rw') && i > 0 && maps[i - 1].perms === '---p' && maps[i - 1].end === m.start && maps[i - 1].end - maps[i - 1].start <= 64 << 10) k = 'stacks';
    else k = 'other anon';
    kinds[k] += m.rss;
  }
  return kinds;
}

function parseEnv(s: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const kv of s.split(',').filter(Boolean)) {
    const i = kv.indexOf('=');
    env[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return env;
}

async function diagReport(pid: number, dir: string): Promise<any> {
  const before = new Set(fs.readdirSync(dir));
  process.kill(pid, 'SIGUSR2');
  const file = await waitFor('diagnostic report', async () => fs.readdirSync(dir).find((f) => !before.has(f) && f.includes(`.${pid}.`) && f.endsWith('.json')), { timeoutMs: 10_000, intervalMs: 200 });
  await new Promise((r) => setTimeout(r, 500));
  return JSON.parse(fs.readFileSync(path.join(dir, file as string), 'utf8'));
}

/** n routers as bench/sleeve's (m) starts three, a container on each; resolves once every connection is on the sleeve */
async function mesh(lab: Lab, env: Record<string, string>, n: number): Promise<{ hosts: Host[]; cs: Container[] }> {
  const hosts: Host[] = [];
  for (let i = 1; i <= n; i++) hosts.push(await lab.addHost(`h${i}`));
  // these node flags go to `weave launch`; the launched router inherits them
  const cs = await hostMesh(lab, hosts, env, arg('node-flags', '').split(' ').filter(Boolean));
  return { hosts, cs };
}

/** the --hosts summary: every router's VmRSS, and per kind of mapping the median, min and max (MB) */
function printSummary(pids: number[]): void {
  const rows = pids.map((pid) => ({ rss: rssMb(pid), kinds: attribute(mappings(pid)) }));
  const stat = (xs: number[]): string => {
    const s = [...xs].sort((a, b) => a - b);
    return `${s[s.length >> 1].toFixed(1)} (${s[0].toFixed(1)}-${s[s.length - 1].toFixed(1)})`;
  };
  console.log(`${pids.length} routers, VmRSS MB: ${rows.map((r) => r.rss.toFixed(1)).join(' ')}`);
  console.log(`  median (min-max) MB: VmRSS ${stat(rows.map((r) => r.rss))}`);
  for (const k of Object.keys(rows[0].kinds)) console.log(`  ${k.padEnd(14)} ${stat(rows.map((r) => r.kinds[k] / 1024))}`);
}

/** one line per router: VmRSS, Pss, anonymous, threads and the attribution; with --maps every mapping over 256 kB */
function printRouter(name: string, pid: number): void {
  const maps = mappings(pid);
  const sum = (k: 'rss' | 'pss' | 'anon'): number => maps.reduce((a, m) => a + m[k], 0) / 1024;
  const threads = fs.readdirSync(`/proc/${pid}/task`).length;
  const kinds = Object.entries(attribute(maps)).map(([k, v]) => `${k} ${(v / 1024).toFixed(1)}`).join(', ');
  console.log(`${name} pid ${pid}: VmRSS ${rssMb(pid).toFixed(1)} MB (Pss ${sum('pss').toFixed(1)}, anon ${sum('anon').toFixed(1)}), ${threads} threads; ${kinds}`);
  if (!process.argv.includes('--maps')) return;
  for (const m of maps) if (m.rss >= 256) console.log(`  ${m.perms} ${((m.end - m.start) / 1048576).toFixed(1).padStart(7)} MB rss ${(m.rss / 1024).toFixed(1).padStart(6)} anon ${(m.anon / 1024).toFixed(1).padStart(6)} ${m.file}`);
}

/** the V8 heap of each isolate (main, sleeve workers) from node's diagnostic report */
async function printHeaps(pid: number, dir: string): Promise<void> {
  const r = await diagReport(pid, dir);
  const heap = (j: any): string => `heap committed ${(j.totalCommittedMemory / 1048576).toFixed(1)} used ${(j.usedMemory / 1048576).toFixed(1)}`;
  console.log(`  main: ${heap(r.javascriptHeap)}; ${(r.workers ?? []).map((w: any, i: number) => `worker ${i}: ${heap(w.javascriptHeap)}`).join('; ')}`);
  console.log(`  spaces: ${Object.entries(r.javascriptHeap.heapSpaces).map(([k, v]: [string, any]) => `${k} ${(v.committedMemory / 1048576).toFixed(1)}`).join(', ')}`);
}

/** RSS of these routers every 5 s through a long 4-stream transfer from a to b: bounded or growing? */
async function underLoad(pids: number[], a: Container, b: Container, bAddr: string, seconds: number): Promise<void> {
  const rss = (): string => pids.map((p) => rssMb(p).toFixed(1)).join(' ');
  let done = false;
  const t0 = Date.now();
  const run = iperf(b.ns, a.ns, bAddr, seconds, 4).finally(() => { done = true; });
  while (!done) {
    console.log(`load t=${((Date.now() - t0) / 1000).toFixed(0)}s RSS MB ${rss()}`);
    await Promise.race([run, new Promise((r) => setTimeout(r, 5000))]);
  }
  console.log(`load: ${(await run).toFixed(2)} Gbit/s; after: RSS MB ${rss()}`);
  await new Promise((r) => setTimeout(r, 10_000));
  console.log(`10 s after the load: RSS MB ${rss()}`);
}

async function main(): Promise<void> {
  const report = process.argv.includes('--report');
  const env: Record<string, string> = { WEAVE_PASSWORD: 'bench sleeve password', ...parseEnv(arg('env', '')) };
  const lab = await Lab.create();
  const repDir = path.join(lab.tmp, 'reports');
  fs.mkdirSync(repDir);
  if (report) env.NODE_OPTIONS = `${env.NODE_OPTIONS ?? ''} --report-on-signal --report-directory=${repDir}`.trim();
  const n = Number(arg('hosts', '3'));
  const each = n <= 3 || process.argv.includes('--all');
  try {
    const { hosts, cs } = await mesh(lab, env, n);
    await new Promise((r) => setTimeout(r, Number(arg('idle', '10')) * 1000));
    const all: number[] = [];
    for (const [i, h] of hosts.entries()) {
      for (const pid of await lab.pidsIn(h.ns)) {
        all.push(pid);
        if (each) printRouter(h.name, pid);
        if (report && (each || i === 0 || i === n - 1)) {
          if (!each) printRouter(h.name, pid);
          await printHeaps(pid, repDir);
        }
      }
    }
    if (n > 3) printSummary(all);
    const loadS = Number(arg('load', '0'));
    if (loadS > 0) await underLoad([...await lab.pidsIn(hosts[0].ns), ...await lab.pidsIn(hosts[1].ns)], cs[0], cs[1], '10.32.6.1', loadS);
  } finally {
    for (const h of lab.hosts) await h.weave(['reset'], { allowFail: true });
    await lab.cleanup();
  }
}

if (require.main === module) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
