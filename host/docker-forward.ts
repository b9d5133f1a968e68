// Docker sets the iptables FORWARD policy to DROP when it turns IP forwarding on itself (a dockerd
// started before anything else enabled forwarding in its namespace), and that policy drops every
// packet weave forwards between container veths, weave-tun and weave-vx: containers on such a host
// reach nobody across the mesh. An ACCEPT in another nftables table cannot undo a base chain's drop,
// so, as Weave Net did for its bridge, the rules go into iptables' own FORWARD chain (iptables-nft,
// the chain Docker's policy sits on). They accept only what enters or leaves weave's interfaces;
// NetworkPolicy (nftables `inet weave-npc`) still judges those packets, and Docker's restarts keep
// them (dockerd re-inserts its own jumps and never flushes FORWARD).
import { execHost, nsPrefix, type HostCtx } from './ip';

const COMMENT = ['-m', 'comment', '--comment', 'weave: overlay forwarding'];
const MATCHES: readonly string[][] = [
  ['-i', 'weave-tun'], ['-o', 'weave-tun'],
  ['-i', 'weave-vx'], ['-o', 'weave-vx'],
  ['-i', 'vethwe+'], ['-o', 'vethwe+'],
  ['-i', 'weave'], ['-o', 'weave'],
];

function rule(ctx: HostCtx, op: string[], match: readonly string[]): string[] {
  return [...nsPrefix(ctx), 'iptables', '-w', '5', ...op, 'FORWARD', ...match, ...COMMENT, '-j', 'ACCEPT'];
}

/** Ensures weave's ACCEPT rules in iptables' FORWARD chain; returns how many it had to add. */
export async function acceptOverlayForwarding(ctx: HostCtx): Promise<number> {
  let added = 0;
  for (const m of MATCHES) {
    if ((await execHost(rule(ctx, ['-C'], m), { allowFail: true })).code === 0) continue;
    await execHost(rule(ctx, ['-I'], m));
    added++;
  }
  return added;
}

/** Removes them (`weave reset`); rules already gone are fine. */
export async function removeOverlayForwarding(ctx: HostCtx): Promise<void> {
  for (const m of MATCHES) {
    while ((await execHost(rule(ctx, ['-D'], m), { allowFail: true })).code === 0) { /* a rule may be there twice */ }
  }
}
