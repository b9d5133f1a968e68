// Endpoints and RouteReconciler parts that need no kernel: state file handling, option validation,
// debounce scheduling through the Clock (timers are inspected, never fired here).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Endpoints } from '../../router/endpoints';
import { RouteReconciler } from '../../host/routes';
import { FakeClock } from '../../lib/clock';
import { MemoryLogger, silentLogger } from '../../lib/log';
import { UsageError, WeaveError } from '../../lib/errors';

function tmpDir(): string { return fs.mkdtempSync(path.join(os.tmpdir(), 'weave-h4-unit-')); }

test('endpoints: a corrupt state file is moved aside and logged, the instance starts empty (restore() recovers from the kernel)', () => {
  const dir = tmpDir();
  try {
    fs.writeFileSync(path.join(dir, 'endpoints.json'), '{"version":1,"endpoints":[{"netns":3}],"exposed":[]}');
    const log = new MemoryLogger();
    const clock = new FakeClock();
    const routes = new RouteReconciler({ ctx: { netns: 'unused' }, log, clock });
    const ep = new Endpoints({ ctx: { netns: 'unused' }, log, clock, dataDir: dir, routes, mtu: () => 1400 });
    assert.deepEqual(ep.list(), []);
    assert.equal(ep.counters.errors, 1);
    assert.ok(log.find((r) => r.level === 'error' && /endpoints\.json is damaged \(garbage or overwritten: no weave state header, and not readable in the old format either \(endpoint state: endpoint\.netns must be a string\)\)/.test(String(r.msg))));
    assert.ok(fs.readdirSync(dir).some((f) => f.startsWith('endpoints.json.damaged-')));
    assert.equal(fs.existsSync(path.join(dir, 'endpoints.json')), false);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('endpoints: a valid state file is read back (served prefixes, host source)', () => {
  const dir = tmpDir();
  try {
    fs.writeFileSync(path.join(dir, 'endpoints.json'), JSON.stringify({
      version: 1,
      endpoints: [{ netns: 'c1', path: '/var/run/netns/c1', key: '4:9', ifname: 'ethwe', hostIfname: 'vethwe000000001', mac: '', addrs: ['10.32.0.9/12', '10.32.0.8/12'] }],
      exposed: [{ cidr: '10.32.0.1/12', masquerade: false }],
    }));
    const clock = new FakeClock();
    const routes = new RouteReconciler({ ctx: {}, log: silentLogger(), clock });
    const ep = new Endpoints({ ctx: {}, log: silentLogger(), clock, dataDir: dir, routes, mtu: () => 1400, overlayRange: '10.32.0.0/12' });
    assert.deepEqual(ep.servedPrefixes(), ['10.32.0.1/32', '10.32.0.8/32', '10.32.0.9/32']);
    assert.equal(ep.hostSource(), '10.32.0.1');
    assert.equal(ep.list()[0].netns, 'c1');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('endpoints: a bad overlay range is a UsageError', () => {
  const clock = new FakeClock();
  const routes = new RouteReconciler({ ctx: {}, log: silentLogger(), clock });
  assert.throws(() => new Endpoints({ ctx: {}, log: silentLogger(), clock, dataDir: path.join(os.tmpdir(), 'weave-h4-never-created'), routes, mtu: () => 1400, overlayRange: '10.32.0.0' }), UsageError);
});

test('route reconciler: setDesired validates and debounces through the clock; stop cancels', () => {
  const clock = new FakeClock();
  const rr = new RouteReconciler({ ctx: { netns: 'unused' }, log: silentLogger(), clock, debounceMs: 30 });
  assert.throws(() => rr.setDesired('x', [{ dst: 'nope', dev: 'a' }]), WeaveError);
  assert.equal(clock.pending(), 0, 'an invalid route schedules nothing');
  rr.setDesired('b', [{ dst: '10.0.0.0/8', dev: 'x' }]);
  rr.setDesired('a', [{ dst: '10.0.0.0/8', dev: 'y' }, { dst: '10.1.0.0/16', dev: 'y' }]);
  assert.equal(clock.pending(), 1, 'two changes, one debounced run');
  // union over owners; the first owner by name wins a contested prefix
  assert.deepEqual(rr.desired(), [{ dst: '10.0.0.0/8', dev: 'y' }, { dst: '10.1.0.0/16', dev: 'y' }]);
  assert.equal(rr.stats().conflicts, 1);
  rr.setDesired('a', []);
  assert.deepEqual(rr.desired(), [{ dst: '10.0.0.0/8', dev: 'x' }]);
  rr.stop();
  assert.equal(clock.pending(), 0);
  rr.setDesired('a', [{ dst: '10.2.0.0/16', dev: 'y' }]);
  assert.equal(clock.pending(), 0, 'no timers after stop()');
  assert.throws(() => rr.start(0), WeaveError);
  assert.throws(() => new RouteReconciler({ ctx: {}, log: silentLogger(), clock, protocol: 2 }), WeaveError);
});
