// Host side of the encrypted fast datapath test: this kernel has no ESP, so the real router's encrypted
// fastdp can only be checked in a UML guest (test/vm/guest/fastdp.guest.ts under a nested node --test).
// Fails loudly when the guest reports nothing: runInVm rejects when there is no status, and a status
// without a TAP summary fails here.
import { test } from 'node:test';
import * as path from 'node:path';
import { DEFAULT_MODULES, runGuestTests } from './runner';
import { rootLogger } from '../../lib/log';

test('encrypted fastdp: two real routers with a password inside the UML guest (ESP on the wire, rekey, reset)', { timeout: 560_000 }, async (t) => {
  const r = await runGuestTests(path.join(__dirname, 'guest', 'fastdp.guest.js'), 1, {
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
});
