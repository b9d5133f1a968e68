// Containers by name against a fake Docker Engine API on a unix socket: the CLI's resolver
// (docker/resolve.ts: paths, PIDs and netns names pass, containers become /proc/PID/ns/net, missing
// and stopped containers and a missing Docker say what to do), `weave ps`'s names by namespace key,
// the event stream (docker/engine.ts) and the router's naming of Docker endpoints (docker/names.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as http from 'http';
import * as os from 'os';
import * as path from 'path';
import { realClock } from '../../lib/clock';
import { UsageError } from '../../lib/errors';
import { silentLogger } from '../../lib/log';
import type { ContainerRef } from '../../lib/subsystem';
import { netnsKeyOfStat } from '../../host/netns';
import { DockerEngine, type DockerEvent } from '../../docker/engine';
import { containersByNetnsKey, resolveTarget } from '../../docker/resolve';
import { ContainerNames } from '../../docker/names';

interface FakeDocker { socket: string; events: http.ServerResponse[]; requests: string[]; close(): Promise<void> }

async function fakeDocker(): Promise<FakeDocker> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'weave-fake-docker-'));
  const socket = path.join(dir, 'docker.sock');
  const events: http.ServerResponse[] = [];
  const requests: string[] = [];
  const web = { Id: 'f00d'.repeat(16), Name: '/web', State: { Running: true, Pid: process.pid, Status: 'running' } };
  const server = http.createServer((req, res) => {
    requests.push(req.url ?? '');
    const json = (status: number, body: unknown): void => { res.writeHead(status, { 'Content-Type': 'application/json' }); res.end(JSON.stringify(body)); };
    const u = req.url ?? '';
    if (u.startsWith('/events')) {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.flushHeaders();
      events.push(res);
      return;
    }
    if (u === '/containers/web/json' || u === `/containers/${web.Id}/json`) return json(200, web);
    if (u === '/containers/idle/json') return json(200, { Id: 'b'.repeat(64), Name: '/idle', State: { Running: false, Pid: 0, Status: 'exited' } });
    if (u === '/containers/json') return json(200, [{ Id: web.Id }, { Id: 'gone' }]);
    if (u.startsWith('/networks?filters=')) return json(200, [{ Id: 'n1', Name: 'wnet', Driver: 'weave' }]);
    if (u === '/networks/n1') return json(200, { Id: 'n1', Name: 'wnet', Driver: 'weave', Containers: { [web.Id]: { Name: 'web', EndpointID: 'e1' }, other: { Name: 'elsewhere', EndpointID: 'e9' } } });
    json(404, { message: `No such container: ${u.split('/')[2]}` });
  });
  await new Promise<void>((r) => server.listen(socket, r));
  return {
    socket, events, requests,
    close: async () => {
      for (const e of events) e.destroy();
      await new Promise<void>((r) => { server.close(() => r()); server.closeAllConnections(); });
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function until(what: string, fn: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !fn(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(fn(), what);
}

test('resolveTarget: namespaces pass as they are, containers become their process\'s namespace; each failure says what to do', async () => {
  const d = await fakeDocker();
  try {
    const engine = new DockerEngine(d.socket);
    const none = (): boolean => false;
    assert.deepEqual(await resolveTarget('/proc/1/ns/net', engine, none), { netns: '/proc/1/ns/net' });
    assert.deepEqual(await resolveTarget('4242', engine, none), { netns: '4242' });
    assert.deepEqual(await resolveTarget('blue', engine, (n) => n === 'blue'), { netns: 'blue' });
    assert.equal(d.requests.length, 0, 'Docker is not asked for paths, PIDs and netns names');
    assert.deepEqual(await resolveTarget('web', engine, none), { netns: `/proc/${process.pid}/ns/net`, container: { id: 'f00d'.repeat(16), name: 'web' } });
    await assert.rejects(resolveTarget('idle', engine, none), (e: unknown) => e instanceof UsageError && /container idle is not running \(exited\): its network namespace exists only while it runs; start it first/.test(e.message));
    await assert.rejects(resolveTarget('nosuch', engine, none), (e: unknown) => e instanceof UsageError && /no Docker container and no network namespace \(ip netns\) named "nosuch": check the name with docker ps or ip netns list/.test(e.message));
    await assert.rejects(resolveTarget('a b', engine, none), (e: unknown) => e instanceof UsageError && /neither a Docker container name or ID, a namespace name \(ip netns\), an absolute path nor a PID/.test(e.message));
    await assert.rejects(resolveTarget('relative/path', engine, none), /neither a Docker container/);
    const gone = new DockerEngine(path.join(os.tmpdir(), `no-docker-${process.pid}.sock`));
    await assert.rejects(resolveTarget('web', gone, none), (e: unknown) => e instanceof UsageError && /"web" is not a network namespace \(ip netns\), and Docker cannot be asked for a container of that name: Docker is not running: nothing answers at \S+ \(.*ENOENT.*\); start dockerd, or point DOCKER_HOST \/ --docker-socket at its socket/.test(e.message));
  } finally {
    await d.close();
  }
});

test('containersByNetnsKey: running containers by their namespace key; none when Docker is not running', async () => {
  const d = await fakeDocker();
  try {
    const m = await containersByNetnsKey(new DockerEngine(d.socket));
    assert.deepEqual([...m.entries()], [[netnsKeyOfStat(fs.statSync('/proc/self/ns/net')), { id: 'f00d'.repeat(16), name: 'web' }]], 'the one that went away between list and inspect is skipped');
    assert.equal((await containersByNetnsKey(new DockerEngine('/nonexistent/docker.sock'))).size, 0);
  } finally {
    await d.close();
  }
});

test('events: lines split across writes are joined, garbage lines skipped, the end reported once', async () => {
  const d = await fakeDocker();
  try {
    const got: DockerEvent[] = [];
    let ends = 0;
    let opened = false;
    new DockerEngine(d.socket).events({ type: ['network'] }, (e) => got.push(e), () => { ends++; }, () => { opened = true; });
    await until('the stream opened', () => d.events.length === 1 && opened);
    assert.match(d.requests.at(-1)!, /^\/events\?filters=%7B%22type%22%3A%5B%22network%22%5D%7D$/);
    const s = d.events[0];
    s.write('{"Type":"network","Action":"conn');
    s.write('ect","Actor":{"ID":"n1"}}\nnot json\n\n{"Type":"container","Action":"rename"}\n');
    await until('two events', () => got.length === 2);
    assert.deepEqual(got.map((e) => `${e.Type}/${e.Action}`), ['network/connect', 'container/rename']);
    s.end();
    await until('the end', () => ends === 1);
  } finally {
    await d.close();
  }
});

test('names: each joined Docker endpoint gets its container\'s name (record and weaveDNS) once; the stream is followed again after it ends', async () => {
  const d = await fakeDocker();
  const set: Array<[string, ContainerRef]> = [];
  const registered: Array<[string, string, string[]]> = [];
  const eps = [
    { key: 'docker:e1', addrs: ['10.40.1.2/24'], docker: { endpointId: 'e1' } as { endpointId: string } },
    { key: '4:100', addrs: ['10.32.0.9/12'] },
  ];
  const names = new ContainerNames({
    engine: new DockerEngine(d.socket),
    driver: 'weave',
    endpoints: { list: () => eps, setContainer: async (k, c) => { set.push([k, c]); return true; } },
    names: () => ({ register: (k, n, a) => { registered.push([k, n, a]); return `${n}.weave.local.`; }, unregister: () => 0 }),
    clock: realClock,
    log: silentLogger(),
  });
  try {
    names.start();
    await until('named at the stream\'s start', () => registered.length === 1);
    assert.equal(names.state, 'connected');
    assert.deepEqual(registered[0], ['docker:e1', 'web', ['10.40.1.2/24']]);
    assert.deepEqual(set[0], ['docker:e1', { id: 'f00d'.repeat(16), name: 'web' }]);
    // a connect of another driver's network is not ours; one of ours syncs, and nothing changed
    const syncs = names.counters.syncs;
    d.events[0].write('{"Type":"network","Action":"connect","Actor":{"Attributes":{"type":"bridge"}}}\n');
    d.events[0].write('{"Type":"network","Action":"connect","Actor":{"Attributes":{"type":"weave"}}}\n');
    await until('a sync for the weave event', () => names.counters.syncs === syncs + 1);
    assert.equal(registered.length, 1, 'an unchanged name is not registered again');
    // dockerd goes away: the stream ends, the watcher says so and follows the new stream
    d.events[0].destroy();
    await until('not connected', () => names.state.startsWith('not connected'));
    await until('following again', () => d.events.length === 2 && names.state === 'connected');
  } finally {
    names.stop();
    await d.close();
  }
});
