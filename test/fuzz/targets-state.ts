// Fuzz targets: every state file the router reads from its data dir, through the readers the router
// uses (files in a scratch dir in /dev/shm): the checked envelope (lib/state-file.ts), endpoints.json,
// the DNS records, the connection targets, the peer name, the Docker state, the router's pid file,
// and the pre-check that stands between a damaged lmdb environment and the native library.
import * as fs from 'fs';
import * as path from 'path';
import { encodeStateFile, decodeStateFile } from '../../lib/state-file';
import { WeaveError, UsageError } from '../../lib/errors';
import { silentLogger } from '../../lib/log';
import { STATE_KIND as ENDPOINTS_KIND, validateState } from '../../router/endpoints';
import { FileDnsPersistence, encodeEntries } from '../../dns/records';
import { FileTargetStore } from '../../mesh/targets';
import { loadIdentity, PEER_NAME_FILE } from '../../mesh/peer';
import { DockerState, DOCKER_STATE_FILE } from '../../docker/state';
import { readPidFile } from '../../lib/pid-file';
import { checkLmdbEnv, LMDB_DATA_FILE } from '../../ipam/store';
import { jsonText, perturb, pick, value, type Rng } from './mutate';
import type { Target } from './engine';
import { tmpDir } from './tmp';

const OWNER = '02:00:00:00:00:01';
const never = (): boolean => false;

const ENDPOINTS = {
  version: 1,
  endpoints: [
    { netns: '/var/run/netns/a', path: '/var/run/netns/a', key: '4:100', ifname: 'ethwe', hostIfname: 'vethwepl1', mac: '02:00:00:00:00:02', addrs: ['10.32.0.5/12'], name: 'web', ident: 'c1', hostMac: '02:00:00:00:00:03', container: { id: 'abc', name: 'web' } },
    { netns: '/proc/1/ns/net', path: '/proc/1/ns/net', key: '4:200', ifname: 'eth0', hostIfname: 'vethwepl2', mac: '02:00:00:00:00:04', addrs: ['10.32.0.6/12'], pod: { network: 'weave', containerId: 'pod1', namespace: 'default', name: 'p' }, docker: { networkId: 'n1', endpointId: 'e1' } },
  ],
  exposed: [{ cidr: '10.32.0.1/12', masquerade: true }],
};
const DOCKER = {
  version: 1,
  pools: [{ id: 'weave:10.32.0.0/12', cidr: '10.32.0.0/12', space: 'weavelocal', gateway: '10.32.0.1' }],
  networks: [{ id: 'n1', pool: 'weave:10.32.0.0/12', gateway: '10.32.0.1/12' }],
  endpoints: [{ id: 'e1', networkId: 'n1', cidr: '10.32.0.5/12', mac: '02:42:0a:20:00:05', ident: 'docker:ep:1' }],
};

/** Seeds in the checked format, in the old (headerless) format, and structured JSON payloads inside a valid envelope. */
function jsonFile(kind: string, obj: unknown): { seeds: () => Uint8Array[]; structured: (r: Rng) => Uint8Array } {
  const text = JSON.stringify(obj, null, 2) + '\n';
  return {
    seeds: () => [encodeStateFile(kind, text, OWNER), encodeStateFile(kind, text), Buffer.from(text)],
    structured: (r) => {
      const payload = jsonText(r() < 0.8 ? perturb(r, obj) : value(r, 4));
      return r() < 0.7 ? encodeStateFile(kind, payload, OWNER) : Buffer.from(payload);
    },
  };
}

const envelope: Target = {
  name: 'state-envelope',
  seeds: () => [encodeStateFile('endpoints', '{"version":1}\n', OWNER), encodeStateFile('targets', 'x'), encodeStateFile('dns-records', Buffer.alloc(40, 7), OWNER)],
  run(b, r) {
    const res = decodeStateFile(Buffer.from(b), pick(r, ['endpoints', 'targets', 'dns-records']), { legacy: r() < 0.5 });
    if (res.status === 'damaged' && (typeof res.problem !== 'string' || res.problem.length > 300)) throw new Error('a damage report without a short problem text');
  },
  expected: never,
};

const ep = jsonFile(ENDPOINTS_KIND, ENDPOINTS);
const endpoints: Target = {
  name: 'state-endpoints',
  ...ep,
  run(b) {
    const res = decodeStateFile(Buffer.from(b), ENDPOINTS_KIND, { legacy: true });
    if (res.status !== 'ok') return;
    let v: unknown;
    try {
      v = JSON.parse(res.payload.toString('utf8'));
    } catch {
      return; // the reader reports "unusable content"; nothing else to check
    }
    validateState(v);
  },
  expected: (e) => e instanceof WeaveError,
};

/** A reader that takes a file in a scratch dir: each case writes the bytes there first. */
function fileTarget(name: string, file: string, seeds: () => Uint8Array[], structured: ((r: Rng) => Uint8Array) | undefined, read: (dir: string) => void, expected: (e: unknown) => boolean): Target {
  let dir: string | undefined;
  return {
    name, seeds, structured, expected,
    run(b) {
      dir ??= tmpDir(name);
      for (const f of fs.readdirSync(dir)) fs.rmSync(path.join(dir, f), { force: true, recursive: true });
      fs.writeFileSync(path.join(dir, file), b);
      read(dir);
    },
  };
}

const DNS_ENTRIES = [
  { name: 'web.weave.local.', addr: '10.32.0.5', origin: OWNER, version: 3, tombstone: false, containerId: 'abc' },
  { name: 'db.weave.local.', addr: '10.32.0.6', origin: OWNER, version: 1, tombstone: true },
];
const dnsState = fileTarget('state-dns', 'dns.msgpack',
  () => [encodeStateFile('dns-records', Buffer.from(encodeEntries(DNS_ENTRIES)[0]), OWNER), Buffer.from(encodeEntries(DNS_ENTRIES)[0])],
  undefined,
  (dir) => { new FileDnsPersistence(path.join(dir, 'dns.msgpack')).load(); },
  (e) => e instanceof WeaveError && e.code === 'ESTATE');

const tg = jsonFile('targets', { v: 1, targets: ['10.0.0.2:6783', '[::1]:6783'] });
const targets = fileTarget('state-targets', 'targets.json', tg.seeds, tg.structured,
  (dir) => {
    const t = new FileTargetStore(path.join(dir, 'targets.json'), silentLogger()).load();
    if (!Array.isArray(t) || !t.every((x) => typeof x === 'string')) throw new Error('targets loaded are not a list of strings');
  }, never);

const peerName = fileTarget('state-peer-name', PEER_NAME_FILE,
  () => [encodeStateFile('peer-name', `${OWNER}\n`, OWNER), Buffer.from(`${OWNER}\n`)],
  undefined,
  (dir) => { loadIdentity(dir); },
  // a damaged name with nothing to recover it from refuses the start, naming the file
  (e) => e instanceof WeaveError || e instanceof UsageError);

const dk = jsonFile('docker', DOCKER);
const dockerState = fileTarget('state-docker', DOCKER_STATE_FILE, dk.seeds, dk.structured,
  (dir) => { new DockerState(dir, silentLogger()); }, never);

const pid = fileTarget('state-pid', 'weave.pid',
  () => [encodeStateFile('router-pid', `${process.pid}\n`), Buffer.from('12345\n')],
  undefined,
  (dir) => { readPidFile(dir); }, never);

let lmdbSeed: Buffer | undefined;
/** A real lmdb environment (written by the lmdb package the router uses), a few IPAM-like entries in it. */
function lmdbFile(): Buffer {
  if (lmdbSeed) return lmdbSeed;
  const dir = tmpDir('lmdb-seed');
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const lmdb = require('lmdb') as { open(o: Record<string, unknown>): { putSync(k: string, v: unknown): void; close(): Promise<void> } };
  const db = lmdb.open({ path: dir, compression: false });
  for (let i = 0; i < 50; i++) db.putSync(`k${i}`, { owner: OWNER, n: i, pad: 'x'.repeat(i * 10) });
  void db.close();
  lmdbSeed = fs.readFileSync(path.join(dir, LMDB_DATA_FILE));
  return lmdbSeed;
}

const lmdbCheck = fileTarget('state-ipam-lmdb', LMDB_DATA_FILE, () => [lmdbFile()], undefined,
  (dir) => {
    const c = checkLmdbEnv(dir);
    if (c.status !== 'ok' && c.status !== 'fresh' && c.status !== 'damaged') throw new Error(`unexpected check status ${String((c as { status: unknown }).status)}`);
  }, never);

export const STATE_TARGETS: Target[] = [envelope, endpoints, dnsState, targets, peerName, dockerState, pid, lmdbCheck];
