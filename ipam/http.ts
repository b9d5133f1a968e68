// IPAM's HTTP API: the report, allocation by ident, claims, frees, `rmpeer` and `prime`. Bodies are
// checked here (400 with what to fix); the subsystem does the work.
import { UsageError } from '../lib/errors';
import type { ApiRoute } from '../lib/subsystem';
import type { IpamSubsystem } from './subsystem';

const PRIME_DEFAULT_MS = 30_000;
const PRIME_MAX_MS = 300_000;

function requiredString(body: any, key: string): string {
  const v = body?.[key];
  if (typeof v !== 'string' || !v) throw new UsageError(`"${key}" must be a non-empty string`);
  return v;
}

function optionalString(body: any, key: string): string | undefined {
  const v = body?.[key];
  if (v === undefined || v === null || v === '') return undefined;
  if (typeof v !== 'string') throw new UsageError(`"${key}" must be a string`);
  return v;
}

export function ipamRoutes(s: IpamSubsystem): ApiRoute[] {
  return [
    { method: 'GET', path: '/ipam', handler: () => s.report() },
    {
      method: 'POST', path: '/ipam/allocate', handler: async ({ body }) => {
        const ident = requiredString(body, 'ident');
        return { ident, addr: await s.allocateCidr(ident, optionalString(body, 'subnet')) };
      },
    },
    {
      method: 'POST', path: '/ipam/claim', handler: async ({ body }) => {
        const ident = requiredString(body, 'ident');
        const addr = requiredString(body, 'addr');
        await s.claim(ident, addr);
        return { ident, addr };
      },
    },
    {
      method: 'POST', path: '/ipam/free', handler: ({ body }) => {
        const ident = requiredString(body, 'ident');
        return { ident, freed: s.free(ident, optionalString(body, 'addr')) };
      },
    },
    {
      method: 'POST', path: '/rmpeer', handler: async ({ body }) => {
        const peer = requiredString(body, 'peer');
        return { peer, addresses: await s.transferFrom(peer) };
      },
    },
    {
      method: 'POST', path: '/prime', handler: async ({ body }) => {
        const ms = typeof body?.timeoutMs === 'number' ? Math.min(Math.max(0, body.timeoutMs), PRIME_MAX_MS) : PRIME_DEFAULT_MS;
        await s.prime(ms);
        return { seeded: true, state: s.state() };
      },
    },
  ];
}
