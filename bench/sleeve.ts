// bench/sleeve: throughput and latency between two hosts (network namespaces joined by a veth pair
// on the 198.18.0.0/15 benchmarking range), in one run, through
//   (a) the bare veth, (b) kernel VXLAN, (c) the weave.ts sleeve unencrypted, (d) encrypted.
// iperf3 TCP with 1 and 4 streams and a ping RTT for each; for (c)/(d) the CPU seconds the two
// sleeve processes used; ratios c/b and d/b. Prints a table, then a JSON summary last.
//
// The sleeve ends are bench processes (this file with --node) running router/sleeve.ts over the real
// TUN + UDP (native addon, worker threads), with the control messages a mesh connection would carry
// relayed through this process's pipes: the data path is the product's; the mesh is stubbed.
// Usage: node dist/bench/sleeve.js [--seconds 5] [--only a,b,c,d]   (BENCH_INLINE=1: no worker threads)
import { spawn, type ChildProcess } from 'child_process';
import { randomBytes } from 'crypto';
import { EventEmitter } from 'events';
import * as readline from 'readline';
import { realClock } from '../mesh/clock';
import { loadCrypto } from '../mesh/crypto';
import { rootLogger, silentLogger } from '../mesh/log';
import type { Features, MeshConnection } from '../mesh/types';
import { ip4ToU32 } from '../router/forwarding';
import { loadTunIo } from '../router/native';
import { PrefixTable, PrefixUpdate } from '../router/prefixes';
import { Sleeve, type SleeveHandle } from '../router/sleeve';
import { NativeTun } from '../router/tun';
import { NativeUdp } from '../router/udp';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
}

interface Out { code: number; out: string }

function run(argv: string[], allowFail = false): Promise<Out> {
  return new Promise((resolve, reject) => {
    const c = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    c.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
    c.stderr.setEncoding('utf8').on('data', (d: string) => { out += d; });
    c.on('error', reject);
    c.on('close', (code) => {
      if (code !== 0 && !allowFail) reject(new Error(`${argv.join(' ')} failed (${code}): ${out.trim().slice(0, 500)}`));
      else resolve({ code: code ?? -1, out });
    });
  });
}

const nsx = (ns: string, argv: string[]): string[] => ['ip', 'netns', 'exec', ns, ...argv];

// ---------------------------------------------------------------- one sleeve end (child process)

async function node(): Promise<void> {
  const [name, peer, underlay, tunName, prefix, peerPrefix, tunAddr, encrypted] = process.argv.slice(process.argv.indexOf('--node') + 1);
  const log = process.env.BENCH_DEBUG ? rootLogger({ level: 'debug', destination: 2 }) : silentLogger();
  const io = loadTunIo(log);
  if (!io) throw new Error('native addon missing: node scripts/build-native.js');
  const crypto = loadCrypto('sodium', log);
  const prefixes = new PrefixTable(name, realClock, log);
  prefixes.setLocal([prefix]);
  // the peer's announcement, as gossip would have delivered it
  prefixes.mergeUpdate(new PrefixUpdate(new Map([[peer, { version: 1, prefixes: [peerPrefix] }]])));
  const routes = Object.assign(new EventEmitter(), { name, unicastNextHop: (d: string) => (d === peer ? peer : undefined) });
  const tun = new NativeTun(io, tunName);
  const udp = new NativeUdp(io, ip4ToU32(underlay)!, 6783);
  const sleeve = new Sleeve({
    name, clock: realClock, log, crypto, routes, prefixes, tun, udp,
    workers: process.env.BENCH_INLINE === '1' ? false : undefined,
    host: {
      tunUp: async (dev, mtu) => { await run(['ip', 'link', 'set', 'dev', dev, 'mtu', String(mtu), 'up']); },
      setRoutes: () => {},
    },
  });
  await sleeve.start();
  await run(['ip', 'addr', 'add', tunAddr, 'dev', tunName]);
  await run(['ip', 'route', 'add', peerPrefix, 'dev', tunName]);
  // A shared session key both ends get from the parent (a mesh handshake would derive it).
  const key = encrypted === '1' ? Buffer.from(process.env.BENCH_KEY!, 'hex') : null;
  const feat = (n: string): Features => ({ name: n, nickname: n, uid: 'u', connId: 'bench', overlays: ['sleeve'], overlayParams: { sleeve: { port: 6783 } }, trusted: false, listenPort: 6783 });
  const outbound = name < peer;
  const peerIp = process.env.BENCH_PEER_IP!;
  let handle: SleeveHandle | undefined;
  const conn: MeshConnection = {
    id: 'bench', outbound, remoteAddr: `${peerIp}:6783`, localAddr: `${underlay}:6783`, encrypted: key !== null, sessionKey: key,
    local: feat(name), remote: feat(peer),
    send: (_t, payload) => { process.stdout.write(`CTL ${Buffer.from(payload).toString('base64')}\n`); },
    close: () => {}, onMessage: () => {}, onClose: () => {},
  };
  readline.createInterface({ input: process.stdin }).on('line', (l) => {
    if (l.startsWith('CTL ')) handle?.onMessage(Buffer.from(l.slice(4), 'base64'));
    else if (l === 'STOP') {
      const cpu = process.cpuUsage();
      process.stdout.write(`STATS ${JSON.stringify({ cpuSeconds: (cpu.user + cpu.system) / 1e6, counters: sleeve.counters, mode: sleeve.mode })}\n`);
      void sleeve.close().then(() => process.exit(0));
    }
  });
  handle = sleeve.attach(conn, {
    established: () => process.stdout.write('UP\n'),
    failed: (r) => process.stdout.write(`FAILED ${r}\n`),
  });
}

// ---------------------------------------------------------------- the bench (parent)

interface Result { streams1: number; streams4: number; rttMs: number; cpuSeconds?: number }

async function iperf(serverNs: string, clientNs: string, addr: string, seconds: number, streams: number): Promise<number> {
  const srv = spawn('ip', nsx(serverNs, ['iperf3', '-s', '-1', '-B', addr]).slice(1), { stdio: 'ignore' });
  try {
    const deadline = Date.now() + 5000;
    for (;;) {
      const ss = await run(nsx(serverNs, ['ss', '-Hltn', 'sport = :5201']), true);
      if (ss.out.trim()) break;
      if (Date.now() > deadline) throw new Error('iperf3 server did not start');
      await new Promise((r) => setTimeout(r, 20));
    }
    const r = await run(nsx(clientNs, ['iperf3', '-c', addr, '-t', String(seconds), '-P', String(streams), '-J']));
    return JSON.parse(r.out).end.sum_received.bits_per_second / 1e9;
  } finally {
    srv.kill();
  }
}

async function ping(ns: string, addr: string): Promise<number> {
  const r = await run(nsx(ns, ['ping', '-c', '10', '-i', '0.05', '-q', addr]));
  if (process.env.BENCH_DEBUG_PING) console.error(r.out);
  const m = /= [\d.]+\/([\d.]+)\//.exec(r.out);
  return m ? Number(m[1]) : NaN;
}

async function measure(hA: string, hB: string, addrB: string, seconds: number): Promise<Result> {
  const rttMs = await ping(hA, addrB);
  const streams1 = await iperf(hB, hA, addrB, seconds, 1);
  const streams4 = await iperf(hB, hA, addrB, seconds, 4);
  return { streams1, streams4, rttMs };
}

function startNode(ns: string, args: string[], env: Record<string, string>): { child: ChildProcess; lines: EventEmitter } {
  const child = spawn('ip', nsx(ns, [process.execPath, __filename, '--node', ...args]).slice(1), { stdio: ['pipe', 'pipe', 'inherit'], env: { ...process.env, ...env } });
  const lines = new EventEmitter();
  readline.createInterface({ input: child.stdout! }).on('line', (l) => lines.emit('line', l));
  return { child, lines };
}

async function sleeveRun(hA: string, hB: string, id: string, encrypted: boolean, seconds: number): Promise<Result> {
  const A = '02:00:00:00:be:0a';
  const B = '02:00:00:00:be:0b';
  const env = { BENCH_KEY: randomBytes(32).toString('hex') };
  const a = startNode(hA, [A, B, '198.18.0.1', `wbt${id}a`, '10.32.1.0/24', '10.32.2.0/24', '10.32.1.1/24', encrypted ? '1' : '0'], { ...env, BENCH_PEER_IP: '198.18.0.2' });
  const b = startNode(hB, [B, A, '198.18.0.2', `wbt${id}b`, '10.32.2.0/24', '10.32.1.0/24', '10.32.2.1/24', encrypted ? '1' : '0'], { ...env, BENCH_PEER_IP: '198.18.0.1' });
  try {
    let up = 0;
    const upOrFail = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('sleeve not established within 15 s')), 15_000);
      for (const [self, other] of [[a, b], [b, a]] as const) {
        self.lines.on('line', (l: string) => {
          if (l.startsWith('CTL ')) other.child.stdin!.write(`${l}\n`);
          else if (l === 'UP' && ++up === 2) { clearTimeout(timer); resolve(); }
          else if (l.startsWith('FAILED')) { clearTimeout(timer); reject(new Error(l)); }
        });
      }
    });
    await upOrFail;
    const r = await measure(hA, hB, '10.32.2.1', seconds);
    const stats = await Promise.all([a, b].map((n) => new Promise<{ cpuSeconds: number }>((resolve) => {
      n.lines.on('line', (l: string) => { if (l.startsWith('STATS ')) resolve(JSON.parse(l.slice(6))); });
      n.child.stdin!.write('STOP\n');
    })));
    return { ...r, cpuSeconds: stats[0].cpuSeconds + stats[1].cpuSeconds };
  } finally {
    for (const n of [a, b]) if (n.child.exitCode === null) n.child.kill();
  }
}

async function bench(): Promise<void> {
  const seconds = Number(arg('seconds', '5'));
  const only = new Set(arg('only', 'a,b,c,d').split(','));
  const id = randomBytes(3).toString('hex');
  const hA = `wbA-${id}`;
  const hB = `wbB-${id}`;
  const results: Record<string, Result> = {};
  try {
    await run(['ip', 'netns', 'add', hA]);
    await run(['ip', 'netns', 'add', hB]);
    await run(['ip', 'link', 'add', `wbv${id}a`, 'netns', hA, 'type', 'veth', 'peer', 'name', `wbv${id}b`, 'netns', hB]);
    for (const [ns, dev, addr] of [[hA, `wbv${id}a`, '198.18.0.1/24'], [hB, `wbv${id}b`, '198.18.0.2/24']]) {
      await run(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
      await run(['ip', '-n', ns, 'addr', 'add', addr, 'dev', dev]);
      await run(['ip', '-n', ns, 'link', 'set', dev, 'up']);
    }
    if (only.has('a')) results.a = await measure(hA, hB, '198.18.0.2', seconds);
    if (only.has('b')) {
      for (const [ns, dev, local, remote, addr] of [[hA, `wbv${id}a`, '198.18.0.1', '198.18.0.2', '10.40.0.1/24'], [hB, `wbv${id}b`, '198.18.0.2', '198.18.0.1', '10.40.0.2/24']]) {
        await run(['ip', '-n', ns, 'link', 'add', 'wbvx', 'type', 'vxlan', 'id', '42', 'dstport', '4789', 'local', local, 'remote', remote, 'dev', dev]);
        await run(['ip', '-n', ns, 'addr', 'add', addr, 'dev', 'wbvx']);
        await run(['ip', '-n', ns, 'link', 'set', 'wbvx', 'up']);
      }
      results.b = await measure(hA, hB, '10.40.0.2', seconds);
    }
    if (only.has('c')) results.c = await sleeveRun(hA, hB, id, false, seconds);
    if (only.has('d')) results.d = await sleeveRun(hA, hB, id, true, seconds);
  } finally {
    await run(['ip', 'netns', 'del', hA], true);
    await run(['ip', 'netns', 'del', hB], true);
  }
  const label: Record<string, string> = { a: 'bare veth', b: 'kernel VXLAN', c: 'sleeve, unencrypted', d: 'sleeve, encrypted' };
  console.log('path                    1 stream Gbit/s  4 streams Gbit/s  ping ms  router CPU s');
  for (const k of Object.keys(results)) {
    const r = results[k];
    console.log(`(${k}) ${label[k].padEnd(20)} ${r.streams1.toFixed(3).padStart(15)} ${r.streams4.toFixed(3).padStart(17)} ${r.rttMs.toFixed(3).padStart(8)} ${r.cpuSeconds === undefined ? '           -' : r.cpuSeconds.toFixed(1).padStart(12)}`);
  }
  const ratios: Record<string, number> = {};
  if (results.b) {
    for (const k of ['c', 'd']) {
      if (!results[k]) continue;
      ratios[`${k}/b 1 stream`] = results[k].streams1 / results.b.streams1;
      ratios[`${k}/b 4 streams`] = results[k].streams4 / results.b.streams4;
    }
  }
  for (const [k, v] of Object.entries(ratios)) console.log(`${k}: ${v.toFixed(3)}`);
  console.log(JSON.stringify({ bench: 'sleeve', seconds, results, ratios }));
}

if (process.argv.includes('--node')) {
  node().catch((e) => {
    process.stdout.write(`FAILED ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
} else {
  bench().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
