// The /ui page's view of the one report model: the same `weave report` object (api/parts/api.ts
// buildReport), arranged for drawing, plus what only the page needs: the overlays of connections
// between other peers (ui/links.ts gossip) and traffic rates (the report's cumulative per-connection
// counters over time). Pure functions: the router part (ui/part.ts) feeds them, the tests check them
// against `weave report`.
import type { Report } from '../api/views';
import type { ConnectionStatus } from '../mesh/status';
import type { RouterEvent } from '../api/parts/events';
import type { LinksEntry } from './links';
import type { UiContainer, UiDnsRecord, UiEdge, UiFailing, UiIpam, UiIpamOwner, UiPeer, UiTraffic, UiView } from './view';

export type { UiContainer, UiDnsRecord, UiEdge, UiFailing, UiIpam, UiIpamOwner, UiPeer, UiTraffic, UiView } from './view';

/** Cumulative per-peer counts at one time: what rates are computed from. */
export interface TrafficSample { time: number; byPeer: Map<string, { txPackets: number; txBytes: number; rxPackets: number; rxBytes: number }> }

type AnyRec = Record<string, any>;

/** Heartbeats go every second on both overlays: this long without one is worth showing before the path is declared dead. */
export const SILENT_MS = 2500;

export function encryptionOf(c: Pick<ConnectionStatus, 'encrypted' | 'trusted'>): 'encrypted' | 'trusted' | 'none' {
  return c.encrypted ? 'encrypted' : c.trusted ? 'trusted' : 'none';
}

function edgeKey(x: string, y: string): [string, string] {
  return x < y ? [x, y] : [y, x];
}

/** Peers: every topology record, with its address as its neighbours record it. */
export function peersOf(r: Report, links: ReadonlyMap<string, LinksEntry>): UiPeer[] {
  const addr = new Map<string, string>();
  for (const p of r.router.peers) for (const c of p.connections) if (!addr.has(c.name)) addr.set(c.name, c.address);
  return r.router.peers.map((p) => ({
    name: p.name,
    nickname: p.nickname,
    recordVersion: p.version,
    software: p.name === r.router.name ? `${r.version} ${r.router.protocolMinVersion}..${r.router.protocolMaxVersion}` : links.get(p.name)?.software ?? '',
    address: addr.get(p.name) ?? (p.name === r.router.name ? r.router.listen : ''),
    reachable: p.reachable,
    self: p.name === r.router.name,
  }));
}

/** Edges: each pair of peers that either lists, with what is known of its overlay. */
export function edgesOf(r: Report, links: ReadonlyMap<string, LinksEntry>): UiEdge[] {
  const self = r.router.name;
  const listed = new Map<string, Map<string, boolean>>();
  for (const p of r.router.peers) listed.set(p.name, new Map(p.connections.map((c) => [c.name, c.established])));
  const edges = new Map<string, UiEdge>();
  for (const p of r.router.peers) {
    for (const c of p.connections) {
      const [a, b] = edgeKey(p.name, c.name);
      const k = `${a} ${b}`;
      if (edges.has(k)) continue;
      const established = listed.get(p.name)?.get(c.name) === true && listed.get(c.name)?.get(p.name) === true;
      edges.set(k, { a, b, established, source: 'topology', state: established ? 'established' : 'pending', overlay: null, encryption: 'unknown' });
    }
  }
  for (const e of edges.values()) {
    if (e.a === self || e.b === self) continue;
    // what either end gossips about it (the one that names an overlay wins)
    const l = [links.get(e.a)?.links.find((x) => x.peer === e.b), links.get(e.b)?.links.find((x) => x.peer === e.a)].filter((x) => x !== undefined);
    const best = l.find((x) => x!.overlay) ?? l[0];
    if (!best) continue;
    Object.assign(e, { source: 'gossip', state: best.state, overlay: best.overlay, encryption: best.encryption, ...(best.mtu ? { mtu: best.mtu } : {}), ...(best.reason ? { reason: best.reason } : {}) });
  }
  // our own connections: what this router knows first hand
  for (const c of r.router.connections) {
    if (!c.peerName || c.state !== 'established') continue;
    const [a, b] = edgeKey(self, c.peerName);
    const k = `${a} ${b}`;
    const e: UiEdge = edges.get(k) ?? { a, b, established: false, source: 'local', state: c.state, overlay: null, encryption: 'unknown' };
    e.source = 'local';
    e.state = c.stalled ? 'stalled' : c.state;
    e.overlay = c.overlay;
    e.encryption = encryptionOf(c);
    if (c.mtu) e.mtu = c.mtu;
    if (c.overlayReason) e.reason = c.overlayReason;
    else delete e.reason;
    e.info = c.info;
    if (c.stalled) e.stalled = c.stalled;
    const path = ((r[c.overlay === 'fastdp' ? 'fastdp' : 'sleeve'] as AnyRec | undefined)?.paths as AnyRec[] | undefined)?.find((p) => p.peer === c.peerName);
    if (typeof path?.lastRxAgoMs === 'number' && path.lastRxAgoMs > SILENT_MS) e.silentMs = path.lastRxAgoMs;
    edges.set(k, e);
  }
  return [...edges.values()].sort((x, y) => (x.a + x.b < y.a + y.b ? -1 : 1));
}

export function failingOf(r: Report): UiFailing[] {
  return r.router.connections.filter((c) => c.state !== 'established').map((c) => ({
    address: c.address, outbound: c.outbound, state: c.state, info: c.info,
    ...(c.code ? { code: c.code } : {}), ...(c.peerName ? { peer: c.peerName, nickname: c.peerNickname } : {}), ...(c.nextRetry ? { nextRetry: c.nextRetry } : {}),
  }));
}

/** Per established connection: its counts from the report (sleeve paths, fastdp heartbeats). */
export function trafficTotals(r: Report): Array<Omit<UiTraffic, 'txPps' | 'rxPps' | 'txBps' | 'rxBps'>> {
  const sleeve = (r.sleeve as AnyRec | undefined)?.paths as AnyRec[] | undefined ?? [];
  const fastdp = (r.fastdp as AnyRec | undefined)?.paths as AnyRec[] | undefined ?? [];
  const out: Array<Omit<UiTraffic, 'txPps' | 'rxPps' | 'txBps' | 'rxBps'>> = [];
  for (const c of r.router.connections) {
    if (c.state !== 'established' || !c.peerName) continue;
    const base = { peer: c.peerName, nickname: c.peerNickname ?? '', overlay: c.overlay };
    const s = sleeve.find((p) => p.peer === c.peerName);
    if (c.overlay === 'fastdp') {
      const f = fastdp.find((p) => p.peer === c.peerName);
      out.push({ ...base, txPackets: f?.hbSent ?? 0, txBytes: 0, rxPackets: f?.hbReceived ?? 0, rxBytes: 0, drops: drops(s), counts: 'fastdp heartbeats' });
    } else {
      out.push({ ...base, txPackets: s?.txPackets ?? 0, txBytes: s?.txBytes ?? 0, rxPackets: s?.rxPackets ?? 0, rxBytes: s?.rxBytes ?? 0, drops: drops(s), counts: 'sleeve' });
    }
  }
  return out;
}

function drops(s: AnyRec | undefined): UiTraffic['drops'] {
  return { replay: s?.dropReplay ?? 0, auth: s?.dropAuth ?? 0, noRoute: s?.dropNoRoute ?? 0, tooBig: s?.dropTooBig ?? 0 };
}

/**
 * Rates from the previous sample: per second over the interval; null without a previous sample of
 * the peer, or when its counts went down (a new connection).
 */
export function withRates(totals: ReturnType<typeof trafficTotals>, now: number, prev: TrafficSample | undefined): UiTraffic[] {
  return totals.map((t) => {
    const p = prev?.byPeer.get(t.peer);
    const dt = prev ? (now - prev.time) / 1000 : 0;
    const ok = p && dt > 0 && t.txPackets >= p.txPackets && t.rxPackets >= p.rxPackets && t.txBytes >= p.txBytes && t.rxBytes >= p.rxBytes;
    const rate = (x: number, y: number): number | null => (ok ? Math.round(((x - y) / dt) * 10) / 10 : null);
    return { ...t, txPps: rate(t.txPackets, p?.txPackets ?? 0), rxPps: rate(t.rxPackets, p?.rxPackets ?? 0), txBps: rate(t.txBytes, p?.txBytes ?? 0), rxBps: rate(t.rxBytes, p?.rxBytes ?? 0) };
  });
}

export function sampleOf(totals: ReturnType<typeof trafficTotals>, time: number): TrafficSample {
  return { time, byPeer: new Map(totals.map((t) => [t.peer, { txPackets: t.txPackets, txBytes: t.txBytes, rxPackets: t.rxPackets, rxBytes: t.rxBytes }])) };
}

/** Addresses in a CIDR ("10.32.0.0/12" -> 1048576). */
export function cidrSize(cidr: string): number {
  const len = Number(cidr.split('/')[1]);
  return Number.isInteger(len) && len >= 0 && len <= 32 ? 2 ** (32 - len) : 0;
}

export function ipamOf(r: Report): UiIpam | null {
  const ipam = r.ipam as AnyRec | undefined;
  const st = ipam?.status as AnyRec | undefined;
  if (!ipam || !st) return null;
  const size = cidrSize(st.range);
  const owners: UiIpamOwner[] = (st.owners as AnyRec[] ?? []).map((o) => ({
    peer: o.peer, nickname: o.nickname ?? '', addresses: o.addresses, percent: o.percent, reachable: o.reachable,
    ...(o.reachable ? {} : { hint: `weave rmpeer ${o.nickname || o.peer}` }),
  }));
  const owned = owners.reduce((n, o) => n + o.addresses, 0);
  return { state: ipam.state, range: st.range, size, owners, unowned: Math.max(0, size - owned) };
}

/** The namespace's name (ip netns) from what the report knows: the endpoint's netns argument, the DNS map. */
export function containersOf(r: Report): UiContainer[] {
  const eps = (r.endpoints as AnyRec | undefined)?.attached as AnyRec[] | undefined ?? [];
  const pods = (r.cni as AnyRec | undefined)?.pods as AnyRec[] | undefined ?? [];
  return eps.map((e) => {
    const pod = pods.find((p) => p.key === e.key || p.netns === e.path);
    return {
      name: netnsName(e.netns, e.path), key: e.key, addresses: e.addrs ?? [], ...(e.mac ? { mac: e.mac } : {}), ...(e.name ? { hostname: e.name } : {}),
      ...(pod ? { pod: pod.namespace && pod.name ? `${pod.namespace}/${pod.name}` : pod.containerId } : {}),
    };
  });
}

/** "/var/run/netns/NAME" or "/run/netns/NAME" -> NAME; a name stays; a PID or /proc path stays as given. */
export function netnsName(arg: string, path?: string): string {
  const m = /^\/(?:var\/)?run\/netns\/([^/]+)$/.exec(path ?? arg) ?? /^\/(?:var\/)?run\/netns\/([^/]+)$/.exec(arg);
  return m ? m[1] : arg;
}

export function dnsOf(r: Report): UiDnsRecord[] {
  const dns = r.dns as AnyRec | undefined;
  if (!dns) return [];
  const names = (dns.containers ?? {}) as Record<string, string>;
  const nick = new Map(r.router.peers.map((p) => [p.name, p.nickname]));
  return (dns.entries as AnyRec[] ?? []).filter((e) => !e.tombstone).map((e) => ({
    hostname: e.hostname, address: e.address, origin: e.origin, originNickname: nick.get(e.origin) ?? '',
    container: names[e.containerId] ? netnsName(names[e.containerId]) : e.containerId,
  }));
}

/** The whole view from one report (and the previous traffic sample for rates). */
export function buildView(r: Report, links: ReadonlyMap<string, LinksEntry>, events: RouterEvent[], now: number, prev?: TrafficSample): { view: UiView; sample: TrafficSample } {
  const totals = trafficTotals(r);
  const dropped = (r.sleeve as AnyRec | undefined)?.dropped as AnyRec | undefined;
  const m = r.router;
  const view: UiView = {
    time: now,
    self: { name: m.name, nickname: m.nickname, version: r.version, protocol: `${m.protocolMinVersion}..${m.protocolMaxVersion}`, encryption: m.encryption, dataDir: m.dataDir, pid: m.pid, startedAt: m.startedAt },
    peers: peersOf(r, links),
    edges: edgesOf(r, links),
    failing: failingOf(r),
    traffic: withRates(totals, now, prev),
    unattributedDrops: { noRoute: dropped?.noRoute ?? 0, unknownDest: dropped?.unknownDest ?? 0 },
    ipam: ipamOf(r),
    containers: containersOf(r),
    dns: dnsOf(r),
    events,
  };
  return { view, sample: sampleOf(totals, now) };
}
