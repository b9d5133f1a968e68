// mesh/codec.ts is the one msgpack codec: every channel's decoder goes through decodeMsg, so malformed
// bytes are one ProtocolError shape everywhere (its decoder error kept as cause), and one shared
// decoder instance keeps no state from one message (or peer) to the next.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Packr } from 'msgpackr';
import { decodeMsg, encodeMsg, encodeMsgWithPacked } from '../../mesh/codec';
import { ProtocolError } from '../../lib/errors';
import { decodeFeatures } from '../../mesh/wire';
import { Ring } from '../../ipam/ring';
import { decodeGossip, decodePaxosNode, decodeRecords, decodeUnicast } from '../../ipam/wire';
import { decodeEntries } from '../../dns/records';
import { decodePrefixUpdate } from '../../router/prefixes';
import { decodeFastDpCtl } from '../../router/fastdp';

test('a record definition one message sends does not outlive that message', () => {
  // hostile on purpose: our encoder never writes records, a peer's might
  const withRecords = new Packr({ useRecords: true }).pack({ a: 1, b: 2 });
  assert.equal(withRecords[0], 0xd4, 'the bytes open with a record definition (ext 0x72)');
  assert.deepEqual(decodeMsg(withRecords, 'test'), { a: 1, b: 2 });
  // 0x40 names record slot 0 only while a definition is in force; in a fresh message it is the integer 64
  assert.equal(decodeMsg(Uint8Array.of(0x40), 'test'), 64);
  assert.deepEqual(decodeMsg(encodeMsg({ a: [1, 'x'], b: true }), 'test'), { a: [1, 'x'], b: true });
});

test('encodeMsgWithPacked is byte for byte encodeMsg of the whole, at every array header size', () => {
  for (const n of [0, 1, 15, 16, 300, 65535, 65536]) {
    const items = Array.from({ length: n }, (_, i) => (i % 3 === 0 ? [i, 'x'.repeat(i % 40)] : i % 3 === 1 ? { a: i } : 'y'));
    const packed = items.map((v) => encodeMsg(v));
    const got = encodeMsgWithPacked({ v: 1, k: 0, w: ['a'] }, 'p', packed);
    const whole = encodeMsg({ v: 1, k: 0, w: ['a'], p: items });
    assert.deepEqual(Buffer.from(got), Buffer.from(whole), `n=${n}`);
    assert.deepEqual(decodeMsg(got, 'test'), { v: 1, k: 0, w: ['a'], p: items });
  }
  assert.throws(() => encodeMsgWithPacked({ p: 1 }, 'p', []), /given twice/);
});

/** An array header announcing two elements, then one: the decoder runs out of bytes. */
const TRUNCATED = Uint8Array.of(0x92, 0x01);

test('malformed bytes are a ProtocolError naming the channel, with the decoder error as cause', () => {
  const cases: Array<[string, () => unknown]> = [
    ['features', () => decodeFeatures(TRUNCATED)],
    ['ipam ring', () => Ring.decode(TRUNCATED)],
    ['ipam gossip', () => decodeGossip(Uint8Array.of(0x92, 0x01))],
    ['ipam unicast', () => decodeUnicast(Uint8Array.of(0xdc))],
    ['ipam held records', () => decodeRecords(TRUNCATED, { start: 0, end: 1 })],
    ['ipam paxos state', () => decodePaxosNode(TRUNCATED, '02:00:00:00:00:01')],
    ['dns gossip', () => decodeEntries(TRUNCATED)],
    ['prefixes gossip', () => decodePrefixUpdate(TRUNCATED)],
    ['fastdp control', () => decodeFastDpCtl(TRUNCATED)],
    ['test', () => decodeMsg(Buffer.concat([encodeMsg({ v: 1 }), Buffer.of(0)]), 'test')], // trailing bytes
  ];
  for (const [what, f] of cases) {
    assert.throws(f, (e: unknown) => {
      assert.ok(e instanceof ProtocolError, `${what}: ${String(e)}`);
      assert.match(e.message, new RegExp(`^${what}: malformed msgpack`));
      assert.ok(e.cause instanceof Error, `${what}: the decoder's error is kept as cause`);
      return true;
    });
  }
  assert.throws(() => decodeMsg('not bytes' as unknown as Uint8Array, 'test'), /test: payload is not bytes/);
});
