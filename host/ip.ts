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
export interface HostCtx { netns?: string }

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

/** Runs argv, feeding input on stdin; rejects with HostError on a non-zero exit (unless allowFail). */
export function execHost(argv: string[], opts: { input?: string; allowFail?: boolean; timeoutMs?: number } = {}): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const command = argv.join(' ');
    const child = spawn(argv[0], argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new HostError(`cannot run ${argv[0]}: ${e.message}`, { command, stderr: '' }));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
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

/** `ip -json ARGS`, parsed. An empty answer (ip prints nothing when nothing matches) is []. */
export async function ipJson<T = unknown>(ctx: HostCtx, args: string[]): Promise<T> {
  const argv = ipArgv(ctx, ['-json', ...args]);
  const out = (await execHost(argv)).stdout.trim();
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
  await execHost(ipArgv(ctx, args), { input: lines.join('\n') + '\n' });
}

/** Sets a sysctl in ctx's namespace. key in dotted or slashed form; interface names may not contain dots. */
export async function sysctl(ctx: HostCtx, key: string, value: string | number): Promise<void> {
  const rel = key.includes('/') ? key.replace(/^\/+/, '') : key.split('.').join('/');
  if (!/^[A-Za-z0-9_\-/]+$/.test(rel) || rel.includes('..')) {
    throw new HostError(`bad sysctl key ${key}`, { command: `sysctl ${key}`, stderr: '' });
  }
  if (ctx.netns === undefined) {
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
  const out = (await execHost(argv)).stdout.trim();
  try {
    return JSON.parse(out || '{"nftables":[]}') as T;
  } catch (e) {
    throw new HostError(`${argv.join(' ')}: unparsable JSON: ${(e as Error).message}`, { command: argv.join(' '), stderr: '' }, { cause: e });
  }
}

/** Whether `nft list ARGS` finds the object (table, chain ...), without throwing when it does not. */
export async function nftExists(ctx: HostCtx, args: string[]): Promise<boolean> {
  const r = await execHost([...nsPrefix(ctx), 'nft', 'list', ...args], { allowFail: true });
  return r.code === 0;
}
