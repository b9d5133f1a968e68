// The fuzzing loop itself (test/fuzz/engine.ts): what it counts as a crash and as a hang, that a
// case replays alone from (seed, target, index), and that the runner finds a planted bug. Without
// this, test/unit/fuzz.test.ts could pass because the loop saw nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'child_process';
import * as path from 'path';
import { makeInput, runCases, type Target } from '../fuzz/engine';
import { ProtocolError } from '../../lib/errors';

function target(run: (b: Uint8Array) => void): Target {
  return { name: 'planted', seeds: () => [Buffer.from('seed-message')], run, expected: (e) => e instanceof ProtocolError };
}

test('a documented error is no finding; anything else thrown is a crash, with the case that replays it', async () => {
  const st = await runCases(target((b) => {
    if (b.length > 3 && b[0] === 0x73) throw new ProtocolError('refused'); // "s...": the seed and mutations of it
    if (b.length === 0) throw new TypeError('planted bug');
  }), { seed: 1, cases: 2000 });
  assert.equal(st.cases, 2000);
  assert.ok(st.crashes > 0, 'empty inputs occur (truncations, random bytes of length 0)');
  assert.equal(st.hangs, 0);
  const f = st.findings[0];
  assert.equal(f.kind, 'crash');
  assert.match(f.error, /TypeError: planted bug/);
  assert.equal(makeInput(target(() => {}), 1, f.index).input.length, 0, 'the reported case replays to the same input');
});

test('a case over the CPU budget is a hang (quadratic work shows)', async () => {
  const st = await runCases(target((b) => {
    if (b.length < 20_000) return;
    let x = 0;
    for (let i = 0; i < b.length; i++) for (let j = 0; j < b.length; j += 4) x ^= i + j; // quadratic on large inputs
    if (x === -1) throw new Error('unreachable');
  }), { seed: 2, cases: 1000, budgetMs: 50 });
  assert.ok(st.hangs >= 1, 'the large case (index 999) takes far more than 50 ms of CPU');
  assert.equal(st.findings.find((f) => f.kind === 'hang')?.index, 999);
});

test('the same seed gives the same inputs; another seed others', () => {
  const t = target(() => {});
  const a = Array.from({ length: 50 }, (_, i) => Buffer.from(makeInput(t, 7, i).input).toString('hex'));
  const b = Array.from({ length: 50 }, (_, i) => Buffer.from(makeInput(t, 7, i).input).toString('hex'));
  const c = Array.from({ length: 50 }, (_, i) => Buffer.from(makeInput(t, 8, i).input).toString('hex'));
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
});

test('npm run fuzz: a target runs in its own process and the table counts its cases', () => {
  const run = path.join(__dirname, '..', 'fuzz', 'run.js');
  const out = execFileSync(process.execPath, [run, '--target', 'hello,dns-udp', '--cases', '300', '--seed', '5', '--jobs', '2'], { encoding: 'utf8', timeout: 120_000 });
  assert.match(out, /^hello\s+300\s+0\s+0\s/m);
  assert.match(out, /^dns-udp\s+300\s+0\s+0\s/m);
});
