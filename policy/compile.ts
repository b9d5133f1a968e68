// NetworkPolicy -> the node's enforcement model: what policy/nft.ts writes into `inet weave-npc` and
// policy/evaluate.ts interprets. Pure: (namespaces, all pods, policies, this node) -> Compiled.
//
// How a new connection is judged (conntrack passes everything after its first packet):
//   egress   on the source's node: a packet from a local pod's veth. Its address must be a pod the
//            controller has classified (`known`), else it is dropped (no window for new pods). The
//            `egress` map sends the pod's address to the chain of its policy group: the set of
//            policies that select it for Egress. The group chain jumps to each policy's chain; any
//            rule there that matches accepts; none: counted, logged (rate-limited), dropped. Pods no
//            Egress policy selects are not in the map: allowed.
//   ingress  on the destination's node, the same for a packet to a local pod's veth, with the
//            `ingress` map and the policies selecting the destination for Ingress.
// A rule is one match per protocol: peers (an interval set of addresses: the peer pods' IPs and the
// ipBlocks minus their excepts) and ports (numbers and ranges in the rule; named ports through a set
// `np-NAME` of pod . protocol . port, so they resolve per destination pod). Sets are keyed by what
// they mean, so a pod or label change moves set and map elements and leaves the rules alone; only a
// policy change rewrites its own chain.
import { createHash } from 'crypto';
import { formatAddr, parseAddr } from '../lib/addr';
import {
  matches, selects, type Direction, type Namespace, type Peer, type Pod, type Policy, type Protocol, type Rule,
} from './model';

export interface ClusterState {
  namespaces: ReadonlyMap<string, Namespace>;
  /** every pod of the cluster (peers live on any node) */
  pods: readonly Pod[];
  policies: readonly Policy[];
}

/** One rule of a policy chain: all given parts must match; then accept. */
export interface Match {
  /** interval set of peer addresses (source for ingress, destination for egress); absent: any */
  peers?: string;
  protocol?: Protocol;
  /** destination ports "80" or "1000-2000"; absent: every port of the protocol */
  ports?: string[];
  /** set of destination address . protocol . port for a named port; absent: no named port */
  named?: string;
}

export interface PolicyChain {
  name: string;
  policy: string;
  direction: Direction;
  matches: Match[];
}

/** The policies that select some local pods in one direction; its chain ends in the counted drop. */
export interface Group {
  chain: string;
  counter: string;
  direction: Direction;
  /** policy ids, sorted */
  policies: string[];
  /** their chains, in the same order */
  chains: string[];
}

export interface SetDef {
  name: string;
  /** interval: IPv4 ranges; named: "ADDR . proto . PORT" */
  kind: 'interval' | 'named';
  /** sorted, canonical text */
  elements: string[];
}

export interface Compiled {
  node: string;
  /** addresses of local pods the controller has classified, sorted */
  known: string[];
  sets: Map<string, SetDef>;
  chains: Map<string, PolicyChain>;
  groups: Map<string, Group>;
  /** local pod address -> its group chain, per direction */
  maps: Record<Direction, Map<string, string>>;
  /** peer and named-port sets by what they mean: reused by the next compile while no pod or namespace changed */
  setsByKey: Map<string, SetDef>;
}

export function hash(s: string, n = 10): string {
  return createHash('sha256').update(s).digest('hex').slice(0, n);
}

export function policyChainName(id: string, d: Direction): string {
  return `p${d === 'ingress' ? 'i' : 'e'}-${hash(id)}`;
}

export function groupKey(d: Direction, policies: readonly string[]): string {
  return `${d}|${[...policies].sort().join(',')}`;
}

/** A pod that holds an address of its own on the overlay (peers and selections only see these). */
export function addressed(p: Pod): p is Pod & { ip: string } {
  return !!p.ip && !p.hostNetwork && !p.terminated;
}

// ---- address intervals ------------------------------------------------------------------------

/** Merges [start, end) ranges and writes them as nft interval elements. */
export function intervalElements(ranges: Array<[number, number]>): string[] {
  const sorted = ranges.filter(([a, b]) => b > a).sort((x, y) => x[0] - y[0]);
  const merged: Array<[number, number]> = [];
  for (const r of sorted) {
    const last = merged[merged.length - 1];
    if (last && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
    else merged.push([r[0], r[1]]);
  }
  return merged.map(([a, b]) => (b - a === 1 ? formatAddr(a) : `${formatAddr(a)}-${formatAddr(b - 1)}`));
}

/** [start, end) of each element written by intervalElements. */
export function parseInterval(e: string): [number, number] {
  const dash = e.indexOf('-');
  if (dash < 0) { const a = parseAddr(e); return [a, a + 1]; }
  return [parseAddr(e.slice(0, dash)), parseAddr(e.slice(dash + 1)) + 1];
}

/** A block minus its excepts, as ranges. */
function blockRanges(start: number, end: number, except: Array<{ start: number; end: number }>): Array<[number, number]> {
  let out: Array<[number, number]> = [[start, end]];
  for (const x of except) {
    const next: Array<[number, number]> = [];
    for (const [a, b] of out) {
      if (x.end <= a || x.start >= b) { next.push([a, b]); continue; }
      if (x.start > a) next.push([a, x.start]);
      if (x.end < b) next.push([x.end, b]);
    }
    out = next;
  }
  return out;
}

// ---- compilation ------------------------------------------------------------------------------

export interface Reuse {
  /** the previous compile's setsByKey */
  sets: Map<string, SetDef>;
  /** namespaces in which a Pod was added, changed or deleted since */
  dirtyNs: ReadonlySet<string>;
}

class Builder {
  readonly sets = new Map<string, SetDef>();
  readonly setsByKey = new Map<string, SetDef>();
  private readonly peerSetByKey = new Map<string, string>();
  private readonly named = new Map<string, Set<string>>();
  private indexed = false;
  /** addressed pods by namespace, each with its address as a number (parsed once per compile) */
  private readonly byNs = new Map<string, Array<{ pod: Pod & { ip: string }; addr: number }>>();
  constructor(private readonly st: ClusterState, private readonly addressedPods: Array<Pod & { ip: string }>, private readonly reuse?: Reuse) {}

  /** pods by namespace and named ports, built on first need (a compile that reuses every set never does) */
  private index(): void {
    if (this.indexed) return;
    this.indexed = true;
    for (const pod of this.addressedPods) {
      let l = this.byNs.get(pod.namespace);
      if (!l) this.byNs.set(pod.namespace, (l = []));
      l.push({ pod, addr: parseAddr(pod.ip) });
      for (const c of pod.ports) {
        if (!c.name) continue;
        let n = this.named.get(c.name);
        if (!n) this.named.set(c.name, (n = new Set()));
        n.add(`${pod.ip} . ${c.protocol.toLowerCase()} . ${c.port}`);
      }
    }
  }

  /** The interval set of a rule's peers (shared by every rule with the same peers in the same namespace). */
  peerSet(policyNs: string, peers: Peer[]): string {
    const key = `${policyNs}|${JSON.stringify(peers)}`;
    const have = this.peerSetByKey.get(key);
    if (have) return have;
    const scopes = peers.map((peer) => (peer.kind === 'ipBlock' ? [] : peer.namespaceSelector
      ? [...this.st.namespaces.values()].filter((n) => matches(peer.namespaceSelector!, n.labels)).map((n) => n.name)
      : [policyNs]));
    const old = this.reuse?.sets.get(key);
    if (old && !scopes.some((nss) => nss.some((ns) => this.reuse!.dirtyNs.has(ns)))) {
      this.keep(key, old);
      this.peerSetByKey.set(key, old.name);
      return old.name;
    }
    this.index();
    const name = `peer-${hash(key)}`;
    const ranges: Array<[number, number]> = [];
    peers.forEach((peer, i) => {
      if (peer.kind === 'ipBlock') {
        ranges.push(...blockRanges(peer.block.cidr.start, peer.block.cidr.end, peer.block.except));
        return;
      }
      // the namespaces first (few), then only their pods: peerHasPod's semantics, without visiting every pod
      for (const ns of scopes[i]) {
        for (const { pod, addr } of this.byNs.get(ns) ?? []) {
          if (!peer.podSelector || matches(peer.podSelector, pod.labels)) ranges.push([addr, addr + 1]);
        }
      }
    });
    this.keep(key, { name, kind: 'interval', elements: intervalElements(ranges) });
    this.peerSetByKey.set(key, name);
    return name;
  }

  private keep(key: string, s: SetDef): void {
    this.sets.set(s.name, s);
    this.setsByKey.set(key, s);
  }

  /** np-NAME: every addressed pod's container port called NAME, as ADDR . proto . PORT. */
  namedSet(portName: string): string {
    const name = `np-${portName}`;
    if (this.sets.has(name)) return name;
    const old = this.reuse?.sets.get(name);
    if (old && this.reuse!.dirtyNs.size === 0) { this.keep(name, old); return name; }
    this.index();
    this.keep(name, { name, kind: 'named', elements: [...(this.named.get(portName) ?? [])].sort() });
    return name;
  }

  ruleMatches(policyNs: string, rule: Rule): Match[] {
    const peers = rule.peers ? this.peerSet(policyNs, rule.peers) : undefined;
    if (!rule.ports) return [peers ? { peers } : {}];
    const out: Match[] = [];
    const numeric = new Map<Protocol, Set<string> | null>();
    for (const p of rule.ports) {
      if (typeof p.port === 'string') {
        out.push({ ...(peers ? { peers } : {}), protocol: p.protocol, named: this.namedSet(p.port) });
        continue;
      }
      if (p.port === undefined) { numeric.set(p.protocol, null); continue; }
      const cur = numeric.get(p.protocol);
      if (cur === null) continue;
      const set = cur ?? new Set<string>();
      set.add(p.endPort !== undefined && p.endPort !== p.port ? `${p.port}-${p.endPort}` : String(p.port));
      numeric.set(p.protocol, set);
    }
    for (const [protocol, ports] of numeric) {
      const m: Match = { ...(peers ? { peers } : {}), protocol };
      if (ports) m.ports = [...ports].sort(comparePorts);
      out.push(m);
    }
    return out;
  }
}

function comparePorts(a: string, b: string): number {
  return parseInt(a, 10) - parseInt(b, 10) || a.localeCompare(b);
}

/**
 * The whole model for one node. Deterministic: equal inputs give equal outputs, names included.
 * `reuse`: the previous compile's sets and the namespaces whose pods changed since (no Namespace may
 * have changed): a policy change then recomputes its rules, not the peers' addresses, and a pod change
 * only the sets that cover its namespace.
 */
export function compile(st: ClusterState, node: string, reuse?: Reuse): Compiled {
  const addressedPods = st.pods.filter(addressed);
  const local = addressedPods.filter((p) => p.nodeName === node);
  const b = new Builder(st, addressedPods, reuse);
  const policies = [...st.policies].sort((x, y) => x.id.localeCompare(y.id));
  const chains = new Map<string, PolicyChain>();
  const chainName = new Map<string, string>();
  for (const pol of policies) {
    for (const d of ['ingress', 'egress'] as const) {
      if (!pol.types.has(d)) continue;
      const name = policyChainName(pol.id, d);
      chainName.set(`${d}|${pol.id}`, name);
      const rules = d === 'ingress' ? pol.ingress : pol.egress;
      chains.set(name, { name, policy: pol.id, direction: d, matches: rules.flatMap((r) => b.ruleMatches(pol.namespace, r)) });
    }
  }
  const groups = new Map<string, Group>();
  const maps: Record<Direction, Map<string, string>> = { ingress: new Map(), egress: new Map() };
  // which policies select each local pod, per direction: each policy looks only at its namespace's pods
  const localByNs = new Map<string, Pod[]>();
  for (const p of local) { const l = localByNs.get(p.namespace); if (l) l.push(p); else localByNs.set(p.namespace, [p]); }
  const selected: Record<Direction, Map<Pod, string[]>> = { ingress: new Map(), egress: new Map() };
  for (const pol of policies) {
    for (const pod of localByNs.get(pol.namespace) ?? []) {
      if (!selects(pol, pod)) continue;
      for (const d of ['ingress', 'egress'] as const) {
        if (!pol.types.has(d)) continue;
        const l = selected[d].get(pod);
        if (l) l.push(pol.id); else selected[d].set(pod, [pol.id]);
      }
    }
  }
  const chainOf = new Map<string, string>();
  for (const d of ['ingress', 'egress'] as const) {
    for (const [pod, sel] of selected[d]) {
      const gk = groupKey(d, sel);
      let chain = chainOf.get(gk);
      if (!chain) {
        const h = hash(gk);
        chain = `g${d === 'ingress' ? 'i' : 'e'}-${h}`;
        chainOf.set(gk, chain);
        groups.set(chain, { chain, counter: `drop${d === 'ingress' ? 'i' : 'e'}-${h}`, direction: d, policies: sel, chains: sel.map((id) => chainName.get(`${d}|${id}`)!) });
      }
      maps[d].set(pod.ip!, chain);
    }
  }
  return { node, known: [...new Set(local.map((p) => p.ip))].sort(), sets: b.sets, chains, groups, maps, setsByKey: b.setsByKey };
}

/** An empty model (nothing applied yet). */
export function emptyCompiled(node: string): Compiled {
  return { node, known: [], sets: new Map(), chains: new Map(), groups: new Map(), maps: { ingress: new Map(), egress: new Map() }, setsByKey: new Map() };
}
