// Runs INSIDE the UML guest (test/vm/fastdp.test.ts boots it): two lab hosts each run the real router
// (`weave launch` with WEAVE_PASSWORD), which must pick encrypted fastdp — kernel VXLAN under kernel ESP
// with SAs derived from the connection's session key — because this kernel, unlike the host's, has ESP.
// Named *.guest.ts so the host's test runner never runs it directly: on the host kernel it cannot pass.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Container, Host, Lab, withLab } from '../../lab/lab';
import { run, waitFor } from '../../lab/exec';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { CapturedPacket, ipv4Packets, pingable, sendUdp } from '../../lab/traffic';
import { parsePolicies, parseStates, DEFAULT_REQID, XfrmState, XfrmPolicy } from '../../../ipsec/xfrm';
import { udpListener, vxlanFrame } from '../../lab/attack';
import { vtepMacFor, DEFAULT_VNI } from '../../../host/vxlan';

const PW = { WEAVE_PASSWORD: 'fastdp in the guest' };
const VXLAN_PORT = 6784;
const ESP = 50;
const UDP = 17;

// Progress with elapsed time on stderr: UML is slow on a busy host, and this tells where the time goes.
const T0 = Date.now();
function step(what: string): void {
  process.stderr.write(`guest +${((Date.now() - T0) / 1000).toFixed(1)}s ${what}\n`);
}

function inGuest(): void {
  assert.ok(process.env.WEAVE_IN_VM, 'this file runs inside the UML guest (test/vm/fastdp.test.ts), not on the host kernel');
}

/** `weave launch`; the host side sets WEAVE_CLI_TIMEOUT so that the CLI waits as long as UML needs. */
async function launch(h: Host, args: string[]): Promise<void> {
  const t0 = Date.now();
  await h.weave(['launch', '--nickname', h.name, ...args], { env: PW, timeoutMs: 300_000 });
  step(`${h.name}: router up after ${Date.now() - t0} ms`);
}

/**
 * The router's report through its API with curl: a Node CLI start costs seconds in UML on a busy host,
 * so polls use curl and the weave CLI runs once per check.
 */
async function apiReport(h: Host): Promise<any> {
  const r = await h.exec(['curl', '-sf', '-m', '10', 'http://127.0.0.1:6784/report'], { allowFail: true, timeoutMs: 20_000 });
  return r.code === 0 ? JSON.parse(r.stdout) : undefined;
}

/** Polls until the router's single connection is established over encrypted fastdp, then checks the CLI's line. */
async function encryptedFastdp(h: Host, timeoutMs = 90_000): Promise<string> {
  let last: any;
  try {
    await waitFor(`${h.name}: an established encrypted fastdp connection`, async () => {
      last = await apiReport(h);
      const cs = last?.router?.connections ?? [];
      return cs.length === 1 && cs[0].state === 'established' && cs[0].encrypted === true && cs[0].overlay === 'fastdp';
    }, { timeoutMs, intervalMs: 500 });
  } catch (e) {
    throw new Error(`${(e as Error).message}\nlast connections of ${h.name}: ${JSON.stringify(last?.router?.connections)}\n${await diag(h)}`);
  }
  const text = (await h.weave(['status', 'connections'], { timeoutMs: 60_000 })).stdout;
  const line = text.split('\n').find((l) => /\bestablished\b/.test(l));
  assert.ok(line, `weave status connections on ${h.name} shows no established connection:\n${text}`);
  assert.match(line, /\bestablished\s+encrypted\s+fastdp\b/, `weave status connections on ${h.name}:\n${text}`);
  return line;
}

async function diag(h: Host): Promise<string> {
  const fastdp = JSON.stringify((await apiReport(h).catch(() => undefined))?.fastdp);
  const log = await run(['sh', '-c', `tail -n 40 ${h.dataDir}/*.log 2>/dev/null || true`], { allowFail: true });
  return `report.fastdp of ${h.name}: ${fastdp}\n${log.stdout}`;
}

/** `weave reset`: it returns once the router has done its reset steps; then the process goes. */
async function reset(h: Host): Promise<void> {
  const t0 = Date.now();
  await h.weave(['reset'], { env: PW, timeoutMs: 300_000 });
  await waitFor(`${h.name}: router stopped after reset`, async () => (await h.lab.pidsIn(h.ns)).length === 0, { timeoutMs: 120_000, intervalMs: 500 });
  step(`${h.name}: reset and stopped after ${Date.now() - t0} ms`);
}

interface Ours { states: XfrmState[]; policies: XfrmPolicy[] }

/** Our xfrm states and policies (by reqid) in a host's namespace, read with plain `ip xfrm`. */
async function ours(h: Host): Promise<Ours> {
  const st = parseStates((await run(['ip', '-n', h.ns, 'xfrm', 'state'])).stdout);
  const po = parsePolicies((await run(['ip', '-n', h.ns, 'xfrm', 'policy'])).stdout);
  return {
    states: st.filter((s) => s.reqid === DEFAULT_REQID && s.proto === 'esp'),
    policies: po.filter((p) => p.tmpl?.reqid === DEFAULT_REQID),
  };
}

function shape(o: Ours): { states: string[]; policies: string[] } {
  return {
    states: o.states.map((s) => `${s.src}>${s.dst} ${s.mode} dport=${s.sel?.dport} ${s.aead?.alg}`).sort(),
    policies: o.policies.map((p) => `${p.src}>${p.dst} ${p.dir} dport=${p.dport} ${p.tmpl?.mode}`).sort(),
  };
}

/** Captures ESP and UDP 6784 on the underlay bridge while c1 pings c2 (5 pings); returns the packets. */
async function wire(lab: Lab, c1: Container, to: string): Promise<CapturedPacket[]> {
  const file = path.join(lab.tmp, `cap-${Date.now()}.pcap`);
  const td = spawn('ip', ['netns', 'exec', lab.underlay, 'tcpdump', '-i', 'br0', '--immediate-mode', '-U', '-s', '0', '-w', file, 'esp', 'or', 'udp', 'port', String(VXLAN_PORT)], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  td.stderr!.setEncoding('utf8').on('data', (d: string) => { err += d; });
  const exited = new Promise<void>((r) => td.once('close', () => r()));
  try {
    // tcpdump says "listening on" once the capture is attached: only then can nothing be missed
    await waitFor('tcpdump to listen', () => err.includes('listening on'), { timeoutMs: 60_000, intervalMs: 50 });
    await c1.exec(['ping', '-n', '-q', '-c', '5', '-i', '0.2', '-W', '2', to], { timeoutMs: 30_000 });
    // 10 packets expected: poll the file (24-byte header, then 16 + captured bytes per packet) until
    // they are written, with a deadline; fewer is for the caller's assertions to judge
    await waitFor('10 packets captured', () => fs.existsSync(file) && ipv4Packets(fs.readFileSync(file)).length >= 10, { timeoutMs: 5000, intervalMs: 100 }).catch(() => undefined);
  } finally {
    td.kill('SIGINT');
    await exited;
  }
  return ipv4Packets(fs.readFileSync(file));
}

function spiOf(payload: Buffer): number {
  return payload.readUInt32BE(0);
}

/**
 * Plain VXLAN to `to`:6784 from a namespace on the underlay that pretends to be `as` (its address on
 * lo, never answering ARP for it, asking ARP with its own address): what a host on the path could
 * forge against an encrypted peer.
 */
async function spoofVxlan(evil: Host, as: Host, to: Host, frame: Buffer, n: number): Promise<void> {
  await run(['ip', '-n', evil.ns, 'addr', 'add', `${as.ip}/32`, 'dev', 'lo']);
  for (const k of ['all', 'eth0']) {
    await run(['ip', 'netns', 'exec', evil.ns, 'sysctl', '-q', '-w', `net.ipv4.conf.${k}.arp_ignore=1`, `net.ipv4.conf.${k}.arp_announce=2`]);
  }
  const script = `const s=require('dgram').createSocket('udp4');const b=Buffer.from('${frame.toString('hex')}','hex');let i=0;`
    + `s.bind(0,'${as.ip}',()=>{const next=()=>{if(i++>=${n})return s.close();s.send(b,6784,'${to.ip}',next)};next()});`;
  await evil.exec([process.execPath, '-e', script], { timeoutMs: 120_000 });
}

test('real router with a password in the guest: encrypted fastdp (ESP on the wire, our SAs, rekey on reconnect, gone after reset)', { timeout: 450_000 }, async () => {
  inGuest();
  await withLab(async (lab) => {
    step('lab');
    const h1 = await lab.addHost('h1');
    const h2 = await lab.addHost('h2');
    const c1 = await lab.addContainer('c1');
    const c2 = await lab.addContainer('c2');
    // in parallel: each start takes tens of seconds in UML; h2 retries h1 until it listens
    await Promise.all([launch(h1, []), launch(h2, [h1.ip])]);
    step('launched');
    await h1.weave(['attach', '10.32.1.1/12', c1.ns]);
    await h2.weave(['attach', '10.32.2.1/12', c2.ns]);

    const line1 = await encryptedFastdp(h1);
    const line2 = await encryptedFastdp(h2);
    step(`connected:\n  ${line1}\n  ${line2}`);
    assert.doesNotMatch(line1, /unencrypted/);
    assert.doesNotMatch(line2, /unencrypted/);

    // ours, in both namespaces: one SA and one policy per direction for the VXLAN flow, transport mode
    const x1 = await ours(h1);
    const x2 = await ours(h2);
    const expected = (a: Host, b: Host) => ({
      states: [`${a.ip}>${b.ip} transport dport=${VXLAN_PORT} rfc4106(gcm(aes))`, `${b.ip}>${a.ip} transport dport=${VXLAN_PORT} rfc4106(gcm(aes))`].sort(),
      policies: [`${a.ip}>${b.ip} out dport=${VXLAN_PORT} transport`, `${b.ip}>${a.ip} in dport=${VXLAN_PORT} transport`].sort(),
    });
    assert.deepEqual(shape(x1), expected(h1, h2));
    assert.deepEqual(shape(x2), expected(h2, h1));
    const spi = (o: Ours, src: string) => o.states.find((s) => s.src === src)!.spi;
    // h1's outbound SA is h2's inbound one
    assert.equal(spi(x1, h1.ip), spi(x2, h1.ip));
    assert.equal(spi(x1, h2.ip), spi(x2, h2.ip));
    assert.notEqual(spi(x1, h1.ip), spi(x1, h2.ip), 'one SPI per direction');

    await pingable(c1, '10.32.2.1', 60_000);
    step('containers ping');
    let pkts = await wire(lab, c1, '10.32.2.1');
    const esp12 = pkts.filter((p) => p.proto === ESP && p.src === h1.ip && p.dst === h2.ip);
    const esp21 = pkts.filter((p) => p.proto === ESP && p.src === h2.ip && p.dst === h1.ip);
    const plain = pkts.filter((p) => p.proto === UDP && (p.dport === VXLAN_PORT || p.sport === VXLAN_PORT));
    const summary = () => pkts.map((p) => `${p.src}>${p.dst} proto=${p.proto} ${p.proto === UDP ? `${p.sport}>${p.dport}` : `spi=0x${spiOf(p.payload).toString(16)}`}`).join('\n');
    assert.ok(esp12.length >= 5 && esp21.length >= 5, `ESP both ways for 5 pings (h1>h2 ${esp12.length}, h2>h1 ${esp21.length}):\n${summary()}`);
    assert.equal(plain.length, 0, `no plain VXLAN on the wire:\n${summary()}`);
    assert.deepEqual([...new Set(esp12.map((p) => spiOf(p.payload)))], [spi(x1, h1.ip)], 'h1>h2 carries the installed SPI');
    assert.deepEqual([...new Set(esp21.map((p) => spiOf(p.payload)))], [spi(x1, h2.ip)], 'h2>h1 carries the installed SPI');
    step('ESP on the wire');

    // Debian's UML kernel has no nftables inet family (bridge only): the router says its VXLAN guard is
    // unavailable and runs fastdp all the same; h2 is still taken only inside ESP, by the xfrm in-policy
    const g1 = (await apiReport(h1))?.fastdp?.vxlan?.guard;
    assert.match(g1?.unavailable ?? '', /lacks the nftables inet family/, `h1's VXLAN guard: ${JSON.stringify(g1)}`);
    assert.deepEqual({ plain: g1?.plain, esp: g1?.esp }, { plain: [], esp: [h2.ip] });
    const evil = await lab.addHost('evil');
    const name1 = (await apiReport(h1)).router.name as string;
    const heard = await udpListener(c1.ns, 9);
    try {
      const forged = vxlanFrame({ vni: DEFAULT_VNI, dstMac: vtepMacFor(name1), srcIp: '10.32.2.1', dstIp: '10.32.1.1', dport: 9, payload: Buffer.from('forged') });
      await spoofVxlan(evil, h2, h1, forged, 5);
      await sendUdp(c2.ns, '10.32.1.1', 9, [Buffer.from('real').toString('hex')]);
      await waitFor('c2\'s datagram over encrypted fastdp in c1', () => heard.lines().includes('10.32.2.1 real'), { timeoutMs: 60_000, intervalMs: 200 });
      assert.deepEqual(heard.lines().filter((l) => l.includes('forged')), [], 'plain VXLAN claiming to be h2 reached c1');
    } finally {
      await heard.stop();
    }
    step('plain VXLAN from h2\'s address dropped; ESP traffic flows');

    // reconnect: h2 stops (its SAs go with it) and comes back from its stored targets
    await h2.weave(['stop'], { timeoutMs: 300_000 });
    await waitFor('h2 xfrm entries removed on stop', async () => (await ours(h2)).states.length === 0 && (await ours(h2)).policies.length === 0, { timeoutMs: 60_000, intervalMs: 200 });
    step('h2 stopped');
    await launch(h2, ['--resume']);
    await encryptedFastdp(h1);
    await encryptedFastdp(h2);
    // h1 replaces its old SAs when the new connection installs its own: wait for exactly the new pair
    const y1 = await waitFor('h1 holds only the new SAs', async () => {
      const o = await ours(h1);
      return o.states.length === 2 && o.states.every((s) => s.spi !== spi(x1, h1.ip) && s.spi !== spi(x1, h2.ip)) ? o : undefined;
    }, { timeoutMs: 60_000, intervalMs: 250 }).catch(async (e) => { throw new Error(`${e.message}\nbefore: ${JSON.stringify(x1.states)}\nnow: ${JSON.stringify((await ours(h1)).states)}`); });
    const y2 = await ours(h2);
    assert.deepEqual(shape(y1), expected(h1, h2));
    assert.deepEqual(shape(y2), expected(h2, h1));
    assert.equal(spi(y1, h1.ip), spi(y2, h1.ip));
    assert.equal(spi(y1, h2.ip), spi(y2, h2.ip));
    step('rekeyed');
    // h2 re-attaches its container on --resume? Not necessarily: c2's interface lives in c2's namespace
    // and the router restores it from its data dir; either way the path must carry the new SPIs.
    await pingable(c1, '10.32.2.1', 60_000);
    pkts = await wire(lab, c1, '10.32.2.1');
    const spis = new Set(pkts.filter((p) => p.proto === ESP).map((p) => spiOf(p.payload)));
    assert.deepEqual([...spis].sort(), [spi(y1, h1.ip), spi(y1, h2.ip)].sort(), `the wire carries the new SPIs only:\n${summary()}`);
    assert.equal(pkts.filter((p) => p.proto === UDP).length, 0, `no plain VXLAN after the rekey:\n${summary()}`);
    step('new SPIs on the wire');

    // weave reset removes everything of ours from both namespaces
    for (const h of [h1, h2]) await reset(h);
    for (const h of [h1, h2]) {
      await waitFor(`${h.name}: xfrm states and policies gone after reset`, async () => {
        const o = await ours(h);
        return o.states.length === 0 && o.policies.length === 0;
      }, { timeoutMs: 60_000, intervalMs: 200 }).catch(async (e) => { throw new Error(`${e.message}\n${JSON.stringify(await ours(h))}`); });
    }
    step('reset: no xfrm state left');
  });
});
