// weaveDNS on port 53 of a veth address, queried from a namespace we create through glibc's resolver
// (getent with /etc/netns/NS/resolv.conf, as a container would): unqualified names via the search
// domain, reverse lookups, NXDOMAIN, and dig inside the namespace.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomInt } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { realClock } from '../../lib/clock';
import { silentLogger } from '../../lib/log';
import { DnsStore } from '../../dns/records';
import { DnsServer } from '../../dns/server';
import { run } from '../lab/exec';

test('getent in a namespace resolves weave names, unqualified via search, and reverse', async () => {
  const sfx = randomBytes(3).toString('hex');
  const ns = `wdns-${sfx}`;
  const vh = `wdh${sfx}`;
  const vc = `wdc${sfx}`;
  const oct = randomInt(1, 255);
  const hostIp = `198.19.${oct}.1`;
  const nsIp = `198.19.${oct}.2`;
  const etc = path.join('/etc/netns', ns);
  const store = new DnsStore({ self: '02:00:00:00:00:01', clock: realClock, log: silentLogger() });
  store.add('web.weave.local', '10.32.0.1');
  store.add('web.weave.local', '10.32.0.2');
  store.add('db.weave.local', '10.32.0.3');
  let server: DnsServer | null = null;
  try {
    await run(['ip', 'netns', 'add', ns]);
    await run(['ip', 'link', 'add', vh, 'type', 'veth', 'peer', 'name', vc]);
    await run(['ip', 'link', 'set', vc, 'netns', ns]);
    await run(['ip', 'addr', 'add', `${hostIp}/30`, 'dev', vh]);
    await run(['ip', 'link', 'set', vh, 'up']);
    await run(['ip', '-n', ns, 'addr', 'add', `${nsIp}/30`, 'dev', vc]);
    await run(['ip', '-n', ns, 'link', 'set', vc, 'up']);
    await run(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
    fs.mkdirSync(etc, { recursive: true });
    fs.writeFileSync(path.join(etc, 'resolv.conf'), `nameserver ${hostIp}\nsearch weave.local\noptions timeout:1 attempts:2\n`);

    server = new DnsServer({ listenAddress: hostIp, port: 53, upstream: () => [], store, clock: realClock, log: silentLogger() });
    await server.start();
    const inNs = (argv: string[]) => run(['ip', 'netns', 'exec', ns, ...argv], { allowFail: true, timeoutMs: 10_000 });

    const short = await inNs(['getent', 'ahostsv4', 'web']);
    assert.equal(short.code, 0, short.stderr);
    const addrs = new Set(short.stdout.split('\n').filter(Boolean).map((l) => l.split(/\s+/)[0]));
    assert.deepEqual([...addrs].sort(), ['10.32.0.1', '10.32.0.2']);
    assert.match(short.stdout, /web\.weave\.local/);

    const fq = await inNs(['getent', 'hosts', 'DB.weave.local']);
    assert.equal(fq.code, 0, fq.stderr);
    assert.match(fq.stdout, /^10\.32\.0\.3\s+DB\.weave\.local/m);

    const rev = await inNs(['getent', 'hosts', '10.32.0.3']);
    assert.equal(rev.code, 0, rev.stderr);
    assert.match(rev.stdout, /^10\.32\.0\.3\s+db\.weave\.local/m);

    const missing = await inNs(['getent', 'hosts', 'nope']);
    assert.equal(missing.code, 2, 'getent: not found');

    const d = await inNs(['dig', '+short', '+search', 'db']);
    assert.equal(d.stdout.trim(), '10.32.0.3');
    assert.ok(server.counters.nxdomain >= 1 && server.counters.noerror >= 4);
  } finally {
    await server?.stop();
    await run(['ip', 'netns', 'del', ns], { allowFail: true });
    await run(['ip', 'link', 'del', vh], { allowFail: true });
    fs.rmSync(etc, { recursive: true, force: true });
  }
});
