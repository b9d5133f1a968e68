// The kernel programs a pod's attachment is made of, as text (host/pod-link.ts, host/pod-masq.ts):
// the two ip batches, the names, and the masquerade chain; and how `weave ps` names a pod.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { POD_GATEWAY, podHostIfName, podLinkLines, podNetnsCtx, randomMac } from '../../host/pod-link';
import { podMasqueradeScript } from '../../host/pod-masq';
import { podLabel } from '../../cni/views';

const SPEC = {
  hostIf: 'vethwepl1234567', hostMac: '02:aa:00:00:00:01', podMac: '02:bb:00:00:00:02', netnsPath: '/var/run/netns/cni-1',
  podCtx: { netns: '/var/run/netns/cni-1' }, ifname: 'eth0', mtu: 1376, cidr: '10.32.0.5/12', overlayRange: '10.32.0.0/12',
};

test('podLinkLines: the pair made with both MACs and the pod end in place; a default route via the gateway with a permanent neighbour', () => {
  const { host, pod } = podLinkLines(SPEC);
  assert.deepEqual(host, [
    'link add vethwepl1234567 address 02:aa:00:00:00:01 mtu 1376 type veth peer name eth0 address 02:bb:00:00:00:02 mtu 1376 netns /var/run/netns/cni-1',
    'link set vethwepl1234567 up',
  ]);
  assert.deepEqual(pod, [
    'link set eth0 mtu 1376 up',
    'addr add 10.32.0.5/12 dev eth0',
    'route add 224.0.0.0/4 dev eth0 scope link',
    `neigh replace ${POD_GATEWAY} lladdr 02:aa:00:00:00:01 dev eth0 nud permanent`,
    `route add default via ${POD_GATEWAY} dev eth0 onlink`,
  ], 'the address\'s own subnet route covers the overlay: no second route');
  const narrow = podLinkLines({ ...SPEC, cidr: '10.32.1.5/24' }, true).pod;
  assert.ok(narrow.includes('route replace 10.32.0.0/12 dev eth0 scope link'), 'a narrower subnet gets the overlay route');
  assert.ok(narrow.includes('addr replace 10.32.1.5/24 dev eth0') && narrow.includes(`route replace default via ${POD_GATEWAY} dev eth0 onlink`), 'restore replaces');
});

test('pod names and MACs: 15-character host names by key, locally administered unicast MACs', () => {
  const a = podHostIfName('weave/c1/eth0');
  assert.match(a, /^vethwepl[0-9a-f]{7}$/);
  assert.equal(a, podHostIfName('weave/c1/eth0'));
  assert.notEqual(a, podHostIfName('weave/c1/eth1'));
  assert.equal(randomMac(Buffer.from([0xff, 1, 2, 3, 4, 5])), 'fe:01:02:03:04:05');
  for (let i = 0; i < 50; i++) {
    const first = parseInt(randomMac().slice(0, 2), 16);
    assert.equal(first & 0x03, 0x02);
  }
});

test('podMasqueradeScript: one chain in inet weave, pods\' veths only, the overlay excluded', () => {
  assert.equal(podMasqueradeScript(['10.32.0.0/12']), [
    'add table inet weave',
    'add chain inet weave cni-masq { type nat hook postrouting priority srcnat; policy accept; }',
    'flush chain inet weave cni-masq',
    'add rule inet weave cni-masq iifname "vethwepl*" ip daddr != 10.32.0.0/12 masquerade',
    '',
  ].join('\n'));
  assert.match(podMasqueradeScript(['10.40.0.0/16', '10.32.0.0/12', '10.40.0.0/16']), /ip daddr != \{ 10\.32\.0\.0\/12, 10\.40\.0\.0\/16 \} masquerade/);
});

test('podNetnsCtx: a pod in ip netns\'s directory is entered by name (one process), elsewhere by path', () => {
  assert.deepEqual(podNetnsCtx('/var/run/netns/cni-1234'), { netns: 'cni-1234' });
  assert.deepEqual(podNetnsCtx('/run/netns/netns-ab'), { netns: 'netns-ab' });
  for (const p of ['/proc/42/ns/net', '/var/run/netns/a/b', '/var/run/netns/..', '/tmp/x']) assert.deepEqual(podNetnsCtx(p), { netns: p });
});

test('podLabel: namespace/name, a bare name (podman), or the short container ID', () => {
  assert.equal(podLabel({ containerId: 'abc', namespace: 'team-a', name: 'web-1' }), 'team-a/web-1');
  assert.equal(podLabel({ containerId: 'abc', name: 'pm1' }), 'pm1');
  assert.equal(podLabel({ containerId: '0123456789abcdef' }), '0123456789ab');
});
