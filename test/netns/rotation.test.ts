// Password rotation without downtime on a 3-host encrypted lab (the scheme: mesh/rotation.ts).
// Containers ping each other across every connection of the full mesh every 0.1 s while each host in
// turn gets the new password in its --password-file and is told to rotate (h1, h2 by `weave
// password-rotate`, h3 by SIGHUP), then every host finishes the window. The longest run of lost
// pings must stay within 1 s, no connection may drop, and every connection ends on the new password.
// Runs with the sleeve alone (--no-fastdp) and with fastdp enabled: this kernel has no ESP, so an
// encrypted connection's data goes over the sleeve there too (reason "kernel lacks ESP"); the fastdp
// ESP re-key is covered by test/unit/fastdp-ctl.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as path from 'path';
import { spawn } from 'child_process';
import { Container, Host, withLab } from '../lab/lab';
import { waitFor } from '../lab/exec';
import { pingable } from '../lab/traffic';

const OLD = 'rotation test: the old password';
const NEW = 'rotation test: the new password';
const INTERVAL_S = 0.1;

interface Pinger { from: Container; to: string; stop(): Promise<{ received: number[]; transmitted: number; text: string }> }

/** `ping -i 0.1` from a container until stop(); icmp_seq of every reply. */
function startPing(from: Container, to: string): Pinger {
  const child = spawn('ip', ['netns', 'exec', from.ns, 'ping', '-n', '-i', String(INTERVAL_S), to], { stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => { text += d; });
  child.stderr.setEncoding('utf8').on('data', (d: string) => { text += d; });
  const exited = new Promise<void>((r) => child.on('close', () => r()));
  return {
    from, to,
    async stop() {
      child.kill('SIGINT'); // ping prints its summary
      await exited;
      const received = [...text.matchAll(/icmp_seq=(\d+)/g)].map((m) => Number(m[1]));
      const transmitted = Number(/(\d+) packets transmitted/.exec(text)?.[1] ?? NaN);
      return { received, transmitted, text };
    },
  };
}

/** The longest time without a reply, in seconds, from the sequence numbers that came back. */
function longestGap(received: number[], transmitted: number): number {
  const seqs = [...new Set(received)].sort((a, b) => a - b);
  let worst = 0;
  let prev = 0; // as if seq 0 had been answered: a late start counts too
  for (const s of [...seqs, transmitted + 1]) {
    worst = Math.max(worst, s - prev);
    prev = s;
  }
  return worst * INTERVAL_S;
}

async function report(h: Host): Promise<any> {
  return h.report();
}

function routerPid(h: Host): number {
  return Number(fs.readFileSync(path.join(h.dataDir, 'router.pid'), 'utf8').trim());
}

async function connectionsOn(h: Host): Promise<any[]> {
  return (await report(h)).router.connections.filter((c: any) => c.state === 'established');
}

for (const fastdp of [false, true]) {
  test(`rolling password rotation on 3 hosts under continuous ping (${fastdp ? 'fastdp enabled: no ESP here, the sleeve carries' : 'sleeve, --no-fastdp'}): no gap over 1 s, all on the new password`, async (t) => {
    await withLab(async (lab) => {
      const hosts = [await lab.addHost('h1'), await lab.addHost('h2'), await lab.addHost('h3')];
      const conts = [await lab.addContainer('c1'), await lab.addContainer('c2'), await lab.addContainer('c3')];
      const pwFile = (h: Host) => path.join(lab.tmp, `password-${h.name}`);
      for (const h of hosts) fs.writeFileSync(pwFile(h), `${OLD}\n`, { mode: 0o600 });
      const flags = (h: Host) => ['--nickname', h.name, '--password-file', pwFile(h), ...(fastdp ? [] : ['--no-fastdp'])];
      await hosts[0].weave(['launch', ...flags(hosts[0])]);
      await hosts[1].weave(['launch', ...flags(hosts[1]), hosts[0].ip]);
      await hosts[2].weave(['launch', ...flags(hosts[2]), hosts[0].ip, hosts[1].ip]);
      for (let i = 0; i < 3; i++) await hosts[i].weave(['attach', `10.32.${i + 1}.1/12`, conts[i].ns]);
      for (const h of hosts) {
        await waitFor(`${h.name}: 2 encrypted connections established over the sleeve`, async () => {
          const est = await connectionsOn(h);
          return est.length === 2 && est.every((c) => c.overlay === 'sleeve' && c.encrypted && c.passwordGeneration === 1);
        }, { timeoutMs: 45_000, intervalMs: 300 });
      }
      if (fastdp) {
        for (const c of await connectionsOn(hosts[0])) assert.match(c.overlayReason ?? '', /ESP/, 'fastdp is not used for encrypted data on this kernel');
      }
      const pairs: Array<[number, number]> = [[0, 1], [0, 2], [1, 2]];
      for (const [a, b] of pairs) await pingable(conts[a], `10.32.${b + 1}.1`, 30_000);

      const pings = pairs.map(([a, b]) => startPing(conts[a], `10.32.${b + 1}.1`));
      const lostBefore = new Map<string, number>();
      try {
        await new Promise((r) => setTimeout(r, 2000));
        // roll the new password through the hosts, one at a time
        for (const [i, h] of hosts.entries()) {
          fs.writeFileSync(pwFile(h), `${NEW}\n`);
          if (i < 2) {
            const out = (await h.weave(['password-rotate', '--window', '600'])).stdout;
            assert.match(out, /rotating to password generation 2: accepting generations 1 and 2/);
          } else {
            process.kill(routerPid(h), 'SIGHUP');
          }
          await waitFor(`${h.name} accepting generations 1 and 2`, async () => JSON.stringify((await report(h)).router.passwordRotation?.accepting) === '[1,2]', { timeoutMs: 10_000, intervalMs: 200 });
          await new Promise((r) => setTimeout(r, 2500));
        }
        for (const h of hosts) {
          await waitFor(`${h.name}: both connections on password generation 2`, async () => {
            const est = await connectionsOn(h);
            return est.length === 2 && est.every((c) => c.passwordGeneration === 2);
          }, { timeoutMs: 15_000, intervalMs: 300 });
        }
        for (const h of hosts) {
          const out = (await h.weave(['password-rotate', '--finish'])).stdout;
          assert.match(out, /password generation 2 only/);
          await new Promise((r) => setTimeout(r, 1500));
        }
        await new Promise((r) => setTimeout(r, 2000));
      } finally {
        for (const p of pings) {
          const r = await p.stop();
          const gap = longestGap(r.received, r.transmitted);
          lostBefore.set(`${p.from.name}->${p.to}`, gap);
          t.diagnostic(`${p.from.name} -> ${p.to}: ${r.received.length}/${r.transmitted} replies, longest gap ${gap.toFixed(1)} s`);
          assert.ok(r.transmitted > 100, `ping ran: ${r.text.slice(-300)}`);
        }
      }
      for (const [k, gap] of lostBefore) assert.ok(gap <= 1.0 + 1e-9, `${k}: longest gap ${gap.toFixed(1)} s`);
      for (const h of hosts) {
        const r = await report(h);
        assert.equal(r.router.passwordRotation.state, 'steady');
        assert.deepEqual(r.router.passwordRotation.accepting, [2]);
        const est = r.router.connections.filter((c: any) => c.state === 'established');
        assert.equal(est.length, 2, `${h.name}: both connections still there`);
        assert.equal(r.sleeve.dropped.badMac, 0, `${h.name}: no datagram failed to open across the re-keys`);
        for (const c of est) assert.equal(c.passwordGeneration, 2, `${h.name} -> ${c.peerNickname} on the new password`);
        const log = fs.readFileSync(path.join(h.dataDir, 'weave.log'), 'utf8');
        assert.doesNotMatch(log, /connection lost/, `${h.name}: no connection was lost during the rotation`);
        assert.match(log, /now seals with password generation 2/);
        if (h === hosts[2]) assert.match(log, /"source":"SIGHUP"/, 'h3 rotated on SIGHUP');
      }
      // a router still on the old password is now refused, and says why
      const h4 = await lab.addHost('h4');
      fs.writeFileSync(path.join(lab.tmp, 'password-h4'), `${OLD}\n`);
      await h4.weave(['launch', '--nickname', 'h4', '--password-file', path.join(lab.tmp, 'password-h4'), ...(fastdp ? [] : ['--no-fastdp']), hosts[0].ip]);
      await waitFor('h4 refused with EPASSWORD', async () => (await report(h4)).router.connections.some((c: any) => c.code === 'EPASSWORD'), { timeoutMs: 20_000, intervalMs: 300 });
    });
  });
}
