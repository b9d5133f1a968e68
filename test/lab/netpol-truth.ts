// The expected reachability of Kubernetes NetworkPolicy, written from the API documentation
// (networking.k8s.io/v1) on the raw objects, independently of policy/: no code of the controller is
// used here, so the tests compare the controller (and the kernel) against a second reading of the
// semantics. Also the x/y/z × a/b/c cluster of the Kubernetes network-policy conformance tests.

export interface TNamespace { name: string; labels: Record<string, string> }
export interface TPort { name?: string; port: number; protocol: 'TCP' | 'UDP' | 'SCTP' }
export interface TPod { ns: string; name: string; labels: Record<string, string>; ip: string; node: string; ports: TPort[] }
export type TProto = 'TCP' | 'UDP' | 'SCTP';

function toU32(ip: string): number {
  return ip.split('.').reduce((a, o) => a * 256 + Number(o), 0);
}

function inCidr(ip: string, cidr: string): boolean {
  const [net, len] = cidr.split('/');
  const size = 2 ** (32 - Number(len));
  const start = Math.floor(toU32(net) / size) * size;
  const a = toU32(ip);
  return a >= start && a < start + size;
}

function selectorMatches(sel: any, labels: Record<string, string>): boolean {
  for (const [k, v] of Object.entries(sel?.matchLabels ?? {})) if (labels[k] !== v) return false;
  for (const e of sel?.matchExpressions ?? []) {
    const has = e.key in labels;
    if (e.operator === 'In' && !(has && e.values.includes(labels[e.key]))) return false;
    if (e.operator === 'NotIn' && has && e.values.includes(labels[e.key])) return false;
    if (e.operator === 'Exists' && !has) return false;
    if (e.operator === 'DoesNotExist' && has) return false;
  }
  return true;
}

function policyTypes(p: any): string[] {
  if (p.spec.policyTypes) return p.spec.policyTypes;
  return (p.spec.egress?.length ?? 0) > 0 ? ['Ingress', 'Egress'] : ['Ingress'];
}

/** A peer (from/to entry) contains the other end, seen from the policy's namespace. */
function peerContains(peer: any, policyNs: string, other: { ip: string; pod?: TPod }, nss: TNamespace[]): boolean {
  if (peer.ipBlock) {
    return inCidr(other.ip, peer.ipBlock.cidr) && !(peer.ipBlock.except ?? []).some((x: string) => inCidr(other.ip, x));
  }
  const pod = other.pod;
  if (!pod) return false;
  if (peer.namespaceSelector) {
    const ns = nss.find((n) => n.name === pod.ns);
    if (!ns || !selectorMatches(peer.namespaceSelector, ns.labels)) return false;
  } else if (pod.ns !== policyNs) return false;
  return peer.podSelector ? selectorMatches(peer.podSelector, pod.labels) : true;
}

function portAllows(p: any, proto: TProto, port: number, dst: TPod | undefined): boolean {
  if ((p.protocol ?? 'TCP') !== proto) return false;
  if (p.port === undefined) return true;
  if (typeof p.port === 'string') return !!dst && dst.ports.some((c) => c.name === p.port && c.protocol === proto && c.port === port);
  return port >= p.port && port <= (p.endPort ?? p.port);
}

function sideAllows(pols: any[], dir: 'Ingress' | 'Egress', subject: TPod, other: { ip: string; pod?: TPod }, dst: TPod | undefined, proto: TProto, port: number, nss: TNamespace[]): boolean {
  const sel = pols.filter((p) => p.metadata.namespace === subject.ns && policyTypes(p).includes(dir) && selectorMatches(p.spec.podSelector ?? {}, subject.labels));
  if (sel.length === 0) return true;
  const key = dir === 'Ingress' ? 'from' : 'to';
  return sel.some((p) => ((dir === 'Ingress' ? p.spec.ingress : p.spec.egress) ?? []).some((r: any) => {
    const peersOk = !r[key] || r[key].length === 0 || r[key].some((peer: any) => peerContains(peer, p.metadata.namespace, other, nss));
    const portsOk = !r.ports || r.ports.length === 0 || r.ports.some((x: any) => portAllows(x, proto, port, dst));
    return peersOk && portsOk;
  }));
}

/** Whether a new connection src -> dst:port/proto is allowed (a pod to itself always is: loopback). */
export function expectAllowed(pols: any[], nss: TNamespace[], src: TPod, dst: TPod, proto: TProto, port: number): boolean {
  if (src === dst) return true;
  return sideAllows(pols, 'Egress', src, { ip: dst.ip, pod: dst }, dst, proto, port, nss)
    && sideAllows(pols, 'Ingress', dst, { ip: src.ip, pod: src }, dst, proto, port, nss);
}

// ---- the conformance cluster ------------------------------------------------------------------

export const NAMESPACES = ['x', 'y', 'z'];
export const PODS = ['a', 'b', 'c'];
export const PORTS = [80, 81];

/** Named container ports as the conformance tests name them: serve-80-tcp, serve-81-udp ... */
export function conformancePorts(protos: TProto[]): TPort[] {
  return PORTS.flatMap((port) => protos.map((protocol) => ({ name: `serve-${port}-${protocol.toLowerCase()}`, port, protocol })));
}

/** x/a, x/b ... z/c with labels pod=NAME, namespaces with ns=NAME; pods spread over nodes by name. */
export function conformanceCluster(ips: (ns: string, pod: string) => string, nodes: string[], protos: TProto[]): { namespaces: TNamespace[]; pods: TPod[] } {
  const namespaces = NAMESPACES.map((n) => ({ name: n, labels: { ns: n } }));
  const pods: TPod[] = [];
  NAMESPACES.forEach((ns) => PODS.forEach((p, i) => {
    pods.push({ ns, name: p, labels: { pod: p }, ip: ips(ns, p), node: nodes[i % nodes.length], ports: conformancePorts(protos) });
  }));
  return { namespaces, pods };
}

export function namespaceObject(n: TNamespace): any {
  return { apiVersion: 'v1', kind: 'Namespace', metadata: { name: n.name, labels: { ...n.labels } } };
}

export function podObject(p: TPod): any {
  return {
    apiVersion: 'v1', kind: 'Pod',
    metadata: { namespace: p.ns, name: p.name, labels: { ...p.labels } },
    spec: { nodeName: p.node, containers: [{ name: 'c', image: 'none', ports: p.ports.map((x) => ({ name: x.name, containerPort: x.port, protocol: x.protocol })) }] },
    status: { phase: 'Running', podIP: p.ip, podIPs: [{ ip: p.ip }] },
  };
}

export function policyObject(ns: string, name: string, spec: any): any {
  return { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { namespace: ns, name }, spec };
}
