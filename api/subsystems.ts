// The subsystems this build of the router runs, in start order. One line each.
import { ipamModule } from '../ipam/subsystem';
import { dnsModule } from '../dns/subsystem';

export const SUBSYSTEMS = [
  ipamModule,
  dnsModule,
] as const;
