// `weave status kube`: Kubernetes mode as the router sees it, over the report JSON.
export interface KubeReport {
  summary: Record<string, string | number>;
  node: string;
  server: string;
  source: string;
  api: { state: string; sinceMs: number; lastError: string; resourceVersion: string; watch: Record<string, number> };
  requests: Record<string, number>;
  nodes: Array<{ name: string; address: string; self: boolean }>;
  targets: Array<{ node: string; target: string }>;
  ready: { ready: boolean; reason: string };
  peersConfigMap: string;
  joined: boolean;
  reclaims: Array<{ at: number; node: string; peer: string; addresses: number }>;
  lastReclaim?: { at: number; node: string; peer: string; addresses: number };
  reclaimError: string;
  cni: string;
  keepOnStop: boolean;
  uptimeMs: number;
}

function ago(ms: number): string {
  const s = Math.round(ms / 1000);
  return s < 120 ? `${s}s` : s < 7200 ? `${Math.round(s / 60)}m` : `${Math.round(s / 3600)}h`;
}

export function renderKube(report: any): string {
  const r = report?.kube as KubeReport | undefined;
  if (!r || !r.node) return 'Kubernetes: off (start the router with --kube)\n';
  const lines = [
    `Node: ${r.node}`,
    `API server: ${r.server} (${r.source})`,
    `API: ${r.api.state} for ${ago(r.api.sinceMs)}${r.api.lastError && r.api.state !== 'up' ? `: ${r.api.lastError}` : ''}  resourceVersion ${r.api.resourceVersion}`,
    `  watch: ${Object.entries(r.api.watch).map(([k, v]) => `${k}=${v}`).join(' ')}`,
    `  requests: ${Object.entries(r.requests).map(([k, v]) => `${k}=${v}`).join(' ')}`,
    `Ready: ${r.ready.ready ? 'yes' : `no: ${r.ready.reason}`}`,
    `Watched nodes: ${r.nodes.length}`,
  ];
  for (const n of r.nodes) lines.push(`  ${n.name}  ${n.address || '(no address)'}${n.self ? '  (this node)' : ''}`);
  lines.push(`Peers learned from the API: ${r.targets.length}`);
  for (const t of r.targets) lines.push(`  ${t.target}  (node ${t.node})`);
  lines.push(`Peers ConfigMap: ${r.peersConfigMap}${r.joined ? '' : ' (not joined yet)'}`);
  const last = r.lastReclaim;
  lines.push(`Last reclaim: ${last ? `node ${last.node} (peer ${last.peer}): ${last.addresses} addresses, ${new Date(last.at).toISOString()}` : 'none'}${r.reclaimError ? `  (pending: ${r.reclaimError})` : ''}`);
  if (r.cni) lines.push(`CNI: ${r.cni}`);
  lines.push(`On stop: ${r.keepOnStop ? 'the data path is kept for the next start' : 'the data path is removed'}`);
  return lines.join('\n') + '\n';
}
