// IPAM under a hostile network: 24 allocators (one an observer) over the fake gossip net with
// message loss, random delays (reordering) and partitions, driven by thousands of seeded random
// operations (allocate, free, claim, donate, partition, heal, kill, rmpeer, hand-over). Checked
// after every step: no address held by two containers, no address owned by two live peers (in
// their own views, across partitions too), every allocation inside its allocator's own space, no
// handler ever threw, no merge conflict. At the end, after healing: all views agree and every
// address of the range has exactly one owner. Reproduce a failure with IPAM_SIM_SEED=<seed>.
//
// Merge variant: the 24 start as two partitioned groups that each run their own consensus (two
// separately seeded rings) and allocate, claim and donate for a quarter of the run; then they meet
// and the usual hostile ops go on. Checked: an allocation made by a peer that knew of the other
// ring never collides with a live one; collisions from before (both sides allocated an address
// before they met) are all reported as duplicates; no entry conflict, nothing lost; after healing
// every view is the same single ring, every held address was handed to its holder (or is a
// reported duplicate, or its owner is dead) and nothing waits.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeClock } from '../../lib/clock';
import { silentLogger } from '../../lib/log';
import { WeaveError } from '../../lib/errors';
import { Allocator } from '../../ipam/allocator';
import { MemoryStore } from '../../ipam/store';
import { formatAddr, parseAddr, parseCidr } from '../../lib/addr';
import type { Ring } from '../../ipam/ring';
import { FakeIpamNet, mulberry32, simName } from '../fakes/ipam-gossip';
import type { PeerName } from '../../mesh/peer';

const N = 24;
const OPS = Number(process.env.IPAM_SIM_OPS ?? 2000);
const RANGE = '10.32.0.0/22'; // small on purpose: 1024 addresses for 24 peers forces donations and exhaustion

interface Peer {
  name: PeerName;
  a: Allocator;
  alive: boolean;
  removed: boolean;
  observer: boolean;
}

async function simulate(seed: number, merge = false): Promise<Record<string, number>> {
  const rng = mulberry32(seed);
  const clock = new FakeClock();
  const net = new FakeIpamNet(clock, rng, { loss: 0.05, minDelayMs: 1, maxDelayMs: 80, gossipIntervalMs: 500, fanout: 2 });
  const range = parseCidr(RANGE);
  const peers: Peer[] = [];
  // merge: two groups of 12 (the second one with the observer), each consenting on its own ring
  const quorum = merge ? 7 : Math.floor((N - 1) / 2) + 1;
  const MERGE_AT = merge ? Math.floor(OPS / 4) : -1;
  for (let i = 0; i < N; i++) {
    const name = simName(i);
    const observer = i === N - 1;
    const { channel, knownPeers } = net.add(name);
    const a = new Allocator({
      ourName: name, ourNickname: `h${i}`, range: RANGE,
      init: observer ? { mode: 'observer' } : { mode: 'consensus', quorum },
      clock, log: silentLogger(), channel, knownPeers, store: new MemoryStore(), random: rng,
      requestTimeoutMs: 500, consensusRetryMs: 1000, handOverTimeoutMs: 1000,
    });
    net.setGossiper(name, a);
    peers.push({ name, a, alive: true, removed: false, observer });
  }
  if (merge) net.partition([peers.slice(0, N / 2).map((p) => p.name), peers.slice(N / 2).map((p) => p.name)]);
  net.start();

  // addr -> "peer/ident"s of every live container; the collision detector
  const ledger = new Map<number, Set<string>>();
  // peers that knew of another ring at the start of this step (knowledge only grows), so an
  // allocation reported in this step's flush was made knowing it
  let informed = new Set<PeerName>();
  // addresses held twice because both sides allocated them before knowing of each other
  const preMergeDups = new Set<number>();
  const held = new Map<string, number[]>(); // "peer/ident" -> addrs
  const stats: Record<string, number> = { preMergeDups: 0, adoptions: 0, heldGranted: 0, duplicates: 0, allocated: 0, freed: 0, claimed: 0, claimRefused: 0, donated: 0, partitions: 0, heals: 0, kills: 0, rmpeers: 0, handovers: 0, cancelled: 0 };
  const failures: string[] = [];
  let identSeq = 0;
  let step = 0;

  const record = (p: Peer, ident: string, addr: string, how: string) => {
    if (!p.alive) return;
    const a = parseAddr(addr);
    const key = `${p.name}/${ident}`;
    const holders = ledger.get(a) ?? new Set<string>();
    const others = [...holders].filter((k) => k !== key);
    if (others.length) {
      if (!merge || informed.has(p.name)) failures.push(`step ${step}: ${addr} ${how} to ${key} while held by ${others.join(', ')}`);
      else preMergeDups.add(a);
    }
    holders.add(key);
    ledger.set(a, holders);
    held.set(key, [...(held.get(key) ?? []), a]);
  };
  const forget = (key: string) => {
    for (const a of held.get(key) ?? []) {
      const h = ledger.get(a);
      h?.delete(key);
      if (h && h.size === 0) ledger.delete(a);
    }
    held.delete(key);
  };
  const liveHolders = () => [...ledger.values()].reduce((n, h) => n + h.size, 0);
  const live = () => peers.filter((p) => p.alive);
  const users = () => live().filter((p) => !p.observer);
  const pick = <T>(xs: T[]): T => xs[Math.floor(rng() * xs.length)];

  const check = () => {
    const sts = new Map(live().map((p) => [p, p.a.status()]));
    // ownership: disjoint across all live peers' own views (even in different partitions) that
    // use the same ring (two rings overlap until the repair is done)
    const spans: Array<[number, number, PeerName, string]> = [];
    for (const p of live()) {
      const key = sts.get(p)!.ring.seeds.join(',');
      for (const r of p.a.ownedRanges()) spans.push([r.start, r.end, p.name, key]);
    }
    const byRing = new Map<string, typeof spans>();
    for (const sp of spans) byRing.set(sp[3], [...(byRing.get(sp[3]) ?? []), sp]);
    for (const group of byRing.values()) {
      group.sort((x, y) => x[0] - y[0]);
      for (let i = 1; i < group.length; i++) {
        if (group[i][0] < group[i - 1][1]) failures.push(`step ${step}: ${formatAddr(group[i][0])} owned by ${group[i - 1][2]} and ${group[i][2]}`);
      }
    }
    for (const p of live()) {
      if (p.observer && p.a.ownedRanges().length) failures.push(`step ${step}: observer owns space`);
      const st = sts.get(p)!;
      if (!merge && st.conflicts.count) failures.push(`step ${step}: ${p.name} conflicts: ${st.conflicts.last}`);
      if (st.counters.entryConflicts || st.counters.lostAllocations) failures.push(`step ${step}: ${p.name} entry conflict or lost allocation: ${st.conflicts.last}`);
      const own = p.a.ownedRanges();
      const heldHere = new Set(st.repair?.held ?? []);
      for (const al of st.allocations) for (const x of al.addrs) {
        const a = parseAddr(x);
        // after adopting another ring, an allocation outside our space is held (and reported)
        if (!own.some((r) => a >= r.start && a < r.end) && !heldHere.has(x)) failures.push(`step ${step}: ${p.name} holds ${x} outside its space`);
      }
    }
    // merged view of each partition: each member's space is still its own there (every few steps:
    // it is the costly check, and a violation persists until the next gossip round anyway)
    if (step % 4 !== 0 && step < OPS) return;
    for (const comp of net.components()) {
      const members = comp.map((n) => peers.find((p) => p.name === n)!);
      const views = new Map<string, Ring>();
      for (const m of members) {
        const v = m.a.ringView();
        const merged = views.get(v.seeds.join(','));
        if (!merged) views.set(v.seeds.join(','), v);
        else {
          const res = merged.merge(v);
          if (res.conflict) failures.push(`step ${step}: merged view conflict ${res.conflict.detail}`);
        }
      }
      for (const m of members) for (const r of m.a.ownedRanges()) {
        const merged = views.get(m.a.ringView().seeds.join(','));
        if (merged!.ownerOf(r.start) !== m.name || merged!.ownerOf(r.end - 1) !== m.name) failures.push(`step ${step}: ${m.name}'s ${formatAddr(r.start)} owned by ${merged!.ownerOf(r.start)} in the merged view`);
      }
    }
    if (net.errors.length) failures.push(`step ${step}: handler threw: ${String(net.errors[0].err)}`);
  };

  const settle = (ms: number) => {
    const loss = net.loss;
    net.heal();
    net.loss = 0;
    clock.advance(ms);
    net.loss = loss;
  };

  const startRing = new Map<PeerName, string>();
  let partitioned = false;
  for (step = 0; step < OPS && failures.length === 0; step++) {
    let burst: Peer[] = [];
    if (step === MERGE_AT) {
      net.heal(); // the two meshes meet
      // a few peers of the first group hear of the other ring before anyone there has heard of
      // theirs (so before anyone could report what it holds) and allocate at once: the window in
      // which they must neither allocate nor donate what the other side holds
      const g = peers[N / 2].a.gossip()?.encode()[0];
      if (g) for (const p of peers.slice(0, 4)) p.a.onGossip(g);
      burst = peers.slice(0, 4);
    }
    if (merge) informed = new Set(live().filter((p) => p.a.knowsMergeRepair()).map((p) => p.name));
    for (const p of burst) {
      for (let k = 0; k < 5; k++) {
        const ident = `b${identSeq++}`;
        p.a.allocate(ident).then((addr) => { stats.allocated++; record(p, ident, addr, 'allocated'); }, (e: unknown) => {
          if (e instanceof WeaveError && (e.code === 'ECANCELLED' || e.code === 'ESHUTDOWN')) stats.cancelled++;
          else failures.push(`step ${step}: allocate failed: ${String(e)}`);
        });
      }
    }
    if (step === MERGE_AT) for (const p of live()) startRing.set(p.name, p.a.ringView().seeds.join(','));
    // before they meet: only allocate (more often, so held addresses are dense when they meet),
    // free, claim and donate inside each group
    const r = step < MERGE_AT ? (rng() < 0.4 ? 0 : rng() * 0.8) : rng();
    const us = users();
    if (r < 0.42) {
      const p = pick(us);
      const ident = `c${identSeq++}`;
      p.a.allocate(ident).then((addr) => { stats.allocated++; record(p, ident, addr, 'allocated'); }, (e: unknown) => {
        if (e instanceof WeaveError && (e.code === 'ECANCELLED' || e.code === 'ESHUTDOWN')) stats.cancelled++;
        else failures.push(`step ${step}: allocate failed: ${String(e)}`);
      });
    } else if (r < 0.7) {
      const keys = [...held.keys()];
      if (keys.length) {
        const key = pick(keys);
        const [name, ident] = [key.slice(0, 17), key.slice(18)];
        const p = peers.find((x) => x.name === name)!;
        if (p.alive) {
          p.a.free(ident);
          forget(key);
          stats.freed++;
        }
      }
    } else if (r < 0.75) {
      const p = pick(us);
      const ident = `k${identSeq++}`;
      const addr = formatAddr(range.start + 1 + Math.floor(rng() * (range.end - range.start - 2)));
      p.a.claim(ident, addr).then(() => {
        if (p.alive && p.a.lookup(ident).includes(addr)) { stats.claimed++; record(p, ident, addr, 'claimed'); }
      }, (e: unknown) => {
        if (e instanceof WeaveError && ['EOWNED', 'EUNREACHABLE', 'EINUSE', 'ESHUTDOWN', 'EREPAIR'].includes(e.code)) stats.claimRefused++;
        else failures.push(`step ${step}: claim failed unexpectedly: ${String(e)}`);
      });
    } else if (r < 0.8) {
      const p = pick(us);
      const qs = net.reachableFrom(p.name).filter((n) => !peers.find((x) => x.name === n)!.observer);
      if (qs.length) stats.donated += p.a.donate(pick(qs)) > 0 ? 1 : 0;
    } else if (r < 0.83) {
      if (!partitioned) {
        const groups: PeerName[][] = [[], [], []];
        const k = 2 + Math.floor(rng() * 2);
        for (const p of peers) groups[Math.floor(rng() * k)].push(p.name);
        net.partition(groups.filter((g) => g.length));
        partitioned = true;
        stats.partitions++;
      }
    } else if (r < 0.88) {
      if (partitioned) {
        net.heal();
        partitioned = false;
        stats.heals++;
      }
    } else if (r < 0.895) {
      if (stats.kills < 4 && us.length > 14) {
        const p = pick(us);
        p.alive = false;
        net.kill(p.name);
        p.a.close();
        for (const key of [...held.keys()]) if (key.startsWith(p.name)) forget(key);
        stats.kills++;
      }
    } else if (r < 0.91) {
      const dead = peers.filter((p) => !p.alive && !p.removed && !p.observer);
      if (dead.length) {
        // An operator runs rmpeer once, on one peer, after the mesh has settled (Weave's rule).
        settle(15_000);
        partitioned = false;
        const d = pick(dead);
        pick(users()).a.transferFrom(d.name);
        d.removed = true;
        stats.rmpeers++;
      }
    } else if (r < 0.912) {
      if (stats.handovers < 2 && us.length > 14) {
        // weave reset: hand over, then the host goes away
        settle(5_000);
        partitioned = false;
        const p = pick(us);
        let done = false;
        p.a.handOver().then(() => { done = true; });
        for (let t = 0; t < 3000 && !done; t += 50) {
          clock.advance(50);
          await flush();
        }
        for (const key of [...held.keys()]) if (key.startsWith(p.name)) forget(key);
        p.alive = false;
        p.removed = true;
        net.kill(p.name);
        p.a.close();
        stats.handovers++;
      }
    }
    clock.advance(Math.floor(rng() * 100));
    check();
    // let promise callbacks (ledger updates) run before the next operation
    await flush();
  }
  assert.deepEqual(failures.slice(0, 5), [], `seed ${seed}: invariant violated (IPAM_SIM_SEED=${seed} reproduces)`);

  // heal everything: all views agree, the range is covered once, the allocators report nothing odd
  settle(30_000);
  await flush();
  check();
  assert.deepEqual(failures.slice(0, 5), [], `seed ${seed}: after healing (IPAM_SIM_SEED=${seed})`);
  const views = live().map((p) => p.a.ringView());
  for (const v of views) assert.ok(v.equals(views[0]), `seed ${seed}: views differ after healing (seeds ${v.seeds.join(',')} vs ${views[0].seeds.join(',')})`);
  if (merge) {
    // every address two live containers hold (both sides allocated it before they met) is reported
    const reported = new Set(live().flatMap((p) => p.a.status().repair?.duplicates ?? []).map((d) => d.split(':')[0]));
    for (const [a, h] of ledger) if (h.size > 1) assert.ok(reported.has(formatAddr(a)), `seed ${seed}: ${formatAddr(a)} held by ${[...h].join(', ')} but not reported`);
    // every held address went to its holder, unless it is a duplicate or its owner is dead
    for (const p of live()) for (const x of p.a.status().repair?.held ?? []) {
      const owner = peers.find((q) => q.name === views[0].ownerOf(parseAddr(x)))!;
      assert.ok(reported.has(x) || !owner.alive, `seed ${seed}: ${p.name} still holds ${x} outside its space (owner ${owner.name} alive)`);
    }
    for (const p of live()) {
      const st = p.a.status();
      stats.adoptions += st.counters.adoptions;
      stats.heldGranted += st.counters.heldGranted;
      stats.duplicates += st.counters.duplicates;
      assert.equal(st.repair?.waiting ?? null, null, `seed ${seed}: ${p.name} still waits for the repair`);
    }
    stats.preMergeDups = preMergeDups.size;
    // every peer that started on the other ring adopted the winner
    const rings = [...new Set(startRing.values())];
    assert.equal(rings.length, 2, `seed ${seed}: two rings when the groups met`);
    for (const p of live()) if (startRing.get(p.name) !== views[0].seeds.join(',')) assert.ok(p.a.status().counters.adoptions >= 1, `seed ${seed}: ${p.name} adopted`);
  }
  const total = [...views[0].shares().values()].reduce((x, y) => x + y, 0);
  assert.equal(total, range.end - range.start);
  // every owner of the healed ring is alive or dead-but-not-removed (a removed peer's space was taken)
  for (const owner of views[0].shares().keys()) {
    const p = peers.find((x) => x.name === owner)!;
    assert.ok(p.alive || !p.removed, `seed ${seed}: removed peer ${owner} still owns space`);
  }
  // liveness: with free space left in the range, no allocation is still waiting
  const waiting = live().flatMap((p) => p.a.status().pending.map((x) => `${p.name}: ${x.reason}`));
  assert.ok(liveHolders() < (range.end - range.start) / 2);
  assert.deepEqual(waiting, [], `seed ${seed}: allocations still waiting after healing`);
  // the ledger matches what the allocators report
  let reported = 0;
  for (const p of live()) reported += p.a.status().allocated;
  assert.equal(reported, liveHolders(), `seed ${seed}: allocator state and ledger disagree`);
  stats.messages = net.messages;
  stats.dropped = net.dropped;
  stats.liveAllocations = liveHolders();
  stats.simSeconds = Math.round((clock.now() - 1_000_000) / 1000);
  for (const p of peers) p.a.close();
  return stats;
}

/** Runs every queued promise reaction (the simulation itself is driven synchronously by the clock). */
function flush(): Promise<void> {
  return new Promise((r) => setImmediate(r));
}

const seeds = process.env.IPAM_SIM_SEED ? [Number(process.env.IPAM_SIM_SEED)] : [1, 2];
for (const seed of seeds) {
  test(`ipam sim: ${N} allocators, ${OPS} random ops, loss/reorder/partitions (seed ${seed})`, async () => {
    const t0 = Date.now();
    const stats = await simulate(seed);
    console.log(`# seed ${seed}: ${JSON.stringify(stats)} in ${Date.now() - t0} ms`);
    assert.ok(stats.allocated > OPS / 10, 'a good share of allocations succeeded');
    assert.ok(stats.rmpeers + stats.handovers + stats.partitions > 0);
  });
}

const mergeSeeds = process.env.IPAM_SIM_SEED ? [Number(process.env.IPAM_SIM_SEED)] : [1, 2];
for (const seed of mergeSeeds) {
  test(`ipam sim: two separately seeded groups of ${N / 2} meet and repair, ${OPS} random ops, loss/reorder/partitions (seed ${seed})`, async () => {
    const t0 = Date.now();
    const stats = await simulate(seed, true);
    console.log(`# merge seed ${seed}: ${JSON.stringify(stats)} in ${Date.now() - t0} ms`);
    assert.ok(stats.allocated > OPS / 10, 'a good share of allocations succeeded');
    assert.ok(stats.heldGranted > 0, 'held addresses were handed to their holders');
  });
}
