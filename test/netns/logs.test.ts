// The router's log file as `weave launch` writes it: a start marker per launch (so `weave logs --run`
// and a failed launch show the current run only), the router rotating it by size, `weave logs`
// rendering the JSON for people and following it across a rotation.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as path from 'path';
import { spawn } from 'child_process';
import { withLab } from '../lab/lab';
import { waitFor } from '../lab/exec';
import { WEAVE_JS } from '../lab/lab';
import { isStartMarker } from '../../lib/log-file';

test('weave launch marks each start, the router rotates its log by size, weave logs renders, --run shows the current run, -f follows a rotation', { timeout: 180_000 }, async () => {
  await withLab(async (lab) => {
    const h = await lab.addHost('h1');
    const log = path.join(h.dataDir, 'weave.log');
    await h.weave(['launch', '--no-fastdp', '--nickname', 'first', '--ipalloc-init', 'consensus=1']);
    await h.weave(['stop']);
    // a small limit and debug lines (the sleeve and mesh log every heartbeat round at debug) fill it fast
    await h.weave(['launch', '--no-fastdp', '--nickname', 'second', '--ipalloc-init', 'consensus=1', '--log-level', 'debug', '--log-max-size', '8K']);
    const follow = spawn('ip', ['netns', 'exec', h.ns, process.execPath, WEAVE_JS, 'logs', '-f'], { env: h.env(), stdio: ['ignore', 'pipe', 'pipe'] });
    let followed = '';
    follow.stdout!.setEncoding('utf8').on('data', (d: string) => { followed += d; });
    try {
      // make lines: each status request is logged at debug by nothing, so poke the API
      await waitFor('the log to rotate', async () => {
        for (let i = 0; i < 20; i++) await h.weave(['connect', `198.18.0.${100 + i}`], { allowFail: true });
        return fs.existsSync(`${log}.1`);
      }, { timeoutMs: 90_000, intervalMs: 500 });
      assert.ok(fs.statSync(log).size < 8192 * 3, `the live file stays near the limit (${fs.statSync(log).size})`);
      const all = (await h.weave(['logs', '--all', '--json'])).stdout.trim().split('\n');
      assert.equal(all.filter(isStartMarker).length, 2, 'one marker per launch across the files');
      const run = (await h.weave(['logs', '--run'])).stdout;
      assert.match(run, /^==== .* weave launch --no-fastdp --nickname second /);
      assert.ok(!run.includes('nickname first'), 'the current run only');
      assert.match(run, /DEBUG|INFO /);
      assert.ok(!run.split('\n').some((l) => l.startsWith('{')), 'rendered, not JSON');
      // -f kept printing after the file was truncated under it
      const lastLine = fs.readFileSync(log, 'utf8').trim().split('\n').at(-1)!;
      const msg = JSON.parse(lastLine).msg as string;
      await waitFor('weave logs -f to print the newest line', () => followed.includes(msg), { timeoutMs: 10_000, intervalMs: 200 });
    } finally {
      follow.kill('SIGKILL');
    }
    await h.weave(['stop']);
  });
});
