// The seam between the router's composition root (api/router.ts) and the parts it assembles. Every
// part (control plane, sleeve, fastdp, endpoints, the API, and the subsystems IPAM and DNS) has a name
// and a stop; it may add a report section, metrics and API routes. Subsystems also add router flags
// (parsed once into the typed config), CLI commands, status views and attach/detach hooks.
//
// The types here are structural on purpose: ipam/ and dns/ implement these interfaces without
// importing api/ (the dependency runs api -> ipam, dns -> mesh -> lib), and each module states what
// it needs from the daemon in its own context type, which the daemon's context satisfies.
import type { Command } from 'commander';
import type { Registry } from 'prom-client';
import type { Body } from './validate';
import type { StateRecovery } from './state-file';

export type HttpMethod = 'GET' | 'POST' | 'DELETE';

/** A request as handlers see it: the body is already known to be a JSON object (lib/validate.ts reads its fields). */
export interface ApiRequest { body: Body; query: URLSearchParams; path: string }
export type ApiHandler = (req: ApiRequest) => Promise<unknown> | unknown;

/** One HTTP API route. GETs are read-only; everything else changes state (root-only socket). */
export interface ApiRoute {
  method: HttpMethod;
  path: string;
  handler: ApiHandler;
  /** reply text/plain (the Prometheus exposition) instead of JSON */
  text?: boolean;
  /** reply with this content type and the handler's string as the body (the /ui page and its script) */
  contentType?: string;
  /**
   * A long-lived reply (server-sent events): called instead of handler once the request is read; it
   * owns the sink until the client goes or it ends it. GET only.
   */
  stream?: (req: ApiRequest, sink: StreamSink) => void;
}

/** The reply of a streaming route: text/event-stream written as it comes. */
export interface StreamSink {
  /** writes a chunk; false when the client is slow (bytes wait in the buffer: see buffered) */
  write(chunk: string): boolean;
  /** bytes written but not yet taken by the client */
  readonly buffered: number;
  end(): void;
  /** called once when the client goes or the stream ends */
  onClose(fn: () => void): void;
}

/** What the CLI offers subsystems' commands besides the API client. */
export interface CliHelpers {
  /**
   * A container argument (a Docker container name or ID, an \`ip netns\` name, a namespace path or a
   * PID) as a NETNS argument the router takes, with the Docker container when it was one.
   */
  resolveContainer(arg: string): Promise<{ netns: string; container?: ContainerRef }>;
  /** The overlay addresses (bare) of an attached container argument as resolveContainer takes it, and its container. */
  containerAddresses(arg: string, client: ApiClientLike): Promise<{ addrs: string[]; container?: ContainerRef }>;
}

/** What the CLI side of a subsystem needs from the API client. */
export interface ApiClientLike {
  request<T = any>(method: string, path: string, body?: unknown, opts?: { timeoutMs?: number; text?: boolean }): Promise<T>;
}

/** Any started piece of the router: stopped in reverse order of start, also when start-up fails later. */
export interface Part {
  readonly name: string;
  /** the key of its `weave report` section (default: its name) */
  readonly section?: string;
  stop(): Promise<void> | void;
  /** a section of `weave report`; a `summary` object inside it is also shown by `weave status` */
  report?(): unknown;
  /** registers this part's metrics (with collect callbacks that read its state at scrape time) */
  metrics?(registry: Registry): void;
  /** this part's API routes */
  apiRoutes?(): ApiRoute[];
  /** state files found damaged or missing and what was recovered from where (the report's `state` section) */
  recovery?(): StateRecovery[];
}

/** An endpoint as the attach/detach hooks see it (router/endpoints.ts EndpointInfo). */
export interface AttachedEndpoint {
  /** the NETNS argument it was attached with */
  netns: string;
  /** a path to its namespace file */
  path: string;
  /** namespace inode "dev:ino": one key per namespace however it is named */
  key: string;
  /** container-side interface */
  ifname: string;
  /** CIDRs as attached */
  addrs: string[];
  name?: string;
  /** the IPAM ident its addresses are held under, when not the namespace key (a CNI pod's) */
  ident?: string;
  /** the Docker container in that namespace, when known (`weave ps` shows its name) */
  container?: ContainerRef;
}

/** A Docker container as weave names it: its full ID and its name (without Docker's leading "/"). */
export interface ContainerRef { id: string; name: string }

export interface DetachOutcome {
  /** CIDRs no longer attached */
  removed: string[];
  /** whether the veth was deleted (all addresses gone) */
  linkRemoved: boolean;
  /** the namespace no longer existed: only leftover state was cleaned */
  namespaceGone: boolean;
}

export interface AttachRequest {
  netns: string;
  /** addresses as given; may be empty or contain IPAM forms such as "net:default" */
  cidrs: string[];
  name?: string;
  /** the Docker container the CLI resolved the namespace from (`weave attach NAME`) */
  container?: ContainerRef;
}

/**
 * Addresses by ident, for callers whose key is not a namespace (CNI: network, container ID and
 * interface). IPAM provides it; another subsystem finds it among the daemon's subsystems.
 */
export interface AddressBook {
  /** an address as ADDR/LEN for ident in subnet (default subnet); fails at once when no address can come */
  allocate(ident: string, subnet?: string): Promise<string>;
  /** records addr (bare) for ident, asking its owner when it lies in another peer's space; fails when it is in use */
  claim(ident: string, addr: string): Promise<void>;
  /** frees every address ident holds; how many */
  release(ident: string): number;
  /** the addresses ident holds (bare) */
  lookup(ident: string): string[];
  /** the idents holding addresses whose name starts with prefix */
  idents(prefix: string): string[];
  /** whether an allocation can be served now (the ring exists, this peer allocates), else why not */
  readiness(): { ready: boolean; reason: string };
}

/**
 * Names of this host's containers in weaveDNS, for callers that attach containers themselves (the
 * Docker driver). DNS provides it; records are keyed like the endpoints' records (their `key`).
 */
export interface NameBook {
  /** Registers name (without a dot: in the weaveDNS domain) for addrs under key, replacing what key had; the FQDN. */
  register(key: string, name: string, addrs: string[]): string;
  /** Removes every record of key; how many. */
  unregister(key: string): number;
}

/** Space held by peers in the ring (IPAM). */
export interface PeerSpace {
  /** takes over every range of a peer that is gone for good (refused while it is reachable); addresses taken */
  transferFrom(peer: string): Promise<number>;
  /** owners of space: whether each is reachable now */
  owners(): Array<{ peer: string; nickname?: string; addresses: number; reachable: boolean }>;
}

/** A router subsystem once built: a part with optional attach/detach/reset hooks. */
export interface Subsystem extends Part {
  /** set by the subsystem that hands out addresses (IPAM) */
  readonly addresses?: AddressBook;
  /** set by the subsystem that names containers (weaveDNS) */
  readonly names?: NameBook;
  /** set by the subsystem that owns address space (IPAM): `weave rmpeer`, Kubernetes' reclaim */
  readonly peerSpace?: PeerSpace;
  /**
   * set by a subsystem that knows how big the cluster is at start (Kubernetes: its Nodes), built
   * before IPAM: a plain `--ipalloc-init consensus` then needs a majority of it to seed the ring
   */
  readonly clusterSize?: { size: number; from: string };
  /** after every part is built and endpoints are restored, before the mesh connects */
  start?(): Promise<void>;
  /** `weave reset`: leave the mesh cleanly (hand over IPAM space, remove kernel state) before the router stops */
  reset?(): Promise<void>;
  /** Turns an attach request's address arguments into concrete CIDRs (IPAM); the first subsystem that returns wins. */
  resolveAddresses?(req: AttachRequest, kind: 'attach' | 'expose'): Promise<string[] | undefined>;
  afterAttach?(req: AttachRequest, ep: AttachedEndpoint): Promise<void>;
  /** `before` is the endpoint as it was before the detach (undefined when it was unknown). */
  afterDetach?(netns: string, result: DetachOutcome, before: AttachedEndpoint | undefined): Promise<void>;
}

/**
 * A subsystem as the CLI and the daemon see it before it exists. `C` is its typed configuration,
 * parsed once from the router's flags; `Ctx` what it needs from the daemon to be built.
 */
export interface SubsystemModule<C, Ctx> {
  readonly name: string;
  readonly flags: {
    add(cmd: Command): void;
    /** commander's options object -> the typed config (throws UsageError saying what to fix) */
    parse(opts: Record<string, unknown>): C;
  };
  commands?(program: Command, client: (opts: { httpAddr?: string }) => ApiClientLike, cli?: CliHelpers): void;
  /** `weave status <view>` renderers over the report JSON */
  views?: Record<string, (report: any) => string>;
  /** a property, not a method, so the daemon's context is checked strictly against Ctx */
  readonly create: (ctx: Ctx) => Promise<Subsystem> | Subsystem;
}
