// `npm run demo`: a small encrypted mesh on this one machine. Three hosts (network namespaces on an
// underlay bridge), each running a router; h3 knows only h2 and h2 only h1, so discovery has to do
// the rest. Shows `weave status`, then tears everything down, even on failure.
import { randomBytes } from 'crypto';
import { Lab, Host } from './lab';
import { waitFor } from './exec';

function step(s: string): void {
  process.stdout.write(`\n==> ${s}\n`);
}

async function show(h: Host, args: string[]): Promise<void> {
  const r = await h.weave(args);
  process.stdout.write(`[${h.name}]$ weave ${args.join(' ')}\n${r.stdout}`);
}

export async function runDemo(): Promise<number> {
  if (process.getuid && process.getuid() !== 0) {
    process.stderr.write('weave demo: needs root (it creates network namespaces)\n');
    return 2;
  }
  const password = randomBytes(12).toString('base64');
  const env = { WEAVE_PASSWORD: password };
  const lab = await Lab.create();
  try {
    step('creating 3 hosts (network namespaces on an underlay bridge, 198.18.0.0/16)');
    const [h1, h2, h3] = [await lab.addHost('h1'), await lab.addHost('h2'), await lab.addHost('h3')];
    for (const h of [h1, h2, h3]) process.stdout.write(`  ${h.name}: netns ${h.ns}, underlay ${h.ip}\n`);

    step('launching routers with encryption: h1 alone, h2 -> h1, h3 -> h2 (h3 learns h1 through gossip)');
    // With a password, fastdp needs kernel ESP; this kernel lacks it, so each connection says so and
    // the encrypted sleeve (TUN + UDP, NaCl) carries the traffic.
    for (const [h, peers] of [[h1, []], [h2, [h1.ip]], [h3, [h2.ip]]] as Array<[Host, string[]]>) {
      const r = await h.weave(['launch', '--nickname', h.name, '--ipalloc-init', 'consensus=3', ...peers], { env });
      process.stdout.write(`  ${h.name}: weave launch ${peers.join(' ')} -> peer ${r.stdout.trim()}\n`);
    }

    step('waiting for the full mesh (every router with 2 established connections)');
    const t0 = Date.now();
    await waitFor('full mesh', async () => {
      for (const h of [h1, h2, h3]) {
        const rep = await h.report();
        if (rep.router.connections.filter((c: { state: string }) => c.state === 'established').length !== 2) return false;
      }
      return true;
    }, { timeoutMs: 60_000, intervalMs: 300 });
    process.stdout.write(`  converged in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);

    step('attaching one container per host, no addresses given (IPAM allocates), each with a DNS name');
    const containers = [];
    for (const [h, name] of [[h1, 'web'], [h2, 'db'], [h3, 'client']] as Array<[Host, string]>) {
      const c = await lab.addContainer(`c-${name}`);
      const r = await h.weave(['attach', c.ns, '-h', name], { timeoutMs: 90_000 });
      process.stdout.write(`  ${h.name}: weave attach ${c.ns} -h ${name} -> ${r.stdout.trim()}\n`);
      containers.push(c);
    }
    const client = containers[2];

    step('from the container on h3: ping web and db by name (weaveDNS answers, the encrypted sleeve carries the packets)');
    for (const target of ['web', 'db.weave.local']) {
      await waitFor(`client to reach ${target}`, async () => (await client.exec(['ping', '-c', '1', '-W', '1', target], { allowFail: true })).code === 0, { timeoutMs: 30_000, intervalMs: 300 });
      const r = await client.exec(['ping', '-c', '3', '-i', '0.2', target]);
      process.stdout.write(`[client]$ ping -c 3 ${target}\n${r.stdout}`);
    }
    const dig = await client.exec(['dig', '+short', 'web.weave.local']);
    process.stdout.write(`[client]$ dig +short web.weave.local\n${dig.stdout}`);

    process.stdout.write('\n');
    await show(h3, ['status']);
    await show(h3, ['status', 'connections']);
    await show(h3, ['status', 'peers']);
    await show(h3, ['status', 'ipam']);
    await show(h3, ['status', 'dns']);
    await show(h1, ['ps']);

    step('stopping routers');
    for (const h of [h1, h2, h3]) await h.weave(['stop'], { allowFail: true });
    step('demo OK');
    return 0;
  } catch (e) {
    process.stderr.write(`\nweave demo FAILED: ${(e as Error).message}\n`);
    for (const h of lab.hosts) {
      const log = await h.exec(['tail', '-n', '15', `${h.dataDir}/weave.log`], { allowFail: true });
      if (log.stdout) process.stderr.write(`--- ${h.name} weave.log (last lines) ---\n${log.stdout}`);
    }
    return 1;
  } finally {
    await lab.cleanup();
  }
}
