// The router's well-known ports, in one place. Weave Net's numbers, so mixed firewall rules and
// habits carry over. Non-default control ports move the VXLAN port with them (control + 1), so
// several routers on one machine (one per namespace) never collide.

/** TCP: mesh control connections (gossip, handshake); UDP: the sleeve overlay's datagrams. */
export const CONTROL_PORT = 6783;

/** TCP, 127.0.0.1 inside the router's namespace: the HTTP API (`weave` talks to it). */
export const HTTP_API_PORT = 6784;

/** UDP: fastdp's kernel VXLAN device, for the default control port (see vxlanPortFor). */
export const VXLAN_PORT = vxlanPortFor(CONTROL_PORT);

/** UDP: fastdp heartbeats, bound on the VTEP address only (the VXLAN socket owns VXLAN_PORT). */
export const FASTDP_HB_PORT = 6785;

/** The VXLAN UDP port of a router whose control port is controlPort. */
export function vxlanPortFor(controlPort: number): number {
  return controlPort + 1;
}

/** Not a port, but a well-known place: the router's data dir unless WEAVE_DATA_DIR says otherwise. */
export const DEFAULT_DATA_DIR = '/var/lib/weave';
