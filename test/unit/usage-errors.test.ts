// A user's mistake is a UsageError (HTTP 400, exit 2), and an error re-raised keeps what it wraps as
// cause instead of only its message.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { UsageError } from '../../lib/errors';
import { boxModeFromEnv } from '../../router/boxes';
import { threadsFromEnv } from '../../router/sleeve';
import { resolveNetns } from '../../host/netns';
import { parseAddress } from '../../mesh/tcp-transport';
import { loadPassword, parseTrustedSubnets } from '../../api/config';

test('environment and address mistakes are UsageErrors', () => {
  assert.throws(() => boxModeFromEnv('fast'), (e: unknown) => e instanceof UsageError && /WEAVE_SLEEVE_CRYPTO/.test(e.message));
  assert.deepEqual([undefined, '', '1', '2'].map(threadsFromEnv), [1, 1, 1, 2]);
  assert.throws(() => threadsFromEnv('3'), (e: unknown) => e instanceof UsageError && /WEAVE_SLEEVE_THREADS must be 1 or 2/.test(e.message));
  // was WeaveError('EUSAGE'), not a UsageError: the API answered 500 and the CLI exited 1
  assert.throws(() => parseAddress('peer:0'), (e: unknown) => e instanceof UsageError && /invalid peer address "peer:0"/.test(e.message));
});

test('re-raised errors keep their cause', () => {
  assert.throws(() => resolveNetns(`weave-no-such-ns-${process.pid}`), (e: unknown) => {
    assert.ok(e instanceof UsageError);
    assert.equal((e.cause as NodeJS.ErrnoException).code, 'ENOENT');
    return true;
  });
  assert.throws(() => loadPassword(`/nonexistent/weave-password-${process.pid}`), (e: unknown) => e instanceof UsageError && (e.cause as NodeJS.ErrnoException).code === 'ENOENT');
  assert.throws(() => parseTrustedSubnets('10.0.0.0/8,nope'), (e: unknown) => e instanceof UsageError && e.cause instanceof UsageError && /--trusted-subnets/.test(e.message));
});
