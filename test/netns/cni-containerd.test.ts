// Pods through containerd 1.6's CRI, the path kubelet uses: two lab hosts, each with an encrypted
// router and its own containerd whose CNI conf dir holds `weave setup-cni`'s conflist (weave-net +
// portmap). RunPodSandbox on both gets mesh addresses; the pods ping each other across hosts over
// the encrypted overlay (no cleartext on the underlay); hostPort reaches a pod through portmap;
// StopPodSandbox + RemovePodSandbox free the address; and a pod whose processes were killed while
// the router was down has its DEL fail (try again later), then retried by the runtime, leaves nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'child_process';
import { randomBytes } from 'crypto';
import { Lab, type Host } from '../lab/lab';
import { run, waitFor } from '../lab/exec';
import { capture } from '../lab/traffic';
import { installCni } from '../lab/cni';
import { Containerd } from '../lab/containerd';
import type { PodStatus } from '../lab/cri';

const PATTERN = 'c0ffee5eed';

function inPod(pod: PodStatus, argv: string[], opts: { allowFail?: boolean; timeoutMs?: number } = {}) {
  return run(['nsenter', `--net=${pod.netns}`, ...argv], opts);
}

async function cniState(h: Host): Promise<{ veths: string[]; idents: string[]; ps: string }> {
  const links = JSON.parse((await run(['ip', '-n', h.ns, '-j', 'link', 'show'])).stdout);
  const rep = await h.report();
  return {
    veths: links.map((l: { ifname: string }) => l.ifname).filter((n: string) => n.startsWith('vethwepl')),
    idents: (rep.ipam?.status?.allocations ?? []).map((a: { ident: string }) => a.ident).filter((i: string) => i.startsWith('cni:')),
    ps: (await h.weave(['ps'])).stdout,
  };
}

test('containerd CRI on two hosts: mesh addresses, encrypted pod-to-pod, hostPort, teardown and DEL retried', async (t) => {
  const lab = await Lab.create();
  const runtimes: Containerd[] = [];
  try {
    const env = { WEAVE_PASSWORD: randomBytes(12).toString('hex') };
    const [h1, h2] = [await lab.addHost('h1'), await lab.addHost('h2')];
    const h1Args = ['--nickname', 'h1', '--ipalloc-init', 'consensus=2'];
    h1.startRouter(h1Args, env);
    h2.startRouter(['--nickname', 'h2', '--ipalloc-init', 'consensus=2', h1.ip], env);
    await Promise.all([h1.waitReady(), h2.waitReady()]);
    const [c1, c2] = await Promise.all([h1, h2].map(async (h) => Containerd.start(h, await installCni(h))));
    runtimes.push(c1, c2);
    await waitFor('an encrypted connection h1-h2', async () => (await h1.report()).router.connections.some((c: { state: string; encrypted: boolean }) => c.state === 'established' && c.encrypted), { timeoutMs: 30_000, intervalMs: 300 });

    let p1!: PodStatus;
    let p2!: PodStatus;
    await t.test('RunPodSandbox on both hosts gets addresses from the mesh; weave ps names the pods', async () => {
      [p1, p2] = await Promise.all([
        c1.runPod({ name: 'web-1', namespace: 'team-a', uid: 'uid-1', portMappings: [{ containerPort: 80, hostPort: 18080 }] }),
        c2.runPod({ name: 'db-1', namespace: 'team-b', uid: 'uid-2' }),
      ]);
      for (const p of [p1, p2]) {
        assert.equal(p.state, 'SANDBOX_READY');
        assert.match(p.ip, /^10\.(3[2-9]|4[0-7])\./, `${p.ip} is in the mesh's range`);
      }
      assert.notEqual(p1.ip, p2.ip);
      // the pod's namespace by its `ip netns` name (containerd makes one under /var/run/netns)
      assert.match((await h1.weave(['ps'])).stdout, new RegExp(`^team-a/web-1 ${p1.netns.split('/').pop()} \\S+ ${p1.ip.replace(/\./g, '\\.')}/12$`, 'm'));
      assert.match((await h2.weave(['ps'])).stdout, /^team-b\/db-1 /m);
    });

    await t.test('the pods ping each other across the hosts, encrypted on the underlay', async () => {
      await waitFor('web-1 to reach db-1', async () => (await inPod(p1, ['ping', '-c', '1', '-W', '1', p2.ip], { allowFail: true })).code === 0, { timeoutMs: 30_000, intervalMs: 300 });
      const pcap = await capture(lab, async () => {
        const a = await inPod(p1, ['ping', '-c', '3', '-i', '0.2', '-p', PATTERN, p2.ip]);
        const b = await inPod(p2, ['ping', '-c', '3', '-i', '0.2', '-p', PATTERN, p1.ip]);
        assert.match(a.stdout + b.stdout, /3 received[\s\S]*3 received/);
      }, 'udp');
      assert.ok(pcap.length > 0, 'the pings crossed the underlay');
      assert.equal(pcap.includes(Buffer.from(PATTERN.repeat(3), 'hex')), false, 'no cleartext ping payload on the underlay');
    });

    await t.test('hostPort reaches the pod through portmap (chained after weave-net)', async () => {
      const server = spawn('nsenter', [`--net=${p1.netns}`, process.execPath, '-e', "require('net').createServer((s)=>s.end('hello from web-1\\n')).listen(80,()=>console.log('listening'))"], { stdio: ['ignore', 'pipe', 'inherit'] });
      try {
        await new Promise<void>((resolve, reject) => {
          server.stdout!.once('data', () => resolve());
          server.once('exit', (c) => reject(new Error(`pod server exited ${c}`)));
        });
        const client = `require('net').connect(18080,'${h1.ip}').on('data',(d)=>{process.stdout.write(d);process.exit(0)}).on('error',(e)=>{console.error(e.message);process.exit(1)})`;
        const r = await h2.exec([process.execPath, '-e', client], { timeoutMs: 20_000 });
        assert.equal(r.stdout, 'hello from web-1\n');
      } finally {
        server.kill('SIGKILL');
      }
    });

    await t.test('StopPodSandbox + RemovePodSandbox free the address', async () => {
      await c2.removePod(p2.id);
      const s = await cniState(h2);
      assert.deepEqual([s.veths, s.idents, s.ps], [[], [], '']);
      assert.doesNotMatch((await h2.weave(['status', 'ipam'])).stdout, /[1-9]\d* active/);
    });

    await t.test('pod processes killed while the router is down: DEL fails (11), the runtime retries, nothing is left', async () => {
      process.kill(p1.pid, 'SIGKILL');
      h1.routers[0].child.kill('SIGTERM');
      await h1.routers[0].exited;
      await assert.rejects(c1.cri.stop(p1.id), /weave router is not reachable|try again later/);
      h1.startRouter(h1Args, env);
      await h1.waitReady();
      await waitFor('StopPodSandbox retried', async () => c1.cri.stop(p1.id).then(() => true, () => false), { timeoutMs: 30_000, intervalMs: 500 });
      await c1.cri.remove(p1.id);
      const s = await cniState(h1);
      assert.deepEqual([s.veths, s.idents, s.ps], [[], [], '']);
      assert.equal((await run(['ls', '/var/run/netns'])).stdout.includes(p1.netns.split('/').pop()!), false, 'the pod\'s namespace is gone');
    });
  } finally {
    for (const c of runtimes) await c.stop();
    await lab.cleanup();
  }
});
