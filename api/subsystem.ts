// Router subsystems (IPAM, DNS, ...) plug into the daemon through this seam: each adds its own
// router flags and CLI commands, builds itself from the DaemonContext, registers API routes, and
// contributes a report section, metrics and attach/detach hooks. The daemon stays the one place
// that orders start-up and shutdown.
import type { Command } from 'commander';
import type { ApiClient } from './client';
import type { ApiServer } from './http';
import type { MetricsWriter } from './metrics';
import type { RouterConfig } from './config';
import type { Clock } from '../lib/clock';
import type { Logger } from '../lib/log';
import type { StateRecovery } from '../lib/state-file';
import type { Identity } from '../mesh/peer';
import type { Mesh } from '../mesh/mesh';
import type { HostCtx } from '../host/ip';
import type { RouteReconciler } from '../host/routes';
import type { DetachResult, EndpointInfo, Endpoints } from '../router/endpoints';

export interface DaemonContext {
  cfg: RouterConfig;
  /** the router's options object from commander: subsystems read their own flags from it */
  flags: Record<string, unknown>;
  root: Logger;
  clock: Clock;
  identity: Identity;
  mesh: Mesh;
  api: ApiServer;
  hostCtx: HostCtx;
  routes: RouteReconciler;
  endpoints: Endpoints;
  /** Sets the prefixes (CIDRs) this router serves on behalf of `owner`, announced to all peers. */
  announce(owner: string, prefixes: string[]): void;
}

export interface AttachRequest {
  netns: string;
  /** addresses as given; may be empty or contain IPAM forms such as "net:default" */
  cidrs: string[];
  name?: string;
}

export interface Subsystem {
  readonly name: string;
  start?(): Promise<void>;
  stop?(): Promise<void>;
  /** a section of `weave report`; a `summary` object inside it is also shown by `weave status` */
  report?(): unknown;
  /** state files found damaged or missing and what was recovered (the report's `state` section) */
  recovery?(): StateRecovery[];
  metrics?(m: MetricsWriter): void;
  /** `weave reset`: leave the mesh cleanly (hand over IPAM space, remove kernel state) before the router stops. */
  reset?(): Promise<void>;
  /** Turns an attach request's address arguments into concrete CIDRs (IPAM); the first subsystem that returns wins. */
  resolveAddresses?(req: AttachRequest, kind: 'attach' | 'expose'): Promise<string[] | undefined>;
  afterAttach?(req: AttachRequest, ep: EndpointInfo): Promise<void>;
  /** `before` is the endpoint as it was before the detach (undefined when it was unknown). */
  afterDetach?(netns: string, result: DetachResult, before: EndpointInfo | undefined): Promise<void>;
}

export interface SubsystemModule {
  readonly name: string;
  addRouterFlags?(cmd: Command): void;
  /** Validates this module's router flags (throw UsageError); runs in `weave launch` before the router starts. */
  checkFlags?(flags: Record<string, unknown>): void;
  addCommands?(program: Command, client: (opts: { httpAddr?: string }) => ApiClient): void;
  create?(ctx: DaemonContext): Subsystem | Promise<Subsystem>;
  /** extra `weave status <view>` renderers over the report JSON (e.g. ipam, dns) */
  statusViews?: Record<string, (report: any) => string>;
}
