// IPAM's router flags, parsed once (in the CLI) into the typed config the subsystem is built from.
import type { Command } from 'commander';
import { Option } from 'commander';
import { DEFAULT_RANGE } from './allocator';
import { containsRange, formatCidr, parseCidr } from './addr';
import { UsageError } from '../lib/errors';
import { isPeerName } from '../mesh/peer';

export const DEFAULT_WAIT_S = 20;

export type InitSpec = { mode: 'consensus'; quorum?: number } | { mode: 'seed'; peers: string[] } | { mode: 'observer' };

export interface IpamConfig {
  range: string;
  /** the range was given on the command line (overlap with a host route only warns) */
  rangeExplicit: boolean;
  defaultSubnet?: string;
  init: InitSpec;
  /** how long an allocation for attach/expose/API may wait before failing with the reason (ms) */
  waitMs: number;
}

/** `consensus[=N] | seed=peer,... | observer` */
export function parseIpallocInit(s: string): InitSpec {
  const v = s.trim();
  if (v === 'consensus') return { mode: 'consensus' };
  if (v === 'observer') return { mode: 'observer' };
  let m = /^consensus=(\d+)$/.exec(v);
  if (m) {
    const n = Number(m[1]);
    if (!Number.isSafeInteger(n) || n < 1) throw new UsageError(`invalid --ipalloc-init "${s}": the consensus quorum must be a whole number >= 1`);
    return { mode: 'consensus', quorum: n };
  }
  m = /^seed=(.+)$/.exec(v);
  if (m) {
    const peers = m[1].split(',').map((p) => p.trim());
    if (peers.some((p) => p === '')) throw new UsageError(`invalid --ipalloc-init "${s}": empty peer in the seed list`);
    return { mode: 'seed', peers: [...new Set(peers.map((p) => (isPeerName(p.toLowerCase()) ? p.toLowerCase() : p)))] };
  }
  throw new UsageError(`invalid --ipalloc-init "${s}": expected consensus, consensus=N, seed=PEER,... (peer names or nicknames) or observer`);
}

/** Reads and checks IPAM's flags from commander's options object (once, in the CLI). */
export function parseIpamFlags(flags: Record<string, unknown>): IpamConfig {
  const str = (k: string): string | undefined => (typeof flags[k] === 'string' && flags[k] !== '' ? (flags[k] as string) : undefined);
  const rangeArg = str('ipallocRange');
  const range = parseCidr(rangeArg ?? DEFAULT_RANGE);
  if (range.prefixLen > 30) throw new UsageError(`--ipalloc-range ${rangeArg} is too small: give at least a /30`);
  const ds = str('ipallocDefaultSubnet');
  if (ds !== undefined) {
    const sn = parseCidr(ds);
    if (!containsRange(range, sn)) throw new UsageError(`--ipalloc-default-subnet ${ds} is not inside the allocation range ${formatCidr(range)}`);
  }
  const init = parseIpallocInit(str('ipallocInit') ?? 'consensus');
  const waitArg = str('ipallocTimeout');
  const waitS = waitArg === undefined ? DEFAULT_WAIT_S : Number(waitArg);
  if (!Number.isFinite(waitS) || waitS <= 0 || waitS > 3600) throw new UsageError(`invalid --ipalloc-timeout "${waitArg}": seconds, more than 0`);
  return { range: formatCidr(range), rangeExplicit: rangeArg !== undefined, defaultSubnet: ds, init, waitMs: Math.round(waitS * 1000) };
}

/** Weave's guess: the initial cluster is the peers on the command line plus us; a majority of it. */
export function defaultQuorum(initialPeers: number): number {
  return Math.floor((initialPeers + 1) / 2) + 1;
}

export function addIpamFlags(cmd: Command): void {
  cmd
    .option('--ipalloc-range <cidr>', `address range IPAM allocates from (default ${DEFAULT_RANGE}; the default is refused if it overlaps a host route)`)
    .option('--ipalloc-default-subnet <cidr>', 'subnet (inside the range) for attach without an address (default: the whole range)')
    .option('--ipalloc-init <mode>', 'how the ring starts: consensus[=N] (N peers must agree; default: a majority of the peers given + this one), seed=PEER,... (names or nicknames), observer', 'consensus')
    .addOption(new Option('--ipalloc-timeout <seconds>', 'how long an allocation may wait before the request fails with the reason').default(String(DEFAULT_WAIT_S)).hideHelp());
}
