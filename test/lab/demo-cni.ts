// `npm run demo -- cni`: weave.ts as a Kubernetes node's network, on this one machine. Two hosts
// (network namespaces on an underlay bridge), each with an encrypted router (`weave launch`), the
// plugin installed by `weave setup-cni`, and its own containerd 1.6 driven through its CRI exactly as
// kubelet drives it (RunPodSandbox, StopPodSandbox, RemovePodSandbox). A pod on each host gets an
// address from the mesh; the pod on h1 pings the pod on h2 across the encrypted overlay and reaches
// h2's node address (masqueraded). Shows `weave ps` and `weave status cni`, then tears it all down.
import { randomBytes } from 'crypto';
import { Lab, type Host } from './lab';
import { run, waitFor } from './exec';
import { installCni } from './cni';
import { Containerd } from './containerd';
import type { PodStatus } from './cri';

function step(s: string): void {
  process.stdout.write(`\n==> ${s}\n`);
}

async function show(h: Host, args: string[]): Promise<void> {
  const r = await h.weave(args);
  process.stdout.write(`[${h.name}]$ weave ${args.join(' ')}\n${r.stdout}`);
}

async function podPing(pod: PodStatus, label: string, target: string): Promise<void> {
  await waitFor(`${label} to reach ${target}`, async () => (await run(['nsenter', `--net=${pod.netns}`, 'ping', '-c', '1', '-W', '1', target], { allowFail: true })).code === 0, { timeoutMs: 30_000, intervalMs: 300 });
  const r = await run(['nsenter', `--net=${pod.netns}`, 'ping', '-c', '3', '-i', '0.2', target]);
  process.stdout.write(`[${label}]$ ping -c 3 ${target}\n${r.stdout}`);
}

export async function runCniDemo(): Promise<number> {
  if (process.getuid && process.getuid() !== 0) {
    process.stderr.write('weave demo cni: needs root (it creates network namespaces and runs containerd)\n');
    return 2;
  }
  const env = { WEAVE_PASSWORD: randomBytes(12).toString('base64') };
  const lab = await Lab.create();
  const runtimes: Containerd[] = [];
  try {
    step('creating 2 hosts (network namespaces on an underlay bridge, 198.18.0.0/16)');
    const [h1, h2] = [await lab.addHost('h1'), await lab.addHost('h2')];
    for (const h of [h1, h2]) process.stdout.write(`  ${h.name}: netns ${h.ns}, underlay ${h.ip}\n`);

    step('launching encrypted routers: h1 alone, h2 -> h1');
    for (const [h, peers] of [[h1, []], [h2, [h1.ip]]] as Array<[Host, string[]]>) {
      const r = await h.weave(['launch', '--nickname', h.name, '--ipalloc-init', 'consensus=2', ...peers], { env });
      process.stdout.write(`  ${h.name}: weave launch ${peers.join(' ')} -> peer ${r.stdout.trim()}\n`);
    }

    step('weave setup-cni on each host (the plugin and 10-weave.conflist: weave-net, then portmap), and a containerd per host');
    for (const h of [h1, h2]) {
      const cni = await installCni(h);
      process.stdout.write(`  ${h.name}: ${cni.conflist}\n${JSON.stringify(cni.list, null, 2).replace(/^/gm, '    ')}\n`);
      const c = await Containerd.start(h, cni);
      runtimes.push(c);
      const v = await c.cri.version();
      process.stdout.write(`  ${h.name}: ${v.runtime_name} ${v.runtime_version}, CRI on ${c.socket}\n`);
    }

    step('RunPodSandbox on each host through containerd\'s CRI (kubelet\'s path): the plugin asks the router for an address from the mesh');
    const pods: PodStatus[] = [];
    for (const [i, [name, ns]] of [['web-1', 'shop'], ['db-1', 'shop']].entries()) {
      const t0 = Date.now();
      const p = await runtimes[i].runPod({ name, namespace: ns, uid: `uid-${name}`, portMappings: i === 0 ? [{ containerPort: 80, hostPort: 18080 }] : [] });
      pods.push(p);
      process.stdout.write(`  ${lab.hosts[i].name}: pod ${ns}/${name} -> ${p.ip} (sandbox ${p.id.slice(0, 12)}, ${Date.now() - t0} ms)\n`);
    }
    await show(h1, ['ps']);
    await show(h2, ['ps']);

    step('from the pod on h1: ping the pod on h2 (encrypted sleeve between the hosts), then h2\'s node address (masqueraded by h1)');
    await podPing(pods[0], 'shop/web-1', pods[1].ip);
    await podPing(pods[0], 'shop/web-1', h2.ip);

    process.stdout.write('\n');
    await show(h1, ['status', 'connections']);
    await show(h1, ['status', 'cni']);

    step('StopPodSandbox + RemovePodSandbox on both hosts: the plugin\'s DEL frees the addresses');
    for (const [i, p] of pods.entries()) await runtimes[i].removePod(p.id);
    await show(h1, ['status', 'cni']);
    await show(h2, ['status', 'ipam']);

    step('stopping containerd and the routers');
    for (const c of runtimes.splice(0)) await c.stop();
    for (const h of [h1, h2]) await h.weave(['stop'], { allowFail: true });
    step('demo OK');
    return 0;
  } catch (e) {
    process.stderr.write(`\nweave demo cni FAILED: ${(e as Error).message}\n`);
    for (const h of lab.hosts) {
      const log = await h.exec(['tail', '-n', '15', `${h.dataDir}/weave.log`], { allowFail: true });
      if (log.stdout) process.stderr.write(`--- ${h.name} weave.log (last lines) ---\n${log.stdout}`);
    }
    for (const c of runtimes) process.stderr.write(`--- ${c.host.name} containerd.log (last lines) ---\n${c.logTail(10)}\n`);
    return 1;
  } finally {
    for (const c of runtimes) await c.stop();
    await lab.cleanup();
  }
}
