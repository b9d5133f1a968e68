// Input filters that keep unauthenticated traffic away from containers and weaveDNS. Each owner has its
// own chain in the shared table `inet weave` (host/expose.ts's convention), hooked at input, whose
// last rule counts into a named counter and drops:
//
//   vxlan-guard  the VXLAN port (host/vxlan.ts) only from fastdp peers: plain from @vxlan-plain (no
//                password, or trusted subnets), and from @vxlan-esp only when IPsec decrypted the packet
//                (`meta ipsec exists`: the ESP packet itself is not UDP and passes; the decrypted VXLAN
//                datagram comes back through input with a secpath). Peers are set elements, changed one
//                by one: the rules never change while the router runs.
//   dns-guard    the weaveDNS address and port only through local interfaces: lo (the host itself),
//                the container veths and the weave bridge. A host on the underlay that routes the DNS
//                address via us gets nothing.
//
// A pass reads the table in one `nft -j` call (anything of ours missing: everything is rebuilt), checks
// the chain's rules by the tag in each rule's comment, and applies the difference in one atomic
// `nft -f -` script. The named counter survives rebuilds, so drops stay counted when a chain heals.
import { createHash } from 'crypto';
import { isIPv4 } from 'net';
import type { Clock } from '../lib/clock';
import { WeaveError } from '../lib/errors';
import type { Logger } from '../lib/log';
import { EXPOSE_LINK, NFT_TABLE } from './expose';
import { HOST_IF_PREFIX } from './links';
import { HostCtx, HostError, nftApply, nsPrefix, readHost } from './ip';
import { LoopedReconciler } from './reconcile-loop';

export interface GuardSpec {
  /** our base chain in `inet weave` (hook input) */
  chain: string;
  /** the named counter the drop rule counts into */
  counter: string;
  /** ipv4_addr sets the rules reference; their elements are the desired state's */
  sets: string[];
  /** rule bodies, in order; each gets a comment tag so a changed or missing rule is seen */
  rules: string[];
}

export interface GuardActual {
  /** the chain exists at the input hook with exactly our rules (by tag) */
  chainOk: boolean;
  /** elements of each set; null when some object of ours is missing (a rebuild restores all) */
  sets: Map<string, string[]> | null;
  /** packets counted by the drop rule */
  dropped: number;
}

export const VXLAN_GUARD_CHAIN = 'vxlan-guard';
export const VXLAN_GUARD_COUNTER = 'vxlan-dropped';
/** fastdp peers whose VXLAN arrives unencrypted (no password, or both ends trust each other) */
export const VXLAN_PLAIN_SET = 'vxlan-plain';
/** fastdp peers whose VXLAN must arrive inside ESP */
export const VXLAN_ESP_SET = 'vxlan-esp';
export const DNS_GUARD_CHAIN = 'dns-guard';
export const DNS_GUARD_COUNTER = 'dns-dropped';

function checkPort(port: number): void {
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new WeaveError('EINVAL', `bad port ${port} for an nft guard`);
}

export function vxlanGuardSpec(port: number): GuardSpec {
  checkPort(port);
  const m = `udp dport ${port}`;
  return {
    chain: VXLAN_GUARD_CHAIN,
    counter: VXLAN_GUARD_COUNTER,
    sets: [VXLAN_PLAIN_SET, VXLAN_ESP_SET],
    rules: [
      `${m} ip saddr @${VXLAN_PLAIN_SET} accept`,
      `${m} ip saddr @${VXLAN_ESP_SET} meta ipsec exists accept`,
      `${m} counter name ${VXLAN_GUARD_COUNTER} drop`,
    ],
  };
}

/** ip null: the server listens on every address, so the port is guarded whatever the destination. */
export function dnsGuardSpec(ip: string | null, port: number): GuardSpec {
  checkPort(port);
  if (ip !== null && !isIPv4(ip)) throw new WeaveError('EINVAL', `bad DNS address ${ip} for the nft guard`);
  const m = `${ip ? `ip daddr ${ip} ` : ''}meta l4proto { tcp, udp } th dport ${port}`;
  return {
    chain: DNS_GUARD_CHAIN,
    counter: DNS_GUARD_COUNTER,
    sets: [],
    rules: [
      `${m} iifname "lo" accept`,
      `${m} iifname "${HOST_IF_PREFIX}*" accept`,
      `${m} iifname "${EXPOSE_LINK}" accept`,
      `${m} counter name ${DNS_GUARD_COUNTER} drop`,
    ],
  };
}

/** The comment each rule carries: chain, position and a hash of the body. */
export function ruleTag(spec: GuardSpec, i: number): string {
  const h = createHash('sha256').update(spec.rules[i]).digest('hex').slice(0, 12);
  return `weave ${spec.chain} ${i + 1}/${spec.rules.length} ${h}`;
}

const T = `inet ${NFT_TABLE}`;

/** Pure: the nft script that turns actual into spec + want (set -> elements); '' when converged. */
export function planGuard(spec: GuardSpec, want: ReadonlyMap<string, readonly string[]>, actual: GuardActual): string {
  for (const s of spec.sets) for (const a of want.get(s) ?? []) if (!isIPv4(a)) throw new WeaveError('EINVAL', `set ${s}: "${a}" is not an IPv4 address`);
  const lines: string[] = [];
  const rebuild = !actual.chainOk || actual.sets === null;
  if (rebuild) {
    lines.push(`add table ${T}`, `add counter ${T} ${spec.counter}`);
    for (const s of spec.sets) lines.push(`add set ${T} ${s} { type ipv4_addr; }`);
    // a chain of ours with another hook or stray rules: replaced in the same transaction
    lines.push(`add chain ${T} ${spec.chain}`, `flush chain ${T} ${spec.chain}`, `delete chain ${T} ${spec.chain}`);
    lines.push(`add chain ${T} ${spec.chain} { type filter hook input priority filter; policy accept; }`);
    spec.rules.forEach((r, i) => lines.push(`add rule ${T} ${spec.chain} ${r} comment "${ruleTag(spec, i)}"`));
  }
  for (const s of spec.sets) {
    const w = [...new Set(want.get(s) ?? [])].sort();
    if (rebuild || !actual.sets?.has(s)) {
      lines.push(`flush set ${T} ${s}`);
      if (w.length) lines.push(`add element ${T} ${s} { ${w.join(', ')} }`);
      continue;
    }
    const have = new Set(actual.sets.get(s));
    const del = [...have].filter((a) => !w.includes(a)).sort();
    const add = w.filter((a) => !have.has(a));
    if (del.length) lines.push(`delete element ${T} ${s} { ${del.join(', ')} }`);
    if (add.length) lines.push(`add element ${T} ${s} { ${add.join(', ')} }`);
  }
  return lines.length ? lines.join('\n') + '\n' : '';
}

/** Pure: GuardActual from what `nft -j list table inet weave` prints (other owners' objects ignored). */
export function parseGuard(spec: GuardSpec, docs: Array<{ nftables?: Array<Record<string, any>> }>): GuardActual {
  const objs = docs.flatMap((d) => d.nftables ?? []);
  const chain = objs.find((o) => o.chain?.name === spec.chain)?.chain;
  const rules = objs.filter((o) => o.rule?.chain === spec.chain).map((o) => o.rule);
  const chainOk = !!chain && chain.hook === 'input' && chain.type === 'filter' && chain.policy === 'accept'
    && rules.length === spec.rules.length && rules.every((r, i) => r.comment === ruleTag(spec, i));
  const sets = new Map<string, string[]>();
  for (const s of spec.sets) {
    const set = objs.find((o) => o.set?.name === s)?.set;
    if (!set) return { chainOk, sets: null, dropped: 0 };
    sets.set(s, (set.elem ?? []).filter((e: unknown): e is string => typeof e === 'string'));
  }
  const counter = objs.find((o) => o.counter?.name === spec.counter)?.counter;
  if (!counter) return { chainOk, sets: null, dropped: 0 };
  return { chainOk, sets, dropped: Number(counter.packets) || 0 };
}

/**
 * Reads the table in one nft call (nft 1.0.6 mis-resolves set references when one call lists a chain
 * and sets separately: 'Unknown set in lookup expression'). No table: nothing of ours exists.
 */
export async function readGuard(ctx: HostCtx, spec: GuardSpec): Promise<GuardActual> {
  const argv = [...nsPrefix(ctx), 'nft', '-j', 'list', 'table', 'inet', NFT_TABLE];
  const r = await readHost(ctx, argv, { allowFail: true });
  if (r.code !== 0) {
    if (/No such file or directory/.test(r.stderr)) return { chainOk: false, sets: null, dropped: 0 };
    throw new HostError(`${argv.join(' ')}: ${r.stderr.trim() || `exit ${r.code}`}`, { command: argv.join(' '), stderr: r.stderr.trim(), code: r.code });
  }
  let doc: { nftables?: Array<Record<string, any>> };
  try {
    doc = JSON.parse(r.stdout.trim() || '{"nftables":[]}');
  } catch (e) {
    throw new HostError(`${argv.join(' ')}: unparsable JSON: ${(e as Error).message}`, { command: argv.join(' '), stderr: '', stdout: r.stdout.slice(0, 500) });
  }
  return parseGuard(spec, [doc]);
}

/** Removes our chain, sets and counter (idempotent: each is made first, then deleted). */
export async function removeGuard(ctx: HostCtx, spec: GuardSpec): Promise<void> {
  const lines = [`add table ${T}`, `add chain ${T} ${spec.chain}`, `flush chain ${T} ${spec.chain}`, `delete chain ${T} ${spec.chain}`];
  for (const s of spec.sets) lines.push(`add set ${T} ${s} { type ipv4_addr; }`, `delete set ${T} ${s}`);
  lines.push(`add counter ${T} ${spec.counter}`, `delete counter ${T} ${spec.counter}`);
  await nftApply(ctx, lines.join('\n') + '\n');
}

/**
 * Why the kernel cannot hold a guard at all (no nftables inet family: Debian's UML kernel has only the
 * bridge family; or no nft), or null for any other failure (worth a retry).
 */
export function guardUnsupported(e: unknown): string | null {
  if (!(e instanceof HostError)) return null;
  if (/^cannot run nft/.test(e.message)) return `nft is not installed: ${e.message}`;
  if (/Operation not supported\s*\n\s*add table inet/.test(e.stderr)) return 'the kernel lacks the nftables inet family (CONFIG_NF_TABLES_INET)';
  return null;
}

/** One pass: read, plan, apply. Returns what the counter said and whether anything was applied. */
export async function syncGuard(ctx: HostCtx, spec: GuardSpec, want: ReadonlyMap<string, readonly string[]>): Promise<{ dropped: number; applied: boolean; rebuilt: boolean }> {
  const actual = await readGuard(ctx, spec);
  const script = planGuard(spec, want, actual);
  if (script) await nftApply(ctx, script);
  return { dropped: actual.dropped, applied: script !== '', rebuilt: !actual.chainOk || actual.sets === null };
}

// ---- a guard without sets, kept in place by its own loop (weaveDNS) ------------------------------

export interface GuardStats {
  runs: number;
  errors: number;
  lastError?: string;
  repairs: number;
  dropped: number;
  /** set when this kernel cannot hold the guard (guardUnsupported): said once, not retried as an error */
  unavailable?: string;
}

/** Keeps one static guard chain in place (healing a flush) and its drop counter readable without a call. */
export class GuardReconciler extends LoopedReconciler<boolean, GuardStats> {
  private readonly log: Logger;
  private readonly none = new Map<string, string[]>();
  constructor(private readonly ctx: HostCtx, readonly spec: GuardSpec, clock: Clock, log: Logger) {
    const l = log.child({ component: 'guard', chain: spec.chain });
    super(clock, 20, { runs: 0, errors: 0, repairs: 0, dropped: 0 }, { log: l, what: `nft ${spec.chain}` });
    this.log = l;
  }

  protected async runOnce(): Promise<boolean> {
    let r: Awaited<ReturnType<typeof syncGuard>>;
    try {
      r = await syncGuard(this.ctx, this.spec, this.none);
    } catch (e) {
      const why = guardUnsupported(e);
      if (why === null) throw e;
      if (this.st.unavailable === undefined) this.log.warn({ reason: why }, 'nft guard unavailable on this host: the kernel layer of this check is missing');
      this.st.unavailable = why;
      return false;
    }
    this.st.unavailable = undefined;
    this.st.dropped = r.dropped;
    if (r.applied) {
      const first = this.st.repairs++ === 0;
      if (first) this.log.info({ table: `inet ${NFT_TABLE}` }, 'nft guard chain set up');
      else this.log.warn({ table: `inet ${NFT_TABLE}` }, 'nft guard chain was missing or changed: restored');
    }
    return r.applied;
  }

  /** Stops the loop and removes the chain and its counter. */
  async remove(): Promise<void> {
    this.stop();
    if (this.st.unavailable === undefined) await removeGuard(this.ctx, this.spec);
  }
}
