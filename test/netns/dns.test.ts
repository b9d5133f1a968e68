// weaveDNS end to end on real kernels: three lab hosts run routers (`weave launch --no-fastdp`, only the
// CLI), containers attached with `weave attach ... -h NAME` query their own host's server at
// 169.254.53.53 with real clients (dig, kdig, getent through /etc/netns/NS/resolv.conf written by
// attach). An upstream resolver (dnsmasq from Debian) runs in a fourth namespace on the underlay and is
// the hosts' upstream through /etc/netns/<host>/resolv.conf (bind-mounted by `ip netns exec`).
//
// The tests in the describe block share one lab and run in order: each states what it starts from.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import { Container, Host, Lab, withLab } from '../lab/lab';
import { RunResult, run, waitFor } from '../lab/exec';

const DNS = '169.254.53.53';

interface Dig {
  status: string;
  flags: string[];
  answers: Array<{ name: string; type: string; data: string }>;
  raw: string;
}

function parseDig(r: RunResult): Dig {
  const raw = r.stdout;
  const status = /status: (\w+)/.exec(raw)?.[1] ?? `no answer (exit ${r.code}): ${raw.trim().split('\n').pop() ?? ''}`;
  const flags = (/;; [Ff]lags: ([^;]*);/.exec(raw)?.[1] ?? '').trim().split(/\s+/).filter(Boolean);
  const answers: Dig['answers'] = [];
  const lines = raw.split('\n');
  const i = lines.findIndex((l) => l.startsWith(';; ANSWER SECTION:'));
  if (i >= 0) {
    for (const l of lines.slice(i + 1)) {
      if (!l.trim() || l.startsWith(';;')) break;
      const f = l.trim().split(/\s+/);
      answers.push({ name: f[0], type: f[3], data: f.slice(4).join(' ') });
    }
  }
  return { status, flags, answers, raw };
}

type Runner = (argv: string[]) => Promise<RunResult>;
const inNs = (x: Host | Container): Runner => (argv) => x.exec(argv, { allowFail: true, timeoutMs: 20_000 });

async function dig(where: Runner, args: string[], server = DNS): Promise<Dig> {
  return parseDig(await where(['dig', `@${server}`, '+tries=1', '+timeout=3', ...args]));
}

async function kdig(where: Runner, args: string[], server = DNS): Promise<Dig> {
  return parseDig(await where(['kdig', `@${server}`, '+retry=0', '+timeout=3', ...args]));
}

const addrsOf = (d: Dig): string[] => d.answers.filter((a) => a.type === 'A').map((a) => a.data);
const sorted = (a: string[]): string[] => [...a].sort();

/** Polls until `name` has exactly `want` (sorted) as A answers from `where`'s server; returns the ms it took. */
async function waitAnswers(where: Runner, name: string, want: string[], what: string, timeoutMs = 15_000): Promise<number> {
  const t0 = Date.now();
  let last: Dig | undefined;
  await waitFor(what, async () => {
    last = await dig(where, [name, 'A']);
    if (want.length === 0) return last.status === 'NXDOMAIN';
    return last.status === 'NOERROR' && JSON.stringify(sorted(addrsOf(last))) === JSON.stringify(sorted(want));
  }, { timeoutMs, intervalMs: 50 }).catch((e: Error) => {
    throw new Error(`${e.message}; last answer: ${last?.status} ${addrsOf(last ?? parseDig({ code: 0, signal: null, stdout: '', stderr: '' })).join(',')}`);
  });
  return Date.now() - t0;
}

async function launch(h: Host, peers: string[], extra: string[] = []): Promise<string> {
  const r = await h.weave(['launch', '--no-fastdp', '--nickname', h.name, ...extra, ...peers]);
  return r.stdout.trim();
}

async function waitMesh(hosts: Host[], n: number): Promise<void> {
  for (const h of hosts) {
    await waitFor(`${h.name} to have ${n} established connections`, async () => {
      const rep = await h.report();
      return rep.router.connections.filter((c: any) => c.state === 'established').length === n;
    }, { timeoutMs: 30_000, intervalMs: 200 });
  }
}

describe('weaveDNS across three hosts', () => {
  let lab: Lab;
  let h1: Host, h2: Host, h3: Host, up: Host;
  let c1: Container, c2: Container, c3: Container;
  let names: string[] = [];
  let dnsmasq: ChildProcess | undefined;
  const bigAddrs = Array.from({ length: 60 }, (_, i) => `10.33.0.${i + 1}`);
  const multi = ['10.32.2.10', '10.32.2.11', '10.32.2.12', '10.32.2.13', '10.32.2.14'];

  before(async () => {
    lab = await Lab.create();
    [h1, h2, h3] = [await lab.addHost('h1'), await lab.addHost('h2'), await lab.addHost('h3')];
    up = await lab.addHost('resolver');
    // the hosts' upstream resolver: dnsmasq, one A+PTR record, nothing else (no /etc files read)
    dnsmasq = spawn('ip', ['netns', 'exec', up.ns, 'dnsmasq', '-k', '--conf-file=/dev/null', '--no-resolv', '--no-hosts',
      '--bind-interfaces', `--listen-address=${up.ip}`, '--host-record=ext.example.test,192.0.2.7', `--pid-file=${lab.tmp}/dnsmasq.pid`,
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    await waitFor('dnsmasq to answer', async () => (await dig(inNs(up), ['ext.example.test'], up.ip)).status === 'NOERROR', { timeoutMs: 10_000, intervalMs: 100 });
    for (const h of [h1, h2, h3]) {
      fs.mkdirSync(`/etc/netns/${h.ns}`, { recursive: true });
      fs.writeFileSync(`/etc/netns/${h.ns}/resolv.conf`, `nameserver ${up.ip}\nnameserver ${DNS}\n`);
    }
    names = [await launch(h1, []), await launch(h2, [h1.ip]), await launch(h3, [h1.ip])];
    await waitMesh([h1, h2, h3], 2);
    [c1, c2, c3] = [await lab.addContainer('c1'), await lab.addContainer('c2'), await lab.addContainer('c3')];
    await h2.weave(['attach', '10.32.2.1/12', c2.ns]);
    await h3.weave(['attach', '10.32.3.1/12', c3.ns]);
  });

  after(async () => {
    if (dnsmasq && dnsmasq.exitCode === null) dnsmasq.kill('SIGKILL');
    await lab?.cleanup();
  });

  test('a container attached on h1 with -h resolves from h3 within seconds, by dig and getent', async (t) => {
    const t0 = Date.now();
    await h1.weave(['attach', '10.32.1.1/12', c1.ns, '-h', 'web']);
    const attachMs = Date.now() - t0;
    const ms = await waitAnswers(inNs(c3), 'web.weave.local', ['10.32.1.1'], 'web from c3');
    t.diagnostic(`attach took ${attachMs} ms; h1 -> h3 propagation (attach returned -> dig from c3 answers): ${ms} ms`);
    assert.ok(ms < 5000, `propagation ${ms} ms`);

    // attach wrote the container's resolv.conf: unqualified names go through the search domain
    const rc = fs.readFileSync(`/etc/netns/${c3.ns}/resolv.conf`, 'utf8');
    assert.match(rc, new RegExp(`^nameserver ${DNS.replace(/\./g, '\\.')}$`, 'm'));
    assert.match(rc, /^search weave\.local$/m);
    assert.match(rc, /^options ndots:1$/m);
    const g = await c3.exec(['getent', 'hosts', 'web'], { allowFail: true });
    assert.equal(g.code, 0, g.stderr);
    assert.match(g.stdout, /^10\.32\.1\.1\s+web\.weave\.local/m);
    // the route to the DNS address is on-link through ethwe
    const rt = await run(['ip', '-n', c3.ns, 'route', 'get', DNS]);
    assert.match(rt.stdout, /dev ethwe/);

    await h1.weave(['dns-add', '10.32.1.2', '-h', 'web.weave.local']);
    const ms2 = await waitAnswers(inNs(c3), 'web.weave.local', ['10.32.1.1', '10.32.1.2'], 'web with 2 addresses from c3');
    t.diagnostic(`dns-add on h1 -> answer in c3: ${ms2} ms after the CLI returned`);
    await waitAnswers(inNs(c2), 'web.weave.local', ['10.32.1.1', '10.32.1.2'], 'web with 2 addresses from c2');

    const lk = await h3.weave(['dns-lookup', 'web']);
    assert.deepEqual(sorted(lk.stdout.trim().split('\n')), ['10.32.1.1', '10.32.1.2']);
    const st3 = (await h3.weave(['status', 'dns'])).stdout;
    assert.match(st3, new RegExp(`^web\\.weave\\.local\\.\\s+10\\.32\\.1\\.1\\s+${names[0]}\\s`, 'm'));
    const st1 = (await h1.weave(['status', 'dns'])).stdout;
    assert.match(st1, new RegExp(`^web\\.weave\\.local\\.\\s+10\\.32\\.1\\.1\\s+${names[0]}\\s+${c1.ns}$`, 'm'), st1);
    assert.match(st1, new RegExp(`^web\\.weave\\.local\\.\\s+10\\.32\\.1\\.2\\s+${names[0]}\\s+-$`, 'm'), st1);
    const sum = (await h1.weave(['status'])).stdout;
    assert.match(sum, /Service: dns/);
    assert.match(sum, /Domain: weave\.local\./);
    assert.match(sum, /Entries: 2/);
    const metrics = await h1.httpGet('/metrics');
    assert.match(metrics, /^weave_dns_entries\{state="live"\} 2$/m);
  });

  test('answers: round robin, any case, PTR, NXDOMAIN vs NOERROR-empty, 60 addresses: TC over UDP, whole over TCP', async () => {
    await h2.weave(['dns-add', ...multi, '-h', 'multi']);
    await waitAnswers(inNs(c3), 'multi.weave.local', multi, 'multi from c3');
    const orders = new Set<string>();
    const firsts = new Set<string>();
    for (let i = 0; i < 20; i++) {
      const a = addrsOf(await dig(inNs(c3), ['multi.weave.local']));
      assert.deepEqual(sorted(a), multi);
      orders.add(a.join(','));
      firsts.add(a[0]);
    }
    assert.ok(orders.size >= 5, `only ${orders.size} different orders in 20 answers`);
    assert.ok(firsts.size >= 3, `only ${firsts.size} different first addresses in 20 answers`);

    const mixed = await dig(inNs(c3), ['WeB.WeAvE.LoCaL']);
    assert.equal(mixed.status, 'NOERROR');
    assert.deepEqual(sorted(addrsOf(mixed)), ['10.32.1.1', '10.32.1.2']);
    assert.ok(mixed.answers.every((a) => a.name === 'WeB.WeAvE.LoCaL.'), 'the answer keeps the question\'s case');
    assert.ok(mixed.flags.includes('aa'), 'authoritative for its domain');

    const ptr = await dig(inNs(c3), ['-x', '10.32.1.1']);
    assert.equal(ptr.status, 'NOERROR');
    assert.deepEqual(ptr.answers.map((a) => [a.type, a.data]), [['PTR', 'web.weave.local.']]);

    const nx = await dig(inNs(c3), ['nope.weave.local']);
    assert.equal(nx.status, 'NXDOMAIN');
    const aaaa = await dig(inNs(c3), ['web.weave.local', 'AAAA']);
    assert.equal(aaaa.status, 'NOERROR');
    assert.equal(aaaa.answers.length, 0);

    await h2.weave(['dns-add', ...bigAddrs, '-h', 'big.weave.local']);
    await waitFor('big to reach h3 with 60 addresses', async () => addrsOf(await kdig(inNs(c3), ['+tcp', 'big.weave.local'])).length === 60, { timeoutMs: 15_000, intervalMs: 50 });
    const udp = await dig(inNs(c3), ['+noedns', '+ignore', 'big.weave.local']);
    assert.equal(udp.status, 'NOERROR');
    assert.ok(udp.flags.includes('tc'), `TC set over UDP: ${udp.flags.join(' ')}`);
    assert.ok(addrsOf(udp).length < 60, `UDP answer carries ${addrsOf(udp).length}`);
    const tcp = await kdig(inNs(c3), ['+tcp', 'big.weave.local']);
    assert.equal(tcp.status, 'NOERROR');
    assert.ok(!tcp.flags.includes('tc'));
    assert.deepEqual(sorted(addrsOf(tcp)), sorted(bigAddrs));
    // dig's default: EDNS 1232, so TC and then its own TCP retry gets all 60
    assert.equal(addrsOf(await dig(inNs(c3), ['big.weave.local'])).length, 60);
  });

  test('expose/hide on the weave bridge leave the DNS address alone', async () => {
    await h2.weave(['expose', '10.32.2.200/12']);
    await h2.weave(['hide']);
    const a = await run(['ip', '-n', h2.ns, '-j', 'addr', 'show', 'dev', 'weave']);
    const locals = JSON.parse(a.stdout)[0].addr_info.filter((x: any) => x.family === 'inet').map((x: any) => `${x.local}/${x.label}`);
    assert.deepEqual(locals, [`${DNS}/weave:dns`]);
    assert.deepEqual(sorted(addrsOf(await dig(inNs(c2), ['multi.weave.local']))), multi);
  });

  test('attach -h on an attached container names it; another -h renames it', async () => {
    await h2.weave(['attach', '10.32.2.1/12', c2.ns, '-h', 'db']);
    await waitAnswers(inNs(c3), 'db.weave.local', ['10.32.2.1'], 'db from c3');
    await h2.weave(['attach', '10.32.2.1/12', c2.ns, '-h', 'db2.weave.local']);
    await waitAnswers(inNs(c3), 'db2.weave.local', ['10.32.2.1'], 'db2 from c3');
    await waitAnswers(inNs(c3), 'db.weave.local', [], 'db gone from c3');
  });

  test('other names go to the host\'s upstream (dnsmasq); SERVFAIL in bounded time when it is down', async (t) => {
    const ext = await dig(inNs(c3), ['ext.example.test']);
    assert.equal(ext.status, 'NOERROR');
    assert.deepEqual(addrsOf(ext), ['192.0.2.7']);
    const rev = await dig(inNs(c3), ['-x', '192.0.2.7']);
    assert.equal(rev.status, 'NOERROR', 'a reverse lookup outside the overlay goes upstream');
    assert.deepEqual(rev.answers.map((a) => a.data), ['ext.example.test.']);
    const rep = await h3.report();
    assert.deepEqual(rep.dns.upstream, [up.ip], 'our own address is never an upstream');
    assert.ok(rep.dns.counters.forwarded >= 2);

    const pid = dnsmasq!.pid!;
    const exited = new Promise((r) => dnsmasq!.once('exit', r));
    process.kill(pid, 'SIGKILL');
    await exited;
    const t0 = Date.now();
    const down = await dig(inNs(c3), ['+timeout=8', 'other.example.test']);
    const ms = Date.now() - t0;
    t.diagnostic(`SERVFAIL with the upstream down after ${ms} ms (dig process included)`);
    assert.equal(down.status, 'SERVFAIL');
    assert.ok(ms < 3000, `SERVFAIL took ${ms} ms`);
    // our own names do not depend on the upstream
    assert.equal((await dig(inNs(c3), ['web.weave.local'])).status, 'NOERROR');
  });

  test('fuzzed packets at the DNS port leave the server answering', async () => {
    const script = `
      const dgram = require('dgram'), net = require('net'), c = require('crypto');
      const name = Buffer.from([3,119,101,98,5,119,101,97,118,101,5,108,111,99,97,108,0]);
      const q = Buffer.concat([Buffer.from([0x12,0x34,1,0,0,1,0,0,0,0,0,0]), name, Buffer.from([0,1,0,1])]);
      const s = dgram.createSocket('udp4');
      let i = 0;
      const N = 4000;
      const next = () => {
        if (i >= N) return tcp();
        let b;
        if (i % 2) b = c.randomBytes(c.randomInt(0, 700));
        else {
          b = Buffer.from(q);
          for (let k = 0; k < 3; k++) b[c.randomInt(0, b.length)] = c.randomInt(0, 256);
          if (i % 4 === 0) b = b.subarray(0, c.randomInt(0, b.length));
        }
        i++;
        s.send(b, 53, '${DNS}', next);
      };
      let open = 0;
      const tcp = () => {
        s.close();
        for (let j = 0; j < 40; j++) {
          open++;
          const k = net.connect(53, '${DNS}', () => {
            const junk = j % 2 ? c.randomBytes(c.randomInt(1, 3000)) : Buffer.concat([Buffer.from([0xff, 0xff]), c.randomBytes(100)]);
            k.end(junk);
          });
          k.on('error', () => {});
          k.on('close', () => { if (--open === 0) process.stdout.write('sent ' + i + '\\n'); });
          k.resume();
        }
      };
      next();`;
    const r = await c3.exec([process.execPath, '-e', script], { timeoutMs: 30_000 });
    assert.match(r.stdout, /sent 4000/);
    assert.deepEqual(sorted(addrsOf(await dig(inNs(c3), ['web.weave.local']))), ['10.32.1.1', '10.32.1.2']);
    assert.deepEqual(sorted(addrsOf(await kdig(inNs(c3), ['+tcp', 'multi.weave.local']))), multi);
    const rep = await h3.report();
    assert.ok(rep.dns.counters.malformed > 100, `malformed counted: ${rep.dns.counters.malformed}`);
    assert.match((await h3.weave(['status'])).stdout, /Service: dns/, 'the router is still up');
  });

  test('dns-remove and detach make the name NXDOMAIN on every host; detach removes the resolv.conf it wrote', async (t) => {
    await h1.weave(['dns-remove', '10.32.1.2', '-h', 'web']);
    await waitAnswers(inNs(c3), 'web.weave.local', ['10.32.1.1'], 'web down to one address on h3');
    assert.ok(fs.existsSync(`/etc/netns/${c1.ns}/resolv.conf`));
    const t0 = Date.now();
    await h1.weave(['detach', c1.ns]);
    for (const h of [h1, h2, h3]) await waitAnswers(inNs(h), 'web.weave.local', [], `web NXDOMAIN from ${h.name}`);
    t.diagnostic(`detach on h1 -> NXDOMAIN on all three hosts: ${Date.now() - t0} ms`);
    // no longer ours, so the reverse lookup goes upstream (down since the forwarding test): no PTR from us
    assert.deepEqual((await dig(inNs(c2), ['-x', '10.32.1.1'])).answers, []);
    assert.ok(!fs.existsSync(`/etc/netns/${c1.ns}/resolv.conf`), 'resolv.conf removed on detach');
    const rm = await h1.weave(['dns-remove', '10.32.1.2'], { allowFail: true });
    assert.notEqual(rm.code, 0, 'removing a record that is not there fails');
  });

  test('restarted routers get their records back: dns-add records (stop + launch) and a container\'s (kill -9)', async (t) => {
    await h1.weave(['attach', '10.32.1.1/12', c1.ns, '-h', 'web']);
    await waitAnswers(inNs(c3), 'web.weave.local', ['10.32.1.1'], 'web again on h3');

    await h2.weave(['stop']);
    const t0 = Date.now();
    await waitAnswers(inNs(c3), 'multi.weave.local', [], 'h2\'s records dropped by h3 once h2 left', 30_000);
    t.diagnostic(`h2 stopped -> its records gone from h3: ${Date.now() - t0} ms`);
    const t1 = Date.now();
    await launch(h2, [h1.ip]);
    const launchMs = Date.now() - t1;
    const backMs = await waitAnswers(inNs(c3), 'multi.weave.local', multi, 'multi back on h3 after h2 restarted', 30_000);
    t.diagnostic(`h2 relaunched (launch ${launchMs} ms) -> its records back on h3 ${backMs} ms after launch returned`);
    assert.deepEqual(sorted(addrsOf(await dig(inNs(c2), ['multi.weave.local']))), multi, 'and on h2 itself');

    await h1.killAll('SIGKILL');
    const t2 = Date.now();
    await launch(h1, [h2.ip, h3.ip]);
    const launch1Ms = Date.now() - t2;
    const back1Ms = await waitAnswers(inNs(c3), 'web.weave.local', ['10.32.1.1'], 'web served again after h1 restarted', 30_000);
    t.diagnostic(`h1 killed and relaunched (launch ${launch1Ms} ms) -> its container's record back on h3 ${back1Ms} ms after launch returned`);
    await waitAnswers(inNs(c1), 'web.weave.local', ['10.32.1.1'], 'web from c1 through the restarted h1');
    const st1 = (await h1.weave(['status', 'dns'])).stdout;
    assert.match(st1, new RegExp(`^web\\.weave\\.local\\.\\s+10\\.32\\.1\\.1\\s+${names[0]}\\s+${c1.ns}$`, 'm'), st1);
  });
});

test('--no-dns, --dns-domain and flag checks on one host', async () => {
  await withLab(async (lab) => {
    const h = await lab.addHost('h1');
    const bad = await h.weave(['launch', '--dns-ttl', 'soon'], { allowFail: true });
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--dns-ttl/);
    const bad2 = await h.weave(['launch', '--dns-listen-address', 'nowhere:53'], { allowFail: true });
    assert.equal(bad2.code, 2);
    assert.match(bad2.stderr, /--dns-listen-address/);

    await launch(h, [], ['--no-dns', '--dns-domain', 'Corp.Internal']);
    await h.weave(['dns-add', '10.32.9.9', '-h', 'db']);
    const lk = await h.weave(['dns-lookup', 'DB.corp.internal']);
    assert.equal(lk.stdout.trim(), '10.32.9.9');
    const out = await h.weave(['dns-add', '10.32.9.8', '-h', 'db.weave.local'], { allowFail: true });
    assert.notEqual(out.code, 0, 'a name outside the domain is refused');
    assert.match(out.stderr, /outside the weaveDNS domain corp\.internal\./);
    const rep = await h.report();
    assert.equal(rep.dns.address, null);
    assert.equal(rep.dns.domain, null);
    assert.match((await h.weave(['status'])).stdout, /Listen: off/);
    const link = await run(['ip', '-n', h.ns, 'link', 'show', 'weave'], { allowFail: true });
    assert.notEqual(link.code, 0, 'no DNS address, so no weave bridge');
    const d = await dig(inNs(h), ['+timeout=1', 'db.corp.internal'], '127.0.0.1');
    assert.ok(!/status:/.test(d.raw), 'nothing answers DNS');
    assert.match((await h.weave(['status', 'dns'])).stdout, /^db\.corp\.internal\.\s+10\.32\.9\.9\s/m);
  });
});
