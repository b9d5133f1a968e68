// Container endpoints (`weave attach/detach/ps`) and the host's own overlay addresses (`expose/hide`).
//
// The design is layer 3, like Calico: each container gets a veth whose host end has no address, answers
// ARP for everything (proxy_arp) and carries one /32 route per container address. Containers route the
// overlay range and multicast on-link via ethwe, so they need no bridge and no gateway address, and the
// host's routing table alone decides where a packet goes (a local veth, or an overlay device).
//
// What we made is recorded in DATA_DIR/endpoints.json (a checked state file, lib/state-file.ts: written
// atomically, truncation and garbage detected). A restarted router calls restore(): it drops records
// whose veth is gone (the namespace died), adopts what the kernel has and the file does not (the file
// was damaged, deleted, or a crash came between attach and commit: host veths vethwe*, their /32 routes,
// the namespace at the other end and its addresses, host/containers.ts), re-programs the rest and hands
// the /32s to the route reconciler, so running containers keep working across router restarts, keep
// their addresses in IPAM, and a flushed route heals itself. recovery() says what was recovered.
import { EventEmitter } from 'events';
import * as fs from 'fs';
import * as path from 'path';
import type { Clock } from '../lib/clock';
import { UsageError, WeaveError, describeValue, errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';
import { Cidr4, canonicalPrefix, formatIp4, networkCidr, parseCidr4 } from '../host/cidr';
import { cidrOf, contains } from '../lib/addr';
import { syncExposeLink, syncMasquerade } from '../host/expose';
import { HostCtx, sysctl } from '../host/ip';
import {
  CONTAINER_IFNAME, createVeth, deleteLink, ensureContainerAddressing, hostIfName, linkByName, listLinks,
  programHostSide, removeContainerAddrs, tmpPeerName,
} from '../host/links';
import { NetnsRef, findNamedNetns, netnsKeyOfStat, netnsPathOf, parseNetnsArg, resolveNetns } from '../host/netns';
import { routeBatchLines, type DesiredRoute, type RouteReconciler } from '../host/routes';
import { createPodLink, deletePodLink, ensurePodLink, podHostIfName, podNetnsCtx, randomMac, type PodLinkSpec } from '../host/pod-link';
import { createDockerLink, deleteDockerLink, dockerHostIfName, dockerPeerIfName } from '../host/docker-link';
import { exposeLinkAddrs } from '../host/expose';
import { findContainers, listHostVeths, masqueradedNets, reachableNetns } from '../host/containers';
import { contentProblem, moveAside, readStateFile, writeStateFile, type StateRecovery } from '../lib/state-file';

export const ENDPOINTS_OWNER = 'endpoints';
export const STATE_FILE = 'endpoints.json';
/** state-file kind (lib/state-file.ts) */
export const STATE_KIND = 'endpoints';
const STATE_VERSION = 1;
/** where recovered endpoints come from, as status says it */
const KERNEL_SOURCE = "the kernel: host veths (vethwe*), their /32 routes (proto 180), the containers' namespaces and addresses";

export interface EndpointInfo {
  /** the NETNS argument it was attached with */
  netns: string;
  /** a path to its namespace file (may be stale once the process behind a PID exits) */
  path: string;
  /** namespace inode "dev:ino": one key per namespace however it is named */
  key: string;
  /** container-side interface */
  ifname: string;
  /** host-side veth */
  hostIfname: string;
  /** MAC of the container-side interface */
  mac: string;
  /** CIDRs as attached, in attach order */
  addrs: string[];
  /** name for DNS (later) */
  name?: string;
  /** a pod attached through CNI (cni/): its runtime keys and Kubernetes names */
  pod?: PodInfo;
  /** the IPAM ident its addresses are held under, when not the namespace key (pods) */
  ident?: string;
  /** MAC of the host-side veth, when chosen by weave (pods: the gateway's neighbour entry) */
  hostMac?: string;
  /** a Docker endpoint made by the network driver (docker/): its libnetwork IDs */
  docker?: DockerEndpointInfo;
  /** the Docker container in the namespace, when known (`weave ps` shows its name) */
  container?: { id: string; name: string };
}

/** A Docker endpoint: libnetwork's network and endpoint IDs (the record's key is "docker:ENDPOINTID"). */
export interface DockerEndpointInfo {
  networkId: string;
  endpointId: string;
}

export interface DockerJoinRequest {
  networkId: string;
  endpointId: string;
  /** libnetwork's SandboxKey (a path in dockerd's mount namespace, recorded for `weave ps`) */
  sandboxKey: string;
  /** the endpoint's address as ADDR/LEN (from IPAM, as Docker gave it to CreateEndpoint) */
  cidr: string;
  /** the IPAM ident the address is held under */
  ident: string;
  /** the MAC Docker chose for the container end */
  mac?: string;
}

/** The record key of a Docker endpoint. */
export function dockerEndpointKey(endpointId: string): string {
  return `docker:${endpointId}`;
}

/** A pod attached through CNI: keyed by network, container ID and interface (the runtime's keys). */
export interface PodInfo {
  /** the CNI network's name */
  network: string;
  containerId: string;
  /** K8S_POD_NAMESPACE and K8S_POD_NAME, when Kubernetes sent them (`weave ps` shows them) */
  namespace?: string;
  name?: string;
  /** K8S_POD_INFRA_CONTAINER_ID */
  infraContainerId?: string;
}

export interface PodAttachRequest {
  /** CNI_NETNS */
  netns: string;
  /** CNI_IFNAME */
  ifname: string;
  /** the pod's address as ADDR/LEN (already allocated) */
  cidr: string;
  pod: PodInfo;
  ident: string;
}

/** The key a pod's host veth name is derived from: a crashed ADD's leftover is found again by it. */
function podKey(network: string, containerId: string, ifname: string): string {
  return `${network}/${containerId}/${ifname}`;
}

export interface AttachResult extends EndpointInfo {
  /** the CIDRs this call added (empty on a pure re-attach) */
  added: string[];
  /** whether this call created the veth */
  created: boolean;
}

export interface DetachResult {
  netns: string;
  /** CIDRs no longer attached */
  removed: string[];
  /** whether the veth was deleted (all addresses gone) */
  linkRemoved: boolean;
  /** the namespace no longer existed: only leftover state was cleaned */
  namespaceGone: boolean;
}

export interface ExposedAddr { cidr: string; masquerade: boolean }
export interface ExposeResult { exposed: ExposedAddr[]; added: string[] }
export interface HideResult { removed: string[]; exposed: ExposedAddr[] }

interface PersistedState {
  version: number;
  endpoints: EndpointInfo[];
  exposed: ExposedAddr[];
}

export interface EndpointsOptions {
  /** the host namespace (undefined = ours) */
  ctx: HostCtx;
  log: Logger;
  clock: Clock;
  dataDir: string;
  routes: RouteReconciler;
  /** container MTU the data path wants now */
  mtu: () => number;
  /** CIDR routed into containers (default 10.32.0.0/12) */
  overlayRange?: string;
  /** our peer name, recorded in the state file's header */
  owner?: string;
}

const ipOf = (cidr: string): string => cidr.slice(0, cidr.indexOf('/'));

export class Endpoints extends EventEmitter {
  private readonly ctx: HostCtx;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly dataDir: string;
  private readonly routes: RouteReconciler;
  private readonly mtu: () => number;
  readonly overlayRange: string;
  private endpoints: EndpointInfo[] = [];
  private exposed: ExposedAddr[] = [];
  private lock: Promise<unknown> = Promise.resolve();
  /** pods whose kernel work runs outside the lock (attachPod): their namespace, address and identity are taken */
  private readonly podsInFlight = new Map<string, { id: string; key: string; addr: string }>();
  private hostKey?: string;
  private readonly owner?: string;
  /** what loading the state file found: restore() reports recovery against it */
  private fileState: { status: 'ok' | 'missing' } | { status: 'damaged'; problem: string; movedTo: string } = { status: 'missing' };
  private readonly recovered: StateRecovery[] = [];
  /** counters for status/metrics */
  readonly counters = { attaches: 0, detaches: 0, errors: 0, staleDropped: 0, recovered: 0 };

  constructor(o: EndpointsOptions) {
    super();
    this.ctx = o.ctx;
    this.log = o.log.child({ component: 'endpoints' });
    this.clock = o.clock;
    this.dataDir = o.dataDir;
    this.routes = o.routes;
    this.mtu = o.mtu;
    this.owner = o.owner;
    const range = parseCidr4(o.overlayRange ?? '10.32.0.0/12', 'overlay range');
    this.overlayRange = networkCidr(range);
    this.loadState();
  }

  // ---- queries -------------------------------------------------------------------------------

  list(): EndpointInfo[] {
    return this.endpoints.map((e) => ({
      ...e, addrs: [...e.addrs], ...(e.pod ? { pod: { ...e.pod } } : {}), ...(e.docker ? { docker: { ...e.docker } } : {}),
      ...(e.container ? { container: { ...e.container } } : {}),
    }));
  }

  /** The pod attached for (network, container ID, interface), if any. */
  findPod(network: string, containerId: string, ifname: string): EndpointInfo | undefined {
    const e = this.endpoints.find((x) => x.pod?.network === network && x.pod.containerId === containerId && x.ifname === ifname);
    return e && { ...e, addrs: [...e.addrs], pod: { ...e.pod! } };
  }

  exposedAddrs(): ExposedAddr[] { return this.exposed.map((x) => ({ ...x })); }

  /** The /32s this host serves: attached container addresses and exposed host addresses. */
  servedPrefixes(): string[] {
    const s = new Set<string>();
    for (const e of this.endpoints) for (const c of e.addrs) s.add(`${ipOf(c)}/32`);
    for (const x of this.exposed) s.add(`${ipOf(x.cidr)}/32`);
    return [...s].sort();
  }

  /**
   * The source address the host should use toward the overlay (the first exposed address), for other
   * route owners (sleeve, fastdp) to put in their routes' src; undefined when nothing is exposed.
   */
  hostSource(): string | undefined {
    return this.exposed.length ? ipOf(this.exposed[0].cidr) : undefined;
  }

  // ---- attach / detach -----------------------------------------------------------------------

  attach(netns: string, cidrs: string[], opts: { name?: string; container?: { id: string; name: string } } = {}): Promise<AttachResult> {
    return this.serial(() => this.doAttach(netns, cidrs, opts));
  }

  private async doAttach(arg: string, cidrs: string[], opts: { name?: string; container?: { id: string; name: string } }): Promise<AttachResult> {
    if (!Array.isArray(cidrs) || cidrs.length === 0) throw new UsageError('attach needs at least one address like 10.32.0.5/12', { netns: arg });
    const parsed = this.parseAddrs(cidrs);
    if (opts.name !== undefined && (typeof opts.name !== 'string' || !/^[A-Za-z0-9_.\-]{1,253}$/.test(opts.name))) {
      throw new UsageError(`name "${opts.name}" is not a valid DNS name`, { name: opts.name });
    }
    const ns = this.resolve(arg);
    let rec = this.endpoints.find((e) => e.key === ns.key);
    if (rec?.docker) throw new UsageError(`namespace ${arg} is attached through Docker's network driver: use docker network connect/disconnect`, { netns: arg });
    if (rec?.pod || [...this.podsInFlight.values()].some((f) => f.key === ns.key)) throw new UsageError(`namespace ${arg} is a pod's, attached through CNI: its runtime manages its addresses`, { netns: arg });
    // addresses must be unique across containers and the host's exposed addresses
    for (const c of parsed) {
      const ip = c.addr;
      const other = this.endpoints.find((e) => e !== rec && e.addrs.some((a) => ipOf(a) === ip));
      if (other) throw new UsageError(`address ${ip} is already attached to namespace ${other.netns}; detach it there first`, { addr: ip, netns: other.netns });
      if (this.exposed.some((x) => ipOf(x.cidr) === ip)) throw new UsageError(`address ${ip} is exposed on this host; hide it first`, { addr: ip });
      const same = rec?.addrs.find((a) => ipOf(a) === ip);
      if (same && same !== `${c.addr}/${c.len}`) throw new UsageError(`address ${ip} is already attached to ${arg} as ${same}; detach it to change the prefix length`, { addr: ip });
    }
    const mtu = this.containerMtu();
    const hostIf = hostIfName(ns.key);
    let created = false;
    const links = await listLinks(this.ctx);
    if (rec && !links.has(rec.hostIfname)) {
      // the veth is gone (deleted by hand, or an old namespace's inode reused): start over
      this.log.warn({ netns: arg, hostIf: rec.hostIfname }, 'recorded endpoint has no veth any more; recreating');
      this.endpoints = this.endpoints.filter((e) => e !== rec);
      rec = undefined;
    }
    try {
      if (!rec) {
        if (links.has(hostIf)) {
          // left by an attach that crashed before recording it: its peer is in this namespace or gone
          this.log.warn({ hostIf, netns: arg }, 'removing unrecorded leftover veth before attaching');
          await deleteLink(this.ctx, hostIf);
        }
        if (await linkByName(ns.ctx, CONTAINER_IFNAME)) {
          throw new UsageError(`namespace ${arg} already has an interface named ${CONTAINER_IFNAME} that weave did not create; remove it first`, { netns: arg });
        }
        await createVeth(this.ctx, { hostIf, tmpPeer: tmpPeerName(ns.key), containerPath: ns.path, containerCtx: ns.ctx, ifname: CONTAINER_IFNAME, mtu });
        created = true;
      }
      await programHostSide(this.ctx, hostIf, mtu);
      await sysctl(this.ctx, 'net/ipv4/ip_forward', 1);
      const all = rec ? [...rec.addrs] : [];
      for (const c of parsed) if (!all.includes(`${c.addr}/${c.len}`)) all.push(`${c.addr}/${c.len}`);
      const { addedAddrs } = await ensureContainerAddressing(ns.ctx, CONTAINER_IFNAME, all, this.overlayRange, mtu);
      const mac = (await linkByName(ns.ctx, CONTAINER_IFNAME))?.address ?? rec?.mac ?? '';
      const info: EndpointInfo = {
        netns: rec?.netns ?? arg,
        path: ns.path,
        key: ns.key,
        ifname: CONTAINER_IFNAME,
        hostIfname: hostIf,
        mac,
        addrs: all,
        name: opts.name ?? rec?.name,
      };
      if (info.name === undefined) delete info.name;
      const container = opts.container ?? rec?.container;
      if (container) info.container = { id: container.id, name: container.name };
      this.endpoints = [...this.endpoints.filter((e) => e.key !== ns.key), info];
      this.counters.attaches++;
      await this.commit();
      this.log.info({ netns: arg, hostIf, addrs: all, added: addedAddrs, created }, 'attached');
      const newly = parsed.map((c) => `${c.addr}/${c.len}`).filter((c) => !rec?.addrs.includes(c));
      return { ...info, addrs: [...all], added: newly, created };
    } catch (e) {
      this.counters.errors++;
      this.log.error({ netns: arg, err: errMsg(e) }, 'attach failed');
      if (created) {
        // do not leave a half-made veth that no record knows about
        await deleteLink(this.ctx, hostIf).catch((e2: unknown) => this.log.error({ hostIf, err: errMsg(e2) }, 'cleanup after failed attach failed'));
      }
      throw e;
    }
  }

  detach(netns: string, addrs?: string[]): Promise<DetachResult> {
    return this.serial(() => this.doDetach(netns, addrs));
  }

  private async doDetach(arg: string, addrs?: string[]): Promise<DetachResult> {
    // an address to detach may be written with or without its prefix length: it is matched by address
    const wanted = addrs && addrs.length ? addrs.map((a) => parseCidr4(typeof a === 'string' && !a.includes('/') ? `${a}/32` : a)) : undefined;
    let ns: NetnsRef | undefined;
    let rec: EndpointInfo | undefined;
    try {
      ns = this.resolve(arg);
      rec = this.endpoints.find((e) => e.key === ns!.key);
      if (!rec) throw new UsageError(`nothing is attached to namespace ${arg}`, { netns: arg });
    } catch (e) {
      if (ns || !(e instanceof UsageError)) throw e;
      // the namespace is gone (or never was): clean what we recorded under that argument
      rec = this.findGone(arg);
      if (!rec) throw new UsageError(`${e.message}; and nothing weave attached is recorded under ${arg}`, { netns: arg });
    }
    const gone = !ns;
    let removed: string[];
    let linkRemoved = false;
    if (wanted) {
      removed = [];
      for (const c of wanted) {
        const have = rec.addrs.find((a) => ipOf(a) === c.addr);
        if (!have) throw new UsageError(`address ${c.addr} is not attached to ${arg} (it has ${rec.addrs.join(', ')})`, { netns: arg, addr: c.addr });
        removed.push(have);
      }
    } else {
      removed = [...rec.addrs];
    }
    const remaining = rec.addrs.filter((a) => !removed.includes(a));
    if (remaining.length === 0 || gone) {
      linkRemoved = await deleteLink(this.ctx, rec.hostIfname);
      this.endpoints = this.endpoints.filter((e) => e !== rec);
      removed = [...rec.addrs];
    } else {
      await removeContainerAddrs(ns!.ctx, rec.ifname, removed);
      // the overlay route may have gone with a removed address's subnet route: put it back
      await ensureContainerAddressing(ns!.ctx, rec.ifname, remaining, this.overlayRange, this.containerMtu());
      const upd: EndpointInfo = { ...rec, addrs: remaining };
      this.endpoints = this.endpoints.map((e) => (e === rec ? upd : e));
    }
    this.counters.detaches++;
    await this.commit();
    this.log.info({ netns: arg, removed, linkRemoved, namespaceGone: gone }, 'detached');
    return { netns: rec.netns, removed, linkRemoved, namespaceGone: gone };
  }

  // ---- pods (CNI) ------------------------------------------------------------------------------

  /**
   * Attaches a pod (cni/handler.ts has allocated its address): the veth with the runtime's interface
   * name, a default route and its /32 route (host/pod-link.ts), then the record. All or nothing: a
   * failure leaves no veth and no record (the caller frees the address).
   *
   * Built for pod churn: the checks and a reservation (namespace, address, names) happen under the
   * endpoints' lock, the kernel work outside it, so pods started together are wired side by side;
   * the /32 route goes in with the veth, so the record's commit does not wait for a reconcile pass
   * (the reconciler still owns the route: its next pass finds it as desired).
   */
  async attachPod(req: PodAttachRequest): Promise<EndpointInfo> {
    const plan = await this.serial(async () => this.planPod(req));
    try {
      await this.createPodLinkOnce(plan.spec);
    } catch (e) {
      this.podsInFlight.delete(plan.id);
      this.counters.errors++;
      throw e;
    }
    return this.serial(async () => {
      this.podsInFlight.delete(plan.id);
      const info: EndpointInfo = {
        netns: req.netns, path: plan.spec.netnsPath, key: plan.key, ifname: req.ifname, hostIfname: plan.spec.hostIf, mac: plan.spec.podMac,
        addrs: [plan.spec.cidr], pod: { ...req.pod }, ident: req.ident, hostMac: plan.spec.hostMac,
      };
      this.endpoints = [...this.endpoints, info];
      try {
        await this.commit({ awaitRoutes: false });
      } catch (e) {
        this.counters.errors++;
        this.endpoints = this.endpoints.filter((x) => x !== info);
        await deletePodLink(this.ctx, plan.spec.hostIf).catch((e2: unknown) => this.log.error({ hostIf: plan.spec.hostIf, err: errMsg(e2) }, 'cleanup after a failed pod attach failed'));
        throw e;
      }
      this.counters.attaches++;
      this.log.info({ pod: req.pod, netns: req.netns, ifname: req.ifname, hostIf: plan.spec.hostIf, addr: plan.spec.cidr }, 'pod attached');
      return { ...info, addrs: [...info.addrs], pod: { ...info.pod! } };
    });
  }

  /** Under the lock: the checks against records and attaches in flight, and this one's reservation. */
  private planPod(req: PodAttachRequest): { id: string; key: string; spec: PodLinkSpec } {
    const ns = this.resolve(req.netns);
    const id = podKey(req.pod.network, req.pod.containerId, req.ifname);
    const [c] = this.parseAddrs([req.cidr]);
    const other = this.endpoints.find((e) => e.key === ns.key);
    if (other) {
      const who = other.pod ? `pod ${other.pod.containerId} (interface ${other.ifname})` : `weave attach ${other.netns}`;
      throw new WeaveError('ECONFLICT', `namespace ${req.netns} already has weave's interface ${other.ifname}, from ${who}`, { netns: req.netns });
    }
    const holder = this.endpoints.find((e) => e.addrs.some((a) => ipOf(a) === c.addr));
    if (holder) throw new WeaveError('ECONFLICT', `address ${c.addr} is already attached to ${holder.netns}`, { addr: c.addr });
    if (this.exposed.some((x) => ipOf(x.cidr) === c.addr)) throw new WeaveError('ECONFLICT', `address ${c.addr} is exposed on this host`, { addr: c.addr });
    for (const f of this.podsInFlight.values()) {
      if (f.id === id || f.key === ns.key || f.addr === c.addr) throw new WeaveError('EBUSY', `another attach for ${f.id === id ? 'this pod' : f.key === ns.key ? `namespace ${req.netns}` : `address ${c.addr}`} is in progress`, { netns: req.netns });
    }
    const hostIf = podHostIfName(id);
    const cidr = `${c.addr}/${c.len}`;
    const route: DesiredRoute = this.routeTo(c.addr, hostIf);
    const spec: PodLinkSpec = {
      hostIf, hostMac: randomMac(), podMac: randomMac(), netnsPath: ns.path, podCtx: podNetnsCtx(ns.path),
      ifname: req.ifname, mtu: this.containerMtu(), cidr, overlayRange: this.overlayRange,
      hostLines: routeBatchLines({ add: [{ ...route, onlink: false, scope: 'link' }], change: [], remove: [] }, this.routes.protocol),
    };
    this.podsInFlight.set(id, { id, key: ns.key, addr: c.addr });
    return { id, key: ns.key, spec };
  }

  /** createPodLink, once more after removing a leftover host veth of a crashed attach that no record knows. */
  private async createPodLinkOnce(spec: PodLinkSpec): Promise<void> {
    try {
      await createPodLink(this.ctx, spec);
    } catch (e) {
      const leftover = e instanceof WeaveError && e.context.exists === true && !this.endpoints.some((x) => x.hostIfname === spec.hostIf)
        && (await deletePodLink(this.ctx, spec.hostIf));
      if (!leftover) throw e;
      this.log.warn({ hostIf: spec.hostIf }, 'removed a leftover pod veth no record knows (a crashed attach); attaching again');
      await createPodLink(this.ctx, spec);
    }
  }

  /**
   * Detaches a pod: deletes its veth (found by its record, or by its derived name when an attach
   * crashed before recording it; the kernel takes its /32 route with it), then its record. Unknown
   * pods are not an error (CNI DEL); one whose attach or detach is in flight is (try again). As in
   * attachPod, the kernel work runs outside the endpoints' lock.
   */
  async detachPod(network: string, containerId: string, ifname: string): Promise<{ removed?: EndpointInfo; linkRemoved: boolean }> {
    const id = podKey(network, containerId, ifname);
    const found = await this.serial(async () => {
      if (this.podsInFlight.has(id)) throw new WeaveError('EBUSY', `an attach or detach of container ${containerId} interface ${ifname} is in progress`, { containerId, ifname });
      const rec = this.endpoints.find((x) => x.pod?.network === network && x.pod.containerId === containerId && x.ifname === ifname);
      this.podsInFlight.set(id, { id, key: rec?.key ?? '', addr: rec ? ipOf(rec.addrs[0]) : '' });
      return rec;
    });
    let linkRemoved: boolean;
    try {
      linkRemoved = await deletePodLink(this.ctx, found?.hostIfname ?? podHostIfName(id));
    } catch (e) {
      this.podsInFlight.delete(id);
      this.counters.errors++;
      throw e;
    }
    return this.serial(async () => {
      this.podsInFlight.delete(id);
      if (found) {
        this.endpoints = this.endpoints.filter((x) => x !== found);
        this.counters.detaches++;
        await this.commit({ awaitRoutes: false });
        this.log.info({ pod: found.pod, ifname, linkRemoved }, 'pod detached');
      }
      return { removed: found, linkRemoved };
    });
  }

  // ---- Docker endpoints (docker/) ---------------------------------------------------------------

  /** The Docker endpoint recorded for endpointId, if joined. */
  findDocker(endpointId: string): EndpointInfo | undefined {
    const e = this.endpoints.find((x) => x.docker?.endpointId === endpointId);
    return e && { ...e, addrs: [...e.addrs], docker: { ...e.docker! }, ...(e.container ? { container: { ...e.container } } : {}) };
  }

  /**
   * libnetwork's Join: the veth (both ends in the host namespace; Docker moves the container end into
   * the sandbox), proxy ARP and the /32 route on the host end, then the record. All or nothing: a
   * failure leaves no veth and no record. The same endpoint joined again gets its existing record
   * back when its veth is still there (a Join retried by Docker).
   */
  joinDocker(req: DockerJoinRequest): Promise<EndpointInfo & { peerIfname: string }> {
    return this.serial(async () => {
      const key = dockerEndpointKey(req.endpointId);
      const [c] = this.parseAddrs([req.cidr]);
      const hostIf = dockerHostIfName(req.endpointId);
      const peerIf = dockerPeerIfName(req.endpointId);
      const links = await listLinks(this.ctx);
      const old = this.endpoints.find((e) => e.key === key);
      if (old && links.has(old.hostIfname) && links.has(peerIf)) return { ...old, addrs: [...old.addrs], peerIfname: peerIf };
      if (old) this.endpoints = this.endpoints.filter((e) => e !== old);
      const holder = this.endpoints.find((e) => e.addrs.some((a) => ipOf(a) === c.addr));
      if (holder) throw new WeaveError('ECONFLICT', `address ${c.addr} is already attached to ${holder.docker ? `Docker endpoint ${holder.docker.endpointId.slice(0, 12)}` : holder.netns}`, { addr: c.addr });
      if (this.exposed.some((x) => ipOf(x.cidr) === c.addr)) throw new WeaveError('ECONFLICT', `address ${c.addr} is exposed on this host; hide it first`, { addr: c.addr });
      if (links.has(hostIf)) {
        this.log.warn({ hostIf, endpoint: req.endpointId }, 'removing a leftover Docker endpoint veth no record knows (a crashed Join)');
        await deleteDockerLink(this.ctx, hostIf);
      }
      const route = this.routeTo(c.addr, hostIf);
      await createDockerLink(this.ctx, {
        hostIf, peerIf, mtu: this.containerMtu(),
        hostLines: routeBatchLines({ add: [{ ...route, onlink: false, scope: 'link' }], change: [], remove: [] }, this.routes.protocol),
      });
      const info: EndpointInfo = {
        netns: req.sandboxKey, path: req.sandboxKey, key, ifname: peerIf, hostIfname: hostIf, mac: req.mac ?? '',
        addrs: [`${c.addr}/${c.len}`], ident: req.ident, docker: { networkId: req.networkId, endpointId: req.endpointId },
      };
      if (old?.container) info.container = { ...old.container };
      this.endpoints = [...this.endpoints, info];
      try {
        await this.commit({ awaitRoutes: false });
      } catch (e) {
        this.counters.errors++;
        this.endpoints = this.endpoints.filter((x) => x !== info);
        await deleteDockerLink(this.ctx, hostIf).catch((e2: unknown) => this.log.error({ hostIf, err: errMsg(e2) }, 'cleanup after a failed Docker Join failed'));
        throw e;
      }
      this.counters.attaches++;
      this.log.info({ network: req.networkId.slice(0, 12), endpoint: req.endpointId.slice(0, 12), hostIf, addr: info.addrs[0] }, 'Docker endpoint joined');
      return { ...info, addrs: [...info.addrs], peerIfname: peerIf };
    });
  }

  /** libnetwork's Leave: the veth and the record go; an unknown endpoint is not an error. */
  leaveDocker(endpointId: string): Promise<EndpointInfo | undefined> {
    return this.serial(async () => {
      const rec = this.endpoints.find((x) => x.docker?.endpointId === endpointId);
      await deleteDockerLink(this.ctx, rec?.hostIfname ?? dockerHostIfName(endpointId));
      if (!rec) return undefined;
      this.endpoints = this.endpoints.filter((x) => x !== rec);
      this.counters.detaches++;
      await this.commit({ awaitRoutes: false });
      this.log.info({ endpoint: endpointId.slice(0, 12), container: rec.container?.name }, 'Docker endpoint left');
      return rec;
    });
  }

  /** Records which container a Docker endpoint (or an attached namespace, by key) belongs to. */
  setContainer(key: string, container: { id: string; name: string }): Promise<boolean> {
    return this.serial(async () => {
      const rec = this.endpoints.find((x) => x.key === key);
      if (!rec || (rec.container?.id === container.id && rec.container.name === container.name)) return false;
      this.endpoints = this.endpoints.map((x) => (x === rec ? { ...x, container: { id: container.id, name: container.name } } : x));
      this.saveState();
      return true;
    });
  }

  /** A record for a NETNS argument whose namespace no longer resolves. */
  private findGone(arg: string): EndpointInfo | undefined {
    let p: string | undefined;
    try {
      p = netnsPathOf(parseNetnsArg(arg));
    } catch {
      return undefined; // not even a NETNS argument: nothing can be recorded under it
    }
    return this.endpoints.find((e) => e.netns === arg || e.path === p);
  }

  // ---- expose / hide -------------------------------------------------------------------------

  expose(cidrs: string[], opts: { masquerade?: boolean } = {}): Promise<ExposeResult> {
    return this.serial(async () => {
      if (!Array.isArray(cidrs) || cidrs.length === 0) throw new UsageError('expose needs an address like 10.32.0.1/12', {});
      const parsed = this.parseAddrs(cidrs);
      const added: string[] = [];
      let next = [...this.exposed];
      for (const c of parsed) {
        const cidr = `${c.addr}/${c.len}`;
        const owner = this.endpoints.find((e) => e.addrs.some((a) => ipOf(a) === c.addr));
        if (owner) throw new UsageError(`address ${c.addr} is attached to namespace ${owner.netns}; detach it first`, { addr: c.addr });
        const prev = next.find((x) => ipOf(x.cidr) === c.addr);
        if (prev && prev.cidr !== cidr) throw new UsageError(`address ${c.addr} is already exposed as ${prev.cidr}; hide it to change the prefix length`, { addr: c.addr });
        if (!prev) added.push(cidr);
        next = next.filter((x) => x !== prev);
        next.push({ cidr, masquerade: !!opts.masquerade });
      }
      const before = this.exposed;
      this.exposed = next;
      try {
        await this.programExpose();
        await sysctl(this.ctx, 'net/ipv4/ip_forward', 1);
        await this.commit();
      } catch (e) {
        this.counters.errors++;
        this.log.error({ err: errMsg(e) }, 'expose failed; restoring the previous exposed set');
        this.exposed = before;
        await this.programExpose().catch((e2: unknown) => this.log.error({ err: errMsg(e2) }, 'restoring exposed addresses failed'));
        throw e;
      }
      this.log.info({ exposed: this.exposed, added }, 'exposed');
      return { exposed: this.exposedAddrs(), added };
    });
  }

  /** Removes the given exposed addresses (by address; prefix length optional), or all of them. */
  hide(cidrs?: string[]): Promise<HideResult> {
    return this.serial(async () => {
      let removed: string[];
      if (cidrs && cidrs.length) {
        const ips = cidrs.map((c) => {
          const p = parseCidr4(c.includes('/') ? c : `${c}/32`);
          return p.addr;
        });
        for (const ip of ips) {
          if (!this.exposed.some((x) => ipOf(x.cidr) === ip)) throw new UsageError(`address ${ip} is not exposed (exposed: ${this.exposed.map((x) => x.cidr).join(', ') || 'none'})`, { addr: ip });
        }
        removed = this.exposed.filter((x) => ips.includes(ipOf(x.cidr))).map((x) => x.cidr);
      } else {
        removed = this.exposed.map((x) => x.cidr);
      }
      this.exposed = this.exposed.filter((x) => !removed.includes(x.cidr));
      await this.programExpose();
      await this.commit();
      this.log.info({ removed }, 'hidden');
      return { removed, exposed: this.exposedAddrs() };
    });
  }

  private async programExpose(): Promise<void> {
    await syncExposeLink(this.ctx, this.exposed.map((x) => ipOf(x.cidr)), this.containerMtu());
    const nets = this.exposed.filter((x) => x.masquerade).map((x) => networkCidr(parseCidr4(x.cidr)));
    await syncMasquerade(this.ctx, nets, this.overlayRange);
  }

  // ---- restart -------------------------------------------------------------------------------

  /**
   * After a router restart: drops records whose veth is gone, re-programs the rest (host side, the
   * container's addresses and routes where the namespace is still reachable), the exposed addresses and
   * the /32 routes. Returns how many endpoints were kept and dropped.
   */
  restore(): Promise<{ kept: number; dropped: number }> {
    return this.serial(async () => {
      const links = await listLinks(this.ctx);
      const mtu = this.containerMtu();
      const kept: EndpointInfo[] = [];
      let dropped = 0;
      for (const e of this.endpoints) {
        if (!links.has(e.hostIfname)) {
          dropped++;
          this.counters.staleDropped++;
          this.log.info({ netns: e.netns, hostIf: e.hostIfname }, 'endpoint veth gone (namespace deleted?); dropping its state');
          continue;
        }
        try {
          if (e.pod) {
            await this.restorePod(e, mtu);
            kept.push(e);
            continue;
          }
          if (e.docker) {
            // the container end is Docker's (in its sandbox): only the host end is ours to re-program
            await programHostSide(this.ctx, e.hostIfname, mtu);
            kept.push(e);
            continue;
          }
          await programHostSide(this.ctx, e.hostIfname, mtu);
          const ns = this.reachable(e);
          if (ns) {
            e.path = ns.path;
            await ensureContainerAddressing(ns.ctx, e.ifname, e.addrs, this.overlayRange, mtu);
          } else {
            this.log.warn({ netns: e.netns }, 'endpoint namespace not reachable by any known path; host side re-programmed only');
          }
        } catch (err) {
          this.counters.errors++;
          this.log.error({ netns: e.netns, err: errMsg(err) }, 're-programming endpoint failed; keeping its state');
        }
        kept.push(e);
      }
      this.endpoints = kept;
      await this.adoptFromKernel(links);
      if (this.endpoints.length || this.exposed.length) await sysctl(this.ctx, 'net/ipv4/ip_forward', 1);
      await this.programExpose();
      await this.commit();
      this.log.info({ kept: kept.length, dropped, recovered: this.counters.recovered, exposed: this.exposed.length }, 'endpoints restored');
      return { kept: kept.length, dropped };
    });
  }

  /** What was found damaged or missing and recovered (status, report). */
  recovery(): StateRecovery[] {
    return this.recovered.map((r) => ({ ...r }));
  }

  /**
   * Adopts container veths and exposed addresses the kernel has and no record names: the state file
   * was damaged or deleted, or a crash came between making them and committing the record.
   */
  private async adoptFromKernel(links: Map<string, unknown>): Promise<void> {
    const known = new Set(this.endpoints.map((e) => e.hostIfname));
    const veths = (await listHostVeths(this.ctx)).filter((v) => !known.has(v.ifname) && links.has(v.ifname));
    const found = veths.length ? await findContainers(veths, reachableNetns(this.getHostKey())) : new Map();
    const adopted: EndpointInfo[] = [];
    const notes: string[] = [];
    const rangeLen = parseCidr4(this.overlayRange).len;
    for (const v of veths) {
      const c = found.get(v.ifname);
      if (c && c.addrs.length) {
        adopted.push({ netns: c.ns.name ?? c.ns.path, path: c.ns.path, key: c.ns.key, ifname: c.ifname, hostIfname: v.ifname, mac: c.mac, addrs: c.addrs });
      } else if (!c && v.routes.length) {
        // the namespace is alive (the veth is) but no path reaches it: keep what the routes say, so
        // its addresses stay claimed; `weave detach <veth name>` removes it
        const addrs = v.routes.map((r) => `${r.slice(0, r.indexOf('/'))}/${rangeLen}`);
        adopted.push({ netns: v.ifname, path: '', key: `veth:${v.ifname}`, ifname: CONTAINER_IFNAME, hostIfname: v.ifname, mac: '', addrs });
        notes.push(`${v.ifname}: namespace not reachable by any path; addresses ${addrs.join(', ')} from its routes (prefix length assumed)`);
      } else {
        // a veth whose container side has no address: an attach that crashed half-way; the next attach
        // of that namespace replaces it
        notes.push(`${v.ifname}: no addresses on the container side; left for the next attach of its namespace`);
      }
    }
    const exposedAdopted = await this.adoptExposed();
    for (const e of adopted) this.log.warn({ netns: e.netns, hostIf: e.hostIfname, addrs: e.addrs }, 'endpoint recovered from the kernel (not in the state file)');
    for (const n of notes) this.log.warn({ note: n }, 'unrecorded container veth');
    this.endpoints.push(...adopted);
    this.counters.recovered += adopted.length + exposedAdopted.length;
    const fs0 = this.fileState;
    if (fs0.status === 'ok' && adopted.length === 0 && exposedAdopted.length === 0) return;
    if (fs0.status === 'missing' && adopted.length === 0 && exposedAdopted.length === 0) return;
    const got = `${adopted.length} endpoint${adopted.length === 1 ? '' : 's'} (${adopted.map((e) => e.netns).join(', ') || 'none'}) and ${exposedAdopted.length} exposed address${exposedAdopted.length === 1 ? '' : 'es'} recovered${notes.length ? `; ${notes.join('; ')}` : ''}`;
    const problem = fs0.status === 'damaged' ? fs0.problem : fs0.status === 'missing' ? 'missing (deleted?) while the kernel has weave container links' : 'did not record what the kernel has (a crash between attach and its commit?)';
    const action = fs0.status === 'damaged' ? `moved aside to ${path.basename(fs0.movedTo)}; ${got}` : got;
    const rec: StateRecovery = { file: STATE_FILE, problem, action, from: KERNEL_SOURCE, at: this.clock.now() };
    if (fs0.status === 'damaged') rec.movedTo = fs0.movedTo;
    this.recovered.push(rec);
    this.log.warn(rec, `${STATE_FILE}: ${problem}; ${action}`);
  }

  /** Exposed addresses on the expose link that no record names; masquerade and prefix from our nft chain. */
  private async adoptExposed(): Promise<ExposedAddr[]> {
    const own = (await exposeLinkAddrs(this.ctx)).own;
    const have = new Set(this.exposed.map((x) => ipOf(x.cidr)));
    const missing = own.map(ipOf).filter((ip) => !have.has(ip));
    if (missing.length === 0) return [];
    const nets = (await masqueradedNets(this.ctx)).map((n) => parseCidr4(n));
    const range = parseCidr4(this.overlayRange);
    const out: ExposedAddr[] = [];
    for (const ip of missing) {
      const n = parseCidr4(`${ip}/32`).n;
      const net = nets.find((x) => contains(cidrOf(x.n, x.len), n));
      out.push({ cidr: `${ip}/${net ? net.len : range.len}`, masquerade: !!net });
    }
    this.exposed.push(...out);
    return out;
  }

  /** A pod's link re-programmed after a restart (its default route and gateway neighbour included). */
  private async restorePod(e: EndpointInfo, mtu: number): Promise<void> {
    const ns = this.reachable(e);
    if (!ns || !e.hostMac) {
      this.log.warn({ pod: e.pod, netns: e.netns }, 'pod namespace not reachable (or no host MAC recorded); its link is left as it is');
      return;
    }
    await ensurePodLink(this.ctx, {
      hostIf: e.hostIfname, hostMac: e.hostMac, podMac: e.mac, netnsPath: ns.path, podCtx: ns.ctx,
      ifname: e.ifname, mtu, cidr: e.addrs[0], overlayRange: this.overlayRange,
    });
  }

  /** The namespace of a record by its path, or by an `ip netns` name with the same inode. */
  private reachable(e: EndpointInfo): NetnsRef | undefined {
    try {
      if (netnsKeyOfStat(fs.statSync(e.path)) === e.key) return resolveNetns(e.path, { hostKey: this.getHostKey() });
    } catch (err) {
      this.log.debug({ path: e.path, err: errMsg(err) }, 'recorded namespace path no longer valid');
    }
    const name = findNamedNetns(e.key);
    return name ? resolveNetns(name, { hostKey: this.getHostKey() }) : undefined;
  }

  // ---- internals -----------------------------------------------------------------------------

  private containerMtu(): number {
    const m = this.mtu();
    if (!Number.isInteger(m) || m < 576 || m > 65535) throw new WeaveError('EINVAL', `container MTU ${m} out of range 576..65535`, { mtu: m });
    return m;
  }

  private parseAddrs(cidrs: string[]): Cidr4[] {
    const out: Cidr4[] = [];
    for (const s of cidrs) {
      const c = parseCidr4(s);
      if (c.len === 0) throw new UsageError(`address ${s} has prefix length 0; give the address with its subnet, like 10.32.0.5/12`, { value: s });
      const host = c.n & ~(c.len === 32 ? 0 : (0xffffffff << (32 - c.len)) >>> 0);
      if (c.len < 31 && (host === 0 || (host >>> 0) === ((~(0xffffffff << (32 - c.len))) >>> 0))) {
        throw new UsageError(`address ${s} is the ${host === 0 ? 'network' : 'broadcast'} address of its subnet; pick a host address`, { value: s });
      }
      if (c.n >>> 28 >= 14) throw new UsageError(`address ${s} is multicast or reserved (${formatIp4(c.n)}); give a unicast address`, { value: s });
      if (c.n >>> 24 === 127 || c.n >>> 24 === 0) throw new UsageError(`address ${s} is not usable on an interface`, { value: s });
      if (!out.some((o) => o.n === c.n)) out.push(c);
    }
    return out;
  }

  private getHostKey(): string {
    if (this.hostKey === undefined) {
      const p = this.ctx.netns === undefined ? '/proc/self/ns/net' : this.ctx.netns.startsWith('/') ? this.ctx.netns : netnsPathOf({ kind: 'name', name: this.ctx.netns });
      this.hostKey = netnsKeyOfStat(fs.statSync(p));
    }
    return this.hostKey;
  }

  private resolve(arg: string): NetnsRef {
    return resolveNetns(arg, { hostKey: this.getHostKey() });
  }

  private desiredRoutes(): DesiredRoute[] {
    const out: DesiredRoute[] = [];
    for (const e of this.endpoints) for (const c of e.addrs) out.push(this.routeTo(ipOf(c), e.hostIfname));
    return out;
  }

  /** The host's route to an endpoint's address. */
  private routeTo(ip: string, dev: string): DesiredRoute {
    const r: DesiredRoute = { dst: `${ip}/32`, dev, scope: 'link' };
    // without a src the host would pick its underlay address, which the container cannot answer
    const src = this.hostSource();
    if (src) r.src = src;
    return r;
  }

  /**
   * Persists, hands the routes over and waits for one reconcile, then tells listeners. A failed
   * reconcile (possibly another owner's route) does not fail the operation: the state is recorded, the
   * reconciler logged and counted it and retries on its timer. Pods' routes are made with their veth
   * (or go with it), so their commits leave the reconcile to the reconciler's debounced pass; and
   * their records need no fsync: what a power loss could lose is a record of a namespace the same
   * power loss destroyed (a pod's namespace does not outlive its host), and a router crash alone
   * keeps the renamed file.
   */
  private async commit(opts: { awaitRoutes?: boolean } = {}): Promise<void> {
    this.saveState();
    this.routes.setDesired(ENDPOINTS_OWNER, this.desiredRoutes());
    if (opts.awaitRoutes !== false) {
      try {
        await this.routes.reconcile();
      } catch (e) {
        this.counters.errors++;
        this.log.warn({ err: errMsg(e) }, 'routes not fully applied yet; the reconciler retries');
      }
    }
    this.emit('changed', { served: this.servedPrefixes() });
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.lock.then(fn, fn);
    this.lock = p.catch(() => undefined); // the caller gets the error; the queue carries on
    return p;
  }

  private statePath(): string { return path.join(this.dataDir, STATE_FILE); }

  /** Durable before a change is reported done (lib/state-file.ts: write, fsync, rename, fsync the dir). */
  private saveState(): void {
    const st: PersistedState = { version: STATE_VERSION, endpoints: this.endpoints, exposed: this.exposed };
    fs.mkdirSync(this.dataDir, { recursive: true });
    writeStateFile(this.statePath(), STATE_KIND, JSON.stringify(st, null, 2) + '\n', { owner: this.owner });
  }

  private loadState(): void {
    const file = this.statePath();
    const r = readStateFile(file, STATE_KIND, { legacy: true });
    if (r.status === 'missing') return;
    let problem: string;
    if (r.status === 'ok') {
      try {
        const st = validateState(JSON.parse(r.payload.toString('utf8')));
        this.endpoints = st.endpoints;
        this.exposed = st.exposed;
        this.fileState = { status: 'ok' };
        return;
      } catch (e) {
        problem = contentProblem(r.legacy, e);
      }
    } else {
      problem = r.problem;
    }
    // keep the bad file for a human; restore() recovers what the kernel has
    const movedTo = moveAside(file, this.clock.now());
    this.fileState = { status: 'damaged', problem, movedTo };
    this.counters.errors++;
    this.log.error({ file, problem, movedTo }, `${STATE_FILE} is damaged (${problem}): moved aside; endpoints are recovered from the kernel`);
  }
}

function validatePod(v: unknown): PodInfo {
  const bad = (why: string): never => { throw new WeaveError('ESTATE', `endpoint state: pod ${why}`); };
  const r = v as Record<string, unknown>;
  if (!r || typeof r !== 'object' || typeof r.network !== 'string' || typeof r.containerId !== 'string') bad('needs network and containerId');
  const pod: PodInfo = { network: r.network as string, containerId: r.containerId as string };
  for (const k of ['namespace', 'name', 'infraContainerId'] as const) {
    if (r[k] === undefined) continue;
    if (typeof r[k] !== 'string') bad(`${k} must be a string`);
    pod[k] = r[k] as string;
  }
  return pod;
}

/** Validates a parsed endpoints.json; throws WeaveError on anything unexpected. */
export function validateState(v: unknown): PersistedState {
  const bad = (why: string): never => { throw new WeaveError('ESTATE', `endpoint state: ${why}`); };
  if (!v || typeof v !== 'object') bad('not an object');
  const o = v as Record<string, unknown>;
  if (o.version !== STATE_VERSION) bad(`unsupported version ${describeValue(o.version)}`);
  if (!Array.isArray(o.endpoints) || !Array.isArray(o.exposed)) bad('endpoints/exposed must be arrays');
  const isStr = (x: unknown): x is string => typeof x === 'string';
  const endpoints: EndpointInfo[] = [];
  for (const e of o.endpoints as unknown[]) {
    const r = e as Record<string, unknown>;
    if (!r || typeof r !== 'object') bad('endpoint is not an object');
    for (const f of ['netns', 'path', 'key', 'ifname', 'hostIfname', 'mac']) if (!isStr(r[f])) bad(`endpoint.${f} must be a string`);
    if (!/^[^\s/]{1,15}$/.test(r.hostIfname as string) || !/^[^\s/]{1,15}$/.test(r.ifname as string)) bad('bad interface name');
    if (!Array.isArray(r.addrs) || !r.addrs.every((a) => isStr(a) && canonicalPrefix(a) !== undefined && a.includes('/'))) bad('endpoint.addrs must be CIDRs');
    if (r.name !== undefined && !isStr(r.name)) bad('endpoint.name must be a string');
    const info: EndpointInfo = { netns: r.netns as string, path: r.path as string, key: r.key as string, ifname: r.ifname as string, hostIfname: r.hostIfname as string, mac: r.mac as string, addrs: [...(r.addrs as string[])] };
    if (r.name !== undefined) info.name = r.name as string;
    if (r.ident !== undefined) info.ident = isStr(r.ident) ? r.ident : bad('endpoint.ident must be a string');
    if (r.hostMac !== undefined) info.hostMac = isStr(r.hostMac) ? r.hostMac : bad('endpoint.hostMac must be a string');
    if (r.pod !== undefined) info.pod = validatePod(r.pod);
    if (r.docker !== undefined) {
      const d = r.docker as Record<string, unknown>;
      if (!d || typeof d !== 'object' || !isStr(d.networkId) || !isStr(d.endpointId)) bad('endpoint.docker needs networkId and endpointId');
      info.docker = { networkId: d.networkId as string, endpointId: d.endpointId as string };
    }
    if (r.container !== undefined) {
      const c = r.container as Record<string, unknown>;
      if (!c || typeof c !== 'object' || !isStr(c.id) || !isStr(c.name)) bad('endpoint.container needs id and name');
      info.container = { id: c.id as string, name: c.name as string };
    }
    endpoints.push(info);
  }
  const exposed: ExposedAddr[] = [];
  for (const x of o.exposed as unknown[]) {
    const r = x as Record<string, unknown>;
    if (!r || !isStr(r.cidr) || canonicalPrefix(r.cidr) === undefined || typeof r.masquerade !== 'boolean') bad('exposed entries need cidr and masquerade');
    exposed.push({ cidr: r.cidr as string, masquerade: r.masquerade as boolean });
  }
  return { version: STATE_VERSION, endpoints, exposed };
}
