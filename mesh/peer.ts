// Peer identity. A peer name is a random 48-bit value shown like a MAC ("8a:3e:01:..."), persisted in
// the data dir so a restarted router is the same peer; a UID is random per process start so peers
// can tell a restart from a stale record. Never derived from hardware IDs (cloned VMs collide).
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import * as os from 'os';
import { UsageError, WeaveError } from '../lib/errors';
import { moveAside, ownersInDataDir, readStateFile, writeStateFile, type StateRecovery } from '../lib/state-file';

export type PeerName = string;

const NAME_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

export function isPeerName(s: string): boolean {
  return NAME_RE.test(s);
}

export function parsePeerName(s: string): PeerName {
  const n = s.trim().toLowerCase();
  if (!isPeerName(n)) throw new UsageError(`invalid peer name "${s}": expected six hex bytes like 8a:3e:01:02:03:04`);
  return n;
}

export function randomPeerName(): PeerName {
  const b = randomBytes(6);
  b[0] = (b[0] & 0xfe) | 0x02; // locally administered unicast, like a MAC we may also use for the VTEP
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

/** 48-bit name as a number (fits exactly in a double), for ordering and tie-breaks. */
export function peerNameToNumber(n: PeerName): number {
  return parseInt(n.replace(/:/g, ''), 16);
}

export function randomUid(): string {
  return randomBytes(8).toString('hex');
}

export interface Identity {
  name: PeerName;
  nickname: string;
  uid: string; // per process start
}

export const PEER_NAME_FILE = 'peer-name';
const PEER_NAME_KIND = 'peer-name';

/**
 * Loads the persisted peer name from dataDir/peer-name (a checked state file), creating it on first
 * start. An explicit name (--name) wins and is persisted, so a later start without --name keeps it.
 *
 * A missing or damaged peer-name while other state files of the data dir name their owner (every
 * state file records the peer that wrote it: endpoints, DNS records, the IPAM env's owner file ...)
 * is not a first start: silently making a new identity would strand the old one's address space and
 * names. The name is recovered from that state when it agrees (and `recovery` says so), and start-up
 * is refused with the file and the ways out named when it does not, or when nothing can tell.
 */
export function loadIdentity(dataDir: string, opts: { name?: string; nickname?: string; now?: () => number } = {}): Identity & { recovery: StateRecovery[] } {
  fs.mkdirSync(dataDir, { recursive: true });
  const file = path.join(dataDir, PEER_NAME_FILE);
  const now = opts.now ?? Date.now;
  const recovery: StateRecovery[] = [];
  const r = readStateFile(file, PEER_NAME_KIND, { legacy: true });
  let stored: PeerName | undefined;
  let problem: string | undefined;
  if (r.status === 'ok') {
    const t = r.payload.toString('utf8').trim().toLowerCase();
    if (isPeerName(t) && (r.legacy || r.owner === undefined || r.owner === t)) stored = t;
    else problem = r.legacy ? 'garbage or overwritten: no weave state header, and not a peer name' : 'holds no valid peer name';
  } else if (r.status === 'damaged') {
    problem = r.problem;
  }
  let name: PeerName;
  if (opts.name) {
    name = parsePeerName(opts.name);
  } else if (stored) {
    name = stored;
  } else {
    const witnesses = ownersInDataDir(dataDir, [PEER_NAME_FILE]);
    const names = [...new Set(witnesses.map((w) => w.owner))];
    const what = problem ?? 'missing';
    const ways = `restore ${file}, start with --name <the old peer name>, or run "weave reset" to start over as a new peer`;
    if (names.length > 1) {
      const list = names.map((n) => `${n} (${witnesses.filter((w) => w.owner === n).map((w) => w.file).join(', ')})`).join('; ');
      throw new WeaveError('ESTATE', `${file} is ${what}, and the state in ${dataDir} names different peers: ${list}. Refusing to guess: ${ways}`, { file, problem: what });
    }
    if (names.length === 1) {
      name = names[0];
      const from = witnesses.map((w) => w.file).join(', ');
      const movedTo = r.status !== 'missing' ? moveAside(file, now()) : undefined;
      const rec: StateRecovery = { file: PEER_NAME_FILE, problem: what, action: `peer name ${name} recovered and written back${movedTo ? `; the damaged file moved aside to ${path.basename(movedTo)}` : ''}`, from, at: now() };
      if (movedTo) rec.movedTo = movedTo;
      recovery.push(rec);
    } else if (problem) {
      throw new WeaveError('ESTATE', `${file} is ${problem}, and no other state in ${dataDir} names this peer, so its old name cannot be recovered: ${ways}`, { file, problem });
    } else {
      name = randomPeerName(); // a first start
    }
  }
  if (name !== stored || r.status !== 'ok' || r.legacy) writeStateFile(file, PEER_NAME_KIND, `${name}\n`, { owner: name, mode: 0o644 });
  const id = { name, nickname: opts.nickname || os.hostname(), uid: randomUid() };
  // not enumerable: the identity is passed around (features, status) without it
  Object.defineProperty(id, 'recovery', { value: recovery, enumerable: false });
  return id as Identity & { recovery: StateRecovery[] };
}

export function describePeer(name: PeerName, nickname?: string): string {
  return nickname ? `${name}(${nickname})` : name;
}
