// Plugs a DnsStore into the mesh as the 'dns' gossip channel and keeps it in step with the topology
// (records of departed peers dropped). Structural types only, so dns/ does not pin mesh internals.
import type { PeerName } from '../mesh/peer';
import type { GossipChannel, Gossiper } from '../mesh/types';
import type { DnsStore } from './records';

export const DNS_CHANNEL = 'dns';

export interface DnsMeshLike {
  newGossip(channel: string, g: Gossiper): GossipChannel;
  /** reachable peers (ourselves included or not: our own records are never dropped) */
  peerNames(): PeerName[];
  on(event: 'peersChanged', fn: () => void): unknown;
  off?(event: 'peersChanged', fn: () => void): unknown;
}

/** Registers the store on the mesh. Returns a function that stops following topology changes. */
export function attachDnsToMesh(store: DnsStore, mesh: DnsMeshLike): { channel: GossipChannel; detach: () => void } {
  const channel = mesh.newGossip(DNS_CHANNEL, store);
  store.attach(channel);
  const onPeers = (): void => store.updatePeers(mesh.peerNames());
  mesh.on('peersChanged', onPeers);
  return { channel, detach: () => mesh.off?.('peersChanged', onPeers) };
}
