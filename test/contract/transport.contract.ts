// The Transport contract (mesh/types.ts): what the mesh relies on from any transport, run against
// every implementation: TcpTransport (mesh/tcp-transport.ts, over loopback) and the in-memory
// FakeUnderlay transport every simulation uses (test/fakes/underlay.ts). Shape after js-libp2p's
// interface compliance suites: one describe per implementation, the implementation supplies a factory.
//
// Covered: dial/accept and what each end learns about the other; the handshake's verdict on both
// sides (password mismatch, encryption on one side only); message order and integrity both ways,
// including messages that arrive before the receiver attached its handler; Msg.Heartbeat staying the
// transport's own; close on both ends (once, after what was sent before, sends afterwards ignored);
// the transport's own close; refused dials; a sender that outruns its peer.
//
// Documented differences (each case asserts the behaviour of both, nothing is skipped):
// - Backpressure: TcpTransport closes a connection whose unsent bytes pass maxSendQueueBytes (a peer
//   that does not read must not grow our memory without bound); the fake has no send queue to bound
//   (messages are clock events), so the same burst is delivered whole and in order. The factory says
//   which (sendQueueLimitBytes).
// - Trusted subnets (dataKey null while the session stays encrypted) are a TcpTransport option the fake
//   does not model; tcp-transport's unit tests cover them.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { WeaveError } from '../../lib/errors';
import { Msg, type ConnectFailure, type Features, type MeshConnection, type Transport } from '../../mesh/types';

/** One transport as the contract drives it. */
export interface TransportEnd {
  t: Transport;
  features: Features;
  /** where others dial it ('' when not listening) */
  addr: string;
  /** inbound connections handed to listen's onConnection, in order */
  accepted: MeshConnection[];
  /** inbound handshakes refused (listen's onRefused) */
  refused: Array<{ addr: string; f: ConnectFailure }>;
}

export interface TransportFactory {
  /** A transport with this password (null: unencrypted), listening when listen is true. */
  make(o: { password: string | null; listen: boolean }): Promise<TransportEnd>;
  /** An address nothing listens on. */
  deadAddress(): Promise<string>;
  /** Lets time pass (a fake clock advances, a real one is waited for) until pred holds; fails after a bound. */
  until(pred: () => boolean, what: string): Promise<void>;
  /** Settles a promise whose outcome needs time to pass (a dial over a fake clock). */
  settle<T>(p: Promise<T>): Promise<T>;
  /** Lets ms of time pass (for what must NOT happen meanwhile). */
  wait(ms: number): Promise<void>;
  /** TcpTransport: the send queue bound the burst case exceeds; absent: no bound (the fake). */
  sendQueueLimitBytes?: number;
  /** closes everything made */
  cleanup(): Promise<void>;
}

let seq = 0;
/** Features the mesh would send: a valid peer name, a fresh connId per dial. */
export function contractFeatures(): Features {
  const n = (++seq).toString(16).padStart(4, '0');
  return { name: `02:00:00:00:${n.slice(0, 2)}:${n.slice(2)}`, nickname: `c${n}`, uid: `uid-${n}`, connId: `conn-${n}-${Math.random().toString(16).slice(2, 10)}`, overlays: ['sleeve'], overlayParams: { sleeve: { port: 6783 } }, trusted: false, listenPort: 6783 };
}

interface Pair { a: TransportEnd; b: TransportEnd; out: MeshConnection; inb: MeshConnection }

interface Recorder { msgs: Array<[number, Buffer]>; closes: string[] }

function record(c: MeshConnection): Recorder {
  const r: Recorder = { msgs: [], closes: [] };
  c.onMessage = (type, payload) => { r.msgs.push([type, Buffer.from(payload)]); };
  c.onClose = (reason) => { r.closes.push(reason); };
  return r;
}

/** A payload whose bytes say which message it is (checks order and integrity at once). */
function payload(i: number, size: number): Buffer {
  const b = Buffer.alloc(size);
  for (let k = 0; k < size; k++) b[k] = (i * 31 + k) & 0xff;
  if (size >= 4) b.writeUInt32BE(i, 0);
  return b;
}

const SIZES = [0, 1, 5, 100, 1400, 65_536, 300_000];
const TYPES = [Msg.Topology, Msg.Gossip, Msg.Overlay, 200];

export function describeTransport(name: string, factory: () => TransportFactory): void {
  describe(`transport contract: ${name}`, () => {
    const f = factory();
    after(() => f.cleanup());

    async function pair(password: string | null = 'contract password'): Promise<Pair> {
      const b = await f.make({ password, listen: true });
      const a = await f.make({ password, listen: false });
      const before = b.accepted.length;
      const out = await f.settle(a.t.dial(b.addr, a.features));
      await f.until(() => b.accepted.length > before, 'the listener to accept');
      return { a, b, out, inb: b.accepted[before] };
    }

    async function dialFails(a: TransportEnd, addr: string): Promise<WeaveError> {
      try {
        const c = await f.settle(a.t.dial(addr, a.features));
        c.close('unexpected');
      } catch (e) {
        assert.ok(e instanceof WeaveError, `a dial fails with a WeaveError, not ${String(e)}`);
        return e;
      }
      throw new Error('the dial succeeded but should have failed');
    }

    test('dial and accept: each end gets an authenticated connection describing the other', async () => {
      const { a, b, out, inb } = await pair();
      assert.equal(out.outbound, true);
      assert.equal(inb.outbound, false);
      assert.equal(out.id, a.features.connId, 'the dialler chooses the connection id');
      assert.equal(inb.id, out.id, 'both ends report the same id');
      assert.equal(out.remote.name, b.features.name);
      assert.equal(out.remote.uid, b.features.uid);
      assert.equal(inb.remote.name, a.features.name);
      assert.equal(inb.remote.connId, a.features.connId);
      assert.deepEqual(inb.remote.overlayParams, a.features.overlayParams, 'features arrive as sent');
      assert.equal(out.local.name, a.features.name);
      assert.equal(inb.local.name, b.features.name);
      assert.equal(out.remoteAddr, inb.localAddr, 'what one end calls remote, the other calls local');
      assert.equal(inb.remoteAddr, out.localAddr);
      assert.match(out.remoteAddr, /^[\d.]+:\d+$/);
      assert.equal(out.encrypted, true);
      assert.equal(inb.encrypted, true);
      assert.ok(out.sessionKey && out.sessionKey.length === 32, 'an encrypted connection has a 32-byte session key');
      assert.deepEqual(Buffer.from(inb.sessionKey!), Buffer.from(out.sessionKey!), 'both ends derive the same session key');
      assert.deepEqual(Buffer.from(out.dataKey!), Buffer.from(out.sessionKey!), 'without trust, data is sealed with the session key');
      assert.deepEqual(b.refused, []);
    });

    test('without a password: unencrypted at both ends, no keys', async () => {
      const { out, inb } = await pair(null);
      for (const c of [out, inb]) {
        assert.equal(c.encrypted, false);
        assert.equal(c.sessionKey, null);
        assert.equal(c.dataKey, null);
      }
    });

    test('handshake verdicts on both sides: another password is EPASSWORD, a password on one side only EENCRYPTION', async () => {
      const b = await f.make({ password: 'right', listen: true });
      for (const [password, code] of [['wrong', 'EPASSWORD'], [null, 'EENCRYPTION']] as const) {
        const a = await f.make({ password, listen: false });
        const before = b.refused.length;
        const e = await dialFails(a, b.addr);
        assert.equal(e.code, code, `the dialler's verdict: ${e.message}`);
        await f.until(() => b.refused.length > before, `the listener to refuse (${code})`);
        assert.equal(b.refused[before].f.code, code, 'the listener reaches the same verdict');
        assert.match(b.refused[before].addr, /^[\d.]+:\d+$/, 'and says who it refused');
      }
      const unencrypted = await f.make({ password: null, listen: true });
      const a = await f.make({ password: 'right', listen: false });
      assert.equal((await dialFails(a, unencrypted.addr)).code, 'EENCRYPTION', 'either way round');
      assert.equal(b.accepted.length, 0, 'a refused handshake is never handed to the mesh');
    });

    test('a dial to an address nobody listens on fails with ECONNREFUSED; the transport stays usable', async () => {
      const a = await f.make({ password: 'contract password', listen: false });
      const e = await dialFails(a, await f.deadAddress());
      assert.equal(e.code, 'ECONNREFUSED', e.message);
      const b = await f.make({ password: 'contract password', listen: true });
      const c = await f.settle(a.t.dial(b.addr, a.features));
      assert.equal(c.remote.name, b.features.name);
    });

    test('messages arrive whole and in order both ways, those sent before the receiver attached too', async () => {
      const { out, inb } = await pair();
      // the listener's side talks first, before the dialler's code has even attached a handler
      const sent: Array<[number, Buffer]> = [];
      let i = 0;
      for (const size of SIZES) for (const type of TYPES) {
        const p = payload(i++, size);
        sent.push([type, Buffer.from(p)]);
        inb.send(type, p);
        p.fill(0xee); // the sender's buffer is its own again once send returns
      }
      const rin = record(inb);
      const rout = record(out);
      const back: Array<[number, Buffer]> = [];
      for (let k = 0; k < 200; k++) {
        const p = payload(10_000 + k, (k * 37) % 3000);
        back.push([Msg.Gossip, Buffer.from(p)]);
        out.send(Msg.Gossip, p);
      }
      await f.until(() => rout.msgs.length >= sent.length && rin.msgs.length >= back.length, 'every message to arrive');
      assert.equal(rout.msgs.length, sent.length);
      rout.msgs.forEach(([t, p], k) => {
        assert.equal(t, sent[k][0], `type of message ${k}`);
        assert.ok(p.equals(sent[k][1]), `bytes of message ${k} (${p.length} vs ${sent[k][1].length})`);
      });
      assert.equal(rin.msgs.length, back.length);
      rin.msgs.forEach(([, p], k) => assert.ok(p.equals(back[k][1]), `bytes of reply ${k}`));
    });

    test('Msg.Heartbeat is the transport\'s own: never handed to onMessage', async () => {
      const { out, inb } = await pair();
      const r = record(inb);
      out.send(Msg.Heartbeat, new Uint8Array(0));
      out.send(Msg.Topology, payload(1, 10));
      await f.until(() => r.msgs.length >= 1, 'the message after the heartbeat');
      assert.deepEqual(r.msgs.map(([t]) => t), [Msg.Topology]);
    });

    test('close: the closer hears its reason once, the peer hears it closed after what was sent before; later sends are ignored', async () => {
      const { out, inb } = await pair();
      const rout = record(out);
      const rin = record(inb);
      for (let k = 0; k < 20; k++) out.send(Msg.Gossip, payload(k, 1000));
      out.close('contract: done');
      out.close('contract: twice');
      out.send(Msg.Gossip, payload(99, 10));
      await f.until(() => rout.closes.length > 0 && rin.closes.length > 0, 'both ends to see the close');
      assert.deepEqual(rout.closes, ['contract: done']);
      assert.equal(rin.msgs.length, 20, 'messages sent before the close arrive before it');
      assert.equal(rin.closes.length, 1);
      assert.match(rin.closes[0], /closed by peer/);
      inb.send(Msg.Gossip, payload(1, 10));
      inb.close('late');
      await f.wait(200);
      assert.equal(rin.closes.length, 1, 'onClose fires once');
      assert.equal(rout.msgs.length, 0, 'nothing arrives on a closed connection');
    });

    test('closing the transport closes its connections at both ends and refuses dials to and from it', async () => {
      const { a, b, out, inb } = await pair();
      const rout = record(out);
      const rin = record(inb);
      await a.t.close();
      await f.until(() => rout.closes.length === 1 && rin.closes.length === 1, 'both ends to close');
      assert.equal((await dialFails(a, b.addr)).code, 'ECLOSED', 'a closed transport does not dial');
      await b.t.close();
      const c = await f.make({ password: 'contract password', listen: false });
      assert.equal((await dialFails(c, b.addr)).code, 'ECONNREFUSED', 'nobody listens at a closed transport\'s address');
    });

    test(f.sendQueueLimitBytes ? 'a sender that outruns its peer past the send queue bound is closed, not buffered without end' : 'a burst far beyond any socket buffer is delivered whole and in order (no send queue to bound)', async () => {
      const { out, inb } = await pair();
      const rout = record(out);
      const rin = record(inb);
      const chunk = 64 * 1024;
      // past what loopback socket buffers absorb (several MB) when there is a bound
      const total = f.sendQueueLimitBytes ? 64 * 1024 * 1024 : 16 * 1024 * 1024;
      // one synchronous burst: the receiver cannot read in between (same thread, or the clock stands still)
      let k = 0;
      for (; k * chunk < total && rout.closes.length === 0; k++) out.send(Msg.Gossip, payload(k, chunk));
      if (f.sendQueueLimitBytes) {
        await f.until(() => rout.closes.length === 1 && rin.closes.length === 1, 'the overflowing connection to close at both ends');
        assert.match(rout.closes[0], /send queue overflow/);
        assert.ok(rin.msgs.length < k, 'not everything was buffered');
      } else {
        await f.until(() => rin.msgs.length === k, 'the whole burst');
        rin.msgs.forEach(([, p], i) => assert.equal(p.readUInt32BE(0), i));
        assert.equal(rout.closes.length, 0);
      }
    });
  });
}
