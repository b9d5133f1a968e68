// NETNS arguments (`weave attach ... NETNS`): a name from `ip netns`, a path to a namespace file
// (/proc/PID/ns/net, /var/run/netns/x, any bind mount) or a PID. Resolution turns it into a path that
// commands can enter and a key (the namespace inode) that names it stably: the same namespace reached
// by name, by path or by a PID inside it has one key, so state is never duplicated across spellings.
import * as fs from 'fs';
import { UsageError } from '../lib/errors';
import type { HostCtx } from './ip';

export const NETNS_RUN_DIR = '/var/run/netns';

export type NetnsArg =
  | { kind: 'name'; name: string }
  | { kind: 'path'; path: string }
  | { kind: 'pid'; pid: number };

/** Pure syntax check of a NETNS argument; UsageError says which forms are accepted. */
export function parseNetnsArg(arg: string): NetnsArg {
  if (typeof arg !== 'string' || arg.trim() === '') {
    throw new UsageError('NETNS is empty: give a namespace name (ip netns), a path like /proc/PID/ns/net, or a PID', { arg });
  }
  const a = arg.trim();
  if (/^\d+$/.test(a)) {
    const pid = Number(a);
    if (!Number.isSafeInteger(pid) || pid < 1 || pid > 0x3fffffff) throw new UsageError(`NETNS "${a}" is not a valid PID`, { arg });
    return { kind: 'pid', pid };
  }
  if (a.startsWith('/')) {
    if (a.includes('\0')) throw new UsageError(`NETNS path "${a}" contains a NUL byte`, { arg });
    return { kind: 'path', path: a };
  }
  if (a === '.' || a === '..' || !/^[A-Za-z0-9_.\-]+$/.test(a) || a.length > 255) {
    throw new UsageError(`NETNS "${a}" is neither a namespace name (letters, digits, . _ -), an absolute path, nor a PID`, { arg });
  }
  return { kind: 'name', name: a };
}

/** Where the namespace file of a parsed argument lives. */
export function netnsPathOf(p: NetnsArg): string {
  switch (p.kind) {
    case 'name': return `${NETNS_RUN_DIR}/${p.name}`;
    case 'path': return p.path;
    case 'pid': return `/proc/${p.pid}/ns/net`;
  }
}

export interface NetnsRef {
  /** the argument as the user gave it */
  arg: string;
  kind: NetnsArg['kind'];
  /** a path to the namespace file (usable by nsenter --net= and `ip link set X netns PATH`) */
  path: string;
  /** the `ip netns` name, when given by name */
  name?: string;
  /** "dev:inode" of the namespace: the same for every way of naming one namespace */
  key: string;
  /** how host/ip.ts commands enter it */
  ctx: HostCtx;
}

export function netnsKeyOfStat(st: fs.Stats): string { return `${st.dev}:${st.ino}`; }

let nsfsDev: number | undefined;
function nsfsDevice(): number {
  // Namespace files (in /proc/PID/ns and their bind mounts) all live on the one nsfs device.
  if (nsfsDev === undefined) nsfsDev = fs.statSync('/proc/self/ns/net').dev;
  return nsfsDev;
}

/** The key of the namespace this process runs in. */
export function ownNetnsKey(): string { return netnsKeyOfStat(fs.statSync('/proc/self/ns/net')); }

/**
 * Resolves a NETNS argument to a namespace that exists now. UsageError when it does not exist or is
 * not a network namespace; unless `allowOwn`, also refuses the host's namespace (`hostKey`, default
 * ours): a container endpoint there would be the host attaching to itself.
 */
export function resolveNetns(arg: string, opts: { allowOwn?: boolean; hostKey?: string } = {}): NetnsRef {
  const p = parseNetnsArg(arg);
  const path = netnsPathOf(p);
  let st: fs.Stats;
  try {
    st = fs.statSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const what = p.kind === 'name' ? `no network namespace named "${p.name}" (see ip netns list)`
      : p.kind === 'pid' ? `no process with PID ${p.pid} (or its network namespace is not visible)`
      : `no namespace file at ${path}`;
    throw new UsageError(`NETNS ${arg}: ${what}`, { arg, path, errno: code }, { cause: e });
  }
  if (st.dev !== nsfsDevice()) {
    throw new UsageError(`NETNS ${arg}: ${path} is not a namespace file (expected /proc/PID/ns/net or a bind mount of one)`, { arg, path });
  }
  if (p.kind === 'path' && path.startsWith('/proc/')) {
    // a /proc/PID/ns/<type> link says its type; refuse mnt, pid ... namespaces with a clear message
    try {
      const target = fs.readlinkSync(path);
      if (!target.startsWith('net:')) throw new UsageError(`NETNS ${arg}: ${path} is a ${target.split(':')[0]} namespace, not a network namespace`, { arg, path });
    } catch (e) {
      if (e instanceof UsageError) throw e;
      // not a symlink (a bind mount under /proc is unusual but valid): the kernel checks the type on use
    }
  }
  const key = netnsKeyOfStat(st);
  if (!opts.allowOwn && key === (opts.hostKey ?? ownNetnsKey())) {
    throw new UsageError(`NETNS ${arg} is the host's own network namespace; give the container's namespace`, { arg, path });
  }
  const ctx: HostCtx = p.kind === 'name' ? { netns: p.name } : { netns: path };
  return { arg, kind: p.kind, path, name: p.kind === 'name' ? p.name : undefined, key, ctx };
}

/** Finds the `ip netns` name of a namespace key, if one is registered (a PID may die; a name outlives it). */
export function findNamedNetns(key: string): string | undefined {
  let names: string[];
  try {
    names = fs.readdirSync(NETNS_RUN_DIR);
  } catch {
    return undefined; // no named namespaces at all
  }
  for (const n of names) {
    try {
      if (netnsKeyOfStat(fs.statSync(`${NETNS_RUN_DIR}/${n}`)) === key) return n;
    } catch {
      // a name being deleted while we scan: not the one we want
    }
  }
  return undefined;
}
