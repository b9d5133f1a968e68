// Router configuration: one typed object built from CLI flags and the environment, validated here
// so the daemon never sees a half-checked value. Errors say what to fix.
import * as fs from 'fs';
import { UsageError } from '../lib/errors';
import type { Level } from '../lib/log';
import { contains, parseCidr, parseHostPort as parseHostPortAddr, parsePort as parsePortNumber, tryParseAddr, type Cidr } from '../lib/addr';
import { CONTROL_PORT, HTTP_API_PORT } from '../lib/ports';

export const DEFAULT_PORT = CONTROL_PORT;
export const DEFAULT_HTTP_ADDR = `127.0.0.1:${HTTP_API_PORT}`;
export const DEFAULT_DATA_DIR = '/var/lib/weave';

export interface RouterConfig {
  dataDir: string;
  name?: string;
  nickname?: string;
  host: string;
  port: number;
  httpAddr: { host: string; port: number };
  password: Buffer | null;
  connLimit: number;
  discovery: boolean;
  resume: boolean;
  peers: string[];
  logLevel: Level;
  fastdp: boolean;
  crypto?: 'sodium' | 'tweetnacl';
  /** --trusted-subnets: peers there get the data unencrypted when they trust us too (control stays encrypted) */
  trustedSubnets: Cidr[];
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

export function parseConnLimit(s: string): number {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`invalid --conn-limit "${s}": expected a whole number >= 0`);
  return n;
}
