// errno numbers reach logs and error codes as names (EAGAIN, not 11 or "E11").
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryLogger } from '../../lib/log';
import { errnoName, withErrnoName } from '../../lib/errno';
import { WeaveError } from '../../lib/errors';
import { loadFallbackIo } from '../../router/fallback-io';
import { NativeUdp } from '../../router/udp';
import { NativeTun } from '../../router/tun';
import type { TunIo } from '../../router/native';

test('errno numbers become names', () => {
  assert.equal(errnoName(11), 'EAGAIN');
  assert.equal(errnoName(-98), 'EADDRINUSE');
  assert.equal(errnoName(90), 'EMSGSIZE');
  assert.equal(errnoName(99999), 'errno 99999');
  const e = withErrnoName(Object.assign(new Error('bind: Address already in use'), { errno: 98, code: 'E98' }));
  assert.equal(e.code, 'EADDRINUSE');
  const named = withErrnoName(Object.assign(new Error('x'), { errno: 98, code: 'ECUSTOM' }));
  assert.equal(named.code, 'ECUSTOM', 'a code that is already a name is kept');
});

test('the koffi fallback reports errno names, not numbers', () => {
  const fn = (decl: string) => Object.assign((..._a: unknown[]) => (decl.startsWith('int open') ? -1 : 0), { async() {} });
  const fakeKoffi = { load: () => ({ func: fn }), errno: () => 2, address: () => 4096 };
  const io = loadFallbackIo(new MemoryLogger(), () => fakeKoffi);
  assert.throws(() => io.openTun('weave-t', false), (e: unknown) => {
    const x = e as Error & { code: string; errno: number };
    assert.equal(x.message, 'open /dev/net/tun: ENOENT');
    assert.equal(x.code, 'ENOENT');
    assert.equal(x.errno, 2);
    return true;
  });
});

test('the addon\'s "E<n>" codes are named where the sleeve re-raises them, and the cause is kept', () => {
  const addonError = () => Object.assign(new Error('bind: Address already in use'), { errno: 98, code: 'E98' });
  const io = { udpOpen: () => { throw addonError(); }, openTun: () => { throw addonError(); } } as unknown as TunIo;
  for (const f of [() => new NativeUdp(io, 0, 6783), () => new NativeTun(io, 'weave-t')]) {
    assert.throws(f, (e: unknown) => {
      assert.ok(e instanceof WeaveError);
      assert.equal(e.context.errno, 'EADDRINUSE');
      assert.equal((e.cause as { code: string }).code, 'EADDRINUSE');
      assert.match(e.message, /Address already in use/);
      return true;
    });
  }
});
