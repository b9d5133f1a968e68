// The plugin executable (cni/shim/weave-net.c, built by scripts/build-cni.js) against a fake router:
// what it sends (every CNI_* variable and stdin byte for byte, nothing else), what it prints and
// exits with, where it connects (the configuration's socket, then its api, then the defaults), and
// what it answers alone: VERSION, and code 50/11/6 when no router answers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as http from 'http';
import * as os from 'os';
import * as path from 'path';
import { builtShim } from '../../cni/setup';
import { SUPPORTED_VERSIONS } from '../../cni/spec';

const SHIM = builtShim();

interface Run { code: number | null; stdout: string; stderr: string; ms: number }

function runShim(env: Record<string, string>, stdin: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const c = spawn(SHIM, [], { env: { PATH: '/usr/bin:/bin', ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
    c.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    c.on('error', reject);
    c.on('close', (code) => resolve({ code, stdout, stderr, ms: Number(process.hrtime.bigint() - t0) / 1e6 }));
    c.stdin.end(stdin);
  });
}

interface Seen { method?: string; url?: string; body?: any }

/** A fake router answering POST /cni with `reply` (status 200 unless given). */
function fakeRouter(reply: (body: any) => { status?: number; text: string }): { server: http.Server; seen: Seen[] } {
  const seen: Seen[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      seen.push({ method: req.method, url: req.url, body });
      const r = reply(body);
      res.writeHead(r.status ?? 200, { 'content-type': 'text/plain' });
      res.end(r.text);
    });
  });
  return { server, seen };
}

function listenTcp(s: http.Server): Promise<number> {
  return new Promise((resolve) => s.listen(0, '127.0.0.1', () => resolve((s.address() as { port: number }).port)));
}

function listenUnix(s: http.Server, file: string): Promise<void> {
  return new Promise((resolve) => s.listen(file, () => resolve()));
}

const close = (s: http.Server) => new Promise<void>((r) => s.close(() => r()));

test('the shim exists (npm run build made it)', () => {
  assert.ok(fs.existsSync(SHIM), `${SHIM} is missing: run npm run build (it needs gcc)`);
});

test('VERSION is answered by the shim alone, from the versions compiled in from cni/spec.ts', async () => {
  const r = await runShim({ CNI_COMMAND: 'VERSION' }, '{"cniVersion":"0.4.0"}');
  assert.equal(r.code, 0);
  assert.deepEqual(JSON.parse(r.stdout), { cniVersion: '1.1.0', supportedVersions: [...SUPPORTED_VERSIONS] });
});

test('over TCP ("api"): every CNI_* variable and stdin exactly as given; the reply printed and its status the exit code', async () => {
  const { server, seen } = fakeRouter((b) => ({ text: b.env.CNI_COMMAND === 'ADD' ? '0\n{"cniVersion":"1.0.0","ips":[]}\n' : '1\n{"code":7}\n' }));
  const port = await listenTcp(server);
  try {
    const conf = JSON.stringify({ cniVersion: '1.0.0', name: 'weave', type: 'weave-net', socket: '/nonexistent/weave.sock', api: `127.0.0.1:${port}`, note: 'quote " backslash \\ tab \t nul-free ünïcödé ✓\n' });
    const env = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c1', CNI_NETNS: '/var/run/netns/x', CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin', CNI_ARGS: 'K8S_POD_NAME=a;B="q"', HOME: '/root', NOT_CNI: 'x' };
    const r = await runShim(env, conf);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.equal(r.stdout, '{"cniVersion":"1.0.0","ips":[]}\n');
    assert.equal(seen.length, 1);
    assert.equal(seen[0].method, 'POST');
    assert.equal(seen[0].url, '/cni');
    assert.equal(seen[0].body.stdin, conf, 'stdin arrives byte for byte');
    assert.deepEqual(seen[0].body.env, { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c1', CNI_NETNS: '/var/run/netns/x', CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin', CNI_ARGS: 'K8S_POD_NAME=a;B="q"' });
    const d = await runShim({ ...env, CNI_COMMAND: 'DEL' }, conf);
    assert.equal(d.code, 1);
    assert.equal(d.stdout, '{"code":7}\n');
  } finally {
    await close(server);
  }
});

test('the configuration\'s socket is tried first; a router that refuses the request gives code 999 with its words', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'weave-shim-'));
  const sock = path.join(dir, 'weave.sock');
  const { server, seen } = fakeRouter(() => ({ status: 400, text: '{"error":"\\"env\\" must be an object","code":"EUSAGE"}' }));
  await listenUnix(server, sock);
  try {
    const conf = JSON.stringify({ cniVersion: '0.4.0', name: 'weave', type: 'weave-net', socket: sock, api: '127.0.0.1:1' });
    const r = await runShim({ CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'c1', CNI_IFNAME: 'eth0', CNI_PATH: '/x' }, conf);
    assert.equal(seen.length, 1, 'the socket was used');
    assert.equal(r.code, 1);
    const e = JSON.parse(r.stdout);
    assert.equal(e.cniVersion, '0.4.0');
    assert.equal(e.code, 999);
    assert.match(e.details, /must be an object/);
  } finally {
    await close(server);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('no router: STATUS is code 50, other commands code 11 naming what was tried, stdin that is not JSON code 6', async () => {
  const conf = JSON.stringify({ cniVersion: '1.1.0', name: 'weave', type: 'weave-net', socket: '/nonexistent/weave.sock', api: '127.0.0.1:1' });
  const st = await runShim({ CNI_COMMAND: 'STATUS', CNI_PATH: '/x' }, conf);
  assert.equal(st.code, 1);
  const s = JSON.parse(st.stdout);
  assert.equal(s.code, 50);
  assert.equal(s.cniVersion, '1.1.0');
  const add = JSON.parse((await runShim({ CNI_COMMAND: 'ADD', CNI_PATH: '/x' }, conf)).stdout);
  assert.equal(add.code, 11);
  assert.match(add.msg, /try again later/);
  assert.match(add.details, /\/nonexistent\/weave\.sock \(No such file or directory\); 127\.0\.0\.1:1 \(Connection refused\)/);
  const bad = await runShim({ CNI_COMMAND: 'ADD', CNI_PATH: '/x' }, '{"cniVersion": "1.0.0", oops}');
  assert.equal(bad.code, 1);
  assert.equal(JSON.parse(bad.stdout).code, 6);
  assert.equal(JSON.parse(bad.stdout).cniVersion, '1.1.0', 'an unreadable configuration gets the latest version');
  const odd = JSON.parse((await runShim({ CNI_COMMAND: 'DEL' }, JSON.stringify({ cniVersion: '7.0.0', socket: '/nonexistent/weave.sock', api: 'not-an-address' }))).stdout);
  assert.equal(odd.code, 11);
  assert.equal(odd.cniVersion, '1.1.0', 'an unsupported version is not echoed');
  assert.match(odd.details, /not-an-address \(not an IPv4 HOST:PORT\)/);
});

test('the shim starts fast: VERSION costs a fraction of a Node start-up, measured side by side', async () => {
  // Absolute times mean nothing on a loaded shared machine; the shim against `node -e 0`, spawned
  // alternately by the same loop, is what the C shim was chosen for (README: CNI, "Why C").
  const shim: number[] = [];
  const node: number[] = [];
  for (let i = 0; i < 15; i++) {
    shim.push((await runShim({ CNI_COMMAND: 'VERSION' }, '')).ms);
    const t0 = process.hrtime.bigint();
    await new Promise<void>((resolve, reject) => {
      const c = spawn(process.execPath, ['-e', '0'], { stdio: 'ignore' });
      c.on('error', reject);
      c.on('close', () => resolve());
    });
    node.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  const median = (xs: number[]): number => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  assert.ok(median(shim) < median(node) / 3, `shim median ${median(shim).toFixed(1)} ms, node -e 0 median ${median(node).toFixed(1)} ms`);
});
