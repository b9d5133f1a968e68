// bench/peers: weave.ts next to what users would pick instead, in one lab and interleaved. Each trial
// gets a fresh lab (two hosts, network namespaces on one underlay bridge, test/lab/lab.ts), starts one
// contender, measures, and tears it all down; the contenders take turns round-robin (the order rotates
// every round so none always runs on a cooler machine):
//   weave.ts: the sleeve encrypted (WEAVE_PASSWORD, --no-fastdp), the sleeve plain (--no-fastdp), fastdp
//     (plain: encrypted fastdp needs ESP, which this kernel lacks); real routers, `weave attach`ed
//     container namespaces, traffic container to container;
//   nebula (Debian's 1.6.1, AES-GCM; a CA and host certificates made with nebula-cert, a lighthouse on
//     h1, its defaults otherwise: one routine, MTU 1300), wireguard-go (Debian's 0.0.20220316: from
//     before its TUN offloads and UDP GSO; configured with `wg set`, MTU 1420), tinc 1.0.36 (router
//     mode, RSA host keys exchanged by file, its default cipher: Blowfish-CBC with SHA-1);
//   kernel VXLAN between the hosts and the bare underlay (no overlay: the ceiling).
// Per trial: the tunnel's first ping; the daemons' RSS at rest; an underlay capture (tcpdump on h2's
// eth0) during a ping whose payload repeats a marker: an encrypted contender must never show the marker
// (the bench fails if it does), a plain one must (proves the check sees the tunnel's packets; and
// `--claim-encrypted` shows it failing); a 2 s
// warm-up transfer; iperf3 TCP with 1 and 4 streams and the daemons' CPU seconds during them (CPU-s per
// GB carried); RSS under load (the most sampled during the 4-stream transfer); ping RTT and
// `sockperf ping-pong` p50/p99.
// Prints medians per contender, then the ratios of weave.ts (each of its modes) to every other
// contender, then a JSON summary last. Installs its Debian packages itself (scripts/ensure-deps.js
// --peers). Not part of npm test.
// CPU-s per GB counts the daemons' own utime+stime (both hosts, /proc/PID/stat, all threads): what
// the kernel does in softirq (kernel VXLAN, the underlay, fastdp's datapath) is nobody's, so those
// show no figure and fastdp's is the router's control plane only.
// Usage: node dist/bench/peers.js [--rounds 2] [--seconds 5] [--only nebula,wireguard,...] (substrings
// of the contenders' names) [--claim-encrypted sleeve,...] (a self-test: the check must fail)
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { Lab, type Host } from '../test/lab/lab';
import { run as exec, waitFor } from '../test/lab/exec';
import { CLK_TCK, arg, iperf, procTicks, launch, nsx, rssMb, run, sampleMax, sockperf } from './sleeve';

/** what every encrypted contender's underlay capture must not contain */
const MARKER = 'deadbeefcafebabe';

interface Ctx { lab: Lab; h1: Host; h2: Host; dir: string }
interface Ends { srcNs: string; dstNs: string; dstIp: string }

interface Contender {
  name: string;
  encrypted: boolean;
  /** names (/proc/PID/comm) of the daemon processes in the hosts' namespaces */
  daemon: string;
  /** `underlay` has none: its "tunnel" is the hosts' own link */
  setup(x: Ctx): Promise<Ends>;
}

const KEYS = { made: false };

function weave(name: string, opts: { password?: string; fastdp?: boolean }): Contender {
  return {
    name, encrypted: !!opts.password, daemon: 'node',
    async setup(x) {
      const env: Record<string, string> = opts.password ? { WEAVE_PASSWORD: opts.password } : {};
      const flags = opts.fastdp ? [] : ['--no-fastdp'];
      await launch(x.h1, ['--nickname', 'h1', ...flags], env);
      await launch(x.h2, ['--nickname', 'h2', ...flags, x.h1.ip], env);
      const c1 = await x.lab.addContainer('c1');
      const c2 = await x.lab.addContainer('c2');
      await x.h1.weave(['attach', '10.32.1.1/12', c1.ns]);
      await x.h2.weave(['attach', '10.32.2.1/12', c2.ns]);
      const overlay = opts.fastdp ? 'fastdp' : 'sleeve';
      await waitFor(`weave.ts ${overlay} established`, async () => {
        const rep = await x.h1.report();
        return rep.router.connections.some((c: any) => c.state === 'established' && c.overlay === overlay);
      }, { timeoutMs: 30_000, intervalMs: 300 });
      return { srcNs: c1.ns, dstNs: c2.ns, dstIp: '10.32.2.1' };
    },
  };
}

/** keys and configs for nebula, wireguard and tinc under dir (made once per run) */
async function makeKeys(dir: string): Promise<void> {
  if (KEYS.made) return;
  const nb = path.join(dir, 'nebula');
  fs.mkdirSync(nb, { recursive: true });
  await exec(['nebula-cert', 'ca', '-name', 'bench-ca', '-out-crt', `${nb}/ca.crt`, '-out-key', `${nb}/ca.key`]);
  for (const n of [1, 2]) {
    await exec(['nebula-cert', 'sign', '-name', `h${n}`, '-ip', `10.200.2.${n}/24`, '-ca-crt', `${nb}/ca.crt`, '-ca-key', `${nb}/ca.key`, '-out-crt', `${nb}/h${n}.crt`, '-out-key', `${nb}/h${n}.key`]);
  }
  const wg = path.join(dir, 'wg');
  fs.mkdirSync(wg, { recursive: true });
  for (const n of [1, 2]) {
    const key = (await exec(['wg', 'genkey'])).stdout.trim();
    fs.writeFileSync(`${wg}/h${n}.key`, `${key}\n`, { mode: 0o600 });
    fs.writeFileSync(`${wg}/h${n}.pub`, (await exec(['wg', 'pubkey'], { input: `${key}\n` })).stdout);
  }
  for (const n of [1, 2]) {
    const t = path.join(dir, 'tinc', `h${n}`);
    fs.mkdirSync(path.join(t, 'hosts'), { recursive: true });
    fs.writeFileSync(`${t}/tinc.conf`, `Name = h${n}\nMode = router\nDeviceType = tun\nDevice = /dev/net/tun\nInterface = pbtinc\nAddressFamily = ipv4\nConnectTo = h${3 - n}\n`);
    fs.writeFileSync(`${t}/tinc-up`, `#!/bin/sh\nip addr add 10.200.4.${n}/24 dev $INTERFACE\nip link set $INTERFACE up\n`, { mode: 0o755 });
    fs.writeFileSync(`${t}/hosts/h${n}`, `Address = 198.18.0.${10 + n}\nSubnet = 10.200.4.${n}/32\n`);
    await exec(['tincd', '-c', t, '-K2048'], { input: '' });
  }
  for (const n of [1, 2]) fs.copyFileSync(path.join(dir, 'tinc', `h${n}`, 'hosts', `h${n}`), path.join(dir, 'tinc', `h${3 - n}`, 'hosts', `h${n}`));
  KEYS.made = true;
}

/** starts a daemon in a namespace, detached from us (stopped with the lab: every process in its namespaces) */
function daemon(ns: string, argv: string[], log: string, env: NodeJS.ProcessEnv = process.env): void {
  const out = fs.openSync(log, 'a');
  const c = spawn('ip', ['netns', 'exec', ns, ...argv], { stdio: ['ignore', out, out], detached: true, env });
  c.unref();
  fs.closeSync(out);
}

const nebula: Contender = {
  name: 'nebula', encrypted: true, daemon: 'nebula',
  async setup(x) {
    const nb = path.join(x.dir, 'nebula');
    for (const n of [1, 2]) {
      const lh = n === 1;
      const conf = `pki: { ca: ${nb}/ca.crt, cert: ${nb}/h${n}.crt, key: ${nb}/h${n}.key }
static_host_map: { "10.200.2.1": ["${x.h1.ip}:4242"] }
lighthouse: { am_lighthouse: ${lh}, interval: 60, hosts: ${lh ? '[]' : '["10.200.2.1"]'} }
listen: { host: 0.0.0.0, port: 4242 }
punchy: { punch: true }
cipher: aes
tun: { disabled: false, dev: nebula1, drop_local_broadcast: false, drop_multicast: false, tx_queue: 500, mtu: 1300 }
logging: { level: warning, format: text }
firewall:
  conntrack: { tcp_timeout: 12m, udp_timeout: 3m, default_timeout: 10m }
  outbound: [ { port: any, proto: any, host: any } ]
  inbound: [ { port: any, proto: any, host: any } ]
`;
      fs.writeFileSync(`${x.lab.tmp}/nebula-h${n}.yml`, conf);
      daemon((n === 1 ? x.h1 : x.h2).ns, ['nebula', '-config', `${x.lab.tmp}/nebula-h${n}.yml`], `${x.lab.tmp}/nebula-h${n}.log`);
    }
    return { srcNs: x.h1.ns, dstNs: x.h2.ns, dstIp: '10.200.2.2' };
  },
};

const wireguardGo: Contender = {
  name: 'wireguard-go', encrypted: true, daemon: 'wireguard-go',
  async setup(x) {
    // the control socket is /var/run/wireguard/IFNAME.sock in every namespace: a name unique to this lab
    const ifs = [1, 2].map((n) => `wg${x.lab.id}${n}`);
    for (const n of [1, 2]) daemon((n === 1 ? x.h1 : x.h2).ns, ['wireguard-go', '-f', ifs[n - 1]], `${x.lab.tmp}/wg-h${n}.log`, { ...process.env, LOG_LEVEL: 'error' });
    await waitFor('wireguard-go sockets', () => ifs.every((i) => fs.existsSync(`/var/run/wireguard/${i}.sock`)), { timeoutMs: 10_000, intervalMs: 100 });
    for (const n of [1, 2]) {
      const h = n === 1 ? x.h1 : x.h2;
      const o = 3 - n;
      const pub = fs.readFileSync(path.join(x.dir, 'wg', `h${o}.pub`), 'utf8').trim();
      await h.exec(['wg', 'set', ifs[n - 1], 'private-key', path.join(x.dir, 'wg', `h${n}.key`), 'listen-port', '51820', 'peer', pub, 'allowed-ips', `10.200.1.${o}/32`, 'endpoint', `198.18.0.${10 + o}:51820`]);
      await exec(['ip', '-n', h.ns, 'addr', 'add', `10.200.1.${n}/24`, 'dev', ifs[n - 1]]);
      await exec(['ip', '-n', h.ns, 'link', 'set', ifs[n - 1], 'up']);
    }
    return { srcNs: x.h1.ns, dstNs: x.h2.ns, dstIp: '10.200.1.2' };
  },
};

const tinc: Contender = {
  name: 'tinc', encrypted: true, daemon: 'tincd',
  async setup(x) {
    for (const n of [1, 2]) {
      const h = n === 1 ? x.h1 : x.h2;
      daemon(h.ns, ['tincd', '-c', path.join(x.dir, 'tinc', `h${n}`), '-D', `--pidfile=${x.lab.tmp}/tinc-h${n}.pid`, `--logfile=${x.lab.tmp}/tinc-h${n}.log`], '/dev/null');
    }
    return { srcNs: x.h1.ns, dstNs: x.h2.ns, dstIp: '10.200.4.2' };
  },
};

const vxlan: Contender = {
  name: 'kernel VXLAN', encrypted: false, daemon: '',
  async setup(x) {
    for (const [h, remote, n] of [[x.h1, x.h2.ip, 1], [x.h2, x.h1.ip, 2]] as const) {
      await exec(['ip', '-n', h.ns, 'link', 'add', 'pbvx', 'type', 'vxlan', 'id', '42', 'dstport', '4789', 'local', h.ip, 'remote', remote, 'dev', 'eth0']);
      await exec(['ip', '-n', h.ns, 'addr', 'add', `10.200.3.${n}/24`, 'dev', 'pbvx']);
      await exec(['ip', '-n', h.ns, 'link', 'set', 'pbvx', 'up']);
    }
    return { srcNs: x.h1.ns, dstNs: x.h2.ns, dstIp: '10.200.3.2' };
  },
};

const underlay: Contender = {
  name: 'bare underlay', encrypted: false, daemon: '',
  async setup(x) { return { srcNs: x.h1.ns, dstNs: x.h2.ns, dstIp: x.h2.ip }; },
};

const CONTENDERS: Contender[] = [
  weave('weave.ts sleeve enc', { password: 'bench peers password' }),
  weave('weave.ts sleeve', {}),
  weave('weave.ts fastdp', { fastdp: true }),
  nebula, wireguardGo, tinc, vxlan, underlay,
];
/**
 * `--claim-encrypted NAME,...`: treat these plain contenders as encrypted, to see the marker check fail
 * (a self-test of the check: their captures hold the marker, so their trials must fail and the bench
 * exit 1)
 */
const CLAIMED = arg('claim-encrypted', '').split(',').filter(Boolean);
const encrypted = (c: Contender): boolean => c.encrypted || CLAIMED.some((n) => c.name.includes(n));

const WEAVE_NAMES = CONTENDERS.filter((c) => c.name.startsWith('weave.ts')).map((c) => c.name);

interface Trial {
  name: string; round: number;
  upMs?: number; p1?: number; p4?: number; pingMs?: number; rrP50Ms?: number; rrP99Ms?: number;
  cpuPerGb?: number; rssIdleMb?: number; rssLoadedMb?: number;
  /** capture: packets seen on the underlay, how many held the marker */
  captured?: number; marked?: number;
  error?: string;
}

/** pids of the contender's daemons in both hosts (by /proc comm) */
async function daemons(x: Ctx, c: Contender): Promise<number[][]> {
  const out: number[][] = [];
  for (const h of [x.h1, x.h2]) {
    const ps: number[] = [];
    for (const pid of await x.lab.pidsIn(h.ns)) {
      let comm = '';
      try { comm = fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim(); } catch { continue; /* exited */ }
      if (c.daemon && comm === c.daemon) ps.push(pid);
    }
    out.push(ps);
  }
  return out;
}

/** the larger of the two hosts' daemon RSS (MB): one router's memory */
const routerRss = (ds: number[][]): number => Math.max(...ds.map((ps) => ps.reduce((s, p) => s + rssMb(p), 0)));

/**
 * tcpdump on h2's underlay (whole packets: a UDP GSO send is one packet there) while a marked ping crosses
 * the tunnel: packets seen, how many held the marker, the echo replies, the bytes on the wire
 */
async function captureOnce(x: Ctx, e: Ends): Promise<{ captured: number; marked: number; replies: number; bytes: number }> {
  const file = path.join(x.lab.tmp, 'underlay.pcap');
  fs.rmSync(file, { force: true });
  const td = spawn('ip', ['netns', 'exec', x.h2.ns, 'tcpdump', '-Z', 'root', '--immediate-mode', '-i', 'eth0', '-nn', '-U', '-s', '0', '-w', file], { stdio: ['ignore', 'ignore', 'pipe'] });
  let replies = 0;
  try {
    // tcpdump says "listening on eth0" once the capture is open
    await new Promise<void>((resolve, reject) => {
      let err = '';
      const timer = setTimeout(() => reject(new Error(`tcpdump did not start: ${err}`)), 10_000);
      td.stderr!.setEncoding('utf8').on('data', (d: string) => {
        err += d;
        if (err.includes('listening on')) {
          clearTimeout(timer);
          resolve();
        }
      });
      td.once('exit', (code) => reject(new Error(`tcpdump exited (${code}): ${err}`)));
    });
    const pg = await run(nsx(e.srcNs, ['ping', '-q', '-c', '20', '-i', '0.02', '-W', '1', '-s', '200', '-p', MARKER, e.dstIp]), true);
    replies = Number(/(\d+) received/.exec(pg.out)?.[1] ?? 0);
    await new Promise((r) => setTimeout(r, 300));
  } finally {
    td.kill('SIGINT');
    if (td.exitCode === null && td.signalCode === null) await new Promise((r) => td.once('close', r));
  }
  const data = fs.readFileSync(file);
  // pcap (tcpdump -w writes the classic format, microsecond magic, in host order: little-endian here)
  if (data.length < 24 || data.readUInt32LE(0) !== 0xa1b2c3d4) throw new Error(`${file}: not a little-endian pcap file (${data.length} bytes)`);
  const marker = Buffer.from(MARKER, 'hex');
  // 24-byte file header, then per packet a 16-byte record header (incl_len at 8) and the bytes
  let off = 24;
  let captured = 0;
  let marked = 0;
  let bytes = 0;
  while (off + 16 <= data.length) {
    const incl = data.readUInt32LE(off + 8);
    bytes += data.readUInt32LE(off + 12); // orig_len
    const pkt = data.subarray(off + 16, off + 16 + incl);
    off += 16 + incl;
    captured++;
    if (pkt.includes(marker)) marked++;
  }
  return { captured, marked, replies, bytes };
}

/**
 * The marker check: an encrypted contender must never show the marker on the underlay, a plain one
 * must (else the capture does not see the tunnel's packets and the check proves nothing), and the
 * capture must hold the bytes of every echo that came back. A loaded machine may lose a few pings: a
 * capture in which fewer than half came back is taken again (up to 3 times).
 */
async function capture(x: Ctx, e: Ends, c: Contender, encrypted: boolean, t: Trial): Promise<void> {
  let r = { captured: 0, marked: 0, replies: 0, bytes: 0 };
  for (let i = 0; i < 3; i++) {
    r = await captureOnce(x, e);
    t.captured = r.captured;
    t.marked = r.marked;
    if (encrypted && r.marked > 0) throw new Error(`${c.name}: the marker crossed the underlay in clear (${r.marked} of ${r.captured} packets)`);
    if (r.replies >= 10) break;
  }
  if (r.replies < 10) throw new Error(`${c.name}: only ${r.replies} of 20 marked pings came back (3 tries): the check is blind`);
  // every echo that came back crossed h2's eth0 twice, each at least its 228 bytes of IP, ICMP and
  // payload (by bytes, not packets: a veth shows a UDP GSO send as one packet, and a loaded router may
  // batch echoes)
  if ((!encrypted && r.marked === 0) || r.bytes < 2 * 228 * r.replies) throw new Error(`${c.name}: the capture saw ${r.captured} packets (${r.bytes} bytes), ${r.marked} with the marker, for ${r.replies} echo replies: the check is blind`);
}

async function trial(c: Contender, round: number, seconds: number, dir: string): Promise<Trial> {
  const t: Trial = { name: c.name, round };
  const lab = await Lab.create();
  try {
    const h1 = await lab.addHost('h1');
    const h2 = await lab.addHost('h2');
    const x: Ctx = { lab, h1, h2, dir };
    const t0 = Date.now();
    const e = await c.setup(x);
    await waitFor(`${c.name}: first ping`, async () => (await run(nsx(e.srcNs, ['ping', '-c', '1', '-W', '1', e.dstIp]), true)).code === 0, { timeoutMs: 40_000, intervalMs: 200 });
    t.upMs = Date.now() - t0;
    await new Promise((r) => setTimeout(r, 1000));
    const ds = await daemons(x, c);
    if (c.daemon && ds.some((ps) => ps.length === 0)) throw new Error(`${c.name}: no ${c.daemon} process in a host`);
    t.rssIdleMb = c.daemon ? routerRss(ds) : undefined;
    await capture(x, e, c, encrypted(c), t);
    await iperf(e.dstNs, e.srcNs, e.dstIp, 2, 1); // warm-up: path MTU, handshakes, caches
    const all = ds.flat();
    const before = procTicks(all);
    const bytes = { n: 0 };
    t.p1 = await iperf(e.dstNs, e.srcNs, e.dstIp, seconds, 1);
    bytes.n += t.p1 * 1e9 / 8 * seconds;
    const s4 = await sampleMax(async () => (c.daemon ? routerRss(ds) : 0), () => iperf(e.dstNs, e.srcNs, e.dstIp, seconds, 4));
    t.p4 = s4.value;
    bytes.n += t.p4 * 1e9 / 8 * seconds;
    if (c.daemon) {
      t.cpuPerGb = (procTicks(all) - before) / CLK_TCK / (bytes.n / 1e9);
      t.rssLoadedMb = s4.max;
    }
    const pg = await run(nsx(e.srcNs, ['ping', '-c', '50', '-i', '0.01', '-q', e.dstIp]));
    const m = /= [\d.]+\/([\d.]+)\//.exec(pg.out);
    t.pingMs = m ? Number(m[1]) : NaN;
    const rr = await sockperf(e.dstNs, e.srcNs, e.dstIp);
    t.rrP50Ms = rr.p50;
    t.rrP99Ms = rr.p99;
  } catch (err) {
    t.error = (err as Error).message.slice(0, 600);
    console.log(`  ERROR ${c.name}: ${t.error}`);
  } finally {
    await lab.cleanup();
    // wireguard-go leaves its control socket behind when killed
    for (const n of [1, 2]) fs.rmSync(`/var/run/wireguard/wg${lab.id}${n}.sock`, { force: true });
  }
  return t;
}

const median = (v: number[]): number | undefined => {
  const s = v.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return undefined;
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

type Key = 'p1' | 'p4' | 'pingMs' | 'rrP50Ms' | 'rrP99Ms' | 'cpuPerGb' | 'rssIdleMb' | 'rssLoadedMb';
const KEYS_SHOWN: Key[] = ['p1', 'p4', 'pingMs', 'rrP50Ms', 'rrP99Ms', 'cpuPerGb', 'rssIdleMb', 'rssLoadedMb'];

async function bench(): Promise<void> {
  const rounds = Number(arg('rounds', '2'));
  const seconds = Number(arg('seconds', '5'));
  const only = arg('only', '');
  const chosen = only ? CONTENDERS.filter((c) => only.split(',').some((o) => c.name.includes(o))) : CONTENDERS;
  const deps = spawnSync(process.execPath, [path.join(__dirname, '..', '..', 'scripts', 'ensure-deps.js'), '--peers'], { stdio: 'inherit' });
  if (deps.status !== 0) throw new Error('ensure-deps --peers failed: the contenders are not installed');
  const dir = fs.mkdtempSync('/tmp/weave-peers-');
  const trials: Trial[] = [];
  const load = fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  try {
    await makeKeys(dir);
    for (let r = 0; r < rounds; r++) {
      const k = r % chosen.length;
      const order = [...chosen.slice(k), ...chosen.slice(0, k)];
      console.log(`round ${r + 1}/${rounds} (load ${fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')})`);
      for (const c of order) {
        const t = await trial(c, r, seconds, dir);
        trials.push(t);
        const daemonFigures = t.cpuPerGb === undefined ? '' : `, ${t.cpuPerGb.toFixed(1)} CPU-s/GB, RSS ${t.rssIdleMb!.toFixed(1)}/${t.rssLoadedMb!.toFixed(1)} MB`;
        if (!t.error) console.log(`  ${c.name.padEnd(20)} up ${(t.upMs! / 1000).toFixed(1)} s, ${t.p1!.toFixed(2)} / ${t.p4!.toFixed(2)} Gbit/s, ping ${t.pingMs!.toFixed(3)} ms, rr p50 ${t.rrP50Ms!.toFixed(3)} p99 ${t.rrP99Ms!.toFixed(3)} ms${daemonFigures}, capture ${t.marked}/${t.captured} marked`);
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const med: Record<string, Partial<Record<Key, number>>> = {};
  for (const c of chosen) {
    const ts = trials.filter((t) => t.name === c.name && !t.error);
    med[c.name] = Object.fromEntries(KEYS_SHOWN.map((k) => [k, median(ts.map((t) => t[k] as number))]));
  }
  const f = (v: number | undefined, w: number, d: number): string => (v === undefined ? '-' : v.toFixed(d)).padStart(w);
  console.log(`\nmedians of ${rounds} interleaved rounds × ${seconds} s (load before: ${load})`);
  console.log('contender             1 stream 4 streams   ping  rr p50  rr p99   CPU-s  RSS MB  RSS MB  encrypted: marker check');
  console.log('                        Gbit/s    Gbit/s     ms      ms      ms    /GB    idle  loaded');
  for (const c of chosen) {
    const m = med[c.name];
    const failed = trials.filter((t) => t.name === c.name && t.error).length;
    // the marker check over every trial that got as far: packets with the marker / underlay packets captured
    const caps = trials.filter((t) => t.name === c.name && t.captured !== undefined);
    const check = caps.length ? `${caps.reduce((s, t) => s + t.marked!, 0)}/${caps.reduce((s, t) => s + t.captured!, 0)} marked` : 'not checked';
    console.log(`${c.name.padEnd(21)} ${f(m.p1, 8, 2)} ${f(m.p4, 9, 2)} ${f(m.pingMs, 6, 3)} ${f(m.rrP50Ms, 7, 3)} ${f(m.rrP99Ms, 7, 3)} ${f(m.cpuPerGb, 7, 1)} ${f(m.rssIdleMb, 7, 1)} ${f(m.rssLoadedMb, 7, 1)}  ${encrypted(c) ? 'yes' : 'no '} ${check}${failed ? `  (${failed} trial(s) failed)` : ''}`);
  }
  // ratios: throughput as weave.ts / other (>1: weave.ts faster), latency/CPU/RSS as weave.ts / other (<1: weave.ts lower)
  const ratios: Record<string, Record<string, Partial<Record<Key, number>>>> = {};
  console.log('\nweave.ts ÷ contender (throughput: >1 is faster; ping, rr, CPU, RSS: <1 is lower)');
  for (const w of WEAVE_NAMES.filter((n) => med[n]?.p1 !== undefined)) {
    ratios[w] = {};
    for (const c of chosen) {
      if (WEAVE_NAMES.includes(c.name) || med[c.name]?.p1 === undefined) continue;
      const r: Partial<Record<Key, number>> = {};
      for (const k of KEYS_SHOWN) {
        const a = med[w][k];
        const b = med[c.name][k];
        if (a !== undefined && b !== undefined && b > 0) r[k] = a / b;
      }
      ratios[w][c.name] = r;
      console.log(`${w} ÷ ${c.name.padEnd(20)} 1 stream ${f(r.p1, 6, 2)}  4 streams ${f(r.p4, 6, 2)}  ping ${f(r.pingMs, 6, 2)}  rr p50 ${f(r.rrP50Ms, 6, 2)}  p99 ${f(r.rrP99Ms, 6, 2)}  CPU/GB ${f(r.cpuPerGb, 6, 2)}  RSS idle ${f(r.rssIdleMb, 6, 2)}  loaded ${f(r.rssLoadedMb, 6, 2)}`);
    }
  }
  console.log(JSON.stringify({ bench: 'peers', rounds, seconds, load, medians: med, ratios, trials }));
  if (trials.some((t) => t.error?.includes('in clear') || t.error?.includes('blind'))) process.exitCode = 1;
}

if (require.main === module) {
  bench().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
