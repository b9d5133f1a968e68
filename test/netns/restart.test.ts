// Restarts are non-events: three lab hosts with a container each, a full mesh; one router at a time is
// restarted (stop + launch --resume, stop + launch with its peers again, kill -9 + launch) and every
// container pair must ping again within 5 s of the new router answering, on the encrypted sleeve, the
// unencrypted sleeve and trusted fastdp, with no help for the routers that kept running. While the mesh
// recovers, `weave report` on every host is sampled: a connection shown as plainly established (no
// "data not flowing") must carry pings between the containers behind its two ends.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'child_process';
import { Container, Host, Lab } from '../lab/lab';
import { run, waitFor } from '../lab/exec';
import { pingable } from '../lab/traffic';

const PW = { WEAVE_PASSWORD: 'restart test password' };
/** restarts are non-events: every pair reachable again within this after the restarted router answers */
const RECOVERY_MS = 5000;
/** how long pingers keep trying (past RECOVERY_MS, so a slow recovery is measured, not just failed) */
const PING_DEADLINE_S = 12;
/**
 * A plainly established connection at time t must carry pings by t + this: the status is sampled
 * while pings run every 100 ms, and kernel routes follow the engines' forwarding by tens of ms.
 */
const STATUS_SLACK_MS = 1500;

interface Overlay {
  name: string;
  flags: string[];
  env: Record<string, string>;
  overlay: 'sleeve' | 'fastdp';
  encrypted: boolean;
}

const OVERLAYS: Overlay[] = [
  { name: 'encrypted sleeve', flags: ['--no-fastdp'], env: PW, overlay: 'sleeve', encrypted: true },
  { name: 'unencrypted sleeve', flags: ['--no-fastdp'], env: {}, overlay: 'sleeve', encrypted: false },
  // both ends trust the underlay: fastdp without ESP (this kernel has none), control still encrypted
  { name: 'trusted fastdp', flags: ['--trusted-subnets', '198.18.0.0/16'], env: PW, overlay: 'fastdp', encrypted: false },
];

interface Mode { name: string; host: number; kill: boolean; resume: boolean }

const MODES: Mode[] = [
  { name: 'stop + launch --resume', host: 0, kill: false, resume: true },
  { name: 'stop + launch with its peers again', host: 1, kill: false, resume: false },
  { name: 'kill -9 + launch', host: 2, kill: true, resume: false },
];

interface Node { h: Host; c: Container; addr: string }

function peersOf(nodes: Node[], i: number): string[] {
  return nodes.filter((_, j) => j !== i).map((n) => n.h.ip);
}

async function launch(ov: Overlay, nodes: Node[], i: number, resume: boolean): Promise<void> {
  const n = nodes[i];
  await n.h.weave(['launch', '--nickname', n.h.name, ...ov.flags, ...(resume ? ['--resume'] : peersOf(nodes, i))], { env: ov.env });
}

/** The router's report through its API (curl: a node CLI per sample costs too much CPU here). */
async function report(h: Host): Promise<any | undefined> {
  const r = await run(['ip', 'netns', 'exec', h.ns, 'curl', '-s', '-m', '2', 'http://127.0.0.1:6784/report'], { allowFail: true, timeoutMs: 5000 });
  if (r.code !== 0) return undefined;
  try {
    return JSON.parse(r.stdout);
  } catch {
    return undefined;
  }
}

/** Established, carried by the expected overlay and not flagged as carrying no data. */
function plainlyEstablished(c: any): boolean {
  return c.state === 'established' && c.overlay !== null && !c.stalled;
}

async function fullMesh(ov: Overlay, nodes: Node[], timeoutMs: number): Promise<void> {
  await waitFor(`every router with 2 plainly established ${ov.overlay} connections`, async () => {
    for (const n of nodes) {
      const rep = await report(n.h);
      const ok = rep?.router.connections.filter((c: any) => plainlyEstablished(c) && c.overlay === ov.overlay && c.encrypted === ov.encrypted) ?? [];
      if (ok.length !== 2) return false;
    }
    return true;
  }, { timeoutMs, intervalMs: 300 });
}

/**
 * ms from `from` until c gets a ping reply from addr, or Infinity when none came within the deadline.
 * One ping every 100 ms until the first reply; no `-w`/`-c`: with those ping gives up at the first ICMP
 * unreachable, which the sleeve sends back while it has no route.
 */
function firstReply(c: Container, addr: string, from: number): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn('ip', ['netns', 'exec', c.ns, 'ping', '-n', '-i', '0.1', addr], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    let at = Infinity;
    const deadline = setTimeout(() => child.kill('SIGTERM'), PING_DEADLINE_S * 1000);
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (at === Infinity && /bytes from/.test(out)) {
        at = Date.now() - from;
        child.kill('SIGTERM');
      }
    });
    child.on('close', () => {
      clearTimeout(deadline);
      resolve(at);
    });
  });
}

interface Sample { t: number; host: number; peerNickname: string; plain: boolean; info: string }

/** Samples every router's connections every 250 ms until stopped (times relative to t0). */
function sampleStatus(nodes: Node[], t0: number): { stop(): Promise<Sample[]> } {
  const samples: Sample[] = [];
  let on = true;
  const loop = (async () => {
    while (on) {
      const at = Date.now() - t0;
      const reps = await Promise.all(nodes.map((n) => report(n.h)));
      reps.forEach((rep, host) => {
        for (const c of rep?.router.connections ?? []) {
          if (c.peerNickname) samples.push({ t: at, host, peerNickname: c.peerNickname, plain: plainlyEstablished(c), info: `${c.state} ${c.overlay} ${c.info ?? ''}` });
        }
      });
      await new Promise((res) => setTimeout(res, 250));
    }
  })();
  return { stop: async () => { on = false; await loop; return samples; } };
}

/** What each router holds after a slow recovery, and what it logged since the restart began. */
async function explain(t: TestContext, nodes: Node[], since: number): Promise<void> {
  for (const n of nodes) {
    const rep = await report(n.h);
    const routes = await n.h.exec(['ip', 'route', 'show', 'proto', '180'], { allowFail: true });
    t.diagnostic(`${n.h.name}: connections ${JSON.stringify(rep?.router.connections.map((c: any) => `${c.peerNickname} ${c.state} ${c.overlay} ${c.info}`))} mesh routes ${JSON.stringify(rep?.router.routes)} sleeve dropped ${JSON.stringify(rep?.sleeve?.dropped)} prefixes ${JSON.stringify(rep?.sleeve?.prefixes)} kernel routes:\n${routes.stdout}`);
    const log = await n.h.exec(['cat', `${n.h.dataDir}/weave.log`], { allowFail: true });
    const lines = log.stdout.split('\n').filter((l) => {
      try {
        const j = JSON.parse(l);
        return j.time >= since && j.component !== 'routes';
      } catch {
        return false;
      }
    });
    t.diagnostic(`${n.h.name} log since the restart:\n${lines.join('\n')}`);
  }
}

/** Restarts one router; returns what went wrong (empty: a non-event). */
async function restartOnce(t: TestContext, ov: Overlay, nodes: Node[], m: Mode): Promise<string[]> {
  const failures: string[] = [];
  const r = nodes[m.host];
  const stopStart = Date.now();
  if (m.kill) await r.h.killAll('SIGKILL');
  else await r.h.weave(['stop']);
  const launchStart = Date.now();
  await launch(ov, nodes, m.host, m.resume);
  const t0 = Date.now();

  // every ordered container pair, and the status of every router, from the moment the router answers
  const pairs: Array<{ from: number; to: number }> = [];
  for (let i = 0; i < nodes.length; i++) for (let j = 0; j < nodes.length; j++) if (i !== j) pairs.push({ from: i, to: j });
  const sampler = sampleStatus(nodes, t0);
  const times = await Promise.all(pairs.map((p) => firstReply(nodes[p.from].c, nodes[p.to].addr, t0)));
  const samples = await sampler.stop();

  const worst = Math.max(...times);
  const perPair = pairs.map((p, k) => `${nodes[p.from].h.name}->${nodes[p.to].h.name} ${times[k] === Infinity ? 'none' : `${times[k]} ms`}`).join(', ');
  t.diagnostic(`${ov.name} / ${m.name} of ${r.h.name}: stop ${launchStart - stopStart} ms, launch ${t0 - launchStart} ms, every pair pings ${worst === Infinity ? `never (within ${PING_DEADLINE_S} s)` : `${worst} ms`} after the router answered (${perPair})`);
  if (!(worst <= RECOVERY_MS)) {
    await explain(t, nodes, stopStart);
    failures.push(`${ov.name} / ${m.name}: every container pair must ping within ${RECOVERY_MS} ms of the restart; ${perPair}`);
  }

  // status never claims a working connection that carries nothing
  for (const s of samples) {
    if (!s.plain) continue;
    const peer = nodes.findIndex((n) => n.h.name === s.peerNickname);
    const k = pairs.findIndex((p) => p.from === s.host && p.to === peer);
    if (k >= 0 && !(times[k] <= s.t + STATUS_SLACK_MS)) {
      failures.push(`${ov.name} / ${m.name}: ${nodes[s.host].h.name} showed its connection to ${s.peerNickname} as plainly established at +${s.t} ms (${s.info}), but ${nodes[s.host].h.name}->${s.peerNickname} pinged ${times[k] === Infinity ? 'never' : `only at ${times[k]} ms`}`);
      break;
    }
  }
  await fullMesh(ov, nodes, 15_000);
  return failures;
}

for (const ov of OVERLAYS) {
  test(`restarts are non-events: ${ov.name}`, async (t) => {
    const lab = await Lab.create();
    try {
      const nodes: Node[] = [];
      for (let i = 0; i < 3; i++) {
        const h = await lab.addHost(`h${i + 1}`);
        nodes.push({ h, c: await lab.addContainer(`c${i + 1}`), addr: `10.32.${i + 1}.1` });
      }
      await Promise.all(nodes.map((_, i) => launch(ov, nodes, i, false)));
      await Promise.all(nodes.map((n) => n.h.weave(['attach', `${n.addr}/12`, n.c.ns])));
      await fullMesh(ov, nodes, 30_000);
      for (const a of nodes) for (const b of nodes) if (a !== b) await pingable(a.c, b.addr, 30_000);
      // every mode runs even after a failure, so one run measures them all
      const failures: string[] = [];
      for (const m of MODES) failures.push(...await restartOnce(t, ov, nodes, m));
      assert.deepEqual(failures, []);
    } catch (e) {
      for (const h of lab.hosts) {
        const log = await h.exec(['tail', '-n', '40', `${h.dataDir}/weave.log`], { allowFail: true });
        if (log.stdout) t.diagnostic(`--- ${h.name} weave.log (last lines) ---\n${log.stdout}`);
      }
      throw e;
    } finally {
      await lab.cleanup();
    }
  });
}
