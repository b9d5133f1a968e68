// k8s/client.ts, k8s/informer.ts and k8s/config.ts against the fixture API server: requests and
// conflicts, watch parsing (split chunks, blank lines, junk), the informer's list+watch, bookmarks,
// reconnect with backoff while the API is down (logged once), relist after 410, steady state with no
// lists; kubeconfig and in-cluster configuration.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as http from 'node:http';
import { FakeApiServer, nodeObject } from '../lab/apiserver';
import { KubeApiError, KubeClient, type KubeObject, type WatchEvent } from '../../k8s/client';
import { Backoff, Informer } from '../../k8s/informer';
import { fromKubeconfig, inCluster, parseKubeFlags } from '../../k8s/config';
import { realClock } from '../../lib/clock';
import { MemoryLogger } from '../../lib/log';
import { UsageError } from '../../lib/errors';

async function until(what: string, fn: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('client: get, update with resourceVersion conflicts, typed errors, token', async () => {
  const srv = new FakeApiServer({ token: 't0k' });
  await srv.start();
  const c = new KubeClient({ server: srv.url, source: 'test', token: 't0k' });
  try {
    srv.create('configmaps', { metadata: { name: 'weave-net' }, data: {} }, 'kube-system');
    const cm = await c.get<KubeObject & { data: Record<string, string> }>('/api/v1/namespaces/kube-system/configmaps/weave-net');
    const first = await c.update('/api/v1/namespaces/kube-system/configmaps/weave-net', { ...cm, data: { a: '1' } });
    assert.notEqual(first.metadata.resourceVersion, cm.metadata.resourceVersion);
    await assert.rejects(c.update('/api/v1/namespaces/kube-system/configmaps/weave-net', { ...cm, data: { a: '2' } }),
      (e: unknown) => e instanceof KubeApiError && e.status === 409 && e.reason === 'Conflict');
    await assert.rejects(c.get('/api/v1/nodes/none'), (e: unknown) => e instanceof KubeApiError && e.status === 404);
    const anon = new KubeClient({ server: srv.url, source: 'test' });
    await assert.rejects(anon.list('/api/v1/nodes'), (e: unknown) => e instanceof KubeApiError && e.status === 401);
    anon.close();
    await srv.stop();
    await assert.rejects(c.list('/api/v1/nodes'), (e: unknown) => (e as { code?: string }).code === 'EKUBEDOWN');
  } finally {
    c.close();
    await srv.close();
  }
});

test('client: watch lines split across chunks, blank lines, bookmarks; junk ends the watch with an error', async () => {
  const lines = [
    JSON.stringify({ type: 'ADDED', object: { metadata: { name: 'a', resourceVersion: '5' } } }),
    '',
    JSON.stringify({ type: 'BOOKMARK', object: { metadata: { resourceVersion: '9' } } }),
    JSON.stringify({ type: 'DELETED', object: { metadata: { name: 'a', resourceVersion: '10' } } }),
  ].join('\n') + '\n';
  let junk = false;
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    if (junk) { res.end('{"type": "ADDED", "obj\n'); return; }
    // byte by byte in a few chunks, the last line split in the middle
    const cut = [7, 50, lines.length - 20];
    let at = 0;
    const next = () => {
      const end = cut.shift() ?? lines.length;
      res.write(lines.slice(at, end));
      at = end;
      if (at < lines.length) setTimeout(next, 5); else res.end();
    };
    next();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const c = new KubeClient({ server: `http://127.0.0.1:${(server.address() as { port: number }).port}`, source: 'test' });
  try {
    const got: WatchEvent[] = [];
    const end = await c.watch('/api/v1/nodes', {}, (ev) => got.push(ev));
    assert.deepEqual(end, { how: 'closed' });
    assert.deepEqual(got.map((e) => `${e.type}:${e.object.metadata.resourceVersion}`), ['ADDED:5', 'BOOKMARK:9', 'DELETED:10']);
    junk = true;
    const end2 = await c.watch('/api/v1/nodes', {}, () => {});
    assert.equal(end2.how, 'error');
  } finally {
    c.close();
    server.close();
  }
});

test('backoff doubles to its cap with jitter and resets', () => {
  const b = new Backoff(500, 30_000, () => 0.5);
  assert.deepEqual(Array.from({ length: 9 }, () => b.next()), [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  b.reset();
  assert.equal(b.next(), 500);
  const j = new Backoff(1000, 1000, () => 0);
  assert.equal(j.next(), 800);
  const k = new Backoff(1000, 1000, () => 0.999);
  assert.ok(k.next() <= 1200);
});

test('informer: list then watch, bookmarks, API down and back (logged once), 410 relist, no lists at steady state', async () => {
  const srv = new FakeApiServer({ bookmarkMs: 100 });
  await srv.start();
  const c = new KubeClient({ server: srv.url, source: 'test' });
  const log = new MemoryLogger();
  const seen: string[] = [];
  srv.create('nodes', nodeObject('a', '198.18.0.1'));
  srv.create('nodes', nodeObject('b', '198.18.0.2'));
  const inf = new Informer<KubeObject>({
    client: c, collection: '/api/v1/nodes', clock: realClock, log, backoff: { initialMs: 50, maxMs: 200 }, watchTimeoutS: 300,
    handlers: {
      added: (o) => seen.push(`+${o.metadata.name}`),
      modified: (o) => seen.push(`~${o.metadata.name}`),
      deleted: (o) => seen.push(`-${o.metadata.name}`),
    },
  });
  try {
    inf.start();
    await inf.firstSync;
    assert.deepEqual(seen.sort(), ['+a', '+b']);
    seen.length = 0;
    await until('the watch', () => srv.watchCount === 1);
    srv.create('nodes', nodeObject('c', '198.18.0.3'));
    srv.delete('nodes', 'a');
    await until('watch events', () => seen.length === 2);
    assert.deepEqual(seen, ['+c', '-a']);
    await until('a bookmark', () => inf.counters.bookmarks > 0);
    assert.equal(inf.resourceVersion, srv.resourceVersion);

    // steady state: watches only
    const mark = srv.log.length;
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(srv.counts(mark).list, 0);

    // the API down: state down, logged once however many retries; a change made meanwhile arrives after
    await srv.stop();
    await until('down', () => inf.state === 'down');
    await new Promise((r) => setTimeout(r, 600)); // several retries at 50-200 ms
    assert.ok(inf.counters.failures >= 3, `retried (${inf.counters.failures})`);
    assert.equal(log.records.filter((e) => /unreachable/.test(String(e.msg))).length, 1);
    seen.length = 0;
    srv.create('nodes', nodeObject('d', '198.18.0.4'));
    const listsBefore = inf.counters.lists;
    await srv.start();
    await until('up again', () => inf.state === 'up' && seen.includes('+d'));
    assert.equal(inf.counters.lists, listsBefore, 'reconnected from the last resourceVersion, no relist');
    assert.equal(log.records.filter((e) => /reachable again/.test(String(e.msg))).length, 1);

    // compaction: the open watch gets 410; a delete in between is seen through the relist
    await until('the watch', () => srv.watchCount === 1);
    srv.compact(true);
    await until('the relist', () => inf.counters.relists === 1 && inf.counters.lists === listsBefore + 1);
    seen.length = 0;
    srv.delete('nodes', 'b');
    await until('delete after relist', () => seen.includes('-b'));
    assert.deepEqual([...inf.store.keys()].sort(), ['c', 'd']);
  } finally {
    await inf.stop();
    c.close();
    await srv.close();
  }
});

test('config: kubeconfig (YAML, token file, CA data), in-cluster, flags', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'k8s-cfg-'));
  try {
    fs.writeFileSync(path.join(dir, 'tok'), 'abc\n');
    const kc = path.join(dir, 'config');
    fs.writeFileSync(kc, [
      'apiVersion: v1', 'kind: Config', 'current-context: two',
      'clusters:', '- name: c1', '  cluster:', '    server: https://10.0.0.1:6443', `    certificate-authority-data: ${Buffer.from('CA').toString('base64')}`,
      'users:', '- name: u1', '  user:', '    tokenFile: tok',
      'contexts:', '- name: one', '  context: {cluster: nope, user: u1}', '- name: two', '  context:', '    cluster: c1', '    user: u1', '',
    ].join('\n'));
    const conn = fromKubeconfig(kc);
    assert.equal(conn.server, 'https://10.0.0.1:6443');
    assert.equal(conn.ca?.toString(), 'CA');
    assert.equal(conn.tokenFile, path.join(dir, 'tok'));
    fs.writeFileSync(kc, 'current-context: x\ncontexts: []\n');
    assert.throws(() => fromKubeconfig(kc), (e: unknown) => e instanceof UsageError && /no context named "x"/.test(e.message));
    fs.writeFileSync(kc, ': : :\n\t-');
    assert.throws(() => fromKubeconfig(kc), UsageError);
    assert.throws(() => fromKubeconfig(path.join(dir, 'missing')), UsageError);

    assert.throws(() => inCluster({}, dir), /KUBERNETES_SERVICE_HOST/);
    fs.writeFileSync(path.join(dir, 'token'), 'sa-token');
    fs.writeFileSync(path.join(dir, 'ca.crt'), 'CA2');
    const ic = inCluster({ KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443' }, dir);
    assert.equal(ic.server, 'https://10.96.0.1:443');
    assert.equal(ic.ca?.toString(), 'CA2');

    const off = parseKubeFlags({}, {});
    assert.equal(off.enabled, false);
    assert.throws(() => parseKubeFlags({ kubeconfig: path.join(dir, 'kc2') }, { WEAVE_KUBE: '1', NODE_NAME: 'node-1' }), /cannot read the kubeconfig/);
    fs.writeFileSync(kc, JSON.stringify({ 'current-context': 'f', contexts: [{ name: 'f', context: { cluster: 'f' } }], clusters: [{ name: 'f', cluster: { server: 'http://127.0.0.1:1' } }] }));
    const on = parseKubeFlags({ kubeconfig: kc }, { WEAVE_KUBE: '1', NODE_NAME: 'node-1' });
    assert.equal(on.enabled, true);
    assert.equal(on.nodeName, 'node-1');
    assert.equal(on.connection?.server, 'http://127.0.0.1:1');
    assert.deepEqual(on.configMap, { namespace: 'kube-system', name: 'weave-net' });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  assert.throws(() => parseKubeFlags({ kube: true, kubeNodeName: 'Bad_Name', kubeconfig: '/x' }, {}), /invalid node name/);
  assert.throws(() => parseKubeFlags({ kubePeersConfigmap: 'nons' }, {}), /NAMESPACE\/NAME/);
});
