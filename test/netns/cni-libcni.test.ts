// Debian's libcni (the library containerd, CRI-O and podman call plugins through) driving the
// installed conflist: VERSION (and the list's validation), ADD, CHECK, DEL through cni-drive
// (test/lab/cni-drive.go), with libcni's own result cache and version conversion in the way.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'path';
import { Lab } from '../lab/lab';
import { run } from '../lab/exec';
import { installCni } from '../lab/cni';
import { cniDriveBinary } from '../lab/images';

test('libcni: VERSION, ADD, CHECK, DEL of the weave conflist', async () => {
  const lab = await Lab.create();
  try {
    const drive = await cniDriveBinary();
    const h = await lab.addHost('h1');
    h.startRouter(['--nickname', 'h1', '--ipalloc-init', 'consensus=1']);
    await h.waitReady();
    const cni = await installCni(h);
    const pod = await lab.addContainer('pod');
    const netns = `/var/run/netns/${pod.ns}`;
    const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', CNI_PATH: cni.binDir, CNI_CACHE_DIR: path.join(lab.tmp, 'cni-cache'), CNI_ARGS: 'K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=libcni-pod' };
    const drv = (args: string[], allowFail = false) => h.exec([drive, ...args], { env, allowFail, timeoutMs: 60_000 });

    const v = JSON.parse((await drv(['version', cni.conflist, 'weave-net'])).stdout);
    assert.deepEqual(v.supportedVersions, ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']);
    assert.deepEqual(v.capabilities, ['portMappings'], 'the list validates, portmap\'s capability included');

    const add = JSON.parse((await drv(['add', cni.conflist, netns, 'ctr-libcni', 'eth0'])).stdout);
    assert.equal(add.cniVersion, '1.0.0');
    const addr: string = add.ips[0].address;
    assert.match(addr, /^10\.(3[2-9]|4[0-7])\.\d+\.\d+\/12$/);
    assert.equal(add.interfaces[add.ips[0].interface].name, 'eth0');
    assert.equal(await pod.address('eth0'), addr.split('/')[0]);
    assert.match((await h.weave(['ps'])).stdout, /^ns1\/libcni-pod /m);

    await drv(['check', cni.conflist, netns, 'ctr-libcni', 'eth0']);
    await run(['ip', '-n', pod.ns, 'addr', 'flush', 'dev', 'eth0']);
    const drifted = await drv(['check', cni.conflist, netns, 'ctr-libcni', 'eth0'], true);
    assert.equal(drifted.code, 1);
    assert.match(drifted.stderr, /code 101: .*interface eth0 has no address/);

    await drv(['del', cni.conflist, netns, 'ctr-libcni', 'eth0']);
    assert.equal((await h.weave(['ps'])).stdout, '');
    assert.equal(await pod.address('eth0'), undefined);
    // libcni deletes its cache entry; a second DEL (as runtimes retry) still succeeds
    await drv(['del', cni.conflist, netns, 'ctr-libcni', 'eth0']);
  } finally {
    await lab.cleanup();
  }
});
