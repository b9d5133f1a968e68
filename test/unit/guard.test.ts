// The pure parts of the input guards (host/guard.ts): rule sets, the plan from desired vs actual nft
// state, parsing what `nft -j` prints; the lazy VXLAN plan; the heartbeat socket that follows the
// device; and which sources weaveDNS answers (host/dns-addr.ts DnsAccess.allows).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'events';
import { FakeClock } from '../../lib/clock';
import { MemoryLogger, silentLogger } from '../../lib/log';
import { HostError } from '../../host/ip';
import {
  dnsGuardSpec, guardUnsupported, parseGuard, planGuard, ruleTag, vxlanGuardSpec, VXLAN_ESP_SET, VXLAN_PLAIN_SET, type GuardActual,
} from '../../host/guard';
import { planVxlan, type VxlanConfig } from '../../host/vxlan';
import { DnsAccess } from '../../host/dns-addr';
import { DeviceHeartbeatIo, type HeartbeatIo } from '../../router/fastdp';

const spec = vxlanGuardSpec(6784);
const want = (plain: string[], esp: string[]) => new Map([[VXLAN_PLAIN_SET, plain], [VXLAN_ESP_SET, esp]]);

test('vxlan guard rules: plain from @vxlan-plain, ESP-decrypted only from @vxlan-esp, the rest counted and dropped', () => {
  assert.deepEqual(spec.rules, [
    'udp dport 6784 ip saddr @vxlan-plain accept',
    'udp dport 6784 ip saddr @vxlan-esp meta ipsec exists accept',
    'udp dport 6784 counter name vxlan-dropped drop',
  ]);
  assert.throws(() => vxlanGuardSpec(0));
  const d = dnsGuardSpec('169.254.53.53', 53);
  assert.deepEqual(d.rules, [
    'ip daddr 169.254.53.53 meta l4proto { tcp, udp } th dport 53 iifname "lo" accept',
    'ip daddr 169.254.53.53 meta l4proto { tcp, udp } th dport 53 iifname "vethwe*" accept',
    'ip daddr 169.254.53.53 meta l4proto { tcp, udp } th dport 53 iifname "weave" accept',
    'ip daddr 169.254.53.53 meta l4proto { tcp, udp } th dport 53 counter name dns-dropped drop',
  ]);
  assert.match(dnsGuardSpec(null, 5353).rules[3], /^meta l4proto \{ tcp, udp \} th dport 5353 counter/);
  assert.throws(() => dnsGuardSpec('169.254.53.53; flush ruleset', 53));
});

test('plan: nothing there -> chain, counter, sets and elements in one script; converged -> nothing; element changes only', () => {
  const none: GuardActual = { chainOk: false, sets: null, dropped: 0 };
  const full = planGuard(spec, want(['198.18.0.12'], ['198.18.0.13', '198.18.0.14']), none);
  assert.deepEqual(full.trim().split('\n'), [
    'add table inet weave',
    'add counter inet weave vxlan-dropped',
    'add set inet weave vxlan-plain { type ipv4_addr; }',
    'add set inet weave vxlan-esp { type ipv4_addr; }',
    'add chain inet weave vxlan-guard',
    'flush chain inet weave vxlan-guard',
    'delete chain inet weave vxlan-guard',
    'add chain inet weave vxlan-guard { type filter hook input priority filter; policy accept; }',
    `add rule inet weave vxlan-guard udp dport 6784 ip saddr @vxlan-plain accept comment "${ruleTag(spec, 0)}"`,
    `add rule inet weave vxlan-guard udp dport 6784 ip saddr @vxlan-esp meta ipsec exists accept comment "${ruleTag(spec, 1)}"`,
    `add rule inet weave vxlan-guard udp dport 6784 counter name vxlan-dropped drop comment "${ruleTag(spec, 2)}"`,
    'flush set inet weave vxlan-plain',
    'add element inet weave vxlan-plain { 198.18.0.12 }',
    'flush set inet weave vxlan-esp',
    'add element inet weave vxlan-esp { 198.18.0.13, 198.18.0.14 }',
  ]);
  const ok: GuardActual = { chainOk: true, sets: new Map([[VXLAN_PLAIN_SET, ['198.18.0.12']], [VXLAN_ESP_SET, ['198.18.0.14', '198.18.0.13']]]), dropped: 3 };
  assert.equal(planGuard(spec, want(['198.18.0.12'], ['198.18.0.13', '198.18.0.14']), ok), '');
  assert.deepEqual(planGuard(spec, want([], ['198.18.0.13', '198.18.0.15']), ok).trim().split('\n'), [
    'delete element inet weave vxlan-plain { 198.18.0.12 }',
    'delete element inet weave vxlan-esp { 198.18.0.14 }',
    'add element inet weave vxlan-esp { 198.18.0.15 }',
  ]);
  // rules changed by hand: the chain is rebuilt, the sets refilled, the named counter kept
  const changed = planGuard(spec, want(['198.18.0.12'], []), { ...ok, chainOk: false });
  assert.match(changed, /delete chain inet weave vxlan-guard\n/);
  assert.doesNotMatch(changed, /delete counter/);
  assert.throws(() => planGuard(spec, want(['198.18.0.12 }; flush ruleset; add element inet weave vxlan-plain { 1.2.3.4'], []), none), /not an IPv4 address/);
});

test('parse: nft -j documents -> chain checked by the rule tags, set elements, counter packets', () => {
  const rule = (i: number, comment = ruleTag(spec, i)) => ({ rule: { family: 'inet', table: 'weave', chain: 'vxlan-guard', handle: 10 + i, comment, expr: [] } });
  const docs: Array<{ nftables: Array<Record<string, any>> }> = [
    { nftables: [{ metainfo: {} }, { chain: { family: 'inet', table: 'weave', name: 'vxlan-guard', type: 'filter', hook: 'input', prio: 0, policy: 'accept' } }, rule(0), rule(1), rule(2)] },
    { nftables: [{ metainfo: {} }, { counter: { family: 'inet', name: 'vxlan-dropped', table: 'weave', packets: 7, bytes: 700 } }] },
    { nftables: [{ metainfo: {} }, { set: { family: 'inet', name: 'vxlan-plain', table: 'weave', type: 'ipv4_addr', elem: ['198.18.0.12'] } }] },
    { nftables: [{ metainfo: {} }, { set: { family: 'inet', name: 'vxlan-esp', table: 'weave', type: 'ipv4_addr' } }] },
  ];
  const a = parseGuard(spec, docs);
  assert.equal(a.chainOk, true);
  assert.equal(a.dropped, 7);
  assert.deepEqual([...a.sets!], [[VXLAN_PLAIN_SET, ['198.18.0.12']], [VXLAN_ESP_SET, []]]);
  const missingRule = structuredClone(docs);
  missingRule[0].nftables.splice(3, 1);
  assert.equal(parseGuard(spec, missingRule).chainOk, false);
  const stray = structuredClone(docs);
  stray[0].nftables.push(rule(3, 'someone else'));
  assert.equal(parseGuard(spec, stray).chainOk, false, 'a rule added to our chain by hand');
  const otherHook = structuredClone(docs);
  (otherHook[0].nftables[1] as any).chain.hook = 'forward';
  assert.equal(parseGuard(spec, otherHook).chainOk, false);
  assert.equal(parseGuard(spec, docs.slice(0, 3)).sets, null, 'a set missing: rebuild');
});

test('a kernel that cannot hold a guard is told apart from a failure worth a retry', () => {
  // what Debian's UML 6.1 kernel (nftables bridge family only) answers
  const uml = new HostError('nft -f -: ...', { command: 'nft -f -', stderr: '/dev/stdin:1:1-21: Error: Could not process rule: Operation not supported\nadd table inet weave\n^^^^^^^^^^^^^^^^^^^^^' });
  assert.match(guardUnsupported(uml) ?? '', /lacks the nftables inet family/);
  assert.match(guardUnsupported(new HostError('cannot run nft: spawn nft ENOENT', { command: 'nft -f -', stderr: '' })) ?? '', /not installed/);
  assert.equal(guardUnsupported(new HostError('nft -f -: busy', { command: 'nft -f -', stderr: 'Error: Could not process rule: Device or resource busy\nadd rule inet weave vxlan-guard ...' })), null);
  assert.equal(guardUnsupported(new Error('x')), null);
});

test('lazy VXLAN plan: no peers -> the device is deleted (or stays absent)', () => {
  const cfg: VxlanConfig = { name: 'weave-vx', vni: 0x57, port: 6784, local: '198.18.0.11', mtu: 1450, mac: '02:00:00:00:00:01', address: '169.254.1.1' };
  const link = { ifname: 'weave-vx', mtu: 1450, address: cfg.mac, flags: ['UP'], linkinfo: { info_kind: 'vxlan', info_data: { id: 0x57, local: cfg.local, port: 6784, learning: false } } };
  assert.deepEqual(planVxlan(cfg, [], { link, addrs: [], fdb: [], neigh: [] }, { present: false }), { ip: ['link del weave-vx'], bridge: [], summary: { link: 'delete', addr: 0, neighAdd: 0, neighDel: 0, fdbAdd: 0, fdbDel: 0 } });
  assert.deepEqual(planVxlan(cfg, [], { link: null, addrs: [], fdb: [], neigh: [] }, { present: false }).ip, []);
  assert.equal(planVxlan(cfg, [], { link: null, addrs: [], fdb: [], neigh: [] }, { present: false }).summary.link, 'absent');
});

class FakeSock implements HeartbeatIo {
  receiver: ((src: string, p: Uint8Array) => void) | null = null;
  closed = false;
  sent = 0;
  send(): number { this.sent++; return 0; }
  setReceiver(cb: ((src: string, p: Uint8Array) => void) | null): void { this.receiver = cb; }
  drain(): void {}
  close(): void { this.closed = true; }
}

test('heartbeat socket follows the device: opened when it comes up, closed when it goes, EAGAIN meanwhile', () => {
  const listeners = new Set<(up: boolean) => void>();
  const device = { onDevice: (fn: (up: boolean) => void) => { listeners.add(fn); return () => listeners.delete(fn); } };
  const emit = (up: boolean) => { for (const fn of listeners) fn(up); };
  const socks: FakeSock[] = [];
  let fail = false;
  const log = new MemoryLogger();
  const io = new DeviceHeartbeatIo(() => { if (fail) throw new Error('bind: Cannot assign requested address'); const s = new FakeSock(); socks.push(s); return s; }, device, log);
  const got: string[] = [];
  io.setReceiver((src) => got.push(src));
  let opened = 0;
  io.onOpen(() => opened++);
  assert.equal(io.send('169.254.0.2', 6785, new Uint8Array(14)), 11, 'EAGAIN before the device exists');
  emit(false);
  assert.equal(socks.length, 0);
  fail = true;
  emit(true);
  assert.equal(io.isOpen, false, 'the bind failed: retried after the next pass');
  assert.equal(log.records.filter((r) => r.level === 'warn').length, 1);
  fail = false;
  emit(true);
  emit(true);
  assert.equal(socks.length, 1, 'opened once');
  assert.equal(opened, 1);
  assert.equal(io.send('169.254.0.2', 6785, new Uint8Array(14)), 0);
  socks[0].receiver!('169.254.0.2', new Uint8Array(14));
  assert.deepEqual(got, ['169.254.0.2'], 'the receiver was handed to the new socket');
  emit(false);
  assert.equal(socks[0].closed, true);
  assert.equal(io.send('169.254.0.2', 6785, new Uint8Array(14)), 11);
  emit(true);
  assert.equal(socks.length, 2, 'a device that comes back gets a new socket');
  io.close();
  assert.equal(socks[1].closed, true);
  assert.equal(listeners.size, 0, 'unsubscribed');
});

test('DnsAccess.allows: loopback, the host\'s addresses and this host\'s containers; a container attached later at once', async () => {
  const eps = new (class extends EventEmitter { items: Array<{ addrs: string[] }> = [{ addrs: ['10.32.1.1/12'] }]; list() { return this.items; } })();
  const clock = new FakeClock();
  const a = new DnsAccess({ ctx: { netns: '/nonexistent' }, clock, log: silentLogger(), listen: { ip: '127.0.0.53', port: 53 }, endpoints: eps });
  assert.equal(a.guard, null, 'a loopback server has nothing to guard');
  assert.equal(a.allows('127.0.0.1'), true);
  assert.equal(a.allows('::ffff:127.0.0.1'), true);
  assert.equal(a.allows('10.32.1.1'), true);
  assert.equal(a.allows('::ffff:10.32.1.1'), true);
  assert.equal(a.allows('10.32.1.2'), false);
  assert.equal(a.allows('198.18.0.99'), false);
  eps.items.push({ addrs: ['10.32.1.2/12'] });
  assert.equal(a.allows('10.32.1.2'), false, 'cached until the endpoints say they changed');
  await a.start().catch(() => undefined); // reading the host's addresses fails here (no such namespace): counted
  eps.emit('changed');
  assert.equal(a.allows('10.32.1.2'), true);
  assert.equal(a.stats().refreshErrors, 1);
  await a.stop();
  assert.equal(eps.listenerCount('changed'), 0);
});
