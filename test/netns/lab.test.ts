// The lab itself: hosts reach each other on the underlay, cuts really cut, heal restores, cleanup leaves nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Lab } from '../lab/lab';
import { run } from '../lab/exec';

test('lab: underlay connectivity, cut and heal, cleanup', async () => {
  const lab = await Lab.create();
  const names: string[] = [];
  try {
    const h1 = await lab.addHost('h1');
    const h2 = await lab.addHost('h2');
    const h3 = await lab.addHost('h3');
    names.push(lab.underlay, h1.ns, h2.ns, h3.ns);
    await h1.exec(['ping', '-c', '1', '-W', '2', h2.ip]);
    const cut = await lab.cut(h1, h3);
    const blocked = await h1.exec(['ping', '-c', '1', '-W', '1', h3.ip], { allowFail: true });
    assert.notEqual(blocked.code, 0, 'h1 must not reach h3 after the cut');
    await h1.exec(['ping', '-c', '1', '-W', '2', h2.ip]);
    await lab.heal(cut);
    await h1.exec(['ping', '-c', '1', '-W', '2', h3.ip]);
  } finally {
    await lab.cleanup();
  }
  const left = (await run(['ip', 'netns', 'list'])).stdout;
  for (const n of names) assert.ok(!left.includes(n), `namespace ${n} left behind`);
});
