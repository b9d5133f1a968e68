// Structured logging: one pino root per process, a child per component ({component: 'mesh'} ...).
// Components take a Logger in their options; tests hand in silentLogger() or a capturing logger.
import * as fs from 'fs';
import pino from 'pino';
import { RotatingDestination } from './log-file';

export type Level = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';

export interface Logger {
  trace(obj: object | string, msg?: string): void;
  debug(obj: object | string, msg?: string): void;
  info(obj: object | string, msg?: string): void;
  warn(obj: object | string, msg?: string): void;
  error(obj: object | string, msg?: string): void;
  child(bindings: Record<string, unknown>): Logger;
  /** what child() calls have bound so far (pino's bindings()); absent on loggers that bind nothing */
  bindings?(): Record<string, unknown>;
}

/**
 * A child's bindings minus `component` when the parent already names one. A line carries one
 * component: the composition root scopes each part's logger (componentLogger(root, 'sleeve')) and the
 * part binds its own name too (so it is named when built with an unscoped logger, as in tests); the
 * first binding wins, and sub-parts (the sleeve's koffi I/O, the DNS record store) log under their
 * owner's name. pino would otherwise write the key once per binding ("component":"sleeve" twice).
 */
function withoutRebind(parent: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  if (!('component' in b) || parent.component === undefined) return b;
  const { component: _dropped, ...rest } = b;
  return rest;
}

/** pino behind the Logger interface, so child() can keep one component per line. */
class PinoLogger implements Logger {
  constructor(private readonly p: pino.Logger) {}
  trace(o: object | string, m?: string): void { if (m === undefined) this.p.trace(o); else this.p.trace(o, m); }
  debug(o: object | string, m?: string): void { if (m === undefined) this.p.debug(o); else this.p.debug(o, m); }
  info(o: object | string, m?: string): void { if (m === undefined) this.p.info(o); else this.p.info(o, m); }
  warn(o: object | string, m?: string): void { if (m === undefined) this.p.warn(o); else this.p.warn(o, m); }
  error(o: object | string, m?: string): void { if (m === undefined) this.p.error(o); else this.p.error(o, m); }
  child(b: Record<string, unknown>): Logger { return new PinoLogger(this.p.child(withoutRebind(this.p.bindings(), b))); }
  bindings(): Record<string, unknown> { return this.p.bindings(); }
}

/**
 * The process's root logger: JSON lines to stdout (or destination), or appended to `file` and rotated
 * there by size (lib/log-file.ts: `weave launch` runs the router with --log-file <dataDir>/weave.log).
 */
export function rootLogger(opts: { level?: Level; destination?: string | number; file?: { path: string; maxBytes?: number } } = {}): Logger {
  const base = { level: opts.level ?? 'info', base: { pid: process.pid } };
  if (opts.file) {
    const fd = fs.openSync(opts.file.path, 'a', 0o600);
    return new PinoLogger(pino(base, new RotatingDestination(fd, opts.file.path, opts.file.maxBytes)));
  }
  const dest = opts.destination === undefined ? 1 : opts.destination;
  return new PinoLogger(pino(base, pino.destination({ dest, sync: true })));
}

/** parent scoped to component (unless parent already names one: see withoutRebind). */
export function componentLogger(parent: Logger, component: string, extra: Record<string, unknown> = {}): Logger {
  return parent.child({ component, ...extra });
}

/** A logger that keeps records in memory: tests assert on what was logged. */
export class MemoryLogger implements Logger {
  readonly records: Array<Record<string, unknown>>;
  private readonly bound: Record<string, unknown>;
  constructor(records: Array<Record<string, unknown>> = [], bindings: Record<string, unknown> = {}) {
    this.records = records;
    this.bound = bindings;
  }
  private rec(level: string, obj: object | string, msg?: string): void {
    const base = typeof obj === 'string' ? { msg: obj } : { ...obj, msg };
    this.records.push({ level, ...this.bound, ...base });
  }
  trace(o: object | string, m?: string): void { this.rec('trace', o, m); }
  debug(o: object | string, m?: string): void { this.rec('debug', o, m); }
  info(o: object | string, m?: string): void { this.rec('info', o, m); }
  warn(o: object | string, m?: string): void { this.rec('warn', o, m); }
  error(o: object | string, m?: string): void { this.rec('error', o, m); }
  child(b: Record<string, unknown>): Logger { return new MemoryLogger(this.records, { ...this.bound, ...withoutRebind(this.bound, b) }); }
  bindings(): Record<string, unknown> { return { ...this.bound }; }
  find(pred: (r: Record<string, unknown>) => boolean): Record<string, unknown> | undefined { return this.records.find(pred); }
}

export function silentLogger(): Logger {
  const l: Logger = { trace() {}, debug() {}, info() {}, warn() {}, error() {}, child: () => l };
  return l;
}
