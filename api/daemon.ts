// The router process, composed in one page: each step builds one named part from the typed config
// (api/parts/, ipam/, dns/) and the Assembly stops every part built so far, in reverse order, when
// a later step fails; the same order is the shutdown (SIGTERM/SIGINT, POST /stop). `weave router`
// runs this in the foreground; `weave launch` runs it detached and waits for the API.
import { realClock, type Clock } from '../lib/clock';
import { rootLogger, componentLogger, type Logger } from '../lib/log';
import type { Part, Subsystem, SubsystemModule } from '../lib/subsystem';
import type { Mesh } from '../mesh/mesh';
import type { Identity } from '../mesh/peer';
import type { HostCtx } from '../host/ip';
import type { Endpoints } from '../router/endpoints';
import { Assembly } from './assembly';
import type { RouterConfig } from './config';
import type { Report } from './views';
import { SUBSYSTEMS } from './subsystems';
import { buildMesh, buildWire, openDataDir, pidFilePart } from './parts/control';
import { buildSleeve, hostState, startRouteSync } from './parts/sleeve';
import { trimMalloc } from './parts/memory';
import { watchLag } from './parts/lag';
import { buildOverlays, wireForwarding } from './parts/fastdp';
import { buildEndpoints, restoreEndpoints } from './parts/endpoints';
import { VERSION, buildReport, serveApi } from './parts/api';
import { PROTOCOL_MAX_VERSION, PROTOCOL_MIN_VERSION } from '../mesh/wire';
import { passwordRotation } from './password';
import { buildEvents } from './parts/events';
import { buildUi } from '../ui/part';

export { VERSION } from './parts/api';
export { pidFile, runningPid } from '../lib/pid-file';

export interface RouterHandle {
  report(): Report;
  stop(reason: string): Promise<void>;
  readonly stopped: Promise<void>;
}

/** What subsystems are built from: each module's context type must accept it (checked here). */
export interface DaemonContext {
  cfg: RouterConfig;
  root: Logger;
  clock: Clock;
  identity: Identity;
  mesh: Mesh;
  hostCtx: HostCtx;
  endpoints: Endpoints;
  announce(owner: string, prefixes: string[]): void;
  /** the subsystems built so far, in start order (one finds another's capability, e.g. IPAM's addresses) */
  subsystems: readonly Subsystem[];
}

/** Each subsystem module must accept the daemon's context: a mismatch fails to compile here. */
const MODULES: readonly SubsystemModule<unknown, DaemonContext>[] = SUBSYSTEMS;

/** Every step's builder, in one object so a test can replace them (start-up failure at each step). */
export const STEPS = {
  openDataDir, hostState, watchLag, buildWire, buildSleeve, buildOverlays, buildMesh, wireForwarding, buildEndpoints,
  subsystems: MODULES, buildEvents, buildUi, restoreEndpoints, startRouteSync, trimMalloc, startMesh, passwordRotation, serveApi, pidFilePart,
};

export interface RunOptions {
  log?: Logger;
  clock?: Clock;
  installSignalHandlers?: boolean;
  steps?: Partial<typeof STEPS>;
  /** told each start-up step's name as it begins */
  onStep?: (step: string) => void;
}

export async function runRouter(cfg: RouterConfig, opts: RunOptions = {}): Promise<RouterHandle> {
  const root = opts.log ?? rootLogger({ level: cfg.logLevel, file: cfg.logFile });
  const clock = opts.clock ?? realClock;
  const log = componentLogger(root, 'router');
  const s = { ...STEPS, ...opts.steps };
  const build = new Assembly(log, opts.onStep);
  let resolveStopped!: () => void;
  const stopped = new Promise<void>((r) => { resolveStopped = r; });
  const stop = async (reason: string): Promise<void> => {
    log.info({ reason }, 'router stopping');
    await build.stop(reason);
    log.info('router stopped');
    resolveStopped();
  };

  const data = await build.add('data dir', () => s.openDataDir(cfg, root));
  const host = await build.add('host state', () => s.hostState(root, clock, cfg.keepDataPath));
  // before the wire: its timeouts and the overlays' leave this router's own stalls out (lib/lag.ts)
  const { monitor: lag } = await build.add('lag monitor', () => s.watchLag(clock));
  const wire = await build.add('wire', () => s.buildWire(cfg, data.identity, root, clock, lag));
  const sleeve = await build.add('sleeve', () => s.buildSleeve(cfg, { name: data.identity.name, crypto: wire.crypto, routeEvents: wire.routeEvents, lag }, host, root, clock));
  const overlays = await build.add('overlays', () => s.buildOverlays(cfg, data.identity, sleeve, host, root, clock, lag));
  const { mesh } = await build.add('mesh', () => s.buildMesh(cfg, data.identity, wire, overlays.choice(), root, clock));
  await build.add('forwarding', () => s.wireForwarding({ identity: data.identity, mesh, sleeve, overlays, host, clock }, root));
  const subsystems: Subsystem[] = [];
  const eps = await build.add('endpoints', () => s.buildEndpoints(cfg, data.identity.name, host, sleeve.prefixes, () => overlays.containerMtu(), subsystems, root, clock));
  const ctx: DaemonContext = { cfg, root, clock, identity: data.identity, mesh, hostCtx: host.ctx, endpoints: eps.endpoints, announce: eps.announce, subsystems };
  for (const mod of s.subsystems) subsystems.push(await build.add(mod.name, () => mod.create(ctx)));
  // the event log and the /ui page (its link gossip channel registers before the mesh starts)
  const ipamPart = subsystems.find((x) => (x.section ?? x.name) === 'ipam');
  const events = await build.add('events', () => s.buildEvents({ mesh, overlays: overlays.overlaySwitch, ipamOwners: ipamPart ? () => ipamOwnersOf(ipamPart.report?.()) : undefined }, root, clock));
  await build.add('ui', () => s.buildUi({ self: data.identity.name, software: `${VERSION} ${PROTOCOL_MIN_VERSION}..${PROTOCOL_MAX_VERSION}`, mesh, report: () => buildReport(build.parts), events: events.ring }, root, clock));
  await build.add('restore endpoints', () => s.restoreEndpoints(eps, log));
  await build.add('route sync', () => s.startRouteSync(host));
  await build.add('malloc trim', () => s.trimMalloc(root, clock));
  await build.add('mesh start', () => s.startMesh(mesh, subsystems, cfg));
  await build.add('password rotation', () => s.passwordRotation({ passwords: wire.transport.passwords, passwordFile: cfg.passwordFile, log: componentLogger(root, 'password'), signals: opts.installSignalHandlers !== false }));
  const life = { stop, reset: async () => { host.keep.onStop = false; await eps.removeAll(); await resetSubsystems(subsystems, log); } };
  await build.add('api', () => s.serveApi(cfg, build.parts, life, root));
  await build.add('pid file', () => s.pidFilePart(cfg));
  const reads = host.ctx.reads;
  if (reads) {
    // from here on the reconcile loops must see the kernel as others change it
    host.ctx.reads = undefined;
    log.debug({ shared: reads.hits, run: reads.misses }, 'start-up reads of kernel state');
  }
  log.info({ name: data.identity.name, nickname: data.identity.nickname, port: cfg.port, http: `${cfg.httpAddr.host}:${cfg.httpAddr.port}`, encryption: cfg.password !== null, crypto: wire.crypto.name }, 'router ready');

  if (opts.installSignalHandlers !== false) {
    for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => void stop(`signal ${sig}`));
  }
  return { report: () => buildReport(build.parts), stop, stopped };
}

/** The owners in IPAM's report section (ipam/subsystem.ts), when its ring exists. */
function ipamOwnersOf(section: unknown): Array<{ peer: string; nickname?: string; addresses: number; reachable: boolean }> | undefined {
  const owners = (section as { status?: { owners?: unknown } } | undefined)?.status?.owners;
  return Array.isArray(owners) ? owners : undefined;
}

/** The mesh listens and dials once every gossip channel is registered and the subsystems run. */
async function startMesh(mesh: Mesh, subsystems: readonly Subsystem[], cfg: RouterConfig): Promise<Part> {
  await mesh.start();
  for (const x of subsystems) await x.start?.();
  if (!cfg.resume && cfg.peers.length) mesh.connect(cfg.peers);
  return { name: 'mesh start', stop: () => {} };
}

/** `weave reset`: each subsystem leaves the mesh (IPAM hands its space over); a failure does not stop the rest. */
async function resetSubsystems(subsystems: readonly Subsystem[], log: Logger): Promise<void> {
  for (const x of subsystems) {
    try {
      await x.reset?.();
    } catch (e) {
      log.warn({ subsystem: x.name, err: (e as Error).message }, 'reset step failed; continuing');
    }
  }
}
