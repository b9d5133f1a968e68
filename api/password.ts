// Password rotation's glue (the scheme is at the top of mesh/rotation.ts): the router re-reads
// --password-file on SIGHUP or POST /password/rotate (`weave password-rotate`) and starts accepting
// the new password next to the old one for a window; `--finish` (or the window's end) drops the old.
// GET /password shows the state; `weave report` shows it under router.passwordRotation, and each
// connection's passwordGeneration.
import type { Command } from 'commander';
import type { ApiClient } from './client';
import { loadPassword } from './config';
import type { Part } from '../lib/subsystem';
import { bool, num } from '../lib/validate';
import { UsageError, errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';
import type { PasswordRing, RotationStatus } from '../mesh/rotation';

export interface PasswordRotationOptions {
  passwords: PasswordRing;
  /** --password-file; undefined when the password came from WEAVE_PASSWORD (nothing to re-read) */
  passwordFile?: string;
  log: Logger;
  /** handle SIGHUP (default true) */
  signals?: boolean;
}

function noFile(): UsageError {
  return new UsageError('the router did not read its password from a file (WEAVE_PASSWORD or none): there is nothing to re-read; start it with --password-file to rotate without downtime');
}

export interface PasswordRotationPart extends Part {
  /** re-reads the password file and starts a window (tests, SIGHUP) */
  reload(windowMs?: number, source?: string): RotationStatus;
}

/** The router part: GET /password and POST /password/rotate, and SIGHUP while it runs. */
export function passwordRotation(o: PasswordRotationOptions): PasswordRotationPart {
  const reload = (windowMs?: number, source = 'api'): RotationStatus => {
    if (!o.passwordFile) throw noFile();
    return o.passwords.rotate(loadPassword(o.passwordFile, {}) as Buffer, { windowMs, source });
  };
  const onHup = (): void => {
    if (!o.passwordFile) {
      o.log.info({}, 'SIGHUP: the password did not come from --password-file: nothing to re-read');
      return;
    }
    try {
      reload(undefined, 'SIGHUP');
    } catch (e) {
      o.log.error({ err: errMsg(e), file: o.passwordFile }, 'SIGHUP: the password was not rotated');
    }
  };
  if (o.signals !== false) process.on('SIGHUP', onHup);
  return {
    name: 'password rotation',
    reload,
    stop: () => { process.off('SIGHUP', onHup); },
    apiRoutes: () => [
      { method: 'GET', path: '/password', handler: () => o.passwords.status() },
      {
        method: 'POST', path: '/password/rotate', handler: ({ body }) => {
          const finish = bool(body, 'finish');
          const window = body.window === undefined ? undefined : num(body, 'window', { min: 1, max: 365 * 86_400, integer: false });
          if (finish && window !== undefined) throw new UsageError('give either "finish" or "window", not both');
          return finish ? o.passwords.finish() : reload(window === undefined ? undefined : window * 1000);
        },
      },
    ],
  };
}

/** One line for people: what the router accepts now. */
export function describeRotation(s: RotationStatus): string {
  if (s.state === 'off') return 'no password is set: the router does not encrypt';
  if (s.state === 'rotating') {
    const end = s.windowEndsAt === undefined ? '' : ` until ${new Date(s.windowEndsAt).toISOString()}`;
    return `rotating to password generation ${s.generation}: accepting generations ${s.accepting.join(' and ')}${end} (weave password-rotate --finish ends it now)`;
  }
  return `password generation ${s.generation} only${s.finishedAt !== undefined ? ` (rotation finished ${new Date(s.finishedAt).toISOString()})` : ''}`;
}

export function addPasswordCommands(program: Command, client: (opts: { httpAddr?: string }) => ApiClient): void {
  program.command('password-rotate')
    .description('re-read the router\'s --password-file and accept the new password next to the old one for a window; --finish drops the old one now')
    .option('--finish', 'end the rotation window now: only the new password is accepted, connections still on the old one close')
    .option('--window <seconds>', 'how long the old password stays accepted (default 600)')
    .option('--http-addr <host:port>', 'HTTP API address')
    .action(async (o: { finish?: boolean; window?: string; httpAddr?: string }) => {
      let window: number | undefined;
      if (o.window !== undefined) {
        window = Number(o.window);
        if (!Number.isFinite(window) || window <= 0) throw new UsageError(`invalid --window "${o.window}": expected seconds > 0`);
      }
      if (o.finish && window !== undefined) throw new UsageError('give either --finish or --window, not both');
      const body = o.finish ? { finish: true } : window === undefined ? {} : { window };
      const s = await client(o).request<RotationStatus>('POST', '/password/rotate', body);
      process.stdout.write(`${describeRotation(s)}\n`);
    });
}
