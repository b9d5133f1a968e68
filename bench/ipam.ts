// IPAM benchmark: allocations per second on one allocator (memory store and lmdb store, i.e. with
// a durable commit per allocation) and across 3 simulated allocators; simulated time to consensus
// for 3, 10 and 50 peers over the fake gossip net (20 ms max delay, 1 s gossip interval, no loss,
// and again with 10% loss). Real-network consensus times come with the router's netns bench.
// Usage: node dist/bench/ipam.js [--allocs N]
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { FakeClock } from '../mesh/clock';
import { silentLogger } from '../mesh/log';
import { Allocator } from '../ipam/allocator';
import { LmdbStore, MemoryStore, type IpamStore } from '../ipam/store';
import { FakeIpamNet, mulberry32, simName } from '../test/fakes/ipam-gossip';

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

async function main(): Promise<void> {
  const rows: string[][] = [['measurement', 'value']];
  rows.push([`1 allocator, memory store, ${ALLOCS} allocations`, `${Math.round(await oneAllocator(new MemoryStore(), ALLOCS))} allocs/s`]);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ipam-bench-'));
  try {
    const st = new LmdbStore(dir);
    rows.push([`1 allocator, lmdb store (durable), ${Math.min(ALLOCS, 5000)} allocations`, `${Math.round(await oneAllocator(st, Math.min(ALLOCS, 5000)))} allocs/s`]);
    st.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const three = await threeAllocators(Math.min(ALLOCS, 6000));
  rows.push([`3 simulated allocators (incl. consensus), ${Math.min(ALLOCS, 6000)} allocations`, `${Math.round(three.rate)} allocs/s wall, ${three.simMs} ms simulated`]);
  for (const loss of [0, 0.1]) {
    for (const n of [3, 10, 50]) {
      const c = await consensusTime(n, loss);
      rows.push([`consensus, ${n} peers, ${loss * 100}% loss (simulated)`, `${c.ms} ms, ${c.messages} messages`]);
    }
  }
  const w = Math.max(...rows.map((r) => r[0].length));
  for (const r of rows) console.log(`${r[0].padEnd(w)}  ${r[1]}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
