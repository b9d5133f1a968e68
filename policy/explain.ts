// Why a packet was dropped, in words an operator can act on: for each policy that selects the pod in
// that direction, why none of its rules allowed the packet (no rules; the peer is not in any rule's
// from/to; the port or protocol is not listed). Works on the model (policy/model.ts), not on nft, so
// the words name selectors and ports as the policy's author wrote them.
import { formatCidr, parseAddr } from '../lib/addr';
import { peerHasPod, resolveNamedPort, type Direction, type Labels, type Peer, type Pod, type Policy, type PortSpec, type Protocol, type Rule } from './model';

export interface Endpoint {
  ip: string;
  /** the pod with this address, when the controller knows one */
  pod?: Pod;
}

export interface PolicyWhy {
  policy: string;
  why: string;
}

function selectorText(s: { requirements: Array<{ key: string; operator: string; values: string[] }> } | undefined): string {
  if (!s) return '';
  if (s.requirements.length === 0) return '{}';
  return s.requirements.map((r) => {
    if (r.operator === 'In' && r.values.length === 1) return `${r.key}=${r.values[0]}`;
    if (r.operator === 'Exists') return r.key;
    if (r.operator === 'DoesNotExist') return `!${r.key}`;
    return `${r.key} ${r.operator === 'In' ? 'in' : 'notin'} (${r.values.join(',')})`;
  }).join(',');
}

export function peerText(p: Peer): string {
  if (p.kind === 'ipBlock') {
    return `ipBlock ${formatCidr(p.block.cidr)}${p.block.except.length ? ` except ${p.block.except.map(formatCidr).join(',')}` : ''}`;
  }
  const parts: string[] = [];
  if (p.namespaceSelector) parts.push(`namespaces ${selectorText(p.namespaceSelector)}`);
  if (p.podSelector) parts.push(`pods ${selectorText(p.podSelector)}`);
  return parts.join(' and ');
}

function portText(p: PortSpec): string {
  if (p.port === undefined) return `any/${p.protocol}`;
  return `${p.port}${p.endPort !== undefined ? `-${p.endPort}` : ''}/${p.protocol}`;
}

function peerMatches(peer: Peer, policyNs: string, other: Endpoint, nsLabels: (ns: string) => Labels | undefined): boolean {
  if (peer.kind === 'ipBlock') {
    const a = parseAddr(other.ip);
    const { cidr, except } = peer.block;
    return a >= cidr.start && a < cidr.end && !except.some((x) => a >= x.start && a < x.end);
  }
  return !!other.pod && peerHasPod(peer, policyNs, other.pod, nsLabels(other.pod.namespace));
}

function portMatches(p: PortSpec, protocol: Protocol | 'ICMP', port: number | undefined, dst: Endpoint): boolean {
  if (p.protocol !== protocol) return false;
  if (p.port === undefined) return true;
  if (port === undefined) return false;
  if (typeof p.port === 'number') return port >= p.port && port <= (p.endPort ?? p.port);
  return !!dst.pod && resolveNamedPort(dst.pod, p.port, p.protocol).includes(port);
}

/** Why one rule did not allow the packet, or null when it does. */
function ruleWhy(rule: Rule, i: number, pol: Policy, d: Direction, other: Endpoint, dst: Endpoint, protocol: Protocol | 'ICMP', port: number | undefined, nsLabels: (ns: string) => Labels | undefined): string | null {
  const who = other.pod ? `${other.pod.namespace}/${other.pod.name}` : other.ip;
  if (rule.peers && !rule.peers.some((p) => peerMatches(p, pol.namespace, other, nsLabels))) {
    return `rule ${i + 1}: ${d === 'ingress' ? 'source' : 'destination'} ${who} is not in ${d === 'ingress' ? 'from' : 'to'} [${rule.peers.map(peerText).join('; ')}]`;
  }
  if (rule.ports && !rule.ports.some((p) => portMatches(p, protocol, port, dst))) {
    return `rule ${i + 1}: ${port ?? ''}/${protocol} is not in ports [${rule.ports.map(portText).join(', ')}]`;
  }
  return null;
}

/**
 * For each policy (those selecting the pod judged in direction d), why it did not allow the packet.
 * A policy that would allow it is left out (so an empty list means the model allows the packet).
 */
export function explainDrop(policies: readonly Policy[], d: Direction, src: Endpoint, dst: Endpoint, protocol: Protocol | 'ICMP', port: number | undefined, nsLabels: (ns: string) => Labels | undefined): PolicyWhy[] {
  const other = d === 'ingress' ? src : dst;
  const out: PolicyWhy[] = [];
  for (const pol of policies) {
    const rules = d === 'ingress' ? pol.ingress : pol.egress;
    if (pol.denied.has(d)) {
      out.push({ policy: pol.id, why: `cannot be enforced (${pol.problems.map((p) => `${p.field}: ${p.reason}`).join('; ')}): denies all ${d}` });
      continue;
    }
    if (rules.length === 0) { out.push({ policy: pol.id, why: `no ${d} rules: denies all ${d}` }); continue; }
    const whys: string[] = [];
    let allowed = false;
    rules.forEach((r, i) => {
      const w = ruleWhy(r, i, pol, d, other, dst, protocol, port, nsLabels);
      if (w === null) allowed = true; else whys.push(w);
    });
    if (!allowed) out.push({ policy: pol.id, why: whys.join('; ') });
  }
  return out;
}
