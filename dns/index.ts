// weaveDNS public surface: the router daemon builds a DnsStore, plugs it into the mesh
// (attachDnsToMesh), starts a DnsServer over it with upstreams from a ResolvConfWatcher, and shows
// dnsStatus()/writeDnsMetrics() through the API.
export { DnsStore, DnsRecordSet, FileDnsPersistence, type DnsPersistence, normalizeName, encodeEntries, decodeEntries, type DnsEntry, type DnsStoreOptions, type DnsStoreCounters } from './records';
export { DnsServer, parseUpstream, type DnsServerOptions, type DnsCounters, type DnsRecordSource } from './server';
export { ResolvConfWatcher, parseResolvConf, type ResolvConfData, type ResolvConfWatcherOptions } from './resolvconf';
export { attachDnsToMesh, DNS_CHANNEL, type DnsMeshLike } from './mesh-glue';
export { dnsStatus, registerDnsMetrics, type DnsStatus, type DnsEntryStatus } from './report';
