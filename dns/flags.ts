// weaveDNS's router flags, parsed once (in the CLI) into the typed config the subsystem is built from.
import type { Command } from 'commander';
import { isIPv4 } from 'net';
import { UsageError, errMsg } from '../lib/errors';
import { normalizeName } from './records';

export const DEFAULT_DNS_LISTEN = '169.254.53.53:53';
export const DEFAULT_DNS_DOMAIN = 'weave.local.';
export const DEFAULT_DNS_TTL = 1;
const MAX_TTL = 86_400;

export interface DnsConfig {
  enabled: boolean;
  listen: { ip: string; port: number };
  /** lowercase, with the trailing dot */
  domain: string;
  ttl: number;
}

/** Validates and normalises the router's DNS flags (commander keys dns, dnsListenAddress, dnsDomain, dnsTtl). */
export function parseDnsFlags(f: Record<string, unknown>): DnsConfig {
  const listenS = String(f.dnsListenAddress ?? DEFAULT_DNS_LISTEN).trim();
  const m = /^([^:]+)(?::(\d+))?$/.exec(listenS);
  if (!m || !isIPv4(m[1])) throw new UsageError(`invalid --dns-listen-address "${listenS}": expected IPv4[:PORT] like ${DEFAULT_DNS_LISTEN}`);
  const port = m[2] === undefined ? 53 : Number(m[2]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new UsageError(`invalid --dns-listen-address "${listenS}": port must be 1-65535`);
  let domain: string;
  try {
    domain = normalizeName(String(f.dnsDomain ?? DEFAULT_DNS_DOMAIN));
  } catch (e) {
    throw new UsageError(`invalid --dns-domain: ${errMsg(e)}`);
  }
  const ttlS = String(f.dnsTtl ?? DEFAULT_DNS_TTL);
  const ttl = Number(ttlS);
  if (!/^\d+$/.test(ttlS) || ttl > MAX_TTL) throw new UsageError(`invalid --dns-ttl "${ttlS}": whole seconds 0-${MAX_TTL}`);
  return { enabled: f.dns !== false, listen: { ip: m[1], port }, domain, ttl };
}

export function addDnsFlags(cmd: Command): void {
  cmd
    .option('--dns-listen-address <ip:port>', 'address of the DNS server (put on the weave bridge, routed into containers)', DEFAULT_DNS_LISTEN)
    .option('--no-dns', 'do not run the DNS server (records are still gossiped)')
    .option('--dns-domain <domain>', 'the domain weaveDNS answers for', DEFAULT_DNS_DOMAIN)
    .option('--dns-ttl <seconds>', 'TTL of weaveDNS answers', String(DEFAULT_DNS_TTL));
}
