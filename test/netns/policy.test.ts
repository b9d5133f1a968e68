// NetworkPolicy enforced by `weave npc` on three nodes, checked with real traffic: hosts with routers
// (h1-h2 over fastdp, h3 over the sleeve), nine pods x/a ... z/c made through the CNI plugin (a on h1,
// b on h2, c on h3), each serving TCP and UDP on 80 and 81; the fixture API server holds the
// Namespaces, Pods (labels, IPs, named container ports) and NetworkPolicies, and each node's npc
// watches it. For every state of every scenario (test/lab/netpol-scenarios.ts, modelled on the
// Kubernetes conformance tests) the API is moved to that state while the agents keep running and the
// full 9x9 matrix (x 2 protocols x 2 ports) is probed and compared with the independent truth table.
// Then: a change enforced quickly, no window for a new pod, the drop log and counters, an
// unenforceable policy.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Lab } from '../lab/lab';
import { waitFor } from '../lab/exec';
import { addPod, Agent, buildPolicyLab, checkMatrix, expectedMatrix, type PolicyLab } from '../lab/netpol-lab';
import { FixtureApi, npcStatus, startNpc, waitNpcsReady, type NpcProcess } from '../lab/netpol-api';
import { applyLabels, SCENARIOS } from '../lab/netpol-scenarios';
import { namespaceObject, podObject, policyObject, type TPod, type TProto } from '../lab/netpol-truth';

const PROTOS: TProto[] = ['TCP', 'UDP'];
const PORTS = [80, 81];
const KINDS: Array<'namespaces' | 'pods' | 'networkpolicies'> = ['namespaces', 'pods', 'networkpolicies'];
const denyIngressX = policyObject('x', 'deny-ingress', { podSelector: {}, policyTypes: ['Ingress'] });

function objects(pl: { pods: TPod[]; namespaces: { name: string; labels: Record<string, string> }[] }, policies: any[]): any[] {
  return [...pl.namespaces.map(namespaceObject), ...pl.pods.map(podObject), ...policies];
}

async function nftCounters(host: { exec: (a: string[]) => Promise<{ stdout: string }> }): Promise<Map<string, number>> {
  const j = JSON.parse((await host.exec(['nft', '-j', 'list', 'counters', 'table', 'inet', 'weave-npc'])).stdout);
  return new Map(j.nftables.filter((o: any) => o.counter).map((o: any) => [o.counter.name, o.counter.packets]));
}

test('NetworkPolicy with weave npc on three nodes: conformance scenarios, changes, no window, drop log', { timeout: 600_000 }, async (t) => {
  const lab = await Lab.create();
  let pl: PolicyLab | undefined;
  let api: FixtureApi | undefined;
  const npcs: NpcProcess[] = [];
  const extraAgents: Agent[] = [];
  try {
    pl = await buildPolicyLab(lab, PROTOS);
    const cluster = pl;
    const [h1, h2] = cluster.hosts;
    api = await FixtureApi.start(lab, h1);
    const kube = api;
    await kube.sync(objects(cluster, []), KINDS);
    for (const h of cluster.hosts) npcs.push(startNpc(h, kube));
    await waitNpcsReady(cluster.hosts);
    const pod = (ns: string, n: string) => cluster.pods.find((p) => p.ns === ns && p.name === n)!;

    const held: number[] = [];
    for (const sc of SCENARIOS) {
      await t.test(sc.name, async () => {
        for (const [i, st] of sc.states(cluster).entries()) {
          const c = applyLabels(cluster, st);
          await kube.sync(objects(c, st.policies), KINDS);
          const cells = expectedMatrix(c.pods, c.namespaces, st.policies, PROTOS, PORTS);
          const r = await checkMatrix(cluster, cells, { timeoutMs: 1000, deadlineMs: 8000 });
          held.push(r.ms);
          assert.deepEqual(r.wrong, [], `state ${i + 1}: ${r.wrong.length} of ${cells.length} cells wrong`);
        }
      });
    }
    t.diagnostic(`matrix held after (ms, API write to all ${PROTOS.length * PORTS.length * 72} probes matching): median ${[...held].sort((a, b) => a - b)[held.length >> 1]}, max ${Math.max(...held)}`);
    for (const n of npcs) assert.equal(n.lines().filter((l) => l.level >= 50).length, 0, JSON.stringify(n.lines().filter((l) => l.level >= 50)));

    await t.test('a change in the API is enforced quickly on the destination\'s node', async () => {
      await kube.sync(objects(cluster, [denyIngressX]), KINDS);
      const yb = cluster.agents.get('y/b')!;
      await waitFor('deny in force', async () => !(await yb.probe(pod('x', 'a').ip, 'TCP', 80, 300)), { timeoutMs: 8000, intervalMs: 50 });
      const allow = policyObject('x', 'allow-y', { podSelector: {}, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'y' } } }] }] });
      const t0 = Date.now();
      await kube.sync(objects(cluster, [denyIngressX, allow]), KINDS);
      await waitFor('allow in force', async () => yb.probe(pod('x', 'a').ip, 'TCP', 80, 300), { timeoutMs: 8000, intervalMs: 20 });
      const ms = Date.now() - t0;
      t.diagnostic(`API write to the first connection allowed on another node: ${ms} ms`);
      assert.ok(ms < 5000, `${ms} ms`);
    });

    await t.test('no window: a new pod is cut off until classified, then a default deny holds from its first packet', async () => {
      await kube.sync(objects(cluster, [denyIngressX]), KINDS);
      const { container, ip } = await addPod(lab, h2, cluster.cnis[1], 'x', 'd');
      const agent = await Agent.start(container.ns, [80, 81]);
      extraAgents.push(agent);
      const ya = cluster.agents.get('y/a')!;
      // before the Pod object exists: nothing in or out (the npc has not classified the address)
      assert.equal(await ya.probe(ip, 'TCP', 80, 500), false, 'ingress to an unclassified pod');
      assert.equal(await agent.probe(pod('y', 'a').ip, 'TCP', 80, 500), false, 'egress from an unclassified pod');
      await waitFor('the unclassified drops counted on h2', async () => { const u = (await npcStatus(h2)).unclassified; return u.ingress > 0 && u.egress > 0; }, { timeoutMs: 8000, intervalMs: 500 });
      const d: TPod = { ns: 'x', name: 'd', labels: { pod: 'd' }, ip, node: h2.name, ports: pod('x', 'a').ports };
      const all = [...cluster.pods, d];
      let ingressLeaks = 0;
      let probing = true;
      const leaks = (async () => { while (probing) if (await ya.probe(ip, 'TCP', 80, 200)) ingressLeaks++; })();
      await kube.sync(objects({ ...cluster, pods: all }, [denyIngressX]), KINDS);
      // classified: egress opens (no egress policy), ingress stays denied by x/deny-ingress throughout
      await waitFor('x/d egress allowed once classified', async () => agent.probe(pod('y', 'a').ip, 'TCP', 80, 300), { timeoutMs: 8000, intervalMs: 50 });
      await new Promise((r) => setTimeout(r, 500));
      probing = false;
      await leaks;
      assert.equal(ingressLeaks, 0, 'no connection into x/d got through at any time');
      await kube.sync(objects({ ...cluster, pods: all }, []), KINDS);
      await waitFor('x/d reachable without policies', async () => ya.probe(ip, 'TCP', 80, 300), { timeoutMs: 8000, intervalMs: 50 });
      await kube.sync(objects(cluster, []), KINDS);
    });

    await t.test('drop log: one line per rate-limit window naming the policy and direction; counters match the attempts', async () => {
      await kube.sync(objects(cluster, [denyIngressX]), KINDS);
      const yb = cluster.agents.get('y/b')!;
      const xa = pod('x', 'a');
      await waitFor('deny in force', async () => !(await yb.probe(xa.ip, 'UDP', 80, 150)), { timeoutMs: 8000, intervalMs: 100 });
      await new Promise((r) => setTimeout(r, 1500)); // let the log's rate-limit window pass
      const npc1 = npcs[0];
      const group = (await npcStatus(h1)).logPrefixes.find((g: any) => g.policies.join() === 'x/deny-ingress' && g.prefix.startsWith('npc i'));
      assert.ok(group, 'the group of x/deny-ingress');
      const counter = `dropi-${group.prefix.split('gi-')[1]}`;
      const statusDrops = async () => ((await npcStatus(h1)).dropCounts.find((x: any) => x.policies === 'x/deny-ingress' && x.direction === 'ingress')?.packets ?? 0);
      await new Promise((r) => setTimeout(r, 2500)); // a counter poll (every 2 s) since the last drop
      const statusBefore = await statusDrops();
      const dropLines = () => npc1.lines().filter((l) => l.msg === 'dropped by network policy' && l.src === 'y/b' && l.dst === 'x/a' && l.protocol === 'UDP');
      for (const burst of [5, 3]) {
        const c0 = (await nftCounters(h1)).get(counter) ?? 0;
        const l0 = dropLines().length;
        // one datagram per probe (a 150 ms probe sends once), all within the same second
        const got = await Promise.all(Array.from({ length: burst }, () => yb.probe(xa.ip, 'UDP', 80, 150)));
        assert.ok(got.every((x) => !x));
        await new Promise((r) => setTimeout(r, 1200));
        const c1 = (await nftCounters(h1)).get(counter) ?? 0;
        assert.equal(c1 - c0, burst, 'every dropped datagram counted');
        const lines = dropLines().slice(l0);
        assert.equal(lines.length, 1, JSON.stringify(lines));
        assert.equal(lines[0].direction, 'ingress');
        assert.equal(lines[0].port, 80);
        assert.equal(lines[0].srcIp, pod('y', 'b').ip);
        assert.deepEqual(lines[0].policies, ['x/deny-ingress']);
        assert.match(lines[0].why[0].why, /no ingress rules: denies all ingress/);
      }
      // status and metrics add up drops across the group's lives (the counter restarts when the group comes back)
      await waitFor('status counters caught up', async () => (await statusDrops()) === statusBefore + 8, { timeoutMs: 8000, intervalMs: 500 });
      const text = (await h1.weave(['status', 'policy'])).stdout;
      t.diagnostic(text);
      assert.match(text, /x\/deny-ingress \[ingress\] selects x\/a/);
      assert.match(text, /ingress y\/b -> x\/a 80\/UDP {2}policies: x\/deny-ingress/);
      const metrics = (await h1.exec([process.execPath, '-e', `require('http').get('http://127.0.0.1:6781/metrics',r=>{r.pipe(process.stdout)})`])).stdout;
      const lint = await h1.exec(['promtool', 'check', 'metrics'], { input: metrics, allowFail: true });
      assert.equal(lint.code, 0, lint.stdout + lint.stderr);
      const m = /weave_npc_dropped_packets_total\{direction="ingress",namespace="x",policies="x\/deny-ingress"\} (\d+)/.exec(metrics);
      assert.ok(m, metrics);
      assert.equal(Number(m[1]), statusBefore + 8);
    });

    await t.test('an unenforceable policy is reported with its name and reason and denies what it selects', async () => {
      const bad = policyObject('z', 'with-l7', { podSelector: { matchLabels: { pod: 'c' } }, ingress: [{ from: [{ namespaceSelector: {} }], l7: { http: '/' } }] });
      await kube.sync(objects(cluster, [bad]), KINDS);
      const asDeny = policyObject('z', 'as-deny', { podSelector: { matchLabels: { pod: 'c' } }, policyTypes: ['Ingress'] });
      const r = await checkMatrix(cluster, expectedMatrix(cluster.pods, cluster.namespaces, [asDeny], PROTOS, PORTS), { timeoutMs: 1000, deadlineMs: 8000 });
      assert.deepEqual(r.wrong, []);
      const h3 = cluster.hosts[2];
      const s = await npcStatus(h3);
      assert.deepEqual(s.unenforceable.map((u: any) => [u.policy, u.denied, u.problems[0].field]), [['z/with-l7', ['ingress'], 'spec.ingress[0].l7']]);
      assert.match((await h3.weave(['status', 'policy'])).stdout, /z\/with-l7 denies ingress:\n {4}spec\.ingress\[0\]\.l7: unsupported field "l7"/);
      assert.ok(npcs[2].lines().some((l) => l.policy === 'z/with-l7' && l.level === 40 && /cannot be enforced/.test(l.msg)));
      await kube.sync(objects(cluster, []), KINDS);
    });
  } finally {
    for (const a of extraAgents) a.stop();
    for (const n of npcs) n.child.kill('SIGKILL');
    api?.stop();
    pl?.stop();
    await lab.cleanup();
  }
});
