// RouteReconciler on a real kernel (a lab host namespace): it heals a route deleted by hand within one
// reconcile, follows setDesired through its debounce, and never touches routes of another protocol.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Lab } from '../lab/lab';
import { run, waitFor } from '../lab/exec';
import { RouteReconciler } from '../../host/routes';
import { HostError, ipBatch, ipJson } from '../../host/ip';
import { realClock } from '../../lib/clock';
import { MemoryLogger } from '../../lib/log';

test('route reconciler: heal, change, remove, foreign routes untouched', async () => {
  const lab = await Lab.create();
  try {
    const h = await lab.addHost('h1');
    const ctx = { netns: h.ns };
    await ipBatch(ctx, ['link add rt0 type veth peer name rt1', 'link set rt0 up', 'link set rt1 up', 'addr add 10.1.0.1/24 dev rt0']);
    // someone else's routes: same prefix as one of ours, and a neighbour
    await ipBatch(ctx, ['route add 10.50.0.0/16 dev rt1 proto static', 'route add 10.51.0.0/16 dev rt0 proto 77']);
    const foreign = async () => JSON.stringify(await ipJson(ctx, ['route', 'show', 'proto', 'static']))
      + JSON.stringify(await ipJson(ctx, ['route', 'show', 'proto', '77']));
    const foreignBefore = await foreign();

    const log = new MemoryLogger();
    const rr = new RouteReconciler({ ctx, log, clock: realClock, protocol: 0xb4 });
    rr.setDesired('endpoints', [{ dst: '10.32.0.2/32', dev: 'rt0' }, { dst: '10.32.0.3/32', dev: 'rt0', src: '10.1.0.1' }]);
    rr.setDesired('sleeve', [{ dst: '10.40.0.0/16', dev: 'rt1', via: '10.1.0.9', onlink: true, mtu: 1376 }]);
    assert.deepEqual(await rr.reconcile(), { added: 3, removed: 0, changed: 0 });
    const ours = () => ipJson<any[]>(ctx, ['route', 'show', 'proto', '180']);
    assert.deepEqual((await ours()).map((r) => r.dst).sort(), ['10.32.0.2', '10.32.0.3', '10.40.0.0/16']);
    assert.deepEqual(await rr.reconcile(), { added: 0, removed: 0, changed: 0 }, 'a second pass finds nothing to do');

    // deleted by hand -> back after one reconcile; changed by hand -> restored; stray of ours -> removed
    await run(['ip', '-n', h.ns, 'route', 'del', '10.32.0.2/32']);
    await run(['ip', '-n', h.ns, 'route', 'replace', '10.32.0.3/32', 'dev', 'rt1', 'proto', '180']);
    await run(['ip', '-n', h.ns, 'route', 'add', '10.60.0.0/16', 'dev', 'rt0', 'proto', '180']);
    assert.deepEqual(await rr.reconcile(), { added: 1, removed: 1, changed: 1 });
    const now = await ours();
    assert.deepEqual(now.map((r) => r.dst).sort(), ['10.32.0.2', '10.32.0.3', '10.40.0.0/16']);
    const r3 = now.find((r) => r.dst === '10.32.0.3');
    assert.equal(r3.dev, 'rt0');
    assert.equal(r3.prefsrc, '10.1.0.1');
    assert.equal(now.find((r) => r.dst === '10.40.0.0/16').metrics[0].mtu, 1376);

    // a desired prefix held by a foreign route: ours cannot be added, the foreign one is left alone,
    // the rest of the batch still applies, and the failure is logged and counted
    rr.setDesired('sleeve', [{ dst: '10.50.0.0/16', dev: 'rt0' }, { dst: '10.41.0.0/16', dev: 'rt0' }]);
    await assert.rejects(rr.reconcile(), (e: unknown) => e instanceof HostError && /File exists/.test(e.stderr));
    assert.ok((await ours()).some((r) => r.dst === '10.41.0.0/16'));
    assert.equal(rr.stats().errors, 1);
    assert.ok(log.find((r) => r.msg === 'route reconcile failed (will retry on the next change or tick)'));
    assert.equal(await foreign(), foreignBefore, 'routes of other protocols untouched');

    // setDesired alone (no explicit reconcile) converges through the debounce
    rr.setDesired('sleeve', []);
    await waitFor('sleeve routes to be removed', async () => !(await ours()).some((r) => r.dst === '10.41.0.0/16'), { timeoutMs: 3000, intervalMs: 20 });

    // the timer heals without anyone calling reconcile
    rr.start(50);
    try {
      await run(['ip', '-n', h.ns, 'route', 'flush', 'proto', '180']);
      await waitFor('flushed routes to return', async () => (await ours()).length === 2, { timeoutMs: 3000, intervalMs: 20 });
    } finally {
      rr.stop();
    }
    rr.setDesired('endpoints', []);
    await rr.reconcile();
    assert.deepEqual(await ours(), []);
    assert.equal(await foreign(), foreignBefore, 'routes of other protocols untouched');
  } finally {
    await lab.cleanup();
  }
});
