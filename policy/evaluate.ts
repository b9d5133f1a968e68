// An interpreter of the compiled model (policy/compile.ts): what the chains policy/nft.ts writes decide
// for the first packet of a connection, read from the same structures the script is written from.
// Unit tests check it against the Kubernetes semantics; the netns tests check the kernel against
// real traffic, so the two meet in the middle.
import { parseAddr } from '../lib/addr';
import { parseInterval, type Compiled, type Match, type SetDef } from './compile';
import type { Direction, Protocol } from './model';

export interface Packet {
  src: string;
  dst: string;
  /** ICMP and others: only rules without ports match */
  protocol: Protocol | 'ICMP';
  port?: number;
  /** the packet arrives from a local pod's veth (egress is judged) */
  fromLocalPod: boolean;
  /** the packet leaves through a local pod's veth (ingress is judged) */
  toLocalPod: boolean;
}

export type Verdict =
  | { allowed: true }
  | { allowed: false; direction: Direction; group?: string; reason: 'policy' | 'unclassified' };

function inSet(s: SetDef | undefined, el: string): boolean {
  if (!s) throw new Error(`rule refers to a missing set`);
  if (s.kind === 'named') return s.elements.includes(el);
  const a = parseAddr(el);
  return s.elements.some((e) => { const [x, y] = parseInterval(e); return a >= x && a < y; });
}

function portIn(ports: string[], port: number): boolean {
  return ports.some((p) => { const [a, b = a] = p.split('-').map(Number); return port >= a && port <= b; });
}

export function matchesPacket(c: Compiled, d: Direction, m: Match, pkt: Packet): boolean {
  if (m.peers && !inSet(c.sets.get(m.peers), d === 'ingress' ? pkt.src : pkt.dst)) return false;
  if (m.protocol && m.protocol !== pkt.protocol) return false;
  if (m.ports && (pkt.port === undefined || !portIn(m.ports, pkt.port))) return false;
  if (m.named && (pkt.port === undefined || !inSet(c.sets.get(m.named), `${pkt.dst} . ${String(pkt.protocol).toLowerCase()} . ${pkt.port}`))) return false;
  return true;
}

function judge(c: Compiled, d: Direction, addr: string, pkt: Packet): Verdict {
  if (!c.known.includes(addr)) return { allowed: false, direction: d, reason: 'unclassified' };
  const chain = c.maps[d].get(addr);
  if (!chain) return { allowed: true };
  const g = c.groups.get(chain);
  if (!g) throw new Error(`map entry for ${addr} names missing group ${chain}`);
  for (const name of g.chains) {
    const pc = c.chains.get(name);
    if (!pc) throw new Error(`group ${chain} jumps to missing chain ${name}`);
    if (pc.matches.some((m) => matchesPacket(c, d, m, pkt))) return { allowed: true };
  }
  return { allowed: false, direction: d, group: chain, reason: 'policy' };
}

/** The verdict for a new connection's first packet on this node. */
export function evaluate(c: Compiled, pkt: Packet): Verdict {
  if (pkt.fromLocalPod) {
    const v = judge(c, 'egress', pkt.src, pkt);
    if (!v.allowed) return v;
  }
  if (pkt.toLocalPod) return judge(c, 'ingress', pkt.dst, pkt);
  return { allowed: true };
}
