// FastDp + OverlaySwitch on this kernel, one harness process per lab host namespace
// (test/lab/fastdp-harness.ts: real weave-vx, FDB, neighbours, routes, DF heartbeats over the VTEPs; a
// stand-in sleeve). Checks: fastdp carries, the prefix behind each host is routed via the peer's VTEP and
// pings (with VXLAN on UDP 6784 in a capture); UDP 6784 dropped on the underlay -> sleeve within 10 s with
// "heartbeats failing since"; drop removed -> fastdp within 30 s; an MTU black hole (big VXLAN packets
// dropped) -> detected and reported as such; a side with fastdp disabled -> "peer has no fastdp".
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'path';
import { spawn, type ChildProcess } from 'child_process';
import { Lab, type Host } from '../lab/lab';
import { run, waitFor } from '../lab/exec';
import { randomPeerName } from '../../mesh/peer';
import { vtepIpFor } from '../../host/vxlan';
import type { HarnessConfig } from '../lab/fastdp-harness';

const HARNESS = path.join(__dirname, '..', 'lab', 'fastdp-harness.js');

interface Side { child: ChildProcess; last: any; lines: any[]; err: string }

function startHarness(h: Host, cfg: HarnessConfig): Side {
  const child = spawn('ip', ['netns', 'exec', h.ns, process.execPath, '--enable-source-maps', HARNESS, JSON.stringify(cfg)], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_TEST_CONTEXT: '' } });
  const side: Side = { child, last: null, lines: [], err: '' };
  let buf = '';
  child.stdout!.on('data', (d) => {
    buf += String(d);
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const l = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        const j = JSON.parse(l);
        side.lines.push(j);
        if (j.carrier !== undefined) side.last = j;
      } catch { side.err += `bad line: ${l}\n`; }
    }
  });
  child.stderr!.on('data', (d) => { side.err += String(d); });
  return side;
}

async function stop(s: Side): Promise<void> {
  if (s.child.exitCode !== null || s.child.signalCode !== null) return;
  const done = new Promise((r) => s.child.on('close', r));
  s.child.kill('SIGTERM');
  await Promise.race([done, new Promise((r) => setTimeout(r, 3000))]);
  if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGKILL');
}

async function ping(ns: string, src: string, dst: string): Promise<boolean> {
  const r = await run(['ip', 'netns', 'exec', ns, 'ping', '-n', '-q', '-c', '1', '-W', '1', '-I', src, dst], { allowFail: true, timeoutMs: 5000 });
  return r.code === 0;
}

async function pair(h1: Host, h2: Host, o: { noFastdp2?: boolean; sessionKey?: string } = {}) {
  const n1 = randomPeerName();
  const n2 = randomPeerName();
  const p1 = `10.32.${h1.index}.1/32`;
  const p2 = `10.32.${h2.index}.1/32`;
  for (const [h, p] of [[h1, p1], [h2, p2]] as const) await run(['ip', '-n', h.ns, 'addr', 'replace', p, 'dev', 'lo']);
  const ctlPort = 16000 + Math.floor(Math.random() * 1000);
  const a = startHarness(h1, { role: 'listen', name: n1, underlay: h1.ip, peerUnderlay: h2.ip, ctlPort, prefix: p1, peerName: n2, peerPrefix: p2, climbBackMs: 3000, sessionKey: o.sessionKey });
  await waitFor('h1 harness to listen', () => a.lines.some((l) => l.listening) || (a.child.exitCode !== null && Promise.reject(new Error(a.err))), { timeoutMs: 10_000, intervalMs: 50 });
  const b = startHarness(h2, { role: 'dial', name: n2, underlay: h2.ip, peerUnderlay: h1.ip, ctlPort, prefix: p2, peerName: n1, peerPrefix: p1, climbBackMs: 3000, noFastdp: o.noFastdp2, sessionKey: o.sessionKey });
  return { n1, n2, a, b, ip1: p1.split('/')[0], ip2: p2.split('/')[0] };
}

test('fastdp + switch across two lab hosts: carry, fall back, climb back, MTU black hole', async () => {
  const lab = await Lab.create();
  const sides: Side[] = [];
  try {
    const h1 = await lab.addHost('h1');
    const h2 = await lab.addHost('h2');
    const { n1, n2, a, b, ip1, ip2 } = await pair(h1, h2);
    sides.push(a, b);
    const diag = () => `a: ${JSON.stringify(a.last)} ${a.err}\nb: ${JSON.stringify(b.last)} ${b.err}`;
    await waitFor('fastdp to carry both ways', () => a.last?.carrier === 'fastdp' && b.last?.carrier === 'fastdp', { timeoutMs: 10_000, intervalMs: 50 }).catch((e) => { throw new Error(`${e.message}\n${diag()}`); });
    assert.deepEqual(a.last.status, { overlay: 'fastdp', encrypted: false, mtu: 1450 });
    assert.deepEqual(a.last.routes, [`10.32.${h2.index}.1/32 via ${vtepIpFor(n2)}`]);
    await waitFor('prefix route via the VTEP in the kernel', async () => {
      const r = await run(['ip', '-n', h1.ns, '-json', 'route', 'show', ip2]);
      const j = JSON.parse(r.stdout || '[]');
      return j.some((x: any) => x.dev === 'weave-vx' && x.gateway === vtepIpFor(n2) && x.flags?.includes('onlink'));
    }, { timeoutMs: 5000, intervalMs: 50 });

    // container-to-container stand-in: prefix to prefix, VXLAN on the wire
    const cap = spawn('ip', ['netns', 'exec', h2.ns, 'tcpdump', '-i', 'eth0', '-n', '-l', '--immediate-mode', '-c', '2', 'udp port 6784 and udp[39] = 1'], { stdio: ['ignore', 'pipe', 'pipe'] });
    // udp[39]: the inner IPv4 protocol byte (8 UDP + 8 VXLAN + 14 Ethernet + 9): ICMP only, not heartbeats
    let capOut = '';
    let capErr = '';
    cap.stdout.on('data', (d) => { capOut += String(d); });
    cap.stderr.on('data', (d) => { capErr += String(d); });
    try {
      await waitFor('tcpdump to listen', () => capErr.includes('listening'), { timeoutMs: 5000, intervalMs: 20 });
      await waitFor('ping prefix to prefix over fastdp', () => ping(h1.ns, ip1, ip2), { timeoutMs: 5000, intervalMs: 100 });
      await waitFor('capture', () => capOut.split('\n').filter(Boolean).length >= 2, { timeoutMs: 3000, intervalMs: 20 });
    } finally {
      cap.kill('SIGTERM');
    }
    assert.match(capOut, /198\.18\.0\.\d+\.\d+ > 198\.18\.0\.\d+\.6784: .*length: 106/, `VXLAN-encapsulated ICMP echo (84 + 14 + 8 bytes) on UDP 6784: ${capOut}`);

    // UDP 6784 dropped on the underlay: sleeve within 10 s, with the reason
    const t0 = Date.now();
    const drop = await lab.underlayRule('udp dport 6784 drop');
    await waitFor('fallback to sleeve', () => a.last?.carrier === 'sleeve' && b.last?.carrier === 'sleeve', { timeoutMs: 10_000, intervalMs: 50 }).catch((e) => { throw new Error(`${e.message}\n${diag()}`); });
    const fellBack = Date.now() - t0;
    assert.ok(fellBack < 10_000, `fell back after ${fellBack} ms`);
    // whichever end notices first tells the other over the control connection; both then see silence
    assert.match(a.last.status.reason, /^heartbeats failing since \d{4}-.*: (no heartbeats from the peer|the peer does not receive our heartbeats) over VXLAN/);
    await waitFor('reason: no heartbeats from the peer', () => /^heartbeats failing since \d{4}-.*: no heartbeats from the peer over VXLAN/.test(a.last?.status?.reason ?? ''), { timeoutMs: 4000, intervalMs: 50 }).catch((e) => { throw new Error(`${e.message}\n${diag()}`); });
    assert.equal(a.last.status.overlay, 'sleeve');
    assert.deepEqual(a.last.routes, [], 'prefix routes leave weave-vx when fastdp does not carry');

    const t1 = Date.now();
    await lab.removeRule(drop);
    await waitFor('climb back to fastdp', () => a.last?.carrier === 'fastdp' && b.last?.carrier === 'fastdp', { timeoutMs: 30_000, intervalMs: 50 }).catch((e) => { throw new Error(`${e.message}\n${diag()}`); });
    const climbed = Date.now() - t1;
    assert.ok(climbed < 30_000);
    await waitFor('ping again over fastdp', () => ping(h1.ns, ip1, ip2), { timeoutMs: 5000, intervalMs: 100 });

    // MTU black hole: VXLAN packets above 1200 bytes vanish on the underlay (no ICMP)
    const hole = await lab.underlayRule('udp dport 6784 meta length gt 1200 drop');
    await waitFor('black hole detected', () => a.last?.carrier === 'sleeve', { timeoutMs: 10_000, intervalMs: 50 }).catch((e) => { throw new Error(`${e.message}\n${diag()}`); });
    await waitFor('reason names the MTU black hole', () => /MTU black hole/.test(a.last?.status?.reason ?? ''), { timeoutMs: 3000, intervalMs: 50 }).catch((e) => { throw new Error(`${e.message}\n${diag()}`); });
    await lab.removeRule(hole);
    console.log(`# fallback ${fellBack} ms, climb back ${climbed} ms`);
    void n1;
  } finally {
    for (const s of sides) await stop(s);
    await lab.cleanup();
  }
});

test('fastdp disabled on one side: sleeve carries, "peer has no fastdp" / "disabled by flag"', async () => {
  const lab = await Lab.create();
  const sides: Side[] = [];
  try {
    const h1 = await lab.addHost('h1');
    const h2 = await lab.addHost('h2');
    const { a, b } = await pair(h1, h2, { noFastdp2: true });
    sides.push(a, b);
    await waitFor('both sides on sleeve', () => a.last?.carrier === 'sleeve' && b.last?.carrier === 'sleeve' && a.last?.status?.reason, { timeoutMs: 10_000, intervalMs: 50 });
    assert.equal(a.last.status.reason, 'peer has no fastdp');
    assert.equal(b.last.status.reason, 'disabled by flag');
  } finally {
    for (const s of sides) await stop(s);
    await lab.cleanup();
  }
});

test('password on this kernel (no ESP): "kernel lacks ESP", sleeve carries, no VXLAN on the wire', async () => {
  const lab = await Lab.create();
  const sides: Side[] = [];
  try {
    const h1 = await lab.addHost('h1');
    const h2 = await lab.addHost('h2');
    const cap = spawn('ip', ['netns', 'exec', h2.ns, 'tcpdump', '-i', 'eth0', '-n', '-l', '--immediate-mode', 'udp port 6784'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let capOut = '';
    let capErr = '';
    cap.stdout.on('data', (d) => { capOut += String(d); });
    cap.stderr.on('data', (d) => { capErr += String(d); });
    try {
      await waitFor('tcpdump to listen', () => capErr.includes('listening'), { timeoutMs: 5000, intervalMs: 20 });
      const { a, b } = await pair(h1, h2, { sessionKey: '11'.repeat(32) });
      sides.push(a, b);
      await waitFor('both sides on sleeve with the reason', () => a.last?.carrier === 'sleeve' && b.last?.carrier === 'sleeve' && a.last?.status?.reason && b.last?.status?.reason, { timeoutMs: 10_000, intervalMs: 50 });
      assert.equal(a.last.status.reason, 'kernel lacks ESP');
      assert.equal(b.last.status.reason, 'kernel lacks ESP');
      // heartbeats would flow every 500 ms if fastdp were attempted: give them 2 s to show up
      await new Promise((r) => setTimeout(r, 2000));
    } finally {
      cap.kill('SIGTERM');
    }
    assert.equal(capOut.trim(), '', `no VXLAN without ESP: ${capOut}`);
  } finally {
    for (const s of sides) await stop(s);
    await lab.cleanup();
  }
});
