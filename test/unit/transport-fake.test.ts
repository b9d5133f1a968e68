// The transport contract (test/contract/transport.contract.ts) against the in-memory FakeUnderlay
// transport that every simulation runs on, driven by a FakeClock.
import { FakeClock } from '../../lib/clock';
import { FakeUnderlay, type FakeTransport } from '../fakes/underlay';
import { mulberry32 } from '../fakes/rng';
import { contractFeatures, describeTransport, type TransportEnd, type TransportFactory } from '../contract/transport.contract';

const STEP_MS = 5;
/** simulated time the contract may wait for anything (far above the fake's 1 ms link delay) */
const BOUND_MS = 30_000;

describeTransport('FakeUnderlay (simulations)', (): TransportFactory => {
  const clock = new FakeClock();
  const net = new FakeUnderlay({ clock, random: mulberry32(1), delayMs: 1 });
  const made: FakeTransport[] = [];
  let host = 0;
  const tick = async (): Promise<void> => {
    // promise callbacks (dial results) run between clock steps, as in the sims
    for (let i = 0; i < 3; i++) await new Promise<void>((r) => setImmediate(r));
  };
  const until = async (pred: () => boolean, what: string): Promise<void> => {
    for (let t = 0; t <= BOUND_MS; t += STEP_MS) {
      await tick();
      if (pred()) return;
      clock.advance(STEP_MS);
    }
    throw new Error(`timed out after ${BOUND_MS} simulated ms waiting for ${what}`);
  };
  return {
    async make({ password, listen }) {
      const addr = `10.99.${(++host) >> 8}.${host & 255}:6783`;
      const t = net.transport(addr, { password });
      made.push(t);
      const features = contractFeatures();
      t.setLocalFeatures(features);
      const end: TransportEnd = { t, features, addr: listen ? addr : '', accepted: [], refused: [] };
      if (listen) await t.listen((c) => end.accepted.push(c), (a, f) => end.refused.push({ addr: a, f }));
      return end;
    },
    async deadAddress() {
      return '10.99.255.254:6783';
    },
    until,
    async settle<T>(p: Promise<T>): Promise<T> {
      let done = false;
      p.then(() => { done = true; }, () => { done = true; });
      await until(() => done, 'the dial to settle');
      return p;
    },
    async wait(ms) {
      for (let t = 0; t < ms; t += STEP_MS) {
        await tick();
        clock.advance(STEP_MS);
      }
      await tick();
    },
    async cleanup() {
      for (const t of made) await t.close();
    },
  };
});
