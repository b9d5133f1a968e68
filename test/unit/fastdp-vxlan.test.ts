// host/vxlan.ts pure parts: VTEP MAC/IP derivation and the desired-vs-actual plan (what a pass would run).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { planVxlan, vtepIpFor, vtepMacFor, type VxlanActual, type VxlanConfig } from '../../host/vxlan';
import { randomPeerName } from '../../mesh/peer';

const cfg: VxlanConfig = { name: 'weave-vx', vni: 0x57, port: 6784, local: '198.18.0.11', mtu: 1450, mac: '02:00:00:00:00:01', address: '169.254.1.1' };
const peer = { mac: '02:00:00:00:00:02', vtep: '169.254.2.2', underlay: '198.18.0.12' };

function converged(): VxlanActual {
  return {
    link: { ifname: 'weave-vx', mtu: 1450, address: cfg.mac, flags: ['UP'], linkinfo: { info_kind: 'vxlan', info_data: { id: 0x57, local: cfg.local, port: 6784, learning: false } } },
    addrs: [{ addr_info: [{ family: 'inet', local: '169.254.1.1', prefixlen: 32 }, { family: 'inet6', local: 'fe80::1', prefixlen: 64 }] }],
    fdb: [
      { mac: peer.mac, dst: peer.underlay, state: 'permanent', flags: ['self'] },
      { mac: '33:33:00:00:00:01', state: 'permanent', flags: ['self'] },
      { mac: '0a:0b:0c:0d:0e:0f', state: 'permanent' }, // the bridge's own view: not a vxlan `self` entry
    ],
    neigh: [{ dst: peer.vtep, lladdr: peer.mac, state: ['PERMANENT'] }, { dst: '169.254.9.9', state: ['FAILED'] }],
  };
}

test('VTEP MAC: the peer name with the locally administered unicast bits', () => {
  assert.equal(vtepMacFor('8b:3e:01:02:03:04'), '8a:3e:01:02:03:04');
  assert.equal(vtepMacFor('01:00:00:00:00:00'), '02:00:00:00:00:00');
  assert.throws(() => vtepMacFor('nope'));
});

test('VTEP IP: deterministic, inside the range, never a reserved address', () => {
  const seen = new Set<string>();
  for (let i = 0; i < 2000; i++) {
    const n = randomPeerName();
    const ip = vtepIpFor(n);
    assert.equal(ip, vtepIpFor(n));
    assert.match(ip, /^169\.254\.\d+\.\d+$/);
    const last = Number(ip.split('.')[3]);
    assert.ok(last !== 0 && last !== 255, ip);
    assert.ok(!['169.254.53.53', '169.254.169.254'].includes(ip));
    seen.add(ip);
  }
  assert.ok(seen.size > 1900, `spread: ${seen.size} distinct of 2000`);
  assert.match(vtepIpFor('02:00:00:00:00:01', '10.99.0.0/16'), /^10\.99\./);
  assert.throws(() => vtepIpFor('02:00:00:00:00:01', '10.0.0.0/30'));
});

test('plan: nothing to do when converged; device created from scratch', () => {
  const ok = planVxlan(cfg, [peer], converged());
  assert.deepEqual(ok.ip, []);
  assert.deepEqual(ok.bridge, []);
  const fresh = planVxlan(cfg, [peer], { link: null, addrs: [], fdb: [], neigh: [] });
  assert.deepEqual(fresh.ip, [
    'link add weave-vx type vxlan id 87 dstport 6784 local 198.18.0.11 nolearning',
    'link set dev weave-vx address 02:00:00:00:00:01 mtu 1450 up',
    'addr add 169.254.1.1/32 dev weave-vx',
    `neigh replace ${peer.vtep} lladdr ${peer.mac} dev weave-vx nud permanent`,
  ]);
  assert.deepEqual(fresh.bridge, [`fdb append ${peer.mac} dev weave-vx dst ${peer.underlay} self permanent`]);
});

test('plan: flushed, stale and wrong entries are repaired; wrong VNI recreates the device', () => {
  const a = converged();
  a.fdb = a.fdb.filter((f) => f.mac !== peer.mac);
  a.neigh = [];
  assert.deepEqual(planVxlan(cfg, [peer], a).summary, { link: 'ok', addr: 0, neighAdd: 1, neighDel: 0, fdbAdd: 1, fdbDel: 0 });

  const b = converged();
  b.fdb.push({ mac: '02:00:00:00:00:09', dst: '198.18.0.19', state: 'permanent', flags: ['self'] });
  b.fdb[0] = { ...b.fdb[0], dst: '198.18.0.99' };
  b.neigh.push({ dst: '169.254.9.8', lladdr: '02:00:00:00:00:09', state: ['PERMANENT'] });
  b.link!.mtu = 1400;
  b.addrs = [{ addr_info: [{ family: 'inet', local: '169.254.7.7', prefixlen: 32 }] }];
  const p = planVxlan(cfg, [peer], b);
  assert.deepEqual(p.ip, [
    'link set dev weave-vx address 02:00:00:00:00:01 mtu 1450 up',
    'addr del 169.254.7.7/32 dev weave-vx',
    'addr add 169.254.1.1/32 dev weave-vx',
    'neigh del 169.254.9.8 dev weave-vx',
  ]);
  assert.deepEqual(p.bridge, [
    `fdb del ${peer.mac} dev weave-vx dst 198.18.0.99 self`,
    'fdb del 02:00:00:00:00:09 dev weave-vx dst 198.18.0.19 self',
    `fdb append ${peer.mac} dev weave-vx dst ${peer.underlay} self permanent`,
  ]);

  const c = converged();
  c.link!.linkinfo!.info_data!.id = 99;
  const r = planVxlan(cfg, [peer], c);
  assert.equal(r.summary.link, 'recreate');
  assert.equal(r.ip[0], 'link del weave-vx');
  assert.equal(r.bridge.length, 1, 'entries are re-added on the new device');

  const d = converged();
  d.link!.linkinfo!.info_data!.learning = true;
  assert.equal(planVxlan(cfg, [peer], d).summary.link, 'recreate', 'learning must be off');
});
