// The fixture API server (test/lab/apiserver.ts) checked by the real clients the project's users
// and the router's peers would use against a real kube-apiserver: the preinstalled kubectl 1.32
// (version, discovery, get with field and label selectors, apply, label, delete, a watch with
// --watch-only) and @kubernetes/client-node 1.x (typed list calls, a ListWatch informer that sees
// add, update and delete and, after a 410 Expired ends its watch, relists and reconciles what
// changed while it was not watching). And `kubectl apply -f k8s/weave-daemonset.yaml` as a user runs
// it: every object created, a second apply changes nothing, the peer list the routers write into the
// ConfigMap survives a re-apply, `kubectl delete -f` removes it all.
// The fixture listens on 127.0.0.1 in this process; kubectl runs with a kubeconfig written here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { FakeApiServer, kubeconfigFor, nodeObject } from '../lab/apiserver';
import { run, waitFor } from '../lab/exec';
import { MANIFEST, loadManifest } from '../lab/manifest';
import { PEERS_ANNOTATION } from '../../k8s/reclaim';

// tsc compiles import() to require() under CommonJS; client-node 1.x is ESM-only
const importEsm = new Function('m', 'return import(m)') as (m: string) => Promise<any>;

test('the fixture API server with kubectl 1.32 and client-node 1.x', async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'weave-k8s-clients-'));
  const srv = new FakeApiServer({ bookmarkMs: 500 });
  await srv.start();
  const kc = path.join(tmp, 'kubeconfig');
  fs.writeFileSync(kc, kubeconfigFor(srv.url));
  const kubectl = (args: string[], opts: { input?: string; allowFail?: boolean } = {}) =>
    run(['kubectl', '--kubeconfig', kc, ...args], { timeoutMs: 30_000, ...opts });
  try {
    await t.test('kubectl: version, discovery, get with selectors, apply, label, delete', async () => {
      const v = JSON.parse((await kubectl(['version', '-o', 'json'])).stdout);
      assert.equal(v.serverVersion.minor, '32');
      const res = (await kubectl(['api-resources', '--no-headers', '-o', 'name'])).stdout.split('\n');
      for (const r of ['nodes', 'configmaps', 'networkpolicies.networking.k8s.io', 'daemonsets.apps', 'clusterroles.rbac.authorization.k8s.io']) assert.ok(res.includes(r), `api-resources lists ${r}`);
      srv.create('nodes', nodeObject('n1', '198.18.0.1', { zone: 'a' }));
      srv.create('nodes', nodeObject('n2', '198.18.0.2', { zone: 'b' }));
      const names = async (args: string[]) => (await kubectl(['get', ...args, '-o', 'jsonpath={.items[*].metadata.name}'])).stdout.split(' ').filter(Boolean);
      assert.deepEqual(await names(['nodes']), ['n1', 'n2']);
      assert.deepEqual(await names(['nodes', '--field-selector', 'metadata.name=n2']), ['n2']);
      assert.deepEqual(await names(['nodes', '-l', 'zone in (a)']), ['n1']);
      assert.deepEqual(await names(['nodes', '-l', 'zone!=a']), ['n2']);
      const ip = (await kubectl(['get', 'node', 'n1', '-o', 'jsonpath={.status.addresses[?(@.type=="InternalIP")].address}'])).stdout;
      assert.equal(ip, '198.18.0.1');
      const np = 'apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: default}\nspec: {podSelector: {}}\n';
      assert.match((await kubectl(['apply', '--validate=false', '-f', '-'], { input: np })).stdout, /networkpolicy.networking.k8s.io\/deny created/);
      assert.match((await kubectl(['apply', '--validate=false', '-f', '-'], { input: np })).stdout, /unchanged/);
      await kubectl(['label', 'node', 'n1', 'weave=yes']);
      assert.equal(srv.get('nodes', 'n1')?.metadata.labels?.weave, 'yes');
      await kubectl(['delete', 'node', 'n2']);
      assert.equal(srv.get('nodes', 'n2'), undefined);
      const missing = await kubectl(['get', 'node', 'n2'], { allowFail: true });
      assert.notEqual(missing.code, 0);
      assert.match(missing.stderr, /NotFound|not found/);
    });

    await t.test('kubectl get --watch-only sees ADDED, MODIFIED and DELETED in order', async () => {
      const child = spawn('kubectl', ['--kubeconfig', kc, 'get', 'nodes', '--watch-only', '--output-watch-events', '-o', 'jsonpath={.type} {.object.metadata.name}{"\\n"}'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
      child.stderr.setEncoding('utf8').on('data', (d: string) => { err += d; });
      try {
        await waitFor('kubectl\'s watch', () => srv.watchCount > 0, { timeoutMs: 15_000, intervalMs: 50 });
        srv.create('nodes', nodeObject('w1', '198.18.0.9'));
        const n = srv.get('nodes', 'w1')!;
        srv.update('nodes', 'w1', { ...n, metadata: { ...n.metadata, labels: { ...n.metadata.labels, x: 'y' } } });
        srv.delete('nodes', 'w1');
        await waitFor('three events from kubectl', () => out.trim().split('\n').length >= 3, { timeoutMs: 10_000, intervalMs: 50 });
      } finally {
        child.kill('SIGTERM');
      }
      assert.deepEqual(out.trim().split('\n'), ['ADDED w1', 'MODIFIED w1', 'DELETED w1'], err);
    });

    await t.test('client-node: typed list, informer add/update/delete, relist after 410 Expired', async () => {
      const k8s = await importEsm('@kubernetes/client-node');
      const kcfg = new k8s.KubeConfig();
      // client-node 1.x refuses plain http unless TLS checks are off (the fixture speaks http here)
      const conf = JSON.parse(fs.readFileSync(kc, 'utf8'));
      conf.clusters[0].cluster['insecure-skip-tls-verify'] = true;
      kcfg.loadFromString(JSON.stringify(conf));
      const core = kcfg.makeApiClient(k8s.CoreV1Api);
      const list = await core.listNode();
      assert.deepEqual(list.items.map((o: any) => o.metadata.name), ['n1']);
      assert.equal(list.items[0].status.addresses[0].address, '198.18.0.1');
      const seen: string[] = [];
      const inf = k8s.makeInformer(kcfg, '/api/v1/nodes', () => core.listNode());
      for (const ev of ['add', 'update', 'delete']) inf.on(ev, (o: any) => seen.push(`${ev} ${o.metadata.name}`));
      const errors: string[] = [];
      inf.on('error', (e: any) => errors.push(String(e?.message ?? e)));
      await inf.start();
      try {
        await waitFor('the informer\'s watch', () => srv.watchCount > 0 && seen.includes('add n1'), { timeoutMs: 10_000, intervalMs: 50 });
        await core.createNode({ body: nodeObject('c1', '198.18.0.11') });
        const c1 = await core.readNode({ name: 'c1' });
        c1.metadata.labels.role = 'edge';
        await core.replaceNode({ name: 'c1', body: c1 });
        await core.deleteNode({ name: 'c1' });
        await waitFor('add, update, delete of c1', () => seen.includes('delete c1'), { timeoutMs: 10_000, intervalMs: 50 });
        assert.deepEqual(seen.filter((s) => s.endsWith(' c1')), ['add c1', 'update c1', 'delete c1']);
        const replace = await core.replaceNode({ name: 'n1', body: { ...c1, metadata: { ...c1.metadata, name: 'n1', resourceVersion: '1' } } }).then(() => 'ok', (e: any) => e.code ?? e.statusCode ?? String(e));
        assert.equal(replace, 409, 'a stale resourceVersion is a conflict');

        // the watch ends with 410 Expired; while nobody watches, n1 goes and r1 comes: only a relist can tell
        const lists = srv.counts().list;
        srv.compact(true);
        srv.delete('nodes', 'n1');
        srv.create('nodes', nodeObject('r1', '198.18.0.21'));
        await waitFor('the informer to relist and reconcile', () => seen.includes('delete n1') && seen.includes('add r1'), { timeoutMs: 15_000, intervalMs: 50 });
        assert.equal(srv.counts().list, lists + 1, 'one relist');
        assert.deepEqual(inf.list().map((o: any) => o.metadata.name), ['r1']);
        await waitFor('the informer to watch again', () => srv.watchCount > 0, { timeoutMs: 10_000, intervalMs: 50 });
        assert.deepEqual(errors, []);
      } finally {
        await inf.stop();
      }
    });

    await t.test('kubectl apply -f k8s/weave-daemonset.yaml: created, unchanged, routers\' data kept, deleted', async () => {
      const objs = loadManifest();
      // the fixture serves no OpenAPI schema: the manifest's schema is checked offline (test/unit/k8s-manifest.test.ts)
      const first = (await kubectl(['apply', '--validate=false', '-f', MANIFEST])).stdout.trim().split('\n');
      assert.equal(first.length, objs.length, first.join('\n'));
      for (const l of first) assert.match(l, / created$/);
      const ds = JSON.parse((await kubectl(['-n', 'kube-system', 'get', 'daemonset', 'weave-net', '-o', 'json'])).stdout);
      const want = objs.find((o) => o.kind === 'DaemonSet')!;
      assert.deepEqual(ds.spec.template.spec.containers.map((c: any) => c.command), want.spec.template.spec.containers.map((c: any) => c.command));
      assert.equal(ds.metadata.annotations['kubectl.kubernetes.io/last-applied-configuration'] !== undefined, true);
      // what a router writes (the peers that ever joined: k8s/reclaim.ts) through its own update
      const cm = srv.get('configmaps', 'weave-net', 'kube-system')!;
      const peers = JSON.stringify({ peers: [{ peerName: '8a:3e:00:00:00:01', nodeName: 'n1' }] });
      srv.update('configmaps', 'weave-net', { ...cm, metadata: { ...cm.metadata, annotations: { ...cm.metadata.annotations, [PEERS_ANNOTATION]: peers } } }, 'kube-system');
      const again = (await kubectl(['apply', '--validate=false', '-f', MANIFEST])).stdout.trim().split('\n');
      for (const l of again) assert.match(l, / unchanged$/);
      assert.equal(srv.get('configmaps', 'weave-net', 'kube-system')?.metadata.annotations?.[PEERS_ANNOTATION], peers, 're-applying keeps the routers\' list');
      const del = (await kubectl(['delete', '-f', MANIFEST])).stdout.trim().split('\n');
      assert.equal(del.length, objs.length);
      for (const o of objs) {
        const resource = `${o.kind.toLowerCase()}s`;
        assert.equal(srv.get(resource, o.metadata.name, o.metadata.namespace), undefined, `${o.kind} deleted`);
      }
    });
  } finally {
    await srv.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
