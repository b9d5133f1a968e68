// Real routers: N lab hosts (default 20), each `weave launch`ed with one seed peer (a chain, so
// discovery must do the work). Prints time until every router has N-1 established connections and
// knows N peers, then the steady-state control-plane bytes per second per router, read from each
// router's /metrics over a quiet window. Run: node dist/bench/convergence-netns.js [--hosts 20] [--window 20]
import { Lab, Host } from '../test/lab/lab';
import { waitFor } from '../test/lab/exec';

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
}

async function controlBytes(h: Host): Promise<number> {
  const text = await h.httpGet('/metrics');
  let total = 0;
  for (const m of text.matchAll(/^weave_control_bytes_total\{direction="(in|out)"\} (\d+)/gm)) total += Number(m[2]);
  return total;
}

async function main(): Promise<void> {
  const n = arg('hosts', 20);
  const windowS = arg('window', 20);
  const lab = await Lab.create();
  try {
    const hosts: Host[] = [];
    for (let i = 0; i < n; i++) hosts.push(await lab.addHost(`h${i + 1}`));
    const t0 = Date.now();
    // each host knows only the one before it
    await Promise.all(hosts.map((h, i) => h.weave(['launch', '--no-fastdp', '--nickname', h.name, ...(i ? [hosts[i - 1].ip] : [])], { env: { WEAVE_PASSWORD: 'bench' }, timeoutMs: 120_000 })));
    const launched = Date.now();
    await waitFor('full mesh', async () => {
      for (const h of hosts) {
        const r = await h.report();
        if (r.router.peers.length !== n) return false;
        if (r.router.connections.filter((c: any) => c.state === 'established').length !== n - 1) return false;
      }
      return true;
    }, { timeoutMs: 300_000, intervalMs: 500 });
    const converged = Date.now();
    const before = await Promise.all(hosts.map(controlBytes));
    await new Promise((r) => setTimeout(r, windowS * 1000));
    const after = await Promise.all(hosts.map(controlBytes));
    const perPeer = after.map((a, i) => (a - before[i]) / windowS);
    const avg = perPeer.reduce((a, b) => a + b, 0) / n;
    console.log('routers  launch_s  converge_s(after launch)  steady_control_B/s_per_router(avg,max)  window_s');
    console.log(`${String(n).padEnd(8)} ${((launched - t0) / 1000).toFixed(1).padEnd(9)} ${((converged - launched) / 1000).toFixed(1).padEnd(25)} ${avg.toFixed(0)}, ${Math.max(...perPeer).toFixed(0)}`.padEnd(83) + ` ${windowS}`);
    console.log('(control bytes include encrypted TCP heartbeats and periodic gossip, in and out)');
  } finally {
    await lab.cleanup();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
