// Containers and the host's own overlay addresses: the Endpoints of router/endpoints.ts with the
// subsystems' hooks around attach and detach (IPAM turns "no address" into one, DNS registers the
// name), the prefixes this router announces for them, and the API routes that drive it all.
import type { Registry } from 'prom-client';
import { UsageError, errMsg } from '../../lib/errors';
import { componentLogger, type Logger } from '../../lib/log';
import type { Clock } from '../../lib/clock';
import { counterFrom, gaugeFrom } from '../../lib/metrics';
import type { ApiRoute, AttachRequest, ContainerRef, Part, Subsystem } from '../../lib/subsystem';
import { Endpoints, type EndpointInfo } from '../../router/endpoints';
import type { PrefixTable } from '../../router/prefixes';
import type { RouterConfig } from '../config';
import type { HostPart } from './sleeve';
import { bool, checkAddrArg, checkAddrMaybeLen, optStr, str, strList } from '../../lib/validate';
import { parseNetnsArg } from '../../host/netns';

export interface EndpointsPart extends Part {
  endpoints: Endpoints;
  /** Sets the prefixes this router serves on behalf of `owner` (a subsystem), announced to all peers. */
  announce(owner: string, prefixes: string[]): void;
  /** Announces what this router serves now (containers, exposed addresses, subsystems' prefixes). */
  publish(): void;
  /** Detaches every container (hooks included) and hides exposed addresses: `weave reset`. */
  removeAll(): Promise<void>;
}

/**
 * `hooks` is the list of subsystems, filled once they are built (they need the endpoints first);
 * attach and detach run through it.
 */
export function buildEndpoints(cfg: RouterConfig, owner: string, host: HostPart, prefixes: PrefixTable, containerMtu: () => number, hooks: readonly Subsystem[], root: Logger, clock: Clock): EndpointsPart {
  const log = componentLogger(root, 'endpoints');
  const endpoints = new Endpoints({ ctx: host.ctx, log, clock, dataDir: cfg.dataDir, owner, routes: host.routes, mtu: containerMtu });
  const announced = new Map<string, string[]>();
  const served = (): string[] => [...new Set([...endpoints.servedPrefixes(), ...[...announced.values()].flat()])].sort();
  const onChanged = (): void => prefixes.setLocal(served());
  endpoints.on('changed', onChanged);
  const removeAll = async (): Promise<void> => {
    // Docker endpoints are Docker's to remove (the docker subsystem's reset deletes their veths)
    for (const ep of endpoints.list().filter((e) => !e.docker)) {
      try {
        const r = await endpoints.detach(ep.netns);
        for (const x of hooks) await x.afterDetach?.(ep.netns, r, ep);
      } catch (e) {
        log.warn({ netns: ep.netns, err: errMsg(e) }, 'reset: detach failed; continuing');
      }
    }
    await endpoints.hide().catch((e: unknown) => log.warn({ err: errMsg(e) }, 'reset: hide failed; continuing'));
  };
  return {
    name: 'endpoints',
    endpoints,
    announce(owner, list) {
      announced.set(owner, [...list]);
      onChanged();
    },
    publish: onChanged,
    removeAll,
    stop: () => { endpoints.off('changed', onChanged); },
    report: () => ({
      summary: { Attached: endpoints.list().length, Exposed: endpoints.exposedAddrs().length },
      attached: endpoints.list(),
      exposed: endpoints.exposedAddrs(),
      routes: host.routes.stats(),
    }),
    metrics: (reg) => endpointMetrics(reg, endpoints),
    recovery: () => endpoints.recovery(),
    apiRoutes: () => endpointRoutes(endpoints, hooks),
  };
}

/** After the subsystems exist: endpoints recorded before a restart are re-programmed, and announced. */
export async function restoreEndpoints(part: EndpointsPart, log: Logger): Promise<Part> {
  const restored = await part.endpoints.restore();
  if (restored.kept || restored.dropped) log.info(restored, 'endpoints restored from the data dir');
  part.publish();
  return { name: 'restored endpoints', stop: () => {} };
}

/** A NETNS argument: an `ip netns` name, an absolute path, or a PID (existence is checked on use). */
export function checkNetns(s: string, key: string): string {
  try {
    parseNetnsArg(s);
  } catch (e) {
    throw new UsageError(`"${key}": ${(e as Error).message}`, {}, { cause: e });
  }
  return s;
}

/** The optional "container" field of /attach: {id, name} of the Docker container the CLI resolved. */
function optContainer(body: Record<string, unknown>): ContainerRef | undefined {
  const v = body.container;
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'object' || Array.isArray(v)) throw new UsageError('"container" must be an object like {"id": "...", "name": "..."}');
  const c = v as Record<string, unknown>;
  const field = (k: 'id' | 'name'): string => {
    try {
      return str(c, k, { max: 255 });
    } catch (e) {
      throw new UsageError(`"container": ${(e as Error).message}`, {}, { cause: e });
    }
  };
  return { id: field('id'), name: field('name') };
}

/** The first subsystem that resolves the addresses wins (IPAM); without one, addresses must be given. */
async function resolveAddresses(hooks: readonly Subsystem[], req: AttachRequest, kind: 'attach' | 'expose'): Promise<string[]> {
  for (const x of hooks) {
    const r = await x.resolveAddresses?.(req, kind);
    if (r) return r;
  }
  if (req.cidrs.length === 0) throw new UsageError('no address given: give ADDR/LEN (automatic allocation needs IPAM)');
  return req.cidrs;
}

export function endpointRoutes(endpoints: Endpoints, hooks: readonly Subsystem[]): ApiRoute[] {
  return [
    {
      method: 'POST', path: '/attach', handler: async ({ body }) => {
        const req: AttachRequest = {
          netns: checkNetns(str(body, 'netns'), 'netns'),
          cidrs: strList(body, 'cidrs', { item: checkAddrArg }),
          name: optStr(body, 'name', { max: 253 }),
          container: optContainer(body),
        };
        const r = await endpoints.attach(req.netns, await resolveAddresses(hooks, req, 'attach'), { name: req.name, container: req.container });
        for (const x of hooks) await x.afterAttach?.(req, r);
        return { ...r, addresses: r.addrs };
      },
    },
    {
      method: 'POST', path: '/detach', handler: async ({ body }) => {
        const netns = checkNetns(str(body, 'netns'), 'netns');
        const given = strList(body, 'addrs', { item: checkAddrMaybeLen });
        const before: EndpointInfo | undefined = endpoints.list().find((e) => e.netns === netns);
        const r = await endpoints.detach(netns, given.length ? given : undefined);
        for (const x of hooks) await x.afterDetach?.(netns, r, before);
        return r;
      },
    },
    {
      method: 'GET', path: '/ps', handler: () => ({
        endpoints: endpoints.list().map((e) => ({ netns: e.netns, path: e.path, key: e.key, ifname: e.ifname, mac: e.mac, addresses: e.addrs, name: e.name, pod: e.pod, docker: e.docker, container: e.container })),
      }),
    },
    {
      method: 'POST', path: '/expose', handler: async ({ body }) => {
        const masquerade = bool(body, 'masquerade');
        const cidrs = await resolveAddresses(hooks, { netns: '', cidrs: strList(body, 'cidrs', { item: checkAddrArg }) }, 'expose');
        const r = await endpoints.expose(cidrs, { masquerade });
        return { ...r, addresses: r.exposed.map((e) => e.cidr) };
      },
    },
    {
      method: 'POST', path: '/hide', handler: ({ body }) => {
        const cidrs = strList(body, 'cidrs', { item: checkAddrMaybeLen });
        return endpoints.hide(cidrs.length ? cidrs : undefined);
      },
    },
  ];
}

function endpointMetrics(reg: Registry, endpoints: Endpoints): void {
  gaugeFrom(reg, 'weave_endpoints_attached', 'Containers (network namespaces) attached to the overlay on this host.', () => endpoints.list().length);
  gaugeFrom(reg, 'weave_endpoints_exposed_addresses', 'Overlay addresses this host holds itself (weave expose).', () => endpoints.exposedAddrs().length);
  counterFrom(reg, 'weave_endpoint_operations_total', 'Attach and detach operations, and those that failed, by kind.', () => [
    { labels: { kind: 'attach' }, value: endpoints.counters.attaches },
    { labels: { kind: 'detach' }, value: endpoints.counters.detaches },
    { labels: { kind: 'error' }, value: endpoints.counters.errors },
    { labels: { kind: 'stale_dropped' }, value: endpoints.counters.staleDropped },
  ], ['kind']);
}
