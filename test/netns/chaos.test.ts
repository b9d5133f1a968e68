// Chaos: 4 encrypted hosts (h1-h2 on trusted fastdp, h3 and h4 on the encrypted sleeve), containers
// attached by IPAM with DNS names. Twenty times a random router is killed (-9) or stopped and
// launched again, with or without --resume, while another host attaches a container or adds a DNS
// name. Afterwards every container reaches every other, no address is held twice, and every
// router's DNS view is the same.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Container, Host, Lab, withLab } from '../lab/lab';
import { waitFor } from '../lab/exec';
import { mulberry32 } from '../fakes/ipam-gossip';

const PASSWORD = { WEAVE_PASSWORD: 'chaos test' };
const CYCLES = Number(process.env.WEAVE_CHAOS_CYCLES ?? 20);
const SEED = Number(process.env.WEAVE_CHAOS_SEED ?? 11);

function launchArgs(lab: Lab, h: Host): string[] {
  const [h1, h2] = lab.hosts;
  const trust = h === h1 ? [`--trusted-subnets`, `${h2.ip}/32`] : h === h2 ? [`--trusted-subnets`, `${h1.ip}/32`] : [];
  const peers = h === h1 ? [] : [h1.ip];
  return ['--nickname', h.name, '--ipalloc-init', 'consensus=4', ...trust, ...peers];
}

async function established(h: Host, n: number): Promise<void> {
  await waitFor(`${h.name}: ${n} established connections`, async () => {
    const rep = await h.report();
    return rep.router.connections.filter((c: any) => c.state === 'established' && c.overlay).length >= n;
  }, { timeoutMs: 30_000, intervalMs: 250 });
}

async function restart(lab: Lab, h: Host, how: 'kill' | 'stop-resume' | 'stop-fresh'): Promise<void> {
  if (how === 'kill') await h.killAll('SIGKILL');
  else {
    await h.weave(['stop']);
    await waitFor(`${h.name} router gone`, async () => (await lab.pidsIn(h.ns)).length === 0, { timeoutMs: 15_000, intervalMs: 100 });
  }
  const args = how === 'stop-fresh' ? launchArgs(lab, h) : ['--resume', ...launchArgs(lab, h).filter((a) => a !== lab.hosts[0].ip)];
  await h.weave(['launch', ...args], { env: PASSWORD });
}

async function allPairsPing(containers: Array<{ c: Container; ip: string }>): Promise<string[]> {
  const failures: string[] = [];
  await Promise.all(containers.map(async ({ c }) => {
    for (const { c: d, ip } of containers) {
      if (d === c) continue;
      const r = await c.exec(['ping', '-c', '1', '-W', '2', ip], { allowFail: true });
      if (r.code !== 0) failures.push(`${c.name} -> ${d.name} (${ip})`);
    }
  }));
  return failures;
}

function dnsView(rep: any): string {
  return (rep.dns?.entries ?? []).filter((e: any) => !e.tombstone).map((e: any) => `${e.hostname}=${e.address}`).sort().join(' ');
}

test('chaos: 20 random router kills and restarts while containers attach and names are added; then all pairs ping, no address twice, one DNS view', { timeout: 600_000 }, async () => {
  await withLab(async (lab) => {
    const rand = mulberry32(SEED);
    const hosts = [await lab.addHost('h1'), await lab.addHost('h2'), await lab.addHost('h3'), await lab.addHost('h4')];
    for (const h of hosts) await h.weave(['launch', ...launchArgs(lab, h)], { env: PASSWORD });
    for (const h of hosts) await established(h, 3);
    const attached: Array<{ c: Container; host: Host }> = [];
    const attach = async (host: Host): Promise<void> => {
      const c = await lab.addContainer(`c${attached.length + 1}`);
      await host.weave(['attach', c.ns, '-h', c.name]);
      attached.push({ c, host });
    };
    for (const h of hosts) await attach(h);
    let names = 0;
    for (let i = 0; i < CYCLES; i++) {
      const victim = hosts[Math.floor(rand() * hosts.length)];
      const how = (['kill', 'stop-resume', 'stop-fresh'] as const)[Math.floor(rand() * 3)];
      const others = hosts.filter((h) => h !== victim);
      const other = others[Math.floor(rand() * others.length)];
      const meanwhile = i % 4 === 0
        ? attach(other)
        : other.weave(['dns-add', `10.99.${i}.${++names}`, '-h', `extra${i}`]).then(() => undefined);
      await Promise.all([restart(lab, victim, how), meanwhile]);
      process.stdout.write(`# cycle ${i + 1}: ${how} ${victim.name}; ${i % 4 === 0 ? 'attach' : 'dns-add'} on ${other.name}\n`);
    }
    for (const h of hosts) await established(h, 3);

    const withIps = await Promise.all(attached.map(async ({ c }) => ({ c, ip: (await c.address())! })));
    const ips = withIps.map((x) => x.ip);
    assert.ok(ips.every(Boolean), `every container kept an address: ${ips.join(' ')}`);
    assert.equal(new Set(ips).size, ips.length, `no address held twice: ${ips.join(' ')}`);
    const t0 = Date.now();
    let failures: string[] = [];
    await waitFor('every container pair pings', async () => {
      failures = await allPairsPing(withIps);
      return failures.length === 0;
    }, { timeoutMs: 60_000, intervalMs: 1000 }).catch(() => assert.fail(`pairs that do not ping: ${failures.join(', ')}`));
    process.stdout.write(`# ${withIps.length} containers, ${withIps.length * (withIps.length - 1)} pairs ping (${Date.now() - t0} ms after the last restart settled)\n`);

    // IPAM: each address is allocated once across the mesh
    const allocs: string[] = [];
    for (const h of hosts) for (const a of (await h.report()).ipam.status.allocations) allocs.push(...a.addrs);
    assert.equal(new Set(allocs).size, allocs.length, `IPAM allocations are unique: ${allocs.join(' ')}`);

    let views: string[] = [];
    await waitFor('every router has the same DNS view', async () => {
      views = await Promise.all(hosts.map(async (h) => dnsView(await h.report())));
      return views.every((v) => v === views[0]);
    }, { timeoutMs: 30_000, intervalMs: 500 }).catch(() => assert.fail(`DNS views differ:\n${views.join('\n')}`));
    for (const { c } of attached) assert.match(views[0], new RegExp(`${c.name}\\.weave\\.local\\.=`), `${c.name} is in DNS`);
    assert.equal(views[0].split(' ').filter((e) => e.startsWith('extra')).length, names, 'every added name is in DNS');
  });
});
