// policy/compile.ts + evaluate.ts + nft.ts + explain.ts: the compiled model of each node, interpreted
// for every pod pair, port and protocol, against the independent truth table (test/lab/netpol-truth.ts)
// on every conformance scenario and on random policies; the nft scripts' shape (a pod or label change
// moves elements only, a policy change rewrites only its chain, nothing to do when nothing changed);
// and the words of a drop's explanation.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { compile, intervalElements, parseInterval, type ClusterState, type Compiled } from '../../policy/compile';
import { evaluate } from '../../policy/evaluate';
import { explainDrop } from '../../policy/explain';
import { parseNamespace, parsePod, parsePolicy, selects, type Namespace } from '../../policy/model';
import { planChange, planFull, type NftOptions } from '../../policy/nft';
import { conformanceCluster, expectAllowed, namespaceObject, podObject, policyObject, PORTS, type TNamespace, type TPod, type TProto } from '../lab/netpol-truth';
import { applyLabels, SCENARIOS } from '../lab/netpol-scenarios';

const NODES = ['n1', 'n2', 'n3'];
const PROTOS: TProto[] = ['TCP', 'UDP', 'SCTP'];
const OPTS: NftOptions = { podIfaces: 'vethwepl*', logGroup: 86, logRate: '1/second' };
// pods spread over the overlay so ipBlocks and their excepts matter
const ipOf = (ns: string, p: string) => `10.32.${['x', 'y', 'z'].indexOf(ns)}.${10 + ['a', 'b', 'c'].indexOf(p)}`;
const base = conformanceCluster(ipOf, NODES, PROTOS);

function state(pods: TPod[], nss: TNamespace[], pols: any[]): ClusterState {
  return {
    namespaces: new Map<string, Namespace>(nss.map((n) => { const x = parseNamespace(namespaceObject(n)); return [x.name, x]; })),
    pods: pods.map((p) => parsePod(podObject(p))),
    policies: pols.map(parsePolicy),
  };
}

/** The mesh's verdict: egress on the source's node, then ingress on the destination's. */
function meshAllows(models: Map<string, Compiled>, src: TPod, dst: TPod, protocol: TProto, port: number): boolean {
  if (src === dst) return true;
  const same = src.node === dst.node;
  const v1 = evaluate(models.get(src.node)!, { src: src.ip, dst: dst.ip, protocol, port, fromLocalPod: true, toLocalPod: same });
  if (!v1.allowed || same) return v1.allowed;
  return evaluate(models.get(dst.node)!, { src: src.ip, dst: dst.ip, protocol, port, fromLocalPod: false, toLocalPod: true }).allowed;
}

function checkMatrix(pods: TPod[], nss: TNamespace[], pols: any[], what: string): number {
  const st = state(pods, nss, pols);
  const models = new Map(NODES.map((n) => [n, compile(st, n)]));
  let allowed = 0;
  for (const src of pods) for (const dst of pods) for (const protocol of PROTOS) for (const port of [...PORTS, 82]) {
    const want = expectAllowed(pols, nss, src, dst, protocol, port);
    const got = meshAllows(models, src, dst, protocol, port);
    if (got !== want) assert.fail(`${what}: ${src.ns}/${src.name} -> ${dst.ns}/${dst.name} ${port}/${protocol}: compiled ${got ? 'allows' : 'denies'}, Kubernetes ${want ? 'allows' : 'denies'}`);
    if (want) allowed++;
  }
  return allowed;
}

test(`every conformance scenario (${SCENARIOS.length}) and state: the compiled model of each node agrees with the truth table on all 81 pairs x 3 protocols x 3 ports`, () => {
  let states = 0;
  const allowedCounts = new Set<number>();
  for (const sc of SCENARIOS) {
    for (const [i, s] of sc.states(base).entries()) {
      const c = applyLabels(base, s);
      allowedCounts.add(checkMatrix(c.pods, c.namespaces, s.policies, `${sc.name} (state ${i + 1})`));
      states++;
    }
  }
  assert.ok(SCENARIOS.length >= 40, `${SCENARIOS.length} scenarios`);
  assert.ok(allowedCounts.size > 20, 'the scenarios give many different matrices (they are not all deny-all or allow-all)');
  assert.ok(states > SCENARIOS.length);
});

// ---- random policies ------------------------------------------------------------------------

const arbSelector = (keys: string[], values: string[]) => fc.oneof(
  fc.constant({}),
  fc.record({ matchLabels: fc.dictionary(fc.constantFrom(...keys), fc.constantFrom(...values), { maxKeys: 1 }) }),
  fc.record({ matchExpressions: fc.array(fc.oneof(
    fc.record({ key: fc.constantFrom(...keys), operator: fc.constantFrom('In', 'NotIn'), values: fc.uniqueArray(fc.constantFrom(...values), { minLength: 1, maxLength: 2 }) }),
    fc.record({ key: fc.constantFrom(...keys), operator: fc.constantFrom('Exists', 'DoesNotExist') }),
  ), { minLength: 1, maxLength: 2 }) }),
);
const podSel = arbSelector(['pod', 'tier'], ['a', 'b', 'c', 'web']);
const nsSel = arbSelector(['ns', 'team'], ['x', 'y', 'z', 'blue']);
const cidr = fc.constantFrom('10.32.0.0/16', '10.32.1.0/24', '10.32.0.10/31', '10.32.2.12/32', '0.0.0.0/0');
const arbPeer = fc.oneof(
  fc.record({ podSelector: podSel }),
  fc.record({ namespaceSelector: nsSel }),
  fc.record({ podSelector: podSel, namespaceSelector: nsSel }),
  fc.record({ ipBlock: fc.record({ cidr, except: fc.constantFrom([], ['10.32.1.11/32'], ['10.32.0.10/32', '10.32.2.0/24']) }) })
    .filter((p) => p.ipBlock.except.every((e) => p.ipBlock.cidr === '0.0.0.0/0' || (p.ipBlock.cidr === '10.32.0.0/16' && e.startsWith('10.32.')) || (p.ipBlock.cidr === '10.32.1.0/24' && e.startsWith('10.32.1.')))),
);
const arbPort = fc.oneof(
  fc.record({ protocol: fc.constantFrom('TCP', 'UDP', 'SCTP'), port: fc.constantFrom(80, 81, 82) }),
  fc.record({ protocol: fc.constantFrom('TCP', 'UDP'), port: fc.constantFrom(80, 81), endPort: fc.constantFrom(81, 85) }),
  fc.record({ protocol: fc.constantFrom('TCP', 'UDP', 'SCTP'), port: fc.constantFrom('serve-80-tcp', 'serve-81-udp', 'serve-80-sctp') }),
  fc.record({ protocol: fc.constantFrom('TCP', 'UDP') }),
);
const arbRule = (key: 'from' | 'to') => fc.record({ [key]: fc.option(fc.array(arbPeer, { maxLength: 3 }), { nil: undefined }), ports: fc.option(fc.array(arbPort, { maxLength: 3 }), { nil: undefined }) });
const arbPolicy = fc.record({
  ns: fc.constantFrom('x', 'y', 'z'),
  podSelector: podSel,
  policyTypes: fc.option(fc.subarray(['Ingress', 'Egress'], { minLength: 1 }), { nil: undefined }),
  ingress: fc.option(fc.array(arbRule('from'), { maxLength: 3 }), { nil: undefined }),
  egress: fc.option(fc.array(arbRule('to'), { maxLength: 3 }), { nil: undefined }),
});

test('random policies and labels: the compiled model agrees with the truth table (property test)', () => {
  fc.assert(fc.property(
    fc.array(arbPolicy, { minLength: 1, maxLength: 4 }),
    fc.array(fc.tuple(fc.constantFrom(...base.pods.map((p) => `${p.ns}/${p.name}`)), fc.constantFrom('web', 'a', 'b')), { maxLength: 3 }),
    fc.boolean(),
    (raw, relabel, team) => {
      const pols = raw.map((r, i) => {
        const spec: any = { podSelector: r.podSelector };
        if (r.policyTypes) spec.policyTypes = r.policyTypes;
        if (r.ingress) spec.ingress = r.ingress.map((x) => Object.fromEntries(Object.entries(x).filter(([, v]) => v !== undefined)));
        if (r.egress) spec.egress = r.egress.map((x) => Object.fromEntries(Object.entries(x).filter(([, v]) => v !== undefined)));
        return policyObject(r.ns, `p${i}`, spec);
      });
      for (const p of pols) assert.deepEqual(parsePolicy(p).problems, [], JSON.stringify(p.spec));
      const pods = base.pods.map((p) => {
        const t = relabel.find(([k]) => k === `${p.ns}/${p.name}`);
        return t ? { ...p, labels: { ...p.labels, tier: t[1] } } : p;
      });
      const nss = base.namespaces.map((n) => (team && n.name === 'y' ? { ...n, labels: { ...n.labels, team: 'blue' } } : n));
      checkMatrix(pods, nss, pols, JSON.stringify(pols.map((p) => [p.metadata.namespace, p.spec])));
    },
  ), { numRuns: 150, seed: 15 });
});

// ---- intervals and scripts --------------------------------------------------------------------

test('intervals: blocks minus excepts, merged and written as nft elements', () => {
  assert.deepEqual(intervalElements([[10, 11], [11, 20], [30, 31], [5, 12]]), ['0.0.0.5-0.0.0.19', '0.0.0.30']);
  assert.deepEqual(parseInterval('10.0.0.1-10.0.0.3'), [0x0a000001, 0x0a000004]);
  const st = state(base.pods, base.namespaces, [policyObject('x', 'p', { podSelector: {}, ingress: [{ from: [{ ipBlock: { cidr: '10.32.0.0/16', except: ['10.32.1.0/24', '10.32.0.11/32'] } }] }] })]);
  const c = compile(st, 'n1');
  const peer = [...c.sets.values()].find((s) => s.kind === 'interval')!;
  assert.deepEqual(peer.elements, ['10.32.0.0-10.32.0.10', '10.32.0.12-10.32.0.255', '10.32.2.0-10.32.255.255']);
});

function lines(script: string): string[] {
  return script.split('\n').filter(Boolean);
}

test('scripts: full build names every object; nothing changed -> empty; a label change moves elements, not rules', () => {
  const pols = [
    policyObject('x', 'from-b', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ from: [{ podSelector: { matchLabels: { pod: 'b' } } }], ports: [{ port: 'serve-80-tcp' }] }] }),
    policyObject('x', 'deny-eg', { podSelector: {}, policyTypes: ['Egress'] }),
  ];
  const c1 = compile(state(base.pods, base.namespaces, pols), 'n1');
  const full = planFull(c1, OPTS);
  assert.match(full, /^add table inet weave-npc\ndelete table inet weave-npc\n/);
  assert.match(full, /add chain inet weave-npc egress-fwd \{ type filter hook forward priority -5; policy accept; \}/);
  assert.match(full, /add rule inet weave-npc ingress-fwd oifname "vethwepl\*" jump ingress/);
  assert.match(full, /add rule inet weave-npc pi-\w+ ip saddr @peer-\w+ meta l4proto tcp ip daddr \. meta l4proto \. th dport @np-serve-80-tcp accept/);
  assert.match(full, /limit rate 1\/second burst 1 packets log group 86 prefix "npc e ge-\w+"/);
  assert.match(full, /add element inet weave-npc known \{ 10\.32\.0\.10, 10\.32\.1\.10, 10\.32\.2\.10 \}/, 'the a pods live on n1');
  assert.equal(planChange(c1, compile(state(base.pods, base.namespaces, pols), 'n1'), OPTS), '');

  // x/c (on n3) takes label pod=b: it joins the peer set; n1's rules stay
  const relabelled = base.pods.map((p) => (p.ns === 'x' && p.name === 'c' ? { ...p, labels: { pod: 'b' } } : p));
  const c2 = compile(state(relabelled, base.namespaces, pols), 'n1');
  const change = lines(planChange(c1, c2, OPTS));
  assert.ok(change.length > 0);
  assert.ok(change.every((l) => /^(flush set|add element|delete element) /.test(l)), change.join('\n'));

  // x/a (on n1) loses pod=a: its ingress map entry goes, its egress group stays
  const unselected = base.pods.map((p) => (p.ns === 'x' && p.name === 'a' ? { ...p, labels: { pod: 'q' } } : p));
  const c3 = compile(state(unselected, base.namespaces, pols), 'n1');
  const ch3 = lines(planChange(c1, c3, OPTS));
  assert.ok(ch3.some((l) => /^delete element inet weave-npc ingress \{ 10\.32\.0\.10 \}$/.test(l)), ch3.join('\n'));
  assert.ok(!ch3.some((l) => / rule /.test(l) && !/chain gi-/.test(l)), ch3.join('\n'));
});

test('scripts: a policy change rewrites its own chain only; a deleted policy leaves no chain, group or set behind', () => {
  const a = policyObject('x', 'a', { podSelector: {}, ingress: [{ ports: [{ port: 80 }] }] });
  const b = policyObject('y', 'b', { podSelector: {}, ingress: [{ from: [{ namespaceSelector: {} }] }] });
  const c1 = compile(state(base.pods, base.namespaces, [a, b]), 'n1');
  const a2 = policyObject('x', 'a', { podSelector: {}, ingress: [{ ports: [{ port: 81 }] }] });
  const c2 = compile(state(base.pods, base.namespaces, [a2, b]), 'n1');
  const ch = lines(planChange(c1, c2, OPTS));
  const chain = [...c1.chains.values()].find((x) => x.policy === 'x/a')!.name;
  assert.deepEqual(ch, [`flush chain inet weave-npc ${chain}`, `add rule inet weave-npc ${chain} meta l4proto tcp th dport 81 accept`]);

  const c3 = compile(state(base.pods, base.namespaces, [a2]), 'n1');
  const del = lines(planChange(c2, c3, OPTS));
  const bChain = [...c2.chains.values()].find((x) => x.policy === 'y/b')!.name;
  const bGroup = [...c2.groups.values()].find((g) => g.policies.includes('y/b'))!;
  assert.ok(del.includes(`delete chain inet weave-npc ${bChain}`));
  assert.ok(del.includes(`delete chain inet weave-npc ${bGroup.chain}`));
  assert.ok(del.includes(`delete counter inet weave-npc ${bGroup.counter}`));
  assert.ok(del.some((l) => /^delete set inet weave-npc peer-/.test(l)));
  assert.ok(del.indexOf(`delete chain inet weave-npc ${bGroup.chain}`) < del.indexOf(`delete chain inet weave-npc ${bChain}`), 'the group that jumps goes first');
  assert.ok(del.findIndex((l) => /^delete element inet weave-npc ingress/.test(l)) < del.indexOf(`delete chain inet weave-npc ${bGroup.chain}`), 'map elements go before the chain they name');
});

test('explain: each selecting policy says why it did not allow the packet', () => {
  const pols = [
    policyObject('x', 'from-b-80', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ from: [{ podSelector: { matchLabels: { pod: 'b' } } }], ports: [{ port: 80 }] }] }),
    policyObject('x', 'deny', { podSelector: {}, policyTypes: ['Ingress'] }),
    policyObject('x', 'bad', { podSelector: {}, ingress: [{ from: [{ ipBlock: { cidr: '10.0.0.1/8' } }] }] }),
  ].map(parsePolicy);
  const st = state(base.pods, base.namespaces, []);
  const pod = (ns: string, n: string) => st.pods.find((p) => p.namespace === ns && p.name === n)!;
  const dst = pod('x', 'a');
  const sel = pols.filter((p) => selects(p, dst));
  const nsl = (ns: string) => st.namespaces.get(ns)?.labels;
  const why = explainDrop(sel, 'ingress', { ip: pod('y', 'b').ip!, pod: pod('y', 'b') }, { ip: dst.ip!, pod: dst }, 'TCP', 81, nsl);
  assert.deepEqual(why.map((w) => w.policy), ['x/from-b-80', 'x/deny', 'x/bad']);
  assert.match(why[0].why, /rule 1: source y\/b is not in from \[pods pod=b\]/);
  assert.match(why[1].why, /no ingress rules: denies all ingress/);
  assert.match(why[2].why, /cannot be enforced \(spec\.ingress\[0\]\.from\[0\]\.ipBlock\.cidr: invalid CIDR/);
  const why2 = explainDrop(sel, 'ingress', { ip: pod('x', 'b').ip!, pod: pod('x', 'b') }, { ip: dst.ip!, pod: dst }, 'UDP', 80, nsl);
  assert.match(why2[0].why, /rule 1: 80\/UDP is not in ports \[80\/TCP\]/);
  assert.equal(explainDrop([pols[0]], 'ingress', { ip: pod('x', 'b').ip!, pod: pod('x', 'b') }, { ip: dst.ip!, pod: dst }, 'TCP', 80, nsl).length, 0, 'an allowed packet has no reason');
});

test('reuse: after policy and pod changes, compiling with the previous sets (and the namespaces whose pods changed) gives the same model as from nothing', () => {
  let prev: { c: Compiled; pods: TPod[]; nss: TNamespace[] } | undefined;
  let reusedSome = 0;
  for (const sc of SCENARIOS) {
    for (const s of sc.states(base)) {
      const c = applyLabels(base, s);
      const st = state(c.pods, c.namespaces, s.policies);
      const nsChanged = !prev || JSON.stringify(prev.nss) !== JSON.stringify(c.namespaces);
      const dirtyNs = new Set(c.pods.filter((p, i) => JSON.stringify(p) !== JSON.stringify(prev?.pods[i])).map((p) => p.ns));
      const fresh = compile(st, 'n1');
      const reused = compile(st, 'n1', nsChanged ? undefined : { sets: prev!.c.setsByKey, dirtyNs });
      assert.deepEqual({ ...reused, setsByKey: null }, { ...fresh, setsByKey: null }, sc.name);
      if (!nsChanged) reusedSome++;
      prev = { c: reused, pods: c.pods, nss: c.namespaces };
    }
  }
  assert.ok(reusedSome > 40);
});
