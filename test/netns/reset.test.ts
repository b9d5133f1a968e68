// weave reset leaves the host as it found it: no weave links, routes or addresses, no state files.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import { withLab } from '../lab/lab';
import { run, waitFor } from '../lab/exec';

async function links(ns: string): Promise<string[]> {
  return JSON.parse((await run(['ip', '-n', ns, '-j', 'link', 'show'])).stdout).map((l: any) => l.ifname);
}

test('weave reset removes containers, exposed addresses, the TUN, our routes and all state but the log', async () => {
  await withLab(async (lab) => {
    const h1 = await lab.addHost('h1');
    const c1 = await lab.addContainer('c1');
    const linksBefore = await links(h1.ns);
    await h1.weave(['launch', '--no-fastdp', '--ipalloc-init', 'consensus=1']);
    await h1.weave(['attach', c1.ns, '-h', 'one']);
    await h1.weave(['expose']);
    const during = await links(h1.ns);
    assert.ok(during.includes('weave-tun'));
    assert.ok(during.some((l) => l.startsWith('vethwe')));
    assert.ok(fs.existsSync(`/etc/netns/${c1.ns}/resolv.conf`), 'attach wrote the container resolv.conf');
    await h1.weave(['reset']);
    await waitFor('router gone', async () => (await lab.pidsIn(h1.ns)).length === 0, { timeoutMs: 15_000 });
    assert.deepEqual((await links(h1.ns)).filter((l) => !linksBefore.includes(l)), [], 'no weave links left');
    assert.deepEqual(await links(c1.ns), ['lo'], 'the container lost ethwe');
    const routes = JSON.parse((await run(['ip', '-n', h1.ns, '-j', 'route', 'show', 'proto', '180'])).stdout);
    assert.deepEqual(routes, [], 'no weave routes left');
    assert.ok(!fs.existsSync(`/etc/netns/${c1.ns}/resolv.conf`), 'resolv.conf removed');
    assert.deepEqual(fs.readdirSync(h1.dataDir).filter((f) => f !== 'weave.log'), [], 'only the log stays in the data dir');
    // and a new launch starts fresh: a new peer name
    const before = fs.readFileSync(`${h1.dataDir}/weave.log`, 'utf8');
    assert.match(before, /router stopping/);
  });
});
