// Host side of the kernel IPsec tests: this kernel has no ESP, so the real checks run in a UML guest
// (test/vm/guest/ipsec.guest.ts under a nested node --test). Fails loudly when the guest reports
// nothing (runGuestTests).
import { test } from 'node:test';
import * as path from 'node:path';
import { runGuestTests } from './runner';
import { rootLogger } from '../../lib/log';

test('kernel IPsec: ESP over VXLAN with ipsec/ keys and xfrm, inside the UML guest', { timeout: 300_000 }, async (t) => {
  const r = await runGuestTests(path.join(__dirname, 'guest', 'ipsec.guest.js'), 2, {
    timeoutMs: 240_000,
    autoload: false, // the default preload covers ESP, GCM, VXLAN, veth; saves ~20 modprobe runs
    log: rootLogger({ level: 'warn', destination: 2 }),
  });
  t.diagnostic(`UML ${r.kernel}: boot-to-command ${r.bootMs} ms, total ${r.totalMs} ms`);
});
