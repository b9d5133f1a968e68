// The DNS server against real clients (dig from bind9-dnsutils, kdig from knot-dnsutils) on loopback
// high ports, with a tiny upstream resolver started by the test.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'child_process';
import * as dgram from 'dgram';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { randomInt } from 'crypto';
import { FakeClock, realClock } from '../../lib/clock';
import { MemoryLogger, silentLogger } from '../../lib/log';
import { DnsStore } from '../../dns/records';
import { DnsServer, parseUpstream } from '../../dns/server';
import { ResolvConfWatcher, parseResolvConf } from '../../dns/resolvconf';
import { QTYPE, QueryParser, RCODE, nameToWire, writeHeader } from '../../dns/wire';
import { Registry } from 'prom-client';
import parsePrometheus from 'parse-prometheus-text-format';
import { dnsStatus, registerDnsMetrics } from '../../dns/report';

function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: 10_000 }, (err, stdout, stderr) => {
      if (err && !stdout) reject(new Error(`${cmd} ${args.join(' ')}: ${err.message} ${stderr}`));
      else resolve(stdout);
    });
  });
}

const dig = (port: number, ...args: string[]): Promise<string> => run('dig', ['@127.0.0.1', '-p', String(port), '+tries=1', '+time=5', ...args]);
const kdig = (port: number, ...args: string[]): Promise<string> => run('kdig', ['@127.0.0.1', '-p', String(port), '+retry=0', '+time=5', ...args]);
const lines = (s: string): string[] => s.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith(';'));
const status = (s: string): string => /status: (\w+)/.exec(s)?.[1] ?? `no status in: ${s}`;
const flags = (s: string): string[] => (/flags: ([a-z ]+);/.exec(s)?.[1] ?? '').trim().split(/\s+/);
const ancount = (s: string): number => Number(/ANSWER: (\d+)/.exec(s)?.[1] ?? NaN);

/** A tiny upstream resolver: fixed answers, a TC over UDP for big.example.test, counts what it sees. */
class FakeUpstream {
  udp = dgram.createSocket('udp4');
  tcp = net.createServer((s) => this.onTcp(s));
  port = 0;
  udpQueries = 0;
  tcpQueries = 0;
  private readonly parser = new QueryParser();
  constructor(readonly host: string, private readonly answerAddr = '192.0.2.1') {}

  async start(port = 0): Promise<void> {
    await new Promise<void>((res, rej) => {
      this.udp.once('error', rej);
      this.udp.bind(port, this.host, () => res());
    });
    this.port = this.udp.address().port;
    await new Promise<void>((res, rej) => {
      this.tcp.once('error', rej);
      this.tcp.listen(this.port, this.host, () => res());
    });
    this.udp.on('message', (m, r) => {
      this.udpQueries++;
      const out = this.answer(m, true);
      if (out) this.udp.send(out, r.port, r.address);
    });
  }

  private onTcp(s: net.Socket): void {
    let acc = Buffer.alloc(0);
    s.on('error', () => {});
    s.on('data', (d) => {
      acc = Buffer.concat([acc, d]);
      while (acc.length >= 2 && acc.length >= 2 + acc.readUInt16BE(0)) {
        const q = acc.subarray(2, 2 + acc.readUInt16BE(0));
        acc = acc.subarray(2 + q.length);
        this.tcpQueries++;
        const out = this.answer(q, false);
        if (out) {
          const l = Buffer.alloc(2);
          l.writeUInt16BE(out.length);
          s.write(Buffer.concat([l, out]));
        }
      }
    });
  }

  private answer(q: Buffer, udp: boolean): Buffer | null {
    const p = this.parser;
    if (p.parse(q, q.length) !== RCODE.NOERROR) return null;
    const name = q.subarray(12, p.nameEnd).toString('latin1').toLowerCase();
    const is = (n: string): boolean => name === nameToWire(n).toString('latin1');
    const rrs: Buffer[] = [];
    let rcode: number = RCODE.NOERROR;
    let tc = 0;
    const rr = (type: number, rdata: Buffer): Buffer => {
      const h = Buffer.alloc(12);
      h.writeUInt16BE(0xc00c, 0);
      h.writeUInt16BE(type, 2);
      h.writeUInt16BE(1, 4);
      h.writeUInt32BE(30, 6);
      h.writeUInt16BE(rdata.length, 10);
      return Buffer.concat([h, rdata]);
    };
    const a = (s: string): Buffer => Buffer.from(s.split('.').map(Number));
    if (is('example.test') && p.qtype === QTYPE.A) rrs.push(rr(QTYPE.A, a(this.answerAddr)));
    else if (is('big.example.test') && p.qtype === QTYPE.A) {
      if (udp) tc = 0x02;
      else for (let i = 1; i <= 100; i++) rrs.push(rr(QTYPE.A, a(`198.51.100.${i}`)));
    } else if (is('1.2.0.192.in-addr.arpa') && p.qtype === QTYPE.PTR) rrs.push(rr(QTYPE.PTR, nameToWire('upstream.example.test')));
    else rcode = RCODE.NXDOMAIN;
    const head = Buffer.alloc(12);
    writeHeader(head, p.id, 0x80 | tc | p.rd, 0x80 | rcode, 1, rrs.length, 0, 0);
    return Buffer.concat([head, q.subarray(12, p.qEnd), ...rrs]);
  }

  async stop(): Promise<void> {
    await new Promise<void>((r) => this.udp.close(() => r()));
    await new Promise<void>((r) => this.tcp.close(() => r()));
  }
}

async function closedUdpPort(): Promise<number> {
  const s = dgram.createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
  const p = s.address().port;
  await new Promise<void>((r) => s.close(() => r()));
  return p;
}

const SELF = '02:00:00:00:00:01';
let store: DnsStore;
let server: DnsServer;
let up: FakeUpstream;
const WEB = Array.from({ length: 8 }, (_, i) => `10.32.1.${i + 1}`);

before(async () => {
  up = new FakeUpstream('127.0.0.1');
  await up.start();
  store = new DnsStore({ self: SELF, clock: realClock, log: silentLogger() });
  for (const a of WEB) store.add('web.weave.local', a);
  store.add('one.weave.local', '10.32.2.1');
  for (let i = 1; i <= 60; i++) store.add('big.weave.local', `10.40.0.${i}`);
  for (let i = 1; i <= 100; i++) store.add('huge.weave.local', `10.41.0.${i}`);
  server = new DnsServer({ listenAddress: '127.0.0.1', port: 0, upstream: () => [`127.0.0.1:${up.port}`], store, clock: realClock, log: silentLogger() });
  await server.start();
});

after(async () => {
  await server.stop();
  await up.stop();
});

test('several addresses: all returned, in random order across queries', async () => {
  const out = lines(await dig(server.port, '+short', ...Array(20).fill('web.weave.local')));
  assert.equal(out.length, 20 * WEB.length);
  const orders = new Set<string>();
  const firsts = new Set<string>();
  for (let i = 0; i < 20; i++) {
    const group = out.slice(i * WEB.length, (i + 1) * WEB.length);
    assert.deepEqual(group.slice().sort(), WEB.slice().sort());
    orders.add(group.join(','));
    firsts.add(group[0]);
  }
  assert.ok(orders.size > 10, `orders repeat too often: ${orders.size} distinct of 20`);
  assert.ok(firsts.size >= 3, `first address barely changes: ${[...firsts]}`);
});

test('names are case-insensitive and answers keep the question case (dig and kdig)', async () => {
  const d = lines(await dig(server.port, '+noall', '+answer', 'OnE.WeAvE.LoCaL'));
  assert.deepEqual(d.map((l) => l.split(/\s+/)), [['OnE.WeAvE.LoCaL.', '1', 'IN', 'A', '10.32.2.1']]);
  // kdig lowercases the name it sends (seen on the wire), so it only shows the lookup works
  const k = lines(await kdig(server.port, '+noall', '+answer', 'ONE.weave.LOCAL'));
  assert.deepEqual(k.map((l) => l.split(/\s+/)), [['one.weave.local.', '1', 'IN', 'A', '10.32.2.1']]);
});

test('PTR for an address we hold', async () => {
  assert.deepEqual(lines(await dig(server.port, '+short', '-x', '10.32.2.1')), ['one.weave.local.']);
  assert.deepEqual(lines(await kdig(server.port, '+short', '-x', '10.32.1.3')), ['web.weave.local.']);
});

test('NXDOMAIN with SOA for unknown names, NOERROR-empty for other types of existing names', async () => {
  const nx = await dig(server.port, '+noall', '+comments', '+authority', 'nope.weave.local');
  assert.equal(status(nx), 'NXDOMAIN');
  assert.ok(flags(nx).includes('aa'));
  assert.match(nx, /^weave\.local\.\s+1\s+IN\s+SOA\s+ns\.weave\.local\. hostmaster\.weave\.local\./m);
  const types = ['AAAA', 'MX', 'TXT'];
  const rs = await Promise.all(types.map((t) => dig(server.port, '+noall', '+comments', 'web.weave.local', t)));
  rs.forEach((r, i) => {
    assert.equal(status(r), 'NOERROR', types[i]);
    assert.equal(ancount(r), 0, types[i]);
  });
  const apex = await dig(server.port, '+noall', '+answer', 'weave.local', 'SOA');
  assert.match(apex, /SOA\s+ns\.weave\.local\./);
  const k = await kdig(server.port, 'NOPE.weave.local');
  assert.match(k, /status: NXDOMAIN/);
});

test('60 addresses: truncated (TC) over UDP without EDNS, complete over TCP; EDNS size respected', async () => {
  const udp = await dig(server.port, '+noedns', '+ignore', '+noall', '+comments', 'big.weave.local');
  assert.ok(flags(udp).includes('tc'), `no tc flag: ${udp}`);
  assert.ok(ancount(udp) < 60 && ancount(udp) > 0, `answers: ${ancount(udp)}`);
  const tcp = lines(await dig(server.port, '+tcp', '+short', 'big.weave.local'));
  assert.equal(tcp.length, 60);
  assert.equal(new Set(tcp).size, 60);
  const ktcp = lines(await kdig(server.port, '+tcp', '+short', 'big.weave.local'));
  assert.equal(ktcp.length, 60);
  const kudp = await kdig(server.port, '+notcp', 'big.weave.local');
  assert.match(kudp, /flags: [a-z ]*\btc\b/i);
  // the client's EDNS buffer decides: 4096 fits 60 answers, 1232 does not fit 100
  const e4096 = await dig(server.port, '+bufsize=4096', '+ignore', '+noall', '+comments', 'big.weave.local');
  assert.ok(!flags(e4096).includes('tc'));
  assert.equal(ancount(e4096), 60);
  const e1232 = await dig(server.port, '+bufsize=1232', '+ignore', '+noall', '+comments', 'huge.weave.local');
  assert.ok(flags(e1232).includes('tc'));
  // dig retries over TCP by itself on TC and gets all 100
  assert.equal(lines(await dig(server.port, '+short', 'huge.weave.local')).length, 100);
});

test('outside the domain: forwarded upstream over UDP, TCP retry on TC, other reverse lookups upstream', async () => {
  const before = { ...server.counters };
  assert.deepEqual(lines(await dig(server.port, '+short', 'example.test')), ['192.0.2.1']);
  assert.deepEqual(lines(await dig(server.port, '+short', '+tcp', 'EXAMPLE.test')), ['192.0.2.1']);
  assert.deepEqual(lines(await dig(server.port, '+short', '-x', '192.0.2.1')), ['upstream.example.test.']);
  assert.equal(status(await dig(server.port, 'missing.example.test')), 'NXDOMAIN');
  const tcpBefore = up.tcpQueries;
  // upstream says TC over UDP → we ask it over TCP → 100 answers are too big for dig's UDP → TC → dig retries over TCP
  const big = lines(await dig(server.port, '+short', 'big.example.test'));
  assert.equal(big.length, 100);
  assert.ok(up.tcpQueries >= tcpBefore + 1, 'upstream was asked over TCP');
  const tc = await dig(server.port, '+noedns', '+ignore', '+noall', '+comments', 'big.example.test');
  assert.ok(flags(tc).includes('tc'));
  assert.equal(status(tc), 'NOERROR');
  assert.ok(server.counters.forwarded >= before.forwarded + 6);
  assert.ok(server.counters.forwardedTcpRetry >= before.forwardedTcpRetry + 2);
  assert.equal(server.counters.upstreamTimeouts, before.upstreamTimeouts);
});

test('upstream down: SERVFAIL within the bound; second resolver used when the first is dead', async () => {
  const dead = await closedUdpPort();
  const s = new DnsServer({ listenAddress: '127.0.0.1', port: 0, upstream: () => [`127.0.0.1:${dead}`], upstreamTimeoutMs: 300, store, clock: realClock, log: silentLogger() });
  const none = new DnsServer({ listenAddress: '127.0.0.1', port: 0, upstream: () => [], store, clock: realClock, log: silentLogger() });
  const failover = new DnsServer({ listenAddress: '127.0.0.1', port: 0, upstream: () => [`127.0.0.1:${dead}`, `127.0.0.1:${up.port}`], upstreamTimeoutMs: 400, store, clock: realClock, log: silentLogger() });
  await s.start();
  await none.start();
  await failover.start();
  try {
    // UDP and TCP clients, the no-upstream server and the failover server, all at once
    const t0 = Date.now();
    const timed = async (p: Promise<string>): Promise<[string, number]> => [await p, Date.now() - t0];
    const [[r, took], [rt, tookTcp], [rn, tookNone], [fo]] = await Promise.all([
      timed(dig(s.port, 'example.test')),
      timed(dig(s.port, '+tcp', 'example.test')),
      timed(dig(none.port, 'example.test')),
      timed(dig(failover.port, '+short', 'example.test')),
    ]);
    assert.equal(status(r), 'SERVFAIL');
    assert.ok(took >= 250 && took < 1500, `SERVFAIL after ${took} ms`);
    assert.equal(status(rt), 'SERVFAIL');
    assert.ok(tookTcp >= 250 && tookTcp < 1500, `TCP SERVFAIL after ${tookTcp} ms`);
    assert.equal(s.counters.upstreamTimeouts, 2);
    assert.equal(status(rn), 'SERVFAIL');
    assert.ok(tookNone < 1000);
    assert.deepEqual(lines(fo), ['192.0.2.1']);
    assert.equal(failover.counters.upstreamTimeouts, 0);
    // weave names never depend on the upstream
    assert.deepEqual(lines(await dig(s.port, '+short', 'one.weave.local')), ['10.32.2.1']);
  } finally {
    await s.stop();
    await none.stop();
    await failover.stop();
  }
});

test('resolv.conf: parsed, and upstreams re-read when the file is replaced', async () => {
  const parsed = parseResolvConf('# c\nnameserver 10.0.0.1\nnameserver fe80::1%eth0 ; x\nsearch a.b weave.local\noptions ndots:2\nnameserver 10.0.0.1\n');
  assert.deepEqual(parsed, { nameservers: ['10.0.0.1', 'fe80::1'], search: ['a.b', 'weave.local'], options: ['ndots:2'] });
  assert.deepEqual(parseUpstream('[::1]:5353'), { host: '::1', port: 5353, v6: true });
  assert.deepEqual(parseUpstream('10.1.2.3'), { host: '10.1.2.3', port: 53, v6: false });
  assert.equal(parseUpstream('nope:53'), null);

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'weave-dns-test-'));
  const file = path.join(dir, 'resolv.conf');
  const write = (text: string): void => {
    fs.writeFileSync(`${file}.tmp`, text);
    fs.renameSync(`${file}.tmp`, file); // replaced like resolvconf does, not edited in place
  };
  // two resolvers on port 53 of random loopback addresses (all of 127/8 is local)
  const h1 = `127.77.${randomInt(1, 255)}.${randomInt(1, 255)}`;
  let h2 = `127.78.${randomInt(1, 255)}.${randomInt(1, 255)}`;
  const u1 = new FakeUpstream(h1, '192.0.2.1');
  const u2 = new FakeUpstream(h2, '192.0.2.2');
  await u1.start(53);
  await u2.start(53);
  const fake = new FakeClock();
  const w = new ResolvConfWatcher({ path: file, clock: fake, log: silentLogger(), checkIntervalMs: 1000, exclude: ['127.0.0.1'] });
  let s: DnsServer | null = null;
  try {
    write(`nameserver 127.0.0.1\nnameserver ${h1}\n`);
    assert.deepEqual(w.nameservers(), [h1]);
    const first = w.nameservers();
    write(`nameserver ${h2}\n`);
    assert.equal(w.nameservers(), first, 'not re-checked before the interval');
    fake.advance(1000);
    assert.deepEqual(w.nameservers(), [h2]);
    write(`nameserver ${h1}\n`);
    fake.advance(1000);

    s = new DnsServer({ listenAddress: '127.0.0.1', port: 0, upstream: () => w.nameservers(), store, clock: realClock, log: silentLogger() });
    await s.start();
    assert.deepEqual(lines(await dig(s.port, '+short', 'example.test')), ['192.0.2.1']);
    write(`nameserver ${h2}\n`);
    fake.advance(1000);
    assert.deepEqual(lines(await dig(s.port, '+short', 'example.test')), ['192.0.2.2']);
    assert.equal(w.reloads, 4);
    fs.rmSync(file);
    fake.advance(1000);
    assert.deepEqual(w.nameservers(), []);
    assert.equal(status(await dig(s.port, 'example.test')), 'SERVFAIL');
  } finally {
    await s?.stop();
    await u1.stop();
    await u2.stop();
    fs.rmSync(dir, { recursive: true, force: true });
    h2 = '';
  }
});

// ---- hostile TCP clients and sources that are not ours -------------------------------------------

/** A wire query for name/A over TCP: 2-byte length, header, question. */
function tcpQuery(name: string, id: number): Buffer {
  const w = nameToWire(name);
  const q = Buffer.alloc(2 + 12 + w.length + 4);
  q.writeUInt16BE(q.length - 2, 0);
  writeHeader(q.subarray(2), id, 0x01, 0, 1, 0, 0, 0);
  w.copy(q, 14);
  q.writeUInt16BE(QTYPE.A, 14 + w.length);
  q.writeUInt16BE(1, 16 + w.length);
  return q;
}

/** Opens a TCP connection from `from`; resolves once connected. Records when it closes. */
function connectFrom(port: number, from: string): Promise<{ sock: net.Socket; closed: Promise<number> }> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: '127.0.0.1', port, localAddress: from });
    const closed = new Promise<number>((r) => sock.on('close', () => r(Date.now())));
    sock.on('error', () => undefined);
    sock.once('connect', () => resolve({ sock, closed }));
    sock.once('error', reject);
  });
}

/** One query over a fresh connection from `from`: the rcode and A answer count, or 'closed'. */
async function tcpAsk(port: number, from: string, name: string): Promise<{ rcode: number; an: number } | 'closed'> {
  const { sock } = await connectFrom(port, from);
  return new Promise((resolve) => {
    let acc = Buffer.alloc(0);
    sock.on('data', (d: Buffer) => {
      acc = Buffer.concat([acc, d]);
      if (acc.length >= 2 && acc.length >= 2 + acc.readUInt16BE(0)) {
        sock.destroy();
        resolve({ rcode: acc[5] & 0x0f, an: acc.readUInt16BE(8) });
      }
    });
    sock.on('close', () => resolve('closed'));
    sock.write(tcpQuery(name, 0x4242));
  });
}

test('TCP trickle: connections sending a byte at a time close at the overall deadline; one source holds at most its share; another source is answered meanwhile', async () => {
  const LIFE = 1000;
  const s = new DnsServer({
    listenAddress: '127.0.0.1', port: 0, upstream: () => [], store, clock: realClock, log: silentLogger(),
    tcpIdleMs: 60_000, tcpQueryMs: 60_000, tcpMaxLifeMs: LIFE, maxTcpConnections: 8, maxTcpPerSource: 4,
  });
  await s.start();
  const timers: NodeJS.Timeout[] = [];
  try {
    // as many trickling connections as the server has slots, all from 127.0.0.1
    const t0 = Date.now();
    const conns = await Promise.all(Array.from({ length: 8 }, () => connectFrom(s.port, '127.0.0.1')));
    const query = tcpQuery('web.weave.local', 1);
    for (const c of conns) {
      let i = 0;
      // one byte every 150 ms: each resets the idle timer, and the query never completes
      timers.push(setInterval(() => { if (!c.sock.destroyed && i < query.length - 1) c.sock.write(query.subarray(i, ++i)); }, 150));
    }
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(s.counters.tcpConnections, 4, 'four connections of the source are taken');
    assert.equal(s.counters.tcpRejectedPerSource, 4, 'the other four are refused: the source holds its share');
    // a client from another source gets its answer while the trickling ones hold their slots
    const legit = await tcpAsk(s.port, '127.0.0.2', 'web.weave.local');
    assert.notEqual(legit, 'closed', 'another source is answered');
    assert.deepEqual(legit, { rcode: RCODE.NOERROR, an: WEB.length });
    const ends = (await Promise.all(conns.map((c) => c.closed))).map((t) => t - t0).sort((a, b) => a - b);
    const accepted = ends.slice(4);
    assert.ok(accepted.every((ms) => ms >= LIFE - 50 && ms < LIFE + 1000), `trickling connections closed after ${accepted.join(', ')} ms (deadline ${LIFE} ms)`);
    assert.equal(s.counters.tcpDeadlineClosed, 4);
    // their slots are free again: the source can connect and is answered
    assert.deepEqual(await tcpAsk(s.port, '127.0.0.1', 'one.weave.local'), { rcode: RCODE.NOERROR, an: 1 });
  } finally {
    for (const t of timers) clearInterval(t);
    await s.stop();
  }
});

test('TCP per-query deadline: a query trickled byte by byte is cut off; complete queries on a busy connection are not', async () => {
  const Q = 400;
  const s = new DnsServer({
    listenAddress: '127.0.0.1', port: 0, upstream: () => [], store, clock: realClock, log: silentLogger(),
    tcpIdleMs: 60_000, tcpQueryMs: Q, tcpMaxLifeMs: 60_000,
  });
  await s.start();
  const timers: NodeJS.Timeout[] = [];
  try {
    const slow = await connectFrom(s.port, '127.0.0.1');
    const busy = await connectFrom(s.port, '127.0.0.1');
    let answers = 0;
    busy.sock.on('data', () => { answers++; });
    const t0 = Date.now();
    const q = tcpQuery('one.weave.local', 7);
    let i = 0;
    timers.push(setInterval(() => { if (i < q.length - 1) slow.sock.write(q.subarray(i, ++i)); }, 50));
    timers.push(setInterval(() => busy.sock.write(q), 50));
    const ms = (await slow.closed) - t0;
    assert.ok(ms >= Q - 50 && ms < Q + 600, `the trickled query's connection closed after ${ms} ms (deadline ${Q} ms)`);
    await new Promise((r) => setTimeout(r, Q));
    assert.equal(busy.sock.destroyed, false, 'a connection whose queries arrive whole stays');
    assert.ok(answers >= 10, `busy connection answered ${answers} times`);
    assert.equal(s.counters.tcpDeadlineClosed, 1);
    busy.sock.destroy();
  } finally {
    for (const t of timers) clearInterval(t);
    await s.stop();
  }
});

test('allowSource: other sources get REFUSED over UDP and a closed connection over TCP, counted, logged once per interval', async () => {
  const log = new MemoryLogger();
  const s = new DnsServer({ listenAddress: '127.0.0.1', port: 0, upstream: () => [`127.0.0.1:${up.port}`], store, clock: realClock, log, allowSource: (a) => a === '127.0.0.2' });
  await s.start();
  try {
    for (let i = 0; i < 5; i++) {
      const r = await run('dig', ['@127.0.0.1', '-p', String(s.port), '-b', '127.0.0.1', '+tries=1', '+time=2', 'web.weave.local']);
      assert.equal(status(r), 'REFUSED');
      assert.equal(ancount(r), 0);
    }
    assert.equal(status(await run('dig', ['@127.0.0.1', '-p', String(s.port), '-b', '127.0.0.1', '+tries=1', '+time=2', 'example.test'])), 'REFUSED', 'nothing forwarded for it either');
    assert.equal(up.udpQueries > 0, true);
    const fwdBefore = s.counters.forwarded;
    assert.equal(await tcpAsk(s.port, '127.0.0.1', 'web.weave.local'), 'closed');
    const ok = await run('dig', ['@127.0.0.1', '-p', String(s.port), '-b', '127.0.0.2', '+tries=1', '+time=2', '+short', 'one.weave.local']);
    assert.deepEqual(lines(ok), ['10.32.2.1']);
    assert.deepEqual(await tcpAsk(s.port, '127.0.0.2', 'one.weave.local'), { rcode: RCODE.NOERROR, an: 1 });
    assert.equal(s.counters.refusedSource, 7);
    assert.equal(s.counters.refused, 6);
    assert.equal(s.counters.forwarded, fwdBefore);
    assert.equal(log.records.filter((r) => r.level === 'warn' && /refused/.test(String(r.msg))).length, 1, 'one log line for the burst');
  } finally {
    await s.stop();
  }
});

test('counters account for what was answered', async () => {
  const c = server.counters;
  assert.ok(c.queriesUdp > 20 && c.queriesTcp > 3);
  assert.ok(c.noerror > 0 && c.nxdomain > 0 && c.truncated > 0 && c.forwarded > 0);
  assert.equal(c.malformed, 0);
  assert.equal(c.socketErrors, 0);
  const reg = new Registry();
  registerDnsMetrics(reg, store, server);
  const families = parsePrometheus(await reg.metrics());
  const get = (n: string, l?: Record<string, string>) => {
    const m = families.find((f) => f.name === n)?.metrics.find((s) => !l || JSON.stringify(s.labels) === JSON.stringify(l));
    return m === undefined ? undefined : Number(m.value);
  };
  assert.equal(get('weave_dns_queries_total', { proto: 'udp' }), c.queriesUdp);
  assert.equal(get('weave_dns_responses_total', { rcode: 'NXDOMAIN' }), c.nxdomain);
  assert.equal(get('weave_dns_entries', { state: 'live' }), 8 + 1 + 60 + 100);
  const st = dnsStatus(store, server, ['127.0.0.1']);
  assert.equal(st.domain, 'weave.local.');
  assert.equal(st.address, `127.0.0.1:${server.port}`);
  assert.equal(st.entries.filter((e) => e.hostname === 'web.weave.local.').length, 8);
});
