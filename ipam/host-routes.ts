// The allocation range against the host's own routes: the default range is refused when the host
// already routes part of it elsewhere (containers could not reach those networks); a range given on
// the command line only warns.
import { overlaps, parseCidr, type Cidr } from './addr';
import type { IpamConfig } from './flags';
import { UsageError, errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';
import { ipJson, type HostCtx } from '../host/ip';
import { WEAVE_RT_PROTO } from '../host/routes';

interface RouteLike { dst?: string; dev?: string; protocol?: string | number; type?: string }

/** Host routes (not weave's own, not default) that overlap range, as "DST dev DEV". */
export function overlappingRoutes(range: Cidr, routes: RouteLike[]): string[] {
  const out: string[] = [];
  for (const r of routes) {
    if (!r.dst || r.dst === 'default') continue;
    if (r.protocol === WEAVE_RT_PROTO || r.protocol === String(WEAVE_RT_PROTO)) continue;
    if (r.dev && (r.dev.startsWith('weave') || r.dev.startsWith('vethwe'))) continue;
    if (r.type && r.type !== 'unicast') continue;
    let c: Cidr;
    try {
      c = parseCidr(r.dst.includes('/') ? r.dst : `${r.dst}/32`, { allowHostBits: true });
    } catch {
      continue; // IPv6 or something iproute2 prints that is not a prefix
    }
    if (c.prefixLen === 0) continue;
    if (overlaps(c, range)) out.push(`${r.dst}${r.dev ? ` dev ${r.dev}` : ''}`);
  }
  return out;
}

/** Refuses the default range when it overlaps a host route; warns when the range was given. */
export async function checkRangeAgainstRoutes(hostCtx: HostCtx, f: IpamConfig, log: Logger): Promise<void> {
  let routes: RouteLike[];
  try {
    routes = await ipJson<RouteLike[]>(hostCtx, ['route', 'show']);
  } catch (e) {
    log.warn({ err: errMsg(e) }, 'ipam: cannot read the host routes to check the allocation range');
    return;
  }
  const hits = overlappingRoutes(parseCidr(f.range), routes);
  if (hits.length === 0) return;
  if (f.rangeExplicit) {
    log.warn({ range: f.range, routes: hits }, `ipam: --ipalloc-range ${f.range} overlaps host routes (${hits.join('; ')}); containers may not reach those networks`);
    return;
  }
  throw new UsageError(`the default allocation range ${f.range} overlaps host routes (${hits.join('; ')}): choose another with --ipalloc-range`, { routes: hits });
}

