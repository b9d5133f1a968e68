// Bad input through Docker's own client and the weave CLI, one lab host with its dockerd: each gets a
// message that says what to fix, and leaves no network, endpoint, pool or address behind. Also the
// CLI's containers by name: weave attach/ps/dns-add/detach with a Docker container's name.
import * as net from 'node:net';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Lab, type Host } from '../lab/lab';
import { waitFor } from '../lab/exec';
import { BUSYBOX_IMAGE, DockerDaemon } from '../lab/docker';

/** What a refused docker command printed (it must fail). */
async function refused(d: DockerDaemon, args: string[]): Promise<string> {
  const r = await d.docker(args, { allowFail: true, timeoutMs: 90_000 });
  assert.notEqual(r.code, 0, `docker ${args.join(' ')} must fail; it printed ${r.stdout}`);
  process.stdout.write(`# $ docker ${args.join(' ')}\n#   ${r.stderr.trim()}\n`);
  return r.stderr;
}

/** What a refused weave command printed (exit 2: a usage error). */
async function weaveRefused(h: Host, args: string[], env: Record<string, string>): Promise<string> {
  const r = await h.weave(args, { env, allowFail: true });
  assert.equal(r.code, 2, `weave ${args.join(' ')} must fail with a usage error; exit ${r.code}: ${r.stdout}${r.stderr}`);
  process.stdout.write(`# $ weave ${args.join(' ')}\n#   ${r.stderr.trim()}\n`);
  return r.stderr;
}

/** The router's Docker state and its docker: allocations. */
async function leftovers(h: Host): Promise<{ networks: number; pools: number; endpoints: number; addrs: string[] }> {
  const rep = await h.report();
  const addrs = (rep.ipam.status.allocations as Array<{ ident: string; addrs: string[] }>).filter((a) => a.ident.startsWith('docker:')).flatMap((a) => a.addrs).sort();
  return { networks: rep.docker.networks.length, pools: rep.docker.pools.length, endpoints: rep.docker.endpoints.length, addrs };
}

test('docker and weave CLI bad input: each refused with what to fix, nothing half-made; containers by name', { timeout: 600_000 }, async () => {
  const lab = await Lab.create();
  let d: DockerDaemon | undefined;
  try {
    const h = await lab.addHost('h1');
    d = new DockerDaemon(h);
    await d.start();
    h.startRouter(['--nickname', 'h1', '--ipalloc-init', 'consensus=1', ...d.routerFlags()]);
    await h.waitReady();
    await waitFor('the plugin to be served', async () => (await h.report()).docker.plugin === 'serving');
    const denv = d.env();
    const clean = await leftovers(h);
    const create = (extra: string[], name: string): string[] => ['network', 'create', '-d', 'weave', ...extra, name];
    const netsNow = async (): Promise<string> => (await d!.docker(['network', 'ls', '--format', '{{.Name}}'])).stdout;

    // unknown driver option, unknown IPAM option, IPv6
    assert.match(await refused(d, create(['--ipam-driver', 'weave', '-o', 'color=blue'], 'bad1')), /unknown driver option color: the weave driver takes none/);
    assert.match(await refused(d, create(['--ipam-driver', 'weave', '--ipam-opt', 'x=1'], 'bad2')), /unknown IPAM option x: weave's IPAM takes none/);
    // Docker's own IPAM would hand out addresses on this host only
    assert.match(await refused(d, create([], 'bad3')), /create it with --ipam-driver weave/);
    // a subnet outside the range
    assert.match(await refused(d, create(['--ipam-driver', 'weave', '--subnet', '192.168.7.0/24'], 'bad4')), /subnet 192\.168\.7\.0\/24 is outside weave's address range 10\.32\.0\.0\/12 \(--ipalloc-range\): give a subnet inside it/);
    assert.deepEqual(await leftovers(h), clean, 'the refused networks left nothing');
    assert.doesNotMatch(await netsNow(), /bad\d/);

    // overlapping subnets: nested, and the same subnet twice on one host
    await d.docker(create(['--ipam-driver', 'weave', '--subnet', '10.40.0.0/16'], 'big'));
    const withBig = await leftovers(h);
    assert.match(await refused(d, create(['--ipam-driver', 'weave', '--subnet', '10.40.3.0/24'], 'nested')), /subnet 10\.40\.3\.0\/24 overlaps 10\.40\.0\.0\/16, the subnet of Docker network [0-9a-f]{12} on this host: give a subnet that does not overlap it/);
    assert.match(await refused(d, create(['--ipam-driver', 'weave', '--subnet', '10.40.0.0/16'], 'twin')), /subnet 10\.40\.0\.0\/16 is already the subnet of Docker network [0-9a-f]{12} on this host: give another --subnet/);
    assert.deepEqual(await leftovers(h), withBig, 'the refused overlaps left nothing, and the first network keeps its pool');
    assert.doesNotMatch(await netsNow(), /nested|twin/);

    // an address in use, an address outside the subnet: no container endpoint is left
    const a1 = await d.runContainer('c1', 'big', ['--ip', '10.40.9.9']);
    assert.equal(a1, '10.40.9.9');
    const withC1 = await leftovers(h);
    assert.match(await refused(d, ['run', '-d', '--name', 'c2', '--net', 'big', '--ip', '10.40.9.9', BUSYBOX_IMAGE, 'sleep', '60']), /address 10\.40\.9\.9 is already in use by another container on this network: give another --ip, or none/);
    assert.deepEqual(await leftovers(h), withC1, 'the refused container left no endpoint or address');

    // containers by name in the weave CLI: a container on Docker's bridge, attached by name
    await d.docker(['run', '-d', '--name', 'web', '--net', 'bridge', BUSYBOX_IMAGE, 'sleep', '3600']);
    const att = await h.weave(['attach', 'web'], { env: denv });
    const webAddr = att.stdout.trim();
    assert.match(webAddr, /^10\.(3[2-9]|4[0-7])\.\d+\.\d+\/12$/);
    const inside = (await d.docker(['exec', 'web', 'ip', '-4', '-o', 'addr', 'show', 'dev', 'ethwe'])).stdout;
    assert.ok(inside.includes(webAddr), `web has ${webAddr} on ethwe: ${inside}`);
    const ps = (await h.weave(['ps'], { env: denv })).stdout;
    process.stdout.write(`# $ weave ps\n#   ${ps.trim().split('\n').join('\n#   ')}\n`);
    assert.match(ps, new RegExp(`^web /proc/\\d+/ns/net \\S+ ${webAddr.replace(/\./g, '\\.')}$`, 'm'), 'weave ps names the attached container');
    assert.match(ps, /^c1 \S+ \S+ 10\.40\.9\.9\/16$/m, 'and the one on the weave network');
    const dns = (await h.weave(['dns-add', 'web'], { env: denv })).stdout;
    assert.equal(dns.trim(), `web.weave.local. ${webAddr.split('/')[0]}`);
    assert.equal((await h.weave(['dns-lookup', 'web'])).stdout.trim(), webAddr.split('/')[0]);
    assert.equal((await h.weave(['detach', 'web'], { env: denv })).stdout.trim(), webAddr);
    assert.doesNotMatch((await d.docker(['exec', 'web', 'ip', '-o', 'link'])).stdout, /ethwe/);

    // containers that do not exist, are not running, and Docker not running
    assert.match(await weaveRefused(h, ['attach', 'nosuch'], denv), /no Docker container and no network namespace \(ip netns\) named "nosuch": check the name with docker ps or ip netns list/);
    await d.docker(['create', '--name', 'idle', '--net', 'none', BUSYBOX_IMAGE, 'sleep', '60']);
    assert.match(await weaveRefused(h, ['attach', 'idle'], denv), /container idle is not running \(created\): its network namespace exists only while it runs; start it first/);
    assert.match(await weaveRefused(h, ['dns-add', 'nosuch'], denv), /no Docker container and no network namespace/);
    const noDocker = { DOCKER_HOST: `unix://${lab.tmp}/no-docker.sock` };
    assert.match(await weaveRefused(h, ['attach', 'web'], noDocker), /"web" is not a network namespace \(ip netns\), and Docker cannot be asked for a container of that name: Docker is not running: nothing answers at \S+no-docker\.sock .*start dockerd, or point DOCKER_HOST/);
    assert.match(await weaveRefused(h, ['detach', 'web'], noDocker), /nothing weave attached is recorded under web.*Docker is not running/);
    // weave ps without Docker still lists (names what the router recorded)
    assert.match((await h.weave(['ps'], { env: noDocker })).stdout, /^c1 /m);

    await d.docker(['rm', '-f', 'c1', 'web', 'idle']);
    await d.docker(['network', 'rm', 'big']);
    assert.deepEqual(await leftovers(h), clean, 'everything went with the containers and the network');
  } finally {
    await d?.stop();
    await lab.cleanup();
  }
});

test('a router with no Docker: the plugin is off until the socket exists; a taken plugin socket and --no-docker-plugin leave the router running without it', { timeout: 120_000 }, async () => {
  const lab = await Lab.create();
  try {
    const h = await lab.addHost('h1');
    const sock = `${lab.tmp}/docker.sock`;
    const plugin = `${lab.tmp}/plugins/weave.sock`;
    h.startRouter(['--ipalloc-init', 'consensus=1', '--docker-socket', sock, '--docker-plugin-socket', plugin]);
    const rep = await h.waitReady();
    assert.equal(rep.docker.plugin, `waiting for a Docker daemon's socket at ${sock}`);
    assert.match((await h.weave(['status', 'docker'])).stdout, /^Plugin: waiting for a Docker daemon's socket/m);
    // a socket appears (any listener will do for the check): the plugin is served within a few seconds
    const srv = net.createServer().listen(sock);
    try {
      await waitFor('the plugin to be served', async () => (await h.report()).docker.plugin === 'serving', { timeoutMs: 20_000, intervalMs: 500 });
      const activate = await h.exec([process.execPath, '-e', `require('http').request({socketPath:${JSON.stringify(plugin)},path:'/Plugin.Activate',method:'POST'},r=>{let d='';r.on('data',c=>d+=c);r.on('end',()=>console.log(r.statusCode,d))}).end('{}')`]);
      assert.equal(activate.stdout.trim(), '200 {"Implements":["NetworkDriver","IpamDriver"]}');
      const bad = await h.exec([process.execPath, '-e', `require('http').request({socketPath:${JSON.stringify(plugin)},path:'/IpamDriver.RequestPool',method:'POST'},r=>{let d='';r.on('data',c=>d+=c);r.on('end',()=>console.log(r.statusCode,d))}).end('[1')`]);
      assert.match(bad.stdout, /^400 \{"Err":"weave: IpamDriver.RequestPool: the request is not JSON/);
      // a second router given the same plugin socket runs, without the plugin, and says why
      const h3 = await lab.addHost('h3');
      h3.startRouter(['--ipalloc-init', 'consensus=1', '--docker-socket', sock, '--docker-plugin-socket', plugin]);
      assert.match((await h3.waitReady()).docker.plugin, /^not served: another process serves \S+weave\.sock \(another weave router\?\): stop it, or give this one --docker-plugin-socket$/);
    } finally {
      srv.close();
    }
    const h2 = await lab.addHost('h2');
    h2.startRouter(['--ipalloc-init', 'consensus=1', '--no-docker-plugin', '--docker-socket', sock, '--docker-plugin-socket', `${lab.tmp}/plugins2/weave.sock`]);
    assert.equal((await h2.waitReady()).docker.plugin, 'off (--no-docker-plugin)');
  } finally {
    await lab.cleanup();
  }
});
