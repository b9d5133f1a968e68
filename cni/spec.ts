// The CNI specification (1.1.0) as the router speaks it: which versions, which error codes, how the
// runtime's input (environment, CNI_ARGS, the network configuration on stdin) is read and checked,
// and how a result and an error are written in the version the runtime asked for. Pure functions:
// cni/handler.ts does the work, the shim (cni/shim/weave-net.c) only carries bytes; the shim's
// VERSION answer is compiled from SUPPORTED_VERSIONS below by scripts/build-cni.js.
import { WeaveError } from '../lib/errors';

// scripts/build-cni.js reads this line: keep it one line, versions in ascending order.
export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
export type CniVersion = (typeof SUPPORTED_VERSIONS)[number];
export const LATEST_VERSION: CniVersion = SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.length - 1];

/** The spec's error codes (1-99 are the spec's own; a plugin's start at 100). */
export const CNI_ERR = {
  INCOMPATIBLE_VERSION: 1,
  UNSUPPORTED_FIELD: 2,
  UNKNOWN_CONTAINER: 3,
  INVALID_ENV: 4,
  IO: 5,
  DECODE: 6,
  INVALID_CONFIG: 7,
  TRY_AGAIN: 11,
  NOT_AVAILABLE: 50,
  LIMITED_CONNECTIVITY: 51,
  /** weave: the address range is exhausted (no free address here, and no other peer owns space) */
  NO_ADDRESS: 100,
  /** weave: CHECK found the attachment differs from what ADD made */
  DRIFT: 101,
  /** weave: the namespace or address is already taken by another attachment */
  CONFLICT: 102,
  /** weave: anything unexpected (the router's log has the details) */
  INTERNAL: 999,
} as const;

/** A failure the runtime sees as a spec error object. */
export class CniError extends WeaveError {
  constructor(readonly cniCode: number, message: string, readonly details = '', options?: { cause?: unknown }) {
    super('ECNI', message, { cniCode, details }, options);
    this.name = 'CniError';
  }
}

export const COMMANDS = ['ADD', 'DEL', 'CHECK', 'STATUS', 'GC', 'VERSION'] as const;
export type CniCommand = (typeof COMMANDS)[number];

/** The version each command first appeared in. */
const COMMAND_SINCE: Record<CniCommand, CniVersion> = { ADD: '0.3.0', DEL: '0.3.0', VERSION: '0.3.0', CHECK: '0.4.0', STATUS: '1.1.0', GC: '1.1.0' };

/** The environment a call came with, checked for its command. */
export interface CniEnv {
  command: CniCommand;
  containerId: string;
  /** '' when not given (DEL may come without one: containerd's second DEL) */
  netns: string;
  ifname: string;
  args: CniArgs;
  path: string;
}

export interface CniArgs {
  ignoreUnknown: boolean;
  podNamespace?: string;
  podName?: string;
  infraContainerId?: string;
  podUid?: string;
}

const REQUIRED: Record<CniCommand, Array<'CNI_CONTAINERID' | 'CNI_NETNS' | 'CNI_IFNAME' | 'CNI_PATH'>> = {
  ADD: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH'],
  CHECK: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH'],
  DEL: ['CNI_CONTAINERID', 'CNI_IFNAME', 'CNI_PATH'],
  GC: ['CNI_PATH'],
  STATUS: ['CNI_PATH'],
  VERSION: [],
};

/** The spec's rule for container IDs. */
const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_.\-]*$/;
/** The spec's rule for network names. */
const NETWORK_NAME = /^[A-Za-z0-9][A-Za-z0-9_.\-]*$/;

export function checkContainerId(id: string, what = 'CNI_CONTAINERID'): void {
  if (!CONTAINER_ID.test(id) || id.length > 1024) {
    throw new CniError(CNI_ERR.INVALID_ENV, `${what} "${id}" is not a valid container ID`, 'letters, digits, underscore, dot and hyphen, starting with a letter or digit');
  }
}

/** The kernel's rules for an interface name (IFNAMSIZ 16 with the NUL). */
export function checkIfname(name: string, what = 'CNI_IFNAME'): void {
  if (name.length === 0 || name.length > 15 || name === '.' || name === '..' || /[\s/:]/.test(name)) {
    throw new CniError(CNI_ERR.INVALID_ENV, `${what} "${name}" is not a valid interface name`, 'at most 15 characters, no whitespace, "/" or ":", not "." or ".."');
  }
}

/** The environment of a call, checked for what its command needs. */
export function parseEnv(env: Record<string, string | undefined>): CniEnv {
  const cmd = env.CNI_COMMAND;
  if (!cmd) throw new CniError(CNI_ERR.INVALID_ENV, 'CNI_COMMAND is not set', `one of ${COMMANDS.join(', ')}`);
  if (!(COMMANDS as readonly string[]).includes(cmd)) throw new CniError(CNI_ERR.INVALID_ENV, `unknown CNI_COMMAND "${cmd}"`, `one of ${COMMANDS.join(', ')}`);
  const command = cmd as CniCommand;
  const missing = REQUIRED[command].filter((k) => !env[k]);
  if (missing.length) throw new CniError(CNI_ERR.INVALID_ENV, `${command} needs ${missing.join(', ')}`, `missing or empty: ${missing.join(', ')}`);
  const containerId = env.CNI_CONTAINERID ?? '';
  const ifname = env.CNI_IFNAME ?? '';
  if (containerId) checkContainerId(containerId);
  if (ifname) checkIfname(ifname);
  const netns = env.CNI_NETNS ?? '';
  if (netns && !netns.startsWith('/')) throw new CniError(CNI_ERR.INVALID_ENV, `CNI_NETNS "${netns}" is not an absolute path`, 'a path like /var/run/netns/NAME or /proc/PID/ns/net');
  return { command, containerId, netns, ifname, args: parseCniArgs(env.CNI_ARGS ?? ''), path: env.CNI_PATH ?? '' };
}

const KNOWN_ARGS: Record<string, keyof CniArgs | null> = {
  IgnoreUnknown: null,
  K8S_POD_NAMESPACE: 'podNamespace',
  K8S_POD_NAME: 'podName',
  K8S_POD_INFRA_CONTAINER_ID: 'infraContainerId',
  K8S_POD_UID: 'podUid',
};

/**
 * CNI_ARGS: "K=V;K2=V2". Kubernetes' keys are understood; any other key is an error unless
 * IgnoreUnknown is 1 or true (the convention every reference plugin follows).
 */
export function parseCniArgs(s: string): CniArgs {
  const out: CniArgs = { ignoreUnknown: false };
  if (!s) return out;
  const unknown: string[] = [];
  for (const pair of s.split(';')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new CniError(CNI_ERR.INVALID_ENV, `CNI_ARGS: "${pair}" is not KEY=VALUE`, `CNI_ARGS is "${s}"`);
    const k = pair.slice(0, eq);
    const v = pair.slice(eq + 1);
    if (k === 'IgnoreUnknown') {
      if (!/^(1|0|true|false)$/i.test(v)) throw new CniError(CNI_ERR.INVALID_ENV, `CNI_ARGS: IgnoreUnknown must be 1, 0, true or false, not "${v}"`);
      out.ignoreUnknown = v === '1' || v.toLowerCase() === 'true';
      continue;
    }
    const field = KNOWN_ARGS[k];
    if (field) (out as unknown as Record<string, string>)[field] = v;
    else unknown.push(k);
  }
  if (unknown.length && !out.ignoreUnknown) {
    throw new CniError(CNI_ERR.INVALID_ENV, `CNI_ARGS: unknown key${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')}`, `known: ${Object.keys(KNOWN_ARGS).join(', ')}; add IgnoreUnknown=1 to pass others`);
  }
  if (out.infraContainerId) checkContainerId(out.infraContainerId, 'K8S_POD_INFRA_CONTAINER_ID');
  return out;
}

/** One valid attachment of a GC request (`cni.dev/valid-attachments`). */
export interface Attachment { containerId: string; ifname: string }

/** The network configuration on stdin, with the keys weave-net reads. */
export interface NetConf {
  cniVersion: CniVersion;
  name: string;
  type: string;
  /** the router's API (read by the shim; kept for the report) */
  socket?: string;
  api?: string;
  /** allocate from this subnet of the IPAM range instead of the default subnet */
  subnet?: string;
  /** a result from an earlier ADD (CHECK, DEL, chained plugins) */
  prevResult?: PrevResult;
  /** GC: the attachments to keep */
  validAttachments?: Attachment[];
  dns?: ResultDns;
}

/** What weave-net reads from a prevResult: the addresses, whatever the version. */
export interface PrevResult { ips: string[] }

export function isSupported(v: unknown): v is CniVersion {
  return typeof v === 'string' && (SUPPORTED_VERSIONS as readonly string[]).includes(v);
}

/** Numeric order of two spec versions ("0.3.1" < "1.0.0"). */
export function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < 3; i++) if ((pa[i] ?? 0) !== (pb[i] ?? 0)) return (pa[i] ?? 0) - (pb[i] ?? 0);
  return 0;
}

/** The version an answer should be written in when the input could not be read far enough. */
export function versionOf(stdin: string): CniVersion {
  try {
    const v = JSON.parse(stdin)?.cniVersion;
    return isSupported(v) ? v : LATEST_VERSION;
  } catch {
    return LATEST_VERSION; // not JSON: the error that says so is written in the latest version
  }
}

/** Parses and checks the configuration for a command. */
export function parseConf(stdin: string, command: CniCommand): NetConf {
  let raw: unknown;
  try {
    raw = JSON.parse(stdin);
  } catch (e) {
    throw new CniError(CNI_ERR.DECODE, 'failed to decode the network configuration on stdin', (e as Error).message);
  }
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new CniError(CNI_ERR.DECODE, 'the network configuration on stdin is not a JSON object');
  const o = raw as Record<string, unknown>;
  if (typeof o.cniVersion !== 'string') throw new CniError(CNI_ERR.INVALID_CONFIG, 'the network configuration has no "cniVersion"', `supported: ${SUPPORTED_VERSIONS.join(', ')}`);
  if (!isSupported(o.cniVersion)) throw new CniError(CNI_ERR.INCOMPATIBLE_VERSION, `cniVersion ${o.cniVersion} is not supported`, `supported: ${SUPPORTED_VERSIONS.join(', ')}`);
  const cniVersion = o.cniVersion;
  if (compareVersions(cniVersion, COMMAND_SINCE[command]) < 0) {
    throw new CniError(CNI_ERR.INCOMPATIBLE_VERSION, `${command} needs cniVersion ${COMMAND_SINCE[command]} or later (the configuration says ${cniVersion})`);
  }
  if (typeof o.name !== 'string' || !NETWORK_NAME.test(o.name)) {
    throw new CniError(CNI_ERR.INVALID_CONFIG, `the network configuration's "name" ${JSON.stringify(o.name)} is not a valid network name`, 'letters, digits, underscore, dot and hyphen, starting with a letter or digit');
  }
  if (typeof o.type !== 'string' || !o.type) throw new CniError(CNI_ERR.INVALID_CONFIG, 'the network configuration has no "type"');
  const conf: NetConf = { cniVersion, name: o.name, type: o.type };
  for (const k of ['socket', 'api', 'subnet'] as const) {
    if (o[k] === undefined) continue;
    if (typeof o[k] !== 'string' || !o[k]) throw new CniError(CNI_ERR.INVALID_CONFIG, `"${k}" must be a non-empty string`);
    conf[k] = o[k] as string;
  }
  if (o.prevResult !== undefined) conf.prevResult = parsePrevResult(o.prevResult);
  if (command === 'GC') conf.validAttachments = parseValidAttachments(o['cni.dev/valid-attachments']);
  if (o.dns !== undefined) conf.dns = parseDns(o.dns);
  return conf;
}

function parsePrevResult(v: unknown): PrevResult {
  const bad = (why: string): never => { throw new CniError(CNI_ERR.INVALID_CONFIG, `prevResult: ${why}`); };
  if (!v || typeof v !== 'object' || Array.isArray(v)) bad('not an object');
  const ips = (v as Record<string, unknown>).ips;
  if (ips === undefined) return { ips: [] };
  if (!Array.isArray(ips)) bad('"ips" is not a list');
  return {
    ips: (ips as unknown[]).map((ip) => {
      const a = (ip as Record<string, unknown> | null)?.address;
      if (typeof a !== 'string' || !/^\d+\.\d+\.\d+\.\d+\/\d+$/.test(a)) bad(`an entry of "ips" has no IPv4 "address": ${JSON.stringify(ip)}`);
      return a as string;
    }),
  };
}

function parseValidAttachments(v: unknown): Attachment[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw new CniError(CNI_ERR.INVALID_CONFIG, '"cni.dev/valid-attachments" must be a list of {containerID, ifname}');
  return v.map((x) => {
    const o = x as Record<string, unknown> | null;
    if (!o || typeof o.containerID !== 'string' || typeof o.ifname !== 'string') {
      throw new CniError(CNI_ERR.INVALID_CONFIG, `"cni.dev/valid-attachments": ${JSON.stringify(x)} is not {containerID, ifname}`);
    }
    return { containerId: o.containerID, ifname: o.ifname };
  });
}

function parseDns(v: unknown): ResultDns {
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new CniError(CNI_ERR.INVALID_CONFIG, '"dns" must be an object');
  const o = v as Record<string, unknown>;
  const out: ResultDns = {};
  for (const k of ['nameservers', 'search', 'options'] as const) {
    if (o[k] === undefined) continue;
    if (!Array.isArray(o[k]) || !(o[k] as unknown[]).every((s) => typeof s === 'string')) throw new CniError(CNI_ERR.INVALID_CONFIG, `"dns.${k}" must be a list of strings`);
    out[k] = [...(o[k] as string[])];
  }
  if (o.domain !== undefined) {
    if (typeof o.domain !== 'string') throw new CniError(CNI_ERR.INVALID_CONFIG, '"dns.domain" must be a string');
    out.domain = o.domain;
  }
  return out;
}

// ---- results --------------------------------------------------------------------------------

export interface ResultInterface { name: string; mac: string; sandbox?: string }
export interface ResultIp { address: string; gateway?: string; interface: number }
export interface ResultRoute { dst: string; gw?: string }
export interface ResultDns { nameservers?: string[]; domain?: string; search?: string[]; options?: string[] }

/** A result as weave-net makes it (the 1.1.0 shape); formatResult writes it in the version asked for. */
export interface Result { interfaces: ResultInterface[]; ips: ResultIp[]; routes: ResultRoute[]; dns: ResultDns }

/**
 * The result in `version`: 0.3.x and 0.4.0 mark each IP with "version": "4"; 1.0.0 dropped that
 * field. 1.1.0 only added optional fields weave-net does not set (interface mtu, route table ...).
 */
export function formatResult(r: Result, version: CniVersion): Record<string, unknown> {
  const v1 = compareVersions(version, '1.0.0') >= 0;
  return {
    cniVersion: version,
    interfaces: r.interfaces.map((i) => {
      const o: Record<string, unknown> = { name: i.name, mac: i.mac };
      if (i.sandbox !== undefined) o.sandbox = i.sandbox;
      return o;
    }),
    ips: r.ips.map((ip) => {
      const o: Record<string, unknown> = v1 ? {} : { version: '4' };
      o.address = ip.address;
      if (ip.gateway) o.gateway = ip.gateway;
      o.interface = ip.interface;
      return o;
    }),
    routes: r.routes.map((rt) => (rt.gw ? { dst: rt.dst, gw: rt.gw } : { dst: rt.dst })),
    dns: { ...r.dns },
  };
}

/** The spec's error object (code, msg, details), in the version asked for (the latest when the input had none). */
export function errorObject(version: CniVersion, code: number, msg: string, details: string): Record<string, unknown> {
  return { cniVersion: version, code, msg, details };
}

/** VERSION's answer (the shim gives the same from its compiled-in list). */
export function versionInfo(): Record<string, unknown> {
  return { cniVersion: LATEST_VERSION, supportedVersions: [...SUPPORTED_VERSIONS] };
}
