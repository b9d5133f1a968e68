// weaveDNS in the router: the record store gossiped over the mesh, the DNS server on the host's DNS
// address, the attach/detach hooks that register containers by name, and the API + CLI for records.
//
// Containers reach their own host's server at one link-local address (169.254.53.53:53 by default):
// the router puts it on the expose bridge, attach routes it on-link inside the container and, for a
// namespace named in `ip netns`, writes /etc/netns/NAME/resolv.conf (nameserver, search domain,
// ndots:1), which `ip netns exec` bind-mounts. Other runtimes (a PID or a path given to attach) must
// give the container that resolv.conf themselves: `nameserver 169.254.53.53`, `search weave.local`.
import * as path from 'path';
import type { Registry } from 'prom-client';
import { UsageError, errMsg } from '../lib/errors';
import { componentLogger, type Logger } from '../lib/log';
import { counterFrom } from '../lib/metrics';
import type { ApiRoute, AttachRequest, AttachedEndpoint, DetachOutcome, NameBook, Subsystem, SubsystemModule } from '../lib/subsystem';
import type { PeerName } from '../mesh/peer';
import { DnsStore, FileDnsPersistence, normalizeName } from './records';
import { DnsServer } from './server';
import { ResolvConfWatcher } from './resolvconf';
import { attachDnsToMesh, type DnsMeshLike } from './mesh-glue';
import { dnsStatus, registerDnsMetrics } from './report';
import { addDnsCommands } from './cli';
import { addDnsFlags, parseDnsFlags, type DnsConfig } from './flags';
import { dnsRoutes } from './http';
import { renderDnsStatus, type DnsReport } from './views';
import {
  DnsAccess, addressElsewhere, containerResolvConf, ensureContainerDnsRoute, removeNetnsResolvConf, syncDnsAddr, writeNetnsResolvConf,
} from '../host/dns-addr';
import type { HostCtx } from '../host/ip';
import type { Clock } from '../lib/clock';
import type { StateRecovery } from '../lib/state-file';

export const DNS_RECORDS_FILE = 'dns.msgpack';
/** The bridge is only a place for local addresses; its MTU matters to nothing but must be valid. */
const BRIDGE_MTU = 1500;

/** What weaveDNS needs from the daemon (the daemon's context satisfies it). */
export interface DnsContext {
  cfg: { dataDir: string; dns: DnsConfig };
  root: Logger;
  clock: Clock;
  identity: { name: PeerName };
  mesh: DnsMeshLike & { off(event: 'peersChanged', fn: () => void): unknown };
  hostCtx: HostCtx;
  endpoints: {
    list(): AttachedEndpoint[];
    on(event: 'changed', fn: () => void): unknown;
    off(event: 'changed', fn: () => void): unknown;
  };
}

/** `web` -> `web.weave.local.`; a name with a dot is taken as a FQDN. Throws UsageError when invalid. */
export function qualify(name: string, domain: string): string {
  const n = name.includes('.') ? name : `${name}.${domain}`;
  return normalizeName(n);
}

const ipOf = (cidr: string): string => (cidr.includes('/') ? cidr.slice(0, cidr.indexOf('/')) : cidr);

/** Where a container's namespace is entered for ip commands: by its `ip netns` name when it has one, else by path. */
function containerCtx(ep: AttachedEndpoint): { ctx: HostCtx; name?: string } {
  // the same test parseNetnsArg applies to a name; a recorded argument was valid when attached
  if (/^[A-Za-z0-9_.\-]+$/.test(ep.netns) && !/^\d+$/.test(ep.netns) && ep.netns !== '.' && ep.netns !== '..') {
    return { ctx: { netns: ep.netns }, name: ep.netns };
  }
  return { ctx: { netns: ep.path } };
}

export class DnsSubsystem implements Subsystem {
  readonly name = 'dns';
  readonly store: DnsStore;
  readonly server: DnsServer | null;
  private readonly flags: DnsConfig;
  private readonly log: Logger;
  private readonly resolv: ResolvConfWatcher;
  private readonly glue: { detach: () => void };
  /** the address containers are pointed at; null when containers cannot use the server (off, wildcard, loopback) */
  private containerAddr: string | null = null;
  private readonly writtenResolv = new Set<string>();
  /** only this host and its containers are answered (nft guard + the server's source check) */
  readonly access: DnsAccess;
  readonly counters = { hookErrors: 0, resolvSkipped: 0, staleRemoved: 0 };

  constructor(private readonly ctx: DnsContext) {
    const flags = ctx.cfg.dns;
    this.flags = flags;
    this.log = componentLogger(ctx.root, 'dns');
    this.store = new DnsStore({
      self: ctx.identity.name,
      clock: ctx.clock,
      log: this.log,
      persistence: new FileDnsPersistence(path.join(ctx.cfg.dataDir, DNS_RECORDS_FILE)),
      // our records handed back by peers after our file was lost: drop those of containers gone meanwhile
      onOwnRelearned: () => this.removeStale(),
    });
    this.glue = attachDnsToMesh(this.store, ctx.mesh);
    this.resolv = new ResolvConfWatcher({ path: '/etc/resolv.conf', clock: ctx.clock, log: this.log, exclude: [flags.listen.ip] });
    this.access = new DnsAccess({ ctx: ctx.hostCtx, clock: ctx.clock, log: this.log, listen: flags.listen, endpoints: ctx.endpoints });
    this.server = flags.enabled
      ? new DnsServer({
        listenAddress: flags.listen.ip,
        port: flags.listen.port,
        domain: flags.domain,
        ttl: flags.ttl,
        upstream: () => this.resolv.nameservers(),
        store: this.store,
        clock: ctx.clock,
        log: this.log,
        allowSource: (a) => this.access.allows(a),
      })
      : null;
  }

  /**
   * Names for containers attached by another subsystem (the Docker driver), keyed like endpoints'
   * records so removeStale() keeps them exactly while their endpoint exists.
   */
  readonly names: NameBook = {
    register: (key, name, addrs) => {
      const fqdn = qualify(name, this.flags.domain);
      const want = new Set(addrs.map(ipOf));
      for (const e of this.store.all()) {
        if (e.origin !== this.store.self || e.tombstone || e.containerId !== key) continue;
        if (e.name !== fqdn || !want.has(e.addr)) this.store.remove({ name: e.name, addr: e.addr, containerId: key });
      }
      for (const a of want) this.store.add(fqdn, a, key);
      this.log.info({ key, name: fqdn, addrs: [...want] }, 'container registered in weaveDNS');
      return fqdn;
    },
    unregister: (key) => this.store.removeContainer(key),
  };

  /** the weaveDNS domain, lowercase with the trailing dot */
  get domain(): string {
    return this.flags.domain;
  }

  apiRoutes(): ApiRoute[] {
    return dnsRoutes(this);
  }

  async start(): Promise<void> {
    this.store.updatePeers(this.ctx.mesh.peerNames());
    this.store.start();
    this.removeStale();
    const ip = this.flags.listen.ip;
    if (!this.server) {
      await syncDnsAddr(this.ctx.hostCtx, null, BRIDGE_MTU);
      this.log.info('DNS server off (--no-dns): records are still gossiped');
      return;
    }
    const wildcard = ip === '0.0.0.0' || ip.startsWith('127.');
    if (wildcard) {
      await syncDnsAddr(this.ctx.hostCtx, null, BRIDGE_MTU);
    } else {
      const other = await addressElsewhere(this.ctx.hostCtx, ip);
      await syncDnsAddr(this.ctx.hostCtx, other ? null : ip, BRIDGE_MTU);
      if (other) this.log.info({ ip, dev: other }, 'DNS address already on another interface: using it there');
      this.containerAddr = ip;
    }
    await this.access.start();
    await this.server.start();
    // endpoints restored before us: give running containers the route (a fresh host, or a changed address)
    for (const ep of this.ctx.endpoints.list()) await this.prepareContainer(ep).catch((e: unknown) => this.hookFailed('restore', ep, e));
  }

  async stop(): Promise<void> {
    this.glue.detach();
    this.store.stop();
    await this.server?.stop();
    await this.access.stop();
  }

  async reset(): Promise<void> {
    // tombstones go out now, so peers drop our names before the topology tells them we left
    const own = this.store.all().filter((e) => e.origin === this.store.self && !e.tombstone);
    for (const e of own) this.store.remove({ name: e.name, addr: e.addr });
    for (const n of [...this.writtenResolv]) removeNetnsResolvConf(n);
    await this.server?.stop();
    await this.access.stop();
    await syncDnsAddr(this.ctx.hostCtx, null, BRIDGE_MTU);
  }

  recovery(): StateRecovery[] {
    return this.store.recovery();
  }

  report(): DnsReport {
    const st = dnsStatus(this.store, this.server, this.resolv.nameservers());
    const containers: Record<string, string> = {};
    for (const ep of this.ctx.endpoints.list()) containers[ep.key] = ep.netns;
    const live = st.entries.length;
    const summary: Record<string, string | number> = {
      Domain: this.flags.domain,
      Listen: st.address ?? 'off (--no-dns)',
      Upstream: st.upstream.length ? st.upstream.join(', ') : 'none',
      TTL: this.flags.ttl,
      Entries: live,
    };
    const out: DnsReport = { ...st, summary, ttl: this.flags.ttl, containers };
    if (this.server) out.counters = { ...this.server.counters, guardDropped: this.access.stats().guard?.dropped ?? 0 } as unknown as Record<string, number>;
    return out;
  }

  metrics(reg: Registry): void {
    registerDnsMetrics(reg, this.store, this.server);
    counterFrom(reg, 'weave_dns_hook_errors_total', 'Container DNS set-up steps at attach or detach that failed (route to the DNS address, resolv.conf, records); see the log.', () => this.counters.hookErrors);
    counterFrom(reg, 'weave_dns_guard_dropped_total', 'DNS packets the nftables guard dropped: from neither this host nor its containers.', () => this.access.stats().guard?.dropped ?? 0);
    counterFrom(reg, 'weave_dns_stale_records_removed_total', 'Records of this host removed because their container is no longer attached.', () => this.counters.staleRemoved);
  }

  async afterAttach(req: AttachRequest, ep: AttachedEndpoint): Promise<void> {
    await this.prepareContainer(ep).catch((e: unknown) => this.hookFailed('attach', ep, e));
    const name = req.name ?? ep.name;
    if (name === undefined) return;
    let fqdn: string;
    try {
      fqdn = qualify(name, this.flags.domain);
    } catch (e) {
      throw new UsageError(`${ep.netns} is attached, but its name is not registered in weaveDNS: ${errMsg(e)}`, { netns: ep.netns, name });
    }
    const want = new Set(ep.addrs.map(ipOf));
    // a re-attach under another name, or with fewer addresses, replaces what the container had
    for (const e of this.store.all()) {
      if (e.origin !== this.store.self || e.tombstone || e.containerId !== ep.key) continue;
      if (e.name !== fqdn || !want.has(e.addr)) this.store.remove({ name: e.name, addr: e.addr, containerId: ep.key });
    }
    for (const a of want) this.store.add(fqdn, a, ep.key);
    this.log.info({ netns: ep.netns, name: fqdn, addrs: [...want] }, 'container registered in weaveDNS');
  }

  async afterDetach(netns: string, result: DetachOutcome, before: AttachedEndpoint | undefined): Promise<void> {
    let n = 0;
    if (before && (result.linkRemoved || result.namespaceGone || result.removed.length >= before.addrs.length)) {
      n = this.store.removeContainer(before.key);
      const { name } = containerCtx(before);
      if (name && removeNetnsResolvConf(name)) this.writtenResolv.delete(name);
    } else if (before) {
      for (const c of result.removed) n += this.store.remove({ containerId: before.key, addr: ipOf(c) });
    }
    if (n) this.log.info({ netns, records: n }, 'container records removed from weaveDNS');
    // detached under another spelling of the namespace (before unknown): whatever is no longer attached goes
    this.removeStale();
  }

  /** Route to the DNS address and resolv.conf for a named namespace. */
  private async prepareContainer(ep: AttachedEndpoint): Promise<void> {
    if (!this.server || this.containerAddr === null) return;
    const { ctx, name } = containerCtx(ep);
    await ensureContainerDnsRoute(ctx, ep.ifname, this.containerAddr);
    if (!name) return;
    const ns = this.flags.listen.port === 53 ? this.containerAddr : null;
    if (ns === null) return; // glibc only speaks to port 53: a non-standard port needs a forwarder in the container
    if (writeNetnsResolvConf(name, containerResolvConf(ns, this.flags.domain))) {
      this.writtenResolv.add(name);
    } else {
      this.counters.resolvSkipped++;
      this.log.warn({ netns: name }, `/etc/netns/${name}/resolv.conf exists and was not written by weave: left as it is`);
    }
  }

  /** Own records of containers that are no longer attached (their namespace died while we were down). */
  private removeStale(): void {
    const keys = new Set(this.ctx.endpoints.list().map((e) => e.key));
    const gone = new Set<string>();
    for (const e of this.store.all()) {
      if (e.origin === this.store.self && !e.tombstone && e.containerId !== undefined && !keys.has(e.containerId)) gone.add(e.containerId);
    }
    let n = 0;
    for (const id of gone) n += this.store.removeContainer(id);
    this.counters.staleRemoved += n;
    if (gone.size) this.log.info({ containers: gone.size, records: n }, 'records of containers no longer attached removed');
  }

  private hookFailed(step: string, ep: AttachedEndpoint, e: unknown): void {
    this.counters.hookErrors++;
    this.log.error({ step, netns: ep.netns, err: errMsg(e) }, 'DNS set-up for a container failed; names still resolve through other servers');
  }
}

export const dnsModule: SubsystemModule<DnsConfig, DnsContext> = {
  name: 'dns',
  flags: { add: addDnsFlags, parse: parseDnsFlags },
  commands: addDnsCommands,
  views: { dns: renderDnsStatus },
  create: (ctx) => new DnsSubsystem(ctx),
};
