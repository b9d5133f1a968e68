// Property tests for the wire decoders: whatever bytes a peer sends, in whatever chunks, only
// ProtocolError or RefusedError come out (never TypeError/RangeError/a crash), and valid streams
// decode identically however the socket splits them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Packr } from 'msgpackr';
import { loadCrypto, type CryptoEngine } from '../../mesh/crypto';
import { ProtocolError, RefusedError } from '../../lib/errors';
import { Msg, type Features } from '../../mesh/types';
import { FrameReader, WireSession, decodeFeatures, type Established } from '../../mesh/wire';

const crypto = loadCrypto('sodium');
const RUNS = 2000;
const pw = Buffer.from('fuzz-password');
const KA = crypto.x25519Keypair();
const KB = crypto.x25519Keypair();

function features(name: string, connId: string): Features {
  return { name, nickname: 'n', uid: 'u1', connId, overlays: ['sleeve'], overlayParams: { sleeve: { port: 6783 } }, trusted: false, listenPort: 6783 };
}

interface Side {
  s: WireSession;
  out: Buffer[];
  est: Established | null;
  msgs: Array<[number, Buffer]>;
}

function mk(c: CryptoEngine, outbound: boolean, password: Buffer | null, eph = outbound ? KA : KB): Side {
  const sd: Side = { s: undefined as unknown as WireSession, out: [], est: null, msgs: [] };
  sd.s = new WireSession(
    { crypto: c, outbound, password, ephemeral: eph, local: features(outbound ? '02:00:00:00:00:0a' : '02:00:00:00:00:0b', 'fz') },
    { write: (b) => sd.out.push(b), established: (e) => (sd.est = e), message: (t, p) => sd.msgs.push([t, Buffer.from(p)]) },
  );
  sd.s.start();
  return sd;
}

/** Everything `from` sends to a peer of the other role during a clean session, plus `n` messages. */
function transcript(outbound: boolean, password: Buffer | null, msgs: Array<[number, Buffer]>): Buffer {
  const a = mk(crypto, outbound, password);
  const b = mk(crypto, !outbound, password);
  const sent: Buffer[] = [];
  for (let i = 0; i < 5; i++) {
    const fromA = a.out.splice(0);
    sent.push(...fromA);
    for (const c of fromA) b.s.push(c);
    for (const c of b.out.splice(0)) a.s.push(c);
  }
  assert.ok(a.est && b.est, 'reference handshake completes');
  for (const [t, p] of msgs) sent.push(a.s.encode(t, p));
  return Buffer.concat(sent);
}

function split(buf: Uint8Array, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => (buf.length ? c % (buf.length + 1) : 0)))].sort((x, y) => x - y);
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of points) {
    out.push(Buffer.from(buf.subarray(prev, p)));
    prev = p;
  }
  out.push(Buffer.from(buf.subarray(prev)));
  return out;
}

function feedExpectingOnlyWireErrors(sd: Side, chunks: Buffer[]): void {
  for (const c of chunks) {
    try {
      sd.s.push(c);
    } catch (e) {
      if (e instanceof ProtocolError || e instanceof RefusedError) return;
      throw e;
    }
  }
}

const REF_MSGS: Array<[number, Buffer]> = [
  [2, Buffer.from('topology')],
  [3, Buffer.alloc(300, 1)],
  [1, Buffer.alloc(0)],
  [32, Buffer.from('overlay')],
];

type Mutation = { kind: 'flip'; at: number; bit: number } | { kind: 'set'; at: number; v: number } | { kind: 'trunc'; at: number } | { kind: 'insert'; at: number; bytes: Uint8Array } | { kind: 'delete'; at: number; n: number } | { kind: 'dup'; at: number; n: number };

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('set' as const), at: fc.nat(), v: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ kind: fc.constant('trunc' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 8 }) }),
  fc.record({ kind: fc.constant('dup' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 64 }) }),
);

function mutate(buf: Buffer, ms: Mutation[]): Buffer {
  let b = Buffer.from(buf);
  for (const m of ms) {
    if (b.length === 0) break;
    const at = m.at % b.length;
    switch (m.kind) {
      case 'flip':
        b[at] ^= 1 << m.bit;
        break;
      case 'set':
        b[at] = m.v;
        break;
      case 'trunc':
        b = b.subarray(0, at);
        break;
      case 'insert':
        b = Buffer.concat([b.subarray(0, at), m.bytes, b.subarray(at)]);
        break;
      case 'delete':
        b = Buffer.concat([b.subarray(0, at), b.subarray(at + m.n)]);
        break;
      case 'dup':
        b = Buffer.concat([b.subarray(0, at + m.n), b.subarray(at)]);
        break;
    }
  }
  return b;
}

test('random byte streams in random chunks: only ProtocolError/RefusedError escape', () => {
  fc.assert(
    fc.property(
      fc.boolean(),
      fc.boolean(),
      fc.oneof(
        fc.uint8Array({ maxLength: 200 }),
        // Valid-looking hello so the random part reaches the later stages too.
        fc.uint8Array({ maxLength: 200 }).map((r) => Buffer.concat([Buffer.from('weave\x00\x01\x01', 'latin1'), r])),
        fc.uint8Array({ maxLength: 200 }).map((r) => Buffer.concat([Buffer.from('weave\x00\x01\x01\x00', 'latin1'), Buffer.alloc(32, 9), r])),
      ),
      fc.array(fc.nat(), { maxLength: 10 }),
      (outbound, encrypted, bytes, cuts) => {
        const sd = mk(crypto, outbound, encrypted ? pw : null);
        feedExpectingOnlyWireErrors(sd, split(bytes, cuts));
      },
    ),
    { seed: 0x5eed, numRuns: RUNS },
  );
});

test('mutated valid transcripts (flipped, truncated, spliced, re-chunked): only wire errors escape', (t) => {
  const refs = new Map<string, Buffer>();
  for (const outbound of [true, false]) for (const enc of [true, false]) refs.set(`${outbound}/${enc}`, transcript(outbound, enc ? pw : null, REF_MSGS));
  let established = 0;
  let failed = 0;
  fc.assert(
    fc.property(fc.boolean(), fc.boolean(), fc.array(mutationArb, { minLength: 1, maxLength: 4 }), fc.array(fc.nat(), { maxLength: 12 }), (fromDialler, enc, muts, cuts) => {
      const stream = mutate(refs.get(`${fromDialler}/${enc}`) as Buffer, muts);
      const receiver = mk(crypto, !fromDialler, enc ? pw : null);
      let threw = false;
      for (const c of split(stream, cuts)) {
        try {
          receiver.s.push(c);
        } catch (e) {
          if (!(e instanceof ProtocolError || e instanceof RefusedError)) throw e;
          threw = true;
          break;
        }
      }
      if (threw) failed++;
      if (receiver.est) established++;
    }),
    { seed: 0xfeed, numRuns: RUNS },
  );
  t.diagnostic(`runs=${RUNS} failed=${failed} established=${established}`);
  // The mutations must actually exercise both outcomes, or this test proves little.
  assert.ok(failed > RUNS / 4, `failed=${failed}`);
  assert.ok(established > 0, `established=${established}`);
});

test('an unmutated transcript decodes (control for the mutation test)', () => {
  for (const fromDialler of [true, false]) {
    for (const enc of [true, false]) {
      const r = mk(crypto, !fromDialler, enc ? pw : null);
      r.s.push(transcript(fromDialler, enc ? pw : null, REF_MSGS));
      assert.ok(r.est);
      assert.deepEqual(r.msgs.map(([t, p]) => [t, p.length]), REF_MSGS.map(([t, p]) => [t, p.length]));
    }
  }
});

test('any valid sequence of frames split at random chunk boundaries decodes identically', () => {
  fc.assert(
    fc.property(
      fc.boolean(),
      fc.boolean(),
      // Msg.Rekey is the session's own message (password rotation), never delivered
      fc.array(fc.tuple(fc.integer({ min: 0, max: 255 }).filter((t) => t !== Msg.Rekey), fc.uint8Array({ maxLength: 600 })), { maxLength: 20 }),
      fc.array(fc.nat(), { maxLength: 30 }),
      (fromDialler, enc, msgs, cuts) => {
        const list = msgs.map(([t, p]) => [t, Buffer.from(p)] as [number, Buffer]);
        const stream = transcript(fromDialler, enc ? pw : null, list);
        const r = mk(crypto, !fromDialler, enc ? pw : null);
        for (const c of split(stream, cuts)) r.s.push(c);
        assert.ok(r.est);
        assert.equal(r.msgs.length, list.length);
        for (let i = 0; i < list.length; i++) {
          assert.equal(r.msgs[i][0], list[i][0]);
          assert.ok(r.msgs[i][1].equals(list[i][1]));
        }
      },
    ),
    { seed: 0xc0de, numRuns: 500 },
  );
});

test('FrameReader: random streams and limits give frames or ProtocolError, never anything else', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), fc.array(fc.nat(), { maxLength: 8 }), fc.integer({ min: 0, max: 64 }), (bytes, cuts, max) => {
      const r = new FrameReader(max);
      let consumed = 0;
      try {
        for (const c of split(bytes, cuts)) {
          r.push(c);
          for (let f = r.nextFrame(); f; f = r.nextFrame()) {
            assert.ok(f.length <= max);
            consumed += 4 + f.length;
          }
        }
      } catch (e) {
        if (!(e instanceof ProtocolError)) throw e;
        return;
      }
      assert.ok(consumed <= bytes.length);
    }),
    { seed: 7, numRuns: RUNS },
  );
});

test('decodeFeatures: any msgpack value or random bytes yield valid Features or ProtocolError', () => {
  const packr = new Packr({ useRecords: false });
  const good = { v: 1, ...features('02:00:00:00:00:0a', 'x') };
  fc.assert(
    fc.property(
      fc.oneof(
        fc.anything().map((x) => packr.pack(x)),
        fc.uint8Array({ maxLength: 100 }),
        // One field replaced by anything: exercises each validator.
        fc.tuple(fc.constantFrom(...Object.keys(good)), fc.anything()).map(([k, v]) => packr.pack({ ...good, [k]: v })),
      ),
      (bytes) => {
        try {
          const f = decodeFeatures(bytes);
          assert.equal(typeof f.name, 'string');
          assert.ok(Array.isArray(f.overlays));
          assert.ok(Number.isInteger(f.listenPort));
        } catch (e) {
          if (!(e instanceof ProtocolError)) throw e;
        }
      },
    ),
    { seed: 99, numRuns: RUNS },
  );
});
