// Links, addresses and the veth pairs that connect containers to the host. Names are derived from the
// namespace key (its inode) so a crashed attach is recognised and finished on retry, not duplicated.
import { createHash } from 'crypto';
import { canonicalPrefix } from './cidr';
import { HostCtx, HostError, ipBatch, ipJson, sysctl } from './ip';

export const CONTAINER_IFNAME = 'ethwe';
const IFNAMSIZ = 15;

/** Every container veth's host end starts with this (host/guard.ts lets DNS in through them). */
export const HOST_IF_PREFIX = 'vethwe';

/** Host side of a container's veth: "vethwe" + 9 hex digits of sha256(key) = 15 chars (IFNAMSIZ-1). */
export function hostIfName(nsKey: string): string {
  const n = HOST_IF_PREFIX + createHash('sha256').update(nsKey).digest('hex').slice(0, 9);
  if (n.length > IFNAMSIZ) throw new Error('unreachable: interface name too long');
  return n;
}

/** The container end's name while it still lives in the host namespace (moved and renamed to ethwe). */
export function tmpPeerName(nsKey: string): string {
  return 'vethwg' + createHash('sha256').update(nsKey).digest('hex').slice(0, 9);
}

export interface LinkJson {
  ifindex: number;
  ifname: string;
  address?: string;
  mtu?: number;
  operstate?: string;
  flags?: string[];
  link_type?: string;
  linkinfo?: { info_kind?: string };
}

export interface AddrJson {
  ifname: string;
  addr_info?: Array<{ family: string; local: string; prefixlen: number; scope?: string }>;
}

export async function listLinks(ctx: HostCtx): Promise<Map<string, LinkJson>> {
  const links = await ipJson<LinkJson[]>(ctx, ['-details', 'link', 'show']);
  return new Map(links.map((l) => [l.ifname, l]));
}

export async function linkByName(ctx: HostCtx, name: string): Promise<LinkJson | undefined> {
  return (await listLinks(ctx)).get(name);
}

/** IPv4 addresses on a link as "a.b.c.d/len". */
export async function linkAddrs4(ctx: HostCtx, dev: string): Promise<string[]> {
  const rows = await ipJson<AddrJson[]>(ctx, ['addr', 'show', 'dev', dev]);
  const out: string[] = [];
  for (const r of rows) for (const a of r.addr_info ?? []) if (a.family === 'inet') out.push(`${a.local}/${a.prefixlen}`);
  return out;
}

export interface VethSpec {
  hostIf: string;
  tmpPeer: string;
  /** path of the container's namespace file (ip link set ... netns PATH takes a path or a name) */
  containerPath: string;
  containerCtx: HostCtx;
  ifname: string;
  mtu: number;
}

/**
 * Creates the pair in the host namespace, moves the peer into the container and renames it there.
 * Leaves nothing behind on failure: deleting the host end destroys the peer wherever it is.
 */
export async function createVeth(hostCtx: HostCtx, s: VethSpec): Promise<void> {
  await ipBatch(hostCtx, [
    `link add ${s.hostIf} mtu ${s.mtu} type veth peer name ${s.tmpPeer} mtu ${s.mtu}`,
    `link set ${s.tmpPeer} netns ${s.containerPath}`,
  ]).catch(async (e) => {
    await deleteLink(hostCtx, s.hostIf);
    throw e;
  });
  try {
    await ipBatch(s.containerCtx, [`link set ${s.tmpPeer} name ${s.ifname}`, `link set ${s.ifname} up`]);
    // keep the other addresses when the first one is detached (the kernel drops secondaries otherwise)
    await sysctl(s.containerCtx, `net/ipv4/conf/${s.ifname}/promote_secondaries`, 1);
  } catch (e) {
    await deleteLink(hostCtx, s.hostIf);
    throw e;
  }
}

/**
 * The host side of a container link: up, proxy ARP (the host answers ARP for the whole overlay, so the
 * container needs no bridge, like Calico), answered at once (proxy_delay defaults to up to 0.8 s).
 */
export async function programHostSide(hostCtx: HostCtx, hostIf: string, mtu: number): Promise<void> {
  await sysctl(hostCtx, `net/ipv4/conf/${hostIf}/proxy_arp`, 1);
  await sysctl(hostCtx, `net/ipv4/neigh/${hostIf}/proxy_delay`, 0);
  await ipBatch(hostCtx, [`link set ${hostIf} mtu ${mtu} up`]);
}

/** Deletes a link if it exists; true when something was deleted. */
export async function deleteLink(ctx: HostCtx, name: string): Promise<boolean> {
  if (!(await linkByName(ctx, name))) return false;
  try {
    await ipBatch(ctx, [`link del ${name}`]);
    return true;
  } catch (e) {
    // it may have vanished between the check and the delete (its namespace went away): that is success
    if (!(await linkByName(ctx, name))) return false;
    throw e;
  }
}

/**
 * Container addressing: adds the missing addresses, then routes the overlay range and multicast via
 * the interface unless an address's own subnet route already covers exactly that prefix.
 */
export async function ensureContainerAddressing(ctx: HostCtx, ifname: string, cidrs: string[], overlayRange: string, mtu: number): Promise<{ addedAddrs: string[] }> {
  const have = new Set(await linkAddrs4(ctx, ifname));
  const addedAddrs = cidrs.filter((c) => !have.has(c));
  const lines = [`link set ${ifname} mtu ${mtu} up`, ...addedAddrs.map((c) => `addr add ${c} dev ${ifname}`)];
  await ipBatch(ctx, lines);
  const routes = await ipJson<Array<{ dst: string; dev?: string }>>(ctx, ['route', 'show', 'dev', ifname]);
  const present = new Set(routes.map((r) => canonicalPrefix(r.dst)));
  const want = [canonicalPrefix(overlayRange)!, '224.0.0.0/4'];
  const add = want.filter((w) => !present.has(w)).map((w) => `route add ${w} dev ${ifname} scope link`);
  if (add.length) {
    await ipBatch(ctx, add).catch((e: unknown) => {
      // EEXIST means a route for this prefix exists on another interface of the container: say whose
      if (e instanceof HostError && /File exists/.test(e.stderr)) {
        throw new HostError(`container already routes ${want.join(' or ')} through another interface; detach it or remove that route`, { command: e.command, stderr: e.stderr });
      }
      throw e;
    });
  }
  return { addedAddrs };
}

export async function removeContainerAddrs(ctx: HostCtx, ifname: string, cidrs: string[]): Promise<void> {
  const have = new Set(await linkAddrs4(ctx, ifname));
  await ipBatch(ctx, cidrs.filter((c) => have.has(c)).map((c) => `addr del ${c} dev ${ifname}`));
}
