import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeClock } from '../../mesh/clock';
import { MemoryLogger, silentLogger, type Logger } from '../../mesh/log';
import { WeaveError } from '../../mesh/errors';
import { Allocator, type IpamInit } from '../../ipam/allocator';
import { MemoryStore, type IpamStore } from '../../ipam/store';
import { parseAddr, parseCidr } from '../../ipam/addr';
import { FakeIpamNet, mulberry32, simName } from '../fakes/ipam-gossip';

const RANGE = '10.32.0.0/12';

interface Cluster {
  clock: FakeClock;
  net: FakeIpamNet;
  allocs: Allocator[];
  add(i: number, init: IpamInit, store?: IpamStore, log?: Logger): Allocator;
}

function cluster(n: number, init: IpamInit | ((i: number) => IpamInit), o: { range?: string } = {}): Cluster {
  const clock = new FakeClock();
  const rng = mulberry32(1234);
  const net = new FakeIpamNet(clock, rng, { minDelayMs: 1, maxDelayMs: 20, gossipIntervalMs: 500 });
  const c: Cluster = {
    clock,
    net,
    allocs: [],
    add(i, ini, store = new MemoryStore(), log = silentLogger()) {
      const name = simName(i);
      const { channel, knownPeers } = net.nodes.has(name) ? { channel: net.channel(name), knownPeers: () => net.reachableFrom(name) } : net.add(name);
      const a = new Allocator({ ourName: name, ourNickname: `host${i}`, range: o.range ?? RANGE, init: ini, clock, log, channel, knownPeers, store, random: rng, requestTimeoutMs: 300, consensusRetryMs: 1000 });
      net.setGossiper(name, a);
      c.allocs[i] = a;
      return a;
    },
  };
  for (let i = 0; i < n; i++) c.add(i, typeof init === 'function' ? init(i) : init);
  net.start();
  return c;
}

/** Advances fake time in small steps until p settles (or the deadline passes). */
async function run<T>(clock: FakeClock, p: Promise<T>, maxMs = 30_000): Promise<T> {
  let done = false;
  let value: T | undefined;
  let error: unknown;
  let failed = false;
  p.then((v) => { done = true; value = v; }, (e) => { done = true; failed = true; error = e; });
  for (let t = 0; t <= maxMs && !done; t += 20) {
    clock.advance(20);
    await new Promise((r) => setImmediate(r));
  }
  if (!done) throw new Error(`still pending after ${maxMs} ms of fake time`);
  if (failed) throw error;
  return value as T;
}

function inRange(addr: string, cidr = RANGE): boolean {
  const c = parseCidr(cidr);
  const a = parseAddr(addr);
  return a > c.start && a < c.end - 1; // never the network or broadcast address
}

test('consensus with one peer: allocate seeds the ring and returns an address', async () => {
  const c = cluster(1, { mode: 'consensus', quorum: 1 });
  const a = c.allocs[0];
  await a.prime(); // resolves without any time passing: a quorum of one decides at once
  const addr = await run(c.clock, a.allocate('c1'));
  assert.ok(inRange(addr), addr);
  assert.deepEqual(a.lookup('c1'), [addr]);
  assert.equal(await run(c.clock, a.allocate('c1')), addr, 'same ident, same subnet: same address');
  const st = a.status();
  assert.deepEqual(st.ring.seeds, [a.ourName]);
  assert.equal(st.owners[0].addresses, 1 << 20);
  assert.equal(st.allocated, 1);
  assert.equal(c.net.errors.length, 0);
});

test('consensus with 3 peers: one ring everywhere, distinct addresses, each in its own space', async () => {
  const c = cluster(3, { mode: 'consensus', quorum: 2 });
  const addrs = await run(c.clock, Promise.all(c.allocs.flatMap((a, i) => [a.allocate(`c${i}a`), a.allocate(`c${i}b`)])));
  assert.equal(new Set(addrs).size, 6);
  c.clock.advance(3000);
  const r0 = c.allocs[0].ringView();
  assert.ok(r0.seeds.length >= 2, 'a quorum took part');
  for (const a of c.allocs) assert.ok(a.ringView().equals(r0), 'views agree');
  c.allocs.forEach((a, i) => {
    for (const x of a.lookup(`c${i}a`).concat(a.lookup(`c${i}b`))) assert.equal(r0.ownerOf(parseAddr(x)), a.ourName);
  });
  assert.equal(c.net.errors.length, 0);
});

test('consensus impossible: allocation waits with a visible reason and free() never blocks', async () => {
  const c = cluster(1, { mode: 'consensus', quorum: 2 });
  const a = c.allocs[0];
  const p = a.allocate('c1');
  const box: { outcome: unknown } = { outcome: null };
  p.catch((e) => { box.outcome = e; });
  c.clock.advance(20_000);
  await new Promise((r) => setImmediate(r));
  assert.ok(box.outcome === null, 'still waiting');
  const st = a.status();
  assert.equal(st.ring.seeded, false);
  assert.equal(st.pending.length, 1);
  assert.match(st.pending[0].reason, /waiting for consensus.*1 of 2/);
  assert.equal(a.free('c1'), 0);
  await new Promise((r) => setImmediate(r));
  const cancelled: unknown = box.outcome;
  assert.ok(cancelled instanceof WeaveError && cancelled.code === 'ECANCELLED');
  assert.equal(a.status().pending.length, 0);
});

test('seed mode: the ring exists at once, identical everywhere, without messages', async () => {
  const seeds = [simName(0), simName(1)];
  const c = cluster(3, (i) => (i < 2 ? { mode: 'seed', peers: seeds } : { mode: 'seed', peers: seeds }));
  const r = c.allocs[0].ringView();
  assert.deepEqual(r.seeds, seeds);
  for (const a of c.allocs) assert.deepEqual([...a.ringView().shares()], [...r.shares()], 'same owners at once');
  assert.equal(c.allocs[2].ownedRanges().length, 0, 'not a seed: owns nothing yet');
  const a0 = await run(c.clock, c.allocs[0].allocate('x'));
  assert.equal(r.ownerOf(parseAddr(a0)), seeds[0]);
  // the third peer asks an owner for space and gets a donation
  const a2 = await run(c.clock, c.allocs[2].allocate('y'));
  assert.ok(inRange(a2));
  assert.equal(c.allocs[2].ringView().ownerOf(parseAddr(a2)), simName(2));
  assert.ok(c.allocs[2].status().counters.requestsSent >= 1);
  c.clock.advance(3000);
  assert.ok(c.allocs[0].ringView().equals(c.allocs[2].ringView()));
});

test('observer never owns space, refuses to allocate, still learns the ring', async () => {
  const c = cluster(3, (i) => (i === 2 ? { mode: 'observer' } : { mode: 'consensus', quorum: 2 }));
  const obs = c.allocs[2];
  await assert.rejects(obs.allocate('c'), (e: unknown) => e instanceof WeaveError && e.code === 'EOBSERVER');
  await run(c.clock, c.allocs[0].allocate('c0'));
  await run(c.clock, obs.prime());
  const r = obs.ringView();
  assert.ok(!r.seeds.includes(obs.ourName));
  assert.equal(r.shares().get(obs.ourName), undefined);
  // a space request to an observer gets "nospace", never a donation
  assert.equal(obs.ownedRanges().length, 0);
  assert.equal(obs.status().mode, 'observer');
});

test('small subnet runs out: requests space, then waits visibly while the range is full', async () => {
  const seeds = [simName(0), simName(1)];
  const c = cluster(2, { mode: 'seed', peers: seeds }, { range: '10.9.0.0/29' });
  // A owns .0-.3, B owns .4-.7; usable: .1-.6 (6 addresses)
  const got = await run(c.clock, Promise.all([0, 1, 2, 3, 4].map((i) => c.allocs[0].allocate(`a${i}`))));
  assert.equal(new Set(got).size, 5, 'A asked B for space to get past its 3 usable addresses');
  const last = await run(c.clock, c.allocs[1].allocate('b0'));
  assert.equal(new Set([...got, last]).size, 6);
  const p = c.allocs[1].allocate('b1');
  let settled = false;
  p.then(() => { settled = true; }, () => { settled = true; });
  c.clock.advance(5000);
  await new Promise((r) => setImmediate(r));
  assert.equal(settled, false);
  assert.match(c.allocs[1].status().pending[0].reason, /no free address/);
  // freeing on A lets B's wait finish (A donates once it has free space again)
  c.allocs[0].free('a0');
  const addr = await run(c.clock, p);
  assert.equal(addr, got[0]);
});

test('claim: own space ok, live owner refused, unreachable owner refused with rmpeer hint, in-use refused', async () => {
  const seeds = [simName(0), simName(1)];
  const c = cluster(2, { mode: 'seed', peers: seeds });
  const [a, b] = c.allocs;
  await run(c.clock, a.claim('c1', '10.32.0.10'));
  assert.deepEqual(a.lookup('c1'), ['10.32.0.10']);
  await run(c.clock, a.claim('c1', '10.32.0.10')); // idempotent
  await assert.rejects(a.claim('c2', '10.32.0.10'), (e: unknown) => e instanceof WeaveError && e.code === 'EINUSE');
  await assert.rejects(a.claim('c3', '10.47.0.10'), (e: unknown) => e instanceof WeaveError && e.code === 'EOWNED' && /live peer/.test(e.message));
  await assert.rejects(a.claim('c3', '10.48.0.1'), (e: unknown) => e instanceof WeaveError && e.code === 'EUSAGE');
  c.net.kill(b.ourName);
  await assert.rejects(a.claim('c3', '10.47.0.10'), (e: unknown) => e instanceof WeaveError && e.code === 'EUNREACHABLE' && /rmpeer/.test(e.message));
  // the allocator never hands out a claimed address
  for (let i = 0; i < 20; i++) assert.notEqual(await run(c.clock, a.allocate(`n${i}`)), '10.32.0.10');
});

test('rmpeer: transferFrom takes a dead peer over (by nickname too), refuses a live one', async () => {
  const seeds = [simName(0), simName(1), simName(2)];
  const c = cluster(3, { mode: 'seed', peers: seeds });
  const [a, b, cc] = c.allocs;
  await run(c.clock, b.allocate('warm')); // b publishes its nickname on its next update
  c.clock.advance(3000);
  assert.throws(() => a.transferFrom(b.ourName), (e: unknown) => e instanceof WeaveError && e.code === 'ELIVE');
  c.net.kill(b.ourName);
  const share = a.ringView().shares().get(b.ourName)!;
  assert.equal(a.transferFrom('host1'), share);
  assert.equal(a.transferFrom(b.ourName), 0, 'nothing left');
  assert.throws(() => a.transferFrom('host1'), /no peer named or nicknamed/);
  c.clock.advance(3000);
  assert.equal(cc.ringView().shares().get(b.ourName), undefined, 'the claim was gossiped');
  assert.equal(cc.status().owners.find((o) => o.peer === a.ourName)!.addresses, a.ringView().shares().get(a.ourName));
  assert.equal(a.status().owners.find((o) => o.peer === a.ourName)!.reachable, true);
});

test('handOver gives all our space to a live peer and stops allocating', async () => {
  const seeds = [simName(0), simName(1)];
  const c = cluster(2, { mode: 'seed', peers: seeds });
  const [a, b] = c.allocs;
  await run(c.clock, a.allocate('c'));
  await run(c.clock, a.handOver());
  assert.equal(a.ownedRanges().length, 0);
  assert.equal(b.ringView().shares().get(b.ourName), 1 << 20);
  await assert.rejects(a.allocate('d'), (e: unknown) => e instanceof WeaveError && e.code === 'ESHUTDOWN');
  assert.ok(inRange(await run(c.clock, b.allocate('e'))));
});

test('two separately seeded meshes connect: conflict logged and counted, both keep allocating apart', async () => {
  const logs = new MemoryLogger();
  const clock = new FakeClock();
  const net = new FakeIpamNet(clock, mulberry32(5), { maxDelayMs: 10, gossipIntervalMs: 300 });
  const mk = (i: number) => {
    const name = simName(i);
    const { channel, knownPeers } = net.add(name);
    const x = new Allocator({ ourName: name, ourNickname: `h${i}`, range: RANGE, init: { mode: 'seed', peers: [name] }, clock, log: logs, channel, knownPeers, store: new MemoryStore() });
    net.setGossiper(name, x);
    return x;
  };
  const [a, b] = [mk(0), mk(1)];
  net.partition([[simName(0)], [simName(1)]]);
  net.start();
  const before = await run(clock, Promise.all([a.allocate('a1'), b.allocate('b1')]));
  net.heal();
  clock.advance(5000);
  assert.ok(a.status().conflicts.count > 0 && b.status().conflicts.count > 0);
  assert.match(String(a.status().conflicts.last), /seeds/);
  assert.ok(logs.find((r) => r.level === 'warn' && /merge conflict/.test(String(r.msg))));
  const after = await run(clock, Promise.all([1, 2, 3, 4, 5].flatMap((i) => [a.allocate(`a${i}x`), b.allocate(`b${i}x`)])));
  const all = [...before, ...after];
  assert.equal(new Set(all).size, all.length, 'nothing allocated twice');
  assert.equal(net.errors.length, 0, 'no handler threw (no connection would drop)');
});

test('persistence: restart keeps ring and allocations; a different range discards them with a log line', async () => {
  const store = new MemoryStore();
  const c = cluster(0, { mode: 'consensus', quorum: 1 });
  const a = c.add(0, { mode: 'consensus', quorum: 1 }, store);
  const x = await run(c.clock, a.allocate('keep'));
  const y = await run(c.clock, a.allocate('gone'));
  a.free('gone');
  a.close();
  const a2 = c.add(0, { mode: 'consensus', quorum: 1 }, store);
  assert.deepEqual(a2.lookup('keep'), [x]);
  assert.deepEqual(a2.lookup('gone'), []);
  assert.equal(a2.status().ring.seeded, true);
  const addrs = new Set<string>();
  for (let i = 0; i < 3; i++) addrs.add(await run(c.clock, a2.allocate(`n${i}`)));
  assert.ok(!addrs.has(x));
  a2.close();
  const logs = new MemoryLogger();
  const c2 = cluster(0, { mode: 'consensus', quorum: 1 }, { range: '10.40.0.0/16' });
  const a3 = c2.add(0, { mode: 'consensus', quorum: 1 }, store, logs);
  assert.deepEqual(a3.lookup('keep'), []);
  assert.ok(logs.find((r) => r.level === 'warn' && /range changed from 10.32.0.0\/12 to 10.40.0.0\/16/.test(String(r.msg))));
  void y;
});

test('subnet allocation and cancellation by AbortSignal', async () => {
  const c = cluster(1, { mode: 'consensus', quorum: 1 });
  const a = c.allocs[0];
  const x = await run(c.clock, a.allocate('c', '10.33.0.0/24'));
  assert.ok(inRange(x, '10.33.0.0/24'));
  await assert.rejects(a.allocate('c', '10.0.0.0/24'), /not inside the allocation range/);
  const c2 = cluster(1, { mode: 'consensus', quorum: 3 });
  const ac = new AbortController();
  const p = c2.allocs[0].allocate('z', undefined, { signal: ac.signal });
  ac.abort();
  await assert.rejects(p, (e: unknown) => e instanceof WeaveError && e.code === 'ECANCELLED');
});
