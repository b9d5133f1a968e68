// lib/lag.ts: the monitor's arithmetic on a FakeClock (FakeClock.stall is a blocked event loop), and
// the TCP transport's handshake and read timeouts with it: a stall does not cost a connection whose
// peer spoke meanwhile, and a silent peer is still found within its limit plus the cap.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'net';
import { FakeClock } from '../../lib/clock';
import { LAG_HISTORY_MS, LAG_INTERVAL_MS, LAG_THRESHOLD_MS, LagMonitor, NO_LAG, creditedSilence, type LagCredit } from '../../lib/lag';
import { MemoryLogger } from '../../lib/log';
import { WeaveError } from '../../lib/errors';
import { loadCrypto } from '../../mesh/crypto';
import { TcpTransport } from '../../mesh/tcp-transport';
import { Msg, type Features, type MeshConnection } from '../../mesh/types';
import { waitFor } from '../lab/exec';

test('monitor: a late wake-up beyond the threshold is a stall, credited by time; shorter ones are noise', () => {
  const clock = new FakeClock();
  const m = new LagMonitor({ clock });
  const t0 = clock.now();
  m.start();
  clock.advance(10_000);
  assert.equal(m.stalledSince(t0, Infinity), 0, 'a loop that keeps time has no stalls');
  assert.deepEqual(m.stats, { stalls: 0, stalledMs: 0, maxStallMs: 0 });

  // the monitor is due at t1 + INTERVAL; the loop blocks from t1 + 100 for 3 s
  const t1 = clock.now();
  clock.advance(100);
  clock.stall(3000);
  const late = 3100 - LAG_INTERVAL_MS - LAG_THRESHOLD_MS; // from due + threshold to now
  // before the monitor's own late timer ran: the stall in progress counts already
  assert.equal(m.stalledSince(t1, Infinity), late);
  assert.equal(m.stalledSince(clock.now() - 1000, Infinity), 1000, 'only the part after `since`');
  assert.equal(m.stalledSince(t1, 700), 700, 'capped');
  assert.equal(m.stalledSince(t1, 0), 0);
  clock.advance(0);
  assert.deepEqual(m.stats, { stalls: 1, stalledMs: late, maxStallMs: late });
  assert.equal(m.stalledSince(t1, Infinity), late, 'recorded as it was counted in progress');
  assert.equal(m.stalledSince(clock.now(), Infinity), 0, 'nothing after it');
  assert.equal(creditedSilence(m, clock.now(), t1, Infinity), 3100 - late);

  // late by less than the threshold: not a stall
  clock.advance(LAG_INTERVAL_MS - 50);
  clock.stall(50 + LAG_THRESHOLD_MS);
  clock.advance(0);
  assert.equal(m.stats.stalls, 1);

  // a second stall adds up
  const t2 = clock.now();
  clock.stall(1500);
  clock.advance(0);
  assert.equal(m.stats.stalls, 2);
  const second = m.stats.stalledMs - late;
  assert.ok(second > 0 && second <= 1500 - LAG_THRESHOLD_MS, `second stall ${second}`);
  assert.equal(m.stalledSince(t2, Infinity), second);
  assert.equal(m.stalledSince(t1, Infinity), late + second);
  assert.equal(m.stats.maxStallMs, Math.max(late, second));

  // forgotten past the history: an old `since` gets less credit, never more
  clock.advance(LAG_HISTORY_MS + LAG_INTERVAL_MS);
  assert.equal(m.stalledSince(t1, Infinity), 0);
  assert.equal(m.stats.stalls, 2, 'the counters keep them');

  m.stop();
  assert.equal(clock.pending(), 0, 'stop leaves no timer');
  clock.stall(10_000);
  assert.equal(m.stalledSince(t1, Infinity), 0, 'a stopped monitor sees no stall in progress');
});

test('monitor: afterIo defers through the given queue; NO_LAG runs at once and credits nothing', () => {
  const queue: Array<() => void> = [];
  const m = new LagMonitor({ clock: new FakeClock(), defer: (fn) => queue.push(fn) });
  let ran = 0;
  m.afterIo(() => ran++);
  assert.equal(ran, 0);
  queue.shift()!();
  assert.equal(ran, 1);
  NO_LAG.afterIo(() => ran++);
  assert.equal(ran, 2);
  assert.equal(NO_LAG.stalledSince(0, Infinity), 0);
});

// ---- the TCP transport

const sodium = loadCrypto('sodium');
let seq = 0;
function features(): Features {
  const n = (++seq).toString(16).padStart(2, '0');
  return { name: `02:00:00:00:0c:${n}`, nickname: `lag${n}`, uid: `uid${n}`, connId: `lag-${n}-${Math.random().toString(16).slice(2)}`, overlays: [], overlayParams: {}, trusted: false, listenPort: 6783 };
}

const HB = 10_000;
const READ = 30_000;

async function transport(clock: FakeClock, lag: LagCredit): Promise<TcpTransport> {
  const t = new TcpTransport({ host: '127.0.0.1', port: 0, password: Buffer.from('lag'), crypto: sodium, clock, lag, log: new MemoryLogger(), heartbeatMs: HB, readTimeoutMs: READ });
  t.setLocalFeatures(features());
  return t;
}

/** a (on clock ca, lag) dials b (on its own clock, never advanced: b sends only what the test sends). */
async function pair(ca: FakeClock, lag: LagCredit): Promise<{ a: TcpTransport; b: TcpTransport; ab: MeshConnection; ba: MeshConnection; closed: string[] }> {
  const a = await transport(ca, lag);
  const b = await transport(new FakeClock(), NO_LAG);
  const inbound: MeshConnection[] = [];
  await b.listen((c) => inbound.push(c), () => {});
  const ab = await a.dial(`127.0.0.1:${b.address().port}`, features());
  await waitFor('inbound', () => inbound.length === 1, { timeoutMs: 4000, intervalMs: 5 });
  const closed: string[] = [];
  ab.onClose = (r) => closed.push(r);
  ab.onMessage = () => {};
  return { a, b, ab, ba: inbound[0], closed };
}

/** Runs fn in the timers phase, as the transport's own timers run: a setImmediate then follows the poll phase. */
function inTimersPhase(fn: () => void): Promise<void> {
  return new Promise((r) => setTimeout(() => { fn(); r(); }, 0));
}

const immediates = async (n = 5): Promise<void> => { for (let i = 0; i < n; i++) await new Promise<void>((r) => setImmediate(r)); };

for (const withLag of [true, false]) {
  test(`read timeout after a stall: a beat that waits in the socket is read before the verdict (${withLag ? 'deferred: kept' : 'NO_LAG: closed'})`, async () => {
    const ca = new FakeClock();
    // not started: no stall is measured, so only the deferral past the poll phase can keep it
    const lag = withLag ? new LagMonitor({ clock: ca }) : NO_LAG;
    const { a, b, ba, closed } = await pair(ca, lag);
    try {
      await inTimersPhase(() => {
        ca.stall(READ + HB + 1000); // past the read check, wherever the heartbeat boundary put it
        ba.send(Msg.Heartbeat, new Uint8Array(0)); // leaves on the next tick: in a's socket before the poll phase
        ca.advance(0);
      });
      await immediates();
      if (withLag) assert.deepEqual(closed, [], 'the beat that arrived during the stall counts');
      else assert.deepEqual(closed, ['read timeout'], 'judged before the socket was read');
    } finally {
      await a.close();
      await b.close();
    }
  });
}

test('read timeout under permanent saturation: a silent peer is still closed, within the limit plus the cap', async () => {
  const ca = new FakeClock();
  const lag = new LagMonitor({ clock: ca });
  lag.start();
  const { a, b, closed } = await pair(ca, lag);
  const t0 = ca.now();
  try {
    // the loop is blocked 3 s of every 3.5 s; b (its clock never moves) sends nothing at all
    while (closed.length === 0 && ca.now() - t0 < 120_000) {
      await inTimersPhase(() => { ca.stall(3000); ca.advance(500); });
      await immediates(2);
    }
    assert.deepEqual(closed, ['read timeout']);
    const took = ca.now() - t0;
    assert.ok(took > READ + 10_000, `the stalls were credited (closed after ${took} ms)`);
    assert.ok(took <= READ + READ + HB + 3500, `closed within limit + cap + one heartbeat boundary + one step (${took} ms)`);
  } finally {
    lag.stop();
    await a.close();
    await b.close();
  }
});

test('handshake deadline: our own stall is credited; a silent server still fails the dial at the deadline', async () => {
  const silent = net.createServer(() => {});
  const held: net.Socket[] = [];
  silent.on('connection', (s) => held.push(s));
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
  const ca = new FakeClock();
  const lag = new LagMonitor({ clock: ca });
  lag.start();
  const a = await transport(ca, lag);
  try {
    const dial: { err?: unknown } = {};
    const dialErr = (): unknown => dial.err; // read afresh after each await (no narrowing carried over)
    a.dial(`127.0.0.1:${(silent.address() as net.AddressInfo).port}`, features()).catch((e: unknown) => { dial.err = e; });
    await waitFor('accepted', () => held.length === 1, { timeoutMs: 4000, intervalMs: 5 });
    await inTimersPhase(() => { ca.stall(25_000); ca.advance(0); });
    await immediates();
    assert.equal(dialErr(), undefined, 'a 25 s stall of our own is not the server\'s silence');
    // the credit is at most the deadline itself: 20 s more of normal time is past it
    await inTimersPhase(() => ca.advance(20_000));
    await immediates();
    const err = dialErr();
    assert.ok(err instanceof WeaveError && err.code === 'ETIMEDOUT', String(err));
    assert.equal(err.context.stalledMs, 20_000, 'the credit is capped at the deadline');
  } finally {
    lag.stop();
    for (const s of held) s.destroy();
    await new Promise<void>((r) => silent.close(() => r()));
    await a.close();
  }
});
