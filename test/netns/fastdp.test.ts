// The fast datapath end to end on this kernel (VXLAN yes, ESP no): real routers in lab hosts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Container, Host, Lab, withLab } from '../lab/lab';
import { run, waitFor } from '../lab/exec';
import { capture, iperf, ipv4Packets, pingable } from '../lab/traffic';

async function launch(h: Host, args: string[], env: Record<string, string> = {}): Promise<void> {
  await h.weave(['launch', '--nickname', h.name, ...args], { env });
}

/** Waits until h has a connection to `peerNick` carried by `overlay`; returns that connection. */
async function carriedBy(h: Host, peerNick: string, overlay: string, timeoutMs = 30_000): Promise<any> {
  return waitFor(`${h.name} -> ${peerNick} over ${overlay}`, async () => {
    const rep = await h.report();
    return rep.router.connections.find((c: any) => c.peerNickname === peerNick && c.state === 'established' && c.overlay === overlay);
  }, { timeoutMs, intervalMs: 250 });
}

async function pair(lab: Lab, opts: { env?: Record<string, string>; args2?: string[] } = {}): Promise<{ h1: Host; h2: Host; c1: Container; c2: Container }> {
  const h1 = await lab.addHost('h1');
  const h2 = await lab.addHost('h2');
  const c1 = await lab.addContainer('c1');
  const c2 = await lab.addContainer('c2');
  await launch(h1, [], opts.env);
  await launch(h2, [...(opts.args2 ?? []), h1.ip], opts.env);
  await h1.weave(['attach', '10.32.1.1/12', c1.ns]);
  await h2.weave(['attach', '10.32.2.1/12', c2.ns]);
  return { h1, h2, c1, c2 };
}

const MARKER = 'c0ffee00d15ea5e5feedfacecafebabe';

test('2 hosts without a password: fastdp carries, ping and iperf3 work, the data rides VXLAN (UDP 6784), not the sleeve port', async () => {
  await withLab(async (lab) => {
    const { h1, c1, c2 } = await pair(lab);
    const conn = await carriedBy(h1, 'h2', 'fastdp');
    assert.equal(conn.encrypted, false);
    assert.ok(conn.mtu >= 1400, `mtu=${conn.mtu}`);
    assert.match((await h1.weave(['status', 'connections'])).stdout, /fastdp/);
    await pingable(c1, '10.32.2.1');
    const pcap = await capture(lab, async () => {
      await c1.exec(['ping', '-c', '5', '-i', '0.2', '-p', MARKER, '10.32.2.1']);
    }, 'udp');
    const marker = Buffer.from(MARKER, 'hex');
    const pkts = ipv4Packets(pcap).filter((p) => p.payload.indexOf(marker) >= 0);
    assert.ok(pkts.length >= 5, `marker seen in ${pkts.length} packets`);
    assert.ok(pkts.every((p) => p.dport === 6784), `marker packets on ports ${[...new Set(pkts.map((p) => p.dport))]}`);
    const tcp = await iperf(c1, c2, '10.32.2.1');
    assert.ok(tcp.end.sum_received.bytes > 10_000_000, `TCP moved ${tcp.end.sum_received.bytes} bytes`);
    // the kernel carried it: the sleeve saw (almost) none of the transfer
    const rep = await h1.report();
    assert.ok(rep.sleeve.counters.tunInPackets < 100, `sleeve read ${rep.sleeve.counters.tunInPackets} packets from its TUN`);
  });
});

test('--no-fastdp on one side: sleeve, and both ends say why', async () => {
  await withLab(async (lab) => {
    const { h1, h2, c1 } = await pair(lab, { args2: ['--no-fastdp'] });
    const c = await carriedBy(h1, 'h2', 'sleeve');
    assert.match(c.overlayReason ?? '', /peer has no fastdp/);
    const c2 = await carriedBy(h2, 'h1', 'sleeve');
    assert.match(c2.overlayReason ?? '', /disabled by flag/);
    assert.match((await h1.weave(['status', 'connections'])).stdout, /sleeve.*peer has no fastdp/);
    await pingable(c1, '10.32.2.1');
  });
});

test('UDP 6784 dropped on the underlay: back to the sleeve within 10 s, traffic continues; drop removed: fastdp again within 30 s', async () => {
  await withLab(async (lab) => {
    const { h1, c1 } = await pair(lab);
    await carriedBy(h1, 'h2', 'fastdp');
    await pingable(c1, '10.32.2.1');
    const rule = await lab.underlayRule('udp dport 6784 drop');
    const t0 = Date.now();
    const c = await carriedBy(h1, 'h2', 'sleeve', 10_000);
    process.stdout.write(`# fell back to sleeve in ${Date.now() - t0} ms (${c.overlayReason})\n`);
    await pingable(c1, '10.32.2.1', 10_000);
    await lab.removeRule(rule);
    const t1 = Date.now();
    await carriedBy(h1, 'h2', 'fastdp', 30_000);
    process.stdout.write(`# back on fastdp in ${Date.now() - t1} ms\n`);
    await pingable(c1, '10.32.2.1', 10_000);
  });
});

test('an MTU black hole on the underlay is detected (fastdp gives way to the sleeve), and large packets still get through', async () => {
  await withLab(async (lab) => {
    const { h1, h2, c1 } = await pair(lab);
    await carriedBy(h1, 'h2', 'fastdp');
    // the bridge drops frames above its egress port's MTU without any ICMP: a black hole for full-size VXLAN
    await run(['ip', '-n', lab.underlay, 'link', 'set', h2.name, 'mtu', '1300']);
    const c = await carriedBy(h1, 'h2', 'sleeve', 15_000);
    assert.match(c.overlayReason ?? '', /MTU|heartbeat/i);
    await pingable(c1, '10.32.2.1', 15_000);
    // the sleeve learns the smaller path MTU at its next probe (every 10 s once established) and then
    // answers too-big packets with ICMP frag-needed, so the sender adapts
    const t0 = Date.now();
    await waitFor('1400-byte pings through the sleeve', async () => (await c1.exec(['ping', '-c', '1', '-W', '1', '-s', '1400', '10.32.2.1'], { allowFail: true })).code === 0, { timeoutMs: 25_000, intervalMs: 250 });
    process.stdout.write(`# large pings pass ${Date.now() - t0} ms after the fallback\n`);
    const r = await h1.report();
    const conn = r.router.connections.find((x: any) => x.peerNickname === 'h2');
    assert.ok(conn.mtu < 1300, `the connection reports the smaller path MTU (mtu=${conn.mtu})`);
  });
});

test('with a password on this kernel: encrypted sleeve, "kernel lacks ESP", never VXLAN on the wire', async () => {
  await withLab(async (lab) => {
    const { h1, c1 } = await pair(lab, { env: { WEAVE_PASSWORD: 'fastdp test' } });
    const c = await carriedBy(h1, 'h2', 'sleeve');
    assert.equal(c.encrypted, true);
    assert.match(c.overlayReason ?? '', /kernel lacks ESP/);
    assert.match((await h1.weave(['status', 'connections'])).stdout, /kernel lacks ESP/);
    await pingable(c1, '10.32.2.1');
    const pcap = await capture(lab, async () => {
      await c1.exec(['ping', '-c', '5', '-i', '0.2', '10.32.2.1']);
    }, 'udp port 6784', { allowEmpty: true });
    assert.equal(ipv4Packets(pcap).length, 0, 'no packet on UDP 6784 (the no-password test sees them there)');
  });
});

test('--trusted-subnets with a password: fastdp carries the data unencrypted only when both ends trust each other; the control channel stays encrypted', async () => {
  await withLab(async (lab) => {
    const env = { WEAVE_PASSWORD: 'trusted test' };
    const [h1, h2, h3] = [await lab.addHost('h1'), await lab.addHost('h2'), await lab.addHost('h3')];
    const [c1, c2] = [await lab.addContainer('c1'), await lab.addContainer('c2')];
    // h1 and h2 trust each other's /32; h3 trusts everyone, but nobody trusts h3
    await launch(h1, ['--trusted-subnets', `${h2.ip}/32`], env);
    await launch(h2, ['--trusted-subnets', `${h1.ip}/32,192.0.2.0/24`, h1.ip], env);
    await launch(h3, ['--trusted-subnets', '198.18.0.0/16', h1.ip], env);
    await h1.weave(['attach', '10.32.1.1/12', c1.ns]);
    await h2.weave(['attach', '10.32.2.1/12', c2.ns]);
    const c12 = await carriedBy(h1, 'h2', 'fastdp');
    assert.equal(c12.encrypted, false);
    assert.equal(c12.trusted, true);
    const c13 = await carriedBy(h1, 'h3', 'sleeve');
    assert.equal(c13.encrypted, true, 'trust one way only: the data stays encrypted');
    assert.match(c13.overlayReason ?? '', /kernel lacks ESP/);
    const c31 = await carriedBy(h3, 'h1', 'sleeve');
    assert.equal(c31.encrypted, true);
    const text = (await h1.weave(['status', 'connections'])).stdout;
    assert.match(text, /established\s+trusted\s+fastdp/, text);
    assert.match(text, /established\s+encrypted\s+sleeve/, text);
    assert.equal((await h1.report()).router.encryption, true, 'the control plane is still encrypted');
    const metrics = await h1.httpGet('/metrics');
    assert.match(metrics, /^weave_connection_overlay_info\{peer="[0-9a-f:]+",nickname="h2",overlay="fastdp",encryption="trusted",reason=""\} 1$/m, metrics);
    assert.match(metrics, /^weave_connection_overlay_info\{peer="[0-9a-f:]+",nickname="h3",overlay="sleeve",encryption="encrypted",reason="[^"]*kernel lacks ESP[^"]*"\} 1$/m, metrics);
    assert.match((await h1.weave(['status'])).stdout, new RegExp(`TrustedSubnets: ${h2.ip.replace(/\./g, '\\.')}/32\\n`));
    await pingable(c1, '10.32.2.1');
    const pcap = await capture(lab, async () => {
      await c1.exec(['ping', '-c', '5', '-i', '0.2', '-p', MARKER, '10.32.2.1']);
    }, 'udp');
    const pkts = ipv4Packets(pcap).filter((p) => p.payload.indexOf(Buffer.from(MARKER, 'hex')) >= 0);
    assert.ok(pkts.length >= 5 && pkts.every((p) => p.dport === 6784), `trusted data in clear VXLAN: ${pkts.length} marker packets`);
    // a bad flag is refused with a message that says what to fix
    const bad = await h3.weave(['launch', '--trusted-subnets', '10.0.0.1/8'], { env, allowFail: true });
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /--trusted-subnets.*host bits set/);
  });
});

test('jumbo underlay (MTU 9000): fastdp gives containers a jumbo MTU (9000 - VXLAN overhead), and full-size DF packets pass', async () => {
  await withLab(async (lab) => {
    const h1 = await lab.addHost('h1', { mtu: 9000 });
    const h2 = await lab.addHost('h2', { mtu: 9000 });
    const [c1, c2] = [await lab.addContainer('c1'), await lab.addContainer('c2')];
    await launch(h1, []);
    await launch(h2, [h1.ip]);
    await h1.weave(['attach', '10.32.1.1/12', c1.ns]);
    await h2.weave(['attach', '10.32.2.1/12', c2.ns]);
    const conn = await carriedBy(h1, 'h2', 'fastdp');
    assert.equal(conn.mtu, 9000 - 50, `fastdp mtu=${conn.mtu}`);
    const link = JSON.parse((await c1.exec(['ip', '-j', 'link', 'show', 'ethwe'])).stdout)[0];
    // the container MTU is the smaller of what fastdp and the sleeve can carry (either may carry it)
    assert.ok(link.mtu >= 8900, `container ethwe mtu=${link.mtu}: a jumbo underlay must give a jumbo overlay`);
    await pingable(c1, '10.32.2.1');
    const big = link.mtu - 28;
    await c1.exec(['ping', '-c', '3', '-i', '0.2', '-M', 'do', '-s', String(big), '10.32.2.1']);
    const tcp = await iperf(c1, c2, '10.32.2.1');
    assert.ok(tcp.end.sum_received.bytes > 10_000_000, `TCP moved ${tcp.end.sum_received.bytes} bytes`);
  });
});

test('mixed path h1 -fastdp- h2 -sleeve- h3 (h1 and h3 cut): ping and TCP end to end', async () => {
  await withLab(async (lab) => {
    const [h1, h2, h3] = [await lab.addHost('h1'), await lab.addHost('h2'), await lab.addHost('h3')];
    await lab.cut(h1, h3);
    const [c1, c3] = [await lab.addContainer('c1'), await lab.addContainer('c3')];
    await launch(h1, []);
    await launch(h2, [h1.ip]);
    await launch(h3, ['--no-fastdp', h2.ip]);
    await h1.weave(['attach', '10.32.1.1/12', c1.ns]);
    await h3.weave(['attach', '10.32.3.1/12', c3.ns]);
    await carriedBy(h2, 'h1', 'fastdp');
    await carriedBy(h2, 'h3', 'sleeve');
    await pingable(c1, '10.32.3.1', 30_000);
    const tcp = await iperf(c1, c3, '10.32.3.1');
    assert.ok(tcp.end.sum_received.bytes > 1_000_000, `TCP moved ${tcp.end.sum_received.bytes} bytes`);
  });
});

test('reconcile: weave routes and FDB entries deleted by hand are repaired within seconds', async () => {
  await withLab(async (lab) => {
    const { h1, c1 } = await pair(lab);
    await carriedBy(h1, 'h2', 'fastdp');
    await pingable(c1, '10.32.2.1');
    const fdb = async () => (await run(['bridge', '-n', h1.ns, 'fdb', 'show', 'dev', 'weave-vx'])).stdout;
    assert.match(await fdb(), /dst 198\.18\.0\.12/);
    await run(['ip', '-n', h1.ns, 'route', 'flush', 'proto', '180']);
    await run(['bridge', '-n', h1.ns, 'fdb', 'flush', 'dev', 'weave-vx']).catch(async () => {
      for (const line of (await fdb()).split('\n').filter((l) => l.includes('dst'))) {
        await run(['bridge', '-n', h1.ns, 'fdb', 'del', ...line.split(' ').slice(0, 1), 'dev', 'weave-vx', 'dst', /dst (\S+)/.exec(line)![1]], { allowFail: true });
      }
    });
    assert.notEqual((await c1.exec(['ping', '-c', '1', '-W', '1', '10.32.2.1'], { allowFail: true })).code, 0, 'the flush broke the path');
    const t0 = Date.now();
    // the sleeve may carry meanwhile (fastdp heartbeats fail without the FDB); the reconcile timer
    // restores the entries and fastdp takes over again
    await waitFor('FDB entry restored', async () => /dst 198\.18\.0\.12/.test(await fdb()), { timeoutMs: 20_000, intervalMs: 200 });
    await waitFor('weave routes restored', async () => (await run(['ip', '-n', h1.ns, 'route', 'show', 'proto', '180'])).stdout.includes('10.32.2.1'), { timeoutMs: 20_000, intervalMs: 200 });
    process.stdout.write(`# repaired in ${Date.now() - t0} ms\n`);
    await carriedBy(h1, 'h2', 'fastdp', 30_000);
    await pingable(c1, '10.32.2.1', 10_000);
  });
});
