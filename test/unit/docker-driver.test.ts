// The Docker driver's protocol logic over fakes (docker/driver.ts): pools from the range (given,
// default, outside, overlapping, replayed, released before their network is deleted), addresses
// (allocated, claimed, replayed without taking anything new, an --ip in use refused, released by
// address), networks (another IPAM's pool, unknown options, a shared subnet), Join's routes, state
// across a restart and a damaged state file; and IPAM re-adopting an endpoint held under its own ident.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { EventEmitter } from 'events';
import { MemoryLogger, silentLogger } from '../../lib/log';
import { FakeClock } from '../../lib/clock';
import { UsageError } from '../../lib/errors';
import type { AddressBook, NameBook } from '../../lib/subsystem';
import { formatAddr, parseCidr } from '../../lib/addr';
import { DockerDriver, type DriverDeps } from '../../docker/driver';
import { DockerState, DOCKER_STATE_FILE } from '../../docker/state';
import { driverName, parseDockerFlags } from '../../docker/flags';
import { renderDocker } from '../../docker/views';
import type { DockerJoinRequest, EndpointInfo } from '../../router/endpoints';
import { MemoryStore } from '../../ipam/store';
import { IpamSubsystem, type IpamContext } from '../../ipam/subsystem';
import { parseIpamFlags } from '../../ipam/flags';
import { FakeIpamNet, mulberry32, simName } from '../fakes/ipam-gossip';

/** Addresses by ident, first free in the subnet asked for; claims refused when held. */
class FakeBook implements AddressBook {
  held = new Map<string, string[]>();
  allocate(ident: string, subnet?: string): Promise<string> {
    const sn = parseCidr(subnet ?? '10.32.0.0/12');
    const used = new Set([...this.held.values()].flat());
    for (let a = sn.start + 1; a < sn.end - 1; a++) {
      const x = formatAddr(a);
      if (used.has(x)) continue;
      this.held.set(ident, [...(this.held.get(ident) ?? []), x]);
      return Promise.resolve(`${x}/${sn.prefixLen}`);
    }
    return Promise.reject(new Error('full'));
  }
  claim(ident: string, addr: string): Promise<void> {
    if ([...this.held.entries()].some(([i, l]) => i !== ident && l.includes(addr))) return Promise.reject(new UsageError(`${addr} is in use`));
    this.held.set(ident, [...(this.held.get(ident) ?? []), addr]);
    return Promise.resolve();
  }
  release(ident: string): number {
    const n = this.held.get(ident)?.length ?? 0;
    this.held.delete(ident);
    return n;
  }
  lookup(ident: string): string[] { return [...(this.held.get(ident) ?? [])]; }
  idents(prefix: string): string[] { return [...this.held.keys()].filter((k) => k.startsWith(prefix)); }
  readiness() { return { ready: true, reason: 'ready' }; }
  all(): string[] { return [...this.held.values()].flat().sort(); }
}

class FakeNames implements NameBook {
  recs = new Map<string, string>();
  register(key: string, name: string): string { this.recs.set(key, name); return `${name}.weave.local.`; }
  unregister(key: string): number { return this.recs.delete(key) ? 1 : 0; }
}

function setup(dir = fs.mkdtempSync(path.join(os.tmpdir(), 'weave-docker-')), book = new FakeBook()) {
  const joined = new Map<string, EndpointInfo>();
  const names = new FakeNames();
  const log = new MemoryLogger();
  let n = 0;
  const deps: DriverDeps = {
    addresses: () => book,
    names: () => names,
    range: '10.32.0.0/12',
    defaultSubnet: '10.32.0.0/12',
    overlay: ['10.32.0.0/12'],
    dnsAddr: () => '169.254.53.53',
    endpoints: {
      joinDocker: async (r: DockerJoinRequest) => {
        const e: EndpointInfo = { netns: r.sandboxKey, path: r.sandboxKey, key: `docker:${r.endpointId}`, ifname: 'vethwedp1', hostIfname: 'vethwedk1', mac: r.mac ?? '', addrs: [r.cidr], ident: r.ident, docker: { networkId: r.networkId, endpointId: r.endpointId } };
        joined.set(r.endpointId, e);
        return { ...e, peerIfname: 'vethwedp1' };
      },
      leaveDocker: async (id: string) => { const e = joined.get(id); joined.delete(id); return e; },
    },
    state: new DockerState(dir, log),
    log,
    random: () => String(++n),
  };
  return { driver: new DockerDriver(deps), book, names, joined, dir, log, state: deps.state };
}

const GW = { RequestAddressType: 'com.docker.network.gateway' };
const mac = (i: number) => ({ 'com.docker.network.endpoint.macaddress': `02:42:0a:00:00:0${i}` });
const v4 = (pool: string, space = 'weavelocal') => [{ AddressSpace: space, Pool: pool, Gateway: '' }];

async function refused(p: Promise<unknown>, re: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => e instanceof UsageError && re.test(e.message));
}

test('handshake and capabilities: network + IPAM, local data, global reach, replay with MACs', async () => {
  const { driver } = setup();
  assert.deepEqual(await driver.handle('Plugin.Activate', {}), { Implements: ['NetworkDriver', 'IpamDriver'] });
  assert.deepEqual(await driver.handle('NetworkDriver.GetCapabilities', {}), { Scope: 'local', ConnectivityScope: 'global' });
  assert.deepEqual(await driver.handle('IpamDriver.GetCapabilities', {}), { RequiresMACAddress: true, RequiresRequestReplay: true });
  await assert.rejects(driver.handle('NetworkDriver.AllocateNetwork', {}), /not supported/);
  assert.equal(driver.counters.get('NetworkDriver.AllocateNetwork/unsupported'), 1);
});

test('pools: the default subnet, a given subnet inside the range; outside, overlapping, IPv6 and options refused', async () => {
  const { driver, state } = setup();
  assert.deepEqual(await driver.handle('IpamDriver.RequestPool', { AddressSpace: 'weavelocal', Pool: '', SubPool: '', Options: {}, V6: false }), { PoolID: 'weave:10.32.0.0/12', Pool: '10.32.0.0/12', Data: {} });
  assert.deepEqual(await driver.handle('IpamDriver.RequestPool', { Pool: '10.40.0.0/16' }), { PoolID: 'weave:10.40.0.0/16', Pool: '10.40.0.0/16', Data: {} });
  // the same subnet again (Docker's replay; the same network on another host asks its own router)
  assert.deepEqual(await driver.handle('IpamDriver.RequestPool', { Pool: '10.40.0.0/16' }), { PoolID: 'weave:10.40.0.0/16', Pool: '10.40.0.0/16', Data: {} });
  await refused(driver.handle('IpamDriver.RequestPool', { Pool: '192.168.0.0/24' }), /subnet 192\.168\.0\.0\/24 is outside weave's address range 10\.32\.0\.0\/12 \(--ipalloc-range\): give a subnet inside it/);
  await refused(driver.handle('IpamDriver.RequestPool', { Pool: '10.40.3.0/24' }), /overlaps 10\.40\.0\.0\/16, the subnet of another Docker network on this host/);
  await refused(driver.handle('IpamDriver.RequestPool', { Pool: '10.0.0.0/8' }), /outside/);
  await refused(driver.handle('IpamDriver.RequestPool', { Pool: '10.41.0.1/24' }), /host bits set; did you mean 10\.41\.0\.0\/24/);
  await refused(driver.handle('IpamDriver.RequestPool', { V6: true }), /no IPv6/);
  await refused(driver.handle('IpamDriver.RequestPool', { Options: { foo: 'bar', baz: '1' } }), /unknown IPAM options foo, baz: weave's IPAM takes none/);
  await refused(driver.handle('IpamDriver.RequestPool', { Pool: '10.42.0.0/16', SubPool: '10.43.0.0/24' }), /IP range 10\.43\.0\.0\/24 is not inside subnet 10\.42\.0\.0\/16/);
  assert.deepEqual((await driver.handle('IpamDriver.RequestPool', { Pool: '10.42.0.0/16', SubPool: '10.42.7.0/24' }) as { PoolID: string }).PoolID, 'weave:10.42.0.0/16:10.42.7.0/24');
  assert.deepEqual([...state.pools.keys()].sort(), ['weave:10.32.0.0/12', 'weave:10.40.0.0/16', 'weave:10.42.0.0/16:10.42.7.0/24']);
});

test('addresses: gateway and endpoints allocated; replay takes nothing new; an --ip in use refused; release by address', async () => {
  const { driver, book } = setup();
  const { PoolID } = await driver.handle('IpamDriver.RequestPool', { Pool: '10.40.1.0/24' }) as { PoolID: string };
  const gw = await driver.handle('IpamDriver.RequestAddress', { PoolID, Address: '', Options: GW }) as { Address: string };
  assert.equal(gw.Address, '10.40.1.1/24');
  const e1 = await driver.handle('IpamDriver.RequestAddress', { PoolID, Options: mac(1) }) as { Address: string };
  assert.equal(e1.Address, '10.40.1.2/24');
  const e2 = await driver.handle('IpamDriver.RequestAddress', { PoolID, Address: '10.40.1.50', Options: mac(2) }) as { Address: string };
  assert.equal(e2.Address, '10.40.1.50/24', '--ip is claimed');
  const before = book.all();
  // dockerd restarted: it asks for its gateway and its endpoints' addresses again (no MAC)
  assert.deepEqual(await driver.handle('IpamDriver.RequestAddress', { PoolID, Address: '10.40.1.1', Options: GW }), { Address: '10.40.1.1/24', Data: {} });
  assert.deepEqual(await driver.handle('IpamDriver.RequestAddress', { PoolID, Address: '10.40.1.2', Options: null }), { Address: '10.40.1.2/24', Data: {} });
  // the same endpoint asking again (its MAC) gets its own address
  assert.deepEqual(await driver.handle('IpamDriver.RequestAddress', { PoolID, Address: '10.40.1.50', Options: mac(2) }), { Address: '10.40.1.50/24', Data: {} });
  assert.deepEqual(book.all(), before, 'nothing handed out twice, nothing new taken');
  await refused(driver.handle('IpamDriver.RequestAddress', { PoolID, Address: '10.40.1.2', Options: mac(3) }), /address 10\.40\.1\.2 is already in use by another container on this network: give another --ip, or none/);
  await refused(driver.handle('IpamDriver.RequestAddress', { PoolID, Address: '10.40.2.9', Options: mac(3) }), /not in the network's subnet 10\.40\.1\.0\/24/);
  assert.deepEqual(book.all(), before);
  // an address lost by this router (its IPAM state) and asked for by Docker's replay is claimed again
  book.release(book.idents('docker:').find((i) => book.lookup(i).includes('10.40.1.50'))!);
  assert.deepEqual(await driver.handle('IpamDriver.RequestAddress', { PoolID, Address: '10.40.1.50', Options: null }), { Address: '10.40.1.50/24', Data: {} });
  await driver.handle('IpamDriver.ReleaseAddress', { PoolID, Address: '10.40.1.2' });
  await driver.handle('IpamDriver.ReleaseAddress', { PoolID, Address: '10.40.1.2' }); // again: nothing to do
  assert.deepEqual(book.all(), ['10.40.1.1', '10.40.1.50']);
  // a pool this router does not know (its state file was lost) is known again from its ID
  assert.deepEqual(await driver.handle('IpamDriver.RequestAddress', { PoolID: 'weave:10.44.0.0/16:10.44.9.0/24', Options: mac(4) }), { Address: '10.44.9.1/16', Data: {} });
  await refused(driver.handle('IpamDriver.RequestAddress', { PoolID: 'default:10.1.0.0/16' }), /unknown pool/);
});

test('networks: weave\'s IPAM required, no options, no shared subnet; the pool goes with its network whatever the order', async () => {
  const { driver, state } = setup();
  await refused(driver.handle('NetworkDriver.CreateNetwork', { NetworkID: 'n0', Options: {}, IPv4Data: v4('172.18.0.0/16', 'LocalDefault') }), /another IPAM driver \(address space LocalDefault, subnet 172\.18\.0\.0\/16\).*create it with --ipam-driver weave/);
  await refused(driver.handle('NetworkDriver.CreateNetwork', { NetworkID: 'n0', Options: { 'com.docker.network.generic': { color: 'blue' } }, IPv4Data: v4('10.40.1.0/24') }), /unknown driver option color: the weave driver takes none/);
  await refused(driver.handle('NetworkDriver.CreateNetwork', { NetworkID: 'n0', Options: { 'com.docker.network.enable_ipv6': true }, IPv4Data: v4('10.40.1.0/24') }), /IPv4 only/);
  await refused(driver.handle('NetworkDriver.CreateNetwork', { NetworkID: 'n0', IPv4Data: [] }), /exactly one IPv4 subnet/);
  assert.equal(state.networks.size, 0);

  const { PoolID } = await driver.handle('IpamDriver.RequestPool', { Pool: '10.40.1.0/24' }) as { PoolID: string };
  await driver.handle('NetworkDriver.CreateNetwork', { NetworkID: 'n1', Options: { 'com.docker.network.enable_ipv6': false, 'com.docker.network.generic': {} }, IPv4Data: v4('10.40.1.0/24') });
  // a second network on the same subnet here: refused at CreateNetwork; Docker rolls back with ReleasePool
  await driver.handle('IpamDriver.RequestPool', { Pool: '10.40.1.0/24' });
  await refused(driver.handle('NetworkDriver.CreateNetwork', { NetworkID: 'n2', IPv4Data: v4('10.40.1.0/24') }), /subnet 10\.40\.1\.0\/24 is already the subnet of Docker network n1 on this host: give another --subnet/);
  await driver.handle('IpamDriver.ReleasePool', { PoolID });
  assert.ok(state.pools.has(PoolID), 'the first network keeps its pool');
  // networks without a subnet share the default one
  await driver.handle('NetworkDriver.CreateNetwork', { NetworkID: 'd1', IPv4Data: v4('10.32.0.0/12') });
  await driver.handle('NetworkDriver.CreateNetwork', { NetworkID: 'd2', IPv4Data: v4('10.32.0.0/12') });
  // docker network rm: ReleasePool comes before DeleteNetwork; the pool goes with the network
  await driver.handle('IpamDriver.ReleasePool', { PoolID });
  assert.ok(state.pools.has(PoolID));
  await driver.handle('NetworkDriver.DeleteNetwork', { NetworkID: 'n1' });
  assert.ok(!state.pools.has(PoolID), 'the pool went with its network');
  await driver.handle('NetworkDriver.DeleteNetwork', { NetworkID: 'n1' }); // again: nothing
  // released with no network on it (the order of an IPAM used by another driver): goes at once
  const p2 = (await driver.handle('IpamDriver.RequestPool', { Pool: '10.45.0.0/16' }) as { PoolID: string }).PoolID;
  await driver.handle('IpamDriver.ReleasePool', { PoolID: p2 });
  assert.ok(!state.pools.has(p2));
});

test('endpoints: recorded, joined with the container end and its routes, left; names removed', async () => {
  const { driver, joined, names, book } = setup();
  const { PoolID } = await driver.handle('IpamDriver.RequestPool', { Pool: '10.40.1.0/24' }) as { PoolID: string };
  await driver.handle('NetworkDriver.CreateNetwork', { NetworkID: 'n1', IPv4Data: v4('10.40.1.0/24') });
  const { Address } = await driver.handle('IpamDriver.RequestAddress', { PoolID, Options: mac(1) }) as { Address: string };
  await refused(driver.handle('NetworkDriver.CreateEndpoint', { NetworkID: 'n1', EndpointID: 'e1', Interface: { Address }, Options: { color: 'red' } }), /unknown driver option color for the endpoint/);
  await refused(driver.handle('NetworkDriver.CreateEndpoint', { NetworkID: 'n1', EndpointID: 'e1', Interface: { Address: '' } }), /no IPv4 address/);
  assert.deepEqual(await driver.handle('NetworkDriver.CreateEndpoint', { NetworkID: 'n1', EndpointID: 'e1', Interface: { Address, MacAddress: '02:42:0a:00:00:01' }, Options: { 'com.docker.network.portmap': [] } }), { Interface: {} });
  const j = await driver.handle('NetworkDriver.Join', { NetworkID: 'n1', EndpointID: 'e1', SandboxKey: '/var/run/docker/netns/abc', Options: {} });
  assert.deepEqual(j, {
    InterfaceName: { SrcName: 'vethwedp1', DstPrefix: 'ethwe' },
    StaticRoutes: [{ Destination: '10.32.0.0/12', RouteType: 1 }, { Destination: '169.254.53.53/32', RouteType: 1 }, { Destination: '224.0.0.0/4', RouteType: 1 }],
  });
  const rec = joined.get('e1')!;
  assert.equal(rec.addrs[0], Address);
  assert.equal(book.lookup(rec.ident!)[0], Address.split('/')[0], 'the record names the IPAM ident that holds the address');
  names.register('docker:e1', 'c1');
  assert.deepEqual(await driver.handle('NetworkDriver.Leave', { NetworkID: 'n1', EndpointID: 'e1' }), {});
  assert.equal(joined.size, 0);
  assert.equal(names.recs.size, 0, 'the name went with the endpoint');
  await driver.handle('NetworkDriver.DeleteEndpoint', { NetworkID: 'n1', EndpointID: 'e1' });
  await assert.rejects(driver.handle('NetworkDriver.Join', { NetworkID: 'n1', EndpointID: 'e1' }), /no record of endpoint e1/);
  // a network on the whole range: the container's own subnet route is the overlay already
  assert.deepEqual(driver.routes('10.32.0.9/12').map((r) => r.Destination), ['169.254.53.53/32', '224.0.0.0/4']);
});

test('state: pools, networks and endpoints survive a restart; a damaged file is moved aside and said', async () => {
  const a = setup();
  const { PoolID } = await a.driver.handle('IpamDriver.RequestPool', { Pool: '10.40.1.0/24' }) as { PoolID: string };
  await a.driver.handle('NetworkDriver.CreateNetwork', { NetworkID: 'n1', IPv4Data: [{ AddressSpace: 'weavelocal', Pool: '10.40.1.0/24', Gateway: '10.40.1.1/24' }] });
  await a.driver.handle('NetworkDriver.CreateEndpoint', { NetworkID: 'n1', EndpointID: 'e1', Interface: { Address: '10.40.1.2/24' } });
  const b = setup(a.dir, a.book);
  assert.deepEqual([...b.state.pools.keys()], [PoolID]);
  assert.deepEqual(b.state.networks.get('n1'), { id: 'n1', poolId: PoolID, subnet: '10.40.1.0/24', gateway: '10.40.1.1/24' });
  assert.equal(b.state.endpoints.get('e1')?.cidr, '10.40.1.2/24');
  await b.driver.handle('NetworkDriver.Join', { NetworkID: 'n1', EndpointID: 'e1', SandboxKey: '/x' });

  fs.writeFileSync(path.join(a.dir, DOCKER_STATE_FILE), 'weave-state 1 docker - 5 0000\n{"ver');
  const c = setup(a.dir, a.book);
  assert.equal(c.state.pools.size, 0);
  const [rec] = c.state.recovery();
  assert.equal(rec.file, DOCKER_STATE_FILE);
  assert.match(rec.action, /moved aside to docker\.json\.damaged-\S+; pools and networks are recorded again as Docker asks for them/);
  assert.ok(fs.existsSync(rec.movedTo!));
  assert.ok(c.log.records.some((l) => /docker\.json is damaged/.test(String(l.msg))));
});

test('flags: socket from --docker-socket, DOCKER_HOST or the default; the plugin socket names the driver', () => {
  assert.deepEqual(parseDockerFlags({}, {}), { plugin: true, socket: '/var/run/docker.sock', pluginSocket: '/run/docker/plugins/weave.sock' });
  assert.equal(parseDockerFlags({}, { DOCKER_HOST: 'unix:///run/d.sock' }).socket, '/run/d.sock');
  assert.equal(parseDockerFlags({ dockerSocket: '/x/d.sock' }, { DOCKER_HOST: 'unix:///run/d.sock' }).socket, '/x/d.sock');
  assert.throws(() => parseDockerFlags({}, { DOCKER_HOST: 'tcp://1.2.3.4:2375' }), /DOCKER_HOST "tcp:\/\/1\.2\.3\.4:2375" is not a unix socket/);
  assert.equal(parseDockerFlags({ dockerPlugin: false }, { DOCKER_HOST: 'tcp://x' }).plugin, false, 'DOCKER_HOST does not matter when the plugin is off');
  assert.throws(() => parseDockerFlags({ dockerPluginSocket: 'weave.sock' }, {}), /must be an absolute path/);
  assert.throws(() => parseDockerFlags({ dockerPluginSocket: '/run/docker/plugins/weave' }, {}), /must end in \.sock/);
  assert.throws(() => parseDockerFlags({ dockerSocket: `/${'x'.repeat(120)}` }, {}), /longer than a unix socket path/);
  assert.equal(driverName('/run/docker/plugins/weavemesh.sock'), 'weavemesh');
  assert.match(renderDocker({ docker: { plugin: 'serving', driver: 'weave', pluginSocket: '/p', dockerSocket: '/d', events: 'connected', pools: [], networks: [{ id: 'abcdefabcdef00', poolId: 'p', subnet: '10.40.1.0/24' }], endpoints: [{ network: 'abcdefabcdef00', endpoint: 'e', container: { id: 'x', name: 'web' }, hostIfname: 'vethwedk1', addrs: ['10.40.1.2/24'] }], requests: {}, summary: {} } }), /^ {2}web {2}10\.40\.1\.2\/24 {2}network abcdefabcdef {2}host vethwedk1$/m);
  assert.equal(renderDocker({}), 'Docker: not part of this router\n');
});

test('IPAM re-adopts a live endpoint\'s address under the ident it is held by (no false duplicate after a restart)', async () => {
  const clock = new FakeClock(1_000_000);
  const net = new FakeIpamNet(clock, mulberry32(3), { maxDelayMs: 1 });
  const name = simName(1);
  const store = new MemoryStore();
  const live: Array<{ key: string; ident?: string; addrs: string[]; netns: string; path: string; ifname: string }> = [];
  const make = () => {
    const mesh = Object.assign(new EventEmitter(), {
      newGossip: (_c: string, g: any) => { const r = net.add(name); net.setGossiper(name, g); return r.channel; },
      peerNames: () => [], peerRecords: () => [],
    });
    const endpoints = Object.assign(new EventEmitter(), { list: () => live, exposedAddrs: () => [] });
    const ctx = { cfg: { dataDir: '/nonexistent', peers: [], ipam: parseIpamFlags({ ipallocInit: 'consensus=1' }) }, root: silentLogger(), clock, identity: { name, nickname: 'one' }, mesh, hostCtx: {}, endpoints, announce: () => {} } as unknown as IpamContext;
    return new IpamSubsystem(ctx, { store });
  };
  const settle = async <T>(p: Promise<T>): Promise<T> => {
    let done = false;
    let out: { v?: T; e?: unknown } = {};
    p.then((v) => { done = true; out = { v }; }, (e) => { done = true; out = { e }; });
    for (let t = 0; t < 30_000 && !done; t += 10) { clock.advance(10); await new Promise((r) => setImmediate(r)); }
    if ('e' in out) throw out.e;
    return out.v as T;
  };
  net.start();
  const first = make();
  await first.start();
  const got = await settle(first.addresses.allocate('docker:ep:0242:1', '10.40.1.0/24'));
  await first.stop();
  live.push({ key: 'docker:e1', ident: 'docker:ep:0242:1', addrs: [got], netns: '/x', path: '/x', ifname: 'vethwedp1' });
  const second = make();
  await second.start();
  await settle(second.prime(10_000));
  try {
    const st = second.report().status!;
    assert.deepEqual(st.allocations.map((a) => a.ident), ['docker:ep:0242:1']);
    assert.deepEqual(second.recovery(), [], `no duplicate reported: ${JSON.stringify(second.recovery())}`);
  } finally {
    await second.stop();
  }
});
