// Typed errors with context. `code` is stable (tests and status match on it); `message` is for people.

export class WeaveError extends Error {
  readonly code: string;
  readonly context: Record<string, unknown>;
  constructor(code: string, message: string, context: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'WeaveError';
    this.code = code;
    this.context = context;
  }
}

/** Malformed or unexpected bytes from a peer: fatal for that connection only. */
export class ProtocolError extends WeaveError {
  constructor(message: string, context: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super('EPROTO', message, context, options);
    this.name = 'ProtocolError';
  }
}

/** The peer was refused for a reason an operator must see (password, encryption, name collision ...). */
export class RefusedError extends WeaveError {
  constructor(code: string, message: string, context: Record<string, unknown> = {}) {
    super(code, message, context);
    this.name = 'RefusedError';
  }
}

/** Bad input from a user (CLI flag, API body): the message says what to fix. */
export class UsageError extends WeaveError {
  constructor(message: string, context: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super('EUSAGE', message, context, options);
    this.name = 'UsageError';
  }
}

export function errMsg(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * Names a decoded value (a peer's message, a state file, a request body) for an error message
 * without calling any of its methods: a decoded map may carry "toString"/"valueOf" keys holding data,
 * which String() and template literals would call (and throw on), and a string may be huge.
 */
export function describeValue(x: unknown): string {
  if (typeof x === 'number' || typeof x === 'boolean' || typeof x === 'bigint') return String(x);
  if (typeof x === 'string') return JSON.stringify(x.slice(0, 40)) + (x.length > 40 ? `...(${x.length} characters)` : '');
  if (x === null) return 'null';
  if (x === undefined) return 'nothing';
  if (x instanceof Uint8Array) return `${x.length} bytes`;
  if (Array.isArray(x)) return `a list of ${x.length}`;
  return typeof x === 'object' ? 'a map' : typeof x;
}
