import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { REPLAY_WINDOW, ReplayVerdict, ReplayWindow } from '../../router/replay';

test('accepts fresh counters, drops duplicates', () => {
  const w = new ReplayWindow();
  for (const c of [0, 1, 2, 5, 3]) assert.equal(w.update(c), ReplayVerdict.Ok, `counter ${c}`);
  for (const c of [0, 1, 2, 5, 3]) assert.equal(w.check(c), ReplayVerdict.Duplicate, `dup ${c}`);
  assert.equal(w.check(4), ReplayVerdict.Ok);
  assert.equal(w.highest, 5);
});

test('too-old counters are dropped once the window slides past them', () => {
  const w = new ReplayWindow();
  w.update(10);
  const top = 10 + REPLAY_WINDOW + 100;
  w.update(top);
  assert.equal(w.check(10), ReplayVerdict.TooOld);
  assert.equal(w.check(top - REPLAY_WINDOW), ReplayVerdict.TooOld);
  assert.equal(w.check(top - REPLAY_WINDOW + 1), ReplayVerdict.Ok, 'just inside the window');
  assert.equal(w.update(top - REPLAY_WINDOW + 1), ReplayVerdict.Ok);
  assert.equal(w.update(top - REPLAY_WINDOW + 1), ReplayVerdict.Duplicate);
});

test('a huge jump clears the whole ring and counters near 2^53 work', () => {
  const w = new ReplayWindow();
  for (let c = 0; c < 3000; c++) w.update(c);
  const big = Number.MAX_SAFE_INTEGER - 5;
  assert.equal(w.update(big), ReplayVerdict.Ok);
  assert.equal(w.check(big - 1), ReplayVerdict.Ok, 'bits of the old ring must not leak into the new window');
  assert.equal(w.update(big - 1), ReplayVerdict.Ok);
  assert.equal(w.update(big - 1), ReplayVerdict.Duplicate);
  assert.equal(w.check(2999), ReplayVerdict.TooOld);
});

test('fuzz: matches a set-based oracle on random sequences', () => {
  fc.assert(
    fc.property(
      fc.array(fc.oneof(fc.integer({ min: 0, max: 5000 }), fc.integer({ min: 0, max: 200 })), { maxLength: 400 }),
      (seq) => {
        const w = new ReplayWindow();
        const seen = new Set<number>();
        let top = -1;
        for (const c of seq) {
          let want: ReplayVerdict;
          if (c > top) want = ReplayVerdict.Ok;
          else if (top - c >= REPLAY_WINDOW) want = ReplayVerdict.TooOld;
          else want = seen.has(c) ? ReplayVerdict.Duplicate : ReplayVerdict.Ok;
          assert.equal(w.check(c), want, `check ${c} top ${top}`);
          assert.equal(w.update(c), want, `update ${c} top ${top}`);
          if (want === ReplayVerdict.Ok) {
            seen.add(c);
            top = Math.max(top, c);
          }
        }
      },
    ),
    { numRuns: 300 },
  );
});
