// CHECK: what ADD made (the endpoint record, the IPAM record, the runtime's prevResult) against what
// the kernel has now (host/pod-link.ts inspectPodLink). Pure: each difference becomes one phrase
// that names what drifted, so the runtime's error says what to look at.
import { POD_GATEWAY, type PodLinkState } from '../host/pod-link';
import { canonicalPrefix } from '../host/cidr';

/** What ADD recorded for a pod (router/endpoints.ts EndpointInfo of a pod). */
export interface PodRecord {
  netns: string;
  key: string;
  ifname: string;
  hostIfname: string;
  mac: string;
  hostMac?: string;
  addrs: string[];
  ident?: string;
  pod?: { network: string; containerId: string; namespace?: string; name?: string; infraContainerId?: string };
}

const ipOf = (cidr: string): string => cidr.split('/')[0];

/** Every way the attachment differs from its records; [] when it is as ADD left it. */
export function podDrift(rec: PodRecord, k: PodLinkState, ipamAddrs: string[], prevIps: string[] | undefined, overlayRange: string): string[] {
  const out: string[] = [];
  const addr = rec.addrs[0];
  if (prevIps && !prevIps.some((p) => p === addr)) out.push(`prevResult has ${prevIps.join(', ') || 'no address'}, the attachment ${addr}`);
  if (!ipamAddrs.includes(ipOf(addr))) out.push(`IPAM holds ${ipamAddrs.join(', ') || 'no address'} for ${rec.ident ?? 'this attachment'}, not ${ipOf(addr)}`);
  if (!k.host) out.push(`host interface ${rec.hostIfname} is missing`);
  else if (!k.host.up) out.push(`host interface ${rec.hostIfname} is down`);
  if (!k.hostRoutes.some((d) => canonicalPrefix(d.includes('/') ? d : `${d}/32`) === `${ipOf(addr)}/32`)) out.push(`host route ${ipOf(addr)}/32 dev ${rec.hostIfname} is missing`);
  if (!k.pod) {
    out.push(`interface ${rec.ifname} is missing in ${rec.netns}`);
    return out;
  }
  if (k.pod.mac !== rec.mac) out.push(`interface ${rec.ifname} has MAC ${k.pod.mac}, not ${rec.mac}`);
  if (!k.pod.up) out.push(`interface ${rec.ifname} is down`);
  if (!k.pod.addrs.includes(addr)) out.push(`interface ${rec.ifname} has ${k.pod.addrs.join(', ') || 'no address'}, not ${addr}`);
  const def = k.podRoutes.find((r) => r.dst === 'default');
  if (!def) out.push('the default route is missing');
  else if (def.gateway !== POD_GATEWAY || def.dev !== rec.ifname) out.push(`the default route is via ${def.gateway ?? 'no gateway'} dev ${def.dev ?? '?'}, not via ${POD_GATEWAY} dev ${rec.ifname}`);
  if (!k.podRoutes.some((r) => r.dev === rec.ifname && canonicalPrefix(r.dst) === canonicalPrefix(overlayRange))) out.push(`the route to the overlay ${overlayRange} dev ${rec.ifname} is missing`);
  if (!k.gatewayNeigh) out.push(`the neighbour entry for the gateway ${POD_GATEWAY} is missing`);
  else if (rec.hostMac && (k.gatewayNeigh.lladdr !== rec.hostMac || !k.gatewayNeigh.permanent)) out.push(`the gateway ${POD_GATEWAY} resolves to ${k.gatewayNeigh.lladdr ?? 'nothing'}${k.gatewayNeigh.permanent ? '' : ' (not permanent)'}, not ${rec.hostMac}`);
  return out;
}
