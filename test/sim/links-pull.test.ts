// Link entries on real meshes (in-memory underlay, FakeClock): while a mesh forms and idles with no
// page open the links channel moves no bytes (and no router computes its own entry), and one router's
// pull gathers every router's entry, computed as it answers, by
// unicast over the mesh's routes (a line: most answers take several hops).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeClock } from '../../lib/clock';
import { silentLogger } from '../../lib/log';
import { EventRing } from '../../api/parts/events';
import type { Mesh } from '../../mesh/mesh';
import { buildUi, type UiPart } from '../../ui/part';
import { MeshSim } from '../fakes/underlay';

const linksBytes = (peers: Mesh[]): number => peers.reduce((n, m) => n + (m.stats.bytesIn['gossip.links'] ?? 0), 0);

test('links on a forming 16-router mesh: no bytes without a page; a pull gets every entry, then only changed ones', async () => {
  const clock = new FakeClock();
  const n = 16;
  // a line plus a few shortcuts: converges, and answers need routing
  const sim = new MeshSim(clock, { n, seed: 11, discovery: false, gossipIntervalMs: 2000, targets: (i) => (i === 0 ? [] : i % 5 === 0 ? [i - 1, 0] : [i - 1]) });
  await sim.start();
  const peers = sim.alive();
  const parts = new Map<Mesh, UiPart>();
  for (const m of peers) parts.set(m, buildUi({ self: m.name, software: '0.1.0 1..1', mesh: m, report: () => { throw new Error('no report in this test'); }, events: new EventRing(10) }, silentLogger(), clock));
  try {
    assert.ok((await sim.runUntil(() => sim.converged(), 30_000, 50)) >= 0, 'converged');
    // periodic rounds, connection events and the local refresh run for a while
    await sim.run(20_000, 50);
    assert.equal(linksBytes(peers), 0, 'no links bytes while forming and idle');
    // nobody asked: nobody computed its own entry either
    for (const m of peers) assert.equal(parts.get(m)!.links.get(m.name)!.links.length, 0, `${m.name}'s own entry was not computed`);

    const asker = peers[n - 1];
    const table = parts.get(asker)!.links;
    table.ask();
    await sim.run(1000, 10);
    assert.equal(table.all().size, n, 'every router answered');
    for (const m of peers) {
      if (m === asker) continue;
      const est = m.connectionStatuses().filter((c) => c.state === 'established').length;
      assert.equal(parts.get(m)!.links.get(m.name)!.links.length, est, `${m.name}'s own entry is current when asked for`);
    }
    for (const m of peers) assert.deepEqual(table.get(m.name), parts.get(m)!.links.get(m.name), `${m.name}'s entry as its origin has it`);
    const afterFirst = linksBytes(peers);
    assert.ok(afterFirst > 0);
    const answers = () => peers.reduce((k, m) => k + parts.get(m)!.links.stats.answersSent, 0);
    assert.equal(answers(), n - 1);

    // nothing changed: the ask goes round, nobody answers
    clock.advance(5000);
    table.ask();
    await sim.run(1000, 10);
    assert.equal(answers(), n - 1);
    // a router goes away: its neighbours' entries change, and only they answer
    const gone = peers[7];
    await sim.stopPeer(7);
    await sim.run(15_000, 50);
    table.ask();
    await sim.run(1000, 10);
    for (const m of sim.alive()) assert.deepEqual(table.get(m.name), parts.get(m)!.links.get(m.name), `${m.name}'s entry is current at the asker`);
    assert.ok(answers() - (n - 1) >= 1 && answers() - (n - 1) <= 3, `only the changed entries came back: ${answers() - (n - 1)}`);
    assert.equal(table.get(gone.name), undefined, 'the router that left is forgotten');
    for (const m of peers) assert.equal(parts.get(m)!.links.stats.malformed, 0);
  } finally {
    for (const p of parts.values()) p.stop!();
    for (const m of sim.alive()) await m.stop();
  }
});
