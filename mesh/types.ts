// The seams of the control plane. Transport (TCP + handshake + crypto framing, or an in-memory fake)
// produces authenticated MeshConnections; the mesh core (topology, routes, gossip, connection maker)
// works only through these interfaces, so simulations swap the transport and the clock.
import type { PeerName } from './peer';
import type { RotationStatus } from './rotation';

/** What each side says about itself in the first (encrypted, when a password is set) message. */
export interface Features {
  name: PeerName;
  nickname: string;
  uid: string;
  /** random per connection attempt, chosen by the dialler; both ends report the same id */
  connId: string;
  /** overlays this router can run on the connection, best first: e.g. ['fastdp', 'sleeve'] */
  overlays: string[];
  /** per-overlay parameters (sleeve UDP port, fastdp VTEP ...), opaque to the mesh */
  overlayParams: Record<string, unknown>;
  /** this side trusts the other's network (--trusted-subnets): data may go unencrypted if both do */
  trusted: boolean;
  /** where this router listens, so peers can dial back (discovery) */
  listenPort: number;
  /**
   * this side takes topology records as deltas (mesh/topology.ts RecordDelta). Absent on routers
   * that predate them, which must get full records only: they close a connection on a topology
   * message they cannot decode.
   */
  topologyDeltas?: boolean;
}

/** Message type numbers on a connection. 0-31 belong to the mesh; 32+ to overlays (router/, ipsec/). */
export const Msg = {
  Heartbeat: 1,
  Topology: 2, // full or delta topology gossip
  Gossip: 3, // gossip channel message (channel name + kind + payload)
  Rekey: 4, // password rotation: handled inside the wire session (mesh/wire.ts), never delivered
  Overlay: 32, // overlay control (name + payload), e.g. sleeve/fastdp parameters and status
} as const;

export interface MeshConnection {
  readonly id: string; // = local features.connId for outbound, remote's for inbound
  readonly outbound: boolean;
  /** remote end of the TCP connection, "ip:port" */
  readonly remoteAddr: string;
  /** local end of the TCP connection, "ip:port" (tells which local address the peer sees) */
  readonly localAddr: string;
  readonly encrypted: boolean;
  /** SHA-256(X25519 shared secret ‖ password): 32 bytes when encrypted, else null. Overlays derive their keys from it. */
  readonly sessionKey: Uint8Array | null;
  /**
   * The key overlays seal data with: the session key, or null when the connection is unencrypted or both
   * ends trust each other's network (--trusted-subnets; the control channel stays encrypted).
   */
  readonly dataKey: Uint8Array | null;
  /**
   * Password rotation (mesh/rotation.ts): the generation of the password each direction is keyed
   * with (tx: what we seal with, rx: what the peer seals with); absent on transports without passwords.
   */
  readonly keyGeneration?: { tx: number; rx: number };
  /**
   * Password rotation: the data key moves on a live connection, per direction, make-before-break.
   * 'accept': the peer may soon seal data under key (open with it too); 'use': seal under key from now
   * on (dataKey is now key); 'settled': the peer seals under key (the old receive key may go after a
   * grace period). Never called when dataKey is null (unencrypted or trusted). Returns an unsubscribe.
   */
  watchDataKey?(fn: DataKeyWatcher): () => void;
  readonly local: Features;
  readonly remote: Features;
  /** Sends one message; throws nothing — a failed send closes the connection. */
  send(type: number, payload: Uint8Array): void;
  /** Closes the connection; onClose fires once with this reason. */
  close(reason: string): void;
  onMessage: (type: number, payload: Uint8Array) => void;
  onClose: (reason: string) => void;
}

export type DataKeyWatcher = (step: 'accept' | 'use' | 'settled', key: Uint8Array) => void;

/** Outcome of a failed dial or accept, with a code an operator can act on. */
export interface ConnectFailure {
  code: string; // e.g. 'EPASSWORD', 'EENCRYPTION', 'EVERSION', 'ECONNREFUSED', 'ETIMEDOUT', 'EPROTO'
  message: string;
}

export interface Transport {
  /** Starts accepting; each authenticated inbound connection is handed to onConnection. */
  listen(onConnection: (c: MeshConnection) => void, onRefused: (remoteAddr: string, f: ConnectFailure) => void): Promise<void>;
  /**
   * Connects to "host:port", runs the handshake; rejects with a WeaveError whose code is a
   * ConnectFailure code (ECANCELED when signal aborts first).
   */
  dial(address: string, local: Features, opts?: { signal?: AbortSignal }): Promise<MeshConnection>;
  /** Features this transport sends on inbound connections. */
  setLocalFeatures(f: Features): void;
  close(): Promise<void>;
  /** Password rotation state, for status (transports with passwords). */
  rotation?(): RotationStatus;
}

// ---- gossip channels (the API IPAM and DNS use; semantics follow Weave's mesh library) ----

/** A piece of gossip state that merges: encode for the wire, merge into a larger view. */
export interface GossipData {
  encode(): Uint8Array[];
  /** Merges other into this and returns this (used to coalesce pending outgoing gossip). */
  merge(other: GossipData): GossipData;
}

export interface Gossiper {
  /** A unicast message from src addressed to this peer. */
  onGossipUnicast(src: PeerName, msg: Uint8Array): void;
  /** A broadcast from src; return what was new to us (relayed by the broadcast tree regardless). */
  onGossipBroadcast(src: PeerName, update: Uint8Array): GossipData | null;
  /** Full state, sent periodically to neighbours and to each new connection. */
  gossip(): GossipData | null;
  /** Gossip from a neighbour; merge it and return the delta that was new (to pass on), or null. */
  onGossip(update: Uint8Array): GossipData | null;
  /**
   * Optional: a digest of the state, equal on two peers when their states are (e.g. versionDigest of
   * origin -> version). With it, the periodic round sends the digest and full state only on a mismatch.
   */
  digest?(): Uint8Array;
  /**
   * Optional: what a new neighbour is sent when the connection opens, instead of gossip()'s full state
   * (a state of N peers x N entries sent on each of N connections is N^3 while a large mesh forms; the
   * periodic rounds and broadcasts bring the rest).
   */
  connectState?(): GossipData | null;
}

export interface GossipChannel {
  readonly name: string;
  /** Sends msg to dst along the unicast route. Returns false when dst is unreachable. */
  gossipUnicast(dst: PeerName, msg: Uint8Array): boolean;
  /** Sends update to every reachable peer exactly once along this peer's broadcast tree. */
  gossipBroadcast(update: GossipData): void;
  /** Queues update for gossip to neighbours (a random subset now, everyone on the periodic round). */
  gossip(update: GossipData): void;
}
