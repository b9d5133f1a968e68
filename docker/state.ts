// What the Docker driver remembers between calls and across router restarts, in DATA_DIR/docker.json
// (a checked state file, lib/state-file.ts): the IPAM pools Docker asked for, the networks created
// on them, and the endpoints created but not yet joined (a joined endpoint is also in the endpoints'
// records, with its veth). Addresses themselves live in IPAM (lmdb), under "docker:" idents.
import * as fs from 'fs';
import * as path from 'path';
import { WeaveError, describeValue } from '../lib/errors';
import type { Logger } from '../lib/log';
import { contentProblem, moveAside, readStateFile, writeStateFile, type StateRecovery } from '../lib/state-file';

export const DOCKER_STATE_FILE = 'docker.json';
const STATE_KIND = 'docker';
const VERSION = 1;

export interface PoolRecord {
  /** what Docker calls it (weave:SUBNET or weave:SUBNET:SUBPOOL) */
  id: string;
  subnet: string;
  /** --ip-range: addresses come from here */
  subPool?: string;
  /** Docker released it while a network still used it: it goes with that network */
  released?: boolean;
}

export interface NetworkRecord {
  id: string;
  poolId: string;
  subnet: string;
  gateway?: string;
}

export interface EndpointRecord {
  id: string;
  networkId: string;
  /** ADDR/LEN as Docker gave it */
  cidr: string;
  mac?: string;
  /** the IPAM ident holding the address */
  ident?: string;
}

interface Persisted {
  version: number;
  pools: PoolRecord[];
  networks: NetworkRecord[];
  endpoints: EndpointRecord[];
}

export class DockerState {
  pools = new Map<string, PoolRecord>();
  networks = new Map<string, NetworkRecord>();
  endpoints = new Map<string, EndpointRecord>();
  private readonly recovered: StateRecovery[] = [];

  constructor(private readonly dir: string, private readonly log: Logger, private readonly owner?: string, private readonly now: () => number = Date.now) {
    this.load();
  }

  private file(): string { return path.join(this.dir, DOCKER_STATE_FILE); }

  save(): void {
    const st: Persisted = { version: VERSION, pools: [...this.pools.values()], networks: [...this.networks.values()], endpoints: [...this.endpoints.values()] };
    fs.mkdirSync(this.dir, { recursive: true });
    writeStateFile(this.file(), STATE_KIND, JSON.stringify(st, null, 2) + '\n', { owner: this.owner });
  }

  recovery(): StateRecovery[] { return this.recovered.map((r) => ({ ...r })); }

  private load(): void {
    const r = readStateFile(this.file(), STATE_KIND);
    if (r.status === 'missing') return;
    let problem: string;
    if (r.status === 'ok') {
      try {
        const st = validate(JSON.parse(r.payload.toString('utf8')));
        for (const p of st.pools) this.pools.set(p.id, p);
        for (const n of st.networks) this.networks.set(n.id, n);
        for (const e of st.endpoints) this.endpoints.set(e.id, e);
        return;
      } catch (e) {
        problem = contentProblem(r.legacy, e);
      }
    } else {
      problem = r.problem;
    }
    const movedTo = moveAside(this.file(), this.now());
    // Docker replays its networks' pools and addresses when it restarts (RequiresRequestReplay), and
    // a pool asked for again is recorded again: nothing else is lost
    const rec: StateRecovery = { file: DOCKER_STATE_FILE, problem, action: `moved aside to ${path.basename(movedTo)}; pools and networks are recorded again as Docker asks for them (dockerd replays them when it restarts)`, from: 'Docker\'s replayed requests', movedTo, at: this.now() };
    this.recovered.push(rec);
    this.log.error(rec, `${DOCKER_STATE_FILE} is damaged (${problem})`);
  }
}

function validate(v: unknown): Persisted {
  const bad = (why: string): never => { throw new WeaveError('ESTATE', `docker state: ${why}`); };
  const o = v as Record<string, unknown>;
  if (!o || typeof o !== 'object') bad('not an object');
  if (o.version !== VERSION) bad(`unsupported version ${describeValue(o.version)}`);
  const list = (k: string): Array<Record<string, unknown>> => {
    if (!Array.isArray(o[k])) bad(`${k} must be a list`);
    return (o[k] as unknown[]).map((x) => (x && typeof x === 'object' ? x as Record<string, unknown> : bad(`${k} entry is not an object`)));
  };
  const s = (r: Record<string, unknown>, k: string, opt = false): string | undefined => {
    if (r[k] === undefined && opt) return undefined;
    return typeof r[k] === 'string' ? r[k] as string : bad(`${k} must be a string`);
  };
  const clean = <T extends object>(x: T): T => Object.fromEntries(Object.entries(x).filter(([, val]) => val !== undefined)) as T;
  return {
    version: VERSION,
    pools: list('pools').map((r) => clean({ id: s(r, 'id')!, subnet: s(r, 'subnet')!, subPool: s(r, 'subPool', true), released: r.released === undefined ? undefined : r.released === true })),
    networks: list('networks').map((r) => clean({ id: s(r, 'id')!, poolId: s(r, 'poolId')!, subnet: s(r, 'subnet')!, gateway: s(r, 'gateway', true) })),
    endpoints: list('endpoints').map((r) => clean({ id: s(r, 'id')!, networkId: s(r, 'networkId')!, cidr: s(r, 'cidr')!, mac: s(r, 'mac', true), ident: s(r, 'ident', true) })),
  };
}
