// The peers that ever joined, kept in a ConfigMap (kube-system/weave-net by default), and the
// reclaim of a deleted Node's address space, as Weave Net's kube-utils did, but at the delete and not
// only at the next restart.
//
// The ConfigMap's annotation kube-peers.weave.works/peers holds {"peers": [{peerName, nodeName,
// reclaimedBy?}]}. Every change is a read-modify-write with the resourceVersion (409 Conflict ->
// read again and retry), so the ConfigMap is the lock:
//   1. a router that sees entries whose Node is gone marks them reclaimedBy=itself (only entries
//      nobody marked); the update that succeeds decides who reclaims: exactly one router does;
//   2. it takes over their space (IPAM transferFrom, what `weave rmpeer` does);
//   3. it removes the entries.
// A router that dies between 1 and 3 finds its own marks at its next start and finishes them (the
// transfer is idempotent: a second one takes 0 addresses). A peer still reachable (its router runs
// though its Node is gone) is refused by IPAM: the mark stays and the reclaim is tried again later.
import type { Clock } from '../lib/clock';
import { WeaveError, errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';
import { KubeApiError, type KubeClient, type KubeObject } from './client';

export const PEERS_ANNOTATION = 'kube-peers.weave.works/peers';

export interface PeerEntry { peerName: string; nodeName: string; reclaimedBy?: string }

interface ConfigMap extends KubeObject { data?: Record<string, string> }

const MAX_ATTEMPTS = 20;

export function parsePeers(cm: ConfigMap | undefined): PeerEntry[] {
  const text = (cm?.metadata.annotations as Record<string, string> | undefined)?.[PEERS_ANNOTATION];
  if (!text) return [];
  let v: unknown;
  try { v = JSON.parse(text); } catch (e) {
    throw new WeaveError('EKUBEPEERS', `ConfigMap ${cm!.metadata.namespace}/${cm!.metadata.name}: annotation ${PEERS_ANNOTATION} is not JSON: ${errMsg(e)}`);
  }
  const peers = (v as { peers?: unknown })?.peers;
  if (!Array.isArray(peers)) throw new WeaveError('EKUBEPEERS', `ConfigMap ${cm!.metadata.namespace}/${cm!.metadata.name}: annotation ${PEERS_ANNOTATION} has no "peers" list`);
  return peers.filter((p): p is PeerEntry => p && typeof p.peerName === 'string' && typeof p.nodeName === 'string')
    .map((p) => ({ peerName: p.peerName, nodeName: p.nodeName, ...(typeof p.reclaimedBy === 'string' ? { reclaimedBy: p.reclaimedBy } : {}) }));
}

export interface ReclaimOptions {
  client: KubeClient;
  configMap: { namespace: string; name: string };
  self: { peerName: string; nodeName: string };
  /** IPAM's rmpeer */
  transferFrom(peer: string): Promise<number>;
  clock: Clock;
  log: Logger;
}

export interface ReclaimRecord { at: number; node: string; peer: string; addresses: number }

export class PeerList {
  readonly reclaims: ReclaimRecord[] = [];
  readonly counters = { updates: 0, conflicts: 0, reclaims: 0, refused: 0 };
  lastError = '';
  private busy: Promise<void> = Promise.resolve();

  constructor(private readonly o: ReclaimOptions) {}

  private get path(): string { return `/api/v1/namespaces/${this.o.configMap.namespace}/configmaps/${this.o.configMap.name}`; }

  /** Read-modify-write of the peer list: `change` returns the new list, or undefined for no change. */
  async mutate(change: (peers: PeerEntry[]) => PeerEntry[] | undefined): Promise<PeerEntry[]> {
    for (let attempt = 1; ; attempt++) {
      let cm: ConfigMap | undefined;
      try {
        cm = await this.o.client.get<ConfigMap>(this.path);
      } catch (e) {
        if (!(e instanceof KubeApiError && e.status === 404)) throw e;
      }
      const peers = parsePeers(cm);
      const next = change(peers.map((p) => ({ ...p })));
      if (!next) return peers;
      const annotations = { ...((cm?.metadata.annotations as Record<string, string>) ?? {}), [PEERS_ANNOTATION]: JSON.stringify({ peers: next }) };
      try {
        if (cm) await this.o.client.update<ConfigMap>(this.path, { ...cm, metadata: { ...cm.metadata, annotations } });
        else await this.o.client.create<ConfigMap>(`/api/v1/namespaces/${this.o.configMap.namespace}/configmaps`, { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: this.o.configMap.name, annotations } });
        this.counters.updates++;
        return next;
      } catch (e) {
        const conflict = e instanceof KubeApiError && (e.status === 409);
        if (!conflict || attempt >= MAX_ATTEMPTS) throw e;
        this.counters.conflicts++;
        // someone else changed it first: read it again (a little jitter spreads the racers)
        await new Promise<void>((r) => this.o.clock.setTimeout(r, Math.floor(Math.random() * 20 * attempt)));
      }
    }
  }

  /** This peer is in the list (at start). */
  async join(): Promise<void> {
    const me = this.o.self;
    await this.mutate((peers) => (peers.some((p) => p.peerName === me.peerName && p.nodeName === me.nodeName) ? undefined : [...peers, { ...me }]));
  }

  /** Runs reclaims one at a time (watch events and syncs may overlap); false when one must be tried again. */
  sweep(liveNodes: ReadonlySet<string>): Promise<boolean> {
    const run = this.busy.then(() => this.sweepNow(liveNodes)).then(() => { this.lastError = ''; return true; }, (e: unknown) => {
      this.lastError = errMsg(e);
      this.o.log.warn({ err: errMsg(e) }, 'kube: reclaim of deleted nodes\' space not done; trying again');
      return false;
    });
    this.busy = run.then(() => undefined);
    return run;
  }

  private async sweepNow(liveNodes: ReadonlySet<string>): Promise<void> {
    const me = this.o.self.peerName;
    // 1. mark what is ours to reclaim (entries of gone nodes nobody marked, and our own old marks)
    let mine: PeerEntry[] = [];
    await this.mutate((peers) => {
      mine = [];
      let changed = false;
      for (const p of peers) {
        if (liveNodes.has(p.nodeName) || p.peerName === me) continue;
        if (p.reclaimedBy === me) mine.push(p);
        else if (!p.reclaimedBy) { p.reclaimedBy = me; mine.push(p); changed = true; }
      }
      return changed ? peers : undefined;
    });
    if (mine.length === 0) return;
    // 2. take over their space
    const done: string[] = [];
    for (const p of mine) {
      try {
        const n = await this.o.transferFrom(p.peerName);
        done.push(p.peerName);
        this.counters.reclaims++;
        const rec = { at: this.o.clock.now(), node: p.nodeName, peer: p.peerName, addresses: n };
        this.reclaims.push(rec);
        if (this.reclaims.length > 20) this.reclaims.shift();
        this.o.log.info(rec, `kube: node ${p.nodeName} is gone: took over ${n} addresses of its peer ${p.peerName}`);
      } catch (e) {
        const notOwner = /owns space in the ring|no peer named/.test(errMsg(e));
        if (notOwner) { done.push(p.peerName); continue; } // it never owned space: nothing to take
        this.counters.refused++;
        this.lastError = errMsg(e);
        this.o.log.warn({ node: p.nodeName, peer: p.peerName, err: errMsg(e) }, 'kube: cannot take over a deleted node\'s space yet; retrying');
      }
    }
    // 3. the entries go
    if (done.length) await this.mutate((peers) => peers.filter((p) => !(p.reclaimedBy === me && done.includes(p.peerName))));
    if (done.length < mine.length) throw new WeaveError('EKUBERECLAIM', `${mine.length - done.length} reclaims refused for now: ${this.lastError}`);
  }
}
