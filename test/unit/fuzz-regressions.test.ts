// One regression test per finding of the fuzzer (test/fuzz, `npm run fuzz`), each failing on the code
// before its fix: decoded values with hostile toString/valueOf named in error messages, overlay
// parameters of any shape, quadratic stream reassembly (mesh frames, DNS over TCP), fragments past
// an IPv4 datagram, short probes not counted, Docker plugin methods named after Object members and
// endpoint fields reaching the router unchecked.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encodeMsg } from '../../mesh/codec';
import { ProtocolError, UsageError, WeaveError, describeValue } from '../../lib/errors';
import { FrameReader, decodeFeatures, encodeFeatures } from '../../mesh/wire';
import { decodeTopology } from '../../mesh/topology';
import { decodeGossip } from '../../mesh/gossip';
import { decodeEntries } from '../../dns/records';
import { decodePrefixUpdate } from '../../router/prefixes';
import { decodeFastDpCtl } from '../../router/fastdp';
import { decodeLinksMessage, decodeLinksUpdate } from '../../ui/links';
import { Ring } from '../../ipam/ring';
import { validateState } from '../../router/endpoints';
import { encodeStateFile } from '../../lib/state-file';
import { TcpAssembler } from '../../dns/server';
import { fragment } from '../../router/icmp';
import { COUNTER } from '../../router/datapath';
import { FrameType, encodeFrame } from '../../router/frame';
import { ipv4Packet } from '../fakes/channel-tun';
import { loadCrypto } from '../../mesh/crypto';
import { datapathRig, KEYS, SEALED_IDX } from '../fuzz/targets-data';
import { targetNamed } from '../fuzz/targets';
import { DockerDriver } from '../../docker/driver';
import { DockerState } from '../../docker/state';
import { silentLogger } from '../../lib/log';
import type { Features } from '../../mesh/types';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

/** What msgpack or JSON decodes from a map with these keys: data where methods are expected. */
const HOSTILE = () => ({ toString: 1, valueOf: 'x' });
const P1 = '02:00:00:00:00:01';

test('describeValue names any decoded value without calling it', () => {
  const h = HOSTILE();
  assert.throws(() => String(h), TypeError, 'the premise: String() calls the data');
  assert.equal(describeValue(h), 'a map');
  assert.equal(describeValue([h]), 'a list of 1');
  assert.equal(describeValue('x'.repeat(100)), `"${'x'.repeat(40)}"...(100 characters)`);
  assert.equal(describeValue(Buffer.alloc(3)), '3 bytes');
  assert.equal(describeValue(7), '7');
  assert.equal(describeValue(null), 'null');
});

test('a hostile version (or type, origin, address) in any gossip channel is a ProtocolError, not a TypeError', () => {
  const msgs: Array<[string, () => unknown]> = [
    ['topology', () => decodeTopology(encodeMsg({ v: HOSTILE(), k: 0 }))],
    ['topology list', () => decodeTopology(encodeMsg({ v: [HOSTILE()], k: 0 }))],
    ['gossip', () => decodeGossip(encodeMsg({ v: HOSTILE() }))],
    ['dns version', () => decodeEntries(encodeMsg({ v: HOSTILE(), e: [] }))],
    ['dns addr', () => decodeEntries(encodeMsg({ v: 1, e: [['a.weave.local.', HOSTILE(), P1, 1, 0, '']] }))],
    ['dns name', () => decodeEntries(encodeMsg({ v: 1, e: [[HOSTILE(), '10.0.0.1', P1, 1, 0, '']] }))],
    ['prefixes origin', () => decodePrefixUpdate(encodeMsg({ v: 1, entries: [{ o: HOSTILE(), ver: 1, p: [] }] }))],
    ['prefixes prefix', () => decodePrefixUpdate(encodeMsg({ v: 1, entries: [{ o: P1, ver: 1, p: [[HOSTILE()]] }] }))],
    ['links', () => decodeLinksUpdate(encodeMsg({ v: HOSTILE(), e: [] }))],
    ['links ask', () => decodeLinksMessage(encodeMsg({ v: 1, e: [], a: [[HOSTILE(), 1]] }))],
    ['fastdp', () => decodeFastDpCtl(encodeMsg({ v: 1, o: 'fastdp', t: HOSTILE() }))],
    ['ipam ring', () => Ring.decode(encodeMsg({ v: HOSTILE() }))],
  ];
  for (const [what, f] of msgs) assert.throws(f, (e: unknown) => e instanceof ProtocolError, what);
});

test('a hostile version in endpoints.json or docker.json is a WeaveError naming the file\'s problem', () => {
  assert.throws(() => validateState(JSON.parse('{"version":{"toString":1,"valueOf":"x"},"endpoints":[],"exposed":[]}')), (e: unknown) => e instanceof WeaveError && /unsupported version a map/.test(e.message));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'weave-fuzzreg-'));
  try {
    fs.writeFileSync(path.join(dir, 'docker.json'), encodeStateFile('docker', '{"version":{"toString":1,"valueOf":"x"}}'));
    const st = new DockerState(dir, silentLogger());
    assert.match(st.recovery()[0].problem, /unsupported version a map/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

function features(params: Record<string, unknown>): Uint8Array {
  const f: Features = { name: P1, nickname: 'n', uid: 'u', connId: 'c', overlays: ['sleeve'], overlayParams: params, trusted: false, listenPort: 6783 };
  return encodeFeatures(f);
}

test('features: overlay parameters are flat maps of short scalars; the sleeve port is a port', () => {
  assert.throws(() => decodeFeatures(encodeMsg({ v: HOSTILE() })), ProtocolError);
  const good = decodeFeatures(features({ sleeve: { port: 6783 }, fastdp: { v: 1, mac: '02:00:00:00:00:aa', vtep: '10.0.0.1', port: 6784, hb: 6785 } }));
  assert.deepEqual(good.overlayParams.sleeve, { port: 6783 });
  for (const bad of [{ sleeve: 1 }, { sleeve: [6783] }, { sleeve: { port: 0 } }, { sleeve: { port: '6783' } }, { fastdp: { v: { x: 1 } } }, { fastdp: { toString: 1 } },
    { fastdp: { s: 'x'.repeat(300) } }, { x: Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, i])) }]) {
    assert.throws(() => decodeFeatures(features(bad)), ProtocolError, JSON.stringify(bad).slice(0, 80));
  }
});

test('FrameReader: a frame delivered a byte at a time is gathered into blocks (the list stays short)', () => {
  const n = 1 << 20;
  const frame = Buffer.alloc(4 + n);
  frame.writeUInt32BE(n, 0);
  for (let i = 0; i < n; i++) frame[4 + i] = i & 0xff;
  const r = new FrameReader();
  let got: Buffer | null = null;
  for (let i = 0; i < frame.length; i++) {
    r.push(frame.subarray(i, i + 1));
    got = r.nextFrame() ?? got;
    // before the fix every byte was an entry, consumed with Array.shift (quadratic)
    // (1 MiB in 16 KiB blocks: 64)
    assert.ok((r as unknown as { chunks: unknown[] }).chunks.length <= 80, `list of ${(r as unknown as { chunks: unknown[] }).chunks.length} entries`);
  }
  assert.ok(got && got.equals(frame.subarray(4)));
  assert.equal(r.buffered, 0);
  // mixed sizes still reassemble exactly, large chunks kept as they are
  const big = Buffer.alloc(5000, 7);
  const two = Buffer.concat([Buffer.of(0, 0, 0x13, 0x88), big, Buffer.of(0, 0, 0, 3, 1, 2, 3)]);
  const r2 = new FrameReader();
  const out: Buffer[] = [];
  for (const c of [two.subarray(0, 3), two.subarray(3, 2000), two.subarray(2000, 2001), two.subarray(2001)]) {
    r2.push(c);
    for (let f = r2.nextFrame(); f; f = r2.nextFrame()) out.push(Buffer.from(f));
  }
  assert.deepEqual(out.map((b) => b.length), [5000, 3]);
  assert.ok(out[0].equals(big) && out[1].equals(Buffer.of(1, 2, 3)));
});

test('DNS over TCP: a query a byte at a time is appended, not concatenated anew per byte', () => {
  const q = Buffer.alloc(65535, 9);
  const msg = Buffer.concat([Buffer.of(0xff, 0xff), q, Buffer.of(0, 2, 5, 6)]);
  const a = new TcpAssembler();
  const got: Buffer[] = [];
  let buffers = 0;
  let last: unknown = null;
  for (let i = 0; i < msg.length; i++) {
    a.feed(msg.subarray(i, i + 1), (m) => got.push(Buffer.from(m)));
    const b = (a as unknown as { buf: unknown }).buf;
    if (b !== last && b !== null) buffers++;
    last = b;
  }
  assert.deepEqual(got.map((m) => m.length), [65535, 2]);
  assert.ok(got[0].equals(q) && got[1].equals(Buffer.of(5, 6)));
  assert.equal(a.pending, 0);
  // doubling from 512 bytes: a handful of buffers, not one per byte
  assert.ok(buffers <= 12, `${buffers} buffers`);
  // a split mid-header and several messages in one chunk
  const b2 = new TcpAssembler();
  const seen: number[] = [];
  b2.feed(Buffer.of(0), (m) => seen.push(m.length));
  b2.feed(Buffer.of(1, 7, 0, 2), (m) => seen.push(m.length));
  assert.equal(b2.feed(Buffer.of(8, 9, 0, 0), (m) => seen.push(m.length)), 2);
  assert.deepEqual(seen, [1, 2, 0]);
});

test('a fragment whose offset plus payload passes 65535 is not split (the 13-bit offset would wrap)', () => {
  const p = ipv4Packet({ src: '10.32.1.5', dst: '10.32.0.7', payload: Buffer.alloc(2000, 2) });
  p.writeUInt16BE(8100, 6); // a (forged) non-last fragment at byte 64800, no DF
  const out = Buffer.alloc(1600 * 8);
  const lens = new Int32Array(8);
  assert.equal(fragment(p, 0, p.length, 1400, out, 0, 1600, lens, 0, 8), 0);
  p.writeUInt16BE(1000, 6); // at byte 8000 it fits
  assert.equal(fragment(p, 0, p.length, 1400, out, 0, 1600, lens, 0, 8), 2);
  assert.equal(((out[6] & 0x1f) << 8 | out[7]) * 8, 8000);
});

test('sleeve: an authentic Probe or ProbeAck too short for its fields is counted as malformed', () => {
  const sodium = loadCrypto('sodium', silentLogger());
  const g = datapathRig();
  let counter = 1;
  for (const type of [FrameType.Probe, FrameType.ProbeAck]) {
    const before = g.counters[COUNTER.dropMalformed];
    g.udp.next = encodeFrame(sodium, KEYS.tx, type, 0, SEALED_IDX, counter++, Buffer.alloc(3));
    g.dp.drainUdp();
    assert.equal(g.counters[COUNTER.dropMalformed], before + 1, `type ${type}`);
  }
  // a full probe is answered, not counted
  const before = g.counters[COUNTER.dropMalformed];
  const sent = g.udp.sent;
  g.udp.next = encodeFrame(sodium, KEYS.tx, FrameType.Probe, 0, SEALED_IDX, counter++, Buffer.alloc(8));
  g.dp.drainUdp();
  assert.equal(g.counters[COUNTER.dropMalformed], before);
  assert.equal(g.udp.sent, sent + 1);
});

test('docker plugin: methods named after Object members are unknown; endpoint address, MAC and sandbox are checked', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'weave-fuzzreg-'));
  try {
    let joins = 0;
    const d = new DockerDriver({
      addresses: () => undefined, names: () => undefined, range: '10.32.0.0/12', defaultSubnet: '10.32.0.0/12', overlay: ['10.32.0.0/12'], dnsAddr: () => null,
      endpoints: { joinDocker: async () => { joins++; throw new Error('not reached'); }, leaveDocker: async () => undefined },
      state: new DockerState(dir, silentLogger()), log: silentLogger(),
    });
    for (const m of ['__proto__', 'constructor', 'toString', 'hasOwnProperty']) {
      await assert.rejects(d.handle(m, {}), (e: unknown) => e instanceof WeaveError && e.code === 'ENOTFOUND', m);
    }
    const ep = (iface: Record<string, unknown>) => d.handle('NetworkDriver.CreateEndpoint', { NetworkID: 'n1', EndpointID: 'e1', Interface: iface });
    await assert.rejects(ep({ Address: '10.32.0\ufffd2' }), UsageError);
    await assert.rejects(ep({ Address: '10.32.0.5' }), UsageError); // ADDR/LEN
    await assert.rejects(ep({ Address: '10.32.0.5/12', MacAddress: 'nope' }), UsageError);
    await ep({ Address: '10.32.0.5/12', MacAddress: '02:42:0a:20:00:05' });
    await assert.rejects(d.handle('NetworkDriver.Join', { NetworkID: 'n1', EndpointID: 'e1' }), UsageError);
    await assert.rejects(d.handle('NetworkDriver.Join', { NetworkID: 'n1', EndpointID: 'e1', SandboxKey: 'relative/x' }), UsageError);
    assert.equal(joins, 0);
    // the MAC an address request carries becomes part of an IPAM ident: checked, not any string
    await assert.rejects(d.handle('IpamDriver.RequestAddress', { PoolID: 'weave:10.32.0.0/12', Options: { 'com.docker.network.endpoint.macaddress': 'x'.repeat(2000) } }), (e: unknown) => e instanceof UsageError && /is not a MAC address/.test(e.message));
    await assert.rejects(d.handle('IpamDriver.RequestAddress', { PoolID: 'weave:10.32.0.0/12', Options: { 'com.docker.network.endpoint.macaddress': 7 } }), /is not a MAC address/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('sleeve control: a hostile type is a ProtocolError naming it safely', async () => {
  const t = targetNamed('overlay-sleeve-control');
  try {
    assert.throws(() => t.run(encodeMsg({ v: 1, o: 'sleeve', t: HOSTILE() }), () => 0), (e: unknown) => e instanceof ProtocolError && (e.context as { t: string }).t === 'a map');
    assert.throws(() => t.run(encodeMsg({ v: [HOSTILE()], o: 'sleeve', t: 'hear', on: true }), () => 0), ProtocolError);
  } finally {
    await t.close?.();
  }
});
