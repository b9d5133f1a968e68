// host/vxlan.ts on this kernel: two lab hosts each reconcile a weave-vx device with the other as a peer;
// the VTEP addresses ping each other over VXLAN (a capture in the underlay sees UDP 6784); an FDB or
// neighbour entry flushed by hand breaks the ping until the next reconcile puts it back; a device with
// the wrong VNI is replaced; destroy() removes it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'child_process';
import { Lab } from '../lab/lab';
import { run, waitFor } from '../lab/exec';
import { RouteReconciler } from '../../host/routes';
import { ipJson } from '../../host/ip';
import { VxlanReconciler, vtepIpFor, vtepMacFor, VXLAN_OVERHEAD, DEFAULT_VNI } from '../../host/vxlan';
import { realClock } from '../../lib/clock';
import { MemoryLogger } from '../../lib/log';
import { randomPeerName } from '../../mesh/peer';

async function ping(ns: string, dst: string, opts: { count?: number; size?: number } = {}): Promise<boolean> {
  const args = ['ip', 'netns', 'exec', ns, 'ping', '-n', '-q', '-c', String(opts.count ?? 1), '-W', '1'];
  if (opts.size) args.push('-s', String(opts.size), '-M', 'do');
  const r = await run([...args, dst], { allowFail: true, timeoutMs: 10_000 });
  return r.code === 0;
}

test('vxlan reconciler: two hosts ping over VXLAN, flushed entries heal', async () => {
  const lab = await Lab.create();
  const log = new MemoryLogger();
  try {
    const h1 = await lab.addHost('h1');
    const h2 = await lab.addHost('h2');
    const n1 = randomPeerName();
    const n2 = randomPeerName();
    const mk = (h: typeof h1, name: string) => {
      const ctx = { netns: h.ns };
      const routes = new RouteReconciler({ ctx, log, clock: realClock });
      const vx = new VxlanReconciler({
        ctx, log, clock: realClock, routes,
        config: { name: 'weave-vx', vni: DEFAULT_VNI, port: 6784, local: h.ip, mtu: 1500 - VXLAN_OVERHEAD, mac: vtepMacFor(name), address: vtepIpFor(name) },
      });
      return { ctx, routes, vx };
    };
    const a = mk(h1, n1);
    const b = mk(h2, n2);
    try {
      a.vx.setPeer(n2, { mac: vtepMacFor(n2), vtep: vtepIpFor(n2), underlay: h2.ip });
      b.vx.setPeer(n1, { mac: vtepMacFor(n1), vtep: vtepIpFor(n1), underlay: h1.ip });
      const s1 = await a.vx.reconcile();
      assert.equal(s1.link, 'create');
      assert.equal(s1.fdbAdd, 1);
      assert.equal(s1.neighAdd, 1);
      await b.vx.reconcile();
      await a.routes.reconcile();
      await b.routes.reconcile();
      assert.deepEqual(await a.vx.reconcile(), { link: 'ok', addr: 0, neighAdd: 0, neighDel: 0, fdbAdd: 0, fdbDel: 0 }, 'a second pass finds nothing to do');

      const link = (await ipJson<any[]>(a.ctx, ['-d', 'link', 'show', 'dev', 'weave-vx']))[0];
      assert.equal(link.address, vtepMacFor(n1));
      assert.equal(link.mtu, 1450);
      assert.equal(link.linkinfo.info_data.id, DEFAULT_VNI);
      assert.equal(link.linkinfo.info_data.port, 6784);
      assert.equal(link.linkinfo.info_data.learning, false);

      // capture in h2 while pinging: the echo travels as VXLAN on UDP 6784
      const cap = spawn('ip', ['netns', 'exec', h2.ns, 'tcpdump', '-i', 'eth0', '-n', '-l', '--immediate-mode', '-c', '1', 'udp', 'dst', 'port', '6784'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let capOut = '';
      cap.stdout.on('data', (d) => { capOut += String(d); });
      let capErr = '';
      cap.stderr.on('data', (d) => { capErr += String(d); });
      const capDone = new Promise<number | null>((r) => cap.on('close', r));
      try {
        await waitFor('tcpdump to listen', () => capErr.includes('listening'), { timeoutMs: 5000, intervalMs: 20 });
        await waitFor('VTEP ping h1 -> h2', () => ping(h1.ns, vtepIpFor(n2)), { timeoutMs: 5000, intervalMs: 50 });
        await Promise.race([capDone, new Promise((r) => setTimeout(r, 3000))]);
      } finally {
        cap.kill('SIGTERM');
      }
      assert.match(capOut, new RegExp(`${h1.ip.replace(/\./g, '\\.')}\\.\\d+ > ${h2.ip.replace(/\./g, '\\.')}\\.6784`), `capture: ${capOut}`);
      assert.ok(await ping(h2.ns, vtepIpFor(n1)), 'h2 -> h1');
      assert.ok(await ping(h1.ns, vtepIpFor(n2), { size: 1450 - 28 }), 'a full-MTU DF ping passes');

      // FDB flushed by hand: the ping fails, one reconcile brings it back
      await run(['bridge', '-n', h1.ns, 'fdb', 'del', vtepMacFor(n2), 'dev', 'weave-vx', 'dst', h2.ip, 'self']);
      assert.equal(await ping(h1.ns, vtepIpFor(n2)), false, 'without the FDB entry there is no path');
      const healed = await a.vx.reconcile();
      assert.equal(healed.fdbAdd, 1);
      assert.ok(await ping(h1.ns, vtepIpFor(n2)), 'FDB healed');

      // neighbour entry flushed: healed by the periodic timer without an explicit call
      await run(['ip', '-n', h1.ns, 'neigh', 'flush', 'dev', 'weave-vx', 'nud', 'permanent']);
      a.vx.start(100);
      await waitFor('neighbour entry back', async () => {
        const n = await ipJson<any[]>(a.ctx, ['neigh', 'show', 'dev', 'weave-vx']);
        return n.some((e) => e.dst === vtepIpFor(n2) && e.lladdr === vtepMacFor(n2) && e.state?.includes('PERMANENT'));
      }, { timeoutMs: 3000, intervalMs: 50 });
      assert.ok(await ping(h1.ns, vtepIpFor(n2)), 'neighbour healed');
      a.vx.stop();

      // a foreign stale entry of ours is removed; a peer removed -> its entries go
      b.vx.removePeer(n1);
      await b.vx.reconcile();
      const fdb = JSON.parse((await run(['bridge', '-n', h2.ns, '-json', 'fdb', 'show', 'dev', 'weave-vx'])).stdout || '[]') as any[];
      assert.equal(fdb.filter((f) => f.state === 'permanent' && f.dst).length, 0, JSON.stringify(fdb));
      assert.equal(await ping(h1.ns, vtepIpFor(n2)), false, 'h2 no longer answers (no way back)');

      // wrong VNI by hand: the device is replaced and works again
      await run(['ip', '-n', h2.ns, 'link', 'del', 'weave-vx']);
      await run(['ip', '-n', h2.ns, 'link', 'add', 'weave-vx', 'type', 'vxlan', 'id', '99', 'dstport', '6784', 'local', h2.ip]);
      b.vx.setPeer(n1, { mac: vtepMacFor(n1), vtep: vtepIpFor(n1), underlay: h1.ip });
      assert.equal((await b.vx.reconcile()).link, 'recreate');
      await b.routes.reconcile();
      assert.ok(await ping(h1.ns, vtepIpFor(n2)), 'works after the device was replaced');

      await b.vx.destroy();
      assert.equal((await ipJson<any[]>(b.ctx, ['link', 'show'])).some((l) => l.ifname === 'weave-vx'), false);
      assert.equal(a.vx.stats().errors, 0, JSON.stringify(log.records.filter((r) => r.level === 'warn')));
    } finally {
      a.vx.stop();
      b.vx.stop();
      a.routes.stop();
      b.routes.stop();
    }
  } finally {
    await lab.cleanup();
  }
});
