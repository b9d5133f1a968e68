// Two engines on one path, as the tx and rx workers are: the rx worker drains the TUN right after
// delivering (sleeve-worker.ts) and seals on its own lane, so the two threads never reuse a nonce and
// the receiver accepts both threads' frames (one replay window per lane). drainUdp reports how many
// packets it delivered into the TUN (what makes the rx worker look at the TUN at all).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadCrypto } from '../../mesh/crypto';
import { silentLogger } from '../../lib/log';
import { nativeBoxes } from '../../router/boxes';
import { loadTunIo } from '../../router/native';
import { COUNTER, Datapath, LANE_RELAY, LANE_TX, PathShared, newCounterArray, type DatapathEvents } from '../../router/datapath';
import { FrameHeader, deriveKeys, parseHeader } from '../../router/frame';
import { parseAddr, parseCidr } from '../../lib/addr';
import type { TunDevice } from '../../router/tun';
import type { UdpBind } from '../../router/udp';
import { ipv4Packet } from '../fakes/channel-tun';

const sodium = loadCrypto('sodium', silentLogger());
const boxes = nativeBoxes(loadTunIo(silentLogger()));
const noEvents: DatapathEvents = { heartbeat() {}, probeAck() {}, addressLearned() {}, pathTooBig() {} };

/** A TUN with a queue of packets to read; keeps what is written. */
class QueueTun implements TunDevice {
  readonly name = 'queue-tun';
  queue: Buffer[] = [];
  written: Buffer[] = [];
  readBatch(buf: Buffer, stride: number, max: number, lens: Int32Array): number {
    let n = 0;
    while (n < max && this.queue.length) {
      const p = this.queue.shift()!;
      p.copy(buf, n * stride);
      lens[n++] = p.length;
    }
    return n;
  }
  writeBatch(b: Buffer, offs: Int32Array, lens: Int32Array, n: number): number {
    for (let k = 0; k < n; k++) this.written.push(Buffer.from(b.subarray(offs[k], offs[k] + lens[k])));
    return n;
  }
  setReadable(): void {}
  close(): void {}
}

/** A UDP socket whose sends are kept (copies) and whose receive queue the test fills. */
class QueueUdp implements UdpBind {
  readonly port = 6783;
  sent: Buffer[] = [];
  inbox: Buffer[] = [];
  recvBatch(buf: Buffer, stride: number, max: number, lens: Int32Array, ips: Uint32Array, ports: Int32Array): number {
    let n = 0;
    while (n < max && this.inbox.length) {
      const f = this.inbox.shift()!;
      f.copy(buf, n * stride);
      lens[n] = f.length;
      ips[n] = parseAddr('198.18.0.1');
      ports[n] = 6783;
      n++;
    }
    return n;
  }
  sendBatch(b: Buffer, offs: Int32Array, lens: Int32Array, _i: Uint32Array, _p: Int32Array, errs: Int32Array, n: number): number {
    for (let k = 0; k < n; k++) {
      errs[k] = 0;
      this.sent.push(Buffer.from(b.subarray(offs[k], offs[k] + lens[k])));
    }
    return n;
  }
  setReadable(): void {}
  close(): void {}
}

function engine(tun: TunDevice, udp: UdpBind, shared: PathShared, heartbeats: boolean, events: DatapathEvents = noEvents): { dp: Datapath; counters: Float64Array } {
  const counters = newCounterArray();
  const dp = new Datapath({ boxes: boxes!, tun, udp, shared, counters, events, stride: 1536, batch: 64, tunMtu: 1440, icmpSource: 0, now: () => 1, heartbeats });
  return { dp, counters };
}

/** both ends' keys of one session (a: the dialling side) */
function sessionKeys(): { a: ReturnType<typeof deriveKeys>; b: ReturnType<typeof deriveKeys> } {
  const sk = sodium.randomBytes(32);
  return { a: deriveKeys(sodium, sk, true), b: deriveKeys(sodium, sk, false) };
}

/** the peer of slot 0 at 198.18.0.2:6783, path MTU 1440 */
function peerAt(sh: PathShared): void {
  sh.ip[0] = parseAddr('198.18.0.2');
  sh.port[0] = 6783;
  sh.mtu[0] = 1440;
}

test('the rx engine drains the TUN on its own lane: both threads\' frames open at the peer, none counted as a replay', () => {
  assert.ok(boxes, 'the native addon must load (npm ci builds it)');
  const { a, b } = sessionKeys();
  // host A: a tx and an rx engine sharing one TUN, one UDP socket and the path's shared values
  const tunA = new QueueTun();
  const udpA = new QueueUdp();
  const shA = new PathShared();
  const tx = engine(tunA, udpA, shA, true);
  const rx = engine(tunA, udpA, shA, false);
  const fwdA = { entries: [{ prefix: parseCidr('10.32.1.0/24'), peer: 0 }, { prefix: parseCidr('10.32.2.0/24'), peer: 1 }], next: [-1, 0], self: 0 };
  for (const e of [tx, rx]) {
    e.dp.setPath({ slot: 0, localIdx: 0x10000, remoteIdx: 0x20000, txKey: a.tx, rxKey: a.rx });
    e.dp.setForwarding(fwdA);
  }
  peerAt(shA);
  // host B: one receiving engine
  const tunB = new QueueTun();
  const udpB = new QueueUdp();
  const shB = new PathShared();
  const recv = engine(tunB, udpB, shB, false);
  recv.dp.setPath({ slot: 0, localIdx: 0x20000, remoteIdx: 0x10000, txKey: b.tx, rxKey: b.rx });
  recv.dp.setForwarding({ entries: [{ prefix: parseCidr('10.32.1.0/24'), peer: 1 }, { prefix: parseCidr('10.32.2.0/24'), peer: 0 }], next: [-1, 0], self: 0 });

  const pkt = (i: number): Buffer => ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.7', payload: Buffer.alloc(100, i) });
  // interleaved: the tx engine drains 3 packets, the rx engine 2, the tx engine 3 more
  tunA.queue.push(pkt(1), pkt(2), pkt(3));
  tx.dp.drainTun();
  tunA.queue.push(pkt(4), pkt(5));
  rx.dp.drainTun(LANE_RELAY);
  tunA.queue.push(pkt(6), pkt(7), pkt(8));
  tx.dp.drainTun();
  assert.equal(udpA.sent.length, 8);
  const h = new FrameHeader();
  const lanes = udpA.sent.map((f) => (parseHeader(f, 0, f.length, h, true) ? `${h.lane}:${h.counter}` : 'bad'));
  // each engine counts from 0 on its own lane: the same counter under another lane is another nonce
  assert.deepEqual(lanes, [`${LANE_TX}:0`, `${LANE_TX}:1`, `${LANE_TX}:2`, `${LANE_RELAY}:0`, `${LANE_RELAY}:1`, `${LANE_TX}:3`, `${LANE_TX}:4`, `${LANE_TX}:5`]);

  udpB.inbox.push(...udpA.sent);
  const delivered = recv.dp.drainUdp();
  assert.equal(delivered, 8, 'drainUdp returns what went into the TUN');
  assert.equal(recv.counters[COUNTER.dropReplay] + recv.counters[COUNTER.dropBadMac], 0);
  assert.deepEqual(tunB.written.map((p) => p[p.length - 1]), [1, 2, 3, 4, 5, 6, 7, 8], 'in the order the TUN gave them');
  // nothing more to deliver: 0 (the rx worker then leaves the TUN to the tx worker)
  assert.equal(recv.dp.drainUdp(), 0);
});

test('a heartbeat wakes the control plane only while it does not hear the peer (shared heard flag); lastRx moves either way', () => {
  assert.ok(boxes, 'the native addon must load (npm ci builds it)');
  const { a, b } = sessionKeys();
  const udpA = new QueueUdp();
  const shA = new PathShared();
  const tx = engine(new QueueTun(), udpA, shA, true);
  tx.dp.setPath({ slot: 0, localIdx: 0x10000, remoteIdx: 0x20004, txKey: a.tx, rxKey: a.rx });
  peerAt(shA);
  const udpB = new QueueUdp();
  const shB = new PathShared();
  const told: number[] = [];
  const rx = engine(new QueueTun(), udpB, shB, false, { ...noEvents, heartbeat: (slot) => told.push(slot) });
  rx.dp.setPath({ slot: 4, localIdx: 0x20004, remoteIdx: 0x10000, txKey: b.tx, rxKey: b.rx });
  const beatAndReceive = (): void => {
    udpA.sent.length = 0;
    tx.dp.beat([0]);
    assert.equal(udpA.sent.length, 1, 'one heartbeat sent');
    udpB.inbox.push(...udpA.sent);
    rx.dp.drainUdp();
  };
  beatAndReceive();
  assert.deepEqual(told, [4], 'not heard yet: the control plane is told');
  shB.heard[4] = 1; // the control plane hears the peer now (router/sleeve.ts onHeartbeat and tick)
  shB.lastRx[4] = -Infinity;
  beatAndReceive();
  beatAndReceive();
  assert.deepEqual(told, [4], 'heard: further beats only move lastRx');
  assert.ok(shB.lastRx[4] > -Infinity, 'lastRx still records the beat (the tick reads it)');
  shB.heard[4] = 0; // silence: the tick stopped hearing it
  beatAndReceive();
  assert.deepEqual(told, [4, 4], 'not heard again: told again');
});
