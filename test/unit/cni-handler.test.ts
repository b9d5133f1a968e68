// The CNI commands without kernels (cni/handler.ts over fakes of the endpoints, IPAM's address book
// and the kernel's view): every command, every error code, a failed ADD leaving nothing, idempotent
// ADD, DEL of the unknown, CHECK naming what drifted, STATUS before and after IPAM is ready, GC with a
// valid-attachments list.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { UsageError, WeaveError } from '../../lib/errors';
import { MemoryLogger } from '../../lib/log';
import type { AddressBook } from '../../lib/subsystem';
import { HostError } from '../../host/ip';
import type { PodLinkState } from '../../host/pod-link';
import { CniHandler, cniIdent, parseCniIdent, parseCniRequest, type CniDeps, type PodAttach } from '../../cni/handler';
import type { PodRecord } from '../../cni/check';
import { CNI_ERR } from '../../cni/spec';

class FakeBook implements AddressBook {
  held = new Map<string, string>();
  next = 2;
  ready = true;
  fail?: Error;
  allocate(ident: string): Promise<string> {
    if (this.fail) return Promise.reject(this.fail);
    if (!this.held.has(ident)) this.held.set(ident, `10.32.0.${this.next++}`);
    return Promise.resolve(`${this.held.get(ident)}/12`);
  }
  claim(ident: string, addr: string): Promise<void> {
    this.held.set(ident, addr);
    return Promise.resolve();
  }
  release(ident: string): number { return this.held.delete(ident) ? 1 : 0; }
  lookup(ident: string): string[] { return this.held.has(ident) ? [this.held.get(ident)!] : []; }
  idents(prefix: string): string[] { return [...this.held.keys()].filter((k) => k.startsWith(prefix)); }
  readiness() { return this.ready ? { ready: true, reason: 'ready' } : { ready: false, reason: 'waiting for consensus (1 of 2 needed peers agree, 1 known)' }; }
}

/** A namespace exists when it is in this map (path -> key). */
class FakePods {
  readonly overlayRange = '10.32.0.0/12';
  recs: PodRecord[] = [];
  ns = new Map<string, string>([['/var/run/netns/a', '4:100'], ['/var/run/netns/b', '4:200']]);
  attachFail?: Error;
  attaches = 0;
  list(): PodRecord[] { return this.recs.map((r) => ({ ...r })); }
  findPod(network: string, id: string, ifname: string): PodRecord | undefined {
    return this.recs.find((r) => r.pod?.network === network && r.pod.containerId === id && r.ifname === ifname);
  }
  async attachPod(req: PodAttach): Promise<PodRecord> {
    this.attaches++;
    if (this.attachFail) throw this.attachFail;
    const rec: PodRecord = { netns: req.netns, key: this.ns.get(req.netns)!, ifname: req.ifname, hostIfname: `vethwepl${this.attaches}`, mac: '02:00:00:00:00:02', hostMac: '02:00:00:00:00:01', addrs: [req.cidr], ident: req.ident, pod: req.pod };
    this.recs.push(rec);
    return rec;
  }
  async detachPod(network: string, id: string, ifname: string) {
    const rec = this.findPod(network, id, ifname);
    this.recs = this.recs.filter((r) => r !== rec);
    return { removed: rec, linkRemoved: !!rec };
  }
}

function setup() {
  const pods = new FakePods();
  const book = new FakeBook();
  const log = new MemoryLogger();
  let masq = 0;
  let masqFail: Error | undefined;
  let state: PodLinkState | undefined;
  const deps: CniDeps = {
    pods,
    addresses: () => book,
    netnsKey: (p) => {
      const k = pods.ns.get(p);
      if (!k) throw new UsageError(`NETNS ${p}: no namespace file at ${p}`);
      return k;
    },
    inspect: async (rec) => state ?? goodState(rec),
    masquerade: async () => {
      if (masqFail) throw masqFail;
      masq++;
    },
    log,
  };
  const h = new CniHandler(deps);
  return {
    h, pods, book, log,
    masqCount: () => masq,
    setMasqFail: (e?: Error) => { masqFail = e; },
    setState: (s?: PodLinkState) => { state = s; },
  };
}

function goodState(rec: PodRecord): PodLinkState {
  return {
    pod: { mac: rec.mac, up: true, mtu: 1376, addrs: [...rec.addrs] },
    podRoutes: [{ dst: 'default', gateway: '169.254.1.1', dev: rec.ifname }, { dst: '10.32.0.0/12', dev: rec.ifname }],
    gatewayNeigh: { lladdr: rec.hostMac, permanent: true },
    host: { up: true },
    hostRoutes: [rec.addrs[0].split('/')[0]],
  };
}

const CONF = (o: Record<string, unknown> = {}) => JSON.stringify({ cniVersion: '1.0.0', name: 'weave', type: 'weave-net', ...o });
const ENV = (o: Record<string, string> = {}) => ({ CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'pod1', CNI_NETNS: '/var/run/netns/a', CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin', ...o });

function err(r: { exit: number; out: string }): { code: number; msg: string; cniVersion: string; details?: string } {
  assert.equal(r.exit, 1, r.out);
  return JSON.parse(r.out);
}

test('ADD: an address from IPAM under (network, container, interface), the result in the version asked for, the pod\'s names recorded', async () => {
  const s = setup();
  const r = await s.h.handle(ENV({ CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=pod1' }), CONF({ cniVersion: '0.3.1' }));
  assert.equal(r.exit, 0, r.out);
  const res = JSON.parse(r.out);
  assert.equal(res.cniVersion, '0.3.1');
  assert.deepEqual(res.ips, [{ version: '4', address: '10.32.0.2/12', gateway: '169.254.1.1', interface: 1 }]);
  assert.equal(res.interfaces[1].name, 'eth0');
  assert.equal(res.interfaces[1].sandbox, '/var/run/netns/a');
  assert.deepEqual(res.routes[0], { dst: '0.0.0.0/0', gw: '169.254.1.1' });
  assert.deepEqual([...s.book.held.keys()], [cniIdent('weave', 'pod1', 'eth0')]);
  assert.deepEqual(s.pods.recs[0].pod, { network: 'weave', containerId: 'pod1', namespace: 'team-a', name: 'web-1', infraContainerId: 'pod1' });
  assert.equal(s.masqCount(), 1);
});

test('ADD is idempotent for the same container and interface in the same namespace; another namespace is a conflict', async () => {
  const s = setup();
  const a = await s.h.handle(ENV(), CONF());
  const b = await s.h.handle(ENV(), CONF());
  assert.equal(b.exit, 0);
  assert.deepEqual(JSON.parse(b.out), JSON.parse(a.out));
  assert.equal(s.pods.attaches, 1);
  assert.equal(s.book.held.size, 1);
  const c = err(await s.h.handle(ENV({ CNI_NETNS: '/var/run/netns/b' }), CONF()));
  assert.equal(c.code, CNI_ERR.CONFLICT);
  assert.match(c.msg, /already attached in another namespace/);
});

test('a failed ADD leaves nothing: the address goes back when the attach fails; nothing is allocated when the namespace is missing or masquerade fails', async () => {
  const s = setup();
  s.pods.attachFail = new HostError('host: link add ...: RTNETLINK answers: File exists: the pod\'s namespace already has an interface named eth0', { command: 'ip -batch -', stderr: 'File exists', exists: true });
  const e = err(await s.h.handle(ENV(), CONF()));
  assert.equal(e.code, CNI_ERR.CONFLICT);
  assert.equal(s.book.held.size, 0, 'the allocation was released');
  assert.equal(s.pods.recs.length, 0);

  s.pods.attachFail = new Error('kernel said no');
  const e2 = err(await s.h.handle(ENV(), CONF()));
  assert.equal(e2.code, CNI_ERR.INTERNAL);
  assert.equal(s.book.held.size, 0);
  assert.ok(s.log.find((r) => r.level === 'error' && r.msg === 'cni request failed'), 'unexpected failures are logged');

  s.pods.attachFail = undefined;
  const before = s.pods.attaches;
  const e3 = err(await s.h.handle(ENV({ CNI_NETNS: '/var/run/netns/gone' }), CONF()));
  assert.equal(e3.code, CNI_ERR.INVALID_ENV);
  assert.match(e3.msg, /CNI_NETNS \/var\/run\/netns\/gone/);
  s.setMasqFail(new HostError('nft -f -: no', { command: 'nft -f -', stderr: 'no' }));
  assert.equal(err(await s.h.handle(ENV(), CONF())).code, CNI_ERR.INTERNAL);
  assert.equal(s.pods.attaches, before);
  assert.equal(s.book.held.size, 0);
});

test('ADD: an exhausted range is code 100, an IPAM that waits too long code 11 (try again later)', async () => {
  const s = setup();
  s.book.fail = new WeaveError('ENOSPACE', 'no free address in 10.32.0.0/30: every address is in use and no other peer owns space there');
  const e = err(await s.h.handle(ENV(), CONF()));
  assert.equal(e.code, CNI_ERR.NO_ADDRESS);
  assert.match(e.msg, /no free address/);
  s.book.fail = new WeaveError('ETIMEDOUT', 'no address for cni:weave:pod1:eth0 within 20s: waiting for consensus');
  const t = err(await s.h.handle(ENV(), CONF()));
  assert.equal(t.code, CNI_ERR.TRY_AGAIN);
  assert.match(t.msg, /try again later/);
  assert.equal(s.pods.attaches, 0);
});

test('bad input: spec error objects in the configuration\'s version (or the latest when unreadable)', async () => {
  const s = setup();
  const dec = err(await s.h.handle(ENV(), '{not json'));
  assert.deepEqual([dec.cniVersion, dec.code, dec.msg], ['1.1.0', 6, 'failed to decode the network configuration on stdin']);
  assert.ok(dec.details, 'details say what the parser found');
  assert.equal(err(await s.h.handle(ENV(), CONF({ cniVersion: '0.2.0' }))).code, CNI_ERR.INCOMPATIBLE_VERSION);
  const nodetails = err(await s.h.handle(ENV(), CONF({ type: '' })));
  assert.equal(nodetails.code, CNI_ERR.INVALID_CONFIG);
  assert.equal(nodetails.details, 'ADD, container pod1, interface eth0', 'an error without details names the call');
  const missing = err(await s.h.handle(ENV({ CNI_IFNAME: '' }), CONF({ cniVersion: '0.4.0' })));
  assert.equal(missing.code, CNI_ERR.INVALID_ENV);
  assert.equal(missing.cniVersion, '0.4.0');
  assert.equal(err(await s.h.handle(ENV({ CNI_ARGS: 'K8S_POD_NAME=x;Foo=1' }), CONF())).code, CNI_ERR.INVALID_ENV);
  assert.equal(err(await s.h.handle(ENV({ CNI_COMMAND: 'FROB' }), CONF())).code, CNI_ERR.INVALID_ENV);
  assert.ok((s.h.counters.get('unknown/error') ?? 0) >= 1);
});

test('DEL: frees the attachment and the address; unknown containers and an empty CNI_NETNS succeed', async () => {
  const s = setup();
  await s.h.handle(ENV(), CONF());
  const d = await s.h.handle(ENV({ CNI_COMMAND: 'DEL', CNI_NETNS: '' }), CONF());
  assert.deepEqual(d, { exit: 0, out: '', command: 'DEL' });
  assert.equal(s.pods.recs.length, 0);
  assert.equal(s.book.held.size, 0);
  // again (containerd's second DEL), and for a container never seen
  assert.equal((await s.h.handle(ENV({ CNI_COMMAND: 'DEL', CNI_NETNS: '' }), CONF())).exit, 0);
  assert.equal((await s.h.handle(ENV({ CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'never' }), CONF())).exit, 0);
  // an allocation without an attachment (a crash between the two) is freed by DEL too
  s.book.held.set(cniIdent('weave', 'crashed', 'eth0'), '10.32.0.9');
  await s.h.handle(ENV({ CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'crashed' }), CONF());
  assert.equal(s.book.held.size, 0);
});

test('CHECK: needs prevResult, passes when nothing changed, names every drift', async () => {
  const s = setup();
  const add = JSON.parse((await s.h.handle(ENV(), CONF())).out);
  const chk = (o: Record<string, string> = {}, prev: unknown = add) => s.h.handle(ENV({ CNI_COMMAND: 'CHECK', ...o }), CONF({ prevResult: prev }));
  assert.equal(err(await s.h.handle(ENV({ CNI_COMMAND: 'CHECK' }), CONF())).code, CNI_ERR.INVALID_CONFIG);
  assert.deepEqual(await chk(), { exit: 0, out: '', command: 'CHECK' });
  assert.equal(err(await s.h.handle(ENV({ CNI_COMMAND: 'CHECK' }), CONF({ cniVersion: '0.3.1', prevResult: add }))).code, CNI_ERR.INCOMPATIBLE_VERSION);
  const rec = s.pods.recs[0];
  s.setState({ ...goodState(rec), podRoutes: [{ dst: '10.32.0.0/12', dev: 'eth0' }], hostRoutes: [] });
  const d = err(await chk());
  assert.equal(d.code, CNI_ERR.DRIFT);
  assert.match(d.msg, /the default route is missing/);
  assert.match(d.msg, /host route 10\.32\.0\.2\/32 dev vethwepl1 is missing/);
  s.setState({ ...goodState(rec), pod: undefined });
  assert.match(err(await chk()).msg, /interface eth0 is missing/);
  s.setState({ ...goodState(rec), pod: { mac: rec.mac, up: false, mtu: 1376, addrs: ['10.32.0.99/12'] }, gatewayNeigh: { lladdr: '02:99:99:99:99:99', permanent: false } });
  const m = err(await chk()).msg;
  assert.match(m, /interface eth0 is down/);
  assert.match(m, /has 10\.32\.0\.99\/12, not 10\.32\.0\.2\/12/);
  assert.match(m, /gateway 169\.254\.1\.1 resolves to 02:99:99:99:99:99 \(not permanent\)/);
  s.setState(undefined);
  s.book.held.clear();
  assert.match(err(await chk()).msg, /IPAM holds no address/);
  s.book.held.set(cniIdent('weave', 'pod1', 'eth0'), '10.32.0.2');
  assert.match(err(await chk({}, { ...add, ips: [{ address: '10.32.0.7/12', interface: 1 }] })).msg, /prevResult has 10\.32\.0\.7\/12/);
  assert.match(err(await chk({ CNI_NETNS: '/var/run/netns/b' })).msg, /not the namespace the attachment was made in/);
  assert.equal(err(await chk({ CNI_CONTAINERID: 'other' })).code, CNI_ERR.DRIFT);
});

test('STATUS: code 50 with the reason until IPAM can allocate, then success', async () => {
  const s = setup();
  s.book.ready = false;
  const e = err(await s.h.handle({ CNI_COMMAND: 'STATUS', CNI_PATH: '/x' }, CONF({ cniVersion: '1.1.0' })));
  assert.equal(e.code, CNI_ERR.NOT_AVAILABLE);
  assert.match(e.msg, /waiting for consensus/);
  s.book.ready = true;
  assert.deepEqual(await s.h.handle({ CNI_COMMAND: 'STATUS', CNI_PATH: '/x' }, CONF({ cniVersion: '1.1.0' })), { exit: 0, out: '', command: 'STATUS' });
});

test('GC: every attachment and address of this network not in cni.dev/valid-attachments goes; others stay', async () => {
  const s = setup();
  s.pods.ns.set('/var/run/netns/c', '4:300');
  await s.h.handle(ENV({ CNI_CONTAINERID: 'keep' }), CONF());
  await s.h.handle(ENV({ CNI_CONTAINERID: 'drop', CNI_NETNS: '/var/run/netns/b' }), CONF());
  await s.h.handle(ENV({ CNI_CONTAINERID: 'othernet', CNI_NETNS: '/var/run/netns/c' }), CONF({ name: 'other' }));
  s.book.held.set(cniIdent('weave', 'orphan', 'eth0'), '10.32.0.50');
  s.book.held.set('4:999', '10.32.0.51'); // a weave attach's: not CNI's to collect
  const r = await s.h.handle({ CNI_COMMAND: 'GC', CNI_PATH: '/x' }, CONF({ cniVersion: '1.1.0', 'cni.dev/valid-attachments': [{ containerID: 'keep', ifname: 'eth0' }] }));
  assert.equal(r.exit, 0, r.out);
  assert.deepEqual(s.pods.recs.map((x) => x.pod?.containerId).sort(), ['keep', 'othernet']);
  assert.deepEqual([...s.book.held.keys()].sort(), ['4:999', cniIdent('other', 'othernet', 'eth0'), cniIdent('weave', 'keep', 'eth0')].sort());
  assert.ok(s.log.find((x) => x.msg === 'cni gc: removed attachments not in the valid list' && x.pods === 1 && x.addrs === 2));
});

test('VERSION, the counters, the ident codec and the /cni request body', async () => {
  const s = setup();
  const v = await s.h.handle({ CNI_COMMAND: 'VERSION' }, '');
  assert.deepEqual(JSON.parse(v.out), { cniVersion: '1.1.0', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] });
  assert.equal(s.h.counters.get('VERSION/ok'), 1);
  assert.deepEqual(parseCniIdent(cniIdent('weave', 'abc', 'eth0')), { network: 'weave', containerId: 'abc', ifname: 'eth0' });
  assert.equal(parseCniIdent('4:100'), undefined);
  assert.deepEqual(parseCniRequest({ env: { CNI_COMMAND: 'ADD' }, stdin: '{}' }), { env: { CNI_COMMAND: 'ADD' }, stdin: '{}' });
  for (const b of [null, {}, { env: [], stdin: '' }, { env: { PATH: '/bin' }, stdin: '' }, { env: { CNI_X: 1 }, stdin: '' }, { env: {}, stdin: 5 }]) {
    assert.throws(() => parseCniRequest(b), UsageError, JSON.stringify(b));
  }
});
