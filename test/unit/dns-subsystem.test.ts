// The router's DNS glue without kernels: flag parsing, name qualification, the status view, the
// resolv.conf files attach writes, and the store's handling of a restarted peer whose full state
// arrives before the topology says it is back (parked, then merged).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { FakeClock } from '../../lib/clock';
import { UsageError } from '../../lib/errors';
import { silentLogger } from '../../lib/log';
import type { GossipChannel, GossipData } from '../../mesh/types';
import { DnsStore } from '../../dns/records';
import { parseDnsFlags } from '../../dns/flags';
import { qualify } from '../../dns/subsystem';
import { renderDnsStatus } from '../../dns/views';
import { RESOLV_MARKER, containerResolvConf, removeNetnsResolvConf, writeNetnsResolvConf } from '../../host/dns-addr';

const A = '02:00:00:00:00:0a';
const B = '02:00:00:00:00:0b';

test('parseDnsFlags: defaults, normalisation and refusals', () => {
  assert.deepEqual(parseDnsFlags({}), { enabled: true, listen: { ip: '169.254.53.53', port: 53 }, domain: 'weave.local.', ttl: 1 });
  assert.deepEqual(parseDnsFlags({ dns: false, dnsListenAddress: '10.1.2.3:5353', dnsDomain: 'Corp.Example', dnsTtl: '30' }), {
    enabled: false, listen: { ip: '10.1.2.3', port: 5353 }, domain: 'corp.example.', ttl: 30,
  });
  assert.deepEqual(parseDnsFlags({ dnsListenAddress: '10.1.2.3' }).listen, { ip: '10.1.2.3', port: 53 });
  for (const f of [
    { dnsListenAddress: 'host:53' }, { dnsListenAddress: '10.1.2.3:0' }, { dnsListenAddress: '10.1.2.3:70000' }, { dnsListenAddress: '::1' },
    { dnsDomain: 'bad..domain' }, { dnsDomain: 'sp ace' }, { dnsTtl: '-1' }, { dnsTtl: '1.5' }, { dnsTtl: 'soon' }, { dnsTtl: '99999999' },
  ]) {
    assert.throws(() => parseDnsFlags(f), UsageError, JSON.stringify(f));
  }
});

test('qualify: unqualified names get the domain, names with a dot are FQDNs, case folded', () => {
  assert.equal(qualify('web', 'weave.local.'), 'web.weave.local.');
  assert.equal(qualify('Web.Weave.Local', 'weave.local.'), 'web.weave.local.');
  assert.equal(qualify('db.corp.', 'weave.local.'), 'db.corp.');
  assert.throws(() => qualify('bad name', 'weave.local.'), UsageError);
  assert.throws(() => qualify('x'.repeat(64), 'weave.local.'), UsageError);
});

test('renderDnsStatus: one line per live record with origin and container (netns name when local)', () => {
  const report = {
    dns: {
      entries: [
        { hostname: 'web.weave.local.', address: '10.32.1.1', origin: A, containerId: '4:123', version: 1, tombstone: false },
        { hostname: 'web.weave.local.', address: '10.32.1.2', origin: A, version: 2, tombstone: false },
        { hostname: 'old.weave.local.', address: '10.32.1.3', origin: B, containerId: '4:999', version: 3, tombstone: true },
        { hostname: 'db.weave.local.', address: '10.32.2.1', origin: B, containerId: '4:777', version: 1, tombstone: false },
      ],
      containers: { '4:123': 'c1' },
    },
  };
  const lines = renderDnsStatus(report).trimEnd().split('\n');
  assert.equal(lines.length, 3);
  assert.match(lines[0], new RegExp(`^web\\.weave\\.local\\.\\s+10\\.32\\.1\\.1\\s+${A}\\s+c1$`));
  assert.match(lines[1], /\s-$/);
  assert.match(lines[2], /\s4:777$/, 'a remote container shows its id');
  assert.match(renderDnsStatus({}), /not running/);
});

test('resolv.conf for a named namespace: written, rewritten, never over a file we did not write, removed with its dir', () => {
  const etc = fs.mkdtempSync(path.join(os.tmpdir(), 'weave-dns-etc-'));
  try {
    const text = containerResolvConf('169.254.53.53', 'weave.local.');
    assert.equal(text, `${RESOLV_MARKER}\nnameserver 169.254.53.53\nsearch weave.local\noptions ndots:1\n`);
    assert.equal(writeNetnsResolvConf('c1', text, etc), true);
    assert.equal(fs.readFileSync(path.join(etc, 'c1', 'resolv.conf'), 'utf8'), text);
    assert.equal(writeNetnsResolvConf('c1', text.replace('ndots:1', 'ndots:2'), etc), true, 'ours: rewritten');
    fs.mkdirSync(path.join(etc, 'c2'));
    fs.writeFileSync(path.join(etc, 'c2', 'resolv.conf'), 'nameserver 192.0.2.1\n');
    assert.equal(writeNetnsResolvConf('c2', text, etc), false);
    assert.equal(fs.readFileSync(path.join(etc, 'c2', 'resolv.conf'), 'utf8'), 'nameserver 192.0.2.1\n');
    assert.equal(removeNetnsResolvConf('c2', etc), false, 'not ours: kept');
    assert.ok(fs.existsSync(path.join(etc, 'c2', 'resolv.conf')));
    assert.equal(removeNetnsResolvConf('c1', etc), true);
    assert.ok(!fs.existsSync(path.join(etc, 'c1')), 'the directory we made goes too');
    assert.equal(removeNetnsResolvConf('c1', etc), false);
  } finally {
    fs.rmSync(etc, { recursive: true, force: true });
  }
});

class CapturingChannel implements GossipChannel {
  readonly name = 'dns';
  sent: GossipData[] = [];
  gossipUnicast(): boolean { return true; }
  gossipBroadcast(update: GossipData): void { this.sent.push(update); }
  gossip(update: GossipData): void { this.sent.push(update); }
}

function gossipTo(x: DnsStore, y: DnsStore): void {
  for (const msg of x.gossip()?.encode() ?? []) y.onGossip(msg);
}

test('a restarted peer whose state arrives before the topology shows it again: records come back without waiting for a periodic round', () => {
  const clock = new FakeClock();
  const a = new DnsStore({ self: A, clock, log: silentLogger(), unknownOriginGraceMs: 30_000 });
  const ch = new CapturingChannel();
  a.attach(ch);
  const b = new DnsStore({ self: B, clock, log: silentLogger() });
  b.add('multi.weave.local', '10.32.2.10');
  b.add('multi.weave.local', '10.32.2.11');
  gossipTo(b, a);
  a.updatePeers([A, B]);
  assert.deepEqual(a.lookup('multi.weave.local').sort(), ['10.32.2.10', '10.32.2.11']);
  a.updatePeers([A]); // b stopped
  assert.deepEqual(a.lookup('multi.weave.local'), []);
  // b restarts: its full state (on the new connection) beats the topology update
  gossipTo(b, a);
  assert.deepEqual(a.lookup('multi.weave.local'), [], 'not yet: the mesh still says b is gone');
  assert.equal(a.counters.entriesIgnoredDeadOrigin, 2);
  a.updatePeers([A, B]);
  assert.deepEqual(a.lookup('multi.weave.local').sort(), ['10.32.2.10', '10.32.2.11']);
  assert.equal(a.counters.unparked, 2);
  assert.ok(ch.sent.some((d) => (d as unknown as { size: number }).size === 2), 'passed on to neighbours');

  // parked entries of a peer that never comes back expire
  a.updatePeers([A]);
  gossipTo(b, a);
  clock.advance(30_000);
  a.gc();
  a.updatePeers([A, B]);
  assert.deepEqual(a.lookup('multi.weave.local'), [], 'expired while parked');
});
