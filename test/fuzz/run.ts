// `npm run fuzz`: drives every decoder of hostile input (test/fuzz/targets.ts) to N cases each.
//
//   npm run fuzz -- [--cases N] [--target a,b] [--seed S] [--from I] [--jobs J] [--budget MS] [--slice K] [--list]
//
// --slice K runs the targets round-robin, K cases of each per round (cases [from, from+K), then the
// next K ...): a campaign stopped early has given every target a similar share, not finished some and
// left the rest untouched.
//
// Each target runs in its own process, so a native crash (a signal) is a finding too, not the end of
// the run; in that process a watchdog thread sees a case that never returns (an endless loop: the
// JS thread cannot report it itself), prints it and kills the process; the runner then goes on from
// the next case (60 s of wall time: generous, as a niced run on a busy machine waits for the CPU).
// A case that returns after more than --budget ms of CPU time (default 1000) is a hang as well.
// At the end: one line per target (cases, crashes, hangs, seconds) and every finding with the
// command that replays it alone. Exit status 1 when anything was found.
import { fork } from 'child_process';
import * as fs from 'fs';
import { Worker } from 'worker_threads';
import { runCases, type Finding } from './engine';
import { TARGETS, targetNamed } from './targets';

interface Args { cases: number; targets: string[]; seed: number; from: number; jobs: number; budget: number; slice: number; child: boolean; list: boolean }

function parseArgs(argv: string[]): Args {
  const a: Args = { cases: 1_000_000, targets: [], seed: Math.floor(Math.random() * 0x7fffffff), from: 0, jobs: 1, budget: 1000, slice: 0, child: false, list: false };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = (): string => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${k} needs a value`);
      return x;
    };
    const n = (what: string, min: number): number => {
      const s = v();
      const x = Number(s);
      if (!Number.isSafeInteger(x) || x < min) throw new Error(`${what} must be an integer >= ${min}, not ${s}`);
      return x;
    };
    if (k === '--cases') a.cases = n('--cases', 1);
    else if (k === '--target') a.targets = v().split(',').filter(Boolean);
    else if (k === '--seed') a.seed = n('--seed', 0);
    else if (k === '--from') a.from = n('--from', 0);
    else if (k === '--jobs') a.jobs = n('--jobs', 1);
    else if (k === '--budget') a.budget = n('--budget', 1);
    else if (k === '--slice') a.slice = n('--slice', 1);
    else if (k === '--child') a.child = true;
    else if (k === '--list') a.list = true;
    else throw new Error(`unknown argument ${k} (see the top of test/fuzz/run.ts)`);
  }
  for (const t of a.targets) targetNamed(t);
  if (a.targets.length === 0) a.targets = TARGETS.map((t) => t.name);
  return a;
}

// ---- the child: one target, a watchdog thread --------------------------------------------------

type ChildMsg =
  | { t: 'progress'; next: number; cases: number; crashes: number; hangs: number }
  | { t: 'finding'; f: Finding }
  | { t: 'stuck'; index: number; ms: number }
  | { t: 'done'; cases: number; crashes: number; hangs: number };

const WATCHDOG = `
const { workerData } = require('worker_threads');
const fs = require('fs');
const view = new Float64Array(workerData.sab);
setInterval(() => {
  const started = view[1];
  if (started > 0 && Date.now() - started > workerData.stuckMs) {
    fs.writeSync(1, JSON.stringify({ t: 'stuck', index: view[0], ms: Date.now() - started }) + '\\n');
    process.kill(process.pid, 'SIGKILL');
  }
}, 250);
`;

async function child(a: Args): Promise<void> {
  const t = targetNamed(a.targets[0]);
  const send = (m: ChildMsg): void => { fs.writeSync(1, JSON.stringify(m) + '\n'); };
  const sab = new SharedArrayBuffer(16);
  const view = new Float64Array(sab);
  const wd = new Worker(WATCHDOG, { eval: true, workerData: { sab, stuckMs: Math.max(60_000, a.budget * 30) } });
  wd.unref();
  let cases = 0;
  let crashes = 0;
  let hangs = 0;
  let lastReport = Date.now();
  const st = await runCases(t, {
    seed: a.seed, from: a.from, cases: a.cases, budgetMs: a.budget, keep: 0,
    onCase(i) {
      view[0] = i;
      view[1] = Date.now();
      cases = i - a.from;
      if (cases % 256 === 0 && Date.now() - lastReport > 2000) {
        lastReport = Date.now();
        send({ t: 'progress', next: i, cases, crashes, hangs });
      }
    },
    onFinding(f) {
      if (f.kind === 'crash') crashes++;
      else hangs++;
      send({ t: 'finding', f });
    },
  });
  view[1] = 0;
  send({ t: 'done', cases: st.cases, crashes: st.crashes, hangs: st.hangs });
  await wd.terminate();
  process.exit(0);
}

// ---- the parent: a child per target (and after each child that died), the table -----------------

interface Row { target: string; cases: number; crashes: number; hangs: number; seconds: number; findings: Finding[]; notes: string[] }

function runTarget(a0: Args, name: string, progress: (r: Row) => void): Promise<Row> {
  const a = a0; // from/cases of this run (a slice of the campaign when --slice)
  const row: Row = { target: name, cases: 0, crashes: 0, hangs: 0, seconds: 0, findings: [], notes: [] };
  const t0 = Date.now();
  return new Promise((resolve) => {
    const start = (from: number): void => {
      const remaining = a.cases - (from - a.from);
      if (remaining <= 0) {
        row.seconds = (Date.now() - t0) / 1000;
        resolve(row);
        return;
      }
      const base = { cases: row.cases, crashes: row.crashes, hangs: row.hangs };
      let last: { next: number; cases: number } = { next: from, cases: 0 };
      let done = false;
      let stuck: { index: number; ms: number } | undefined;
      const p = fork(__filename, ['--child', '--target', name, '--seed', String(a.seed), '--from', String(from), '--cases', String(remaining), '--budget', String(a.budget)], { stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
      let buf = '';
      let errText = '';
      p.stderr!.on('data', (d: Buffer) => { errText = (errText + d.toString()).slice(-4000); });
      p.stdout!.on('data', (d: Buffer) => {
        buf += d.toString();
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          let m: ChildMsg;
          try {
            m = JSON.parse(line) as ChildMsg;
          } catch {
            continue; // a target's own output
          }
          if (m.t === 'progress') {
            last = m;
            row.cases = base.cases + m.cases;
            progress(row);
          } else if (m.t === 'finding') {
            if (m.f.kind === 'crash') row.crashes++;
            else row.hangs++;
            // at once too: a long campaign stopped early still shows what it found
            console.log(`  ! ${m.f.kind} in ${name} at case ${m.f.index}: ${m.f.error.split('\n')[0].slice(0, 200)}`);
            if (row.findings.length < 20) row.findings.push(m.f);
          } else if (m.t === 'stuck') {
            stuck = m;
          } else if (m.t === 'done') {
            done = true;
            row.cases = base.cases + m.cases;
          }
        }
      });
      p.on('exit', (code, signal) => {
        if (done && code === 0) return start(a.from + a.cases); // finished
        if (stuck) {
          row.hangs++;
          row.cases = base.cases + (stuck.index - from) + 1;
          if (row.findings.length < 20) row.findings.push({ kind: 'hang', index: stuck.index, error: `never returned (killed after ${stuck.ms} ms)`, input: '', ms: stuck.ms });
          return start(stuck.index + 1);
        }
        // the process died under a case: a crash somewhere after the last progress report
        row.crashes++;
        row.cases = base.cases + last.cases;
        const note = `process died (${signal ?? `exit ${code}`}) in cases ${last.next}.. of this run: ${errText.trim().split('\n').slice(-5).join(' | ')}`;
        row.notes.push(note);
        if (row.findings.length < 20) row.findings.push({ kind: 'crash', index: last.next, error: note, input: '', ms: 0 });
        start(Math.max(last.next + 1, from + 1));
      });
    };
    start(a.from);
  });
}

async function parent(a: Args): Promise<void> {
  console.log(`fuzz: ${a.targets.length} targets x ${a.cases} cases, seed ${a.seed}, budget ${a.budget} ms per case, ${a.jobs} at a time`);
  const queue: string[] = [];
  const rows = new Map<string, Row>();
  let lastPrint = 0;
  const progress = (r: Row): void => {
    if (Date.now() - lastPrint < 30_000) return;
    lastPrint = Date.now();
    console.log(`  ... ${r.target}: ${r.cases} cases, ${r.crashes} crashes, ${r.hangs} hangs`);
  };
  const slice = a.slice > 0 ? a.slice : a.cases;
  const merge = (name: string, r: Row): Row => {
    const t = rows.get(name);
    if (!t) return r;
    t.cases += r.cases;
    t.crashes += r.crashes;
    t.hangs += r.hangs;
    t.seconds += r.seconds;
    t.findings.push(...r.findings.slice(0, Math.max(0, 20 - t.findings.length)));
    t.notes.push(...r.notes);
    return t;
  };
  for (let from = a.from; from < a.from + a.cases; from += slice) {
    const part: Args = { ...a, from, cases: Math.min(slice, a.from + a.cases - from) };
    queue.push(...a.targets);
    const worker = async (): Promise<void> => {
      for (let name = queue.shift(); name; name = queue.shift()) {
        const r = merge(name, await runTarget(part, name, progress));
        rows.set(name, r);
        console.log(`${pad(name, 26)} ${pad(String(r.cases), 9)} cases  ${pad(String(r.crashes), 4)} crashes  ${pad(String(r.hangs), 4)} hangs  ${r.seconds.toFixed(1)} s`);
      }
    };
    await Promise.all(Array.from({ length: Math.min(a.jobs, queue.length) }, worker));
  }
  console.log('\ntarget                     cases      crashes  hangs  seconds');
  let bad = 0;
  for (const name of a.targets) {
    const r = rows.get(name)!;
    bad += r.crashes + r.hangs;
    console.log(`${pad(name, 26)} ${pad(String(r.cases), 10)} ${pad(String(r.crashes), 8)} ${pad(String(r.hangs), 6)} ${r.seconds.toFixed(1)}`);
  }
  for (const name of a.targets) {
    for (const f of rows.get(name)!.findings) {
      console.log(`\n${f.kind} in ${name} at case ${f.index}: ${f.error}\n  input: ${f.input || '(see above)'}\n  replay: npm run fuzz -- --target ${name} --seed ${a.seed} --from ${f.index} --cases 1`);
    }
  }
  process.exitCode = bad > 0 ? 1 : 0;
}

function pad(s: string, n: number): string {
  return s.length >= n ? s : s + ' '.repeat(n - s.length);
}

const args = parseArgs(process.argv.slice(2));
if (args.list) console.log(TARGETS.map((t) => t.name).join('\n'));
else if (args.child) void child(args);
else void parent(args);
