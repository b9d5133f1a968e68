// Log lines carry one component, however many times the composition root and the part bind it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MemoryLogger, componentLogger, rootLogger } from '../../lib/log';

test('a component binds its name once: the composition root scopes it, the part binds it again', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'weave-log-'));
  try {
    const file = path.join(dir, 'log');
    const root = rootLogger({ destination: file });
    // api/daemon.ts does componentLogger(root, 'sleeve'); router/sleeve.ts then o.log.child({ component: 'sleeve' })
    const sleeve = componentLogger(root, 'sleeve').child({ component: 'sleeve' });
    sleeve.info({ peer: 'x' }, 'one');
    sleeve.child({ component: 'fallback-io' }).warn('two'); // a sub-part logs under its owner's name
    componentLogger(root, 'dns', { zone: 'weave.local.' }).info('three');
    const lines = fs.readFileSync(file, 'utf8').trim().split('\n');
    assert.equal(lines.length, 3);
    for (const l of lines) assert.equal(l.split('"component"').length - 1, 1, l);
    assert.deepEqual(lines.map((l) => JSON.parse(l).component), ['sleeve', 'sleeve', 'dns']);
    assert.equal(JSON.parse(lines[2]).zone, 'weave.local.');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const mem = new MemoryLogger();
  componentLogger(mem, 'mesh').child({ component: 'tcp', conn: 7 }).info('x');
  assert.deepEqual(mem.records, [{ level: 'info', component: 'mesh', conn: 7, msg: 'x' }]);
  componentLogger(new MemoryLogger(mem.records), 'tcp').info('y');
  assert.equal(mem.records[1].component, 'tcp', 'an unscoped logger gets the part\'s own name');
});
