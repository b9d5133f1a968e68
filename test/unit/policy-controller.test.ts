// policy/controller.ts over a recorded nft (no kernel): nothing before the first lists of all three
// kinds, then one full build; later changes as differences batched into one script; a failed apply is
// followed by a full rebuild; drop totals survive a group leaving the table; status names unenforceable
// policies; a logged packet becomes one line with the policies and reasons. policy/nflog.ts: the config
// request's bytes and the parsing of logged packets and errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryLogger } from '../../lib/log';
import { PolicyController } from '../../policy/controller';
import { configMessage, parseDatagram, parseIpv4 } from '../../policy/nflog';
import { namespaceObject, podObject, policyObject, type TPod } from '../lab/netpol-truth';

const pod = (ns: string, name: string, ip: string, node = 'n1'): TPod => ({ ns, name, labels: { pod: name }, ip, node, ports: [] });
const deny = policyObject('x', 'deny', { podSelector: {}, policyTypes: ['Ingress'] });

function setup(failFirst = 0) {
  const scripts: string[] = [];
  let fails = failFirst;
  const counters = new Map<string, number>();
  const log = new MemoryLogger();
  const c = new PolicyController({
    node: 'n1', host: {}, log, batchMs: 1, nft: { podIfaces: 'vethwepl*', logGroup: 86, logRate: '1/second' },
    apply: async (s) => { scripts.push(s); if (fails-- > 0) throw new Error('nft: boom'); },
    readCounters: async () => counters,
  });
  return { c, scripts, counters, log };
}

test('controller: waits for all three lists, builds once, then applies differences in batches', async () => {
  const { c, scripts } = setup();
  c.replace('Namespace', [namespaceObject({ name: 'x', labels: {} })]);
  c.replace('Pod', [podObject(pod('x', 'a', '10.32.0.1'))]);
  await c.settled();
  assert.equal(scripts.length, 0, 'no table before the policies are listed');
  c.replace('NetworkPolicy', []);
  await c.settled();
  assert.equal(scripts.length, 1);
  assert.match(scripts[0], /^add table inet weave-npc\ndelete table inet weave-npc\n/);
  assert.match(scripts[0], /add element inet weave-npc known \{ 10\.32\.0\.1 \}/);
  c.handle({ kind: 'NetworkPolicy', type: 'ADDED', object: deny });
  c.handle({ kind: 'Pod', type: 'ADDED', object: podObject(pod('x', 'b', '10.32.0.2')) });
  await c.settled();
  assert.equal(scripts.length, 2, 'two events, one transaction');
  assert.doesNotMatch(scripts[1], /delete table/);
  assert.match(scripts[1], /add element inet weave-npc ingress \{ 10\.32\.0\.1 : goto gi-\w+, 10\.32\.0\.2 : goto gi-\w+ \}/);
  assert.match(scripts[1], /add element inet weave-npc known \{ 10\.32\.0\.2 \}/);
  c.handle({ kind: 'Pod', type: 'MODIFIED', object: podObject(pod('x', 'b', '10.32.0.2')) });
  await c.settled();
  assert.equal(scripts.length, 2, 'nothing changed: no nft call');
  c.stop();
});

test('controller: a failed change is followed by a full rebuild; drop totals survive a group leaving', async () => {
  const { c, scripts, counters } = setup();
  c.replace('Namespace', [namespaceObject({ name: 'x', labels: {} })]);
  c.replace('Pod', [podObject(pod('x', 'a', '10.32.0.1'))]);
  c.replace('NetworkPolicy', [deny]);
  await c.settled();
  const g = c.status().logPrefixes[0];
  const counter = `dropi-${g.prefix.split('gi-')[1]}`;
  counters.set(counter, 7);
  await c.refreshCounters();
  assert.deepEqual(c.dropCounts(), [{ direction: 'ingress', namespace: 'x', policies: 'x/deny', packets: 7 }]);
  c.handle({ kind: 'NetworkPolicy', type: 'DELETED', object: deny });
  await c.settled();
  counters.delete(counter);
  await c.refreshCounters();
  assert.deepEqual(c.dropCounts(), [{ direction: 'ingress', namespace: 'x', policies: 'x/deny', packets: 7 }], 'kept after the group went');

  const f = setup(1);
  f.c.replace('Namespace', []); f.c.replace('Pod', []); f.c.replace('NetworkPolicy', []);
  await f.c.settled();
  await new Promise((r) => setTimeout(r, 1300));
  await f.c.settled();
  assert.equal(f.scripts.length, 2);
  assert.ok(f.scripts.every((s) => s.startsWith('add table inet weave-npc\ndelete table')), 'the retry is a full build');
  assert.equal(f.c.stats.errors, 1);
  assert.ok(f.log.records.some((r) => r.level === 'error' && /rebuilding/.test(String(r.msg))));
  assert.ok(scripts.length >= 2);
  c.stop(); f.c.stop();
});

test('controller: unenforceable policies in status and log; a logged packet becomes one explained line', async () => {
  const { c, log } = setup();
  c.replace('Namespace', [namespaceObject({ name: 'x', labels: { ns: 'x' } }), namespaceObject({ name: 'y', labels: { ns: 'y' } })]);
  c.replace('Pod', [podObject(pod('x', 'a', '10.32.0.1')), podObject(pod('y', 'b', '10.32.0.2', 'n2'))]);
  c.replace('NetworkPolicy', [deny, policyObject('x', 'bad', { podSelector: {}, ingress: [{ ports: [{ port: 80, protocol: 'ICMP' }] }] })]);
  await c.settled();
  const s = c.status();
  assert.deepEqual(s.unenforceable.map((u) => [u.policy, u.denied, u.problems[0].field]), [['x/bad', ['ingress'], 'spec.ingress[0].ports[0].protocol']]);
  assert.ok(log.records.some((r) => r.policy === 'x/bad' && r.level === 'warn'));
  assert.deepEqual(s.policies, [{ policy: 'x/bad', types: ['ingress'], pods: ['x/a'] }, { policy: 'x/deny', types: ['ingress'], pods: ['x/a'] }]);
  const prefix = s.logPrefixes[0].prefix;
  c.onLogged({ prefix, src: '10.32.0.2', dst: '10.32.0.1', proto: 6, port: 80 });
  c.onLogged({ prefix: 'something else', src: '10.32.0.2', dst: '10.32.0.1', proto: 6, port: 80 });
  const lines = log.records.filter((r) => r.msg === 'dropped by network policy');
  assert.equal(lines.length, 1);
  assert.deepEqual([lines[0].direction, lines[0].src, lines[0].dst, lines[0].protocol, lines[0].port, lines[0].policies], ['ingress', 'y/b', 'x/a', 'TCP', 80, ['x/bad', 'x/deny']]);
  const why = new Map((lines[0].why as Array<{ policy: string; why: string }>).map((w) => [w.policy, w.why]));
  assert.match(why.get('x/bad')!, /^cannot be enforced \(spec\.ingress\[0\]\.ports\[0\]\.protocol: unsupported protocol "ICMP"/);
  assert.equal(why.get('x/deny'), 'no ingress rules: denies all ingress');
  assert.equal(c.status().drops[0].src, 'y/b');
  c.stop();
});

test('nflog: the bind request, logged packets and errors parsed from netlink bytes', () => {
  const m = configMessage(86, 1);
  assert.equal(m.readUInt32LE(0), m.length);
  assert.equal(m.readUInt16LE(4), (4 << 8) | 1, 'NFNL_SUBSYS_ULOG / NFULNL_MSG_CONFIG');
  assert.equal(m.readUInt16BE(18), 86, 'res_id is the group, big-endian');
  assert.equal(m.length % 4, 0);
  // an IPv4/UDP header: 10.32.0.2 -> 10.32.0.1, dport 80
  const ip = Buffer.from('4500001c0000400040110000' + '0a200002' + '0a200001' + 'd4310050', 'hex');
  assert.deepEqual(parseIpv4(ip), { src: '10.32.0.2', dst: '10.32.0.1', proto: 17, port: 80 });
  const attr = (type: number, body: Buffer) => { const b = Buffer.alloc((4 + body.length + 3) & ~3); b.writeUInt16LE(4 + body.length, 0); b.writeUInt16LE(type, 2); body.copy(b, 4); return b; };
  const body = Buffer.concat([Buffer.from([2, 0, 0, 86]), attr(10, Buffer.from('npc i gi-abc\0')), attr(9, ip)]);
  const hdr = Buffer.alloc(16); hdr.writeUInt32LE(16 + body.length, 0); hdr.writeUInt16LE(4 << 8, 4);
  const err = Buffer.alloc(36); err.writeUInt32LE(36, 0); err.writeUInt16LE(2, 4); err.writeUInt32LE(1, 8); err.writeInt32LE(-16, 16);
  const dgram = Buffer.concat([hdr, body, err]);
  assert.deepEqual(parseDatagram(dgram, dgram.length), [
    { kind: 'packet', packet: { prefix: 'npc i gi-abc', src: '10.32.0.2', dst: '10.32.0.1', proto: 17, port: 80 } },
    { kind: 'error', errno: 16, seq: 1 },
  ]);
  assert.deepEqual(parseDatagram(dgram, 10), [], 'a truncated datagram yields nothing');
});
