// The weave-net plugin called directly, as a runtime calls it, against real routers in lab hosts:
// every command and every error the issue lists. STATUS before the router runs (50), while IPAM has
// no ring (50, and ADD code 11), and once the ring exists (0); ADD (idempotent; a default route and
// masquerade so a pod reaches a node address outside the overlay), CHECK (passes; names a deleted
// route), DEL (frees; unknown container; empty CNI_NETNS; twice), GC with cni.dev/valid-attachments, a
// router restart re-programming its pods,
// bad input (malformed stdin, unknown cniVersion, missing variables, a missing namespace), a failed
// ADD leaving no veth, route or allocation, an exhausted range (100), and the router gone (11).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Lab, type Host } from '../lab/lab';
import { run, waitFor } from '../lab/exec';
import { callPlugin, installCni, pluginConf, type CniInstall } from '../lab/cni';

const RT_PROTO = '180';

async function json(ns: string, args: string[]): Promise<any[]> {
  return JSON.parse((await run(['ip', '-n', ns, '-j', ...args])).stdout || '[]');
}

/** What a failed ADD must not leave: pod veths on the host, weave's routes to them, CNI allocations. */
async function leftovers(h: Host): Promise<{ veths: string[]; routes: string[]; idents: string[] }> {
  const links = await json(h.ns, ['link', 'show']);
  const routes = await json(h.ns, ['route', 'show', 'proto', RT_PROTO]);
  const rep = await h.report();
  return {
    veths: links.map((l) => l.ifname).filter((n: string) => n.startsWith('vethwepl')),
    routes: routes.filter((r) => String(r.dev).startsWith('vethwepl')).map((r) => `${r.dst} ${r.dev}`),
    idents: (rep.ipam?.status?.allocations ?? []).map((a: { ident: string }) => a.ident).filter((i: string) => i.startsWith('cni:')),
  };
}

test('weave-net called directly: every command, every error, nothing left behind', async (t) => {
  const lab = await Lab.create();
  try {
    const [h1, h2] = [await lab.addHost('h1'), await lab.addHost('h2')];
    const cni = await installCni(h1);
    const call = (env: Record<string, string>, stdin: string) => callPlugin(h1, cni, env, stdin);
    const conf = (extra: Record<string, unknown> = {}) => pluginConf(cni, extra);
    const pods = await Promise.all(['p1', 'p2', 'p3', 'p4'].map((n) => lab.addContainer(n)));
    const podEnv = (i: number, o: Record<string, string> = {}) => ({
      CNI_COMMAND: 'ADD', CNI_CONTAINERID: `ctr${i}`, CNI_NETNS: `/var/run/netns/${pods[i].ns}`, CNI_IFNAME: 'eth0',
      CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web-${i};K8S_POD_INFRA_CONTAINER_ID=ctr${i}`, ...o,
    });
    const v11 = (extra: Record<string, unknown> = {}) => conf({ cniVersion: '1.1.0', ...extra });

    await t.test('no router: STATUS is 50, ADD 11 (try again later), with what was tried', async () => {
      const s = await call({ CNI_COMMAND: 'STATUS' }, v11());
      assert.equal(s.code, 1);
      assert.equal(s.json.code, 50);
      const a = await call(podEnv(0), conf());
      assert.equal(a.json.code, 11, a.stdout);
      assert.match(a.json.details, /127\.0\.0\.1:6784 \(Connection refused\)/);
    });

    // a quorum of two: h1 alone has no ring until h2 joins
    h1.startRouter(['--nickname', 'h1', '--ipalloc-init', 'consensus=2', '--ipalloc-timeout', '3', '--no-fastdp']);
    await h1.waitReady();

    await t.test('IPAM without a ring: STATUS 50 naming the consensus, ADD 11, and nothing allocated', async () => {
      const s = await call({ CNI_COMMAND: 'STATUS' }, v11());
      assert.equal(s.json.code, 50, s.stdout);
      assert.match(s.json.msg, /consensus/);
      const a = await call(podEnv(0), conf());
      assert.equal(a.json.code, 11, a.stdout);
      assert.match(a.json.msg, /try again later/);
      assert.deepEqual(await leftovers(h1), { veths: [], routes: [], idents: [] });
    });

    h2.startRouter(['--nickname', 'h2', '--ipalloc-init', 'consensus=2', '--no-fastdp', h1.ip]);
    await h2.waitReady();

    await t.test('STATUS succeeds once the ring exists', async () => {
      await waitFor('STATUS ok', async () => (await call({ CNI_COMMAND: 'STATUS' }, v11())).code === 0, { timeoutMs: 30_000, intervalMs: 300 });
      const s = await call({ CNI_COMMAND: 'STATUS' }, v11());
      assert.deepEqual([s.code, s.stdout], [0, '']);
    });

    let addr = '';
    let first: any;
    await t.test('ADD: a mesh address, the pod\'s routes, the result in the version asked for; again: the same result', async () => {
      const a = await call(podEnv(0), conf({ cniVersion: '0.3.1' }));
      assert.equal(a.code, 0, a.stdout + a.stderr);
      first = a.json;
      assert.equal(first.cniVersion, '0.3.1');
      assert.equal(first.ips[0].version, '4');
      addr = first.ips[0].address;
      assert.match(addr, /^10\.(3[2-9]|4[0-7])\.\d+\.\d+\/12$/);
      assert.equal(first.interfaces[1].name, 'eth0');
      assert.equal(first.interfaces[1].sandbox, `/var/run/netns/${pods[0].ns}`);
      assert.equal(await pods[0].address('eth0'), addr.split('/')[0]);
      const routes = await json(pods[0].ns, ['route', 'show']);
      assert.ok(routes.some((r) => r.dst === 'default' && r.gateway === '169.254.1.1' && r.dev === 'eth0'), JSON.stringify(routes));
      const again = await call(podEnv(0), conf({ cniVersion: '0.3.1' }));
      assert.deepEqual(again.json, first, 'ADD is idempotent');
      const ps = (await h1.weave(['ps'])).stdout;
      assert.match(ps, new RegExp(`^team-a/web-0 ${pods[0].ns} \\S+ ${addr.replace(/\./g, '\\.')}$`, 'm'));
      assert.equal((await leftovers(h1)).veths.length, 1);
    });

    await t.test('a pod reaches a node address outside the overlay (default route, masqueraded on the host)', async () => {
      const r = await pods[0].exec(['ping', '-c', '2', '-W', '2', h2.ip], { allowFail: true });
      assert.equal(r.code, 0, r.stdout + r.stderr);
      const nft = (await h1.exec(['nft', 'list', 'chain', 'inet', 'weave', 'cni-masq'])).stdout;
      assert.match(nft, /iifname "vethwepl\*" ip daddr != 10\.32\.0\.0\/12 masquerade/);
    });

    await t.test('CHECK: passes as ADD left it; names what drifted', async () => {
      const ok = await call(podEnv(0, { CNI_COMMAND: 'CHECK' }), conf({ prevResult: first }));
      assert.deepEqual([ok.code, ok.stdout], [0, ''], ok.stdout);
      await run(['ip', '-n', pods[0].ns, 'route', 'del', 'default']);
      const bad = await call(podEnv(0, { CNI_COMMAND: 'CHECK' }), conf({ prevResult: first }));
      assert.equal(bad.json.code, 101, bad.stdout);
      assert.match(bad.json.msg, /the default route is missing/);
      await run(['ip', '-n', pods[0].ns, 'route', 'add', 'default', 'via', '169.254.1.1', 'dev', 'eth0', 'onlink']);
    });

    await t.test('bad input: spec error objects and a non-zero exit', async () => {
      const cases: Array<[Record<string, string>, string, number, RegExp]> = [
        [podEnv(1), '{"cniVersion": "1.0.0",', 6, /decode/],
        [podEnv(1), conf({ cniVersion: '0.2.0' }), 1, /0\.2\.0 is not supported/],
        [podEnv(1, { CNI_IFNAME: '' }), conf(), 4, /CNI_IFNAME/],
        [podEnv(1, { CNI_CONTAINERID: '' }), conf(), 4, /CNI_CONTAINERID/],
        [podEnv(1, { CNI_NETNS: '/var/run/netns/no-such-pod' }), conf(), 4, /CNI_NETNS \/var\/run\/netns\/no-such-pod/],
        [podEnv(1, { CNI_ARGS: 'K8S_POD_NAME=x;Surprise=1' }), conf(), 4, /unknown key Surprise/],
        [{ CNI_COMMAND: 'JUMP' }, conf(), 4, /unknown CNI_COMMAND/],
      ];
      for (const [env, stdin, code, msg] of cases) {
        const r = await call(env, stdin);
        assert.equal(r.code, 1, `${JSON.stringify(env)}: ${r.stdout}`);
        assert.equal(r.json.code, code, r.stdout);
        assert.match(r.json.msg, msg);
      }
      assert.deepEqual((await leftovers(h1)).idents, ['cni:weave:ctr0:eth0'], 'nothing allocated by bad input');
    });

    await t.test('a failed ADD leaves no veth, route or allocation', async () => {
      await run(['ip', '-n', pods[1].ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'other0']);
      const before = await leftovers(h1);
      const r = await call(podEnv(1), conf());
      assert.equal(r.json.code, 102, r.stdout);
      assert.match(r.json.msg, /already has an interface named eth0/);
      assert.deepEqual(await leftovers(h1), before);
      await run(['ip', '-n', pods[1].ns, 'link', 'del', 'eth0']);
    });

    await t.test('DEL frees the address; unknown containers, an empty CNI_NETNS and a second DEL succeed', async () => {
      const d = await call(podEnv(0, { CNI_COMMAND: 'DEL' }), conf({ prevResult: first }));
      assert.deepEqual([d.code, d.stdout], [0, '']);
      assert.deepEqual(await leftovers(h1), { veths: [], routes: [], idents: [] });
      assert.equal((await h1.weave(['ps'])).stdout, '');
      for (const env of [podEnv(0, { CNI_COMMAND: 'DEL', CNI_NETNS: '' }), podEnv(3, { CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'never-seen' })]) {
        const again = await call(env, conf());
        assert.deepEqual([again.code, again.stdout], [0, ''], JSON.stringify(env));
      }
      const ipam = (await h1.weave(['status', 'ipam'])).stdout;
      assert.doesNotMatch(ipam, /[1-9]\d* active/, ipam);
    });

    let kept: any;
    await t.test('GC removes every attachment of the network not in cni.dev/valid-attachments', async () => {
      assert.equal((await call(podEnv(1), conf())).code, 0);
      kept = (await call(podEnv(2), conf())).json;
      const gc = await call({ CNI_COMMAND: 'GC' }, v11({ 'cni.dev/valid-attachments': [{ containerID: 'ctr2', ifname: 'eth0' }] }));
      assert.deepEqual([gc.code, gc.stdout], [0, ''], gc.stdout);
      const left = await leftovers(h1);
      assert.deepEqual(left.idents, ['cni:weave:ctr2:eth0']);
      assert.equal(left.veths.length, 1);
      assert.doesNotMatch((await h1.weave(['ps'])).stdout, /web-1/);
      assert.equal(await pods[1].address('eth0'), undefined, 'the collected pod\'s interface is gone');
    });

    const h1Args = ['--nickname', 'h1', '--ipalloc-init', 'consensus=2', '--ipalloc-timeout', '3', '--no-fastdp'];
    const stopRouter = async (): Promise<void> => {
      const r = h1.routers[h1.routers.length - 1];
      r.child.kill('SIGTERM');
      await r.exited;
    };

    await t.test('a restarted router re-programs its pods (a default route lost meanwhile comes back); CHECK passes', async () => {
      await stopRouter();
      await run(['ip', '-n', pods[2].ns, 'route', 'del', 'default']);
      h1.startRouter(h1Args);
      await h1.waitReady();
      const chk = await call(podEnv(2, { CNI_COMMAND: 'CHECK' }), conf({ prevResult: kept }));
      assert.deepEqual([chk.code, chk.stdout], [0, ''], chk.stdout);
      assert.deepEqual((await leftovers(h1)).idents, ['cni:weave:ctr2:eth0'], 'the address is still held');
    });

    await t.test('the router gone: ADD 11, STATUS 50', async () => {
      await stopRouter();
      const a = await call(podEnv(3), conf());
      assert.equal(a.json.code, 11, a.stdout);
      assert.equal((await call({ CNI_COMMAND: 'STATUS' }, v11())).json.code, 50);
    });
  } finally {
    await lab.cleanup();
  }
});

test('weave-net on an exhausted range: code 100 at once, an address again after a DEL', async () => {
  const lab = await Lab.create();
  try {
    const h = await lab.addHost('h1');
    h.startRouter(['--nickname', 'h1', '--ipalloc-init', 'consensus=1', '--ipalloc-range', '10.99.0.0/30', '--no-fastdp']);
    await h.waitReady();
    const cni: CniInstall = await installCni(h);
    const pods = await Promise.all(['a', 'b', 'c'].map((n) => lab.addContainer(n)));
    const env = (i: number, cmd = 'ADD') => ({ CNI_COMMAND: cmd, CNI_CONTAINERID: `c${i}`, CNI_NETNS: `/var/run/netns/${pods[i].ns}`, CNI_IFNAME: 'eth0' });
    for (const i of [0, 1]) {
      const r = await callPlugin(h, cni, env(i), pluginConf(cni));
      assert.equal(r.code, 0, r.stdout);
    }
    const full = await callPlugin(h, cni, env(2), pluginConf(cni));
    assert.equal(full.json.code, 100, full.stdout);
    assert.match(full.json.msg, /no free address in 10\.99\.0\.0\/30/);
    assert.ok(full.ms < 2000, `exhaustion is reported at once, not after the allocation timeout (${full.ms} ms)`);
    assert.equal((await json(h.ns, ['link', 'show'])).filter((l) => l.ifname.startsWith('vethwepl')).length, 2);
    assert.equal((await callPlugin(h, cni, env(0, 'DEL'), pluginConf(cni))).code, 0);
    const again = await callPlugin(h, cni, env(2), pluginConf(cni));
    assert.equal(again.code, 0, again.stdout);
  } finally {
    await lab.cleanup();
  }
});
