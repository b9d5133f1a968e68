// The control plane's parts: the data dir and the peer's identity, the wire (crypto engine and the
// TCP transport), the route events the data plane listens to, and the mesh itself with its stored
// targets and its share of the report, metrics and API.
import * as fs from 'fs';
import * as path from 'path';
import type { Registry } from 'prom-client';
import { WeaveError, errMsg } from '../../lib/errors';
import { componentLogger, type Logger } from '../../lib/log';
import type { Clock } from '../../lib/clock';
import { NO_LAG, type LagCredit } from '../../lib/lag';
import { counterFrom, gaugeFrom } from '../../lib/metrics';
import type { ApiRoute, Part } from '../../lib/subsystem';
import { loadIdentity, type Identity } from '../../mesh/peer';
import { loadCrypto, type CryptoEngine } from '../../mesh/crypto';
import { TcpTransport } from '../../mesh/tcp-transport';
import { Mesh, type OverlayManager } from '../../mesh/mesh';
import { PROTOCOL_MAX_VERSION, PROTOCOL_MIN_VERSION } from '../../mesh/wire';
import { formatCidr } from '../../ipam/addr';
import { LateRouteSource } from '../../router/sleeve';
import { inSubnets, type RouterConfig } from '../config';
import { FileTargetStore } from '../../mesh/targets';
import { pidFileRecovery, removePidFile, runningPid, writePidFile } from '../../lib/pid-file';
import { bool, peerList } from '../../lib/validate';

export interface DataDirPart extends Part { identity: Identity }

/** The data dir exists and no other router uses it; the peer's name is loaded (or made) from it. */
export function openDataDir(cfg: RouterConfig, root: Logger): DataDirPart {
  fs.mkdirSync(cfg.dataDir, { recursive: true });
  const other = runningPid(cfg.dataDir);
  if (other && other !== process.pid) throw new WeaveError('ERUNNING', `a weave router is already running with data dir ${cfg.dataDir} (pid ${other}); use "weave stop" first`);
  const { recovery: idRecovery, ...identity } = loadIdentity(cfg.dataDir, { name: cfg.name, nickname: cfg.nickname });
  const recovered = [...idRecovery, ...pidFileRecovery(cfg.dataDir)];
  const log = componentLogger(root, 'router');
  for (const r of recovered) log.warn(r, `${r.file}: ${r.problem}; ${r.action}${r.from ? ` (from ${r.from})` : ''}`);
  return { name: 'data dir', identity, stop: () => {}, recovery: () => recovered };
}

/** router.pid, written last: `weave launch` and `weave stop` find the router by it. */
export function pidFilePart(cfg: RouterConfig): Part {
  writePidFile(cfg.dataDir, process.pid);
  return { name: 'pid file', stop: () => removePidFile(cfg.dataDir, process.pid) };
}

/**
 * The wire: the crypto engine, the TCP transport (not listening yet), and the mesh's route events
 * for the parts built before the mesh (the sleeve needs them, and the mesh needs the sleeve as an
 * overlay): router/sleeve.ts LateRouteSource keeps their subscriptions until the mesh is bound.
 */
export interface WirePart extends Part { crypto: CryptoEngine; transport: TcpTransport; routeEvents: LateRouteSource }

export function buildWire(cfg: RouterConfig, identity: Identity, root: Logger, clock: Clock, lag: LagCredit = NO_LAG): WirePart {
  const crypto = loadCrypto(cfg.crypto ?? 'sodium', componentLogger(root, 'crypto'));
  const transport = new TcpTransport({
    host: cfg.host, port: cfg.port, password: cfg.password, crypto, clock, lag,
    log: componentLogger(root, 'transport'),
    trusts: (ip) => inSubnets(cfg.trustedSubnets, ip),
  });
  const routeEvents = new LateRouteSource(identity.name);
  return { name: 'wire', crypto, transport, routeEvents, stop: () => routeEvents.unbind() };
}

export interface MeshPart extends Part { mesh: Mesh }

export interface OverlayChoice { manager: OverlayManager; advertised: string[]; params: Record<string, unknown> }

/** The mesh over the transport with the overlays it may use; started later, once everything is wired. */
export function buildMesh(cfg: RouterConfig, identity: Identity, wire: WirePart, overlays: OverlayChoice, root: Logger, clock: Clock): MeshPart {
  const log = componentLogger(root, 'router');
  const targetStore = new FileTargetStore(path.join(cfg.dataDir, 'targets.json'), log, identity.name);
  if (!cfg.resume) targetStore.save(cfg.peers);
  const mesh = new Mesh({
    identity, transport: wire.transport, clock,
    log: componentLogger(root, 'mesh'),
    encryption: cfg.password !== null,
    trustedSubnets: cfg.trustedSubnets.map(formatCidr),
    port: cfg.port, connLimit: cfg.connLimit, discovery: cfg.discovery,
    overlays: overlays.advertised, overlayParams: overlays.params, overlay: overlays.manager,
    targetStore,
  });
  wire.routeEvents.bind(mesh);
  const startedAt = Date.now();
  return {
    name: 'mesh',
    section: 'router',
    mesh,
    stop: () => mesh.stop().catch((e: unknown) => log.warn({ err: errMsg(e) }, 'mesh stop failed')),
    report: () => ({
      ...mesh.status(),
      protocolMinVersion: PROTOCOL_MIN_VERSION,
      protocolMaxVersion: PROTOCOL_MAX_VERSION,
      port: cfg.port,
      crypto: wire.crypto.name,
      dataDir: cfg.dataDir,
      pid: process.pid,
      startedAt,
    }),
    metrics: (reg) => meshMetrics(reg, mesh, wire.transport),
    recovery: () => targetStore.recovery(),
    apiRoutes: () => meshRoutes(mesh),
  };
}

export function meshRoutes(mesh: Mesh): ApiRoute[] {
  return [
    {
      method: 'POST', path: '/connect', handler: ({ body }) => {
        mesh.connect(peerList(body, 'peers', { required: true }), { replace: bool(body, 'replace') });
        return { targets: mesh.targets() };
      },
    },
    {
      method: 'POST', path: '/forget', handler: ({ body }) => {
        mesh.forget(peerList(body, 'peers', { required: true }));
        return { targets: mesh.targets() };
      },
    },
  ];
}

const CONNECTION_STATES = ['connecting', 'retrying', 'failed', 'pending', 'established'];

function meshMetrics(reg: Registry, mesh: Mesh, transport: TcpTransport): void {
  gaugeFrom(reg, 'weave_peers', 'Peers in the topology this router knows, itself included.', () => mesh.peerSummaries().length);
  gaugeFrom(reg, 'weave_connections', 'Connections of this router to its peers, by state (established, pending, connecting, retrying, failed).', () => {
    const by = new Map<string, number>();
    for (const c of mesh.status().connections) by.set(c.state, (by.get(c.state) ?? 0) + 1);
    return CONNECTION_STATES.map((state) => ({ labels: { state }, value: by.get(state) ?? 0 }));
  }, ['state']);
  gaugeFrom(reg, 'weave_targets', 'Connection targets configured (peers given at launch or with weave connect).', () => mesh.targets().length);
  gaugeFrom(reg, 'weave_connection_overlay_info', 'One per established connection: the overlay carrying its data, whether the data is encrypted, and why fastdp is not used (empty when it is).', () =>
    established(mesh).map((c) => ({
      labels: {
        peer: c.peerName!, nickname: c.peerNickname ?? '', overlay: c.overlay ?? 'none',
        encryption: c.encrypted ? 'encrypted' : c.trusted ? 'trusted' : 'none', reason: c.overlayReason ?? '',
      },
      value: 1,
    })), ['peer', 'nickname', 'overlay', 'encryption', 'reason']);
  gaugeFrom(reg, 'weave_connection_mtu_bytes', 'Largest inner packet (container MTU) each established connection carries.', () =>
    established(mesh).filter((c) => c.mtu !== undefined).map((c) => ({ labels: { peer: c.peerName! }, value: c.mtu! })), ['peer']);
  const tc = () => transport.counters();
  counterFrom(reg, 'weave_connections_accepted_total', 'Inbound TCP connections accepted on the control port.', () => tc().accepted);
  counterFrom(reg, 'weave_connections_rate_limited_total', 'Inbound TCP connections closed at once by an accept rate limit, by limit: one source over its own share, or all sources together.', () => [
    { labels: { limit: 'source' }, value: tc().rateLimitedBySource }, { labels: { limit: 'overall' }, value: tc().rateLimited - tc().rateLimitedBySource },
  ], ['limit']);
  counterFrom(reg, 'weave_connections_rekeyed_total', 'Live connections that moved to a newer password during a password rotation.', () => tc().rekeyed);
  counterFrom(reg, 'weave_connections_closed_stale_password_total', 'Connections closed because they still used a password no longer accepted (rotation finished).', () => tc().closedStalePassword);
  counterFrom(reg, 'weave_connection_protocol_errors_total', 'Established connections closed for a malformed or undecryptable frame.', () => tc().protocolErrors);
  counterFrom(reg, 'weave_connections_refused_total', 'Connections refused during the handshake, by reason (wrong password, encryption mismatch, name collision ...).', () =>
    Object.entries(tc().refused).map(([code, value]) => ({ labels: { code }, value })), ['code']);
  counterFrom(reg, 'weave_control_frames_total', 'Control-plane frames on the TCP connections, by direction.', () => [
    { labels: { direction: 'in' }, value: tc().framesIn }, { labels: { direction: 'out' }, value: tc().framesOut },
  ], ['direction']);
  counterFrom(reg, 'weave_topology_stale_records_refused_total', 'Topology records refused as stale copies of peers this router dropped as unreachable (gossip about dead peers that neighbours still held).', () => mesh.stats.droppedRecordsRefused);
  counterFrom(reg, 'weave_topology_deltas_total', 'Topology record deltas by outcome: sent (one per neighbour), applied, or not applicable here (the base version was missing, so the full record was asked for).', () => [
    { labels: { outcome: 'sent' }, value: mesh.stats.topologyDeltasOut }, { labels: { outcome: 'applied' }, value: mesh.stats.topologyDeltasApplied },
    { labels: { outcome: 'gap' }, value: mesh.stats.topologyDeltaGaps },
  ], ['outcome']);
  counterFrom(reg, 'weave_mesh_message_bytes_total', 'Mesh message bytes (payloads, before framing and sealing) by direction and kind: topology.records|digest|hash|refused, gossip.<channel> received (gossip sent is one kind), overlay received.', () => [
    ...Object.entries(mesh.stats.bytesIn).map(([kind, value]) => ({ labels: { direction: 'in', kind }, value })),
    ...Object.entries(mesh.stats.bytesOut).map(([kind, value]) => ({ labels: { direction: 'out', kind }, value })),
  ], ['direction', 'kind']);
  counterFrom(reg, 'weave_control_bytes_total', 'Control-plane bytes on the TCP connections, by direction.', () => [
    { labels: { direction: 'in' }, value: tc().bytesIn }, { labels: { direction: 'out' }, value: tc().bytesOut },
  ], ['direction']);
}

function established(mesh: Mesh) {
  return mesh.status().connections.filter((c) => c.state === 'established' && c.peerName);
}
