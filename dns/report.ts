// What the router shows about weaveDNS: the status section (`weave status dns`, `weave report`) and
// its Prometheus metrics.
import type { Registry } from 'prom-client';
import { counterFrom, gaugeFrom } from '../lib/metrics';
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

/** weaveDNS's metrics on the router's registry, read from the store's and server's counters at scrape time. */
export function registerDnsMetrics(reg: Registry, store: DnsStore, server: DnsServer | null): void {
  gaugeFrom(reg, 'weave_dns_entries', 'DNS records held by this router (all peers\' records), by state: live, or tombstone (deleted, kept until every peer has heard).', () => {
    let live = 0;
    let tomb = 0;
    for (const e of store.all()) if (e.tombstone) tomb++; else live++;
    return [{ labels: { state: 'live' }, value: live }, { labels: { state: 'tombstone' }, value: tomb }];
  }, ['state']);
  const sc = store.counters;
  counterFrom(reg, 'weave_dns_gossip_received_total', 'DNS gossip messages received from peers.', () => sc.gossipReceived);
  counterFrom(reg, 'weave_dns_gossip_malformed_total', 'DNS gossip messages rejected as malformed (the connection survives).', () => sc.gossipMalformed);
  counterFrom(reg, 'weave_dns_records_reasserted_total', 'Own records re-issued because peers held an older incarnation of them (after a restart).', () => sc.reasserted);
  if (!server) return;
  const c = server.counters;
  counterFrom(reg, 'weave_dns_queries_total', 'DNS queries received, by transport.', () => [
    { labels: { proto: 'udp' }, value: c.queriesUdp }, { labels: { proto: 'tcp' }, value: c.queriesTcp },
  ], ['proto']);
  counterFrom(reg, 'weave_dns_responses_total', 'DNS responses sent, by response code.', () => [
    ['NOERROR', c.noerror], ['FORMERR', c.formerr], ['SERVFAIL', c.servfail], ['NXDOMAIN', c.nxdomain],
    ['NOTIMP', c.notimp], ['REFUSED', c.refused], ['other', c.otherRcode],
  ].map(([rcode, value]) => ({ labels: { rcode }, value: value as number })), ['rcode']);
  const simple: Array<[string, string, () => number]> = [
    ['weave_dns_forwarded_total', 'Queries outside the weaveDNS domain forwarded to the upstream resolvers of /etc/resolv.conf.', () => c.forwarded],
    ['weave_dns_forwarded_tcp_retries_total', 'Forwarded queries retried over TCP because the upstream answer was truncated.', () => c.forwardedTcpRetry],
    ['weave_dns_upstream_failures_total', 'Forwarded queries answered with SERVFAIL because no upstream answered (timeouts included).', () => c.upstreamFailures],
    ['weave_dns_upstream_timeouts_total', 'Forwarded queries that timed out at an upstream resolver.', () => c.upstreamTimeouts],
    ['weave_dns_upstream_bad_responses_total', 'Upstream answers ignored: unknown id, wrong source or question, or junk.', () => c.upstreamBadResponses],
    ['weave_dns_upstream_tcp_errors_total', 'TCP retries to an upstream resolver that failed (connect or reset).', () => c.upstreamTcpErrors],
    ['weave_dns_malformed_total', 'Malformed queries (answered FORMERR, or dropped when not even a header).', () => c.malformed],
    ['weave_dns_truncated_total', 'Answers truncated (TC set) because they did not fit in a UDP reply.', () => c.truncated],
    ['weave_dns_dropped_total', 'Queries dropped because the server\'s send queue was full.', () => c.dropped],
    ['weave_dns_tcp_connections_total', 'DNS-over-TCP connections accepted.', () => c.tcpConnections],
    ['weave_dns_tcp_rejected_total', 'DNS-over-TCP connections refused because too many were open.', () => c.tcpRejected],
    ['weave_dns_tcp_rejected_per_source_total', 'DNS-over-TCP connections refused because their source already held its share.', () => c.tcpRejectedPerSource],
    ['weave_dns_tcp_deadline_closed_total', 'DNS-over-TCP connections closed at their overall or per-query deadline (slow or stalling clients).', () => c.tcpDeadlineClosed],
    ['weave_dns_refused_source_total', 'Queries and connections refused because the source is neither this host nor one of its containers.', () => c.refusedSource],
  ];
  for (const [name, help, read] of simple) counterFrom(reg, name, help, read);
}
