// The image a DaemonSet runs: scripts/build-image.js builds the OCI archive offline (cached by
// content in .cache/image), containerd 1.6 in a lab host imports it (`ctr images import`, the
// k8s.io namespace kubelet uses), and the manifest's router container runs from it as kubelet would
// run it (host network, privileged, the manifest's environment and host paths). The router answers
// /status on 127.0.0.1:6784 in the host's namespace, `weave status` works inside the container, the
// CNI plugin it installs into the host's CNI dirs gives a pod made through the CRI an address, and
// SIGTERM stops it cleanly.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as path from 'path';
import { Lab } from '../lab/lab';
import { waitFor } from '../lab/exec';
import { Containerd } from '../lab/containerd';
import { buildImage, ctr, ctrRunArgs } from '../lab/image';
import { loadManifest } from '../lab/manifest';

test('the image runs the DaemonSet\'s router in a host namespace through containerd', async (t) => {
  const info = await buildImage();
  const ds = loadManifest().find((o) => o.kind === 'DaemonSet')!;
  const router = ds.spec.template.spec.containers.find((c: any) => c.name === 'weave');
  assert.equal(router.image, info.image, 'the archive carries the name the manifest runs');
  const lab = await Lab.create();
  let ctrd: Containerd | undefined;
  const id = `weave-${lab.id}`;
  try {
    const h = await lab.addHost('node1');
    const dirs = Object.fromEntries(['cni-bin', 'cni-conf', 'netns'].map((d) => [d, path.join(lab.tmp, `${h.name}-${d}`)]));
    for (const d of Object.values(dirs)) fs.mkdirSync(d, { recursive: true });
    ctrd = await Containerd.start(h, { binDir: dirs['cni-bin'], confDir: dirs['cni-conf'], conflist: path.join(dirs['cni-conf'], '10-weave.conflist'), list: { cniVersion: '1.0.0', name: 'weave', plugins: [] } });
    const c = ctrd;

    await t.test('ctr imports the archive under the manifest\'s image name', async () => {
      await ctr(c, ['images', 'import', info.archive], { timeoutMs: 300_000 });
      const ls = (await ctr(c, ['images', 'ls', '-q'])).stdout.split('\n');
      assert.ok(ls.includes(info.image), ls.join(' '));
    });

    await t.test('the router container starts and answers /status in the host\'s namespace', async () => {
      const args = ctrRunArgs(ds, 'weave', {
        fields: { 'spec.nodeName': h.name },
        hostPaths: { '/var/lib/weave': h.dataDir, '/opt/cni/bin': dirs['cni-bin'], '/etc/cni/net.d': dirs['cni-conf'], '/run/netns': '/run/netns', '/lib/modules': '/lib/modules' },
        mountAt: { '/var/lib/weave': h.dataDir },
        env: { WEAVE_DATA_DIR: h.dataDir },
        command: ['weave', 'router', '--ipalloc-init', 'consensus=1'],
      }, id);
      await ctr(c, args);
      const status = await waitFor('/status from the router in the image', async () => {
        try { return await h.httpGet('/status'); } catch { return undefined; }
      }, { timeoutMs: 60_000, intervalMs: 300 });
      assert.match(status, /\S/);
      const rep = await h.report(); // the CLI outside, through the socket the container made in the data dir
      const task = (await ctr(c, ['task', 'ls'])).stdout.split('\n').find((l) => l.startsWith(id));
      const pid = Number(task?.split(/\s+/)[1]);
      assert.ok(pid > 1, `the task's host PID: ${task}`);
      assert.ok(rep.router.name, 'a peer name');
      assert.notEqual(fs.readlinkSync(`/proc/${pid}/ns/mnt`), fs.readlinkSync('/proc/self/ns/mnt'), 'its own mount namespace');
      assert.ok(fs.existsSync(`/proc/${pid}/root/opt/weave/dist/weave.js`), 'the product from the image\'s root');
      assert.equal(fs.statSync(`/proc/${pid}/ns/net`).ino, fs.statSync(`/run/netns/${h.ns}`).ino, 'the host\'s network namespace (hostNetwork)');
    });

    await t.test('weave status works inside the container; setup-cni from it installs the plugin on the host', async () => {
      const st = await ctr(c, ['task', 'exec', '--exec-id', 'status', id, 'weave', 'status']);
      assert.match(st.stdout, /Name:|name/i);
      await ctr(c, ['task', 'exec', '--exec-id', 'setup-cni', id, 'weave', 'setup-cni']);
      assert.ok(fs.existsSync(path.join(dirs['cni-bin'], 'weave-net')), 'the shim in the host\'s CNI bin dir');
      const conf = JSON.parse(fs.readFileSync(path.join(dirs['cni-conf'], '10-weave.conflist'), 'utf8'));
      assert.equal(conf.plugins[0].type, 'weave-net');
      for (const p of ['loopback', 'portmap']) fs.copyFileSync(`/usr/lib/cni/${p}`, path.join(dirs['cni-bin'], p));
    });

    await t.test('a pod made through the CRI gets an address from the router in the image', async () => {
      const pod = await c.runPod({ name: 'web', namespace: 'default', uid: `uid-${lab.id}` });
      assert.match(pod.ip, /^10\.(3[2-9]|4[0-7])\./, `an address in the default range: ${pod.ip}`);
      const ps = await ctr(c, ['task', 'exec', '--exec-id', 'ps', id, 'weave', 'ps']);
      assert.ok(ps.stdout.includes(pod.ip), ps.stdout);
      await c.removePod(pod.id);
    });

    await t.test('SIGTERM stops the router cleanly', async () => {
      await ctr(c, ['task', 'kill', '--signal', 'SIGTERM', id]);
      await waitFor('the task to stop', async () => /STOPPED/.test((await ctr(c, ['task', 'ls'])).stdout.split('\n').find((l) => l.startsWith(id)) ?? ''), { timeoutMs: 30_000, intervalMs: 300 });
      const del = await ctr(c, ['task', 'delete', id], { allowFail: true }); // ctr exits with the task's status
      assert.equal(del.code, 0, `the router's exit status: ${del.code} ${del.stderr}`);
      await ctr(c, ['containers', 'delete', id]);
    });
  } finally {
    if (ctrd) {
      await ctr(ctrd, ['task', 'kill', '--signal', 'SIGKILL', id], { allowFail: true });
      await ctr(ctrd, ['task', 'delete', '--force', id], { allowFail: true });
      await ctr(ctrd, ['containers', 'delete', id], { allowFail: true });
      await ctrd.stop();
    }
    await lab.cleanup();
  }
});
