// `weave status cni`: the pods attached through CNI on this router, over the report JSON.
export interface CniPodView {
  network: string;
  containerId: string;
  namespace?: string;
  name?: string;
  ifname: string;
  hostIfname: string;
  addrs: string[];
}

export interface CniReport {
  summary: Record<string, string | number>;
  masquerade: boolean;
  pods: CniPodView[];
  requests: Record<string, number>;
}

/** "namespace/name" as Kubernetes named the pod (podman sends only a name), else the container ID's first 12 characters. */
export function podLabel(p: { containerId: string; namespace?: string; name?: string }): string {
  if (!p.name) return p.containerId.slice(0, 12);
  return p.namespace ? `${p.namespace}/${p.name}` : p.name;
}

export function renderCni(report: any): string {
  const r = report?.cni as CniReport | undefined;
  if (!r) return 'CNI: not part of this router\n';
  const lines = [`Pods: ${r.pods.length}  Masquerade: ${r.masquerade ? 'on' : 'off'}`];
  for (const p of r.pods) lines.push(`  ${podLabel(p)}  ${p.network} ${p.ifname} ${p.addrs.join(' ')}  (container ${p.containerId.slice(0, 12)}, host ${p.hostIfname})`);
  const req = Object.entries(r.requests).map(([k, v]) => `${k}=${v}`).join(' ');
  if (req) lines.push(`Requests: ${req}`);
  return lines.join('\n') + '\n';
}
