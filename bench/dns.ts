// bench/dns: dnsperf against weave.ts DNS and against dnsmasq serving the same names from a hosts
// file, same run, both on 127.0.0.1 high ports. Two passes per server:
//   throughput: dnsperf -l SECONDS with 100 queries outstanding → queries/s
//   latency:    dnsperf -v at a fixed rate (-Q RATE) → p50/p99 from the per-query latencies
// (under saturation latency is only queueing delay, so it is measured below saturation.)
// Prints a JSON summary last. Usage: node dist/bench/dns.js [--seconds 5] [--names 1000] [--rate 2000] [--rounds 2]
import { spawn } from 'child_process';
import * as dgram from 'dgram';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { realClock } from '../lib/clock';
import { silentLogger } from '../lib/log';
import { DnsStore } from '../dns/records';
import { DnsServer } from '../dns/server';

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
}

/** Runs a command with its output going to a file, not a pipe: reading a pipe would put work on the
 * event loop that also serves the weave.ts DNS server under test. */
function run(cmd: string, args: string[], outFile?: string): Promise<{ code: number; out: string }> {
  return new Promise((resolve, reject) => {
    const file = outFile ?? path.join(os.tmpdir(), `weave-bench-dns-${process.pid}.out`);
    const fd = fs.openSync(file, 'w');
    const c = spawn(cmd, args, { stdio: ['ignore', fd, fd] });
    c.on('error', (e) => {
      fs.closeSync(fd);
      reject(e);
    });
    c.on('close', (code) => {
      fs.closeSync(fd);
      const out = fs.readFileSync(file, 'utf8');
      fs.rmSync(file, { force: true });
      resolve({ code: code ?? -1, out });
    });
  });
}

async function freeUdpPort(): Promise<number> {
  const s = dgram.createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
  const p = s.address().port;
  await new Promise<void>((r) => s.close(() => r()));
  return p;
}

async function waitAnswering(port: number, name: string): Promise<void> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const r = await run('dig', ['@127.0.0.1', '-p', String(port), name, '+short', '+tries=1', '+time=1']);
    if (r.code === 0 && r.out.trim()) return;
    if (Date.now() > deadline) throw new Error(`server on ${port} not answering: ${r.out}`);
    await new Promise((res) => setTimeout(res, 100));
  }
}

interface Result { qps: number; lost: number; p50ms: number; p99ms: number; avgMs: number }

async function measure(port: number, queryFile: string, seconds: number, rate: number): Promise<Result> {
  const t = await run('dnsperf', ['-s', '127.0.0.1', '-p', String(port), '-d', queryFile, '-l', String(seconds), '-q', '100', '-t', '2']);
  const qps = Number(/Queries per second:\s+([\d.]+)/.exec(t.out)?.[1]);
  const lost = Number(/Queries lost:\s+(\d+)/.exec(t.out)?.[1]);
  if (!Number.isFinite(qps)) throw new Error(`dnsperf output not understood:\n${t.out}`);
  const l = await run('dnsperf', ['-s', '127.0.0.1', '-p', String(port), '-d', queryFile, '-l', String(Math.max(2, Math.ceil(seconds / 2))), '-Q', String(rate), '-v', '-t', '2']);
  const lat: number[] = [];
  for (const m of l.out.matchAll(/^> \S+ \S+ \S+ ([\d.]+)$/gm)) lat.push(Number(m[1]) * 1000);
  if (lat.length === 0) throw new Error(`dnsperf -v gave no latencies:\n${l.out.slice(0, 2000)}`);
  lat.sort((a, b) => a - b);
  const pct = (q: number): number => lat[Math.min(lat.length - 1, Math.floor(q * lat.length))];
  const avgMs = lat.reduce((a, b) => a + b, 0) / lat.length;
  return { qps, lost, p50ms: pct(0.5), p99ms: pct(0.99), avgMs };
}

async function main(): Promise<void> {
  const seconds = arg('seconds', 5);
  const nNames = arg('names', 1000);
  const rate = arg('rate', 2000);
  const rounds = Math.max(1, arg('rounds', 2));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'weave-bench-dns-'));
  fs.chmodSync(dir, 0o755); // dnsmasq reads the hosts file after dropping to user nobody
  const hosts: string[] = [];
  const queries: string[] = [];
  const store = new DnsStore({ self: '02:00:00:00:be:01', clock: realClock, log: silentLogger() });
  for (let i = 0; i < nNames; i++) {
    const addr = `10.32.${(i >> 8) & 255}.${(i & 255) + 1 > 254 ? 254 : (i & 255) + 1}`;
    const name = `host-${i}.weave.local`;
    store.add(name, addr);
    hosts.push(`${addr} ${name}`);
    queries.push(`${name} A`);
  }
  const hostsFile = path.join(dir, 'hosts');
  const queryFile = path.join(dir, 'queries');
  fs.writeFileSync(hostsFile, hosts.join('\n') + '\n');
  fs.writeFileSync(queryFile, queries.join('\n') + '\n');

  const server = new DnsServer({ listenAddress: '127.0.0.1', port: 0, upstream: () => [], store, clock: realClock, log: silentLogger() });
  await server.start();
  const dmPort = await freeUdpPort();
  const dm = spawn('dnsmasq', [
    '--keep-in-foreground', '--conf-file=/dev/null', '--no-resolv', '--no-hosts', `--addn-hosts=${hostsFile}`,
    '--listen-address=127.0.0.1', '--bind-interfaces', `--port=${dmPort}`, `--pid-file=${path.join(dir, 'pid')}`,
    '--local=/weave.local/', '--local-ttl=1', '--cache-size=10000',
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  let dmErr = '';
  dm.stderr.on('data', (d: Buffer) => (dmErr += d.toString()));
  try {
    await waitAnswering(server.port, 'host-0.weave.local');
    await waitAnswering(dmPort, 'host-0.weave.local').catch((e: Error) => {
      throw new Error(`${e.message}\ndnsmasq: ${dmErr}`);
    });
    // alternate the servers round by round so neither always runs on a quieter machine; report medians
    const dnsmasqRuns: Result[] = [];
    const weaveRuns: Result[] = [];
    for (let r = 0; r < rounds; r++) {
      dnsmasqRuns.push(await measure(dmPort, queryFile, seconds, rate));
      weaveRuns.push(await measure(server.port, queryFile, seconds, rate));
    }
    const med = (xs: number[]): number => xs.slice().sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
    const summary = (runs: Result[]): Result => ({
      qps: med(runs.map((x) => x.qps)), lost: runs.reduce((a, x) => a + x.lost, 0),
      p50ms: med(runs.map((x) => x.p50ms)), p99ms: med(runs.map((x) => x.p99ms)), avgMs: med(runs.map((x) => x.avgMs)),
    });
    const dnsmasq = summary(dnsmasqRuns);
    const weave = summary(weaveRuns);
    const ratio = weave.qps / dnsmasq.qps;
    const f = (r: Result): string => `${r.qps.toFixed(0).padStart(8)} q/s  lost ${r.lost}  p50 ${r.p50ms.toFixed(3)} ms  p99 ${r.p99ms.toFixed(3)} ms`;
    console.log(`names: ${nNames}; throughput: dnsperf -q 100 for ${seconds} s; latency: dnsperf -Q ${rate}; ${rounds} rounds, medians; loopback; load average ${os.loadavg()[0].toFixed(1)} on ${os.cpus().length} CPUs`);
    for (let r = 0; r < rounds; r++) console.log(`  round ${r + 1}: dnsmasq ${f(dnsmasqRuns[r])} | weave.ts ${f(weaveRuns[r])}`);
    console.log(`dnsmasq   ${f(dnsmasq)}`);
    console.log(`weave.ts  ${f(weave)}`);
    console.log(`ratio weave/dnsmasq: ${ratio.toFixed(2)}x (goal >= 0.5x), weave p99 ${weave.p99ms.toFixed(3)} ms (goal < 2 ms)`);
    console.log(JSON.stringify({ bench: 'dns', names: nNames, seconds, rate, rounds, weave, dnsmasq, ratio, weaveRuns, dnsmasqRuns, counters: server.counters }));
  } finally {
    dm.kill('SIGTERM');
    await server.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
