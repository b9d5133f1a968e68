// When the /ui part republishes this router's link gossip entry: once per burst of connection changes,
// over a window that grows with the mesh, and never when the entry did not change.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'events';
import { FakeClock } from '../../lib/clock';
import { silentLogger } from '../../lib/log';
import { EventRing } from '../../api/parts/events';
import type { GossipChannel, GossipData, Gossiper } from '../../mesh/types';
import type { Report } from '../../api/views';
import { LINKS_COALESCE_MAX_MS, LINKS_COALESCE_MS, buildUi, linksCoalesceMs } from '../../ui/part';
import { LinksUpdate } from '../../ui/links';

const SELF = 'aa:00:00:00:00:01';
const peerName = (i: number) => `aa:00:00:00:01:${(i % 256).toString(16).padStart(2, '0')}`;

class FakeMesh extends EventEmitter {
  peers: Array<{ name: string }> = [{ name: SELF }];
  conns: Array<{ peerName: string; state: string; overlay: string | null; encrypted: boolean }> = [];
  readonly broadcasts: LinksUpdate[] = [];
  peerSummaries() { return this.peers; }
  connectionStatuses() { return this.conns; }
  newGossip(name: string, _g: Gossiper): GossipChannel {
    return {
      name,
      gossipUnicast: () => true,
      gossipBroadcast: (u: GossipData) => { this.broadcasts.push(u as LinksUpdate); },
      gossip: () => {},
    };
  }
}

test('the publish window: LINKS_COALESCE_MS for small meshes, LINKS_COALESCE_PER_PEER_MS a peer beyond, capped', () => {
  assert.equal(linksCoalesceMs(0), LINKS_COALESCE_MS);
  assert.equal(linksCoalesceMs(10), LINKS_COALESCE_MS);
  assert.equal(linksCoalesceMs(50), 2500);
  assert.equal(linksCoalesceMs(100), 5000);
  assert.equal(linksCoalesceMs(10_000), LINKS_COALESCE_MAX_MS);
});

test('a burst of connection changes in a 100-peer mesh is one publish after the grown window; no change, no publish', () => {
  const clock = new FakeClock(1_000_000);
  const mesh = new FakeMesh();
  const part = buildUi({ self: SELF, software: '0.1.0 1..1', mesh, report: () => ({}) as Report, events: new EventRing(10) }, silentLogger(), clock);
  try {
    mesh.peers = [{ name: SELF }, ...Array.from({ length: 99 }, (_, i) => ({ name: peerName(i) }))];
    mesh.emit('peersChanged');
    // 30 connections come up over 1.5 s, as when a router joins a large mesh
    for (let i = 0; i < 30; i++) {
      mesh.conns.push({ peerName: peerName(i), state: 'established', overlay: 'sleeve', encrypted: true });
      mesh.emit('connectionEstablished', peerName(i));
      clock.advance(50);
    }
    assert.equal(mesh.broadcasts.length, 0, 'still inside the 2 s window');
    clock.advance(linksCoalesceMs(100) - 30 * 50);
    assert.equal(mesh.broadcasts.length, 1, 'one publish for the burst');
    const entry = mesh.broadcasts[0].entries.get(SELF)!;
    assert.equal(entry.links.length, 30);
    // an event that changed nothing our entry says (and the periodic look) publishes nothing
    mesh.emit('connectionEstablished', peerName(0));
    clock.advance(10_000);
    assert.equal(mesh.broadcasts.length, 1);
    // a small mesh keeps the short window
    mesh.peers = mesh.peers.slice(0, 3);
    mesh.emit('peersChanged');
    mesh.conns.pop();
    mesh.emit('connectionLost', peerName(29));
    clock.advance(LINKS_COALESCE_MS);
    assert.equal(mesh.broadcasts.length, 2);
    assert.equal(mesh.broadcasts[1].entries.get(SELF)!.links.length, 29);
  } finally {
    part.stop!();
  }
  assert.equal(clock.pending(), 0, 'stop leaves no timer');
});
