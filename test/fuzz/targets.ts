// Every decoder of hostile input, as fuzz targets (test/fuzz/engine.ts): what peers send (handshake,
// frames, gossip channels, overlay control, sleeve datagrams), what clients send (DNS over UDP and
// TCP, the HTTP API, the CNI request, the Docker plugin) and what the data dir holds (state files).
import type { Target } from './engine';
import { MESH_TARGETS } from './targets-mesh';
import { DATA_TARGETS } from './targets-data';
import { API_TARGETS } from './targets-api';
import { STATE_TARGETS } from './targets-state';
import { GOSSIPER_TARGETS } from './targets-gossipers';

export const TARGETS: Target[] = [...MESH_TARGETS, ...GOSSIPER_TARGETS, ...DATA_TARGETS, ...API_TARGETS, ...STATE_TARGETS];

export function targetNamed(name: string): Target {
  const t = TARGETS.find((x) => x.name === name);
  if (!t) throw new Error(`no fuzz target ${name}; targets: ${TARGETS.map((x) => x.name).join(', ')}`);
  return t;
}
