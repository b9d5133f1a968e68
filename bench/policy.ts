// bench/policy: the NetworkPolicy controller at scale and its cost on the data path, in one run.
//   programming: --pods pods (default 1000) in --namespaces namespaces and --policies policies (200) in
//     the fixture API; `weave npc` on a lab host whose node holds --local pods of them (250). Times:
//     from scratch (the first full build: compile + one nft transaction, as the npc reports it, and
//     the wall time from start to programmed), one policy change, one pod label change (each: the
//     npc's apply time and the wall time from the API write until its status shows the apply). Size:
//     nft rules and set/map elements in the table.
//   throughput: iperf3 (TCP, --seconds each) between two CNI pods on one host, alternating rounds
//     without the table and with the same 1000 pods + 200 policies in force (both pods selected and
//     allowed), so the ratio is measured in the same run (goal >= 0.9).
// Goals: from scratch < 2 s, one change < 100 ms. Prints a table, then a JSON summary last.
// Usage: node dist/bench/policy.js [--pods 1000] [--policies 200] [--local 250] [--rounds 3] [--seconds 5]
import * as os from 'os';
import { Lab, type Host } from '../test/lab/lab';
import { waitFor } from '../test/lab/exec';
import { FixtureApi, npcStatus, startNpc, type NpcProcess } from '../test/lab/netpol-api';
import { addPod } from '../test/lab/netpol-lab';
import { callPlugin, installCni, pluginConf } from '../test/lab/cni';
import { namespaceObject, podObject, policyObject, type TPod } from '../test/lab/netpol-truth';

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
}

const TIERS = ['web', 'api', 'db', 'cache'];

/** A deterministic cluster: pods with app/tier labels and named ports, policies of every kind. */
export function generate(nPods: number, nNs: number, nPol: number, node: string, nLocal: number, extra: TPod[] = []): { objects: any[]; pods: TPod[] } {
  const nss = Array.from({ length: nNs }, (_, i) => ({ name: `ns${i}`, labels: { team: `t${i % 5}`, env: i % 2 ? 'prod' : 'dev' } }));
  const pods: TPod[] = [];
  for (let i = 0; i < nPods; i++) {
    pods.push({
      ns: `ns${i % nNs}`, name: `p${i}`, labels: { app: `app${i % 10}`, tier: TIERS[i % TIERS.length] },
      ip: `10.${40 + (i >> 16)}.${(i >> 8) & 255}.${(i & 255) || 1}`, node: i < nLocal ? node : `other${i % 7}`,
      ports: [{ name: 'http', port: 8080, protocol: 'TCP' }, { name: 'metrics', port: 9100, protocol: 'TCP' }, { name: 'dns', port: 53, protocol: 'UDP' }],
    });
  }
  pods.push(...extra);
  const pols: any[] = [];
  for (let i = 0; i < nPol; i++) {
    const ns = `ns${i % nNs}`;
    const sel = { matchLabels: { app: `app${i % 10}` } };
    switch (i % 5) {
      case 0: pols.push(policyObject(ns, `pol${i}`, { podSelector: sel, ingress: [{ from: [{ podSelector: { matchLabels: { tier: TIERS[i % 4] } } }], ports: [{ port: 8080 }] }] })); break;
      case 1: pols.push(policyObject(ns, `pol${i}`, { podSelector: sel, ingress: [{ from: [{ namespaceSelector: { matchLabels: { team: `t${i % 5}` } }, podSelector: { matchExpressions: [{ key: 'tier', operator: 'In', values: ['web', 'api'] }] } }], ports: [{ port: 'http' }, { port: 'metrics' }] }] })); break;
      case 2: pols.push(policyObject(ns, `pol${i}`, { podSelector: sel, policyTypes: ['Egress'], egress: [{ to: [{ namespaceSelector: { matchLabels: { env: 'prod' } } }], ports: [{ port: 53, protocol: 'UDP' }, { port: 8000, endPort: 8100 }] }] })); break;
      case 3: pols.push(policyObject(ns, `pol${i}`, { podSelector: { matchExpressions: [{ key: 'tier', operator: 'NotIn', values: ['db'] }] }, ingress: [{ from: [{ ipBlock: { cidr: '10.32.0.0/12', except: [`10.32.${i % 256}.0/24`] } }] }] })); break;
      default: pols.push(policyObject(ns, `pol${i}`, { podSelector: {}, policyTypes: ['Ingress', 'Egress'], ingress: [{ from: [{ podSelector: {} }] }], egress: [{ to: [{ namespaceSelector: {} }] }] }));
    }
  }
  return { objects: [...nss.map(namespaceObject), ...pods.map(podObject), ...pols], pods };
}

async function tableSize(host: Host): Promise<{ rules: number; elements: number; sets: number; chains: number }> {
  const j = JSON.parse((await host.exec(['nft', '-j', 'list', 'table', 'inet', 'weave-npc'])).stdout).nftables as any[];
  let elements = 0;
  for (const o of j) if (o.set) elements += (o.set.elem ?? []).length; else if (o.map) elements += (o.map.elem ?? []).length;
  return { rules: j.filter((o) => o.rule).length, elements, sets: j.filter((o) => o.set || o.map).length, chains: j.filter((o) => o.chain).length };
}

async function applied(host: Host, after: number): Promise<any> {
  return waitFor('npc applied', async () => { const s = await npcStatus(host).catch(() => undefined); return s && s.synced && s.apply.applies > after ? s : undefined; }, { timeoutMs: 60_000, intervalMs: 100 });
}

async function iperf(client: { exec: (a: string[], o?: any) => Promise<{ stdout: string }> }, ip: string, seconds: number): Promise<number> {
  const r = await client.exec(['iperf3', '-c', ip, '-t', String(seconds), '-J'], { timeoutMs: (seconds + 20) * 1000 });
  return JSON.parse(r.stdout).end.sum_received.bits_per_second / 1e9;
}

async function main(): Promise<void> {
  const nPods = arg('pods', 1000);
  const nPol = arg('policies', 200);
  const nLocal = arg('local', 250);
  const nNs = arg('namespaces', 20);
  const rounds = arg('rounds', 3);
  const seconds = arg('seconds', 5);
  const lab = await Lab.create();
  let npc: NpcProcess | undefined;
  let api: FixtureApi | undefined;
  try {
    const h = await lab.addHost('h1');
    h.startRouter(['--nickname', 'h1', '--ipalloc-init', 'consensus=1']);
    await h.waitReady(30_000);
    const cni = await installCni(h);
    await waitFor('IPAM ring', async () => (await callPlugin(h, cni, { CNI_COMMAND: 'STATUS' }, pluginConf(cni, { cniVersion: '1.1.0' }))).code === 0, { timeoutMs: 30_000 });
    const client = await addPod(lab, h, cni, 'ns0', 'client');
    const server = await addPod(lab, h, cni, 'ns1', 'server');
    const extra: TPod[] = [
      { ns: 'ns0', name: 'client', labels: { app: 'app0', tier: 'web' }, ip: client.ip, node: h.name, ports: [] },
      { ns: 'ns1', name: 'server', labels: { app: 'app1', tier: 'api' }, ip: server.ip, node: h.name, ports: [{ name: 'iperf', port: 5201, protocol: 'TCP' }] },
    ];
    const { objects } = generate(nPods, nNs, nPol, h.name, nLocal, extra);
    // both iperf pods are selected by several policies; this one allows the client to the server
    objects.push(policyObject('ns1', 'iperf-in', { podSelector: { matchLabels: { app: 'app1' } }, ingress: [{ from: [{ namespaceSelector: { matchLabels: { team: 't0' } } }], ports: [{ port: 'iperf' }] }] }));
    objects.push(policyObject('ns0', 'iperf-out', { podSelector: { matchLabels: { app: 'app0' } }, policyTypes: ['Egress'], egress: [{ to: [{ namespaceSelector: {}, podSelector: { matchLabels: { tier: 'api' } } }] }] }));
    api = await FixtureApi.start(lab, h);
    const t0 = Date.now();
    await api.sync(objects, ['namespaces', 'pods', 'networkpolicies']);
    const loadMs = Date.now() - t0;

    const t1 = Date.now();
    npc = startNpc(h, api);
    const s0 = await applied(h, 0);
    const scratchWall = Date.now() - t1;
    const scratch = { ms: s0.apply.lastMs, cpu: s0.apply.lastCpuMs, lines: s0.apply.lastLines, wall: scratchWall };
    const size = await tableSize(h);

    const changePol = objects.find((o) => o.kind === 'NetworkPolicy' && o.metadata.name === 'pol0');
    const changes: Array<{ what: string; ms: number; cpu: number; lines: number; wall: number }> = [];
    const relabel = objects.find((o) => o.kind === 'Pod' && o.metadata.name === 'p3');
    const steps: Array<[string, () => void]> = [];
    // each kind of change five times: on a shared machine one sample says little
    for (let i = 0; i < 5; i++) {
      steps.push(['one policy changed', () => { changePol.spec.ingress[0].ports[0].port = i % 2 ? 8080 : 8081; }]);
      steps.push(['one pod relabelled', () => { relabel.metadata.labels.tier = i % 2 ? 'db' : 'web'; }]);
    }
    steps.push(['one policy deleted', () => { objects.splice(objects.indexOf(changePol), 1); }]);
    for (const [what, mutate] of steps) {
      const before = (await npcStatus(h)).apply.applies;
      mutate();
      const tw = Date.now();
      await api.sync(objects, ['pods', 'networkpolicies']);
      const s = await applied(h, before);
      changes.push({ what, ms: s.apply.lastMs, cpu: s.apply.lastCpuMs, lines: s.apply.lastLines, wall: Date.now() - tw });
    }

    // throughput: the same two pods, without the table (npc stopped, table removed) and with it
    // the server lives in the pod's namespace: the lab's cleanup ends it
    void server.container.exec(['iperf3', '-s'], { timeoutMs: 3_600_000, allowFail: true });
    await waitFor('iperf3 server', async () => (await server.container.exec(['ss', '-ltn'])).stdout.includes(':5201'), { timeoutMs: 10_000 });
    const rows: Array<{ none: number; policies: number }> = [];
    const script = `add table inet weave-npc\ndelete table inet weave-npc\n${(await h.exec(['nft', 'list', 'table', 'inet', 'weave-npc'])).stdout}`;
    npc.child.kill('SIGKILL');
    // alternating, and which goes first alternates too: the load of a shared machine drifts
    for (let r = 0; r < rounds; r++) {
      const row = { none: 0, policies: 0 };
      for (const side of r % 2 ? ['policies', 'none'] as const : ['none', 'policies'] as const) {
        if (side === 'none') await h.exec(['nft', 'delete', 'table', 'inet', 'weave-npc'], { allowFail: true });
        else await h.exec(['nft', '-f', '-'], { input: script });
        row[side] = await iperf(client.container, server.ip, seconds);
      }
      rows.push(row);
    }
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    // the median of per-round ratios: each round's two runs saw about the same load
    const ratios = rows.map((r) => r.policies / r.none).sort((a, b) => a - b);
    const ratio = ratios[ratios.length >> 1];

    console.log(`pods ${nPods + 2} (${nLocal + 2} on this node), namespaces ${nNs}, policies ${nPol + 2}; API loaded in ${loadMs} ms`);
    console.log(`table: ${size.rules} rules, ${size.elements} set and map elements in ${size.sets} sets/maps, ${size.chains} chains`);
    console.log(`load average ${os.loadavg()[0].toFixed(1)} on ${os.cpus().length} CPUs (wall times stretch with it; the npc's CPU time does not)`);
    console.log('| what | npc apply (compile + nft) ms | npc CPU ms (compile + plan) | nft lines | wall ms (API write or start -> status shows it) |');
    console.log('|---|---|---|---|---|');
    console.log(`| from scratch | ${scratch.ms.toFixed(1)} | ${scratch.cpu.toFixed(1)} | ${scratch.lines} | ${scratch.wall} |`);
    const kinds = [...new Set(changes.map((c) => c.what))];
    const med = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s[s.length >> 1]; };
    for (const k of kinds) {
      const cs = changes.filter((c) => c.what === k);
      console.log(`| ${k} (x${cs.length}: median, max) | ${med(cs.map((c) => c.ms)).toFixed(1)}, ${Math.max(...cs.map((c) => c.ms)).toFixed(1)} | ${med(cs.map((c) => c.cpu)).toFixed(1)}, ${Math.max(...cs.map((c) => c.cpu)).toFixed(1)} | ${cs[0].lines} | ${med(cs.map((c) => c.wall))}, ${Math.max(...cs.map((c) => c.wall))} |`);
    }
    console.log('| iperf3 round | no table Gbit/s | 200 policies Gbit/s |');
    console.log('|---|---|---|');
    rows.forEach((r, i) => console.log(`| ${i + 1} | ${r.none.toFixed(2)} | ${r.policies.toFixed(2)} |`));
    console.log(`throughput ratio with policies / without (median of rounds): ${ratio.toFixed(3)}; means ${mean(rows.map((r) => r.policies)).toFixed(2)} / ${mean(rows.map((r) => r.none)).toFixed(2)} Gbit/s`);
    console.log(JSON.stringify({ pods: nPods + 2, policies: nPol + 2, local: nLocal + 2, table: size, scratch, changes, iperf: rows, ratio }));
  } finally {
    npc?.child.kill('SIGKILL');
    api?.stop();
    await lab.cleanup();
  }
}

if (require.main === module) main().catch((e) => { console.error(e); process.exit(1); });
