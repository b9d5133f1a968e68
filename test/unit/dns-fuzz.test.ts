// Malformed and fuzzed DNS traffic (seeded) over UDP and TCP, from clients and from a hostile
// upstream: the server answers what it must (FORMERR / NOTIMP / BADVERS), drops what it must, counts
// it, never throws, and keeps answering real clients afterwards.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'child_process';
import * as dgram from 'dgram';
import * as net from 'net';
import { realClock } from '../../lib/clock';
import { silentLogger } from '../../lib/log';
import { DnsStore } from '../../dns/records';
import { DnsServer } from '../../dns/server';
import { mulberry32 } from '../fakes/rng';
import { QTYPE, RCODE, nameToWire, writeHeader } from '../../dns/wire';


function query(id: number, name: string, type: number, opts: { edns?: number; ednsVersion?: number; flags1?: number; extra?: Buffer } = {}): Buffer {
  const h = Buffer.alloc(12);
  writeHeader(h, id, opts.flags1 ?? 0x01, 0, 1, 0, 0, opts.edns !== undefined ? 1 : 0);
  const q = Buffer.alloc(4);
  q.writeUInt16BE(type, 0);
  q.writeUInt16BE(1, 2);
  const parts = [h, nameToWire(name), q];
  if (opts.edns !== undefined) {
    const opt = Buffer.alloc(11);
    opt.writeUInt16BE(QTYPE.OPT, 1);
    opt.writeUInt16BE(opts.edns, 3);
    opt[6] = opts.ednsVersion ?? 0;
    parts.push(opt);
  }
  if (opts.extra) parts.push(opts.extra);
  return Buffer.concat(parts);
}

function digShort(port: number, ...args: string[]): Promise<string[]> {
  return new Promise((resolve, reject) => {
    execFile('dig', ['@127.0.0.1', '-p', String(port), '+tries=1', '+time=3', '+short', ...args], { timeout: 10_000 }, (err, out) => {
      if (err) reject(err);
      else resolve(out.split('\n').filter((l) => l.trim()));
    });
  });
}

/** A UDP client that collects responses and can wait for the one with a given id. */
class Client {
  sock = dgram.createSocket('udp4');
  responses: Buffer[] = [];
  private waiters = new Map<number, (b: Buffer) => void>();
  constructor(private readonly port: number) {
    this.sock.on('message', (m) => {
      this.responses.push(m);
      if (m.length >= 2) {
        const w = this.waiters.get(m.readUInt16BE(0));
        if (w) {
          this.waiters.delete(m.readUInt16BE(0));
          w(m);
        }
      }
    });
  }
  send(b: Buffer): void {
    this.sock.send(b, this.port, '127.0.0.1');
  }
  ask(b: Buffer, timeoutMs = 3000): Promise<Buffer> {
    const id = b.readUInt16BE(0);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no answer for id ${id} in ${timeoutMs} ms`)), timeoutMs);
      this.waiters.set(id, (m) => {
        clearTimeout(t);
        resolve(m);
      });
      this.send(b);
    });
  }
  close(): void {
    this.sock.close();
  }
}

const rcodeOf = (m: Buffer): number => m[3] & 0x0f;

let store: DnsStore;
let server: DnsServer;
let hostile: dgram.Socket;
let hostileHits = 0;

before(async () => {
  // an upstream that answers forwarded queries with junk, truncated copies, wrong ids, TC bits...
  hostile = dgram.createSocket('udp4');
  await new Promise<void>((r) => hostile.bind(0, '127.0.0.1', () => r()));
  const rnd = mulberry32(99);
  hostile.on('message', (m, r) => {
    hostileHits++;
    const kind = Math.floor(rnd() * 5);
    let out: Buffer;
    if (kind === 0) out = Buffer.from(Array.from({ length: Math.floor(rnd() * 40) }, () => Math.floor(rnd() * 256)));
    else {
      out = Buffer.from(m);
      out[2] |= 0x80;
      if (kind === 1) out[2] |= 0x02; // TC: the server retries over TCP, where nobody listens
      if (kind === 2) out = out.subarray(0, Math.floor(rnd() * out.length));
      if (kind === 3) out[Math.floor(rnd() * out.length)] ^= 0xff;
    }
    hostile.send(out, r.port, r.address);
  });
  store = new DnsStore({ self: '02:00:00:00:00:01', clock: realClock, log: silentLogger() });
  for (let i = 1; i <= 5; i++) store.add('web.weave.local', `10.32.0.${i}`);
  for (let i = 1; i <= 60; i++) store.add('big.weave.local', `10.40.0.${i}`);
  server = new DnsServer({
    listenAddress: '127.0.0.1', port: 0, upstream: () => [`127.0.0.1:${hostile.address().port}`], upstreamTimeoutMs: 200,
    store, clock: realClock, log: silentLogger(), tcpIdleMs: 300, maxTcpConnections: 64,
  });
  await server.start();
});

after(async () => {
  await server.stop();
  hostile.close();
});

test('malformed queries: FORMERR, NOTIMP, BADVERS or dropped, as the RFCs say', async () => {
  const c = new Client(server.port);
  try {
    const formerr = [
      (() => { const b = query(0x101, 'web.weave.local', QTYPE.A); b[5] = 2; return b; })(), // qdcount 2
      (() => { const b = query(0x102, 'web.weave.local', QTYPE.A); b[5] = 0; return b; })(), // qdcount 0
      Buffer.concat([query(0x103, 'web.weave.local', QTYPE.A), Buffer.from([1, 2, 3])]), // trailing garbage
      (() => { const b = query(0x104, 'web.weave.local', QTYPE.A); b[12] = 0xc0; b[13] = 12; return b; })(), // pointer in qname
      query(0x105, 'web.weave.local', QTYPE.A).subarray(0, 20), // name runs off the end
      (() => { const b = query(0x106, 'web.weave.local', QTYPE.A, { edns: 1232 }); const two = Buffer.concat([b, b.subarray(b.length - 11)]); two[11] = 2; return two; })(), // two OPTs
    ];
    for (const q of formerr) {
      const r = await c.ask(q);
      assert.equal(r[2] & 0x80, 0x80, 'QR set');
      assert.equal(rcodeOf(r), RCODE.FORMERR, `id ${q.readUInt16BE(0).toString(16)}`);
      assert.equal(r.readUInt16BE(6), 0, 'no answers');
    }
    const notimp = await c.ask(query(0x201, 'web.weave.local', QTYPE.A, { flags1: (2 << 3) | 1 }));
    assert.equal(rcodeOf(notimp), RCODE.NOTIMP);
    const badvers = await c.ask(query(0x202, 'web.weave.local', QTYPE.A, { edns: 1232, ednsVersion: 1 }));
    assert.equal(rcodeOf(badvers), 0);
    assert.equal(badvers.readUInt16BE(10), 1, 'OPT present');
    assert.equal(badvers[badvers.length - 11 + 5], 1, 'extended rcode 1 = BADVERS (16)');
    // dropped: too short for a header, or a response. Answered in order on one socket, so the next
    // answer we get must be the valid query's.
    c.send(Buffer.from([1, 2, 3]));
    const resp = query(0x301, 'web.weave.local', QTYPE.A);
    resp[2] |= 0x80;
    c.send(resp);
    const before = c.responses.length;
    const ok = await c.ask(query(0x302, 'web.weave.local', QTYPE.A));
    assert.equal(c.responses.length, before + 1, 'nothing answered the dropped packets');
    assert.equal(rcodeOf(ok), RCODE.NOERROR);
    assert.equal(ok.readUInt16BE(6), 5);
    assert.ok(server.counters.malformed >= 8);
  } finally {
    c.close();
  }
});

test('UDP fuzz (seeded): random and mutated packets, the server keeps answering', async () => {
  const rnd = mulberry32(1234);
  const bases = [
    query(1, 'web.weave.local', QTYPE.A),
    query(2, 'WEB.weave.LOCAL', QTYPE.A, { edns: 600 }),
    query(3, 'big.weave.local', QTYPE.A),
    query(4, '1.0.32.10.in-addr.arpa', QTYPE.PTR),
    query(5, 'nope.weave.local', QTYPE.AAAA, { edns: 4096 }),
    query(6, 'example.test', QTYPE.A), // forwarded to the hostile upstream
    query(7, '9.9.9.9.in-addr.arpa', QTYPE.PTR),
  ];
  const c = new Client(server.port);
  const before = { ...server.counters };
  try {
    const N = 6000;
    for (let i = 0; i < N; i++) {
      let p: Buffer;
      if (rnd() < 0.3) {
        p = Buffer.from(Array.from({ length: Math.floor(rnd() * 300) }, () => Math.floor(rnd() * 256)));
        if (p.length > 2 && rnd() < 0.5) p[2] &= 0x7f; // mostly "queries"
      } else {
        p = Buffer.from(bases[Math.floor(rnd() * bases.length)]);
        const muts = 1 + Math.floor(rnd() * 4);
        for (let m = 0; m < muts; m++) {
          const k = rnd();
          if (k < 0.5) p[Math.floor(rnd() * p.length)] = Math.floor(rnd() * 256);
          else if (k < 0.7) p = p.subarray(0, Math.floor(rnd() * p.length));
          else if (k < 0.85) p = Buffer.concat([p, Buffer.from(Array.from({ length: 1 + Math.floor(rnd() * 20) }, () => Math.floor(rnd() * 256)))]);
          else if (p.length >= 12) p.writeUInt16BE(Math.floor(rnd() * 0x10000), 4 + 2 * Math.floor(rnd() * 4)); // a count field
        }
      }
      c.send(p);
      // pace the sender by a round trip per batch (one socket, answered in order), so the loopback
      // socket buffers are not the thing being tested
      if (i % 100 === 99) await c.ask(query(0x8000 + ((i / 100) | 0), 'web.weave.local', QTYPE.A));
    }
    const sentinel = await c.ask(query(0xbeef, 'web.weave.local', QTYPE.A));
    assert.equal(rcodeOf(sentinel), RCODE.NOERROR);
    assert.equal(sentinel.readUInt16BE(6), 5);
    for (const r of c.responses) {
      assert.ok(r.length >= 12 && r.length <= 4096, `response length ${r.length}`);
      assert.equal(r[2] & 0x80, 0x80, 'every response has QR set');
    }
    const processed = server.counters.queriesUdp - before.queriesUdp;
    assert.ok(processed >= N * 0.9, `server saw ${processed} of ${N}`);
    assert.ok(server.counters.malformed - before.malformed > 500, 'malformed packets were counted');
    assert.ok(server.counters.formerr - before.formerr > 100);
    assert.ok(server.counters.noerror - before.noerror > 100, 'mutations that stay valid are answered');
    assert.deepEqual((await digShort(server.port, 'web.weave.local')).sort(), ['10.32.0.1', '10.32.0.2', '10.32.0.3', '10.32.0.4', '10.32.0.5']);
    assert.ok(hostileHits > 0, 'forwarded queries reached the hostile upstream');
    assert.ok(server.counters.upstreamBadResponses > 0, 'junk from upstream was counted, not relayed');
  } finally {
    c.close();
  }
});

function tcpSession(port: number, chunks: Buffer[], waitFor = 0): Promise<Buffer[]> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    const frames: Buffer[] = [];
    let acc = Buffer.alloc(0);
    const t = setTimeout(() => {
      s.destroy();
      reject(new Error(`tcp session: got ${frames.length}/${waitFor} answers`));
    }, 5000);
    s.on('data', (d) => {
      acc = Buffer.concat([acc, d]);
      while (acc.length >= 2 && acc.length >= 2 + acc.readUInt16BE(0)) {
        frames.push(acc.subarray(2, 2 + acc.readUInt16BE(0)));
        acc = acc.subarray(2 + acc.readUInt16BE(0));
      }
      if (waitFor > 0 && frames.length >= waitFor) s.end();
    });
    s.on('error', () => {}); // the server may reset a garbage stream; that is allowed
    s.on('close', () => {
      clearTimeout(t);
      resolve(frames);
    });
    s.on('connect', () => {
      for (const c of chunks) s.write(c);
      if (waitFor === 0) s.end();
    });
  });
}

const frame = (b: Buffer): Buffer => {
  const l = Buffer.alloc(2);
  l.writeUInt16BE(b.length);
  return Buffer.concat([l, b]);
};

test('TCP: pipelined queries, fuzzed streams, idle and connection limits', async () => {
  // three queries in one write, answered in full (60 answers fit over TCP)
  const answers = await tcpSession(server.port, [Buffer.concat([frame(query(1, 'web.weave.local', QTYPE.A)), frame(query(2, 'big.weave.local', QTYPE.A)), frame(query(3, 'nope.weave.local', QTYPE.A))])], 3);
  const byId = new Map(answers.map((a) => [a.readUInt16BE(0), a]));
  assert.equal(byId.get(1)!.readUInt16BE(6), 5);
  assert.equal(byId.get(2)!.readUInt16BE(6), 60);
  assert.equal(byId.get(2)![2] & 0x02, 0, 'no TC over TCP');
  assert.equal(rcodeOf(byId.get(3)!), RCODE.NXDOMAIN);

  const rnd = mulberry32(5678);
  const sessions: Promise<Buffer[]>[] = [];
  for (let i = 0; i < 40; i++) {
    const parts: Buffer[] = [];
    const n = 1 + Math.floor(rnd() * 5);
    for (let j = 0; j < n; j++) {
      const k = rnd();
      if (k < 0.3) parts.push(Buffer.from(Array.from({ length: Math.floor(rnd() * 100) }, () => Math.floor(rnd() * 256))));
      else if (k < 0.5) parts.push(frame(Buffer.alloc(Math.floor(rnd() * 12)))); // frames shorter than a header
      else {
        const q = Buffer.from(query(100 + j, rnd() < 0.5 ? 'web.weave.local' : 'example.test', QTYPE.A));
        q[Math.floor(rnd() * q.length)] = Math.floor(rnd() * 256);
        parts.push(frame(q));
      }
    }
    sessions.push(tcpSession(server.port, parts));
  }
  await Promise.all(sessions);
  // a connection that stalls mid-frame is closed after the idle time
  const t0 = Date.now();
  const stalled = await tcpSession(server.port, [Buffer.from([0, 40, 1, 2])], 1_000_000).catch((e: Error) => e);
  assert.ok(Array.isArray(stalled), `stalled connection not closed by the server: ${String(stalled)}`);
  assert.ok(Date.now() - t0 < 2000);
  // and real clients are still served, over TCP and UDP
  assert.equal((await digShort(server.port, '+tcp', 'big.weave.local')).length, 60);
  assert.equal((await digShort(server.port, 'web.weave.local')).length, 5);
});

test('TCP connection limit: connections beyond the limit are refused, the rest are served', async () => {
  const s = new DnsServer({ listenAddress: '127.0.0.1', port: 0, upstream: () => [], store, clock: realClock, log: silentLogger(), maxTcpConnections: 2 });
  await s.start();
  const socks: net.Socket[] = [];
  try {
    for (let i = 0; i < 2; i++) {
      const k = net.connect(s.port, '127.0.0.1');
      socks.push(k);
      await new Promise((r) => k.once('connect', r));
    }
    // the server has accepted both once it answers on one of them
    await new Promise<void>((resolve) => {
      socks[0].once('data', () => resolve());
      socks[0].write(frame(query(9, 'web.weave.local', QTYPE.A)));
    });
    const third = await tcpSession(s.port, [frame(query(10, 'web.weave.local', QTYPE.A))], 1);
    assert.equal(third.length, 0, 'third connection closed without an answer');
    assert.equal(s.counters.tcpRejected, 1);
  } finally {
    for (const k of socks) k.destroy();
    await s.stop();
  }
});
