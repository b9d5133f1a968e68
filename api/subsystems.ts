// The subsystems this build of the router runs, in start order. One line each.
import { ipamModule } from '../ipam/subsystem';
import { dnsModule } from '../dns/subsystem';
import { cniModule } from '../cni/subsystem';
import { dockerModule } from '../docker/subsystem';

export const SUBSYSTEMS = [
  ipamModule,
  dnsModule,
  cniModule,
  dockerModule,
] as const;
