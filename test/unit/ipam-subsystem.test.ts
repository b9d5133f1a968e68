// The router's IPAM glue without kernels: flag parsing, quorum, range -> CIDR announcements, route
// overlap, seed nicknames, status views, and the subsystem over fake mesh/API/endpoints with two
// allocators on the in-memory gossip net (expose claims and the "ask the live owner" path).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'events';
import { FakeClock } from '../../lib/clock';
import { silentLogger } from '../../lib/log';
import { WeaveError } from '../../lib/errors';
import { MemoryStore } from '../../ipam/store';
import { parseCidr } from '../../ipam/addr';
import { Registry } from 'prom-client';
import { IpamSubsystem, rangesToCidrs, resolveSeeds, type IpamContext } from '../../ipam/subsystem';
import { defaultQuorum, parseIpamFlags as ipamFlagsFrom, parseIpallocInit } from '../../ipam/flags';
import { overlappingRoutes } from '../../ipam/host-routes';
import { renderIpam } from '../../ipam/views';
import { FakeIpamNet, mulberry32, simName } from '../fakes/ipam-gossip';

test('--ipalloc-init grammar', () => {
  assert.deepEqual(parseIpallocInit('consensus'), { mode: 'consensus' });
  assert.deepEqual(parseIpallocInit('consensus=3'), { mode: 'consensus', quorum: 3 });
  assert.deepEqual(parseIpallocInit('observer'), { mode: 'observer' });
  assert.deepEqual(parseIpallocInit('seed=02:00:00:00:00:0A,host2'), { mode: 'seed', peers: ['02:00:00:00:00:0a', 'host2'] });
  for (const bad of ['consensus=0', 'consensus=x', 'seed=', 'seed=a,,b', 'paxos', '']) {
    assert.throws(() => parseIpallocInit(bad), /--ipalloc-init/, bad);
  }
});

test('flags: defaults, explicit range, default subnet inside the range, timeout', () => {
  const d = ipamFlagsFrom({});
  assert.equal(d.range, '10.32.0.0/12');
  assert.equal(d.rangeExplicit, false);
  assert.deepEqual(d.init, { mode: 'consensus' });
  assert.equal(d.waitMs, 20_000);
  const e = ipamFlagsFrom({ ipallocRange: '10.40.0.0/16', ipallocDefaultSubnet: '10.40.1.0/24', ipallocInit: 'observer', ipallocTimeout: '2.5' });
  assert.equal(e.rangeExplicit, true);
  assert.equal(e.defaultSubnet, '10.40.1.0/24');
  assert.equal(e.waitMs, 2500);
  assert.throws(() => ipamFlagsFrom({ ipallocRange: '10.40.0.0/16', ipallocDefaultSubnet: '10.41.0.0/24' }), /not inside/);
  assert.throws(() => ipamFlagsFrom({ ipallocRange: '10.40.0.1/16' }), /host bits/);
  assert.throws(() => ipamFlagsFrom({ ipallocTimeout: '-1' }), /--ipalloc-timeout/);
});

test('default quorum: a majority of the peers given plus this one', () => {
  assert.equal(defaultQuorum(0), 1);
  assert.equal(defaultQuorum(1), 2);
  assert.equal(defaultQuorum(2), 2);
  assert.equal(defaultQuorum(3), 3);
  assert.equal(defaultQuorum(4), 3);
});

test('rangesToCidrs: fewest aligned blocks, exact cover', () => {
  const r = (a: string, b: string) => ({ start: parseCidr(`${a}/32`).start, end: parseCidr(`${b}/32`).start });
  assert.deepEqual(rangesToCidrs([parseCidr('10.32.0.0/12')]), ['10.32.0.0/12']);
  assert.deepEqual(rangesToCidrs([r('10.32.0.0', '10.32.0.3')]), ['10.32.0.0/31', '10.32.0.2/32']);
  assert.deepEqual(rangesToCidrs([r('10.32.0.1', '10.32.1.0')]), ['10.32.0.1/32', '10.32.0.2/31', '10.32.0.4/30', '10.32.0.8/29', '10.32.0.16/28', '10.32.0.32/27', '10.32.0.64/26', '10.32.0.128/25']);
  assert.deepEqual(rangesToCidrs([{ start: 0, end: 2 ** 32 }]), ['0.0.0.0/0']);
  // a third of a /12 (what a 3-peer seed gives) is covered exactly
  const third = { start: parseCidr('10.32.0.0/12').start, end: parseCidr('10.32.0.0/12').start + Math.floor(2 ** 20 / 3) };
  const cidrs = rangesToCidrs([third]);
  const total = cidrs.reduce((n, c) => n + 2 ** (32 - Number(c.split('/')[1])), 0);
  assert.equal(total, third.end - third.start);
  assert.ok(cidrs.length <= 40);
});

test('overlappingRoutes ignores default, weave\'s own routes and devices, and other families', () => {
  const range = parseCidr('10.32.0.0/12');
  const hits = overlappingRoutes(range, [
    { dst: 'default', dev: 'eth0' },
    { dst: '10.32.5.0/24', dev: 'eth1', protocol: 'kernel', type: 'unicast' },
    { dst: '10.32.0.7', dev: 'vethwe123456789' },
    { dst: '10.32.0.8', dev: 'eth2', protocol: 180 },
    { dst: '10.0.0.0/8', dev: 'eth3' },
    { dst: '10.64.0.0/16', dev: 'eth4' },
    { dst: '10.32.0.0/12', dev: 'weave-tun' },
    { dst: 'fe80::/64', dev: 'eth0' },
    { dst: '10.33.0.0/16', dev: 'lo', type: 'local' },
  ]);
  assert.deepEqual(hits, ['10.32.5.0/24 dev eth1', '10.0.0.0/8 dev eth3']);
});

test('resolveSeeds: names pass, nicknames resolve when known, ambiguity refused', () => {
  const self = { name: '02:00:00:00:00:01', nickname: 'me' };
  const known = [{ name: '02:00:00:00:00:02', nickname: 'b' }, { name: '02:00:00:00:00:03', nickname: 'twin' }, { name: '02:00:00:00:00:04', nickname: 'twin' }];
  assert.deepEqual(resolveSeeds(['me', 'b', '02:00:00:00:00:09'], self, known), { peers: ['02:00:00:00:00:01', '02:00:00:00:00:02', '02:00:00:00:00:09'], missing: [] });
  assert.deepEqual(resolveSeeds(['c'], self, known), { peers: [], missing: ['c'] });
  assert.throws(() => resolveSeeds(['twin'], self, known), /ambiguous/);
});

// ---------------------------------------------------------------- the subsystem over fakes

/** The subsystem's API routes, called the way the HTTP server calls them. */
class FakeApi {
  sub: IpamSubsystem | undefined;
  call(method: string, p: string, body: any = {}): Promise<any> {
    const r = this.sub!.apiRoutes().find((x) => x.method === method && x.path === p)!;
    return Promise.resolve(r.handler({ body, query: new URLSearchParams(), path: p }));
  }
}

function fakeCtx(name: string, nickname: string, net: FakeIpamNet, flags: Record<string, unknown>) {
  const mesh = new EventEmitter() as EventEmitter & Record<string, unknown>;
  const api = new FakeApi();
  const endpoints = Object.assign(new EventEmitter(), { exposed: [] as Array<{ cidr: string; masquerade: boolean }>, list: () => [], exposedAddrs(this: any) { return this.exposed; } });
  const announced: string[][] = [];
  mesh.newGossip = (_c: string, g: any) => {
    const r = net.add(name);
    net.setGossiper(name, g);
    return r.channel;
  };
  mesh.peerNames = () => net.reachableFrom(name);
  mesh.peerRecords = () => [];
  const ctx = {
    cfg: { dataDir: '/nonexistent', peers: ['x'], ipam: ipamFlagsFrom(flags) }, root: silentLogger(), clock: net.clock, identity: { name, nickname, uid: '1' },
    mesh, hostCtx: {}, endpoints, announce: (_o: string, p: string[]) => announced.push(p),
  } as unknown as IpamContext;
  return { ctx, api, endpoints, announced };
}

async function settle<T>(clock: FakeClock, p: Promise<T>, maxMs = 60_000): Promise<T> {
  let done = false;
  let out: { v?: T; e?: unknown } = {};
  p.then((v) => { done = true; out = { v }; }, (e) => { done = true; out = { e }; });
  for (let t = 0; t < maxMs && !done; t += 10) {
    clock.advance(10);
    await new Promise((r) => setImmediate(r));
  }
  assert.ok(done, 'operation settled');
  if ('e' in out) throw out.e;
  return out.v as T;
}

test('subsystem over fakes: expose allocates and announces; claims in a live owner\'s space are asked for, held ones refused; timeouts carry the reason', async () => {
  const clock = new FakeClock(1_000_000);
  const net = new FakeIpamNet(clock, mulberry32(7), { maxDelayMs: 5 });
  const [n1, n2] = [simName(1), simName(2)];
  const a = fakeCtx(n1, 'one', net, { ipallocInit: 'consensus=2', ipallocTimeout: '3' });
  const b = fakeCtx(n2, 'two', net, { ipallocInit: 'consensus=2', ipallocTimeout: '3' });
  const sa = new IpamSubsystem(a.ctx, { store: new MemoryStore() });
  const sb = new IpamSubsystem(b.ctx, { store: new MemoryStore() });
  a.api.sub = sa;
  b.api.sub = sb;
  net.start();
  await sa.start();
  await sb.start();
  try {
    const [x] = (await settle(clock, sa.resolveAddresses({ netns: "", cidrs: [] }, "expose")))!;
    assert.match(x, /^10\.(3[2-9]|4[0-7])\.\d+\.\d+\/12$/);
    assert.ok(a.announced.length > 0 && a.announced.at(-1)!.length > 0, 'owned ranges announced');
    const rep = sa.report();
    assert.equal(rep.status!.allocated, 1);
    assert.equal(rep.summary.Status, 'ready');
    assert.match(renderIpam({ ipam: rep }), /\(one\)\s+\d+ IPs \(50\.0% of total\) \(1 active\)/);
    // exposed, then hidden (endpoints 'changed' without the address): it goes back
    a.endpoints.exposed = [{ cidr: x, masquerade: false }];
    a.endpoints.emit('changed');
    assert.equal(sa.report().status!.allocated, 1);
    a.endpoints.exposed = [];
    a.endpoints.emit('changed');
    assert.equal(sa.report().status!.allocated, 0);

    // an address in b's space: a asks b, which gives it (free there)
    const bRange = sb.report().status!.owners.find((o) => o.peer === n2)!;
    assert.ok(bRange.addresses > 0);
    const inB = b.announced.at(-1)![0].split('/')[0].replace(/\.0$/, '.9');
    const got = await settle(clock, sa.resolveAddresses({ netns: '', cidrs: [`${inB}/12`] }, 'expose'));
    assert.deepEqual(got, [`${inB}/12`]);
    assert.deepEqual(sa.report().status!.allocations.find((z) => z.ident === '_weave_expose')!.addrs, [inB]);
    // b holds one of its own addresses: a's claim is refused, with the owner named
    const held = inB.replace(/\.9$/, '.10');
    await settle(clock, sb.claim('ctr', held));
    await assert.rejects(settle(clock, sa.claim('other', held)), (e: unknown) => e instanceof WeaveError && e.code === 'EOWNED' && /\(two\)/.test(e.message) && /did not give it up/.test(e.message));

    // the API: allocate with prefix length, free, rmpeer of a live peer refused
    const r = await settle(clock, a.api.call('POST', '/ipam/allocate', { ident: 'api1', subnet: '10.32.0.0/16' }));
    assert.match(r.addr, /^10\.32\.\d+\.\d+\/16$/);
    assert.deepEqual(await a.api.call('POST', '/ipam/free', { ident: 'api1' }), { ident: 'api1', freed: 1 });
    await assert.rejects(settle(clock, a.api.call('POST', '/rmpeer', { peer: 'two' })), /reachable/);
    const reg = new Registry();
    sa.metrics(reg);
    const text = await reg.metrics();
    assert.match(text, /weave_ipam_ring_seeded 1/);
    assert.match(text, /weave_ipam_allocator_events_total\{event="allocations"\} \d+/);

    // b goes away: a's allocation in a subnet only b owns waits, then fails with the reason
    net.kill(n2);
    const onlyB = b.announced.at(-1)!.find((c) => Number(c.split('/')[1]) <= 24)!;
    await assert.rejects(settle(clock, sa.allocate('late', onlyB)), (e: unknown) => e instanceof WeaveError && e.code === 'ETIMEDOUT' && /within 3s: .*unreachable \(rmpeer/.test(e.message));
    assert.match(renderIpam({ ipam: sa.report() }), /\(two\).* - unreachable!/);
  } finally {
    await sa.stop();
    await sb.stop();
  }
});
