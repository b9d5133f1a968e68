// The CLI's rough edges: a second launch in a namespace where a router runs, a launch whose router
// dies during start-up, permission problems, `weave reset` with no router left, extra arguments and
// invalid peers. Everything runs inside lab hosts (a mistake there touches nothing of this machine).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as path from 'path';
import { spawn } from 'child_process';
import { withLab, WEAVE_JS } from '../lab/lab';
import { run, waitFor } from '../lab/exec';

const NOBODY = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'];
const STACK = /\n\s+at /;

async function linkNames(ns: string): Promise<string[]> {
  return JSON.parse((await run(['ip', '-n', ns, '-j', 'link', 'show'])).stdout).map((l: any) => l.ifname);
}

test('launch: a second router in a namespace where one runs (other data dir) is refused with the reason; a router that dies during start-up is reported with its error', async () => {
  await withLab(async (lab) => {
    const h = await lab.addHost('h1');
    const first = (await h.weave(['launch', '--no-fastdp', '--ipalloc-init', 'consensus=1'])).stdout.trim();
    const otherDir = path.join(lab.tmp, 'other');
    const second = await h.weave(['launch', '--no-fastdp'], { env: { WEAVE_DATA_DIR: otherDir }, allowFail: true });
    assert.equal(second.code, 1, `second launch must fail: ${second.stdout}${second.stderr}`);
    assert.doesNotMatch(second.stdout, new RegExp(first), 'never the running router\'s name as if it were the new one');
    assert.match(second.stderr, /cannot start a router in this network namespace: weave-tun is held by another process; TCP port 6783 is in use/);
    assert.ok(second.stderr.includes(`data dir ${h.dataDir}`), `names the running router: ${second.stderr}`);
    // other ports: the TUN still is this namespace's
    const third = await h.weave(['launch', '--no-fastdp', '--port', '7000', '--http-addr', '127.0.0.1:7001'], { env: { WEAVE_DATA_DIR: otherDir }, allowFail: true });
    assert.equal(third.code, 1);
    assert.match(third.stderr, /weave-tun is held by another process/);
    assert.equal((await h.report()).router.name, first, 'the first router is untouched');
    await h.weave(['stop']);

    // the router itself fails (its UDP port is taken): launch says why, from the child, and exits 1
    const holder = spawn('ip', ['netns', 'exec', h.ns, process.execPath, '-e', "require('dgram').createSocket('udp4').bind(6783, () => console.log('bound'))"], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((resolve) => holder.stdout!.once('data', () => resolve()));
      const r = await h.weave(['launch', '--no-fastdp'], { allowFail: true });
      assert.equal(r.code, 1, r.stdout + r.stderr);
      assert.equal(r.stdout, '');
      assert.match(r.stderr, /^weave: the router failed to start: cannot bind UDP port 6783: .*Address already in use \(log: .*weave\.log\)/);
    } finally {
      holder.kill('SIGKILL');
    }
  });
});

test('permissions: not root -> "must run as root"; an unwritable data dir is named; exit 1, no stack trace', async () => {
  await withLab(async (lab) => {
    const h = await lab.addHost('h1');
    fs.chmodSync(lab.tmp, 0o755);
    for (const cmd of [['launch'], ['router'], ['reset']]) {
      const r = await h.exec([...NOBODY, process.execPath, WEAVE_JS, ...cmd], { env: h.env(), allowFail: true });
      assert.equal(r.code, 1, `${cmd}: ${r.stderr}`);
      assert.match(r.stderr, /^weave: must run as root/);
      assert.doesNotMatch(r.stderr, STACK);
    }
    const file = path.join(lab.tmp, 'a-file');
    fs.writeFileSync(file, '');
    for (const dir of [path.join(file, 'data'), file]) {
      const r = await h.weave(['launch', '--no-fastdp'], { env: { WEAVE_DATA_DIR: dir }, allowFail: true });
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, new RegExp(`^weave: data dir ${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is not writable: `));
      assert.doesNotMatch(r.stderr, STACK);
    }
    assert.deepEqual(await linkNames(h.ns), ['lo', 'eth0'], 'nothing was started');
  });
});

test('reset with no router (killed -9): removes the bridge, veths (the container\'s ethwe), routes proto 180, weave-vx, the nft table and the resolv.conf; refuses while another router runs here', async () => {
  await withLab(async (lab) => {
    const h = await lab.addHost('h1');
    const c1 = await lab.addContainer('c1');
    const linksBefore = await linkNames(h.ns);
    await h.weave(['launch', '--no-fastdp', '--ipalloc-init', 'consensus=1']);
    await h.weave(['attach', c1.ns, '-h', 'one']);
    await h.weave(['expose', '--masquerade']);
    await h.killAll('SIGKILL');
    // what a crashed fastdp router would leave too: its VXLAN device and a route of ours via the underlay
    await run(['ip', '-n', h.ns, 'link', 'add', 'weave-vx', 'type', 'vxlan', 'id', '87', 'dstport', '6784', 'local', h.ip, 'nolearning']);
    await run(['ip', '-n', h.ns, 'route', 'add', '10.99.0.0/16', 'via', '198.18.0.12', 'dev', 'eth0', 'proto', '180']);
    const left = await linkNames(h.ns);
    for (const l of ['weave', 'weave-vx']) assert.ok(left.includes(l), `${l} left behind by the killed router: ${left}`);
    assert.ok(left.some((l) => l.startsWith('vethwe')));
    assert.ok(fs.existsSync(`/etc/netns/${c1.ns}/resolv.conf`));

    const r = await h.weave(['reset']);
    assert.match(r.stdout, /no router was running; removed .*link weave-vx.*link weave\b.*link vethwe.*routes proto 180.*nft table inet weave/);
    assert.deepEqual((await linkNames(h.ns)).filter((l) => !linksBefore.includes(l)), [], 'no weave links left');
    assert.deepEqual(await linkNames(c1.ns), ['lo'], 'the container lost ethwe');
    assert.deepEqual(JSON.parse((await run(['ip', '-n', h.ns, '-j', 'route', 'show', 'proto', '180'])).stdout), []);
    assert.equal((await run(['ip', 'netns', 'exec', h.ns, 'nft', 'list', 'table', 'inet', 'weave'], { allowFail: true })).code, 1, 'nft table gone');
    assert.ok(!fs.existsSync(`/etc/netns/${c1.ns}/resolv.conf`), 'resolv.conf we wrote is gone');
    assert.deepEqual(fs.readdirSync(h.dataDir).filter((f) => f !== 'weave.log'), []);
    // a second reset finds nothing and says nothing
    const again = await h.weave(['reset']);
    assert.equal(again.stdout, '');

    // a router of another data dir runs here: its state is left alone, and reset says so
    const otherDir = path.join(lab.tmp, 'other');
    await h.weave(['launch', '--no-fastdp', '--ipalloc-init', 'consensus=1'], { env: { WEAVE_DATA_DIR: otherDir } });
    const refused = await h.weave(['reset'], { allowFail: true });
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, new RegExp(`a router with data dir ${otherDir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} .* runs in this network namespace: the network state here is that router's and was left alone`));
    assert.ok((await linkNames(h.ns)).includes('weave-tun'), 'its TUN stays');
    await h.weave(['stop'], { env: { WEAVE_DATA_DIR: otherDir } });
    await waitFor('router gone', async () => (await lab.pidsIn(h.ns)).length === 0, { timeoutMs: 15_000 });
  });
});

test('extra arguments are refused by every command, invalid peers at launch and connect; exit 2 before anything runs', async () => {
  await withLab(async (lab) => {
    const h = await lab.addHost('h1');
    const cases = [
      ['stop', 'now'], ['reset', 'all'], ['report', 'x'], ['ps', 'x', 'y'], ['status', 'peers', 'extra'], ['prime', 'x'], ['rmpeer', 'a', 'b'], ['dns-lookup', 'a', 'b'],
      ['launch', '300.1.1.1'], ['launch', '--', '-1'], ['launch', 'h:-5'], ['launch', 'a:99999999'], ['router', '300.1.1.1'],
      ['connect', '300.1.1.1'], ['connect', '--', '-1'], ['connect', 'h:-5'], ['forget', 'h:-5'],
    ];
    for (const args of cases) {
      const r = await h.weave(args, { allowFail: true });
      assert.equal(r.code, 2, `${args.join(' ')}: exit ${r.code} ${r.stderr}`);
      assert.match(r.stderr, /too many arguments|invalid peer/, args.join(' '));
    }
    assert.deepEqual(await linkNames(h.ns), ['lo', 'eth0'], 'no router was started');
    assert.deepEqual(fs.readdirSync(h.dataDir), []);
  });
});
