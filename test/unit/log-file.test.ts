// The router's log file: start markers, rotation by size, rendering for people, no duplicate keys.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { RotatingDestination, currentRun, isStartMarker, renderLine, rotateIfLarge, startMarker, topLevelKeys } from '../../lib/log-file';
import { componentLogger, rootLogger } from '../../lib/log';
import { logFiles, logText } from '../../api/operator';

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'weave-logfile-'));
}

test('a failed launch shows only its own run: lines after the last start marker', () => {
  const old = JSON.stringify({ level: 50, time: 1, component: 'router', msg: 'an old failure' });
  const lines = [startMarker({ pid: 1, args: ['--nickname', 'a'], version: '0.1.0', time: 0 }).trim(), old,
    startMarker({ pid: 2, args: [], version: '0.1.0', time: 5 }).trim(), JSON.stringify({ level: 30, time: 6, msg: 'this run' })];
  assert.ok(isStartMarker(lines[0]));
  assert.ok(!isStartMarker(old));
  assert.deepEqual(currentRun(lines), lines.slice(2));
  assert.deepEqual(currentRun([old]), [old], 'no marker: everything');
  const text = logText([], { run: true });
  assert.equal(text, '');
});

test('rendering: time, level, component, message, fields; a start marker stands out; non-JSON stays', () => {
  const l = JSON.stringify({ level: 40, time: Date.UTC(2026, 0, 2, 3, 4, 5, 6), pid: 9, component: 'mesh', peer: 'aa:bb:cc:dd:ee:ff', reason: 'password mismatch', err: { type: 'Error', message: 'boom', stack: 'Error: boom\n at x' }, msg: 'connection lost' });
  assert.equal(renderLine(l), '2026-01-02T03:04:05.006Z WARN  [mesh] connection lost peer=aa:bb:cc:dd:ee:ff reason="password mismatch" err="boom"');
  assert.match(renderLine(startMarker({ pid: 7, args: ['h1'], version: '0.1.0', time: 0 })), /^==== 1970-01-01T00:00:00.000Z weave launch h1 \(weave.ts 0.1.0, pid 7\) ====$/);
  assert.equal(renderLine('    at Object.<anonymous> (/x.js:1:1)'), '    at Object.<anonymous> (/x.js:1:1)');
  assert.equal(renderLine('[1,2]'), '[1,2]');
});

test('rotation by size: weave.log -> .1 -> .2 -> .3, the oldest dropped, the file truncated in place', () => {
  const dir = tmp();
  try {
    const f = path.join(dir, 'weave.log');
    for (let i = 1; i <= 5; i++) {
      fs.writeFileSync(f, `gen${i}\n`.repeat(100));
      assert.equal(rotateIfLarge(f, 100), true);
      assert.equal(fs.statSync(f).size, 0);
    }
    assert.equal(rotateIfLarge(f, 100), false, 'an empty file is not rotated');
    assert.deepEqual(fs.readdirSync(dir).sort(), ['weave.log', 'weave.log.1', 'weave.log.2', 'weave.log.3']);
    assert.match(fs.readFileSync(`${f}.1`, 'utf8'), /^gen5/);
    assert.match(fs.readFileSync(`${f}.3`, 'utf8'), /^gen3/);
    assert.deepEqual(logFiles(dir, true).map((x) => path.basename(x)), ['weave.log.3', 'weave.log.2', 'weave.log.1', 'weave.log']);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the router\'s logger rotates its file; another writer appending (stderr) keeps writing into the live file', () => {
  const dir = tmp();
  try {
    const f = path.join(dir, 'weave.log');
    const stderr = fs.openSync(f, 'a'); // what weave launch hands the router as stdout/stderr
    const log = componentLogger(rootLogger({ file: { path: f, maxBytes: 8192 } }), 'test');
    for (let i = 0; i < 400; i++) log.info({ i, pad: 'x'.repeat(60) }, 'line');
    fs.writeSync(stderr, 'crash text from stderr\n');
    fs.closeSync(stderr);
    const live = fs.readFileSync(f, 'utf8');
    assert.ok(fs.statSync(f).size < 8192 + 200, `the live file stays near the limit (${fs.statSync(f).size})`);
    assert.match(live, /crash text from stderr\n$/, 'stderr appends at the end of the truncated file, not into weave.log.1');
    assert.ok(fs.existsSync(`${f}.1`) && fs.existsSync(`${f}.3`));
    // nothing lost across the rotations the files still hold: the newest lines are consecutive
    const nums = [...logFiles(dir, true)].flatMap((x) => fs.readFileSync(x, 'utf8').split('\n')).filter((l) => l.startsWith('{')).map((l) => JSON.parse(l).i);
    for (let k = 1; k < nums.length; k++) assert.equal(nums[k], nums[k - 1] + 1);
    assert.equal(nums[nums.length - 1], 399);
    const d = new RotatingDestination(fs.openSync(f, 'a'), f, 4096);
    assert.equal(d.rotations, 0);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('topLevelKeys sees a key written twice (JSON.parse would hide it)', () => {
  assert.deepEqual(topLevelKeys('{"a":1,"b":{"a":2,"c":[{"d":3}]},"e":"x,\\"y"}'), ['a', 'b', 'e']);
  assert.deepEqual(topLevelKeys('{"component":"sleeve","component":"sleeve","msg":"x"}'), ['component', 'component', 'msg']);
  assert.equal(topLevelKeys('not json'), undefined);
});
