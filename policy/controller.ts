// The NetworkPolicy controller of one node (`weave npc`): keeps the cluster's Namespaces, Pods and
// NetworkPolicies as the API watch delivers them, and after each change (batched for a few ms)
// compiles the node's model (policy/compile.ts) and applies the difference to `inet weave-npc` as one
// `nft -f` transaction (policy/nft.ts). Nothing is installed before the first list of all three kinds
// is in, so the first table is complete. A failed apply (or a table someone removed) is followed by a
// full rebuild in one transaction.
//
// Drops: every group's drop is counted by a named counter (read every 2 s: status, metrics) and
// logged through NFLOG (rate-limited in nftables); each logged packet becomes one structured line
// naming source and destination pods, port and protocol, the direction, the policies that select the
// pod and why none allowed it (policy/explain.ts), and is kept among the latest drops for status.
import { errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';
import type { HostCtx } from '../host/ip';
import { execHost, nftApply, nsPrefix } from '../host/ip';
import { compile, type ClusterState, type Compiled } from './compile';
import { explainDrop, type PolicyWhy } from './explain';
import type { LoggedPacket } from './nflog';
import { parseNamespace, parsePod, parsePolicy, selects, type Direction, type Namespace, type Pod, type Policy, type Problem } from './model';
import { logPrefix, NPC_TABLE, parseCounters, planChange, planFull, UNKNOWN_COUNTER, type NftOptions } from './nft';

export type Kind = 'Namespace' | 'Pod' | 'NetworkPolicy';
export const KINDS: readonly Kind[] = ['Namespace', 'Pod', 'NetworkPolicy'];

export interface WatchEvent {
  kind: Kind;
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  object: unknown;
}

export interface DropRecord {
  at: string;
  direction: Direction;
  src: string;
  srcIp?: string;
  dst: string;
  dstIp?: string;
  protocol: string;
  port?: number;
  policies: string[];
  why: PolicyWhy[];
}

export interface ApplyStats {
  applies: number;
  fullBuilds: number;
  errors: number;
  lastError?: string;
  /** duration of the latest apply (compile + nft) in ms, its script size in lines */
  lastMs?: number;
  /** this process's CPU time in the latest apply (compile and plan; nft's own CPU is not in it), ms */
  lastCpuMs?: number;
  lastLines?: number;
  lastAt?: string;
}

export interface ControllerOptions {
  node: string;
  nft: NftOptions;
  host: HostCtx;
  log: Logger;
  /** how long changes are gathered before one apply (ms) */
  batchMs?: number;
  /** applies a script (default: nft -f in host); tests hand in a recorder */
  apply?: (script: string) => Promise<void>;
  /** reads the named counters (default: nft -j list counters in host) */
  readCounters?: () => Promise<Map<string, number> | null>;
}

const MAX_DROPS = 50;
const PROTO_NAMES: Record<number, string> = { 1: 'ICMP', 6: 'TCP', 17: 'UDP', 132: 'SCTP' };

function key(o: { namespace?: string; name: string }): string {
  return o.namespace ? `${o.namespace}/${o.name}` : o.name;
}

export class PolicyController {
  private readonly namespaces = new Map<string, Namespace>();
  private readonly pods = new Map<string, Pod>();
  private readonly policies = new Map<string, Policy>();
  private readonly synced = new Set<Kind>();
  private applied: Compiled | null = null;
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private dirty = false;
  /** namespaces whose pods changed since the last compile (the sets covering them are recomputed); null: all */
  private dirtyNs: Set<string> | null = null;
  private stopped = false;
  private counters = new Map<string, number>();
  /** counts of groups gone from the table, so totals never go down */
  private readonly retired = new Map<string, { direction: Direction; namespace: string; policies: string; packets: number }>();
  readonly drops: DropRecord[] = [];
  readonly stats: ApplyStats = { applies: 0, fullBuilds: 0, errors: 0 };
  private readonly log: Logger;
  private readonly applyScript: (s: string) => Promise<void>;
  private readonly readCountersFn: () => Promise<Map<string, number> | null>;
  /** resolves each time an apply finishes (tests and the bench wait on it) */
  private waiters: Array<() => void> = [];

  constructor(private readonly o: ControllerOptions) {
    this.log = o.log;
    this.applyScript = o.apply ?? ((s) => nftApply(o.host, s));
    this.readCountersFn = o.readCounters ?? (() => readCounters(o.host));
  }

  // ---- input ----------------------------------------------------------------------------------

  handle(ev: WatchEvent): void {
    try {
      if (ev.kind === 'Namespace') {
        const n = parseNamespace(ev.object);
        if (ev.type === 'DELETED') this.namespaces.delete(n.name); else this.namespaces.set(n.name, n);
        this.dirtyNs = null;
      } else if (ev.kind === 'Pod') {
        const p = parsePod(ev.object);
        if (ev.type === 'DELETED') this.pods.delete(key(p)); else this.pods.set(key(p), p);
        this.dirtyNs?.add(p.namespace);
      } else {
        const p = parsePolicy(ev.object);
        if (ev.type === 'DELETED') { this.policies.delete(p.id); } else {
          const before = this.policies.get(p.id);
          this.policies.set(p.id, p);
          if (p.problems.length && JSON.stringify(before?.problems) !== JSON.stringify(p.problems)) {
            this.log.warn({ policy: p.id, problems: p.problems, denied: [...p.denied] }, 'NetworkPolicy cannot be enforced as written: the pods it selects are denied in these directions');
          }
        }
      }
    } catch (e) {
      this.log.warn({ kind: ev.kind, err: errMsg(e) }, 'ignored an object the API sent without name or namespace');
      return;
    }
    this.schedule();
  }

  /** The watch's list for kind is complete (replaces what was held for that kind). */
  replace(kind: Kind, objects: unknown[]): void {
    const target = kind === 'Namespace' ? this.namespaces : kind === 'Pod' ? this.pods : this.policies;
    target.clear();
    for (const object of objects) this.handle({ kind, type: 'ADDED', object });
    // a relist may have dropped objects without an event: recompute everything
    this.dirtyNs = null;
    this.synced.add(kind);
    this.schedule();
  }

  get isSynced(): boolean {
    return KINDS.every((k) => this.synced.has(k));
  }

  state(): ClusterState {
    return { namespaces: this.namespaces, pods: [...this.pods.values()], policies: [...this.policies.values()] };
  }

  // ---- applying -------------------------------------------------------------------------------

  private schedule(): void {
    if (this.stopped || !this.isSynced) return;
    if (this.running) { this.dirty = true; return; }
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.running = this.run().finally(() => {
        this.running = null;
        // a change that came in after the loop's last check
        if (this.dirty) this.schedule();
        else for (const w of this.waiters.splice(0)) w();
      });
    }, this.o.batchMs ?? 5);
  }

  private async run(): Promise<void> {
    do {
      this.dirty = false;
      const t0 = process.hrtime.bigint();
      const cpu0 = process.cpuUsage();
      const reuse = this.dirtyNs && this.applied ? { sets: this.applied.setsByKey, dirtyNs: this.dirtyNs } : undefined;
      this.dirtyNs = new Set();
      const next = compile(this.state(), this.o.node, reuse);
      const full = this.applied === null;
      const script = full ? planFull(next, this.o.nft) : planChange(this.applied!, next, this.o.nft);
      try {
        if (script) await this.applyScript(script);
        if (full) this.stats.fullBuilds++;
        if (this.applied) this.retireGone(this.applied, next);
        this.applied = next;
        this.stats.applies++;
        this.stats.lastMs = Number(process.hrtime.bigint() - t0) / 1e6;
        const cpu = process.cpuUsage(cpu0);
        this.stats.lastCpuMs = (cpu.user + cpu.system) / 1000;
        this.stats.lastLines = script ? script.split('\n').length - 1 : 0;
        this.stats.lastAt = new Date().toISOString();
        if (full) this.log.info({ table: `inet ${NPC_TABLE}`, ms: Math.round(this.stats.lastMs), lines: this.stats.lastLines, policies: this.policies.size, pods: this.pods.size }, 'network policies programmed');
      } catch (e) {
        this.stats.errors++;
        this.stats.lastError = errMsg(e);
        this.log.error({ err: errMsg(e), full }, 'applying network policies failed: rebuilding the table');
        this.applied = null;
        this.dirtyNs = null;
        if (!full) { this.dirty = true; continue; }
        // a full build failed: try again in a second, not in a loop
        setTimeout(() => this.schedule(), 1000).unref();
      }
    } while (this.dirty && !this.stopped);
  }

  /** Resolves after the next apply that follows the changes handed in so far. */
  settled(): Promise<void> {
    if (!this.timer && !this.running && !this.dirty) return Promise.resolve();
    return new Promise((r) => this.waiters.push(r));
  }

  /** Forget what the table holds (it was removed or changed under us): the next apply rebuilds it. */
  invalidate(): void {
    this.applied = null;
    this.dirtyNs = null;
    this.schedule();
  }

  // ---- drops ----------------------------------------------------------------------------------

  private podByIp(ip: string | undefined): Pod | undefined {
    if (!ip) return undefined;
    for (const p of this.pods.values()) if (p.ip === ip && !p.hostNetwork && !p.terminated) return p;
    return undefined;
  }

  /** One logged packet -> one structured line and a status record. */
  onLogged(pkt: LoggedPacket): void {
    const m = /^npc ([ie]) (g[ie]-[0-9a-f]+)$/.exec(pkt.prefix.trim());
    if (!m) return;
    const direction: Direction = m[1] === 'i' ? 'ingress' : 'egress';
    const group = this.applied?.groups.get(m[2]);
    const srcPod = this.podByIp(pkt.src);
    const dstPod = this.podByIp(pkt.dst);
    const protocol = PROTO_NAMES[pkt.proto ?? -1] ?? `proto ${pkt.proto}`;
    const subject = direction === 'ingress' ? dstPod : srcPod;
    const selecting = [...this.policies.values()].filter((p) => p.types.has(direction) && !!subject && selects(p, subject));
    const why = explainDrop(selecting, direction, { ip: pkt.src ?? '', pod: srcPod }, { ip: pkt.dst ?? '', pod: dstPod },
      (PROTO_NAMES[pkt.proto ?? -1] as 'TCP') ?? 'ICMP', pkt.port, (ns) => this.namespaces.get(ns)?.labels);
    const name = (p: Pod | undefined, ip: string | undefined) => (p ? `${p.namespace}/${p.name}` : ip ?? '?');
    const rec: DropRecord = {
      at: new Date().toISOString(), direction,
      src: name(srcPod, pkt.src), srcIp: pkt.src, dst: name(dstPod, pkt.dst), dstIp: pkt.dst,
      protocol, port: pkt.port,
      policies: group?.policies ?? selecting.map((p) => p.id),
      why: why.length ? why : [{ policy: '', why: 'the policies changed since the drop: it was allowed by the rules in force now' }],
    };
    this.drops.push(rec);
    if (this.drops.length > MAX_DROPS) this.drops.shift();
    this.log.info({ direction, src: rec.src, srcIp: rec.srcIp, dst: rec.dst, dstIp: rec.dstIp, protocol, port: rec.port, policies: rec.policies, why: rec.why }, 'dropped by network policy');
  }

  /** Reads the drop counters now (status and metrics read the cached values). */
  async refreshCounters(): Promise<void> {
    const c = await this.readCountersFn();
    if (c === null) {
      if (this.applied !== null) { this.log.warn({ table: `inet ${NPC_TABLE}` }, 'the policy table is gone: rebuilding it'); this.invalidate(); }
      return;
    }
    this.counters = c;
  }

  private groupNs(policies: string[]): string {
    return policies[0]?.split('/')[0] ?? '';
  }

  private retireGone(prev: Compiled, next: Compiled): void {
    for (const g of prev.groups.values()) {
      if (next.groups.has(g.chain)) continue;
      const n = this.counters.get(g.counter) ?? 0;
      if (n === 0) continue;
      const k = `${g.direction}|${g.policies.join(',')}`;
      const r = this.retired.get(k) ?? { direction: g.direction, namespace: this.groupNs(g.policies), policies: g.policies.join(','), packets: 0 };
      r.packets += n;
      this.retired.set(k, r);
    }
  }

  /** Dropped packets per direction, namespace and policy group (live counters plus retired groups). */
  dropCounts(): Array<{ direction: Direction; namespace: string; policies: string; packets: number }> {
    const out = new Map<string, { direction: Direction; namespace: string; policies: string; packets: number }>();
    for (const r of this.retired.values()) out.set(`${r.direction}|${r.policies}`, { ...r });
    for (const g of this.applied?.groups.values() ?? []) {
      const k = `${g.direction}|${g.policies.join(',')}`;
      const cur = out.get(k) ?? { direction: g.direction, namespace: this.groupNs(g.policies), policies: g.policies.join(','), packets: 0 };
      cur.packets += this.counters.get(g.counter) ?? 0;
      out.set(k, cur);
    }
    return [...out.values()];
  }

  unclassifiedDrops(): Record<Direction, number> {
    return { ingress: this.counters.get(UNKNOWN_COUNTER.ingress) ?? 0, egress: this.counters.get(UNKNOWN_COUNTER.egress) ?? 0 };
  }

  // ---- status ---------------------------------------------------------------------------------

  status(): NpcStatus {
    const local = [...this.pods.values()].filter((p) => p.nodeName === this.o.node && !p.hostNetwork && !p.terminated);
    const inForce: NpcStatus['policies'] = [];
    for (const pol of [...this.policies.values()].sort((a, b) => a.id.localeCompare(b.id))) {
      const sel = local.filter((p) => selects(pol, p));
      if (sel.length) inForce.push({ policy: pol.id, types: [...pol.types].sort(), pods: sel.map((p) => `${p.namespace}/${p.name}`).sort() });
    }
    return {
      node: this.o.node,
      synced: this.isSynced,
      table: `inet ${NPC_TABLE}`,
      counts: { namespaces: this.namespaces.size, pods: this.pods.size, localPods: local.length, policies: this.policies.size },
      policies: inForce,
      unenforceable: [...this.policies.values()].filter((p) => p.problems.length).map((p) => ({ policy: p.id, denied: [...p.denied].sort(), problems: p.problems })),
      drops: [...this.drops].reverse(),
      dropCounts: this.dropCounts(),
      unclassified: this.unclassifiedDrops(),
      apply: { ...this.stats },
      logPrefixes: [...(this.applied?.groups.values() ?? [])].map((g) => ({ prefix: logPrefix(g), policies: g.policies })),
    };
  }

  /** Stops applying; the table stays (pods keep their policies while the controller restarts). */
  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    for (const w of this.waiters.splice(0)) w();
  }
}

export interface NpcStatus {
  node: string;
  synced: boolean;
  table: string;
  counts: { namespaces: number; pods: number; localPods: number; policies: number };
  policies: Array<{ policy: string; types: string[]; pods: string[] }>;
  unenforceable: Array<{ policy: string; denied: string[]; problems: Problem[] }>;
  drops: DropRecord[];
  dropCounts: Array<{ direction: Direction; namespace: string; policies: string; packets: number }>;
  unclassified: Record<Direction, number>;
  apply: ApplyStats;
  logPrefixes: Array<{ prefix: string; policies: string[] }>;
}

/** The named counters of our table; null when the table does not exist. */
export async function readCounters(host: HostCtx): Promise<Map<string, number> | null> {
  const argv = [...nsPrefix(host), 'nft', '-j', 'list', 'counters', 'table', 'inet', NPC_TABLE];
  const r = await execHost(argv, { allowFail: true });
  if (r.code !== 0) {
    if (/No such file or directory/.test(r.stderr)) return null;
    throw new Error(`${argv.join(' ')}: ${r.stderr.trim()}`);
  }
  return parseCounters(JSON.parse(r.stdout || '{"nftables":[]}'));
}
