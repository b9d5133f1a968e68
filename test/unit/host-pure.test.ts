// Pure parts of host/: route diffing and batch lines, CIDR parsing, NETNS argument syntax, interface
// name hashing, the masquerade script and endpoint state validation. No kernel involved.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ActualRoute, DesiredRoute, diffRoutes, routeBatchLines } from '../../host/routes';
import { canonicalPrefix, parseCidr4 } from '../../host/cidr';
import { tryParseAddrInCidr } from '../../lib/addr';
import { parseNetnsArg, resolveNetns } from '../../host/netns';
import { hostIfName, tmpPeerName } from '../../host/links';
import { masqueradeScript } from '../../host/expose';
import { validateState } from '../../router/endpoints';
import { UsageError, WeaveError } from '../../lib/errors';
import { ReadCache, batchFailures, kernelChanged, type ExecResult } from '../../host/ip';

test('diffRoutes: identical desired and actual need nothing', () => {
  const desired: DesiredRoute[] = [
    { dst: '10.32.0.2/32', dev: 'vethwe1' },
    { dst: '10.33.0.0/16', dev: 'weave-vx', via: '10.1.0.9', onlink: true },
    { dst: '10.32.0.3/32', dev: 'vethwe2', src: '10.32.0.1', mtu: 1400 },
  ];
  // exactly what `ip -json route show proto 180` printed for these (see the probe in the netns tests)
  const actual: ActualRoute[] = [
    { dst: '10.32.0.2', dev: 'vethwe1', scope: 'link', flags: [] },
    { dst: '10.33.0.0/16', gateway: '10.1.0.9', dev: 'weave-vx', flags: ['onlink'] },
    { dst: '10.32.0.3', dev: 'vethwe2', scope: 'link', prefsrc: '10.32.0.1', flags: [], metrics: [{ mtu: 1400 }] },
  ];
  const d = diffRoutes(desired, actual);
  assert.deepEqual(d, { add: [], change: [], remove: [] });
  assert.deepEqual(routeBatchLines(d, 180), []);
});

test('diffRoutes: missing, changed, stale and duplicate routes', () => {
  const desired: DesiredRoute[] = [
    { dst: '10.32.0.2/32', dev: 'vethwe1' },
    { dst: '10.32.0.3/32', dev: 'vethwe2', src: '10.32.0.1' },
    { dst: '10.40.0.0/16', dev: 'weave-tun' },
  ];
  const actual: ActualRoute[] = [
    { dst: '10.32.0.3', dev: 'vethwe2', scope: 'link', flags: [] }, // src missing -> change
    { dst: '10.99.0.0/16', dev: 'weave-tun', scope: 'link' }, // nobody wants it -> remove
    { dst: '10.40.0.0/16', dev: 'weave-tun', scope: 'link', metric: 7 }, // metric we never set -> remove + add
    { dst: '10.32.0.7', dev: 'vethwe9', scope: 'link', flags: ['linkdown'] }, // stale -> remove
  ];
  const d = diffRoutes(desired, actual);
  assert.deepEqual(d.add.map((r) => r.dst).sort(), ['10.32.0.2/32', '10.40.0.0/16']);
  assert.deepEqual(d.change.map((r) => r.dst), ['10.32.0.3/32']);
  assert.deepEqual(d.remove, [
    { dst: '10.99.0.0/16', dev: 'weave-tun', metric: 0 },
    { dst: '10.40.0.0/16', dev: 'weave-tun', metric: 7 },
    { dst: '10.32.0.7/32', dev: 'vethwe9', metric: 0 },
  ]);
  const lines = routeBatchLines(d, 180);
  assert.deepEqual(lines, [
    'route del 10.99.0.0/16 dev weave-tun proto 180',
    'route del 10.40.0.0/16 dev weave-tun metric 7 proto 180',
    'route del 10.32.0.7/32 dev vethwe9 proto 180',
    'route replace 10.32.0.3/32 dev vethwe2 src 10.32.0.1 scope link proto 180',
    'route add 10.32.0.2/32 dev vethwe1 scope link proto 180',
    'route add 10.40.0.0/16 dev weave-tun scope link proto 180',
  ]);
});

test('diffRoutes: gateway routes default to scope global; attributes each count', () => {
  const base: ActualRoute = { dst: '10.33.0.0/16', gateway: '10.1.0.9', dev: 'x', flags: ['onlink'] };
  const want: DesiredRoute = { dst: '10.33.0.0/16', via: '10.1.0.9', dev: 'x', onlink: true };
  assert.equal(diffRoutes([want], [base]).change.length, 0);
  assert.equal(diffRoutes([{ ...want, onlink: false }], [base]).change.length, 1);
  assert.equal(diffRoutes([{ ...want, via: '10.1.0.8' }], [base]).change.length, 1);
  assert.equal(diffRoutes([{ ...want, dev: 'y' }], [base]).change.length, 1);
  assert.equal(diffRoutes([{ ...want, mtu: 1300 }], [base]).change.length, 1);
  assert.equal(diffRoutes([{ ...want, scope: 'link' }], [base]).change.length, 1);
  assert.deepEqual(routeBatchLines(diffRoutes([want], []), 0xb4), ['route add 10.33.0.0/16 via 10.1.0.9 dev x onlink scope global proto 180']);
});

test('diffRoutes: host bits in desired dst are normalised; invalid routes are refused', () => {
  const d = diffRoutes([{ dst: '10.32.1.5/12', dev: 'a' }], [{ dst: '10.32.0.0/12', dev: 'a', scope: 'link' }]);
  assert.deepEqual(d, { add: [], change: [], remove: [] });
  assert.throws(() => diffRoutes([{ dst: '10.32.0.1', dev: 'a' }], []), WeaveError);
  assert.throws(() => diffRoutes([{ dst: '10.32.0.0/33', dev: 'a' }], []), WeaveError);
  assert.throws(() => diffRoutes([{ dst: '10.32.0.0/12', dev: 'has space' }], []), WeaveError);
  assert.throws(() => diffRoutes([{ dst: '10.32.0.0/12', dev: 'a', via: 'nope' }], []), WeaveError);
});

test('cidr parsing is strict', () => {
  assert.deepEqual(parseCidr4('10.32.0.5/12'), { addr: '10.32.0.5', len: 12, n: 0x0a200005 });
  assert.deepEqual(tryParseAddrInCidr('10.32.0.5/12'), { addr: 0x0a200005, cidr: { start: 0x0a200000, end: 0x0a300000, prefixLen: 12 } });
  for (const bad of ['10.32.0.5', '10.32.0/12', '10.32.0.256/12', '10.032.0.1/12', '10.32.0.5/33', '10.32.0.5/', 'x/1', ' 10.0.0.1/8']) {
    assert.equal(tryParseAddrInCidr(bad), undefined, bad);
    assert.throws(() => parseCidr4(bad), UsageError, bad);
  }
  assert.equal(canonicalPrefix('10.32.0.7'), '10.32.0.7/32');
  assert.equal(canonicalPrefix('default'), '0.0.0.0/0');
  assert.equal(canonicalPrefix('10.47.255.255/12'), '10.32.0.0/12');
  assert.throws(() => parseCidr4('fd00::1/64'), (e: unknown) => e instanceof UsageError && /IPv6/.test(e.message));
  assert.throws(() => parseCidr4('10.1.2.3'), (e: unknown) => e instanceof UsageError && /like 10\.32\.0\.5\/12/.test(e.message));
});

test('parseNetnsArg: name, path, PID, and the bad ones', () => {
  assert.deepEqual(parseNetnsArg('web-1'), { kind: 'name', name: 'web-1' });
  assert.deepEqual(parseNetnsArg('/proc/123/ns/net'), { kind: 'path', path: '/proc/123/ns/net' });
  assert.deepEqual(parseNetnsArg('/var/run/netns/x'), { kind: 'path', path: '/var/run/netns/x' });
  assert.deepEqual(parseNetnsArg('4242'), { kind: 'pid', pid: 4242 });
  for (const bad of ['', '  ', '0', '..', 'a/b', 'has space', 'semi;colon', '99999999999999999999']) {
    assert.throws(() => parseNetnsArg(bad), UsageError, JSON.stringify(bad));
  }
});

test('resolveNetns: missing name/PID/path and non-namespace files are UsageErrors that say so', () => {
  assert.throws(() => resolveNetns('no-such-ns-h4-zz'), (e: unknown) => e instanceof UsageError && /no network namespace named "no-such-ns-h4-zz"/.test(e.message));
  assert.throws(() => resolveNetns('2147483'), (e: unknown) => e instanceof UsageError && /no process with PID 2147483/.test(e.message));
  assert.throws(() => resolveNetns('/etc/hostname'), (e: unknown) => e instanceof UsageError && /not a namespace file/.test(e.message));
  assert.throws(() => resolveNetns('/proc/self/ns/mnt'), (e: unknown) => e instanceof UsageError && /mnt namespace, not a network namespace/.test(e.message));
  assert.throws(() => resolveNetns('/proc/self/ns/net'), (e: unknown) => e instanceof UsageError && /host's own network namespace/.test(e.message));
  assert.equal(resolveNetns('/proc/self/ns/net', { allowOwn: true }).kind, 'path');
  assert.equal(resolveNetns(String(process.pid), { allowOwn: true }).path, `/proc/${process.pid}/ns/net`);
});

test('interface names: fixed prefix, 15 chars, stable per key, distinct across keys', () => {
  const a = hostIfName('4:4026532001');
  assert.match(a, /^vethwe[0-9a-f]{9}$/);
  assert.equal(a.length, 15);
  assert.equal(hostIfName('4:4026532001'), a);
  assert.notEqual(hostIfName('4:4026532002'), a);
  assert.match(tmpPeerName('4:4026532001'), /^vethwg[0-9a-f]{9}$/);
  const seen = new Set<string>();
  for (let i = 0; i < 5000; i++) seen.add(hostIfName(`4:${4026531840 + i}`));
  assert.equal(seen.size, 5000);
});

test('masqueradeScript: one rule per source net, overlay excluded, chain flushed first', () => {
  const s = masqueradeScript(['10.32.0.0/12', '192.168.7.0/24', '10.32.0.0/12'], '10.32.0.0/12');
  assert.equal(s, [
    'add table inet weave',
    'add chain inet weave expose-nat { type nat hook postrouting priority srcnat; policy accept; }',
    'flush chain inet weave expose-nat',
    'add rule inet weave expose-nat ip saddr 10.32.0.0/12 ip daddr != 10.32.0.0/12 masquerade',
    'add rule inet weave expose-nat ip saddr 192.168.7.0/24 ip daddr != 192.168.7.0/24 ip daddr != 10.32.0.0/12 masquerade',
    '',
  ].join('\n'));
});

test('validateState accepts what we write and rejects malformed files', () => {
  const good = {
    version: 1,
    endpoints: [{ netns: 'c1', path: '/var/run/netns/c1', key: '4:1', ifname: 'ethwe', hostIfname: 'vethwe123456789', mac: 'aa:bb:cc:dd:ee:ff', addrs: ['10.32.0.2/12'], name: 'web' }],
    exposed: [{ cidr: '10.32.0.1/12', masquerade: true }],
  };
  assert.deepEqual(validateState(JSON.parse(JSON.stringify(good))), good);
  const broken: unknown[] = [
    null, 7, { ...good, version: 2 }, { ...good, endpoints: {} },
    { ...good, endpoints: [{ ...good.endpoints[0], addrs: ['10.32.0.2'] }] },
    { ...good, endpoints: [{ ...good.endpoints[0], hostIfname: 'x'.repeat(16) }] },
    { ...good, endpoints: [{ ...good.endpoints[0], key: 5 }] },
    { ...good, exposed: [{ cidr: 'nope', masquerade: true }] },
    { ...good, exposed: [{ cidr: '10.32.0.1/12' }] },
  ];
  for (const b of broken) assert.throws(() => validateState(b), WeaveError, JSON.stringify(b));
});

test('batchFailures: each failed line of an ip -batch with what the kernel said', () => {
  const lines = ['link set lo up', 'link set nosuch up', 'route add 10.0.0.0/8 dev nosuch'];
  const stderr = 'Cannot find device "nosuch"\nCommand failed -:2\nCannot find device "nosuch"\nCommand failed -:3\n';
  assert.deepEqual(batchFailures(stderr, lines), [
    { line: 2, text: 'link set nosuch up', error: 'Cannot find device "nosuch"' },
    { line: 3, text: 'route add 10.0.0.0/8 dev nosuch', error: 'Cannot find device "nosuch"' },
  ]);
  assert.deepEqual(batchFailures('Error: something else\n', lines), []);
});

test('ReadCache: a read is shared until any write; a failed read is not kept', async () => {
  const c = new ReadCache();
  let runs = 0;
  const ok = (): Promise<ExecResult> => { runs++; return Promise.resolve({ code: 0, stdout: `r${runs}`, stderr: '' }); };
  const a = await c.read(['ip', '-json', 'link', 'show'], ok);
  const b = await c.read(['ip', '-json', 'link', 'show'], ok);
  assert.equal(a.stdout, 'r1');
  assert.equal(b.stdout, 'r1');
  assert.equal((await c.read(['ip', '-json', 'route', 'show'], ok)).stdout, 'r2');
  kernelChanged();
  assert.equal((await c.read(['ip', '-json', 'link', 'show'], ok)).stdout, 'r3');
  assert.deepEqual([c.hits, c.misses], [1, 3]);
  const fail = (): Promise<ExecResult> => { runs++; return Promise.reject(new Error('boom')); };
  await assert.rejects(c.read(['nft', 'list'], fail));
  await new Promise((r) => setImmediate(r));
  assert.equal((await c.read(['nft', 'list'], ok)).stdout, 'r5');
});
