// Endpoints on a real kernel: containers in lab namespaces attached to a lab host (driven from the test
// process through ctx.netns). Checks connectivity through proxy ARP and /32 routes, that detach removes
// exactly what attach made, idempotent re-attach, the three NETNS spellings, bad input, restart, expose.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'path';
import { spawn } from 'child_process';
import { Lab, Host } from '../lab/lab';
import { run, waitFor } from '../lab/exec';
import { Endpoints } from '../../router/endpoints';
import { RouteReconciler } from '../../host/routes';
import { listMasquerade } from '../../host/expose';
import { realClock } from '../../lib/clock';
import { MemoryLogger } from '../../lib/log';
import { UsageError } from '../../lib/errors';
import { readStateFile } from '../../lib/state-file';

function make(host: Host, dataDir = host.dataDir, log = new MemoryLogger()) {
  const routes = new RouteReconciler({ ctx: { netns: host.ns }, log, clock: realClock });
  const ep = new Endpoints({ ctx: { netns: host.ns }, log, clock: realClock, dataDir, routes, mtu: () => 1400 });
  return { routes, ep, log };
}

/** Link/address/route state of a namespace, minus counters that change on their own. */
async function snapshot(ns: string): Promise<string> {
  const j = async (args: string[]) => JSON.parse((await run(['ip', '-n', ns, '-j', ...args])).stdout || '[]');
  const links = (await j(['link', 'show'])).map((l: any) => ({ ifname: l.ifname, address: l.address, mtu: l.mtu, flags: l.flags }));
  // IPv4 only: IPv6 link-local addresses and their routes appear on their own (DAD) at any time
  const addrs = (await j(['-4', 'addr', 'show'])).map((a: any) => ({ ifname: a.ifname, addr: (a.addr_info ?? []).map((i: any) => `${i.local}/${i.prefixlen}`) }));
  const routes = await j(['-4', 'route', 'show', 'table', 'all']);
  return JSON.stringify({ links, addrs, routes });
}

async function routesOf(ns: string, args: string[] = []): Promise<any[]> {
  return JSON.parse((await run(['ip', '-n', ns, '-j', 'route', 'show', ...args])).stdout || '[]');
}

test('attach: two containers ping through the host; re-attach idempotent; detach restores state', async () => {
  const lab = await Lab.create();
  try {
    const h = await lab.addHost('h1');
    const c1 = await lab.addContainer('c1');
    const c2 = await lab.addContainer('c2');
    const before = { h: await snapshot(h.ns), c1: await snapshot(c1.ns), c2: await snapshot(c2.ns) };
    const { ep, routes } = make(h);
    const changed: unknown[] = [];
    ep.on('changed', (e) => changed.push(e));

    const r1 = await ep.attach(c1.ns, ['10.32.0.2/12']);
    const r2 = await ep.attach(c2.ns, ['10.32.0.3/12'], { name: 'web' });
    assert.equal(r1.created, true);
    assert.deepEqual(r1.added, ['10.32.0.2/12']);
    assert.match(r1.hostIfname, /^vethwe[0-9a-f]{9}$/);
    assert.match(r1.mac, /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
    assert.equal(await c1.address(), '10.32.0.2');
    assert.equal(changed.length, 2);
    assert.deepEqual(ep.servedPrefixes(), ['10.32.0.2/32', '10.32.0.3/32']);

    // the host: /32 per address with our protocol, proxy ARP on, forwarding on
    const ours = await routesOf(h.ns, ['proto', String(routes.protocol)]);
    assert.deepEqual(ours.map((r) => `${r.dst} ${r.dev}`).sort(), [`10.32.0.2 ${r1.hostIfname}`, `10.32.0.3 ${r2.hostIfname}`]);
    assert.equal((await h.exec(['sysctl', '-n', `net.ipv4.conf.${r1.hostIfname}.proxy_arp`])).stdout.trim(), '1');
    assert.equal((await h.exec(['sysctl', '-n', 'net.ipv4.ip_forward'])).stdout.trim(), '1');
    // the container: overlay and multicast routed on ethwe, MTU from mtu()
    const cr = await routesOf(c1.ns);
    assert.ok(cr.some((r) => r.dst === '10.32.0.0/12' && r.dev === 'ethwe'), JSON.stringify(cr));
    assert.ok(cr.some((r) => r.dst === '224.0.0.0/4' && r.dev === 'ethwe'), JSON.stringify(cr));
    const link = JSON.parse((await run(['ip', '-n', c1.ns, '-j', 'link', 'show', 'ethwe'])).stdout)[0];
    assert.equal(link.mtu, 1400);

    await c1.exec(['ping', '-c', '2', '-i', '0.2', '-W', '2', '10.32.0.3']);
    await c2.exec(['ping', '-c', '1', '-W', '2', '10.32.0.2']);

    // re-attach: same link, no duplicate address; a new address is added and routed
    const again = await ep.attach(c1.ns, ['10.32.0.2/12']);
    assert.equal(again.created, false);
    assert.deepEqual(again.added, []);
    const more = await ep.attach(c1.ns, ['10.32.0.2/12', '10.32.0.12/12']);
    assert.deepEqual(more.added, ['10.32.0.12/12']);
    assert.deepEqual(more.addrs, ['10.32.0.2/12', '10.32.0.12/12']);
    const links = JSON.parse((await run(['ip', '-n', h.ns, '-j', 'link', 'show'])).stdout).filter((l: any) => l.ifname.startsWith('vethwe'));
    assert.equal(links.length, 2);
    const addrs = JSON.parse((await run(['ip', '-n', c1.ns, '-j', 'addr', 'show', 'ethwe'])).stdout)[0].addr_info.filter((a: any) => a.family === 'inet');
    assert.deepEqual(addrs.map((a: any) => a.local).sort(), ['10.32.0.12', '10.32.0.2']);
    await c2.exec(['ping', '-c', '1', '-W', '2', '10.32.0.12']);
    assert.equal(ep.list().length, 2);
    assert.equal(ep.list().find((e) => e.netns === c2.ns)?.name, 'web');

    // partial detach: only that address (and its /32) goes; the other keeps working
    const d1 = await ep.detach(c1.ns, ['10.32.0.2']);
    assert.deepEqual(d1, { netns: c1.ns, removed: ['10.32.0.2/12'], linkRemoved: false, namespaceGone: false });
    assert.equal(await c1.address(), '10.32.0.12');
    assert.ok((await routesOf(c1.ns)).some((r) => r.dst === '10.32.0.0/12' && r.dev === 'ethwe'), 'overlay route kept after removing the first address');
    await c2.exec(['ping', '-c', '1', '-W', '2', '10.32.0.12']);
    assert.equal((await c2.exec(['ping', '-c', '1', '-W', '1', '10.32.0.2'], { allowFail: true })).code !== 0, true, 'detached address must not answer');
    assert.deepEqual(ep.servedPrefixes(), ['10.32.0.12/32', '10.32.0.3/32']);

    // full detach: everything attach made is gone, in the host and in the containers
    const d2 = await ep.detach(c1.ns);
    assert.equal(d2.linkRemoved, true);
    await ep.detach(c2.ns);
    assert.deepEqual(ep.list(), []);
    assert.deepEqual(ep.servedPrefixes(), []);
    assert.equal(await snapshot(c1.ns), before.c1);
    assert.equal(await snapshot(c2.ns), before.c2);
    assert.equal(await snapshot(h.ns), before.h);
    const file = readStateFile(path.join(h.dataDir, 'endpoints.json'), 'endpoints');
    assert.equal(file.status, 'ok');
    assert.deepEqual(JSON.parse(file.status === 'ok' ? file.payload.toString('utf8') : '{}').endpoints, []);
  } finally {
    await lab.cleanup();
  }
});

test('attach: NETNS by name, by path and by PID are one namespace; bad input says what to fix', async () => {
  const lab = await Lab.create();
  let sleeper: ReturnType<typeof spawn> | undefined;
  try {
    const h = await lab.addHost('h1');
    const c1 = await lab.addContainer('c1');
    const c2 = await lab.addContainer('c2');
    const { ep } = make(h);
    const byName = await ep.attach(c1.ns, ['10.32.1.2/12']);
    const byPath = await ep.attach(`/var/run/netns/${c1.ns}`, ['10.32.1.3/12']);
    assert.equal(byPath.hostIfname, byName.hostIfname);
    assert.equal(byPath.created, false);

    sleeper = spawn('ip', ['netns', 'exec', c1.ns, 'sleep', '60'], { stdio: 'ignore' });
    const pid = await waitFor('sleep inside the container namespace', async () => {
      const pids = await lab.pidsIn(c1.ns);
      return pids.length ? pids[0] : undefined;
    }, { timeoutMs: 5000, intervalMs: 20 });
    const byPid = await ep.attach(String(pid), ['10.32.1.4/12']);
    assert.equal(byPid.hostIfname, byName.hostIfname);
    assert.deepEqual(byPid.addrs, ['10.32.1.2/12', '10.32.1.3/12', '10.32.1.4/12']);
    const byProcPath = await ep.attach(`/proc/${pid}/ns/net`, ['10.32.1.4/12']);
    assert.deepEqual(byProcPath.added, []);
    assert.equal(ep.list().length, 1);

    const usage = async (p: Promise<unknown>, re: RegExp) => {
      await assert.rejects(p, (e: unknown) => e instanceof UsageError && re.test(e.message), String(re));
    };
    await usage(ep.attach(c2.ns, ['10.32.1.2/12']), new RegExp(`10\\.32\\.1\\.2 is already attached to namespace ${c1.ns}`));
    await usage(ep.attach(c2.ns, ['10.32.1.300/12']), /invalid address "10\.32\.1\.300\/12": 300 is greater than 255/);
    await usage(ep.attach(c2.ns, ['10.32.1.5']), /prefix length is missing; write it like 10\.32\.0\.5\/12/);
    await usage(ep.attach(c2.ns, ['10.32.0.0/12']), /network address/);
    await usage(ep.attach(c2.ns, []), /at least one address/);
    await usage(ep.attach(`${c2.ns}-nope`, ['10.32.1.9/12']), /no network namespace named/);
    await usage(ep.attach('4194305', ['10.32.1.9/12']), /no process with PID/);
    await usage(ep.attach(`/var/run/netns/${h.ns}`, ['10.32.1.9/12']), /host's own network namespace/);
    await usage(ep.attach(c1.ns, ['10.32.1.3/24']), /already attached .* as 10\.32\.1\.3\/12/);
    await usage(ep.detach(c2.ns), /nothing is attached/);
    await usage(ep.detach(c1.ns, ['10.32.9.9']), /not attached to/);
    // failed attaches left nothing behind in c2
    assert.equal(await c2.address(), undefined);
    assert.equal(ep.list().length, 1);

    // a foreign ethwe is not taken over
    await run(['ip', '-n', c2.ns, 'link', 'add', 'ethwe', 'type', 'veth', 'peer', 'name', 'other']);
    await usage(ep.attach(c2.ns, ['10.32.1.9/12']), /already has an interface named ethwe/);
    const hostVeths = JSON.parse((await run(['ip', '-n', h.ns, '-j', 'link', 'show'])).stdout).filter((l: any) => /^veth(we|wg)/.test(l.ifname));
    assert.equal(hostVeths.length, 1, 'no half-made veth after the refused attach');

    // detach by PID after the process is gone: the namespace lives on by name, state still found by key
    sleeper.kill('SIGKILL');
    await waitFor('sleep to exit', async () => (await lab.pidsIn(c1.ns)).length === 0, { timeoutMs: 5000, intervalMs: 20 });
    const d = await ep.detach(c1.ns);
    assert.equal(d.linkRemoved, true);
    assert.deepEqual(ep.list(), []);
  } finally {
    sleeper?.kill('SIGKILL');
    await lab.cleanup();
  }
});

test('attach: detach of a namespace that is gone cleans the leftover state', async () => {
  const lab = await Lab.create();
  try {
    const h = await lab.addHost('h1');
    const c1 = await lab.addContainer('c1');
    const { ep, routes } = make(h);
    const r = await ep.attach(c1.ns, ['10.32.2.2/12']);
    await run(['ip', 'netns', 'del', c1.ns]);
    // deleting the namespace destroys the veth pair; our /32 goes with its device
    await waitFor('host veth to vanish', async () => !JSON.parse((await run(['ip', '-n', h.ns, '-j', 'link', 'show'])).stdout).some((l: any) => l.ifname === r.hostIfname), { timeoutMs: 5000, intervalMs: 50 });
    const d = await ep.detach(c1.ns);
    assert.deepEqual(d, { netns: c1.ns, removed: ['10.32.2.2/12'], linkRemoved: false, namespaceGone: true });
    assert.deepEqual(ep.list(), []);
    assert.deepEqual(await routesOf(h.ns, ['proto', String(routes.protocol)]), []);
    await assert.rejects(ep.detach(c1.ns), (e: unknown) => e instanceof UsageError && /nothing weave attached is recorded/.test(e.message));
  } finally {
    await lab.cleanup();
  }
});

test('endpoints: state survives a restart and a flushed route is re-programmed', async () => {
  const lab = await Lab.create();
  try {
    const h = await lab.addHost('h1');
    const c1 = await lab.addContainer('c1');
    const c2 = await lab.addContainer('c2');
    const c3 = await lab.addContainer('c3');
    const first = make(h);
    await first.ep.attach(c1.ns, ['10.32.3.2/12']);
    await first.ep.attach(c2.ns, ['10.32.3.3/12']);
    await first.ep.attach(c3.ns, ['10.32.3.4/12']);
    first.routes.stop();
    // while "the router is down": a route flushed by hand, a container address lost, a namespace deleted
    await run(['ip', '-n', h.ns, 'route', 'flush', 'proto', String(first.routes.protocol)]);
    await run(['ip', '-n', c2.ns, 'addr', 'flush', 'dev', 'ethwe']);
    await run(['ip', 'netns', 'del', c3.ns]);
    assert.notEqual((await c1.exec(['ping', '-c', '1', '-W', '1', '10.32.3.3'], { allowFail: true })).code, 0);

    const second = make(h);
    assert.equal(second.ep.list().length, 3, 'state read back from the data dir');
    const res = await second.ep.restore();
    assert.deepEqual(res, { kept: 2, dropped: 1 });
    assert.deepEqual(second.ep.servedPrefixes(), ['10.32.3.2/32', '10.32.3.3/32']);
    // c1 holds a FAILED neighbour entry from the ping above; re-resolution may take a moment under load
    await waitFor('c1 to reach 10.32.3.3 after restore', async () => (await c1.exec(['ping', '-c', '1', '-W', '1', '10.32.3.3'], { allowFail: true })).code === 0, { timeoutMs: 15_000, intervalMs: 100 });

    // the reconciler's timer heals a route deleted while running
    second.routes.start(100);
    try {
      await run(['ip', '-n', h.ns, 'route', 'del', '10.32.3.2/32']);
      await waitFor('route 10.32.3.2 to come back', async () => (await routesOf(h.ns)).some((r) => r.dst === '10.32.3.2'), { timeoutMs: 3000, intervalMs: 25 });
    } finally {
      second.routes.stop();
    }
    await c2.exec(['ping', '-c', '1', '-W', '2', '10.32.3.2']);
  } finally {
    await lab.cleanup();
  }
});

test('expose and hide: host address on the overlay, masquerade rules present then absent', async () => {
  const lab = await Lab.create();
  try {
    const h = await lab.addHost('h1');
    const c1 = await lab.addContainer('c1');
    const before = await snapshot(h.ns);
    const { ep, routes } = make(h);
    await ep.attach(c1.ns, ['10.32.4.2/12']);
    // without expose the host has no overlay source address: the container cannot answer it
    assert.equal(ep.hostSource(), undefined);

    const x = await ep.expose(['10.32.4.1/12'], { masquerade: true });
    assert.deepEqual(x.added, ['10.32.4.1/12']);
    assert.equal(ep.hostSource(), '10.32.4.1');
    assert.deepEqual(ep.servedPrefixes(), ['10.32.4.1/32', '10.32.4.2/32']);
    const wa = JSON.parse((await run(['ip', '-n', h.ns, '-j', 'addr', 'show', 'dev', 'weave'])).stdout)[0].addr_info.filter((a: any) => a.family === 'inet').map((a: any) => `${a.local}/${a.prefixlen}`);
    assert.deepEqual(wa, ['10.32.4.1/32']);
    const ours = await routesOf(h.ns, ['proto', String(routes.protocol)]);
    assert.equal(ours[0].prefsrc, '10.32.4.1', 'endpoint routes carry the exposed source');
    // host <-> container both ways
    await h.exec(['ping', '-c', '1', '-W', '2', '10.32.4.2']);
    await c1.exec(['ping', '-c', '1', '-W', '2', '10.32.4.1']);
    const masq = await listMasquerade({ netns: h.ns });
    assert.equal(masq.length, 1);
    const listing = (await h.exec(['nft', 'list', 'chain', 'inet', 'weave', 'expose-nat'])).stdout;
    assert.match(listing, /ip saddr 10\.32\.0\.0\/12 ip daddr != 10\.32\.0\.0\/12 masquerade/);

    // a container reaching "the outside" (the underlay) is masqueraded to the host's underlay address
    await run(['ip', '-n', c1.ns, 'route', 'add', '198.18.0.0/16', 'dev', 'ethwe']);
    const h2 = await lab.addHost('h2');
    await c1.exec(['ping', '-c', '1', '-W', '2', h2.ip]);

    await assert.rejects(ep.expose(['10.32.4.2/12']), (e: unknown) => e instanceof UsageError && /attached to namespace/.test(e.message));
    await assert.rejects(ep.attach(c1.ns, ['10.32.4.1/12']), (e: unknown) => e instanceof UsageError && /exposed on this host/.test(e.message));
    await assert.rejects(ep.hide(['10.32.9.9']), (e: unknown) => e instanceof UsageError && /not exposed/.test(e.message));

    // expose without masquerade keeps the address, drops the rule
    await ep.hide();
    assert.deepEqual(await listMasquerade({ netns: h.ns }), []);
    await ep.expose(['10.32.4.1/12']);
    assert.deepEqual(await listMasquerade({ netns: h.ns }), []);
    assert.notEqual((await c1.exec(['ping', '-c', '1', '-W', '1', h2.ip], { allowFail: true })).code, 0, 'without masquerade the outside cannot answer the overlay address');
    const hid = await ep.hide(['10.32.4.1']);
    assert.deepEqual(hid, { removed: ['10.32.4.1/12'], exposed: [] });
    assert.equal(ep.hostSource(), undefined);
    assert.equal((await routesOf(h.ns, ['proto', String(routes.protocol)]))[0].prefsrc, undefined);
    await ep.detach(c1.ns);
    assert.equal(await snapshot(h.ns), before, 'hide + detach leave the host as it was');
  } finally {
    await lab.cleanup();
  }
});
