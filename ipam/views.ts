// Text views of the `ipam` section of `weave report` (the one status model; see ipam-subsystem.ts).
import type { IpamOwnerStatus, IpamStatus } from '../ipam/allocator';

/** The `ipam` section of the report: the allocator's status plus what only the router knows. */
export interface IpamReport {
  /** ready | waiting for ... | observer | ... : one line for people */
  state: string;
  summary: Record<string, string | number>;
  /** null until the allocator exists (seed nicknames not resolved yet) */
  status: IpamStatus | null;
  /** prefixes announced for our ranges */
  announced: string[];
  /** the quorum used when the consensus seeds the ring, and how it was chosen */
  quorum?: { value: number; from: string };
}

function pad(s: string, n: number): string {
  return s.length >= n ? s : s + ' '.repeat(n - s.length);
}

function pct(n: number): string {
  return `${(Math.round(n * 10) / 10).toFixed(1)}%`;
}

function ownerLine(o: IpamOwnerStatus, self: string, allocated: number): string {
  const who = pad(`${o.peer}(${o.nickname})`, 32);
  const ips = `${o.addresses} IPs (${pct(o.percent)} of total)`;
  if (!o.reachable) return `${who} ${ips} - unreachable!`;
  return o.peer === self ? `${who} ${ips} (${allocated} active)` : `${who} ${ips}`;
}

/** `weave status ipam`: each owner and its share, like Weave's; `unreachable!` for owners that are gone. */
export function renderIpam(report: { ipam?: unknown }): string {
  const r = report.ipam as IpamReport | undefined;
  if (!r) return 'IPAM is not running in this router\n';
  const st = r.status;
  if (!st) return `${r.state}\n`;
  const out: string[] = [];
  if (!st.ring.seeded) out.push(r.state);
  for (const o of st.owners) out.push(ownerLine(o, st.name, st.allocated));
  for (const p of st.pending) out.push(`pending: ${p.ident} in ${p.subnet}: ${p.reason}`);
  const rp = st.repair;
  if (rp) {
    if (rp.adoptedFrom) out.push(`merge repair: adopted the ring seeded by [${st.ring.seeds.join(',')}] (ours was seeded by [${rp.adoptedFrom.join(',')}])`);
    if (rp.waiting) out.push(`merge repair: in progress: ${rp.waiting}`);
    else if (st.conflicts.foreignRings.length || rp.adoptedFrom) out.push(`merge repair: done: one ring, seeded by [${st.ring.seeds.join(',')}]`);
    if (rp.held.length) out.push(`held outside our space (waiting for their owners to hand them over, or duplicates): ${rp.held.length} (${rp.held.slice(0, 8).join(' ')}${rp.held.length > 8 ? ' ...' : ''})`);
    for (const d of rp.duplicates) out.push(`DUPLICATE ${d}`);
  }
  if (st.conflicts.count) out.push(`conflicts: ${st.conflicts.count} (last: ${st.conflicts.last ?? '-'})`);
  return out.join('\n') + (out.length ? '\n' : '');
}

/** The lines `weave status` shows under "Service: ipam". */
export function ipamSummary(state: string, st: IpamStatus | null): Record<string, string | number> {
  if (!st) return { Status: state };
  const total = st.owners.reduce((n, o) => n + o.addresses, 0);
  const unreachable = st.owners.filter((o) => !o.reachable);
  const s: Record<string, string | number> = {
    Status: state,
    Range: st.range,
    DefaultSubnet: st.defaultSubnet,
  };
  if (st.ring.seeded) {
    s.Owned = `${st.owned} IPs (${pct(total ? (st.owned / total) * 100 : 0)} of total)`;
    s.Allocations = `${st.allocated} in ${st.allocations.length} containers`;
    if (unreachable.length) {
      const n = unreachable.reduce((k, o) => k + o.addresses, 0);
      s.Unreachable = `${n} IPs (${pct(total ? (n / total) * 100 : 0)}) owned by ${unreachable.length} unreachable peers`;
    }
  }
  if (st.pending.length) s.Pending = `${st.pending.length} (${st.pending[0].reason})`;
  if (st.conflicts.count) s.Conflicts = `${st.conflicts.count} (${st.conflicts.last ?? ''})`;
  if (st.repair?.waiting) s.Repair = `in progress (${st.repair.waiting})`;
  else if (st.repair && (st.repair.adoptedFrom || st.conflicts.foreignRings.length)) s.Repair = `done: one ring, seeded by [${st.ring.seeds.join(',')}]`;
  if (st.repair?.duplicates.length) s.Duplicates = `${st.repair.duplicates.length} (${st.repair.duplicates[0]})`;
  return s;
}
