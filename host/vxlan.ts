// The fastdp VXLAN device as desired state. One device per router (`weave-vx`): VNI fixed, UDP port =
// router port + 1, no learning (the router programs every entry), `local` = our underlay address, a
// stable MAC and a VTEP address derived from the peer name. Per fastdp peer the reconciler keeps:
//   FDB        peer VTEP MAC -> peer underlay IP      (`bridge fdb ... self permanent`)
//   neighbour  peer VTEP IP  -> peer VTEP MAC         (`ip neigh ... nud permanent`: no ARP over VXLAN)
//   route      peer VTEP IP/32 dev weave-vx           (through host/routes.ts, owner 'fastdp-vtep')
// The VTEP address is a /32 on the device, never a prefix: a 169.254.0.0/16 connected route would
// capture cloud metadata (169.254.169.254) and weaveDNS (169.254.53.53) traffic.
//
// Each pass reads the kernel (`ip -d -json link`, `ip -json addr/neigh`, `bridge -json fdb`), diffs, and
// applies the difference in one `ip -batch` (link, address, neighbours) plus one `bridge -batch` (FDB):
// iproute2 has no single tool for both. A flushed FDB or neighbour entry comes back on the next pass.
//
// The VXLAN socket takes any datagram on its port, from anyone on the underlay: the kernel has no notion
// of peers. So each pass first reconciles the guard (host/guard.ts vxlan-guard: the port only from
// the peers' underlay addresses, and from encrypted peers only inside ESP), then the device, so the port
// is never open without the filter. Lazy mode (the router's): the device exists only while some peer
// is set (a connection uses fastdp or is establishing it); without peers it is deleted, and listeners
// (the heartbeat socket bound to the VTEP address) hear that it came or went after each pass.
import { LoopedReconciler } from './reconcile-loop';
import { createHash } from 'crypto';
import type { Clock, TimerHandle } from '../lib/clock';
import { WeaveError, errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';
import type { PeerName } from '../mesh/peer';
import { formatAddr, isAddrText, tryParseCidr } from '../lib/addr';
import { execHost, HostCtx, HostError, ipBatch, ipJson, nsPrefix } from './ip';
import type { DesiredRoute } from './routes';
import { guardUnsupported, syncGuard, removeGuard, vxlanGuardSpec, VXLAN_ESP_SET, VXLAN_PLAIN_SET, type GuardSpec } from './guard';

export const DEFAULT_VXLAN_NAME = 'weave-vx';
/** 'W': any fixed value works, both ends must agree; VNI is not negotiated. */
export const DEFAULT_VNI = 0x57;
/** Outer IPv4 + UDP + VXLAN + inner Ethernet. */
export const VXLAN_OVERHEAD = 50;
export const DEFAULT_VTEP_CIDR = '169.254.0.0/16';
/** Route owner (host/routes.ts) for the /32 routes to peers' VTEP addresses. */
export const VTEP_ROUTE_OWNER = 'fastdp-vtep';
/** keys of peers adopted from a previous run's device (kept data path) */
const KEPT_PREFIX = 'kept:';

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

/** Locally administered unicast MAC from the peer name (a name is already MAC-shaped; force the bits). */
export function vtepMacFor(name: PeerName): string {
  const b = name.toLowerCase().split(':').map((x) => parseInt(x, 16));
  if (b.length !== 6 || b.some((x) => !(x >= 0 && x <= 255))) throw new WeaveError('EINVAL', `bad peer name ${name}`);
  b[0] = (b[0] & 0xfe) | 0x02;
  return b.map((x) => x.toString(16).padStart(2, '0')).join(':');
}

/** Addresses inside 169.254/16 with other owners: never a VTEP. */
const RESERVED_VTEPS = new Set(['169.254.53.53', '169.254.169.254', '169.254.169.253', '169.254.170.2']);

/**
 * The VTEP address of a peer: SHA-256(name) folded into the host part of cidr, skipping the network
 * and broadcast addresses and known link-local services. Every router computes every peer's the same
 * way, so nothing is allocated; collisions (two neighbours on one address) are detected by fastdp.
 */
export function vtepIpFor(name: PeerName, cidr = DEFAULT_VTEP_CIDR): string {
  const c = tryParseCidr(cidr, { allowHostBits: true });
  if (!c || c.prefixLen < 8 || c.prefixLen > 24) throw new WeaveError('EINVAL', `bad VTEP range ${cidr} (want an IPv4 /8../24)`);
  const size = c.end - c.start;
  const net = c.start;
  for (let i = 0; ; i++) {
    const h = createHash('sha256').update(`weave vtep ${i} ${name.toLowerCase()}`).digest();
    const host = h.readUInt32BE(0) % size;
    const ip = formatAddr((net + host) >>> 0);
    const last = host & 255;
    if (host !== 0 && host !== size - 1 && last !== 0 && last !== 255 && !RESERVED_VTEPS.has(ip)) return ip;
  }
}

export interface VxlanConfig {
  name: string;
  vni: number;
  /** UDP destination (and listening) port */
  port: number;
  /** our underlay address (source of the outer packets) */
  local: string;
  mtu: number;
  mac: string;
  /** our VTEP address (a /32 on the device) */
  address: string;
}

export interface VxlanPeer {
  mac: string;
  /** the peer's VTEP address */
  vtep: string;
  /** the peer's underlay address: outer destination */
  underlay: string;
  /** its VXLAN must arrive inside ESP (the guard drops it otherwise); default false */
  encrypted?: boolean;
}

// ---- actual state as iproute2 prints it ----------------------------------------------------------

export interface ActualLink {
  ifname: string;
  mtu?: number;
  address?: string;
  flags?: string[];
  linkinfo?: { info_kind?: string; info_data?: { id?: number; local?: string; port?: number; learning?: boolean } };
}
export interface ActualAddr { addr_info?: Array<{ family?: string; local?: string; prefixlen?: number }> }
export interface ActualFdb { mac: string; dst?: string; state?: string; flags?: string[] }
export interface ActualNeigh { dst: string; lladdr?: string; state?: string[] }

export interface VxlanActual {
  link: ActualLink | null;
  addrs: ActualAddr[];
  fdb: ActualFdb[];
  neigh: ActualNeigh[];
}

export interface VxlanPlan {
  /** `ip -batch` lines (link, addresses, neighbours), in order */
  ip: string[];
  /** `bridge -batch` lines (FDB) */
  bridge: string[];
  /** what changed, for logs and tests */
  summary: { link: 'ok' | 'create' | 'recreate' | 'update' | 'delete' | 'absent'; addr: number; neighAdd: number; neighDel: number; fdbAdd: number; fdbDel: number };
}

function checkConfig(c: VxlanConfig): void {
  if (!/^[^\s/]{1,15}$/.test(c.name)) throw new WeaveError('EINVAL', `bad VXLAN device name "${c.name}"`);
  if (!Number.isInteger(c.vni) || c.vni < 1 || c.vni > 0xffffff) throw new WeaveError('EINVAL', `bad VNI ${c.vni}`);
  if (!Number.isInteger(c.port) || c.port < 1 || c.port > 65535) throw new WeaveError('EINVAL', `bad VXLAN port ${c.port}`);
  if (!isAddrText(c.local)) throw new WeaveError('EINVAL', `VXLAN local "${c.local}" is not an IPv4 address`);
  if (!isAddrText(c.address)) throw new WeaveError('EINVAL', `VTEP address "${c.address}" is not an IPv4 address`);
  if (!MAC_RE.test(c.mac)) throw new WeaveError('EINVAL', `bad VTEP MAC "${c.mac}"`);
  if (!Number.isInteger(c.mtu) || c.mtu < 576 || c.mtu > 65535) throw new WeaveError('EINVAL', `VXLAN MTU ${c.mtu} out of range`);
}

function checkPeer(k: string, p: VxlanPeer): void {
  if (!MAC_RE.test(p.mac)) throw new WeaveError('EINVAL', `peer ${k}: bad VTEP MAC "${p.mac}"`);
  if (!isAddrText(p.vtep)) throw new WeaveError('EINVAL', `peer ${k}: VTEP "${p.vtep}" is not an IPv4 address`);
  if (!isAddrText(p.underlay)) throw new WeaveError('EINVAL', `peer ${k}: underlay "${p.underlay}" is not an IPv4 address`);
}

/** Pure: the commands that turn `actual` into config + peers (present false: into no device at all). */
export function planVxlan(c: VxlanConfig, peers: VxlanPeer[], actual: VxlanActual, opts: { present?: boolean } = {}): VxlanPlan {
  const dev = c.name;
  const ipl: string[] = [];
  const br: string[] = [];
  const summary: VxlanPlan['summary'] = { link: 'ok', addr: 0, neighAdd: 0, neighDel: 0, fdbAdd: 0, fdbDel: 0 };
  const l = actual.link;
  if (opts.present === false) {
    // its FDB and neighbour entries go with it
    if (l) ipl.push(`link del ${dev}`);
    summary.link = l ? 'delete' : 'absent';
    return { ip: ipl, bridge: br, summary };
  }
  const d = l?.linkinfo?.info_data;
  const fresh = !l || l.linkinfo?.info_kind !== 'vxlan' || d?.id !== c.vni || d?.port !== c.port || d?.local !== c.local || d?.learning !== false;
  const add = `link add ${dev} type vxlan id ${c.vni} dstport ${c.port} local ${c.local} nolearning`;
  if (fresh) {
    // id, port and local cannot be changed in place: a wrong device is replaced (entries go with it)
    if (l) ipl.push(`link del ${dev}`);
    ipl.push(add);
    ipl.push(`link set dev ${dev} address ${c.mac} mtu ${c.mtu} up`);
    summary.link = l ? 'recreate' : 'create';
  } else if (l!.address !== c.mac || l!.mtu !== c.mtu || !l!.flags?.includes('UP')) {
    ipl.push(`link set dev ${dev} address ${c.mac} mtu ${c.mtu} up`);
    summary.link = 'update';
  }
  const haveAddrs = fresh ? [] : actual.addrs.flatMap((a) => a.addr_info ?? []).filter((a) => a.family === 'inet');
  let hasOurs = false;
  for (const a of haveAddrs) {
    if (a.local === c.address && a.prefixlen === 32) hasOurs = true;
    else {
      ipl.push(`addr del ${a.local}/${a.prefixlen} dev ${dev}`);
      summary.addr++;
    }
  }
  if (!hasOurs) {
    ipl.push(`addr add ${c.address}/32 dev ${dev}`);
    summary.addr++;
  }

  const wantNeigh = new Map(peers.map((p) => [p.vtep, p.mac]));
  const haveNeigh = new Map<string, string>();
  for (const n of fresh ? [] : actual.neigh) {
    if (!n.state?.includes('PERMANENT')) continue; // the kernel's own (incomplete/failed) entries are not ours
    haveNeigh.set(n.dst, (n.lladdr ?? '').toLowerCase());
  }
  for (const ip of haveNeigh.keys()) {
    if (wantNeigh.has(ip)) continue; // a wrong MAC is fixed by the replace below
    ipl.push(`neigh del ${ip} dev ${dev}`);
    summary.neighDel++;
  }
  for (const [ip, mac] of wantNeigh) {
    if (haveNeigh.get(ip) === mac) continue;
    ipl.push(`neigh replace ${ip} lladdr ${mac} dev ${dev} nud permanent`);
    summary.neighAdd++;
  }

  // FDB: one entry per MAC (unicast, permanent, ours). Multicast/all-zero entries we never make.
  const wantFdb = new Map(peers.map((p) => [p.mac, p.underlay]));
  const haveFdb = new Map<string, string[]>();
  for (const f of fresh ? [] : actual.fdb) {
    if (f.state !== 'permanent' || !f.flags?.includes('self')) continue;
    const mac = f.mac.toLowerCase();
    if (mac === c.mac || (parseInt(mac.slice(0, 2), 16) & 1) === 1 || mac === '00:00:00:00:00:00') continue;
    haveFdb.set(mac, [...(haveFdb.get(mac) ?? []), f.dst ?? '']);
  }
  for (const [mac, dsts] of haveFdb) {
    const want = wantFdb.get(mac);
    for (const dst of dsts) {
      if (dst === want && dsts.length === 1) continue;
      br.push(`fdb del ${mac} dev ${dev}${dst ? ` dst ${dst}` : ''} self`);
      summary.fdbDel++;
    }
  }
  for (const [mac, dst] of wantFdb) {
    const have = haveFdb.get(mac);
    if (have && have.length === 1 && have[0] === dst) continue;
    br.push(`fdb append ${mac} dev ${dev} dst ${dst} self permanent`);
    summary.fdbAdd++;
  }
  return { ip: ipl, bridge: br, summary };
}

// ---- the reconciler ------------------------------------------------------------------------------

export interface VxlanStats {
  runs: number;
  errors: number;
  lastError?: string;
  repairs: number;
  /** whether the device existed after the last pass */
  device: boolean;
  /**
   * the guard after the last pass: datagrams it dropped, the underlay addresses it lets in, and why
   * there is none when the kernel cannot hold it (host/guard.ts guardUnsupported)
   */
  guard?: { dropped: number; plain: string[]; esp: string[]; unavailable?: string };
}

/** Where the /32 routes to peers' VTEPs go (host/routes.ts RouteReconciler). */
export interface RouteSink { setDesired(owner: string, routes: DesiredRoute[]): void }

export interface VxlanReconcilerOptions {
  ctx: HostCtx;
  log: Logger;
  clock: Clock;
  config: VxlanConfig;
  /** /32 routes to peers' VTEP addresses; absent: the caller routes them */
  routes?: RouteSink;
  /** default 20 ms */
  debounceMs?: number;
  /** the device only while some peer is set (the router's mode); default false: always */
  lazy?: boolean;
  /** filter the VXLAN port to the peers (host/guard.ts); default true */
  guard?: boolean;
  /**
   * Kept data path (Kubernetes mode): a removed peer's entries (FDB, neighbour, guard) stay this long,
   * and the first pass keeps the peers a previous run left in the device as long; 0: at once.
   */
  holdMs?: number;
}

export class VxlanReconciler extends LoopedReconciler<VxlanPlan['summary'], VxlanStats> {
  readonly config: VxlanConfig;
  private readonly ctx: HostCtx;
  private readonly log: Logger;
  private readonly routes?: RouteSink;
  private readonly peers = new Map<string, VxlanPeer>();
  readonly lazy: boolean;
  private readonly guard: GuardSpec | null;
  private readonly deviceListeners = new Set<(up: boolean) => void>();
  private probed = false;
  private readonly clock: Clock;
  private readonly holdMs: number;
  private readonly holds = new Map<string, TimerHandle>();
  private adopted = false;

  constructor(o: VxlanReconcilerOptions) {
    checkConfig(o.config);
    const log = o.log.child({ component: 'vxlan' });
    super(o.clock, o.debounceMs ?? 20, { runs: 0, errors: 0, repairs: 0, device: false }, { log, what: 'VXLAN' });
    this.config = { ...o.config, mac: o.config.mac.toLowerCase() };
    this.clock = o.clock;
    this.holdMs = o.holdMs ?? 0;
    this.ctx = o.ctx;
    this.log = log;
    this.routes = o.routes;
    this.lazy = o.lazy ?? false;
    this.guard = o.guard === false ? null : vxlanGuardSpec(this.config.port);
  }

  /** Programs (or updates) one peer's FDB + neighbour entry (+ VTEP route). key: usually the peer name. */
  setPeer(key: string, p: VxlanPeer): void {
    checkPeer(key, p);
    this.clock.clearTimeout(this.holds.get(key));
    this.holds.delete(key);
    // the peer is back under its own key: what a previous run left for its MAC is no longer needed
    for (const k of [...this.peers.keys()]) if (k.startsWith(KEPT_PREFIX) && this.peers.get(k)!.mac === p.mac.toLowerCase()) this.dropKept(k);
    this.peers.set(key, { mac: p.mac.toLowerCase(), vtep: p.vtep, underlay: p.underlay, encrypted: p.encrypted === true });
    this.changed();
  }

  /**
   * fn(up) after every successful pass: whether the device with our VTEP address exists now. Returns
   * the unsubscribe function.
   */
  onDevice(fn: (up: boolean) => void): () => void {
    this.deviceListeners.add(fn);
    return () => this.deviceListeners.delete(fn);
  }

  removePeer(key: string): void {
    if (!this.peers.has(key)) return;
    if (this.holdMs > 0) {
      if (!this.holds.has(key)) this.holds.set(key, this.clock.setTimeout(() => this.dropKept(key), this.holdMs));
      return;
    }
    if (this.peers.delete(key)) this.changed();
  }

  private dropKept(key: string): void {
    this.clock.clearTimeout(this.holds.get(key));
    this.holds.delete(key);
    if (this.peers.delete(key)) this.changed();
  }

  /** The first pass of a kept data path: the peers a previous run left in the device stay for holdMs. */
  private adopt(actual: VxlanActual): void {
    const macs = new Set([...this.peers.values()].map((p) => p.mac));
    let n = 0;
    for (const f of actual.fdb) {
      const mac = f.mac?.toLowerCase();
      if (!mac || !f.dst || mac === '00:00:00:00:00:00' || macs.has(mac)) continue;
      const ne = actual.neigh.find((x) => x.lladdr?.toLowerCase() === mac);
      if (!ne) continue;
      const key = `${KEPT_PREFIX}${mac}`;
      this.peers.set(key, { mac, vtep: ne.dst, underlay: f.dst, encrypted: false });
      this.holds.set(key, this.clock.setTimeout(() => this.dropKept(key), this.holdMs));
      n++;
    }
    if (n) {
      this.log.info({ peers: n, holdMs: this.holdMs }, 'keeping the VXLAN peers a previous run left until their connections are back');
      this.pushRoutes();
    }
  }

  peerList(): VxlanPeer[] {
    // Two keys with one VTEP or MAC (a reconnect racing its predecessor): the last set wins, in key order.
    const byVtep = new Map<string, VxlanPeer>();
    for (const k of [...this.peers.keys()].sort()) {
      const p = this.peers.get(k)!;
      byVtep.set(p.vtep, p);
    }
    const byMac = new Map<string, VxlanPeer>();
    for (const p of byVtep.values()) byMac.set(p.mac, p);
    return [...byMac.values()];
  }

  private changed(): void {
    this.pushRoutes();
    this.schedule();
  }

  /**
   * The /32 routes to the peers' VTEPs, once the device exists: a route pass that ran before it would
   * fail and wait for the route resync (up to 10 s in the router) while heartbeats had no way out.
   */
  private pushRoutes(): void {
    const list = this.st.device ? this.peerList().map((p) => ({ dst: `${p.vtep}/32`, dev: this.config.name, scope: 'link' as const })) : [];
    this.routes?.setDesired(VTEP_ROUTE_OWNER, list);
  }

  async readActual(): Promise<VxlanActual> {
    const dev = this.config.name;
    const links = await ipJson<ActualLink[]>(this.ctx, ['-d', 'link', 'show']);
    const link = links.find((l) => l.ifname === dev) ?? null;
    if (!link) return { link: null, addrs: [], fdb: [], neigh: [] };
    const [addrs, neigh, fdbOut] = await Promise.all([
      ipJson<ActualAddr[]>(this.ctx, ['addr', 'show', 'dev', dev]),
      ipJson<ActualNeigh[]>(this.ctx, ['neigh', 'show', 'dev', dev]),
      execHost([...nsPrefix(this.ctx), 'bridge', '-json', 'fdb', 'show', 'dev', dev]),
    ]);
    let fdb: ActualFdb[] = [];
    const out = fdbOut.stdout.trim();
    if (out) {
      try {
        fdb = JSON.parse(out) as ActualFdb[];
      } catch (e) {
        throw new HostError(`bridge -json fdb show: unparsable JSON: ${errMsg(e)}`, { command: 'bridge -json fdb show', stderr: '' }, { cause: e });
      }
    }
    return { link, addrs, fdb, neigh };
  }

  /**
   * Underlay addresses the guard lets in: plain, and inside ESP only. Every key counts (two keys racing
   * for one VTEP both stay in until the older goes).
   */
  private guardSets(): Map<string, string[]> {
    const plain = new Set<string>();
    const esp = new Set<string>();
    for (const p of this.peers.values()) (p.encrypted ? esp : plain).add(p.underlay);
    return new Map([[VXLAN_PLAIN_SET, [...plain].sort()], [VXLAN_ESP_SET, [...esp].sort()]]);
  }

  /**
   * Before the device. A failure fails the pass (no device is made unguarded), except on a kernel that
   * cannot hold the guard at all: then fastdp runs as before it existed, said once and in the report.
   */
  private async reconcileGuard(): Promise<void> {
    const g = this.guard!;
    const sets = this.guardSets();
    const view = { plain: sets.get(VXLAN_PLAIN_SET)!, esp: sets.get(VXLAN_ESP_SET)! };
    let r: Awaited<ReturnType<typeof syncGuard>>;
    try {
      r = await syncGuard(this.ctx, g, sets);
    } catch (e) {
      const why = guardUnsupported(e);
      if (why === null) throw e;
      if (this.st.guard?.unavailable === undefined) this.log.warn({ reason: why, port: this.config.port }, 'VXLAN guard unavailable on this host: any underlay host can send to the VXLAN port (ESP peers stay protected by their xfrm policies)');
      this.st.guard = { dropped: 0, ...view, unavailable: why };
      return;
    }
    this.st.guard = { dropped: r.dropped, ...view };
    if (r.rebuilt) {
      if (this.st.runs > 1) this.log.warn({ port: this.config.port, chain: g.chain }, 'VXLAN guard was missing or changed: restored');
      else this.log.info({ port: this.config.port, chain: g.chain }, 'VXLAN guard set up: the port takes fastdp peers only');
    }
  }

  override stop(): void {
    super.stop();
    for (const t of this.holds.values()) this.clock.clearTimeout(t);
    this.holds.clear();
  }

  protected async runOnce(): Promise<VxlanPlan['summary']> {
    if (this.holdMs > 0 && !this.adopted) {
      this.adopted = true;
      this.adopt(await this.readActual());
    }
    const peers = this.peerList();
    if (this.guard) await this.reconcileGuard();
    const present = !this.lazy || peers.length > 0;
    const actual = await this.readActual();
    if (!present && !actual.link && !this.probed) await this.probe();
    const plan = planVxlan(this.config, peers, actual, { present });
    this.probed = true;
    if (plan.ip.length || plan.bridge.length) {
      this.st.repairs++;
      this.log.debug({ ...plan.summary, ip: plan.ip, bridge: plan.bridge }, 'applying VXLAN changes');
      // -force: one stale entry that vanished meanwhile must not block the rest
      if (plan.ip.length) await ipBatch(this.ctx, plan.ip, { force: true });
      if (plan.bridge.length) await execHost([...nsPrefix(this.ctx), 'bridge', '-force', '-batch', '-'], { input: plan.bridge.join('\n') + '\n' });
      if (plan.summary.link === 'delete') this.log.info({ dev: this.config.name }, 'VXLAN device removed: no connection uses fastdp');
      else if (plan.summary.link !== 'ok') this.log.info({ dev: this.config.name, vni: this.config.vni, port: this.config.port, local: this.config.local, vtep: this.config.address, mtu: this.config.mtu, action: plan.summary.link }, 'VXLAN device set up');
    }
    const was = this.st.device;
    this.st.device = present;
    // a device (re)made lost its routes with it: hand them over again so they come back at once
    if (was !== present || plan.summary.link === 'create' || plan.summary.link === 'recreate') this.pushRoutes();
    this.notify(present);
    return plan.summary;
  }

  /**
   * Lazy mode's first pass, with nothing to create: proves the kernel can make the device (so fastdp is
   * advertised only when it can work) without ever bringing it up, so no socket listens meanwhile.
   */
  private async probe(): Promise<void> {
    const c = this.config;
    await ipBatch(this.ctx, [`link add ${c.name} type vxlan id ${c.vni} dstport ${c.port} local ${c.local} nolearning`, `link del ${c.name}`]);
  }

  private notify(up: boolean): void {
    for (const fn of this.deviceListeners) {
      try {
        fn(up);
      } catch (e) {
        this.log.error({ err: errMsg(e) }, 'VXLAN device listener threw');
      }
    }
  }

  /** Stops and deletes the device (its FDB and neighbour entries go with it), then the guard; VTEP routes withdrawn. */
  async destroy(): Promise<void> {
    this.stop();
    this.peers.clear();
    this.routes?.setDesired(VTEP_ROUTE_OWNER, []);
    const links = await ipJson<ActualLink[]>(this.ctx, ['link', 'show']);
    if (links.some((l) => l.ifname === this.config.name)) await ipBatch(this.ctx, [`link del ${this.config.name}`]);
    this.st.device = false;
    this.notify(false);
    if (this.guard && this.st.guard?.unavailable === undefined) await removeGuard(this.ctx, this.guard);
  }

}
