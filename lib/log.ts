// Structured logging: one pino root per process, a child per component ({component: 'mesh'} ...).
// Components take a Logger in their options; tests hand in silentLogger() or a capturing logger.
import pino from 'pino';

export type Level = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';

export interface Logger {
  trace(obj: object | string, msg?: string): void;
  debug(obj: object | string, msg?: string): void;
  info(obj: object | string, msg?: string): void;
  warn(obj: object | string, msg?: string): void;
  error(obj: object | string, msg?: string): void;
  child(bindings: Record<string, unknown>): Logger;
}

export function rootLogger(opts: { level?: Level; destination?: string | number } = {}): Logger {
  const dest = opts.destination === undefined ? 1 : opts.destination;
  return pino({ level: opts.level ?? 'info', base: { pid: process.pid } }, pino.destination({ dest, sync: true })) as unknown as Logger;
}

export function componentLogger(root: Logger, component: string, extra: Record<string, unknown> = {}): Logger {
  return root.child({ component, ...extra });
}

/** A logger that keeps records in memory: tests assert on what was logged. */
export class MemoryLogger implements Logger {
  readonly records: Array<Record<string, unknown>>;
  private readonly bindings: Record<string, unknown>;
  constructor(records: Array<Record<string, unknown>> = [], bindings: Record<string, unknown> = {}) {
    this.records = records;
    this.bindings = bindings;
  }
  private rec(level: string, obj: object | string, msg?: string): void {
    const base = typeof obj === 'string' ? { msg: obj } : { ...obj, msg };
    this.records.push({ level, ...this.bindings, ...base });
  }
  trace(o: object | string, m?: string): void { this.rec('trace', o, m); }
  debug(o: object | string, m?: string): void { this.rec('debug', o, m); }
  info(o: object | string, m?: string): void { this.rec('info', o, m); }
  warn(o: object | string, m?: string): void { this.rec('warn', o, m); }
  error(o: object | string, m?: string): void { this.rec('error', o, m); }
  child(b: Record<string, unknown>): Logger { return new MemoryLogger(this.records, { ...this.bindings, ...b }); }
  find(pred: (r: Record<string, unknown>) => boolean): Record<string, unknown> | undefined { return this.records.find(pred); }
}

export function silentLogger(): Logger {
  const l: Logger = { trace() {}, debug() {}, info() {}, warn() {}, error() {}, child: () => l };
  return l;
}
