// Fuzz targets: the HTTP API (request target parsing, routing, body reading and JSON, every mutating
// route's body validation, through ApiServer's own request path), the CNI request (the shim's body:
// environment and stdin) and the Docker plugin's request bodies. The parts behind the routes are
// fakes that check what reaches them: a route that lets an unvalidated value through (or throws an
// untyped error, answered 500) is a crash.
import * as net from 'net';
import * as path from 'path';
import { Readable } from 'stream';
import { ApiServer } from '../../api/http';
import { silentLogger } from '../../lib/log';
import { realClock } from '../../lib/clock';
import { UsageError, WeaveError } from '../../lib/errors';
import type { AddressBook, ApiRoute, NameBook } from '../../lib/subsystem';
import { parseAddr, parseCidr, tryParseHostPort } from '../../lib/addr';
import { ipamRoutes } from '../../ipam/http';
import type { IpamSubsystem } from '../../ipam/subsystem';
import { dnsRoutes } from '../../dns/http';
import type { DnsSubsystem } from '../../dns/subsystem';
import { DnsStore } from '../../dns/records';
import { endpointRoutes } from '../../api/parts/endpoints';
import { meshRoutes } from '../../api/parts/control';
import type { Mesh } from '../../mesh/mesh';
import type { Endpoints } from '../../router/endpoints';
import { CniHandler, parseCniRequest, type CniDeps, type PodAttach } from '../../cni/handler';
import type { PodRecord } from '../../cni/check';
import { cniRoutes } from '../../cni/http';
import { DockerDriver, type DriverDeps } from '../../docker/driver';
import { DockerState } from '../../docker/state';
import type { DockerJoinRequest, EndpointInfo } from '../../router/endpoints';
import { int, jsonText, perturb, pick, value, type Rng } from './mutate';
import type { Target } from './engine';
import { tmpDir } from './tmp';

/** A fake part's complaint: an unvalidated value got through the route (a crash, not a refusal). */
function leak(what: string, v: unknown): never {
  throw new Error(`unvalidated ${what} reached the part: ${typeof v === 'string' ? JSON.stringify(v.slice(0, 80)) : typeof v}`);
}
const wantStr = (what: string, v: unknown): string => (typeof v === 'string' && v.length > 0 && v.length <= 1024 && !/[\u0000-\u001f]/.test(v) ? v : leak(what, v));
const wantAddr = (what: string, v: unknown): string => {
  const s = wantStr(what, v);
  try {
    parseAddr(s.includes('/') ? s.slice(0, s.indexOf('/')) : s);
  } catch {
    leak(what, v);
  }
  return s;
};
const wantCidr = (what: string, v: unknown): string => {
  const s = wantStr(what, v);
  try {
    parseCidr(s, { allowHostBits: true });
  } catch {
    leak(what, v);
  }
  return s;
};

class Book implements AddressBook {
  private held = new Map<string, string[]>();
  private n = 0;
  allocate(ident: string, subnet?: string): Promise<string> {
    wantStr('ident', ident);
    if (subnet !== undefined) wantCidr('subnet', subnet);
    const a = `10.32.${(this.n >> 8) & 0xff}.${(this.n++ & 0xff) + 1}/12`;
    if (this.held.size > 1000) this.held.clear();
    this.held.set(ident, [a.slice(0, a.indexOf('/'))]);
    return Promise.resolve(a);
  }
  claim(ident: string, addr: string): Promise<void> {
    wantStr('ident', ident);
    wantAddr('addr', addr);
    return Promise.resolve();
  }
  release(ident: string): number { return this.held.delete(wantStr('ident', ident)) ? 1 : 0; }
  lookup(ident: string): string[] { return this.held.get(ident) ?? []; }
  idents(prefix: string): string[] { return [...this.held.keys()].filter((k) => k.startsWith(prefix)); }
  readiness() { return { ready: true, reason: 'ready' }; }
}

function apiRig(): ApiServer {
  const api = new ApiServer(silentLogger());
  const book = new Book();
  const ipam = {
    report: () => ({}),
    allocateCidr: (ident: string, subnet?: string) => book.allocate(ident, subnet),
    claim: (ident: string, addr: string) => book.claim(ident, addr),
    free: (ident: string, addr?: string) => { wantStr('ident', ident); if (addr !== undefined) wantAddr('addr', addr); return 0; },
    transferFrom: async (peer: string) => { wantStr('peer', peer); return 0; },
    prime: async (ms: number) => { if (!Number.isFinite(ms) || ms < 0 || ms > 300_000) leak('timeoutMs', ms); },
    state: () => 'ready',
  } as unknown as IpamSubsystem;
  const store = new DnsStore({ self: '02:00:00:00:00:01', clock: realClock, log: silentLogger() });
  const dns = { domain: 'weave.local.', store, report: () => ({}) } as unknown as DnsSubsystem;
  const targets: string[] = [];
  const mesh = {
    connect: (peers: string[]) => {
      for (const p of peers) if (!tryParseHostPort(wantStr('peer', p), 6783)) leak('peer', p);
      targets.splice(0, targets.length, ...peers.slice(0, 10));
    },
    forget: (peers: string[]) => { for (const p of peers) wantStr('peer', p); },
    targets: () => targets,
  } as unknown as Mesh;
  const endpoints = {
    attach: async (netns: string, cidrs: string[], o: { name?: string }) => {
      wantStr('netns', netns);
      for (const c of cidrs) wantCidr('cidr', c);
      if (o.name !== undefined) wantStr('name', o.name);
      return { netns, addrs: cidrs };
    },
    detach: async (netns: string, addrs?: string[]) => { wantStr('netns', netns); for (const a of addrs ?? []) wantAddr('addr', a); return { removed: 0 }; },
    list: () => [],
    expose: async (cidrs: string[]) => { for (const c of cidrs) wantCidr('cidr', c); return { exposed: cidrs.map((cidr) => ({ cidr })) }; },
    hide: (cidrs?: string[]) => { for (const c of cidrs ?? []) wantAddr('cidr', c); return { hidden: [] }; },
  } as unknown as Endpoints;
  const routes: ApiRoute[] = [
    ...ipamRoutes(ipam), ...dnsRoutes(dns), ...meshRoutes(mesh), ...endpointRoutes(endpoints, []),
    ...cniRoutes(new CniHandler(cniDeps()), () => {}),
    { method: 'GET', path: '/status', handler: () => ({ ok: true }) },
  ];
  for (const r of routes) api.add(r.method, r.path, r.handler, { text: r.text, contentType: r.contentType });
  return api;
}

interface Reply { status: number; body: string }

/** One request through ApiServer's own path (handle: target, route, body, JSON, handler, error mapping). */
function request(api: ApiServer, method: string, url: string, body: Buffer): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = Readable.from(body.length ? [body] : []) as Readable & Record<string, unknown>;
    Object.assign(req, { method, url, headers: { 'content-length': String(body.length) }, complete: true, socket: { setTimeout() {} } });
    const rep: Reply = { status: 0, body: '' };
    const res = {
      headersSent: false,
      shouldKeepAlive: true,
      writeHead(s: number) { rep.status = s; this.headersSent = true; return this; },
      write(c: string) { rep.body += c; return true; },
      end(c?: string) { if (c) rep.body += c; resolve(rep); },
      destroy() { resolve(rep); },
      flushHeaders() {},
      once() {},
    };
    const timer = setTimeout(() => reject(new Error(`no answer to ${method} ${url.slice(0, 60)} within 5 s`)), 5000);
    (api as unknown as { handle(q: unknown, s: unknown, trusted: boolean): Promise<void> }).handle(req, res, true)
      .catch((e: unknown) => { (api as unknown as { internalError(q: unknown, s: unknown, e: unknown): void }).internalError(req, res, e); })
      .finally(() => clearTimeout(timer));
  });
}

const HTTP_SEEDS: Array<[string, string, unknown]> = [
  ['POST', '/ipam/allocate', { ident: 'c1', subnet: '10.32.1.0/24' }], ['POST', '/ipam/claim', { ident: 'c1', addr: '10.32.0.5' }],
  ['POST', '/ipam/free', { ident: 'c1', addr: '10.32.0.5' }], ['POST', '/rmpeer', { peer: '02:00:00:00:00:02' }], ['POST', '/prime', { timeoutMs: 100 }],
  ['POST', '/dns/add', { name: 'web', addrs: ['10.32.0.5/12'] }], ['POST', '/dns/remove', { name: 'web', addrs: ['10.32.0.5'] }],
  ['GET', '/dns/lookup?name=web', undefined], ['POST', '/connect', { peers: ['10.0.0.2', '10.0.0.3:6783'], replace: true }],
  ['POST', '/forget', { peers: ['10.0.0.2'] }], ['POST', '/attach', { netns: '/var/run/netns/a', cidrs: ['10.32.0.5/12'], name: 'web', container: { id: 'abc', name: 'web' } }],
  ['POST', '/detach', { netns: '/var/run/netns/a', addrs: ['10.32.0.5/12'] }], ['POST', '/expose', { cidrs: ['10.32.0.1/12'], masquerade: true }],
  ['POST', '/hide', { cidrs: ['10.32.0.1/12'] }], ['GET', '/status', undefined],
  ['POST', '/cni', { env: { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'pod1', CNI_NETNS: '/var/run/netns/a', CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin' }, stdin: '{"cniVersion":"1.0.0","name":"weave","type":"weave-net"}' }],
];

function httpText(method: string, url: string, body: unknown): Buffer {
  return Buffer.from(`${method} ${url}\n${body === undefined ? '' : jsonText(body)}`, 'utf8');
}

let api: ApiServer | undefined;

const httpApi: Target = {
  name: 'http-api',
  seeds: () => HTTP_SEEDS.map(([m, u, b]) => httpText(m, u, b)),
  structured(r: Rng) {
    const [m, u, b] = pick(r, HTTP_SEEDS);
    const url = r() < 0.8 ? u : pick(r, ['//[', '/%', '/../x', '/ipam/claim?x=%zz', `/${'a'.repeat(int(r, 5000))}`, '*', 'http://x/y', '/ps#f', '/status?']);
    return httpText(r() < 0.9 ? m : pick(r, ['PUT', 'DELETE', 'get', '', 'POST\u0000']), url, r() < 0.8 ? perturb(r, b ?? {}) : value(r, 4));
  },
  async run(input) {
    api ??= apiRig();
    const b = Buffer.from(input.buffer, input.byteOffset, input.length);
    const nl = b.indexOf(0x0a);
    const line = (nl < 0 ? b : b.subarray(0, nl)).toString('latin1');
    const sp = line.indexOf(' ');
    const method = sp < 0 ? line : line.slice(0, sp);
    const url = sp < 0 ? '/' : line.slice(sp + 1);
    const rep = await request(api, method, url, nl < 0 ? Buffer.alloc(0) : b.subarray(nl + 1));
    if (rep.status === 0 || rep.status >= 500) throw new Error(`answered ${rep.status}: ${rep.body.slice(0, 300)}`);
  },
  expected: (e) => e instanceof UsageError, // (request() never rejects with it: any rejection is a crash)
};

// ---- CNI ----------------------------------------------------------------------------------------

class CniPods {
  readonly overlayRange = '10.32.0.0/12';
  recs: PodRecord[] = [];
  list(): PodRecord[] { return this.recs.slice(); }
  findPod(network: string, id: string, ifname: string): PodRecord | undefined {
    return this.recs.find((r) => r.pod?.network === network && r.pod.containerId === id && r.ifname === ifname);
  }
  async attachPod(req: PodAttach): Promise<PodRecord> {
    wantStr('netns', req.netns);
    wantStr('ifname', req.ifname);
    wantCidr('cidr', req.cidr);
    const rec: PodRecord = { netns: req.netns, key: '4:100', ifname: req.ifname, hostIfname: 'vethwepl1', mac: '02:00:00:00:00:02', hostMac: '02:00:00:00:00:01', addrs: [req.cidr], ident: req.ident, pod: req.pod };
    if (this.recs.length > 100) this.recs = [];
    this.recs.push(rec);
    return rec;
  }
  async detachPod(network: string, id: string, ifname: string) {
    const rec = this.findPod(network, id, ifname);
    this.recs = this.recs.filter((r) => r !== rec);
    return { removed: rec, linkRemoved: !!rec };
  }
}

function cniDeps(): CniDeps {
  const book = new Book();
  return {
    pods: new CniPods(),
    addresses: () => book,
    netnsKey: (p) => { if (!p.startsWith('/var/run/netns/')) throw new UsageError(`NETNS ${p}: no namespace file at ${p}`); return '4:100'; },
    inspect: async (rec) => ({
      pod: { mac: rec.mac, up: true, mtu: 1376, addrs: [...rec.addrs] },
      podRoutes: [{ dst: 'default', gateway: '169.254.1.1', dev: rec.ifname }, { dst: '10.32.0.0/12', dev: rec.ifname }],
      gatewayNeigh: { lladdr: rec.hostMac, permanent: true },
      host: { up: true },
      hostRoutes: [rec.addrs[0].split('/')[0]],
    }),
    masquerade: async () => {},
    log: silentLogger(),
  };
}

const CNI_ENV = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'pod1', CNI_NETNS: '/var/run/netns/a', CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin', CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web-1' };
const CNI_CONFS = [
  { cniVersion: '1.0.0', name: 'weave', type: 'weave-net' },
  { cniVersion: '0.3.1', name: 'weave', type: 'weave-net', subnet: '10.32.1.0/24', dns: { nameservers: ['10.32.0.1'], search: ['a'] } },
  { cniVersion: '1.0.0', name: 'weave', type: 'weave-net', prevResult: { cniVersion: '1.0.0', interfaces: [{ name: 'eth0' }], ips: [{ address: '10.32.0.2/12', interface: 0 }] } },
  { cniVersion: '1.1.0', name: 'weave', type: 'weave-net', 'cni.dev/valid-attachments': [{ containerID: 'pod1', ifname: 'eth0' }] },
];
const COMMANDS = ['ADD', 'DEL', 'CHECK', 'VERSION', 'GC', 'STATUS'];

let cni: CniHandler | undefined;

const cniStdin: Target = {
  name: 'cni-request',
  seeds: () => CNI_CONFS.flatMap((c) => COMMANDS.map((cmd) => Buffer.from(JSON.stringify({ env: { ...CNI_ENV, CNI_COMMAND: cmd }, stdin: JSON.stringify(c) })))),
  structured(r) {
    const env = perturb(r, { ...CNI_ENV, CNI_COMMAND: pick(r, COMMANDS) });
    const stdin = r() < 0.8 ? jsonText(perturb(r, pick(r, CNI_CONFS))) : jsonText(value(r, 4));
    return Buffer.from(jsonText(r() < 0.9 ? { env, stdin } : value(r, 3)));
  },
  async run(input) {
    cni ??= new CniHandler(cniDeps());
    let body: unknown;
    try {
      body = JSON.parse(Buffer.from(input).toString('utf8'));
    } catch {
      return; // the API refuses a body that is not JSON before the route (http-api covers that)
    }
    // the route: parseCniRequest refuses with UsageError, the handler answers everything else in its reply
    const { env, stdin } = parseCniRequest(body);
    const rep = await cni.handle(env, stdin);
    if (typeof rep.exit !== 'number' || typeof rep.out !== 'string') throw new Error('CNI reply without exit/out');
    if (rep.exit !== 0) JSON.parse(rep.out); // an error reply is the spec's JSON error object
  },
  expected: (e) => e instanceof UsageError,
};

// ---- Docker plugin ------------------------------------------------------------------------------

const DOCKER_METHODS: Array<[string, unknown]> = [
  ['IpamDriver.RequestPool', { AddressSpace: 'weavelocal', Pool: '', SubPool: '', Options: {}, V6: false }],
  ['IpamDriver.RequestPool', { Pool: '10.40.0.0/16' }],
  ['IpamDriver.RequestAddress', { PoolID: 'weave:10.32.0.0/12', Address: '', Options: { 'com.docker.network.endpoint.macaddress': '02:42:0a:00:00:01' } }],
  ['IpamDriver.RequestAddress', { PoolID: 'weave:10.32.0.0/12', Address: '10.32.0.9', Options: { RequestAddressType: 'com.docker.network.gateway' } }],
  ['IpamDriver.ReleaseAddress', { PoolID: 'weave:10.32.0.0/12', Address: '10.32.0.9' }],
  ['IpamDriver.ReleasePool', { PoolID: 'weave:10.40.0.0/16' }],
  ['NetworkDriver.CreateNetwork', { NetworkID: 'n1', Options: {}, IPv4Data: [{ AddressSpace: 'weavelocal', Pool: '10.32.0.0/12', Gateway: '10.32.0.1/12' }], IPv6Data: [] }],
  ['NetworkDriver.CreateEndpoint', { NetworkID: 'n1', EndpointID: 'e1', Interface: { Address: '10.32.0.5/12', MacAddress: '02:42:0a:20:00:05' }, Options: {} }],
  ['NetworkDriver.Join', { NetworkID: 'n1', EndpointID: 'e1', SandboxKey: '/var/run/docker/netns/abc', Options: {} }],
  ['NetworkDriver.Leave', { NetworkID: 'n1', EndpointID: 'e1' }],
  ['NetworkDriver.DeleteEndpoint', { NetworkID: 'n1', EndpointID: 'e1' }],
  ['NetworkDriver.DeleteNetwork', { NetworkID: 'n1' }],
  ['Plugin.Activate', {}], ['NetworkDriver.GetCapabilities', {}],
];

class Names implements NameBook {
  register(key: string, name: string): string { wantStr('key', key); return `${wantStr('name', name)}.weave.local.`; }
  unregister(key: string): number { wantStr('key', key); return 0; }
}

function dockerDriver(): DockerDriver {
  const book = new Book();
  const joined = new Map<string, EndpointInfo>();
  const deps: DriverDeps = {
    addresses: () => book,
    names: () => new Names(),
    range: '10.32.0.0/12',
    defaultSubnet: '10.32.0.0/12',
    overlay: ['10.32.0.0/12'],
    dnsAddr: () => '169.254.53.53',
    endpoints: {
      joinDocker: async (r: DockerJoinRequest) => {
        wantStr('sandboxKey', r.sandboxKey);
        wantCidr('cidr', r.cidr);
        const e: EndpointInfo = { netns: r.sandboxKey, path: r.sandboxKey, key: `docker:${r.endpointId}`, ifname: 'vethwedp1', hostIfname: 'vethwedk1', mac: r.mac ?? '', addrs: [r.cidr], ident: r.ident, docker: { networkId: r.networkId, endpointId: r.endpointId } };
        if (joined.size > 100) joined.clear();
        joined.set(r.endpointId, e);
        return { ...e, peerIfname: 'vethwedp1' };
      },
      leaveDocker: async (id: string) => { const e = joined.get(id); joined.delete(id); return e; },
    },
    state: new DockerState(tmpDir('docker-state'), silentLogger()),
    log: silentLogger(),
  };
  return new DockerDriver(deps);
}

let docker: { d: DockerDriver; calls: number } | undefined;

const dockerPlugin: Target = {
  name: 'docker-plugin',
  seeds: () => DOCKER_METHODS.map(([m, b]) => Buffer.from(`${m}\n${JSON.stringify(b)}`)),
  structured(r) {
    const [m, b] = pick(r, DOCKER_METHODS);
    return Buffer.from(`${r() < 0.95 ? m : pick(r, ['Nope', '', 'toString', '__proto__', 'constructor'])}\n${jsonText(r() < 0.85 ? perturb(r, b) : value(r, 4))}`);
  },
  async run(input) {
    // a fresh driver (and state) now and then: state from earlier cases must not grow without bound
    if (!docker || docker.calls++ > 2000) docker = { d: dockerDriver(), calls: 0 };
    const b = Buffer.from(input.buffer, input.byteOffset, input.length);
    const nl = b.indexOf(0x0a);
    const method = (nl < 0 ? b : b.subarray(0, nl)).toString('utf8');
    let body: unknown;
    try {
      body = JSON.parse(nl < 0 ? '{}' : b.subarray(nl + 1).toString('utf8'));
    } catch {
      return; // docker/server.ts answers a body that is not JSON before the driver
    }
    // docker/server.ts answers 400 for a body that is not an object, before the driver
    if (body === null || typeof body !== 'object' || Array.isArray(body)) return;
    await docker.d.handle(method, body as Record<string, unknown>);
  },
  // UsageError is 400, a WeaveError (ENOTFOUND, ENOIPAM, ...) an answer with its message; anything else a bug
  expected: (e) => e instanceof WeaveError,
};

// ---- the HTTP API on its socket -----------------------------------------------------------------

let wire: { api: ApiServer; file: string } | undefined;

async function wireRig(): Promise<{ api: ApiServer; file: string }> {
  const api = apiRig();
  const file = path.join(tmpDir('api'), 'weave.sock');
  await api.listenUnix(file);
  return { api, file };
}

/** Writes raw bytes to the API socket, half-closes, and collects what comes back until the close. */
function exchange(file: string, bytes: Uint8Array): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(file);
    const got: Buffer[] = [];
    const timer = setTimeout(() => { s.destroy(); reject(new Error('no answer and no close within 5 s')); }, 5000);
    s.on('data', (d: Buffer) => got.push(d));
    s.on('error', () => {}); // a reset after the answer (the server closes a connection it refused) is fine
    s.on('close', () => { clearTimeout(timer); resolve(Buffer.concat(got).toString('latin1')); });
    s.end(bytes);
  });
}

const RAW_SEEDS = (): Buffer[] => [
  ...HTTP_SEEDS.slice(0, 8).map(([m, u, b]) => {
    const body = b === undefined ? '' : JSON.stringify(b);
    return Buffer.from(`${m} ${u} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  }),
  Buffer.from('GET //[ HTTP/1.1\r\nHost: x\r\n\r\n'),
  Buffer.from('POST /expose HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nnull'),
  Buffer.from('POST /dns/add HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n3\r\n 1}\r\n0\r\n\r\n'),
  Buffer.from('GET /status HTTP/1.1\r\nHost: x\r\n\r\nGET /ipam HTTP/1.1\r\nHost: x\r\n\r\n'),
];

const httpWire: Target = {
  name: 'http-wire',
  seeds: RAW_SEEDS,
  async run(input) {
    wire ??= await wireRig();
    const text = await exchange(wire.file, input);
    // every answer on the connection: 5xx only for what is not the client's fault (none here)
    for (const m of text.matchAll(/HTTP\/1\.1 (\d{3})/g)) {
      if (m[1].startsWith('5')) throw new Error(`answered ${m[1]}: ${text.slice(0, 300)}`);
    }
  },
  large(r) {
    const body = Buffer.alloc(200_000 + int(r, 2_000_000), 0x61);
    return Buffer.concat([Buffer.from(`POST /ipam/claim HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\n\r\n`), body]);
  },
  expected: () => false,
  async close() {
    const w = wire;
    wire = undefined;
    await w?.api.close();
  },
};

export const API_TARGETS: Target[] = [httpApi, httpWire, cniStdin, dockerPlugin];
