// IPAM's HTTP API: the report, allocation by ident, claims, frees, `rmpeer` and `prime`. Bodies are
// checked here (400 with what to fix); the subsystem does the work.
import { checkAddr, checkCidr, num, optStr, str } from '../lib/validate';
import type { ApiRoute } from '../lib/subsystem';
import type { IpamSubsystem } from './subsystem';

const PRIME_DEFAULT_MS = 30_000;
const PRIME_MAX_MS = 300_000;

export function ipamRoutes(s: IpamSubsystem): ApiRoute[] {
  return [
    { method: 'GET', path: '/ipam', handler: () => s.report() },
    {
      method: 'POST', path: '/ipam/allocate', handler: async ({ body }) => {
        const ident = str(body, 'ident');
        const given = optStr(body, 'subnet');
        return { ident, addr: await s.allocateCidr(ident, given === undefined ? undefined : checkCidr(given, 'subnet')) };
      },
    },
    {
      method: 'POST', path: '/ipam/claim', handler: async ({ body }) => {
        const ident = str(body, 'ident');
        const addr = checkAddr(str(body, 'addr'), 'addr');
        await s.claim(ident, addr);
        return { ident, addr };
      },
    },
    {
      method: 'POST', path: '/ipam/free', handler: ({ body }) => {
        const ident = str(body, 'ident');
        const given = optStr(body, 'addr');
        return { ident, freed: s.free(ident, given === undefined ? undefined : checkAddr(given, 'addr')) };
      },
    },
    {
      method: 'POST', path: '/rmpeer', handler: async ({ body }) => {
        const peer = str(body, 'peer', { max: 253 });
        return { peer, addresses: await s.transferFrom(peer) };
      },
    },
    {
      method: 'POST', path: '/prime', handler: async ({ body }) => {
        const ms = num(body, 'timeoutMs', { min: 0, max: PRIME_MAX_MS, dflt: PRIME_DEFAULT_MS });
        await s.prime(ms);
        return { seeded: true, state: s.state() };
      },
    },
  ];
}
