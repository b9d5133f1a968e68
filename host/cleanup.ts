// Everything weave puts into a network namespace's kernel state, removed in one call: `weave reset`
// when no router runs (one killed with -9 leaves its devices, routes and rules behind). Only weave's
// own: links by weave's names (the TUN, weave-vx, the `weave` bridge with the exposed and DNS
// addresses, container veths vethwe* and half-made vethwg*; deleting a host end takes the
// container's ethwe with it, and the resolv.conf weave wrote for a named container goes too),
// routes of weave's protocol number, weave's nft table, and the xfrm entries the caller's remover
// recognises (ipsec/ knows them by reqid). Every step runs even when one
// before it failed; the result says what went and what could not.
import { EXPOSE_LINK, NFT_TABLE } from './expose';
import { removeNetnsResolvConf } from './dns-addr';
import { HostCtx, HostError, ipBatch, ipJson, nftApply, nftExists } from './ip';
import { deleteLink, listLinks, type LinkJson } from './links';
import { WEAVE_RT_PROTO } from './routes';
import { DEFAULT_VXLAN_NAME } from './vxlan';
import { errMsg } from '../lib/errors';

/** Host ends of container veths, and the container ends of an attach that died before moving them. */
const VETH_PREFIXES = ['vethwe', 'vethwg'];

export interface CleanupOptions {
  /** the sleeve's TUN device (router/ names it) */
  tun: string;
  /** removes weave's xfrm states and policies, returning how many went */
  xfrm?: { removeAll(): Promise<number> };
}

export interface CleanupResult {
  /** what was removed, one item per object ("link weave-tun", "3 routes proto 180" ...) */
  removed: string[];
  /** what could not be removed, with the kernel's reason */
  failed: string[];
}

/** Whether a TUN device of this name exists and is held open (a non-persistent TUN exists only while held). */
export async function tunInUse(ctx: HostCtx, name: string): Promise<boolean> {
  const l = (await listLinks(ctx)).get(name) as (LinkJson & { linkinfo?: { info_kind?: string; info_data?: { persist?: boolean } } }) | undefined;
  return l?.linkinfo?.info_kind === 'tun' && l.linkinfo.info_data?.persist !== true;
}

/** `ip netns` names of the namespaces with these ids (as seen from ctx); unnamed ones are skipped. */
async function containerNames(ctx: HostCtx, ids: Array<number | undefined>): Promise<string[]> {
  const want = new Set(ids.filter((i): i is number => i !== undefined));
  if (want.size === 0) return [];
  const list = await ipJson<Array<{ name: string; id?: number }>>(ctx, ['netns', 'list']);
  return list.filter((n) => n.id !== undefined && want.has(n.id)).map((n) => n.name);
}

export async function cleanupHost(ctx: HostCtx, opts: CleanupOptions): Promise<CleanupResult> {
  const res: CleanupResult = { removed: [], failed: [] };
  const step = async (what: string, fn: () => Promise<string | undefined>): Promise<void> => {
    try {
      const done = await fn();
      if (done) res.removed.push(done);
    } catch (e) {
      res.failed.push(`${what}: ${errMsg(e)}`);
    }
  };
  // policies and states first: a policy left without its device still drops the peer's traffic
  if (opts.xfrm) {
    const x = opts.xfrm;
    await step('xfrm states and policies', async () => {
      const n = await x.removeAll();
      return n ? `${n} xfrm states and policies` : undefined;
    });
  }
  let links = new Map<string, LinkJson & { link_netnsid?: number }>();
  await step('listing links', async () => {
    links = await listLinks(ctx);
    return undefined;
  });
  const names = [...links.keys()];
  const veths = names.filter((n) => VETH_PREFIXES.some((p) => n.startsWith(p)));
  let containers: string[] = [];
  await step('naming the containers of the veths', async () => {
    containers = await containerNames(ctx, veths.map((n) => links.get(n)!.link_netnsid));
    return undefined;
  });
  const ours = [opts.tun, DEFAULT_VXLAN_NAME, EXPOSE_LINK].filter((n) => names.includes(n)).concat(veths);
  for (const name of ours) await step(`link ${name}`, async () => ((await deleteLink(ctx, name)) ? `link ${name}` : undefined));
  for (const ns of containers) {
    await step(`/etc/netns/${ns}/resolv.conf`, async () => (removeNetnsResolvConf(ns) ? `/etc/netns/${ns}/resolv.conf` : undefined));
  }
  // routes on the links above went with them; what is left (via an underlay device) goes by protocol
  await step(`routes proto ${WEAVE_RT_PROTO}`, async () => {
    const routes = await ipJson<Array<{ dst: string; dev?: string }>>(ctx, ['route', 'show', 'table', 'main', 'proto', String(WEAVE_RT_PROTO)]);
    if (routes.length === 0) return undefined;
    await ipBatch(ctx, routes.map((r) => `route del ${r.dst} proto ${WEAVE_RT_PROTO}${r.dev ? ` dev ${r.dev}` : ''} table main`), { force: true });
    return `${routes.length} routes proto ${WEAVE_RT_PROTO}`;
  });
  await step(`nft table inet ${NFT_TABLE}`, async () => {
    let exists: boolean;
    try {
      exists = await nftExists(ctx, ['table', 'inet', NFT_TABLE]);
    } catch (e) {
      if (e instanceof HostError && /^cannot run nft/.test(e.message)) return undefined; // no nft, no table
      throw e;
    }
    if (!exists) return undefined;
    await nftApply(ctx, `delete table inet ${NFT_TABLE}\n`);
    return `nft table inet ${NFT_TABLE}`;
  });
  return res;
}
