// The router process: builds every component from one RouterConfig with explicit inputs, serves the
// HTTP API, and shuts down cleanly on SIGTERM/SIGINT or POST /stop. `weave router` runs this in the
// foreground; `weave launch` runs it detached and waits for the API.
import * as fs from 'fs';
import * as path from 'path';
import { ApiServer } from './http';
import { MetricsWriter } from './metrics';
import { inSubnets, type RouterConfig } from './config';
import type { Report } from './views';
import { UsageError, WeaveError, errMsg } from '../lib/errors';
import { Logger, rootLogger, componentLogger } from '../lib/log';
import { realClock } from '../lib/clock';
import { loadIdentity } from '../mesh/peer';
import { loadCrypto } from '../mesh/crypto';
import { TcpTransport } from '../mesh/tcp-transport';
import { Mesh } from '../mesh/mesh';
import { PROTOCOL_MIN_VERSION, PROTOCOL_MAX_VERSION } from '../mesh/wire';
import { RouteReconciler } from '../host/routes';
import { Endpoints, EndpointInfo } from '../router/endpoints';
import { SUBSYSTEMS } from './subsystems';
import { PrefixTable, PREFIXES_CHANNEL } from '../router/prefixes';
import { createSleeve, Sleeve, RouteSource } from '../router/sleeve';
import { sysctl } from '../host/ip';
import { detectUnderlayAddress } from '../host/underlay';
import { VxlanReconciler, vtepMacFor, vtepIpFor, DEFAULT_VNI, DEFAULT_VXLAN_NAME, VXLAN_OVERHEAD } from '../host/vxlan';
import { FastDp, DeviceHeartbeatIo, NativeHeartbeatIo, DEFAULT_FASTDP_HB_PORT } from '../router/fastdp';
import { OverlaySwitch, FastDpRoutes } from '../router/overlay-switch';
import { loadTunIo } from '../router/native';
import { supportsEsp, XfrmManager, ESP_OVERHEAD } from '../ipsec/xfrm';
import type { PeerName } from '../mesh/peer';
import { formatCidr } from '../ipam/addr';
import type { AttachRequest, DaemonContext, Subsystem } from './subsystem';

const ROUTE_RESYNC_MS = 10_000;
/** FDB/neighbour entries lost to a hand flush break fastdp until healed: check them more often. */
const VXLAN_RESYNC_MS = 5_000;

export const VERSION: string = (() => {
  try {
    return JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')).version;
  } catch {
    return 'unknown';
  }
})();

export function pidFile(dataDir: string): string {
  return path.join(dataDir, 'router.pid');
}

/** The pid in dataDir/router.pid if that process is alive and is a weave router. */
export function runningPid(dataDir: string): number | undefined {
  let pid: number;
  try {
    pid = Number(fs.readFileSync(pidFile(dataDir), 'utf8').trim());
  } catch {
    return undefined;
  }
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  try {
    const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return cmd.includes('weave') && cmd.includes('router') ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** Targets persist across restarts (`--resume`); written atomically. */
export class FileTargetStore {
  constructor(private readonly file: string, private readonly log: Logger) {}
  load(): string[] {
    try {
      const v = JSON.parse(fs.readFileSync(this.file, 'utf8'));
      if (Array.isArray(v?.targets) && v.targets.every((t: unknown) => typeof t === 'string')) return v.targets;
      this.log.warn({ file: this.file }, 'target file malformed; starting with no stored targets');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') this.log.warn({ file: this.file, err: errMsg(e) }, 'cannot read stored targets');
    }
    return [];
  }
  save(targets: string[]): void {
    const tmp = `${this.file}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify({ v: 1, targets }) + '\n');
    fs.renameSync(tmp, this.file);
  }
}

function stringList(body: any, key: string): string[] {
  const v = body?.[key];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string' && x.length > 0)) {
    throw new UsageError(`"${key}" must be a list of non-empty strings`);
  }
  return v;
}

function requiredString(body: any, key: string): string {
  const v = body?.[key];
  if (typeof v !== 'string' || !v) throw new UsageError(`"${key}" must be a non-empty string`);
  return v;
}

export interface RouterHandle {
  report(): Report;
  stop(reason: string): Promise<void>;
  readonly stopped: Promise<void>;
}

export async function runRouter(cfg: RouterConfig, opts: { log?: Logger; installSignalHandlers?: boolean; flags?: Record<string, unknown> } = {}): Promise<RouterHandle> {
  const root = opts.log ?? rootLogger({ level: cfg.logLevel });
  const log = componentLogger(root, 'router');
  fs.mkdirSync(cfg.dataDir, { recursive: true });
  const other = runningPid(cfg.dataDir);
  if (other && other !== process.pid) throw new WeaveError('ERUNNING', `a weave router is already running with data dir ${cfg.dataDir} (pid ${other}); use "weave stop" first`);

  const identity = loadIdentity(cfg.dataDir, { name: cfg.name, nickname: cfg.nickname });
  const crypto = loadCrypto(cfg.crypto ?? 'sodium', componentLogger(root, 'crypto'));
  const clock = realClock;
  const transport = new TcpTransport({
    host: cfg.host,
    port: cfg.port,
    password: cfg.password,
    crypto,
    clock,
    log: componentLogger(root, 'transport'),
    trusts: (ip) => inSubnets(cfg.trustedSubnets, ip),
  });
  const hostCtx = {};
  const routes = new RouteReconciler({ ctx: hostCtx, log: componentLogger(root, 'routes'), clock });
  // Container traffic crosses this host's kernel (veth -> TUN and back), and relays forward it.
  await sysctl(hostCtx, 'net.ipv4.ip_forward', '1');

  // The sleeve needs the mesh's routes and the mesh needs the sleeve as its overlay: the route
  // source is a late-bound view of the mesh, so the sleeve can be built first.
  let meshRef: Mesh | undefined;
  const routeSource: RouteSource = {
    name: identity.name,
    unicastNextHop: (dst: PeerName) => meshRef?.unicastNextHop(dst),
    on: (ev, fn) => meshRef?.on(ev, fn),
    off: (ev, fn) => meshRef?.off(ev, fn),
  };
  const prefixes = new PrefixTable(identity.name, clock, componentLogger(root, 'prefixes'));
  const sleeve: Sleeve = await createSleeve({
    name: identity.name,
    clock,
    log: componentLogger(root, 'sleeve'),
    crypto,
    routes: routeSource,
    prefixes,
    reconciler: routes,
    ctx: hostCtx,
    port: cfg.port,
    bindIp: cfg.host || undefined,
  });

  // Fast datapath: kernel VXLAN whose FDB/neighbour entries and routes the router programs, ESP when
  // encrypted and the kernel can. Optional: when it cannot start, the sleeve carries everything and
  // every connection says why.
  const fastdpLog = componentLogger(root, 'fastdp');
  let fastdp: FastDp | undefined;
  /** MTU of the fastdp path (VXLAN, and ESP when encrypted); containers must fit it too */
  let fastdpMtu: number | undefined;
  let vxlan: VxlanReconciler | undefined;
  let xfrm: XfrmManager | undefined;
  let fastdpDisabled: string | undefined = cfg.fastdp ? undefined : 'disabled by flag';
  if (cfg.fastdp) {
    try {
      const io = loadTunIo(fastdpLog);
      if (!io) throw new WeaveError('ENOADDON', 'the native addon is needed for DF heartbeats');
      const underlay = cfg.host && cfg.host !== '0.0.0.0' && cfg.host !== '::' ? cfg.host : await detectUnderlayAddress(hostCtx);
      const esp = cfg.password ? await supportsEsp(hostCtx, fastdpLog) : { ok: false, reason: 'no password: ESP not needed' };
      const vtep = vtepIpFor(identity.name);
      const mtu = sleeve.underlayMtu - VXLAN_OVERHEAD - (esp.ok ? ESP_OVERHEAD : 0);
      fastdpMtu = mtu;
      vxlan = new VxlanReconciler({
        ctx: hostCtx, log: fastdpLog, clock, routes, lazy: true,
        config: { name: DEFAULT_VXLAN_NAME, vni: DEFAULT_VNI, port: cfg.port + 1, local: underlay, mtu, mac: vtepMacFor(identity.name), address: vtep },
      });
      await vxlan.reconcile(); // the VXLAN port's guard now; the device only while a connection uses fastdp
      vxlan.start(VXLAN_RESYNC_MS);
      if (esp.ok) xfrm = new XfrmManager({ ctx: hostCtx, log: fastdpLog, port: cfg.port + 1 });
      fastdp = new FastDp({
        name: identity.name, clock, log: fastdpLog, host: vxlan,
        io: new DeviceHeartbeatIo(() => new NativeHeartbeatIo(io, vtep, DEFAULT_FASTDP_HB_PORT, sleeve.underlayMtu), vxlan, fastdpLog),
        underlay, mac: vtepMacFor(identity.name), vtep, port: cfg.port + 1, mtu, esp, xfrm,
      });
      fastdpLog.info({ underlay, vtep, mtu, esp: esp.ok ? 'yes' : esp.reason }, 'fast datapath ready');
    } catch (e) {
      fastdpDisabled = `fastdp unavailable: ${errMsg(e)}`;
      fastdpLog.warn({ err: errMsg(e) }, 'fast datapath cannot start; the sleeve carries all traffic');
      await vxlan?.destroy().catch((err: unknown) => fastdpLog.warn({ err: errMsg(err) }, 'removing the half-made VXLAN device failed; the next start replaces it'));
      vxlan?.stop();
      vxlan = undefined;
    }
  }
  const overlaySwitch = new OverlaySwitch({
    overlays: [
      { name: 'fastdp', manager: fastdp ?? null, optional: true, disabledReason: fastdpDisabled },
      { name: 'sleeve', manager: sleeve },
    ],
    clock,
    log: componentLogger(root, 'overlay'),
  });

  const targetStore = new FileTargetStore(path.join(cfg.dataDir, 'targets.json'), log);
  if (!cfg.resume) targetStore.save(cfg.peers);
  const mesh = new Mesh({
    identity,
    transport,
    clock,
    log: componentLogger(root, 'mesh'),
    encryption: cfg.password !== null,
    trustedSubnets: cfg.trustedSubnets.map(formatCidr),
    port: cfg.port,
    connLimit: cfg.connLimit,
    discovery: cfg.discovery,
    overlays: overlaySwitch.advertised(),
    overlayParams: fastdp ? { sleeve: sleeve.overlayParams(), fastdp: fastdp.overlayParams() } : { sleeve: sleeve.overlayParams() },
    overlay: overlaySwitch,
    targetStore,
  });
  meshRef = mesh;
  const fastdpRoutes = fastdp
    ? new FastDpRoutes({ name: identity.name, log: fastdpLog, routes: mesh, prefixes, carrier: overlaySwitch, vtepOf: (p) => fastdp!.remoteVtep(p), sink: routes })
    : undefined;
  if (fastdpRoutes) {
    sleeve.setRouteFilter({ skip: (origin) => fastdpRoutes.sleeveSkips(origin), onChange: (fn) => overlaySwitch.onChange(() => fn()) });
  }
  prefixes.setChannel(mesh.newGossip(PREFIXES_CHANNEL, prefixes));
  // Announcements of peers that left the topology must not keep attracting traffic. Only peers that
  // were reachable and no longer are: a peer whose gossip arrives before its connection is
  // established must not be tombstoned.
  let livePeers = new Set(mesh.peerNames());
  mesh.on('peersChanged', () => {
    const live = new Set(mesh.peerNames());
    for (const p of livePeers) if (!live.has(p)) prefixes.removePeer(p);
    livePeers = live;
  });

  const endpoints = new Endpoints({
    ctx: hostCtx,
    log: componentLogger(root, 'endpoints'),
    clock,
    dataDir: cfg.dataDir,
    routes,
    // one MTU for every overlay a connection may switch between, so a fallback never needs PMTU again
    mtu: () => Math.min(sleeve.tunMtu, fastdp && fastdpMtu ? fastdpMtu : sleeve.tunMtu),
  });

  const startedAt = Date.now();
  const api = new ApiServer(componentLogger(root, 'api'));
  let stopping: Promise<void> | undefined;
  let resolveStopped!: () => void;
  const stopped = new Promise<void>((r) => { resolveStopped = r; });

  const report = (): Report => ({
    version: VERSION,
    router: {
      ...mesh.status(),
      protocolMinVersion: PROTOCOL_MIN_VERSION,
      protocolMaxVersion: PROTOCOL_MAX_VERSION,
      port: cfg.port,
      crypto: crypto.name,
      dataDir: cfg.dataDir,
      pid: process.pid,
      startedAt,
    },
    endpoints: {
      summary: { Attached: endpoints.list().length, Exposed: endpoints.exposedAddrs().length },
      attached: endpoints.list(),
      exposed: endpoints.exposedAddrs(),
      routes: routes.stats(),
    },
    sleeve: sleeveReport(),
    fastdp: {
      summary: fastdp ? { Status: 'on', Encryption: xfrm ? 'kernel ESP' : 'none (kernel lacks ESP or no password)' } : { Status: fastdpDisabled ?? 'off' },
      enabled: !!fastdp,
      reason: fastdpDisabled,
      counters: fastdp?.counters,
      switches: overlaySwitch.switches,
      vxlan: vxlan?.stats(),
    },
    ...Object.fromEntries(subsystems.filter((x) => x.report).map((x) => [x.name, x.report!()])),
  });

  const sleeveReport = () => {
    const c = sleeve.counters;
    return {
      summary: { Mode: sleeve.mode, IO: sleeve.io, Crypto: sleeve.boxes, TunOffload: sleeve.tunOffload, TunMtu: sleeve.tunMtu, UnderlayMtu: sleeve.underlayMtu },
      tunOffload: sleeve.tunOffload,
      tunMtu: sleeve.tunMtu,
      underlayMtu: sleeve.underlayMtu,
      mode: sleeve.mode,
      io: sleeve.io,
      crypto: sleeve.boxes,
      counters: c,
      dropped: {
        replay: c.dropReplay, badMac: c.dropBadMac, malformed: c.dropMalformed, notIpv4: c.dropNotIpv4,
        unknownPeer: c.dropUnknownConn, unknownDest: c.dropUnknownDest, noRoute: c.dropNoRoute, tooBig: c.dropTooBig,
        ttl: c.dropTtl, loop: c.dropLoop, sendError: c.dropSendError, tunFull: c.dropTunFull, badVnet: c.dropBadVnet,
      },
      prefixes: Object.fromEntries(prefixes.all()),
    };
  };

  const metrics = (): string => {
    const m = new MetricsWriter();
    const st = mesh.status();
    m.gauge('weave_peers', 'Number of peers in the topology, including this one.', st.peers.length);
    const byState = new Map<string, number>();
    for (const c of st.connections) byState.set(c.state, (byState.get(c.state) ?? 0) + 1);
    for (const s of ['connecting', 'retrying', 'failed', 'pending', 'established']) {
      m.gauge('weave_connections', 'Connections by state.', byState.get(s) ?? 0, { state: s });
    }
    m.gauge('weave_targets', 'Configured connection targets.', st.targets.length);
    // per connection, what carries its data and why not something better (the text view's columns)
    for (const c of st.connections) {
      if (c.state !== 'established' || !c.peerName) continue;
      m.gauge('weave_connection_overlay', 'One per established connection: the overlay carrying its data, whether the data is encrypted, and why fastdp is not used (empty when it is).', 1, {
        peer: c.peerName, nickname: c.peerNickname ?? '', overlay: c.overlay ?? 'none',
        encryption: c.encrypted ? 'encrypted' : c.trusted ? 'trusted' : 'none', reason: c.overlayReason ?? '',
      });
      if (c.mtu !== undefined) m.gauge('weave_connection_mtu', 'Overlay MTU per established connection.', c.mtu, { peer: c.peerName });
    }
    const tc = transport.counters();
    m.counter('weave_connections_accepted_total', 'Inbound TCP connections accepted.', tc.accepted);
    m.counter('weave_connections_rate_limited_total', 'Inbound connections closed by the accept rate limit.', tc.rateLimited);
    for (const [code, n] of Object.entries(tc.refused)) m.counter('weave_connections_refused_total', 'Connections refused, by reason code.', n, { code });
    m.counter('weave_control_frames_total', 'Control-plane frames.', tc.framesIn, { direction: 'in' });
    m.counter('weave_control_frames_total', 'Control-plane frames.', tc.framesOut, { direction: 'out' });
    m.counter('weave_control_bytes_total', 'Control-plane bytes.', tc.bytesIn, { direction: 'in' });
    m.counter('weave_control_bytes_total', 'Control-plane bytes.', tc.bytesOut, { direction: 'out' });
    m.counter('weave_api_requests_total', 'HTTP API requests.', api.requests);
    const sr = sleeveReport();
    for (const [reason, n] of Object.entries(sr.dropped)) m.counter('weave_sleeve_dropped_total', 'Sleeve datagrams and packets dropped, by reason.', n, { reason });
    for (const [k, v] of Object.entries(sr.counters)) if (!k.startsWith('drop')) m.counter(`weave_sleeve_${k.replace(/[A-Z]/g, (x) => `_${x.toLowerCase()}`)}_total`, `Sleeve counter ${k}.`, v);
    if (vxlan) m.counter('weave_fastdp_vxlan_dropped_total', 'VXLAN datagrams the guard dropped: not from a fastdp peer, or not inside ESP when the peer uses it.', vxlan.stats().guard?.dropped ?? 0);
    for (const x of subsystems) x.metrics?.(m);
    return m.text();
  };

  const stop = (reason: string): Promise<void> => {
    if (!stopping) {
      stopping = (async () => {
        log.info({ reason }, 'router stopping');
        await api.close().catch((e) => log.warn({ err: errMsg(e) }, 'API close failed'));
        for (const x of [...subsystems].reverse()) await x.stop?.().catch((e: unknown) => log.warn({ subsystem: x.name, err: errMsg(e) }, 'subsystem stop failed'));
        await mesh.stop().catch((e) => log.warn({ err: errMsg(e) }, 'mesh stop failed'));
        fastdpRoutes?.close();
        overlaySwitch.close();
        fastdp?.close();
        await sleeve.close().catch((e) => log.warn({ err: errMsg(e) }, 'sleeve close failed'));
        vxlan?.stop();
        await vxlan?.destroy().catch((e) => log.warn({ err: errMsg(e) }, 'vxlan removal failed'));
        await xfrm?.removeAll().catch((e) => log.warn({ err: errMsg(e) }, 'xfrm removal failed'));
        routes.stop();
        try {
          if (runningPid(cfg.dataDir) === process.pid || fs.readFileSync(pidFile(cfg.dataDir), 'utf8').trim() === String(process.pid)) fs.rmSync(pidFile(cfg.dataDir), { force: true });
        } catch { /* no pid file */ }
        log.info('router stopped');
        resolveStopped();
      })();
    }
    return stopping;
  };

  api.add('GET', '/status', () => report());
  api.add('GET', '/report', () => report());
  api.add('GET', '/metrics', () => metrics(), { text: true });
  api.add('POST', '/connect', ({ body }) => {
    const peers = stringList(body, 'peers');
    mesh.connect(peers, { replace: body.replace === true });
    return { targets: mesh.targets() };
  });
  api.add('POST', '/forget', ({ body }) => {
    mesh.forget(stringList(body, 'peers'));
    return { targets: mesh.targets() };
  });
  const resolveAddresses = async (req: AttachRequest, kind: 'attach' | 'expose'): Promise<string[]> => {
    for (const x of subsystems) {
      const r = await x.resolveAddresses?.(req, kind);
      if (r) return r;
    }
    if (req.cidrs.length === 0) throw new UsageError('no address given: give ADDR/LEN (automatic allocation needs IPAM)');
    return req.cidrs;
  };
  api.add('POST', '/attach', async ({ body }) => {
    const req: AttachRequest = {
      netns: requiredString(body, 'netns'),
      cidrs: body.cidrs === undefined ? [] : stringList(body, 'cidrs'),
      name: typeof body.name === 'string' && body.name ? body.name : undefined,
    };
    const cidrs = await resolveAddresses(req, 'attach');
    const r = await endpoints.attach(req.netns, cidrs, { name: req.name });
    for (const x of subsystems) await x.afterAttach?.(req, r);
    return { ...r, addresses: r.addrs };
  });
  api.add('POST', '/detach', async ({ body }) => {
    const netns = requiredString(body, 'netns');
    const addrs = body.addrs === undefined || (Array.isArray(body.addrs) && body.addrs.length === 0) ? undefined : stringList(body, 'addrs');
    const before: EndpointInfo | undefined = endpoints.list().find((e) => e.netns === netns);
    const r = await endpoints.detach(netns, addrs);
    for (const x of subsystems) await x.afterDetach?.(netns, r, before);
    return r;
  });
  api.add('GET', '/ps', () => ({
    endpoints: endpoints.list().map((e) => ({ netns: e.netns, ifname: e.ifname, mac: e.mac, addresses: e.addrs, name: e.name })),
  }));
  api.add('POST', '/expose', async ({ body }) => {
    const cidrs = await resolveAddresses({ netns: '', cidrs: body.cidrs === undefined ? [] : stringList(body, 'cidrs') }, 'expose');
    const r = await endpoints.expose(cidrs, { masquerade: body.masquerade === true });
    return { ...r, addresses: r.exposed.map((e) => e.cidr) };
  });
  api.add('POST', '/hide', async ({ body }) => {
    const cidrs = body.cidrs === undefined || (Array.isArray(body.cidrs) && body.cidrs.length === 0) ? undefined : stringList(body, 'cidrs');
    return endpoints.hide(cidrs);
  });
  api.add('POST', '/reset', async () => {
    // Leave nothing behind in the kernel: detach every container (the hooks free their addresses and
    // names), hide exposed addresses; then the subsystems leave the mesh (IPAM hands its space over).
    for (const ep of endpoints.list()) {
      try {
        const r = await endpoints.detach(ep.netns);
        for (const x of subsystems) await x.afterDetach?.(ep.netns, r, ep);
      } catch (e) {
        log.warn({ netns: ep.netns, err: errMsg(e) }, 'reset: detach failed; continuing');
      }
    }
    await endpoints.hide().catch((e) => log.warn({ err: errMsg(e) }, 'reset: hide failed; continuing'));
    for (const x of subsystems) {
      try {
        await x.reset?.();
      } catch (e) {
        log.warn({ subsystem: x.name, err: errMsg(e) }, 'reset step failed; continuing');
      }
    }
    setImmediate(() => void stop('reset requested through the API'));
    return { stopping: true };
  });
  api.add('POST', '/stop', () => {
    setImmediate(() => void stop('stop requested through the API'));
    return { stopping: true };
  });

  const announced = new Map<string, string[]>();
  const ctx: DaemonContext = {
    cfg, flags: opts.flags ?? {}, root, clock, identity, mesh, api, hostCtx, routes, endpoints,
    announce(owner, prefixes) {
      announced.set(owner, [...prefixes]);
      onServedChanged();
    },
  };
  const onServedChanged = (): void => {
    prefixes.setLocal(servedPrefixes());
  };
  const servedPrefixes = (): string[] => [...new Set([...endpoints.servedPrefixes(), ...[...announced.values()].flat()])].sort();
  endpoints.on('changed', onServedChanged);
  const subsystems: Subsystem[] = [];
  for (const mod of SUBSYSTEMS) if (mod.create) subsystems.push(await mod.create(ctx));

  const restored = await endpoints.restore();
  if (restored.kept || restored.dropped) log.info(restored, 'endpoints restored from the data dir');
  routes.start(ROUTE_RESYNC_MS);
  prefixes.setLocal(servedPrefixes());
  await mesh.start();
  for (const x of subsystems) await x.start?.();
  if (!cfg.resume && cfg.peers.length) mesh.connect(cfg.peers);
  try {
    await api.listen(cfg.httpAddr.host, cfg.httpAddr.port);
  } catch (e) {
    await mesh.stop();
    throw new WeaveError('EAPI', `cannot listen for the HTTP API on ${cfg.httpAddr.host}:${cfg.httpAddr.port}: ${errMsg(e)}`);
  }
  fs.writeFileSync(pidFile(cfg.dataDir), `${process.pid}\n`);
  log.info({ name: identity.name, nickname: identity.nickname, port: cfg.port, http: `${cfg.httpAddr.host}:${cfg.httpAddr.port}`, encryption: cfg.password !== null, crypto: crypto.name }, 'router ready');

  if (opts.installSignalHandlers !== false) {
    for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => void stop(`signal ${sig}`));
  }
  return { report, stop, stopped };
}
