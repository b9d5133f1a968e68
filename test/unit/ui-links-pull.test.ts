// Link entries are pulled by a looked-at page, never pushed (ui/links.ts, ui/part.ts): connection
// changes send nothing, a view asks at most every LINKS_PULL_MS, each router answers the asker with
// its own entry only when the asker's copy is older, and entries from routers before pulls still merge.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'events';
import { FakeClock } from '../../lib/clock';
import { MemoryLogger, silentLogger } from '../../lib/log';
import { ProtocolError } from '../../lib/errors';
import { EventRing } from '../../api/parts/events';
import type { GossipChannel, GossipData, Gossiper } from '../../mesh/types';
import type { Report } from '../../api/views';
import type { StreamSink } from '../../lib/subsystem';
import { decodeMsg, encodeMsg } from '../../mesh/codec';
import { LINKS_PULL_MS, buildUi } from '../../ui/part';
import { ANSWER_MIN_MS, LinksAsk, LinksTable, LinksUpdate, decodeLinksMessage, decodeLinksUpdate, type LinkInfo } from '../../ui/links';
import { FakeIpamNet, mulberry32 } from '../fakes/ipam-gossip';

const SELF = 'aa:00:00:00:00:01';
const peerName = (i: number) => `aa:00:00:00:01:${(i % 256).toString(16).padStart(2, '0')}`;
const SOFTWARE = '0.1.0 1..1';

/** Records everything the links channel sends. */
class FakeMesh extends EventEmitter {
  peers: Array<{ name: string }> = [{ name: SELF }];
  conns: Array<{ peerName: string; state: string; overlay: string | null; encrypted: boolean }> = [];
  readonly broadcasts: GossipData[] = [];
  readonly unicasts: Array<[string, Uint8Array]> = [];
  gossiped = 0;
  peerSummaries() { return this.peers; }
  connectionStatuses() { return this.conns; }
  newGossip(name: string, _g: Gossiper): GossipChannel {
    return {
      name,
      gossipUnicast: (dst, msg) => { this.unicasts.push([dst, msg]); return true; },
      gossipBroadcast: (u: GossipData) => { this.broadcasts.push(u); },
      gossip: () => { this.gossiped++; },
    };
  }
  sent(): number {
    return this.broadcasts.length + this.unicasts.length + this.gossiped;
  }
}

function minimalReport(): Report {
  return {
    version: '0.1.0',
    router: { name: SELF, nickname: 's', uid: 'u', encryption: true, trustedSubnets: [], protocolMinVersion: 1, protocolMaxVersion: 1, peerDiscovery: true, listen: '0.0.0.0:6783', connLimit: 200, peers: [], connections: [], targets: [], routes: [], port: 6783, crypto: 'sodium', dataDir: '/d', pid: 1, startedAt: 1 },
  } as unknown as Report;
}

class Sink implements StreamSink {
  buffered = 0;
  private closers: Array<() => void> = [];
  write(): boolean { return true; }
  end(): void { for (const f of this.closers) f(); }
  onClose(fn: () => void): void { this.closers.push(fn); }
}

const link = (peer: string, overlay = 'sleeve'): LinkInfo => ({ peer, state: 'established', overlay, encryption: 'encrypted' });

test('connection changes with no page open send and compute nothing; our own entry is computed when asked for or viewed', () => {
  const clock = new FakeClock(1_000_000);
  const mesh = new FakeMesh();
  let looks = 0;
  const statuses = mesh.connectionStatuses.bind(mesh);
  mesh.connectionStatuses = () => { looks++; return statuses(); };
  const part = buildUi({ self: SELF, software: SOFTWARE, mesh, report: minimalReport, events: new EventRing(10) }, silentLogger(), clock);
  try {
    mesh.peers = [{ name: SELF }, ...Array.from({ length: 99 }, (_, i) => ({ name: peerName(i) }))];
    mesh.emit('peersChanged');
    const v0 = part.links.get(SELF)!.version;
    // 30 connections come up over 1.5 s, as when a router joins a large mesh
    for (let i = 0; i < 30; i++) {
      mesh.conns.push({ peerName: peerName(i), state: 'established', overlay: 'sleeve', encrypted: true });
      mesh.emit('connectionEstablished', peerName(i));
      clock.advance(50);
    }
    clock.advance(60_000);
    assert.equal(looks, 0, 'no page, no ask: the connections are not even looked at');
    assert.equal(part.links.get(SELF)!.version, v0);
    assert.equal(mesh.sent(), 0, 'nothing on the links channel');
    assert.equal(part.links.gossip(), null, 'no full state for the periodic rounds');
    assert.equal((part.links as Gossiper).digest, undefined, 'no digest: the rounds send nothing either');
    // another router's page asks: the answer is our entry as it is now
    part.links.onGossipBroadcast(peerName(1), new LinksAsk(new Map([[SELF, v0]])).encode()[0]);
    assert.equal(mesh.unicasts.length, 1);
    const answer = decodeLinksUpdate(mesh.unicasts[0][1]).entries.get(SELF)!;
    assert.equal(answer.links.length, 30);
    assert.equal(answer.version, v0 + 1, 'one new version for the whole burst');
    // our own page shows our entry as it is now; an unchanged one keeps its version
    mesh.conns.pop();
    const data = part.apiRoutes!().find((r) => r.path === '/ui/data')!;
    data.handler({} as never);
    assert.equal(part.links.get(SELF)!.links.length, 29);
    assert.equal(part.links.get(SELF)!.version, v0 + 2);
    data.handler({} as never);
    assert.equal(part.links.get(SELF)!.version, v0 + 2, 'no change, no version');
  } finally {
    part.stop!();
  }
  assert.equal(clock.pending(), 0, 'stop leaves no timer');
});

test('a looked-at page pulls at most every LINKS_PULL_MS: /ui/data and the stream ticks while a stream is open', () => {
  const clock = new FakeClock(1_000_000);
  const mesh = new FakeMesh();
  const part = buildUi({ self: SELF, software: SOFTWARE, mesh, report: minimalReport, events: new EventRing(10) }, silentLogger(), clock);
  try {
    const data = part.apiRoutes!().find((r) => r.path === '/ui/data')!;
    const asks = () => mesh.broadcasts.filter((b) => b instanceof LinksAsk).length;
    data.handler({} as never);
    assert.equal(asks(), 1, 'the first view asks');
    data.handler({} as never);
    clock.advance(LINKS_PULL_MS - 1);
    data.handler({} as never);
    assert.equal(asks(), 1, 'not again within the interval');
    clock.advance(1);
    data.handler({} as never);
    assert.equal(asks(), 2);
    // a stream: its snapshot and ticks are views
    const sink = new Sink();
    clock.advance(LINKS_PULL_MS);
    part.streams.open(sink);
    assert.equal(asks(), 3, 'the snapshot asks');
    clock.advance(3 * LINKS_PULL_MS);
    assert.equal(asks(), 6, 'the ticks ask once per interval');
    sink.end();
    clock.advance(10 * LINKS_PULL_MS);
    assert.equal(asks(), 6, 'no page, no pull');
    assert.equal(mesh.unicasts.length + mesh.gossiped, 0);
    // the ask carries what we hold, not entries
    part.links.mergeUpdate(new LinksUpdate(new Map([[peerName(1), { version: 7, software: SOFTWARE, links: [] }]])));
    data.handler({} as never);
    const ask = mesh.broadcasts.at(-1) as LinksAsk;
    assert.deepEqual([...ask.held], [[peerName(1), 7]]);
    assert.deepEqual(decodeMsg(ask.encode()[0], 'ask'), { v: 1, e: [], a: [[peerName(1), 7]] }, 'an update with no entries to routers from before pulls');
  } finally {
    part.stop!();
  }
});

/** N link tables on the in-memory gossip network (broadcast to all, unicast to one, with delays). */
function tables(n: number, clock: FakeClock) {
  const net = new FakeIpamNet(clock, mulberry32(7), { minDelayMs: 1, maxDelayMs: 20 });
  const names = Array.from({ length: n }, (_, i) => peerName(i));
  const ts = names.map((name) => {
    const { channel } = net.add(name);
    const t = new LinksTable(name, clock, silentLogger());
    t.setChannel(channel);
    net.setGossiper(name, t);
    return t;
  });
  return { net, names, ts };
}

test('pull round trip: the asker gets every entry, then only the newer ones; the periodic rounds move nothing', () => {
  const clock = new FakeClock(1_000_000);
  const { net, names, ts } = tables(6, clock);
  net.start();
  ts.forEach((t, i) => t.setLocal(SOFTWARE, names.filter((n) => n !== names[i]).map((n) => link(n))));
  clock.advance(30_000);
  assert.equal(net.messages, 0, 'setLocal and the periodic rounds send nothing');
  assert.equal(ts[0].all().size, 1);

  ts[0].ask();
  clock.advance(100);
  assert.deepEqual(net.errors, []);
  assert.equal(ts[0].all().size, 6, 'every router answered');
  for (let i = 1; i < 6; i++) assert.deepEqual(ts[0].get(names[i]), ts[i].get(names[i]));
  assert.equal(net.messages, 5 + 5, 'one ask to each, one answer from each');

  // nothing changed: asks go out, no answers come
  clock.advance(LINKS_PULL_MS);
  ts[0].ask();
  clock.advance(100);
  assert.equal(net.messages, 10 + 5);
  // two routers' connections change: only they answer
  ts[2].setLocal(SOFTWARE, [link(names[0], 'fastdp')]);
  ts[4].setLocal(SOFTWARE, []);
  clock.advance(LINKS_PULL_MS);
  ts[0].ask();
  clock.advance(100);
  assert.equal(net.messages, 15 + 5 + 2);
  assert.equal(ts[0].get(names[2])!.links[0].overlay, 'fastdp');
  assert.deepEqual(ts[0].get(names[4])!.links, []);
  assert.deepEqual(ts.map((t) => t.stats.malformed), [0, 0, 0, 0, 0, 0]);
  // the others learnt nothing from the ask or the answers (unicast to the asker only)
  assert.equal(ts[3].all().size, 1);
  // peers that left are forgotten
  ts[0].retain(new Set(names.slice(0, 3)));
  assert.deepEqual([...ts[0].all().keys()].sort(), names.slice(0, 3).sort());
});

test('an asker holding a newer entry of our name (ours before a restart) is outbid; one asker is answered at most every ANSWER_MIN_MS', () => {
  const clock = new FakeClock(1_000_000);
  const t = new LinksTable(SELF, clock, silentLogger());
  const sent: Array<[string, Uint8Array]> = [];
  t.setChannel({ name: 'links', gossipUnicast: (d, m) => { sent.push([d, m]); return true; }, gossipBroadcast: () => {}, gossip: () => {} });
  t.setLocal(SOFTWARE, [link(peerName(1))]);
  const mine = t.get(SELF)!.version;
  const asker = peerName(2);
  const ask = (held: Array<[string, number]>) => t.onGossipBroadcast(asker, new LinksAsk(new Map(held)).encode()[0]);
  ask([[SELF, mine]]);
  assert.equal(sent.length, 0, 'the asker is up to date');
  ask([[SELF, mine + 100]]);
  assert.equal(sent.length, 1);
  const answer = decodeLinksUpdate(sent[0][1]);
  assert.equal(sent[0][0], asker);
  assert.deepEqual([...answer.entries.keys()], [SELF], 'our own entry only');
  assert.equal(answer.entries.get(SELF)!.version, mine + 101);
  assert.deepEqual(answer.entries.get(SELF)!.links, [link(peerName(1))]);
  assert.equal(t.get(SELF)!.version, mine + 101);
  ask([]);
  assert.equal(sent.length, 1, 'too soon for the same asker');
  assert.equal(t.stats.asksThrottled, 1);
  t.onGossipBroadcast(peerName(3), new LinksAsk().encode()[0]);
  assert.equal(sent.length, 2, 'another asker is answered');
  clock.advance(ANSWER_MIN_MS);
  ask([]);
  assert.equal(sent.length, 3);
});

test('malformed asks and answers are counted, logged and dropped (ProtocolError, the table unchanged)', () => {
  const clock = new FakeClock(1_000_000);
  const log = new MemoryLogger();
  const t = new LinksTable(SELF, clock, log);
  const sent: unknown[] = [];
  t.setChannel({ name: 'links', gossipUnicast: (d) => { sent.push(d); return true; }, gossipBroadcast: () => {}, gossip: () => {} });
  const P = peerName(5);
  const entry = [P, 3, SOFTWARE, [[SELF, 'established', 'sleeve', 1, 0, '']]];
  const bad: Array<[string, () => unknown]> = [
    ['ask with a bad name', () => t.onGossipBroadcast(P, encodeMsg({ v: 1, e: [], a: [['zz', 1]] }))],
    ['ask with a bad version', () => t.onGossipBroadcast(P, encodeMsg({ v: 1, e: [], a: [[P, -1]] }))],
    ['ask with a hostile version', () => t.onGossipBroadcast(P, encodeMsg({ v: 1, e: [], a: [[SELF, Number.MAX_SAFE_INTEGER]] }))],
    ['ask pair of 3', () => t.onGossipBroadcast(P, encodeMsg({ v: 1, e: [], a: [[P, 1, 2]] }))],
    ['ask too long', () => t.onGossipBroadcast(P, encodeMsg({ v: 1, e: [], a: Array.from({ length: 10_001 }, () => [P, 1]) }))],
    ['ask not a list', () => t.onGossipBroadcast(P, encodeMsg({ v: 1, e: [], a: 'x' }))],
    ['ask with entries', () => t.onGossipBroadcast(P, encodeMsg({ v: 1, e: [entry], a: [] }))],
    ['ask by unicast', () => t.onGossipUnicast(P, encodeMsg({ v: 1, e: [], a: [] }))],
    ['ask by neighbour gossip', () => t.onGossip(encodeMsg({ v: 1, e: [], a: [] }))],
    ['answer with another origin', () => t.onGossipUnicast(peerName(6), encodeMsg({ v: 1, e: [entry] }))],
    ['answer with a long reason', () => t.onGossipUnicast(P, encodeMsg({ v: 1, e: [[P, 3, SOFTWARE, [[SELF, 'established', 'sleeve', 1, 0, 'r'.repeat(500)]]]] }))],
    ['answer of an unknown version', () => t.onGossipUnicast(P, encodeMsg({ v: 2, e: [entry] }))],
    ['not msgpack', () => t.onGossipUnicast(P, new Uint8Array([0xc1, 0xc1]))],
  ];
  for (const [what, f] of bad) assert.throws(f, ProtocolError, what);
  assert.equal(t.stats.malformed, bad.length);
  assert.equal(log.records.filter((e) => e.msg === 'dropping malformed links gossip').length, bad.length);
  assert.equal(t.all().size, 1, 'nothing merged');
  assert.equal(sent.length, 0, 'nothing answered');
  // the good answer from its origin merges
  t.onGossipUnicast(P, encodeMsg({ v: 1, e: [entry] }));
  assert.equal(t.get(P)!.version, 3);
  assert.throws(() => decodeLinksUpdate(new LinksAsk().encode()[0]), ProtocolError, 'an ask is not an update');
  assert.ok(decodeLinksMessage(new LinksAsk().encode()[0]) instanceof LinksAsk);
});

test('entries from routers before pulls (broadcast on change, gossip on connect and repair) still merge, and are not passed on', () => {
  const clock = new FakeClock(1_000_000);
  const t = new LinksTable(SELF, clock, silentLogger());
  const P = peerName(7), Q = peerName(8);
  // the old format, byte for byte as routers before pulls encode it
  const old = (origin: string, version: number) => encodeMsg({ v: 1, e: [[origin, version, '0.0.9 1..1', [[SELF, 'established', 'fastdp', 2, 1410, '']]]] });
  const delta = t.onGossipBroadcast(P, old(P, 5)) as LinksUpdate;
  assert.deepEqual([...delta.entries.keys()], [P]);
  assert.deepEqual(t.get(P)!.links, [{ peer: SELF, state: 'established', overlay: 'fastdp', encryption: 'trusted', mtu: 1410 }]);
  assert.equal(t.onGossipBroadcast(P, old(P, 5)), null, 'the same version again is nothing new');
  assert.equal(t.onGossip(old(Q, 2)), null, 'merged but not passed on');
  assert.equal(t.get(Q)!.version, 2);
  // their full table in a repair round, with an older copy of P and a newer one of our own name
  const full = encodeMsg({ v: 1, e: [[P, 4, 'x', []], [SELF, t.get(SELF)!.version + 3, 'old', []]] });
  const selfBefore = t.get(SELF)!.version;
  t.onGossip(full);
  assert.equal(t.get(P)!.version, 5, 'older versions lose');
  assert.equal(t.get(SELF)!.version, selfBefore + 4, 'our own name outbid');
  assert.equal(t.stats.malformed, 0);
});

test('our own failures to compute the entry are logged and counted, the last entry stands, and the counters are metrics', async () => {
  const { Registry } = await import('prom-client');
  const clock = new FakeClock(1_000_000);
  const mesh = new FakeMesh();
  const part = buildUi({ self: SELF, software: SOFTWARE, mesh, report: minimalReport, events: new EventRing(10) }, silentLogger(), clock);
  try {
    mesh.conns.push({ peerName: peerName(1), state: 'established', overlay: 'sleeve', encrypted: true });
    part.links.refreshLocal();
    const before = part.links.get(SELF)!;
    mesh.connectionStatuses = () => { throw new Error('status broke'); };
    part.links.refreshLocal();
    part.links.onGossipBroadcast(peerName(2), new LinksAsk(new Map()).encode()[0]);
    assert.equal(part.links.stats.failures, 2);
    assert.equal(part.links.get(SELF), before, 'the last entry stands');
    assert.equal(mesh.unicasts.length, 1, 'the ask is answered with it');
    const reg = new Registry();
    part.metrics!(reg);
    const text = await reg.metrics();
    assert.match(text, /weave_ui_link_messages_total\{event="failure"\} 2/);
    assert.match(text, /weave_ui_link_messages_total\{event="answer_sent"\} 1/);
  } finally {
    part.stop!();
  }
});
