// A pod's link (CNI, cni/): the same layer-3 attachment `weave attach` makes (a veth whose host end
// answers ARP for the overlay and carries a /32 route per address) plus what Kubernetes needs: the
// runtime's interface name and a default route. The pod routes everything it does not reach on-link
// through a gateway address that exists nowhere: 169.254.1.1, link-local, with a permanent
// neighbour entry for the host end's MAC, so the pod never depends on the host answering ARP for it
// (proxy ARP answers only what the host itself routes; a host without a default route would not).
//
// Built for pod churn: two processes per pod (one `ip -batch` in the host namespace that creates the
// pair with both MACs and the pod end already in the pod's namespace under its final name, and the
// host's /32 route to the pod; one in the pod's namespace for its address, routes and the gateway's
// neighbour), where `weave attach` takes about ten.
// Creation is all or nothing: any failure deletes the host end, which takes the pod end with it.
import { createHash, randomBytes } from 'crypto';
import { canonicalPrefix, networkCidr, parseCidr4 } from './cidr';
import { batchFailures, execHost, HostCtx, HostError, ipBatch, nsPrefix, sysctl } from './ip';

/** The pods' gateway: answered by the host end of each pod's veth (a permanent neighbour in the pod). */
export const POD_GATEWAY = '169.254.1.1';
/** Host ends of pods' veths: the masquerade rule (host/pod-masq.ts) matches this prefix. */
export const POD_HOST_IF_PREFIX = 'vethwepl';
const MULTICAST = '224.0.0.0/4';

/** Host end of a pod's veth: "vethwepl" + 7 hex digits of sha256(key) = 15 characters (IFNAMSIZ-1). */
export function podHostIfName(key: string): string {
  return POD_HOST_IF_PREFIX + createHash('sha256').update(key).digest('hex').slice(0, 7);
}

/**
 * How commands enter a pod's namespace: by name (`ip -n NAME`, one process) when the runtime put it
 * in `ip netns`'s directory, as containerd and podman do; else by path (nsenter, then ip).
 */
export function podNetnsCtx(path: string): HostCtx {
  const m = /^\/(?:var\/)?run\/netns\/([A-Za-z0-9_.][A-Za-z0-9_.\-]*)$/.exec(path);
  return m && m[1] !== '.' && m[1] !== '..' ? { netns: m[1] } : { netns: path };
}

/** A random locally administered unicast MAC (what the kernel would pick, chosen here so it is known before). */
export function randomMac(bytes: Buffer = randomBytes(6)): string {
  const b = Buffer.from(bytes.subarray(0, 6));
  b[0] = (b[0] & 0xfe) | 0x02;
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

export interface PodLinkSpec {
  hostIf: string;
  hostMac: string;
  podMac: string;
  /** the pod's namespace file (CNI_NETNS) */
  netnsPath: string;
  /** how commands enter the pod's namespace */
  podCtx: HostCtx;
  /** the runtime's interface name (CNI_IFNAME) */
  ifname: string;
  mtu: number;
  /** the pod's address as ADDR/LEN */
  cidr: string;
  /** the overlay range, routed on-link like an attached container's */
  overlayRange: string;
  /** more lines for the host's batch once the veth is up (the endpoints' /32 route to the pod) */
  hostLines?: string[];
}

/**
 * Pure: the `ip -batch` lines for the host namespace and the pod's. `replace` re-programs an existing
 * pod (router restart); creation uses `add`, so a pod that already has such an address or a default
 * route fails loudly instead of losing it.
 */
export function podLinkLines(s: PodLinkSpec, replace = false): { host: string[]; pod: string[] } {
  const op = replace ? 'replace' : 'add';
  const host = [
    `link add ${s.hostIf} address ${s.hostMac} mtu ${s.mtu} type veth peer name ${s.ifname} address ${s.podMac} mtu ${s.mtu} netns ${s.netnsPath}`,
    `link set ${s.hostIf} up`,
    ...(s.hostLines ?? []),
  ];
  const pod = [`link set ${s.ifname} mtu ${s.mtu} up`, `addr ${op} ${s.cidr} dev ${s.ifname}`];
  // the address's own subnet route (the kernel's) already covers the overlay when they are equal
  if (canonicalPrefix(networkCidr(parseCidr4(s.cidr))) !== canonicalPrefix(s.overlayRange)) pod.push(`route ${op} ${s.overlayRange} dev ${s.ifname} scope link`);
  pod.push(
    `route ${op} ${MULTICAST} dev ${s.ifname} scope link`,
    `neigh replace ${POD_GATEWAY} lladdr ${s.hostMac} dev ${s.ifname} nud permanent`,
    `route ${op} default via ${POD_GATEWAY} dev ${s.ifname} onlink`,
  );
  return { host, pod };
}

/** The failing line of an `ip -batch` ("Command failed -:N"), to say what the kernel refused. */
function failedLine(e: unknown, lines: string[]): string {
  return e instanceof HostError ? batchFailures(e.stderr, lines)[0]?.text ?? '' : '';
}

/** Host-side sysctls of a pod's veth: proxy ARP for the overlay on-link route, answered at once. */
async function hostSide(ctx: HostCtx, hostIf: string): Promise<void> {
  await sysctl(ctx, `net/ipv4/conf/${hostIf}/proxy_arp`, 1);
  await sysctl(ctx, `net/ipv4/neigh/${hostIf}/proxy_delay`, 0);
}

/**
 * Creates and programs a pod's link; on any failure removes what it made and throws a HostError
 * naming the step the kernel refused.
 */
export async function createPodLink(hostCtx: HostCtx, s: PodLinkSpec): Promise<void> {
  const { host, pod } = podLinkLines(s);
  try {
    await ipBatch(hostCtx, host);
  } catch (e) {
    const line = failedLine(e, host);
    // the first line makes the pair atomically; later lines failing leave it behind
    if (line !== host[0]) await deletePodLink(hostCtx, s.hostIf);
    throw explain(e, 'host', line, s);
  }
  try {
    await hostSide(hostCtx, s.hostIf);
    await ipBatch(s.podCtx, pod);
  } catch (e) {
    await deletePodLink(hostCtx, s.hostIf);
    throw explain(e, 'pod', failedLine(e, pod), s);
  }
}

function explain(e: unknown, where: 'host' | 'pod', line: string, s: PodLinkSpec): unknown {
  if (!(e instanceof HostError)) return e;
  const exists = /File exists/.test(e.stderr);
  let hint = '';
  if (exists && where === 'host' && line.startsWith('link add')) hint = `: the pod's namespace already has an interface named ${s.ifname}, or ${s.hostIf} exists on the host`;
  else if (exists && where === 'host') hint = ': the host already routes that address';
  else if (exists && line.includes('default')) hint = ': the pod already has a default route (another network\'s interface?)';
  else if (exists) hint = ': the pod already has it';
  return new HostError(`${where === 'host' ? 'host' : 'pod namespace'}: ${line || e.command}: ${e.stderr || e.message}${hint}`, { command: e.command, stderr: e.stderr, exists });
}

/** Re-programs a pod's link after a router restart (idempotent: replace, never add). */
export async function ensurePodLink(hostCtx: HostCtx, s: PodLinkSpec): Promise<void> {
  await hostSide(hostCtx, s.hostIf);
  await ipBatch(hostCtx, [`link set ${s.hostIf} mtu ${s.mtu} up`]);
  await ipBatch(s.podCtx, podLinkLines(s, true).pod);
}

/** Deletes a pod's veth (both ends) if it exists; true when something was deleted. One process. */
export async function deletePodLink(hostCtx: HostCtx, hostIf: string): Promise<boolean> {
  try {
    await ipBatch(hostCtx, [`link del ${hostIf}`]);
    return true;
  } catch (e) {
    if (e instanceof HostError && /Cannot find device|does not exist/.test(e.stderr)) return false;
    throw e;
  }
}

/** What the kernel has for a pod (CHECK compares it with the record). */
export interface PodLinkState {
  /** the pod's interface, if present */
  pod?: { mac: string; up: boolean; mtu: number; addrs: string[] };
  /** the pod's routes (main table) as "dst via gw dev" facts */
  podRoutes: Array<{ dst: string; gateway?: string; dev?: string }>;
  /** the pod's neighbour entry for the gateway */
  gatewayNeigh?: { lladdr?: string; permanent: boolean };
  /** the host end, if present */
  host?: { up: boolean };
  /** destinations routed to the host end */
  hostRoutes: string[];
}

interface AddrRow { ifname: string; address?: string; mtu?: number; flags?: string[]; addr_info?: Array<{ family: string; local: string; prefixlen: number }> }

async function ipJsonBatch(ctx: HostCtx, lines: string[]): Promise<unknown[][]> {
  const r = await execHost([...nsPrefix(ctx), 'ip', '-json', '-batch', '-'], { input: lines.join('\n') + '\n' });
  const out = r.stdout.split('\n').filter((l) => l.trim() !== '');
  try {
    return out.map((l) => JSON.parse(l) as unknown[]);
  } catch (e) {
    throw new HostError(`ip -json -batch: unparsable output: ${(e as Error).message}`, { command: 'ip -json -batch -', stderr: r.stderr, stdout: r.stdout.slice(0, 500) });
  }
}

/** Reads a pod's link, routes and gateway neighbour, and the host end with its routes (two processes). */
export async function inspectPodLink(hostCtx: HostCtx, podCtx: HostCtx, ifname: string, hostIf: string): Promise<PodLinkState> {
  const [addrs, routes, neigh] = await ipJsonBatch(podCtx, ['addr show', 'route show', `neigh show ${POD_GATEWAY}`]);
  const me = (addrs as AddrRow[]).find((a) => a.ifname === ifname);
  const state: PodLinkState = {
    podRoutes: (routes as Array<{ dst: string; gateway?: string; dev?: string }>).map((r) => ({ dst: r.dst, gateway: r.gateway, dev: r.dev })),
    hostRoutes: [],
  };
  if (me) {
    state.pod = {
      mac: me.address ?? '',
      up: !!me.flags?.includes('UP'),
      mtu: me.mtu ?? 0,
      addrs: (me.addr_info ?? []).filter((a) => a.family === 'inet').map((a) => `${a.local}/${a.prefixlen}`),
    };
  }
  const n = (neigh as Array<{ dev?: string; lladdr?: string; state?: string[] }>).find((x) => x.dev === ifname);
  if (n) state.gatewayNeigh = { lladdr: n.lladdr, permanent: !!n.state?.includes('PERMANENT') };
  const [links, hostRoutes] = await ipJsonBatch(hostCtx, ['link show', 'route show']);
  const hl = (links as AddrRow[]).find((l) => l.ifname === hostIf);
  if (hl) state.host = { up: !!hl.flags?.includes('UP') };
  state.hostRoutes = (hostRoutes as Array<{ dst: string; dev?: string }>).filter((r) => r.dev === hostIf).map((r) => r.dst);
  return state;
}
