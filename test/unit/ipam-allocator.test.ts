import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeClock } from '../../lib/clock';
import { MemoryLogger, silentLogger, type Logger } from '../../lib/log';
import { WeaveError } from '../../lib/errors';
import { Allocator, type IpamInit } from '../../ipam/allocator';
import { MemoryStore, type IpamStore } from '../../ipam/store';
import { parseAddr, parseCidr } from '../../ipam/addr';
import { FakeIpamNet, mulberry32, simName } from '../fakes/ipam-gossip';
import { Paxos } from '../../ipam/paxos';
import { decodeGossip, encodeGossip } from '../../ipam/wire';

const RANGE = '10.32.0.0/12';

interface Cluster {
  clock: FakeClock;
  net: FakeIpamNet;
  allocs: Allocator[];
  add(i: number, init: IpamInit, store?: IpamStore, log?: Logger): Allocator;
}

function cluster(n: number, init: IpamInit | ((i: number) => IpamInit), o: { range?: string; gossipIntervalMs?: number } = {}): Cluster {
  const clock = new FakeClock();
  const rng = mulberry32(1234);
  const net = new FakeIpamNet(clock, rng, { minDelayMs: 1, maxDelayMs: 20, gossipIntervalMs: o.gossipIntervalMs ?? 500 });
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

test('a peer given space names itself to everyone at once, not at the next periodic gossip', async () => {
  const seeds = [simName(0), simName(1)];
  const c = cluster(3, { mode: 'seed', peers: seeds }, { gossipIntervalMs: 3_600_000 });
  await run(c.clock, c.allocs[2].allocate('y'));
  c.clock.advance(200); // message delays are at most 20 ms; periodic gossip is an hour away
  await new Promise((r) => setImmediate(r));
  for (const a of c.allocs) {
    const o = a.status().owners.find((x) => x.peer === simName(2));
    assert.equal(o?.nickname, 'host2', `${a.ourName} knows the nickname of the new owner`);
  }
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

test('two separately seeded meshes connect: the lower-seeded ring wins, the other adopts it and keeps its addresses; nothing is allocated twice after', async () => {
  const logs = new MemoryLogger();
  const clock = new FakeClock();
  const net = new FakeIpamNet(clock, mulberry32(5), { maxDelayMs: 10, gossipIntervalMs: 300 });
  const SMALL = '10.40.0.0/24'; // no cursor offset in a /24: both sides allocate from the bottom, so they collide before they meet
  const mk = (i: number) => {
    const name = simName(i);
    const { channel, knownPeers } = net.add(name);
    const x = new Allocator({ ourName: name, ourNickname: `h${i}`, range: SMALL, init: { mode: 'seed', peers: [name] }, clock, log: logs, channel, knownPeers, store: new MemoryStore(), requestTimeoutMs: 300 });
    net.setGossiper(name, x);
    return x;
  };
  const [a, b] = [mk(0), mk(1)]; // a's seeds sort lower: a's ring wins
  net.partition([[simName(0)], [simName(1)]]);
  net.start();
  const aOld = await run(clock, Promise.all([0, 1, 2, 3, 4].map((i) => a.allocate(`a${i}`))));
  const bOld = await run(clock, Promise.all(Array.from({ length: 20 }, (_, i) => b.allocate(`b${i}`))));
  const dup = aOld.filter((x) => bOld.includes(x));
  assert.equal(dup.length, 5, 'both allocated the bottom addresses before they met');

  // they meet; a hears of b's ring before b has heard of a's (so before b can report what it
  // holds): a must neither allocate nor donate until b reports, and says why
  net.heal();
  a.onGossip(b.gossip()!.encode()[0]);
  assert.ok(a.knowsMergeRepair());
  const waiting = Promise.all(Array.from({ length: 10 }, (_, i) => a.allocate(`an${i}`)));
  assert.match(a.status().pending[0].reason, new RegExp(`repairing a ring merge conflict: waiting for ${simName(1)}`));
  assert.equal(a.donate(simName(1)), 0, 'no donation while a peer of the losing ring has not reported');
  const aNew = await run(clock, waiting);
  for (const x of aNew) assert.ok(!bOld.includes(x) && !aOld.includes(x), `${x} allocated after the merge is new`);
  const bNew = await run(clock, Promise.all(Array.from({ length: 5 }, (_, i) => b.allocate(`bn${i}`))));
  const live = [...aOld, ...bOld.filter((x) => !dup.includes(x)), ...aNew, ...bNew];
  assert.equal(new Set(live).size, live.length, 'nothing allocated twice after the merge');
  clock.advance(3000);

  // one ring everywhere; b adopted it, kept every address, got the non-duplicates handed over
  assert.ok(a.ringView().equals(b.ringView()), 'views agree');
  assert.deepEqual(b.ringView().seeds, [simName(0)]);
  assert.equal(b.status().counters.adoptions, 1);
  for (let i = 0; i < 20; i++) assert.deepEqual(b.lookup(`b${i}`), [bOld[i]], 'b keeps its containers\' addresses');
  const bOwns = (x: string) => b.ownedRanges().some((r) => parseAddr(x) >= r.start && parseAddr(x) < r.end);
  for (const x of bOld) assert.equal(bOwns(x), !dup.includes(x), `${x}: handed to b unless a duplicate`);
  assert.deepEqual(b.status().repair?.held, dup, 'b holds only the duplicates outside its space');
  const dupsOnA = a.status().repair!.duplicates;
  assert.equal(dupsOnA.length, 5, dupsOnA.join('; '));
  assert.match(dupsOnA[0], /allocated here to a\d and held by a container of/);
  assert.ok(b.status().repair!.duplicates.length === 5, 'b sees the duplicates a reported');
  for (const x of [a, b]) {
    const st = x.status();
    assert.ok(st.conflicts.count > 0 && st.counters.seedConflicts === 1, 'conflict counted once');
    assert.match(String(st.conflicts.last), /duplicate|seeds/);
    assert.equal(st.repair?.waiting, null, 'repair finished');
  }
  assert.ok(logs.find((r) => r.level === 'warn' && /merge conflict \(seeds\)/.test(String(r.msg))));
  assert.ok(logs.find((r) => r.level === 'warn' && /adopting the ring seeded by/.test(String(r.msg))));

  // a duplicate is never handed out again while b's container has it; once a frees its own, b gets it
  a.free('a0');
  const more = await run(clock, Promise.all(Array.from({ length: 20 }, (_, i) => a.allocate(`m${i}`))));
  assert.ok(!more.includes(aOld[0]) && !more.some((x) => live.includes(x)), 'the freed duplicate is not reused');
  clock.advance(3000);
  assert.ok(bOwns(aOld[0]), 'handed to b once a freed it');
  assert.equal(a.status().repair!.duplicates.length, 4);
  assert.equal(net.errors.length, 0, 'no handler threw (no connection would drop)');
});

test('entry conflict in one ring (two partitioned peers both rmpeer the same dead one) resolves the same everywhere and keeps allocations', async () => {
  const clock = new FakeClock();
  const net = new FakeIpamNet(clock, mulberry32(9), { maxDelayMs: 10, gossipIntervalMs: 300 });
  const names = [0, 1, 2, 3].map(simName);
  const mk = (i: number) => {
    const { channel, knownPeers } = net.add(names[i]);
    const x = new Allocator({ ourName: names[i], ourNickname: `h${i}`, range: '10.40.0.0/22', init: { mode: 'seed', peers: names }, clock, log: silentLogger(), channel, knownPeers, store: new MemoryStore(), requestTimeoutMs: 300 });
    net.setGossiper(names[i], x);
    return x;
  };
  const [p0, p1] = [mk(0), mk(1)]; // names[2], names[3] never run; 10.40.3.0/24 is names[3]'s
  net.partition([[names[0]], [names[1]]]);
  net.start();
  assert.equal(p0.transferFrom(names[3]), 256);
  assert.equal(p1.transferFrom(names[3]), 256);
  const x0 = await run(clock, Promise.all([0, 1, 2].map((i) => p0.allocate(`x${i}`, '10.40.3.0/24'))));
  await run(clock, p1.claim('y', '10.40.3.200'));
  net.heal();
  clock.advance(5000);
  assert.ok(p0.ringView().equals(p1.ringView()), 'views agree');
  assert.ok(p0.status().counters.entryConflicts + p1.status().counters.entryConflicts > 0, 'the conflict was seen and counted');
  // the higher peer name wins the tie; the other's allocations there are handed back to it
  const owner = p0.ringView().ownerOf(parseAddr('10.40.3.128'));
  assert.equal(owner, names[1]);
  for (let i = 0; i < 3; i++) {
    assert.deepEqual(p0.lookup(`x${i}`), [x0[i]]);
    assert.equal(p0.ringView().ownerOf(parseAddr(x0[i])), names[0], `${x0[i]} handed back to its holder`);
  }
  assert.deepEqual(p0.status().repair?.held, []);
  assert.equal(net.errors.length, 0);
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

test('paxos: our promises and accepted value survive a restart, so a restarted acceptor cannot help choose a different ring', () => {
  // Four participants, quorum 3. a proposes and a, x, y promise; a and x accept V1 (2 < 3: not
  // decided yet). x restarts. c then proposes a higher round: the value it may choose is the
  // highest accepted one among its quorum's promises, which must still include x's V1.
  const [a, x, y, c] = [0, 1, 2, 3].map(simName);
  const range = parseCidr(RANGE);
  const enc = (p: Paxos) => encodeGossip({ range, ring: null, paxos: p.nodes });
  const stateOf = (al: Allocator) => decodeGossip(al.gossip()!.encode()[0]).paxos!.get(x)!;
  const mkX = (store: IpamStore) => new Allocator({
    ourName: x, ourNickname: 'x', range: RANGE, init: { mode: 'consensus', quorum: 3 }, clock: new FakeClock(), log: silentLogger(),
    channel: { name: 'ipam', gossipUnicast: () => true, gossipBroadcast: () => undefined, gossip: () => undefined }, knownPeers: () => [a, y, c], store,
  });
  const run = (store: IpamStore, restart: boolean) => {
    const pa = new Paxos(a, 'a', 3);
    const py = new Paxos(y, 'y', 3);
    pa.propose();
    pa.think();
    let xa = mkX(store);
    xa.onGossip(enc(pa));
    py.merge(pa.nodes);
    py.think();
    pa.merge(decodeGossip(xa.gossip()!.encode()[0]).paxos!);
    pa.merge(py.nodes);
    pa.think();
    const v1 = pa.selfState().value!;
    assert.deepEqual(v1.map((p) => p[0]), [a, x, y], 'a chose the participants it knew');
    xa.onGossip(enc(pa));
    const before = stateOf(xa);
    assert.deepEqual(before.accepted, { round: 1, proposer: a }, 'x accepted a\'s proposal');
    assert.equal(xa.status().ring.seeded, false, 'not decided yet (2 of 3 accepted)');
    xa.close();
    if (restart) xa = mkX(store); // same data dir
    else xa = mkX(new MemoryStore()); // what a restart without persisted votes would be
    const pc = new Paxos(c, 'c', 3);
    pc.propose();
    pc.think();
    xa.onGossip(enc(pc));
    const after = stateOf(xa);
    pc.merge(decodeGossip(xa.gossip()!.encode()[0]).paxos!);
    py.merge(pc.nodes);
    py.think();
    pc.merge(py.nodes);
    pc.think();
    xa.close();
    return { v1, before, after, chosen: pc.selfState().value! };
  };
  const r = run(new MemoryStore(), true);
  assert.deepEqual(r.after.accepted, { round: 1, proposer: a }, 'the restarted x still reports its accepted proposal');
  assert.deepEqual(r.after.value, r.v1);
  assert.deepEqual(r.after.promised, { round: 1, proposer: c }, 'and promised the higher round');
  assert.ok(r.after.ver > r.before.ver, `its record version keeps growing (${r.before.ver} -> ${r.after.ver}), so peers take the update`);
  assert.deepEqual(r.chosen, r.v1, 'c had to choose V1');
  // without the persisted votes, x would have let c choose something else
  const fresh = run(new MemoryStore(), false);
  assert.deepEqual(fresh.after.accepted, { round: 0, proposer: '' });
  assert.notDeepEqual(fresh.chosen, fresh.v1);
});

test('paxos: unreadable persisted votes keep this peer out of the consensus (it says why) rather than vote again', async () => {
  const store = new MemoryStore();
  store.reset(parseCidr(RANGE));
  store.saveMeta('paxos', new Uint8Array([0xc1, 0x00]));
  const logs = new MemoryLogger();
  const al = new Allocator({ ourName: simName(0), ourNickname: 'x', range: RANGE, init: { mode: 'consensus', quorum: 1 }, clock: new FakeClock(), log: logs, knownPeers: () => [], store });
  const p = al.allocate('c1');
  p.catch(() => undefined);
  assert.match(al.status().pending[0].reason, /persisted consensus votes are unreadable/);
  assert.ok(logs.find((r) => r.level === 'error' && /unreadable/.test(String(r.msg))));
  al.close();
  await assert.rejects(p, /closed/);
});

test('paxos: a peer does not preempt a proposal that is still gathering promises; it proposes again only after a period without progress', () => {
  const [x, y, c, d] = [0, 1, 2, 3].map(simName);
  const range = parseCidr(RANGE);
  const clock = new FakeClock();
  const al = new Allocator({
    ourName: x, ourNickname: 'x', range: RANGE, init: { mode: 'consensus', quorum: 4 }, clock, log: silentLogger(), consensusRetryMs: 1000, random: () => 0,
    channel: { name: 'ipam', gossipUnicast: () => true, gossipBroadcast: () => undefined, gossip: () => undefined }, knownPeers: () => [y, c, d], store: new MemoryStore(),
  });
  const mine = () => decodeGossip(al.gossip()!.encode()[0]).paxos!.get(x)!;
  al.allocate('c1').catch(() => undefined);
  assert.deepEqual(mine().promised, { round: 1, proposer: x });
  const pc = new Paxos(c, 'c', 4);
  pc.propose();
  pc.think();
  al.onGossip(encodeGossip({ range, ring: null, paxos: pc.nodes }));
  assert.deepEqual(mine().promised, { round: 1, proposer: c }, 'x promises the higher proposal');
  // c's proposal keeps gathering promises (one per period): x waits
  for (const who of [y, d]) {
    clock.advance(1000);
    const p = new Paxos(who, who, 4);
    p.merge(pc.nodes);
    p.think();
    al.onGossip(encodeGossip({ range, ring: null, paxos: p.nodes }));
    assert.deepEqual(mine().promised, { round: 1, proposer: c }, 'no preemption while promises arrive');
  }
  // then nothing moves for two periods (c died, say): x proposes a higher round
  clock.advance(1000);
  assert.deepEqual(mine().promised, { round: 1, proposer: c }, 'the period with the last promise counts as progress');
  clock.advance(1000);
  assert.deepEqual(mine().promised, { round: 2, proposer: x });
  al.close();
});
