// The CNI commands, served by the router for the shim (POST /cni). One call in, one reply out:
// `{exit, out}` is what the plugin process exits with and prints.
//
//   ADD     netns must exist -> masquerade chain present -> address from IPAM (ident
//           cni:NETWORK:CONTAINERID:IFNAME) -> veth + routes + record (router/endpoints.ts attachPod)
//           -> result in the configuration's version. A failure after the allocation frees it, and
//           attachPod removes its own veth: a failed ADD leaves nothing. The same container and
//           interface again in the same namespace gets the same result (idempotent).
//   DEL     the record's veth and record (or a crashed ADD's veth, found by its derived name), then
//           the address. Never needs the namespace; unknown containers succeed.
//   CHECK   records (endpoint, IPAM, prevResult) against the kernel (cni/check.ts).
//   STATUS  IPAM can allocate now (the ring exists), else code 50 with the reason.
//   GC      every attachment and address of this network not in cni.dev/valid-attachments goes.
//   VERSION the supported versions (the shim answers this itself; kept here for direct callers).
import type { AddressBook } from '../lib/subsystem';
import { UsageError, WeaveError, errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';
import type { PodLinkState } from '../host/pod-link';
import { POD_GATEWAY } from '../host/pod-link';
import { podDrift, type PodRecord } from './check';
import {
  CNI_ERR, COMMANDS, CniError, errorObject, formatResult, parseConf, parseEnv, versionInfo, versionOf,
  type CniCommand, type CniEnv, type CniVersion, type NetConf, type Result,
} from './spec';

/** What the plugin process prints and exits with. */
export interface CniReply { exit: number; out: string }

export interface PodAttach { netns: string; ifname: string; cidr: string; ident: string; pod: NonNullable<PodRecord['pod']> }

/** What the handler needs from the router (the endpoints, IPAM, the kernel); tests hand in fakes. */
export interface CniDeps {
  pods: {
    readonly overlayRange: string;
    list(): PodRecord[];
    findPod(network: string, containerId: string, ifname: string): PodRecord | undefined;
    attachPod(req: PodAttach): Promise<PodRecord>;
    detachPod(network: string, containerId: string, ifname: string): Promise<{ removed?: PodRecord; linkRemoved: boolean }>;
  };
  /** IPAM's address book (undefined when no subsystem hands out addresses) */
  addresses(): AddressBook | undefined;
  /** the namespace key ("dev:ino") of a CNI_NETNS path; throws UsageError when there is none */
  netnsKey(path: string): string;
  /** the kernel's view of a pod's link */
  inspect(rec: PodRecord): Promise<PodLinkState>;
  /** makes sure pods' traffic to outside the overlay is masqueraded (if configured) */
  masquerade(): Promise<void>;
  log: Logger;
}

/** The IPAM ident of an attachment: network, container ID and interface (none may contain ":"). */
export function cniIdent(network: string, containerId: string, ifname: string): string {
  return `cni:${network}:${containerId}:${ifname}`;
}

export function parseCniIdent(ident: string): { network: string; containerId: string; ifname: string } | undefined {
  const p = ident.split(':');
  return p.length === 4 && p[0] === 'cni' ? { network: p[1], containerId: p[2], ifname: p[3] } : undefined;
}

type Outcome = 'ok' | 'error';

export class CniHandler {
  /** requests by command and outcome (weave_cni_requests_total) */
  readonly counters = new Map<string, number>();

  constructor(private readonly d: CniDeps) {}

  async handle(env: Record<string, string>, stdin: string): Promise<CniReply & { command: string }> {
    let version: CniVersion = versionOf(stdin);
    let command = env.CNI_COMMAND ?? '';
    try {
      const e = parseEnv(env);
      command = e.command;
      if (e.command === 'VERSION') return this.done(command, 'ok', JSON.stringify(versionInfo()));
      const conf = parseConf(stdin, e.command);
      version = conf.cniVersion;
      const out = await this.run(e, conf);
      return this.done(command, 'ok', out === undefined ? '' : JSON.stringify(out));
    } catch (err) {
      const ce = this.toCniError(err, command);
      // an error without its own details says which call it was
      const call = [command || 'a call without CNI_COMMAND', env.CNI_CONTAINERID && `container ${env.CNI_CONTAINERID}`, env.CNI_IFNAME && `interface ${env.CNI_IFNAME}`].filter(Boolean).join(', ');
      return { ...this.done(command, 'error', JSON.stringify(errorObject(version, ce.cniCode, ce.message, ce.details || call))), exit: 1 };
    }
  }

  private done(command: string, outcome: Outcome, out: string): CniReply & { command: string } {
    const key = `${(COMMANDS as readonly string[]).includes(command) ? command : 'unknown'}/${outcome}`;
    this.counters.set(key, (this.counters.get(key) ?? 0) + 1);
    return { exit: 0, out: out ? `${out}\n` : '', command };
  }

  private run(e: CniEnv, conf: NetConf): Promise<Record<string, unknown> | undefined> {
    switch (e.command as Exclude<CniCommand, 'VERSION'>) {
      case 'ADD': return this.add(e, conf);
      case 'DEL': return this.del(e, conf).then(() => undefined);
      case 'CHECK': return this.check(e, conf).then(() => undefined);
      case 'STATUS': return Promise.resolve(this.status()).then(() => undefined);
      case 'GC': return this.gc(conf).then(() => undefined);
    }
  }

  private book(): AddressBook {
    const b = this.d.addresses();
    if (!b) throw new CniError(CNI_ERR.NOT_AVAILABLE, 'this router has no IPAM to allocate pods\' addresses');
    return b;
  }

  private netnsKey(netns: string): string {
    try {
      return this.d.netnsKey(netns);
    } catch (err) {
      throw new CniError(CNI_ERR.INVALID_ENV, `CNI_NETNS ${netns} is not a network namespace`, errMsg(err), { cause: err });
    }
  }

  private result(rec: PodRecord, conf: NetConf): Result {
    return {
      interfaces: [{ name: rec.hostIfname, mac: rec.hostMac ?? '' }, { name: rec.ifname, mac: rec.mac, sandbox: rec.netns }],
      ips: rec.addrs.map((address) => ({ address, gateway: POD_GATEWAY, interface: 1 })),
      routes: [{ dst: '0.0.0.0/0', gw: POD_GATEWAY }, { dst: this.d.pods.overlayRange }],
      dns: conf.dns ?? {},
    };
  }

  private async add(e: CniEnv, conf: NetConf): Promise<Record<string, unknown>> {
    const key = this.netnsKey(e.netns);
    const existing = this.d.pods.findPod(conf.name, e.containerId, e.ifname);
    if (existing) {
      if (existing.key !== key) {
        throw new CniError(CNI_ERR.CONFLICT, `container ${e.containerId} interface ${e.ifname} is already attached in another namespace (${existing.netns})`, 'DEL it first');
      }
      return formatResult(this.result(existing, conf), conf.cniVersion);
    }
    const book = this.book();
    await this.d.masquerade();
    const ident = cniIdent(conf.name, e.containerId, e.ifname);
    const cidr = await book.allocate(ident, conf.subnet);
    let rec: PodRecord;
    try {
      rec = await this.d.pods.attachPod({
        netns: e.netns, ifname: e.ifname, cidr, ident,
        pod: { network: conf.name, containerId: e.containerId, namespace: e.args.podNamespace, name: e.args.podName, infraContainerId: e.args.infraContainerId },
      });
    } catch (err) {
      book.release(ident);
      throw err;
    }
    return formatResult(this.result(rec, conf), conf.cniVersion);
  }

  private async del(e: CniEnv, conf: NetConf): Promise<void> {
    await this.d.pods.detachPod(conf.name, e.containerId, e.ifname);
    this.d.addresses()?.release(cniIdent(conf.name, e.containerId, e.ifname));
  }

  private async check(e: CniEnv, conf: NetConf): Promise<void> {
    if (!conf.prevResult) throw new CniError(CNI_ERR.INVALID_CONFIG, 'CHECK needs the prevResult of the ADD');
    const rec = this.d.pods.findPod(conf.name, e.containerId, e.ifname);
    if (!rec) throw new CniError(CNI_ERR.DRIFT, `nothing is attached for container ${e.containerId} interface ${e.ifname} in network ${conf.name}`);
    const key = this.netnsKey(e.netns);
    if (key !== rec.key) throw new CniError(CNI_ERR.DRIFT, `CNI_NETNS ${e.netns} is not the namespace the attachment was made in (${rec.netns})`);
    const state = await this.d.inspect(rec);
    const ident = rec.ident ?? cniIdent(conf.name, e.containerId, e.ifname);
    const drift = podDrift(rec, state, this.d.addresses()?.lookup(ident) ?? [], conf.prevResult.ips, this.d.pods.overlayRange);
    if (drift.length) throw new CniError(CNI_ERR.DRIFT, `the attachment drifted: ${drift.join('; ')}`, `container ${e.containerId} interface ${e.ifname}`);
  }

  private status(): void {
    const r = this.d.addresses()?.readiness() ?? { ready: false, reason: 'this router has no IPAM' };
    if (!r.ready) {
      throw new CniError(CNI_ERR.NOT_AVAILABLE, `weave cannot attach pods yet: ${r.reason}`, 'the address ring forms when the peers of --ipalloc-init agree; see weave status ipam');
    }
  }

  private async gc(conf: NetConf): Promise<void> {
    const keep = new Set((conf.validAttachments ?? []).map((a) => `${a.containerId}/${a.ifname}`));
    const book = this.d.addresses();
    let pods = 0;
    let addrs = 0;
    for (const p of this.d.pods.list()) {
      if (p.pod?.network !== conf.name || keep.has(`${p.pod.containerId}/${p.ifname}`)) continue;
      await this.d.pods.detachPod(conf.name, p.pod.containerId, p.ifname);
      addrs += book?.release(p.ident ?? cniIdent(conf.name, p.pod.containerId, p.ifname)) ?? 0;
      pods++;
    }
    for (const ident of book?.idents(`cni:${conf.name}:`) ?? []) {
      const k = parseCniIdent(ident);
      if (!k || k.network !== conf.name || keep.has(`${k.containerId}/${k.ifname}`)) continue;
      addrs += book!.release(ident);
    }
    if (pods || addrs) this.d.log.info({ network: conf.name, pods, addrs, kept: keep.size }, 'cni gc: removed attachments not in the valid list');
  }

  /** Any failure as the spec error the runtime sees; unexpected ones are logged here. */
  private toCniError(err: unknown, command: string): CniError {
    if (err instanceof CniError) return err;
    if (err instanceof WeaveError) {
      switch (err.code) {
        case 'ENOSPACE': return new CniError(CNI_ERR.NO_ADDRESS, err.message, 'weave status ipam shows the range and its owners; free addresses or widen --ipalloc-range');
        case 'ETIMEDOUT':
        case 'EBUSY':
        case 'ESHUTDOWN': return new CniError(CNI_ERR.TRY_AGAIN, `${err.message}; try again later`, 'weave status ipam says what IPAM waits for');
        case 'ECONFLICT': return new CniError(CNI_ERR.CONFLICT, err.message);
        case 'EHOST':
          if (err.context.exists === true) return new CniError(CNI_ERR.CONFLICT, err.message);
          break;
        case 'EUSAGE': return new CniError(CNI_ERR.INVALID_CONFIG, err.message);
        default: break;
      }
    }
    this.d.log.error({ command, err: errMsg(err) }, 'cni request failed');
    return new CniError(CNI_ERR.INTERNAL, `weave: ${errMsg(err)}`, 'the weave router\'s log has the details');
  }
}

/** The /cni request body checked: the shim's environment (CNI_* only) and stdin. */
export function parseCniRequest(body: unknown): { env: Record<string, string>; stdin: string } {
  const b = body as Record<string, unknown> | null;
  if (!b || typeof b !== 'object' || !b.env || typeof b.env !== 'object' || Array.isArray(b.env)) throw new UsageError('"env" must be an object of CNI_* variables');
  if (typeof b.stdin !== 'string') throw new UsageError('"stdin" must be a string');
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(b.env as Record<string, unknown>)) {
    if (!k.startsWith('CNI_') || typeof v !== 'string') throw new UsageError(`"env.${k}" must be a CNI_* variable with a string value`);
    env[k] = v;
  }
  return { env, stdin: b.stdin };
}
