// The one place that runs iproute2, sysctl and nft. Everything that changes kernel state goes through
// these helpers, so the caller's namespace choice (HostCtx) is applied the same way everywhere and every
// failure becomes a HostError carrying the command and the kernel's own words (stderr).
import { spawn } from 'child_process';
import * as fs from 'fs';
import { WeaveError } from '../lib/errors';

/**
 * Where a command runs. `netns` is either a named namespace (`ip netns` name: commands become
 * `ip -n NS ...`, `ip netns exec NS ...`) or an absolute path to a namespace file (`/proc/PID/ns/net`,
 * a bind mount): commands then run under `nsenter --net=PATH`, because `ip -n` only takes names.
 * undefined = the namespace this process lives in (the router runs inside its host's namespace).
 */
export interface HostCtx {
  netns?: string;
  /** while set (the router's start-up), reads are shared between writes: see ReadCache */
  reads?: ReadCache;
}

// Bumped by every command that is not a cached read: any write, through any ctx, may change what a
// read in another ctx returns (a veth's container end set up changes its host end), so a cached
// read is only good while this has not moved. Kernel state is process-wide; so is this count.
let writeEpoch = 0;

/** For kernel changes made without a command (the sleeve's TUN is made by an ioctl): cached reads are stale. */
export function kernelChanged(): void {
  writeEpoch++;
}

/**
 * The router's start-up reads the same kernel state over and over: each part lists the links, our
 * routes or the nft table as it starts, mostly with no write in between (a launch ran 13 `ip -json
 * link show`, 8 route and 5 nft reads). While a cache is set on the ctx, a read returns the result
 * of the same read made since the last write instead of a new process. The router drops the cache
 * once it is ready: its reconcile loops must see what others change in the kernel.
 */
export class ReadCache {
  private readonly results = new Map<string, { epoch: number; result: Promise<ExecResult> }>();
  hits = 0;
  misses = 0;

  read(argv: string[], run: () => Promise<ExecResult>): Promise<ExecResult> {
    const key = argv.join('\0');
    const hit = this.results.get(key);
    if (hit && hit.epoch === writeEpoch) {
      this.hits++;
      return hit.result;
    }
    this.misses++;
    const result = run();
    this.results.set(key, { epoch: writeEpoch, result });
    // a failed read is not kept: the next caller tries again
    result.catch(() => { if (this.results.get(key)?.result === result) this.results.delete(key); });
    return result;
  }
}

export class HostError extends WeaveError {
  constructor(message: string, context: { command: string; stderr: string; code?: number | null; [k: string]: unknown }, options?: { cause?: unknown }) {
    super('EHOST', message, context, options);
    this.name = 'HostError';
  }
  get stderr(): string { return String(this.context.stderr ?? ''); }
  get command(): string { return String(this.context.command ?? ''); }
}

export interface ExecResult { code: number | null; stdout: string; stderr: string }

const DEFAULT_TIMEOUT_MS = 30_000;

/**
 * Runs argv, feeding input on stdin; rejects with HostError on a non-zero exit (unless allowFail).
 * Every command counts as a write for the read caches, except those readHost runs.
 */
export function execHost(argv: string[], opts: { input?: string; allowFail?: boolean; timeoutMs?: number; read?: boolean } = {}): Promise<ExecResult> {
  // before and after: a read made while the command runs may see the kernel before or after it
  if (!opts.read) writeEpoch++;
  return new Promise<ExecResult>((resolve, reject) => {
    const command = argv.join(' ');
    const child = spawn(argv[0], argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    child.on('error', (e) => {
      clearTimeout(timer);
      if (!opts.read) writeEpoch++;
      reject(new HostError(`cannot run ${argv[0]}: ${e.message}`, { command, stderr: '' }));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (!opts.read) writeEpoch++;
      if (code !== 0 && !opts.allowFail) {
        const why = stderr.trim() || stdout.trim() || (signal ? `killed by ${signal}` : `exit ${code}`);
        reject(new HostError(`${command}: ${why}`, { command, stderr: stderr.trim(), code, input: opts.input }));
        return;
      }
      resolve({ code, stdout, stderr });
    });
    // EPIPE when the command exits before reading stdin is reported through 'close' with its own error.
    child.stdin.on('error', () => { /* the exit status carries the failure */ });
    child.stdin.end(opts.input ?? '');
  });
}

/** A command that only reads kernel state: shared through ctx.reads while it is set. */
export function readHost(ctx: HostCtx, argv: string[], opts: { allowFail?: boolean } = {}): Promise<ExecResult> {
  const run = (): Promise<ExecResult> => execHost(argv, { ...opts, read: true });
  if (!ctx.reads) return run();
  // allowFail and not are two reads: one resolves with a failure the other rejects with
  return ctx.reads.read(opts.allowFail ? [...argv, '(allowFail)'] : argv, run);
}

function isPath(ns: string): boolean { return ns.startsWith('/'); }

/** argv prefix that runs a non-ip program inside ctx's namespace. */
export function nsPrefix(ctx: HostCtx): string[] {
  if (ctx.netns === undefined) return [];
  if (isPath(ctx.netns)) return ['nsenter', `--net=${ctx.netns}`, '--'];
  return ['ip', 'netns', 'exec', ctx.netns];
}

function ipArgv(ctx: HostCtx, args: string[]): string[] {
  if (ctx.netns === undefined) return ['ip', ...args];
  if (isPath(ctx.netns)) return ['nsenter', `--net=${ctx.netns}`, '--', 'ip', ...args];
  return ['ip', '-n', ctx.netns, ...args];
}

export async function ip(ctx: HostCtx, args: string[]): Promise<string> {
  return (await execHost(ipArgv(ctx, args))).stdout;
}

/**
 * One form per question, so the start-up cache shares reads that ask the same thing in other words:
 * link lists always with details (a superset), route lists without `-4` and `table main` (the
 * defaults of `ip route show`).
 */
function canonicalRead(args: string[]): string[] {
  const a = args.filter((x) => x !== '-d' && x !== '-details');
  const obj = a.findIndex((x) => !x.startsWith('-'));
  if (a[obj] === 'link' && a[obj + 1] === 'show') return ['-details', ...a];
  if (a[obj] === 'route' && a[obj + 1] === 'show') {
    const out = a.filter((x) => x !== '-4');
    const t = out.indexOf('table');
    if (t > 0 && out[t + 1] === 'main') out.splice(t, 2);
    return out;
  }
  return args;
}

/** `ip -json ARGS`, parsed. An empty answer (ip prints nothing when nothing matches) is []. */
export async function ipJson<T = unknown>(ctx: HostCtx, args: string[]): Promise<T> {
  const argv = ipArgv(ctx, ['-json', ...(ctx.reads ? canonicalRead(args) : args)]);
  const out = (await readHost(ctx, argv)).stdout.trim();
  if (out === '') return [] as unknown as T;
  try {
    return JSON.parse(out) as T;
  } catch (e) {
    throw new HostError(`${argv.join(' ')}: unparsable JSON: ${(e as Error).message}`, { command: argv.join(' '), stderr: '', stdout: out.slice(0, 500) }, { cause: e });
  }
}

/**
 * Many changes in one `ip -batch -` process. With force, ip carries on past failing lines and reports
 * them all at the end (a HostError whose stderr lists each); without, it stops at the first.
 */
export async function ipBatch(ctx: HostCtx, lines: string[], opts: { force?: boolean } = {}): Promise<void> {
  if (lines.length === 0) return;
  for (const l of lines) {
    if (/[\n\r]/.test(l)) throw new HostError('ip batch line contains a newline', { command: 'ip -batch -', stderr: '', line: l });
  }
  const args = opts.force ? ['-force', '-batch', '-'] : ['-batch', '-'];
  const argv = ipArgv(ctx, args);
  const input = lines.join('\n') + '\n';
  const r = await execHost(argv, { input, allowFail: true });
  if (r.code === 0) return;
  const failed = batchFailures(r.stderr, lines);
  const what = failed.length ? failed.map((f) => `line ${f.line} "${f.text}": ${f.error}`).join('; ') : r.stderr.trim() || `exit ${r.code}`;
  throw new HostError(`${argv.join(' ')}: ${what}`, { command: argv.join(' '), stderr: r.stderr.trim(), code: r.code, input, failed });
}

/**
 * Which lines of a batch failed and why: ip prints the kernel's complaint, then `Command failed -:N`
 * (N counts from 1), once per failed line with -force.
 */
export function batchFailures(stderr: string, lines: string[]): Array<{ line: number; text: string; error: string }> {
  const out: Array<{ line: number; text: string; error: string }> = [];
  let said: string[] = [];
  for (const l of stderr.split('\n')) {
    const m = /^Command failed -:(\d+)\s*$/.exec(l.trim());
    if (!m) {
      if (l.trim()) said.push(l.trim());
      continue;
    }
    const line = Number(m[1]);
    out.push({ line, text: lines[line - 1] ?? '', error: said.join(' ') || 'failed' });
    said = [];
  }
  return out;
}

/** Sets a sysctl in ctx's namespace. key in dotted or slashed form; interface names may not contain dots. */
export async function sysctl(ctx: HostCtx, key: string, value: string | number): Promise<void> {
  const rel = key.includes('/') ? key.replace(/^\/+/, '') : key.split('.').join('/');
  if (!/^[A-Za-z0-9_\-/]+$/.test(rel) || rel.includes('..')) {
    throw new HostError(`bad sysctl key ${key}`, { command: `sysctl ${key}`, stderr: '' });
  }
  if (ctx.netns === undefined) {
    // no kernelChanged(): no ip or nft listing shows a sysctl
    // /proc/sys/net is resolved against the namespace of the process that opens it: ours.
    try {
      fs.writeFileSync(`/proc/sys/${rel}`, String(value));
    } catch (e) {
      throw new HostError(`sysctl ${key}=${value}: ${(e as Error).message}`, { command: `sysctl -w ${key}=${value}`, stderr: (e as Error).message }, { cause: e });
    }
    return;
  }
  await execHost([...nsPrefix(ctx), 'sysctl', '-q', '-w', `${rel}=${value}`]);
}

export async function readSysctl(ctx: HostCtx, key: string): Promise<string> {
  const rel = key.includes('/') ? key.replace(/^\/+/, '') : key.split('.').join('/');
  if (ctx.netns === undefined) return fs.readFileSync(`/proc/sys/${rel}`, 'utf8').trim();
  return (await execHost([...nsPrefix(ctx), 'sysctl', '-n', rel])).stdout.trim();
}

/** Applies an nft script atomically (`nft -f -`: all of it or none of it). */
export async function nftApply(ctx: HostCtx, script: string): Promise<void> {
  await execHost([...nsPrefix(ctx), 'nft', '-f', '-'], { input: script });
}

/** `nft -j ARGS`, parsed (e.g. ['list', 'table', 'inet', 'weave']). */
export async function nftJson<T = any>(ctx: HostCtx, args: string[]): Promise<T> {
  const argv = [...nsPrefix(ctx), 'nft', '-j', ...args];
  const out = (await readHost(ctx, argv)).stdout.trim();
  try {
    return JSON.parse(out || '{"nftables":[]}') as T;
  } catch (e) {
    throw new HostError(`${argv.join(' ')}: unparsable JSON: ${(e as Error).message}`, { command: argv.join(' '), stderr: '' }, { cause: e });
  }
}

/** Whether `nft list ARGS` finds the object (table, chain ...), without throwing when it does not. */
export async function nftExists(ctx: HostCtx, args: string[]): Promise<boolean> {
  const r = await readHost(ctx, [...nsPrefix(ctx), 'nft', 'list', ...args], { allowFail: true });
  return r.code === 0;
}
