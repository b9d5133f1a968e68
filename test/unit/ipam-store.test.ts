import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { FakeClock } from '../../lib/clock';
import { MemoryLogger, silentLogger, type Logger } from '../../lib/log';
import { Allocator } from '../../ipam/allocator';
import { LmdbStore } from '../../ipam/store';
import { Ring } from '../../ipam/ring';
import { parseCidr } from '../../ipam/addr';

const NAME = '02:00:00:00:00:01';

async function settle<T>(clock: FakeClock, p: Promise<T>): Promise<T> {
  let done = false;
  p.then(() => { done = true; }, () => { done = true; });
  for (let i = 0; i < 500 && !done; i++) {
    clock.advance(10);
    await new Promise((r) => setImmediate(r));
  }
  return p;
}

function make(dir: string, clock: FakeClock, range = '10.32.0.0/12', log: Logger = silentLogger()): { a: Allocator; store: LmdbStore } {
  const store = new LmdbStore(dir);
  const a = new Allocator({ ourName: NAME, ourNickname: 'h', range, init: { mode: 'consensus', quorum: 1 }, clock, log, knownPeers: () => [], store });
  return { a, store };
}

test('lmdb store: raw round trip of range, ring and allocations', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ipam-store-'));
  try {
    const s = new LmdbStore(dir);
    assert.equal(s.load(), null);
    const R = parseCidr('10.32.0.0/12');
    s.reset(R);
    const ring = new Ring(R);
    ring.seed([{ name: NAME, nickname: 'h' }]);
    s.saveRing(ring.encode());
    s.saveAllocations('c1', [R.start + 1, R.start + 2]);
    s.saveAllocations('c2', [R.start + 3]);
    s.saveAllocations('c2', []);
    s.saveMeta('paxos', new Uint8Array([1, 2, 3]));
    s.saveMeta('holds', new Uint8Array([4]));
    s.saveMeta('holds', null);
    s.close();
    const s2 = new LmdbStore(dir);
    const p = s2.load()!;
    assert.deepEqual(p.range, { start: R.start, end: R.end });
    assert.ok(Ring.decode(p.ring!).equals(ring));
    assert.deepEqual(p.allocations, [['c1', [R.start + 1, R.start + 2]]]);
    assert.deepEqual([...p.meta], [['paxos', new Uint8Array([1, 2, 3])]]);
    s2.reset(parseCidr('10.40.0.0/16'));
    const p2 = s2.load()!;
    assert.equal(p2.ring, null);
    assert.deepEqual(p2.allocations, []);
    assert.equal(p2.meta.size, 0);
    s2.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('lmdb store: allocator restart keeps addresses; freed address reusable; range change discards', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ipam-store-'));
  try {
    const clock = new FakeClock();
    const first = make(dir, clock);
    const keep = await settle(clock, first.a.allocate('keep'));
    const gone = await settle(clock, first.a.allocate('gone'));
    first.a.close();
    first.store.close();

    // "while it was down" the container went away: the restarted router frees it
    const second = make(dir, clock);
    assert.deepEqual(second.a.lookup('keep'), [keep]);
    assert.deepEqual(second.a.lookup('gone'), [gone]);
    assert.equal(second.a.status().ring.seeded, true);
    assert.equal(second.a.free('gone'), 1);
    second.a.close();
    second.store.close();

    const third = make(dir, clock);
    assert.deepEqual(third.a.lookup('gone'), []);
    assert.deepEqual(third.a.lookup('keep'), [keep]);
    // the freed address comes back once the next-fit cursor wraps: fill a tiny subnet around it
    const sub = `${gone.split('.').slice(0, 3).join('.')}.0/24`;
    const seen = new Set<string>();
    for (let i = 0; i < 253; i++) seen.add(await settle(clock, third.a.allocate(`f${i}`, sub)));
    assert.ok(seen.has(gone), 'freed address was handed out again');
    assert.ok(!seen.has(keep), 'kept address never reissued');
    third.a.close();
    third.store.close();

    const logs = new MemoryLogger();
    const fourth = make(dir, clock, '10.40.0.0/16', logs);
    assert.deepEqual(fourth.a.lookup('keep'), []);
    assert.ok(logs.find((r) => r.level === 'warn' && /range changed/.test(String(r.msg))));
    fourth.a.close();
    fourth.store.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
