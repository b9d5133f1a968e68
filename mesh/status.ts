// The one status data model. The router produces it; `weave report` prints it as JSON and
// `weave status ...` renders text views of the same object (api/views.ts). Add fields, never fork it.
import type { PeerName } from './peer';
import type { RotationStatus } from './rotation';

export type ConnState = 'connecting' | 'retrying' | 'failed' | 'pending' | 'established';

export interface ConnectionStatus {
  /** remote "ip:port" (the target address for outbound attempts) */
  address: string;
  outbound: boolean;
  state: ConnState;
  /** why it failed / what it waits for, for people: "password mismatch", "waiting for sleeve heartbeats" ... */
  info: string;
  /** stable code when failed: EPASSWORD, EENCRYPTION, ENAMECOLLISION, ESELF, ECONNREFUSED ... */
  code?: string;
  /** epoch ms of the next retry for failed/retrying outbound targets */
  nextRetry?: number;
  attempts?: number;
  peerName?: PeerName;
  peerNickname?: string;
  /** the overlay carrying data now: 'fastdp' | 'sleeve' | null until one is established */
  overlay: string | null;
  /** the data is encrypted (the control channel is whenever a password is set) */
  encrypted: boolean;
  /** both ends trust each other's network (--trusted-subnets): data unencrypted despite a password */
  trusted?: boolean;
  mtu?: number;
  /** why a better overlay is not used (e.g. "peer has no fastdp", "kernel lacks ESP") */
  overlayReason?: string;
  /** established, but data does not flow over the overlay: why (e.g. "no route to its prefixes") */
  stalled?: string;
  /**
   * the generation of the password the connection is keyed with (password rotation): the lower of
   * the two directions', so it shows the new generation only once both directions moved
   */
  passwordGeneration?: number;
}

export interface PeerConnectionStatus {
  name: PeerName;
  nickname: string;
  address: string;
  outbound: boolean;
  established: boolean;
}

export interface PeerStatus {
  name: PeerName;
  nickname: string;
  uid: string;
  version: number;
  reachable: boolean;
  connections: PeerConnectionStatus[];
}

export interface RouteStatus {
  dest: PeerName;
  via: PeerName;
}

export interface MeshStatus {
  name: PeerName;
  nickname: string;
  uid: string;
  encryption: boolean;
  trustedSubnets: string[];
  protocolMinVersion: number;
  protocolMaxVersion: number;
  peerDiscovery: boolean;
  listen: string;
  connLimit: number;
  peers: PeerStatus[];
  connections: ConnectionStatus[];
  targets: string[];
  routes: RouteStatus[];
  /** password rotation: accepted generations, the window (absent without a password-capable transport) */
  passwordRotation?: RotationStatus;
}
