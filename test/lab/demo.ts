// `npm run demo`: a small encrypted mesh on this one machine. Three hosts (network namespaces on an
// underlay bridge), each running a router; h3 knows only h2 and h2 only h1, so discovery has to do
// the rest. Shows `weave status`, then tears everything down, even on failure.
import { randomBytes } from 'crypto';
import { Lab, Host } from './lab';
import { waitFor } from './exec';
import { supportsEsp } from '../../ipsec/xfrm';

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

    // h1 and h2 share a trusted network (think: one rack): with --trusted-subnets on both, their data
    // rides the kernel's VXLAN (fastdp) unencrypted while the control channel stays encrypted. h3 is
    // trusted by nobody, so its data must be encrypted: kernel ESP under VXLAN where the kernel has it;
    // this machine's kernel does not, so its connections use the encrypted sleeve and say why. On a
    // kernel with ESP, h3 runs --no-fastdp so that the demo still shows both overlays.
    const esp = await supportsEsp({ netns: h1.ns });
    const h3Extra = esp.ok ? ['--no-fastdp'] : [];
    step(`launching routers with encryption: h1 alone, h2 -> h1, h3 -> h2 (h3 learns h1 through gossip); h1 and h2 trust each other's address${esp.ok ? '; the kernel has ESP, so h3 runs --no-fastdp to show the sleeve' : ''}`);
    const trust = (h: Host) => ['--trusted-subnets', `${h.ip}/32`];
    for (const [h, args] of [[h1, trust(h2)], [h2, [...trust(h1), h1.ip]], [h3, [...h3Extra, h2.ip]]] as Array<[Host, string[]]>) {
      const r = await h.weave(['launch', '--nickname', h.name, '--ipalloc-init', 'consensus=3', ...args], { env });
      process.stdout.write(`  ${h.name}: weave launch ${args.join(' ')} -> peer ${r.stdout.trim()}\n`);
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
    // h1-h2 climbs to fastdp once its VXLAN heartbeats pass (a second or two after the connection)
    await waitFor('h1-h2 over fastdp', async () => (await h1.report()).router.connections.some((c: { peerNickname?: string; overlay: string | null }) => c.peerNickname === 'h2' && c.overlay === 'fastdp'), { timeoutMs: 30_000, intervalMs: 300 });
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
    step('from the container on h1: ping db on h2 (the kernel fast datapath carries it: trusted VXLAN)');
    const web = containers[0];
    await waitFor('web to reach db', async () => (await web.exec(['ping', '-c', '1', '-W', '1', 'db'], { allowFail: true })).code === 0, { timeoutMs: 30_000, intervalMs: 300 });
    const p = await web.exec(['ping', '-c', '3', '-i', '0.2', 'db']);
    process.stdout.write(`[web]$ ping -c 3 db\n${p.stdout}`);
    const dig = await client.exec(['dig', '+short', 'web.weave.local']);
    process.stdout.write(`[client]$ dig +short web.weave.local\n${dig.stdout}`);

    process.stdout.write('\n');
    await show(h3, ['status']);
    await show(h3, ['status', 'connections']);
    await show(h1, ['status', 'connections']);
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
