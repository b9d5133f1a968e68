// Router configuration: one typed object built from CLI flags and the environment, validated here
// so the daemon never sees a half-checked value. Errors say what to fix.
import * as fs from 'fs';
import { Option, type Command } from 'commander';
import { UsageError } from '../lib/errors';
import type { Level } from '../lib/log';
import { DEFAULT_LOG_MAX_BYTES } from '../lib/log-file';
import { contains, parseCidr, parseHostPort as parseHostPortAddr, parsePort as parsePortNumber, tryParseAddr, type Cidr } from '../lib/addr';
import { CONTROL_PORT, DEFAULT_DATA_DIR as DATA_DIR, HTTP_API_PORT } from '../lib/ports';
import { checkPeer } from '../lib/validate';
import { boxModeFromEnv, type BoxKind } from '../router/boxes';
import { ioModeFromEnv, offloadFromEnv, spinFromEnv, threadsFromEnv } from '../router/sleeve';
import { addIpamFlags, parseIpamFlags, type IpamConfig } from '../ipam/flags';
import { addDnsFlags, parseDnsFlags, type DnsConfig } from '../dns/flags';
import { addCniFlags, parseCniFlags, type CniConfig } from '../cni/flags';
import { addDockerFlags, parseDockerFlags, type DockerConfig } from '../docker/flags';
import { addKubeFlags, parseKubeFlags, type KubeConfig } from '../k8s/config';

export const DEFAULT_PORT = CONTROL_PORT;
export const DEFAULT_HTTP_ADDR = `127.0.0.1:${HTTP_API_PORT}`;
export const DEFAULT_DATA_DIR = DATA_DIR;

export interface RouterConfig {
  dataDir: string;
  name?: string;
  nickname?: string;
  host: string;
  port: number;
  httpAddr: { host: string; port: number };
  password: Buffer | null;
  /** --password-file, re-read on SIGHUP or `weave password-rotate` (absent: WEAVE_PASSWORD or none) */
  passwordFile?: string;
  connLimit: number;
  discovery: boolean;
  resume: boolean;
  peers: string[];
  logLevel: Level;
  /** --log-file: the log appended to this file and rotated there by size (`weave launch` sets it) */
  logFile?: { path: string; maxBytes: number };
  fastdp: boolean;
  crypto?: 'sodium' | 'tweetnacl';
  /** --trusted-subnets: peers there get the data unencrypted when they trust us too (control stays encrypted) */
  trustedSubnets: Cidr[];
  /** the sleeve's I/O, offloads, crypto and wake-ups (WEAVE_SLEEVE_IO, _OFFLOAD, _CRYPTO, _SPIN_US, _THREADS) */
  sleeve: SleeveConfig;
  ipam: IpamConfig;
  dns: DnsConfig;
  cni: CniConfig;
  docker: DockerConfig;
  kube: KubeConfig;
  /**
   * Kubernetes mode: the kernel's data path (VXLAN device, FDB, routes, xfrm) outlives a stop, and
   * entries leaving it (a restarting peer's, or a previous run's) are held holdMs, so a rolling
   * restart has no gap. Off: everything follows the desired state at once and goes at stop.
   */
  keepDataPath: { onStop: boolean; holdMs: number };
}

/** How long a kept data path holds entries nobody wants (longer than a router's restart). */
export const KEEP_HOLD_MS = 30_000;

export interface SleeveConfig {
  /** 'auto': the native addon, else the koffi fallback; 'native': the addon or fail; 'fallback': koffi */
  io: 'auto' | 'native' | 'fallback';
  /** TUN offloads and UDP GSO/GRO (native addon only) */
  offload: boolean;
  /** how datagrams are sealed: 'auto' (the addon's SIMD batches when it helps), 'native', 'engine' */
  boxes: 'auto' | BoxKind;
  /** µs a sleeve worker polls without sleeping after packets, -1: uv_poll wake-ups (WEAVE_SLEEVE_SPIN_US) */
  spinUs: number;
  /** packet worker threads: 1 for both directions, 2 one per direction (WEAVE_SLEEVE_THREADS) */
  threads: 1 | 2;
}

/** The router's own flags, shared by `weave router` and `weave launch`, with the subsystems' flags. */
export interface RouterFlags {
  name?: string; nickname?: string; port: string; host: string; passwordFile?: string; connLimit: string;
  discovery: boolean; resume?: boolean; httpAddr?: string; logLevel: string; fastdp: boolean; crypto?: string; trustedSubnets?: string;
  logFile?: string; logMaxSize?: string;
}

export function addRouterFlags(c: Command): Command {
  c
    .option('--name <mac>', 'peer name (six hex bytes like 8a:3e:01:02:03:04); default: persisted random name')
    .option('--nickname <name>', 'nickname shown next to the peer name (default: hostname)')
    .option('--port <port>', 'TCP (control) and UDP (sleeve) port', String(DEFAULT_PORT))
    .option('--host <addr>', 'address to listen on (default: all)', '')
    .option('--password-file <file>', 'file holding the mesh password (or set WEAVE_PASSWORD); never pass it on the command line')
    .option('--conn-limit <n>', 'maximum number of connections', '200')
    .option('--no-discovery', 'do not connect to peers learned through gossip')
    .option('--resume', 'reconnect to the stored targets instead of the peers given')
    .option('--http-addr <host:port>', 'HTTP API address (env WEAVE_HTTP_ADDR)')
    .option('--log-level <level>', 'trace, debug, info, warn, error', 'info')
    .option('--no-fastdp', 'do not use the kernel fast datapath')
    .option('--trusted-subnets <cidrs>', 'comma-separated CIDRs of networks where peers may exchange data unencrypted (both ends must trust each other; the control channel stays encrypted)')
    .addOption(new Option('--crypto <engine>', 'crypto engine').choices(['sodium', 'tweetnacl']).hideHelp())
    // `weave launch` passes these to the router it starts (its log file in the data dir)
    .addOption(new Option('--log-file <file>', 'append the log to this file, rotated by size').hideHelp())
    .addOption(new Option('--log-max-size <bytes>', 'rotate the log file at this size (K, M suffixes); default 10M').hideHelp());
  addIpamFlags(c);
  addDnsFlags(c);
  addCniFlags(c);
  addDockerFlags(c);
  addKubeFlags(c);
  return c;
}

/** Every router flag and environment variable, checked once, into the typed config. */
export function routerConfig(peers: string[], f: RouterFlags & Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): RouterConfig {
  for (const p of peers) checkPeer(p);
  const kube = parseKubeFlags(f, env);
  return {
    dataDir: dataDirFromEnv(env),
    name: f.name,
    nickname: f.nickname,
    host: f.host,
    port: parsePort(f.port, '--port'),
    httpAddr: httpAddrFrom(f.httpAddr, env),
    password: loadPassword(f.passwordFile, env),
    passwordFile: f.passwordFile || undefined,
    connLimit: parseConnLimit(f.connLimit),
    discovery: f.discovery,
    resume: !!f.resume,
    peers,
    logLevel: parseLevel(f.logLevel),
    ...(f.logFile ? { logFile: { path: f.logFile, maxBytes: parseSize(f.logMaxSize, '--log-max-size', DEFAULT_LOG_MAX_BYTES) } } : {}),
    fastdp: f.fastdp,
    crypto: f.crypto as RouterConfig['crypto'],
    trustedSubnets: parseTrustedSubnets(f.trustedSubnets),
    sleeve: sleeveConfigFrom(env),
    ipam: parseIpamFlags(f),
    dns: parseDnsFlags(f),
    cni: parseCniFlags(f),
    docker: parseDockerFlags(f, env),
    kube,
    keepDataPath: kube.enabled && kube.keepOnStop ? { onStop: true, holdMs: KEEP_HOLD_MS } : { onStop: false, holdMs: 0 },
  };
}

export function sleeveConfigFrom(env: NodeJS.ProcessEnv): SleeveConfig {
  return {
    io: ioModeFromEnv(env.WEAVE_SLEEVE_IO),
    offload: offloadFromEnv(env.WEAVE_SLEEVE_OFFLOAD),
    boxes: boxModeFromEnv(env.WEAVE_SLEEVE_CRYPTO),
    spinUs: spinFromEnv(env.WEAVE_SLEEVE_SPIN_US),
    threads: threadsFromEnv(env.WEAVE_SLEEVE_THREADS),
  };
}

export function dataDirFromEnv(env: NodeJS.ProcessEnv = process.env): string {
  return env.WEAVE_DATA_DIR || DEFAULT_DATA_DIR;
}

/** lib/addr parseHostPort (kept for weave.ts and the API); ports 1-65535. */
export function parseHostPort(s: string, defaultPort: number, what: string): { host: string; port: number } {
  return parseHostPortAddr(s, defaultPort, { what });
}

/** lib/addr parsePort (kept for weave.ts). */
export function parsePort(s: string | number, what: string): number {
  return parsePortNumber(s, what);
}

/** --http-addr or WEAVE_HTTP_ADDR: HOST[:PORT], or :PORT for 127.0.0.1. */
export function httpAddrFrom(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): { host: string; port: number } {
  const s = flag || env.WEAVE_HTTP_ADDR || DEFAULT_HTTP_ADDR;
  const a = parseHostPortAddr(s, HTTP_API_PORT, { what: flag ? '--http-addr' : 'WEAVE_HTTP_ADDR', allowEmptyHost: true });
  return { host: a.host || '127.0.0.1', port: a.port };
}

/** The password never comes from argv (it would show in ps): WEAVE_PASSWORD or --password-file. */
export function loadPassword(passwordFile: string | undefined, env: NodeJS.ProcessEnv = process.env): Buffer | null {
  if (passwordFile) {
    let text: string;
    try {
      text = fs.readFileSync(passwordFile, 'utf8');
    } catch (e) {
      throw new UsageError(`cannot read --password-file ${passwordFile}: ${(e as Error).message}`, { path: passwordFile }, { cause: e });
    }
    const pw = text.replace(/\r?\n$/, '');
    if (!pw) throw new UsageError(`--password-file ${passwordFile} is empty`);
    return Buffer.from(pw, 'utf8');
  }
  if (env.WEAVE_PASSWORD) return Buffer.from(env.WEAVE_PASSWORD, 'utf8');
  return null;
}

const LEVELS: Level[] = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];
export function parseLevel(s: string): Level {
  if (!LEVELS.includes(s as Level)) throw new UsageError(`invalid --log-level "${s}": one of ${LEVELS.join(', ')}`);
  return s as Level;
}

/** "--trusted-subnets 10.0.0.0/8,192.168.1.0/24" (empty: none). */
export function parseTrustedSubnets(s: string | undefined): Cidr[] {
  if (!s || !s.trim()) return [];
  return s.split(',').map((p) => {
    try {
      return parseCidr(p.trim());
    } catch (e) {
      throw new UsageError(`invalid --trusted-subnets "${s}": ${(e as Error).message}`, { value: s }, { cause: e });
    }
  });
}

/** Whether an IPv4 address (text) lies in one of the subnets; anything else (IPv6, garbage) is untrusted. */
export function inSubnets(subnets: Cidr[], ip: string): boolean {
  if (subnets.length === 0) return false;
  const a = tryParseAddr(ip);
  if (a === undefined) return false; // not an IPv4 address: never trusted
  return subnets.some((c) => contains(c, a));
}

/** "10485760", "512K", "10M" -> bytes (at least 4 KiB); absent -> dflt. */
export function parseSize(s: string | undefined, what: string, dflt: number): number {
  if (s === undefined || s === '') return dflt;
  const m = /^(\d+)([KkMmGg]?)$/.exec(s.trim());
  const n = m ? Number(m[1]) * ({ '': 1, k: 1 << 10, m: 1 << 20, g: 1 << 30 } as Record<string, number>)[m[2].toLowerCase()] : NaN;
  if (!Number.isSafeInteger(n) || n < 4096) throw new UsageError(`invalid ${what} "${s}": expected bytes >= 4096, with an optional K, M or G suffix`);
  return n;
}

export function parseConnLimit(s: string): number {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`invalid --conn-limit "${s}": expected a whole number >= 0`);
  return n;
}
