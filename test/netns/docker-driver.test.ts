// Docker's own client against the weave network and IPAM driver: two lab hosts with an encrypted
// mesh, a dockerd 20.10 in each (test/lab/docker.ts: own data root, exec root, pid file, socket and
// plugin directory). `docker network create -d weave` on both, containers on both ping each other by
// address and by name (weaveDNS), `docker network connect/disconnect`, removal frees the address,
// `docker network rm` frees the pool, a dockerd restart keeps running containers reachable and a
// router restart keeps every endpoint. The session is printed (the closing note's transcript).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Lab, type Host } from '../lab/lab';
import { waitFor } from '../lab/exec';
import { DockerDaemon } from '../lab/docker';

const PASSWORD = 'docker-test-password';
const SUBNET = '10.40.1.0/24';

function say(line: string): void {
  process.stdout.write(`# ${line.split('\n').join('\n#   ')}\n`);
}

async function docker(d: DockerDaemon, args: string[], opts: { allowFail?: boolean } = {}): Promise<string> {
  const r = await d.docker(args, { ...opts, timeoutMs: 90_000 });
  say(`${d.host.name}$ docker ${args.join(' ')}\n${(r.stdout + r.stderr).trim()}`);
  return r.stdout.trim();
}

async function weave(h: Host, d: DockerDaemon, args: string[]): Promise<string> {
  const r = await h.weave(args, { env: d.env() });
  say(`${h.name}$ weave ${args.join(' ')}\n${r.stdout.trim()}`);
  return r.stdout;
}

function startRouter(h: Host, d: DockerDaemon, peers: string[]): void {
  h.startRouter(['--nickname', h.name, '--ipalloc-init', 'consensus=2', ...d.routerFlags(), ...peers], { WEAVE_PASSWORD: PASSWORD });
}

async function pingOk(d: DockerDaemon, from: string, to: string): Promise<void> {
  await waitFor(`${from} on ${d.host.name} to reach ${to}`, async () => (await d.docker(['exec', from, 'ping', '-c', '1', '-W', '1', to], { allowFail: true })).code === 0, { timeoutMs: 45_000, intervalMs: 500 });
  const out = await docker(d, ['exec', from, 'ping', '-c', '2', '-i', '0.3', to]);
  assert.match(out, /2 packets received/);
}

/** The "docker:" allocations of a router's IPAM: ident -> addresses. */
async function dockerAllocations(h: Host): Promise<Map<string, string[]>> {
  const rep = await h.report();
  return new Map((rep.ipam.status.allocations as Array<{ ident: string; addrs: string[] }>).filter((a) => a.ident.startsWith('docker:')).map((a) => [a.ident, a.addrs]));
}

async function allocated(h: Host): Promise<string[]> {
  return [...(await dockerAllocations(h)).values()].flat().sort();
}

test('docker network create -d weave on two hosts: containers reach each other by address and name; connect, disconnect, removal, restarts', { timeout: 600_000 }, async () => {
  const lab = await Lab.create();
  const daemons: DockerDaemon[] = [];
  try {
    const [h1, h2] = [await lab.addHost('h1'), await lab.addHost('h2')];
    const [d1, d2] = [new DockerDaemon(h1), new DockerDaemon(h2)];
    daemons.push(d1, d2);
    await Promise.all([d1.start(), d2.start()]);
    startRouter(h1, d1, []);
    startRouter(h2, d2, [h1.ip]);
    await Promise.all([h1.waitReady(), h2.waitReady()]);
    await waitFor('the plugin to be served on both hosts', async () => (await h1.report()).docker.plugin === 'serving' && (await h2.report()).docker.plugin === 'serving');

    // the same network on both hosts (Docker keeps each host's record; the subnet and the mesh are shared)
    for (const d of [d1, d2]) await docker(d, ['network', 'create', '-d', 'weave', '--ipam-driver', 'weave', '--subnet', SUBNET, 'wnet']);
    assert.match(await docker(d1, ['network', 'ls', '--filter', 'driver=weave']), /wnet\s+weave/);

    const a1 = await d1.runContainer('c1', 'wnet');
    const a2 = await d2.runContainer('c2', 'wnet');
    say(`c1 ${a1}, c2 ${a2}`);
    assert.match(a1, /^10\.40\.1\.\d+$/);
    assert.match(a2, /^10\.40\.1\.\d+$/);
    assert.notEqual(a1, a2, 'the mesh\'s IPAM never hands out one address twice');
    await docker(d1, ['exec', 'c1', 'ip', '-4', 'addr', 'show']);
    await docker(d1, ['exec', 'c1', 'ip', 'route']);
    await weave(h1, d1, ['status', 'connections']);

    // by address across the encrypted mesh, both ways
    await pingOk(d1, 'c1', a2);
    await pingOk(d2, 'c2', a1);
    // by name: Docker's embedded DNS forwards to weaveDNS through the weave interface
    await waitFor('c2 named in weaveDNS on h1', async () => (await h1.weave(['dns-lookup', 'c2'], { allowFail: true })).stdout.trim() === a2, { timeoutMs: 30_000, intervalMs: 300 });
    await weave(h1, d1, ['dns-lookup', 'c2']);
    await pingOk(d1, 'c1', 'c2.weave.local');
    await pingOk(d2, 'c2', 'c1.weave.local');
    assert.match(await weave(h1, d1, ['ps']), new RegExp(`^c1 \\S+ \\S+ ${a1.replace(/\./g, '\\.')}/24$`, 'm'), 'weave ps names the container');
    await weave(h1, d1, ['status', 'docker']);

    // docker network connect / disconnect
    await docker(d1, ['run', '-d', '--name', 'c3', '--net', 'bridge', 'weave.local/busybox:1', 'sleep', '3600']);
    const before3 = await allocated(h1);
    await docker(d1, ['network', 'connect', 'wnet', 'c3']);
    const a3 = await d1.addressOn('c3', 'wnet');
    assert.match(a3, /^10\.40\.1\.\d+$/);
    await pingOk(d1, 'c3', a2);
    await waitFor('c3 named in weaveDNS on h2', async () => (await h2.weave(['dns-lookup', 'c3'], { allowFail: true })).stdout.trim() === a3, { timeoutMs: 30_000, intervalMs: 300 });
    await docker(d1, ['network', 'disconnect', 'wnet', 'c3']);
    assert.doesNotMatch((await d1.docker(['exec', 'c3', 'ip', '-o', 'link'])).stdout, /ethwe/, 'disconnect took the weave interface');
    assert.deepEqual(await allocated(h1), before3, 'disconnect freed c3\'s address');
    await waitFor('c3\'s name removed', async () => (await h2.weave(['dns-lookup', 'c3'], { allowFail: true })).stdout.trim() === '', { timeoutMs: 30_000, intervalMs: 300 });

    // removal frees the address
    const a4 = await d1.runContainer('c4', 'wnet');
    assert.ok((await allocated(h1)).includes(a4));
    await docker(d1, ['rm', '-f', 'c4']);
    assert.ok(!(await allocated(h1)).includes(a4), 'docker rm freed c4\'s address');

    // dockerd restarts with the containers running (live-restore): still reachable, nothing handed out twice
    const held2 = await allocated(h2);
    await d2.restart();
    say('h2: dockerd restarted');
    await pingOk(d1, 'c1', a2);
    await pingOk(d2, 'c2', a1);
    assert.deepEqual(await allocated(h2), held2, 'Docker\'s replay of its pool and addresses took nothing new');
    const a5 = await d2.runContainer('c5', 'wnet');
    assert.ok(![a1, a2].includes(a5), `a container made after the restart gets a new address (${a5})`);
    await pingOk(d2, 'c5', a1);

    // the router restarts: every endpoint stays (veths, routes, records, addresses)
    const held1 = await allocated(h1);
    const r1 = h1.routers[h1.routers.length - 1];
    r1.child.kill('SIGTERM');
    await r1.exited;
    startRouter(h1, d1, [h2.ip]);
    await h1.waitReady();
    say('h1: router restarted');
    await waitFor('the plugin served again on h1', async () => (await h1.report()).docker.plugin === 'serving');
    const rep = await h1.report();
    assert.deepEqual(rep.docker.endpoints.map((e: { container?: { name: string } }) => e.container?.name).sort(), ['c1'], 'the restarted router keeps c1\'s endpoint');
    assert.deepEqual(await allocated(h1), held1, 'and its addresses');
    await pingOk(d2, 'c2', a1);
    await pingOk(d1, 'c1', 'c5.weave.local');
    // the restarted router serves Docker: a new container, then its removal
    const a6 = await d1.runContainer('c6', 'wnet');
    assert.ok(![a1, a2, a5].includes(a6));
    await pingOk(d1, 'c6', a5);

    // network rm frees the pool (and its gateway) once its containers are gone
    await docker(d1, ['rm', '-f', 'c1', 'c3', 'c6']);
    await docker(d1, ['network', 'rm', 'wnet']);
    const after = await h1.report();
    assert.deepEqual(after.docker.pools, [], 'docker network rm freed the pool');
    assert.deepEqual(after.docker.networks, []);
    assert.deepEqual(await allocated(h1), [], 'and every address of it (the gateway too)');
    assert.equal(after.docker.endpoints.length, 0);
    await weave(h1, d1, ['status', 'docker']);

    // dockerd turned forwarding on itself in these hosts, so its FORWARD policy is DROP: the router's
    // ACCEPT rules for the overlay's interfaces are what let c1 and c2 talk; reset removes them
    const forward = async (): Promise<string> => (await h2.exec(['iptables', '-w', '5', '-S', 'FORWARD'])).stdout;
    const before = await forward();
    say(`h2$ iptables -S FORWARD\n${before.trim()}`);
    assert.match(before, /^-P FORWARD DROP$/m, 'Docker\'s policy (the case the rules are for)');
    assert.match(before, /-i weave-tun .*weave: overlay forwarding.* -j ACCEPT/);
    await h2.weave(['reset']);
    assert.doesNotMatch(await forward(), /weave: overlay forwarding/, 'weave reset removed them');
  } finally {
    if (process.env.WEAVE_TEST_DEBUG) for (const h of lab.hosts) for (const r of h.routers) process.stdout.write(r.output().split('\n').filter((l) => l.includes('"docker"')).map((l) => `# ${h.name} ${l}\n`).join(''));
    for (const d of daemons) await d.stop();
    await lab.cleanup();
  }
});
