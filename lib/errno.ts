// errno numbers <-> names. Numbers come from the native addon, koffi and the data path's per-datagram
// error slots; logs and error codes carry the name (EAGAIN, not 11) so they read the same as strace
// and man pages, and the name does not depend on the architecture's numbering.
import { constants } from 'os';

/** The platform's errno numbers by name (os.constants.errno): errno.EAGAIN, errno.EMSGSIZE ... */
export const errno = constants.errno;

// First name wins where two share a number (EAGAIN before EWOULDBLOCK in Node's table).
const NAMES = new Map<number, string>();
for (const [name, n] of Object.entries(constants.errno)) if (!NAMES.has(n)) NAMES.set(n, name);

/** "EAGAIN" for 11 (a negative libuv-style number works too); "errno N" when the platform has no name. */
export function errnoName(n: number): string {
  return NAMES.get(Math.abs(n)) ?? `errno ${n}`;
}

/**
 * An error from a native call (the addon's throw_errno, koffi) with its code set to the errno name:
 * the addon writes "E<number>" because C has no portable errno -> name function.
 */
export function withErrnoName<T>(e: T): T {
  const x = e as { errno?: unknown; code?: unknown };
  if (x && typeof x === 'object' && typeof x.errno === 'number' && (x.code === undefined || (typeof x.code === 'string' && /^E\d+$/.test(x.code)))) {
    x.code = errnoName(x.errno);
  }
  return e;
}
