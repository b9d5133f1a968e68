// IPAM benchmark, simulated and real.
// Simulated: allocations per second on one allocator (memory store and lmdb store, i.e. with a
// durable commit per allocation) and across 3 allocators; time to consensus for 3, 10 and 50 peers
// over the fake gossip net (20 ms max delay, 1 s gossip interval, no loss, and again with 10% loss).
// Real (--real, or by default as root): routers in netns lab hosts driven over their HTTP API by one
// long-lived client process per host (keep-alive, fixed concurrency), so Node start-up and CLI
// round trips stay out of the figures: allocations/s on one router and on 3 at once, and time from
// the first POST /prime to every router reporting the ring ready (launch and connect excluded; the
// routers form a binary tree of connections without discovery, every one reachable by gossip).
// Usage: node dist/bench/ipam.js [--allocs N] [--real | --no-real] [--real-allocs 500]
//        [--concurrency 8] [--real-consensus 3,10,50]
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { FakeClock } from '../lib/clock';
import { silentLogger } from '../lib/log';
import { Allocator } from '../ipam/allocator';
import { LmdbStore, MemoryStore, type IpamStore } from '../ipam/store';
import { FakeIpamNet, mulberry32, simName } from '../test/fakes/ipam-gossip';
import { realIpamBench, type RealIpamFigures } from './lib/ipam-real';

const argAllocs = process.argv.indexOf('--allocs');
const ALLOCS = argAllocs > 0 ? Number(process.argv[argAllocs + 1]) : 20_000;

function flush(): Promise<void> {
  return new Promise((r) => setImmediate(r));
}

async function oneAllocator(store: IpamStore, n: number): Promise<number> {
  const clock = new FakeClock();
  const a = new Allocator({ ourName: simName(0), ourNickname: 'h0', init: { mode: 'consensus', quorum: 1 }, clock, log: silentLogger(), knownPeers: () => [], store });
  await a.prime();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await a.allocate(`c${i}`);
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  a.close();
  return n / s;
}

async function threeAllocators(n: number): Promise<{ rate: number; simMs: number }> {
  const clock = new FakeClock();
  const net = new FakeIpamNet(clock, mulberry32(9), { minDelayMs: 1, maxDelayMs: 5, gossipIntervalMs: 1000 });
  const as = [0, 1, 2].map((i) => {
    const name = simName(i);
    const { channel, knownPeers } = net.add(name);
    const a = new Allocator({ ourName: name, ourNickname: `h${i}`, init: { mode: 'consensus', quorum: 2 }, clock, log: silentLogger(), channel, knownPeers, store: new MemoryStore(), random: mulberry32(i) });
    net.setGossiper(name, a);
    return a;
  });
  net.start();
  const start = clock.now();
  const t0 = process.hrtime.bigint();
  let done = 0;
  // each allocator keeps 50 requests in flight, like concurrent `weave attach`es
  const next = (a: Allocator, k: number): void => {
    if (k >= n) return;
    a.allocate(`c${k}`).then(() => { done++; next(a, k + 3 * 50); });
  };
  as.forEach((a, i) => { for (let j = 0; j < 50; j++) next(a, i * 50 + j); });
  while (done < n) {
    clock.advance(5);
    await flush();
  }
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  for (const a of as) a.close();
  return { rate: n / s, simMs: clock.now() - start };
}

async function consensusTime(n: number, loss: number): Promise<{ ms: number; messages: number }> {
  const clock = new FakeClock();
  const rng = mulberry32(n * 7 + Math.round(loss * 100));
  const net = new FakeIpamNet(clock, rng, { loss, minDelayMs: 1, maxDelayMs: 20, gossipIntervalMs: 1000, fanout: 3 });
  const as: Allocator[] = [];
  for (let i = 0; i < n; i++) {
    const name = simName(i);
    const { channel, knownPeers } = net.add(name);
    const a = new Allocator({ ourName: name, ourNickname: `h${i}`, init: { mode: 'consensus', quorum: Math.floor(n / 2) + 1 }, clock, log: silentLogger(), channel, knownPeers, store: new MemoryStore(), random: rng });
    net.setGossiper(name, a);
    as.push(a);
  }
  net.start();
  const start = clock.now();
  // every peer needs an address at once (a cluster booting): the worst case for duelling proposers
  let ready = 0;
  for (const a of as) void a.prime().then(() => { ready++; });
  for (const a of as) a.allocate('first').catch(() => {});
  while (ready < n && clock.now() - start < 600_000) {
    clock.advance(10);
    await flush();
  }
  const ms = clock.now() - start;
  for (const a of as) a.close();
  return { ms, messages: net.messages };
}

function argList(name: string, def: number[]): number[] {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1].split(',').map(Number) : def;
}

function argNum(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
}

const CONSENSUS_SIZES = [3, 10, 50];

async function main(): Promise<void> {
  const wantReal = process.argv.includes('--real') || (!process.argv.includes('--no-real') && process.getuid?.() === 0);
  const sim: { one: string; three: string; consensus: Map<number, string> } = { one: '', three: '', consensus: new Map() };
  const memRate = await oneAllocator(new MemoryStore(), ALLOCS);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ipam-bench-'));
  let lmdbRate: number;
  try {
    const st = new LmdbStore(dir);
    lmdbRate = await oneAllocator(st, Math.min(ALLOCS, 5000));
    st.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  sim.one = `${Math.round(memRate)}/s memory, ${Math.round(lmdbRate)}/s lmdb (${ALLOCS}, ${Math.min(ALLOCS, 5000)} allocs)`;
  const three = await threeAllocators(Math.min(ALLOCS, 6000));
  sim.three = `${Math.round(three.rate)}/s wall (${Math.min(ALLOCS, 6000)} allocs, incl. consensus; ${three.simMs} ms simulated)`;
  for (const n of CONSENSUS_SIZES) {
    const parts: string[] = [];
    for (const loss of [0, 0.1]) {
      const c = await consensusTime(n, loss);
      parts.push(`${c.ms} ms/${c.messages} msgs @${loss * 100}% loss`);
    }
    sim.consensus.set(n, parts.join(', '));
  }

  let real: RealIpamFigures | undefined;
  if (wantReal) {
    real = await realIpamBench({
      allocs: argNum('real-allocs', 500),
      concurrency: argNum('concurrency', 8),
      consensusSizes: argList('real-consensus', [3, 10, 50]),
      log: (m) => console.error(`# ${m}`),
    });
  }

  const rows: string[][] = [['measurement', 'simulated', real ? 'real (netns routers, HTTP API)' : 'real (not run: give --real, as root)']];
  rows.push(['allocations/s, 1 router', sim.one, real ? real.one : '-']);
  rows.push(['allocations/s, 3 routers at once', sim.three, real ? real.three : '-']);
  const realSizes = new Set(real ? [...real.consensus.keys()] : []);
  for (const n of [...new Set([...CONSENSUS_SIZES, ...realSizes])].sort((a, b) => a - b)) {
    rows.push([`time to consensus, ${n} peers`, sim.consensus.get(n) ?? '-', real?.consensus.get(n) ?? '-']);
  }
  const w = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  for (const r of rows) console.log(r.map((x, c) => x.padEnd(w[c])).join('  ').trimEnd());
  if (real) {
    console.log(`machine: ${os.cpus().length} CPUs; load during the real runs (uptime):`);
    for (const l of real.load) console.log(`  ${l}`);
    console.log(`simulated consensus: every peer primes at once; real: every router POSTs /prime at once (quorum = all N, routers in a binary tree of connections, ring ready = /prime returned or GET /ipam state "ready")`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
