// weaveDNS in the router: the record store gossiped over the mesh, the DNS server on the host's DNS
// address, the attach/detach hooks that register containers by name, and the API + CLI for records.
//
// Containers reach their own host's server at one link-local address (169.254.53.53:53 by default):
// the router puts it on the expose bridge, attach routes it on-link inside the container and, for a
// namespace named in `ip netns`, writes /etc/netns/NAME/resolv.conf (nameserver, search domain,
// ndots:1), which `ip netns exec` bind-mounts. Other runtimes (a PID or a path given to attach) must
// give the container that resolv.conf themselves: `nameserver 169.254.53.53`, `search weave.local`.
import * as path from 'path';
import { isIPv4 } from 'net';
import type { Command } from 'commander';
import { UsageError, WeaveError, errMsg } from '../lib/errors';
import { componentLogger, Logger } from '../lib/log';
import {
  DnsServer, DnsStore, FileDnsPersistence, ResolvConfWatcher, attachDnsToMesh, dnsStatus, normalizeName, writeDnsMetrics,
} from '../dns';
import type { DnsStatus } from '../dns';
import {
  DnsAccess, addressElsewhere, containerResolvConf, ensureContainerDnsRoute, removeNetnsResolvConf, syncDnsAddr, writeNetnsResolvConf,
} from '../host/dns-addr';
import type { HostCtx } from '../host/ip';
import type { EndpointInfo } from '../router/endpoints';
import type { AttachRequest, DaemonContext, Subsystem, SubsystemModule } from './subsystem';

export const DEFAULT_DNS_LISTEN = '169.254.53.53:53';
export const DEFAULT_DNS_DOMAIN = 'weave.local.';
export const DEFAULT_DNS_TTL = 1;
export const DNS_RECORDS_FILE = 'dns.msgpack';
/** The bridge is only a place for local addresses; its MTU matters to nothing but must be valid. */
const BRIDGE_MTU = 1500;
const MAX_TTL = 86_400;

export interface DnsFlags {
  enabled: boolean;
  listen: { ip: string; port: number };
  /** lowercase, with the trailing dot */
  domain: string;
  ttl: number;
}

/** Validates and normalises the router's DNS flags (commander keys dns, dnsListenAddress, dnsDomain, dnsTtl). */
export function parseDnsFlags(f: Record<string, unknown>): DnsFlags {
  const listenS = String(f.dnsListenAddress ?? DEFAULT_DNS_LISTEN).trim();
  const m = /^([^:]+)(?::(\d+))?$/.exec(listenS);
  if (!m || !isIPv4(m[1])) throw new UsageError(`invalid --dns-listen-address "${listenS}": expected IPv4[:PORT] like ${DEFAULT_DNS_LISTEN}`);
  const port = m[2] === undefined ? 53 : Number(m[2]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new UsageError(`invalid --dns-listen-address "${listenS}": port must be 1-65535`);
  let domain: string;
  try {
    domain = normalizeName(String(f.dnsDomain ?? DEFAULT_DNS_DOMAIN));
  } catch (e) {
    throw new UsageError(`invalid --dns-domain: ${errMsg(e)}`);
  }
  const ttlS = String(f.dnsTtl ?? DEFAULT_DNS_TTL);
  const ttl = Number(ttlS);
  if (!/^\d+$/.test(ttlS) || ttl > MAX_TTL) throw new UsageError(`invalid --dns-ttl "${ttlS}": whole seconds 0-${MAX_TTL}`);
  return { enabled: f.dns !== false, listen: { ip: m[1], port }, domain, ttl };
}

/** `web` -> `web.weave.local.`; a name with a dot is taken as a FQDN. Throws UsageError when invalid. */
export function qualify(name: string, domain: string): string {
  const n = name.includes('.') ? name : `${name}.${domain}`;
  return normalizeName(n);
}

function inDomain(fqdn: string, domain: string): boolean {
  return fqdn === domain || fqdn.endsWith(`.${domain}`);
}

const ipOf = (cidr: string): string => (cidr.includes('/') ? cidr.slice(0, cidr.indexOf('/')) : cidr);

function addrList(body: any, key: string, required: boolean): string[] {
  const v = body?.[key];
  if (v === undefined && !required) return [];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string' && x.length > 0)) throw new UsageError(`"${key}" must be a list of IPv4 addresses`);
  const out = v.map((a: string) => ipOf(a.trim()));
  for (const a of out) if (!isIPv4(a)) throw new UsageError(`"${a}" is not an IPv4 address`);
  return out;
}

/** Where a container's namespace is entered for ip commands: by its `ip netns` name when it has one, else by path. */
function containerCtx(ep: EndpointInfo): { ctx: HostCtx; name?: string } {
  // the same test parseNetnsArg applies to a name; a recorded argument was valid when attached
  if (/^[A-Za-z0-9_.\-]+$/.test(ep.netns) && !/^\d+$/.test(ep.netns) && ep.netns !== '.' && ep.netns !== '..') {
    return { ctx: { netns: ep.netns }, name: ep.netns };
  }
  return { ctx: { netns: ep.path } };
}

export interface DnsReport extends DnsStatus {
  summary: Record<string, string | number>;
  ttl: number;
  counters?: Record<string, number>;
  /** containerId -> the NETNS argument it was attached with, for this host's containers */
  containers: Record<string, string>;
}

export class DnsSubsystem implements Subsystem {
  readonly name = 'dns';
  readonly store: DnsStore;
  readonly server: DnsServer | null;
  private readonly flags: DnsFlags;
  private readonly log: Logger;
  private readonly resolv: ResolvConfWatcher;
  private readonly glue: { detach: () => void };
  /** the address containers are pointed at; null when containers cannot use the server (off, wildcard, loopback) */
  private containerAddr: string | null = null;
  private readonly writtenResolv = new Set<string>();
  /** only this host and its containers are answered (nft guard + the server's source check) */
  readonly access: DnsAccess;
  readonly counters = { hookErrors: 0, resolvSkipped: 0, staleRemoved: 0 };

  constructor(private readonly ctx: DaemonContext, flags: DnsFlags) {
    this.flags = flags;
    this.log = componentLogger(ctx.root, 'dns');
    this.store = new DnsStore({
      self: ctx.identity.name,
      clock: ctx.clock,
      log: this.log,
      persistence: new FileDnsPersistence(path.join(ctx.cfg.dataDir, DNS_RECORDS_FILE)),
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
    this.registerApi();
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

  metrics(m: Parameters<NonNullable<Subsystem['metrics']>>[0]): void {
    writeDnsMetrics(m, this.store, this.server);
    m.counter('weave_dns_hook_errors_total', 'attach/detach DNS steps that failed (route, resolv.conf, records)', this.counters.hookErrors);
    m.counter('weave_dns_guard_dropped_total', 'DNS packets the nft guard dropped: from neither this host nor its containers', this.access.stats().guard?.dropped ?? 0);
    m.counter('weave_dns_stale_records_removed_total', 'own records removed because their container is no longer attached', this.counters.staleRemoved);
  }

  async afterAttach(req: AttachRequest, ep: EndpointInfo): Promise<void> {
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

  async afterDetach(netns: string, result: { removed: string[]; linkRemoved: boolean; namespaceGone: boolean }, before: EndpointInfo | undefined): Promise<void> {
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
  private async prepareContainer(ep: EndpointInfo): Promise<void> {
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

  private hookFailed(step: string, ep: EndpointInfo, e: unknown): void {
    this.counters.hookErrors++;
    this.log.error({ step, netns: ep.netns, err: errMsg(e) }, 'DNS set-up for a container failed; names still resolve through other servers');
  }

  private registerApi(): void {
    const api = this.ctx.api;
    api.add('POST', '/dns/add', ({ body }) => {
      const addrs = addrList(body, 'addrs', true);
      if (addrs.length === 0) throw new UsageError('dns-add: give at least one address');
      if (typeof body?.name !== 'string' || !body.name) throw new UsageError('dns-add: give the name with -h FQDN');
      const fqdn = qualify(body.name, this.flags.domain);
      if (!inDomain(fqdn, this.flags.domain)) throw new UsageError(`dns-add: ${fqdn} is outside the weaveDNS domain ${this.flags.domain}`);
      for (const a of addrs) this.store.add(fqdn, a);
      return { name: fqdn, addresses: this.store.lookup(fqdn) };
    });
    api.add('POST', '/dns/remove', ({ body }) => {
      const addrs = addrList(body, 'addrs', false);
      const name = body?.name === undefined || body.name === '' ? undefined : body.name;
      if (name !== undefined && typeof name !== 'string') throw new UsageError('"name" must be a string');
      if (addrs.length === 0 && name === undefined) throw new UsageError('dns-remove: give addresses and/or -h FQDN');
      const fqdn = name === undefined ? undefined : qualify(name, this.flags.domain);
      let removed = 0;
      if (addrs.length === 0) removed = this.store.remove({ name: fqdn });
      for (const a of addrs) removed += this.store.remove({ name: fqdn, addr: a });
      return { removed };
    });
    api.add('GET', '/dns/lookup', ({ query }) => {
      const name = query.get('name');
      if (!name) throw new UsageError('dns-lookup: give a name');
      const fqdn = qualify(name, this.flags.domain);
      const addresses = this.store.lookup(fqdn);
      if (addresses.length === 0) throw new WeaveError('ENOTFOUND', `no weaveDNS record for ${fqdn}`, { name: fqdn });
      return { name: fqdn, addresses };
    });
    api.add('GET', '/dns', () => this.report());
  }
}

function pad(s: string, n: number): string {
  return s.length >= n ? s : s + ' '.repeat(n - s.length);
}

/** `weave status dns`: one line per live record: name, address, origin peer, container. */
export function renderDnsStatus(report: any): string {
  const d = report?.dns as DnsReport | undefined;
  if (!d || !Array.isArray(d.entries)) return 'weaveDNS is not running in this router\n';
  const lines = d.entries.filter((e) => !e.tombstone).map((e) => {
    const cont = e.containerId === undefined ? '-' : (d.containers?.[e.containerId] ?? e.containerId);
    return `${pad(e.hostname, 30)} ${pad(e.address, 15)} ${pad(e.origin, 17)} ${cont}`;
  });
  return lines.map((l) => `${l.trimEnd()}\n`).join('');
}

export const dnsModule: SubsystemModule = {
  name: 'dns',
  addRouterFlags(cmd: Command): void {
    cmd
      .option('--dns-listen-address <ip:port>', 'address of the DNS server (put on the weave bridge, routed into containers)', DEFAULT_DNS_LISTEN)
      .option('--no-dns', 'do not run the DNS server (records are still gossiped)')
      .option('--dns-domain <domain>', 'the domain weaveDNS answers for', DEFAULT_DNS_DOMAIN)
      .option('--dns-ttl <seconds>', 'TTL of weaveDNS answers', String(DEFAULT_DNS_TTL));
  },
  checkFlags(flags: Record<string, unknown>): void {
    parseDnsFlags(flags);
  },
  addCommands(program, client): void {
    program.command('dns-add').description('add weaveDNS records: IP... -h FQDN')
      .helpOption('--help', 'display help for command')
      .argument('<addrs...>', 'IPv4 addresses')
      .requiredOption('-h, --hostname <fqdn>', 'the name (without a dot: in the weaveDNS domain)')
      .option('--http-addr <host:port>', 'HTTP API address')
      .action(async (addrs: string[], o: { hostname: string; httpAddr?: string }) => {
        const r = await client(o).request<{ name: string; addresses: string[] }>('POST', '/dns/add', { addrs, name: o.hostname });
        process.stdout.write(`${r.name} ${r.addresses.join(' ')}\n`);
      });
    program.command('dns-remove').description('remove weaveDNS records of this peer: IP... [-h FQDN], or -h FQDN')
      .helpOption('--help', 'display help for command')
      .argument('[addrs...]', 'IPv4 addresses')
      .option('-h, --hostname <fqdn>', 'only records of this name')
      .option('--http-addr <host:port>', 'HTTP API address')
      .action(async (addrs: string[], o: { hostname?: string; httpAddr?: string }) => {
        const r = await client(o).request<{ removed: number }>('POST', '/dns/remove', { addrs, name: o.hostname });
        if (r.removed === 0) throw new WeaveError('ENOTFOUND', 'no matching weaveDNS record of this peer');
      });
    program.command('dns-lookup').description('the addresses weaveDNS holds for a name')
      .argument('<name>', 'a name (without a dot: in the weaveDNS domain)')
      .option('--http-addr <host:port>', 'HTTP API address')
      .action(async (name: string, o: { httpAddr?: string }) => {
        const r = await client(o).request<{ addresses: string[] }>('GET', `/dns/lookup?name=${encodeURIComponent(name)}`);
        for (const a of r.addresses) process.stdout.write(`${a}\n`);
      });
  },
  create(ctx: DaemonContext): Subsystem {
    return new DnsSubsystem(ctx, parseDnsFlags(ctx.flags));
  },
  statusViews: { dns: renderDnsStatus },
};
