// TcpTransport over loopback (port 0): handshake outcomes on both ends, message flow, heartbeats and
// read timeout, accept rate limiting, garbage and silent clients.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'net';
import { loadCrypto } from '../../mesh/crypto';
import { FakeClock, realClock } from '../../lib/clock';
import * as v8 from 'v8';
import * as vm from 'vm';
import { MemoryLogger } from '../../lib/log';
import { WeaveError } from '../../lib/errors';
import type { ConnectFailure, Features, MeshConnection } from '../../mesh/types';
import { AcceptLimiter, TcpTransport, type TcpTransportOptions, parseAddress, sourceKey } from '../../mesh/tcp-transport';
import { HELLO_BYTES, PREAUTH_MAX_FRAME, WireSession, encodeHello, encodeKeyExchange } from '../../mesh/wire';
import { waitFor as labWaitFor } from '../lab/exec';

const sodium = loadCrypto('sodium');
const tweet = loadCrypto('tweetnacl');
const PW = Buffer.from('correct horse');

let nameSeq = 0;
function features(connId = `conn-${Math.random().toString(16).slice(2)}`): Features {
  const n = (++nameSeq).toString(16).padStart(2, '0');
  return { name: `02:00:00:00:01:${n}`, nickname: `peer${n}`, uid: `uid${n}`, connId, overlays: ['sleeve'], overlayParams: {}, trusted: false, listenPort: 6783 };
}

/** The lab's poll-with-deadline, in the argument order this file's many call sites use. */
async function waitFor(pred: () => boolean, what: string, ms = 4000): Promise<void> {
  await labWaitFor(what, pred, { timeoutMs: ms, intervalMs: 5 });
}

interface Node {
  t: TcpTransport;
  log: MemoryLogger;
  feats: Features;
  accepted: MeshConnection[];
  refused: Array<[string, ConnectFailure]>;
  addr: string;
}

async function node(o: Partial<TcpTransportOptions> = {}, listen = true): Promise<Node> {
  const log = new MemoryLogger();
  const t = new TcpTransport({ host: '127.0.0.1', port: 0, password: PW, crypto: sodium, clock: realClock, log, ...o });
  const feats = features();
  t.setLocalFeatures(feats);
  const n: Node = { t, log, feats, accepted: [], refused: [], addr: '' };
  if (listen) {
    await t.listen(
      (c) => n.accepted.push(c),
      (a, f) => n.refused.push([a, f]),
    );
    n.addr = `127.0.0.1:${t.address().port}`;
  }
  return n;
}

async function dialExpectingError(from: Node, to: Node): Promise<WeaveError> {
  try {
    const c = await from.t.dial(to.addr, features());
    c.close('unexpected');
  } catch (e) {
    assert.ok(e instanceof WeaveError, String(e));
    return e;
  }
  throw new Error('dial succeeded but should have failed');
}

async function closeAll(...ns: Node[]): Promise<void> {
  for (const n of ns) await n.t.close();
}

/** A hand-driven client: the real wire protocol over a raw socket, so a test can misbehave after the handshake. */
async function rawClient(port: number, password: Buffer | null, localAddress?: string): Promise<{ sock: net.Socket; session: WireSession; closed: Promise<void> }> {
  const sock = net.connect({ host: '127.0.0.1', port, localAddress });
  let resolveEst!: () => void;
  let rejectEst!: (e: unknown) => void;
  const est = new Promise<void>((res, rej) => {
    resolveEst = res;
    rejectEst = rej;
  });
  const session = new WireSession(
    { crypto: sodium, password, outbound: true, local: features() },
    { write: (b) => sock.write(b), established: () => resolveEst(), message: () => {} },
  );
  sock.on('data', (c) => {
    try {
      session.push(c);
    } catch (e) {
      rejectEst(e);
    }
  });
  sock.on('error', (e) => rejectEst(e));
  const closed = new Promise<void>((r) => sock.on('close', () => {
    rejectEst(new Error('closed before the handshake completed'));
    r();
  }));
  session.start();
  await est;
  return { sock, session, closed };
}

test('parseAddress: host:port, bare host (default 6783), [v6]:port, bare v6', () => {
  assert.deepEqual(parseAddress('10.0.0.1:7000'), { host: '10.0.0.1', port: 7000 });
  assert.deepEqual(parseAddress('peer.example'), { host: 'peer.example', port: 6783 });
  assert.deepEqual(parseAddress('[::1]:99'), { host: '::1', port: 99 });
  assert.deepEqual(parseAddress('[fe80::1]'), { host: 'fe80::1', port: 6783 });
  assert.deepEqual(parseAddress('::1'), { host: '::1', port: 6783 });
  assert.throws(() => parseAddress('h:0'), WeaveError);
  assert.throws(() => parseAddress('h:x'), WeaveError);
  assert.throws(() => parseAddress(':80'), WeaveError);
});

test('same password: both sides connected, equal session keys and ids, messages both ways in order', async () => {
  const a = await node();
  const b = await node();
  try {
    const local = features('dial-1');
    const c = await a.t.dial(b.addr, local);
    await waitFor(() => b.accepted.length === 1, 'inbound connection');
    const s = b.accepted[0];
    assert.equal(c.outbound, true);
    assert.equal(s.outbound, false);
    assert.equal(c.id, 'dial-1');
    assert.equal(s.id, 'dial-1', 'both ends report the dialler connId');
    assert.equal(s.local.connId, 'dial-1');
    assert.equal(c.encrypted, true);
    assert.equal(c.sessionKey?.length, 32);
    assert.deepEqual(c.sessionKey, s.sessionKey);
    assert.deepEqual(c.remote, b.feats);
    assert.deepEqual(s.remote, local);
    assert.equal(c.remoteAddr, s.localAddr);
    assert.equal(c.localAddr, s.remoteAddr);
    assert.equal(c.remoteAddr, b.addr);

    const gotB: string[] = [];
    const gotA: string[] = [];
    s.onMessage = (t, p) => gotB.push(`${t}:${Buffer.from(p).toString()}`);
    c.onMessage = (t, p) => gotA.push(`${t}:${Buffer.from(p).toString()}`);
    const N = 200;
    for (let i = 0; i < N; i++) {
      c.send(2, Buffer.from(`a${i}`));
      s.send(3, Buffer.from(`b${i}`));
    }
    c.send(32, Buffer.alloc(1 << 20, 0x5a)); // a 1 MiB message arrives in many TCP chunks
    await waitFor(() => gotB.length === N + 1 && gotA.length === N, 'all messages');
    assert.deepEqual(gotB.slice(0, N), Array.from({ length: N }, (_, i) => `2:a${i}`));
    assert.deepEqual(gotA, Array.from({ length: N }, (_, i) => `3:b${i}`));
    assert.equal(gotB[N].length, 3 + (1 << 20));
    const ca = a.t.counters();
    assert.equal(ca.established.outbound, 1);
    assert.ok(ca.framesOut >= N + 1);
    assert.ok(ca.bytesOut > 1 << 20);
    assert.equal(b.t.counters().established.inbound, 1);
    assert.equal(b.t.counters().accepted, 1);
    assert.ok(b.t.counters().framesIn >= N + 1);
  } finally {
    await closeAll(a, b);
  }
});

test('different passwords: EPASSWORD on the dialler (rejection) and on the listener (onRefused)', async () => {
  const a = await node({ password: Buffer.from('one') });
  const b = await node({ password: Buffer.from('two') });
  try {
    const err = await dialExpectingError(a, b);
    assert.equal(err.code, 'EPASSWORD');
    assert.match(err.message, /passwords differ/);
    await waitFor(() => b.refused.length === 1, 'listener refusal');
    assert.equal(b.refused[0][1].code, 'EPASSWORD');
    assert.match(b.refused[0][0], /^127\.0\.0\.1:\d+$/);
    assert.equal(b.accepted.length, 0);
    assert.equal(a.t.counters().refused.EPASSWORD, 1);
    assert.equal(b.t.counters().refused.EPASSWORD, 1);
    const line = b.log.find((r) => r.level === 'warn' && r.code === 'EPASSWORD');
    assert.ok(line, 'listener logs a warn line with the code');
    assert.match(String(line.remote), /^127\.0\.0\.1:/);
  } finally {
    await closeAll(a, b);
  }
});

test('password on one side only: EENCRYPTION on both, either way round', async () => {
  for (const [pa, pb] of [
    [PW, null],
    [null, PW],
  ] as const) {
    const a = await node({ password: pa });
    const b = await node({ password: pb });
    try {
      const err = await dialExpectingError(a, b);
      assert.equal(err.code, 'EENCRYPTION');
      assert.match(err.message, pa ? /password is set here but the peer does not encrypt/ : /peer requires encryption but no password is set here/);
      await waitFor(() => b.refused.length === 1, 'listener refusal');
      assert.equal(b.refused[0][1].code, 'EENCRYPTION');
    } finally {
      await closeAll(a, b);
    }
  }
});

test('disjoint version ranges: EVERSION on both sides', async () => {
  const a = await node({ minVersion: 1, maxVersion: 1 });
  const b = await node({ minVersion: 2, maxVersion: 3 });
  try {
    const err = await dialExpectingError(a, b);
    assert.equal(err.code, 'EVERSION');
    assert.match(err.message, /1\.\.1.*2\.\.3/);
    await waitFor(() => b.refused.length === 1, 'listener refusal');
    assert.equal(b.refused[0][1].code, 'EVERSION');
  } finally {
    await closeAll(a, b);
  }
});

test('no password: unencrypted, sessionKey null, messages flow', async () => {
  const a = await node({ password: null });
  const b = await node({ password: Buffer.alloc(0) });
  try {
    const c = await a.t.dial(b.addr, features());
    await waitFor(() => b.accepted.length === 1, 'inbound');
    assert.equal(c.encrypted, false);
    assert.equal(c.sessionKey, null);
    assert.equal(b.accepted[0].sessionKey, null);
    const got: string[] = [];
    b.accepted[0].onMessage = (_t, p) => got.push(Buffer.from(p).toString());
    c.send(2, Buffer.from('in the clear'));
    await waitFor(() => got.length === 1, 'message');
    assert.equal(got[0], 'in the clear');
  } finally {
    await closeAll(a, b);
  }
});

test('sodium on one side and tweetnacl on the other interoperate', async () => {
  const a = await node({ crypto: sodium });
  const b = await node({ crypto: tweet });
  try {
    const c = await a.t.dial(b.addr, features());
    await waitFor(() => b.accepted.length === 1, 'inbound');
    assert.deepEqual(c.sessionKey, b.accepted[0].sessionKey);
    const got: number[] = [];
    c.onMessage = (t) => got.push(t);
    b.accepted[0].onMessage = (t) => got.push(t);
    c.send(2, Buffer.from('x'));
    b.accepted[0].send(3, Buffer.from('y'));
    await waitFor(() => got.length === 2, 'both messages');
    assert.deepEqual(got.sort(), [2, 3]);
  } finally {
    await closeAll(a, b);
  }
});

test('messages sent the moment the handshake completes reach a handler attached later', async () => {
  const a = await node();
  const early = await node({}, false);
  try {
    await early.t.listen(
      (c) => {
        for (let i = 0; i < 3; i++) c.send(2, Buffer.from(`welcome${i}`));
      },
      () => {},
    );
    const c = await a.t.dial(`127.0.0.1:${early.t.address().port}`, features());
    await waitFor(() => a.t.counters().framesIn >= 3, 'welcome frames read');
    const got: string[] = [];
    c.onMessage = (_t, p) => got.push(Buffer.from(p).toString());
    await waitFor(() => got.length === 3, 'queued messages');
    assert.deepEqual(got, ['welcome0', 'welcome1', 'welcome2']);
  } finally {
    await closeAll(a, early);
  }
});

test('heartbeats keep a connection alive and are not passed to onMessage', async () => {
  const a = await node({ heartbeatMs: 20, readTimeoutMs: 100 });
  const b = await node({ heartbeatMs: 20, readTimeoutMs: 100 });
  try {
    const c = await a.t.dial(b.addr, features());
    await waitFor(() => b.accepted.length === 1, 'inbound');
    const msgs: number[] = [];
    let closed = '';
    c.onMessage = (t) => msgs.push(t);
    c.onClose = (r) => (closed = r);
    b.accepted[0].onMessage = (t) => msgs.push(t);
    // 15 heartbeats each way span 3 read timeouts.
    await waitFor(() => a.t.counters().framesIn >= 15 && b.t.counters().framesIn >= 15, 'heartbeats');
    assert.equal(closed, '');
    assert.deepEqual(msgs, []);
  } finally {
    await closeAll(a, b);
  }
});

test('read timeout closes a connection whose peer goes silent after the handshake', async () => {
  const b = await node({ password: null, heartbeatMs: 30, readTimeoutMs: 150 });
  try {
    const raw = await rawClient(b.t.address().port, null); // completes the handshake, then never sends
    await waitFor(() => b.accepted.length === 1, 'inbound');
    const reasons: string[] = [];
    b.accepted[0].onClose = (r) => reasons.push(r);
    const t0 = Date.now();
    await waitFor(() => reasons.length === 1, 'read timeout');
    const took = Date.now() - t0;
    assert.deepEqual(reasons, ['read timeout']);
    assert.ok(took >= 100, `closed after ${took} ms`);
    await raw.closed; // the listener really closed the socket
  } finally {
    await closeAll(b);
  }
});

test('close: local onClose gets the reason once, the peer sees "closed by peer", send after close is a no-op', async () => {
  const a = await node();
  const b = await node();
  try {
    const c = await a.t.dial(b.addr, features());
    await waitFor(() => b.accepted.length === 1, 'inbound');
    const local: string[] = [];
    const remote: string[] = [];
    c.onClose = (r) => local.push(r);
    b.accepted[0].onClose = (r) => remote.push(r);
    c.close('forgotten by operator');
    c.close('again');
    c.send(2, Buffer.from('late'));
    await waitFor(() => remote.length === 1, 'remote close');
    assert.deepEqual(local, ['forgotten by operator']);
    assert.deepEqual(remote, ['closed by peer']);
    // onClose fires exactly once: a handler swapped in afterwards is not called again
    const again: string[] = [];
    b.accepted[0].onClose = (r) => again.push(r);
    // ...but a connection that closed before anyone attached a handler still reports it, once
    const c2 = await a.t.dial(b.addr, features());
    await waitFor(() => b.accepted.length === 2, 'second inbound');
    c2.close('bye');
    // attach only once the listener side has noticed the close (its 2nd closed connection)
    await waitFor(() => b.t.counters().closed === 2, 'listener noticed close');
    const late: string[] = [];
    b.accepted[1].onClose = (r) => late.push(r);
    await waitFor(() => late.length === 1, 'late onClose');
    assert.deepEqual(late, ['closed by peer']);
    assert.deepEqual(again, []);
  } finally {
    await closeAll(a, b);
  }
});

test('a malformed frame after the handshake closes that connection with a protocol error', async () => {
  const b = await node({ password: null });
  try {
    const raw = await rawClient(b.t.address().port, null);
    await waitFor(() => b.accepted.length === 1, 'inbound');
    const reasons: string[] = [];
    b.accepted[0].onClose = (r) => reasons.push(r);
    raw.sock.write(Buffer.from([0, 0, 0, 0])); // a frame with no type byte
    await waitFor(() => reasons.length === 1, 'close');
    assert.match(reasons[0], /^protocol error: empty message frame/);
    assert.equal(b.t.counters().protocolErrors, 1);
    await raw.closed;
  } finally {
    await closeAll(b);
  }
});

test('a client that sends garbage is refused with EPROTO and the listener keeps accepting', async () => {
  const a = await node();
  const b = await node();
  try {
    const sock = net.connect({ host: '127.0.0.1', port: b.t.address().port });
    const closed = new Promise<void>((r) => sock.on('close', () => r()));
    sock.on('error', () => {}); // the listener may reset us; that is the point
    sock.resume(); // read (and drop) its hello so we notice the close
    sock.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await closed;
    await waitFor(() => b.refused.length === 1, 'refusal');
    assert.equal(b.refused[0][1].code, 'EPROTO');
    assert.match(b.refused[0][1].message, /magic/);
    const c = await a.t.dial(b.addr, features());
    assert.equal(c.encrypted, true);
    await waitFor(() => b.accepted.length === 1, 'next connection accepted');
  } finally {
    await closeAll(a, b);
  }
});

test('handshake deadline: a silent server fails the dial with ETIMEDOUT; a silent client is refused with ETIMEDOUT', async () => {
  const silent = net.createServer(() => {});
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
  const a = await node({ handshakeTimeoutMs: 150 });
  const held: net.Socket[] = [];
  try {
    const port = (silent.address() as net.AddressInfo).port;
    silent.on('connection', (s) => held.push(s));
    await assert.rejects(a.t.dial(`127.0.0.1:${port}`, features()), (e: unknown) => e instanceof WeaveError && e.code === 'ETIMEDOUT');
    const sock = net.connect({ host: '127.0.0.1', port: a.t.address().port });
    sock.on('error', () => {});
    sock.resume();
    const closed = new Promise<void>((r) => sock.on('close', () => r()));
    await waitFor(() => a.refused.length === 1, 'listener timeout');
    assert.equal(a.refused[0][1].code, 'ETIMEDOUT');
    await closed;
  } finally {
    for (const s of held) s.destroy();
    await new Promise<void>((r) => silent.close(() => r()));
    await closeAll(a);
  }
});

test('dial errors keep the OS code: ECONNREFUSED', async () => {
  const tmp = net.createServer();
  await new Promise<void>((r) => tmp.listen(0, '127.0.0.1', () => r()));
  const port = (tmp.address() as net.AddressInfo).port;
  await new Promise<void>((r) => tmp.close(() => r()));
  const a = await node({}, false);
  try {
    await assert.rejects(a.t.dial(`127.0.0.1:${port}`, features()), (e: unknown) => e instanceof WeaveError && e.code === 'ECONNREFUSED');
    assert.equal(a.t.counters().refused.ECONNREFUSED, 1);
  } finally {
    await closeAll(a);
  }
});

test('accept rate limit: connections beyond the bucket are closed at once, counted and logged', async () => {
  const b = await node({ acceptRate: { perSecond: 0.001, burst: 2 } });
  const socks: net.Socket[] = [];
  try {
    const results = await Promise.all(
      Array.from({ length: 5 }, () => {
        const s = net.connect({ host: '127.0.0.1', port: b.t.address().port });
        socks.push(s);
        s.on('error', () => {});
        // accepted sockets receive the 8-byte hello; rate-limited ones are closed without a byte
        return new Promise<'hello' | 'closed'>((r) => {
          s.once('data', () => r('hello'));
          s.once('close', () => r('closed'));
        });
      }),
    );
    assert.equal(results.filter((x) => x === 'hello').length, 2, results.join(','));
    assert.equal(results.filter((x) => x === 'closed').length, 3);
    const cn = b.t.counters();
    assert.equal(cn.rateLimited, 3);
    assert.equal(cn.accepted, 2);
    assert.ok(b.log.find((r) => r.level === 'warn' && /rate limited/.test(String(r.msg))));
  } finally {
    for (const s of socks) s.destroy();
    await closeAll(b);
  }
});

test('a message beyond maxFrame closes the connection instead of throwing', async () => {
  const a = await node({ maxFrame: 1024 });
  const b = await node({ maxFrame: 1024 });
  try {
    const c = await a.t.dial(b.addr, features());
    const reasons: string[] = [];
    c.onClose = (r) => reasons.push(r);
    assert.doesNotThrow(() => c.send(2, Buffer.alloc(2000)));
    assert.equal(reasons.length, 1);
    assert.match(reasons[0], /send failed: .*exceeds the frame limit/);
  } finally {
    await closeAll(a, b);
  }
});

test('trusted subnets: data key null only when both ends trust each other; the session stays encrypted', async () => {
  for (const [aTrusts, bTrusts] of [[true, true], [true, false], [false, true], [false, false]]) {
    const seen: string[] = [];
    const a = await node({ trusts: (ip) => { seen.push(`a:${ip}`); return aTrusts; } }, false);
    const b = await node({ trusts: (ip) => { seen.push(`b:${ip}`); return bTrusts; } });
    try {
      const ca = await a.t.dial(b.addr, features());
      await waitFor(() => b.accepted.length === 1, 'accepted');
      const cb = b.accepted[0];
      const both = aTrusts && bTrusts;
      for (const c of [ca, cb]) {
        assert.equal(c.encrypted, true);
        assert.equal(c.sessionKey?.length, 32);
        assert.equal(c.dataKey === null, both, `a trusts ${aTrusts}, b trusts ${bTrusts}`);
        if (!both) assert.ok(Buffer.from(c.dataKey!).equals(Buffer.from(c.sessionKey!)));
      }
      assert.equal(ca.remote.trusted, bTrusts);
      assert.equal(cb.remote.trusted, aTrusts);
      // each side judged the other's real address (the dialler once connected, the listener at accept)
      assert.deepEqual(seen.sort(), ['a:127.0.0.1', 'b:127.0.0.1']);
      ca.close('done');
    } finally {
      await closeAll(a, b);
    }
  }
});

test('trusted subnets parse and match (IPv4 only; bad input says what to fix)', async () => {
  const { parseTrustedSubnets, inSubnets } = await import('../../api/config');
  const s = parseTrustedSubnets('10.0.0.0/8, 192.168.1.0/24');
  assert.equal(s.length, 2);
  assert.ok(inSubnets(s, '10.1.2.3'));
  assert.ok(inSubnets(s, '192.168.1.255'));
  assert.ok(!inSubnets(s, '192.168.2.1'));
  assert.ok(!inSubnets(s, 'fe80::1'));
  assert.ok(!inSubnets([], '10.1.2.3'));
  assert.deepEqual(parseTrustedSubnets(''), []);
  assert.throws(() => parseTrustedSubnets('10.0.0.1/8'), /--trusted-subnets.*host bits set/);
  assert.throws(() => parseTrustedSubnets('10.0.0.0/33'), /--trusted-subnets/);
  assert.throws(() => parseTrustedSubnets('everything'), /--trusted-subnets/);
});

// ---- the control plane under attack (reliability issue items 4 and 5; ../shared/reference/attacks)

/** Connects from localAddress and resolves with what happened first: the listener's hello, or a close. */
function probe(port: number, localAddress: string): Promise<{ sock: net.Socket; got: 'hello' | 'closed' }> {
  const sock = net.connect({ host: '127.0.0.1', port, localAddress });
  sock.on('error', () => {});
  return new Promise((r) => {
    sock.once('data', () => r({ sock, got: 'hello' }));
    sock.once('close', () => r({ sock, got: 'closed' }));
  });
}

test('accept limits per source: a connect flood from 127.0.0.2 does not keep a peer at 127.0.0.3 out', async () => {
  // a FakeClock never refills the buckets: the flood spends everything it may, for the whole test
  const b = await node({ clock: new FakeClock(), handshakeTimeoutMs: 3_600_000 });
  const port = b.t.address().port;
  const socks: net.Socket[] = [];
  try {
    // flood.py in miniature: 100 connects from one source, in waves of 20
    let floodAccepted = 0;
    for (let wave = 0; wave < 5; wave++) {
      const res = await Promise.all(Array.from({ length: 20 }, () => probe(port, '127.0.0.2')));
      for (const r of res) {
        socks.push(r.sock);
        if (r.got === 'hello') floodAccepted++;
      }
    }
    const cn = b.t.counters();
    assert.equal(cn.accepted + cn.rateLimited, 100);
    assert.equal(floodAccepted, 10, 'the flooding source gets its own burst, no more');
    assert.equal(cn.rateLimitedBySource, 90, 'the rest is refused by its own bucket, not the shared one');
    // a real peer from another address completes the handshake during the flood
    const ok = await rawClient(port, PW, '127.0.0.3');
    socks.push(ok.sock);
    await waitFor(() => b.accepted.length === 1, 'the other source authenticated');
    assert.equal(b.accepted[0].remoteAddr.split(':')[0], '127.0.0.3');
    assert.ok(b.log.find((r) => r.level === 'warn' && r.limit === 'per source'), 'the refusals are logged as per-source');
  } finally {
    for (const s of socks) s.destroy();
    await closeAll(b);
  }
});

test('AcceptLimiter: bounded per-source table, idle sources expire, IPv6 limited per /64', () => {
  const clock = new FakeClock();
  const l = new AcceptLimiter(clock, { perSecond: 1e6, burst: 1e6 }, { perSecond: 5, burst: 10 }, 100);
  for (let i = 0; i < 5000; i++) assert.equal(l.take(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`), 'ok');
  assert.ok(l.size <= 100, `table bounded: ${l.size}`);
  for (let i = 0; i < 10; i++) l.take('192.0.2.1');
  assert.equal(l.take('192.0.2.1'), 'source');
  clock.advance(2000); // 10 tokens refilled: the busy source and all others are idle again
  l.take('192.0.2.9');
  assert.equal(l.size, 1, 'refilled (idle) sources are forgotten');
  assert.equal(l.take('192.0.2.1'), 'ok');
  assert.equal(sourceKey('2001:db8:1:2:aaaa::1'), '2001:db8:1:2::/64');
  assert.equal(sourceKey('2001:db8:1:2::ffff'), '2001:db8:1:2::/64');
  assert.equal(sourceKey('::ffff:10.1.2.3'), '10.1.2.3');
  assert.equal(sourceKey('::1'), '0:0:0:0::/64');
  for (let i = 0; i < 10; i++) l.take(`2001:db8:1:2::${i + 1}`);
  assert.equal(l.take('2001:db8:1:2::ff'), 'source', 'addresses of one /64 share a bucket');
  assert.equal(l.take('2001:db8:1:3::1'), 'ok');
});

/** hello + key exchange (encrypt flag, random key) + the header of a frame of `len` bytes: streamatk2.py's prefix */
function attackPrefix(len: number): Buffer {
  const hdr = Buffer.alloc(4);
  hdr.writeUInt32BE(len, 0);
  const hello = encodeHello(1, 1);
  assert.equal(hello.length, HELLO_BYTES);
  return Buffer.concat([hello, encodeKeyExchange(true, sodium.randomBytes(32)), hdr]);
}

function gc(): void {
  v8.setFlagsFromString('--expose-gc');
  (vm.runInNewContext('gc') as () => void)();
}

test('pre-authentication frames are capped: a declared 16 MiB frame is refused at once, and 25 such clients leave memory flat', async (t) => {
  const b = await node({ handshakeTimeoutMs: 3_600_000, acceptRatePerSource: { perSecond: 1000, burst: 1000 }, acceptRate: { perSecond: 1000, burst: 1000 } });
  const port = b.t.address().port;
  const body = Buffer.alloc(2 << 20, 0x41); // one buffer for every client: the clients cost no memory per socket
  try {
    const one = net.connect({ host: '127.0.0.1', port });
    one.on('error', () => {});
    one.resume(); // read what the listener sends, so its close is seen
    const started = Date.now();
    const closedOne = new Promise<number>((r) => one.on('close', () => r(Date.now() - started)));
    one.write(attackPrefix(16 << 20));
    const ms = await Promise.race([closedOne, new Promise<number>((r) => setTimeout(() => r(Infinity), 2000))]);
    assert.ok(ms < 1000, `closed ${ms} ms after declaring the frame`);
    await waitFor(() => (b.t.counters().refused.EPROTO ?? 0) === 1, 'refused as a protocol error');
    assert.ok(b.log.find((r) => /exceeds the limit of 16384/.test(String(r.err))), 'the refusal names the limit');
    assert.equal(PREAUTH_MAX_FRAME, 16384);

    gc();
    const before = process.memoryUsage();
    const socks = Array.from({ length: 25 }, () => {
      const s = net.connect({ host: '127.0.0.1', port });
      s.on('error', () => {});
      s.resume();
      s.write(attackPrefix(16 << 20));
      s.write(body);
      return s;
    });
    const allClosed = Promise.all(socks.map((s) => new Promise<void>((r) => s.on('close', () => r()))));
    const settled = await Promise.race([allClosed.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 3000))]);
    gc();
    const after = process.memoryUsage();
    for (const s of socks) s.destroy();
    const mb = (n: number) => Math.round((n / (1 << 20)) * 10) / 10;
    const grow = {
      rss: mb(after.rss - before.rss),
      heapUsed: mb(after.heapUsed - before.heapUsed),
      external: mb(after.external + after.arrayBuffers - before.external - before.arrayBuffers),
    };
    t.diagnostic(`25 clients x (16 MiB declared, 2 MiB sent): growth rss ${grow.rss} MiB, heapUsed ${grow.heapUsed} MiB, external+arrayBuffers ${grow.external} MiB`);
    assert.ok(settled, 'every attacking connection was closed by the listener');
    assert.ok(grow.external < 8, `buffers retained: ${JSON.stringify(grow)}`);
    assert.ok(grow.heapUsed < 8, `heap retained: ${JSON.stringify(grow)}`);
    assert.equal(b.accepted.length, 0);
  } finally {
    await closeAll(b);
  }
});

test('after the password is proven the normal frame limit applies (a 1 MiB message passes)', async () => {
  const a = await node();
  const b = await node();
  try {
    const c = await a.t.dial(b.addr, features());
    await waitFor(() => b.accepted.length === 1, 'accepted');
    const got: number[] = [];
    b.accepted[0].onMessage = (_t, p) => got.push(p.length);
    c.send(40, Buffer.alloc(1 << 20));
    await waitFor(() => got.length === 1, '1 MiB message');
    assert.equal(got[0], 1 << 20);
  } finally {
    await closeAll(a, b);
  }
});
