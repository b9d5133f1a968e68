// Real routers: N lab hosts per size (default 25,50,100), each `weave launch`ed encrypted with DNS off
// and one earlier peer as its seed (a chain, so discovery must do the work), in batches of 10 (each
// batch's launches run in parallel; the next batch starts when they returned). Prints one row per size:
//   launch      first launch to the last `weave launch` returning
//   full mesh   after the last launch, until every router has N-1 established connections, knows N peers
//   idle bytes  on each host's underlay interface (in+out, from its kernel counters) over a quiet window
//   TCP 6783    of those, the mesh's TCP bytes (nftables counters on the host: headers and ACKs included)
//   CPU         utime+stime of every process in the hosts' namespaces over the window, % of one core
//   RSS         VmRSS of the router processes (median and max)
//   sent        the busiest router's sends on the mesh's ports (nftables counters): UDP 6783/6784, TCP 6783
// Routers are launched as users launch them (no --enable-source-maps). For 100 routers or more the
// bench then prints issue 19's goals, each met or not with its figure.
// 100 hosts on one bridge overflow the kernel's default neighbour table (gc_thresh1/2/3 128/512/1024
// entries across namespaces): the bench raises net.ipv4.neigh.default.gc_thresh* and restores them.
// Run: node dist/bench/convergence-netns.js [--hosts 25,50,100] [--window 30] [--settle 45] [--fastdp]
import * as fs from 'fs';
import { Lab, Host } from '../test/lab/lab';
import { run } from '../test/lab/exec';
import { launch, procTicks, rssMb } from './sleeve';
import { waitFullMesh } from './lib/mesh-formed';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
}

const GC = ['gc_thresh1', 'gc_thresh2', 'gc_thresh3'];
const gcPath = (k: string): string => `/proc/sys/net/ipv4/neigh/default/${k}`;

function raiseNeighbourTable(): () => void {
  const old = GC.map((k) => fs.readFileSync(gcPath(k), 'utf8').trim());
  // highest first, so the three stay ordered at every step
  const want = ['4096', '16384', '32768'];
  for (let i = GC.length - 1; i >= 0; i--) fs.writeFileSync(gcPath(GC[i]), want[i]);
  return () => {
    for (let i = 0; i < GC.length; i++) fs.writeFileSync(gcPath(GC[i]), old[i]);
  };
}

// Named counters of the mesh's ports on each host's underlay: TCP 6783 both ways (the issue's table),
// and what the router sends (UDP 6783 is the sleeve, 6784 fastdp's VXLAN), for the per-router goals.
const COUNTERS = ['tcp_all', 'tcp_out', 'udp_out'] as const;
const NFT = `table inet weavebench {
  counter tcp_all {}
  counter tcp_out {}
  counter udp_out {}
  chain i { type filter hook input priority -300; tcp sport 6783 counter name tcp_all; tcp dport 6783 counter name tcp_all; }
  chain o { type filter hook output priority -300; tcp sport 6783 counter name tcp_all; tcp dport 6783 counter name tcp_all;
    tcp sport 6783 counter name tcp_out; tcp dport 6783 counter name tcp_out;
    udp sport { 6783, 6784 } counter name udp_out; udp dport { 6783, 6784 } counter name udp_out; }
}
`;

type Bytes = Record<(typeof COUNTERS)[number] | 'iface', number>;

async function hostBytes(h: Host): Promise<Bytes> {
  const r = await run(['ip', 'netns', 'exec', h.ns, 'nft', '-j', 'list', 'counters', 'table', 'inet', 'weavebench']);
  const b: Bytes = { tcp_all: 0, tcp_out: 0, udp_out: 0, iface: 0 };
  for (const item of JSON.parse(r.stdout).nftables) {
    const c = item.counter as { name: string; bytes: number } | undefined;
    if (c && (COUNTERS as readonly string[]).includes(c.name)) b[c.name as (typeof COUNTERS)[number]] = c.bytes;
  }
  const st = await run(['ip', 'netns', 'exec', h.ns, 'cat', '/sys/class/net/eth0/statistics/rx_bytes', '/sys/class/net/eth0/statistics/tx_bytes']);
  b.iface = st.stdout.split(/\s+/).filter(Boolean).map(Number).reduce((x, y) => x + y, 0);
  return b;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
};

/** the lab being measured, for an interrupted run's cleanup */
let current: Lab | null = null;

interface Row {
  n: number; launchS: number; meshS: number | null; idleBps: number; tcpBps: number;
  /** the busiest router's sends per second on the mesh's UDP and TCP ports */
  udpOutMax: number; tcpOutMax: number;
  cpuPct: number; rssMb: number; rssMaxMb: number; note: string;
}
const CLK_TCK = 100; // USER_HZ

async function one(n: number, windowS: number, settleS: number, fastdp: boolean): Promise<Row> {
  const lab = await Lab.create();
  current = lab;
  try {
    const hosts: Host[] = [];
    for (let i = 0; i < n; i++) hosts.push(await lab.addHost(`h${i + 1}`));
    const t0 = Date.now();
    const failures: string[] = [];
    for (let b = 0; b < n; b += 10) {
      await Promise.all(hosts.slice(b, b + 10).map(async (h) => {
        const i = hosts.indexOf(h);
        // as users launch (bench/sleeve's launch: no --enable-source-maps, which would inflate the RSS measured)
        const r = await launch(h, [...(fastdp ? [] : ['--no-fastdp']), '--no-dns', '--nickname', h.name, ...(i ? [hosts[i - 1].ip] : [])], { WEAVE_PASSWORD: 'bench' }, { timeoutMs: 600_000, allowFail: true });
        if (r.code !== 0) failures.push(`${h.name}: ${(r.stderr || r.stdout).trim().split('\n').pop()}`);
      }));
      process.stderr.write(`# ${Math.min(b + 10, n)} launched at ${((Date.now() - t0) / 1000).toFixed(1)} s${failures.length ? ` (${failures.length} failed)` : ''}\n`);
    }
    const launched = Date.now();
    let meshS: number | null = null;
    const done = new Set<Host>();
    try {
      await waitFullMesh(hosts, { timeoutMs: 300_000, done });
      meshS = (Date.now() - launched) / 1000;
    } catch (e) {
      process.stderr.write(`# ${(e as Error).message}: ${done.size}/${n} routers fully meshed\n`);
    }
    // idle: let the start-up settle (V8's memory reducer compacts each router's heap a few times in the
    // half minute after the start-up's allocation stops: a one-off, not what an idle mesh costs), then count
    await new Promise((r) => setTimeout(r, settleS * 1000));
    // ten at a time, with room: on a host still saturated by a mesh that never formed, 100 at once
    // outlasted the default 60 s and the bench died before printing what it had
    for (let b = 0; b < hosts.length; b += 10) {
      await Promise.all(hosts.slice(b, b + 10).map((h) => run(['ip', 'netns', 'exec', h.ns, 'nft', '-f', '-'], { input: NFT, timeoutMs: 300_000 })));
    }
    const pids = (await Promise.all(hosts.map((h) => lab.pidsIn(h.ns)))).flat();
    const b0 = await Promise.all(hosts.map(hostBytes));
    const cpu0 = procTicks(pids);
    const w0 = Date.now();
    await new Promise((r) => setTimeout(r, windowS * 1000));
    const cpu1 = procTicks(pids);
    const w = (Date.now() - w0) / 1000;
    const b1 = await Promise.all(hosts.map(hostBytes));
    const perRouter = (k: keyof Bytes): number => b1.reduce((t, x, i) => t + x[k] - b0[i][k], 0) / w / n;
    const maxPerRouter = (k: keyof Bytes): number => Math.max(...b1.map((x, i) => (x[k] - b0[i][k]) / w));
    const rss = pids.map(rssMb).filter((mb) => mb > 20); // the routers (not a stray short-lived child)
    return {
      n, launchS: (launched - t0) / 1000, meshS, idleBps: perRouter('iface'), tcpBps: perRouter('tcp_all'),
      udpOutMax: maxPerRouter('udp_out'), tcpOutMax: maxPerRouter('tcp_out'),
      cpuPct: (cpu1 - cpu0) / CLK_TCK / w * 100, rssMb: median(rss), rssMaxMb: Math.max(...rss),
      note: failures.length ? `${failures.length} launches failed, first: ${failures[0]}` : '',
    };
  } finally {
    await lab.cleanup();
  }
}

async function main(): Promise<void> {
  const sizes = arg('hosts', '25,50,100').split(',').map(Number);
  if (sizes.some((s) => !(s >= 2 && s <= 200))) throw new Error('--hosts takes sizes 2..200, comma-separated');
  const windowS = Number(arg('window', '30'));
  const settleS = Number(arg('settle', '45'));
  const fastdp = process.argv.includes('--fastdp');
  const restore = raiseNeighbourTable();
  // an interrupted run (100 routers: minutes) removes its lab and gives the neighbour table back too
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      process.stderr.write(`# ${sig}: removing the lab\n`);
      void (current?.cleanup() ?? Promise.resolve()).finally(() => { restore(); process.exit(130); });
    });
  }
  const rows: Row[] = [];
  try {
    for (const n of sizes) {
      rows.push(await one(n, windowS, settleS, fastdp));
      const r = rows[rows.length - 1];
      process.stderr.write(`# ${JSON.stringify(r)}\n`);
    }
  } finally {
    restore();
  }
  console.log(`encrypted, DNS off, ${fastdp ? 'fastdp on' : 'sleeve only (--no-fastdp)'}, idle window ${windowS} s after ${settleS} s of settling`);
  console.log('| routers | launch (batches of 10) | full mesh after last launch | idle bytes on the wire per router (in+out) | of which TCP 6783 | CPU of all routers idle | RSS per router (median / max) | sent by the busiest router: UDP / TCP |');
  console.log('|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    console.log(`| ${r.n} | ${r.launchS.toFixed(0)} s | ${r.meshS === null ? 'not within 300 s' : `${r.meshS.toFixed(1)} s`} | ${(r.idleBps / 1000).toFixed(2)} KB/s | ${(r.tcpBps / 1000).toFixed(2)} KB/s | ${r.cpuPct.toFixed(0)} % of one core | ${r.rssMb.toFixed(0)} / ${r.rssMaxMb.toFixed(0)} MB | ${(r.udpOutMax / 1000).toFixed(2)} / ${(r.tcpOutMax / 1000).toFixed(2)} KB/s |${r.note ? ` ${r.note}` : ''}`);
  }
  for (const r of rows.filter((x) => x.n >= 100)) console.log(goals(r).join('\n'));
}

/** issue 19's goals for 100 routers, each with the figure it is judged by */
function goals(r: Row): string[] {
  const g = (ok: boolean, what: string): string => `goal ${ok ? 'met' : 'NOT met'}: ${what}`;
  return [
    g(r.meshS !== null && r.meshS <= 60 && !r.note, `${r.n} routers fully meshed within 60 s of the last launch (${r.meshS === null ? 'never' : `${r.meshS.toFixed(1)} s`})`),
    g(r.cpuPct < 50, `idle, all routers together < 50 % of one core (${r.cpuPct.toFixed(0)} %)`),
    g(r.udpOutMax < 10_000, `each router sends < 10 KB/s on UDP (busiest ${(r.udpOutMax / 1000).toFixed(2)} KB/s)`),
    g(r.tcpOutMax < 2_000, `each router sends < 2 KB/s on TCP (busiest ${(r.tcpOutMax / 1000).toFixed(2)} KB/s)`),
    g(r.rssMaxMb <= 80, `RSS per router <= 80 MB (median ${r.rssMb.toFixed(0)}, max ${r.rssMaxMb.toFixed(0)} MB)`),
  ];
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
