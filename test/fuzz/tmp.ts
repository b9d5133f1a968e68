// Scratch directories for the fuzz targets that read files (state files): in /dev/shm when there is
// one (a million writes should not touch a disk), removed when the process exits.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const base = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
const made: string[] = [];
let hooked = false;

export function tmpDir(what: string): string {
  const d = fs.mkdtempSync(path.join(base, `weave-fuzz-${what}-`));
  made.push(d);
  if (!hooked) {
    hooked = true;
    process.on('exit', () => { for (const x of made) fs.rmSync(x, { recursive: true, force: true }); });
  }
  return d;
}
