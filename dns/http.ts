// weaveDNS's HTTP API: records added and removed by hand (`weave dns-add/-remove`), lookups, and the
// report section. Bodies are checked here (400 with what to fix); the store does the work.
import { UsageError, WeaveError } from '../lib/errors';
import type { ApiRoute } from '../lib/subsystem';
import { checkAddrMaybeLen, optStr, param, strList } from '../lib/validate';
import { qualify, type DnsSubsystem } from './subsystem';

const ipOf = (cidr: string): string => (cidr.includes('/') ? cidr.slice(0, cidr.indexOf('/')) : cidr);

function inDomain(fqdn: string, domain: string): boolean {
  return fqdn === domain || fqdn.endsWith(`.${domain}`);
}

export function dnsRoutes(s: DnsSubsystem): ApiRoute[] {
  const domain = s.domain;
  return [
    {
      method: 'POST', path: '/dns/add', handler: ({ body }) => {
        const addrs = strList(body, 'addrs', { required: true, item: checkAddrMaybeLen }).map(ipOf);
        if (addrs.length === 0) throw new UsageError('dns-add: give at least one address');
        const name = optStr(body, 'name');
        if (name === undefined) throw new UsageError('dns-add: give the name with -h FQDN');
        const fqdn = qualify(name, domain);
        if (!inDomain(fqdn, domain)) throw new UsageError(`dns-add: ${fqdn} is outside the weaveDNS domain ${domain}`);
        for (const a of addrs) s.store.add(fqdn, a);
        return { name: fqdn, addresses: s.store.lookup(fqdn) };
      },
    },
    {
      method: 'POST', path: '/dns/remove', handler: ({ body }) => {
        const addrs = strList(body, 'addrs', { item: checkAddrMaybeLen }).map(ipOf);
        const name = optStr(body, 'name');
        if (addrs.length === 0 && name === undefined) throw new UsageError('dns-remove: give addresses and/or -h FQDN');
        const fqdn = name === undefined ? undefined : qualify(name, domain);
        let removed = 0;
        if (addrs.length === 0) removed = s.store.remove({ name: fqdn });
        for (const a of addrs) removed += s.store.remove({ name: fqdn, addr: a });
        return { removed };
      },
    },
    {
      method: 'GET', path: '/dns/lookup', handler: ({ query }) => {
        const name = param(query, 'name');
        const fqdn = qualify(name, domain);
        const addresses = s.store.lookup(fqdn);
        if (addresses.length === 0) throw new WeaveError('ENOTFOUND', `no weaveDNS record for ${fqdn}`, { name: fqdn });
        return { name: fqdn, addresses };
      },
    },
    { method: 'GET', path: '/dns', handler: () => s.report() },
  ];
}
