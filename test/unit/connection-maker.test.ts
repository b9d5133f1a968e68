// Connection targets through the mesh API: invalid entries refused with a UsageError naming them
// (nothing changes then), and forget / connect --replace cancelling a dial in progress instead of
// retrying a target nobody wants (FakeClock: a day of retries in milliseconds).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeClock } from '../../lib/clock';
import { MemoryLogger } from '../../lib/log';
import { UsageError, WeaveError } from '../../lib/errors';
import { Mesh } from '../../mesh/mesh';
import { ConnectionMaker, checkTarget, validHost } from '../../mesh/connection-maker';
import type { ConnectFailure, Features, MeshConnection, Transport } from '../../mesh/types';

const DAY = 24 * 3600_000;

interface DialRecord { address: string; signal?: AbortSignal; fail(code: string): void }

/** A transport whose dials hang until the test fails them or their signal aborts (ECANCELED). */
class HangingTransport implements Transport {
  readonly dials: DialRecord[] = [];
  async listen(_c: (c: MeshConnection) => void, _r: (a: string, f: ConnectFailure) => void): Promise<void> {}
  setLocalFeatures(_f: Features): void {}
  async close(): Promise<void> {}
  dial(address: string, _local: Features, opts: { signal?: AbortSignal } = {}): Promise<MeshConnection> {
    return new Promise((_resolve, reject) => {
      const rec: DialRecord = { address, signal: opts.signal, fail: (code) => reject(new WeaveError(code, `dial ${address}: ${code}`)) };
      opts.signal?.addEventListener('abort', () => reject(new WeaveError('ECANCELED', 'cancelled')), { once: true });
      this.dials.push(rec);
    });
  }
}

async function mesh(store?: { load(): string[]; save(t: string[]): void }): Promise<{ m: Mesh; t: HangingTransport; clock: FakeClock; log: MemoryLogger }> {
  const clock = new FakeClock();
  const t = new HangingTransport();
  const log = new MemoryLogger();
  const m = new Mesh({ identity: { name: '02:00:00:00:09:01', nickname: 'cm', uid: 'u1' }, transport: t, clock, log, encryption: false, port: 6783, discovery: false, random: () => 0.5, targetStore: store });
  await m.start();
  return { m, t, clock, log };
}

/** Lets promise callbacks run between clock steps. */
async function run(clock: FakeClock, ms: number, step = 1000): Promise<void> {
  for (let t = 0; t < ms; t += step) {
    clock.advance(Math.min(step, ms - t));
    await new Promise<void>((r) => setImmediate(r));
  }
}

test('targets: invalid entries are refused with a UsageError naming them, and nothing changes', async () => {
  const { m, t } = await mesh();
  try {
    for (const bad of ['-1', 'h:-5', 'a:99999999', 'h:0', 'h:', ':80', '', '1.2.3.999', 'a b', 'under_score', '-lead.example', 'x'.repeat(64) + '.example']) {
      assert.throws(() => m.connect(['10.0.0.1', bad]), (e: unknown) => e instanceof UsageError && e.code === 'EUSAGE' && e.message.includes(`"${bad}"`), `refused: ${JSON.stringify(bad)}`);
    }
    assert.deepEqual(m.targets(), [], 'the good entry next to a bad one was not added either');
    assert.equal(t.dials.length, 0);
    m.connect(['10.0.0.1', 'peer.example', 'peer-2.example.:7000', '[::1]:99', '::1', 'localhost']);
    assert.deepEqual(m.targets(), ['10.0.0.1:6783', '[::1]:6783', '[::1]:99', 'localhost:6783', 'peer-2.example.:7000', 'peer.example:6783']);
  } finally {
    await m.stop();
  }
  assert.equal(checkTarget('10.1.2.3', 6783), '10.1.2.3:6783');
  assert.equal(validHost('1.2.3.4'), true);
  assert.equal(validHost('999.2.3.4'), false);
});

test('targets: invalid stored targets are dropped with a warning instead of being retried forever', async () => {
  let saved = ['10.0.0.2', '-1', 'a:99999999'];
  const { m, t, clock, log } = await mesh({ load: () => saved, save: (x) => { saved = x; } });
  try {
    await run(clock, 10);
    assert.deepEqual(m.targets(), ['10.0.0.2:6783']);
    assert.deepEqual(t.dials.map((d) => d.address), ['10.0.0.2:6783']);
    assert.ok(log.find((r) => r.level === 'warn' && r.target === '-1'), 'the dropped entry is named in a log line');
    assert.deepEqual(saved, ['10.0.0.2:6783'], 'and the store no longer holds it');
  } finally {
    await m.stop();
  }
});

test('forget cancels a dial in progress; the target is never dialled again', async () => {
  const { m, t, clock } = await mesh();
  try {
    m.connect(['10.0.0.9']);
    await run(clock, 10);
    assert.equal(t.dials.length, 1);
    const d = t.dials[0];
    assert.ok(d.signal, 'the mesh gives every dial a signal');
    m.forget(['10.0.0.9']);
    assert.equal(d.signal!.aborted, true, 'forget aborts the dial in progress');
    await run(clock, DAY, 60_000);
    assert.equal(t.dials.length, 1, 'no retry in a day');
    assert.equal(m.targetState('10.0.0.9'), undefined);
    assert.equal(m.status().connections.length, 0, 'status shows no leftover attempt');
  } finally {
    await m.stop();
  }
});

test('a dial that fails after its target was forgotten is not retried', async () => {
  const { m, t, clock } = await mesh();
  try {
    m.connect(['10.0.0.9']);
    await run(clock, 10);
    const d = t.dials[0];
    // a transport that ignores the signal: the outcome comes back later
    m.forget(['10.0.0.9']);
    d.fail('ECONNREFUSED');
    await run(clock, DAY, 60_000);
    assert.equal(t.dials.length, 1);
  } finally {
    await m.stop();
  }
});

test('connect --replace cancels the dials of the replaced targets and dials the new ones', async () => {
  const { m, t, clock } = await mesh();
  try {
    m.connect(['10.0.0.9', '10.0.0.8']);
    await run(clock, 10);
    assert.equal(t.dials.length, 2);
    m.connect(['10.0.0.8', '10.0.0.7'], { replace: true });
    await run(clock, 10);
    const by = (a: string) => t.dials.filter((d) => d.address === a);
    assert.equal(by('10.0.0.9:6783')[0].signal!.aborted, true, 'the replaced target\'s dial is cancelled');
    assert.equal(by('10.0.0.8:6783')[0].signal!.aborted, false, 'a kept target keeps dialling');
    assert.equal(by('10.0.0.7:6783').length, 1);
    await run(clock, DAY, 60_000);
    assert.equal(by('10.0.0.9:6783').length, 1, 'the replaced target is never retried');
    assert.deepEqual(m.targets(), ['10.0.0.7:6783', '10.0.0.8:6783']);
  } finally {
    await m.stop();
  }
});

test('discovered targets: at most 8 dials at once; each outcome frees a slot for the next, user-given targets are never held back', () => {
  const clock = new FakeClock();
  const dials: string[] = [];
  const self = '02:00:00:00:00:01';
  const cm = new ConnectionMaker({
    clock, log: new MemoryLogger(), random: () => 0.5, defaultPort: 6783, self,
    hooks: { dial: (a) => dials.push(a), connectedTo: () => false, mayDialDiscovered: () => true },
  });
  cm.start();
  const found = new Map<string, string>();
  // higher names than ours: each is ours to dial at once (no defer)
  for (let i = 0; i < 20; i++) found.set(`198.18.1.${i + 1}:6783`, `02:00:00:00:01:${(i + 16).toString(16)}`);
  cm.setDiscovered(found);
  clock.advance(1);
  assert.equal(dials.length, 8, 'eight dials in flight, the rest wait');
  cm.add(['198.18.9.9'], false, false);
  clock.advance(1);
  assert.equal(dials.length, 9, 'a user-given target is dialled although eight discovered ones are in flight');
  cm.attemptFailed(dials[0], 'ETIMEDOUT', 'timed out');
  clock.advance(1);
  assert.equal(dials.length, 10, 'a failure frees a slot');
  cm.attemptSucceeded(dials[1], found.get(dials[1])!);
  clock.advance(1);
  assert.equal(dials.length, 11, 'a success frees a slot');
  assert.equal(new Set(dials).size, dials.length, 'no address dialled twice while in flight');
  cm.stop();
});
