// NetworkPolicy scenarios modelled on the Kubernetes network-policy conformance tests
// (test/e2e/network/netpol): the x/y/z × a/b/c cluster of test/lab/netpol-truth.ts, one or more
// states per scenario. A state is the policies in force plus label changes on pods and namespaces;
// the tests move from state to state through the API while traffic runs and check the full matrix
// against expectAllowed after each one. Used by the unit tests (the compiled model's interpreter) and
// the netns test (real traffic through the kernel).
import { policyObject, type TNamespace, type TPod } from './netpol-truth';

export interface ScenarioState {
  policies: any[];
  /** label overrides: "ns/pod" -> labels; "ns" -> namespace labels */
  podLabels?: Record<string, Record<string, string>>;
  nsLabels?: Record<string, Record<string, string>>;
}

export interface Scenario {
  name: string;
  states: (c: { pods: TPod[]; namespaces: TNamespace[] }) => ScenarioState[];
}

const pol = policyObject;
const ip = (c: { pods: TPod[] }, ns: string, p: string) => c.pods.find((x) => x.ns === ns && x.name === p)!.ip;
const one = (policies: any[]): ScenarioState[] => [{ policies }];
const denyIngressX = pol('x', 'deny-ingress', { podSelector: {}, policyTypes: ['Ingress'] });
const podA = { matchLabels: { pod: 'a' } };

export const SCENARIOS: Scenario[] = [
  { name: 'no policies: everything reaches everything', states: () => one([]) },
  { name: 'default deny ingress in x', states: () => one([denyIngressX]) },
  { name: 'default deny egress in x', states: () => one([pol('x', 'deny-egress', { podSelector: {}, policyTypes: ['Egress'] })]) },
  { name: 'default deny all in x', states: () => one([pol('x', 'deny-all', { podSelector: {}, policyTypes: ['Ingress', 'Egress'] })]) },
  { name: 'allow all ingress in x (empty rule)', states: () => one([pol('x', 'allow-all', { podSelector: {}, ingress: [{}] })]) },
  { name: 'allow all egress in x, deny ingress', states: () => one([denyIngressX, pol('x', 'allow-egress', { podSelector: {}, egress: [{}], policyTypes: ['Egress'] })]) },
  { name: 'x/a ingress from pod b in x only', states: () => one([pol('x', 'a-from-b', { podSelector: podA, ingress: [{ from: [{ podSelector: { matchLabels: { pod: 'b' } } }] }] })]) },
  { name: 'x/a ingress from namespace y', states: () => one([pol('x', 'a-from-y', { podSelector: podA, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'y' } } }] }] })]) },
  { name: 'x/a ingress from pod b AND namespace y (one peer)', states: () => one([pol('x', 'a-from-yb', { podSelector: podA, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'y' } }, podSelector: { matchLabels: { pod: 'b' } } }] }] })]) },
  { name: 'x/a ingress from pod b OR namespace y (two peers)', states: () => one([pol('x', 'a-from-y-or-b', { podSelector: podA, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'y' } } }, { podSelector: { matchLabels: { pod: 'b' } } }] }] })]) },
  { name: 'matchExpressions In: x/a from pods b,c of x', states: () => one([pol('x', 'in', { podSelector: podA, ingress: [{ from: [{ podSelector: { matchExpressions: [{ key: 'pod', operator: 'In', values: ['b', 'c'] }] } }] }] })]) },
  { name: 'matchExpressions NotIn: x/a from namespaces other than y', states: () => one([pol('x', 'notin', { podSelector: podA, ingress: [{ from: [{ namespaceSelector: { matchExpressions: [{ key: 'ns', operator: 'NotIn', values: ['y'] }] } }] }] })]) },
  { name: 'matchExpressions Exists: x/a from every labelled pod of every namespace', states: () => one([pol('x', 'exists', { podSelector: podA, ingress: [{ from: [{ namespaceSelector: {}, podSelector: { matchExpressions: [{ key: 'pod', operator: 'Exists' }] } }] }] })]) },
  { name: 'matchExpressions DoesNotExist: x/a from namespaces without ns label (none)', states: () => one([pol('x', 'dne', { podSelector: podA, ingress: [{ from: [{ namespaceSelector: { matchExpressions: [{ key: 'ns', operator: 'DoesNotExist' }] } }] }] })]) },
  { name: 'policy selecting pods by expression: x/{a,b} deny ingress', states: () => one([pol('x', 'ab-deny', { podSelector: { matchExpressions: [{ key: 'pod', operator: 'In', values: ['a', 'b'] }] }, policyTypes: ['Ingress'] })]) },
  { name: 'x/a ingress from all namespaces (empty namespaceSelector)', states: () => one([denyIngressX, pol('x', 'a-from-all-ns', { podSelector: podA, ingress: [{ from: [{ namespaceSelector: {} }] }] })]) },
  { name: 'x/a ingress from all pods of x (empty podSelector)', states: () => one([pol('x', 'a-from-x', { podSelector: podA, ingress: [{ from: [{ podSelector: {} }] }] })]) },
  { name: 'x/a ingress on TCP 80 only', states: () => one([pol('x', 'a-80', { podSelector: podA, ingress: [{ ports: [{ port: 80 }] }] })]) },
  { name: 'x/a ingress on TCP 81 from namespace y', states: () => one([pol('x', 'a-81-y', { podSelector: podA, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'y' } } }], ports: [{ port: 81, protocol: 'TCP' }] }] })]) },
  { name: 'named port serve-80-tcp into x', states: () => one([pol('x', 'named-80', { podSelector: {}, ingress: [{ ports: [{ port: 'serve-80-tcp' }] }] })]) },
  { name: 'named port serve-81-udp (UDP) into x/a', states: () => one([pol('x', 'named-81-udp', { podSelector: podA, ingress: [{ ports: [{ port: 'serve-81-udp', protocol: 'UDP' }] }] })]) },
  { name: 'a UDP-only rule on 80 does not allow TCP 80', states: () => one([pol('x', 'udp-80', { podSelector: {}, ingress: [{ ports: [{ port: 80, protocol: 'UDP' }] }] })]) },
  { name: 'endPort 80-81 TCP into x/a', states: () => one([pol('x', 'range', { podSelector: podA, ingress: [{ ports: [{ port: 80, endPort: 81, protocol: 'TCP' }] }] })]) },
  { name: 'endPort 81-90 TCP into x/a (80 left out)', states: () => one([pol('x', 'range-81', { podSelector: podA, ingress: [{ ports: [{ port: 81, endPort: 90 }] }] })]) },
  { name: 'ipBlock: x/a ingress from y/b/32', states: (c) => one([pol('x', 'cidr', { podSelector: podA, ingress: [{ from: [{ ipBlock: { cidr: `${ip(c, 'y', 'b')}/32` } }] }] })]) },
  { name: 'ipBlock with except: x/a from the overlay except y/b', states: (c) => one([pol('x', 'cidr-except', { podSelector: podA, ingress: [{ from: [{ ipBlock: { cidr: '10.32.0.0/12', except: [`${ip(c, 'y', 'b')}/32`] } }] }] })]) },
  { name: 'egress x/a to ipBlock y/c/32', states: (c) => one([pol('x', 'eg-cidr', { podSelector: podA, policyTypes: ['Egress'], egress: [{ to: [{ ipBlock: { cidr: `${ip(c, 'y', 'c')}/32` } }] }] })]) },
  { name: 'egress x/a to the overlay except z/a and z/b', states: (c) => one([pol('x', 'eg-except', { podSelector: podA, egress: [{ to: [{ ipBlock: { cidr: '10.32.0.0/12', except: [`${ip(c, 'z', 'a')}/32`, `${ip(c, 'z', 'b')}/32`] } }] }], policyTypes: ['Egress'] })]) },
  { name: 'stacked: two policies on x/a add up (from x/b, from y/c)', states: () => one([
    pol('x', 'from-b', { podSelector: podA, ingress: [{ from: [{ podSelector: { matchLabels: { pod: 'b' } } }] }] }),
    pol('x', 'from-yc', { podSelector: podA, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'y' } }, podSelector: { matchLabels: { pod: 'c' } } }] }] }),
  ]) },
  { name: 'stacked: deny all in x plus allow x/a from z', states: () => one([denyIngressX, pol('x', 'a-from-z', { podSelector: podA, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'z' } } }] }] })]) },
  { name: 'ingress and egress together on x/a', states: () => one([pol('x', 'both', {
    podSelector: podA, policyTypes: ['Ingress', 'Egress'],
    ingress: [{ from: [{ podSelector: { matchLabels: { pod: 'b' } } }] }],
    egress: [{ to: [{ namespaceSelector: { matchLabels: { ns: 'y' } } }] }],
  })]) },
  { name: 'egress x/a to namespace z on 81 only', states: () => one([pol('x', 'eg-z-81', { podSelector: podA, egress: [{ to: [{ namespaceSelector: { matchLabels: { ns: 'z' } } }], ports: [{ port: 81 }] }] })]) },
  { name: 'egress from x to named port serve-80-tcp in y', states: () => one([pol('x', 'eg-named', { podSelector: {}, policyTypes: ['Egress'], egress: [{ to: [{ namespaceSelector: { matchLabels: { ns: 'y' } } }], ports: [{ port: 'serve-80-tcp' }] }] })]) },
  { name: 'policyTypes Ingress+Egress with ingress rules only: egress denied', states: () => one([pol('x', 'types', { podSelector: podA, policyTypes: ['Ingress', 'Egress'], ingress: [{}] })]) },
  { name: 'egress deny in x except NotIn a (x/b, x/c isolated)', states: () => one([pol('x', 'notin-a', { podSelector: { matchExpressions: [{ key: 'pod', operator: 'NotIn', values: ['a'] }] }, policyTypes: ['Egress'] })]) },
  { name: 'deny ingress in y, allow from namespace x', states: () => one([pol('y', 'from-x', { podSelector: {}, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'x' } } }] }] })]) },
  { name: 'egress in x only within x', states: () => one([pol('x', 'eg-x', { podSelector: {}, egress: [{ to: [{ podSelector: {} }] }], policyTypes: ['Egress'] })]) },
  { name: 'x/a from y/c on UDP 80 only', states: () => one([pol('x', 'yc-udp', { podSelector: podA, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'y' } }, podSelector: { matchLabels: { pod: 'c' } } }], ports: [{ port: 80, protocol: 'UDP' }] }] })]) },
  { name: 'default deny in every namespace, z/c open to x/a', states: () => one([
    ...['x', 'y', 'z'].map((n) => pol(n, 'deny', { podSelector: {}, policyTypes: ['Ingress', 'Egress'] })),
    pol('x', 'a-out', { podSelector: podA, policyTypes: ['Egress'], egress: [{ to: [{ namespaceSelector: { matchLabels: { ns: 'z' } }, podSelector: { matchLabels: { pod: 'c' } } }] }] }),
    pol('z', 'c-in', { podSelector: { matchLabels: { pod: 'c' } }, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'x' } }, podSelector: podA }] }] }),
  ]) },
  { name: 'one rule, two ports of two protocols (TCP 80, UDP 81)', states: () => one([pol('x', 'mixed', { podSelector: {}, ingress: [{ ports: [{ port: 80, protocol: 'TCP' }, { port: 81, protocol: 'UDP' }] }] })]) },
  { name: 'empty from with ports: any source on 81', states: () => one([pol('x', 'any-81', { podSelector: podA, ingress: [{ from: [], ports: [{ port: 81 }] }] })]) },
  { name: 'ipBlock 0.0.0.0/0 except the overlay: pods cut off from x', states: () => one([pol('x', 'world', { podSelector: {}, ingress: [{ from: [{ ipBlock: { cidr: '0.0.0.0/0', except: ['10.32.0.0/12'] } }] }] })]) },
  { name: 'namespace expression In (x,y) and pod a', states: () => one([pol('z', 'xy-a', { podSelector: {}, ingress: [{ from: [{ namespaceSelector: { matchExpressions: [{ key: 'ns', operator: 'In', values: ['x', 'y'] }] }, podSelector: podA }] }] })]) },
  // ---- changes while traffic runs ----
  { name: 'update: a policy changes its peers, then its ports', states: () => [
    { policies: [pol('x', 'upd', { podSelector: podA, ingress: [{ from: [{ podSelector: { matchLabels: { pod: 'b' } } }] }] })] },
    { policies: [pol('x', 'upd', { podSelector: podA, ingress: [{ from: [{ podSelector: { matchLabels: { pod: 'c' } } }] }] })] },
    { policies: [pol('x', 'upd', { podSelector: podA, ingress: [{ from: [{ podSelector: { matchLabels: { pod: 'c' } } }], ports: [{ port: 81, protocol: 'UDP' }] }] })] },
  ] },
  { name: 'update: pod labels move a pod into and out of a selection', states: () => {
    const p = [pol('x', 'from-b', { podSelector: podA, ingress: [{ from: [{ namespaceSelector: {}, podSelector: { matchLabels: { pod: 'b' } } }] }] })];
    return [{ policies: p }, { policies: p, podLabels: { 'z/c': { pod: 'b' } } }, { policies: p, podLabels: { 'y/b': { pod: 'x' }, 'z/c': { pod: 'b' } } }];
  } },
  { name: 'update: pod labels select and unselect the isolated pod', states: () => {
    const p = [pol('y', 'deny-a', { podSelector: podA, policyTypes: ['Ingress', 'Egress'] })];
    return [{ policies: p }, { policies: p, podLabels: { 'y/a': { pod: 'q' }, 'y/b': { pod: 'a' } } }];
  } },
  { name: 'update: namespace labels change a namespaceSelector', states: () => {
    const p = [pol('x', 'from-team', { podSelector: {}, ingress: [{ from: [{ namespaceSelector: { matchLabels: { team: 'blue' } } }] }] })];
    return [{ policies: p }, { policies: p, nsLabels: { y: { ns: 'y', team: 'blue' } } }, { policies: p, nsLabels: { z: { ns: 'z', team: 'blue' } } }];
  } },
  { name: 'delete: removing policies opens the pods again', states: () => [
    { policies: [denyIngressX, pol('x', 'deny-egress', { podSelector: {}, policyTypes: ['Egress'] })] },
    { policies: [denyIngressX] },
    { policies: [] },
  ] },
];

/** Pods and namespaces of the cluster with a state's label overrides applied. */
export function applyLabels(c: { pods: TPod[]; namespaces: TNamespace[] }, s: ScenarioState): { pods: TPod[]; namespaces: TNamespace[] } {
  return {
    pods: c.pods.map((p) => ({ ...p, labels: s.podLabels?.[`${p.ns}/${p.name}`] ?? p.labels })),
    namespaces: c.namespaces.map((n) => ({ ...n, labels: s.nsLabels?.[n.name] ?? n.labels })),
  };
}
