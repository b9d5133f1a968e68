// The Kubernetes objects the NetworkPolicy controller reads (core/v1 Namespace and Pod,
// networking.k8s.io/v1 NetworkPolicy), reduced to what enforcement needs, and their validation.
//
// Every object from the API goes through parsePod / parseNamespace / parsePolicy once; the rest of
// policy/ sees only these types. A policy the controller cannot enforce exactly is never dropped and
// never widened: parsePolicy keeps it with `problems` (policy name, field, reason) and the part that
// cannot be enforced becomes "deny" for the pods it selects (an invalid podSelector selects every pod
// of its namespace), so bad input can only make the network stricter, never open it.
import { isAddrText, tryParseCidr, type Cidr } from '../lib/addr';

export type Labels = Readonly<Record<string, string>>;
export type Protocol = 'TCP' | 'UDP' | 'SCTP';
export const PROTOCOLS: readonly Protocol[] = ['TCP', 'UDP', 'SCTP'];
export type Direction = 'ingress' | 'egress';

export interface Requirement {
  key: string;
  operator: 'In' | 'NotIn' | 'Exists' | 'DoesNotExist';
  values: string[];
}

/** A parsed label selector: every requirement must hold (matchLabels become In with one value). */
export interface Selector {
  requirements: Requirement[];
}

export interface Namespace {
  name: string;
  labels: Labels;
}

export interface ContainerPort {
  name?: string;
  port: number;
  protocol: Protocol;
}

export interface Pod {
  namespace: string;
  name: string;
  labels: Labels;
  /** the pod's IPv4 address once the runtime gave it one (status.podIP) */
  ip?: string;
  hostNetwork: boolean;
  nodeName?: string;
  ports: ContainerPort[];
  /** Succeeded/Failed pods hold no address any more */
  terminated: boolean;
}

export interface IpBlock {
  cidr: Cidr;
  except: Cidr[];
}

/** One entry of `from`/`to`: pods (selectors, AND-ed) or an address block. */
export type Peer =
  | { kind: 'pods'; podSelector?: Selector; namespaceSelector?: Selector }
  | { kind: 'ipBlock'; block: IpBlock };

export interface PortSpec {
  protocol: Protocol;
  /** undefined: every port of the protocol */
  port?: number | string;
  endPort?: number;
}

export interface Rule {
  /** undefined: any peer (the field was absent or empty) */
  peers?: Peer[];
  /** undefined: any port and protocol */
  ports?: PortSpec[];
}

export interface Problem {
  /** JSON path of the offending field, e.g. spec.ingress[0].from[1].ipBlock.cidr */
  field: string;
  reason: string;
}

export interface Policy {
  namespace: string;
  name: string;
  /** "namespace/name": how logs, status and nft comments name it */
  id: string;
  /** null: the selector itself is invalid, so the policy selects every pod of its namespace */
  podSelector: Selector | null;
  /** the directions the policy isolates (policyTypes, or its default) */
  types: Set<Direction>;
  ingress: Rule[];
  egress: Rule[];
  /** empty when enforced exactly; otherwise why not, and the directions denied because of it */
  problems: Problem[];
  denied: Set<Direction>;
}

// ---- label selectors -------------------------------------------------------------------------

/** Whether labels satisfy the selector (the empty selector matches everything). */
export function matches(sel: Selector, labels: Labels): boolean {
  for (const r of sel.requirements) {
    const has = Object.prototype.hasOwnProperty.call(labels, r.key);
    switch (r.operator) {
      case 'In': if (!has || !r.values.includes(labels[r.key])) return false; break;
      case 'NotIn': if (has && r.values.includes(labels[r.key])) return false; break;
      case 'Exists': if (!has) return false; break;
      case 'DoesNotExist': if (has) return false; break;
    }
  }
  return true;
}

const LABEL_KEY = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$/;

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Collects problems while parsing one object. */
class Problems {
  readonly list: Problem[] = [];
  add(field: string, reason: string): void { this.list.push({ field, reason }); }
  /** fields of obj outside `known`: a newer API's field this controller would ignore (so unsupported) */
  unknown(obj: Record<string, unknown>, at: string, known: readonly string[]): void {
    for (const k of Object.keys(obj)) if (!known.includes(k)) this.add(`${at}.${k}`, `unsupported field "${k}"`);
  }
}

function parseLabels(v: unknown): Labels {
  if (!isObj(v)) return {};
  const out: Record<string, string> = {};
  for (const [k, x] of Object.entries(v)) if (typeof x === 'string') out[k] = x;
  return out;
}

/** A selector object, or undefined with problems added. */
export function parseSelector(v: unknown, at: string, p: Problems = new Problems()): Selector | undefined {
  if (!isObj(v)) { p.add(at, 'a label selector must be an object'); return undefined; }
  const before = p.list.length;
  p.unknown(v, at, ['matchLabels', 'matchExpressions']);
  const requirements: Requirement[] = [];
  if (v.matchLabels !== undefined && v.matchLabels !== null) {
    if (!isObj(v.matchLabels)) p.add(`${at}.matchLabels`, 'must be a map of label to value');
    else {
      for (const [k, x] of Object.entries(v.matchLabels)) {
        if (!LABEL_KEY.test(k)) p.add(`${at}.matchLabels`, `invalid label key "${k}"`);
        if (typeof x !== 'string' || !LABEL_VALUE.test(x)) p.add(`${at}.matchLabels.${k}`, `invalid label value ${JSON.stringify(x)}`);
        else requirements.push({ key: k, operator: 'In', values: [x] });
      }
    }
  }
  if (v.matchExpressions !== undefined && v.matchExpressions !== null) {
    if (!Array.isArray(v.matchExpressions)) p.add(`${at}.matchExpressions`, 'must be a list');
    else v.matchExpressions.forEach((e, i) => {
      const r = parseRequirement(e, `${at}.matchExpressions[${i}]`, p);
      if (r) requirements.push(r);
    });
  }
  return p.list.length === before ? { requirements } : undefined;
}

function parseRequirement(e: unknown, at: string, p: Problems): Requirement | undefined {
  if (!isObj(e)) { p.add(at, 'must be an object'); return undefined; }
  p.unknown(e, at, ['key', 'operator', 'values']);
  const { key, operator } = e;
  const values = e.values === undefined || e.values === null ? [] : e.values;
  if (typeof key !== 'string' || !LABEL_KEY.test(key)) { p.add(`${at}.key`, `invalid label key ${JSON.stringify(key)}`); return undefined; }
  if (!Array.isArray(values) || !values.every((x) => typeof x === 'string')) { p.add(`${at}.values`, 'must be a list of strings'); return undefined; }
  switch (operator) {
    case 'In': case 'NotIn':
      if (values.length === 0) { p.add(`${at}.values`, `operator ${operator} needs at least one value`); return undefined; }
      return { key, operator, values };
    case 'Exists': case 'DoesNotExist':
      if (values.length !== 0) { p.add(`${at}.values`, `operator ${operator} takes no values`); return undefined; }
      return { key, operator, values: [] };
    default:
      p.add(`${at}.operator`, `unsupported operator ${JSON.stringify(operator)} (In, NotIn, Exists, DoesNotExist)`);
      return undefined;
  }
}

// ---- core objects ------------------------------------------------------------------------------

function meta(obj: unknown): { name: string; namespace: string; labels: Labels } {
  const m = isObj(obj) && isObj(obj.metadata) ? obj.metadata : {};
  return {
    name: typeof m.name === 'string' ? m.name : '',
    namespace: typeof m.namespace === 'string' ? m.namespace : '',
    labels: parseLabels(m.labels),
  };
}

export function parseNamespace(obj: unknown): Namespace {
  const m = meta(obj);
  if (!m.name) throw new Error('Namespace without metadata.name');
  return { name: m.name, labels: m.labels };
}

function asProtocol(v: unknown): Protocol | undefined {
  if (v === undefined || v === null) return 'TCP';
  return PROTOCOLS.includes(v as Protocol) ? v as Protocol : undefined;
}

export function parsePod(obj: unknown): Pod {
  const m = meta(obj);
  if (!m.name || !m.namespace) throw new Error('Pod without metadata.name or metadata.namespace');
  const o = obj as Record<string, any>;
  const spec = isObj(o.spec) ? o.spec : {};
  const status = isObj(o.status) ? o.status : {};
  const ports: ContainerPort[] = [];
  for (const c of Array.isArray(spec.containers) ? spec.containers : []) {
    for (const cp of isObj(c) && Array.isArray(c.ports) ? c.ports : []) {
      if (!isObj(cp) || !Number.isInteger(cp.containerPort)) continue;
      const protocol = asProtocol(cp.protocol);
      if (!protocol) continue;
      ports.push({ name: typeof cp.name === 'string' ? cp.name : undefined, port: cp.containerPort as number, protocol });
    }
  }
  const phase = status.phase;
  return {
    namespace: m.namespace,
    name: m.name,
    labels: m.labels,
    ip: isAddrText(status.podIP) ? status.podIP : undefined,
    hostNetwork: spec.hostNetwork === true,
    nodeName: typeof spec.nodeName === 'string' ? spec.nodeName : undefined,
    ports,
    terminated: phase === 'Succeeded' || phase === 'Failed',
  };
}

// ---- NetworkPolicy -----------------------------------------------------------------------------

function parsePort(v: unknown, at: string, p: Problems): PortSpec | undefined {
  if (!isObj(v)) { p.add(at, 'must be an object'); return undefined; }
  p.unknown(v, at, ['protocol', 'port', 'endPort']);
  const protocol = asProtocol(v.protocol);
  if (!protocol) { p.add(`${at}.protocol`, `unsupported protocol ${JSON.stringify(v.protocol)} (TCP, UDP, SCTP)`); return undefined; }
  const { port, endPort } = v;
  if (port === undefined || port === null) {
    if (endPort !== undefined && endPort !== null) { p.add(`${at}.endPort`, 'endPort needs a numeric port'); return undefined; }
    return { protocol };
  }
  if (typeof port === 'number') {
    if (!Number.isInteger(port) || port < 1 || port > 65535) { p.add(`${at}.port`, `port ${port} is not 1-65535`); return undefined; }
    if (endPort === undefined || endPort === null) return { protocol, port };
    if (typeof endPort !== 'number' || !Number.isInteger(endPort) || endPort < port || endPort > 65535) {
      p.add(`${at}.endPort`, `endPort ${JSON.stringify(endPort)} must be a number from port (${port}) to 65535`);
      return undefined;
    }
    return { protocol, port, endPort };
  }
  if (typeof port === 'string') {
    // the API's IntOrString: digits are a number
    if (/^\d+$/.test(port)) return parsePort({ ...v, port: Number(port) }, at, p);
    if (!/^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$/.test(port) || !/[a-z]/.test(port)) { p.add(`${at}.port`, `invalid port name "${port}"`); return undefined; }
    if (endPort !== undefined && endPort !== null) { p.add(`${at}.endPort`, 'endPort cannot go with a named port'); return undefined; }
    return { protocol, port };
  }
  p.add(`${at}.port`, 'must be a number or a port name');
  return undefined;
}

function parseIpBlock(v: unknown, at: string, p: Problems): IpBlock | undefined {
  if (!isObj(v)) { p.add(at, 'must be an object'); return undefined; }
  p.unknown(v, at, ['cidr', 'except']);
  const cidr = tryParseCidr(v.cidr);
  if (!cidr) {
    const ipv6 = typeof v.cidr === 'string' && v.cidr.includes(':');
    p.add(`${at}.cidr`, ipv6 ? `IPv6 block ${v.cidr} is not supported (the overlay is IPv4)` : `invalid CIDR ${JSON.stringify(v.cidr)} (address/prefix, host bits zero)`);
    return undefined;
  }
  const except: Cidr[] = [];
  const ex = v.except === undefined || v.except === null ? [] : v.except;
  if (!Array.isArray(ex)) { p.add(`${at}.except`, 'must be a list of CIDRs'); return undefined; }
  for (const [i, e] of ex.entries()) {
    const c = tryParseCidr(e);
    if (!c) { p.add(`${at}.except[${i}]`, `invalid CIDR ${JSON.stringify(e)}`); return undefined; }
    if (c.start < cidr.start || c.end > cidr.end) { p.add(`${at}.except[${i}]`, `${e} is not inside ${v.cidr}`); return undefined; }
    except.push(c);
  }
  return { cidr, except };
}

function parsePeer(v: unknown, at: string, p: Problems): Peer | undefined {
  if (!isObj(v)) { p.add(at, 'must be an object'); return undefined; }
  const before = p.list.length;
  p.unknown(v, at, ['podSelector', 'namespaceSelector', 'ipBlock']);
  const has = (k: string) => v[k] !== undefined && v[k] !== null;
  if (has('ipBlock')) {
    if (has('podSelector') || has('namespaceSelector')) { p.add(at, 'ipBlock cannot be combined with podSelector or namespaceSelector'); return undefined; }
    const block = parseIpBlock(v.ipBlock, `${at}.ipBlock`, p);
    return block && p.list.length === before ? { kind: 'ipBlock', block } : undefined;
  }
  if (!has('podSelector') && !has('namespaceSelector')) { p.add(at, 'a peer needs podSelector, namespaceSelector or ipBlock'); return undefined; }
  const podSelector = has('podSelector') ? parseSelector(v.podSelector, `${at}.podSelector`, p) : undefined;
  const namespaceSelector = has('namespaceSelector') ? parseSelector(v.namespaceSelector, `${at}.namespaceSelector`, p) : undefined;
  return p.list.length === before ? { kind: 'pods', podSelector, namespaceSelector } : undefined;
}

function parseRules(v: unknown, at: string, peerKey: 'from' | 'to', p: Problems): Rule[] | undefined {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) { p.add(at, 'must be a list of rules'); return undefined; }
  const before = p.list.length;
  const rules: Rule[] = [];
  v.forEach((r, i) => {
    const ra = `${at}[${i}]`;
    if (!isObj(r)) { p.add(ra, 'must be an object'); return; }
    p.unknown(r, ra, [peerKey, 'ports']);
    const rule: Rule = {};
    const peers = r[peerKey];
    if (Array.isArray(peers) && peers.length > 0) rule.peers = peers.map((x, j) => parsePeer(x, `${ra}.${peerKey}[${j}]`, p)).filter((x): x is Peer => !!x);
    else if (peers !== undefined && peers !== null && !Array.isArray(peers)) p.add(`${ra}.${peerKey}`, 'must be a list');
    const ports = r.ports;
    if (Array.isArray(ports) && ports.length > 0) rule.ports = ports.map((x, j) => parsePort(x, `${ra}.ports[${j}]`, p)).filter((x): x is PortSpec => !!x);
    else if (ports !== undefined && ports !== null && !Array.isArray(ports)) p.add(`${ra}.ports`, 'must be a list');
    rules.push(rule);
  });
  return p.list.length === before ? rules : undefined;
}

/**
 * A NetworkPolicy object -> Policy. Never throws for a bad spec: each problem is listed and the
 * direction it touches is denied (its rules dropped) for the pods the policy selects.
 */
export function parsePolicy(obj: unknown): Policy {
  const m = meta(obj);
  if (!m.name || !m.namespace) throw new Error('NetworkPolicy without metadata.name or metadata.namespace');
  const p = new Problems();
  const o = obj as Record<string, unknown>;
  const spec = isObj(o.spec) ? o.spec : (p.add('spec', 'missing'), {} as Record<string, unknown>);
  p.unknown(spec, 'spec', ['podSelector', 'policyTypes', 'ingress', 'egress']);
  const specProblems = p.list.length;
  const podSelector = parseSelector(spec.podSelector ?? {}, 'spec.podSelector', p) ?? null;

  const denied = new Set<Direction>();
  const types = new Set<Direction>();
  if (spec.policyTypes === undefined || spec.policyTypes === null) {
    types.add('ingress');
    if (Array.isArray(spec.egress) && spec.egress.length > 0) types.add('egress');
  } else if (!Array.isArray(spec.policyTypes) || spec.policyTypes.some((t) => t !== 'Ingress' && t !== 'Egress')) {
    p.add('spec.policyTypes', `must list Ingress and/or Egress, got ${JSON.stringify(spec.policyTypes)}`);
    types.add('ingress').add('egress');
    denied.add('ingress').add('egress');
  } else {
    for (const t of spec.policyTypes) types.add(t === 'Ingress' ? 'ingress' : 'egress');
  }

  const before = p.list.length;
  const ingress = parseRules(spec.ingress, 'spec.ingress', 'from', p);
  if (!ingress || p.list.length > before) denied.add('ingress');
  const mid = p.list.length;
  const egress = parseRules(spec.egress, 'spec.egress', 'to', p);
  if (!egress || p.list.length > mid) denied.add('egress');
  // an unknown top-level spec field or a bad selector: the policy's meaning is unknown in both directions
  if (specProblems > 0 || podSelector === null) { denied.add('ingress'); denied.add('egress'); }
  // a direction denied because of a problem is isolating even when policyTypes left it out
  for (const d of denied) types.add(d);
  return {
    namespace: m.namespace,
    name: m.name,
    id: `${m.namespace}/${m.name}`,
    podSelector,
    types,
    ingress: denied.has('ingress') ? [] : ingress ?? [],
    egress: denied.has('egress') ? [] : egress ?? [],
    problems: p.list,
    denied,
  };
}

/** Whether the policy selects the pod (same namespace; hostNetwork pods are never selected). */
export function selects(pol: Policy, pod: Pod): boolean {
  if (pod.hostNetwork || pod.namespace !== pol.namespace) return false;
  return pol.podSelector === null || matches(pol.podSelector, pod.labels);
}

/** Whether a pod (in a namespace with nsLabels) is one of the peer's pods, seen from policyNs. */
export function peerHasPod(peer: Peer, policyNs: string, pod: Pod, nsLabels: Labels | undefined): boolean {
  if (peer.kind !== 'pods' || pod.hostNetwork) return false;
  if (peer.namespaceSelector) {
    if (!nsLabels || !matches(peer.namespaceSelector, nsLabels)) return false;
  } else if (pod.namespace !== policyNs) {
    return false;
  }
  return !peer.podSelector || matches(peer.podSelector, pod.labels);
}

/** The port numbers a named port resolves to on one pod (by name and protocol). */
export function resolveNamedPort(pod: Pod, name: string, protocol: Protocol): number[] {
  return pod.ports.filter((c) => c.name === name && c.protocol === protocol).map((c) => c.port);
}
