// `weave status docker`: the Docker driver on this router, over the report JSON.
import type { ContainerRef } from '../lib/subsystem';
import type { NetworkRecord, PoolRecord } from './state';

export interface DockerReport {
  summary: Record<string, string | number>;
  plugin: string;
  driver: string;
  pluginSocket: string;
  dockerSocket: string;
  /** the container-event stream: "connected" or why not */
  events: string;
  pools: PoolRecord[];
  networks: NetworkRecord[];
  endpoints: Array<{ network: string; endpoint: string; container?: ContainerRef; hostIfname: string; addrs: string[] }>;
  requests: Record<string, number>;
}

export function renderDocker(report: any): string {
  const r = report?.docker as DockerReport | undefined;
  if (!r) return 'Docker: not part of this router\n';
  const lines = [
    `Plugin: ${r.plugin}  driver "${r.driver}" at ${r.pluginSocket}`,
    `Docker: ${r.dockerSocket}  events ${r.events}`,
    `Networks: ${r.networks.length}`,
  ];
  for (const n of r.networks) lines.push(`  ${n.id.slice(0, 12)}  ${n.subnet}${n.gateway ? `  gateway ${n.gateway}` : ''}`);
  lines.push(`Endpoints: ${r.endpoints.length}`);
  for (const e of r.endpoints) lines.push(`  ${e.container?.name ?? `(endpoint ${e.endpoint.slice(0, 12)})`}  ${e.addrs.join(' ')}  network ${e.network.slice(0, 12)}  host ${e.hostIfname}`);
  return lines.join('\n') + '\n';
}
