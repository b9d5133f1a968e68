// The API server on its own (and with the real IPAM and DNS routes over fakes): nothing a client
// sends crashes it or gets a reset; mutating routes only on the root-only unix socket (403 on TCP);
// 413 for big bodies answered before the close; the socket's mode, stale/live handling and directory
// check; the client's choice between the socket and TCP and its messages.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'events';
import { execFile, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { ApiServer, apiSocketPath, parseTarget, statusOf } from '../../api/http';
import { ApiClient } from '../../api/client';
import { IpamSubsystem, type IpamContext } from '../../ipam/subsystem';
import { parseIpamFlags } from '../../ipam/flags';
import { DnsSubsystem, type DnsContext } from '../../dns/subsystem';
import { parseDnsFlags } from '../../dns/flags';
import { MemoryStore } from '../../ipam/store';
import { realClock } from '../../lib/clock';
import { MemoryLogger, silentLogger } from '../../lib/log';
import { RefusedError, UsageError, WeaveError } from '../../lib/errors';
import { str } from '../../lib/validate';
import { BIG_CASES, FUZZ_CASES, fuzzRequest, rawRequest, type RawAnswer, type Target } from '../lab/apifuzz';

const ME = '02:00:00:00:00:01';
const NOBODY = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'];

interface Served { api: ApiServer; tcp: Target & { host: string; port: number }; sock: string; dir: string; log: MemoryLogger }

/** An ApiServer on 127.0.0.1:<free port> and <tmp>/weave.sock with a few routes of each kind. */
async function withServer(body: (s: Served) => Promise<void>, opts: { mount?: (api: ApiServer, dir: string) => Promise<() => Promise<void>>; requestTimeoutMs?: number } = {}): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'weave-api-'));
  fs.chmodSync(dir, 0o755);
  const log = new MemoryLogger();
  const api = new ApiServer(log, { requestTimeoutMs: opts.requestTimeoutMs });
  api.add('GET', '/status', () => ({ router: { name: ME, dataDir: dir } }));
  api.add('POST', '/echo', ({ body }) => ({ got: str(body, 'x') }));
  api.add('POST', '/boom', () => { throw new TypeError("Cannot read properties of null (reading 'cidrs')"); });
  let unmount: (() => Promise<void>) | undefined;
  try {
    unmount = await opts.mount?.(api, dir);
    const sock = apiSocketPath(dir);
    await api.listenUnix(sock);
    const a = await api.listen('127.0.0.1', 0);
    await body({ api, tcp: { host: '127.0.0.1', port: a.port }, sock, dir, log });
  } finally {
    await api.close();
    await unmount?.();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** The real IPAM (one peer, its own quorum) and DNS (no server) routes over a fake mesh and endpoints. */
async function mountSubsystems(api: ApiServer, dir: string): Promise<() => Promise<void>> {
  const mesh = Object.assign(new EventEmitter(), {
    newGossip: (name: string) => ({ name, gossipUnicast: () => false, gossipBroadcast() {}, gossip() {} }),
    peerNames: () => [ME],
    peerRecords: () => [],
  });
  const endpoints = Object.assign(new EventEmitter(), { list: () => [], exposedAddrs: () => [] });
  const ctx = {
    cfg: { dataDir: dir, peers: [], ipam: parseIpamFlags({ ipallocInit: 'consensus=1', ipallocTimeout: '2' }), dns: parseDnsFlags({ dns: false }) },
    root: silentLogger(), clock: realClock, identity: { name: ME, nickname: 'me', uid: '1' }, mesh, hostCtx: {}, endpoints, announce() {},
  } as unknown as IpamContext & DnsContext;
  const ipam = new IpamSubsystem(ctx, { store: new MemoryStore() });
  await ipam.start();
  const dns = new DnsSubsystem(ctx);
  for (const sub of [ipam, dns]) for (const r of sub.apiRoutes()) api.add(r.method, r.path, r.handler, { text: r.text });
  return async () => {
    await dns.stop();
    await ipam.stop();
  };
}

function show(what: string, r: RawAnswer): string {
  return `${what} -> ${r.status ?? '-'}${r.reset ? ' RESET' : ''}${r.timedOut ? ' TIMEOUT' : ''} ${r.text.split('\r\n\r\n')[1]?.slice(0, 160) ?? r.text.slice(0, 160)}`;
}

/** The JSON error message of an answer. */
function errorOf(r: RawAnswer): string {
  return String(JSON.parse(r.text.slice(r.text.indexOf('\r\n\r\n') + 4)).error);
}

/** Runs argv as nobody (uid 65534) without blocking this process's event loop (the server lives here). */
function asNobody(argv: string[]): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(NOBODY[0], [...NOBODY.slice(1), ...argv], { encoding: 'utf8', timeout: 20_000 }, (_e, stdout, stderr) => resolve({ stdout, stderr }));
  });
}

async function stillServes(t: Target): Promise<void> {
  const r = await rawRequest(t, fuzzRequest('GET', '/status'));
  assert.equal(r.status, 200, show('GET /status afterwards', r));
}

test('parseTarget: origin-form paths only; statusOf: typed errors to 400/404/409/503, the rest 500', () => {
  assert.deepEqual({ ...parseTarget('/dns/lookup?name=a%20b'), query: undefined }, { path: '/dns/lookup', query: undefined });
  assert.equal(parseTarget('/dns/lookup?name=a%20b').query.get('name'), 'a b');
  for (const bad of ['//[', '', '*', 'http://x/status', '/a b', '/\u0000', '/x[1]']) assert.throws(() => parseTarget(bad), UsageError, bad);
  assert.equal(statusOf(new UsageError('x')), 400);
  assert.equal(statusOf(new WeaveError('ENOTFOUND', 'x')), 404);
  assert.equal(statusOf(new RefusedError('ELIVE', 'x')), 409);
  assert.equal(statusOf(new WeaveError('ETIMEDOUT', 'x')), 503);
  assert.equal(statusOf(new WeaveError('EHOST', 'x')), 500);
  assert.equal(statusOf(new TypeError('x')), 500);
});

test('GET //[ and other malformed request lines: 400, and the server keeps serving', async () => {
  await withServer(async ({ tcp, sock }) => {
    for (const t of [tcp, { path: sock }]) {
      for (const raw of ['GET //[ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', 'GARBAGE\r\n\r\n', 'GET /status HTTP/9.9\r\n\r\n', 'GET /status HTTP/1.1\r\nBad Header\r\n\r\n']) {
        const r = await rawRequest(t, Buffer.from(raw));
        assert.equal(r.status, 400, show(JSON.stringify(raw), r));
        assert.ok(!r.reset, show(raw, r));
      }
      await stillServes(t);
    }
  });
});

test('a handler that throws something unexpected: 500 with the error logged, the server stays up', async () => {
  await withServer(async ({ sock, log }) => {
    const r = await rawRequest({ path: sock }, fuzzRequest('POST', '/boom', '{}'));
    assert.equal(r.status, 500, show('boom', r));
    assert.match(r.text, /"code":"EINTERNAL"/);
    assert.ok(log.find((x) => x.level === 'error' && String(x.err).includes('Cannot read properties')), 'logged with the error');
    await stillServes({ path: sock });
  });
});

test('the body must be a JSON object; fields are read by type (400 names the field)', async () => {
  await withServer(async ({ sock }) => {
    const t = { path: sock };
    for (const [body, want] of [['null', /not null/], ['[]', /not a list/], ['"s"', /not a string/], ['{', /not valid JSON/], ['{}', /"x" is missing/], ['{"x":1}', /"x" must be a string/]] as const) {
      const r = await rawRequest(t, fuzzRequest('POST', '/echo', body));
      assert.equal(r.status, 400, show(body, r));
      assert.match(errorOf(r), want);
    }
    const ok = await rawRequest(t, fuzzRequest('POST', '/echo', '{"x":"y"}'));
    assert.equal(ok.status, 200);
    assert.match(ok.text, /"got":"y"/);
  });
});

test('mutating routes: 403 on TCP (the message says to use the CLI as root), served on the unix socket; GETs on both', async () => {
  await withServer(async ({ tcp, sock }) => {
    const r = await rawRequest(tcp, fuzzRequest('POST', '/echo', '{"x":"y"}'));
    assert.equal(r.status, 403, show('POST over TCP', r));
    assert.match(errorOf(r), /only served on its unix socket .*weave\.sock: use the weave CLI as root/);
    assert.equal((await rawRequest({ path: sock }, fuzzRequest('POST', '/echo', '{"x":"y"}'))).status, 200);
    assert.equal((await rawRequest(tcp, fuzzRequest('GET', '/status'))).status, 200);
    assert.equal((await rawRequest(tcp, fuzzRequest('PUT', '/echo', '{}'))).status, 405);
    assert.equal((await rawRequest(tcp, fuzzRequest('POST', '/nope', '{}'))).status, 404);
  });
});

test('bodies over 1 MiB: 413 answered before the close (declared, chunked, 10 MB streamed), no reset; the server keeps serving', async () => {
  await withServer(async ({ tcp, sock }) => {
    for (const t of [{ path: sock }, tcp]) {
      for (const [m, p, b] of BIG_CASES) {
        const r = await rawRequest(t, fuzzRequest(m, p, b));
        assert.equal(r.status, 413, show(`${m} ${p} 10 MB`, r));
        assert.ok(!r.reset, show('10 MB', r));
      }
      // chunked, no length declared: found while reading
      const chunk = Buffer.alloc(256 << 10, 'a');
      const parts = [Buffer.from('POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n')];
      for (let i = 0; i < 8; i++) parts.push(Buffer.from(`${chunk.length.toString(16)}\r\n`), chunk, Buffer.from('\r\n'));
      parts.push(Buffer.from('0\r\n\r\n'));
      const r = await rawRequest(t, Buffer.concat(parts));
      assert.equal(r.status, 413, show('chunked 2 MB', r));
      assert.ok(!r.reset);
      // Expect: 100-continue with a big declared length: refused before the body is sent
      const e = await rawRequest(t, Buffer.from('POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 50000000\r\n\r\n'));
      assert.equal(e.status, 413, show('expect 100-continue', e));
      await stillServes(t);
    }
  });
});

test('a client that keeps sending after its 413 is cut off after a bounded drain (64 MiB), not read forever', async () => {
  await withServer(async ({ sock }) => {
    const s = net.connect(sock);
    await new Promise<void>((resolve) => s.once('connect', () => resolve()));
    let answer = '';
    s.on('data', (c: Buffer) => { answer += c.toString('latin1'); });
    s.on('error', () => undefined); // the cut shows as EPIPE/ECONNRESET on a write
    const chunk = Buffer.alloc(1 << 20, 'a');
    let sent = 0;
    const write = (b: Buffer): Promise<boolean> => new Promise((resolve) => s.write(b, (e) => resolve(!e)));
    await write(Buffer.from(`POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: ${1 << 30}\r\n\r\n`));
    while (sent < (512 << 20) && !s.destroyed && (await write(chunk))) sent += chunk.length;
    assert.match(answer, /^HTTP\/1\.1 413 /);
    assert.ok(sent < 128 << 20, `cut off after ${sent >> 20} MiB`);
    s.destroy();
    await stillServes({ path: sock });
  });
});

test('a body that stalls: 408 after the request timeout, the connection closed', async () => {
  await withServer(async ({ sock }) => {
    const t0 = Date.now();
    const r = await rawRequest({ path: sock }, Buffer.from('POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"x"'), 8000);
    assert.equal(r.status, 408, show('stalled', r));
    assert.ok(Date.now() - t0 < 6000);
    await stillServes({ path: sock });
  }, { requestTimeoutMs: 1000 });
});

test('apifuzz battery against the IPAM and DNS routes: TCP answers only 400/403/404/405/413, the socket never 5xx, nothing resets', async () => {
  await withServer(async ({ tcp, sock }) => {
    const cases: Array<[string, string, string | Buffer | undefined]> = [...FUZZ_CASES, ...BIG_CASES];
    for (const [m, p, b] of cases) {
      const label = `${m} ${p.slice(0, 40)} ${(b ?? '').slice(0, 40)}`;
      const overTcp = await rawRequest(tcp, fuzzRequest(m, p, b));
      assert.ok(overTcp.status !== undefined && [400, 403, 404, 405, 413].includes(overTcp.status) && !overTcp.reset, show(`TCP ${label}`, overTcp));
      const overSock = await rawRequest({ path: sock }, fuzzRequest(m, p, b));
      assert.ok(overSock.status !== undefined && overSock.status < 500 && !overSock.reset, show(`socket ${label}`, overSock));
    }
    // the ones the issue saw answered 500 or accepted
    const claim = await rawRequest({ path: sock }, fuzzRequest('POST', '/ipam/claim', '{"ident":"fz2","addr":"10.32.0.5/99"}'));
    assert.equal(claim.status, 400, show('claim /99', claim));
    const prime = await rawRequest({ path: sock }, fuzzRequest('POST', '/prime', '{"timeoutMs":1e308}'));
    assert.equal(prime.status, 400, show('prime 1e308', prime));
    await stillServes(tcp);
    await stillServes({ path: sock });
  }, { mount: mountSubsystems });
});

test('the unix socket: 0600, root only (a non-root process gets EACCES); a stale one is replaced, a live one refused; a group-writable dir refused', async () => {
  await withServer(async ({ sock, dir, tcp }) => {
    assert.equal(fs.statSync(sock).mode & 0o777, 0o600);
    const script = `require('net').connect(${JSON.stringify(sock)}).on('connect',()=>{console.log('connected');process.exit(0)}).on('error',e=>{console.log(e.code);process.exit(0)})`;
    const r = await asNobody([process.execPath, '-e', script]);
    assert.equal(r.stdout.trim(), 'EACCES', r.stderr);
    // another server on the same live socket is refused
    const other = new ApiServer(silentLogger());
    await assert.rejects(other.listenUnix(sock), /another router serves the API socket/);
    assert.ok(fs.existsSync(sock), 'the live socket stays');
    // a stale socket (nobody listening) is removed and replaced
    const staleDir = path.join(dir, 'stale');
    fs.mkdirSync(staleDir, { mode: 0o755 });
    const stale = path.join(staleDir, 'weave.sock');
    // what a router killed with -9 leaves behind
    spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(stale)}, () => process.kill(process.pid, 'SIGKILL'))`]);
    assert.ok(fs.lstatSync(stale).isSocket());
    const again = new ApiServer(silentLogger());
    await again.listenUnix(stale);
    await again.close();
    assert.ok(!fs.existsSync(stale), 'removed on close');
    // a socket in a directory others can write to could be swapped: refused
    const open = path.join(dir, 'open');
    fs.mkdirSync(open);
    fs.chmodSync(open, 0o777);
    await assert.rejects(new ApiServer(silentLogger()).listenUnix(path.join(open, 'weave.sock')), /writable by group or others .* chmod go-w/);
    // a regular file where the socket should be is not deleted
    fs.writeFileSync(path.join(staleDir, 'weave.sock'), 'precious');
    await assert.rejects(new ApiServer(silentLogger()).listenUnix(path.join(staleDir, 'weave.sock')), /is not a socket/);
    assert.equal(fs.readFileSync(path.join(staleDir, 'weave.sock'), 'utf8'), 'precious');
    void tcp;
  });
});

test('ApiClient: the socket for everything; GETs fall back to TCP; a mutating call says why it cannot (no router there, not root)', async () => {
  await withServer(async ({ tcp, sock, dir }) => {
    const viaSock = new ApiClient({ socketPath: sock, dataDir: dir, host: tcp.host, port: tcp.port });
    assert.deepEqual(await viaSock.request('POST', '/echo', { x: 'a' }), { got: 'a' });
    const elsewhere = new ApiClient({ socketPath: '/nonexistent/weave.sock', dataDir: '/nonexistent', host: tcp.host, port: tcp.port });
    assert.equal((await elsewhere.request<any>('GET', '/status')).router.name, ME, 'GET falls back to TCP');
    await assert.rejects(elsewhere.request('POST', '/echo', { x: 'a' }), (e: unknown) => e instanceof WeaveError && e.code === 'ENOTRUNNING'
      && /no router running with data dir \/nonexistent/.test(e.message) && e.message.includes(`set WEAVE_DATA_DIR=${dir}`));
    const nothing = new ApiClient({ socketPath: '/nonexistent/weave.sock', dataDir: '/nonexistent', host: '127.0.0.1', port: 1 });
    await assert.rejects(nothing.request('GET', '/status'), /no router running with data dir \/nonexistent/);
    // not root: the socket refuses; GETs still work over TCP, a POST says to run as root
    const client = path.join(__dirname, '..', '..', 'api', 'client.js');
    const script = `const { ApiClient } = require(${JSON.stringify(client)});
      const c = new ApiClient({ socketPath: ${JSON.stringify(sock)}, dataDir: ${JSON.stringify(dir)}, host: '127.0.0.1', port: ${tcp.port} });
      (async () => {
        const s = await c.request('GET', '/status');
        let err = '';
        try { await c.request('POST', '/echo', { x: 'a' }); } catch (e) { err = e.message; }
        console.log(JSON.stringify({ name: s.router.name, err }));
      })().catch((e) => { console.log(JSON.stringify({ fatal: e.message })); });`;
    const r = await asNobody([process.execPath, '-e', script]);
    const out = JSON.parse(r.stdout);
    assert.equal(out.name, ME, r.stdout + r.stderr);
    assert.match(out.err, /^permission denied: run as root/);
  });
});
