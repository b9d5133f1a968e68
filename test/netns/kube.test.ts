// Kubernetes mode on a cluster in the lab (test/lab/kube.ts): the fixture API server in its own host,
// three nodes each running `weave router --kube` and a containerd whose CRI calls the weave CNI plugin
// (installed by the router) as kubelet does. Pods on every node get addresses and reach each other; a
// fourth Node joins without touching the others; deleting a Node has its space reclaimed within 10 s
// by exactly one router; a rolling restart keeps every pod's address and connectivity (no ping gap
// over 2 s); the API server stopped for 30 s (WEAVE_TEST_KUBE_DOWN_S) changes nothing on the data path.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'child_process';
import * as fs from 'fs';
import { Lab } from '../lab/lab';
import { run, waitFor } from '../lab/exec';
import { Containerd } from '../lab/containerd';
import type { PodStatus } from '../lab/cri';
import { KubeCluster, longestGap, type KubeNode } from '../lab/kube';

const DOWN_S = Number(process.env.WEAVE_TEST_KUBE_DOWN_S ?? 30);
/** extra router flags (e.g. --no-kube-keep-on-stop, to measure the gap without the kept data path) */
const EXTRA = (process.env.WEAVE_TEST_KUBE_ROUTER_ARGS ?? '').split(' ').filter(Boolean);

function inPod(pod: PodStatus, argv: string[], opts: { allowFail?: boolean; timeoutMs?: number } = {}) {
  return run(['nsenter', `--net=${pod.netns}`, ...argv], opts);
}

/**
 * ping -D from a pod every 0.1 s for durationS; the replies' longest gap, counting the start and the
 * end. A count, not -w: with a deadline, iputils ping stops at the first ICMP error.
 */
function pingFor(from: PodStatus, to: string, durationS: number): Promise<{ replies: number; gapS: number; out: string }> {
  const startedAt = Date.now() / 1000;
  return new Promise((resolve, reject) => {
    const p = spawn('nsenter', [`--net=${from.netns}`, 'ping', '-D', '-n', '-i', '0.1', '-W', '1', '-c', String(durationS * 10), to], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
    p.on('error', reject);
    p.on('exit', () => resolve({ ...longestGap(out, startedAt, Date.now() / 1000 - 1), out }));
  });
}

async function reachAll(pods: PodStatus[]): Promise<void> {
  await Promise.all(pods.flatMap((a) => pods.filter((b) => b !== a).map((b) =>
    waitFor(`${a.ip} -> ${b.ip}`, async () => (await inPod(a, ['ping', '-c', '1', '-W', '1', b.ip], { allowFail: true })).code === 0, { timeoutMs: 30_000, intervalMs: 300 }))));
}

test('Kubernetes mode: a 3-node cluster with pods through the CRI, a node added, a node deleted and reclaimed, rolling restart, API down', async (t) => {
  const lab = await Lab.create();
  let cluster: KubeCluster | undefined;
  const runtimes: Containerd[] = [];
  try {
    cluster = await KubeCluster.create(lab);
    const c = cluster;
    const nodes: KubeNode[] = [];
    for (const name of ['n1', 'n2', 'n3']) nodes.push(await c.addNode(name));
    for (const n of nodes) c.startRouter(n, EXTRA);
    await Promise.all(nodes.map((n) => c.waitReady(n)));
    runtimes.push(...await Promise.all(nodes.map((n) => Containerd.start(n.host, n.cni))));
    let pods: PodStatus[] = [];

    await t.test('every router is ready, knows the others from the API and installed the CNI plugin; IPAM seeded by consensus over 3 nodes', async () => {
      for (const n of nodes) {
        const r = await n.host.report();
        assert.deepEqual(r.kube.targets.map((x: { target: string }) => x.target).sort(), nodes.filter((m) => m !== n).map((m) => m.host.ip).sort());
        assert.equal(r.kube.api.state, 'up');
        assert.match(r.ipam.quorum.from, /majority of 3 Kubernetes nodes/);
        assert.equal(r.ipam.quorum.value, 2);
        assert.match(r.kube.cni, /weave-net/);
      }
      const text = (await nodes[0].host.weave(['status', 'kube'])).stdout;
      assert.match(text, /Node: n1/);
      assert.match(text, /Watched nodes: 3/);
      assert.match(text, /Peers learned from the API: 2/);
    });

    await t.test('pods created through the CRI on every node get addresses and reach each other', async () => {
      pods = await Promise.all(runtimes.map((r, i) => r.runPod({ name: `pod-${i + 1}`, namespace: 'default', uid: `uid-${i + 1}` })));
      for (const p of pods) assert.match(p.ip, /^10\.(3[2-9]|4[0-7])\./);
      assert.equal(new Set(pods.map((p) => p.ip)).size, 3);
      await reachAll(pods);
    });

    await t.test('a fourth Node joins without touching the others', async () => {
      const pidsBefore = nodes.map((n) => n.router!.child.pid);
      const n4 = await c.addNode('n4');
      c.startRouter(n4, EXTRA);
      await c.waitReady(n4);
      await waitFor('n1..n3 target n4', async () => {
        const rs = await Promise.all(nodes.map((n) => n.host.report()));
        return rs.every((r) => r.kube.targets.some((x: { target: string }) => x.target === n4.host.ip));
      }, { timeoutMs: 20_000, intervalMs: 300 });
      assert.deepEqual(nodes.map((n) => n.router!.child.pid), pidsBefore);
      assert.ok(nodes.every((n) => n.router!.child.exitCode === null), 'no router restarted');
      // n4 owns space: a container there gets an address
      const box = await lab.addContainer('box4');
      await n4.host.weave(['attach', box.ns]);
      await waitFor('n4 owns space in the ring', async () => {
        const owners = (await nodes[0].host.report()).ipam.status.owners as Array<{ nickname?: string; addresses: number }>;
        return owners.some((o) => o.nickname === 'n4' && o.addresses > 0);
      }, { timeoutMs: 20_000, intervalMs: 300 });
      nodes.push(n4);
    });

    await t.test('deleting a Node reclaims its space within 10 s, by exactly one router', async () => {
      const n4 = nodes.pop()!;
      await n4.host.killAll(); // the machine is gone
      const t0 = Date.now();
      await c.deleteNode('n4');
      await waitFor('no unreachable owner', async () => {
        const text = (await nodes[0].host.weave(['status', 'ipam'])).stdout;
        const rep = await nodes[0].host.report();
        const owners = rep.ipam.status.owners as Array<{ nickname?: string; reachable: boolean }>;
        return !owners.some((o) => !o.reachable) && !/unreachable/.test(text) && !owners.some((o) => o.nickname === 'n4');
      }, { timeoutMs: 15_000, intervalMs: 200 });
      const took = Date.now() - t0;
      t.diagnostic(`reclaimed ${took} ms after the Node was deleted`);
      assert.ok(took < 10_000, `reclaimed in ${took} ms`);
      const reps = await Promise.all(nodes.map((n) => n.host.report()));
      const reclaims = reps.flatMap((r) => r.kube.reclaims as Array<{ node: string; addresses: number }>);
      assert.equal(reclaims.filter((x) => x.node === 'n4').length, 1, `one reclaim: ${JSON.stringify(reclaims)}`);
      assert.ok(reclaims[0].addresses > 0);
      const cm = await c.call('GET', '/api/v1/namespaces/kube-system/configmaps/weave-net');
      const list = JSON.parse(cm.metadata.annotations['kube-peers.weave.works/peers']).peers as Array<{ nodeName: string }>;
      assert.deepEqual(list.map((p) => p.nodeName).sort(), ['n1', 'n2', 'n3']);
      assert.match((await nodes[1].host.weave(['status', 'kube'])).stdout, /Peers learned from the API: 2/);
    });

    await t.test('a rolling restart keeps every pod\'s address and connectivity (no ping gap over 2 s)', async () => {
      for (const [i, n] of nodes.entries()) {
        const other = pods[(i + 1) % pods.length];
        const pinging = pingFor(pods[i], other.ip, 12);
        await new Promise((r) => setTimeout(r, 1000));
        await c.stopRouter(n);
        c.startRouter(n, EXTRA);
        await c.waitReady(n);
        const g = await pinging;
        t.diagnostic(`restart of ${n.name}: longest ping gap ${g.gapS.toFixed(2)} s, ${g.replies} replies`);
        // the routers' logs for a gap, when asked (WEAVE_TEST_KUBE_DUMP=PREFIX): what each did meanwhile
        if (g.gapS >= 2 && process.env.WEAVE_TEST_KUBE_DUMP) {
          fs.writeFileSync(`${process.env.WEAVE_TEST_KUBE_DUMP}-${n.name}.txt`, [g.out, ...nodes.map((m) => `==== ${m.name}\n${m.host.routers.map((r) => r.output()).join('\n==== next run\n')}`)].join('\n'));
        }
        assert.ok(g.gapS < 2, `restart of ${n.name}: ping ${pods[i].ip} -> ${other.ip} silent for ${g.gapS.toFixed(2)} s (${g.replies} replies)`);
      }
      const after = await Promise.all(runtimes.map((r, i) => r.cri.status(pods[i].id)));
      assert.deepEqual(after.map((p) => p.ip), pods.map((p) => p.ip));
      await reachAll(pods);
    });

    await t.test(`the API server down for ${DOWN_S} s changes nothing on the data path`, async () => {
      const listsBefore = (await c.counts()).counts.list;
      await c.stopApi();
      const pinging = pods.map((p, i) => pingFor(p, pods[(i + 1) % pods.length].ip, DOWN_S));
      await waitFor('the routers see the API down', async () => {
        const rs = await Promise.all(nodes.map((n) => n.host.report()));
        return rs.every((r) => r.kube.api.state === 'down');
      }, { timeoutMs: 20_000, intervalMs: 500 });
      for (const g of await Promise.all(pinging)) t.diagnostic(`API down: longest ping gap ${g.gapS.toFixed(2)} s, ${g.replies} replies`);
      for (const g of await Promise.all(pinging)) assert.ok(g.gapS < 2 && g.replies > DOWN_S * 5, `ping gap ${g.gapS.toFixed(2)} s, ${g.replies} replies`);
      assert.match((await nodes[0].host.weave(['status', 'kube'])).stdout, /API: down/);
      for (const n of nodes) assert.equal((await n.host.report()).kube.targets.length, 2, 'targets unchanged');
      await c.startApi();
      await waitFor('the routers see the API again', async () => {
        const rs = await Promise.all(nodes.map((n) => n.host.report()));
        return rs.every((r) => r.kube.api.state === 'up');
      }, { timeoutMs: 60_000, intervalMs: 500 });
      assert.equal((await c.counts()).counts.list, listsBefore, 'reconnected by watch from the last resourceVersion, no relist');
      for (const n of nodes) {
        const logs = n.router!.output();
        assert.equal((logs.match(/API server unreachable/g) ?? []).length, 1, `${n.name} logged the outage once`);
      }
    });
  } finally {
    for (const r of runtimes) await r.stop().catch(() => undefined);
    await cluster?.close();
    await lab.cleanup();
  }
});
