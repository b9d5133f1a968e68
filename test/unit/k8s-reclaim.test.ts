// k8s/reclaim.ts and k8s/subsystem.ts against the fixture API server: the peers ConfigMap under
// concurrent writers (exactly one reclaim per deleted node), refusals retried, a reclaimer that died
// half-way finishing at its next start; Nodes -> mesh targets without restart, readiness, the view.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeApiServer, nodeObject } from '../lab/apiserver';
import { KubeClient } from '../../k8s/client';
import { PEERS_ANNOTATION, PeerList, parsePeers } from '../../k8s/reclaim';
import { KubeSubsystem, nodeAddress } from '../../k8s/subsystem';
import { renderKube } from '../../k8s/views';
import { parseKubeFlags } from '../../k8s/config';
import { realClock } from '../../lib/clock';
import { MemoryLogger, silentLogger } from '../../lib/log';
import { RefusedError } from '../../lib/errors';
import type { Subsystem } from '../../lib/subsystem';

async function until(what: string, fn: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const CM = { namespace: 'kube-system', name: 'weave-net' };

test('reclaim: racing routers take a deleted node\'s space exactly once; refusals retried; half-done reclaims finished', async () => {
  const srv = new FakeApiServer();
  await srv.start();
  const c = new KubeClient({ server: srv.url, source: 'test' });
  try {
    const transfers: string[] = [];
    const refuse = new Set<string>();
    const mk = (peer: string, node: string) => new PeerList({
      client: c, configMap: CM, self: { peerName: peer, nodeName: node }, clock: realClock, log: silentLogger(),
      transferFrom: async (p) => {
        if (refuse.has(p)) throw new RefusedError('ELIVE', `refusing to take over the space of ${p}: it is reachable`);
        transfers.push(`${peer}<-${p}`);
        return 256;
      },
    });
    for (let round = 0; round < 5; round++) {
      const routers = Array.from({ length: 5 }, (_, i) => mk(`p${round}-${i}`, `n${round}-${i}`));
      await Promise.all(routers.map((r) => r.join()));
      const cm = srv.get('configmaps', CM.name, CM.namespace) as any;
      assert.equal(parsePeers(cm).filter((p) => p.peerName.startsWith(`p${round}-`)).length, 5);
      // n<round>-4 is deleted: the four others sweep at once
      transfers.length = 0;
      const live = new Set([0, 1, 2, 3].map((i) => `n${round}-${i}`));
      const results = await Promise.all(routers.slice(0, 4).map((r) => r.sweep(live)));
      assert.deepEqual(results, [true, true, true, true]);
      assert.equal(transfers.length, 1, `exactly one reclaim: ${transfers.join(', ')}`);
      assert.match(transfers[0], new RegExp(`<-p${round}-4$`));
      const after = parsePeers(srv.get('configmaps', CM.name, CM.namespace) as any);
      assert.equal(after.some((p) => p.peerName === `p${round}-4`), false, 'the entry is gone');
      await routers[0].mutate(() => []); // the next round starts from an empty list
    }
    assert.ok(srv.counts().update > 10);

    // a refusal (the peer still reachable) keeps the mark; the next sweep takes it
    const a = mk('pa', 'na');
    const b = mk('pb', 'nb');
    await a.join(); await b.join();
    refuse.add('pb');
    transfers.length = 0;
    assert.equal(await a.sweep(new Set(['na'])), false);
    assert.equal(parsePeers(srv.get('configmaps', CM.name, CM.namespace) as any).find((p) => p.peerName === 'pb')?.reclaimedBy, 'pa');
    refuse.delete('pb');
    assert.equal(await a.sweep(new Set(['na'])), true);
    assert.deepEqual(transfers, ['pa<-pb']);

    // a reclaimer that marked and died: another router leaves its mark alone; it finishes at its restart
    await a.mutate((peers) => [...peers, { peerName: 'pz', nodeName: 'nz', reclaimedBy: 'pa' }]);
    transfers.length = 0;
    const c2 = mk('pc', 'nc');
    await c2.join();
    assert.equal(await c2.sweep(new Set(['na', 'nc'])), true);
    assert.deepEqual(transfers, []);
    const again = mk('pa', 'na');
    assert.equal(await again.sweep(new Set(['na', 'nc'])), true);
    assert.deepEqual(transfers, ['pa<-pz']);
    const cm = srv.get('configmaps', CM.name, CM.namespace) as any;
    assert.deepEqual(parsePeers(cm).map((p) => p.peerName).sort(), ['pa', 'pc']);
    assert.ok(cm.metadata.annotations[PEERS_ANNOTATION]);
  } finally {
    c.close();
    await srv.close();
  }
});

test('kube subsystem: Nodes become mesh targets and stop being ones, without restart; readiness; the view', async () => {
  const srv = new FakeApiServer({ bookmarkMs: 200 });
  await srv.start();
  srv.create('nodes', nodeObject('self', '198.18.0.1'));
  srv.create('nodes', nodeObject('b', '198.18.0.2'));
  const conns: string[] = [];
  let peerNames = ['aa:00:00:00:00:01'];
  let ipamReady = { ready: false, reason: 'waiting for consensus' };
  const transfers: string[] = [];
  const subsystems: Subsystem[] = [];
  const log = new MemoryLogger();
  const cfg = { ...parseKubeFlags({ kubeNodeName: 'self', kubeCniBinDir: '' }, {}), enabled: true };
  const made = KubeSubsystem.create({
    cfg: { kube: { ...cfg, connection: { server: srv.url, source: 'fixture' } }, port: 6783, dataDir: '/nonexistent', httpAddr: { host: '127.0.0.1', port: 6784 } },
    root: log, clock: realClock, identity: { name: 'aa:00:00:00:00:01', nickname: 'self' },
    mesh: { connect: (a) => conns.push(`+${a.join(',')}`), forget: (a) => conns.push(`-${a.join(',')}`), peerNames: () => peerNames },
    subsystems,
  });
  const k = await made.catch(async (e) => { await srv.close(); throw e; });
  subsystems.push(k, {
    name: 'ipam', stop: () => {},
    addresses: { readiness: () => ipamReady } as any,
    peerSpace: { transferFrom: async (p) => { transfers.push(p); return 1; }, owners: () => [] },
  });
  try {
    assert.deepEqual(k.clusterSize, { size: 2, from: 'Kubernetes nodes' });
    await k.start();
    assert.deepEqual(conns, ['+198.18.0.2']);
    assert.equal(k.readiness().ready, false);
    assert.match(k.readiness().reason, /consensus/);
    ipamReady = { ready: true, reason: 'ready' };
    assert.match(k.readiness().reason, /none of the 1 other nodes/);
    peerNames = ['aa:00:00:00:00:01', 'aa:00:00:00:00:02'];
    assert.equal(k.readiness().ready, true);

    srv.create('nodes', nodeObject('c', '198.18.0.3'));
    await until('node c', () => conns.includes('+198.18.0.3'));
    // an address change moves the target
    srv.patch('nodes', 'c', { status: { addresses: [{ type: 'InternalIP', address: '198.18.0.33' }] } }, 'application/merge-patch+json');
    await until('c moved', () => conns.includes('+198.18.0.33'));
    assert.deepEqual(conns.slice(-2), ['-198.18.0.3', '+198.18.0.33']);
    // the ConfigMap knows us; b's router joined too; b deleted -> b forgotten and reclaimed once
    await until('joined', () => (k.report() as any).joined === true);
    const other = new PeerList({ client: new KubeClient({ server: srv.url, source: 't' }), configMap: CM, self: { peerName: 'aa:00:00:00:00:02', nodeName: 'b' }, clock: realClock, log: silentLogger(), transferFrom: async () => 0 });
    await other.join();
    srv.delete('nodes', 'b');
    await until('b reclaimed', () => transfers.length === 1);
    assert.deepEqual(transfers, ['aa:00:00:00:00:02']);
    assert.ok(conns.includes('-198.18.0.2'));
    const text = renderKube({ kube: k.report() });
    assert.match(text, /Node: self/);
    assert.match(text, /Watched nodes: 2/);
    assert.match(text, /Peers learned from the API: 1\n {2}198\.18\.0\.33 {2}\(node c\)/);
    assert.match(text, /Last reclaim: node b \(peer aa:00:00:00:00:02\): 1 addresses/);
    assert.match(renderKube({}), /off/);
    assert.equal(nodeAddress({ metadata: { name: 'x' }, status: { addresses: [{ type: 'ExternalIP', address: '1.2.3.4' }, { type: 'InternalIP', address: 'fd00::1' }] } }), '1.2.3.4');

    // the API down: nothing changes in the targets; back: a node deleted meanwhile goes
    const before = conns.length;
    await srv.stop();
    await until('down', () => (k.report() as any).api.state === 'down');
    srv.delete('nodes', 'c');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(conns.length, before, 'nothing changed while the API was down');
    await srv.start();
    await until('c gone', () => conns.includes('-198.18.0.33'), 10_000);
    assert.equal(log.records.filter((r) => /unreachable/.test(String(r.msg))).length, 1);
  } finally {
    await k.stop();
    await srv.close();
  }
});
