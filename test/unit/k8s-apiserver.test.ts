// The fixture API server (test/lab/apiserver.ts) over plain HTTP: discovery, CRUD with resourceVersion
// conflicts, patches, watches (replay, live, bookmarks, 410 after compaction, selectors), stop/start,
// the request counters, bearer tokens, the delay knob and the control socket.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as http from 'node:http';
import * as os from 'node:os';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FakeApiServer, nodeObject, parseLabelSelector, parseFieldSelector, Obj } from '../lab/apiserver';

interface Reply { status: number; body: any }

function call(base: string | { socketPath: string }, method: string, p: string, body?: unknown, headers: Record<string, string> = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const opts: http.RequestOptions = typeof base === 'string'
      ? { ...urlParts(base), method, path: p }
      : { socketPath: base.socketPath, method, path: p };
    opts.headers = { 'Content-Type': 'application/json', ...headers, ...(data ? { 'Content-Length': String(Buffer.byteLength(data)) } : {}) };
    const req = http.request(opts, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (text += d));
      res.on('end', () => {
        let parsed: unknown = text;
        try { parsed = JSON.parse(text); } catch { /* plain text (healthz) */ }
        resolve({ status: res.statusCode ?? 0, body: parsed });
      });
    });
    req.on('error', reject);
    req.end(data);
  });
}
function urlParts(base: string) { const u = new URL(base); return { host: u.hostname, port: Number(u.port) }; }

/** A watch as a queue of decoded events. */
function watch(base: string, p: string): { next: (ms?: number) => Promise<any>; ended: Promise<void>; close: () => void } {
  const queue: any[] = [];
  let wake: (() => void) | undefined;
  let buf = '';
  let endedResolve!: () => void;
  const ended = new Promise<void>((r) => (endedResolve = r));
  const req = http.request({ ...urlParts(base), method: 'GET', path: p }, (res) => {
    res.setEncoding('utf8');
    res.on('data', (d: string) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) { queue.push(JSON.parse(buf.slice(0, i))); buf = buf.slice(i + 1); }
      wake?.();
    });
    res.on('end', () => { endedResolve(); wake?.(); });
    res.on('error', () => endedResolve());
  });
  req.on('error', () => endedResolve());
  req.end();
  return {
    ended,
    close: () => req.destroy(),
    next: async (ms = 3000) => {
      const deadline = Date.now() + ms;
      while (queue.length === 0) {
        if (Date.now() > deadline) throw new Error(`no watch event within ${ms} ms`);
        await new Promise<void>((r) => { wake = r; setTimeout(r, 50); });
      }
      return queue.shift();
    },
  };
}

test('fixture API server: discovery, CRUD, conflicts, patches', async () => {
  const srv = new FakeApiServer();
  await srv.start();
  try {
    const u = srv.url;
    const v1 = await call(u, 'GET', '/api/v1');
    assert.equal(v1.status, 200);
    assert.ok(v1.body.resources.some((r: any) => r.name === 'nodes' && !r.namespaced && r.verbs.includes('watch')));
    const net = await call(u, 'GET', '/apis/networking.k8s.io/v1');
    assert.deepEqual(net.body.resources.map((r: any) => r.name), ['networkpolicies']);
    assert.equal((await call(u, 'GET', '/apis')).body.groups[0].name, 'networking.k8s.io');
    assert.equal((await call(u, 'GET', '/api/v1/nodes/x')).status, 404);
    assert.equal((await call(u, 'GET', '/api/v1/widgets')).status, 404);

    const created = await call(u, 'POST', '/api/v1/nodes', nodeObject('n1', '198.18.0.1'));
    assert.equal(created.status, 201);
    assert.equal(created.body.kind, 'Node');
    assert.ok(created.body.metadata.uid && created.body.metadata.resourceVersion);
    assert.equal((await call(u, 'POST', '/api/v1/nodes', nodeObject('n1', '198.18.0.1'))).status, 409);
    // a namespaced object in a namespace that does not exist
    assert.equal((await call(u, 'POST', '/api/v1/namespaces/nope/configmaps', { metadata: { name: 'c' } })).status, 404);

    const cm = await call(u, 'POST', '/api/v1/namespaces/kube-system/configmaps', { metadata: { name: 'weave-net' }, data: { a: '1' } });
    assert.equal(cm.status, 201);
    const rv1 = cm.body.metadata.resourceVersion;
    const upd = await call(u, 'PUT', '/api/v1/namespaces/kube-system/configmaps/weave-net', { ...cm.body, data: { a: '2' } });
    assert.equal(upd.status, 200);
    assert.notEqual(upd.body.metadata.resourceVersion, rv1);
    // the same stale resourceVersion again: a conflict, and nothing changed
    const stale = await call(u, 'PUT', '/api/v1/namespaces/kube-system/configmaps/weave-net', { ...cm.body, data: { a: '3' } });
    assert.equal(stale.status, 409);
    assert.equal(stale.body.reason, 'Conflict');
    assert.equal(srv.get('configmaps', 'weave-net', 'kube-system')?.data && (srv.get('configmaps', 'weave-net', 'kube-system') as any).data.a, '2');

    const merged = await call(u, 'PATCH', '/api/v1/nodes/n1', { metadata: { labels: { role: 'db', 'kubernetes.io/os': null } } },
      { 'Content-Type': 'application/merge-patch+json' });
    assert.equal(merged.status, 200);
    assert.equal(merged.body.metadata.labels.role, 'db');
    assert.equal(merged.body.metadata.labels['kubernetes.io/os'], undefined);
    const jp = await call(u, 'PATCH', '/api/v1/nodes/n1', [{ op: 'replace', path: '/metadata/labels/role', value: 'web' }],
      { 'Content-Type': 'application/json-patch+json' });
    assert.equal(jp.body.metadata.labels.role, 'web');
    assert.equal((await call(u, 'PATCH', '/api/v1/nodes/n1', {}, { 'Content-Type': 'text/plain' })).status, 415);

    assert.equal((await call(u, 'GET', '/api/v1/namespaces/kube-system')).body.kind, 'Namespace');
    assert.equal((await call(u, 'DELETE', '/api/v1/nodes/n1')).status, 200);
    assert.equal((await call(u, 'GET', '/api/v1/nodes/n1')).status, 404);
    assert.equal((await call(u, 'DELETE', '/api/v1/nodes/n1')).status, 404);

    const c = srv.counts();
    assert.equal(c.create, 4);
    assert.equal(c.update, 2);
    assert.equal(c.patch, 3);
    assert.equal(c.delete, 2);
  } finally {
    await srv.close();
  }
});

test('fixture API server: list and watch with selectors, replay, bookmarks, 410 after compaction', async () => {
  const srv = new FakeApiServer({ bookmarkMs: 100 });
  await srv.start();
  try {
    const u = srv.url;
    srv.create('nodes', nodeObject('a', '198.18.0.1', { zone: 'x' }));
    srv.create('nodes', nodeObject('b', '198.18.0.2', { zone: 'y' }));
    srv.create('pods', { metadata: { name: 'p1', labels: { app: 'web' } }, spec: { nodeName: 'a' } }, 'default');
    srv.create('pods', { metadata: { name: 'p2', labels: { app: 'db' } }, spec: { nodeName: 'b' } }, 'default');
    const list = await call(u, 'GET', '/api/v1/nodes');
    assert.equal(list.body.kind, 'NodeList');
    assert.deepEqual(list.body.items.map((o: Obj) => o.metadata.name), ['a', 'b']);
    const listRv = list.body.metadata.resourceVersion;
    assert.deepEqual((await call(u, 'GET', '/api/v1/pods?fieldSelector=spec.nodeName%3Da')).body.items.map((o: Obj) => o.metadata.name), ['p1']);
    assert.deepEqual((await call(u, 'GET', '/api/v1/nodes?fieldSelector=metadata.name!%3Da')).body.items.map((o: Obj) => o.metadata.name), ['b']);
    assert.deepEqual((await call(u, 'GET', '/api/v1/namespaces/default/pods?labelSelector=app%20in%20(db,x)')).body.items.map((o: Obj) => o.metadata.name), ['p2']);
    assert.equal((await call(u, 'GET', '/api/v1/pods?fieldSelector=spec.bogus%3D1')).status, 400);

    // a watch from the list's resourceVersion sees only what follows, with bookmarks
    const w = watch(u, `/api/v1/nodes?watch=true&resourceVersion=${listRv}&allowWatchBookmarks=true`);
    srv.create('nodes', nodeObject('c', '198.18.0.3'));
    let ev = await w.next();
    while (ev.type === 'BOOKMARK') ev = await w.next();
    assert.equal(ev.type, 'ADDED');
    assert.equal(ev.object.metadata.name, 'c');
    srv.delete('nodes', 'a');
    ev = await w.next();
    while (ev.type === 'BOOKMARK') ev = await w.next();
    assert.equal(ev.type, 'DELETED');
    assert.equal(ev.object.metadata.name, 'a');
    ev = await w.next();
    assert.equal(ev.type, 'BOOKMARK');
    assert.equal(ev.object.metadata.resourceVersion, srv.resourceVersion);
    assert.equal(srv.watchCount, 1);

    // replay from an old resourceVersion; a field-selected watch
    const replay = watch(u, `/api/v1/nodes?watch=1&resourceVersion=${listRv}`);
    assert.equal((await replay.next()).object.metadata.name, 'c');
    assert.equal((await replay.next()).type, 'DELETED');
    replay.close();
    const sel = watch(u, `/api/v1/pods?watch=true&resourceVersion=${listRv}&fieldSelector=spec.nodeName%3Db`);
    srv.create('pods', { metadata: { name: 'p3' }, spec: { nodeName: 'a' } }, 'default');
    srv.create('pods', { metadata: { name: 'p4' }, spec: { nodeName: 'b' } }, 'default');
    assert.equal((await sel.next()).object.metadata.name, 'p4');
    sel.close();
    // no resourceVersion: the current state as ADDED first
    const fresh = watch(u, '/api/v1/nodes?watch=true');
    const names = [(await fresh.next()).object.metadata.name, (await fresh.next()).object.metadata.name].sort();
    assert.deepEqual(names, ['b', 'c']);
    fresh.close();

    // compaction: an old resourceVersion is 410 Expired; open watches can be expired too
    srv.compact(true);
    let e2 = await w.next();
    while (e2.type === 'BOOKMARK') e2 = await w.next();
    assert.equal(e2.type, 'ERROR');
    assert.equal(e2.object.code, 410);
    await w.ended;
    const old = watch(u, `/api/v1/nodes?watch=true&resourceVersion=${listRv}`);
    const gone = await old.next();
    assert.equal(gone.type, 'ERROR');
    assert.equal(gone.object.reason, 'Expired');
    await old.ended;
    assert.ok(srv.counts().watch >= 5);
    assert.ok(srv.counts().list >= 4);
  } finally {
    await srv.close();
  }
});

test('fixture API server: stop/start keeps the store, token, delay and the control socket', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'k8s-fixture-'));
  const sock = path.join(dir, 'control.sock');
  const srv = new FakeApiServer({ token: 'sekret', controlSocket: sock });
  await srv.start();
  try {
    const u = srv.url;
    const auth = { Authorization: 'Bearer sekret' };
    assert.equal((await call(u, 'GET', '/api/v1/nodes')).status, 401);
    assert.equal((await call(u, 'POST', '/api/v1/nodes', nodeObject('a', '198.18.0.1'), auth)).status, 201);
    const w = watch(u, '/api/v1/nodes?watch=true'); // 401s: no token
    await w.ended;

    // stop from the control socket: the API is down, the control socket answers, the store survives
    assert.equal((await call({ socketPath: sock }, 'POST', '/_fixture/stop')).status, 200);
    assert.equal(srv.running, false);
    await assert.rejects(call(u, 'GET', '/api/v1/nodes', undefined, auth));
    assert.equal((await call({ socketPath: sock }, 'POST', '/api/v1/nodes', nodeObject('b', '198.18.0.2'))).status, 201);
    await call({ socketPath: sock }, 'POST', '/_fixture/start');
    const l = await call(u, 'GET', '/api/v1/nodes', undefined, auth);
    assert.deepEqual(l.body.items.map((o: Obj) => o.metadata.name), ['a', 'b']);

    await call({ socketPath: sock }, 'POST', '/_fixture/delay?ms=300');
    const t0 = Date.now();
    await call(u, 'GET', '/api/v1/nodes/a', undefined, auth);
    assert.ok(Date.now() - t0 >= 250, 'the delay knob delays');
    srv.delayMs = 0;
    const counts = await call({ socketPath: sock }, 'GET', '/_fixture/counts');
    assert.equal(counts.body.counts.get, 1);
    assert.equal(counts.body.running, true);
  } finally {
    await srv.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('fixture selectors parse the grammar and refuse junk', () => {
  const ls = parseLabelSelector('app=web,tier!=db,env in (a, b),!legacy,canary');
  assert.equal(ls({ app: 'web', tier: 'fe', env: 'b', canary: '' }), true);
  assert.equal(ls({ app: 'web', tier: 'db', env: 'b', canary: '' }), false);
  assert.equal(ls({ app: 'web', env: 'b', canary: '', legacy: '1' }), false);
  assert.equal(ls({ app: 'web', env: 'c', canary: '' }), false);
  assert.equal(parseLabelSelector('x notin (1)')({}), true);
  assert.throws(() => parseLabelSelector('a=b,,('));
  assert.throws(() => parseFieldSelector('nope'));
  assert.equal(parseFieldSelector('metadata.name==x')({ metadata: { name: 'x' } }), true);
});
