// The kernel state every other part writes through (the route reconciler, IP forwarding), and the
// sleeve overlay with its report section and metrics.
import type { Registry } from 'prom-client';
import { errMsg } from '../../lib/errors';
import { componentLogger, type Logger } from '../../lib/log';
import type { Clock } from '../../lib/clock';
import type { LagCredit } from '../../lib/lag';
import { counterFrom, gaugeFrom } from '../../lib/metrics';
import type { Part } from '../../lib/subsystem';
import type { PeerName } from '../../mesh/peer';
import type { CryptoEngine } from '../../mesh/crypto';
import { RouteReconciler } from '../../host/routes';
import { ReadCache, sysctl, type HostCtx } from '../../host/ip';
import { dropTableIfEmpty } from '../../host/expose';
import { PrefixTable } from '../../router/prefixes';
import { createSleeve, type RouteSource, type Sleeve, type SleeveCounters } from '../../router/sleeve';
import type { RouterConfig } from '../config';

// changes are applied as they happen; the resync only repairs routes someone else removed, and each
// pass is an `ip` process: 100 idle routers on one host spawned 10 a second at 10 s
const ROUTE_RESYNC_MS = 30_000;

export interface HostPart extends Part {
  ctx: HostCtx;
  routes: RouteReconciler;
  /** the kept data path (RouterConfig.keepDataPath); `weave reset` turns onStop off */
  keep: { onStop: boolean; holdMs: number };
}

/** The route reconciler (started once endpoints are restored) and IP forwarding. */
export async function hostState(root: Logger, clock: Clock, keepDataPath: { onStop: boolean; holdMs: number } = { onStop: false, holdMs: 0 }): Promise<HostPart> {
  // shared reads until the router is ready (host/ip.ts ReadCache; runRouter drops it)
  const ctx: HostCtx = { reads: new ReadCache() };
  const keep = { ...keepDataPath };
  const routes = new RouteReconciler({ ctx, log: componentLogger(root, 'routes'), clock, holdMs: keep.holdMs });
  // Container traffic crosses this host's kernel (veth -> TUN and back), and relays forward it.
  await sysctl(ctx, 'net.ipv4.ip_forward', '1');
  const log = componentLogger(root, 'host');
  return {
    name: 'host state', ctx, routes, keep,
    stop: async () => {
      routes.stop();
      // the last part to stop: every owner has removed what it will not keep
      await dropTableIfEmpty(ctx).catch((e: unknown) => log.warn({ err: errMsg(e) }, 'cannot check the inet weave table; it stays'));
    },
  };
}

/** Start-up of the route reconciler: its timer heals hand-flushed routes. */
export function startRouteSync(host: HostPart): Part {
  host.routes.start(ROUTE_RESYNC_MS);
  return { name: 'route sync', stop: () => host.routes.stop() };
}

export interface SleevePart extends Part { sleeve: Sleeve; prefixes: PrefixTable }

export interface SleeveInputs { name: PeerName; crypto: CryptoEngine; routeEvents: RouteSource; lag?: LagCredit }

/** The TUN device and UDP socket with their packet loops, and the table of announced prefixes they forward by. */
export async function buildSleeve(cfg: RouterConfig, inputs: SleeveInputs, host: HostPart, root: Logger, clock: Clock): Promise<SleevePart> {
  const log = componentLogger(root, 'sleeve');
  const prefixes = new PrefixTable(inputs.name, clock, componentLogger(root, 'prefixes'));
  const sleeve = await createSleeve({
    name: inputs.name, clock, lag: inputs.lag, log, crypto: inputs.crypto, routes: inputs.routeEvents, prefixes,
    reconciler: host.routes, ctx: host.ctx, port: cfg.port, bindIp: cfg.host || undefined,
    ioMode: cfg.sleeve.io, tunOffload: cfg.sleeve.offload, boxes: cfg.sleeve.boxes,
    spinUs: cfg.sleeve.spinUs, threads: cfg.sleeve.threads,
  });
  return {
    name: 'sleeve', sleeve, prefixes,
    stop: () => sleeve.close().catch((e: unknown) => log.warn({ err: errMsg(e) }, 'sleeve close failed')),
    report: () => sleeveReport(sleeve, prefixes),
    metrics: (reg) => sleeveMetrics(reg, sleeve),
  };
}

/** Drop reasons as operators read them, from the data path's counters. */
function dropped(c: SleeveCounters): Record<string, number> {
  return {
    replay: c.dropReplay, badMac: c.dropBadMac, malformed: c.dropMalformed, notIpv4: c.dropNotIpv4,
    unknownPeer: c.dropUnknownConn, unknownDest: c.dropUnknownDest, noRoute: c.dropNoRoute, tooBig: c.dropTooBig,
    ttl: c.dropTtl, loop: c.dropLoop, sendError: c.dropSendError, tunFull: c.dropTunFull, badVnet: c.dropBadVnet,
  };
}

function sleeveReport(sleeve: Sleeve, prefixes: PrefixTable) {
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
    dropped: dropped(c),
    // per connection: datagrams and bytes on the wire each way, drops by reason (datapath.ts PATH_COUNTER_NAMES)
    paths: sleeve.paths(),
    prefixes: Object.fromEntries(prefixes.all()),
  };
}

/** Each sleeve counter with the name and help an operator needs (not derived from field names). */
const SLEEVE_METRICS: Array<[string, string, (c: SleeveCounters) => number]> = [
  ['weave_sleeve_tun_packets_in_total', 'Packets read from the weave-tun device (containers sending into the sleeve).', (c) => c.tunInPackets],
  ['weave_sleeve_tun_bytes_in_total', 'Bytes read from the weave-tun device.', (c) => c.tunInBytes],
  ['weave_sleeve_tun_packets_out_total', 'Packets written to the weave-tun device (delivered to this host\'s containers).', (c) => c.tunOutPackets],
  ['weave_sleeve_tun_bytes_out_total', 'Bytes written to the weave-tun device.', (c) => c.tunOutBytes],
  ['weave_sleeve_udp_datagrams_in_total', 'Sleeve datagrams received from peers on the UDP port.', (c) => c.udpInPackets],
  ['weave_sleeve_udp_bytes_in_total', 'Bytes of sleeve datagrams received from peers.', (c) => c.udpInBytes],
  ['weave_sleeve_udp_datagrams_out_total', 'Sleeve datagrams sent to peers (data, relays, heartbeats and probes).', (c) => c.udpOutPackets],
  ['weave_sleeve_udp_bytes_out_total', 'Bytes of sleeve datagrams sent to peers.', (c) => c.udpOutBytes],
  ['weave_sleeve_relayed_packets_total', 'Packets this router forwarded for other peers (multi-hop paths).', (c) => c.relayedPackets],
  ['weave_sleeve_icmp_sent_total', 'ICMP errors written back to senders (unreachable destination, fragmentation needed).', (c) => c.icmpSent],
  ['weave_sleeve_fragments_sent_total', 'IPv4 fragments made from packets too big for the path without DF set.', (c) => c.fragmentsSent],
  ['weave_sleeve_tun_super_packets_total', 'TCP super-packets (TSO) read from the TUN and split before sealing.', (c) => c.tunSuperPackets],
];

function sleeveMetrics(reg: Registry, sleeve: Sleeve): void {
  for (const [name, help, read] of SLEEVE_METRICS) counterFrom(reg, name, help, () => read(sleeve.counters));
  counterFrom(reg, 'weave_sleeve_dropped_total', 'Sleeve datagrams and packets dropped, by reason (replay, badMac: failed authentication, noRoute, unknownPeer ...).', () =>
    Object.entries(dropped(sleeve.counters)).map(([reason, value]) => ({ labels: { reason }, value })), ['reason']);
  gaugeFrom(reg, 'weave_sleeve_tun_mtu_bytes', 'MTU of the weave-tun device, which containers use too.', () => sleeve.tunMtu);
}
