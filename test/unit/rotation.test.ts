// Password rotation (mesh/rotation.ts): the handshake with two accepted passwords, the in-band re-key
// of live connections with its make-before-break order for the data keys, the end of the window, and
// wrong passwords — first on WireSession pairs in memory (exact byte order), then on TcpTransports
// over loopback with their PasswordRings.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadCrypto } from '../../mesh/crypto';
import { FakeClock, realClock } from '../../lib/clock';
import { MemoryLogger } from '../../lib/log';
import { ProtocolError, RefusedError, UsageError, WeaveError } from '../../lib/errors';
import { Msg, type Features, type MeshConnection } from '../../mesh/types';
import { REKEY_OFFER, REKEY_PROOF_BYTES, REKEY_SWITCH, type Established, type RekeyStep, type Secret, WireSession } from '../../mesh/wire';
import { PasswordRing } from '../../mesh/rotation';
import { TcpTransport } from '../../mesh/tcp-transport';
import { waitFor as labWaitFor } from '../lab/exec';

const crypto = loadCrypto('sodium');
const OLD = Buffer.from('the old password');
const NEW = Buffer.from('the new password');
const OTHER = Buffer.from('somebody else entirely');

function features(name: string): Features {
  return { name, nickname: name.slice(-2), uid: `uid-${name}`, connId: `c-${name}`, overlays: ['sleeve'], overlayParams: {}, trusted: false, listenPort: 6783 };
}

// ---- WireSession pairs in memory

interface Side {
  name: string;
  s: WireSession;
  out: Buffer[];
  est: Established | null;
  msgs: string[];
  err: unknown;
}

/** Every re-key step of both sides, in the order they happened (to check make-before-break). */
type Ev = { side: string; step: RekeyStep; gen: number; key: string };

function mkSide(name: string, outbound: boolean, secrets: Secret[], log: Ev[]): Side {
  const sd: Side = { name, s: undefined as unknown as WireSession, out: [], est: null, msgs: [], err: null };
  sd.s = new WireSession(
    { crypto, password: null, passwords: secrets, outbound, local: features(outbound ? '02:00:00:00:00:0a' : '02:00:00:00:00:0b') },
    {
      write: (b) => sd.out.push(b),
      established: (e) => { sd.est = e; },
      message: (t, p) => sd.msgs.push(`${t}:${p.toString()}`),
      rekey: (step, key, gen) => log.push({ side: name, step, gen, key: key ? key.toString('hex').slice(0, 8) : '' }),
    },
  );
  return sd;
}

function pump(a: Side, b: Side): void {
  for (let guard = 0; guard < 1000; guard++) {
    let moved = false;
    for (const [from, to] of [[a, b], [b, a]] as const) {
      while (from.out.length) {
        const chunk = from.out.shift() as Buffer;
        moved = true;
        if (to.err) continue;
        try {
          to.s.push(chunk);
        } catch (e) {
          to.err = e;
        }
      }
    }
    if (!moved) return;
  }
  throw new Error('pump did not settle');
}

const g = (gen: number, pw: Buffer): Secret => ({ gen, password: pw });

function wirePair(dialler: Secret[], listener: Secret[]): { a: Side; b: Side; log: Ev[] } {
  const log: Ev[] = [];
  const a = mkSide('A', true, dialler, log);
  const b = mkSide('B', false, listener, log);
  a.s.start();
  b.s.start();
  pump(a, b);
  return { a, b, log };
}

/** The password (bytes) a side is keyed with, by its own generation numbering. */
function pwOf(secrets: Secret[], gen: number): string {
  return (secrets.find((s) => s.gen === gen)?.password as Buffer).toString();
}

test('handshake with two passwords: the newest both accept, either side dialling, any mix of sets', () => {
  const sets: Record<string, Secret[]> = {
    old: [g(1, OLD)],
    new: [g(2, NEW)],
    'old+new': [g(1, OLD), g(2, NEW)],
    // generations are each router's own numbering: a host that started with NEW and rotated back
    'new+old (renumbered)': [g(5, NEW), g(6, OLD)],
    other: [g(1, OTHER)],
  };
  for (const d of Object.keys(sets)) {
    for (const l of Object.keys(sets)) {
      const { a, b } = wirePair(sets[d], sets[l]);
      // the dialler's order decides: its newest password the listener holds
      const common = sets[d].map((s) => s.password.toString()).filter((p) => sets[l].some((s) => s.password.toString() === p));
      const want = common.length ? common[common.length - 1] : null;
      if (want === null) {
        assert.ok(a.err instanceof RefusedError && a.err.code === 'EPASSWORD', `${d} -> ${l}: dialler refused (${String(a.err)})`);
        assert.ok(b.err instanceof RefusedError && b.err.code === 'EPASSWORD', `${d} -> ${l}: listener refused (${String(b.err)})`);
        continue;
      }
      assert.equal(a.err, null, `${d} -> ${l}: ${String(a.err)}`);
      assert.equal(b.err, null, `${d} -> ${l}: ${String(b.err)}`);
      assert.ok(a.est?.sessionKey?.equals(b.est?.sessionKey as Buffer), `${d} -> ${l}: same session key`);
      assert.equal(pwOf(sets[d], a.s.txGeneration), want, `${d} -> ${l}: dialler keyed with ${want}`);
      assert.equal(pwOf(sets[l], b.s.txGeneration), want, `${d} -> ${l}: listener keyed with ${want}`);
      assert.equal(a.est?.generation, a.s.txGeneration);
      // messages flow both ways
      a.out.push(a.s.encode(2, Buffer.from('ping')));
      b.out.push(b.s.encode(2, Buffer.from('pong')));
      pump(a, b);
      assert.deepEqual(b.msgs, ['2:ping']);
      assert.deepEqual(a.msgs, ['2:pong']);
    }
  }
});

test('A{old,new} <-> B{old}: connects on the old password; the offer is ignored; B rotating re-keys both directions to new', () => {
  const { a, b, log } = wirePair([g(1, OLD), g(2, NEW)], [g(1, OLD)]);
  assert.equal(a.err, null);
  assert.equal(a.s.txGeneration, 1);
  assert.equal(b.s.txGeneration, 1);
  // after establishment the transport hands the current list: A offers new, B cannot verify it
  assert.equal(a.s.setPasswords([g(1, OLD), g(2, NEW)]), 'ok');
  assert.equal(b.s.setPasswords([g(1, OLD)]), 'ok');
  pump(a, b);
  assert.deepEqual(log.map((e) => `${e.side}:${e.step}`), ['A:accept', 'B:unknown']);
  assert.equal(a.s.txGeneration, 1, 'A keeps sealing with old: B does not hold new');
  // traffic in flight while B rotates: every message arrives once, in order, across the switch
  for (let i = 0; i < 5; i++) a.out.push(a.s.encode(2, Buffer.from(`a${i}`)));
  assert.equal(b.s.setPasswords([g(1, OLD), g(2, NEW)]), 'ok');
  for (let i = 0; i < 5; i++) b.out.push(b.s.encode(2, Buffer.from(`b${i}`)));
  pump(a, b);
  for (let i = 5; i < 10; i++) {
    a.out.push(a.s.encode(2, Buffer.from(`a${i}`)));
    b.out.push(b.s.encode(2, Buffer.from(`b${i}`)));
  }
  pump(a, b);
  assert.equal(a.err, null, String(a.err));
  assert.equal(b.err, null, String(b.err));
  assert.deepEqual(b.msgs, Array.from({ length: 10 }, (_, i) => `2:a${i}`));
  assert.deepEqual(a.msgs, Array.from({ length: 10 }, (_, i) => `2:b${i}`));
  for (const s of [a, b]) {
    assert.equal(s.s.txGeneration, 2, `${s.name} seals with new`);
    assert.equal(s.s.rxGeneration, 2, `${s.name} opens new`);
  }
  // make-before-break: a side uses a key only after the other side accepted it
  const steps = log.filter((e) => e.step !== 'unknown');
  for (const use of steps.filter((e) => e.step === 'use')) {
    const peer = use.side === 'A' ? 'B' : 'A';
    const acceptAt = steps.findIndex((e) => e.side === peer && e.step === 'accept' && e.key === use.key);
    assert.ok(acceptAt >= 0 && acceptAt < steps.indexOf(use), `${use.side} used the key only after ${peer} accepted it: ${JSON.stringify(steps)}`);
    const settled = steps.find((e) => e.side === peer && e.step === 'settled' && e.key === use.key);
    assert.ok(settled, `${peer} heard that ${use.side} switched`);
  }
  assert.equal(steps.filter((e) => e.step === 'use').length, 2, 'each direction switched once');
});

test('both rotate at once: offers cross, each direction switches exactly once', () => {
  const { a, b, log } = wirePair([g(1, OLD)], [g(1, OLD)]);
  a.s.setPasswords([g(1, OLD), g(2, NEW)]);
  b.s.setPasswords([g(1, OLD), g(2, NEW)]);
  pump(a, b);
  assert.equal(a.err ?? b.err, null);
  assert.deepEqual([a.s.txGeneration, a.s.rxGeneration, b.s.txGeneration, b.s.rxGeneration], [2, 2, 2, 2]);
  assert.equal(log.filter((e) => e.step === 'use').length, 2);
  a.out.push(a.s.encode(2, Buffer.from('after')));
  pump(a, b);
  assert.deepEqual(b.msgs, ['2:after']);
});

test('the window ends: a connection still on the dropped password is stale; offers the peer cannot verify change nothing; a forged switch is a protocol error', () => {
  const { a } = wirePair([g(1, OLD), g(2, NEW)], [g(1, OLD)]);
  assert.equal(a.s.setPasswords([g(2, NEW)]), 'stale');
  const c = wirePair([g(1, OLD), g(3, OTHER)], [g(1, OLD), g(4, NEW)]);
  assert.equal(c.a.s.txGeneration, 1);
  c.a.s.setPasswords([g(1, OLD), g(3, OTHER)]); // offers OTHER: B cannot verify it
  c.b.s.setPasswords([g(1, OLD), g(4, NEW)]); // offers NEW: A cannot verify it
  pump(c.a, c.b);
  assert.equal(c.a.err ?? c.b.err, null);
  assert.deepEqual([c.a.s.txGeneration, c.b.s.txGeneration], [1, 1], 'nobody switches to a password the peer does not hold');
  assert.deepEqual(c.log.filter((e) => e.step === 'unknown').map((e) => e.side).sort(), ['A', 'B']);
  // a Switch whose proof matches no accepted password: the receiver must not follow it
  c.b.out.push(c.b.s.encode(Msg.Rekey, Buffer.concat([Buffer.from([REKEY_SWITCH]), crypto.randomBytes(REKEY_PROOF_BYTES)])));
  pump(c.a, c.b);
  assert.ok(c.a.err instanceof ProtocolError && /switched to a password we do not accept/.test(c.a.err.message), String(c.a.err));
  // and a malformed one (wrong length)
  const d = wirePair([g(1, OLD)], [g(1, OLD)]);
  d.b.out.push(d.b.s.encode(Msg.Rekey, Buffer.from([REKEY_OFFER, 1, 2, 3])));
  pump(d.a, d.b);
  assert.ok(d.a.err instanceof ProtocolError, String(d.a.err));
});

test('PasswordRing: rotate, idempotent repeats, one rotation at a time, the window ends by itself, finish', () => {
  const clock = new FakeClock();
  const log = new MemoryLogger();
  const ring = new PasswordRing({ password: OLD, clock, log });
  let changes = 0;
  ring.onChange(() => changes++);
  assert.deepEqual(ring.status(), { state: 'steady', generation: 1, accepting: [1] });
  assert.equal(ring.rotate(OLD).state, 'steady', 'rotating to the current password does nothing');
  assert.equal(changes, 0);
  const s = ring.rotate(NEW, { windowMs: 60_000 });
  assert.equal(s.state, 'rotating');
  assert.deepEqual(s.accepting, [1, 2]);
  assert.equal(s.windowEndsAt, clock.now() + 60_000);
  assert.equal(changes, 1);
  assert.equal(ring.rotate(NEW).windowEndsAt, clock.now() + 60_000, 'SIGHUP again: nothing changes');
  assert.throws(() => ring.rotate(OTHER), (e: unknown) => e instanceof UsageError && /--finish/.test(e.message));
  assert.throws(() => ring.rotate(NEW, { windowMs: 10 }), UsageError);
  clock.advance(59_999);
  assert.equal(ring.status().state, 'rotating');
  clock.advance(1);
  assert.deepEqual(ring.status().accepting, [2], 'the window ended by itself');
  assert.equal(changes, 2);
  assert.ok(log.find((r) => /rotation finished/.test(String(r.msg))));
  ring.rotate(OTHER, { windowMs: 5000 });
  assert.deepEqual(ring.finish().accepting, [3]);
  assert.equal(clock.pending(), 0, 'finish cancels the window timer');
  const off = new PasswordRing({ password: null, clock, log });
  assert.throws(() => off.rotate(NEW), (e: unknown) => e instanceof UsageError && /without a password/.test(e.message));
});

// ---- TcpTransports over loopback

let seq = 0;
interface Node {
  t: TcpTransport;
  ring: PasswordRing;
  log: MemoryLogger;
  accepted: MeshConnection[];
  refused: string[];
  addr: string;
}

async function node(password: Buffer): Promise<Node> {
  const log = new MemoryLogger();
  const ring = new PasswordRing({ password, clock: realClock, log });
  const t = new TcpTransport({ host: '127.0.0.1', port: 0, password: null, passwords: ring, crypto, clock: realClock, log });
  const n: Node = { t, ring, log, accepted: [], refused: [], addr: '' };
  t.setLocalFeatures(features(`02:00:00:00:02:${(++seq).toString(16).padStart(2, '0')}`));
  await t.listen((c) => n.accepted.push(c), (_a, f) => n.refused.push(f.code));
  n.addr = `127.0.0.1:${t.address().port}`;
  return n;
}

async function waitFor(what: string, pred: () => boolean): Promise<void> {
  await labWaitFor(what, pred, { timeoutMs: 4000, intervalMs: 5 });
}

function gens(c: MeshConnection): string {
  const k = c.keyGeneration;
  return k ? `${k.tx}/${k.rx}` : 'none';
}

async function dial(from: Node, to: Node): Promise<[MeshConnection, MeshConnection]> {
  const before = to.accepted.length;
  const c = await from.t.dial(to.addr, features(`02:00:00:00:03:${(++seq).toString(16).padStart(2, '0')}`));
  await waitFor('accepted', () => to.accepted.length > before);
  return [c, to.accepted[to.accepted.length - 1]];
}

test('transports: A{old,new} <-> B{old} works; when B rotates the live connection re-keys to new, data keys make-before-break', async () => {
  const a = await node(OLD);
  const b = await node(OLD);
  try {
    a.ring.rotate(NEW);
    const [ca, cb] = await dial(a, b);
    assert.equal(gens(ca), '1/1');
    assert.equal(gens(cb), '1/1');
    const events: string[] = [];
    ca.watchDataKey?.((step) => events.push(`A:${step}`));
    cb.watchDataKey?.((step) => events.push(`B:${step}`));
    const got: string[] = [];
    cb.onMessage = (_t, p) => got.push(Buffer.from(p).toString());
    ca.onMessage = () => {};
    // a stream of messages across the re-key
    let i = 0;
    const pump = setInterval(() => ca.send(40, Buffer.from(`m${i++}`)), 2);
    await new Promise((r) => setTimeout(r, 30));
    b.ring.rotate(NEW);
    await waitFor('both directions on generation 2', () => gens(ca) === '2/2' && gens(cb) === '2/2');
    await new Promise((r) => setTimeout(r, 30));
    clearInterval(pump);
    await waitFor('all messages', () => got.length === i);
    assert.deepEqual(got, Array.from({ length: i }, (_, k) => `m${k}`), 'every message once, in order, across the switch');
    assert.ok(ca.dataKey && cb.dataKey && Buffer.from(ca.dataKey).equals(Buffer.from(cb.dataKey)), 'both ends hold the same new data key');
    // B's 'use' came after A's 'accept' and vice versa
    for (const [x, y] of [['A', 'B'], ['B', 'A']]) {
      assert.ok(events.indexOf(`${y}:accept`) >= 0 && events.indexOf(`${y}:accept`) < events.indexOf(`${x}:use`), `${events.join(' ')}`);
    }
    assert.equal(a.t.counters().rekeyed + b.t.counters().rekeyed, 2);
    assert.ok(a.log.find((r) => /now seals with password generation 2/.test(String(r.msg))));
  } finally {
    await a.t.close();
    await b.t.close();
  }
});

test('transports: A{old,new} <-> B{old,new} meet on new; after the window A{new} closes B{old} connections and refuses new ones, logged', async () => {
  const a = await node(OLD);
  const b = await node(OLD);
  const c = await node(OLD);
  try {
    a.ring.rotate(NEW);
    b.ring.rotate(NEW);
    const [ab, ba] = await dial(a, b);
    assert.equal(gens(ab), '2/2', 'a new connection between two rotated hosts starts on new');
    assert.equal(gens(ba), '2/2');
    const [ac] = await dial(a, c); // C never gets new
    assert.equal(gens(ac), '1/1');
    let closed = '';
    ac.onClose = (r) => { closed = r; };
    ab.onClose = () => { throw new Error('the connection on new must survive the end of the window'); };
    a.ring.finish();
    await waitFor('the old-password connection closed', () => closed !== '');
    assert.match(closed, /generation 1 no longer accepted/);
    assert.ok(a.log.find((r) => r.level === 'warn' && /still uses password generation 1/.test(String(r.msg))), 'a clear log line');
    assert.equal(a.t.counters().closedStalePassword, 1);
    // new handshakes: A{new} <-> C{old} refused both ways round, EPASSWORD logged on the listener
    await assert.rejects(a.t.dial(c.addr, features('02:00:00:00:04:01')), (e: unknown) => e instanceof WeaveError && e.code === 'EPASSWORD');
    await assert.rejects(c.t.dial(a.addr, features('02:00:00:00:04:02')), (e: unknown) => e instanceof WeaveError && e.code === 'EPASSWORD');
    await waitFor('A refused C', () => a.refused.includes('EPASSWORD'));
    assert.ok(a.log.find((r) => r.level === 'warn' && r.code === 'EPASSWORD'), 'refusal logged');
    // A{new} <-> B{old,new} (B still in its window): new, both directions of dialling
    const [ab2] = await dial(a, b);
    const [ba2] = await dial(b, a);
    assert.equal(gens(ab2), '2/2');
    assert.equal(gens(ba2), '2/2');
    ab.onClose = () => {};
  } finally {
    for (const n of [a, b, c]) await n.t.close();
  }
});

test('transports: a wrong password is still refused on both ends during a rotation window', async () => {
  const a = await node(OLD);
  const x = await node(OTHER);
  try {
    a.ring.rotate(NEW);
    await assert.rejects(x.t.dial(a.addr, features('02:00:00:00:05:01')), (e: unknown) => e instanceof RefusedError && e.code === 'EPASSWORD');
    await waitFor('refused on the listener', () => a.refused.includes('EPASSWORD'));
    await assert.rejects(a.t.dial(x.addr, features('02:00:00:00:05:02')), (e: unknown) => e instanceof RefusedError && e.code === 'EPASSWORD');
  } finally {
    await a.t.close();
    await x.t.close();
  }
});

test('rotation status: mesh-facing transport reports the ring', async () => {
  const a = await node(OLD);
  try {
    assert.equal(a.t.rotation().state, 'steady');
    a.ring.rotate(NEW, { windowMs: 5000 });
    assert.deepEqual(a.t.rotation().accepting, [1, 2]);
  } finally {
    await a.t.close();
  }
});
