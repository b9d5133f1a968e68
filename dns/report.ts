// What the API layer shows about weaveDNS: the status section (`weave status dns`, `weave report`)
// and Prometheus samples. Structural writer type, so dns/ does not depend on api/.
import type { DnsStore } from './records';
import type { DnsServer } from './server';

export interface DnsEntryStatus {
  hostname: string;
  address: string;
  origin: string;
  containerId?: string;
  version: number;
  tombstone: boolean;
}

export interface DnsStatus {
  domain: string | null;
  /** "ip:port" the server listens on, null when the server is off (--no-dns) */
  address: string | null;
  upstream: string[];
  entries: DnsEntryStatus[];
}

export function dnsStatus(store: DnsStore, server: DnsServer | null, upstream: readonly string[] = [], opts: { tombstones?: boolean } = {}): DnsStatus {
  const entries: DnsEntryStatus[] = [];
  for (const e of store.all()) {
    if (e.tombstone && !opts.tombstones) continue;
    const s: DnsEntryStatus = { hostname: e.name, address: e.addr, origin: e.origin, version: e.version, tombstone: e.tombstone };
    if (e.containerId !== undefined) s.containerId = e.containerId;
    entries.push(s);
  }
  return {
    domain: server ? server.domain : null,
    address: server ? `${server.listenAddress}:${server.port}` : null,
    upstream: [...upstream],
    entries,
  };
}

export interface MetricsSink {
  counter(name: string, help: string, value: number, labels?: Record<string, string | number>): unknown;
  gauge(name: string, help: string, value: number, labels?: Record<string, string | number>): unknown;
}

export function writeDnsMetrics(w: MetricsSink, store: DnsStore, server: DnsServer | null): void {
  let live = 0;
  let tomb = 0;
  for (const e of store.all()) if (e.tombstone) tomb++; else live++;
  w.gauge('weave_dns_entries', 'DNS records held, by state', live, { state: 'live' });
  w.gauge('weave_dns_entries', 'DNS records held, by state', tomb, { state: 'tombstone' });
  const sc = store.counters;
  w.counter('weave_dns_gossip_received_total', 'DNS gossip messages received', sc.gossipReceived);
  w.counter('weave_dns_gossip_malformed_total', 'DNS gossip messages rejected as malformed', sc.gossipMalformed);
  w.counter('weave_dns_records_reasserted_total', 'own records re-issued over an older incarnation held by peers', sc.reasserted);
  if (!server) return;
  const c = server.counters;
  w.counter('weave_dns_queries_total', 'DNS queries received', c.queriesUdp, { proto: 'udp' });
  w.counter('weave_dns_queries_total', 'DNS queries received', c.queriesTcp, { proto: 'tcp' });
  const rc: Array<[string, number]> = [
    ['NOERROR', c.noerror], ['FORMERR', c.formerr], ['SERVFAIL', c.servfail], ['NXDOMAIN', c.nxdomain],
    ['NOTIMP', c.notimp], ['REFUSED', c.refused], ['other', c.otherRcode],
  ];
  for (const [rcode, v] of rc) w.counter('weave_dns_responses_total', 'DNS responses sent, by rcode', v, { rcode });
  w.counter('weave_dns_forwarded_total', 'queries forwarded to upstream resolvers', c.forwarded);
  w.counter('weave_dns_forwarded_tcp_retries_total', 'forwarded queries retried over TCP after TC', c.forwardedTcpRetry);
  w.counter('weave_dns_upstream_failures_total', 'forwarded queries that got SERVFAIL (timeouts included)', c.upstreamFailures);
  w.counter('weave_dns_upstream_timeouts_total', 'forwarded queries that timed out', c.upstreamTimeouts);
  w.counter('weave_dns_upstream_bad_responses_total', 'upstream answers ignored (unknown id, wrong source or question, junk)', c.upstreamBadResponses);
  w.counter('weave_dns_upstream_tcp_errors_total', 'TCP retries to an upstream that failed (connect, reset)', c.upstreamTcpErrors);
  w.counter('weave_dns_malformed_total', 'malformed queries (FORMERR or dropped)', c.malformed);
  w.counter('weave_dns_truncated_total', 'answers truncated with TC', c.truncated);
  w.counter('weave_dns_dropped_total', 'queries dropped because the send queue was full', c.dropped);
  w.counter('weave_dns_tcp_connections_total', 'TCP connections accepted', c.tcpConnections);
  w.counter('weave_dns_tcp_rejected_total', 'TCP connections refused over the limit', c.tcpRejected);
  w.counter('weave_dns_tcp_rejected_per_source_total', 'TCP connections refused because their source held its share', c.tcpRejectedPerSource);
  w.counter('weave_dns_tcp_deadline_closed_total', 'TCP connections closed at their overall or per-query deadline', c.tcpDeadlineClosed);
  w.counter('weave_dns_refused_source_total', 'queries and connections refused: the source is neither this host nor one of its containers', c.refusedSource);
}
