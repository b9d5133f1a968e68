// A Docker endpoint's link (docker/): the same layer-3 attachment `weave attach` makes (a veth whose
// host end answers ARP for the overlay and carries a /32 route per address), except that both ends
// are made in the host namespace: libnetwork's Join takes the container end by name, moves it into
// the sandbox, renames it (ethwe0, ethwe1 ...) and gives it the address and the routes the driver's
// Join answer lists. So weave never enters the container's namespace (dockerd may keep it where the
// router cannot see it: another mount namespace).
//
// One `ip -batch` makes the pair, brings the host end up and adds the /32 route; any failure after
// the pair exists deletes the host end, which takes the container end with it.
import { createHash } from 'crypto';
import { batchFailures, HostCtx, HostError, ipBatch, sysctl } from './ip';

/** Host ends of Docker endpoints' veths: "vethwedk" + 7 hex digits ('k' keeps them apart from attach's vethwe + 9 hex). */
export const DOCKER_HOST_IF_PREFIX = 'vethwedk';
/** Container ends while they wait in the host namespace for Docker to take them. */
export const DOCKER_PEER_IF_PREFIX = 'vethwedp';

function digest7(endpointId: string): string {
  return createHash('sha256').update(endpointId).digest('hex').slice(0, 7);
}

/** The host end's name for a Docker endpoint (15 characters, IFNAMSIZ-1). */
export function dockerHostIfName(endpointId: string): string {
  return DOCKER_HOST_IF_PREFIX + digest7(endpointId);
}

/** The container end's name until Docker moves it into the sandbox. */
export function dockerPeerIfName(endpointId: string): string {
  return DOCKER_PEER_IF_PREFIX + digest7(endpointId);
}

export interface DockerLinkSpec {
  hostIf: string;
  peerIf: string;
  mtu: number;
  /** `ip -batch` lines run once the pair is up (the endpoints' /32 route to the container) */
  hostLines: string[];
}

/** Pure: the batch that makes the pair. */
export function dockerLinkLines(s: DockerLinkSpec): string[] {
  return [
    `link add ${s.hostIf} mtu ${s.mtu} type veth peer name ${s.peerIf} mtu ${s.mtu}`,
    `link set ${s.hostIf} up`,
    ...s.hostLines,
  ];
}

/** Creates the pair with proxy ARP on the host end; leaves nothing on failure. */
export async function createDockerLink(ctx: HostCtx, s: DockerLinkSpec): Promise<void> {
  const lines = dockerLinkLines(s);
  try {
    await ipBatch(ctx, lines);
  } catch (e) {
    const exists = e instanceof HostError && /File exists/.test(e.stderr);
    const first = e instanceof HostError && batchFailures(e.stderr, lines)[0]?.line === 1;
    if (!first) await deleteDockerLink(ctx, s.hostIf);
    if (e instanceof HostError) {
      throw new HostError(`making the veth ${s.hostIf} for a Docker endpoint: ${e.stderr || e.message}${exists && first ? ' (a leftover of an earlier Join?)' : ''}`, { command: e.command, stderr: e.stderr, exists });
    }
    throw e;
  }
  try {
    await sysctl(ctx, `net/ipv4/conf/${s.hostIf}/proxy_arp`, 1);
    await sysctl(ctx, `net/ipv4/neigh/${s.hostIf}/proxy_delay`, 0);
  } catch (e) {
    await deleteDockerLink(ctx, s.hostIf);
    throw e;
  }
}

/** Deletes a Docker endpoint's veth if it exists; true when something was deleted. */
export async function deleteDockerLink(ctx: HostCtx, hostIf: string): Promise<boolean> {
  try {
    await ipBatch(ctx, [`link del ${hostIf}`]);
    return true;
  } catch (e) {
    if (e instanceof HostError && /Cannot find device|does not exist/.test(e.stderr)) return false;
    throw e;
  }
}
