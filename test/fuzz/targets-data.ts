// Fuzz targets: sleeve datagrams (header, frame opening, the engine's receive path with probes and
// heartbeats), the IPv4 helpers the engine runs on packets it relays (ICMP answers, fragmentation),
// and weaveDNS queries over UDP and TCP (no sockets: the server's own query path and TCP reassembly).
import { loadCrypto } from '../../mesh/crypto';
import { silentLogger } from '../../lib/log';
import { realClock } from '../../lib/clock';
import { engineBoxes } from '../../router/boxes';
import { COUNTER, COUNTER_NAMES, Datapath, PathShared, newCounterArray, type DatapathEvents } from '../../router/datapath';
import { FrameHeader, FrameType, HB_BODY, decodeFrame, deriveKeys, encodeFrame, writeHeartbeat } from '../../router/frame';
import { fragment, ipv4HeaderLen, mayAnswer, writeUnreachable, decrementTtl, MAX_ICMP_LEN } from '../../router/icmp';
import { parseAddr, parseCidr } from '../../lib/addr';
import type { TunDevice } from '../../router/tun';
import type { UdpBind } from '../../router/udp';
import { DnsStore } from '../../dns/records';
import { DnsServer, TcpAssembler } from '../../dns/server';
import { QTYPE, nameToWire, writeHeader } from '../../dns/wire';
import { ipv4Packet } from '../fakes/channel-tun';
import { chunks, int, pick, randomBytes } from './mutate';
import type { Target } from './engine';

const sodium = loadCrypto('sodium', silentLogger());
const never = (): boolean => false;

// ---- sleeve datagrams -----------------------------------------------------------------------------

export const KEYS = deriveKeys(sodium, Buffer.alloc(32, 9), true);
const PLAIN_IDX = 0x10000;
export const SEALED_IDX = 0x10001;
const PKT = ipv4Packet({ src: '10.32.1.5', dst: '10.32.0.7', payload: Buffer.alloc(64, 1) });
const RELAYED = ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.7', payload: Buffer.alloc(64, 1) });

const frameHeader: Target = {
  name: 'sleeve-frame',
  seeds: () => [
    encodeFrame(null, null, FrameType.Data, 1, PLAIN_IDX, 5, PKT),
    encodeFrame(sodium, KEYS.tx, FrameType.Data, 0, SEALED_IDX, 7, PKT, 1),
    encodeFrame(sodium, KEYS.tx, FrameType.Probe, 2, SEALED_IDX, 9, Buffer.alloc(8, 3)),
  ],
  run(b) {
    const h = new FrameHeader();
    const plain = decodeFrame(null, null, b, h);
    if (plain && (h.lane > 2 || h.phase > 1 || h.type < 1 || h.type > 4 || !Number.isSafeInteger(h.counter))) throw new Error('parseHeader accepted an impossible header');
    decodeFrame(sodium, KEYS.rx, b, h);
  },
  expected: never, // the frame decoders return null on bad input: nothing may be thrown
};

class SinkTun implements TunDevice {
  readonly name = 'fuzz-tun';
  writes = 0;
  readBatch(): number { return 0; }
  writeBatch(_b: Buffer, _o: Int32Array, _l: Int32Array, n: number): number { this.writes += n; return n; }
  setReadable(): void {}
  close(): void {}
}

class OneShotUdp implements UdpBind {
  readonly port = 6783;
  next: Buffer | null = null;
  sent = 0;
  recvBatch(buf: Buffer, stride: number, _max: number, lens: Int32Array, ips: Uint32Array, ports: Int32Array): number {
    const f = this.next;
    if (!f) return 0;
    this.next = null;
    const n = Math.min(f.length, stride);
    f.copy(buf, 0, 0, n);
    lens[0] = f.length; // the kernel reports the datagram's size (a truncated one is longer than the slot)
    ips[0] = 0xc6120002;
    ports[0] = 6783;
    return 1;
  }
  sendBatch(_b: Buffer, _o: Int32Array, _l: Int32Array, _i: Uint32Array, _p: Int32Array, errs: Int32Array, n: number): number {
    for (let k = 0; k < n; k++) errs[k] = 0;
    this.sent += n;
    return n;
  }
  setReadable(): void {}
  close(): void {}
}

export function datapathRig() {
  const tun = new SinkTun();
  const udp = new OneShotUdp();
  const counters = newCounterArray();
  const events = { n: 0 };
  const ev: DatapathEvents = { heartbeat() { events.n++; }, probeAck() { events.n++; }, addressLearned() {}, pathTooBig() {} };
  const shared = new PathShared();
  const dp = new Datapath({ boxes: engineBoxes(sodium), tun, udp, shared, counters, events: ev, stride: 1600, batch: 8, tunMtu: 1440, icmpSource: 0, now: () => 1, heartbeats: false });
  dp.setPath({ slot: 0, localIdx: PLAIN_IDX, remoteIdx: 0x20000, txKey: null, rxKey: null });
  // the peer seals with its tx key, which is our rx key: frames the fuzzer seals with KEYS.tx are authentic here
  dp.setPath({ slot: 1, localIdx: SEALED_IDX, remoteIdx: 0x20001, txKey: KEYS.rx, rxKey: KEYS.tx, rxKey1: KEYS.tx });
  for (const s of [0, 1]) {
    shared.ip[s] = parseAddr('198.18.0.2');
    shared.port[s] = 6783;
    shared.mtu[s] = 1440;
  }
  dp.setForwarding({ entries: [{ prefix: parseCidr('10.32.0.0/24'), peer: 0 }, { prefix: parseCidr('10.32.2.0/24'), peer: 1 }], next: [-1, 1], self: 0 });
  return { dp, tun, udp, counters, events };
}

let rig: ReturnType<typeof datapathRig> | undefined;
let counter = 1;
const DROPS = COUNTER_NAMES.filter((n) => n.startsWith('drop')).map((n) => COUNTER[n]);

/**
 * Every datagram must leave a trace: a drop counter, a packet to the TUN, a relay or answer sent, or an
 * event (heartbeat, probe ack). One that vanishes without any is malformed input nobody counted.
 */
function trace(g: NonNullable<typeof rig>): number {
  let n = g.tun.writes + g.udp.sent + g.events.n;
  for (const i of DROPS) n += g.counters[i];
  return n;
}

const datapath: Target = {
  name: 'sleeve-datapath',
  seeds: () => [
    Buffer.concat([Buffer.of(0), encodeFrame(null, null, FrameType.Data, 1, PLAIN_IDX, 5, PKT)]),
    Buffer.concat([Buffer.of(0), encodeFrame(null, null, FrameType.Data, 1, PLAIN_IDX, 5, RELAYED)]),
    Buffer.concat([Buffer.of(1, FrameType.Probe), Buffer.alloc(8, 3)]),
    Buffer.concat([Buffer.of(1, FrameType.ProbeAck), Buffer.alloc(8, 3)]),
    (() => { const b = Buffer.alloc(2 + HB_BODY); b[0] = 1; b[1] = FrameType.Heartbeat; writeHeartbeat(b, 2, true, 7); return b; })(),
    Buffer.concat([Buffer.of(1, FrameType.Data), PKT]),
  ],
  run(input, r) {
    rig ??= datapathRig();
    const g = rig;
    if (input.length === 0) return;
    let dgram: Buffer;
    if (input[0] & 1) {
      // authentic (sealed with the path's key): the body is hostile, the header is right
      const type = input.length > 1 ? (input[1] % 4) + 1 : FrameType.Data;
      dgram = encodeFrame(sodium, KEYS.tx, type, int(r, 3), SEALED_IDX, counter++, input.subarray(2), int(r, 2));
    } else {
      dgram = Buffer.from(input.subarray(1));
      // a fresh counter most of the time, so mutated frames get past the replay window
      if (dgram.length >= 16 && r() < 0.8) {
        dgram.writeUInt32BE(0, 8);
        dgram.writeUInt32BE(counter++ >>> 0, 12);
      }
    }
    g.udp.next = dgram;
    const before = trace(g);
    g.dp.drainUdp();
    if (trace(g) === before) throw new Error(`a datagram of ${dgram.length} bytes (type ${dgram[1]}) left no trace: dropped without being counted`);
  },
  expected: never,
};

// ---- IPv4 helpers on packets the engine relays ------------------------------------------------

const ipv4: Target = {
  name: 'ipv4-icmp-fragment',
  seeds: () => [
    PKT, ipv4Packet({ src: '10.32.1.5', dst: '10.32.0.7', payload: Buffer.alloc(3000, 2), id: 7 }),
    (() => { const p = ipv4Packet({ src: '10.32.1.5', dst: '10.32.0.7', payload: Buffer.alloc(2000, 2) }); p.writeUInt16BE(0x2000 | 0x1ff0, 6); return p; })(),
  ],
  run(b, r) {
    const len = b.length;
    const ihl = ipv4HeaderLen(b, 0, len);
    mayAnswer(b, 0, len);
    const out = Buffer.alloc(MAX_ICMP_LEN + 64);
    writeUnreachable(out, 0, b, 0, len, 3, 1400, 0x0a200001);
    const mtu = pick(r, [68, 576, 1400, 1500, 9000]);
    const stride = 1600;
    const frags = Buffer.alloc(stride * 64);
    const lens = new Int32Array(64);
    const n = fragment(b, 0, len, mtu, frags, 0, stride, lens, 0, 64);
    if (n > 0) {
      // every fragment must be representable: offset (8-byte units, 13 bits) plus its data within 65535
      const origOff = (((b[6] & 0x1f) << 8) | b[7]) * 8;
      let expectOff = origOff;
      for (let k = 0; k < n; k++) {
        const o = k * stride;
        const fo = (((frags[o + 6] & 0x1f) << 8) | frags[o + 7]) * 8;
        const dataLen = lens[k] - ihl;
        if (fo !== expectOff) throw new Error(`fragment ${k} offset ${fo}, expected ${expectOff}: the 13-bit field overflowed`);
        if (fo + dataLen > 65535) throw new Error(`fragment ${k} ends at ${fo + dataLen}, beyond an IPv4 datagram`);
        expectOff += dataLen;
      }
    }
    if (ihl > 0) decrementTtl(b, 0);
  },
  expected: never,
};

// ---- weaveDNS -----------------------------------------------------------------------------------

function query(id: number, name: string, type: number, edns?: number): Buffer {
  const h = Buffer.alloc(12);
  writeHeader(h, id, 0x01, 0, 1, 0, 0, edns !== undefined ? 1 : 0);
  const q = Buffer.alloc(4);
  q.writeUInt16BE(type, 0);
  q.writeUInt16BE(1, 2);
  const parts = [h, nameToWire(name), q];
  if (edns !== undefined) {
    const opt = Buffer.alloc(11);
    opt.writeUInt16BE(QTYPE.OPT, 1);
    opt.writeUInt16BE(edns, 3);
    parts.push(opt);
  }
  return Buffer.concat(parts);
}

const DNS_SEEDS = (): Buffer[] => [
  query(1, 'web.weave.local', QTYPE.A), query(2, 'big.weave.local', QTYPE.A, 4096), query(3, '5.0.32.10.in-addr.arpa', QTYPE.PTR),
  query(4, 'nothere.weave.local', QTYPE.AAAA), query(5, 'example.com', QTYPE.A), query(6, 'weave.local', QTYPE.SOA), query(7, 'web.weave.local', QTYPE.ANY, 1232),
];

interface FakeSock { destroyed: boolean; writableLength: number; written: number; write(b: Buffer): boolean; destroy(): void }

function dnsRig() {
  const store = new DnsStore({ self: '02:00:00:00:00:01', clock: realClock, log: silentLogger() });
  for (let i = 1; i <= 5; i++) store.add('web.weave.local', `10.32.0.${i}`);
  for (let i = 1; i <= 60; i++) store.add('big.weave.local', `10.40.0.${i}`);
  // no upstream: a query for another domain is answered SERVFAIL at once (forwarding is not under test)
  const server = new DnsServer({ listenAddress: '127.0.0.1', port: 0, upstream: () => [], store, clock: realClock, log: silentLogger() });
  return server as unknown as {
    answer(buf: Buffer, len: number, out: Buffer, udp: boolean): number;
    onTcpData(c: unknown, d: Buffer): void;
    counters: { queriesTcp: number; malformed: number };
  };
}

let dns: ReturnType<typeof dnsRig> | undefined;
const dnsOut = Buffer.alloc(65535);

const dnsUdp: Target = {
  name: 'dns-udp',
  seeds: DNS_SEEDS,
  run(b) {
    dns ??= dnsRig();
    const buf = Buffer.from(b);
    const n = dns.answer(buf, buf.length, dnsOut, true);
    if (n > 4096) throw new Error(`a UDP answer of ${n} bytes (beyond the largest EDNS size)`);
  },
  expected: never,
};

const dnsTcp: Target = {
  name: 'dns-tcp',
  seeds: () => DNS_SEEDS().map((q) => {
    const l = Buffer.alloc(2);
    l.writeUInt16BE(q.length, 0);
    return Buffer.concat([l, q, l, q]);
  }),
  run(b, r) {
    dns ??= dnsRig();
    const sock: FakeSock = { destroyed: false, writableLength: 0, written: 0, write() { this.written++; return true; }, destroy() { this.destroyed = true; } };
    const c = { sock, src: '127.0.0.1', acc: new TcpAssembler(), lastActive: 0, openedAt: 0, partialSince: 0, gone: false };
    for (const ch of chunks(r, b)) dns.onTcpData(c, Buffer.from(ch));
  },
  large(r) {
    // queries of the largest size, delivered (by chunks()) byte by byte or in small pieces
    const q = Buffer.concat([query(9, 'web.weave.local', QTYPE.A), randomBytes(r, 65535 - 33)]);
    const l = Buffer.alloc(2);
    l.writeUInt16BE(q.length, 0);
    return Buffer.concat([l, q, l, q.subarray(0, 1000)]);
  },
  expected: never,
};

export const DATA_TARGETS: Target[] = [frameHeader, datapath, ipv4, dnsUdp, dnsTcp];
