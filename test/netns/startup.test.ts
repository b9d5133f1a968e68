// A launch that fails half-way leaves nothing behind: IPAM refuses the default range because the
// host routes part of it, after the sleeve (weave-tun) and fastdp (weave-vx) were built; every part
// built before must be gone, and no router process left.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { withLab } from '../lab/lab';
import { run } from '../lab/exec';

async function links(ns: string): Promise<string[]> {
  return JSON.parse((await run(['ip', '-n', ns, '-j', 'link', 'show'])).stdout).map((l: any) => l.ifname);
}

test('a start-up refused by IPAM (host route inside 10.32.0.0/12) removes the TUN, the VXLAN device, nft table and xfrm state, and exits', async () => {
  await withLab(async (lab) => {
    const h1 = await lab.addHost('h1');
    await h1.exec(['ip', 'route', 'add', '10.40.0.0/16', 'dev', 'eth0']);
    const before = await links(h1.ns);
    const r = await h1.weave(['launch'], { allowFail: true });
    assert.notEqual(r.code, 0, `launch fails: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, /the default allocation range 10\.32\.0\.0\/12 overlaps host routes \(10\.40\.0\.0\/16 dev eth0\)/);
    const log = await h1.exec(['cat', `${h1.dataDir}/weave.log`]);
    assert.match(log.stdout, /fast datapath ready/, 'fastdp (weave-vx) was built before IPAM refused: the test covers the teardown');
    assert.match(log.stdout, /start-up step failed; stopping what was built/);
    assert.deepEqual((await links(h1.ns)).filter((l) => !before.includes(l)), [], 'no weave-tun, weave-vx or other weave link left');
    const nft = await run(['ip', 'netns', 'exec', h1.ns, 'nft', 'list', 'tables']);
    assert.doesNotMatch(nft.stdout, /inet weave/, 'no inet weave table');
    const xfrm = await run(['ip', '-n', h1.ns, 'xfrm', 'state'], { allowFail: true });
    assert.equal(xfrm.stdout.trim(), '', 'no xfrm state');
    assert.deepEqual(JSON.parse((await run(['ip', '-n', h1.ns, '-j', 'route', 'show', 'proto', '180'])).stdout), [], 'no weave routes');
    assert.deepEqual(await lab.pidsIn(h1.ns), [], 'no router process');
  });
});
