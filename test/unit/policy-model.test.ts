// policy/model.ts: label selectors (matchLabels, the four operators), the objects the controller reads,
// and validation: a policy it cannot enforce is kept with its name, field and reason, and the part that
// cannot be enforced denies for the pods it selects (never fails open).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { matches, parsePod, parsePolicy, parseSelector, peerHasPod, resolveNamedPort, selects, type Pod } from '../../policy/model';
import { podObject, policyObject } from '../lab/netpol-truth';

const sel = (v: unknown) => { const s = parseSelector(v, 'sel'); assert.ok(s, 'selector parses'); return s; };

test('selectors: matchLabels and In/NotIn/Exists/DoesNotExist, AND-ed; {} matches all', () => {
  const l = { app: 'web', tier: 'front' };
  assert.equal(matches(sel({}), l), true);
  assert.equal(matches(sel({ matchLabels: { app: 'web' } }), l), true);
  assert.equal(matches(sel({ matchLabels: { app: 'web', tier: 'back' } }), l), false);
  assert.equal(matches(sel({ matchExpressions: [{ key: 'app', operator: 'In', values: ['db', 'web'] }] }), l), true);
  assert.equal(matches(sel({ matchExpressions: [{ key: 'app', operator: 'In', values: ['db'] }] }), l), false);
  assert.equal(matches(sel({ matchExpressions: [{ key: 'missing', operator: 'In', values: ['x'] }] }), l), false);
  assert.equal(matches(sel({ matchExpressions: [{ key: 'app', operator: 'NotIn', values: ['db'] }] }), l), true);
  assert.equal(matches(sel({ matchExpressions: [{ key: 'missing', operator: 'NotIn', values: ['db'] }] }), l), true, 'NotIn holds for a missing key');
  assert.equal(matches(sel({ matchExpressions: [{ key: 'app', operator: 'NotIn', values: ['web'] }] }), l), false);
  assert.equal(matches(sel({ matchExpressions: [{ key: 'tier', operator: 'Exists' }] }), l), true);
  assert.equal(matches(sel({ matchExpressions: [{ key: 'x', operator: 'Exists' }] }), l), false);
  assert.equal(matches(sel({ matchExpressions: [{ key: 'x', operator: 'DoesNotExist' }] }), l), true);
  assert.equal(matches(sel({ matchLabels: { app: 'web' }, matchExpressions: [{ key: 'tier', operator: 'DoesNotExist' }] }), l), false);
});

test('selectors: bad operators, values and keys are problems, not matches', () => {
  for (const bad of [
    { matchExpressions: [{ key: 'a', operator: 'Gt', values: ['1'] }] },
    { matchExpressions: [{ key: 'a', operator: 'In', values: [] }] },
    { matchExpressions: [{ key: 'a', operator: 'Exists', values: ['x'] }] },
    { matchExpressions: [{ key: 'bad key!', operator: 'Exists' }] },
    { matchLabels: { a: 5 } },
    { matchLabels: { a: 'x' }, matchFields: {} },
    'app=web',
  ]) assert.equal(parseSelector(bad, 'sel'), undefined, JSON.stringify(bad));
});

test('pods: labels, IP, node, hostNetwork, named container ports; terminated pods hold no address', () => {
  const p = parsePod(podObject({ ns: 'x', name: 'a', labels: { pod: 'a' }, ip: '10.32.0.5', node: 'n1', ports: [{ name: 'http', port: 8080, protocol: 'TCP' }] }));
  assert.deepEqual(p, { namespace: 'x', name: 'a', labels: { pod: 'a' }, ip: '10.32.0.5', hostNetwork: false, nodeName: 'n1', ports: [{ name: 'http', port: 8080, protocol: 'TCP' }], terminated: false });
  assert.deepEqual(resolveNamedPort(p, 'http', 'TCP'), [8080]);
  assert.deepEqual(resolveNamedPort(p, 'http', 'UDP'), []);
  const raw = podObject({ ns: 'x', name: 'h', labels: {}, ip: '198.18.0.11', node: 'n1', ports: [] });
  raw.spec.hostNetwork = true;
  raw.status.podIP = '010.1.2.3';
  const h = parsePod(raw);
  assert.equal(h.hostNetwork, true);
  assert.equal(h.ip, undefined, 'an address in a non-canonical spelling is not trusted');
  raw.status.phase = 'Succeeded';
  assert.equal(parsePod(raw).terminated, true);
  assert.throws(() => parsePod({ metadata: { name: 'x' } }), /namespace/);
});

test('policyTypes defaults: Ingress always, Egress when egress rules exist; explicit list kept', () => {
  assert.deepEqual([...parsePolicy(policyObject('x', 'p', { podSelector: {} })).types], ['ingress']);
  assert.deepEqual([...parsePolicy(policyObject('x', 'p', { podSelector: {}, egress: [{}] })).types].sort(), ['egress', 'ingress']);
  assert.deepEqual([...parsePolicy(policyObject('x', 'p', { podSelector: {}, egress: [] })).types], ['ingress']);
  assert.deepEqual([...parsePolicy(policyObject('x', 'p', { podSelector: {}, policyTypes: ['Egress'] })).types], ['egress']);
});

test('rules: absent or empty from/ports mean any; peers, ipBlock with except, ports with endPort and names', () => {
  const p = parsePolicy(policyObject('x', 'p', {
    podSelector: { matchLabels: { pod: 'a' } },
    ingress: [
      { from: [], ports: [] },
      { from: [{ podSelector: {}, namespaceSelector: { matchLabels: { ns: 'y' } } }, { ipBlock: { cidr: '10.0.0.0/8', except: ['10.1.0.0/16'] } }], ports: [{ port: 80, endPort: 90 }, { port: 'dns', protocol: 'UDP' }, { protocol: 'SCTP' }, { port: '443' }] },
    ],
  }));
  assert.deepEqual(p.problems, []);
  assert.equal(p.id, 'x/p');
  assert.deepEqual(p.ingress[0], {});
  assert.equal(p.ingress[1].peers?.length, 2);
  assert.deepEqual(p.ingress[1].ports, [{ protocol: 'TCP', port: 80, endPort: 90 }, { protocol: 'UDP', port: 'dns' }, { protocol: 'SCTP' }, { protocol: 'TCP', port: 443 }]);
});

test('an unenforceable policy is reported with field and reason and denies (never opens) what it selects', () => {
  const cases: Array<[any, string, string[]]> = [
    [{ podSelector: {}, ingress: [{ from: [{ ipBlock: { cidr: '10.0.0.1/8' } }] }] }, 'spec.ingress[0].from[0].ipBlock.cidr', ['ingress']],
    [{ podSelector: {}, ingress: [{ from: [{ ipBlock: { cidr: 'fd00::/8' } }] }] }, 'spec.ingress[0].from[0].ipBlock.cidr', ['ingress']],
    [{ podSelector: {}, ingress: [{ from: [{ ipBlock: { cidr: '10.0.0.0/8', except: ['11.0.0.0/16'] } }] }] }, 'spec.ingress[0].from[0].ipBlock.except[0]', ['ingress']],
    [{ podSelector: {}, policyTypes: ['Egress'], egress: [{ ports: [{ port: 80, endPort: 70 }] }] }, 'spec.egress[0].ports[0].endPort', ['egress']],
    [{ podSelector: {}, egress: [{ ports: [{ port: 'http', endPort: 90 }] }] }, 'spec.egress[0].ports[0].endPort', ['egress']],
    [{ podSelector: {}, ingress: [{ ports: [{ port: 80, protocol: 'ICMP' }] }] }, 'spec.ingress[0].ports[0].protocol', ['ingress']],
    [{ podSelector: {}, ingress: [{ from: [{ serviceAccount: { name: 'x' } }] }] }, 'spec.ingress[0].from[0].serviceAccount', ['ingress']],
    [{ podSelector: {}, ingress: [{ from: [{ ipBlock: { cidr: '10.0.0.0/8' }, podSelector: {} }] }] }, 'spec.ingress[0].from[0]', ['ingress']],
    [{ podSelector: { matchExpressions: [{ key: 'a', operator: 'Gt', values: ['1'] }] }, ingress: [{}] }, 'spec.podSelector.matchExpressions[0].operator', ['egress', 'ingress']],
    [{ podSelector: {}, ingress: [{}], l7Rules: [] }, 'spec.l7Rules', ['egress', 'ingress']],
    [{ podSelector: {}, policyTypes: ['Ingress', 'L7'] }, 'spec.policyTypes', ['egress', 'ingress']],
  ];
  for (const [spec, field, denied] of cases) {
    const p = parsePolicy(policyObject('x', 'bad', spec));
    assert.ok(p.problems.some((x) => x.field === field), `${JSON.stringify(spec)}: ${JSON.stringify(p.problems)}`);
    assert.ok(p.problems.every((x) => x.reason.length > 5));
    assert.deepEqual([...p.denied].sort(), denied, JSON.stringify(spec));
    for (const d of denied) {
      assert.ok(p.types.has(d as 'ingress'), 'a denied direction isolates');
      assert.deepEqual(d === 'ingress' ? p.ingress : p.egress, [], 'no rule of a denied direction survives');
    }
  }
  // a bad selector cannot say which pods it means: it selects every pod of its namespace
  const p = parsePolicy(policyObject('x', 'bad', cases[8][0]));
  const pod = parsePod(podObject({ ns: 'x', name: 'q', labels: { other: '1' }, ip: '10.32.0.9', node: 'n', ports: [] }));
  assert.equal(selects(p, pod), true);
  assert.equal(selects(p, { ...pod, namespace: 'y' }), false);
});

test('selection and peers: hostNetwork pods are never selected nor peers; namespace rules', () => {
  const pol = parsePolicy(policyObject('x', 'p', { podSelector: {}, ingress: [{ from: [{ podSelector: {} }, { namespaceSelector: { matchLabels: { ns: 'y' } } }] }] }));
  const pod = (ns: string, extra: Partial<Pod> = {}): Pod => ({ namespace: ns, name: 'p', labels: {}, ip: '10.32.0.1', hostNetwork: false, ports: [], terminated: false, ...extra });
  assert.equal(selects(pol, pod('x')), true);
  assert.equal(selects(pol, pod('x', { hostNetwork: true })), false);
  const [same, ny] = pol.ingress[0].peers!;
  assert.equal(peerHasPod(same, 'x', pod('x'), { ns: 'x' }), true);
  assert.equal(peerHasPod(same, 'x', pod('y'), { ns: 'y' }), false, 'podSelector alone: the policy namespace only');
  assert.equal(peerHasPod(ny, 'x', pod('y'), { ns: 'y' }), true);
  assert.equal(peerHasPod(ny, 'x', pod('z'), { ns: 'z' }), false);
  assert.equal(peerHasPod(ny, 'x', pod('y', { hostNetwork: true }), { ns: 'y' }), false);
});
