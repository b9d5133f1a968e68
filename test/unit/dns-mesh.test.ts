// DNS records over the real mesh core (topology, routes, gossip channels) on the in-memory underlay,
// driven by a FakeClock: three routers in a line h0 - h1 - h2.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { FakeClock } from '../../lib/clock';
import { silentLogger } from '../../lib/log';
import type { Mesh } from '../../mesh/mesh';
import { DnsStore, FileDnsPersistence, type DnsPersistence } from '../../dns/records';
import { attachDnsToMesh } from '../../dns/mesh-glue';
import { MeshSim, simAddress, simPeerName } from '../fakes/underlay';

test('a name registered on h0 resolves on h2, removal spreads, a restarted router gets its records back (from peers, or from its data dir), a dead router\'s records go', async () => {
  const clock = new FakeClock();
  const sim = new MeshSim(clock, { n: 3, seed: 11, discovery: false, gossipIntervalMs: 2000 });
  const stores: DnsStore[] = [];
  const targets = (i: number): number[] => (i === 0 ? [] : [i - 1]);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'weave-dns-mesh-'));
  const startPeer = async (i: number, m: Mesh, persistence?: DnsPersistence): Promise<DnsStore> => {
    const s = new DnsStore({ self: simPeerName(i), clock, log: silentLogger(), unknownOriginGraceMs: 10_000, persistence });
    attachDnsToMesh(s, m);
    stores[i] = s;
    return s;
  };
  for (let i = 0; i < 3; i++) {
    const m = sim.makeMesh(i);
    sim.meshes.push(m);
    await startPeer(i, m);
  }
  for (let i = 0; i < 3; i++) {
    await sim.meshes[i]!.start();
    sim.meshes[i]!.connect(targets(i).map(simAddress));
  }
  try {
    assert.ok((await sim.runUntil(() => sim.converged(), 10_000)) >= 0, 'mesh converged');

    stores[0].add('Web.weave.local', '10.32.0.1');
    stores[0].add('web.weave.local', '10.32.0.2');
    stores[2].add('db.weave.local', '10.32.2.1');
    const t = await sim.runUntil(() => stores[2].lookup('web.weave.local').length === 2 && stores[0].lookup('db.weave.local').length === 1, 5000, 10);
    assert.ok(t >= 0 && t < 1000, `records spread in ${t} simulated ms`);

    stores[0].remove({ addr: '10.32.0.2' });
    assert.ok((await sim.runUntil(() => stores[2].lookup('web.weave.local').length === 1 && stores[1].lookup('web.weave.local').length === 1, 5000, 10)) >= 0);
    assert.deepEqual(stores[2].lookup('web.weave.local'), ['10.32.0.1']);

    // h0 restarts with an empty store (and an empty data dir): it re-learns its records from h1
    const disk = new FileDnsPersistence(path.join(dir, 'dns-records'));
    const m0 = await sim.restartPeer(0, [1]);
    const fresh = await startPeer(0, m0, disk);
    assert.deepEqual(fresh.lookup('web.weave.local'), []);
    assert.ok((await sim.runUntil(() => fresh.lookup('web.weave.local').length === 1, 10_000)) >= 0, 'records restored after restart');
    assert.ok(fresh.all().some((e) => e.addr === '10.32.0.2' && e.tombstone), 'the removal is remembered too');
    // and its next change wins everywhere
    fresh.remove({ name: 'web.weave.local' });
    assert.ok((await sim.runUntil(() => stores[2].lookup('web.weave.local').length === 0, 5000, 10)) >= 0);

    // h2 dies: h0 and h1 drop its records once the topology says it is gone
    await sim.stopPeer(2);
    assert.ok((await sim.runUntil(() => fresh.lookup('db.weave.local').length === 0 && stores[1].lookup('db.weave.local').length === 0, 20_000)) >= 0, 'dead peer records dropped');

    // h0 is down long enough for h1 to drop its records; on restart its data dir brings them back
    fresh.add('svc.weave.local', '10.32.0.9', 'c9');
    assert.ok((await sim.runUntil(() => stores[1].lookup('svc.weave.local').length === 1, 5000, 10)) >= 0);
    await sim.stopPeer(0);
    assert.ok((await sim.runUntil(() => stores[1].lookup('svc.weave.local').length === 0, 20_000)) >= 0, 'h1 dropped the records of departed h0');
    const m0b = await sim.restartPeer(0, [1]);
    const restored = await startPeer(0, m0b, disk);
    assert.deepEqual(restored.lookup('svc.weave.local'), ['10.32.0.9'], 'loaded from disk at once');
    assert.ok((await sim.runUntil(() => stores[1].lookup('svc.weave.local').length === 1, 20_000)) >= 0, 'h1 learns them again');
    assert.deepEqual(stores[1].lookup('web.weave.local'), [], 'the removal made before the restart still holds');
    // versions continue where they stopped: the next removal wins on h1
    restored.removeContainer('c9');
    assert.ok((await sim.runUntil(() => stores[1].lookup('svc.weave.local').length === 0, 5000, 10)) >= 0);
  } finally {
    for (const m of sim.alive()) await m.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
