// Control plane on real kernels: routers in lab hosts, driven only through the weave CLI.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Host, withLab } from '../lab/lab';
import { waitFor } from '../lab/exec';

const PW = { WEAVE_PASSWORD: 'correct horse battery staple' };

async function launch(h: Host, args: string[], env: Record<string, string> = {}): Promise<string> {
  const r = await h.weave(['launch', '--nickname', h.name, ...args], { env });
  const name = r.stdout.trim();
  assert.match(name, /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/, `launch prints the peer name, got "${r.stdout}"`);
  return name;
}

function established(rep: any): any[] {
  return rep.router.connections.filter((c: any) => c.state === 'established');
}

async function waitConnections(h: Host, n: number, timeoutMs = 30_000): Promise<any> {
  return waitFor(`${h.name} to have ${n} established connections`, async () => {
    const rep = await h.report();
    return established(rep).length === n ? rep : undefined;
  }, { timeoutMs, intervalMs: 300 });
}

test('discovery: h3 knows only h2, h2 only h1 -> full mesh, encrypted, shown in status', async () => {
  await withLab(async (lab) => {
    const [h1, h2, h3] = [await lab.addHost('h1'), await lab.addHost('h2'), await lab.addHost('h3')];
    const n1 = await launch(h1, [], PW);
    await launch(h2, [h1.ip], PW);
    await launch(h3, [h2.ip], PW);
    for (const h of [h1, h2, h3]) await waitConnections(h, 2);
    const rep = await h3.report();
    assert.equal(rep.router.peers.length, 3);
    assert.equal(rep.router.encryption, true);
    const toH1 = established(rep).find((c: any) => c.peerName === n1);
    assert.ok(toH1, 'h3 has a direct connection to h1 it was never told about');
    assert.equal(toH1.encrypted, true);
    const text = (await h3.weave(['status', 'connections'])).stdout;
    assert.match(text, /established/);
    assert.match(text, /\bencrypted\b/);
    assert.match(text, new RegExp(`${n1}\\(h1\\)`));
    const summary = (await h3.weave(['status'])).stdout;
    assert.match(summary, /Encryption: enabled/);
    assert.match(summary, /Peers: 3/);
    const peers = (await h1.weave(['status', 'peers'])).stdout;
    assert.match(peers, /\(h2\)/);
    assert.match(peers, /\(h3\)/);
  });
});

test('--no-discovery keeps a line; gossip still reaches everyone', async () => {
  await withLab(async (lab) => {
    const [h1, h2, h3] = [await lab.addHost('h1'), await lab.addHost('h2'), await lab.addHost('h3')];
    await launch(h1, ['--no-discovery']);
    await launch(h2, ['--no-discovery', h1.ip]);
    await launch(h3, ['--no-discovery', h2.ip]);
    await waitConnections(h2, 2);
    for (const h of [h1, h3]) {
      const rep = await waitFor(`${h.name} to see 3 peers`, async () => {
        const r = await h.report();
        return r.router.peers.length === 3 ? r : undefined;
      });
      assert.equal(established(rep).length, 1, `${h.name} stays with one connection`);
      assert.equal(rep.router.peerDiscovery, false);
      // the route to the far end goes through h2
      assert.equal(rep.router.routes.length, 2);
    }
  });
});

test('a wrong password is refused on both sides; password on one side only is refused', async () => {
  await withLab(async (lab) => {
    const [h1, h2, h3] = [await lab.addHost('h1'), await lab.addHost('h2'), await lab.addHost('h3')];
    await launch(h1, [], PW);
    await launch(h2, [h1.ip], { WEAVE_PASSWORD: 'a different password' });
    await launch(h3, [h1.ip]); // no password at all
    const r2 = await waitFor('h2 to report the password failure', async () => {
      const rep = await h2.report();
      return rep.router.connections.find((c: any) => c.state === 'failed' || c.state === 'retrying') ? rep : undefined;
    });
    const c2 = r2.router.connections.find((c: any) => c.code);
    assert.equal(c2.code, 'EPASSWORD', JSON.stringify(c2));
    const r3 = await waitFor('h3 to report the encryption mismatch', async () => {
      const rep = await h3.report();
      return rep.router.connections.find((c: any) => c.code) ? rep : undefined;
    });
    assert.equal(r3.router.connections.find((c: any) => c.code).code, 'EENCRYPTION');
    // the listening side refused them too and says so
    const r1 = await waitFor('h1 to show both refusals', async () => {
      const rep = await h1.report();
      const codes = rep.router.connections.map((c: any) => c.code);
      return codes.includes('EPASSWORD') && codes.includes('EENCRYPTION') ? rep : undefined;
    });
    assert.equal(established(r1).length, 0);
    const text = (await h2.weave(['status', 'connections'])).stdout;
    assert.match(text, /password/i);
    const log = await h1.exec(['cat', `${h1.dataDir}/weave.log`]);
    assert.match(log.stdout, /EPASSWORD/);
  });
});

test('connect / forget / --replace change the targets shown in weave report', async () => {
  await withLab(async (lab) => {
    const [h1, h2, h3] = [await lab.addHost('h1'), await lab.addHost('h2'), await lab.addHost('h3')];
    await launch(h1, ['--no-discovery']);
    await launch(h2, ['--no-discovery']);
    await launch(h3, ['--no-discovery']);
    await h1.weave(['connect', h2.ip]);
    let rep = await waitConnections(h1, 1);
    assert.deepEqual(rep.router.targets.map((t: string) => t.split(':')[0]), [h2.ip]);
    await h1.weave(['connect', h3.ip]);
    rep = await waitConnections(h1, 2);
    assert.deepEqual(rep.router.targets.map((t: string) => t.split(':')[0]).sort(), [h2.ip, h3.ip].sort());
    await h1.weave(['forget', h2.ip]);
    rep = await h1.report();
    assert.deepEqual(rep.router.targets.map((t: string) => t.split(':')[0]), [h3.ip]);
    await h1.weave(['connect', '--replace', h2.ip]);
    rep = await h1.report();
    assert.deepEqual(rep.router.targets.map((t: string) => t.split(':')[0]), [h2.ip]);
    assert.match((await h1.weave(['status', 'targets'])).stdout, new RegExp(h2.ip.replace(/\./g, '\\.')));
    const bad = await h1.weave(['connect', 'not a host:99999'], { allowFail: true });
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /port/);
  });
});

test('kill -9 of a router: the others mark it unreachable and drop it; restart keeps its name and reconnects', async () => {
  await withLab(async (lab) => {
    const [h1, h2, h3] = [await lab.addHost('h1'), await lab.addHost('h2'), await lab.addHost('h3')];
    await launch(h1, []);
    await launch(h2, [h1.ip]);
    const n3 = await launch(h3, [h1.ip]);
    for (const h of [h1, h2, h3]) await waitConnections(h, 2);
    await h3.killAll('SIGKILL');
    for (const h of [h1, h2]) {
      await waitFor(`${h.name} to drop h3`, async () => {
        const rep = await h.report();
        return rep.router.peers.length === 2 && !rep.router.peers.some((p: any) => p.name === n3);
      }, { timeoutMs: 30_000 });
    }
    // restart with the same data dir and --resume: same name, connections come back
    const again = await launch(h3, ['--resume']);
    assert.equal(again, n3, 'the peer name survives a restart');
    await waitConnections(h3, 2, 45_000);
    await waitFor('h1 to see h3 again', async () => (await h1.report()).router.peers.some((p: any) => p.name === n3));
  });
});

test('CLI: unknown flags, bad values and a password on argv are refused with usage', async () => {
  await withLab(async (lab) => {
    const h1 = await lab.addHost('h1');
    const r1 = await h1.weave(['launch', '--frobnicate'], { allowFail: true });
    assert.equal(r1.code, 2);
    assert.match(r1.stderr, /unknown option '--frobnicate'/);
    assert.match(r1.stderr, /Usage: weave launch/);
    const r2 = await h1.weave(['launch', '--password', 'secret'], { allowFail: true });
    assert.equal(r2.code, 2, 'there is no --password flag: passwords never go on argv');
    const r3 = await h1.weave(['launch', '--port', '70000'], { allowFail: true });
    assert.equal(r3.code, 2);
    assert.match(r3.stderr, /--port/);
    const r4 = await h1.weave(['status'], { allowFail: true });
    assert.equal(r4.code, 1);
    assert.match(r4.stderr, /no router running with data dir/);
    const r5 = await h1.weave(['launch', '--password-file', '/nonexistent/pw'], { allowFail: true });
    assert.equal(r5.code, 2);
    assert.match(r5.stderr, /password-file/);
  });
});
