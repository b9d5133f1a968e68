// The mesh's state files: peer-name (a lost name is recovered from the other state files' owners, or
// start-up is refused naming the file; never a silent new identity) and targets.json (damage reported,
// start with the peers given), plus router.pid.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadIdentity } from '../../mesh/peer';
import { FileTargetStore } from '../../mesh/targets';
import { pidFileRecovery, readPidFile, removePidFile, writePidFile } from '../../lib/pid-file';
import { readStateFile, writeStateFile } from '../../lib/state-file';
import { WeaveError } from '../../lib/errors';
import { MemoryLogger } from '../../lib/log';

const N1 = '02:00:00:00:00:01';
const N2 = '02:00:00:00:00:02';

function tmpDir(): string { return fs.mkdtempSync(path.join(os.tmpdir(), 'weave-mesh-state-')); }

test('peer-name: created once, kept, an explicit name wins; an old plain file is read and rewritten checked', () => {
  const dir = tmpDir();
  try {
    const first = loadIdentity(dir, { nickname: 'h' });
    assert.deepEqual(first.recovery, []);
    assert.equal(loadIdentity(dir).name, first.name);
    const r = readStateFile(path.join(dir, 'peer-name'), 'peer-name');
    assert.ok(r.status === 'ok' && r.owner === first.name);
    assert.equal(loadIdentity(dir, { name: N2 }).name, N2);
    assert.equal(loadIdentity(dir).name, N2);
    fs.writeFileSync(path.join(dir, 'peer-name'), `${N1}\n`);
    assert.equal(loadIdentity(dir).name, N1, 'old format read');
    assert.equal(readStateFile(path.join(dir, 'peer-name'), 'peer-name').status, 'ok', 'and rewritten in the checked format');
    assert.ok(!Object.keys(first).includes('recovery'), 'the identity passed around does not carry it');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('peer-name deleted or damaged: recovered from the owners other state files record; refused when they disagree or nothing can tell', () => {
  const dir = tmpDir();
  try {
    const id = loadIdentity(dir).name;
    writeStateFile(path.join(dir, 'endpoints.json'), 'endpoints', '{}', { owner: id });
    fs.mkdirSync(path.join(dir, 'ipam'));
    writeStateFile(path.join(dir, 'ipam', 'owner'), 'ipam-owner', `${id}\n`, { owner: id });
    fs.rmSync(path.join(dir, 'peer-name'));
    const back = loadIdentity(dir);
    assert.equal(back.name, id);
    assert.equal(back.recovery.length, 1);
    assert.equal(back.recovery[0].file, 'peer-name');
    assert.equal(back.recovery[0].problem, 'missing');
    assert.equal(back.recovery[0].from, 'endpoints.json, ipam/owner');
    assert.equal(loadIdentity(dir).recovery.length, 0, 'written back');

    // damaged (truncated) peer-name: same recovery, the damaged file kept aside
    const f = path.join(dir, 'peer-name');
    fs.truncateSync(f, 30);
    const t = loadIdentity(dir);
    assert.equal(t.name, id);
    assert.match(t.recovery[0].problem, /truncated/);
    assert.ok(t.recovery[0].movedTo && fs.existsSync(t.recovery[0].movedTo));

    // two different owners: refuse, naming the file, the peers, the files and the ways out
    writeStateFile(path.join(dir, 'targets.json'), 'targets', '{}', { owner: id === N2 ? N1 : N2 });
    fs.writeFileSync(f, 'garbage garbage\n');
    assert.throws(() => loadIdentity(dir), (e: unknown) => e instanceof WeaveError && e.code === 'ESTATE'
      && e.message.includes(`${f} is garbage or overwritten`) && /names different peers: .*\(endpoints\.json, ipam\/owner\).*\(targets\.json\)/.test(e.message)
      && /restore .*peer-name, start with --name <the old peer name>, or run "weave reset"/.test(e.message));
    assert.equal(fs.readFileSync(f, 'utf8'), 'garbage garbage\n', 'left as it is for the operator');
    // --name settles it
    assert.equal(loadIdentity(dir, { name: id }).name, id);

    // damaged with nothing else to tell: refuse too (a new identity would strand the old one's space)
    const lone = tmpDir();
    try {
      fs.writeFileSync(path.join(lone, 'peer-name'), 'zz:zz\n');
      assert.throws(() => loadIdentity(lone), /peer-name is .*no other state .* names this peer/);
    } finally {
      fs.rmSync(lone, { recursive: true, force: true });
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('targets.json: saved checked, read back; damaged is moved aside and reported, with no stored targets', () => {
  const dir = tmpDir();
  try {
    const f = path.join(dir, 'targets.json');
    const log = new MemoryLogger();
    const s = new FileTargetStore(f, log, N1);
    assert.deepEqual(s.load(), []);
    s.save(['198.18.0.12', '198.18.0.13:7000']);
    assert.deepEqual(new FileTargetStore(f, log).load(), ['198.18.0.12', '198.18.0.13:7000']);
    fs.writeFileSync(f, '{"v":1,"targets":["198.18.0.12"]}\n');
    assert.deepEqual(new FileTargetStore(f, log).load(), ['198.18.0.12'], 'the old format still reads');
    s.save(['198.18.0.12']);
    fs.truncateSync(f, fs.statSync(f).size - 5);
    const d = new FileTargetStore(f, log);
    assert.deepEqual(d.load(), []);
    const [r] = d.recovery();
    assert.equal(r.file, 'targets.json');
    assert.match(r.problem, /^truncated/);
    assert.match(r.action, /moved aside to targets\.json\.damaged-.*no stored targets/);
    assert.ok(log.find((x) => x.level === 'error' && /targets\.json: truncated/.test(String(x.msg))));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('router.pid: checked; a damaged one is told apart from none; only its own pid is removed', () => {
  const dir = tmpDir();
  try {
    assert.deepEqual(readPidFile(dir), {});
    writePidFile(dir, 4242);
    assert.deepEqual(readPidFile(dir), { pid: 4242 });
    removePidFile(dir, 4343);
    assert.deepEqual(readPidFile(dir), { pid: 4242 }, 'another router\'s pid file stays');
    removePidFile(dir, 4242);
    assert.deepEqual(readPidFile(dir), {});
    fs.writeFileSync(path.join(dir, 'router.pid'), '77\n');
    assert.deepEqual(readPidFile(dir), { pid: 77 }, 'old format');
    fs.writeFileSync(path.join(dir, 'router.pid'), 'x7\n');
    assert.deepEqual(readPidFile(dir), { problem: 'holds no valid pid' });
    fs.writeFileSync(path.join(dir, 'router.pid'), '42');
    fs.truncateSync(path.join(dir, 'router.pid'), 0);
    assert.match(readPidFile(dir).problem!, /empty/);
    const [r] = pidFileRecovery(dir, 5);
    assert.deepEqual([r.file, r.at], ['router.pid', 5]);
    assert.match(r.action, /replaced with this router's pid/);
    writePidFile(dir, 4242);
    assert.deepEqual(pidFileRecovery(dir), []);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
