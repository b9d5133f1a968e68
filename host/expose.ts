// The host's own overlay addresses (`weave expose`). They live as /32s on a port-less bridge named
// "weave" (this kernel has no dummy driver; a bridge is always available, and `ip addr show weave`
// finds them where Weave users look). /32 with noprefixroute: a subnet route on a carrier-less link
// would swallow overlay traffic that has no more specific route. Masquerade for the overlay's traffic to
// the outside is one chain of ours in the shared nftables table `inet weave`; nothing else is touched.
import { HostCtx, ipBatch, ipJson, nftApply, nftExists, nftJson } from './ip';
import { linkByName } from './links';

export const EXPOSE_LINK = 'weave';
export const NFT_TABLE = 'weave';
export const EXPOSE_NAT_CHAIN = 'expose-nat';

/**
 * Addresses on the expose link as "a.b.c.d/len", split by owner: expose's own carry the plain link
 * name as label; others (the DNS address, label "weave:dns") belong to whoever labelled them.
 */
export async function exposeLinkAddrs(ctx: HostCtx): Promise<{ own: string[]; foreign: Array<{ cidr: string; label: string }> }> {
  const own: string[] = [];
  const foreign: Array<{ cidr: string; label: string }> = [];
  if (!(await linkByName(ctx, EXPOSE_LINK))) return { own, foreign };
  const rows = await ipJson<Array<{ addr_info?: Array<{ family: string; local: string; prefixlen: number; label?: string }> }>>(ctx, ['addr', 'show', 'dev', EXPOSE_LINK]);
  for (const r of rows) {
    for (const a of r.addr_info ?? []) {
      if (a.family !== 'inet') continue;
      const cidr = `${a.local}/${a.prefixlen}`;
      if (a.label === undefined || a.label === EXPOSE_LINK) own.push(cidr);
      else foreign.push({ cidr, label: a.label });
    }
  }
  return { own, foreign };
}

/** ip batch lines that create the expose link if it is missing and bring it up (shared with host/dns-addr.ts). */
export async function ensureExposeLinkLines(ctx: HostCtx, mtu: number): Promise<string[]> {
  const link = await linkByName(ctx, EXPOSE_LINK);
  return [...(link ? [] : [`link add ${EXPOSE_LINK} mtu ${mtu} type bridge`]), `link set ${EXPOSE_LINK} up`];
}

/**
 * Puts exactly `ips` (bare addresses) on the expose link, creating it, or deletes it when empty.
 * Addresses other owners labelled (see exposeLinkAddrs) are left alone and keep the link alive.
 */
export async function syncExposeLink(ctx: HostCtx, ips: string[], mtu: number): Promise<void> {
  const link = await linkByName(ctx, EXPOSE_LINK);
  const cur = await exposeLinkAddrs(ctx);
  if (ips.length === 0 && cur.foreign.length === 0) {
    if (link) await ipBatch(ctx, [`link del ${EXPOSE_LINK}`]);
    return;
  }
  const lines: string[] = await ensureExposeLinkLines(ctx, mtu);
  const have = new Set(cur.own);
  const want = new Set(ips.map((ip) => `${ip}/32`));
  for (const a of have) if (!want.has(a)) lines.push(`addr del ${a} dev ${EXPOSE_LINK}`);
  for (const a of want) if (!have.has(a)) lines.push(`addr add ${a} dev ${EXPOSE_LINK} noprefixroute`);
  await ipBatch(ctx, lines);
}

/** Pure: the nft script that makes our NAT chain hold exactly these masquerade rules. */
export function masqueradeScript(sourceNets: string[], overlayRange: string): string {
  let s = `add table inet ${NFT_TABLE}\n`;
  s += `add chain inet ${NFT_TABLE} ${EXPOSE_NAT_CHAIN} { type nat hook postrouting priority srcnat; policy accept; }\n`;
  s += `flush chain inet ${NFT_TABLE} ${EXPOSE_NAT_CHAIN}\n`;
  for (const net of [...new Set(sourceNets)].sort()) {
    const excl = net === overlayRange ? `ip daddr != ${overlayRange}` : `ip daddr != ${net} ip daddr != ${overlayRange}`;
    s += `add rule inet ${NFT_TABLE} ${EXPOSE_NAT_CHAIN} ip saddr ${net} ${excl} masquerade\n`;
  }
  return s;
}

/** Masquerades traffic from sourceNets to outside the overlay; with none, removes our chain. */
export async function syncMasquerade(ctx: HostCtx, sourceNets: string[], overlayRange: string): Promise<void> {
  if (sourceNets.length > 0) {
    await nftApply(ctx, masqueradeScript(sourceNets, overlayRange));
    return;
  }
  if (await nftExists(ctx, ['chain', 'inet', NFT_TABLE, EXPOSE_NAT_CHAIN])) {
    await nftApply(ctx, `delete chain inet ${NFT_TABLE} ${EXPOSE_NAT_CHAIN}\n`);
  }
}

/**
 * Deletes the shared `inet weave` table when no owner has anything left in it (every chain, set and
 * counter gone): a router that stops after removing its guards, or whose start-up failed, leaves no
 * empty table behind; a table still holding something (masquerade kept across a restart) stays.
 */
export async function dropTableIfEmpty(ctx: HostCtx): Promise<boolean> {
  if (!(await nftExists(ctx, ['table', 'inet', NFT_TABLE]))) return false;
  const j = await nftJson<{ nftables: Array<Record<string, unknown>> }>(ctx, ['list', 'table', 'inet', NFT_TABLE]);
  if (j.nftables.some((o) => !('metainfo' in o) && !('table' in o))) return false;
  await nftApply(ctx, `delete table inet ${NFT_TABLE}\n`);
  return true;
}

/** The masquerade rules of our chain as nft -j shows them (for status and tests). */
export async function listMasquerade(ctx: HostCtx): Promise<unknown[]> {
  if (!(await nftExists(ctx, ['chain', 'inet', NFT_TABLE, EXPOSE_NAT_CHAIN]))) return [];
  const j = await nftJson<{ nftables: Array<Record<string, any>> }>(ctx, ['list', 'chain', 'inet', NFT_TABLE, EXPOSE_NAT_CHAIN]);
  return j.nftables.filter((o) => o.rule && o.rule.expr?.some((e: Record<string, unknown>) => 'masquerade' in e)).map((o) => o.rule);
}
