// Host side of the kernel IPsec tests: this kernel has no ESP, so the real checks run in a UML guest
// (test/vm/guest/ipsec.guest.ts under a nested node --test). Fails loudly when the guest reports
// nothing: runInVm rejects when there is no status, and a status without a TAP summary fails here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runInVm } from './runner';
import { rootLogger } from '../../mesh/log';

const GUEST_TESTS = 2;

test('kernel IPsec: ESP over VXLAN with ipsec/ keys and xfrm, inside the UML guest', { timeout: 300_000 }, async (t) => {
  const guest = path.join(__dirname, 'guest', 'ipsec.guest.js');
  assert.ok(fs.existsSync(guest), `compiled guest test missing: ${guest}`);
  const r = await runInVm([process.execPath, '--test', '--test-reporter=tap', '--enable-source-maps', guest], {
    timeoutMs: 240_000,
    autoload: false, // the default preload covers ESP, GCM, VXLAN, veth; saves ~20 modprobe runs
    log: rootLogger({ level: 'warn', destination: 2 }),
  });
  t.diagnostic(`UML ${r.kernel}: boot-to-command ${r.bootMs} ms, total ${r.totalMs} ms`);
  const pass = /^# pass (\d+)$/m.exec(r.output);
  const fail = /^# fail (\d+)$/m.exec(r.output);
  assert.ok(pass && fail, `the guest's node --test printed no summary (exit ${r.code}):\n${r.output}`);
  assert.equal(r.code, 0, `guest tests failed:\n${r.output}`);
  assert.equal(Number(fail[1]), 0, r.output);
  assert.equal(Number(pass[1]), GUEST_TESTS, `expected ${GUEST_TESTS} passing guest tests:\n${r.output}`);
});
