// Connection targets persist across restarts (`weave launch --resume`) in <dataDir>/targets.json, a
// checked state file (lib/state-file.ts). A damaged file is moved aside and reported: the router then
// starts with the peers given on its command line (and learns the rest through discovery).
import * as path from 'path';
import type { Logger } from '../lib/log';
import { contentProblem, moveAside, readStateFile, relName, writeStateFile, type StateRecovery } from '../lib/state-file';

export const TARGETS_FILE = 'targets.json';
const TARGETS_KIND = 'targets';

export class FileTargetStore {
  private readonly recovered: StateRecovery[] = [];

  constructor(private readonly file: string, private readonly log: Logger, private readonly owner?: string) {}

  load(): string[] {
    const r = readStateFile(this.file, TARGETS_KIND, { legacy: true });
    if (r.status === 'missing') return [];
    let problem: string;
    if (r.status === 'ok') {
      try {
        const v = JSON.parse(r.payload.toString('utf8'));
        if (Array.isArray(v?.targets) && v.targets.every((t: unknown) => typeof t === 'string')) return v.targets;
        problem = contentProblem(r.legacy, new Error('"targets" is not a list of addresses'));
      } catch (e) {
        problem = contentProblem(r.legacy, e);
      }
    } else {
      problem = r.problem;
    }
    const movedTo = moveAside(this.file);
    const rec: StateRecovery = {
      file: relName(path.dirname(this.file), this.file), problem, movedTo, at: Date.now(),
      action: `moved aside to ${path.basename(movedTo)}; --resume has no stored targets: this router connects to the peers given now and those discovery finds`,
    };
    this.recovered.push(rec);
    this.log.error(rec, `${TARGETS_FILE}: ${problem}; ${rec.action}`);
    return [];
  }

  save(targets: string[]): void {
    writeStateFile(this.file, TARGETS_KIND, JSON.stringify({ v: 1, targets }) + '\n', { owner: this.owner });
  }

  recovery(): StateRecovery[] {
    return this.recovered.map((r) => ({ ...r }));
  }
}
