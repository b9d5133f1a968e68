// State files in the data dir: one way to write them (atomically) and one way to read them (checked).
//
// Write: payload -> <file>.tmp (O_TRUNC), fsync the file, rename over <file>, fsync the directory. A
// crash at any point leaves the old file or the new one, never half of one; a left-over .tmp is
// ignored by readers and replaced by the next write.
//
// Format: one header line, then the payload bytes (JSON stays readable after the first line):
//   weave-state 1 <kind> <owner|-> <length> <sha256>\n<payload>
// kind names what the file holds (a file copied under the wrong name is caught), owner is the peer name
// that wrote it (so a lost peer-name can be recovered from the other state), length catches truncation
// and appended bytes, and the SHA-256 covers the header fields and the payload, so truncation at any
// length, garbage and single-bit flips anywhere are all detected rather than mis-parsed.
//
// A damaged file is never silently dropped: the caller moves it aside (moveAside, kept for a human),
// recovers what it can from elsewhere and records a StateRecovery that the log and `weave status` show.
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { WeaveError } from './errors';

export const STATE_MAGIC = 'weave-state';
export const STATE_FORMAT = 1;
/** suffix of a file moved aside (followed by a timestamp) */
export const DAMAGED_SUFFIX = '.damaged-';
const TMP_SUFFIX = '.tmp';
const MAX_HEADER = 256;
const KIND_RE = /^[a-z][a-z0-9-]{0,31}$/;
const OWNER_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

/** What was wrong with a state file and what the router did about it (log, report, `weave status`). */
export interface StateRecovery {
  /** path relative to the data dir, e.g. "endpoints.json", "ipam/data.mdb" */
  file: string;
  /** what was wrong: "bad checksum", "truncated: 10 of 412 bytes", "missing" ... */
  problem: string;
  /** what the router did: "moved aside to ...; 2 endpoints recovered" */
  action: string;
  /** where the recovered state came from (kernel links/routes/namespaces, peers' gossip, ...) */
  from?: string;
  /** where the damaged file was moved */
  movedTo?: string;
  /** ms since the epoch */
  at: number;
}

export type StateRead =
  | { status: 'missing' }
  | { status: 'ok'; payload: Buffer; owner?: string; legacy: boolean }
  | { status: 'damaged'; problem: string };

export interface WriteOptions {
  /** peer name of the writer, recorded in the header */
  owner?: string;
  mode?: number;
  /** test seam: runs after the temp file is written and synced, before the rename (a crash there) */
  beforeRename?: () => void;
}

function digest(kind: string, owner: string, length: number, payload: Buffer): string {
  return createHash('sha256').update(`${STATE_MAGIC} ${STATE_FORMAT} ${kind} ${owner} ${length}\n`).update(payload).digest('hex');
}

/** The bytes of a state file (header + payload). */
export function encodeStateFile(kind: string, payload: Buffer | string, owner?: string): Buffer {
  if (!KIND_RE.test(kind)) throw new Error(`bad state file kind "${kind}"`);
  if (owner !== undefined && !OWNER_RE.test(owner)) throw new Error(`bad state file owner "${owner}"`);
  const body = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
  const o = owner ?? '-';
  const header = `${STATE_MAGIC} ${STATE_FORMAT} ${kind} ${o} ${body.length} ${digest(kind, o, body.length, body)}\n`;
  return Buffer.concat([Buffer.from(header, 'latin1'), body]);
}

/**
 * Checks bytes read from a state file. `legacy`: a file without the header (written before this
 * format) is returned as is for the caller's own parser to validate.
 */
export function decodeStateFile(buf: Buffer, kind: string, opts: { legacy?: boolean } = {}): StateRead {
  if (buf.length === 0) return { status: 'damaged', problem: 'empty file (truncated to 0 bytes)' };
  const magic = Buffer.from(`${STATE_MAGIC} `, 'latin1');
  if (buf.length < magic.length || !buf.subarray(0, magic.length).equals(magic)) {
    const n = Math.min(buf.length, magic.length);
    if (opts.legacy && !magic.subarray(0, n).equals(buf.subarray(0, n)) && !looksLikeHeader(buf)) {
      return { status: 'ok', payload: buf, legacy: true };
    }
    return { status: 'damaged', problem: buf.length < magic.length ? `truncated: ${buf.length} bytes, not even a header` : 'not a weave state file (no header): garbage or overwritten' };
  }
  const nl = buf.indexOf(0x0a);
  if (nl < 0 || nl > MAX_HEADER) return { status: 'damaged', problem: nl < 0 && buf.length <= MAX_HEADER ? `truncated inside the header (${buf.length} bytes)` : 'header is garbage' };
  const f = buf.subarray(0, nl).toString('latin1').split(' ');
  if (f.length !== 6) return { status: 'damaged', problem: 'header is garbage' };
  const [, ver, k, owner, lenS, sum] = f;
  if (!/^\d{1,4}$/.test(ver)) return { status: 'damaged', problem: 'header is garbage (format version)' };
  if (Number(ver) !== STATE_FORMAT) return { status: 'damaged', problem: `format version ${ver} is not supported (this weave reads ${STATE_FORMAT})` };
  if (!KIND_RE.test(k) || !(owner === '-' || OWNER_RE.test(owner)) || !/^\d{1,10}$/.test(lenS) || !/^[0-9a-f]{64}$/.test(sum)) {
    return { status: 'damaged', problem: 'header is garbage' };
  }
  const payload = buf.subarray(nl + 1);
  const len = Number(lenS);
  if (payload.length < len) return { status: 'damaged', problem: `truncated: ${payload.length} of ${len} payload bytes` };
  if (payload.length > len) return { status: 'damaged', problem: `${payload.length - len} unexpected bytes after the ${len}-byte payload` };
  if (digest(k, owner, len, payload) !== sum) return { status: 'damaged', problem: 'checksum mismatch (bytes changed on disk)' };
  if (k !== kind) return { status: 'damaged', problem: `holds "${k}" state, expected "${kind}" (a file copied under the wrong name?)` };
  return { status: 'ok', payload, owner: owner === '-' ? undefined : owner, legacy: false };
}

/**
 * The problem to report when a payload that passed (or, for an old-format file, skipped) the envelope
 * check cannot be parsed by its owner: garbage when there was no header, unusable content otherwise.
 */
export function contentProblem(legacy: boolean, err: unknown): string {
  const why = (err instanceof Error ? err.message : String(err)).replace(/[^\x20-\x7e]+/g, '?').slice(0, 160);
  return legacy ? `garbage or overwritten: no weave state header, and not readable in the old format either (${why})` : `unusable content: ${why}`;
}

/** A first line ending in a SHA-256 like our header: a damaged header, never an old-format file. */
function looksLikeHeader(buf: Buffer): boolean {
  const nl = buf.indexOf(0x0a);
  if (nl < 0 || nl > MAX_HEADER) return false;
  return / [0-9a-f]{64}$/.test(buf.subarray(0, nl).toString('latin1'));
}

/** Reads and checks a state file. I/O errors other than ENOENT are reported as damage (named, not thrown). */
export function readStateFile(file: string, kind: string, opts: { legacy?: boolean } = {}): StateRead {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return { status: 'missing' };
    return { status: 'damaged', problem: `unreadable: ${(e as Error).message}` };
  }
  return decodeStateFile(buf, kind, opts);
}

/** fsync of a directory, so a rename in it is durable. */
export function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Writes bytes to file atomically and durably: a temp file, fsync, rename, fsync of the directory. */
export function writeFileAtomic(file: string, bytes: Buffer, opts: Pick<WriteOptions, 'mode' | 'beforeRename'> = {}): void {
  const dir = path.dirname(file);
  const tmp = file + TMP_SUFFIX;
  const fd = fs.openSync(tmp, 'w', opts.mode ?? 0o600);
  try {
    let off = 0;
    while (off < bytes.length) off += fs.writeSync(fd, bytes, off, bytes.length - off);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  opts.beforeRename?.();
  fs.renameSync(tmp, file);
  fsyncDir(dir);
}

/** Writes a state file atomically and durably (see the header of this file). Throws on I/O errors (a missing directory too). */
export function writeStateFile(file: string, kind: string, payload: Buffer | string, opts: WriteOptions = {}): void {
  writeFileAtomic(file, encodeStateFile(kind, payload, opts.owner), opts);
}

/** ISO time without colons (file-name safe). */
function stamp(now: number): string {
  return new Date(now).toISOString().replace(/:/g, '').replace(/\.\d+Z$/, 'Z');
}

/**
 * Moves a damaged file (or directory) aside as <file>.damaged-<time>, keeping it for a human.
 * Returns the new path.
 */
export function moveAside(file: string, now = Date.now()): string {
  let to = `${file}${DAMAGED_SUFFIX}${stamp(now)}`;
  for (let i = 1; fs.existsSync(to); i++) to = `${file}${DAMAGED_SUFFIX}${stamp(now)}-${i}`;
  try {
    fs.renameSync(file, to);
  } catch (e) {
    throw new WeaveError('ESTATE', `${file} is damaged and cannot be moved aside (${(e as Error).message}): move or remove it by hand, or run "weave reset"`, { file }, { cause: e });
  }
  try {
    fsyncDir(path.dirname(file));
  } catch {
    // the rename happened; durability of the move is best effort
  }
  return to;
}

/** A file name (or a path below the data dir) as status shows it. */
export function relName(dataDir: string, file: string): string {
  const r = path.relative(dataDir, file);
  return r && !r.startsWith('..') ? r : file;
}

/**
 * Owners (peer names) recorded in the state files of a data dir and its direct subdirectories,
 * skipping temp files, files moved aside and `exclude` (relative names). Damaged files say nothing.
 */
export function ownersInDataDir(dataDir: string, exclude: string[] = []): Array<{ file: string; owner: string }> {
  const out: Array<{ file: string; owner: string }> = [];
  const visit = (dir: string, depth: number): void => {
    let names: fs.Dirent[];
    try {
      names = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const d of names.sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const p = path.join(dir, d.name);
      const rel = relName(dataDir, p);
      if (exclude.includes(rel) || d.name.endsWith(TMP_SUFFIX) || d.name.includes(DAMAGED_SUFFIX)) continue;
      if (d.isDirectory()) {
        if (depth === 0) visit(p, 1);
        continue;
      }
      if (!d.isFile()) continue;
      const owner = peekOwner(p);
      if (owner) out.push({ file: rel, owner });
    }
  };
  visit(dataDir, 0);
  return out;
}

/** The owner of a checked state file of any kind, or undefined. */
function peekOwner(file: string): string | undefined {
  let buf: Buffer;
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const head = Buffer.alloc(MAX_HEADER);
      const n = fs.readSync(fd, head, 0, MAX_HEADER, 0);
      const h = head.subarray(0, n).toString('latin1');
      const m = /^weave-state \d+ ([a-z][a-z0-9-]*) /.exec(h);
      if (!m) return undefined;
      buf = fs.readFileSync(file);
      const r = decodeStateFile(buf, m[1]);
      return r.status === 'ok' ? r.owner : undefined;
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return undefined;
  }
}

/**
 * The router report's `state` section: every recovery, and a summary `weave status` prints (one line
 * per file that was damaged or missing: the problem, what was done, where the state came from).
 */
export function stateSection(recovered: StateRecovery[]): { summary: Record<string, string | number>; recovered: StateRecovery[] } {
  const summary: Record<string, string | number> = { Files: recovered.length ? `${recovered.length} recovered` : 'all checked, none damaged' };
  for (const r of recovered) summary[r.file] = `${r.problem}: ${r.action}${r.from ? ` (from ${r.from})` : ''}`;
  return { summary, recovered };
}
