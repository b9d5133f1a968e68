// ReconcileLoop and LoopedReconciler with a fake clock and hand-resolved passes: debounce, sharing,
// queueing, the explicit run that replaces a pending debounced one, and failure bookkeeping.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeClock } from '../../lib/clock';
import { MemoryLogger } from '../../lib/log';
import { LoopedReconciler, ReconcileLoop, type ReconcileStats } from '../../host/reconcile-loop';

/** Passes that finish only when the test says so. */
interface Passes { fn: () => Promise<number>; started: number; finish: (v?: number) => Promise<void>; fail: (e: Error) => Promise<void> }
function passes(): Passes {
  const pending: Array<{ res: (v: number) => void; rej: (e: Error) => void }> = [];
  const o: Passes = {
    started: 0,
    fn: () => new Promise<number>((res, rej) => { o.started++; pending.push({ res, rej }); }),
    finish: async (v = o.started) => { pending.shift()!.res(v); await flush(); },
    fail: async (e: Error) => { pending.shift()!.rej(e); await flush(); },
  };
  return o;
}

async function flush(): Promise<void> {
  for (let i = 0; i < 10; i++) await Promise.resolve();
}

test('a burst of schedule() calls is one pass after the debounce', async () => {
  const clock = new FakeClock();
  const p = passes();
  const loop = new ReconcileLoop(clock, 20, p.fn);
  for (let i = 0; i < 5; i++) loop.schedule();
  clock.advance(19);
  assert.equal(p.started, 0);
  clock.advance(1);
  assert.equal(p.started, 1);
  await p.finish();
  clock.advance(100);
  assert.equal(p.started, 1, 'nothing more without a change');
});

test('run() while a pass runs queues exactly one more, shared by every caller', async () => {
  const clock = new FakeClock();
  const p = passes();
  const loop = new ReconcileLoop(clock, 20, p.fn);
  const first = loop.run();
  const a = loop.run();
  const b = loop.run();
  assert.equal(p.started, 1);
  await p.finish(1);
  assert.equal(await first, 1);
  assert.equal(p.started, 2, 'the queued pass starts when the running one ends');
  await p.finish(2);
  assert.equal(await a, 2);
  assert.equal(await b, 2);
});

test('an explicit run() replaces a pending debounced pass (its caller gets the counts of the pass that applied the change)', async () => {
  const clock = new FakeClock();
  const p = passes();
  const loop = new ReconcileLoop(clock, 20, p.fn);
  loop.schedule();
  const r = loop.run();
  clock.advance(1000);
  assert.equal(p.started, 1, 'the debounced pass was cancelled');
  await p.finish(7);
  assert.equal(await r, 7);
  assert.equal(p.started, 1);
});

test('LoopedReconciler counts passes and failures, logs each failure once, and retries on the interval', async () => {
  const clock = new FakeClock();
  const log = new MemoryLogger();
  const p = passes();
  class R extends LoopedReconciler<number, ReconcileStats & { extra: number }> {
    constructor() { super(clock, 20, { runs: 0, errors: 0, extra: 0 }, { log, what: 'test' }); }
    protected runOnce(): Promise<number> { return p.fn(); }
  }
  const r = new R();
  const bad = r.reconcile();
  await p.fail(new Error('boom'));
  await assert.rejects(bad, /boom/);
  assert.deepEqual(r.stats(), { runs: 1, errors: 1, lastError: 'boom', extra: 0 });
  assert.equal(log.records.filter((x) => x.msg === 'test reconcile failed (will retry on the next change or tick)').length, 1);
  r.start(1000);
  assert.equal(p.started, 2);
  await p.finish();
  clock.advance(1000);
  assert.equal(p.started, 3, 'the interval runs another pass');
  await p.finish();
  r.stop();
  clock.advance(5000);
  assert.equal(p.started, 3, 'stopped: no more passes');
  assert.equal(r.stats().runs, 3);
});
