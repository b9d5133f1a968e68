// The router's event log (api/parts/events.ts): bounded ring, fed by the mesh, the overlay switch and IPAM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'events';
import { FakeClock } from '../../lib/clock';
import { MemoryLogger } from '../../lib/log';
import { EventRing, IPAM_SAMPLE_MS, buildEvents } from '../../api/parts/events';

test('the ring keeps the newest N, oldest first, counts what fell off, resumes after a seq', () => {
  const r = new EventRing(3);
  for (let i = 1; i <= 5; i++) r.push({ time: i, kind: 'peer-join', text: `e${i}` });
  assert.deepEqual(r.list().map((e) => e.text), ['e3', 'e4', 'e5']);
  assert.deepEqual(r.list().map((e) => e.seq), [3, 4, 5]);
  assert.equal(r.evicted, 2);
  assert.deepEqual(r.list(4).map((e) => e.text), ['e5']);
  const heard: string[] = [];
  const off = r.subscribe((e) => heard.push(e.text));
  r.push({ time: 6, kind: 'peer-leave', text: 'e6' });
  off();
  r.push({ time: 7, kind: 'peer-leave', text: 'e7' });
  assert.deepEqual(heard, ['e6']);
});

class FakeMesh extends EventEmitter {
  peers: Array<{ name: string; nickname: string; reachable: boolean }> = [{ name: 'aa:00:00:00:00:01', nickname: 'h1', reachable: true }];
  peerSummaries() { return this.peers; }
}

test('connections, peers, overlay switches (with the reason) and IPAM changes become events with times', () => {
  const clock = new FakeClock(1_000_000);
  const mesh = new FakeMesh();
  let changed: ((peer: string, overlay: string | null) => void) | undefined;
  let fastdpReason = 'waiting for fastdp heartbeats';
  const overlays = {
    onChange: (fn: (peer: string, overlay: string | null) => void) => { changed = fn; return () => { changed = undefined; }; },
    statuses: () => [{ peer: 'aa:00:00:00:00:02', overlays: [{ name: 'fastdp', established: false, reason: fastdpReason }, { name: 'sleeve', established: true }] }],
  };
  let owners: Array<{ peer: string; nickname: string; addresses: number; reachable: boolean }> = [
    { peer: 'aa:00:00:00:00:01', nickname: 'h1', addresses: 600, reachable: true },
    { peer: 'aa:00:00:00:00:03', nickname: 'h3', addresses: 424, reachable: true },
  ];
  const part = buildEvents({ mesh, overlays, ipamOwners: () => owners }, new MemoryLogger(), clock);
  const h2 = 'aa:00:00:00:00:02';
  mesh.emit('connectionEstablished', h2, { remote: { nickname: 'h2' }, remoteAddr: '198.18.0.12:6783', outbound: true });
  mesh.peers = [...mesh.peers, { name: h2, nickname: 'h2', reachable: true }];
  mesh.emit('peersChanged');
  changed!(h2, 'sleeve');
  clock.advance(500);
  fastdpReason = '';
  changed!(h2, 'fastdp');
  clock.advance(IPAM_SAMPLE_MS); // first look at IPAM: the baseline
  owners = [owners[0], { ...owners[1], reachable: false }];
  clock.advance(IPAM_SAMPLE_MS);
  owners = [{ ...owners[0], addresses: 1024 }];
  clock.advance(IPAM_SAMPLE_MS);
  mesh.emit('connectionLost', h2, 'connection reset');
  mesh.peers = mesh.peers.slice(0, 1);
  mesh.emit('peersChanged');
  const ev = part.ring.list();
  assert.deepEqual(ev.map((e) => e.kind), ['connection-up', 'peer-join', 'overlay', 'overlay', 'ipam-unreachable', 'ipam-reclaim', 'connection-down', 'peer-leave']);
  assert.equal(ev[0].text, 'connection to h2 (aa:00:00:00:00:02) established (to 198.18.0.12:6783)');
  assert.equal(ev[2].text, 'h2 (aa:00:00:00:00:02): data now on sleeve; fastdp: waiting for fastdp heartbeats');
  assert.equal(ev[3].text, 'h2 (aa:00:00:00:00:02): data moved from sleeve to fastdp');
  assert.equal(ev[3].time, 1_000_500);
  assert.match(ev[4].text, /h3 .* owns 424 addresses and is unreachable; if it is gone for good: weave rmpeer h3/);
  assert.match(ev[5].text, /424 addresses of unreachable h3 .* reclaimed by h1/);
  assert.equal(ev[6].text, 'connection to h2 (aa:00:00:00:00:02) lost: connection reset');
  // the report section has them too
  const rep = part.report!() as { recent: unknown[] };
  assert.equal(rep.recent.length, ev.length);
  part.stop();
  assert.equal(mesh.listenerCount('connectionEstablished'), 0);
  assert.equal(changed, undefined);
  mesh.emit('connectionEstablished', h2, { remote: { nickname: 'h2' } });
  assert.equal(part.ring.list().length, ev.length, 'nothing after stop');
});
