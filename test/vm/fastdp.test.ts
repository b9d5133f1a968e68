// Host side of the encrypted fast datapath test: this kernel has no ESP, so the real router's encrypted
// fastdp can only be checked in a UML guest (test/vm/guest/fastdp.guest.ts under a nested node --test).
// Fails loudly when the guest reports nothing: runInVm rejects when there is no status, and a status
// without a TAP summary fails here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runInVm, DEFAULT_MODULES } from './runner';
import { rootLogger } from '../../mesh/log';

const GUEST_TESTS = 1;

test('encrypted fastdp: two real routers with a password inside the UML guest (ESP on the wire, rekey, reset)', { timeout: 560_000 }, async (t) => {
  const guest = path.join(__dirname, 'guest', 'fastdp.guest.js');
  assert.ok(fs.existsSync(guest), `compiled guest test missing: ${guest}`);
  const r = await runInVm([process.execPath, '--test', '--test-reporter=tap', '--enable-source-maps', guest], {
    timeoutMs: 480_000, // every process start costs seconds in UML on a busy host: see the guest's step times
    // the lab's underlay is a bridge with an nft table, and the router's sleeve a TUN device; no autoload
    // (saves ~20 modprobe runs for the first ESP state), so everything is preloaded
    modules: [...DEFAULT_MODULES, 'bridge', 'tun', 'nf_tables'],
    autoload: false,
    // every process start costs hundreds of ms in UML on a busy host: the CLI waits up to 4 min for the router
    env: { WEAVE_CLI_TIMEOUT: '240' },
    log: rootLogger({ level: 'warn', destination: 2 }),
  });
  t.diagnostic(`UML ${r.kernel}: boot-to-command ${r.bootMs} ms, total ${r.totalMs} ms`);
  const pass = /^# pass (\d+)$/m.exec(r.output);
  const fail = /^# fail (\d+)$/m.exec(r.output);
  assert.ok(pass && fail, `the guest's node --test printed no summary (exit ${r.code}):\n${r.output}`);
  assert.equal(r.code, 0, `guest tests failed:\n${r.output}`);
  assert.equal(Number(fail[1]), 0, r.output);
  assert.equal(Number(pass[1]), GUEST_TESTS, `expected ${GUEST_TESTS} passing guest test:\n${r.output}`);
});
