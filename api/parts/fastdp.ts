// The fast datapath (kernel VXLAN whose FDB/neighbour entries and routes the router programs, ESP
// when encrypted and the kernel can) and the overlay switch that picks, per connection, the best
// overlay both ends have established. Fastdp is optional: when it cannot start, the sleeve carries
// everything and every connection says why. Also the forwarding glue between the mesh, the
// announced prefixes and the kernel routes of both overlays.
import type { Registry } from 'prom-client';
import { WeaveError, errMsg } from '../../lib/errors';
import { componentLogger, type Logger } from '../../lib/log';
import type { Clock } from '../../lib/clock';
import { NO_LAG, type LagCredit } from '../../lib/lag';
import { counterFrom } from '../../lib/metrics';
import type { Part } from '../../lib/subsystem';
import type { Identity } from '../../mesh/peer';
import type { Mesh } from '../../mesh/mesh';
import { detectUnderlayAddress } from '../../host/underlay';
import { VxlanReconciler, vtepMacFor, vtepIpFor, DEFAULT_VNI, DEFAULT_VXLAN_NAME, VXLAN_OVERHEAD } from '../../host/vxlan';
import { FastDp, DeviceHeartbeatIo, NativeHeartbeatIo, DEFAULT_FASTDP_HB_PORT } from '../../router/fastdp';
import { OverlaySwitch, FastDpRoutes } from '../../router/overlay-switch';
import { loadTunIo } from '../../router/native';
import { PREFIXES_CHANNEL } from '../../router/prefixes';
import { supportsEsp, XfrmManager, ESP_OVERHEAD } from '../../ipsec/xfrm';
import type { RouterConfig } from '../config';
import { vxlanPortFor } from '../../lib/ports';
import type { HostPart, SleevePart } from './sleeve';
import type { OverlayChoice } from './control';

/** FDB/neighbour entries lost to a hand flush break fastdp until healed: check them more often. */
const VXLAN_RESYNC_MS = 5_000;

interface FastDpParts { fastdp: FastDp; vxlan: VxlanReconciler; xfrm?: XfrmManager; mtu: number }

export interface OverlaysPart extends Part {
  overlaySwitch: OverlaySwitch;
  fastdp: FastDpParts | undefined;
  /** the container MTU: one for every overlay a connection may switch between, so a fallback never needs PMTU again */
  containerMtu(): number;
  choice(): OverlayChoice;
}

/** Builds fastdp if it can (else says why) and the overlay switch over it and the sleeve. */
export async function buildOverlays(cfg: RouterConfig, identity: Identity, s: SleevePart, host: HostPart, root: Logger, clock: Clock, lag: LagCredit = NO_LAG): Promise<OverlaysPart> {
  const log = componentLogger(root, 'fastdp');
  let disabled: string | undefined = cfg.fastdp ? undefined : 'disabled by flag';
  let fd: FastDpParts | undefined;
  if (cfg.fastdp) {
    try {
      fd = await startFastDp(cfg, identity, s, host, log, clock, lag);
    } catch (e) {
      disabled = `fastdp unavailable: ${errMsg(e)}`;
      log.warn({ err: errMsg(e) }, 'fast datapath cannot start; the sleeve carries all traffic');
    }
  }
  const overlaySwitch = new OverlaySwitch({
    overlays: [
      { name: 'fastdp', manager: fd?.fastdp ?? null, optional: true, disabledReason: disabled },
      { name: 'sleeve', manager: s.sleeve },
    ],
    clock,
    log: componentLogger(root, 'overlay'),
  });
  return {
    name: 'overlays',
    section: 'fastdp',
    overlaySwitch,
    fastdp: fd,
    containerMtu: () => Math.min(s.sleeve.tunMtu, fd ? fd.mtu : s.sleeve.tunMtu),
    choice: () => ({
      manager: overlaySwitch,
      advertised: overlaySwitch.advertised(),
      params: fd ? { sleeve: s.sleeve.overlayParams(), fastdp: fd.fastdp.overlayParams() } : { sleeve: s.sleeve.overlayParams() },
    }),
    stop: async () => {
      overlaySwitch.close();
      if (fd) await stopFastDp(fd, log, host.keep.onStop);
    },
    report: () => ({
      summary: fd ? { Status: 'on', Encryption: fd.xfrm ? 'kernel ESP' : 'none (kernel lacks ESP or no password)' } : { Status: disabled ?? 'off' },
      enabled: !!fd,
      reason: disabled,
      counters: fd?.fastdp.counters,
      paths: fd?.fastdp.pathCounters() ?? [],
      switches: overlaySwitch.switches,
      vxlan: fd?.vxlan.stats(),
    }),
    metrics: (reg) => overlayMetrics(reg, overlaySwitch, fd),
  };
}

async function startFastDp(cfg: RouterConfig, identity: Identity, s: SleevePart, host: HostPart, log: Logger, clock: Clock, lag: LagCredit): Promise<FastDpParts> {
  const io = loadTunIo(log);
  if (!io) throw new WeaveError('ENOADDON', 'the native addon is needed for DF heartbeats');
  const underlay = cfg.host && cfg.host !== '0.0.0.0' && cfg.host !== '::' ? cfg.host : await detectUnderlayAddress(host.ctx);
  const esp = cfg.password ? await supportsEsp(host.ctx, log) : { ok: false, reason: 'no password: ESP not needed' };
  const vtep = vtepIpFor(identity.name);
  const mtu = s.sleeve.underlayMtu - VXLAN_OVERHEAD - (esp.ok ? ESP_OVERHEAD : 0);
  const vxlan = new VxlanReconciler({
    ctx: host.ctx, log, clock, routes: host.routes, lazy: true, holdMs: host.keep.holdMs,
    config: { name: DEFAULT_VXLAN_NAME, vni: DEFAULT_VNI, port: vxlanPortFor(cfg.port), local: underlay, mtu, mac: vtepMacFor(identity.name), address: vtep },
  });
  try {
    await vxlan.reconcile(); // the VXLAN port's guard now; the device only while a connection uses fastdp
    vxlan.start(VXLAN_RESYNC_MS);
    const xfrm = esp.ok ? new XfrmManager({ ctx: host.ctx, log, port: vxlanPortFor(cfg.port) }) : undefined;
    const fastdp = new FastDp({
      name: identity.name, clock, lag, log, host: vxlan,
      // the heartbeat socket binds to the VTEP address, so it opens and closes with the device
      io: new DeviceHeartbeatIo(() => new NativeHeartbeatIo(io, vtep, DEFAULT_FASTDP_HB_PORT, s.sleeve.underlayMtu), vxlan, log),
      underlay, mac: vtepMacFor(identity.name), vtep, port: vxlanPortFor(cfg.port), mtu, esp, xfrm,
    });
    log.info({ underlay, vtep, mtu, esp: esp.ok ? 'yes' : esp.reason }, 'fast datapath ready');
    return { fastdp, vxlan, xfrm, mtu };
  } catch (e) {
    vxlan.stop();
    await vxlan.destroy().catch((err: unknown) => log.warn({ err: errMsg(err) }, 'removing the half-made VXLAN device failed; the next start replaces it'));
    throw e;
  }
}

async function stopFastDp(fd: FastDpParts, log: Logger, keep: boolean): Promise<void> {
  fd.fastdp.close();
  fd.vxlan.stop();
  if (keep) {
    // Kubernetes mode: the device, its FDB and the xfrm states carry the pods' traffic while the
    // router restarts; the next run adopts them (host/vxlan.ts holdMs)
    log.info({ dev: fd.vxlan.config.name }, 'keeping the VXLAN device and its peers for the next start');
    return;
  }
  await fd.vxlan.destroy().catch((e: unknown) => log.warn({ err: errMsg(e) }, 'vxlan removal failed'));
  await fd.xfrm?.removeAll().catch((e: unknown) => log.warn({ err: errMsg(e) }, 'xfrm removal failed'));
}

function overlayMetrics(reg: Registry, sw: OverlaySwitch, fd: FastDpParts | undefined): void {
  counterFrom(reg, 'weave_overlay_switches_total', 'Times a connection\'s data moved to another overlay (fastdp, sleeve, or none), by the overlay it moved to.', () =>
    Object.entries(sw.switches).map(([overlay, value]) => ({ labels: { overlay }, value })), ['overlay']);
  if (!fd) return;
  counterFrom(reg, 'weave_fastdp_vxlan_dropped_total', 'VXLAN datagrams the guard dropped: not from a fastdp peer, or not inside ESP when the peer uses it.', () => fd.vxlan.stats().guard?.dropped ?? 0);
  const c = fd.fastdp.counters;
  counterFrom(reg, 'weave_fastdp_heartbeats_total', 'Fastdp heartbeats through the VXLAN device, by direction.', () => [
    { labels: { direction: 'sent' }, value: c.hbSent }, { labels: { direction: 'received' }, value: c.hbReceived },
  ], ['direction']);
  counterFrom(reg, 'weave_fastdp_heartbeat_errors_total', 'Fastdp heartbeats that could not be sent, or arrived from an unknown peer, by kind.', () => [
    { labels: { kind: 'send' }, value: c.hbSendErrors }, { labels: { kind: 'unknown_peer' }, value: c.hbUnknown },
  ], ['kind']);
}

export interface ForwardingInputs { identity: Identity; mesh: Mesh; sleeve: SleevePart; overlays: OverlaysPart; host: HostPart; clock?: Clock }

/**
 * Announced prefixes travel on their gossip channel; fastdp routes its peers' prefixes through the
 * VXLAN device and the sleeve leaves those out of the TUN routes; prefixes of peers that left the
 * topology stop attracting traffic until they are back.
 */
export function wireForwarding(i: ForwardingInputs, root: Logger): Part {
  const { mesh, overlays } = i;
  const prefixes = i.sleeve.prefixes;
  const fd = overlays.fastdp;
  const fastdpRoutes = fd
    ? new FastDpRoutes({
      name: i.identity.name, log: componentLogger(root, 'fastdp'), routes: mesh, prefixes, carrier: overlays.overlaySwitch, vtepOf: (p) => fd.fastdp.remoteVtep(p), sink: i.host.routes,
      holdMs: i.host.keep.holdMs, clock: i.clock,
    })
    : undefined;
  if (fastdpRoutes) {
    i.sleeve.sleeve.setRouteFilter({ skip: (origin) => fastdpRoutes.sleeveSkips(origin), onChange: (fn) => overlays.overlaySwitch.onChange(() => fn()) });
  }
  prefixes.setChannel(mesh.newGossip(PREFIXES_CHANNEL, prefixes));
  // Announcements of peers that left the topology must not keep attracting traffic; those of peers
  // that come back are routed again (router/prefixes.ts setReachable).
  const onPeers = (): void => prefixes.setReachable(mesh.peerNames());
  mesh.on('peersChanged', onPeers);
  return {
    name: 'forwarding',
    stop: () => {
      mesh.off('peersChanged', onPeers);
      fastdpRoutes?.close();
    },
  };
}
