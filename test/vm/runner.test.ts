// The UML runner itself: status and output come back, the checkout is shared read-write, the guest
// runs the UML kernel with the ESP modules loaded, NODE_TEST_CONTEXT does not leak in, and a guest that
// ends without a status is an error, not a silent pass.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { runInVm, repoRoot, VmError, ensureUml } from './runner';

test('runInVm: exit status, output, shared checkout, environment, guest kernel and modules', { timeout: 240_000 }, async (t) => {
  const root = repoRoot();
  const marker = path.join(root, `.vm-marker-${randomBytes(4).toString('hex')}`);
  const kit = await ensureUml();
  const before = fs.statSync(kit.linux).mtimeMs;
  const hadCtx = process.env.NODE_TEST_CONTEXT;
  process.env.NODE_TEST_CONTEXT = hadCtx ?? 'child-v8'; // make sure there is something to strip
  try {
    const script = [
      'echo "kernel=$(uname -r)"',
      'echo "ctx=${NODE_TEST_CONTEXT-unset} extra=$WEAVE_T_EXTRA invm=$WEAVE_IN_VM uid=$(id -u) cwd=$PWD"',
      'grep -q "^esp4 " /proc/modules && grep -q "^vxlan " /proc/modules && echo modules=ok',
      'echo oops >&2',
      `echo from-guest > '${marker}'`,
      'exit 7',
    ].join('\n');
    const r = await runInVm(['bash', '-c', script], { env: { WEAVE_T_EXTRA: "it's \"quoted\" $HOME" } });
    t.diagnostic(`boot-to-command ${r.bootMs} ms, total ${r.totalMs} ms`);
    assert.equal(r.code, 7, r.output);
    assert.match(r.output, new RegExp(`^kernel=${r.kernel.replace(/\./g, '\\.')}$`, 'm'));
    assert.notEqual(r.kernel, fs.readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim(), 'the guest runs its own kernel');
    assert.match(r.output, new RegExp(`^ctx=unset extra=it's "quoted" \\$HOME invm=1 uid=0 cwd=${root}$`, 'm'));
    assert.match(r.output, /^modules=ok$/m);
    assert.match(r.output, /^oops$/m);
    assert.equal(fs.readFileSync(marker, 'utf8'), 'from-guest\n', 'writes to the shared checkout reach the host');
    assert.ok(r.bootMs > 0 && r.bootMs <= r.totalMs);
    assert.equal(fs.statSync(kit.linux).mtimeMs, before, 'the cached kernel was reused, not downloaded again');
  } finally {
    if (hadCtx === undefined) delete process.env.NODE_TEST_CONTEXT; else process.env.NODE_TEST_CONTEXT = hadCtx;
    fs.rmSync(marker, { force: true });
  }
});

test('runInVm: a guest that ends without a status is a VmError with the console', { timeout: 240_000 }, async () => {
  await assert.rejects(runInVm(['bash', '-c', 'echo going-down; echo o > /proc/sysrq-trigger; sleep 60']), (e: unknown) => {
    assert.ok(e instanceof VmError, String(e));
    assert.match(e.message, /the guest gave no result: UML exited/);
    assert.match(e.message, /going-down/, 'the command output so far is in the error');
    return true;
  });
});

test('runInVm: bad requests are refused before booting', async () => {
  await assert.rejects(runInVm([]), VmError);
  await assert.rejects(runInVm(['true'], { cwd: '/' }), /refusing to share \//);
});
