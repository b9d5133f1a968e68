// The operator's page (/ui) in headless Chromium (Debian's chromium driven by playwright-core; nothing
// downloads a browser), on a 3-host lab: h1-h2 trust each other (--trusted-subnets) and run fastdp, h3
// is trusted by nobody and runs the encrypted sleeve. The page must show 3 peers and 3 connections
// with their overlays and the reason, change within 5 s of the underlay between h1 and h3 being cut
// (no reload), and draw IPAM shares that add up to the range; its data endpoint must carry the
// numbers `weave report` prints. Screenshots are saved under .cache/artifacts/ (the path is printed).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as path from 'path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { withLab, type Host } from '../lab/lab';
import { waitFor } from '../lab/exec';
import { supportsEsp } from '../../ipsec/xfrm';
import { cidrSize } from '../../ui/model';
import { topLevelKeys } from '../../lib/log-file';

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = path.join(__dirname, '..', '..', '..', '.cache', 'artifacts');
// as the machine notes say: without the background-networking flags Chromium dials out and is refused
const FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'];

/** Chromium inside a host's namespace, where the router's API listens on 127.0.0.1:6784. */
async function browserIn(h: Host, dir: string): Promise<BrowserContext> {
  const wrapper = path.join(dir, 'chromium-in-ns.sh');
  fs.writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${h.ns} ${CHROMIUM} "$@"\n`, { mode: 0o755 });
  return chromium.launchPersistentContext(path.join(dir, 'profile'), { executablePath: wrapper, headless: true, args: FLAGS, viewport: { width: 1400, height: 1100 }, timeout: 60_000 });
}

interface PageEdge { a: string; b: string; overlay: string; encryption: string; state: string; reason: string; mtu: string; silent: string }

function pageEdges(page: Page): Promise<PageEdge[]> {
  return page.$$eval('#topology g.edge', (gs) => gs.map((g) => ({
    a: g.getAttribute('data-a')!, b: g.getAttribute('data-b')!, overlay: g.getAttribute('data-overlay')!, encryption: g.getAttribute('data-encryption')!,
    state: g.getAttribute('data-state')!, reason: g.getAttribute('data-reason')!, mtu: g.getAttribute('data-mtu')!, silent: g.getAttribute('data-silent')!,
  })));
}

function edgeOf(edges: PageEdge[], x: string, y: string): PageEdge | undefined {
  return edges.find((e) => (e.a === x && e.b === y) || (e.a === y && e.b === x));
}

const encOf = (c: { encrypted: boolean; trusted?: boolean }): string => (c.encrypted ? 'encrypted' : c.trusted ? 'trusted' : 'none');

test('the /ui page in Chromium: 3 peers, 3 connections with overlays and reasons, a cut within 5 s, IPAM adds up; its data is weave report\'s', { timeout: 300_000 }, async () => {
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: scripts/ensure-deps.js installs Debian's chromium`);
  await withLab(async (lab) => {
    const [h1, h2, h3] = [await lab.addHost('h1'), await lab.addHost('h2'), await lab.addHost('h3')];
    const env = { WEAVE_PASSWORD: 'ui-test-password' };
    // on a kernel with ESP h3 could run fastdp under ESP: keep it on the sleeve so both overlays show
    const esp = await supportsEsp({ netns: h1.ns });
    const trust = (h: Host): string[] => ['--trusted-subnets', `${h.ip}/32`];
    for (const [h, args] of [[h1, trust(h2)], [h2, [...trust(h1), h1.ip]], [h3, [...(esp.ok ? ['--no-fastdp'] : []), h2.ip]]] as Array<[Host, string[]]>) {
      await h.weave(['launch', '--nickname', h.name, '--ipalloc-init', 'consensus=3', ...args], { env });
    }
    const names = new Map<string, string>();
    for (const h of [h1, h2, h3]) names.set(h.name, (await h.report()).router.name);
    const [n1, n2, n3] = [names.get('h1')!, names.get('h2')!, names.get('h3')!];
    await waitFor('full mesh with h1-h2 on fastdp', async () => {
      for (const h of [h1, h2, h3]) if ((await h.report()).router.connections.filter((c: { state: string }) => c.state === 'established').length !== 2) return false;
      return (await h1.report()).router.connections.some((c: { peerName?: string; overlay: string | null }) => c.peerName === n2 && c.overlay === 'fastdp');
    }, { timeoutMs: 60_000, intervalMs: 300 });
    const web = await lab.addContainer('c-web');
    await h1.weave(['attach', web.ns, '-h', 'web'], { timeoutMs: 90_000 });
    // h1's page knows the h2-h3 line through link gossip
    await waitFor('h1 to hear how h2 and h3 are connected', async () => {
      const d = JSON.parse(await h1.httpGet('/ui/data'));
      return d.view.edges.some((e: { a: string; b: string; overlay: string | null }) => [e.a, e.b].sort().join() === [n2, n3].sort().join() && e.overlay === 'sleeve');
    }, { timeoutMs: 30_000, intervalMs: 500 });

    const out = path.join(ARTIFACTS, `ui-${lab.id}`);
    fs.mkdirSync(out, { recursive: true });
    process.stdout.write(`# /ui screenshots: ${out}\n`);
    const uiOut = (await h1.weave(['ui'])).stdout;
    const url = uiOut.split('\n')[0];
    assert.equal(url, 'http://127.0.0.1:6784/ui');
    assert.match(uiOut, new RegExp(`inside the network namespace "${h1.ns}"`), 'weave ui says how to reach a router in a namespace');
    assert.match(uiOut, /ssh -L 6784:127\.0\.0\.1:6784/);

    const ctx = await browserIn(h1, lab.tmp);
    try {
      const page = await ctx.newPage();
      const errors: string[] = [];
      page.on('pageerror', (e) => errors.push(e.message));
      await page.goto(url);
      // (page code as strings: the tests compile without the DOM library)
      await page.waitForFunction(`document.querySelectorAll('#topology g.peer').length === 3 && document.querySelectorAll('#topology g.edge').length === 3 && document.querySelector('#live').textContent === 'live'`, undefined, { timeout: 20_000 });
      // the traffic table has rates once two samples exist
      await page.waitForFunction(`!document.querySelector('#traffic tbody').textContent.includes('…')`, undefined, { timeout: 10_000 });

      // 3 peers, 3 connections, overlays, encryption, MTU and the reasons: as the routers report them
      const peers = await page.$$eval('#topology g.peer', (gs) => gs.map((g) => g.getAttribute('data-nickname')).sort());
      assert.deepEqual(peers, ['h1', 'h2', 'h3']);
      const edges = await pageEdges(page);
      assert.equal(edges.length, 3);
      const r1 = await h1.report();
      const r2 = await h2.report();
      for (const [rep, from] of [[r1, n1], [r2, n2]] as const) {
        for (const c of rep.router.connections) {
          const e = edgeOf(edges, from, c.peerName);
          assert.ok(e, `the page draws ${from}-${c.peerName}`);
          assert.deepEqual([e.overlay, e.encryption, e.mtu, e.reason], [c.overlay, encOf(c), String(c.mtu), c.overlayReason ?? ''], `${from}-${c.peerName} as ${from} reports it`);
        }
      }
      assert.deepEqual([edgeOf(edges, n1, n2)!.overlay, edgeOf(edges, n1, n2)!.encryption], ['fastdp', 'trusted']);
      assert.equal(edgeOf(edges, n1, n3)!.overlay, 'sleeve');
      assert.equal(edgeOf(edges, n2, n3)!.overlay, 'sleeve');
      assert.ok(edgeOf(edges, n1, n3)!.reason.length > 0, 'the sleeve line says why it is not fastdp');
      const reasonShown = await page.$$eval('#topology g.edge text.reason', (ts) => ts.map((t) => t.textContent));
      assert.ok(reasonShown.some((t) => t === `not fastdp: ${edgeOf(edges, n1, n3)!.reason}`), `the reason is drawn on the line: ${reasonShown.join(' | ')}`);

      // IPAM: the shares drawn add up to the range
      const slices = await page.$$eval('#ipam-ring path.slice', (ps) => ps.map((p) => Number(p.getAttribute('data-addresses'))));
      assert.equal(slices.reduce((a, b) => a + b, 0), cidrSize(r1.ipam.status.range));
      assert.equal(slices.length, 3);
      const containers = await page.$$eval('#containers tbody tr', (rs) => rs.map((r) => r.textContent));
      assert.ok(containers.some((t) => t?.includes(web.ns) && t.includes('web')), `containers: ${containers.join(' | ')}`);
      assert.ok((await page.$$eval('#dns tbody tr', (rs) => rs.map((r) => r.textContent))).some((t) => t?.includes('web.weave.local.')));
      assert.ok((await page.$$eval('#events tbody tr', (rs) => rs.map((r) => r.getAttribute('data-kind')))).includes('connection-up'));
      await page.screenshot({ path: path.join(out, 'mesh.png'), fullPage: true });

      // the data endpoint carries weave report's numbers
      const data = JSON.parse(await h1.httpGet('/ui/data'));
      const cli = await h1.report();
      assert.deepEqual(data.view.peers.map((p: { name: string; nickname: string }) => `${p.name} ${p.nickname}`).sort(), cli.router.peers.map((p: { name: string; nickname: string }) => `${p.name} ${p.nickname}`).sort());
      assert.deepEqual(data.view.ipam.owners.map((o: { peer: string; addresses: number }) => [o.peer, o.addresses]), cli.ipam.status.owners.map((o: { peer: string; addresses: number }) => [o.peer, o.addresses]));
      assert.deepEqual(data.report.router.connections.map((c: { peerName: string; overlay: string; mtu: number }) => [c.peerName, c.overlay, c.mtu]), cli.router.connections.map((c: { peerName: string; overlay: string; mtu: number }) => [c.peerName, c.overlay, c.mtu]));
      for (const t of data.view.traffic) {
        const p = t.overlay === 'sleeve' ? data.report.sleeve.paths.find((x: { peer: string }) => x.peer === t.peer) : data.report.fastdp.paths.find((x: { peer: string }) => x.peer === t.peer);
        assert.equal(t.txPackets, t.overlay === 'sleeve' ? p.txPackets : p.hbSent, `traffic of ${t.nickname} is the report's`);
      }
      assert.deepEqual(errors, [], 'no script errors on the page');

      // cut the underlay between h1 and h3: the page changes within 5 s, without a reload
      const t0 = Date.now();
      const cut = await lab.cut(h1, h3);
      const pair = JSON.stringify([n1, n3].sort().join());
      await page.waitForFunction(`(() => {
        const g = [...document.querySelectorAll('#topology g.edge')].find((x) => [x.getAttribute('data-a'), x.getAttribute('data-b')].sort().join() === ${pair});
        return !g || g.getAttribute('data-silent') !== '' || g.getAttribute('data-state') !== 'established';
      })()`, undefined, { timeout: 5000, polling: 100 });
      const took = Date.now() - t0;
      process.stdout.write(`# the cut h1-h3 showed on the page after ${took} ms\n`);
      assert.ok(took <= 5000);
      await page.screenshot({ path: path.join(out, 'cut.png'), fullPage: true });
      const navs = await page.evaluate(`performance.getEntriesByType('navigation').length`);
      assert.equal(navs, 1, 'the page was not reloaded');
      await lab.heal(cut);
    } finally {
      await ctx.close();
    }

    // the logs: each line says each key once; `weave logs` renders the JSON
    const lines = fs.readFileSync(path.join(h1.dataDir, 'weave.log'), 'utf8').trim().split('\n');
    assert.ok(lines.length > 10);
    for (const l of lines) {
      const keys = topLevelKeys(l);
      if (keys) assert.equal(new Set(keys).size, keys.length, `a key twice in: ${l}`);
    }
    const logs = (await h1.weave(['logs', '--run'])).stdout;
    assert.match(logs, /^==== .* weave launch --nickname h1 /);
    assert.match(logs, /INFO  \[router\] router ready /);
  });
});
