// What one `weave launch` costs until the router is ready: the child processes it spawns (counted
// with strace, by command) and the wall time of the CLI (it returns when the router says "ready" over
// the IPC channel). Encrypted, alone (no peers), in a fresh lab host per run, for each flag set.
//   child processes  every execve under the CLI until it returns (the router is followed too; what it
//                    execs after "ready" is left out), by command, one strace run per flag set
//   launch           median and each of --runs launches without strace (each followed by weave stop)
// --baseline DIR: the same for another build's weave.js (e.g. a copy of dist/ made before a change),
// its runs interleaved with this build's so a busy machine slows both alike.
// Run: flock /tmp/weave-bench.lock node dist/bench/launch.js [--runs 5] [--baseline dist-before]
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { Lab, WEAVE_JS, type Host } from '../test/lab/lab';
import type { RunResult } from '../test/lab/exec';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
}

const ENV = { WEAVE_PASSWORD: 'bench' };
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** The command an execve line starts, by the program's base name (`ip -batch -` is `ip -batch`). */
function commandOf(line: string): string | undefined {
  const m = /execve\("([^"]+)", \[(.*?)\]/.exec(line);
  if (!m || / = -1 /.test(line)) return undefined; // PATH lookups that missed
  const argv = [...m[2].matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((x) => x[1]);
  const prog = path.basename(m[1]);
  if (prog === 'ip') {
    // what ip does: -batch, netns exec, or the object (link, addr, route ...) with -json when reading
    const rest = argv.slice(1).filter((a, i, all) => !(a === '-n' || all[i - 1] === '-n'));
    const json = rest.includes('-json') ? ' -json' : '';
    const words = rest.filter((a) => !a.startsWith('-'));
    if (rest.includes('-batch')) return 'ip -batch';
    return `ip${json} ${words.slice(0, 2).join(' ')}`;
  }
  if (prog === 'nft') return `nft ${argv.slice(1).filter((a) => a !== '-j').slice(0, 2).join(' ')}${argv.includes('-j') ? ' (-j)' : ''}`;
  return prog;
}

function weave(host: Host, js: string, args: string[]): Promise<RunResult> {
  return host.exec([process.execPath, '--enable-source-maps', js, ...args], { env: host.env(ENV), timeoutMs: 120_000 });
}

/** One launch under strace -f: the commands exec'd until the CLI process exited. */
async function countChildren(host: Host, js: string, flags: string[]): Promise<Map<string, number>> {
  const out = path.join(host.lab.tmp, `strace-${host.name}.txt`);
  // strace follows the detached router too and exits with it: wait for the CLI's own exit line
  const child = spawn('ip', ['netns', 'exec', host.ns, 'strace', '-f', '-e', 'trace=execve', '-e', 'signal=none', '-o', out,
    process.execPath, '--enable-source-maps', js, 'launch', ...flags], { env: host.env(ENV), stdio: 'ignore' });
  const started = Date.now();
  let firstPid: string | undefined;
  for (;;) {
    await new Promise((r) => setTimeout(r, 100));
    const text = fs.existsSync(out) ? fs.readFileSync(out, 'utf8') : '';
    firstPid ??= /^(\d+)\s+execve/m.exec(text)?.[1];
    if (firstPid && new RegExp(`^${firstPid}\\s+\\+\\+\\+ exited`, 'm').test(text)) break;
    if (Date.now() - started > 300_000) throw new Error(`launch under strace did not return within 300 s (${out})`);
  }
  const text = fs.readFileSync(out, 'utf8');
  await weave(host, js, ['stop']);
  await new Promise<void>((r) => (child.exitCode !== null ? r() : child.on('exit', () => r())));
  // up to the CLI's exit: what the router does later (its first timers) is not start-up
  const upTo = text.slice(0, text.search(new RegExp(`^${firstPid}\\s+\\+\\+\\+ exited`, 'm')));
  const counts = new Map<string, number>();
  for (const line of upTo.split('\n')) {
    const c = commandOf(line);
    if (c) counts.set(c, (counts.get(c) ?? 0) + 1);
  }
  return counts;
}

async function timeLaunch(host: Host, js: string, flags: string[]): Promise<number> {
  const t0 = process.hrtime.bigint();
  await weave(host, js, ['launch', ...flags]);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  await weave(host, js, ['stop']);
  return ms;
}

async function main(): Promise<void> {
  const runs = Number(arg('runs', '5'));
  const baseline = arg('baseline', '');
  const builds: Array<[string, string]> = [...(baseline ? [['baseline', path.resolve(baseline, 'weave.js')] as [string, string]] : []), ['this build', WEAVE_JS]];
  const sets: Array<[string, string[]]> = [['default', []], ['--no-dns', ['--no-dns']]];
  const lab = await Lab.create();
  try {
    let n = 0;
    for (const [label, flags] of sets) {
      const ms = new Map<string, number[]>(builds.map(([b]) => [b, []]));
      for (const [b, js] of builds) {
        const counts = await countChildren(await lab.addHost(`s${n++}`), js, flags);
        const total = [...counts.values()].reduce((x, y) => x + y, 0);
        const node = counts.get('node') ?? 0;
        console.log(`## ${label}, ${b}: ${total} execs until ready (${node} node: the CLI and the router; ${total - node} others)`);
        for (const [c, k] of [...counts].sort((x, y) => y[1] - x[1] || (x[0] < y[0] ? -1 : 1))) console.log(`  ${String(k).padStart(3)}  ${c}`);
      }
      for (let i = 0; i < runs; i++) {
        for (const [b, js] of builds) ms.get(b)!.push(await timeLaunch(await lab.addHost(`t${n++}`), js, flags));
      }
      for (const [b, xs] of ms) console.log(`## ${label}, ${b}: launch to ready median ${median(xs).toFixed(0)} ms (${xs.map((x) => x.toFixed(0)).join(', ')})`);
    }
  } finally {
    await lab.cleanup();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
