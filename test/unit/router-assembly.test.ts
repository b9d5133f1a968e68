// The router's start-up is transactional: runRouter's real step list runs over fakes, a failure is
// injected at every step in turn, and every part built before it must have been stopped, in reverse
// order, with the step's own error reaching the caller. A clean stop runs the same reverse order.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runRouter, STEPS } from '../../api/daemon';
import type { RouterConfig } from '../../api/config';
import { MemoryLogger } from '../../lib/log';
import { UsageError } from '../../lib/errors';
import { Assembly } from '../../api/assembly';

/** Anything a later step reads from an earlier part: every property is a callable fake too. */
function anything(): any {
  const f: any = new Proxy(() => f, {
    get: (_t, k) => (k === 'then' ? undefined : k === Symbol.toPrimitive ? () => 'fake' : f),
  });
  return f;
}

type StepName = keyof typeof STEPS;

/** Fake steps that log builds and stops; `failAt` throws instead of building. */
function fakeSteps(failAt: string | undefined, events: string[]) {
  const mk = (name: string) => async () => {
    if (name === failAt) throw new UsageError(`injected failure in ${name}`);
    events.push(`build ${name}`);
    return new Proxy({ name, stop: async () => { events.push(`stop ${name}`); } }, {
      get: (t: any, k) => (k in t ? t[k] : k === 'then' ? undefined : anything()),
    });
  };
  const steps: Record<string, unknown> = {};
  for (const k of Object.keys(STEPS) as StepName[]) if (k !== 'subsystems') steps[k] = mk(k);
  steps.subsystems = ['ipam', 'dns'].map((name) => ({ name, flags: { add() {}, parse: () => ({}) }, create: mk(name) }));
  return steps as Partial<typeof STEPS>;
}

const cfg = { dataDir: '/nonexistent', peers: [], resume: false, httpAddr: { host: '127.0.0.1', port: 0 }, port: 6783, password: null } as unknown as RouterConfig;

test('start-up failure at every step stops what was built, in reverse order, and rethrows the step\'s error', async () => {
  const order: string[] = [];
  await (await runRouter(cfg, { log: new MemoryLogger(), steps: fakeSteps(undefined, order), installSignalHandlers: false })).stop('test');
  const built = order.filter((e) => e.startsWith('build ')).map((e) => e.slice(6));
  assert.deepEqual(built, ['openDataDir', 'hostState', 'watchLag', 'buildWire', 'buildSleeve', 'buildOverlays', 'buildMesh', 'wireForwarding', 'buildEndpoints', 'ipam', 'dns', 'buildEvents', 'buildUi', 'restoreEndpoints', 'startRouteSync', 'trimMalloc', 'startMesh', 'passwordRotation', 'serveApi', 'pidFilePart']);
  assert.deepEqual(order.filter((e) => e.startsWith('stop ')).map((e) => e.slice(5)), [...built].reverse(), 'a clean stop runs the same reverse order');

  for (const [i, step] of built.entries()) {
    const events: string[] = [];
    const log = new MemoryLogger();
    await assert.rejects(runRouter(cfg, { log, steps: fakeSteps(step, events), installSignalHandlers: false }), (e: unknown) => {
      assert.ok(e instanceof UsageError, 'the step\'s own error type reaches the caller (the CLI exits 2 for a UsageError)');
      assert.match(e.message, new RegExp(`injected failure in ${step}`));
      return true;
    });
    const before = built.slice(0, i);
    assert.deepEqual(events, [...before.map((b) => `build ${b}`), ...[...before].reverse().map((b) => `stop ${b}`)], `failure at ${step}`);
    assert.ok(log.find((r) => r.msg === 'start-up step failed; stopping what was built'), `failure at ${step} is logged`);
  }
});

test('a part that fails to stop does not keep the others running', async () => {
  const log = new MemoryLogger();
  const a = new Assembly(log);
  const stopped: string[] = [];
  await a.add('one', () => ({ name: 'one', stop: () => { stopped.push('one'); } }));
  await a.add('two', () => ({ name: 'two', stop: () => { throw new Error('stuck'); } }));
  await a.add('three', () => ({ name: 'three', stop: async () => { stopped.push('three'); } }));
  await a.stop('test');
  assert.deepEqual(stopped, ['three', 'one']);
  assert.ok(log.find((r) => r.part === 'two' && r.msg === 'part failed to stop; continuing'));
  await assert.rejects(a.add('late', () => ({ name: 'late', stop() {} })), /stopping/);
});

test('onStep hears each start-up step as it begins (weave launch shows a slow start\'s progress)', async () => {
  const order: string[] = [];
  const steps: string[] = [];
  const h = await runRouter(cfg, { log: new MemoryLogger(), steps: fakeSteps(undefined, order), installSignalHandlers: false, onStep: (s) => steps.push(s) });
  await h.stop('test');
  assert.equal(steps.length, order.filter((e) => e.startsWith('build ')).length);
  assert.equal(steps[0], 'data dir');
  assert.ok(steps.includes('mesh start') && steps.includes('api'), steps.join(', '));
  assert.equal(steps[steps.length - 1], 'pid file');
  // a failing step is heard too: the launch names where it stuck
  const heard: string[] = [];
  await assert.rejects(runRouter(cfg, { log: new MemoryLogger(), steps: fakeSteps('buildMesh', []), installSignalHandlers: false, onStep: (s) => heard.push(s) }));
  assert.equal(heard[heard.length - 1], 'mesh');
});
