// The subsystems this build of the router runs, in start order. One line each.
import { ipamModule } from '../ipam/subsystem';
import { dnsModule } from '../dns/subsystem';
import { cniModule } from '../cni/subsystem';
import { dockerModule } from '../docker/subsystem';
import { kubeModule } from '../k8s/subsystem';

export const SUBSYSTEMS = [
  kubeModule, // first: IPAM seeds by consensus over the cluster's Nodes
  ipamModule,
  dnsModule,
  cniModule,
  dockerModule,
] as const;
