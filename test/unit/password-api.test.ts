// The password rotation glue (api/password.ts): POST /password/rotate re-reads --password-file, its
// input checks, --finish, SIGHUP, and the refusal without a file (WEAVE_PASSWORD).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ApiServer } from '../../api/http';
import { ApiClient } from '../../api/client';
import { describeRotation, passwordRotation } from '../../api/password';
import { PasswordRing } from '../../mesh/rotation';
import { realClock } from '../../lib/clock';
import { MemoryLogger } from '../../lib/log';
import { WeaveError } from '../../lib/errors';

async function setup(passwordFile: string | undefined, signals = false) {
  const log = new MemoryLogger();
  const ring = new PasswordRing({ password: Buffer.from('old'), clock: realClock, log });
  const api = new ApiServer(log);
  const part = passwordRotation({ passwords: ring, passwordFile, log, signals });
  for (const r of part.apiRoutes!()) api.add(r.method, r.path, r.handler);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'weave-pw-api-'));
  fs.chmodSync(dir, 0o755);
  await api.listenUnix(path.join(dir, 'weave.sock'));
  const client = new ApiClient({ socketPath: path.join(dir, 'weave.sock'), dataDir: dir, host: '127.0.0.1', port: 1 });
  return { ring, api, client, log, close: async () => { await part.stop(); ring.stop(); await api.close(); fs.rmSync(dir, { recursive: true, force: true }); } };
}

test('POST /password/rotate re-reads the file; bad input is a 400 saying what to fix; --finish ends the window', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'weave-pw-'));
  const file = path.join(dir, 'password');
  fs.writeFileSync(file, 'old\n');
  const s = await setup(file);
  try {
    assert.equal((await s.client.request('GET', '/password')).state, 'steady');
    assert.equal((await s.client.request('POST', '/password/rotate', {})).state, 'steady', 'same password: nothing to rotate');
    fs.writeFileSync(file, 'new\n');
    for (const [body, msg] of [[{ window: -1 }, /"window"/], [{ window: 'x' }, /"window"/], [{ finish: 'yes' }, /"finish"/], [{ finish: true, window: 5 }, /either/], [{ window: 0.5 }, /window/]] as const) {
      await assert.rejects(s.client.request('POST', '/password/rotate', body), (e: unknown) => e instanceof WeaveError && e.code === 'EUSAGE' && msg.test(e.message) && e.context.status === 400, JSON.stringify(body));
    }
    const r = await s.client.request('POST', '/password/rotate', { window: 120 });
    assert.deepEqual(r.accepting, [1, 2]);
    assert.ok(Math.abs(r.windowEndsAt - Date.now() - 120_000) < 5000);
    assert.match(describeRotation(r), /^rotating to password generation 2: accepting generations 1 and 2 until /);
    const f = await s.client.request('POST', '/password/rotate', { finish: true });
    assert.deepEqual(f.accepting, [2]);
    assert.match(describeRotation(f), /^password generation 2 only/);
    fs.writeFileSync(file, '');
    await assert.rejects(s.client.request('POST', '/password/rotate', {}), (e: unknown) => e instanceof WeaveError && /is empty/.test(e.message));
  } finally {
    await s.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('without --password-file there is nothing to re-read: the API refuses, SIGHUP logs it', async () => {
  const s = await setup(undefined, true);
  try {
    await assert.rejects(s.client.request('POST', '/password/rotate', {}), (e: unknown) => e instanceof WeaveError && e.code === 'EUSAGE' && /--password-file/.test(e.message));
    process.emit('SIGHUP', 'SIGHUP');
    assert.ok(s.log.find((r) => /nothing to re-read/.test(String(r.msg))));
    assert.equal(s.ring.status().state, 'steady');
  } finally {
    await s.close();
  }
});

test('SIGHUP rotates from the file; the handler goes when the router stops', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'weave-pw-'));
  const file = path.join(dir, 'password');
  fs.writeFileSync(file, 'new\n');
  const before = process.listenerCount('SIGHUP');
  const s = await setup(file, true);
  try {
    assert.equal(process.listenerCount('SIGHUP'), before + 1);
    process.emit('SIGHUP', 'SIGHUP');
    assert.deepEqual(s.ring.status().accepting, [1, 2]);
  } finally {
    await s.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  await new Promise((r) => setImmediate(r));
  assert.equal(process.listenerCount('SIGHUP'), before);
});
