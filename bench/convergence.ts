// Mesh convergence benchmark on the in-memory underlay (no sockets, simulated time):
//   node dist/bench/convergence.js [--peers 50,200,1000] [--seed 1] [--discovery] [--conn-limit 10]
//                                  [--window 60] [--delay 1] [--gossip-interval 30000] [--no-sleeve]
// For each size: N peers start at once, each given 1-3 random targets (one of them an earlier peer,
// so the target graph is connected); we measure the simulated time until every peer holds the same
// view of all N peers with routes to all (checked every 100 ms of simulated time), the wall time that
// took, and then the topology bytes per second per peer over a steady-state window (default 60 s of
// simulated time, after a 10 s settle), counted on the fake underlay (payload + 5-byte frame).
// Every peer runs the sleeve's liveness as its overlay (test/fakes/sim-sleeve.ts: the router's heartbeat
// policy, router/heartbeat.ts; --no-sleeve: none), so a connection counts once its beats pass both
// ways, and the idle messages per second per router are counted over the window by kind: sleeve beats
// (UDP datagrams in a router), topology and gossip (TCP), plus the TCP heartbeats the fake transport
// does not send (computed: one per connection end per 10 s, mesh/tcp-transport.ts). The sleeve beats
// per connection give the full-mesh figure: (N-1) connections per router.
// Goals: 1000 peers converge in < 10 s simulated; steady state < 2 KB/s per peer.
import { HeapClock, MeshSim } from '../test/fakes/underlay';
import { Msg } from '../mesh/types';

const TCP_HEARTBEAT_MS = 10_000;

interface Args {
  peers: number[];
  seed: number;
  discovery: boolean;
  connLimit: number;
  windowS: number;
  delayMs: number;
  gossipIntervalMs: number;
  sleeve: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { peers: [50, 200, 1000], seed: 1, discovery: false, connLimit: 10, windowS: 60, delayMs: 1, gossipIntervalMs: 30_000, sleeve: true };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = argv[i + 1];
    const num = (): number => {
      const n = Number(v);
      if (!Number.isFinite(n) || n < 0) throw new Error(`${k} needs a number, got ${v}`);
      i++;
      return n;
    };
    if (k === '--peers') {
      a.peers = (v ?? '').split(',').map((x) => parseInt(x, 10));
      if (a.peers.some((n) => !(n >= 2))) throw new Error('--peers takes a comma-separated list of sizes >= 2');
      i++;
    } else if (k === '--seed') a.seed = num();
    else if (k === '--discovery') a.discovery = true;
    else if (k === '--conn-limit') a.connLimit = num();
    else if (k === '--window') a.windowS = num();
    else if (k === '--delay') a.delayMs = num();
    else if (k === '--gossip-interval') a.gossipIntervalMs = num();
    else if (k === '--no-sleeve') a.sleeve = false;
    else throw new Error(`unknown argument ${k}`);
  }
  return a;
}

interface Row {
  peers: number;
  connections: number;
  convergedMs: number;
  wallMs: number;
  formationMB: number;
  steadyBps: number;
  /** idle messages per second per router: sleeve beats (and 'hear'), topology + gossip, TCP heartbeats (computed) */
  beatsPs: number;
  meshPs: number;
  tcpHbPs: number;
  /** sleeve beats per second per connection end */
  beatsPerConn: number;
  sleeveFailures: number;
}

async function one(n: number, a: Args): Promise<Row> {
  const clock = new HeapClock();
  const sim = new MeshSim(clock, {
    n, seed: a.seed, discovery: a.discovery, connLimit: a.discovery ? a.connLimit : undefined,
    gossipIntervalMs: a.gossipIntervalMs, delayMs: a.delayMs, sleeve: a.sleeve,
  });
  const wall0 = Date.now();
  await sim.start();
  const convergedMs = await sim.runUntil(() => sim.converged(), 120_000, 100);
  const wallMs = Date.now() - wall0;
  const formationMB = sim.underlay.bytes / 1e6;
  await sim.run(10_000, 50);
  const b0 = sim.underlay.bytes;
  const count = (t: number): number => sim.underlay.messagesByType.get(t) ?? 0;
  const m0 = [count(Msg.Overlay), count(Msg.Topology) + count(Msg.Gossip)];
  const f0 = sim.sleeves.reduce((x, s) => x + (s?.failures ?? 0), 0);
  await sim.run(a.windowS * 1000, 100);
  const steadyBps = (sim.underlay.bytes - b0) / a.windowS / n;
  const connections = sim.underlay.openConnections() / 2;
  const beatsPs = (count(Msg.Overlay) - m0[0]) / a.windowS / n;
  const meshPs = (count(Msg.Topology) + count(Msg.Gossip) - m0[1]) / a.windowS / n;
  const tcpHbPs = (2 * connections) / n / (TCP_HEARTBEAT_MS / 1000);
  const beatsPerConn = connections ? (count(Msg.Overlay) - m0[0]) / a.windowS / (2 * connections) : 0;
  const sleeveFailures = sim.sleeves.reduce((x, s) => x + (s?.failures ?? 0), 0) - f0;
  for (const m of sim.alive()) await m.stop();
  for (const s of sim.sleeves) s?.stop();
  return { peers: n, connections, convergedMs, wallMs, formationMB, steadyBps, beatsPs, meshPs, tcpHbPs, beatsPerConn, sleeveFailures };
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  console.log(`mesh convergence: seed ${a.seed}, discovery ${a.discovery ? `on (conn limit ${a.connLimit})` : 'off'}, link delay ${a.delayMs} ms, gossip interval ${a.gossipIntervalMs} ms, steady window ${a.windowS} s`);
  const head = ['peers', 'connections', 'converged (sim s)', 'wall s', 'formation MB', 'steady B/s/peer', 'goal',
    'idle msgs/s/router: sleeve beats', 'topology+gossip', 'TCP heartbeats (computed)', 'total', 'beats/s per connection end', 'full mesh: beats/s/router', 'sleeve failures idle'];
  console.log(head.join(' | '));
  let ok = true;
  for (const n of a.peers) {
    const r = await one(n, a);
    const pass = r.convergedMs >= 0 && r.convergedMs < 10_000 && r.steadyBps < 2048;
    ok &&= pass;
    console.log([
      r.peers, r.connections, r.convergedMs < 0 ? 'not converged' : (r.convergedMs / 1000).toFixed(1), (r.wallMs / 1000).toFixed(1),
      r.formationMB.toFixed(1), r.steadyBps.toFixed(1), pass ? 'ok (<10 s, <2 KB/s)' : 'MISSED',
      r.beatsPs.toFixed(3), r.meshPs.toFixed(3), r.tcpHbPs.toFixed(3), (r.beatsPs + r.meshPs + r.tcpHbPs).toFixed(3),
      r.beatsPerConn.toFixed(3), (r.beatsPerConn * (r.peers - 1)).toFixed(1), r.sleeveFailures,
    ].join(' | '));
  }
  process.exitCode = ok ? 0 : 1;
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : String(e));
  process.exitCode = 2;
});
