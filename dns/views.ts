// Text views of the `dns` section of `weave report` (the one status model).
import type { DnsStatus } from './report';

export interface DnsReport extends DnsStatus {
  summary: Record<string, string | number>;
  ttl: number;
  counters?: Record<string, number>;
  /** containerId -> the NETNS argument it was attached with, for this host's containers */
  containers: Record<string, string>;
}

function pad(s: string, n: number): string {
  return s.length >= n ? s : s + ' '.repeat(n - s.length);
}

/** `weave status dns`: one line per live record: name, address, origin peer, container. */
export function renderDnsStatus(report: any): string {
  const d = report?.dns as DnsReport | undefined;
  if (!d || !Array.isArray(d.entries)) return 'weaveDNS is not running in this router\n';
  const lines = d.entries.filter((e) => !e.tombstone).map((e) => {
    const cont = e.containerId === undefined ? '-' : (d.containers?.[e.containerId] ?? e.containerId);
    return `${pad(e.hostname, 30)} ${pad(e.address, 15)} ${pad(e.origin, 17)} ${cont}`;
  });
  return lines.map((l) => `${l.trimEnd()}\n`).join('');
}

