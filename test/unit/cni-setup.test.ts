// `weave setup-cni` (cni/setup.ts) into temporary dirs: the plugin and the conflist (weave-net then
// portmap) installed atomically, a second run changes nothing, a changed API address rewrites only
// the conflist, and bad input is refused before anything is written.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { UsageError, WeaveError } from '../../lib/errors';
import { CONFLIST_NAME, PLUGIN_NAME, conflist, setupCni } from '../../cni/setup';

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'weave-setup-cni-'));
}

test('setupCni installs the plugin and 10-weave.conflist, then changes nothing on a second run', () => {
  const d = tmp();
  try {
    const shim = path.join(d, 'shim');
    fs.writeFileSync(shim, 'binary v1');
    const o = { binDir: path.join(d, 'bin'), confDir: path.join(d, 'net.d'), shim };
    const r1 = setupCni(o);
    assert.equal(r1.plugin.outcome, 'installed');
    assert.equal(r1.conflist.outcome, 'installed');
    assert.equal(fs.readFileSync(path.join(o.binDir, PLUGIN_NAME), 'utf8'), 'binary v1');
    assert.equal(fs.statSync(path.join(o.binDir, PLUGIN_NAME)).mode & 0o777, 0o755);
    const conf = JSON.parse(fs.readFileSync(path.join(o.confDir, CONFLIST_NAME), 'utf8'));
    assert.deepEqual(conf, { cniVersion: '1.0.0', name: 'weave', plugins: [{ type: 'weave-net' }, { type: 'portmap', capabilities: { portMappings: true }, snat: true }] });
    const r2 = setupCni(o);
    assert.deepEqual([r2.plugin.outcome, r2.conflist.outcome], ['unchanged', 'unchanged']);
    // a new build replaces the binary; a router elsewhere rewrites only the conflist
    fs.writeFileSync(shim, 'binary v2');
    const r3 = setupCni({ ...o, socket: '/run/weave/weave.sock', api: '127.0.0.1:7784' });
    assert.deepEqual([r3.plugin.outcome, r3.conflist.outcome], ['installed', 'installed']);
    assert.deepEqual(JSON.parse(fs.readFileSync(path.join(o.confDir, CONFLIST_NAME), 'utf8')).plugins[0], { type: 'weave-net', socket: '/run/weave/weave.sock', api: '127.0.0.1:7784' });
    assert.deepEqual(fs.readdirSync(o.binDir), [PLUGIN_NAME], 'no temporary file left behind');
    assert.deepEqual(fs.readdirSync(o.confDir), [CONFLIST_NAME]);
  } finally {
    fs.rmSync(d, { recursive: true, force: true });
  }
});

test('setupCni refuses an API the plugin cannot use, and says when the plugin is not built', () => {
  const d = tmp();
  try {
    const o = { binDir: path.join(d, 'bin'), confDir: path.join(d, 'net.d'), shim: path.join(d, 'missing') };
    assert.throws(() => setupCni({ ...o, api: 'localhost:6784' }), UsageError);
    assert.throws(() => setupCni({ ...o, socket: 'relative.sock' }), UsageError);
    assert.throws(() => setupCni(o), (e: unknown) => e instanceof WeaveError && e.code === 'ENOPLUGIN' && /npm run build/.test(e.message));
    assert.equal(fs.existsSync(o.confDir), false, 'nothing written');
  } finally {
    fs.rmSync(d, { recursive: true, force: true });
  }
});

test('conflist names the API only when given', () => {
  assert.deepEqual((conflist() as { plugins: unknown[] }).plugins[0], { type: 'weave-net' });
  assert.deepEqual((conflist({ api: '127.0.0.1:1' }) as { plugins: unknown[] }).plugins[0], { type: 'weave-net', api: '127.0.0.1:1' });
});
