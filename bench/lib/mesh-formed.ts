// Whether a lab's routers have formed their full mesh: every router knows all N peers and has N-1
// established connections. bench/convergence-netns times it; bench/sleeve's hostMesh (and so
// bench/router-memory) waits for it before attaching containers: an attach with an explicit address
// needs IPAM consensus on the ring, and while a 50-router mesh still forms that outlasted the
// attach's own 20 s wait ("cannot claim ... waiting for consensus on the ring").
import { run, waitFor } from '../../test/lab/exec';
import type { Host } from '../../test/lab/lab';

/** GET a path of a host's router API as JSON; null when the router does not answer (yet) or answers garbage. */
export async function curlJson(h: Host, p: string): Promise<any> {
  const r = await run(['ip', 'netns', 'exec', h.ns, 'curl', '-s', '-m', '10', `http://127.0.0.1:6784${p}`], { allowFail: true, timeoutMs: 15_000 });
  if (r.code !== 0) return null;
  try {
    return JSON.parse(r.stdout);
  } catch {
    return null;
  }
}

/**
 * Waits until every router sees the full mesh, then checks all once more (a connection may have
 * dropped meanwhile). `done` (optional) holds the routers seen fully meshed so far: after a timeout
 * the caller can say how far the mesh got. Throws waitFor's timeout error.
 */
export async function waitFullMesh(hosts: Host[], opts: { timeoutMs: number; intervalMs?: number; done?: Set<Host> }): Promise<void> {
  const n = hosts.length;
  const done = opts.done ?? new Set<Host>();
  const meshed = (r: any): boolean => !!r && r.router.peers.length === n && r.router.connections.filter((c: any) => c.state === 'established').length === n - 1;
  await waitFor('full mesh', async () => {
    for (const h of hosts) {
      if (done.has(h)) continue;
      if (!meshed(await curlJson(h, '/report'))) return false;
      done.add(h);
    }
    for (const h of hosts) {
      if (!meshed(await curlJson(h, '/report'))) {
        done.delete(h);
        return false;
      }
    }
    return true;
  }, { timeoutMs: opts.timeoutMs, intervalMs: opts.intervalMs ?? 500 });
}
