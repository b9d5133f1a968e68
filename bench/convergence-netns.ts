// Real routers: N lab hosts per size (default 25,50,100), each `weave launch`ed encrypted with DNS off
// and one earlier peer as its seed (a chain, so discovery must do the work), in batches of 10 (each
// batch's launches run in parallel; the next batch starts when they returned). Prints one row per size:
//   launch      first launch to the last `weave launch` returning
//   full mesh   after the last launch, until every router has N-1 established connections, knows N peers
//   idle bytes  on each host's underlay interface (in+out, from its kernel counters) over a quiet window
//   TCP 6783    of those, the mesh's TCP bytes (nftables counters on the host: headers and ACKs included)
//   CPU         utime+stime of every process in the hosts' namespaces over the window, % of one core
//   RSS         VmRSS of each router process (the median)
// 100 hosts on one bridge overflow the kernel's default neighbour table (gc_thresh1/2/3 128/512/1024
// entries across namespaces): the bench raises net.ipv4.neigh.default.gc_thresh* and restores them.
// Run: node dist/bench/convergence-netns.js [--hosts 25,50,100] [--window 30] [--fastdp]
import * as fs from 'fs';
import { Lab, Host } from '../test/lab/lab';
import { run, waitFor } from '../test/lab/exec';

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

async function curlJson(h: Host, p: string): Promise<any> {
  const r = await run(['ip', 'netns', 'exec', h.ns, 'curl', '-s', '-m', '10', `http://127.0.0.1:6784${p}`], { allowFail: true, timeoutMs: 15_000 });
  if (r.code !== 0) return null;
  try {
    return JSON.parse(r.stdout);
  } catch {
    return null;
  }
}

const NFT = `table inet weavebench {
  chain i { type filter hook input priority -300; tcp sport 6783 counter; tcp dport 6783 counter; }
  chain o { type filter hook output priority -300; tcp sport 6783 counter; tcp dport 6783 counter; }
}
`;

async function tcpBytes(h: Host): Promise<number> {
  const r = await run(['ip', 'netns', 'exec', h.ns, 'nft', '-j', 'list', 'table', 'inet', 'weavebench']);
  let total = 0;
  for (const item of JSON.parse(r.stdout).nftables) {
    const expr = item.rule?.expr as any[] | undefined;
    for (const e of expr ?? []) if (e.counter) total += e.counter.bytes;
  }
  return total;
}

async function ifaceBytes(h: Host): Promise<number> {
  const r = await run(['ip', 'netns', 'exec', h.ns, 'cat', '/sys/class/net/eth0/statistics/rx_bytes', '/sys/class/net/eth0/statistics/tx_bytes']);
  return r.stdout.split(/\s+/).filter(Boolean).map(Number).reduce((a, b) => a + b, 0);
}

function cpuTicks(pid: number): number {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]); // utime, stime (fields 14, 15)
  } catch {
    return 0;
  }
}

function rssKb(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
};

interface Row { n: number; launchS: number; meshS: number | null; idleBps: number; tcpBps: number; cpuPct: number; rssMb: number; note: string }

async function one(n: number, windowS: number, fastdp: boolean): Promise<Row> {
  const lab = await Lab.create();
  try {
    const hosts: Host[] = [];
    for (let i = 0; i < n; i++) hosts.push(await lab.addHost(`h${i + 1}`));
    const t0 = Date.now();
    const failures: string[] = [];
    for (let b = 0; b < n; b += 10) {
      await Promise.all(hosts.slice(b, b + 10).map(async (h) => {
        const i = hosts.indexOf(h);
        const r = await h.weave(['launch', ...(fastdp ? [] : ['--no-fastdp']), '--no-dns', '--nickname', h.name, ...(i ? [hosts[i - 1].ip] : [])], { env: { WEAVE_PASSWORD: 'bench' }, timeoutMs: 600_000, allowFail: true });
        if (r.code !== 0) failures.push(`${h.name}: ${(r.stderr || r.stdout).trim().split('\n').pop()}`);
      }));
      process.stderr.write(`# ${Math.min(b + 10, n)} launched at ${((Date.now() - t0) / 1000).toFixed(1)} s${failures.length ? ` (${failures.length} failed)` : ''}\n`);
    }
    const launched = Date.now();
    let meshS: number | null = null;
    const done = new Set<Host>();
    try {
      await waitFor('full mesh', async () => {
        for (const h of hosts) {
          if (done.has(h)) continue;
          const r = await curlJson(h, '/report');
          if (!r || r.router.peers.length !== n || r.router.connections.filter((c: any) => c.state === 'established').length !== n - 1) return false;
          done.add(h);
        }
        // every router once: check all again (a connection may have dropped meanwhile)
        for (const h of hosts) {
          const r = await curlJson(h, '/report');
          if (!r || r.router.peers.length !== n || r.router.connections.filter((c: any) => c.state === 'established').length !== n - 1) {
            done.delete(h);
            return false;
          }
        }
        return true;
      }, { timeoutMs: 300_000, intervalMs: 500 });
      meshS = (Date.now() - launched) / 1000;
    } catch (e) {
      process.stderr.write(`# ${(e as Error).message}: ${done.size}/${n} routers fully meshed\n`);
    }
    // idle: let the start-up settle, then count over the window
    await new Promise((r) => setTimeout(r, 10_000));
    await Promise.all(hosts.map((h) => run(['ip', 'netns', 'exec', h.ns, 'nft', '-f', '-'], { input: NFT })));
    const pids = (await Promise.all(hosts.map((h) => lab.pidsIn(h.ns)))).flat();
    const ifa0 = await Promise.all(hosts.map(ifaceBytes));
    const tcp0 = await Promise.all(hosts.map(tcpBytes));
    const cpu0 = pids.map(cpuTicks);
    const w0 = Date.now();
    await new Promise((r) => setTimeout(r, windowS * 1000));
    const cpu1 = pids.map(cpuTicks);
    const w = (Date.now() - w0) / 1000;
    const ifa1 = await Promise.all(hosts.map(ifaceBytes));
    const tcp1 = await Promise.all(hosts.map(tcpBytes));
    const hz = 100; // USER_HZ
    const cpuPct = (cpu1.reduce((a, b) => a + b, 0) - cpu0.reduce((a, b) => a + b, 0)) / hz / w * 100;
    const idle = ifa1.map((v, i) => (v - ifa0[i]) / w);
    const tcp = tcp1.map((v, i) => (v - tcp0[i]) / w);
    const rss = pids.map(rssKb).filter((k) => k > 20_000); // the routers (not a stray short-lived child)
    return {
      n, launchS: (launched - t0) / 1000, meshS, idleBps: idle.reduce((a, b) => a + b, 0) / n, tcpBps: tcp.reduce((a, b) => a + b, 0) / n,
      cpuPct, rssMb: median(rss) / 1024, note: failures.length ? `${failures.length} launches failed, first: ${failures[0]}` : '',
    };
  } finally {
    await lab.cleanup();
  }
}

async function main(): Promise<void> {
  const sizes = arg('hosts', '25,50,100').split(',').map(Number);
  if (sizes.some((s) => !(s >= 2 && s <= 200))) throw new Error('--hosts takes sizes 2..200, comma-separated');
  const windowS = Number(arg('window', '30'));
  const fastdp = process.argv.includes('--fastdp');
  const restore = raiseNeighbourTable();
  const rows: Row[] = [];
  try {
    for (const n of sizes) {
      rows.push(await one(n, windowS, fastdp));
      const r = rows[rows.length - 1];
      process.stderr.write(`# ${JSON.stringify(r)}\n`);
    }
  } finally {
    restore();
  }
  console.log(`encrypted, DNS off, ${fastdp ? 'fastdp on' : 'sleeve only (--no-fastdp)'}, idle window ${windowS} s`);
  console.log('| routers | launch (batches of 10) | full mesh after last launch | idle bytes on the wire per router (in+out) | of which TCP 6783 | CPU of all routers idle | RSS per router (median) |');
  console.log('|---|---|---|---|---|---|---|');
  for (const r of rows) {
    console.log(`| ${r.n} | ${r.launchS.toFixed(0)} s | ${r.meshS === null ? 'not within 300 s' : `${r.meshS.toFixed(1)} s`} | ${(r.idleBps / 1000).toFixed(2)} KB/s | ${(r.tcpBps / 1000).toFixed(2)} KB/s | ${r.cpuPct.toFixed(0)} % of one core | ${r.rssMb.toFixed(0)} MB |${r.note ? ` ${r.note}` : ''}`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
