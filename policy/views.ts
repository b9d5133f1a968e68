// `weave status policy`: the controller's status (GET /status of `weave npc`) as text.
import type { NpcStatus } from './controller';

export function renderPolicyStatus(s: NpcStatus): string {
  const l: string[] = [];
  l.push(`Node: ${s.node}  Table: ${s.table}  ${s.synced ? 'synced' : 'waiting for the API\'s first lists'}`);
  l.push(`Cluster: ${s.counts.namespaces} namespaces, ${s.counts.pods} pods (${s.counts.localPods} here), ${s.counts.policies} network policies`);
  const a = s.apply;
  l.push(`Applied: ${a.applies} changes (${a.fullBuilds} full builds), last ${a.lastMs !== undefined ? `${a.lastMs.toFixed(1)} ms, ${a.lastLines} nft lines` : 'never'}${a.errors ? `, ${a.errors} errors (last: ${a.lastError})` : ''}`);
  l.push('');
  l.push(`Policies in force on this node: ${s.policies.length}`);
  for (const p of s.policies) l.push(`  ${p.policy} [${p.types.join(',')}] selects ${p.pods.join(' ')}`);
  if (s.unenforceable.length) {
    l.push('');
    l.push(`Policies that cannot be enforced as written (their pods are denied in these directions): ${s.unenforceable.length}`);
    for (const u of s.unenforceable) {
      l.push(`  ${u.policy} denies ${u.denied.join(',')}:`);
      for (const p of u.problems) l.push(`    ${p.field}: ${p.reason}`);
    }
  }
  l.push('');
  const counted = s.dropCounts.filter((d) => d.packets > 0);
  l.push(`Dropped packets: ${counted.reduce((n, d) => n + d.packets, 0)} by policy, ${s.unclassified.ingress + s.unclassified.egress} to or from pods not yet classified`);
  for (const d of counted) l.push(`  ${d.packets} ${d.direction} ${d.namespace}: ${d.policies}`);
  if (s.drops.length) {
    l.push('');
    l.push('Latest drops (rate-limited log; newest first):');
    for (const d of s.drops.slice(0, 20)) {
      l.push(`  ${d.at} ${d.direction} ${d.src} -> ${d.dst} ${d.port ?? ''}/${d.protocol}  policies: ${d.policies.join(', ')}`);
      for (const w of d.why) l.push(`    ${w.policy ? `${w.policy}: ` : ''}${w.why}`);
    }
  }
  return l.join('\n') + '\n';
}
