// A running router's API under hostile input and other users: the apifuzz battery over TCP and over
// the unix socket (every daemon, IPAM and DNS handler), GET //[, 10 MB bodies; mutating calls only for
// root through the socket, with clear messages for everyone else.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as path from 'path';
import { withLab, Host, WEAVE_JS } from '../lab/lab';
import { apiSocketPath } from '../../api/http';

const APIFUZZ_JS = path.join(__dirname, '..', 'lab', 'apifuzz.js');
const NOBODY = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'];

interface Answer { label: string; target: 'tcp' | 'sock'; status?: number; reset: boolean; timedOut: boolean; text: string }

/** Runs the battery from inside the host's namespace (the TCP API is 127.0.0.1 there), as root or nobody. */
async function fuzz(h: Host, opts: { nobody?: boolean; only?: Array<[string, string, string | undefined]> } = {}): Promise<Answer[]> {
  const script = `
    const { FUZZ_CASES, BIG_CASES, fuzzRequest, rawRequest } = require(${JSON.stringify(APIFUZZ_JS)});
    const targets = { tcp: { host: '127.0.0.1', port: 6784 }, sock: { path: ${JSON.stringify(apiSocketPath(h.dataDir))} } };
    const only = ${JSON.stringify(opts.only ?? null)};
    const cases = only ?? [...FUZZ_CASES, ...BIG_CASES.map(([m, p, b]) => [m, p, b, true])];
    (async () => {
      const out = [];
      for (const [m, p, b, big] of cases) {
        for (const [name, t] of Object.entries(targets)) {
          const r = await rawRequest(t, fuzzRequest(m, p, b), 20000);
          out.push({ label: m + ' ' + p.slice(0, 40) + ' ' + (big ? '10 MB' : String(b ?? '').slice(0, 50)), target: name, status: r.status, reset: r.reset, timedOut: r.timedOut, text: r.text.slice(0, 300) });
        }
      }
      const odd = await rawRequest(targets.tcp, Buffer.from('GET //[ HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n'));
      out.push({ label: 'GET //[', target: 'tcp', status: odd.status, reset: odd.reset, timedOut: odd.timedOut, text: odd.text });
      process.stdout.write(JSON.stringify(out));
    })();`;
  const argv = [...(opts.nobody ? NOBODY : []), process.execPath, '-e', script];
  const r = await h.exec(argv, { timeoutMs: 240_000 });
  return JSON.parse(r.stdout) as Answer[];
}

const show = (a: Answer): string => `${a.target} ${a.label} -> ${a.status ?? '-'}${a.reset ? ' RESET' : ''}${a.timedOut ? ' TIMEOUT' : ''} ${a.text.split('\r\n\r\n')[1] ?? a.text}`;

test('the apifuzz battery against a running router: TCP answers 400/403/404/405/413 only, the socket never 5xx, no reset, the router stays up', async () => {
  await withLab(async (lab) => {
    const h = await lab.addHost('h1');
    const c1 = await lab.addContainer('c1');
    await h.weave(['launch', '--no-fastdp', '--ipalloc-init', 'consensus=1']);
    const answers = await fuzz(h);
    for (const a of answers) {
      assert.ok(a.status !== undefined && !a.reset && !a.timedOut, show(a));
      if (a.target === 'tcp') assert.ok([400, 403, 404, 405, 413].includes(a.status!), show(a));
      else assert.ok(a.status! < 500, show(a));
    }
    const on = (target: string, label: RegExp) => answers.filter((a) => a.target === target && label.test(a.label));
    assert.equal(on('tcp', /^GET \/\/\[/)[0].status, 400);
    // the 500s and accepted nonsense are 400 now; 10 MB bodies 413
    for (const l of [/^POST \/expose null/, /^POST \/hide null/, /^POST \/ipam\/claim .*10\.32\.0\.5\/99/, /^POST \/connect .*"-1"/, /^POST \/connect .*:-5/, /^POST \/connect .*a:99999999/]) {
      const [a] = on('sock', l);
      assert.ok(a, `case ${l}`);
      assert.equal(a.status, 400, show(a));
    }
    for (const a of answers.filter((x) => x.label.includes('10 MB'))) assert.equal(a.status, 413, show(a));
    // nothing of the battery reached the router's state: no targets, nothing attached, still up
    const r = await h.report();
    assert.deepEqual(r.router.targets ?? [], []);
    assert.deepEqual(r.endpoints.attached, []);
    // and the real thing still works through the CLI (the socket)
    await h.weave(['attach', c1.ns]);
    assert.ok(await c1.address());
  });
});

test('mutating calls: nobody gets 403 over TCP and "permission denied: run as root" from the CLI; reading works for anyone; root\'s CLI as before', async () => {
  await withLab(async (lab) => {
    fs.chmodSync(lab.tmp, 0o755); // so only the socket's own mode (0600) keeps nobody out
    const h = await lab.addHost('h1');
    await h.weave(['launch', '--no-fastdp', '--ipalloc-init', 'consensus=1']);
    assert.equal(fs.statSync(apiSocketPath(h.dataDir)).mode & 0o777, 0o600);
    const asNobody = (args: string[]) => h.exec([...NOBODY, process.execPath, WEAVE_JS, ...args], { env: h.env(), allowFail: true, timeoutMs: 30_000 });
    for (const args of [['connect', '198.18.0.99'], ['stop'], ['reset'], ['expose'], ['dns-add', '10.32.0.9', '-h', 'x'], ['rmpeer', 'x']]) {
      const r = await asNobody(args);
      assert.equal(r.code, 1, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /^weave: (permission denied: run as root|must run as root)/, args.join(' '));
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
    }
    const st = await asNobody(['status']);
    assert.equal(st.code, 0, st.stderr);
    assert.match(st.stdout, /Service: router/);
    // the raw API as nobody: TCP refuses every mutating route, the socket cannot be opened
    const only: Array<[string, string, string]> = [['POST', '/connect', '{"peers":["198.18.0.99"]}'], ['POST', '/stop', '{}'], ['POST', '/reset', '{}'], ['POST', '/attach', '{"netns":"x"}']];
    for (const a of await fuzz(h, { nobody: true, only })) {
      if (a.label === 'GET //[') continue;
      if (a.target === 'tcp') {
        assert.equal(a.status, 403, show(a));
        assert.match(a.text, /use the weave CLI as root/);
      } else {
        assert.equal(a.status, undefined, `nobody must not reach the socket: ${show(a)}`);
      }
    }
    assert.deepEqual((await h.report()).router.targets ?? [], [], 'nothing changed');
    // root's CLI: through the socket
    await h.weave(['connect', '198.18.0.99']);
    assert.deepEqual((await h.report()).router.targets, ['198.18.0.99:6783']);
    await h.weave(['forget', '198.18.0.99']);
    await h.weave(['stop']);
  });
});
