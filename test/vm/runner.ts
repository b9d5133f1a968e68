// Runs a command as root inside a throwaway User-Mode Linux guest, for the kernel features this host's
// kernel lacks (IPsec ESP, GCM). UML is a stock Debian 6.1 kernel running as a host process; the guest
// sees the host's root read-only through hostfs with a tmpfs overlay (every host binary — node, ip,
// tcpdump, iperf3 — is there and writes stay in the guest), and one host directory (the checkout by
// default) read-write at the same path.
//
// Nothing is installed on the host: the `user-mode-linux` Debian package is fetched with `apt-get
// download` into a cache and unpacked with dpkg-deb; so is `kmod` when the host has no modprobe. A
// second run downloads nothing. The guest side is test/vm/guest-init.sh (PID 1 of the guest).
//
// Pitfalls inside the guest: iptables with the nft backend fails (use nft or iptables-legacy); a nested
// `node --test` must not inherit NODE_TEST_CONTEXT (it would report to a parent that is not there:
// silence). The runner strips it from the guest's environment.
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { createHash } from 'crypto';
import assert from 'node:assert/strict';
import { WeaveError } from '../../lib/errors';
import { Clock, realClock } from '../../lib/clock';
import { Logger, silentLogger } from '../../lib/log';

export const DEFAULT_CACHE_DIR = '/var/cache/weave-test';
/** Loaded before the command (the kernel would autoload most on first use; this makes a missing one loud). */
// (esp4's first state makes the crypto API ask for drbg/hmac/sha512 — the IV generator's RNG — and vxlan
// asks for ipv6.)
export const DEFAULT_MODULES = ['xfrm_user', 'esp4', 'gcm', 'ghash_generic', 'ctr', 'seqiv', 'aes_generic',
  'drbg', 'hmac', 'sha512_generic', 'ansi_cprng', 'ipv6', 'vxlan', 'veth'];

export interface VmOptions {
  /** shared read-write at the same path and the command's cwd; default: the repository root */
  cwd?: string;
  /** added to (and overriding) the caller's environment inside the guest */
  env?: Record<string, string>;
  modules?: string[];
  /**
   * Kernel module autoloading after the preload (default true). Every request the kernel makes runs a
   * modprobe process, and the crypto API makes one per template level whether or not a module exists
   * (crypto-rfc4106(gcm(aes)), crypto-gcm(aes) ...): ~20 process starts, 6-13 s in UML on a busy host,
   * for the first ESP state. With false, those fail at once and the preloaded modules serve.
   */
  autoload?: boolean;
  memMb?: number;
  /** the guest is killed after this long (its result is then missing: VmError) */
  timeoutMs?: number;
  /** extra kernel command line words (e.g. 'loglevel=7' with WEAVE_VM_KEEP=1 to read the boot log) */
  kernelArgs?: string[];
  /** default $WEAVE_VM_CACHE or /var/cache/weave-test */
  cacheDir?: string;
  log?: Logger;
  clock?: Clock;
}

export interface VmResult {
  /** the command's exit status */
  code: number;
  /** its stdout and stderr, interleaved as written */
  output: string;
  /** from starting UML to the command starting (boot, mounts, modules) */
  bootMs: number;
  totalMs: number;
  kernel: string;
}

/** The guest gave no result (boot failure, timeout, panic) or could not be prepared. */
export class VmError extends WeaveError {
  constructor(message: string, context: Record<string, unknown> = {}) {
    super('EVM', message, context);
    this.name = 'VmError';
  }
}

export interface UmlKit {
  /** the UML kernel binary */
  linux: string;
  kver: string;
  /** its modules (…/usr/lib/uml/modules/KVER, with modules.dep) */
  modDir: string;
  /** a directory holding modprobe and insmod that the guest runs */
  modTools: string;
  /** test/vm/uml-xstate.c built for LD_PRELOAD into the UML process (large-XSAVE hosts: see the file) */
  preload: string;
}

// ------------------------------------------------------------------------------------------ host commands

interface Out { code: number | null; stdout: string; stderr: string }

function sh(argv: string[], opts: { cwd?: string; timeoutMs?: number } = {}): Promise<Out> {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), { cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    const t = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 300_000);
    child.on('error', (e) => { clearTimeout(t); reject(new VmError(`cannot run ${argv[0]}: ${e.message}`, { argv })); });
    child.on('close', (code) => { clearTimeout(t); resolve({ code, stdout, stderr }); });
  });
}

async function mustSh(what: string, argv: string[], opts: { cwd?: string; timeoutMs?: number } = {}): Promise<Out> {
  const r = await sh(argv, opts);
  if (r.code !== 0) {
    throw new VmError(`${what}: ${argv.join(' ')} failed (exit ${r.code}): ${(r.stderr.trim() || r.stdout.trim()).slice(-2000)}`, { argv });
  }
  return r;
}

/**
 * Downloads a Debian package into `<cache>/<pkg>` and unpacks it there. Atomic: a run that dies halfway
 * leaves only a temporary directory, and two first runs at once both end with one complete copy.
 */
async function fetchDeb(cache: string, pkg: string, log: Logger): Promise<string> {
  const dest = path.join(cache, pkg);
  if (fs.existsSync(dest)) return dest;
  fs.mkdirSync(cache, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(cache, `.${pkg}-`));
  try {
    log.info({ pkg, cache }, 'downloading Debian package (not installing it)');
    // As root apt would hand the download to the _apt user, who cannot write into our cache dir.
    const dl = ['apt-get', 'download', '-q', '-o', `APT::Sandbox::User=${os.userInfo().username}`, pkg];
    let r = await sh(dl, { cwd: tmp });
    if (r.code !== 0) {
      log.info({ pkg, err: r.stderr.trim() }, 'apt-get download failed; updating the package lists and retrying');
      await mustSh('apt-get update', ['apt-get', 'update', '-q'], { timeoutMs: 300_000 });
      r = await mustSh(`downloading ${pkg}`, dl, { cwd: tmp });
    }
    const debs = fs.readdirSync(tmp).filter((f) => f.endsWith('.deb'));
    if (debs.length !== 1) throw new VmError(`apt-get download ${pkg} left ${debs.length} .deb files in ${tmp}`, { debs });
    await mustSh(`unpacking ${pkg}`, ['dpkg-deb', '-x', path.join(tmp, debs[0]), path.join(tmp, 'root')]);
    try {
      fs.renameSync(path.join(tmp, 'root'), dest);
    } catch (e) {
      // another run finished first: its copy is as good as ours
      if (!fs.existsSync(dest)) throw e;
    }
    log.info({ pkg, dest, deb: debs[0] }, 'unpacked');
    return dest;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

function hostModTools(): string | undefined {
  for (const d of ['/usr/sbin', '/sbin', '/usr/bin', '/bin']) {
    if (fs.existsSync(path.join(d, 'modprobe')) && fs.existsSync(path.join(d, 'insmod'))) return d;
  }
  return undefined;
}

/** The UML kernel and module tools, from the cache (downloading what is missing). */
export async function ensureUml(opts: { cacheDir?: string; log?: Logger } = {}): Promise<UmlKit> {
  const cache = opts.cacheDir ?? process.env.WEAVE_VM_CACHE ?? DEFAULT_CACHE_DIR;
  const log = opts.log ?? silentLogger();
  const root = await fetchDeb(cache, 'user-mode-linux', log);
  const linux = path.join(root, 'usr/bin/linux.uml');
  if (!fs.existsSync(linux)) throw new VmError(`the user-mode-linux package in ${root} has no usr/bin/linux.uml; delete ${root} and retry`);
  const modBase = path.join(root, 'usr/lib/uml/modules');
  const kvers = fs.existsSync(modBase) ? fs.readdirSync(modBase).filter((d) => fs.existsSync(path.join(modBase, d, 'modules.dep'))) : [];
  if (kvers.length === 0) throw new VmError(`no module directory with modules.dep under ${modBase}`);
  const kver = kvers.sort((a, b) => a.localeCompare(b, undefined, { numeric: true })).pop()!;

  let modTools = process.env.WEAVE_VM_KMOD === 'cached' ? undefined : hostModTools();
  if (!modTools) {
    // kmod's one binary acts as modprobe or insmod by the name it is called with; the package's own
    // links are absolute (/bin/kmod), so make relative ones.
    const k = await fetchDeb(cache, 'kmod', log);
    const bin = ['bin/kmod', 'usr/bin/kmod'].map((p) => path.join(k, p)).find((p) => fs.existsSync(p));
    if (!bin) throw new VmError(`the kmod package in ${k} has no kmod binary`);
    modTools = path.join(k, 'weave-tools');
    if (!fs.existsSync(path.join(modTools, 'insmod'))) {
      const tmp = fs.mkdtempSync(path.join(k, '.tools-'));
      for (const n of ['modprobe', 'insmod']) fs.symlinkSync(path.relative(tmp, bin), path.join(tmp, n));
      try { fs.renameSync(tmp, modTools); } catch { fs.rmSync(tmp, { recursive: true, force: true }); }
    }
  }
  return { linux, kver, modDir: path.join(modBase, kver), modTools, preload: await buildXstateShim(cache, log) };
}

/**
 * Builds test/vm/uml-xstate.c into the cache once per source version (the file name carries a hash of
 * the source). Without it UML 6.1 panics at boot on hosts with AMX; with it nothing changes elsewhere.
 */
async function buildXstateShim(cache: string, log: Logger): Promise<string> {
  const src = path.join(repoRoot(), 'test/vm/uml-xstate.c');
  const text = fs.readFileSync(src);
  const so = path.join(cache, `uml-xstate-${createHash('sha256').update(text).digest('hex').slice(0, 12)}.so`);
  if (fs.existsSync(so)) return so;
  const tmp = `${so}.${process.pid}.tmp`;
  const cc = process.env.CC ?? 'cc';
  fs.mkdirSync(cache, { recursive: true });
  try {
    await mustSh(`building ${src} (install gcc or set CC)`, [cc, '-shared', '-fPIC', '-O2', '-Wall', '-o', tmp, src, '-ldl']);
    fs.renameSync(tmp, so);
  } finally {
    fs.rmSync(tmp, { force: true }); // a failed or raced build leaves no half-written file
  }
  log.info({ so }, 'built the UML xstate shim');
  return so;
}

// ------------------------------------------------------------------------------------------ the guest

/** The checkout: the nearest directory above this file with package.json and test/vm/guest-init.sh. */
export function repoRoot(from = __dirname): string {
  for (let d = from; ; d = path.dirname(d)) {
    if (fs.existsSync(path.join(d, 'package.json')) && fs.existsSync(path.join(d, 'test/vm/guest-init.sh'))) return d;
    if (path.dirname(d) === d) throw new VmError(`no checkout (package.json + test/vm/guest-init.sh) above ${from}`);
  }
}

const SKIP_ENV = /^(LD_PRELOAD|PWD|OLDPWD|SHLVL|_|HOSTNAME|TMPDIR|DISPLAY|XDG_RUNTIME_DIR|INVOCATION_ID|JOURNAL_STREAM|NOTIFY_SOCKET|TMUX.*|SSH_.*|DBUS_.*|LISTEN_.*|NODE_TEST_CONTEXT|NODE_CHANNEL_FD|NODE_CHANNEL_SERIALIZATION_MODE|NODE_UNIQUE_ID)$/;

function q(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

function cmdScript(cmd: string[], cwd: string, extra: Record<string, string>): string {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !SKIP_ENV.test(k)) env[k] = v;
  Object.assign(env, extra, { WEAVE_IN_VM: '1' });
  const lines: string[] = [];
  for (const [k, v] of Object.entries(env)) if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) lines.push(`export ${k}=${q(v)}`);
  lines.push(`cd ${q(cwd)} || { echo "weave-vm: cannot cd to ${cwd.replace(/["$`\\]/g, '')}"; exit 125; }`);
  lines.push(`exec ${cmd.map(q).join(' ')}`);
  return lines.join('\n') + '\n';
}

/** UML backs guest memory with a file in $TMPDIR, else /dev/shm: keep it in RAM, not on a caller's disk tmp. */
function umlEnv(preload: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, LD_PRELOAD: preload };
  delete env.TMPDIR; delete env.TMP; delete env.TEMP;
  return env;
}

function readIf(p: string): string | undefined {
  try { return fs.readFileSync(p, 'utf8'); } catch { return undefined; }
}

function tail(s: string | undefined, lines: number): string {
  return (s ?? '').trimEnd().split('\n').slice(-lines).join('\n');
}

/**
 * Boots one guest, runs `cmd` in it as root, returns its status and output. Rejects with VmError when
 * the guest gives no result: the message carries the reason and the end of the guest console.
 */
export async function runInVm(cmd: string[], opts: VmOptions = {}): Promise<VmResult> {
  if (cmd.length === 0) throw new VmError('runInVm: empty command');
  const log = (opts.log ?? silentLogger()).child({ component: 'vm' });
  const clock = opts.clock ?? realClock;
  const cwd = fs.realpathSync(opts.cwd ?? repoRoot());
  if (cwd === '/') throw new VmError('refusing to share / read-write with the guest');
  const kit = await ensureUml({ cacheDir: opts.cacheDir, log });
  const timeoutMs = opts.timeoutMs ?? 300_000;

  const ctl = fs.mkdtempSync(path.join(os.tmpdir(), 'weave-vm-'));
  try {
    const conf = {
      MODDIR: kit.modDir, KVER: kit.kver, MODTOOLS: kit.modTools, WORK: cwd,
      MODULES: (opts.modules ?? DEFAULT_MODULES).join(' '),
      AUTOLOAD: opts.autoload === false ? '0' : '1',
    };
    fs.writeFileSync(path.join(ctl, 'conf'), Object.entries(conf).map(([k, v]) => `${k}=${q(v)}`).join('\n') + '\n');
    fs.writeFileSync(path.join(ctl, 'cmd'), cmdScript(cmd, cwd, opts.env ?? {}));
    fs.copyFileSync(path.join(repoRoot(), 'test/vm/guest-init.sh'), path.join(ctl, 'guest-init.sh'));
    fs.chmodSync(path.join(ctl, 'guest-init.sh'), 0o755);
    const consolePath = path.join(ctl, 'console.log');
    const consoleFd = fs.openSync(consolePath, 'a');

    const args = [
      `mem=${opts.memMb ?? 1024}M`, 'rootfstype=hostfs', 'rootflags=/', 'ro', `init=${ctl}/guest-init.sh`,
      'con=null', 'ssl=null', 'con0=null,fd:3', 'quiet', 'loglevel=4', 'panic=-1',
      // unknown name=value boot parameters reach init as environment variables
      `WEAVEVM_CTL=${ctl}`,
      // UML keeps its mconsole socket under uml_dir (default ~/.uml): keep it in the throwaway dir
      `uml_dir=${ctl}`,
      ...(opts.kernelArgs ?? []),
    ];
    const t0 = clock.now();
    const t0Wall = Date.now(); // the guest stamps the command's start with the same wall clock (UML shares it)
    log.info({ cmd, cwd, kernel: kit.kver }, 'booting UML guest');
    // Own process group: UML runs one host process per guest process, and all must go at the end.
    const child = spawn(kit.linux, args, { detached: true, stdio: ['ignore', consoleFd, consoleFd, consoleFd], env: umlEnv(kit.preload) });
    fs.closeSync(consoleFd);
    let timedOut = false;
    const killGroup = () => {
      if (child.pid === undefined) return;
      try { process.kill(-child.pid, 'SIGKILL'); } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ESRCH') log.warn({ err: (e as Error).message }, 'cannot kill the UML process group');
      }
    };
    const timer = clock.setTimeout(() => { timedOut = true; killGroup(); }, timeoutMs);
    const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null; err?: Error }>((resolve) => {
      child.once('error', (err) => resolve({ code: null, signal: null, err }));
      child.once('exit', (code, signal) => resolve({ code, signal }));
    });
    clock.clearTimeout(timer);
    killGroup(); // leftovers of guest processes, if any
    const totalMs = clock.now() - t0;

    const rc = readIf(path.join(ctl, 'rc'));
    const output = readIf(path.join(ctl, 'output')) ?? '';
    const consoleText = readIf(consolePath);
    const setupError = readIf(path.join(ctl, 'setup_error'));
    const context = { cmd, cwd, totalMs, exit: exit.code, signal: exit.signal, console: tail(consoleText, 40), output: tail(output, 40) };
    if (exit.err) throw new VmError(`cannot start UML (${kit.linux}): ${exit.err.message}`, context);
    if (setupError) throw new VmError(`guest setup failed: ${setupError.trim()}`, context);
    const code = rc === undefined ? NaN : Number(rc.trim());
    if (!Number.isInteger(code)) {
      const why = timedOut ? `timed out after ${timeoutMs} ms` : `UML exited (${exit.signal ?? `code ${exit.code}`}) without a status from the command`;
      throw new VmError(`the guest gave no result: ${why}\n--- guest console (last lines) ---\n${tail(consoleText, 40)}\n--- command output (last lines) ---\n${tail(output, 20)}`, context);
    }
    // when each boot phase began, ms after UML started (the guest writes microseconds of wall time)
    const phases: Record<string, number> = {};
    for (const l of (readIf(path.join(ctl, 'phases')) ?? '').split('\n')) {
      const m = /^(\w+) (\d+)$/.exec(l.trim());
      if (m) phases[m[1]] = Math.round(Number(m[2]) / 1000 - t0Wall);
    }
    const bootMs = phases.command ?? NaN;
    log.info({ code, bootMs, totalMs, phases }, 'UML guest finished');
    return { code, output, bootMs, totalMs, kernel: kit.kver };
  } finally {
    if (process.env.WEAVE_VM_KEEP) log.info({ ctl }, 'keeping the guest control dir (WEAVE_VM_KEEP)');
    else fs.rmSync(ctl, { recursive: true, force: true });
  }
}

/**
 * Runs one compiled guest test file (test/vm/guest/NAME.guest.js) under a nested `node --test` in a
 * guest and asserts that it reported exactly `expected` passing tests and no failure. Fails loudly
 * when the guest says nothing: runInVm rejects without a status, and a status without a TAP summary
 * fails here. Returns the result for diagnostics.
 */
export async function runGuestTests(guestFile: string, expected: number, opts: VmOptions = {}): Promise<VmResult> {
  assert.ok(fs.existsSync(guestFile), `compiled guest test missing: ${guestFile}`);
  const r = await runInVm([process.execPath, '--test', '--test-reporter=tap', '--enable-source-maps', guestFile], opts);
  const pass = /^# pass (\d+)$/m.exec(r.output);
  const fail = /^# fail (\d+)$/m.exec(r.output);
  assert.ok(pass && fail, `the guest's node --test printed no summary (exit ${r.code}):\n${r.output}`);
  assert.equal(r.code, 0, `guest tests failed:\n${r.output}`);
  assert.equal(Number(fail[1]), 0, r.output);
  assert.equal(Number(pass[1]), expected, `expected ${expected} passing guest tests:\n${r.output}`);
  return r;
}
