// Peer identity. A peer name is a random 48-bit value shown like a MAC ("8a:3e:01:..."), persisted in
// the data dir so a restarted router is the same peer; a UID is random per process start so peers
// can tell a restart from a stale record. Never derived from hardware IDs (cloned VMs collide).
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import * as os from 'os';
import { UsageError } from '../lib/errors';

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

/**
 * Loads the persisted peer name from dataDir/peer-name, creating it on first start.
 * An explicit name (--name) wins and is persisted, so a later start without --name keeps it.
 */
export function loadIdentity(dataDir: string, opts: { name?: string; nickname?: string } = {}): Identity {
  fs.mkdirSync(dataDir, { recursive: true });
  const file = path.join(dataDir, 'peer-name');
  let name: PeerName | undefined;
  if (opts.name) name = parsePeerName(opts.name);
  else if (fs.existsSync(file)) name = parsePeerName(fs.readFileSync(file, 'utf8'));
  if (!name) name = randomPeerName();
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, `${name}\n`);
  fs.renameSync(tmp, file);
  return { name, nickname: opts.nickname || os.hostname(), uid: randomUid() };
}

export function describePeer(name: PeerName, nickname?: string): string {
  return nickname ? `${name}(${nickname})` : name;
}
