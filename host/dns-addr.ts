// Kernel state for weaveDNS: the DNS address on the host and the route to it inside containers.
//
// Containers reach their own host's DNS server at one fixed address (169.254.53.53 by default). The
// host carries it as a /32 on the expose bridge "weave", labelled "weave:dns" so expose/hide (which
// manage exactly their own addresses there) leave it alone; a container routes it on-link via ethwe
// and the host answers ARP for it (a local address, arp_ignore=0), as for the rest of the overlay.
//
// Only this host and its containers are answered (DnsAccess): the kernel drops DNS to the server from
// any other interface (host/guard.ts dns-guard), and the server refuses sources that are neither one
// of the host's own addresses nor a container's attached here.
import * as fs from 'fs';
import * as path from 'path';
import type { Clock, TimerHandle } from '../lib/clock';
import { errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';
import { EXPOSE_LINK, ensureExposeLinkLines, exposeLinkAddrs } from './expose';
import { GuardReconciler, dnsGuardSpec, type GuardStats } from './guard';
import { HostCtx, HostError, ipBatch, ipJson } from './ip';

export const DNS_ADDR_LABEL = `${EXPOSE_LINK}:dns`;
/** Marks resolv.conf files we wrote, so we never overwrite or delete one somebody else made. */
export const RESOLV_MARKER = '# written by weave attach (weaveDNS)';
export const NETNS_ETC_DIR = '/etc/netns';

/** Whether `ip` is configured on any link of ctx's namespace other than our labelled DNS address. */
export async function addressElsewhere(ctx: HostCtx, ip: string): Promise<string | undefined> {
  const rows = await ipJson<Array<{ ifname: string; addr_info?: Array<{ family: string; local: string; label?: string }> }>>(ctx, ['addr', 'show']);
  for (const r of rows) {
    for (const a of r.addr_info ?? []) {
      if (a.family === 'inet' && a.local === ip && a.label !== DNS_ADDR_LABEL) return r.ifname;
    }
  }
  return undefined;
}

/**
 * Makes `ip` (or nothing, when null) the DNS address on the expose bridge, creating the bridge when
 * needed and deleting it when nothing at all is left on it. Idempotent.
 */
export async function syncDnsAddr(ctx: HostCtx, ip: string | null, mtu: number): Promise<void> {
  const cur = await exposeLinkAddrs(ctx);
  const ours = cur.foreign.filter((f) => f.label === DNS_ADDR_LABEL).map((f) => f.cidr);
  const want = ip === null ? [] : [`${ip}/32`];
  const del = ours.filter((c) => !want.includes(c));
  const add = want.filter((c) => !ours.includes(c));
  if (!del.length && !add.length) return;
  const lines: string[] = [];
  if (add.length) lines.push(...(await ensureExposeLinkLines(ctx, mtu)));
  for (const c of del) lines.push(`addr del ${c} dev ${EXPOSE_LINK}`);
  for (const c of add) lines.push(`addr add ${c} dev ${EXPOSE_LINK} noprefixroute label ${DNS_ADDR_LABEL}`);
  const left = cur.own.length + cur.foreign.length - del.length + add.length;
  if (left === 0 && (cur.own.length || cur.foreign.length)) lines.push(`link del ${EXPOSE_LINK}`);
  await ipBatch(ctx, lines);
}

/** Routes the DNS address on-link through the container's interface (replace: idempotent). */
export async function ensureContainerDnsRoute(ctx: HostCtx, ifname: string, ip: string): Promise<void> {
  await ipBatch(ctx, [`route replace ${ip}/32 dev ${ifname} scope link`]).catch((e: unknown) => {
    if (e instanceof HostError) throw new HostError(`cannot route the DNS address ${ip} via ${ifname} in the container: ${e.stderr}`, { command: e.command, stderr: e.stderr });
    throw e;
  });
}

/** The resolv.conf a container gets: our server, the weave domain as search, unqualified names tried there first. */
export function containerResolvConf(nameserver: string, domain: string): string {
  const search = domain.replace(/\.$/, '');
  return `${RESOLV_MARKER}\nnameserver ${nameserver}\nsearch ${search}\noptions ndots:1\n`;
}

/**
 * Writes /etc/netns/NAME/resolv.conf (what `ip netns exec NAME` bind-mounts over /etc/resolv.conf).
 * Returns false, writing nothing, when a file we did not write is already there.
 */
export function writeNetnsResolvConf(netnsName: string, text: string, etcDir = NETNS_ETC_DIR): boolean {
  const dir = path.join(etcDir, netnsName);
  const file = path.join(dir, 'resolv.conf');
  try {
    if (!fs.readFileSync(file, 'utf8').startsWith(RESOLV_MARKER)) return false;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  fs.mkdirSync(dir, { recursive: true });
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, file);
  return true;
}

/** Removes the file if we wrote it (and its directory when that leaves it empty). True when removed. */
export function removeNetnsResolvConf(netnsName: string, etcDir = NETNS_ETC_DIR): boolean {
  const dir = path.join(etcDir, netnsName);
  const file = path.join(dir, 'resolv.conf');
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
  if (!text.startsWith(RESOLV_MARKER)) return false;
  fs.rmSync(file, { force: true });
  try {
    fs.rmdirSync(dir);
  } catch (e) {
    // not empty: the user keeps other files there, so the directory stays
    if ((e as NodeJS.ErrnoException).code !== 'ENOTEMPTY' && (e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  return true;
}

// ---- who weaveDNS answers ------------------------------------------------------------------------

/** The containers attached here (router/endpoints.ts Endpoints fits). */
export interface LocalEndpoints {
  list(): ReadonlyArray<{ addrs: readonly string[] }>;
  on(event: 'changed', fn: () => void): unknown;
  off(event: 'changed', fn: () => void): unknown;
}

export interface DnsAccessOptions {
  ctx: HostCtx;
  clock: Clock;
  log: Logger;
  /** the server's address ('0.0.0.0': every address) and port */
  listen: { ip: string; port: number };
  endpoints: LocalEndpoints;
  /** the host's addresses are re-read this often (default 30 s) */
  refreshMs?: number;
  /** and after a refused source at most this often (default 1 s): an address added since is seen soon */
  missRefreshMs?: number;
  /** the nft guard's repair interval (default 10 s) */
  guardMs?: number;
}

export interface DnsAccessStats { hostAddrs: number; containerAddrs: number; refreshes: number; refreshErrors: number; guard?: GuardStats }

/** Bare IPv4 address of "a.b.c.d/len" or "a.b.c.d". */
const bare = (a: string): string => (a.includes('/') ? a.slice(0, a.indexOf('/')) : a);

/**
 * Decides which sources weaveDNS answers (allows(): synchronous, nothing allocated for an IPv4 source),
 * and keeps the nft guard for the DNS address in place.
 */
export class DnsAccess {
  private readonly o: DnsAccessOptions;
  private readonly log: Logger;
  readonly guard: GuardReconciler | null;
  private hostAddrs = new Set<string>();
  private containerAddrs: Set<string> | null = null;
  private readonly onEndpoints = (): void => { this.containerAddrs = null; };
  private timer: TimerHandle | undefined;
  private lastRefresh = -Infinity;
  private refreshing: Promise<void> | null = null;
  private running = false;
  private readonly st = { refreshes: 0, refreshErrors: 0 };

  constructor(o: DnsAccessOptions) {
    this.o = o;
    this.log = o.log.child({ component: 'dns-access' });
    const ip = o.listen.ip;
    // a loopback server is reachable through lo only: nothing to guard
    this.guard = ip.startsWith('127.') ? null : new GuardReconciler(o.ctx, dnsGuardSpec(ip === '0.0.0.0' ? null : ip, o.listen.port), o.clock, o.log);
  }

  allows(addr: string): boolean {
    const a = addr.startsWith('::ffff:') ? addr.slice(7) : addr;
    if (a.startsWith('127.') || a === '::1' || this.hostAddrs.has(a)) return true;
    if (this.containerAddrs === null) this.containerAddrs = new Set(this.o.endpoints.list().flatMap((e) => e.addrs.map(bare)));
    if (this.containerAddrs.has(a)) return true;
    if (this.running && this.o.clock.now() - this.lastRefresh >= (this.o.missRefreshMs ?? 1000)) void this.refresh();
    return false;
  }

  /** The guard first, then the host's addresses; call before the server listens. */
  async start(): Promise<void> {
    this.running = true;
    this.o.endpoints.on('changed', this.onEndpoints);
    if (this.guard) {
      // a failure is logged and counted by the loop, which retries; the server's own check still holds
      await this.guard.reconcile().catch(() => undefined);
      this.guard.start(this.o.guardMs ?? 10_000);
    }
    await this.refresh();
    this.schedule();
  }

  /** Stops the timers and removes the guard (nothing listens on the address once the server stopped). */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    this.o.clock.clearTimeout(this.timer);
    this.o.endpoints.off('changed', this.onEndpoints);
    await this.guard?.remove().catch((e: unknown) => this.log.warn({ err: errMsg(e) }, 'removing the DNS guard failed'));
  }

  /** Re-reads the host's own addresses (concurrent calls share one read). */
  refresh(): Promise<void> {
    if (this.refreshing) return this.refreshing;
    this.lastRefresh = this.o.clock.now();
    this.refreshing = (async () => {
      try {
        const rows = await ipJson<Array<{ addr_info?: Array<{ family?: string; local?: string }> }>>(this.o.ctx, ['-4', 'addr', 'show']);
        const next = new Set<string>();
        for (const r of rows) for (const a of r.addr_info ?? []) if (a.family === 'inet' && a.local) next.add(a.local);
        this.hostAddrs = next;
        this.st.refreshes++;
      } catch (e) {
        this.st.refreshErrors++;
        this.log.warn({ err: errMsg(e) }, 'cannot read the host\'s addresses; keeping the last known');
      } finally {
        this.refreshing = null;
      }
    })();
    return this.refreshing;
  }

  private schedule(): void {
    if (!this.running) return;
    this.timer = this.o.clock.setTimeout(() => { void this.refresh().finally(() => this.schedule()); }, this.o.refreshMs ?? 30_000);
  }

  stats(): DnsAccessStats {
    const out: DnsAccessStats = { hostAddrs: this.hostAddrs.size, containerAddrs: this.containerAddrs?.size ?? 0, ...this.st };
    if (this.guard) out.guard = this.guard.stats();
    return out;
  }
}
