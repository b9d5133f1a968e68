// IPAM on real routers in lab hosts, driven through the weave CLI only: allocation without addresses,
// restart with the data dir, rmpeer after kill -9, separately seeded meshes meeting, and allocation
// that blocks (visibly) rather than collide while detach/hide stay quick.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Container, Host, Lab, withLab } from '../lab/lab';
import { run, waitFor } from '../lab/exec';

const RANGE_START = ip4('10.32.0.0');
const RANGE_END = RANGE_START + 2 ** 20;

/** Prints how long each phase took (visible in the TAP output) so slow steps show up. */
function phases(): (label: string) => void {
  let last = Date.now();
  return (label) => {
    const now = Date.now();
    console.log(`# ${label}: ${now - last} ms`);
    last = now;
  };
}

function ip4(s: string): number {
  return s.split('.').reduce((n, p) => n * 256 + Number(p), 0);
}

function inRange(cidr: string): boolean {
  const [a, len] = cidr.split('/');
  const n = ip4(a);
  return len === '12' && n > RANGE_START && n < RANGE_END - 1;
}

async function launch(h: Host, args: string[]): Promise<string> {
  const r = await h.weave(['launch', '--nickname', h.name, '--no-fastdp', ...args]);
  return r.stdout.trim();
}

async function attach(h: Host, c: Container, args: string[] = []): Promise<string> {
  const r = await h.weave(['attach', ...args, c.ns]);
  return r.stdout.trim();
}

async function waitPeers(h: Host, n: number): Promise<void> {
  await waitFor(`${h.name} to have ${n - 1} established connections`, async () => {
    const rep = await h.report();
    return rep.router.connections.filter((c: any) => c.state === 'established').length === n - 1;
  }, { timeoutMs: 30_000, intervalMs: 250 });
}

async function ipam(h: Host): Promise<any> {
  return (await h.report()).ipam;
}

async function pingable(c: Container, addr: string, timeoutMs = 20_000): Promise<void> {
  await waitFor(`${c.name} to ping ${addr}`, async () => (await c.exec(['ping', '-c', '1', '-W', '1', addr], { allowFail: true })).code === 0, { timeoutMs, intervalMs: 200 });
}

async function containers(lab: Lab, prefix: string, n: number): Promise<Container[]> {
  const out: Container[] = [];
  for (let i = 0; i < n; i++) out.push(await lab.addContainer(`${prefix}${i}`));
  return out;
}

test('3 hosts, 30 containers attached concurrently without addresses: distinct, in range, all reachable', async () => {
  await withLab(async (lab) => {
    const hosts = [await lab.addHost('h1'), await lab.addHost('h2'), await lab.addHost('h3')];
    // every router gets the same initial peer list, so all use the same quorum (2 of 3)
    for (const h of hosts) await launch(h, hosts.filter((x) => x !== h).map((x) => x.ip));
    for (const h of hosts) await waitPeers(h, 3);
    const cs = await containers(lab, 'c', 30);
    const t0 = Date.now();
    const done: number[] = [];
    const addrs = await Promise.all(cs.map(async (c, i) => {
      const a = await attach(hosts[i % 3], c);
      done.push(Date.now() - t0);
      return a;
    }));
    const attachMs = Date.now() - t0;
    console.log(`# 30 concurrent attaches (no address) on 3 hosts: ${attachMs} ms (first done ${done[0]} ms, median ${done[14]} ms)`);
    const prime = await Promise.all(hosts.map(async (h) => { const t = Date.now(); await h.weave(['prime']); return Date.now() - t; }));
    console.log(`# weave prime afterwards (a CLI round trip, for scale): ${prime.join(' / ')} ms`);
    for (const a of addrs) assert.ok(inRange(a), `${a} is a host address inside 10.32.0.0/12 with its prefix length`);
    assert.equal(new Set(addrs).size, 30, `30 distinct addresses: ${addrs.join(' ')}`);
    for (let i = 0; i < cs.length; i++) assert.equal(await cs[i].address(), addrs[i].split('/')[0], `${cs[i].name} has its address on ethwe`);

    const st = await ipam(hosts[0]);
    assert.equal(st.status.ring.seeded, true);
    assert.equal(st.status.owners.reduce((n: number, o: any) => n + o.addresses, 0), 2 ** 20, 'the ring covers the whole range');
    const allocated = (await Promise.all(hosts.map(ipam))).reduce((n, s) => n + s.status.allocated, 0);
    assert.equal(allocated, 30, 'each router records exactly its own allocations');
    const text = (await hosts[0].weave(['status', 'ipam'])).stdout;
    for (const h of hosts) assert.match(text, new RegExp(`\\(${h.name}\\)\\s+\\d+ IPs \\(`), text);
    assert.doesNotMatch(text, /unreachable!/);
    const summary = (await hosts[1].weave(['status'])).stdout;
    assert.match(summary, /Service: ipam/);
    assert.match(summary, /Range: 10\.32\.0\.0\/12/);
    assert.match(summary, /Status: ready/);
    // each router announces the prefixes of its ranges
    for (const h of hosts) assert.ok((await ipam(h)).announced.length > 0, `${h.name} announces its ranges`);

    // every container pings one container on each other host ...
    const ip = addrs.map((a) => a.split('/')[0]);
    const t1 = Date.now();
    await Promise.all(cs.map(async (c, i) => {
      for (const d of [1, 2]) await pingable(c, ip[(i + d) % 30], 30_000); // i+1, i+2 live on the two other hosts
    }));
    // ... and a full mesh among a sample of 6 (two per host)
    const sample = [0, 1, 2, 15, 16, 17];
    await Promise.all(sample.map(async (i) => {
      for (const j of sample) if (j !== i) await pingable(cs[i], ip[j], 30_000);
    }));
    console.log(`# 60 cross-host + 30 sample pings: ${Date.now() - t1} ms`);
  });
});

test('restart with the data dir: containers keep their addresses; an address freed while down is reusable', async () => {
  await withLab(async (lab) => {
    const [h1, h2] = [await lab.addHost('h1'), await lab.addHost('h2')];
    const mark = phases();
    await launch(h1, [h2.ip]);
    await launch(h2, [h1.ip]);
    await waitPeers(h1, 2);
    mark('launch + connect');
    const [c1, c2, c3] = await containers(lab, 'c', 3);
    const a1 = await attach(h1, c1);
    const a2 = await attach(h1, c2);
    const a3 = await attach(h2, c3);
    assert.equal(new Set([a1, a2, a3]).size, 3);
    const before = await ipam(h1);
    mark('3 attaches');

    await h1.killAll('SIGKILL');
    // c2 goes away while its router is down
    await run(['ip', 'netns', 'del', c2.ns]);
    await launch(h1, ['--resume']);
    mark('kill + relaunch');
    await waitPeers(h1, 2);
    mark('reconnect');

    const after = await ipam(h1);
    assert.deepEqual(after.status.owners.map((o: any) => [o.peer, o.addresses]), before.status.owners.map((o: any) => [o.peer, o.addresses]), 'the ring survived the restart');
    const kept = after.status.allocations.flatMap((x: any) => x.addrs);
    assert.deepEqual(kept, [a1.split('/')[0]], 'c1 keeps its allocation; c2\'s is freed');
    assert.equal(await c1.address(), a1.split('/')[0]);
    const ps = (await h1.weave(['ps'])).stdout;
    assert.match(ps, new RegExp(`${c1.ns} .* ${a1.replace(/\./g, '\\.')}`));
    // asking again for c1 gives the same address
    assert.equal(await attach(h1, c1), a1);
    // c2's address is reusable: claim it explicitly for a new container
    mark('checks');
    const c4 = await lab.addContainer('c4');
    assert.equal(await attach(h1, c4, [a2]), a2);
    // a new allocation never hands out a held address
    const c5 = await lab.addContainer('c5');
    const a5 = await attach(h1, c5);
    assert.ok(![a1, a2, a3].includes(a5), `${a5} is new`);
    // claiming an address a live peer holds is refused with a clear message
    mark('claims');
    const c6 = await lab.addContainer('c6');
    const bad = await h1.weave(['attach', a3, c6.ns], { allowFail: true });
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /live peer .*\(h2\)/, bad.stderr);
    // detach frees: the address can be claimed by another container at once
    mark('refused claim');
    await h1.weave(['detach', c4.ns]);
    assert.equal(await attach(h1, c6, [a2]), a2);
    mark('detach + claim');
  });
});

test('kill -9 of the router owning the space, then rmpeer: allocation works again on all survivors within seconds', async () => {
  await withLab(async (lab) => {
    const [h1, h2, h3] = [await lab.addHost('h1'), await lab.addHost('h2'), await lab.addHost('h3')];
    await launch(h1, ['--ipalloc-timeout', '3']);
    await h1.weave(['prime']); // alone: quorum 1, h1 owns the whole range
    await launch(h2, ['--ipalloc-timeout', '3', h1.ip]);
    await launch(h3, ['--ipalloc-timeout', '3', h1.ip]);
    for (const h of [h2, h3]) await waitFor(`${h.name} to learn the ring`, async () => (await ipam(h)).status.ring.seeded, { timeoutMs: 20_000 });
    const owners = (await ipam(h2)).status.owners;
    const biggest = owners[0];
    assert.equal(biggest.nickname, 'h1', JSON.stringify(owners));
    assert.equal(biggest.percent, 100);

    await h1.killAll('SIGKILL');
    await waitFor('h2 to see h1 unreachable', async () => /\(h1\).* - unreachable!/.test((await h2.weave(['status', 'ipam'])).stdout), { timeoutMs: 20_000 });
    // before rmpeer: allocation cannot get space, and says why
    const [c0, c1, c2] = await containers(lab, 'c', 3);
    const blocked = await h3.weave(['attach', c0.ns], { allowFail: true });
    assert.notEqual(blocked.code, 0);
    assert.match(blocked.stderr, /unreachable.*rmpeer/, blocked.stderr);

    const t0 = Date.now();
    const r = await h2.weave(['rmpeer', 'h1']);
    const taken = Number(/^(\d+) IPs taken over/.exec(r.stdout)?.[1]);
    assert.equal(taken, 2 ** 20, r.stdout);
    const [a1, a2] = await Promise.all([attach(h2, c1), attach(h3, c2)]);
    const recoveryMs = Date.now() - t0;
    console.log(`# rmpeer + first allocation on both survivors: ${recoveryMs} ms`);
    assert.ok(recoveryMs < 10_000, `recovered in ${recoveryMs} ms`);
    assert.ok(inRange(a1) && inRange(a2) && a1 !== a2, `${a1} ${a2}`);
    const text = (await h3.weave(['status', 'ipam'])).stdout;
    assert.doesNotMatch(text, /\(h1\)/, 'h1 owns nothing any more');
    // rmpeer of a live peer is refused
    const live = await h3.weave(['rmpeer', 'h2'], { allowFail: true });
    assert.notEqual(live.code, 0);
    assert.match(live.stderr, /reachable/);
    // weave reset hands h3's space to the live peer before leaving
    await h3.weave(['reset']);
    await waitFor('h2 to own the whole range again', async () => {
      const o = (await ipam(h2)).status.owners;
      return o.length === 1 && o[0].nickname === 'h2' && o[0].addresses === 2 ** 20;
    }, { timeoutMs: 15_000 });
  });
});

test('two separately seeded meshes connect: both stay up, the conflict is reported and repaired into one ring, nothing is allocated twice', async () => {
  await withLab(async (lab) => {
    const [h1, h2] = [await lab.addHost('h1'), await lab.addHost('h2')];
    const mark = phases();
    const n1 = '02:00:00:aa:00:01';
    await launch(h1, ['--name', n1, '--ipalloc-init', `seed=${n1}`]); // sorts first: h1's ring wins
    await launch(h2, ['--name', '02:00:00:aa:00:02', '--ipalloc-init', 'seed=h2']); // its own nickname
    const cs = await containers(lab, 'c', 12);
    const [d1, d2] = await containers(lab, 'd', 2);
    mark('launch');
    const first = await Promise.all(cs.slice(0, 6).map((c, i) => attach(i % 2 ? h2 : h1, c)));
    // a true duplicate: both meshes hand out the same address before they meet
    const DUP = '10.32.200.9/12';
    assert.equal(await attach(h1, d1, [DUP]), DUP);
    assert.equal(await attach(h2, d2, [DUP]), DUP);
    mark('6 attaches + a duplicate');
    await h1.weave(['connect', h2.ip]);
    await waitPeers(h1, 2);
    mark('connect');
    await waitFor('the conflict to be reported', async () => (await ipam(h1)).status.conflicts.count > 0 && (await ipam(h2)).status.conflicts.count > 0, { timeoutMs: 40_000 });
    mark('conflict seen');
    const text = await waitFor('one ring on both, repair done', async () => {
      const [t1, t2] = [(await h1.weave(['status', 'ipam'])).stdout, (await h2.weave(['status', 'ipam'])).stdout];
      return /merge repair: done: one ring/.test(t1) && /merge repair: done: one ring/.test(t2) && /DUPLICATE 10\.32\.200\.9/.test(t1) ? [t1, t2] : undefined;
    }, { timeoutMs: 40_000, intervalMs: 500 });
    mark('repaired');
    console.log(`# status ipam on h2 after the repair:\n${text[1].trim().split('\n').map((l) => `#   ${l}`).join('\n')}`);
    assert.match(text[1], /merge repair: adopted the ring seeded by \[02:00:00:aa:00:01\]/);
    const [r1, r2] = [await ipam(h1), await ipam(h2)];
    assert.deepEqual(r2.status.ring.seeds, r1.status.ring.seeds);
    assert.deepEqual(r1.status.ring.seeds, [n1]);
    assert.equal(r1.status.owners.reduce((n: number, o: any) => n + o.addresses, 0), 2 ** 20, 'the one ring covers the range once');
    assert.deepEqual(r2.status.repair.held, [DUP.split('/')[0]], 'h2 holds only the duplicate outside its space');

    const second = await Promise.all(cs.slice(6).map((c, i) => attach(i % 2 ? h2 : h1, c)));
    mark('6 more attaches');
    const all = [...first, ...second, DUP];
    assert.equal(new Set(all).size, 13, `nothing allocated twice: ${all.join(' ')}`);
    for (let i = 0; i < 6; i++) assert.equal(await cs[i].address(), first[i].split('/')[0], `${cs[i].name} keeps its address`);
    for (const h of [h1, h2]) {
      const rep = await h.report();
      assert.equal(rep.router.connections.filter((c: any) => c.state === 'established').length, 1, `${h.name} stays connected`);
      assert.match((await h.weave(['status'])).stdout, /Conflicts: [1-9]/);
      assert.match((await h.weave(['status'])).stdout, /Repair: done: one ring/);
    }
    assert.match(text[0], /conflicts: [1-9]/);
    assert.match(await h1.httpGet('/metrics'), /weave_ipam_conflicts_total [1-9]/);
    // old and new containers on both sides reach each other (h2's old addresses now route to h2)
    const ip = [...first, ...second].map((a) => a.split('/')[0]);
    await Promise.all(cs.map(async (c, i) => {
      for (const d of [1, 3, 7]) await pingable(c, ip[(i + d) % 12], 30_000); // odd distance: the other host
    }));
    mark('pings');
  });
});

test('consensus impossible: allocation blocks with a visible reason; detach and hide never block', async () => {
  await withLab(async (lab) => {
    const [h1, h2, h3] = [await lab.addHost('h1'), await lab.addHost('h2'), await lab.addHost('h3')];
    await launch(h1, ['--ipalloc-init', 'consensus=3', '--ipalloc-timeout', '8', h2.ip]);
    await launch(h2, ['--ipalloc-init', 'consensus=3', '--ipalloc-timeout', '8', h1.ip]);
    await waitPeers(h1, 2);
    const [c1, c2] = await containers(lab, 'c', 2);
    // an address outside the range needs no IPAM
    assert.equal(await attach(h1, c2, ['192.168.77.2/24']), '192.168.77.2/24');
    await h1.weave(['expose', '192.168.78.1/24']);

    const t0 = Date.now();
    const pending = h1.weave(['attach', c1.ns], { allowFail: true });
    const st = await waitFor('the pending allocation to show in status', async () => {
      const s = (await h1.weave(['status', 'ipam'])).stdout;
      return /pending: .* waiting for consensus on the ring: \d of 3 needed peers agree/.test(s) ? s : undefined;
    }, { timeoutMs: 6000, intervalMs: 200 });
    assert.match(st, /waiting for consensus/);
    assert.match((await h1.weave(['status'])).stdout, /Pending: 1 \(waiting for consensus/);
    // while it waits, detach and hide answer at once
    let t = Date.now();
    await h1.weave(['detach', c2.ns]);
    const detachMs = Date.now() - t;
    t = Date.now();
    await h1.weave(['hide', '192.168.78.1/24']);
    const hideMs = Date.now() - t;
    assert.ok(detachMs < 3000 && hideMs < 3000, `detach ${detachMs} ms, hide ${hideMs} ms`);
    const r = await pending;
    assert.notEqual(r.code, 0, 'attach fails instead of colliding');
    assert.match(r.stderr, /within 8s: waiting for consensus on the ring: \d of 3 needed peers agree/, r.stderr);
    assert.ok(Date.now() - t0 >= 7000, 'the allocation waited for its bound');
    assert.equal((await ipam(h1)).status.allocated, 0);

    // the third peer makes consensus possible
    await launch(h3, ['--ipalloc-init', 'consensus=3', h1.ip, h2.ip]);
    await h1.weave(['prime'], { timeoutMs: 60_000 });
    const a = await attach(h1, c1);
    assert.ok(inRange(a), a);
    assert.equal((await ipam(h2)).status.ring.seeded, true);
  });
});
