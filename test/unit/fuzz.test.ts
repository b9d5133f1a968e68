// Every fuzz target (test/fuzz/targets.ts: every decoder of hostile input) at 10^4 cases: no crash
// (anything thrown that is not the decoder's documented typed error, or a broken invariant) and no
// hang (one case past the budget: quadratic work on the large inputs shows up here). `npm run fuzz`
// runs the same targets to 10^6. The seed is random per run and printed; WEAVE_FUZZ_SEED=S replays a
// run, and each failure names the case: npm run fuzz -- --target T --seed S --from I --cases 1.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runCases } from '../fuzz/engine';
import { TARGETS } from '../fuzz/targets';

const SEED = process.env.WEAVE_FUZZ_SEED !== undefined ? Number(process.env.WEAVE_FUZZ_SEED) : Math.floor(Math.random() * 0x7fffffff);
const CASES = 10_000;
// a case is a decoder call on at most a few hundred KiB: even a loaded machine stays far below this,
// and quadratic work on the large inputs does not
const BUDGET_MS = 5000;

console.log(`fuzz seed ${SEED} (replay: WEAVE_FUZZ_SEED=${SEED})`);

for (const t of TARGETS) {
  test(`fuzz ${t.name}: ${CASES} cases, no crash, no hang (seed ${SEED})`, async () => {
    let st;
    try {
      st = await runCases(t, { seed: SEED, cases: CASES, budgetMs: BUDGET_MS, keep: 3 });
    } finally {
      await t.close?.();
    }
    const found = st.findings.map((f) => `${f.kind} at case ${f.index}: ${f.error}\n  input: ${f.input.slice(0, 400)}\n  replay: npm run fuzz -- --target ${t.name} --seed ${SEED} --from ${f.index} --cases 1`).join('\n');
    assert.equal(st.cases, CASES);
    assert.equal(st.crashes + st.hangs, 0, `${st.crashes} crashes, ${st.hangs} hangs in ${t.name}:\n${found}`);
  });
}
