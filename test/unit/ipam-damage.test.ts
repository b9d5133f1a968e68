// A damaged IPAM store never crashes the router and never makes it hand out an address twice: the lmdb
// env is checked before it is opened (meta pages in JS at every truncation length and against random
// garbage; deeper damage caught by the child-process probe), moved aside, and the allocator then takes
// the ring from peers instead of seeding one and records the live containers' addresses the moment the
// ring exists, before any waiting allocation is served.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { FakeClock } from '../../lib/clock';
import { silentLogger } from '../../lib/log';
import { Allocator } from '../../ipam/allocator';
import { LmdbStore, MemoryStore, checkLmdbEnv, probeLmdbEnv, IPAM_OWNER_FILE } from '../../ipam/store';
import { parseCidr } from '../../ipam/addr';
import { readStateFile } from '../../lib/state-file';
import { FakeIpamNet, mulberry32, simName } from '../fakes/ipam-gossip';

const OWNER = '02:00:00:00:00:01';

function tmpDir(): string { return fs.mkdtempSync(path.join(os.tmpdir(), 'weave-ipam-damage-')); }

/** A real env with a ring, allocations and meta blobs (about 32 KB). */
function makeEnv(dir: string): void {
  const s = new LmdbStore(dir, { probe: false });
  const R = parseCidr('10.32.0.0/12');
  s.reset(R);
  s.saveRing(new Uint8Array(300).fill(7));
  for (let i = 0; i < 60; i++) s.saveAllocations(`1:${i}`, [R.start + i + 1]);
  s.saveMeta('paxos', new Uint8Array([1, 2, 3]));
  s.close();
}

function copyEnv(from: string, to: string): void {
  fs.mkdirSync(to, { recursive: true });
  fs.copyFileSync(path.join(from, 'data.mdb'), path.join(to, 'data.mdb'));
}

test('lmdb pre-open check: a valid env passes; truncation at many lengths and random garbage are caught without opening it', () => {
  const dir = tmpDir();
  try {
    const env = path.join(dir, 'env');
    makeEnv(env);
    assert.deepEqual(checkLmdbEnv(env), { status: 'ok' });
    assert.equal(probeLmdbEnv(env), undefined);
    assert.deepEqual(checkLmdbEnv(path.join(dir, 'none')), { status: 'fresh' });
    const data = fs.readFileSync(path.join(env, 'data.mdb'));
    const size = data.length;
    assert.ok(size >= 16384, `env is ${size} bytes`);
    const t = path.join(dir, 't');
    fs.mkdirSync(t);
    const lengths = new Set<number>([0, 1, 23, 24, 167, 168, 2048, 4095, 4096, 4097, 4263, 8191, 8192, size - 4096, size - 1]);
    for (let len = 0; len < size; len += 61) lengths.add(len);
    for (const len of lengths) {
      fs.writeFileSync(path.join(t, 'data.mdb'), data.subarray(0, len));
      const c = checkLmdbEnv(t);
      assert.equal(c.status, 'damaged', `truncated to ${len} of ${size} bytes: ${JSON.stringify(c)}`);
      assert.equal(c.file, 'data.mdb');
    }
    assert.match(checkLmdbEnv(t).problem!, /truncated: \d+ bytes, but the .* meta page says \d+/);
    fs.writeFileSync(path.join(t, 'data.mdb'), Buffer.alloc(0));
    assert.match(checkLmdbEnv(t).problem!, /empty .*lmdb would silently start over/);
    const rng = mulberry32(5);
    for (let i = 0; i < 50; i++) {
      const g = Buffer.alloc(size);
      for (let j = 0; j < size; j++) g[j] = Math.floor(rng() * 256);
      fs.writeFileSync(path.join(t, 'data.mdb'), g);
      assert.equal(checkLmdbEnv(t).status, 'damaged', `garbage ${i}`);
    }
    // garbage over one meta page only
    const m = Buffer.from(data);
    for (let j = 4096; j < 8192; j++) m[j] = Math.floor(rng() * 256);
    fs.writeFileSync(path.join(t, 'data.mdb'), m);
    assert.match(checkLmdbEnv(t).problem!, /page 1|meta page/);
    // deleted data.mdb next to the lock file
    fs.rmSync(path.join(t, 'data.mdb'));
    fs.writeFileSync(path.join(t, 'lock.mdb'), '');
    assert.match(checkLmdbEnv(t).problem!, /missing \(deleted\?\) while lock\.mdb exist/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('lmdb damage past the meta pages (garbage over the main tree root) crashes only the probe; the store moves the env aside and says why', () => {
  const dir = tmpDir();
  try {
    const env = path.join(dir, 'env');
    makeEnv(env);
    const bad = path.join(dir, 'ipam');
    copyEnv(env, bad);
    const f = path.join(bad, 'data.mdb');
    const data = fs.readFileSync(f);
    // the main tree's root page number is in the meta with the higher txnid; overwrite that page
    const txn = (at: number): bigint => data.readBigUInt64LE(at + 24 + 128);
    const meta = txn(0) >= txn(4096) ? 0 : 4096;
    const root = Number(data.readBigUInt64LE(meta + 24 + 72 + 40));
    const rng = mulberry32(11);
    for (let j = root * 4096; j < (root + 1) * 4096; j++) data[j] = Math.floor(rng() * 256);
    fs.writeFileSync(f, data);
    assert.equal(checkLmdbEnv(bad).status, 'ok', 'the meta pages are intact');
    const why = probeLmdbEnv(bad);
    assert.ok(why, 'the probe sees it');
    assert.match(why!, /crashed lmdb \(SIG(SEGV|BUS): damaged pages\)|unreadable/);
    const now = Date.UTC(2026, 1, 3, 4, 5, 6);
    const s = new LmdbStore(bad, { owner: OWNER, now: () => now });
    assert.equal(s.load(), null, 'a fresh env');
    assert.match(s.lostState()!, /^ipam\/data\.mdb was /);
    const [r] = s.recovery();
    assert.equal(r.file, 'ipam/data.mdb');
    assert.match(r.action, /moved aside to ipam\.damaged-2026-02-03T040506Z; IPAM starts empty/);
    assert.ok(fs.existsSync(path.join(dir, 'ipam.damaged-2026-02-03T040506Z', 'data.mdb')), 'the damaged env is kept');
    const o = readStateFile(path.join(bad, IPAM_OWNER_FILE), 'ipam-owner');
    assert.ok(o.status === 'ok' && o.owner === OWNER, 'the new env records its owner');
    s.close();
    // truncated env: moved aside without even running the probe
    const tr = path.join(dir, 'ipam2');
    copyEnv(env, tr);
    fs.truncateSync(path.join(tr, 'data.mdb'), 8192);
    const s2 = new LmdbStore(tr, { label: 'ipam' });
    assert.match(s2.recovery()[0].problem, /^truncated: 8192 bytes/);
    s2.close();
    // a sound env opens as it is
    const s3 = new LmdbStore(env);
    assert.equal(s3.lostState(), null);
    assert.deepEqual(s3.recovery(), []);
    assert.equal(s3.load()!.allocations.length, 60);
    s3.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

class LostStore extends MemoryStore {
  constructor(private readonly why: string) { super(); }
  lostState(): string { return this.why; }
}

async function until(clock: FakeClock, cond: () => boolean, maxMs = 20_000): Promise<void> {
  for (let t = 0; t <= maxMs && !cond(); t += 20) {
    clock.advance(20);
    await new Promise((r) => setImmediate(r));
  }
  assert.ok(cond(), `condition not met within ${maxMs} ms of fake time`);
}

test('allocator after lost state: seeds nothing, takes the ring from a peer, records live addresses before serving a waiting allocation', async () => {
  const clock = new FakeClock();
  const rng = mulberry32(77);
  const net = new FakeIpamNet(clock, rng, { minDelayMs: 1, maxDelayMs: 20, gossipIntervalMs: 500 });
  const names = [simName(0), simName(1)];
  const mk = (i: number, store = new MemoryStore()): Allocator => {
    const { channel, knownPeers } = net.nodes.has(names[i]) ? { channel: net.channel(names[i]), knownPeers: () => net.reachableFrom(names[i]) } : net.add(names[i]);
    const a = new Allocator({ ourName: names[i], ourNickname: `h${i}`, range: '10.32.0.0/24', init: { mode: 'consensus', quorum: 2 }, clock, log: silentLogger(), channel, knownPeers, store, random: rng, requestTimeoutMs: 300, consensusRetryMs: 1000 });
    net.setGossiper(names[i], a);
    return a;
  };
  const a0 = mk(0);
  mk(1);
  net.start();
  const got: string[] = [];
  for (const id of ['c1', 'c2']) void a0.allocate(id).then((x) => got.push(x));
  await until(clock, () => got.length === 2);
  const owned = a0.ownedRanges();
  a0.close();

  // h0 restarts with its store lost: no consensus, no ring of its own
  const lost = new LostStore('ipam/data.mdb was truncated: 4096 bytes');
  const b0 = mk(0, lost);
  assert.equal(b0.status().ring.seeded, false);
  assert.equal(b0.adoptLive([{ ident: 'c1', addr: `${got[0]}/24` }, { ident: 'c2', addr: got[1] }]), 0, 'waits for the ring');
  let next: string | undefined;
  void b0.allocate('c3').then((x) => { next = x; });
  await new Promise((r) => setImmediate(r));
  assert.match(b0.status().pending[0].reason, /our IPAM state was lost .*seeds no ring/);
  await until(clock, () => next !== undefined);
  assert.ok(!got.includes(next!), `the waiting allocation got ${next}, live: ${got.join(' ')}`);
  assert.deepEqual(b0.lookup('c1'), [got[0]]);
  assert.deepEqual(b0.lookup('c2'), [got[1]]);
  assert.deepEqual(b0.ownedRanges(), owned, 'ring ownership recovered');
  const r = b0.recovery();
  assert.equal(r.reclaimed, 2);
  assert.equal(r.ringFrom, "peers' gossip");
  assert.equal(r.lostState, 'ipam/data.mdb was truncated: 4096 bytes');
  // live addresses are persisted like allocations
  assert.deepEqual(lost.load()!.allocations.map(([id]) => id).sort(), ['c1', 'c2', 'c3']);
  b0.close();
});

test('allocator after lost state, alone (quorum 1): no second ring is seeded; the reason names the way out', async () => {
  const clock = new FakeClock();
  const a = new Allocator({ ourName: OWNER, ourNickname: 'h', range: '10.32.0.0/24', init: { mode: 'consensus', quorum: 1 }, clock, log: silentLogger(), knownPeers: () => [], store: new LostStore('ipam/data.mdb was garbage') });
  let primed = false;
  void a.prime().then(() => { primed = true; });
  void a.allocate('x').catch(() => undefined);
  clock.advance(60_000);
  await new Promise((r) => setImmediate(r));
  assert.equal(primed, false);
  assert.equal(a.status().ring.seeded, false);
  assert.match(a.status().pending[0].reason, /weave reset/);
  // the seed-list mode does not seed its own either
  const b = new Allocator({ ourName: OWNER, ourNickname: 'h', range: '10.32.0.0/24', init: { mode: 'seed', peers: [OWNER] }, clock, log: silentLogger(), knownPeers: () => [], store: new LostStore('gone') });
  assert.equal(b.status().ring.seeded, false);
  a.close();
  b.close();
});

test('allocator: live addresses outside our space are held (published), conflicting ones reported, none handed out', async () => {
  const clock = new FakeClock();
  const sent: unknown[] = [];
  const a = new Allocator({
    ourName: OWNER, ourNickname: 'h', range: '10.32.0.0/24', init: { mode: 'seed', peers: [OWNER, '02:00:00:00:00:02'] }, clock, log: silentLogger(),
    knownPeers: () => [], store: new MemoryStore(), channel: { name: 'ipam', gossipUnicast: () => true, gossipBroadcast: (d) => { sent.push(d); }, gossip: () => undefined },
  });
  // seeded: we own 10.32.0.0/25, the other peer 10.32.0.128/25
  const mine = await a.allocate('old');
  const n = a.adoptLive([{ ident: 'c1', addr: '10.32.0.9' }, { ident: 'c2', addr: '10.32.0.200' }, { ident: 'c3', addr: mine }, { ident: 'c4', addr: '192.168.1.1' }]);
  assert.equal(n, 2);
  const r = a.recovery();
  assert.deepEqual([r.reclaimed, r.held], [1, 1]);
  assert.match(r.conflicts[0], new RegExp(`${mine.replace(/\./g, '\\.')}: a live container \\(c3\\) has it, but it is allocated here to old`));
  assert.deepEqual(a.status().repair?.held, ['10.32.0.200'], 'published as held');
  assert.ok(sent.length > 0, 'and broadcast');
  for (let i = 0; i < 5; i++) assert.ok(!['10.32.0.9', '10.32.0.200', mine].includes(await a.allocate(`n${i}`)));
  a.close();
});
