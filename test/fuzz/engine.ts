// The fuzzing loop shared by `npm run fuzz` (test/fuzz/run.ts, 10^6 cases per target, each target in
// its own process with a watchdog) and `npm test` (test/unit/fuzz.test.ts, 10^4 in process).
// A case is (seed, target, index): caseRng makes its input from nothing else, so one case replays
// alone (`npm run fuzz -- --target T --seed S --from I --cases 1`).
//   crash: the decoder threw something other than its documented typed error (target.expected), or
//          broke an invariant the target checks on what it decoded;
//   hang:  one case took more CPU time than the budget (quadratic work on a large input shows up
//          here). CPU time, not wall time: on a loaded machine a niced fuzzer waits for the CPU far
//          longer than it computes, and that is not the decoder's doing.
import { caseRng, int, mutate, randomBytes, type Rng } from './mutate';
import { errMsg } from '../../lib/errors';

export interface Target {
  name: string;
  /** valid inputs made with the project's own encoders (mutation starts from these) */
  seeds(): Uint8Array[];
  /** a structured input (a value with the right keys and wrong shapes, encoded) */
  structured?(r: Rng): Uint8Array;
  /** a large input (quadratic behaviour); default: a mutated seed repeated */
  large?(r: Rng): Uint8Array;
  /** feeds one input to the decoder; throws what the decoder throws */
  run(input: Uint8Array, r: Rng): void | Promise<void>;
  /** the decoder's documented refusal (anything else thrown is a crash) */
  expected(e: unknown): boolean;
  /** releases what run() opened (a listening socket) */
  close?(): Promise<void>;
}

export interface Finding { kind: 'crash' | 'hang'; index: number; error: string; input: string; ms: number }

export interface RunStats { cases: number; crashes: number; hangs: number; ms: number; findings: Finding[] }

export interface RunOptions {
  seed: number;
  from?: number;
  cases: number;
  /** one case using more CPU time than this (ms) is a hang */
  budgetMs?: number;
  /** one case in `largeEvery` is large */
  largeEvery?: number;
  /** called at each case start (the watchdog's view) */
  onCase?: (index: number) => void;
  /** findings kept in full (counts are always complete) */
  keep?: number;
  /** told of every finding as it happens */
  onFinding?: (f: Finding) => void;
}

const seedCache = new Map<string, Uint8Array[]>();

function seedsOf(t: Target): Uint8Array[] {
  let s = seedCache.get(t.name);
  if (!s) {
    s = t.seeds();
    if (s.length === 0) throw new Error(`fuzz target ${t.name} has no seeds`);
    seedCache.set(t.name, s);
  }
  return s;
}

/** The input of case `index` of target t. */
export function makeInput(t: Target, seed: number, index: number, largeEvery = 1000): { input: Uint8Array; r: Rng } {
  const r = caseRng(seed, t.name, index);
  const seeds = seedsOf(t);
  let input: Uint8Array;
  if (index % largeEvery === largeEvery - 1) {
    input = t.large ? t.large(r) : Buffer.concat(Array.from({ length: 200 + int(r, 2000) }, () => mutate(r, seeds)));
  } else {
    const k = r();
    if (k < 0.05) input = seeds[int(r, seeds.length)]; // the valid seeds themselves must pass
    else if (k < 0.65) input = mutate(r, seeds);
    else if (k < 0.85 && t.structured) input = t.structured(r);
    else input = randomBytes(r, int(r, 8) === 0 ? int(r, 4096) : int(r, 64));
  }
  return { input, r };
}

function describeError(e: unknown): string {
  if (e instanceof Error) return `${e.name}: ${e.message.slice(0, 300)}${e.stack ? `\n${e.stack.split('\n').slice(1, 6).join('\n')}` : ''}`;
  try {
    return `non-Error thrown: ${typeof e} ${JSON.stringify(e)?.slice(0, 200)}`;
  } catch {
    return `non-Error thrown: ${typeof e}`;
  }
}

function hexOf(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, Math.min(b.length, 512)).toString('hex') + (b.length > 512 ? `...(${b.length} bytes)` : '');
}

/** Runs cases [from, from + cases) of target t. Awaits only targets whose run returns a promise. */
export async function runCases(t: Target, o: RunOptions): Promise<RunStats> {
  const budget = o.budgetMs ?? 1000;
  const keep = o.keep ?? 20;
  const from = o.from ?? 0;
  const st: RunStats = { cases: 0, crashes: 0, hangs: 0, ms: 0, findings: [] };
  const t0 = performance.now();
  let lastYield = t0;
  for (let i = from; i < from + o.cases; i++) {
    o.onCase?.(i);
    const { input, r } = makeInput(t, o.seed, i, o.largeEvery);
    const c0 = performance.now();
    const cpu0 = process.cpuUsage();
    let err: unknown;
    let threw = false;
    try {
      const p = t.run(input, r);
      if (p) await p;
    } catch (e) {
      threw = true;
      err = e;
    }
    const wall = performance.now() - c0;
    const cpu = process.cpuUsage(cpu0);
    const ms = (cpu.user + cpu.system) / 1000;
    st.cases++;
    if (threw && !safeExpected(t, err)) {
      st.crashes++;
      note(st, o, keep, { kind: 'crash', index: i, error: describeError(err), input: hexOf(input), ms });
    } else if (ms > budget) {
      st.hangs++;
      note(st, o, keep, { kind: 'hang', index: i, error: `took ${ms.toFixed(0)} ms of CPU (${wall.toFixed(0)} ms wall, budget ${budget} ms) on ${input.length} bytes${threw ? `, then threw ${errMsg(err).slice(0, 100)}` : ''}`, input: hexOf(input), ms });
    }
    // let timers and I/O of the targets that use them run now and then
    if (performance.now() - lastYield > 200) {
      await new Promise((res) => setImmediate(res));
      lastYield = performance.now();
    }
  }
  st.ms = performance.now() - t0;
  return st;
}

function note(st: RunStats, o: RunOptions, keep: number, f: Finding): void {
  if (st.findings.length < keep) st.findings.push(f);
  o.onFinding?.(f);
}

function safeExpected(t: Target, e: unknown): boolean {
  try {
    return t.expected(e);
  } catch {
    return false;
  }
}
