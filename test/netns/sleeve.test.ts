// The sleeve end to end: containers on different lab hosts, real ping / iperf3 / tcpdump.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Container, Host, Lab, withLab } from '../lab/lab';
import { waitFor } from '../lab/exec';
import { capture, iperf, pingable, sendUdp, udpPayloads } from '../lab/traffic';
import { silentLogger } from '../../lib/log';
import { loadTunIo } from '../../router/native';

const PW = { WEAVE_PASSWORD: 'sleeve test password' };

async function launch(h: Host, args: string[], env: Record<string, string> = {}): Promise<string> {
  return (await h.weave(['launch', '--nickname', h.name, '--no-fastdp', ...args], { env })).stdout.trim();
}

async function attach(h: Host, c: Container, cidr: string): Promise<void> {
  await h.weave(['attach', cidr, c.ns]);
}

async function sleeveEstablished(h: Host, n: number): Promise<any> {
  return waitFor(`${h.name}: ${n} sleeve connections established`, async () => {
    const rep = await h.report();
    const est = rep.router.connections.filter((c: any) => c.state === 'established' && c.overlay === 'sleeve');
    return est.length === n ? rep : undefined;
  }, { timeoutMs: 30_000, intervalMs: 300 });
}



async function dropped(h: Host, reason: string): Promise<number> {
  const rep = await h.report();
  return rep.sleeve?.dropped?.[reason] ?? 0;
}

async function twoHosts(lab: Lab, env: Record<string, string>, opts: { mtu2?: number } = {}) {
  const h1 = await lab.addHost('h1');
  const h2 = await lab.addHost('h2', { mtu: opts.mtu2 });
  const c1 = await lab.addContainer('c1');
  const c2 = await lab.addContainer('c2');
  await launch(h1, [], env);
  await launch(h2, [h1.ip], env);
  await attach(h1, c1, '10.32.1.1/12');
  await attach(h2, c2, '10.32.2.1/12');
  return { h1, h2, c1, c2 };
}

for (const encrypted of [true, false]) {
  test(`2 hosts ${encrypted ? 'with' : 'without'} a password: ping, iperf3 TCP and UDP, status shows the sleeve`, async () => {
    await withLab(async (lab) => {
      const { h1, h2, c1, c2 } = await twoHosts(lab, encrypted ? PW : {});
      const rep = await sleeveEstablished(h1, 1);
      const conn = rep.router.connections.find((c: any) => c.state === 'established');
      assert.equal(conn.encrypted, encrypted);
      assert.ok(conn.mtu > 1300, `mtu=${conn.mtu}`);
      // the addon's batched secretbox in the worker threads (npm ci builds the addon; a CPU without
      // AVX2 keeps libsodium)
      assert.equal(rep.sleeve.mode, 'workers');
      assert.equal(rep.sleeve.crypto, loadTunIo(silentLogger())?.boxImpl?.() === 'generic' ? 'engine' : 'native');
      const text = (await h1.weave(['status', 'connections'])).stdout;
      assert.match(text, /sleeve/);
      assert.match(text, encrypted ? /\bencrypted\b/ : /unencrypted/);
      assert.match(text, /mtu=\d+/);
      await pingable(c1, '10.32.2.1');
      await c1.exec(['ping', '-c', '3', '-i', '0.2', '10.32.2.1']);
      const tcp = await iperf(c1, c2, '10.32.2.1');
      assert.ok(tcp.end.sum_received.bytes > 1_000_000, `TCP moved ${tcp.end.sum_received.bytes} bytes`);
      const udp = await iperf(c1, c2, '10.32.2.1', ['-u', '-b', '50M']);
      assert.ok(udp.end.sum.packets > 1000, 'UDP flowed');
      assert.ok(udp.end.sum.lost_percent < 20, `UDP loss ${udp.end.sum.lost_percent}%`);
      for (const h of [h1, h2]) assert.equal(await dropped(h, 'badMac'), 0, `${h.name}: no datagram failed to open`);
    });
  });
}

test('3 hosts in a line (h1 and h3 cut on the underlay): h1 container reaches h3 container through h2', async () => {
  await withLab(async (lab) => {
    const [h1, h2, h3] = [await lab.addHost('h1'), await lab.addHost('h2'), await lab.addHost('h3')];
    await lab.cut(h1, h3);
    const [c1, c3] = [await lab.addContainer('c1'), await lab.addContainer('c3')];
    await launch(h1, [], PW);
    await launch(h2, [h1.ip], PW);
    await launch(h3, [h2.ip], PW);
    await attach(h1, c1, '10.32.1.1/12');
    await attach(h3, c3, '10.32.3.1/12');
    await sleeveEstablished(h2, 2);
    await pingable(c1, '10.32.3.1', 30_000);
    const tcp = await iperf(c1, c3, '10.32.3.1');
    assert.ok(tcp.end.sum_received.bytes > 1_000_000);
  });
});


for (const encrypted of [true, false]) {
  test(`underlay capture ${encrypted ? 'never shows' : 'shows'} the marker ${encrypted ? 'with' : 'without'} a password`, async () => {
    await withLab(async (lab) => {
      const { h1, c1 } = await twoHosts(lab, encrypted ? PW : {});
      await sleeveEstablished(h1, 1);
      await pingable(c1, '10.32.2.1');
      const marker = 'f00dcafe5eedbeef1234567890abcdef';
      const pcap = await capture(lab, async () => {
        await c1.exec(['ping', '-c', '5', '-i', '0.2', '-p', marker, '10.32.2.1']);
      });
      const seen = pcap.indexOf(Buffer.from(marker, 'hex')) >= 0;
      assert.ok(pcap.length > 500, 'the capture holds sleeve traffic');
      assert.equal(seen, !encrypted, encrypted ? 'plaintext marker leaked onto the underlay' : 'marker not seen without encryption: the test could not fail');
    });
  });
}



test('replayed, random and truncated datagrams are dropped and counted; the router stays up', async () => {
  await withLab(async (lab) => {
    const { h1, h2, c1 } = await twoHosts(lab, PW);
    await sleeveEstablished(h1, 1);
    await pingable(c1, '10.32.2.1');
    const pcap = await capture(lab, async () => {
      await c1.exec(['ping', '-c', '3', '-i', '0.2', '10.32.2.1']);
    });
    const sent = udpPayloads(pcap, h2.ip);
    assert.ok(sent.length >= 3, `captured ${sent.length} datagrams to h2 (pcap ${pcap.length} bytes, linktype ${pcap.readUInt32LE(20)})`);
    const replayBefore = await dropped(h2, 'replay');
    await sendUdp(h1.ns, h2.ip, 6783, sent.slice(0, 3).map((b) => b.toString('hex')));
    await waitFor('replays counted', async () => (await dropped(h2, 'replay')) >= replayBefore + 1, { timeoutMs: 5000 });
    // a truncated copy of an already-seen datagram is refused by the replay check before its MAC is
    // looked at, so junk lands in several drop reasons: count them all
    const totalDropped = async (): Promise<number> => Object.values((await h2.report()).sleeve.dropped as Record<string, number>).reduce((a, b) => a + b, 0);
    const malformedBefore = await totalDropped();
    const junk: string[] = [];
    for (let i = 0; i < 50; i++) junk.push(Buffer.from(Array.from({ length: 1 + Math.floor(Math.random() * 200) }, () => Math.floor(Math.random() * 256))).toString('hex'));
    for (const b of sent.slice(0, 5)) junk.push(b.subarray(0, Math.max(1, Math.floor(b.length / 2))).toString('hex'));
    await sendUdp(h1.ns, h2.ip, 6783, junk);
    await waitFor('junk counted', async () => {
      return (await totalDropped()) >= malformedBefore + junk.length;
    }, { timeoutMs: 5000 }).catch(async (e: Error) => {
      throw new Error(`${e.message}; sent ${junk.length}, before ${malformedBefore}, now ${JSON.stringify((await h2.report()).sleeve.dropped)}`);
    });
    await c1.exec(['ping', '-c', '2', '-i', '0.2', '10.32.2.1']);
    const metrics = await h2.httpGet('/metrics');
    assert.match(metrics, /weave_sleeve_dropped_total\{reason="replay"\} [1-9]/);
  });
});

test('a reduced underlay MTU: 10 KiB ping and a large TCP transfer still work (PMTU)', async () => {
  await withLab(async (lab) => {
    const { h1, c1, c2 } = await twoHosts(lab, PW, { mtu2: 1280 });
    const rep = await sleeveEstablished(h1, 1);
    await pingable(c1, '10.32.2.1');
    await waitFor('PMTU discovered below 1280', async () => {
      const r = await h1.report();
      const c = r.router.connections.find((x: any) => x.state === 'established');
      return c && c.mtu && c.mtu < 1280 ? c : undefined;
    }, { timeoutMs: 20_000 });
    assert.ok(rep);
    await c1.exec(['ping', '-c', '3', '-i', '0.3', '-s', '10240', '10.32.2.1']);
    const tcp = await iperf(c1, c2, '10.32.2.1');
    assert.ok(tcp.end.sum_received.bytes > 1_000_000, `TCP moved ${tcp.end.sum_received.bytes} bytes across the small MTU`);
  });
});
