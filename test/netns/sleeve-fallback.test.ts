// The sleeve without the native addon: real routers (`weave launch`) on 2 lab hosts with the addon
// override pointing nowhere and WEAVE_SLEEVE_IO=fallback (the default build path would still load),
// so the koffi I/O of router/fallback-io.ts carries the containers' traffic.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as path from 'path';
import { Container, Host, withLab } from '../lab/lab';
import { run, waitFor } from '../lab/exec';

const FALLBACK = { WEAVE_NATIVE_ADDON: '/nonexistent/weave_tunio.node', WEAVE_SLEEVE_IO: 'fallback' };
const WARN = 'native data-path addon not loaded; using the koffi fallback (slower)';

async function iperf(client: Container, server: Container, serverAddr: string, args: string[] = []): Promise<any> {
  const port = String(5201 + Math.floor(Math.random() * 1000));
  const srv = server.exec(['iperf3', '-s', '-1', '-p', port], { allowFail: true, timeoutMs: 60_000 });
  await waitFor('iperf3 server', async () => (await run(['ip', 'netns', 'exec', server.ns, 'ss', '-ltn'], { allowFail: true })).stdout.includes(`:${port}`), { timeoutMs: 5000, intervalMs: 50 });
  const r = await client.exec(['iperf3', '-c', serverAddr, '-p', port, '-t', '2', '-J', ...args], { timeoutMs: 60_000 });
  await srv;
  return JSON.parse(r.stdout);
}

function logOf(h: Host): string {
  const f = path.join(h.dataDir, 'weave.log');
  return fs.existsSync(f) ? fs.readFileSync(f, 'utf8') : '';
}

for (const encrypted of [true, false]) {
  test(`koffi fallback I/O, 2 hosts ${encrypted ? 'with' : 'without'} a password: ping, iperf3 TCP and UDP; report and log say so`, async () => {
    await withLab(async (lab) => {
      const env: Record<string, string> = { ...FALLBACK, ...(encrypted ? { WEAVE_PASSWORD: 'fallback test password' } : {}) };
      const h1 = await lab.addHost('h1');
      const h2 = await lab.addHost('h2');
      const c1 = await lab.addContainer('c1');
      const c2 = await lab.addContainer('c2');
      await h1.weave(['launch', '--nickname', 'h1', '--no-fastdp'], { env });
      await h2.weave(['launch', '--nickname', 'h2', '--no-fastdp', h1.ip], { env });
      await h1.weave(['attach', '10.32.1.1/12', c1.ns]);
      await h2.weave(['attach', '10.32.2.1/12', c2.ns]);

      for (const h of [h1, h2]) {
        const rep = await h.report();
        assert.equal(rep.sleeve.io, 'koffi', `${h.name} sleeve io`);
        assert.equal(rep.sleeve.mode, 'inline', `${h.name} sleeve mode`);
        // the warn line reaches the router's log file (pino may flush it a little after start)
        await waitFor(`${h.name} log to carry the fallback warning`, () => logOf(h).includes(WARN), { timeoutMs: 5000, intervalMs: 100 });
        const line = logOf(h).split('\n').find((l) => l.includes(WARN))!;
        assert.equal(JSON.parse(line).level, 40, 'logged at warn level');
      }

      const rep = await waitFor('h1: sleeve established', async () => {
        const r = await h1.report();
        return r.router.connections.some((c: any) => c.state === 'established' && c.overlay === 'sleeve') ? r : undefined;
      }, { timeoutMs: 30_000, intervalMs: 300 });
      const conn = rep.router.connections.find((c: any) => c.state === 'established');
      assert.equal(conn.encrypted, encrypted);

      await waitFor('c1 to ping c2', async () => (await c1.exec(['ping', '-c', '1', '-W', '1', '10.32.2.1'], { allowFail: true })).code === 0, { timeoutMs: 20_000, intervalMs: 200 });
      await c2.exec(['ping', '-c', '3', '-i', '0.2', '10.32.1.1']);
      // a full-size ICMP packet checks that packets are neither merged nor cut at the TUN
      await c1.exec(['ping', '-c', '2', '-i', '0.2', '-s', String(conn.mtu - 28), '-M', 'do', '10.32.2.1']);

      const tcp = await iperf(c1, c2, '10.32.2.1');
      assert.ok(tcp.end.sum_received.bytes > 1_000_000, `TCP moved ${tcp.end.sum_received.bytes} bytes`);
      const udp = await iperf(c1, c2, '10.32.2.1', ['-u', '-b', '30M']);
      assert.ok(udp.end.sum.packets > 1000, 'UDP flowed');
      assert.ok(udp.end.sum.lost_percent < 20, `UDP loss ${udp.end.sum.lost_percent}%`);

      // the data path went through the fallback (counters move) and the routers are still up
      const after = await h2.report();
      assert.ok(after.sleeve.counters.tunOutPackets > 1000 || after.sleeve.counters.udpInPackets > 1000, `counters: ${JSON.stringify(after.sleeve.counters)}`);
    });
  });
}
