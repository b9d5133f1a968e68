// NetworkPolicy enforced by the kernel, checked with real traffic: three hosts with routers (h1-h2
// over fastdp, h3 over the sleeve), nine pods x/a ... z/c made through the CNI plugin, each serving
// TCP and UDP on 80 and 81. Each node runs the policy controller for its pods; for every state of
// every scenario (test/lab/netpol-scenarios.ts, modelled on the Kubernetes conformance tests) the
// full 9x9 matrix (x 2 protocols x 2 ports) is probed and compared with the independent truth table.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Lab } from '../lab/lab';
import { buildPolicyLab, checkMatrix, expectedMatrix, type PolicyLab } from '../lab/netpol-lab';
import { applyLabels, SCENARIOS } from '../lab/netpol-scenarios';
import { namespaceObject, podObject, type TProto } from '../lab/netpol-truth';
import { PolicyController } from '../../policy/controller';
import { silentLogger } from '../../lib/log';

const PROTOS: TProto[] = ['TCP', 'UDP'];
const PORTS = [80, 81];

test('NetworkPolicy conformance scenarios with real traffic across three nodes', { timeout: 600_000 }, async (t) => {
  const lab = await Lab.create();
  let pl: PolicyLab | undefined;
  const controllers: PolicyController[] = [];
  try {
    pl = await buildPolicyLab(lab, PROTOS);
    const cluster = pl;
    for (const h of cluster.hosts) {
      controllers.push(new PolicyController({ node: h.name, host: { netns: h.ns }, log: silentLogger(), nft: { podIfaces: 'vethwepl*', logGroup: 86, logRate: '1/second' } }));
    }
    const timings: number[] = [];
    for (const sc of SCENARIOS) {
      await t.test(sc.name, async () => {
        for (const [i, st] of sc.states(cluster).entries()) {
          const c = applyLabels(cluster, st);
          for (const ctl of controllers) {
            ctl.replace('Namespace', c.namespaces.map(namespaceObject));
            ctl.replace('Pod', c.pods.map(podObject));
            ctl.replace('NetworkPolicy', st.policies);
          }
          const t0 = Date.now();
          await Promise.all(controllers.map((x) => x.settled()));
          timings.push(Date.now() - t0);
          for (const x of controllers) assert.equal(x.stats.errors, 0, x.stats.lastError);
          const cells = expectedMatrix(c.pods, c.namespaces, st.policies, PROTOS, PORTS);
          const r = await checkMatrix(cluster, cells, { timeoutMs: 1000, deadlineMs: 8000 });
          assert.deepEqual(r.wrong, [], `state ${i + 1}: ${r.wrong.length} of ${cells.length} cells wrong`);
        }
      });
    }
    t.diagnostic(`apply times (ms): max ${Math.max(...timings)}, median ${timings.sort((a, b) => a - b)[timings.length >> 1]}`);
  } finally {
    for (const c of controllers) c.stop();
    pl?.stop();
    await lab.cleanup();
  }
});
