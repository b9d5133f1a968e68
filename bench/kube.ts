// bench/kube: how fast `weave router --kube` is ready and how much it asks of the API server.
//
// Each round is a fresh lab: N real nodes (lab hosts) whose Node objects are in the fixture API server
// (test/lab/apiserver.ts, a process in the underlay namespace that every host reaches), and their
// routers started together as a DaemonSet's pods start. Time is from the router's spawn (node's own
// start-up included) to ready, as a readiness poller in the host's namespace sees it:
//   kube:     `weave router --kube` (peers from the Nodes, IPAM consensus over the node count, CNI
//             installed into the host's dirs), ready = GET /ready 200 (the DaemonSet's readiness probe);
//   baseline: `weave router --ipalloc-init consensus=N PEER...` with the other hosts' addresses on the
//             command line, ready = POST /prime 200 (the ring exists): the same mesh and IPAM work
//             without the API server. Rounds alternate kube and baseline; the ratio is of medians.
//   Measured twice per round: every router at once (a cold cluster; on this 2-core machine the
//   routers compete for the CPU, which a real node's router does not), then one router stopped
//   (SIGTERM) and started again in the running cluster (the figure a node sees: rolling update).
// Then, in the last kube round's cluster:
//   steady:   API requests per minute per router over --window s, by verb (goal: no list calls);
//   200:      197 more Node objects (addresses nobody answers: nodes whose routers are not simulated
//             here, the ring has no consensus to wait for once it exists), then a router restarted
//             and a new real node joined: start to ready, and the steady state again.
// Goal: ready in under 3 s. Prints a table, then a JSON summary last.
// Usage: node dist/bench/kube.js [--nodes 3] [--rounds 3] [--window 30] [--big 200]
import * as path from 'path';
import { Lab, type Host } from '../test/lab/lab';
import { waitFor } from '../test/lab/exec';
import { ClusterApi, startPoller, type LoggedRequest } from '../test/lab/kube-api';

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
}

type Mode = 'kube' | 'baseline';

interface Cluster { lab: Lab; api: ClusterApi; hosts: Host[] }

function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : NaN;
}

function routerArgs(c: Cluster, h: Host, mode: Mode): { args: string[]; env: Record<string, string> } {
  if (mode === 'baseline') {
    return { args: ['--nickname', h.name, '--ipalloc-init', `consensus=${c.hosts.length}`, '--log-level', 'warn', ...c.hosts.filter((x) => x !== h).map((x) => x.ip)], env: {} };
  }
  const cni = path.join(c.lab.tmp, `cni-${h.name}`);
  return {
    args: ['--kube', '--nickname', h.name, '--log-level', 'warn', '--kube-cni-bin-dir', path.join(cni, 'bin'), '--kube-cni-conf-dir', path.join(cni, 'net.d')],
    env: { NODE_NAME: h.name, KUBECONFIG: c.api.kubeconfig },
  };
}

/** Starts the routers of `hosts` together; ms from spawn to ready for each. */
async function startRouters(c: Cluster, hosts: Host[], mode: Mode): Promise<number[]> {
  const pollers = await Promise.all(hosts.map((h) => startPoller(h, mode === 'kube' ? 'ready' : 'prime')));
  const t0 = Date.now();
  for (const h of hosts) {
    const { args, env } = routerArgs(c, h, mode);
    h.startRouter(args, env);
  }
  try {
    const exited = hosts.map((h) => h.routers.at(-1)!.exited.then((code) => { throw new Error(`the router in ${h.name} exited (${code}): ${h.routers.at(-1)!.output().slice(-1500)}`); }));
    const ready = await Promise.race([
      Promise.all(pollers.map((p) => p.ready)),
      ...exited,
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${mode} routers not ready in 60 s: ${hosts.map((h) => h.routers.at(-1)?.output().slice(-600)).join('\n---\n')}`)), 60_000)),
    ]);
    return ready.map((t) => t - t0);
  } finally {
    for (const p of pollers) p.kill();
  }
}

async function stopRouter(h: Host): Promise<void> {
  const r = h.routers.at(-1);
  if (!r || r.child.exitCode !== null) return;
  r.child.kill('SIGTERM');
  await Promise.race([r.exited, new Promise((res) => setTimeout(res, 20_000))]);
}

async function newCluster(nodes: number, withApi: boolean): Promise<Cluster> {
  const lab = await Lab.create();
  try {
    const hosts: Host[] = [];
    for (let i = 1; i <= nodes; i++) hosts.push(await lab.addHost(`node${i}`));
    const api = withApi ? await ClusterApi.start(lab) : (undefined as unknown as ClusterApi);
    if (withApi) for (const h of hosts) await api.addNode(h.name, h.ip);
    return { lab, api, hosts };
  } catch (e) {
    await lab.cleanup();
    throw e;
  }
}

async function closeCluster(c: Cluster): Promise<void> {
  for (const h of c.hosts) await stopRouter(h).catch(() => undefined);
  if (c.api) await c.api.stop();
  await c.lab.cleanup();
}

interface Steady { seconds: number; perRouterPerMinute: number; byVerb: Record<string, number>; lists: number; watches: number; openWatches: number }

/** Requests the routers made over `seconds`, after the cluster settled. */
async function steady(c: Cluster, routers: number, seconds: number): Promise<Steady> {
  const { logLength } = await c.api.counts();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const log: LoggedRequest[] = (await c.api.log(logLength)).filter((l) => l.userAgent?.startsWith('weave.ts'));
  const byVerb: Record<string, number> = {};
  for (const l of log) byVerb[l.verb] = (byVerb[l.verb] ?? 0) + 1;
  // the watches open at the end (all routers'): a router that makes no request is watching, not gone
  const { watches: openWatches } = await c.api.counts();
  return { seconds, perRouterPerMinute: (log.length / routers) * (60 / seconds), byVerb, lists: byVerb.list ?? 0, watches: byVerb.watch ?? 0, openWatches };
}

async function main(): Promise<void> {
  const nodes = arg('nodes', 3);
  const rounds = arg('rounds', 3);
  const window = arg('window', 30);
  const big = arg('big', 200);
  const times: Record<Mode, number[]> = { kube: [], baseline: [] };
  const restarts: Record<Mode, number[]> = { kube: [], baseline: [] };
  let last: Cluster | undefined;
  const out: Record<string, unknown> = { nodes, rounds };
  try {
    for (let r = 0; r < rounds; r++) {
      for (const mode of (r % 2 ? ['kube', 'baseline'] : ['baseline', 'kube']) as Mode[]) {
        const c = await newCluster(nodes, mode === 'kube');
        try {
          const t = await startRouters(c, c.hosts, mode);
          times[mode].push(...t);
          // one node's router restarted in the running cluster: the figure a real node sees (the
          // cold start above runs every router on this machine's 2 cores at once)
          await stopRouter(c.hosts[0]);
          const [rs] = await startRouters(c, [c.hosts[0]], mode);
          restarts[mode].push(rs);
          console.log(`round ${r + 1} ${mode.padEnd(8)} start to ready (ms): all ${nodes} at once ${t.map((x) => x.toFixed(0)).join(' ')}; one restarted ${rs.toFixed(0)}`);
        } finally {
          if (mode === 'kube' && r === rounds - 1) last = c; else await closeCluster(c);
        }
      }
    }
    const mk = median(times.kube);
    const mb = median(times.baseline);
    const rk = median(restarts.kube);
    const rb = median(restarts.baseline);
    out.ready = { coldKubeMedianMs: mk, coldKubeMaxMs: Math.max(...times.kube), coldBaselineMedianMs: mb, coldRatio: mk / mb, restartKubeMedianMs: rk, restartBaselineMedianMs: rb, restartRatio: rk / rb };
    console.log(`\n${nodes}-node cluster, all routers started at once: kube median ${mk.toFixed(0)} ms (max ${Math.max(...times.kube).toFixed(0)}), baseline median ${mb.toFixed(0)} ms, ratio ${(mk / mb).toFixed(2)}x`);
    console.log(`${nodes}-node cluster, one router restarted: kube median ${rk.toFixed(0)} ms, baseline median ${rb.toFixed(0)} ms, ratio ${(rk / rb).toFixed(2)}x`);

    const c = last!;
    const restart = Math.max(...restarts.kube);
    const s3 = await steady(c, c.hosts.length, window);
    console.log(`${nodes}-node steady state (${window} s): ${s3.perRouterPerMinute.toFixed(1)} requests/min per router, by verb ${JSON.stringify(s3.byVerb)}, ${s3.openWatches} watches open`);
    out.small = { steady: s3 };

    // the cluster grows to `big` nodes: Node objects whose routers are not run here
    for (let i = c.hosts.length + 1; i <= big; i++) await c.api.addNode(`sim${i}`, `198.18.${100 + Math.floor(i / 250)}.${(i % 250) + 1}`);
    await waitFor('every router to know the big cluster', async () => {
      const reps = await Promise.all(c.hosts.map((h) => h.report().catch(() => undefined)));
      return reps.every((rep) => JSON.stringify(rep?.kube ?? rep?.k8s ?? {}).includes(`sim${big}`) || (rep?.router?.targets?.length ?? 0) >= big - 1);
    }, { timeoutMs: 60_000, intervalMs: 500 }).catch((e) => console.log(`(could not confirm the routers saw all ${big} nodes: ${(e as Error).message})`));
    await stopRouter(c.hosts[1]);
    const [restartBig] = await startRouters(c, [c.hosts[1]], 'kube');
    const joiner = await c.lab.addHost(`node${c.hosts.length + 1}`);
    c.hosts.push(joiner);
    await c.api.addNode(joiner.name, joiner.ip);
    const [join] = await startRouters(c, [joiner], 'kube');
    console.log(`${big}-node cluster (${c.hosts.length} real): a router restarted: ready in ${restartBig.toFixed(0)} ms; a new node joined: ready in ${join.toFixed(0)} ms`);
    const sBig = await steady(c, c.hosts.length, window);
    console.log(`${big}-node steady state (${window} s): ${sBig.perRouterPerMinute.toFixed(1)} requests/min per router, by verb ${JSON.stringify(sBig.byVerb)}, ${sBig.openWatches} watches open`);
    out.big = { nodes: big, realRouters: c.hosts.length, restartMs: restartBig, joinMs: join, steady: sBig };
    const goal = Math.max(restart, restartBig, join) < 3000 && s3.lists === 0 && sBig.lists === 0;
    out.goal = { readyUnder3s: Math.max(restart, restartBig, join) < 3000, noListsAtSteadyState: s3.lists === 0 && sBig.lists === 0, met: goal };
    console.log(`goal (a node's router ready < 3 s: restarts and a join; no list calls at steady state): ${goal ? 'met' : 'NOT met'}`);
  } finally {
    if (last) await closeCluster(last);
  }
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
