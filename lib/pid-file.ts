// <dataDir>/router.pid: the pid of the router using that data dir, as a bare number (what systemd's
// PIDFile= and every pid-file reader expect), written atomically and read strictly, so a damaged one
// is told apart from "no router". `weave launch` and the router refuse a second router on one data dir.
import * as fs from 'fs';
import * as path from 'path';
import { readStateFile, writeFileAtomic, type StateRecovery } from './state-file';

export const PID_FILE = 'router.pid';
const PID_KIND = 'router-pid';

export function pidFile(dataDir: string): string {
  return path.join(dataDir, PID_FILE);
}

/** The pid recorded in the data dir, or why it cannot be read (undefined when there is none). */
export function readPidFile(dataDir: string): { pid?: number; problem?: string } {
  const r = readStateFile(pidFile(dataDir), PID_KIND, { legacy: true });
  if (r.status === 'missing') return {};
  if (r.status === 'damaged') return { problem: r.problem };
  const t = r.payload.toString('utf8').trim();
  const pid = Number(t);
  if (!/^\d{1,10}$/.test(t) || !Number.isSafeInteger(pid) || pid <= 0) return { problem: 'holds no valid pid' };
  return { pid };
}

/** The pid in dataDir/router.pid if that process is alive and is a weave router. */
export function runningPid(dataDir: string): number | undefined {
  const { pid } = readPidFile(dataDir);
  if (pid === undefined) return undefined;
  try {
    const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return cmd.includes('weave') && cmd.includes('router') ? pid : undefined;
  } catch {
    return undefined;
  }
}

export function writePidFile(dataDir: string, pid: number): void {
  writeFileAtomic(pidFile(dataDir), Buffer.from(`${pid}\n`), { mode: 0o644 });
}

/** Removes the pid file if it names pid (a router stopping never removes another's). */
export function removePidFile(dataDir: string, pid: number): void {
  if (readPidFile(dataDir).pid === pid) fs.rmSync(pidFile(dataDir), { force: true });
}

/** A damaged pid file found at start-up, as a recovery entry (the starting router replaces it). */
export function pidFileRecovery(dataDir: string, now = Date.now()): StateRecovery[] {
  const { problem } = readPidFile(dataDir);
  if (!problem) return [];
  return [{ file: PID_FILE, problem, action: 'treated as "no router running" and replaced with this router\'s pid (a second router on this data dir would fail to bind its ports)', at: now }];
}
