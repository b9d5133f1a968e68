// podman 4.3 with network_backend = "cni": `podman run --network weave` on one lab host gets a mesh
// address from that host's router through weave-net and reaches a container attached on another
// host; removing the container (podman's CNI DEL) frees the address.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Lab } from '../lab/lab';
import { waitFor } from '../lab/exec';
import { installCni } from '../lab/cni';
import { Podman } from '../lab/podman';

test('podman run --network weave: a mesh address, a container on another host reached, freed on rm', async () => {
  const lab = await Lab.create();
  let podman: Podman | undefined;
  try {
    const [h1, h2] = [await lab.addHost('h1'), await lab.addHost('h2')];
    h1.startRouter(['--nickname', 'h1', '--ipalloc-init', 'consensus=2']);
    h2.startRouter(['--nickname', 'h2', '--ipalloc-init', 'consensus=2', h1.ip]);
    await Promise.all([h1.waitReady(), h2.waitReady()]);
    // the other host's container: attached the classic way
    const remote = await lab.addContainer('remote');
    const remoteAddr = (await h2.weave(['attach', remote.ns], { timeoutMs: 60_000 })).stdout.trim().split('/')[0];
    podman = await Podman.create(h1, await installCni(h1));

    await podman.runDetached('pm1', 'weave', ['sleep', '300']);
    const ip = (await podman.exec('pm1', ['ip', '-4', '-o', 'addr', 'show', 'dev', 'eth0'])).stdout;
    const m = /inet (10\.(?:3[2-9]|4[0-7])\.\d+\.\d+)\/12/.exec(ip);
    assert.ok(m, `podman's container has a mesh address: ${ip}`);
    const ps = (await h1.weave(['ps'])).stdout;
    assert.match(ps, new RegExp(`^pm1 \\S+ \\S+ ${m[1].replace(/\./g, '\\.')}/12$`, 'm'), `weave ps names the container as podman did (K8S_POD_NAME): ${ps}`);

    await waitFor('the podman container to reach the container on h2', async () => (await podman!.exec('pm1', ['ping', '-c', '1', '-W', '1', remoteAddr], { allowFail: true })).code === 0, { timeoutMs: 30_000, intervalMs: 300 });
    const r = await podman.exec('pm1', ['ping', '-c', '3', '-i', '0.2', remoteAddr]);
    assert.match(r.stdout, /3 packets received/);

    await podman.podman(['rm', '--force', '--time', '0', 'pm1']);
    assert.equal((await h1.weave(['ps'])).stdout, '', 'podman\'s DEL removed the attachment');
    const rep = await h1.report();
    assert.deepEqual((rep.ipam.status.allocations as Array<{ ident: string }>).filter((a) => a.ident.startsWith('cni:')), [], 'and freed the address');
  } finally {
    await podman?.cleanup();
    await lab.cleanup();
  }
});
