// bench/cni: ADD and DEL latency of the weave-net plugin against Debian's bridge + host-local (the
// reference plugins: bridge creates the veth and calls host-local for the address), in one run, on
// one lab host (a network namespace with a running router, consensus=1), each plugin started the way
// a runtime starts it (a new process with the CNI environment and the configuration on stdin,
// entered into the host's namespace with nsenter --net, the same for both).
//   serial:     --pods pods, one after another, bridge and weave-net alternating pod by pod;
//   concurrent: --concurrent pods at once (as a node starting a ReplicaSet), bridge then weave-net.
// p50/p99 per plugin and the ratio weave/bridge (goal: ADD p50 <= 2x and under 100 ms). For the
// choice of a C shim, the same run also times Node's own start-up (`node -e 0`) and the shim's
// VERSION (no router involved). Prints a table, then a JSON summary last.
// Usage: node dist/bench/cni.js [--pods 50] [--concurrent 20] [--strict]
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Lab, type Host } from '../test/lab/lab';
import { run } from '../test/lab/exec';
import { installCni, pluginConf, type CniInstall } from '../test/lab/cni';

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
}

interface Call { ms: number; code: number | null; out: string }

/** One plugin process as a runtime starts it; the time is the process's whole life as seen by us. */
async function plugin(host: Host, bin: string, env: Record<string, string>, stdin: string): Promise<Call> {
  const t0 = process.hrtime.bigint();
  const r = await run(['nsenter', `--net=/var/run/netns/${host.ns}`, bin], { env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', ...env }, input: stdin, allowFail: true, timeoutMs: 120_000 });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.code !== 0) throw new Error(`${path.basename(bin)} ${env.CNI_COMMAND} failed (${r.code}): ${r.stdout}${r.stderr}`);
  return { ms, code: r.code, out: r.stdout };
}

interface Stats { p50: number; p99: number; mean: number; n: number }

function stats(xs: number[]): Stats {
  const s = xs.slice().sort((a, b) => a - b);
  const at = (q: number): number => s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)];
  return { p50: at(0.5), p99: at(0.99), mean: s.reduce((a, b) => a + b, 0) / s.length, n: s.length };
}

interface Side { name: string; bin: string; conf: string }

async function main(): Promise<void> {
  const pods = arg('pods', 50);
  const conc = arg('concurrent', 20);
  const strict = process.argv.includes('--strict');
  const lab = await Lab.create();
  try {
    const h = await lab.addHost('h1');
    h.startRouter(['--nickname', 'h1', '--ipalloc-init', 'consensus=1', '--log-level', 'warn']);
    await h.waitReady();
    const cni: CniInstall = await installCni(h);
    const bridge: Side = {
      name: 'bridge+host-local',
      bin: path.join(cni.binDir, 'bridge'),
      conf: JSON.stringify({
        cniVersion: '1.0.0', name: 'bench-bridge', type: 'bridge', bridge: 'cnibench0', isGateway: true, ipMasq: false,
        ipam: { type: 'host-local', ranges: [[{ subnet: '10.250.0.0/16' }]], dataDir: path.join(lab.tmp, 'host-local') },
      }),
    };
    const weave: Side = { name: 'weave-net', bin: path.join(cni.binDir, 'weave-net'), conf: pluginConf(cni) };
    const n = Math.max(pods, conc);
    const ns: Record<string, string[]> = { [bridge.name]: [], [weave.name]: [] };
    for (const side of [bridge, weave]) {
      for (let i = 0; i < n; i++) ns[side.name].push((await lab.addContainer(`${side === bridge ? 'b' : 'w'}${i}`)).ns);
    }
    const env = (side: Side, i: number, cmd: string): Record<string, string> => ({
      CNI_COMMAND: cmd, CNI_CONTAINERID: `bench-${i}`, CNI_NETNS: `/var/run/netns/${ns[side.name][i]}`, CNI_IFNAME: 'eth0',
      CNI_PATH: cni.binDir, CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod-${i}`,
    });
    // warm both (page cache, the router's first allocation seeds the ring), then remove
    for (const side of [bridge, weave]) {
      await plugin(h, side.bin, env(side, 0, 'ADD'), side.conf);
      await plugin(h, side.bin, env(side, 0, 'DEL'), side.conf);
    }

    const t: Record<string, Record<string, number[]>> = {};
    const rec = (side: Side, what: string, ms: number): void => {
      ((t[what] ??= {})[side.name] ??= []).push(ms);
    };
    // serial, alternating pod by pod (the order flips each pod so neither always goes first)
    for (let i = 0; i < pods; i++) {
      for (const side of i % 2 ? [weave, bridge] : [bridge, weave]) rec(side, 'ADD serial', (await plugin(h, side.bin, env(side, i, 'ADD'), side.conf)).ms);
    }
    for (let i = 0; i < pods; i++) {
      for (const side of i % 2 ? [weave, bridge] : [bridge, weave]) rec(side, 'DEL serial', (await plugin(h, side.bin, env(side, i, 'DEL'), side.conf)).ms);
    }
    const wall: Record<string, number> = {};
    for (const cmd of ['ADD', 'DEL']) {
      for (const side of [bridge, weave]) {
        const t0 = Date.now();
        const calls = await Promise.all(Array.from({ length: conc }, (_, i) => plugin(h, side.bin, env(side, i, cmd), side.conf)));
        wall[`${cmd} ${side.name}`] = Date.now() - t0;
        for (const c of calls) rec(side, `${cmd} ${conc} at once`, c.ms);
      }
    }
    // what the shim saves: Node's own start-up against the shim's, same run
    const startNode: number[] = [];
    const startShim: number[] = [];
    for (let i = 0; i < 10; i++) {
      let t0 = process.hrtime.bigint();
      await run([process.execPath, '-e', '0']);
      startNode.push(Number(process.hrtime.bigint() - t0) / 1e6);
      t0 = process.hrtime.bigint();
      await run([weave.bin], { env: { CNI_COMMAND: 'VERSION' }, input: '' });
      startShim.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }

    const rows = Object.keys(t).map((what) => {
      const b = stats(t[what][bridge.name]);
      const w = stats(t[what][weave.name]);
      return { what, bridge: b, weave: w, ratioP50: w.p50 / b.p50, ratioP99: w.p99 / b.p99 };
    });
    const f = (s: Stats): string => `${s.p50.toFixed(1).padStart(6)} / ${s.p99.toFixed(1).padStart(6)}`;
    console.log(`bench/cni: ${pods} pods serial, ${conc} at once; one lab host; load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')} on ${os.cpus().length} CPUs`);
    console.log(`${'ms, p50 / p99'.padEnd(18)} ${'bridge+host-local'.padStart(17)} ${'weave-net'.padStart(17)}   ratio p50  ratio p99`);
    for (const r of rows) console.log(`${r.what.padEnd(18)} ${f(r.bridge).padStart(17)} ${f(r.weave).padStart(17)}   ${r.ratioP50.toFixed(2).padStart(8)}x  ${r.ratioP99.toFixed(2).padStart(8)}x`);
    console.log(`wall time for ${conc} at once: ${Object.entries(wall).map(([k, v]) => `${k} ${v} ms`).join(', ')}`);
    const sn = stats(startNode);
    const ss = stats(startShim);
    console.log(`process start-up, p50: node -e 0 ${sn.p50.toFixed(1)} ms; weave-net VERSION (the shim alone) ${ss.p50.toFixed(1)} ms`);
    const add = rows.find((r) => r.what === 'ADD serial')!;
    const ok = add.ratioP50 <= 2 && add.weave.p50 < 100;
    console.log(`goal: ADD p50 <= 2x bridge+host-local and < 100 ms: ${ok ? 'met' : 'MISSED'} (${add.ratioP50.toFixed(2)}x, ${add.weave.p50.toFixed(1)} ms)`);
    console.log(JSON.stringify({ bench: 'cni', pods, concurrent: conc, rows, wall, start: { node: sn, shim: ss }, load: os.loadavg(), goalMet: ok }));
    if (strict && !ok) process.exitCode = 1;
    fs.rmSync(path.join(lab.tmp, 'host-local'), { recursive: true, force: true });
  } finally {
    await lab.cleanup();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
