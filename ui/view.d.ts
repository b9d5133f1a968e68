// The /ui page's view model: the types shared by the router side (ui/model.ts builds it) and the
// page (ui/page/page.ts draws it). Declarations only, so the page's own compile (DOM, ES module)
// takes them without pulling in the router's code.

/** An entry of the router's event log (api/parts/events.ts RouterEvent). */
export interface UiEvent {
  seq: number;
  time: number;
  kind: string;
  peer?: string;
  nickname?: string;
  text: string;
}

export interface UiPeer {
  name: string;
  nickname: string;
  /** the topology record's version (bumped by each change the peer gossips) */
  recordVersion: number;
  /** its weave.ts version and protocol range, from its link gossip ('' until heard) */
  software: string;
  /** where peers dial it (ip:port), as its neighbours record it; ours: the listen address */
  address: string;
  reachable: boolean;
  self: boolean;
}

export interface UiEdge {
  /** the two peer names, sorted */
  a: string;
  b: string;
  /** both ends list each other as established */
  established: boolean;
  /** 'local': one end is this router (its own connection status); 'gossip': from an end's link gossip; 'topology': only who is connected */
  source: 'local' | 'gossip' | 'topology';
  state: string;
  overlay: string | null;
  encryption: 'encrypted' | 'trusted' | 'none' | 'unknown';
  mtu?: number;
  /** why the best overlay is not used */
  reason?: string;
  /** this router's own connection: its info line and (when data does not flow) why */
  info?: string;
  stalled?: string;
  /** this router's connection: nothing heard from the peer on its overlay for this long (ms; only past SILENT_MS) */
  silentMs?: number;
}

/** A connection of this router that is not established: refused handshakes, failing dials. */
export interface UiFailing {
  address: string;
  outbound: boolean;
  state: string;
  info: string;
  code?: string;
  peer?: string;
  nickname?: string;
  nextRetry?: number;
}

export interface UiTraffic {
  peer: string;
  nickname: string;
  overlay: string | null;
  /** cumulative since the connection's path attached (sleeve: datagrams on the wire; fastdp: heartbeats) */
  txPackets: number;
  txBytes: number;
  rxPackets: number;
  rxBytes: number;
  /** per second over the last sample interval (null until two samples exist) */
  txPps: number | null;
  rxPps: number | null;
  txBps: number | null;
  rxBps: number | null;
  drops: { replay: number; auth: number; noRoute: number; tooBig: number };
  /** what the counts are: 'sleeve' (every datagram) or 'fastdp heartbeats' (the kernel counts all peers together) */
  counts: string;
}

export interface UiIpamOwner {
  peer: string;
  nickname: string;
  addresses: number;
  percent: number;
  reachable: boolean;
  /** for an unreachable owner: the command that takes its space over */
  hint?: string;
}

export interface UiIpam {
  state: string;
  range: string;
  /** addresses in the range */
  size: number;
  owners: UiIpamOwner[];
  /** addresses no owner holds (0 once the ring is seeded) */
  unowned: number;
}

export interface UiContainer {
  /** the namespace's name where it has one (ip netns), else what it was attached with */
  name: string;
  key: string;
  addresses: string[];
  mac?: string;
  hostname?: string;
  pod?: string;
}

export interface UiDnsRecord {
  hostname: string;
  address: string;
  origin: string;
  originNickname: string;
  /** the container's name on this host, or its key when it lives elsewhere */
  container: string;
}

export interface UiView {
  time: number;
  self: { name: string; nickname: string; version: string; protocol: string; encryption: boolean; dataDir: string; pid: number; startedAt: number };
  peers: UiPeer[];
  edges: UiEdge[];
  failing: UiFailing[];
  traffic: UiTraffic[];
  /** sleeve drops not tied to a connection (no connection to the destination's peer, unknown destination) */
  unattributedDrops: { noRoute: number; unknownDest: number };
  ipam: UiIpam | null;
  containers: UiContainer[];
  dns: UiDnsRecord[];
  events: UiEvent[];
}

