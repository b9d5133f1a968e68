// Connection targets persist across restarts (`--resume`) in DATA_DIR/targets.json.
import * as fs from 'fs';
import { errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';

/** Targets persist across restarts (`--resume`); written atomically. */
export class FileTargetStore {
  constructor(private readonly file: string, private readonly log: Logger) {}
  load(): string[] {
    try {
      const v = JSON.parse(fs.readFileSync(this.file, 'utf8'));
      if (Array.isArray(v?.targets) && v.targets.every((t: unknown) => typeof t === 'string')) return v.targets;
      this.log.warn({ file: this.file }, 'target file malformed; starting with no stored targets');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') this.log.warn({ file: this.file, err: errMsg(e) }, 'cannot read stored targets');
    }
    return [];
  }
  save(targets: string[]): void {
    const tmp = `${this.file}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify({ v: 1, targets }) + '\n');
    fs.renameSync(tmp, this.file);
  }
}
