// Masquerade for pods (CNI): traffic a pod sends to anything outside the overlay leaves the host with
// the host's address, so pods reach node addresses and the internet, as in Weave Net. One chain of
// ours in the shared nftables table `inet weave` (host/expose.ts keeps its own chain there); its
// rule matches what arrives from pods' veths (named POD_HOST_IF_PREFIX...), so containers attached
// with `weave attach` and exposed host addresses are left as they were.
import { NFT_TABLE } from './expose';
import { HostCtx, nftApply, nftExists, nftJson } from './ip';
import { POD_HOST_IF_PREFIX } from './pod-link';

export const POD_NAT_CHAIN = 'cni-masq';

/** Pure: the nft script that makes our chain masquerade pods' traffic to outside `overlay` (CIDRs). */
export function podMasqueradeScript(overlay: string[]): string {
  const nets = [...new Set(overlay)].sort();
  const dst = nets.length === 1 ? nets[0] : `{ ${nets.join(', ')} }`;
  return `add table inet ${NFT_TABLE}\n`
    + `add chain inet ${NFT_TABLE} ${POD_NAT_CHAIN} { type nat hook postrouting priority srcnat; policy accept; }\n`
    + `flush chain inet ${NFT_TABLE} ${POD_NAT_CHAIN}\n`
    + `add rule inet ${NFT_TABLE} ${POD_NAT_CHAIN} iifname "${POD_HOST_IF_PREFIX}*" ip daddr != ${dst} masquerade\n`;
}

/** Installs (on) or removes (off) the pods' masquerade chain; one process either way. */
export async function syncPodMasquerade(ctx: HostCtx, on: boolean, overlay: string[]): Promise<void> {
  if (on) {
    await nftApply(ctx, podMasqueradeScript(overlay));
    return;
  }
  if (await nftExists(ctx, ['chain', 'inet', NFT_TABLE, POD_NAT_CHAIN])) {
    await nftApply(ctx, `delete chain inet ${NFT_TABLE} ${POD_NAT_CHAIN}\n`);
  }
}

/** The rules of our chain as nft -j shows them (for status and tests); [] when it does not exist. */
export async function listPodMasquerade(ctx: HostCtx): Promise<unknown[]> {
  if (!(await nftExists(ctx, ['chain', 'inet', NFT_TABLE, POD_NAT_CHAIN]))) return [];
  const j = await nftJson<{ nftables: Array<Record<string, any>> }>(ctx, ['list', 'chain', 'inet', NFT_TABLE, POD_NAT_CHAIN]);
  return j.nftables.filter((o) => o.rule).map((o) => o.rule);
}
