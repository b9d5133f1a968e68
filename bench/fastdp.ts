// bench/fastdp: the fast datapath against the kernel VXLAN it is built on, between the same two lab
// hosts (network namespaces on one underlay bridge, test/lab/lab.ts), in one run:
//   (a) raw kernel VXLAN set up by hand between the hosts (VNI 42, UDP 4789, MTU = underlay MTU − 50,
//       the MTU weave gives weave-vx), carrying container traffic wired by hand like Flannel's VXLAN
//       backend: a veth into a namespace on each host (the container MTU weave chose), the hosts
//       routing the other's /24 over the VXLAN device — the same hops weave's containers take;
//   (b) weave.ts fastdp: `weave launch` without a password (fastdp on), a container attached with
//       `weave attach` on each host, traffic container to container once `weave report` shows the
//       connection established over fastdp.
// The two alternate for --rounds rounds (the order flips every round so neither always runs on a
// cooler machine); each round is a ping RTT and iperf3 TCP with 1 and 4 streams. Medians are
// reported with the ratio b/a per stream count (goal ≥ 0.95), the machine load before and after, the
// router processes' CPU seconds during the fastdp transfers next to the same during the raw transfers
// (their idle cost: the kernel carries fastdp packets, so the two should match; seconds of CPU per
// transfer would mean the sleeve is carrying) and the bytes weave-vx sent (which path carried).
// Prints a table, then a JSON summary last. --strict exits 1 when a ratio misses the goal.
// Usage: node dist/bench/fastdp.js [--seconds 5] [--rounds 3] [--strict]
//
// --esp: the encrypted half (raw VXLAN+ESP vs weave.ts encrypted fastdp, goal ≥ 0.9). This host's kernel
// has no ESP, so the same alternation runs inside the User-Mode Linux guest of test/vm/runner.ts (a
// stock 6.1 kernel with esp4/gcm; the guest sees the checkout and the host's binaries), between:
//   (a') the hand-made VXLAN plus transport-mode ESP SAs and policies set up by hand with `ip xfrm`
//        for UDP 4789 between the host addresses — the same AEAD (rfc4106(gcm(aes)), 128-bit key and
//        ICV, ESN, replay window 256) weave installs — with the MTU weave-vx has in that mode;
//   (b') the routers launched with WEAVE_PASSWORD, once `weave report` shows encrypted fastdp.
// Both run in the same guest, so UML's slowness cancels in the ratio; the absolute numbers mean
// nothing (one UML CPU, no AES-NI in the guest's crypto), and 4 streams are no faster than 1.
// Rounds default to 10 s there. The ESP byte counters of both baselines' SAs are printed, so a
// baseline that silently ran in clear would show.
// Usage: node dist/bench/fastdp.js --esp [--seconds 10] [--rounds 3] [--strict]
import * as fs from 'fs';
import { Container, Host, Lab } from '../test/lab/lab';
import { waitFor } from '../test/lab/exec';
import { arg, cpuTicks, CLK_TCK, iperf, nsx, ping, Result, run } from './sleeve';
import { DEFAULT_MODULES, runInVm } from '../test/vm/runner';
import { ESP_AEAD_ALG, ESP_ICV_BITS, ESP_KEY_BYTES } from '../ipsec/keys';
import { REPLAY_WINDOW } from '../ipsec/xfrm';
import { randomBytes } from 'crypto';

const GOAL = 0.95;
const GOAL_ESP = 0.9;
/** reqid of the hand-made baseline SAs (weave's are ipsec/xfrm.ts DEFAULT_REQID) */
const RAW_REQID = 4242;
const VXLAN_OVERHEAD = 50; // outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function loadavg(): string {
  return fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
}

async function linkInfo(ns: string, dev: string): Promise<{ mtu: number; txBytes: number }> {
  const r = await run(nsx(ns, ['ip', '-s', '-j', 'link', 'show', 'dev', dev]));
  const l = JSON.parse(r.out)[0];
  return { mtu: l.mtu, txBytes: l.stats64?.tx?.bytes ?? 0 };
}

/** ping, then iperf3 1 and 4 streams from nsA to addrB (served in nsB). */
async function once(nsA: string, nsB: string, addrB: string, seconds: number): Promise<Result> {
  const rttMs = await ping(nsA, addrB);
  const streams1 = await iperf(nsB, nsA, addrB, seconds, 1);
  const streams4 = await iperf(nsB, nsA, addrB, seconds, 4);
  return { streams1, streams4, rttMs };
}

/** Transport-mode ESP for UDP 4789 both ways between a and b, by hand (the baseline of --esp). */
async function rawEsp(a: Host, b: Host): Promise<void> {
  const sa = (src: Host, dst: Host, spi: string) => ({ src: src.ip, dst: dst.ip, spi, key: `0x${randomBytes(ESP_KEY_BYTES + 4).toString('hex')}` });
  const sas = [sa(a, b, '0x00001001'), sa(b, a, '0x00001002')];
  for (const h of [a, b]) {
    for (const s of sas) {
      await run(['ip', '-n', h.ns, 'xfrm', 'state', 'add', 'src', s.src, 'dst', s.dst, 'proto', 'esp', 'spi', s.spi, 'reqid', String(RAW_REQID), 'mode', 'transport',
        'replay-window', String(REPLAY_WINDOW), 'flag', 'esn', 'aead', ESP_AEAD_ALG, s.key, String(ESP_ICV_BITS)]);
      await run(['ip', '-n', h.ns, 'xfrm', 'policy', 'add', 'src', `${s.src}/32`, 'dst', `${s.dst}/32`, 'proto', 'udp', 'dport', '4789', 'dir', s.src === h.ip ? 'out' : 'in',
        'tmpl', 'src', s.src, 'dst', s.dst, 'proto', 'esp', 'reqid', String(RAW_REQID), 'mode', 'transport']);
    }
  }
}

/** Bytes through the ESP states in h's namespace: the hand-made ones (RAW_REQID) and the others (weave's). */
async function espBytes(h: Host): Promise<{ raw: number; weave: number }> {
  const r = await run(['ip', '-n', h.ns, '-s', 'xfrm', 'state']);
  const out = { raw: 0, weave: 0 };
  // `ip -s xfrm state` prints a "lifetime current:" block with "N(bytes), M(packets)" per state
  const blocks = r.out.split(/\n(?=src )/);
  for (const b of blocks) {
    const reqid = /\breqid (\d+)/.exec(b);
    const m = /current:\s*\n\s*(\d+)\(bytes\)/.exec(b);
    if (!reqid || !m) continue;
    if (Number(reqid[1]) === RAW_REQID) out.raw += Number(m[1]);
    else out.weave += Number(m[1]);
  }
  return out;
}

/** --esp on the host: the same bench inside the UML guest, its output relayed. */
async function benchInVm(): Promise<void> {
  const args = process.argv.slice(2);
  const seconds = arg('seconds', '10');
  const t0 = Date.now();
  const r = await runInVm([process.execPath, '--enable-source-maps', __filename, ...args.filter((a, i) => a !== '--seconds' && args[i - 1] !== '--seconds'), '--seconds', seconds], {
    timeoutMs: 30 * 60_000,
    modules: [...DEFAULT_MODULES, 'bridge', 'tun', 'nf_tables'],
    autoload: false,
    env: { WEAVE_CLI_TIMEOUT: '240' },
  });
  process.stdout.write(r.output);
  console.log(`(UML ${r.kernel}: boot-to-command ${r.bootMs} ms, total ${((Date.now() - t0) / 1000).toFixed(0)} s)`);
  if (r.code !== 0) process.exitCode = r.code;
}

async function bench(): Promise<void> {
  const esp = process.argv.includes('--esp');
  if (esp && !process.env.WEAVE_IN_VM) return benchInVm();
  const seconds = Number(arg('seconds', esp ? '10' : '5'));
  const rounds = Number(arg('rounds', '3'));
  const strict = process.argv.includes('--strict');
  const goal = esp ? GOAL_ESP : GOAL;
  const env: Record<string, string> = esp ? { WEAVE_PASSWORD: `bench ${randomBytes(8).toString('hex')}` } : {};
  let espCounters = { raw: 0, weave: 0 };
  const loadBefore = loadavg();
  const raw: Result[] = [];
  const fast: Result[] = [];
  const mtus: Record<string, number> = {};
  let routerCpuSeconds = 0;
  let routerIdleSeconds = 0;
  let vxTxBytes = 0;
  let overlayAfter: string[] = [];
  const switchesDuring: string[] = [];
  const lab = await Lab.create();
  try {
    const h1: Host = await lab.addHost('h1');
    const h2: Host = await lab.addHost('h2');
    const c1: Container = await lab.addContainer('c1');
    const c2: Container = await lab.addContainer('c2');
    const a1 = '10.32.1.1';
    const a2 = '10.32.2.1';

    // weave first: the hand-made VXLAN must not be on the hosts when the routers look at them
    await h1.weave(['launch', '--nickname', 'h1'], { env, timeoutMs: 300_000 });
    await h2.weave(['launch', '--nickname', 'h2', h1.ip], { env, timeoutMs: 300_000 });
    await h1.weave(['attach', `${a1}/12`, c1.ns]);
    await h2.weave(['attach', `${a2}/12`, c2.ns]);
    await waitFor('connection established over fastdp on both hosts', async () => {
      for (const h of [h1, h2]) {
        const rep = await h.report();
        if (!rep.router.connections.some((c: any) => c.state === 'established' && c.overlay === 'fastdp' && c.encrypted === esp)) return false;
      }
      return true;
    }, { timeoutMs: esp ? 180_000 : 30_000, intervalMs: 500 });
    await waitFor(`${a2} reachable from c1`, async () => (await run(nsx(c1.ns, ['ping', '-c', '1', '-W', '1', a2]), true)).code === 0, { timeoutMs: 20_000, intervalMs: 200 });

    const underlayMtu = (await linkInfo(h1.ns, 'eth0')).mtu;
    mtus.underlay = underlayMtu;
    mtus['weave-vx'] = (await linkInfo(h1.ns, 'weave-vx')).mtu;
    mtus.ethwe = (await linkInfo(c1.ns, 'ethwe')).mtu;
    // with ESP, weave-vx's MTU leaves room for ESP too: the baseline gets the same
    mtus.raw = esp ? mtus['weave-vx'] : underlayMtu - VXLAN_OVERHEAD;
    if (esp) await rawEsp(h1, h2);

    for (const [h, remote, addr] of [[h1, h2.ip, '10.40.0.1/24'], [h2, h1.ip, '10.40.0.2/24']] as const) {
      await run(['ip', '-n', h.ns, 'link', 'add', 'wbvx', 'mtu', String(mtus.raw), 'type', 'vxlan', 'id', '42', 'dstport', '4789', 'local', h.ip, 'remote', remote, 'dev', 'eth0']);
      await run(['ip', '-n', h.ns, 'addr', 'add', addr, 'dev', 'wbvx']);
      await run(['ip', '-n', h.ns, 'link', 'set', 'wbvx', 'up']);
    }
    await waitFor('10.40.0.2 reachable over wbvx', async () => (await run(nsx(h1.ns, ['ping', '-c', '1', '-W', '1', '10.40.0.2']), true)).code === 0, { timeoutMs: 10_000, intervalMs: 100 });
    // the baseline carries container traffic too, wired by hand the way weave wires it (a veth into a
    // namespace, routed by the host over the VXLAN device), so both sides pay the same veth hop and MTU
    const r1: Container = await lab.addContainer('r1');
    const r2: Container = await lab.addContainer('r2');
    for (const [h, c, net, peerNet, peerVx] of [[h1, r1, 1, 2, '10.40.0.2'], [h2, r2, 2, 1, '10.40.0.1']] as const) {
      await run(['ip', '-n', h.ns, 'link', 'add', 'wbc0', 'mtu', String(mtus.ethwe), 'type', 'veth', 'peer', 'name', 'eth0', 'mtu', String(mtus.ethwe), 'netns', c.ns]);
      await run(['ip', '-n', h.ns, 'addr', 'add', `10.41.${net}.254/24`, 'dev', 'wbc0']);
      await run(['ip', '-n', h.ns, 'link', 'set', 'wbc0', 'up']);
      await run(['ip', '-n', c.ns, 'addr', 'add', `10.41.${net}.1/24`, 'dev', 'eth0']);
      await run(['ip', '-n', c.ns, 'link', 'set', 'eth0', 'up']);
      await run(['ip', '-n', c.ns, 'route', 'add', 'default', 'via', `10.41.${net}.254`]);
      await run(['ip', '-n', h.ns, 'route', 'add', `10.41.${peerNet}.0/24`, 'via', peerVx, 'dev', 'wbvx']);
    }
    await waitFor('10.41.2.1 reachable from r1', async () => (await run(nsx(r1.ns, ['ping', '-c', '1', '-W', '1', '10.41.2.1']), true)).code === 0, { timeoutMs: 10_000, intervalMs: 100 });

    // the routers' CPU while they carry nothing (the raw VXLAN transfers) is their idle cost: gossip,
    // heartbeats, resyncs; the fastdp transfers should cost them no more than that
    const runRaw = async (): Promise<void> => {
      const before = await cpuTicks(lab, [h1, h2]);
      const r = await once(r1.ns, r2.ns, '10.41.2.1', seconds);
      const cpu = (await cpuTicks(lab, [h1, h2]) - before) / CLK_TCK;
      routerIdleSeconds += cpu;
      raw.push({ ...r, cpuSeconds: cpu });
    };
    const runFast = async (): Promise<void> => {
      const swBefore = (await h1.report()).fastdp.switches ?? {};
      const vxBefore = (await linkInfo(h1.ns, 'weave-vx')).txBytes;
      const before = await cpuTicks(lab, [h1, h2]);
      const r = await once(c1.ns, c2.ns, a2, seconds);
      const cpu = (await cpuTicks(lab, [h1, h2]) - before) / CLK_TCK;
      routerCpuSeconds += cpu;
      vxTxBytes += (await linkInfo(h1.ns, 'weave-vx')).txBytes - vxBefore;
      // a carrier switch during the transfer (fastdp heartbeats lost under load) puts the sleeve in the figures
      const swAfter = (await h1.report()).fastdp.switches ?? {};
      for (const [k, v] of Object.entries(swAfter) as Array<[string, number]>) if (v !== (swBefore[k] ?? 0)) switchesDuring.push(`round ${fast.length + 1}: to ${k} x${v - (swBefore[k] ?? 0)}`);
      fast.push({ ...r, cpuSeconds: cpu });
    };
    for (let i = 0; i < rounds; i++) {
      if (i % 2 === 0) { await runRaw(); await runFast(); } else { await runFast(); await runRaw(); }
    }
    if (esp) espCounters = await espBytes(h1);
    for (const h of [h1, h2]) {
      const rep = await h.report();
      overlayAfter = overlayAfter.concat(rep.router.connections.map((c: any) => `${h.name}:${c.state}/${c.overlay}`));
    }
  } finally {
    await lab.cleanup();
  }
  const loadAfter = loadavg();

  const med = (rs: Result[]): Result => ({
    streams1: median(rs.map((r) => r.streams1)), streams4: median(rs.map((r) => r.streams4)),
    rttMs: median(rs.map((r) => r.rttMs)), cpuSeconds: median(rs.map((r) => r.cpuSeconds ?? 0)),
  });
  const a = med(raw);
  const b = med(fast);
  const ratios = { '1 stream': b.streams1 / a.streams1, '4 streams': b.streams4 / a.streams4 };
  const met = Object.values(ratios).every((r) => r >= goal);

  console.log(`machine: ${require('os').cpus().length} CPUs; load average before ${loadBefore}, after ${loadAfter}`);
  console.log(`MTU: underlay ${mtus.underlay}, raw VXLAN ${mtus.raw}, weave-vx ${mtus['weave-vx']}, container ethwe ${mtus.ethwe}`);
  console.log(`${rounds} rounds × ${seconds} s, alternating`);
  console.log('round path                 1 stream Gbit/s  4 streams Gbit/s  ping ms  router CPU s');
  const row = (label: string, r: Result): string =>
    `${label} ${r.streams1.toFixed(3).padStart(16)} ${r.streams4.toFixed(3).padStart(17)} ${r.rttMs.toFixed(3).padStart(8)} ${r.cpuSeconds === undefined ? '           -' : r.cpuSeconds.toFixed(2).padStart(12)}`;
  for (let i = 0; i < rounds; i++) {
    console.log(row(`${String(i + 1).padStart(5)} (a) raw kernel VXLAN${esp ? '+' : ' '}`, raw[i]));
    console.log(row(`${String(i + 1).padStart(5)} (b) weave.ts fastdp${esp ? '+' : ' '} `, fast[i]));
  }
  console.log(row(`  med (a) raw kernel VXLAN${esp ? '+' : ' '}`, a));
  console.log(row(`  med (b) weave.ts fastdp${esp ? '+' : ' '} `, b));
  if (esp) console.log(`(+ = under ESP ${ESP_AEAD_ALG}; bytes through h1's ESP states: hand-made ${(espCounters.raw / 1e6).toFixed(1)} MB, weave's ${(espCounters.weave / 1e6).toFixed(1)} MB)`);
  for (const [k, v] of Object.entries(ratios)) console.log(`b/a ${k}: ${v.toFixed(3)} (goal ≥ ${goal})`);
  console.log(`router CPU (both routers) during the fastdp transfers: ${routerCpuSeconds.toFixed(2)} s; while idle during the raw VXLAN transfers: ${routerIdleSeconds.toFixed(2)} s (each over ${rounds * 2 * seconds} s of iperf3); weave-vx on h1 sent ${(vxTxBytes / 1e9).toFixed(2)} GB`);
  console.log(`connections after the run: ${overlayAfter.join(', ')}; carrier switches on h1 during the fastdp transfers: ${switchesDuring.length ? switchesDuring.join('; ') : 'none'}`);
  console.log(met ? 'goal met' : `goal NOT met: b/a < ${goal}`);
  console.log(JSON.stringify({ bench: esp ? 'fastdp-esp' : 'fastdp', seconds, espCounters, rounds, loadBefore, loadAfter, mtus, raw, fastdp: fast, medians: { a, b }, ratios, routerCpuSeconds, routerIdleSeconds, vxTxBytes, switchesDuring, goal, met }));
  if (strict && !met) process.exitCode = 1;
}

if (require.main === module) {
  bench().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
