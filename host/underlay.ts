// The underlay address this router's VXLAN device speaks from: the address on the interface of the
// default route, else the first global IPv4 address on an interface that is not ours.
import { HostCtx, ipJson } from './ip';
import { WeaveError } from '../lib/errors';

interface JsonRoute { dst: string; dev?: string; prefsrc?: string }
interface JsonAddr { ifname: string; addr_info?: Array<{ family: string; local: string; scope: string }> }

const OURS = /^(weave|vethwe|weave-tun|weave-vx)/;

export async function detectUnderlayAddress(ctx: HostCtx): Promise<string> {
  const routes = await ipJson<JsonRoute[]>(ctx, ['-4', 'route', 'show', 'default']);
  const addrs = await ipJson<JsonAddr[]>(ctx, ['-4', 'addr', 'show', 'scope', 'global']);
  const globalOf = (ifname: string | undefined): string | undefined =>
    addrs.find((a) => a.ifname === ifname)?.addr_info?.find((i) => i.family === 'inet' && i.scope === 'global')?.local;
  const def = routes.find((r) => r.dst === 'default');
  const viaDefault = def?.prefsrc ?? globalOf(def?.dev);
  if (viaDefault) return viaDefault;
  for (const a of addrs) {
    if (OURS.test(a.ifname)) continue;
    const ip = globalOf(a.ifname);
    if (ip) return ip;
  }
  throw new WeaveError('ENOUNDERLAY', 'no global IPv4 address found for the fast datapath (give --host ADDRESS)');
}
