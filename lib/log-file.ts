// The router's log file (<dataDir>/weave.log, written by `weave launch`): JSON lines for machines
// (pino), rendered for people by `weave logs`. Three things keep it usable:
//   - a start marker: `weave launch` writes one line before each start, so a failed launch shows only
//     its own run's lines, and `weave logs --run` the current run;
//   - rotation by size: past maxBytes the file is copied to weave.log.1 (older ones shift to .2, .3;
//     the oldest goes) and truncated in place. Copy-and-truncate rather than rename because the
//     router's stdout and stderr (where Node writes a crash) point at the file too, opened for
//     appending by `weave launch`: after the truncate every writer appends at the new end, where a
//     rename would leave stderr writing into weave.log.1. Lines written by another thread in the
//     moment between copy and truncate can be lost (the router's logger writes synchronously on its
//     own thread, so it loses none);
//   - rendering: `TIME LEVEL [component] message key=value ...`, lines that are not JSON as they are.
import * as fs from 'fs';

export const LOG_FILE = 'weave.log';
export const DEFAULT_LOG_MAX_BYTES = 10 << 20;
/** rotated files kept: weave.log.1 .. weave.log.3 */
export const LOG_KEEP = 3;
/** what a start marker line carries (component 'launch', this key) */
export const START_KEY = 'weaveStart';

const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };

/** Shifts weave.log.N-1 -> .N, copies the file to .1 and truncates it. Throws what the file system says. */
export function rotateLog(file: string, keep = LOG_KEEP): void {
  if (keep < 1) {
    fs.truncateSync(file, 0);
    return;
  }
  fs.rmSync(`${file}.${keep}`, { force: true });
  for (let n = keep - 1; n >= 1; n--) {
    if (fs.existsSync(`${file}.${n}`)) fs.renameSync(`${file}.${n}`, `${file}.${n + 1}`);
  }
  fs.copyFileSync(file, `${file}.1`);
  fs.truncateSync(file, 0);
}

/** Rotates when the file is at least maxBytes; whether it did. */
export function rotateIfLarge(file: string, maxBytes: number, keep = LOG_KEEP): boolean {
  let size: number;
  try {
    size = fs.statSync(file).size;
  } catch {
    return false; // no file yet
  }
  if (size < maxBytes) return false;
  rotateLog(file, keep);
  return true;
}

/** The line `weave launch` writes before a start (pino's shape, so it renders like any other). */
export function startMarker(o: { pid: number; time?: number; args: string[]; version: string }): string {
  return `${JSON.stringify({ level: 30, time: o.time ?? Date.now(), pid: o.pid, component: 'launch', [START_KEY]: true, version: o.version, args: o.args, msg: 'weave launch: starting the router' })}\n`;
}

export function isStartMarker(line: string): boolean {
  if (!line.includes(START_KEY)) return false;
  try {
    return JSON.parse(line)[START_KEY] === true;
  } catch {
    return false;
  }
}

/** The lines from the last start marker on (all lines when there is none). */
export function currentRun(lines: string[]): string[] {
  for (let i = lines.length - 1; i >= 0; i--) if (isStartMarker(lines[i])) return lines.slice(i);
  return lines;
}

function fmtValue(v: unknown): string {
  if (typeof v === 'string') return /^[^\s"=]+$/.test(v) ? v : JSON.stringify(v);
  if (v !== null && typeof v === 'object') {
    const e = v as { message?: unknown; type?: unknown };
    // pino's serialized error: its message says enough on one line
    if (typeof e.message === 'string' && typeof e.type === 'string') return JSON.stringify(e.message);
    return JSON.stringify(v);
  }
  return String(v);
}

/** One log line for people. Lines that are not pino JSON (a crash's stack on stderr) stay as they are. */
export function renderLine(line: string): string {
  let o: Record<string, unknown>;
  try {
    const x = JSON.parse(line);
    if (x === null || typeof x !== 'object' || Array.isArray(x) || typeof x.level !== 'number') return line;
    o = x;
  } catch {
    return line;
  }
  const time = typeof o.time === 'number' ? new Date(o.time).toISOString() : '-';
  if (o[START_KEY] === true) {
    const args = Array.isArray(o.args) ? (o.args as unknown[]).join(' ') : '';
    return `==== ${time} weave launch${args ? ` ${args}` : ''} (weave.ts ${String(o.version ?? '?')}, pid ${String(o.pid)}) ====`;
  }
  const level = (LEVELS[o.level as number] ?? String(o.level)).padEnd(5);
  const comp = typeof o.component === 'string' ? `[${o.component}] ` : '';
  const msg = typeof o.msg === 'string' ? o.msg : '';
  const rest = Object.entries(o).filter(([k]) => !['level', 'time', 'pid', 'hostname', 'component', 'msg'].includes(k)).map(([k, v]) => `${k}=${fmtValue(v)}`);
  return `${time} ${level} ${comp}${msg}${rest.length ? ` ${rest.join(' ')}` : ''}`;
}

/**
 * The keys of a JSON object line in the order written, duplicates included (JSON.parse keeps only the
 * last of each): the check that no log line says a key twice. Undefined when the line is no object.
 */
export function topLevelKeys(line: string): string[] | undefined {
  const s = line.trim();
  if (!s.startsWith('{')) return undefined;
  const keys: string[] = [];
  let depth = 0;
  let expectKey = false;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === '"') {
      let j = i + 1;
      while (j < s.length && s[j] !== '"') j += s[j] === '\\' ? 2 : 1;
      if (depth === 1 && expectKey) {
        keys.push(JSON.parse(s.slice(i, j + 1)));
        expectKey = false;
      }
      i = j;
    } else if (c === '{' || c === '[') {
      depth++;
      if (depth === 1) expectKey = true;
    } else if (c === '}' || c === ']') {
      depth--;
    } else if (c === ',' && depth === 1) {
      expectKey = true;
    }
  }
  return keys;
}

/** A pino destination that writes synchronously to fd and rotates `file` (which fd appends to) by size. */
export class RotatingDestination {
  private written: number;
  /** rotations done, and the last failure (the log goes on unrotated rather than stopping) */
  rotations = 0;
  lastError: string | undefined;

  constructor(private readonly fd: number, readonly file: string, readonly maxBytes = DEFAULT_LOG_MAX_BYTES, readonly keep = LOG_KEEP) {
    try {
      this.written = fs.fstatSync(fd).size;
    } catch {
      this.written = 0;
    }
  }

  write(s: string): boolean {
    fs.writeSync(this.fd, s);
    this.written += Buffer.byteLength(s);
    if (this.written >= this.maxBytes) this.rotate();
    return true;
  }

  private rotate(): void {
    try {
      // others append too (stderr): the file's own size decides
      if (rotateIfLarge(this.file, this.maxBytes, this.keep)) this.rotations++;
      this.written = fs.statSync(this.file).size;
    } catch (e) {
      this.lastError = (e as Error).message;
      this.written = 0; // try again after another maxBytes
    }
  }
}
