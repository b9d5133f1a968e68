// The /ui page's data: the view built from the report (ui/model.ts), link gossip (ui/links.ts), the
// event stream (ui/part.ts UiStreams) and the API's streaming route (api/http.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as http from 'http';
import { FakeClock } from '../../lib/clock';
import { MemoryLogger, silentLogger } from '../../lib/log';
import type { StreamSink } from '../../lib/subsystem';
import { ApiServer } from '../../api/http';
import { buildView, cidrSize, netnsName } from '../../ui/model';
import { LinksAsk, LinksTable, LinksUpdate, decodeLinksUpdate, type LinksEntry } from '../../ui/links';
import { MAX_STREAMS, MAX_STREAM_BUFFER, UiStreams, localLinks, sseEvent } from '../../ui/part';
import type { UiView } from '../../ui/view';
import type { Report } from '../../api/views';
import { encodeMsg } from '../../mesh/codec';

const H1 = 'aa:00:00:00:00:01', H2 = 'aa:00:00:00:00:02', H3 = 'aa:00:00:00:00:03';

function report(over: Partial<{ sleevePaths: unknown[]; fastdpPaths: unknown[] }> = {}): Report {
  const conn = (name: string, nickname: string, address: string, outbound: boolean) => ({ name, nickname, address, outbound, established: true });
  return {
    version: '0.1.0',
    router: {
      name: H1, nickname: 'h1', uid: 'u1', encryption: true, trustedSubnets: [], protocolMinVersion: 1, protocolMaxVersion: 1, peerDiscovery: true, listen: '0.0.0.0:6783', connLimit: 200,
      peers: [
        { name: H1, nickname: 'h1', uid: 'u1', version: 5, reachable: true, connections: [conn(H2, 'h2', '198.18.0.12:6783', false), conn(H3, 'h3', '198.18.0.13:6783', false)] },
        { name: H2, nickname: 'h2', uid: 'u2', version: 4, reachable: true, connections: [conn(H1, 'h1', '198.18.0.11:6783', true), conn(H3, 'h3', '198.18.0.13:6783', false)] },
        { name: H3, nickname: 'h3', uid: 'u3', version: 3, reachable: true, connections: [conn(H1, 'h1', '198.18.0.11:6783', true), conn(H2, 'h2', '198.18.0.12:6783', true)] },
      ],
      connections: [
        { address: '198.18.0.12:40000', outbound: false, state: 'established', info: 'established over fastdp', peerName: H2, peerNickname: 'h2', overlay: 'fastdp', encrypted: false, trusted: true, mtu: 1450 },
        { address: '198.18.0.13:40001', outbound: false, state: 'established', info: 'established over sleeve', peerName: H3, peerNickname: 'h3', overlay: 'sleeve', encrypted: true, mtu: 1440, overlayReason: 'kernel lacks ESP' },
        { address: '198.18.0.99:6783', outbound: true, state: 'failed', info: 'password mismatch', code: 'EPASSWORD', overlay: null, encrypted: false, nextRetry: 5 },
      ],
      targets: [], routes: [], port: 6783, crypto: 'sodium', dataDir: '/d', pid: 42, startedAt: 1,
    },
    sleeve: { dropped: { noRoute: 7, unknownDest: 1 }, paths: over.sleevePaths ?? [{ peer: H3, txPackets: 100, txBytes: 10_000, rxPackets: 50, rxBytes: 5000, dropReplay: 2, dropAuth: 1, dropNoRoute: 0, dropTooBig: 0 }] },
    fastdp: { paths: over.fastdpPaths ?? [{ peer: H2, established: true, hbSent: 20, hbReceived: 18 }] },
    endpoints: { attached: [{ netns: 'c-web', path: '/var/run/netns/c-web', key: '4:100', addrs: ['10.32.0.5/12'], mac: '02:00:00:00:00:05', name: 'web' }, { netns: '1234', path: '/proc/1234/ns/net', key: '4:101', addrs: ['10.32.0.6/12'] }] },
    ipam: { state: 'ready', status: { range: '10.32.0.0/12', owners: [
      { peer: H2, nickname: 'h2', addresses: 349526, percent: 33.33, reachable: true },
      { peer: H1, nickname: 'h1', addresses: 349525, percent: 33.33, reachable: true },
      { peer: H3, nickname: 'h3', addresses: 349525, percent: 33.33, reachable: false },
    ] } },
    dns: { containers: { '4:100': 'c-web' }, entries: [
      { hostname: 'web.weave.local.', address: '10.32.0.5', origin: H1, containerId: '4:100', tombstone: false },
      { hostname: 'db.weave.local.', address: '10.40.0.1', origin: H2, containerId: '4:555', tombstone: false },
      { hostname: 'gone.weave.local.', address: '10.40.0.2', origin: H2, containerId: '4:556', tombstone: true },
    ] },
  } as unknown as Report;
}

const links = (): Map<string, LinksEntry> => new Map([[H2, { version: 9, software: '0.1.0 1..1', links: [{ peer: H3, state: 'established', overlay: 'sleeve', encryption: 'encrypted', mtu: 1440, reason: 'kernel lacks ESP' }] }]]);

test('the view: every peer with its address and version, every connection with overlay, encryption, MTU, reason', () => {
  const { view } = buildView(report(), links(), [], 1000);
  assert.deepEqual(view.peers.map((p) => [p.nickname, p.address, p.recordVersion, p.software, p.self]), [
    ['h1', '198.18.0.11:6783', 5, '0.1.0 1..1', true], ['h2', '198.18.0.12:6783', 4, '0.1.0 1..1', false], ['h3', '198.18.0.13:6783', 3, '', false],
  ]);
  const e = new Map(view.edges.map((x) => [`${x.a} ${x.b}`, x]));
  assert.equal(view.edges.length, 3);
  assert.deepEqual({ ...e.get(`${H1} ${H2}`) }, { a: H1, b: H2, established: true, source: 'local', state: 'established', overlay: 'fastdp', encryption: 'trusted', mtu: 1450, info: 'established over fastdp' });
  assert.equal(e.get(`${H1} ${H3}`)!.reason, 'kernel lacks ESP');
  assert.deepEqual([e.get(`${H2} ${H3}`)!.source, e.get(`${H2} ${H3}`)!.overlay, e.get(`${H2} ${H3}`)!.reason], ['gossip', 'sleeve', 'kernel lacks ESP']);
  // without link gossip the far edge is known only from the topology
  const bare = buildView(report(), new Map(), [], 1000).view.edges.find((x) => x.a === H2)!;
  assert.deepEqual([bare.source, bare.overlay, bare.encryption, bare.established], ['topology', null, 'unknown', true]);
  assert.deepEqual(view.failing, [{ address: '198.18.0.99:6783', outbound: true, state: 'failed', info: 'password mismatch', code: 'EPASSWORD', nextRetry: 5 }]);
});

test('traffic: counts from the report, rates over the sample interval; IPAM shares add up to the range; names not inodes', () => {
  const first = buildView(report(), links(), [], 10_000);
  assert.deepEqual(first.view.traffic.map((t) => [t.nickname, t.counts, t.txPackets, t.txPps]), [['h2', 'fastdp heartbeats', 20, null], ['h3', 'sleeve', 100, null]]);
  const later = report({ sleevePaths: [{ peer: H3, txPackets: 300, txBytes: 30_000, rxPackets: 150, rxBytes: 15_000, dropReplay: 2, dropAuth: 1, dropNoRoute: 0, dropTooBig: 0, lastRxAgoMs: 4000 }], fastdpPaths: [{ peer: H2, hbSent: 24, hbReceived: 22, lastRxAgoMs: 900 }] });
  const { view } = buildView(later, links(), [], 12_000, first.sample);
  // a peer silent past SILENT_MS shows on its line before the path is declared dead
  assert.deepEqual(view.edges.map((e) => e.silentMs), [undefined, 4000, undefined]);
  const h3 = view.traffic.find((t) => t.peer === H3)!;
  assert.deepEqual([h3.txPps, h3.rxPps, h3.txBps, h3.rxBps], [100, 50, 10_000, 5000]);
  assert.deepEqual(h3.drops, { replay: 2, auth: 1, noRoute: 0, tooBig: 0 });
  assert.equal(view.traffic.find((t) => t.peer === H2)!.txPps, 2);
  assert.deepEqual(view.unattributedDrops, { noRoute: 7, unknownDest: 1 });
  const ipam = view.ipam!;
  assert.equal(ipam.size, cidrSize('10.32.0.0/12'));
  assert.equal(ipam.owners.reduce((n, o) => n + o.addresses, 0) + ipam.unowned, ipam.size);
  assert.equal(ipam.unowned, 0);
  assert.equal(ipam.owners.find((o) => o.peer === H3)!.hint, 'weave rmpeer h3');
  assert.deepEqual(view.containers.map((c) => c.name), ['c-web', '1234']);
  assert.deepEqual(view.dns.map((d) => [d.hostname, d.container, d.originNickname]), [['web.weave.local.', 'c-web', 'h1'], ['db.weave.local.', '4:555', 'h2']]);
  assert.equal(netnsName('/run/netns/x'), 'x');
  assert.equal(netnsName('x'), 'x');
});

test('link gossip: an ask answered by unicast, merge by version, our own stale entry outbid, malformed refused', () => {
  const clock = new FakeClock(5000);
  const t1 = new LinksTable(H1, clock, silentLogger());
  const t2 = new LinksTable(H2, clock, silentLogger());
  const answers: Uint8Array[] = [];
  const asks: LinksAsk[] = [];
  t1.setChannel({ name: 'links', gossipUnicast: (dst, m) => { assert.equal(dst, H2); answers.push(m); return true; }, gossipBroadcast: () => assert.fail('t1 broadcasts nothing'), gossip: () => {} });
  t2.setChannel({ name: 'links', gossipUnicast: () => assert.fail('t2 answers nothing'), gossipBroadcast: (u) => { asks.push(u as LinksAsk); }, gossip: () => {} });
  t1.setLocal('0.1.0 1..1', localLinks(report().router.connections));
  const v = t1.get(H1)!.version;
  t1.setLocal('0.1.0 1..1', localLinks(report().router.connections)); // unchanged: no new version
  assert.equal(t1.get(H1)!.version, v);
  t2.ask();
  assert.equal(t1.onGossipBroadcast(H2, asks[0].encode()[0]), null);
  assert.equal(answers.length, 1);
  t2.onGossipUnicast(H1, answers[0]);
  assert.deepEqual(t2.get(H1)!.links.map((l) => [l.peer, l.overlay, l.encryption, l.mtu, l.reason]), [[H2, 'fastdp', 'trusted', 1450, undefined], [H3, 'sleeve', 'encrypted', 1440, 'kernel lacks ESP']]);
  assert.equal(t2.mergeUpdate(decodeLinksUpdate(answers[0])), null, 'the same version again is nothing new');
  // a newer entry of t1's own name (before a restart) makes t1 outbid it
  const stale = new LinksUpdate(new Map([[H1, { version: t1.get(H1)!.version + 10, software: 'old', links: [] }]]));
  t1.onGossip(stale.encode()[0]);
  assert.equal(t1.get(H1)!.version, stale.entries.get(H1)!.version + 1);
  assert.equal(t1.get(H1)!.software, '0.1.0 1..1');
  for (const bad of [{ v: 2, e: [] }, { v: 1, e: [[H1, 1, 'x']] }, { v: 1, e: [['zz', 1, 'x', []]] }, { v: 1, e: [[H1, 1, 'x', [[H2, 'established', 'sleeve', 7, 0, '']]]] }, { v: 1, e: [[H1, 1, 'x', [[H2, 'established', 'sleeve', 1, 0, 'r'.repeat(500)]]]] }]) {
    assert.throws(() => decodeLinksUpdate(encodeMsg(bad)), /links/);
  }
  t2.retain(new Set([H2]));
  assert.equal(t2.get(H1), undefined, 'peers that left are forgotten');
});

class Sink implements StreamSink {
  chunks: string[] = [];
  ended = false;
  buffered = 0;
  private closers: Array<() => void> = [];
  write(c: string): boolean { this.chunks.push(c); return true; }
  end(): void { this.ended = true; for (const f of this.closers) f(); }
  onClose(fn: () => void): void { this.closers.push(fn); }
  events(): Array<{ event: string; data: any }> {
    return this.chunks.join('').split('\n\n').filter((b) => b.includes('event:')).map((b) => ({ event: /event: (\S+)/.exec(b)![1], data: JSON.parse(/data: (.*)/.exec(b)![1]) }));
  }
}

test('the stream: a snapshot, then per client only the parts that changed, events as they happen, slow clients dropped', () => {
  const clock = new FakeClock(0);
  let n = 0;
  const view = (): UiView => ({ ...buildView(report(), links(), [], clock.now()).view, peers: n > 0 ? [] : buildView(report(), links(), [], 0).view.peers });
  let builds = 0;
  const s = new UiStreams(() => { builds++; return view(); }, clock, new MemoryLogger(), 1000);
  const a = new Sink();
  s.open(a);
  assert.equal(a.events()[0].event, 'snapshot');
  assert.equal(a.events()[0].data.peers.length, 3);
  clock.advance(1000);
  assert.equal(a.events().length, 1, 'nothing changed: no delta');
  n = 1;
  const b = new Sink();
  s.open(b);
  builds = 0;
  clock.advance(1000);
  assert.equal(builds, 1, 'one view per tick for all clients');
  const d = a.events()[1];
  assert.equal(d.event, 'delta');
  assert.deepEqual(Object.keys(d.data.changes), ['peers']);
  assert.equal(b.events().length, 1, 'b got the new peers in its snapshot already');
  s.event({ seq: 1, time: 5, kind: 'peer-leave', text: 'x' });
  assert.equal(a.events().at(-1)!.event, 'event');
  assert.equal(b.events().at(-1)!.data.text, 'x');
  b.buffered = MAX_STREAM_BUFFER + 1;
  s.event({ seq: 2, time: 6, kind: 'peer-leave', text: 'y' });
  assert.ok(b.ended, 'a client that does not keep up is disconnected');
  assert.equal(s.size, 1);
  a.end();
  assert.equal(s.size, 0);
  builds = 0;
  clock.advance(5000);
  assert.equal(builds, 0, 'no page open: no work');
  const sinks = Array.from({ length: MAX_STREAMS + 1 }, () => new Sink());
  for (const x of sinks) s.open(x);
  assert.equal(sinks.at(-1)!.events()[0].event, 'refused');
  s.close();
  assert.ok(sinks.every((x) => x.ended));
  assert.equal(sseEvent('e', { a: 1 }), 'event: e\ndata: {"a":1}\n\n');
});

test('the API serves a streaming route as text/event-stream on TCP and ends it when the server closes', async () => {
  const api = new ApiServer(silentLogger());
  let sinkClosed = false;
  api.add('GET', '/s', () => undefined, { stream: (_r, sink) => { sink.write('event: hi\ndata: 1\n\n'); sink.onClose(() => { sinkClosed = true; }); } });
  api.add('GET', '/p', () => '<p>x</p>', { contentType: 'text/html; charset=utf-8' });
  const { port } = await api.listen('127.0.0.1', 0);
  try {
    const page = await new Promise<{ type?: string; body: string }>((resolve, reject) => {
      http.get({ host: '127.0.0.1', port, path: '/p' }, (res) => { let b = ''; res.on('data', (c) => { b += c; }); res.on('end', () => resolve({ type: res.headers['content-type'], body: b })); }).on('error', reject);
    });
    assert.deepEqual(page, { type: 'text/html; charset=utf-8', body: '<p>x</p>' });
    const first = await new Promise<{ type?: string; chunk: string; req: http.ClientRequest }>((resolve, reject) => {
      const req = http.get({ host: '127.0.0.1', port, path: '/s' }, (res) => res.once('data', (c) => resolve({ type: res.headers['content-type'], chunk: String(c), req })));
      req.on('error', reject);
    });
    assert.equal(first.type, 'text/event-stream; charset=utf-8');
    assert.equal(first.chunk, 'event: hi\ndata: 1\n\n');
    first.req.destroy();
    await new Promise((r) => setTimeout(r, 100));
    assert.ok(sinkClosed, 'the route hears the client go');
  } finally {
    await api.close();
  }
});
