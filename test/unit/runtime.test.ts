// The router's node flags and environment (lib/runtime.ts) reach every way it starts: `weave launch`
// adds what the caller did not choose, and the image (image/Dockerfile's ENV, scripts/build-image.js)
// carries the same for `weave router` in the DaemonSet; and the part that trims the C heap (api/parts/memory.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as path from 'path';
import { ROUTER_ENV, ROUTER_NODE_FLAGS, routerEnv, routerImageEnv, routerNodeFlags } from '../../lib/runtime';
import { FakeClock } from '../../lib/clock';
import { silentLogger } from '../../lib/log';
import { loadTunIo } from '../../router/native';
import { MALLOC_TRIM_FIRST_MS, MALLOC_TRIM_MS, mallocTrimPart } from '../../api/parts/memory';

const ROOT = path.join(__dirname, '..', '..', '..');

test('launch adds the router flags the caller did not give, by name', () => {
  assert.deepEqual(routerNodeFlags([], undefined), [...ROUTER_NODE_FLAGS]);
  assert.deepEqual(routerNodeFlags(['--max-semi-space-size=4'], undefined).filter((f) => f.startsWith('--max-semi-space-size')), []);
  assert.deepEqual(routerNodeFlags([], '--max-semi-space-size=8 --trace-warnings').filter((f) => f.startsWith('--max-semi-space-size')), []);
  assert.ok(routerNodeFlags(['--max-semi-space-size-x'], undefined).includes('--max-semi-space-size=1'), 'a longer flag is another flag');
});

test('the router environment adds ROUTER_ENV where the caller set nothing', () => {
  const env = routerEnv({ A: '1' });
  for (const [k, v] of Object.entries(ROUTER_ENV)) assert.equal(env[k], v);
  assert.equal(env.A, '1');
  for (const k of Object.keys(ROUTER_ENV)) assert.equal(routerEnv({ [k]: 'mine' })[k], 'mine');
});

/** the ENV instructions of a Dockerfile's last stage as a map (KEY=VALUE pairs, quotes removed) */
function dockerEnv(text: string): Record<string, string> {
  const lastStage = text.slice(text.lastIndexOf('\nFROM '));
  const env: Record<string, string> = {};
  for (const line of lastStage.split('\n').filter((l) => l.startsWith('ENV '))) {
    for (const m of line.slice(4).matchAll(/(\w+)=("([^"]*)"|\S+)/g)) env[m[1]] = m[3] ?? m[2];
  }
  return env;
}

test('the image carries the router flags and environment (Dockerfile and build-image.js)', () => {
  const env = dockerEnv(fs.readFileSync(path.join(ROOT, 'image', 'Dockerfile'), 'utf8'));
  for (const [k, v] of Object.entries(routerImageEnv())) assert.equal(env[k], v, `image/Dockerfile ENV ${k}`);
  const script = fs.readFileSync(path.join(ROOT, 'scripts', 'build-image.js'), 'utf8');
  assert.match(script, /routerImageEnv\(\)/, 'build-image.js writes routerImageEnv() into the image config');
});

test('malloc trim: first once start-up is over, then every MALLOC_TRIM_MS, none after stop; a no-op part without the addon', () => {
  const clock = new FakeClock();
  let calls = 0;
  const part = mallocTrimPart({ mallocTrim: () => { calls++; return true; } }, clock, silentLogger());
  clock.advance(MALLOC_TRIM_FIRST_MS - 1);
  assert.equal(calls, 0);
  clock.advance(1);
  assert.equal(calls, 1);
  clock.advance(MALLOC_TRIM_MS * 3);
  assert.equal(calls, 4);
  void part.stop();
  clock.advance(MALLOC_TRIM_MS * 3);
  assert.equal(calls, 4);
  void mallocTrimPart(null, clock, silentLogger()).stop();
  // the real addon's call, when it loads here
  const io = loadTunIo(silentLogger());
  if (io?.mallocTrim) assert.equal(typeof io.mallocTrim(), 'boolean');
});
