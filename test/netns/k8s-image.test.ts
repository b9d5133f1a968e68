// The image a DaemonSet runs, run as the DaemonSet runs it: scripts/build-image.js builds the OCI
// archive offline (cached by content in .cache/image); a lab cluster has the fixture API server over
// HTTPS with a bearer token (test/lab/kube-api.ts) to which `kubectl apply -f k8s/weave-daemonset.yaml`
// is applied from the node; containerd 1.6 in the node imports the archive (`ctr images import`, the
// k8s.io namespace kubelet uses) and runs the manifest's router container from it as kubelet would:
// its command as written (`weave router --kube`), host network, privileged, the manifest's
// environment (NODE_NAME from the downward API, no password Secret), its host paths, and the service
// account's token and CA at the in-cluster path with KUBERNETES_SERVICE_HOST/_PORT. The router
// answers the manifest's readiness and liveness probes on 127.0.0.1:6784 in the node's namespace,
// installs the CNI plugin into the node's CNI dirs, gives a pod made through the CRI an address,
// joins the peer list in the shipped ConfigMap, asks the API server only what the manifest's RBAC
// allows, and stops cleanly on SIGTERM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as path from 'path';
import { Lab } from '../lab/lab';
import { waitFor } from '../lab/exec';
import { Containerd } from '../lab/containerd';
import { ClusterApi } from '../lab/kube-api';
import { buildImage, ctr, ctrRunArgs } from '../lab/image';
import { MANIFEST, loadManifest, rbacAllows } from '../lab/manifest';
import { PEERS_ANNOTATION } from '../../k8s/reclaim';

const SA_PATH = '/var/run/secrets/kubernetes.io/serviceaccount';

test('the image runs the DaemonSet\'s router in a node through containerd, configured in-cluster', async (t) => {
  const info = await buildImage();
  const objs = loadManifest();
  const ds = objs.find((o) => o.kind === 'DaemonSet')!;
  const router = ds.spec.template.spec.containers.find((c: any) => c.name === 'weave');
  assert.equal(router.image, info.image, 'the archive carries the name the manifest runs');
  const lab = await Lab.create();
  let ctrd: Containerd | undefined;
  let api: ClusterApi | undefined;
  const id = `weave-${lab.id}`;
  try {
    const h = await lab.addHost('node1');
    api = await ClusterApi.start(lab, { tls: true });
    const cluster = api;
    await cluster.addNode(h.name, h.ip);
    const applied = await h.exec(['kubectl', '--kubeconfig', cluster.kubeconfig, 'apply', '--validate=false', '-f', MANIFEST]);
    assert.equal(applied.stdout.trim().split('\n').length, objs.length, applied.stdout);
    // the node's /lib/modules is a lab directory: machines whose kernel has no loadable modules (this
    // test machine's) have none, and runc refuses to bind a missing source
    const dirs = Object.fromEntries(['cni-bin', 'cni-conf', 'lib-modules'].map((d) => [d, path.join(lab.tmp, `${h.name}-${d}`)]));
    for (const d of Object.values(dirs)) fs.mkdirSync(d, { recursive: true });
    ctrd = await Containerd.start(h, { binDir: dirs['cni-bin'], confDir: dirs['cni-conf'], conflist: path.join(dirs['cni-conf'], '10-weave.conflist'), list: { cniVersion: '1.0.0', name: 'weave', plugins: [] } });
    const c = ctrd;
    const probe = async (p: string) => {
      const r = await h.exec([process.execPath, '-e', `require('http').get('http://127.0.0.1:6784${p}',r=>{r.resume();r.on('end',()=>process.exit(r.statusCode===200?0:3))}).on('error',()=>process.exit(4))`], { allowFail: true, timeoutMs: 15_000 });
      return r.code === 0;
    };

    await t.test('ctr imports the archive under the manifest\'s image name', async () => {
      await ctr(c, ['images', 'import', info.archive], { timeoutMs: 300_000 });
      const ls = (await ctr(c, ['images', 'ls', '-q'])).stdout.split('\n');
      assert.ok(ls.includes(info.image), ls.join(' '));
    });

    await t.test('the router container starts with the manifest\'s command and passes its probes', async () => {
      const args = ctrRunArgs(ds, 'weave', {
        fields: { 'spec.nodeName': h.name },
        hostPaths: { '/var/lib/weave': h.dataDir, '/opt/cni/bin': dirs['cni-bin'], '/etc/cni/net.d': dirs['cni-conf'], '/run/netns': '/run/netns', '/lib/modules': dirs['lib-modules'] },
        mountAt: { '/var/lib/weave': h.dataDir },
        env: { WEAVE_DATA_DIR: h.dataDir, ...cluster.inClusterEnv },
        readOnlyMounts: { [SA_PATH]: cluster.serviceAccountDir! },
      }, id);
      assert.deepEqual(args.slice(-3), ['weave', 'router', '--kube']);
      await ctr(c, args);
      const ready = router.readinessProbe.httpGet;
      const live = router.livenessProbe.httpGet;
      assert.deepEqual([ready.host, ready.port, live.host, live.port], ['127.0.0.1', 6784, '127.0.0.1', 6784]);
      await waitFor(`the readiness probe ${ready.path}`, () => probe(ready.path), { timeoutMs: 90_000, intervalMs: 300 });
      assert.ok(await probe(live.path), `the liveness probe ${live.path}`);
      const task = (await ctr(c, ['task', 'ls'])).stdout.split('\n').find((l) => l.startsWith(id));
      const pid = Number(task?.split(/\s+/)[1]);
      assert.ok(pid > 1, `the task's host PID: ${task}`);
      assert.notEqual(fs.readlinkSync(`/proc/${pid}/ns/mnt`), fs.readlinkSync('/proc/self/ns/mnt'), 'its own mount namespace');
      assert.ok(fs.existsSync(`/proc/${pid}/root/opt/weave/dist/weave.js`), 'the product from the image\'s root');
      assert.equal(fs.statSync(`/proc/${pid}/ns/net`).ino, fs.statSync(`/run/netns/${h.ns}`).ino, 'the node\'s network namespace (hostNetwork)');
    });

    await t.test('weave status in the container; the CNI plugin installed into the node\'s dirs; the peer list joined', async () => {
      for (const p of ['loopback', 'portmap']) fs.copyFileSync(`/usr/lib/cni/${p}`, path.join(dirs['cni-bin'], p));
      const st = await ctr(c, ['task', 'exec', '--exec-id', 'status', id, 'weave', 'status']);
      assert.match(st.stdout, new RegExp(h.name), st.stdout);
      assert.ok(fs.existsSync(path.join(dirs['cni-bin'], 'weave-net')), 'the shim in the node\'s CNI bin dir');
      const conf = JSON.parse(fs.readFileSync(path.join(dirs['cni-conf'], '10-weave.conflist'), 'utf8'));
      assert.equal(conf.plugins[0].type, 'weave-net');
      const rep = await h.report();
      // the router joins the list in the background (the data path does not wait for the API)
      await waitFor('this peer in the shipped ConfigMap\'s list', async () => {
        const cm = await cluster.request<any>('GET', '/api/v1/namespaces/kube-system/configmaps/weave-net');
        return String(cm.metadata.annotations?.[PEERS_ANNOTATION]).includes(rep.router.name);
      }, { timeoutMs: 30_000, intervalMs: 300 });
    });

    await t.test('a pod made through the CRI gets an address from the router in the image', async () => {
      const pod = await c.runPod({ name: 'web', namespace: 'default', uid: `uid-${lab.id}` });
      assert.match(pod.ip, /^10\.(3[2-9]|4[0-7])\./, `an address in the default range: ${pod.ip}`);
      const ps = await ctr(c, ['task', 'exec', '--exec-id', 'ps', id, 'weave', 'ps']);
      assert.ok(ps.stdout.includes(pod.ip), ps.stdout);
      await c.removePod(pod.id);
    });

    await t.test('every API request of the router is one the manifest\'s RBAC allows', async () => {
      const log = (await cluster.log()).filter((l) => l.userAgent?.startsWith('weave.ts'));
      assert.ok(log.some((l) => l.verb === 'watch' && l.resource === 'nodes'), 'it watches the Nodes');
      const denied = log.filter((l) => !rbacAllows(objs, l));
      assert.deepEqual(denied.map((l) => `${l.verb} ${l.path}`), []);
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
    if (api) await api.stop();
    await lab.cleanup();
  }
});
