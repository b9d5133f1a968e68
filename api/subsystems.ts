// The subsystems this build of the router runs, in start order. One line each.
import type { SubsystemModule } from './subsystem';
import { ipamModule } from './ipam-subsystem';
import { dnsModule } from './dns-subsystem';

export const SUBSYSTEMS: SubsystemModule[] = [
  ipamModule,
  dnsModule,
];
