// The libnetwork remote driver protocol (network + IPAM), answered by the router: each call is a
// method name and a JSON object in, a JSON object out (docker/server.ts carries them). The calls of
// `docker network create -d weave --ipam-driver weave` and `docker run --net`, in Docker's order:
//
//   IpamDriver.RequestPool       a subnet of weave's range: the one given (--subnet; refused when
//                                outside the range or overlapping another network's subnet here) or
//                                IPAM's default subnet, shared with `weave attach`, as in Weave Net
//   IpamDriver.RequestAddress    the gateway (reserved; containers' default route is Docker's
//                                gateway bridge), then each endpoint's address: allocated by IPAM,
//                                or claimed when given (--ip, --gateway, Docker's replay)
//   NetworkDriver.CreateNetwork  checked (weave's IPAM, no unknown options, no shared subnet), recorded
//   NetworkDriver.CreateEndpoint recorded with its address and MAC
//   NetworkDriver.Join           the veth (router/endpoints.ts joinDocker); the answer names the
//                                container end and the routes Docker gives the container: the overlay
//                                on-link, weaveDNS's address and multicast
//   NetworkDriver.Leave, DeleteEndpoint, IpamDriver.ReleaseAddress, ReleasePool, DeleteNetwork: undo.
//
// Docker replays every network's pool and addresses when it restarts (RequiresRequestReplay: without
// a MAC in the options an address asked for again is the holder's own), and a pool asked for again
// is the same pool (PoolIDs are made from the subnet). Addresses live in IPAM under "docker:" idents:
// one per allocation, released by address.
import { randomBytes } from 'crypto';
import { UsageError, WeaveError, errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';
import type { AddressBook, NameBook } from '../lib/subsystem';
import { checkAddrInCidr } from '../lib/validate';
import { containsRange, formatAddr, formatCidr, overlaps, parseAddr, parseCidr, type Cidr } from '../lib/addr';
import type { DockerJoinRequest, EndpointInfo } from '../router/endpoints';
import type { DockerState, PoolRecord } from './state';

export const ADDRESS_SPACES = { local: 'weavelocal', global: 'weaveglobal' } as const;
const GATEWAY_TYPE = 'com.docker.network.gateway';
const MAC_OPTION = 'com.docker.network.endpoint.macaddress';
const MULTICAST = '224.0.0.0/4';
/** Docker names the container's interface this plus an index (ethwe0, ethwe1 ...); `weave attach` makes ethwe. */
export const DOCKER_IF_PREFIX = 'ethwe';
/** Docker's own keys in CreateNetwork's options; anything in com.docker.network.generic is the user's -o. */
const NETWORK_OPTION_KEYS = new Set(['com.docker.network.enable_ipv6', 'com.docker.network.generic', 'com.docker.network.internal']);

/** What the driver needs from the router; tests hand in fakes. */
export interface DriverDeps {
  /** IPAM's address book (undefined: no IPAM in this router) */
  addresses(): AddressBook | undefined;
  /** weaveDNS's names (undefined: no DNS) */
  names(): NameBook | undefined;
  /** IPAM's range and default subnet */
  range: string;
  defaultSubnet: string;
  /** prefixes containers route on-link through weave (the overlay and IPAM's range) */
  overlay: string[];
  /** weaveDNS's address for containers (a /32 route through weave), or null */
  dnsAddr(): string | null;
  endpoints: {
    joinDocker(req: DockerJoinRequest): Promise<EndpointInfo & { peerIfname: string }>;
    leaveDocker(endpointId: string): Promise<EndpointInfo | undefined>;
  };
  state: DockerState;
  log: Logger;
  /** seam for tests: the random part of new idents */
  random?: () => string;
}

export type Body = Record<string, unknown>;

const MAC_RE = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;

/** The MAC Docker passes with an address request (it becomes part of the IPAM ident): a MAC or nothing. */
function macOption(v: unknown): string | undefined {
  if (v === undefined || v === null || v === '') return undefined;
  if (typeof v !== 'string' || !MAC_RE.test(v)) throw new UsageError(`option ${MAC_OPTION} ${typeof v === 'string' ? JSON.stringify(v.slice(0, 40)) : 'of another type'} is not a MAC address`);
  return v.toLowerCase();
}

/** The container's network namespace file, as Docker names it: an absolute path. */
function sandboxKey(b: Body): string {
  const p = s(b, 'SandboxKey', true);
  if (!p.startsWith('/') || p.includes('\0')) throw new UsageError(`SandboxKey ${JSON.stringify(p.slice(0, 80))} is not an absolute path`);
  return p;
}

function obj(b: Body, k: string): Body {
  const v = b[k];
  if (v === undefined || v === null) return {};
  if (typeof v !== 'object' || Array.isArray(v)) throw new UsageError(`${k} must be an object`);
  return v as Body;
}

function s(b: Body, k: string, required = false): string {
  const v = b[k];
  if (v === undefined || v === null || v === '') {
    if (required) throw new UsageError(`${k} is missing`);
    return '';
  }
  if (typeof v !== 'string' || v.length > 1024) throw new UsageError(`${k} must be a string`);
  return v;
}

function list(b: Body, k: string): Body[] {
  const v = b[k];
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw new UsageError(`${k} must be a list`);
  return v.map((x) => (x && typeof x === 'object' ? x as Body : {}));
}

const short = (id: string): string => id.slice(0, 12);

export class DockerDriver {
  /** calls by method and outcome (weave_docker_requests_total) */
  readonly counters = new Map<string, number>();
  private readonly handlers: Record<string, (b: Body) => unknown>;
  private readonly range: Cidr;
  private readonly defaultSubnet: Cidr;

  constructor(private readonly d: DriverDeps) {
    this.range = parseCidr(d.range);
    this.defaultSubnet = parseCidr(d.defaultSubnet);
    this.handlers = {
      'Plugin.Activate': () => ({ Implements: ['NetworkDriver', 'IpamDriver'] }),
      // the data (Docker's record of the network) is each host's; the network reaches the whole mesh
      'NetworkDriver.GetCapabilities': () => ({ Scope: 'local', ConnectivityScope: 'global' }),
      'NetworkDriver.CreateNetwork': (b) => this.createNetwork(b),
      'NetworkDriver.DeleteNetwork': (b) => this.deleteNetwork(b),
      'NetworkDriver.CreateEndpoint': (b) => this.createEndpoint(b),
      'NetworkDriver.EndpointOperInfo': () => ({ Value: {} }),
      'NetworkDriver.DeleteEndpoint': (b) => this.deleteEndpoint(b),
      'NetworkDriver.Join': (b) => this.join(b),
      'NetworkDriver.Leave': (b) => this.leave(b),
      'NetworkDriver.DiscoverNew': () => ({}),
      'NetworkDriver.DiscoverDelete': () => ({}),
      'NetworkDriver.ProgramExternalConnectivity': () => ({}),
      'NetworkDriver.RevokeExternalConnectivity': () => ({}),
      'IpamDriver.GetCapabilities': () => ({ RequiresMACAddress: true, RequiresRequestReplay: true }),
      'IpamDriver.GetDefaultAddressSpaces': () => ({ LocalDefaultAddressSpace: ADDRESS_SPACES.local, GlobalDefaultAddressSpace: ADDRESS_SPACES.global }),
      'IpamDriver.RequestPool': (b) => this.requestPool(b),
      'IpamDriver.ReleasePool': (b) => this.releasePool(b),
      'IpamDriver.RequestAddress': (b) => this.requestAddress(b),
      'IpamDriver.ReleaseAddress': (b) => this.releaseAddress(b),
    };
  }

  methods(): string[] { return Object.keys(this.handlers); }

  /** One call; the error (a message Docker prints) is thrown for the server to answer with {Err}. */
  async handle(method: string, body: Body): Promise<unknown> {
    // own keys only: "constructor", "toString" or "__proto__" name the object's inherited members
    const h = Object.hasOwn(this.handlers, method) ? this.handlers[method] : undefined;
    if (!h) {
      this.count(method, 'unsupported');
      throw new WeaveError('ENOTFOUND', `weave: ${method} is not supported`, { method });
    }
    try {
      const out = await h(body);
      this.count(method, 'ok');
      return out;
    } catch (e) {
      this.count(method, 'error');
      if (!(e instanceof UsageError)) this.d.log.error({ method, err: errMsg(e) }, 'docker driver call failed');
      throw e;
    }
  }

  private count(method: string, outcome: string): void {
    const k = `${method}/${outcome}`;
    this.counters.set(k, (this.counters.get(k) ?? 0) + 1);
  }

  private book(): AddressBook {
    const b = this.d.addresses();
    if (!b) throw new WeaveError('ENOIPAM', 'this weave router has no IPAM to give Docker addresses');
    return b;
  }

  private newIdent(kind: string): string {
    return `docker:${kind}:${this.d.random ? this.d.random() : randomBytes(4).toString('hex')}`;
  }

  /** The "docker:" ident holding addr, if any. */
  private holder(addr: string): string | undefined {
    const book = this.book();
    return book.idents('docker:').find((i) => book.lookup(i).includes(addr));
  }

  // ---- IPAM --------------------------------------------------------------------------------------

  private requestPool(b: Body): unknown {
    if (b.V6 === true) throw new UsageError('weave\'s IPAM has no IPv6: create the network without --ipv6');
    const opts = Object.keys(obj(b, 'Options'));
    if (opts.length) throw new UsageError(`unknown IPAM option${opts.length > 1 ? 's' : ''} ${opts.join(', ')}: weave's IPAM takes none (give --subnet and --ip-range instead)`);
    const given = s(b, 'Pool');
    const sub = s(b, 'SubPool');
    let subnet = this.defaultSubnet;
    if (given) {
      subnet = parseCidr(given, { what: 'subnet' });
      if (!containsRange(this.range, subnet)) {
        throw new UsageError(`subnet ${formatCidr(subnet)} is outside weave's address range ${formatCidr(this.range)} (--ipalloc-range): give a subnet inside it`);
      }
      if (formatCidr(subnet) !== formatCidr(this.defaultSubnet)) this.checkOverlap(subnet);
    } else if (sub) {
      throw new UsageError('--ip-range needs --subnet');
    }
    let subPool: Cidr | undefined;
    if (sub) {
      subPool = parseCidr(sub, { what: 'IP range' });
      if (!containsRange(subnet, subPool)) throw new UsageError(`IP range ${formatCidr(subPool)} is not inside subnet ${formatCidr(subnet)}`);
    }
    const rec: PoolRecord = { id: `weave:${formatCidr(subnet)}${subPool ? `:${formatCidr(subPool)}` : ''}`, subnet: formatCidr(subnet) };
    if (subPool) rec.subPool = formatCidr(subPool);
    const had = this.d.state.pools.get(rec.id);
    if (!had || had.released) {
      // asked for again (Docker's replay, or a network made on it): no longer on its way out
      this.d.state.pools.set(rec.id, rec);
      this.d.state.save();
      if (!had) this.d.log.info({ pool: rec.id }, 'docker: pool requested');
    }
    return { PoolID: rec.id, Pool: rec.subnet, Data: {} };
  }

  /** Explicit subnets must not overlap each other (the default subnet is shared by design). */
  private checkOverlap(subnet: Cidr): void {
    const dflt = formatCidr(this.defaultSubnet);
    for (const p of this.d.state.pools.values()) {
      if (p.subnet === dflt || p.subnet === formatCidr(subnet)) continue;
      if (!overlaps(parseCidr(p.subnet), subnet)) continue;
      const nets = [...this.d.state.networks.values()].filter((n) => n.poolId === p.id).map((n) => short(n.id));
      throw new UsageError(`subnet ${formatCidr(subnet)} overlaps ${p.subnet}, the subnet of ${nets.length ? `Docker network ${nets.join(', ')}` : 'another Docker network'} on this host: give a subnet that does not overlap it`);
    }
  }

  /** A pool by its ID; one this router lost (a damaged state file) is known again from its ID. */
  private pool(poolId: string): PoolRecord {
    const p = this.d.state.pools.get(poolId);
    if (p) return p;
    const m = /^weave:([0-9./]+?)(?::([0-9./]+))?$/.exec(poolId);
    if (!m) throw new UsageError(`unknown pool ${poolId}: not one of weave's`);
    const rec: PoolRecord = { id: poolId, subnet: formatCidr(parseCidr(m[1])) };
    if (m[2]) rec.subPool = formatCidr(parseCidr(m[2]));
    this.d.state.pools.set(poolId, rec);
    this.d.state.save();
    return rec;
  }

  /**
   * Docker releases a network's pool before it deletes the network (libnetwork: ipamRelease, then
   * DeleteNetwork), and a CreateNetwork refused for sharing another network's subnet rolls back with
   * ReleasePool too: a pool a recorded network still uses is marked released and goes when its last
   * network is deleted.
   */
  private releasePool(b: Body): unknown {
    const id = s(b, 'PoolID', true);
    const p = this.d.state.pools.get(id);
    if (!p) return {};
    const users = [...this.d.state.networks.values()].filter((n) => n.poolId === id);
    if (users.length) {
      this.d.state.pools.set(id, { ...p, released: true });
    } else {
      this.d.state.pools.delete(id);
      this.d.log.info({ pool: id }, 'docker: pool released');
    }
    this.d.state.save();
    return {};
  }

  private async requestAddress(b: Body): Promise<unknown> {
    const pool = this.pool(s(b, 'PoolID', true));
    const opts = obj(b, 'Options');
    const gateway = opts.RequestAddressType === GATEWAY_TYPE;
    const mac = macOption(opts[MAC_OPTION]);
    const subnet = parseCidr(pool.subnet);
    const book = this.book();
    const want = s(b, 'Address');
    let addr: string;
    if (want) {
      const a = parseAddr(want.includes('/') ? want.slice(0, want.indexOf('/')) : want, 'address');
      if (a < subnet.start || a >= subnet.end) throw new UsageError(`address ${formatAddr(a)} is not in the network's subnet ${pool.subnet}`);
      addr = formatAddr(a);
      const held = this.holder(addr);
      if (held) {
        // Docker's replay after it restarted (no MAC), the same endpoint asking again, or a gateway
        // (a network's, replayed): the holder's own. A new endpoint asking for it (--ip) is refused.
        const fresh = mac !== undefined && !held.startsWith(`docker:ep:${mac.replace(/:/g, '')}:`);
        if (fresh) throw new UsageError(`address ${addr} is already in use by another container on this network: give another --ip, or none`);
      } else {
        await book.claim(this.newIdent(gateway ? 'gw' : mac ? `ep:${mac.replace(/:/g, '')}` : 're'), addr);
      }
    } else {
      const ident = this.newIdent(gateway ? 'gw' : mac ? `ep:${mac.replace(/:/g, '')}` : 'ep');
      const got = await book.allocate(ident, pool.subPool ?? pool.subnet);
      addr = got.slice(0, got.indexOf('/'));
    }
    return { Address: `${addr}/${subnet.prefixLen}`, Data: {} };
  }

  private releaseAddress(b: Body): unknown {
    s(b, 'PoolID', true);
    const addr = s(b, 'Address', true);
    const held = this.holder(addr.includes('/') ? addr.slice(0, addr.indexOf('/')) : addr);
    if (held) this.book().release(held);
    return {};
  }

  // ---- network -----------------------------------------------------------------------------------

  private createNetwork(b: Body): unknown {
    const id = s(b, 'NetworkID', true);
    const opts = obj(b, 'Options');
    const generic = Object.keys(obj(opts, 'com.docker.network.generic'));
    const other = Object.keys(opts).filter((k) => !NETWORK_OPTION_KEYS.has(k));
    const unknown = [...generic, ...other];
    if (unknown.length) throw new UsageError(`unknown driver option${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')}: the weave driver takes none (its network is the mesh; addresses come from --ipam-driver weave)`);
    if (opts['com.docker.network.enable_ipv6'] === true || list(b, 'IPv6Data').length) throw new UsageError('weave networks carry IPv4 only: create the network without --ipv6');
    const v4 = list(b, 'IPv4Data');
    if (v4.length !== 1) throw new UsageError(`a weave network has exactly one IPv4 subnet (got ${v4.length})`);
    const space = s(v4[0], 'AddressSpace');
    const subnetText = s(v4[0], 'Pool', true);
    if (space !== ADDRESS_SPACES.local && space !== ADDRESS_SPACES.global) {
      throw new UsageError(`this network's addresses would come from another IPAM driver (address space ${space || 'none'}, subnet ${subnetText}), which hands them out on this host only, so they would collide across the mesh: create it with --ipam-driver weave`);
    }
    const subnet = formatCidr(parseCidr(subnetText, { what: 'subnet' }));
    if (subnet !== formatCidr(this.defaultSubnet)) {
      const same = [...this.d.state.networks.values()].find((n) => n.id !== id && n.subnet === subnet);
      if (same) throw new UsageError(`subnet ${subnet} is already the subnet of Docker network ${short(same.id)} on this host: give another --subnet, or none (networks without one share weave's default subnet ${formatCidr(this.defaultSubnet)})`);
    }
    const pool = [...this.d.state.pools.values()].find((p) => p.subnet === subnet);
    const gw = s(v4[0], 'Gateway');
    this.d.state.networks.set(id, { id, poolId: pool?.id ?? `weave:${subnet}`, subnet, ...(gw ? { gateway: gw } : {}) });
    this.d.state.save();
    this.d.log.info({ network: short(id), subnet }, 'docker: network created');
    return {};
  }

  private deleteNetwork(b: Body): unknown {
    const id = s(b, 'NetworkID', true);
    const n = this.d.state.networks.get(id);
    if (!n) return {};
    this.d.state.networks.delete(id);
    const p = this.d.state.pools.get(n.poolId);
    if (p?.released && ![...this.d.state.networks.values()].some((x) => x.poolId === p.id)) {
      this.d.state.pools.delete(p.id);
      this.d.log.info({ pool: p.id }, 'docker: pool released');
    }
    this.d.state.save();
    this.d.log.info({ network: short(id) }, 'docker: network deleted');
    return {};
  }

  // ---- endpoints ---------------------------------------------------------------------------------

  private createEndpoint(b: Body): unknown {
    const networkId = s(b, 'NetworkID', true);
    const id = s(b, 'EndpointID', true);
    const iface = obj(b, 'Interface');
    const opts = Object.keys(obj(b, 'Options')).filter((k) => !k.startsWith('com.docker.'));
    if (opts.length) throw new UsageError(`unknown driver option${opts.length > 1 ? 's' : ''} ${opts.join(', ')} for the endpoint: the weave driver takes none`);
    if (s(iface, 'AddressIPv6')) throw new UsageError('weave networks carry IPv4 only: the endpoint has an IPv6 address');
    const given = s(iface, 'Address');
    if (!given) throw new UsageError('the endpoint has no IPv4 address: weave networks need one from --ipam-driver weave');
    const cidr = checkAddrInCidr(given, 'Interface.Address');
    const mac = s(iface, 'MacAddress');
    if (mac && !MAC_RE.test(mac)) throw new UsageError(`"Interface.MacAddress": ${JSON.stringify(mac.slice(0, 40))} is not a MAC address`);
    const bare = cidr.slice(0, cidr.indexOf('/'));
    const ident = this.d.addresses() ? this.holder(bare) : undefined;
    this.d.state.endpoints.set(id, { id, networkId, cidr, ...(mac ? { mac } : {}), ...(ident ? { ident } : {}) });
    this.d.state.save();
    return { Interface: {} };
  }

  private async join(b: Body): Promise<unknown> {
    const networkId = s(b, 'NetworkID', true);
    const endpointId = s(b, 'EndpointID', true);
    const ep = this.d.state.endpoints.get(endpointId);
    if (!ep) throw new WeaveError('ENOTFOUND', `weave has no record of endpoint ${short(endpointId)} (created while this router was not running?): disconnect and connect the container again`);
    const rec = await this.d.endpoints.joinDocker({
      networkId, endpointId, sandboxKey: sandboxKey(b), cidr: ep.cidr, ident: ep.ident ?? `docker:unknown:${endpointId}`, ...(ep.mac ? { mac: ep.mac } : {}),
    });
    return { InterfaceName: { SrcName: rec.peerIfname, DstPrefix: DOCKER_IF_PREFIX }, StaticRoutes: this.routes(ep.cidr) };
  }

  /**
   * The routes Docker gives the container on its weave interface (all on-link; the host end answers
   * ARP for them): the overlay, unless the address's own subnet route is the same prefix (Docker
   * would fail adding it twice), weaveDNS's address, and multicast. No gateway: Docker connects the
   * container to its gateway bridge for the outside, as it does for Weave Net's driver.
   */
  routes(cidr: string): Array<{ Destination: string; RouteType: number }> {
    const { start, prefixLen } = parseCidr(cidr, { allowHostBits: true });
    const own = `${formatAddr(start)}/${prefixLen}`;
    const dsts = [...new Set([...this.d.overlay.map((o) => formatCidr(parseCidr(o))), ...(this.d.dnsAddr() ? [`${this.d.dnsAddr()}/32`] : []), MULTICAST])];
    // CONNECTED (1): a route through the interface with no next hop
    return dsts.filter((x) => x !== own).map((Destination) => ({ Destination, RouteType: 1 }));
  }

  private async leave(b: Body): Promise<unknown> {
    const endpointId = s(b, 'EndpointID', true);
    const rec = await this.d.endpoints.leaveDocker(endpointId);
    if (rec) this.d.names()?.unregister(rec.key);
    return {};
  }

  private async deleteEndpoint(b: Body): Promise<unknown> {
    const endpointId = s(b, 'EndpointID', true);
    // Docker leaves before deleting; a delete without a leave (Docker's clean-up of a stale sandbox) takes the link too
    const rec = await this.d.endpoints.leaveDocker(endpointId);
    if (rec) this.d.names()?.unregister(rec.key);
    if (this.d.state.endpoints.delete(endpointId)) this.d.state.save();
    return {};
  }
}
