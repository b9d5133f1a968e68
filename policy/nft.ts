// The nftables side of the NetworkPolicy controller: Compiled (policy/compile.ts) -> `nft -f` scripts
// for the table `inet weave-npc`, the controller's own (the router's `inet weave` is never touched).
//
//   egress-fwd  hook forward, priority -5   established/related accept; from a pod veth: jump egress
//   egress-in   hook input,   priority -5   the same for a pod's packets to this node (its addresses, DNS)
//   ingress-fwd hook forward, priority 5    established/related accept; to a pod veth: jump ingress
//   egress / ingress   unclassified pod address: counted drop; else `ip saddr|daddr vmap @egress|@ingress`
//   ge-H / gi-H        one per policy group: jump to each policy's chain, then counter, log, drop
//   pe-H / pi-H        one per policy and direction: its rules, each ending in accept
// An accept in egress-fwd ends only that base chain; ingress-fwd still judges the packet, so a pod to
// pod packet on one node passes both. Traffic from the node itself (output hook: kubelet probes) is
// never judged. IPv6 through a pod veth is dropped: the overlay is IPv4, and no policy may be bypassed.
//
// Every change is one script applied with one `nft -f` (atomic): planChange writes only what differs
// from the model applied before (sets refilled, map and `known` elements added/removed, a changed
// policy's chain flushed and refilled); planFull rebuilds the table in one transaction.
import { NpcError } from './errors';
import { emptyCompiled, type Compiled, type Group, type Match, type PolicyChain, type SetDef } from './compile';
import type { Direction } from './model';

export const NPC_TABLE = 'weave-npc';
const T = `inet ${NPC_TABLE}`;

export interface NftOptions {
  /** interface-name pattern of local pods' host veths, e.g. "vethwepl*" */
  podIfaces: string;
  /** nfnetlink_log group the drop rules log to */
  logGroup: number;
  /** nft limit for the drop log, per group and direction, e.g. "1/second" */
  logRate: string;
}

export const UNKNOWN_COUNTER: Record<Direction, string> = { ingress: 'unclassified-i', egress: 'unclassified-e' };

export function checkNftOptions(o: NftOptions): void {
  if (!/^[A-Za-z0-9_.-]{1,14}\*?$/.test(o.podIfaces)) throw new NpcError('EINVAL', `bad pod interface pattern ${JSON.stringify(o.podIfaces)}`);
  if (!Number.isInteger(o.logGroup) || o.logGroup < 0 || o.logGroup > 65535) throw new NpcError('EINVAL', `log group ${o.logGroup} is not 0-65535`);
  if (!/^[1-9]\d{0,5}\/(second|minute|hour)$/.test(o.logRate)) throw new NpcError('EINVAL', `bad log rate ${JSON.stringify(o.logRate)} (like 1/second, 10/minute)`);
}

/** The log prefix of a group's drops: the controller maps it back to the group. */
export function logPrefix(g: Group): string {
  return `npc ${g.direction === 'ingress' ? 'i' : 'e'} ${g.chain}`;
}

export function matchText(d: Direction, m: Match): string {
  const parts: string[] = [];
  if (m.peers) parts.push(`ip ${d === 'ingress' ? 'saddr' : 'daddr'} @${m.peers}`);
  if (m.protocol) parts.push(`meta l4proto ${m.protocol.toLowerCase()}`);
  if (m.ports) parts.push(m.ports.length === 1 ? `th dport ${m.ports[0]}` : `th dport { ${m.ports.join(', ')} }`);
  if (m.named) parts.push(`ip daddr . meta l4proto . th dport @${m.named}`);
  parts.push('accept');
  return parts.join(' ');
}

function chainRules(c: PolicyChain): string[] {
  return c.matches.map((m) => matchText(c.direction, m));
}

function groupRules(g: Group, o: NftOptions): string[] {
  return [
    ...g.chains.map((c) => `jump ${c}`),
    `counter name ${g.counter}`,
    `limit rate ${o.logRate} burst 1 packets log group ${o.logGroup} prefix "${logPrefix(g)}"`,
    'drop',
  ];
}

function setDecl(s: SetDef): string {
  return s.kind === 'interval'
    ? `add set ${T} ${s.name} { type ipv4_addr; flags interval; }`
    : `add set ${T} ${s.name} { type ipv4_addr . inet_proto . inet_service; }`;
}

function elements(name: string, els: readonly string[], verb: 'add' | 'delete'): string[] {
  const out: string[] = [];
  // one line per 500 elements keeps each command small
  for (let i = 0; i < els.length; i += 500) out.push(`${verb} element ${T} ${name} { ${els.slice(i, i + 500).join(', ')} }`);
  return out;
}

function baseObjects(o: NftOptions): string[] {
  const pod = `"${o.podIfaces}"`;
  const l: string[] = [`add table ${T}`];
  for (const c of Object.values(UNKNOWN_COUNTER)) l.push(`add counter ${T} ${c}`);
  l.push(`add set ${T} known { type ipv4_addr; }`);
  l.push(`add map ${T} egress { type ipv4_addr : verdict; }`, `add map ${T} ingress { type ipv4_addr : verdict; }`);
  l.push(`add chain ${T} egress`, `add chain ${T} ingress`);
  l.push(`add rule ${T} egress meta nfproto ipv6 drop`);
  l.push(`add rule ${T} egress ip saddr != @known counter name ${UNKNOWN_COUNTER.egress} drop`);
  l.push(`add rule ${T} egress ip saddr vmap @egress`);
  l.push(`add rule ${T} ingress meta nfproto ipv6 drop`);
  l.push(`add rule ${T} ingress ip daddr != @known counter name ${UNKNOWN_COUNTER.ingress} drop`);
  l.push(`add rule ${T} ingress ip daddr vmap @ingress`);
  l.push(`add chain ${T} egress-fwd { type filter hook forward priority -5; policy accept; }`);
  l.push(`add rule ${T} egress-fwd ct state established,related accept`, `add rule ${T} egress-fwd iifname ${pod} jump egress`);
  l.push(`add chain ${T} egress-in { type filter hook input priority -5; policy accept; }`);
  l.push(`add rule ${T} egress-in ct state established,related accept`, `add rule ${T} egress-in iifname ${pod} jump egress`);
  l.push(`add chain ${T} ingress-fwd { type filter hook forward priority 5; policy accept; }`);
  l.push(`add rule ${T} ingress-fwd ct state established,related accept`, `add rule ${T} ingress-fwd oifname ${pod} jump ingress`);
  return l;
}

function same(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function mapElements(m: Map<string, string>, keys: Iterable<string>): string[] {
  return [...keys].map((k) => `${k} : goto ${m.get(k)}`);
}

/**
 * The script that turns `prev` (what the table holds now) into `next`; '' when they are equal.
 * Order inside the transaction: new sets and chains first (rules refer to them), then rules, then
 * map elements, then what nothing refers to any more is flushed and deleted.
 */
export function planChange(prev: Compiled, next: Compiled, o: NftOptions): string {
  const l: string[] = [];
  const del: string[] = [];
  for (const s of next.sets.values()) {
    const old = prev.sets.get(s.name);
    if (!old) { l.push(setDecl(s), ...elements(s.name, s.elements, 'add')); continue; }
    if (!same(old.elements, s.elements)) l.push(`flush set ${T} ${s.name}`, ...elements(s.name, s.elements, 'add'));
  }
  const chainsOf = (c: Compiled) => new Map<string, string[]>([
    ...[...c.chains.values()].map((x) => [x.name, chainRules(x)] as [string, string[]]),
    ...[...c.groups.values()].map((g) => [g.chain, groupRules(g, o)] as [string, string[]]),
  ]);
  const oldChains = chainsOf(prev);
  const newChains = chainsOf(next);
  for (const g of next.groups.values()) if (!prev.groups.has(g.chain)) l.push(`add counter ${T} ${g.counter}`);
  // policy chains before group chains: a group jumps to them
  for (const name of newChains.keys()) if (!oldChains.has(name)) l.push(`add chain ${T} ${name}`);
  for (const [name, rules] of newChains) {
    const old = oldChains.get(name);
    if (old && same(old, rules)) continue;
    if (old) l.push(`flush chain ${T} ${name}`);
    for (const r of rules) l.push(`add rule ${T} ${name} ${r}`);
  }
  const knownOld = new Set(prev.known);
  const knownNew = new Set(next.known);
  const addKnown = next.known.filter((a) => !knownOld.has(a));
  const delKnown = prev.known.filter((a) => !knownNew.has(a));
  for (const d of ['egress', 'ingress'] as const) {
    const a = prev.maps[d];
    const b = next.maps[d];
    const gone = [...a.keys()].filter((k) => a.get(k) !== b.get(k));
    const add = [...b.keys()].filter((k) => a.get(k) !== b.get(k));
    l.push(...elements(d, gone, 'delete'), ...elements(d, mapElements(b, add), 'add'));
  }
  // a new pod becomes known only with its map entries in place (same transaction: no window)
  l.push(...elements('known', addKnown, 'add'), ...elements('known', delKnown, 'delete'));
  for (const name of oldChains.keys()) if (!newChains.has(name)) l.push(`flush chain ${T} ${name}`);
  // groups first: they jump to policy chains
  for (const g of prev.groups.values()) if (!next.groups.has(g.chain)) del.push(`delete chain ${T} ${g.chain}`, `delete counter ${T} ${g.counter}`);
  for (const c of prev.chains.values()) if (!next.chains.has(c.name)) del.push(`delete chain ${T} ${c.name}`);
  for (const s of prev.sets.values()) if (!next.sets.has(s.name)) del.push(`delete set ${T} ${s.name}`);
  const all = [...l, ...del];
  return all.length ? all.join('\n') + '\n' : '';
}

/** The whole table from nothing, replacing whatever is there, in one transaction. */
export function planFull(next: Compiled, o: NftOptions): string {
  checkNftOptions(o);
  const empty = emptyCompiled(next.node);
  // `add table` first so that `delete table` cannot fail on a fresh host
  return [`add table ${T}`, `delete table ${T}`, ...baseObjects(o)].join('\n') + '\n' + planChange(empty, next, o);
}

/** Removes the table (idempotent). */
export function planRemove(): string {
  return `add table ${T}\ndelete table ${T}\n`;
}

/** Counts (packets) of every named counter in `nft -j list counters table inet weave-npc` output. */
export function parseCounters(doc: { nftables?: Array<Record<string, any>> }): Map<string, number> {
  const out = new Map<string, number>();
  for (const o of doc.nftables ?? []) if (o.counter && typeof o.counter.name === 'string') out.set(o.counter.name, Number(o.counter.packets) || 0);
  return out;
}
