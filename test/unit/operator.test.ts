// weave ps [CONTAINER] (names, not inodes; which one matches), weave status --help's views, weave logs' text.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { logText, psMatches, psName, statusViewHelp, type PsEndpoint } from '../../api/operator';
import { startMarker } from '../../lib/log-file';

const named = (key: string): string | undefined => (key === '4:200' ? 'web-ns' : undefined);
const byName: PsEndpoint = { netns: 'c1', path: '/var/run/netns/c1', key: '4:100', addresses: ['10.32.0.5/12'], name: 'web.weave.local.' };
const byPid: PsEndpoint = { netns: '1234', path: '/proc/1234/ns/net', key: '4:200', addresses: ['10.32.0.6/12'] };
const unnamed: PsEndpoint = { netns: '/proc/999/ns/net', path: '/proc/999/ns/net', key: '4:300', addresses: ['10.32.0.7/12'], pod: { containerId: 'abcdef0123456789', namespace: 'default', name: 'nginx' } };

test('ps shows a namespace by its ip-netns name where it has one, not by inode or PID', () => {
  assert.equal(psName(byName, named), 'c1');
  assert.equal(psName(byPid, named), 'web-ns', 'attached by PID, but the namespace has a name');
  assert.equal(psName(unnamed, named), '/proc/999/ns/net');
});

test('ps CONTAINER matches a name, PID or path, address, DNS name or pod', () => {
  const keyOf = (q: string): string | undefined => ({ '1234': '4:200', '/proc/555/ns/net': '4:100' } as Record<string, string>)[q];
  const m = (e: PsEndpoint, q: string): boolean => psMatches(e, q, named, keyOf);
  assert.ok(m(byName, 'c1') && m(byName, '10.32.0.5') && m(byName, '10.32.0.5/12') && m(byName, 'web') && m(byName, 'web.weave.local.'));
  assert.ok(m(byName, '/proc/555/ns/net'), 'another path to the same namespace');
  assert.ok(m(byPid, 'web-ns') && m(byPid, '1234'));
  assert.ok(m(unnamed, 'default/nginx') && m(unnamed, 'abcdef012345') && m(unnamed, 'nginx'));
  assert.ok(!m(byName, 'c2') && !m(byName, '10.32.0.6') && !m(unnamed, 'abc') && !m(byPid, '999'));
});

test('status --help lists every view it accepts, with what it shows', () => {
  const h = statusViewHelp(['peers', 'connections', 'targets', 'ipam', 'dns', 'cni', 'newview']);
  for (const v of ['peers', 'connections', 'targets', 'ipam', 'dns', 'cni', 'newview', '(none)']) assert.match(h, new RegExp(`^  ${v.replace(/[()]/g, '\\$&')}(?=\\s|$)`, 'm'));
  assert.match(h, /ipam +owners of the address range/);
});

test('weave logs: rendered lines of all files oldest first; --run from the last start marker, across a rotation', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'weave-logs-'));
  try {
    const f = path.join(dir, 'weave.log');
    fs.writeFileSync(`${f}.1`, startMarker({ pid: 1, args: ['old'], version: '0.1.0', time: 0 }) + startMarker({ pid: 2, args: ['new'], version: '0.1.0', time: 1 }) + `${JSON.stringify({ level: 30, time: 2, msg: 'before rotation' })}\n`);
    fs.writeFileSync(f, `${JSON.stringify({ level: 50, time: 3, component: 'mesh', msg: 'after rotation' })}\nplain stderr line\n`);
    const run = logText([`${f}.1`, f], { run: true }).trimEnd().split('\n');
    assert.equal(run.length, 4);
    assert.match(run[0], /weave launch new/);
    assert.match(run[2], /ERROR \[mesh\] after rotation$/);
    assert.equal(run[3], 'plain stderr line');
    assert.equal(logText([`${f}.1`, f], { lines: 1, json: true }), 'plain stderr line\n');
    assert.equal(logText([path.join(dir, 'none')], {}), '', 'a missing file is no lines');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
