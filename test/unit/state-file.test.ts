// lib/state-file.ts: atomic writes (a crash between write and rename leaves the old file), checked reads
// (truncation at every length, every single-bit flip, garbage, a file under the wrong name), old-format
// files handed to their parser, files moved aside, and the owners a data dir's state files record.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  DAMAGED_SUFFIX, contentProblem, decodeStateFile, encodeStateFile, moveAside, ownersInDataDir, readStateFile, stateSection, writeStateFile,
} from '../../lib/state-file';
import { mulberry32 } from '../fakes/rng';

const OWNER = '02:00:00:00:00:01';
const PAYLOAD = JSON.stringify({ version: 1, endpoints: [{ netns: 'c1', addrs: ['10.32.0.5/12'] }], exposed: [] }, null, 2) + '\n';

function tmpDir(): string { return fs.mkdtempSync(path.join(os.tmpdir(), 'weave-state-file-')); }

test('state file: round trip keeps payload, kind and owner; the payload is readable after the header line', () => {
  const dir = tmpDir();
  try {
    const f = path.join(dir, 'endpoints.json');
    writeStateFile(f, 'endpoints', PAYLOAD, { owner: OWNER });
    const r = readStateFile(f, 'endpoints');
    assert.equal(r.status, 'ok');
    if (r.status !== 'ok') return;
    assert.equal(r.payload.toString('utf8'), PAYLOAD);
    assert.equal(r.owner, OWNER);
    assert.equal(r.legacy, false);
    const text = fs.readFileSync(f, 'utf8');
    assert.match(text.split('\n')[0], /^weave-state 1 endpoints 02:00:00:00:00:01 \d+ [0-9a-f]{64}$/);
    assert.equal(text.slice(text.indexOf('\n') + 1), PAYLOAD);
    assert.equal((fs.statSync(f).mode & 0o777), 0o600);
    assert.deepEqual(fs.readdirSync(dir), ['endpoints.json'], 'no temp file left');
    assert.deepEqual(readStateFile(path.join(dir, 'nope'), 'endpoints'), { status: 'missing' });
    const asDir = readStateFile(dir, 'endpoints');
    assert.equal(asDir.status, 'damaged', 'an unreadable path is reported, not thrown');
    // binary payloads and no owner
    writeStateFile(f, 'dns-records', Buffer.from([0, 1, 2, 255, 10, 13]));
    const b = readStateFile(f, 'dns-records');
    assert.ok(b.status === 'ok' && b.payload.equals(Buffer.from([0, 1, 2, 255, 10, 13])) && b.owner === undefined);
    // a missing directory is an error for the caller (not silently created)
    assert.throws(() => writeStateFile(path.join(dir, 'no', 'x'), 'targets', '{}'), /ENOENT/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('state file: truncation at every length is detected, with or without old-format fallback', () => {
  const full = encodeStateFile('endpoints', PAYLOAD, OWNER);
  for (let len = 0; len < full.length; len++) {
    for (const legacy of [false, true]) {
      const r = decodeStateFile(full.subarray(0, len), 'endpoints', { legacy });
      assert.equal(r.status, 'damaged', `truncated to ${len} of ${full.length} bytes (legacy ${legacy}) must be damaged, got ${r.status}`);
    }
  }
  assert.match((decodeStateFile(full.subarray(0, full.length - 3), 'endpoints') as { problem: string }).problem, /^truncated: \d+ of \d+ payload bytes$/);
  assert.match((decodeStateFile(Buffer.concat([full, Buffer.from('x')]), 'endpoints') as { problem: string }).problem, /1 unexpected bytes after/);
  assert.equal(decodeStateFile(full, 'endpoints').status, 'ok');
});

test('state file: every single-bit flip is detected (header and payload); with the old-format fallback none reads as ok', () => {
  const full = encodeStateFile('targets', '{"v":1,"targets":["198.18.0.12"]}\n', OWNER);
  let n = 0;
  for (let i = 0; i < full.length; i++) {
    for (let bit = 0; bit < 8; bit++) {
      const b = Buffer.from(full);
      b[i] ^= 1 << bit;
      for (const legacy of [false, true]) {
        const r = decodeStateFile(b, 'targets', { legacy });
        assert.equal(r.status, 'damaged', `bit ${bit} of byte ${i} flipped (legacy ${legacy}): ${r.status}`);
      }
      n++;
    }
  }
  assert.equal(n, full.length * 8);
});

test('state file: garbage, a wrong kind, a newer format and old-format files', () => {
  const rng = mulberry32(99);
  for (let i = 0; i < 200; i++) {
    const g = Buffer.alloc(1 + Math.floor(rng() * 600));
    for (let j = 0; j < g.length; j++) g[j] = Math.floor(rng() * 256);
    assert.equal(decodeStateFile(g, 'endpoints').status, 'damaged');
  }
  const other = encodeStateFile('targets', '{}');
  assert.match((decodeStateFile(other, 'endpoints') as { problem: string }).problem, /holds "targets" state, expected "endpoints"/);
  const newer = Buffer.from(encodeStateFile('targets', '{}').toString('latin1').replace('weave-state 1 ', 'weave-state 2 '), 'latin1');
  assert.match((decodeStateFile(newer, 'targets') as { problem: string }).problem, /format version 2 is not supported/);
  // files from before this format: given to the caller's parser, flagged legacy; refused without the option
  const old = Buffer.from('{"v":1,"targets":[]}\n');
  assert.deepEqual(decodeStateFile(old, 'targets', { legacy: true }), { status: 'ok', payload: old, legacy: true });
  assert.equal(decodeStateFile(old, 'targets').status, 'damaged');
  assert.equal(decodeStateFile(Buffer.from('weave-sta'), 'targets', { legacy: true }).status, 'damaged', 'a truncated header is not an old file');
  assert.match(contentProblem(true, new Error('Unexpected token \u0001\u00ff')), /^garbage or overwritten: .*\(Unexpected token \?\)$/);
  assert.match(contentProblem(false, new Error('bad')), /^unusable content: bad$/);
});

test('state file: a crash after writing the temp file and before the rename leaves the old file intact', () => {
  const dir = tmpDir();
  try {
    const f = path.join(dir, 'targets.json');
    writeStateFile(f, 'targets', '{"v":1,"targets":["old"]}\n', { owner: OWNER });
    const mod = path.join(__dirname, '..', '..', 'lib', 'state-file.js');
    const script = `require(${JSON.stringify(mod)}).writeStateFile(${JSON.stringify(f)}, 'targets', '{"v":1,"targets":["new"]}\\n', { beforeRename: () => process.kill(process.pid, 'SIGKILL') });`;
    const r = spawnSync(process.execPath, ['-e', script]);
    assert.equal(r.signal, 'SIGKILL', 'the writer died between write and rename');
    assert.ok(fs.existsSync(`${f}.tmp`), 'the new content only reached the temp file');
    const got = readStateFile(f, 'targets');
    assert.ok(got.status === 'ok' && got.payload.toString() === '{"v":1,"targets":["old"]}\n', 'the old file is intact');
    assert.deepEqual(ownersInDataDir(dir), [{ file: 'targets.json', owner: OWNER }], 'the temp file is no witness');
    // the next write replaces both
    writeStateFile(f, 'targets', '{"v":1,"targets":["newer"]}\n');
    assert.deepEqual(fs.readdirSync(dir), ['targets.json']);
    const after = readStateFile(f, 'targets');
    assert.ok(after.status === 'ok' && after.payload.toString().includes('newer'));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('state file: moveAside keeps the file under a timestamped name; owners come from checked files only', () => {
  const dir = tmpDir();
  try {
    const a = path.join(dir, 'endpoints.json');
    writeStateFile(a, 'endpoints', PAYLOAD, { owner: OWNER });
    fs.mkdirSync(path.join(dir, 'ipam'));
    writeStateFile(path.join(dir, 'ipam', 'owner'), 'ipam-owner', `${OWNER}\n`, { owner: OWNER });
    writeStateFile(path.join(dir, 'dns.msgpack'), 'dns-records', Buffer.from([0x80]), { owner: '02:00:00:00:00:02' });
    fs.writeFileSync(path.join(dir, 'weave.log'), 'weave-state 1 endpoints 02:00:00:00:00:03 0 00\n');
    const bad = encodeStateFile('targets', '{}', '02:00:00:00:00:04');
    bad[bad.length - 1] ^= 1;
    fs.writeFileSync(path.join(dir, 'targets.json'), bad);
    assert.deepEqual(ownersInDataDir(dir, ['dns.msgpack']), [{ file: 'endpoints.json', owner: OWNER }, { file: 'ipam/owner', owner: OWNER }]);
    const to = moveAside(a, Date.UTC(2026, 0, 2, 3, 4, 5));
    assert.equal(path.basename(to), `endpoints.json${DAMAGED_SUFFIX}2026-01-02T030405Z`);
    assert.ok(!fs.existsSync(a));
    writeStateFile(a, 'endpoints', PAYLOAD, { owner: OWNER });
    const to2 = moveAside(a, Date.UTC(2026, 0, 2, 3, 4, 5));
    assert.notEqual(to2, to, 'a second move at the same second gets its own name');
    assert.deepEqual(ownersInDataDir(dir).map((w) => w.file), ['dns.msgpack', 'ipam/owner'], 'files moved aside are no witnesses');
    const sec = stateSection([{ file: 'endpoints.json', problem: 'checksum mismatch', action: 'moved aside', from: 'the kernel', at: 1 }]);
    assert.deepEqual(sec.summary, { Files: '1 recovered', 'endpoints.json': 'checksum mismatch: moved aside (from the kernel)' });
    assert.deepEqual(stateSection([]).summary, { Files: 'all checked, none damaged' });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
